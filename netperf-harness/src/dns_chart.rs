//! The `dns` subcommand's chart: per-query latency percentiles per setup, and achieved against
//! offered dnsperf rate. Written as SVG and PNG with `plotters`.

use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::dns_results::{DnsResults, INSPECTION_P99_GOAL_US, RATE_GOAL_QPS, Setup, SetupSummary};
use crate::error::{Error, Result};

const SIZE: (u32, u32) = (1600, 700);
const LAT_COLORS: [RGBColor; 3] = [
    RGBColor(130, 177, 255),
    RGBColor(41, 98, 255),
    RGBColor(13, 33, 117),
];

fn color(s: Setup) -> RGBColor {
    match s {
        Setup::Passthrough => RGBColor(120, 144, 156),
        Setup::Full => RGBColor(41, 98, 255),
        Setup::Inspected => RGBColor(255, 143, 0),
        Setup::Veth => RGBColor(67, 160, 71),
    }
}

fn err<E: std::fmt::Display>(e: E) -> Error {
    Error::Chart(e.to_string())
}

/// One setup's bars (P50, P90, P99 medians), its P99 whisker, its pooled P99 and its name, in
/// slot `x0`.
fn latency_row<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    x0: f64,
    r: &SetupSummary,
    top: f64,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let vals = [r.p50_us, r.p90_us, r.p99_us];
    for (j, v) in vals.iter().enumerate() {
        let Some(v) = v else { continue };
        let (a, b) = (
            x0 + 0.12 + j as f64 * 0.25,
            x0 + 0.12 + (j as f64 + 1.0) * 0.25,
        );
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(a, 0.0), (b - 0.02, *v)],
                LAT_COLORS[j].filled(),
            )))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{v:.0}"),
                (a + 0.03, *v + top * 0.01),
                ("sans-serif", 13),
            )))
            .map_err(err)?;
    }
    if let (Some(lo), Some(hi)) = (r.p99_min_us, r.p99_max_us) {
        let x = x0 + 0.9;
        let end = hi.min(top * 0.97);
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, lo), (x, end)],
                BLACK.stroke_width(2),
            )))
            .map_err(err)?;
        if end < hi {
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("↑ {hi:.0}"),
                    (x + 0.03, top * 0.99),
                    ("sans-serif", 13),
                )))
                .map_err(err)?;
        }
    }
    if let Some(p) = r.pooled {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x0 + 0.6, p.p99_us), (x0 + 0.87, p.p99_us)],
                RED.stroke_width(3),
            )))
            .map_err(err)?;
    }
    chart
        .draw_series(std::iter::once(Text::new(
            r.setup.name().to_string(),
            (x0 + 0.35, -top * 0.04),
            ("sans-serif", 17).into_font().color(&color(r.setup)),
        )))
        .map_err(err)?;
    Ok(())
}

fn latency_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, res: &DnsResults) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let rows: Vec<_> = res.summary.iter().filter(|r| r.p99_us.is_some()).collect();
    let n = rows.len().max(1) as f64;
    // One stalled repetition can put a P99 ten times above the rest: the axis stops at twice
    // the largest median or pooled P99, and a whisker that goes beyond says how far.
    let typical = rows
        .iter()
        .flat_map(|r| [r.p99_us, r.pooled.map(|p| p.p99_us)])
        .flatten()
        .fold(1.0_f64, f64::max);
    let highest = rows
        .iter()
        .filter_map(|r| r.p99_max_us)
        .fold(1.0_f64, f64::max);
    let top = highest.min(2.0 * typical) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Per-query latency (bars: medians of repetitions; whisker: P99 range)",
            ("sans-serif", 22),
        )
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n, 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("latency (µs)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    for (i, r) in rows.iter().enumerate() {
        latency_row(&mut chart, i as f64, r, top)?;
    }
    for (j, name) in ["P50", "P90", "P99"].iter().enumerate() {
        let c = LAT_COLORS[j];
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, 0.0), (0.0, 0.0)],
                c.filled(),
            )))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
    }
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 0.0), (0.0, 0.0)],
            RED,
        )))
        .map_err(err)?
        .label("P99 of all repetitions pooled")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], RED.stroke_width(3)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

fn rate_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, res: &DnsResults) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let top = res
        .throughput
        .iter()
        .map(|s| f64::from(s.target_qps).max(s.summary.qps))
        .fold(f64::from(RATE_GOAL_QPS), f64::max)
        * 1.08;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Achieved vs offered rate (hollow: queries lost or < 98 %; counts in report.md)",
            ("sans-serif", 22),
        )
        .margin(14)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..top, 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("offered (queries/s)")
        .y_desc("answered (queries/s)")
        .x_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .y_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 0.0), (top, top)],
            RGBColor(180, 180, 180).stroke_width(1),
        )))
        .map_err(err)?;
    let goal = f64::from(RATE_GOAL_QPS);
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(goal, 0.0), (goal, top)],
            RED.mix(0.4).stroke_width(1),
        )))
        .map_err(err)?;
    // Setups on the diagonal hide each other: each gets a smaller marker than the one before,
    // so nested rings show every setup at a shared point.
    for (k, r) in res.summary.iter().enumerate() {
        let c = color(r.setup);
        let radius = 10_i32.saturating_sub(2 * k as i32).max(3);
        let pts: Vec<(f64, f64, bool, u64, u32)> = res
            .throughput
            .iter()
            .filter(|s| s.setup == r.setup)
            .map(|s| {
                let x = f64::from(s.target_qps);
                (x, s.summary.qps, s.clean, s.summary.lost, s.pass)
            })
            .collect();
        if pts.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(
                pts.iter().filter(|p| p.4 == 1).map(|p| (p.0, p.1)),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(r.setup.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3)));
        chart
            .draw_series(pts.iter().map(|&(x, y, clean, _, _)| {
                let style = if clean { c.filled() } else { c.stroke_width(2) };
                Circle::new((x, y), radius, style)
            }))
            .map_err(err)?;
    }
    if res.throughput.is_empty() {
        return Ok(());
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, res: &DnsResults) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let kernel = res.conditions["kernel"].as_str().unwrap_or("?");
    let delta = res
        .deltas
        .median_minus_full_us
        .map(|d| format!("{d:+.1} µs"))
        .unwrap_or_else(|| "–".into());
    let title = format!(
        "DNS-aware policy: dnsperf → dnsmasq (kernel {kernel}); P99 inspected − full, median of repetitions: {delta} (goal ≤ {INSPECTION_P99_GOAL_US:.0} µs)"
    );
    let body = root.titled(&title, ("sans-serif", 24)).map_err(err)?;
    let panels = body.split_evenly((1, 2));
    latency_panel(&panels[0], res)?;
    rate_panel(&panels[1], res)?;
    root.present().map_err(err)
}

/// Writes `chart.svg` and `chart.png` into `dir`.
pub fn write(res: &DnsResults, dir: &Path) -> Result<()> {
    let svg = dir.join("chart.svg");
    draw(SVGBackend::new(&svg, SIZE).into_drawing_area(), res)?;
    let png = dir.join("chart.png");
    draw(BitMapBackend::new(&png, SIZE).into_drawing_area(), res)?;
    Ok(())
}
