//! `btvmm bench`: the benchmarks of `guests/linux/bench.c` natively and in
//! Debian's kernel under btvmm, QEMU TCG and QEMU KVM, side by side.
//!
//! Every system runs the same static i386 program with the same counts.
//! Native: the program on the host, pinned to one CPU (`taskset`). The
//! virtual machines: one boot per run of the same kernel and initramfs
//! (256 MiB, one CPU, `console=ttyS0 quiet`), whose /init runs the
//! benchmarks named by `benchmarks=` on the kernel command line and powers
//! off (guests/linux/init). The boot is a benchmark of its own: a boot
//! with no benchmark (`benchmarks=none`), timed to /init's first line and
//! to the end of the VM's process after /init powered off. `btvmm
//! calibrate` runs once in the same run for the time model
//! ([`crate::model`]). Every run has a timeout.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::ExperimentsError;
use crate::model::parse_costs;
use crate::results::{
    Breakdown, Line, Results, System, median_counters, parse_line, parse_marks, per_unit,
};

/// A benchmark of `bench.c` and its counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Benchmark {
    /// Its name (bench.c's).
    pub name: &'static str,
    /// What one repetition is.
    pub unit: &'static str,
    /// Repetitions in a full run.
    pub count: u32,
    /// Repetitions in a quick run.
    pub quick_count: u32,
}

/// The benchmarks, in table order.
pub const BENCHMARKS: [Benchmark; 10] = [
    Benchmark {
        name: "getuid",
        unit: "call",
        count: 100_000,
        quick_count: 100,
    },
    Benchmark {
        name: "getuid-int80",
        unit: "call",
        count: 100_000,
        quick_count: 100,
    },
    Benchmark {
        name: "fork-exec",
        unit: "process",
        count: 100,
        quick_count: 2,
    },
    Benchmark {
        name: "pipe-switch",
        unit: "round-trip",
        count: 10_000,
        quick_count: 20,
    },
    Benchmark {
        name: "thread-switch",
        unit: "round-trip",
        count: 10_000,
        quick_count: 20,
    },
    Benchmark {
        name: "sigsegv",
        unit: "fault",
        count: 10_000,
        quick_count: 20,
    },
    Benchmark {
        name: "mmap",
        unit: "MiB",
        count: 100,
        quick_count: 2,
    },
    Benchmark {
        name: "nqueens",
        unit: "solve",
        count: 200,
        quick_count: 2,
    },
    Benchmark {
        name: "gzip",
        unit: "MiB",
        count: 3,
        quick_count: 1,
    },
    Benchmark {
        name: "compile",
        unit: "pass",
        count: 20,
        quick_count: 1,
    },
];

/// The boot benchmark's first row: host wall time from start to /init's
/// first line.
pub const BOOT: &str = "boot to /init";
/// Its second row: host wall time from start until the VM's process ended
/// after /init's `poweroff -f`.
pub const BOOT_END: &str = "boot and power-off";
/// What a boot-benchmark run passes to /init: nothing to run.
const NO_BENCHMARKS: &str = "benchmarks=none";

/// The kernel command line every virtual machine boots with, before
/// `benchmarks=`.
pub const APPEND: &str = "console=ttyS0 quiet panic=-1";

/// What `btvmm bench` was asked.
#[derive(Clone, Debug)]
pub struct BenchRequest {
    /// btvmm itself.
    pub btvmm: PathBuf,
    /// Debian's i386 kernel.
    pub kernel: PathBuf,
    /// The initramfs with /bin/bench (scripts/make-initramfs --add).
    pub initrd: PathBuf,
    /// The same bench program for the native runs.
    pub program: PathBuf,
    /// A busybox for the native gzip run.
    pub busybox: PathBuf,
    /// Benchmarks to run (empty: all).
    pub only: Vec<String>,
    /// Runs of each.
    pub runs: u32,
    /// Systems to run on.
    pub systems: Vec<System>,
    /// Where the results go.
    pub out: PathBuf,
    /// Small counts (checks that everything runs, not what it costs).
    pub quick: bool,
    /// Guest RAM, MiB.
    pub memory_mib: u32,
}

/// The timeout of `btvmm calibrate`.
const CALIBRATE_TIMEOUT: Duration = Duration::from_secs(900);

