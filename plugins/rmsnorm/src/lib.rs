//! RMSNorm in place of LayerNorm at every norm site: `x / √(mean(x²) + eps)`,
//! times a learned gain only when `gain` is set. The speedrun's norm has no
//! parameters at all (`F.rms_norm(x, (d,))`), so the default drops both the
//! LayerNorms' biases and their gains from the model (`model.params`); with
//! `"gain": true` the gains stay (initialised to 1 by the reference).

use speedrun_plugin_api::*;

pub struct RmsNorm {
    eps: f64,
    gain: bool,
}

impl Plugin for RmsNorm {
    fn default_config() -> serde_json::Value {
        serde_json::json!({ "eps": 1e-5, "gain": false })
    }

    fn new(config: &serde_json::Value) -> Result<Self> {
        let eps = match config.get("eps").and_then(|v| v.as_f64()) {
            Some(e) if e > 0.0 => e,
            _ => bail!(
                "rmsnorm: eps must be a positive number, got {}",
                config["eps"]
            ),
        };
        let Some(gain) = config.get("gain").and_then(|v| v.as_bool()) else {
            bail!(
                "rmsnorm: gain must be true or false, got {}",
                config["gain"]
            )
        };
        Ok(RmsNorm { eps, gain })
    }
}

/// The reference's parameter prefix of a norm site.
fn prefix(site: NormSite) -> String {
    match site {
        NormSite::Attention(l) => format!("transformer.h.{l}.ln_1"),
        NormSite::Mlp(l) => format!("transformer.h.{l}.ln_2"),
        NormSite::Final => "transformer.ln_f".to_string(),
    }
}

impl Params for RmsNorm {
    fn params(&mut self, _model: &ModelShape, declared: Vec<ParamDecl>) -> Result<Vec<ParamDecl>> {
        Ok(declared
            .into_iter()
            .filter(|p| match p.kind {
                ParamKind::NormBias => false,
                ParamKind::NormGain => self.gain,
                _ => true,
            })
            .collect())
    }
}

impl Norm for RmsNorm {
    fn norm(&mut self, cx: &ForwardCtx, site: NormSite, x: &Tensor) -> Result<Tensor> {
        let gain = if self.gain {
            Some(cx.param(&format!("{}.weight", prefix(site)))?)
        } else {
            None
        };
        x.rms_norm(gain.as_ref(), self.eps)
    }
}

export_plugin!(RmsNorm, hooks: [params, norm]);
