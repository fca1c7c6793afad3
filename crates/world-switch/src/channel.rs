//! The host <-> world channel: one shared page with a futex word
//! (DESIGN.md section 1, step 5).
//!
//! Protocol: the world owns the page while `state` is RUNNING. To exit, it
//! writes the exit fields, stores EXIT (release), wakes the host and waits
//! while the state stays EXIT. The host waits while the state is RUNNING,
//! reads the exit (acquire), writes the reply, stores RUNNING (release) and
//! wakes the world. Each side only writes the page while it owns it, and
//! the release/acquire pair on `state` orders the fields. The world is
//! untrusted: the host validates every field it reads.
//!
//! Interrupts: the interrupt controllers and the timer run in the world
//! (devices::chipset), which arms its own host timer (sys::timer). One
//! field crosses outside the ownership rule: the levels of the host
//! devices' interrupt lines (host -> world). A change is never missed: the
//! host stores the levels first and then, if the world owns the page (it
//! is running guest code, the monitor, or sleeping in a guest HLT), sends
//! it the kick signal. The monitor reads the levels while handling each
//! trap, with every signal blocked; a kick sent after that read stays
//! pending and arrives the moment the monitor returns into the guest (or
//! ends its HLT sleep at once), so the next read sees the change. While
//! the world waits for a reply the host owns the page and updates the
//! levels before replying.
//!
//! Both sides tell time with CLOCK_MONOTONIC from the epoch the host
//! records at boot.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use btvmm_core::exit::STRING_EXIT_BYTES;
use btvmm_core::{
    DebugCommand, DebugPoints, Exit, PauseCause, Reply, StopReason, VcpuRegisters, Watchpoint,
};

use crate::WorldError;
use crate::sys::futex;
use crate::sys::memory::SharedRegion;

const RUNNING: u32 = 0;
const EXIT: u32 = 1;

const EXIT_PORT_IN: u32 = 1;
const EXIT_PORT_OUT: u32 = 2;
const EXIT_HALT: u32 = 3;
const EXIT_PORT_IN_STRING: u32 = 4;
const EXIT_PORT_OUT_STRING: u32 = 5;
const EXIT_PAUSED: u32 = 6;
const EXIT_DEBUG_RESULT: u32 = 7;
const EXIT_STOP_TRIPLE: u32 = 10;
const EXIT_STOP_UNSUPPORTED: u32 = 11;
const EXIT_STOP_ESCAPE: u32 = 12;
const EXIT_STOP_INTERNAL: u32 = 13;

const REPLY_CONTINUE: u32 = 0;
const REPLY_VALUE: u32 = 1;
const REPLY_TERMINATE: u32 = 2;
const REPLY_DEBUG: u32 = 3;

const PAUSE_REQUESTED: u32 = 0;
const PAUSE_BREAKPOINT: u32 = 1;
const PAUSE_STEP: u32 = 2;
const PAUSE_WATCHPOINT: u32 = 3;

const DEBUG_RESUME: u32 = 0;
const DEBUG_STEP: u32 = 1;
const DEBUG_READ_MEMORY: u32 = 2;
const DEBUG_WRITE_MEMORY: u32 = 3;
const DEBUG_WRITE_REGISTERS: u32 = 4;
const DEBUG_READ_FPU: u32 = 5;
const DEBUG_WRITE_FPU: u32 = 6;

/// Words of the debugger's points: the generation, the counts, the
/// breakpoints, the watchpoints (address and length each).
const DEBUG_WORDS: usize = 2 + DebugPoints::MAX_BREAKPOINTS + 1 + 2 * DebugPoints::MAX_WATCHPOINTS;

/// Counters the channel carries.
pub const COUNTERS: usize = 128;
const MESSAGE_WORDS: usize = 128;

/// The initial guest state the host hands to the world: 32-bit protected
/// mode, paging off, interrupts off, flat 4 GiB segments whose selectors
/// are given (Multiboot: 0x08/0x10; the Linux boot protocol:
/// `__BOOT_CS` 0x10 and `__BOOT_DS` 0x18, with a GDT holding them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootState {
    /// EIP.
    pub eip: u32,
    /// EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI.
    pub gpr: [u32; 8],
    /// CS.
    pub code_selector: u16,
    /// DS, ES, FS, GS and SS.
    pub data_selector: u16,
    /// GDTR base (guest-physical, paging is off).
    pub gdt_base: u32,
    /// GDTR limit.
    pub gdt_limit: u16,
    /// The CMOS type of floppy drive 0 (4: 1.44 MB; 0: none).
    pub floppy_drive_type: u8,
}

/// Words of the monitor's interpretation policy in the channel page.
pub const POLICY_WORDS: usize = 5;

