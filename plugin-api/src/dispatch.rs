//! The plugin side of a hook call: decode the arguments, call the trait method,
//! encode the reply. One function per hook family, named as in
//! [`crate::export_plugin!`]'s `hooks: [...]` list; each answers `None` for a
//! hook outside its family.

use crate::traits::*;
use crate::{ForwardCtx, Frame, HookPoint, OptimizerStep, ParamGrad, ParamRef, Result, Tensor};
use speedrun_plugin_abi::wire;

pub type Answer = Option<Result<Frame>>;

pub fn schedule<T: Schedule>(p: &mut T, hook: HookPoint, args: &Frame) -> Answer {
    (hook == HookPoint::Schedule).then(|| {
        let (step, total) = wire::read_schedule_args(args)?;
        Ok(wire::schedule_reply(p.at(step, total)?))
    })
}

pub fn optimizer<T: Optimizer>(p: &mut T, hook: HookPoint, args: &Frame) -> Answer {
    match hook {
        HookPoint::OptimizerInit => Some((|| {
            let params: Vec<ParamRef> = wire::read_optimizer_init_args(args)?
                .into_iter()
                .map(|(d, t)| ParamRef {
                    name: d.name,
                    kind: d.kind,
                    dims: d.shape,
                    tensor: Tensor::from_id(t),
                })
                .collect();
            p.init(&params)?;
            Ok(Frame::default())
        })()),
        HookPoint::OptimizerStep => Some((|| {
            let a = wire::read_optimizer_step_args(args)?;
            p.step(&OptimizerStep {
                step: a.step,
                lr: a.lr,
                momentum_mult: a.momentum_mult,
                grad_norm: a.grad_norm,
                params: a
                    .params_and_grads
                    .into_iter()
                    .map(|(p, g)| ParamGrad {
                        param: Tensor::from_id(p),
                        grad: Tensor::from_id(g),
                    })
                    .collect(),
            })?;
            Ok(Frame::default())
        })()),
        _ => None,
    }
}

pub fn params<T: Params>(p: &mut T, hook: HookPoint, args: &Frame) -> Answer {
    (hook == HookPoint::ModelParams).then(|| {
        let (model, declared) = wire::read_params_args(args)?;
        wire::params_reply(&p.params(&model, declared)?)
    })
}

pub fn init<T: Init>(p: &mut T, hook: HookPoint, args: &Frame) -> Answer {
    (hook == HookPoint::ModelInit).then(|| {
        let (model, decl) = wire::read_init_args(args)?;
        Ok(wire::init_reply(p.init(&decl, &model)?.map(Tensor::id)))
    })
}

/// A forward hook call's context, its input tensors (the first is the input)
/// and its extra integers.
fn forward_args(args: &Frame) -> Result<(ForwardCtx, Vec<Tensor>, Vec<i64>)> {
    let a = wire::read_forward_args(args)?;
    let cx = ForwardCtx {
        train: a.train,
        model: a.model,
    };
    Ok((
        cx,
        a.inputs.into_iter().map(Tensor::from_id).collect(),
        a.extra,
    ))
}

macro_rules! forward_family {
    ($fn_name:ident, $trait:ident, $hook:ident, |$p:ident, $cx:ident, $x:ident, $extra:ident| $call:expr) => {
        forward_family!(
            $fn_name,
            $trait,
            $hook,
            all | $p,
            $cx,
            inputs,
            $extra | {
                let $x = inputs[0];
                $call
            }
        );
    };
    // `all`: the call sees every input tensor, not only the first.
    ($fn_name:ident, $trait:ident, $hook:ident, all |$p:ident, $cx:ident, $inputs:ident, $extra:ident| $call:block) => {
        pub fn $fn_name<T: $trait>($p: &mut T, hook: HookPoint, args: &Frame) -> Answer {
            (hook == HookPoint::$hook).then(|| {
                let ($cx, $inputs, $extra) = forward_args(args)?;
                let _ = &$extra;
                Ok(wire::tensor_reply($call?.id()))
            })
        }
    };
}

forward_family!(embed, Embed, ModelEmbed, |p, cx, x, extra| p.embed(&cx, &x));
forward_family!(norm, Norm, ModelNorm, |p, cx, x, extra| p.norm(
    &cx,
    wire::read_norm_site(&extra)?,
    &x
));
forward_family!(attention, Attention, ModelAttention, |p, cx, x, extra| p
    .attention(&cx, wire::read_layer(&extra)?, &x));
forward_family!(mlp, Mlp, ModelMlp, |p, cx, x, extra| p.mlp(
    &cx,
    wire::read_layer(&extra)?,
    &x
));
forward_family!(block, Block, ModelBlock, |p, cx, x, extra| p.block(
    &cx,
    wire::read_layer(&extra)?,
    &x
));
forward_family!(head, Head, ModelHead, |p, cx, x, extra| p.head(&cx, &x));
forward_family!(forward, Forward, ModelForward, |p, cx, x, extra| p
    .forward(&cx, &x));
forward_family!(
    block_input,
    BlockInput,
    ModelBlockInput,
    all | p,
    cx,
    inputs,
    extra | { p.block_input(&cx, wire::read_layer(&extra)?, &inputs[0], &inputs[1..]) }
);
forward_family!(qkv, Qkv, ModelQkv, |p, cx, x, extra| p.qkv(
    &cx,
    wire::read_layer(&extra)?,
    &x
));
forward_family!(logits, Logits, ModelLogits, |p, cx, x, extra| p
    .logits(&cx, &x));

/// The hook points of each family name.
pub fn family_points(family: &str) -> &'static [HookPoint] {
    match family {
        "schedule" => &[HookPoint::Schedule],
        "optimizer" => &[HookPoint::OptimizerInit, HookPoint::OptimizerStep],
        "params" => &[HookPoint::ModelParams],
        "init" => &[HookPoint::ModelInit],
        "embed" => &[HookPoint::ModelEmbed],
        "norm" => &[HookPoint::ModelNorm],
        "attention" => &[HookPoint::ModelAttention],
        "mlp" => &[HookPoint::ModelMlp],
        "block" => &[HookPoint::ModelBlock],
        "head" => &[HookPoint::ModelHead],
        "forward" => &[HookPoint::ModelForward],
        "block_input" => &[HookPoint::ModelBlockInput],
        "qkv" => &[HookPoint::ModelQkv],
        "logits" => &[HookPoint::ModelLogits],
        _ => &[],
    }
}
