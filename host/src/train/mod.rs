//! The reference training loop. It reads as the algorithm — schedule, forward,
//! the host's loss, backward, optimizer, validate — with the machinery (timer,
//! telemetry, the checks of `verify`, the run store) around it.

pub mod telemetry;
pub mod timer;
pub mod validate;

use crate::data::loader::{ShardRecord, TrackData, TrainStream, ValidationSet};
use crate::data::permutation::VocabPermutation;
use crate::data::tokenizer::Tokenizer;
use crate::device::clock::Span;
use crate::device::memory::MemoryMeter;
use crate::device::{DeviceInfo, DeviceSettings};
use crate::model::{Model, ModelHooks};
use crate::optim::adamw::{AdamW, AdamWConfig};
use crate::optim::schedule::WarmupCosine;
use crate::optim::{Grads, Optimizer, Schedule, StepInput};
use crate::parallel::{Collective, RankReport};
use crate::plugins::{LoadedPlugin, PluginRecord, PolicyRecord};
use crate::store::{RunRecord, Store};
use crate::track::{LoadedTrack, Track};
use crate::verify::causality::{self, Twins};
use crate::verify::{self, Check, Ledger, Verdict, Violation};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use serde::Serialize;
use std::path::PathBuf;
use telemetry::{Hardware, MetricLine, RunDir};
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
    /// Record the run in this SQLite store (none: the run directory only).
    pub store: Option<PathBuf>,
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
}

/// How a run labels its tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VocabMode {
    /// Training and validation under the run's secret permutation (every run).
    #[default]
    Secret,
    /// The real token ids: for calibration only; the run is unofficial.
    Identity,
    /// The null-data control: trained under the run's permutation, validated
    /// under an independent one, so an honest stack can learn nothing of use.
    NullControl,
}

/// The run's permutations: what training sees, and what validation sees.
pub struct Labels {
    pub train: std::sync::Arc<VocabPermutation>,
    pub val: std::sync::Arc<VocabPermutation>,
    /// The secret seeds they were drawn from, hex (the private manifest).
    pub seeds: (String, String),
}

impl Labels {
    pub fn of(
        track: &Track,
        seed: u64,
        mode: VocabMode,
        nonce: Option<[u8; 32]>,
    ) -> Result<Labels> {
        let vocab = track.model.vocab;
        let real = track.data.tokenizer.vocab_size().min(vocab);
        let mut key = crate::data::permutation::host_key()?;
        if let Some(n) = nonce {
            use sha2::Digest;
            key = sha2::Sha256::digest([key, n].concat()).into();
        }
        let draw = |purpose: &str| {
            let s = crate::data::permutation::secret_seed(&key, purpose, &track.name, seed);
            (
                std::sync::Arc::new(VocabPermutation::draw(real, vocab, s)),
                hex::encode(s),
            )
        };
        let ((train, ts), (val, vs)) = match mode {
            VocabMode::Identity => {
                let id = std::sync::Arc::new(VocabPermutation::identity(vocab));
                ((id.clone(), String::new()), (id, String::new()))
            }
            VocabMode::Secret => {
                let t = draw("vocab");
                (t.clone(), t)
            }
            VocabMode::NullControl => (draw("vocab"), draw("null-control validation")),
        };
        Ok(Labels {
            train,
            val,
            seeds: (ts, vs),
        })
    }

