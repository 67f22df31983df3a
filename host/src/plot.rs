//! SVG plots (plotters, SVG backend only): a run's curves, several runs'
//! curves overlaid, and a track's runs against the efficiency frontier. Every
//! loss plot draws the target when the track has one.

use anyhow::{anyhow, Result};
use plotters::prelude::*;

fn range(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad, hi + pad)
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the plot: {e:?}")
}

/// One colour per series, the dashboard's palette.
const PALETTE: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x17, 0xbe, 0xcf),
];

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Line,
    Points,
    LineAndPoints,
}

/// A labelled series of (x, y) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub mark: Mark,
}

/// Draws `series` on one chart, each in its own colour with a legend entry,
/// and `target` as a grey level line across it.
pub fn chart_svg(
    title: &str,
    (x_label, y_label): (&str, &str),
    series: &[Series],
    target: Option<f64>,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let all = series.iter().flat_map(|s| s.points.iter().copied());
        let (x0, x1) = range(all.clone().map(|p| p.0));
        let (y0, y1) = range(all.map(|p| p.1).chain(target));
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()
            .map_err(err)?;
        for (i, s) in series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            if s.mark != Mark::Points {
                let drawn = chart
                    .draw_series(LineSeries::new(
                        s.points.iter().copied(),
                        colour.stroke_width(2),
                    ))
                    .map_err(err)?;
                if s.mark == Mark::Line {
                    drawn
                        .label(s.label.clone())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
                }
            }
            if s.mark != Mark::Line {
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, colour.filled())))
                    .map_err(err)?
                    .label(s.label.clone())
                    .legend(move |(x, y)| Circle::new((x + 8, y), 4, colour.filled()));
            }
        }
        if let Some(t) = target {
            let grey = RGBColor(0x55, 0x55, 0x55);
            chart
                .draw_series(LineSeries::new(
                    vec![(x0, t), (x1, t)],
                    grey.stroke_width(1),
                ))
                .map_err(err)?
                .label(format!("target {t:.4}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], grey));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Training loss per step (a line) and validation loss (points) against step.
pub fn curves_svg(
    title: &str,
    train: &[(f64, f64)],
    val: &[(f64, f64)],
    target: Option<f64>,
) -> Result<String> {
    chart_svg(
        title,
        ("step", "loss (nats/token)"),
        &[
            Series {
                label: "training loss".into(),
                points: train.to_vec(),
                mark: Mark::Line,
            },
            Series {
                label: "validation loss".into(),
                points: val.to_vec(),
                mark: Mark::LineAndPoints,
            },
        ],
        target,
    )
}

/// Every run as a point (validation loss against `x_label`), one colour per
/// stack, and the frontier as a staircase through its points.
pub fn frontier_svg(
    title: &str,
    x_label: &str,
    runs: &[(String, (f64, f64))],
    frontier: &[(f64, f64)],
    target: Option<f64>,
) -> Result<String> {
    let mut by_stack: std::collections::BTreeMap<&str, Vec<(f64, f64)>> = Default::default();
    for (stack, p) in runs {
        by_stack.entry(stack).or_default().push(*p);
    }
    let mut series: Vec<Series> = by_stack
        .into_iter()
        .map(|(stack, points)| Series {
            label: stack.to_string(),
            points,
            mark: Mark::Points,
        })
        .collect();
    // Staircase: the best loss reachable at each budget.
    let x1 = runs
        .iter()
        .map(|(_, p)| p.0)
        .fold(f64::NEG_INFINITY, f64::max);
    let mut stairs = Vec::new();
    for (i, &p) in frontier.iter().enumerate() {
        if i > 0 {
            stairs.push((p.0, frontier[i - 1].1));
        }
        stairs.push(p);
    }
    if let Some(&last) = frontier.last() {
        stairs.push((x1, last.1));
    }
    series.push(Series {
        label: "frontier".into(),
        points: stairs,
        mark: Mark::Line,
    });
    chart_svg(
        title,
        (x_label, "validation loss (nats/token)"),
        &series,
        target,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_svg_with_their_labels_and_the_target() {
        let s = curves_svg(
            "run 3",
            &[(0.0, 5.0), (1.0, 4.0)],
            &[(1.0, 4.2)],
            Some(3.25),
        )
        .unwrap();
        assert!(s.starts_with("<svg"), "{}", &s[..40]);
        assert!(
            s.contains("run 3") && s.contains("validation loss") && s.contains("target 3.2500")
        );
        assert!(!curves_svg("r", &[(0.0, 5.0)], &[], None)
            .unwrap()
            .contains("target"));
        let f = frontier_svg(
            "smoke",
            "training time (s)",
            &[
                ("muon".into(), (1.0, 3.0)),
                ("reference".into(), (2.0, 2.5)),
            ],
            &[(1.0, 3.0), (2.0, 2.5)],
            None,
        )
        .unwrap();
        assert!(f.contains("frontier") && f.contains("training time (s)"));
        // One legend entry per stack.
        assert!(f.contains("\nmuon\n") && f.contains("\nreference\n"), "{f}");
        assert!(f.contains("<polyline"), "no frontier line");
    }
}
