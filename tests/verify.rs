//! Run-time verification: for each check, a plugin that tries to game it is
//! caught and the verdict names the check; an honest stack passes every check;
//! an untimed warm-up leaves the timed run exactly as it would be without it.

use crate::common;
use common::*;
use speedrun::record::RunStatus;

use speedrun::plugins::Components;
use speedrun::plugins::{self, native::NativeModule};
use speedrun::train::{self, Finished};
use speedrun::verify::{Check, Outcome, Verdict};
use speedrun_plugin_api::*;
use std::path::Path;

/// One plugin, several tricks: `game` in its configuration picks one. With
/// `"none"` it is an honest reference attention + MLP + constant schedule.
struct Gamer {
    game: String,
    /// Training-batch MLP calls of layer 0 this instance served (the NaN trick
    /// waits for `after`; with pure forward hooks it sees at most one).
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
        // Forward hooks are pure (a fresh instance each call), so this count
        // never passes 1: a trick that waits for the n-th call never fires.
        if cx.train && layer == 0 {
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
        // The null-data control is made for record claims only.
        let want = if c.check == Check::NullControl {
            Outcome::Skipped
        } else {
            Outcome::Passed
        };
        assert_eq!(c.outcome, want, "{c:?}");
    }
    // Twins of real batches: step 0's and the whole final validation's at least.
    let causality = &v.get(Check::Causality).unwrap().detail;
    assert!(
        causality.contains("twin forwards of real batches"),
        "{causality}"
    );
    let twins: usize = causality
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(twins >= 2, "{causality}");
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
    // Caught by a twin of the initial validation or of step 0's batch, before
    // any training step completed.
    assert_eq!(f.summary.steps, 0);
}

#[test]
fn assign_during_eval_is_refused_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("runs.db");
    let mut opts = smoke_options(tmp.path(), Some(12));
    opts.store = Some(speedrun::store::Store::open(&db).unwrap());
    let mut comps = Some(gamer_stack(serde_json::json!({"game": "eval_assign"})));
    let f = train::execute(&opts, &mut || Ok(comps.take().unwrap())).unwrap();
    // Writes are for optimizer hooks, in any mode: the contract refuses it
    // (the first forward is the initial model's validation).
    assert_caught(
        &f,
        tmp.path(),
        Check::OpContract,
        "plugin gamer, hook model.mlp: op assign is not allowed",
    );
    let err = format!("{:#}", f.error.unwrap());
    assert!(err.contains("op_contract"), "{err}");
    // The store holds the same verdict, the run failed and invalid.
    let store = speedrun::store::Store::open(&db).unwrap();
    let run = store.run(&f.summary.store_id.unwrap().to_string()).unwrap();
    assert_eq!((run.status, run.valid), (RunStatus::Failed, Some(false)));
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
    // Forward hooks keep nothing, in any mode: the contract refuses it.
    assert_caught(
        &f,
        tmp.path(),
        Check::OpContract,
        "op keep is not allowed in hook model.mlp",
    );
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
    // A NaN in every training forward: caught at step 0.
    let f = run_game(
        tmp.path(),
        serde_json::json!({"game": "nan", "after": 0}),
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
    assert_eq!(step, 0, "{detail}");
    assert_eq!(f.summary.steps, step, "steps before the NaN are recorded");
    // The curve up to the NaN is kept.
    let lines = std::fs::read_to_string(tmp.path().join("metrics.jsonl")).unwrap();
    assert_eq!(lines.matches("\"kind\":\"step\"").count(), step);
}

