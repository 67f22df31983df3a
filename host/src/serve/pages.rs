//! The dashboard's pages as HTML, from the store and the run directories.
//! Every value is escaped; charts are placeholders (`chart-N`) that
//! `dashboard.js` fills from the page's embedded JSON.

use super::charts::{self, Chart, Curves};
use super::Page;
use crate::record::RunStatus;
use crate::score::{self, Axis};
use crate::store::{Store, StoredRun};
use anyhow::Result;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

/// Text made safe inside HTML elements and attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

pub(super) fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

pub(super) fn seconds(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{s:.2} s"))
}

fn day(t: &str) -> &str {
    t.get(..10).unwrap_or(t)
}

/// A whole page: navigation, the body, the charts' data and the scripts.
pub(super) fn layout(title: &str, body: &str, charts: &[Chart], live: Option<&str>) -> String {
    let data = serde_json::json!({ "charts": charts, "live": live });
    // `</` inside a script element would end it.
    let data = data.to_string().replace("</", "<\\/");
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{t} · speedrun</title>
<link rel="stylesheet" href="/assets/uPlot.css"><link rel="stylesheet" href="/assets/style.css">
</head><body>
<header><a href="/">speedrun</a><span class="muted">{t}</span></header>
{body}
<script id="page-data" type="application/json">{data}</script>
<script src="/assets/uPlot.js"></script><script src="/assets/dashboard.js"></script>
</body></html>
"#,
        t = esc(title)
    )
}

