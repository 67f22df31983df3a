//! Zero-initialised output projections (the NanoGPT speedrun's `c_proj` weights):
//! every matrix that writes into the residual stream (`ParamKind::ResidualProjection`:
//! the attention's and the MLP's output projections) starts at zero, so each
//! block starts as the identity and the residual stream is the embedding alone.
//! Every other parameter keeps the reference's initialisation (from its own
//! seeded stream, so it is the same value it has without this plugin).

use speedrun_plugin_api::*;

pub struct ZeroInit;

impl Plugin for ZeroInit {
    fn new(_config: &serde_json::Value) -> Result<Self> {
        Ok(ZeroInit)
    }
}

impl Init for ZeroInit {
    fn init(&mut self, p: &ParamDecl, _model: &ModelShape) -> Result<Option<Tensor>> {
        match p.kind {
            ParamKind::ResidualProjection => Ok(Some(Tensor::zeros(&p.shape, DType::F32)?)),
            _ => Ok(None),
        }
    }
}

export_plugin!(ZeroInit, hooks: [init]);
