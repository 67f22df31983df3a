//! The reference training loop. It reads as the algorithm — schedule, forward,
//! the host's loss, backward, optimizer, validate — with the machinery (timer,
//! telemetry, the checks of `verify`, the run store) around it.

mod console;
mod labels;
mod null_control;
mod start;
mod step;
pub mod telemetry;
mod timed;
pub mod timer;
pub mod validate;
mod verdict;

use console::*;
pub use console::{interrupt, Interrupted};
pub use labels::{Labels, VocabMode};
pub use null_control::{
    amend_verdict, null_control, null_control_floor, NULL_CONTROL_FLOOR_FRACTION,
};
use start::*;
use step::*;
pub(crate) use step::{SplitTimes, Stack, StepAt};
use timed::*;
pub use verdict::initial_loss_floor;
use verdict::*;

use crate::data::loader::{TrackData, TrainStream, ValidationSet};
use crate::data::permutation::VocabPermutation;
use crate::data::tokenizer::Tokenizer;
use crate::device::clock::Span;
use crate::device::memory::MemoryMeter;
use crate::device::DeviceSettings;
use crate::model::Model;
use crate::optim::{Grads, Optimizer, Schedule, StepInput};
use crate::parallel::{Collective, RankReport};
use crate::plugins::{Components, LoadedPlugin};
use crate::record::{Hardware, PolicyRecord, RunManifest, RunStatus, RunSummary};
use crate::store::{RunRecord, Store};
use crate::track::{LoadedTrack, Track};
use crate::verify::causality::{self, Twins};
use crate::verify::{self, Check, Ledger, Verdict, Violation};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use serde::Serialize;
use std::path::PathBuf;
use telemetry::RunDir;
use timer::TrainingTimer;

/// Everything that decides a run.
#[derive(Clone)]
pub struct RunOptions {
    pub track: LoadedTrack,
    pub seed: u64,
    /// Run fewer steps than the track's budget allows (the schedule spans these steps).
    pub steps: Option<usize>,
    pub out: PathBuf,
    /// Read the track's shards from here instead of its `data.dir`.
    pub data_dir: Option<PathBuf>,
    pub save_checkpoint: Option<PathBuf>,
    /// Show a progress bar (on a terminal) or progress lines.
    pub progress: bool,
    /// Record the run in this store, opened by the caller (none: the run directory only).
    pub store: Option<Store>,
    /// Stop the run (failed, not invalid) when this instant passes.
    pub deadline: Option<std::time::Instant>,
    /// Where to train, and the run's device-memory budget.
    pub device: DeviceSettings,
    /// This run is one rank of a data-parallel group (`crate::parallel`): it
    /// trains on its share of every batch and averages gradients with the others.
    pub parallel: Option<std::sync::Arc<dyn Collective>>,
    /// How the run's tokens are labelled (see `data::permutation`).
    pub vocab: VocabMode,
    /// Mixed into the label secret with the host key: `submit` draws one per
    /// submission, so labels cannot be computed ahead even with the key.
    pub label_nonce: Option<[u8; 32]>,
    /// What to call the stack (`--label`): in the manifest and the stack key.
    pub stack_label: Option<String>,
}

impl RunOptions {
    /// Rank `rank`'s options in a data-parallel run: rank 0 keeps the run's
    /// directory, store and checkpoint; rank r writes `rank-r/` inside the
    /// directory, quietly, and records nothing in the store.
    pub fn for_rank(&self, rank: usize, group: std::sync::Arc<dyn Collective>) -> RunOptions {
        let mut o = self.clone();
        if rank > 0 {
            o.out = self.out.join(format!("rank-{rank}"));
            o.store = None;
            o.progress = false;
            o.save_checkpoint = None;
        }
        o.parallel = Some(group);
        o
    }
}

/// What the error of a run stopped by its deadline says.
pub const DEADLINE: &str = "the wall-clock limit ran out";

/// A run that started: its summary (also in `summary.json`), and the error that
/// ended it early, if one did.
pub struct Finished {
    pub summary: RunSummary,
    pub error: Option<anyhow::Error>,
}

/// Trains one run with the given components and writes its run directory; a run
/// that fails is an `Err` (its summary and verdict are still written). A track
/// with an untimed warm-up needs components built twice: use [`execute`].
pub fn run(opts: &RunOptions, comps: Components) -> Result<RunSummary> {
    let mut once = Some(comps);
    let name = opts.track.track.name.clone();
    let f = execute(opts, &mut || {
        once.take().ok_or_else(|| {
            anyhow!("track {name} has an untimed warm-up: its runs need components built twice (train::execute)")
        })
    })?;
    match f.error {
        Some(e) => Err(e),
        None => Ok(f.summary),
    }
}

