//! One wrapper over the `gemm` crate (the matmul candle itself uses) for the
//! kernels that call it directly: strided views instead of copies, and the
//! scalings folded into gemm's `alpha`/`beta`.

use gemm::Parallelism;

/// A matrix read through strides: element (i, j) at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub struct View<T> {
    pub ptr: *const T,
    pub rs: isize,
    pub cs: isize,
}

impl<T> View<T> {
    /// Row-major rows `rs` elements apart.
    pub fn rows(ptr: *const T, rs: usize) -> View<T> {
        View {
            ptr,
            rs: rs as isize,
            cs: 1,
        }
    }

    /// The same matrix without its first `i` rows.
    ///
    /// # Safety
    /// Row `i` must lie inside the buffer the view reads.
    pub unsafe fn skip_rows(self, i: usize) -> View<T> {
        View {
            ptr: self.ptr.offset(i as isize * self.rs),
            ..self
        }
    }

    /// The transpose, by swapping strides.
    pub fn t(self) -> View<T> {
        View {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// The microkernels gemm runs on this CPU, chosen as gemm chooses them at run
/// time (`gemm_common::gemm_def!`): AVX-512 where the CPU has avx512f, else
/// AVX2 + FMA; NEON on arm64.
pub fn kernel_name() -> &'static str {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return "gemm avx512f (x86-64-v4)";
        }
        if std::is_x86_feature_detected!("fma") {
            return "gemm avx2+fma (x86-64-v3)";
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            return "gemm neon";
        }
    }
    "gemm scalar"
}

/// gemm's own thread split over the current rayon pool, or none.
pub fn parallel() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `dst = alpha·dst + beta·lhs·rhs` for an `[m, k] @ [k, n]` product into the
/// row-major `dst` (rows `dst_rs` apart); `alpha = None` overwrites `dst`.
/// gemm reduces every output element in a fixed order.
///
/// # Safety
/// Every element the views and `dst` address for these sizes must be in bounds,
/// and `dst` must not overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul<T: 'static + Copy>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    dst_rs: usize,
    alpha: Option<T>,
    lhs: View<T>,
    rhs: View<T>,
    beta: T,
    parallelism: Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        alpha.is_some(),
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        alpha.unwrap_or(beta),
        beta,
        false,
        false,
        false,
        parallelism,
    )
}