const _: () = assert!(MESSAGE_WORDS * 4 >= STRING_EXIT_BYTES);
const _: () = assert!(MESSAGE_WORDS >= VcpuRegisters::WORDS);

/// Words of [`BootState`] in the channel page.
const BOOT_WORDS: usize = 13;

impl BootState {
    fn to_words(self) -> [u32; BOOT_WORDS] {
        let mut words = [0; BOOT_WORDS];
        words[0] = self.eip;
        words[1..9].copy_from_slice(&self.gpr);
        words[9] = u32::from(self.code_selector) | (u32::from(self.data_selector) << 16);
        words[10] = self.gdt_base;
        words[11] = u32::from(self.gdt_limit);
        words[12] = u32::from(self.floppy_drive_type);
        words
    }

    fn from_words(words: [u32; BOOT_WORDS]) -> Self {
        let mut gpr = [0; 8];
        gpr.copy_from_slice(&words[1..9]);
        #[allow(clippy::cast_possible_truncation)] // two selectors in a word
        Self {
            eip: words[0],
            gpr,
            code_selector: words[9] as u16,
            data_selector: (words[9] >> 16) as u16,
            gdt_base: words[10],
            gdt_limit: words[11] as u16,
            floppy_drive_type: words[12] as u8,
        }
    }
}

#[repr(C)]
struct Page {
    state: AtomicU32,
    irq_levels: AtomicU32,
    irq_pulses: AtomicU32,
    /// Host -> world, outside the ownership rule like the levels: the host
    /// wants the vCPU paused (set before the kick that makes the monitor
    /// look).
    pause: AtomicU32,
    epoch_ns: AtomicU64,
    wall_clock_ns: AtomicU64,
    tsc_khz: AtomicU32,
    policy: [AtomicU32; POLICY_WORDS],
    exit_kind: AtomicU32,
    exit_args: [AtomicU32; 3],
    reply_kind: AtomicU32,
    reply_value: AtomicU32,
    /// A debugger command's arguments.
    reply_args: [AtomicU32; 2],
    /// Host -> world, written only while the vCPU is paused: the
    /// debugger's points ([`DebugPoints`]).
    debug: [AtomicU32; DEBUG_WORDS],
    message_len: AtomicU32,
    message: [AtomicU32; MESSAGE_WORDS],
    boot: [AtomicU32; BOOT_WORDS],
    counters: [AtomicU64; COUNTERS],
}

/// Size of the shared region.
pub const CHANNEL_BYTES: usize = 4096;
const _: () = assert!(std::mem::size_of::<Page>() <= CHANNEL_BYTES);

/// One end of the channel.
#[derive(Debug)]
pub struct Channel {
    region: SharedRegion,
}

impl Channel {
    /// Wraps a shared region of at least [`CHANNEL_BYTES`].
    pub fn new(region: SharedRegion) -> Result<Self, WorldError> {
        if region.size() < CHANNEL_BYTES {
            return Err(WorldError::RamSize(region.size()));
        }
        Ok(Self { region })
    }

    /// The region (to hand its descriptor to the world).
    #[must_use]
    pub fn region(&self) -> &SharedRegion {
        &self.region
    }

    /// Another handle on the same channel, for a host thread that wakes
    /// the host loop ([`Channel::wake_host`]).
    pub fn reopen(&self) -> Result<Self, WorldError> {
        Self::new(self.region.reopen()?)
    }

    /// Host: wakes the host loop from [`Channel::wait_exit`] early (it
    /// then finds no exit and looks at its other work: console input).
    pub fn wake_host(&self) {
        futex::wake(&self.page().state);
    }

    fn page(&self) -> &Page {
        // SAFETY: the region is a page-aligned shared mapping of at least
        // size_of::<Page>() bytes (checked in new), zero-initialised by
        // ftruncate; every field is an atomic, valid for any bit pattern,
        // and shared access to atomics is sound across processes.
        unsafe { &*self.region.as_ptr().cast::<Page>() }
    }

    /// Host: records the boot state for the world.
    pub fn set_boot(&self, boot: BootState) {
        let page = self.page();
        for (slot, value) in page.boot.iter().zip(boot.to_words()) {
            slot.store(value, Ordering::Relaxed);
        }
    }

    /// World: the boot state.
    #[must_use]
    pub fn boot(&self) -> BootState {
        let boot = &self.page().boot;
        BootState::from_words(std::array::from_fn(|index| {
            boot[index].load(Ordering::Relaxed)
        }))
    }