/// Trains one run. `build` makes the components: once, or twice when the track
/// has an untimed warm-up (the first copy warms up and is dropped, so no state a
/// plugin held during warm-up survives into the timed run). `Err` only when the
/// run could not start; a run that failed part-way is `Finished` with its error.
pub fn execute(
    opts: &RunOptions,
    build: &mut dyn FnMut() -> Result<Components>,
) -> Result<Finished> {
    let run = execute_rank(opts, build);
    // A rank that could not run stops its group, which would otherwise wait for it.
    if let (Some(g), Err(e)) = (&opts.parallel, &run) {
        g.abort(&format!("{e:#}"));
    }
    run
}

/// A run: `prepare` (data, labels, the stack, the run directory and its
/// manifest), `train` (the timed loop), `finish` (the verdict, the summary,
/// the store, the checkpoint).
fn execute_rank(
    opts: &RunOptions,
    build: &mut dyn FnMut() -> Result<Components>,
) -> Result<Finished> {
    if opts.progress {
        banner(opts);
    }
    let mut run = prepare(opts, build)?;
    if opts.progress {
        eprintln!(
            "  stack      {} ({} parameters){}",
            crate::store::stack_key(
                &run.stack
                    .plugins
                    .iter()
                    .map(|p| p.record.clone())
                    .collect::<Vec<_>>(),
                opts.stack_label.as_deref()
            ),
            run.stack.model.params.numel(),
            if run.steps < opts.track.track.steps() {
                format!(
                    "; {} of the track's {} steps",
                    run.steps,
                    opts.track.track.steps()
                )
            } else {
                String::new()
            }
        );
    }
    let (outcome, stats) = train(opts, &mut run);
    finish(opts, run, outcome, stats)
}

/// Everything a run has set up before its first timed step.
struct Prepared {
    steps: usize,
    device: Device,
    data: TrackData,
    valset: ValidationSet,
    labels: Labels,
    ledger: Ledger,
    stack: Stack,
    /// The training clock, holding the init hooks' time.
    timer: TrainingTimer,
    init_s: f64,
    warm_detail: String,
    dir: RunDir,
    record: Option<RunRecord>,
    summary: RunSummary,
    /// Counts the run as training while it lives (see `console::interrupt`).
    _training: Training,
}

/// What the timed loop measured for the checks it passes at the end.
struct LoopStats {
    twins: Twins,
    plugin_ms: f64,
    evals: usize,
    initial_loss: Option<f64>,
}

fn prepare(opts: &RunOptions, build: &mut dyn FnMut() -> Result<Components>) -> Result<Prepared> {
    let track = &opts.track.track;
    let steps = steps_of(opts)?;
    let device = crate::device::open(opts.device.choice)?;
    let meter = std::sync::Arc::new(MemoryMeter::new(&device, opts.device.memory_budget));
    let data = TrackData::open(&opts.track, opts.data_dir.as_deref())?;
    let tokenizer = Tokenizer::new(track.data.tokenizer)?;
    let mut valset = ValidationSet::new(
        &data.val,
        track.validation.tokens,
        track.model.seq_len,
        &tokenizer,
    )?;
    let labels = Labels::of(track, opts.seed, opts.vocab, opts.label_nonce)?;
    valset.permute(&labels.val);
    let mut ledger = Ledger::default();
    match &track.data.manifest {
        Some(m) => ledger.pass(
            Check::DataHashes,
            format!(
                "{} shards match the SHA-256 sums of {m}",
                data.records.len()
            ),
        ),
        None => ledger.skip(
            Check::DataHashes,
            "the track names no data manifest: shard hashes are recorded, not checked",
        ),
    }
    ledger.pass(
        Check::Track,
        format!(
            "{} parsed and validated (sha256 {})",
            opts.track.path.display(),
            opts.track.sha256
        ),
    );

    let warm = match track.train.warmup_steps.min(steps) {
        0 => None,
        n => Some(
            warm_up(opts, build, &data, &labels, n, steps, &meter)
                .context("in the untimed warm-up")?,
        ),
    };
    let comps = build()?;
    // Every hook call is training time: model.params, model.init and
    // optimizer.init run on the clock, before the first step.
    let mut timer = TrainingTimer::new();
    timer.resume();
    let stack = Stack::assemble(track, comps, opts.seed, meter, Some(&labels));
    let init_s = timer.pause().as_secs_f64();
    let stack = stack?;
    ledger.pass(
        Check::Plugins,
        plugins_detail(&stack.plugins, stack.policy.as_ref()),
    );
    let warm_detail = match &warm {
        None => "no untimed warm-up".to_string(),
        Some(w) => {
            let now = stack.model.params.digest()?;
            if now != w.digest {
                ledger.fail(
                    Check::Timing,
                    format!(
                        "after the untimed warm-up the rebuilt parameters differ from the host's snapshot ({} vs {})",
                        now, w.digest
                    ),
                );
            }
            format!(
                "untimed warm-up of {} steps ({:.2} s) on a throwaway stack; the timed run starts from the snapshot (parameters sha256 {})",
                w.steps, w.seconds, w.digest
            )
        }
    };

    let dir = RunDir::create(&opts.out)?;
    let manifest = manifest_of(opts, steps, &data, &stack, &device);
    dir.write_json("manifest.json", &manifest)?;
    dir.write_private_json("private.json", &labels.private_record(opts.vocab))?;
    // From the moment the store holds the run, an interrupt (Ctrl-C, scancel's
    // SIGTERM) stops it before its next step and records it, never leaving it
    // `running` for its process's machine to find.
    let training = Training::start();
    let record = match &opts.store {
        Some(store) => Some(
            store
                .begin_run(&manifest, &opts.out)
                .with_context(|| format!("recording the run in {}", store.location()))?,
        ),
        None => None,
    };
    let mut summary = RunSummary::started(&manifest, track, opts, ledger.verdict());
    summary.warmup_steps = warm.as_ref().map_or(0, |w| w.steps);
    summary.store_id = record.as_ref().map(|r| r.id());
    Ok(Prepared {
        steps,
        device,
        data,
        valset,
        labels,
        ledger,
        stack,
        timer,
        init_s,
        warm_detail,
        dir,
        record,
        summary,
        _training: training,
    })
}

