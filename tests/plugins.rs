//! Plugins: the native transport end to end (reference plugins reproduce the
//! built-in curve bit for bit, a mismatched plugin is refused, a panicking one is
//! contained), the handle and contract checks on in-process plugins, hook
//! collisions, telemetry, and `plugin new` / `plugin inspect`.

use crate::common;
use common::*;

use speedrun::plugins::native::NativeModule;
use speedrun::plugins::Components;
use speedrun::plugins::{self, build};
use speedrun::record::RunSummary;
use speedrun::train;
use speedrun_plugin_api::{self as api, *};
use std::path::{Path, PathBuf};

/// Builds (once per target dir) and stacks native plugins from crate directories.
fn native_stack(dirs: &[&str]) -> Components {
    let specs: Vec<PathBuf> = dirs.iter().map(|d| root().join(d)).collect();
    plugins::stack(&smoke_track(), 0, &specs, &[], false, &default_policy()).unwrap()
}

fn metric_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn summary_status(dir: &Path) -> String {
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    s["status"].as_str().unwrap().to_string()
}

#[test]
fn native_adamw_and_cosine_reproduce_the_builtin_curve_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let track = smoke_track();
    let builtin = train::run(
        &smoke_options(&tmp.path().join("builtin"), None),
        Components::reference(&track),
    )
    .unwrap();
    let comps = native_stack(&["plugins/adamw", "plugins/cosine-schedule"]);
    let plugged = train::run(&smoke_options(&tmp.path().join("plugged"), None), comps).unwrap();
    assert_eq!(builtin.train_losses.len(), 200);
    assert_eq!(
        builtin.train_losses, plugged.train_losses,
        "the curves differ"
    );
    assert_eq!(builtin.final_val_loss, plugged.final_val_loss);

    // The run records the plugins and each step carries per-hook telemetry.
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("plugged/manifest.json")).unwrap(),
    )
    .unwrap();
    let recorded: Vec<&str> = manifest["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(recorded, ["adamw", "cosine-schedule"]);
    assert_eq!(manifest["plugins"][0]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(manifest["optimizer"], "adamw");
    // The track's [optimizer] values reach the plugins' configuration.
    assert_eq!(
        manifest["plugins"][1]["config"]["warmup_steps"],
        track.optimizer.warmup_steps
    );
    let lines = metric_lines(&tmp.path().join("plugged"));
    let step = lines.iter().find(|l| l["kind"] == "step").unwrap();
    let hooks = step["hooks"].as_array().unwrap();
    let adamw = hooks
        .iter()
        .find(|h| h["hook"] == "optimizer.step")
        .unwrap();
    assert_eq!(adamw["plugin"], "adamw");
    assert_eq!(adamw["calls"], 1);
    // One fused update per parameter; two kept moments per parameter.
    let params = builtin_param_count();
    assert_eq!(adamw["ops"].as_u64().unwrap() as usize, params);
    assert_eq!(adamw["live_handles"].as_u64().unwrap() as usize, 2 * params);
    assert!(hooks
        .iter()
        .any(|h| h["hook"] == "schedule" && h["ops"] == 0));
}

fn builtin_param_count() -> usize {
    let track = smoke_track();
    speedrun::model::params::reference_params(&track.model).len()
}

#[test]
fn relu2_plugin_computes_the_relu2_mlp() {
    // The plugin's MLP against the same MLP written with the host's own ops.
    use speedrun::model::hooks::ForwardCtx;
    use speedrun::model::{ops, Model, ModelHooks};
    let track = smoke_track();
    let comps = native_stack(&["plugins/relu2"]);
    let dev = candle_core::Device::Cpu;
    let model = Model::build(&track.model, ModelHooks::default(), 3, &dev).unwrap();
    let cx = ForwardCtx {
        params: &model.params,
        spec: &track.model,
        train: true,
        tokens: None,
        precision: Default::default(),
    };
    let x = candle_core::Tensor::randn(0f32, 1.0, (2, 5, track.model.width), &dev).unwrap();
    let got = comps.hooks.mlp.mlp(&cx, 1, &x).unwrap();
    let p = |n: &str| model.params.get(&format!("transformer.h.1.{n}")).unwrap();
    let h = ops::linear(&x, p("mlp.c_fc.weight"), Some(p("mlp.c_fc.bias"))).unwrap();
    let want = ops::linear(
        &speedrun_kernels::relu2(&h).unwrap(),
        p("mlp.c_proj.weight"),
        Some(p("mlp.c_proj.bias")),
    )
    .unwrap();
    let diff = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-5, "max difference {diff}");

    // And it trains: a short smoke run whose loss falls, with the reference optimizer.
    let tmp = tempfile::tempdir().unwrap();
    let s = train::run(&smoke_options(tmp.path(), Some(30)), comps).unwrap();
    assert!(
        s.train_losses[29] < s.train_losses[0] - 0.5,
        "{:?}",
        s.train_losses
    );
}

