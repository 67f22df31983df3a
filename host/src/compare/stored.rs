//! The bench and the run store: storing a report as a comparison, and reading
//! the reference's runs back for `--baseline-stored`.

use super::*;

/// Stores a report as a comparison and sets its `comparison_id`. Its runs'
/// hardware is checked first (`Report::flag_hardware`), so no stored
/// comparison, whichever command made it, claims across machines.
pub fn store_comparison(store: &Store, report: &mut Report) -> Result<i64> {
    report.flag_hardware(hardware_kinds(store, report)?);
    let runs: Vec<(i64, &str)> = [
        ("candidate", &report.candidate),
        ("baseline", &report.baseline),
    ]
    .iter()
    .flat_map(|(role, side)| {
        side.runs
            .iter()
            .filter_map(move |r| r.store_id.map(|id| (id, *role)))
    })
    .collect();
    let json = serde_json::to_value(&*report)?;
    let verdict = serde_json::to_value(report.verdict)?;
    let id = store.add_comparison(
        &report.track,
        &report.candidate.stack,
        &report.baseline.stack,
        verdict.as_str().unwrap_or_default(),
        &json,
        &runs,
    )?;
    report.comparison_id = Some(id);
    Ok(id)
}

/// The distinct hardware fingerprints of the report's stored runs (runs
/// stored before the store kept one are left out).
fn hardware_kinds(store: &Store, report: &Report) -> Result<Vec<String>> {
    let mut kinds = std::collections::BTreeSet::new();
    for r in report.candidate.runs.iter().chain(&report.baseline.runs) {
        if let Some(id) = r.store_id {
            if let Some(h) = store.run_by_id(id)?.and_then(|run| run.hardware) {
                kinds.insert(h);
            }
        }
    }
    Ok(kinds.into_iter().collect())
}

impl BenchRun {
    /// A run read back from the store (`bench --baseline-stored`).
    pub(super) fn stored(r: &crate::store::StoredRun, failed_checks: Vec<String>) -> BenchRun {
        BenchRun {
            seed: r.seed,
            run_dir: r.run_dir.clone(),
            store_id: Some(r.id),
            status: r.status,
            valid: r.valid == Some(true) && r.status == RunStatus::Complete,
            failed_checks,
            final_val_loss: r.final_val_loss,
            best_val_loss: r.best_val_loss,
            train_time_s: r.train_time_s.unwrap_or(0.0),
            time_to_target_s: r.time_to_target_s,
            tokens_to_target: r.tokens_to_target,
            tokens: r.tokens.unwrap_or(0),
            flops: r.flops.unwrap_or(0.0),
            error: r.error.clone(),
        }
    }
}

/// The reference's stored runs for every seed of the session, at `steps`; an
/// error naming the first seed the store lacks.
pub(super) fn stored_baseline(
    s: &Session,
    stack: &StackSpec,
    steps: usize,
) -> Result<Vec<BenchRun>> {
    if !stack.plugins.is_empty() {
        bail!("--baseline-stored takes the reference's runs from the store; it cannot be combined with --baseline-plugin");
    }
    let Some(store) = &s.store else {
        bail!("--baseline-stored needs a run store");
    };
    let path = store.location();
    let lt = &s.track;
    s.seeds
        .iter()
        .map(|&seed| {
            let Some(r) = store.latest_complete_run(&lt.track.name, &lt.sha256, "reference", seed, steps)? else {
                bail!(
                    "--baseline-stored: the run store {} holds no complete reference run of seed {seed} on this track file ({}, sha256 {}) at {steps} steps; run `speedrun run --track {} --seed {seed} --db {}` first, or drop --baseline-stored",
                    path,
                    lt.path.display(),
                    &lt.sha256[..12.min(lt.sha256.len())],
                    lt.track.name,
                    path
                );
            };
            let failed = store
                .verdict(r.id)?
                .map(|v| v.failed().iter().map(|c| c.to_string()).collect())
                .unwrap_or_default();
            Ok(BenchRun::stored(&r, failed))
        })
        .collect()
}
