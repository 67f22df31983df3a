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
];

pub fn migrate(conn: &Connection) -> Result<()> {
    let version: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if version > MIGRATIONS.len() {
        bail!(
            "it was written by a newer speedrun (schema version {version}; this host knows up to {})",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
    }
    Ok(())
}
