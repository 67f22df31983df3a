//! The host side of every plugin op: resolve handles, check the hook's contract,
//! run the op on candle tensors (the fused kernels where there is one), answer
//! with new handles. An op never panics on plugin input: every bad argument is
//! an error naming it.
//!
//! Over 500 lines on purpose: `execute` is one `match` over the op table
//! (`speedrun_plugin_abi::Op`), an arm per op, so that each op's argument
//! checks sit beside its kernel call and a reviewer reads the whole contract
//! in one place; the shared checks are the helpers below it.

use super::call_tape::CallTape;
use super::handles::{HandleTable, Held};
use crate::model::ops as model_ops;
use crate::model::params::ParamStore;
use crate::verify::{Check, Violation};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use speedrun_plugin_abi::{self as api, Frame, HookPoint, Op, OpClass};

/// The most elements one creation op may make (16 GiB of f32 would end the host).
const MAX_CREATE_ELEMS: usize = 1 << 28;

/// What an op may touch during one hook call.
pub struct OpEnv<'a> {
    pub hook: HookPoint,
    /// The policy's allow-list for this hook and the file it comes from, if it narrows the contract.
    pub allow: Option<(&'a [Op], &'a str)>,
    pub table: &'a mut HandleTable,
    /// The model's parameters, readable by name in forward hooks.
    pub params: Option<&'a ParamStore>,
    /// The forward pass's token ids, in forward hooks.
    pub tokens: Option<&'a Tensor>,
    /// The seeded stream `randn` / `uniform` draw from.
    pub rng: &'a mut ChaCha8Rng,
    pub device: &'a Device,
    /// The dtype of products (matmul, linear, attention, Newton–Schulz): the track's.
    pub precision: speedrun_kernels::Precision,
    /// The host is validating: no writes, no kept handles.
    pub eval: bool,
    /// The hook call's own tape, when the host runs its backward (training on the CPU).
    pub tape: Option<&'a mut CallTape>,
    /// Refusals recorded for the verdict, whether or not the plugin passes the error on.
    pub violations: &'a mut Vec<Violation>,
    /// The document separator's id as this forward's tokens spell it.
    pub separator: Option<u32>,
    /// Elements this plugin made from its own constants so far in the run.
    pub literal_elements: &'a mut u64,
    pub max_literal_elements: u64,
}

impl OpEnv<'_> {
    /// Records a refused op for the verdict and returns the error the plugin sees.
    fn refuse(&mut self, check: Check, detail: String) -> anyhow::Error {
        self.violations.push(Violation::new(check, detail.clone()));
        anyhow::anyhow!("{detail}")
    }
}

pub fn to_candle(d: api::DType) -> DType {
    match d {
        api::DType::F32 => DType::F32,
        api::DType::F64 => DType::F64,
        api::DType::U32 => DType::U32,
        api::DType::U8 => DType::U8,
        api::DType::I64 => DType::I64,
    }
}

pub fn from_candle(d: DType) -> Result<api::DType> {
    Ok(match d {
        DType::F32 => api::DType::F32,
        DType::F64 => api::DType::F64,
        DType::U32 => api::DType::U32,
        DType::U8 => api::DType::U8,
        DType::I64 => api::DType::I64,
        other => bail!("the host holds a {other:?} tensor, which the plugin API has no dtype for"),
    })
}

fn dims(ints: &[i64]) -> Result<Vec<usize>> {
    ints.iter()
        .map(|&d| usize::try_from(d).map_err(|_| anyhow::anyhow!("dimension {d} is negative")))
        .collect()
}

/// dtype and dims of a creation op, with the size cap.
fn creation(f: &Frame) -> Result<(DType, Vec<usize>)> {
    let dtype = to_candle(api::DType::from_code(f.int(0)?)?);
    let shape = dims(&f.ints[1..])?;
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    match n {
        Some(n) if n <= MAX_CREATE_ELEMS => Ok((dtype, shape)),
        _ => {
            bail!("shape {shape:?} is larger than one op may create ({MAX_CREATE_ELEMS} elements)")
        }
    }
}

fn floats_to(values: Vec<f64>, shape: &[usize], dtype: DType, dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)?)
}

fn sample(
    n: usize,
    rng: &mut ChaCha8Rng,
    dtype: DType,
    draw: impl Fn(&mut ChaCha8Rng) -> f64,
) -> Vec<f64> {
    let _ = dtype;
    (0..n).map(|_| draw(rng)).collect()
}

