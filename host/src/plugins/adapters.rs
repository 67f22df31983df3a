//! Plugins behind the host's own seams: each adapter implements one host trait
//! (`Optimizer`, `Schedule`, the model hooks) by calling its plugin through
//! `PluginSession::call`, so the training loop cannot tell a plugin from the
//! reference.

use super::call_tape;
use super::handles::Held;
use super::session::PluginSession;
use crate::model::hooks::*;
use crate::model::params::{ParamDecl, ParamStore};
use crate::model::Model;
use crate::optim::{Grads, Optimizer, Schedule, ScheduleOut, StepInput};
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use rand_chacha::ChaCha8Rng;
use speedrun_plugin_abi::{wire, HookPoint, ModelShape};
use std::cell::RefCell;
use std::rc::Rc;

pub type Shared = Rc<RefCell<PluginSession>>;

fn session(s: &Shared) -> Result<std::cell::RefMut<'_, PluginSession>> {
    s.try_borrow_mut()
        .map_err(|_| anyhow::anyhow!("a plugin hook was re-entered while it was running"))
}

pub struct PluginOptimizer {
    pub session: Shared,
    /// The plugin's name, for the run manifest.
    pub name: String,
}

impl Optimizer for PluginOptimizer {
    fn name(&self) -> &str {
        &self.name
    }

