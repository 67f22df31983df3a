//! The whole reference GPT, token ids to logits, on the host's own tape.
//!
//! The forward runs each step (embedding, the blocks, the final LayerNorm,
//! the tied head) on untracked tensors and records it on a [`Tape`] with what
//! its backward reads. The backward walks the tape in reverse itself: the
//! residual stream's gradient is handed from step to step (candle's backward
//! would give each block's input a zero tensor and an add), and each
//! parameter's first gradient is moved into its slot, a later one added
//! (the tied `wte` gets the head's and the embedding's). candle's autograd
//! sees one node, from `wte` to the logits, whose backward puts every
//! parameter's gradient into the model's [`ParamGrads`]; the loss before it
//! stays the host's own node.
//!
//! Values and gradients equal the composed model's (candle's graph over the
//! same kernels) bit for bit: the steps call the kernels the composed ops
//! call, in the order candle's backward calls them (the tests compare them).

use crate::bias::ColumnSum;
use crate::block::{self, BlockParams, ParamGrads};
use crate::linear;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

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

impl GptParams<'_> {
    /// Every parameter in slot order: wte, wpe, each block's 12, ln_f's 2.
    fn all(&self) -> Vec<&Tensor> {
        let mut all = vec![self.wte, self.wpe];
        for b in &self.blocks {
            all.extend(b.all());
        }
        all.extend(self.ln_f);
        all
    }
}

/// Where a parameter's gradient goes: its index in [`GptParams::all`].
const WTE: usize = 0;
const WPE: usize = 1;
fn block_slot(layer: usize, j: usize) -> usize {
    2 + 12 * layer + j
}

/// One recorded step and what its backward reads.
enum Step {
    /// `x = wte[ids] + wpe[..t]`, `x` `[B, T, D]`.
    Embed { ids: Tensor, positions: usize },
    /// One block: its forward keeps its own intermediates.
    Block {
        layer: usize,
        forward: block::Forward,
    },
    /// `h = ln_f(x)`.
    FinalNorm { x: Tensor, gain: Tensor },
    /// `logits = h wteᵀ`; `w` is `wteᵀ` as the head's product read it.
    Head { h: Tensor, w: Tensor },
}

/// The forward's steps in order, and the slots of the parameters' gradients.
struct Tape {
    steps: Vec<Step>,
    heads: usize,
    eps: f64,
    /// The output, until the node hands it over.
    logits: Mutex<Option<Tensor>>,
}

/// Per-parameter gradient slots: the first moved in, later ones added.
struct Slots(Vec<Option<Tensor>>);

