//! Fused training ops, each with its forward *and* backward, registered as candle
//! custom ops so autograd flows through them.
//!
//! This crate owns the hot elementwise and row-wise ops of the reference GPT
//! (GELU, ReLU², LayerNorm, RMSNorm, the causal masked softmax, log-softmax +
//! cross-entropy) and the optimizer's (in-place AdamW, Muon's Newton–Schulz
//! iteration on the gemm path): one pass over memory each way instead of candle's chain of
//! temporaries. Rows are reduced in a fixed order and parameter-gradient sums go
//! through fixed chunks, so results do not depend on the thread count.
//! It owns no model and no training loop. With the `cuda` feature the same ops
//! run on a GPU: the elementwise and row-wise ones through `cuda/ops.cu`
//! (NVRTC, see `cuda`), the gemm-shaped ones (linear, attention, Newton–Schulz)
//! as candle ops, i.e. cuBLAS.

mod activation;
mod adamw;
mod attention;
mod bias;
mod block;
pub mod check;
mod cross_entropy;
#[cfg(feature = "cuda")]
pub mod cuda;
mod gemm_call;
pub mod gemm_ops;
mod gpt;
mod linear;
mod newton_schulz;
mod norm;
mod precision;
mod real;
mod rotary;
mod softmax;
mod tile;
mod wide;

pub use activation::{gelu, gelu_input_grad, relu2, relu2_input_grad};
pub use adamw::{adamw_update, AdamwStep};
pub use attention::{
    causal_attention_packed, causal_attention_packed_grad, projected_causal_attention,
};
pub use bias::add_rows;
pub use block::{reference_block, BlockParams, ParamGrads, Pending};
pub use cross_entropy::cross_entropy;
pub use gemm_call::kernel_name as matmul_kernel;
pub use gpt::{reference_gpt, GptParams};
pub use linear::{grads as linear_grads, linear, linear_gelu, linear_relu2, linear_residual};
pub use newton_schulz::{newton_schulz, NsCoefficients};
pub use norm::{layer_norm, norm_grads, rms_norm};
pub use precision::Precision;
pub use real::{exp_f32, tanh_f32};
pub use rotary::{rotary, rotary_grad};
pub use softmax::{causal_softmax, causal_softmax_grad};
pub use wide::width as vector_width;

/// Rows handled per parallel task; fixed so reductions never depend on the thread count.
pub(crate) const ROW_CHUNK: usize = 16;
/// Elements per parallel task for elementwise ops.
pub(crate) const ELEM_CHUNK: usize = 1 << 14;
