//! Benchmark results: the guest programs' result lines, statistics over
//! runs, and the tables (markdown, CSV) and JSON `btvmm bench` writes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::model::{Costs, Explanation, TERMS};

/// A system a benchmark runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// The static i386 program on the host, pinned to one CPU.
    Native,
    /// Debian's kernel under btvmm (its default mechanism, the split code
    /// view).
    Btvmm,
    /// The same with hardware breakpoints only (`--breakpoints hw`), the
    /// dissertation's mechanism.
    BtvmmHw,
    /// Debian's kernel under QEMU with TCG.
    Tcg,
    /// Debian's kernel under QEMU with KVM.
    Kvm,
}

impl System {
    /// Every system, in table order.
    pub const ALL: [Self; 5] = [
        Self::Native,
        Self::Btvmm,
        Self::BtvmmHw,
        Self::Tcg,
        Self::Kvm,
    ];

    /// The option's spelling.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Btvmm => "btvmm",
            Self::BtvmmHw => "btvmm-hw",
            Self::Tcg => "tcg",
            Self::Kvm => "kvm",
        }
    }

    /// The table's column title.
    #[must_use]
    pub const fn title(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Btvmm => "btvmm",
            Self::BtvmmHw => "btvmm (hw breakpoints)",
            Self::Tcg => "QEMU TCG",
            Self::Kvm => "QEMU KVM",
        }
    }

    /// Parses `native`, `btvmm`, `btvmm-hw`, `tcg` or `kvm`.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|system| system.name() == text)
            .ok_or_else(|| format!("unknown system {text:?} (native, btvmm, btvmm-hw, tcg, kvm)"))
    }
}

/// One result line of `guests/linux/bench.c`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResultLine {
    /// The benchmark.
    pub name: String,
    /// Repetitions measured.
    pub count: u64,
    /// What one repetition is.
    pub unit: String,
    /// Nanoseconds around the loop.
    pub ns: u64,
    /// The counter mark written before the loop (the one after it is one
    /// more), when the program wrote marks.
    pub mark: Option<u32>,
}

impl ResultLine {
    /// Nanoseconds per repetition.
    #[must_use]
    pub fn per_unit_ns(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)] // nanosecond totals fit f64
        let per = self.ns as f64 / self.count.max(1) as f64;
        per
    }
}

/// What a `bench ...` line said: a result, or the benchmark's own error.
#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    /// A measurement.
    Result(ResultLine),
    /// `bench name=NAME error=WHAT`.
    Error {
        /// The benchmark.
        name: String,
        /// What failed.
        error: String,
    },
}

/// Parses a `bench name=...` line (None for any other line: kernel
/// messages, comments).
#[must_use]
pub fn parse_line(line: &str) -> Option<Line> {
    let rest = line.trim().strip_prefix("bench ")?;
    // An error runs to the end of the line, spaces and all.
    if let Some((head, error)) = rest.split_once(" error=") {
        let name = head.strip_prefix("name=")?;
        return Some(Line::Error {
            name: name.to_owned(),
            error: error.to_owned(),
        });
    }
    let mut fields = BTreeMap::new();
    for word in rest.split_whitespace() {
        let (key, value) = word.split_once('=')?;
        fields.insert(key, value);
    }
    let name = (*fields.get("name")?).to_owned();
    Some(Line::Result(ResultLine {
        name,
        count: fields.get("count")?.parse().ok()?,
        unit: (*fields.get("unit")?).to_owned(),
        ns: fields.get("ns")?.parse().ok()?,
        mark: fields.get("mark").and_then(|mark| mark.parse().ok()),
    }))
}

/// Median, minimum and maximum of some runs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Stats {
    /// The median (the mean of the middle two of an even count).
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
    /// How many runs.
    pub runs: usize,
}

impl Stats {
    /// The statistics of `values` (None when there are none).
    #[must_use]
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let median = if sorted.len().is_multiple_of(2) {
            f64::midpoint(sorted[middle - 1], sorted[middle])
        } else {
            sorted[middle]
        };
        Some(Self {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            runs: sorted.len(),
        })
    }
}

