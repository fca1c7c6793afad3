//! `btvmm`: the breakpoint-tracing virtualizer's command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use cfg_planner::ClassifyConfig;
use std::io::Write as _;

use host_loader::report::{PlanRequest, build_report, render_text};
use host_loader::run::RunRequest;

/// Exit status for every error caused by the input or the host.
const EXIT_BAD_INPUT: u8 = 2;
/// Exit status for a bug in btvmm itself.
const EXIT_INTERNAL: i32 = 70;

#[derive(Parser)]
#[command(
    name = "btvmm",
    version,
    about = "Breakpoint-tracing virtualizer for 32-bit x86 guests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a kernel natively under breakpoint tracing: a Linux bzImage
    /// (the 32-bit boot protocol, with an optional initrd) or a Multiboot
    /// kernel, recognised from the file. COM1 is the console on standard
    /// input and output (a terminal is put in raw mode: Ctrl-A x quits,
    /// Ctrl-A Ctrl-A sends Ctrl-A). The run ends with status 0 when the
    /// guest powers off (or resets, with --no-reboot); a write of v to the
    /// debug-exit port 0xf4 ends it with status (v << 1) | 1, as QEMU's
    /// isa-debug-exit does; a VM that had to stop ends with status 2.
    Run {
        /// The kernel: a Linux bzImage (e.g. Debian's vmlinuz-*-686) or a
        /// Multiboot (v1) kernel, ELF32 or a.out kludge.
        #[arg(long)]
        kernel: PathBuf,
        /// The initial RAM disk (Linux).
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// Guest RAM in MiB [default: 256 for Linux, 128 for Multiboot].
        #[arg(long)]
        memory: Option<u32>,
        /// The kernel command line.
        #[arg(long, visible_alias = "cmdline", default_value = "")]
        append: String,
        /// When the guest resets, end the run (status 0) instead of
        /// booting it again.
        #[arg(long)]
        no_reboot: bool,
        /// Print the monitor's counters (traps, emulations, exits) and the
        /// ports the guest probed that no device claims to standard error
        /// at the end.
        #[arg(long)]
        stats: bool,
        /// Trace every trap, emulation and resume of the monitor to
        /// standard error (slow; for debugging guests and btvmm).
        #[arg(long)]
        trace: bool,
        /// World processes kept for guest address spaces (one per CR3,
        /// least recently used replaced): switching back to one of them
        /// finds its shadow mappings in place. 1 keeps one shadow.
        #[arg(long, default_value_t = host_loader::run::DEFAULT_ADDRESS_SPACES,
              value_parser = clap::value_parser!(u8).range(1..=8))]
        address_spaces: u8,
        /// How guest kernel code is traced: `split` runs it from alias
        /// pages with INT3 where the monitor must step in (DESIGN.md 3b),
        /// `hw` with the CPU's 4 hardware breakpoints only.
        #[arg(long, value_enum, default_value_t = BreakpointsArg::Split)]
        breakpoints: BreakpointsArg,
        /// How the monitor runs guest kernel code between the instructions
        /// it must handle: `auto` natively, but interpreting short
        /// stretches after each one it handled; `native` natively, emulating
        /// only what it must; `interpret` interpreting everything the
        /// emulator handles (slow; for testing the emulator).
        #[arg(long, value_parser = parse_exec, default_value = "auto")]
        exec: btvmm_core::ExecMode,
        /// How far `--exec auto` interprets, from this host's costs: a file
        /// `btvmm calibrate --json` wrote. Without it, the settings tuned
        /// on the development host.
        #[arg(long, value_name = "FILE")]
        costs: Option<PathBuf>,
        /// A raw disk image as the ATA disk on the primary IDE channel
        /// (ports 0x1f0-0x1f7, 0x3f6, IRQ 14; Linux's pata_legacy finds
        /// it): `FILE`, or `FILE,readonly`. Writes reach the file before
        /// the guest sees them complete; the image is locked while btvmm
        /// runs.
        #[arg(long, value_name = "FILE[,readonly]", value_parser = host_loader::disk::DiskSpec::parse)]
        disk: Option<host_loader::disk::DiskSpec>,
        /// A 1.44 MB floppy image (1474560 bytes) in drive 0 of the
        /// floppy controller (ports 0x3f0-0x3f5, 0x3f7, IRQ 6, DMA channel
        /// 2; Linux's floppy module finds it as fd0): `FILE`, or
        /// `FILE,readonly` (write-protected). Locked while btvmm runs.
        #[arg(long, value_name = "FILE[,readonly]", value_parser = host_loader::disk::DiskSpec::parse)]
        floppy: Option<host_loader::disk::DiskSpec>,
        /// Where the guest's screen goes: `none`, or `curses`, the VGA's
        /// text screen in this terminal with its colours and cursor, keys
        /// typed going to the guest's AT keyboard, and a status line of
        /// live monitor figures (Ctrl-A m: menu to pause and resume, show
        /// the registers and counters, send Ctrl-Alt-Delete, quit; Ctrl-A
        /// x quits). With `curses` standard input feeds no serial port and
        /// COM1's output goes to --serial FILE or nowhere.
        #[arg(long, value_enum, default_value_t = DisplayArg::None)]
        display: DisplayArg,
        /// COM1's output to this file (created or truncated) instead of
        /// standard output.
        #[arg(long, value_name = "FILE")]
        serial: Option<PathBuf>,
        /// A gdb remote stub (QEMU's spelling): `tcp::PORT` listens on
        /// loopback, `tcp:HOST:PORT` on HOST. Breakpoints cost nothing
        /// until the guest reaches them: nothing is written into its
        /// memory.
        #[arg(long, value_name = "tcp:[HOST]:PORT", value_parser = host_loader::gdb::GdbAddress::parse)]
        gdb: Option<host_loader::gdb::GdbAddress>,
        /// Shorthand for --gdb tcp::1234 (QEMU's -s).
        #[arg(short = 's', conflicts_with = "gdb")]
        gdb_default: bool,
        /// Stop before the guest's first instruction until gdb attaches
        /// and continues (QEMU's -S); needs --gdb or -s.
        #[arg(short = 'S', long)]
        gdb_wait: bool,
        /// For the attacker tests only: the first world writes the address
        /// of a `syscall; ret` in its own code to this guest-physical
        /// address, standing in for an attacker who broke ASLR.
        #[arg(long, hide = true, value_parser = parse_address)]
        test_leak_syscall_gadget: Option<u32>,
        /// For the attacker tests only: the worlds write garbage into the
        /// channel and the pool (from this seed) instead of running the
        /// guest, naming `--test-scribble-victim` as a world.
        #[arg(long, hide = true, requires = "test_scribble_victim")]
        test_scribble: Option<u64>,
        /// See `--test-scribble`.
        #[arg(long, hide = true)]
        test_scribble_victim: Option<i32>,
        /// For the attacker tests only: once confined, btvmm itself tries
        /// this (`file`, `exec`, `kill:PID`, `socket`, `setuid`), standing
        /// in for a btvmm process a guest took over.
        #[arg(long, hide = true, value_parser = host_loader::run::HostEscape::parse)]
        test_host_escape: Option<host_loader::run::HostEscape>,
        /// For measuring the filter's cost only: the btvmm process keeps
        /// its capabilities and runs without its own seccomp filter (the
        /// worlds keep theirs).
        #[arg(long, hide = true)]
        test_no_host_filter: bool,
    },
    /// Measure what each monitor path costs on this host against the bare
    /// host trap(s) it needs, side by side in one run.
    Calibrate {
        /// Events per measurement round (bare) and per guest run.
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
        iterations: u32,
        /// Rounds per measurement; the median is reported.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
        rounds: u32,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Print each generated guest's monitor counters to stderr.
        #[arg(long)]
        stats: bool,
        /// Measure only the btvmm paths whose name contains this text (and
        /// the bare events they need), e.g. to profile one of them.
        #[arg(long)]
        only: Option<String>,
    },
    /// Run the benchmarks natively and in Debian's kernel under btvmm and
    /// QEMU, side by side (scripts/bench prepares the inputs).
    Bench {
        /// Debian's i386 kernel (scripts/fetch-debian-kernel).
        #[arg(long)]
        kernel: PathBuf,
        /// The initramfs holding /bin/bench (scripts/make-initramfs --add).
        #[arg(long)]
        initrd: PathBuf,
        /// The bench program (guests/linux/bench.c) for the native runs.
        #[arg(long)]
        program: PathBuf,
        /// busybox for the native gzip run.
        #[arg(long)]
        busybox: PathBuf,
        /// Only these benchmarks (comma-separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Runs of each benchmark on each system.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
        runs: u32,
        /// Systems (comma-separated): native, btvmm (the split view),
        /// btvmm-hw (hardware breakpoints only, the dissertation's
        /// mechanism: its Linux boot alone takes about 10 minutes here, so
        /// it is not among the default ones), tcg, kvm.
        #[arg(long, value_delimiter = ',', default_value = "native,btvmm,tcg,kvm",
              value_parser = experiments::results::System::parse)]
        systems: Vec<experiments::results::System>,
        /// Where results.json, results.csv and results.md go.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
        /// Small counts: checks that every benchmark runs everywhere, not
        /// what it costs.
        #[arg(long)]
        quick: bool,
    },
    /// One bare host event measurement (started by `btvmm calibrate`).
    #[command(name = "__bare", hide = true)]
    Bare {
        /// The event's name.
        event: String,
        /// Events per round.
        #[arg(long)]
        iterations: u32,
        /// Rounds.
        #[arg(long)]
        rounds: u32,
    },
    /// The world process (started by `btvmm run`, not by hand).
    #[command(name = "__world", hide = true)]
    World {
        /// Bytes of guest RAM behind descriptor 3.
        #[arg(long)]
        ram_size: usize,
        /// Trace the monitor.
        #[arg(long)]
        trace: bool,
        /// This world's index in the pool of world processes (the pool's
        /// region is on descriptor 5).
        #[arg(long)]
        member: Option<usize>,
        /// Use the split code view (the code aliases are on descriptor 6).
        #[arg(long)]
        split: bool,
        /// See `run --exec`.
        #[arg(long, value_parser = parse_exec, default_value = "auto")]
        exec: btvmm_core::ExecMode,
        /// See `run --test-leak-syscall-gadget`.
        #[arg(long, value_parser = parse_address)]
        leak_syscall_gadget: Option<u32>,
        /// See `run --test-scribble`.
        #[arg(long, requires = "scribble_victim")]
        scribble: Option<u64>,
        /// See `run --test-scribble-victim`.
        #[arg(long)]
        scribble_victim: Option<i32>,
    },
    /// The launcher, which starts world processes (started by `btvmm run`).
    #[command(name = "__launcher", hide = true)]
    Launcher {
        /// The btvmm process it serves (its parent).
        #[arg(long)]
        host: i32,
    },
    /// Report what breakpoint tracing faces in a kernel: instruction and
    /// point-of-interest counts, and the CFG and breakpoint plans from an
    /// entry point.
    Plan {
        /// A Linux bzImage (e.g. Debian's vmlinuz-*-686) or a vmlinux ELF;
        /// with --arch arm an ARM zImage (Debian's vmlinuz-*-armmp).
        kernel: PathBuf,
        /// The kernel's architecture: x86 (32-bit) or arm (ARMv7, ARM and
        /// Thumb-2; symbols from the kernel's own kallsyms).
        #[arg(long, value_enum, default_value_t = ArchArg::X86)]
        arch: ArchArg,
        /// Plan from this guest-virtual address (hex with 0x, or decimal).
        #[arg(long, value_parser = parse_address, conflicts_with = "symbol")]
        at: Option<u32>,
        /// Plan from this code symbol (needs an ELF with symbols or --system-map).
        #[arg(long)]
        symbol: Option<String>,
        /// Take symbols from this System.map.
        #[arg(long, requires = "symbol")]
        system_map: Option<PathBuf>,
        /// Show plans for 1..=N breakpoints.
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u8).range(1..=8))]
        breakpoints: u8,
        /// POI nodes a plan explores at most.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
        explore_limit: u16,
        /// Sensitive instruction forms to list.
        #[arg(long, default_value_t = 20)]
        top: usize,
        /// CFG nodes to list.
        #[arg(long, default_value_t = 40)]
        show_nodes: usize,
        /// Classify as on a host with CPUID faulting enabled (CPUID traps).
        #[arg(long)]
        cpuid_faults: bool,
        /// Classify as with a virtualized TSC (RDTSC/RDTSCP/RDPID sensitive).
        #[arg(long)]
        virtualize_tsc: bool,
        /// Also plan from every function entry (x86: every direct-call
        /// target; arm: every kallsyms function) with this many
        /// breakpoints, and report planner speed and cache size.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=8))]
        all_functions: Option<u8>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `--breakpoints`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BreakpointsArg {
    /// Hardware breakpoints only.
    Hw,
    /// The split code view.
    Split,
}

