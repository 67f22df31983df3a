//! A linear layer `x @ w + b` over any leading dimensions as one autograd node.
//!
//! Composed from candle ops it is four nodes (reshape, matmul, bias add,
//! reshape), and candle's backward accumulates every node's input gradient into
//! a fresh zero tensor: three activation-sized zero-fills and adds per layer that
//! this node does not make. The bias rides in gemm's `alpha·dst` term (the output
//! starts as the bias rows), so the forward makes no second pass either.

use crate::activation::{self, Act};
use crate::bias::ColumnSum;
use crate::gemm_call::{matmul, parallel, View};
use crate::real::{filled, typed_slice, with_cpu, with_float, with_float2, AsSlice, Real};
use crate::{ELEM_CHUNK, ROW_CHUNK};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;
use std::sync::OnceLock;

/// `[rows, inner] @ [inner, out] (+ bias)`, all row-major and contiguous.
pub(crate) fn fwd<T: Real>(x: &[T], w: &[T], b: Option<&[T]>, inner: usize, out: usize) -> Vec<T> {
    let rows = x.len() / inner;
    assert!(w.len() == inner * out && x.len() == rows * inner);
    // SAFETY: the asserts above bound every element gemm reads or writes through
    // these row-major strides; y is a fresh buffer aliasing neither input, and
    // every element is written: the bias rows first, or gemm's product alone.
    unsafe {
        filled(rows * out, |y| {
            if let Some(b) = b {
                assert_eq!(b.len(), out);
                y.par_chunks_mut(out).for_each(|r| {
                    for (o, &v) in r.iter_mut().zip(b) {
                        o.write(v);
                    }
                });
            }
            matmul(
                (rows, out, inner),
                y.as_mut_ptr().cast::<T>(),
                out,
                b.map(|_| T::ONE),
                View::rows(x.as_ptr(), inner),
                View::rows(w.as_ptr(), out),
                T::ONE,
                parallel(),
            )
        })
    }
}

/// Rows of the batch one partial weight gradient sums over. `xᵀ g` reduces over
/// all the batch's rows (4096 on the cpu track) into a small `[inner, out]`
/// output; gemm runs that shape at ~0.7 of its forward rate (many k-blocks, each
/// a parallel region over few output rows). Chunks of this many rows, one per
/// thread, then a fixed-order sum, run it at ~0.9. The split depends on the
/// shape alone, so the bits do not depend on the thread count.
pub(crate) const SPLIT_ROWS: usize = 2048;

/// `dw = xᵀ g` over row chunks of `SPLIT_ROWS`: the first chunk's product is
/// written into the output, the others into scratch, then added in chunk order.
fn weight_grad_split<T: Real>(x: &[T], g: &[T], inner: usize, out: usize) -> Vec<T> {
    let rows = x.len() / inner;
    assert!(x.len() == rows * inner && g.len() == rows * out);
    let chunks = rows.div_ceil(SPLIT_ROWS);
    let size = inner * out;
    // Each chunk's gemm gets an equal share of the threads beyond one per chunk.
    let per_chunk = match rayon::current_num_threads() / chunks {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    };
    let product = |c: usize, dst: &mut [std::mem::MaybeUninit<T>]| {
        let (r0, r1) = (c * SPLIT_ROWS, ((c + 1) * SPLIT_ROWS).min(rows));
        // SAFETY: rows r0..r1 of x and g lie inside the asserted lengths; dst
        // holds inner x out elements and aliases neither, and gemm writes all.
        unsafe {
            matmul(
                (inner, out, r1 - r0),
                dst.as_mut_ptr().cast::<T>(),
                out,
                None,
                View::rows(x.as_ptr(), inner).skip_rows(r0).t(),
                View::rows(g.as_ptr(), out).skip_rows(r0),
                T::ONE,
                per_chunk,
            )
        }
    };
    // SAFETY: `product` writes every element of each buffer it is given.
    let (mut dw, rest) = rayon::join(
        || unsafe { filled(size, |d| product(0, d)) },
        || unsafe {
            filled((chunks - 1) * size, |d| {
                d.par_chunks_mut(size)
                    .enumerate()
                    .for_each(|(i, d)| product(i + 1, d))
            })
        },
    );
    // The chunks' sum in chunk order, element by element.
    dw.par_chunks_mut(ELEM_CHUNK)
        .enumerate()
        .for_each(|(b, d)| {
            for c in 0..chunks - 1 {
                let part = &rest[c * size + b * ELEM_CHUNK..][..d.len()];
                for (o, &p) in d.iter_mut().zip(part) {
                    *o += p;
                }
            }
        });
    dw
}

