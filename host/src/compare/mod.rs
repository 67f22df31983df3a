//! The significance bench: N seeds of a candidate stack and of a baseline
//! (the reference unless told), interleaved A B A B in one session so drift in
//! the machine's speed hits both alike; every run verified and stored. The
//! report answers the benchmark's two questions with statistics: is the
//! candidate's mean validation loss below the target (one-sided t-test,
//! p < 0.01 for a time-to-target claim), and is it faster than the baseline
//! (Welch, one-sided, p < 0.05), with the scientific delta (loss change at equal
//! budget, speedup) as 95% intervals.

pub mod batch;
mod report;
mod stored;
pub use report::*;
pub use stored::store_comparison;
use stored::stored_baseline;

use crate::cluster::Executor;
use crate::plugins;
use crate::plugins::Components;
use crate::record::{RunStatus, RunSummary};
use crate::stats::{self, Interval, Summary, TTest, Welch};
use crate::store::Store;
use crate::track::LoadedTrack;
use crate::train::{self, RunOptions};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use speedrun_sandbox_policy::LoadedPolicy;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

/// The words a run's error carries when `--max-wall` ran out.
pub use crate::train::DEADLINE;

/// A plugin stack to run: no plugins is the reference.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StackSpec {
    pub plugins: Vec<PathBuf>,
    pub configs: Vec<String>,
    pub wasm: bool,
    /// What to call it in reports (default: its plugins' file names).
    pub label: Option<String>,
    /// This stack's step count, overriding the session's (the speedrun's records
    /// shorten the candidate's run while the reference keeps the full budget).
    pub steps: Option<usize>,
}

impl StackSpec {
    fn build(&self, lt: &LoadedTrack, seed: u64, policy: &LoadedPolicy) -> Result<Components> {
        if self.plugins.is_empty() {
            return Ok(Components::reference(&lt.track));
        }
        plugins::stack(
            &lt.track,
            seed,
            &self.plugins,
            &self.configs,
            self.wasm,
            policy,
        )
    }

    pub fn describe(&self) -> String {
        if let Some(l) = &self.label {
            return l.clone();
        }
        if self.plugins.is_empty() {
            return "reference".into();
        }
        let names: Vec<String> = self
            .plugins
            .iter()
            .map(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| p.display().to_string())
            })
            .collect();
        format!(
            "{}{}",
            names.join("+"),
            if self.wasm { " (wasm)" } else { "" }
        )
    }
}

/// What every run of a bench shares.
pub struct Session {
    pub track: LoadedTrack,
    pub seeds: Vec<u64>,
    pub steps: Option<usize>,
    pub data_dir: Option<PathBuf>,
    /// Run directories go under here: `ROLE-sSEED`.
    pub out: PathBuf,
    pub store: Option<Store>,
    pub policy: LoadedPolicy,
    pub progress: bool,
    /// Every run stops at this instant (`--max-wall`).
    pub deadline: Option<Instant>,
    pub device: crate::device::DeviceSettings,
    /// Mixed into every run's label secret (`train::RunOptions::label_nonce`):
    /// `submit` draws one per submission.
    pub label_nonce: Option<[u8; 32]>,
    /// Where the runs execute: here, or as a Slurm job array.
    pub executor: Executor,
}

impl Session {
    /// The options of `stack`'s run at `seed` in this session, in `OUT/ROLE-sSEED`.
    fn run_options(&self, role: &str, stack: &StackSpec, seed: u64) -> RunOptions {
        RunOptions {
            track: self.track.clone(),
            seed,
            steps: stack.steps.or(self.steps),
            out: self.out.join(format!("{role}-s{seed}")),
            data_dir: self.data_dir.clone(),
            save_checkpoint: None,
            progress: self.progress,
            store: self.store.clone(),
            deadline: self.deadline,
            device: self.device,
            parallel: None,
            vocab: Default::default(),
            label_nonce: self.label_nonce,
            stack_label: stack.label.clone(),
        }
    }
}

pub struct BenchSpec {
    pub session: Session,
    pub candidate: StackSpec,
    pub baseline: StackSpec,
    /// Take the baseline's runs from the store instead of running them again
    /// (the reference only: its newest complete run of each seed on this track
    /// file at the baseline's step count).
    pub baseline_stored: bool,
}

