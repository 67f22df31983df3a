//! One training step — schedule, batch within the budget, forward, the host's
//! loss, backward, finiteness, optimizer — and the untimed warm-up, which is
//! the same step on a throwaway stack.

use super::*;

/// A stack ready to train: the model built from the seed, its optimizer
/// initialised, its plugins given the device, the precision and the labels.
/// The run, its untimed warm-up and `bench throughput` all set up through it.
pub(crate) struct Stack {
    pub(crate) model: Model,
    pub(crate) optimizer: Box<dyn Optimizer>,
    pub(crate) schedule: Box<dyn Schedule>,
    pub(crate) plugins: Vec<LoadedPlugin>,
    pub(crate) policy: Option<PolicyRecord>,
    pub(crate) meter: std::sync::Arc<MemoryMeter>,
}

impl Stack {
    /// Builds the model (`model.params`, `model.init`) and initialises the
    /// optimizer (`optimizer.init`): the caller decides whether that is on
    /// the clock. A refused op in an init hook is the error, so the run is
    /// reported invalid rather than unrunnable.
    pub(crate) fn assemble(
        track: &Track,
        comps: Components,
        seed: u64,
        meter: std::sync::Arc<MemoryMeter>,
        labels: Option<&Labels>,
    ) -> Result<Stack> {
        let Components {
            hooks,
            mut optimizer,
            schedule,
            plugins,
            policy,
        } = comps;
        crate::plugins::attach_device(&plugins, &meter, track.train.precision);
        if let Some(l) = labels {
            l.tell_separator(track, &plugins);
        }
        let built = Model::build(&track.model, hooks, seed, meter.device()).and_then(|m| {
            let m = m.with_precision(track.train.precision);
            optimizer
                .init(&m.params)
                .context("in hook optimizer.init")?;
            Ok(m)
        });
        let model = match built {
            Ok(m) => m,
            Err(e) => {
                return Err(
                    match crate::plugins::take_violations(&plugins).into_iter().next() {
                        Some(v) => anyhow::Error::new(v).context(format!("{e:#}")),
                        None => e,
                    },
                )
            }
        };
        Ok(Stack {
            model,
            optimizer,
            schedule,
            plugins,
            policy,
            meter,
        })
    }
}

/// What the untimed warm-up left: the parameters' digest it started from.
pub(super) struct WarmUp {
    pub(super) digest: String,
    pub(super) steps: usize,
    pub(super) seconds: f64,
}

