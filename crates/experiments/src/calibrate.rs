//! `btvmm calibrate`: what each monitor path costs on the running host,
//! against the bare host trap(s) it rides on, measured side by side.
//!
//! Bare events run in fresh child processes (`btvmm __bare NAME`, see
//! [`crate::bare`]): they install signal handlers, LDT entries and seccomp
//! filters that must not outlive them. The btvmm paths run as small guest
//! kernels generated here with iced's assembler (no compiler needed), each
//! booted by the real command line, `btvmm run --stats`, in a child. Each
//! guest reads the TSC around a loop of N events and, after the loop (so
//! that it costs nothing inside it), writes its readings to COM1 as one
//! line of text, which the child prints; the loop's own cost (measured by
//! a guest with the same loop and no event) is subtracted.
//!
//! The child's counters say whether a path measures what it claims: each
//! path names the monitor counter of its event, and about one of it must
//! move per event measured ([`PathRow::counted_per_event`]), beyond what
//! the guest without the event moved it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use guest_monitor::counters::Counter;
use iced_x86::IcedError;
use iced_x86::code_asm::{
    CodeAssembler, CodeLabel, al, ax, dword_ptr, dx, eax, ebx, ecx, edi, edx, esi, esp, fword_ptr,
    word_ptr,
};
use serde::Serialize;

use crate::ExperimentsError;
use crate::bare::{BareEvent, median_of_largest};
use crate::results::parse_counters;

/// Where the generated kernels are loaded (guest-physical).
const LOAD: u32 = 0x0010_0000;
/// Readings the guest takes: TSC before (lo, hi), TSC after (lo, hi),
/// events counted by an interrupt handler, gaps recorded.
const RESULTS: u32 = 0x0018_0000;
/// The interrupt guest's gaps: TSC ticks between two readings of its
/// loop, one per interrupt taken.
const GAPS: u32 = 0x001b_0000;
/// Gaps recorded at most.
const GAP_CAPACITY: u32 = 4096;
/// Shorter gaps are not interrupts (a turn of the loop takes tens of ns).
const GAP_THRESHOLD_NS: f64 = 500.0;
/// The pseudo-descriptors for LGDT/LIDT.
const GDTR: u32 = RESULTS + 0x100;
const IDTR: u32 = RESULTS + 0x108;
const GDT: u32 = 0x0018_1000;
const IDT: u32 = 0x0018_2000;
const TSS: u32 = 0x0018_3000;
const KERNEL_STACK: u32 = 0x0019_0000;
const USER_STACK: u32 = 0x001a_0000;
const KERNEL_CS: u32 = 0x08;
const KERNEL_DS: u32 = 0x10;
const USER_CS: u32 = 0x1b;
const USER_DS: u32 = 0x23;
const TSS_SELECTOR: u32 = 0x28;
/// COM1's transmit register and line status register, and the status
/// bit saying the transmitter takes a byte.
const COM1_THR: u32 = 0x3f8;
const COM1_LSR: u32 = 0x3fd;
const LSR_THR_EMPTY: u32 = 0x20;
/// COM1's scratch register: a port the host's UART serves and nothing
/// else uses.
const COM1_SCRATCH: u32 = 0x3ff;
/// Plain instructions around each event: more than the monitor
/// interprets (guest-monitor's INTERPRET_RUN), so the code after an event
/// runs natively and the next event is a real trap.
const PADDING: usize = 32;
/// Instructions [`GuestPath::Interpret`] has interpreted per iteration:
/// with the STI after them within guest-monitor's INTERPRET_RUN (24), so
/// the monitor interprets the whole stretch from the CLI's trap on.
const INTERPRETED: u32 = 20;
/// Turns of a generated guest's loop before the timed ones.
const WARM_UP: u32 = 16;
/// Guest RAM for the calibration kernels, MiB.
const MEMORY_MIB: u32 = 16;
/// The paging guests' two page directories and page tables: 4 MiB
/// identity pages for the first 16 MiB, and one 4 KiB page at
/// [`TEST_PAGE`] (a different physical page in each).
const PAGE_DIRECTORIES: [(u32, u32, u32); 2] = [
    (0x0018_4000, 0x0018_5000, 0x0020_0000),
    (0x0018_6000, 0x0018_7000, 0x0020_1000),
];
/// The page the paging guests read.
const TEST_PAGE: u32 = 0x4000_0000;
/// An address no page table maps.
const UNMAPPED: u32 = 0x5000_0000;

/// What counts [`GuestPath::AddressSpaceSwitchOneProcess`]'s MOVs to CR3
/// (guest-monitor's "emulated" counter of their instruction class).
const ONE_PROCESS_SWITCH_COUNTER: &str = "emulated control-reg";

/// A monitor path measured through a generated guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestPath {
    /// The loop alone (subtracted from the others).
    Loop,
    /// CLI and STI in guest kernel code under hardware breakpoints: each
    /// faults (#GP), the monitor emulates it, plans and resumes. (The split
    /// view puts an INT3 in their place: [`GuestPath::PushfSplit`] is
    /// that path.)
    CliSti,
    /// PUSHF in guest kernel code under hardware breakpoints
    /// (`--breakpoints hw`): a planned breakpoint hits, the monitor
    /// emulates PUSHF, takes the next plan from its cache and resumes.
    PushfHardware,
    /// PUSHF in guest kernel code in the split view (`--breakpoints
    /// split`): the INT3 the alias page holds in its place traps, the
    /// monitor emulates PUSHF and resumes in the alias.
    PushfSplit,
    /// CLI and STI with nothing between them: the baseline of
    /// [`GuestPath::Interpret`].
    InterpretBase,
    /// CLI, [`INTERPRETED`] plain instructions, STI: the CLI traps and the
    /// monitor interprets the rest of the stretch (guest-monitor's
    /// interpret_run); less [`GuestPath::InterpretBase`], per instruction.
    /// Under hardware breakpoints, where the monitor interprets up to
    /// INTERPRET_RUN instructions ahead (the split view interprets fewer
    /// after an emulated one; an instruction costs the same).
    Interpret,
    /// `int $0x80` in guest user code: seccomp traps it, the monitor
    /// delivers it through the guest IDT to the guest kernel, whose
    /// handler IRETs back.
    SystemCall,
    /// A PIT interrupt into a guest kernel loop: the world's timer kicks,
    /// the monitor injects through the guest IDT, the handler's EOI and
    /// IRET run in the monitor.
    Interrupt,
    /// OUT to COM1's scratch register in guest kernel code: the monitor
    /// emulates it, exits to the host process, whose UART keeps the byte,
    /// and is resumed. (Not port 0x80 or another port of the chipset the
    /// world serves itself.)
    HostExit,
    /// With guest paging on: a read of a page the guest's tables map but
    /// the shadow does not (a hidden fault: walk, mmap), then INVLPG of it
    /// (#GP, emulation, munmap), so that the next read faults again.
    HiddenFault,
    /// With guest paging on: a read of an address the guest's tables do
    /// not map: the host #PF becomes the guest's #PF, delivered through
    /// its IDT; the handler skips the read and IRETs.
    GuestPageFault,
    /// With guest paging on: a guest kernel write to a PTE of a live page
    /// table, whose page the shadow write-protects: #PF, the monitor
    /// emulates the write and updates the shadow.
    PageTableWrite,
    /// With guest paging on: MOV to CR3 alternating between two page
    /// directories that share the kernel's PDEs and differ in the one
    /// mapping the read after each switch uses (past the instructions the
    /// monitor interprets after it, so that it runs natively), each
    /// address space in its own world process of the pool: the vCPU is
    /// handed over, the other process's shadow is still in place.
    AddressSpaceSwitch,
    /// The same with a pool of one: the one shadow keeps the regions whose
    /// PDE is the same (root compare), the other region is unmapped and
    /// the read faults it back in.
    AddressSpaceSwitchOneProcess,
}

