//! `speedrun run` and `speedrun eval`.

use super::args::{DbArg, PolicyArg, StackArgs, TrackArg};
use super::{invalid_if_caught, report, Invalid};
use crate::train::{self, RunOptions, VocabMode};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub track: TrackArg,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train this many steps instead of the track's full budget (the schedule spans them).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Run directory (default: runs/TRACK-sSEED-TIMESTAMP).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Read the track's shards from this folder.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Write the trained model here (safetensors, Hugging Face GPT-2 names).
    #[arg(long)]
    pub save_checkpoint: Option<PathBuf>,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub set: super::args::SetArgs,
    /// What to call this run's stack: it leads the stack key that
    /// leaderboards, the frontier and the dashboard show.
    #[arg(long)]
    pub label: Option<String>,
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(flatten)]
    pub policy: PolicyArg,
    #[command(flatten)]
    pub db: DbArg,
    #[command(flatten)]
    pub device: crate::device::DeviceSettings,
    /// Data-parallel ranks, each training on its share of every batch with the
    /// gradients averaged: threads of this process on the CPU, one process per
    /// GPU through NCCL on `--device cuda[:K]` (GPUs K..K+N; a `nccl` build).
    /// Given as 1 it still goes through the group (NCCL at world size 1).
    #[arg(long)]
    pub ranks: Option<usize>,
    /// After the run, its null-data control: the same stack, seed and steps
    /// trained under the run's secret permutation and validated under an
    /// independent one; a score below the floor fails the `null_control` check.
    #[arg(long, conflicts_with_all = ["unpermuted", "ranks"])]
    pub null_control: bool,
    /// Train and validate on the real token ids, without the secret vocabulary
    /// permutation (calibration only: the run is unofficial).
    #[arg(long)]
    pub unpermuted: bool,
    /// Set by the GPU launcher for each rank process it starts (not for users).
    #[arg(long, hide = true, requires_all = ["world_size", "rendezvous"])]
    pub rank: Option<usize>,
    #[arg(long, hide = true)]
    pub world_size: Option<usize>,
    #[arg(long, hide = true)]
    pub rendezvous: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub track: TrackArg,
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where to evaluate: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: crate::device::DeviceChoice,
    /// The plugins the checkpoint was trained with (their model hooks and
    /// parameters: a rotary model has no position table to load).
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(flatten)]
    pub policy: PolicyArg,
}

/// `speedrun sample`: text from a checkpoint.
#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub track: TrackArg,
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The text to continue.
    #[arg(long)]
    pub prompt: String,
    /// How many tokens to generate.
    #[arg(long, default_value_t = 200)]
    pub tokens: usize,
    /// 0: greedy (the likeliest token each time); above 0, sampled from the
    /// softmax at this temperature.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// The sampling draws' seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: crate::device::DeviceChoice,
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(flatten)]
    pub policy: PolicyArg,
}

/// The model hooks of `--plugin`s (the reference's without any).
fn model_hooks(
    lt: &crate::track::LoadedTrack,
    stack: &StackArgs,
    policy: &PolicyArg,
) -> Result<crate::model::ModelHooks> {
    if stack.plugins.is_empty() {
        if !stack.plugin_configs.is_empty() {
            bail!("--plugin-config given without any --plugin");
        }
        return Ok(Default::default());
    }
    let comps = crate::plugins::stack(
        &lt.track,
        0,
        &stack.plugins,
        &stack.plugin_configs,
        stack.wasm,
        &policy.load()?,
    )?;
    Ok(comps.hooks)
}

pub fn sample(a: SampleArgs) -> Result<()> {
    let lt = a.track.load()?;
    let device = crate::device::open(a.device)?;
    let text = crate::sample::sample(crate::sample::SampleOptions {
        track: &lt.track,
        checkpoint: &a.checkpoint,
        hooks: model_hooks(&lt, &a.stack, &a.policy)?,
        prompt: &a.prompt,
        tokens: a.tokens,
        temperature: a.temperature,
        seed: a.seed,
        device: &device,
    })?;
    println!("{}{}", a.prompt, text);
    Ok(())
}

