//! One trait per hook point. A plugin implements the ones it provides and lists
//! them in [`crate::export_plugin!`]. Each trait's doc is its contract: what it
//! receives, what it returns, what it may change and which ops it may call
//! (enforced by the host: an op outside the contract is an error). Every
//! example compiles against this crate (`cargo test -p speedrun-plugin-api
//! --doc`); those that call ops are not run, since ops only work inside the host.
//!
//! Every forward hook (`model.*` but `params` and `init`) is pure: every call
//! runs on an instance made for it from the configuration (nothing from earlier
//! calls survives); no `keep`, no writes; in eval mode no value read back
//! (`to_scalar`) and no failed op.

use crate::{
    ForwardCtx, ModelShape, NormSite, OptimizerStep, ParamDecl, ParamRef, Result, ScheduleOut,
    Tensor,
};

/// A plugin: built once per run from its configuration.
///
/// ```
/// use speedrun_plugin_api::*;
/// struct Scaled { factor: f64 }
/// impl Plugin for Scaled {
///     fn default_config() -> serde_json::Value {
///         serde_json::json!({ "factor": 0.5 })
///     }
///     fn new(config: &serde_json::Value) -> Result<Self> {
///         match config["factor"].as_f64() {
///             Some(factor) if factor > 0.0 => Ok(Scaled { factor }),
///             _ => bail!("factor must be a positive number, got {}", config["factor"]),
///         }
///     }
/// }
/// let err = Scaled::new(&serde_json::json!({ "factor": -1 })).err().unwrap();
/// assert!(err.message().contains("positive"));
/// ```
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
///
/// ```
/// use speedrun_plugin_api::*;
/// /// Linear warm-down over the last fifth of the run.
/// struct WarmDown;
/// impl Plugin for WarmDown {
///     fn new(_: &serde_json::Value) -> Result<Self> { Ok(WarmDown) }
/// }
/// impl Schedule for WarmDown {
///     fn at(&mut self, step: usize, total: usize) -> Result<ScheduleOut> {
///         let start = total * 4 / 5;
///         let lr = if step < start { 1.0 } else { (total - step) as f64 / (total - start) as f64 };
///         Ok(ScheduleOut::new(lr, 1.0))
///     }
/// }
/// export_plugin!(WarmDown, hooks: [schedule]);
/// assert_eq!(WarmDown.at(90, 100).unwrap().lr_mult, 0.5);
/// ```
pub trait Schedule {
    fn at(&mut self, step: usize, total_steps: usize) -> Result<ScheduleOut>;
}

/// `optimizer.init` (once, before the first step) and `optimizer.step` (each
/// step, after the backward pass). The only hooks that may write: `assign` and
/// `adamw_update` on a parameter or on kept state. State tensors are created in
/// `init` and kept with [`Tensor::keep`]; every other handle dies when the call
/// returns. May not read parameters by name (`param`): they are passed in.
///
/// ```no_run
/// use speedrun_plugin_api::*;
/// /// SGD with momentum: m ← μ·m + g; p ← p − lr·m.
/// struct Momentum { state: Vec<Tensor> }
/// impl Plugin for Momentum {
///     fn new(_: &serde_json::Value) -> Result<Self> { Ok(Momentum { state: vec![] }) }
/// }
/// impl Optimizer for Momentum {
///     fn init(&mut self, params: &[ParamRef]) -> Result<()> {
///         for p in params {
///             self.state.push(Tensor::zeros(&p.dims, DType::F32)?.keep()?);
///         }
///         Ok(())
///     }
///     fn step(&mut self, s: &OptimizerStep) -> Result<()> {
///         for (pg, m) in s.params.iter().zip(&self.state) {
///             m.assign(&m.scale(0.9 * s.momentum_mult)?.add(&pg.grad)?)?;
///             pg.param.assign(&pg.param.sub(&m.scale(s.lr)?)?)?;
///         }
///         Ok(())
///     }
/// }
/// export_plugin!(Momentum, hooks: [optimizer]);
/// ```
pub trait Optimizer {
    fn init(&mut self, params: &[ParamRef]) -> Result<()>;
    fn step(&mut self, step: &OptimizerStep) -> Result<()>;
}

