//! The reference optimizer: AdamW (PyTorch's update, decoupled weight decay on
//! 2-D weights only) after a global gradient-norm clip, through the fused
//! in-place kernel (`speedrun_kernels::adamw_update`) that the plugin op
//! `adamw_update` also runs.

use super::{Grads, Optimizer, StepInput};
use crate::model::params::ParamStore;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use speedrun_kernels::{adamw_update, AdamwStep};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this.
    pub grad_clip: f64,
}

pub struct AdamW {
    cfg: AdamWConfig,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: u64,
}

impl AdamW {
    pub fn new(cfg: AdamWConfig) -> AdamW {
        AdamW {
            cfg,
            m: Vec::new(),
            v: Vec::new(),
            t: 0,
        }
    }

    /// First and second moments, for tests and snapshots.
    pub fn moments(&self, i: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((
            self.m[i].flatten_all()?.to_vec1()?,
            self.v[i].flatten_all()?.to_vec1()?,
        ))
    }
}

/// PyTorch's `clip_grad_norm_` coefficient.
pub fn clip_coefficient(grad_norm: f64, max_norm: f64) -> f64 {
    (max_norm / (grad_norm + 1e-6)).min(1.0)
}

impl Optimizer for AdamW {
    fn name(&self) -> &str {
        "adamw"
    }

    fn init(&mut self, params: &ParamStore) -> Result<()> {
        let zeros = |p: &crate::model::params::Param| {
            Tensor::zeros(p.spec.shape.as_slice(), DType::F32, p.var.device())
        };
        self.m = params
            .iter()
            .map(zeros)
            .collect::<candle_core::Result<_>>()?;
        self.v = params
            .iter()
            .map(zeros)
            .collect::<candle_core::Result<_>>()?;
        self.t = 0;
        Ok(())
    }

    fn step(&mut self, params: &ParamStore, grads: &Grads, input: &StepInput) -> Result<()> {
        if self.m.len() != params.len() || grads.0.len() != params.len() {
            bail!(
                "adamw: step called with {} gradients for {} parameters (init not called?)",
                grads.0.len(),
                params.len()
            );
        }
        self.t += 1;
        let c = self.cfg;
        let clip = clip_coefficient(input.grad_norm, c.grad_clip) as f32;
        let lr = input.lr;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        for (i, p) in params.iter().enumerate() {
            let wd = if p.spec.shape.len() == 2 {
                c.weight_decay
            } else {
                0.0
            };
            let h = AdamwStep {
                clip,
                beta1: c.beta1 as f32,
                beta2: c.beta2 as f32,
                eps: c.eps as f32,
                step_size,
                bc2_sqrt,
                decay: (1.0 - lr * wd) as f32,
            };
            adamw_update(p.var.as_tensor(), &grads.0[i], &self.m[i], &self.v[i], &h)
                .with_context(|| format!("updating {}", p.spec.name))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::{ParamDecl, ParamKind};
    use candle_core::Device;

    /// Two AdamW steps on a 2-D weight and a 1-D bias, against values worked by hand in f64.
    #[test]
    fn two_steps_match_hand_computation() {
        let dev = Device::Cpu;
        let w0 = [0.5f32, -1.0, 2.0, 0.25];
        let b0 = [0.1f32, -0.2];
        let params = ParamStore::new(
            vec![
                (ParamDecl::new("w", &[2, 2], ParamKind::Matrix), w0.to_vec()),
                (ParamDecl::new("b", &[2], ParamKind::Bias), b0.to_vec()),
            ],
            &dev,
        )
        .unwrap();
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
        };
        let mut opt = AdamW::new(cfg);
        opt.init(&params).unwrap();
        let gw = [0.3f32, -0.4, 0.0, 1.2];
        let gb = [0.05f32, 0.1];
        let grads = Grads(vec![
            Tensor::from_vec(gw.to_vec(), (2, 2), &dev).unwrap(),
            Tensor::from_vec(gb.to_vec(), 2, &dev).unwrap(),
        ]);
        let norm = grads.global_norm().unwrap();
        // ||g|| = sqrt(0.09 + 0.16 + 0 + 1.44 + 0.0025 + 0.01) = sqrt(1.7025)
        assert!((norm - 1.7025f64.sqrt()).abs() < 1e-6);
        let lr = 0.01;
        for step in 0..2 {
            opt.step(
                &params,
                &grads,
                &StepInput {
                    step,
                    lr,
                    momentum_mult: 1.0,
                    grad_norm: norm,
                },
            )
            .unwrap();
        }
        // By hand: clip = 1 / (sqrt(1.7025) + 1e-6); g' = g * clip. With the same g' twice:
        // m1 = 0.1 g', v1 = 0.05 g'^2; m2 = 0.19 g', v2 = 0.0975 g'^2;
        // step 1: mhat = g', vhat = g'^2 → update = sign(g') (|g'| / (|g'| + eps)).
        // step 2: mhat = 0.19/0.19 g' = g', vhat = 0.0975/0.0975 g'^2 → the same update.
        let clip = 1.0 / (1.7025f64.sqrt() + 1e-6);
        let expect = |p0: f32, g: f32, wd: f64| -> f64 {
            let gp = g as f64 * clip;
            let upd = if gp == 0.0 {
                0.0
            } else {
                gp / (gp.abs() + 1e-8)
            };
            let mut p = p0 as f64;
            for _ in 0..2 {
                p = p * (1.0 - lr * wd) - lr * upd;
            }
            p
        };
        let w = params
            .get("w")
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = params.get("b").unwrap().to_vec1::<f32>().unwrap();
        for j in 0..4 {
            let e = expect(w0[j], gw[j], 0.1);
            assert!(
                (w[j] as f64 - e).abs() < 1e-6,
                "w[{j}] = {} expected {e}",
                w[j]
            );
        }
        for j in 0..2 {
            let e = expect(b0[j], gb[j], 0.0);
            assert!(
                (b[j] as f64 - e).abs() < 1e-6,
                "b[{j}] = {} expected {e}",
                b[j]
            );
        }
        // The moments after two steps: m = 0.19 g', v = 0.0975 g'^2.
        let (m, v) = opt.moments(0).unwrap();
        assert!((m[3] as f64 - 0.19 * 1.2 * clip).abs() < 1e-6);
        assert!((v[3] as f64 - 0.0975 * (1.2 * clip).powi(2)).abs() < 1e-6);
    }

    #[test]
    fn clip_coefficient_is_torchs() {
        assert_eq!(clip_coefficient(0.5, 1.0), 1.0);
        assert!((clip_coefficient(4.0, 1.0) - 1.0 / (4.0 + 1e-6)).abs() < 1e-15);
    }
}
