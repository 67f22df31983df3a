//! The model the host trains: parameters it owns, and a forward pass cut at the
//! model hook points. `ModelHooks::default()` is the reference GPT everywhere;
//! plugins replace single hooks.

pub mod hooks;
pub mod ops;
pub mod params;
pub mod reference;

use crate::track::ModelShape;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use hooks::*;
use params::{param_rng, ParamStore};
use reference::ReferenceGpt;
use speedrun_kernels::Precision;

/// Which implementation serves each model hook.
pub struct ModelHooks {
    /// Applied in order, starting from an empty declaration list.
    pub params: Vec<Box<dyn ParamsHook>>,
    /// Asked in order; the first that returns a value wins.
    pub init: Vec<Box<dyn InitHook>>,
    pub embed: Box<dyn EmbedHook>,
    pub norm: Box<dyn NormHook>,
    pub attention: Box<dyn AttentionHook>,
    pub mlp: Box<dyn MlpHook>,
    pub block: Box<dyn BlockHook>,
    pub head: Box<dyn HeadHook>,
    pub forward: Box<dyn ForwardHook>,
    /// The optional hooks: the reference has none, so without a plugin that
    /// provides one nothing is called and nothing is kept for it.
    pub block_input: Option<Box<dyn BlockInputHook>>,
    pub qkv: Option<Box<dyn QkvHook>>,
    pub logits: Option<Box<dyn LogitsHook>>,
}

impl Default for ModelHooks {
    fn default() -> ModelHooks {
        ModelHooks {
            params: vec![Box::new(ReferenceGpt)],
            init: vec![Box::new(ReferenceGpt)],
            embed: Box::new(ReferenceGpt),
            norm: Box::new(ReferenceGpt),
            attention: Box::new(ReferenceGpt),
            mlp: Box::new(ReferenceGpt),
            block: Box::new(ReferenceGpt),
            head: Box::new(ReferenceGpt),
            forward: Box::new(ReferenceGpt),
            block_input: None,
            qkv: None,
            logits: None,
        }
    }
}

pub struct Model {
    pub spec: ModelShape,
    pub params: ParamStore,
    hooks: ModelHooks,
    /// The dtype the forward's products run in (the track's `train.precision`).
    pub precision: Precision,
}

impl Model {
    /// Declares the parameters (`model.params`), initialises each (`model.init`) from
    /// the seeded per-parameter generator, and keeps the forward hooks.
    pub fn build(
        spec: &ModelShape,
        hooks: ModelHooks,
        seed: u64,
        device: &Device,
    ) -> Result<Model> {
        Model::build_with_dtype(spec, hooks, seed, device, DType::F32)
    }

