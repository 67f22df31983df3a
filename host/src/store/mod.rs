//! The run store: every run (its manifest, summary and verdict), its
//! evaluations, its plugins and checks, every bench comparison, every
//! submission with its source, and each track's records. One SQLite file by
//! default; a PostgreSQL server (`--db postgres://…`) when many machines
//! write at once. Each write is one transaction, so a run killed at any point
//! leaves the store consistent; a run whose process is gone while the store
//! still says `running` is marked `incomplete` the next time the store is
//! opened on the machine that ran it.

mod batches;
mod comparisons;
mod run_record;
mod schema;
pub(crate) mod sql;
mod submissions;

pub use batches::BatchRun;
use run_record::process;
pub use run_record::RunRecord;
pub use submissions::{NewRecord, Record, RecordClaim, Submission};

use crate::record::{PluginRecord, RunManifest, RunStatus, RunSummary, Transport};
use crate::verify::{CheckResult, Verdict};
use anyhow::{bail, Context, Result};
use serde::Serialize;
pub use sql::Location;
use sql::{vals, Conn, Row, Sql};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Where the store lives unless `--db` or `SPEEDRUN_DB` says otherwise: a
/// `postgres://` URL or a SQLite file.
pub fn default_location() -> Location {
    match std::env::var("SPEEDRUN_DB") {
        Ok(p) if !p.is_empty() => Location::parse(&p),
        _ => Location::Sqlite(PathBuf::from("runs").join("speedrun.db")),
    }
}

/// This machine's name, beside every run's pid: a pid is only looked up on
/// the machine it belongs to.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The run store, opened once and handed down: a clone is another handle to
/// the same connection (each method holds it for its whole statement or
/// transaction, so handles on several threads take turns).
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Conn>>,
    location: Location,
}

/// A run as the store holds it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredRun {
    pub id: i64,
    pub track: String,
    pub seed: u64,
    pub run_dir: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub status: RunStatus,
    /// The plugin stack: `reference`, or `name@sha8+...`.
    pub stack: String,
    pub official: bool,
    pub valid: Option<bool>,
    pub steps: Option<u64>,
    pub tokens: Option<u64>,
    pub train_time_s: Option<f64>,
    pub flops: Option<f64>,
    pub final_val_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub target_val_loss: Option<f64>,
    pub time_to_target_s: Option<f64>,
    pub tokens_to_target: Option<u64>,
    pub flops_to_target: Option<f64>,
    pub error: Option<String>,
    pub git_revision: String,
    /// Trained the track's whole token budget (a `--steps` run did not).
    pub full_budget: bool,
    /// The version of the host's checks that verified it (`verify::CHECKS_VERSION`).
    pub checks_version: u32,
    /// The machine it ran on (none for runs stored before the store kept it).
    pub host: Option<String>,
    /// Its hardware fingerprint (`record::Hardware::fingerprint`).
    pub hardware: Option<String>,
}

/// A stored significance comparison (`speedrun bench`).
#[derive(Debug, Clone, Serialize)]
pub struct StoredComparison {
    pub id: i64,
    pub created_at: String,
    pub candidate: String,
    pub baseline: String,
    pub verdict: String,
    pub report: serde_json::Value,
}

/// One validation of a stored run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Evaluation {
    pub step: u64,
    pub tokens: u64,
    pub train_time_s: f64,
    pub flops: f64,
    pub val_loss: f64,
    pub val_bpb: f64,
}

/// A plugin of a stored run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredPlugin {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub transport: Transport,
    pub hooks: Vec<String>,
    /// The configuration it ran with.
    pub config: serde_json::Value,
}

