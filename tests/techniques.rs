//! The speedrun's techniques as plugins, against independent references: Muon's
//! step (momentum, Nesterov, Newton–Schulz, scaling; AdamW for the rest) against
//! a naive f64 implementation written here, for both coefficient sets; and the
//! plugins training on the smoke track natively and as wasm.

use crate::common;
use common::*;

use candle_core::{Device, Tensor};
use speedrun::model::params::{ParamDecl, ParamKind, ParamStore};
use speedrun::optim::{Grads, StepInput};
use speedrun::plugins;
use speedrun::train;
use std::path::PathBuf;

type Mat = Vec<Vec<f64>>;

fn matmul(a: &Mat, b: &Mat) -> Mat {
    let (n, k, m) = (a.len(), b.len(), b[0].len());
    (0..n)
        .map(|i| {
            (0..m)
                .map(|j| (0..k).map(|t| a[i][t] * b[t][j]).sum())
                .collect()
        })
        .collect()
}

fn transpose(a: &Mat) -> Mat {
    (0..a[0].len())
        .map(|j| a.iter().map(|r| r[j]).collect())
        .collect()
}

fn lin(a: &Mat, x: f64, b: &Mat, y: f64) -> Mat {
    a.iter()
        .zip(b)
        .map(|(r, s)| r.iter().zip(s).map(|(u, v)| x * u + y * v).collect())
        .collect()
}

/// Newton–Schulz as the Muon paper writes it, in f64.
fn newton_schulz(g: &Mat, coeffs: &[(f64, f64, f64)], norm_scale: f64, eps: f64) -> Mat {
    let tall = g.len() > g[0].len();
    let mut x = if tall { transpose(g) } else { g.clone() };
    let norm = x.iter().flatten().map(|v| v * v).sum::<f64>().sqrt();
    x = lin(&x, 1.0 / (norm * norm_scale + eps), &x, 0.0);
    for &(a, b, c) in coeffs {
        let gram = matmul(&x, &transpose(&x));
        let poly = lin(&gram, b, &matmul(&gram, &gram), c);
        x = lin(&x, a, &matmul(&poly, &x), 1.0);
    }
    if tall {
        transpose(&x)
    } else {
        x
    }
}

fn seeded(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| rng.random_range(-1.0..1.0) * scale)
        .collect()
}

fn to_mat(v: &[f64], rows: usize, cols: usize) -> Mat {
    v.chunks(cols).take(rows).map(|r| r.to_vec()).collect()
}

struct P {
    spec: ParamDecl,
    value: Vec<f64>,
    /// Muon momentum buffer, or AdamW's (m, v).
    buf: Vec<f64>,
    v: Vec<f64>,
}

/// One step of the reference: Muon for hidden matrices, AdamW (PyTorch's update
/// after the global clip) for the rest.
#[allow(clippy::too_many_arguments)]
fn reference_step(
    ps: &mut [P],
    grads: &[Vec<f64>],
    t: i32,
    lr: f64,
    momentum_mult: f64,
    grad_norm: f64,
    coeffs: &[(f64, f64, f64)],
    norm_scale: f64,
    eps_ns: f64,
) {
    let (beta1, beta2, eps, wd, clip_at, mom, lr_scale) = (0.9, 0.95, 1e-8, 0.1, 1.0, 0.95, 10.0);
    let clip = (clip_at / (grad_norm + 1e-6)).min(1.0);
    for (p, g) in ps.iter_mut().zip(grads) {
        let dims = p.spec.shape.clone();
        let muon = dims.len() == 2
            && matches!(
                p.spec.kind,
                ParamKind::Matrix | ParamKind::ResidualProjection
            );
        if muon {
            let beta = mom * momentum_mult;
            for (b, gi) in p.buf.iter_mut().zip(g) {
                *b = beta * *b + (1.0 - beta) * gi;
            }
            let u: Vec<f64> = g
                .iter()
                .zip(&p.buf)
                .map(|(gi, b)| (1.0 - beta) * gi + beta * b)
                .collect();
            let o = newton_schulz(&to_mat(&u, dims[0], dims[1]), coeffs, norm_scale, eps_ns);
            let gain = (dims[1] as f64 / dims[0] as f64).max(1.0).sqrt();
            let lr_m = lr * lr_scale;
            for (i, x) in p.value.iter_mut().enumerate() {
                *x -= lr_m * gain * o[i / dims[1]][i % dims[1]];
            }
        } else {
            let decay = if dims.len() == 2 { wd } else { 0.0 };
            let (bc1, bc2) = (1.0 - 0.9f64.powi(t), 1.0 - 0.95f64.powi(t));
            for (i, &g_raw) in g.iter().enumerate() {
                let gi = g_raw * clip;
                p.buf[i] = beta1 * p.buf[i] + (1.0 - beta1) * gi;
                p.v[i] = beta2 * p.v[i] + (1.0 - beta2) * gi * gi;
                p.value[i] *= 1.0 - lr * decay;
                p.value[i] -= lr / bc1 * p.buf[i] / ((p.v[i]).sqrt() / bc2.sqrt() + eps);
            }
        }
    }
}