/// `dx = g wᵀ` (`[rows, out] @ [out, inner]`) or `dw = xᵀ g`
/// (`[inner, rows] @ [rows, out]`): gemm reads the transposes through strides
/// and writes a fresh buffer whole.
fn grad<T: Real>(which: Grad, a: &[T], b: &[T], inner: usize, out: usize) -> Vec<T> {
    if matches!(which, Grad::Weight) && a.len() / inner > SPLIT_ROWS {
        return weight_grad_split(a, b, inner, out);
    }
    let ((m, n, k), lhs, rhs) = match which {
        // a = g [rows, out], b = w [inner, out]
        Grad::Input => {
            let rows = a.len() / out;
            assert!(a.len() == rows * out && b.len() == inner * out);
            (
                (rows, inner, out),
                View::rows(a.as_ptr(), out),
                View::rows(b.as_ptr(), out).t(),
            )
        }
        // a = x [rows, inner], b = g [rows, out]
        Grad::Weight => {
            let rows = a.len() / inner;
            assert!(a.len() == rows * inner && b.len() == rows * out);
            (
                (inner, out, rows),
                View::rows(a.as_ptr(), inner).t(),
                View::rows(b.as_ptr(), out),
            )
        }
    };
    // SAFETY: the asserts bound every element the views address; gemm
    // overwrites all m x n outputs of the fresh buffer.
    unsafe {
        filled(m * n, |d| {
            matmul(
                (m, n, k),
                d.as_mut_ptr().cast::<T>(),
                n,
                None,
                lhs,
                rhs,
                T::ONE,
                parallel(),
            )
        })
    }
}

#[derive(Clone, Copy)]
enum Grad {
    Input,
    Weight,
}

/// One of the two gradient products as a (backward-free) op.
struct GradOp {
    which: Grad,
    inner: usize,
    out: usize,
}

impl CustomOp2 for GradOp {
    fn name(&self) -> &'static str {
        "speedrun-linear-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (inner, out) = (self.inner, self.out);
        let shape = match self.which {
            Grad::Input => Shape::from((l1.shape().elem_count() / out, inner)),
            Grad::Weight => Shape::from((inner, out)),
        };
        with_float2!(self.name(), (s1, l1), (s2, l2), |a, b| Ok((
            Real::storage(grad(self.which, a, b, inner, out)),
            shape
        )))
    }
}

pub(crate) fn out_shape(x: &Layout, w: &Layout) -> Result<(usize, usize, Shape)> {
    let (inner, out) = w.shape().dims2()?;
    let mut dims = x.shape().dims().to_vec();
    match dims.last_mut() {
        Some(last) if *last == inner => *last = out,
        _ => bail!(
            "linear: input {:?} does not end in the weight's {inner} rows",
            x.shape()
        ),
    }
    Ok((inner, out, Shape::from(dims)))
}

/// Runs `fwd` on the f32 or f64 storages of x, w and (maybe) b.
fn cpu_fwd(
    x: (&CpuStorage, &Layout),
    w: (&CpuStorage, &Layout),
    b: Option<(&CpuStorage, &Layout)>,
) -> Result<(CpuStorage, Shape)> {
    fn typed<T: Real>(
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)>
    where
        CpuStorage: AsSlice<T>,
    {
        let (inner, out, shape) = out_shape(x.1, w.1)?;
        let xs = typed_slice::<T>(x.0, x.1, "linear")?;
        let ws = typed_slice::<T>(w.0, w.1, "linear")?;
        let bs = match b {
            Some((s, l)) => Some(typed_slice::<T>(s, l, "linear")?),
            None => None,
        };
        Ok((T::storage(fwd(xs, ws, bs, inner, out)), shape))
    }
    match x.0 {
        CpuStorage::F32(_) => typed::<f32>(x, w, b),
        CpuStorage::F64(_) => typed::<f64>(x, w, b),
        o => bail!(
            "linear: unsupported dtype {:?} (f32 or f64)",
            candle_core::backend::BackendStorage::dtype(o)
        ),
    }
}

/// The input and weight gradients, `g wᵀ` and `xᵀ g`, on gemm into fresh
/// buffers (candle's matmul would zero-fill them first); the bias's a
/// fixed-order column sum. CPU only: on a GPU `linear` is candle's ops.
pub fn grads(x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let (dx, dw) = product_grads(x, w, grad)?;
    Ok((dx, dw, bias_grad(grad)?))
}

