//! What a run writes down as it starts: the steps it trains, its manifest
//! (what decided it) and its summary's first state.

use super::*;

/// The steps a run trains: its `--steps`, within the track's budget.
pub(super) fn steps_of(opts: &RunOptions) -> Result<usize> {
    let track = &opts.track.track;
    let steps = match opts.steps {
        Some(0) => bail!("--steps must be at least 1"),
        Some(s) if s > track.steps() => bail!(
            "--steps {s} exceeds the track's token budget of {} tokens ({} steps of {} tokens)",
            track.train.token_budget,
            track.steps(),
            track.train.batch_tokens
        ),
        Some(s) => s,
        None => track.steps(),
    };
    if let Some(g) = &opts.parallel {
        if !track.batch_size().is_multiple_of(g.world()) {
            bail!(
                "{} ranks cannot split the track's batch of {} sequences evenly",
                g.world(),
                track.batch_size()
            );
        }
    }
    Ok(steps)
}

/// What decided the run, as `manifest.json` and the store record it.
pub(super) fn manifest_of(
    opts: &RunOptions,
    steps: usize,
    data: &TrackData,
    stack: &Stack,
    device: &Device,
) -> RunManifest {
    let track = &opts.track.track;
    let policy = stack.policy.clone();
    RunManifest {
        host_version: env!("CARGO_PKG_VERSION").into(),
        git_revision: telemetry::git_revision(),
        track: track.name.clone(),
        track_path: opts.track.path.display().to_string(),
        track_sha256: opts.track.sha256.clone(),
        track_overrides: opts.track.overrides.clone(),
        data_dir: data.dir.display().to_string(),
        shards: data.records.clone(),
        seed: opts.seed,
        steps,
        track_steps: track.steps(),
        checks_version: verify::CHECKS_VERSION,
        batch_tokens: track.train.batch_tokens,
        parameters: stack.model.params.numel(),
        optimizer: stack.optimizer.name().to_string(),
        plugins: stack.plugins.iter().map(|p| p.record.clone()).collect(),
        stack_label: opts.stack_label.clone(),
        // The reference stack needs no approval; plugins need every one approved;
        // real labels are for calibration only.
        official: (stack.plugins.is_empty()
            || policy.as_ref().is_some_and(|p| p.warnings.is_empty()))
            && opts.vocab != VocabMode::Identity
            && opts.track.overrides.is_empty(),
        policy,
        hardware: Hardware::detect(),
        device: crate::device::describe(device),
        started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        command: std::env::args().collect(),
    }
}

impl RunSummary {
    /// The summary of a run that has just started: nothing measured yet.
    pub(super) fn started(
        m: &RunManifest,
        track: &Track,
        opts: &RunOptions,
        verdict: Verdict,
    ) -> RunSummary {
        RunSummary {
            status: RunStatus::Running,
            error: None,
            track: track.name.clone(),
            seed: opts.seed,
            steps: 0,
            tokens: 0,
            train_time_s: 0.0,
            tokens_per_s: 0.0,
            flops: 0.0,
            final_val_loss: None,
            final_val_bpb: None,
            best_val_loss: None,
            best_val_bpb: None,
            target_val_loss: track.target.val_loss,
            target_reached: false,
            time_to_target_s: None,
            tokens_to_target: None,
            flops_to_target: None,
            step_of_target: None,
            warmup_steps: 0,
            peak_memory_bytes: 0,
            memory_budget_bytes: opts.device.memory_budget,
            unofficial_reasons: m
                .policy
                .as_ref()
                .map(|p| p.warnings.clone())
                .unwrap_or_default()
                .into_iter()
                .chain((opts.vocab == VocabMode::Identity).then(|| {
                    "trained and validated on the real token ids (no secret permutation)"
                        .to_string()
                }))
                .chain((!opts.track.overrides.is_empty()).then(|| {
                    format!(
                        "on a modified track (--set {})",
                        opts.track.overrides.join(" --set ")
                    )
                }))
                .collect(),
            verdict,
            store_id: None,
            train_losses: Vec::with_capacity(m.steps),
            run_dir: opts.out.clone(),
        }
    }
}
