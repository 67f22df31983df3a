//! Submissions (each with the archive of its source, so a record can be rebuilt
//! later) and records (the submissions that beat their track's record).

use super::{now, Store};
use crate::record::{SubmissionStatus, Transport};
use anyhow::{bail, Result};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

/// A submission's row, without its source archive.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Submission {
    pub id: i64,
    pub created_at: String,
    pub track: String,
    /// The track file it ran on (reverify reads the track from here).
    pub track_path: String,
    pub crate_name: String,
    pub description: String,
    pub source_sha256: String,
    pub transport: Transport,
    pub library_sha256: Option<String>,
    pub status: SubmissionStatus,
    /// Mixed into its runs' label secret (hex; none before checks v2).
    pub label_nonce: Option<String>,
}

/// One entry of a track's record history.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Record {
    pub id: i64,
    pub track: String,
    pub submission_id: i64,
    pub comparison_id: Option<i64>,
    pub created_at: String,
    pub description: String,
    /// Mean time to target over the submission's seeds.
    pub time_to_target_s: f64,
    pub val_loss: f64,
    pub p_target: f64,
    pub p_speedup: f64,
    /// Over the record it beat.
    pub speedup: f64,
    /// The stack it beat (`reference` for a track's first record).
    pub previous: String,
    pub seeds: Vec<u64>,
    pub crate_name: String,
    pub source_sha256: String,
    pub library_sha256: Option<String>,
    pub transport: Transport,
    /// The version of the checks its runs were verified by (`verify::CHECKS_VERSION`;
    /// 1 for records made before twin forwards and the secret permutation).
    pub checks_version: u32,
}

/// What a new record says of itself.
pub struct NewRecord<'a> {
    pub track: &'a str,
    pub submission_id: i64,
    pub comparison_id: Option<i64>,
    pub description: &'a str,
    pub time_to_target_s: f64,
    pub val_loss: f64,
    pub p_target: f64,
    pub p_speedup: f64,
    pub speedup: f64,
    pub previous: &'a str,
    pub seeds: &'a [u64],
}

const SUBMISSION_COLUMNS: &str = "SELECT id, created_at, track, crate_name, description,
    source_sha256, transport, library_sha256, status, track_path, label_nonce FROM submissions";

fn read_submission(r: &rusqlite::Row) -> rusqlite::Result<Submission> {
    Ok(Submission {
        id: r.get(0)?,
        created_at: r.get(1)?,
        track: r.get(2)?,
        crate_name: r.get(3)?,
        description: r.get(4)?,
        source_sha256: r.get(5)?,
        transport: super::parsed(r, 6)?,
        library_sha256: r.get(7)?,
        status: super::parsed(r, 8)?,
        track_path: r.get(9)?,
        label_nonce: r.get(10)?,
    })
}

const RECORD_COLUMNS: &str = "SELECT r.id, r.track, r.submission_id, r.comparison_id, r.created_at,
    r.description, r.time_to_target_s, r.val_loss, r.p_target, r.p_speedup, r.speedup, r.previous,
    r.seeds, s.crate_name, s.source_sha256, s.library_sha256, s.transport,
    (SELECT MIN(COALESCE(u.checks_version, 1)) FROM comparison_runs cr JOIN runs u ON u.id = cr.run_id
        WHERE cr.comparison_id = r.comparison_id AND cr.role = 'candidate')
    FROM records r JOIN submissions s ON s.id = r.submission_id";

fn read_record(r: &rusqlite::Row) -> rusqlite::Result<Record> {
    let seeds: String = r.get(12)?;
    Ok(Record {
        id: r.get(0)?,
        track: r.get(1)?,
        submission_id: r.get(2)?,
        comparison_id: r.get(3)?,
        created_at: r.get(4)?,
        description: r.get(5)?,
        time_to_target_s: r.get(6)?,
        val_loss: r.get(7)?,
        p_target: r.get(8)?,
        p_speedup: r.get(9)?,
        speedup: r.get(10)?,
        previous: r.get(11)?,
        seeds: serde_json::from_str(&seeds).unwrap_or_default(),
        crate_name: r.get(13)?,
        source_sha256: r.get(14)?,
        library_sha256: r.get(15)?,
        transport: super::parsed(r, 16)?,
        checks_version: r.get::<_, Option<u32>>(17)?.unwrap_or(1),
    })
}

