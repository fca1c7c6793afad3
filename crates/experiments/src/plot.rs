//! The plots of a `btvmm bench` run, as SVG images (plotters; SVG needs no
//! font files on the machine): grouped bars like the dissertation's
//! figures 3.8 and 3.9, on a log scale because the systems differ by
//! orders of magnitude.
//!
//! - `times.svg`: per benchmark, the median time per unit on each system,
//!   with the runs' min-max as a whisker.
//! - `slowdown.svg`: per benchmark, btvmm and QEMU TCG over native (1 =
//!   native speed).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::ExperimentsError;
use crate::results::{Results, Stats, System};

/// The colour of a system's bars.
const fn colour(system: System) -> RGBColor {
    match system {
        System::Native => RGBColor(90, 90, 90),
        System::Btvmm => RGBColor(31, 119, 180),
        System::BtvmmHw => RGBColor(148, 103, 189),
        System::Tcg => RGBColor(255, 127, 14),
        System::Kvm => RGBColor(44, 160, 44),
    }
}

fn plot_error(path: &Path, error: impl std::fmt::Display) -> ExperimentsError {
    ExperimentsError::Output {
        path: path.to_owned(),
        source: std::io::Error::other(error.to_string()),
    }
}

/// One bar: its group (benchmark), its place in the group, its height and
/// whisker.
struct Bar {
    group: usize,
    slot: usize,
    system: System,
    value: f64,
    low: f64,
    high: f64,
}

/// The log range that holds every value, widened to whole decades.
fn decades(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (low, high) = values
        .filter(|value| value.is_finite() && *value > 0.0)
        .fold((f64::MAX, f64::MIN), |(low, high), value| {
            (low.min(value), high.max(value))
        });
    if low > high {
        return (1.0, 10.0);
    }
    (
        10f64.powf(low.log10().floor()),
        10f64.powf(high.log10().ceil().max(low.log10().floor() + 1.0)),
    )
}

/// What a chart says around its bars.
struct Frame<'a> {
    caption: &'a str,
    y_description: &'a str,
    /// A horizontal line (1 on the slowdown chart).
    reference_line: Option<f64>,
    /// Where the legend goes: clear of the tallest bars.
    legend: SeriesLabelPosition,
}

/// Draws grouped bars for `groups` (x labels) into `path`.
fn draw_bars(
    path: &Path,
    frame: Frame<'_>,
    groups: &[String],
    systems: &[System],
    bars: &[Bar],
) -> Result<(), ExperimentsError> {
    let Frame {
        caption,
        y_description,
        reference_line,
        legend,
    } = frame;
    let (low, high) = decades(
        bars.iter()
            .flat_map(|bar| [bar.value, bar.low, bar.high])
            .chain(reference_line),
    );
    let root = SVGBackend::new(path, (1400, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|error| plot_error(path, error))?;
    let count = groups.len().max(1);
    #[allow(clippy::cast_precision_loss)] // a handful of groups
    let width = count as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(60)
        .y_label_area_size(90)
        .build_cartesian_2d(-0.5..width - 0.5, (low..high).log_scale())
        .map_err(|error| plot_error(path, error))?;
    let label = |x: &f64| {
        let index = x.round();
        if (x - index).abs() > 1e-6 || index < 0.0 {
            return String::new();
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        groups.get(index as usize).cloned().unwrap_or_default()
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(count)
        .x_label_formatter(&label)
        .y_desc(y_description)
        .y_label_formatter(&|y| format!("{y:e}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|error| plot_error(path, error))?;
    #[allow(clippy::cast_precision_loss)] // a few systems
    let slots = systems.len().max(1) as f64;
    let slot_width = 0.8 / slots;
    let place = |bar: &Bar| {
        #[allow(clippy::cast_precision_loss)]
        let start = bar.group as f64 - 0.4 + bar.slot as f64 * slot_width;
        (start, start + slot_width * 0.9)
    };
    for &system in systems {
        let style = colour(system).filled();
        let mine: Vec<&Bar> = bars.iter().filter(|bar| bar.system == system).collect();
        chart
            .draw_series(mine.iter().map(|bar| {
                let (left, right) = place(bar);
                // Slowdowns grow from 1 up or down; times from the axis.
                Rectangle::new(
                    [(left, reference_line.unwrap_or(low)), (right, bar.value)],
                    style,
                )
            }))
            .map_err(|error| plot_error(path, error))?
            .label(system.title())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], style));
        chart
            .draw_series(mine.iter().map(|bar| {
                let (left, right) = place(bar);
                let middle = f64::midpoint(left, right);
                PathElement::new(vec![(middle, bar.low), (middle, bar.high)], BLACK)
            }))
            .map_err(|error| plot_error(path, error))?;
    }
    if let Some(level) = reference_line {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(-0.5, level), (width - 0.5, level)],
                BLACK.stroke_width(1),
            )))
            .map_err(|error| plot_error(path, error))?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|error| plot_error(path, error))?;
    root.present().map_err(|error| plot_error(path, error))
}

