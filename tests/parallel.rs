//! Data parallelism on the CPU: ranks as threads (`LocalGroup`), each training
//! on its share of every batch with averaged gradients, end where one rank
//! training on the whole batch ends, and share one verdict.

use crate::common;
use speedrun::record::RunStatus;

use common::*;
use speedrun::parallel::{Collective, LocalGroup};
use speedrun::plugins::Components;
use speedrun::ranks::run_local;
use speedrun::train::execute;
use speedrun::verify::{Check, Outcome};
use std::sync::Arc;

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

#[test]
fn two_ranks_train_like_one_rank_on_the_whole_batch_and_share_one_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let steps = Some(6);
    let single = smoke_options(&dir.path().join("single"), steps);
    let track = single.track.track.clone();
    let build = || Ok(Components::reference(&track));
    let one = execute(&single, &mut || build()).unwrap();
    assert!(one.error.is_none());
    let ranked = smoke_options(&dir.path().join("ranked"), steps);
    let all = run_local(&ranked, 2, &build);
    assert_eq!(all.len(), 2);
    let all: Vec<_> = all.into_iter().map(|f| f.unwrap()).collect();
    for (r, f) in all.iter().enumerate() {
        assert!(f.error.is_none(), "rank {r}: {:?}", f.error);
        let s = &f.summary;
        assert!(s.verdict.valid, "rank {r}: {:?}", s.verdict.failed());
        let ranks = s.verdict.get(Check::Ranks).unwrap();
        assert_eq!(ranks.outcome, Outcome::Passed);
        assert!(
            ranks
                .detail
                .starts_with("2 ranks, each valid; their parameters are identical"),
            "{}",
            ranks.detail
        );
        // The global batch's tokens, not a rank's share.
        assert_eq!(s.tokens, one.summary.tokens);
        for (step, (a, b)) in s
            .train_losses
            .iter()
            .zip(&one.summary.train_losses)
            .enumerate()
        {
            assert!(
                rel(*a as f64, *b as f64) < 1e-4,
                "rank {r} step {step}: {a} vs {b}"
            );
        }
        let (a, b) = (
            s.final_val_loss.unwrap(),
            one.summary.final_val_loss.unwrap(),
        );
        assert!(rel(a, b) < 1e-4, "rank {r}: val {a} vs {b}");
    }
    // Both ranks report the same (averaged) losses.
    assert_eq!(all[0].summary.train_losses, all[1].summary.train_losses);
    // Validation is shared out between the ranks and summed: one value for all.
    assert_eq!(all[0].summary.final_val_loss, all[1].summary.final_val_loss);
    assert_eq!(all[1].summary.run_dir, dir.path().join("ranked/rank-1"));
    assert!(dir.path().join("ranked/rank-1/summary.json").exists());
    // A single run's ranks check passes as one rank.
    let only = one.summary.verdict.get(Check::Ranks).unwrap();
    assert_eq!(
        (only.outcome, only.detail.as_str()),
        (Outcome::Passed, "one rank (no data parallelism)")
    );
}

#[test]
fn a_batch_the_ranks_cannot_split_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let opts = smoke_options(dir.path(), Some(2));
    let track = opts.track.track.clone();
    let all = run_local(&opts, 3, &|| Ok(Components::reference(&track)));
    for f in all {
        let e = format!("{:#}", f.err().expect("3 ranks split 16 sequences"));
        assert!(
            e.contains("3 ranks cannot split the track's batch of 16 sequences"),
            "{e}"
        );
    }
    assert!(!dir.path().join("metrics.jsonl").exists());
}

