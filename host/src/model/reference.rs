//! The reference GPT: llm.c's GPT-2 (learned positions, pre-LayerNorm blocks,
//! causal multi-head attention, GELU MLP of width 4x, final LayerNorm, head tied
//! to the token embedding) written as one implementation of every model hook.

use super::hooks::*;
use super::ops;
use super::params::{ParamDecl, ParamKind};
use super::Model;
use crate::track::ModelShape;
use anyhow::Result;
use candle_core::Tensor;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

pub const LN_EPS: f64 = 1e-5;
pub const INIT_STD: f64 = 0.02;

/// The whole reference GPT; it implements every model hook.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReferenceGpt;

fn layer_param<'a>(cx: &'a ForwardCtx, layer: usize, name: &str) -> Result<&'a Tensor> {
    cx.params.get(&format!("transformer.h.{layer}.{name}"))
}

impl ParamsHook for ReferenceGpt {
    fn params(&self, spec: &ModelShape, declared: Vec<ParamDecl>) -> Result<Vec<ParamDecl>> {
        let mut out = super::params::reference_params(spec);
        out.extend(declared);
        Ok(out)
    }
}

impl InitHook for ReferenceGpt {
    /// llm.c: normal(0, 0.02); residual projections 0.02 / sqrt(2 * layers); biases 0; gains 1.
    fn init(
        &self,
        p: &ParamDecl,
        spec: &ModelShape,
        rng: &mut ChaCha8Rng,
    ) -> Result<Option<Vec<f32>>> {
        let n = p.numel();
        let normal = |std: f64, rng: &mut ChaCha8Rng| -> Result<Vec<f32>> {
            let dist = Normal::new(0.0f32, std as f32)?;
            Ok((0..n).map(|_| dist.sample(rng)).collect())
        };
        Ok(Some(match p.kind {
            ParamKind::TokenEmbedding | ParamKind::PositionEmbedding | ParamKind::Matrix => {
                normal(INIT_STD, rng)?
            }
            ParamKind::ResidualProjection => {
                normal(INIT_STD / (2.0 * spec.layers as f64).sqrt(), rng)?
            }
            ParamKind::Bias | ParamKind::NormBias => vec![0.0; n],
            ParamKind::NormGain => vec![1.0; n],
        }))
    }
}

impl EmbedHook for ReferenceGpt {
    fn embed(&self, cx: &ForwardCtx, tokens: &Tensor) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let wte = cx.params.get("transformer.wte.weight")?;
        let wpe = cx.params.get("transformer.wpe.weight")?;
        let tok = wte
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((b, t, cx.spec.width))?;
        Ok(speedrun_kernels::add_rows(&tok, &wpe.narrow(0, 0, t)?)?)
    }

    fn is_reference(&self) -> bool {
        true
    }
}

impl NormHook for ReferenceGpt {
    fn norm(&self, cx: &ForwardCtx, site: NormSite, x: &Tensor) -> Result<Tensor> {
        let prefix = match site {
            NormSite::Attention(l) => format!("transformer.h.{l}.ln_1"),
            NormSite::Mlp(l) => format!("transformer.h.{l}.ln_2"),
            NormSite::Final => "transformer.ln_f".to_string(),
        };
        let gain = cx.params.get(&format!("{prefix}.weight"))?;
        let bias = cx.params.get(&format!("{prefix}.bias"))?;
        Ok(ops::layer_norm(x, gain, bias, LN_EPS)?)
    }

    fn is_reference(&self) -> bool {
        true
    }
}

impl ReferenceGpt {
    /// The attention before its output projection. One packed projection
    /// `[B, T, 3D]` read in place by the fused attention kernel: no head splits,
    /// transposes or copies in the autograd graph.
    fn attend(cx: &ForwardCtx, model: &Model, layer: usize, x: &Tensor) -> Result<Tensor> {
        let (w, b) = (
            layer_param(cx, layer, "attn.c_attn.weight")?,
            layer_param(cx, layer, "attn.c_attn.bias")?,
        );
        Ok(if model.has_qkv() {
            let qkv = model.qkv(cx, layer, cx.precision.linear(x, w, Some(b))?)?;
            cx.precision.causal_attention_packed(&qkv, cx.spec.heads)?
        } else {
            // Projection and attention as one node: nothing sits between them.
            cx.precision
                .projected_causal_attention(x, w, b, cx.spec.heads)?
        })
    }

    /// The MLP before its output projection: c_fc and its GELU as one node.
    fn hidden(cx: &ForwardCtx, layer: usize, x: &Tensor) -> Result<Tensor> {
        Ok(cx.precision.linear_gelu(
            x,
            layer_param(cx, layer, "mlp.c_fc.weight")?,
            layer_param(cx, layer, "mlp.c_fc.bias")?,
        )?)
    }

    /// `part`'s output projection (`attn` or `mlp`), with the residual added
    /// inside the same node when there is one.
    fn project(
        cx: &ForwardCtx,
        layer: usize,
        part: &str,
        y: &Tensor,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let w = layer_param(cx, layer, &format!("{part}.c_proj.weight"))?;
        let b = layer_param(cx, layer, &format!("{part}.c_proj.bias"))?;
        Ok(match residual {
            Some(r) => cx.precision.linear_residual(y, w, b, r)?,
            None => cx.precision.linear(y, w, Some(b))?,
        })
    }
}

