//! The runs of a cluster batch (`--executor slurm`): each Slurm task records
//! the run it made for its seed and role; the command that submitted the batch
//! reads them back, and a resubmission finds which seeds are already done.

use super::sql::{vals, Sql};
use super::*;

/// One run of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRun {
    pub seed: u64,
    pub role: String,
    pub run_id: i64,
}

impl Store {
    /// Records (or, for a seed run again, replaces) the run of `role` at `seed`.
    pub fn add_batch_run(&self, batch: &str, seed: u64, role: &str, run_id: i64) -> Result<()> {
        self.conn().execute(
            "INSERT INTO batch_runs (batch, seed, role, run_id) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (batch, seed, role) DO UPDATE SET run_id = excluded.run_id",
            vals![batch, seed, role, run_id],
        )?;
        Ok(())
    }

    /// Every run the batch's tasks recorded, by seed then role.
    pub fn batch_runs(&self, batch: &str) -> Result<Vec<BatchRun>> {
        self.conn()
            .query(
                "SELECT seed, role, run_id FROM batch_runs WHERE batch = ?1 ORDER BY seed, role",
                vals![batch],
            )?
            .iter()
            .map(|r| {
                Ok(BatchRun {
                    seed: r.u64(0)?,
                    role: r.text(1)?,
                    run_id: r.i64(2)?,
                })
            })
            .collect()
    }
}
