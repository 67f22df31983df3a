//! Log-softmax + negative log-likelihood over the whole vocabulary, fused: the
//! mean loss forward, `(softmax - onehot) / N` backward, without materialising
//! the log-probabilities.

use crate::real::{with_float, Real};
use crate::ROW_CHUNK;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

struct Forward;
struct Backward;

fn targets<'a>(s: &'a CpuStorage, l: &Layout, n: usize, v: usize) -> Result<&'a [u32]> {
    let t = match s {
        CpuStorage::U32(t) => crate::real::slice(t, l, "cross_entropy")?,
        o => candle_core::bail!(
            "cross_entropy: targets must be u32, got {:?}",
            candle_core::backend::BackendStorage::dtype(o)
        ),
    };
    if t.len() != n {
        candle_core::bail!("cross_entropy: {} targets for {n} rows", t.len());
    }
    if let Some(bad) = t.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("cross_entropy: target {bad} outside the vocabulary of {v}");
    }
    Ok(t)
}

crate::wide::wide_fn! {
    /// Log-sum-exp of a row: the max and the exponentials in the row's own type (a
    /// vectorised f32 exp for training), the sum accumulated in f64 in fixed lanes.
    fn lse<T: Real>(row: &[T]) -> f64 {
        let mut m = row[0];
        for &v in row {
            if v > m {
                m = v;
            }
        }
        m.f64() + crate::wide::sum_by(row, |v| (v - m).exp().f64()).ln()
    }
}

fn fwd<T: Real>(x: &[T], t: &[u32], n: usize, v: usize) -> CpuStorage {
    let per_chunk: Vec<f64> = x
        .par_chunks(ROW_CHUNK * v)
        .zip(t.par_chunks(ROW_CHUNK))
        .map(|(x, t)| {
            x.chunks(v)
                .zip(t)
                .map(|(row, &t)| lse(row) - row[t as usize].f64())
                .sum::<f64>()
        })
        .collect();
    // Chunk sums added in order: the same bits whatever the thread count.
    T::storage(vec![T::of(per_chunk.iter().sum::<f64>() / n as f64)])
}

fn bwd<T: Real>(x: &[T], t: &[u32], n: usize, v: usize) -> CpuStorage {
    let mut out = vec![T::ZERO; x.len()];
    let inv_n = 1.0 / n as f64;
    out.par_chunks_mut(ROW_CHUNK * v)
        .zip(x.par_chunks(ROW_CHUNK * v).zip(t.par_chunks(ROW_CHUNK)))
        .for_each(|(o, (x, t))| {
            for ((o, row), &t) in o.chunks_mut(v).zip(x.chunks(v)).zip(t) {
                let l = T::of(lse(row));
                let scale = T::of(inv_n);
                for (o, &r) in o.iter_mut().zip(row) {
                    *o = (r - l).exp() * scale;
                }
                o[t as usize] = T::of(o[t as usize].f64() - inv_n);
            }
        });
    T::storage(out)
}

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "speedrun-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let t = targets(s2, l2, n, v)?;
        with_float!(self.name(), s1, l1, |x| Ok((
            fwd(x, t, n, v),
            Shape::from(())
        )))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = logits.apply_op2_no_bwd(targets, &Backward)?;
        Ok((Some(d.broadcast_mul(grad)?), None))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::cuda_backend::CudaStorage,
        l1: &Layout,
        s2: &candle_core::cuda_backend::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::cuda_backend::CudaStorage, Shape)> {
        cuda::fwd((s1, l1), (s2, l2))
    }
}

impl CustomOp2 for Backward {
    fn name(&self) -> &'static str {
        "speedrun-cross-entropy-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let t = targets(s2, l2, n, v)?;
        with_float!(self.name(), s1, l1, |x| Ok((
            bwd(x, t, n, v),
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
        cuda::bwd((s1, l1), (s2, l2))
    }
}

/// Mean cross-entropy in nats: `logits` `[N, V]`, `targets` `[N]` (u32).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits
        .contiguous()?
        .apply_op2(&targets.contiguous()?, Forward)
}

#[cfg(feature = "cuda")]
mod cuda {
    use crate::cuda::{input, output, per_row, wrap};
    use candle_core::cuda_backend::CudaStorage;
    use candle_core::{bail, Layout, Result, Shape};

    type Arg<'a> = (&'a CudaStorage, &'a Layout);

    fn targets<'a>(
        (s, l): Arg<'a>,
        n: usize,
    ) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, u32>> {
        let Some((a, b)) = l.contiguous_offsets() else {
            bail!("cross_entropy: the targets are not contiguous")
        };
        if b - a != n {
            bail!("cross_entropy: {} targets for {n} rows", b - a);
        }
        Ok(s.as_cuda_slice::<u32>()?.slice(a..b))
    }

    /// The mean loss; a target outside the vocabulary gives NaN (no host copy to check it).
    pub(super) fn fwd(x: Arg, t: Arg) -> Result<(CudaStorage, Shape)> {
        let dev = &x.0.device;
        let (n, v) = x.1.shape().dims2()?;
        let (xv, tv) = (input(x.0, x.1, "cross_entropy")?, targets(t, n)?);
        let mut rows = output::<f64>(dev, n)?;
        let vv = v as i32;
        crate::launch!(dev, "xent_rows", per_row(n), &xv, &tv, &mut rows, &vv);
        let mut out = output::<f32>(dev, 1)?;
        let nn = n as i32;
        crate::launch!(dev, "mean_of", per_row(1), &rows, &mut out, &nn);
        Ok((wrap(out, dev), Shape::from(())))
    }

    pub(super) fn bwd(x: Arg, t: Arg) -> Result<(CudaStorage, Shape)> {
        let dev = &x.0.device;
        let (n, v) = x.1.shape().dims2()?;
        let (xv, tv) = (input(x.0, x.1, "cross_entropy backward")?, targets(t, n)?);
        let mut dx = output::<f32>(dev, n * v)?;
        let (vv, inv_n) = (v as i32, 1.0f32 / n as f32);
        crate::launch!(dev, "xent_bwd", per_row(n), &xv, &tv, &mut dx, &vv, &inv_n);
        Ok((wrap(dx, dev), x.1.shape().clone()))
    }
}
