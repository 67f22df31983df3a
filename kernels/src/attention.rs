//! Causal multi-head self-attention straight from a packed `[B, T, 3·D]`
//! projection (q | k | v, heads side by side in each) to `[B, T, D]`, as one
//! autograd node.
//!
//! Composed from candle ops the same attention is ~14 nodes (narrows, reshapes,
//! head transposes and their copies, two batched matmuls, the softmax), each of
//! whose backwards candle accumulates into a fresh zero tensor, and it keeps two
//! `[B, H, T, T]` tensors alive for the backward. Here every (batch, head) pair is
//! one task: its q, k, v are read in place through strides, the scores of a
//! tile of rows live in a small scratch buffer, and the backward recomputes them
//! (flash attention's trade: a cheap product instead of storing probabilities).
//! The products are [`tile`]'s register tiles, not gemm calls: at a head's
//! sizes gemm's packing cost as much as its arithmetic. Each task writes a
//! disjoint slice, so the result does not depend on the thread count.

use crate::gemm_call::View;
use crate::linear;
use crate::real::{filled, typed_slice, AsSlice, Real};
use crate::tile;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    heads: usize,
    hd: usize,
}

impl Dims {
    fn of(shape: &Shape, heads: usize) -> Result<Dims> {
        let (b, t, d3) = shape.dims3()?;
        if heads == 0 || d3 % (3 * heads) != 0 {
            bail!(
                "causal_attention_packed: the last dim {d3} is not 3 x heads ({heads}) x head size"
            )
        }
        Ok(Dims {
            b,
            t,
            heads,
            hd: d3 / (3 * heads),
        })
    }
    fn d(&self) -> usize {
        self.heads * self.hd
    }
    /// Offsets of (q, k, v) of task `(batch, head)` in the packed input, whose rows are 3D apart.
    fn qkv(&self, task: usize) -> [usize; 3] {
        let (bi, h) = (task / self.heads, task % self.heads);
        let base = bi * self.t * 3 * self.d() + h * self.hd;
        [base, base + self.d(), base + 2 * self.d()]
    }
    /// Offsets of (q, k, v) of task `(batch, head)` in the `[3D]` bias.
    fn bias(&self, task: usize) -> [usize; 3] {
        let h = task % self.heads * self.hd;
        [h, h + self.d(), h + 2 * self.d()]
    }
    /// Offset of task `(batch, head)` in a `[B, T, D]` tensor.
    fn out(&self, task: usize) -> usize {
        let (bi, h) = (task / self.heads, task % self.heads);
        bi * self.t * self.d() + h * self.hd
    }
    fn scale(&self) -> f64 {
        1.0 / (self.hd as f64).sqrt()
    }
}

/// A pointer tasks may share because each writes a disjoint set of elements.
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// Through a method, so closures capture the `Send` wrapper, not its raw field.
    fn at(&self, offset: usize) -> *mut T {
        // SAFETY: callers pass offsets inside the buffer the pointer came from.
        unsafe { self.0.add(offset) }
    }
}

/// The row tiles `(r0, r1)` of a sequence of `t`, one tile of the products'
/// rows each. Row tile `[r0, r1)` attends to columns `[0, r1)` only, so the
/// products skip nearly all of the masked square above the diagonal. Fixed by
/// the shape alone, so the work never depends on the thread count.
fn tiles(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t)
        .step_by(tile::MR)
        .map(move |r0| (r0, (r0 + tile::MR).min(t)))
}

/// The row stride of the scratch matrices with `t` columns: whole vectors, and
/// an odd number of 64-byte lines, so that the rows a product reads down a
/// column fall in different cache sets (at t = 256 a 1 KiB stride put every
/// fourth row in the same set and the reads went to L2).
fn padded(t: usize) -> usize {
    t.next_multiple_of(16) | 16
}

