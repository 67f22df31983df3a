//! U-net skip connections (the NanoGPT speedrun's): the outputs of the first n
//! blocks are kept and handed back, last in first out, to the inputs of the
//! last n blocks, each scaled by a learned weight:
//! `x ← x + w[i] · out[n−1−i]` before block `layers−n+i`.
//!
//! This plugin declares the weights, `transformer.skip_weights` `[n]`
//! (`model.params`), starts them at one (`model.init`, the speedrun's value)
//! and applies them (`model.block_input`, plugin API 1.1: the stream entering
//! each block, with the outputs of the blocks before it), around whatever
//! blocks the model has, so it stacks with every other hook. They are
//! `ParamKind::Bias` (1-D: AdamW without decay under both optimizers, and no
//! norm plugin removes them).
//!
//! `"count"`: n (default `null`: half the layers, the speedrun's).

use speedrun_plugin_api::*;

pub struct UnetSkips {
    count: Option<usize>,
}

impl Plugin for UnetSkips {
    fn default_config() -> serde_json::Value {
        serde_json::json!({ "count": null })
    }

    fn new(config: &serde_json::Value) -> Result<Self> {
        let count = match &config["count"] {
            serde_json::Value::Null => None,
            v => match v.as_u64() {
                Some(n) if n > 0 => Some(n as usize),
                _ => bail!("unet-skips: count must be a positive whole number or null, got {v}"),
            },
        };
        Ok(UnetSkips { count })
    }
}

impl Params for UnetSkips {
    fn params(
        &mut self,
        model: &ModelShape,
        mut declared: Vec<ParamDecl>,
    ) -> Result<Vec<ParamDecl>> {
        let n = self.count.unwrap_or(model.layers / 2);
        if n == 0 || 2 * n > model.layers {
            bail!(
                "unet-skips: {n} skip connections need at least {} layers (the model has {})",
                2 * n.max(1),
                model.layers
            );
        }
        if declared.iter().any(|p| p.name == SKIP_WEIGHTS) {
            bail!("unet-skips: the model already declares {SKIP_WEIGHTS}");
        }
        declared.push(ParamDecl::new(SKIP_WEIGHTS, &[n], ParamKind::Bias));
        Ok(declared)
    }
}

impl Init for UnetSkips {
    fn init(&mut self, p: &ParamDecl, _model: &ModelShape) -> Result<Option<Tensor>> {
        if p.name == SKIP_WEIGHTS {
            return Ok(Some(Tensor::full(&p.shape, 1.0, DType::F32)?));
        }
        Ok(None)
    }
}

impl BlockInput for UnetSkips {
    /// Before block `layer ≥ L − n`, with i = layer − (L − n):
    /// `x + w[i] · earlier[n − 1 − i]` (last kept, first handed back).
    fn block_input(
        &mut self,
        cx: &ForwardCtx,
        layer: usize,
        x: &Tensor,
        earlier: &[Tensor],
    ) -> Result<Tensor> {
        let w = cx.param(SKIP_WEIGHTS)?;
        let n = w.elem_count()?;
        let layers = cx.model.layers;
        if 2 * n > layers {
            bail!("unet-skips: {SKIP_WEIGHTS} has {n} weights: a U-net over {layers} layers has at most {}", layers / 2);
        }
        if layer < layers - n {
            return Ok(*x);
        }
        let i = layer - (layers - n);
        let skip = earlier.get(n - 1 - i).ok_or_else(|| {
            Error::new(format!(
                "unet-skips: block {layer} was given {} earlier outputs",
                earlier.len()
            ))
        })?;
        x.add(&skip.mul(&w.narrow(0, i, 1)?)?)
    }
}

export_plugin!(UnetSkips, hooks: [params, init, block_input]);
