//! An untied output head (the NanoGPT speedrun's `lm_head`): the model gets a
//! head matrix of its own, `lm_head.weight` `[vocab, width]` (Hugging Face's
//! name and layout), instead of reusing the token embedding `wte`: it declares
//! and initialises the matrix (`model.params`, `model.init`) and is the head
//! (`model.head`, `logits = x @ lm_headᵀ`). Soft-capping stacks on top as a
//! `model.logits` hook (`softcap`).
//!
//! It is declared as `ParamKind::TokenEmbedding` (a `[vocab, width]` lookup-
//! shaped table): optimizers treat it like the embedding (Muon leaves it to
//! AdamW, as the speedrun does). `"zero_init": true` (the default, the
//! speedrun's) starts it at zero, so the first logits are uniform; `false`
//! keeps the reference's N(0, 0.02).

use speedrun_plugin_api::*;

pub struct UntiedHead {
    zero_init: bool,
}

impl Plugin for UntiedHead {
    fn default_config() -> serde_json::Value {
        serde_json::json!({ "zero_init": true })
    }

    fn new(config: &serde_json::Value) -> Result<Self> {
        let Some(zero_init) = config.get("zero_init").and_then(|v| v.as_bool()) else {
            bail!(
                "untied-head: zero_init must be true or false, got {}",
                config["zero_init"]
            )
        };
        Ok(UntiedHead { zero_init })
    }
}

impl Params for UntiedHead {
    fn params(
        &mut self,
        model: &ModelShape,
        mut declared: Vec<ParamDecl>,
    ) -> Result<Vec<ParamDecl>> {
        if declared.iter().any(|p| p.name == UNTIED_HEAD) {
            bail!("untied-head: the model already declares {UNTIED_HEAD}");
        }
        declared.push(ParamDecl::new(
            UNTIED_HEAD,
            &[model.vocab, model.width],
            ParamKind::TokenEmbedding,
        ));
        Ok(declared)
    }
}

impl Init for UntiedHead {
    fn init(&mut self, p: &ParamDecl, _model: &ModelShape) -> Result<Option<Tensor>> {
        if p.name == UNTIED_HEAD && self.zero_init {
            return Ok(Some(Tensor::zeros(&p.shape, DType::F32)?));
        }
        Ok(None)
    }
}

impl Head for UntiedHead {
    fn head(&mut self, cx: &ForwardCtx, x: &Tensor) -> Result<Tensor> {
        linear(x, &cx.param(UNTIED_HEAD)?.transpose(0, 1)?, None)
    }
}

export_plugin!(UntiedHead, hooks: [params, init, head]);
