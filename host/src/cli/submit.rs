//! `speedrun submit`, `records`, `ladder` and `reverify`: the agent's loop
//! and what it leaves.

use super::args::{BenchRunArgs, DbArg, JsonArg, PolicyArg, SeedArgs, TrackArg};
use super::{print_json_or, report, Invalid};
use crate::submit::records::{self, Format};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The plugin crate's directory.
    pub crate_dir: PathBuf,
    #[command(flatten)]
    pub track: TrackArg,
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
pub struct RecordsArgs {
    #[command(flatten)]
    pub track: TrackArg,
    #[command(flatten)]
    pub db: DbArg,
    /// text, markdown or json.
    #[arg(long, default_value = "text")]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct LadderArgs {
    #[command(flatten)]
    pub track: TrackArg,
    #[command(flatten)]
    pub db: DbArg,
    /// text, markdown or json.
    #[arg(long, default_value = "text")]
    pub format: Format,
    /// Leave out benches with fewer seeds.
    #[arg(long, default_value_t = 5)]
    pub min_seeds: usize,
}

#[derive(Args, Debug)]
pub struct ReverifyArgs {
    /// The record's id (see `speedrun records`).
    pub record: i64,
    /// Seeds (default: the record's own).
    #[arg(long, value_delimiter = ',')]
    pub seed_list: Vec<u64>,
    #[command(flatten)]
    pub db: DbArg,
    #[command(flatten)]
    pub policy: PolicyArg,
    #[command(flatten)]
    pub output: JsonArg,
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub device: crate::device::DeviceSettings,
    #[command(flatten)]
    pub executor: super::args::ExecutorArgs,
}

pub fn submit(a: SubmitArgs) -> Result<()> {
    let lt = a.track.load()?;
    let v = crate::submit::submit(&crate::submit::SubmitOptions {
        crate_dir: a.crate_dir,
        track: lt,
        seeds: a.seeds.list(),
        native: a.native,
        store: a.run.db.open_or_create()?,
        policy: a.run.policy.load()?,
        max_wall: a.max_wall.map(Into::into),
        steps: a.steps,
        data_dir: a.run.data_dir,
        progress: !a.run.quiet && !a.run.output.json,
        device: a.run.device,
        executor: a.run.executor.executor(&a.run.device)?,
    })?;
    print_json_or(a.run.output, &v, report::verdict)?;
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

pub fn records(a: RecordsArgs) -> Result<()> {
    let t = a.track.load()?;
    let records = a.db.open()?.records(&t.track.name)?;
    print!("{}", report::records(&t.track.name, &records, a.format)?);
    Ok(())
}

pub fn ladder(a: LadderArgs) -> Result<()> {
    let t = a.track.load()?;
    let ladder = crate::ladder::rows(&a.db.open()?, &t.track.name, a.min_seeds)?;
    print!("{}", report::ladder(&t.track.name, &ladder, a.format)?);
    Ok(())
}

pub fn reverify(a: ReverifyArgs) -> Result<()> {
    // A device this build or machine lacks is refused before the rebuild.
    crate::device::open(a.device.choice)?;
    let store = a.db.open()?;
    let track = records::track_of(&store, a.record)?;
    let out = records::reverify(&records::ReverifyOptions {
        record: a.record,
        track,
        store,
        seeds: (!a.seed_list.is_empty()).then_some(a.seed_list),
        policy: a.policy.load()?,
        progress: !a.quiet && !a.output.json,
        device: a.device,
        executor: a.executor.executor(&a.device)?,
    })?;
    print_json_or(a.output, &out, report::reverification)?;
    if !out.valid {
        return Err(Invalid(format!("record {} re-ran INVALID", a.record)).into());
    }
    Ok(())
}
