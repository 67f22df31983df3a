//! The reference GPT block (pre-LayerNorm causal attention and GELU MLP, each
//! residual add inside its output projection) as one autograd node that runs
//! its own backward.
//!
//! Composed, the block is eight candle nodes, and candle's backward gives each
//! node input a zero tensor and adds its gradient into it: on the cpu track
//! ~36 MB of zero-fills and ~44 MB of adds a layer, for gradients that have one
//! consumer and could simply be handed on. This node runs the same kernels in
//! the same order and hands each gradient straight to the next kernel; the two
//! residual-stream gradients that do have two sources are summed by the
//! LayerNorm backward as it writes its input's gradient. Values and gradients
//! equal the composed block's, bit for bit (the tests compare them).
//!
//! The parameters do not enter candle's graph at all: the node's only input
//! is the block's input, and its backward puts the 12 parameter gradients
//! into a [`ParamGrads`] the trainer takes them from. Packed as one input
//! (a node takes at most three), each had gone through three of candle's
//! accumulations (the packed tensor, each flat view, the parameter), a zero
//! tensor and an add apiece: ~38 MB of memory traffic a block, for
//! gradients that have one consumer.

use crate::activation::Act;
use crate::linear::{self, Epilogue};
use crate::{attention, norm};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, TensorId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Gradients of parameters that fused nodes computed outside candle's graph,
/// by the parameter tensor's id: a node's backward moves each in (or adds it
/// to what the parameter already has), the trainer takes them out after the
/// backward. One per model; cleared at each forward, so that a backward whose
/// gradients were never taken (a probe's) leaves nothing for the next.
#[derive(Default)]
pub struct ParamGrads(Mutex<HashMap<TensorId, Tensor>>);

impl ParamGrads {
    /// Forgets every gradient held.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Takes out the gradient `param` received, if any.
    pub fn take(&self, param: &Tensor) -> Option<Tensor> {
        self.lock().remove(&param.id())
    }

