//! AdamW as a plugin: the reference optimizer's exact arithmetic (PyTorch's
//! update after a global gradient-norm clip, decoupled weight decay on 2-D
//! weights only), through the host's fused in-place `adamw_update` op. The
//! moments are state the plugin keeps; clipping, bias correction and which
//! parameters decay are decided here.

use speedrun_plugin_api::*;

pub struct AdamW {
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    grad_clip: f64,
    /// Per parameter, in the order `init` saw them: (m, v, decays).
    state: Vec<(Tensor, Tensor, bool)>,
    t: i32,
}

fn key(config: &serde_json::Value, k: &str) -> Result<f64> {
    match config.get(k).and_then(|v| v.as_f64()) {
        Some(v) => Ok(v),
        None => bail!("adamw: configuration key {k} must be a number"),
    }
}

impl Plugin for AdamW {
    fn default_config() -> serde_json::Value {
        serde_json::json!({
            "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1, "grad_clip": 1.0
        })
    }

    fn new(config: &serde_json::Value) -> Result<Self> {
        Ok(AdamW {
            beta1: key(config, "beta1")?,
            beta2: key(config, "beta2")?,
            eps: key(config, "eps")?,
            weight_decay: key(config, "weight_decay")?,
            grad_clip: key(config, "grad_clip")?,
            state: Vec::new(),
            t: 0,
        })
    }
}

impl Optimizer for AdamW {
    fn init(&mut self, params: &[ParamRef]) -> Result<()> {
        self.state = params
            .iter()
            .map(|p| {
                let m = Tensor::zeros(&p.dims, DType::F32)?.keep()?;
                let v = Tensor::zeros(&p.dims, DType::F32)?.keep()?;
                Ok((m, v, p.dims.len() == 2))
            })
            .collect::<Result<_>>()?;
        self.t = 0;
        Ok(())
    }

    fn step(&mut self, s: &OptimizerStep) -> Result<()> {
        if s.params.len() != self.state.len() {
            bail!(
                "adamw: {} parameters at step {}, {} at init",
                s.params.len(),
                s.step,
                self.state.len()
            );
        }
        self.t += 1;
        // PyTorch's clip_grad_norm_ coefficient.
        let clip = (self.grad_clip / (s.grad_norm + 1e-6)).min(1.0);
        let bc1 = 1.0 - self.beta1.powi(self.t);
        let bc2 = 1.0 - self.beta2.powi(self.t);
        for (pg, &(m, v, decays)) in s.params.iter().zip(&self.state) {
            let wd = if decays { self.weight_decay } else { 0.0 };
            pg.param.adamw_update(
                &pg.grad,
                &m,
                &v,
                &AdamwStep {
                    clip,
                    beta1: self.beta1,
                    beta2: self.beta2,
                    eps: self.eps,
                    step_size: s.lr / bc1,
                    bc2_sqrt: bc2.sqrt(),
                    decay: 1.0 - s.lr * wd,
                },
            )?;
        }
        Ok(())
    }
}

export_plugin!(AdamW, hooks: [optimizer]);