impl GuestPath {
    /// The paths measured, in report order.
    pub const MEASURED: [GuestPath; 12] = [
        GuestPath::CliSti,
        GuestPath::PushfHardware,
        GuestPath::PushfSplit,
        GuestPath::Interpret,
        GuestPath::SystemCall,
        GuestPath::Interrupt,
        GuestPath::HostExit,
        GuestPath::HiddenFault,
        GuestPath::GuestPageFault,
        GuestPath::PageTableWrite,
        GuestPath::AddressSpaceSwitch,
        GuestPath::AddressSpaceSwitchOneProcess,
    ];

    /// The path's name in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Loop => "loop",
            Self::CliSti => "cli/sti emulated",
            Self::PushfHardware => "hw breakpoint + pushf + re-plan",
            Self::PushfSplit => "split int3 + pushf",
            Self::InterpretBase => "cli/sti, nothing interpreted",
            Self::Interpret => "instruction interpreted",
            Self::SystemCall => "guest int 0x80 + iret",
            Self::Interrupt => "interrupt injected",
            Self::HostExit => "exit to the host and back",
            Self::HiddenFault => "hidden fault + invlpg",
            Self::GuestPageFault => "guest #PF delivered + iret",
            Self::PageTableWrite => "page-table write emulated",
            Self::AddressSpaceSwitch => "cr3 switch (pool)",
            Self::AddressSpaceSwitchOneProcess => "cr3 switch (one process)",
        }
    }

    /// The bare host events this path cannot do without, with how many of
    /// each.
    fn needs(self) -> &'static [(BareEvent, u32)] {
        match self {
            Self::Loop | Self::InterpretBase | Self::Interpret => &[],
            Self::CliSti => &[(BareEvent::GeneralProtection, 1)],
            Self::PushfHardware => &[(BareEvent::HardwareBreakpoint, 1)],
            Self::PushfSplit => &[(BareEvent::SoftwareBreakpoint, 1)],
            Self::SystemCall => &[(BareEvent::SeccompSigsys, 1)],
            Self::Interrupt => &[(BareEvent::AsyncSignal, 1)],
            // In the split view (btvmm's default) the OUT, the INVLPG and
            // the MOV to CR3 trap through the INT3 of their alias.
            // An exit hands the vCPU to the confined btvmm process and back.
            Self::HostExit => &[
                (BareEvent::SoftwareBreakpoint, 1),
                (BareEvent::FutexHandoffProcessFiltered, 2),
            ],
            Self::HiddenFault => &[
                (BareEvent::PageFaultMap, 1),
                (BareEvent::SoftwareBreakpoint, 1),
            ],
            Self::GuestPageFault | Self::PageTableWrite => &[(BareEvent::PageFault, 1)],
            // The trapping MOV and one handoff to the world process of
            // the other address space.
            Self::AddressSpaceSwitch | Self::AddressSpaceSwitchOneProcess => &[
                (BareEvent::SoftwareBreakpoint, 1),
                (BareEvent::FutexHandoffProcess, 1),
            ],
        }
    }

    /// The `btvmm run --stats` counter that counts the path's event.
    #[must_use]
    pub fn counter(self) -> &'static str {
        let counter = match self {
            Self::Loop | Self::CliSti | Self::InterpretBase => Counter::GeneralProtection,
            Self::PushfHardware => Counter::BreakpointHits,
            Self::PushfSplit => Counter::SplitTraps,
            Self::Interpret => Counter::Interpreted,
            Self::SystemCall => Counter::SystemCalls,
            Self::Interrupt => Counter::InterruptsInjected,
            Self::HostExit => Counter::Exits,
            Self::HiddenFault => Counter::HiddenFaults,
            Self::GuestPageFault => Counter::GuestPageFaults,
            Self::PageTableWrite => Counter::TrackedWrites,
            Self::AddressSpaceSwitch => Counter::AddressSpaceSwitches,
            // A pool of one switches no process: what counts the switch is
            // the monitor's count of emulated MOVs to control registers
            // (per instruction class, so not a Counter of its own).
            Self::AddressSpaceSwitchOneProcess => return ONE_PROCESS_SWITCH_COUNTER,
        };
        counter.name()
    }

    /// The guest without the event, whose time and counters are
    /// subtracted.
    fn baseline(self) -> GuestPath {
        match self {
            Self::Interpret => Self::InterpretBase,
            _ => Self::Loop,
        }
    }

    /// Events per loop iteration.
    fn events_per_iteration(self) -> u32 {
        match self {
            Self::CliSti | Self::AddressSpaceSwitch | Self::AddressSpaceSwitchOneProcess => 2,
            Self::Interpret => INTERPRETED,
            _ => 1,
        }
    }

    /// Whether the path's guest turns paging on.
    fn paging(self) -> bool {
        matches!(
            self,
            Self::HiddenFault
                | Self::GuestPageFault
                | Self::PageTableWrite
                | Self::AddressSpaceSwitch
                | Self::AddressSpaceSwitchOneProcess
        )
    }

    /// `--address-spaces` for the guest, if not btvmm's default.
    fn address_spaces(self) -> Option<u32> {
        match self {
            Self::AddressSpaceSwitchOneProcess => Some(1),
            _ => None,
        }
    }

    /// `--breakpoints` for the guest, if not btvmm's default.
    fn breakpoints(self) -> Option<&'static str> {
        match self {
            Self::CliSti | Self::PushfHardware | Self::InterpretBase | Self::Interpret => {
                Some("hw")
            }
            Self::PushfSplit => Some("split"),
            _ => None,
        }
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct CalibrateRequest {
    /// The btvmm executable, whose `__bare` and `run` commands measure.
    pub btvmm: PathBuf,
    /// Events per bare measurement round and per guest run.
    pub iterations: u32,
    /// Rounds (bare) and runs (guest); the median is reported.
    pub rounds: u32,
    /// Print each generated guest's monitor counters to stderr.
    pub stats: bool,
    /// Only the paths whose name contains this text (and the bare events
    /// they need).
    pub only: Option<String>,
}

