//! The reference trainer: gradients against finite differences, gradient flow to
//! every parameter, a smoke run that learns, determinism, checkpoints, and a
//! failing run that keeps its telemetry.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use speedrun::loss::cross_entropy;
use speedrun::model::hooks::{EmbedHook, ForwardCtx, LogitsHook, NormHook, NormSite};
use speedrun::model::ops;
use speedrun::model::params::ParamStore;
use speedrun::model::{Model, ModelHooks};
use speedrun::optim::{Grads, Optimizer, StepInput};
use speedrun::plugins::Components;
use speedrun::record::RunStatus;
use speedrun::track::{self, ModelShape};
use speedrun::train::{self, RunOptions};
use std::path::Path;

const DEV: Device = Device::Cpu;

fn random_f64(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| (rng.random::<f64>() * 2.0 - 1.0) * scale)
        .collect();
    Tensor::from_vec(v, shape, &DEV).unwrap()
}

/// Checks d f / d inputs from autograd against central differences (f64), at up to
/// `samples` entries of each input.
fn check_gradients(inputs: &[Tensor], samples: usize, f: &dyn Fn(&[Tensor]) -> Tensor) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let grads = f(&ts).backward().unwrap();
    let h = 1e-5;
    for (i, input) in inputs.iter().enumerate() {
        let g = grads
            .get(vars[i].as_tensor())
            .unwrap_or_else(|| panic!("input {i} got no gradient"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let base = input.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let n = base.len();
        for s in 0..samples.min(n) {
            let j = (s * 7919 + i * 31) % n;
            let eval = |delta: f64| {
                let mut v = base.clone();
                v[j] += delta;
                let mut args: Vec<Tensor> = inputs.to_vec();
                args[i] = Tensor::from_vec(v, input.dims(), &DEV).unwrap();
                f(&args).to_scalar::<f64>().unwrap()
            };
            let numeric = (eval(h) - eval(-h)) / (2.0 * h);
            let err = (numeric - g[j]).abs();
            assert!(
                err <= 1e-7 + 1e-5 * numeric.abs().max(g[j].abs()),
                "input {i} entry {j}: autograd {} vs finite difference {numeric}",
                g[j]
            );
        }
    }
}

/// A scalar from a tensor output: a fixed random weighting of its entries.
fn weighted_sum(t: &Tensor, seed: u64) -> Tensor {
    let w = random_f64(t.dims(), seed, 1.0);
    (t * w).unwrap().sum_all().unwrap()
}

#[test]
fn layer_norm_gradients_match_finite_differences() {
    let x = random_f64(&[3, 5, 8], 1, 2.0);
    let g = random_f64(&[8], 2, 1.0);
    let b = random_f64(&[8], 3, 1.0);
    check_gradients(&[x, g, b], 40, &|a| {
        weighted_sum(&ops::layer_norm(&a[0], &a[1], &a[2], 1e-5).unwrap(), 9)
    });
}

#[test]
fn softmax_and_log_softmax_gradients_match_finite_differences() {
    let x = random_f64(&[4, 7], 4, 3.0);
    check_gradients(std::slice::from_ref(&x), 28, &|a| {
        weighted_sum(&ops::softmax_last_dim(&a[0]).unwrap(), 5)
    });
    check_gradients(&[x], 28, &|a| {
        weighted_sum(&ops::log_softmax_last_dim(&a[0]).unwrap(), 6)
    });
}

#[test]
fn causal_attention_gradients_match_finite_differences() {
    let (b, h, t, d) = (2, 2, 5, 4);
    let q = random_f64(&[b, h, t, d], 7, 1.0);
    let k = random_f64(&[b, h, t, d], 8, 1.0);
    let v = random_f64(&[b, h, t, d], 9, 1.0);
    check_gradients(&[q, k, v], 30, &|a| {
        weighted_sum(&ops::causal_attention(&a[0], &a[1], &a[2]).unwrap(), 10)
    });
}

#[test]
fn gelu_linear_and_loss_gradients_match_finite_differences() {
    let x = random_f64(&[6, 5], 11, 3.0);
    check_gradients(std::slice::from_ref(&x), 30, &|a| {
        weighted_sum(&ops::gelu(&a[0]).unwrap(), 12)
    });
    let w = random_f64(&[5, 3], 13, 1.0);
    let b = random_f64(&[3], 14, 1.0);
    check_gradients(&[x.reshape((2, 3, 5)).unwrap(), w, b], 30, &|a| {
        weighted_sum(&ops::linear(&a[0], &a[1], Some(&a[2])).unwrap(), 15)
    });
    let logits = random_f64(&[6, 9], 16, 2.0);
    let targets = Tensor::new(&[0u32, 8, 3, 3, 5, 1], &DEV).unwrap();
    check_gradients(&[logits], 54, &|a| cross_entropy(&a[0], &targets).unwrap());
}

fn tiny_spec() -> ModelShape {
    ModelShape {
        layers: 2,
        heads: 2,
        width: 8,
        seq_len: 6,
        vocab: 11,
    }
}

fn tiny_batch() -> (Tensor, Tensor) {
    let x = Tensor::new(&[[1u32, 5, 2, 9, 0, 3], [4, 4, 7, 10, 6, 2]], &DEV).unwrap();
    let y = Tensor::new(&[5u32, 2, 9, 0, 3, 8, 4, 7, 10, 6, 2, 1], &DEV).unwrap();
    (x, y)
}

fn model_loss(model: &Model, x: &Tensor, y: &Tensor) -> Tensor {
    let logits = model.forward(x, true).unwrap();
    let (b, t, v) = logits.dims3().unwrap();
    cross_entropy(&logits.reshape((b * t, v)).unwrap(), y).unwrap()
}

/// Every parameter of the whole reference GPT, against central differences in f64.
#[test]
fn whole_model_gradients_match_finite_differences() {
    let model =
        Model::build_with_dtype(&tiny_spec(), ModelHooks::default(), 3, &DEV, DType::F64).unwrap();
    let (x, y) = tiny_batch();
    let grads = Grads::collect(
        &model.params,
        &model_loss(&model, &x, &y).backward().unwrap(),
    )
    .unwrap();
    let h = 1e-5;
    for (i, p) in model.params.iter().enumerate() {
        let g = grads.0[i].flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let orig = p
            .var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for s in 0..3 {
            let j = (s * 104729 + 17) % orig.len();
            let eval = |delta: f64| {
                let mut v = orig.clone();
                v[j] += delta;
                p.var
                    .set(&Tensor::from_vec(v, p.spec.shape.as_slice(), &DEV).unwrap())
                    .unwrap();
                model_loss(&model, &x, &y).to_scalar::<f64>().unwrap()
            };
            let numeric = (eval(h) - eval(-h)) / (2.0 * h);
            p.var
                .set(&Tensor::from_vec(orig.clone(), p.spec.shape.as_slice(), &DEV).unwrap())
                .unwrap();
            let err = (numeric - g[j]).abs();
            assert!(
                err <= 1e-8 + 1e-5 * numeric.abs().max(g[j].abs()),
                "{}[{j}]: autograd {} vs finite difference {numeric}",
                p.spec.name,
                g[j]
            );
        }
    }
}

/// The reference norm, not recognised as the reference's: the blocks compose
/// their nodes instead of running as one fused node.
struct ComposedNorm;
impl NormHook for ComposedNorm {
    fn norm(&self, cx: &ForwardCtx, site: NormSite, x: &Tensor) -> Result<Tensor> {
        speedrun::model::reference::ReferenceGpt.norm(cx, site, x)
    }
}

/// The reference embedding, not recognised as the reference's: the forward
/// runs the fused blocks under candle's graph instead of on the host's tape.
struct UntapedEmbed;
impl EmbedHook for UntapedEmbed {
    fn embed(&self, cx: &ForwardCtx, tokens: &Tensor) -> Result<Tensor> {
        speedrun::model::reference::ReferenceGpt.embed(cx, tokens)
    }
}

/// The loss on (x, y), and every parameter's gradient flattened, in order.
fn loss_and_grads(model: &Model, x: &Tensor, y: &Tensor) -> (f32, Vec<Vec<f32>>) {
    let loss = model_loss(model, x, y);
    let grads = Grads::collect(&model.params, &loss.backward().unwrap()).unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (
        loss.to_scalar::<f32>().unwrap(),
        grads.0.iter().map(flat).collect(),
    )
}

/// The whole model on the host's tape, its fused blocks under candle's graph,
/// and its blocks composed node by node: the same loss and every parameter's
/// gradient, bit for bit. Once with sequences as long as the positions, once
/// shorter (the tape pads the positions' gradient).
#[test]
fn the_tapes_and_the_fused_blocks_whole_model_gradients_are_the_composed_blocks() {
    let run = |hooks: ModelHooks, path: (bool, bool), (x, y): &(Tensor, Tensor)| {
        let model = Model::build(&tiny_spec(), hooks, 5, &DEV).unwrap();
        assert_eq!((model.is_reference(), model.block_is_reference()), path);
        loss_and_grads(&model, x, y)
    };
    let short = (
        Tensor::new(&[[3u32, 5, 5, 9], [4, 4, 7, 3]], &DEV).unwrap(),
        Tensor::new(&[5u32, 5, 9, 0, 4, 7, 3, 1], &DEV).unwrap(),
    );
    for batch in [tiny_batch(), short] {
        let taped = run(ModelHooks::default(), (true, true), &batch);
        let fused = run(
            ModelHooks {
                embed: Box::new(UntapedEmbed),
                ..ModelHooks::default()
            },
            (false, true),
            &batch,
        );
        let composed = run(
            ModelHooks {
                norm: Box::new(ComposedNorm),
                ..ModelHooks::default()
            },
            (false, false),
            &batch,
        );
        for (name, other) in [("fused", &fused), ("composed", &composed)] {
            assert_eq!(taped.0.to_bits(), other.0.to_bits(), "{name}: loss");
            for (i, (t, o)) in taped.1.iter().zip(&other.1).enumerate() {
                assert!(t == o, "{name}: parameter {i}'s gradient differs");
            }
        }
    }
}

/// Logits shifted by a block parameter's sum: that parameter gets a gradient
/// from candle's graph as well as from the fused block's own backward.
struct ShiftByBlockBias;
impl LogitsHook for ShiftByBlockBias {
    fn logits(&self, cx: &ForwardCtx, logits: &Tensor) -> Result<Tensor> {
        let b = cx.params.get("transformer.h.0.ln_1.bias")?;
        Ok(logits.broadcast_add(&(b.sum_all()? * 0.1)?)?)
    }
}

/// A parameter with gradients from both: `Grads::collect` sums what the tape
/// or the fused node put aside with candle's (the logits hook's, in candle's
/// graph after the tape's node), to the composed blocks' bits.
#[test]
fn a_block_parameter_used_outside_its_block_gets_both_gradients() {
    let run = |norm: Box<dyn NormHook>, embed: Box<dyn EmbedHook>| {
        let hooks = ModelHooks {
            norm,
            embed,
            logits: Some(Box::new(ShiftByBlockBias)),
            ..ModelHooks::default()
        };
        let model = Model::build(&tiny_spec(), hooks, 5, &DEV).unwrap();
        let (x, y) = tiny_batch();
        let i = model
            .params
            .iter()
            .position(|p| p.spec.name == "transformer.h.0.ln_1.bias")
            .unwrap();
        (
            (model.is_reference(), model.block_is_reference()),
            loss_and_grads(&model, &x, &y).1,
            i,
        )
    };
    let reference = || Box::new(speedrun::model::reference::ReferenceGpt);
    let (taped_path, taped, i) = run(reference(), reference());
    let (fused_path, fused, _) = run(reference(), Box::new(UntapedEmbed));
    let (composed_path, composed, _) = run(Box::new(ComposedNorm), reference());
    assert_eq!(
        [taped_path, fused_path, composed_path],
        [(true, true), (false, true), (false, false)]
    );
    for (name, other) in [("fused", &fused), ("composed", &composed)] {
        for (j, (t, o)) in taped.iter().zip(other).enumerate() {
            assert!(t == o, "{name}: parameter {j}'s gradient differs");
        }
    }
    // Without the logits' share the bias's gradient is not the same.
    let plain = Model::build(&tiny_spec(), ModelHooks::default(), 5, &DEV).unwrap();
    let (x, y) = tiny_batch();
    assert!(loss_and_grads(&plain, &x, &y).1[i] != taped[i]);
}

#[test]
fn every_parameter_receives_a_nonzero_gradient() {
    let model = Model::build(&tiny_spec(), ModelHooks::default(), 0, &DEV).unwrap();
    let (x, y) = tiny_batch();
    let grads = Grads::collect(
        &model.params,
        &model_loss(&model, &x, &y).backward().unwrap(),
    )
    .unwrap();
    for (i, p) in model.params.iter().enumerate() {
        let n = grads.0[i]
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(n > 0.0, "{} has an all-zero gradient", p.spec.name);
    }
}

/// A norm that (wrongly) detaches its gain, as candle-nn's fused ops silently do.
struct DetachedNorm;
impl NormHook for DetachedNorm {
    fn norm(&self, cx: &ForwardCtx, site: NormSite, x: &Tensor) -> Result<Tensor> {
        let p = match site {
            NormSite::Attention(l) => format!("transformer.h.{l}.ln_1"),
            NormSite::Mlp(l) => format!("transformer.h.{l}.ln_2"),
            NormSite::Final => "transformer.ln_f".into(),
        };
        let g = cx.params.get(&format!("{p}.weight"))?.detach();
        let b = cx.params.get(&format!("{p}.bias"))?;
        Ok(ops::layer_norm(x, &g, b, 1e-5)?)
    }
}

#[test]
fn a_parameter_cut_off_from_the_gradient_is_caught() {
    let hooks = ModelHooks {
        norm: Box::new(DetachedNorm),
        ..ModelHooks::default()
    };
    let model = Model::build(&tiny_spec(), hooks, 0, &DEV).unwrap();
    let (x, y) = tiny_batch();
    let err = Grads::collect(
        &model.params,
        &model_loss(&model, &x, &y).backward().unwrap(),
    )
    .err()
    .expect("a detached parameter went unnoticed");
    assert!(
        err.to_string()
            .contains("transformer.h.0.ln_1.weight received no gradient"),
        "{err}"
    );
}

fn smoke_options(out: &Path, seed: u64) -> RunOptions {
    RunOptions {
        track: track::load("smoke").unwrap(),
        seed,
        steps: None,
        out: out.to_path_buf(),
        data_dir: None,
        save_checkpoint: None,
        progress: false,
        store: None,
        deadline: None,
        device: Default::default(),
        parallel: None,
        vocab: Default::default(),
        label_nonce: None,
        stack_label: None,
    }
}

fn unigram_entropy_of_training_data() -> f64 {
    let lt = track::load("smoke").unwrap();
    let data = speedrun::data::loader::TrackData::open(&lt, None).unwrap();
    let mut counts = [0u64; 256];
    for s in &data.train {
        for t in s.to_vec() {
            counts[t as usize] += 1;
        }
    }
    let n: u64 = counts.iter().sum();
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n as f64;
            -p * p.ln()
        })
        .sum()
}