    /// As `build`, with parameters held in `dtype` (f64 for gradient checks).
    pub fn build_with_dtype(
        spec: &ModelShape,
        hooks: ModelHooks,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Model> {
        let mut declared = Vec::new();
        for h in &hooks.params {
            declared = h.params(spec, declared).context("in hook model.params")?;
        }
        let mut values = Vec::with_capacity(declared.len());
        for p in declared {
            let mut rng = param_rng(seed, &p.name);
            let mut value = None;
            for h in &hooks.init {
                value = h
                    .init(&p, spec, &mut rng)
                    .with_context(|| format!("in hook model.init for {}", p.name))?;
                if value.is_some() {
                    break;
                }
            }
            let Some(v) = value else {
                bail!("no model.init hook gave parameter {} a value", p.name);
            };
            values.push((p, v));
        }
        Ok(Model {
            spec: *spec,
            params: ParamStore::with_dtype(values, device, dtype)?,
            hooks,
            precision: Precision::F32,
        })
    }

    /// The same model with its products in `precision`.
    pub fn with_precision(mut self, precision: Precision) -> Model {
        self.precision = precision;
        self
    }

    /// Token ids `[B, T]` to logits `[B, T, V]`.
    pub fn forward(&self, tokens: &Tensor, train: bool) -> Result<Tensor> {
        // What an earlier backward's fused nodes left and nobody took (a
        // probe's) must not reach this forward's gradients.
        self.params.fused_grads().clear();
        let cx = ForwardCtx {
            params: &self.params,
            spec: &self.spec,
            train,
            tokens: Some(tokens),
            precision: self.precision,
        };
        let logits = self.hooks.forward.forward(&cx, self, tokens)?;
        let (b, t) = tokens.dims2()?;
        let want = [b, t, self.spec.vocab];
        crate::verify::whole_vocabulary("the forward pass", logits.dims(), &want)?;
        Ok(logits)
    }

    pub fn embed(&self, cx: &ForwardCtx, tokens: &Tensor) -> Result<Tensor> {
        self.hooks.embed.embed(cx, tokens)
    }

    pub fn norm(&self, cx: &ForwardCtx, site: NormSite, x: &Tensor) -> Result<Tensor> {
        self.hooks.norm.norm(cx, site, x)
    }

    pub fn attention(&self, cx: &ForwardCtx, layer: usize, x: &Tensor) -> Result<Tensor> {
        self.hooks.attention.attention(cx, self, layer, x)
    }

    /// `residual + attention(x)`, fused where the attention hook can.
    pub fn attention_residual(
        &self,
        cx: &ForwardCtx,
        layer: usize,
        x: &Tensor,
        residual: &Tensor,
    ) -> Result<Tensor> {
        self.hooks
            .attention
            .attention_residual(cx, self, layer, x, residual)
    }

    /// The reference attention's packed projection, through `model.qkv` if any.
    pub fn qkv(&self, cx: &ForwardCtx, layer: usize, qkv: Tensor) -> Result<Tensor> {
        match &self.hooks.qkv {
            Some(h) => h.qkv(cx, layer, &qkv),
            None => Ok(qkv),
        }
    }

    /// Whether a `model.qkv` hook sits between the projection and the attention.
    pub fn has_qkv(&self) -> bool {
        self.hooks.qkv.is_some()
    }

    /// Whether a block's norm, attention and MLP are all the reference GPT's,
    /// with no `model.qkv` hook between: then the reference block runs as one
    /// fused node.
    pub fn block_is_reference(&self) -> bool {
        self.hooks.norm.is_reference()
            && self.hooks.attention.is_reference()
            && self.hooks.mlp.is_reference()
            && self.hooks.qkv.is_none()
    }

    /// Whether the whole forward from the token ids to the head's logits is
    /// the reference GPT's (embedding, blocks, final norm, head; no
    /// `model.block_input` or `model.qkv` hook between): then it runs on the
    /// host's tape (`speedrun_kernels::reference_gpt`). A `model.logits` hook
    /// comes after the head, so it takes the tape's logits in candle's graph.
    pub fn is_reference(&self) -> bool {
        self.block_is_reference()
            && self.hooks.embed.is_reference()
            && self.hooks.block.is_reference()
            && self.hooks.head.is_reference()
            && self.hooks.block_input.is_none()
    }

    /// Whether a `model.block_input` hook wants the blocks' outputs kept.
    pub fn has_block_input(&self) -> bool {
        self.hooks.block_input.is_some()
    }

    /// The stream block `layer` gets, through `model.block_input` if any.
    pub fn block_input(
        &self,
        cx: &ForwardCtx,
        layer: usize,
        x: Tensor,
        earlier: &[Tensor],
    ) -> Result<Tensor> {
        match &self.hooks.block_input {
            Some(h) => h.block_input(cx, layer, &x, earlier),
            None => Ok(x),
        }
    }

    pub fn mlp(&self, cx: &ForwardCtx, layer: usize, x: &Tensor) -> Result<Tensor> {
        self.hooks.mlp.mlp(cx, layer, x)
    }

    /// `residual + mlp(x)`, fused where the MLP hook can.
    pub fn mlp_residual(
        &self,
        cx: &ForwardCtx,
        layer: usize,
        x: &Tensor,
        residual: &Tensor,
    ) -> Result<Tensor> {
        self.hooks.mlp.mlp_residual(cx, layer, x, residual)
    }

    pub fn block(&self, cx: &ForwardCtx, layer: usize, x: &Tensor) -> Result<Tensor> {
        self.hooks.block.block(cx, self, layer, x)
    }

    /// The head's logits, through `model.logits` if any.
    pub fn head(&self, cx: &ForwardCtx, x: &Tensor) -> Result<Tensor> {
        let logits = self.hooks.head.head(cx, x)?;
        self.logits(cx, logits)
    }

    /// The head's logits through `model.logits`, if any.
    pub fn logits(&self, cx: &ForwardCtx, logits: Tensor) -> Result<Tensor> {
        match &self.hooks.logits {
            Some(h) => h.logits(cx, &logits),
            None => Ok(logits),
        }
    }
}
