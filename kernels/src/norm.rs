//! LayerNorm and RMSNorm over the last dimension, with and without gain/bias,
//! one pass forward and one pass backward. Row statistics are accumulated in f64;
//! gain/bias gradients are summed per fixed chunk of rows, then over chunks in
//! order, so the result does not depend on the thread count.

use crate::real::{filled, typed_slice, with_cpu, with_float, Real};
use crate::wide::{sum_by, sum_by2, wide_fn};
use crate::ROW_CHUNK;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use std::mem::MaybeUninit;

#[derive(Clone, Copy)]
enum Kind {
    Layer,
    Rms,
}

/// Per-row statistics: (mean, 1/std) for LayerNorm, (0, 1/rms) for RMSNorm,
/// summed in f64 in fixed lanes (`wide::sum_by`).
#[inline(always)]
fn stats<T: Real>(x: &[T], kind: Kind, eps: f64) -> (T, T) {
    let d = x.len() as f64;
    match kind {
        Kind::Layer => {
            let mean = sum_by(x, |v| v.f64()) / d;
            let var = sum_by(x, |v| (v.f64() - mean) * (v.f64() - mean)) / d;
            (T::of(mean), T::of(1.0 / (var + eps).sqrt()))
        }
        Kind::Rms => {
            let ms = sum_by(x, |v| v.f64() * v.f64()) / d;
            (T::ZERO, T::of(1.0 / (ms + eps).sqrt()))
        }
    }
}

struct Forward {
    kind: Kind,
    eps: f64,
}
struct Backward {
    kind: Kind,
    eps: f64,
    /// A gradient added into dx as it is written: the residual stream's other
    /// source, summed without a pass of its own.
    add: Option<Tensor>,
    /// dx's column sums packed after db (CPU only).
    sum_dx: bool,
}

fn fwd<T: Real>(x: &[T], w: &[T], b: &[T], kind: Kind, eps: f64) -> Vec<T> {
    let d = w.len();
    // SAFETY: the chunks cover the buffer, and `norm_rows` writes every element
    // of every row it is given.
    unsafe {
        filled(x.len(), |out| {
            out.par_chunks_mut(ROW_CHUNK * d)
                .zip(x.par_chunks(ROW_CHUNK * d))
                .for_each(|(o, x)| norm_rows(o, x, w, b, kind, eps))
        })
    }
}

wide_fn! {
    fn norm_rows<T: Real>(o: &mut [MaybeUninit<T>], x: &[T], w: &[T], b: &[T], kind: Kind, eps: f64) {
        let d = w.len();
        for (o, x) in o.chunks_mut(d).zip(x.chunks(d)) {
            let (mean, rstd) = stats(x, kind, eps);
            for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(w).zip(b) {
                o.write((x - mean) * rstd * w + b);
            }
        }
    }
}

/// Packed `[dx (rows*d) | dw (d) | db (d)]`, with `add` (if any) added into
/// dx, and with `sum_dx` dx's column sums after them (the bias gradient of the
/// linear whose output's gradient dx is), summed in `bias::column_sum`'s
/// chunks and order (`bias::sum_partials`'s, below): the same bits, without
/// reading dx back.
#[allow(clippy::too_many_arguments)]
fn bwd<T: Real>(
    x: &[T],
    w: &[T],
    g: &[T],
    add: Option<&[T]>,
    kind: Kind,
    eps: f64,
    sum_dx: bool,
) -> Vec<T> {
    let d = w.len();
    let n = x.len();
    let sums = if sum_dx { 3 } else { 2 };
    // SAFETY: `grad_rows` writes every element of dx (the chunks cover it); dw,
    // db (and dx's sums) are written below, each element once, before any read.
    unsafe {
        filled(n + sums * d, |out| {
            let (dx, rest) = out.split_at_mut(n);
            let chunk = ROW_CHUNK * d;
            let partials: Vec<[Vec<T>; 3]> = dx
                .par_chunks_mut(chunk)
                .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
                .enumerate()
                .map(|(i, (dx, (x, g)))| {
                    let (mut dw, mut db) = (vec![T::ZERO; d], vec![T::ZERO; d]);
                    let mut ds = vec![T::ZERO; if sum_dx { d } else { 0 }];
                    let mut scratch = vec![T::ZERO; 2 * d];
                    let add = add.map(|a| &a[i * chunk..][..dx.len()]);
                    let sink = (&mut dw[..], &mut db[..], &mut ds[..]);
                    grad_rows(dx, x, g, w, add, kind, eps, sink, &mut scratch);
                    [dw, db, ds]
                })
                .collect();
            // Chunk partials added in order: the same bits whatever the thread count.
            for (k, dst) in rest.chunks_mut(d).enumerate() {
                let sum = crate::bias::sum_partials(partials.iter().map(|p| &p[k][..]), d);
                for (o, v) in dst.iter_mut().zip(sum) {
                    o.write(v);
                }
            }
        })
    }
}

