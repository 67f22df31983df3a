//! The host's ops: the only way a plugin computes. Each has a stable code and
//! name (telemetry and policies use the name) and a class that says in which
//! hooks it may be called. Argument layout in the op's [`crate::Frame`] is
//! written next to each; `T` tensors, `I` integers, `F` floats, `S` text.
//! Every op answers with a frame or an error, never a crash.

use crate::{bail, HookPoint, Result};

/// Which hooks may call an op (the built-in contract; a policy may narrow it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    /// Reads and creates tensors: any hook that may call ops.
    Compute,
    /// Writes a parameter or kept state in place: `optimizer.*` only.
    Write,
    /// Reads a model parameter by name: the forward hooks only.
    ParamRead,
    /// Keeps a handle past its hook call: `optimizer.*` only, since forward
    /// hooks are pure (their instance is reset before every call).
    State,
}

macro_rules! ops {
    ($($(#[doc = $doc:literal])* $variant:ident = $code:literal, $name:literal, $class:ident;)*) => {
        /// A host op.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Op {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Op {
            pub const ALL: &'static [Op] = &[$(Op::$variant,)*];

            pub fn code(self) -> u32 {
                match self { $(Op::$variant => $code,)* }
            }

            pub fn name(self) -> &'static str {
                match self { $(Op::$variant => $name,)* }
            }

            pub fn class(self) -> OpClass {
                match self { $(Op::$variant => OpClass::$class,)* }
            }

            pub fn from_code(code: u32) -> Result<Op> {
                match code {
                    $($code => Ok(Op::$variant),)*
                    _ => bail!("unknown op code {code}"),
                }
            }

            pub fn from_name(name: &str) -> Option<Op> {
                match name {
                    $($name => Some(Op::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

ops! {
    // --- creation; I = [dtype, shape...] ---
    /// Zeros. I = [dtype, dims...].
    Zeros = 1, "zeros", Compute;
    /// Ones. I = [dtype, dims...].
    Ones = 2, "ones", Compute;
    /// A constant. I = [dtype, dims...], F = [value].
    Full = 3, "full", Compute;
    /// Normal samples from the host's seeded generator. I = [dtype, dims...], F = [mean, std].
    Randn = 4, "randn", Compute;
    /// Uniform samples in [lo, hi) from the host's seeded generator. I = [dtype, dims...], F = [lo, hi].
    Uniform = 5, "uniform", Compute;
    /// A small tensor from values. I = [dtype, dims...], F = values.
    FromValues = 6, "from_values", Compute;
    /// 0, 1, ..., n-1. I = [dtype, n].
    Arange = 7, "arange", Compute;

    // --- elementwise unary; T = [x] ---
    Neg = 10, "neg", Compute;
    Abs = 11, "abs", Compute;
    Exp = 12, "exp", Compute;
    Log = 13, "log", Compute;
    Sqrt = 14, "sqrt", Compute;
    Sqr = 15, "sqr", Compute;
    Recip = 16, "recip", Compute;
    Tanh = 17, "tanh", Compute;
    Sigmoid = 18, "sigmoid", Compute;
    Relu = 19, "relu", Compute;
    /// GELU, tanh form (fused kernel).
    Gelu = 20, "gelu", Compute;
    /// relu(x)^2 (fused kernel).
    Relu2 = 21, "relu2", Compute;
    Silu = 22, "silu", Compute;
    Sin = 23, "sin", Compute;
    Cos = 24, "cos", Compute;
    /// Cuts the gradient.
    Detach = 25, "detach", Compute;
    Contiguous = 26, "contiguous", Compute;
    /// -1, 0 or 1 by the sign of x (0 for NaN); no gradient (API 1.1, for Lion).
    Sign = 27, "sign", Compute;

    // --- elementwise binary with broadcasting; T = [a, b] ---
    Add = 30, "add", Compute;
    Sub = 31, "sub", Compute;
    Mul = 32, "mul", Compute;
    Div = 33, "div", Compute;
    Maximum = 34, "maximum", Compute;
    Minimum = 35, "minimum", Compute;

    // --- with scalars; T = [x] ---
    /// x * mul + add. F = [mul, add].
    Affine = 40, "affine", Compute;
    /// x / s, a true division. F = [s].
    DivScalar = 41, "div_scalar", Compute;
    /// x ^ e. F = [e].
    PowScalar = 42, "pow_scalar", Compute;
    /// Clamp to [lo, hi]. F = [lo, hi].
    Clamp = 43, "clamp", Compute;

    // --- reductions; T = [x], I = [keepdim (0/1), dims...]; no dims = all ---
    Sum = 50, "sum", Compute;
    Mean = 51, "mean", Compute;
    /// Over one dim. I = [keepdim, dim].
    Max = 52, "max", Compute;
    /// Over one dim. I = [keepdim, dim].
    Min = 53, "min", Compute;
    /// L2 norm over dims (all when none).
    Norm = 54, "norm", Compute;

    // --- shape; T = [x] ---
    /// I = [dims...].
    Reshape = 60, "reshape", Compute;
    /// I = [d1, d2].
    Transpose = 61, "transpose", Compute;
    /// I = [dims...].
    Permute = 62, "permute", Compute;
    /// I = [dim, start, len].
    Narrow = 63, "narrow", Compute;
    /// T = [xs...], I = [dim].
    Cat = 64, "cat", Compute;
    /// I = [dims...].
    BroadcastAs = 65, "broadcast_as", Compute;
    /// I = [dim].
    Unsqueeze = 66, "unsqueeze", Compute;
    /// I = [dim].
    Squeeze = 67, "squeeze", Compute;

    // --- linear algebra and indexing ---
    /// Batched matmul with broadcasting of the batch dims. T = [a, b].
    Matmul = 70, "matmul", Compute;
    /// T = [x, ids (u32)], I = [dim].
    IndexSelect = 71, "index_select", Compute;
    /// Rows of a table: T = [table [N, D], ids (u32) any shape] → [ids..., D].
    Embedding = 72, "embedding", Compute;
    /// x @ w (+ b) for x [..., in], w [in, out], b [out]: one fused autograd node.
    /// T = [x, w, b?].
    Linear = 73, "linear", Compute;

    // --- fused, differentiable ---
    /// Over the last dim. T = [x].
    Softmax = 80, "softmax", Compute;
    /// Over the last dim. T = [x].
    LogSoftmax = 81, "log_softmax", Compute;
    /// Over the last dim. T = [x, gain?, bias?], I = [has_gain, has_bias], F = [eps].
    LayerNorm = 82, "layer_norm", Compute;
    /// Over the last dim. T = [x, gain?], I = [has_gain], F = [eps].
    RmsNorm = 83, "rms_norm", Compute;
    /// softmax(q kᵀ · scale + causal mask) v on [B, H, T, hd]. T = [q, k, v], F = [scale] (default 1/√hd).
    CausalAttention = 84, "causal_attention", Compute;
    /// Rotary position embedding on [B, H, T, hd] (hd even, rotate-half form). T = [x], F = [base].
    Rotary = 85, "rotary", Compute;
    /// mask ? a : b. T = [mask (u8), a, b].
    WhereCond = 86, "where_cond", Compute;
    /// x where mask is 0, value where it is not. T = [x, mask (u8)], F = [value].
    MaskedFill = 87, "masked_fill", Compute;
    /// I = [dtype].
    ToDtype = 88, "to_dtype", Compute;
    /// Muon's Newton–Schulz orthogonalisation of a 2-D f32 matrix G, on the gemm
    /// path, no gradient: X = G/(‖G‖_F·s + ε) (Gᵀ when G is tall), then per
    /// (a, b, c): X ← aX + (b·XXᵀ + c·(XXᵀ)²)X. T = [g], F = [s, ε, a1, b1, c1, a2, ...].
    NewtonSchulz = 89, "newton_schulz", Compute;
    /// Causal multi-head attention from a packed [B, T, 3D] projection (every
    /// head's q, then k, then v) to [B, T, D], scale 1/√hd, one fused node (the
    /// reference model's path). T = [qkv], I = [heads].
    CausalAttentionPacked = 93, "causal_attention_packed", Compute;

    // --- reading back ---
    /// A one-element tensor's value. T = [x] → F = [value].
    ToScalar = 90, "to_scalar", Compute;
    /// T = [x] → I = [dims...].
    Shape = 91, "shape", Compute;
    /// T = [x] → I = [dtype].
    DTypeOf = 92, "dtype", Compute;

    // --- handles ---
    /// Keeps a handle past the end of the hook call (state). T = [x]; the value is detached.
    Keep = 100, "keep", State;
    /// Releases a handle now. T = [x].
    Release = 101, "release", Compute;

    // --- parameters ---
    /// A model parameter by name, for reading in a forward hook. S = name.
    Param = 110, "param", ParamRead;
    /// Overwrites a parameter or kept state with a value of the same shape and dtype. T = [target, value].
    Assign = 111, "assign", Write;
    /// PyTorch's AdamW update of one parameter, in place, fused:
    /// g' = g·clip; m += (1-β1)(g'-m); v = β2 v + (1-β2) g'²;
    /// p = p·decay - step_size · m / (√v / bc2_sqrt + eps).
    /// T = [param, grad, m (kept), v (kept)], F = [clip, beta1, beta2, eps, step_size, bc2_sqrt, decay].
    AdamwUpdate = 112, "adamw_update", Write;
    /// The token ids `[B, T]` (u32) of the forward pass this hook call is part
    /// of (value embeddings read them in `model.attention`). → T = [ids].
    Tokens = 113, "tokens", ParamRead;
    /// The document separator's id as this forward's tokens spell it (under
    /// the run's secret vocabulary permutation), or none. → I = [id] or [].
    SeparatorToken = 114, "separator_token", ParamRead;
}

impl Op {
    /// Whether the built-in contract lets `hook` call this op.
    pub fn allowed_in(self, hook: HookPoint) -> bool {
        use HookPoint::*;
        match hook {
            // Pure functions of their arguments, or declarations: no tensors.
            Schedule | ModelParams => false,
            // State starts from zeros or constants: nothing the plugin brings in
            // (no values, no draws it could tune), and no parameter writes yet.
            OptimizerInit => {
                matches!(self.class(), OpClass::Compute | OpClass::State)
                    && !matches!(self, Op::FromValues | Op::Randn | Op::Uniform | Op::Arange)
            }
            OptimizerStep => self.class() != OpClass::ParamRead,
            // Declarative: one constant or one distribution of the host's seeded
            // generator per parameter, nothing composed from plugin values.
            ModelInit => matches!(
                self,
                Op::Zeros
                    | Op::Ones
                    | Op::Full
                    | Op::Randn
                    | Op::Uniform
                    | Op::Shape
                    | Op::DTypeOf
                    | Op::Release
            ),
            ModelEmbed | ModelBlock | ModelAttention | ModelMlp | ModelNorm | ModelHead
            | ModelForward | ModelBlockInput | ModelQkv | ModelLogits => {
                matches!(self.class(), OpClass::Compute | OpClass::ParamRead)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_are_unique_and_round_trip() {
        let mut codes = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for &op in Op::ALL {
            assert!(codes.insert(op.code()), "duplicate code {}", op.code());
            assert!(names.insert(op.name()), "duplicate name {}", op.name());
            assert_eq!(Op::from_code(op.code()).unwrap(), op);
            assert_eq!(Op::from_name(op.name()), Some(op));
        }
        assert!(Op::from_code(9999).is_err());
    }

    #[test]
    fn writes_only_in_the_optimizer_and_params_only_in_forward_hooks() {
        assert!(Op::Assign.allowed_in(HookPoint::OptimizerStep));
        assert!(!Op::Assign.allowed_in(HookPoint::ModelMlp));
        assert!(!Op::AdamwUpdate.allowed_in(HookPoint::ModelInit));
        assert!(Op::Param.allowed_in(HookPoint::ModelMlp));
        assert!(!Op::Param.allowed_in(HookPoint::OptimizerStep));
        assert!(!Op::Add.allowed_in(HookPoint::Schedule));
        assert!(Op::Randn.allowed_in(HookPoint::ModelInit));
    }

    #[test]
    fn init_is_declarative_and_forward_hooks_keep_nothing() {
        // model.init: a constant or a seeded distribution, nothing composed.
        for op in [
            Op::FromValues,
            Op::Cat,
            Op::Add,
            Op::Affine,
            Op::Narrow,
            Op::Arange,
        ] {
            assert!(!op.allowed_in(HookPoint::ModelInit), "{op:?}");
        }
        for op in [Op::Zeros, Op::Ones, Op::Full, Op::Randn, Op::Uniform] {
            assert!(op.allowed_in(HookPoint::ModelInit), "{op:?}");
        }
        // optimizer.init: state from zeros and constants, no writes.
        for op in [
            Op::FromValues,
            Op::Randn,
            Op::Uniform,
            Op::Assign,
            Op::AdamwUpdate,
        ] {
            assert!(!op.allowed_in(HookPoint::OptimizerInit), "{op:?}");
        }
        assert!(Op::Keep.allowed_in(HookPoint::OptimizerInit));
        assert!(Op::Zeros.allowed_in(HookPoint::OptimizerInit));
        // Forward hooks are pure: no kept handles.
        for h in [
            HookPoint::ModelAttention,
            HookPoint::ModelHead,
            HookPoint::ModelForward,
        ] {
            assert!(!Op::Keep.allowed_in(h));
            assert!(Op::Tokens.allowed_in(h));
        }
        assert!(Op::Keep.allowed_in(HookPoint::OptimizerStep));
    }
}
