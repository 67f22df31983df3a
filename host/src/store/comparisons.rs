//! Stored benches: a comparison's report and the runs it compared.

use super::*;

impl Store {
    /// The track's stored comparisons, oldest first, with their reports as JSON.
    pub fn comparisons(&self, track: &str) -> Result<Vec<StoredComparison>> {
        self.comparisons_where("track = ?1", track.into())
    }

    /// The comparison with this id, if the store holds it.
    pub fn comparison(&self, id: i64) -> Result<Option<StoredComparison>> {
        Ok(self.comparisons_where("id = ?1", id.into())?.pop())
    }

    fn comparisons_where(&self, clause: &str, value: sql::Value) -> Result<Vec<StoredComparison>> {
        let rows = self.conn().query(
            &format!(
                "SELECT id, created_at, candidate, baseline, verdict, report
                 FROM comparisons WHERE {clause} ORDER BY id"
            ),
            &[value],
        )?;
        rows.iter()
            .map(|r| {
                let id = r.i64(0)?;
                Ok(StoredComparison {
                    id,
                    created_at: r.text(1)?,
                    candidate: r.text(2)?,
                    baseline: r.text(3)?,
                    verdict: r.text(4)?,
                    report: serde_json::from_str(&r.text(5)?).with_context(|| {
                        format!("the run store's comparison {id} holds a report that is not JSON")
                    })?,
                })
            })
            .collect()
    }

    /// Stores a bench comparison and the runs it compared; returns its id.
    pub fn add_comparison(
        &self,
        track: &str,
        candidate: &str,
        baseline: &str,
        verdict: &str,
        report: &serde_json::Value,
        runs: &[(i64, &str)],
    ) -> Result<i64> {
        let mut conn = self.conn();
        let mut tx = conn.transaction(false)?;
        let id = tx
            .query_one(
                "INSERT INTO comparisons (created_at, track, candidate, baseline, verdict, report)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
                vals![
                    now(),
                    track,
                    candidate,
                    baseline,
                    verdict,
                    report.to_string()
                ],
            )?
            .i64(0)?;
        for (run, role) in runs {
            tx.execute(
                "INSERT INTO comparison_runs (comparison_id, run_id, role) VALUES (?1, ?2, ?3)",
                vals![id, *run, *role],
            )?;
        }
        tx.commit()?;
        Ok(id)
    }
}