/// Every measurement of one benchmark on one system.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Cell {
    /// Nanoseconds per unit, one per successful run.
    pub samples: Vec<f64>,
    /// What went wrong in the other runs.
    pub errors: Vec<String>,
}

impl Cell {
    /// The samples' statistics.
    #[must_use]
    pub fn stats(&self) -> Option<Stats> {
        Stats::of(&self.samples)
    }
}

/// btvmm's counters per unit of one benchmark (counter name -> value), or
/// why there are none.
pub type Breakdown = Result<BTreeMap<String, f64>, String>;

/// The results of a `btvmm bench` run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Results {
    /// Benchmark names in table order, with their unit.
    pub benchmarks: Vec<(String, String)>,
    /// The systems measured, in column order.
    pub systems: Vec<System>,
    /// (benchmark, system) -> measurements.
    #[serde(serialize_with = "cells_as_list")]
    pub cells: BTreeMap<(String, System), Cell>,
    /// Versions and command lines.
    pub environment: BTreeMap<String, String>,
    /// Per benchmark: btvmm's counters per unit ([`BREAKDOWN`]) between
    /// the program's counter marks (the median over btvmm's runs), or why
    /// there are none.
    pub breakdown: BTreeMap<String, Breakdown>,
    /// `btvmm calibrate`'s path costs, measured in the same run, or why
    /// there are none (None: not asked for).
    pub calibration: Option<Result<Costs, String>>,
    /// Per benchmark with a breakdown: what the time model explains
    /// ([`Results::compute_model`]).
    pub model: BTreeMap<String, ModelRow>,
}

/// The time model of one benchmark beside its measured overhead.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelRow {
    /// btvmm's median less native's, ns per unit (None without both).
    pub overhead_ns: Option<f64>,
    /// The counted events at calibrate's costs.
    pub explanation: Explanation,
    /// modelled / overhead (None without an overhead above zero).
    pub explained: Option<f64>,
    /// The monitor's own clock of its work, ns per unit.
    pub monitor_ns: f64,
}

/// The monitor's counters (`btvmm run --stats` names) a breakdown shows,
/// with their column titles.
pub const BREAKDOWN: [(&str, &str); 12] = [
    ("traps", "traps"),
    ("trap: #GP", "#GP"),
    ("trap: #PF", "#PF"),
    ("split: int3 traps from aliases", "INT3"),
    ("trap: planned breakpoint", "#DB"),
    ("trap: system call (seccomp)", "SIGSYS"),
    ("trap: kick", "kicks"),
    ("emulated instructions", "emulated"),
    ("shadow: writes to tracked pages emulated", "tracked writes"),
    ("exits to the host", "exits"),
    ("pool: address-space switches", "CR3 switches"),
    ("time: monitor work (ns)", "monitor ns"),
];

/// The other counters the time model ([`crate::model`]) reads.
pub const MODEL_COUNTERS: [&str; 3] = [
    "shadow: hidden faults mapped",
    "shadow: guest page faults delivered",
    "emulated: interpreted stretches",
];

