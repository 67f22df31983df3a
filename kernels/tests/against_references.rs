//! Every fused kernel against an unfused reference built from candle primitives
//! (f32, relative error <= 1e-5), and its backward against central finite
//! differences (f64), on odd shapes and non-contiguous inputs.

use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use speedrun_kernels as k;
use std::sync::Arc;

const DEV: Device = Device::Cpu;

fn rand_t(shape: &[usize], seed: u64, scale: f64, dtype: DType) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| (rng.random::<f64>() * 2.0 - 1.0) * scale)
        .collect();
    Tensor::from_vec(v, shape, &DEV)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn max_rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let a = a
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let b = b
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / scale)
        .fold(0.0, f64::max)
}

/// Runs `run` in a 1-thread and a 3-thread pool and asserts identical results.
fn same_on_1_and_3_threads<T: PartialEq + std::fmt::Debug + Send>(
    run: impl Fn() -> T + Send + Sync,
) {
    let on = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
            .install(&run)
    };
    assert_eq!(on(1), on(3));
}

// ---- unfused references ----

fn ref_gelu(x: &Tensor) -> Tensor {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = ((x + (x.powf(3.0).unwrap() * 0.044715).unwrap()).unwrap() * c).unwrap();
    ((x * 0.5).unwrap() * (inner.tanh().unwrap() + 1.0).unwrap()).unwrap()
}

fn ref_relu2(x: &Tensor) -> Tensor {
    x.relu().unwrap().sqr().unwrap()
}

fn ref_layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Tensor {
    let mean = x.mean_keepdim(D::Minus1).unwrap();
    let c = x.broadcast_sub(&mean).unwrap();
    let var = c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    let n = c
        .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
        .unwrap();
    n.broadcast_mul(w).unwrap().broadcast_add(b).unwrap()
}

fn ref_rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    x.broadcast_div(&(ms + eps).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(w)
        .unwrap()
}

fn ref_causal_softmax(s: &Tensor, scale: f64) -> Tensor {
    let t = s.dim(D::Minus1).unwrap();
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    let mask = Tensor::from_vec(mask, (t, t), &DEV)
        .unwrap()
        .to_dtype(s.dtype())
        .unwrap();
    let z = (s * scale).unwrap().broadcast_add(&mask).unwrap();
    let m = z.max_keepdim(D::Minus1).unwrap();
    let e = z.broadcast_sub(&m).unwrap().exp().unwrap();
    e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
}

fn ref_cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    let m = logits.max_keepdim(1).unwrap();
    let z = logits.broadcast_sub(&m).unwrap();
    let lse = z.exp().unwrap().sum_keepdim(1).unwrap().log().unwrap();
    let logp = z.broadcast_sub(&lse).unwrap();
    logp.gather(&targets.unsqueeze(1).unwrap(), 1)
        .unwrap()
        .mean_all()
        .unwrap()
        .neg()
        .unwrap()
}

/// A non-contiguous view with the given logical shape: the transpose of a contiguous tensor.
fn transposed_view(shape: &[usize], seed: u64, scale: f64, dtype: DType) -> Tensor {
    let n = shape.len();
    let mut s = shape.to_vec();
    s.swap(n - 2, n - 1);
    let t = rand_t(&s, seed, scale, dtype)
        .transpose(n - 2, n - 1)
        .unwrap();
    assert!(!t.is_contiguous());
    t
}

#[test]
fn forward_passes_match_unfused_references_in_f32() {
    for (i, shape) in [
        vec![3usize, 7, 13],
        vec![1, 1],
        vec![5, 64],
        vec![2, 3, 5, 129],
    ]
    .into_iter()
    .enumerate()
    {
        let x = rand_t(&shape, i as u64, 3.0, DType::F32);
        let d = *shape.last().unwrap();
        let w = rand_t(&[d], 100 + i as u64, 1.0, DType::F32);
        let b = rand_t(&[d], 200 + i as u64, 1.0, DType::F32);
        assert!(
            max_rel_err(&k::gelu(&x).unwrap(), &ref_gelu(&x)) <= 1e-5,
            "gelu {shape:?}"
        );
        assert!(
            max_rel_err(&k::relu2(&x).unwrap(), &ref_relu2(&x)) <= 1e-5,
            "relu2 {shape:?}"
        );
        assert!(
            max_rel_err(
                &k::layer_norm(&x, Some(&w), Some(&b), 1e-5).unwrap(),
                &ref_layer_norm(&x, &w, &b, 1e-5)
            ) <= 1e-5,
            "ln {shape:?}"
        );
        let ones = Tensor::ones(d, DType::F32, &DEV).unwrap();
        let zeros = Tensor::zeros(d, DType::F32, &DEV).unwrap();
        assert!(
            max_rel_err(
                &k::layer_norm(&x, None, None, 1e-5).unwrap(),
                &ref_layer_norm(&x, &ones, &zeros, 1e-5)
            ) <= 1e-5
        );
        assert!(
            max_rel_err(
                &k::rms_norm(&x, Some(&w), 1e-6).unwrap(),
                &ref_rms_norm(&x, &w, 1e-6)
            ) <= 1e-5,
            "rms {shape:?}"
        );
        assert!(
            max_rel_err(
                &k::rms_norm(&x, None, 1e-6).unwrap(),
                &ref_rms_norm(&x, &ones, 1e-6)
            ) <= 1e-5
        );
    }
    for (i, (xs, bs)) in [
        (vec![5usize, 7], vec![7usize]),
        (vec![3, 4, 6], vec![4, 6]),
        (vec![33, 65], vec![65]),
    ]
    .into_iter()
    .enumerate()
    {
        let x = rand_t(&xs, 500 + i as u64, 2.0, DType::F32);
        let b = rand_t(&bs, 600 + i as u64, 2.0, DType::F32);
        assert!(max_rel_err(&k::add_rows(&x, &b).unwrap(), &x.broadcast_add(&b).unwrap()) <= 1e-6);
    }
    for (i, t) in [1usize, 2, 7, 33].into_iter().enumerate() {
        let s = rand_t(&[2, 3, t, t], 300 + i as u64, 4.0, DType::F32);
        assert!(
            max_rel_err(
                &k::causal_softmax(&s, 0.37).unwrap(),
                &ref_causal_softmax(&s, 0.37)
            ) <= 1e-5,
            "softmax T={t}"
        );
    }
    for (i, (n, v)) in [(1usize, 2usize), (17, 5), (33, 257)]
        .into_iter()
        .enumerate()
    {
        let logits = rand_t(&[n, v], 400 + i as u64, 5.0, DType::F32);
        let tg: Vec<u32> = (0..n).map(|r| ((r * 7 + i) % v) as u32).collect();
        let tg = Tensor::from_vec(tg, n, &DEV).unwrap();
        assert!(
            max_rel_err(
                &k::cross_entropy(&logits, &tg).unwrap(),
                &ref_cross_entropy(&logits, &tg)
            ) <= 1e-5,
            "ce {n}x{v}"
        );
    }
}