    /// World: hands `exit` to the host and waits for the reply.
    pub fn exit(&self, exit: &Exit) -> Reply {
        let page = self.page();
        let (kind, args, message) = match exit {
            Exit::PortIn { port, size } => {
                (EXIT_PORT_IN, [u32::from(*port), u32::from(*size), 0], None)
            }
            Exit::PortOut { port, size, value } => (
                EXIT_PORT_OUT,
                [u32::from(*port), u32::from(*size), *value],
                None,
            ),
            Exit::PortInString { port, size, count } => (
                EXIT_PORT_IN_STRING,
                [u32::from(*port), u32::from(*size), u32::from(*count)],
                None,
            ),
            Exit::PortOutString { port, size, count } => (
                EXIT_PORT_OUT_STRING,
                [u32::from(*port), u32::from(*size), u32::from(*count)],
                None,
            ),
            Exit::Halt { interrupts_enabled } => {
                (EXIT_HALT, [u32::from(*interrupts_enabled), 0, 0], None)
            }
            Exit::Paused(registers, cause) => {
                for (slot, word) in page.message.iter().zip(registers.to_words()) {
                    slot.store(word, Ordering::Relaxed);
                }
                let (kind, at) = match cause {
                    PauseCause::Requested => (PAUSE_REQUESTED, 0),
                    PauseCause::Breakpoint => (PAUSE_BREAKPOINT, 0),
                    PauseCause::Step => (PAUSE_STEP, 0),
                    PauseCause::Watchpoint { guest_virt } => (PAUSE_WATCHPOINT, *guest_virt),
                };
                (EXIT_PAUSED, [kind, at, 0], None)
            }
            Exit::DebugResult { ok, len } => (
                EXIT_DEBUG_RESULT,
                [u32::from(*ok), u32::from(*len), 0],
                None,
            ),
            Exit::Stop(reason) => match reason {
                StopReason::TripleFault => (EXIT_STOP_TRIPLE, [0; 3], None),
                StopReason::Unsupported(text) => (EXIT_STOP_UNSUPPORTED, [0; 3], Some(text)),
                StopReason::GuestEscape(text) => (EXIT_STOP_ESCAPE, [0; 3], Some(text)),
                StopReason::Internal(text) => (EXIT_STOP_INTERNAL, [0; 3], Some(text)),
            },
        };
        page.exit_kind.store(kind, Ordering::Relaxed);
        for (slot, value) in page.exit_args.iter().zip(args) {
            slot.store(value, Ordering::Relaxed);
        }
        if let Some(text) = message {
            write_message(page, text);
        }
        page.state.store(EXIT, Ordering::Release);
        futex::wake(&page.state);
        while page.state.load(Ordering::Acquire) == EXIT {
            futex::wait(&page.state, EXIT, None);
        }
        match page.reply_kind.load(Ordering::Relaxed) {
            REPLY_VALUE => Reply::Value(page.reply_value.load(Ordering::Relaxed)),
            REPLY_TERMINATE => Reply::Terminate,
            REPLY_DEBUG => debug_command(page).map_or(Reply::Continue, Reply::Debug),
            _ => Reply::Continue,
        }
    }

    /// World: a debugger conversation's exit (see
    /// `WorldServices::debug_exit`): `data`'s first bytes (a result's
    /// `len`) go with it, the answering command's data comes back.
    pub fn debug_exit(&self, exit: &Exit, data: &mut [u8; STRING_EXIT_BYTES]) -> Reply {
        if let Exit::DebugResult { len, .. } = exit {
            write_bytes(
                self.page(),
                &data[..usize::from(*len).min(STRING_EXIT_BYTES)],
            );
        }
        let reply = self.exit(exit);
        if matches!(reply, Reply::Debug(_)) {
            read_bytes(self.page(), data);
        }
        reply
    }

    /// Host: the data of the pending [`Exit::DebugResult`] (its `len`
    /// bytes, checked by [`Channel::wait_exit`]).
    pub fn debug_data(&self, buf: &mut [u8]) {
        self.string_data(buf);
    }

    /// Host: the data that goes with the next debugger command.
    pub fn set_debug_data(&self, data: &[u8]) {
        self.set_string_data(data);
    }

    /// Host: the debugger's points, while the vCPU is paused (it reads
    /// them when it resumes).
    pub fn set_debug_points(&self, points: &DebugPoints) {
        let words = &self.page().debug;
        let breakpoints = points.breakpoints.len().min(DebugPoints::MAX_BREAKPOINTS);
        let watchpoints = points.watchpoints.len().min(DebugPoints::MAX_WATCHPOINTS);
        words[0].store(points.generation, Ordering::Relaxed);
        #[allow(clippy::cast_possible_truncation)] // at most the maximums
        {
            words[1].store(breakpoints as u32, Ordering::Relaxed);
            words[2 + DebugPoints::MAX_BREAKPOINTS].store(watchpoints as u32, Ordering::Relaxed);
        }
        for (slot, &at) in words[2..].iter().zip(&points.breakpoints[..breakpoints]) {
            slot.store(at, Ordering::Relaxed);
        }
        let watch_words = &words[3 + DebugPoints::MAX_BREAKPOINTS..];
        for (pair, watch) in watch_words
            .chunks(2)
            .zip(&points.watchpoints[..watchpoints])
        {
            pair[0].store(watch.guest_virt, Ordering::Relaxed);
            pair[1].store(watch.len, Ordering::Relaxed);
        }
    }

