//! The wasm transport: the reference plugins built to wasm reproduce the native
//! curve bit for bit, and hostile modules (written in WAT where Rust cannot
//! express the attack) end the run with an error naming plugin, hook and
//! reason while the host keeps running.

use crate::common;
use common::*;
use speedrun::record::RunStatus;

use speedrun::plugins::wasm::{WasmLimits, WasmModule};
use speedrun::plugins::Components;
use speedrun::plugins::{self, PluginModule};
use speedrun::train;
use std::path::{Path, PathBuf};

const MANIFEST: &str = r#"{\"name\":\"hostile\",\"version\":\"0.0.0\",\"api_version\":1,\"hooks\":[\"optimizer.init\",\"optimizer.step\"],\"config\":{}}"#;

/// A plugin module in WAT: the export surface of `export_plugin!`, a bump
/// allocator, and `body` as `speedrun_call` (locals: $inst, $hp, $hl, $ap, $al;
/// `$step` is 1 in optimizer.step). `extra` goes at module level.
fn hostile(body: &str, extra: &str) -> String {
    let manifest_len = MANIFEST.replace("\\\"", "\"").len();
    format!(
        r#"(module
  (import "speedrun" "call_op" (func $call_op (param i32 i32 i32) (result i64)))
  {extra}
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 8192))
  (data (i32.const 0) "{MANIFEST}")
  (data (i32.const 1024) "\00\00\00\00\00\00\00\00")
  (data (i32.const 2048) "\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00")
  (func (export "speedrun_alloc") (param $n i32) (result i32) (local $p i32)
    global.get $bump
    local.set $p
    global.get $bump
    local.get $n
    i32.add
    global.set $bump
    local.get $p)
  (func (export "speedrun_free") (param i32 i32))
  (func (export "speedrun_manifest") (result i64) (i64.const {manifest_len}))
  (func (export "speedrun_create") (param i32 i32) (result i64) (i64.const {create}))
  (func (export "speedrun_destroy") (param i64))
  (func (export "speedrun_call") (param $inst i64) (param $hp i32) (param $hl i32) (param $ap i32) (param $al i32) (result i64)
    (local $step i32)
    (global.set $bump (i32.const 8192))
    ;; "optimizer.step" has an 's' where "optimizer.init" has an 'i'.
    (local.set $step (i32.eq (i32.load8_u (i32.add (local.get $hp) (i32.const 10))) (i32.const 0x73)))
    {body})
)"#,
        create = (1024i64 << 32) | 8,
    )
}

/// The empty reply frame at 2048.
const EMPTY: i64 = (2048i64 << 32) | 16;

fn start(wat: &str, limits: WasmLimits) -> anyhow::Result<plugins::LoadedPlugin> {
    let bytes = wat::parse_str(wat).unwrap();
    let module = WasmModule::from_bytes(&bytes, limits)?;
    plugins::start(
        PluginModule::Wasm(Box::new(module)),
        Path::new("hostile.wasm"),
        &smoke_track(),
        0,
        None,
        &default_policy(),
    )
}

