//! Run-time verification: for each check, a plugin that tries to game it is
//! caught and the verdict names the check; an honest stack passes every check;
//! an untimed warm-up leaves the timed run exactly as it would be without it.

mod common;
use common::*;

use speedrun::plugins::{self, native::NativeModule};
use speedrun::train::{self, Components, Finished};
use speedrun::verify::{Check, Outcome, Verdict};
use speedrun_plugin_api::*;
use std::path::Path;

/// One plugin, several tricks: `game` in its configuration picks one. With
/// `"none"` it is an honest reference attention + MLP + constant schedule.
struct Gamer {
    game: String,
    /// Training-batch MLP calls of layer 0 so far (the NaN trick waits for `after`).
    calls: usize,
    after: usize,
}

impl Plugin for Gamer {
    fn default_config() -> serde_json::Value {
        serde_json::json!({ "game": "none", "after": 0 })
    }

    fn new(config: &serde_json::Value) -> Result<Self> {
        Ok(Gamer {
            game: config["game"].as_str().unwrap_or("none").to_string(),
            calls: 0,
            after: config["after"].as_u64().unwrap_or(0) as usize,
        })
    }
}

impl Schedule for Gamer {
    fn at(&mut self, step: usize, _total: usize) -> Result<ScheduleOut> {
        let mut out = ScheduleOut::new(1.0, 1.0);
        if self.game == "budget" && step == 3 {
            // Ask for the whole budget in one step, on top of what was used.
            out.batch_tokens = Some(102_400);
        }
        Ok(out)
    }
}

