//! How each hook's arguments and reply are laid out in a [`Frame`]. Both sides
//! use these functions, so the layout is written once.
//!
//! | hook | arguments | reply |
//! |---|---|---|
//! | `schedule` | I = [step, total] | F = [lr_mult, momentum_mult], I = [batch_tokens] (0 or absent: the track's) |
//! | `optimizer.init` | T = params, S = JSON [ParamDecl] | — |
//! | `optimizer.step` | T = [p0, g0, p1, g1, ...], I = [step], F = [lr, momentum_mult, grad_norm] | — |
//! | `model.params` | I = model, S = JSON [ParamDecl] | S = JSON [ParamDecl] |
//! | `model.init` | I = model, S = JSON ParamDecl | T = [] or [value] |
//! | forward hooks | T = [input], I = [train, model..., extra...] | T = [output] |
//! | `model.block_input` (1.1) | T = [x, out_0, ..., out_{l-1}], I = [train, model..., l] | T = [x'] |
//!
//! `model` is [layers, width, heads, seq_len, vocab]; the forward hooks' extra
//! integers are the layer (attention, mlp, block, qkv, block_input) or [site,
//! layer] (norm: site 0 attention, 1 mlp, 2 final). Tensors are handle ids: the
//! SDK wraps them, the host looks them up in the call's table.

use crate::{bail, Frame, ModelShape, NormSite, ParamDecl, Result, ScheduleOut};

fn model_ints(m: &ModelShape) -> [i64; 5] {
    [
        m.layers as i64,
        m.width as i64,
        m.heads as i64,
        m.seq_len as i64,
        m.vocab as i64,
    ]
}

fn model_at(f: &Frame, at: usize) -> Result<ModelShape> {
    Ok(ModelShape {
        layers: f.usize(at)?,
        width: f.usize(at + 1)?,
        heads: f.usize(at + 2)?,
        seq_len: f.usize(at + 3)?,
        vocab: f.usize(at + 4)?,
    })
}

fn one_tensor(id: u64) -> Frame {
    Frame {
        tensors: vec![id],
        ..Frame::default()
    }
}

// --- schedule ---

pub fn schedule_args(step: usize, total: usize) -> Frame {
    Frame {
        ints: vec![step as i64, total as i64],
        ..Frame::default()
    }
}

pub fn read_schedule_args(f: &Frame) -> Result<(usize, usize)> {
    Ok((f.usize(0)?, f.usize(1)?))
}

pub fn schedule_reply(out: ScheduleOut) -> Frame {
    Frame {
        floats: vec![out.lr_mult, out.momentum_mult],
        ints: vec![out.batch_tokens.map_or(0, |b| b as i64)],
        ..Frame::default()
    }
}

pub fn read_schedule_reply(f: &Frame) -> Result<ScheduleOut> {
    Ok(ScheduleOut {
        lr_mult: f.float(0)?,
        momentum_mult: f.float(1)?,
        batch_tokens: match f.ints.first() {
            None | Some(0) => None,
            Some(_) => Some(f.usize(0)?),
        },
    })
}

// --- optimizer ---

pub fn optimizer_init_args(params: &[(ParamDecl, u64)]) -> Result<Frame> {
    let decls: Vec<&ParamDecl> = params.iter().map(|(d, _)| d).collect();
    Ok(Frame {
        tensors: params.iter().map(|&(_, t)| t).collect(),
        text: serde_json::to_string(&decls)?,
        ..Frame::default()
    })
}

/// Each parameter's declaration and handle, in the model's order.
pub fn read_optimizer_init_args(f: &Frame) -> Result<Vec<(ParamDecl, u64)>> {
    let decls: Vec<ParamDecl> = serde_json::from_str(&f.text)?;
    if decls.len() != f.tensors.len() {
        bail!(
            "optimizer.init: {} declarations for {} tensors",
            decls.len(),
            f.tensors.len()
        );
    }
    Ok(decls.into_iter().zip(f.tensors.iter().copied()).collect())
}

/// `optimizer.step`'s arguments: the step's numbers and (param, grad) handles.
#[derive(Debug, Clone, PartialEq)]
pub struct StepArgs {
    pub step: usize,
    pub lr: f64,
    pub momentum_mult: f64,
    pub grad_norm: f64,
    pub params_and_grads: Vec<(u64, u64)>,
}

pub fn optimizer_step_args(
    step: usize,
    lr: f64,
    momentum_mult: f64,
    grad_norm: f64,
    params_and_grads: &[(u64, u64)],
) -> Frame {
    Frame {
        tensors: params_and_grads.iter().flat_map(|&(p, g)| [p, g]).collect(),
        ints: vec![step as i64],
        floats: vec![lr, momentum_mult, grad_norm],
        text: String::new(),
    }
}

pub fn read_optimizer_step_args(f: &Frame) -> Result<StepArgs> {
    if f.tensors.len() % 2 != 0 {
        bail!(
            "optimizer.step: an odd number of tensors ({})",
            f.tensors.len()
        );
    }
    Ok(StepArgs {
        step: f.usize(0)?,
        lr: f.float(0)?,
        momentum_mult: f.float(1)?,
        grad_norm: f.float(2)?,
        params_and_grads: f.tensors.chunks(2).map(|c| (c[0], c[1])).collect(),
    })
}

