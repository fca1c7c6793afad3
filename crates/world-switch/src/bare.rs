//! The bare cost of host traps on the running host: the floor that
//! btvmm's own paths are compared against (`btvmm calibrate`, DESIGN.md
//! section 6).
//!
//! Each trapping event comes from real 32-bit code at CPL 3, as a guest's
//! would: a tiny loop, hand-assembled below, in a page mapped below 4 GiB
//! and run through flat 32-bit code and data segments in the host LDT. The
//! loop is entered and left without assembly of our own: a signal raised
//! in 64-bit code has its handler save the 64-bit context and rewrite CS,
//! SS, EIP, ESP and EFLAGS to the loop's; the loop ends on a `hlt`, whose
//! #GP lets the handler put the saved 64-bit context back, so the raising
//! call simply returns. The handler is plain Rust: the loop never touches
//! FS or GS, so the 64-bit thread pointer still holds when a signal
//! interrupts it (DESIGN.md section 7), and it never loads DS or ES either
//! (64-bit processes run with null DS and ES, which is why the page-fault
//! loop reads through SS).
//!
//! A round is timed in 64-bit code around one entry and one exit, and
//! divided by its events; the entry and exit (two signals) are not
//! subtracted: with thousands of events per round they are well under 1%.
//! The handler's own bookkeeping (a few atomic operations) is part of the
//! cost, as the monitor's dispatch would be. One warm-up round is dropped
//! and the median of the rest reported.
//!
//! Everything here changes process-wide state (signal handlers, the LDT, a
//! seccomp filter that cannot be removed), so [`measure`] belongs in a
//! process made for it: the calibrate command runs each event in a fresh
//! child (`btvmm __bare NAME`).

use std::ffi::{c_int, c_void};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use btvmm_core::GuestVirt;
use nix::sched::{CpuSet, sched_getaffinity, sched_getcpu, sched_setaffinity};
use nix::unistd::Pid;
use seccompiler::{BpfProgram, sock_filter};

use btvmm_core::descriptor::Descriptor;

use crate::WorldError;
use crate::shadow::LdtEntry;
use crate::sys::perf::Breakpoints;
use crate::sys::{futex, ldt, seccomp};

/// A bare host event whose round trip is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareEvent {
    /// #GP from 32-bit CPL-3 code (e.g. `cli`) -> SIGSEGV -> handler skips
    /// the instruction -> sigreturn.
    GeneralProtection,
    /// A perf hardware execute breakpoint hit in 32-bit code -> SIGTRAP
    /// (si_code TRAP_PERF) -> handler sets RF -> sigreturn.
    HardwareBreakpoint,
    /// #PF from 32-bit code reading a PROT_NONE page -> SIGSEGV -> handler
    /// skips -> sigreturn.
    PageFault,
    /// #PF from 32-bit code reading an unmapped page -> SIGSEGV -> handler
    /// unmaps the page read before and maps a memfd page at this one (mmap
    /// MAP_FIXED) -> sigreturn, the read completes: what a hidden fault and
    /// the INVLPG that undoes it cannot do without.
    PageFaultMap,
    /// `int $0x80` from 32-bit code under a seccomp filter that traps i386
    /// system calls -> SIGSYS -> sigreturn.
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
    /// An asynchronous signal (sent by a POSIX timer or tgkill from another
    /// thread) interrupting a 32-bit loop -> handler -> sigreturn; cost per
    /// signal by the difference method (loop time with signals minus
    /// without, divided by the number of signals).
    AsyncSignal,
}

impl BareEvent {
    /// Every event, in report order.
    pub const ALL: [BareEvent; 10] = [
        BareEvent::GeneralProtection,
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
            BareEvent::HardwareBreakpoint => {
                "perf execute breakpoint in 32-bit code -> SIGTRAP -> set RF -> sigreturn"
            }
            BareEvent::PageFault => {
                "#PF (read of a PROT_NONE page) in 32-bit code -> SIGSEGV -> skip -> sigreturn"
            }
            BareEvent::PageFaultMap => {
                "#PF (unmapped page) -> SIGSEGV -> munmap + mmap of a memfd page -> sigreturn"
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
                "POSIX timer signal interrupting a 32-bit loop -> handler -> sigreturn"
            }
        }
    }

    /// The event with this [`name`](Self::name).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|event| event.name() == name)
    }
}

/// Nanoseconds per event, median of `rounds` rounds of `iterations` events
/// each.
///
/// Installs signal handlers, an LDT entry, perf events and (for
/// [`BareEvent::SeccompSigsys`]) a seccomp filter in the CALLING PROCESS:
/// call it only in a process made for the purpose (the calibrate command
/// runs each event in a fresh child process: `btvmm __bare NAME`). Signal
/// handlers, the signal stack and the signal mask are put back on return;
/// the LDT entries and the seccomp filter stay. The futex handoff pins the
/// calling thread to its CPU while it runs.
pub fn measure(event: BareEvent, iterations: u32, rounds: u32) -> Result<f64, WorldError> {
    if iterations == 0 || rounds == 0 {
        return Err(WorldError::Host {
            what: "a bare measurement",
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "needs at least one iteration and one round",
            ),
        });
    }
    if RUN.busy.swap(true, SeqCst) {
        return Err(WorldError::Host {
            what: "a bare measurement",
            source: std::io::Error::other("another one is running in this process"),
        });
    }
    let result = match event {
        BareEvent::GeneralProtection
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
    };
    RUN.busy.store(false, SeqCst);
    result
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

