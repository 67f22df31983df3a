//! The techniques table: the speedrun's record-history style, one row per stored
//! `speedrun bench` of a stack against the reference, oldest first (each row
//! meant to add one technique to the previous row's stack). Every figure comes
//! from the stored comparison report, read back as the `compare::Report` that
//! `bench` wrote, so the table is regenerated, never typed.

use crate::compare::{BenchRun, Report, TimeMeasure};
use crate::store::{Store, StoredComparison};
use anyhow::Result;
use serde::Serialize;

/// One row: a stack's bench against the reference.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub comparison_id: i64,
    pub date: String,
    pub stack: String,
    pub seeds: usize,
    /// The stack's training steps (the speedrun's records shorten the run).
    pub steps: Option<u64>,
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

/// Mean of `key` over `runs`, when every run has it.
fn runs_mean(runs: &[BenchRun], key: impl Fn(&BenchRun) -> Option<f64>) -> Option<f64> {
    let v: Option<Vec<f64>> = runs.iter().map(key).collect();
    v.filter(|v| !v.is_empty())
        .map(|v| v.iter().sum::<f64>() / v.len() as f64)
}

fn date_of(c: &StoredComparison) -> String {
    c.created_at.get(..10).unwrap_or(&c.created_at).to_string()
}

fn row(c: &StoredComparison, r: &Report) -> Row {
    let side = &r.candidate;
    let time = match r.time_measure {
        TimeMeasure::TimeToTarget => side.time_to_target_s,
        TimeMeasure::TrainTime => side.train_time_s,
    };
    Row {
        comparison_id: c.id,
        date: date_of(c),
        stack: c.candidate.clone(),
        seeds: r.seeds.len(),
        steps: Some(r.steps as u64),
        time_measure: serde_json::to_value(r.time_measure)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        time_mean_s: time.map(|t| t.mean),
        time_sd_s: time.map(|t| t.std),
        p_below_target: side.below_target.map(|t| t.p_value),
        speedup: r.speedup.map(|s| s.estimate),
        speedup_low: r.speedup.map(|s| s.low),
        speedup_high: r.speedup.map(|s| s.high),
        tokens_to_target: runs_mean(&side.runs, |run| run.tokens_to_target.map(|t| t as f64)),
        val_loss_mean: side.val_loss.map(|v| v.mean),
        verdict: c.verdict.clone(),
        command: r.command.clone(),
    }
}

/// Row 0: the reference itself, from the first row's baseline runs. Where a
/// reference run missed the target its whole training time stands in (a lower
/// bound, as in the speedups), and the time is marked "≥".
fn reference_row(c: &StoredComparison, r: &Report) -> Row {
    let b = &r.baseline;
    let times: Vec<f64> = b
        .runs
        .iter()
        .map(|run| run.time_to_target_s.unwrap_or(run.train_time_s))
        .collect();
    let reached = b
        .runs
        .iter()
        .filter(|run| run.time_to_target_s.is_some())
        .count();
    let time = (!times.is_empty()).then(|| crate::stats::Summary::of(&times));
    let seeds: Vec<String> = b.runs.iter().map(|run| run.seed.to_string()).collect();
    Row {
        comparison_id: c.id,
        date: date_of(c),
        stack: "reference (AdamW)".into(),
        seeds: b.runs.len(),
        steps: Some(r.baseline_steps as u64),
        time_measure: if reached == b.runs.len() {
            "time_to_target".into()
        } else {
            format!(
                "time_to_target_lower_bound ({reached}/{} reached)",
                b.runs.len()
            )
        },
        time_mean_s: time.map(|t| t.mean),
        time_sd_s: time.filter(|t| t.n > 1).map(|t| t.std),
        p_below_target: b.below_target.map(|t| t.p_value),
        speedup: Some(1.0),
        speedup_low: None,
        speedup_high: None,
        tokens_to_target: runs_mean(&b.runs, |run| run.tokens_to_target.map(|t| t as f64)),
        val_loss_mean: b.val_loss.map(|v| v.mean),
        verdict: String::new(),
        command: format!(
            "for s in {}; do speedrun run --track {} --seed $s --steps {}; done",
            seeds.join(" "),
            r.track,
            r.baseline_steps
        ),
    }
}

/// The table of `track`: the reference (row 0, from the first bench's
/// baseline), then the benches against the reference with at least
/// `min_seeds` seeds, oldest first.
pub struct Ladder {
    pub reference: Option<Row>,
    pub rows: Vec<Row>,
    /// Comparisons left out: another baseline, too few seeds, or runs that do
    /// not score (invalid, unofficial, unfinished, a truncated baseline).
    pub left_out: usize,
}

pub fn rows(store: &Store, track: &str, min_seeds: usize) -> Result<Ladder> {
    let all = store.comparisons(track)?;
    let total = all.len();
    let runs: std::collections::HashMap<i64, crate::store::StoredRun> = store
        .runs(Some(track))?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    // A row stands on scoring runs only: every candidate run complete, valid
    // and official (shortened by design: a record trains fewer steps), every
    // baseline run that and of the track's whole budget as well.
    let scores = |side: &[BenchRun], full: bool| {
        side.iter().all(|r| {
            let run = r.store_id.and_then(|id| runs.get(&id));
            run.is_some_and(|run| match crate::score::exclusion(run) {
                None => true,
                Some(crate::score::Exclusion::Truncated) => !full,
                Some(_) => false,
            })
        })
    };
    let mut kept: Vec<(&StoredComparison, Report)> = Vec::new();
    for c in all.iter().filter(|c| c.baseline == "reference") {
        // The report as `bench` wrote it; one this version cannot read (an
        // older layout) is left out and counted, not guessed at.
        let report: Report = match serde_json::from_value(c.report.clone()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    "comparison {} left out of the ladder: its report does not read: {e}",
                    c.id
                );
                continue;
            }
        };
        if report.seeds.len() >= min_seeds
            && scores(&report.candidate.runs, false)
            && scores(&report.baseline.runs, true)
        {
            kept.push((c, report));
        }
    }
    Ok(Ladder {
        reference: kept.first().map(|(c, r)| reference_row(c, r)),
        rows: kept.iter().map(|(c, r)| row(c, r)).collect(),
        left_out: total - kept.len(),
    })
}