    /// Gives the plugins the document separator under these labels.
    fn tell_separator(&self, track: &Track, plugins: &[LoadedPlugin]) {
        let sep = track.data.tokenizer.separator();
        crate::plugins::set_separator(
            plugins,
            sep.map(|s| self.train.map(s)),
            sep.map(|s| self.val.map(s)),
        );
    }
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

/// The pluggable parts of the loop; `Components::reference` is the built-in stack.
pub struct Components {
    pub hooks: ModelHooks,
    pub optimizer: Box<dyn Optimizer>,
    pub schedule: Box<dyn Schedule>,
    /// The plugins behind some of the above, for the manifest and telemetry.
    pub plugins: Vec<LoadedPlugin>,
    /// The sandbox policy the stack was admitted under (none: built in code).
    pub policy: Option<PolicyRecord>,
}

impl Components {
    pub fn reference(track: &Track) -> Components {
        let o = &track.optimizer;
        Components {
            hooks: ModelHooks::default(),
            optimizer: Box::new(AdamW::new(AdamWConfig {
                beta1: o.beta1,
                beta2: o.beta2,
                eps: o.eps,
                weight_decay: o.weight_decay,
                grad_clip: o.grad_clip,
            })),
            schedule: Box::new(WarmupCosine {
                warmup_steps: o.warmup_steps,
                min_frac: o.min_lr_frac,
            }),
            plugins: Vec::new(),
            policy: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunManifest {
    pub host_version: String,
    pub git_revision: String,
    pub track: String,
    pub track_path: String,
    pub track_sha256: String,
    pub data_dir: String,
    pub shards: Vec<ShardRecord>,
    pub seed: u64,
    pub steps: usize,
    /// The track's whole budget in steps: a run of fewer (`--steps`) never scores.
    pub track_steps: usize,
    /// The version of the checks that verify this run (`verify::CHECKS_VERSION`).
    pub checks_version: u32,
    pub batch_tokens: usize,
    pub parameters: usize,
    pub optimizer: String,
    /// Every plugin in the stack: name, version, hooks, library hash, configuration.
    pub plugins: Vec<PluginRecord>,
    /// The sandbox policy's file, hash and mode, and why the run is unofficial if it is.
    pub policy: Option<PolicyRecord>,
    /// Admitted under a policy with every plugin approved.
    pub official: bool,
    pub hardware: Hardware,
    /// The device trained on (the GPU's name and memory on a GPU).
    pub device: DeviceInfo,
    pub started_at: String,
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunSummary {
    pub status: String,
    pub error: Option<String>,
    pub track: String,
    pub seed: u64,
    pub steps: usize,
    pub tokens: u64,
    pub train_time_s: f64,
    pub tokens_per_s: f64,
    pub flops: f64,
    pub final_val_loss: Option<f64>,
    pub final_val_bpb: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub best_val_bpb: Option<f64>,
    pub target_val_loss: Option<f64>,
    pub target_reached: bool,
    pub time_to_target_s: Option<f64>,
    pub tokens_to_target: Option<u64>,
    pub flops_to_target: Option<f64>,
    pub step_of_target: Option<usize>,
    /// Untimed warm-up steps run before the timed run (on a throwaway stack).
    pub warmup_steps: usize,
    /// The most memory the device held during the run (see `device::memory`).
    pub peak_memory_bytes: u64,
    /// The run's device-memory budget, if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_budget_bytes: Option<u64>,
    /// Why the run is not official (unapproved plugins under a dev-mode policy).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unofficial_reasons: Vec<String>,
    /// Every check the host made and whether the run is valid.
    pub verdict: Verdict,
    /// The run's id in the run store, when it was recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_id: Option<i64>,
    /// Every training loss, in order (the curve determinism is checked on).
    #[serde(skip)]
    pub train_losses: Vec<f32>,
    #[serde(skip)]
    pub run_dir: PathBuf,
}

/// Training FLOPs per token: 6 per matmul weight (forward + backward) plus attention's
/// 12 · layers · width · T (the speedrun's and PyTorch reference's estimate).
pub fn flops_per_token(track: &Track, parameters: usize) -> f64 {
    let m = &track.model;
    let pos = m.seq_len * m.width;
    6.0 * (parameters.saturating_sub(pos)) as f64 + 12.0 * (m.layers * m.width * m.seq_len) as f64
}

struct Progress {
    bar: Option<indicatif::ProgressBar>,
    every: usize,
}

impl Progress {
    fn new(enabled: bool, steps: usize) -> Progress {
        use std::io::IsTerminal;
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(steps as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} steps {elapsed} (eta {eta}) {msg}",
                )
                .expect("valid template"),
            );
            b
        });
        Progress {
            bar,
            every: if enabled {
                (steps / 20).max(1)
            } else {
                usize::MAX
            },
        }
    }