/// `t` rows of `hd` (one head's q, k, v or dy, read in place, rows `row`
/// apart) as a contiguous `[t, hd]`: the layout the tiled products read a B
/// of rows in. Whole rows at a time, so the reads from memory stream. With
/// `bias` (the head's `hd` entries of c_attn's bias), each row plus the bias:
/// the block's projection leaves the bias out for this pass to add, the one
/// rounding gemm's `bias + product` makes, without the pass that writes the
/// bias rows for gemm to read back.
///
/// # Safety
/// `src` must address `t` rows `row` apart of at least `hd` elements.
#[inline(always)]
unsafe fn gather<T: Real>(
    src: *const T,
    row: usize,
    (t, hd): (usize, usize),
    bias: Option<&[T]>,
    dst: &mut [T],
) {
    for (j, d) in dst[..t * hd].chunks_exact_mut(hd).enumerate() {
        let r = std::slice::from_raw_parts(src.add(j * row), hd);
        match bias {
            None => d.copy_from_slice(r),
            Some(b) => {
                for ((d, &r), &b) in d.iter_mut().zip(r).zip(&b[..hd]) {
                    *d = r + b;
                }
            }
        }
    }
}

/// A gathered `[t, hd]` as `hd` rows of `t`, `padded(t)` apart: Kᵀ or Vᵀ as
/// the B of `Q Kᵀ` and `dY Vᵀ`. Read from the contiguous copy, in cache.
/// f32 on a CPU with AVX-512 moves whole 16 × 16 blocks through registers:
/// element by element, one of the two sides is a strided scalar access, and
/// the copies were a quarter of the attention backward's own time.
#[inline(always)]
fn transpose<T: Real>(src: &[T], (t, hd): (usize, usize), dst: &mut [T]) {
    let tp = padded(t);
    assert!(src.len() >= t * hd && dst.len() >= hd * tp);
    let (mut tb, mut hb) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if crate::wide::f32_avx512::<T>() {
        (tb, hb) = (t / 16 * 16, hd / 16 * 16);
        for j0 in (0..tb).step_by(16) {
            for k0 in (0..hb).step_by(16) {
                // SAFETY: T is f32 and the CPU has AVX-512 (checked above); the
                // block's 16 rows of 16 lie inside src (j0 + 16 ≤ t, k0 + 16 ≤
                // hd) and its 16 rows of 16 inside dst (k0 + 16 ≤ hd, j0 + 16 ≤
                // t ≤ tp), by the assert.
                unsafe {
                    let from = src.as_ptr().add(j0 * hd + k0).cast::<f32>();
                    let to = dst.as_mut_ptr().add(k0 * tp + j0).cast::<f32>();
                    avx512::transpose_16(from, hd, to, tp);
                }
            }
        }
    }
    // What the blocks leave: the columns past the last whole block of hd
    // for every row, and the rows past the last whole block of t.
    for (kk, d) in dst.chunks_exact_mut(tp).take(hd).enumerate() {
        let j_from = if kk < hb { tb } else { 0 };
        for (j, x) in d[..t].iter_mut().enumerate().skip(j_from) {
            *x = src[j * hd + kk];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// `dst[k·dst_rs + i] = src[i·src_rs + k]` for i, k < 16: 16 row loads,
    /// three rounds of interleaving (32-bit pairs, 64-bit pairs, 128-bit
    /// lanes), 16 row stores.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, and the 16 rows of 16 at `src` (`src_rs`
    /// apart) and at `dst` (`dst_rs` apart) must be in bounds.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_16(
        src: *const f32,
        src_rs: usize,
        dst: *mut f32,
        dst_rs: usize,
    ) {
        // Plain loops, no closures: a closure is compiled without the features.
        let mut r = [_mm512_setzero_ps(); 16];
        for (i, v) in r.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(src.add(i * src_rs));
        }
        // t[2p], t[2p+1]: rows 2p and 2p+1 interleaved, per 128-bit lane L
        // (r0[4L], r1[4L], r0[4L+1], r1[4L+1]) and the upper half.
        let mut t = [_mm512_setzero_ps(); 16];
        for p in 0..8 {
            t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
            t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
        }
        // u[4g + c], lane L: column 4L + c of rows 4g..4g+4.
        let mut u = [_mm512_setzero_ps(); 16];
        for g in 0..4 {
            for h in 0..2 {
                let a = _mm512_castps_pd(t[4 * g + h]);
                let b = _mm512_castps_pd(t[4 * g + 2 + h]);
                u[4 * g + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
                u[4 * g + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
            }
        }
        for c in 0..4 {
            // Lanes 0, 1 (x) and 2, 3 (y) of rows 0-7, the same (z, w) of rows 8-15.
            let x = _mm512_shuffle_f32x4::<0x44>(u[c], u[4 + c]);
            let y = _mm512_shuffle_f32x4::<0xEE>(u[c], u[4 + c]);
            let z = _mm512_shuffle_f32x4::<0x44>(u[8 + c], u[12 + c]);
            let w = _mm512_shuffle_f32x4::<0xEE>(u[8 + c], u[12 + c]);
            // Column 4L + c of all 16 rows: lane L of u[c], u[4+c], u[8+c], u[12+c].
            let out = [
                _mm512_shuffle_f32x4::<0x88>(x, z),
                _mm512_shuffle_f32x4::<0xDD>(x, z),
                _mm512_shuffle_f32x4::<0x88>(y, w),
                _mm512_shuffle_f32x4::<0xDD>(y, w),
            ];
            for (l, v) in out.into_iter().enumerate() {
                _mm512_storeu_ps(dst.add((4 * l + c) * dst_rs), v);
            }
        }
    }
}

/// `P[r0..r1, 0..r1] = causal softmax(Q[r0..r1] Kᵀ · scale)` into `p` (rows
/// `padded(t)` apart, its first row being row `r0`), from `q`, the view of
/// Q's rows, and Kᵀ (`kt`, `[hd, t]` as [`transpose`] lays it out); zeros from
/// each row's diagonal to `r1`.
///
/// # Safety
/// `q` must address `r1` rows of `hd`; `p` must hold `r1 - r0` rows.
#[inline(always)]
unsafe fn probabilities<T: Real>(
    q: View<T>,
    kt: &[T],
    dims: Dims,
    (r0, r1): (usize, usize),
    p: &mut [T],
) {
    let (hd, tp) = (dims.hd, padded(dims.t));
    // Scores to whole vectors past r1 (masked, and zero columns of Kᵀ's
    // padding past t), so that every row's softmax runs on whole vectors.
    tile::product(
        (r1 - r0, r1.next_multiple_of(16), hd),
        q.skip_rows(r0),
        kt.as_ptr(),
        tp,
        p.as_mut_ptr(),
        tp,
        T::of(dims.scale()),
    );
    softmax_rows(&mut p[..(r1 - r0) * tp], (r0, r1), tp);
}

crate::wide::wide_fn! {
/// Each row's causal softmax over its live entries, zeros to the tile's end
/// `r1` (rows `t` apart, the first being row `r0`; at most a tile of rows).
///
/// Phase by phase over the tile's rows (maxima, exponentials, sums, scaling),
/// not row by row: one row's phases depend on each other, and a row is short,
/// so row by row the exponentials' latency was exposed; the rows of one phase
/// are independent and overlap.
fn softmax_rows<T: Real>(p: &mut [T], tile: (usize, usize), t: usize) {
    let (r0, r1) = tile;
    // The exponentials and the scaling run on whole 16-wide vectors past the
    // live entries (the computed, masked scores), then the masked ones up to
    // r1 are zeroed: a row's scalar remainder loop cost as much as its vector
    // body. The live values are the same either way; what lies past r1 is
    // never read.
    let mut scale = [T::ZERO; tile::MR];
    for ((i, r), m) in (r0..r1).zip(p.chunks_exact(t)).zip(&mut scale) {
        *m = row_max(&r[..=i]);
    }
    for ((i, r), &m) in (r0..r1).zip(p.chunks_exact_mut(t)).zip(&scale) {
        r[..(i + 1).next_multiple_of(16)].iter_mut().for_each(|v| *v = (*v - m).exp());
    }
    for ((i, r), inv) in (r0..r1).zip(p.chunks_exact(t)).zip(&mut scale) {
        *inv = T::ONE / crate::wide::sum(&r[..=i]);
    }
    for ((i, r), &inv) in (r0..r1).zip(p.chunks_exact_mut(t)).zip(&scale) {
        r[..(i + 1).next_multiple_of(16)].iter_mut().for_each(|v| *v = *v * inv);
        r[i + 1..r1].iter_mut().for_each(|v| *v = T::ZERO);
    }
}
}

crate::wide::wide_fn! {
/// dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale in place of dP, row by row over the
/// live entries, zeros to the tile's end `r1`.
fn score_grads<T: Real>(p: &[T], dp: &mut [T], tile: (usize, usize), t: usize, scale: T) {
    let (r0, r1) = tile;
    for (i, (pr, dr)) in (r0..).zip(p.chunks_exact(t).zip(dp.chunks_exact_mut(t))) {
        let dot = crate::wide::dot(&pr[..=i], &dr[..=i]);
        for (d, &p) in dr[..=i].iter_mut().zip(&pr[..=i]) {
            *d = p * (*d - dot) * scale;
        }
        dr[i + 1..r1].iter_mut().for_each(|x| *x = T::ZERO);
    }
}
}

/// The largest element, in 16 lanes: a maximum is exact in any order, so
/// this is the serial fold's value, but the loop vectorises.
#[inline(always)]
fn row_max<T: Real>(row: &[T]) -> T {
    let mut lanes = [row[0]; 16];
    let mut chunks = row.chunks_exact(16);
    for c in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            if v > *m {
                *m = v;
            }
        }
    }
    let tail = chunks.remainder().iter();
    lanes
        .iter()
        .chain(tail)
        .fold(row[0], |m, &v| if v > m { v } else { m })
}