/// Runs `n` untimed steps on a throwaway copy of the stack (its own model,
/// optimizer, plugin instances and data stream), then drops it all.
pub(super) fn warm_up(
    opts: &RunOptions,
    build: &mut dyn FnMut() -> Result<Components>,
    data: &TrackData,
    labels: &Labels,
    n: usize,
    steps: usize,
    meter: &MemoryMeter,
) -> Result<WarmUp> {
    let track = &opts.track.track;
    let meter = std::sync::Arc::new(MemoryMeter::new(meter.device(), meter.budget()));
    let mut stack = Stack::assemble(track, build()?, opts.seed, meter, Some(labels))?;
    let digest = stack.model.params.digest()?;
    let mut stream = TrainStream::with_stream(
        &data.train,
        track.batch_size(),
        track.model.seq_len,
        opts.seed,
        WARMUP_STREAM,
    )
    .permuted(labels.train.clone());
    let t0 = std::time::Instant::now();
    for step in 0..n {
        let at = StepAt {
            step,
            steps,
            group: opts.parallel.as_deref(),
        };
        stack.step(track, &mut stream, at, None, None)?;
    }
    Ok(WarmUp {
        digest,
        steps: n,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

pub(super) const WARMUP_STREAM: u64 = 0x7761_726d_5f75_7073; // "warm_ups"

/// One training step's outcome.
pub(crate) struct StepOut {
    pub(crate) loss: f32,
    pub(super) lr: f64,
    pub(super) grad_norm: f64,
    pub(super) batch_tokens: usize,
}

/// Which step of how many, and the rank group the step averages over.
#[derive(Clone, Copy)]
pub(crate) struct StepAt<'a> {
    pub(crate) step: usize,
    pub(crate) steps: usize,
    pub(crate) group: Option<&'a dyn Collective>,
}

/// Seconds of a step's parts, each read after the device's queued work
/// (`bench throughput`; the training loop times the whole step instead).
#[derive(Default)]
pub(crate) struct SplitTimes {
    pub(crate) forward: f64,
    pub(crate) backward: f64,
    pub(crate) optimizer: f64,
}

/// Reads the clock after the device's queued work, when a split is asked for.
fn lap(split: &Option<&mut SplitTimes>, device: &Device) -> Result<Option<std::time::Instant>> {
    if split.is_none() {
        return Ok(None);
    }
    device.synchronize()?;
    Ok(Some(std::time::Instant::now()))
}

impl Stack {
    /// schedule → batch (within the budget) → forward → the host's loss → backward →
    /// finiteness → optimizer. The caller times it (`split`: by part).
    pub(crate) fn step(
        &mut self,
        track: &Track,
        stream: &mut TrainStream,
        at: StepAt<'_>,
        twin: Option<TwinStep<'_>>,
        split: Option<&mut SplitTimes>,
    ) -> Result<StepOut> {
        let StepAt { step, steps, group } = at;
        let (model, meter) = (&self.model, &*self.meter);
        let device = meter.device();
        let sched = self
            .schedule
            .at(step, steps)
            .with_context(|| format!("in hook schedule at step {step}"))?;
        let seq = track.model.seq_len;
        let batch_tokens = sched.batch_tokens.unwrap_or(track.train.batch_tokens);
        if batch_tokens == 0 || batch_tokens % seq != 0 {
            bail!(
                "the schedule asked for {batch_tokens} training tokens at step {step}: not a positive multiple of the sequence length {seq}"
            );
        }
        let budget = track.train.token_budget as u64;
        if stream.tokens_consumed + batch_tokens as u64 > budget {
            return Err(Violation::new(
                Check::TokenBudget,
                format!(
                    "the schedule asked for {batch_tokens} tokens at step {step}; with {} already consumed that passes the track's budget of {budget} tokens",
                    stream.tokens_consumed
                ),
            )
            .into());
        }
        let mut batch = stream.next_batch_of(batch_tokens / seq);
        if let Some(g) = group {
            if !batch.batch.is_multiple_of(g.world()) {
                bail!(
                    "the schedule's batch of {} sequences at step {step} does not split over {} ranks",
                    batch.batch,
                    g.world()
                );
            }
            // Every rank drew the same global batch; each trains on its share.
            batch = batch.shard(g.rank(), g.world());
        }
        let (x, y) = validate::batch_tensors(&batch, device)?;
        let lr = track.optimizer.lr * sched.lr_mult;
        let t0 = lap(&split, device)?;
        let logits = match twin {
            None => model.forward(&x, true),
            Some(tw) => validate::forward_twinned(
                model,
                &self.plugins,
                &batch.inputs,
                &x,
                true,
                tw.twins,
                Some(tw.timer),
            ),
        };
        let loss = meter.guard(
            "the forward pass",
            logits.and_then(|l| validate::loss_of(&l, &y, true)),
        )?;
        let t1 = lap(&split, device)?;
        let store = meter.guard("the backward pass", loss.backward().map_err(Into::into))?;
        let mut grads = Grads::collect(&model.params, &store)?;
        let mut loss = loss;
        if let Some(g) = group {
            // The all-reduce, one for the gradients and the loss together: every rank
            // continues with the same averaged gradients.
            let mut all = grads.0;
            all.push(loss);
            let mut mean = g.mean_all(&all)?;
            loss = mean.pop().expect("the loss went in last");
            grads = Grads(mean);
        }
        let grad_norm = grads.global_norm()?;
        let loss_value = loss.to_scalar::<f32>()?;
        if !loss_value.is_finite() {
            return Err(Violation::new(
                Check::FiniteTraining,
                format!(
                    "the training loss is not finite at step {step} ({loss_value}); the run is stopped"
                ),
            )
            .into());
        }
        if !grad_norm.is_finite() {
            return Err(Violation::new(
                Check::FiniteTraining,
                format!(
                    "the gradient norm is not finite at step {step} ({grad_norm}); the run is stopped"
                ),
            )
            .into());
        }
        let t2 = lap(&split, device)?;
        let stepped = self.optimizer.step(
            &model.params,
            &grads,
            &StepInput {
                step,
                lr,
                momentum_mult: sched.momentum_mult,
                grad_norm,
            },
        );
        meter
            .guard("hook optimizer.step", stepped)
            .with_context(|| format!("in hook optimizer.step at step {step}"))?;
        let t3 = lap(&split, device)?;
        if let (Some(s), Some(t0), Some(t1), Some(t2), Some(t3)) = (split, t0, t1, t2, t3) {
            s.forward = (t1 - t0).as_secs_f64();
            s.backward = (t2 - t1).as_secs_f64();
            s.optimizer = (t3 - t2).as_secs_f64();
        }
        Ok(StepOut {
            loss: loss_value,
            lr,
            grad_norm,
            batch_tokens,
        })
    }
}

/// A training step whose forward is twinned: the secret draws, the clock to
/// pause around the twin (the stack's plugins' generators it must not move).
pub(crate) struct TwinStep<'a> {
    pub(crate) twins: &'a mut Twins,
    pub(crate) timer: &'a mut TrainingTimer,
}
