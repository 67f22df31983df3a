//! Submissions (each with the archive of its source, so a record can be rebuilt
//! later) and records (the submissions that beat their track's record).

use super::sql::{vals, Row, Sql};
use super::{now, Store};
use crate::record::{SubmissionStatus, Transport};
use anyhow::{bail, Result};
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
    /// The record the submission was compared against (none: the track had
    /// none). It becomes the record only if that is still the track's record.
    pub beat: Option<i64>,
}

/// What became of a claim to the record.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordClaim {
    /// Recorded, with this id.
    Recorded(i64),
    /// Another submission became the record while this one ran: this is the
    /// record now, and the claim was compared against an older one.
    Superseded(Box<Record>),
}

const SUBMISSION_COLUMNS: &str = "SELECT id, created_at, track, crate_name, description,
    source_sha256, transport, library_sha256, status, track_path, label_nonce FROM submissions";

fn read_submission(r: &Row) -> Result<Submission> {
    Ok(Submission {
        id: r.i64(0)?,
        created_at: r.text(1)?,
        track: r.text(2)?,
        crate_name: r.text(3)?,
        description: r.text(4)?,
        source_sha256: r.text(5)?,
        transport: r.parsed(6)?,
        library_sha256: r.opt_text(7)?,
        status: r.parsed(8)?,
        track_path: r.text(9)?,
        label_nonce: r.opt_text(10)?,
    })
}

const RECORD_COLUMNS: &str = "SELECT r.id, r.track, r.submission_id, r.comparison_id, r.created_at,
    r.description, r.time_to_target_s, r.val_loss, r.p_target, r.p_speedup, r.speedup, r.previous,
    r.seeds, s.crate_name, s.source_sha256, s.library_sha256, s.transport,
    (SELECT MIN(COALESCE(u.checks_version, 1)) FROM comparison_runs cr JOIN runs u ON u.id = cr.run_id
        WHERE cr.comparison_id = r.comparison_id AND cr.role = 'candidate')
    FROM records r JOIN submissions s ON s.id = r.submission_id";

