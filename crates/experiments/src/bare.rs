//! The bare cost of host traps on the running host: the floor that
//! btvmm's own paths are compared against (`btvmm calibrate`, DESIGN.md
//! section 6).
//!
//! Each trapping event comes from real 32-bit code at CPL 3, as a guest's
//! would: a tiny loop, hand-assembled below, in guest RAM mapped below
//! 4 GiB and run through flat 32-bit code and data segments in the host
//! LDT. Everything the loop needs from the host is the runtime's own
//! (world_switch): guest RAM and its shadow mappings, the LDT slots of CS
//! and SS, the monitor's signal trampoline and its list of signals, the
//! decoding of a signal into a trap and the resume from registers, the
//! perf breakpoints, the world's seccomp prefix that traps guest system
//! calls, the kick timer, the futex helpers. So a bare event costs what
//! the runtime's handling of it cannot do without, the trampoline and
//! [`trap::decode`]/[`trap::apply`] included, as the monitor's dispatch
//! would be.
//!
//! The loop is entered and left as the world enters the guest: the enter
//! signal raised in 64-bit code has the handler save the 64-bit context
//! and resume in the loop instead; the loop ends on a `hlt`, whose #GP
//! lets the handler put the saved 64-bit context back, so the raising call
//! simply returns.
//!
//! A round is timed in 64-bit code around one entry and one exit, and
//! divided by its events; the entry and exit (two signals) are not
//! subtracted: with thousands of events per round they are well under 1%.
//! One warm-up round is dropped and the median of the rest reported. The
//! handler counts the events it saw, and a round whose count is not its
//! iterations is an error: [`Measurement::events`] says how many events
//! the measured rounds really had.
//!
//! Everything here changes process-wide state (signal handlers, the LDT,
//! shadow mappings, a seccomp filter that cannot be removed), so
//! [`measure`] runs once in a process made for it: the calibrate command
//! runs each event in a fresh child (`btvmm __bare NAME`).

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use btvmm_core::cpu::SegReg;
use btvmm_core::descriptor::Descriptor;
use btvmm_core::world::ldt_layout::slot_selector;
use btvmm_core::{GuestVirt, HostRegisters, Trap};
use nix::sched::{sched_getaffinity, sched_getcpu, sched_setaffinity};
use nix::unistd::Pid;
use world_switch::WorldError;
use world_switch::shadow::LdtEntry;
use world_switch::sys::memory::{GuestRam, SharedRegion};
use world_switch::sys::perf::Breakpoints;
use world_switch::sys::signal::{GuestSegmentRegisters, SignalFrame};
use world_switch::sys::timer::KickTimer;
use world_switch::sys::{futex, host_filter, ldt, maps, seccomp, signal};
use world_switch::trap::{self, ENTER_SIGNAL, KICK_SIGNAL, SIGNALS};

use crate::ExperimentsError;

/// A bare host event whose round trip is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareEvent {
    /// #GP from 32-bit CPL-3 code (e.g. `cli`) -> SIGSEGV -> handler skips
    /// the instruction -> sigreturn.
    GeneralProtection,
    /// INT3 in 32-bit code -> SIGTRAP -> sigreturn after it: what a split
    /// view's INT3 from an alias page cannot do without.
    SoftwareBreakpoint,
    /// A perf hardware execute breakpoint hit in 32-bit code -> SIGTRAP
    /// (si_code TRAP_PERF) -> handler sets RF -> sigreturn.
    HardwareBreakpoint,
    /// #PF from 32-bit code reading a page that is not mapped -> SIGSEGV ->
    /// handler skips -> sigreturn.
    PageFault,
    /// #PF from 32-bit code reading an unmapped page -> SIGSEGV -> handler
    /// unmaps the page read before and maps guest RAM at this one (the
    /// shadow's own munmap and mmap) -> sigreturn, the read completes: what
    /// a hidden fault and the INVLPG that undoes it cannot do without.
    PageFaultMap,
    /// `int $0x80` from 32-bit code under the world's seccomp prefix,
    /// which traps i386 system calls -> SIGSYS -> sigreturn.
    SeccompSigsys,
    /// Moving one perf breakpoint to another address
    /// (PERF_EVENT_IOC_MODIFY_ATTRIBUTES, as sys::perf::Breakpoints::arm
    /// does).
    BreakpointMove,
    /// One futex handoff between two threads pinned to the same CPU (wake
    /// the other and wait for it: report half a ping-pong round trip).
    FutexHandoff,
    /// The same between two processes (a word in shared memory): what
    /// handing the vCPU to another world process of the pool cannot do
    /// without (the address space changes with the thread).
    FutexHandoffProcess,
    /// The same with the measuring process under the btvmm process's own
    /// seccomp filter (sys::host_filter): what the filter adds to the
    /// host's side of every exit (its futex wake and wait).
    FutexHandoffProcessFiltered,
    /// An asynchronous signal (the world's kick, sent by its timer)
    /// interrupting a 32-bit loop -> handler -> sigreturn; cost per signal
    /// by the gap method (see [`async_signal`]).
    AsyncSignal,
}

impl BareEvent {
    /// Every event, in report order.
    pub const ALL: [BareEvent; 11] = [
        BareEvent::GeneralProtection,
        BareEvent::SoftwareBreakpoint,
        BareEvent::HardwareBreakpoint,
        BareEvent::PageFault,
        BareEvent::PageFaultMap,
        BareEvent::SeccompSigsys,
        BareEvent::BreakpointMove,
        BareEvent::FutexHandoff,
        BareEvent::FutexHandoffProcess,
        BareEvent::FutexHandoffProcessFiltered,
        BareEvent::AsyncSignal,
    ];