/// The stack key of a run: what a leaderboard groups by. Each plugin is its
/// name, its library's hash and the configuration keys the run set
/// (`lion@a8ed017b(lr_scale=0.3)`), so two configurations never share a key;
/// a label goes in front (`fast lion (lion@a8ed017b(lr_scale=0.3))`).
pub fn stack_key(plugins: &[PluginRecord], label: Option<&str>) -> String {
    let base = if plugins.is_empty() {
        "reference".to_string()
    } else {
        plugins
            .iter()
            .map(|p| {
                let set: Vec<String> = p
                    .overrides
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let config = if set.is_empty() {
                    String::new()
                } else {
                    format!("({})", set.join(","))
                };
                format!("{}@{}{config}", p.name, &p.sha256[..p.sha256.len().min(8)])
            })
            .collect::<Vec<_>>()
            .join("+")
    };
    match label {
        Some(l) if l != base => format!("{l} ({base})"),
        _ => base,
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Store {
    /// Opens (creating if needed) the store at `location`, brings its schema up
    /// to date and marks this machine's runs whose process has ended as incomplete.
    pub fn open(location: impl Into<Location>) -> Result<Store> {
        let location = &location.into();
        if let Location::Sqlite(path) = location {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("creating the run store's folder {}", dir.display())
                })?;
            }
        }
        let conn = Conn::connect(location)?;
        let store = Store {
            conn: Arc::new(Mutex::new(conn)),
            location: location.clone(),
        };
        store
            .init()
            .with_context(|| format!("the run store {location}"))?;
        Ok(store)
    }

    /// Where it lives (a SQLite file or a PostgreSQL URL).
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The folder submissions are unpacked and run in: beside a SQLite file;
    /// `runs/` under the working directory for a server (on a cluster, the
    /// project's shared checkout).
    pub fn work_dir(&self) -> PathBuf {
        match &self.location {
            Location::Sqlite(path) => path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
            Location::Postgres(_) => PathBuf::from("runs"),
        }
    }

    /// The connection, for one statement or transaction; a panic while another
    /// handle held it leaves the database consistent (its transaction rolled back).
    fn conn(&self) -> MutexGuard<'_, Conn> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn init(&self) -> Result<()> {
        let mut conn = self.conn();
        if let Conn::Sqlite(c) = &*conn {
            c.busy_timeout(std::time::Duration::from_secs(10))?;
            // WAL: a reader never blocks the run writing; a kill leaves the last
            // committed transaction in place.
            // Switching a new file to WAL needs it alone and answers "busy" without
            // waiting on the busy handler: retry while another process opens it too.
            let started = std::time::Instant::now();
            loop {
                match c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())) {
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::DatabaseBusy
                            && started.elapsed() < std::time::Duration::from_secs(10) =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    other => break other?,
                }
            }
            c.execute_batch("PRAGMA foreign_keys = ON;")?;
        }
        schema::migrate(&mut conn)?;
        drop(conn);
        self.mark_abandoned()
    }

    /// This machine's runs still `running` whose process is gone become
    /// `incomplete` (a run with no host is from before the store kept one,
    /// when every run was local). Another machine's runs are its own to mark.
    fn mark_abandoned(&self) -> Result<()> {
        let mut conn = self.conn();
        let running = conn.query(
            "SELECT id, pid, pid_start FROM runs
             WHERE status = 'running' AND (host IS NULL OR host = ?1)",
            vals![host_name()],
        )?;
        for r in running {
            let (id, pid, start) = (r.i64(0)?, r.opt_i64(1)?, r.opt_text(2)?);
            let alive = match pid {
                Some(pid) => process::alive(pid, start.as_deref()),
                None => false,
            };
            if !alive {
                conn.execute(
                    "UPDATE runs SET status = 'incomplete', finished_at = ?2,
                     error = 'the process running it ended before the run finished'
                     WHERE id = ?1 AND status = 'running'",
                    vals![id, now()],
                )?;
            }
        }
        Ok(())
    }

    /// The record of a run already stored, to rewrite its end (a check added
    /// after the run, such as its null-data control).
    pub fn run_record(&self, id: i64) -> RunRecord {
        RunRecord {
            store: self.clone(),
            id,
        }
    }

    /// Records the start of a run; the returned record takes its evaluations and end.
    pub fn begin_run(&self, m: &RunManifest, run_dir: &Path) -> Result<RunRecord> {
        let mut conn = self.conn();
        let mut tx = conn.transaction(false)?;
        let id = tx
            .query_one(
                "INSERT INTO runs (track, track_sha256, seed, run_dir, started_at, status, pid, pid_start,
                     host_version, git_revision, steps_planned, stack, official, manifest,
                     full_budget, checks_version, host, hardware)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                     ?16, ?17)
                 RETURNING id",
                vals![
                    &m.track,
                    &m.track_sha256,
                    m.seed,
                    run_dir.display().to_string(),
                    &m.started_at,
                    std::process::id(),
                    process::start_time(std::process::id() as i64),
                    &m.host_version,
                    &m.git_revision,
                    m.steps,
                    stack_key(&m.plugins, m.stack_label.as_deref()),
                    m.official,
                    serde_json::to_string(m)?,
                    m.steps == m.track_steps,
                    crate::verify::CHECKS_VERSION,
                    host_name(),
                    m.hardware.fingerprint(&m.device),
                ],
            )?
            .i64(0)?;
        for p in &m.plugins {
            tx.execute(
                "INSERT INTO plugins (run_id, name, version, sha256, transport, hooks, config)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                vals![
                    id,
                    &p.name,
                    &p.version,
                    &p.sha256,
                    p.transport.name(),
                    serde_json::to_string(&p.hooks)?,
                    p.config.to_string()
                ],
            )?;
        }
        tx.commit()?;
        Ok(RunRecord {
            store: self.clone(),
            id,
        })
    }

    /// Every run of a track (all tracks if `None`), oldest first.
    pub fn runs(&self, track: Option<&str>) -> Result<Vec<StoredRun>> {
        // The cast types the parameter for PostgreSQL, which cannot infer it from `IS NULL`.
        let sql =
            format!("{RUN_COLUMNS} WHERE (CAST(?1 AS TEXT) IS NULL OR track = ?1) ORDER BY id");
        self.conn()
            .query(&sql, vals![track])?
            .iter()
            .map(read_run)
            .collect()
    }

    /// The newest complete run of `stack` on this exact track file (its SHA-256)
    /// for `seed`, planned for `steps` steps; none if the store has no such run.
    pub fn latest_complete_run(
        &self,
        track: &str,
        track_sha256: &str,
        stack: &str,
        seed: u64,
        steps: usize,
    ) -> Result<Option<StoredRun>> {
        let sql = format!(
            "{RUN_COLUMNS} WHERE track = ?1 AND track_sha256 = ?2 AND stack = ?3 AND seed = ?4
             AND steps_planned = ?5 AND status = 'complete' ORDER BY id DESC LIMIT 1"
        );
        self.conn()
            .query_opt(&sql, vals![track, track_sha256, stack, seed, steps])?
            .as_ref()
            .map(read_run)
            .transpose()
    }

    /// A run by id, or by its run directory.
    pub fn run(&self, key: &str) -> Result<StoredRun> {
        let by_id = key.parse::<i64>().ok();
        let sql = format!("{RUN_COLUMNS} WHERE id = ?1 OR run_dir = ?2 ORDER BY id DESC LIMIT 1");
        let found = self.conn().query_opt(&sql, vals![by_id, key])?;
        match found {
            Some(r) => read_run(&r),
            None => bail!(
                "the run store {} holds no run {key:?} (give a run id or its run directory)",
                self.location
            ),
        }
    }

    /// The run with this id, if the store holds it.
    pub fn run_by_id(&self, id: i64) -> Result<Option<StoredRun>> {
        let sql = format!("{RUN_COLUMNS} WHERE id = ?1");
        self.conn()
            .query_opt(&sql, vals![id])?
            .as_ref()
            .map(read_run)
            .transpose()
    }

    pub fn evaluations(&self, run_id: i64) -> Result<Vec<Evaluation>> {
        self.conn()
            .query(
                "SELECT step, tokens, train_time_s, flops, val_loss, val_bpb FROM evaluations
                 WHERE run_id = ?1 ORDER BY step",
                vals![run_id],
            )?
            .iter()
            .map(|r| {
                Ok(Evaluation {
                    step: r.u64(0)?,
                    tokens: r.u64(1)?,
                    train_time_s: r.f64(2)?,
                    flops: r.f64(3)?,
                    val_loss: r.f64(4)?,
                    val_bpb: r.f64(5)?,
                })
            })
            .collect()
    }

    pub fn plugins(&self, run_id: i64) -> Result<Vec<StoredPlugin>> {
        self.conn()
            .query(
                "SELECT name, version, sha256, transport, hooks, config FROM plugins
                 WHERE run_id = ?1 ORDER BY rowid",
                vals![run_id],
            )?
            .iter()
            .map(|r| {
                Ok(StoredPlugin {
                    name: r.text(0)?,
                    version: r.text(1)?,
                    sha256: r.text(2)?,
                    transport: r.parsed(3)?,
                    hooks: serde_json::from_str(&r.text(4)?).unwrap_or_default(),
                    config: r
                        .opt_text(5)?
                        .and_then(|c| serde_json::from_str(&c).ok())
                        .unwrap_or(serde_json::Value::Null),
                })
            })
            .collect()
    }

    /// The run's verdict, if it finished (completely or not).
    pub fn verdict(&self, run_id: i64) -> Result<Option<Verdict>> {
        let mut conn = self.conn();
        let valid = conn
            .query_one("SELECT valid FROM runs WHERE id = ?1", vals![run_id])?
            .opt_bool(0)?;
        let Some(valid) = valid else {
            return Ok(None);
        };
        let checks = conn
            .query(
                "SELECT check_json FROM checks WHERE run_id = ?1 ORDER BY position",
                vals![run_id],
            )?
            .iter()
            .map(|r| Ok(serde_json::from_str::<CheckResult>(&r.text(0)?)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Verdict { valid, checks }))
    }

    /// The database's own consistency check: "ok" when sound. SQLite checks
    /// its file; a PostgreSQL server keeps its own, so there every foreign key
    /// of the store's tables is checked instead (rows pointing at no run).
    pub fn integrity(&self) -> Result<String> {
        let mut conn = self.conn();
        if !conn.is_postgres() {
            return conn.query_one("PRAGMA integrity_check", &[])?.text(0);
        }
        let orphans = conn
            .query_one(
                "SELECT (SELECT COUNT(*) FROM evaluations e WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = e.run_id))
                      + (SELECT COUNT(*) FROM checks c WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = c.run_id))",
                &[],
            )?
            .i64(0)?;
        Ok(if orphans == 0 {
            "ok".into()
        } else {
            format!("{orphans} rows point at no run")
        })
    }
}