#[test]
fn a_trick_that_counts_forward_calls_never_fires() {
    // "NaN after the 4th training forward": instance state that pure forward
    // hooks reset before every call, so the run trains and is valid.
    let tmp = tempfile::tempdir().unwrap();
    let f = run_game(
        tmp.path(),
        serde_json::json!({"game": "nan", "after": 4}),
        12,
    );
    assert!(f.error.is_none(), "{:?}", f.error);
    assert!(f.summary.verdict.valid);
    assert_eq!(f.summary.steps, 12);
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

// ---- The adversarial suite: tests/fixtures/adversary, one trick per class ----
//
// Each test runs the fixture (built as a native library and, where the class
// applies to both, as wasm) with one `attack` and asserts the check that names
// it, or that the host leaves the trick nothing to gain.

use speedrun::train::VocabMode;

fn adversary_dir() -> std::path::PathBuf {
    root().join("tests/fixtures/adversary")
}

/// A run of the adversary with `config` (merged into its defaults) for `steps`.
fn adversary_run(
    out: &Path,
    config: serde_json::Value,
    steps: usize,
    wasm: bool,
    vocab: VocabMode,
) -> Finished {
    adversary_run_with(smoke_options(out, Some(steps)), config, wasm, vocab)
}

fn adversary_run_with(
    opts: speedrun::train::RunOptions,
    config: serde_json::Value,
    wasm: bool,
    vocab: VocabMode,
) -> Finished {
    adversary_try(opts, config, wasm, vocab).unwrap()
}

fn adversary_try(
    mut opts: speedrun::train::RunOptions,
    config: serde_json::Value,
    wasm: bool,
    vocab: VocabMode,
) -> anyhow::Result<Finished> {
    opts.vocab = vocab;
    let track = opts.track.track.clone();
    let arg = format!("adversary={config}");
    train::execute(&opts, &mut || {
        plugins::stack(
            &track,
            0,
            &[adversary_dir()],
            std::slice::from_ref(&arg),
            wasm,
            &default_policy(),
        )
    })
}

fn attack(name: &str) -> serde_json::Value {
    serde_json::json!({ "attack": name })
}

#[test]
fn adversary_look_ahead_on_real_batches_is_caught_by_twin_forwards() {
    let tmp = tempfile::tempdir().unwrap();
    // Native: a look-ahead only on batches of more than one row (the old probe
    // ran one sequence); wasm: only in eval mode.
    // And on one row of each batch only: every row of a twin is compared.
    for (trick, wasm) in [
        ("lookahead_batch", false),
        ("lookahead_eval", true),
        ("lookahead_row0", false),
    ] {
        let dir = tmp.path().join(trick);
        let f = adversary_run(&dir, attack(trick), 20, wasm, VocabMode::Secret);
        assert_caught(&f, &dir, Check::Causality, "a real batch of");
    }
}

#[test]
fn adversary_call_counting_never_fires_in_pure_forward_hooks() {
    let tmp = tempfile::tempdir().unwrap();
    for wasm in [false, true] {
        let dir = tmp.path().join(format!("count-{wasm}"));
        let f = adversary_run(&dir, attack("count"), 60, wasm, VocabMode::Secret);
        assert!(f.error.is_none(), "wasm {wasm}: {:?}", f.error);
        assert!(f.summary.verdict.valid, "wasm {wasm}");
        // A look-ahead that fired would drive the loss towards 0; the honest
        // model is still above 3 nats after 60 smoke steps.
        let loss = f.summary.final_val_loss.unwrap();
        assert!(
            loss > 2.5,
            "wasm {wasm}: the look-ahead fired (loss {loss})"
        );
    }
}

#[test]
fn adversary_reading_validation_tokens_back_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for wasm in [false, true] {
        let dir = tmp.path().join(format!("memorize-{wasm}"));
        let f = adversary_run(&dir, attack("memorize"), 5, wasm, VocabMode::Secret);
        // The plugin swallows the refusal; the verdict still names it.
        assert_caught(
            &f,
            &dir,
            Check::EvalIsolation,
            "op to_scalar in hook model.head",
        );
        // An error as the side channel: index by the tokens into a small
        // table, swallow the failure. Any failed op in eval mode is a violation.
        let dir = tmp.path().join(format!("error-{wasm}"));
        let f = adversary_run(&dir, attack("error_probe"), 5, wasm, VocabMode::Secret);
        assert_caught(
            &f,
            &dir,
            Check::EvalIsolation,
            "any op error in eval mode is a violation",
        );
    }
}

#[test]
fn adversary_keeping_state_from_a_training_forward_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for wasm in [false, true] {
        let dir = tmp.path().join(format!("keep-{wasm}"));
        let f = adversary_run(&dir, attack("keep_train"), 3, wasm, VocabMode::Secret);
        assert_caught(
            &f,
            &dir,
            Check::OpContract,
            "op keep is not allowed in hook model.head",
        );
    }
}

#[test]
fn adversary_tricks_in_the_api_1_1_hooks_are_caught_by_name() {
    // The hooks added in 1.1 are forward hooks like the others: twinned,
    // pure, eval-isolated. A look-ahead through them, a read-back and a kept
    // handle, each on one transport and the other.
    let tmp = tempfile::tempdir().unwrap();
    for (trick, wasm, check, needle) in [
        (
            "lookahead_logits",
            false,
            Check::Causality,
            "a real batch of",
        ),
        (
            "lookahead_block_input",
            true,
            Check::Causality,
            "eval mode, a real batch of",
        ),
        (
            "memorize_qkv",
            false,
            Check::EvalIsolation,
            "op to_scalar in hook model.qkv",
        ),
        (
            "keep_block_input",
            true,
            Check::OpContract,
            "op keep is not allowed in hook model.block_input",
        ),
    ] {
        let dir = tmp.path().join(trick);
        let f = adversary_run(&dir, attack(trick), 8, wasm, VocabMode::Secret);
        assert_caught(&f, &dir, check, needle);
    }
}

