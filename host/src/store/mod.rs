//! The run store: one SQLite file holding every run (its manifest, summary and
//! verdict), its evaluations, its plugins and checks, every bench
//! comparison, every submission with its source, and each track's records. Each write is one transaction, so a run killed at any point
//! leaves the file consistent; a run whose process is gone while the store
//! still says `running` is marked `incomplete` the next time the store opens.

mod comparisons;
mod run_record;
mod schema;
mod submissions;

use run_record::process;
pub use run_record::RunRecord;
pub use submissions::{NewRecord, Record, Submission};

use crate::record::{PluginRecord, RunManifest, RunStatus, RunSummary, Transport};
use crate::verify::{CheckResult, Verdict};
use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Where the store lives unless `--db` or `SPEEDRUN_DB` says otherwise.
pub fn default_path() -> PathBuf {
    match std::env::var_os("SPEEDRUN_DB") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("runs").join("speedrun.db"),
    }
}

/// The run store, opened once and handed down: a clone is another handle to
/// the same connection (each method holds it for its whole statement or
/// transaction, so handles on several threads take turns).
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
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
}

/// One validation of a stored run.
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
    /// Opens (creating if needed) the store at `path`, brings its schema up to
    /// date and marks runs whose process has ended as incomplete.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the run store's folder {}", dir.display()))?;
        }
        let conn = Connection::open(path)
            .with_context(|| format!("opening the run store {}", path.display()))?;
        let store = Store {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        };
        store
            .init()
            .with_context(|| format!("the run store {}", path.display()))?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, for one statement or transaction; a panic while another
    /// handle held it leaves SQLite consistent (its transaction rolled back).
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn init(&self) -> Result<()> {
        let conn = self.conn();
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // WAL: a reader never blocks the run writing; a kill leaves the last
        // committed transaction in place.
        // Switching a new file to WAL needs it alone and answers "busy" without
        // waiting on the busy handler: retry while another process opens it too.
        let started = std::time::Instant::now();
        loop {
            match conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())) {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && started.elapsed() < std::time::Duration::from_secs(10) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                other => break other?,
            }
        }
        conn.execute_batch("PRAGMA foreign_keys = ON;")?;
        schema::migrate(&conn)?;
        drop(conn);
        self.mark_abandoned()
    }

    /// Runs still `running` whose process is gone become `incomplete`.
    fn mark_abandoned(&self) -> Result<()> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT id, pid, pid_start FROM runs WHERE status = 'running'")?;
        let running: Vec<(i64, Option<i64>, Option<String>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (id, pid, start) in running {
            let alive = match (pid, start) {
                (Some(pid), start) => process::alive(pid, start.as_deref()),
                (None, _) => false,
            };
            if !alive {
                conn.execute(
                    "UPDATE runs SET status = 'incomplete', finished_at = ?2,
                     error = 'the process running it ended before the run finished'
                     WHERE id = ?1 AND status = 'running'",
                    params![id, now()],
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
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO runs (track, track_sha256, seed, run_dir, started_at, status, pid, pid_start,
                 host_version, git_revision, steps_planned, stack, official, manifest,
                 full_budget, checks_version)
             VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                m.track,
                m.track_sha256,
                m.seed as i64,
                run_dir.display().to_string(),
                m.started_at,
                std::process::id() as i64,
                process::start_time(std::process::id() as i64),
                m.host_version,
                m.git_revision,
                m.steps as i64,
                stack_key(&m.plugins, m.stack_label.as_deref()),
                m.official,
                serde_json::to_string(m)?,
                m.steps == m.track_steps,
                crate::verify::CHECKS_VERSION,
            ],
        )?;
        let id = tx.last_insert_rowid();
        for p in &m.plugins {
            tx.execute(
                "INSERT INTO plugins (run_id, name, version, sha256, transport, hooks, config)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id,
                    p.name,
                    p.version,
                    p.sha256,
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
        let conn = self.conn();
        let sql = format!("{RUN_COLUMNS} WHERE (?1 IS NULL OR track = ?1) ORDER BY id");
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt
            .query_map(params![track], read_run)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
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
        let conn = self.conn();
        let sql = format!(
            "{RUN_COLUMNS} WHERE track = ?1 AND track_sha256 = ?2 AND stack = ?3 AND seed = ?4
             AND steps_planned = ?5 AND status = 'complete' ORDER BY id DESC LIMIT 1"
        );
        Ok(conn
            .query_row(
                &sql,
                params![track, track_sha256, stack, seed as i64, steps as i64],
                read_run,
            )
            .optional()?)
    }

    /// A run by id, or by its run directory.
    pub fn run(&self, key: &str) -> Result<StoredRun> {
        let conn = self.conn();
        let by_id = key.parse::<i64>().ok();
        let sql = format!("{RUN_COLUMNS} WHERE id = ?1 OR run_dir = ?2 ORDER BY id DESC LIMIT 1");
        let found = conn
            .query_row(&sql, params![by_id, key], read_run)
            .optional()?;
        match found {
            Some(r) => Ok(r),
            None => bail!(
                "the run store {} holds no run {key:?} (give a run id or its run directory)",
                self.path.display()
            ),
        }
    }

    /// The run with this id, if the store holds it.
    pub fn run_by_id(&self, id: i64) -> Result<Option<StoredRun>> {
        let conn = self.conn();
        let sql = format!("{RUN_COLUMNS} WHERE id = ?1");
        Ok(conn.query_row(&sql, params![id], read_run).optional()?)
    }

    pub fn evaluations(&self, run_id: i64) -> Result<Vec<Evaluation>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT step, tokens, train_time_s, flops, val_loss, val_bpb FROM evaluations
             WHERE run_id = ?1 ORDER BY step",
        )?;
        let rows = stmt
            .query_map(params![run_id], |r| {
                Ok(Evaluation {
                    step: r.get::<_, i64>(0)? as u64,
                    tokens: r.get::<_, i64>(1)? as u64,
                    train_time_s: r.get(2)?,
                    flops: r.get(3)?,
                    val_loss: r.get(4)?,
                    val_bpb: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn plugins(&self, run_id: i64) -> Result<Vec<StoredPlugin>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, version, sha256, transport, hooks, config FROM plugins WHERE run_id = ?1 ORDER BY rowid",
        )?;
        let rows = stmt
            .query_map(params![run_id], |r| {
                let hooks: String = r.get(4)?;
                Ok(StoredPlugin {
                    name: r.get(0)?,
                    version: r.get(1)?,
                    sha256: r.get(2)?,
                    transport: parsed(r, 3)?,
                    hooks: serde_json::from_str(&hooks).unwrap_or_default(),
                    config: r
                        .get::<_, Option<String>>(5)?
                        .and_then(|c| serde_json::from_str(&c).ok())
                        .unwrap_or(serde_json::Value::Null),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The run's verdict, if it finished (completely or not).
    pub fn verdict(&self, run_id: i64) -> Result<Option<Verdict>> {
        let conn = self.conn();
        let valid: Option<bool> = conn.query_row(
            "SELECT valid FROM runs WHERE id = ?1",
            params![run_id],
            |r| r.get(0),
        )?;
        let Some(valid) = valid else {
            return Ok(None);
        };
        let mut stmt =
            conn.prepare("SELECT check_json FROM checks WHERE run_id = ?1 ORDER BY position")?;
        let checks = stmt
            .query_map(params![run_id], |r| r.get::<_, String>(0))?
            .map(|j| Ok(serde_json::from_str::<CheckResult>(&j?)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Verdict { valid, checks }))
    }

    /// SQLite's own consistency check ("ok" when the file is sound).
    pub fn integrity(&self) -> Result<String> {
        let conn = self.conn();
        Ok(conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

const RUN_COLUMNS: &str = "SELECT id, track, seed, run_dir, started_at, finished_at, status, stack,
    official, valid, steps, tokens, train_time_s, flops, final_val_loss, best_val_loss,
    target_val_loss, time_to_target_s, tokens_to_target, flops_to_target, error, git_revision,
    full_budget, checks_version
    FROM runs";

/// A text column holding a name one of our enums parses (a status, a transport).
fn parsed<T: std::str::FromStr<Err = String>>(r: &rusqlite::Row, i: usize) -> rusqlite::Result<T> {
    let s: String = r.get(i)?;
    s.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    })
}

fn read_run(r: &rusqlite::Row) -> rusqlite::Result<StoredRun> {
    let u = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(r.get::<_, Option<i64>>(i)?.map(|v| v as u64))
    };
    Ok(StoredRun {
        id: r.get(0)?,
        track: r.get(1)?,
        seed: r.get::<_, i64>(2)? as u64,
        run_dir: r.get(3)?,
        started_at: r.get(4)?,
        finished_at: r.get(5)?,
        status: parsed(r, 6)?,
        stack: r.get(7)?,
        official: r.get(8)?,
        valid: r.get(9)?,
        steps: u(10)?,
        tokens: u(11)?,
        train_time_s: r.get(12)?,
        flops: r.get(13)?,
        final_val_loss: r.get(14)?,
        best_val_loss: r.get(15)?,
        target_val_loss: r.get(16)?,
        time_to_target_s: r.get(17)?,
        tokens_to_target: u(18)?,
        flops_to_target: r.get(19)?,
        error: r.get(20)?,
        git_revision: r.get(21)?,
        full_budget: r.get::<_, Option<bool>>(22)?.unwrap_or(true),
        checks_version: r.get::<_, Option<u32>>(23)?.unwrap_or(1),
    })
}
