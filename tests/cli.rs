//! The `speedrun` binary: the report, exit codes and error messages a user sees.

use crate::common;
use common::{speedrun, text};

use std::path::Path;
use std::process::Command;

/// Runs `speedrun args` and asserts it fails with `needle` in its output.
fn fails_saying(args: &[&str], needle: &str) -> String {
    let o = speedrun(args);
    let t = text(&o);
    assert!(!o.status.success(), "speedrun {args:?} succeeded: {t}");
    assert!(
        t.contains(needle),
        "speedrun {args:?} did not say `{needle}`: {t}"
    );
    t
}

#[test]
fn run_and_eval_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let ckpt = dir.path().join("m.safetensors");
    let o = speedrun(&[
        "run",
        "--track",
        "smoke",
        "--steps",
        "30",
        "--seed",
        "3",
        "--out",
        out.to_str().unwrap(),
        "--save-checkpoint",
        ckpt.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("validation loss") && t.contains("bits/byte") && t.contains("tokens/s"),
        "{t}"
    );
    assert!(t.contains("target 3.2500"), "{t}");
    for f in ["manifest.json", "metrics.jsonl", "summary.json"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let val = summary["final_val_loss"].as_f64().unwrap();
    let e = speedrun(&[
        "eval",
        "--track",
        "smoke",
        "--checkpoint",
        ckpt.to_str().unwrap(),
    ]);
    assert!(e.status.success(), "{}", text(&e));
    assert!(
        text(&e).contains(&format!("validation loss {val:.4}")),
        "{} vs {val}",
        text(&e)
    );

    // The same --out again is refused, and the first run is untouched.
    fails_saying(
        &[
            "run",
            "--track",
            "smoke",
            "--steps",
            "2",
            "--out",
            out.to_str().unwrap(),
        ],
        "already holds a run",
    );
    let after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(after, summary);
}

#[test]
fn unknown_track_bad_flag_and_bad_steps_fail_clearly() {
    fails_saying(&["run", "--track", "nope"], "unknown track `nope`");
    fails_saying(&["run", "--bogus-flag"], "--bogus-flag");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    fails_saying(
        &[
            "run",
            "--track",
            "smoke",
            "--steps",
            "100000",
            "--out",
            out.to_str().unwrap(),
        ],
        "exceeds the track's token budget",
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

#[test]
fn corrupt_or_missing_data_is_refused_before_training() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_dir(&root.join("data"), &data);
    // Truncate the training shard: a format fault named with the file.
    let shard = data.join("bytes/shakespeare-milton_train_000000.bin");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 10]).unwrap();
    let (data_arg, r1, r2) = (
        data.to_str().unwrap(),
        dir.path().join("r1"),
        dir.path().join("r2"),
    );
    let t = fails_saying(
        &[
            "run",
            "--track",
            "smoke",
            "--data-dir",
            data_arg,
            "--out",
            r1.to_str().unwrap(),
        ],
        "shakespeare-milton_train_000000.bin",
    );
    assert!(t.contains("truncated"), "{t}");
    assert!(
        !r1.join("metrics.jsonl").exists(),
        "a run started on corrupt data"
    );

    // Same size, changed content: the manifest's hash catches it.
    let mut changed = bytes.clone();
    changed[5000] ^= 1;
    std::fs::write(&shard, &changed).unwrap();
    fails_saying(
        &[
            "run",
            "--track",
            "smoke",
            "--data-dir",
            data_arg,
            "--out",
            r2.to_str().unwrap(),
        ],
        "does not match the manifest",
    );
    let manifest = data.join("manifest.json");
    fails_saying(
        &["data", "verify", "--manifest", manifest.to_str().unwrap()],
        "FAIL  bytes/shakespeare-milton_train_000000.bin",
    );
    let nowhere = dir.path().join("nowhere");
    fails_saying(
        &[
            "run",
            "--track",
            "smoke",
            "--data-dir",
            nowhere.to_str().unwrap(),
        ],
        "does not exist",
    );
}