/// #PF: EBP points at a PROT_NONE page. `[ebp]` addresses through SS, the
/// one data segment the entry loads (DS is null in a 64-bit process).
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
/// Pages of the gap buffer, after the loop's three.
const GAP_PAGES: usize = GAP_CAPACITY * 4 / PAGE;

/// Host LDT entries of the flat 32-bit code and data segments.
const CODE_INDEX: u16 = 1;
const DATA_INDEX: u16 = 2;
/// Their selectors: TI = LDT, RPL 3.
const CODE_SELECTOR: u16 = (CODE_INDEX << 3) | 0b111;
const DATA_SELECTOR: u16 = (DATA_INDEX << 3) | 0b111;

/// Raised in 64-bit code to enter a loop.
const ENTER_SIGNAL: c_int = libc::SIGUSR2;
/// Sent by the POSIX timer of the asynchronous-signal measurement.
const TIMER_SIGNAL: c_int = libc::SIGALRM;
/// Every signal the handler takes: the events, the exit, and any other
/// fault the loop might raise, which ends the run with an error.
const HANDLED: [c_int; 8] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGTRAP,
    libc::SIGSYS,
    ENTER_SIGNAL,
    TIMER_SIGNAL,
];

const GP_VECTOR: u64 = 13;
const PF_VECTOR: u64 = 14;
const EFLAGS_RF: u64 = 1 << 16;
/// EFLAGS on entry: IF and the always-one bit 1; TF, DF, AC and RF clear.
const ENTRY_EFLAGS: u64 = 0x202;

const PAGE: usize = 4096;
/// The signal stack: room for a few signal frames with the largest XSAVE
/// areas.
const SIGNAL_STACK_SIZE: usize = 256 * 1024;

// ---------------------------------------------------------------------------
// State shared with the signal handler.

/// What the handler needs for a run, as atomics: they are
/// async-signal-safe, and a run lives in one thread (the handler runs in
/// it, never nested: every signal is blocked while it runs).
struct Run {
    busy: AtomicBool,
    /// Index in [`BareEvent::ALL`] of the event being counted.
    event: AtomicU32,
    entry_eip: AtomicU64,
    entry_esp: AtomicU64,
    /// ECX on entry: the loop count.
    entry_ecx: AtomicU64,
    /// EBP on entry: the PROT_NONE page, or the gap buffer.
    entry_ebp: AtomicU64,
    /// ESI on entry: the gap loop's threshold.
    entry_esi: AtomicU64,
    /// EDI when the loop was left: the gap loop's count.
    exit_edi: AtomicU64,
    /// The memfd the page-fault-and-map handler maps (-1: none).
    map_fd: AtomicI32,
    event_eip: AtomicU64,
    skip: AtomicU64,
    exit_eip: AtomicU64,
    /// Events counted in this run.
    hits: AtomicU64,
    /// Timer signals beyond which the handler stops the timer.
    cap: AtomicU64,
    /// The timer of the asynchronous-signal measurement, or null.
    timer: AtomicPtr<c_void>,
    /// Set when the loop has been left.
    left: AtomicBool,
    /// A signal the loop raised that was not the event (0: none), with its
    /// vector and EIP.
    stray_signal: AtomicI32,
    stray_vector: AtomicU64,
    stray_eip: AtomicU64,
}

static RUN: Run = Run {
    busy: AtomicBool::new(false),
    event: AtomicU32::new(u32::MAX),
    entry_eip: AtomicU64::new(0),
    entry_esp: AtomicU64::new(0),
    entry_ecx: AtomicU64::new(0),
    entry_ebp: AtomicU64::new(0),
    entry_esi: AtomicU64::new(0),
    exit_edi: AtomicU64::new(0),
    map_fd: AtomicI32::new(-1),
    event_eip: AtomicU64::new(0),
    skip: AtomicU64::new(0),
    exit_eip: AtomicU64::new(0),
    hits: AtomicU64::new(0),
    cap: AtomicU64::new(u64::MAX),
    timer: AtomicPtr::new(std::ptr::null_mut()),
    left: AtomicBool::new(false),
    stray_signal: AtomicI32::new(0),
    stray_vector: AtomicU64::new(0),
    stray_eip: AtomicU64::new(0),
};

/// `gregs` entries of `mcontext_t` on x86-64.
const NGREG: usize = 23;
type Gregs = [libc::greg_t; NGREG];

/// The 64-bit context saved on entry, restored on exit.
static SAVED: [AtomicI64; NGREG] = [const { AtomicI64::new(0) }; NGREG];

fn greg(gregs: &Gregs, index: c_int) -> u64 {
    // Registers are stored as i64 bit patterns.
    #[allow(clippy::cast_sign_loss)]
    let value = gregs[index.unsigned_abs() as usize] as u64;
    value
}

fn set_greg(gregs: &mut Gregs, index: c_int, value: u64) {
    #[allow(clippy::cast_possible_wrap)]
    let value = value as i64;
    gregs[index.unsigned_abs() as usize] = value;
}

extern "C" fn on_signal(signal: c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: for an SA_SIGINFO handler the kernel passes a valid siginfo
    // and ucontext that live on the signal stack until the handler
    // returns, and nothing else refers to them meanwhile.
    let (code, context) = unsafe { ((*info).si_code, &mut *context.cast::<libc::ucontext_t>()) };
    handle(signal, code, &mut context.uc_mcontext.gregs);
}