    /// World: whether a debugger is there (its points have a generation).
    #[must_use]
    pub fn debugger_present(&self) -> bool {
        self.page().debug[0].load(Ordering::Relaxed) != 0
    }

    /// World: the debugger's points.
    #[must_use]
    pub fn debug_points(&self) -> DebugPoints {
        let words = &self.page().debug;
        let load = |index: usize| words[index].load(Ordering::Relaxed);
        let breakpoints = (load(1) as usize).min(DebugPoints::MAX_BREAKPOINTS);
        let watchpoints =
            (load(2 + DebugPoints::MAX_BREAKPOINTS) as usize).min(DebugPoints::MAX_WATCHPOINTS);
        DebugPoints {
            generation: load(0),
            breakpoints: (0..breakpoints).map(|index| load(2 + index)).collect(),
            watchpoints: (0..watchpoints)
                .map(|index| {
                    let at = 3 + DebugPoints::MAX_BREAKPOINTS + 2 * index;
                    Watchpoint {
                        guest_virt: load(at),
                        len: load(at + 1).clamp(1, Watchpoint::MAX_LEN),
                    }
                })
                .collect(),
        }
    }

    /// World: hands a string exit to the host with its data (see
    /// `WorldServices::exit_string`): an OUTS's bytes go in the message
    /// area with the exit, an INS's come back there with the reply.
    pub fn exit_string(&self, exit: &Exit, data: &mut [u8]) -> Reply {
        let len = data.len().min(STRING_EXIT_BYTES);
        if matches!(exit, Exit::PortOutString { .. }) {
            write_bytes(self.page(), &data[..len]);
        }
        let reply = self.exit(exit);
        if matches!(exit, Exit::PortInString { .. }) {
            read_bytes(self.page(), &mut data[..len]);
        }
        reply
    }

    /// Host: the data of the pending [`Exit::PortOutString`] (its
    /// `count * size` bytes, checked by [`Channel::wait_exit`]).
    pub fn string_data(&self, buf: &mut [u8]) {
        let len = buf.len().min(STRING_EXIT_BYTES);
        read_bytes(self.page(), &mut buf[..len]);
    }

    /// Host: the data that answers the pending [`Exit::PortInString`],
    /// before [`Channel::reply`].
    pub fn set_string_data(&self, data: &[u8]) {
        write_bytes(self.page(), &data[..data.len().min(STRING_EXIT_BYTES)]);
    }

    /// Host: waits up to `timeout` for an exit. Fields come from the
    /// untrusted world: anything malformed becomes a Stop.
    #[must_use]
    pub fn wait_exit(&self, timeout: Duration) -> Option<Exit> {
        let page = self.page();
        if page.state.load(Ordering::Acquire) == RUNNING {
            futex::wait(&page.state, RUNNING, Some(timeout));
            if page.state.load(Ordering::Acquire) == RUNNING {
                return None;
            }
        }
        let args: Vec<u32> = page
            .exit_args
            .iter()
            .map(|arg| arg.load(Ordering::Relaxed))
            .collect();
        let size = u8::try_from(args[1])
            .ok()
            .filter(|size| matches!(size, 1 | 2 | 4));
        let port = u16::try_from(args[0]).ok();
        let kind = page.exit_kind.load(Ordering::Relaxed);
        let malformed = || {
            Exit::Stop(StopReason::GuestEscape(format!(
                "the world process broke the channel's protocol (exit {kind}, arguments \
                 {:#x} {:#x})",
                args[0], args[1]
            )))
        };
        Some(match kind {
            EXIT_PORT_IN => match (port, size) {
                (Some(port), Some(size)) => Exit::PortIn { port, size },
                _ => malformed(),
            },
            EXIT_PORT_OUT => match (port, size) {
                (Some(port), Some(size)) => Exit::PortOut {
                    port,
                    size,
                    value: args[2],
                },
                _ => malformed(),
            },
            EXIT_PORT_IN_STRING | EXIT_PORT_OUT_STRING => {
                let count = u16::try_from(args[2]).ok().filter(|&count| {
                    size.is_some_and(|size| {
                        count > 0 && usize::from(count) * usize::from(size) <= STRING_EXIT_BYTES
                    })
                });
                match (port, size, count) {
                    (Some(port), Some(size), Some(count)) if kind == EXIT_PORT_IN_STRING => {
                        Exit::PortInString { port, size, count }
                    }
                    (Some(port), Some(size), Some(count)) => {
                        Exit::PortOutString { port, size, count }
                    }
                    _ => malformed(),
                }
            }
            EXIT_HALT => Exit::Halt {
                interrupts_enabled: args[0] != 0,
            },
            EXIT_PAUSED => {
                let words =
                    std::array::from_fn(|index| page.message[index].load(Ordering::Relaxed));
                let cause = match args[0] {
                    PAUSE_REQUESTED => Some(PauseCause::Requested),
                    PAUSE_BREAKPOINT => Some(PauseCause::Breakpoint),
                    PAUSE_STEP => Some(PauseCause::Step),
                    PAUSE_WATCHPOINT => Some(PauseCause::Watchpoint {
                        guest_virt: args[1],
                    }),
                    _ => None,
                };
                match cause {
                    Some(cause) => Exit::Paused(Box::new(VcpuRegisters::from_words(&words)), cause),
                    None => malformed(),
                }
            }
            EXIT_DEBUG_RESULT => match u16::try_from(args[1]) {
                Ok(len) if usize::from(len) <= STRING_EXIT_BYTES => Exit::DebugResult {
                    ok: args[0] != 0,
                    len,
                },
                _ => malformed(),
            },
            EXIT_STOP_TRIPLE => Exit::Stop(StopReason::TripleFault),
            EXIT_STOP_UNSUPPORTED => Exit::Stop(StopReason::Unsupported(read_message(page))),
            EXIT_STOP_ESCAPE => Exit::Stop(StopReason::GuestEscape(read_message(page))),
            EXIT_STOP_INTERNAL => Exit::Stop(StopReason::Internal(read_message(page))),
            _ => malformed(),
        })
    }