#[test]
fn non_contiguous_inputs_give_the_same_results() {
    let x = transposed_view(&[3, 9, 6], 1, 2.0, DType::F32);
    let xc = x.contiguous().unwrap();
    let w = rand_t(&[6], 2, 1.0, DType::F32);
    assert_eq!(
        k::gelu(&x).unwrap().to_vec3::<f32>().unwrap(),
        k::gelu(&xc).unwrap().to_vec3::<f32>().unwrap()
    );
    assert!(
        max_rel_err(
            &k::layer_norm(&x, Some(&w), None, 1e-5).unwrap(),
            &ref_layer_norm(&xc, &w, &Tensor::zeros(6, DType::F32, &DEV).unwrap(), 1e-5)
        ) <= 1e-5
    );
    let s = transposed_view(&[2, 5, 5], 3, 2.0, DType::F32);
    assert!(
        max_rel_err(
            &k::causal_softmax(&s, 1.0).unwrap(),
            &ref_causal_softmax(&s.contiguous().unwrap(), 1.0)
        ) <= 1e-5
    );
    let logits = transposed_view(&[4, 6], 4, 2.0, DType::F32);
    let tg = Tensor::new(&[0u32, 5, 2, 3], &DEV).unwrap();
    assert!(
        max_rel_err(
            &k::cross_entropy(&logits, &tg).unwrap(),
            &ref_cross_entropy(&logits.contiguous().unwrap(), &tg)
        ) <= 1e-5
    );
}

/// d(sum(f(inputs) * R)) / d inputs by autograd against central differences, in f64.
fn check_grad(inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Tensor) {
    check_grad_with(inputs, f, &k::ParamGrads::default());
}

/// As `check_grad`, an input's gradient taken from `fused` where a fused node
/// put it there instead of candle's store.
fn check_grad_with(inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Tensor, fused: &k::ParamGrads) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts);
    let r = rand_t(out.dims(), 999, 1.0, DType::F64);
    let scalar = |o: &Tensor| (o * &r).unwrap().sum_all().unwrap();
    let grads = scalar(&out).backward().unwrap();
    for (i, input) in inputs.iter().enumerate() {
        let t = vars[i].as_tensor();
        let g = grads
            .get(t)
            .cloned()
            .or_else(|| fused.take(t))
            .expect("no gradient")
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let base = input.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for j in (0..base.len()).step_by((base.len() / 23).max(1)) {
            let at = |delta: f64| {
                let mut v = base.clone();
                v[j] += delta;
                let mut args = inputs.to_vec();
                args[i] = Tensor::from_vec(v, input.dims(), &DEV).unwrap();
                scalar(&f(&args)).to_scalar::<f64>().unwrap()
            };
            let h = 1e-6;
            let num = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (num - g[j]).abs() <= 1e-7 + 1e-5 * num.abs().max(g[j].abs()),
                "input {i}[{j}]: {} vs {num}",
                g[j]
            );
        }
    }
}

#[test]
fn backward_passes_match_finite_differences_in_f64() {
    let x = rand_t(&[3, 5, 7], 10, 2.0, DType::F64);
    check_grad(std::slice::from_ref(&x), &|a| k::gelu(&a[0]).unwrap());
    check_grad(std::slice::from_ref(&x), &|a| k::relu2(&a[0]).unwrap());
    let w = rand_t(&[7], 11, 1.0, DType::F64);
    let b = rand_t(&[7], 12, 1.0, DType::F64);
    check_grad(&[x.clone(), w.clone(), b], &|a| {
        k::layer_norm(&a[0], Some(&a[1]), Some(&a[2]), 1e-5).unwrap()
    });
    check_grad(std::slice::from_ref(&x), &|a| {
        k::layer_norm(&a[0], None, None, 1e-5).unwrap()
    });
    check_grad(&[x.clone(), w], &|a| {
        k::rms_norm(&a[0], Some(&a[1]), 1e-6).unwrap()
    });
    check_grad(std::slice::from_ref(&x), &|a| {
        k::rms_norm(&a[0], None, 1e-6).unwrap()
    });
    let s = rand_t(&[2, 2, 6, 6], 13, 2.0, DType::F64);
    check_grad(&[s], &|a| k::causal_softmax(&a[0], 0.5).unwrap());
    let logits = rand_t(&[9, 11], 14, 3.0, DType::F64);
    let tg = Tensor::new(&[0u32, 10, 3, 3, 7, 1, 2, 9, 5], &DEV).unwrap();
    check_grad(&[logits], &|a| {
        k::cross_entropy(&a[0], &tg).unwrap().unsqueeze(0).unwrap()
    });
    let pos = rand_t(&[5, 7], 16, 1.0, DType::F64);
    check_grad(&[x.clone(), pos], &|a| k::add_rows(&a[0], &a[1]).unwrap());
    // Through a non-contiguous input too.
    let xt = transposed_view(&[4, 6], 15, 1.0, DType::F64);
    check_grad(&[xt], &|a| k::layer_norm(&a[0], None, None, 1e-5).unwrap());
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let x = rand_t(&[64, 33, 48], 20, 2.0, DType::F32);
    let w = rand_t(&[48], 21, 1.0, DType::F32);
    let run = || {
        let xv = Var::from_tensor(&x).unwrap();
        let wv = Var::from_tensor(&w).unwrap();
        let y = k::layer_norm(xv.as_tensor(), Some(wv.as_tensor()), None, 1e-5).unwrap();
        let g = (y.sqr().unwrap().sum_all().unwrap()).backward().unwrap();
        g.get(wv.as_tensor()).unwrap().to_vec1::<f32>().unwrap()
    };
    same_on_1_and_3_threads(run);
}

#[test]
fn bad_inputs_are_errors() {
    let x = rand_t(&[2, 3], 1, 1.0, DType::F32);
    assert!(k::causal_softmax(&x, 1.0)
        .unwrap_err()
        .to_string()
        .contains("[.., T, T]"));
    let tg = Tensor::new(&[0u32, 7], &DEV).unwrap();
    assert!(k::cross_entropy(&x, &tg)
        .unwrap_err()
        .to_string()
        .contains("outside the vocabulary"));
    let w = rand_t(&[4], 1, 1.0, DType::F32);
    assert!(k::layer_norm(&x, Some(&w), None, 1e-5).is_err());
    let xi = Tensor::new(&[1u32, 2], &DEV).unwrap();
    assert!(k::gelu(&xi)
        .unwrap_err()
        .to_string()
        .contains("unsupported dtype"));
}

#[test]
fn fast_f32_tanh_is_accurate_over_the_whole_range() {
    let mut worst = 0.0f64;
    for i in -200_000..=200_000 {
        let x = i as f32 * 1e-4; // -20 .. 20
        let got = k::tanh_f32(x) as f64;
        worst = worst.max((got - (x as f64).tanh()).abs());
    }
    assert!(worst < 5e-7, "max abs error {worst}");
    assert!(k::tanh_f32(f32::NAN).is_nan());
}