/// Y (`[B, T, D]`) of the packed `qkv`, plus `bias` (`[3D]`) when given.
fn forward<T: Real>(qkv: &[T], bias: Option<&[T]>, dims: Dims) -> Vec<T> {
    let (t, d) = (dims.t, dims.d());
    // SAFETY: every task writes its head's columns of every row (the tiles
    // cover all rows), and the tasks cover every (batch, head).
    unsafe {
        filled(dims.b * t * d, |y| {
            attend_all(qkv, bias, dims, Shared(y.as_mut_ptr().cast()))
        })
    }
}

/// Y of every (batch, head) task into `out` (`[B, T, D]`).
fn attend_all<T: Real>(qkv: &[T], bias: Option<&[T]>, dims: Dims, out: Shared<T>) {
    let (t, hd, tp) = (dims.t, dims.hd, padded(dims.t));
    (0..dims.b * dims.heads).into_par_iter().for_each_init(
        || AttendScratch {
            q: vec![T::ZERO; if bias.is_some() { t * hd } else { 0 }],
            k: vec![T::ZERO; t * hd],
            kt: vec![T::ZERO; hd * tp],
            v: vec![T::ZERO; t * hd],
            p: vec![T::ZERO; tile::MR * tp],
        },
        // SAFETY: the tasks cover every (batch, head) once.
        |s, task| attend(qkv, bias, dims, task, s, out),
    );
}

