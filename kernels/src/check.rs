//! Every op on another device against its CPU kernel: the same seeded inputs on
//! both, the forward output and every input's gradient compared by relative
//! error (max |a − b| / max |b|). What `speedrun kernels check --device cuda`
//! prints; on the CPU against itself every error is zero.

use crate::{NsCoefficients, Precision};
use candle_core::{DType, Device, Result, Tensor, Var};

#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelCheck {
    pub op: String,
    pub shape: String,
    /// Relative error of the forward output.
    pub forward: f64,
    /// The largest relative error over the inputs' gradients (none for optimizer ops).
    pub backward: Option<f64>,
    pub tolerance: f64,
    pub ok: bool,
}

type OpFn = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;

fn seeded(shape: &[usize], seed: u64, scale: f32) -> Result<Tensor> {
    // A fixed LCG: no rand dependency, the same values everywhere.
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a: Vec<f32> = a.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    let b: Vec<f32> = b.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30) as f64;
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| ((x - y).abs() as f64) / scale)
        .fold(0.0, f64::max))
}

/// Forward output and the gradients of `sum(out · probe)` for every input.
fn run(f: &OpFn, inputs: &[Tensor], dev: &Device, grads: bool) -> Result<(Tensor, Vec<Tensor>)> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(dev)?))
        .collect::<Result<_>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts)?;
    if !grads {
        return Ok((y, vec![]));
    }
    let probe = seeded(y.dims(), 7, 1.0)?.to_device(dev)?;
    let store = (y.clone() * probe)?.sum_all()?.backward()?;
    let g = ts
        .iter()
        .map(|t| {
            store
                .get(t)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))
        })
        .collect::<Result<_>>()?;
    Ok((y, g))
}

fn case(
    op: &str,
    shape: &[usize],
    inputs: Vec<Tensor>,
    f: OpFn,
    grads: bool,
    tol: f64,
    dev: &Device,
) -> Result<KernelCheck> {
    let (y_cpu, g_cpu) = run(&f, &inputs, &Device::Cpu, grads)?;
    let (y_dev, g_dev) = run(&f, &inputs, dev, grads)?;
    let forward = rel_err(&y_dev, &y_cpu)?;
    let backward = if grads {
        let mut worst = 0.0f64;
        for (a, b) in g_dev.iter().zip(&g_cpu) {
            worst = worst.max(rel_err(a, b)?);
        }
        Some(worst)
    } else {
        None
    };
    Ok(KernelCheck {
        op: op.into(),
        shape: format!("{shape:?}"),
        forward,
        backward,
        tolerance: tol,
        ok: forward <= tol && backward.is_none_or(|b| b <= tol),
    })
}