#[test]
fn fast_f32_exp_is_accurate_over_the_range_training_uses() {
    let mut worst = 0.0f64;
    for i in -870_000..=880_000 {
        let x = i as f32 * 1e-4; // -87 .. 88
        let want = (x as f64).exp();
        worst = worst.max(((k::exp_f32(x) as f64) - want).abs() / want);
    }
    assert!(worst < 1e-6, "max relative error {worst}");
    assert_eq!(k::exp_f32(0.0), 1.0);
    assert!(k::exp_f32(-1e30) >= 0.0 && k::exp_f32(-1e30) < 1e-37);
}

/// The fused in-place AdamW against a scalar loop of PyTorch's update written out
/// by hand (f64, then compared in f32), over three steps on an odd size that
/// spans several parallel chunks.
#[test]
fn adamw_update_matches_a_scalar_reference() {
    let n = 3 * (1 << 14) + 7;
    let p = rand_t(&[n], 40, 1.0, DType::F32);
    let (m, v) = (
        Tensor::zeros(n, DType::F32, &DEV).unwrap(),
        Tensor::zeros(n, DType::F32, &DEV).unwrap(),
    );
    let mut rp: Vec<f64> = p
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|&x| x as f64)
        .collect();
    let (mut rm, mut rv) = (vec![0.0f64; n], vec![0.0f64; n]);
    let (b1, b2, eps, lr, wd) = (0.9f64, 0.95f64, 1e-8f64, 0.01f64, 0.1f64);
    for t in 1..=3 {
        let g = rand_t(&[n], 40 + t, 0.5, DType::F32);
        let clip = 0.7f64;
        let (bc1, bc2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        let h = k::AdamwStep {
            clip: clip as f32,
            beta1: b1 as f32,
            beta2: b2 as f32,
            eps: eps as f32,
            step_size: (lr / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            decay: (1.0 - lr * wd) as f32,
        };
        k::adamw_update(&p, &g, &m, &v, &h).unwrap();
        let g = g.to_vec1::<f32>().unwrap();
        for j in 0..n {
            let gj = g[j] as f64 * clip;
            rm[j] = b1 * rm[j] + (1.0 - b1) * gj;
            rv[j] = b2 * rv[j] + (1.0 - b2) * gj * gj;
            let mhat = rm[j] / bc1;
            let vhat = rv[j] / bc2;
            rp[j] = rp[j] * (1.0 - lr * wd) - lr * mhat / (vhat.sqrt() + eps);
        }
    }
    let got = p.to_vec1::<f32>().unwrap();
    let worst = got
        .iter()
        .zip(&rp)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0f64, f64::max);
    assert!(worst < 1e-5, "max abs error {worst}");
    let m_got = m.to_vec1::<f32>().unwrap();
    assert!((m_got[n - 1] as f64 - rm[n - 1]).abs() < 1e-6);
}

#[test]
fn adamw_update_refuses_aliasing_and_mismatches() {
    let p = rand_t(&[64], 50, 1.0, DType::F32);
    let g = rand_t(&[64], 51, 1.0, DType::F32);
    let v = Tensor::zeros(64, DType::F32, &DEV).unwrap();
    let h = k::AdamwStep {
        clip: 1.0,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        step_size: 0.01,
        bc2_sqrt: 1.0,
        decay: 1.0,
    };
    // The first moment sharing the gradient's storage: an error, not a deadlock.
    let err = k::adamw_update(&p, &g, &g.clone(), &v, &h)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shares storage"), "{err}");
    let short = Tensor::zeros(63, DType::F32, &DEV).unwrap();
    let err = k::adamw_update(&p, &g, &short, &v, &h)
        .unwrap_err()
        .to_string();
    assert!(err.contains("first moment has 63 elements"), "{err}");
    let f64m = Tensor::zeros(64, DType::F64, &DEV).unwrap();
    let err = k::adamw_update(&p, &g, &f64m, &v, &h)
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected f32"), "{err}");
}

/// Newton–Schulz written out in f64 with plain loops: X ← G/(‖G‖·s+ε) (Gᵀ when
/// tall), per (a, b, c): A = X Xᵀ, X ← a X + (b A + c A²) X.
fn ref_newton_schulz(
    g: &[f64],
    rows: usize,
    cols: usize,
    coeffs: &[(f32, f32, f32)],
    s: f64,
    eps: f64,
) -> Vec<f64> {
    let tall = rows > cols;
    let (m, n) = if tall { (cols, rows) } else { (rows, cols) };
    let at = |i: usize, j: usize| {
        if tall {
            g[j * cols + i]
        } else {
            g[i * cols + j]
        }
    };
    let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
    let mut x: Vec<Vec<f64>> = (0..m)
        .map(|i| (0..n).map(|j| at(i, j) / (norm * s + eps)).collect())
        .collect();
    let mul = |p: &Vec<Vec<f64>>, q: &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
        (0..p.len())
            .map(|i| {
                (0..q[0].len())
                    .map(|j| (0..q.len()).map(|k| p[i][k] * q[k][j]).sum())
                    .collect()
            })
            .collect()
    };
    for &(a, b, c) in coeffs {
        let xt: Vec<Vec<f64>> = (0..n).map(|j| (0..m).map(|i| x[i][j]).collect()).collect();
        let gram = mul(&x, &xt);
        let gram2 = mul(&gram, &gram);
        let poly: Vec<Vec<f64>> = (0..m)
            .map(|i| {
                (0..m)
                    .map(|j| b as f64 * gram[i][j] + c as f64 * gram2[i][j])
                    .collect()
            })
            .collect();
        let px = mul(&poly, &x);
        x = (0..m)
            .map(|i| (0..n).map(|j| a as f64 * x[i][j] + px[i][j]).collect())
            .collect();
    }
    let mut out = vec![0.0; rows * cols];
    for i in 0..m {
        for j in 0..n {
            if tall {
                out[j * cols + i] = x[i][j]
            } else {
                out[i * cols + j] = x[i][j]
            }
        }
    }
    out
}

const NS_STANDARD: (f32, f32, f32) = (3.4445, -4.7750, 2.0315);

#[test]
fn newton_schulz_matches_a_naive_f64_reference() {
    // Wide, tall, square and odd shapes; the standard coefficients and a varied set.
    let varied = [
        (8.156_554, -22.483_293, 15.878_77),
        (4.042_93, -2.808_917_5, 0.500_017_8),
        (2.346_541_3, -1.709_782_8, 0.423_235_5),
    ];
    for (i, &(rows, cols)) in [(7, 19), (19, 7), (16, 16), (1, 5), (33, 64), (64, 33)]
        .iter()
        .enumerate()
    {
        let g = rand_t(&[rows, cols], 30 + i as u64, 3.0, DType::F32);
        let gv: Vec<f64> = g
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (coeffs, s, eps) in [
            (vec![NS_STANDARD; 5], 1.0, 1e-7),
            (varied.to_vec(), 1.02, 1e-6),
        ] {
            let got = k::newton_schulz(&g, &coeffs, s as f32, eps as f32).unwrap();
            assert_eq!(got.dims(), &[rows, cols]);
            let want = Tensor::from_vec(
                ref_newton_schulz(&gv, rows, cols, &coeffs, s, eps),
                (rows, cols),
                &DEV,
            )
            .unwrap();
            let err = max_rel_err(&got, &want);
            assert!(err < 1e-5, "{rows}x{cols}: relative error {err}");
        }
    }
    // The standard iteration does push singular values towards 1: XᵀX ≈ I for a wide X is
    // too much to ask of 5 steps, but every entry of X Xᵀ's diagonal lands in (0.5, 1.5).
    let g = rand_t(&[8, 40], 40, 1.0, DType::F32);
    let x = k::newton_schulz(&g, &[NS_STANDARD; 5], 1.0, 1e-7).unwrap();
    let gram = x.matmul(&x.t().unwrap()).unwrap();
    for d in gram
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, r)| r[i])
    {
        assert!((0.5..1.5).contains(&d), "diagonal {d}");
    }
}

