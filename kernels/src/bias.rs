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

/// The column sums of `[N, M]`: each chunk of `ROW_CHUNK` rows summed in row
/// order, then the chunks' sums in chunk order. A pass that makes the rows
/// (`activation::grad_and_column_sum`) sums them in this order too, so its
/// sums are these bits.
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
    sum_partials(partials.iter().map(Vec::as_slice), m)
}

/// The chunks' column sums added in chunk order (`column_sum`'s last step).
pub(crate) fn sum_partials<'a, T: Real>(
    partials: impl IntoIterator<Item = &'a [T]>,
    m: usize,
) -> Vec<T> {
    let mut out = vec![T::ZERO; m];
    for p in partials {
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

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::cuda_backend::CudaStorage,
        l1: &Layout,
        s2: &candle_core::cuda_backend::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::cuda_backend::CudaStorage, Shape)> {
        cuda::add_rows((s1, l1), (s2, l2))
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

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::cuda_backend::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::cuda_backend::CudaStorage, Shape)> {
        cuda::column_sum(s, l, self.m)
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

#[cfg(feature = "cuda")]
pub(crate) mod cuda {
    use crate::cuda::{column_chunks, elementwise, input, output, wrap, COL_CHUNK};
    use candle_core::cuda_backend::{CudaDevice, CudaStorage};
    use candle_core::{Layout, Result, Shape};

    pub(super) fn add_rows(
        (s1, l1): (&CudaStorage, &Layout),
        (s2, l2): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &s1.device;
        let (x, b) = (input(s1, l1, "add_rows")?, input(s2, l2, "add_rows")?);
        let (n, m) = (l1.shape().elem_count(), l2.shape().elem_count());
        let mut y = output::<f32>(dev, n)?;
        let (len, cols) = (n as i64, m as i32);
        crate::launch!(dev, "add_rows", elementwise(n), &x, &b, &mut y, &len, &cols);
        Ok((wrap(y, dev), l1.shape().clone()))
    }

    pub(super) fn column_sum(
        s: &CudaStorage,
        l: &Layout,
        m: usize,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &s.device;
        let g = input(s, l, "column_sum")?;
        let mut out = output::<f32>(dev, m)?;
        column_sums(dev, &g, l.shape().elem_count() / m, m, &mut out, 0)?;
        Ok((wrap(out, dev), Shape::from(m)))
    }

    /// Sums the `rows` rows of `g` `[rows, m]` into `out[offset..offset + m]`, in a
    /// fixed order (chunks of rows, then the chunks).
    pub(crate) fn column_sums(
        dev: &CudaDevice,
        g: &candle_core::cuda_backend::cudarc::driver::CudaView<f32>,
        rows: usize,
        m: usize,
        out: &mut candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>,
        offset: usize,
    ) -> Result<()> {
        let chunks = rows.div_ceil(COL_CHUNK).max(1);
        let mut partial = output::<f64>(dev, chunks * m)?;
        let (r, c, ch, k) = (rows as i32, m as i32, COL_CHUNK as i32, chunks as i32);
        crate::launch!(
            dev,
            "col_partials",
            column_chunks(m, chunks),
            g,
            &mut partial,
            &r,
            &c,
            &ch
        );
        let off = offset as i64;
        crate::launch!(
            dev,
            "col_reduce",
            column_chunks(m, 1),
            &partial,
            out,
            &off,
            &k,
            &c
        );
        Ok(())
    }
}