/// Scratch of one forward task, laid out by [`gather`] and [`transpose`]:
/// Q (with a bias to add; read in place otherwise), K, Kᵀ, V, and one row
/// tile's P (rows `padded(T)` apart).
struct AttendScratch<T> {
    q: Vec<T>,
    k: Vec<T>,
    kt: Vec<T>,
    v: Vec<T>,
    p: Vec<T>,
}

crate::wide::wide_fn! {
/// One task's Y: each row tile's probabilities, then at once its rows of
/// `P V`. The whole task is one wide function, so that no baseline code runs
/// between its vector kernels.
///
/// `qkv` must hold the packed input of `dims` and `out` a `[B, T, D]` output;
/// the task writes only its own head's columns of it, so tasks may share it.
fn attend<T: Real>(
    qkv: &[T],
    bias: Option<&[T]>,
    dims: Dims,
    task: usize,
    s: &mut AttendScratch<T>,
    out: Shared<T>,
) {
    // SAFETY: the caller's promise above.
    unsafe {
        let (t, hd, d, tp) = (dims.t, dims.hd, dims.d(), padded(dims.t));
        let row = 3 * d;
        let [q, k, v] = dims.qkv(task);
        let [bq, bk, bv] = dims.bias(task);
        let at = |off: usize| qkv.as_ptr().add(off);
        gather(at(k), row, (t, hd), bias.map(|b| &b[bk..]), &mut s.k);
        transpose(&s.k, (t, hd), &mut s.kt);
        gather(at(v), row, (t, hd), bias.map(|b| &b[bv..]), &mut s.v);
        let qs = match bias {
            Some(b) => {
                gather(at(q), row, (t, hd), Some(&b[bq..]), &mut s.q);
                View::rows(s.q.as_ptr(), hd)
            }
            None => View::rows(at(q), row),
        };
        for (r0, r1) in tiles(t) {
            probabilities(qs, &s.kt, dims, (r0, r1), &mut s.p);
            // Y[r0..r1] = P[r0..r1, 0..r1] V[0..r1]
            tile::product(
                (r1 - r0, hd, r1),
                View::rows(s.p.as_ptr(), tp),
                s.v.as_ptr(),
                hd,
                out.at(dims.out(task) + r0 * d),
                d,
                T::ONE,
            );
        }
    }
}
}

