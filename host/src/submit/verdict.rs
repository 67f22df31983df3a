//! What `submit` answers (schema `speedrun.submit/1`): the submission, every
//! check merged over its runs, the statistics against the record and the
//! reference, the paths to look at, and its text form.

use super::*;

/// The verdict's schema name; bump it when a field changes meaning.
pub const SCHEMA: &str = "speedrun.submit/1";

#[derive(Debug, Clone, Serialize)]
pub struct SubmissionInfo {
    pub id: Option<i64>,
    pub crate_name: String,
    pub description: String,
    /// SHA-256 of the source archive stored with the submission.
    pub source_sha256: String,
    pub transport: Transport,
    pub library_sha256: Option<String>,
    /// Where the snapshot was unpacked, built and run.
    pub work_dir: String,
}

/// One check over every run of the submission.
#[derive(Debug, Clone, Serialize)]
pub struct MergedCheck {
    pub check: Check,
    pub outcome: Outcome,
    /// The first failing run's detail (else the first run's).
    pub detail: String,
    /// Seeds whose run failed the check.
    pub seeds_failed: Vec<u64>,
}

/// The submission against one baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Against {
    pub stack: String,
    pub record_id: Option<i64>,
    pub comparison_id: Option<i64>,
    pub baseline_val_loss: Option<Summary>,
    pub baseline_time_to_target_s: Option<Summary>,
    pub time_measure: TimeMeasure,
    /// Baseline time / submission time, with its 95% interval.
    pub speedup: Option<Interval>,
    /// One-sided Welch p-value that the submission is faster.
    pub welch_p: Option<f64>,
    /// Submission − baseline mean validation loss at equal budget, 95% interval.
    pub loss_delta: Option<Interval>,
    pub verdict: BenchVerdict,
    pub verdict_text: String,
}

impl Against {
    pub(super) fn new(r: &Report, record_id: Option<i64>) -> Against {
        Against {
            stack: r.baseline.stack.clone(),
            record_id,
            comparison_id: r.comparison_id,
            baseline_val_loss: r.baseline.val_loss,
            baseline_time_to_target_s: r.baseline.time_to_target_s,
            time_measure: r.time_measure,
            speedup: r.speedup,
            welch_p: r.welch.map(|w| w.p_less),
            loss_delta: r.loss_delta,
            verdict: r.verdict,
            verdict_text: r.verdict_text.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Paths {
    /// The folder of every run directory of this submission.
    pub runs: Option<String>,
    /// Each submission run's directory (manifest, metrics.jsonl, summary.json, curves.svg).
    pub run_dirs: Vec<String>,
    pub frontier_svg: Option<String>,
}

/// What `submit` answers (also as JSON, schema `SCHEMA`).
#[derive(Debug, Clone, Serialize)]
pub struct SubmitVerdict {
    pub schema: &'static str,
    pub status: SubmissionStatus,
    pub exit_code: i32,
    pub valid: bool,
    pub error: Option<String>,
    pub submission: SubmissionInfo,
    pub track: String,
    pub target_val_loss: Option<f64>,
    pub seeds: Vec<u64>,
    pub steps: usize,
    pub checks: Vec<MergedCheck>,
    pub val_loss: Option<Summary>,
    pub train_time_s: Option<Summary>,
    pub time_to_target_s: Option<Summary>,
    /// One-sided t-test p-value that the mean validation loss is under the target.
    pub p_below_target: Option<f64>,
    /// `p_below_target < 0.01`.
    pub target_claim: bool,
    /// Against the track's current record (the reference when there is none).
    pub against_record: Option<Against>,
    pub against_reference: Option<Against>,
    /// Some run of the submission is on the track's (time, loss) frontier.
    pub on_frontier: bool,
    pub new_record: bool,
    pub record: Option<Record>,
    pub runs: Vec<BenchRun>,
    pub paths: Paths,
}

impl SubmitVerdict {
    pub(super) fn stop(
        mut self,
        status: SubmissionStatus,
        code: i32,
        error: String,
    ) -> SubmitVerdict {
        self.status = status;
        self.exit_code = code;
        self.valid = false;
        self.error = Some(error);
        self
    }
}

pub(super) fn merge_checks(store: &Store, runs: &[BenchRun]) -> Result<Vec<MergedCheck>> {
    let mut merged: Vec<MergedCheck> = Vec::new();
    for r in runs {
        let Some(id) = r.store_id else { continue };
        let Some(v) = store.verdict(id)? else {
            continue;
        };
        for c in v.checks {
            match merged.iter_mut().find(|m| m.check == c.check) {
                None => merged.push(MergedCheck {
                    check: c.check,
                    outcome: c.outcome,
                    seeds_failed: if c.outcome == Outcome::Failed {
                        vec![r.seed]
                    } else {
                        vec![]
                    },
                    detail: c.detail,
                }),
                Some(m) if c.outcome == Outcome::Failed => {
                    if m.outcome != Outcome::Failed {
                        m.detail = c.detail;
                    }
                    m.outcome = Outcome::Failed;
                    m.seeds_failed.push(r.seed);
                }
                Some(m) if c.outcome == Outcome::Skipped && m.outcome == Outcome::Passed => {
                    m.outcome = Outcome::Skipped;
                    m.detail = c.detail;
                }
                Some(_) => {}
            }
        }
    }
    Ok(merged)
}

/// The verdict for a person.
pub fn render(v: &SubmitVerdict) -> String {
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
            v.p_below_target
                .map_or("undefined".into(), |p| format!("{p:.3e}")),
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
            a.welch_p.map_or("-".into(), |p| format!("{p:.3e}")),
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
    o
}
