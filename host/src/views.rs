//! What `speedrun leaderboard`, `frontier` and `show` print: a table for a
//! person, or one JSON object for an agent, from the run store.

use crate::plot;
use crate::score::{self, Axis, FrontierEntry};
use crate::store::{Evaluation, Store, StoredPlugin, StoredRun};
use crate::train::telemetry::Curves;
use crate::verify::{check_line, Verdict};
use anyhow::{Context, Result};
use serde::Serialize;
use std::fmt::Write;
use std::path::{Path, PathBuf};

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn day(started_at: &str) -> &str {
    started_at.get(..10).unwrap_or(started_at)
}

#[derive(Serialize)]
struct LeaderboardJson<'a> {
    track: &'a str,
    /// Runs left out (unfinished, invalid, unofficial or truncated).
    excluded: usize,
    /// How many for each reason.
    excluded_by_reason: &'a std::collections::BTreeMap<score::Exclusion, usize>,
    runs: Vec<Ranked<'a>>,
}

#[derive(Serialize)]
struct Ranked<'a> {
    rank: usize,
    #[serde(flatten)]
    run: &'a StoredRun,
}

pub fn leaderboard(store: &Store, track: &str, json: bool) -> Result<String> {
    let runs = store.runs(Some(track))?;
    let board = score::leaderboard(&runs);
    let excluded = runs.len() - board.len();
    let reasons = score::exclusions(&runs);
    if json {
        let j = LeaderboardJson {
            track,
            excluded,
            excluded_by_reason: &reasons,
            runs: board
                .iter()
                .enumerate()
                .map(|(i, r)| Ranked {
                    rank: i + 1,
                    run: r,
                })
                .collect(),
        };
        return Ok(serde_json::to_string_pretty(&j)? + "\n");
    }
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:>4} {:>5} {:<34} {:>5} {:>5} {:>10} {:>9} {:>9} {:>9} {:>10} {:>8} {:>10}",
        "rank",
        "run",
        "stack",
        "seed",
        "steps",
        "to target",
        "best",
        "final",
        "train s",
        "tokens",
        "official",
        "date"
    );
    for (i, r) in board.iter().enumerate() {
        let _ = writeln!(
            o,
            "{:>4} {:>5} {:<34} {:>5} {:>5} {:>10} {:>9} {:>9} {:>9} {:>10} {:>8} {:>10}",
            i + 1,
            r.id,
            r.stack,
            r.seed,
            r.steps.map_or("-".into(), |s| s.to_string()),
            r.time_to_target_s
                .map_or("-".into(), |t| format!("{t:.2} s")),
            opt(r.best_val_loss, 4),
            opt(r.final_val_loss, 4),
            opt(r.train_time_s, 2),
            r.tokens.map_or("-".into(), |t| t.to_string()),
            if r.official { "yes" } else { "no" },
            day(&r.started_at)
        );
    }
    if board.is_empty() {
        let _ = writeln!(
            o,
            "(no official, valid, complete full-budget runs of track {track} in {})",
            store.location()
        );
    }
    for (why, n) in &reasons {
        let _ = writeln!(o, "{n} runs left out: {}", why.label());
    }
    Ok(o)
}

#[derive(Serialize)]
struct FrontierJson<'a> {
    track: &'a str,
    svg: Option<String>,
    axes: Vec<AxisJson>,
}

#[derive(Serialize)]
struct AxisJson {
    axis: Axis,
    runs: Vec<FrontierEntry>,
}