/// `btvmm plan --arch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ArchArg {
    /// 32-bit x86 (i386): bzImage or ELF.
    X86,
    /// ARMv7 (ARM and Thumb-2): zImage.
    Arm,
}

/// `--display`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DisplayArg {
    /// No screen shown (the VGA is there all the same).
    None,
    /// The text screen in this terminal.
    Curses,
}

/// The world process: attach to what the host passed, build the monitor
/// and enter the guest. Returns only on a set-up error.
/// The world's test-only behaviours (attacker tests).
struct WorldTests {
    /// Write a `syscall; ret` address at this guest-physical address.
    leak_syscall_gadget: Option<u32>,
    /// Scribble over the channel and pool (seed, victim pid).
    scribble: Option<(u64, i32)>,
}

fn world_main(
    ram_size: usize,
    trace: bool,
    member: Option<usize>,
    split: bool,
    exec: btvmm_core::ExecMode,
    tests: &WorldTests,
) -> anyhow::Error {
    use world_switch::spawn::{ALIAS_FD, CHANNEL_FD, POOL_FD, RAM_FD};
    // SAFETY: the host's spawn put the guest RAM and channel memfds on
    // these descriptors for this process alone.
    let mut world =
        match unsafe { world_switch::world::World::attach(RAM_FD, ram_size, CHANNEL_FD) } {
            Ok(world) => world,
            Err(error) => return error.into(),
        };
    if let Some(member) = member {
        // SAFETY: the host's spawn put the pool memfd on this descriptor
        // for this process alone.
        if let Err(error) = unsafe { world.join_pool(POOL_FD, member) } {
            return error.into();
        }
    }
    if split {
        // SAFETY: the host's spawn put the alias memfd on this descriptor
        // for this process alone.
        if let Err(error) = unsafe { world.attach_aliases(ALIAS_FD) } {
            return error.into();
        }
    }
    if let Some((seed, victim)) = tests.scribble {
        let seed = seed.wrapping_add(member.unwrap_or(0) as u64);
        return match world.scribble(seed, victim) {
            Ok(never) => match never {},
            Err(error) => error.into(),
        };
    }
    if let Some(guest_phys) = tests
        .leak_syscall_gadget
        .filter(|_| member.unwrap_or(0) == 0)
    {
        use btvmm_core::PhysMemory;
        // syscall; ret
        let Some(gadget) = world_switch::sys::maps::find_code(&[0x0f, 0x05, 0xc3]) else {
            return anyhow::anyhow!("no syscall; ret in the world's code");
        };
        if world
            .write_phys(btvmm_core::GuestPhys(guest_phys), &gadget.to_le_bytes())
            .is_err()
        {
            return anyhow::anyhow!("--leak-syscall-gadget {guest_phys:#x} lies outside guest RAM");
        }
    }
    let boot = world.channel().boot();
    let boot = guest_monitor::Boot {
        eip: boot.eip,
        gpr: boot.gpr,
        code_selector: boot.code_selector,
        data_selector: boot.data_selector,
        gdt: (boot.gdt_base, boot.gdt_limit),
        wall_clock_ns: i128::from(world.channel().wall_clock_ns()),
        ram_bytes: ram_size as u64,
        floppy_drive_type: boot.floppy_drive_type,
    };
    let mut monitor = match guest_monitor::Monitor::new(boot, world.cpuid_faults()) {
        Ok(monitor) => monitor,
        Err(error) => return error.into(),
    };
    monitor.set_trace(trace);
    monitor.set_split(split);
    monitor.set_exec(exec);
    monitor.set_policy(guest_monitor::policy::Policy::from_words(
        world.channel().policy(),
    ));
    monitor.set_host_fast_path(world.host_fast_path());
    match world.run(move |trap, registers, world| monitor.handle(trap, registers, world)) {
        Ok(never) => match never {},
        Err(error) => error.into(),
    }
}

