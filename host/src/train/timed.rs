//! The timed loop: the steps on the training clock, a validation every
//! `validation.every_steps` and at the end (untimed), metrics and progress.

use super::*;
use telemetry::MetricLine;

pub(super) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    every: usize,
    /// The last validation loss, for the live line.
    val: std::cell::Cell<Option<f64>>,
}

impl Progress {
    pub(super) fn new(enabled: bool, steps: usize) -> Progress {
        use std::io::IsTerminal;
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(steps as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} steps {elapsed} (eta {eta}) {msg}",
                )
                .expect("valid template"),
            );
            b
        });
        Progress {
            bar,
            val: std::cell::Cell::new(None),
            every: if enabled {
                (steps / 20).max(1)
            } else {
                usize::MAX
            },
        }
    }

    pub(super) fn step(&self, step: usize, steps: usize, loss: f32, tok_s: f64) {
        let val = self
            .val
            .get()
            .map_or(String::new(), |v| format!(" val {v:.4}"));
        match &self.bar {
            Some(b) => {
                b.set_position(step as u64 + 1);
                b.set_message(format!("loss {loss:.4}{val} {tok_s:.0} tok/s"));
            }
            None if self.every != usize::MAX
                && ((step + 1).is_multiple_of(self.every) || step + 1 == steps) =>
            {
                tracing::info!(
                    "step {}/{steps} loss {loss:.4}{val} {tok_s:.0} tok/s",
                    step + 1
                )
            }
            None => {}
        }
    }

    /// A line each time the validation loss is measured.
    pub(super) fn validation(&self, step: usize, loss: Option<f64>) {
        let Some(loss) = loss else { return };
        self.val.set(Some(loss));
        let line = format!("validation at step {step}: loss {loss:.4}");
        match &self.bar {
            Some(b) => b.println(line),
            None if self.every != usize::MAX => tracing::info!("{line}"),
            None => {}
        }
    }

    pub(super) fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// What the loop works with, besides the summary it fills in.
pub(super) struct LoopCx<'a> {
    pub(super) opts: &'a RunOptions,
    /// The stack being trained (model, optimizer, schedule, plugins, meter).
    pub(super) stack: &'a mut Stack,
    pub(super) data: &'a TrackData,
    pub(super) valset: &'a ValidationSet,
    pub(super) steps: usize,
    pub(super) device: &'a Device,
    pub(super) dir: &'a mut RunDir,
    pub(super) record: Option<&'a mut RunRecord>,
    pub(super) ledger: &'a mut Ledger,
    pub(super) flops_per_token: f64,
    /// The twin causality checks: secret draws and what they measured.
    pub(super) twins: Twins,
    /// The permutation training batches are relabelled through.
    pub(super) labels_train: std::sync::Arc<VocabPermutation>,
    /// The training clock (already holding the init hooks' time).
    pub(super) timer: &'a mut TrainingTimer,
    /// Time inside plugin hooks during timed steps.
    pub(super) plugin_ms: f64,
    /// Validations run (each in eval mode).
    pub(super) evals: usize,
    /// The validation loss of the initial model.
    pub(super) initial_loss: Option<f64>,
}

impl LoopCx<'_> {
    /// Stops the run at the first op refusal a plugin session recorded.
    pub(super) fn check_plugins(&mut self) -> Result<()> {
        let mut first = None;
        for v in crate::plugins::take_violations(&self.stack.plugins) {
            self.ledger.fail(v.check, v.detail.clone());
            first.get_or_insert(v);
        }
        match first {
            Some(v) => Err(v.into()),
            None => Ok(()),
        }
    }

    /// Validation is untimed: the caller has paused the clock.
    pub(super) fn validate(
        &mut self,
        step: usize,
        tokens: u64,
        train_time_s: f64,
        summary: &mut RunSummary,
        twin_share: f64,
    ) -> Result<()> {
        let track = &self.opts.track.track;
        let t0 = std::time::Instant::now();
        let result = validate::evaluate_checked(
            &self.stack.model,
            self.valset,
            track.batch_size(),
            self.device,
            self.opts.parallel.as_deref(),
            Some((&mut self.twins, twin_share, &self.stack.plugins)),
        );
        self.evals += 1;
        crate::plugins::take_stats(&self.stack.plugins);
        self.check_plugins()?;
        let (loss, bpb) = result?;
        self.compare_ranks(step)?;
        let line = MetricLine::Val {
            step,
            tokens,
            train_time_s,
            val_loss: loss,
            val_bpb: bpb,
            eval_s: t0.elapsed().as_secs_f64(),
        };
        self.dir.metric(&line)?;
        if let Some(r) = self.record.as_deref_mut() {
            if let Err(e) = r.evaluation(
                step,
                tokens,
                train_time_s,
                tokens as f64 * self.flops_per_token,
                loss,
                bpb,
            ) {
                tracing::warn!("the run store could not record an evaluation: {e:#}");
            }
        }
        summary.final_val_loss = Some(loss);
        summary.final_val_bpb = Some(bpb);
        if summary.best_val_loss.is_none_or(|b| loss < b) {
            summary.best_val_loss = Some(loss);
            summary.best_val_bpb = Some(bpb);
        }
        if let Some(target) = track.target.val_loss {
            if loss <= target && !summary.target_reached {
                summary.target_reached = true;
                summary.time_to_target_s = Some(train_time_s);
                summary.tokens_to_target = Some(tokens);
                summary.flops_to_target = Some(tokens as f64 * self.flops_per_token);
                summary.step_of_target = Some(step);
            }
        }
        tracing::debug!("step {step}: validation loss {loss:.4} ({bpb:.4} bits/byte)");
        Ok(())
    }

    /// Data parallelism: every rank must hold the same parameters at every
    /// validation, not only at the end (a rank that diverged and copied rank
    /// 0's values back at the last step is caught at the first validation after).
    pub(super) fn compare_ranks(&mut self, step: usize) -> Result<()> {
        let Some(g) = self.opts.parallel.as_deref() else {
            return Ok(());
        };
        let mine = self.stack.model.params.digest()?;
        let all = g.exchange(mine.clone().into_bytes())?;
        for (r, d) in all.iter().enumerate() {
            if d.as_slice() != mine.as_bytes() {
                let detail = format!(
                    "at the validation after step {step}, rank {r}'s parameters (sha256 {}) differ from rank {}'s ({mine})",
                    String::from_utf8_lossy(d),
                    g.rank()
                );
                self.ledger.fail(Check::Ranks, detail.clone());
                return Err(Violation::new(Check::Ranks, detail).into());
            }
        }
        Ok(())
    }
}