/// Runs every op on `dev` and on the CPU at training-like shapes.
pub fn against_cpu(dev: &Device) -> Result<Vec<KernelCheck>> {
    let (b, t, d, heads, v) = (4, 64, 96, 4, 300);
    let x = seeded(&[b, t, d], 1, 2.0)?;
    let w = seeded(&[d], 2, 1.0)?;
    let bias = seeded(&[d], 3, 1.0)?;
    let mut out = Vec::new();
    let tol = 1e-4;
    out.push(case(
        "gelu",
        &[b, t, d],
        vec![x.clone()],
        Box::new(|i| crate::gelu(&i[0])),
        true,
        tol,
        dev,
    )?);
    out.push(case(
        "relu2",
        &[b, t, d],
        vec![x.clone()],
        Box::new(|i| crate::relu2(&i[0])),
        true,
        tol,
        dev,
    )?);
    out.push(case(
        "layer_norm",
        &[b, t, d],
        vec![x.clone(), w.clone(), bias.clone()],
        Box::new(|i| crate::layer_norm(&i[0], Some(&i[1]), Some(&i[2]), 1e-5)),
        true,
        tol,
        dev,
    )?);
    out.push(case(
        "rms_norm",
        &[b, t, d],
        vec![x.clone(), w.clone()],
        Box::new(|i| crate::rms_norm(&i[0], Some(&i[1]), 1e-6)),
        true,
        tol,
        dev,
    )?);
    out.push(case(
        "add_rows",
        &[b, t, d],
        vec![x.clone(), bias.clone()],
        Box::new(|i| crate::add_rows(&i[0], &i[1])),
        true,
        tol,
        dev,
    )?);
    let scores = seeded(&[b, heads, t, t], 4, 3.0)?;
    out.push(case(
        "causal_softmax",
        &[b, heads, t, t],
        vec![scores],
        Box::new(|i| crate::causal_softmax(&i[0], 0.125)),
        true,
        tol,
        dev,
    )?);
    let hd = d / heads;
    let q = seeded(&[b, heads, t, hd], 5, 1.0)?;
    out.push(case(
        "rotary",
        &[b, heads, t, hd],
        vec![q],
        Box::new(|i| crate::rotary(&i[0], 10000.0)),
        true,
        tol,
        dev,
    )?);
    let logits = seeded(&[b * t, v], 6, 4.0)?;
    let targets: Vec<u32> = (0..b * t).map(|i| ((i * 7919) % v) as u32).collect();
    let targets = Tensor::from_vec(targets, b * t, &Device::Cpu)?;
    let tg = targets.clone();
    out.push(case(
        "cross_entropy",
        &[b * t, v],
        vec![logits],
        Box::new(move |i| crate::cross_entropy(&i[0], &tg.to_device(i[0].device())?)),
        true,
        tol,
        dev,
    )?);
    let lw = seeded(&[d, 3 * d], 8, 0.1)?;
    let lb = seeded(&[3 * d], 9, 0.1)?;
    let qkv = seeded(&[b, t, 3 * d], 10, 1.0)?;
    let g = seeded(&[d, 4 * d], 11, 1.0)?;
    // The gemm-shaped ops in both precisions. In bf16 the device's products
    // (tensor cores) and the CPU's (f32 products of bf16 inputs) may round an
    // output element to neighbouring bf16 values: 2⁻⁸ relative, hence 1e-2.
    for (p, name, tol, ns_tol) in [
        (Precision::F32, "", tol, 1e-3),
        (Precision::Bf16, " (bf16)", 1e-2, 5e-2),
    ] {
        out.push(case(
            &format!("linear{name}"),
            &[b, t, d],
            vec![x.clone(), lw.clone(), lb.clone()],
            Box::new(move |i| p.linear(&i[0], &i[1], Some(&i[2]))),
            true,
            tol,
            dev,
        )?);
        out.push(case(
            &format!("causal_attention_packed{name}"),
            &[b, t, 3 * d],
            vec![qkv.clone()],
            Box::new(move |i| p.causal_attention_packed(&i[0], heads)),
            true,
            tol,
            dev,
        )?);
        let coeffs: Vec<NsCoefficients> = vec![(3.4445, -4.775, 2.0315); 5];
        out.push(case(
            &format!("newton_schulz{name}"),
            &[d, 4 * d],
            vec![g.clone()],
            Box::new(move |i| p.newton_schulz(&i[0], &coeffs, 1.0, 1e-7)),
            false,
            ns_tol,
            dev,
        )?);
    }
    out.push(adamw_case(dev)?);
    Ok(out)
}

/// One AdamW step on both devices, comparing the parameter and both moments.
fn adamw_case(dev: &Device) -> Result<KernelCheck> {
    let n = 10_007;
    let step = crate::AdamwStep {
        clip: 0.7,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        step_size: 1e-3,
        bc2_sqrt: 0.3,
        decay: 0.999,
    };
    let on = |d: &Device| -> Result<Vec<Tensor>> {
        let p = seeded(&[n], 12, 1.0)?.to_device(d)?;
        let g = seeded(&[n], 13, 1.0)?.to_device(d)?;
        let m = seeded(&[n], 14, 0.1)?.to_device(d)?;
        let v = seeded(&[n], 15, 0.1)?.abs()?.to_device(d)?;
        crate::adamw_update(&p, &g, &m, &v, &step)?;
        Ok(vec![p, m, v])
    };
    let (a, b) = (on(dev)?, on(&Device::Cpu)?);
    let mut worst = 0.0f64;
    for (x, y) in a.iter().zip(&b) {
        worst = worst.max(rel_err(x, y)?);
    }
    Ok(KernelCheck {
        op: "adamw_update".into(),
        shape: format!("[{n}]"),
        forward: worst,
        backward: None,
        tolerance: 1e-5,
        ok: worst <= 1e-5 && a[0].dtype() == DType::F32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_is_checked_and_the_cpu_agrees_with_itself() {
        let checks = against_cpu(&Device::Cpu).unwrap();
        let ops: Vec<&str> = checks.iter().map(|c| c.op.as_str()).collect();
        for op in [
            "gelu",
            "layer_norm",
            "rms_norm",
            "causal_softmax",
            "cross_entropy",
            "linear",
            "causal_attention_packed",
            "newton_schulz",
            "linear (bf16)",
            "causal_attention_packed (bf16)",
            "newton_schulz (bf16)",
            "adamw_update",
            "rotary",
            "add_rows",
            "relu2",
        ] {
            assert!(ops.contains(&op), "{op} is not checked");
        }
        for c in &checks {
            assert!(
                c.ok && c.forward == 0.0 && c.backward.unwrap_or(0.0) == 0.0,
                "{c:?}"
            );
        }
        // Gradients flowed for every differentiable op.
        assert_eq!(checks.iter().filter(|c| c.backward.is_some()).count(), 12);
    }

    #[test]
    fn a_wrong_result_is_caught() {
        let a = Tensor::new(&[1.0f32, 2.0, 4.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[1.0f32, 2.0, 3.0], &Device::Cpu).unwrap();
        assert!((rel_err(&a, &b).unwrap() - 1.0 / 3.0).abs() < 1e-9);
    }
}
