//! Plots of a comparison, each as SVG and PNG: bar charts of medians (with a p90
//! whisker) per system, and density lines per system over K.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::compare::{Comparison, SystemResult};
use crate::report::markdown::{
    cpu, pss, restart, restart_console, start_console, start_exit, start_running,
};
use crate::stats::Summary;
use crate::systems::Kind;

/// Errors drawing plots.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// No TrueType font to draw text with.
    #[error(
        "no TrueType font found (tried $SPRY_BENCH_FONT and {tried}); install Debian's \
         fonts-dejavu-core"
    )]
    NoFont {
        /// The paths tried.
        tried: String,
    },
    /// The font file is not a usable font.
    #[error("{0} is not a usable TrueType font")]
    BadFont(PathBuf),
    /// Drawing or writing a plot failed.
    #[error("cannot draw {path}: {detail}")]
    Draw {
        /// The plot file.
        path: PathBuf,
        /// What plotters said.
        detail: String,
    },
}

const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a sans-serif TrueType font with plotters (pure-Rust ab_glyph rendering,
/// so PNGs render headless without fontconfig).
pub fn register_font() -> Result<(), PlotError> {
    let candidates: Vec<PathBuf> = std::env::var_os("SPRY_BENCH_FONT")
        .map(PathBuf::from)
        .into_iter()
        .chain(FONT_PATHS.iter().map(PathBuf::from))
        .collect();
    let Some((path, bytes)) = candidates
        .iter()
        .find_map(|p| std::fs::read(p).ok().map(|b| (p.clone(), b)))
    else {
        return Err(PlotError::NoFont {
            tried: FONT_PATHS.join(", "),
        });
    };
    // plotters keeps the font for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| PlotError::BadFont(path))
}

const PALETTE: [RGBColor; 5] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
];

