//! Charts as PNG files (plotters, bitmap backend).

use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points (x, y).
    pub points: Vec<(f64, f64)>,
    /// Line width in pixels (the paper's figures: thin for training, bold for validation).
    pub width: u32,
    /// A marker (filled circle) at each point, for measurements that are
    /// points, not a curve.
    pub markers: bool,
    /// Palette index of its colour (None: its place among the series).
    pub color: Option<usize>,
}

/// A chart's title and axes.
#[derive(Debug, Clone, Copy)]
pub struct Chart<'a> {
    /// Caption above the chart.
    pub title: &'a str,
    /// Horizontal axis label.
    pub x_label: &'a str,
    /// Vertical axis label.
    pub y_label: &'a str,
    /// The x values are integers (worker counts): ticks only at integers,
    /// and half a unit of room either side.
    pub integer_x: bool,
}

/// The x range drawn and the most labels to ask plotters for. Integer x
/// gets half a unit of room either side and at most one label per unit, so
/// plotters' steps (1, 2, 5, 10, ...) fall on integers.
fn x_axis(x0: f64, x1: f64, integer_x: bool) -> (f64, f64, usize) {
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    if integer_x {
        let labels = ((x1 - x0).round() as usize + 1).clamp(2, 12);
        (x0 - 0.5, x1 + 0.5, labels)
    } else {
        (x0, x1, 10)
    }
}

/// Why a chart was not written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// Every series is empty.
    #[error("{path}: nothing to plot")]
    Empty {
        /// The chart's file.
        path: PathBuf,
    },
    /// Drawing or writing the PNG failed (plotters' message).
    #[error("{path}: {detail}")]
    Draw {
        /// The chart's file.
        path: PathBuf,
        /// What plotters reported.
        detail: String,
    },
}

/// Draws `series` on one chart and writes it to `path` (PNG, 900x600).
pub fn line_chart(path: &Path, chart_spec: &Chart, series: &[Series]) -> Result<(), PlotError> {
    panels(path, &[(*chart_spec, series)])
}

/// Charts side by side (900x600 each) on one PNG, with one y range, so
/// that their curves compare by eye (the paper's Figure 6).
pub fn panels(path: &Path, charts: &[(Chart, &[Series])]) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError::Draw {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in charts
        .iter()
        .flat_map(|(_, s)| s.iter())
        .flat_map(|s| s.points.iter())
    {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x0 > x1 {
        return Err(PlotError::Empty {
            path: path.to_path_buf(),
        });
    }
    let pad = ((y1 - y0) * 0.08).max(1e-6);
    let (y0, y1) = (if y0 >= 0.0 { 0.0 } else { y0 - pad }, y1 + pad);
    let width = 900 * charts.len().max(1) as u32;
    let root = BitMapBackend::new(path, (width, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    for (area, (spec, series)) in root
        .split_evenly((1, charts.len().max(1)))
        .iter()
        .zip(charts)
    {
        draw(area, spec, series, (x0, x1), (y0, y1)).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw(
    area: &Area,
    spec: &Chart,
    series: &[Series],
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> Result<(), String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let (x0, x1, x_labels) = x_axis(x0, x1, spec.integer_x);
    let integer_label = |v: &f64| format!("{v:.0}");
    let mut chart = ChartBuilder::on(area)
        .caption(spec.title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|x| e(&x))?;
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(spec.x_label)
        .y_desc(spec.y_label)
        .x_labels(x_labels)
        .light_line_style(WHITE.mix(0.0));
    if spec.integer_x {
        // Otherwise plotters' own number format (epochs: 0, 2.5, 5, ...).
        mesh.x_label_formatter(&integer_label);
    }
    mesh.draw().map_err(|x| e(&x))?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(s.color.unwrap_or(i)).to_rgba();
        let style = ShapeStyle {
            color,
            filled: true,
            stroke_width: s.width,
        };
        if s.markers {
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 5, style)))
                .map_err(|x| e(&x))?;
        }
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), style))
            .map_err(|x| e(&x))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|x| e(&x))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use plotters::coord::ranged1d::Ranged;
    use plotters::coord::types::RangedCoordf64;

    /// Regression: the bench-pipeline plot of 1 and 2 workers had ticks at
    /// 1.1, 1.2, ... workers.
    #[test]
    fn integer_axes_tick_only_at_integers() {
        for (lo, hi) in [(1.0, 2.0), (1.0, 1.0), (1.0, 4.0), (1.0, 16.0), (2.0, 64.0)] {
            let (x0, x1, n) = x_axis(lo, hi, true);
            let ticks = RangedCoordf64::from(x0..x1).key_points(n);
            assert!(ticks.len() >= 2, "{lo}..{hi}: {ticks:?}");
            assert!(
                ticks.iter().all(|t| t.fract() == 0.0),
                "{lo}..{hi}: {ticks:?}"
            );
            assert!(x0 < lo && x1 > hi);
        }
    }

    #[test]
    fn a_chart_is_written_and_an_empty_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("c.png");
        let chart = Chart {
            title: "t",
            x_label: "workers",
            y_label: "images/s",
            integer_x: true,
        };
        let line = Series {
            label: "loader".into(),
            points: vec![(1.0, 900.0), (2.0, 1700.0)],
            width: 3,
            markers: true,
            color: None,
        };
        line_chart(&png, &chart, &[line]).unwrap();
        let img = image::open(&png).unwrap();
        assert_eq!((img.width(), img.height()), (900, 600));
        let empty = Series {
            label: "none".into(),
            points: vec![],
            width: 1,
            markers: false,
            color: None,
        };
        assert!(line_chart(&png, &chart, &[empty]).is_err());
    }
}
