//! Register-tiled products for the attention's small per-head matrices.
//!
//! Each (batch, head) pair multiplies matrices of `≤ T × 64` and `64 × ≤ T`.
//! gemm packs both operands into its own layout on every call, and at these
//! sizes the packing and the dispatch are a large share of the call. Here one
//! `6 × 64` tile of C stays in 24 AVX-512 registers for the whole reduction:
//! each step loads one row of B (4 vectors) and broadcasts 6 elements of A
//! from where they lie, so nothing is packed. The attention lays out what it
//! needs as rows of B (K, V, Kᵀ, Vᵀ). Alone, one core of a Xeon runs the
//! attention's shapes at 150-170 GFLOP/s, ~85% of its FMA peak.
//!
//! Every element of C is reduced in ascending k in a single accumulator, so its
//! bits depend on neither the tiling nor the thread count. f32 on a CPU with
//! AVX-512 takes the vector kernel (with FMA); anything else (f64 for the
//! gradient checks, other CPUs) the portable loop, same order without FMA.

use crate::gemm_call::View;
use crate::real::Real;

/// Rows of a tile of C: 6 × 4 accumulators + 4 for B's row fill 28 of the
/// 32 vector registers.
pub(crate) const MR: usize = 6;
/// Columns of a tile of C: 4 vectors of 16 f32.
const NR: usize = 64;

/// `C[m, n] = scale · A B` over `k`: A's element (i, kk) at `a.ptr + i·a.rs + kk·a.cs`,
/// B's rows contiguous and `b_rs` apart, C's rows `c_rs` apart. C is overwritten.
///
/// # Safety
/// Every element A, B and C address for these sizes must be in bounds, and C
/// must not overlap A or B.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn product<T: Real>(
    (m, n, k): (usize, usize, usize),
    a: View<T>,
    b: *const T,
    b_rs: usize,
    c: *mut T,
    c_rs: usize,
    scale: T,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::wide::f32_avx512::<T>() {
        let a = View {
            ptr: a.ptr.cast::<f32>(),
            rs: a.rs,
            cs: a.cs,
        };
        let scale = scale.f64() as f32;
        // SAFETY: T is f32 (checked above) and the CPU has AVX-512.
        return avx512::product((m, n, k), a, b.cast(), b_rs, c.cast(), c_rs, scale);
    }
    portable((m, n, k), a, b, b_rs, c, c_rs, scale)
}