    /// Adds `grad` to what `param` received so far (the first is moved in).
    pub fn add(&self, param: &Tensor, grad: Tensor) -> Result<()> {
        let mut held = self.lock();
        let sum = match held.remove(&param.id()) {
            Some(g) => (g + grad)?,
            None => grad,
        };
        held.insert(param.id(), sum);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TensorId, Tensor>> {
        // A panic while holding it left a map that is still whole.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One block's parameters, GPT-2's names in the comments.
pub struct BlockParams<'a> {
    /// `ln_1` gain and bias, `[D]`.
    pub ln_1: [&'a Tensor; 2],
    /// `attn.c_attn`: `[D, 3D]`, `[3D]`.
    pub attn: [&'a Tensor; 2],
    /// `attn.c_proj`: `[D, D]`, `[D]`.
    pub attn_proj: [&'a Tensor; 2],
    /// `ln_2` gain and bias, `[D]`.
    pub ln_2: [&'a Tensor; 2],
    /// `mlp.c_fc`: `[D, H]`, `[H]`.
    pub fc: [&'a Tensor; 2],
    /// `mlp.c_proj`: `[H, D]`, `[D]`.
    pub mlp_proj: [&'a Tensor; 2],
}

impl BlockParams<'_> {
    /// In the order the node packs them.
    pub(crate) fn all(&self) -> [&Tensor; 12] {
        let [a, b, c, d, e, f] = [
            self.ln_1,
            self.attn,
            self.attn_proj,
            self.ln_2,
            self.fc,
            self.mlp_proj,
        ];
        [
            a[0], a[1], b[0], b[1], c[0], c[1], d[0], d[1], e[0], e[1], f[0], f[1],
        ]
    }
}

/// The block's forward on untracked tensors, every intermediate the backward
/// reads kept.
pub(crate) struct Forward {
    /// The 12 parameters (detached, contiguous), in `BlockParams::all` order.
    p: Vec<Tensor>,
    x: Tensor,
    h1: Tensor,
    /// c_attn's product without its bias (see `attention::biased`).
    qkv: Tensor,
    a: Tensor,
    x2: Tensor,
    h2: Tensor,
    pre: Tensor,
    u: Tensor,
    /// The output, until the node's `cpu_fwd` (or the tape) takes it.
    pub(crate) y: Pending,
}

impl Forward {
    /// `p`: the 12 parameters, detached and contiguous, in `BlockParams::all` order.
    pub(crate) fn run(x: &Tensor, p: Vec<Tensor>, heads: usize, eps: f64) -> Result<Forward> {
        let x = x.detach().contiguous()?;
        let h1 = crate::layer_norm(&x, Some(&p[0]), Some(&p[1]), eps)?;
        // c_attn's product alone: the attention adds its bias as it reads.
        let qkv = crate::linear(&h1, &p[2], None)?;
        let a = attention::biased(&qkv, &p[3], heads)?;
        let x2 = crate::linear_residual(&a, &p[4], &p[5], &x)?;
        let h2 = crate::layer_norm(&x2, Some(&p[6]), Some(&p[7]), eps)?;
        let (pre, u) = linear::linear_act_parts(&h2, &p[8], &p[9], Act::Gelu)?;
        let y = crate::linear_residual(&u, &p[10], &p[11], &x2)?;
        Ok(Forward {
            p,
            x,
            h1,
            qkv,
            a,
            x2,
            h2,
            pre,
            u,
            y: Pending::new(y),
        })
    }

    /// The input's gradient and the 12 parameters' (in order) from the
    /// output's: the composed block's backward, kernel for kernel. `dy_sum`:
    /// dy's column sums when the pass that wrote dy made them (the next
    /// block's ln_1, ln_f); `sum_dx`: make dx's the same way for the block
    /// before. Both are the bits a column sum afterwards would give.
    pub(crate) fn backward(
        &self,
        dy: &Tensor,
        dy_sum: Option<Tensor>,
        sum_dx: bool,
        heads: usize,
        eps: f64,
    ) -> Result<(Tensor, Option<Tensor>, Vec<Tensor>)> {
        let p = &self.p;
        let dy = dy.contiguous()?;
        // y = x2 + u @ w + b: dx2 gets dy itself.
        let (du, dw_q) = linear::product_grads(&self.u, &p[10], &dy)?;
        let db_q = match dy_sum {
            Some(s) => s,
            None => linear::bias_grad(&dy)?,
        };
        let (dpre, db_f) = Act::Gelu.backward_summed(&self.pre, &du)?;
        let (dh2, dw_f) = linear::product_grads(&self.h2, &p[8], &dpre)?;
        // dx2 = dy + ln_2's input gradient, summed as the norm writes it.
        let (dx2, dg_2, db_2, db_p) =
            norm::layer_norm_grads(&self.x2, &p[6], &dh2, Some(&dy), eps, true)?;
        let db_p = db_p.expect("ln_2 was asked for dx's sums");
        // x2 = x + a @ w + b: dx gets dx2 itself.
        let (da, dw_p) = linear::product_grads(&self.a, &p[4], &dx2)?;
        let dqkv = attention::biased_grad(&self.qkv, &p[3], &da, heads)?;
        let (dh1, dw_a, db_a) = linear::grads(&self.h1, &p[2], &dqkv)?;
        let (dx, dg_1, db_1, dx_sum) =
            norm::layer_norm_grads(&self.x, &p[0], &dh1, Some(&dx2), eps, sum_dx)?;
        Ok((
            dx,
            dx_sum,
            vec![
                dg_1, db_1, dw_a, db_a, dw_p, db_p, dg_2, db_2, dw_f, db_f, dw_q, db_q,
            ],
        ))
    }
}

/// The node: its one input the block's input; the forward already ran, so
/// `cpu_fwd` hands over its output, and the backward sends the parameters'
/// gradients to `grads`.
struct Node {
    forward: Forward,
    /// The caller's parameter tensors, in `BlockParams::all` order: the
    /// gradients go out under their ids.
    params: Vec<Tensor>,
    grads: Arc<ParamGrads>,
    heads: usize,
    eps: f64,
}

impl CustomOp1 for Node {
    fn name(&self) -> &'static str {
        "speedrun-reference-block"
    }

    fn cpu_fwd(&self, _x: &CpuStorage, _xl: &Layout) -> Result<(CpuStorage, Shape)> {
        self.forward.y.hand_over(self.name())
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (dx, _, dp) = self
            .forward
            .backward(grad, None, false, self.heads, self.eps)?;
        for (p, g) in self.params.iter().zip(dp) {
            self.grads.add(p, g)?;
        }
        Ok(Some(dx))
    }
}

/// A node's output computed before the node, until it is handed over: once,
/// so that the graph does not hold it twice.
pub struct Pending(Mutex<Option<Tensor>>);

impl Pending {
    pub fn new(y: Tensor) -> Pending {
        Pending(Mutex::new(Some(y)))
    }

    /// The output; `name` says whose, in the error on a second take.
    pub fn take(&self, name: &str) -> Result<Tensor> {
        let taken = self.0.lock().map(|mut y| y.take());
        let Ok(Some(y)) = taken else {
            bail!("{name}: the output was already handed over")
        };
        Ok(y)
    }

    /// The output as a node's `cpu_fwd` returns it: its storage, which must
    /// be a whole contiguous buffer (cloned once: candle's op output is owned).
    /// A view (a plugin's transposed or narrowed output) is copied out first.
    pub fn hand_over(&self, name: &str) -> Result<(CpuStorage, Shape)> {
        let y = self.take(name)?;
        let whole = |l: &Layout| matches!(l.contiguous_offsets(), Some((0, end)) if end == l.shape().elem_count());
        let y = if whole(y.layout()) {
            y
        } else {
            y.force_contiguous()?
        };
        crate::real::with_cpu(&y, name, |s, layout| {
            if !whole(layout) {
                bail!("{name}: the output is not a whole buffer")
            }
            Ok((s.clone(), layout.shape().clone()))
        })
    }
}

/// The reference block `x ↦ x2 + mlp(ln_2(x2))`, `x2 = x + attn(ln_1(x))`, for
/// `x` `[B, T, D]` with `heads` heads and LayerNorm epsilon `eps`, as one node.
/// Its backward gives `x` its gradient through candle's graph and puts the
/// parameters' into `grads` (see [`ParamGrads`]).
/// CPU only: elsewhere the caller composes the block's ops.
pub fn reference_block(
    x: &Tensor,
    params: &BlockParams,
    heads: usize,
    eps: f64,
    grads: &Arc<ParamGrads>,
) -> Result<Tensor> {
    let all = params.all();
    if !x.device().is_cpu() {
        bail!("reference_block: CPU only (elsewhere the block is its composed ops)")
    }
    let p = all
        .iter()
        .map(|t| t.detach().contiguous())
        .collect::<Result<Vec<_>>>()?;
    let forward = Forward::run(x, p, heads, eps)?;
    x.apply_op1(Node {
        forward,
        params: all.iter().map(|t| (*t).clone()).collect(),
        grads: grads.clone(),
        heads,
        eps,
    })
}
