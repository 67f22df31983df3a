//! The store's tables, versioned, in each backend's own SQL: SQLite keeps the
//! version in `user_version`, PostgreSQL in `speedrun_schema`. Each migration
//! runs once, in a transaction that holds the write lock from before it reads
//! the version, so a store written by an older host is brought forward, one
//! written by a newer host is refused, and two processes opening a new store at
//! once cannot both apply a step (the second used to fail on "table runs
//! already exists" and lose its run).

use super::sql::{Conn, Sql, Tx};
use anyhow::{bail, Result};

const SQLITE: &[&str] = &[
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
    // 4: the machine a run ran on (its host name, which its pid's liveness is
    // read on, and its hardware fingerprint), and the runs of a cluster batch by
    // seed and role (a Slurm task writes its seed's rows, the command reads them).
    "ALTER TABLE runs ADD COLUMN host TEXT;
    ALTER TABLE runs ADD COLUMN hardware TEXT;
    CREATE TABLE batch_runs (
        batch TEXT NOT NULL,
        seed INTEGER NOT NULL,
        role TEXT NOT NULL,
        run_id INTEGER NOT NULL REFERENCES runs (id),
        PRIMARY KEY (batch, seed, role)
    );",
];

/// The same schema in PostgreSQL's types, version for version (a test checks
/// that both give the same tables and columns): BIGINT for INTEGER, DOUBLE
/// PRECISION for REAL, BYTEA for BLOB, BOOLEAN where the store keeps a truth
/// value, identity columns for rowid keys. `plugins` names its `rowid`, which
/// SQLite gives every table, so one `ORDER BY rowid` serves both.
const POSTGRES: &[&str] = &[
    "CREATE TABLE runs (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        track TEXT NOT NULL,
        track_sha256 TEXT NOT NULL,
        seed BIGINT NOT NULL,
        run_dir TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        status TEXT NOT NULL CHECK (status IN ('running', 'complete', 'failed', 'incomplete')),
        pid BIGINT,
        pid_start TEXT,
        host_version TEXT NOT NULL,
        git_revision TEXT NOT NULL,
        steps_planned BIGINT NOT NULL,
        stack TEXT NOT NULL,
        official BOOLEAN NOT NULL,
        valid BOOLEAN,
        steps BIGINT,
        tokens BIGINT,
        train_time_s DOUBLE PRECISION,
        flops DOUBLE PRECISION,
        final_val_loss DOUBLE PRECISION,
        best_val_loss DOUBLE PRECISION,
        final_val_bpb DOUBLE PRECISION,
        target_val_loss DOUBLE PRECISION,
        time_to_target_s DOUBLE PRECISION,
        tokens_to_target BIGINT,
        flops_to_target DOUBLE PRECISION,
        error TEXT,
        manifest TEXT NOT NULL,
        summary TEXT
    );
    CREATE INDEX runs_by_track ON runs (track, status);
    CREATE TABLE evaluations (
        run_id BIGINT NOT NULL REFERENCES runs (id),
        step BIGINT NOT NULL,
        tokens BIGINT NOT NULL,
        train_time_s DOUBLE PRECISION NOT NULL,
        flops DOUBLE PRECISION NOT NULL,
        val_loss DOUBLE PRECISION NOT NULL,
        val_bpb DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (run_id, step)
    );
    CREATE TABLE plugins (
        rowid BIGINT GENERATED BY DEFAULT AS IDENTITY,
        run_id BIGINT NOT NULL REFERENCES runs (id),
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        transport TEXT NOT NULL,
        hooks TEXT NOT NULL,
        config TEXT NOT NULL
    );
    CREATE TABLE checks (
        run_id BIGINT NOT NULL REFERENCES runs (id),
        position BIGINT NOT NULL,
        name TEXT NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('passed', 'failed', 'skipped')),
        detail TEXT NOT NULL,
        check_json TEXT NOT NULL,
        PRIMARY KEY (run_id, name)
    );
    CREATE TABLE comparisons (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        created_at TEXT NOT NULL,
        track TEXT NOT NULL,
        candidate TEXT NOT NULL,
        baseline TEXT NOT NULL,
        verdict TEXT NOT NULL,
        report TEXT NOT NULL
    );
    CREATE TABLE comparison_runs (
        comparison_id BIGINT NOT NULL REFERENCES comparisons (id),
        run_id BIGINT NOT NULL REFERENCES runs (id),
        role TEXT NOT NULL CHECK (role IN ('candidate', 'baseline'))
    );",
    "CREATE TABLE submissions (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        created_at TEXT NOT NULL,
        track TEXT NOT NULL,
        track_path TEXT NOT NULL,
        crate_name TEXT NOT NULL,
        description TEXT NOT NULL,
        source_sha256 TEXT NOT NULL,
        source BYTEA NOT NULL,
        transport TEXT NOT NULL,
        library_sha256 TEXT,
        status TEXT NOT NULL,
        verdict TEXT
    );
    CREATE TABLE records (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        track TEXT NOT NULL,
        submission_id BIGINT NOT NULL REFERENCES submissions (id),
        comparison_id BIGINT REFERENCES comparisons (id),
        created_at TEXT NOT NULL,
        description TEXT NOT NULL,
        time_to_target_s DOUBLE PRECISION NOT NULL,
        val_loss DOUBLE PRECISION NOT NULL,
        p_target DOUBLE PRECISION NOT NULL,
        p_speedup DOUBLE PRECISION NOT NULL,
        speedup DOUBLE PRECISION NOT NULL,
        previous TEXT NOT NULL,
        seeds TEXT NOT NULL
    );
    CREATE INDEX records_by_track ON records (track, id);",
    "ALTER TABLE runs ADD COLUMN checks_version BIGINT;
    ALTER TABLE runs ADD COLUMN full_budget BOOLEAN;
    ALTER TABLE submissions ADD COLUMN label_nonce TEXT;
    UPDATE runs SET full_budget = (steps_planned = (
        SELECT MAX(r2.steps_planned) FROM runs r2 WHERE r2.track_sha256 = runs.track_sha256));",
    "ALTER TABLE runs ADD COLUMN host TEXT;
    ALTER TABLE runs ADD COLUMN hardware TEXT;
    CREATE TABLE batch_runs (
        batch TEXT NOT NULL,
        seed BIGINT NOT NULL,
        role TEXT NOT NULL,
        run_id BIGINT NOT NULL REFERENCES runs (id),
        PRIMARY KEY (batch, seed, role)
    );",
];

