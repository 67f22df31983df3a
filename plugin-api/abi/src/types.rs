//! The plain values hooks receive and return, in the host's and the SDK's
//! common vocabulary.

use crate::{bail, Result};
use serde::{Deserialize, Serialize};

/// The reference model's shape, as the track's `[model]` table gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    pub layers: usize,
    pub width: usize,
    pub heads: usize,
    pub seq_len: usize,
    /// The model's vocabulary, possibly padded (the speedrun pads 50257 to 50304).
    pub vocab: usize,
}

impl ModelShape {
    pub fn head_dim(&self) -> usize {
        self.width / self.heads.max(1)
    }
}

/// What a parameter is for; decides its reference initialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    /// Token embedding (also the tied output head).
    TokenEmbedding,
    /// Learned position embedding.
    PositionEmbedding,
    /// A hidden weight matrix.
    Matrix,
    /// A matrix writing into the residual stream (scaled init).
    ResidualProjection,
    Bias,
    NormGain,
    NormBias,
}

impl ParamKind {
    pub const ALL: [ParamKind; 7] = [
        ParamKind::TokenEmbedding,
        ParamKind::PositionEmbedding,
        ParamKind::Matrix,
        ParamKind::ResidualProjection,
        ParamKind::Bias,
        ParamKind::NormGain,
        ParamKind::NormBias,
    ];

    /// The wire code (the SDK hides it from authors).
    #[doc(hidden)]
    pub fn code(self) -> i64 {
        ParamKind::ALL.iter().position(|&k| k == self).unwrap_or(0) as i64
    }

    /// The wire code (the SDK hides it from authors).
    #[doc(hidden)]
    pub fn from_code(code: i64) -> Result<ParamKind> {
        match usize::try_from(code)
            .ok()
            .and_then(|i| ParamKind::ALL.get(i))
        {
            Some(&k) => Ok(k),
            None => bail!("unknown parameter kind code {code}"),
        }
    }
}

/// One declared parameter (`model.params`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamDecl {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
}

impl ParamDecl {
    pub fn new(name: impl Into<String>, shape: &[usize], kind: ParamKind) -> ParamDecl {
        ParamDecl {
            name: name.into(),
            shape: shape.to_vec(),
            kind,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Which normalisation a `model.norm` call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormSite {
    /// Before layer `l`'s attention.
    Attention(usize),
    /// Before layer `l`'s MLP.
    Mlp(usize),
    /// After the last layer, before the head.
    Final,
}

/// The `schedule` hook's answer for one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScheduleOut {
    /// Multiplier on the track's peak learning rate.
    pub lr_mult: f64,
    pub momentum_mult: f64,
    /// Training tokens for this step (a positive multiple of the sequence length);
    /// `None` keeps the track's `batch_tokens`. The host refuses a step that would
    /// take the run past the track's token budget.
    #[serde(default)]
    pub batch_tokens: Option<usize>,
}

impl ScheduleOut {
    /// Multipliers only, at the track's batch size.
    pub fn new(lr_mult: f64, momentum_mult: f64) -> ScheduleOut {
        ScheduleOut {
            lr_mult,
            momentum_mult,
            batch_tokens: None,
        }
    }
}