    fn init(&mut self, params: &ParamStore) -> Result<()> {
        session(&self.session)?.call(
            HookPoint::OptimizerInit,
            None,
            None,
            |table| {
                let list = params
                    .iter()
                    .map(|p| {
                        let h = table.insert(Held::Param {
                            var: p.var.clone(),
                            name: p.spec.name.clone(),
                        })?;
                        Ok((p.spec.clone(), h))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(wire::optimizer_init_args(&list)?)
            },
            |_, _| Ok(()),
        )
    }

    fn step(&mut self, params: &ParamStore, grads: &Grads, input: &StepInput) -> Result<()> {
        session(&self.session)?.call(
            HookPoint::OptimizerStep,
            None,
            None,
            |table| {
                let pairs = params
                    .iter()
                    .zip(&grads.0)
                    .map(|(p, g)| {
                        let ph = table.insert(Held::Param {
                            var: p.var.clone(),
                            name: p.spec.name.clone(),
                        })?;
                        Ok((ph, table.scoped(g.clone())?))
                    })
                    .collect::<Result<Vec<(u64, u64)>>>()?;
                Ok(wire::optimizer_step_args(
                    input.step,
                    input.lr,
                    input.momentum_mult,
                    input.grad_norm,
                    &pairs,
                ))
            },
            |_, _| Ok(()),
        )
    }
}

pub struct PluginSchedule(pub Shared);

impl Schedule for PluginSchedule {
    fn at(&self, step: usize, total_steps: usize) -> Result<ScheduleOut> {
        session(&self.0)?.call(
            HookPoint::Schedule,
            None,
            None,
            |_| Ok(wire::schedule_args(step, total_steps)),
            |reply, _| {
                let out = wire::read_schedule_reply(reply)?;
                if !(out.lr_mult.is_finite() && out.momentum_mult.is_finite()) || out.lr_mult < 0.0
                {
                    bail!(
                        "the schedule answered lr_mult {} momentum_mult {} at step {step}",
                        out.lr_mult,
                        out.momentum_mult
                    );
                }
                Ok(out)
            },
        )
    }
}

pub struct PluginParams(pub Shared);

impl ParamsHook for PluginParams {
    fn params(&self, spec: &ModelShape, declared: Vec<ParamDecl>) -> Result<Vec<ParamDecl>> {
        session(&self.0)?.call(
            HookPoint::ModelParams,
            None,
            None,
            |_| Ok(wire::params_args(spec, &declared)?),
            |reply, _| Ok(wire::read_params_reply(reply)?),
        )
    }
}

pub struct PluginInit(pub Shared);

impl InitHook for PluginInit {
    fn init(
        &self,
        p: &ParamDecl,
        spec: &ModelShape,
        rng: &mut ChaCha8Rng,
    ) -> Result<Option<Vec<f32>>> {
        session(&self.0)?.call(
            HookPoint::ModelInit,
            None,
            Some(rng),
            |_| Ok(wire::init_args(spec, p)?),
            |reply, table| {
                let Some(h) = wire::read_init_reply(reply) else {
                    return Ok(None);
                };
                let t = table.tensor(h)?;
                if t.dims() != p.shape.as_slice() {
                    bail!(
                        "initial value of {} has shape {:?}, the parameter {:?}",
                        p.name,
                        t.dims(),
                        p.shape
                    );
                }
                Ok(Some(
                    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                ))
            },
        )
    }
}

/// Calls one forward hook: `input` in, one tensor out.
fn forward_call(
    s: &Shared,
    hook: HookPoint,
    cx: &ForwardCtx,
    input: &Tensor,
    extra: &[i64],
) -> Result<Tensor> {
    forward_call_on(s, hook, cx, &[input], extra)
}

/// Calls one forward hook on several tensors (the input first), one tensor out.
/// In training on the CPU the call goes on the host's tape (`call_tape`): the
/// plugin gets its inputs detached and the output comes back as one node.
fn forward_call_on(
    s: &Shared,
    hook: HookPoint,
    cx: &ForwardCtx,
    inputs: &[&Tensor],
    extra: &[i64],
) -> Result<Tensor> {
    let mut session = session(s)?;
    session.set_eval(!cx.train);
    session.set_tokens(cx.tokens.cloned());
    let floats = inputs.iter().filter(|t| t.dtype().is_float()).count();
    let taped = cx.train
        && call_tape::enabled()
        && floats <= call_tape::MAX_INPUTS
        && inputs.iter().all(|t| t.device().is_cpu());
    let given: Vec<Tensor> = if taped {
        let tape = session.start_tape();
        inputs.iter().map(|t| tape.input(t)).collect()
    } else {
        inputs.iter().map(|&t| t.clone()).collect()
    };
    let out = session.call(
        hook,
        Some(cx.params),
        None,
        |table| {
            let handles = given
                .iter()
                .map(|t| table.scoped(t.clone()))
                .collect::<Result<Vec<_>>>()?;
            Ok(wire::forward_args(cx.train, cx.spec, &handles, extra))
        },
        |reply, table| Ok(table.tensor(wire::read_tensor_reply(reply)?)?.clone()),
    );
    let tape = session.take_tape();
    match tape {
        Some(tape) => call_tape::finish(tape, inputs, &given, out?, cx.params.fused_grads()),
        None => out,
    }
}

/// Checks a hook's output shape, naming the hook.
fn expect_dims(hook: HookPoint, t: Tensor, want: &[usize]) -> Result<Tensor> {
    if t.dims() != want {
        bail!(
            "hook {hook} returned shape {:?}, expected {:?}",
            t.dims(),
            want
        );
    }
    Ok(t)
}

pub struct PluginForwardHooks(pub Shared);

impl EmbedHook for PluginForwardHooks {
    fn embed(&self, cx: &ForwardCtx, tokens: &Tensor) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let out = forward_call(&self.0, HookPoint::ModelEmbed, cx, tokens, &[])?;
        expect_dims(HookPoint::ModelEmbed, out, &[b, t, cx.spec.width])
    }
}

impl NormHook for PluginForwardHooks {
    fn norm(&self, cx: &ForwardCtx, site: NormSite, x: &Tensor) -> Result<Tensor> {
        let out = forward_call(
            &self.0,
            HookPoint::ModelNorm,
            cx,
            x,
            &wire::norm_site_ints(site),
        )?;
        expect_dims(HookPoint::ModelNorm, out, x.dims())
    }
}

impl AttentionHook for PluginForwardHooks {
    fn attention(
        &self,
        cx: &ForwardCtx,
        _model: &Model,
        layer: usize,
        x: &Tensor,
    ) -> Result<Tensor> {
        let out = forward_call(&self.0, HookPoint::ModelAttention, cx, x, &[layer as i64])?;
        expect_dims(HookPoint::ModelAttention, out, x.dims())
    }
}

impl MlpHook for PluginForwardHooks {
    fn mlp(&self, cx: &ForwardCtx, layer: usize, x: &Tensor) -> Result<Tensor> {
        let out = forward_call(&self.0, HookPoint::ModelMlp, cx, x, &[layer as i64])?;
        expect_dims(HookPoint::ModelMlp, out, x.dims())
    }
}

impl BlockHook for PluginForwardHooks {
    fn block(&self, cx: &ForwardCtx, _model: &Model, layer: usize, x: &Tensor) -> Result<Tensor> {
        let out = forward_call(&self.0, HookPoint::ModelBlock, cx, x, &[layer as i64])?;
        expect_dims(HookPoint::ModelBlock, out, x.dims())
    }
}

impl HeadHook for PluginForwardHooks {
    fn head(&self, cx: &ForwardCtx, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let out = forward_call(&self.0, HookPoint::ModelHead, cx, x, &[])?;
        crate::verify::whole_vocabulary(
            &format!("hook {}", HookPoint::ModelHead),
            out.dims(),
            &[b, t, cx.spec.vocab],
        )?;
        Ok(out)
    }
}

impl ForwardHook for PluginForwardHooks {
    fn forward(&self, cx: &ForwardCtx, _model: &Model, tokens: &Tensor) -> Result<Tensor> {
        forward_call(&self.0, HookPoint::ModelForward, cx, tokens, &[])
    }
}

impl BlockInputHook for PluginForwardHooks {
    fn block_input(
        &self,
        cx: &ForwardCtx,
        layer: usize,
        x: &Tensor,
        earlier: &[Tensor],
    ) -> Result<Tensor> {
        let inputs: Vec<&Tensor> = std::iter::once(x).chain(earlier).collect();
        let out = forward_call_on(
            &self.0,
            HookPoint::ModelBlockInput,
            cx,
            &inputs,
            &[layer as i64],
        )?;
        expect_dims(HookPoint::ModelBlockInput, out, x.dims())
    }
}

impl QkvHook for PluginForwardHooks {
    fn qkv(&self, cx: &ForwardCtx, layer: usize, qkv: &Tensor) -> Result<Tensor> {
        let out = forward_call(&self.0, HookPoint::ModelQkv, cx, qkv, &[layer as i64])?;
        expect_dims(HookPoint::ModelQkv, out, qkv.dims())
    }
}

impl LogitsHook for PluginForwardHooks {
    fn logits(&self, cx: &ForwardCtx, logits: &Tensor) -> Result<Tensor> {
        let out = forward_call(&self.0, HookPoint::ModelLogits, cx, logits, &[])?;
        expect_dims(HookPoint::ModelLogits, out, logits.dims())
    }
}
