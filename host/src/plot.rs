//! SVG plots (plotters, SVG backend only): a run's curves, and a track's runs
//! against the efficiency frontier.

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

/// Training loss per step (a line) and validation loss (points) against step.
pub fn curves_svg(title: &str, train: &[(f64, f64)], val: &[(f64, f64)]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let all = train.iter().chain(val);
        let (x0, x1) = range(all.clone().map(|p| p.0));
        let (y0, y1) = range(all.map(|p| p.1));
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss (nats/token)")
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(train.iter().copied(), &BLUE))
            .map_err(err)?
            .label("training loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
        chart
            .draw_series(LineSeries::new(val.iter().copied(), &RED))
            .map_err(err)?;
        chart
            .draw_series(val.iter().map(|&p| Circle::new(p, 4, RED.filled())))
            .map_err(err)?
            .label("validation loss")
            .legend(|(x, y)| Circle::new((x + 8, y), 4, RED.filled()));
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

/// Every run as a point (validation loss against `x_label`), the frontier as a
/// staircase through its points.
pub fn frontier_svg(
    title: &str,
    x_label: &str,
    runs: &[(f64, f64)],
    frontier: &[(f64, f64)],
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (x0, x1) = range(runs.iter().map(|p| p.0));
        let (y0, y1) = range(runs.iter().map(|p| p.1));
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
            .y_desc("validation loss (nats/token)")
            .draw()
            .map_err(err)?;
        chart
            .draw_series(
                runs.iter()
                    .map(|&p| Circle::new(p, 4, BLUE.mix(0.6).filled())),
            )
            .map_err(err)?
            .label("runs")
            .legend(|(x, y)| Circle::new((x + 8, y), 4, BLUE.filled()));
        // Staircase: the best loss reachable at each budget.
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
        chart
            .draw_series(LineSeries::new(stairs, RED.stroke_width(2)))
            .map_err(err)?
            .label("frontier")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_svg_with_their_labels() {
        let s = curves_svg("run 3", &[(0.0, 5.0), (1.0, 4.0)], &[(1.0, 4.2)]).unwrap();
        assert!(s.starts_with("<svg"), "{}", &s[..40]);
        assert!(s.contains("run 3") && s.contains("validation loss"));
        let f = frontier_svg(
            "smoke",
            "training time (s)",
            &[(1.0, 3.0), (2.0, 2.5)],
            &[(1.0, 3.0), (2.0, 2.5)],
        )
        .unwrap();
        assert!(f.contains("frontier") && f.contains("training time (s)"));
        // The staircase holds the corner (2, 3) between the two frontier points.
        assert!(f.contains("<polyline"), "no frontier line");
    }
}
