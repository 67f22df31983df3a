//! A bench's seeds as a Slurm job array (`--executor slurm`). The command
//! writes a plan (everything a task needs to rebuild the session) and a task
//! script under `OUT/slurm/`, submits one array task per seed that is not
//! done yet, waits with a progress line, then reads every seed's runs back
//! from the shared store. A task runs its seed's stacks back to back on one
//! node (the pairing the speedup test rests on) and records each run against
//! the batch's key, so running the same command again finds the seeds that
//! are done and submits only the rest.

use super::*;
use crate::cluster::slurm::{self, ArrayJob, TaskEnd};
use crate::cluster::SlurmOptions;
use crate::store::StoredRun;
use anyhow::Context;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// What a task rebuilds its session from (`OUT/slurm/plan-KEY.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The batch's key: the hash of what decides its runs (see [`Plan::key_of`]).
    pub batch: String,
    pub track_path: PathBuf,
    pub track_sha256: String,
    pub track_overrides: Vec<String>,
    pub seeds: Vec<u64>,
    pub steps: Option<usize>,
    pub data_dir: Option<PathBuf>,
    pub out: PathBuf,
    /// The store every task records into (`--db`), password included: the plan
    /// file is the submitting user's, as their shell history is.
    pub db: String,
    pub policy_path: PathBuf,
    pub policy_sha256: String,
    pub device: String,
    pub memory_budget: Option<u64>,
    /// Seconds since the Unix epoch at which every run stops (`--max-wall`).
    pub deadline_unix_s: Option<f64>,
    /// The submission's label nonce, hex (a wasm plugin cannot read files).
    pub label_nonce: Option<String>,
    pub stacks: Vec<(String, StackSpec)>,
}

impl Plan {
    fn new(s: &Session, stacks: &[(&str, &StackSpec)]) -> Result<Plan> {
        let Some(store) = &s.store else {
            bail!("--executor slurm needs a run store the cluster's nodes can reach (--db)");
        };
        let deadline_unix_s = s.deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            (std::time::SystemTime::now() + left)
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |t| t.as_secs_f64())
        });
        let mut plan = Plan {
            batch: String::new(),
            track_path: s.track.path.clone(),
            track_sha256: s.track.sha256.clone(),
            track_overrides: s.track.overrides.clone(),
            seeds: s.seeds.clone(),
            steps: s.steps,
            data_dir: s.data_dir.clone(),
            out: s.out.clone(),
            db: store.location().arg(),
            policy_path: s.policy.path.clone(),
            policy_sha256: s.policy.sha256.clone(),
            device: s.device.choice.to_string(),
            memory_budget: s.device.memory_budget,
            deadline_unix_s,
            label_nonce: s.label_nonce.map(hex::encode),
            stacks: stacks
                .iter()
                .map(|(role, st)| (role.to_string(), (*st).clone()))
                .collect(),
        };
        plan.batch = plan.key_of()?;
        Ok(plan)
    }

    /// The hash of what decides the batch's runs: the track file and its
    /// changes, seeds, steps, data, policy, device, label nonce, each stack
    /// with its plugins' bytes, and the host's version and git revision. Not
    /// where it writes, nor its deadline, so the same command run again on the
    /// same checkout is the same batch.
    fn key_of(&self) -> Result<String> {
        let mut h = Sha256::new();
        let mut key = self.clone();
        key.batch = String::new();
        key.out = PathBuf::new();
        key.db = String::new();
        key.deadline_unix_s = None;
        h.update(serde_json::to_vec(&key)?);
        // Another build of the host is another batch: its runs may differ.
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        h.update(crate::train::telemetry::git_revision().as_bytes());
        for (_, st) in &self.stacks {
            for p in st.plugins.iter().filter(|p| p.is_file()) {
                h.update(crate::plugins::sha256_file(p)?.as_bytes());
            }
        }
        Ok(hex::encode(h.finalize())[..16].to_string())
    }

    fn dir(&self) -> PathBuf {
        self.out.join("slurm")
    }

    /// The session of task `index` (one seed), as the plan describes it; the
    /// track and policy files must still hash as they did when it was written.
    fn session(&self, index: usize) -> Result<(Session, u64)> {
        let Some(&seed) = self.seeds.get(index) else {
            bail!(
                "task {index} of a plan of {} seeds (array indices 0..{})",
                self.seeds.len(),
                self.seeds.len()
            );
        };
        let track = crate::track::load(&self.track_path.display().to_string())?
            .with_settings(&self.track_overrides)?;
        if track.sha256 != self.track_sha256 {
            bail!(
                "the track file {} changed after the batch was submitted (sha256 {}, the plan says {}): its runs would not be comparable",
                self.track_path.display(),
                track.sha256,
                self.track_sha256
            );
        }
        let policy = crate::plugins::admission::load_policy(Some(&self.policy_path))?;
        if policy.sha256 != self.policy_sha256 {
            bail!(
                "the policy {} changed after the batch was submitted (sha256 {}, the plan says {})",
                self.policy_path.display(),
                policy.sha256,
                self.policy_sha256
            );
        }
        let label_nonce = match &self.label_nonce {
            Some(h) => Some(
                hex::decode(h)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .context("the plan's label nonce is not 32 bytes of hex")?,
            ),
            None => None,
        };
        let deadline = self.deadline_unix_s.map(|t| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            Instant::now() + Duration::from_secs_f64((t - now).max(0.0))
        });
        let store = crate::store::Store::open(crate::store::Location::parse(&self.db))?;
        Ok((
            Session {
                track,
                seeds: vec![seed],
                steps: self.steps,
                data_dir: self.data_dir.clone(),
                out: self.out.clone(),
                store: Some(store),
                policy,
                progress: false,
                deadline,
                device: crate::device::DeviceSettings {
                    choice: self.device.parse().map_err(anyhow::Error::msg)?,
                    memory_budget: self.memory_budget,
                },
                label_nonce,
                executor: Executor::Local,
            },
            seed,
        ))
    }
}