    /// Host: answers the pending exit and lets the world run.
    pub fn reply(&self, reply: Reply) {
        let page = self.page();
        let (kind, value) = match reply {
            Reply::Continue => (REPLY_CONTINUE, 0),
            Reply::Value(value) => (REPLY_VALUE, value),
            Reply::Terminate => (REPLY_TERMINATE, 0),
            Reply::Debug(command) => {
                let (command, args) = match command {
                    DebugCommand::Resume { step: false } => (DEBUG_RESUME, [0; 2]),
                    DebugCommand::Resume { step: true } => (DEBUG_STEP, [0; 2]),
                    DebugCommand::ReadMemory { guest_virt, len } => {
                        (DEBUG_READ_MEMORY, [guest_virt, u32::from(len)])
                    }
                    DebugCommand::WriteMemory { guest_virt, len } => {
                        (DEBUG_WRITE_MEMORY, [guest_virt, u32::from(len)])
                    }
                    DebugCommand::WriteRegisters => (DEBUG_WRITE_REGISTERS, [0; 2]),
                    DebugCommand::ReadFpu => (DEBUG_READ_FPU, [0; 2]),
                    DebugCommand::WriteFpu => (DEBUG_WRITE_FPU, [0; 2]),
                };
                for (slot, arg) in page.reply_args.iter().zip(args) {
                    slot.store(arg, Ordering::Relaxed);
                }
                (REPLY_DEBUG, command)
            }
        };
        page.reply_kind.store(kind, Ordering::Relaxed);
        page.reply_value.store(value, Ordering::Relaxed);
        page.state.store(RUNNING, Ordering::Release);
        futex::wake(&page.state);
    }

    /// Host: makes the channel ready for a new boot (after a reset, its
    /// last world may have died anywhere): the world runs, no lines are
    /// raised, the counters start from zero, the clock from `epoch_ns`
    /// (CLOCK_MONOTONIC nanoseconds), which is `wall_clock_ns` of real time
    /// (CLOCK_REALTIME, Unix epoch) for the guest's real-time clock.
    pub fn prepare_boot(&self, epoch_ns: u64, wall_clock_ns: u64) {
        let page = self.page();
        page.wall_clock_ns.store(wall_clock_ns, Ordering::Relaxed);
        page.irq_levels.store(0, Ordering::SeqCst);
        page.irq_pulses.store(0, Ordering::SeqCst);
        page.pause.store(0, Ordering::SeqCst);
        for counter in &page.counters {
            counter.store(0, Ordering::Relaxed);
        }
        page.epoch_ns.store(epoch_ns, Ordering::Relaxed);
        page.state.store(RUNNING, Ordering::Release);
    }

    /// Host: records the host TSC's frequency (kHz, 0: unknown) for the
    /// virtual CPU's CPUID.
    pub fn set_tsc_khz(&self, tsc_khz: u32) {
        self.page().tsc_khz.store(tsc_khz, Ordering::Relaxed);
    }

    /// World: the host TSC's frequency in kHz (0: unknown).
    #[must_use]
    pub fn tsc_khz(&self) -> u32 {
        self.page().tsc_khz.load(Ordering::Relaxed)
    }

