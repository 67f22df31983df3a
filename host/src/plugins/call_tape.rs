//! One forward hook call on the host's own tape.
//!
//! While a plugin's forward hook runs in training on the CPU, every op it
//! calls is recorded here with its inputs and output, on tensors candle does
//! not track: the hook's inputs reach the plugin detached, a parameter it
//! reads is a detached leaf. The finished call joins candle's graph as one
//! node over the hook's inputs, whose backward walks this tape in reverse:
//! the first gradient a tensor gets is moved in and later ones added, no
//! zero-filled buffer and no node for a reshape, the fused kernels' own
//! backward functions for the ops that have one, and the parameters'
//! gradients straight into the model's `ParamGrads` (`Grads::collect` sums
//! them with candle's). An op with no rule of its own here is re-run alone
//! under candle's autograd: the same gradient candle's graph would give.
//!
//! Sound because a forward hook may only compute and read parameters
//! (`Op::allowed_in`): nothing it does has an effect the tape would miss.

use super::host_ops::compute;
use anyhow::{bail, Result};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor, TensorId};
use speedrun_kernels::{ParamGrads, Pending, Precision};
use speedrun_plugin_abi::{Frame, Op};
use std::cell::Cell;
use std::collections::hash_map::Entry as Slot;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether forward hook calls on this thread go on the host's tape (they do
/// unless [`without`] turned it off).
pub fn enabled() -> bool {
    ENABLED.with(Cell::get)
}

/// Runs `f` with plugins' forward hooks on candle's graph instead of the
/// tape, on this thread: what the tests and `speedrun bench` compare against.
pub fn without<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ENABLED.with(|e| e.set(self.0));
        }
    }
    let _restore = Restore(ENABLED.with(|e| e.replace(false)));
    f()
}

/// One recorded op: what its backward reads.
struct Entry {
    op: Op,
    frame: Frame,
    inputs: Vec<Tensor>,
    out: Tensor,
    /// What the forward made on the way that the backward needs (the
    /// attention's probabilities), where the tape ran the op itself.
    saved: Option<Tensor>,
}

/// The ops of one hook call, in order.
pub struct CallTape {
    entries: Vec<Entry>,
    /// Tensors a gradient flows to: the hook's float inputs, the parameters
    /// read, and every recorded op's output.
    tracked: HashSet<TensorId>,
    /// Each parameter read: the detached tensor the plugin got, and the
    /// model's parameter its gradient belongs to.
    leaves: Vec<(Tensor, Tensor)>,
    /// The dtype of the call's products, as the ops ran them.
    precision: Precision,
}

impl CallTape {
    pub fn new(precision: Precision) -> CallTape {
        CallTape {
            entries: Vec::new(),
            tracked: HashSet::new(),
            leaves: Vec::new(),
            precision,
        }
    }

    /// The hook's input as the plugin gets it: detached, tracked if a float.
    pub fn input(&mut self, x: &Tensor) -> Tensor {
        let d = x.detach();
        if d.dtype().is_float() {
            self.tracked.insert(d.id());
        }
        d
    }

    /// A parameter as the plugin reads it: a detached leaf.
    pub fn leaf(&mut self, param: &Tensor) -> Tensor {
        let d = param.detach();
        self.tracked.insert(d.id());
        self.leaves.push((d.clone(), param.clone()));
        d
    }

    /// Runs `op` on `inputs` as `host_ops::compute` does and records it. q, k,
    /// v attention runs here step by step so that its probabilities are kept
    /// for the backward, as candle's graph keeps them (the same kernels, the
    /// same values).
    pub fn run(&mut self, op: Op, inputs: Vec<Tensor>, frame: &Frame) -> Result<Tensor> {
        let tracked = inputs.iter().any(|x| self.tracked.contains(&x.id()));
        if op == Op::CausalAttention && self.precision == Precision::F32 && tracked {
            let (y, p) = attention_keeping_probabilities(&inputs, frame)?;
            self.push(op, frame, inputs, &y, Some(p));
            return Ok(y);
        }
        let y = compute(op, &inputs, frame, self.precision)?;
        self.record(op, frame, inputs, &y);
        Ok(y)
    }

