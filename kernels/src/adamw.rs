//! The AdamW update, fused and in place: one pass over parameter, gradient and
//! both moments, no temporaries. Elementwise, so the result does not depend on
//! the thread count. The arithmetic is PyTorch's AdamW, written in the order the
//! reference optimizer has always used (its curves stay bit-identical).

use crate::ELEM_CHUNK;
use candle_core::{bail, CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
use rayon::prelude::*;

/// The scalars of one update. `step_size = lr / (1 - β1^t)`,
/// `bc2_sqrt = √(1 - β2^t)`, `decay = 1 - lr · weight_decay`, `clip` the
/// gradient-norm clip coefficient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamwStep {
    pub clip: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub step_size: f32,
    pub bc2_sqrt: f32,
    pub decay: f32,
}

fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("adamw_update: the {what} is not contiguous")
    };
    match s {
        CpuStorage::F32(v) => Ok(&mut v[start..end]),
        _ => bail!("adamw_update: the {what} is not f32"),
    }
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("adamw_update: the {what} is not contiguous")
    };
    match s {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => bail!("adamw_update: the {what} is not f32"),
    }
}

/// Which of the three in-place passes. Each writes one tensor and reads others,
/// so candle takes the storage locks in a safe order and refuses aliasing.
#[derive(Clone, Copy)]
enum Pass {
    /// m += (1-β1)(g·clip - m), reading g.
    First,
    /// v = β2 v + (1-β2)(g·clip)², reading g.
    Second,
    /// p = p·decay - step_size · m / (√v / bc2_sqrt + eps), reading m and v.
    Param,
}

struct Update {
    pass: Pass,
    h: AdamwStep,
}

fn apply(pass: Pass, h: &AdamwStep, dst: &mut [f32], a: &[f32], b: &[f32]) {
    let (one_b1, one_b2) = (1.0 - h.beta1, 1.0 - h.beta2);
    match pass {
        Pass::First => {
            for (m, &g) in dst.iter_mut().zip(a) {
                let gj = g * h.clip;
                *m += one_b1 * (gj - *m);
            }
        }
        Pass::Second => {
            for (v, &g) in dst.iter_mut().zip(a) {
                let gj = g * h.clip;
                *v = h.beta2 * *v + one_b2 * gj * gj;
            }
        }
        Pass::Param => {
            for ((p, &m), &v) in dst.iter_mut().zip(a).zip(b) {
                let denom = v.sqrt() / h.bc2_sqrt + h.eps;
                *p = *p * h.decay - h.step_size * m / denom;
            }
        }
    }
}

impl Update {
    fn run(&self, dst: &mut [f32], a: &[f32], b: &[f32]) {
        let (pass, h) = (self.pass, &self.h);
        if b.is_empty() {
            dst.par_chunks_mut(ELEM_CHUNK)
                .zip(a.par_chunks(ELEM_CHUNK))
                .for_each(|(d, a)| apply(pass, h, d, a, &[]));
        } else {
            dst.par_chunks_mut(ELEM_CHUNK)
                .zip(a.par_chunks(ELEM_CHUNK))
                .zip(b.par_chunks(ELEM_CHUNK))
                .for_each(|((d, a), b)| apply(pass, h, d, a, b));
        }
    }
}

impl InplaceOp2 for Update {
    fn name(&self) -> &'static str {
        "adamw_update"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        g: &CpuStorage,
        g_l: &Layout,
    ) -> Result<()> {
        let d = slice_mut(dst, dst_l, "moment")?;
        let g = slice(g, g_l, "gradient")?;
        self.run(d, g, &[]);
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::cuda_backend::CudaStorage,
        dst_l: &Layout,
        g: &candle_core::cuda_backend::CudaStorage,
        g_l: &Layout,
    ) -> Result<()> {
        cuda::moments(self, (dst, dst_l), (g, g_l))
    }
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "adamw_update"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        m: &CpuStorage,
        m_l: &Layout,
        v: &CpuStorage,
        v_l: &Layout,
    ) -> Result<()> {
        let p = slice_mut(dst, dst_l, "parameter")?;
        let m = slice(m, m_l, "first moment")?;
        let v = slice(v, v_l, "second moment")?;
        self.run(p, m, v);
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::cuda_backend::CudaStorage,
        dst_l: &Layout,
        m: &candle_core::cuda_backend::CudaStorage,
        m_l: &Layout,
        v: &candle_core::cuda_backend::CudaStorage,
        v_l: &Layout,
    ) -> Result<()> {
        cuda::param(self, (dst, dst_l), (m, m_l), (v, v_l))
    }
}