/// Writes `times.svg` and `slowdown.svg` into `out`; returns their paths.
pub fn write_plots(results: &Results, out: &Path) -> Result<Vec<PathBuf>, ExperimentsError> {
    let stats = |benchmark: &str, system: System| -> Option<Stats> {
        results
            .cell(benchmark, system)
            .and_then(|cell| cell.stats())
    };
    // Names only under the bars (the units are in results.md): a label
    // per group must fit its width.
    let groups: Vec<String> = results
        .benchmarks
        .iter()
        .map(|(name, _)| name.clone())
        .collect();
    let mut bars = Vec::new();
    for (group, (benchmark, _)) in results.benchmarks.iter().enumerate() {
        for (slot, &system) in results.systems.iter().enumerate() {
            if let Some(stats) = stats(benchmark, system) {
                bars.push(Bar {
                    group,
                    slot,
                    system,
                    value: stats.median,
                    low: stats.min,
                    high: stats.max,
                });
            }
        }
    }
    let times = out.join("times.svg");
    draw_bars(
        &times,
        Frame {
            caption: "Time per unit, median of the runs (whiskers: min-max)",
            y_description: "nanoseconds per unit (log scale; units in results.md)",
            reference_line: None,
            // The boot rows, at the right, are the tallest bars.
            legend: SeriesLabelPosition::UpperLeft,
        },
        &groups,
        &results.systems,
        &bars,
    )?;
    // Slowdown over native, for the benchmarks native ran.
    let compared: Vec<System> = results
        .systems
        .iter()
        .copied()
        .filter(|&system| system != System::Native)
        .collect();
    let mut slow_groups = Vec::new();
    let mut slow_bars = Vec::new();
    for (benchmark, _) in &results.benchmarks {
        let Some(native) = stats(benchmark, System::Native).filter(|s| s.median > 0.0) else {
            continue;
        };
        let group = slow_groups.len();
        slow_groups.push(benchmark.clone());
        for (slot, &system) in compared.iter().enumerate() {
            if let Some(stats) = stats(benchmark, system) {
                slow_bars.push(Bar {
                    group,
                    slot,
                    system,
                    value: stats.median / native.median,
                    low: stats.min / native.median,
                    high: stats.max / native.median,
                });
            }
        }
    }
    let slowdown = out.join("slowdown.svg");
    draw_bars(
        &slowdown,
        Frame {
            caption: "Slowdown over native (median; 1 = native speed)",
            y_description: "time / native time (log scale)",
            reference_line: Some(1.0),
            legend: SeriesLabelPosition::UpperRight,
        },
        &slow_groups,
        &compared,
        &slow_bars,
    )?;
    Ok(vec![times, slowdown])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_range_covers_every_value_in_whole_decades() {
        assert_eq!(decades([250.0, 3.0e6].into_iter()), (100.0, 1.0e7));
        assert_eq!(decades([1.0].into_iter()), (1.0, 10.0));
        assert_eq!(decades(std::iter::empty()), (1.0, 10.0));
        assert_eq!(decades([0.0, f64::NAN, 5.0].into_iter()), (1.0, 10.0));
    }

    #[test]
    fn both_plots_are_written_with_every_benchmark_and_system() {
        let mut results = Results {
            benchmarks: vec![
                ("getuid".into(), "call".into()),
                ("nqueens".into(), "solve".into()),
                ("boot to /init".into(), "boot".into()),
            ],
            systems: vec![System::Native, System::Btvmm, System::Tcg],
            ..Results::default()
        };
        for (benchmark, system, ns) in [
            ("getuid", System::Native, 240.0),
            ("getuid", System::Btvmm, 9.6e4),
            ("getuid", System::Tcg, 880.0),
            ("nqueens", System::Native, 2.6e5),
            ("nqueens", System::Btvmm, 2.7e5),
            ("nqueens", System::Tcg, 1.2e6),
            ("boot to /init", System::Btvmm, 1.1e10),
            ("boot to /init", System::Tcg, 6.9e9),
        ] {
            results.record(benchmark, system, Ok(ns));
        }
        let out = std::env::temp_dir().join(format!("btvmm-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&out).expect("out");
        let written = write_plots(&results, &out).expect("plots");
        let times = std::fs::read_to_string(&written[0]).expect("times.svg");
        let slowdown = std::fs::read_to_string(&written[1]).expect("slowdown.svg");
        let _ = std::fs::remove_dir_all(&out);
        for label in [
            "getuid",
            "nqueens",
            "boot to /init",
            "QEMU TCG",
            "btvmm",
            "native",
        ] {
            // plotters writes each text on a line of its own.
            assert!(
                times.contains(&format!("\n{label}\n")),
                "times.svg lacks {label}"
            );
        }
        assert!(slowdown.contains("nqueens") && !slowdown.contains("boot to /init"));
        assert!(
            !slowdown.contains(">native<"),
            "native is the reference, not a bar"
        );
    }
}