pub(super) fn train_loop(cx: &mut LoopCx, summary: &mut RunSummary) -> Result<()> {
    let opts = cx.opts;
    let track = &opts.track.track;
    let steps = cx.steps;
    let mut stream = TrainStream::new(
        &cx.data.train,
        track.batch_size(),
        track.model.seq_len,
        opts.seed,
    )
    .permuted(cx.labels_train.clone());
    let progress = Progress::new(opts.progress, steps);
    let val_every = track.validation.every_steps;

    // The initial model is validated before the first timed step, so that what
    // it knows before training (it should know nothing) is measured.
    let init_s = cx.timer.elapsed().as_secs_f64();
    cx.validate(0, 0, init_s, summary, causality::VALIDATION_SHARE)?;
    cx.initial_loss = summary.final_val_loss;
    progress.validation(0, summary.final_val_loss);
    for step in 0..steps {
        if opts
            .deadline
            .is_some_and(|d| std::time::Instant::now() >= d)
        {
            bail!("{DEADLINE} before step {step}");
        }
        if interrupted() {
            return Err(Interrupted { step }.into());
        }
        // Step 0 is always twinned; later steps by the secret draw.
        let twinned = step == 0 || cx.twins.pick(causality::TRAIN_SHARE);
        let twin_s = cx.twins.seconds;
        cx.timer.resume();
        let mut span = Span::start(cx.device);
        let at = StepAt {
            step,
            steps,
            group: opts.parallel.as_deref(),
        };
        let twin = twinned.then_some(TwinStep {
            twins: &mut cx.twins,
            timer: &mut *cx.timer,
        });
        let out = cx.stack.step(track, &mut stream, at, twin, None);
        // The device's queued work is part of the step: wait for it before the clock.
        let synced = cx.device.synchronize();
        span.stop();
        cx.timer.pause();
        let untimed_ms = (cx.twins.seconds - twin_s) * 1e3;
        let step_time = std::time::Duration::from_secs_f64((span.ms() - untimed_ms).max(0.0) / 1e3);
        synced?;
        let hooks = crate::plugins::take_stats(&cx.stack.plugins);
        cx.plugin_ms += hooks.iter().map(|h| h.ms).sum::<f64>();
        cx.check_plugins()?;
        let out = out?;

        summary.steps = step + 1;
        summary.tokens = stream.tokens_consumed;
        summary.train_time_s = cx.timer.elapsed().as_secs_f64();
        summary.tokens_per_s = summary.tokens as f64 / summary.train_time_s.max(1e-9);
        summary.train_losses.push(out.loss);
        let tok_s = out.batch_tokens as f64 / step_time.as_secs_f64().max(1e-9);
        cx.dir.metric(&MetricLine::Step {
            step,
            tokens: stream.tokens_consumed,
            train_loss: out.loss as f64,
            lr: out.lr,
            grad_norm: out.grad_norm,
            step_ms: step_time.as_secs_f64() * 1e3,
            tokens_per_s: tok_s,
            train_time_s: summary.train_time_s,
            memory_bytes: cx.stack.meter.sample(),
            peak_memory_bytes: cx.stack.meter.peak(),
            hooks,
        })?;
        progress.step(step, steps, out.loss, tok_s);

        let last = step + 1 == steps;
        if last || (val_every > 0 && (step + 1) % val_every == 0) {
            // Every batch of the final validation is twinned: it is what is scored.
            let share = if last {
                1.0
            } else {
                causality::VALIDATION_SHARE
            };
            cx.validate(
                step + 1,
                stream.tokens_consumed,
                summary.train_time_s,
                summary,
                share,
            )?;
            progress.validation(step + 1, summary.final_val_loss);
        }
    }
    progress.finish();
    Ok(())
}
