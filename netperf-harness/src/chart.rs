//! The chart: grouped P50/P90/P99 bars and a transactions/s bar per path, one row per load,
//! in the manner of Cilium's release charts. Written as SVG and PNG with `plotters`.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};
use crate::netperf::Test;
use crate::results::{Load, Results, SummaryRow};

const SIZE: (u32, u32) = (1800, 1100);
const LAT_COLORS: [RGBColor; 3] = [
    RGBColor(130, 177, 255),
    RGBColor(41, 98, 255),
    RGBColor(13, 33, 117),
];
const KERNEL_COLOR: RGBColor = RGBColor(120, 144, 156);
const XYLEM_COLOR: RGBColor = RGBColor(255, 143, 0);

fn short(r: &SummaryRow) -> (String, String) {
    let name = match r.path.name() {
        "veth-netfilter" => "veth+iptables".to_string(),
        "xylem-passthrough" => "xylem-pt".to_string(),
        "xylem-monitored" => "xylem+mon".to_string(),
        "xylem-multinode" => "xylem-2node".to_string(),
        "xylem-encrypted" => "xylem-esp".to_string(),
        n => n.to_string(),
    };
    let second = match r.placement {
        Some(p) => p.name().to_string(),
        None => "kernel".to_string(),
    };
    (name, second)
}

fn chart_test(res: &Results) -> Option<Test> {
    if res.summary.iter().any(|r| r.test == Test::TcpRr) {
        Some(Test::TcpRr)
    } else {
        res.summary.iter().map(|r| r.test).find(|t| t.is_rr())
    }
}

fn err<E: std::fmt::Display>(e: E) -> Error {
    Error::Chart(e.to_string())
}

fn fmt_rate(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

fn panel<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    area: &DrawingArea<DB, Shift>,
    rows: &[&SummaryRow],
    latency: bool,
    title: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let n = rows.len().max(1) as f64;
    let value = |r: &SummaryRow| {
        if latency {
            r.p99_us.or(r.p90_us)
        } else {
            r.rate_per_s
        }
    };
    let full = rows
        .iter()
        .filter_map(|r| value(r))
        .fold(0.0_f64, f64::max)
        .max(1.0);
    // Latencies span three orders of magnitude: keep the kernel bars readable by clipping the
    // axis at 6× the largest kernel P99; clipped bars carry their value as a label.
    let kernel_max = rows
        .iter()
        .filter(|r| !r.path.is_xylem())
        .filter_map(|r| value(r))
        .fold(0.0_f64, f64::max);
    let clipped = latency && kernel_max > 0.0 && full > 6.0 * kernel_max;
    let top = if clipped { 6.0 * kernel_max } else { full };
    let ymax = top * 1.18;
    let title = if clipped {
        format!("{title}, axis clipped")
    } else {
        title.to_string()
    };
    let mut chart = ChartBuilder::on(area)
        .caption(&title, ("sans-serif", 22))
        .margin(12)
        .margin_bottom(48)
        .x_label_area_size(8)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .max_light_lines(1)
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .y_desc(if latency {
            "latency (µs)"
        } else {
            "transactions / s"
        })
        .y_label_formatter(&|v| {
            if latency {
                format!("{v:.0}")
            } else {
                fmt_rate(*v)
            }
        })
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    let small = ("sans-serif", 13)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    for (i, r) in rows.iter().enumerate() {
        let x0 = i as f64;
        let missing = if latency {
            r.p99_us.is_none()
        } else {
            r.rate_per_s.is_none()
        };
        if missing {
            let why = if r.unavailable.is_some() {
                "n/a"
            } else {
                "error"
            };
            chart
                .draw_series(std::iter::once(Text::new(
                    why.to_string(),
                    (x0 + 0.5, ymax * 0.04),
                    small.clone(),
                )))
                .map_err(err)?;
        } else if latency {
            let vals = [r.p50_us, r.p90_us, r.p99_us];
            for (j, v) in vals.iter().enumerate() {
                let Some(v) = *v else { continue };
                let a = x0 + 0.12 + j as f64 * 0.26;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(a, 0.0), (a + 0.24, v.min(top))],
                        LAT_COLORS[j].filled(),
                    )))
                    .map_err(err)?;
            }
            if let Some(p99) = r.p99_us {
                chart
                    .draw_series(std::iter::once(Text::new(
                        format!("{p99:.0}"),
                        (x0 + 0.12 + 2.0 * 0.26 + 0.12, p99.min(top)),
                        small.clone(),
                    )))
                    .map_err(err)?;
            }
        } else if let Some(v) = r.rate_per_s {
            let color = if r.path.is_xylem() {
                XYLEM_COLOR
            } else {
                KERNEL_COLOR
            };
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0 + 0.2, 0.0), (x0 + 0.8, v)],
                    color.filled(),
                )))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    fmt_rate(v),
                    (x0 + 0.5, v),
                    small.clone(),
                )))
                .map_err(err)?;
        }
        // Two-line x label under the bar group, drawn in absolute coordinates.
        let (px, py) = chart.backend_coord(&(x0 + 0.5, 0.0));
        let (l1, l2) = short(r);
        let style = ("sans-serif", 14)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        root.draw(&Text::new(l1, (px, py + 6), style.clone()))
            .map_err(err)?;
        let style2 = ("sans-serif", 12)
            .into_font()
            .color(&RGBColor(90, 90, 90))
            .pos(Pos::new(HPos::Center, VPos::Top));
        root.draw(&Text::new(l2, (px, py + 24), style2))
            .map_err(err)?;
    }
    if latency {
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
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, res: &Results) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let Some(test) = chart_test(res) else {
        root.draw(&Text::new(
            "no request/response results to chart",
            (40, 40),
            ("sans-serif", 24),
        ))
        .map_err(err)?;
        return root.present().map_err(err);
    };
    let kernel = res.conditions["kernel"].as_str().unwrap_or("?");
    let title = format!(
        "netperf {test}, 1-byte request/response: kernel paths vs Xylem (kernel {kernel}; medians)"
    );
    let body = root.titled(&title, ("sans-serif", 28)).map_err(err)?;
    let loads: Vec<Load> = [Load::Idle, Load::Busy]
        .into_iter()
        .filter(|l| res.summary.iter().any(|r| r.load == *l && r.test == test))
        .collect();
    let panels = body.split_evenly((loads.len().max(1), 2));
    for (li, load) in loads.iter().enumerate() {
        let rows: Vec<&SummaryRow> = res
            .summary
            .iter()
            .filter(|r| r.test == test && r.load == *load)
            .collect();
        let what = match load {
            Load::Idle => "pod cores idle",
            Load::Busy => "pod cores busy (nice-19 spinner)",
        };
        panel(
            &root,
            &panels[li * 2],
            &rows,
            true,
            &format!("Latency, {what} (lower is better)"),
        )?;
        panel(
            &root,
            &panels[li * 2 + 1],
            &rows,
            false,
            &format!("Transactions/s, {what} (higher is better)"),
        )?;
    }
    root.present().map_err(err)
}

/// Writes `chart.svg` and `chart.png` into `dir`.
pub fn write(res: &Results, dir: &Path) -> Result<()> {
    let svg = dir.join("chart.svg");
    draw(SVGBackend::new(&svg, SIZE).into_drawing_area(), res)?;
    let png = dir.join("chart.png");
    draw(BitMapBackend::new(&png, SIZE).into_drawing_area(), res)?;
    Ok(())
}