pub(super) fn chart_slots(n: usize) -> String {
    (0..n)
        .map(|i| format!(r#"<div class="chart" id="chart-{i}"></div>"#))
        .collect()
}

/// A page that only says something: an empty store, a missing run, an error.
pub fn message(title: &str, text: &str) -> String {
    layout(
        title,
        &format!(
            r#"<h1>{}</h1><p class="message" id="message">{}</p>"#,
            esc(title),
            esc(text)
        ),
        &[],
        None,
    )
}

fn run_link(r: &StoredRun) -> String {
    format!(r#"<a href="/run/{0}">{0}</a>"#, r.id)
}

fn status_cell(s: RunStatus) -> String {
    format!(r#"<td class="status-{s}">{s}</td>"#)
}

fn valid_cell(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => r#"<td class="pass">valid</td>"#,
        Some(false) => r#"<td class="fail">invalid</td>"#,
        None => "<td>-</td>",
    }
}

/// `/`: every track in the store, and the newest runs.
pub fn index(store: &Store) -> Result<Page> {
    let runs = store.runs(None)?;
    if runs.is_empty() {
        return Ok(Page::ok(message(
            "No runs yet",
            &format!(
                "The run store {} holds no runs yet. `speedrun run --track smoke` records one in a few seconds.",
                store.location()
            ),
        )));
    }
    let mut by_track: BTreeMap<&str, Vec<&StoredRun>> = BTreeMap::new();
    for r in &runs {
        by_track.entry(&r.track).or_default().push(r);
    }
    let mut o = String::from("<h1>Tracks</h1><table id=\"tracks\"><tr><th>track</th><th class=\"num\">runs</th><th class=\"num\">scoring</th><th class=\"num\">running</th><th class=\"num\">best final loss</th><th>latest</th></tr>");
    for (track, rs) in &by_track {
        let owned: Vec<StoredRun> = rs.iter().map(|r| (*r).clone()).collect();
        let board = score::leaderboard(&owned);
        let _ = write!(
            o,
            r#"<tr><td><a href="/track/{0}">{1}</a></td><td class="num">{2}</td><td class="num">{3}</td><td class="num">{4}</td><td class="num">{5}</td><td>{6}</td></tr>"#,
            urlencode(track),
            esc(track),
            rs.len(),
            board.len(),
            rs.iter().filter(|r| r.status == RunStatus::Running).count(),
            num(board.first().and_then(|r| r.final_val_loss), 4),
            esc(day(rs
                .iter()
                .map(|r| r.started_at.as_str())
                .max()
                .unwrap_or("")))
        );
    }
    o.push_str("</table><h2>Newest runs</h2>");
    let newest: Vec<&StoredRun> = runs.iter().rev().take(20).collect();
    o.push_str(&runs_table(&newest, false));
    Ok(Page::ok(layout("Tracks", &o, &[], None)))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A table of runs; with `tick`, a box per run for the comparison form.
pub(super) fn runs_table(runs: &[&StoredRun], tick: bool) -> String {
    let mut o = String::from("<table class=\"runs\"><tr>");
    if tick {
        o.push_str("<th>compare</th>");
    }
    o.push_str("<th>run</th><th>track</th><th>stack</th><th class=\"num\">seed</th><th class=\"num\">steps</th><th>status</th><th>verdict</th><th class=\"num\">final loss</th><th class=\"num\">train time</th><th>started</th></tr>");
    for r in runs {
        o.push_str("<tr>");
        if tick {
            let _ = write!(
                o,
                r#"<td><input type="checkbox" name="runs" value="{}"></td>"#,
                r.id
            );
        }
        let _ = write!(
            o,
            r#"<td>{}</td><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td>{}{}<td class="num">{}</td><td class="num">{}</td><td>{}</td></tr>"#,
            run_link(r),
            esc(&r.track),
            esc(&r.stack),
            r.seed,
            r.steps.map_or("-".into(), |s| s.to_string()),
            status_cell(r.status),
            valid_cell(r.valid),
            num(r.final_val_loss, 4),
            seconds(r.train_time_s),
            esc(day(&r.started_at))
        );
    }
    o.push_str("</table>");
    o
}

/// `/track/NAME`: leaderboard, records, frontier, benches, every run.
pub fn track(store: &Store, name: &str) -> Result<Page> {
    let runs = store.runs(Some(name))?;
    if runs.is_empty() {
        return Ok(Page::not_found(message(
            "No such track",
            &format!("The run store holds no runs of track {name}."),
        )));
    }
    let goal = runs.iter().rev().find_map(|r| r.target_val_loss);
    let mut o = format!(
        "<h1>Track {}</h1><p>target validation loss {}</p><h2>Leaderboard</h2>",
        esc(name),
        num(goal, 4)
    );
    let board = score::leaderboard(&runs);
    o.push_str("<table id=\"leaderboard\"><tr><th class=\"num\">rank</th><th>run</th><th>stack</th><th class=\"num\">seed</th><th class=\"num\">steps</th><th class=\"num\">time to target</th><th class=\"num\">best</th><th class=\"num\">final</th><th class=\"num\">train time</th><th class=\"num\">tokens</th><th>date</th></tr>");
    for (i, r) in board.iter().enumerate() {
        let _ = write!(
            o,
            r#"<tr><td class="num">{}</td><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td>{}</td></tr>"#,
            i + 1,
            run_link(r),
            esc(&r.stack),
            r.seed,
            r.steps.map_or("-".into(), |s| s.to_string()),
            seconds(r.time_to_target_s),
            num(r.best_val_loss, 4),
            num(r.final_val_loss, 4),
            seconds(r.train_time_s),
            r.tokens.map_or("-".into(), |t| t.to_string()),
            esc(day(&r.started_at))
        );
    }
    o.push_str("</table>");
    if board.is_empty() {
        o.push_str("<p class=\"muted\">No run scores yet: only complete, valid, official runs of the track's whole budget do.</p>");
    }
    for (why, n) in score::exclusions(&runs) {
        let _ = write!(
            o,
            "<p class=\"muted\">{n} run(s) left out: {}</p>",
            esc(why.label())
        );
    }

    let frontier = charts::frontier(&score::frontier(&runs, Axis::TrainTime), goal);
    o.push_str("<h2>Efficiency frontier</h2>");
    o.push_str(&chart_slots(1));

    let records = store.records(name)?;
    let mut charts = vec![frontier];
    o.push_str("<h2>Records</h2>");
    if records.is_empty() {
        o.push_str("<p class=\"muted\">No record yet: `speedrun submit` makes one.</p>");
    } else {
        o.push_str("<table id=\"records\"><tr><th class=\"num\">#</th><th>date</th><th>submission</th><th class=\"num\">time to target</th><th class=\"num\">val loss</th><th class=\"num\">speedup</th><th>over</th></tr>");
        for (i, r) in records.iter().enumerate() {
            let _ = write!(
                o,
                r#"<tr><td class="num">{}</td><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{:.4}</td><td class="num">{:.2}x</td><td>{}</td></tr>"#,
                i + 1,
                esc(day(&r.created_at)),
                esc(&r.crate_name),
                seconds(Some(r.time_to_target_s)),
                r.val_loss,
                r.speedup,
                esc(&r.previous)
            );
        }
        o.push_str("</table>");
        let times: Vec<f64> = records.iter().map(|r| r.time_to_target_s).collect();
        charts.push(charts::records(&times));
        let _ = write!(
            o,
            r#"<div class="chart" id="chart-{}"></div>"#,
            charts.len() - 1
        );
    }

    let benches = store.comparisons(name)?;
    o.push_str("<h2>Benches</h2>");
    if benches.is_empty() {
        o.push_str("<p class=\"muted\">No stored bench: `speedrun bench` stores one.</p>");
    } else {
        o.push_str("<table id=\"benches\"><tr><th>bench</th><th>date</th><th>candidate</th><th>baseline</th><th>verdict</th></tr>");
        for c in &benches {
            let _ = write!(
                o,
                r#"<tr><td><a href="/bench/{0}">{0}</a></td><td>{1}</td><td>{2}</td><td>{3}</td><td>{4}</td></tr>"#,
                c.id,
                esc(day(&c.created_at)),
                esc(&c.candidate),
                esc(&c.baseline),
                esc(&c.verdict)
            );
        }
        o.push_str("</table>");
    }

    o.push_str("<h2>Every run</h2><form action=\"/compare\" method=\"get\"><button type=\"submit\">compare the ticked runs</button>");
    let all: Vec<&StoredRun> = runs.iter().rev().collect();
    o.push_str(&runs_table(&all, true));
    o.push_str("</form>");
    Ok(Page::ok(layout(
        &format!("track {name}"),
        &o,
        &charts,
        None,
    )))
}

/// The run `key` and its curves, or a page saying it is not there.
fn find_run(store: &Store, key: &str) -> Result<std::result::Result<StoredRun, Page>> {
    let Ok(id) = key.parse::<i64>() else {
        return Ok(Err(Page::not_found(message(
            "No such run",
            &format!("{key:?} is not a run id."),
        ))));
    };
    match store.run_by_id(id)? {
        Some(r) => Ok(Ok(r)),
        None => Ok(Err(Page::not_found(message(
            "No such run",
            &format!("The run store holds no run {id}."),
        )))),
    }
}

/// `/api/run/ID`: a run's status and charts, for a page that follows it live.
pub fn run_live(store: &Store, key: &str) -> Result<Option<serde_json::Value>> {
    let Ok(Ok(r)) = find_run(store, key) else {
        return Ok(None);
    };
    let curves = Curves::read(&PathBuf::from(&r.run_dir));
    Ok(Some(serde_json::json!({
        "status": r.status,
        "charts": charts::run_charts(&curves, r.target_val_loss),
    })))
}

/// `/run/ID`: the numbers, the curves, the verdict, the plugins, the manifest.
pub fn run(store: &Store, key: &str) -> Result<Page> {
    let r = match find_run(store, key)? {
        Ok(r) => r,
        Err(page) => return Ok(page),
    };
    let dir = PathBuf::from(&r.run_dir);
    let curves = Curves::read(&dir);
    let charts = charts::run_charts(&curves, r.target_val_loss);
    let mut o = format!(
        r#"<h1>Run {id}</h1><table id="summary">
<tr><th>track</th><td><a href="/track/{tq}">{t}</a></td><th>status</th><td id="live-status" class="status-{s}">{s}</td></tr>
<tr><th>stack</th><td>{stack}{official}</td><th>seed</th><td>{seed}</td></tr>
<tr><th>final validation loss</th><td id="final-loss">{fl}</td><th>best</th><td>{bl}</td></tr>
<tr><th>target</th><td>{target}</td><th>time to target</th><td>{ttt}</td></tr>
<tr><th>steps</th><td>{steps}</td><th>tokens</th><td>{tokens}</td></tr>
<tr><th>training time</th><td>{tt}</td><th>started</th><td>{started}</td></tr>
<tr><th>run directory</th><td colspan="3">{dir}</td></tr>
</table>"#,
        id = r.id,
        tq = urlencode(&r.track),
        t = esc(&r.track),
        s = r.status,
        stack = esc(&r.stack),
        official = if r.official {
            " (official)"
        } else {
            " (unofficial)"
        },
        seed = r.seed,
        fl = num(r.final_val_loss, 4),
        bl = num(r.best_val_loss, 4),
        target = num(r.target_val_loss, 4),
        ttt = seconds(r.time_to_target_s),
        steps = r.steps.map_or("-".into(), |s| s.to_string()),
        tokens = r.tokens.map_or("-".into(), |t| t.to_string()),
        tt = seconds(r.train_time_s),
        started = esc(&r.started_at),
        dir = esc(&r.run_dir),
    );
    if let Some(e) = &r.error {
        let _ = write!(o, r#"<p class="fail">error: {}</p>"#, esc(e));
    }
    o.push_str("<h2>Curves</h2>");
    if curves.steps.is_empty() {
        o.push_str("<p class=\"muted\">The run directory's metrics.jsonl is not there (moved or deleted): the store's evaluations are below.</p>");
    }
    o.push_str(&chart_slots(charts.len()));

    o.push_str("<h2>Verdict</h2>");
    match store.verdict(r.id)? {
        Some(v) => {
            let _ = write!(
                o,
                r#"<p id="verdict" class="{}">{}</p><table id="checks"><tr><th>check</th><th>outcome</th><th>detail</th></tr>"#,
                if v.valid { "pass" } else { "fail" },
                if v.valid { "valid" } else { "INVALID" }
            );
            for c in &v.checks {
                let outcome = c.outcome.name();
                let _ = write!(
                    o,
                    r#"<tr><td>{}</td><td class="{}">{}</td><td>{}</td></tr>"#,
                    esc(c.check.name()),
                    match outcome {
                        "passed" => "pass",
                        "failed" => "fail",
                        _ => "skipped",
                    },
                    outcome,
                    esc(&c.detail)
                );
            }
            o.push_str("</table>");
        }
        None => o.push_str(
            "<p id=\"verdict\" class=\"muted\">No verdict: the run has not finished.</p>",
        ),
    }

    let evaluations = store.evaluations(r.id)?;
    o.push_str("<h2>Validations</h2><table id=\"evaluations\"><tr><th class=\"num\">step</th><th class=\"num\">tokens</th><th class=\"num\">training time</th><th class=\"num\">loss</th><th class=\"num\">bits/byte</th></tr>");
    for e in &evaluations {
        let _ = write!(
            o,
            r#"<tr><td class="num">{}</td><td class="num">{}</td><td class="num">{:.2} s</td><td class="num">{:.4}</td><td class="num">{:.4}</td></tr>"#,
            e.step, e.tokens, e.train_time_s, e.val_loss, e.val_bpb
        );
    }
    o.push_str("</table>");

    let manifest: Option<serde_json::Value> = std::fs::read(dir.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    o.push_str("<h2>Plugins</h2>");
    let plugins = store.plugins(r.id)?;
    if plugins.is_empty() {
        o.push_str("<p>The reference stack: no plugins.</p>");
    } else {
        o.push_str("<table id=\"plugins\"><tr><th>plugin</th><th>version</th><th>transport</th><th>hooks</th><th>sha256</th><th>configuration</th></tr>");
        for p in &plugins {
            let config = p.config.to_string();
            let _ = write!(
                o,
                r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>"#,
                esc(&p.name),
                esc(&p.version),
                p.transport,
                esc(&p.hooks.join(", ")),
                esc(p.sha256.get(..16).unwrap_or(&p.sha256)),
                esc(&config)
            );
        }
        o.push_str("</table>");
    }
    if let Some(id) = store.submission_of_run(r.id)? {
        let sub = store.submission(id)?;
        let _ = write!(
            o,
            r#"<h2 id="submission">Submission {id}: {}</h2><p>{} · source sha256 {} · {}</p>"#,
            esc(&sub.crate_name),
            esc(&sub.description),
            esc(&sub.source_sha256),
            sub.status
        );
        match store
            .submission_source(id)
            .and_then(|a| crate::plugins::snapshot::files(&a))
        {
            Ok(files) => {
                for (path, bytes) in files {
                    let body = match std::str::from_utf8(&bytes) {
                        Ok(text) => esc(text),
                        Err(_) => format!("({} bytes, not text)", bytes.len()),
                    };
                    let _ = write!(
                        o,
                        "<details><summary>{}</summary><pre>{body}</pre></details>",
                        esc(&path)
                    );
                }
            }
            Err(e) => {
                let _ = write!(o, r#"<p class="fail">{}</p>"#, esc(&format!("{e:#}")));
            }
        }
    }
    if let Some(m) = &manifest {
        let _ = write!(
            o,
            "<details><summary>manifest.json</summary><pre>{}</pre></details>",
            esc(&serde_json::to_string_pretty(m)?)
        );
    }
    let live = (r.status == RunStatus::Running).then(|| format!("/api/run/{}", r.id));
    Ok(Page::ok(layout(
        &format!("run {}", r.id),
        &o,
        &charts,
        live.as_deref(),
    )))
}
