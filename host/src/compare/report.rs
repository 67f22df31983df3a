//! The bench's report: per-side summaries, the two questions answered with
//! statistics (is the candidate's mean loss below the target, is it faster
//! than the baseline), the verdict, and its text form.

use super::*;

/// p below which the mean loss counts as under the target (the speedrun's rule).
pub const TARGET_P: f64 = 0.01;

/// p below which the candidate counts as faster than the baseline.
pub const SPEEDUP_P: f64 = 0.05;

/// One side of the comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Side {
    pub stack: String,
    pub runs: Vec<BenchRun>,
    /// Final validation loss over the seeds (runs that finished).
    pub val_loss: Option<Summary>,
    pub train_time_s: Option<Summary>,
    /// Over the seeds, when every run reached the target.
    pub time_to_target_s: Option<Summary>,
    /// H1: mean final validation loss < target.
    pub below_target: Option<TTest>,
    /// `below_target.p_value < TARGET_P`.
    pub target_claim: bool,
    pub all_valid: bool,
}

impl Side {
    pub fn new(stack: String, runs: Vec<BenchRun>, target: Option<f64>) -> Side {
        let losses: Vec<f64> = runs.iter().filter_map(|r| r.final_val_loss).collect();
        let finished = losses.len() == runs.len();
        let times: Vec<f64> = runs.iter().map(|r| r.train_time_s).collect();
        let ttt: Option<Vec<f64>> = runs.iter().map(|r| r.time_to_target_s).collect();
        let below_target = match target {
            Some(t) if finished => stats::mean_below(&losses, t),
            _ => None,
        };
        Side {
            stack,
            val_loss: finished.then(|| Summary::of(&losses)),
            train_time_s: Some(Summary::of(&times)),
            time_to_target_s: ttt.as_deref().map(Summary::of),
            target_claim: below_target.is_some_and(|t| t.p_value < TARGET_P),
            below_target,
            all_valid: runs.iter().all(|r| r.valid),
            runs,
        }
    }

    fn losses(&self) -> Vec<f64> {
        self.runs.iter().filter_map(|r| r.final_val_loss).collect()
    }
}

/// Which time the speedup compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeMeasure {
    /// Every candidate run reached the target: the speedrun's metric (a baseline
    /// run that missed it counts with its whole training time, a lower bound).
    TimeToTarget,
    /// Some candidate run missed the target: the whole budget's training time.
    TrainTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BenchVerdict {
    /// A candidate run failed a check or did not finish: no claim stands.
    Invalid,
    /// Mean loss under the target (p < 0.01) and a lower time to target than the
    /// baseline (Welch p < 0.05; every candidate run reached the target).
    FasterToTarget,
    /// Mean loss under the target (p < 0.01); not significantly faster.
    ReachesTarget,
    /// No target claim, but a lower loss than the baseline at equal budget (95% interval below 0).
    LowerLoss,
    NotSignificant,
    /// The runs ran on different hardware (CPU model and flags, core count,
    /// GPU and driver): their times are not comparable, so no claim stands.
    MixedHardware,
}

/// The p-values the verdict rests on, by name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PValues {
    /// One-sided t-test: candidate mean validation loss < target.
    pub candidate_below_target: Option<f64>,
    /// One-sided t-test: baseline mean validation loss < target.
    pub baseline_below_target: Option<f64>,
    /// Welch, one-sided: candidate time < baseline time.
    pub speedup: Option<f64>,
    /// Welch, two-sided: the times differ.
    pub speedup_two_sided: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub track: String,
    pub target_val_loss: Option<f64>,
    pub seeds: Vec<u64>,
    /// The candidate's steps.
    pub steps: usize,
    pub baseline_steps: usize,
    /// The baseline's runs were read from the store, not run by this bench.
    pub baseline_stored: bool,
    pub candidate: Side,
    pub baseline: Side,
    pub time_measure: TimeMeasure,
    /// Welch's test of candidate against baseline times.
    pub welch: Option<Welch>,
    /// Baseline time / candidate time, with its 95% interval.
    pub speedup: Option<Interval>,
    /// Candidate − baseline final validation loss at equal budget, with its 95%
    /// interval (none when the two ran different step counts).
    pub loss_delta: Option<Interval>,
    pub p_values: PValues,
    pub verdict: BenchVerdict,
    /// What the verdict means, in one sentence.
    pub verdict_text: String,
    /// The comparison's id in the run store.
    pub comparison_id: Option<i64>,
    /// The `speedrun bench` command that reproduces this comparison (seeds listed).
    pub command: String,
    /// Candidate and baseline validation curves overlaid, with the target.
    #[serde(default)]
    pub curves_svg: Option<String>,
    /// The hardware fingerprints of the compared runs (`Hardware::fingerprint`):
    /// one, or the verdict is `mixed_hardware`.
    #[serde(default)]
    pub hardware: Vec<String>,
}

impl Report {
    /// Records the runs' hardware; more than one kind voids every claim but
    /// invalidity (a time measured on one machine says nothing against another's).
    pub fn flag_hardware(&mut self, kinds: Vec<String>) {
        if kinds.len() > 1 && self.verdict != BenchVerdict::Invalid {
            self.verdict = BenchVerdict::MixedHardware;
            self.verdict_text = format!(
                "no claim: the runs ran on {} kinds of hardware ({}), whose times do not compare; run both sides on one kind",
                kinds.len(),
                kinds.join("; ")
            );
        }
        self.hardware = kinds;
    }