/// [`grads`] less the bias's: for a backward that summed it already.
pub(crate) fn product_grads(x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
    let (inner, out) = w.dims2()?;
    let rows = x.elem_count() / inner;
    let g = grad.contiguous()?.reshape((rows, out))?;
    let dx = input_grad(&g, w)?;
    let dw = weight_grad(&x.contiguous()?.reshape((rows, inner))?, &g)?;
    Ok((dx.reshape(x.shape())?, dw))
}

/// The column sums of a gradient `[.., out]`: a bias's gradient.
pub(crate) fn bias_grad(grad: &Tensor) -> Result<Tensor> {
    let out = grad.dim(candle_core::D::Minus1)?;
    grad.contiguous()?.apply_op1_no_bwd(&ColumnSum { m: out })
}

/// `g wᵀ` for `g [rows, out]` and `w [inner, out]`: the input gradient as a
/// linear's backward computes it (`speedrun bench` times it alone). Off the
/// CPU, candle's matmul.
pub fn input_grad(g: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !g.device().is_cpu() {
        return g.matmul(&w.t()?);
    }
    let (inner, out) = w.dims2()?;
    let op = GradOp {
        which: Grad::Input,
        inner,
        out,
    };
    g.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &op)
}

/// `xᵀ g` for `x [rows, inner]` and `g [rows, out]`: the weight gradient as a
/// linear's backward computes it (in row chunks past `SPLIT_ROWS`). Off the
/// CPU, candle's matmul.
pub fn weight_grad(x: &Tensor, g: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return x.t()?.matmul(g);
    }
    let ((rows, inner), out) = (x.dims2()?, g.dim(1)?);
    if g.dims2()? != (rows, out) {
        bail!(
            "weight gradient: x {:?} and g {:?} differ in rows",
            x.shape(),
            g.shape()
        );
    }
    let op = GradOp {
        which: Grad::Weight,
        inner,
        out,
    };
    x.contiguous()?.apply_op2_no_bwd(&g.contiguous()?, &op)
}

struct WithBias;
struct NoBias;