    /// A short stable id (command lines, reports).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            BareEvent::GeneralProtection => "gp",
            BareEvent::SoftwareBreakpoint => "int3",
            BareEvent::HardwareBreakpoint => "db",
            BareEvent::PageFault => "pf",
            BareEvent::PageFaultMap => "pf-map",
            BareEvent::SeccompSigsys => "sigsys",
            BareEvent::BreakpointMove => "bp-move",
            BareEvent::FutexHandoff => "futex-handoff",
            BareEvent::FutexHandoffProcess => "futex-handoff-proc",
            BareEvent::FutexHandoffProcessFiltered => "futex-handoff-proc-filtered",
            BareEvent::AsyncSignal => "signal",
        }
    }

    /// One line saying what is measured.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            BareEvent::GeneralProtection => {
                "#GP (cli) in 32-bit code -> SIGSEGV -> skip -> sigreturn"
            }
            BareEvent::SoftwareBreakpoint => "int3 in 32-bit code -> SIGTRAP -> sigreturn",
            BareEvent::HardwareBreakpoint => {
                "perf execute breakpoint in 32-bit code -> SIGTRAP -> set RF -> sigreturn"
            }
            BareEvent::PageFault => {
                "#PF (read of an unmapped page) in 32-bit code -> SIGSEGV -> skip -> sigreturn"
            }
            BareEvent::PageFaultMap => {
                "#PF (unmapped page) -> SIGSEGV -> munmap + mmap of guest RAM -> sigreturn"
            }
            BareEvent::SeccompSigsys => {
                "int $0x80 in 32-bit code -> seccomp SECCOMP_RET_TRAP -> SIGSYS -> sigreturn"
            }
            BareEvent::BreakpointMove => {
                "move one perf breakpoint (PERF_EVENT_IOC_MODIFY_ATTRIBUTES)"
            }
            BareEvent::FutexHandoff => {
                "futex wake + wait between two threads on one CPU (half a round trip)"
            }
            BareEvent::FutexHandoffProcess => {
                "futex wake + wait between two processes on one CPU (half a round trip)"
            }
            BareEvent::FutexHandoffProcessFiltered => {
                "the same, the measuring process under btvmm's own seccomp filter"
            }
            BareEvent::AsyncSignal => {
                "timer signal interrupting a 32-bit loop -> handler -> sigreturn"
            }
        }
    }

    /// The event with this [`name`](Self::name).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|event| event.name() == name)
    }

    /// Whether every round has exactly its iterations of events (all but
    /// the timer's signals, whose count the timer decides).
    #[must_use]
    pub fn counted_exactly(self) -> bool {
        self != BareEvent::AsyncSignal
    }
}

/// What [`measure`] found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measurement {
    /// Nanoseconds per event, the median of the rounds.
    pub ns: f64,
    /// Events the measured rounds (not the warm-up) really had, as counted
    /// where they arrive (the signal handler, the futex partner, the
    /// breakpoint's ioctls): iterations x rounds, except for the timer's
    /// signals.
    pub events: u64,
}

/// Measures `event`: `rounds` rounds of `iterations` events each, after
/// one warm-up round.
///
/// Installs the world's signal handlers, LDT entries, shadow mappings,
/// perf events and (for [`BareEvent::SeccompSigsys`]) a seccomp filter in
/// the CALLING PROCESS for good: call it once, in a process made for the
/// purpose (the calibrate command runs each event in a fresh child
/// process: `btvmm __bare NAME`). The futex handoffs pin the calling
/// thread to its CPU while they run.
pub fn measure(
    event: BareEvent,
    iterations: u32,
    rounds: u32,
) -> Result<Measurement, ExperimentsError> {
    if iterations == 0 || rounds == 0 {
        return Err(ExperimentsError::Option(
            "a bare measurement needs at least one iteration and one round".into(),
        ));
    }
    if RUN.used.swap(true, SeqCst) {
        return Err(ExperimentsError::Option(
            "a bare measurement runs once per process (it leaves its handlers behind)".into(),
        ));
    }
    let measurement = match event {
        BareEvent::GeneralProtection
        | BareEvent::SoftwareBreakpoint
        | BareEvent::HardwareBreakpoint
        | BareEvent::PageFault
        | BareEvent::PageFaultMap
        | BareEvent::SeccompSigsys => trapping(event, iterations, rounds),
        BareEvent::AsyncSignal => async_signal(iterations, rounds),
        BareEvent::BreakpointMove => breakpoint_move(iterations, rounds),
        BareEvent::FutexHandoff => futex_handoff(iterations, rounds, Partner::Thread),
        BareEvent::FutexHandoffProcess => futex_handoff(iterations, rounds, Partner::Process),
        BareEvent::FutexHandoffProcessFiltered => {
            futex_handoff(iterations, rounds, Partner::ProcessFiltered)
        }
    }?;
    if event.counted_exactly() && measurement.events != u64::from(iterations) * u64::from(rounds) {
        return Err(ExperimentsError::Bare(format!(
            "{}: {} events in {rounds} rounds of {iterations}",
            event.name(),
            measurement.events
        )));
    }
    Ok(measurement)
}

// ---------------------------------------------------------------------------
// The 32-bit guest loops.

/// A loop of 32-bit code. ECX (set on entry) counts the events; the loop
/// ends on a `hlt` at `exit`.
struct GuestLoop {
    code: &'static [u8],
    /// Offset of the EIP the event's signal reports.
    event: u32,
    /// Bytes the handler skips from that EIP (0: resume there).
    skip: u32,
    /// Offset of the exit marker.
    exit: u32,
}

/// #GP: CLI at CPL 3 with IOPL 0.
const GP_LOOP: GuestLoop = GuestLoop {
    code: &[
        0xfa, //       0: cli
        0x49, //       1: dec ecx
        0x75, 0xfc, // 2: jnz 0
        0xf4, //       4: hlt           (exit, #GP)
    ],
    event: 0,
    skip: 1,
    exit: 4,
};

/// #PF: EBP points at a page that is not mapped. `[ebp]` addresses
/// through SS, the one data segment the entry loads (DS stays null, as in
/// a 64-bit process).
const PF_LOOP: GuestLoop = GuestLoop {
    code: &[
        0x8b, 0x45, 0x00, // 0: mov eax, [ebp+0]
        0x49, //             3: dec ecx
        0x75, 0xfa, //       4: jnz 0
        0xf4, //             6: hlt     (exit, #GP)
    ],
    event: 0,
    skip: 3,
    exit: 6,
};

/// #PF with a mapping made in the handler: EBP points at two pages that
/// are not mapped; the loop reads them in turn (EDI toggles between 0 and
/// one page), and the handler maps the page that faulted and unmaps the
/// other, so each read faults once and the read is retried. (Not munmap
/// from the loop: `int $0x80` is itself a slow exception on our hosts.)
const PF_MAP_LOOP: GuestLoop = GuestLoop {
    code: &[
        0x8b, 0x44, 0x3d, 0x00, //             0: mov eax, [ebp+edi]
        0x81, 0xf7, 0x00, 0x10, 0x00, 0x00, // 4: xor edi, 0x1000
        0x49, //                              10: dec ecx
        0x75, 0xf3, //                        11: jnz 0
        0xf4, //                              13: hlt     (exit, #GP)
    ],
    event: 0,
    skip: 0,
    exit: 13,
};