/// The frontier on every axis; the SVG (validation loss against training time) goes to `svg`.
pub fn frontier(store: &Store, track: &str, json: bool, svg: Option<&Path>) -> Result<String> {
    let runs = store.runs(Some(track))?;
    let axes: Vec<AxisJson> = Axis::ALL
        .iter()
        .map(|&axis| AxisJson {
            axis,
            runs: score::frontier(&runs, axis),
        })
        .collect();
    let svg_path = match svg {
        Some(p) => {
            let time = &axes[0].runs;
            let points: Vec<(String, (f64, f64))> = time
                .iter()
                .map(|e| (e.stack.clone(), (e.cost, e.val_loss)))
                .collect();
            let target = runs.iter().rev().find_map(|r| r.target_val_loss);
            let front: Vec<(f64, f64)> = time
                .iter()
                .filter(|e| e.on_frontier)
                .map(|e| (e.cost, e.val_loss))
                .collect();
            let text = plot::frontier_svg(
                &format!("track {track}: validation loss against training time"),
                Axis::TrainTime.label(),
                &points,
                &front,
                target,
            )?;
            write_svg(p, &text)?;
            Some(p.display().to_string())
        }
        None => None,
    };
    if json {
        let j = FrontierJson {
            track,
            svg: svg_path,
            axes,
        };
        return Ok(serde_json::to_string_pretty(&j)? + "\n");
    }
    let mut o = String::new();
    for a in &axes {
        let _ = writeln!(o, "frontier of track {track} in {}", a.axis.label());
        let _ = writeln!(
            o,
            "  {:>5} {:<34} {:>5} {:>14} {:>9} {:>9} {:>10}",
            "run", "stack", "seed", "cost", "val loss", "frontier", "distance"
        );
        for e in &a.runs {
            let _ = writeln!(
                o,
                "  {:>5} {:<34} {:>5} {:>14} {:>9.4} {:>9} {:>10.4}",
                e.run_id,
                e.stack,
                e.seed,
                cost(a.axis, e.cost),
                e.val_loss,
                if e.on_frontier { "yes" } else { "" },
                e.distance
            );
        }
        if a.runs.is_empty() {
            let _ = writeln!(o, "  (no valid, complete runs)");
        }
    }
    if let Some(p) = &svg_path {
        let _ = writeln!(o, "plot: {p}");
    }
    Ok(o)
}

/// A cost as a person reads it: seconds, a token count, FLOPs.
fn cost(axis: Axis, v: f64) -> String {
    match axis {
        Axis::TrainTime => format!("{v:.2} s"),
        Axis::Tokens => format!("{v:.0}"),
        Axis::Flops => format!("{v:.3e}"),
    }
}

#[derive(Serialize)]
struct ShowJson<'a> {
    run: &'a StoredRun,
    plugins: Vec<StoredPlugin>,
    evaluations: Vec<Evaluation>,
    verdict: Option<Verdict>,
    svg: Option<String>,
}

/// Training losses of a run directory's `metrics.jsonl`, as (step, loss).
fn train_curve(run_dir: &Path) -> Vec<(f64, f64)> {
    Curves::read(run_dir)
        .steps
        .iter()
        .map(|s| (s.step, s.train_loss))
        .collect()
}

/// Runs' validation (and, with `train`, training) losses against step on one
/// chart, with the target: `show RUN RUN…` and every bench write it.
pub fn overlay_svg(
    title: &str,
    runs: &[(String, &Path)],
    target: Option<f64>,
    train: bool,
) -> Result<String> {
    let mut series = Vec::new();
    for (label, dir) in runs {
        let c = Curves::read(dir);
        if train {
            series.push(plot::Series {
                label: format!("{label} train"),
                points: c.steps.iter().map(|s| (s.step, s.train_loss)).collect(),
                mark: plot::Mark::Line,
            });
        }
        series.push(plot::Series {
            label: format!("{label} validation"),
            points: c.vals.iter().map(|v| (v.step, v.val_loss)).collect(),
            mark: plot::Mark::LineAndPoints,
        });
    }
    plot::chart_svg(title, ("step", "loss (nats/token)"), &series, target)
}

/// Several stored runs: each one's `show` text, and their curves overlaid in
/// one SVG at `svg` (default `compare-ID-ID….svg` in the working directory).
pub fn show_many(
    store: &Store,
    keys: &[String],
    json: bool,
    svg: Option<PathBuf>,
) -> Result<String> {
    let runs = keys
        .iter()
        .map(|k| store.run(k))
        .collect::<Result<Vec<_>>>()?;
    let ids: Vec<String> = runs.iter().map(|r| r.id.to_string()).collect();
    let path = svg.unwrap_or_else(|| PathBuf::from(format!("compare-{}.svg", ids.join("-"))));
    let labelled: Vec<(String, &Path)> = runs
        .iter()
        .map(|r| {
            (
                format!("run {} ({}, seed {})", r.id, r.stack, r.seed),
                Path::new(r.run_dir.as_str()),
            )
        })
        .collect();
    let same_track = runs.iter().all(|r| r.track == runs[0].track);
    let target = runs[0].target_val_loss.filter(|_| same_track);
    write_svg(
        &path,
        &overlay_svg(&format!("runs {}", ids.join(", ")), &labelled, target, true)?,
    )?;
    if json {
        let shown: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| Ok(serde_json::from_str(&show(store, k, true, None)?)?))
            .collect::<Result<_>>()?;
        return Ok(serde_json::to_string_pretty(&serde_json::json!({
            "runs": shown,
            "svg": path.display().to_string(),
        }))? + "\n");
    }
    let mut o = String::new();
    for k in keys {
        o += &show(store, k, false, None)?;
        o.push('\n');
    }
    let _ = writeln!(o, "overlay plot   {}", path.display());
    Ok(o)
}

