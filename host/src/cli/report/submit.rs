//! A submission's verdict, a track's record history and a re-verification, as text.

use crate::stats::{format_p, Summary};
use crate::store::Record;
use crate::submit::records::{Format, Reverification};
use crate::submit::SubmitVerdict;
use crate::verify::check_line;
use anyhow::Result;
use serde::Serialize;
use std::fmt::Write;

/// The verdict for a person.
pub fn verdict(v: &SubmitVerdict) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let s = &v.submission;
    let _ = writeln!(
        o,
        "submission {} — {} ({}), track {}, seeds {:?}",
        s.id.map_or("-".into(), |i| i.to_string()),
        s.crate_name,
        s.transport,
        v.track,
        v.seeds
    );
    let _ = writeln!(o, "  source sha256   {}", s.source_sha256);
    if let Some(l) = &s.library_sha256 {
        let _ = writeln!(o, "  library sha256  {l}");
    }
    let _ = writeln!(o, "  verdict         {}", v.status.name().to_uppercase());
    if let Some(e) = &v.error {
        let _ = writeln!(o, "  error           {e}");
    }
    for c in &v.checks {
        let _ = writeln!(o, "    {}", check_line(c.check, c.outcome, &c.detail));
    }
    let sm =
        |x: &Option<Summary>| x.map_or("-".into(), |s| format!("{:.4} ± {:.4}", s.mean, s.std));
    if v.val_loss.is_some() {
        let _ = writeln!(
            o,
            "  val loss        {} (target {})",
            sm(&v.val_loss),
            v.target_val_loss
                .map_or("none".into(), |t| format!("{t:.4}"))
        );
        let _ = writeln!(o, "  training time   {} s", sm(&v.train_time_s));
        let _ = writeln!(o, "  time to target  {} s", sm(&v.time_to_target_s));
        let _ = writeln!(
            o,
            "  p(loss < target) {} ({})",
            v.p_below_target.map_or("undefined".into(), format_p),
            if v.target_claim {
                "claim holds at p < 0.01"
            } else {
                "no claim"
            }
        );
    }
    for (name, a) in [
        ("record", &v.against_record),
        ("reference", &v.against_reference),
    ] {
        let Some(a) = a else { continue };
        let _ = writeln!(
            o,
            "  vs {name:<9}    {}: speedup {} , Welch p {}, loss delta {}; {}",
            a.stack,
            a.speedup.map_or("-".into(), |s| format!(
                "{:.3}x [{:.3}, {:.3}]",
                s.estimate, s.low, s.high
            )),
            a.welch_p.map_or("-".into(), format_p),
            a.loss_delta.map_or("-".into(), |d| format!(
                "{:+.4} [{:+.4}, {:+.4}]",
                d.estimate, d.low, d.high
            )),
            a.verdict_text
        );
    }
    let _ = writeln!(
        o,
        "  on frontier     {}",
        if v.on_frontier { "yes" } else { "no" }
    );
    let _ = writeln!(
        o,
        "  new record      {}",
        match &v.record {
            Some(r) => format!("YES (record {} of track {})", r.id, r.track),
            None => "no".into(),
        }
    );
    if let Some(r) = &v.paths.runs {
        let _ = writeln!(o, "  runs            {r}");
    }
    if let Some(f) = &v.paths.frontier_svg {
        let _ = writeln!(o, "  frontier plot   {f}");
    }
    if let Some(f) = &v.paths.curves_svg {
        let _ = writeln!(o, "  curves plot     {f}");
    }
    o
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// The history, oldest first, numbered as the speedrun numbers its records.
pub fn records(track: &str, records: &[Record], format: Format) -> Result<String> {
    if format == Format::Json {
        #[derive(Serialize)]
        struct J<'a> {
            track: &'a str,
            current: Option<&'a Record>,
            records: &'a [Record],
        }
        return Ok(serde_json::to_string_pretty(&J {
            track,
            current: records.last(),
            records,
        })? + "\n");
    }
    let mut o = String::new();
    let row = |r: &Record, i: usize| {
        [
            (i + 1).to_string(),
            format!("{:.2} s", r.time_to_target_s),
            r.description.clone(),
            r.created_at.get(..10).unwrap_or(&r.created_at).to_string(),
            format!("{:.3}x over {}", r.speedup, r.previous),
            format!("{:.4}", r.val_loss),
            if r.checks_version < crate::verify::CHECKS_VERSION {
                format!("v{} (older: reverify it)", r.checks_version)
            } else {
                format!("v{}", r.checks_version)
            },
            format!(
                "src {} lib {} ({})",
                short(&r.source_sha256),
                r.library_sha256.as_deref().map(short).unwrap_or("-"),
                r.transport
            ),
        ]
    };
    let head = [
        "#",
        "record time",
        "description",
        "date",
        "speedup",
        "val loss",
        "checks",
        "hashes",
    ];
    match format {
        Format::Markdown => {
            let _ = writeln!(o, "| {} |", head.join(" | "));
            let _ = writeln!(o, "|{}", "---|".repeat(head.len()));
            for (i, r) in records.iter().enumerate() {
                let _ = writeln!(o, "| {} |", row(r, i).join(" | "));
            }
        }
        _ => {
            let _ = writeln!(
                o,
                "{:>3}  {:>11}  {:<40}  {:<10}  {:<28}  {:>8}  {:<6}  {}",
                head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7]
            );
            for (i, r) in records.iter().enumerate() {
                let c = row(r, i);
                let _ = writeln!(
                    o,
                    "{:>3}  {:>11}  {:<40}  {:<10}  {:<28}  {:>8}  {:<6}  {}",
                    c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
                );
            }
        }
    }
    if records.is_empty() {
        let _ = writeln!(
            o,
            "(no records for track {track} yet: the reference stack stands)"
        );
    }
    Ok(o)
}