/// Updates `param`, `m` and `v` in place from `grad`: PyTorch's AdamW after a
/// gradient clip, elementwise. All four must be f32 with the same number of
/// elements; the written ones contiguous and not sharing storage (candle refuses
/// aliasing with an error).
pub fn adamw_update(
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    h: &AdamwStep,
) -> Result<()> {
    let n = param.elem_count();
    for (t, what) in [
        (grad, "gradient"),
        (m, "first moment"),
        (v, "second moment"),
    ] {
        if t.elem_count() != n {
            bail!(
                "adamw_update: the {what} has {} elements, the parameter {n}",
                t.elem_count()
            );
        }
    }
    for (t, what) in [
        (param, "parameter"),
        (grad, "gradient"),
        (m, "first moment"),
        (v, "second moment"),
    ] {
        if t.dtype() != DType::F32 {
            bail!("adamw_update: the {what} is {:?}, expected f32", t.dtype());
        }
    }
    let grad = grad.contiguous()?;
    let step = |pass| Update { pass, h: *h };
    m.inplace_op2(&grad, &step(Pass::First))?;
    v.inplace_op2(&grad, &step(Pass::Second))?;
    param.inplace_op3(m, v, &step(Pass::Param))
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{Pass, Update};
    use crate::cuda::{elementwise, input};
    use candle_core::cuda_backend::CudaStorage;
    use candle_core::{bail, Layout, Result};

    type Arg<'a> = (&'a CudaStorage, &'a Layout);

    fn target<'a>(
        (s, l): (&'a mut CudaStorage, &Layout),
        what: &str,
    ) -> Result<candle_core::cuda_backend::cudarc::driver::CudaViewMut<'a, f32>> {
        let Some((a, b)) = l.contiguous_offsets() else {
            bail!("adamw_update: the {what} is not contiguous")
        };
        Ok(s.as_cuda_slice_mut::<f32>()?.slice_mut(a..b))
    }

    pub(super) fn moments(u: &Update, dst: (&mut CudaStorage, &Layout), g: Arg) -> Result<()> {
        let dev = dst.0.device.clone();
        let n = dst.1.shape().elem_count();
        let gv = input(g.0, g.1, "adamw_update")?;
        let len = n as i64;
        let h = u.h;
        match u.pass {
            Pass::First => {
                let mut m = target(dst, "first moment")?;
                crate::launch!(
                    &dev,
                    "adamw_first",
                    elementwise(n),
                    &mut m,
                    &gv,
                    &len,
                    &h.clip,
                    &h.beta1
                );
            }
            _ => {
                let mut v = target(dst, "second moment")?;
                crate::launch!(
                    &dev,
                    "adamw_second",
                    elementwise(n),
                    &mut v,
                    &gv,
                    &len,
                    &h.clip,
                    &h.beta2
                );
            }
        }
        Ok(())
    }

    pub(super) fn param(
        u: &Update,
        dst: (&mut CudaStorage, &Layout),
        m: Arg,
        v: Arg,
    ) -> Result<()> {
        let dev = dst.0.device.clone();
        let n = dst.1.shape().elem_count();
        let (mv, vv) = (
            input(m.0, m.1, "adamw_update")?,
            input(v.0, v.1, "adamw_update")?,
        );
        let mut p = target(dst, "parameter")?;
        let (len, h) = (n as i64, u.h);
        crate::launch!(
            &dev,
            "adamw_param",
            elementwise(n),
            &mut p,
            &mv,
            &vv,
            &len,
            &h.decay,
            &h.step_size,
            &h.bc2_sqrt,
            &h.eps
        );
        Ok(())
    }
}
