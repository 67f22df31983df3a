//! The reference training loop. It reads as the algorithm — schedule, forward,
//! the host's loss, backward, optimizer, validate — with the machinery (timer,
//! telemetry, checks) around it.

pub mod telemetry;
pub mod timer;
pub mod validate;

use crate::data::loader::{ShardRecord, TrackData, TrainStream, ValidationSet};
use crate::data::tokenizer::Tokenizer;
use crate::model::{Model, ModelHooks};
use crate::optim::adamw::{AdamW, AdamWConfig};
use crate::optim::schedule::WarmupCosine;
use crate::optim::{Grads, Optimizer, Schedule, StepInput};
use crate::plugins::{LoadedPlugin, PluginRecord, PolicyRecord};
use crate::track::{LoadedTrack, Track};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::Serialize;
use std::path::PathBuf;
use telemetry::{Hardware, MetricLine, RunDir};
use timer::TrainingTimer;

/// Everything that decides a run.
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
}

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
    pub step_of_target: Option<usize>,
    /// Why the run is not official (unapproved plugins under a dev-mode policy).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unofficial_reasons: Vec<String>,
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

/// Trains one run of a track with the given components and writes its run directory.
pub fn run(opts: &RunOptions, comps: Components) -> Result<RunSummary> {
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
    let device = Device::Cpu;
    let data = TrackData::open(&opts.track, opts.data_dir.as_deref())?;
    let tokenizer = Tokenizer::new(track.data.tokenizer)?;
    let valset = ValidationSet::new(
        &data.val,
        track.validation.tokens,
        track.model.seq_len,
        &tokenizer,
    )?;

    let Components {
        hooks,
        mut optimizer,
        schedule,
        plugins,
        policy,
    } = comps;
    let model = Model::build(&track.model, hooks, opts.seed, &device)?;
    optimizer
        .init(&model.params)
        .context("in hook optimizer.init")?;

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
        batch_tokens: track.train.batch_tokens,
        parameters: model.params.numel(),
        optimizer: optimizer.name().to_string(),
        plugins: plugins.iter().map(|p| p.record.clone()).collect(),
        official: policy.as_ref().is_some_and(|p| p.warnings.is_empty()),
        policy,
        hardware: Hardware::detect(),
        started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        command: std::env::args().collect(),
    };
    dir.write_json("manifest.json", &manifest)?;

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
        step_of_target: None,
        unofficial_reasons: manifest
            .policy
            .as_ref()
            .map(|p| p.warnings.clone())
            .unwrap_or_default(),
        train_losses: Vec::with_capacity(steps),
        run_dir: opts.out.clone(),
    };
    let outcome = train_loop(
        opts,
        &model,
        optimizer.as_mut(),
        schedule.as_ref(),
        &plugins,
        &data,
        &valset,
        steps,
        &mut dir,
        &mut summary,
        &device,
    );
    summary.flops = flops_per_token(track, model.params.numel()) * summary.tokens as f64;
    match &outcome {
        Ok(()) => summary.status = "complete".into(),
        Err(e) => {
            summary.status = "failed".into();
            summary.error = Some(format!("{e:#}"));
        }
    }
    dir.write_json("summary.json", &summary)?;
    outcome?;
    if let Some(path) = &opts.save_checkpoint {
        crate::checkpoint::save(&model.params, path)?;
    }
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn train_loop(
    opts: &RunOptions,
    model: &Model,
    optimizer: &mut dyn Optimizer,
    schedule: &dyn Schedule,
    plugins: &[LoadedPlugin],
    data: &TrackData,
    valset: &ValidationSet,
    steps: usize,
    dir: &mut RunDir,
    summary: &mut RunSummary,
    device: &Device,
) -> Result<()> {
    let track = &opts.track.track;
    let mut stream = TrainStream::new(
        &data.train,
        track.batch_size(),
        track.model.seq_len,
        opts.seed,
    );
    let mut timer = TrainingTimer::new();
    let progress = Progress::new(opts.progress, steps);
    let val_every = track.validation.every_steps;

    // Validation is untimed: the clock is paused around it.
    let validate = |step: usize,
                    tokens: u64,
                    timer: &TrainingTimer,
                    dir: &mut RunDir,
                    summary: &mut RunSummary|
     -> Result<()> {
        let t0 = std::time::Instant::now();
        let (loss, bpb) = validate::evaluate(model, valset, track.batch_size(), device)?;
        let train_time_s = timer.elapsed().as_secs_f64();
        dir.metric(&MetricLine::Val {
            step,
            tokens,
            train_time_s,
            val_loss: loss,
            val_bpb: bpb,
            eval_s: t0.elapsed().as_secs_f64(),
        })?;
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
                summary.step_of_target = Some(step);
            }
        }
        tracing::debug!("step {step}: validation loss {loss:.4} ({bpb:.4} bits/byte)");
        Ok(())
    };

    if val_every > 0 {
        validate(0, 0, &timer, dir, summary)?;
    }
    for step in 0..steps {
        let batch = stream.next_batch();
        let (x, y) = validate::batch_tensors(&batch, device)?;

        timer.resume();
        let t0 = std::time::Instant::now();
        let sched = schedule
            .at(step, steps)
            .with_context(|| format!("in hook schedule at step {step}"))?;
        let lr = track.optimizer.lr * sched.lr_mult;
        let loss = validate::batch_loss(model, &x, &y, true)?;
        let store = loss.backward()?;
        let grads = Grads::collect(&model.params, &store)?;
        let grad_norm = grads.global_norm()?;
        let loss_value = loss.to_scalar::<f32>()?;
        if !loss_value.is_finite() {
            timer.pause();
            bail!("training loss is not finite at step {step} ({loss_value}); the run is stopped");
        }
        if !grad_norm.is_finite() {
            timer.pause();
            bail!("gradient norm is not finite at step {step} ({grad_norm}); the run is stopped");
        }
        optimizer
            .step(
                &model.params,
                &grads,
                &StepInput {
                    step,
                    lr,
                    momentum_mult: sched.momentum_mult,
                    grad_norm,
                },
            )
            .with_context(|| format!("in hook optimizer.step at step {step}"))?;
        let step_time = t0.elapsed();
        timer.pause();

        summary.steps = step + 1;
        summary.tokens = stream.tokens_consumed;
        summary.train_time_s = timer.elapsed().as_secs_f64();
        summary.tokens_per_s = summary.tokens as f64 / summary.train_time_s.max(1e-9);
        summary.train_losses.push(loss_value);
        let tok_s = track.train.batch_tokens as f64 / step_time.as_secs_f64().max(1e-9);
        dir.metric(&MetricLine::Step {
            step,
            tokens: stream.tokens_consumed,
            train_loss: loss_value as f64,
            lr,
            grad_norm,
            step_ms: step_time.as_secs_f64() * 1e3,
            tokens_per_s: tok_s,
            train_time_s: summary.train_time_s,
            hooks: crate::plugins::take_stats(plugins),
        })?;
        progress.step(step, steps, loss_value, tok_s);

        let last = step + 1 == steps;
        if last || (val_every > 0 && (step + 1) % val_every == 0) {
            validate(step + 1, stream.tokens_consumed, &timer, dir, summary)?;
        }
    }
    progress.finish();
    Ok(())
}