/// The handler proper. Async-signal-safe: atomics, register edits and
/// system calls only.
fn handle(signal: c_int, code: c_int, gregs: &mut Gregs) {
    if greg(gregs, libc::REG_CSGSFS) & 0xffff != u64::from(CODE_SELECTOR) {
        match signal {
            ENTER_SIGNAL => enter(gregs),
            // The few 64-bit instructions of a timed round: not counted.
            TIMER_SIGNAL => {}
            // A fault of our own 64-bit code: let it take its default
            // action when it repeats.
            _ => restore_default(signal),
        }
        return;
    }
    let eip = greg(gregs, libc::REG_RIP);
    let vector = greg(gregs, libc::REG_TRAPNO);
    if signal == libc::SIGSEGV && vector == GP_VECTOR && eip == RUN.exit_eip.load(SeqCst) {
        leave(gregs);
        return;
    }
    let at_event = eip == RUN.event_eip.load(SeqCst);
    let event = usize::try_from(RUN.event.load(SeqCst))
        .ok()
        .and_then(|index| BareEvent::ALL.get(index).copied());
    // A perf breakpoint's SIGTRAP comes from the perf handler, which leaves
    // the trap number stale: the si_code says what it was.
    let expected = match event {
        Some(BareEvent::GeneralProtection) => {
            signal == libc::SIGSEGV && vector == GP_VECTOR && at_event
        }
        Some(BareEvent::PageFault | BareEvent::PageFaultMap) => {
            signal == libc::SIGSEGV && vector == PF_VECTOR && at_event
        }
        Some(BareEvent::HardwareBreakpoint) => {
            signal == libc::SIGTRAP && code == libc::TRAP_PERF && at_event
        }
        Some(BareEvent::SeccompSigsys) => signal == libc::SIGSYS && at_event,
        Some(BareEvent::AsyncSignal) => signal == TIMER_SIGNAL,
        _ => false,
    };
    if !expected {
        RUN.stray_signal.store(signal, SeqCst);
        RUN.stray_vector.store(vector, SeqCst);
        RUN.stray_eip.store(eip, SeqCst);
        leave(gregs);
        return;
    }
    let skip = RUN.skip.load(SeqCst);
    if skip != 0 {
        set_greg(gregs, libc::REG_RIP, eip + skip);
    }
    if event == Some(BareEvent::PageFaultMap) && !map_fault_page(greg(gregs, libc::REG_CR2)) {
        RUN.stray_signal.store(signal, SeqCst);
        RUN.stray_vector.store(vector, SeqCst);
        RUN.stray_eip.store(eip, SeqCst);
        leave(gregs);
        return;
    }
    if event == Some(BareEvent::HardwareBreakpoint) {
        // Resume on the breakpointed instruction without hitting it again.
        let eflags = greg(gregs, libc::REG_EFL);
        set_greg(gregs, libc::REG_EFL, eflags | EFLAGS_RF);
    }
    let hits = RUN.hits.fetch_add(1, SeqCst) + 1;
    if hits >= RUN.cap.load(SeqCst) {
        stop_timer(RUN.timer.load(SeqCst));
    }
}

/// Maps the memfd page where the loop's read faulted (`fault_address`)
/// and unmaps the other of its two pages (async-signal-safe: two system
/// calls). False if the host refused, or the fault was elsewhere.
fn map_fault_page(fault_address: u64) -> bool {
    let first = RUN.entry_ebp.load(SeqCst);
    let page = fault_address & !(PAGE as u64 - 1);
    if page != first && page != first + PAGE as u64 {
        return false;
    }
    let other = if page == first {
        first + PAGE as u64
    } else {
        first
    };
    let (Ok(page), Ok(other)) = (usize::try_from(page), usize::try_from(other)) else {
        return false;
    };
    // SAFETY: both pages lie in the range this module mapped below 4 GiB
    // for the loop and no Rust reference points into them; MAP_FIXED
    // replaces only the page that faulted.
    unsafe {
        if libc::munmap(other as *mut c_void, PAGE) != 0 {
            return false;
        }
        libc::mmap(
            page as *mut c_void,
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED,
            RUN.map_fd.load(SeqCst),
            0,
        ) != libc::MAP_FAILED
    }
}

/// Saves the interrupted 64-bit context and makes sigreturn go to the
/// loop's first instruction in 32-bit mode.
fn enter(gregs: &mut Gregs) {
    for (saved, value) in SAVED.iter().zip(gregs.iter()) {
        saved.store(*value, SeqCst);
    }
    set_greg(gregs, libc::REG_RIP, RUN.entry_eip.load(SeqCst));
    set_greg(gregs, libc::REG_RSP, RUN.entry_esp.load(SeqCst));
    set_greg(gregs, libc::REG_RCX, RUN.entry_ecx.load(SeqCst));
    set_greg(gregs, libc::REG_RBP, RUN.entry_ebp.load(SeqCst));
    set_greg(gregs, libc::REG_RSI, RUN.entry_esi.load(SeqCst));
    set_greg(gregs, libc::REG_RDI, 0);
    set_greg(gregs, libc::REG_EFL, ENTRY_EFLAGS);
    // CS in bits 0-15, SS in 48-63 (sigreturn restores both); the FS and
    // GS halves are not used on return.
    let csgsfs = greg(gregs, libc::REG_CSGSFS);
    let csgsfs = (csgsfs & 0x0000_ffff_ffff_0000)
        | u64::from(CODE_SELECTOR)
        | (u64::from(DATA_SELECTOR) << 48);
    set_greg(gregs, libc::REG_CSGSFS, csgsfs);
}