/// #DB: the perf breakpoint sits on the NOP; a hit reports its EIP (a
/// fault-like trap) and resumes there with RF set.
const DB_LOOP: GuestLoop = GuestLoop {
    code: &[
        0x90, //       0: nop           (breakpoint)
        0x49, //       1: dec ecx
        0x75, 0xfc, // 2: jnz 0
        0xf4, //       4: hlt           (exit, #GP)
    ],
    event: 0,
    skip: 0,
    exit: 4,
};

/// INT3: the trap reports the EIP after it, where the loop goes on.
const INT3_LOOP: GuestLoop = GuestLoop {
    code: &[
        0xcc, //       0: int3
        0x49, //       1: dec ecx
        0x75, 0xfc, // 2: jnz 0
        0xf4, //       4: hlt           (exit, #GP)
    ],
    event: 1,
    skip: 0,
    exit: 4,
};

/// SIGSYS: i386 getpid (20) through `int $0x80`; the trap reports the EIP
/// after it. EAX is reloaded as the trapped call leaves -ENOSYS in it.
const SIGSYS_LOOP: GuestLoop = GuestLoop {
    code: &[
        0xb8, 0x14, 0x00, 0x00, 0x00, // 0: mov eax, 20
        0xcd, 0x80, //                   5: int 0x80
        0x49, //                         7: dec ecx
        0x75, 0xf6, //                   8: jnz 0
        0xf4, //                        10: hlt      (exit, #GP)
    ],
    event: 7,
    skip: 0,
    exit: 10,
};

/// The asynchronous signals' victim: a loop that reads the TSC on every
/// turn and records each gap of at least ESI ticks between two readings
/// (the time a signal took away from it) at `[ebp + edi*4]` through SS,
/// until ECX turns are done or [`GAP_CAPACITY`] gaps are recorded. EDI
/// ends as the count of gaps.
const GAP_LOOP: GuestLoop = GuestLoop {
    code: &[
        0x0f, 0x31, //                         0: rdtsc
        0x89, 0xc3, //                         2: mov ebx, eax
        0x0f, 0x31, //                         4: rdtsc
        0x89, 0xc2, //                         6: mov edx, eax
        0x29, 0xd8, //                         8: sub eax, ebx
        0x89, 0xd3, //                        10: mov ebx, edx
        0x39, 0xf0, //                        12: cmp eax, esi
        0x72, 0x0d, //                        14: jb 29
        0x89, 0x44, 0xbd, 0x00, //            16: mov [ebp+edi*4], eax
        0x47, //                              20: inc edi
        0x81, 0xff, 0x00, 0x10, 0x00, 0x00, //21: cmp edi, GAP_CAPACITY
        0x73, 0x03, //                        27: jae 32
        0x49, //                              29: dec ecx
        0x75, 0xe4, //                        30: jnz 4
        0xf4, //                              32: hlt      (exit, #GP)
    ],
    event: 0,
    skip: 0,
    exit: 32,
};

/// Gaps the gap loop records at most (the immediate in its code).
const GAP_CAPACITY: usize = 0x1000;
/// Pages of the gap buffer.
const GAP_PAGES: usize = GAP_CAPACITY * 4 / PAGE;

/// Where the loops live (guest-virtual, which is host-virtual below
/// 4 GiB), in pages from [`LOW_BASE`]: the code, the stack, two pages
/// left unmapped for the page faults, the gap buffer. Guest RAM holds the
/// same pages at the same offsets.
const LOW_BASE: u32 = 0x0100_0000;
const CODE_PAGE: usize = 0;
const STACK_PAGE: usize = 1;
const FAULT_PAGE: usize = 2;
const GAP_PAGE: usize = 4;
const LOW_PAGES: usize = GAP_PAGE + GAP_PAGES;

/// The loops' code and stack segments: flat shadows in the LDT slots the
/// world gives a guest's CS and SS.
fn code_selector() -> u16 {
    slot_selector(SegReg::Cs)
}

fn data_selector() -> u16 {
    slot_selector(SegReg::Ss)
}

const GP_VECTOR: u8 = 13;
const PF_VECTOR: u8 = 14;
const EFLAGS_RF: u32 = 1 << 16;
/// EFLAGS on entry: IF and the always-one bit 1; TF, DF, AC and RF clear.
const ENTRY_EFLAGS: u32 = 0x202;

const PAGE: usize = 4096;

// ---------------------------------------------------------------------------
// State shared with the signal handler.

/// What the handler and the measuring code share, as atomics: the handler
/// runs in the measuring thread, between two of its instructions.
struct Run {
    used: AtomicBool,
    /// Index in [`BareEvent::ALL`] of the event being counted.
    event: AtomicU32,
    /// ECX on entry: the loop count.
    entry_ecx: AtomicU32,
    /// EBP on entry: the fault page, or the gap buffer.
    entry_ebp: AtomicU32,
    /// ESI on entry: the gap loop's threshold.
    entry_esi: AtomicU32,
    /// EDI when the loop was left: the gap loop's count.
    exit_edi: AtomicU32,
    event_eip: AtomicU32,
    skip: AtomicU32,
    exit_eip: AtomicU32,
    /// Events counted in this run.
    hits: AtomicU64,
    /// Timer signals beyond which the handler stops the timer.
    cap: AtomicU64,
    /// Set when the loop has been left.
    left: AtomicBool,
    /// A trap of the loop that was not the event (its vector, 0xff for one
    /// that is not a fault, and EIP), with `stray` set.
    stray: AtomicBool,
    stray_vector: AtomicU32,
    stray_eip: AtomicU32,
}

static RUN: Run = Run {
    used: AtomicBool::new(false),
    event: AtomicU32::new(u32::MAX),
    entry_ecx: AtomicU32::new(0),
    entry_ebp: AtomicU32::new(0),
    entry_esi: AtomicU32::new(0),
    exit_edi: AtomicU32::new(0),
    event_eip: AtomicU32::new(0),
    skip: AtomicU32::new(0),
    exit_eip: AtomicU32::new(0),
    hits: AtomicU64::new(0),
    cap: AtomicU64::new(u64::MAX),
    left: AtomicBool::new(false),
    stray: AtomicBool::new(false),
    stray_vector: AtomicU32::new(0),
    stray_eip: AtomicU32::new(0),
};

