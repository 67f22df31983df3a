//! `Tensor`: an opaque handle to a tensor the host owns. Every method is one
//! host op (`docs/plugins.md` has the contract of each); the data never leaves
//! the host. A handle made during a hook call is released when the call returns,
//! unless [`Tensor::keep`] made it state.

use crate::{link, DType, Frame, Op, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tensor(u64);

fn dims_i64(dims: &[usize]) -> Vec<i64> {
    dims.iter().map(|&d| d as i64).collect()
}

fn creation(dtype: DType, dims: &[usize]) -> Vec<i64> {
    let mut ints = Vec::with_capacity(dims.len() + 1);
    ints.push(dtype.code());
    ints.extend(dims.iter().map(|&d| d as i64));
    ints
}

/// Calls an op that answers with one tensor.
fn make(op: Op, tensors: Vec<u64>, ints: Vec<i64>, floats: Vec<f64>) -> Result<Tensor> {
    let reply = link::call(
        op,
        Frame {
            tensors,
            ints,
            floats,
            text: String::new(),
        },
    )?;
    Ok(Tensor(reply.tensor(0)?))
}

impl Tensor {
    /// The raw handle, for transports and tests.
    #[doc(hidden)]
    pub fn id(self) -> u64 {
        self.0
    }

    /// A handle from a raw id. A forged or stale id is refused by the host at
    /// its first use, so this is safe, merely pointless outside transports and tests.
    #[doc(hidden)]
    pub fn from_id(id: u64) -> Tensor {
        Tensor(id)
    }

    fn unary(self, op: Op) -> Result<Tensor> {
        make(op, vec![self.0], vec![], vec![])
    }

    fn binary(self, op: Op, rhs: &Tensor) -> Result<Tensor> {
        make(op, vec![self.0, rhs.0], vec![], vec![])
    }

    fn with_ints(self, op: Op, ints: Vec<i64>) -> Result<Tensor> {
        make(op, vec![self.0], ints, vec![])
    }

    fn with_floats(self, op: Op, floats: Vec<f64>) -> Result<Tensor> {
        make(op, vec![self.0], vec![], floats)
    }

    // --- creation ---

    pub fn zeros(dims: &[usize], dtype: DType) -> Result<Tensor> {
        make(Op::Zeros, vec![], creation(dtype, dims), vec![])
    }

    pub fn ones(dims: &[usize], dtype: DType) -> Result<Tensor> {
        make(Op::Ones, vec![], creation(dtype, dims), vec![])
    }

    pub fn full(dims: &[usize], value: f64, dtype: DType) -> Result<Tensor> {
        make(Op::Full, vec![], creation(dtype, dims), vec![value])
    }

    /// Normal samples from the host's seeded generator (in `model.init`, the
    /// parameter's own stream).
    pub fn randn(dims: &[usize], mean: f64, std: f64, dtype: DType) -> Result<Tensor> {
        make(Op::Randn, vec![], creation(dtype, dims), vec![mean, std])
    }

    pub fn uniform(dims: &[usize], lo: f64, hi: f64, dtype: DType) -> Result<Tensor> {
        make(Op::Uniform, vec![], creation(dtype, dims), vec![lo, hi])
    }

    pub fn from_values(dims: &[usize], values: &[f64], dtype: DType) -> Result<Tensor> {
        make(
            Op::FromValues,
            vec![],
            creation(dtype, dims),
            values.to_vec(),
        )
    }

    pub fn arange(n: usize, dtype: DType) -> Result<Tensor> {
        make(Op::Arange, vec![], vec![dtype.code(), n as i64], vec![])
    }

    // --- elementwise ---

    pub fn neg(&self) -> Result<Tensor> {
        self.unary(Op::Neg)
    }
    pub fn abs(&self) -> Result<Tensor> {
        self.unary(Op::Abs)
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(Op::Exp)
    }
    pub fn log(&self) -> Result<Tensor> {
        self.unary(Op::Log)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(Op::Sqrt)
    }
    pub fn sqr(&self) -> Result<Tensor> {
        self.unary(Op::Sqr)
    }
    pub fn recip(&self) -> Result<Tensor> {
        self.unary(Op::Recip)
    }
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(Op::Tanh)
    }
    /// -1, 0 or 1 by the sign of each element (0 for NaN); no gradient. Since 1.1.
    pub fn sign(&self) -> Result<Tensor> {
        self.unary(Op::Sign)
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(Op::Sigmoid)
    }
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(Op::Relu)
    }
    /// GELU, tanh form (the host's fused kernel).
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary(Op::Gelu)
    }
    /// relu(x)² (the host's fused kernel).
    pub fn relu2(&self) -> Result<Tensor> {
        self.unary(Op::Relu2)
    }
    pub fn silu(&self) -> Result<Tensor> {
        self.unary(Op::Silu)
    }
    pub fn sin(&self) -> Result<Tensor> {
        self.unary(Op::Sin)
    }
    pub fn cos(&self) -> Result<Tensor> {
        self.unary(Op::Cos)
    }
    pub fn detach(&self) -> Result<Tensor> {
        self.unary(Op::Detach)
    }
    pub fn contiguous(&self) -> Result<Tensor> {
        self.unary(Op::Contiguous)
    }

    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(Op::Add, rhs)
    }
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(Op::Sub, rhs)
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(Op::Mul, rhs)
    }
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(Op::Div, rhs)
    }
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(Op::Maximum, rhs)
    }
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(Op::Minimum, rhs)
    }

    /// `x * mul + add`.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        self.with_floats(Op::Affine, vec![mul, add])
    }
    /// `x * s`.
    pub fn scale(&self, s: f64) -> Result<Tensor> {
        self.affine(s, 0.0)
    }
    /// `x + s`.
    pub fn add_scalar(&self, s: f64) -> Result<Tensor> {
        self.affine(1.0, s)
    }
    /// `x / s`, a true division (not a multiplication by `1/s`).
    pub fn div_scalar(&self, s: f64) -> Result<Tensor> {
        self.with_floats(Op::DivScalar, vec![s])
    }
    pub fn powf(&self, e: f64) -> Result<Tensor> {
        self.with_floats(Op::PowScalar, vec![e])
    }
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Tensor> {
        self.with_floats(Op::Clamp, vec![lo, hi])
    }

    // --- reductions ---

    fn reduce(&self, op: Op, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        let mut ints = vec![keepdim as i64];
        ints.extend(dims_i64(dims));
        self.with_ints(op, ints)
    }
    /// Sum over `dims` (all when empty).
    pub fn sum(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        self.reduce(Op::Sum, dims, keepdim)
    }
    pub fn mean(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        self.reduce(Op::Mean, dims, keepdim)
    }
    pub fn max(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.reduce(Op::Max, &[dim], keepdim)
    }
    pub fn min(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.reduce(Op::Min, &[dim], keepdim)
    }
    /// L2 norm over `dims` (all when empty).
    pub fn norm(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        self.reduce(Op::Norm, dims, keepdim)
    }

    // --- shape ---

    pub fn reshape(&self, dims: &[usize]) -> Result<Tensor> {
        self.with_ints(Op::Reshape, dims_i64(dims))
    }
    pub fn transpose(&self, d1: usize, d2: usize) -> Result<Tensor> {
        self.with_ints(Op::Transpose, vec![d1 as i64, d2 as i64])
    }
    pub fn permute(&self, dims: &[usize]) -> Result<Tensor> {
        self.with_ints(Op::Permute, dims_i64(dims))
    }
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        self.with_ints(Op::Narrow, vec![dim as i64, start as i64, len as i64])
    }
    pub fn cat(xs: &[Tensor], dim: usize) -> Result<Tensor> {
        make(
            Op::Cat,
            xs.iter().map(|t| t.0).collect(),
            vec![dim as i64],
            vec![],
        )
    }
    pub fn broadcast_as(&self, dims: &[usize]) -> Result<Tensor> {
        self.with_ints(Op::BroadcastAs, dims_i64(dims))
    }
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        self.with_ints(Op::Unsqueeze, vec![dim as i64])
    }
    pub fn squeeze(&self, dim: usize) -> Result<Tensor> {
        self.with_ints(Op::Squeeze, vec![dim as i64])
    }

    // --- linear algebra, indexing ---

    /// Matrix product; leading batch dims broadcast.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(Op::Matmul, rhs)
    }
    pub fn index_select(&self, ids: &Tensor, dim: usize) -> Result<Tensor> {
        make(
            Op::IndexSelect,
            vec![self.0, ids.0],
            vec![dim as i64],
            vec![],
        )
    }
    /// Rows of this `[N, D]` table for `ids` of any shape: `[ids..., D]`.
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        self.binary(Op::Embedding, ids)
    }

    // --- fused, differentiable ---

    pub fn softmax(&self) -> Result<Tensor> {
        self.unary(Op::Softmax)
    }
    pub fn log_softmax(&self) -> Result<Tensor> {
        self.unary(Op::LogSoftmax)
    }
    /// LayerNorm over the last dim (fused kernel, with gradient).
    pub fn layer_norm(
        &self,
        gain: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        let mut tensors = vec![self.0];
        tensors.extend(gain.map(|g| g.0));
        tensors.extend(bias.map(|b| b.0));
        make(
            Op::LayerNorm,
            tensors,
            vec![gain.is_some() as i64, bias.is_some() as i64],
            vec![eps],
        )
    }
    /// RMSNorm over the last dim (fused kernel, with gradient).
    pub fn rms_norm(&self, gain: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        let mut tensors = vec![self.0];
        tensors.extend(gain.map(|g| g.0));
        make(Op::RmsNorm, tensors, vec![gain.is_some() as i64], vec![eps])
    }
    /// Causal attention on `[B, H, T, hd]`; `scale` defaults to `1/√hd`.
    pub fn causal_attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: Option<f64>,
    ) -> Result<Tensor> {
        make(
            Op::CausalAttention,
            vec![q.0, k.0, v.0],
            vec![],
            scale.into_iter().collect(),
        )
    }
    /// Causal attention of every head from a packed `[B, T, 3D]` projection (q,
    /// then k, then v, heads side by side) to `[B, T, D]`: the reference model's
    /// fused kernel.
    pub fn causal_attention_packed(&self, heads: usize) -> Result<Tensor> {
        make(
            Op::CausalAttentionPacked,
            vec![self.0],
            vec![heads as i64],
            vec![],
        )
    }
    /// `self @ w (+ b)` for `self` `[..., in]`, `w` `[in, out]`, `b` `[out]`: one
    /// fused node (the reference model's linear layers).
    pub fn linear(&self, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let mut tensors = vec![self.0, w.0];
        tensors.extend(b.map(|b| b.0));
        make(Op::Linear, tensors, vec![], vec![])
    }
    /// Rotary position embedding of `[B, H, T, hd]`.
    pub fn rotary(&self, base: f64) -> Result<Tensor> {
        self.with_floats(Op::Rotary, vec![base])
    }
    /// Muon's Newton–Schulz orthogonalisation of this 2-D matrix, one iteration per
    /// `(a, b, c)`, after dividing by `‖G‖_F · norm_scale + eps` (see
    /// [`Op::NewtonSchulz`]). The host's fused kernel; carries no gradient.
    pub fn newton_schulz(
        &self,
        coefficients: &[(f64, f64, f64)],
        norm_scale: f64,
        eps: f64,
    ) -> Result<Tensor> {
        let mut floats = vec![norm_scale, eps];
        floats.extend(coefficients.iter().flat_map(|&(a, b, c)| [a, b, c]));
        self.with_floats(Op::NewtonSchulz, floats)
    }
    /// `mask ? on_true : on_false`.
    pub fn where_cond(mask: &Tensor, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        make(
            Op::WhereCond,
            vec![mask.0, on_true.0, on_false.0],
            vec![],
            vec![],
        )
    }
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Tensor> {
        make(Op::MaskedFill, vec![self.0, mask.0], vec![], vec![value])
    }
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        self.with_ints(Op::ToDtype, vec![dtype.code()])
    }

    // --- reading back ---

    /// The value of a one-element tensor.
    pub fn to_scalar(&self) -> Result<f64> {
        link::call(Op::ToScalar, with_tensors(&[*self]))?.float(0)
    }
    pub fn dims(&self) -> Result<Vec<usize>> {
        let r = link::call(Op::Shape, with_tensors(&[*self]))?;
        (0..r.ints.len()).map(|i| r.usize(i)).collect()
    }
    pub fn dtype(&self) -> Result<DType> {
        DType::from_code(link::call(Op::DTypeOf, with_tensors(&[*self]))?.int(0)?)
    }
    pub fn elem_count(&self) -> Result<usize> {
        Ok(self.dims()?.iter().product())
    }

    // --- handles and writes ---

    /// Keeps this handle past the end of the hook call, as state (its value detached).
    pub fn keep(self) -> Result<Tensor> {
        link::call(Op::Keep, with_tensors(&[self]))?;
        Ok(self)
    }
    /// Releases a kept handle.
    pub fn release(self) -> Result<()> {
        link::call(Op::Release, with_tensors(&[self]))?;
        Ok(())
    }
    /// The token ids `[B, T]` (u32) of the forward pass in progress (forward hooks only).
    pub fn tokens() -> Result<Tensor> {
        let reply = link::call(Op::Tokens, Frame::default())?;
        Ok(Tensor(reply.tensor(0)?))
    }
    /// The document separator's id in this forward's tokens (forward hooks
    /// only): the host relabels every token through a secret permutation per
    /// run, so the id to look for is asked, never assumed. `None` when the
    /// tokenizer has no separator (the byte tracks).
    pub fn separator_token() -> Result<Option<u32>> {
        let reply = link::call(Op::SeparatorToken, Frame::default())?;
        Ok(reply.ints.first().map(|&i| i as u32))
    }
    /// A model parameter by name (forward hooks only).
    pub fn param(name: &str) -> Result<Tensor> {
        let reply = link::call(
            Op::Param,
            Frame {
                text: name.to_string(),
                ..Frame::default()
            },
        )?;
        Ok(Tensor(reply.tensor(0)?))
    }
    /// Overwrites this parameter or kept state with `value` (optimizer hooks only).
    pub fn assign(&self, value: &Tensor) -> Result<()> {
        link::call(Op::Assign, with_tensors(&[*self, *value]))?;
        Ok(())
    }
    /// The fused in-place AdamW update of this parameter (optimizer hooks only);
    /// see [`Op::AdamwUpdate`] for the formula.
    pub fn adamw_update(&self, grad: &Tensor, m: &Tensor, v: &Tensor, h: &AdamwStep) -> Result<()> {
        link::call(
            Op::AdamwUpdate,
            Frame {
                tensors: vec![self.0, grad.0, m.0, v.0],
                floats: vec![
                    h.clip,
                    h.beta1,
                    h.beta2,
                    h.eps,
                    h.step_size,
                    h.bc2_sqrt,
                    h.decay,
                ],
                ..Frame::default()
            },
        )?;
        Ok(())
    }
}