impl BenchSpec {
    /// The `speedrun bench` command line that reproduces this comparison: the
    /// seeds listed, every plugin and configuration in order.
    pub fn command(&self) -> String {
        let s = &self.session;
        // A track from the registry by name; one loaded from a file by its path.
        let builtin = s
            .track
            .root
            .join("tracks")
            .join(format!("{}.toml", s.track.track.name));
        let track = if builtin == s.track.path {
            s.track.track.name.clone()
        } else {
            s.track.path.display().to_string()
        };
        let seeds: Vec<String> = s.seeds.iter().map(|x| x.to_string()).collect();
        let mut c = format!(
            "speedrun bench --track {track} --seed-list {}",
            seeds.join(",")
        );
        for set in &s.track.overrides {
            c += &format!(" --set '{set}'");
        }
        let candidate_steps = self.candidate.steps.or(s.steps);
        if let Some(n) = candidate_steps {
            c += &format!(" --steps {n}");
        }
        let baseline_steps = self.baseline.steps.or(s.steps);
        if baseline_steps != candidate_steps {
            let n = baseline_steps.unwrap_or(s.track.track.steps());
            c += &format!(" --baseline-steps {n}");
        }
        for (flag, stack) in [("", &self.candidate), ("baseline-", &self.baseline)] {
            for p in &stack.plugins {
                c += &format!(" --{flag}plugin {}", p.display());
            }
            for k in &stack.configs {
                c += &format!(" --{flag}plugin-config '{k}'");
            }
        }
        if self.candidate.wasm {
            c += " --wasm";
        }
        if let Some(l) = &self.candidate.label {
            c += &format!(" --label '{l}'");
        }
        c
    }
}

/// The seeds of a bench: distinct, or refused.
pub fn check_seeds(seeds: &[u64]) -> Result<()> {
    if seeds.len() < 2 {
        bail!(
            "a significance bench needs at least 2 seeds (got {}): a t-test has no spread to measure with one",
            seeds.len()
        );
    }
    let mut seen = BTreeSet::new();
    for s in seeds {
        if !seen.insert(s) {
            bail!("seed {s} is repeated: a significance claim needs distinct seeds (the same seed reruns the same curve)");
        }
    }
    Ok(())
}

/// One run of the bench.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchRun {
    pub seed: u64,
    pub run_dir: String,
    pub store_id: Option<i64>,
    pub status: RunStatus,
    pub valid: bool,
    pub failed_checks: Vec<String>,
    pub final_val_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub train_time_s: f64,
    pub time_to_target_s: Option<f64>,
    pub tokens_to_target: Option<u64>,
    pub tokens: u64,
    pub flops: f64,
    pub error: Option<String>,
}

fn bench_run(s: &RunSummary) -> BenchRun {
    BenchRun {
        seed: s.seed,
        run_dir: s.run_dir.display().to_string(),
        store_id: s.store_id,
        status: s.status,
        valid: s.verdict.valid && s.status == RunStatus::Complete,
        failed_checks: s.verdict.failed().iter().map(|c| c.to_string()).collect(),
        final_val_loss: s.final_val_loss,
        best_val_loss: s.best_val_loss,
        train_time_s: s.train_time_s,
        time_to_target_s: s.time_to_target_s,
        tokens_to_target: s.tokens_to_target,
        tokens: s.tokens,
        flops: s.flops,
        error: s.error.clone(),
    }
}

/// Runs every stack on every seed, interleaved (seed 0: A B C, seed 1: A B C,
/// ...), each run verified and stored; answers each stack's runs in order.
/// With `--executor slurm` each seed is a task of a job array (see `batch`).
pub fn run_stacks(s: &Session, stacks: &[(&str, &StackSpec)]) -> Result<Vec<Vec<BenchRun>>> {
    check_seeds(&s.seeds)?;
    if let Executor::Slurm(o) = &s.executor {
        return batch::run_on_slurm(s, stacks, o);
    }
    let mut out: Vec<Vec<BenchRun>> = stacks.iter().map(|_| Vec::new()).collect();
    for (i, &seed) in s.seeds.iter().enumerate() {
        tracing::info!("bench: seed {seed} ({}/{})", i + 1, s.seeds.len());
        for (run, runs) in run_seed(s, stacks, seed)?.into_iter().zip(out.iter_mut()) {
            runs.push(run);
        }
    }
    Ok(out)
}