fn write_svg(path: &Path, text: &str) -> Result<()> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A run's summary, verdict and evaluations; its curves as SVG at `svg`
/// (default: `curves.svg` in its run directory, when that exists).
pub fn show(store: &Store, key: &str, json: bool, svg: Option<PathBuf>) -> Result<String> {
    let run = store.run(key)?;
    let evaluations = store.evaluations(run.id)?;
    let plugins = store.plugins(run.id)?;
    let verdict = store.verdict(run.id)?;
    let run_dir = PathBuf::from(&run.run_dir);
    let svg = svg.or_else(|| run_dir.is_dir().then(|| run_dir.join("curves.svg")));
    if let Some(p) = &svg {
        let val: Vec<(f64, f64)> = evaluations
            .iter()
            .map(|e| (e.step as f64, e.val_loss))
            .collect();
        let text = plot::curves_svg(
            &format!(
                "run {} ({}, seed {}, {})",
                run.id, run.stack, run.seed, run.track
            ),
            &train_curve(&run_dir),
            &val,
            run.target_val_loss,
        )?;
        write_svg(p, &text)?;
    }
    let svg = svg.map(|p| p.display().to_string());
    if json {
        let j = ShowJson {
            run: &run,
            plugins,
            evaluations,
            verdict,
            svg,
        };
        return Ok(serde_json::to_string_pretty(&j)? + "\n");
    }
    let mut o = String::new();
    let _ = writeln!(
        o,
        "run {} — track {}, seed {}, {}",
        run.id, run.track, run.seed, run.status
    );
    let _ = writeln!(o, "  directory      {}", run.run_dir);
    let _ = writeln!(o, "  started        {}", run.started_at);
    let _ = writeln!(
        o,
        "  stack          {}{}",
        run.stack,
        if run.official { " (official)" } else { "" }
    );
    for p in &plugins {
        let _ = writeln!(
            o,
            "    {} {} ({}, {}) sha256 {}",
            p.name,
            p.version,
            p.transport,
            p.hooks.join(", "),
            p.sha256
        );
        let _ = writeln!(o, "      config {}", p.config);
    }
    let _ = writeln!(
        o,
        "  validation     final {} best {} (target {})",
        opt(run.final_val_loss, 4),
        opt(run.best_val_loss, 4),
        opt(run.target_val_loss, 4)
    );
    let _ = writeln!(
        o,
        "  training       {} s, {} steps, {} tokens, {} FLOPs",
        opt(run.train_time_s, 2),
        run.steps.map_or("-".into(), |s| s.to_string()),
        run.tokens.map_or("-".into(), |s| s.to_string()),
        run.flops.map_or("-".into(), |f| format!("{f:.3e}"))
    );
    let _ = writeln!(
        o,
        "  to target      {}",
        match (
            run.time_to_target_s,
            run.tokens_to_target,
            run.flops_to_target
        ) {
            (Some(t), Some(k), Some(f)) => format!("{t:.2} s, {k} tokens, {f:.3e} FLOPs"),
            _ => "not reached".into(),
        }
    );
    if let Some(e) = &run.error {
        let _ = writeln!(o, "  error          {e}");
    }
    match &verdict {
        Some(v) => {
            let _ = writeln!(
                o,
                "  verdict        {} (checks v{}{})",
                if v.valid { "valid" } else { "INVALID" },
                run.checks_version,
                if run.checks_version < crate::verify::CHECKS_VERSION {
                    ", older than this host's: reverify or rerun it"
                } else {
                    ""
                }
            );
            for c in &v.checks {
                let _ = writeln!(o, "    {}", check_line(c.check, c.outcome, &c.detail));
            }
        }
        None => {
            let _ = writeln!(o, "  verdict        none (the run did not finish)");
        }
    }
    let _ = writeln!(o, "  evaluations    {}", evaluations.len());
    for e in &evaluations {
        let _ = writeln!(
            o,
            "    step {:>6}  {:>9.2} s  loss {:.4}  {:.4} bits/byte",
            e.step, e.train_time_s, e.val_loss, e.val_bpb
        );
    }
    if let Some(p) = &svg {
        let _ = writeln!(o, "  plot           {p}");
    }
    Ok(o)
}
