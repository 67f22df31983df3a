//! A linear layer `x @ w + b` over any leading dimensions as one autograd node.
//!
//! Composed from candle ops it is four nodes (reshape, matmul, bias add,
//! reshape), and candle's backward accumulates every node's input gradient into
//! a fresh zero tensor: three activation-sized zero-fills and adds per layer that
//! this node does not make. The bias rides in gemm's `alpha·dst` term (the output
//! starts as the bias rows), so the forward makes no second pass either.

use crate::bias::ColumnSum;
use crate::gemm_call::{matmul, parallel, View};
use crate::real::{typed_slice, AsSlice, Real};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `[rows, inner] @ [inner, out] (+ bias)`, all row-major and contiguous.
fn fwd<T: Real>(x: &[T], w: &[T], b: Option<&[T]>, inner: usize, out: usize) -> Vec<T> {
    let rows = x.len() / inner;
    assert!(w.len() == inner * out && x.len() == rows * inner);
    let mut y = match b {
        Some(b) => {
            assert_eq!(b.len(), out);
            let mut y = vec![T::ZERO; rows * out];
            y.par_chunks_mut(out).for_each(|r| r.copy_from_slice(b));
            y
        }
        None => vec![T::ZERO; rows * out],
    };
    // SAFETY: the asserts above bound every element gemm reads or writes through
    // these row-major strides; y is a fresh buffer aliasing neither input.
    unsafe {
        matmul(
            (rows, out, inner),
            y.as_mut_ptr(),
            out,
            b.map(|_| T::ONE),
            View::rows(x.as_ptr(), inner),
            View::rows(w.as_ptr(), out),
            T::ONE,
            parallel(),
        )
    };
    y
}

fn out_shape(x: &Layout, w: &Layout) -> Result<(usize, usize, Shape)> {
    let (inner, out) = w.shape().dims2()?;
    let mut dims = x.shape().dims().to_vec();
    match dims.last_mut() {
        Some(last) if *last == inner => *last = out,
        _ => bail!(
            "linear: input {:?} does not end in the weight's {inner} rows",
            x.shape()
        ),
    }
    Ok((inner, out, Shape::from(dims)))
}

/// Runs `fwd` on the f32 or f64 storages of x, w and (maybe) b.
fn cpu_fwd(
    x: (&CpuStorage, &Layout),
    w: (&CpuStorage, &Layout),
    b: Option<(&CpuStorage, &Layout)>,
) -> Result<(CpuStorage, Shape)> {
    fn typed<T: Real>(
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)>
    where
        CpuStorage: AsSlice<T>,
    {
        let (inner, out, shape) = out_shape(x.1, w.1)?;
        let xs = typed_slice::<T>(x.0, x.1, "linear")?;
        let ws = typed_slice::<T>(w.0, w.1, "linear")?;
        let bs = match b {
            Some((s, l)) => Some(typed_slice::<T>(s, l, "linear")?),
            None => None,
        };
        Ok((T::storage(fwd(xs, ws, bs, inner, out)), shape))
    }
    match x.0 {
        CpuStorage::F32(_) => typed::<f32>(x, w, b),
        CpuStorage::F64(_) => typed::<f64>(x, w, b),
        o => bail!(
            "linear: unsupported dtype {:?} (f32 or f64)",
            candle_core::backend::BackendStorage::dtype(o)
        ),
    }
}

/// The input and weight gradients: `g wᵀ` and `xᵀ g` on candle's matmul (gemm
/// reads both transposes through strides), the bias's a fixed-order column sum.
fn grads(x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let (inner, out) = w.dims2()?;
    let rows = x.elem_count() / inner;
    let g = grad.contiguous()?.reshape((rows, out))?;
    let dx = g.matmul(&w.t()?)?.reshape(x.shape())?;
    let dw = x.reshape((rows, inner))?.t()?.matmul(&g)?;
    let db = g.apply_op1_no_bwd(&ColumnSum { m: out })?;
    Ok((dx, dw, db))
}

struct WithBias;
struct NoBias;

impl CustomOp3 for WithBias {
    fn name(&self) -> &'static str {
        "speedrun-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_fwd((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = grads(x, w, grad)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

impl CustomOp2 for NoBias {
    fn name(&self) -> &'static str {
        "speedrun-linear-no-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_fwd((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = grads(x, w, grad)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `x @ w + b` for `x` of shape `[..., in]`, `w` `[in, out]` (GPT-2's Conv1D
/// layout), `b` `[out]`: one autograd node. Non-contiguous inputs are copied first.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return crate::gemm_ops::linear(x, w, b);
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => {
            if b.dims() != [w.dim(1)?] {
                bail!(
                    "linear: bias {:?} does not match the weight {:?}",
                    b.dims(),
                    w.dims()
                )
            }
            x.apply_op3(&w, &b.contiguous()?, WithBias)
        }
        None => x.apply_op2(&w, NoBias),
    }
}