    /// Records `out = op(inputs)` if a gradient can flow through it.
    fn record(&mut self, op: Op, frame: &Frame, inputs: Vec<Tensor>, out: &Tensor) {
        if op == Op::Detach || !out.dtype().is_float() {
            return;
        }
        // An op that answered its input (a contiguous tensor made contiguous,
        // a cast to its own dtype) is the identity: the gradient is the input's.
        if inputs.iter().any(|x| x.id() == out.id()) {
            return;
        }
        if !inputs.iter().any(|x| self.tracked.contains(&x.id())) {
            return;
        }
        self.push(op, frame, inputs, out, None);
    }

    fn push(
        &mut self,
        op: Op,
        frame: &Frame,
        inputs: Vec<Tensor>,
        out: &Tensor,
        saved: Option<Tensor>,
    ) {
        self.tracked.insert(out.id());
        self.entries.push(Entry {
            op,
            frame: frame.clone(),
            inputs,
            out: out.clone(),
            saved,
        });
    }

    /// Every tracked tensor's gradient, from `out`'s.
    fn backward(&self, out: TensorId, grad: &Tensor) -> Result<HashMap<TensorId, Tensor>> {
        let mut grads = HashMap::new();
        grads.insert(out, grad.clone());
        for e in self.entries.iter().rev() {
            // Every op that read this output comes later on the tape: its gradient is whole.
            let Some(gy) = grads.remove(&e.out.id()) else {
                continue;
            };
            let gxs = self.rule(e, &gy)?;
            for (x, gx) in e.inputs.iter().zip(gxs) {
                let Some(gx) = gx else { continue };
                if !self.tracked.contains(&x.id()) {
                    continue;
                }
                if gx.dims() != x.dims() {
                    bail!(
                        "the tape's rule for {} gave a {:?} gradient to a {:?} input (a host bug)",
                        e.op.name(),
                        gx.dims(),
                        x.dims()
                    );
                }
                match grads.entry(x.id()) {
                    Slot::Occupied(mut held) => {
                        let sum = (held.get() + gx)?;
                        held.insert(sum);
                    }
                    Slot::Vacant(slot) => {
                        slot.insert(gx);
                    }
                }
            }
        }
        Ok(grads)
    }