/// The timeout of one native benchmark run.
const NATIVE_TIMEOUT: Duration = Duration::from_secs(300);
/// The timeout of one boot with its benchmarks.
const BOOT_TIMEOUT: Duration = Duration::from_secs(1200);
/// The line /init prints before the benchmarks.
const BANNER: &str = "btvmm guest: benchmarks";

impl BenchRequest {
    fn benchmarks(&self) -> Result<Vec<Benchmark>, ExperimentsError> {
        for name in &self.only {
            if !BENCHMARKS.iter().any(|benchmark| benchmark.name == name) {
                return Err(ExperimentsError::Option(format!(
                    "unknown benchmark {name:?} (one of: {})",
                    BENCHMARKS.map(|benchmark| benchmark.name).join(", ")
                )));
            }
        }
        Ok(BENCHMARKS
            .into_iter()
            .filter(|benchmark| {
                self.only.is_empty() || self.only.iter().any(|n| n == benchmark.name)
            })
            .collect())
    }

    fn count(&self, benchmark: &Benchmark) -> u32 {
        if self.quick {
            benchmark.quick_count
        } else {
            benchmark.count
        }
    }

    /// `benchmarks=name:count,...` for the kernel command line.
    fn kernel_argument(&self, benchmarks: &[Benchmark]) -> String {
        let list: Vec<String> = benchmarks
            .iter()
            .map(|benchmark| format!("{}:{}", benchmark.name, self.count(benchmark)))
            .collect();
        format!("benchmarks={}", list.join(","))
    }

    /// `btvmm calibrate --json`: the full measurement, or a short one
    /// that only checks it runs.
    fn calibrate_command(&self) -> Command {
        let mut command = Command::new(&self.btvmm);
        command.args(["calibrate", "--json"]);
        if self.quick {
            command.args(["--iterations", "200", "--rounds", "1"]);
        }
        command
    }

    /// `system` booting with `argument` (`benchmarks=...`).
    fn vm_command(&self, system: System, argument: &str) -> Command {
        let append = format!("{APPEND} {argument}");
        let memory = self.memory_mib.to_string();
        match system {
            System::Btvmm | System::BtvmmHw => {
                let mut command = Command::new(&self.btvmm);
                // --stats: the counters at the benchmarks' marks.
                command.args(["run", "--stats"]);
                if system == System::BtvmmHw {
                    command.args(["--breakpoints", "hw"]);
                }
                command
                    .arg("--kernel")
                    .arg(&self.kernel)
                    .arg("--initrd")
                    .arg(&self.initrd)
                    .args(["--memory", &memory, "--append", &append]);
                command
            }
            _ => {
                let accel = if system == System::Kvm { "kvm" } else { "tcg" };
                let cpu = if system == System::Kvm { "host" } else { "max" };
                let mut command = Command::new("qemu-system-i386");
                command
                    .args(["-accel", accel, "-cpu", cpu, "-m", &memory, "-smp", "1"])
                    .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
                    .args(["-net", "none", "-no-reboot", "-kernel"])
                    .arg(&self.kernel)
                    .arg("-initrd")
                    .arg(&self.initrd)
                    .args(["-append", &append]);
                command
            }
        }
    }
}

/// What one boot gave: the result lines and the time to /init.
struct Boot {
    lines: Vec<Line>,
    /// Standard output, whole.
    stdout: String,
    to_init: Option<Duration>,
    /// When the process ended (None: it did not end by itself).
    ended: Option<Duration>,
    failure: Option<String>,
    /// Standard error (btvmm's --stats).
    stderr: String,
}

