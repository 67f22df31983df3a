//! A track's record history, in the speedrun's table style, and `reverify`:
//! rebuild a record from its stored source and run it again here.

use super::{rebuild, work_root, Against};
use crate::compare::{self, BenchRun, Session, Side, StackSpec};
use crate::plugins;
use crate::stats::Summary;
use crate::store::{Record, Store};
use crate::track::LoadedTrack;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use speedrun_sandbox_policy::LoadedPolicy;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Markdown,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "text" => Ok(Format::Text),
            "markdown" | "md" => Ok(Format::Markdown),
            "json" => Ok(Format::Json),
            other => Err(format!("unknown format {other:?}: text, markdown or json")),
        }
    }
}

/// What `reverify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Reverification {
    pub record: Record,
    /// SHA-256 of the library rebuilt here from the stored source.
    pub library_sha256: String,
    /// The rebuild gave the same library bytes as the submission's build.
    pub same_library: bool,
    /// The checks this re-run was verified by (the record's own are in `record`).
    pub checks_version: u32,
    pub seeds: Vec<u64>,
    pub valid: bool,
    pub val_loss: Option<Summary>,
    pub time_to_target_s: Option<Summary>,
    pub p_below_target: Option<f64>,
    pub target_claim: bool,
    /// The mean validation loss equals the record's (same seeds, same curves on CPU).
    pub val_loss_matches_record: bool,
    pub against_reference: Against,
    /// Valid and under the target at p < 0.01 again.
    pub reproduced: bool,
    pub runs: Vec<BenchRun>,
}

/// The track a record ran on: its stored track file when that file is still
/// here, else the track of the same name in this checkout.
pub fn track_of(store: &Store, record: i64) -> Result<LoadedTrack> {
    let r = store.record(record)?;
    let path = store.submission(r.submission_id)?.track_path;
    let lt = if std::path::Path::new(&path).is_file() {
        crate::track::load(&path)?
    } else {
        crate::track::load(&r.track).with_context(|| {
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
    Ok(lt)
}

pub struct ReverifyOptions {
    pub record: i64,
    pub track: LoadedTrack,
    pub store: Store,
    /// Default: the record's own seeds.
    pub seeds: Option<Vec<u64>>,
    pub policy: LoadedPolicy,
    pub progress: bool,
    /// Where both sides train (a GPU track's record re-runs on a GPU).
    pub device: crate::device::DeviceSettings,
    /// Where the runs execute (`--executor`).
    pub executor: crate::cluster::Executor,
}

/// Rebuilds record `o.record` from its stored source into a fresh folder and runs it
/// (interleaved with the reference) on this machine.
pub fn reverify(o: &ReverifyOptions) -> Result<Reverification> {
    let store = &o.store;
    let record = store.record(o.record)?;
    if record.track != o.track.track.name {
        bail!(
            "record {} is of track {}, not {}",
            record.id,
            record.track,
            o.track.track.name
        );
    }
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "-");
    let work = work_root(&o.store).join(format!("reverify-{}-{stamp}", record.id));
    let lib = rebuild(store, record.submission_id, &work.join("source"))?;
    let library_sha256 = plugins::sha256_file(&lib)?;
    let seeds = o.seeds.clone().unwrap_or_else(|| record.seeds.clone());
    let stack = StackSpec {
        plugins: vec![lib],
        wasm: record.transport == crate::record::Transport::Wasm,
        label: Some(format!("record {} ({})", record.id, record.crate_name)),
        ..StackSpec::default()
    };
    let reference = StackSpec {
        label: Some("reference".into()),
        ..StackSpec::default()
    };
    let session = Session {
        track: o.track.clone(),
        seeds: seeds.clone(),
        steps: None,
        data_dir: None,
        out: work.join("runs"),
        store: Some(o.store.clone()),
        policy: o.policy.clone(),
        progress: o.progress,
        deadline: None,
        device: o.device,
        executor: o.executor.clone(),
        label_nonce: store
            .submission(record.submission_id)?
            .label_nonce
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| b.try_into().ok()),
    };
    let mut sides =
        compare::run_stacks(&session, &[("record", &stack), ("reference", &reference)])?;
    let target = o.track.track.target.val_loss;
    let (runs, base) = (sides.remove(0), sides.remove(0));
    let mut report = compare::analyse(
        record.track.clone(),
        target,
        seeds.clone(),
        (o.track.track.steps(), o.track.track.steps()),
        Side::new(stack.describe(), runs.clone(), target),
        Side::new(reference.describe(), base, target),
    );
    compare::store_comparison(&o.store, &mut report)?;
    let c = &report.candidate;
    let valid = c.all_valid;
    // The hash of what ran (each run hashed the bytes it loaded), not of the file now.
    let ran: Vec<String> = runs
        .iter()
        .filter_map(|r| r.store_id)
        .filter_map(|id| store.plugins(id).ok())
        .flat_map(|ps| ps.into_iter().map(|p| p.sha256))
        .collect();
    let library_sha256 = match ran.first() {
        Some(h) if ran.iter().all(|x| x == h) => h.clone(),
        Some(_) => bail!("the record's runs loaded different libraries: {ran:?}"),
        None => library_sha256,
    };
    let same_library = record.library_sha256.as_deref() == Some(library_sha256.as_str());
    Ok(Reverification {
        same_library,
        library_sha256,
        checks_version: crate::verify::CHECKS_VERSION,
        val_loss_matches_record: c.val_loss.is_some_and(|s| {
            (s.mean - record.val_loss).abs() <= 1e-9 * record.val_loss.abs().max(1.0)
        }),
        seeds,
        valid,
        val_loss: c.val_loss,
        time_to_target_s: c.time_to_target_s,
        p_below_target: c.below_target.map(|t| t.p_value),
        target_claim: c.target_claim,
        against_reference: Against::new(&report, None),
        // A different library is a different submission, whatever it scores.
        reproduced: valid && c.target_claim && same_library,
        runs,
        record,
    })
}
