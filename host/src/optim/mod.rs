//! The optimizer and schedule seams (`optimizer.init` / `optimizer.step` and
//! `schedule`), and the reference implementations behind them.

pub mod adamw;
pub mod schedule;

use crate::model::params::ParamStore;
use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::Tensor;

/// Gradients, one per parameter, in the parameter store's order.
pub struct Grads(pub Vec<Tensor>);

impl Grads {
    /// Takes every parameter's gradient out of a backward pass: from candle's
    /// store and from what the host's fused nodes computed themselves
    /// (`ParamStore::fused_grads`), summed where a parameter has both. A
    /// parameter that received none is an error (a non-differentiable op cut
    /// the graph).
    pub fn collect(params: &ParamStore, store: &GradStore) -> Result<Grads> {
        let fused = params.fused_grads();
        let mut out = Vec::with_capacity(params.len());
        for p in params.iter() {
            let t = p.var.as_tensor();
            out.push(match (store.get(t), fused.take(t)) {
                (Some(g), Some(f)) => (g + f)?,
                (Some(g), None) => g.clone(),
                (None, Some(f)) => f,
                (None, None) => bail!(
                    "parameter {} received no gradient: some op between it and the loss records no backward",
                    p.spec.name
                ),
            });
        }
        Ok(Grads(out))
    }

    /// Global L2 norm over all gradients (summed in f64, in a fixed order).
    pub fn global_norm(&self) -> Result<f64> {
        let mut sq = 0.0f64;
        for g in &self.0 {
            sq += g
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
        Ok(sq.sqrt())
    }
}

/// What the loop hands the optimizer each step.
#[derive(Debug, Clone, Copy)]
pub struct StepInput {
    pub step: usize,
    /// Learning rate for this step (peak times the schedule's multiplier).
    pub lr: f64,
    /// The schedule's momentum multiplier (1.0 in the reference).
    pub momentum_mult: f64,
    /// Global gradient norm before any clipping, measured by the host.
    pub grad_norm: f64,
}

/// `optimizer.init` and `optimizer.step`. The only code that writes parameters.
pub trait Optimizer {
    fn name(&self) -> &str;
    /// Once, before the first step: sizes state for every parameter.
    fn init(&mut self, params: &ParamStore) -> Result<()>;
    /// Each step: update every parameter from its gradient.
    fn step(&mut self, params: &ParamStore, grads: &Grads, input: &StepInput) -> Result<()>;
}

pub use speedrun_plugin_abi::ScheduleOut;

/// `schedule`: a pure function of the step and the run length.
pub trait Schedule {
    fn at(&self, step: usize, total_steps: usize) -> Result<ScheduleOut>;
}