#[test]
fn data_verify_passes_on_the_shipped_slice() {
    let o = speedrun(&["data", "verify"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("all 4 shards match"), "{}", text(&o));
}

/// The loss curve does not depend on the thread count: the fused kernels reduce in
/// fixed chunks, and candle's matmul splits outputs, not reductions.
#[test]
fn the_curve_is_the_same_for_one_and_three_threads() {
    let dir = tempfile::tempdir().unwrap();
    let curve = |threads: &str| {
        let out = dir.path().join(format!("t{threads}"));
        let o = Command::new(env!("CARGO_BIN_EXE_speedrun"))
            .args([
                "run",
                "--track",
                "smoke",
                "--steps",
                "40",
                "--quiet",
                "--out",
                out.to_str().unwrap(),
            ])
            .env("RAYON_NUM_THREADS", threads)
            // Its store in the tempdir, not runs/ under the source tree.
            .env("SPEEDRUN_DB", dir.path().join("runs.db"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        metrics
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|l| l["kind"] == "step")
            .map(|l| l["train_loss"].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    let one = curve("1");
    assert_eq!(one.len(), 40);
    assert_eq!(one, curve("3"));
}

/// The adversary fixture's `--plugin` arguments for `attack` (extra config keys in `more`).
fn adversary_args(attack: &str, more: &str) -> Vec<String> {
    vec![
        "--plugin".into(),
        common::root()
            .join("tests/fixtures/adversary")
            .display()
            .to_string(),
        "--plugin-config".into(),
        format!(r#"adversary={{"attack": "{attack}"{more}}}"#),
    ]
}

/// Runs a 3-step smoke run with `extra` arguments; answers its exit code and output.
fn smoke_run(dir: &Path, name: &str, extra: &[String]) -> (Option<i32>, String) {
    let out = dir.join(name);
    let mut args: Vec<String> = [
        "run", "--track", "smoke", "--steps", "3", "--quiet", "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(out.display().to_string());
    args.extend_from_slice(extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = speedrun(&refs);
    (o.status.code(), text(&o))
}

#[test]
fn every_check_that_stops_a_run_exits_2_and_a_crash_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases: Vec<(&str, Vec<String>)> = vec![
        ("causality", adversary_args("lookahead_batch", "")),
        ("eval_isolation", adversary_args("memorize", "")),
        ("op_contract", adversary_args("init_values", "")),
        (
            "plugin_inputs",
            adversary_args("smuggle_step", r#", "smuggle": 8192"#),
        ),
        ("full_distribution", adversary_args("narrow_head", "")),
        ("finite_training", adversary_args("nan", "")),
    ];
    // initial_model: the real unigram log-prior, on the real token ids.
    let lt = speedrun::track::load("smoke").unwrap();
    let data = speedrun::data::loader::TrackData::open(&lt, None).unwrap();
    let mut counts = vec![1.0f64; 256];
    for t in data.train.iter().flat_map(|s| s.to_vec()) {
        counts[t as usize] += 1.0;
    }
    let total: f64 = counts.iter().sum();
    let prior: Vec<f64> = counts.iter().map(|c| (c / total).ln()).collect();
    let mut a = adversary_args(
        "prior",
        &format!(r#", "prior": {}"#, serde_json::to_string(&prior).unwrap()),
    );
    a.push("--unpermuted".into());
    cases.push(("initial_model", a));
    for (check, extra) in &cases {
        let (code, t) = smoke_run(dir.path(), check, extra);
        assert_eq!(code, Some(2), "{check}: {t}");
        assert!(t.contains("INVALID") || t.contains(check), "{check}: {t}");
        assert!(t.contains(check), "{check} not named: {t}");
    }

    // data_hashes: a shard that no longer matches the manifest.
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("bytes")).unwrap();
    let root = common::root().join("data");
    std::fs::copy(root.join("manifest.json"), data.join("manifest.json")).unwrap();
    for e in std::fs::read_dir(root.join("bytes")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), data.join("bytes").join(e.file_name())).unwrap();
    }
    let shard = data.join("bytes/shakespeare-milton_train_000000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    let (code, t) = smoke_run(
        dir.path(),
        "data",
        &["--data-dir".into(), data.display().to_string()],
    );
    assert_eq!(code, Some(2), "data_hashes: {t}");
    assert!(t.contains("does not match the manifest"), "{t}");

    // plugins: an unapproved native library under an official policy.
    let policy = dir.path().join("official.toml");
    let text_ =
        std::fs::read_to_string(common::root().join("sandbox-policy/default.toml")).unwrap();
    std::fs::write(
        &policy,
        text_.replacen("mode = \"dev\"", "mode = \"official\"", 1),
    )
    .unwrap();
    let mut extra = adversary_args("none", "");
    extra.extend(["--policy".into(), policy.display().to_string()]);
    let (code, t) = smoke_run(dir.path(), "plugins", &extra);
    assert_eq!(code, Some(2), "plugins: {t}");
    assert!(t.contains("refused by policy"), "{t}");

    // A plugin that crashes could not run: exit 1, not 2.
    let panicking = common::root().join("tests/fixtures/panicking-plugin");
    let (code, t) = smoke_run(
        dir.path(),
        "panic",
        &["--plugin".into(), panicking.display().to_string()],
    );
    assert_eq!(code, Some(1), "completed: {t}");
}

#[test]
fn a_command_line_that_does_not_parse_exits_64_not_2() {
    // 2 means a check failed; a typo must not read as one.
    for args in [
        &["run", "--track", "smoke", "--no-such-flag"][..],
        &["bench", "--track", "smoke", "--seeds", "many"][..],
        &["no-such-command"][..],
    ] {
        let o = speedrun(args);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("error"),
            "{args:?}"
        );
    }
    for args in [&["--help"][..], &["run", "--help"][..], &["--version"][..]] {
        let o = speedrun(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
        assert!(!o.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn ctrl_c_stops_a_run_at_once_records_it_incomplete_and_says_where_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("runs.db");
    let out = tmp.path().join("run");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_speedrun"))
        .args([
            "run",
            "--track",
            "smoke",
            "--out",
            out.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for a few steps on disk, then press Ctrl-C.
    let started = std::time::Instant::now();
    loop {
        let steps = std::fs::read_to_string(out.join("metrics.jsonl"))
            .map(|t| t.matches("\"kind\":\"step\"").count())
            .unwrap_or(0);
        if steps >= 3 {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 120,
            "the run never reached step 3"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted (Ctrl-C or SIGTERM) before step"),
        "{err}"
    );
    assert!(
        err.contains(&format!("the partial run is in {}", out.display())),
        "{err}"
    );
    // The banner came first, and the initial validation had its own line; no
    // colour codes, since stderr is not a terminal.
    assert!(
        err.contains("track smoke")
            && err.contains("  run dir    ")
            && err.contains("  store      "),
        "{err}"
    );
    assert!(err.contains("validation at step 0: loss"), "{err}");
    assert!(
        !err.contains('\x1b'),
        "colour codes in piped output: {err:?}"
    );
    let store = speedrun::store::Store::open(&db).unwrap();
    let run = &store.runs(Some("smoke")).unwrap()[0];
    assert_eq!(run.status, speedrun::record::RunStatus::Incomplete);
    assert!(
        run.error
            .as_deref()
            .unwrap_or("")
            .contains("interrupted (Ctrl-C or SIGTERM)"),
        "{:?}",
        run.error
    );
    assert!(
        run.steps.unwrap_or(0) < 200,
        "it stopped early: {:?}",
        run.steps
    );
}

#[test]
fn a_rotary_checkpoint_evaluates_and_samples_with_its_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("rotary.safetensors");
    let rotary = common::root().join("plugins/rotary");
    let rotary = rotary.to_str().unwrap();
    let out = dir.path().join("run");
    let o = speedrun(&[
        "run",
        "--track",
        "smoke",
        "--steps",
        "40",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
        "--plugin",
        rotary,
        "--save-checkpoint",
        ckpt.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let val = summary["final_val_loss"].as_f64().unwrap();
    // Without its plugin the reference model wants a position table the
    // checkpoint does not have: refused, naming it.
    let e = speedrun(&[
        "eval",
        "--track",
        "smoke",
        "--checkpoint",
        ckpt.to_str().unwrap(),
    ]);
    assert!(
        !e.status.success() && text(&e).contains("transformer.wpe.weight"),
        "{}",
        text(&e)
    );
    let e = speedrun(&[
        "eval",
        "--track",
        "smoke",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--plugin",
        rotary,
    ]);
    assert!(e.status.success(), "{}", text(&e));
    assert!(
        text(&e).contains(&format!("validation loss {val:.4}")),
        "{} vs {val}",
        text(&e)
    );

    // Greedy sampling: deterministic, prompt first, and the first byte is the
    // argmax of the model's own logits for the prompt (computed here).
    let prompt = "ROMEO:\n";
    let sample = |extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--track",
            "smoke",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--plugin",
            rotary,
            "--prompt",
            prompt,
            "--tokens",
            "24",
        ];
        args.extend_from_slice(extra);
        let o = speedrun(&args);
        assert!(o.status.success(), "{}", text(&o));
        o.stdout
    };
    let greedy = sample(&[]);
    assert_eq!(greedy, sample(&[]), "greedy is deterministic");
    assert!(greedy.starts_with(prompt.as_bytes()));
    assert_eq!(
        greedy.len(),
        prompt.len() + 24 + 1,
        "24 bytes and a newline"
    );
    let track = speedrun::track::load("smoke").unwrap();
    let comps = speedrun::plugins::stack(
        &track.track,
        0,
        &[common::root().join("plugins/rotary")],
        &[],
        false,
        &common::default_policy(),
    )
    .unwrap();
    let dev = candle_core::Device::Cpu;
    let model = speedrun::model::Model::build(&track.track.model, comps.hooks, 0, &dev).unwrap();
    speedrun::checkpoint::load_into(&model, &ckpt, &dev).unwrap();
    let ids: Vec<u32> = prompt.bytes().map(u32::from).collect();
    let x = candle_core::Tensor::from_vec(ids.clone(), (1, ids.len()), &dev).unwrap();
    let logits: Vec<Vec<f32>> = model
        .forward(&x, false)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    let last = logits.last().unwrap();
    let best = (0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b });
    assert_eq!(
        greedy[prompt.len()] as usize,
        best,
        "the first generated byte is the argmax"
    );
    // At a temperature: the seed decides the draw.
    let warm = |seed: &str| sample(&["--temperature", "1.0", "--seed", seed]);
    assert_eq!(warm("7"), warm("7"));
    assert_ne!(warm("7"), warm("8"));
    let e = speedrun(&[
        "sample",
        "--track",
        "smoke",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--prompt",
        "",
    ]);
    assert!(
        !e.status.success() && text(&e).contains("the prompt is empty"),
        "{}",
        text(&e)
    );
}

#[test]
fn set_changes_a_track_setting_for_the_run_which_says_so_and_never_scores() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let out = dir.path().join("run");
    let o = common::speedrun_db(
        &db,
        &[
            "run",
            "--track",
            "smoke",
            "--out",
            out.to_str().unwrap(),
            "--set",
            "train.batch_tokens=1024",
            "--set",
            "optimizer.lr=4e-3",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("modified: --set train.batch_tokens=1024 --set optimizer.lr=4e-3"),
        "{t}"
    );
    assert!(
        t.contains("UNOFFICIAL") && t.contains("on a modified track"),
        "{t}"
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["batch_tokens"], 1024);
    assert_eq!(
        manifest["track_overrides"],
        serde_json::json!(["train.batch_tokens=1024", "optimizer.lr=4e-3"])
    );
    assert_eq!(manifest["official"], false);
    let file = speedrun::track::load("smoke").unwrap();
    assert_ne!(
        manifest["track_sha256"],
        file.sha256.as_str(),
        "the changed text's hash"
    );
    // Twice the track's batch over the same token budget: half the steps.
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        lines.matches("\"kind\":\"step\"").count(),
        file.track.steps() / 2
    );
    for (set, says) in [
        ("train.batch_tokens", "expected SECTION.KEY=VALUE"),
        ("nope.key=1", "the track has no [nope] table"),
        ("train.batch_tokens=\"many\"", "batch_tokens"),
        ("lr=1", "the key must be SECTION.KEY"),
    ] {
        let o = common::speedrun_db(&db, &["run", "--track", "smoke", "--quiet", "--set", set]);
        assert!(
            !o.status.success() && text(&o).contains(says),
            "{set}: {}",
            text(&o)
        );
    }
}

#[test]
fn bench_throughput_reports_the_step_each_product_and_the_attention_alone() {
    let o = speedrun(&[
        "bench",
        "throughput",
        "--track",
        "smoke",
        "--steps",
        "12",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["shapes"].as_array().unwrap().len(), 5, "{r}");
    // The peak is sampled once after each timed step (then up to 10 calls).
    assert_eq!(r["matmul_peak_samples"], 12, "{r}");
    let (achieved, peak) = (
        r["gflops"].as_f64().unwrap(),
        r["matmul_peak_gflops"].as_f64().unwrap(),
    );
    assert!(
        peak > 0.0 && (r["fraction_of_peak"].as_f64().unwrap() - achieved / peak).abs() < 1e-12,
        "{r}"
    );
    // The smoke track's attention: 16 sequences of 32, 2 heads of 16.
    let a = &r["attention"];
    let dims: Vec<u64> = ["batch", "seq_len", "heads", "head_dim"]
        .iter()
        .map(|k| a[k].as_u64().unwrap())
        .collect();
    assert_eq!(dims, [16, 32, 2, 16], "{a}");
    for k in [
        "forward_ms",
        "backward_ms",
        "forward_gflops",
        "backward_gflops",
    ] {
        let v = a[k].as_f64().unwrap();
        assert!(v.is_finite() && v > 0.0, "{k}: {a}");
    }
    // The times and the rates are the same measurement: 2 causal products forward.
    let product = 2.0 * (16 * 2 * 16 * 32 * 33 / 2) as f64;
    let ms = 2.0 * product / a["forward_gflops"].as_f64().unwrap() / 1e6;
    assert!(
        (ms - a["forward_ms"].as_f64().unwrap()).abs() < 1e-9 * ms.max(1.0),
        "{a}"
    );
}
