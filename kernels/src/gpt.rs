//! The whole reference GPT, token ids to logits, on the host's own tape.
//!
//! The forward runs each step (embedding, the blocks, the final LayerNorm,
//! the tied head) on untracked tensors and records it on a [`Tape`] with what
//! its backward reads. The backward walks the tape in reverse itself: the
//! residual stream's gradient is handed from step to step (candle's backward
//! would give each block's input a zero tensor and an add), and each
//! parameter's gradient goes into the model's [`ParamGrads`] (the first
//! moved in, a later one added: the tied `wte` gets the head's and the
//! embedding's). candle's autograd sees one node, from `wte` to the logits;
//! the loss before it stays the host's own node.
//!
//! Values and gradients equal the composed model's (candle's graph over the
//! same kernels) bit for bit: the steps call the kernels the composed ops
//! call, in the order candle's backward calls them (the tests compare them).

use crate::bias::ColumnSum;
use crate::block::{self, BlockParams, ParamGrads, Pending};
use crate::linear;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use std::sync::Arc;

/// The reference GPT's parameters, GPT-2's names in the comments.
pub struct GptParams<'a> {
    /// `wte`, `[V, D]`: the token embedding and, transposed, the head.
    pub wte: &'a Tensor,
    /// `wpe`, `[positions, D]`.
    pub wpe: &'a Tensor,
    /// `h.{layer}`, in order.
    pub blocks: Vec<BlockParams<'a>>,
    /// `ln_f` gain and bias, `[D]`.
    pub ln_f: [&'a Tensor; 2],
}

/// One recorded step, what its backward reads, and the caller's parameter
/// tensors its gradients go out under.
enum Step {
    /// `x = wte[ids] + wpe[..t]`, `x` `[B, T, D]`.
    Embed {
        ids: Tensor,
        wte: Tensor,
        wpe: Tensor,
    },
    /// One block: its forward keeps its own intermediates.
    Block {
        forward: block::Forward,
        params: Vec<Tensor>,
    },
    /// `h = ln_f(x)`.
    FinalNorm {
        x: Tensor,
        gain: Tensor,
        params: [Tensor; 2],
    },
    /// `logits = h wteᵀ`; `w` is `wteᵀ` as the head's product read it.
    Head { h: Tensor, w: Tensor, wte: Tensor },
}

/// The forward's steps in order.
struct Tape {
    steps: Vec<Step>,
    heads: usize,
    eps: f64,
    logits: Pending,
}

impl Tape {
    fn record(tokens: &Tensor, params: &GptParams, heads: usize, eps: f64) -> Result<Tape> {
        let detached = |t: &Tensor| t.detach().contiguous();
        let (b, t) = tokens.dims2()?;
        let (wte, wpe) = (detached(params.wte)?, detached(params.wpe)?);
        let d = wte.dim(1)?;
        let ids = tokens.flatten_all()?;
        // EmbedHook's ops, untracked.
        let tok = wte.index_select(&ids, 0)?.reshape((b, t, d))?;
        let mut x = crate::add_rows(&tok, &wpe.narrow(0, 0, t)?)?;
        let mut steps = vec![Step::Embed {
            ids,
            wte: params.wte.clone(),
            wpe: params.wpe.clone(),
        }];
        for bp in &params.blocks {
            let all = bp.all();
            let p = all
                .iter()
                .map(|t| detached(t))
                .collect::<Result<Vec<_>>>()?;
            let forward = block::Forward::run(&x, p, heads, eps)?;
            x = forward.y.take("reference_gpt")?;
            let params = all.into_iter().cloned().collect();
            steps.push(Step::Block { forward, params });
        }
        let (gain, bias) = (detached(params.ln_f[0])?, detached(params.ln_f[1])?);
        let h = crate::layer_norm(&x, Some(&gain), Some(&bias), eps)?;
        let ln_f = params.ln_f.map(|t| t.clone());
        steps.push(Step::FinalNorm {
            x,
            gain,
            params: ln_f,
        });
        // HeadHook's product: `linear(h, wteᵀ)`, which makes wteᵀ contiguous.
        let w = wte.t()?.contiguous()?;
        let logits = crate::linear(&h, &w, None)?;
        let wte = params.wte.clone();
        steps.push(Step::Head { h, w, wte });
        Ok(Tape {
            steps,
            heads,
            eps,
            logits: Pending::new(logits),
        })
    }

