//! The model's parameters: declared by the `model.params` hook, given initial
//! values by the `model.init` hook from the host's seeded generator, and held by
//! the host as candle `Var`s under Hugging Face GPT-2 names.

use crate::track::ModelShape;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// Parameter declarations are the plugin API's, so a `model.params` plugin and
/// the host speak of the same thing.
pub use speedrun_plugin_abi::{ParamDecl, ParamKind};

/// A parameter with its value.
pub struct Param {
    pub spec: ParamDecl,
    pub var: Var,
}

/// Every parameter of the model, in declaration order.
pub struct ParamStore {
    params: Vec<Param>,
    index: HashMap<String, usize>,
    /// Gradients the host's fused nodes computed outside candle's graph
    /// (`speedrun_kernels::reference_block`, and `reference_gpt`, the whole
    /// model on the host's tape); `Grads::collect` takes them.
    fused_grads: std::sync::Arc<speedrun_kernels::ParamGrads>,
}

/// A per-parameter random stream: the run's seed and the parameter's name decide
/// it, so declaring an extra parameter never shifts the values of the others.
pub fn param_rng(seed: u64, name: &str) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // FNV-1a of the name picks the stream.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    rng.set_stream(h);
    rng
}

impl ParamStore {
    /// Builds the store from declared specs and their initial values (f32).
    pub fn new(values: Vec<(ParamDecl, Vec<f32>)>, device: &Device) -> Result<ParamStore> {
        ParamStore::with_dtype(values, device, DType::F32)
    }

    /// As `new`, holding the values in `dtype` (f64 for gradient checks).
    pub fn with_dtype(
        values: Vec<(ParamDecl, Vec<f32>)>,
        device: &Device,
        dtype: DType,
    ) -> Result<ParamStore> {
        let mut params = Vec::with_capacity(values.len());
        let mut index = HashMap::new();
        for (spec, data) in values {
            if data.len() != spec.numel() {
                bail!(
                    "parameter {}: initial value has {} elements, its shape {:?} needs {}",
                    spec.name,
                    data.len(),
                    spec.shape,
                    spec.numel()
                );
            }
            if index.insert(spec.name.clone(), params.len()).is_some() {
                bail!("parameter {} is declared twice", spec.name);
            }
            let t = Tensor::from_vec(data, spec.shape.as_slice(), device)?.to_dtype(dtype)?;
            params.push(Param {
                var: Var::from_tensor(&t)?,
                spec,
            });
        }
        Ok(ParamStore {
            params,
            index,
            fused_grads: Default::default(),
        })
    }

    /// The value of a parameter by name (an error names a missing one).
    /// Where the fused nodes put parameter gradients (see the field).
    pub fn fused_grads(&self) -> &std::sync::Arc<speedrun_kernels::ParamGrads> {
        &self.fused_grads
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.index
            .get(name)
            .map(|&i| self.params[i].var.as_tensor())
            .with_context(|| format!("the model has no parameter named {name}"))
    }

    /// The value of a parameter by name, if the model has it.
    pub fn find(&self, name: &str) -> Option<&Tensor> {
        self.index
            .get(name)
            .map(|&i| self.params[i].var.as_tensor())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Param> {
        self.params.iter()
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    pub fn param(&self, i: usize) -> &Param {
        &self.params[i]
    }

    /// Total number of scalar parameters.
    pub fn numel(&self) -> usize {
        self.params.iter().map(|p| p.spec.numel()).sum()
    }

    /// SHA-256 over every parameter's name, shape and f32 bytes, in order: equal
    /// digests mean identical parameters.
    pub fn digest(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for p in &self.params {
            h.update(p.spec.name.as_bytes());
            for d in &p.spec.shape {
                h.update((*d as u64).to_le_bytes());
            }
            let v = p
                .var
                .as_tensor()
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for x in v {
                h.update(x.to_le_bytes());
            }
        }
        Ok(hex::encode(h.finalize()))
    }

    /// Name → current value (detached), for checkpoints.
    pub fn named_tensors(&self) -> HashMap<String, Tensor> {
        self.params
            .iter()
            .map(|p| (p.spec.name.clone(), p.var.as_detached_tensor()))
            .collect()
    }
}

/// The reference GPT-2's parameters (Hugging Face names and layouts: Conv1D weights are `[in, out]`).
pub fn reference_params(m: &ModelShape) -> Vec<ParamDecl> {
    use ParamKind::*;
    let (d, v, t) = (m.width, m.vocab, m.seq_len);
    let mut out = vec![
        ParamDecl::new("transformer.wte.weight", &[v, d], TokenEmbedding),
        ParamDecl::new("transformer.wpe.weight", &[t, d], PositionEmbedding),
    ];
    for l in 0..m.layers {
        let p = |s: &str| format!("transformer.h.{l}.{s}");
        out.extend([
            ParamDecl::new(p("ln_1.weight"), &[d], NormGain),
            ParamDecl::new(p("ln_1.bias"), &[d], NormBias),
            ParamDecl::new(p("attn.c_attn.weight"), &[d, 3 * d], Matrix),
            ParamDecl::new(p("attn.c_attn.bias"), &[3 * d], Bias),
            ParamDecl::new(p("attn.c_proj.weight"), &[d, d], ResidualProjection),
            ParamDecl::new(p("attn.c_proj.bias"), &[d], Bias),
            ParamDecl::new(p("ln_2.weight"), &[d], NormGain),
            ParamDecl::new(p("ln_2.bias"), &[d], NormBias),
            ParamDecl::new(p("mlp.c_fc.weight"), &[d, 4 * d], Matrix),
            ParamDecl::new(p("mlp.c_fc.bias"), &[4 * d], Bias),
            ParamDecl::new(p("mlp.c_proj.weight"), &[4 * d, d], ResidualProjection),
            ParamDecl::new(p("mlp.c_proj.bias"), &[d], Bias),
        ]);
    }
    out.extend([
        ParamDecl::new("transformer.ln_f.weight", &[d], NormGain),
        ParamDecl::new("transformer.ln_f.bias", &[d], NormBias),
    ]);
    out
}
