//! `speedrun submit`: the agent's loop in one command. Snapshot the crate's
//! source into the store, build it (wasm unless the policy approves it natively),
//! admit it, run N seeds of it interleaved with the track's record (and the
//! reference), verify and store every run, and answer one verdict: valid or
//! not, the statistics against the record and the reference, the frontier,
//! and whether it is the new record.
//!
//! Exit codes: 0 valid, 2 invalid (a check failed, or the policy refused it),
//! 1 could not run (the crate does not build, the tooling is missing, the
//! wall-clock limit ran out).

pub mod records;
mod verdict;

pub use verdict::*;

use crate::compare::{self, BenchRun, BenchVerdict, Report, Session, Side, StackSpec, TimeMeasure};
use crate::plugins::{self, build};
use crate::record::{SubmissionStatus, Transport};
use crate::score::{self, Axis};
use crate::stats::{Interval, Summary};
use crate::store::{NewRecord, Record, RecordClaim, Store};
use crate::track::LoadedTrack;
use crate::verify::{Check, Outcome};
use anyhow::{Context, Result};
use serde::Serialize;
use speedrun_sandbox_policy::LoadedPolicy;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct SubmitOptions {
    pub crate_dir: PathBuf,
    pub track: LoadedTrack,
    pub seeds: Vec<u64>,
    /// Build and run natively (only for a library the policy approves).
    pub native: bool,
    pub store: Store,
    pub policy: LoadedPolicy,
    pub max_wall: Option<Duration>,
    /// Fewer steps than the budget (a quick check; never a record).
    pub steps: Option<usize>,
    pub data_dir: Option<PathBuf>,
    pub progress: bool,
    pub device: crate::device::DeviceSettings,
    /// Where the runs execute (`--executor`).
    pub executor: crate::cluster::Executor,
}

/// Builds the crate at `dir` as the submission's transport.
fn build_library(dir: &Path, native: bool) -> Result<PathBuf> {
    if native {
        build::build_native(dir)
    } else {
        build::build_wasm(dir)
    }
}

/// The policy's word on the built library: a native one must be approved by
/// hash whatever the policy's mode; either must use hooks and transports the
/// policy allows.
fn admit(lib: &Path, native: bool, policy: &LoadedPolicy) -> Result<()> {
    let (module, _) = plugins::open(lib, !native, plugins::wasm_limits(policy))?;
    let m = module.manifest()?;
    if native {
        let sha = plugins::sha256_file(lib)?;
        if let speedrun_sandbox_policy::NativeVerdict::Unapproved(why) = policy
            .policy
            .native_verdict(&m.name, &m.version, &sha, &m.hooks)
        {
            anyhow::bail!(
                "--native needs the policy's approval ({why}); submit without --native to run it sandboxed as wasm"
            );
        }
    }
    plugins::admit(policy, &m, &module, lib)?;
    Ok(())
}

/// Unpacks a stored submission's source (its archive checked against the
/// recorded SHA-256) into `into`, emptied first — a folder left on disk is
/// never trusted — and builds it; answers its library.
pub fn rebuild(store: &Store, submission_id: i64, into: &Path) -> Result<PathBuf> {
    let s = store.submission(submission_id)?;
    let archive = store.submission_source(submission_id)?;
    if into.exists() {
        std::fs::remove_dir_all(into)
            .with_context(|| format!("clearing {} before the rebuild", into.display()))?;
    }
    let dir = crate::plugins::snapshot::extract(&archive, &s.crate_name, into)?;
    build_library(&dir, s.transport == Transport::Native)
        .with_context(|| format!("rebuilding submission {submission_id} from its stored source"))
}

/// The folder submissions are unpacked and run in (`Store::work_dir`).
pub fn work_root(store: &Store) -> PathBuf {
    store.work_dir().join("submissions")
}