/// Runs the smoke track with the module as optimizer; answers the error text.
fn run_fails(wat: &str, limits: WasmLimits, out: &Path) -> String {
    let p = start(wat, limits).unwrap();
    let comps = plugins::compose(&smoke_track(), vec![p]).unwrap();
    match train::run(&smoke_options(out, Some(3)), comps) {
        Ok(_) => panic!("the hostile module's run completed"),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_says(err: &str, hook: &str, needle: &str) {
    assert!(
        err.contains(&format!("plugin hostile, hook {hook}")),
        "{err}"
    );
    assert!(err.contains(needle), "{err}");
}

/// The host is still fine: a reference run right after trains normally.
fn host_still_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let s = train::run(
        &smoke_options(tmp.path(), Some(2)),
        Components::reference(&smoke_track()),
    )
    .unwrap();
    assert_eq!(s.status, RunStatus::Complete);
}

fn small_limits() -> WasmLimits {
    WasmLimits {
        fuel_per_call: 50_000_000,
        memory_bytes: 4 << 20,
        max_live_handles: 1000,
        max_tensor_bytes: 64 << 20,
        max_module_bytes: 1 << 20,
    }
}

#[test]
fn an_infinite_loop_hits_the_deadline_and_the_run_keeps_its_telemetry() {
    let tmp = tempfile::tempdir().unwrap();
    let wat = hostile(
        &format!("(if (local.get $step) (then (loop $l (br $l)))) (i64.const {EMPTY})"),
        "",
    );
    let err = run_fails(&wat, small_limits(), tmp.path());
    assert_says(
        &err,
        "optimizer.step",
        "exceeded its deadline of 50000000 wasm instructions",
    );
    let summary = std::fs::read_to_string(tmp.path().join("summary.json")).unwrap();
    assert!(
        summary.contains("\"status\": \"failed\"") || summary.contains("\"status\":\"failed\""),
        "{summary}"
    );
    assert!(tmp.path().join("metrics.jsonl").exists());
    host_still_trains();
}

#[test]
fn memory_growth_past_the_cap_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let wat = hostile(
        &format!("(drop (memory.grow (i32.const 1000))) (i64.const {EMPTY})"),
        "",
    );
    let err = run_fails(&wat, small_limits(), tmp.path());
    assert_says(&err, "optimizer.init", "trapped");
    assert!(err.to_lowercase().contains("memory"), "{err}");
    host_still_trains();
}

#[test]
fn unbounded_recursion_exhausts_the_stack_not_the_host() {
    let tmp = tempfile::tempdir().unwrap();
    let wat = hostile(
        &format!("(drop (call $r (i32.const 0))) (i64.const {EMPTY})"),
        "(func $r (param i32) (result i32) (i32.add (call $r (local.get 0)) (i32.const 1)))",
    );
    let err = run_fails(&wat, small_limits(), tmp.path());
    assert_says(&err, "optimizer.init", "exhausted its call stack");
    host_still_trains();
}

/// A frame at `at`: tensors, ints, floats (none) and text.
fn frame_data(at: usize, tensors: &[u64], ints: &[i64], text: &str) -> (String, usize) {
    let mut b = Vec::new();
    for n in [tensors.len(), ints.len(), 0, text.len()] {
        b.extend_from_slice(&(n as u32).to_le_bytes());
    }
    for t in tensors {
        b.extend_from_slice(&t.to_le_bytes());
    }
    for i in ints {
        b.extend_from_slice(&i.to_le_bytes());
    }
    b.extend_from_slice(text.as_bytes());
    let escaped: String = b.iter().map(|x| format!("\\{x:02x}")).collect();
    (format!("(data (i32.const {at}) \"{escaped}\")"), b.len())
}

/// Calls op `code` on the frame and traps if it failed.
fn op_or_trap(code: u32, at: usize, len: usize) -> String {
    format!(
        "(if (i64.lt_s (call $call_op (i32.const {code}) (i32.const {at}) (i32.const {len})) (i64.const 0)) (then unreachable))"
    )
}

#[test]
fn a_forged_handle_and_a_forbidden_op_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, len) = frame_data(3000, &[0xdead_beef, 0x1234], &[], "");
    let wat = hostile(
        &format!("{} (i64.const {EMPTY})", op_or_trap(30, 3000, len)),
        &data,
    );
    let err = run_fails(&wat, small_limits(), &tmp.path().join("forged"));
    assert_says(
        &err,
        "optimizer.init",
        "op add: handle 0xdeadbeef is not a live tensor of this plugin",
    );

    let (data, len) = frame_data(3000, &[], &[], "transformer.wte.weight");
    let wat = hostile(
        &format!("{} (i64.const {EMPTY})", op_or_trap(110, 3000, len)),
        &data,
    );
    let err = run_fails(&wat, small_limits(), &tmp.path().join("forbidden"));
    assert_says(
        &err,
        "optimizer.init",
        "op param is not allowed in hook optimizer.init",
    );
    host_still_trains();
}

