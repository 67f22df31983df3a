//! Causality, checked on what is scored. A *twin* of a real batch (same batch
//! size, same mode) changes every row's tokens after a cut of its own, drawn
//! at random; both forwards run, in random order, and the logits at each row's
//! positions ≤ its cut must not move. The loop twins step 0's training batch
//! and a host-secret share of later steps, a share of every intermediate
//! validation's batches and every batch of the final validation; the draws come
//! from OS entropy, so no plugin (nor its author, rerunning a seed) can know
//! which forward is checked. Forward hooks are pure (their instance is reset
//! before every call), so a twin cannot be recognised by call order either.
//!
//! Tolerance: |Δ logit| ≤ 1e-4 · max(1, max |logit|), relative to the logits'
//! scale so that a GPU's reordered reductions still pass and a leak of any use
//! to the loss does not. On CPU the reference moves no logit at all.

use super::{Check, Violation};
use anyhow::Result;
use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const RELATIVE_TOLERANCE: f64 = 1e-4;

/// Share of training steps after step 0 that are twinned.
pub const TRAIN_SHARE: f64 = 1.0 / 16.0;
/// Share of an intermediate validation's batches that are twinned.
pub const VALIDATION_SHARE: f64 = 1.0 / 8.0;

/// What one twin check measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Rows compared (the batch size).
    pub rows: usize,
    /// The largest change at any row's positions ≤ its cut.
    pub moved: f64,
    pub tolerance: f64,
    pub train: bool,
}

/// The secret draws of one run's twin checks, and what they found.
pub struct Twins {
    rng: ChaCha8Rng,
    /// Ids a changed token is drawn from (the real vocabulary).
    vocab: u32,
    pub probes: Vec<Probe>,
    /// Wall time of the twin forwards (untimed), seconds.
    pub seconds: f64,
}

impl Twins {
    /// Draws from OS entropy: not reproducible, on purpose (the curve does not
    /// depend on them; which forwards are checked must not be knowable).
    pub fn secret(vocab: usize) -> Twins {
        Twins::from_rng(ChaCha8Rng::from_os_rng(), vocab)
    }

    pub fn from_rng(rng: ChaCha8Rng, vocab: usize) -> Twins {
        Twins {
            rng,
            vocab: vocab.max(2) as u32,
            probes: Vec::new(),
            seconds: 0.0,
        }
    }

    /// Whether to twin a forward checked with probability `share`.
    pub fn pick(&mut self, share: f64) -> bool {
        share >= 1.0 || self.rng.random_bool(share.clamp(0.0, 1.0))
    }

    /// Which forward runs first: the twin (`true`) or the real one.
    pub fn twin_first(&mut self) -> bool {
        self.rng.random_bool(0.5)
    }

    /// The twin of `inputs` (`rows` rows of `t` tokens): each row keeps its
    /// tokens up to a cut of its own and has every later token changed.
    pub fn twin_of(&mut self, inputs: &[u32], rows: usize, t: usize) -> (Vec<u32>, Vec<usize>) {
        let mut out = inputs.to_vec();
        let mut cuts = Vec::with_capacity(rows);
        for r in 0..rows {
            // The cut leaves at least one position to change.
            let cut = self.rng.random_range(0..t.saturating_sub(1).max(1));
            for tok in &mut out[r * t + cut + 1..(r + 1) * t] {
                *tok = (*tok + 1 + self.rng.random_range(0..self.vocab - 1)) % self.vocab;
            }
            cuts.push(cut);
        }
        (out, cuts)
    }