/// The counters `btvmm run --stats` printed (`NAME  VALUE` lines).
#[must_use]
pub fn parse_counters(stats: &str) -> BTreeMap<String, u64> {
    stats
        .lines()
        .filter_map(|line| {
            let (name, value) = line.trim_end().rsplit_once(' ')?;
            Some((name.trim().to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The counters `btvmm run --stats` printed at each counter mark
/// (`counter mark M: NAME=VALUE; NAME=VALUE; ...` lines), by mark.
#[must_use]
pub fn parse_marks(stats: &str) -> BTreeMap<u32, BTreeMap<String, u64>> {
    stats
        .lines()
        .filter_map(|line| {
            let (mark, fields) = line.strip_prefix("counter mark ")?.split_once(": ")?;
            let counters = fields
                .split("; ")
                .filter_map(|field| {
                    let (name, value) = field.rsplit_once('=')?;
                    Some((name.to_owned(), value.trim().parse().ok()?))
                })
                .collect();
            Some((mark.parse().ok()?, counters))
        })
        .collect()
}

/// The median of each counter over several breakdowns of one benchmark
/// (one per run).
#[must_use]
pub fn median_counters(runs: &[BTreeMap<String, f64>]) -> BTreeMap<String, f64> {
    let mut names: Vec<&String> = runs.iter().flat_map(BTreeMap::keys).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let values: Vec<f64> = runs
                .iter()
                .filter_map(|run| run.get(name).copied())
                .collect();
            (
                name.clone(),
                Stats::of(&values).map_or(0.0, |stats| stats.median),
            )
        })
        .collect()
}

/// Counters per unit: (`with` - `without`) / `units`, for the
/// [`BREAKDOWN`] and [`MODEL_COUNTERS`] counters (a counter that went down
/// counts as 0).
#[must_use]
pub fn per_unit(
    with: &BTreeMap<String, u64>,
    without: &BTreeMap<String, u64>,
    units: u64,
) -> BTreeMap<String, f64> {
    BREAKDOWN
        .iter()
        .map(|&(name, _)| name)
        .chain(MODEL_COUNTERS)
        .map(|name| {
            let delta = with
                .get(name)
                .copied()
                .unwrap_or(0)
                .saturating_sub(without.get(name).copied().unwrap_or(0));
            #[allow(clippy::cast_precision_loss)] // counter values fit f64
            let per = delta as f64 / units.max(1) as f64;
            (name.to_owned(), per)
        })
        .collect()
}

fn cells_as_list<S: serde::Serializer>(
    cells: &BTreeMap<(String, System), Cell>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Entry<'a> {
        benchmark: &'a str,
        system: System,
        stats: Option<Stats>,
        #[serde(flatten)]
        cell: &'a Cell,
    }
    serializer.collect_seq(cells.iter().map(|((benchmark, system), cell)| Entry {
        benchmark,
        system: *system,
        stats: cell.stats(),
        cell,
    }))
}

impl Results {
    /// Records one run's outcome for `benchmark` on `system`.
    pub fn record(&mut self, benchmark: &str, system: System, outcome: Result<f64, String>) {
        let cell = self
            .cells
            .entry((benchmark.to_owned(), system))
            .or_default();
        match outcome {
            Ok(ns) => cell.samples.push(ns),
            Err(error) => cell.errors.push(error),
        }
    }

    /// The cell of `benchmark` on `system`.
    #[must_use]
    pub fn cell(&self, benchmark: &str, system: System) -> Option<&Cell> {
        self.cells.get(&(benchmark.to_owned(), system))
    }

    fn median(&self, benchmark: &str, system: System) -> Option<f64> {
        self.cell(benchmark, system)
            .and_then(Cell::stats)
            .map(|stats| stats.median)
    }

    /// The markdown table: per benchmark the median (min-max) on each
    /// system, btvmm over native and btvmm over QEMU TCG.
    #[must_use]
    pub fn markdown(&self) -> String {
        let mut table = String::from("| benchmark | unit |");
        for system in &self.systems {
            let _ = write!(table, " {} |", system.title());
        }
        // The split view's gain over the dissertation's mechanism, when
        // both ran.
        let hw = self.systems.contains(&System::BtvmmHw);
        table.push_str(" btvmm/native | btvmm/TCG |");
        if hw {
            table.push_str(" hw/split |");
        }
        table.push_str("\n|---|---|");
        for _ in &self.systems {
            table.push_str("---:|");
        }
        table.push_str("---:|---:|");
        if hw {
            table.push_str("---:|");
        }
        table.push('\n');
        for (benchmark, unit) in &self.benchmarks {
            let _ = write!(table, "| {benchmark} | {unit} |");
            for &system in &self.systems {
                let text = match self.cell(benchmark, system) {
                    Some(cell) => match cell.stats() {
                        Some(stats) if cell.errors.is_empty() => format!(
                            "{} ({}-{})",
                            human_ns(stats.median),
                            human_ns(stats.min),
                            human_ns(stats.max)
                        ),
                        // Failed runs are said beside the ones that worked.
                        Some(stats) => format!(
                            "{} ({}-{}; {} of {} runs failed: {})",
                            human_ns(stats.median),
                            human_ns(stats.min),
                            human_ns(stats.max),
                            cell.errors.len(),
                            cell.errors.len() + stats.runs,
                            cell.errors[0]
                        ),
                        None => format!(
                            "failed: {}",
                            cell.errors.first().map_or("no result", String::as_str)
                        ),
                    },
                    None => "-".to_owned(),
                };
                let _ = write!(table, " {} |", text.replace('|', "/"));
            }
            let ratio = |of: System, over: System| match (
                self.median(benchmark, of),
                self.median(benchmark, over),
            ) {
                (Some(btvmm), Some(other)) if other > 0.0 => format!("{:.2}", btvmm / other),
                _ => "-".to_owned(),
            };
            let _ = write!(
                table,
                " {} | {} |",
                ratio(System::Btvmm, System::Native),
                ratio(System::Btvmm, System::Tcg)
            );
            if hw {
                let _ = write!(table, " {} |", ratio(System::BtvmmHw, System::Btvmm));
            }
            table.push('\n');
        }
        table
    }

    /// Fills [`Results::model`] from the breakdown, the calibration and the
    /// medians.
    pub fn compute_model(&mut self) {
        let Some(Ok(costs)) = &self.calibration else {
            return;
        };
        let mut model = BTreeMap::new();
        for (benchmark, _) in &self.benchmarks {
            let Some(Ok(per_unit)) = self.breakdown.get(benchmark) else {
                continue;
            };
            let explanation = Explanation::of(per_unit, costs);
            let overhead_ns = match (
                self.median(benchmark, System::Btvmm),
                self.median(benchmark, System::Native),
            ) {
                (Some(btvmm), Some(native)) => Some(btvmm - native),
                _ => None,
            };
            let explained = overhead_ns
                .filter(|&overhead| overhead > 0.0)
                .map(|overhead| explanation.modelled_ns / overhead);
            model.insert(
                benchmark.clone(),
                ModelRow {
                    overhead_ns,
                    explained,
                    monitor_ns: per_unit
                        .get("time: monitor work (ns)")
                        .copied()
                        .unwrap_or(0.0),
                    explanation,
                },
            );
        }
        self.model = model;
    }

    /// The time model's table: per benchmark, btvmm's measured overhead
    /// over native, the counted events at calibrate's costs (term by
    /// term) and how much of the overhead that is; or why there is none.
    #[must_use]
    pub fn model_markdown(&self) -> String {
        match &self.calibration {
            None => return String::new(),
            Some(Err(error)) => {
                return format!("no time model: btvmm calibrate failed: {error}\n");
            }
            Some(Ok(_)) => {}
        }
        let mut table = String::from(
            "| benchmark (per unit) | btvmm - native | modelled | explained | monitor clock |",
        );
        for term in TERMS {
            let _ = write!(table, " {} |", term.title);
        }
        table.push_str("\n|---|---:|---:|---:|---:|");
        for _ in TERMS {
            table.push_str("---:|");
        }
        table.push('\n');
        let mut missing: Vec<&str> = Vec::new();
        for (benchmark, unit) in &self.benchmarks {
            let Some(row) = self.model.get(benchmark) else {
                continue;
            };
            let _ = write!(
                table,
                "| {benchmark} ({unit}) | {} | {} | {} | {} |",
                row.overhead_ns.map_or_else(|| "-".to_owned(), human_ns),
                human_ns(row.explanation.modelled_ns),
                row.explained
                    .map_or_else(|| "-".to_owned(), |share| format!("{:.0}%", share * 100.0)),
                human_ns(row.monitor_ns),
            );
            for term in &row.explanation.terms {
                let text = match term {
                    Some(ns) if *ns == 0.0 => "0".to_owned(),
                    Some(ns) => human_ns(*ns),
                    None => "?".to_owned(),
                };
                let _ = write!(table, " {text} |");
            }
            table.push('\n');
            for path in &row.explanation.missing {
                if !missing.contains(path) {
                    missing.push(path);
                }
            }
        }
        if !missing.is_empty() {
            let _ = writeln!(
                table,
                "\n?: btvmm calibrate measured no cost for {}",
                missing.join(", ")
            );
        }
        table
    }

    /// The breakdown table: btvmm's counters per unit of each benchmark.
    #[must_use]
    pub fn breakdown_markdown(&self) -> String {
        let mut table = String::from("| benchmark (per unit) |");
        for (_, title) in BREAKDOWN {
            let _ = write!(table, " {title} |");
        }
        table.push_str("\n|---|");
        for _ in BREAKDOWN {
            table.push_str("---:|");
        }
        table.push('\n');
        for (benchmark, unit) in &self.benchmarks {
            let Some(row) = self.breakdown.get(benchmark) else {
                continue;
            };
            let _ = write!(table, "| {benchmark} ({unit}) |");
            match row {
                Ok(counters) => {
                    for (name, _) in BREAKDOWN {
                        let value = counters.get(name).copied().unwrap_or(0.0);
                        let _ = write!(table, " {} |", round(value));
                    }
                }
                Err(error) => {
                    let _ = write!(table, " failed: {} |", error.replace('|', "/"));
                    for _ in 1..BREAKDOWN.len() {
                        table.push_str(" |");
                    }
                }
            }
            table.push('\n');
        }
        table
    }

    /// One CSV row per run: benchmark, unit, system, ns per unit or the
    /// error.
    #[must_use]
    pub fn csv(&self) -> String {
        let mut csv = String::from("benchmark,unit,system,run,ns_per_unit,error\n");
        for (benchmark, unit) in &self.benchmarks {
            for &system in &self.systems {
                let Some(cell) = self.cell(benchmark, system) else {
                    continue;
                };
                for (run, ns) in cell.samples.iter().enumerate() {
                    let _ = writeln!(csv, "{benchmark},{unit},{},{run},{ns:.1},", system.name());
                }
                for error in &cell.errors {
                    let _ = writeln!(
                        csv,
                        "{benchmark},{unit},{},,,\"{}\"",
                        system.name(),
                        error.replace('"', "'")
                    );
                }
            }
        }
        csv
    }
}

/// A counter per unit, to three significant digits or so.
fn round(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

/// Nanoseconds as a person reads them (ns, µs, ms, s).
#[must_use]
pub fn human_ns(ns: f64) -> String {
    if ns < 0.0 {
        // A cost difference can come out negative on a noisy host.
        format!("-{}", human_ns(-ns))
    } else if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_and_error_lines_parse_and_others_do_not() {
        assert_eq!(
            parse_line("bench name=getuid count=100 unit=call ns=4400 per_unit_ns=44.0"),
            Some(Line::Result(ResultLine {
                name: "getuid".into(),
                count: 100,
                unit: "call".into(),
                ns: 4400,
                mark: None,
            }))
        );
        assert_eq!(
            parse_line("bench name=mmap count=2 unit=MiB ns=10 per_unit_ns=5.0 mark=14"),
            Some(Line::Result(ResultLine {
                name: "mmap".into(),
                count: 2,
                unit: "MiB".into(),
                ns: 10,
                mark: Some(14),
            }))
        );
        assert_eq!(
            parse_line("bench name=gzip error=busybox gzip:No child processes\r"),
            Some(Line::Error {
                name: "gzip".into(),
                error: "busybox gzip:No child processes".into(),
            })
        );
        assert_eq!(parse_line("[    2.1] bench name=x"), None);
        assert_eq!(parse_line("bench name=x count=zero unit=a ns=1"), None);
        assert_eq!(parse_line("# compile: 204834 bytes"), None);
    }

    #[test]
    fn counters_per_unit_are_the_difference_over_the_units() {
        let with = parse_counters(
            "traps                                  1200\n\
             trap: #GP                               300\n\
             unclaimed port 0x0087: 1 reads, 0 writes (floating: all ones)\n\
             emulated instructions                 5000\n",
        );
        assert_eq!(with.get("traps"), Some(&1200));
        assert_eq!(with.get("trap: #GP"), Some(&300));
        let without = parse_counters("traps  200\ntrap: #GP 100\nemulated instructions 6000\n");
        let per = per_unit(&with, &without, 100);
        assert_eq!(per.get("traps"), Some(&10.0));
        assert_eq!(per.get("trap: #GP"), Some(&2.0));
        assert_eq!(
            per.get("emulated instructions"),
            Some(&0.0),
            "never negative"
        );
        assert_eq!(per.get("exits to the host"), Some(&0.0), "absent: none");
        assert_eq!(per.len(), BREAKDOWN.len() + MODEL_COUNTERS.len());
        let results = Results {
            benchmarks: vec![
                ("getuid".into(), "call".into()),
                ("gzip".into(), "MiB".into()),
            ],
            breakdown: [
                ("getuid".to_owned(), Ok(per)),
                ("gzip".to_owned(), Err("timed out".to_owned())),
            ]
            .into_iter()
            .collect(),
            ..Results::default()
        };
        let table = results.breakdown_markdown();
        assert!(
            table.contains("| getuid (call) | 10.0 | 2.0 | 0.000 |"),
            "{table}"
        );
        assert!(
            table.contains("| gzip (MiB) | failed: timed out |"),
            "{table}"
        );
    }

    #[test]
    fn stats_take_the_middle_and_the_ends() {
        let stats = Stats::of(&[3.0, 1.0, 2.0]).expect("stats");
        assert_eq!(
            (stats.median, stats.min, stats.max, stats.runs),
            (2.0, 1.0, 3.0, 3)
        );
        let even = Stats::of(&[4.0, 1.0, 3.0, 2.0]).expect("stats");
        assert!((even.median - 2.5).abs() < 1e-12);
        assert_eq!(Stats::of(&[]), None);
        assert_eq!(Stats::of(&[f64::NAN]), None);
    }

    #[test]
    fn every_cell_reaches_the_tables() {
        let mut results = Results {
            benchmarks: vec![
                ("getuid".into(), "call".into()),
                ("gzip".into(), "MiB".into()),
            ],
            systems: vec![System::Native, System::Btvmm, System::Tcg],
            ..Results::default()
        };
        results.record("getuid", System::Native, Ok(400.0));
        results.record("getuid", System::Btvmm, Ok(2000.0));
        results.record("getuid", System::Btvmm, Ok(1000.0));
        results.record("getuid", System::Tcg, Ok(4000.0));
        results.record("gzip", System::Btvmm, Err("timed out".into()));
        results.record("gzip", System::Tcg, Ok(3e6));
        results.record("gzip", System::Tcg, Err("stopped".into()));
        let table = results.markdown();
        assert!(table.contains("| getuid | call | 400 ns (400 ns-400 ns) | 1.50 µs (1.00 µs-2.00 µs) | 4.00 µs (4.00 µs-4.00 µs) | 3.75 | 0.38 |"), "{table}");
        assert!(
            table.contains(
                "| gzip | MiB | - | failed: timed out | 3.00 ms (3.00 ms-3.00 ms; 1 of 2 runs failed: stopped) | - | - |"
            ),
            "{table}"
        );
        let csv = results.csv();
        assert_eq!(csv.lines().count(), 1 + 4 + 3, "{csv}");
        assert!(csv.contains("gzip,MiB,btvmm,,,\"timed out\""), "{csv}");
        let json = serde_json::to_value(&results).expect("json");
        assert_eq!(json["cells"].as_array().map(Vec::len), Some(5));
    }

    #[test]
    fn the_model_sets_counted_costs_beside_the_measured_overhead() {
        let per_unit: BTreeMap<String, f64> = [
            ("trap: #GP".to_owned(), 4.0),
            ("time: monitor work (ns)".to_owned(), 3000.0),
        ]
        .into_iter()
        .collect();
        let mut results = Results {
            benchmarks: vec![
                ("getuid".into(), "call".into()),
                ("nqueens".into(), "solve".into()),
            ],
            systems: vec![System::Native, System::Btvmm],
            breakdown: [
                ("getuid".to_owned(), Ok(per_unit)),
                ("nqueens".to_owned(), Err("timed out".to_owned())),
            ]
            .into_iter()
            .collect(),
            ..Results::default()
        };
        results.record("getuid", System::Native, Ok(200.0));
        results.record("getuid", System::Btvmm, Ok(10_200.0));
        assert_eq!(results.model_markdown(), "", "no calibration asked for");
        results.calibration = Some(Err("ended with exit status: 2".into()));
        results.compute_model();
        assert!(results.model.is_empty());
        assert!(
            results
                .model_markdown()
                .contains("no time model: btvmm calibrate failed: ended with exit status: 2")
        );
        results.calibration = Some(Ok([("cli/sti emulated".to_owned(), 2000.0)]
            .into_iter()
            .collect()));
        results.compute_model();
        let row = &results.model["getuid"];
        assert_eq!(row.overhead_ns, Some(10_000.0));
        assert!((row.explanation.modelled_ns - 8000.0).abs() < 1e-9);
        assert_eq!(row.explained, Some(0.8));
        assert!(
            !results.model.contains_key("nqueens"),
            "no breakdown, no model"
        );
        let table = results.model_markdown();
        assert!(
            table.contains("| getuid (call) | 10.00 µs | 8.00 µs | 80% | 3.00 µs | 8.00 µs | ? |"),
            "{table}"
        );
        assert!(
            table.contains("?: btvmm calibrate measured no cost for split int3 + pushf"),
            "{table}"
        );
    }

    #[test]
    fn hardware_breakpoints_beside_the_split_view_get_their_ratio() {
        let mut results = Results {
            benchmarks: vec![("getuid".into(), "call".into())],
            systems: vec![System::Btvmm, System::BtvmmHw],
            ..Results::default()
        };
        results.record("getuid", System::Btvmm, Ok(1000.0));
        results.record("getuid", System::BtvmmHw, Ok(2500.0));
        let table = results.markdown();
        assert!(
            table.starts_with(
                "| benchmark | unit | btvmm | btvmm (hw breakpoints) | btvmm/native | btvmm/TCG | hw/split |\n\
                 |---|---|---:|---:|---:|---:|---:|\n"
            ),
            "{table}"
        );
        assert!(table.contains(" | - | - | 2.50 |\n"), "{table}");
        assert_eq!(System::parse("btvmm-hw"), Ok(System::BtvmmHw));
    }

    #[test]
    fn marks_give_each_point_its_counters() {
        let stats = "traps 50\n\
                     counter mark 2: traps=10; trap: #GP=3; time: monitor work (ns)=900\n\
                     counter mark 3: traps=30; trap: #GP=4; time: monitor work (ns)=1900\n\
                     counter mark x: traps=1\n";
        let marks = parse_marks(stats);
        assert_eq!(marks.len(), 2);
        assert_eq!(marks[&2]["trap: #GP"], 3);
        assert_eq!(marks[&3]["time: monitor work (ns)"], 1900);
        let per = per_unit(&marks[&3], &marks[&2], 10);
        assert_eq!(per["traps"], 2.0);
        assert_eq!(per["time: monitor work (ns)"], 100.0);
        assert_eq!(
            parse_counters(stats).get("traps"),
            Some(&50),
            "totals unchanged"
        );
        let runs = [
            [("traps".to_owned(), 1.0)].into_iter().collect(),
            [("traps".to_owned(), 5.0)].into_iter().collect(),
            [("traps".to_owned(), 2.0)].into_iter().collect(),
        ];
        assert_eq!(median_counters(&runs)["traps"], 2.0);
    }
}