/// d(qkv) from the packed input (plus `bias`, when given) and dY ([B, T, D]).
fn backward<T: Real>(qkv: &[T], bias: Option<&[T]>, dy: &[T], dims: Dims) -> Vec<T> {
    // SAFETY: as in the forward: each task writes its head's q, k and v columns
    // of every row.
    unsafe {
        filled(qkv.len(), |dqkv| {
            grads_all(qkv, bias, dy, dims, Shared(dqkv.as_mut_ptr().cast()))
        })
    }
}

/// Scratch of one backward task, laid out by [`gather`] and [`transpose`]:
/// Kᵀ and Vᵀ; Q, K, V and dY; P and dS (`[T, T]`, rows `padded(T)` apart).
struct Scratch<T> {
    kt: Vec<T>,
    vt: Vec<T>,
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    dy: Vec<T>,
    p: Vec<T>,
    ds: Vec<T>,
}

/// dq, dk, dv of every (batch, head) task into `out` (`[B, T, 3D]`).
fn grads_all<T: Real>(qkv: &[T], bias: Option<&[T]>, dy: &[T], dims: Dims, out: Shared<T>) {
    let (t, hd, tp) = (dims.t, dims.hd, padded(dims.t));
    (0..dims.b * dims.heads).into_par_iter().for_each_init(
        || Scratch {
            kt: vec![T::ZERO; hd * tp],
            vt: vec![T::ZERO; hd * tp],
            q: vec![T::ZERO; t * hd],
            k: vec![T::ZERO; t * hd],
            v: vec![T::ZERO; t * hd],
            dy: vec![T::ZERO; t * hd],
            p: vec![T::ZERO; t * tp],
            ds: vec![T::ZERO; t * tp],
        },
        // SAFETY: the tasks cover every (batch, head) once.
        |s, task| grads(qkv, bias, dy, dims, task, s, out),
    );
}