#[test]
fn a_rank_that_stops_fails_the_others_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let groups = LocalGroup::new(2);
    let track = speedrun::track::load("smoke").unwrap().track;
    let outcomes: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = groups
            .into_iter()
            .map(|g| {
                let mut o = smoke_options(&dir.path().join(format!("r{}", g.rank())), Some(4));
                if g.rank() == 1 {
                    // Rank 1's wall-clock limit has already passed: it stops before step 0.
                    o.deadline = Some(std::time::Instant::now());
                }
                o.parallel = Some(Arc::new(g));
                let track = track.clone();
                s.spawn(move || execute(&o, &mut || Ok(Components::reference(&track))).unwrap())
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let e0 = format!(
        "{:#}",
        outcomes[0].error.as_ref().expect("rank 0 went on alone")
    );
    assert!(
        e0.contains("rank 1 of 2 stopped") && e0.contains("wall-clock limit"),
        "{e0}"
    );
    for f in &outcomes {
        assert_eq!(f.summary.status, RunStatus::Failed);
        assert!(!f.summary.verdict.valid);
    }
}

#[test]
fn the_cli_runs_ranks_and_refuses_them_on_a_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = speedrun(&[
        "run",
        "--track",
        "smoke",
        "--steps",
        "3",
        "--quiet",
        "--ranks",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let checks = summary["verdict"]["checks"].as_array().unwrap();
    let ranks = checks.iter().find(|c| c["check"] == "ranks").unwrap();
    assert!(
        ranks["detail"].as_str().unwrap().starts_with("2 ranks"),
        "{ranks}"
    );
    assert!(out.join("rank-1/summary.json").exists());

    let o = speedrun(&[
        "run", "--track", "smoke", "--ranks", "2", "--device", "cuda",
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("several GPUs need the `nccl` feature"), "{t}");
}

/// An optimizer whose second instance in this process (the other rank's, when
/// ranks are threads) steps at half the learning rate: ranks that diverge,
/// coordinated through a `static`.
struct Diverger {
    slow: bool,
}

static DIVERGERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl speedrun_plugin_api::Plugin for Diverger {
    fn new(_: &serde_json::Value) -> speedrun_plugin_api::Result<Self> {
        let n = DIVERGERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Diverger { slow: n % 2 == 1 })
    }
}

impl speedrun_plugin_api::Optimizer for Diverger {
    fn init(&mut self, _: &[speedrun_plugin_api::ParamRef]) -> speedrun_plugin_api::Result<()> {
        Ok(())
    }

    fn step(&mut self, s: &speedrun_plugin_api::OptimizerStep) -> speedrun_plugin_api::Result<()> {
        let lr = if self.slow { s.lr * 0.5 } else { s.lr };
        for pg in s.params.iter() {
            pg.param.assign(&pg.param.sub(&pg.grad.scale(lr)?)?)?;
        }
        Ok(())
    }
}

speedrun_plugin_api::impl_plugin!(Diverger, name: "diverger", hooks: [optimizer]);

#[test]
fn ranks_that_diverge_are_caught_at_the_next_validation() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = smoke_options(dir.path(), Some(12));
    opts.track.track.validation.every_steps = 5;
    let track = opts.track.track.clone();
    let build = || {
        let module = speedrun::plugins::native::NativeModule::in_process(
            speedrun_plugin_api::native::module::<Diverger>(),
        );
        let p = speedrun::plugins::start(
            speedrun::plugins::PluginModule::Native(module),
            std::path::Path::new("in-process:diverger"),
            &track,
            0,
            None,
            &default_policy(),
        )?;
        speedrun::plugins::compose(&track, vec![p])
    };
    let all = run_local(&opts, 2, &build);
    for (r, f) in all.into_iter().enumerate() {
        let f = f.unwrap();
        let v = &f.summary.verdict;
        assert!(!v.valid, "rank {r}");
        let ranks = v.get(Check::Ranks).unwrap();
        assert_eq!(ranks.outcome, Outcome::Failed, "rank {r}");
        // Caught at the first validation after the ranks' first steps, long
        // before the end (step 12) where only final digests used to be compared.
        assert!(
            ranks.detail.contains("at the validation after step 5"),
            "rank {r}: {}",
            ranks.detail
        );
        assert_eq!(f.summary.steps, 5, "rank {r}");
    }
}