pub fn run(a: RunArgs) -> Result<()> {
    let lt = a.track.load()?.with_settings(&a.set.set)?;
    let out = a
        .out
        .unwrap_or_else(|| train::telemetry::default_run_dir(&lt.track.name, a.seed));
    if a.stack.plugins.is_empty() && !a.stack.plugin_configs.is_empty() {
        bail!("--plugin-config given without any --plugin");
    }
    let policy = a.policy.load()?;
    let opts = RunOptions {
        track: lt,
        seed: a.seed,
        steps: a.steps,
        out,
        data_dir: a.data_dir,
        save_checkpoint: a.save_checkpoint,
        progress: !a.quiet,
        store: Some(a.db.open_or_create()?),
        deadline: None,
        device: a.device,
        parallel: None,
        vocab: if a.unpermuted {
            VocabMode::Identity
        } else {
            VocabMode::Secret
        },
        label_nonce: None,
        stack_label: a.label,
    };
    let track = opts.track.track.clone();
    let s = &a.stack;
    let build = || {
        crate::plugins::stack(
            &track,
            a.seed,
            &s.plugins,
            &s.plugin_configs,
            s.wasm,
            &policy,
        )
    };
    let finished = match a.ranks {
        _ if a.rank.is_some() => {
            let place = (a.rank, a.world_size, a.rendezvous.clone(), a.device.choice);
            let opts = crate::ranks::gpu_rank_options(opts.clone(), place)?;
            let f = train::execute(&opts, &mut || build())?;
            if a.rank != Some(0) {
                // Rank 0 reports; the others' run directories hold their own.
                return f.error.map_or(Ok(()), Err);
            }
            f
        }
        None => train::execute(&opts, &mut || build())?,
        Some(0) => bail!("--ranks must be at least 1"),
        Some(n) if !a.device.choice.is_cpu() => {
            return crate::ranks::launch_gpu_ranks(n, &opts.out, a.device.choice)
        }
        Some(n) => {
            let mut all = crate::ranks::run_local(&opts, n, &build);
            for (r, f) in all.iter().enumerate().skip(1) {
                if let Err(e) = f {
                    eprintln!("rank {r}: {e:#}");
                }
            }
            all.swap_remove(0)?
        }
    };
    let mut s = finished.summary;
    if let Some(e) = finished.error {
        return Err(invalid_if_caught(e, &s.verdict));
    }
    if a.null_control {
        let check = train::null_control(&opts, &mut || build())?;
        println!(
            "null-data control: {} ({})",
            check.outcome.name(),
            check.detail
        );
        train::amend_verdict(&mut s, check, opts.store.as_ref())?;
    }
    print!("{}", report::run_summary(&s));
    if !s.verdict.valid {
        let failed: Vec<String> = s.verdict.failed().iter().map(|c| c.to_string()).collect();
        return Err(Invalid(format!(
            "the run is INVALID: failed checks {} (see {}/summary.json)",
            failed.join(", "),
            s.run_dir.display()
        ))
        .into());
    }
    println!(
        "  verdict          valid ({} checks)",
        s.verdict.checks.len()
    );
    Ok(())
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let lt = a.track.load()?;
    let dev = crate::device::open(a.device)?;
    let hooks = model_hooks(&lt, &a.stack, &a.policy)?;
    let score =
        train::validate::checkpoint(&lt, &a.checkpoint, a.data_dir.as_deref(), &dev, hooks)?;
    println!(
        "{}: validation loss {:.4} nats/token, {:.4} bits/byte over {} tokens of track {}",
        a.checkpoint.display(),
        score.val_loss,
        score.val_bpb,
        score.tokens,
        lt.track.name
    );
    Ok(())
}
