//! Past one machine, for real on this one: the store on a PostgreSQL server
//! and benches, submissions and a cancelled task through a one-node Slurm
//! cluster (`.ci/services.sh` starts both; CI runs it). Without the services
//! (a developer machine without root) these tests say so and pass; under CI
//! they fail instead.

use crate::common::stdout_json as json;
use crate::common::*;
use speedrun::store::{Location, NewRecord, RecordClaim, Store};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// The service's setting, or `None` (with a word why) where it is not running.
fn service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{var} is not set: CI must run the cluster tests (.ci/run starts the services with .ci/services.sh)"
            );
            eprintln!("skipped: {var} is not set (start the services with `eval \"$(.ci/services.sh)\"`, as root)");
            None
        }
    }
}

/// A new, empty PostgreSQL database for one test: its URL.
fn postgres_db(name: &str) -> Option<String> {
    let admin = service("SPEEDRUN_TEST_PG")?;
    let db = format!("speedrun_test_{name}_{}", std::process::id());
    let mut c = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
    // One statement each: neither may run inside a transaction block.
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .unwrap();
    c.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
    let base = admin.rsplit_once('/').unwrap().0;
    Some(format!("{base}/{db}"))
}

/// The one-node cluster's partition.
fn slurm() -> Option<String> {
    service("SPEEDRUN_TEST_SLURM")
}

/// The `speedrun` binary with its store at `db` (a file or a URL), polling Slurm fast.
fn speedrun_cmd(db: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_speedrun"));
    c.env("SPEEDRUN_LOG", "info")
        .env("SPEEDRUN_DB", db)
        .env("SPEEDRUN_SLURM_POLL_MS", "200");
    c
}

/// `speedrun ARGS` with its store at `db`.
fn speedrun_at(db: &str, args: &[&str]) -> Output {
    speedrun_cmd(db).args(args).output().unwrap()
}