impl Attention for Gamer {
    fn attention(&mut self, cx: &ForwardCtx, layer: usize, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims()?;
        let (b, t, d) = (dims[0], dims[1], dims[2]);
        let (h, hd) = (cx.model.heads, cx.model.head_dim());
        let qkv = linear(
            x,
            &cx.layer_param(layer, "attn.c_attn.weight")?,
            Some(&cx.layer_param(layer, "attn.c_attn.bias")?),
        )?;
        let split = |i: usize| -> Result<Tensor> {
            qkv.narrow(2, i * d, d)?
                .reshape(&[b, t, h, hd])?
                .transpose(1, 2)
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let y = if self.game == "noncausal" {
            // Every position attends to every other: the future leaks back.
            let scores = q
                .matmul(&k.transpose(2, 3)?)?
                .affine(1.0 / (hd as f64).sqrt(), 0.0)?;
            scores.softmax()?.matmul(&v)?
        } else {
            Tensor::causal_attention(&q, &k, &v, None)?
        };
        let y = y.transpose(1, 2)?.reshape(&[b, t, d])?;
        linear(
            &y,
            &cx.layer_param(layer, "attn.c_proj.weight")?,
            Some(&cx.layer_param(layer, "attn.c_proj.bias")?),
        )
    }
}

impl Mlp for Gamer {
    fn mlp(&mut self, cx: &ForwardCtx, layer: usize, x: &Tensor) -> Result<Tensor> {
        let w_fc = cx.layer_param(layer, "mlp.c_fc.weight")?;
        if !cx.train {
            match self.game.as_str() {
                // Tries to write a parameter while the host validates (error passed on).
                "eval_assign" => w_fc.assign(&w_fc.affine(0.5, 0.0)?)?,
                // Tries to keep a handle from validation, and swallows the refusal.
                "eval_keep" => {
                    let _ = x.affine(1.0, 0.0)?.keep();
                }
                _ => {}
            }
        }
        let h = linear(x, &w_fc, Some(&cx.layer_param(layer, "mlp.c_fc.bias")?))?.gelu()?;
        let out = linear(
            &h,
            &cx.layer_param(layer, "mlp.c_proj.weight")?,
            Some(&cx.layer_param(layer, "mlp.c_proj.bias")?),
        )?;
        // Probes run one sequence; training batches are larger.
        if cx.train && layer == 0 && x.dims()?[0] > 1 {
            self.calls += 1;
            if self.game == "nan" && self.calls > self.after {
                return out.affine(f64::NAN, 0.0);
            }
        }
        Ok(out)
    }
}

speedrun_plugin_api::impl_plugin!(Gamer, name: "gamer", hooks: [schedule, attention, mlp]);

fn gamer_stack(config: serde_json::Value) -> Components {
    let module = NativeModule::in_process(speedrun_plugin_api::native::module::<Gamer>());
    let p = plugins::start(
        plugins::PluginModule::Native(module),
        Path::new("in-process:gamer"),
        &smoke_track(),
        0,
        Some(&config),
        &default_policy(),
    )
    .unwrap();
    plugins::compose(&smoke_track(), vec![p]).unwrap()
}

fn run_game(out: &Path, config: serde_json::Value, steps: usize) -> Finished {
    let mut comps = Some(gamer_stack(config));
    train::execute(&smoke_options(out, Some(steps)), &mut || {
        Ok(comps.take().expect("built once"))
    })
    .unwrap()
}

fn on_disk_verdict(dir: &Path) -> Verdict {
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    serde_json::from_value(s["verdict"].clone()).unwrap()
}

/// The run is invalid, `check` failed with a detail holding `needle`, and the
/// verdict on disk says the same.
fn assert_caught(f: &Finished, dir: &Path, check: Check, needle: &str) {
    let v = &f.summary.verdict;
    assert!(!v.valid, "{check}: the run was judged valid");
    let c = v.get(check).unwrap();
    assert_eq!(c.outcome, Outcome::Failed, "{check}: {v:#?}");
    assert!(c.detail.contains(needle), "{check}: {}", c.detail);
    assert_eq!(&on_disk_verdict(dir), v);
}

#[test]
fn an_honest_plugin_passes_every_check() {
    let tmp = tempfile::tempdir().unwrap();
    let f = run_game(tmp.path(), serde_json::json!({"game": "none"}), 12);
    assert!(f.error.is_none(), "{:?}", f.error);
    let v = &f.summary.verdict;
    assert!(v.valid, "{v:#?}");
    for c in &v.checks {
        assert_eq!(c.outcome, Outcome::Passed, "{c:?}");
    }
    // Probes at the start, at a drawn step and at the end, each in both modes.
    let causality = &v.get(Check::Causality).unwrap().detail;
    assert!(causality.starts_with("6 probes"), "{causality}");
    assert!(
        causality.contains("moved by at most 0.000e0"),
        "{causality}"
    );
}

#[test]
fn non_causal_attention_is_caught_by_the_causality_probe() {
    let tmp = tempfile::tempdir().unwrap();
    let f = run_game(tmp.path(), serde_json::json!({"game": "noncausal"}), 12);
    assert!(f.error.is_some());
    assert_caught(&f, tmp.path(), Check::Causality, "the model looks ahead");
    // Caught by the first probe, before any training step.
    assert_eq!(f.summary.steps, 0);
}

#[test]
fn assign_during_eval_is_refused_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("runs.db");
    let mut opts = smoke_options(tmp.path(), Some(12));
    opts.store = Some(db.clone());
    let mut comps = Some(gamer_stack(serde_json::json!({"game": "eval_assign"})));
    let f = train::execute(&opts, &mut || Ok(comps.take().unwrap())).unwrap();
    assert_caught(
        &f,
        tmp.path(),
        Check::EvalIsolation,
        "plugin gamer, hook model.mlp: op assign",
    );
    let err = format!("{:#}", f.error.unwrap());
    assert!(err.contains("eval_isolation"), "{err}");
    // The store holds the same verdict, the run failed and invalid.
    let store = speedrun::store::Store::open(&db).unwrap();
    let run = store.run(&f.summary.store_id.unwrap().to_string()).unwrap();
    assert_eq!((run.status.as_str(), run.valid), ("failed", Some(false)));
    assert_eq!(
        store.verdict(run.id).unwrap().as_ref(),
        Some(&f.summary.verdict)
    );
    assert_eq!(run.stack.split('@').next(), Some("gamer"));
}