fn muon_matches_the_reference(
    config: serde_json::Value,
    coeffs: &[(f64, f64, f64)],
    norm_scale: f64,
    eps_ns: f64,
) {
    let specs = vec![
        ParamDecl::new("wte", &[5, 4], ParamKind::TokenEmbedding),
        ParamDecl::new("h.0.w", &[4, 6], ParamKind::Matrix),
        ParamDecl::new("h.0.b", &[6], ParamKind::Bias),
        ParamDecl::new("h.1.w", &[6, 3], ParamKind::ResidualProjection),
    ];
    let mut ps: Vec<P> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| P {
            value: seeded(s.numel(), i as u64, 0.1),
            buf: vec![0.0; s.numel()],
            v: vec![0.0; s.numel()],
            spec: s.clone(),
        })
        .collect();
    let store = ParamStore::new(
        ps.iter()
            .map(|p| (p.spec.clone(), p.value.iter().map(|&x| x as f32).collect()))
            .collect(),
        &Device::Cpu,
    )
    .unwrap();
    let cfg = format!("muon={config}");
    let mut comps = plugins::stack(
        &smoke_track(),
        0,
        &[root().join("plugins/muon")],
        &[cfg],
        false,
        &default_policy(),
    )
    .unwrap();
    comps.optimizer.init(&store).unwrap();
    for (t, momentum_mult) in [(1, 0.9), (2, 1.0), (3, 1.0)] {
        let grads: Vec<Vec<f64>> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| seeded(s.numel(), 100 * t as u64 + i as u64, 1.0))
            .collect();
        // Round the gradients through f32 so both sides see the same values.
        let grads: Vec<Vec<f64>> = grads
            .iter()
            .map(|g| g.iter().map(|&x| x as f32 as f64).collect())
            .collect();
        let grad_norm = grads.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
        let tensors = Grads(
            grads
                .iter()
                .zip(&specs)
                .map(|(g, s)| {
                    Tensor::from_vec(
                        g.iter().map(|&x| x as f32).collect::<Vec<f32>>(),
                        s.shape.as_slice(),
                        &Device::Cpu,
                    )
                    .unwrap()
                })
                .collect(),
        );
        let lr = 2e-3;
        comps
            .optimizer
            .step(
                &store,
                &tensors,
                &StepInput {
                    step: t as usize - 1,
                    lr,
                    momentum_mult,
                    grad_norm,
                },
            )
            .unwrap();
        reference_step(
            &mut ps,
            &grads,
            t,
            lr,
            momentum_mult,
            grad_norm,
            coeffs,
            norm_scale,
            eps_ns,
        );
        for (p, param) in ps.iter().zip(store.iter()) {
            let got: Vec<f32> = param
                .var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (i, (&g, &w)) in got.iter().zip(&p.value).enumerate() {
                assert!(
                    (g as f64 - w).abs() < 2e-5,
                    "step {t}, {} [{i}]: plugin {g}, reference {w}",
                    p.spec.name
                );
            }
        }
    }
}

#[test]
fn muon_steps_match_a_naive_f64_reference() {
    muon_matches_the_reference(
        serde_json::json!({"coefficients": "standard", "ns_steps": 5}),
        &[(3.4445, -4.7750, 2.0315); 5],
        1.0,
        1e-7,
    );
}