impl Store {
    /// Records a submission and its source archive before anything is built.
    #[allow(clippy::too_many_arguments)]
    pub fn add_submission(
        &self,
        track: &str,
        track_path: &str,
        crate_name: &str,
        description: &str,
        source_sha256: &str,
        source: &[u8],
        transport: Transport,
    ) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO submissions (created_at, track, track_path, crate_name, description, source_sha256, source, transport, status)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![now(), track, track_path, crate_name, description, source_sha256, source, transport.name(), SubmissionStatus::Building.name()],
        )?;
        Ok(conn.last_insert_rowid())
    }

    pub fn set_submission_label_nonce(&self, id: i64, nonce: &[u8; 32]) -> Result<()> {
        let conn = self.conn();
        conn.execute(
            "UPDATE submissions SET label_nonce = ?2 WHERE id = ?1",
            params![id, hex::encode(nonce)],
        )?;
        Ok(())
    }

    pub fn set_submission_library(&self, id: i64, library_sha256: &str) -> Result<()> {
        let conn = self.conn();
        conn.execute(
            "UPDATE submissions SET library_sha256 = ?2 WHERE id = ?1",
            params![id, library_sha256],
        )?;
        Ok(())
    }

    /// The submission's status, and its verdict JSON once there is one.
    pub fn set_submission_status(
        &self,
        id: i64,
        status: SubmissionStatus,
        verdict: Option<&serde_json::Value>,
    ) -> Result<()> {
        let conn = self.conn();
        conn.execute(
            "UPDATE submissions SET status = ?2, verdict = COALESCE(?3, verdict) WHERE id = ?1",
            params![id, status.name(), verdict.map(|v| v.to_string())],
        )?;
        Ok(())
    }

    pub fn submission(&self, id: i64) -> Result<Submission> {
        let conn = self.conn();
        let sql = format!("{SUBMISSION_COLUMNS} WHERE id = ?1");
        match conn
            .query_row(&sql, params![id], read_submission)
            .optional()?
        {
            Some(s) => Ok(s),
            None => bail!(
                "the run store {} holds no submission {id}",
                self.path.display()
            ),
        }
    }

    /// The submission's source archive (tar.gz) as stored.
    /// The stored source archive of submission `id`, checked against the
    /// SHA-256 recorded when it was submitted: a rewritten archive is refused
    /// naming both hashes.
    /// The submission whose candidate run `run_id` was (its verdict lists it).
    pub fn submission_of_run(&self, run_id: i64) -> Result<Option<i64>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT id, verdict FROM submissions WHERE verdict IS NOT NULL ORDER BY id")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows.into_iter().find_map(|(id, verdict)| {
            let v: serde_json::Value = serde_json::from_str(&verdict).ok()?;
            v["runs"]
                .as_array()?
                .iter()
                .any(|r| r["store_id"].as_i64() == Some(run_id))
                .then_some(id)
        }))
    }

    pub fn submission_source(&self, id: i64) -> Result<Vec<u8>> {
        let conn = self.conn();
        let (archive, recorded): (Vec<u8>, String) = conn.query_row(
            "SELECT source, source_sha256 FROM submissions WHERE id = ?1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&archive));
        if actual != recorded {
            bail!(
                "submission {id}'s stored source archive has SHA-256 {actual}, but the store recorded {recorded} when it was submitted: the archive was changed, and is not built"
            );
        }
        Ok(archive)
    }

    pub fn add_record(&self, r: &NewRecord) -> Result<i64> {
        let conn = self.conn();
        // A number the statistics could not give (a time to target of 0 makes
        // the speedup infinite or undefined) is refused by name, not by SQLite.
        for (what, v) in [
            ("time to target", r.time_to_target_s),
            ("validation loss", r.val_loss),
            ("p (loss < target)", r.p_target),
            ("p (speedup)", r.p_speedup),
            ("speedup", r.speedup),
        ] {
            if !v.is_finite() {
                bail!(
                    "not recorded as a record of track {}: its {what} is {v}, not a finite number",
                    r.track
                );
            }
        }
        conn.execute(
            "INSERT INTO records (track, submission_id, comparison_id, created_at, description,
                 time_to_target_s, val_loss, p_target, p_speedup, speedup, previous, seeds)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                r.track,
                r.submission_id,
                r.comparison_id,
                now(),
                r.description,
                r.time_to_target_s,
                r.val_loss,
                r.p_target,
                r.p_speedup,
                r.speedup,
                r.previous,
                serde_json::to_string(r.seeds)?,
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// A track's records, oldest first (the last is the current record).
    pub fn records(&self, track: &str) -> Result<Vec<Record>> {
        let conn = self.conn();
        let sql = format!("{RECORD_COLUMNS} WHERE r.track = ?1 ORDER BY r.id");
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt
            .query_map(params![track], read_record)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn record(&self, id: i64) -> Result<Record> {
        let conn = self.conn();
        let sql = format!("{RECORD_COLUMNS} WHERE r.id = ?1");
        match conn.query_row(&sql, params![id], read_record).optional()? {
            Some(r) => Ok(r),
            None => bail!("the run store {} holds no record {id}", self.path.display()),
        }
    }
}