// --- model.params, model.init ---

pub fn params_args(model: &ModelShape, declared: &[ParamDecl]) -> Result<Frame> {
    Ok(Frame {
        ints: model_ints(model).to_vec(),
        text: serde_json::to_string(declared)?,
        ..Frame::default()
    })
}

pub fn read_params_args(f: &Frame) -> Result<(ModelShape, Vec<ParamDecl>)> {
    Ok((model_at(f, 0)?, serde_json::from_str(&f.text)?))
}

pub fn params_reply(decls: &[ParamDecl]) -> Result<Frame> {
    Ok(Frame {
        text: serde_json::to_string(decls)?,
        ..Frame::default()
    })
}

pub fn read_params_reply(f: &Frame) -> Result<Vec<ParamDecl>> {
    Ok(serde_json::from_str(&f.text)?)
}

pub fn init_args(model: &ModelShape, p: &ParamDecl) -> Result<Frame> {
    Ok(Frame {
        ints: model_ints(model).to_vec(),
        text: serde_json::to_string(p)?,
        ..Frame::default()
    })
}

pub fn read_init_args(f: &Frame) -> Result<(ModelShape, ParamDecl)> {
    Ok((model_at(f, 0)?, serde_json::from_str(&f.text)?))
}

pub fn init_reply(value: Option<u64>) -> Frame {
    value.map(one_tensor).unwrap_or_default()
}

/// The handle a `model.init` plugin answered with, if any.
pub fn read_init_reply(f: &Frame) -> Option<u64> {
    f.tensors.first().copied()
}

// --- forward hooks ---

pub fn forward_args(train: bool, model: &ModelShape, inputs: &[u64], extra: &[i64]) -> Frame {
    let mut ints = vec![train as i64];
    ints.extend(model_ints(model));
    ints.extend_from_slice(extra);
    Frame {
        tensors: inputs.to_vec(),
        ints,
        ..Frame::default()
    }
}

/// A forward hook call's arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardArgs {
    /// False while the host validates (eval mode).
    pub train: bool,
    pub model: ModelShape,
    /// The input first; `model.block_input` has the earlier blocks' outputs after it.
    pub inputs: Vec<u64>,
    pub extra: Vec<i64>,
}

pub fn read_forward_args(f: &Frame) -> Result<ForwardArgs> {
    f.tensor(0)?;
    Ok(ForwardArgs {
        train: f.int(0)? != 0,
        model: model_at(f, 1)?,
        inputs: f.tensors.clone(),
        extra: f.ints[6..].to_vec(),
    })
}

pub fn norm_site_ints(site: NormSite) -> [i64; 2] {
    match site {
        NormSite::Attention(l) => [0, l as i64],
        NormSite::Mlp(l) => [1, l as i64],
        NormSite::Final => [2, 0],
    }
}

pub fn read_norm_site(extra: &[i64]) -> Result<NormSite> {
    let layer = || {
        extra
            .get(1)
            .map(|&l| l as usize)
            .ok_or("norm site without a layer")
    };
    Ok(match extra.first() {
        Some(0) => NormSite::Attention(layer()?),
        Some(1) => NormSite::Mlp(layer()?),
        Some(2) => NormSite::Final,
        other => bail!("unknown norm site {other:?}"),
    })
}

pub fn read_layer(extra: &[i64]) -> Result<usize> {
    match extra.first() {
        Some(&l) if l >= 0 => Ok(l as usize),
        _ => bail!("forward hook call without a layer index"),
    }
}

pub fn tensor_reply(id: u64) -> Frame {
    one_tensor(id)
}

pub fn read_tensor_reply(f: &Frame) -> Result<u64> {
    f.tensor(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_args_round_trip() {
        let m = ModelShape {
            layers: 4,
            width: 256,
            heads: 4,
            seq_len: 128,
            vocab: 256,
        };
        let mut extra = norm_site_ints(NormSite::Mlp(3)).to_vec();
        extra.push(9);
        let f = forward_args(true, &m, &[42, 7], &extra);
        let a = read_forward_args(&f).unwrap();
        assert!(a.train);
        assert_eq!(a.model, m);
        assert_eq!(a.inputs, vec![42, 7]);
        assert_eq!(read_norm_site(&a.extra).unwrap(), NormSite::Mlp(3));
        assert!(read_forward_args(&forward_args(false, &m, &[], &[])).is_err());
    }

    #[test]
    fn optimizer_step_round_trip() {
        let f = optimizer_step_args(7, 0.01, 0.9, 2.5, &[(1, 2), (3, 4)]);
        let s = read_optimizer_step_args(&f).unwrap();
        assert_eq!(
            (s.step, s.lr, s.momentum_mult, s.grad_norm),
            (7, 0.01, 0.9, 2.5)
        );
        assert_eq!(s.params_and_grads, vec![(1, 2), (3, 4)]);
        // A parameter without its gradient is refused, not paired off wrongly.
        let mut odd = f.clone();
        odd.tensors.pop();
        let e = read_optimizer_step_args(&odd).unwrap_err().to_string();
        assert!(e.contains("odd number of tensors (3)"), "{e}");
    }
}