/// Makes sigreturn resume the 64-bit context saved on entry: the raising
/// call returns.
fn leave(gregs: &mut Gregs) {
    RUN.exit_edi.store(greg(gregs, libc::REG_RDI), SeqCst);
    for (value, saved) in gregs.iter_mut().zip(SAVED.iter()) {
        *value = saved.load(SeqCst);
    }
    RUN.left.store(true, SeqCst);
}

fn restore_default(signal: c_int) {
    // SAFETY: sigaction is async-signal-safe; a zeroed sigaction is
    // SIG_DFL with an empty mask and no flags.
    unsafe {
        let action: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, &raw const action, std::ptr::null_mut());
    }
}

fn stop_timer(timer: *mut c_void) {
    if timer.is_null() {
        return;
    }
    let stop = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
    };
    // SAFETY: timer_settime is async-signal-safe; `timer` is this
    // process's live timer (cleared before the timer is deleted) and the
    // itimerspec a live local.
    unsafe {
        libc::timer_settime(timer, 0, &raw const stop, std::ptr::null_mut());
    }
}

fn host_error(what: &'static str) -> WorldError {
    WorldError::Host {
        what,
        source: std::io::Error::last_os_error(),
    }
}

// ---------------------------------------------------------------------------
// Set-up, each undone on drop.

/// Pages below 4 GiB: the loop's code, its stack, a PROT_NONE page for
/// the page fault, and the gap loop's buffer.
struct LowPages {
    base: *mut c_void,
}

impl LowPages {
    const LEN: usize = (3 + GAP_PAGES) * PAGE;
    const GAPS: usize = 3 * PAGE;

    fn map(code: &[u8]) -> Result<Self, WorldError> {
        // SAFETY: a fresh private anonymous mapping where the kernel finds
        // room in the low 2 GiB (MAP_32BIT); nothing existing is replaced.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(host_error("mmap of the 32-bit loop below 4 GiB"));
        }
        let pages = Self { base };
        if pages.address(Self::LEN) > 1 << 32 {
            return Err(WorldError::AddressSpace(format!(
                "MAP_32BIT gave {base:p}, not below 4 GiB"
            )));
        }
        if code.len() > PAGE {
            return Err(WorldError::RamSize(code.len()));
        }
        // SAFETY: the first page is ours, writable, and at least
        // `code.len()` bytes long.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), base.cast::<u8>(), code.len()) };
        pages.protect(0, libc::PROT_READ | libc::PROT_EXEC)?;
        pages.protect(2, libc::PROT_NONE)?;
        Ok(pages)
    }

    /// Unmaps the two fault pages (the page-fault-and-map loop's starting
    /// state; the second is the gap buffer's first page, unused then).
    fn unmap_fault_page(&self) -> Result<(), WorldError> {
        // SAFETY: unmaps two pages of our own mapping, which no Rust
        // reference points into; Drop's munmap of the whole range copes
        // with the hole.
        let result = unsafe { libc::munmap(self.base.byte_add(2 * PAGE), 2 * PAGE) };
        if result != 0 {
            return Err(host_error("munmap of the fault page"));
        }
        Ok(())
    }

    fn protect(&self, page: usize, protection: c_int) -> Result<(), WorldError> {
        // SAFETY: changes the protection of one page of our own mapping,
        // which no Rust reference points into.
        let result = unsafe { libc::mprotect(self.base.byte_add(page * PAGE), PAGE, protection) };
        if result != 0 {
            return Err(host_error("mprotect of the 32-bit loop's pages"));
        }
        Ok(())
    }

    /// The host (and, with base-0 segments, guest) address `offset` bytes
    /// in.
    fn address(&self, offset: usize) -> u64 {
        (self.base as u64) + offset as u64
    }

    /// The first `count` gaps the gap loop recorded.
    fn gaps(&self, count: usize) -> Vec<u32> {
        (0..count.min(GAP_CAPACITY))
            .map(|index| {
                // SAFETY: the gap buffer lies inside our mapping (LEN
                // covers GAP_CAPACITY words after GAPS); the loop that
                // wrote it has ended, and volatile reads see its stores.
                unsafe {
                    std::ptr::read_volatile(
                        self.base.byte_add(Self::GAPS + index * 4).cast::<u32>(),
                    )
                }
            })
            .collect()
    }

    fn guest(&self, offset: usize) -> Result<u32, WorldError> {
        u32::try_from(self.address(offset))
            .map_err(|_| WorldError::AddressSpace(format!("{:p} is above 4 GiB", self.base)))
    }
}

impl Drop for LowPages {
    fn drop(&mut self) {
        // SAFETY: unmaps our own mapping; the loop is not running.
        unsafe { libc::munmap(self.base, Self::LEN) };
    }
}

/// Flat 4 GiB 32-bit code and data segments, DPL 3, in the host LDT: the
/// shadows of a guest's flat user segments, made as the world makes them.
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
    ldt::write_entry(CODE_INDEX, &code)
        .and_then(|()| ldt::write_entry(DATA_INDEX, &data))
        .map_err(|error| match error {
            WorldError::Host { source, .. } => WorldError::MissingFeature {
                feature: "32-bit LDT segments (modify_ldt)",
                hint: "needs a kernel built with CONFIG_MODIFY_LDT_SYSCALL",
                source,
            },
            other => other,
        })
}

/// The handler on every signal of [`HANDLED`], on its own stack, with
/// those signals unblocked in this thread.
struct SignalSetup {
    stack: *mut c_void,
    previous_stack: Option<libc::stack_t>,
    previous_actions: Vec<(c_int, libc::sigaction)>,
    previous_mask: Option<libc::sigset_t>,
}

