//! The host's loss: log-softmax over the whole vocabulary, then the mean negative
//! log-likelihood of the targets. Always computed here, from the logits, so no
//! plugin can report a loss of its own.

use candle_core::{Result, Tensor};

/// Mean cross-entropy in nats per token. `logits`: `[N, V]`; `targets`: `[N]` (u32).
/// One fused pass (`speedrun-kernels`): row log-sum-exp in f64, summed in a fixed order.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    speedrun_kernels::cross_entropy(logits, targets)
}