#[test]
fn a_plugins_products_run_in_the_tracks_precision() {
    // relu2's MLP is two `linear` ops: under bf16 both are bf16 products, as
    // the host's own layers are.
    use speedrun::device::memory::MemoryMeter;
    use speedrun::model::hooks::ForwardCtx;
    use speedrun::model::{Model, ModelHooks};
    use speedrun_kernels::Precision;
    let track = smoke_track();
    let comps = native_stack(&["plugins/relu2"]);
    let dev = candle_core::Device::Cpu;
    let meter = std::sync::Arc::new(MemoryMeter::new(&dev, None));
    plugins::attach_device(&comps.plugins, &meter, Precision::Bf16);
    let model = Model::build(&track.model, ModelHooks::default(), 3, &dev)
        .unwrap()
        .with_precision(Precision::Bf16);
    let cx = ForwardCtx {
        params: &model.params,
        spec: &track.model,
        train: true,
        tokens: None,
        precision: Precision::Bf16,
    };
    let x = candle_core::Tensor::randn(0f32, 1.0, (2, 5, track.model.width), &dev).unwrap();
    let got = comps.hooks.mlp.mlp(&cx, 1, &x).unwrap();
    assert_eq!(got.dtype(), candle_core::DType::F32);
    let p = |n: &str| model.params.get(&format!("transformer.h.1.{n}")).unwrap();
    let mlp = |precision: Precision| {
        let h = precision
            .linear(&x, p("mlp.c_fc.weight"), Some(p("mlp.c_fc.bias")))
            .unwrap();
        precision
            .linear(
                &speedrun_kernels::relu2(&h).unwrap(),
                p("mlp.c_proj.weight"),
                Some(p("mlp.c_proj.bias")),
            )
            .unwrap()
    };
    let diff = |a: &candle_core::Tensor, b: &candle_core::Tensor| -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let (d16, d32) = (
        diff(&got, &mlp(Precision::Bf16)),
        diff(&got, &mlp(Precision::F32)),
    );
    // Small weights (std 0.02) make small outputs: the bf16 rounding shows at ~1e-5.
    assert!(
        d16 < 1e-7 && d32 > 1e-6,
        "off by {d16} from the bf16 MLP, {d32} from the f32 one"
    );
}

#[test]
fn a_plugin_built_against_another_api_is_refused_with_the_layout_verdict() {
    let lib = build::build_native(&root().join("tests/fixtures/stale-api/plugin")).unwrap();
    let err = NativeModule::load(&lib)
        .err()
        .expect("the mismatched plugin loaded");
    let msg = format!("{err:#}");
    assert!(msg.contains(&lib.display().to_string()), "{msg}");
    assert!(msg.contains("incompatible plugin API"), "{msg}");
    // abi_stable's own verdict, cut to its last lines.
    assert!(msg.lines().count() <= 16, "{msg}");
    // `call` of the stale API took the hook as a u32 where this one takes a string.
    assert!(msg.contains("Error:mismatched type"), "{msg}");
    assert!(msg.contains("RString") && msg.contains("u32"), "{msg}");
}

