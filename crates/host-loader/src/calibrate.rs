//! `btvmm calibrate`: what each monitor path costs on the running host,
//! against the bare host trap(s) it rides on, measured side by side.
//!
//! Bare events run in fresh child processes (`btvmm __bare NAME`, see
//! world_switch::bare): they install signal handlers, LDT entries and
//! seccomp filters that must not outlive them. The btvmm paths run as
//! small guest kernels generated here with iced's assembler (no compiler
//! needed), booted through the normal `btvmm run` machinery. Each guest
//! reads the TSC around a loop of N events and leaves the readings in its
//! RAM, which the host reads after the run; the loop's own cost (measured
//! by a guest with the same loop and no event) is subtracted.

use std::process::Command;
use std::time::{Duration, Instant};

use iced_x86::IcedError;
use iced_x86::code_asm::{
    CodeAssembler, CodeLabel, al, ax, dword_ptr, eax, ebx, ecx, edi, edx, esi, esp, fword_ptr,
    word_ptr,
};
use serde::Serialize;
use world_switch::bare::BareEvent;

use crate::LoaderError;
use crate::run::{Ending, RunRequest, run_image};

/// Where the generated kernels are loaded (guest-physical).
const LOAD: u32 = 0x0010_0000;
/// Results the guest leaves: TSC before (lo, hi), TSC after (lo, hi),
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
/// Plain instructions around each event: more than the monitor
/// interprets (guest-monitor's INTERPRET_RUN), so the code after an event
/// runs natively and the next event is a real trap.
const PADDING: usize = 32;
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

/// A monitor path measured through a generated guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestPath {
    /// The loop alone (subtracted from the others).
    Loop,
    /// CLI and STI in guest kernel code: each faults (#GP), the monitor
    /// emulates it, plans and resumes.
    CliSti,
    /// PUSHF in guest kernel code: a planned breakpoint hits, the monitor
    /// emulates PUSHF, takes the next plan from its cache and resumes.
    Pushf,
    /// `int $0x80` in guest user code: seccomp traps it, the monitor
    /// delivers it through the guest IDT to the guest kernel, whose
    /// handler IRETs back.
    SystemCall,
    /// A PIT interrupt into a guest kernel loop: the world's timer kicks,
    /// the monitor injects through the guest IDT, the handler's EOI and
    /// IRET run in the monitor.
    Interrupt,
    /// OUT to an unclaimed port in guest kernel code: #GP, emulation,
    /// exit to the host process and back.
    HostExit,
    /// With guest paging on: a read of a page the guest's tables map but
    /// the shadow does not (a hidden fault: walk, mmap), then INVLPG of it
    /// (#GP, emulation, munmap), so that the next read faults again.
    HiddenFault,
    /// With guest paging on: a read of an address the guest's tables do
    /// not map: the host #PF becomes the guest's #PF, delivered through
    /// its IDT; the handler skips the read and IRETs.
    GuestPageFault,
    /// With guest paging on: MOV to CR3 alternating between two page
    /// directories that share the kernel's PDEs and differ in the one
    /// mapping the read after each switch uses, each address space in its
    /// own world process of the pool: the vCPU is handed over, the other
    /// process's shadow is still in place.
    AddressSpaceSwitch,
    /// The same with a pool of one: the one shadow keeps the regions whose
    /// PDE is the same (root compare), the other region is unmapped and
    /// the read faults it back in.
    AddressSpaceSwitchOneProcess,
}

