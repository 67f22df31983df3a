//! Helpers the plugin, sandbox and policy tests share.
#![allow(dead_code)]

use speedrun::track;
use speedrun::train::RunOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn smoke_track() -> track::Track {
    track::load("smoke").unwrap().track
}

/// Options for a quiet smoke run of `steps` (the track's budget when `None`).
pub fn smoke_options(out: &Path, steps: Option<usize>) -> RunOptions {
    RunOptions {
        track: track::load("smoke").unwrap(),
        seed: 0,
        steps,
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

pub fn default_policy() -> speedrun_sandbox_policy::LoadedPolicy {
    speedrun_sandbox_policy::LoadedPolicy::load(&root().join("sandbox-policy/default.toml"))
        .unwrap()
}

/// Runs the `speedrun` binary with warnings-only logging; runs record themselves
/// in a store, kept out of the tree.
pub fn speedrun(args: &[&str]) -> Output {
    let db = std::env::temp_dir().join(format!("speedrun-tests-{}.db", std::process::id()));
    speedrun_db(&db, args)
}

/// Runs the `speedrun` binary with its run store at `db`.
pub fn speedrun_db(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_speedrun"))
        .args(args)
        .env("SPEEDRUN_LOG", "warn")
        .env("SPEEDRUN_DB", db)
        .output()
        .unwrap()
}

/// The command's stdout as JSON, or a panic showing what it printed.
pub fn stdout_json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(o)))
}

/// stdout and stderr together.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs five smoke steps with the fixture whose optimizer panics at step 1
/// (natively, or built to wasm); answers the process and its output.
pub fn run_panicking_plugin(out: &Path, wasm: bool) -> (Output, String) {
    let plugin = root().join("tests/fixtures/panicking-plugin");
    let mut args = vec![
        "run", "--track", "smoke", "--steps", "5", "--quiet", "--out",
    ];
    args.push(out.to_str().unwrap());
    args.extend(["--plugin", plugin.to_str().unwrap()]);
    if wasm {
        args.push("--wasm");
    }
    let o = speedrun(&args);
    let t = text(&o);
    (o, t)
}
