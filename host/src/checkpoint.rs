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
