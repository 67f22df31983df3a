//! GELU (tanh form, GPT-2's) and ReLU², elementwise, with fused backward.

use crate::real::{filled, with_float, with_float2, Real};
use crate::{ELEM_CHUNK, ROW_CHUNK};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

pub(crate) fn map1<T: Real>(x: &[T], f: impl Fn(T) -> T + Sync + Copy) -> Vec<T> {
    // SAFETY: the chunks cover the buffer and each chunk's loop writes all of it.
    unsafe {
        filled(x.len(), |out| {
            out.par_chunks_mut(ELEM_CHUNK)
                .zip(x.par_chunks(ELEM_CHUNK))
                .for_each(|(o, i)| apply1(o, i, f))
        })
    }
}

fn map2<T: Real>(x: &[T], g: &[T], f: impl Fn(T, T) -> T + Sync + Copy) -> Vec<T> {
    assert_eq!(x.len(), g.len());
    // SAFETY: as in `map1`; x and g have the output's length.
    unsafe {
        filled(x.len(), |out| {
            out.par_chunks_mut(ELEM_CHUNK)
                .zip(x.par_chunks(ELEM_CHUNK).zip(g.par_chunks(ELEM_CHUNK)))
                .for_each(|(o, (x, g))| apply2(o, x, g, f))
        })
    }
}

crate::wide::wide_fn! {
    fn apply1<T: Real>(o: &mut [MaybeUninit<T>], x: &[T], f: impl Fn(T) -> T + Copy) {
        for (o, &x) in o.iter_mut().zip(x) {
            o.write(f(x));
        }
    }
}

crate::wide::wide_fn! {
    fn apply2<T: Real>(o: &mut [MaybeUninit<T>], x: &[T], g: &[T], f: impl Fn(T, T) -> T + Copy) {
        for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
            o.write(f(x, g));
        }
    }
}

crate::wide::wide_fn! {
    /// Rows of `h` (rows `b.len()` wide) get the bias added in place, and `y`
    /// the activation of the sum.
    pub(crate) fn bias_act_rows<T: Real>(y: &mut [MaybeUninit<T>], h: &mut [T], b: &[T], act: Act) {
        for (y, h) in y.chunks_mut(b.len()).zip(h.chunks_mut(b.len())) {
            for ((y, h), &b) in y.iter_mut().zip(h.iter_mut()).zip(b) {
                *h += b;
                y.write(act.fwd(*h));
            }
        }
    }
}

crate::wide::wide_fn! {
    /// `o = g · act'(x)` row by row (rows `acc.len()` wide), each row added
    /// into `acc` as it is written.
    fn grad_rows_summed<T: Real>(o: &mut [MaybeUninit<T>], x: &[T], g: &[T], acc: &mut [T], act: Act) {
        let m = acc.len();
        for ((o, x), g) in o.chunks_mut(m).zip(x.chunks(m)).zip(g.chunks(m)) {
            for (((o, &x), &g), a) in o.iter_mut().zip(x).zip(g).zip(acc.iter_mut()) {
                let v = g * act.grad(x);
                o.write(v);
                *a += v;
            }
        }
    }
}

/// The activation's input gradient `g · act'(x)` and its column sums over
/// rows `m` wide (the bias gradient of the linear before it), in one pass:
/// the gradient is not read back to be summed. Chunks and order are
/// `bias::column_sum`'s, so the sums are its bits.
pub(crate) fn grad_and_column_sum<T: Real>(
    act: Act,
    x: &[T],
    g: &[T],
    m: usize,
) -> (Vec<T>, Vec<T>) {
    assert!(x.len() == g.len() && m > 0 && x.len().is_multiple_of(m));
    let mut partials = Vec::new();
    // SAFETY: the row chunks cover the output and each element is written once.
    let dx = unsafe {
        filled(x.len(), |out| {
            partials = out
                .par_chunks_mut(ROW_CHUNK * m)
                .zip(x.par_chunks(ROW_CHUNK * m).zip(g.par_chunks(ROW_CHUNK * m)))
                .map(|(o, (x, g))| {
                    let mut acc = vec![T::ZERO; m];
                    grad_rows_summed(o, x, g, &mut acc, act);
                    acc
                })
                .collect();
        })
    };
    (
        dx,
        crate::bias::sum_partials(partials.iter().map(Vec::as_slice), m),
    )
}

const SQRT_2_OVER_PI: f64 = 0.7978845608028654;
const GELU_K: f64 = 0.044715;