impl GuestPath {
    /// The paths measured, in report order.
    pub const MEASURED: [GuestPath; 9] = [
        GuestPath::CliSti,
        GuestPath::Pushf,
        GuestPath::SystemCall,
        GuestPath::Interrupt,
        GuestPath::HostExit,
        GuestPath::HiddenFault,
        GuestPath::GuestPageFault,
        GuestPath::AddressSpaceSwitch,
        GuestPath::AddressSpaceSwitchOneProcess,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Loop => "loop",
            Self::CliSti => "cli/sti emulated",
            Self::Pushf => "breakpoint + pushf + re-plan",
            Self::SystemCall => "guest int 0x80 + iret",
            Self::Interrupt => "interrupt injected",
            Self::HostExit => "exit to the host and back",
            Self::HiddenFault => "hidden fault + invlpg",
            Self::GuestPageFault => "guest #PF delivered + iret",
            Self::AddressSpaceSwitch => "cr3 switch (pool)",
            Self::AddressSpaceSwitchOneProcess => "cr3 switch (one process)",
        }
    }

    /// The bare host events this path cannot do without, with how many of
    /// each.
    fn needs(self) -> &'static [(BareEvent, u32)] {
        match self {
            Self::Loop => &[],
            Self::CliSti => &[(BareEvent::GeneralProtection, 1)],
            Self::Pushf => &[(BareEvent::HardwareBreakpoint, 1)],
            Self::SystemCall => &[(BareEvent::SeccompSigsys, 1)],
            Self::Interrupt => &[(BareEvent::AsyncSignal, 1)],
            Self::HostExit => &[
                (BareEvent::GeneralProtection, 1),
                (BareEvent::FutexHandoff, 2),
            ],
            Self::HiddenFault => &[
                (BareEvent::PageFaultMap, 1),
                (BareEvent::GeneralProtection, 1),
            ],
            Self::GuestPageFault => &[(BareEvent::PageFault, 1)],
            // The trapping MOV and one handoff to the world process of
            // the other address space.
            Self::AddressSpaceSwitch | Self::AddressSpaceSwitchOneProcess => &[
                (BareEvent::GeneralProtection, 1),
                (BareEvent::FutexHandoffProcess, 1),
            ],
        }
    }

    /// Events per loop iteration.
    fn events_per_iteration(self) -> u32 {
        match self {
            Self::CliSti | Self::AddressSpaceSwitch | Self::AddressSpaceSwitchOneProcess => 2,
            _ => 1,
        }
    }

    /// Whether the path's guest turns paging on.
    fn paging(self) -> bool {
        matches!(
            self,
            Self::HiddenFault
                | Self::GuestPageFault
                | Self::AddressSpaceSwitch
                | Self::AddressSpaceSwitchOneProcess
        )
    }

    /// World processes for the guest's address spaces.
    fn address_spaces(self) -> usize {
        match self {
            Self::AddressSpaceSwitchOneProcess => 1,
            _ => crate::run::DEFAULT_ADDRESS_SPACES.into(),
        }
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct CalibrateRequest {
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
    /// The bare events it needs, e.g. "gp + 2 futex-handoff".
    pub needs: String,
    /// Their summed bare cost.
    pub bare_ns: f64,
    /// ns / bare_ns.
    pub ratio: f64,
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
}

/// Runs every measurement.
pub fn calibrate(request: &CalibrateRequest) -> Result<Calibration, LoaderError> {
    if request.iterations == 0 || request.rounds == 0 {
        return Err(LoaderError::Option(
            "--iterations and --rounds must be at least 1".into(),
        ));
    }
    let tsc_per_ns = tsc_per_ns();
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
        return Err(LoaderError::Option(format!(
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
    let loop_ns = median(
        (0..request.rounds)
            .map(|_| run_path(GuestPath::Loop, request, tsc_per_ns))
            .collect::<Result<Vec<_>, _>>()?,
    );
    let mut paths = Vec::new();
    for path in measured {
        let ns = if path == GuestPath::Interrupt {
            median(
                (0..request.rounds)
                    .map(|_| interrupt_cost(tsc_per_ns, request))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        } else {
            let per_iteration = median(
                (0..request.rounds)
                    .map(|_| run_path(path, request, tsc_per_ns))
                    .collect::<Result<Vec<_>, _>>()?,
            );
            (per_iteration - loop_ns) / f64::from(path.events_per_iteration())
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
        let bare_total: f64 = path
            .needs()
            .iter()
            .map(|(event, count)| bare_ns(*event) * f64::from(*count))
            .sum();
        paths.push(PathRow {
            path: path.name(),
            ns,
            needs,
            bare_ns: bare_total,
            ratio: ns / bare_total,
        });
    }
    Ok(Calibration {
        tsc_per_ns,
        loop_ns,
        bare,
        paths,
    })
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
        "\nbtvmm paths (ns per event, median; the generated guests' loop, {:.0} ns per iteration, subtracted)",
        calibration.loop_ns
    );
    let _ = writeln!(
        out,
        "  {:<30} {:>9} {:>9} {:>6}  needs",
        "path", "btvmm", "bare", "ratio"
    );
    for row in &calibration.paths {
        let _ = writeln!(
            out,
            "  {:<30} {:>9.0} {:>9.0} {:>6.2}  {}",
            row.path, row.ns, row.bare_ns, row.ratio, row.needs
        );
    }
    out
}

/// Runs `btvmm __bare NAME` and reads its nanoseconds.
fn measure_bare(event: BareEvent, request: &CalibrateRequest) -> Result<f64, LoaderError> {
    let exe = std::env::current_exe().map_err(|source| LoaderError::Io {
        path: "/proc/self/exe".into(),
        source,
    })?;
    let output = Command::new(exe)
        .args([
            "__bare",
            event.name(),
            "--iterations",
            &request.iterations.to_string(),
            "--rounds",
            &request.rounds.to_string(),
        ])
        .output()
        .map_err(|source| LoaderError::Io {
            path: "btvmm __bare".into(),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(LoaderError::Calibrate(format!(
            "measuring {}: {}",
            event.name(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    text.trim().parse().map_err(|_| {
        LoaderError::Calibrate(format!(
            "measuring {}: unexpected output {text:?}",
            event.name()
        ))
    })
}

/// TSC ticks per nanosecond, over 100 ms of CLOCK_MONOTONIC.
fn tsc_per_ns() -> f64 {
    let start = Instant::now();
    let tsc_start = read_tsc();
    std::thread::sleep(Duration::from_millis(100));
    let tsc_end = read_tsc();
    let elapsed = start.elapsed();
    #[allow(clippy::cast_precision_loss)] // ratios of measured values
    let ratio = tsc_end.wrapping_sub(tsc_start) as f64 / elapsed.as_nanos() as f64;
    ratio
}

fn read_tsc() -> u64 {
    world_switch::channel::read_tsc()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// What a generated guest left in its RAM.
#[derive(Clone, Debug, Default)]
struct GuestResults {
    tsc_start: u64,
    tsc_end: u64,
    events: u32,
    gaps: Vec<u32>,
}

/// Boots a generated kernel and reads its results.
fn boot(
    image: &[u8],
    what: &str,
    stats: bool,
    address_spaces: usize,
) -> Result<GuestResults, LoaderError> {
    if stats {
        eprintln!("-- {what}");
    }
    let request = RunRequest {
        memory_mib: Some(MEMORY_MIB),
        stats,
        address_spaces,
        ..RunRequest::new(format!("(generated: {what})"))
    };
    let mut results = GuestResults::default();
    let outcome = run_image(&request, image, std::io::sink(), |ram| {
        let mut words = [0u8; 24];
        if ram.read(RESULTS, &mut words) {
            let word = |index: usize| {
                u32::from_le_bytes([
                    words[index * 4],
                    words[index * 4 + 1],
                    words[index * 4 + 2],
                    words[index * 4 + 3],
                ])
            };
            results = GuestResults {
                tsc_start: u64::from(word(0)) | u64::from(word(1)) << 32,
                tsc_end: u64::from(word(2)) | u64::from(word(3)) << 32,
                events: word(4),
                gaps: Vec::new(),
            };
            let count = word(5).min(GAP_CAPACITY) as usize;
            let mut bytes = vec![0u8; count * 4];
            if ram.read(GAPS, &mut bytes) {
                results.gaps = bytes
                    .chunks_exact(4)
                    .map(|gap| u32::from_le_bytes([gap[0], gap[1], gap[2], gap[3]]))
                    .collect();
            }
        }
    })?;
    if stats {
        for (name, value) in outcome.counters.report() {
            if value != 0 {
                eprintln!("   {name:<40} {value:>12}");
            }
        }
    }
    if outcome.ending != Ending::DebugExit(1) {
        return Err(LoaderError::Calibrate(format!(
            "the {what} guest did not finish: {}",
            outcome
                .message()
                .unwrap_or_else(|| format!("{:?}", outcome.ending))
        )));
    }
    if results.tsc_end <= results.tsc_start {
        return Err(LoaderError::Calibrate(format!(
            "the {what} guest left no timing"
        )));
    }
    Ok(results)
}

/// Nanoseconds per loop iteration of `path`.
fn run_path(
    path: GuestPath,
    request: &CalibrateRequest,
    tsc_per_ns: f64,
) -> Result<f64, LoaderError> {
    let iterations = request.iterations;
    let image = kernel_image(path, iterations).map_err(asm_error)?;
    let results = boot(&image, path.name(), request.stats, path.address_spaces())?;
    #[allow(clippy::cast_precision_loss)] // ratios of measured values
    let ns = (results.tsc_end - results.tsc_start) as f64 / tsc_per_ns / f64::from(iterations);
    Ok(ns)
}

/// Turns of the interrupt guest's loop at most (several seconds): a
/// guest that takes no interrupts still ends.
const GAP_LOOP_TURNS: u32 = 200_000_000;
/// PIT divisor for the interrupt guest: about 4 kHz, far apart next to
/// an injection's cost, so each gap is one interrupt.
const PIT_DIVISOR: u16 = 298;

/// Nanoseconds per injected interrupt, measured as the bare signal is
/// (the gap method of world_switch::bare): the gaps the guest's
/// timestamping loop saw, from the host timer's interrupt to the guest
/// loop's next instruction, as many of the largest as interrupts were
/// taken.
fn interrupt_cost(tsc_per_ns: f64, request: &CalibrateRequest) -> Result<f64, LoaderError> {
    // Thresholds of a few thousand ticks.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let threshold = (GAP_THRESHOLD_NS * tsc_per_ns).clamp(1.0, f64::from(u32::MAX)) as u32;
    let target = request.iterations.min(GAP_CAPACITY * 3 / 4);
    let image = interrupt_image(threshold, target).map_err(asm_error)?;
    let results = boot(
        &image,
        GuestPath::Interrupt.name(),
        request.stats,
        GuestPath::Interrupt.address_spaces(),
    )?;
    if results.events == 0 || results.gaps.is_empty() {
        return Err(LoaderError::Calibrate(
            "the interrupt guest took no interrupts".into(),
        ));
    }
    let mut gaps: Vec<f64> = results
        .gaps
        .iter()
        .map(|ticks| f64::from(*ticks) / tsc_per_ns)
        .collect();
    Ok(world_switch::bare::median_of_largest(
        &mut gaps,
        results.events as usize,
    ))
}

fn asm_error(error: IcedError) -> LoaderError {
    LoaderError::Calibrate(format!("assembling a calibration guest: {error}"))
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
            return Ok(crate::multiboot::aout_kludge_image(
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
/// address: they are set at the end).
struct Named {
    reload_cs: CodeLabel,
    handler: CodeLabel,
    finish_handler: CodeLabel,
    user: CodeLabel,
    set: [bool; 4],
}

impl Named {
    fn new(asm: &mut CodeAssembler) -> Self {
        Self {
            reload_cs: asm.create_label(),
            handler: asm.create_label(),
            finish_handler: asm.create_label(),
            user: asm.create_label(),
            set: [false; 4],
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
    /// label needs an instruction; these are never reached).
    fn finish(&mut self, asm: &mut CodeAssembler) -> Result<(), IcedError> {
        for index in 0..4 {
            if !self.set[index] {
                self.place(asm, index)?;
                asm.hlt()?;
            }
        }
        Ok(())
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

/// Ends the run through the debug-exit port with status 1.
fn debug_exit(asm: &mut CodeAssembler) -> Result<(), IcedError> {
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
                GuestPath::Pushf => {
                    asm.pushfd()?;
                    asm.pop(eax)?;
                }
                GuestPath::SystemCall => asm.int(0x80)?,
                GuestPath::HostExit => asm.out(0x80, al)?,
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
                        asm.mov(eax, dword_ptr(TEST_PAGE))?;
                        padding(asm)?;
                    }
                }
            }
            Ok(())
        };
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
            debug_exit(asm)?;
            named.place(asm, 3)?;
        }
        store_tsc(asm, 0)?;
        asm.mov(ecx, iterations)?;
        asm.set_label(&mut body)?;
        event(asm)?;
        padding(asm)?;
        asm.dec(ecx)?;
        asm.jne(body)?;
        store_tsc(asm, 1)?;
        if path == GuestPath::SystemCall {
            asm.int(0x81)?;
        } else {
            debug_exit(asm)?;
        }
        named.finish(asm)
    })
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
        debug_exit(asm)?;
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
        let mut images: Vec<(String, Vec<u8>)> = [GuestPath::Loop]
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
            let header = crate::multiboot::find_header(&image).expect("a multiboot header");
            assert_eq!(header.flags & (1 << 16), 1 << 16);
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
}
