//! AdamW as a plugin: the reference optimizer's exact arithmetic (PyTorch's
//! update after a global gradient-norm clip, decoupled weight decay on 2-D
//! weights only), through the host's fused in-place `adamw_update` op. The
//! moments are state the plugin keeps; clipping, bias correction and which
//! parameters decay are decided here.

use speedrun_plugin_api::*;

pub struct AdamW {
    config: AdamwConfig,
    /// Per parameter, in the order `init` saw them: (m, v, decays).
    state: Vec<(Tensor, Tensor, bool)>,
    t: i32,
}

impl Plugin for AdamW {
    fn default_config() -> serde_json::Value {
        serde_json::json!({
            "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1, "grad_clip": 1.0
        })
    }

    fn new(config: &serde_json::Value) -> Result<Self> {
        Ok(AdamW {
            config: AdamwConfig::from_config(config, "adamw")?,
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
        for (pg, &(m, v, decays)) in s.params.iter().zip(&self.state) {
            let h = self.config.step(self.t, s.lr, s.grad_norm, decays);
            pg.param.adamw_update(&pg.grad, &m, &v, &h)?;
        }
        Ok(())
    }
}

export_plugin!(AdamW, hooks: [optimizer]);