/// Log-frequencies of the real token ids in the smoke track's training shards.
fn real_unigram_log_prior() -> Vec<f64> {
    let lt = speedrun::track::load("smoke").unwrap();
    let data = speedrun::data::loader::TrackData::open(&lt, None).unwrap();
    let mut counts = vec![1.0f64; lt.track.model.vocab];
    for s in &data.train {
        for t in s.to_vec() {
            counts[t as usize] += 1.0;
        }
    }
    let total: f64 = counts.iter().sum();
    counts.iter().map(|c| (c / total).ln()).collect()
}

#[test]
fn adversary_outside_knowledge_is_worthless_under_the_permutation_and_caught_without_it() {
    let tmp = tempfile::tempdir().unwrap();
    let config = serde_json::json!({ "attack": "prior", "prior": real_unigram_log_prior() });
    let ln_v = (256f64).ln();
    // Under the secret permutation the real-id prior is noise: the initial
    // model is no better than uniform.
    let dir = tmp.path().join("secret");
    let f = adversary_run(&dir, config.clone(), 3, false, VocabMode::Secret);
    let c = f.summary.verdict.get(Check::InitialModel).unwrap();
    assert_eq!(c.outcome, Outcome::Passed, "{}", c.detail);
    let initial = f.summary.best_val_loss.unwrap();
    assert!(initial > ln_v - 0.05, "initial loss {initial}");
    // On the real ids (what a run without the permutation would be) it knows
    // the data before training, and the initial-model check names it.
    let dir = tmp.path().join("real");
    let f = adversary_run(&dir, config, 3, false, VocabMode::Identity);
    assert_caught(
        &f,
        &dir,
        Check::InitialModel,
        "it knew the data before training",
    );
}

#[test]
fn adversary_smuggled_values_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // wte of the smoke model: 256 x 32 values written at step 0 from literals.
    let dir = tmp.path().join("step");
    let cfg = serde_json::json!({ "attack": "smuggle_step", "smuggle": 256 * 32 });
    let f = adversary_run(&dir, cfg, 3, true, VocabMode::Secret);
    assert_caught(&f, &dir, Check::PluginInputs, "inputs.max_literal_elements");
    // The same, one `full([1], v)` at a time: each one counts.
    let dir = tmp.path().join("full");
    let cfg = serde_json::json!({ "attack": "smuggle_full", "smuggle": 5000 });
    let f = adversary_run(&dir, cfg, 3, true, VocabMode::Secret);
    assert_caught(&f, &dir, Check::PluginInputs, "inputs.max_literal_elements");
    // Scalar arguments are bounded by the ops a call may make.
    let dir = tmp.path().join("ops");
    let cfg = serde_json::json!({ "attack": "many_ops", "smuggle": 9000 });
    let f = adversary_run(&dir, cfg, 3, false, VocabMode::Secret);
    assert_caught(&f, &dir, Check::PluginInputs, "inputs.max_ops_per_call");
    // model.init is declarative (no from_values), and optimizer.init starts
    // from zeros and constants: the refusal stops the run as a violation,
    // also when it happens first in the untimed warm-up's stack (the same
    // `Stack::assemble`), which must not pass for "could not run".
    for (trick, hook, wasm, warm_up) in [
        ("init_values", "model.init", true, 0),
        ("smuggle_init", "optimizer.init", false, 0),
        ("init_values", "model.init", false, 2),
        ("smuggle_init", "optimizer.init", true, 2),
    ] {
        let dir = tmp.path().join(format!("{trick}-{warm_up}"));
        let mut opts = smoke_options(&dir, Some(3));
        opts.track.track.train.warmup_steps = warm_up;
        let Err(e) = adversary_try(opts, attack(trick), wasm, VocabMode::Secret) else {
            panic!("{trick}: the run started");
        };
        let v = speedrun::verify::violation_of(&e).expect("a violation");
        assert_eq!(v.check, Check::OpContract);
        let err = format!("{e:#}");
        assert!(
            err.contains(&format!("op from_values is not allowed in hook {hook}")),
            "{err}"
        );
        assert_eq!(speedrun::cli::exit_code(&e), 2);
    }
}

