//! The model's differentiable building blocks.
//!
//! The hot ones (LayerNorm, the causal softmax, GELU) are `speedrun-kernels`'
//! fused ops, which carry their own backward. candle-nn's fused `softmax_last_dim`,
//! `layer_norm`, `rms_norm` and `sdpa` record no backward (the gradient silently
//! stops) and are never used. Every gradient here is checked against finite
//! differences in the tests.

use candle_core::{Result, Tensor, D};

/// `x @ w + b` for `x` of shape `[..., in]`, `w` of shape `[in, out]` (GPT-2's
/// Conv1D layout): one autograd node (fused kernel), not four.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    speedrun_kernels::linear(x, w, b)
}

/// LayerNorm over the last dimension, with gain and bias (fused kernel).
pub fn layer_norm(x: &Tensor, gain: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    speedrun_kernels::layer_norm(x, Some(gain), Some(bias), eps)
}

/// Softmax over the last dimension. The max is detached: softmax is shift
/// invariant, so this changes no gradient and saves the max's backward.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}

/// Log-softmax over the last dimension.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Causal self-attention on `q, k, v` of shape `[B, H, T, hd]`: the scaled scores
/// go through the fused causal softmax, which never exponentiates a masked entry.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let hd = q.dim(D::Minus1)?;
    speedrun_kernels::gemm_ops::causal_attention(q, k, v, 1.0 / (hd as f64).sqrt())
}

/// GELU, tanh approximation (GPT-2's), fused kernel.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    speedrun_kernels::gelu(x)
}
