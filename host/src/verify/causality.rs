//! The causality probe: take one sequence, change every token after a cut t,
//! and check that the logits at positions ≤ t did not move. A model that looks
//! ahead (non-causal attention, a shifted embedding, a pooled context) moves
//! them; the reference moves none of them by a single bit on CPU, since both
//! passes run the same shapes through the same kernels.
//!
//! Tolerance: |Δ logit| ≤ 1e-4 · max(1, max |logit|), relative to the logits'
//! scale so that a GPU's reordered reductions still pass and a leak of any use
//! to the loss does not.

use super::{Check, Violation};
use crate::model::Model;
use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

pub const RELATIVE_TOLERANCE: f64 = 1e-4;

/// What one probe measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Positions 0..=cut must not move.
    pub cut: usize,
    /// The largest change at those positions.
    pub moved: f64,
    pub tolerance: f64,
    pub train: bool,
}

impl Probe {
    pub fn describe(&self) -> String {
        format!(
            "cut at position {}, {} mode: logits at positions <= {} moved by at most {:.3e} (tolerance {:.3e})",
            self.cut,
            if self.train { "train" } else { "eval" },
            self.cut,
            self.moved,
            self.tolerance
        )
    }
}

/// True when every logit is finite (a NaN or an infinity makes the sum non-finite).
pub fn all_finite(logits: &Tensor) -> Result<bool> {
    let s = logits
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    Ok(s.is_finite())
}

/// Probes `model` on `tokens` (one sequence of the model's length) with a cut
/// drawn from `rng`. `Err(Violation)` for moved logits (causality) or non-finite
/// ones (full distribution); other errors are the forward pass's own.
pub fn probe(
    model: &Model,
    tokens: &[u32],
    train: bool,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Result<Probe> {
    let t = tokens.len();
    let vocab = model.spec.vocab as u32;
    // The cut leaves at least one position to change.
    let cut = rng.random_range(0..t.saturating_sub(1).max(1));
    let mut changed = tokens.to_vec();
    for tok in changed.iter_mut().skip(cut + 1) {
        *tok = (*tok + 1 + rng.random_range(0..vocab.max(2) - 1)) % vocab;
    }
    let logits = |seq: &[u32]| -> Result<Tensor> {
        let x = Tensor::from_slice(seq, (1, t), device)?;
        let l = model.forward(&x, train)?.detach();
        if !all_finite(&l)? {
            return Err(Violation::new(
                Check::FullDistribution,
                format!(
                    "the causality probe's logits ({} mode) are not all finite",
                    if train { "train" } else { "eval" }
                ),
            )
            .into());
        }
        Ok(l)
    };
    let a = logits(tokens)?;
    let b = logits(&changed)?;
    let scale = a
        .abs()?
        .max_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    let prefix = |l: &Tensor| l.narrow(1, 0, cut + 1);
    let moved = (prefix(&a)? - prefix(&b)?)?
        .abs()?
        .max_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    let p = Probe {
        cut,
        moved,
        tolerance: RELATIVE_TOLERANCE * scale.max(1.0),
        train,
    };
    if p.moved > p.tolerance {
        return Err(Violation::new(
            Check::Causality,
            format!(
                "changing the tokens after position {} moved the logits at positions <= {} by {:.3e} (tolerance {:.3e}, {} mode): the model looks ahead",
                p.cut,
                p.cut,
                p.moved,
                p.tolerance,
                if train { "train" } else { "eval" }
            ),
        )
        .into());
    }
    Ok(p)
}
