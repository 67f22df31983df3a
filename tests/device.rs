//! The device a run trains on, without a GPU: `--device cuda` refused with what is
//! missing, device memory in telemetry, and the per-run memory budget's errors.

use crate::common;
use speedrun::record::RunStatus;

use common::*;
use speedrun::device::DeviceChoice;
use speedrun::plugins::Components;
use speedrun::train::execute;

#[test]
fn cuda_without_a_gpu_build_is_a_clear_error_and_nothing_is_run() {
    if speedrun::device::CUDA_BUILT {
        return; // a CUDA build: the refusal below is the CPU build's
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = speedrun(&[
        "run",
        "--track",
        "smoke",
        "--steps",
        "2",
        "--quiet",
        "--device",
        "cuda",
        "--out",
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("--device cuda:0") && t.contains("scripts/build-cuda.sh"),
        "{t}"
    );
    assert!(!t.contains("panicked"), "{t}");
    assert!(!out.exists(), "a refused run wrote {}", out.display());

    // Re-running a record refuses before it rebuilds anything.
    let db = dir.path().join("runs.db");
    let o = speedrun(&[
        "reverify",
        "1",
        "--device",
        "cuda",
        "--db",
        db.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("scripts/build-cuda.sh"), "{t}");
    assert!(!db.exists());

    let o = speedrun(&["run", "--track", "smoke", "--device", "tpu"]);
    let t = text(&o);
    assert_ne!(o.status.code(), Some(0));
    assert!(t.contains("unknown device \"tpu\""), "{t}");
    assert_eq!(
        "cuda:1".parse::<DeviceChoice>().unwrap(),
        DeviceChoice::Cuda(1)
    );
}

#[test]
fn every_step_records_device_memory_and_the_summary_its_peak() {
    let dir = tempfile::tempdir().unwrap();
    let opts = smoke_options(dir.path(), Some(3));
    let track = opts.track.track.clone();
    let f = execute(&opts, &mut || Ok(Components::reference(&track))).unwrap();
    assert!(f.error.is_none());
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["kind"] == "step")
        .collect();
    assert_eq!(steps.len(), 3, "{metrics}");
    for s in &steps {
        let (now, peak) = (
            s["memory_bytes"].as_u64().unwrap(),
            s["peak_memory_bytes"].as_u64().unwrap(),
        );
        assert!(now > 0 && peak >= now, "{s}");
        assert!(f.summary.peak_memory_bytes >= peak);
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(
        summary["peak_memory_bytes"].as_u64(),
        Some(f.summary.peak_memory_bytes)
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["device"]["device"], "cpu");
}

#[test]
fn a_run_over_its_memory_budget_fails_naming_the_phase_and_keeps_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let mut opts = smoke_options(&dir.path().join("run"), Some(3));
    opts.store = Some(speedrun::store::Store::open(&db).unwrap());
    // The process's resident set is always over a megabyte.
    opts.device.memory_budget = Some(1 << 20);
    let track = opts.track.track.clone();
    let f = execute(&opts, &mut || Ok(Components::reference(&track))).unwrap();
    let e = format!("{:#}", f.error.expect("the budget was not enforced"));
    assert!(
        e.contains("device memory budget exceeded in the forward pass")
            && e.contains("budget is 1.0 MiB"),
        "{e}"
    );
    assert_eq!(f.summary.status, RunStatus::Failed);
    assert_eq!(f.summary.memory_budget_bytes, Some(1 << 20));
    assert!(f.summary.peak_memory_bytes > 1 << 20);
    // The failed run is on record, with its error.
    let summary = std::fs::read_to_string(dir.path().join("run/summary.json")).unwrap();
    assert!(
        summary.contains("device memory budget exceeded"),
        "{summary}"
    );
    let store = speedrun::store::Store::open(&db).unwrap();
    assert_eq!(store.runs(None).unwrap().len(), 1);
}

#[test]
fn a_plugin_hook_over_the_budget_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = root().join("tests/fixtures/panicking-plugin");
    let o = speedrun(&[
        "run",
        "--track",
        "smoke",
        "--steps",
        "3",
        "--quiet",
        "--memory-budget",
        "1MiB",
        "--out",
        dir.path().join("run").to_str().unwrap(),
        "--plugin",
        plugin.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    // The first plugin hook the run calls is the optimizer's init.
    assert!(
        t.contains("hook optimizer.init") && t.contains("device memory budget exceeded"),
        "{t}"
    );
}