impl CustomOp3 for WithBias {
    fn name(&self) -> &'static str {
        "speedrun-linear"
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
        cpu_fwd((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = grads(x, w, grad)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

impl CustomOp2 for NoBias {
    fn name(&self) -> &'static str {
        "speedrun-linear-no-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_fwd((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = grads(x, w, grad)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `x @ w + b` for `x` of shape `[..., in]`, `w` `[in, out]` (GPT-2's Conv1D
/// layout), `b` `[out]`: one autograd node. Non-contiguous inputs are copied first.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return crate::gemm_ops::linear(x, w, b);
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => {
            check_bias(&w, b)?;
            x.apply_op3(&w, &b.contiguous()?, WithBias)
        }
        None => x.apply_op2(&w, NoBias),
    }
}

/// What follows a linear layer inside one fused node (an activation, the
/// attention). The node keeps the linear's output for the backward, so the
/// graph has no node for the epilogue: candle's backward would zero-fill and
/// add into that output's gradient, often the widest tensor of the layer.
pub(crate) trait Epilogue: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// The gradient of `h` from `h` and the node's output gradient.
    fn backward(&self, h: &Tensor, grad: &Tensor) -> Result<Tensor>;
    /// [`Epilogue::backward`] and its column sums (the linear's bias
    /// gradient); an epilogue may make both in one pass.
    fn backward_summed(&self, h: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
        let dh = self.backward(h, grad)?;
        let db = bias_grad(&dh)?;
        Ok((dh, db))
    }
    /// The epilogue as its own op, off the CPU (where `linear` is candle's ops).
    fn apart(&self, h: &Tensor) -> Result<Tensor>;
    /// What the node keeps for the backward (the linear's output, or what
    /// the epilogue reads it as) and the node's output with its shape.
    #[allow(clippy::too_many_arguments)]
    fn forward_linear<T: Real>(
        &self,
        x: &[T],
        w: &[T],
        b: &[T],
        inner: usize,
        out: usize,
        shape: &Shape,
    ) -> Result<(Vec<T>, Vec<T>, Shape)>;
}

struct Fused<E> {
    epilogue: E,
    hidden: OnceLock<Tensor>,
}

impl<E: Epilogue> CustomOp3 for Fused<E> {
    fn name(&self) -> &'static str {
        self.epilogue.name()
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
        let name = self.name();
        let (inner, out, shape) = out_shape(l1, l2)?;
        with_float!(name, s1, l1, |x| {
            let w = typed_slice(s2, l2, name)?;
            let b = typed_slice(s3, l3, name)?;
            let (h, y, y_shape) = self.epilogue.forward_linear(x, w, b, inner, out, &shape)?;
            // A second forward through one op instance never happens: each call
            // of `linear_then` makes its own.
            let _ = self.hidden.set(Tensor::from_vec(h, shape, &Device::Cpu)?);
            Ok((Real::storage(y), y_shape))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(h) = self.hidden.get() else {
            bail!("{}: backward before forward", self.name())
        };
        let (dh, db) = self.epilogue.backward_summed(h, &grad.contiguous()?)?;
        let (dx, dw) = product_grads(x, w, &dh)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `epilogue(x @ w + b)`: one node on the CPU, the two ops elsewhere.
pub(crate) fn linear_then<E: Epilogue>(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    epilogue: E,
) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return epilogue.apart(&crate::linear(x, w, Some(b))?);
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    check_bias(&w, b)?;
    x.apply_op3(
        &w,
        &b.contiguous()?,
        Fused {
            epilogue,
            hidden: OnceLock::new(),
        },
    )
}

impl Epilogue for Act {
    fn name(&self) -> &'static str {
        match self {
            Act::Gelu => "speedrun-linear-gelu",
            Act::Relu2 => "speedrun-linear-relu2",
        }
    }

    fn backward(&self, h: &Tensor, grad: &Tensor) -> Result<Tensor> {
        h.apply_op2_no_bwd(grad, &activation::Backward(*self))
    }

    /// On the CPU the bias's column sums are added up as the activation's
    /// gradient is written, in `bias::column_sum`'s order (the same bits).
    fn backward_summed(&self, h: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
        if !h.device().is_cpu() {
            let dh = self.backward(h, grad)?;
            let db = bias_grad(&dh)?;
            return Ok((dh, db));
        }
        if h.dims() != grad.dims() {
            bail!(
                "{}: gradient {:?} for an output {:?}",
                self.name(),
                grad.dims(),
                h.dims()
            );
        }
        let (h, grad) = (h.contiguous()?, grad.contiguous()?);
        let m = h.dim(candle_core::D::Minus1)?;
        let name = "speedrun-activation-bwd-summed";
        with_cpu(&h, name, |hs, hl| {
            with_cpu(&grad, name, |gs, gl| {
                with_float!(name, hs, hl, |x| {
                    let g = typed_slice(gs, gl, name)?;
                    let (dh, db) = activation::grad_and_column_sum(*self, x, g, m);
                    Ok((
                        Tensor::from_vec(dh, h.shape(), &Device::Cpu)?,
                        Tensor::from_vec(db, m, &Device::Cpu)?,
                    ))
                })
            })
        })
    }

    fn apart(&self, h: &Tensor) -> Result<Tensor> {
        match self {
            Act::Gelu => crate::gelu(h),
            Act::Relu2 => crate::relu2(h),
        }
    }

    /// The product alone, then one pass that adds the bias into `h` and
    /// writes the activation: the bias rows are not written first for gemm to
    /// read back (two passes over the layer's widest tensor).
    fn forward_linear<T: Real>(
        &self,
        x: &[T],
        w: &[T],
        b: &[T],
        inner: usize,
        out: usize,
        shape: &Shape,
    ) -> Result<(Vec<T>, Vec<T>, Shape)> {
        let mut h = fwd(x, w, None, inner, out);
        assert_eq!(b.len(), out);
        let act = *self;
        // SAFETY: the row chunks cover the output, each element written once.
        let y = unsafe {
            filled(h.len(), |y| {
                y.par_chunks_mut(ROW_CHUNK * out)
                    .zip(h.par_chunks_mut(ROW_CHUNK * out))
                    .for_each(|(y, h)| activation::bias_act_rows(y, h, b, act))
            })
        };
        Ok((h, y, shape.clone()))
    }
}

/// `(x @ w + b, act(x @ w + b))` untracked on the CPU, by the same kernels as
/// the fused node (`linear_gelu`): the pre-activation a backward keeps, and
/// the output.
pub(crate) fn linear_act_parts(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    act: Act,
) -> Result<(Tensor, Tensor)> {
    let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
    check_bias(&w, &b)?;
    let (inner, out, shape) = out_shape(x.layout(), w.layout())?;
    let name = "linear_act_parts";
    // Both outputs become tensors without a copy (an op returns one storage).
    with_cpu(&x, name, |xs, xl| {
        with_cpu(&w, name, |ws, wl| {
            with_cpu(&b, name, |bs, bl| {
                with_float!(name, xs, xl, |xv| {
                    let wv = typed_slice(ws, wl, name)?;
                    let bv = typed_slice(bs, bl, name)?;
                    let (h, y, _) = act.forward_linear(xv, wv, bv, inner, out, &shape)?;
                    Ok((
                        Tensor::from_vec(h, shape.clone(), &Device::Cpu)?,
                        Tensor::from_vec(y, shape.clone(), &Device::Cpu)?,
                    ))
                })
            })
        })
    })
}

/// `r + x @ w + b` as one node: the residual add rides in gemm's `alpha·dst`
/// (the output starts as the residual rows plus the bias), so the forward makes
/// no add pass and the graph has no add node, whose backward candle would run
/// as two zero-fills and two adds. The weight and bias arrive packed as
/// `[in + 1, out]` (a node has at most three inputs).
struct Residual;

/// `r + x @ w + b` with `wb` = `[w; b]` (`[inner + 1, out]`), all contiguous.
fn residual_fwd<T: Real>(x: &[T], wb: &[T], r: &[T], inner: usize, out: usize) -> Vec<T> {
    let rows = x.len() / inner;
    assert!(wb.len() == (inner + 1) * out && r.len() == rows * out);
    let (w, b) = wb.split_at(inner * out);
    // SAFETY: the assert bounds every element gemm reads or writes; every
    // element is written by the residual-plus-bias pass before gemm adds the
    // product into it.
    unsafe {
        filled(rows * out, |y| {
            y.par_chunks_mut(out)
                .zip(r.par_chunks(out))
                .for_each(|(y, r)| {
                    for ((y, &r), &b) in y.iter_mut().zip(r).zip(b) {
                        y.write(r + b);
                    }
                });
            matmul(
                (rows, out, inner),
                y.as_mut_ptr().cast::<T>(),
                out,
                Some(T::ONE),
                View::rows(x.as_ptr(), inner),
                View::rows(w.as_ptr(), out),
                T::ONE,
                parallel(),
            )
        })
    }
}

impl CustomOp3 for Residual {
    fn name(&self) -> &'static str {
        "speedrun-linear-residual"
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
        let name = self.name();
        let (rows_wb, out) = l2.shape().dims2()?;
        let inner = rows_wb - 1;
        let (_, _, shape) = out_shape(l1, &Layout::contiguous((inner, out)))?;
        if l3.shape() != &shape {
            bail!(
                "{name}: residual {:?} is not the output {shape:?}",
                l3.shape()
            )
        }
        with_float2!(name, (s1, l1), (s2, l2), |x, wb| {
            let r = typed_slice(s3, l3, name)?;
            Ok((Real::storage(residual_fwd(x, wb, r, inner, out)), shape))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        wb: &Tensor,
        _r: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let inner = wb.dim(0)? - 1;
        let (dx, dw, db) = grads(x, &wb.narrow(0, 0, inner)?, grad)?;
        let dwb = Tensor::cat(&[&dw, &db.unsqueeze(0)?], 0)?;
        Ok((Some(dx), Some(dwb), Some(grad.clone())))
    }
}

/// `r + x @ w + b` (a residual stream plus a projection) as one node on the
/// CPU; the ops apart elsewhere.
pub fn linear_residual(x: &Tensor, w: &Tensor, b: &Tensor, r: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return r + crate::gemm_ops::linear(x, w, Some(b))?;
    }
    check_bias(w, b)?;
    let wb = Tensor::cat(&[w, &b.unsqueeze(0)?], 0)?;
    x.contiguous()?.apply_op3(&wb, &r.contiguous()?, Residual)
}

pub(crate) fn check_bias(w: &Tensor, b: &Tensor) -> Result<()> {
    if b.dims() != [w.dim(1)?] {
        bail!(
            "linear: bias {:?} does not match the weight {:?}",
            b.dims(),
            w.dims()
        )
    }
    Ok(())
}

/// `gelu(x @ w + b)` (GPT-2's `c_fc` and its activation) as one node.
pub fn linear_gelu(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    linear_then(x, w, b, Act::Gelu)
}

/// `relu²(x @ w + b)` as one node.
pub fn linear_relu2(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    linear_then(x, w, b, Act::Relu2)
}
