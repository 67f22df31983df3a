//! The agent's loop end to end: scaffold a crate, submit it, read the verdict;
//! an invalid submission exits 2 naming the check; one that does not compile
//! exits 1 showing the compiler; a winning submission becomes the record and
//! `reverify` rebuilds it from the stored source alone.

use crate::common;
use common::*;

use std::path::Path;
use std::process::Output;

pub(crate) fn scaffold(dir: &Path, hook: &str, name: &str) -> std::path::PathBuf {
    let o = speedrun(&[
        "plugin",
        "new",
        "--hook",
        hook,
        name,
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    dir.join(name)
}

/// Replaces `from` with `to` in the crate's src/lib.rs (as an agent would edit it).
pub(crate) fn edit(krate: &Path, from: &str, to: &str) {
    let p = krate.join("src/lib.rs");
    let s = std::fs::read_to_string(&p).unwrap();
    assert!(s.contains(from), "{from:?} not in the template");
    std::fs::write(&p, s.replacen(from, to, 1)).unwrap();
}

fn verdict(o: &Output) -> serde_json::Value {
    stdout_json(o)
}

/// Every field the verdict's schema documents (AGENTS.md).
const FIELDS: [&str; 23] = [
    "schema",
    "status",
    "exit_code",
    "valid",
    "error",
    "submission",
    "track",
    "target_val_loss",
    "seeds",
    "steps",
    "checks",
    "val_loss",
    "train_time_s",
    "time_to_target_s",
    "p_below_target",
    "target_claim",
    "against_record",
    "against_reference",
    "on_frontier",
    "new_record",
    "record",
    "record_superseded",
    "paths",
];

#[test]
fn a_scaffolded_optimizer_is_built_as_wasm_run_against_the_reference_and_judged() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store/runs.db");
    let krate = scaffold(tmp.path(), "optimizer", "agent-sgd");
    let o = speedrun_db(
        &db,
        &[
            "submit",
            krate.to_str().unwrap(),
            "--track",
            "smoke",
            "--seeds",
            "2",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v = verdict(&o);
    for f in FIELDS {
        assert!(v.get(f).is_some(), "the verdict lacks {f}: {v:#}");
    }
    assert_eq!(v["schema"], "speedrun.submit/1");
    assert_eq!(
        (v["status"].as_str(), v["valid"].as_bool()),
        (Some("valid"), Some(true))
    );
    let s = &v["submission"];
    assert_eq!(s["transport"], "wasm");
    assert_eq!(s["crate_name"], "agent-sgd");
    assert_eq!(s["source_sha256"].as_str().unwrap().len(), 64);
    assert!(s["library_sha256"].is_string());
    assert_eq!(
        v["checks"].as_array().unwrap().len(),
        speedrun::verify::Check::ALL.len()
    );
    // Every check passed; the null-data control is made for record claims only.
    for c in v["checks"].as_array().unwrap() {
        let want = if c["check"] == "null_control" {
            "skipped"
        } else {
            "passed"
        };
        assert_eq!(c["outcome"], want, "{c}");
    }
    assert_eq!(v["val_loss"]["n"], 2);
    assert!(v["p_below_target"].is_number());
    // No record yet: the record to beat is the reference.
    assert_eq!(v["against_record"]["stack"], "reference");
    for key in ["speedup", "welch_p", "loss_delta", "verdict"] {
        assert!(!v["against_record"][key].is_null(), "against_record.{key}");
    }
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for r in runs {
        let dir = Path::new(r["run_dir"].as_str().unwrap());
        assert!(dir.join("metrics.jsonl").is_file() && dir.join("curves.svg").is_file());
    }
    assert!(Path::new(v["paths"]["frontier_svg"].as_str().unwrap()).is_file());
    let curves = std::fs::read_to_string(v["paths"]["curves_svg"].as_str().unwrap()).unwrap();
    assert!(
        curves.contains("candidate seed") && curves.contains("target "),
        "the overlay names its runs and the target"
    );
    // SGD from the template does not beat AdamW on smoke: no record.
    assert_eq!(v["new_record"], false);
    assert!(v["record"].is_null());
    let store = speedrun::store::Store::open(&db).unwrap();
    let sub = store.submission(s["id"].as_i64().unwrap()).unwrap();
    assert_eq!(sub.status, speedrun::record::SubmissionStatus::Valid);
    assert_eq!(sub.source_sha256, s["source_sha256"].as_str().unwrap());
}

#[test]
fn a_submission_that_breaks_a_check_exits_2_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("runs.db");
    let krate = scaffold(tmp.path(), "schedule", "greedy");
    // Ask for the whole token budget again at step 2.
    edit(
        &krate,
        "Ok(ScheduleOut::new(self.lr_scale * lr_mult, 1.0))",
        "let mut out = ScheduleOut::new(self.lr_scale * lr_mult, 1.0);\n        if step == 2 { out.batch_tokens = Some(102400); }\n        Ok(out)",
    );
    let o = speedrun_db(
        &db,
        &[
            "submit",
            krate.to_str().unwrap(),
            "--track",
            "smoke",
            "--seeds",
            "2",
            "--steps",
            "5",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let v = verdict(&o);
    assert_eq!(
        (v["status"].as_str(), v["valid"].as_bool()),
        (Some("invalid"), Some(false))
    );
    let budget = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "token_budget")
        .unwrap();
    assert_eq!(budget["outcome"], "failed");
    assert_eq!(budget["seeds_failed"], serde_json::json!([0, 1]));
    assert!(
        v["error"].as_str().unwrap().contains("token_budget"),
        "{}",
        v["error"]
    );
    // Without --json the check is named on the terminal too.
    let o = speedrun_db(
        &db,
        &[
            "submit",
            krate.to_str().unwrap(),
            "--track",
            "smoke",
            "--seeds",
            "2",
            "--steps",
            "5",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("token_budget"), "{}", text(&o));
}

#[test]
fn a_crate_that_does_not_compile_exits_1_showing_the_compiler() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("runs.db");
    let krate = scaffold(tmp.path(), "schedule", "broken");
    edit(
        &krate,
        "pub struct Linear {",
        "pub struct Linear { oops: UndefinedType,",
    );
    let o = speedrun_db(
        &db,
        &[
            "submit",
            krate.to_str().unwrap(),
            "--track",
            "smoke",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v = verdict(&o);
    assert_eq!(v["status"], "error");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("UndefinedType") && err.contains("error[E0"),
        "{err}"
    );
    // The submission and its source are kept, marked as not built.
    let store = speedrun::store::Store::open(&db).unwrap();
    let sub = store
        .submission(v["submission"]["id"].as_i64().unwrap())
        .unwrap();
    assert_eq!(sub.status, speedrun::record::SubmissionStatus::BuildFailed);
    assert!(!store.submission_source(sub.id).unwrap().is_empty());
}

#[test]
fn native_needs_approval_and_max_wall_bounds_the_submission() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("runs.db");
    let krate = scaffold(tmp.path(), "schedule", "unapproved");
    let o = speedrun_db(
        &db,
        &[
            "submit",
            krate.to_str().unwrap(),
            "--track",
            "smoke",
            "--native",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let v = verdict(&o);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("--native needs the policy's approval"),
        "{}",
        v["error"]
    );
    assert_eq!(v["checks"][0]["check"], "plugins");

    let o = speedrun_db(
        &db,
        &[
            "submit",
            krate.to_str().unwrap(),
            "--track",
            "smoke",
            "--seeds",
            "2",
            "--max-wall",
            "1ms",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(verdict(&o)["error"]
        .as_str()
        .unwrap()
        .contains("wall-clock limit ran out"));
}

#[test]
fn a_winning_submission_becomes_the_record_and_reverifies_from_its_stored_source() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("runs.db");
    // A track with a loose target and validation every 5 steps, so a schedule at
    // 5x the peak learning rate reaches the target in about a third of the
    // reference's steps (15 against 40-45), a margin that survives a loaded machine.
    let track = root().join("tests/fixtures/smoke-record.toml");
    let track = track.to_str().unwrap();
    let fast = scaffold(tmp.path(), "schedule", "fast");
    edit(&fast, "\"lr_scale\": 1.0", "\"lr_scale\": 5.0");
    // Four seeds: under a loaded test machine three left Welch p at 0.063 once
    // (times of one side vary by a third when other tests run beside it).
    let o = speedrun_db(
        &db,
        &[
            "submit",
            fast.to_str().unwrap(),
            "--track",
            track,
            "--seeds",
            "4",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v = verdict(&o);
    assert_eq!(v["new_record"], true, "{:#}", v["against_record"]);
    // A record claim passes its null-data control first.
    let null = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "null_control")
        .unwrap();
    assert_eq!(null["outcome"], "passed", "{null}");
    assert!(null["detail"]
        .as_str()
        .unwrap()
        .contains("validated under an independent one"));
    assert_eq!(v["against_record"]["verdict"], "faster_to_target");
    assert!(v["against_record"]["speedup"]["estimate"].as_f64().unwrap() > 1.5);
    let record_id = v["record"]["id"].as_i64().unwrap();
    let source = v["submission"]["source_sha256"]
        .as_str()
        .unwrap()
        .to_string();

    let o = speedrun_db(&db, &["records", "--track", track, "--format", "json"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["records"].as_array().unwrap().len(), 1);
    assert_eq!(r["current"]["source_sha256"], source.as_str());
    let md = text(&speedrun_db(
        &db,
        &["records", "--track", track, "--format", "markdown"],
    ));
    assert!(
        md.starts_with("| # | record time |") && md.contains("| 1 |"),
        "{md}"
    );

    // The crate is gone: the record is rebuilt from the store alone.
    std::fs::remove_dir_all(&fast).unwrap();
    let o = speedrun_db(&db, &["reverify", &record_id.to_string(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let re = verdict(&o);
    assert_eq!(re["same_library"], true, "the rebuild differs");
    assert_eq!(re["valid"], true);
    assert_eq!(
        re["val_loss_matches_record"], true,
        "same seeds, same curves"
    );
    assert_eq!(re["reproduced"], true);

    // A slower submission, named like the record's crate ("fast"), is run
    // against the record (rebuilt from its source) and the reference, runs its
    // own code, and does not replace it. A folder planted where the record is
    // rebuilt (a broken crate of the record's name) is never reused.
    let planted = tmp.path().join("submissions/record-1/fast");
    std::fs::create_dir_all(planted.join("src")).unwrap();
    std::fs::write(
        planted.join("Cargo.toml"),
        "[package]\nname = \"fast\"\nversion = \"0.1.0\"\n",
    )
    .unwrap();
    std::fs::write(planted.join("src/lib.rs"), "this does not compile").unwrap();
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let slow = scaffold(&other, "schedule", "fast");
    let o = speedrun_db(
        &db,
        &[
            "submit",
            slow.to_str().unwrap(),
            "--track",
            track,
            "--seeds",
            "2",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v = verdict(&o);
    assert_eq!(v["new_record"], false);
    assert_eq!(v["against_record"]["record_id"], record_id);
    assert!(v["against_record"]["stack"]
        .as_str()
        .unwrap()
        .starts_with("record 1"));
    assert_eq!(v["against_reference"]["stack"], "reference");
    // Its own library ran: not the record's, and not the record's curve.
    let record_lib = r["current"]["library_sha256"].as_str().unwrap().to_string();
    assert_ne!(
        v["submission"]["library_sha256"].as_str(),
        Some(record_lib.as_str())
    );
    let delta = v["against_record"]["loss_delta"]["estimate"]
        .as_f64()
        .unwrap();
    assert!(
        delta.abs() > 1e-6,
        "the candidate ran the record's code: {delta}"
    );
    let o = speedrun_db(&db, &["records", "--track", track, "--format", "json"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["records"].as_array().unwrap().len(), 1);

    // A rewritten archive is refused by reverify, naming both hashes.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let sub: i64 = conn
        .query_row(
            "SELECT submission_id FROM records WHERE id = ?1",
            [record_id],
            |r| r.get(0),
        )
        .unwrap();
    conn.execute(
        "UPDATE submissions SET source = X'1f8b0800000000000003' WHERE id = ?1",
        [sub],
    )
    .unwrap();
    drop(conn);
    let o = speedrun_db(&db, &["reverify", &record_id.to_string(), "--json"]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("the archive was changed") && t.contains(&source),
        "{t}"
    );
}

/// The adversary fixture as an agent's own crate: copied out of the workspace
/// with `attack` baked into its default configuration.
fn adversary_crate(dir: &Path, attack: &str) -> std::path::PathBuf {
    let src = root().join("tests/fixtures/adversary");
    let krate = dir.join(format!("adv-{attack}"));
    std::fs::create_dir_all(krate.join("src")).unwrap();
    let lib = std::fs::read_to_string(src.join("src/lib.rs")).unwrap();
    let lib = lib
        .replacen(
            "\"attack\": \"none\"",
            &format!("\"attack\": \"{attack}\""),
            1,
        )
        // The smoke model's wte, for the smuggling trick.
        .replacen("\"smuggle\": 0", "\"smuggle\": 8192", 1);
    std::fs::write(krate.join("src/lib.rs"), lib).unwrap();
    let api = root().join("plugin-api");
    std::fs::write(
        krate.join("Cargo.toml"),
        format!(
            "[package]\nname = \"adv-{attack}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nspeedrun-plugin-api = {{ path = {:?} }}\n\n[workspace]\n",
            api.display().to_string()
        ),
    )
    .unwrap();
    krate
}

#[test]
fn adversarial_submissions_are_invalid_and_never_a_record() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("runs.db");
    let track = root().join("tests/fixtures/smoke-record.toml");
    // A look-ahead would reach any target at step 0; a memoriser reads
    // validation back; a smuggler writes a checkpoint from literals.
    for (attack, check) in [
        ("lookahead_batch", "causality"),
        ("memorize", "eval_isolation"),
        ("smuggle_step", "plugin_inputs"),
    ] {
        let krate = adversary_crate(tmp.path(), attack);
        let o = speedrun_db(
            &db,
            &[
                "submit",
                krate.to_str().unwrap(),
                "--track",
                track.to_str().unwrap(),
                "--seeds",
                "2",
                "--json",
            ],
        );
        assert_eq!(o.status.code(), Some(2), "{attack}: {}", text(&o));
        let v = verdict(&o);
        assert_eq!(v["status"], "invalid", "{attack}");
        assert_eq!(v["new_record"], false, "{attack}");
        let c = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == check)
            .unwrap();
        assert_eq!(c["outcome"], "failed", "{attack}: {c}");
        assert_eq!(c["seeds_failed"].as_array().unwrap().len(), 2, "{attack}");
    }
    let r = speedrun_db(
        &db,
        &[
            "records",
            "--track",
            track.to_str().unwrap(),
            "--format",
            "json",
        ],
    );
    let r: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert!(r["records"].as_array().unwrap().is_empty(), "{r}");
}

#[test]
fn a_plugin_approved_from_its_folder_is_admitted_when_submitted_native() {
    // The snapshot is built elsewhere (the submission's work folder); the
    // library must still be the approved bytes.
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("runs.db");
    let krate = scaffold(tmp.path(), "schedule", "approved-schedule");
    let policy = tmp.path().join("policy.toml");
    std::fs::copy(root().join("sandbox-policy/default.toml"), &policy).unwrap();
    let o = speedrun(&[
        "policy",
        "approve",
        krate.to_str().unwrap(),
        "--by",
        "a test",
        "--policy",
        policy.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let approved = text(&o)
        .split("sha256 ")
        .nth(1)
        .and_then(|s| s.get(..64))
        .unwrap()
        .to_string();
    let o = speedrun_db(
        &db,
        &[
            "submit",
            krate.to_str().unwrap(),
            "--track",
            "smoke",
            "--native",
            "--seeds",
            "2",
            "--steps",
            "20",
            "--policy",
            policy.to_str().unwrap(),
            "--json",
        ],
    );
    let v = verdict(&o);
    assert_eq!(o.status.code(), Some(0), "{v:#}");
    assert_eq!(v["submission"]["library_sha256"], approved.as_str());
    assert_eq!(v["submission"]["transport"], "native");
    let plugins = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "plugins")
        .unwrap();
    assert_eq!(plugins["outcome"], "passed", "{plugins}");
}