fn gelu_fwd<T: Real>(x: T) -> T {
    let u = T::of(SQRT_2_OVER_PI) * (x + T::of(GELU_K) * x * x * x);
    T::of(0.5) * x * (T::ONE + u.tanh())
}

fn gelu_grad<T: Real>(x: T) -> T {
    let c = T::of(SQRT_2_OVER_PI);
    let t = (c * (x + T::of(GELU_K) * x * x * x)).tanh();
    T::of(0.5) * (T::ONE + t)
        + T::of(0.5) * x * (T::ONE - t * t) * c * (T::ONE + T::of(3.0 * GELU_K) * x * x)
}

/// The discriminant is the CUDA kernels' `kind`.
#[derive(Clone, Copy)]
pub(crate) enum Act {
    Gelu = 0,
    Relu2 = 1,
}

impl Act {
    pub(crate) fn fwd<T: Real>(self, x: T) -> T {
        match self {
            Act::Gelu => gelu_fwd(x),
            Act::Relu2 => {
                let r = if x > T::ZERO { x } else { T::ZERO };
                r * r
            }
        }
    }

    fn grad<T: Real>(self, x: T) -> T {
        match self {
            Act::Gelu => gelu_grad(x),
            Act::Relu2 => {
                if x > T::ZERO {
                    T::of(2.0) * x
                } else {
                    T::ZERO
                }
            }
        }
    }
}

struct Forward(Act);
pub(crate) struct Backward(pub(crate) Act);

impl CustomOp1 for Forward {
    fn name(&self) -> &'static str {
        match self.0 {
            Act::Gelu => "speedrun-gelu",
            Act::Relu2 => "speedrun-relu2",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let act = self.0;
        with_float!(self.name(), s, l, |x| Ok((
            Real::storage(map1(x, |v| act.fwd(v))),
            l.shape().clone()
        )))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::cuda_backend::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::cuda_backend::CudaStorage, Shape)> {
        cuda::fwd(self, s, l)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &grad.contiguous()?,
            &Backward(self.0),
        )?))
    }
}

impl CustomOp2 for Backward {
    fn name(&self) -> &'static str {
        "speedrun-activation-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let act = self.0;
        with_float2!(self.name(), (s1, l1), (s2, l2), |x, g| Ok((
            Real::storage(map2(x, g, |x, g| g * act.grad(x))),
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
        cuda::bwd(self, (s1, l1), (s2, l2))
    }
}

/// GELU, tanh approximation: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Forward(Act::Gelu))
}

/// ReLU²: `max(x, 0)^2`.
pub fn relu2(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Forward(Act::Relu2))
}

/// The input gradient of [`gelu`] at `x` for the output gradient `grad`, as its
/// node's backward computes it (for the host's tape).
pub fn gelu_input_grad(x: &Tensor, grad: &Tensor) -> Result<Tensor> {
    Forward(Act::Gelu).bwd(x, x, grad).map(Option::unwrap)
}

/// The input gradient of [`relu2`], as [`gelu_input_grad`] is [`gelu`]'s.
pub fn relu2_input_grad(x: &Tensor, grad: &Tensor) -> Result<Tensor> {
    Forward(Act::Relu2).bwd(x, x, grad).map(Option::unwrap)
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{Backward, Forward};
    use crate::cuda::{elementwise, input, output, wrap};
    use candle_core::cuda_backend::CudaStorage;
    use candle_core::{CustomOp1, CustomOp2, Layout, Result, Shape};

    pub(super) fn fwd(op: &Forward, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = &s.device;
        let x = input(s, l, op.name())?;
        let n = l.shape().elem_count();
        let mut y = output::<f32>(dev, n)?;
        let (len, kind) = (n as i64, op.0 as i32);
        crate::launch!(dev, "act_fwd", elementwise(n), &x, &mut y, &len, &kind);
        Ok((wrap(y, dev), l.shape().clone()))
    }

    pub(super) fn bwd(
        op: &Backward,
        (s1, l1): (&CudaStorage, &Layout),
        (s2, l2): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &s1.device;
        let (x, g) = (input(s1, l1, op.name())?, input(s2, l2, op.name())?);
        let n = l1.shape().elem_count();
        let mut dx = output::<f32>(dev, n)?;
        let (len, kind) = (n as i64, op.0 as i32);
        crate::launch!(dev, "act_bwd", elementwise(n), &x, &g, &mut dx, &len, &kind);
        Ok((wrap(dx, dev), l1.shape().clone()))
    }
}
