//! The float types the kernels run on (f32 for training, f64 for gradient checks),
//! and access to a contiguous candle CPU buffer.

use candle_core::{CpuStorage, Layout, Result};

pub trait Real:
    Copy
    + Send
    + Sync
    + 'static
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
{
    const ZERO: Self;
    const ONE: Self;
    fn of(v: f64) -> Self;
    fn f64(self) -> f64;
    fn exp(self) -> Self;
    fn tanh(self) -> Self;
    fn storage(v: Vec<Self>) -> CpuStorage;
}

/// tanh for f32 as a rational function (Eigen's `ptanh` coefficients): pure
/// arithmetic the compiler vectorises, where libm's `tanhf` is a scalar call that
/// cost ~0.5 s a step on the cpu track. Absolute error about 1e-7.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let x = x.clamp(-7.905_311, 7.905_311);
    let x2 = x * x;
    let p = ((((((-2.760_768_5e-16 * x2 + 2.000_188e-13) * x2 - 8.604_672e-11) * x2
        + 5.122_297e-8)
        * x2
        + 1.485_722_4e-5)
        * x2
        + 6.372_619_3e-4)
        * x2
        + 4.893_524_6e-3)
        * x;
    let q = ((1.198_258_4e-6 * x2 + 1.185_347_1e-4) * x2 + 2.268_434_6e-3) * x2 + 4.893_525e-3;
    p / q
}

/// exp for f32 (Cephes' `expf`: range reduction by ln 2, degree-6 polynomial,
/// scaling by 2^n through the exponent bits). Pure arithmetic, so loops over it
/// vectorise; relative error about 2e-7. Clamped to exp's finite f32 range.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = floor_small(x * std::f32::consts::LOG2_E + 0.5);
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits((small_int_bits(n).wrapping_add(127)) << 23)
}

/// 1.5 · 2²³: added to a float of magnitude under 2²², it leaves the float
/// rounded to an integer, held in the low bits of the sum's mantissa.
const ROUNDER: f32 = 12_582_912.0;

/// An integer-valued `n` (|n| < 2²²) as the two's-complement bits of that
/// integer. The same as `n as i32 as u32`, but Rust's `as` saturates and maps
/// NaN to 0, which no vector instruction does, so every loop over `exp_f32`
/// had its conversions done one lane at a time; this is an add and a subtract.
/// A NaN gives some integer, and `exp_f32` of NaN stays NaN through `y`.
#[inline(always)]
fn small_int_bits(n: f32) -> u32 {
    (n + ROUNDER).to_bits().wrapping_sub(ROUNDER.to_bits())
}

/// `v.floor()` for |v| < 2²²: rounded by [`ROUNDER`], then a step down where
/// that rounded up. The same value, but x86-64's baseline (SSE2) has no vector
/// floor (`f32::floor` is a libm call per element) and `as i32` does not
/// vectorise (see `small_int_bits`).
#[inline(always)]
fn floor_small(v: f32) -> f32 {
    let t = (v + ROUNDER) - ROUNDER;
    if t > v {
        t - 1.0
    } else if t == v {
        v // keeps -0.0
    } else {
        t
    }
}

macro_rules! real {
    ($t:ty, $variant:ident, $tanh:expr, $exp:expr) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn of(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                $tanh(self)
            }
            fn storage(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(v)
            }
        }
    };
}
real!(f32, F32, tanh_f32, exp_f32);
real!(f64, F64, f64::tanh, f64::exp);

/// A buffer of `n` elements written by `fill` without being zeroed first: for
/// outputs that a kernel overwrites whole (a product, an elementwise map),
/// where a zero-fill is one more pass over memory for nothing.
///
/// # Safety
/// `fill` must write every element of the slice it is given.
pub unsafe fn filled<T: Copy>(
    n: usize,
    fill: impl FnOnce(&mut [std::mem::MaybeUninit<T>]),
) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: the caller's promise: every element was written.
    unsafe { v.set_len(n) };
    v
}