fn read_record(r: &Row) -> Result<Record> {
    Ok(Record {
        id: r.i64(0)?,
        track: r.text(1)?,
        submission_id: r.i64(2)?,
        comparison_id: r.opt_i64(3)?,
        created_at: r.text(4)?,
        description: r.text(5)?,
        time_to_target_s: r.f64(6)?,
        val_loss: r.f64(7)?,
        p_target: r.f64(8)?,
        p_speedup: r.f64(9)?,
        speedup: r.f64(10)?,
        previous: r.text(11)?,
        seeds: serde_json::from_str(&r.text(12)?).unwrap_or_default(),
        crate_name: r.text(13)?,
        source_sha256: r.text(14)?,
        library_sha256: r.opt_text(15)?,
        transport: r.parsed(16)?,
        checks_version: r.opt_i64(17)?.map_or(1, |v| v as u32),
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
        self.conn()
            .query_one(
                "INSERT INTO submissions (created_at, track, track_path, crate_name, description,
                     source_sha256, source, transport, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING id",
                vals![
                    now(),
                    track,
                    track_path,
                    crate_name,
                    description,
                    source_sha256,
                    source,
                    transport.name(),
                    SubmissionStatus::Building.name()
                ],
            )?
            .i64(0)
    }

    pub fn set_submission_label_nonce(&self, id: i64, nonce: &[u8; 32]) -> Result<()> {
        self.conn().execute(
            "UPDATE submissions SET label_nonce = ?2 WHERE id = ?1",
            vals![id, hex::encode(nonce)],
        )?;
        Ok(())
    }

    pub fn set_submission_library(&self, id: i64, library_sha256: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE submissions SET library_sha256 = ?2 WHERE id = ?1",
            vals![id, library_sha256],
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
        self.conn().execute(
            "UPDATE submissions SET status = ?2, verdict = COALESCE(?3, verdict) WHERE id = ?1",
            vals![id, status.name(), verdict.map(|v| v.to_string())],
        )?;
        Ok(())
    }

    pub fn submission(&self, id: i64) -> Result<Submission> {
        let sql = format!("{SUBMISSION_COLUMNS} WHERE id = ?1");
        match self.conn().query_opt(&sql, vals![id])? {
            Some(s) => read_submission(&s),
            None => bail!("the run store {} holds no submission {id}", self.location),
        }
    }

    /// The submission whose candidate run `run_id` was (its verdict lists it).
    pub fn submission_of_run(&self, run_id: i64) -> Result<Option<i64>> {
        let rows = self.conn().query(
            "SELECT id, verdict FROM submissions WHERE verdict IS NOT NULL ORDER BY id",
            &[],
        )?;
        for r in rows {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&r.text(1)?) else {
                continue;
            };
            let listed = v["runs"]
                .as_array()
                .is_some_and(|runs| runs.iter().any(|x| x["store_id"].as_i64() == Some(run_id)));
            if listed {
                return Ok(Some(r.i64(0)?));
            }
        }
        Ok(None)
    }

    /// The stored source archive (tar.gz) of submission `id`, checked against
    /// the SHA-256 recorded when it was submitted: a rewritten archive is
    /// refused naming both hashes.
    pub fn submission_source(&self, id: i64) -> Result<Vec<u8>> {
        let r = self.conn().query_one(
            "SELECT source, source_sha256 FROM submissions WHERE id = ?1",
            vals![id],
        )?;
        let (archive, recorded) = (r.blob(0)?, r.text(1)?);
        let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&archive));
        if actual != recorded {
            bail!(
                "submission {id}'s stored source archive has SHA-256 {actual}, but the store recorded {recorded} when it was submitted: the archive was changed, and is not built"
            );
        }
        Ok(archive)
    }

    /// Makes `r` the track's record, in one transaction that holds the records'
    /// write lock from the moment it reads the current record: of two
    /// submissions that beat the same record at once, the first to commit is
    /// recorded and the second is told which record it now has to beat.
    pub fn add_record(&self, r: &NewRecord) -> Result<RecordClaim> {
        // A number the statistics could not give (a time to target of 0 makes
        // the speedup infinite or undefined) is refused by name, not by the database.
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
        let mut conn = self.conn();
        let mut tx = conn.transaction(true)?;
        tx.lock_table("records")?;
        let sql = format!("{RECORD_COLUMNS} WHERE r.track = ?1 ORDER BY r.id DESC LIMIT 1");
        let current = tx
            .query_opt(&sql, vals![r.track])?
            .map(|c| read_record(&c))
            .transpose()?;
        if let Some(c) = current.filter(|c| Some(c.id) != r.beat) {
            return Ok(RecordClaim::Superseded(Box::new(c)));
        }
        let id = tx
            .query_one(
                "INSERT INTO records (track, submission_id, comparison_id, created_at, description,
                     time_to_target_s, val_loss, p_target, p_speedup, speedup, previous, seeds)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) RETURNING id",
                vals![
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
            )?
            .i64(0)?;
        tx.commit()?;
        Ok(RecordClaim::Recorded(id))
    }

    /// A track's records, oldest first (the last is the current record).
    pub fn records(&self, track: &str) -> Result<Vec<Record>> {
        let sql = format!("{RECORD_COLUMNS} WHERE r.track = ?1 ORDER BY r.id");
        self.conn()
            .query(&sql, vals![track])?
            .iter()
            .map(read_record)
            .collect()
    }

    pub fn record(&self, id: i64) -> Result<Record> {
        let sql = format!("{RECORD_COLUMNS} WHERE r.id = ?1");
        match self.conn().query_opt(&sql, vals![id])? {
            Some(r) => read_record(&r),
            None => bail!("the run store {} holds no record {id}", self.location),
        }
    }
}
