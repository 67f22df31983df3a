//! The hook points of the reference training loop, with each one's contract.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A named point of the reference training loop a plugin may replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum HookPoint {
    /// Each step: returns learning-rate and momentum multipliers for the step.
    /// May read the step index and the run length; may call no tensor op.
    Schedule,
    /// Once, before the first step: groups parameters and creates state tensors.
    OptimizerInit,
    /// Each step, after the backward pass: updates parameters from their
    /// gradients. The only hook allowed to write parameters.
    OptimizerStep,
    /// Once per parameter at start-up: produces its initial value from the
    /// host's seeded generator.
    ModelInit,
    /// Once at start-up: declares the model's parameters (names, shapes).
    ModelParams,
    /// Each forward: token ids to the residual stream `[B, T, D]`.
    ModelEmbed,
    /// Each forward, per layer: residual stream in, residual stream out.
    ModelBlock,
    /// Each forward, per layer: normalised stream in, attention output out.
    /// Must be causal: position t may only see positions <= t.
    ModelAttention,
    /// Each forward, per layer: normalised stream in, MLP output out.
    ModelMlp,
    /// Each forward: a normalisation of the stream (pre-attention, pre-MLP, final).
    ModelNorm,
    /// Each forward: final stream to logits `[B, T, V]` over the whole vocabulary.
    ModelHead,
    /// Each forward: token ids to logits; replaces everything above.
    ModelForward,
    /// Each forward, per layer, before the block (API 1.1): the residual stream
    /// entering it and the outputs of every earlier block, to the stream it gets.
    ModelBlockInput,
    /// Each forward, per layer, in the reference attention (API 1.1): its packed
    /// projection `[B, T, 3D]` (q, k, v thirds), same shape out.
    ModelQkv,
    /// Each forward, after the head (API 1.1): logits to logits, same shape.
    ModelLogits,
}

impl HookPoint {
    pub const ALL: [HookPoint; 15] = [
        HookPoint::Schedule,
        HookPoint::OptimizerInit,
        HookPoint::OptimizerStep,
        HookPoint::ModelInit,
        HookPoint::ModelParams,
        HookPoint::ModelEmbed,
        HookPoint::ModelBlock,
        HookPoint::ModelAttention,
        HookPoint::ModelMlp,
        HookPoint::ModelNorm,
        HookPoint::ModelHead,
        HookPoint::ModelForward,
        HookPoint::ModelBlockInput,
        HookPoint::ModelQkv,
        HookPoint::ModelLogits,
    ];

    /// The dotted name used in manifests, policies and telemetry.
    pub fn name(self) -> &'static str {
        match self {
            HookPoint::Schedule => "schedule",
            HookPoint::OptimizerInit => "optimizer.init",
            HookPoint::OptimizerStep => "optimizer.step",
            HookPoint::ModelInit => "model.init",
            HookPoint::ModelParams => "model.params",
            HookPoint::ModelEmbed => "model.embed",
            HookPoint::ModelBlock => "model.block",
            HookPoint::ModelAttention => "model.attention",
            HookPoint::ModelMlp => "model.mlp",
            HookPoint::ModelNorm => "model.norm",
            HookPoint::ModelHead => "model.head",
            HookPoint::ModelForward => "model.forward",
            HookPoint::ModelBlockInput => "model.block_input",
            HookPoint::ModelQkv => "model.qkv",
            HookPoint::ModelLogits => "model.logits",
        }
    }

    /// The API version that added this hook: a plugin built for an earlier
    /// one cannot provide it.
    pub fn since(self) -> crate::ApiVersion {
        let minor = match self {
            HookPoint::ModelBlockInput | HookPoint::ModelQkv | HookPoint::ModelLogits => 1,
            _ => 0,
        };
        crate::ApiVersion { major: 1, minor }
    }

    /// The hooks that run inside the model's forward pass (pure: a fresh
    /// instance per call, no writes, no state kept).
    pub fn is_forward(self) -> bool {
        !matches!(
            self,
            HookPoint::Schedule
                | HookPoint::OptimizerInit
                | HookPoint::OptimizerStep
                | HookPoint::ModelInit
                | HookPoint::ModelParams
        )
    }

    /// Parses a dotted name; `None` for an unknown hook.
    pub fn from_name(name: &str) -> Option<HookPoint> {
        HookPoint::ALL.into_iter().find(|h| h.name() == name)
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for h in HookPoint::ALL {
            assert!(seen.insert(h.name()), "duplicate hook name {}", h.name());
            assert_eq!(HookPoint::from_name(h.name()), Some(h));
        }
        assert_eq!(HookPoint::from_name("model.nope"), None);
    }
}
