//! The run store and the views over it: a killed run leaves a consistent store
//! with the run marked incomplete; the significance bench runs, stores and
//! reports; leaderboard, frontier and show read it back, as text and JSON.

use crate::common;
use common::*;
use speedrun::record::RunStatus;

use speedrun::store::Store;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn json_of(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", text(o));
    stdout_json(o)
}

#[test]
fn a_run_killed_mid_way_leaves_a_consistent_store_marked_incomplete() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("runs.db");
    let out = tmp.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_speedrun"))
        .args(["run", "--track", "smoke", "--quiet", "--out"])
        .arg(&out)
        .arg("--db")
        .arg(&db)
        .env("SPEEDRUN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the run has recorded its first validation and a few steps.
    let started = Instant::now();
    loop {
        let steps = std::fs::read_to_string(out.join("metrics.jsonl"))
            .map(|t| t.matches("\"kind\":\"step\"").count())
            .unwrap_or(0);
        if steps >= 10 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // While it runs, the store says so (opening it does not mark a live run).
    {
        let store = Store::open(&db).unwrap();
        assert_eq!(store.runs(None).unwrap()[0].status, RunStatus::Running);
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no handler runs
    child.wait().unwrap();

    let store = Store::open(&db).unwrap();
    assert_eq!(store.integrity().unwrap(), "ok");
    let runs = store.runs(Some("smoke")).unwrap();
    assert_eq!(runs.len(), 1);
    let r = &runs[0];
    assert_eq!(r.status, RunStatus::Incomplete);
    assert!(r
        .error
        .as_deref()
        .unwrap()
        .contains("ended before the run finished"));
    assert_eq!(r.valid, None, "an incomplete run has no verdict");
    // What was recorded before the kill is kept: the step-0 validation.
    let evals = store.evaluations(r.id).unwrap();
    assert_eq!(evals[0].step, 0);
    // An incomplete run is left out of the leaderboard and shows as such.
    let board = json_of(&speedrun_db(
        &db,
        &["leaderboard", "--track", "smoke", "--json"],
    ));
    assert_eq!(board["runs"].as_array().unwrap().len(), 0);
    assert_eq!(board["excluded"], 1);
    let shown = json_of(&speedrun_db(&db, &["show", &r.id.to_string(), "--json"]));
    assert_eq!(shown["run"]["status"], "incomplete");
}

#[test]
fn bench_over_two_seeds_reports_stores_and_feeds_the_views() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("runs.db");
    let out = tmp.path().join("bench");
    let o = speedrun_db(
        &db,
        &[
            "bench",
            "--track",
            "smoke",
            "--seeds",
            "2",
            "--json",
            "--label",
            "reference again",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let r = json_of(&o);
    assert_eq!(r["seeds"], serde_json::json!([0, 1]));
    for side in ["candidate", "baseline"] {
        let runs = r[side]["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2);
        for run in runs {
            assert_eq!(run["valid"], true, "{run}");
            assert!(Path::new(run["run_dir"].as_str().unwrap())
                .join("summary.json")
                .exists());
        }
        assert_eq!(r[side]["val_loss"]["n"], 2);
    }
    // The reference against itself: same seeds, same curves, a zero loss delta.
    assert_eq!(r["loss_delta"]["estimate"], 0.0);
    for key in [
        "candidate_below_target",
        "baseline_below_target",
        "speedup",
        "speedup_two_sided",
    ] {
        let p = r["p_values"][key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p), "{key} = {p}");
    }
    assert!(
        r["verdict"].is_string() && r["verdict"] != "invalid",
        "{}",
        r["verdict"]
    );
    let comparison = r["comparison_id"].as_i64().unwrap();
    assert!(comparison >= 1);

    // Interleaved: candidate, baseline, candidate, baseline (store ids in order).
    let ids: Vec<i64> = [
        ("candidate", 0),
        ("baseline", 0),
        ("candidate", 1),
        ("baseline", 1),
    ]
    .iter()
    .map(|(s, i)| r[*s]["runs"][*i]["store_id"].as_i64().unwrap())
    .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    let board = json_of(&speedrun_db(
        &db,
        &["leaderboard", "--track", "smoke", "--json"],
    ));
    let ranked = board["runs"].as_array().unwrap();
    assert_eq!(ranked.len(), 4);
    // Runs that reached the target come first, by time to target.
    let key = |v: &serde_json::Value| v["time_to_target_s"].as_f64().unwrap_or(f64::INFINITY);
    assert!(ranked.windows(2).all(|w| key(&w[0]) <= key(&w[1])));
    let text_board = text(&speedrun_db(&db, &["leaderboard", "--track", "smoke"]));
    assert!(
        text_board.contains("rank") && text_board.contains("reference"),
        "{text_board}"
    );

    let svg = tmp.path().join("frontier.svg");
    let f = json_of(&speedrun_db(
        &db,
        &[
            "frontier",
            "--track",
            "smoke",
            "--json",
            "--svg",
            svg.to_str().unwrap(),
        ],
    ));
    let axes = f["axes"].as_array().unwrap();
    assert_eq!(axes.len(), 3);
    for a in axes {
        let runs = a["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 4);
        assert!(runs.iter().any(|e| e["on_frontier"] == true));
        for e in runs.iter().filter(|e| e["on_frontier"] == true) {
            assert_eq!(e["distance"], 0.0, "{e}");
        }
    }
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));

    let curves = tmp.path().join("curves.svg");
    let s = json_of(&speedrun_db(
        &db,
        &[
            "show",
            &ids[0].to_string(),
            "--json",
            "--svg",
            curves.to_str().unwrap(),
        ],
    ));
    assert_eq!(s["run"]["status"], "complete");
    assert_eq!(s["verdict"]["valid"], true);
    assert_eq!(
        s["verdict"]["checks"].as_array().unwrap().len(),
        speedrun::verify::Check::ALL.len()
    );
    // Validation every 50 steps of 200, and at step 0.
    assert_eq!(s["evaluations"].as_array().unwrap().len(), 5);
    assert!(std::fs::read_to_string(&curves)
        .unwrap()
        .contains("validation loss"));
    // show takes a run directory too.
    let by_dir = json_of(&speedrun_db(
        &db,
        &[
            "show",
            r["candidate"]["runs"][0]["run_dir"].as_str().unwrap(),
            "--json",
            "--svg",
            curves.to_str().unwrap(),
        ],
    ));
    assert_eq!(by_dir["run"]["id"], ids[0]);

    // The techniques table: one row, every figure from the stored report.
    let ladder = json_of(&smoke_ladder(&db, "json"));
    let rows = ladder["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{ladder}");
    let row = &rows[0];
    assert_eq!(row["stack"], "reference again");
    assert_eq!(row["seeds"], 2);
    assert_eq!(row["comparison_id"], comparison);
    assert_eq!(
        row["p_below_target"],
        r["candidate"]["below_target"]["p_value"]
    );
    assert_eq!(row["speedup"], r["speedup"]["estimate"]);
    assert_eq!(row["val_loss_mean"], r["candidate"]["val_loss"]["mean"]);
    let command = row["command"].as_str().unwrap();
    assert_eq!(
        command,
        "speedrun bench --track smoke --seed-list 0,1 --label 'reference again'"
    );
    let md = text(&smoke_ladder(&db, "markdown"));
    assert!(md.starts_with("| # | stack |"), "{md}");
    assert!(md.contains(&format!("`{command}`")), "{md}");
    // Too few seeds for the default of 5: left out, and said so.
    let few = text(&speedrun_db(&db, &["ladder", "--track", "smoke"]));
    assert!(
        few.contains("0 rows") && few.contains("1 stored comparison(s) left out"),
        "{few}"
    );

    // The row's command reproduces its figures.
    let mut args = split_command(command);
    assert_eq!(args.remove(0), "speedrun");
    args.extend(["--json", "--out"].map(String::from));
    args.push(tmp.path().join("again").display().to_string());
    let argv: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
    let again = json_of(&speedrun_db(&db, &argv));
    assert_eq!(again["candidate"]["val_loss"], r["candidate"]["val_loss"]);
    assert_eq!(again["command"], command);

    // A shortened candidate against the reference's stored full-budget runs:
    // the newest stored reference run of each seed, nothing rerun.
    let newest: Vec<&serde_json::Value> = (0..2)
        .map(|i| &again["baseline"]["runs"][i]["store_id"])
        .collect();
    let before = Store::open(&db).unwrap().runs(Some("smoke")).unwrap().len();
    let short = json_of(&speedrun_db(
        &db,
        &[
            "bench",
            "--track",
            "smoke",
            "--seeds",
            "2",
            "--steps",
            "100",
            "--baseline-steps",
            "200",
            "--baseline-stored",
            "--label",
            "short",
            "--json",
            "--out",
            tmp.path().join("short").to_str().unwrap(),
        ],
    ));
    assert_eq!(short["baseline_stored"], true);
    assert_eq!(
        (short["steps"].as_u64(), short["baseline_steps"].as_u64()),
        (Some(100), Some(200))
    );
    for i in 0..2 {
        assert_eq!(&short["baseline"]["runs"][i]["store_id"], newest[i]);
        assert_eq!(short["baseline"]["runs"][i], again["baseline"]["runs"][i]);
    }
    // Two candidate runs stored, no baseline run; no loss delta across budgets.
    assert_eq!(
        Store::open(&db).unwrap().runs(Some("smoke")).unwrap().len(),
        before + 2
    );
    assert!(short["loss_delta"].is_null(), "{}", short["loss_delta"]);
    assert_eq!(short["baseline"]["val_loss"], again["baseline"]["val_loss"]);
    let short_command = short["command"].as_str().unwrap();
    assert!(
        short_command.contains("--steps 100 --baseline-steps 200")
            && !short_command.contains("--baseline-stored"),
        "{short_command}"
    );
    // A seed the store has no reference run of: refused before any training.
    let missing = speedrun_db(
        &db,
        &[
            "bench",
            "--track",
            "smoke",
            "--seed-list",
            "0,7",
            "--baseline-stored",
            "--out",
            tmp.path().join("missing").to_str().unwrap(),
        ],
    );
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("no complete reference run of seed 7"), "{err}");
    assert_eq!(
        Store::open(&db).unwrap().runs(Some("smoke")).unwrap().len(),
        before + 2
    );

    // The table now starts with the reference (row 0, from the first row's
    // baseline runs) and shows each row's step count.
    let ladder = json_of(&smoke_ladder(&db, "json"));
    let reference = &ladder["reference"];
    assert_eq!(reference["stack"], "reference (AdamW)");
    assert_eq!(reference["steps"], 200);
    assert_eq!(
        reference["val_loss_mean"],
        r["baseline"]["val_loss"]["mean"]
    );
    let rows = ladder["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{ladder}");
    assert_eq!(
        (rows[2]["stack"].as_str(), rows[2]["steps"].as_u64()),
        (Some("short"), Some(100))
    );
    let md = text(&smoke_ladder(&db, "markdown"));
    assert!(
        md.lines()
            .nth(2)
            .unwrap()
            .starts_with("| 0 | reference (AdamW) | 2 | 200 |"),
        "{md}"
    );
}

/// `speedrun ladder` of the smoke track, rows of 2 seeds or more, in `format`.
fn smoke_ladder(db: &Path, format: &str) -> std::process::Output {
    speedrun_db(
        db,
        &[
            "ladder",
            "--track",
            "smoke",
            "--min-seeds",
            "2",
            "--format",
            format,
        ],
    )
}

/// Splits a command line at spaces, keeping '...' quoted words whole.
fn split_command(c: &str) -> Vec<String> {
    let (mut out, mut word, mut quoted) = (Vec::new(), String::new(), false);
    for ch in c.chars() {
        match ch {
            '\'' => quoted = !quoted,
            ' ' if !quoted => out.extend((!word.is_empty()).then(|| std::mem::take(&mut word))),
            _ => word.push(ch),
        }
    }
    out.extend((!word.is_empty()).then_some(word));
    out
}

#[test]
fn repeated_seeds_and_missing_stores_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("runs.db");
    let o = speedrun_db(&db, &["bench", "--track", "smoke", "--seed-list", "1,2,1"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("seed 1 is repeated"), "{}", text(&o));
    let o = speedrun_db(&db, &["bench", "--track", "smoke", "--seeds", "1"]);
    assert!(text(&o).contains("at least 2 seeds"), "{}", text(&o));
    let o = speedrun_db(&db, &["leaderboard", "--track", "smoke"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no run store at"), "{}", text(&o));
    assert!(!db.exists(), "a view must not create a store");
}

#[test]
fn concurrent_first_opens_of_a_new_store_all_succeed_and_keep_their_runs() {
    let tmp = tempfile::tempdir().unwrap();
    // Threads: eight opens of one new file at the same instant, many times over.
    for round in 0..10 {
        let db = tmp.path().join(format!("threads-{round}.db"));
        let barrier = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        Store::open(&db).map(|_| ())
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap().unwrap();
            }
        });
    }
    // Processes: two runs that create the store together both stay in it.
    let db = tmp.path().join("processes.db");
    let children: Vec<_> = (0..2)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_speedrun"))
                .args([
                    "run", "--track", "smoke", "--steps", "2", "--quiet", "--out",
                ])
                .arg(tmp.path().join(format!("run{i}")))
                .arg("--db")
                .arg(&db)
                .env("SPEEDRUN_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let runs = Store::open(&db).unwrap().runs(Some("smoke")).unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs.iter().all(|r| r.status == RunStatus::Complete));
}

#[test]
fn only_official_valid_full_budget_runs_score_and_the_others_are_labelled() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("runs.db");
    let adversary = root().join("tests/fixtures/adversary");
    let adv = adversary.to_str().unwrap();
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut args = vec![
            "run",
            "--track",
            "smoke",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        speedrun_db(&db, &args)
    };
    assert!(run("full", &[]).status.success());
    assert!(run("truncated", &["--steps", "20"]).status.success());
    // An unapproved native plugin in dev mode: valid but unofficial.
    assert!(run("unofficial", &["--plugin", adv]).status.success());
    let cfg = r#"adversary={"attack": "lookahead_batch"}"#;
    let invalid = run(
        "invalid",
        &["--plugin", adv, "--plugin-config", cfg, "--wasm"],
    );
    assert_eq!(invalid.status.code(), Some(2));
    let store = Store::open(&db).unwrap();
    let runs = store.runs(Some("smoke")).unwrap();
    assert_eq!(runs.len(), 4);
    let full_id = runs
        .iter()
        .find(|r| r.run_dir.ends_with("full"))
        .unwrap()
        .id;

    let lb = json_of(&speedrun_db(
        &db,
        &["leaderboard", "--track", "smoke", "--json"],
    ));
    // The ids under `key` of a JSON array of runs.
    let ids = |runs: &serde_json::Value, key: &str| -> Vec<i64> {
        runs.as_array()
            .unwrap()
            .iter()
            .map(|r| r[key].as_i64().unwrap())
            .collect()
    };
    assert_eq!(ids(&lb["runs"], "id"), vec![full_id], "{lb:#}");
    let why = &lb["excluded_by_reason"];
    assert_eq!(
        (
            why["truncated"].as_u64(),
            why["unofficial"].as_u64(),
            why["invalid"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{lb:#}"
    );
    let t = text(&speedrun_db(&db, &["leaderboard", "--track", "smoke"]));
    assert!(t.contains("1 runs left out: truncated"), "{t}");
    assert!(t.contains("1 runs left out: unofficial"), "{t}");
    assert!(t.contains(" steps "), "{t}");

    let fr = json_of(&speedrun_db(
        &db,
        &[
            "frontier",
            "--track",
            "smoke",
            "--json",
            "--svg",
            tmp.path().join("f.svg").to_str().unwrap(),
        ],
    ));
    for axis in fr["axes"].as_array().unwrap() {
        assert_eq!(ids(&axis["runs"], "run_id"), vec![full_id], "{axis:#}");
    }

    // A bench of an unofficial stack is not a ladder row; it is counted.
    let out = db.with_file_name("bench-unofficial");
    let b = speedrun_db(
        &db,
        &[
            "bench",
            "--track",
            "smoke",
            "--seed-list",
            "0,1",
            "--steps",
            "20",
            "--plugin",
            adv,
            "--out",
            out.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(b.status.success(), "{}", text(&b));
    let l = json_of(&speedrun_db(
        &db,
        &[
            "ladder",
            "--track",
            "smoke",
            "--format",
            "json",
            "--min-seeds",
            "2",
        ],
    ));
    assert!(l["rows"].as_array().unwrap().is_empty(), "{l:#}");
    assert_eq!(l["left_out"], 1, "{l:#}");
}

#[test]
fn a_record_with_an_infinite_speedup_is_refused_by_name_and_nothing_is_lost() {
    // What a time to target of 0 s gives: an infinite speedup, an undefined p.
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("runs.db")).unwrap();
    let sub = store
        .add_submission(
            "smoke",
            "smoke",
            "zero",
            "",
            &"0".repeat(64),
            b"",
            speedrun::record::Transport::Wasm,
        )
        .unwrap();
    let rec = |speedup: f64, p: f64| speedrun::store::NewRecord {
        track: "smoke",
        submission_id: sub,
        comparison_id: None,
        description: "zero",
        time_to_target_s: 0.0,
        val_loss: 3.0,
        p_target: 0.001,
        p_speedup: p,
        speedup,
        previous: "reference",
        seeds: &[0, 1],
        beat: None,
    };
    let e = store.add_record(&rec(f64::INFINITY, 0.01)).unwrap_err();
    assert!(
        format!("{e:#}").contains("its speedup is inf, not a finite number"),
        "{e:#}"
    );
    let e = store.add_record(&rec(2.0, f64::NAN)).unwrap_err();
    assert!(format!("{e:#}").contains("its p (speedup) is NaN"), "{e:#}");
    assert!(store.records("smoke").unwrap().is_empty());
    let id = store.add_record(&rec(2.0, 0.01)).unwrap();
    assert_eq!(
        speedrun::store::RecordClaim::Recorded(store.records("smoke").unwrap()[0].id),
        id
    );
}

#[test]
fn store_handles_on_several_threads_each_get_their_own_ids() {
    // One store opened once and handed to threads: each insert and the id it
    // answers happen under one hold of the connection, so no thread is told
    // another's id.
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("runs.db")).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(|i| {
                        let name = format!("t{t}-{i}");
                        let id = store
                            .add_comparison(
                                "smoke",
                                &name,
                                "reference",
                                "not_significant",
                                &serde_json::json!({}),
                                &[],
                            )
                            .unwrap();
                        (id, name)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let answered: Vec<(i64, String)> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let stored: std::collections::HashMap<i64, String> = store
        .comparisons("smoke")
        .unwrap()
        .into_iter()
        .map(|c| (c.id, c.candidate))
        .collect();
    assert_eq!(stored.len(), 100);
    for (id, name) in answered {
        assert_eq!(stored.get(&id), Some(&name), "comparison {id}");
    }
}

#[test]
fn a_stack_key_names_the_configuration_a_run_set_and_its_label() {
    // Two configurations of one plugin are two stacks; a label leads the key.
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("runs.db");
    let cosine = root().join("plugins/cosine-schedule");
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut args = vec![
            "run",
            "--track",
            "smoke",
            "--steps",
            "5",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
            "--plugin",
            cosine.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = speedrun_db(&db, &args);
        assert!(o.status.success(), "{}", text(&o));
    };
    run("default", &[]);
    run(
        "low",
        &["--plugin-config", r#"cosine-schedule={"min_lr_frac": 0.3}"#],
    );
    run(
        "low-again",
        &["--plugin-config", r#"cosine-schedule={"min_lr_frac": 0.3}"#],
    );
    run(
        "named",
        &[
            "--plugin-config",
            r#"cosine-schedule={"min_lr_frac": 0.3}"#,
            "--label",
            "low floor",
        ],
    );
    let store = Store::open(&db).unwrap();
    let keys: Vec<String> = store
        .runs(Some("smoke"))
        .unwrap()
        .into_iter()
        .map(|r| r.stack)
        .collect();
    let plain = &keys[0];
    assert!(
        plain.starts_with("cosine-schedule@") && !plain.contains('('),
        "{plain}"
    );
    assert_eq!(keys[1], format!("{plain}(min_lr_frac=0.3)"));
    assert_eq!(keys[2], keys[1], "the same configuration is the same stack");
    assert_eq!(keys[3], format!("low floor ({})", keys[1]));
    // `show` prints the configuration the run ran with.
    let shown = text(&speedrun_db(
        &db,
        &[
            "show",
            &store.runs(Some("smoke")).unwrap()[1].id.to_string(),
        ],
    ));
    assert!(
        shown.contains("config {") && shown.contains("\"min_lr_frac\":0.3"),
        "{shown}"
    );
}

#[test]
fn show_of_several_runs_overlays_their_curves_with_the_target() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("runs.db");
    for seed in ["0", "1"] {
        let out = tmp.path().join(format!("s{seed}"));
        let o = speedrun_db(
            &db,
            &[
                "run",
                "--track",
                "smoke",
                "--steps",
                "20",
                "--seed",
                seed,
                "--quiet",
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    let svg = tmp.path().join("both.svg");
    let o = speedrun_db(&db, &["show", "1", "2", "--svg", svg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("run 1 —") && t.contains("run 2 —") && t.contains("overlay plot"),
        "{t}"
    );
    let plot = std::fs::read_to_string(&svg).unwrap();
    for label in [
        "run 1 (reference, seed 0) validation",
        "run 2 (reference, seed 1) train",
        "target 3.2500",
    ] {
        assert!(plot.contains(label), "{label} not in the overlay");
    }
    // One missing run among them: an error naming it, and no plot.
    let o = speedrun_db(
        &db,
        &[
            "show",
            "1",
            "9",
            "--svg",
            tmp.path().join("x.svg").to_str().unwrap(),
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("no run \"9\""),
        "{}",
        text(&o)
    );
}