    /// Compares the real and twin logits `[B, T, V]` before each row's cut;
    /// `Err(Violation)` naming the row when they moved.
    pub fn compare(
        &mut self,
        real: &Tensor,
        twin: &Tensor,
        cuts: &[usize],
        train: bool,
    ) -> Result<()> {
        // Non-finite real logits are for finite_training (train) and
        // full_distribution (eval) to name; the run fails either way.
        if !all_finite(real)? {
            return Ok(());
        }
        let scale = max_abs(real)?;
        let tolerance = RELATIVE_TOLERANCE * scale.max(1.0);
        let mut worst = (0.0f64, 0usize);
        for (row, &cut) in cuts.iter().enumerate() {
            let prefix = |l: &Tensor| l.narrow(0, row, 1)?.narrow(1, 0, cut + 1);
            let moved = max_abs(&(prefix(real)? - prefix(twin)?)?)?;
            // A NaN difference counts as moved by infinity.
            let moved = if moved.is_nan() { f64::INFINITY } else { moved };
            if moved > worst.0 {
                worst = (moved, row);
            }
        }
        self.probes.push(Probe {
            rows: cuts.len(),
            moved: worst.0,
            tolerance,
            train,
        });
        if worst.0 > tolerance {
            let (moved, row) = worst;
            return Err(Violation::new(
                Check::Causality,
                format!(
                    "changing row {row}'s tokens after position {} moved its logits at positions <= {} by {moved:.3e} (tolerance {tolerance:.3e}, {} mode, a real batch of {} rows): the model looks ahead",
                    cuts[row],
                    cuts[row],
                    if train { "train" } else { "eval" },
                    cuts.len()
                ),
            )
            .into());
        }
        Ok(())
    }

    /// The verdict's line: what was checked and the worst movement.
    pub fn describe(&self) -> String {
        let count = |train: bool| self.probes.iter().filter(|p| p.train == train).count();
        let worst = self.probes.iter().map(|p| p.moved).fold(0.0f64, f64::max);
        format!(
            "{} twin forwards of real batches ({} training, {} validation; secret draws, random order): logits before each row's cut moved by at most {worst:.3e}; tolerance {RELATIVE_TOLERANCE:.0e} x max(1, max |logit|); {:.2} s untimed",
            self.probes.len(),
            count(true),
            count(false),
            self.seconds
        )
    }
}

fn max_abs(t: &Tensor) -> Result<f64> {
    Ok(t.abs()?
        .max_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?)
}

/// True when every logit is finite (a NaN or an infinity makes the sum non-finite).
pub fn all_finite(logits: &Tensor) -> Result<bool> {
    let s = logits
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    Ok(s.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn twins_keep_each_rows_prefix_and_change_every_later_token() {
        let mut tw = Twins::from_rng(ChaCha8Rng::seed_from_u64(1), 50);
        let inputs: Vec<u32> = (0..4 * 10).map(|i| (i % 50) as u32).collect();
        let (twin, cuts) = tw.twin_of(&inputs, 4, 10);
        assert_eq!(cuts.len(), 4);
        for (r, &c) in cuts.iter().enumerate() {
            assert!(c < 9);
            for i in 0..10 {
                let (a, b) = (inputs[r * 10 + i], twin[r * 10 + i]);
                assert_eq!(a == b, i <= c, "row {r} pos {i} cut {c}");
                assert!(b < 50);
            }
        }
        // Rows get cuts of their own.
        let (_, more) = tw.twin_of(&vec![0; 64 * 10], 64, 10);
        assert!(more.iter().any(|&c| c != more[0]));
    }

    #[test]
    fn a_move_before_a_rows_cut_fails_and_after_it_passes() {
        let mut tw = Twins::from_rng(ChaCha8Rng::seed_from_u64(2), 8);
        let real = Tensor::zeros((2, 5, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let mut v = vec![0f32; 30];
        v[15 + 3 * 3] = 1.0; // row 1, position 3
        let twin = Tensor::from_vec(v, (2, 5, 3), &Device::Cpu).unwrap();
        tw.compare(&real, &twin, &[4, 2], true).unwrap();
        let e = tw.compare(&real, &twin, &[4, 3], false).unwrap_err();
        let v = crate::verify::violation_of(&e).unwrap();
        assert_eq!(v.check, Check::Causality);
        assert!(
            v.detail.contains("row 1's tokens after position 3"),
            "{}",
            v.detail
        );
        assert_eq!(tw.probes.len(), 2);
    }
}
