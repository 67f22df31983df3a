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
    /// The submission's validation curves against the record's (or the
    /// reference's) per seed, with the target.
    pub curves_svg: Option<String>,
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
    /// Why a win over the record it was compared against did not become the
    /// record: another submission became it while this one ran (resubmit to
    /// be compared against that one).
    pub record_superseded: Option<String>,
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