    /// The rule for a significant improvement over a baseline (and so for a new
    /// record), written once: the candidate's mean loss is under the target at
    /// p < `TARGET_P` (one-sided t-test) and its time to target is lower at Welch
    /// p < `SPEEDUP_P` (one-sided), every candidate run valid and having reached
    /// the target (a baseline run that missed it counts with its whole training
    /// time, a lower bound of its time to target).
    pub fn beats_baseline(&self) -> bool {
        self.verdict == BenchVerdict::FasterToTarget
    }
}

/// The statistics and the verdict of two sides.
pub fn analyse(
    track: String,
    target: Option<f64>,
    seeds: Vec<u64>,
    (steps, baseline_steps): (usize, usize),
    candidate: Side,
    baseline: Side,
) -> Report {
    let ttt =
        |s: &Side| -> Option<Vec<f64>> { s.runs.iter().map(|r| r.time_to_target_s).collect() };
    let (time_measure, ct, bt) = match ttt(&candidate) {
        // A baseline run that missed the target counts with its whole training
        // time: a lower bound of its time to target, so the speedup can only be
        // understated (the cpu reference reaches its target on about half the seeds).
        Some(c) => {
            let b = baseline
                .runs
                .iter()
                .map(|r| r.time_to_target_s.unwrap_or(r.train_time_s))
                .collect();
            (TimeMeasure::TimeToTarget, c, b)
        }
        None => {
            let t = |s: &Side| s.runs.iter().map(|r| r.train_time_s).collect::<Vec<_>>();
            (TimeMeasure::TrainTime, t(&candidate), t(&baseline))
        }
    };
    let welch = stats::welch(&ct, &bt);
    let speedup = stats::speedup(&bt, &ct);
    let (cl, bl) = (candidate.losses(), baseline.losses());
    // A loss difference means something at equal budgets only.
    let loss_delta = (steps == baseline_steps
        && cl.len() == candidate.runs.len()
        && bl.len() == baseline.runs.len())
    .then(|| stats::mean_difference(&cl, &bl))
    .flatten();
    let faster = welch.is_some_and(|w| w.p_less < SPEEDUP_P);
    let verdict = if !candidate.all_valid {
        BenchVerdict::Invalid
    } else if candidate.target_claim && faster && time_measure == TimeMeasure::TimeToTarget {
        BenchVerdict::FasterToTarget
    } else if candidate.target_claim {
        BenchVerdict::ReachesTarget
    } else if loss_delta.is_some_and(|d| d.high < 0.0) {
        BenchVerdict::LowerLoss
    } else {
        BenchVerdict::NotSignificant
    };
    let verdict_text = match verdict {
        BenchVerdict::Invalid => {
            let bad: Vec<String> = candidate
                .runs
                .iter()
                .filter(|r| !r.valid)
                .map(|r| {
                    if r.failed_checks.is_empty() {
                        format!("seed {} {}", r.seed, r.status)
                    } else {
                        format!("seed {} failed {}", r.seed, r.failed_checks.join(", "))
                    }
                })
                .collect();
            format!("invalid: {}", bad.join("; "))
        }
        BenchVerdict::FasterToTarget => format!(
            "the candidate reaches the target (p = {} < {TARGET_P}) and is faster than the baseline (Welch p = {} < {SPEEDUP_P})",
            stats::format_p(candidate.below_target.map_or(f64::NAN, |t| t.p_value)),
            stats::format_p(welch.map_or(f64::NAN, |w| w.p_less))
        ),
        BenchVerdict::ReachesTarget => format!(
            "the candidate reaches the target (p = {} < {TARGET_P}); not significantly faster than the baseline (Welch p = {})",
            stats::format_p(candidate.below_target.map_or(f64::NAN, |t| t.p_value)),
            welch.map_or("undefined".into(), |w| stats::format_p(w.p_less))
        ),
        BenchVerdict::LowerLoss => format!(
            "no time-to-target claim (target p = {}), but a lower validation loss than the baseline at equal budget",
            candidate
                .below_target
                .map_or("undefined".into(), |t| format!("{:.3}", t.p_value))
        ),
        // Only `flag_hardware` gives this verdict, after the statistics.
        BenchVerdict::MixedHardware => String::new(),
        BenchVerdict::NotSignificant => format!(
            "no significant claim: target p = {}, speedup Welch p = {}",
            candidate
                .below_target
                .map_or("undefined".into(), |t| format!("{:.3}", t.p_value)),
            welch.map_or("undefined".into(), |w| format!("{:.3}", w.p_less))
        ),
    };
    Report {
        track,
        target_val_loss: target,
        seeds,
        steps,
        baseline_steps,
        baseline_stored: false,
        p_values: PValues {
            candidate_below_target: candidate.below_target.map(|t| t.p_value),
            baseline_below_target: baseline.below_target.map(|t| t.p_value),
            speedup: welch.map(|w| w.p_less),
            speedup_two_sided: welch.map(|w| w.p_two_sided),
        },
        candidate,
        baseline,
        time_measure,
        welch,
        speedup,
        loss_delta,
        verdict,
        verdict_text,
        comparison_id: None,
        command: String::new(),
        curves_svg: None,
        hardware: Vec::new(),
    }
}
