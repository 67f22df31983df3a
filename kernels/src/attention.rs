//! Causal multi-head self-attention straight from a packed `[B, T, 3·D]`
//! projection (q | k | v, heads side by side in each) to `[B, T, D]`, as one
//! autograd node.
//!
//! Composed from candle ops the same attention is ~14 nodes (narrows, reshapes,
//! head transposes and their copies, two batched matmuls, the softmax), each of
//! whose backwards candle accumulates into a fresh zero tensor, and it keeps two
//! `[B, H, T, T]` tensors alive for the backward. Here every (batch, head) pair is
//! one task: its q, k, v are read in place through strides, the scores live in a
//! T x T scratch buffer, and the backward recomputes them (flash attention's
//! trade: a cheap matmul instead of storing probabilities). Each task runs gemm
//! single-threaded and writes a disjoint slice, so the result does not depend on
//! the thread count.

use crate::gemm_call::{matmul, View};
use crate::linear;
use crate::real::{filled, typed_slice, AsSlice, Real};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
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

/// Rows per causal block. Row block `[r0, r1)` attends to columns `[0, r1)`
/// only, so the products skip the masked blocks above the diagonal (at T = 256,
/// 5/8 of the full square's work). Fixed, so the summation order never depends
/// on the machine or the thread count.
const BLOCK: usize = 64;

/// The row blocks `(r0, r1)` of a sequence of `t`.
fn blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t)
        .step_by(BLOCK)
        .map(move |r0| (r0, (r0 + BLOCK).min(t)))
}

/// The end of the block that row `i` lies in: columns past it are never computed.
#[inline(always)]
fn block_end(i: usize, t: usize) -> usize {
    ((i / BLOCK + 1) * BLOCK).min(t)
}

/// P = causal softmax(Q Kᵀ · scale) of one task into `p` ([T, T], rows `t` apart).
/// Only each row block's columns `[0, r1)` are written (zero above the
/// diagonal); the rest of `p` is left as it was and must never be read.
///
/// # Safety
/// `qkv` must hold the packed input of `dims`.
unsafe fn probabilities<T: Real>(qkv: &[T], dims: Dims, task: usize, p: &mut [T]) {
    let (t, hd, row) = (dims.t, dims.hd, 3 * dims.d());
    let [q, k, _] = dims.qkv(task);
    for (r0, r1) in blocks(t) {
        matmul(
            (r1 - r0, r1, hd),
            p.as_mut_ptr().add(r0 * t),
            t,
            None,
            View::rows(qkv.as_ptr().add(q + r0 * row), row),
            View::rows(qkv.as_ptr().add(k), row).t(),
            T::of(dims.scale()),
            Parallelism::None,
        );
    }
    softmax_rows(p, t);
}

crate::wide::wide_fn! {
/// Each row's causal softmax over its live entries, zeros to its block's end.
fn softmax_rows<T: Real>(p: &mut [T], t: usize) {
    for (i, r) in p.chunks_exact_mut(t).enumerate() {
        let end = block_end(i, t);
        // The exponentials and the scaling run on whole 16-wide vectors past
        // the live entries (the block's computed, masked scores), then the
        // masked ones are zeroed: a row's scalar remainder loop cost as much
        // as its vector body. The live values are the same either way.
        let padded = (i + 1).next_multiple_of(16).min(end);
        let max = row_max(&r[..=i]);
        r[..padded].iter_mut().for_each(|v| *v = (*v - max).exp());
        let inv = T::ONE / crate::wide::sum(&r[..=i]);
        r[..padded].iter_mut().for_each(|v| *v = *v * inv);
        r[i + 1..end].iter_mut().for_each(|v| *v = T::ZERO);
    }
}
}