#[test]
fn newton_schulz_reads_any_layout_and_any_thread_count() {
    let view = transposed_view(&[24, 40], 41, 1.0, DType::F32);
    let copy = view.contiguous().unwrap();
    let coeffs = [NS_STANDARD; 5];
    let a = k::newton_schulz(&view, &coeffs, 1.0, 1e-7).unwrap();
    let b = k::newton_schulz(&copy, &coeffs, 1.0, 1e-7).unwrap();
    assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    let big = rand_t(&[96, 200], 42, 1.0, DType::F32);
    let run = || {
        k::newton_schulz(&big, &coeffs, 1.0, 1e-7)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    };
    same_on_1_and_3_threads(run);
}

#[test]
fn newton_schulz_refuses_what_it_cannot_orthogonalise() {
    let g = rand_t(&[4, 5], 43, 1.0, DType::F64);
    assert!(k::newton_schulz(&g, &[NS_STANDARD], 1.0, 1e-7)
        .unwrap_err()
        .to_string()
        .contains("f32"));
    let g3 = rand_t(&[2, 4, 5], 44, 1.0, DType::F32);
    assert!(k::newton_schulz(&g3, &[NS_STANDARD], 1.0, 1e-7).is_err());
    // No coefficients: just the normalisation.
    let g = rand_t(&[3, 4], 45, 1.0, DType::F32);
    let x = k::newton_schulz(&g, &[], 1.0, 0.0).unwrap();
    let n: f32 = x.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
    assert!((n - 1.0).abs() < 1e-5, "{n}");
}

fn ref_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
    let (inner, out) = w.dims2().unwrap();
    let mut dims = x.dims().to_vec();
    let rows = x.elem_count() / inner;
    let y = x.reshape((rows, inner)).unwrap().matmul(w).unwrap();
    let y = match b {
        Some(b) => y.broadcast_add(b).unwrap(),
        None => y,
    };
    *dims.last_mut().unwrap() = out;
    y.reshape(dims).unwrap()
}