/// One bare event's cost.
#[derive(Clone, Debug, Serialize)]
pub struct BareRow {
    /// Stable name.
    pub event: &'static str,
    /// What it is.
    pub description: &'static str,
    /// Nanoseconds per event.
    pub ns: f64,
}

/// One btvmm path's cost against what it needs.
#[derive(Clone, Debug, Serialize)]
pub struct PathRow {
    /// The path.
    pub path: &'static str,
    /// Nanoseconds per event through btvmm.
    pub ns: f64,
    /// The bare events it needs, e.g. "gp + 2 futex-handoff" (empty: none).
    pub needs: String,
    /// Their summed bare cost.
    pub bare_ns: f64,
    /// ns / bare_ns; none when the path needs no bare event.
    pub ratio: Option<f64>,
    /// The `btvmm run --stats` counter that counts the path's event.
    pub counter: &'static str,
    /// How much that counter moved per event measured, beyond the guest
    /// without the event (median of the runs): about 1 when the path
    /// measures what it claims.
    pub counted_per_event: f64,
}

/// The whole calibration.
#[derive(Clone, Debug, Serialize)]
pub struct Calibration {
    /// TSC ticks per nanosecond (measured against CLOCK_MONOTONIC).
    pub tsc_per_ns: f64,
    /// The generated guests' loop, ns per iteration (subtracted).
    pub loop_ns: f64,
    /// Bare host events.
    pub bare: Vec<BareRow>,
    /// btvmm paths.
    pub paths: Vec<PathRow>,
    /// The emulator alone, nanoseconds per instruction on a kernel-like
    /// mix over flat memory (`btvmm_core::emu::speed`; median of the
    /// rounds): what "instruction interpreted" costs without the monitor.
    pub emulator_ns: f64,
    /// The fast interpreter alone on the same mix (`btvmm_core::emu::fast`:
    /// blocks decoded once), nanoseconds per instruction.
    pub interpreter_ns: f64,
}

/// Instructions per round of [`Calibration::emulator_ns`].
const EMULATOR_INSTRUCTIONS: u64 = 1_000_000;

/// The emulator alone (see [`Calibration::emulator_ns`]), or with `fast`
/// the fast interpreter ([`Calibration::interpreter_ns`]).
fn emulator_ns(rounds: u32, fast: bool) -> Result<f64, ExperimentsError> {
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let mix = if fast {
            btvmm_core::emu::speed::kernel_like_mix_fast
        } else {
            btvmm_core::emu::speed::kernel_like_mix
        };
        let (ns, _) = mix(EMULATOR_INSTRUCTIONS)
            .map_err(|stop| ExperimentsError::Calibrate(format!("the emulator's loop: {stop}")))?;
        #[allow(clippy::cast_precision_loss)] // a million
        samples.push(ns / EMULATOR_INSTRUCTIONS as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// Runs every measurement.
pub fn calibrate(request: &CalibrateRequest) -> Result<Calibration, ExperimentsError> {
    if request.iterations == 0 || request.rounds == 0 {
        return Err(ExperimentsError::Option(
            "--iterations and --rounds must be at least 1".into(),
        ));
    }
    let tsc_per_ns = crate::bare::tsc_per_ns();
    let measured: Vec<GuestPath> = GuestPath::MEASURED
        .into_iter()
        .filter(|path| {
            request
                .only
                .as_ref()
                .is_none_or(|only| path.name().contains(only.as_str()))
        })
        .collect();
    if measured.is_empty() {
        return Err(ExperimentsError::Option(format!(
            "--only {:?} names no path",
            request.only.as_deref().unwrap_or_default()
        )));
    }
    let mut bare = Vec::new();
    for event in BareEvent::ALL {
        if request.only.is_some()
            && !measured
                .iter()
                .any(|path| path.needs().iter().any(|(needed, _)| *needed == event))
        {
            continue;
        }
        bare.push(BareRow {
            event: event.name(),
            description: event.describe(),
            ns: measure_bare(event, request)?,
        });
    }
    let bare_ns = |event: BareEvent| {
        bare.iter()
            .find(|row| row.event == event.name())
            .map_or(f64::NAN, |row| row.ns)
    };
    let mut baselines = Baselines::default();
    let loop_ns = baselines
        .get(GuestPath::Loop, None, request, tsc_per_ns)?
        .ns;
    let mut paths = Vec::new();
    for path in measured {
        let runs = (0..request.rounds)
            .map(|_| run_path(path, path.breakpoints(), request, tsc_per_ns))
            .collect::<Result<Vec<_>, _>>()?;
        // The guest without the event, traced the same way.
        let baseline = baselines.get(path.baseline(), path.breakpoints(), request, tsc_per_ns)?;
        let count =
            |counters: &BTreeMap<String, u64>| counters.get(path.counter()).copied().unwrap_or(0);
        let counted = |run: &PathRun| {
            let moved = count(&run.counters).saturating_sub(count(&baseline.counters));
            // Counts far below 2^52.
            #[allow(clippy::cast_precision_loss)]
            let per_event = moved as f64 / run.events.max(1) as f64;
            per_event
        };
        let counted_per_event = median(runs.iter().map(counted).collect());
        let ns = if path == GuestPath::Interrupt {
            median(runs.iter().map(|run| run.ns).collect())
        } else {
            let per_iteration = median(runs.iter().map(|run| run.ns).collect());
            (per_iteration - baseline.ns) / f64::from(path.events_per_iteration())
        };
        let needs = path
            .needs()
            .iter()
            .map(|(event, count)| {
                if *count == 1 {
                    event.name().to_owned()
                } else {
                    format!("{count} {}", event.name())
                }
            })
            .collect::<Vec<_>>()
            .join(" + ");
        // Folded from +0: an empty sum of floats is -0.
        let bare_total = path.needs().iter().fold(0.0, |sum, (event, count)| {
            sum + bare_ns(*event) * f64::from(*count)
        });
        paths.push(PathRow {
            path: path.name(),
            ns,
            needs,
            bare_ns: bare_total,
            ratio: (!path.needs().is_empty()).then(|| ns / bare_total),
            counter: path.counter(),
            counted_per_event,
        });
    }
    Ok(Calibration {
        tsc_per_ns,
        loop_ns,
        bare,
        paths,
        emulator_ns: emulator_ns(request.rounds, false)?,
        interpreter_ns: emulator_ns(request.rounds, true)?,
    })
}

/// The guests without an event, each run `rounds` times under a given
/// `--breakpoints` when first needed: the median of their times, and the
/// counters of one run.
#[derive(Default)]
struct Baselines(BTreeMap<(&'static str, Option<&'static str>), PathRun>);

impl Baselines {
    fn get(
        &mut self,
        path: GuestPath,
        breakpoints: Option<&'static str>,
        request: &CalibrateRequest,
        tsc_per_ns: f64,
    ) -> Result<&PathRun, ExperimentsError> {
        let key = (path.name(), breakpoints);
        let run = match self.0.entry(key) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                let mut runs = (0..request.rounds)
                    .map(|_| run_path(path, breakpoints, request, tsc_per_ns))
                    .collect::<Result<Vec<_>, _>>()?;
                let ns = median(runs.iter().map(|run| run.ns).collect());
                let mut run = runs.swap_remove(0);
                run.ns = ns;
                entry.insert(run)
            }
        };
        Ok(run)
    }
}

