//! The plugin side of a hook call: decode the arguments, call the trait method,
//! encode the reply. One function per hook family, named as in
//! [`crate::export_plugin!`]'s `hooks: [...]` list; each answers `None` for a
//! hook outside its family.

use crate::traits::*;
use crate::{wire, Frame, HookPoint, Result};

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
            p.init(&wire::read_optimizer_init_args(args)?)?;
            Ok(Frame::default())
        })()),
        HookPoint::OptimizerStep => Some((|| {
            p.step(&wire::read_optimizer_step_args(args)?)?;
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
        Ok(wire::init_reply(p.init(&decl, &model)?))
    })
}

macro_rules! forward_family {
    ($fn_name:ident, $trait:ident, $hook:ident, |$p:ident, $cx:ident, $x:ident, $extra:ident| $call:expr) => {
        pub fn $fn_name<T: $trait>($p: &mut T, hook: HookPoint, args: &Frame) -> Answer {
            (hook == HookPoint::$hook).then(|| {
                let ($cx, $x, $extra) = wire::read_forward_args(args)?;
                let _ = &$extra;
                Ok(wire::tensor_reply($call?))
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
        _ => &[],
    }
}