    /// Host: records the monitor's interpretation policy (its words; all
    /// zero: the monitor's default).
    pub fn set_policy(&self, words: [u32; POLICY_WORDS]) {
        for (slot, word) in self.page().policy.iter().zip(words) {
            slot.store(word, Ordering::Relaxed);
        }
    }

    /// World: the interpretation policy's words.
    #[must_use]
    pub fn policy(&self) -> [u32; POLICY_WORDS] {
        let policy = &self.page().policy;
        std::array::from_fn(|index| policy[index].load(Ordering::Relaxed))
    }

    /// The epoch (CLOCK_MONOTONIC nanoseconds at boot).
    #[must_use]
    pub fn epoch_ns(&self) -> u64 {
        self.page().epoch_ns.load(Ordering::Relaxed)
    }

    /// Real time (Unix epoch nanoseconds) at the epoch.
    #[must_use]
    pub fn wall_clock_ns(&self) -> u64 {
        self.page().wall_clock_ns.load(Ordering::Relaxed)
    }

    /// Host: sets the levels of the host devices' interrupt lines (bit n =
    /// IRQ n), and marks `pulses`: lines that dropped and rose again, whose
    /// new edge the world's PIC must latch although the level did not
    /// change. Returns whether the world owns the page, i.e. whether a
    /// change needs a kick signal to be noticed soon.
    pub fn set_irq_levels(&self, levels: u16, pulses: u16) -> bool {
        let page = self.page();
        if pulses != 0 {
            page.irq_pulses
                .fetch_or(u32::from(pulses), Ordering::SeqCst);
        }
        page.irq_levels.store(u32::from(levels), Ordering::SeqCst);
        page.state.load(Ordering::SeqCst) == RUNNING
    }

    /// World: the lines pulsed since the last call (see
    /// [`Channel::set_irq_levels`]).
    pub fn take_irq_pulses(&self) -> u16 {
        #[allow(clippy::cast_possible_truncation)] // only 16 lines exist
        let pulses = self.page().irq_pulses.swap(0, Ordering::SeqCst) as u16;
        pulses
    }

    /// Host: asks the world to pause the vCPU (true) or lets it go on
    /// pausing no more; returns whether the world owns the page, i.e.
    /// whether it needs a kick to look (as [`Channel::set_irq_levels`]).
    pub fn request_pause(&self, pause: bool) -> bool {
        let page = self.page();
        page.pause.store(u32::from(pause), Ordering::SeqCst);
        page.state.load(Ordering::SeqCst) == RUNNING
    }

    /// World: whether the host wants the vCPU paused.
    #[must_use]
    pub fn pause_requested(&self) -> bool {
        self.page().pause.load(Ordering::Relaxed) != 0
    }

    /// World: the levels of the host devices' interrupt lines.
    #[must_use]
    pub fn irq_levels(&self) -> u16 {
        #[allow(clippy::cast_possible_truncation)] // only 16 lines exist
        let levels = self.page().irq_levels.load(Ordering::SeqCst) as u16;
        levels
    }

    /// World: publishes counters.
    pub fn publish_counters(&self, counters: &[u64]) {
        for (slot, value) in self.page().counters.iter().zip(counters) {
            slot.store(*value, Ordering::Relaxed);
        }
    }

    /// Host: the last published counters.
    #[must_use]
    pub fn counters(&self) -> Vec<u64> {
        self.page()
            .counters
            .iter()
            .map(|counter| counter.load(Ordering::Relaxed))
            .collect()
    }
}

/// CLOCK_REALTIME in nanoseconds since the Unix epoch (host side).
#[must_use]
pub fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

/// CLOCK_MONOTONIC in nanoseconds through the vDSO (no system call on
/// hosts with a TSC clock source; clock_gettime is on the world's
/// allow-list for the others). The vDSO reads the TSC: a process whose
/// RDTSC faults uses [`monotonic_ns_syscall`]. Async-signal-safe.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    timespec_ns(&now)
}

/// CLOCK_MONOTONIC in nanoseconds through the system call, which works
/// whatever PR_SET_TSC says. Async-signal-safe.
#[must_use]
pub fn monotonic_ns_syscall() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the clock_gettime system call writes one timespec into a
    // live local.
    unsafe { libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &raw mut now) };
    timespec_ns(&now)
}

/// The host's time-stamp counter (for measurements against
/// [`monotonic_ns`]).
#[must_use]
pub fn read_tsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; user-space RDTSC is allowed on
    // Linux hosts unless a process asked otherwise (PR_SET_TSC), which
    // the callers of this function do not.
    unsafe { std::arch::x86_64::_rdtsc() }
}

fn timespec_ns(now: &libc::timespec) -> u64 {
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    seconds.saturating_mul(1_000_000_000).saturating_add(nanos)
}

