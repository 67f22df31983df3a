//! The techniques table as text, markdown or JSON.

use crate::ladder::{Ladder, Row};
use crate::submit::records::Format;
use anyhow::Result;
use serde::Serialize;
use std::fmt::Write;

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// The table as text, markdown or JSON.
pub fn ladder(track: &str, ladder: &Ladder, format: Format) -> Result<String> {
    let (rows, left_out) = (&ladder.rows, ladder.left_out);
    if format == Format::Json {
        #[derive(Serialize)]
        struct J<'a> {
            track: &'a str,
            left_out: usize,
            reference: &'a Option<Row>,
            rows: &'a [Row],
        }
        return Ok(serde_json::to_string_pretty(&J {
            track,
            left_out,
            reference: &ladder.reference,
            rows,
        })? + "\n");
    }
    let cells = |(i, r): (usize, &Row)| -> [String; 10] {
        let time = match (r.time_mean_s, r.time_measure.as_str()) {
            (Some(m), "time_to_target") => format!("{m:.1} ± {} s", opt(r.time_sd_s, 1)),
            (Some(m), lower) if lower.starts_with("time_to_target_lower_bound") => format!(
                "≥ {m:.1} ± {} s {}",
                opt(r.time_sd_s, 1),
                lower.trim_start_matches("time_to_target_lower_bound ")
            ),
            (Some(m), _) => format!("target missed (trains {m:.1} s)"),
            (None, _) => "-".into(),
        };
        let speedup = match (r.speedup, r.speedup_low) {
            (Some(s), Some(_)) => format!(
                "{s:.2}x [{}, {}]",
                opt(r.speedup_low, 2),
                opt(r.speedup_high, 2)
            ),
            (Some(s), None) => format!("{s:.2}x"),
            (None, _) => "-".into(),
        };
        [
            i.to_string(),
            r.stack.clone(),
            r.seeds.to_string(),
            r.steps.map_or("-".into(), |s| s.to_string()),
            time,
            opt(r.p_below_target, 4),
            speedup,
            opt(r.tokens_to_target, 0),
            opt(r.val_loss_mean, 4),
            if r.command.is_empty() {
                "-".into()
            } else {
                format!("`{}`", r.command)
            },
        ]
    };
    let head = [
        "#",
        "stack",
        "seeds",
        "steps",
        "time to target",
        "p (loss < target)",
        "speedup over the reference",
        "tokens to target",
        "val loss",
        "command",
    ];
    // Row 0 is the reference; the benches are numbered from 1.
    let all: Vec<[String; 10]> = ladder
        .reference
        .iter()
        .map(|r| cells((0, r)))
        .chain(rows.iter().enumerate().map(|(i, r)| cells((i + 1, r))))
        .collect();
    let mut o = String::new();
    match format {
        Format::Markdown => {
            let _ = writeln!(o, "| {} |", head.join(" | "));
            let _ = writeln!(o, "|{}", "---|".repeat(head.len()));
            for c in &all {
                let _ = writeln!(o, "| {} |", c.join(" | "));
            }
        }
        _ => {
            let n = all.len();
            let _ = writeln!(o, "track {track}: {n} row{}", if n == 1 { "" } else { "s" });
            for c in &all {
                let _ = writeln!(
                    o,
                    "{:>3}  {:<32}  {} seeds  {} steps  {}  p {}  {}  tokens {}  loss {}\n     {}",
                    c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9]
                );
            }
        }
    }
    if left_out > 0 {
        let _ = writeln!(
            o,
            "\n({left_out} stored comparison(s) left out: another baseline, fewer seeds than asked, or runs that do not score: invalid, unofficial, unfinished, or a baseline shorter than the track's budget)"
        );
    }
    Ok(o)
}