crate::wide::wide_fn! {
/// One task's dq, dk, dv. A first pass over the row tiles recomputes P, makes
/// dS and dQ; a second, over the same tiles as columns, makes dV = Pᵀ dY and
/// dK = dSᵀ Q, whose A operand is a column of P or dS: a tile's zeros past
/// the diagonal mask both.
///
/// As [`attend`], with `dy` and `out` of the shapes [`grads_all`] states.
fn grads<T: Real>(
    qkv: &[T],
    bias: Option<&[T]>,
    dy: &[T],
    dims: Dims,
    task: usize,
    s: &mut Scratch<T>,
    out: Shared<T>,
) {
    // SAFETY: the caller's promise above.
    unsafe {
        let (t, hd, d, tp) = (dims.t, dims.hd, dims.d(), padded(dims.t));
        let row = 3 * d;
        let [q, k, v] = dims.qkv(task);
        let [bq, bk, bv] = dims.bias(task);
        let at = |off: usize| qkv.as_ptr().add(off);
        gather(at(q), row, (t, hd), bias.map(|b| &b[bq..]), &mut s.q);
        gather(at(k), row, (t, hd), bias.map(|b| &b[bk..]), &mut s.k);
        gather(at(v), row, (t, hd), bias.map(|b| &b[bv..]), &mut s.v);
        gather(dy.as_ptr().add(dims.out(task)), d, (t, hd), None, &mut s.dy);
        transpose(&s.k, (t, hd), &mut s.kt);
        transpose(&s.v, (t, hd), &mut s.vt);
        for (r0, r1) in tiles(t) {
            let (p, ds) = (&mut s.p[r0 * tp..r1 * tp], &mut s.ds[r0 * tp..r1 * tp]);
            probabilities(View::rows(s.q.as_ptr(), hd), &s.kt, dims, (r0, r1), p);
            // dP[r0..r1, 0..r1] = dY[r0..r1] V[0..r1]ᵀ
            tile::product(
                (r1 - r0, r1, hd),
                View::rows(s.dy.as_ptr().add(r0 * hd), hd),
                s.vt.as_ptr(),
                tp,
                ds.as_mut_ptr(),
                tp,
                T::ONE,
            );
            score_grads(p, ds, (r0, r1), tp, T::of(dims.scale()));
            // dQ[r0..r1] = dS[r0..r1, 0..r1] K[0..r1]
            tile::product(
                (r1 - r0, hd, r1),
                View::rows(ds.as_ptr(), tp),
                s.k.as_ptr(),
                hd,
                out.at(q + r0 * row),
                row,
                T::ONE,
            );
        }
        // Column j of P (or dS) read down its rows i ≥ r0.
        let column = |m: &[T], r0: usize| View {
            ptr: m.as_ptr().add(r0 * tp + r0),
            rs: 1,
            cs: tp as isize,
        };
        for (r0, r1) in tiles(t) {
            // dV[r0..r1] = P[r0.., r0..r1]ᵀ dY[r0..] and dK[r0..r1] = dS[r0.., r0..r1]ᵀ Q[r0..]:
            // the rows before r0 are masked.
            for (m, rows, o) in [(&s.p, &s.dy, v), (&s.ds, &s.q, k)] {
                tile::product(
                    (r1 - r0, hd, t - r0),
                    column(m, r0),
                    rows.as_ptr().add(r0 * hd),
                    hd,
                    out.at(o + r0 * row),
                    row,
                    T::ONE,
                );
            }
        }
    }
}
}

struct Forward {
    heads: usize,
}
pub(crate) struct Backward {
    pub(crate) heads: usize,
}

/// The storage and layout of an op's argument.
type Arg<'a> = (&'a CpuStorage, &'a Layout);

fn dispatch<T: Real>(
    name: &str,
    (s1, l1): Arg,
    bias: Option<Arg>,
    s2: Option<Arg>,
    heads: usize,
) -> Result<(CpuStorage, Shape)>
where
    CpuStorage: AsSlice<T>,
{
    let dims = Dims::of(l1.shape(), heads)?;
    let qkv = typed_slice::<T>(s1, l1, name)?;
    let bias = match bias {
        Some((s, l)) => {
            if l.shape().dims() != [3 * dims.d()] {
                bail!(
                    "{name}: bias {:?} is not the packed projection's [{}]",
                    l.shape(),
                    3 * dims.d()
                )
            }
            Some(typed_slice::<T>(s, l, name)?)
        }
        None => None,
    };
    Ok(match s2 {
        None => (
            T::storage(forward(qkv, bias, dims)),
            Shape::from((dims.b, dims.t, dims.d())),
        ),
        Some((s2, l2)) => {
            if l2.shape().dims() != [dims.b, dims.t, dims.d()] {
                bail!(
                    "{name}: gradient {:?} does not match the output",
                    l2.shape()
                )
            }
            let dy = typed_slice::<T>(s2, l2, name)?;
            (
                T::storage(backward(qkv, bias, dy, dims)),
                l1.shape().clone(),
            )
        }
    })
}