#[test]
fn linear_matches_matmul_plus_bias() {
    for (i, (lead, inner, out)) in [
        (vec![5], 7, 3),
        (vec![2, 9], 16, 33),
        (vec![3, 4, 5], 1, 8),
        (vec![1], 64, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let mut xs = lead.clone();
        xs.push(inner);
        let x = rand_t(&xs, 50 + i as u64, 2.0, DType::F32);
        let w = rand_t(&[inner, out], 60 + i as u64, 1.0, DType::F32);
        let b = rand_t(&[out], 70 + i as u64, 1.0, DType::F32);
        for bias in [Some(&b), None] {
            let got = k::linear(&x, &w, bias).unwrap();
            let err = max_rel_err(&got, &ref_linear(&x, &w, bias));
            assert!(err < 1e-5, "{xs:?} x [{inner}, {out}]: {err}");
        }
    }
    // A transposed weight view (the tied head's wteᵀ) and a transposed input.
    let w = transposed_view(&[12, 20], 80, 1.0, DType::F32);
    let x = transposed_view(&[6, 12], 81, 1.0, DType::F32);
    let err = max_rel_err(&k::linear(&x, &w, None).unwrap(), &ref_linear(&x, &w, None));
    assert!(err < 1e-5, "{err}");
}

#[test]
fn linear_backward_matches_finite_differences() {
    let x = rand_t(&[2, 3, 5], 82, 1.0, DType::F64);
    let w = rand_t(&[5, 4], 83, 1.0, DType::F64);
    let b = rand_t(&[4], 84, 1.0, DType::F64);
    check_grad(&[x.clone(), w.clone(), b], &|a| {
        k::linear(&a[0], &a[1], Some(&a[2])).unwrap()
    });
    check_grad(&[x, w], &|a| k::linear(&a[0], &a[1], None).unwrap());
    let wt = transposed_view(&[5, 3], 85, 1.0, DType::F64);
    check_grad(&[rand_t(&[4, 5], 86, 1.0, DType::F64), wt], &|a| {
        k::linear(&a[0], &a[1], None).unwrap()
    });
}

#[test]
fn linear_is_independent_of_the_thread_count_and_refuses_bad_shapes() {
    let x = rand_t(&[64, 48], 87, 1.0, DType::F32);
    let w = rand_t(&[48, 80], 88, 1.0, DType::F32);
    let b = rand_t(&[80], 89, 1.0, DType::F32);
    let run = || {
        let (xv, wv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
        let y = k::linear(xv.as_tensor(), wv.as_tensor(), Some(&b)).unwrap();
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        (
            y.to_vec2::<f32>().unwrap(),
            g.get(wv.as_tensor()).unwrap().to_vec2::<f32>().unwrap(),
            g.get(xv.as_tensor()).unwrap().to_vec2::<f32>().unwrap(),
        )
    };
    same_on_1_and_3_threads(run);
    let err = k::linear(&x, &rand_t(&[47, 80], 90, 1.0, DType::F32), None).unwrap_err();
    assert!(
        err.to_string()
            .contains("does not end in the weight's 47 rows"),
        "{err}"
    );
    let err = k::linear(&x, &w, Some(&rand_t(&[79], 91, 1.0, DType::F32))).unwrap_err();
    assert!(err.to_string().contains("bias [79]"), "{err}");
    let err = k::linear(&x.to_dtype(DType::F64).unwrap(), &w, None).unwrap_err();
    assert!(err.to_string().contains("expected f64"), "{err}");
}

#[test]
fn the_weight_gradient_over_many_rows_is_summed_in_chunks_to_the_reference() {
    // 2 full chunks of the split and a short third one.
    let rows = 2 * 2048 + 37;
    let x = rand_t(&[rows, 6], 92, 1.0, DType::F32);
    let w = rand_t(&[6, 5], 93, 1.0, DType::F32);
    let g = rand_t(&[rows, 5], 94, 1.0, DType::F32);
    let run = || {
        let wv = Var::from_tensor(&w).unwrap();
        let y = k::linear(&x, wv.as_tensor(), None).unwrap();
        // d(sum(y * g))/dw = xᵀ g.
        let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        grads.get(wv.as_tensor()).unwrap().to_vec2::<f32>().unwrap()
    };
    same_on_1_and_3_threads(run);
    let got = run();
    // The reference in f64, one sum per element in row order.
    let (xs, gs) = (x.to_vec2::<f32>().unwrap(), g.to_vec2::<f32>().unwrap());
    for i in 0..6 {
        for j in 0..5 {
            let want: f64 = (0..rows).map(|r| xs[r][i] as f64 * gs[r][j] as f64).sum();
            let err = (got[i][j] as f64 - want).abs() / want.abs().max(1.0);
            assert!(err < 1e-5, "dw[{i}][{j}] = {} against {want}", got[i][j]);
        }
    }
}

#[test]
fn the_backward_products_the_bench_times_are_the_transposed_matmuls() {
    let x = rand_t(&[2 * 2048 + 5, 12], 95, 1.0, DType::F32);
    let w = rand_t(&[12, 7], 96, 1.0, DType::F32);
    let g = rand_t(&[2 * 2048 + 5, 7], 97, 1.0, DType::F32);
    for p in [k::Precision::F32, k::Precision::Bf16] {
        // bf16 products carry ~3 significant digits.
        let tol = if p == k::Precision::F32 { 1e-5 } else { 2e-2 };
        let dx = p.linear_input_grad(&g, &w).unwrap();
        let err = max_rel_err(&dx, &g.matmul(&w.t().unwrap()).unwrap());
        assert!(err < tol, "{p:?} g wᵀ: {err}");
        let dw = p.linear_weight_grad(&x, &g).unwrap();
        let err = max_rel_err(&dw, &x.t().unwrap().matmul(&g).unwrap());
        assert!(err < tol, "{p:?} xᵀ g: {err}");
    }
    let err = k::Precision::F32
        .linear_weight_grad(&x, &g.narrow(0, 0, 9).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("differ in rows"), "{err}");
}

/// Packed attention the long way: narrow q, k, v out of [B, T, 3D], split heads,
/// masked softmax of the scaled scores, recombine.
fn ref_attention_packed(qkv: &Tensor, heads: usize) -> Tensor {
    let (b, t, d3) = qkv.dims3().unwrap();
    let d = d3 / 3;
    let hd = d / heads;
    let part = |i: usize| {
        qkv.narrow(2, i * d, d)
            .unwrap()
            .reshape((b, t, heads, hd))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let (q, k, v) = (part(0), part(1), part(2));
    let s = q.matmul(&k.t().unwrap().contiguous().unwrap()).unwrap();
    let p = ref_causal_softmax(&s, 1.0 / (hd as f64).sqrt());
    p.matmul(&v)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((b, t, d))
        .unwrap()
}

#[test]
fn packed_attention_matches_the_composed_ops() {
    for (i, &(b, t, heads, hd)) in [
        (2, 5, 2, 3),
        (1, 17, 3, 8),
        (3, 1, 1, 4),
        (2, 33, 4, 16),
        // Row tiles of 6, whole and partial (64 = 10 x 6 + 4), and 150 = 25 x 6.
        (1, 64, 2, 4),
        (2, 150, 2, 8),
    ]
    .iter()
    .enumerate()
    {
        let qkv = rand_t(&[b, t, 3 * heads * hd], 100 + i as u64, 2.0, DType::F32);
        let got = k::causal_attention_packed(&qkv, heads).unwrap();
        let err = max_rel_err(&got, &ref_attention_packed(&qkv, heads));
        assert!(err < 1e-5, "{b}x{t}, {heads} heads of {hd}: {err}");
    }
    // The f32 backward (the vector kernels where the CPU has them; the
    // finite-difference checks run in f64) against candle's autograd through
    // the composed ops, at the model's head size and past whole row tiles.
    for (i, &(b, t, heads, hd)) in [(2, 70, 2, 64), (1, 13, 3, 8), (1, 256, 1, 64)]
        .iter()
        .enumerate()
    {
        let qkv = rand_t(&[b, t, 3 * heads * hd], 150 + i as u64, 1.0, DType::F32);
        let r = rand_t(&[b, t, heads * hd], 160 + i as u64, 1.0, DType::F32);
        let fused = with_grads(&[&qkv], &r, &|x| {
            k::causal_attention_packed(x[0], heads).unwrap()
        });
        let composed = with_grads(&[&qkv], &r, &|x| ref_attention_packed(x[0], heads));
        assert_same_with_grads(
            fused,
            composed,
            2e-5,
            &format!("{b}x{t}, {heads} heads of {hd}"),
        );
    }
    // A non-contiguous input gives the same result.
    let qkv = rand_t(&[2, 9, 12], 110, 1.0, DType::F32);
    let view = qkv
        .transpose(0, 1)
        .unwrap()
        .contiguous()
        .unwrap()
        .transpose(0, 1)
        .unwrap();
    assert!(!view.is_contiguous());
    let a = k::causal_attention_packed(&view, 2)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = k::causal_attention_packed(&qkv, 2)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn the_attention_backward_alone_is_the_autograd_gradient() {
    for dtype in [DType::F32, DType::F64] {
        let qkv = rand_t(&[2, 37, 24], 170, 1.0, dtype);
        let r = rand_t(&[2, 37, 8], 171, 1.0, dtype);
        let (_, g) = with_grads(&[&qkv], &r, &|x| {
            k::causal_attention_packed(x[0], 2).unwrap()
        });
        let alone = k::causal_attention_packed_grad(&qkv, &r, 2).unwrap();
        assert_eq!(max_rel_err(&alone, &g[0]), 0.0, "{dtype:?}");
    }
    let err = k::causal_attention_packed_grad(
        &rand_t(&[1, 4, 10], 172, 1.0, DType::F32),
        &rand_t(&[1, 4, 3], 173, 1.0, DType::F32),
        2,
    )
    .unwrap_err();
    assert!(err.to_string().contains("not 3 x heads (2)"), "{err}");
}

#[test]
fn packed_attention_backward_matches_finite_differences() {
    let qkv = rand_t(&[2, 6, 12], 111, 1.0, DType::F64);
    check_grad(&[qkv], &|a| k::causal_attention_packed(&a[0], 2).unwrap());
    let qkv = rand_t(&[1, 9, 9], 112, 1.5, DType::F64);
    check_grad(&[qkv], &|a| k::causal_attention_packed(&a[0], 1).unwrap());
    // 25 row tiles of 6, each row's scores past whole 16-wide vectors.
    let qkv = rand_t(&[1, 150, 12], 115, 1.0, DType::F64);
    check_grad(&[qkv], &|a| k::causal_attention_packed(&a[0], 2).unwrap());
}

#[test]
fn packed_attention_is_causal_thread_independent_and_checks_shapes() {
    // Changing the last position changes no earlier output.
    let qkv = rand_t(&[1, 8, 12], 113, 1.0, DType::F32);
    let mut v = qkv.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for x in &mut v[7 * 12..] {
        *x += 3.0;
    }
    let moved = Tensor::from_vec(v, (1, 8, 12), &DEV).unwrap();
    let first7 = |t: &Tensor| {
        let y = k::causal_attention_packed(t, 2).unwrap();
        y.narrow(1, 0, 7)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (a, b) = (first7(&qkv), first7(&moved));
    assert_eq!(a, b);
    let qkv = rand_t(&[4, 40, 48], 114, 1.0, DType::F32);
    let run = || {
        let xv = Var::from_tensor(&qkv).unwrap();
        let y = k::causal_attention_packed(xv.as_tensor(), 4).unwrap();
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        (
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            g.get(xv.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        )
    };
    same_on_1_and_3_threads(run);
    let err =
        k::causal_attention_packed(&rand_t(&[1, 4, 10], 115, 1.0, DType::F32), 2).unwrap_err();
    assert!(err.to_string().contains("not 3 x heads (2)"), "{err}");
    assert!(k::causal_attention_packed(&rand_t(&[4, 12], 116, 1.0, DType::F32), 2).is_err());
}

/// Rotary the composed way (what the host's op used to be): narrow the halves,
/// broadcast cos and sin over [T, hd/2], recombine.
fn ref_rotary(x: &Tensor, base: f64) -> Tensor {
    let dims = x.dims();
    let (t, hd) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let half = hd / 2;
    let ang: Vec<f64> = (0..t)
        .flat_map(|p| (0..half).map(move |i| p as f64 / base.powf(2.0 * i as f64 / hd as f64)))
        .collect();
    let ang = Tensor::from_vec(ang, (t, half), &DEV)
        .unwrap()
        .to_dtype(x.dtype())
        .unwrap();
    let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
    let x1 = x.narrow(D::Minus1, 0, half).unwrap();
    let x2 = x.narrow(D::Minus1, half, half).unwrap();
    let r1 = (x1.broadcast_mul(&cos).unwrap() - x2.broadcast_mul(&sin).unwrap()).unwrap();
    let r2 = (x1.broadcast_mul(&sin).unwrap() + x2.broadcast_mul(&cos).unwrap()).unwrap();
    Tensor::cat(&[r1, r2], D::Minus1).unwrap()
}

#[test]
fn rotary_matches_the_composed_ops_and_its_backward_is_the_inverse_rotation() {
    for (i, shape) in [
        vec![2, 3, 7, 4],
        vec![1, 1, 33, 16],
        vec![5, 2],
        vec![2, 9, 64],
    ]
    .iter()
    .enumerate()
    {
        let x = rand_t(shape, 120 + i as u64, 2.0, DType::F32);
        let err = max_rel_err(&k::rotary(&x, 10000.0).unwrap(), &ref_rotary(&x, 10000.0));
        assert!(err < 1e-5, "{shape:?}: {err}");
    }
    let view = transposed_view(&[2, 6, 8], 125, 1.0, DType::F32);
    let err = max_rel_err(
        &k::rotary(&view, 100.0).unwrap(),
        &ref_rotary(&view.contiguous().unwrap(), 100.0),
    );
    assert!(err < 1e-5, "{err}");
    check_grad(&[rand_t(&[2, 5, 6], 126, 1.0, DType::F64)], &|a| {
        k::rotary(&a[0], 500.0).unwrap()
    });
    // A rotation keeps every pair's length.
    let x = rand_t(&[1, 4, 10], 127, 1.0, DType::F32);
    let (a, b) = (values_f64(&x), values_f64(&k::rotary(&x, 10000.0).unwrap()));
    for (ra, rb) in a.chunks(10).zip(b.chunks(10)) {
        for i in 0..5 {
            let (la, lb) = (ra[i].hypot(ra[i + 5]), rb[i].hypot(rb[i + 5]));
            assert!((la - lb).abs() < 1e-6, "{la} vs {lb}");
        }
    }
    assert!(
        k::rotary(&rand_t(&[2, 3, 5], 128, 1.0, DType::F32), 10000.0)
            .unwrap_err()
            .to_string()
            .contains("even")
    );
    assert!(k::rotary(&rand_t(&[4], 129, 1.0, DType::F32), 10000.0).is_err());
    assert!(k::rotary(&rand_t(&[2, 4], 130, 1.0, DType::F32), 0.5)
        .unwrap_err()
        .to_string()
        .contains("base"));
}

fn values_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

// ---- the GPU path's gemm-shaped ops, run on the CPU against the fused kernels ----

/// The gradients of `sum(f(inputs) * probe)` for every input.
fn grads_of(inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Tensor) -> Vec<Tensor> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts);
    let probe = rand_t(y.dims(), 999, 1.0, y.dtype());
    let g = (y * probe).unwrap().sum_all().unwrap().backward().unwrap();
    ts.iter().map(|t| g.get(t).unwrap().clone()).collect()
}

#[test]
fn the_gpu_paths_gemm_ops_match_the_fused_cpu_kernels() {
    // linear: 3-D input with and without bias, forward and every gradient.
    let x = rand_t(&[2, 5, 7], 200, 1.0, DType::F32);
    let w = rand_t(&[7, 3], 201, 1.0, DType::F32);
    let b = rand_t(&[3], 202, 1.0, DType::F32);
    let fused = |t: &[Tensor]| k::linear(&t[0], &t[1], Some(&t[2])).unwrap();
    let composed = |t: &[Tensor]| k::gemm_ops::linear(&t[0], &t[1], Some(&t[2])).unwrap();
    let ins = [x.clone(), w.clone(), b];
    assert!(max_rel_err(&composed(&ins), &fused(&ins)) < 1e-5);
    for (g, want) in grads_of(&ins, &composed).iter().zip(grads_of(&ins, &fused)) {
        assert!(max_rel_err(g, &want) < 1e-5);
    }
    let no_bias = k::gemm_ops::linear(&x, &w, None).unwrap();
    assert!(max_rel_err(&no_bias, &k::linear(&x, &w, None).unwrap()) < 1e-5);
    let e = k::gemm_ops::linear(&x, &w.t().unwrap(), None).unwrap_err();
    assert!(e.to_string().contains("does not match the weight"), "{e}");

    // attention: odd head sizes and T = 1, forward and the input's gradient.
    for (i, &(bs, t, heads, hd)) in [(2, 5, 2, 3), (1, 17, 3, 8), (3, 1, 1, 4)]
        .iter()
        .enumerate()
    {
        let qkv = rand_t(&[bs, t, 3 * heads * hd], 210 + i as u64, 2.0, DType::F32);
        let fused = |t: &[Tensor]| k::causal_attention_packed(&t[0], heads).unwrap();
        let composed = |t: &[Tensor]| k::gemm_ops::causal_attention_packed(&t[0], heads).unwrap();
        let ins = [qkv];
        assert!(max_rel_err(&composed(&ins), &fused(&ins)) < 1e-5);
        let (g, want) = (grads_of(&ins, &composed), grads_of(&ins, &fused));
        assert!(max_rel_err(&g[0], &want[0]) < 1e-4, "{bs}x{t}x{heads}x{hd}");
    }

    // Newton–Schulz: wide and tall, against the fused CPU iteration.
    for (i, &(rows, cols)) in [(7, 19), (19, 7), (16, 16)].iter().enumerate() {
        let g = rand_t(&[rows, cols], 220 + i as u64, 3.0, DType::F32);
        let coeffs = vec![NS_STANDARD; 5];
        let got = k::gemm_ops::newton_schulz(&g, &coeffs, 1.0, 1e-7).unwrap();
        let want = k::newton_schulz(&g, &coeffs, 1.0, 1e-7).unwrap();
        assert!(max_rel_err(&got, &want) < 1e-4, "{rows}x{cols}");
    }
}

/// `f` of fresh variables for `inputs`, and the gradients of `Σ f(inputs) ⊙ r`.
fn with_grads(
    inputs: &[&Tensor],
    r: &Tensor,
    f: &dyn Fn(&[&Tensor]) -> Tensor,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
    let y = f(&ts);
    let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let g = ts.iter().map(|t| grads.get(t).unwrap().clone()).collect();
    (y, g)
}

/// Two (output, gradients) pairs agree within `tol` (relative).
fn assert_same_with_grads(
    a: (Tensor, Vec<Tensor>),
    b: (Tensor, Vec<Tensor>),
    tol: f64,
    what: &str,
) {
    assert!(max_rel_err(&a.0, &b.0) < tol, "{what}: output");
    for (i, (x, y)) in a.1.iter().zip(&b.1).enumerate() {
        assert!(max_rel_err(x, y) < tol, "{what}: gradient {i}");
    }
}

#[test]
fn fused_linear_activations_match_linear_then_the_activation_with_their_gradients() {
    // Values and gradients (x, w, b) against the two separate ops, in f32 and f64.
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
        let x = rand_t(&[3, 7, 24], 120, 1.0, dtype);
        let w = rand_t(&[24, 40], 121, 0.3, dtype);
        let b = rand_t(&[40], 122, 0.3, dtype);
        let r = rand_t(&[3, 7, 40], 123, 1.0, dtype);
        type Op = fn(&Tensor, &Tensor, &Tensor) -> Tensor;
        let fused: [(&str, Op, Op); 2] = [
            (
                "gelu",
                |x, w, b| k::linear_gelu(x, w, b).unwrap(),
                |x, w, b| k::gelu(&k::linear(x, w, Some(b)).unwrap()).unwrap(),
            ),
            (
                "relu2",
                |x, w, b| k::linear_relu2(x, w, b).unwrap(),
                |x, w, b| k::relu2(&k::linear(x, w, Some(b)).unwrap()).unwrap(),
            ),
        ];
        for (name, f, reference) in fused {
            let run = |op: Op| with_grads(&[&x, &w, &b], &r, &|t| op(t[0], t[1], t[2]));
            let (a, e) = (run(f), run(reference));
            // The fused node sums the bias's gradient as it writes the
            // activation's (21 rows: a full chunk of 16 and a partial one);
            // the two ops sum it afterwards. Same order, so the same bits.
            assert_eq!(
                values_f64(&a.1[2]),
                values_f64(&e.1[2]),
                "{name} {dtype:?}: bias gradient"
            );
            assert_same_with_grads(a, e, tol, &format!("{name} {dtype:?}"));
        }
    }
    let (x, w, b) = (
        rand_t(&[2, 3, 5], 124, 1.0, DType::F64),
        rand_t(&[5, 4], 125, 0.5, DType::F64),
        rand_t(&[4], 126, 0.5, DType::F64),
    );
    check_grad(&[x.clone(), w.clone(), b.clone()], &|a| {
        k::linear_gelu(&a[0], &a[1], &a[2]).unwrap()
    });
    let err = k::linear_gelu(&x, &w, &rand_t(&[5], 127, 1.0, DType::F64)).unwrap_err();
    assert!(err.to_string().contains("bias [5]"), "{err}");
}

#[test]
fn projected_attention_matches_the_projection_then_the_attention_with_gradients() {
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
        // Past 64 rows, the last row tile partial.
        let x = rand_t(&[2, 70, 16], 130, 1.0, dtype);
        let w = rand_t(&[16, 48], 131, 0.3, dtype);
        let b = rand_t(&[48], 132, 0.3, dtype);
        let r = rand_t(&[2, 70, 16], 133, 1.0, dtype);
        let fused = with_grads(&[&x, &w, &b], &r, &|t| {
            k::projected_causal_attention(t[0], t[1], t[2], 2).unwrap()
        });
        let composed = with_grads(&[&x, &w, &b], &r, &|t| {
            k::causal_attention_packed(&k::linear(t[0], t[1], Some(t[2])).unwrap(), 2).unwrap()
        });
        assert_same_with_grads(fused.clone(), composed.clone(), tol, &format!("{dtype:?}"));
        // The fused node adds the bias as the attention gathers each head,
        // the composed one in gemm's `bias + product`: one rounding of the
        // same sum, so equal, not merely close.
        let values = |(y, g): &(Tensor, Vec<Tensor>)| {
            std::iter::once(y)
                .chain(g)
                .map(|t| t.to_dtype(DType::F64).unwrap().flatten_all().unwrap())
                .map(|t| t.to_vec1::<f64>().unwrap())
                .collect::<Vec<_>>()
        };
        assert!(values(&fused) == values(&composed), "{dtype:?}: not equal");
    }
    let (x, w, b) = (
        rand_t(&[1, 6, 4], 134, 1.0, DType::F64),
        rand_t(&[4, 12], 135, 0.5, DType::F64),
        rand_t(&[12], 136, 0.5, DType::F64),
    );
    check_grad(&[x.clone(), w.clone(), b.clone()], &|a| {
        k::projected_causal_attention(&a[0], &a[1], &a[2], 2).unwrap()
    });
    let err = k::projected_causal_attention(&x, &w, &b, 5).unwrap_err();
    assert!(err.to_string().contains("not 3 x heads (5)"), "{err}");
}

#[test]
fn the_residual_projection_matches_the_add_of_a_linear_with_gradients() {
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
        let x = rand_t(&[3, 7, 24], 140, 1.0, dtype);
        let w = rand_t(&[24, 16], 141, 0.3, dtype);
        let b = rand_t(&[16], 142, 0.3, dtype);
        let res = rand_t(&[3, 7, 16], 143, 1.0, dtype);
        let r = rand_t(&[3, 7, 16], 144, 1.0, dtype);
        let inputs = [&x, &w, &b, &res];
        let fused = with_grads(&inputs, &r, &|t| {
            k::linear_residual(t[0], t[1], t[2], t[3]).unwrap()
        });
        let composed = with_grads(&inputs, &r, &|t| {
            (t[3] + k::linear(t[0], t[1], Some(t[2])).unwrap()).unwrap()
        });
        assert_same_with_grads(fused, composed, tol, &format!("{dtype:?}"));
    }
    let (x, w, b, res) = (
        rand_t(&[2, 3, 5], 145, 1.0, DType::F64),
        rand_t(&[5, 4], 146, 0.5, DType::F64),
        rand_t(&[4], 147, 0.5, DType::F64),
        rand_t(&[2, 3, 4], 148, 1.0, DType::F64),
    );
    check_grad(&[x.clone(), w.clone(), b.clone(), res.clone()], &|a| {
        k::linear_residual(&a[0], &a[1], &a[2], &a[3]).unwrap()
    });
    let err =
        k::linear_residual(&x, &w, &b, &rand_t(&[2, 3, 5], 149, 1.0, DType::F64)).unwrap_err();
    assert!(err.to_string().contains("is not the output"), "{err}");
}

/// A block's input and parameters (`[B, T, D]`, hidden width `h`), in
/// `BlockParams` order.
fn block_inputs(b: usize, t: usize, d: usize, h: usize, dtype: DType) -> Vec<Tensor> {
    let shapes: [&[usize]; 13] = [
        &[b, t, d],
        &[d],
        &[d],
        &[d, 3 * d],
        &[3 * d],
        &[d, d],
        &[d],
        &[d],
        &[d],
        &[d, h],
        &[h],
        &[h, d],
        &[d],
    ];
    shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let t = rand_t(s, 300 + i as u64, 0.5, dtype);
            // Gains near 1, as trained ones are.
            if i == 1 || i == 7 {
                (t + 1.0).unwrap()
            } else {
                t
            }
        })
        .collect()
}