/// Rotary position embedding, rotate-half form, of `x [B, H, T, hd]`.
fn same_shape(target: &Tensor, value: &Tensor, what: &str) -> Result<()> {
    if target.dims() != value.dims() || target.dtype() != value.dtype() {
        bail!(
            "{what}: the value is {:?} {:?}, the target {:?} {:?}",
            value.dtype(),
            value.dims(),
            target.dtype(),
            target.dims()
        );
    }
    Ok(())
}

/// Runs one op for a plugin. The caller counts it and names plugin and hook in errors.
pub fn execute(env: &mut OpEnv, op: Op, f: &Frame) -> Result<Frame> {
    if !op.allowed_in(env.hook) {
        return Err(env.refuse(
            Check::OpContract,
            format!(
                "op {} is not allowed in hook {} (the hook's contract)",
                op.name(),
                env.hook
            ),
        ));
    }
    // In eval mode nothing flows back into the plugin: no value read back (the
    // validation tokens would reach its memory), no write, no kept handle.
    if env.eval && (op == Op::Keep || op == Op::ToScalar || op.class() == OpClass::Write) {
        return Err(env.refuse(
            Check::EvalIsolation,
            format!(
                "op {} in hook {} while the host validates: eval mode allows no value read back, no writes and no kept handles",
                op.name(),
                env.hook
            ),
        ));
    }
    if let Some((ops, file)) = env.allow {
        if !ops.contains(&op) {
            let detail = format!(
                "op {} is not in hook {}'s allow-list (policy {file}, rule hooks.\"{}\".ops)",
                op.name(),
                env.hook,
                env.hook
            );
            return Err(env.refuse(Check::OpContract, detail));
        }
    }
    if matches!(op, Op::FromValues | Op::Full) {
        let n = creation(f)?.1.iter().product::<usize>() as u64;
        let total = *env.literal_elements + n;
        if total > env.max_literal_elements {
            let detail = format!(
                "op {} in hook {} would bring the elements made from the plugin's own constants to {total}, over the policy's inputs.max_literal_elements of {} per run",
                op.name(),
                env.hook,
                env.max_literal_elements
            );
            return Err(env.refuse(Check::PluginInputs, detail));
        }
        *env.literal_elements = total;
    }
    let dev = env.device;
    let t = |i: usize| -> Result<&Tensor> { env.table.tensor(f.tensor(i)?) };
    let float = |i: usize| f.float(i).map_err(anyhow::Error::from);
    let int = |i: usize| f.usize(i).map_err(anyhow::Error::from);

    let out: Tensor = match op {
        Op::Zeros => {
            let (dtype, shape) = creation(f)?;
            Tensor::zeros(shape, dtype, dev)?
        }
        Op::Ones => {
            let (dtype, shape) = creation(f)?;
            Tensor::ones(shape, dtype, dev)?
        }
        Op::Full => {
            let (dtype, shape) = creation(f)?;
            let n = shape.iter().product();
            floats_to(vec![float(0)?; n], &shape, dtype, dev)?
        }
        Op::Randn => {
            let (dtype, shape) = creation(f)?;
            let (mean, std) = (float(0)?, float(1)?);
            let n: usize = shape.iter().product();
            if dtype == DType::F32 {
                // f32 samples, as the reference initialisation draws them.
                let dist = Normal::new(mean as f32, std as f32)
                    .map_err(|e| anyhow::anyhow!("randn(mean {mean}, std {std}): {e}"))?;
                let v: Vec<f32> = (0..n).map(|_| dist.sample(env.rng)).collect();
                Tensor::from_vec(v, shape, dev)?
            } else {
                let dist = Normal::new(mean, std)
                    .map_err(|e| anyhow::anyhow!("randn(mean {mean}, std {std}): {e}"))?;
                floats_to(
                    sample(n, env.rng, dtype, |r| dist.sample(r)),
                    &shape,
                    dtype,
                    dev,
                )?
            }
        }
        Op::Uniform => {
            let (dtype, shape) = creation(f)?;
            let (lo, hi) = (float(0)?, float(1)?);
            let dist =
                Uniform::new(lo, hi).map_err(|e| anyhow::anyhow!("uniform({lo}, {hi}): {e}"))?;
            let n = shape.iter().product();
            floats_to(
                sample(n, env.rng, dtype, |r| dist.sample(r)),
                &shape,
                dtype,
                dev,
            )?
        }
        Op::FromValues => {
            let (dtype, shape) = creation(f)?;
            let n: usize = shape.iter().product();
            if n != f.floats.len() {
                bail!(
                    "from_values: {} values for shape {shape:?} ({n} elements)",
                    f.floats.len()
                );
            }
            floats_to(f.floats.clone(), &shape, dtype, dev)?
        }
        Op::Arange => {
            let dtype = to_candle(api::DType::from_code(f.int(0)?)?);
            let n = int(1)?;
            if n > MAX_CREATE_ELEMS {
                bail!("arange({n}) is larger than one op may create");
            }
            Tensor::arange(0u32, n as u32, dev)?.to_dtype(dtype)?
        }

        // Ops that answer without a new tensor.
        Op::ToScalar => {
            let x = t(0)?;
            if x.elem_count() != 1 {
                bail!(
                    "to_scalar of a tensor with {} elements (shape {:?})",
                    x.elem_count(),
                    x.dims()
                );
            }
            let v = x.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0];
            return Ok(Frame {
                floats: vec![v],
                ..Frame::default()
            });
        }
        Op::Shape => {
            return Ok(Frame {
                ints: t(0)?.dims().iter().map(|&d| d as i64).collect(),
                ..Frame::default()
            })
        }
        Op::DTypeOf => {
            return Ok(Frame {
                ints: vec![from_candle(t(0)?.dtype())?.code()],
                ..Frame::default()
            })
        }
        Op::SeparatorToken => {
            return Ok(Frame {
                ints: env.separator.iter().map(|&s| s as i64).collect(),
                ..Frame::default()
            })
        }
        Op::Keep => {
            env.table.keep(f.tensor(0)?)?;
            return Ok(Frame::default());
        }
        Op::Release => {
            env.table.release(f.tensor(0)?)?;
            return Ok(Frame::default());
        }
        Op::Param => {
            let Some(params) = env.params else {
                bail!("no model parameters are readable in hook {}", env.hook);
            };
            let p = params.get(&f.text)?;
            match env.tape.as_deref_mut() {
                // On the tape a parameter is a leaf whose gradient the tape sends to the model's.
                Some(tape) => tape.leaf(p),
                None => p.clone(),
            }
        }
        Op::Tokens => match env.tokens {
            Some(t) => t.clone(),
            None => bail!("no token ids are readable in hook {}", env.hook),
        },
        Op::Assign => {
            let (target, value) = (f.tensor(0)?, f.tensor(1)?);
            let value = env.table.tensor(value)?.clone();
            match env.table.get(target)?.clone() {
                Held::Param { var, name } => {
                    same_shape(var.as_tensor(), &value, &format!("assign to {name}"))?;
                    var.set(&value.detach())?;
                }
                Held::State(old) => {
                    same_shape(&old, &value, "assign to state")?;
                    env.table
                        .replace(target, Held::State(value.detach().copy()?))?;
                }
                Held::Scoped(_) => {
                    bail!("assign: the target {target:#x} is neither a parameter nor kept state")
                }
            }
            return Ok(Frame::default());
        }
        Op::AdamwUpdate => {
            let Held::Param { var, name } = env.table.get(f.tensor(0)?)?.clone() else {
                bail!("adamw_update: the first tensor must be a parameter handed to the optimizer");
            };
            let grad = t(1)?.clone();
            let state = |i: usize| -> Result<Tensor> {
                match env.table.get(f.tensor(i)?)? {
                    Held::State(s) => Ok(s.clone()),
                    _ => bail!(
                        "adamw_update: moment #{} must be kept state (Tensor::keep)",
                        i - 1
                    ),
                }
            };
            let (m, v) = (state(2)?, state(3)?);
            let h = speedrun_kernels::AdamwStep {
                clip: float(0)? as f32,
                beta1: float(1)? as f32,
                beta2: float(2)? as f32,
                eps: float(3)? as f32,
                step_size: float(4)? as f32,
                bc2_sqrt: float(5)? as f32,
                decay: float(6)? as f32,
            };
            speedrun_kernels::adamw_update(var.as_tensor(), &grad, &m, &v, &h)
                .with_context(|| format!("updating {name}"))?;
            return Ok(Frame::default());
        }
        _ => {
            let ts = f
                .tensors
                .iter()
                .map(|&h| env.table.tensor(h).cloned())
                .collect::<Result<Vec<_>>>()?;
            match env.tape.as_deref_mut() {
                Some(tape) => tape.run(op, ts, f)?,
                None => compute(op, &ts, f, env.precision)?,
            }
        }
    };
    Ok(api::wire::tensor_reply(env.table.scoped(out)?))
}

