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

    /// The transpose, by swapping strides.
    pub fn t(self) -> View<T> {
        View {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
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
