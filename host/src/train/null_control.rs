//! The null-data control of a record claim: the same stack trained under the
//! run's permutation and validated under an independent one, and the check it
//! answers, put into the verdict after the run.

use super::*;

/// The null-data control's floor: an honest stack trained under one
/// permutation and validated under an independent one can do no better than
/// what in-context copying gains inside a window, which the calibration of the
/// reference and every technique plugin in `plugins/` put well above this
/// (docs/verification.md); a look-ahead or knowledge from outside the training
/// stream lands far below.
pub fn null_control_floor(vocab: usize) -> f64 {
    NULL_CONTROL_FLOOR_FRACTION * (vocab as f64).ln()
}

/// See `null_control_floor`: a fraction of ln(vocabulary).
pub const NULL_CONTROL_FLOOR_FRACTION: f64 = 0.8;

/// Runs the null-data control of a run: the same stack (built anew by
/// `build`), seed and steps, trained under the run's permutation and validated
/// under an independent one, in `OUT/null-control` and not in the store.
/// Answers the `null_control` check for the run it controls.
pub fn null_control(
    opts: &RunOptions,
    build: &mut dyn FnMut() -> Result<Components>,
) -> Result<verify::CheckResult> {
    let mut o = opts.clone();
    o.vocab = VocabMode::NullControl;
    o.out = opts.out.join("null-control");
    o.store = None;
    o.save_checkpoint = None;
    o.progress = false;
    let t0 = std::time::Instant::now();
    let f = execute(&o, build)?;
    let seconds = t0.elapsed().as_secs_f64();
    // Out of time is "could not run", not a failed control.
    if let Some(e) = &f.error {
        if f.summary
            .error
            .as_deref()
            .is_some_and(|m| m.contains(DEADLINE))
        {
            bail!("the null-data control ran out of time: {e:#}");
        }
    }
    let floor = null_control_floor(opts.track.track.model.vocab);
    let (outcome, detail) = match (&f.error, f.summary.final_val_loss) {
        (Some(e), _) => (
            verify::Outcome::Failed,
            format!("the null-data control run ({}) failed: {e:#}", o.out.display()),
        ),
        (None, Some(l)) if l < floor => (
            verify::Outcome::Failed,
            format!(
                "trained under one permutation and validated under an independent one, the stack scored {l:.4}, below the floor {floor:.4} ({NULL_CONTROL_FLOOR_FRACTION} x ln {}): it looks ahead or brings in knowledge from outside its training stream ({}, {seconds:.1} s)",
                opts.track.track.model.vocab,
                o.out.display()
            ),
        ),
        (None, Some(l)) => (
            verify::Outcome::Passed,
            format!(
                "trained under one permutation and validated under an independent one, the stack scored {l:.4}, not below the floor {floor:.4} ({NULL_CONTROL_FLOOR_FRACTION} x ln {}); the control took {seconds:.1} s ({})",
                opts.track.track.model.vocab,
                o.out.display()
            ),
        ),
        (None, None) => (
            verify::Outcome::Failed,
            "the null-data control run ended without a validation".to_string(),
        ),
    };
    Ok(verify::CheckResult {
        check: Check::NullControl,
        outcome,
        detail,
    })
}

/// Puts a check made after the run (its null-data control) into the run's
/// verdict, `summary.json` and its row in the store.
pub fn amend_verdict(
    summary: &mut RunSummary,
    result: verify::CheckResult,
    store: Option<&Store>,
) -> Result<()> {
    let v = &mut summary.verdict;
    match v.checks.iter_mut().find(|c| c.check == result.check) {
        Some(c) => *c = result,
        None => v.checks.push(result),
    }
    v.valid = v
        .checks
        .iter()
        .all(|c| c.outcome != verify::Outcome::Failed);
    telemetry::write_json_atomic(&summary.run_dir, "summary.json", &*summary)?;
    if let (Some(store), Some(id)) = (store, summary.store_id) {
        store.run_record(id).finish(summary)?;
    }
    Ok(())
}