/// Each run's (seed, final loss, best loss) of a bench report's side.
fn losses(report: &serde_json::Value, side: &str) -> Vec<(u64, f64, f64)> {
    report[side]["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["seed"].as_u64().unwrap(),
                r["final_val_loss"].as_f64().unwrap(),
                r["best_val_loss"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The table's column names, as the backend describes them.
fn columns(location: &Location, table: &str) -> Vec<String> {
    let mut cols: Vec<String> = match location {
        Location::Sqlite(p) => {
            let c = rusqlite::Connection::open(p).unwrap();
            let mut s = c.prepare("SELECT name FROM pragma_table_info(?1)").unwrap();
            s.query_map([table], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        }
        Location::Postgres(url) => {
            let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
            c.query(
                "SELECT column_name::text FROM information_schema.columns WHERE table_name = $1",
                &[&table],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
        }
    };
    // SQLite's rowid is implicit; PostgreSQL's plugins table names it.
    cols.retain(|c| c != "rowid");
    cols.sort();
    cols
}

#[test]
fn both_backends_migrate_to_the_same_schema_and_serve_every_command_alike() {
    let Some(pg) = postgres_db("commands") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let sqlite = tmp.path().join("runs.db");
    let sqlite = sqlite.to_str().unwrap();
    let mut shown = Vec::new();
    for db in [sqlite, pg.as_str()] {
        let out = tmp.path().join(format!("run-{}", shown.len()));
        let o = speedrun_at(
            db,
            &[
                "run",
                "--track",
                "smoke",
                "--steps",
                "60",
                "--seed",
                "3",
                "--quiet",
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{db}: {}", text(&o));
        // Every command that reads the store answers on both.
        for args in [
            &["leaderboard", "--track", "smoke", "--json"][..],
            &[
                "frontier",
                "--track",
                "smoke",
                "--json",
                "--svg",
                tmp.path().join("f.svg").to_str().unwrap(),
            ],
            &["records", "--track", "smoke", "--format", "json"],
            &[
                "ladder",
                "--track",
                "smoke",
                "--format",
                "json",
                "--min-seeds",
                "1",
            ],
        ] {
            let o = speedrun_at(db, args);
            assert_eq!(o.status.code(), Some(0), "{db} {args:?}: {}", text(&o));
        }
        let o = speedrun_at(
            db,
            &[
                "show",
                "1",
                "--json",
                "--svg",
                tmp.path().join("c.svg").to_str().unwrap(),
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{db}: {}", text(&o));
        shown.push(json(&o));
    }
    let (a, b) = (&shown[0], &shown[1]);
    // The same run, bit for bit, whichever database holds it (but its clock).
    let untimed = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        let mut e = v["evaluations"].as_array().unwrap().clone();
        for x in &mut e {
            x.as_object_mut().unwrap().remove("train_time_s");
        }
        e
    };
    assert_eq!(untimed(a), untimed(b));
    assert!(!a["evaluations"].as_array().unwrap().is_empty());
    for k in [
        "final_val_loss",
        "best_val_loss",
        "status",
        "valid",
        "stack",
        "official",
        "steps",
        "tokens",
    ] {
        assert_eq!(a["run"][k], b["run"][k], "{k}");
    }
    // Each check with its outcome (details hold timings and secret draws).
    let checks = |v: &serde_json::Value| -> Vec<(String, String)> {
        v["verdict"]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["check"].to_string(), c["outcome"].to_string()))
            .collect()
    };
    assert_eq!(checks(a), checks(b));
    assert!(checks(a).len() > 10, "{:?}", checks(a));
    assert_eq!(a["plugins"], b["plugins"]);
    // Each run knows the machine it ran on.
    assert!(
        b["run"]["host"].as_str().is_some_and(|h| !h.is_empty()),
        "{}",
        b["run"]
    );
    assert!(
        b["run"]["hardware"]
            .as_str()
            .is_some_and(|h| h.contains(" x")),
        "{}",
        b["run"]
    );
    // The migrations of both backends end in the same tables and columns.
    for table in [
        "runs",
        "evaluations",
        "plugins",
        "checks",
        "comparisons",
        "comparison_runs",
        "submissions",
        "records",
        "batch_runs",
    ] {
        let (s, p) = (
            columns(&Location::parse(sqlite), table),
            columns(&Location::parse(&pg), table),
        );
        assert!(!s.is_empty(), "{table}");
        assert_eq!(s, p, "table {table}");
    }
    assert_eq!(
        Store::open(Location::parse(&pg))
            .unwrap()
            .integrity()
            .unwrap(),
        "ok"
    );
    // The dashboard over the server: the track, and the run's live JSON.
    let server = crate::serve::serve(&pg);
    let (code, body) = crate::serve::get(&format!("{}/track/smoke", server.url));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("/run/1"), "{body}");
    let (code, body) = crate::serve::get(&format!("{}/api/run/1", server.url));
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("\"status\":\"complete\"") && body.contains("validation loss"),
        "{body}"
    );
}

#[test]
fn of_concurrent_claims_on_one_record_exactly_one_becomes_it_on_both_backends() {
    let tmp = tempfile::tempdir().unwrap();
    let mut stores = vec![Location::Sqlite(tmp.path().join("runs.db"))];
    match postgres_db("record") {
        Some(pg) => stores.push(Location::parse(&pg)),
        None => eprintln!("(SQLite only)"),
    }
    for location in stores {
        let store = Store::open(&location).unwrap();
        let claimants = 8;
        let subs: Vec<i64> = (0..claimants)
            .map(|i| {
                store
                    .add_submission(
                        "smoke",
                        "smoke",
                        &format!("fast{i}"),
                        "",
                        &"0".repeat(64),
                        b"",
                        speedrun::record::Transport::Wasm,
                    )
                    .unwrap()
            })
            .collect();
        // Every claimant on its own connection, as on its own machine; all
        // beat "no record" and claim at the same instant.
        let barrier = Arc::new(Barrier::new(claimants));
        let threads: Vec<_> = subs
            .iter()
            .map(|&sub| {
                let (location, barrier) = (location.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let store = Store::open(&location).unwrap();
                    barrier.wait();
                    store
                        .add_record(&NewRecord {
                            track: "smoke",
                            submission_id: sub,
                            comparison_id: None,
                            description: "fast",
                            time_to_target_s: 1.0,
                            val_loss: 3.0,
                            p_target: 0.001,
                            p_speedup: 0.01,
                            speedup: 2.0,
                            previous: "reference",
                            seeds: &[0, 1],
                            beat: None,
                        })
                        .unwrap()
                })
            })
            .collect();
        let claims: Vec<RecordClaim> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let records = store.records("smoke").unwrap();
        assert_eq!(records.len(), 1, "{location}: {records:?}");
        let won: Vec<&RecordClaim> = claims
            .iter()
            .filter(|c| matches!(c, RecordClaim::Recorded(_)))
            .collect();
        assert_eq!(won, [&RecordClaim::Recorded(records[0].id)], "{location}");
        // Every other claimant is told which record it now has to beat.
        for c in &claims {
            if let RecordClaim::Superseded(now) = c {
                assert_eq!(now.id, records[0].id, "{location}");
            }
        }
        // A claim against the record that stands is recorded after it.
        let next = store
            .add_record(&NewRecord {
                track: "smoke",
                submission_id: subs[0],
                comparison_id: None,
                description: "faster",
                time_to_target_s: 0.5,
                val_loss: 3.0,
                p_target: 0.001,
                p_speedup: 0.01,
                speedup: 2.0,
                previous: "record",
                seeds: &[0, 1],
                beat: Some(records[0].id),
            })
            .unwrap();
        assert!(
            matches!(next, RecordClaim::Recorded(id) if id > records[0].id),
            "{location}: {next:?}"
        );
    }
}

#[test]
fn a_slurm_bench_into_postgres_matches_the_same_bench_run_here_into_sqlite_bit_for_bit() {
    let (Some(pg), Some(partition)) = (postgres_db("bench"), slurm()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let local_db = tmp.path().join("local.db");
    let bench = |db: &str, out: &Path, slurm: bool| {
        let mut args = vec![
            "bench",
            "--track",
            "smoke",
            "--seed-list",
            "0,1",
            "--steps",
            "40",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ];
        if slurm {
            args.extend(["--executor", "slurm", "--partition", &partition]);
        }
        speedrun_at(db, &args)
    };
    let local = bench(local_db.to_str().unwrap(), &tmp.path().join("local"), false);
    assert_eq!(local.status.code(), Some(0), "{}", text(&local));
    let o = bench(&pg, &tmp.path().join("slurm"), true);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("Slurm job array"), "{}", text(&o));
    let (a, b) = (json(&local), json(&o));
    for side in ["candidate", "baseline"] {
        assert_eq!(losses(&a, side), losses(&b, side), "{side}");
        assert_eq!(losses(&b, side).len(), 2);
    }
    assert_eq!(a["verdict"], b["verdict"]);
    assert_eq!(
        b["hardware"].as_array().unwrap().len(),
        1,
        "{}",
        b["hardware"]
    );
    // Each seed's task left its log, and the comparison is in the shared store.
    let logs = std::fs::read_dir(tmp.path().join("slurm/slurm/logs"))
        .unwrap()
        .count();
    assert_eq!(logs, 2);
    let store = Store::open(Location::parse(&pg)).unwrap();
    let cmp = store
        .comparison(b["comparison_id"].as_i64().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(cmp.report["candidate"]["runs"], b["candidate"]["runs"]);

    // A plan rewritten after it was submitted (one more step for every run,
    // its batch key left alone, or recomputed by hand) is refused by the task.
    let plan_path = std::fs::read_dir(tmp.path().join("slurm/slurm"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap();
    let mut plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan_path).unwrap()).unwrap();
    plan["steps"] = serde_json::json!(41);
    for batch in [plan["batch"].clone(), serde_json::json!("0000000000000000")] {
        plan["batch"] = batch;
        std::fs::write(&plan_path, plan.to_string()).unwrap();
        let before = store.runs(Some("smoke")).unwrap().len();
        let o = speedrun_at(
            &pg,
            &[
                "task",
                "--plan",
                plan_path.to_str().unwrap(),
                "--index",
                "0",
            ],
        );
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            text(&o).contains("was changed after it was written"),
            "{}",
            text(&o)
        );
        assert_eq!(store.runs(Some("smoke")).unwrap().len(), before);
    }
}

/// The task states squeue lists for the job named `name`: (JOBID_INDEX, state).
fn queue(name: &str) -> Vec<(String, String)> {
    let o = Command::new("squeue")
        .args(["--noheader", "--array", "--name", name, "--format=%i %T"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect()
}

#[test]
fn a_cancelled_task_is_reported_by_seed_and_running_again_runs_only_that_seed() {
    let (Some(pg), Some(partition)) = (postgres_db("cancel"), slurm()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bench");
    let name = format!("speedrun-cancel-{}", std::process::id());
    let name_arg = format!("--job-name={name}");
    // Each task takes both CPUs of the node, so the seeds run one after the other.
    let args = [
        "bench",
        "--track",
        "smoke",
        "--seed-list",
        "0,1",
        "--json",
        "--out",
        out.to_str().unwrap(),
        "--executor",
        "slurm",
        "--partition",
        &partition,
        "--slurm-arg=--cpus-per-task=2",
        "--slurm-arg",
        &name_arg,
    ];
    let child = speedrun_cmd(&pg)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Seed 1's task is cancelled mid-way: while its first run trains.
    let started = Instant::now();
    let watch = loop {
        // The store is made by the bench command; until then there is nothing to watch.
        if let Ok(s) = Store::open(Location::parse(&pg)) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let cancelled = loop {
        let training = watch
            .runs(Some("smoke"))
            .unwrap()
            .iter()
            .any(|r| r.seed == 1 && r.status == speedrun::record::RunStatus::Running);
        let task = queue(&name)
            .into_iter()
            .find(|(id, st)| id.ends_with("_1") && st == "RUNNING");
        if let (true, Some((id, _))) = (training, task) {
            let s = Command::new("scancel").arg(&id).status().unwrap();
            assert!(s.success());
            break id;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "seed 1's task never ran: {:?}",
            queue(&name)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let o = child.wait_with_output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains(&format!("seed 1: Slurm task {cancelled} ended CANCELLED")),
        "{t}"
    );
    let log = out.join(format!("slurm/logs/{cancelled}.log"));
    assert!(
        t.contains(&log.display().to_string()) && log.exists(),
        "{t}"
    );
    assert!(t.contains("run the same command again"), "{t}");
    assert!(!t.contains("seed 0:"), "{t}");
    let store = Store::open(Location::parse(&pg)).unwrap();
    let seed0: Vec<i64> = store
        .runs(Some("smoke"))
        .unwrap()
        .iter()
        .filter(|r| r.seed == 0)
        .map(|r| r.id)
        .collect();
    assert_eq!(seed0.len(), 2, "seed 0's candidate and baseline");
    // scancel's SIGTERM stopped the run in seed 1's task, which recorded it.
    let cut: Vec<_> = store
        .runs(Some("smoke"))
        .unwrap()
        .into_iter()
        .filter(|r| r.seed == 1)
        .collect();
    assert_eq!(cut.len(), 1, "{cut:?}");
    assert_eq!(cut[0].status, speedrun::record::RunStatus::Incomplete);
    assert!(
        cut[0]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("SIGTERM"),
        "{:?}",
        cut[0].error
    );

    // The same command again: seed 0 is read from the store, seed 1 alone is submitted.
    let o = speedrun_at(&pg, &args);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("seeds 0 are already done"), "{t}");
    assert!(t.contains("one task per seed (1)"), "{t}");
    let r = json(&o);
    let ids = |side: &str| -> Vec<i64> {
        r[side]["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["store_id"].as_i64().unwrap())
            .collect()
    };
    let (c, b) = (ids("candidate"), ids("baseline"));
    assert_eq!(vec![c[0], b[0]], seed0, "seed 0's runs were not run again");
    assert!(c[1] > seed0[1] && b[1] > seed0[1]);
    // What the cancelled attempt left is kept beside the new run.
    assert!(
        out.join("candidate-s1.attempt-1").exists() || out.join("baseline-s1.attempt-1").exists()
    );
}

#[test]
fn a_submission_runs_through_slurm_into_postgres_and_is_judged() {
    let (Some(pg), Some(partition)) = (postgres_db("submit"), slurm()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let krate = tmp.path().join("agent-sgd");
    let o = speedrun_at(
        &pg,
        &[
            "plugin",
            "new",
            "--hook",
            "optimizer",
            "agent-sgd",
            "--dir",
            tmp.path().to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let cwd = tmp.path().join("work");
    std::fs::create_dir_all(&cwd).unwrap();
    let o = speedrun_cmd(&pg)
        .args([
            "submit",
            krate.to_str().unwrap(),
            "--track",
            "smoke",
            "--seeds",
            "2",
            "--steps",
            "20",
            "--json",
            "--executor",
            "slurm",
            "--partition",
            &partition,
        ])
        .current_dir(&cwd)
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("Slurm job array"), "{t}");
    let v = json(&o);
    assert_eq!(v["status"], "valid", "{v:#}");
    assert_eq!(v["runs"].as_array().unwrap().len(), 2);
    // Candidate and reference of each seed ran in the seed's task, into the shared store.
    let store = Store::open(Location::parse(&pg)).unwrap();
    let runs = store.runs(Some("smoke")).unwrap();
    assert_eq!(runs.len(), 4, "{runs:?}");
    let id = v["submission"]["id"].as_i64().unwrap();
    assert_eq!(
        store.submission(id).unwrap().status,
        speedrun::record::SubmissionStatus::Valid
    );
    // Unpacked under the working directory's runs/ (the server has no folder of its own).
    assert!(cwd.join("runs/submissions").is_dir());
}

#[test]
fn a_comparison_across_different_hardware_makes_no_claim() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("runs.db");
    let db = db.to_str().unwrap();
    for seed in ["0", "1"] {
        let o = speedrun_at(
            db,
            &[
                "run",
                "--track",
                "smoke",
                "--seed",
                seed,
                "--quiet",
                "--out",
                tmp.path().join(format!("ref{seed}")).to_str().unwrap(),
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    // The stored reference runs came from another kind of machine.
    rusqlite::Connection::open(db)
        .unwrap()
        .execute(
            "UPDATE runs SET hardware = 'Another CPU [avx2 fma] x64'",
            [],
        )
        .unwrap();
    let o = speedrun_at(
        db,
        &[
            "bench",
            "--track",
            "smoke",
            "--seed-list",
            "0,1",
            "--baseline-stored",
            "--json",
            "--out",
            tmp.path().join("b").to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r = json(&o);
    assert_eq!(r["verdict"], "mixed_hardware", "{}", r["verdict_text"]);
    assert_eq!(r["hardware"].as_array().unwrap().len(), 2);
    assert!(
        r["verdict_text"].as_str().unwrap().contains("Another CPU"),
        "{}",
        r["verdict_text"]
    );
}

#[test]
fn two_winning_submissions_at_once_make_one_record_and_the_other_is_told_why() {
    let Some(pg) = postgres_db("winners") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // The record test's track and schedule (tests/submit.rs): 5x the peak
    // learning rate reaches the loose target in a third of the reference's steps.
    let track = root().join("tests/fixtures/smoke-record.toml");
    let krates: Vec<_> = [("fast", "5.0"), ("faster", "4.5")]
        .into_iter()
        .map(|(name, scale)| {
            let krate = crate::submit::scaffold(tmp.path(), "schedule", name);
            crate::submit::edit(
                &krate,
                "\"lr_scale\": 1.0",
                &format!("\"lr_scale\": {scale}"),
            );
            let cwd = tmp.path().join(format!("work-{name}"));
            std::fs::create_dir_all(&cwd).unwrap();
            (krate, cwd)
        })
        .collect();
    // A win is a statistical claim on wall-clock times, and two submissions
    // plus the other tests share 2 cores: a round where neither shows a
    // significant speedup says nothing about the claim and is run again.
    let mut verdicts = Vec::new();
    for _round in 0..3 {
        let children: Vec<_> = krates
            .iter()
            .map(|(krate, cwd)| {
                speedrun_cmd(&pg)
                    // One core each, so the two runs do not fight over threads.
                    .env("RAYON_NUM_THREADS", "1")
                    .args([
                        "submit",
                        krate.to_str().unwrap(),
                        "--track",
                        track.to_str().unwrap(),
                        "--seeds",
                        "4",
                        "--json",
                    ])
                    .current_dir(cwd)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        verdicts = children
            .into_iter()
            .map(|c| {
                let o = c.wait_with_output().unwrap();
                assert_eq!(o.status.code(), Some(0), "{}", text(&o));
                json(&o)
            })
            .collect();
        if verdicts.iter().any(|v| v["new_record"] == true) {
            break;
        }
    }
    let store = Store::open(Location::parse(&pg)).unwrap();
    let records = store.records("smoke-record").unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    let (won, other): (Vec<_>, Vec<_>) = verdicts.iter().partition(|v| v["new_record"] == true);
    assert_eq!(won.len(), 1, "{verdicts:#?}");
    let (won, other) = (won[0], other[0]);
    assert_eq!(won["record"]["id"].as_i64(), Some(records[0].id));
    assert_eq!(
        won["submission"]["id"].as_i64(),
        Some(records[0].submission_id)
    );
    // The other one either ran against the new record, or beat the reference
    // while the record changed under it and is told so, naming the record,
    // or ran against the reference and did not beat it significantly.
    match other["record_superseded"].as_str() {
        Some(why) => {
            assert!(why.contains(&format!("record {}", records[0].id)), "{why}");
            assert!(why.contains("resubmit"), "{why}");
            assert_eq!(other["record"]["id"].as_i64(), Some(records[0].id));
        }
        None => {
            let against = &other["against_record"];
            match against["record_id"].as_i64() {
                Some(id) => assert_eq!(id, records[0].id, "{against:#}"),
                None => {
                    assert_eq!(against["stack"], "reference", "{against:#}");
                    assert_ne!(against["verdict"], "faster_to_target", "{against:#}");
                }
            }
        }
    }
    // The record, rebuilt from its stored source and run again on the cluster.
    let Some(partition) = slurm() else {
        return;
    };
    let cwd = tmp.path().join("work-fast");
    let o = speedrun_cmd(&pg)
        .args([
            "reverify",
            &records[0].id.to_string(),
            "--seed-list",
            "0,1",
            "--json",
        ])
        .args(["--executor", "slurm", "--partition", &partition])
        .current_dir(&cwd)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("Slurm job array"), "{}", text(&o));
    let r = json(&o);
    assert_eq!(r["valid"], true, "{r:#}");
    assert_eq!(r["same_library"], true, "{r:#}");
}