    fn step(&self, step: usize, steps: usize, loss: f32, tok_s: f64) {
        match &self.bar {
            Some(b) => {
                b.set_position(step as u64 + 1);
                b.set_message(format!("loss {loss:.4} {tok_s:.0} tok/s"));
            }
            None if self.every != usize::MAX
                && ((step + 1) % self.every == 0 || step + 1 == steps) =>
            {
                tracing::info!("step {}/{steps} loss {loss:.4} {tok_s:.0} tok/s", step + 1)
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

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

fn execute_rank(
    opts: &RunOptions,
    build: &mut dyn FnMut() -> Result<Components>,
) -> Result<Finished> {
    let track = &opts.track.track;
    let steps = match opts.steps {
        Some(0) => bail!("--steps must be at least 1"),
        Some(s) if s > track.steps() => bail!(
            "--steps {s} exceeds the track's token budget of {} tokens ({} steps of {} tokens)",
            track.train.token_budget,
            track.steps(),
            track.train.batch_tokens
        ),
        Some(s) => s,
        None => track.steps(),
    };
    if let Some(g) = &opts.parallel {
        if track.batch_size() % g.world() != 0 {
            bail!(
                "{} ranks cannot split the track's batch of {} sequences evenly",
                g.world(),
                track.batch_size()
            );
        }
    }
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
    let Components {
        hooks,
        mut optimizer,
        schedule,
        plugins,
        policy,
    } = build()?;
    crate::plugins::attach_device(&plugins, &meter, track.train.precision);
    labels.tell_separator(track, &plugins);
    // Every hook call is training time: model.params, model.init and
    // optimizer.init run on the clock, before the first step.
    let mut timer = TrainingTimer::new();
    timer.resume();
    let built = Model::build(&track.model, hooks, opts.seed, &device).and_then(|m| {
        let m = m.with_precision(track.train.precision);
        optimizer
            .init(&m.params)
            .context("in hook optimizer.init")?;
        Ok(m)
    });
    let init_s = timer.pause().as_secs_f64();
    // A refused op in an init hook stops the run before it has a verdict: the
    // refusal is the error, so the run is reported invalid, not unrunnable.
    let model = match built {
        Ok(m) => m,
        Err(e) => {
            return Err(
                match crate::plugins::take_violations(&plugins).into_iter().next() {
                    Some(v) => anyhow::Error::new(v).context(format!("{e:#}")),
                    None => e,
                },
            )
        }
    };
    ledger.pass(Check::Plugins, plugins_detail(&plugins, policy.as_ref()));
    let warm_detail = match &warm {
        None => "no untimed warm-up".to_string(),
        Some(w) => {
            let now = model.params.digest()?;
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

    let mut dir = RunDir::create(&opts.out)?;
    let manifest = RunManifest {
        host_version: env!("CARGO_PKG_VERSION").into(),
        git_revision: telemetry::git_revision(),
        track: track.name.clone(),
        track_path: opts.track.path.display().to_string(),
        track_sha256: opts.track.sha256.clone(),
        data_dir: data.dir.display().to_string(),
        shards: data.records.clone(),
        seed: opts.seed,
        steps,
        track_steps: track.steps(),
        checks_version: verify::CHECKS_VERSION,
        batch_tokens: track.train.batch_tokens,
        parameters: model.params.numel(),
        optimizer: optimizer.name().to_string(),
        plugins: plugins.iter().map(|p| p.record.clone()).collect(),
        // The reference stack needs no approval; plugins need every one approved;
        // real labels are for calibration only.
        official: (plugins.is_empty() || policy.as_ref().is_some_and(|p| p.warnings.is_empty()))
            && opts.vocab != VocabMode::Identity,
        policy,
        hardware: Hardware::detect(),
        device: crate::device::describe(&device),
        started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        command: std::env::args().collect(),
    };
    dir.write_json("manifest.json", &manifest)?;
    dir.write_private_json(
        "private.json",
        &serde_json::json!({
            "vocab": opts.vocab,
            "train_permutation_seed": labels.seeds.0,
            "train_permutation_sha256": labels.train.sha256(),
            "val_permutation_seed": labels.seeds.1,
            "val_permutation_sha256": labels.val.sha256(),
        }),
    )?;
    let mut record = match &opts.store {
        Some(path) => Some(
            Store::open(path)?
                .begin_run(&manifest, &opts.out)
                .with_context(|| format!("recording the run in {}", path.display()))?,
        ),
        None => None,
    };

    let mut summary = RunSummary {
        status: "running".into(),
        error: None,
        track: track.name.clone(),
        seed: opts.seed,
        steps: 0,
        tokens: 0,
        train_time_s: 0.0,
        tokens_per_s: 0.0,
        flops: 0.0,
        final_val_loss: None,
        final_val_bpb: None,
        best_val_loss: None,
        best_val_bpb: None,
        target_val_loss: track.target.val_loss,
        target_reached: false,
        time_to_target_s: None,
        tokens_to_target: None,
        flops_to_target: None,
        step_of_target: None,
        warmup_steps: warm.as_ref().map_or(0, |w| w.steps),
        peak_memory_bytes: 0,
        memory_budget_bytes: opts.device.memory_budget,
        unofficial_reasons: manifest
            .policy
            .as_ref()
            .map(|p| p.warnings.clone())
            .unwrap_or_default()
            .into_iter()
            .chain((opts.vocab == VocabMode::Identity).then(|| {
                "trained and validated on the real token ids (no secret permutation)".to_string()
            }))
            .collect(),
        verdict: ledger.verdict(),
        store_id: record.as_ref().map(|r| r.id()),
        train_losses: Vec::with_capacity(steps),
        run_dir: opts.out.clone(),
    };
    let mut cx = LoopCx {
        opts,
        model: &model,
        plugins: &plugins,
        data: &data,
        valset: &valset,
        steps,
        device: &device,
        meter: &meter,
        dir: &mut dir,
        record: record.as_mut(),
        ledger: &mut ledger,
        flops_per_token: flops_per_token(track, model.params.numel()),
        twins: Twins::secret(labels.train.real()),
        labels_train: labels.train.clone(),
        timer,
        plugin_ms: 0.0,
        evals: 0,
        initial_loss: None,
    };
    let outcome = train_loop(&mut cx, optimizer.as_mut(), schedule.as_ref(), &mut summary);
    let (twins, plugin_ms, evals, initial_loss) =
        (cx.twins, cx.plugin_ms, cx.evals, cx.initial_loss);
    summary.peak_memory_bytes = meter.peak();
    summary.flops = flops_per_token(track, model.params.numel()) * summary.tokens as f64;
    for v in crate::plugins::take_violations(&plugins) {
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
            twins: &twins,
            plugin_ms,
            init_s,
            evals,
            budget: track.train.token_budget,
            warm_detail,
            vocab: track.model.vocab,
            plugins: &plugins,
            initial_loss,
            labels: &labels,
            mode: opts.vocab,
        },
    );
    judge_ranks(opts.parallel.as_deref(), &mut ledger, &model)?;
    summary.verdict = ledger.verdict();
    match &outcome {
        Ok(()) => summary.status = "complete".into(),
        Err(e) => {
            summary.status = "failed".into();
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
            crate::checkpoint::save_unpermuted(&model.params, &labels.train, path)?;
        }
    }
    Ok(Finished {
        summary,
        error: outcome.err(),
    })
}

/// The null-data control's floor: an honest stack trained under one
/// permutation and validated under an independent one can do no better than
/// what in-context copying gains inside a window, which the calibration of the
/// reference and every technique plugin in `plugins/` put well above this
/// (docs/verification.md); a look-ahead or knowledge from outside the training
/// stream lands far below.
pub fn null_control_floor(vocab: usize) -> f64 {
    NULL_CONTROL_FLOOR_FRACTION * (vocab as f64).ln()
}

/// See `null_control_floor`: a fraction of ln(vocabulary).
pub const NULL_CONTROL_FLOOR_FRACTION: f64 = 0.8;

/// Runs the null-data control of a run: the same stack (built anew by
/// `build`), seed and steps, trained under the run's permutation and validated
/// under an independent one, in `OUT/null-control` and not in the store.
/// Answers the `null_control` check for the run it controls.
pub fn null_control(
    opts: &RunOptions,
    build: &mut dyn FnMut() -> Result<Components>,
) -> Result<verify::CheckResult> {
    let mut o = opts.clone();
    o.vocab = VocabMode::NullControl;
    o.out = opts.out.join("null-control");
    o.store = None;
    o.save_checkpoint = None;
    o.progress = false;
    let t0 = std::time::Instant::now();
    let f = execute(&o, build)?;
    let seconds = t0.elapsed().as_secs_f64();
    // Out of time is "could not run", not a failed control.
    if let Some(e) = &f.error {
        if f.summary
            .error
            .as_deref()
            .is_some_and(|m| m.contains(DEADLINE))
        {
            bail!("the null-data control ran out of time: {e:#}");
        }
    }
    let floor = null_control_floor(opts.track.track.model.vocab);
    let (outcome, detail) = match (&f.error, f.summary.final_val_loss) {
        (Some(e), _) => (
            verify::Outcome::Failed,
            format!("the null-data control run ({}) failed: {e:#}", o.out.display()),
        ),
        (None, Some(l)) if l < floor => (
            verify::Outcome::Failed,
            format!(
                "trained under one permutation and validated under an independent one, the stack scored {l:.4}, below the floor {floor:.4} ({NULL_CONTROL_FLOOR_FRACTION} x ln {}): it looks ahead or brings in knowledge from outside its training stream ({}, {seconds:.1} s)",
                opts.track.track.model.vocab,
                o.out.display()
            ),
        ),
        (None, Some(l)) => (
            verify::Outcome::Passed,
            format!(
                "trained under one permutation and validated under an independent one, the stack scored {l:.4}, not below the floor {floor:.4} ({NULL_CONTROL_FLOOR_FRACTION} x ln {}); the control took {seconds:.1} s ({})",
                opts.track.track.model.vocab,
                o.out.display()
            ),
        ),
        (None, None) => (
            verify::Outcome::Failed,
            "the null-data control run ended without a validation".to_string(),
        ),
    };
    Ok(verify::CheckResult {
        check: Check::NullControl,
        outcome,
        detail,
    })
}

/// Puts a check made after the run (its null-data control) into the run's
/// verdict, `summary.json` and its row in the store.
pub fn amend_verdict(
    summary: &mut RunSummary,
    result: verify::CheckResult,
    store: Option<&std::path::Path>,
) -> Result<()> {
    let v = &mut summary.verdict;
    match v.checks.iter_mut().find(|c| c.check == result.check) {
        Some(c) => *c = result,
        None => v.checks.push(result),
    }
    v.valid = v
        .checks
        .iter()
        .all(|c| c.outcome != verify::Outcome::Failed);
    telemetry::write_json_atomic(&summary.run_dir, "summary.json", &*summary)?;
    if let (Some(path), Some(id)) = (store, summary.store_id) {
        Store::open(path)?.run_record(id).finish(summary)?;
    }
    Ok(())
}

/// The `ranks` check: one rank passes; a group exchanges every rank's verdict and
/// parameter digest, so all of them end with the same verdict.
fn judge_ranks(group: Option<&dyn Collective>, ledger: &mut Ledger, model: &Model) -> Result<()> {
    let Some(g) = group else {
        ledger.pass(Check::Ranks, "one rank (no data parallelism)");
        return Ok(());
    };
    let own = ledger.verdict();
    let mine = RankReport {
        rank: g.rank(),
        valid: own.valid,
        failed: own.failed().iter().map(|c| c.to_string()).collect(),
        params_sha256: model.params.digest()?,
    };
    match crate::parallel::gather_reports(g, &mine) {
        Ok(all) => match crate::parallel::judge(&all) {
            Ok(detail) => ledger.pass(Check::Ranks, detail),
            Err(detail) => ledger.fail(Check::Ranks, detail),
        },
        Err(e) => ledger.fail(Check::Ranks, format!("{e:#}")),
    }
    Ok(())
}

/// The `plugin_inputs` line: what each plugin brought in, against the policy's caps.
fn plugin_inputs_detail(plugins: &[LoadedPlugin]) -> String {
    if plugins.is_empty() {
        return "no plugins: the reference stack".into();
    }
    let lines: Vec<String> = plugins
        .iter()
        .map(|p| {
            let s = p.session.borrow();
            let (u, b) = (s.inputs(), s.budget());
            format!(
                "{} ({} {} bytes): {} elements from its constants (cap {}), at most {} ops in a hook call (cap {}), {} ops in {} calls",
                p.record.name,
                p.record.transport,
                p.record.bytes,
                u.literal_elements,
                b.max_literal_elements,
                u.max_ops_in_a_call,
                b.max_ops_per_call,
                u.ops,
                u.calls
            )
        })
        .collect();
    lines.join("; ")
}

fn plugins_detail(plugins: &[LoadedPlugin], policy: Option<&PolicyRecord>) -> String {
    if plugins.is_empty() {
        return "no plugins: the reference stack".into();
    }
    let names: Vec<String> = plugins
        .iter()
        .map(|p| {
            format!(
                "{} {} ({})",
                p.record.name, p.record.version, p.record.transport
            )
        })
        .collect();
    match policy {
        Some(p) if p.warnings.is_empty() => format!(
            "{} loaded and approved by policy {} ({} mode)",
            names.join(", "),
            p.path,
            p.mode
        ),
        Some(p) => format!(
            "{} loaded and admitted by policy {} ({} mode, unofficial: {})",
            names.join(", "),
            p.path,
            p.mode,
            p.warnings.join("; ")
        ),
        None => format!("{} loaded without a policy", names.join(", ")),
    }
}

/// What the untimed warm-up left: the parameters' digest it started from.
struct WarmUp {
    digest: String,
    steps: usize,
    seconds: f64,
}

/// Runs `n` untimed steps on a throwaway copy of the stack (its own model,
/// optimizer, plugin instances and data stream), then drops it all.
fn warm_up(
    opts: &RunOptions,
    build: &mut dyn FnMut() -> Result<Components>,
    data: &TrackData,
    labels: &Labels,
    n: usize,
    steps: usize,
    meter: &MemoryMeter,
) -> Result<WarmUp> {
    let track = &opts.track.track;
    let Components {
        hooks,
        mut optimizer,
        schedule,
        plugins,
        ..
    } = build()?;
    let meter = std::sync::Arc::new(MemoryMeter::new(meter.device(), meter.budget()));
    crate::plugins::attach_device(&plugins, &meter, track.train.precision);
    labels.tell_separator(track, &plugins);
    let model = Model::build(&track.model, hooks, opts.seed, meter.device())?
        .with_precision(track.train.precision);
    let digest = model.params.digest()?;
    optimizer.init(&model.params)?;
    let mut stream = TrainStream::with_stream(
        &data.train,
        track.batch_size(),
        track.model.seq_len,
        opts.seed,
        WARMUP_STREAM,
    )
    .permuted(labels.train.clone());
    let t0 = std::time::Instant::now();
    for step in 0..n {
        train_step(
            track,
            &model,
            optimizer.as_mut(),
            schedule.as_ref(),
            &mut stream,
            step,
            steps,
            &meter,
            opts.parallel.as_deref(),
            None,
        )?;
    }
    Ok(WarmUp {
        digest,
        steps: n,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

const WARMUP_STREAM: u64 = 0x7761_726d_5f75_7073; // "warm_ups"

/// One training step's outcome.
struct StepOut {
    loss: f32,
    lr: f64,
    grad_norm: f64,
    batch_tokens: usize,
}

/// schedule → batch (within the budget) → forward → the host's loss → backward →
/// finiteness → optimizer. The caller times it.
#[allow(clippy::too_many_arguments)]
fn train_step(
    track: &Track,
    model: &Model,
    optimizer: &mut dyn Optimizer,
    schedule: &dyn Schedule,
    stream: &mut TrainStream,
    step: usize,
    steps: usize,
    meter: &MemoryMeter,
    group: Option<&dyn Collective>,
    twin: Option<TwinStep<'_>>,
) -> Result<StepOut> {
    let device = meter.device();
    let sched = schedule
        .at(step, steps)
        .with_context(|| format!("in hook schedule at step {step}"))?;
    let seq = track.model.seq_len;
    let batch_tokens = sched.batch_tokens.unwrap_or(track.train.batch_tokens);
    if batch_tokens == 0 || batch_tokens % seq != 0 {
        bail!(
            "the schedule asked for {batch_tokens} training tokens at step {step}: not a positive multiple of the sequence length {seq}"
        );
    }
    let budget = track.train.token_budget as u64;
    if stream.tokens_consumed + batch_tokens as u64 > budget {
        return Err(Violation::new(
            Check::TokenBudget,
            format!(
                "the schedule asked for {batch_tokens} tokens at step {step}; with {} already consumed that passes the track's budget of {budget} tokens",
                stream.tokens_consumed
            ),
        )
        .into());
    }
    let mut batch = stream.next_batch_of(batch_tokens / seq);
    if let Some(g) = group {
        if batch.batch % g.world() != 0 {
            bail!(
                "the schedule's batch of {} sequences at step {step} does not split over {} ranks",
                batch.batch,
                g.world()
            );
        }
        // Every rank drew the same global batch; each trains on its share.
        batch = batch.shard(g.rank(), g.world());
    }
    let (x, y) = validate::batch_tensors(&batch, device)?;
    let lr = track.optimizer.lr * sched.lr_mult;
    let logits = match twin {
        None => model.forward(&x, true),
        Some(tw) => validate::forward_twinned(
            model,
            tw.plugins,
            &batch.inputs,
            &x,
            true,
            tw.twins,
            Some(tw.timer),
        ),
    };
    let loss = meter.guard(
        "the forward pass",
        logits.and_then(|l| validate::loss_of(&l, &y, true)),
    )?;
    let store = meter.guard("the backward pass", loss.backward().map_err(Into::into))?;
    let mut grads = Grads::collect(&model.params, &store)?;
    let mut loss = loss;
    if let Some(g) = group {
        // The all-reduce, one for the gradients and the loss together: every rank
        // continues with the same averaged gradients.
        let mut all = grads.0;
        all.push(loss);
        let mut mean = g.mean_all(&all)?;
        loss = mean.pop().expect("the loss went in last");
        grads = Grads(mean);
    }
    let grad_norm = grads.global_norm()?;
    let loss_value = loss.to_scalar::<f32>()?;
    if !loss_value.is_finite() {
        return Err(Violation::new(
            Check::FiniteTraining,
            format!(
                "the training loss is not finite at step {step} ({loss_value}); the run is stopped"
            ),
        )
        .into());
    }
    if !grad_norm.is_finite() {
        return Err(Violation::new(
            Check::FiniteTraining,
            format!(
                "the gradient norm is not finite at step {step} ({grad_norm}); the run is stopped"
            ),
        )
        .into());
    }
    let stepped = optimizer.step(
        &model.params,
        &grads,
        &StepInput {
            step,
            lr,
            momentum_mult: sched.momentum_mult,
            grad_norm,
        },
    );
    meter
        .guard("hook optimizer.step", stepped)
        .with_context(|| format!("in hook optimizer.step at step {step}"))?;
    Ok(StepOut {
        loss: loss_value,
        lr,
        grad_norm,
        batch_tokens,
    })
}

/// A training step whose forward is twinned: the secret draws, the clock to
/// pause around the twin, and the plugins whose generators it must not move.
struct TwinStep<'a> {
    twins: &'a mut Twins,
    timer: &'a mut TrainingTimer,
    plugins: &'a [LoadedPlugin],
}

/// What the loop works with, besides the optimizer, schedule and summary.
struct LoopCx<'a> {
    opts: &'a RunOptions,
    model: &'a Model,
    plugins: &'a [LoadedPlugin],
    data: &'a TrackData,
    valset: &'a ValidationSet,
    steps: usize,
    device: &'a Device,
    meter: &'a MemoryMeter,
    dir: &'a mut RunDir,
    record: Option<&'a mut RunRecord>,
    ledger: &'a mut Ledger,
    flops_per_token: f64,
    /// The twin causality checks: secret draws and what they measured.
    twins: Twins,
    /// The permutation training batches are relabelled through.
    labels_train: std::sync::Arc<VocabPermutation>,
    /// The training clock (already holding the init hooks' time).
    timer: TrainingTimer,
    /// Time inside plugin hooks during timed steps.
    plugin_ms: f64,
    /// Validations run (each in eval mode).
    evals: usize,
    /// The validation loss of the initial model.
    initial_loss: Option<f64>,
}

impl LoopCx<'_> {
    /// Stops the run at the first op refusal a plugin session recorded.
    fn check_plugins(&mut self) -> Result<()> {
        let mut first = None;
        for v in crate::plugins::take_violations(self.plugins) {
            self.ledger.fail(v.check, v.detail.clone());
            first.get_or_insert(v);
        }
        match first {
            Some(v) => Err(v.into()),
            None => Ok(()),
        }
    }

    /// Validation is untimed: the caller has paused the clock.
    fn validate(
        &mut self,
        step: usize,
        tokens: u64,
        train_time_s: f64,
        summary: &mut RunSummary,
        twin_share: f64,
    ) -> Result<()> {
        let track = &self.opts.track.track;
        let t0 = std::time::Instant::now();
        let result = validate::evaluate_checked(
            self.model,
            self.valset,
            track.batch_size(),
            self.device,
            self.opts.parallel.as_deref(),
            Some((&mut self.twins, twin_share, self.plugins)),
        );
        self.evals += 1;
        crate::plugins::take_stats(self.plugins);
        self.check_plugins()?;
        let (loss, bpb) = result?;
        self.compare_ranks(step)?;
        let line = MetricLine::Val {
            step,
            tokens,
            train_time_s,
            val_loss: loss,
            val_bpb: bpb,
            eval_s: t0.elapsed().as_secs_f64(),
        };
        self.dir.metric(&line)?;
        if let Some(r) = self.record.as_deref_mut() {
            if let Err(e) = r.evaluation(
                step,
                tokens,
                train_time_s,
                tokens as f64 * self.flops_per_token,
                loss,
                bpb,
            ) {
                tracing::warn!("the run store could not record an evaluation: {e:#}");
            }
        }
        summary.final_val_loss = Some(loss);
        summary.final_val_bpb = Some(bpb);
        if summary.best_val_loss.is_none_or(|b| loss < b) {
            summary.best_val_loss = Some(loss);
            summary.best_val_bpb = Some(bpb);
        }
        if let Some(target) = track.target.val_loss {
            if loss <= target && !summary.target_reached {
                summary.target_reached = true;
                summary.time_to_target_s = Some(train_time_s);
                summary.tokens_to_target = Some(tokens);
                summary.flops_to_target = Some(tokens as f64 * self.flops_per_token);
                summary.step_of_target = Some(step);
            }
        }
        tracing::debug!("step {step}: validation loss {loss:.4} ({bpb:.4} bits/byte)");
        Ok(())
    }

    /// Data parallelism: every rank must hold the same parameters at every
    /// validation, not only at the end (a rank that diverged and copied rank
    /// 0's values back at the last step is caught at the first validation after).
    fn compare_ranks(&mut self, step: usize) -> Result<()> {
        let Some(g) = self.opts.parallel.as_deref() else {
            return Ok(());
        };
        let mine = self.model.params.digest()?;
        let all = g.exchange(mine.clone().into_bytes())?;
        for (r, d) in all.iter().enumerate() {
            if d.as_slice() != mine.as_bytes() {
                let detail = format!(
                    "at the validation after step {step}, rank {r}'s parameters (sha256 {}) differ from rank {}'s ({mine})",
                    String::from_utf8_lossy(d),
                    g.rank()
                );
                self.ledger.fail(Check::Ranks, detail.clone());
                return Err(Violation::new(Check::Ranks, detail).into());
            }
        }
        Ok(())
    }
}

fn train_loop(
    cx: &mut LoopCx,
    optimizer: &mut dyn Optimizer,
    schedule: &dyn Schedule,
    summary: &mut RunSummary,
) -> Result<()> {
    let opts = cx.opts;
    let track = &opts.track.track;
    let steps = cx.steps;
    let mut stream = TrainStream::new(
        &cx.data.train,
        track.batch_size(),
        track.model.seq_len,
        opts.seed,
    )
    .permuted(cx.labels_train.clone());
    let progress = Progress::new(opts.progress, steps);
    let val_every = track.validation.every_steps;

    // The initial model is validated before the first timed step, so that what
    // it knows before training (it should know nothing) is measured.
    let init_s = cx.timer.elapsed().as_secs_f64();
    cx.validate(0, 0, init_s, summary, causality::VALIDATION_SHARE)?;
    cx.initial_loss = summary.final_val_loss;
    for step in 0..steps {
        if opts
            .deadline
            .is_some_and(|d| std::time::Instant::now() >= d)
        {
            bail!("{DEADLINE} before step {step}");
        }
        // Step 0 is always twinned; later steps by the secret draw.
        let twinned = step == 0 || cx.twins.pick(causality::TRAIN_SHARE);
        let twin_s = cx.twins.seconds;
        cx.timer.resume();
        let mut span = Span::start(cx.device);
        let out = train_step(
            track,
            cx.model,
            optimizer,
            schedule,
            &mut stream,
            step,
            steps,
            cx.meter,
            opts.parallel.as_deref(),
            twinned.then_some(TwinStep {
                twins: &mut cx.twins,
                timer: &mut cx.timer,
                plugins: cx.plugins,
            }),
        );
        // The device's queued work is part of the step: wait for it before the clock.
        let synced = cx.device.synchronize();
        span.stop();
        cx.timer.pause();
        let untimed_ms = (cx.twins.seconds - twin_s) * 1e3;
        let step_time = std::time::Duration::from_secs_f64((span.ms() - untimed_ms).max(0.0) / 1e3);
        synced?;
        let hooks = crate::plugins::take_stats(cx.plugins);
        cx.plugin_ms += hooks.iter().map(|h| h.ms).sum::<f64>();
        cx.check_plugins()?;
        let out = out?;

        summary.steps = step + 1;
        summary.tokens = stream.tokens_consumed;
        summary.train_time_s = cx.timer.elapsed().as_secs_f64();
        summary.tokens_per_s = summary.tokens as f64 / summary.train_time_s.max(1e-9);
        summary.train_losses.push(out.loss);
        let tok_s = out.batch_tokens as f64 / step_time.as_secs_f64().max(1e-9);
        cx.dir.metric(&MetricLine::Step {
            step,
            tokens: stream.tokens_consumed,
            train_loss: out.loss as f64,
            lr: out.lr,
            grad_norm: out.grad_norm,
            step_ms: step_time.as_secs_f64() * 1e3,
            tokens_per_s: tok_s,
            train_time_s: summary.train_time_s,
            memory_bytes: cx.meter.sample(),
            peak_memory_bytes: cx.meter.peak(),
            hooks,
        })?;
        progress.step(step, steps, out.loss, tok_s);

        let last = step + 1 == steps;
        if last || (val_every > 0 && (step + 1) % val_every == 0) {
            // Every batch of the final validation is twinned: it is what is scored.
            let share = if last {
                1.0
            } else {
                causality::VALIDATION_SHARE
            };
            cx.validate(
                step + 1,
                stream.tokens_consumed,
                summary.train_time_s,
                summary,
                share,
            )?;
        }
    }
    progress.finish();
    Ok(())
}

/// What the end of a run knows for the checks the loop passes silently.
struct Conclusion<'a> {
    twins: &'a Twins,
    plugin_ms: f64,
    /// Time of model.params, model.init and optimizer.init (on the clock).
    init_s: f64,
    evals: usize,
    budget: usize,
    warm_detail: String,
    vocab: usize,
    plugins: &'a [LoadedPlugin],
    initial_loss: Option<f64>,
    labels: &'a Labels,
    mode: VocabMode,
}

/// How far under ln(vocabulary) an initial model's loss may be: an honest
/// initialisation knows nothing of the (secretly relabelled) data, so its loss
/// is ln V plus the logits' spread; anything clearly below was brought in.
pub fn initial_loss_floor(vocab: usize) -> f64 {
    let ln_v = (vocab as f64).ln();
    ln_v - (0.02 * ln_v).max(0.1)
}

/// Records a pass for every check that did not fail, with what it covered.
fn conclude(ledger: &mut Ledger, s: &RunSummary, outcome: &Result<()>, c: Conclusion) {
    if !c.twins.probes.is_empty() {
        ledger.pass(Check::Causality, c.twins.describe());
    }
    match c.initial_loss {
        Some(l) if l < initial_loss_floor(c.vocab) => ledger.fail(
            Check::InitialModel,
            format!(
                "the initial model's validation loss is {l:.4}, below {:.4} (ln {} = {:.4} less the margin): it knew the data before training",
                initial_loss_floor(c.vocab),
                c.vocab,
                (c.vocab as f64).ln()
            ),
        ),
        Some(l) => ledger.pass(
            Check::InitialModel,
            format!(
                "validated before the first timed step: loss {l:.4}, not below {:.4} (ln {} less the margin)",
                initial_loss_floor(c.vocab),
                c.vocab
            ),
        ),
        None => {}
    }
    ledger.pass(Check::PluginInputs, plugin_inputs_detail(c.plugins));
    let null = match c.mode {
        VocabMode::NullControl => format!(
            "this is a null-data control run: trained under permutation {}, validated under {}",
            &c.labels.train.sha256()[..12],
            &c.labels.val.sha256()[..12]
        ),
        _ => String::new(),
    };
    if null.is_empty() {
        ledger.skip(Check::NullControl, "not a record claim: no null-data control was asked for (submit runs one for every record claim; run --null-control on request)");
    } else {
        ledger.pass(Check::NullControl, null);
    }
    ledger.pass(
        Check::FullDistribution,
        format!(
            "every validation batch and twin gave logits finite over all {} vocabulary entries; the host computed every loss itself",
            c.vocab
        ),
    );
    ledger.pass(
        Check::TokenBudget,
        format!(
            "{} training tokens consumed of the budget's {}",
            s.tokens, c.budget
        ),
    );
    ledger.pass(
        Check::EvalIsolation,
        if c.plugins.is_empty() {
            format!("{} validations in eval mode; no plugins", c.evals)
        } else {
            format!(
                "{} validations (twins included) ran with no plugin write, kept handle, value read back or failed op",
                c.evals
            )
        },
    );
    ledger.pass(Check::OpContract, "no plugin op was refused");
    ledger.pass(
        Check::FiniteTraining,
        format!("loss and gradient norm finite at all {} steps", s.steps),
    );
    ledger.pass(
        Check::Timing,
        format!(
            "{:.1} ms inside plugin hooks (twin forwards' included), init hooks on the clock ({:.3} s), {:.2} s of timed training; validation and twin forwards untimed; {}",
            c.plugin_ms, c.init_s, s.train_time_s, c.warm_detail
        ),
    );
    match outcome {
        Ok(()) => ledger.pass(
            Check::Completed,
            format!("{} steps trained and validated at the end", s.steps),
        ),
        Err(e) => ledger.fail(Check::Completed, format!("{e:#}")),
    }
}