fn try_fused_block(
    a: &[Tensor],
    heads: usize,
    fused: &Arc<k::ParamGrads>,
) -> candle_core::Result<Tensor> {
    let p = k::BlockParams {
        ln_1: [&a[1], &a[2]],
        attn: [&a[3], &a[4]],
        attn_proj: [&a[5], &a[6]],
        ln_2: [&a[7], &a[8]],
        fc: [&a[9], &a[10]],
        mlp_proj: [&a[11], &a[12]],
    };
    k::reference_block(&a[0], &p, heads, 1e-5, fused)
}

fn fused_block(a: &[Tensor], heads: usize, fused: &Arc<k::ParamGrads>) -> Tensor {
    try_fused_block(a, heads, fused).unwrap()
}

/// The block as the reference model composes it, node by node.
fn composed_block(a: &[Tensor], heads: usize) -> Tensor {
    let h1 = k::layer_norm(&a[0], Some(&a[1]), Some(&a[2]), 1e-5).unwrap();
    let att = k::projected_causal_attention(&h1, &a[3], &a[4], heads).unwrap();
    let x2 = k::linear_residual(&att, &a[5], &a[6], &a[0]).unwrap();
    let h2 = k::layer_norm(&x2, Some(&a[7]), Some(&a[8]), 1e-5).unwrap();
    let u = k::linear_gelu(&h2, &a[9], &a[10]).unwrap();
    k::linear_residual(&u, &a[11], &a[12], &x2).unwrap()
}