const RUN_COLUMNS: &str = "SELECT id, track, seed, run_dir, started_at, finished_at, status, stack,
    official, valid, steps, tokens, train_time_s, flops, final_val_loss, best_val_loss,
    target_val_loss, time_to_target_s, tokens_to_target, flops_to_target, error, git_revision,
    full_budget, checks_version, host, hardware
    FROM runs";

fn read_run(r: &Row) -> Result<StoredRun> {
    Ok(StoredRun {
        id: r.i64(0)?,
        track: r.text(1)?,
        seed: r.u64(2)?,
        run_dir: r.text(3)?,
        started_at: r.text(4)?,
        finished_at: r.opt_text(5)?,
        status: r.parsed(6)?,
        stack: r.text(7)?,
        official: r.bool(8)?,
        valid: r.opt_bool(9)?,
        steps: r.opt_u64(10)?,
        tokens: r.opt_u64(11)?,
        train_time_s: r.opt_f64(12)?,
        flops: r.opt_f64(13)?,
        final_val_loss: r.opt_f64(14)?,
        best_val_loss: r.opt_f64(15)?,
        target_val_loss: r.opt_f64(16)?,
        time_to_target_s: r.opt_f64(17)?,
        tokens_to_target: r.opt_u64(18)?,
        flops_to_target: r.opt_f64(19)?,
        error: r.opt_text(20)?,
        git_revision: r.text(21)?,
        full_budget: r.opt_bool(22)?.unwrap_or(true),
        checks_version: r.opt_i64(23)?.map_or(1, |v| v as u32),
        host: r.opt_text(24)?,
        hardware: r.opt_text(25)?,
    })
}