/// The forward (no `s2`) or the backward (`s2` the output's gradient) of
/// `qkv`, plus `bias` when given.
fn run(
    name: &str,
    qkv: Arg,
    bias: Option<Arg>,
    s2: Option<Arg>,
    heads: usize,
) -> Result<(CpuStorage, Shape)> {
    match qkv.0 {
        CpuStorage::F32(_) => dispatch::<f32>(name, qkv, bias, s2, heads),
        CpuStorage::F64(_) => dispatch::<f64>(name, qkv, bias, s2, heads),
        o => bail!(
            "{name}: unsupported dtype {:?} (f32 or f64)",
            candle_core::backend::BackendStorage::dtype(o)
        ),
    }
}

impl CustomOp1 for Forward {
    fn name(&self) -> &'static str {
        "speedrun-causal-attention-packed"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        run(self.name(), (s, l), None, None, self.heads)
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(
            qkv.apply_op2_no_bwd(&g, &Backward { heads: self.heads })?,
        ))
    }
}

impl CustomOp2 for Backward {
    fn name(&self) -> &'static str {
        "speedrun-causal-attention-packed-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        run(self.name(), (s1, l1), None, Some((s2, l2)), self.heads)
    }
}

/// The attention of `qkv + bias` (bias `[3D]`), untracked: what the block
/// and `projected_causal_attention` run on c_attn's product without its bias.
struct BiasedForward {
    heads: usize,
}

/// Its backward: d(qkv) from `qkv`, the bias and dY.
struct BiasedBackward {
    heads: usize,
}

impl CustomOp2 for BiasedForward {
    fn name(&self) -> &'static str {
        "speedrun-causal-attention-biased"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        run(self.name(), (s1, l1), Some((s2, l2)), None, self.heads)
    }
}

impl CustomOp3 for BiasedBackward {
    fn name(&self) -> &'static str {
        "speedrun-causal-attention-biased-backward"
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
        run(
            self.name(),
            (s1, l1),
            Some((s2, l2)),
            Some((s3, l3)),
            self.heads,
        )
    }
}

/// `causal_attention_packed(qkv + bias)` on the CPU, untracked, the bias added
/// as the kernel gathers each head (no pass over `qkv` to add it). Equal bit
/// for bit to the attention of gemm's `bias + product`: one rounding either way.
pub(crate) fn biased(qkv: &Tensor, bias: &Tensor, heads: usize) -> Result<Tensor> {
    qkv.contiguous()?
        .apply_op2_no_bwd(&bias.contiguous()?, &BiasedForward { heads })
}

/// The gradient of [`biased`] with respect to `qkv` (and so to the bias: the
/// same, summed over rows), from the output's `dy`.
pub(crate) fn biased_grad(
    qkv: &Tensor,
    bias: &Tensor,
    dy: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    qkv.contiguous()?.apply_op3_no_bwd(
        &bias.contiguous()?,
        &dy.contiguous()?,
        &BiasedBackward { heads },
    )
}

/// softmax(q kᵀ / √hd + causal mask) v for every head, with q, k, v packed in the
/// last dim of `qkv` (`[B, T, 3·D]`: all heads' q, then k, then v, as a fused
/// `c_attn` projection makes them) and the heads' outputs side by side in `[B, T, D]`.
pub fn causal_attention_packed(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    Dims::of(qkv.shape(), heads)?;
    if !qkv.device().is_cpu() {
        return crate::gemm_ops::causal_attention_packed(qkv, heads);
    }
    qkv.contiguous()?.apply_op1(Forward { heads })
}

