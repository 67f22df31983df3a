//! The reference GPT's MLP with ReLU² (the modded-nanogpt activation) in place of
//! GELU: `relu(x W_fc + b_fc)² W_proj + b_proj`, through the host's fused `relu2`.

use speedrun_plugin_api::*;

pub struct Relu2Mlp;

impl Plugin for Relu2Mlp {
    fn new(_config: &serde_json::Value) -> Result<Self> {
        Ok(Relu2Mlp)
    }
}

impl Mlp for Relu2Mlp {
    fn mlp(&mut self, cx: &ForwardCtx, layer: usize, x: &Tensor) -> Result<Tensor> {
        let w_fc = cx.layer_param(layer, "mlp.c_fc.weight")?;
        let b_fc = cx.layer_param(layer, "mlp.c_fc.bias")?;
        let w_proj = cx.layer_param(layer, "mlp.c_proj.weight")?;
        let b_proj = cx.layer_param(layer, "mlp.c_proj.bias")?;
        let h = linear(x, &w_fc, Some(&b_fc))?.relu2()?;
        linear(&h, &w_proj, Some(&b_proj))
    }
}

export_plugin!(Relu2Mlp, hooks: [mlp]);