/// `gregs` of a 64-bit signal context.
type Gregs = [libc::greg_t; 23];

/// What the handler owns: the 64-bit context saved on entry, and what the
/// events act on.
struct Handler {
    saved: Option<(Gregs, GuestSegmentRegisters)>,
    /// The loops' guest RAM (the page-fault-and-map event maps it).
    ram: Rc<GuestRam>,
    /// The timer of the asynchronous-signal measurement.
    timer: Option<Rc<KickTimer>>,
}

impl Handler {
    /// Async-signal-safe: atomics, register edits and system calls only.
    fn handle(&mut self, frame: &mut SignalFrame<'_>) {
        let (trap, mut registers) = trap::decode(frame);
        if registers.selectors[1] != code_selector() {
            match trap {
                Trap::Enter => self.enter(frame),
                // The few 64-bit instructions of a timed round: not counted.
                Trap::Kick => {}
                // A fault of this module's own 64-bit code: a bug, which
                // must not repeat for ever.
                _ => std::process::abort(),
            }
            return;
        }
        if matches!(
            trap,
            Trap::Fault {
                vector: GP_VECTOR,
                ..
            }
        ) && registers.eip == RUN.exit_eip.load(SeqCst)
        {
            self.leave(frame, &registers);
            return;
        }
        let at_event = registers.eip == RUN.event_eip.load(SeqCst);
        let event = usize::try_from(RUN.event.load(SeqCst))
            .ok()
            .and_then(|index| BareEvent::ALL.get(index).copied());
        let expected = match (event, trap) {
            (Some(BareEvent::GeneralProtection), Trap::Fault { vector, .. }) => {
                vector == GP_VECTOR && at_event
            }
            (Some(BareEvent::PageFault | BareEvent::PageFaultMap), Trap::Fault { vector, .. }) => {
                vector == PF_VECTOR && at_event
            }
            (Some(BareEvent::SoftwareBreakpoint), Trap::SoftwareBreakpoint)
            | (Some(BareEvent::HardwareBreakpoint), Trap::Breakpoint)
            | (Some(BareEvent::SeccompSigsys), Trap::SystemCall { .. }) => at_event,
            (Some(BareEvent::AsyncSignal), Trap::Kick) => true,
            _ => false,
        };
        let mapped = match (event, trap) {
            (
                Some(BareEvent::PageFaultMap),
                Trap::Fault {
                    address: Some(address),
                    ..
                },
            ) if expected => self.map_fault_page(address),
            _ => true,
        };
        if !expected || !mapped {
            let vector = match trap {
                Trap::Fault { vector, .. } => u32::from(vector),
                _ => 0xff,
            };
            RUN.stray_vector.store(vector, SeqCst);
            RUN.stray_eip.store(registers.eip, SeqCst);
            RUN.stray.store(true, SeqCst);
            self.leave(frame, &registers);
            return;
        }
        registers.eip = registers.eip.wrapping_add(RUN.skip.load(SeqCst));
        if event == Some(BareEvent::HardwareBreakpoint) {
            // Resume on the breakpointed instruction without hitting it again.
            registers.eflags |= EFLAGS_RF;
        }
        trap::apply(frame, &registers);
        let hits = RUN.hits.fetch_add(1, SeqCst) + 1;
        if hits >= RUN.cap.load(SeqCst)
            && let Some(timer) = &self.timer
        {
            // Signals faster than handled: stop them, the round fails.
            let _ = timer.arm(None);
        }
    }

    /// Maps guest RAM's fault page where the loop's read faulted
    /// (`guest_virt`) and unmaps the other of the two fault pages, as the
    /// shadow maps a hidden fault and undoes it on INVLPG. False if the
    /// host refused, or the fault was elsewhere.
    fn map_fault_page(&self, guest_virt: u32) -> bool {
        let first = low_address(FAULT_PAGE);
        let second = low_address(FAULT_PAGE + 1);
        let page = guest_virt & !0xfff;
        let other = match page {
            _ if page == first => second,
            _ if page == second => first,
            _ => return false,
        };
        let phys = page_offset(FAULT_PAGE);
        self.ram.unmap_at(other, 4096).is_ok() && self.ram.map_at(page, phys, 4096, true).is_ok()
    }

    /// Saves the interrupted 64-bit context and makes sigreturn go to the
    /// loop's first instruction in 32-bit mode.
    fn enter(&mut self, frame: &mut SignalFrame<'_>) {
        self.saved = Some((frame.context.uc_mcontext.gregs, *frame.segments));
        let mut gpr = [0; 8];
        gpr[1] = RUN.entry_ecx.load(SeqCst);
        // The stack page's top, 16-byte aligned as a call would leave it.
        gpr[4] = low_address(STACK_PAGE + 1) - 16;
        gpr[5] = RUN.entry_ebp.load(SeqCst);
        gpr[6] = RUN.entry_esi.load(SeqCst);
        let registers = HostRegisters {
            gpr,
            eip: low_address(CODE_PAGE),
            rip_high: 0,
            eflags: ENTRY_EFLAGS,
            // ES, CS, SS, DS, FS, GS: the loops address memory through SS
            // only.
            selectors: [0, code_selector(), data_selector(), 0, 0, 0],
            fs_base: frame.segments.fs_base,
            gs_base: frame.segments.gs_base,
        };
        trap::apply(frame, &registers);
    }

    /// Makes sigreturn resume the 64-bit context saved on entry: the
    /// raising call returns.
    fn leave(&mut self, frame: &mut SignalFrame<'_>, registers: &HostRegisters) {
        RUN.exit_edi.store(registers.gpr[7], SeqCst);
        if let Some((gregs, segments)) = self.saved.take() {
            frame.context.uc_mcontext.gregs = gregs;
            *frame.segments = segments;
        }
        RUN.left.store(true, SeqCst);
    }
}

/// The guest-virtual address of low page `page`.
fn low_address(page: usize) -> u32 {
    LOW_BASE + page_offset(page)
}