/// Runs `command`, collecting its standard output's lines as they come,
/// the time the banner appeared, until it ends or `timeout` passes.
fn run_collecting(mut command: Command, timeout: Duration) -> Boot {
    let start = Instant::now();
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            return Boot {
                lines: Vec::new(),
                stdout: String::new(),
                to_init: None,
                ended: None,
                failure: Some(format!("cannot start: {error}")),
                stderr: String::new(),
            };
        }
    };
    let (sender, receiver) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            // Bytes, not UTF-8 lines: a console can carry anything, and
            // one stray byte must not end the reading.
            let mut reader = BufReader::new(stdout);
            let mut bytes = Vec::new();
            while matches!(reader.read_until(b'\n', &mut bytes), Ok(read) if read > 0) {
                let line = String::from_utf8_lossy(&bytes).trim_end().to_owned();
                bytes.clear();
                if sender.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
    }
    let stderr = child.stderr.take().map(|stderr| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
            text
        })
    });
    let mut lines = Vec::new();
    let mut stdout = String::new();
    let mut to_init = None;
    let mut ended = None;
    let mut status = None;
    let mut timed_out = false;
    let mut take = |at: Instant, line: String| {
        if to_init.is_none() && line.contains(BANNER) {
            to_init = Some(at.duration_since(start));
        }
        lines.extend(parse_line(&line));
        stdout.push_str(&line);
        stdout.push('\n');
    };
    loop {
        while let Ok((at, line)) = receiver.try_recv() {
            take(at, line);
        }
        if status.is_some() {
            break;
        }
        match child.try_wait() {
            Ok(Some(exit)) => {
                ended = Some(start.elapsed());
                status = Some(exit);
                // The rest of the output, until the pipe closes (a process
                // the child left holding it gets two seconds).
                while let Ok((at, line)) = receiver.recv_timeout(Duration::from_secs(2)) {
                    take(at, line);
                }
                continue;
            }
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                status = child.wait().ok();
                timed_out = true;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(error) => {
                return Boot {
                    lines,
                    stdout,
                    to_init,
                    ended: None,
                    failure: Some(format!("cannot be waited for: {error}")),
                    stderr: String::new(),
                };
            }
        }
    }
    let stderr = stderr
        .and_then(|thread| thread.join().ok())
        .unwrap_or_default();
    let failure = if timed_out {
        Some(format!("timed out after {} s", timeout.as_secs()))
    } else {
        match status {
            Some(exit) if exit.success() => None,
            other => Some(format!(
                "ended with {}: {}",
                other.map_or_else(|| "no status".to_owned(), |exit| exit.to_string()),
                // btvmm's own message, not the --stats lines around it.
                stderr
                    .lines()
                    .find(|line| line.starts_with("btvmm:"))
                    .or_else(|| stderr.lines().find(|line| !line.trim().is_empty()))
                    .unwrap_or("")
                    .trim()
            )),
        }
    };
    Boot {
        lines,
        stdout,
        to_init,
        ended,
        failure,
        stderr,
    }
}

/// The first line of `program --version`, or why there is none.
fn version_of(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("{program}: not available"))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default()
}

fn check_input(what: &'static str, path: &Path) -> Result<(), ExperimentsError> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|source| ExperimentsError::Input {
            what,
            path: path.to_owned(),
            source,
        })
}

