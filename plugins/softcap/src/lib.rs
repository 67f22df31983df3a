//! Logit soft-capping (Gemma 2, then the NanoGPT speedrun): the tied head's
//! logits pass through `cap · tanh(logits / cap)`, so no logit leaves
//! (−cap, cap). Keeps early training from committing to huge logits.
//!
//! `logits = cap · tanh((x @ wᵀ) / cap)` with `cap` from the configuration
//! (default 15, the speedrun's current value; it used 30 before); `w` is the
//! untied `lm_head.weight` when the model has one (`untied-head`), else `wte`.

use speedrun_plugin_api::*;

pub struct Softcap {
    cap: f64,
}

impl Plugin for Softcap {
    fn default_config() -> serde_json::Value {
        serde_json::json!({ "cap": 15.0 })
    }

    fn new(config: &serde_json::Value) -> Result<Self> {
        match config.get("cap").and_then(|v| v.as_f64()) {
            Some(cap) if cap > 0.0 && cap.is_finite() => Ok(Softcap { cap }),
            _ => bail!(
                "softcap: cap must be a positive number, got {}",
                config["cap"]
            ),
        }
    }
}

impl Head for Softcap {
    fn head(&mut self, cx: &ForwardCtx, x: &Tensor) -> Result<Tensor> {
        let w = cx.head_weight()?;
        let logits = linear(x, &w.transpose(0, 1)?, None)?;
        logits.scale(1.0 / self.cap)?.tanh()?.scale(self.cap)
    }
}

export_plugin!(Softcap, hooks: [head]);