/// One array task (`speedrun task --plan FILE`): the seed at `index`, every
/// stack back to back, each run recorded against the batch.
pub fn run_task(plan_file: &Path, index: usize) -> Result<()> {
    let text = std::fs::read_to_string(plan_file)
        .with_context(|| format!("reading the batch plan {}", plan_file.display()))?;
    let plan: Plan = serde_json::from_str(&text)
        .with_context(|| format!("the batch plan {} does not parse", plan_file.display()))?;
    // A plan (or a plugin file it names) changed after it was written hashes to
    // another key: refused here, and a rewritten `batch` would only file the
    // runs under a key the submitting command never reads.
    let key = plan.key_of()?;
    if key != plan.batch {
        bail!(
            "the batch plan {} was changed after it was written (it hashes to {key}, not to its batch {}): not run",
            plan_file.display(),
            plan.batch
        );
    }
    let (session, seed) = plan.session(index)?;
    let store = session.store.clone().context("the task's store")?;
    let stacks: Vec<(&str, &StackSpec)> = plan
        .stacks
        .iter()
        .map(|(role, st)| (role.as_str(), st))
        .collect();
    tracing::info!(
        "batch {} task {index}: seed {seed} on {}",
        plan.batch,
        crate::store::host_name()
    );
    // A seed run again (its task was cancelled or failed) keeps what the
    // earlier attempt left, beside the new run.
    for (role, _) in &stacks {
        let dir = plan.out.join(format!("{role}-s{seed}"));
        if dir.exists() {
            let aside = (1..)
                .map(|n| plan.out.join(format!("{role}-s{seed}.attempt-{n}")))
                .find(|p| !p.exists())
                .unwrap_or_default();
            std::fs::rename(&dir, &aside)
                .with_context(|| format!("moving the earlier attempt {} aside", dir.display()))?;
        }
    }
    for (role, stack) in &stacks {
        let runs = run_seed(&session, &[(role, stack)], seed)?;
        let run_id = runs
            .first()
            .and_then(|r| r.store_id)
            .with_context(|| format!("seed {seed}'s {role} run was not stored"))?;
        store.add_batch_run(&plan.batch, seed, role, run_id)?;
    }
    Ok(())
}