/// The ops that compute a tensor from tensors alone: what `execute` runs
/// after resolving the handles, and what the call tape re-runs under candle's
/// autograd for an op it has no rule of its own for.
pub(super) fn compute(
    op: Op,
    ts: &[Tensor],
    f: &Frame,
    precision: speedrun_kernels::Precision,
) -> Result<Tensor> {
    let t = |i: usize| -> Result<&Tensor> {
        ts.get(i)
            .ok_or_else(|| anyhow::anyhow!("frame has {} tensors, wanted #{i}", ts.len()))
    };
    let float = |i: usize| f.float(i).map_err(anyhow::Error::from);
    let int = |i: usize| f.usize(i).map_err(anyhow::Error::from);
    Ok(match op {
        Op::Neg => t(0)?.neg()?,
        Op::Abs => t(0)?.abs()?,
        Op::Sign => t(0)?.sign()?,
        Op::Exp => t(0)?.exp()?,
        Op::Log => t(0)?.log()?,
        Op::Sqrt => t(0)?.sqrt()?,
        Op::Sqr => t(0)?.sqr()?,
        Op::Recip => t(0)?.recip()?,
        Op::Tanh => t(0)?.tanh()?,
        Op::Sigmoid => (t(0)?.neg()?.exp()? + 1.0)?.recip()?,
        Op::Relu => t(0)?.relu()?,
        Op::Gelu => speedrun_kernels::gelu(t(0)?)?,
        Op::Relu2 => speedrun_kernels::relu2(t(0)?)?,
        Op::Silu => t(0)?.silu()?,
        Op::Sin => t(0)?.sin()?,
        Op::Cos => t(0)?.cos()?,
        // A new tensor over the same storage: candle's `detach` of a tensor it
        // does not track answers that tensor itself, which the call tape
        // could not tell from its input.
        Op::Detach => {
            let x = t(0)?.detach();
            x.broadcast_as(x.shape())?
        }
        Op::Contiguous => t(0)?.contiguous()?,
        Op::Add => t(0)?.broadcast_add(t(1)?)?,
        Op::Sub => t(0)?.broadcast_sub(t(1)?)?,
        Op::Mul => t(0)?.broadcast_mul(t(1)?)?,
        Op::Div => t(0)?.broadcast_div(t(1)?)?,
        Op::Maximum => t(0)?.broadcast_maximum(t(1)?)?,
        Op::Minimum => t(0)?.broadcast_minimum(t(1)?)?,
        Op::Affine => t(0)?.affine(float(0)?, float(1)?)?,
        Op::DivScalar => {
            let x = t(0)?;
            let s = Tensor::new(float(0)?, x.device())?.to_dtype(x.dtype())?;
            x.broadcast_div(&s)?
        }
        Op::PowScalar => t(0)?.powf(float(0)?)?,
        Op::Clamp => t(0)?.clamp(float(0)?, float(1)?)?,
        Op::Sum | Op::Mean | Op::Norm => {
            let x = t(0)?;
            let keep = f.int(0)? != 0;
            let mut ds = dims(&f.ints[1..])?;
            if ds.is_empty() {
                ds = (0..x.rank()).collect();
            }
            let x2;
            let src = if op == Op::Norm {
                x2 = x.sqr()?;
                &x2
            } else {
                x
            };
            let r = match (op, keep) {
                (Op::Mean, true) => src.mean_keepdim(ds)?,
                (Op::Mean, false) => src.mean(ds)?,
                (_, true) => src.sum_keepdim(ds)?,
                (_, false) => src.sum(ds)?,
            };
            if op == Op::Norm {
                r.sqrt()?
            } else {
                r
            }
        }
        Op::Max | Op::Min => {
            let x = t(0)?;
            let keep = f.int(0)? != 0;
            let d = int(1)?;
            match (op, keep) {
                (Op::Max, true) => x.max_keepdim(d)?,
                (Op::Max, false) => x.max(d)?,
                (_, true) => x.min_keepdim(d)?,
                (_, false) => x.min(d)?,
            }
        }
        Op::Reshape => t(0)?.reshape(dims(&f.ints)?)?,
        Op::Transpose => t(0)?.transpose(int(0)?, int(1)?)?,
        Op::Permute => t(0)?.permute(dims(&f.ints)?)?,
        Op::Narrow => t(0)?.narrow(int(0)?, int(1)?, int(2)?)?,
        Op::Cat => {
            if ts.is_empty() {
                bail!("cat of no tensors");
            }
            Tensor::cat(ts, int(0)?)?
        }
        Op::BroadcastAs => t(0)?.broadcast_as(dims(&f.ints)?)?,
        Op::Unsqueeze => t(0)?.unsqueeze(int(0)?)?,
        Op::Squeeze => t(0)?.squeeze(int(0)?)?,
        // Plugins reach operands through transposes; the gemm wants them laid out.
        Op::Matmul => precision.matmul(&t(0)?.contiguous()?, &t(1)?.contiguous()?)?,
        Op::IndexSelect => t(0)?.index_select(t(1)?, int(0)?)?,
        Op::Embedding => {
            let (table, ids) = (t(0)?, t(1)?);
            let (_, d) = table.dims2().context("embedding expects a [N, D] table")?;
            let mut shape = ids.dims().to_vec();
            shape.push(d);
            table.index_select(&ids.flatten_all()?, 0)?.reshape(shape)?
        }
        Op::Softmax => model_ops::softmax_last_dim(t(0)?)?,
        Op::LogSoftmax => model_ops::log_softmax_last_dim(t(0)?)?,
        Op::LayerNorm => {
            let (has_gain, has_bias) = (f.int(0)? != 0, f.int(1)? != 0);
            let gain = if has_gain { Some(t(1)?) } else { None };
            let bias = if has_bias {
                Some(t(1 + has_gain as usize)?)
            } else {
                None
            };
            speedrun_kernels::layer_norm(t(0)?, gain, bias, float(0)?)?
        }
        Op::RmsNorm => {
            let gain = if f.int(0)? != 0 { Some(t(1)?) } else { None };
            speedrun_kernels::rms_norm(t(0)?, gain, float(0)?)?
        }
        Op::CausalAttention => {
            // Plugins reach q, k, v through transposes and narrows: the kernels
            // want them contiguous.
            let (q, k, v) = (
                t(0)?.contiguous()?,
                t(1)?.contiguous()?,
                t(2)?.contiguous()?,
            );
            let scale = match f.floats.first() {
                Some(&scale) => scale,
                None => 1.0 / (q.dim(candle_core::D::Minus1)? as f64).sqrt(),
            };
            precision.causal_attention(&q, &k, &v, scale)?
        }
        Op::Rotary => {
            t(0)?.dims4().context("rotary expects [B, H, T, hd]")?;
            speedrun_kernels::rotary(t(0)?, float(0)?)?
        }
        Op::Linear => {
            let b = if ts.len() > 2 { Some(t(2)?) } else { None };
            precision.linear(t(0)?, t(1)?, b)?
        }
        Op::CausalAttentionPacked => {
            let heads = int(0)?;
            precision.causal_attention_packed(t(0)?, heads)?
        }
        Op::NewtonSchulz => {
            let (s, eps) = (float(0)?, float(1)?);
            let rest = &f.floats[2..];
            if !rest.len().is_multiple_of(3) {
                bail!(
                    "newton_schulz: coefficients come in (a, b, c) triples; got {} numbers",
                    rest.len()
                );
            }
            let coeffs: Vec<_> = rest
                .chunks_exact(3)
                .map(|c| (c[0] as f32, c[1] as f32, c[2] as f32))
                .collect();
            precision.newton_schulz(t(0)?, &coeffs, s as f32, eps as f32)?
        }
        Op::WhereCond => t(0)?.where_cond(t(1)?, t(2)?)?,
        Op::MaskedFill => {
            let (x, mask) = (t(0)?, t(1)?);
            let fill = Tensor::new(float(0)?, x.device())?
                .to_dtype(x.dtype())?
                .broadcast_as(x.dims())?;
            mask.broadcast_as(x.dims())?.where_cond(&fill, x)?
        }
        Op::ToDtype => t(0)?.to_dtype(to_candle(api::DType::from_code(f.int(0)?)?))?,
        other => bail!(
            "op {} is not a computation on tensors (a host bug)",
            other.name()
        ),
    })
}