#[test]
fn exhausting_host_memory_through_ops_is_stopped_by_the_byte_cap() {
    let tmp = tempfile::tempdir().unwrap();
    // zeros([4Mi], f32): 16 MiB a call, again and again.
    let (data, len) = frame_data(3000, &[], &[0, 4 << 20], "");
    let body = format!(
        "(loop $l (br_if $l (i64.ge_s (call $call_op (i32.const 1) (i32.const 3000) (i32.const {len})) (i64.const 0)))) unreachable"
    );
    let err = run_fails(&hostile(&body, &data), small_limits(), tmp.path());
    assert_says(&err, "optimizer.init", "over its cap of 67108864 bytes");
    host_still_trains();
}

#[test]
fn a_module_importing_what_the_host_does_not_offer_is_refused_at_load() {
    let wat = hostile(
        &format!("(i64.const {EMPTY})"),
        r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
    );
    let err = match start(&wat, small_limits()) {
        Ok(_) => panic!("loaded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("imports wasi_snapshot_preview1::fd_write, which the host does not offer"),
        "{err}"
    );
}

#[test]
fn a_module_that_lies_about_its_result_buffer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let wat = hostile(&format!("(i64.const {})", (0x7fff_0000i64 << 32) | 64), "");
    let err = run_fails(&wat, small_limits(), tmp.path());
    assert_says(&err, "optimizer.init", "outside its memory");
}

// ---- Rust plugins built to wasm ----

fn wasm_stack(dirs: &[&str]) -> Components {
    let specs: Vec<PathBuf> = dirs.iter().map(|d| root().join(d)).collect();
    plugins::stack(&smoke_track(), 0, &specs, &[], true, &default_policy()).unwrap()
}

#[test]
fn wasm_adamw_and_cosine_match_the_builtin_curve_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let track = smoke_track();
    let builtin = train::run(
        &smoke_options(&tmp.path().join("b"), None),
        Components::reference(&track),
    )
    .unwrap();
    let comps = wasm_stack(&["plugins/adamw", "plugins/cosine-schedule"]);
    assert!(comps
        .plugins
        .iter()
        .all(|p| p.record.transport == speedrun::record::Transport::Wasm));
    let w = train::run(&smoke_options(&tmp.path().join("w"), None), comps).unwrap();
    assert_eq!(builtin.train_losses, w.train_losses);
    assert_eq!(builtin.final_val_loss, w.final_val_loss);

    // relu2 runs as wasm too and trains.
    let s = train::run(
        &smoke_options(&tmp.path().join("r"), Some(30)),
        wasm_stack(&["plugins/relu2"]),
    )
    .unwrap();
    assert!(
        s.train_losses[29] < s.train_losses[0] - 0.5,
        "{:?}",
        s.train_losses
    );
}

#[test]
fn a_panicking_wasm_plugin_is_reported_with_its_message() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (o, text) = run_panicking_plugin(&out, true);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("plugin panicking-plugin, hook optimizer.step"),
        "{text}"
    );
    assert!(
        text.contains("the plugin panicked: index out of bounds"),
        "{text}"
    );

    // `plugin build --wasm` prints the module; `plugin inspect` reads it.
    let built = speedrun(&[
        "plugin",
        "build",
        "--wasm",
        root().join("plugins/cosine-schedule").to_str().unwrap(),
    ]);
    let path = String::from_utf8_lossy(&built.stdout).trim().to_string();
    assert!(path.ends_with(".wasm"), "{path}");
    let inspect = speedrun(&["plugin", "inspect", &path]);
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        text.contains("cosine-schedule 0.1.0")
            && text.contains("(wasm)")
            && text.contains("hooks    schedule"),
        "{text}"
    );
}

#[test]
fn an_out_of_bounds_access_is_named_as_a_rust_stack_overflow_would_be() {
    // Rust's wasm stack lives in linear memory and grows down past address 0,
    // so its overflow traps as an out-of-bounds access, which is what this does.
    let tmp = tempfile::tempdir().unwrap();
    let wat = hostile(
        "(i32.store (i32.const -16) (i32.const 1)) (i64.const 0)",
        "",
    );
    let err = run_fails(&wat, small_limits(), tmp.path());
    assert_says(
        &err,
        "optimizer.init",
        "a Rust plugin's stack overflow ends this way",
    );
    host_still_trains();
}
