//! One trait per hook point. A plugin implements the ones it provides and lists
//! them in [`crate::export_plugin!`]. Each trait's doc is its contract: what it
//! receives, what it returns, what it may change and which ops it may call
//! (enforced by the host: an op outside the contract is an error).

use crate::{
    ForwardCtx, ModelShape, NormSite, OptimizerStep, ParamDecl, ParamRef, Result, ScheduleOut,
    Tensor,
};

/// A plugin: built once per run from its configuration.
pub trait Plugin: Sized + 'static {
    /// Every configuration key the plugin accepts, with its default (a JSON
    /// object). The host fills keys that match the track's `[optimizer]` table
    /// from it, then applies the user's overrides; an unknown key is an error.
    fn default_config() -> serde_json::Value {
        serde_json::json!({})
    }

    fn new(config: &serde_json::Value) -> Result<Self>;
}

/// `schedule`, each step: the learning-rate and momentum multipliers for step
/// `step` of `total_steps`. A pure function of its arguments: calls no op.
pub trait Schedule {
    fn at(&mut self, step: usize, total_steps: usize) -> Result<ScheduleOut>;
}

/// `optimizer.init` (once, before the first step) and `optimizer.step` (each
/// step, after the backward pass). The only hooks that may write: `assign` and
/// `adamw_update` on a parameter or on kept state. State tensors are created in
/// `init` and kept with [`Tensor::keep`]; every other handle dies when the call
/// returns. May not read parameters by name (`param`): they are passed in.
pub trait Optimizer {
    fn init(&mut self, params: &[ParamRef]) -> Result<()>;
    fn step(&mut self, step: &OptimizerStep) -> Result<()>;
}

/// `model.params`, once at start-up: receives the declarations so far (the
/// reference GPT's, or the previous plugin's) and returns the full list; may
/// add, remove or reshape parameters. Calls no op.
pub trait Params {
    fn params(&mut self, model: &ModelShape, declared: Vec<ParamDecl>) -> Result<Vec<ParamDecl>>;
}

/// `model.init`, once per parameter: its initial value, with `p`'s shape.
/// Declarative: one constant (`zeros`, `ones`, `full`) or one distribution
/// (`randn`, `uniform`, drawn from the parameter's own seeded stream), nothing
/// composed and no `from_values`. `None` leaves the parameter to the next hook
/// (the reference).
pub trait Init {
    fn init(&mut self, p: &ParamDecl, model: &ModelShape) -> Result<Option<Tensor>>;
}

/// `model.embed`, each forward: token ids `[B, T]` (u32) to the residual stream
/// `[B, T, D]`. May read parameters; may not write.
///
/// Pure: every call runs on an instance made for it from the configuration
/// (nothing from earlier calls survives); no `keep`, no writes; in eval mode no
/// value read back (`to_scalar`) and no failed op.
pub trait Embed {
    fn embed(&mut self, cx: &ForwardCtx, tokens: &Tensor) -> Result<Tensor>;
}

/// `model.norm`, each forward: a normalisation of `[B, T, D]`, shape preserved.
///
/// Pure: every call runs on an instance made for it from the configuration
/// (nothing from earlier calls survives); no `keep`, no writes; in eval mode no
/// value read back (`to_scalar`) and no failed op.
pub trait Norm {
    fn norm(&mut self, cx: &ForwardCtx, site: NormSite, x: &Tensor) -> Result<Tensor>;
}

/// `model.attention`, each forward, per layer: normalised stream `[B, T, D]` to
/// the attention output `[B, T, D]` (before the residual add). Must be causal:
/// twin forwards of real batches check it.
///
/// Pure: every call runs on an instance made for it from the configuration
/// (nothing from earlier calls survives); no `keep`, no writes; in eval mode no
/// value read back (`to_scalar`) and no failed op.
pub trait Attention {
    fn attention(&mut self, cx: &ForwardCtx, layer: usize, x: &Tensor) -> Result<Tensor>;
}

/// `model.mlp`, each forward, per layer: normalised stream `[B, T, D]` to the MLP
/// output `[B, T, D]`.
///
/// Pure: every call runs on an instance made for it from the configuration
/// (nothing from earlier calls survives); no `keep`, no writes; in eval mode no
/// value read back (`to_scalar`) and no failed op.
pub trait Mlp {
    fn mlp(&mut self, cx: &ForwardCtx, layer: usize, x: &Tensor) -> Result<Tensor>;
}

/// `model.block`, each forward, per layer: residual stream in, residual stream
/// out. A plugin block computes its norm, attention and MLP itself with ops.
///
/// Pure: every call runs on an instance made for it from the configuration
/// (nothing from earlier calls survives); no `keep`, no writes; in eval mode no
/// value read back (`to_scalar`) and no failed op.
pub trait Block {
    fn block(&mut self, cx: &ForwardCtx, layer: usize, x: &Tensor) -> Result<Tensor>;
}

/// `model.head`, each forward: final normalised stream `[B, T, D]` to logits
/// `[B, T, V]` over the whole vocabulary (the host checks the shape and computes
/// the loss itself).
///
/// Pure: every call runs on an instance made for it from the configuration
/// (nothing from earlier calls survives); no `keep`, no writes; in eval mode no
/// value read back (`to_scalar`) and no failed op.
pub trait Head {
    fn head(&mut self, cx: &ForwardCtx, x: &Tensor) -> Result<Tensor>;
}

/// `model.forward`, each forward: token ids `[B, T]` to logits `[B, T, V]`;
/// replaces every model hook above.
///
/// Pure: every call runs on an instance made for it from the configuration
/// (nothing from earlier calls survives); no `keep`, no writes; in eval mode no
/// value read back (`to_scalar`) and no failed op.
pub trait Forward {
    fn forward(&mut self, cx: &ForwardCtx, tokens: &Tensor) -> Result<Tensor>;
}