/// The table.
#[must_use]
pub fn render_text(calibration: &Calibration) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "bare host events (ns per event, median)");
    for row in &calibration.bare {
        let _ = writeln!(
            out,
            "  {:<18} {:>9.0}  {}",
            row.event, row.ns, row.description
        );
    }
    let _ = writeln!(
        out,
        "\nbtvmm paths (ns per event, median; the generated guests' loop, {:.0} ns per iteration, subtracted;\n\
         counted: the path's monitor counter per event, about 1 when it measures what it claims)",
        calibration.loop_ns
    );
    let _ = writeln!(
        out,
        "  {:<32} {:>9} {:>9} {:>6} {:>7}  needs",
        "path", "btvmm", "bare", "ratio", "counted"
    );
    for row in &calibration.paths {
        let ratio = row
            .ratio
            .map_or_else(|| "-".to_owned(), |ratio| format!("{ratio:.2}"));
        let needs = if row.needs.is_empty() {
            "-"
        } else {
            row.needs.as_str()
        };
        let _ = writeln!(
            out,
            "  {:<32} {:>9.0} {:>9.0} {:>6} {:>7.2}  {}",
            row.path, row.ns, row.bare_ns, ratio, row.counted_per_event, needs
        );
    }
    let _ = writeln!(
        out,
        "\nthe emulator alone (flat memory, a kernel-like mix; no monitor): {:.0} ns an instruction, {:.1} M a second",
        calibration.emulator_ns,
        1e3 / calibration.emulator_ns
    );
    let _ = writeln!(
        out,
        "the fast interpreter alone (the same, blocks decoded once): {:.0} ns an instruction, {:.1} M a second",
        calibration.interpreter_ns,
        1e3 / calibration.interpreter_ns
    );
    out
}

/// Runs `btvmm __bare NAME` and reads its nanoseconds, checking that the
/// child saw every event it measured.
fn measure_bare(event: BareEvent, request: &CalibrateRequest) -> Result<f64, ExperimentsError> {
    let output = Command::new(&request.btvmm)
        .args([
            "__bare",
            event.name(),
            "--iterations",
            &request.iterations.to_string(),
            "--rounds",
            &request.rounds.to_string(),
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ExperimentsError::Input {
            what: "the btvmm executable",
            path: request.btvmm.clone(),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(ExperimentsError::Calibrate(format!(
            "measuring {}: {}",
            event.name(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let unexpected = || {
        ExperimentsError::Calibrate(format!(
            "measuring {}: unexpected output {text:?}",
            event.name()
        ))
    };
    let (ns, events) = parse_bare_line(&text).ok_or_else(unexpected)?;
    if event.counted_exactly()
        && events != u64::from(request.iterations) * u64::from(request.rounds)
    {
        return Err(unexpected());
    }
    Ok(ns)
}

/// What `btvmm __bare` prints: one line.
#[must_use]
pub fn bare_line(measurement: &crate::bare::Measurement) -> String {
    format!("ns={} events={}", measurement.ns, measurement.events)
}

/// The nanoseconds and events of a [`bare_line`].
fn parse_bare_line(text: &str) -> Option<(f64, u64)> {
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|field| field.strip_prefix(name)?.strip_prefix('='))
    };
    Some((field("ns")?.parse().ok()?, field("events")?.parse().ok()?))
}

fn median(mut values: Vec<f64>) -> f64 {
    crate::bare::median(&mut values)
}

/// The readings a generated guest reported on COM1.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Readings {
    tsc_start: u64,
    tsc_end: u64,
    events: u32,
    gaps: Vec<u32>,
}

impl Readings {
    /// The guest's line among the console output: `calibrate
    /// tsc_start=0x.. tsc_end=0x.. events=0x.. gaps=..,..,` (hexadecimal).
    fn parse(console: &str) -> Option<Self> {
        let line = console
            .lines()
            .find_map(|line| line.trim_end().strip_prefix("calibrate "))?;
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix(name)?.strip_prefix('='))
        };
        let hex = |name: &str| u64::from_str_radix(field(name)?.strip_prefix("0x")?, 16).ok();
        let gaps = field("gaps")?
            .split(',')
            .filter(|gap| !gap.is_empty())
            .map(|gap| u32::from_str_radix(gap, 16).ok())
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            tsc_start: hex("tsc_start")?,
            tsc_end: hex("tsc_end")?,
            events: u32::try_from(hex("events")?).ok()?,
            gaps,
        })
    }
}

/// One boot of a generated guest: its readings and the child's counters.
struct Boot {
    readings: Readings,
    counters: BTreeMap<String, u64>,
}

/// Boots a generated kernel with `btvmm run --stats` and reads its
/// readings from the console and its counters from standard error.
fn boot(
    image: &[u8],
    path: GuestPath,
    breakpoints: Option<&str>,
    request: &CalibrateRequest,
) -> Result<Boot, ExperimentsError> {
    let what = path.name();
    let kernel = std::env::temp_dir().join(format!(
        "btvmm-calibrate-{}-{}.bin",
        std::process::id(),
        what.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    ));
    std::fs::write(&kernel, image).map_err(|source| ExperimentsError::Output {
        path: kernel.clone(),
        source,
    })?;
    let output = run_child(&kernel, path, breakpoints, request);
    let _ = std::fs::remove_file(&kernel);
    let output = output?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let counters = parse_counters(&stderr);
    if request.stats {
        eprintln!("-- {what}");
        for (name, value) in &counters {
            if *value != 0 {
                eprintln!("   {name:<40} {value:>12}");
            }
        }
    }
    // The debug-exit write of 0: status (0 << 1) | 1.
    if output.status.code() != Some(1) {
        let message = stderr
            .lines()
            .find(|line| line.starts_with("btvmm:"))
            .unwrap_or_default();
        return Err(ExperimentsError::Calibrate(format!(
            "the {what} guest did not finish ({}): {message}",
            output.status
        )));
    }
    let readings = Readings::parse(&stdout).ok_or_else(|| {
        ExperimentsError::Calibrate(format!("the {what} guest reported no readings"))
    })?;
    if readings.tsc_end <= readings.tsc_start {
        return Err(ExperimentsError::Calibrate(format!(
            "the {what} guest left no timing"
        )));
    }
    Ok(Boot { readings, counters })
}