fn write_message(page: &Page, text: &str) {
    let bytes = text.as_bytes();
    let len = bytes.len().min(MESSAGE_WORDS * 4);
    for (index, word) in page.message.iter().enumerate() {
        let mut chunk = [0u8; 4];
        for (offset, byte) in chunk.iter_mut().enumerate() {
            if let Some(&value) = bytes
                .get(index * 4 + offset)
                .filter(|_| index * 4 + offset < len)
            {
                *byte = value;
            }
        }
        word.store(u32::from_le_bytes(chunk), Ordering::Relaxed);
    }
    // Bounded by MESSAGE_WORDS * 4.
    #[allow(clippy::cast_possible_truncation)]
    page.message_len.store(len as u32, Ordering::Relaxed);
}

/// Raw bytes into the message area (a string exit's data).
fn write_bytes(page: &Page, bytes: &[u8]) {
    for (word, chunk) in page.message.iter().zip(bytes.chunks(4)) {
        let mut value = [0u8; 4];
        value[..chunk.len()].copy_from_slice(chunk);
        word.store(u32::from_le_bytes(value), Ordering::Relaxed);
    }
}

/// The debugger command in the reply fields (the host wrote them).
fn debug_command(page: &Page) -> Option<DebugCommand> {
    let args: [u32; 2] =
        std::array::from_fn(|index| page.reply_args[index].load(Ordering::Relaxed));
    let len = u16::try_from(args[1])
        .ok()
        .filter(|&len| usize::from(len) <= STRING_EXIT_BYTES);
    Some(match page.reply_value.load(Ordering::Relaxed) {
        DEBUG_RESUME => DebugCommand::Resume { step: false },
        DEBUG_STEP => DebugCommand::Resume { step: true },
        DEBUG_READ_MEMORY => DebugCommand::ReadMemory {
            guest_virt: args[0],
            len: len?,
        },
        DEBUG_WRITE_MEMORY => DebugCommand::WriteMemory {
            guest_virt: args[0],
            len: len?,
        },
        DEBUG_WRITE_REGISTERS => DebugCommand::WriteRegisters,
        DEBUG_READ_FPU => DebugCommand::ReadFpu,
        DEBUG_WRITE_FPU => DebugCommand::WriteFpu,
        _ => return None,
    })
}

/// Raw bytes from the message area.
fn read_bytes(page: &Page, bytes: &mut [u8]) {
    for (word, chunk) in page.message.iter().zip(bytes.chunks_mut(4)) {
        let value = word.load(Ordering::Relaxed).to_le_bytes();
        chunk.copy_from_slice(&value[..chunk.len()]);
    }
}

fn read_message(page: &Page) -> String {
    let len = (page.message_len.load(Ordering::Relaxed) as usize).min(MESSAGE_WORDS * 4);
    let bytes: Vec<u8> = page
        .message
        .iter()
        .flat_map(|word| word.load(Ordering::Relaxed).to_le_bytes())
        .take(len)
        .collect();
    printable(&String::from_utf8_lossy(&bytes))
}