wide_fn! {
    /// The rows' dx (plus `add`'s rows), and their gain and bias gradients
    /// added into `dw`, `db` of `sink`, and the rows of dx into its third
    /// (when it is not empty) (`scratch`: 2·d for x̂ and dx̂).
    #[allow(clippy::too_many_arguments)]
    fn grad_rows<T: Real>(
        dx: &mut [MaybeUninit<T>],
        x: &[T],
        g: &[T],
        w: &[T],
        add: Option<&[T]>,
        kind: Kind,
        eps: f64,
        sink: (&mut [T], &mut [T], &mut [T]),
        scratch: &mut [T],
    ) {
        let (dw, db, ds) = sink;
        let d = w.len();
        let (xhat, dxhat) = scratch.split_at_mut(d);
        // Every per-element loop zips its slices: indexed by j, the bounds
        // checks kept the dx and ds loops scalar (the same operations either
        // way, so the same bits).
        for (r, ((dx, x), g)) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)).enumerate() {
            let (mean, rstd) = stats(x, kind, eps);
            let rows = xhat.iter_mut().zip(dxhat.iter_mut()).zip(dw.iter_mut().zip(db.iter_mut()));
            for (((xh, dxh), (dw, db)), ((&x, &g), &w)) in rows.zip(x.iter().zip(g).zip(w)) {
                *xh = (x - mean) * rstd;
                *dxh = g * w;
                *dw += g * *xh;
                *db += g;
            }
            let mean_dxhat = match kind {
                Kind::Layer => T::of(sum_by(dxhat, |v| v.f64()) / d as f64),
                Kind::Rms => T::ZERO,
            };
            let mean_dxhat_xhat = T::of(sum_by2(dxhat, xhat, |a, b| (a * b).f64()) / d as f64);
            let dx = &mut dx[..d];
            let v = |dxh: T, xh: T| rstd * (dxh - mean_dxhat - xh * mean_dxhat_xhat);
            match add {
                Some(a) => {
                    let a = &a[r * d..][..d];
                    for ((o, (&dxh, &xh)), &a) in dx.iter_mut().zip(dxhat.iter().zip(&*xhat)).zip(a) {
                        o.write(v(dxh, xh) + a);
                    }
                }
                None => {
                    for (o, (&dxh, &xh)) in dx.iter_mut().zip(dxhat.iter().zip(&*xhat)) {
                        o.write(v(dxh, xh));
                    }
                }
            }
            if !ds.is_empty() {
                for (s, o) in ds[..d].iter_mut().zip(&*dx) {
                    // SAFETY: written just above.
                    *s += unsafe { o.assume_init() };
                }
            }
        }
    }
}

