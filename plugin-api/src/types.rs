//! The values hooks receive and return.

use crate::{bail, Op, Result, Tensor};
use serde::{Deserialize, Serialize};

/// The reference model's shape, as the track gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelShape {
    pub layers: usize,
    pub width: usize,
    pub heads: usize,
    pub seq_len: usize,
    pub vocab: usize,
}

impl ModelShape {
    pub fn head_dim(&self) -> usize {
        self.width / self.heads.max(1)
    }
}

/// What a parameter is for; decides its reference initialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    /// Token embedding (also the tied output head).
    TokenEmbedding,
    /// Learned position embedding.
    PositionEmbedding,
    /// A hidden weight matrix.
    Matrix,
    /// A matrix writing into the residual stream (scaled init).
    ResidualProjection,
    Bias,
    NormGain,
    NormBias,
}

impl ParamKind {
    pub const ALL: [ParamKind; 7] = [
        ParamKind::TokenEmbedding,
        ParamKind::PositionEmbedding,
        ParamKind::Matrix,
        ParamKind::ResidualProjection,
        ParamKind::Bias,
        ParamKind::NormGain,
        ParamKind::NormBias,
    ];

    pub fn code(self) -> i64 {
        ParamKind::ALL.iter().position(|&k| k == self).unwrap_or(0) as i64
    }

    pub fn from_code(code: i64) -> Result<ParamKind> {
        match usize::try_from(code)
            .ok()
            .and_then(|i| ParamKind::ALL.get(i))
        {
            Some(&k) => Ok(k),
            None => bail!("unknown parameter kind code {code}"),
        }
    }
}

/// One declared parameter (`model.params`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamDecl {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
}

impl ParamDecl {
    pub fn new(name: impl Into<String>, shape: &[usize], kind: ParamKind) -> ParamDecl {
        ParamDecl {
            name: name.into(),
            shape: shape.to_vec(),
            kind,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Which normalisation a `model.norm` call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormSite {
    /// Before layer `l`'s attention.
    Attention(usize),
    /// Before layer `l`'s MLP.
    Mlp(usize),
    /// After the last layer, before the head.
    Final,
}

/// The `schedule` hook's answer for one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScheduleOut {
    /// Multiplier on the track's peak learning rate.
    pub lr_mult: f64,
    pub momentum_mult: f64,
    /// Training tokens for this step (a positive multiple of the sequence length);
    /// `None` keeps the track's `batch_tokens`. The host refuses a step that would
    /// take the run past the track's token budget.
    #[serde(default)]
    pub batch_tokens: Option<usize>,
}

impl ScheduleOut {
    /// Multipliers only, at the track's batch size.
    pub fn new(lr_mult: f64, momentum_mult: f64) -> ScheduleOut {
        ScheduleOut {
            lr_mult,
            momentum_mult,
            batch_tokens: None,
        }
    }
}

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

// Keeps `Op` referenced for rustdoc links above.
#[allow(dead_code)]
const _OP: Option<Op> = None;
