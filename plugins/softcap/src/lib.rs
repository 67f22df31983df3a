//! Logit soft-capping (Gemma 2, then the NanoGPT speedrun): the head's logits
//! pass through `cap · tanh(logits / cap)`, so no logit leaves (−cap, cap).
//! Keeps early training from committing to huge logits.
//!
//! A `model.logits` hook (plugin API 1.1), so it caps whatever head the model
//! has: the tied reference head, or `untied-head`'s. `cap` comes from the
//! configuration (default 15, the speedrun's current value; it used 30 before).

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

impl Logits for Softcap {
    fn logits(&mut self, _cx: &ForwardCtx, logits: &Tensor) -> Result<Tensor> {
        logits.scale(1.0 / self.cap)?.tanh()?.scale(self.cap)
    }
}

export_plugin!(Softcap, hooks: [logits]);
