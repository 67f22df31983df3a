//! A run being recorded: its evaluations as they come, its end in one
//! transaction, and whether the process that started it still runs.

use super::*;

/// A run being recorded.
pub struct RunRecord {
    pub(super) store: Store,
    pub(super) id: i64,
}

impl RunRecord {
    pub fn id(&self) -> i64 {
        self.id
    }

    /// One validation, committed at once (a kill after it keeps it).
    pub fn evaluation(
        &self,
        step: usize,
        tokens: u64,
        train_time_s: f64,
        flops: f64,
        val_loss: f64,
        val_bpb: f64,
    ) -> Result<()> {
        self.store.conn().execute(
            "INSERT INTO evaluations (run_id, step, tokens, train_time_s, flops, val_loss, val_bpb)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (run_id, step) DO UPDATE SET tokens = excluded.tokens,
                 train_time_s = excluded.train_time_s, flops = excluded.flops,
                 val_loss = excluded.val_loss, val_bpb = excluded.val_bpb",
            vals![
                self.id,
                step,
                tokens,
                train_time_s,
                flops,
                val_loss,
                val_bpb
            ],
        )?;
        Ok(())
    }

    /// The run's end: summary, scores and verdict, in one transaction.
    pub fn finish(&self, s: &RunSummary) -> Result<()> {
        let mut conn = self.store.conn();
        let mut tx = conn.transaction(false)?;
        tx.execute(
            "UPDATE runs SET status = ?2, finished_at = ?3, steps = ?4, tokens = ?5, train_time_s = ?6,
                 flops = ?7, final_val_loss = ?8, best_val_loss = ?9, final_val_bpb = ?10,
                 target_val_loss = ?11, time_to_target_s = ?12, tokens_to_target = ?13,
                 flops_to_target = ?14, valid = ?15, error = ?16, summary = ?17
             WHERE id = ?1",
            vals![
                self.id,
                s.status.name(),
                now(),
                s.steps,
                s.tokens,
                s.train_time_s,
                s.flops,
                s.final_val_loss,
                s.best_val_loss,
                s.final_val_bpb,
                s.target_val_loss,
                s.time_to_target_s,
                s.tokens_to_target,
                s.flops_to_target,
                s.verdict.valid,
                &s.error,
                serde_json::to_string(s)?,
            ],
        )?;
        tx.execute("DELETE FROM checks WHERE run_id = ?1", vals![self.id])?;
        for (i, c) in s.verdict.checks.iter().enumerate() {
            tx.execute(
                "INSERT INTO checks (run_id, position, name, outcome, detail, check_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                vals![
                    self.id,
                    i,
                    c.check.name(),
                    serde_json::to_value(c.outcome)?
                        .as_str()
                        .unwrap_or_default(),
                    &c.detail,
                    serde_json::to_string(c)?
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// Whether the process that started a run is still the one running.
pub(super) mod process {
    /// The process's start time in clock ticks since boot (Linux), which tells a
    /// live process from a later one that reused its pid.
    pub fn start_time(pid: i64) -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Field 22; the command name (field 2) may hold spaces, so count after ')'.
        let after = &stat[stat.rfind(')')? + 1..];
        after.split_whitespace().nth(19).map(str::to_string)
    }

    pub fn alive(pid: i64, start: Option<&str>) -> bool {
        if !std::path::Path::new("/proc/self/stat").exists() {
            // No procfs: assume it runs rather than mark a live run incomplete.
            return true;
        }
        match (start_time(pid), start) {
            (Some(now), Some(then)) => now == then,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_liveness_tells_this_process_from_a_dead_one() {
        let me = std::process::id() as i64;
        let start = process::start_time(me);
        assert!(start.is_some());
        assert!(process::alive(me, start.as_deref()));
        // Same pid, another start time: a reused pid is not our run's process.
        assert!(!process::alive(me, Some("1")));
        // A child that has exited and been reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i64;
        child.wait().unwrap();
        assert!(!process::alive(pid, None));
    }
}