/// Byte offset of page `page`.
fn page_offset(page: usize) -> u32 {
    u32::try_from(page * PAGE).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------
// Set-up.

/// Guest RAM for the loops, the loop's code copied in and mapped below
/// 4 GiB with its stack and gap buffer; the fault pages are left unmapped.
fn map_low_pages(code: &[u8]) -> Result<GuestRam, WorldError> {
    // The world's own check: nothing of this process lives below 4 GiB,
    // so the fixed mappings replace nothing.
    maps::check_nothing_below_4g()?;
    let ram = GuestRam::create(LOW_PAGES * PAGE)?;
    if code.len() > PAGE || !ram.write(page_offset(CODE_PAGE), code) {
        return Err(WorldError::RamSize(code.len()));
    }
    let page = page_offset(1);
    ram.map_at(low_address(CODE_PAGE), page_offset(CODE_PAGE), page, false)?;
    ram.map_at(low_address(STACK_PAGE), page_offset(STACK_PAGE), page, true)?;
    let gaps = page_offset(GAP_PAGES);
    ram.map_at(low_address(GAP_PAGE), page_offset(GAP_PAGE), gaps, true)?;
    Ok(ram)
}

/// The first `count` gaps the gap loop recorded.
fn gaps(ram: &GuestRam, count: usize) -> Vec<u32> {
    let count = count.min(GAP_CAPACITY);
    let mut bytes = vec![0u8; count * 4];
    if !ram.read(page_offset(GAP_PAGE), &mut bytes) {
        return Vec::new();
    }
    bytes
        .chunks_exact(4)
        .map(|gap| u32::from_le_bytes([gap[0], gap[1], gap[2], gap[3]]))
        .collect()
}

/// Flat 4 GiB 32-bit code and data segments, DPL 3, in the LDT slots of
/// CS and SS: the shadows of a guest's flat user segments, made as the
/// world makes them.
fn install_flat_segments() -> Result<(), WorldError> {
    let flat = |raw: u64| {
        LdtEntry::shadow(&Descriptor::from_raw(raw)).ok_or(WorldError::AddressSpace(format!(
            "descriptor {raw:#018x} has no LDT shadow"
        )))
    };
    // Present, DPL 3, 32-bit, 4 KiB granular, base 0, limit 4 GiB:
    // execute/read code and read/write data.
    let code = flat(0x00cf_fa00_0000_ffff)?;
    let data = flat(0x00cf_f200_0000_ffff)?;
    ldt::write_entry(code_selector() >> 3, &code)
        .and_then(|()| ldt::write_entry(data_selector() >> 3, &data))
        .map_err(|error| match error {
            WorldError::Host { source, .. } => WorldError::MissingFeature {
                feature: "32-bit LDT segments (modify_ldt)",
                hint: "needs a kernel built with CONFIG_MODIFY_LDT_SYSCALL",
                source,
            },
            other => other,
        })
}

/// Where `event` is in [`BareEvent::ALL`], as the handler finds it.
fn event_index(event: BareEvent) -> u32 {
    BareEvent::ALL
        .iter()
        .position(|candidate| *candidate == event)
        .and_then(|index| u32::try_from(index).ok())
        .unwrap_or(u32::MAX)
}

/// Maps the loop, installs its segments and the world's signal handling;
/// returns the loop's guest RAM.
fn prepare(
    event: BareEvent,
    guest: &GuestLoop,
    timer: Option<Rc<KickTimer>>,
) -> Result<Rc<GuestRam>, WorldError> {
    let ram = Rc::new(map_low_pages(guest.code)?);
    install_flat_segments()?;
    RUN.event.store(event_index(event), SeqCst);
    RUN.entry_ebp.store(low_address(FAULT_PAGE), SeqCst);
    RUN.event_eip
        .store(low_address(CODE_PAGE) + guest.event, SeqCst);
    RUN.skip.store(guest.skip, SeqCst);
    RUN.exit_eip
        .store(low_address(CODE_PAGE) + guest.exit, SeqCst);
    RUN.cap.store(u64::MAX, SeqCst);
    let mut handler = Handler {
        saved: None,
        ram: Rc::clone(&ram),
        timer,
    };
    signal::install(Box::new(move |frame| handler.handle(frame)), &SIGNALS)?;
    Ok(ram)
}

/// Runs the loop once for `count` turns: its time as seen from 64-bit
/// code, and the events the handler counted.
fn run_loop(count: u32) -> Result<(Duration, u64), WorldError> {
    RUN.entry_ecx.store(count, SeqCst);
    RUN.hits.store(0, SeqCst);
    RUN.left.store(false, SeqCst);
    RUN.stray.store(false, SeqCst);
    let start = Instant::now();
    // The handler runs the loop and makes this call return as if nothing
    // had happened in between, as the world enters its guest.
    signal::raise(ENTER_SIGNAL)?;
    let elapsed = start.elapsed();
    if !RUN.left.load(SeqCst) {
        return Err(WorldError::Host {
            what: "entering the 32-bit loop",
            source: std::io::Error::other("the enter signal did not run it"),
        });
    }
    if RUN.stray.load(SeqCst) {
        return Err(stray_error());
    }
    Ok((elapsed, RUN.hits.load(SeqCst)))
}

/// Why the loop trapped other than with the event.
fn stray_error() -> WorldError {
    let vector = RUN.stray_vector.load(SeqCst);
    let eip = RUN.stray_eip.load(SeqCst);
    let int80_eip = RUN.event_eip.load(SeqCst).wrapping_sub(2);
    let sigsys = RUN.event.load(SeqCst) == event_index(BareEvent::SeccompSigsys);
    if sigsys && vector == u32::from(GP_VECTOR) && eip == int80_eip {
        return WorldError::MissingFeature {
            feature: "i386 system calls (int $0x80) in 64-bit processes",
            hint: "needs CONFIG_IA32_EMULATION, not turned off with ia32_emulation=0",
            source: std::io::Error::other("int $0x80 raised #GP"),
        };
    }
    WorldError::Host {
        what: "the 32-bit loop",
        source: std::io::Error::other(format!(
            "a trap (vector {vector:#x}) at eip {eip:#x}, not the measured event"
        )),
    }
}

fn nanoseconds(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e9
}

pub(crate) fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    let middle = samples.len() / 2;
    match (samples.get(middle.wrapping_sub(1)), samples.get(middle)) {
        (Some(low), Some(high)) if samples.len().is_multiple_of(2) => f64::midpoint(*low, *high),
        (_, Some(middle)) => *middle,
        _ => f64::NAN,
    }
}

