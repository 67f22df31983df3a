//! The gemm-shaped ops (linear, attention, Newton–Schulz) composed from candle
//! ops, for devices other than the CPU: there every matmul is cuBLAS's, which
//! fusing around it would not beat, and autograd flows through candle's own
//! backward. They run on the CPU too, which is how they are tested against the
//! fused CPU kernels (`tests/against_references.rs`).

use crate::NsCoefficients;
use candle_core::{bail, DType, Result, Tensor};

/// `x @ w + b` for `x` `[..., in]`, `w` `[in, out]`, `b` `[out]`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims();
    let Some(&inner) = dims.last() else {
        bail!("linear: the input is a scalar")
    };
    let (w_in, out) = w.dims2()?;
    if w_in != inner {
        bail!(
            "linear: input {dims:?} does not match the weight {:?}",
            w.dims()
        )
    }
    let y = x
        .reshape((x.elem_count() / inner.max(1), inner))?
        .matmul(w)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("checked above") = out;
    y.reshape(shape)
}

/// Causal attention from a packed `[B, T, 3·D]` projection to `[B, T, D]`.
pub fn causal_attention_packed(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, d3) = qkv.dims3()?;
    let (d, hd) = (d3 / 3, d3 / (3 * heads));
    let head = |i: usize| -> Result<Tensor> {
        qkv.narrow(2, i * d, d)?
            .reshape((b, t, heads, hd))?
            .transpose(1, 2)?
            .contiguous()
    };
    let scale = 1.0 / (hd as f64).sqrt();
    causal_attention(&head(0)?, &head(1)?, &head(2)?, scale)?
        .transpose(1, 2)?
        .reshape((b, t, d))
}

/// softmax(q kᵀ · scale + causal mask) v on `[.., T, hd]` heads. The products run
/// in the inputs' dtype; the softmax in f32 or f64 (the fused kernel), so half
/// precision products get an f32 softmax.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let scores = q.matmul(&k.t()?)?;
    let p = match scores.dtype() {
        DType::F32 | DType::F64 => crate::causal_softmax(&scores, scale)?,
        _ => crate::causal_softmax(&scores.to_dtype(DType::F32)?, scale)?,
    };
    p.to_dtype(v.dtype())?.matmul(v)
}

/// Muon's orthogonalisation: the same iteration as the CPU's, `B = b·A + c·A²`,
/// `X ← a·X + B·X` with `A = X Xᵀ` on the wide orientation, after scaling `X`
/// by `1 / (‖X‖·norm_scale + eps)`, in the matrix's dtype.
pub fn newton_schulz(
    g: &Tensor,
    coefficients: &[NsCoefficients],
    norm_scale: f32,
    eps: f32,
) -> Result<Tensor> {
    let (rows, cols) = g.dims2()?;
    let tall = rows > cols;
    let mut x = if tall {
        g.t()?.contiguous()?
    } else {
        g.contiguous()?
    };
    // The norm in at least f32: a bf16 running sum drifts.
    let wide = match x.dtype() {
        DType::F64 => DType::F64,
        _ => DType::F32,
    };
    let norm = x.to_dtype(wide)?.sqr()?.sum_all()?.sqrt()?;
    let norm = norm
        .affine(norm_scale as f64, eps as f64)?
        .to_dtype(x.dtype())?;
    x = x.broadcast_div(&norm)?;
    for &(ca, cb, cc) in coefficients {
        let a = x.matmul(&x.t()?)?;
        let bm = ((&a * cb as f64)? + (a.matmul(&a)? * cc as f64)?)?;
        x = ((&x * ca as f64)? + bm.matmul(&x)?)?;
    }
    if tall {
        x.t()?.contiguous()
    } else {
        Ok(x)
    }
}
