//! Muon's Newton–Schulz orthogonalisation on the fast matmul path: three gemm
//! calls per iteration into buffers allocated once, with the scalings folded into
//! gemm's `alpha`/`beta` (no transposed copies, no temporaries per iteration).
//!
//! ```text
//! X ← G / (‖G‖_F · s + ε)            (Gᵀ when G has more rows than columns)
//! per (a, b, c):  A = X Xᵀ;  B = b A + c A A;  X ← a X + B X
//! ```
//!
//! The result carries no gradient: it is an optimizer's update, not a model
//! op. gemm reduces every output element in a fixed order, so the result does not
//! depend on the thread count.

use crate::gemm_call::{matmul, parallel, View};
use candle_core::{bail, DType, Device, Result, Tensor};

/// One iteration's coefficients `(a, b, c)`.
pub type NsCoefficients = (f32, f32, f32);

/// `dst = alpha·dst + beta·lhs·rhs`, row-major; `rhs_t` reads `rhs` (an
/// `[n, k]` matrix) as its transpose through strides.
#[allow(clippy::too_many_arguments)]
fn matmul_into(
    dst: &mut [f32],
    alpha: Option<f32>,
    lhs: &[f32],
    rhs: &[f32],
    rhs_t: bool,
    beta: f32,
    (m, n, k): (usize, usize, usize),
) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n);
    let rhs_view = if rhs_t {
        View::rows(rhs.as_ptr(), k).t()
    } else {
        View::rows(rhs.as_ptr(), n)
    };
    // SAFETY: the assert bounds every access for these sizes and strides; dst is
    // a distinct slice from lhs and rhs.
    unsafe {
        matmul(
            (m, n, k),
            dst.as_mut_ptr(),
            n,
            alpha,
            View::rows(lhs.as_ptr(), k),
            rhs_view,
            beta,
            parallel(),
        )
    }
}

fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; src.len()];
    for (i, row) in src.chunks_exact(cols).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            out[j * rows + i] = v;
        }
    }
    out
}

/// The approximately orthogonal factor of the 2-D f32 matrix `g` (any layout),
/// by one Newton–Schulz iteration per coefficient triple. `norm_scale` and `eps`
/// set the first normalisation: `G / (‖G‖_F · norm_scale + eps)`.
pub fn newton_schulz(
    g: &Tensor,
    coefficients: &[NsCoefficients],
    norm_scale: f32,
    eps: f32,
) -> Result<Tensor> {
    let (rows, cols) = g.dims2()?;
    if g.dtype() != DType::F32 {
        bail!("newton_schulz: the matrix must be f32, not {:?}", g.dtype())
    }
    if !matches!(g.device(), Device::Cpu) {
        return crate::gemm_ops::newton_schulz(g, coefficients, norm_scale, eps);
    }
    let data: Vec<f32> = g.flatten_all()?.to_vec1()?;
    // Work on the wide orientation: A = X Xᵀ is then the smaller square.
    let tall = rows > cols;
    let (m, n) = if tall { (cols, rows) } else { (rows, cols) };
    let mut x = if tall {
        transpose(&data, rows, cols)
    } else {
        data
    };
    // The norm in f64: a fixed order, and no f32 overflow for large updates.
    let norm = x
        .iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        .sqrt();
    let inv = (1.0 / (norm * norm_scale as f64 + eps as f64)) as f32;
    x.iter_mut().for_each(|v| *v *= inv);

    let mut a = vec![0.0f32; m * m];
    let mut b = vec![0.0f32; m * m];
    let mut y = vec![0.0f32; m * n];
    for &(ca, cb, cc) in coefficients {
        matmul_into(&mut a, None, &x, &x, true, 1.0, (m, m, n));
        b.copy_from_slice(&a);
        matmul_into(&mut b, Some(cb), &a, &a, false, cc, (m, m, m));
        y.copy_from_slice(&x);
        matmul_into(&mut y, Some(ca), &b, &x, false, 1.0, (m, n, m));
        std::mem::swap(&mut x, &mut y);
    }
    let out = if tall { transpose(&x, m, n) } else { x };
    Tensor::from_vec(out, (rows, cols), g.device())
}