/// `btvmm run --kernel KERNEL --memory 16 --stats` with the path's
/// options and `--breakpoints` (btvmm's default if none).
fn run_child(
    kernel: &Path,
    path: GuestPath,
    breakpoints: Option<&str>,
    request: &CalibrateRequest,
) -> Result<std::process::Output, ExperimentsError> {
    let mut command = Command::new(&request.btvmm);
    command.arg("run").arg("--kernel").arg(kernel).args([
        "--memory",
        &MEMORY_MIB.to_string(),
        "--stats",
    ]);
    if let Some(spaces) = path.address_spaces() {
        command.args(["--address-spaces", &spaces.to_string()]);
    }
    if let Some(breakpoints) = breakpoints {
        command.args(["--breakpoints", breakpoints]);
    }
    command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ExperimentsError::Input {
            what: "the btvmm executable",
            path: request.btvmm.clone(),
            source,
        })
}

/// One run of a path: nanoseconds per loop iteration (per interrupt for
/// [`GuestPath::Interrupt`]), the events it measured, the counters.
struct PathRun {
    ns: f64,
    events: u64,
    counters: BTreeMap<String, u64>,
}

fn run_path(
    path: GuestPath,
    breakpoints: Option<&str>,
    request: &CalibrateRequest,
    tsc_per_ns: f64,
) -> Result<PathRun, ExperimentsError> {
    if path == GuestPath::Interrupt {
        return interrupt_run(request, breakpoints, tsc_per_ns);
    }
    let iterations = request.iterations;
    let image = kernel_image(path, iterations).map_err(asm_error)?;
    let boot = boot(&image, path, breakpoints, request)?;
    let readings = &boot.readings;
    #[allow(clippy::cast_precision_loss)] // ratios of measured values
    let ns = (readings.tsc_end - readings.tsc_start) as f64 / tsc_per_ns / f64::from(iterations);
    Ok(PathRun {
        ns,
        // The counters count the warm-up's events too.
        events: u64::from(iterations + WARM_UP) * u64::from(path.events_per_iteration()),
        counters: boot.counters,
    })
}

/// Turns of the interrupt guest's loop at most (several seconds): a
/// guest that takes no interrupts still ends.
const GAP_LOOP_TURNS: u32 = 200_000_000;
/// PIT divisor for the interrupt guest: about 4 kHz, far apart next to
/// an injection's cost, so each gap is one interrupt.
const PIT_DIVISOR: u16 = 298;

/// Nanoseconds per injected interrupt, measured as the bare signal is
/// (the gap method of [`crate::bare`]): the gaps the guest's timestamping
/// loop saw, from the host timer's interrupt to the guest loop's next
/// instruction, as many of the largest as interrupts were taken.
fn interrupt_run(
    request: &CalibrateRequest,
    breakpoints: Option<&str>,
    tsc_per_ns: f64,
) -> Result<PathRun, ExperimentsError> {
    // Thresholds of a few thousand ticks.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let threshold = (GAP_THRESHOLD_NS * tsc_per_ns).clamp(1.0, f64::from(u32::MAX)) as u32;
    let target = request.iterations.min(GAP_CAPACITY * 3 / 4);
    let image = interrupt_image(threshold, target).map_err(asm_error)?;
    let boot = boot(&image, GuestPath::Interrupt, breakpoints, request)?;
    let readings = boot.readings;
    if readings.events == 0 || readings.gaps.is_empty() {
        return Err(ExperimentsError::Calibrate(
            "the interrupt guest took no interrupts".into(),
        ));
    }
    let mut gaps: Vec<f64> = readings
        .gaps
        .iter()
        .map(|ticks| f64::from(*ticks) / tsc_per_ns)
        .collect();
    Ok(PathRun {
        ns: median_of_largest(&mut gaps, readings.events as usize),
        events: u64::from(readings.events),
        counters: boot.counters,
    })
}

fn asm_error(error: IcedError) -> ExperimentsError {
    ExperimentsError::Calibrate(format!("assembling a calibration guest: {error}"))
}

/// Addresses of labels, known after a first assembly (the second one
/// embeds them as 32-bit immediates, so no instruction changes size).
#[derive(Clone, Copy, Debug, Default)]
struct Labels {
    reload_cs: u32,
    handler: u32,
    finish_handler: u32,
    user: u32,
}

/// Assembles `emit` twice at the code address: the first pass finds the
/// labels, the second embeds them.
fn assemble(
    emit: impl Fn(&mut CodeAssembler, &Labels, &mut Named) -> Result<(), IcedError>,
) -> Result<Vec<u8>, IcedError> {
    const CODE: u32 = LOAD + 32;
    let mut labels = Labels::default();
    for pass in 0..2 {
        let mut asm = CodeAssembler::new(32)?;
        let mut named = Named::new(&mut asm);
        emit(&mut asm, &labels, &mut named)?;
        let result = asm.assemble_options(
            u64::from(CODE),
            iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
        )?;
        if pass == 1 {
            return Ok(crate::image::aout_kludge_image(
                LOAD,
                &result.inner.code_buffer,
                CODE,
            ));
        }
        let ip = |label: &CodeLabel| -> Result<u32, IcedError> {
            // Guest code lies below 4 GiB.
            #[allow(clippy::cast_possible_truncation)]
            Ok(result.label_ip(label)? as u32)
        };
        labels = Labels {
            reload_cs: ip(&named.reload_cs)?,
            handler: ip(&named.handler)?,
            finish_handler: ip(&named.finish_handler)?,
            user: ip(&named.user)?,
        };
    }
    unreachable!("the second pass returns")
}

/// The labels every generated kernel defines (unused ones still get an
/// address: they are set at the end), and its serial report's routines.
struct Named {
    reload_cs: CodeLabel,
    handler: CodeLabel,
    finish_handler: CodeLabel,
    user: CodeLabel,
    set: [bool; 4],
    report: CodeLabel,
    putc: CodeLabel,
    hex32: CodeLabel,
}

impl Named {
    fn new(asm: &mut CodeAssembler) -> Self {
        Self {
            reload_cs: asm.create_label(),
            handler: asm.create_label(),
            finish_handler: asm.create_label(),
            user: asm.create_label(),
            set: [false; 4],
            report: asm.create_label(),
            putc: asm.create_label(),
            hex32: asm.create_label(),
        }
    }

    /// Places label `index` (0 reload_cs, 1 handler, 2 finish_handler, 3
    /// user) here.
    fn place(&mut self, asm: &mut CodeAssembler, index: usize) -> Result<(), IcedError> {
        self.set[index] = true;
        let label = match index {
            0 => &mut self.reload_cs,
            1 => &mut self.handler,
            2 => &mut self.finish_handler,
            _ => &mut self.user,
        };
        asm.set_label(label)
    }