#[test]
fn muon_with_polar_express_coefficients_matches_the_reference() {
    muon_matches_the_reference(
        serde_json::json!({"coefficients": "polar_express"}),
        &[
            (8.156554524902461, -22.48329292557795, 15.878769915207462),
            (4.042929935166739, -2.808917465908714, 0.5000178451051316),
            (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
            (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
            (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
        ],
        1.02,
        1e-6,
    );
}

#[test]
fn muon_and_wsd_train_the_smoke_model_natively_and_as_wasm() {
    let tmp = tempfile::tempdir().unwrap();
    let specs: Vec<PathBuf> = ["plugins/muon", "plugins/wsd-schedule"]
        .iter()
        .map(|p| root().join(p))
        .collect();
    let reference = train::run(
        &smoke_options(&tmp.path().join("ref"), Some(60)),
        speedrun::plugins::Components::reference(&smoke_track()),
    )
    .unwrap();
    let mut finals = Vec::new();
    for wasm in [false, true] {
        let comps =
            plugins::stack(&smoke_track(), 0, &specs, &[], wasm, &default_policy()).unwrap();
        let s = train::run(
            &smoke_options(&tmp.path().join(format!("w{wasm}")), Some(60)),
            comps,
        )
        .unwrap();
        assert!(s.verdict.valid, "{:?}", s.verdict.failed());
        finals.push(s.final_val_loss.unwrap());
        assert_eq!(s.train_losses.len(), 60);
    }
    // The same plugin source gives the same curve natively and sandboxed.
    assert_eq!(finals[0], finals[1]);
    // And it trains: well below the unigram entropy of bytes (~4.5 nats) at 60 steps.
    assert!(
        finals[0] < 3.6,
        "muon + wsd reached {} (reference {:?})",
        finals[0],
        reference.final_val_loss
    );
}

/// The plugins in `dirs` (with `configs` as `NAME=JSON`), natively or as wasm.
fn stack_of(dirs: &[&str], configs: &[&str], wasm: bool) -> speedrun::plugins::Components {
    let specs: Vec<PathBuf> = dirs.iter().map(|d| root().join(d)).collect();
    let configs: Vec<String> = configs.iter().map(|c| c.to_string()).collect();
    plugins::stack(&smoke_track(), 0, &specs, &configs, wasm, &default_policy()).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn random_stream(scale: f64) -> Tensor {
    let width = smoke_track().model.width;
    let v: Vec<f32> = seeded(2 * 5 * width, 7, scale)
        .iter()
        .map(|&x| x as f32)
        .collect();
    Tensor::from_vec(v, (2, 5, width), &Device::Cpu).unwrap()
}

#[test]
fn softcap_bounds_the_reference_logits_by_cap_tanh() {
    use speedrun::model::{hooks::ForwardCtx, Model, ModelHooks};
    let track = smoke_track();
    let comps = stack_of(&["plugins/softcap"], &[r#"softcap={"cap": 2.0}"#], false);
    let model = Model::build(&track.model, ModelHooks::default(), 3, &Device::Cpu).unwrap();
    let cx = ForwardCtx {
        params: &model.params,
        spec: &track.model,
        train: true,
        tokens: None,
        precision: Default::default(),
    };
    let x = random_stream(40.0);
    // The same parameters (softcap declares none), its logits hook after the head.
    let capped = Model::build(&track.model, comps.hooks, 3, &Device::Cpu).unwrap();
    let got = values(&capped.head(&cx, &x).unwrap());
    let plain = values(&model.head(&cx, &x).unwrap());
    // The test means something only if some logits are well past the cap.
    assert!(
        plain.iter().any(|l| l.abs() > 3.0),
        "logits too small to test the cap"
    );
    for (g, l) in got.iter().zip(&plain) {
        let want = 2.0 * (l / 2.0).tanh();
        assert!(
            (g - want).abs() < 1e-5,
            "cap·tanh({l}/cap) = {want}, plugin {g}"
        );
        assert!(g.abs() < 2.0);
    }
    let bad = plugins::stack(
        &track,
        0,
        &[root().join("plugins/softcap")],
        &[r#"softcap={"cap": 0}"#.to_string()],
        false,
        &default_policy(),
    );
    assert!(format!("{:#}", bad.err().unwrap()).contains("cap must be a positive number"));
}

#[test]
fn rmsnorm_drops_the_layernorm_parameters_and_normalises_by_the_rms() {
    use speedrun::model::{hooks::ForwardCtx, hooks::NormSite, Model};
    let track = smoke_track();
    let model = Model::build(
        &track.model,
        stack_of(&["plugins/rmsnorm"], &[], false).hooks,
        3,
        &Device::Cpu,
    )
    .unwrap();
    let names: Vec<&str> = model.params.iter().map(|p| p.spec.name.as_str()).collect();
    assert!(!names.iter().any(|n| n.contains(".ln_")), "{names:?}");
    assert!(names.contains(&"transformer.h.0.attn.c_attn.weight"));
    let cx = ForwardCtx {
        params: &model.params,
        spec: &track.model,
        train: true,
        tokens: None,
        precision: Default::default(),
    };
    let x = random_stream(3.0);
    let got = values(&model.norm(&cx, NormSite::Mlp(1), &x).unwrap());
    let xs = values(&x);
    let d = track.model.width;
    for (row_got, row) in got.chunks(d).zip(xs.chunks(d)) {
        let rms = (row.iter().map(|v| v * v).sum::<f64>() / d as f64 + 1e-5).sqrt();
        for (g, v) in row_got.iter().zip(row) {
            assert!((g - v / rms).abs() < 1e-5, "{g} vs {}", v / rms);
        }
    }
    // With a gain the gains stay (and are used), the biases still go.
    let with_gain = Model::build(
        &track.model,
        stack_of(&["plugins/rmsnorm"], &[r#"rmsnorm={"gain": true}"#], false).hooks,
        3,
        &Device::Cpu,
    )
    .unwrap();
    let kinds: Vec<ParamKind> = with_gain.params.iter().map(|p| p.spec.kind).collect();
    assert!(kinds.contains(&ParamKind::NormGain) && !kinds.contains(&ParamKind::NormBias));
}

#[test]
fn zero_init_zeroes_the_residual_projections_and_nothing_else() {
    use speedrun::model::{Model, ModelHooks};
    let track = smoke_track();
    let zero = Model::build(
        &track.model,
        stack_of(&["plugins/zero-init"], &[], false).hooks,
        3,
        &Device::Cpu,
    )
    .unwrap();
    let reference = Model::build(&track.model, ModelHooks::default(), 3, &Device::Cpu).unwrap();
    let mut zeroed = 0;
    for (z, r) in zero.params.iter().zip(reference.params.iter()) {
        assert_eq!(z.spec.name, r.spec.name);
        let (zv, rv) = (values(z.var.as_tensor()), values(r.var.as_tensor()));
        if z.spec.kind == ParamKind::ResidualProjection {
            assert!(zv.iter().all(|&v| v == 0.0), "{} not zero", z.spec.name);
            assert!(rv.iter().any(|&v| v != 0.0));
            zeroed += 1;
        } else {
            assert_eq!(zv, rv, "{} changed", z.spec.name);
        }
    }
    // Both output projections (attention, MLP) of every layer.
    assert_eq!(zeroed, 2 * track.model.layers);
}

/// Trains `dirs` (with `configs`) on the smoke track for `steps` natively and
/// as wasm: each run valid and its loss down by 0.5; the two final losses
/// identical. Answers the native run's train losses.
fn trains_alike_native_and_wasm(dirs: &[&str], configs: &[&str], steps: usize) -> Vec<f32> {
    let tmp = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for wasm in [false, true] {
        let s = train::run(
            &smoke_options(&tmp.path().join(format!("w{wasm}")), Some(steps)),
            stack_of(dirs, configs, wasm),
        )
        .unwrap();
        assert!(s.verdict.valid, "{:?}", s.verdict.failed());
        assert!(
            s.train_losses[steps - 1] < s.train_losses[0] - 0.5,
            "{:?}",
            s.train_losses
        );
        runs.push(s);
    }
    assert_eq!(
        runs[0].final_val_loss.unwrap(),
        runs[1].final_val_loss.unwrap()
    );
    runs.swap_remove(0).train_losses
}

#[test]
fn architecture_plugins_stacked_train_the_smoke_model_natively_and_as_wasm() {
    let dirs = [
        "plugins/rmsnorm",
        "plugins/zero-init",
        "plugins/softcap",
        "plugins/rotary",
    ];
    trains_alike_native_and_wasm(&dirs, &[r#"rotary={"qk_norm": true}"#], 40);
}

/// Rotary attention written out in f64: c_attn, per head q and k (RMS-normalised
/// when `qk_norm`), rotated by rotate-half with angle pos·base^(−2i/hd), causal
/// softmax of q·k/√hd, then c_proj.
fn naive_rotary_attention(
    x: &[f64],
    (t, d, heads): (usize, usize, usize),
    w: &[f64],
    bias: &[f64],
    wp: &[f64],
    bp: &[f64],
    qk_norm: bool,
) -> Vec<f64> {
    let hd = d / heads;
    let qkv: Vec<Vec<f64>> = (0..t)
        .map(|i| {
            (0..3 * d)
                .map(|j| bias[j] + (0..d).map(|k| x[i * d + k] * w[k * 3 * d + j]).sum::<f64>())
                .collect()
        })
        .collect();
    let rotate = |v: &[f64], pos: usize| -> Vec<f64> {
        let v: Vec<f64> = if qk_norm {
            let rms = (v.iter().map(|a| a * a).sum::<f64>() / hd as f64 + 1e-6).sqrt();
            v.iter().map(|a| a / rms).collect()
        } else {
            v.to_vec()
        };
        let half = hd / 2;
        let mut out = vec![0.0; hd];
        for i in 0..half {
            let ang = pos as f64 / 10000f64.powf(2.0 * i as f64 / hd as f64);
            out[i] = v[i] * ang.cos() - v[i + half] * ang.sin();
            out[i + half] = v[i] * ang.sin() + v[i + half] * ang.cos();
        }
        out
    };
    let mut y = vec![vec![0.0; d]; t];
    for h in 0..heads {
        let head =
            |i: usize, which: usize| qkv[i][which * d + h * hd..which * d + (h + 1) * hd].to_vec();
        for (i, yi) in y.iter_mut().enumerate() {
            let q = rotate(&head(i, 0), i);
            let scores: Vec<f64> = (0..=i)
                .map(|j| {
                    let k = rotate(&head(j, 1), j);
                    q.iter().zip(&k).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let z: f64 = e.iter().sum();
            for (j, ej) in e.iter().enumerate() {
                for (c, vc) in head(j, 2).iter().enumerate() {
                    yi[h * hd + c] += ej / z * vc;
                }
            }
        }
    }
    (0..t)
        .flat_map(|i| {
            let yi = &y[i];
            (0..d).map(move |j| bp[j] + (0..d).map(|k| yi[k] * wp[k * d + j]).sum::<f64>())
        })
        .collect()
}

#[test]
fn rotary_attention_matches_a_naive_f64_reference_and_drops_learned_positions() {
    use speedrun::model::{hooks::ForwardCtx, Model};
    let track = smoke_track();
    let (d, heads) = (track.model.width, track.model.heads);
    for qk_norm in [false, true] {
        let config = format!(r#"rotary={{"qk_norm": {qk_norm}}}"#);
        let model = Model::build(
            &track.model,
            stack_of(&["plugins/rotary"], &[&config], false).hooks,
            3,
            &Device::Cpu,
        )
        .unwrap();
        assert!(model
            .params
            .iter()
            .all(|p| p.spec.kind != ParamKind::PositionEmbedding));
        let cx = ForwardCtx {
            params: &model.params,
            spec: &track.model,
            train: true,
            tokens: None,
            precision: Default::default(),
        };
        let t = 5;
        let xs: Vec<f32> = seeded(t * d, 9, 2.0).iter().map(|&v| v as f32).collect();
        let x = Tensor::from_vec(xs.clone(), (1, t, d), &Device::Cpu).unwrap();
        let got = values(&model.attention(&cx, 1, &x).unwrap());
        let p = |n: &str| values(model.params.get(&format!("transformer.h.1.{n}")).unwrap());
        let want = naive_rotary_attention(
            &xs.iter().map(|&v| v as f64).collect::<Vec<_>>(),
            (t, d, heads),
            &p("attn.c_attn.weight"),
            &p("attn.c_attn.bias"),
            &p("attn.c_proj.weight"),
            &p("attn.c_proj.bias"),
            qk_norm,
        );
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "qk_norm {qk_norm}: {g} vs {w}");
        }
        // The embedding is the token embedding alone.
        let tokens = Tensor::from_vec(vec![3u32, 7, 3], (1, 3), &Device::Cpu).unwrap();
        let e = values(&model.embed(&cx, &tokens).unwrap());
        let wte = values(model.params.get("transformer.wte.weight").unwrap());
        assert_eq!(&e[..d], &wte[3 * d..4 * d]);
        assert_eq!(&e[..d], &e[2 * d..]);
    }
}

/// `x @ wᵀ` for a stream `[.., D]` and `w [V, D]`, in f64.
fn naive_head(x: &[f64], w: &[f64], d: usize) -> Vec<f64> {
    x.chunks(d)
        .flat_map(|row| {
            w.chunks(d)
                .map(|wr| row.iter().zip(wr).map(|(a, b)| a * b).sum::<f64>())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn untied_head_declares_its_own_matrix_and_every_head_uses_it() {
    use speedrun::model::{hooks::ForwardCtx, Model, ModelHooks};
    let track = smoke_track();
    let (d, v) = (track.model.width, track.model.vocab);
    let reference = Model::build(&track.model, ModelHooks::default(), 3, &Device::Cpu).unwrap();
    // Zero-initialised by default; every other parameter as the reference's.
    let zero = Model::build(
        &track.model,
        stack_of(&["plugins/untied-head"], &[], false).hooks,
        3,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(zero.params.len(), reference.params.len() + 1);
    let head = zero
        .params
        .iter()
        .find(|p| p.spec.name == "lm_head.weight")
        .expect("lm_head.weight declared");
    assert_eq!(head.spec.shape, vec![v, d]);
    assert_eq!(head.spec.kind, ParamKind::TokenEmbedding);
    assert!(values(head.var.as_tensor()).iter().all(|&x| x == 0.0));
    for r in reference.params.iter() {
        let z = zero.params.iter().find(|p| p.spec.name == r.spec.name);
        let z = z.unwrap_or_else(|| panic!("{} dropped", r.spec.name));
        assert_eq!(values(z.var.as_tensor()), values(r.var.as_tensor()));
    }

    // With the reference's random init the head's logits are x·lm_headᵀ, not x·wteᵀ.
    let comps = stack_of(
        &["plugins/untied-head"],
        &[r#"untied-head={"zero_init": false}"#],
        false,
    );
    let model = Model::build(&track.model, comps.hooks, 3, &Device::Cpu).unwrap();
    let cx = ForwardCtx {
        params: &model.params,
        spec: &track.model,
        train: true,
        tokens: None,
        precision: Default::default(),
    };
    let get = |name: &str| values(model.params.get(name).unwrap());
    let (lm_head, wte) = (get("lm_head.weight"), get("transformer.wte.weight"));
    assert!(lm_head.iter().any(|&x| x != 0.0) && lm_head != wte);
    let x = random_stream(1.0);
    let got = values(&model.head(&cx, &x).unwrap());
    let want = naive_head(&values(&x), &lm_head, d);
    let tied = naive_head(&values(&x), &wte, d);
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-4, "{g} vs {w}");
    }
    assert!(got.iter().zip(&tied).any(|(g, t)| (g - t).abs() > 1e-2));

    // softcap caps the untied head's logits when both are stacked.
    let both = stack_of(
        &["plugins/untied-head", "plugins/softcap"],
        &[
            r#"untied-head={"zero_init": false}"#,
            r#"softcap={"cap": 0.05}"#,
        ],
        false,
    );
    let model = Model::build(&track.model, both.hooks, 3, &Device::Cpu).unwrap();
    let cx = ForwardCtx {
        params: &model.params,
        spec: &track.model,
        train: true,
        tokens: None,
        precision: Default::default(),
    };
    let got = values(&model.head(&cx, &x).unwrap());
    let lm_head = values(model.params.get("lm_head.weight").unwrap());
    for (g, l) in got.iter().zip(naive_head(&values(&x), &lm_head, d)) {
        let want = 0.05 * (l / 0.05).tanh();
        assert!((g - want).abs() < 1e-5, "{g} vs {want}");
    }
}

/// The attention of `layer` with and without value embeddings, on `stack` (plus
/// or minus `plugins/value-embeddings`), for tokens `ids` and the stream `x`;
/// the table rows are set by `row(token)`. Answers (with, without, c_proj weight).
fn attention_with_and_without_value_embeddings(
    stack: &[&str],
    configs: &[&str],
    layer: usize,
    ids: &[u32],
    row: impl Fn(u32) -> Vec<f32>,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    use speedrun::model::{hooks::ForwardCtx, Model};
    let track = smoke_track();
    let (d, v, t) = (track.model.width, track.model.vocab, ids.len());
    let with_dirs: Vec<&str> = stack
        .iter()
        .copied()
        .chain(["plugins/value-embeddings"])
        .collect();
    let with = Model::build(
        &track.model,
        stack_of(&with_dirs, configs, false).hooks,
        3,
        &Device::Cpu,
    )
    .unwrap();
    let without = Model::build(
        &track.model,
        stack_of(stack, configs, false).hooks,
        3,
        &Device::Cpu,
    )
    .unwrap();
    let name = format!("transformer.h.{layer}.attn.value_embed.weight");
    let table = with
        .params
        .iter()
        .find(|p| p.spec.name == name)
        .expect("table declared");
    assert_eq!(table.spec.shape, vec![v, d]);
    let rows: Vec<f32> = (0..v as u32).flat_map(&row).collect();
    table
        .var
        .set(&Tensor::from_vec(rows, (v, d), &Device::Cpu).unwrap())
        .unwrap();
    let tokens = Tensor::from_vec(ids.to_vec(), (1, t), &Device::Cpu).unwrap();
    let xs: Vec<f32> = seeded(t * d, 9, 2.0).iter().map(|&v| v as f32).collect();
    let x = Tensor::from_vec(xs, (1, t, d), &Device::Cpu).unwrap();
    let run = |m: &Model| {
        let cx = ForwardCtx {
            params: &m.params,
            spec: &track.model,
            train: true,
            tokens: Some(&tokens),
            precision: Default::default(),
        };
        values(&m.attention(&cx, layer, &x).unwrap())
    };
    let proj = values(
        with.params
            .get(&format!("transformer.h.{layer}.attn.c_proj.weight"))
            .unwrap(),
    );
    (run(&with), run(&without), proj)
}

/// `c @ W` for a row `c [D]` and `W [D, D]`.
fn row_times(c: &[f64], w: &[f64], d: usize) -> Vec<f64> {
    (0..d)
        .map(|j| (0..d).map(|i| c[i] * w[i * d + j]).sum())
        .collect()
}

#[test]
fn value_embeddings_are_added_to_the_values_of_every_attention() {
    let d = smoke_track().model.width;
    let ids = [3u32, 17, 3, 250, 9];
    for (stack, configs) in [
        (vec![], vec![]),
        (vec!["plugins/rotary"], vec![r#"rotary={"qk_norm": true}"#]),
    ] {
        // Every token the same row c: each softmax row sums to one, so every
        // position's output moves by exactly c @ W_proj.
        let c: Vec<f32> = seeded(d, 11, 0.5).iter().map(|&v| v as f32).collect();
        let (with, without, proj) =
            attention_with_and_without_value_embeddings(&stack, &configs, 1, &ids, |_| c.clone());
        let shift = row_times(&c.iter().map(|&v| v as f64).collect::<Vec<_>>(), &proj, d);
        for (pos, (w, o)) in with.chunks(d).zip(without.chunks(d)).enumerate() {
            for j in 0..d {
                assert!(
                    (w[j] - o[j] - shift[j]).abs() < 1e-4,
                    "{stack:?} pos {pos}: {} vs {}",
                    w[j] - o[j],
                    shift[j]
                );
            }
        }
        // Rows that differ by token: position 0 attends only to itself, so it
        // moves by its own token's row @ W_proj.
        let row = |tok: u32| -> Vec<f32> {
            seeded(d, 100 + tok as u64, 0.5)
                .iter()
                .map(|&v| v as f32)
                .collect()
        };
        let (with, without, proj) =
            attention_with_and_without_value_embeddings(&stack, &configs, 0, &ids, row);
        let own: Vec<f64> = row(ids[0]).iter().map(|&v| v as f64).collect();
        let shift = row_times(&own, &proj, d);
        for j in 0..d {
            assert!((with[j] - without[j] - shift[j]).abs() < 1e-4, "{stack:?}");
        }
        assert!(with[d..]
            .iter()
            .zip(&without[d..])
            .any(|(a, b)| (a - b).abs() > 1e-3));
    }
}

#[test]
fn value_embeddings_declare_tables_for_the_chosen_layers_and_refuse_bad_ones() {
    use speedrun::model::Model;
    let track = smoke_track();
    let tables = |configs: &[&str]| -> Vec<String> {
        let m = Model::build(
            &track.model,
            stack_of(&["plugins/value-embeddings"], configs, false).hooks,
            3,
            &Device::Cpu,
        )
        .unwrap();
        m.params
            .iter()
            .filter(|p| p.spec.name.contains("value_embed"))
            .map(|p| {
                assert_eq!(p.spec.kind, ParamKind::TokenEmbedding);
                p.spec.name.clone()
            })
            .collect()
    };
    assert_eq!(tables(&[]).len(), track.model.layers);
    assert_eq!(
        tables(&[r#"value-embeddings={"layers": [1]}"#]),
        vec!["transformer.h.1.attn.value_embed.weight".to_string()]
    );
    for (config, says) in [
        (
            r#"value-embeddings={"layers": [99]}"#,
            "layer 99 does not exist",
        ),
        (r#"value-embeddings={"layers": [0, 0]}"#, "declared twice"),
        (
            r#"value-embeddings={"layers": "all"}"#,
            "layers must be null or a list",
        ),
    ] {
        let r = plugins::stack(
            &track,
            0,
            &[root().join("plugins/value-embeddings")],
            &[config.to_string()],
            false,
            &default_policy(),
        )
        .and_then(|c| Model::build(&track.model, c.hooks, 3, &Device::Cpu).map(|_| ()));
        let e = format!(
            "{:#}",
            r.err().unwrap_or_else(|| panic!("{config} accepted"))
        );
        assert!(e.contains(says), "{config}: {e}");
    }
}

#[test]
fn this_sessions_architecture_plugins_stacked_train_natively_and_as_wasm() {
    let dirs = [
        "plugins/rotary",
        "plugins/value-embeddings",
        "plugins/unet-skips",
        "plugins/untied-head",
        "plugins/softcap",
    ];
    let losses = trains_alike_native_and_wasm(&dirs, &[], 30);
    // A zero head (softcapped): the first loss is ln(vocab) exactly.
    let uniform = (smoke_track().model.vocab as f32).ln();
    assert!((losses[0] - uniform).abs() < 1e-4, "{}", losses[0]);
}

#[test]
fn unet_skips_hand_early_outputs_to_late_inputs_with_their_weights() {
    use speedrun::model::{hooks::ForwardCtx, hooks::NormSite, Model, ModelHooks};
    let mut spec = smoke_track().model;
    spec.layers = 4;
    let build = |hooks| Model::build(&spec, hooks, 3, &Device::Cpu).unwrap();
    let m = build(stack_of(&["plugins/unet-skips"], &[], false).hooks);
    let w = m
        .params
        .iter()
        .find(|p| p.spec.name == "transformer.skip_weights")
        .expect("declared");
    assert_eq!(
        (w.spec.shape.clone(), w.spec.kind),
        (vec![2], ParamKind::Bias)
    );
    assert_eq!(
        values(w.var.as_tensor()),
        vec![1.0, 1.0],
        "the speedrun starts them at one"
    );
    let ids: Vec<u32> = (0..spec.seq_len as u32)
        .map(|i| (i * 37 + 5) % 256)
        .collect();
    let tokens = Tensor::from_vec(ids, (1, spec.seq_len), &Device::Cpu).unwrap();
    let set = |ws: &[f32]| w.var.set(&Tensor::new(ws, &Device::Cpu).unwrap()).unwrap();

    // Written out for 4 layers: block 2 gets block 1's output back, block 3 block 0's.
    set(&[0.7, -1.3]);
    let got = values(&m.forward(&tokens, true).unwrap());
    let cx = ForwardCtx {
        params: &m.params,
        spec: &spec,
        train: true,
        tokens: Some(&tokens),
        precision: Default::default(),
    };
    let b0 = m.block(&cx, 0, &m.embed(&cx, &tokens).unwrap()).unwrap();
    let b1 = m.block(&cx, 1, &b0).unwrap();
    let b2 = m
        .block(&cx, 2, &(&b1 + (&b1 * 0.7).unwrap()).unwrap())
        .unwrap();
    let b3 = m
        .block(&cx, 3, &(&b2 + (&b0 * -1.3).unwrap()).unwrap())
        .unwrap();
    let want = values(
        &m.head(&cx, &m.norm(&cx, NormSite::Final, &b3).unwrap())
            .unwrap(),
    );
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-5, "{g} vs {w}");
    }
    // Zero weights: exactly the reference model (every other parameter is the same).
    set(&[0.0, 0.0]);
    let reference = build(ModelHooks::default());
    assert_eq!(
        values(&m.forward(&tokens, true).unwrap()),
        values(&reference.forward(&tokens, true).unwrap())
    );
    // Too many skips for the depth: refused, naming both numbers.
    let r = Model::build(
        &spec,
        stack_of(
            &["plugins/unet-skips"],
            &[r#"unet-skips={"count": 3}"#],
            false,
        )
        .hooks,
        3,
        &Device::Cpu,
    );
    let e = format!("{:#}", r.err().expect("3 skips over 4 layers accepted"));
    assert!(
        e.contains("need at least 6 layers (the model has 4)"),
        "{e}"
    );
}

/// The shipped model plugins with their forward hooks on the host's tape
/// (`plugins::call_tape`) against the same hooks on candle's graph: the same
/// loss bit for bit, every parameter's gradient within f32 rounding, and
/// every training call of a forward hook on the tape (the telemetry says so).
#[test]
fn model_plugins_on_the_hosts_tape_give_candles_gradients() {
    use speedrun::loss::cross_entropy;
    use speedrun::model::Model;
    use speedrun::plugins::call_tape;
    let track = smoke_track();
    let stacks: [(&[&str], &[&str]); 3] = [
        (&["plugins/relu2"], &[]),
        (
            &["plugins/rmsnorm", "plugins/softcap", "plugins/rotary"],
            &[r#"rotary={"qk_norm": true}"#],
        ),
        (
            &[
                "plugins/value-embeddings",
                "plugins/unet-skips",
                "plugins/untied-head",
            ],
            &[],
        ),
    ];
    let dev = Device::Cpu;
    let t = track.model.seq_len;
    let ids: Vec<u32> = seeded(2 * (t + 1), 3, 1.0)
        .iter()
        .map(|v| (v.abs() * 1e4) as u32 % track.model.vocab as u32)
        .collect();
    let x = Tensor::from_vec(ids[..2 * t].to_vec(), (2, t), &dev).unwrap();
    let y = Tensor::from_vec(ids[2..].to_vec(), 2 * t, &dev).unwrap();
    for (dirs, configs) in stacks {
        let comps = stack_of(dirs, configs, false);
        let model = Model::build(&track.model, comps.hooks, 0, &dev).unwrap();
        speedrun::plugins::take_stats(&comps.plugins);
        let loss_and_grads = || {
            let logits = model.forward(&x, true).unwrap();
            let (b, t, v) = logits.dims3().unwrap();
            let loss = cross_entropy(&logits.reshape((b * t, v)).unwrap(), &y).unwrap();
            let grads = Grads::collect(&model.params, &loss.backward().unwrap()).unwrap();
            let lines = speedrun::plugins::take_stats(&comps.plugins);
            let taped: Vec<(String, u64, u64)> = lines
                .into_iter()
                .map(|l| (l.hook, l.calls, l.taped))
                .collect();
            (loss.to_scalar::<f32>().unwrap(), grads, taped)
        };
        let (taped_loss, taped, on_tape) = loss_and_grads();
        let (graph_loss, graph, off_tape) = call_tape::without(loss_and_grads);
        assert!(!on_tape.is_empty(), "{dirs:?}: no hook was called");
        for ((hook, calls, taped), (_, _, untaped)) in on_tape.iter().zip(&off_tape) {
            assert!(*calls > 0, "{dirs:?}: {hook}");
            assert_eq!(taped, calls, "{dirs:?}: {hook}'s calls were not all taped");
            assert_eq!(*untaped, 0, "{dirs:?}: {hook} was taped with the tape off");
        }
        assert_eq!(taped_loss, graph_loss, "{dirs:?}: the losses differ");
        for ((p, a), b) in model.params.iter().zip(&taped.0).zip(&graph.0) {
            let (a, b) = (values(a), values(b));
            let largest = b.iter().fold(0f64, |m, v| m.max(v.abs()));
            let off = a
                .iter()
                .zip(&b)
                .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                off <= 1e-5 * largest.max(1e-3),
                "{dirs:?}: {}'s gradient is off by {off} (largest {largest})",
                p.spec.name
            );
        }
    }
}