/// A seed's runs, if every stack's run of it is stored and finished.
fn done_runs(
    store: &crate::store::Store,
    plan: &Plan,
) -> Result<BTreeMap<u64, BTreeMap<String, StoredRun>>> {
    let mut by_seed: BTreeMap<u64, BTreeMap<String, StoredRun>> = BTreeMap::new();
    for b in store.batch_runs(&plan.batch)? {
        if let Some(run) = store.run_by_id(b.run_id)? {
            if run.status != RunStatus::Running && run.status != RunStatus::Incomplete {
                by_seed.entry(b.seed).or_default().insert(b.role, run);
            }
        }
    }
    by_seed.retain(|_, roles| plan.stacks.iter().all(|(r, _)| roles.contains_key(r)));
    Ok(by_seed)
}

/// The task script every array task runs: the project's binary, in the
/// submitting directory, on its seed.
fn script(plan_file: &Path) -> Result<String> {
    let exe = std::env::current_exe().context("finding the speedrun binary")?;
    Ok(format!(
        "#!/bin/sh\n\
         # One seed of a speedrun batch: written by `speedrun bench|submit|reverify --executor slurm`.\n\
         # A task's threads are the CPUs Slurm gave it, where it says.\n\
         if [ -n \"$SLURM_CPUS_PER_TASK\" ]; then export RAYON_NUM_THREADS=\"$SLURM_CPUS_PER_TASK\"; fi\n\
         export SPEEDRUN_LOG=\"${{SPEEDRUN_LOG:-info}}\"\n\
         exec '{}' task --plan '{}' --index \"$SLURM_ARRAY_TASK_ID\"\n",
        exe.display(),
        plan_file.display()
    ))
}

/// Runs the session's seeds as a Slurm job array and reads their runs back.
pub fn run_on_slurm(
    s: &Session,
    stacks: &[(&str, &StackSpec)],
    o: &SlurmOptions,
) -> Result<Vec<Vec<BenchRun>>> {
    let plan = Plan::new(s, stacks)?;
    let store = s.store.as_ref().context("the bench's store")?;
    if let crate::store::Location::Sqlite(p) = store.location() {
        tracing::warn!(
            "the run store {} is a SQLite file: safe for one node's tasks, not for many nodes on a shared filesystem (use --db postgres://...)",
            p.display()
        );
    }
    let dir = plan.dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let plan_file = std::path::absolute(dir.join(format!("plan-{}.json", plan.batch)))?;
    std::fs::write(&plan_file, serde_json::to_string_pretty(&plan)?)?;
    let script_file = dir.join(format!("task-{}.sh", plan.batch));
    std::fs::write(&script_file, script(&plan_file)?)?;

    let done = done_runs(store, &plan)?;
    let missing: Vec<usize> = (0..plan.seeds.len())
        .filter(|&i| !done.contains_key(&plan.seeds[i]))
        .collect();
    if !done.is_empty() {
        let seeds: Vec<String> = done.keys().map(|s| s.to_string()).collect();
        tracing::info!(
            "batch {}: seeds {} are already done in the store; not run again",
            plan.batch,
            seeds.join(", ")
        );
    }
    let mut job = None;
    if !missing.is_empty() {
        let j = slurm::submit(
            &slurm::ArraySpec {
                script: &std::path::absolute(&script_file)?,
                indices: &missing,
                job_name: &format!("speedrun-{}", plan.batch),
                log_dir: &std::path::absolute(dir.join("logs"))?,
                workdir: &std::env::current_dir()?,
            },
            o,
        )?;
        let seeds: Vec<String> = missing.iter().map(|&i| plan.seeds[i].to_string()).collect();
        tracing::info!(
            "batch {}: Slurm job array {} submitted, one task per seed ({}); logs in {}",
            plan.batch,
            j.job_id,
            seeds.join(", "),
            j.log_dir.display()
        );
        wait(s, &plan, &j, &missing)?;
        job = Some(j);
    }
    collect(store, &plan, job.as_ref(), &missing)
}