/// Runs a submission end to end. `Err` only when nothing could be recorded (no
/// crate, no store); every later failure is in the verdict.
pub fn submit(o: &SubmitOptions) -> Result<SubmitVerdict> {
    let deadline = o.max_wall.map(|d| Instant::now() + d);
    let track = &o.track.track;
    compare::check_seeds(&o.seeds)?;
    let snap = crate::plugins::snapshot::take(&o.crate_dir)?;
    tracing::info!(
        "snapshot of {}: {} files, sha256 {}",
        snap.crate_name,
        snap.files,
        snap.sha256
    );
    let store = &o.store;
    let transport = if o.native {
        Transport::Native
    } else {
        Transport::Wasm
    };
    let id = store.add_submission(
        &track.name,
        &o.track.path.display().to_string(),
        &snap.crate_name,
        &snap.description,
        &snap.sha256,
        &snap.archive,
        transport,
    )?;
    let work = work_root(&o.store).join(format!("{id}-{}", &snap.sha256[..12]));
    let v = SubmitVerdict {
        schema: SCHEMA,
        status: SubmissionStatus::Running,
        exit_code: 1,
        valid: false,
        error: None,
        submission: SubmissionInfo {
            id: Some(id),
            crate_name: snap.crate_name.clone(),
            description: snap.description.clone(),
            source_sha256: snap.sha256.clone(),
            transport,
            library_sha256: None,
            work_dir: work.display().to_string(),
        },
        track: track.name.clone(),
        target_val_loss: track.target.val_loss,
        seeds: o.seeds.clone(),
        steps: o.steps.unwrap_or(track.steps()),
        checks: Vec::new(),
        val_loss: None,
        train_time_s: None,
        time_to_target_s: None,
        p_below_target: None,
        target_claim: false,
        against_record: None,
        against_reference: None,
        on_frontier: false,
        new_record: false,
        record: None,
        record_superseded: None,
        runs: Vec::new(),
        paths: Paths::default(),
    };
    let v = match run_submission(o, store, id, &work, deadline, v.clone()) {
        Ok(done) => done,
        Err(e) => v.stop(SubmissionStatus::Error, 1, format!("{e:#}")),
    };
    let status = match v.status {
        SubmissionStatus::Error if v.submission.library_sha256.is_none() => {
            SubmissionStatus::BuildFailed
        }
        s => s,
    };
    store.set_submission_status(id, status, Some(&serde_json::to_value(&v)?))?;
    Ok(v)
}