impl CustomOp3 for Forward {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Layer => "speedrun-layer-norm",
            Kind::Rms => "speedrun-rms-norm",
        }
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
        let name = self.name();
        with_float!(name, s1, l1, |x| {
            let w = typed_slice(s2, l2, name)?;
            let b = typed_slice(s3, l3, name)?;
            Ok((
                Real::storage(fwd(x, w, b, self.kind, self.eps)),
                l1.shape().clone(),
            ))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db, _) = grads(self.kind, self.eps, x, w, grad, None, false)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::cuda_backend::CudaStorage,
        l1: &Layout,
        s2: &candle_core::cuda_backend::CudaStorage,
        l2: &Layout,
        s3: &candle_core::cuda_backend::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::cuda_backend::CudaStorage, Shape)> {
        cuda::fwd(self.kind, self.eps, [(s1, l1), (s2, l2), (s3, l3)])
    }
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "speedrun-norm-bwd"
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
        let name = self.name();
        with_float!(name, s1, l1, |x| {
            let w = typed_slice(s2, l2, name)?;
            let g = typed_slice(s3, l3, name)?;
            let d = w.len();
            let (kind, eps, sum_dx) = (self.kind, self.eps, self.sum_dx);
            let packed = match &self.add {
                None => bwd(x, w, g, None, kind, eps, sum_dx),
                Some(a) => with_cpu(a, name, |s, l| {
                    if l.shape().elem_count() != x.len() {
                        candle_core::bail!("{name}: the added gradient is not the input's size")
                    }
                    let a = typed_slice(s, l, name)?;
                    Ok(bwd(x, w, g, Some(a), kind, eps, sum_dx))
                })?,
            };
            let sums = if sum_dx { 3 } else { 2 };
            Ok((Real::storage(packed), Shape::from(x.len() + sums * d)))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::cuda_backend::CudaStorage,
        l1: &Layout,
        s2: &candle_core::cuda_backend::CudaStorage,
        l2: &Layout,
        s3: &candle_core::cuda_backend::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::cuda_backend::CudaStorage, Shape)> {
        if self.add.is_some() || self.sum_dx {
            candle_core::bail!(
                "{}: an added gradient or dx's sums are CPU-only",
                self.name()
            );
        }
        cuda::bwd(self.kind, self.eps, [(s1, l1), (s2, l2), (s3, l3)])
    }
}

/// The input, gain and bias gradients of a norm from its output's, one pass;
/// `add` (input-shaped) is added into the input's; with `sum_dx`, also the
/// input gradient's column sums.
#[allow(clippy::too_many_arguments)]
fn grads(
    kind: Kind,
    eps: f64,
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
    add: Option<Tensor>,
    sum_dx: bool,
) -> Result<(Tensor, Tensor, Tensor, Option<Tensor>)> {
    let d = w.elem_count();
    let n = x.elem_count();
    let add = add.map(|a| a.contiguous()).transpose()?;
    let op = Backward {
        kind,
        eps,
        add,
        sum_dx,
    };
    let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &op)?;
    let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
    let dw = packed.narrow(0, n, d)?.reshape(w.shape())?;
    let db = packed.narrow(0, n + d, d)?.reshape(w.shape())?;
    let ds = match sum_dx {
        true => Some(packed.narrow(0, n + 2 * d, d)?),
        false => None,
    };
    Ok((dx, dw, db, ds))
}

/// LayerNorm's input (plus `add`, if any), gain and bias gradients as its
/// node's backward computes them, and with `sum_dx` the input gradient's
/// column sums (the bias gradient of the linear whose output feeds the norm),
/// the same bits as summing dx afterwards (CPU only).
pub(crate) fn layer_norm_grads(
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
    add: Option<&Tensor>,
    eps: f64,
    sum_dx: bool,
) -> Result<(Tensor, Tensor, Tensor, Option<Tensor>)> {
    grads(Kind::Layer, eps, x, w, grad, add.cloned(), sum_dx)
}

/// The input, gain and bias gradients of [`layer_norm`] (`rms: false`) or
/// [`rms_norm`] (`rms: true`, the bias's is zero) with gain `w` (ones when the
/// norm has none), as their node's backward computes them.
pub fn norm_grads(
    rms: bool,
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let kind = if rms { Kind::Rms } else { Kind::Layer };
    let (dx, dw, db, _) = grads(
        kind,
        eps,
        &x.contiguous()?,
        &w.contiguous()?,
        grad,
        None,
        false,
    )?;
    Ok((dx, dw, db))
}

