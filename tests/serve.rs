//! `speedrun serve` in a real browser: the server on a store filled with smoke
//! runs and a bench, each page rendered by headless Chromium (Debian's
//! package, which `.ci/run` installs), the numbers a reader looks at asserted
//! in the page as the browser built it, and a screenshot of each page in
//! `target/screenshots/`. Off CI, a machine without Chromium skips the browser
//! half and says so; CI fails instead.

use crate::common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running `speedrun serve`, stopped when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `speedrun serve` on a free port over the store at `db` (a file or a URL).
pub(crate) fn serve(db: impl AsRef<std::ffi::OsStr>) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_speedrun"))
        .args(["serve", "--port", "0", "--db"])
        .arg(db)
        .env("SPEEDRUN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "serving the dashboard at http://127.0.0.1:PORT/ (Ctrl-C stops it)"
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim_end_matches('/')
        .to_string();
    Server { child, url }
}

/// A plain GET: the status code and the body.
pub(crate) fn get(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let code = reply.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = reply
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .filter_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        })
        .next();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the browser test: .ci/run installs Debian's chromium"
        );
        eprintln!("serve: no chromium on this machine; the browser half is skipped");
    }
    found
}

fn browser_args(chromium: &Path) -> Command {
    let mut c = Command::new(chromium);
    let profile = tempfile::tempdir().unwrap().keep();
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--virtual-time-budget=8000",
        "--window-size=1280,1600",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .stderr(Stdio::null());
    c
}

