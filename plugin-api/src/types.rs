//! The values hooks receive that hold tensor handles, the forward context,
//! and the names the technique plugins agree on.

use crate::{Result, Tensor};
pub use speedrun_plugin_abi::{ModelShape, NormSite, ParamDecl, ParamKind, ScheduleOut};

/// A parameter as `optimizer.init` sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamRef {
    pub name: String,
    pub kind: ParamKind,
    pub dims: Vec<usize>,
    /// Valid during the `optimizer.init` call only.
    pub tensor: Tensor,
}

/// One parameter and its gradient, as `optimizer.step` sees them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamGrad {
    pub param: Tensor,
    pub grad: Tensor,
}

/// What `optimizer.step` receives.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerStep {
    /// 0-based step index.
    pub step: usize,
    /// Learning rate for this step: the track's peak times the schedule's multiplier.
    pub lr: f64,
    pub momentum_mult: f64,
    /// Global gradient L2 norm, before any clipping, measured by the host.
    pub grad_norm: f64,
    /// Every parameter, in the order `optimizer.init` saw them. Handles are new
    /// each step: key state by position, never by handle.
    pub params: Vec<ParamGrad>,
}

/// The name of layer `layer`'s value-embedding table `[vocab, width]`: when the
/// model declares it, that layer's attention adds the table's rows for the
/// forward's tokens to its values (the host's attention, and `ForwardCtx::
/// value_embedding` for plugin attentions).
pub fn value_embed_name(layer: usize) -> String {
    format!("transformer.h.{layer}.attn.value_embed.weight")
}

/// The name of the U-net skip weights `[n]` (n ≤ layers / 2): when the model
/// declares them, the host's forward adds block `n−1−i`'s output, times weight
/// `i`, to the input of block `layers−n+i`.
pub const SKIP_WEIGHTS: &str = "transformer.skip_weights";

/// The name of an untied output head's matrix `[vocab, width]`; without it the
/// head is tied to `transformer.wte.weight`.
pub const UNTIED_HEAD: &str = "lm_head.weight";

/// What a forward hook may know besides its inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForwardCtx {
    /// False while the host validates (eval mode).
    pub train: bool,
    pub model: ModelShape,
}

impl ForwardCtx {
    /// A model parameter by name (e.g. `transformer.h.0.mlp.c_fc.weight`).
    pub fn param(&self, name: &str) -> Result<Tensor> {
        Tensor::param(name)
    }

    /// The output head's matrix `[vocab, width]`: the untied `lm_head.weight`
    /// when the model declares one (the `untied-head` plugin), else the token
    /// embedding it is tied to.
    pub fn head_weight(&self) -> Result<Tensor> {
        Tensor::param(UNTIED_HEAD).or_else(|_| Tensor::param("transformer.wte.weight"))
    }

    /// Layer `layer`'s value embedding of this forward's tokens, `[B, T, D]`,
    /// when the model declares one (the `value-embeddings` plugin): every
    /// attention adds it to its values v.
    pub fn value_embedding(&self, layer: usize) -> Result<Option<Tensor>> {
        match Tensor::param(&value_embed_name(layer)) {
            Ok(table) => Ok(Some(table.embedding(&Tensor::tokens()?)?)),
            Err(_) => Ok(None),
        }
    }

    /// The token ids `[B, T]` (u32) of this forward pass, in any forward hook
    /// (the embedding's input; value embeddings read them again in attention).
    /// They are relabelled by the run's secret vocabulary permutation.
    pub fn tokens(&self) -> Result<Tensor> {
        Tensor::tokens()
    }

    /// The document separator's id among `tokens()` (GPT-2's end-of-text under
    /// the run's permutation), or `None` on a tokenizer without one.
    pub fn separator_token(&self) -> Result<Option<u32>> {
        Tensor::separator_token()
    }

    /// A parameter of layer `layer`: `transformer.h.{layer}.{name}`.
    pub fn layer_param(&self, layer: usize, name: &str) -> Result<Tensor> {
        Tensor::param(&format!("transformer.h.{layer}.{name}"))
    }
}

/// `x @ w + b` for `x [..., in]` and `w [in, out]` (GPT-2's Conv1D layout), the
/// building block of most model hooks: the host's fused `linear` op, one autograd
/// node like the reference model's.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    x.linear(w, b)
}