    /// The gradients of `e`'s inputs from its output's, one per input.
    fn rule(&self, e: &Entry, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let x = |i: usize| &e.inputs[i];
        let f = &e.frame;
        let one = |t: Tensor| Ok(vec![Some(t)]);
        let f32_products = self.precision == Precision::F32;
        match e.op {
            Op::Neg => one(g.neg()?),
            Op::Affine => one(g.affine(f.float(0)?, 0.0)?),
            Op::Add => Ok(vec![Some(reduce_to(g, x(0))?), Some(reduce_to(g, x(1))?)]),
            Op::Sub => Ok(vec![
                Some(reduce_to(g, x(0))?),
                Some(reduce_to(&g.neg()?, x(1))?),
            ]),
            Op::Mul => Ok(vec![
                Some(reduce_to(&g.broadcast_mul(x(1))?, x(0))?),
                Some(reduce_to(&g.broadcast_mul(x(0))?, x(1))?),
            ]),
            Op::Exp => one(g.mul(&e.out)?),
            Op::Tanh => one(g.mul(&e.out.sqr()?.affine(-1.0, 1.0)?)?),
            Op::Gelu => one(speedrun_kernels::gelu_input_grad(x(0), g)?),
            Op::Relu2 => one(speedrun_kernels::relu2_input_grad(x(0), g)?),
            Op::Contiguous => one(g.clone()),
            Op::ToDtype => one(g.to_dtype(x(0).dtype())?),
            Op::Reshape | Op::Unsqueeze | Op::Squeeze => one(g.reshape(x(0).shape())?),
            Op::Transpose => one(g.transpose(f.usize(0)?, f.usize(1)?)?),
            Op::Permute => {
                let perm = f.ints.iter().map(|&d| d as usize).collect::<Vec<_>>();
                let mut inverse = vec![0; perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    inverse[p] = i;
                }
                one(g.permute(inverse)?)
            }
            Op::BroadcastAs => one(reduce_to(g, x(0))?),
            Op::Narrow => {
                let (dim, start, len) = (f.usize(0)?, f.usize(1)?, f.usize(2)?);
                let full = x(0).dims().to_vec();
                let pad = |n: usize| {
                    let mut shape = full.clone();
                    shape[dim] = n;
                    Tensor::zeros(shape, g.dtype(), g.device())
                };
                let mut parts = Vec::with_capacity(3);
                if start > 0 {
                    parts.push(pad(start)?);
                }
                parts.push(g.clone());
                if start + len < full[dim] {
                    parts.push(pad(full[dim] - start - len)?);
                }
                one(Tensor::cat(&parts, dim)?)
            }
            Op::Cat => {
                let dim = f.usize(0)?;
                let mut at = 0;
                e.inputs
                    .iter()
                    .map(|x| {
                        let n = x.dim(dim)?;
                        let part = g.narrow(dim, at, n)?;
                        at += n;
                        Ok(Some(part))
                    })
                    .collect()
            }
            Op::Sum | Op::Mean => {
                let src = x(0);
                let mut dims = f.ints[1..].iter().map(|&d| d as usize).collect::<Vec<_>>();
                if dims.is_empty() {
                    dims = (0..src.rank()).collect();
                }
                let mut kept = src.dims().to_vec();
                for &d in &dims {
                    kept[d] = 1;
                }
                let mut gx = g.reshape(kept)?.broadcast_as(src.shape())?;
                if e.op == Op::Mean {
                    let n: usize = dims.iter().map(|&d| src.dims()[d]).product();
                    gx = gx.affine(1.0 / n as f64, 0.0)?;
                }
                one(gx)
            }
            Op::Linear if f32_products => {
                let (dx, dw, db) = speedrun_kernels::linear_grads(x(0), x(1), g)?;
                let mut out = vec![Some(dx), Some(dw)];
                if e.inputs.len() > 2 {
                    out.push(Some(db));
                }
                Ok(out)
            }
            Op::Matmul
                if f32_products
                    && x(0).rank() == x(1).rank()
                    && x(0).rank() >= 2
                    && x(0).dims()[..x(0).rank() - 2] == x(1).dims()[..x(1).rank() - 2] =>
            {
                // candle's matmul node's rule, on the operands the product read.
                let (a, b, g) = (x(0).contiguous()?, x(1).contiguous()?, g.contiguous()?);
                let r = a.rank();
                let ga = g.matmul(&b.transpose(r - 2, r - 1)?)?;
                let gb = a.transpose(r - 2, r - 1)?.matmul(&g)?;
                Ok(vec![Some(ga), Some(gb)])
            }
            Op::CausalAttention if f32_products => {
                // The rules of the two products and of the fused softmax, on
                // the probabilities the forward kept.
                let (q, k, v) = (x(0).contiguous()?, x(1).contiguous()?, x(2).contiguous()?);
                let scale = attention_scale(&q, f)?;
                let g = g.contiguous()?;
                let p = match &e.saved {
                    Some(p) => p.clone(),
                    None => speedrun_kernels::causal_softmax(&q.matmul(&k.t()?)?, scale)?,
                };
                let dv = p.t()?.matmul(&g)?;
                let dp = g.matmul(&v.t()?)?;
                let ds = speedrun_kernels::causal_softmax_grad(&p, &dp, scale)?;
                let dq = ds.matmul(&k)?;
                let dk = ds.t()?.matmul(&q)?;
                Ok(vec![Some(dq), Some(dk), Some(dv)])
            }
            Op::CausalAttentionPacked if f32_products => one(
                speedrun_kernels::causal_attention_packed_grad(x(0), g, f.usize(0)?)?,
            ),
            Op::Embedding => {
                let (table, ids) = (x(0), x(1));
                let (n, d) = table.dims2()?;
                let rows = g.reshape((ids.elem_count(), d))?;
                let gt = Tensor::zeros((n, d), g.dtype(), g.device())?.index_add(
                    &ids.flatten_all()?,
                    &rows,
                    0,
                )?;
                Ok(vec![Some(gt), None])
            }
            Op::LayerNorm | Op::RmsNorm => {
                let rms = e.op == Op::RmsNorm;
                let has_gain = f.int(0)? != 0;
                let has_bias = !rms && f.int(1)? != 0;
                let d = x(0).dim(candle_core::D::Minus1)?;
                let gain = if has_gain {
                    x(1).clone()
                } else {
                    Tensor::ones(d, x(0).dtype(), x(0).device())?
                };
                let (dx, dw, db) = speedrun_kernels::norm_grads(rms, x(0), &gain, g, f.float(0)?)?;
                let mut out = vec![Some(dx)];
                if has_gain {
                    out.push(Some(dw));
                }
                if has_bias {
                    out.push(Some(db));
                }
                Ok(out)
            }
            Op::Rotary => one(speedrun_kernels::rotary_grad(g, f.float(0)?)?),
            _ => self.through_candle(e, g),
        }
    }