/// The output and every input's gradient of `sum(block(a) * r)`, each from
/// candle's store or, where a fused node put it, from the `ParamGrads` `f` is
/// given; an input with both is an error.
fn block_and_grads(
    a: &[Tensor],
    f: &dyn Fn(&[Tensor], &Arc<k::ParamGrads>) -> Tensor,
) -> Vec<Vec<f32>> {
    let fused = Arc::new(k::ParamGrads::default());
    let vars: Vec<Var> = a.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts, &fused);
    let r = rand_t(y.dims(), 399, 1.0, DType::F32);
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    std::iter::once(flat(&y))
        .chain(vars.iter().map(
            |v| match (grads.get(v.as_tensor()), fused.take(v.as_tensor())) {
                (Some(g), None) => flat(g),
                (None, Some(g)) => flat(&g),
                (g, f) => panic!("store {}, fused {}", g.is_some(), f.is_some()),
            },
        ))
        .collect()
}

#[test]
fn the_fused_block_equals_the_composed_block_in_value_and_every_gradient() {
    // Two blocks of the attention's 64 rows, the second partial; hidden 4D.
    let a = block_inputs(2, 70, 16, 64, DType::F32);
    let fused = block_and_grads(&a, &|a, g| fused_block(a, 4, g));
    let composed = block_and_grads(&a, &|a, _| composed_block(a, 4));
    assert_eq!(fused.len(), 14);
    for (i, (f, c)) in fused.iter().zip(&composed).enumerate() {
        // The same kernels in the same order: equal, not merely close.
        assert!(
            f == c,
            "output {i} (0: value, then input, then parameters) differs"
        );
        assert!(f.iter().any(|v| *v != 0.0), "output {i} is all zeros");
    }
    same_on_1_and_3_threads(|| block_and_grads(&a, &|a, g| fused_block(a, 4, g)));
    // The same parameters in two blocks: the second backward adds its
    // gradients to the first's, as candle's accumulation does.
    let twice = |block: &dyn Fn(&[Tensor]) -> Tensor, a: &[Tensor]| {
        let mut b = a.to_vec();
        b[0] = block(a);
        block(&b)
    };
    let fused = block_and_grads(&a, &|a, g| twice(&|a| fused_block(a, 4, g), a));
    let composed = block_and_grads(&a, &|a, _| twice(&|a| composed_block(a, 4), a));
    assert!(
        fused == composed,
        "two blocks sharing their parameters differ"
    );
}