/// The interpretation policy for the costs in `path` (`btvmm calibrate
/// --json`'s output).
fn policy_from_costs(path: &Path) -> anyhow::Result<guest_monitor::policy::Policy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the costs in {}", path.display()))?;
    let costs = experiments::model::parse_costs(&text)
        .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
    let cost = |name: &str| {
        costs.get(name).copied().with_context(|| {
            format!(
                "{}: calibrate's JSON has no {name:?} path (measure it with `btvmm calibrate --json`)",
                path.display()
            )
        })
    };
    let costs = guest_monitor::policy::Costs {
        split_trap_ns: cost("split int3 + pushf")?,
        hw_trap_ns: cost("hw breakpoint + pushf + re-plan")?,
        interpreted_ns: cost("instruction interpreted")?,
    };
    guest_monitor::policy::Policy::from_costs(&costs)
        .with_context(|| format!("the costs in {}", path.display()))
}

/// `btvmm plan`'s output: the report as JSON or as text.
fn print_report<R: serde::Serialize>(
    report: &R,
    json: bool,
    text: impl FnOnce(&R) -> String,
) -> anyhow::Result<()> {
    if json {
        let encoded = serde_json::to_string_pretty(report).context("encoding the report")?;
        println!("{encoded}");
    } else {
        print!("{}", text(report));
    }
    Ok(())
}