/// Runs the benchmarks and writes `results.json`, `results.csv`,
/// `results.md`, `times.svg` and `slowdown.svg` into the request's output
/// directory.
pub fn run(request: &BenchRequest) -> Result<Results, ExperimentsError> {
    let benchmarks = request.benchmarks()?;
    if request.runs == 0 {
        return Err(ExperimentsError::Option("--runs must be at least 1".into()));
    }
    check_input("btvmm", &request.btvmm)?;
    check_input("kernel", &request.kernel)?;
    check_input("initramfs", &request.initrd)?;
    check_input("benchmark program", &request.program)?;
    check_input("busybox", &request.busybox)?;
    let vms = request
        .systems
        .iter()
        .any(|&system| system != System::Native);
    let mut results = Results {
        benchmarks: benchmarks
            .iter()
            .map(|benchmark| (benchmark.name.to_owned(), benchmark.unit.to_owned()))
            .chain(
                [BOOT, BOOT_END]
                    .into_iter()
                    .filter(|_| vms)
                    .map(|row| (row.to_owned(), "boot".to_owned())),
            )
            .collect(),
        systems: request.systems.clone(),
        ..Results::default()
    };
    let environment = &mut results.environment;
    environment.insert(
        "btvmm".into(),
        version_of(&request.btvmm.to_string_lossy(), &["--version"]),
    );
    environment.insert(
        "qemu".into(),
        version_of("qemu-system-i386", &["--version"]),
    );
    // scripts/bench says which commit it built.
    if let Ok(commit) = std::env::var("BTVMM_COMMIT") {
        environment.insert("btvmm commit".into(), commit);
    }
    environment.insert("host kernel".into(), version_of("uname", &["-r"]));
    environment.insert("cpu".into(), cpu_model());
    environment.insert("kernel".into(), request.kernel.display().to_string());
    environment.insert("initramfs".into(), request.initrd.display().to_string());
    environment.insert(
        "busybox".into(),
        version_of(&request.busybox.to_string_lossy(), &[]),
    );
    environment.insert(
        "guest command line".into(),
        format!("{APPEND} {}", request.kernel_argument(&benchmarks)),
    );
    environment.insert("runs".into(), request.runs.to_string());
    environment.insert("quick".into(), request.quick.to_string());
    let btvmm = request.systems.contains(&System::Btvmm);
    let steps: u64 = request
        .systems
        .iter()
        .map(|&system| {
            if system == System::Native {
                benchmarks.len() as u64
            } else {
                // The benchmarks' boot and the boot benchmark's.
                2
            }
        })
        .sum::<u64>()
        * u64::from(request.runs)
        // calibrate.
        + u64::from(btvmm);
    let progress = ProgressBar::new(steps);
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // btvmm's counters per unit, by benchmark, one entry per run.
    let mut marked: BTreeMap<&str, Vec<Breakdown>> = BTreeMap::new();
    // The CPU native runs are pinned to: the last one.
    let cpu = std::thread::available_parallelism().map_or(0, |count| count.get() - 1);
    for run in 1..=request.runs {
        for &system in &request.systems {
            if system == System::Native {
                for benchmark in &benchmarks {
                    progress.set_message(format!(
                        "run {run}/{}: native {}",
                        request.runs, benchmark.name
                    ));
                    let mut command = Command::new("taskset");
                    command
                        .args(["-c", &cpu.to_string()])
                        .arg(&request.program)
                        .args([benchmark.name, &request.count(benchmark).to_string()])
                        .env("BUSYBOX", &request.busybox);
                    let mut outcome = run_collecting(command, NATIVE_TIMEOUT);
                    keep_log(
                        &request.out,
                        &format!("native-{}-run{run}", benchmark.name),
                        &mut outcome,
                    );
                    record_lines(&mut results, system, &[*benchmark], &outcome);
                    progress.inc(1);
                }
                continue;
            }
            progress.set_message(format!(
                "run {run}/{}: {} benchmarks",
                request.runs,
                system.title()
            ));
            let mut outcome = run_collecting(
                request.vm_command(system, &request.kernel_argument(&benchmarks)),
                BOOT_TIMEOUT,
            );
            keep_log(
                &request.out,
                &format!("{}-benchmarks-run{run}", system.name()),
                &mut outcome,
            );
            record_lines(&mut results, system, &benchmarks, &outcome);
            if system == System::Btvmm {
                for (name, counters) in marked_counters(&outcome, &benchmarks) {
                    marked.entry(name).or_default().push(counters);
                }
            }
            progress.inc(1);
            progress.set_message(format!(
                "run {run}/{}: {} boot",
                request.runs,
                system.title()
            ));
            let mut boot = run_collecting(request.vm_command(system, NO_BENCHMARKS), BOOT_TIMEOUT);
            keep_log(
                &request.out,
                &format!("{}-boot-run{run}", system.name()),
                &mut boot,
            );
            let (to_init, to_end) = boot_times(&boot);
            results.record(BOOT, system, to_init);
            results.record(BOOT_END, system, to_end);
            progress.inc(1);
        }
    }
    if btvmm {
        progress.set_message("btvmm calibrate (for the time model)");
        let mut calibration = run_collecting(request.calibrate_command(), CALIBRATE_TIMEOUT);
        keep_log(&request.out, "calibrate", &mut calibration);
        progress.inc(1);
        results.calibration = Some(match calibration.failure {
            None => {
                let path = request.out.join("calibration.json");
                let _ = std::fs::create_dir_all(&request.out);
                std::fs::write(&path, &calibration.stdout)
                    .map_err(|source| ExperimentsError::Output { path, source })?;
                parse_costs(&calibration.stdout)
            }
            Some(failure) => Err(failure),
        });
    }
    results.breakdown = marked
        .into_iter()
        .map(|(name, runs)| {
            let counted: Vec<BTreeMap<String, f64>> = runs
                .iter()
                .filter_map(|run| run.as_ref().ok().cloned())
                .collect();
            let breakdown = if counted.is_empty() {
                Err(runs
                    .into_iter()
                    .find_map(Result::err)
                    .unwrap_or_else(|| "no run".to_owned()))
            } else {
                Ok(median_counters(&counted))
            };
            (name.to_owned(), breakdown)
        })
        .collect();
    results.compute_model();
    progress.finish_and_clear();
    write_results(&results, &request.out)?;
    Ok(results)
}