impl SignalSetup {
    fn install() -> Result<Self, WorldError> {
        // SAFETY: a fresh private anonymous mapping for the signal stack,
        // unmapped on drop once the stack is no longer in use.
        let stack = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SIGNAL_STACK_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if stack == libc::MAP_FAILED {
            return Err(host_error("mmap of the signal stack"));
        }
        let mut setup = Self {
            stack,
            previous_stack: None,
            previous_actions: Vec::with_capacity(HANDLED.len()),
            previous_mask: None,
        };
        let alternate = libc::stack_t {
            ss_sp: stack,
            ss_flags: 0,
            ss_size: SIGNAL_STACK_SIZE,
        };
        // SAFETY: stack_t is plain data; sigaltstack reads our stack_t and
        // writes the previous one into a live local.
        let mut previous: libc::stack_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::sigaltstack(&raw const alternate, &raw mut previous) } != 0 {
            return Err(host_error("sigaltstack"));
        }
        setup.previous_stack = Some(previous);
        for signal in HANDLED {
            // SAFETY: zeroed sigactions are valid; ours names a handler with
            // the SA_SIGINFO signature, blocks every signal while it runs
            // (so it never nests) and runs on the stack installed above.
            // glibc adds the restorer.
            let (result, previous) = unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigfillset(&raw mut action.sa_mask);
                let mut previous: libc::sigaction = std::mem::zeroed();
                let result = libc::sigaction(signal, &raw const action, &raw mut previous);
                (result, previous)
            };
            if result != 0 {
                return Err(host_error("sigaction"));
            }
            setup.previous_actions.push((signal, previous));
        }
        // SAFETY: sigset_t is plain data, initialised by sigemptyset;
        // pthread_sigmask changes only this thread's mask and writes the
        // old one into a live local.
        let (result, previous_mask) = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&raw mut set);
            for signal in HANDLED {
                libc::sigaddset(&raw mut set, signal);
            }
            let mut previous: libc::sigset_t = std::mem::zeroed();
            let result =
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &raw const set, &raw mut previous);
            (result, previous)
        };
        if result != 0 {
            return Err(WorldError::Host {
                what: "pthread_sigmask",
                source: std::io::Error::from_raw_os_error(result),
            });
        }
        setup.previous_mask = Some(previous_mask);
        Ok(setup)
    }
}

impl Drop for SignalSetup {
    fn drop(&mut self) {
        // SAFETY: puts back what install replaced, from values the kernel
        // gave us; the signal stack is unmapped only after it is no longer
        // this thread's, and no handler is running.
        unsafe {
            if let Some(mask) = self.previous_mask {
                libc::pthread_sigmask(libc::SIG_SETMASK, &raw const mask, std::ptr::null_mut());
            }
            for (signal, action) in &self.previous_actions {
                libc::sigaction(*signal, action, std::ptr::null_mut());
            }
            if let Some(stack) = self.previous_stack {
                libc::sigaltstack(&raw const stack, std::ptr::null_mut());
            }
            libc::munmap(self.stack, SIGNAL_STACK_SIZE);
        }
    }
}

/// Where `event` is in [`BareEvent::ALL`], as the handler finds it.
fn event_index(event: BareEvent) -> u32 {
    BareEvent::ALL
        .iter()
        .position(|candidate| *candidate == event)
        .and_then(|index| u32::try_from(index).ok())
        .unwrap_or(u32::MAX)
}

/// A loop ready to run: its pages, segments and signal handler.
struct Prepared {
    // Fields drop in order: the handlers go before the pages they run.
    _signals: SignalSetup,
    pages: LowPages,
}

fn prepare(event: BareEvent, guest: &GuestLoop) -> Result<Prepared, WorldError> {
    let pages = LowPages::map(guest.code)?;
    install_flat_segments()?;
    let signals = SignalSetup::install()?;
    RUN.event.store(event_index(event), SeqCst);
    RUN.entry_eip.store(pages.address(0), SeqCst);
    // The stack page's top, 16-byte aligned as a call would leave it.
    RUN.entry_esp.store(pages.address(2 * PAGE - 16), SeqCst);
    RUN.entry_ebp.store(pages.address(2 * PAGE), SeqCst);
    RUN.event_eip
        .store(pages.address(guest.event as usize), SeqCst);
    RUN.skip.store(u64::from(guest.skip), SeqCst);
    RUN.exit_eip
        .store(pages.address(guest.exit as usize), SeqCst);
    RUN.cap.store(u64::MAX, SeqCst);
    Ok(Prepared {
        _signals: signals,
        pages,
    })
}

/// Runs the loop once for `count` turns: its time as seen from 64-bit
/// code, and the events the handler counted.
fn run_loop(count: u32) -> Result<(Duration, u64), WorldError> {
    RUN.entry_ecx.store(u64::from(count), SeqCst);
    RUN.hits.store(0, SeqCst);
    RUN.left.store(false, SeqCst);
    RUN.stray_signal.store(0, SeqCst);
    let start = Instant::now();
    // SAFETY: getpid and gettid take no arguments; tgkill sends the enter
    // signal to this thread, whose handler runs the loop and makes this
    // call return as if nothing had happened in between.
    let result = unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::gettid(),
            ENTER_SIGNAL,
        )
    };
    let elapsed = start.elapsed();
    if result != 0 {
        return Err(host_error("tgkill of the enter signal"));
    }
    if !RUN.left.load(SeqCst) {
        return Err(WorldError::Host {
            what: "entering the 32-bit loop",
            source: std::io::Error::other("the enter signal did not run it"),
        });
    }
    let signal = RUN.stray_signal.load(SeqCst);
    if signal != 0 {
        return Err(stray_error(signal));
    }
    Ok((elapsed, RUN.hits.load(SeqCst)))
}