/// `f` on the CPU storage and layout of a tensor an op holds beside its
/// arguments (a saved output, an added gradient), or an error naming the op.
pub fn with_cpu<R>(
    t: &candle_core::Tensor,
    op: &str,
    f: impl FnOnce(&CpuStorage, &Layout) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(s) => f(s, layout),
        _ => candle_core::bail!("{op}: a tensor it holds is not on the CPU"),
    }
}

/// The contiguous slice a layout views, or an error naming the op.
pub fn slice<'a, T>(data: &'a [T], layout: &Layout, op: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// The contiguous slice of a storage whose float type another argument already
/// fixed (`T`), or an error naming the op and the dtype found.
pub fn typed_slice<'a, T>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]>
where
    CpuStorage: AsSlice<T>,
{
    slice(s.as_slice_of(op)?, l, op)
}

/// Typed access to a CPU storage.
pub trait AsSlice<T> {
    fn as_slice_of(&self, op: &str) -> Result<&[T]>;
}

macro_rules! as_slice {
    ($t:ty, $variant:ident) => {
        impl AsSlice<$t> for CpuStorage {
            fn as_slice_of(&self, op: &str) -> Result<&[$t]> {
                match self {
                    CpuStorage::$variant(v) => Ok(v),
                    o => candle_core::bail!(
                        "{op}: expected {}, got {:?}",
                        stringify!($t),
                        candle_core::backend::BackendStorage::dtype(o)
                    ),
                }
            }
        }
    };
}
as_slice!(f32, F32);
as_slice!(f64, F64);

/// Runs `$body` with `$x` bound to the f32 or f64 slice of `$storage`.
macro_rules! with_float {
    ($op:expr, $storage:expr, $layout:expr, |$x:ident| $body:expr) => {
        match $storage {
            candle_core::CpuStorage::F32(v) => {
                let $x = $crate::real::slice(v, $layout, $op)?;
                $body
            }
            candle_core::CpuStorage::F64(v) => {
                let $x = $crate::real::slice(v, $layout, $op)?;
                $body
            }
            other => candle_core::bail!(
                "{}: unsupported dtype {:?} (f32 or f64)",
                $op,
                candle_core::backend::BackendStorage::dtype(other)
            ),
        }
    };
}
pub(crate) use with_float;

/// The same float type in two storages, or an error.
macro_rules! with_float2 {
    ($op:expr, ($s1:expr, $l1:expr), ($s2:expr, $l2:expr), |$a:ident, $b:ident| $body:expr) => {
        match ($s1, $s2) {
            (candle_core::CpuStorage::F32(v1), candle_core::CpuStorage::F32(v2)) => {
                let $a = $crate::real::slice(v1, $l1, $op)?;
                let $b = $crate::real::slice(v2, $l2, $op)?;
                $body
            }
            (candle_core::CpuStorage::F64(v1), candle_core::CpuStorage::F64(v2)) => {
                let $a = $crate::real::slice(v1, $l1, $op)?;
                let $b = $crate::real::slice(v2, $l2, $op)?;
                $body
            }
            (a, b) => candle_core::bail!(
                "{}: mismatched or unsupported dtypes {:?}, {:?}",
                $op,
                candle_core::backend::BackendStorage::dtype(a),
                candle_core::backend::BackendStorage::dtype(b)
            ),
        }
    };
}
pub(crate) use with_float2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_by_rounding_is_floor_over_exps_range() {
        let mut v = -130.0f32;
        while v < 130.0 {
            for x in [
                v,
                -v,
                v.trunc(),
                -v.trunc(),
                v + 0.5,
                f32::from_bits(v.to_bits() + 1),
            ] {
                assert_eq!(floor_small(x).to_bits(), x.floor().to_bits(), "{x}");
            }
            v += 0.0137;
        }
        assert_eq!(floor_small(-0.5), -1.0);
        assert_eq!(floor_small(-1.0), -1.0);
        assert_eq!(floor_small(2.999_999_8), 2.0);
        for n in -300..300 {
            assert_eq!(small_int_bits(n as f32), n as u32, "{n}");
        }
    }

    #[test]
    fn exp_f32_is_within_its_stated_error_of_f64_exp() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            assert!(
                ((got - want) / want).abs() < 3e-7,
                "exp({x}) = {got}, not {want}"
            );
            x += 0.0311;
        }
    }
}