/// Rounds of `iterations` events plus one warm-up round, dropped. Each
/// round gives its time and the events it counted.
fn rounds_of(
    iterations: u32,
    rounds: u32,
    mut round: impl FnMut() -> Result<(Duration, u64), ExperimentsError>,
) -> Result<Measurement, ExperimentsError> {
    let mut samples = Vec::new();
    let mut events = 0;
    for index in 0..=rounds {
        let (elapsed, counted) = round()?;
        if index > 0 {
            samples.push(nanoseconds(elapsed) / f64::from(iterations));
            events += counted;
        }
    }
    Ok(Measurement {
        ns: median(&mut samples),
        events,
    })
}

// ---------------------------------------------------------------------------
// The measurements.

fn trapping(
    event: BareEvent,
    iterations: u32,
    rounds: u32,
) -> Result<Measurement, ExperimentsError> {
    let guest = match event {
        BareEvent::GeneralProtection => &GP_LOOP,
        BareEvent::SoftwareBreakpoint => &INT3_LOOP,
        BareEvent::HardwareBreakpoint => &DB_LOOP,
        BareEvent::PageFault => &PF_LOOP,
        BareEvent::PageFaultMap => &PF_MAP_LOOP,
        _ => &SIGSYS_LOOP,
    };
    let _ram = prepare(event, guest, None)?;
    // Kept until the rounds are over: dropping it closes the perf event.
    let _breakpoint = if event == BareEvent::HardwareBreakpoint {
        let mut slots = Breakpoints::open(1)?;
        slots.arm(&[GuestVirt(low_address(CODE_PAGE) + guest.event)])?;
        Some(slots)
    } else {
        None
    };
    if event == BareEvent::SeccompSigsys {
        // The world's own prefix, with everything it does not trap allowed
        // (the measuring process is not confined).
        let mut program = seccomp::guest_trap_prefix();
        program.push(seccomp::statement(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ALLOW,
        ));
        seccomp::install(&program)?;
    }
    rounds_of(iterations, rounds, || {
        let (elapsed, hits) = run_loop(iterations)?;
        if hits != u64::from(iterations) {
            return Err(ExperimentsError::Bare(format!(
                "{hits} of {iterations} {} events arrived",
                event.name()
            )));
        }
        Ok((elapsed, hits))
    })
}

/// The timer's period in the asynchronous-signal measurement: far above a
/// signal's cost, so each gap the loop sees is one signal.
const SIGNAL_PERIOD: Duration = Duration::from_micros(200);
/// Shorter gaps are not signals: a turn of the gap loop takes tens of
/// nanoseconds.
const GAP_THRESHOLD_NS: f64 = 500.0;

/// The gap method: the 32-bit loop timestamps every turn, so each signal
/// shows as one gap between two readings: the whole round trip from the
/// interrupt that raised it to the loop's next instruction. The loop also
/// sees gaps that are not signals: the host's (and its hypervisor's) own
/// interruptions, on these machines a third of all gaps and an order of
/// magnitude shorter than a signal, and the rare preemption, far longer.
/// So a round's cost is [`median_of_largest`] of its gaps, as many as
/// signals were counted; a round with fewer gaps than signals lost some
/// and is an error.
fn async_signal(iterations: u32, rounds: u32) -> Result<Measurement, ExperimentsError> {
    let timer = Rc::new(KickTimer::create(KICK_SIGNAL)?);
    let ram = prepare(BareEvent::AsyncSignal, &GAP_LOOP, Some(Rc::clone(&timer)))?;
    RUN.entry_ebp.store(low_address(GAP_PAGE), SeqCst);
    let tsc_per_ns = tsc_per_ns();
    // Thresholds of a few thousand ticks.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let threshold = (GAP_THRESHOLD_NS * tsc_per_ns).clamp(1.0, f64::from(u32::MAX)) as u32;
    RUN.entry_esi.store(threshold, SeqCst);
    // How long a turn takes, to size the runs.
    let probe = 1 << 20;
    let (spin, _) = run_loop(probe)?;
    let turn_ns = (nanoseconds(spin) / f64::from(probe)).max(0.01);
    let capacity = u32::try_from(GAP_CAPACITY * 3 / 4).unwrap_or(u32::MAX);
    let signals = iterations.min(capacity);
    let turns =
        (f64::from(signals) * nanoseconds(SIGNAL_PERIOD) / turn_ns).clamp(1.0, f64::from(u32::MAX));
    // Clamped to u32's range just above.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let turns = turns as u32;
    let mut samples = Vec::new();
    let mut events = 0;
    for round in 0..=rounds {
        let cap = 4 * u64::from(signals) + 64;
        RUN.cap.store(cap, SeqCst);
        timer.arm_periodic(SIGNAL_PERIOD)?;
        let run = run_loop(turns);
        timer.arm(None)?;
        RUN.cap.store(u64::MAX, SeqCst);
        let (_, hits) = run?;
        if hits == 0 {
            return Err(ExperimentsError::Bare(
                "no timer signal interrupted the 32-bit loop".into(),
            ));
        }
        if hits >= cap {
            return Err(ExperimentsError::Bare(
                "the timer's signals came faster than handled".into(),
            ));
        }
        let count = usize::try_from(RUN.exit_edi.load(SeqCst))
            .unwrap_or(GAP_CAPACITY)
            .min(GAP_CAPACITY);
        let signals = usize::try_from(hits).unwrap_or(usize::MAX);
        if count < signals {
            return Err(ExperimentsError::Bare(format!(
                "{hits} timer signals but {count} gaps in the 32-bit loop"
            )));
        }
        let mut gaps: Vec<f64> = gaps(&ram, count)
            .into_iter()
            .map(|ticks| f64::from(ticks) / tsc_per_ns)
            .collect();
        if round > 0 {
            samples.push(median_of_largest(&mut gaps, signals));
            events += hits;
        }
    }
    Ok(Measurement {
        ns: median(&mut samples),
        events,
    })
}

/// The median of the `count` largest `samples`: the events' cost when a
/// run's samples are `count` events plus shorter noise (and some longer
/// outliers, which the median ignores). Sorts `samples`.
#[must_use]
pub fn median_of_largest(samples: &mut [f64], count: usize) -> f64 {
    samples.sort_by(f64::total_cmp);
    let from = samples.len().saturating_sub(count.max(1));
    median(&mut samples[from..])
}

