//! Validation: the host runs the model in eval mode over the whole validation set
//! and scores it with its own loss.

use crate::data::loader::{Batch, ValidationSet};
use crate::loss::cross_entropy;
use crate::model::Model;
use crate::parallel::Collective;
use crate::plugins::LoadedPlugin;
use crate::train::timer::TrainingTimer;
use crate::verify::causality::{all_finite, Twins};
use crate::verify::{Check, Violation};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

/// Inputs and targets of a batch as tensors: `[B, T]` and `[B*T]`.
pub fn batch_tensors(b: &Batch, device: &Device) -> Result<(Tensor, Tensor)> {
    let x = Tensor::from_slice(&b.inputs, (b.batch, b.seq), device)?;
    let y = Tensor::from_slice(&b.targets, b.batch * b.seq, device)?;
    Ok((x, y))
}

/// The real forward of `x` (its logits are returned) and a twin of it, in the
/// order the secret draw says, compared before each row's cut. The twin runs
/// untimed (`timer` is paused around it) and leaves every plugin's generator
/// where the real forward alone would have (both forwards see the same draws).
pub fn forward_twinned(
    model: &Model,
    plugins: &[LoadedPlugin],
    inputs: &[u32],
    x: &Tensor,
    train: bool,
    twins: &mut Twins,
    mut timer: Option<&mut TrainingTimer>,
) -> Result<Tensor> {
    let (b, t) = x.dims2()?;
    let t0 = std::time::Instant::now();
    let pause = |timer: &mut Option<&mut TrainingTimer>, on: bool| {
        if let Some(tm) = timer.as_deref_mut() {
            if on {
                tm.pause();
            } else {
                tm.resume();
            }
        }
    };
    pause(&mut timer, true);
    let (ids, cuts) = twins.twin_of(inputs, b, t);
    let xt = Tensor::from_slice(&ids, (b, t), x.device())?;
    let before = crate::plugins::rng_states(plugins);
    let first = twins.twin_first();
    let twin = if first {
        let twin = model.forward(&xt, train)?.detach();
        crate::plugins::set_rng_states(plugins, before.clone());
        twins.seconds += t0.elapsed().as_secs_f64();
        Some(twin)
    } else {
        None
    };
    pause(&mut timer, false);
    let real = model.forward(x, train)?;
    pause(&mut timer, true);
    let t1 = std::time::Instant::now();
    let twin = match twin {
        Some(tw) => tw,
        None => {
            let after = crate::plugins::rng_states(plugins);
            crate::plugins::set_rng_states(plugins, before);
            let tw = model.forward(&xt, train)?.detach();
            crate::plugins::set_rng_states(plugins, after);
            tw
        }
    };
    let checked = twins.compare(&real.detach(), &twin, &cuts, train);
    twins.seconds += t1.elapsed().as_secs_f64();
    pause(&mut timer, false);
    checked?;
    Ok(real)
}

/// The host's loss of `logits` `[B, T, V]` against targets `[B*T]`.
/// In eval mode it first checks the logits are finite over the whole
/// vocabulary; in training a non-finite logit shows as a non-finite loss or
/// gradient, which stops the run naming the step.
pub fn loss_of(logits: &Tensor, y: &Tensor, train: bool) -> Result<Tensor> {
    if !train && !all_finite(logits)? {
        return Err(Violation::new(
            Check::FullDistribution,
            "the model's validation logits are not all finite: the loss needs a distribution over the whole vocabulary",
        )
        .into());
    }
    let (b, t, v) = logits.dims3()?;
    Ok(cross_entropy(&logits.reshape((b * t, v))?, y)?)
}

/// Twin checks for validation: the secret draws, the share of batches to
/// twin, and the plugins whose generators a twin must not move.
pub type ValidationTwins<'a> = (&'a mut Twins, f64, &'a [LoadedPlugin]);

/// Mean loss in nats per token over the whole set, and bits per byte.
pub fn evaluate(
    model: &Model,
    val: &ValidationSet,
    batch: usize,
    device: &Device,
) -> Result<(f64, f64)> {
    evaluate_checked(model, val, batch, device, None, None)
}

/// `evaluate`, shared by a data-parallel group (each rank scores every
/// world-th batch and the ranks exchange their sums, so every rank gets the
/// same mean of the whole set in 1/world of the time), twinning a share of
/// the batches (`twins`).
pub fn evaluate_checked(
    model: &Model,
    val: &ValidationSet,
    batch: usize,
    device: &Device,
    group: Option<&dyn Collective>,
    mut twins: Option<ValidationTwins<'_>>,
) -> Result<(f64, f64)> {
    let (rank, world) = group.map_or((0, 1), |g| (g.rank(), g.world()));
    let mut total = 0.0f64;
    let mut count = 0usize;
    for b in val.batches(batch).into_iter().skip(rank).step_by(world) {
        let (x, y) = batch_tensors(&b, device)?;
        let logits = match twins.as_mut() {
            Some((tw, share, plugins)) => {
                if tw.pick(*share) {
                    forward_twinned(model, plugins, &b.inputs, &x, false, tw, None)?
                } else {
                    model.forward(&x, false)?
                }
            }
            None => model.forward(&x, false)?,
        };
        let loss = loss_of(&logits, &y, false)?.to_scalar::<f32>()? as f64;
        let n = b.batch * b.seq;
        total += loss * n as f64;
        count += n;
    }
    if let Some(g) = group {
        // Summed in rank order: every rank gets the same bits.
        let all = g.exchange([total.to_le_bytes(), (count as f64).to_le_bytes()].concat())?;
        (total, count) = (0.0, 0);
        for (r, bytes) in all.iter().enumerate() {
            let [t, c]: [f64; 2] = match bytes.len() {
                16 => std::array::from_fn(|i| {
                    f64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().expect("8 bytes"))
                }),
                n => bail!("rank {r} sent {n} bytes of validation sums, not 16"),
            };
            total += t;
            count += c as usize;
        }
    }
    let nats = total / count as f64;
    if !nats.is_finite() {
        bail!("validation loss is not finite ({nats})");
    }
    Ok((nats, val.bits_per_byte(nats)))
}

/// A saved checkpoint's score on its track's validation set (`speedrun eval`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckpointScore {
    pub val_loss: f64,
    pub val_bpb: f64,
    /// Validation tokens scored.
    pub tokens: usize,
}

/// Loads `checkpoint` into the track's reference model on `device` and
/// validates it on the real token ids (checkpoints are saved un-permuted).
pub fn checkpoint(
    lt: &crate::track::LoadedTrack,
    checkpoint: &std::path::Path,
    data_dir: Option<&std::path::Path>,
    device: &Device,
    hooks: crate::model::ModelHooks,
) -> Result<CheckpointScore> {
    use crate::data::loader::TrackData;
    use crate::data::tokenizer::Tokenizer;
    let t = &lt.track;
    let data = TrackData::open(lt, data_dir)?;
    let val = ValidationSet::new(
        &data.val,
        t.validation.tokens,
        t.model.seq_len,
        &Tokenizer::new(t.data.tokenizer)?,
    )?;
    let model = Model::build(&t.model, hooks, 0, device)?.with_precision(t.train.precision);
    crate::checkpoint::load_into(&model, checkpoint, device)?;
    let (val_loss, val_bpb) = evaluate(&model, &val, t.batch_size(), device)?;
    Ok(CheckpointScore {
        val_loss,
        val_bpb,
        tokens: val.len(),
    })
}