fn norm(
    kind: Kind,
    x: &Tensor,
    gain: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let dtype: DType = x.dtype();
    let ones;
    let zeros;
    let w = match gain {
        Some(g) => g,
        None => {
            ones = Tensor::ones(d, dtype, x.device())?;
            &ones
        }
    };
    let b = match bias {
        Some(b) => b,
        None => {
            zeros = Tensor::zeros(d, dtype, x.device())?;
            &zeros
        }
    };
    if w.dims() != [d] || b.dims() != [d] {
        candle_core::bail!(
            "norm: gain {:?} and bias {:?} must both be [{d}]",
            w.dims(),
            b.dims()
        );
    }
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, Forward { kind, eps })
}

/// LayerNorm over the last dimension; `gain`/`bias` of shape `[D]` when given.
pub fn layer_norm(
    x: &Tensor,
    gain: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    norm(Kind::Layer, x, gain, bias, eps)
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x^2) + eps) * gain`.
pub fn rms_norm(x: &Tensor, gain: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    norm(Kind::Rms, x, gain, None, eps)
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::Kind;
    use crate::cuda::{column_chunks, input, output, per_row, wrap, COL_CHUNK};
    use candle_core::cuda_backend::CudaStorage;
    use candle_core::{Layout, Result, Shape};

    type Arg<'a> = (&'a CudaStorage, &'a Layout);

    pub(super) fn fwd(kind: Kind, eps: f64, [x, w, b]: [Arg; 3]) -> Result<(CudaStorage, Shape)> {
        let dev = &x.0.device;
        let op = "norm";
        let (xv, wv, bv) = (
            input(x.0, x.1, op)?,
            input(w.0, w.1, op)?,
            input(b.0, b.1, op)?,
        );
        let (n, d) = (x.1.shape().elem_count(), w.1.shape().elem_count());
        let mut y = output::<f32>(dev, n)?;
        let (dd, rms) = (d as i32, matches!(kind, Kind::Rms) as i32);
        crate::launch!(
            dev,
            "norm_fwd",
            per_row(n / d),
            &xv,
            &wv,
            &bv,
            &mut y,
            &dd,
            &rms,
            &eps
        );
        Ok((wrap(y, dev), x.1.shape().clone()))
    }

    /// Packed `[dx | dw | db]`, as on the CPU.
    pub(super) fn bwd(kind: Kind, eps: f64, [x, w, g]: [Arg; 3]) -> Result<(CudaStorage, Shape)> {
        let dev = &x.0.device;
        let op = "norm backward";
        let (xv, wv, gv) = (
            input(x.0, x.1, op)?,
            input(w.0, w.1, op)?,
            input(g.0, g.1, op)?,
        );
        let (n, d) = (x.1.shape().elem_count(), w.1.shape().elem_count());
        let rows = n / d;
        let mut out = output::<f32>(dev, n + 2 * d)?;
        let mut stats = output::<f32>(dev, 2 * rows)?;
        let (dd, rms) = (d as i32, matches!(kind, Kind::Rms) as i32);
        crate::launch!(
            dev,
            "norm_bwd_dx",
            per_row(rows),
            &xv,
            &wv,
            &gv,
            &mut out,
            &mut stats,
            &dd,
            &rms,
            &eps
        );
        let chunks = rows.div_ceil(COL_CHUNK).max(1);
        let mut pw = output::<f64>(dev, chunks * d)?;
        let mut pb = output::<f64>(dev, chunks * d)?;
        let (r, ch, k) = (rows as i32, COL_CHUNK as i32, chunks as i32);
        crate::launch!(
            dev,
            "norm_bwd_partials",
            column_chunks(d, chunks),
            &xv,
            &gv,
            &stats,
            &mut pw,
            &mut pb,
            &r,
            &dd,
            &ch
        );
        let (off_w, off_b) = (n as i64, (n + d) as i64);
        crate::launch!(
            dev,
            "col_reduce",
            column_chunks(d, 1),
            &pw,
            &mut out,
            &off_w,
            &k,
            &dd
        );
        crate::launch!(
            dev,
            "col_reduce",
            column_chunks(d, 1),
            &pb,
            &mut out,
            &off_b,
            &k,
            &dd
        );
        Ok((wrap(out, dev), Shape::from(n + 2 * d)))
    }
}
