//! A bench's report as text.

use crate::compare::{Report, TimeMeasure};
use crate::stats::{format_p, Summary};

/// The report as text for a person.
pub fn bench(r: &Report) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let sm =
        |s: &Option<Summary>| s.map_or("-".into(), |s| format!("{:.4} ± {:.4}", s.mean, s.std));
    let _ = writeln!(
        o,
        "bench on track {} ({} steps{}), seeds {:?}, target {}",
        r.track,
        r.steps,
        if r.baseline_steps == r.steps && !r.baseline_stored {
            String::new()
        } else {
            format!(
                "; baseline {} steps{}",
                r.baseline_steps,
                if r.baseline_stored {
                    ", runs read from the store"
                } else {
                    ""
                }
            )
        },
        r.seeds,
        r.target_val_loss
            .map_or("none".into(), |t| format!("{t:.4}"))
    );
    let _ = writeln!(
        o,
        "{:<10} {:<28} {:>20} {:>18} {:>18} {:>10}",
        "", "stack", "val loss (mean ± sd)", "train time s", "time to target s", "p<target"
    );
    for (name, s) in [("candidate", &r.candidate), ("baseline", &r.baseline)] {
        let _ = writeln!(
            o,
            "{:<10} {:<28} {:>20} {:>18} {:>18} {:>10}",
            name,
            s.stack,
            sm(&s.val_loss),
            sm(&s.train_time_s),
            sm(&s.time_to_target_s),
            s.below_target.map_or("-".into(), |t| format_p(t.p_value))
        );
    }
    for (name, s) in [("candidate", &r.candidate), ("baseline", &r.baseline)] {
        for run in s.runs.iter().filter(|run| !run.valid) {
            let _ = writeln!(
                o,
                "  {name} seed {}: {} {} {}",
                run.seed,
                run.status,
                run.failed_checks.join(", "),
                run.error.as_deref().unwrap_or("")
            );
        }
    }
    let measure = match r.time_measure {
        TimeMeasure::TimeToTarget => "time to target",
        TimeMeasure::TrainTime => "training time (not every run reached the target)",
    };
    if let Some(s) = r.speedup {
        let _ = writeln!(
            o,
            "speedup ({measure}): {:.3}x, 95% CI [{:.3}, {:.3}]; Welch p (faster) = {}",
            s.estimate,
            s.low,
            s.high,
            r.welch.map_or("-".into(), |w| format_p(w.p_less))
        );
    }
    if let Some(d) = r.loss_delta {
        let _ = writeln!(
            o,
            "loss delta at equal budget (candidate - baseline): {:+.4}, 95% CI [{:+.4}, {:+.4}]",
            d.estimate, d.low, d.high
        );
    }
    let _ = writeln!(o, "verdict: {}", r.verdict_text);
    if let Some(p) = &r.curves_svg {
        let _ = writeln!(o, "curves: {p}");
    }
    o
}