/// Why the loop raised a signal other than the event.
fn stray_error(signal: c_int) -> WorldError {
    let vector = RUN.stray_vector.load(SeqCst);
    let eip = RUN.stray_eip.load(SeqCst);
    let int80_eip = RUN.event_eip.load(SeqCst).wrapping_sub(2);
    let sigsys = RUN.event.load(SeqCst) == event_index(BareEvent::SeccompSigsys);
    if sigsys && signal == libc::SIGSEGV && vector == GP_VECTOR && eip == int80_eip {
        return WorldError::MissingFeature {
            feature: "i386 system calls (int $0x80) in 64-bit processes",
            hint: "needs CONFIG_IA32_EMULATION, not turned off with ia32_emulation=0",
            source: std::io::Error::other("int $0x80 raised #GP"),
        };
    }
    WorldError::Host {
        what: "the 32-bit loop",
        source: std::io::Error::other(format!(
            "signal {signal} (vector {vector}) at eip {eip:#x}, not the measured event"
        )),
    }
}

fn nanoseconds(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e9
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    let middle = samples.len() / 2;
    match (samples.get(middle.wrapping_sub(1)), samples.get(middle)) {
        (Some(low), Some(high)) if samples.len().is_multiple_of(2) => f64::midpoint(*low, *high),
        (_, Some(middle)) => *middle,
        _ => f64::NAN,
    }
}

/// Rounds of `iterations` events plus one warm-up round, dropped.
fn rounds_of(
    iterations: u32,
    rounds: u32,
    mut round: impl FnMut() -> Result<Duration, WorldError>,
) -> Result<f64, WorldError> {
    let mut samples = Vec::new();
    for index in 0..=rounds {
        let elapsed = round()?;
        if index > 0 {
            samples.push(nanoseconds(elapsed) / f64::from(iterations));
        }
    }
    Ok(median(&mut samples))
}

// ---------------------------------------------------------------------------
// The measurements.

fn trapping(event: BareEvent, iterations: u32, rounds: u32) -> Result<f64, WorldError> {
    let guest = match event {
        BareEvent::GeneralProtection => &GP_LOOP,
        BareEvent::HardwareBreakpoint => &DB_LOOP,
        BareEvent::PageFault => &PF_LOOP,
        BareEvent::PageFaultMap => &PF_MAP_LOOP,
        _ => &SIGSYS_LOOP,
    };
    let prepared = prepare(event, guest)?;
    // Kept until the rounds are over: the handler maps it.
    let _map_page = if event == BareEvent::PageFaultMap {
        let page = crate::sys::memory::SharedRegion::create(PAGE)?;
        RUN.map_fd.store(page.fd().as_raw_fd(), SeqCst);
        prepared.pages.unmap_fault_page()?;
        Some(page)
    } else {
        None
    };
    // Kept until the rounds are over: dropping it closes the perf event.
    let _breakpoint = if event == BareEvent::HardwareBreakpoint {
        let mut slots = Breakpoints::open(1)?;
        slots.arm(&[GuestVirt(prepared.pages.guest(guest.event as usize)?)])?;
        Some(slots)
    } else {
        None
    };
    if event == BareEvent::SeccompSigsys {
        seccomp::install(&i386_trap_filter())?;
    }
    rounds_of(iterations, rounds, || {
        let (elapsed, hits) = run_loop(iterations)?;
        if hits != u64::from(iterations) {
            return Err(WorldError::Host {
                what: "the 32-bit loop",
                source: std::io::Error::other(format!(
                    "{hits} of {iterations} {} events arrived",
                    event.name()
                )),
            });
        }
        Ok(elapsed)
    })
}

const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const SECCOMP_RET_TRAP: u32 = 0x0003_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
/// Offset of `arch` in `struct seccomp_data`.
const ARCH_OFFSET: u32 = 4;

/// Traps every i386 system call (SIGSYS), allows everything else.
fn i386_trap_filter() -> BpfProgram {
    let instruction = |code: u32, k: u32, jt: u8, jf: u8| sock_filter {
        // BPF opcodes fit 16 bits.
        #[allow(clippy::cast_possible_truncation)]
        code: code as u16,
        jt,
        jf,
        k,
    };
    vec![
        instruction(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            ARCH_OFFSET,
            0,
            0,
        ),
        instruction(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            AUDIT_ARCH_I386,
            0,
            1,
        ),
        instruction(libc::BPF_RET | libc::BPF_K, SECCOMP_RET_TRAP, 0, 0),
        instruction(libc::BPF_RET | libc::BPF_K, SECCOMP_RET_ALLOW, 0, 0),
    ]
}

/// A POSIX timer that sends [`TIMER_SIGNAL`] to this thread, periodically
/// once started.
struct LoopTimer {
    id: libc::timer_t,
}

impl LoopTimer {
    fn create() -> Result<Self, WorldError> {
        // SAFETY: sigevent is plain data; all-zero is a valid value that
        // the fields below complete.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = TIMER_SIGNAL;
        // SAFETY: gettid has no arguments and cannot fail.
        event.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: timer_create reads `event` and writes the new timer's id
        // into `id`, both live locals.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &raw mut event, &raw mut id) } != 0 {
            return Err(host_error("timer_create"));
        }
        RUN.timer.store(id, SeqCst);
        Ok(Self { id })
    }

    fn start(&self, period: Duration) -> Result<(), WorldError> {
        let period = libc::timespec {
            tv_sec: libc::time_t::try_from(period.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(period.subsec_nanos()),
        };
        let spec = libc::itimerspec {
            it_interval: period,
            it_value: period,
        };
        // SAFETY: timer_settime on our live timer reads one itimerspec
        // from a live local; the old value is not asked for.
        if unsafe { libc::timer_settime(self.id, 0, &raw const spec, std::ptr::null_mut()) } != 0 {
            return Err(host_error("timer_settime"));
        }
        Ok(())
    }

    fn stop(&self) {
        stop_timer(self.id);
    }
}

