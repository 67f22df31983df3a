//! Rotary position embedding on `[..., T, hd]` (rotate-half form: the pair
//! `(x_i, x_{i+hd/2})` at position `t` turns by `t · base^(−2i/hd)`), one pass
//! each way. The backward is the same rotation by the opposite angle. Composed
//! from candle ops it was two narrows, four broadcast products, two sums and a
//! cat, each a node with its own zero-filled gradient.

use crate::real::{with_float, Real};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

struct Rotate {
    base: f64,
    /// +1 forward, −1 for the backward (the inverse rotation).
    sign: f64,
}

/// cos and sin of every (position, frequency), in f64, rounded to `T` once.
fn table<T: Real>(t: usize, hd: usize, base: f64, sign: f64) -> (Vec<T>, Vec<T>) {
    let half = hd / 2;
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for pos in 0..t {
        for i in 0..half {
            let a = pos as f64 / base.powf(2.0 * i as f64 / hd as f64);
            cos.push(T::of(a.cos()));
            sin.push(T::of(sign * a.sin()));
        }
    }
    (cos, sin)
}

fn rotate<T: Real>(x: &[T], t: usize, hd: usize, base: f64, sign: f64) -> Vec<T> {
    let half = hd / 2;
    let (cos, sin) = table::<T>(t, hd, base, sign);
    let mut out = vec![T::ZERO; x.len()];
    // One task per [T, hd] slab (one batch and head).
    out.par_chunks_mut(t * hd)
        .zip(x.par_chunks(t * hd))
        .for_each(|(o, x)| {
            for (pos, (o, x)) in o.chunks_mut(hd).zip(x.chunks(hd)).enumerate() {
                let (c, s) = (&cos[pos * half..][..half], &sin[pos * half..][..half]);
                let (x1, x2) = x.split_at(half);
                let (o1, o2) = o.split_at_mut(half);
                for i in 0..half {
                    o1[i] = x1[i] * c[i] - x2[i] * s[i];
                    o2[i] = x1[i] * s[i] + x2[i] * c[i];
                }
            }
        });
    out
}

impl CustomOp1 for Rotate {
    fn name(&self) -> &'static str {
        "speedrun-rotary"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims();
        let (t, hd) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        with_float!(self.name(), s, l, |x| Ok((
            Real::storage(rotate(x, t, hd, self.base, self.sign)),
            l.shape().clone()
        )))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let inverse = Rotate {
            base: self.base,
            sign: -self.sign,
        };
        Ok(Some(grad.contiguous()?.apply_op1(inverse)?))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::cuda_backend::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::cuda_backend::CudaStorage, Shape)> {
        cuda::rotate(s, l, self.base, self.sign)
    }
}

/// Rotary position embedding of `x` `[..., T, hd]` (hd even; positions 0..T).
pub fn rotary(x: &Tensor, base: f64) -> Result<Tensor> {
    let dims = x.dims();
    if dims.len() < 2 {
        bail!("rotary expects [..., T, hd], got {dims:?}")
    }
    let hd = dims[dims.len() - 1];
    if !hd.is_multiple_of(2) {
        bail!("rotary needs an even head dimension, got {hd}")
    }
    if !(base > 1.0 && base.is_finite()) {
        bail!("rotary: base must be a finite number above 1, got {base}")
    }
    x.contiguous()?.apply_op1(Rotate { base, sign: 1.0 })
}

/// The input gradient of [`rotary`] for the output gradient `grad`: the
/// inverse rotation, as its node's backward computes it.
pub fn rotary_grad(grad: &Tensor, base: f64) -> Result<Tensor> {
    Rotate { base, sign: 1.0 }
        .bwd(grad, grad, grad)
        .map(Option::unwrap)
}

#[cfg(feature = "cuda")]
mod cuda {
    use crate::cuda::{elementwise, input, output, wrap};
    use candle_core::cuda_backend::CudaStorage;
    use candle_core::{Layout, Result, Shape};

    pub(super) fn rotate(
        s: &CudaStorage,
        l: &Layout,
        base: f64,
        sign: f64,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &s.device;
        let x = input(s, l, "rotary")?;
        let dims = l.shape().dims();
        let (t, hd) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let n = l.shape().elem_count();
        let mut y = output::<f32>(dev, n)?;
        let (len, tt, h) = (n as i64, t as i32, hd as i32);
        crate::launch!(
            dev,
            "rotary",
            elementwise(n / 2),
            &x,
            &mut y,
            &len,
            &tt,
            &h,
            &base,
            &sign
        );
        Ok((wrap(y, dev), l.shape().clone()))
    }
}
