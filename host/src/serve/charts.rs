//! The charts' data, as the JSON `host/dashboard/dashboard.js` draws: a chart
//! is a title, axis labels and series of (x, y) points, each a line, points,
//! or the target (a dashed level line).

use crate::score::FrontierEntry;
pub use crate::train::telemetry::{Curves, StepLine, ValLine};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub log_y: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub label: String,
    pub kind: Kind,
    pub points: Vec<[f64; 2]>,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Line,
    Points,
    Target,
}

fn line(label: &str, points: Vec<[f64; 2]>) -> Series {
    Series {
        label: label.into(),
        kind: Kind::Line,
        points: points
            .into_iter()
            .filter(|p| p[0].is_finite() && p[1].is_finite())
            .collect(),
    }
}

/// The target as a level line from 0 (or the least x, if below) to the
/// greatest x of `series`: every x here is a cost, a step or a count.
fn target(target: Option<f64>, series: &[Series]) -> Option<Series> {
    let t = target?;
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p[0]));
    let (lo, hi) = xs.fold((0.0f64, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    (lo <= hi).then(|| Series {
        label: format!("target {t:.4}"),
        kind: Kind::Target,
        points: vec![[lo, t], [hi, t]],
    })
}

fn chart(title: &str, x: &str, y: &str, mut series: Vec<Series>, goal: Option<f64>) -> Chart {
    if let Some(t) = target(goal, &series) {
        series.push(t);
    }
    Chart {
        title: title.into(),
        x_label: x.into(),
        y_label: y.into(),
        series,
        log_y: false,
    }
}

/// A run's charts: losses against step, training time and tokens (with the
/// target), the learning rate and the gradient norm.
pub fn run_charts(c: &Curves, goal: Option<f64>) -> Vec<Chart> {
    let train = |x: fn(&StepLine) -> f64| {
        line(
            "train loss",
            c.steps.iter().map(|s| [x(s), s.train_loss]).collect(),
        )
    };
    let val = |x: fn(&ValLine) -> f64| {
        line(
            "validation loss",
            c.vals.iter().map(|v| [x(v), v.val_loss]).collect(),
        )
    };
    vec![
        chart(
            "Loss against step",
            "step",
            "loss (nats/token)",
            vec![train(|s| s.step), val(|v| v.step)],
            goal,
        ),
        chart(
            "Loss against training time",
            "training time (s)",
            "loss (nats/token)",
            vec![train(|s| s.train_time_s), val(|v| v.train_time_s)],
            goal,
        ),
        chart(
            "Loss against tokens",
            "tokens",
            "loss (nats/token)",
            vec![train(|s| s.tokens), val(|v| v.tokens)],
            goal,
        ),
        chart(
            "Learning rate",
            "step",
            "learning rate",
            vec![line("lr", c.steps.iter().map(|s| [s.step, s.lr]).collect())],
            None,
        ),
        Chart {
            log_y: true,
            ..chart(
                "Gradient norm (before clipping)",
                "step",
                "global L2 norm",
                vec![line(
                    "grad norm",
                    c.steps.iter().map(|s| [s.step, s.grad_norm]).collect(),
                )],
                None,
            )
        },
    ]
}

/// Several runs overlaid: validation loss against step and training time, and
/// training loss against step, one series per run.
pub fn overlay(runs: &[(String, Curves)], goal: Option<f64>) -> Vec<Chart> {
    let each = |f: &dyn Fn(&Curves) -> Vec<[f64; 2]>| -> Vec<Series> {
        runs.iter().map(|(label, c)| line(label, f(c))).collect()
    };
    vec![
        chart(
            "Validation loss against step",
            "step",
            "validation loss",
            each(&|c| c.vals.iter().map(|v| [v.step, v.val_loss]).collect()),
            goal,
        ),
        chart(
            "Validation loss against training time",
            "training time (s)",
            "validation loss",
            each(&|c| {
                c.vals
                    .iter()
                    .map(|v| [v.train_time_s, v.val_loss])
                    .collect()
            }),
            goal,
        ),
        chart(
            "Training loss against step",
            "step",
            "train loss",
            each(&|c| c.steps.iter().map(|s| [s.step, s.train_loss]).collect()),
            goal,
        ),
    ]
}

/// A track's records: each one's mean time to target, by record number.
pub fn records(times: &[f64]) -> Chart {
    let points = times
        .iter()
        .enumerate()
        .map(|(i, &t)| [(i + 1) as f64, t])
        .collect();
    chart(
        "Time to target, record by record",
        "record",
        "mean time to target (s)",
        vec![line("time to target", points)],
        None,
    )
}

/// The frontier: final validation loss against training time, one colour
/// and legend entry per stack, with the target.
pub fn frontier(entries: &[FrontierEntry], goal: Option<f64>) -> Chart {
    let mut by_stack: BTreeMap<&str, Vec<[f64; 2]>> = BTreeMap::new();
    for e in entries {
        by_stack
            .entry(&e.stack)
            .or_default()
            .push([e.cost, e.val_loss]);
    }
    let series = by_stack
        .into_iter()
        .map(|(stack, points)| Series {
            label: stack.to_string(),
            kind: Kind::Points,
            points,
        })
        .collect();
    chart(
        "Final validation loss against training time (scoring runs)",
        "training time (s)",
        "final validation loss",
        series,
        goal,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_read_step_and_validation_lines_and_the_target_spans_the_x_range() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("metrics.jsonl"),
            concat!(
                r#"{"kind":"val","step":0,"tokens":0,"train_time_s":0.5,"val_loss":5.5}"#,
                "\n",
                r#"{"kind":"step","step":0,"tokens":512,"train_loss":5.4,"lr":0.001,"grad_norm":3.0,"train_time_s":0.6}"#,
                "\nnot json\n",
                r#"{"kind":"step","step":1,"tokens":1024,"train_loss":5.0,"lr":0.002,"grad_norm":2.0,"train_time_s":0.7}"#,
                "\n",
                r#"{"kind":"val","step":2,"tokens":1536,"train_time_s":0.9,"val_loss":4.8}"#,
                "\n"
            ),
        )
        .unwrap();
        let c = Curves::read(dir.path());
        assert_eq!((c.steps.len(), c.vals.len()), (2, 2));
        let charts = run_charts(&c, Some(4.9));
        let loss = &charts[0];
        assert_eq!(loss.series[0].points, vec![[0.0, 5.4], [1.0, 5.0]]);
        assert_eq!(loss.series[1].points, vec![[0.0, 5.5], [2.0, 4.8]]);
        // The target runs across every series' steps, 0 to 2.
        assert_eq!(loss.series[2].points, vec![[0.0, 4.9], [2.0, 4.9]]);
        assert!(matches!(loss.series[2].kind, Kind::Target));
        assert_eq!(charts[1].series[1].points[1], [0.9, 4.8]);
        assert!(charts[4].log_y);
        assert!(Curves::read(&dir.path().join("gone")).steps.is_empty());
    }
}