pub fn reverification(r: &Reverification) -> String {
    let mut o = String::new();
    let sm =
        |x: &Option<Summary>| x.map_or("-".into(), |s| format!("{:.4} ± {:.4}", s.mean, s.std));
    let _ = writeln!(
        o,
        "record {} of track {} ({}), rebuilt from source {}",
        r.record.id, r.record.track, r.record.description, r.record.source_sha256
    );
    let _ = writeln!(
        o,
        "  library        {} ({})",
        r.library_sha256,
        if r.same_library {
            "identical to the submission's build"
        } else {
            "DIFFERS from the submission's build"
        }
    );
    let _ = writeln!(
        o,
        "  checks         v{} (the record was verified by v{})",
        r.checks_version, r.record.checks_version
    );
    let _ = writeln!(o, "  seeds          {:?}", r.seeds);
    let _ = writeln!(o, "  valid          {}", if r.valid { "yes" } else { "NO" });
    let _ = writeln!(
        o,
        "  val loss       {} (record: {:.4}{})",
        sm(&r.val_loss),
        r.record.val_loss,
        if r.val_loss_matches_record {
            ", identical"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "  time to target {} s (record: {:.2} s)",
        sm(&r.time_to_target_s),
        r.record.time_to_target_s
    );
    let _ = writeln!(
        o,
        "  vs reference   speedup {}, Welch p {}",
        r.against_reference.speedup.map_or("-".into(), |s| format!(
            "{:.3}x [{:.3}, {:.3}]",
            s.estimate, s.low, s.high
        )),
        r.against_reference.welch_p.map_or("-".into(), format_p)
    );
    let _ = writeln!(
        o,
        "  claim          {}",
        if r.reproduced {
            format!(
                "reproduced (p(loss < target) = {})",
                format_p(r.p_below_target.unwrap_or(f64::NAN))
            )
        } else {
            "NOT reproduced".into()
        }
    );
    o
}