    /// The rule of an op with none here: the op re-run alone under candle's
    /// autograd, its output's gradient `g`.
    fn through_candle(&self, e: &Entry, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let vars = e
            .inputs
            .iter()
            .map(|x| {
                if x.dtype().is_float() && self.tracked.contains(&x.id()) {
                    Ok(Some(candle_core::Var::from_tensor(x)?))
                } else {
                    Ok(None)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let args = e
            .inputs
            .iter()
            .zip(&vars)
            .map(|(x, v)| {
                v.as_ref()
                    .map_or_else(|| x.clone(), |v| v.as_tensor().clone())
            })
            .collect::<Vec<_>>();
        let y = compute(e.op, &args, &e.frame, self.precision)?;
        let store = (y * g)?.sum_all()?.backward()?;
        Ok(vars
            .iter()
            .map(|v| v.as_ref().and_then(|v| store.get(v.as_tensor()).cloned()))
            .collect())
    }
}

/// The attention op's scale: the frame's, or 1/√hd.
fn attention_scale(q: &Tensor, f: &Frame) -> Result<f64> {
    Ok(match f.floats.first() {
        Some(&s) => s,
        None => 1.0 / (q.dim(candle_core::D::Minus1)? as f64).sqrt(),
    })
}

/// `causal_attention(q, k, v)` in f32 as `host_ops::compute` runs it
/// (`gemm_ops::causal_attention`'s steps), and its probabilities.
fn attention_keeping_probabilities(inputs: &[Tensor], f: &Frame) -> Result<(Tensor, Tensor)> {
    let [q, k, v] = inputs else {
        bail!(
            "causal_attention takes q, k and v; got {} tensors",
            inputs.len()
        );
    };
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let scale = attention_scale(&q, f)?;
    let p = speedrun_kernels::causal_softmax(&q.matmul(&k.t()?)?, scale)?;
    let y = p.matmul(&v)?;
    Ok((y, p))
}

/// `g` summed over the dimensions `x` was broadcast along, to `x`'s shape, in
/// one sum as candle's broadcast node sums it.
fn reduce_to(g: &Tensor, x: &Tensor) -> Result<Tensor> {
    if g.dims() == x.dims() {
        return Ok(g.clone());
    }
    let lead = g.rank() - x.rank();
    let mut dims: Vec<usize> = (0..lead).collect();
    for (i, &n) in x.dims().iter().enumerate() {
        if n != g.dims()[lead + i] {
            dims.push(lead + i);
        }
    }
    Ok(g.sum_keepdim(dims)?.reshape(x.shape())?)
}

/// The finished call as one node of candle's graph: its arguments are the
/// hook's float inputs (or, with none, a parameter it read, so that the
/// backward reaches it), `cpu_fwd` hands over the plugin's output, and the
/// backward walks the tape.
struct Node {
    tape: CallTape,
    out: TensorId,
    /// The detached inputs the plugin got, for each node argument that is an input.
    inputs: Vec<TensorId>,
    y: Pending,
    grads: Arc<ParamGrads>,
}

impl Node {
    const NAME: &'static str = "speedrun-plugin-call";

    /// The arguments' gradients; the parameters' go to `grads`.
    fn run_backward(&self, grad: &Tensor, args: usize) -> candle_core::Result<Vec<Option<Tensor>>> {
        let go = || -> Result<Vec<Option<Tensor>>> {
            let mut g = self.tape.backward(self.out, grad)?;
            for (read, param) in &self.tape.leaves {
                if let Some(gp) = g.remove(&read.id()) {
                    self.grads.add(param, gp.contiguous()?)?;
                }
            }
            let mut out: Vec<_> = self.inputs.iter().map(|id| g.remove(id)).collect();
            out.resize(args, None);
            Ok(out)
        };
        go().map_err(|e| candle_core::Error::Msg(format!("{}: {e:#}", Self::NAME)))
    }
}

impl CustomOp1 for Node {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.y.hand_over(Self::NAME)
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(self.run_backward(grad, 1)?.swap_remove(0))
    }
}

impl CustomOp2 for Node {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.y.hand_over(Self::NAME)
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let mut g = self.run_backward(grad, 2)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten()))
    }
}