/// The scalars of one fused AdamW update (see [`Op::AdamwUpdate`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamwStep {
    /// Gradient-clip coefficient applied to the gradient first.
    pub clip: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// `lr / (1 - β1^t)`.
    pub step_size: f64,
    /// `√(1 - β2^t)`.
    pub bc2_sqrt: f64,
    /// `1 - lr · weight_decay` (1 for no decay).
    pub decay: f64,
}

/// The hyperparameters of PyTorch's AdamW after a global gradient-norm clip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamwConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this.
    pub grad_clip: f64,
}

impl AdamwConfig {
    /// Reads `beta1`, `beta2`, `eps`, `weight_decay`, `grad_clip` from a plugin's
    /// configuration (keys named like the track's `[optimizer]` take its values).
    pub fn from_config(config: &serde_json::Value, plugin: &str) -> Result<AdamwConfig> {
        let key = |k: &str| match config.get(k).and_then(|v| v.as_f64()) {
            Some(v) => Ok(v),
            None => Err(crate::Error::new(format!(
                "{plugin}: configuration key {k} must be a number"
            ))),
        };
        Ok(AdamwConfig {
            beta1: key("beta1")?,
            beta2: key("beta2")?,
            eps: key("eps")?,
            weight_decay: key("weight_decay")?,
            grad_clip: key("grad_clip")?,
        })
    }

    /// The scalars of update number `t` (1-based) at learning rate `lr`, given the
    /// step's global gradient norm; `decays` picks whether weight decay applies.
    pub fn step(&self, t: i32, lr: f64, grad_norm: f64, decays: bool) -> AdamwStep {
        let wd = if decays { self.weight_decay } else { 0.0 };
        AdamwStep {
            // PyTorch's clip_grad_norm_ coefficient.
            clip: (self.grad_clip / (grad_norm + 1e-6)).min(1.0),
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            step_size: lr / (1.0 - self.beta1.powi(t)),
            bc2_sqrt: (1.0 - self.beta2.powi(t)).sqrt(),
            decay: 1.0 - lr * wd,
        }
    }
}

/// The frame of an op on tensors alone.
pub(crate) fn with_tensors(ts: &[Tensor]) -> Frame {
    Frame {
        tensors: ts.iter().map(|t| t.0).collect(),
        ..Frame::default()
    }
}
