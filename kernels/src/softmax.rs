//! The causal masked softmax of attention: `softmax(scale * s + mask)` over the
//! last dimension of `[.., T, T]` scores, in one pass, with a fused backward.
//! Masked entries are exactly zero and never exponentiated.

use crate::real::{with_float, with_float2, Real};
use crate::ROW_CHUNK;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

struct Forward {
    scale: f64,
    t: usize,
}
struct Backward {
    scale: f64,
    t: usize,
}

fn fwd<T: Real>(x: &[T], t: usize, scale: f64) -> Vec<T> {
    let mut out = vec![T::ZERO; x.len()];
    let s = T::of(scale);
    out.par_chunks_mut(ROW_CHUNK * t)
        .zip(x.par_chunks(ROW_CHUNK * t))
        .enumerate()
        .for_each(|(c, (o, x))| {
            for (r, (o, x)) in o.chunks_mut(t).zip(x.chunks(t)).enumerate() {
                let pos = (c * ROW_CHUNK + r) % t;
                let valid = &x[..=pos];
                let mut m = valid[0] * s;
                for &v in valid {
                    if v * s > m {
                        m = v * s;
                    }
                }
                let mut sum = T::ZERO;
                for (o, &v) in o.iter_mut().zip(valid) {
                    *o = (v * s - m).exp();
                    sum += *o;
                }
                let inv = T::ONE / sum;
                for o in o[..=pos].iter_mut() {
                    *o = *o * inv;
                }
            }
        });
    out
}

fn bwd<T: Real>(y: &[T], g: &[T], t: usize, scale: f64) -> Vec<T> {
    let mut out = vec![T::ZERO; y.len()];
    let s = T::of(scale);
    out.par_chunks_mut(ROW_CHUNK * t)
        .zip(y.par_chunks(ROW_CHUNK * t).zip(g.par_chunks(ROW_CHUNK * t)))
        .enumerate()
        .for_each(|(c, (o, (y, g)))| {
            for (r, ((o, y), g)) in o
                .chunks_mut(t)
                .zip(y.chunks(t))
                .zip(g.chunks(t))
                .enumerate()
            {
                let pos = (c * ROW_CHUNK + r) % t;
                let mut dot = T::ZERO;
                for j in 0..=pos {
                    dot += y[j] * g[j];
                }
                for j in 0..=pos {
                    o[j] = s * y[j] * (g[j] - dot);
                }
            }
        });
    out
}

impl CustomOp1 for Forward {
    fn name(&self) -> &'static str {
        "speedrun-causal-softmax"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        with_float!(self.name(), st, l, |x| Ok((
            Real::storage(fwd(x, self.t, self.scale)),
            l.shape().clone()
        )))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let b = Backward {
            scale: self.scale,
            t: self.t,
        };
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &b)?))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::cuda_backend::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::cuda_backend::CudaStorage, Shape)> {
        cuda::fwd(s, l, self.t, self.scale)
    }
}

impl CustomOp2 for Backward {
    fn name(&self) -> &'static str {
        "speedrun-causal-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        with_float2!(self.name(), (s1, l1), (s2, l2), |y, g| Ok((
            Real::storage(bwd(y, g, self.t, self.scale)),
            l1.shape().clone()
        )))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::cuda_backend::CudaStorage,
        l1: &Layout,
        s2: &candle_core::cuda_backend::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::cuda_backend::CudaStorage, Shape)> {
        cuda::bwd((s1, l1), (s2, l2), self.t, self.scale)
    }
}

/// `softmax(scale * scores + causal mask)` over the last dim of `[.., T, T]` scores.
pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    let dims = scores.dims();
    let n = dims.len();
    if n < 2 || dims[n - 1] != dims[n - 2] {
        candle_core::bail!("causal_softmax: scores must be [.., T, T], got {:?}", dims);
    }
    let t = dims[n - 1];
    scores.contiguous()?.apply_op1(Forward { scale, t })
}

/// The scores' gradient of [`causal_softmax`] from its output `p` and the
/// output's gradient `grad`, as its node's backward computes it.
pub fn causal_softmax_grad(p: &Tensor, grad: &Tensor, scale: f64) -> Result<Tensor> {
    let t = p.dim(candle_core::D::Minus1)?;
    let p = p.contiguous()?;
    Forward { scale, t }.bwd(&p, &p, grad).map(Option::unwrap)
}

#[cfg(feature = "cuda")]
mod cuda {
    use crate::cuda::{input, output, per_row, wrap};
    use candle_core::cuda_backend::CudaStorage;
    use candle_core::{Layout, Result, Shape};

    pub(super) fn fwd(
        s: &CudaStorage,
        l: &Layout,
        t: usize,
        scale: f64,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &s.device;
        let x = input(s, l, "causal_softmax")?;
        let n = l.shape().elem_count();
        let mut y = output::<f32>(dev, n)?;
        let (tt, sc) = (t as i32, scale as f32);
        crate::launch!(
            dev,
            "causal_softmax_fwd",
            per_row(n / t),
            &x,
            &mut y,
            &tt,
            &sc
        );
        Ok((wrap(y, dev), l.shape().clone()))
    }

    pub(super) fn bwd(
        (s1, l1): (&CudaStorage, &Layout),
        (s2, l2): (&CudaStorage, &Layout),
        t: usize,
        scale: f64,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &s1.device;
        let op = "causal_softmax backward";
        let (y, g) = (input(s1, l1, op)?, input(s2, l2, op)?);
        let n = l1.shape().elem_count();
        let mut dx = output::<f32>(dev, n)?;
        let (tt, sc) = (t as i32, scale as f32);
        crate::launch!(
            dev,
            "causal_softmax_bwd",
            per_row(n / t),
            &y,
            &g,
            &mut dx,
            &tt,
            &sc
        );
        Ok((wrap(dx, dev), l1.shape().clone()))
    }
}
