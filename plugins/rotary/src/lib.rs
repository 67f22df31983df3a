//! Rotary position embeddings (RoFormer; the NanoGPT speedrun's attention) in place
//! of the learned position embedding: the model loses `wpe` (`model.params`), the
//! embedding is the token embedding alone (`model.embed`), and each head's q and k
//! are rotated by position (`model.attention`, the host's `rotary` op: rotate-half
//! form, frequencies `base^(-2i/hd)`).
//!
//! `"qk_norm": true` adds QK-norm (the speedrun's other attention change): q and k
//! are RMS-normalised per head, without gain, before the rotation. It lives here
//! because both change the same hook, and a model has one attention.

use speedrun_plugin_api::*;

pub struct Rotary {
    base: f64,
    qk_norm: bool,
}

impl Plugin for Rotary {
    fn default_config() -> serde_json::Value {
        serde_json::json!({ "base": 10000.0, "qk_norm": false })
    }

    fn new(config: &serde_json::Value) -> Result<Self> {
        let base = match config.get("base").and_then(|v| v.as_f64()) {
            Some(b) if b > 1.0 => b,
            _ => bail!(
                "rotary: base must be a number above 1, got {}",
                config["base"]
            ),
        };
        let Some(qk_norm) = config.get("qk_norm").and_then(|v| v.as_bool()) else {
            bail!(
                "rotary: qk_norm must be true or false, got {}",
                config["qk_norm"]
            )
        };
        Ok(Rotary { base, qk_norm })
    }
}

impl Params for Rotary {
    fn params(&mut self, _model: &ModelShape, declared: Vec<ParamDecl>) -> Result<Vec<ParamDecl>> {
        Ok(declared
            .into_iter()
            .filter(|p| p.kind != ParamKind::PositionEmbedding)
            .collect())
    }
}

impl Embed for Rotary {
    fn embed(&mut self, cx: &ForwardCtx, tokens: &Tensor) -> Result<Tensor> {
        cx.param("transformer.wte.weight")?.embedding(tokens)
    }
}

impl Attention for Rotary {
    fn attention(&mut self, cx: &ForwardCtx, layer: usize, x: &Tensor) -> Result<Tensor> {
        let (d, heads, hd) = (cx.model.width, cx.model.heads, cx.model.head_dim());
        let dims = x.dims()?;
        let (b, t) = (dims[0], dims[1]);
        let qkv = linear(
            x,
            &cx.layer_param(layer, "attn.c_attn.weight")?,
            Some(&cx.layer_param(layer, "attn.c_attn.bias")?),
        )?;
        // [B, T, 3D] -> q, k, v as [B, H, T, hd]
        let part = |i: usize| -> Result<Tensor> {
            qkv.narrow(2, i * d, d)?
                .reshape(&[b, t, heads, hd])?
                .transpose(1, 2)
        };
        let (mut q, mut k, mut v) = (part(0)?, part(1)?, part(2)?);
        if let Some(ve) = cx.value_embedding(layer)? {
            v = v.add(&ve.reshape(&[b, t, heads, hd])?.transpose(1, 2)?)?;
        }
        if self.qk_norm {
            q = q.rms_norm(None, 1e-6)?;
            k = k.rms_norm(None, 1e-6)?;
        }
        let (q, k) = (q.rotary(self.base)?, k.rotary(self.base)?);
        let y = Tensor::causal_attention(&q, &k, &v, None)?
            .transpose(1, 2)?
            .reshape(&[b, t, d])?;
        linear(
            &y,
            &cx.layer_param(layer, "attn.c_proj.weight")?,
            Some(&cx.layer_param(layer, "attn.c_proj.bias")?),
        )
    }
}

export_plugin!(Rotary, hooks: [params, embed, attention]);
