//! Adding a vector to every row (a linear layer's bias, a position embedding
//! added to every sequence), with a backward whose vector gradient is a
//! cache-friendly column sum. candle's own broadcast backward reduces over the
//! broadcast dimension with a strided walk that cost more than the matmuls it
//! sits beside.

use crate::real::{with_float, with_float2, Real};
use crate::ROW_CHUNK;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

struct Forward;
/// Sums `[N, M]` over its rows into `[M]`, in fixed chunks of rows.
pub(crate) struct ColumnSum {
    pub(crate) m: usize,
}

fn fwd<T: Real>(x: &[T], b: &[T]) -> Vec<T> {
    let m = b.len();
    let mut out = vec![T::ZERO; x.len()];
    out.par_chunks_mut(ROW_CHUNK * m)
        .zip(x.par_chunks(ROW_CHUNK * m))
        .for_each(|(o, x)| {
            for (o, x) in o.chunks_mut(m).zip(x.chunks(m)) {
                for ((o, &x), &b) in o.iter_mut().zip(x).zip(b) {
                    *o = x + b;
                }
            }
        });
    out
}

fn column_sum<T: Real>(g: &[T], m: usize) -> Vec<T> {
    let partials: Vec<Vec<T>> = g
        .par_chunks(ROW_CHUNK * m)
        .map(|g| {
            let mut acc = vec![T::ZERO; m];
            for row in g.chunks(m) {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            acc
        })
        .collect();
    let mut out = vec![T::ZERO; m];
    for p in &partials {
        for (o, &v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "speedrun-add-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        with_float2!(self.name(), (s1, l1), (s2, l2), |x, b| Ok((
            Real::storage(fwd(x, b)),
            l1.shape().clone()
        )))
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let db = g
            .apply_op1_no_bwd(&ColumnSum { m: b.elem_count() })?
            .reshape(b.shape())?;
        Ok((Some(g.reshape(x.shape())?), Some(db)))
    }
}

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "speedrun-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        with_float!(self.name(), s, l, |g| Ok((
            Real::storage(column_sum(g, self.m)),
            Shape::from(self.m)
        )))
    }
}

/// `x + b` with `b` repeated over `x`'s leading dimensions: `b`'s shape must be a
/// suffix of `x`'s (a bias `[D]` on `[.., D]`, positions `[T, D]` on `[B, T, D]`).
pub fn add_rows(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (xd, bd) = (x.dims(), b.dims());
    if bd.len() > xd.len() || xd[xd.len() - bd.len()..] != *bd {
        candle_core::bail!("add_rows: {bd:?} is not a suffix of {xd:?}");
    }
    x.contiguous()?.apply_op2(&b.contiguous()?, Forward)
}
