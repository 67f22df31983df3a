//! Checkpoints in safetensors, under Hugging Face GPT-2 parameter names
//! (`transformer.wte.weight`, `transformer.h.0.attn.c_attn.weight`, …; Conv1D
//! weights `[in, out]`), and loading one back into a model of the track's shape.

use crate::model::params::ParamStore;
use crate::model::Model;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::Path;

pub fn save(params: &ParamStore, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    candle_core::safetensors::save(&params.named_tensors(), path)
        .with_context(|| format!("writing checkpoint {}", path.display()))
}

/// Saves parameters trained under permutation `p` under the real token ids:
/// every token-indexed table (`ParamKind::TokenEmbedding` with a row per id)
/// has its rows put back, so the checkpoint reads like any other.
pub fn save_unpermuted(
    params: &ParamStore,
    p: &crate::data::permutation::VocabPermutation,
    path: &Path,
) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut named = params.named_tensors();
    for param in params.iter() {
        let rows = param.spec.shape.first().copied();
        if param.spec.kind == crate::model::params::ParamKind::TokenEmbedding
            && rows == Some(p.len())
        {
            let t = named
                .get(&param.spec.name)
                .context("a parameter without a tensor")?;
            let back = p.unpermute_rows(t)?;
            named.insert(param.spec.name.clone(), back);
        }
    }
    candle_core::safetensors::save(&named, path)
        .with_context(|| format!("writing checkpoint {}", path.display()))
}

/// Replaces the model's parameters with a checkpoint's; names and shapes must match exactly.
pub fn load_into(model: &Model, path: &Path, device: &Device) -> Result<()> {
    let mut tensors = candle_core::safetensors::load(path, device)
        .with_context(|| format!("reading checkpoint {}", path.display()))?;
    for p in model.params.iter() {
        let t = tensors.remove(&p.spec.name).with_context(|| {
            format!(
                "checkpoint {} has no tensor {}",
                path.display(),
                p.spec.name
            )
        })?;
        if t.dims() != p.spec.shape.as_slice() {
            bail!(
                "checkpoint {}: {} has shape {:?}, the track's model needs {:?}",
                path.display(),
                p.spec.name,
                t.dims(),
                p.spec.shape
            );
        }
        p.var.set(&t.to_dtype(candle_core::DType::F32)?)?;
    }
    if let Some(extra) = tensors.keys().next() {
        bail!(
            "checkpoint {} holds {} tensor(s) the model does not have, e.g. {extra}",
            path.display(),
            tensors.len()
        );
    }
    Ok(())
}