/// `tests/fixtures/api-1.0/relu2.wasm` is `plugins/relu2` built against the
/// SDK as it was at API 1.0 (commit 2d52d83, `speedrun plugin build --wasm
/// plugins/relu2`), kept as the bytes that build produced.
#[test]
fn a_plugin_built_for_the_previous_api_minor_still_loads_and_trains_alike() {
    let old = root().join("tests/fixtures/api-1.0/relu2.wasm");
    let inspected = speedrun(&["plugin", "inspect", old.to_str().unwrap(), "--json"]);
    assert!(inspected.status.success(), "{}", text(&inspected));
    let m: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    // 1.0 manifests carry no minor: read as 1.0, one minor behind this host.
    assert_eq!(m["api_version"], 1);
    assert!(m.get("api_minor").is_none_or(|v| v == 0), "{m}");

    let tmp = tempfile::tempdir().unwrap();
    let policy = default_policy();
    let run = |spec: PathBuf, name: &str| {
        let comps = plugins::stack(&smoke_track(), 0, &[spec], &[], true, &policy).unwrap();
        let s = train::run(&smoke_options(&tmp.path().join(name), Some(6)), comps).unwrap();
        assert!(s.verdict.valid, "{name}: {:?}", s.verdict.failed());
        s
    };
    let then = run(old, "api-1.0");
    let now = run(root().join("plugins/relu2"), "api-now");
    let api_of = |name: &str| {
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(tmp.path().join(name).join("manifest.json")).unwrap(),
        )
        .unwrap();
        (
            m["plugins"][0]["api_version"].clone(),
            m["plugins"][0]["api_minor"].clone(),
        )
    };
    assert_eq!(api_of("api-1.0"), (1.into(), 0.into()));
    assert_eq!(
        api_of("api-now"),
        (API_VERSION.major.into(), API_VERSION.minor.into())
    );
    // The same source, the same ops: the same curve, bit for bit.
    assert_eq!(then.train_losses, now.train_losses);
    assert_eq!(then.final_val_loss, now.final_val_loss);
}

#[test]
fn a_panicking_plugin_ends_the_run_cleanly_and_keeps_the_telemetry() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (o, text) = run_panicking_plugin(&out, false);
    // An error exit, not an abort (134) or a signal.
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("plugin panicking-plugin, hook optimizer.step"),
        "{text}"
    );
    assert!(
        text.contains("the plugin panicked") && text.contains("index out of bounds"),
        "{text}"
    );
    assert_eq!(summary_status(&out), "failed");
    // Step 0 ran before the panic and is on disk.
    let lines = metric_lines(&out);
    assert!(lines.iter().any(|l| l["kind"] == "step" && l["step"] == 0));
}

// ---- in-process plugins: the handle and contract checks ----

/// A plugin whose misbehaviour is chosen by its configuration.
struct Probe {
    mode: String,
    held: Vec<Tensor>,
}

impl Plugin for Probe {
    fn default_config() -> serde_json::Value {
        serde_json::json!({ "mode": "" })
    }

    fn new(config: &serde_json::Value) -> api::Result<Self> {
        Ok(Probe {
            mode: config["mode"].as_str().unwrap_or("").to_string(),
            held: vec![],
        })
    }
}

impl Optimizer for Probe {
    fn init(&mut self, params: &[ParamRef]) -> api::Result<()> {
        // A value made here and not kept: dead once init returns.
        self.held = vec![Tensor::zeros(&params[0].dims, api::DType::F32)?];
        Ok(())
    }

    fn step(&mut self, s: &OptimizerStep) -> api::Result<()> {
        let g = s.params[0].grad;
        match self.mode.as_str() {
            "forge" => {
                Tensor::from_id(0x0000_0007_0000_0003).add(&g)?;
            }
            "stale" => {
                self.held[0].add(&g)?;
            }
            "param" => {
                Tensor::param("transformer.wte.weight")?;
            }
            "scalar" => {
                g.to_scalar()?;
            }
            "shape" => {
                s.params[0]
                    .param
                    .assign(&Tensor::zeros(&[3], api::DType::F32)?)?;
            }
            "scoped-assign" => {
                g.scale(2.0)?.assign(&g)?;
            }
            _ => {}
        }
        Ok(())
    }
}

