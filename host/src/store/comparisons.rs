//! Stored benches: a comparison's report and the runs it compared.

use super::*;

impl Store {
    /// The track's stored comparisons, oldest first, with their reports as JSON.
    pub fn comparisons(&self, track: &str) -> Result<Vec<StoredComparison>> {
        self.comparisons_where("track = ?1", &track)
    }

    /// The comparison with this id, if the store holds it.
    pub fn comparison(&self, id: i64) -> Result<Option<StoredComparison>> {
        Ok(self.comparisons_where("id = ?1", &id)?.pop())
    }

    fn comparisons_where(
        &self,
        clause: &str,
        value: &dyn rusqlite::ToSql,
    ) -> Result<Vec<StoredComparison>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT id, created_at, candidate, baseline, verdict, report
             FROM comparisons WHERE {clause} ORDER BY id"
        ))?;
        let rows = stmt
            .query_map(params![value], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(id, created_at, candidate, baseline, verdict, report)| {
                Ok(StoredComparison {
                    id,
                    created_at,
                    candidate,
                    baseline,
                    verdict,
                    report: serde_json::from_str(&report).with_context(|| {
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
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO comparisons (created_at, track, candidate, baseline, verdict, report)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                now(),
                track,
                candidate,
                baseline,
                verdict,
                report.to_string()
            ],
        )?;
        let id = tx.last_insert_rowid();
        for (run, role) in runs {
            tx.execute(
                "INSERT INTO comparison_runs (comparison_id, run_id, role) VALUES (?1, ?2, ?3)",
                params![id, run, role],
            )?;
        }
        tx.commit()?;
        Ok(id)
    }
}