crate::wide::wide_fn! {
/// Row by row: `C[i] += A[i, kk] · B[kk]` in ascending kk, then the scaling.
fn portable<T: Real>(
    mnk: (usize, usize, usize),
    a: View<T>,
    b: *const T,
    b_rs: usize,
    c: *mut T,
    c_rs: usize,
    scale: T,
) {
    let (m, n, k) = mnk;
    for i in 0..m {
        // SAFETY: the caller's bounds (`product`).
        unsafe {
            let row = std::slice::from_raw_parts_mut(c.add(i * c_rs), n);
            row.iter_mut().for_each(|x| *x = T::ZERO);
            for kk in 0..k {
                let av = *a.ptr.offset(i as isize * a.rs + kk as isize * a.cs);
                let br = std::slice::from_raw_parts(b.add(kk * b_rs), n);
                for (x, &bv) in row.iter_mut().zip(br) {
                    *x += av * bv;
                }
            }
            row.iter_mut().for_each(|x| *x = *x * scale);
        }
    }
}
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR};
    use crate::gemm_call::View;
    use std::arch::x86_64::*;

    /// [`super::product`] for f32 in `MR × NR` tiles; the last tile of a row
    /// of C masks its last vector's lanes past `n`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn product(
        (m, n, k): (usize, usize, usize),
        a: View<f32>,
        b: *const f32,
        b_rs: usize,
        c: *mut f32,
        c_rs: usize,
        scale: f32,
    ) {
        for j0 in (0..n).step_by(NR) {
            let cols = (n - j0).min(NR);
            let vectors = cols.div_ceil(16);
            let last = cols - 16 * (vectors - 1);
            let mask: __mmask16 = if last == 16 { !0 } else { (1 << last) - 1 };
            for i0 in (0..m).step_by(MR) {
                let rows = (m - i0).min(MR);
                let t = Tile {
                    k,
                    a: a.ptr.offset(i0 as isize * a.rs),
                    a_rs: a.rs,
                    a_cs: a.cs,
                    b: b.add(j0),
                    b_rs,
                    c: c.add(i0 * c_rs + j0),
                    c_rs,
                    mask,
                    scale,
                };
                macro_rules! by_size {
                    ($($r:literal),*) => {
                        match (rows, vectors) {
                            $(
                                ($r, 1) => t.run::<$r, 1>(),
                                ($r, 2) => t.run::<$r, 2>(),
                                ($r, 3) => t.run::<$r, 3>(),
                                ($r, 4) => t.run::<$r, 4>(),
                            )*
                            _ => unreachable!("a tile is at most {MR} x {NR}"),
                        }
                    };
                }
                by_size!(1, 2, 3, 4, 5, 6);
            }
        }
    }

    /// One tile of C and where its operands start.
    struct Tile {
        k: usize,
        a: *const f32,
        a_rs: isize,
        a_cs: isize,
        b: *const f32,
        b_rs: usize,
        c: *mut f32,
        c_rs: usize,
        /// The lanes of the last vector that lie inside C.
        mask: __mmask16,
        scale: f32,
    }

    impl Tile {
        /// `R` rows by `V` vectors, the accumulators in registers throughout.
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn run<const R: usize, const V: usize>(&self) {
            let mut acc = [[_mm512_setzero_ps(); V]; R];
            let (mut ap, mut bp) = (self.a, self.b);
            for _ in 0..self.k {
                let mut bv = [_mm512_setzero_ps(); V];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = if v + 1 == V {
                        _mm512_maskz_loadu_ps(self.mask, bp.add(16 * v))
                    } else {
                        _mm512_loadu_ps(bp.add(16 * v))
                    };
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*ap.offset(r as isize * self.a_rs));
                    for (x, &bx) in row.iter_mut().zip(&bv) {
                        *x = _mm512_fmadd_ps(av, bx, *x);
                    }
                }
                ap = ap.offset(self.a_cs);
                bp = bp.add(self.b_rs);
            }
            let s = _mm512_set1_ps(self.scale);
            for (r, row) in acc.iter().enumerate() {
                let cr = self.c.add(r * self.c_rs);
                for (v, &x) in row.iter().enumerate() {
                    let y = _mm512_mul_ps(x, s);
                    if v + 1 == V {
                        _mm512_mask_storeu_ps(cr.add(16 * v), self.mask, y);
                    } else {
                        _mm512_storeu_ps(cr.add(16 * v), y);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product in f64 straight from the definition.
    fn naive(
        (m, n, k): (usize, usize, usize),
        a: &[f32],
        (a_rs, a_cs): (usize, usize),
        b: &[f32],
        b_rs: usize,
    ) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|kk| a[i * a_rs + kk * a_cs] as f64 * b[kk * b_rs + j] as f64)
                    .sum();
            }
        }
        c
    }

    #[test]
    fn tiles_of_every_size_and_a_transposed_a_match_the_naive_product() {
        let run = || {
            let mut out = vec![];
            // Rows and columns past whole tiles, a single row and column, k = 1.
            for &(m, n, k) in &[
                (6, 64, 64),
                (13, 70, 5),
                (1, 1, 1),
                (7, 16, 33),
                (20, 129, 64),
                (5, 17, 2),
            ] {
                for transposed in [false, true] {
                    // A is [m, k] in a buffer with a wider row (or its transpose).
                    let (a_rs, a_cs) = if transposed { (1, m + 3) } else { (k + 2, 1) };
                    let a: Vec<f32> = (0..(m + 3) * (k + 2))
                        .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
                        .collect();
                    let b_rs = n + 5;
                    let b: Vec<f32> = (0..k * b_rs)
                        .map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.021)
                        .collect();
                    // C inside a wider buffer: what lies past n must stay untouched.
                    let c_rs = n + 4;
                    let mut c = vec![7.0f32; m * c_rs];
                    unsafe {
                        product(
                            (m, n, k),
                            View {
                                ptr: a.as_ptr(),
                                rs: a_rs as isize,
                                cs: a_cs as isize,
                            },
                            b.as_ptr(),
                            b_rs,
                            c.as_mut_ptr(),
                            c_rs,
                            0.5,
                        )
                    };
                    let want = naive((m, n, k), &a, (a_rs, a_cs), &b, b_rs);
                    for i in 0..m {
                        for j in 0..n {
                            let (got, want) = (c[i * c_rs + j] as f64, 0.5 * want[i * n + j]);
                            assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{m}x{n}x{k} at ({i}, {j}): {got} vs {want}"
                            );
                        }
                        assert!(
                            c[i * c_rs + n..(i + 1) * c_rs].iter().all(|&x| x == 7.0),
                            "{m}x{n}x{k}: wrote past row {i}"
                        );
                    }
                    out.push(c);
                }
            }
            out
        };
        let wide = run();
        crate::wide::force_baseline(true);
        // The portable loop, checked against the same reference inside `run`.
        run();
        crate::wide::force_baseline(false);
        // The vector kernel's stated order: one fused multiply-add an element
        // of k, in ascending k, then the scaling.
        if crate::wide::level() == crate::wide::Level::Avx512 {
            let (m, n, k) = (13, 70, 5);
            let (a_rs, b_rs, c_rs) = (k + 2, n + 5, n + 4);
            let a: Vec<f32> = (0..(m + 3) * (k + 2))
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
                .collect();
            let b: Vec<f32> = (0..k * b_rs)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.021)
                .collect();
            for i in 0..m {
                for j in 0..n {
                    let fused = (0..k).fold(0.0f32, |s, kk| {
                        a[i * a_rs + kk].mul_add(b[kk * b_rs + j], s)
                    });
                    assert_eq!(
                        wide[2][i * c_rs + j].to_bits(),
                        (fused * 0.5).to_bits(),
                        "({i}, {j})"
                    );
                }
            }
        }
    }
}