pub fn migrate(conn: &mut Conn) -> Result<()> {
    let postgres = conn.is_postgres();
    let steps = if postgres { POSTGRES } else { SQLITE };
    loop {
        let mut tx = conn.transaction(true)?;
        let version = read_version(&mut tx, postgres)?;
        if version > steps.len() {
            bail!(
                "it was written by a newer speedrun (schema version {version}; this host knows up to {})",
                steps.len()
            );
        }
        if version == steps.len() {
            tx.commit()?;
            return Ok(());
        }
        tx.batch(steps[version])?;
        if postgres {
            tx.execute(
                "UPDATE speedrun_schema SET version = ?1",
                super::sql::vals![version + 1],
            )?;
        } else {
            tx.batch(&format!("PRAGMA user_version = {}", version + 1))?;
        }
        tx.commit()?;
    }
}

/// The store's schema version, with the lock that keeps it until commit.
fn read_version(tx: &mut Tx, postgres: bool) -> Result<usize> {
    if !postgres {
        return Ok(tx.query_one("PRAGMA user_version", &[])?.i64(0)? as usize);
    }
    // One advisory lock for every migrating process, held to the transaction's
    // end; the version table is made under it.
    tx.batch("SELECT pg_advisory_xact_lock(7372656564)")?; // 'speedrun'
    let made = tx
        .query_one("SELECT to_regclass('speedrun_schema') IS NOT NULL", &[])?
        .bool(0)?;
    if !made {
        tx.batch(
            "CREATE TABLE speedrun_schema (version BIGINT NOT NULL);
             INSERT INTO speedrun_schema (version) VALUES (0);",
        )?;
    }
    Ok(tx
        .query_one("SELECT version FROM speedrun_schema", &[])?
        .i64(0)? as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_have_every_schema_version() {
        assert_eq!(SQLITE.len(), POSTGRES.len());
        // Each step changes the same tables in both.
        for (v, (a, b)) in SQLITE.iter().zip(POSTGRES).enumerate() {
            let tables = |sql: &str| -> Vec<String> {
                let mut t: Vec<String> = sql
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .windows(3)
                    .filter(|w| w[0] == "TABLE" || (w[0] == "INTO" && w[1] != "speedrun_schema"))
                    .map(|w| w[1].trim_matches('(').to_string())
                    .collect();
                t.sort();
                t
            };
            assert_eq!(tables(a), tables(b), "schema version {}", v + 1);
        }
    }
}