fn parse_exec(text: &str) -> Result<btvmm_core::ExecMode, String> {
    btvmm_core::ExecMode::from_name(text)
        .ok_or_else(|| format!("{text:?} is not one of auto, native, interpret"))
}

fn parse_address(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(&hex.replace('_', ""), 16),
        None => text.replace('_', "").parse(),
    };
    parsed.map_err(|_| format!("{text:?} is not a 32-bit address"))
}

fn main() -> ExitCode {
    // A panic is a bug in btvmm; report it in one line, never as a trace.
    std::panic::set_hook(Box::new(|info| {
        host_loader::console::restore_terminal();
        host_loader::display::restore_terminal();
        eprintln!("btvmm: internal error: {info}");
        std::process::exit(EXIT_INTERNAL);
    }));
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            host_loader::console::restore_terminal();
            eprintln!("btvmm: error: {error:#}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            kernel,
            initrd,
            memory,
            append,
            no_reboot,
            stats,
            trace,
            address_spaces,
            breakpoints,
            exec,
            costs,
            disk,
            floppy,
            display,
            serial,
            gdb,
            gdb_default,
            gdb_wait,
            test_leak_syscall_gadget,
            test_scribble,
            test_scribble_victim,
            test_host_escape,
            test_no_host_filter,
        } => {
            let policy = match &costs {
                Some(path) => policy_from_costs(path)?,
                None => guest_monitor::policy::Policy::TUNED,
            };

            // SAFETY: nothing of this process owns a descriptor above
            // standard error yet (argument parsing opens none).
            unsafe { world_switch::sys::host_filter::close_inherited_descriptors() }?;
            if test_no_host_filter {
                eprintln!("btvmm: warning: the btvmm process runs without its own seccomp filter");
            }
            let request = RunRequest {
                kernel,
                initrd,
                memory_mib: memory,
                cmdline: append,
                no_reboot,
                stats,
                trace,
                address_spaces: usize::from(address_spaces),
                console_input: true,
                breakpoints: match breakpoints {
                    BreakpointsArg::Hw => host_loader::run::Breakpoints::Hardware,
                    BreakpointsArg::Split => host_loader::run::Breakpoints::Split,
                },
                exec,
                policy,
                disk,
                floppy,
                display: match display {
                    DisplayArg::None => host_loader::run::DisplayMode::None,
                    DisplayArg::Curses => host_loader::run::DisplayMode::Curses,
                },
                serial,
                gdb: if gdb_default {
                    Some(
                        host_loader::gdb::GdbAddress::parse(host_loader::gdb::GdbAddress::DEFAULT)
                            .map_err(anyhow::Error::msg)?,
                    )
                } else {
                    gdb
                },
                gdb_wait,
                leak_syscall_gadget: test_leak_syscall_gadget,
                scribble: test_scribble.zip(test_scribble_victim),
                host_escape: test_host_escape,
                confine_host: !test_no_host_filter,
            };
            let started = std::time::Instant::now();
            let outcome = host_loader::run::run(&request, std::io::stdout());
            let wall_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            host_loader::console::restore_terminal();
            host_loader::display::restore_terminal();
            let outcome = outcome?;
            let _ = std::io::stdout().flush();
            if request.stats {
                for line in outcome.counters.summary(wall_ns) {
                    eprintln!("{line}");
                }
                let from = costs.as_ref().map_or_else(
                    || "tuned on the development host".to_owned(),
                    |path| format!("from {}", path.display()),
                );
                eprintln!("policy ({from}): {policy}");
                for (name, value) in outcome.counters.report() {
                    eprintln!("{name:<40} {value:>12}");
                }
                // One line per mark (the guest program's own points, see
                // devices::counter_mark), every counter as NAME=VALUE.
                for (mark, counters) in &outcome.marks {
                    let fields: Vec<String> = counters
                        .report()
                        .into_iter()
                        .map(|(name, value)| format!("{name}={value}"))
                        .collect();
                    eprintln!("counter mark {mark}: {}", fields.join("; "));
                }
                if outcome.marks.len() == host_loader::run::MARKS_KEPT {
                    eprintln!(
                        "counter marks: only the first {} were kept",
                        host_loader::run::MARKS_KEPT
                    );
                }
                for (member, memory) in outcome.worlds.iter().enumerate() {
                    eprintln!(
                        "world {member}: page tables {} KiB, private {} KiB, shared {} KiB, {} mappings",
                        memory.page_tables_kib,
                        memory.anonymous_kib,
                        memory.shared_kib,
                        memory.mappings
                    );
                }
                for (port, reads, writes) in &outcome.unclaimed_ports {
                    eprintln!(
                        "unclaimed port {port:#06x}: {reads} reads, {writes} writes (floating: all ones)"
                    );
                }
                if outcome.resets > 0 {
                    eprintln!("guest resets: {}", outcome.resets);
                }
            }
            if let Some(message) = outcome.message() {
                eprintln!("btvmm: {message}");
            }
            std::process::exit(outcome.exit_status());
        }
        Command::Calibrate {
            iterations,
            rounds,
            json,
            stats,
            only,
        } => {
            let calibration =
                experiments::calibrate::calibrate(&experiments::calibrate::CalibrateRequest {
                    btvmm: std::env::current_exe()?,
                    iterations,
                    rounds,
                    stats,
                    only,
                })?;
            if json {
                let text =
                    serde_json::to_string_pretty(&calibration).context("encoding the table")?;
                println!("{text}");
            } else {
                print!("{}", experiments::calibrate::render_text(&calibration));
            }
            Ok(())
        }
        Command::Bare {
            event,
            iterations,
            rounds,
        } => {
            let event = experiments::bare::BareEvent::from_name(&event)
                .with_context(|| format!("no bare event named {event:?}"))?;
            let measurement = experiments::bare::measure(event, iterations, rounds)?;
            println!("{}", experiments::calibrate::bare_line(&measurement));
            Ok(())
        }
        Command::World {
            ram_size,
            trace,
            member,
            split,
            exec,
            leak_syscall_gadget,
            scribble,
            scribble_victim,
        } => {
            let tests = WorldTests {
                leak_syscall_gadget,
                scribble: scribble.zip(scribble_victim),
            };
            let error = world_main(ram_size, trace, member, split, exec, &tests);
            anyhow::bail!("world process: {error}");
        }
        Command::Launcher { host } => world_switch::launcher::serve(host),
        Command::Bench {
            kernel,
            initrd,
            program,
            busybox,
            only,
            runs,
            systems,
            out,
            quick,
        } => {
            let request = experiments::bench::BenchRequest {
                btvmm: std::env::current_exe()?,
                kernel,
                initrd,
                program,
                busybox,
                only,
                runs,
                systems,
                out: out.clone(),
                quick,
                memory_mib: host_loader::run::DEFAULT_LINUX_MEMORY_MIB,
            };
            let results = experiments::bench::run(&request)?;
            print!("{}", results.markdown());
            if !results.breakdown.is_empty() {
                println!("\nbtvmm's monitor counters per unit:\n");
                print!("{}", results.breakdown_markdown());
            }
            if results.calibration.is_some() {
                println!("\nthe time model (counts at btvmm calibrate's costs, per unit):\n");
                print!("{}", results.model_markdown());
            }
            println!(
                "\nresults: {} (results.json, results.csv, results.md, calibration.json, \
                 times.svg, slowdown.svg)",
                out.display()
            );
            Ok(())
        }
        Command::Plan {
            kernel,
            arch,
            at,
            symbol,
            system_map,
            breakpoints,
            explore_limit,
            top,
            show_nodes,
            cpuid_faults,
            virtualize_tsc,
            all_functions,
            json,
        } => {
            let max_breakpoints = usize::from(breakpoints);
            let explore_limit = usize::from(explore_limit);
            let all_functions = all_functions.map(usize::from);
            match arch {
                ArchArg::Arm => {
                    if system_map.is_some() || cpuid_faults || virtualize_tsc {
                        anyhow::bail!(
                            "--system-map, --cpuid-faults and --virtualize-tsc are x86 options (not with --arch arm)"
                        );
                    }
                    let request = host_loader::report_arm::ArmPlanRequest {
                        kernel,
                        at,
                        symbol,
                        max_breakpoints,
                        explore_limit,
                        top,
                        show_nodes,
                        all_functions,
                    };
                    let report = host_loader::report_arm::build_arm_report(&request)?;
                    print_report(&report, json, host_loader::report_arm::render_arm_text)
                }
                ArchArg::X86 => {
                    let request = PlanRequest {
                        kernel,
                        at,
                        symbol,
                        system_map,
                        max_breakpoints,
                        explore_limit,
                        top,
                        show_nodes,
                        classify: ClassifyConfig {
                            cpuid_faults,
                            virtualize_timestamp: virtualize_tsc,
                            ..ClassifyConfig::default()
                        },
                        all_functions,
                    };
                    print_report(&build_report(&request)?, json, render_text)
                }
            }
        }
    }
}