/// The counters per unit of each benchmark in one btvmm boot, from the
/// counter marks its program wrote around its loop (the result line names
/// the first), or why there are none.
fn marked_counters(boot: &Boot, benchmarks: &[Benchmark]) -> Vec<(&'static str, Breakdown)> {
    let marks = parse_marks(&boot.stderr);
    benchmarks
        .iter()
        .map(|benchmark| {
            let line = boot.lines.iter().find_map(|line| match line {
                Line::Result(result) if result.name == benchmark.name => Some(Ok(result)),
                Line::Error { name, error } if name == benchmark.name => Some(Err(error.clone())),
                _ => None,
            });
            let counters = match line {
                None => Err(boot
                    .failure
                    .clone()
                    .unwrap_or_else(|| "no result line".to_owned())),
                Some(Err(error)) => Err(error),
                Some(Ok(result)) => match result.mark {
                    None => Err("the program wrote no counter marks".to_owned()),
                    // The line comes from the guest: its mark may be any
                    // number, the last one included.
                    Some(mark) => {
                        let end = mark.wrapping_add(1);
                        match (marks.get(&mark), marks.get(&end)) {
                            (Some(start), Some(end)) => Ok(per_unit(end, start, result.count)),
                            _ => Err(format!(
                                "btvmm reported no counters at marks {mark} and {end}"
                            )),
                        }
                    }
                },
            };
            (benchmark.name, counters)
        })
        .collect()
}

/// A failed run's whole output goes to `out/logs/NAME.log`, which its
/// failure then names: the one line of the table cannot say everything.
fn keep_log(out: &Path, name: &str, boot: &mut Boot) {
    let Some(failure) = &mut boot.failure else {
        return;
    };
    let logs = out.join("logs");
    let path = logs.join(format!("{name}.log"));
    let text = format!(
        "{failure}\n--- standard output\n{}\n--- standard error\n{}",
        boot.stdout, boot.stderr
    );
    if std::fs::create_dir_all(&logs).is_ok() && std::fs::write(&path, text).is_ok() {
        failure.push_str(&format!(" (log: logs/{name}.log)"));
    }
}

/// The boot benchmark's two times (ns), or why there are none: the end
/// counts only when the VM powered off by itself.
fn boot_times(boot: &Boot) -> (Result<f64, String>, Result<f64, String>) {
    let why = || {
        boot.failure
            .clone()
            .unwrap_or_else(|| "/init never said it started".to_owned())
    };
    let to_init = boot
        .to_init
        .map(|time| time.as_secs_f64() * 1e9)
        .ok_or_else(why);
    let to_end = match (boot.ended, &boot.failure, boot.to_init) {
        (Some(time), None, Some(_)) => Ok(time.as_secs_f64() * 1e9),
        _ => Err(why()),
    };
    (to_init, to_end)
}

/// Files one run's lines under `system`; a benchmark without a line gets
/// the run's failure.
fn record_lines(results: &mut Results, system: System, benchmarks: &[Benchmark], boot: &Boot) {
    for benchmark in benchmarks {
        let line = boot.lines.iter().find(|line| match line {
            Line::Result(result) => result.name == benchmark.name,
            Line::Error { name, .. } => name == benchmark.name,
        });
        let outcome = match line {
            Some(Line::Result(result)) => Ok(result.per_unit_ns()),
            Some(Line::Error { error, .. }) => Err(error.clone()),
            None => Err(boot.failure.clone().unwrap_or_else(|| {
                format!(
                    "no result line (the console's last line: {:?})",
                    boot.stdout.lines().last().unwrap_or_default()
                )
            })),
        };
        results.record(benchmark.name, system, outcome);
    }
}