#[test]
fn adversary_init_hooks_run_on_the_training_clock() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = serde_json::json!({ "attack": "slow_init", "sleep_ms": 400 });
    let f = adversary_run(tmp.path(), cfg, 2, false, VocabMode::Secret);
    assert!(f.error.is_none(), "{:?}", f.error);
    assert!(f.summary.train_time_s >= 0.4, "{}", f.summary.train_time_s);
    let t = &f.summary.verdict.get(Check::Timing).unwrap().detail;
    assert!(t.contains("init hooks on the clock (0.4"), "{t}");
    // The clock the target is measured on starts before init too.
    let line = std::fs::read_to_string(tmp.path().join("metrics.jsonl")).unwrap();
    let first_val: serde_json::Value = line
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["kind"] == "val")
        .unwrap();
    assert!(first_val["train_time_s"].as_f64().unwrap() >= 0.4);
}

#[test]
fn adversary_statics_do_not_survive_between_stack_instances() {
    let tmp = tempfile::tempdir().unwrap();
    // An untimed warm-up builds the stack twice in one run, and the second
    // run builds it twice again: four loads of one library file.
    for run in 0..2 {
        let dir = tmp.path().join(format!("run{run}"));
        let mut opts = smoke_options(&dir, Some(12));
        opts.track.track.train.warmup_steps = 3;
        let f = adversary_run_with(opts, attack("static"), false, VocabMode::Secret);
        assert!(f.error.is_none(), "run {run}: {:?}", f.error);
        assert_eq!(f.summary.warmup_steps, 3);
    }
}

#[test]
fn adversary_runs_record_what_they_brought_in() {
    let tmp = tempfile::tempdir().unwrap();
    let f = adversary_run(tmp.path(), attack("none"), 5, true, VocabMode::Secret);
    assert!(f.summary.verdict.valid);
    let d = &f.summary.verdict.get(Check::PluginInputs).unwrap().detail;
    assert!(d.starts_with("adversary (wasm "), "{d}");
    assert!(
        d.contains("0 elements from its constants (cap 4096)"),
        "{d}"
    );
    assert!(d.contains("ops in a hook call (cap 8192)"), "{d}");
}

#[test]
fn a_wasm_module_over_the_size_cap_is_refused_at_load() {
    let wat = format!(
        r#"(module (memory (export "memory") 40) (data (i32.const 0) "{}"))"#,
        "\\00".repeat(2 << 20)
    );
    let bytes = wat::parse_str(&wat).unwrap();
    let limits = speedrun::plugins::wasm::WasmLimits::default();
    let err = match speedrun::plugins::wasm::WasmModule::from_bytes(&bytes, limits) {
        Ok(_) => panic!("a 2 MiB module loaded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("over the policy's cap of 1048576 bytes (wasm.max_module_bytes)"),
        "{err}"
    );
}

#[test]
fn the_null_data_control_passes_an_honest_stack_and_fails_a_look_ahead() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = smoke_options(&tmp.path().join("reference"), Some(60));
    let track = opts.track.track.clone();
    let c = train::null_control(&opts, &mut || Ok(Components::reference(&track))).unwrap();
    assert_eq!(c.outcome, Outcome::Passed, "{}", c.detail);
    // The honest model learns nothing of use under the other labels: about
    // ln V or worse. Where in that range depends on the permutations, which
    // come from the machine's host key: over 25 random keys the score ran
    // 5.43-6.92 against ln 256 = 5.55 (a fifth of them just under it), so the
    // bound is 0.95 ln V, still far above the floor's 0.8.
    let score: f64 = c.detail.split("scored ").nth(1).unwrap()[..6]
        .parse()
        .unwrap();
    assert!(score > 0.95 * (256f64).ln(), "{}", c.detail);
    assert!(tmp
        .path()
        .join("reference/null-control/summary.json")
        .exists());

    let opts = smoke_options(&tmp.path().join("lookahead"), Some(20));
    let arg = format!("adversary={}", attack("lookahead_batch"));
    let c = train::null_control(&opts, &mut || {
        plugins::stack(
            &track,
            0,
            &[adversary_dir()],
            std::slice::from_ref(&arg),
            false,
            &default_policy(),
        )
    })
    .unwrap();
    assert_eq!(c.outcome, Outcome::Failed, "{}", c.detail);
    assert!(
        c.detail.contains("the null-data control run"),
        "{}",
        c.detail
    );
}