/// `model.params`, once at start-up: receives the declarations so far (the
/// reference GPT's, or the previous plugin's) and returns the full list; may
/// add, remove or reshape parameters. Calls no op.
///
/// ```
/// use speedrun_plugin_api::*;
/// /// A learned scalar gate per layer.
/// struct Gates;
/// impl Plugin for Gates {
///     fn new(_: &serde_json::Value) -> Result<Self> { Ok(Gates) }
/// }
/// impl Params for Gates {
///     fn params(&mut self, m: &ModelShape, mut declared: Vec<ParamDecl>) -> Result<Vec<ParamDecl>> {
///         for l in 0..m.layers {
///             declared.push(ParamDecl::new(format!("transformer.h.{l}.gate"), &[1], ParamKind::Bias));
///         }
///         Ok(declared)
///     }
/// }
/// let m = ModelShape { layers: 2, width: 8, heads: 2, seq_len: 4, vocab: 16 };
/// assert_eq!(Gates.params(&m, vec![]).unwrap().len(), 2);
/// ```
pub trait Params {
    fn params(&mut self, model: &ModelShape, declared: Vec<ParamDecl>) -> Result<Vec<ParamDecl>>;
}

/// `model.init`, once per parameter: its initial value, with `p`'s shape.
/// Declarative: one constant (`zeros`, `ones`, `full`) or one distribution
/// (`randn`, `uniform`, drawn from the parameter's own seeded stream), nothing
/// composed and no `from_values`. `None` leaves the parameter to the next hook
/// (the reference).
///
/// ```no_run
/// use speedrun_plugin_api::*;
/// /// Zero every output projection (the speedrun's init).
/// struct ZeroProj;
/// impl Plugin for ZeroProj {
///     fn new(_: &serde_json::Value) -> Result<Self> { Ok(ZeroProj) }
/// }
/// impl Init for ZeroProj {
///     fn init(&mut self, p: &ParamDecl, _: &ModelShape) -> Result<Option<Tensor>> {
///         if p.kind == ParamKind::ResidualProjection {
///             return Ok(Some(Tensor::zeros(&p.shape, DType::F32)?));
///         }
///         Ok(None)
///     }
/// }
/// export_plugin!(ZeroProj, hooks: [init]);
/// ```
pub trait Init {
    fn init(&mut self, p: &ParamDecl, model: &ModelShape) -> Result<Option<Tensor>>;
}

/// `model.embed`, each forward: token ids `[B, T]` (u32) to the residual stream
/// `[B, T, D]`. May read parameters; may not write. Pure (see the module doc).
///
/// ```no_run
/// use speedrun_plugin_api::*;
/// /// Token embedding only, no positions (for a rotary attention).
/// struct NoPositions;
/// impl Plugin for NoPositions {
///     fn new(_: &serde_json::Value) -> Result<Self> { Ok(NoPositions) }
/// }
/// impl Embed for NoPositions {
///     fn embed(&mut self, cx: &ForwardCtx, tokens: &Tensor) -> Result<Tensor> {
///         cx.param("transformer.wte.weight")?.embedding(tokens)
///     }
/// }
/// export_plugin!(NoPositions, hooks: [embed]);
/// ```
pub trait Embed {
    fn embed(&mut self, cx: &ForwardCtx, tokens: &Tensor) -> Result<Tensor>;
}

/// `model.norm`, each forward: a normalisation of `[B, T, D]`, shape preserved.
/// Pure (see the module doc).
///
/// ```no_run
/// use speedrun_plugin_api::*;
/// /// RMSNorm without a gain, everywhere.
/// struct Rms;
/// impl Plugin for Rms {
///     fn new(_: &serde_json::Value) -> Result<Self> { Ok(Rms) }
/// }
/// impl Norm for Rms {
///     fn norm(&mut self, _: &ForwardCtx, _site: NormSite, x: &Tensor) -> Result<Tensor> {
///         x.rms_norm(None, 1e-6)
///     }
/// }
/// export_plugin!(Rms, hooks: [norm]);
/// ```
pub trait Norm {
    fn norm(&mut self, cx: &ForwardCtx, site: NormSite, x: &Tensor) -> Result<Tensor>;
}