fn write_results(results: &Results, out: &Path) -> Result<(), ExperimentsError> {
    let write = |name: &str, contents: &str| {
        let path = out.join(name);
        std::fs::write(&path, contents).map_err(|source| ExperimentsError::Output { path, source })
    };
    std::fs::create_dir_all(out).map_err(|source| ExperimentsError::Output {
        path: out.to_owned(),
        source,
    })?;
    let json = serde_json::to_string_pretty(results).unwrap_or_default();
    write("results.json", &json)?;
    write("results.csv", &results.csv())?;
    let mut markdown = results.markdown();
    if !results.breakdown.is_empty() {
        markdown.push_str(
            "\nbtvmm's monitor counters per unit, between the counter marks the program \
             wrote around its loop (median over the runs):\n\n",
        );
        markdown.push_str(&results.breakdown_markdown());
    }
    if results.calibration.is_some() {
        markdown.push_str(
            "\nThe time model: the counts above at btvmm calibrate's costs (calibration.json), \
             per unit, beside btvmm's measured overhead over native:\n\n",
        );
        markdown.push_str(&results.model_markdown());
    }
    markdown.push('\n');
    for (key, value) in &results.environment {
        markdown.push_str(&format!("- {key}: {value}\n"));
    }
    write("results.md", &markdown)?;
    crate::plot::write_plots(results, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> BenchRequest {
        BenchRequest {
            btvmm: "btvmm".into(),
            kernel: "vmlinuz".into(),
            initrd: "initrd".into(),
            program: "bench".into(),
            busybox: "busybox".into(),
            only: vec![],
            runs: 3,
            systems: System::ALL.to_vec(),
            out: "out".into(),
            quick: false,
            memory_mib: 256,
        }
    }

    #[test]
    fn the_guest_gets_every_benchmark_with_its_count() {
        let all = request().benchmarks().expect("all");
        assert_eq!(all.len(), BENCHMARKS.len());
        assert_eq!(
            request().kernel_argument(&all[..2]),
            "benchmarks=getuid:100000,getuid-int80:100000"
        );
        let quick = BenchRequest {
            quick: true,
            only: vec!["nqueens".into()],
            ..request()
        };
        let chosen = quick.benchmarks().expect("one");
        assert_eq!(quick.kernel_argument(&chosen), "benchmarks=nqueens:2");
        let wrong = BenchRequest {
            only: vec!["nope".into()],
            ..request()
        };
        assert!(wrong.benchmarks().is_err());
    }

    #[test]
    fn every_system_boots_the_same_kernel_command_line() {
        let benchmarks = request().benchmarks().expect("all");
        for system in [System::Btvmm, System::Tcg, System::Kvm] {
            let command = request().vm_command(system, &request().kernel_argument(&benchmarks));
            let args: Vec<String> = command
                .get_args()
                .map(|arg| arg.to_string_lossy().into_owned())
                .collect();
            let append = args
                .iter()
                .position(|arg| arg == "--append" || arg == "-append")
                .and_then(|index| args.get(index + 1))
                .expect("a command line");
            assert!(append.starts_with(APPEND), "{system:?}: {append}");
            assert!(
                append.contains("benchmarks=getuid:100000,"),
                "{system:?}: {append}"
            );
            assert!(args.contains(&"256".to_owned()), "{system:?}: {args:?}");
        }
    }

    #[test]
    fn a_missing_line_is_the_runs_failure() {
        let mut results = Results::default();
        let boot = Boot {
            lines: vec![parse_line("bench name=getuid count=10 unit=call ns=100").expect("line")],
            stdout: String::new(),
            to_init: None,
            ended: None,
            failure: Some("timed out after 1200 s".into()),
            stderr: String::new(),
        };
        record_lines(&mut results, System::Tcg, &BENCHMARKS[..2], &boot);
        assert_eq!(
            results
                .cell("getuid", System::Tcg)
                .map(|cell| cell.samples.clone()),
            Some(vec![10.0])
        );
        assert_eq!(
            results
                .cell("getuid-int80", System::Tcg)
                .map(|cell| cell.errors.clone()),
            Some(vec!["timed out after 1200 s".to_owned()])
        );
    }

    #[test]
    fn a_boot_ends_only_when_it_powered_off_after_init() {
        let boot = |to_init: Option<u64>, ended: Option<u64>, failure: Option<&str>| Boot {
            lines: Vec::new(),
            stdout: String::new(),
            to_init: to_init.map(Duration::from_secs),
            ended: ended.map(Duration::from_secs),
            failure: failure.map(str::to_owned),
            stderr: String::new(),
        };
        assert_eq!(
            boot_times(&boot(Some(2), Some(3), None)),
            (Ok(2e9), Ok(3e9))
        );
        assert_eq!(
            boot_times(&boot(
                Some(2),
                Some(3),
                Some("ended with exit status: 2: stopped")
            )),
            (
                Ok(2e9),
                Err("ended with exit status: 2: stopped".to_owned())
            )
        );
        assert_eq!(
            boot_times(&boot(None, Some(1), None)),
            (
                Err("/init never said it started".to_owned()),
                Err("/init never said it started".to_owned())
            )
        );
    }

    #[test]
    fn each_benchmark_gets_the_counters_between_its_own_marks() {
        let lines = [
            "bench name=getuid count=10 unit=call ns=100 per_unit_ns=10.0 mark=2",
            "bench name=getuid-int80 count=10 unit=call ns=100 per_unit_ns=10.0",
            "bench name=fork-exec error=fork:Out of memory",
            "bench name=pipe-switch count=4 unit=round-trip ns=100 per_unit_ns=25.0 mark=8",
            "bench name=thread-switch count=4 unit=round-trip ns=1 per_unit_ns=0.2 mark=4294967295",
        ];
        let boot = Boot {
            lines: lines.iter().filter_map(|line| parse_line(line)).collect(),
            stdout: String::new(),
            to_init: None,
            ended: None,
            failure: None,
            stderr: "counter mark 2: traps=100\ncounter mark 3: traps=150\n\
                     counter mark 8: traps=150\n"
                .into(),
        };
        let counted = marked_counters(&boot, &BENCHMARKS[..5]);
        let names: Vec<&str> = counted.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "getuid",
                "getuid-int80",
                "fork-exec",
                "pipe-switch",
                "thread-switch"
            ]
        );
        assert_eq!(counted[0].1.as_ref().map(|c| c["traps"]), Ok(5.0));
        assert_eq!(
            counted[1].1,
            Err("the program wrote no counter marks".to_owned())
        );
        assert_eq!(counted[2].1, Err("fork:Out of memory".to_owned()));
        assert_eq!(
            counted[3].1,
            Err("btvmm reported no counters at marks 8 and 9".to_owned())
        );
        assert_eq!(
            counted[4].1,
            Err("btvmm reported no counters at marks 4294967295 and 0".to_owned()),
            "the last mark number wraps, it does not overflow"
        );
        assert_eq!(
            marked_counters(&boot, &BENCHMARKS[5..6])[0].1,
            Err("no result line".to_owned())
        );
    }

    #[test]
    fn a_failed_run_leaves_its_whole_output() {
        let out = std::env::temp_dir().join(format!("btvmm-keep-log-{}", std::process::id()));
        let mut boot = Boot {
            lines: Vec::new(),
            stdout: "[ 1.0] kernel line\n".into(),
            to_init: None,
            ended: None,
            failure: Some("ended with exit status: 2: btvmm: stopped".into()),
            stderr: "traps 5\nbtvmm: stopped\n".into(),
        };
        keep_log(&out, "btvmm-benchmarks-run2", &mut boot);
        let log = std::fs::read_to_string(out.join("logs/btvmm-benchmarks-run2.log"));
        let _ = std::fs::remove_dir_all(&out);
        assert_eq!(
            boot.failure.as_deref(),
            Some("ended with exit status: 2: btvmm: stopped (log: logs/btvmm-benchmarks-run2.log)")
        );
        let log = log.expect("the log");
        assert!(
            log.contains("[ 1.0] kernel line") && log.contains("traps 5"),
            "{log}"
        );
        let mut fine = Boot {
            failure: None,
            ..boot
        };
        keep_log(&out, "fine", &mut fine);
        assert!(!out.exists(), "nothing written for a run that worked");
    }
}