/// The gradient of [`causal_attention_packed`] with respect to `qkv`, given
/// the output's gradient `dy` (`[B, T, D]`): the backward alone, for
/// benchmarks. On the CPU it is the op's own backward; elsewhere candle's
/// autograd through the forward.
pub fn causal_attention_packed_grad(qkv: &Tensor, dy: &Tensor, heads: usize) -> Result<Tensor> {
    Dims::of(qkv.shape(), heads)?;
    if qkv.device().is_cpu() {
        return qkv
            .contiguous()?
            .apply_op2_no_bwd(&dy.contiguous()?, &Backward { heads });
    }
    let x = candle_core::Var::from_tensor(qkv)?;
    let y = causal_attention_packed(x.as_tensor(), heads)?;
    let grads = (y * dy)?.sum_all()?.backward()?;
    match grads.get(x.as_tensor()) {
        Some(g) => Ok(g.clone()),
        None => bail!("causal_attention_packed_grad: no gradient reached qkv"),
    }
}

/// The attention as the epilogue of the `c_attn` projection: one node whose
/// kept q | k | v (three times the width of the stream) has no gradient
/// tensor of its own in candle's graph. The node keeps the product without
/// its bias; the attention adds the bias (`bias`, c_attn's) as it reads.
pub(crate) struct Heads {
    heads: usize,
    bias: Tensor,
}

impl linear::Epilogue for Heads {
    fn name(&self) -> &'static str {
        "speedrun-projected-causal-attention"
    }

    fn backward(&self, qkv: &Tensor, grad: &Tensor) -> Result<Tensor> {
        biased_grad(qkv, &self.bias, grad, self.heads)
    }

    fn apart(&self, qkv: &Tensor) -> Result<Tensor> {
        causal_attention_packed(qkv, self.heads)
    }

    /// The product alone, then the attention adding the bias as it gathers.
    fn forward_linear<T: Real>(
        &self,
        x: &[T],
        w: &[T],
        b: &[T],
        inner: usize,
        out: usize,
        shape: &Shape,
    ) -> Result<(Vec<T>, Vec<T>, Shape)> {
        let dims = Dims::of(shape, self.heads)?;
        let qkv = linear::fwd(x, w, None, inner, out);
        let y = forward(&qkv, Some(b), dims);
        Ok((qkv, y, Shape::from((dims.b, dims.t, dims.d()))))
    }
}

/// Causal attention of the packed projection `x @ w + b` (`w`: `[D, 3D]`) as one
/// node on the CPU; the two ops elsewhere.
pub fn projected_causal_attention(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    let epilogue = Heads {
        heads,
        bias: b.clone(),
    };
    linear::linear_then(x, w, b, epilogue)
}

#[cfg(test)]
mod tests {
    use super::{padded, row_max, transpose};

    #[test]
    fn the_blocked_transpose_is_the_element_by_element_one() {
        // Whole 16 × 16 blocks, and every kind of remainder around them.
        for (t, hd) in [(16, 16), (256, 64), (37, 16), (32, 24), (45, 70), (7, 5)] {
            let src: Vec<f32> = (0..t * hd).map(|i| i as f32 * 0.5 - 3.0).collect();
            let tp = padded(t);
            let mut got = vec![f32::NAN; hd * tp];
            transpose(&src, (t, hd), &mut got);
            for k in 0..hd {
                for j in 0..t {
                    let (g, want) = (got[k * tp + j], src[j * hd + k]);
                    assert_eq!(g.to_bits(), want.to_bits(), "t {t}, hd {hd}: [{k}, {j}]");
                }
            }
            // The padding past t is left as it was.
            assert!(got.chunks(tp).all(|r| r[t..].iter().all(|v| v.is_nan())));
        }
    }

    #[test]
    fn the_lane_maximum_is_the_serial_maximum_at_every_length() {
        for n in 1..70 {
            let row: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 23) as f32 - 30.0) * 0.37)
                .collect();
            let serial = row.iter().fold(row[0], |m, &v| if v > m { v } else { m });
            assert_eq!(row_max(&row).to_bits(), serial.to_bits(), "length {n}");
        }
        // The largest in the tail, after the last full chunk.
        let mut row = vec![-5.0f32; 35];
        row[34] = 2.0;
        assert_eq!(row_max(&row), 2.0);
    }
}