/// TSC ticks per nanosecond, over 20 ms of CLOCK_MONOTONIC.
#[must_use]
pub fn tsc_per_ns() -> f64 {
    let start = Instant::now();
    let tsc_start = world_switch::channel::read_tsc();
    while start.elapsed() < Duration::from_millis(20) {
        std::hint::spin_loop();
    }
    let ticks = world_switch::channel::read_tsc().wrapping_sub(tsc_start);
    // Tick counts of 20 ms are far below 2^52.
    #[allow(clippy::cast_precision_loss)]
    let rate = ticks as f64 / nanoseconds(start.elapsed());
    rate.max(1e-3)
}

fn breakpoint_move(iterations: u32, rounds: u32) -> Result<Measurement, ExperimentsError> {
    let mut breakpoints = Breakpoints::open(1)?;
    // Two addresses in the never-mapped first 64 KiB: the slot moves
    // between them and never fires.
    let places = [GuestVirt(0x2000), GuestVirt(0x3000)];
    breakpoints.arm(&places[..1])?;
    let mut at = 0;
    rounds_of(iterations, rounds, || {
        let ioctls = breakpoints.ioctls;
        let start = Instant::now();
        for _ in 0..iterations {
            at ^= 1;
            breakpoints.arm(&places[at..=at])?;
        }
        let elapsed = start.elapsed();
        Ok((elapsed, breakpoints.ioctls - ioctls))
    })
}

/// Who the futex handoffs go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Partner {
    /// A thread of this process.
    Thread,
    /// Another process.
    Process,
    /// Another process, this one under the host's seccomp filter.
    ProcessFiltered,
}

fn futex_handoff(
    iterations: u32,
    rounds: u32,
    partner: Partner,
) -> Result<Measurement, ExperimentsError> {
    let affinity_error = |what| {
        move |errno: nix::Error| {
            ExperimentsError::from(WorldError::Host {
                what,
                source: errno.into(),
            })
        }
    };
    let cpu = sched_getcpu().map_err(affinity_error("sched_getcpu"))?;
    let previous =
        sched_getaffinity(Pid::from_raw(0)).map_err(affinity_error("sched_getaffinity"))?;
    world_switch::spawn::pin_to(cpu)?;
    let result = match partner {
        Partner::Thread => handoffs(cpu, iterations, rounds),
        Partner::Process => process_handoffs(iterations, rounds, false),
        Partner::ProcessFiltered => process_handoffs(iterations, rounds, true),
    };
    // A filtered measurement cannot change its affinity any more (the
    // host's filter does not allow it); its process ends after it.
    if partner != Partner::ProcessFiltered {
        sched_setaffinity(Pid::from_raw(0), &previous)
            .map_err(affinity_error("sched_setaffinity"))?;
    }
    result
}

fn handoffs(cpu: usize, iterations: u32, rounds: u32) -> Result<Measurement, ExperimentsError> {
    let word = Arc::new(AtomicU32::new(0));
    let answers = Arc::new(AtomicU32::new(0));
    let total = u64::from(iterations) * (u64::from(rounds) + 1);
    let partner = {
        let word = Arc::clone(&word);
        let answers = Arc::clone(&answers);
        std::thread::Builder::new()
            .name("bare-futex".into())
            .spawn(move || {
                let pinned = world_switch::spawn::pin_to(cpu);
                for _ in 0..total {
                    answer(&word, &answers);
                }
                pinned
            })
            .map_err(|source| WorldError::Host {
                what: "spawning the futex partner thread",
                source,
            })?
    };
    let measurement = rounds_of(iterations, rounds, || {
        timed_handoffs(&word, &answers, iterations)
    });
    partner
        .join()
        .map_err(|_| ExperimentsError::Bare("the futex partner thread panicked".into()))??;
    measurement
}

/// `iterations` handoffs: their time, halved (a handoff is half a round
/// trip), and the answers the partner gave meanwhile.
fn timed_handoffs(
    word: &AtomicU32,
    answers: &AtomicU32,
    iterations: u32,
) -> Result<(Duration, u64), ExperimentsError> {
    let before = answers.load(SeqCst);
    let start = Instant::now();
    for _ in 0..iterations {
        hand_over(word);
    }
    let elapsed = start.elapsed() / 2;
    Ok((
        elapsed,
        u64::from(answers.load(SeqCst).wrapping_sub(before)),
    ))
}

/// Handoffs with a forked partner process (which inherits the pinning)
/// over two words of a shared region (the futex word and the partner's
/// count of answers); with `filtered`, this process installs the host's
/// seccomp filter first (for good: the measurement runs in a process of
/// its own).
fn process_handoffs(
    iterations: u32,
    rounds: u32,
    filtered: bool,
) -> Result<Measurement, ExperimentsError> {
    let region = SharedRegion::create(PAGE)?;
    let (Some(word), Some(answers)) = (region.word(0), region.word(1)) else {
        return Err(ExperimentsError::Bare("a page holds no two words".into()));
    };
    let total = u64::from(iterations) * (u64::from(rounds) + 1);
    let child = fork_partner(|| {
        for _ in 0..total {
            answer(word, answers);
        }
    })?;
    if filtered {
        host_filter::install(&host_filter::HostAllowed {
            launcher_socket: -1,
            // The partner stands for the launcher: the one child waited for.
            launcher_pid: child.as_raw(),
            pid: nix::unistd::getpid().as_raw(),
            images: Vec::new(),
            serial: None,
            display: false,
            gdb: None,
        })?;
    }
    let measurement = rounds_of(iterations, rounds, || {
        timed_handoffs(word, answers, iterations)
    });
    let _ = nix::sys::wait::waitpid(child, None);
    measurement
}

/// Runs `partner` in a forked child process, which then leaves at once.
#[allow(unsafe_code)]
fn fork_partner(partner: impl FnOnce()) -> Result<Pid, ExperimentsError> {
    // SAFETY: the child runs `partner`, which only answers on words of a
    // shared region (atomics and futex system calls, no allocation, no
    // lock another thread could hold), and leaves with _exit, never
    // returning into the caller's code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            partner();
            // SAFETY: ends the child at once, without the parent's exit
            // path.
            unsafe { libc::_exit(0) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(child),
        Err(errno) => Err(WorldError::Host {
            what: "fork of the futex partner",
            source: errno.into(),
        }
        .into()),
    }
}

