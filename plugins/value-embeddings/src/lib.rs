//! Value embeddings (the NanoGPT speedrun's): each chosen layer gets a token
//! table of its own, `transformer.h.{l}.attn.value_embed.weight` `[vocab,
//! width]`, whose rows for the input tokens are added to that layer's
//! attention values v. The token identity reaches every value directly, not
//! only through the residual stream.
//!
//! This plugin declares the tables (`model.params`) and adds them to the
//! reference attention's values itself (`model.qkv`, plugin API 1.1: the v
//! third of the packed projection). A plugin attention computes its own
//! projection, so it adds them through `ForwardCtx::value_embedding` (the
//! `rotary` plugin's does). Tables are `ParamKind::TokenEmbedding`
//! (Muon leaves them to AdamW, as the speedrun does) with the reference's
//! embedding initialisation.
//!
//! `"layers"`: the layers that get a table (default `null`: every layer). The
//! speedrun shares 3 tables between its first and last three layers of 12;
//! here each layer has its own, the simplest form of the idea.

use speedrun_plugin_api::*;

pub struct ValueEmbeddings {
    layers: Option<Vec<usize>>,
}

impl Plugin for ValueEmbeddings {
    fn default_config() -> serde_json::Value {
        serde_json::json!({ "layers": null })
    }

    fn new(config: &serde_json::Value) -> Result<Self> {
        let layers = match &config["layers"] {
            serde_json::Value::Null => None,
            serde_json::Value::Array(items) => Some(
                items
                    .iter()
                    .map(|v| {
                        v.as_u64().map(|l| l as usize).ok_or_else(|| {
                            Error::new(format!(
                                "value-embeddings: layers must be layer indices, got {v}"
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            other => bail!(
                "value-embeddings: layers must be null or a list of layer indices, got {other}"
            ),
        };
        Ok(ValueEmbeddings { layers })
    }
}

impl Params for ValueEmbeddings {
    fn params(
        &mut self,
        model: &ModelShape,
        mut declared: Vec<ParamDecl>,
    ) -> Result<Vec<ParamDecl>> {
        let layers = self
            .layers
            .clone()
            .unwrap_or_else(|| (0..model.layers).collect());
        for l in layers {
            if l >= model.layers {
                bail!(
                    "value-embeddings: layer {l} does not exist (the model has {})",
                    model.layers
                );
            }
            let name = value_embed_name(l);
            if declared.iter().any(|p| p.name == name) {
                bail!("value-embeddings: {name} is declared twice (layer {l} listed twice?)");
            }
            declared.push(ParamDecl::new(
                name,
                &[model.vocab, model.width],
                ParamKind::TokenEmbedding,
            ));
        }
        Ok(declared)
    }
}

impl Qkv for ValueEmbeddings {
    /// `qkv [B, T, 3D]` with layer `layer`'s table rows for the forward's
    /// tokens added to its v third; layers without a table pass through.
    fn qkv(&mut self, cx: &ForwardCtx, layer: usize, qkv: &Tensor) -> Result<Tensor> {
        let Some(ve) = cx.value_embedding(layer)? else {
            return Ok(*qkv);
        };
        let d = cx.model.width;
        let v = qkv.narrow(2, 2 * d, d)?.add(&ve)?;
        Tensor::cat(&[qkv.narrow(2, 0, 2 * d)?, v], 2)
    }
}

export_plugin!(ValueEmbeddings, hooks: [params, qkv]);