impl Drop for LoopTimer {
    fn drop(&mut self) {
        RUN.timer.store(std::ptr::null_mut(), SeqCst);
        // SAFETY: deletes our own timer, which the handler no longer sees.
        unsafe { libc::timer_delete(self.id) };
    }
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
/// signals were counted.
fn async_signal(iterations: u32, rounds: u32) -> Result<f64, WorldError> {
    let prepared = prepare(BareEvent::AsyncSignal, &GAP_LOOP)?;
    RUN.entry_ebp
        .store(prepared.pages.address(LowPages::GAPS), SeqCst);
    let tsc_per_ns = tsc_per_ns();
    // Thresholds of a few thousand ticks.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let threshold = (GAP_THRESHOLD_NS * tsc_per_ns).clamp(1.0, f64::from(u32::MAX)) as u64;
    RUN.entry_esi.store(threshold, SeqCst);
    let timer = LoopTimer::create()?;
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
    for round in 0..=rounds {
        let cap = 4 * u64::from(signals) + 64;
        RUN.cap.store(cap, SeqCst);
        timer.start(SIGNAL_PERIOD)?;
        let run = run_loop(turns);
        timer.stop();
        RUN.cap.store(u64::MAX, SeqCst);
        let (_, hits) = run?;
        if hits == 0 {
            return Err(WorldError::Host {
                what: "the timer's signals",
                source: std::io::Error::other("none interrupted the 32-bit loop"),
            });
        }
        if hits >= cap {
            return Err(WorldError::Host {
                what: "the timer's signals",
                source: std::io::Error::other("they came faster than handled"),
            });
        }
        let count = usize::try_from(RUN.exit_edi.load(SeqCst))
            .unwrap_or(GAP_CAPACITY)
            .min(GAP_CAPACITY);
        let mut gaps: Vec<f64> = prepared
            .pages
            .gaps(count)
            .into_iter()
            .map(|ticks| f64::from(ticks) / tsc_per_ns)
            .collect();
        if round > 0 {
            let signals = usize::try_from(hits).unwrap_or(usize::MAX);
            samples.push(median_of_largest(&mut gaps, signals));
        }
    }
    Ok(median(&mut samples))
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
fn tsc_per_ns() -> f64 {
    let start = Instant::now();
    let tsc_start = crate::channel::read_tsc();
    while start.elapsed() < Duration::from_millis(20) {
        std::hint::spin_loop();
    }
    let ticks = crate::channel::read_tsc().wrapping_sub(tsc_start);
    // Tick counts of 20 ms are far below 2^52.
    #[allow(clippy::cast_precision_loss)]
    let rate = ticks as f64 / nanoseconds(start.elapsed());
    rate.max(1e-3)
}

fn breakpoint_move(iterations: u32, rounds: u32) -> Result<f64, WorldError> {
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
        if breakpoints.ioctls - ioctls != u64::from(iterations) {
            return Err(WorldError::Host {
                what: "moving a breakpoint",
                source: std::io::Error::other("a move took other than one ioctl"),
            });
        }
        Ok(elapsed)
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

fn futex_handoff(iterations: u32, rounds: u32, partner: Partner) -> Result<f64, WorldError> {
    let affinity_error = |what| {
        move |errno: nix::Error| WorldError::Host {
            what,
            source: errno.into(),
        }
    };
    let cpu = sched_getcpu().map_err(affinity_error("sched_getcpu"))?;
    let previous =
        sched_getaffinity(Pid::from_raw(0)).map_err(affinity_error("sched_getaffinity"))?;
    pin(cpu)?;
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

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> Result<(), WorldError> {
    let mut set = CpuSet::new();
    set.set(cpu)
        .and_then(|()| sched_setaffinity(Pid::from_raw(0), &set))
        .map_err(|errno| WorldError::Host {
            what: "sched_setaffinity",
            source: errno.into(),
        })
}

fn handoffs(cpu: usize, iterations: u32, rounds: u32) -> Result<f64, WorldError> {
    let word = Arc::new(AtomicU32::new(0));
    let total = u64::from(iterations) * (u64::from(rounds) + 1);
    let partner = {
        let word = Arc::clone(&word);
        std::thread::Builder::new()
            .name("bare-futex".into())
            .spawn(move || {
                let pinned = pin(cpu);
                for _ in 0..total {
                    answer(&word);
                }
                pinned
            })
            .map_err(|source| WorldError::Host {
                what: "spawning the futex partner thread",
                source,
            })?
    };
    // A handoff is half a round trip.
    let cost = rounds_of(iterations, rounds, || {
        let start = Instant::now();
        for _ in 0..iterations {
            hand_over(&word);
        }
        Ok(start.elapsed() / 2)
    })?;
    partner.join().map_err(|_| WorldError::Host {
        what: "the futex partner thread",
        source: std::io::Error::other("it panicked"),
    })??;
    Ok(cost)
}

/// Handoffs with a forked partner process (which inherits the pinning)
/// over a word in a shared mapping; with `filtered`, this process installs
/// the host's seccomp filter first (for good: the measurement runs in a
/// process of its own).
fn process_handoffs(iterations: u32, rounds: u32, filtered: bool) -> Result<f64, WorldError> {
    let region = crate::sys::memory::SharedRegion::create(PAGE)?;
    // SAFETY: the region is page-aligned, zeroed, at least 4 bytes, shared
    // with the child after fork; an AtomicU32 is valid for any bits.
    let word = unsafe { &*region.as_ptr().cast::<AtomicU32>() };
    let total = u64::from(iterations) * (u64::from(rounds) + 1);
    // SAFETY: the child only answers on the shared word (atomics and futex
    // system calls) and leaves with _exit, never returning into the
    // caller's code; this process measures single-threaded.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(host_error("fork of the futex partner"));
    }
    if child == 0 {
        for _ in 0..total {
            answer(word);
        }
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) };
    }
    if filtered {
        crate::sys::host_filter::install(&crate::sys::host_filter::HostAllowed {
            launcher_socket: -1,
            // The partner stands for the launcher: the one child waited for.
            launcher_pid: child,
            pid: nix::unistd::getpid().as_raw(),
        })?;
    }
    let cost = rounds_of(iterations, rounds, || {
        let start = Instant::now();
        for _ in 0..iterations {
            hand_over(word);
        }
        Ok(start.elapsed() / 2)
    });
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(child, &raw mut status, 0) };
    cost
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

/// Waits until the word is given (odd) and gives it back.
fn answer(word: &AtomicU32) {
    loop {
        let now = word.load(SeqCst);
        if !now.is_multiple_of(2) {
            word.store(now.wrapping_add(1), SeqCst);
            futex::wake(word);
            return;
        }
        futex::wait(word, now, None);
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{Read, Write};

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

    /// Measures in a forked child, which gets the handlers, LDT entries,
    /// perf events and seccomp filter, and reports through a pipe.
    fn measure_in_child(event: BareEvent, iterations: u32, rounds: u32) -> f64 {
        let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
        // SAFETY: the child runs the measurement, writes the result to the
        // pipe and leaves with _exit, never returning into the harness
        // (panics included: they are caught). glibc's fork leaves malloc
        // usable in the child.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            drop(read_end);
            let result = std::panic::catch_unwind(|| measure(event, iterations, rounds));
            let message = match result {
                Ok(Ok(ns)) => format!("ok {ns}"),
                Ok(Err(error)) => format!("error {error}"),
                Err(_) => "error panicked".to_owned(),
            };
            let mut pipe = File::from(write_end);
            let length = u32::try_from(message.len()).unwrap_or(0).to_le_bytes();
            let _ = pipe
                .write_all(&length)
                .and_then(|()| pipe.write_all(message.as_bytes()));
            // SAFETY: ends the child at once, without the harness's exit
            // path.
            unsafe { libc::_exit(0) }
        }
        drop(write_end);
        // Read a known length: other tests' children may hold copies of
        // the write end, so end of file could come late.
        let mut pipe = File::from(read_end);
        let mut length = [0; 4];
        let read = pipe.read_exact(&mut length).map(|()| {
            let mut message = vec![0; u32::from_le_bytes(length) as usize];
            pipe.read_exact(&mut message)
                .map(|()| String::from_utf8_lossy(&message).into_owned())
        });
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &raw mut status, 0) };
        let message = match read {
            Ok(Ok(message)) => message,
            _ => panic!("the child reported nothing; wait status {status:#x}"),
        };
        let ns: f64 = message
            .strip_prefix("ok ")
            .unwrap_or_else(|| panic!("{}: {message}", event.name()))
            .parse()
            .expect("a number");
        eprintln!("{}: {ns:.0} ns", event.name());
        assert!(ns.is_finite() && ns > 0.0, "{}: {ns} ns", event.name());
        assert!(ns < 1e6, "{}: {ns} ns", event.name());
        ns
    }

    #[test]
    fn a_general_protection_fault_costs_something() {
        measure_in_child(BareEvent::GeneralProtection, 500, 3);
    }

    #[test]
    fn a_hardware_breakpoint_hit_costs_something() {
        measure_in_child(BareEvent::HardwareBreakpoint, 200, 3);
    }

    #[test]
    fn a_page_fault_costs_something() {
        measure_in_child(BareEvent::PageFault, 500, 3);
    }

    #[test]
    fn a_futex_handoff_between_processes_costs_something() {
        measure_in_child(BareEvent::FutexHandoffProcess, 300, 3);
    }

    #[test]
    fn a_page_fault_served_by_a_mapping_costs_something() {
        measure_in_child(BareEvent::PageFaultMap, 300, 3);
    }

    #[test]
    fn a_seccomp_sigsys_costs_something() {
        measure_in_child(BareEvent::SeccompSigsys, 200, 3);
    }

    #[test]
    fn a_breakpoint_move_costs_something() {
        measure_in_child(BareEvent::BreakpointMove, 500, 3);
    }

    #[test]
    fn a_futex_handoff_costs_something() {
        measure_in_child(BareEvent::FutexHandoff, 500, 3);
    }

    #[test]
    fn an_asynchronous_signal_costs_something() {
        measure_in_child(BareEvent::AsyncSignal, 300, 3);
    }

    #[test]
    fn no_iterations_is_an_error_not_a_division_by_zero() {
        assert!(measure(BareEvent::GeneralProtection, 0, 3).is_err());
        assert!(measure(BareEvent::GeneralProtection, 3, 0).is_err());
    }
}