impl Mlp for Probe {
    fn mlp(&mut self, cx: &ForwardCtx, layer: usize, x: &Tensor) -> api::Result<Tensor> {
        if self.mode == "mlp" {
            // Writes are for optimizers only.
            x.assign(x)?;
        }
        let p = |n: &str| cx.layer_param(layer, n);
        let h = linear(x, &p("mlp.c_fc.weight")?, Some(&p("mlp.c_fc.bias")?))?.gelu()?;
        linear(&h, &p("mlp.c_proj.weight")?, Some(&p("mlp.c_proj.bias")?))
    }
}

speedrun_plugin_api::impl_plugin!(Probe, name: "probe", hooks: [optimizer, mlp]);

fn probe_stack(mode: &str) -> Components {
    let module = NativeModule::in_process(speedrun_plugin_api::native::module::<Probe>());
    let cfg = serde_json::json!({ "mode": mode });
    let p = plugins::start(
        plugins::PluginModule::Native(module),
        Path::new("in-process:probe"),
        &smoke_track(),
        0,
        Some(&cfg),
        &default_policy(),
    )
    .unwrap();
    plugins::compose(&smoke_track(), vec![p]).unwrap()
}

/// Runs `mode` and expects the run to fail naming the plugin, the hook and `needle`.
fn probe_fails(mode: &str, hook: &str, needle: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let err = match train::run(&smoke_options(tmp.path(), Some(3)), probe_stack(mode)) {
        Ok(_) => panic!("mode {mode} ran"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains(&format!("plugin probe, hook {hook}")),
        "{mode}: {err}"
    );
    assert!(err.contains(needle), "{mode}: {err}");
    if tmp.path().join("summary.json").exists() {
        assert_eq!(summary_status(tmp.path()), "failed");
    }
}

#[test]
fn forged_stale_and_forbidden_uses_are_errors_naming_plugin_and_hook() {
    probe_fails(
        "forge",
        "optimizer.step",
        "not a live tensor of this plugin",
    );
    probe_fails(
        "stale",
        "optimizer.step",
        "not a live tensor of this plugin",
    );
    probe_fails(
        "param",
        "optimizer.step",
        "op param is not allowed in hook optimizer.step",
    );
    probe_fails("scalar", "optimizer.step", "to_scalar of a tensor with");
    probe_fails(
        "shape",
        "optimizer.step",
        "assign to transformer.wte.weight",
    );
    probe_fails(
        "scoped-assign",
        "optimizer.step",
        "neither a parameter nor kept state",
    );
    probe_fails(
        "mlp",
        "model.mlp",
        "op assign is not allowed in hook model.mlp",
    );
}

struct HalfLr;
struct ConstLr;

impl Plugin for HalfLr {
    fn new(_: &serde_json::Value) -> api::Result<Self> {
        Ok(HalfLr)
    }
}
impl Plugin for ConstLr {
    fn new(_: &serde_json::Value) -> api::Result<Self> {
        Ok(ConstLr)
    }
}
impl Schedule for HalfLr {
    fn at(&mut self, _: usize, _: usize) -> api::Result<ScheduleOut> {
        Ok(ScheduleOut::new(0.5, 1.0))
    }
}
impl Schedule for ConstLr {
    fn at(&mut self, _: usize, _: usize) -> api::Result<ScheduleOut> {
        Ok(ScheduleOut::new(1.0, 1.0))
    }
}
speedrun_plugin_api::impl_plugin!(HalfLr, name: "half-lr", hooks: [schedule]);
speedrun_plugin_api::impl_plugin!(ConstLr, name: "const-lr", hooks: [schedule]);

#[test]
fn two_plugins_claiming_one_hook_is_an_error_naming_both() {
    let track = smoke_track();
    let start = |m: speedrun_plugin_api::native::PluginModRef, n: &str| {
        plugins::start(
            plugins::PluginModule::Native(NativeModule::in_process(m)),
            Path::new(n),
            &track,
            0,
            None,
            &default_policy(),
        )
        .unwrap()
    };
    let a = start(speedrun_plugin_api::native::module::<HalfLr>(), "a");
    let b = start(speedrun_plugin_api::native::module::<ConstLr>(), "b");
    let err = match plugins::compose(&track, vec![a, b]) {
        Ok(_) => panic!("composed two schedules"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("half-lr") && err.contains("const-lr") && err.contains("schedule"),
        "{err}"
    );

    // A configuration key the plugin does not declare is refused, naming it.
    let m = NativeModule::in_process(speedrun_plugin_api::native::module::<Probe>());
    let err = plugins::start(
        plugins::PluginModule::Native(m),
        Path::new("p"),
        &track,
        0,
        Some(&serde_json::json!({"nope": 1})),
        &default_policy(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("no configuration key \"nope\""), "{err}");
}

/// AdamW written with elementary ops, in the order the fused kernel computes.
struct OpsAdamW {
    state: Vec<(Tensor, Tensor, bool)>,
    t: i32,
}

impl Plugin for OpsAdamW {
    fn new(_: &serde_json::Value) -> api::Result<Self> {
        Ok(OpsAdamW {
            state: vec![],
            t: 0,
        })
    }
}

impl Optimizer for OpsAdamW {
    fn init(&mut self, params: &[ParamRef]) -> api::Result<()> {
        for p in params {
            let m = Tensor::zeros(&p.dims, api::DType::F32)?.keep()?;
            let v = Tensor::zeros(&p.dims, api::DType::F32)?.keep()?;
            self.state.push((m, v, p.dims.len() == 2));
        }
        Ok(())
    }

    fn step(&mut self, s: &OptimizerStep) -> api::Result<()> {
        let t = smoke_track().optimizer;
        self.t += 1;
        let clip = (t.grad_clip / (s.grad_norm + 1e-6)).min(1.0);
        let (b1, b2) = (t.beta1 as f32, t.beta2 as f32);
        let (one_b1, one_b2) = ((1.0 - b1) as f64, (1.0 - b2) as f64);
        let step_size = s.lr / (1.0 - t.beta1.powi(self.t));
        let bc2_sqrt = (1.0 - t.beta2.powi(self.t)).sqrt();
        for (pg, &(m, v, decays)) in s.params.iter().zip(&self.state) {
            let decay = 1.0 - s.lr * if decays { t.weight_decay } else { 0.0 };
            let gj = pg.grad.scale(clip)?;
            let m_new = m.add(&gj.sub(&m)?.scale(one_b1)?)?;
            let v_new = v.scale(b2 as f64)?.add(&gj.scale(one_b2)?.mul(&gj)?)?;
            let denom = v_new.sqrt()?.div_scalar(bc2_sqrt)?.add_scalar(t.eps)?;
            let p_new = pg
                .param
                .scale(decay)?
                .sub(&m_new.scale(step_size)?.div(&denom)?)?;
            m.assign(&m_new)?;
            v.assign(&v_new)?;
            pg.param.assign(&p_new)?;
        }
        Ok(())
    }
}

speedrun_plugin_api::impl_plugin!(OpsAdamW, name: "ops-adamw", hooks: [optimizer]);

#[test]
fn adamw_from_elementary_ops_matches_the_fused_builtin_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let track = smoke_track();
    let steps = Some(40);
    let builtin = train::run(
        &smoke_options(&tmp.path().join("a"), steps),
        Components::reference(&track),
    )
    .unwrap();
    let m = NativeModule::in_process(speedrun_plugin_api::native::module::<OpsAdamW>());
    let p = plugins::start(
        plugins::PluginModule::Native(m),
        Path::new("in-process"),
        &track,
        0,
        None,
        &default_policy(),
    )
    .unwrap();
    let ops: RunSummary = train::run(
        &smoke_options(&tmp.path().join("b"), steps),
        plugins::compose(&track, vec![p]).unwrap(),
    )
    .unwrap();
    assert_eq!(builtin.train_losses, ops.train_losses);
}

#[test]
fn plugin_new_writes_a_crate_that_builds_inspects_and_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let speedrun = |args: &[&str]| {
        let o = speedrun(args);
        let text = text(&o);
        assert!(o.status.success(), "speedrun {args:?}: {text}");
        text
    };
    let dir = tmp.path().to_str().unwrap();
    speedrun(&[
        "plugin",
        "new",
        "--hook",
        "optimizer",
        "my-sgd",
        "--dir",
        dir,
    ]);
    let krate = tmp.path().join("my-sgd");
    let inspect = speedrun(&["plugin", "inspect", krate.to_str().unwrap()]);
    assert!(inspect.contains("my-sgd 0.1.0"), "{inspect}");
    assert!(
        inspect.contains("hooks    optimizer.init, optimizer.step"),
        "{inspect}"
    );
    assert!(inspect.contains("momentum"), "{inspect}");
    let out = tmp.path().join("run");
    speedrun(&[
        "run",
        "--track",
        "smoke",
        "--steps",
        "20",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
        "--plugin",
        krate.to_str().unwrap(),
        "--plugin-config",
        r#"my-sgd={"lr_scale": 50.0}"#,
    ]);
    let losses: Vec<f64> = metric_lines(&out)
        .iter()
        .filter(|l| l["kind"] == "step")
        .map(|l| l["train_loss"].as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 20);
    assert!(
        losses[19] < losses[0] - 0.3,
        "SGD did not learn: {losses:?}"
    );

    // The other templates build too.
    for hook in ["schedule", "mlp"] {
        let name = format!("my-{hook}");
        speedrun(&["plugin", "new", "--hook", hook, &name, "--dir", dir]);
        let built = speedrun(&["plugin", "build", tmp.path().join(&name).to_str().unwrap()]);
        assert!(
            built.trim().ends_with(std::env::consts::DLL_SUFFIX),
            "{built}"
        );
    }
}

/// A head that records the separator id it is told, per mode.
struct SepProbe;

static SEEN_SEPARATORS: std::sync::Mutex<Vec<(bool, Option<u32>)>> =
    std::sync::Mutex::new(Vec::new());

impl Plugin for SepProbe {
    fn new(_: &serde_json::Value) -> api::Result<Self> {
        Ok(SepProbe)
    }
}

impl Head for SepProbe {
    fn head(&mut self, cx: &ForwardCtx, x: &Tensor) -> api::Result<Tensor> {
        SEEN_SEPARATORS
            .lock()
            .unwrap()
            .push((cx.train, cx.separator_token()?));
        linear(x, &cx.head_weight()?.transpose(0, 1)?, None)
    }
}

speedrun_plugin_api::impl_plugin!(SepProbe, name: "sep-probe", hooks: [head]);

#[test]
fn plugins_are_told_the_separator_as_the_secret_labels_spell_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lt = speedrun::track::load("gpt2-cpu").unwrap();
    // A tiny model of GPT-2's vocabulary: the point is the labels, not the training.
    let t = &mut lt.track;
    (
        t.model.layers,
        t.model.heads,
        t.model.width,
        t.model.seq_len,
    ) = (1, 1, 8, 16);
    (
        t.train.batch_tokens,
        t.validation.tokens,
        t.validation.every_steps,
    ) = (32, 32, 0);
    let track = lt.track.clone();
    for mode in [train::VocabMode::Secret, train::VocabMode::NullControl] {
        SEEN_SEPARATORS.lock().unwrap().clear();
        let mut opts = smoke_options(&tmp.path().join(format!("{mode:?}")), Some(1));
        opts.track = lt.clone();
        opts.vocab = mode;
        let build = || {
            let module =
                NativeModule::in_process(speedrun_plugin_api::native::module::<SepProbe>());
            let p = plugins::start(
                plugins::PluginModule::Native(module),
                Path::new("in-process:sep-probe"),
                &track,
                0,
                None,
                &default_policy(),
            )?;
            plugins::compose(&track, vec![p])
        };
        let f = train::execute(&opts, &mut || build()).unwrap();
        assert!(f.error.is_none(), "{:?}", f.error);
        let labels = train::Labels::of(&track, 0, mode, None).unwrap();
        let (want_train, want_eval) = (labels.train.map(50256), labels.val.map(50256));
        let seen = SEEN_SEPARATORS.lock().unwrap().clone();
        assert!(
            seen.iter().any(|s| s.0) && seen.iter().any(|s| !s.0),
            "{seen:?}"
        );
        for (train_mode, sep) in seen {
            assert_eq!(sep, Some(if train_mode { want_train } else { want_eval }));
        }
        // A submission's nonce gives other labels than the machine's key alone.
        let nonced = train::Labels::of(&track, 0, mode, Some([7; 32])).unwrap();
        assert_ne!(nonced.train, labels.train);
        // The permutation moved it (a fixed point has probability 1/50257).
        assert_ne!(want_train, 50256);
        assert_eq!(want_train == want_eval, mode == train::VocabMode::Secret);
    }
}