fn color(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

/// One bar: system, median, p90.
#[derive(Debug, Clone)]
pub struct Bar {
    /// The system.
    pub label: String,
    /// Bar height.
    pub median: f64,
    /// Whisker top.
    pub p90: f64,
}

fn draw_err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> PlotError + '_ {
    move |e| PlotError::Draw {
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

fn bar_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    y_label: &str,
    bars: &[Bar],
) -> Result<(), String> {
    area.fill(&WHITE).map_err(|e| e.to_string())?;
    let n = u32::try_from(bars.len()).unwrap_or(u32::MAX);
    let top = bars.iter().map(|b| b.p90.max(b.median)).fold(0.0, f64::max);
    let top = if top > 0.0 { top * 1.2 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d((0..n.saturating_sub(1)).into_segmented(), 0.0..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(y_label)
        .label_style(("sans-serif", 16))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => usize::try_from(*i)
                .ok()
                .and_then(|i| bars.get(i))
                .map(|b| b.label.clone())
                .unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series((0u32..).zip(bars).map(|(i, b)| {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), b.median),
                ],
                color(i as usize).filled(),
            );
            bar.set_margin(0, 0, 24, 24);
            bar
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series((0u32..).zip(bars).map(|(i, b)| {
            PathElement::new(
                vec![
                    (SegmentValue::CenterOf(i), b.median),
                    (SegmentValue::CenterOf(i), b.p90),
                ],
                BLACK.stroke_width(2),
            )
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series((0u32..).zip(bars).map(|(i, b)| {
            Text::new(
                crate::report::table::num(b.median),
                (SegmentValue::CenterOf(i), b.median),
                ("sans-serif", 16)
                    .into_font()
                    .into_text_style(area)
                    .pos(Pos::new(HPos::Right, VPos::Bottom)),
            )
        }))
        .map_err(|e| e.to_string())?;
    area.present().map_err(|e| e.to_string())
}

/// One line: system and (x, y) points.
#[derive(Debug, Clone)]
pub struct Line {
    /// The system.
    pub label: String,
    /// Points in x order.
    pub points: Vec<(f64, f64)>,
}

fn line_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    lines: &[Line],
) -> Result<(), String> {
    area.fill(&WHITE).map_err(|e| e.to_string())?;
    let points = || lines.iter().flat_map(|l| l.points.iter());
    let x_max = points().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let y_max = points().map(|p| p.1).fold(0.0, f64::max);
    let y_max = if y_max > 0.0 { y_max * 1.2 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, line) in lines.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(line.points.clone(), c.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(line.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        chart
            .draw_series(line.points.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(|e| e.to_string())?;
    area.present().map_err(|e| e.to_string())
}

const SIZE: (u32, u32) = (900, 540);

/// What a plot shows.
enum Figure<'a> {
    Bars {
        title: &'a str,
        y: &'a str,
        bars: Vec<Bar>,
    },
    Lines {
        title: &'a str,
        x: &'a str,
        y: &'a str,
        lines: Vec<Line>,
    },
}

fn draw(figure: &Figure<'_>, dir: &Path, name: &str) -> Result<Vec<String>, PlotError> {
    let mut written = Vec::new();
    for ext in ["svg", "png"] {
        let file = format!("{name}.{ext}");
        let path = dir.join(&file);
        let result = if ext == "svg" {
            let area = SVGBackend::new(&path, SIZE).into_drawing_area();
            render(figure, &area)
        } else {
            let area = BitMapBackend::new(&path, SIZE).into_drawing_area();
            render(figure, &area)
        };
        result.map_err(|e| draw_err(&path)(&e))?;
        written.push(file);
    }
    Ok(written)
}

fn render<DB: DrawingBackend>(
    figure: &Figure<'_>,
    area: &DrawingArea<DB, Shift>,
) -> Result<(), String> {
    match figure {
        Figure::Bars { title, y, bars } => bar_chart(area, title, y, bars),
        Figure::Lines { title, x, y, lines } => line_chart(area, title, x, y, lines),
    }
}

type Metric = fn(&SystemResult) -> Option<Summary>;

fn bar(label: String, s: Summary) -> Bar {
    Bar {
        label,
        median: s.median,
        p90: s.p90,
    }
}

fn bars(c: &Comparison, metric: Metric) -> Vec<Bar> {
    c.systems
        .iter()
        .filter_map(|r| Some(bar(r.name.clone(), metric(r)?)))
        .collect()
}

/// [`bars`] of each system's running signal, and next to spry's (the first system)
/// a "spry → console" bar of `console`: the signal VM peers are compared on (their
/// running signal is their first console line), where a VM peer ran.
fn running_and_console_bars(c: &Comparison, running: Metric, console: Metric) -> Vec<Bar> {
    let mut out = bars(c, running);
    let vm_peer = c.systems.iter().skip(1).any(|r| r.kind == Kind::Vm);
    let spry_console = c.systems.first().and_then(console).filter(|_| vm_peer);
    if let Some(s) = spry_console {
        // Right after spry's own bar, if it has one.
        let after_spry = usize::from(c.systems.first().and_then(running).is_some());
        out.insert(after_spry, bar("spry → console".into(), s));
    }
    out
}

fn density_lines(
    c: &Comparison,
    value: impl Fn(&crate::compare::DensityPoint) -> f64,
) -> Vec<Line> {
    c.systems
        .iter()
        .filter(|r| !r.density.is_empty())
        .map(|r| Line {
            label: r.name.clone(),
            points: r.density.iter().map(|d| (d.k as f64, value(d))).collect(),
        })
        .collect()
}

/// Draws every plot of `c` into `dir`; returns the file names written.
pub fn write_all(c: &Comparison, dir: &Path) -> Result<Vec<String>, PlotError> {
    register_font()?;
    let figures = [
        (
            "start",
            Figure::Bars {
                title: "Start → running signal (median, whisker to p90)",
                y: "ms",
                bars: running_and_console_bars(c, start_running, start_console),
            },
        ),
        (
            "start-to-exit",
            Figure::Bars {
                title: "Start → exit after the workload (median, p90)",
                y: "ms",
                bars: bars(c, start_exit),
            },
        ),
        (
            "restart",
            Figure::Bars {
                title: "Restart: stop + start → running signal (median, p90)",
                y: "ms",
                bars: running_and_console_bars(c, restart, restart_console),
            },
        ),
        (
            "memory",
            Figure::Bars {
                title: "Memory per idle sandbox: Pss (median, p90)",
                y: "MiB",
                bars: bars(c, pss),
            },
        ),
        (
            "cpu",
            Figure::Bars {
                title: "CPU per start: user + system (median, p90)",
                y: "ms",
                bars: bars(c, cpu),
            },
        ),
        (
            "density-memory",
            Figure::Lines {
                title: "Density: Pss per instance with K idle sandboxes",
                x: "K (concurrent sandboxes)",
                y: "MiB per instance",
                lines: density_lines(c, |d| d.pss_per_instance_mib),
            },
        ),
        (
            "density-host-memory",
            Figure::Lines {
                title: "Density: host MemAvailable drop per instance",
                x: "K (concurrent sandboxes)",
                y: "MiB per instance",
                lines: density_lines(c, |d| d.host_mem_per_instance_mib),
            },
        ),
        (
            "density-launch",
            Figure::Lines {
                title: "Density: launch rate of K sandboxes at once",
                x: "K (concurrent sandboxes)",
                y: "sandboxes per second",
                lines: density_lines(c, |d| d.launch_per_s),
            },
        ),
    ];
    let mut written = Vec::new();
    for (name, figure) in &figures {
        written.extend(draw(figure, dir, name)?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::markdown::tests::fixture;

    #[test]
    fn test_spry_is_also_shown_on_the_console_line_of_its_vm_peers() {
        let labels: Vec<String> =
            running_and_console_bars(&fixture(), start_running, start_console)
                .into_iter()
                .map(|b| b.label)
                .collect();
        assert_eq!(labels, ["spry", "spry → console", "runc", "QEMU"]);
    }

    #[test]
    fn test_no_console_bar_without_a_vm_peer() {
        let mut c = fixture();
        c.systems.retain(|r| r.kind != Kind::Vm || r.name == "spry");
        let bars = running_and_console_bars(&c, restart, restart_console);
        assert_eq!(bars.len(), 2);
    }
}