#[test]
fn the_fused_blocks_gradients_match_finite_differences() {
    let a = block_inputs(1, 9, 8, 24, DType::F64);
    let fused = Arc::new(k::ParamGrads::default());
    check_grad_with(&a, &|a| fused_block(a, 2, &fused), &fused);
}

#[test]
fn the_fused_block_refuses_parameters_of_the_wrong_shape() {
    let mut a = block_inputs(1, 4, 8, 16, DType::F32);
    a[9] = rand_t(&[7, 16], 1, 1.0, DType::F32);
    let err = try_fused_block(&a, 2, &Default::default()).unwrap_err();
    assert!(err.to_string().contains("weight's 7 rows"), "{err}");
}

#[test]
fn no_attention_output_or_gradient_reads_a_later_position_even_a_huge_one() {
    let (t, cut) = (70, 40);
    let clean = rand_t(&[1, t, 3 * 8], 400, 1.0, DType::F32);
    // Every later position's q, k and v poisoned with huge values (their
    // scores still finite in f32). A NaN or an overflow there does reach the
    // early rows, as in any masked matmul (0 · NaN is NaN); it also makes the
    // loss non-finite, which ends the run.
    let poisoned = |v: f32| {
        let early = clean.narrow(1, 0, cut).unwrap();
        let late = Tensor::full(v, (1, t - cut, 3 * 8), &DEV).unwrap();
        Tensor::cat(&[&early, &late], 1).unwrap()
    };
    let early_rows = |qkv: &Tensor| {
        let v = Var::from_tensor(qkv).unwrap();
        let y = k::causal_attention_packed(v.as_tensor(), 2).unwrap();
        // Only the early outputs feed the loss.
        let loss = y.narrow(1, 0, cut).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        let g = g.get(v.as_tensor()).unwrap().narrow(1, 0, cut).unwrap();
        let flat = |x: &Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (flat(&y.narrow(1, 0, cut).unwrap()), flat(&g))
    };
    let want = early_rows(&clean);
    for v in [1e15, -1e15, 1e18] {
        let got = early_rows(&poisoned(v));
        assert!(
            got.0 == want.0,
            "an early output read a later position ({v})"
        );
        assert!(
            got.1 == want.1,
            "an early gradient read a later position ({v})"
        );
    }
}