/// `model.attention`, each forward, per layer: normalised stream `[B, T, D]` to
/// the attention output `[B, T, D]` (before the residual add). Must be causal:
/// twin forwards of real batches check it. Pure (see the module doc).
///
/// ```no_run
/// use speedrun_plugin_api::*;
/// /// The reference attention, spelled with ops.
/// struct Plain;
/// impl Plugin for Plain {
///     fn new(_: &serde_json::Value) -> Result<Self> { Ok(Plain) }
/// }
/// impl Attention for Plain {
///     fn attention(&mut self, cx: &ForwardCtx, l: usize, x: &Tensor) -> Result<Tensor> {
///         let w = |n: &str| cx.layer_param(l, n);
///         let qkv = linear(x, &w("attn.c_attn.weight")?, Some(&w("attn.c_attn.bias")?))?;
///         let y = qkv.causal_attention_packed(cx.model.heads)?;
///         linear(&y, &w("attn.c_proj.weight")?, Some(&w("attn.c_proj.bias")?))
///     }
/// }
/// export_plugin!(Plain, hooks: [attention]);
/// ```
pub trait Attention {
    fn attention(&mut self, cx: &ForwardCtx, layer: usize, x: &Tensor) -> Result<Tensor>;
}

/// `model.mlp`, each forward, per layer: normalised stream `[B, T, D]` to the MLP
/// output `[B, T, D]`. Pure (see the module doc).
///
/// ```no_run
/// use speedrun_plugin_api::*;
/// /// ReLU² in place of GELU.
/// struct Relu2;
/// impl Plugin for Relu2 {
///     fn new(_: &serde_json::Value) -> Result<Self> { Ok(Relu2) }
/// }
/// impl Mlp for Relu2 {
///     fn mlp(&mut self, cx: &ForwardCtx, l: usize, x: &Tensor) -> Result<Tensor> {
///         let w = |n: &str| cx.layer_param(l, n);
///         let h = linear(x, &w("mlp.c_fc.weight")?, Some(&w("mlp.c_fc.bias")?))?.relu2()?;
///         linear(&h, &w("mlp.c_proj.weight")?, Some(&w("mlp.c_proj.bias")?))
///     }
/// }
/// export_plugin!(Relu2, hooks: [mlp]);
/// ```
pub trait Mlp {
    fn mlp(&mut self, cx: &ForwardCtx, layer: usize, x: &Tensor) -> Result<Tensor>;
}

/// `model.block`, each forward, per layer: residual stream in, residual stream
/// out. A plugin block computes its norm, attention and MLP itself with ops.
/// Pure (see the module doc).
///
/// ```no_run
/// use speedrun_plugin_api::*;
/// /// A block that only normalises (an ablation).
/// struct NormOnly;
/// impl Plugin for NormOnly {
///     fn new(_: &serde_json::Value) -> Result<Self> { Ok(NormOnly) }
/// }
/// impl Block for NormOnly {
///     fn block(&mut self, _: &ForwardCtx, _l: usize, x: &Tensor) -> Result<Tensor> {
///         x.add(&x.rms_norm(None, 1e-6)?)
///     }
/// }
/// export_plugin!(NormOnly, hooks: [block]);
/// ```
pub trait Block {
    fn block(&mut self, cx: &ForwardCtx, layer: usize, x: &Tensor) -> Result<Tensor>;
}

/// `model.head`, each forward: final normalised stream `[B, T, D]` to logits
/// `[B, T, V]` over the whole vocabulary (the host checks the shape and computes
/// the loss itself). Pure (see the module doc).
///
/// ```no_run
/// use speedrun_plugin_api::*;
/// /// The tied head at half temperature.
/// struct Sharp;
/// impl Plugin for Sharp {
///     fn new(_: &serde_json::Value) -> Result<Self> { Ok(Sharp) }
/// }
/// impl Head for Sharp {
///     fn head(&mut self, cx: &ForwardCtx, x: &Tensor) -> Result<Tensor> {
///         linear(x, &cx.head_weight()?.transpose(0, 1)?, None)?.scale(2.0)
///     }
/// }
/// export_plugin!(Sharp, hooks: [head]);
/// ```
pub trait Head {
    fn head(&mut self, cx: &ForwardCtx, x: &Tensor) -> Result<Tensor>;
}