    /// Places the labels not placed yet, each on a HLT of its own (a
    /// label needs an instruction; these are never reached), and the
    /// serial report's routines.
    fn finish(&mut self, asm: &mut CodeAssembler) -> Result<(), IcedError> {
        for index in 0..4 {
            if !self.set[index] {
                self.place(asm, index)?;
                asm.hlt()?;
            }
        }
        self.report_routines(asm)
    }

    /// `report`: writes the readings to COM1 as one line of text (see
    /// [`Readings::parse`]), hexadecimal; `putc` writes AL once the
    /// transmitter holds nothing; `hex32` writes EAX as 8 digits. They run
    /// after the timed loop, so their traps and exits are not timed.
    fn report_routines(&mut self, asm: &mut CodeAssembler) -> Result<(), IcedError> {
        let text = |asm: &mut CodeAssembler, putc: CodeLabel, text: &str| {
            for byte in text.bytes() {
                asm.mov(al, i32::from(byte))?;
                asm.call(putc)?;
            }
            Ok::<(), IcedError>(())
        };
        let (putc, hex32) = (self.putc, self.hex32);
        asm.set_label(&mut self.report)?;
        text(asm, putc, "calibrate tsc_start=0x")?;
        for (label, slot) in [
            (None, RESULTS + 4),
            (None, RESULTS),
            (Some(" tsc_end=0x"), RESULTS + 12),
            (None, RESULTS + 8),
            (Some(" events=0x"), RESULTS + 16),
        ] {
            if let Some(label) = label {
                text(asm, putc, label)?;
            }
            asm.mov(eax, dword_ptr(slot))?;
            asm.call(hex32)?;
        }
        text(asm, putc, " gaps=")?;
        let mut gap = asm.create_label();
        let mut gaps_done = asm.create_label();
        asm.xor(esi, esi)?;
        asm.set_label(&mut gap)?;
        asm.cmp(esi, dword_ptr(RESULTS + 20))?;
        asm.jae(gaps_done)?;
        asm.mov(eax, dword_ptr(esi * 4 + GAPS))?;
        asm.call(hex32)?;
        text(asm, putc, ",")?;
        asm.inc(esi)?;
        asm.jmp(gap)?;
        asm.set_label(&mut gaps_done)?;
        text(asm, putc, "\n")?;
        asm.ret()?;

        asm.set_label(&mut self.putc)?;
        asm.push(edx)?;
        asm.push(eax)?;
        asm.mov(edx, COM1_LSR)?;
        let mut wait = asm.create_label();
        asm.set_label(&mut wait)?;
        asm.in_(al, dx)?;
        asm.test(al, LSR_THR_EMPTY)?;
        asm.je(wait)?;
        asm.pop(eax)?;
        asm.mov(edx, COM1_THR)?;
        asm.out(dx, al)?;
        asm.pop(edx)?;
        asm.ret()?;

        asm.set_label(&mut self.hex32)?;
        asm.push(ecx)?;
        asm.push(ebx)?;
        asm.mov(ebx, eax)?;
        asm.mov(ecx, 8u32)?;
        let mut digit = asm.create_label();
        let mut decimal = asm.create_label();
        asm.set_label(&mut digit)?;
        asm.rol(ebx, 4)?;
        asm.mov(eax, ebx)?;
        asm.and(eax, 0xf)?;
        asm.cmp(al, 10)?;
        asm.jb(decimal)?;
        asm.add(al, i32::from(b'a' - b'0' - 10))?;
        asm.set_label(&mut decimal)?;
        asm.add(al, i32::from(b'0'))?;
        asm.call(putc)?;
        asm.dec(ecx)?;
        asm.jne(digit)?;
        asm.pop(ebx)?;
        asm.pop(ecx)?;
        asm.ret()
    }
}

/// Protected-mode set-up the generated kernels share: flat GDT with user
/// segments and a TSS, segment reload, IDT with `gates` (vector, handler
/// address, DPL).
fn prologue(
    asm: &mut CodeAssembler,
    labels: &Labels,
    named: &mut Named,
    gates: &[(u8, u32, u32)],
) -> Result<(), IcedError> {
    asm.cli()?;
    asm.mov(esp, KERNEL_STACK)?;
    let tss_low = (TSS & 0xffff) << 16 | 0x67;
    let tss_high = (TSS & 0xff00_0000) | 0x8900 | (TSS >> 16 & 0xff);
    let descriptors: [(u32, u32); 6] = [
        (0, 0),
        (0x0000_ffff, 0x00cf_9a00),
        (0x0000_ffff, 0x00cf_9200),
        (0x0000_ffff, 0x00cf_fa00),
        (0x0000_ffff, 0x00cf_f200),
        (tss_low, tss_high),
    ];
    for (index, (low, high)) in (0u32..).zip(descriptors) {
        asm.mov(dword_ptr(GDT + index * 8), low)?;
        asm.mov(dword_ptr(GDT + index * 8 + 4), high)?;
    }
    asm.mov(word_ptr(GDTR), 6 * 8 - 1)?;
    asm.mov(dword_ptr(GDTR + 2), GDT)?;
    asm.lgdt(fword_ptr(GDTR))?;
    asm.mov(eax, KERNEL_CS)?;
    asm.push(eax)?;
    asm.mov(eax, labels.reload_cs)?;
    asm.push(eax)?;
    asm.retf()?;
    named.place(asm, 0)?;
    asm.mov(eax, KERNEL_DS)?;
    for segment in [
        iced_x86::code_asm::ds,
        iced_x86::code_asm::es,
        iced_x86::code_asm::ss,
        iced_x86::code_asm::fs,
        iced_x86::code_asm::gs,
    ] {
        asm.mov(segment, ax)?;
    }
    asm.mov(dword_ptr(TSS + 4), KERNEL_STACK)?;
    asm.mov(dword_ptr(TSS + 8), KERNEL_DS)?;
    // I/O map base past the limit: no I/O bitmap.
    asm.mov(word_ptr(TSS + 102), 0x68u32)?;
    asm.mov(eax, TSS_SELECTOR)?;
    asm.ltr(ax)?;
    for &(vector, handler, dpl) in gates {
        let gate = IDT + u32::from(vector) * 8;
        asm.mov(dword_ptr(gate), KERNEL_CS << 16 | (handler & 0xffff))?;
        // Present, 32-bit interrupt gate.
        asm.mov(
            dword_ptr(gate + 4),
            (handler & 0xffff_0000) | 0x8e00 | dpl << 13,
        )?;
    }
    asm.mov(word_ptr(IDTR), 256 * 8 - 1)?;
    asm.mov(dword_ptr(IDTR + 2), IDT)?;
    asm.lidt(fword_ptr(IDTR))?;
    asm.mov(dword_ptr(RESULTS + 16), 0u32)?;
    asm.mov(dword_ptr(RESULTS + 20), 0u32)?;
    Ok(())
}

