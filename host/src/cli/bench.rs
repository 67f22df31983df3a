//! `speedrun bench`: the significance bench over seeds, and the speed
//! benchmarks (throughput, plugin overhead, wasm load).

use super::args::{BenchRunArgs, JsonArg, PolicyArg, SeedArgs, StackArgs, TrackArg};
use super::{print_json_or, report, Invalid};
use crate::compare::{self, BenchSpec, BenchVerdict, Session, StackSpec};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub seeds: SeedBenchArgs,
}

/// `speedrun bench --track T --seeds N ...`: the significance bench.
#[derive(Args, Debug)]
pub struct SeedBenchArgs {
    #[command(flatten)]
    pub track: TrackArg,
    // The candidate's plugins (none: the reference against itself); `--wasm`
    // builds the candidate's and the baseline's crates to wasm.
    #[command(flatten)]
    pub candidate: StackArgs,
    /// The baseline's plugins (default: the reference stack).
    #[arg(long = "baseline-plugin")]
    pub baseline_plugins: Vec<PathBuf>,
    #[arg(long = "baseline-plugin-config")]
    pub baseline_configs: Vec<String>,
    #[command(flatten)]
    pub seeds: SeedArgs,
    /// Train this many steps instead of the track's budget (both sides, unless
    /// --baseline-steps).
    #[arg(long)]
    pub steps: Option<usize>,
    /// The baseline's step count, when it differs from --steps (a record with a
    /// shortened run against the reference at its full budget).
    #[arg(long)]
    pub baseline_steps: Option<usize>,
    /// Read the reference's runs of these seeds from the store (the newest
    /// complete run of each seed on this track file at the baseline's step
    /// count) instead of running them again.
    #[arg(long)]
    pub baseline_stored: bool,
    /// Folder for the runs (default: runs/bench-TRACK-TIMESTAMP).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// What to call the candidate in reports and in `speedrun ladder`
    /// (default: its plugins' names), e.g. "+ muon + wsd".
    #[arg(long)]
    pub label: Option<String>,
    #[command(flatten)]
    pub set: super::args::SetArgs,
    #[command(flatten)]
    pub run: BenchRunArgs,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Training-step throughput on a track's model against this machine's matmul peak.
    Throughput {
        #[command(flatten)]
        track: TrackArg,
        #[arg(long, default_value_t = 5)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        output: JsonArg,
        #[command(flatten)]
        device: crate::device::DeviceSettings,
    },
    /// Load time of a wasm plugin module: compile + instantiate, then from the cache.
    WasmLoad {
        /// A .wasm module.
        module: PathBuf,
        #[arg(long, default_value_t = 10)]
        reps: usize,
    },
    /// Step time with plugins against the built-in stack, alternating in one process.
    Plugin {
        #[command(flatten)]
        track: TrackArg,
        /// The plugins to compare with the built-in stack (as `run --plugin`).
        #[arg(long = "plugin", required = true)]
        plugins: Vec<PathBuf>,
        /// Build plugin crate directories to wasm.
        #[arg(long)]
        wasm: bool,
        #[command(flatten)]
        policy: PolicyArg,
        /// Pairs of timed steps (one each stack, the order alternating).
        #[arg(long, default_value_t = 12)]
        pairs: usize,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        output: JsonArg,
    },
}

pub fn bench(a: BenchArgs) -> Result<()> {
    match a.command {
        None => seeds(a.seeds),
        Some(BenchCommand::Throughput {
            track,
            steps,
            warmup,
            data_dir,
            output,
            device,
        }) => {
            let lt = track.load()?;
            let dev = crate::device::open(device.choice)?;
            let r = crate::bench::throughput(&lt, data_dir.as_deref(), warmup, steps, &dev)?;
            print_json_or(output, &r, report::throughput)
        }
        Some(BenchCommand::WasmLoad { module, reps }) => {
            if reps == 0 {
                bail!("--reps must be at least 1");
            }
            let r = crate::bench::wasm_load(&module, reps)?;
            println!(
                "{} ({} bytes): compile + instantiate {:.1} ms; from the cache, median of {}: {:.2} ms",
                r.module, r.bytes, r.cold_ms, r.reps, r.cached_ms_median
            );
            Ok(())
        }
        Some(BenchCommand::Plugin {
            track,
            plugins,
            wasm,
            policy,
            pairs,
            data_dir,
            output,
        }) => {
            let policy = policy.load()?;
            if pairs == 0 {
                bail!("--pairs must be at least 1");
            }
            let lt = track.load()?;
            let r = crate::bench::plugin_overhead(
                &lt,
                data_dir.as_deref(),
                &plugins,
                wasm,
                &policy,
                pairs,
            )?;
            print_json_or(output, &r, report::plugin_overhead)
        }
    }
}

/// `speedrun task`: one array task of a cluster batch.
#[derive(Args, Debug)]
pub struct TaskArgs {
    /// The batch's plan (written by the submitting command under OUT/slurm/).
    #[arg(long)]
    pub plan: PathBuf,
    /// The seed's index in the plan (default: $SLURM_ARRAY_TASK_ID).
    #[arg(long)]
    pub index: Option<usize>,
}

pub fn task(a: TaskArgs) -> Result<()> {
    let index = match a.index {
        Some(i) => i,
        None => std::env::var("SLURM_ARRAY_TASK_ID")
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "give --index, or run inside a Slurm array task ($SLURM_ARRAY_TASK_ID)"
                )
            })?,
    };
    compare::batch::run_task(&a.plan, index)
}

fn seeds(a: SeedBenchArgs) -> Result<()> {
    let lt = a.track.load()?.with_settings(&a.set.set)?;
    let seeds = a.seeds.list();
    compare::check_seeds(&seeds)?;
    let out = a.out.clone().unwrap_or_else(|| {
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .replace(':', "-");
        PathBuf::from("runs").join(format!("bench-{}-{stamp}", lt.track.name))
    });
    let spec = BenchSpec {
        session: Session {
            track: lt,
            seeds,
            steps: a.steps,
            data_dir: a.run.data_dir,
            out,
            store: Some(a.run.db.open_or_create()?),
            policy: a.run.policy.load()?,
            progress: !a.run.quiet && !a.run.output.json,
            deadline: None,
            device: a.run.device,
            label_nonce: None,
            executor: a.run.executor.executor(&a.run.device)?,
        },
        candidate: StackSpec {
            plugins: a.candidate.plugins,
            configs: a.candidate.plugin_configs,
            wasm: a.candidate.wasm,
            label: a.label,
            steps: None,
        },
        baseline: StackSpec {
            plugins: a.baseline_plugins,
            configs: a.baseline_configs,
            wasm: a.candidate.wasm,
            label: None,
            steps: a.baseline_steps,
        },
        baseline_stored: a.baseline_stored,
    };
    let report = compare::run(&spec)?;
    print_json_or(a.run.output, &report, report::bench)?;
    if report.verdict == BenchVerdict::Invalid {
        return Err(Invalid(report.verdict_text).into());
    }
    Ok(())
}
