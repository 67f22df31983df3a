//! Muon (Keller Jordan's, as in the NanoGPT speedrun) for the 2-D hidden
//! matrices: Nesterov momentum, the update orthogonalised by Newton–Schulz
//! iterations and scaled by √max(1, fan_out / fan_in); AdamW with the
//! reference's arithmetic for the embeddings (the tied head included) and every
//! 1-D parameter.
//!
//! Per matrix and step, with β = `momentum` × the schedule's momentum multiplier:
//!
//! ```text
//! buf ← β buf + (1 − β) g                      (momentum, kept state)
//! u   ← (1 − β) g + β buf                      (Nesterov)
//! X   ← u / (‖u‖_F · s + ε), transposed when rows > cols
//! X   ← a X + (b A + c A²) X,  A = X Xᵀ         (per (a, b, c) coefficient triple)
//! p   ← p (1 − lr_m · wd_m) − lr_m · √max(1, fan_out/fan_in) · X
//! ```
//!
//! `coefficients = "standard"`: five steps of (3.4445, −4.7750, 2.0315), s = 1,
//! ε = 1e-7. `"polar_express"`: the five per-iteration triples of Polar Express
//! (arXiv 2505.16932) as the speedrun uses them, s = 1.02, ε = 1e-6.
//! Weights are stored `[in, out]` (Hugging Face GPT-2 layout), so fan_out/fan_in
//! is cols/rows here: the speedrun's rows/cols of a PyTorch `[out, in]` weight.
//! lr_m = the step's lr × `lr_scale` (the track's peak 2e-3 × 10 = Muon's usual 0.02).

use speedrun_plugin_api::*;

pub const STANDARD: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);

pub const POLAR_EXPRESS: [(f64, f64, f64); 5] = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
];

/// How the update is orthogonalised.
#[derive(Debug, Clone, PartialEq)]
pub struct NewtonSchulz {
    pub coefficients: Vec<(f64, f64, f64)>,
    /// The Frobenius norm is multiplied by this before dividing (a safety margin).
    pub norm_scale: f64,
    pub eps: f64,
}

impl NewtonSchulz {
    pub fn standard(steps: usize) -> NewtonSchulz {
        NewtonSchulz {
            coefficients: vec![STANDARD; steps],
            norm_scale: 1.0,
            eps: 1e-7,
        }
    }

    pub fn polar_express() -> NewtonSchulz {
        NewtonSchulz {
            coefficients: POLAR_EXPRESS.to_vec(),
            norm_scale: 1.02,
            eps: 1e-6,
        }
    }

    /// The approximately orthogonal factor of the `[rows, cols]` matrix `g`: the
    /// host's fused Newton–Schulz op (gemm, no temporaries per iteration).
    pub fn orthogonalize(&self, g: &Tensor) -> Result<Tensor> {
        g.newton_schulz(&self.coefficients, self.norm_scale, self.eps)
    }
}

enum Slot {
    /// A hidden matrix: its momentum buffer and shape.
    Muon {
        buf: Tensor,
        rows: usize,
        cols: usize,
    },
    /// Everything else: AdamW moments, and whether it decays.
    Adam { m: Tensor, v: Tensor, decays: bool },
}

pub struct Muon {
    momentum: f64,
    lr_scale: f64,
    muon_weight_decay: f64,
    ns: NewtonSchulz,
    adamw: AdamwConfig,
    slots: Vec<Slot>,
    t: i32,
}

fn number(config: &serde_json::Value, k: &str) -> Result<f64> {
    match config.get(k).and_then(|v| v.as_f64()) {
        Some(v) => Ok(v),
        None => bail!("muon: configuration key {k} must be a number"),
    }
}

impl Plugin for Muon {
    /// `beta1`, `beta2`, `eps`, `weight_decay`, `grad_clip` (the AdamW part) take
    /// the track's values.
    fn default_config() -> serde_json::Value {
        serde_json::json!({
            "momentum": 0.95, "ns_steps": 5, "coefficients": "standard",
            "lr_scale": 10.0, "muon_weight_decay": 0.0,
            "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1, "grad_clip": 1.0
        })
    }

    fn new(config: &serde_json::Value) -> Result<Self> {
        let steps = config.get("ns_steps").and_then(|v| v.as_u64()).unwrap_or(5) as usize;
        let ns = match config.get("coefficients").and_then(|v| v.as_str()) {
            Some("standard") | None => NewtonSchulz::standard(steps),
            Some("polar_express") => NewtonSchulz::polar_express(),
            Some(other) => {
                bail!("muon: coefficients {other:?}: use \"standard\" or \"polar_express\"")
            }
        };
        Ok(Muon {
            momentum: number(config, "momentum")?,
            lr_scale: number(config, "lr_scale")?,
            muon_weight_decay: number(config, "muon_weight_decay")?,
            ns,
            adamw: AdamwConfig::from_config(config, "muon")?,
            slots: Vec::new(),
            t: 0,
        })
    }
}

/// Hidden matrices get Muon; embeddings (the tied head) and 1-D parameters AdamW.
pub fn uses_muon(kind: ParamKind, dims: &[usize]) -> bool {
    dims.len() == 2 && matches!(kind, ParamKind::Matrix | ParamKind::ResidualProjection)
}

impl Optimizer for Muon {
    fn init(&mut self, params: &[ParamRef]) -> Result<()> {
        self.slots = params
            .iter()
            .map(|p| {
                Ok(if uses_muon(p.kind, &p.dims) {
                    Slot::Muon {
                        buf: Tensor::zeros(&p.dims, DType::F32)?.keep()?,
                        rows: p.dims[0],
                        cols: p.dims[1],
                    }
                } else {
                    Slot::Adam {
                        m: Tensor::zeros(&p.dims, DType::F32)?.keep()?,
                        v: Tensor::zeros(&p.dims, DType::F32)?.keep()?,
                        decays: p.dims.len() == 2,
                    }
                })
            })
            .collect::<Result<_>>()?;
        self.t = 0;
        Ok(())
    }

    fn step(&mut self, s: &OptimizerStep) -> Result<()> {
        if s.params.len() != self.slots.len() {
            bail!(
                "muon: {} parameters at step {}, {} at init",
                s.params.len(),
                s.step,
                self.slots.len()
            );
        }
        self.t += 1;
        let beta = self.momentum * s.momentum_mult;
        let lr_m = s.lr * self.lr_scale;
        for (pg, slot) in s.params.iter().zip(&self.slots) {
            match *slot {
                Slot::Muon { buf, rows, cols } => {
                    let next = buf.scale(beta)?.add(&pg.grad.scale(1.0 - beta)?)?;
                    buf.assign(&next)?;
                    let u = pg.grad.scale(1.0 - beta)?.add(&next.scale(beta)?)?;
                    let o = self.ns.orthogonalize(&u)?;
                    let gain = (cols as f64 / rows as f64).max(1.0).sqrt();
                    let p = pg
                        .param
                        .scale(1.0 - lr_m * self.muon_weight_decay)?
                        .sub(&o.scale(lr_m * gain)?)?;
                    pg.param.assign(&p)?;
                }
                Slot::Adam { m, v, decays } => {
                    let h = self.adamw.step(self.t, s.lr, s.grad_norm, decays);
                    pg.param.adamw_update(&pg.grad, &m, &v, &h)?;
                }
            }
        }
        Ok(())
    }
}

export_plugin!(Muon, hooks: [optimizer]);