/// The text with control characters escaped: a world's message reaches
/// the user's terminal, where escape sequences must not.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_and_replies_cross_between_threads() {
        let host =
            Channel::new(SharedRegion::create(CHANNEL_BYTES).expect("memfd")).expect("channel");
        // The world side maps the same memfd.
        let fd = nix::unistd::dup(host.region().fd()).expect("dup");
        let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
        // SAFETY: a fresh duplicate of the channel memfd, owned by the new
        // region.
        let world =
            Channel::new(unsafe { SharedRegion::from_raw_fd(raw, CHANNEL_BYTES) }.expect("map"))
                .expect("channel");
        let boot = BootState {
            eip: 0x10_0000,
            gpr: [0x2bad_b002, 0, 0, 0x9000, 0, 0, 0x2_0000, 0],
            code_selector: 0x10,
            data_selector: 0x18,
            gdt_base: 0x2_2000,
            gdt_limit: 0x1f,
            floppy_drive_type: 4,
        };
        host.set_boot(boot);
        assert_eq!(world.boot(), boot);
        assert_eq!(host.wait_exit(Duration::from_millis(10)), None);

        assert!(host.request_pause(true), "the world owns the page");
        assert!(world.pause_requested());
        let registers = btvmm_core::VcpuRegisters {
            eip: 0xc10a_2b3c,
            cpl: 3,
            ..btvmm_core::VcpuRegisters::default()
        };
        let world_thread = std::thread::spawn(move || {
            let paused = world.exit(&Exit::Paused(Box::new(registers), PauseCause::Requested));
            let first = world.exit(&Exit::PortIn {
                port: 0x3fd,
                size: 1,
            });
            let second = world.exit(&Exit::Stop(StopReason::Unsupported("task gates".into())));
            world.publish_counters(&[1, 2, 3]);
            (paused, first, second, world)
        });
        let exit = loop {
            if let Some(exit) = host.wait_exit(Duration::from_millis(100)) {
                break exit;
            }
        };
        assert_eq!(
            exit,
            Exit::Paused(Box::new(registers), PauseCause::Requested)
        );
        assert!(!host.request_pause(false), "the host owns the page");
        host.reply(Reply::Continue);
        let exit = loop {
            if let Some(exit) = host.wait_exit(Duration::from_millis(100)) {
                break exit;
            }
        };
        assert_eq!(
            exit,
            Exit::PortIn {
                port: 0x3fd,
                size: 1
            }
        );
        host.reply(Reply::Value(0x60));
        let exit = loop {
            if let Some(exit) = host.wait_exit(Duration::from_millis(100)) {
                break exit;
            }
        };
        assert_eq!(
            exit,
            Exit::Stop(StopReason::Unsupported("task gates".into()))
        );
        host.reply(Reply::Terminate);
        let (paused, first, second, world) = world_thread.join().expect("world thread");
        assert_eq!(paused, Reply::Continue);
        assert!(!world.pause_requested());
        assert_eq!(first, Reply::Value(0x60));
        assert_eq!(second, Reply::Terminate);
        assert_eq!(&host.counters()[..3], &[1, 2, 3]);
    }

    #[test]
    fn a_debugger_conversation_crosses_with_its_data_and_points() {
        let host =
            Channel::new(SharedRegion::create(CHANNEL_BYTES).expect("memfd")).expect("channel");
        let world = host.reopen().expect("reopen");
        let registers = btvmm_core::VcpuRegisters {
            eip: 0xc108_b410,
            ..btvmm_core::VcpuRegisters::default()
        };
        let world_thread = std::thread::spawn(move || {
            let mut data = [0u8; STRING_EXIT_BYTES];
            let stop = Exit::Paused(Box::new(registers), PauseCause::Breakpoint);
            let command = world.debug_exit(&stop, &mut data);
            let written = data[..3].to_vec();
            data[..4].copy_from_slice(&[0x55, 0x89, 0xe5, 0x90]);
            let next = world.debug_exit(&Exit::DebugResult { ok: true, len: 4 }, &mut data);
            (command, written, next, world.debug_points())
        });
        let wait = || loop {
            if let Some(exit) = host.wait_exit(Duration::from_millis(100)) {
                break exit;
            }
        };
        assert_eq!(
            wait(),
            Exit::Paused(Box::new(registers), PauseCause::Breakpoint)
        );
        host.set_debug_data(&[1, 2, 3]);
        host.reply(Reply::Debug(DebugCommand::WriteMemory {
            guest_virt: 0xc000_1000,
            len: 3,
        }));
        assert_eq!(wait(), Exit::DebugResult { ok: true, len: 4 });
        let mut answer = [0u8; 4];
        host.debug_data(&mut answer);
        assert_eq!(answer, [0x55, 0x89, 0xe5, 0x90]);
        let points = DebugPoints {
            generation: 7,
            breakpoints: vec![0xc108_b410, 0x0804_8000],
            watchpoints: vec![Watchpoint {
                guest_virt: 0xc150_0000,
                len: 4,
            }],
        };
        host.set_debug_points(&points);
        host.reply(Reply::Debug(DebugCommand::Resume { step: true }));
        let (command, written, next, seen) = world_thread.join().expect("world thread");
        assert_eq!(
            command,
            Reply::Debug(DebugCommand::WriteMemory {
                guest_virt: 0xc000_1000,
                len: 3
            })
        );
        assert_eq!(written, [1, 2, 3]);
        assert_eq!(next, Reply::Debug(DebugCommand::Resume { step: true }));
        assert_eq!(seen, points);
    }

    #[test]
    fn a_malformed_debug_result_is_a_stop() {
        let host =
            Channel::new(SharedRegion::create(CHANNEL_BYTES).expect("memfd")).expect("channel");
        let page = host.page();
        page.exit_kind.store(EXIT_DEBUG_RESULT, Ordering::Relaxed);
        page.exit_args[0].store(1, Ordering::Relaxed);
        page.exit_args[1].store(4096, Ordering::Relaxed);
        page.state.store(EXIT, Ordering::Release);
        assert!(matches!(
            host.wait_exit(Duration::from_millis(10)),
            Some(Exit::Stop(StopReason::GuestEscape(_)))
        ));
        page.exit_kind.store(EXIT_PAUSED, Ordering::Relaxed);
        page.exit_args[0].store(99, Ordering::Relaxed);
        assert!(matches!(
            host.wait_exit(Duration::from_millis(10)),
            Some(Exit::Stop(StopReason::GuestEscape(_)))
        ));
    }
}
