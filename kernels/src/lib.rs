//! Fused training ops, each with its forward *and* backward.
//!
//! This crate will own the hot ops of the reference GPT (GELU, LayerNorm/RMSNorm,
//! causal attention, fused log-softmax + cross-entropy, the in-place AdamW update)
//! as candle custom ops that carry their gradient, a CPU implementation always, and
//! CUDA sources compiled at run time through NVRTC behind the `cuda` feature.
//! It owns no model, no data and no training loop: the host calls into it.
//!
//! Status: empty. The host currently composes these ops from candle primitives
//! (see `speedrun::model::ops`); the fused kernels are the CPU-speed issue's work.