#[test]
fn smoke_run_learns_below_the_unigram_entropy_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let opts = smoke_options(&dir.path().join("a"), 7);
    let a = train::run(&opts, Components::reference(&opts.track.track)).unwrap();
    assert_eq!(a.status, RunStatus::Complete);
    assert_eq!(a.steps, opts.track.track.steps());
    let first: f32 = a.train_losses[..10].iter().sum::<f32>() / 10.0;
    let last: f32 = a.train_losses[a.steps - 10..].iter().sum::<f32>() / 10.0;
    assert!(
        last < first - 1.0,
        "training loss fell only from {first} to {last}"
    );
    let h = unigram_entropy_of_training_data();
    let val = a.final_val_loss.unwrap();
    assert!(
        val < h,
        "final validation loss {val} is not below the unigram entropy {h}"
    );
    assert!(a.final_val_bpb.unwrap() > 0.0);

    // Same seed: the same curve, bit for bit.
    let opts_b = smoke_options(&dir.path().join("b"), 7);
    let b = train::run(&opts_b, Components::reference(&opts_b.track.track)).unwrap();
    assert_eq!(a.train_losses, b.train_losses);
    assert_eq!(a.final_val_loss, b.final_val_loss);
    // Another seed: another curve.
    let opts_c = smoke_options(&dir.path().join("c"), 8);
    let c = train::run(&opts_c, Components::reference(&opts_c.track.track)).unwrap();
    assert_ne!(a.train_losses, c.train_losses);

    // The run directory holds the manifest, a metrics line per step and validation, and the summary.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("a/manifest.json")).unwrap())
            .unwrap();
    for key in [
        "host_version",
        "git_revision",
        "track_sha256",
        "shards",
        "seed",
        "hardware",
    ] {
        assert!(manifest.get(key).is_some(), "manifest lacks {key}");
    }
    assert_eq!(manifest["shards"][0]["sha256"].as_str().unwrap().len(), 64);
    // The matmul path the run took follows the CPU's flags (/proc/cpuinfo):
    // AVX-512 where it has avx512f, AVX2 + FMA where it has fma.
    let hw = &manifest["hardware"];
    let flags: Vec<&str> = hw["cpu_flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    let kernel = hw["cpu_matmul_kernel"].as_str().unwrap();
    if cfg!(target_arch = "x86_64") {
        let expected = if flags.contains(&"avx512f") {
            "avx512f"
        } else if flags.contains(&"fma") {
            "avx2+fma"
        } else {
            "scalar"
        };
        assert!(
            kernel.contains(expected),
            "{kernel} on a CPU with {flags:?}"
        );
    }
    let metrics = std::fs::read_to_string(dir.path().join("a/metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps = lines.iter().filter(|l| l["kind"] == "step").count();
    let vals: Vec<_> = lines.iter().filter(|l| l["kind"] == "val").collect();
    assert_eq!(steps, a.steps);
    // Validation at step 0, every 50 steps, and the end (200 steps: 0, 50, 100, 150, 200).
    assert_eq!(vals.len(), 5);
    assert_eq!(vals.last().unwrap()["val_loss"].as_f64(), a.final_val_loss);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("a/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["status"], "complete");
    assert_eq!(summary["target_reached"], a.target_reached);
}

#[test]
fn checkpoint_round_trip_gives_the_same_validation_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = smoke_options(&dir.path().join("run"), 1);
    opts.steps = Some(20);
    let ckpt = dir.path().join("model.safetensors");
    opts.save_checkpoint = Some(ckpt.clone());
    let s = train::run(&opts, Components::reference(&opts.track.track)).unwrap();
    let tensors = candle_core::safetensors::load(&ckpt, &DEV).unwrap();
    assert_eq!(
        tensors["transformer.h.1.attn.c_attn.weight"].dims(),
        &[32, 96]
    );
    assert_eq!(tensors["transformer.wte.weight"].dims(), &[256, 32]);
    assert!(tensors.contains_key("transformer.ln_f.bias"));

    let t = &opts.track.track;
    let model = Model::build(&t.model, ModelHooks::default(), 99, &DEV).unwrap();
    speedrun::checkpoint::load_into(&model, &ckpt, &DEV).unwrap();
    let data = speedrun::data::loader::TrackData::open(&opts.track, None).unwrap();
    let tok = speedrun::data::tokenizer::Tokenizer::new(t.data.tokenizer).unwrap();
    let val = speedrun::data::loader::ValidationSet::new(
        &data.val,
        t.validation.tokens,
        t.model.seq_len,
        &tok,
    )
    .unwrap();
    let (loss, _) = train::validate::evaluate(&model, &val, t.batch_size(), &DEV).unwrap();
    assert_eq!(Some(loss), s.final_val_loss);
}

#[test]
fn a_bf16_run_learns_like_f32_and_keeps_f32_master_weights() {
    use speedrun_kernels::Precision;
    let dir = tempfile::tempdir().unwrap();
    let run = |precision: Precision| {
        let name = precision.name();
        let mut opts = smoke_options(&dir.path().join(name), 5);
        opts.steps = Some(60);
        opts.track.track.train.precision = precision;
        opts.save_checkpoint = Some(dir.path().join(format!("{name}.safetensors")));
        train::run(&opts, Components::reference(&opts.track.track)).unwrap()
    };
    let (b, f) = (run(Precision::Bf16), run(Precision::F32));
    assert_eq!(b.status, RunStatus::Complete);
    // The same start to bf16 accuracy, but the products really ran in bf16.
    assert!(
        (b.train_losses[0] - f.train_losses[0]).abs() < 0.02,
        "first losses {} (bf16) and {} (f32)",
        b.train_losses[0],
        f.train_losses[0]
    );
    assert_ne!(b.train_losses, f.train_losses);
    let mean = |s: &[f32]| s.iter().sum::<f32>() / s.len() as f32;
    assert!(mean(&b.train_losses[50..]) < mean(&b.train_losses[..10]) - 1.0);
    let (vb, vf) = (b.final_val_loss.unwrap(), f.final_val_loss.unwrap());
    assert!(
        (vb - vf).abs() < 0.1,
        "validation {vb} (bf16) vs {vf} (f32)"
    );
    // Master weights (what the checkpoint holds) stay f32.
    let tensors =
        candle_core::safetensors::load(dir.path().join("bf16.safetensors"), &DEV).unwrap();
    assert!(tensors.values().all(|t| t.dtype() == DType::F32));
}

/// An optimizer that corrupts the weights at step 2, so step 3's loss is NaN.
struct Poison(Box<dyn Optimizer>);
impl Optimizer for Poison {
    fn name(&self) -> &str {
        "poison"
    }
    fn init(&mut self, params: &ParamStore) -> Result<()> {
        self.0.init(params)
    }
    fn step(&mut self, params: &ParamStore, grads: &Grads, input: &StepInput) -> Result<()> {
        self.0.step(params, grads, input)?;
        if input.step == 2 {
            let p = params.param(0);
            p.var.set(&p.var.as_tensor().affine(0.0, f64::NAN)?)?;
        }
        Ok(())
    }
}

#[test]
fn a_nan_stops_the_run_naming_the_step_and_keeps_the_telemetry() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let opts = smoke_options(&out, 0);
    let mut comps = Components::reference(&opts.track.track);
    comps.optimizer = Box::new(Poison(comps.optimizer));
    let err = train::run(&opts, comps).expect_err("a NaN run succeeded");
    assert!(
        format!("{err:#}").contains("training loss is not finite at step 3"),
        "{err:#}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "failed");
    assert!(summary["error"].as_str().unwrap().contains("step 3"));
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.contains("\"kind\":\"step\""))
            .count(),
        3
    );
}
