//! Differentiable building blocks composed from candle primitives.
//!
//! candle-nn's fused `softmax_last_dim`, `layer_norm`, `rms_norm` and `sdpa`
//! record no backward (the gradient silently stops), so the model uses these
//! composed forms, whose gradients are checked against finite differences.

use candle_core::{DType, Device, Result, Tensor, D};

/// `x @ w + b` for `x` of shape `[..., in]`, `w` of shape `[in, out]` (GPT-2's Conv1D layout).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inner = *dims.last().expect("linear input has at least one dim");
    let rows = x.elem_count() / inner;
    let y = x.reshape((rows, inner))?.matmul(w)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = dims;
    *out.last_mut().unwrap() = w.dim(1)?;
    y.reshape(out)
}

/// LayerNorm over the last dimension, with gain and bias.
pub fn layer_norm(x: &Tensor, gain: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(gain)?.broadcast_add(bias)
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

/// Additive causal mask `[t, t]`: 0 on and below the diagonal, -inf above.
pub fn causal_mask(t: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(mask, (t, t), device)?.to_dtype(dtype)
}

/// Causal self-attention on `q, k, v` of shape `[B, H, T, hd]`.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let hd = q.dim(D::Minus1)?;
    let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
    let probs = softmax_last_dim(&scores.broadcast_add(mask)?)?;
    probs.matmul(v)
}

/// GELU, tanh approximation (GPT-2's).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.gelu()
}