impl CustomOp3 for Node {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.y.hand_over(Self::NAME)
    }

    #[allow(clippy::type_complexity)]
    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut g = self.run_backward(grad, 3)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten(), g.next().flatten()))
    }
}

/// The most float inputs a taped call may have (candle's custom ops take three).
pub const MAX_INPUTS: usize = 3;

/// The hook's output `out` as one node over its float `inputs` (as candle's
/// graph holds them; `given` are the detached ones the plugin got, in the
/// same order), whose backward walks `tape` and sends the parameters'
/// gradients to `grads`. An output no input or parameter reaches is returned
/// as it is.
pub fn finish(
    tape: CallTape,
    inputs: &[&Tensor],
    given: &[Tensor],
    out: Tensor,
    grads: &Arc<ParamGrads>,
) -> Result<Tensor> {
    if !tape.tracked.contains(&out.id()) {
        return Ok(out);
    }
    let mut args: Vec<Tensor> = Vec::new();
    let mut ids = Vec::new();
    for (x, d) in inputs.iter().zip(given) {
        if x.dtype().is_float() {
            args.push((*x).clone());
            ids.push(d.id());
        }
    }
    if args.is_empty() {
        match tape.leaves.first() {
            Some((_, param)) => args.push(param.clone()),
            None => return Ok(out),
        }
    }
    if args.len() > MAX_INPUTS {
        bail!(
            "a taped hook call has {} float inputs, more than {MAX_INPUTS} (a host bug)",
            args.len()
        );
    }
    let node = Node {
        out: out.id(),
        tape,
        inputs: ids,
        y: Pending::new(out),
        grads: grads.clone(),
    };
    Ok(match args.as_slice() {
        [a] => a.apply_op1(node)?,
        [a, b] => a.apply_op2(b, node)?,
        [a, b, c] => a.apply_op3(b, c, node)?,
        _ => unreachable!("one to three arguments"),
    })
}