fn run_submission(
    o: &SubmitOptions,
    store: &Store,
    id: i64,
    work: &Path,
    deadline: Option<Instant>,
    mut v: SubmitVerdict,
) -> Result<SubmitVerdict> {
    let track = &o.track.track;
    let archive = store.submission_source(id)?;
    let dir = crate::plugins::snapshot::extract(
        &archive,
        &v.submission.crate_name,
        &work.join("source"),
    )?;
    // What runs is what was stored: the library is built from the unpacked snapshot.
    let lib = build_library(&dir, o.native)?;
    let lib_sha = plugins::sha256_file(&lib)?;
    store.set_submission_library(id, &lib_sha)?;
    v.submission.library_sha256 = Some(lib_sha);
    if let Err(e) = admit(&lib, o.native, &o.policy) {
        v.checks.push(MergedCheck {
            check: Check::Plugins,
            outcome: Outcome::Failed,
            detail: format!("{e:#}"),
            seeds_failed: o.seeds.clone(),
        });
        return Ok(v.stop(
            SubmissionStatus::Invalid,
            2,
            format!("refused by the policy: {e:#}"),
        ));
    }

    let candidate = StackSpec {
        plugins: vec![lib],
        wasm: !o.native,
        label: Some(format!("{} (submission {id})", v.submission.crate_name)),
        ..StackSpec::default()
    };
    let current = store.records(&track.name)?.pop();
    let record_stack = match &current {
        Some(r) => Some(StackSpec {
            plugins: vec![rebuild(
                store,
                r.submission_id,
                &work_root(&o.store).join(format!("record-{}", r.id)),
            )?],
            wasm: r.transport == Transport::Wasm,
            label: Some(format!("record {} ({})", r.id, r.crate_name)),
            ..StackSpec::default()
        }),
        None => None,
    };
    let reference = StackSpec {
        label: Some("reference".into()),
        ..StackSpec::default()
    };
    let mut stacks = vec![("candidate", &candidate)];
    if let Some(r) = &record_stack {
        stacks.push(("record", r));
    }
    stacks.push(("reference", &reference));
    // Fresh for this submission, drawn after its source was stored: a
    // submitter who can read the host key still cannot know its labels.
    let nonce: [u8; 32] = rand::random();
    store.set_submission_label_nonce(id, &nonce)?;
    let session = Session {
        track: o.track.clone(),
        seeds: o.seeds.clone(),
        steps: o.steps,
        data_dir: o.data_dir.clone(),
        out: work.join("runs"),
        store: Some(o.store.clone()),
        policy: o.policy.clone(),
        progress: o.progress,
        deadline,
        device: o.device,
        label_nonce: Some(nonce),
        executor: o.executor.clone(),
    };
    let mut sides = compare::run_stacks(&session, &stacks)?;
    let target = track.target.val_loss;
    let cand_runs = sides.remove(0);
    let side = |runs: Vec<BenchRun>, stack: &StackSpec| Side::new(stack.describe(), runs, target);
    let compare_to = |base: Side| -> Result<Report> {
        let mut r = compare::analyse(
            track.name.clone(),
            target,
            o.seeds.clone(),
            (v.steps, v.steps),
            side(cand_runs.clone(), &candidate),
            base,
        );
        compare::store_comparison(&o.store, &mut r)?;
        Ok(r)
    };
    let vs_reference = compare_to(side(sides.pop().unwrap_or_default(), &reference))?;
    let vs_record = match &record_stack {
        Some(rs) => compare_to(side(sides.pop().unwrap_or_default(), rs))?,
        None => vs_reference.clone(),
    };

    // The verdict names the library that ran: every candidate run hashed the
    // bytes it loaded, and they must be the bytes built from the snapshot.
    for r in &cand_runs {
        let Some(run_id) = r.store_id else { continue };
        for p in store.plugins(run_id)? {
            if Some(&p.sha256) != v.submission.library_sha256.as_ref() {
                anyhow::bail!(
                    "run {run_id} (seed {}) loaded a library with SHA-256 {}, not the {} built from the submission's snapshot",
                    r.seed,
                    p.sha256,
                    v.submission.library_sha256.as_deref().unwrap_or("-")
                );
            }
        }
    }
    let c = &vs_reference.candidate;
    v.checks = merge_checks(store, &cand_runs)?;
    v.val_loss = c.val_loss;
    v.train_time_s = c.train_time_s;
    v.time_to_target_s = c.time_to_target_s;
    v.p_below_target = c.below_target.map(|t| t.p_value);
    v.target_claim = c.target_claim;
    v.valid = c.all_valid;
    v.against_record = Some(Against::new(&vs_record, current.as_ref().map(|r| r.id)));
    v.against_reference = Some(Against::new(&vs_reference, None));
    v.runs = cand_runs.clone();

    // Frontier and plots.
    let all = store.runs(Some(&track.name))?;
    let ids: Vec<i64> = cand_runs.iter().filter_map(|r| r.store_id).collect();
    v.on_frontier = score::frontier(&all, Axis::TrainTime)
        .iter()
        .any(|e| e.on_frontier && ids.contains(&e.run_id));
    let frontier_svg = work.join("frontier.svg");
    crate::views::frontier(store, &track.name, true, Some(&frontier_svg))?;
    for run_id in &ids {
        crate::views::show(store, &run_id.to_string(), true, None)?;
    }
    v.paths = Paths {
        runs: Some(session.out.display().to_string()),
        run_dirs: cand_runs.iter().map(|r| r.run_dir.clone()).collect(),
        frontier_svg: Some(frontier_svg.display().to_string()),
        curves_svg: Some(compare::write_overlay(&session, &vs_record)?),
    };

    // The record rule (compare::Report::beats_baseline), at the full budget only;
    // a claim must also pass the null-data control (one seed, the first).
    let full_budget = o.steps.is_none_or(|s| s == track.steps());
    if v.valid && full_budget && vs_record.beats_baseline() {
        let seed = o.seeds[0];
        let null = compare::null_control(&session, "candidate", &candidate, seed)?;
        let failed = null.outcome == Outcome::Failed;
        v.checks.retain(|c| c.check != Check::NullControl);
        v.checks.push(MergedCheck {
            check: Check::NullControl,
            outcome: null.outcome,
            detail: format!("seed {seed}: {}", null.detail),
            seeds_failed: if failed { vec![seed] } else { Vec::new() },
        });
        if failed {
            v.valid = false;
        }
    }
    if v.valid && full_budget && vs_record.beats_baseline() {
        let claim = store.add_record(&NewRecord {
            track: &track.name,
            submission_id: id,
            comparison_id: vs_record.comparison_id,
            description: &if v.submission.description.is_empty() {
                v.submission.crate_name.clone()
            } else {
                format!("{}: {}", v.submission.crate_name, v.submission.description)
            },
            time_to_target_s: c.time_to_target_s.map_or(f64::NAN, |s| s.mean),
            val_loss: c.val_loss.map_or(f64::NAN, |s| s.mean),
            p_target: c.below_target.map_or(f64::NAN, |t| t.p_value),
            p_speedup: vs_record.welch.map_or(f64::NAN, |w| w.p_less),
            speedup: vs_record.speedup.map_or(f64::NAN, |s| s.estimate),
            previous: &vs_record.baseline.stack,
            seeds: &o.seeds,
            beat: current.as_ref().map(|r| r.id),
        })?;
        match claim {
            RecordClaim::Recorded(rid) => {
                v.new_record = true;
                v.record = Some(store.record(rid)?);
            }
            RecordClaim::Superseded(now) => {
                v.record_superseded = Some(format!(
                    "it beat {}, but record {} (submission {}, {}) became the track's record while it ran; resubmit to be compared against it",
                    current.as_ref().map_or("the reference".to_string(), |r| format!("record {}", r.id)),
                    now.id,
                    now.submission_id,
                    now.crate_name
                ));
                v.record = Some(*now);
            }
        }
    }
    if v.valid {
        v.status = SubmissionStatus::Valid;
        v.exit_code = 0;
    } else {
        let failed: Vec<String> = v
            .checks
            .iter()
            .filter(|c| c.outcome == Outcome::Failed)
            .map(|c| c.check.to_string())
            .collect();
        v = v.stop(
            SubmissionStatus::Invalid,
            2,
            format!("failed checks: {}", failed.join(", ")),
        );
    }
    Ok(v)
}