impl Slots {
    fn give(&mut self, slot: usize, g: Tensor) -> Result<()> {
        let sum = match self.0[slot].take() {
            Some(held) => (held + g)?,
            None => g,
        };
        self.0[slot] = Some(sum);
        Ok(())
    }
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
            positions: wpe.dim(0)?,
        }];
        for (layer, bp) in params.blocks.iter().enumerate() {
            let p = bp
                .all()
                .iter()
                .map(|t| detached(t))
                .collect::<Result<Vec<_>>>()?;
            let forward = block::Forward::run(&x, p, heads, eps)?;
            x = forward.take_output("reference_gpt")?;
            steps.push(Step::Block { layer, forward });
        }
        let (gain, bias) = (detached(params.ln_f[0])?, detached(params.ln_f[1])?);
        let h = crate::layer_norm(&x, Some(&gain), Some(&bias), eps)?;
        steps.push(Step::FinalNorm { x, gain });
        // HeadHook's product: `linear(h, wteᵀ)`, which makes wteᵀ contiguous.
        let w = wte.t()?.contiguous()?;
        let logits = crate::linear(&h, &w, None)?;
        steps.push(Step::Head { h, w });
        Ok(Tape {
            steps,
            heads,
            eps,
            logits: Mutex::new(Some(logits)),
        })
    }

    /// Every parameter's gradient (by slot) from the logits'.
    fn backward(&self, dlogits: &Tensor, slots: usize) -> Result<Vec<Option<Tensor>>> {
        let mut grads = Slots(vec![None; slots]);
        let ln_f = slots - 2;
        let mut dy = dlogits.contiguous()?;
        for step in self.steps.iter().rev() {
            dy = match step {
                Step::Head { h, w } => {
                    // The head's node: g wᵀ and hᵀ g; candle's transpose hands
                    // wte the second one's transpose.
                    let (inner, out) = w.dims2()?;
                    let rows = h.elem_count() / inner;
                    let g = dy.reshape((rows, out))?;
                    let dh = linear::input_grad(&g, w)?;
                    let dw = linear::weight_grad(&h.reshape((rows, inner))?, &g)?;
                    grads.give(WTE, dw.t()?.contiguous()?)?;
                    dh.reshape(h.shape())?
                }
                Step::FinalNorm { x, gain } => {
                    let (dx, dg, db) = crate::norm::layer_norm_grads(x, gain, &dy, None, self.eps)?;
                    grads.give(ln_f, dg)?;
                    grads.give(ln_f + 1, db)?;
                    dx
                }
                Step::Block { layer, forward } => {
                    let (dx, dp) = forward.backward(&dy, self.heads, self.eps)?;
                    for (j, g) in dp.into_iter().enumerate() {
                        grads.give(block_slot(*layer, j), g)?;
                    }
                    dx
                }
                Step::Embed { ids, positions } => {
                    let (b, t, d) = dy.dims3()?;
                    // add_rows' node: the positions' gradient is dy's column
                    // sums over the batch; narrow's pads the unused rows.
                    let dpos = dy
                        .reshape((b, t * d))?
                        .apply_op1_no_bwd(&ColumnSum { m: t * d })?
                        .reshape((t, d))?;
                    let dpos = if *positions > t {
                        let rest = Tensor::zeros((positions - t, d), dy.dtype(), dy.device())?;
                        Tensor::cat(&[&dpos, &rest], 0)?
                    } else {
                        dpos
                    };
                    grads.give(WPE, dpos)?;
                    // index_select's: dy's rows added into wte's gradient so
                    // far (the head's), position by position, as candle's
                    // backward adds them.
                    let rows = dy.reshape((b * t, d))?;
                    let held = match grads.0[WTE].take() {
                        Some(g) => g,
                        None => Tensor::zeros((self.vocab()?, d), dy.dtype(), dy.device())?,
                    };
                    grads.0[WTE] = Some(held.index_add(ids, &rows, 0)?);
                    dy
                }
            };
        }
        Ok(grads.0)
    }

    fn vocab(&self) -> Result<usize> {
        match self.steps.last() {
            Some(Step::Head { w, .. }) => w.dim(1),
            _ => bail!("reference_gpt: the tape ends without its head"),
        }
    }
}

/// The node: its one input `wte`; the forward already ran on the tape, so
/// `cpu_fwd` hands over the logits, and the backward sends every parameter's
/// gradient to `grads`.
struct Node {
    tape: Tape,
    /// The caller's parameter tensors, in slot order.
    params: Vec<Tensor>,
    grads: Arc<ParamGrads>,
}

impl CustomOp1 for Node {
    fn name(&self) -> &'static str {
        "speedrun-reference-gpt"
    }

    fn cpu_fwd(&self, _w: &CpuStorage, _wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let taken = self.tape.logits.lock().map(|mut y| y.take());
        let Ok(Some(logits)) = taken else {
            bail!("{}: the logits were already handed over", self.name())
        };
        block::hand_over(&logits, self.name())
    }

    fn bwd(&self, _w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grads = self.tape.backward(grad, self.params.len())?;
        for (p, g) in self.params.iter().zip(grads) {
            if let Some(g) = g {
                self.grads.add(p, g)?;
            }
        }
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
        params: params.all().into_iter().cloned().collect(),
        grads: grads.clone(),
    })
}
