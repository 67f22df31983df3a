//! The dashboard's pages that put runs side by side: ticked runs
//! (`/compare`) and a stored bench (`/bench/ID`).

use super::charts::{self, Curves};
use super::pages::{chart_slots, esc, layout, message, num, runs_table, seconds};
use super::Page;
use crate::compare::{BenchRun, Report};
use crate::store::{Store, StoredRun};
use anyhow::Result;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

fn label_of(r: &StoredRun) -> String {
    format!("run {} · {} · seed {}", r.id, r.stack, r.seed)
}

/// `/compare?runs=…`: the ticked runs' curves overlaid, and their numbers.
pub fn compare(store: &Store, keys: &[String]) -> Result<Page> {
    if keys.is_empty() {
        return Ok(Page::ok(message(
            "Nothing to compare",
            "Tick runs on a track's page (or give /compare?runs=1,2) to overlay their curves.",
        )));
    }
    let mut runs = Vec::new();
    for k in keys {
        let found = match k.parse::<i64>() {
            Ok(id) => store.run_by_id(id)?,
            Err(_) => None,
        };
        match found {
            Some(r) => runs.push(r),
            None => {
                return Ok(Page::not_found(message(
                    "No such run",
                    &format!("The run store holds no run {k}: nothing was compared."),
                )))
            }
        }
    }
    let curves: Vec<(String, Curves)> = runs
        .iter()
        .map(|r| (label_of(r), Curves::read(&PathBuf::from(&r.run_dir))))
        .collect();
    let goal = runs[0]
        .target_val_loss
        .filter(|_| runs.iter().all(|r| r.track == runs[0].track));
    let charts = charts::overlay(&curves, goal);
    let mut o = String::from("<h1>Comparison</h1>");
    let runs: Vec<&StoredRun> = runs.iter().collect();
    o.push_str(&runs_table(&runs, false));
    o.push_str(&stack_statistics(&runs));
    o.push_str(&chart_slots(charts.len()));
    Ok(Page::ok(layout("comparison", &o, &charts, None)))
}

/// The ticked runs by stack: final loss and training time as mean ± sd; for
/// two stacks, their difference and time ratio with 95% intervals (Welch), as
/// `bench` reports them.
fn stack_statistics(runs: &[&StoredRun]) -> String {
    use crate::stats;
    let mut by_stack: BTreeMap<&str, Vec<&StoredRun>> = BTreeMap::new();
    for r in runs {
        if r.final_val_loss.is_some() && r.train_time_s.is_some() {
            by_stack.entry(&r.stack).or_default().push(r);
        }
    }
    let losses =
        |rs: &[&StoredRun]| -> Vec<f64> { rs.iter().filter_map(|r| r.final_val_loss).collect() };
    let times =
        |rs: &[&StoredRun]| -> Vec<f64> { rs.iter().filter_map(|r| r.train_time_s).collect() };
    let mut o = String::from("<h2>By stack</h2><table id=\"stacks\"><tr><th>stack</th><th class=\"num\">runs</th><th class=\"num\">final loss</th><th class=\"num\">train time (s)</th></tr>");
    for (stack, rs) in &by_stack {
        let (l, t) = (
            stats::Summary::of(&losses(rs)),
            stats::Summary::of(&times(rs)),
        );
        let _ = write!(
            o,
            r#"<tr><td>{}</td><td class="num">{}</td><td class="num">{:.4} ± {:.4}</td><td class="num">{:.2} ± {:.2}</td></tr>"#,
            esc(stack),
            rs.len(),
            l.mean,
            l.std,
            t.mean,
            t.std
        );
    }
    o.push_str("</table>");
    if let [(a, ra), (b, rb)] = by_stack.iter().collect::<Vec<_>>()[..] {
        if let Some(d) = stats::mean_difference(&losses(ra), &losses(rb)) {
            let _ = write!(
                o,
                "<p id=\"difference\">final loss, {} − {}: {:+.4}, 95% interval [{:+.4}, {:+.4}]</p>",
                esc(a),
                esc(b),
                d.estimate,
                d.low,
                d.high
            );
        }
        if let Some(s) = stats::speedup(&times(rb), &times(ra)) {
            let _ = write!(
                o,
                "<p>training time of {} over {}: {:.3}x, 95% interval [{:.3}, {:.3}]</p>",
                esc(b),
                esc(a),
                s.estimate,
                s.low,
                s.high
            );
        }
    }
    o
}