/// `model.logits` as the elementwise sign of the head's logits (API 1.1's
/// `sign` op in a 1.1 hook), linked into the test process.
struct SignLogits;

impl Plugin for SignLogits {
    fn new(_: &serde_json::Value) -> api::Result<Self> {
        Ok(SignLogits)
    }
}

impl Logits for SignLogits {
    fn logits(&mut self, _: &ForwardCtx, logits: &Tensor) -> api::Result<Tensor> {
        logits.sign()
    }
}

speedrun_plugin_api::impl_plugin!(SignLogits, name: "sign-logits", hooks: [logits]);

#[test]
fn the_sign_op_is_minus_one_zero_or_one_and_runs_in_the_logits_hook() {
    use speedrun::model::hooks::ForwardCtx;
    use speedrun::model::Model;
    let track = smoke_track();
    let module = NativeModule::in_process(speedrun_plugin_api::native::module::<SignLogits>());
    let p = plugins::start(
        plugins::PluginModule::Native(module),
        Path::new("in-process:sign-logits"),
        &track,
        0,
        None,
        &default_policy(),
    )
    .unwrap();
    assert_eq!(p.manifest().api(), API_VERSION);
    let comps = plugins::compose(&track, vec![p]).unwrap();
    let dev = candle_core::Device::Cpu;
    let model = Model::build(&track.model, comps.hooks, 3, &dev).unwrap();
    let cx = ForwardCtx {
        params: &model.params,
        spec: &track.model,
        train: true,
        tokens: None,
        precision: Default::default(),
    };
    // A stream with exact zeros in it: their logits are exactly 0.
    let d = track.model.width;
    let mut xs: Vec<f32> = (0..2 * 3 * d)
        .map(|i| ((i * 7919) % 97) as f32 / 48.0 - 1.0)
        .collect();
    xs[..d].iter_mut().for_each(|v| *v = 0.0);
    let x = candle_core::Tensor::from_vec(xs, (2, 3, d), &dev).unwrap();
    let got: Vec<f32> = model
        .head(&cx, &x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let wte = model.params.get("transformer.wte.weight").unwrap();
    let plain: Vec<f32> = x
        .broadcast_matmul(&wte.t().unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let naive = |v: f32| {
        if v > 0.0 {
            1.0
        } else if v < 0.0 {
            -1.0
        } else {
            0.0
        }
    };
    let v = track.model.vocab;
    assert!(
        got[..v].iter().all(|&g| g == 0.0),
        "a zero row's logits are 0"
    );
    for (i, (&g, &l)) in got.iter().zip(&plain).enumerate().skip(v) {
        // Far from zero the sign cannot differ between the two matmuls.
        if l.abs() > 1e-4 {
            assert_eq!(g, naive(l), "logit {i}: {l}");
        }
    }
    assert!(got.contains(&1.0) && got.contains(&-1.0));
}

#[test]
fn the_op_table_lists_every_op() {
    // docs/plugins.md's table is generated (scripts/op-table.py); an op added
    // without rerunning it is caught here.
    let doc = std::fs::read_to_string(root().join("docs/plugins.md")).unwrap();
    let missing: Vec<&str> = api::Op::ALL
        .iter()
        .map(|op| op.name())
        .filter(|name| !doc.contains(&format!("\n| `{name}` | ")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/plugins.md's op table lacks {missing:?}: run scripts/op-table.py"
    );
}