fn store_tsc(asm: &mut CodeAssembler, slot: u32) -> Result<(), IcedError> {
    asm.rdtsc()?;
    asm.mov(dword_ptr(RESULTS + slot * 8), eax)?;
    asm.mov(dword_ptr(RESULTS + slot * 8 + 4), edx)?;
    Ok(())
}

fn padding(asm: &mut CodeAssembler) -> Result<(), IcedError> {
    for _ in 0..PADDING {
        asm.nop()?;
    }
    Ok(())
}

/// Reports the readings on COM1 and ends the run through the debug-exit
/// port with status 1.
fn debug_exit(asm: &mut CodeAssembler, named: &Named) -> Result<(), IcedError> {
    asm.call(named.report)?;
    asm.mov(al, 0)?;
    asm.out(0xf4, al)?;
    asm.hlt()
}

/// The kernel for one path (not [`GuestPath::Interrupt`]).
fn kernel_image(path: GuestPath, iterations: u32) -> Result<Vec<u8>, IcedError> {
    assemble(|asm, labels, named| {
        let gates = if path == GuestPath::GuestPageFault {
            vec![(14, labels.handler, 0)]
        } else {
            vec![(0x80, labels.handler, 3), (0x81, labels.finish_handler, 3)]
        };
        prologue(asm, labels, named, &gates)?;
        if path.paging() {
            paging_on(asm)?;
        }
        let mut body = asm.create_label();
        let event = |asm: &mut CodeAssembler| -> Result<(), IcedError> {
            match path {
                GuestPath::Loop | GuestPath::Interrupt => {}
                GuestPath::CliSti => {
                    asm.cli()?;
                    padding(asm)?;
                    asm.sti()?;
                }
                GuestPath::PushfHardware | GuestPath::PushfSplit => {
                    asm.pushfd()?;
                    asm.pop(eax)?;
                }
                GuestPath::InterpretBase => {
                    asm.cli()?;
                    asm.sti()?;
                }
                GuestPath::Interpret => {
                    asm.cli()?;
                    interpreted_instructions(asm)?;
                    asm.sti()?;
                }
                GuestPath::PageTableWrite => {
                    // The next PTE after the test page's in its live table.
                    let (_, table, _) = PAGE_DIRECTORIES[0];
                    asm.mov(dword_ptr(table + ((TEST_PAGE >> 12 & 0x3ff) + 1) * 4), 0u32)?;
                }
                GuestPath::SystemCall => asm.int(0x80)?,
                GuestPath::HostExit => {
                    asm.mov(edx, COM1_SCRATCH)?;
                    asm.out(dx, al)?;
                }
                GuestPath::HiddenFault => {
                    asm.mov(eax, dword_ptr(TEST_PAGE))?;
                    padding(asm)?;
                    asm.invlpg(iced_x86::code_asm::byte_ptr(TEST_PAGE))?;
                }
                // `mov ebx, [disp32]`: 6 bytes, which the handler skips.
                GuestPath::GuestPageFault => asm.mov(ebx, dword_ptr(UNMAPPED))?,
                GuestPath::AddressSpaceSwitch | GuestPath::AddressSpaceSwitchOneProcess => {
                    for (directory, _, _) in PAGE_DIRECTORIES.iter().rev() {
                        asm.mov(eax, *directory)?;
                        asm.mov(iced_x86::code_asm::cr3, eax)?;
                        padding(asm)?;
                        asm.mov(eax, dword_ptr(TEST_PAGE))?;
                        padding(asm)?;
                    }
                }
            }
            Ok(())
        };
        if path == GuestPath::PageTableWrite {
            // A native read through the table (past what the monitor
            // interprets after turning paging on) makes the shadow walk
            // it, and so track its page.
            padding(asm)?;
            asm.mov(eax, dword_ptr(TEST_PAGE))?;
        }
        if path == GuestPath::GuestPageFault {
            // The #PF handler: drop the error code, skip the read.
            let mut past = asm.create_label();
            asm.jmp(past)?;
            named.place(asm, 1)?;
            asm.add(esp, 4)?;
            asm.add(dword_ptr(esp), 6)?;
            asm.iretd()?;
            asm.set_label(&mut past)?;
        }
        if path == GuestPath::SystemCall {
            // To user mode (IF clear: nothing to take).
            asm.mov(eax, USER_DS)?;
            asm.mov(iced_x86::code_asm::ds, ax)?;
            asm.mov(iced_x86::code_asm::es, ax)?;
            asm.push(eax)?;
            asm.mov(eax, USER_STACK)?;
            asm.push(eax)?;
            asm.push(0x2i32)?;
            asm.mov(eax, USER_CS)?;
            asm.push(eax)?;
            asm.mov(eax, labels.user)?;
            asm.push(eax)?;
            asm.iretd()?;
            // The system call handler: straight back.
            named.place(asm, 1)?;
            asm.iretd()?;
            // The end, called from user mode.
            named.place(asm, 2)?;
            debug_exit(asm, named)?;
            named.place(asm, 3)?;
        }
        // The same loop code, warmed up untimed: the first turns decode,
        // plan, fill aliases and map what the timed ones find ready.
        asm.mov(ecx, WARM_UP)?;
        asm.call(body)?;
        store_tsc(asm, 0)?;
        asm.mov(ecx, iterations)?;
        asm.call(body)?;
        store_tsc(asm, 1)?;
        if path == GuestPath::SystemCall {
            asm.int(0x81)?;
        } else {
            debug_exit(asm, named)?;
        }
        asm.set_label(&mut body)?;
        event(asm)?;
        padding(asm)?;
        asm.dec(ecx)?;
        asm.jne(body)?;
        asm.ret()?;
        named.finish(asm)
    })
}

/// The instructions [`GuestPath::Interpret`] has the monitor interpret
/// between its CLI and STI: [`INTERPRETED`] plain register, memory and
/// stack instructions, no branch (ECX, the loop's count, untouched).
fn interpreted_instructions(asm: &mut CodeAssembler) -> Result<(), IcedError> {
    const SCRATCH: u32 = RESULTS + 0x40;
    let start = asm.instructions().len();
    for _ in 0..2 {
        asm.mov(eax, ebx)?;
        asm.add(eax, 1)?;
        asm.push(eax)?;
        asm.lea(esi, dword_ptr(eax + ebx * 2 + 4))?;
        asm.mov(dword_ptr(SCRATCH), esi)?;
        asm.pop(edx)?;
        asm.xor(edx, esi)?;
        asm.mov(ebx, dword_ptr(SCRATCH))?;
        asm.sub(edi, edx)?;
        asm.and(ebx, 0xffff)?;
    }
    debug_assert_eq!(asm.instructions().len() - start, INTERPRETED as usize);
    Ok(())
}