crate::wide::wide_fn! {
/// dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale in place of dP, row by row over the
/// live entries, zeros to each row's block end.
fn score_grads<T: Real>(p: &[T], dp: &mut [T], t: usize, scale: T) {
    for (i, (pr, dr)) in p.chunks_exact(t).zip(dp.chunks_exact_mut(t)).enumerate() {
        let dot = crate::wide::dot(&pr[..=i], &dr[..=i]);
        for (d, &p) in dr[..=i].iter_mut().zip(&pr[..=i]) {
            *d = p * (*d - dot) * scale;
        }
        dr[i + 1..block_end(i, t)]
            .iter_mut()
            .for_each(|x| *x = T::ZERO);
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

fn forward<T: Real>(qkv: &[T], dims: Dims) -> Vec<T> {
    let (t, d) = (dims.t, dims.d());
    // SAFETY: every task writes its head's columns of every row (the blocks
    // cover all rows), and the tasks cover every (batch, head).
    unsafe {
        filled(dims.b * t * d, |y| {
            attend_all(qkv, dims, Shared(y.as_mut_ptr().cast()))
        })
    }
}

/// Y of every (batch, head) task into `out` (`[B, T, D]`).
fn attend_all<T: Real>(qkv: &[T], dims: Dims, out: Shared<T>) {
    let (t, hd, d) = (dims.t, dims.hd, dims.d());
    (0..dims.b * dims.heads).into_par_iter().for_each_init(
        || vec![T::ZERO; t * t],
        |p, task| {
            let [_, _, v] = dims.qkv(task);
            // SAFETY: offsets and strides stay inside the [B, T, 3D] input and the
            // [B, T, D] output; each task writes only its own head's columns.
            unsafe {
                probabilities(qkv, dims, task, p);
                // Y[r0..r1] = P[r0..r1, 0..r1] V[0..r1]
                for (r0, r1) in blocks(t) {
                    matmul(
                        (r1 - r0, hd, r1),
                        out.at(dims.out(task) + r0 * d),
                        d,
                        None,
                        View::rows(p.as_ptr().add(r0 * t), t),
                        View::rows(qkv.as_ptr().add(v), 3 * d),
                        T::ONE,
                        Parallelism::None,
                    );
                }
            }
        },
    );
}

/// d(qkv) from the packed input and dY ([B, T, D]).
fn backward<T: Real>(qkv: &[T], dy: &[T], dims: Dims) -> Vec<T> {
    // SAFETY: as in the forward: each task writes its head's q, k and v columns
    // of every row.
    unsafe {
        filled(qkv.len(), |dqkv| {
            grads_all(qkv, dy, dims, Shared(dqkv.as_mut_ptr().cast()))
        })
    }
}

/// dq, dk, dv of every (batch, head) task into `out` (`[B, T, 3D]`).
fn grads_all<T: Real>(qkv: &[T], dy: &[T], dims: Dims, out: Shared<T>) {
    let (t, hd, d) = (dims.t, dims.hd, dims.d());
    let row = 3 * d;
    (0..dims.b * dims.heads).into_par_iter().for_each_init(
        || (vec![T::ZERO; t * t], vec![T::ZERO; t * t]),
        |(p, dp), task| {
            let [q, k, v] = dims.qkv(task);
            let dy_view = View::rows(unsafe { dy.as_ptr().add(dims.out(task)) }, d);
            let at = |off: usize| View::rows(unsafe { qkv.as_ptr().add(off) }, row);
            // SAFETY: as in the forward; this task writes only its own head's q, k and
            // v columns of dqkv.
            unsafe {
                probabilities(qkv, dims, task, p);
                let (one, s) = (T::ONE, Parallelism::None);
                let (p, dp) = (p.as_mut_ptr(), dp.as_mut_ptr());
                for (r0, r1) in blocks(t) {
                    // dV[r0..r1] = P[r0.., r0..r1]ᵀ dY[r0..]: the rows before r0 are masked.
                    matmul(
                        (r1 - r0, hd, t - r0),
                        out.at(v + r0 * row),
                        row,
                        None,
                        View::rows(p.add(r0 * t + r0), t).t(),
                        dy_view.skip_rows(r0),
                        one,
                        s,
                    );
                    // dP[r0..r1, 0..r1] = dY[r0..r1] V[0..r1]ᵀ
                    matmul(
                        (r1 - r0, r1, hd),
                        dp.add(r0 * t),
                        t,
                        None,
                        dy_view.skip_rows(r0),
                        at(v).t(),
                        one,
                        s,
                    );
                }
                // dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale (zero where P is masked)
                score_grads(
                    std::slice::from_raw_parts(p, t * t),
                    std::slice::from_raw_parts_mut(dp, t * t),
                    t,
                    T::of(dims.scale()),
                );
                for (r0, r1) in blocks(t) {
                    // dQ[r0..r1] = dS[r0..r1, 0..r1] K[0..r1]
                    matmul(
                        (r1 - r0, hd, r1),
                        out.at(q + r0 * row),
                        row,
                        None,
                        View::rows(dp.add(r0 * t), t),
                        at(k),
                        one,
                        s,
                    );
                    // dK[r0..r1] = dS[r0.., r0..r1]ᵀ Q[r0..]
                    matmul(
                        (r1 - r0, hd, t - r0),
                        out.at(k + r0 * row),
                        row,
                        None,
                        View::rows(dp.add(r0 * t + r0), t).t(),
                        at(q + r0 * row),
                        one,
                        s,
                    );
                }
            }
        },
    );
}

struct Forward {
    heads: usize,
}
pub(crate) struct Backward {
    pub(crate) heads: usize,
}

fn dispatch<T: Real>(
    name: &str,
    s1: &CpuStorage,
    l1: &Layout,
    s2: Option<(&CpuStorage, &Layout)>,
    heads: usize,
) -> Result<(CpuStorage, Shape)>
where
    CpuStorage: AsSlice<T>,
{
    let dims = Dims::of(l1.shape(), heads)?;
    let qkv = typed_slice::<T>(s1, l1, name)?;
    Ok(match s2 {
        None => (
            T::storage(forward(qkv, dims)),
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
            (T::storage(backward(qkv, dy, dims)), l1.shape().clone())
        }
    })
}

fn run(
    name: &str,
    s1: &CpuStorage,
    l1: &Layout,
    s2: Option<(&CpuStorage, &Layout)>,
    heads: usize,
) -> Result<(CpuStorage, Shape)> {
    match s1 {
        CpuStorage::F32(_) => dispatch::<f32>(name, s1, l1, s2, heads),
        CpuStorage::F64(_) => dispatch::<f64>(name, s1, l1, s2, heads),
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
        run(self.name(), s, l, None, self.heads)
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
        run(self.name(), s1, l1, Some((s2, l2)), self.heads)
    }
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

/// The attention as the epilogue of the `c_attn` projection: one node whose
/// kept q | k | v (three times the width of the stream) has no gradient
/// tensor of its own in candle's graph.
pub(crate) struct Heads(pub(crate) usize);

impl linear::Epilogue for Heads {
    fn name(&self) -> &'static str {
        "speedrun-projected-causal-attention"
    }

    fn forward<T: Real>(&self, qkv: &[T], shape: &Shape) -> Result<(Vec<T>, Shape)> {
        let dims = Dims::of(shape, self.0)?;
        Ok((forward(qkv, dims), Shape::from((dims.b, dims.t, dims.d()))))
    }

    fn backward(&self, qkv: &Tensor, grad: &Tensor) -> Result<Tensor> {
        qkv.apply_op2_no_bwd(grad, &Backward { heads: self.0 })
    }

    fn apart(&self, qkv: &Tensor) -> Result<Tensor> {
        causal_attention_packed(qkv, self.0)
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
    linear::linear_then(x, w, b, Heads(heads))
}

#[cfg(test)]
mod row_max_tests {
    use super::row_max;

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