fn side_rows(o: &mut String, role: &str, runs: &[BenchRun]) {
    for r in runs {
        let _ = write!(
            o,
            r#"<tr><td>{}</td><td class="num">{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{:.2} s</td><td>{}</td></tr>"#,
            role,
            r.seed,
            r.store_id
                .map_or("-".into(), |id| format!(r#"<a href="/run/{id}">{id}</a>"#)),
            num(r.final_val_loss, 4),
            seconds(r.time_to_target_s),
            r.train_time_s,
            if r.valid { "valid" } else { "invalid" }
        );
    }
}

/// `/bench/ID`: a stored bench, candidate against baseline per seed.
pub fn bench(store: &Store, key: &str) -> Result<Page> {
    let not_found = || {
        Page::not_found(message(
            "No such bench",
            &format!("The run store holds no bench {key}."),
        ))
    };
    let Ok(id) = key.parse::<i64>() else {
        return Ok(not_found());
    };
    let Some(c) = store.comparison(id)? else {
        return Ok(not_found());
    };
    let report: Report = match serde_json::from_value(c.report.clone()) {
        Ok(r) => r,
        Err(e) => {
            return Ok(Page::ok(message(
                "Unreadable bench",
                &format!("Bench {id}'s stored report does not read with this version: {e}"),
            )))
        }
    };
    let sm = |s: &Option<crate::stats::Summary>| {
        s.map_or("-".into(), |s| format!("{:.4} ± {:.4}", s.mean, s.std))
    };
    let mut o = format!(
        r#"<h1>Bench {id}</h1><p id="bench-verdict">{}</p><table id="sides"><tr><th></th><th>stack</th><th class="num">val loss</th><th class="num">train time (s)</th><th class="num">time to target (s)</th><th class="num">p(loss &lt; target)</th></tr>"#,
        esc(&report.verdict_text)
    );
    for (role, s) in [
        ("candidate", &report.candidate),
        ("baseline", &report.baseline),
    ] {
        let _ = write!(
            o,
            r#"<tr><th>{}</th><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
            role,
            esc(&s.stack),
            sm(&s.val_loss),
            sm(&s.train_time_s),
            sm(&s.time_to_target_s),
            s.below_target
                .map_or("-".into(), |t| crate::stats::format_p(t.p_value))
        );
    }
    o.push_str("</table>");
    if let Some(s) = report.speedup {
        let _ = write!(
            o,
            "<p>speedup {:.3}x, 95% interval [{:.3}, {:.3}]; Welch p (faster) {}</p>",
            s.estimate,
            s.low,
            s.high,
            report
                .welch
                .map_or("-".into(), |w| crate::stats::format_p(w.p_less))
        );
    }
    if let Some(d) = report.loss_delta {
        let _ = write!(
            o,
            "<p>loss delta at equal budget {:+.4}, 95% interval [{:+.4}, {:+.4}]</p>",
            d.estimate, d.low, d.high
        );
    }
    o.push_str("<h2>Per seed</h2><table id=\"seeds\"><tr><th>side</th><th class=\"num\">seed</th><th>run</th><th class=\"num\">final loss</th><th class=\"num\">time to target</th><th class=\"num\">train time</th><th>verdict</th></tr>");
    side_rows(&mut o, "candidate", &report.candidate.runs);
    side_rows(&mut o, "baseline", &report.baseline.runs);
    o.push_str("</table>");
    let mut curves: Vec<(String, Curves)> = Vec::new();
    for (role, side) in [
        ("candidate", &report.candidate),
        ("baseline", &report.baseline),
    ] {
        for b in &side.runs {
            if let Some(r) = b
                .store_id
                .map(|id| store.run_by_id(id))
                .transpose()?
                .flatten()
            {
                curves.push((
                    format!("{role} seed {}", b.seed),
                    Curves::read(&PathBuf::from(&r.run_dir)),
                ));
            }
        }
    }
    let charts = charts::overlay(&curves, report.target_val_loss);
    o.push_str(&chart_slots(charts.len()));
    let _ = write!(
        o,
        "<p class=\"muted\">reproduce: <code>{}</code></p>",
        esc(&report.command)
    );
    Ok(Page::ok(layout(&format!("bench {id}"), &o, &charts, None)))
}