/// Turns paging on with the tables of [`PAGE_DIRECTORIES`] (the first in
/// CR3), CR4.PSE and CR0.WP. Every entry has A and D set already, so the
/// measured loops cause no A/D writes.
fn paging_on(asm: &mut CodeAssembler) -> Result<(), IcedError> {
    const P_W_U_A_D: u32 = 0x67;
    const PS: u32 = 0x80;
    for (directory, table, page) in PAGE_DIRECTORIES {
        for index in 0..(MEMORY_MIB / 4) {
            asm.mov(
                dword_ptr(directory + index * 4),
                index << 22 | PS | P_W_U_A_D,
            )?;
        }
        asm.mov(
            dword_ptr(directory + (TEST_PAGE >> 22) * 4),
            table | P_W_U_A_D,
        )?;
        asm.mov(
            dword_ptr(table + (TEST_PAGE >> 12 & 0x3ff) * 4),
            page | P_W_U_A_D,
        )?;
    }
    asm.mov(eax, iced_x86::code_asm::cr4)?;
    asm.or(eax, 0x10)?;
    asm.mov(iced_x86::code_asm::cr4, eax)?;
    asm.mov(eax, PAGE_DIRECTORIES[0].0)?;
    asm.mov(iced_x86::code_asm::cr3, eax)?;
    asm.mov(eax, iced_x86::code_asm::cr0)?;
    asm.or(eax, 0x8001_0000u32 as i32)?;
    asm.mov(iced_x86::code_asm::cr0, eax)?;
    Ok(())
}

/// The interrupt guest: PIC and PIT programmed, then, with interrupts on,
/// a loop that reads the TSC on every turn and records each gap of at
/// least `threshold` ticks, until `target` gaps; the handler counts, EOIs
/// and IRETs.
fn interrupt_image(threshold: u32, target: u32) -> Result<Vec<u8>, IcedError> {
    assemble(|asm, labels, named| {
        prologue(asm, labels, named, &[(0x20, labels.handler, 0)])?;
        for (port, value) in [
            (0x20, 0x11),
            (0x21, 0x20),
            (0x21, 0x04),
            (0x21, 0x01),
            (0xa0, 0x11),
            (0xa1, 0x28),
            (0xa1, 0x02),
            (0xa1, 0x01),
            (0x21, 0xfe),
            (0xa1, 0xff),
            (0x43, 0x34),
            (0x40, i32::from(PIT_DIVISOR & 0xff)),
            (0x40, i32::from(PIT_DIVISOR >> 8)),
        ] {
            asm.mov(al, value)?;
            asm.out(port, al)?;
        }
        asm.mov(esi, threshold)?;
        asm.xor(edi, edi)?;
        asm.mov(ecx, GAP_LOOP_TURNS)?;
        store_tsc(asm, 0)?;
        asm.mov(ebx, eax)?;
        asm.sti()?;
        let mut turn = asm.create_label();
        let mut next = asm.create_label();
        let mut done = asm.create_label();
        asm.set_label(&mut turn)?;
        asm.rdtsc()?;
        asm.mov(edx, eax)?;
        asm.sub(eax, ebx)?;
        asm.mov(ebx, edx)?;
        asm.cmp(eax, esi)?;
        asm.jb(next)?;
        asm.mov(dword_ptr(edi * 4 + GAPS), eax)?;
        asm.inc(edi)?;
        asm.cmp(edi, target)?;
        asm.jae(done)?;
        asm.set_label(&mut next)?;
        asm.dec(ecx)?;
        asm.jne(turn)?;
        asm.set_label(&mut done)?;
        asm.cli()?;
        store_tsc(asm, 1)?;
        asm.mov(dword_ptr(RESULTS + 20), edi)?;
        debug_exit(asm, named)?;
        named.place(asm, 1)?;
        asm.push(eax)?;
        asm.inc(dword_ptr(RESULTS + 16))?;
        asm.mov(al, 0x20)?;
        asm.out(0x20, al)?;
        asm.pop(eax)?;
        asm.iretd()?;
        named.finish(asm)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_kernels_are_multiboot_images_that_decode() {
        let mut images: Vec<(String, Vec<u8>)> = [GuestPath::Loop, GuestPath::InterpretBase]
            .into_iter()
            .chain(GuestPath::MEASURED)
            .filter(|path| *path != GuestPath::Interrupt)
            .map(|path| {
                (
                    format!("{path:?}"),
                    kernel_image(path, 10).expect("assembles"),
                )
            })
            .collect();
        images.push((
            "interrupt".into(),
            interrupt_image(1000, 10).expect("assembles"),
        ));
        for (path, image) in images {
            // The a.out kludge header: magic, flags with bit 16, checksum.
            let word = |index: usize| {
                u32::from_le_bytes([
                    image[index * 4],
                    image[index * 4 + 1],
                    image[index * 4 + 2],
                    image[index * 4 + 3],
                ])
            };
            assert_eq!(word(0), 0x1bad_b002, "{path}");
            assert_eq!(word(1) & (1 << 16), 1 << 16, "{path}");
            assert_eq!(word(0).wrapping_add(word(1)).wrapping_add(word(2)), 0);
            // The code decodes to the end without invalid instructions.
            let mut decoder = iced_x86::Decoder::with_ip(
                32,
                &image[32..],
                u64::from(LOAD + 32),
                iced_x86::DecoderOptions::NONE,
            );
            for instr in &mut decoder {
                assert!(!instr.is_invalid(), "{path}: invalid at {:#x}", instr.ip());
            }
        }
    }

    #[test]
    fn the_guest_s_line_gives_its_readings() {
        let console = "booting\ncalibrate tsc_start=0x0000000100000002 tsc_end=0x00000001000000ff \
                       events=0x00000003 gaps=0000abcd,00000010,\r\n";
        assert_eq!(
            Readings::parse(console),
            Some(Readings {
                tsc_start: 0x1_0000_0002,
                tsc_end: 0x1_0000_00ff,
                events: 3,
                gaps: vec![0xabcd, 0x10],
            })
        );
        let none = "calibrate tsc_start=0x1 tsc_end=0x2 events=0x0 gaps=\n";
        assert_eq!(
            Readings::parse(none).map(|readings| readings.gaps),
            Some(vec![])
        );
        assert_eq!(Readings::parse("calibrate tsc_start=12\n"), None);
        assert_eq!(Readings::parse("no line"), None);
    }

    #[test]
    fn the_bare_child_s_line_round_trips() {
        let line = bare_line(&crate::bare::Measurement {
            ns: 1234.5,
            events: 1500,
        });
        assert_eq!(parse_bare_line(&line), Some((1234.5, 1500)));
        assert_eq!(parse_bare_line("1234.5"), None);
    }

    #[test]
    fn every_path_names_a_counter_the_monitor_reports() {
        let names: Vec<&str> = Counter::ALL.iter().map(|counter| counter.name()).collect();
        for path in GuestPath::MEASURED {
            let counter = path.counter();
            // The per-class counts are "emulated " and the class's name.
            assert!(
                names.contains(&counter) || counter.starts_with("emulated "),
                "{}",
                path.name()
            );
        }
    }
}
