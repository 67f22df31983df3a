//! The host's loss: log-softmax over the whole vocabulary, then the mean negative
//! log-likelihood of the targets. Always computed here, from the logits, so no
//! plugin can report a loss of its own.

use crate::model::ops::log_softmax_last_dim;
use candle_core::{Result, Tensor};

/// Mean cross-entropy in nats per token. `logits`: `[N, V]`; `targets`: `[N]` (u32).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = log_softmax_last_dim(logits)?;
    let picked = logp.gather(&targets.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}