#[test]
fn a_handle_kept_from_eval_is_caught_even_when_the_plugin_swallows_the_refusal() {
    let tmp = tempfile::tempdir().unwrap();
    let f = run_game(tmp.path(), serde_json::json!({"game": "eval_keep"}), 12);
    assert_caught(&f, tmp.path(), Check::EvalIsolation, "op keep");
}

#[test]
fn a_schedule_past_the_token_budget_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let f = run_game(tmp.path(), serde_json::json!({"game": "budget"}), 12);
    assert_caught(
        &f,
        tmp.path(),
        Check::TokenBudget,
        "asked for 102400 tokens at step 3; with 1536 already consumed",
    );
    // Three steps trained at the track's batch; the fourth never ran.
    assert_eq!(f.summary.steps, 3);
    assert_eq!(f.summary.tokens, 1536);
}

#[test]
fn a_nan_stops_the_run_naming_the_step() {
    let tmp = tempfile::tempdir().unwrap();
    // NaN from the training step after the 4th on (step 4).
    let f = run_game(
        tmp.path(),
        serde_json::json!({"game": "nan", "after": 4}),
        12,
    );
    assert_caught(
        &f,
        tmp.path(),
        Check::FiniteTraining,
        "the training loss is not finite at step",
    );
    let detail = &f.summary.verdict.get(Check::FiniteTraining).unwrap().detail;
    let step: usize = detail
        .split("at step ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(step, 4, "{detail}");
    assert_eq!(f.summary.steps, step, "steps before the NaN are recorded");
    // The curve up to the NaN is kept.
    let lines = std::fs::read_to_string(tmp.path().join("metrics.jsonl")).unwrap();
    assert_eq!(lines.matches("\"kind\":\"step\"").count(), step);
}

#[test]
fn an_untimed_warm_up_leaves_the_timed_run_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lt = speedrun::track::load("smoke").unwrap();
    let mut opts = smoke_options(&tmp.path().join("plain"), Some(20));
    let plain = train::execute(&opts, &mut || Ok(gamer_stack(serde_json::json!({}))))
        .unwrap()
        .summary;
    lt.track.train.warmup_steps = 5;
    opts.track = lt;
    opts.out = tmp.path().join("warm");
    let mut built = 0;
    let warm = train::execute(&opts, &mut || {
        built += 1;
        Ok(gamer_stack(serde_json::json!({})))
    })
    .unwrap();
    assert!(warm.error.is_none(), "{:?}", warm.error);
    assert_eq!(built, 2, "the warm-up runs on its own copy of the stack");
    let warm = warm.summary;
    assert_eq!(warm.warmup_steps, 5);
    assert_eq!(plain.warmup_steps, 0);
    // Same parameters, same optimizer state, same data: the same curve, bit for bit.
    assert_eq!(plain.train_losses, warm.train_losses);
    assert_eq!(plain.final_val_loss, warm.final_val_loss);
    assert_eq!(
        warm.tokens, plain.tokens,
        "warm-up tokens are not training tokens"
    );
    let timing = &warm.verdict.get(Check::Timing).unwrap();
    assert_eq!(timing.outcome, Outcome::Passed);
    assert!(
        timing.detail.contains("untimed warm-up of 5 steps"),
        "{}",
        timing.detail
    );
}

#[test]
fn a_warm_up_track_refuses_components_it_cannot_rebuild() {
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = smoke_options(tmp.path(), Some(3));
    opts.track.track.train.warmup_steps = 2;
    let err = train::run(&opts, Components::reference(&opts.track.track)).unwrap_err();
    assert!(format!("{err:#}").contains("untimed warm-up"), "{err:#}");
}