/// Gives the word to the partner (odd) and waits until it is given back
/// (even).
fn hand_over(word: &AtomicU32) {
    let given = word.load(SeqCst).wrapping_add(1);
    word.store(given, SeqCst);
    futex::wake(word);
    while word.load(SeqCst) == given {
        futex::wait(word, given, None);
    }
}

/// Waits until the word is given (odd), counts the answer and gives it
/// back.
fn answer(word: &AtomicU32, answers: &AtomicU32) {
    loop {
        let now = word.load(SeqCst);
        if !now.is_multiple_of(2) {
            answers.fetch_add(1, SeqCst);
            word.store(now.wrapping_add(1), SeqCst);
            futex::wake(word);
            return;
        }
        futex::wait(word, now, None);
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn names_round_trip() {
        for event in BareEvent::ALL {
            assert_eq!(BareEvent::from_name(event.name()), Some(event));
            assert!(!event.describe().is_empty());
        }
        assert_eq!(BareEvent::from_name("nope"), None);
    }

    #[test]
    fn the_largest_samples_stand_for_the_events_among_shorter_noise() {
        // Three events of about 30 among noise of about 2, one outlier.
        let mut samples = [2.0, 31.0, 1.5, 29.0, 2.5, 30.0, 400.0, 1.0];
        assert!((median_of_largest(&mut samples, 4) - 30.5).abs() < 1e-9);
        assert!((median_of_largest(&mut [5.0, 1.0], 10) - 3.0).abs() < 1e-9);
        assert!(median_of_largest(&mut [], 3).is_nan());
    }

    #[test]
    fn the_median_of_an_even_count_is_the_middle_pair_s_mean() {
        assert!((median(&mut [4.0, 1.0, 3.0, 2.0]) - 2.5).abs() < 1e-9);
        assert!((median(&mut [5.0, 1.0, 3.0]) - 3.0).abs() < 1e-9);
        assert!(median(&mut []).is_nan());
    }

    /// Set in the environment of a child that measures: `NAME ITERATIONS
    /// ROUNDS`.
    const CHILD: &str = "BTVMM_BARE_CHILD";

    /// The child's side of [`measure_in_child`]: a test that measures only
    /// when [`CHILD`] says what (a measurement leaves handlers, LDT
    /// entries and filters in its process, so it gets a process of its
    /// own: this test binary again, running this test alone).
    #[test]
    fn bare_child() {
        let Ok(spec) = std::env::var(CHILD) else {
            return;
        };
        let fields: Vec<&str> = spec.split_whitespace().collect();
        let [name, iterations, rounds] = fields[..] else {
            panic!("{CHILD}={spec:?}");
        };
        let event = BareEvent::from_name(name).expect("an event");
        let parse = |text: &str| text.parse::<u32>().expect("a count");
        match measure(event, parse(iterations), parse(rounds)) {
            Ok(measured) => println!("bare-child ns={} events={}", measured.ns, measured.events),
            Err(error) => println!("bare-child error {error}"),
        }
    }

    /// Measures `event` in a child process and checks that it happened as
    /// often as measured.
    fn measure_in_child(event: BareEvent, iterations: u32, rounds: u32) -> Measurement {
        let output = Command::new(std::env::current_exe().expect("the test binary"))
            .args(["--exact", "bare::tests::bare_child", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(CHILD, format!("{} {iterations} {rounds}", event.name()))
            .output()
            .expect("run the child");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            // The harness may print the test's name before it, on the same
            // line.
            .find_map(|line| Some(line.split_once("bare-child ")?.1))
            .unwrap_or_else(|| {
                panic!(
                    "{}: the child reported nothing ({}): {}",
                    event.name(),
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                )
            });
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("{}: {line}", event.name()))
        };
        let measured = Measurement {
            ns: field("ns").parse().expect("a number"),
            events: field("events").parse().expect("a count"),
        };
        assert!(measured.ns.is_finite(), "{}: {line}", event.name());
        if event.counted_exactly() {
            assert_eq!(
                measured.events,
                u64::from(iterations) * u64::from(rounds),
                "{}",
                event.name()
            );
        } else {
            // The timer decides how many signals come: at least one in
            // every measured round, and fewer than the handler's cap
            // (measure fails a round that reaches it, or has fewer gaps
            // than signals).
            let cap = (4 * u64::from(iterations) + 64) * u64::from(rounds);
            assert!(
                (u64::from(rounds)..cap).contains(&measured.events),
                "{}: {} events",
                event.name(),
                measured.events
            );
        }
        measured
    }

    #[test]
    fn every_general_protection_fault_reaches_the_handler() {
        measure_in_child(BareEvent::GeneralProtection, 500, 3);
    }

    #[test]
    fn every_int3_reaches_the_handler() {
        measure_in_child(BareEvent::SoftwareBreakpoint, 500, 3);
    }

    #[test]
    fn every_hardware_breakpoint_hit_reaches_the_handler() {
        measure_in_child(BareEvent::HardwareBreakpoint, 200, 3);
    }

    #[test]
    fn every_page_fault_reaches_the_handler() {
        measure_in_child(BareEvent::PageFault, 500, 3);
    }

    #[test]
    fn every_page_fault_served_by_a_mapping_reaches_the_handler() {
        measure_in_child(BareEvent::PageFaultMap, 300, 3);
    }

    #[test]
    fn every_int_0x80_becomes_a_sigsys() {
        measure_in_child(BareEvent::SeccompSigsys, 200, 3);
    }

    #[test]
    fn every_breakpoint_move_is_one_ioctl() {
        measure_in_child(BareEvent::BreakpointMove, 500, 3);
    }

    #[test]
    fn every_futex_handoff_to_a_thread_is_answered() {
        measure_in_child(BareEvent::FutexHandoff, 500, 3);
    }

    #[test]
    fn every_futex_handoff_to_a_process_is_answered() {
        measure_in_child(BareEvent::FutexHandoffProcess, 300, 3);
    }

    #[test]
    fn every_futex_handoff_under_the_host_filter_is_answered() {
        measure_in_child(BareEvent::FutexHandoffProcessFiltered, 300, 3);
    }

    #[test]
    fn every_timer_signal_shows_as_a_gap_in_the_loop() {
        measure_in_child(BareEvent::AsyncSignal, 300, 3);
    }

    #[test]
    fn no_iterations_is_an_error_not_a_division_by_zero() {
        assert!(measure(BareEvent::GeneralProtection, 0, 3).is_err());
        assert!(measure(BareEvent::GeneralProtection, 3, 0).is_err());
    }
}