/// The timed loop over a prepared run.
fn train(opts: &RunOptions, run: &mut Prepared) -> (Result<()>, LoopStats) {
    let track = &opts.track.track;
    let flops_per_token = track.flops_per_token(run.stack.model.params.numel());
    let mut cx = LoopCx {
        opts,
        stack: &mut run.stack,
        data: &run.data,
        valset: &run.valset,
        steps: run.steps,
        device: &run.device,
        dir: &mut run.dir,
        record: run.record.as_mut(),
        ledger: &mut run.ledger,
        flops_per_token,
        twins: Twins::secret(run.labels.train.real()),
        labels_train: run.labels.train.clone(),
        timer: &mut run.timer,
        plugin_ms: 0.0,
        evals: 0,
        initial_loss: None,
    };
    let outcome = train_loop(&mut cx, &mut run.summary);
    let stats = LoopStats {
        twins: cx.twins,
        plugin_ms: cx.plugin_ms,
        evals: cx.evals,
        initial_loss: cx.initial_loss,
    };
    (outcome, stats)
}

fn finish(
    opts: &RunOptions,
    run: Prepared,
    outcome: Result<()>,
    stats: LoopStats,
) -> Result<Finished> {
    let track = &opts.track.track;
    let Prepared {
        stack,
        mut ledger,
        mut summary,
        dir,
        mut record,
        labels,
        ..
    } = run;
    summary.peak_memory_bytes = stack.meter.peak();
    summary.flops = track.flops_per_token(stack.model.params.numel()) * summary.tokens as f64;
    for v in crate::plugins::take_violations(&stack.plugins) {
        ledger.fail(v.check, v.detail);
    }
    if let Err(e) = &outcome {
        if let Some(v) = verify::violation_of(e) {
            ledger.fail(v.check, v.detail.clone());
        }
    }
    let outcome = match (&opts.parallel, outcome) {
        (Some(g), Err(e)) => {
            g.abort(&format!("{e:#}"));
            Err(e)
        }
        (_, o) => o,
    };
    conclude(
        &mut ledger,
        &summary,
        &outcome,
        Conclusion {
            twins: &stats.twins,
            plugin_ms: stats.plugin_ms,
            init_s: run.init_s,
            evals: stats.evals,
            budget: track.train.token_budget,
            warm_detail: run.warm_detail,
            vocab: track.model.vocab,
            plugins: &stack.plugins,
            initial_loss: stats.initial_loss,
            labels: &labels,
            mode: opts.vocab,
        },
    );
    judge_ranks(opts.parallel.as_deref(), &mut ledger, &stack.model)?;
    summary.verdict = ledger.verdict();
    match &outcome {
        Ok(()) => summary.status = RunStatus::Complete,
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
            summary.status = RunStatus::Incomplete;
            summary.error = Some(format!(
                "{e:#}; the partial run is in {}",
                opts.out.display()
            ));
        }
        Err(e) => {
            summary.status = RunStatus::Failed;
            summary.error = Some(format!("{e:#}"));
        }
    }
    dir.write_json("summary.json", &summary)?;
    if let Some(r) = record.as_mut() {
        if let Err(e) = r.finish(&summary) {
            tracing::warn!("the run store could not record the run's end: {e:#}");
        }
    }
    if outcome.is_ok() {
        if let Some(path) = &opts.save_checkpoint {
            crate::checkpoint::save_unpermuted(&stack.model.params, &labels.train, path)?;
        }
    }
    let error = outcome.err().map(|e| match summary.status {
        // Say where the partial run is, and that the store already knows.
        RunStatus::Incomplete => e.context(format!(
            "the partial run is in {} and recorded as incomplete",
            opts.out.display()
        )),
        _ => e,
    });
    Ok(Finished { summary, error })
}