/// The page as the browser built it, scripts run.
fn dom(chromium: &Path, url: &str) -> String {
    let o = browser_args(chromium)
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap();
    assert!(o.status.success(), "chromium on {url}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn screenshot(chromium: &Path, url: &str, name: &str) {
    let dir = root().join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.png"));
    let o = browser_args(chromium)
        .arg(format!("--screenshot={}", path.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(o.status.success() && path.is_file(), "screenshot of {url}");
}

fn uplot_installed() -> bool {
    let p = root().join("host/dashboard/node_modules/uplot/dist/uPlot.iife.min.js");
    assert!(
        p.is_file() || std::env::var_os("CI").is_none(),
        "CI installs uPlot: .ci/run runs npm ci --prefix host/dashboard"
    );
    p.is_file()
}

#[test]
fn an_empty_store_and_a_missing_run_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("empty.db");
    speedrun::store::Store::open(&db).unwrap();
    let server = serve(&db);
    let (code, body) = get(&format!("{}/", server.url));
    assert_eq!(code, 200);
    assert!(body.contains("holds no runs yet"), "{body}");
    let (code, body) = get(&format!("{}/run/999", server.url));
    assert_eq!(code, 404);
    assert!(body.contains("holds no run 999"), "{body}");
    let (code, _) = get(&format!("{}/track/nope", server.url));
    assert_eq!(code, 404);
    let (code, _) = get(&format!("{}/bench/7", server.url));
    assert_eq!(code, 404);
    if let Some(c) = chromium() {
        let page = dom(&c, &format!("{}/", server.url));
        assert!(
            page.contains("id=\"message\"") && page.contains("holds no runs yet"),
            "{page}"
        );
        let page = dom(&c, &format!("{}/run/999", server.url));
        assert!(page.contains("holds no run 999"), "{page}");
        screenshot(&c, &format!("{}/", server.url), "empty-store");
        screenshot(&c, &format!("{}/run/999", server.url), "missing-run");
    }
}

#[test]
fn every_page_shows_what_the_store_holds_in_a_real_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("runs.db");
    // A full-budget reference run (it scores), then a bench of relu2 against it.
    let o = speedrun_db(
        &db,
        &[
            "run",
            "--track",
            "smoke",
            "--seed",
            "3",
            "--quiet",
            "--out",
            tmp.path().join("full").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let relu2 = root().join("plugins/relu2");
    let o = speedrun_db(
        &db,
        &[
            "bench",
            "--track",
            "smoke",
            "--seeds",
            "2",
            "--steps",
            "60",
            "--plugin",
            relu2.to_str().unwrap(),
            "--out",
            tmp.path().join("bench").to_str().unwrap(),
            "--json",
        ],
    );
    assert!(o.status.code() == Some(0), "{}", text(&o));
    let bench: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bench_id = bench["comparison_id"].as_i64().unwrap();
    // The bench's static overlay: every run's validation curve and the target.
    let svg = std::fs::read_to_string(bench["curves_svg"].as_str().unwrap()).unwrap();
    for label in [
        "candidate seed 0",
        "candidate seed 1",
        "baseline seed 0",
        "baseline seed 1",
        "target 3.2500",
    ] {
        assert!(svg.contains(label), "{label} not in the bench's overlay");
    }

    let store = speedrun::store::Store::open(&db).unwrap();
    let runs = store.runs(Some("smoke")).unwrap();
    assert_eq!(runs.len(), 5);
    let full = &runs[0];
    let final_loss = format!("{:.4}", full.final_val_loss.unwrap());
    let (a, b) = (runs[1].id, runs[2].id);

    let server = serve(&db);
    let u = |path: &str| format!("{}{path}", server.url);
    // The JSON a running run's page polls.
    let (code, live) = get(&u(&format!("/api/run/{}", full.id)));
    assert_eq!(code, 200);
    let live: serde_json::Value = serde_json::from_str(&live).unwrap();
    assert_eq!(live["status"], "complete");
    assert_eq!(live["charts"].as_array().unwrap().len(), 5);
    assert!(
        live["charts"][0]["series"][0]["points"]
            .as_array()
            .unwrap()
            .len()
            >= 100
    );

    let Some(c) = chromium() else { return };
    let charts = uplot_installed();
    let drawn = |page: &str| page.matches("class=\"uplot").count();

    let page = dom(&c, &u("/"));
    assert!(page.contains("href=\"/track/smoke\""), "{page}");
    assert!(
        page.contains(&final_loss),
        "the best final loss on the tracks page: {page}"
    );

    let page = dom(&c, &u("/track/smoke"));
    let board = page
        .split("id=\"leaderboard\"")
        .nth(1)
        .unwrap()
        .split("</table>")
        .next()
        .unwrap();
    assert!(
        board.contains(&format!("href=\"/run/{}\"", full.id)) && board.contains(&final_loss),
        "{board}"
    );
    assert!(
        page.contains(&format!("href=\"/bench/{bench_id}\"")),
        "{page}"
    );
    assert_eq!(page.matches("type=\"checkbox\"").count(), 5);
    if charts {
        assert_eq!(drawn(&page), 1, "the frontier chart");
    }

    let page = dom(&c, &u(&format!("/run/{}", full.id)));
    assert!(
        page.contains(&format!("id=\"final-loss\">{final_loss}<")),
        "{page}"
    );
    assert!(
        page.contains("id=\"verdict\" class=\"pass\">valid<"),
        "{page}"
    );
    for check in ["causality", "token_budget", "eval_isolation", "timing"] {
        assert!(
            page.contains(&format!("<td>{check}</td>")),
            "{check} on the run page"
        );
    }
    if charts {
        assert_eq!(
            drawn(&page),
            5,
            "loss against step, time and tokens; lr; grad norm"
        );
        // The legend carries every series, the target among them.
        let target = format!("target {:.4}", full.target_val_loss.unwrap());
        assert!(
            page.contains(&target),
            "{target} in a chart's legend: {page}"
        );
    }

    let page = dom(&c, &u(&format!("/compare?runs={a}&runs={b}")));
    assert!(
        page.contains(&format!("run {a} ·")) || page.contains(&format!("href=\"/run/{a}\"")),
        "{page}"
    );
    // One row per stack ticked: relu2's run and the reference's.
    let stacks = page
        .split("id=\"stacks\"")
        .nth(1)
        .unwrap()
        .split("</table>")
        .next()
        .unwrap();
    assert_eq!(stacks.matches("<tr>").count(), 3, "{stacks}");
    if charts {
        assert_eq!(drawn(&page), 3);
    }

    let page = dom(&c, &u(&format!("/bench/{bench_id}")));
    assert!(
        page.contains(&bench["verdict_text"].as_str().unwrap().replace('<', "&lt;")),
        "{page}"
    );
    let seeds = page
        .split("id=\"seeds\"")
        .nth(1)
        .unwrap()
        .split("</table>")
        .next()
        .unwrap();
    assert_eq!(
        seeds.matches("<tr>").count(),
        5,
        "a header and four runs: {seeds}"
    );

    // A submission's candidate run shows the submitted source.
    let krate = tmp.path().join("my-schedule");
    let o = speedrun(&[
        "plugin",
        "new",
        "--hook",
        "schedule",
        "my-schedule",
        "--dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
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
            "20",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let candidate = v["runs"][0]["store_id"].as_i64().unwrap();
    let page = dom(&c, &u(&format!("/run/{candidate}")));
    assert!(
        page.contains("id=\"submission\"") && page.contains("my-schedule"),
        "{page}"
    );
    assert!(
        page.contains("<summary>my-schedule/src/lib.rs</summary>")
            && page.contains("impl Schedule for"),
        "{page}"
    );

    for (name, path) in [
        ("tracks", "/".to_string()),
        ("track", "/track/smoke".to_string()),
        ("run", format!("/run/{}", full.id)),
        ("compare", format!("/compare?runs={a},{b}")),
        ("bench", format!("/bench/{bench_id}")),
        ("submission-run", format!("/run/{candidate}")),
    ] {
        screenshot(&c, &u(&path), name);
    }
}