/// One seed of every stack, back to back (the pairing the speedup test rests
/// on): the runs in the stacks' order.
fn run_seed(s: &Session, stacks: &[(&str, &StackSpec)], seed: u64) -> Result<Vec<BenchRun>> {
    let mut out = Vec::new();
    for (role, stack) in stacks {
        tracing::info!("bench: seed {seed}, {role} {}", stack.describe());
        let opts = s.run_options(role, stack, seed);
        let f = train::execute(&opts, &mut || stack.build(&s.track, seed, &s.policy))?;
        if let Some(e) = f.error {
            // Out of time, or interrupted (Ctrl-C, scancel's SIGTERM): the
            // session stops here rather than start runs that would stop at once.
            let deadline = f
                .summary
                .error
                .as_deref()
                .is_some_and(|m| m.contains(DEADLINE));
            if deadline || e.downcast_ref::<train::Interrupted>().is_some() {
                return Err(e.context(format!("bench: {role} seed {seed}")));
            }
            tracing::warn!("bench: {role} seed {seed} failed: {e:#}");
        }
        out.push(bench_run(&f.summary));
    }
    Ok(out)
}

/// The null-data control of `stack` at `seed` (see `train::null_control`), in
/// `OUT/ROLE-sSEED/null-control`: the check a record claim must also pass.
pub fn null_control(
    s: &Session,
    role: &str,
    stack: &StackSpec,
    seed: u64,
) -> Result<crate::verify::CheckResult> {
    // train::null_control keeps the control out of the store and quiet.
    let opts = s.run_options(role, stack, seed);
    train::null_control(&opts, &mut || stack.build(&s.track, seed, &s.policy))
}

/// Runs the bench: for each seed, the candidate then the baseline (or the
/// candidate alone, the baseline read from the store).
pub fn run(spec: &BenchSpec) -> Result<Report> {
    let s = &spec.session;
    let track = &s.track.track;
    let candidate_steps = spec.candidate.steps.or(s.steps).unwrap_or(track.steps());
    let baseline_steps = spec.baseline.steps.or(s.steps).unwrap_or(track.steps());
    let (cand, base) = if spec.baseline_stored {
        // Checked before any training, so a missing seed costs nothing.
        let base = stored_baseline(s, &spec.baseline, baseline_steps)?;
        let mut sides = run_stacks(s, &[("candidate", &spec.candidate)])?;
        (sides.pop().unwrap_or_default(), base)
    } else {
        let mut sides = run_stacks(
            s,
            &[("candidate", &spec.candidate), ("baseline", &spec.baseline)],
        )?
        .into_iter();
        (
            sides.next().unwrap_or_default(),
            sides.next().unwrap_or_default(),
        )
    };
    let target = track.target.val_loss;
    let mut report = analyse(
        track.name.clone(),
        target,
        s.seeds.clone(),
        (candidate_steps, baseline_steps),
        Side::new(spec.candidate.describe(), cand, target),
        Side::new(spec.baseline.describe(), base, target),
    );
    report.baseline_stored = spec.baseline_stored;
    report.command = spec.command();
    report.curves_svg = Some(write_overlay(s, &report)?);
    if let Some(store) = &s.store {
        store_comparison(store, &mut report)?;
    }
    Ok(report)
}