/// `model.forward`, each forward: token ids `[B, T]` to logits `[B, T, V]`;
/// replaces every model hook above. Pure (see the module doc).
///
/// ```no_run
/// use speedrun_plugin_api::*;
/// /// A bigram model: embedding straight into the tied head.
/// struct Bigram;
/// impl Plugin for Bigram {
///     fn new(_: &serde_json::Value) -> Result<Self> { Ok(Bigram) }
/// }
/// impl Forward for Bigram {
///     fn forward(&mut self, cx: &ForwardCtx, tokens: &Tensor) -> Result<Tensor> {
///         let wte = cx.param("transformer.wte.weight")?;
///         linear(&wte.embedding(tokens)?, &wte.transpose(0, 1)?, None)
///     }
/// }
/// export_plugin!(Bigram, hooks: [forward]);
/// ```
pub trait Forward {
    fn forward(&mut self, cx: &ForwardCtx, tokens: &Tensor) -> Result<Tensor>;
}

/// `model.block_input` (API 1.1), each forward, before each block: the residual
/// stream `x` `[B, T, D]` entering block `layer` and the outputs of blocks
/// `0..layer` (`earlier[i]` is block i's), to the stream the block gets, same
/// shape. Works around whatever blocks the model has (the reference's or a
/// plugin's); not called under a plugin's `model.forward`. Pure (see the
/// module doc).
///
/// ```no_run
/// use speedrun_plugin_api::*;
/// /// Every block also sees the first block's output.
/// struct FirstSkip;
/// impl Plugin for FirstSkip {
///     fn new(_: &serde_json::Value) -> Result<Self> { Ok(FirstSkip) }
/// }
/// impl BlockInput for FirstSkip {
///     fn block_input(&mut self, _: &ForwardCtx, layer: usize, x: &Tensor, earlier: &[Tensor]) -> Result<Tensor> {
///         if layer < 2 { return Ok(*x); }
///         x.add(&earlier[0])
///     }
/// }
/// export_plugin!(FirstSkip, hooks: [block_input]);
/// ```
pub trait BlockInput {
    fn block_input(
        &mut self,
        cx: &ForwardCtx,
        layer: usize,
        x: &Tensor,
        earlier: &[Tensor],
    ) -> Result<Tensor>;
}

/// `model.qkv` (API 1.1), each forward, per layer, inside the reference
/// attention: its packed projection `[B, T, 3D]` (q, k and v thirds, heads
/// side by side in each) to the one it attends with, same shape. A plugin
/// `model.attention` computes its own projection and does not call this. Pure
/// (see the module doc).
///
/// ```no_run
/// use speedrun_plugin_api::*;
/// /// Halve the values.
/// struct HalfValues;
/// impl Plugin for HalfValues {
///     fn new(_: &serde_json::Value) -> Result<Self> { Ok(HalfValues) }
/// }
/// impl Qkv for HalfValues {
///     fn qkv(&mut self, cx: &ForwardCtx, _l: usize, qkv: &Tensor) -> Result<Tensor> {
///         let d = cx.model.width;
///         let v = qkv.narrow(2, 2 * d, d)?.scale(0.5)?;
///         Tensor::cat(&[qkv.narrow(2, 0, 2 * d)?, v], 2)
///     }
/// }
/// export_plugin!(HalfValues, hooks: [qkv]);
/// ```
pub trait Qkv {
    fn qkv(&mut self, cx: &ForwardCtx, layer: usize, qkv: &Tensor) -> Result<Tensor>;
}

/// `model.logits` (API 1.1), each forward, after the head (whichever head the
/// model has): logits `[B, T, V]` to logits, same shape; the host computes the
/// loss from what this answers. Pure (see the module doc).
///
/// ```no_run
/// use speedrun_plugin_api::*;
/// /// Gemma-style soft capping at 30.
/// struct Cap;
/// impl Plugin for Cap {
///     fn new(_: &serde_json::Value) -> Result<Self> { Ok(Cap) }
/// }
/// impl Logits for Cap {
///     fn logits(&mut self, _: &ForwardCtx, logits: &Tensor) -> Result<Tensor> {
///         logits.scale(1.0 / 30.0)?.tanh()?.scale(30.0)
///     }
/// }
/// export_plugin!(Cap, hooks: [logits]);
/// ```
pub trait Logits {
    fn logits(&mut self, cx: &ForwardCtx, logits: &Tensor) -> Result<Tensor>;
}