impl AttentionHook for ReferenceGpt {
    fn attention(
        &self,
        cx: &ForwardCtx,
        model: &Model,
        layer: usize,
        x: &Tensor,
    ) -> Result<Tensor> {
        let y = Self::attend(cx, model, layer, x)?;
        Self::project(cx, layer, "attn", &y, None)
    }

    fn attention_residual(
        &self,
        cx: &ForwardCtx,
        model: &Model,
        layer: usize,
        x: &Tensor,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let y = Self::attend(cx, model, layer, x)?;
        Self::project(cx, layer, "attn", &y, Some(residual))
    }

    fn is_reference(&self) -> bool {
        true
    }
}

impl MlpHook for ReferenceGpt {
    fn mlp(&self, cx: &ForwardCtx, layer: usize, x: &Tensor) -> Result<Tensor> {
        let h = Self::hidden(cx, layer, x)?;
        Self::project(cx, layer, "mlp", &h, None)
    }

    fn mlp_residual(
        &self,
        cx: &ForwardCtx,
        layer: usize,
        x: &Tensor,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let h = Self::hidden(cx, layer, x)?;
        Self::project(cx, layer, "mlp", &h, Some(residual))
    }

    fn is_reference(&self) -> bool {
        true
    }
}

impl BlockHook for ReferenceGpt {
    /// Pre-norm residual blocks; each residual add rides inside the attention's
    /// and the MLP's output projection where those hooks can fuse it.
    /// With every part the reference's (f32 products, on the CPU), the block is one
    /// fused node that runs its own backward (`speedrun_kernels::reference_block`:
    /// the same kernels, equal values and gradients).
    fn block(&self, cx: &ForwardCtx, model: &Model, layer: usize, x: &Tensor) -> Result<Tensor> {
        if model.block_is_reference() && cx.precision == Precision::F32 && x.device().is_cpu() {
            return Ok(speedrun_kernels::reference_block(
                x,
                &block_params(cx, layer)?,
                cx.spec.heads,
                LN_EPS,
                cx.params.fused_grads(),
            )?);
        }
        let h = model.norm(cx, NormSite::Attention(layer), x)?;
        let x = model.attention_residual(cx, layer, &h, x)?;
        let h = model.norm(cx, NormSite::Mlp(layer), &x)?;
        model.mlp_residual(cx, layer, &h, &x)
    }

    fn is_reference(&self) -> bool {
        true
    }
}

/// Layer `layer`'s parameters as the fused block takes them.
fn block_params<'a>(cx: &'a ForwardCtx, layer: usize) -> Result<speedrun_kernels::BlockParams<'a>> {
    let p = |name: &str| layer_param(cx, layer, name);
    let pair = |part: &str| -> Result<[&Tensor; 2]> {
        Ok([p(&format!("{part}.weight"))?, p(&format!("{part}.bias"))?])
    };
    Ok(speedrun_kernels::BlockParams {
        ln_1: pair("ln_1")?,
        attn: pair("attn.c_attn")?,
        attn_proj: pair("attn.c_proj")?,
        ln_2: pair("ln_2")?,
        fc: pair("mlp.c_fc")?,
        mlp_proj: pair("mlp.c_proj")?,
    })
}

impl HeadHook for ReferenceGpt {
    /// logits = x @ wteᵀ: tied to the token embedding.
    fn head(&self, cx: &ForwardCtx, x: &Tensor) -> Result<Tensor> {
        let w = cx.params.get("transformer.wte.weight")?;
        Ok(cx.precision.linear(x, &w.t()?, None)?)
    }

    fn is_reference(&self) -> bool {
        true
    }
}

impl ForwardHook for ReferenceGpt {
    /// Embedding, blocks, final norm, head. With a `model.block_input` hook the
    /// blocks' outputs are kept and each block's input passes through it.
    /// With every part the reference's (f32 products, on the CPU), the whole
    /// forward is recorded on the host's tape, which runs its own backward
    /// (`speedrun_kernels::reference_gpt`: the same kernels, equal values and
    /// gradients).
    fn forward(&self, cx: &ForwardCtx, model: &Model, tokens: &Tensor) -> Result<Tensor> {
        if model.is_reference() && cx.precision == Precision::F32 && tokens.device().is_cpu() {
            let params = speedrun_kernels::GptParams {
                wte: cx.params.get("transformer.wte.weight")?,
                wpe: cx.params.get("transformer.wpe.weight")?,
                blocks: (0..cx.spec.layers)
                    .map(|l| block_params(cx, l))
                    .collect::<Result<_>>()?,
                ln_f: [
                    cx.params.get("transformer.ln_f.weight")?,
                    cx.params.get("transformer.ln_f.bias")?,
                ],
            };
            let logits = speedrun_kernels::reference_gpt(
                tokens,
                &params,
                cx.spec.heads,
                LN_EPS,
                cx.params.fused_grads(),
            )?;
            return model.logits(cx, logits);
        }
        let keep = model.has_block_input();
        let mut outputs: Vec<Tensor> = Vec::new();
        let mut x = model.embed(cx, tokens)?;
        for layer in 0..cx.spec.layers {
            if keep {
                x = model.block_input(cx, layer, x, &outputs)?;
            }
            x = model.block(cx, layer, &x)?;
            if keep {
                outputs.push(x.clone());
            }
        }
        let x = model.norm(cx, NormSite::Final, &x)?;
        model.head(cx, &x)
    }
}
