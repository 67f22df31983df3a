//! The store's tables, versioned with SQLite's `user_version`: each migration
//! runs once, in a transaction, so a store written by an older host is
//! brought forward and one written by a newer host is refused.

use anyhow::{bail, Result};
use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: runs, their evaluations, plugins and checks; bench comparisons.
    "CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        track TEXT NOT NULL,
        track_sha256 TEXT NOT NULL,
        seed INTEGER NOT NULL,
        run_dir TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        status TEXT NOT NULL CHECK (status IN ('running', 'complete', 'failed', 'incomplete')),
        pid INTEGER,
        pid_start TEXT,
        host_version TEXT NOT NULL,
        git_revision TEXT NOT NULL,
        steps_planned INTEGER NOT NULL,
        stack TEXT NOT NULL,
        official INTEGER NOT NULL,
        valid INTEGER,
        steps INTEGER,
        tokens INTEGER,
        train_time_s REAL,
        flops REAL,
        final_val_loss REAL,
        best_val_loss REAL,
        final_val_bpb REAL,
        target_val_loss REAL,
        time_to_target_s REAL,
        tokens_to_target INTEGER,
        flops_to_target REAL,
        error TEXT,
        manifest TEXT NOT NULL,
        summary TEXT
    );
    CREATE INDEX runs_by_track ON runs (track, status);
    CREATE TABLE evaluations (
        run_id INTEGER NOT NULL REFERENCES runs (id),
        step INTEGER NOT NULL,
        tokens INTEGER NOT NULL,
        train_time_s REAL NOT NULL,
        flops REAL NOT NULL,
        val_loss REAL NOT NULL,
        val_bpb REAL NOT NULL,
        PRIMARY KEY (run_id, step)
    );
    CREATE TABLE plugins (
        run_id INTEGER NOT NULL REFERENCES runs (id),
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        transport TEXT NOT NULL,
        hooks TEXT NOT NULL,
        config TEXT NOT NULL
    );
    CREATE TABLE checks (
        run_id INTEGER NOT NULL REFERENCES runs (id),
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('passed', 'failed', 'skipped')),
        detail TEXT NOT NULL,
        check_json TEXT NOT NULL,
        PRIMARY KEY (run_id, name)
    );
    CREATE TABLE comparisons (
        id INTEGER PRIMARY KEY,
        created_at TEXT NOT NULL,
        track TEXT NOT NULL,
        candidate TEXT NOT NULL,
        baseline TEXT NOT NULL,
        verdict TEXT NOT NULL,
        report TEXT NOT NULL
    );
    CREATE TABLE comparison_runs (
        comparison_id INTEGER NOT NULL REFERENCES comparisons (id),
        run_id INTEGER NOT NULL REFERENCES runs (id),
        role TEXT NOT NULL CHECK (role IN ('candidate', 'baseline'))
    );",
    // 2: submissions (with their source archives) and each track's records.
    "CREATE TABLE submissions (
        id INTEGER PRIMARY KEY,
        created_at TEXT NOT NULL,
        track TEXT NOT NULL,
        track_path TEXT NOT NULL,
        crate_name TEXT NOT NULL,
        description TEXT NOT NULL,
        source_sha256 TEXT NOT NULL,
        source BLOB NOT NULL,
        transport TEXT NOT NULL,
        library_sha256 TEXT,
        status TEXT NOT NULL,
        verdict TEXT
    );
    CREATE TABLE records (
        id INTEGER PRIMARY KEY,
        track TEXT NOT NULL,
        submission_id INTEGER NOT NULL REFERENCES submissions (id),
        comparison_id INTEGER REFERENCES comparisons (id),
        created_at TEXT NOT NULL,
        description TEXT NOT NULL,
        time_to_target_s REAL NOT NULL,
        val_loss REAL NOT NULL,
        p_target REAL NOT NULL,
        p_speedup REAL NOT NULL,
        speedup REAL NOT NULL,
        previous TEXT NOT NULL,
        seeds TEXT NOT NULL
    );
    CREATE INDEX records_by_track ON records (track, id);",
    // Which checks verified a run (NULL: before version 2, the first wave's
    // checks), and whether it trained the track's whole budget (`--steps` runs
    // never score). Older runs are taken to be full when they planned as many
    // steps as the most any run of the same track file planned. A submission's
    // label nonce (hex) lets `reverify` retrace its runs' secret labels.
    "ALTER TABLE runs ADD COLUMN checks_version INTEGER;
    ALTER TABLE runs ADD COLUMN full_budget INTEGER;
    ALTER TABLE submissions ADD COLUMN label_nonce TEXT;
    UPDATE runs SET full_budget = (steps_planned = (
        SELECT MAX(r2.steps_planned) FROM runs r2 WHERE r2.track_sha256 = runs.track_sha256));",
];

pub fn migrate(conn: &Connection) -> Result<()> {
    loop {
        // Each step holds the write lock from before it reads the version, so two
        // processes opening a new store at once cannot both apply a migration
        // (the second used to fail on "table runs already exists" and lose its run).
        let tx =
            rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
        let version: usize =
            tx.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
        if version > MIGRATIONS.len() {
            bail!(
                "it was written by a newer speedrun (schema version {version}; this host knows up to {})",
                MIGRATIONS.len()
            );
        }
        if version == MIGRATIONS.len() {
            tx.commit()?;
            return Ok(());
        }
        tx.execute_batch(MIGRATIONS[version])?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", version + 1))?;
        tx.commit()?;
    }
}