#[cfg(test)]
mod tests {
    //! Each program's input gradients on the tape against candle's graph over
    //! the same ops (`host_ops::compute`, with every float input a `Var`).

    use super::*;
    use candle_core::{DType, Device, Var};

    /// One op of a program: its arguments are earlier values (inputs first).
    struct Step(Op, Vec<usize>, Vec<i64>, Vec<f64>);

    fn frame(s: &Step) -> Frame {
        Frame {
            tensors: s.1.iter().map(|&i| i as u64).collect(),
            ints: s.2.clone(),
            floats: s.3.clone(),
            ..Frame::default()
        }
    }

    fn run(values: &mut Vec<Tensor>, steps: &[Step], mut tape: Option<&mut CallTape>) {
        for s in steps {
            let args: Vec<Tensor> = s.1.iter().map(|&i| values[i].clone()).collect();
            let f = frame(s);
            let y = match tape.as_deref_mut() {
                Some(t) => t.run(s.0, args, &f),
                None => compute(s.0, &args, &f, Precision::F32),
            };
            values.push(y.unwrap_or_else(|e| panic!("{}: {e}", s.0.name())));
        }
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// The program's float inputs' gradients both ways, for the output
    /// gradient `g` (seeded); input `leaf`, if any, reaches the tape as a
    /// parameter read.
    fn check(name: &str, inputs: Vec<Tensor>, steps: &[Step], leaf: Option<usize>) {
        let vars: Vec<Option<Var>> = inputs
            .iter()
            .map(|x| x.dtype().is_float().then(|| Var::from_tensor(x).unwrap()))
            .collect();
        let mut graph: Vec<Tensor> = inputs
            .iter()
            .zip(&vars)
            .map(|(x, v)| v.as_ref().map_or(x.clone(), |v| v.as_tensor().clone()))
            .collect();
        run(&mut graph, steps, None);
        let y = graph.last().unwrap();
        // A strided gradient, as a plugin's transposed output receives one.
        let mut dims = y.dims().to_vec();
        let r = dims.len();
        dims.swap(r - 2, r - 1);
        let g = Tensor::randn(0f32, 1.0, dims, &Device::Cpu)
            .unwrap()
            .transpose(r - 2, r - 1)
            .unwrap();
        let store = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();

        let mut tape = CallTape::new(Precision::F32);
        let mut taped: Vec<Tensor> = inputs
            .iter()
            .enumerate()
            .map(|(i, x)| {
                if Some(i) == leaf {
                    tape.leaf(x)
                } else {
                    tape.input(x)
                }
            })
            .collect();
        let given: Vec<TensorId> = taped.iter().map(|t| t.id()).collect();
        run(&mut taped, steps, Some(&mut tape));
        let out = taped.last().unwrap();
        assert_eq!(
            out.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{name}: the values differ"
        );
        let mut grads = tape.backward(out.id(), &g).unwrap();
        for (i, v) in vars.iter().enumerate() {
            let Some(v) = v else { continue };
            let want = store.get(v.as_tensor());
            let got = grads.remove(&given[i]);
            match (want, got) {
                (Some(w), Some(t)) => {
                    assert_eq!(w.dims(), t.dims(), "{name}: input {i}'s gradient shape");
                    let diff = max_abs(&(w - &t).unwrap());
                    let scale = max_abs(w).max(1.0);
                    assert!(
                        diff <= 2e-5 * scale,
                        "{name}: input {i}'s gradient is off by {diff} (largest {scale})"
                    );
                }
                (None, None) => {}
                (w, t) => panic!(
                    "{name}: input {i}: candle's graph gives {} gradient, the tape {}",
                    if w.is_some() { "a" } else { "no" },
                    if t.is_some() { "one" } else { "none" }
                ),
            }
        }
    }

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    use Op::*;

    #[test]
    fn an_mlp_with_a_residual_and_reused_values() {
        // h = linear(x, w, b); a = relu2(h); y = linear(a, w2); r = y + x; out = r * r + gelu(h)·…
        let steps = [
            Step(Linear, vec![0, 1, 2], vec![], vec![]),
            Step(Relu2, vec![4], vec![], vec![]),
            Step(Linear, vec![5, 3], vec![], vec![]),
            Step(Add, vec![6, 0], vec![], vec![]),
            Step(Mul, vec![7, 7], vec![], vec![]),
            Step(Gelu, vec![4], vec![], vec![]),
            Step(Sum, vec![9], vec![1, 2], vec![]),
            Step(Mul, vec![8, 10], vec![], vec![]),
        ];
        let inputs = vec![
            randn(&[2, 3, 4], 1),
            randn(&[4, 6], 2),
            randn(&[6], 3),
            randn(&[6, 4], 4),
        ];
        check("mlp", inputs.clone(), &steps, None);
        check("mlp, weights read as parameters", inputs, &steps, Some(1));
    }

    #[test]
    fn elementwise_ops_with_broadcasting() {
        let steps = [
            Step(Tanh, vec![0], vec![], vec![]),
            Step(Affine, vec![2], vec![], vec![2.0, 1.0]),
            Step(Sub, vec![3, 1], vec![], vec![]),
            Step(Neg, vec![4], vec![], vec![]),
            Step(Exp, vec![5], vec![], vec![]),
            Step(Mul, vec![6, 1], vec![], vec![]),
            Step(Add, vec![1, 7], vec![], vec![]),
            Step(Mean, vec![8], vec![0, 2], vec![]),
        ];
        check(
            "elementwise",
            vec![randn(&[2, 3, 4], 5), randn(&[3, 1], 6)],
            &steps,
            None,
        );
    }

    #[test]
    fn shape_ops_route_the_gradient_back() {
        let steps = [
            Step(Reshape, vec![0], vec![2, 3, 2, 4], vec![]),
            Step(Permute, vec![1], vec![2, 0, 3, 1], vec![]),
            Step(Transpose, vec![2], vec![1, 3], vec![]),
            Step(Contiguous, vec![3], vec![], vec![]),
            Step(Unsqueeze, vec![4], vec![0], vec![]),
            Step(Squeeze, vec![5], vec![0], vec![]),
            Step(Narrow, vec![6], vec![2, 1, 2], vec![]),
            Step(Narrow, vec![6], vec![2, 0, 1], vec![]),
            Step(Cat, vec![7, 8, 7], vec![2], vec![]),
            Step(Sum, vec![9], vec![1, 1], vec![]),
            Step(BroadcastAs, vec![10], vec![2, 3, 5, 2], vec![]),
            Step(ToDtype, vec![11], vec![1], vec![]),
            Step(ToDtype, vec![12], vec![0], vec![]),
            Step(Mul, vec![13, 9], vec![], vec![]),
        ];
        check("shapes", vec![randn(&[2, 3, 8], 7)], &steps, None);
    }

    #[test]
    fn norms_rotary_attention_and_products() {
        let (b, h, t, hd) = (2, 2, 4, 6);
        let steps = [
            Step(LayerNorm, vec![0, 1, 2], vec![1, 1], vec![1e-5]),
            Step(LayerNorm, vec![0], vec![0, 0], vec![1e-5]),
            Step(RmsNorm, vec![5, 1], vec![1], vec![1e-6]),
            Step(RmsNorm, vec![6], vec![0], vec![1e-6]),
            Step(Rotary, vec![7], vec![], vec![10000.0]),
            Step(Add, vec![8, 4], vec![], vec![]),
            // q kᵀ through a batched matmul, then the attention itself.
            Step(Transpose, vec![9], vec![2, 3], vec![]),
            Step(Matmul, vec![9, 10], vec![], vec![]),
            Step(CausalAttention, vec![9, 8, 4], vec![], vec![]),
            Step(Softmax, vec![11], vec![], vec![]),
            Step(Matmul, vec![13, 12], vec![], vec![]),
            Step(Matmul, vec![14, 3], vec![], vec![]),
            // The heads side by side, as a plugin hands them on: the
            // attention's gradient arrives strided.
            Step(CausalAttention, vec![4, 9, 8], vec![], vec![0.3]),
            Step(Transpose, vec![16], vec![1, 2], vec![]),
            Step(Reshape, vec![17], vec![2, 4, 12], vec![]),
            Step(Reshape, vec![15], vec![2, 4, 6], vec![]),
            Step(Cat, vec![18, 19], vec![2], vec![]),
        ];
        let inputs = vec![
            randn(&[b, h, t, hd], 8),
            randn(&[hd], 9),
            randn(&[hd], 10),
            randn(&[hd, 3], 11),
        ];
        check("norms", inputs, &steps, None);

        // The packed attention of a projection, and an embedding lookup.
        let ids = Tensor::new(&[[1u32, 4, 4, 0], [3, 3, 2, 1]], &Device::Cpu).unwrap();
        let steps = [
            Step(Embedding, vec![0, 2], vec![], vec![]),
            Step(Linear, vec![3, 1], vec![], vec![]),
            Step(CausalAttentionPacked, vec![4], vec![2], vec![]),
            Step(Mul, vec![5, 3], vec![], vec![]),
        ];
        let inputs = vec![randn(&[5, 8], 12), randn(&[8, 24], 13), ids];
        check("packed attention", inputs.clone(), &steps, None);
        check(
            "packed attention, the table a parameter",
            inputs,
            &steps,
            Some(0),
        );
    }

    #[test]
    fn ops_without_a_rule_of_their_own_go_through_candle() {
        let steps = [
            Step(Sqr, vec![0], vec![], vec![]),
            Step(Sqrt, vec![3], vec![], vec![]),
            Step(Div, vec![0, 1], vec![], vec![]),
            Step(Maximum, vec![4, 5], vec![], vec![]),
            Step(Silu, vec![6], vec![], vec![]),
            Step(LogSoftmax, vec![7], vec![], vec![]),
            Step(Clamp, vec![8], vec![], vec![-2.0, -0.5]),
            Step(Sin, vec![9], vec![], vec![]),
            // A broadcast product: not candle's plain matmul rule.
            Step(Matmul, vec![10, 2], vec![], vec![]),
        ];
        let inputs = vec![
            randn(&[2, 3, 4], 14),
            randn(&[3, 4], 15).affine(0.1, 2.0).unwrap(),
            randn(&[4, 5], 16),
        ];
        check("fallbacks", inputs, &steps, None);
    }

    #[test]
    fn constants_and_detached_values_get_no_gradient() {
        let steps = [
            Step(Detach, vec![0], vec![], vec![]),
            Step(Mul, vec![2, 0], vec![], vec![]),
            Step(Add, vec![3, 1], vec![], vec![]),
        ];
        let mut tape = CallTape::new(Precision::F32);
        let x = tape.input(&randn(&[3], 16));
        let c = randn(&[3], 17);
        let mut values = vec![x.clone(), c.clone()];
        run(&mut values, &steps, Some(&mut tape));
        let out = values.last().unwrap();
        let g = Tensor::ones(3, DType::F32, &Device::Cpu).unwrap();
        let grads = tape.backward(out.id(), &g).unwrap();
        // d/dx of detach(x)·x + c is x: the detached factor is a constant.
        assert_ne!(values[2].id(), x.id(), "detach answered its input");
        let gx = grads[&x.id()].to_vec1::<f32>().unwrap();
        assert_eq!(gx, x.to_vec1::<f32>().unwrap());
        assert!(!grads.contains_key(&c.id()), "a constant got a gradient");
        assert!(!tape.tracked.contains(&c.id()));
    }
}