/// Every run of the report's validation curve on one chart, with the target:
/// `OUT/curves.svg`. Stored baseline runs are drawn from their own directories.
pub fn write_overlay(s: &Session, r: &Report) -> Result<String> {
    let runs: Vec<(String, PathBuf)> = [("candidate", &r.candidate), ("baseline", &r.baseline)]
        .iter()
        .flat_map(|(role, side)| {
            side.runs
                .iter()
                .map(move |b| (format!("{role} seed {}", b.seed), PathBuf::from(&b.run_dir)))
        })
        .collect();
    let labelled: Vec<(String, &std::path::Path)> =
        runs.iter().map(|(l, p)| (l.clone(), p.as_path())).collect();
    let title = format!("{} against {}", r.candidate.stack, r.baseline.stack);
    let svg = crate::views::overlay_svg(&title, &labelled, r.target_val_loss, false)?;
    std::fs::create_dir_all(&s.out)?;
    let path = s.out.join("curves.svg");
    std::fs::write(&path, svg)?;
    Ok(path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seed: u64, loss: f64, time: f64, ttt: Option<f64>) -> BenchRun {
        BenchRun {
            seed,
            run_dir: String::new(),
            store_id: None,
            status: RunStatus::Complete,
            valid: true,
            failed_checks: vec![],
            final_val_loss: Some(loss),
            best_val_loss: Some(loss),
            train_time_s: time,
            time_to_target_s: ttt,
            tokens_to_target: ttt.map(|_| 4096),
            tokens: 0,
            flops: 0.0,
            error: None,
        }
    }

    fn side(runs: Vec<BenchRun>) -> Side {
        Side::new("x".into(), runs, Some(3.25))
    }

    #[test]
    fn runs_on_more_than_one_kind_of_hardware_void_every_claim_but_invalidity() {
        let fast = side(vec![
            run(0, 3.2, 5.0, Some(5.0)),
            run(1, 3.21, 5.1, Some(5.1)),
        ]);
        let slow = side(vec![
            run(0, 3.2, 8.0, Some(8.0)),
            run(1, 3.21, 8.2, Some(8.2)),
        ]);
        let r = analyse(
            "t".into(),
            Some(3.25),
            vec![0, 1],
            (10, 10),
            fast.clone(),
            slow.clone(),
        );
        let mut one = r.clone();
        one.flag_hardware(vec!["Xeon [avx512f] x2".into()]);
        assert_eq!(one.verdict, r.verdict);
        assert_eq!(one.verdict_text, r.verdict_text);
        let mut two = r.clone();
        two.flag_hardware(vec!["EPYC [avx2] x2".into(), "Xeon [avx512f] x2".into()]);
        assert_eq!(two.verdict, BenchVerdict::MixedHardware);
        assert!(!two.beats_baseline());
        assert!(
            two.verdict_text
                .contains("2 kinds of hardware (EPYC [avx2] x2; Xeon"),
            "{}",
            two.verdict_text
        );
        // An invalid candidate stays invalid: that is the stronger word.
        let mut bad = fast.runs.clone();
        bad[0].valid = false;
        let mut r = analyse(
            "t".into(),
            Some(3.25),
            vec![0, 1],
            (10, 10),
            side(bad),
            slow,
        );
        r.flag_hardware(vec!["a".into(), "b".into()]);
        assert_eq!(r.verdict, BenchVerdict::Invalid);
    }

    #[test]
    fn repeated_or_single_seeds_are_refused() {
        assert!(check_seeds(&[1, 2, 3]).is_ok());
        let e = check_seeds(&[1, 2, 1]).unwrap_err().to_string();
        assert!(e.contains("seed 1 is repeated"), "{e}");
        assert!(check_seeds(&[4]).is_err());
    }

    #[test]
    fn verdicts_follow_the_written_rule() {
        let fast = side(vec![
            run(0, 3.20, 5.0, Some(5.0)),
            run(1, 3.21, 5.2, Some(5.2)),
            run(2, 3.19, 4.9, Some(4.9)),
        ]);
        let slow = side(vec![
            run(0, 3.20, 8.0, Some(8.0)),
            run(1, 3.21, 8.3, Some(8.3)),
            run(2, 3.19, 7.9, Some(7.9)),
        ]);
        let r = analyse(
            "t".into(),
            Some(3.25),
            vec![0, 1, 2],
            (10, 10),
            fast.clone(),
            slow.clone(),
        );
        assert_eq!(
            r.verdict,
            BenchVerdict::FasterToTarget,
            "{}",
            r.verdict_text
        );
        assert!(r.beats_baseline());
        assert_eq!(r.time_measure, TimeMeasure::TimeToTarget);
        assert!(r.speedup.unwrap().low > 1.0);
        // The same runs the other way round reach the target but are slower.
        let r = analyse(
            "t".into(),
            Some(3.25),
            vec![0, 1, 2],
            (10, 10),
            slow.clone(),
            fast.clone(),
        );
        assert_eq!(r.verdict, BenchVerdict::ReachesTarget);
        assert!(!r.beats_baseline());
        // One invalid candidate run voids every claim.
        let mut bad = fast.runs.clone();
        bad[1].valid = false;
        bad[1].failed_checks = vec!["causality".into()];
        let r = analyse(
            "t".into(),
            Some(3.25),
            vec![0, 1, 2],
            (10, 10),
            side(bad),
            slow.clone(),
        );
        assert_eq!(r.verdict, BenchVerdict::Invalid);
        assert!(
            r.verdict_text.contains("seed 1 failed causality"),
            "{}",
            r.verdict_text
        );
        // A baseline run that missed the target counts with its training time
        // (8.0 s here, as before): the claim stands.
        let mut miss = slow.runs.clone();
        miss[0].time_to_target_s = None;
        let r = analyse(
            "t".into(),
            Some(3.25),
            vec![0, 1, 2],
            (10, 10),
            fast.clone(),
            side(miss.clone()),
        );
        assert_eq!(r.time_measure, TimeMeasure::TimeToTarget);
        assert_eq!(r.verdict, BenchVerdict::FasterToTarget);
        // A candidate run that missed it: no time-to-target claim, training time compared.
        let r = analyse(
            "t".into(),
            Some(3.25),
            vec![0, 1, 2],
            (10, 10),
            side(miss),
            fast,
        );
        assert_eq!(r.time_measure, TimeMeasure::TrainTime);
        assert_ne!(r.verdict, BenchVerdict::FasterToTarget);
    }
}
