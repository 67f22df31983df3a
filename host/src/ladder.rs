//! The techniques table: the speedrun's record-history style, one row per stored
//! `speedrun bench` of a stack against the reference, oldest first (each row
//! meant to add one technique to the previous row's stack). Every figure comes
//! from the stored comparison report, so the table is regenerated, never typed.

use crate::store::{Store, StoredComparison};
use crate::submit::records::Format;
use anyhow::Result;
use serde::Serialize;
use serde_json::Value;
use std::fmt::Write;

/// One row: a stack's bench against the reference.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub comparison_id: i64,
    pub date: String,
    pub stack: String,
    pub seeds: usize,
    /// "time_to_target" when every run of the stack reached the target, else
    /// "train_time" (the times below are then whole training times).
    pub time_measure: String,
    pub time_mean_s: Option<f64>,
    pub time_sd_s: Option<f64>,
    /// One-sided t-test: the stack's mean final validation loss is below the target.
    pub p_below_target: Option<f64>,
    /// Reference time / stack time, with its 95% interval.
    pub speedup: Option<f64>,
    pub speedup_low: Option<f64>,
    pub speedup_high: Option<f64>,
    /// Mean over the seeds, when every run reached the target.
    pub tokens_to_target: Option<f64>,
    pub val_loss_mean: Option<f64>,
    pub verdict: String,
    pub command: String,
}

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

fn row(c: &StoredComparison) -> Row {
    let r = &c.report;
    let measure = r["time_measure"].as_str().unwrap_or("").to_string();
    let time_key = if measure == "time_to_target" {
        "time_to_target_s"
    } else {
        "train_time_s"
    };
    let tokens: Option<Vec<f64>> = r["candidate"]["runs"]
        .as_array()
        .map(|runs| {
            runs.iter()
                .map(|run| run["tokens_to_target"].as_f64())
                .collect()
        })
        .unwrap_or(None);
    Row {
        comparison_id: c.id,
        date: c.created_at.get(..10).unwrap_or(&c.created_at).to_string(),
        stack: c.candidate.clone(),
        seeds: r["seeds"].as_array().map_or(0, |s| s.len()),
        time_measure: measure,
        time_mean_s: f(r, &["candidate", time_key, "mean"]),
        time_sd_s: f(r, &["candidate", time_key, "std"]),
        p_below_target: f(r, &["candidate", "below_target", "p_value"]),
        speedup: f(r, &["speedup", "estimate"]),
        speedup_low: f(r, &["speedup", "low"]),
        speedup_high: f(r, &["speedup", "high"]),
        tokens_to_target: tokens
            .filter(|t| !t.is_empty())
            .map(|t| t.iter().sum::<f64>() / t.len() as f64),
        val_loss_mean: f(r, &["candidate", "val_loss", "mean"]),
        verdict: c.verdict.clone(),
        command: r["command"].as_str().unwrap_or("").to_string(),
    }
}

/// The rows of `track`: benches against the reference with at least `min_seeds`
/// seeds, oldest first; and how many comparisons were left out.
pub fn rows(store: &Store, track: &str, min_seeds: usize) -> Result<(Vec<Row>, usize)> {
    let all = store.comparisons(track)?;
    let total = all.len();
    let rows: Vec<Row> = all
        .iter()
        .filter(|c| c.baseline == "reference")
        .map(row)
        .filter(|r| r.seeds >= min_seeds)
        .collect();
    let left_out = total - rows.len();
    Ok((rows, left_out))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// The table as text, markdown or JSON.
pub fn render(track: &str, rows: &[Row], left_out: usize, format: Format) -> Result<String> {
    if format == Format::Json {
        #[derive(Serialize)]
        struct J<'a> {
            track: &'a str,
            left_out: usize,
            rows: &'a [Row],
        }
        return Ok(serde_json::to_string_pretty(&J {
            track,
            left_out,
            rows,
        })? + "\n");
    }
    let cells = |(i, r): (usize, &Row)| -> [String; 9] {
        let time = match (r.time_mean_s, r.time_measure.as_str()) {
            (Some(m), "time_to_target") => format!("{m:.1} ± {} s", opt(r.time_sd_s, 1)),
            (Some(m), _) => format!("target missed (trains {m:.1} s)"),
            (None, _) => "-".into(),
        };
        let speedup = match r.speedup {
            Some(s) => format!(
                "{s:.2}x [{}, {}]",
                opt(r.speedup_low, 2),
                opt(r.speedup_high, 2)
            ),
            None => "-".into(),
        };
        [
            (i + 1).to_string(),
            r.stack.clone(),
            r.seeds.to_string(),
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
        "time to target",
        "p (loss < target)",
        "speedup over the reference",
        "tokens to target",
        "val loss",
        "command",
    ];
    let mut o = String::new();
    match format {
        Format::Markdown => {
            let _ = writeln!(o, "| {} |", head.join(" | "));
            let _ = writeln!(o, "|{}", "---|".repeat(head.len()));
            for c in rows.iter().enumerate().map(cells) {
                let _ = writeln!(o, "| {} |", c.join(" | "));
            }
        }
        _ => {
            let _ = writeln!(o, "track {track}: {} rows", rows.len());
            for c in rows.iter().enumerate().map(cells) {
                let _ = writeln!(
                    o,
                    "{:>3}  {:<32}  {} seeds  {}  p {}  {}  tokens {}  loss {}\n     {}",
                    c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]
                );
            }
        }
    }
    if left_out > 0 {
        let _ = writeln!(
            o,
            "\n({left_out} stored comparison(s) left out: another baseline, or fewer seeds than asked)"
        );
    }
    Ok(o)
}