/// Waits for the array's tasks to leave the queue, showing where they stand.
fn wait(s: &Session, plan: &Plan, job: &ArrayJob, indices: &[usize]) -> Result<()> {
    let bar = if s.progress {
        let b = indicatif::ProgressBar::new(indices.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} seeds  {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_prefix(format!("slurm job {}", job.job_id));
        Some(b)
    } else {
        None
    };
    let mut last = String::new();
    loop {
        let queued = slurm::queued(job)?;
        let ours: BTreeMap<usize, String> = queued
            .into_iter()
            .filter(|(i, _)| indices.contains(i))
            .collect();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for st in ours.values() {
            *counts.entry(st.as_str()).or_default() += 1;
        }
        let line: Vec<String> = counts
            .iter()
            .map(|(st, n)| format!("{n} {}", st.to_lowercase()))
            .collect();
        let line = line.join(", ");
        let finished = indices.len() - ours.len();
        if let Some(b) = &bar {
            b.set_position(finished as u64);
            b.set_message(line.clone());
        } else if line != last {
            tracing::info!(
                "slurm job {}: {finished}/{} seeds finished{}{line}",
                job.job_id,
                indices.len(),
                if line.is_empty() { "" } else { "; " }
            );
        }
        last = line;
        if ours.is_empty() {
            break;
        }
        if s.deadline.is_some_and(|d| Instant::now() >= d) {
            slurm::cancel(job)?;
            bail!(
                "batch {}: {DEADLINE}; Slurm job {} cancelled",
                plan.batch,
                job.job_id
            );
        }
        std::thread::sleep(poll_interval());
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}

/// How often the queue is asked (SPEEDRUN_SLURM_POLL_MS, default 2 s).
fn poll_interval() -> Duration {
    std::env::var("SPEEDRUN_SLURM_POLL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(2), Duration::from_millis)
}

/// Every seed's runs from the store, in the stacks' order; an error naming
/// each seed whose task did not finish, with its Slurm state and log.
fn collect(
    store: &crate::store::Store,
    plan: &Plan,
    job: Option<&ArrayJob>,
    submitted: &[usize],
) -> Result<Vec<Vec<BenchRun>>> {
    let done = done_runs(store, plan)?;
    let mut lost = Vec::new();
    for (i, seed) in plan.seeds.iter().enumerate() {
        if done.contains_key(seed) {
            continue;
        }
        let why = match job.filter(|_| submitted.contains(&i)) {
            Some(j) => {
                let TaskEnd { state, exit_code } = slurm::ended(j, i);
                format!(
                    "seed {seed}: Slurm task {}_{i} ended {state}{}; its log: {}",
                    j.job_id,
                    if exit_code.is_empty() {
                        String::new()
                    } else {
                        format!(" (exit code {exit_code})")
                    },
                    j.log(i).display()
                )
            }
            None => format!("seed {seed}: not run"),
        };
        lost.push(why);
    }
    if !lost.is_empty() {
        bail!(
            "batch {}: {} of {} seeds have no finished runs:\n  {}\nrun the same command again: the {} seeds done are kept, and only these are submitted",
            plan.batch,
            lost.len(),
            plan.seeds.len(),
            lost.join("\n  "),
            done.len()
        );
    }
    let mut out: Vec<Vec<BenchRun>> = plan.stacks.iter().map(|_| Vec::new()).collect();
    for seed in &plan.seeds {
        for ((role, _), runs) in plan.stacks.iter().zip(out.iter_mut()) {
            let r = &done[seed][role];
            if r.error.as_deref().is_some_and(|e| e.contains(DEADLINE)) {
                bail!("bench: {role} seed {seed}: {DEADLINE}");
            }
            let failed = store
                .verdict(r.id)?
                .map(|v| v.failed().iter().map(|c| c.to_string()).collect())
                .unwrap_or_default();
            runs.push(BenchRun::stored(r, failed));
        }
    }
    Ok(out)
}
