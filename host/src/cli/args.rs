//! Argument groups several commands share, flattened into each (ripgrep's
//! raw flags → validated options): one declaration per flag.

use crate::cluster::{Executor, SlurmOptions};
use crate::store::Location;
use crate::track::{self, LoadedTrack};
use anyhow::{bail, Result};
use clap::Args;
use speedrun_sandbox_policy::LoadedPolicy;
use std::path::PathBuf;

/// `--track`: a track name (under tracks/) or a track file.
#[derive(Args, Debug, Clone)]
pub struct TrackArg {
    /// Track name (under tracks/) or path to a track file.
    #[arg(long = "track", id = "track", default_value = "cpu")]
    pub name: String,
}

impl TrackArg {
    pub fn load(&self) -> Result<LoadedTrack> {
        track::load(&self.name)
    }
}

/// `--set`: changes to the track for this command's runs.
#[derive(Args, Debug, Clone, Default)]
pub struct SetArgs {
    /// Change one of the track's settings: SECTION.KEY=VALUE, the value in
    /// TOML (optimizer.lr=3e-3, train.batch_tokens=8192). Repeatable. The run
    /// is then on a modified track: it says so, records the change and never
    /// scores.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
}

/// `--db`: the run store.
#[derive(Args, Debug, Clone)]
pub struct DbArg {
    /// The run store: a SQLite file, or a PostgreSQL server's
    /// postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE (default: $SPEEDRUN_DB,
    /// else runs/speedrun.db).
    #[arg(long = "db", id = "db", value_name = "FILE|URL")]
    pub location: Option<String>,
}

impl DbArg {
    pub fn location(&self) -> Location {
        match &self.location {
            Some(l) => Location::parse(l),
            None => crate::store::default_location(),
        }
    }

    /// Opens an existing store (a view never creates a SQLite file; a server's
    /// database must exist, and its tables are made if it has none).
    pub fn open(&self) -> Result<crate::store::Store> {
        let l = self.location();
        if let Location::Sqlite(p) = &l {
            if !p.exists() {
                bail!(
                    "no run store at {} (runs record themselves there; give --db or set SPEEDRUN_DB)",
                    p.display()
                );
            }
        }
        crate::store::Store::open(&l)
    }

    /// Opens the store a run, bench or submission records into, creating it.
    pub fn open_or_create(&self) -> Result<crate::store::Store> {
        crate::store::Store::open(self.location())
    }
}

/// `--policy`: the maintainers' sandbox policy.
#[derive(Args, Debug, Clone)]
pub struct PolicyArg {
    /// Sandbox policy file (default: sandbox-policy/default.toml).
    #[arg(long = "policy", id = "policy")]
    pub path: Option<PathBuf>,
}

impl PolicyArg {
    pub fn load(&self) -> Result<LoadedPolicy> {
        crate::plugins::admission::load_policy(self.path.as_deref())
    }
}

/// `--json`: the machine-readable answer instead of text.
#[derive(Args, Debug, Clone, Copy)]
pub struct JsonArg {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The plugin stack of a run: plugins, their configurations, the transport.
#[derive(Args, Debug, Clone)]
pub struct StackArgs {
    /// A plugin: a built library, or a plugin crate directory (built first). Repeat to stack.
    #[arg(long = "plugin")]
    pub plugins: Vec<PathBuf>,
    /// Configuration for a plugin: NAME=JSON, e.g. adamw='{"beta2": 0.99}'. Repeatable.
    #[arg(long = "plugin-config")]
    pub plugin_configs: Vec<String>,
    /// Build plugin crate directories to WebAssembly and run them sandboxed.
    #[arg(long)]
    pub wasm: bool,
}

/// `--executor`: where a bench's, a submission's or a reverification's runs execute.
#[derive(Args, Debug, Clone)]
pub struct ExecutorArgs {
    /// local: one after another in this process; slurm: a Slurm job array, one
    /// task per seed (its runs back to back on one node), waited for and read
    /// back from the shared store (--db postgres://...). Running the same
    /// command again submits only the seeds that have no finished runs.
    #[arg(long, default_value = "local", value_parser = ["local", "slurm"])]
    pub executor: String,
    /// The Slurm partition the tasks run in (default: the cluster's).
    #[arg(long)]
    pub partition: Option<String>,
    /// Another sbatch option for every task, as sbatch takes it
    /// (--slurm-arg=--time=2:00:00 --slurm-arg=--cpus-per-task=2). Repeatable.
    #[arg(long = "slurm-arg", value_name = "OPTION", allow_hyphen_values = true)]
    pub slurm_args: Vec<String>,
}

impl ExecutorArgs {
    /// The executor; a GPU device makes each task ask for one GPU.
    pub fn executor(&self, device: &crate::device::DeviceSettings) -> Result<Executor> {
        if self.executor != "slurm" {
            if self.partition.is_some() || !self.slurm_args.is_empty() {
                bail!("--partition and --slurm-arg are for --executor slurm");
            }
            return Ok(Executor::Local);
        }
        Ok(Executor::Slurm(SlurmOptions {
            partition: self.partition.clone(),
            args: self.slurm_args.clone(),
            gpus: (!device.choice.is_cpu()).then_some(1),
        }))
    }
}

/// What a bench and a submission share besides seeds: policy, data, store, output.
#[derive(Args, Debug)]
pub struct BenchRunArgs {
    #[command(flatten)]
    pub policy: PolicyArg,
    /// Read the track's shards from this folder.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub db: DbArg,
    #[command(flatten)]
    pub output: JsonArg,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub device: crate::device::DeviceSettings,
    #[command(flatten)]
    pub executor: ExecutorArgs,
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