    /// Every parameter's gradient into `grads`, from the logits'.
    fn backward(&self, dlogits: &Tensor, grads: &ParamGrads) -> Result<()> {
        let mut dy = dlogits.contiguous()?;
        // dy's column sums, when the pass that wrote dy made them for the
        // block below (its c_proj's bias gradient).
        let mut dy_sum = None;
        for (i, step) in self.steps.iter().enumerate().rev() {
            let block_below = i > 0 && matches!(self.steps[i - 1], Step::Block { .. });
            dy = match step {
                Step::Head { h, w, wte } => {
                    // The head's node: g wᵀ and hᵀ g; candle's transpose hands
                    // wte the second one's transpose.
                    let (inner, out) = w.dims2()?;
                    let rows = h.elem_count() / inner;
                    let g = dy.reshape((rows, out))?;
                    let dh = linear::input_grad(&g, w)?;
                    let dw = linear::weight_grad(&h.reshape((rows, inner))?, &g)?;
                    grads.add(wte, dw.t()?.contiguous()?)?;
                    dh.reshape(h.shape())?
                }
                Step::FinalNorm { x, gain, params } => {
                    let (dx, dg, db, dx_sum) =
                        crate::norm::layer_norm_grads(x, gain, &dy, None, self.eps, block_below)?;
                    dy_sum = dx_sum;
                    grads.add(&params[0], dg)?;
                    grads.add(&params[1], db)?;
                    dx
                }
                Step::Block { forward, params } => {
                    let (dx, dx_sum, dp) =
                        forward.backward(&dy, dy_sum.take(), block_below, self.heads, self.eps)?;
                    dy_sum = dx_sum;
                    for (p, g) in params.iter().zip(dp) {
                        grads.add(p, g)?;
                    }
                    dx
                }
                Step::Embed { ids, wte, wpe } => {
                    let (b, t, d) = dy.dims3()?;
                    // add_rows' node: the positions' gradient is dy's column
                    // sums over the batch; narrow's pads the unused rows.
                    let dpos = dy
                        .reshape((b, t * d))?
                        .apply_op1_no_bwd(&ColumnSum { m: t * d })?
                        .reshape((t, d))?;
                    let positions = wpe.dim(0)?;
                    let dpos = if positions > t {
                        let rest = Tensor::zeros((positions - t, d), dy.dtype(), dy.device())?;
                        Tensor::cat(&[&dpos, &rest], 0)?
                    } else {
                        dpos
                    };
                    grads.add(wpe, dpos)?;
                    // index_select's: dy's rows added into wte's gradient so
                    // far (the head's), position by position, as candle's
                    // backward adds them.
                    let held = match grads.take(wte) {
                        Some(g) => g,
                        None => wte.zeros_like()?,
                    };
                    grads.add(wte, held.index_add(ids, &dy.reshape((b * t, d))?, 0)?)?;
                    dy
                }
            };
        }
        Ok(())
    }
}

/// The node: its one input `wte`; the forward already ran on the tape, so
/// `cpu_fwd` hands over the logits, and the backward sends every parameter's
/// gradient to `grads`.
struct Node {
    tape: Tape,
    grads: Arc<ParamGrads>,
}

impl CustomOp1 for Node {
    fn name(&self) -> &'static str {
        "speedrun-reference-gpt"
    }

    fn cpu_fwd(&self, _w: &CpuStorage, _wl: &Layout) -> Result<(CpuStorage, Shape)> {
        self.tape.logits.hand_over(self.name())
    }

    fn bwd(&self, _w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        self.tape.backward(grad, &self.grads)?;
        // wte's gradient went to `grads` with the others.
        Ok(None)
    }
}

/// The reference GPT's logits `[B, T, V]` for token ids `[B, T]`: the tied
/// embedding, `params.blocks.len()` blocks of `heads` heads (LayerNorm
/// epsilon `eps`), the final LayerNorm and the tied head, recorded on the
/// host's tape. Its backward puts every parameter's gradient into `grads`
/// (see [`ParamGrads`]). CPU only: elsewhere the caller composes the model.
pub fn reference_gpt(
    tokens: &Tensor,
    params: &GptParams,
    heads: usize,
    eps: f64,
    grads: &Arc<ParamGrads>,
) -> Result<Tensor> {
    if !params.wte.device().is_cpu() {
        bail!("reference_gpt: CPU only (elsewhere the model is its composed ops)")
    }
    let tape = Tape::record(tokens, params, heads, eps)?;
    params.wte.apply_op1(Node {
        tape,
        grads: grads.clone(),
    })
}
