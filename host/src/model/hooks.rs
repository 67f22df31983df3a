//! The model's seams: one trait per model hook point of `speedrun_plugin_abi::HookPoint`.
//! The reference GPT implements every one (`model::reference`); a plugin replaces
//! some. The contract of each hook is written on its trait.

use super::params::ParamDecl;
use super::Model;
use crate::track::ModelShape;
use anyhow::Result;
use candle_core::Tensor;
use rand_chacha::ChaCha8Rng;
pub use speedrun_kernels::Precision;

/// What a forward hook may read: the parameters, the shape, whether it is training.
pub struct ForwardCtx<'a> {
    pub params: &'a super::params::ParamStore,
    pub spec: &'a ModelShape,
    /// False while the host validates (eval mode).
    pub train: bool,
    /// The forward pass's token ids `[B, T]` (plugins read them with the `tokens` op).
    pub tokens: Option<&'a Tensor>,
    /// The dtype of the products (linear layers, attention); see `Precision`.
    pub precision: Precision,
}

pub use speedrun_plugin_abi::NormSite;

/// `model.params`: receives the declarations so far, returns the model's full list
/// (may add, remove or reshape). Called once, before initialisation.
pub trait ParamsHook {
    fn params(&self, spec: &ModelShape, declared: Vec<ParamDecl>) -> Result<Vec<ParamDecl>>;
}

/// `model.init`: the initial value of one parameter, drawn from the host's seeded
/// per-parameter generator. `None` leaves it to the next hook in line (the reference).
pub trait InitHook {
    fn init(
        &self,
        p: &ParamDecl,
        spec: &ModelShape,
        rng: &mut ChaCha8Rng,
    ) -> Result<Option<Vec<f32>>>;
}

/// `model.embed`: token ids `[B, T]` (u32) to the residual stream `[B, T, D]`.
pub trait EmbedHook {
    fn embed(&self, cx: &ForwardCtx, tokens: &Tensor) -> Result<Tensor>;

    /// Whether this is the reference GPT's own implementation, which the
    /// reference forward may run with its neighbours on the host's tape.
    fn is_reference(&self) -> bool {
        false
    }
}

/// `model.norm`: a normalisation of `[B, T, D]`, shape preserved.
pub trait NormHook {
    fn norm(&self, cx: &ForwardCtx, site: NormSite, x: &Tensor) -> Result<Tensor>;

    /// Whether this is the reference GPT's own implementation, which the
    /// reference block may run fused with its neighbours as one node.
    fn is_reference(&self) -> bool {
        false
    }
}

/// `model.attention`: normalised stream `[B, T, D]` of layer `layer` to the attention
/// output `[B, T, D]` (before the residual add). Must be causal. The reference
/// passes its packed projection through the model's `model.qkv` hook.
pub trait AttentionHook {
    fn attention(&self, cx: &ForwardCtx, model: &Model, layer: usize, x: &Tensor)
        -> Result<Tensor>;

    /// `residual + attention(x)`, what the reference block adds to its stream.
    /// The reference overrides it to fuse the add into its output projection.
    fn attention_residual(
        &self,
        cx: &ForwardCtx,
        model: &Model,
        layer: usize,
        x: &Tensor,
        residual: &Tensor,
    ) -> Result<Tensor> {
        Ok((residual + self.attention(cx, model, layer, x)?)?)
    }

    /// Whether this is the reference GPT's own implementation, which the
    /// reference block may run fused with its neighbours as one node.
    fn is_reference(&self) -> bool {
        false
    }
}

/// `model.mlp`: normalised stream `[B, T, D]` to the MLP output `[B, T, D]`.
pub trait MlpHook {
    fn mlp(&self, cx: &ForwardCtx, layer: usize, x: &Tensor) -> Result<Tensor>;

    /// `residual + mlp(x)`; the reference fuses the add into its output projection.
    fn mlp_residual(
        &self,
        cx: &ForwardCtx,
        layer: usize,
        x: &Tensor,
        residual: &Tensor,
    ) -> Result<Tensor> {
        Ok((residual + self.mlp(cx, layer, x)?)?)
    }

    /// Whether this is the reference GPT's own implementation, which the
    /// reference block may run fused with its neighbours as one node.
    fn is_reference(&self) -> bool {
        false
    }
}

/// `model.block`: residual stream in, residual stream out, for layer `layer`. May call
/// the model's norm, attention and MLP hooks through `model`.
pub trait BlockHook {
    fn block(&self, cx: &ForwardCtx, model: &Model, layer: usize, x: &Tensor) -> Result<Tensor>;

    /// Whether this is the reference GPT's own implementation, which the
    /// reference forward may run with its neighbours on the host's tape.
    fn is_reference(&self) -> bool {
        false
    }
}

/// `model.head`: final normalised stream `[B, T, D]` to logits `[B, T, V]`.
pub trait HeadHook {
    fn head(&self, cx: &ForwardCtx, x: &Tensor) -> Result<Tensor>;

    /// Whether this is the reference GPT's own implementation, which the
    /// reference forward may run with its neighbours on the host's tape.
    fn is_reference(&self) -> bool {
        false
    }
}

/// `model.forward`: token ids `[B, T]` to logits `[B, T, V]`; the reference calls the
/// part hooks above through `model`.
pub trait ForwardHook {
    fn forward(&self, cx: &ForwardCtx, model: &Model, tokens: &Tensor) -> Result<Tensor>;
}

/// `model.block_input` (optional): the stream entering block `layer` and the
/// outputs of the blocks before it, to the stream the block gets.
pub trait BlockInputHook {
    fn block_input(
        &self,
        cx: &ForwardCtx,
        layer: usize,
        x: &Tensor,
        earlier: &[Tensor],
    ) -> Result<Tensor>;
}

/// `model.qkv` (optional): the reference attention's packed projection
/// `[B, T, 3D]` to the one it attends with.
pub trait QkvHook {
    fn qkv(&self, cx: &ForwardCtx, layer: usize, qkv: &Tensor) -> Result<Tensor>;
}

/// `model.logits` (optional): the head's logits `[B, T, V]` to logits.
pub trait LogitsHook {
    fn logits(&self, cx: &ForwardCtx, logits: &Tensor) -> Result<Tensor>;
}
