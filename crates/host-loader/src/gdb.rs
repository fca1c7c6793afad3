//! The gdb remote stub (`--gdb tcp::PORT`, `-s`, `--gdb-wait`), on the
//! `gdbstub` crate's state machine, driven from the host loop.
//!
//! The stub talks to the vCPU only while the vCPU is stopped: the monitor
//! made an [`Exit::Paused`] exit (a breakpoint, a step, a watchpoint, or a
//! pause the stub asked for when gdb attached or sent Ctrl-C) and waits
//! for the reply. Each register or memory access gdb makes is a
//! [`Reply::Debug`] command answered by an [`Exit::DebugResult`]; continue
//! and step are the reply that lets the vCPU go, with the breakpoints and
//! watchpoints written to the channel first (the monitor plans around
//! them; nothing is written into guest memory).
//!
//! The connection is served between exits: while the guest runs, gdb's
//! bytes (in practice only Ctrl-C) wait for the host loop's next look (at
//! most its poll interval). Once btvmm is confined, the connection is
//! moved to a descriptor number set aside before, the one the host filter
//! lets the stub read and write.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{MsgFlags, Shutdown};

use btvmm_core::exit::STRING_EXIT_BYTES;
use btvmm_core::{DebugCommand, DebugPoints, Exit, PauseCause, Reply, VcpuRegisters, Watchpoint};
use gdbstub::common::Signal;
use gdbstub::conn::Connection;
use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::{DisconnectReason, GdbStub, SingleThreadStopReason};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep,
    SingleThreadSingleStepOps,
};
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::X86_SSE;
use gdbstub_arch::x86::reg::X86CoreRegs;
use world_switch::channel::Channel;

/// How long the stub waits for the world to answer one command.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the stub listens: `tcp::PORT` (loopback), `tcp:HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GdbAddress(pub SocketAddr);

impl GdbAddress {
    /// QEMU's `-s`: `tcp::1234`.
    pub const DEFAULT: &'static str = "tcp::1234";

    /// Parses QEMU's spelling.
    ///
    /// # Errors
    ///
    /// A text that is not `tcp:[HOST]:PORT`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text.strip_prefix("tcp:").ok_or_else(|| {
            format!("--gdb {text}: only tcp:[HOST]:PORT is supported (as tcp::1234)")
        })?;
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("--gdb {text}: tcp:[HOST]:PORT (as tcp::1234)"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("--gdb {text}: {port:?} is not a port number"))?;
        let host = if host.is_empty() { "127.0.0.1" } else { host };
        let ip = if host == "localhost" {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            host.parse()
                .map_err(|_| format!("--gdb {text}: {host:?} is not an IP address"))?
        };
        Ok(Self(SocketAddr::new(ip, port)))
    }
}

/// The connection (the slot's descriptor), written a packet at a time.
struct Conn {
    fd: RawFd,
    out: Vec<u8>,
}

impl Connection for Conn {
    type Error = nix::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        self.out.push(byte);
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        self.out.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        let mut sent = 0;
        let result = loop {
            if sent >= self.out.len() {
                break Ok(());
            }
            match nix::sys::socket::send(self.fd, &self.out[sent..], MsgFlags::MSG_NOSIGNAL) {
                Ok(count) => sent += count,
                Err(nix::Error::EINTR) => {}
                Err(error) => break Err(error),
            }
        };
        self.out.clear();
        result
    }
}

/// The stopped vCPU as gdb sees it.
pub struct VcpuTarget {
    channel: Channel,
    /// The registers of the stop (Some while the vCPU is stopped).
    registers: Option<VcpuRegisters>,
    /// Its FXSAVE image, read on first use (Some(None): not available).
    fpu: Option<Option<Vec<u8>>>,
    software: BTreeSet<u32>,
    hardware: BTreeSet<u32>,
    watchpoints: Vec<Watchpoint>,
    generation: u32,
    /// gdb asked to go on (true: one step).
    resume: Option<bool>,
    /// The world broke the conversation: the VM must stop.
    failed: Option<String>,
}

impl VcpuTarget {
    /// One command to the stopped vCPU and its answer.
    fn command(&mut self, command: DebugCommand, data: &[u8]) -> Option<(bool, Vec<u8>)> {
        if self.registers.is_none() || self.failed.is_some() {
            return None;
        }
        self.channel.set_debug_data(data);
        self.channel.reply(Reply::Debug(command));
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            match self.channel.wait_exit(Duration::from_millis(50)) {
                Some(Exit::DebugResult { ok, len }) => {
                    let mut bytes = vec![0; usize::from(len)];
                    self.channel.debug_data(&mut bytes);
                    return Some((ok, bytes));
                }
                Some(other) => {
                    self.failed = Some(format!(
                        "the world answered a debugger command with {other:?}"
                    ));
                    return None;
                }
                None if Instant::now() >= deadline => {
                    self.failed = Some("the world did not answer a debugger command".into());
                    return None;
                }
                None => {}
            }
        }
    }

    fn fpu_image(&mut self) -> Option<Vec<u8>> {
        if self.fpu.is_none() {
            let image = match self.command(DebugCommand::ReadFpu, &[]) {
                Some((true, image)) if image.len() == STRING_EXIT_BYTES => Some(image),
                _ => None,
            };
            self.fpu = Some(image);
        }
        self.fpu.clone().flatten()
    }

    /// The points as the monitor gets them.
    fn points(&self) -> DebugPoints {
        DebugPoints {
            generation: self.generation,
            breakpoints: self.software.union(&self.hardware).copied().collect(),
            watchpoints: self.watchpoints.clone(),
        }
    }

    fn changed(&mut self) {
        self.generation = self.generation.wrapping_add(1).max(1);
    }
}

/// The x87 tag word gdb shows (two bits a register) from FXSAVE's
/// abridged one (a bit a register: empty or not) and the registers.
fn full_tag_word(image: &[u8]) -> u32 {
    let status = u16::from_le_bytes([image[2], image[3]]);
    let top = u32::from((status >> 11) & 7);
    let abridged = image[4];
    let mut tags = 0u32;
    for physical in 0..8u32 {
        let tag = if abridged & (1 << physical) == 0 {
            3
        } else {
            // ST(i) is physical register (TOP + i) mod 8.
            let st = ((physical + 8 - top) % 8) as usize;
            let bytes = &image[32 + 16 * st..32 + 16 * st + 10];
            let mantissa = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
            let exponent = u16::from_le_bytes([bytes[8], bytes[9]]) & 0x7fff;
            if exponent == 0 && mantissa == 0 {
                1
            } else if exponent == 0x7fff || exponent == 0 || mantissa >> 63 == 0 {
                2
            } else {
                0
            }
        };
        tags |= tag << (2 * physical);
    }
    tags
}

impl Target for VcpuTarget {
    type Arch = X86_SSE;
    type Error = String;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadBase for VcpuTarget {
    fn read_registers(&mut self, regs: &mut X86CoreRegs) -> TargetResult<(), Self> {
        let Some(now) = self.registers else {
            return Err(TargetError::NonFatal);
        };
        let [eax, ecx, edx, ebx, esp, ebp, esi, edi] = now.gpr;
        let [es, cs, ss, ds, fs, gs] = now.selectors.map(u32::from);
        *regs = X86CoreRegs {
            eax,
            ecx,
            edx,
            ebx,
            esp,
            ebp,
            esi,
            edi,
            eip: now.eip,
            eflags: now.eflags,
            ..X86CoreRegs::default()
        };
        regs.segments.cs = cs;
        regs.segments.ss = ss;
        regs.segments.ds = ds;
        regs.segments.es = es;
        regs.segments.fs = fs;
        regs.segments.gs = gs;
        if let Some(image) = self.fpu_image() {
            let half = |at: usize| u32::from(u16::from_le_bytes([image[at], image[at + 1]]));
            let word = |at: usize| {
                u32::from_le_bytes([image[at], image[at + 1], image[at + 2], image[at + 3]])
            };
            regs.fpu.fctrl = half(0);
            regs.fpu.fstat = half(2);
            regs.fpu.ftag = full_tag_word(&image);
            regs.fpu.fop = half(6) & 0x7ff;
            regs.fpu.fioff = word(8);
            regs.fpu.fiseg = half(12);
            regs.fpu.fooff = word(16);
            regs.fpu.foseg = half(20);
            regs.mxcsr = word(24);
            for (index, st) in regs.st.iter_mut().enumerate() {
                st.copy_from_slice(&image[32 + 16 * index..42 + 16 * index]);
            }
            for (index, xmm) in regs.xmm.iter_mut().enumerate() {
                let bytes: [u8; 16] = image[160 + 16 * index..176 + 16 * index]
                    .try_into()
                    .unwrap_or([0; 16]);
                *xmm = u128::from_le_bytes(bytes);
            }
        }
        Ok(())
    }

    fn write_registers(&mut self, regs: &X86CoreRegs) -> TargetResult<(), Self> {
        let Some(now) = self.registers else {
            return Err(TargetError::NonFatal);
        };
        let mut wanted = now;
        wanted.gpr = [
            regs.eax, regs.ecx, regs.edx, regs.ebx, regs.esp, regs.ebp, regs.esi, regs.edi,
        ];
        wanted.eip = regs.eip;
        wanted.eflags = regs.eflags;
        let segments = &regs.segments;
        let selectors = [
            segments.es,
            segments.cs,
            segments.ss,
            segments.ds,
            segments.fs,
            segments.gs,
        ];
        if selectors
            .iter()
            .zip(now.selectors)
            .any(|(&wanted, now)| wanted != u32::from(now))
        {
            // A selector loads only with its descriptor: a guest
            // instruction's job.
            return Err(TargetError::NonFatal);
        }
        if wanted != now {
            let data: Vec<u8> = wanted
                .to_words()
                .iter()
                .flat_map(|word| word.to_le_bytes())
                .collect();
            match self.command(DebugCommand::WriteRegisters, &data) {
                Some((true, _)) => self.registers = Some(wanted),
                _ => return Err(TargetError::NonFatal),
            }
        }
        if let Some(mut image) = self.fpu_image() {
            let before = image.clone();
            // Both 16-bit registers in gdb's 32-bit slots.
            #[allow(clippy::cast_possible_truncation)]
            {
                image[0..2].copy_from_slice(&(regs.fpu.fctrl as u16).to_le_bytes());
                image[2..4].copy_from_slice(&(regs.fpu.fstat as u16).to_le_bytes());
            }
            // Reserved MXCSR bits would make the host refuse the image.
            let mask = match u32::from_le_bytes([image[28], image[29], image[30], image[31]]) {
                0 => 0xffbf,
                mask => mask,
            };
            image[24..28].copy_from_slice(&(regs.mxcsr & mask).to_le_bytes());
            for (index, st) in regs.st.iter().enumerate() {
                image[32 + 16 * index..42 + 16 * index].copy_from_slice(st);
            }
            for (index, xmm) in regs.xmm.iter().enumerate() {
                image[160 + 16 * index..176 + 16 * index].copy_from_slice(&xmm.to_le_bytes());
            }
            if image != before {
                match self.command(DebugCommand::WriteFpu, &image) {
                    Some((true, _)) => self.fpu = Some(Some(image)),
                    _ => return Err(TargetError::NonFatal),
                }
            }
        }
        Ok(())
    }

    fn read_addrs(&mut self, start_addr: u32, data: &mut [u8]) -> TargetResult<usize, Self> {
        let mut done = 0;
        while done < data.len() {
            let len = (data.len() - done).min(STRING_EXIT_BYTES);
            #[allow(clippy::cast_possible_truncation)] // below 4 GiB
            let at = start_addr.wrapping_add(done as u32);
            #[allow(clippy::cast_possible_truncation)] // at most 512
            let command = DebugCommand::ReadMemory {
                guest_virt: at,
                len: len as u16,
            };
            match self.command(command, &[]) {
                Some((true, bytes)) if bytes.len() == len => {
                    data[done..done + len].copy_from_slice(&bytes);
                    done += len;
                }
                _ => break,
            }
        }
        if done == 0 && !data.is_empty() {
            return Err(TargetError::NonFatal);
        }
        Ok(done)
    }

    fn write_addrs(&mut self, start_addr: u32, data: &[u8]) -> TargetResult<(), Self> {
        for (index, chunk) in data.chunks(STRING_EXIT_BYTES).enumerate() {
            #[allow(clippy::cast_possible_truncation)] // below 4 GiB, at most 512
            let command = DebugCommand::WriteMemory {
                guest_virt: start_addr.wrapping_add((index * STRING_EXIT_BYTES) as u32),
                len: chunk.len() as u16,
            };
            if !matches!(self.command(command, chunk), Some((true, _))) {
                return Err(TargetError::NonFatal);
            }
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for VcpuTarget {
    fn resume(&mut self, signal: Option<Signal>) -> Result<(), Self::Error> {
        if signal.is_some() {
            return Err("btvmm cannot deliver a signal to the guest (continue without one)".into());
        }
        self.resume = Some(false);
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadSingleStep for VcpuTarget {
    fn step(&mut self, signal: Option<Signal>) -> Result<(), Self::Error> {
        if signal.is_some() {
            return Err("btvmm cannot deliver a signal to the guest (step without one)".into());
        }
        self.resume = Some(true);
        Ok(())
    }
}

impl Breakpoints for VcpuTarget {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl VcpuTarget {
    /// Z0 and Z1 share the 64 slots of [`DebugPoints`] and mean the same
    /// to the monitor (neither writes guest memory); gdb removes each kind
    /// with its own packet, so they are kept apart.
    fn add_breakpoint(&mut self, hardware: bool, guest_virt: u32) -> bool {
        if self.software.len() + self.hardware.len() >= DebugPoints::MAX_BREAKPOINTS {
            return false;
        }
        if hardware {
            self.hardware.insert(guest_virt);
        } else {
            self.software.insert(guest_virt);
        }
        self.changed();
        true
    }

    fn remove_breakpoint(&mut self, hardware: bool, guest_virt: u32) -> bool {
        let removed = if hardware {
            self.hardware.remove(&guest_virt)
        } else {
            self.software.remove(&guest_virt)
        };
        self.changed();
        removed
    }
}

impl SwBreakpoint for VcpuTarget {
    fn add_sw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.add_breakpoint(false, addr))
    }

    fn remove_sw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.remove_breakpoint(false, addr))
    }
}

impl HwBreakpoint for VcpuTarget {
    fn add_hw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.add_breakpoint(true, addr))
    }

    fn remove_hw_breakpoint(&mut self, addr: u32, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.remove_breakpoint(true, addr))
    }
}

impl HwWatchpoint for VcpuTarget {
    fn add_hw_watchpoint(
        &mut self,
        addr: u32,
        len: u32,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        // Reads do not trap: only write watchpoints.
        if kind != WatchKind::Write
            || len == 0
            || len > Watchpoint::MAX_LEN
            || self.watchpoints.len() >= DebugPoints::MAX_WATCHPOINTS
        {
            return Ok(false);
        }
        self.watchpoints.push(Watchpoint {
            guest_virt: addr,
            len,
        });
        self.changed();
        Ok(true)
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u32,
        len: u32,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        let before = self.watchpoints.len();
        self.watchpoints.retain(|watch| {
            !(kind == WatchKind::Write && watch.guest_virt == addr && watch.len == len)
        });
        self.changed();
        Ok(self.watchpoints.len() != before)
    }
}

type Machine = GdbStubStateMachine<'static, VcpuTarget, Conn>;

/// What the host loop must do for the stub.
#[derive(Debug, Default)]
pub struct GdbWants {
    /// Ask the world to stop (set the pause word and kick it).
    pub pause: bool,
    /// gdb killed the VM.
    pub kill: bool,
    /// The conversation with the world broke: stop the VM with this.
    pub failure: Option<String>,
}

/// The stub: a listening socket and at most one gdb session.
pub struct GdbServer {
    listener: TcpListener,
    /// The descriptor number a connection is moved to (/dev/null until
    /// the first one).
    slot: OwnedFd,
    machine: Option<Machine>,
    target: VcpuTarget,
    /// The vCPU is stopped for the stub: the world waits for the reply to
    /// its pause exit.
    stopped: bool,
    /// A pause was asked for (attach, Ctrl-C) and has not arrived.
    pausing: bool,
    /// The pause asked for is gdb's Ctrl-C.
    interrupted: bool,
    /// The pause asked for is a new boot's (after a reset): the new world
    /// takes gdb's points and runs on.
    rebooted: bool,
}

impl GdbServer {
    /// Listens at `address`.
    ///
    /// # Errors
    ///
    /// When the socket cannot be made (the port is taken).
    pub fn listen(address: &GdbAddress, channel: Channel) -> Result<Self, String> {
        let listener = TcpListener::bind(address.0)
            .map_err(|error| format!("--gdb: cannot listen on {}: {error}", address.0))?;
        listener
            .set_nonblocking(true)
            .map_err(|error| format!("--gdb: {error}"))?;
        // The number a connection takes, held by /dev/null until then.
        let slot = OwnedFd::from(
            std::fs::File::open("/dev/null")
                .map_err(|error| format!("--gdb: /dev/null: {error}"))?,
        );
        let mut server = Self {
            listener,
            slot,
            machine: None,
            target: VcpuTarget {
                channel,
                registers: None,
                fpu: None,
                software: BTreeSet::new(),
                hardware: BTreeSet::new(),
                watchpoints: Vec::new(),
                generation: 0,
                resume: None,
                failed: None,
            },
            stopped: false,
            pausing: false,
            interrupted: false,
            rebooted: false,
        };
        // The points' first generation tells the worlds a debugger may
        // look (they keep the guest's FPU image for it).
        server.target.changed();
        server
            .target
            .channel
            .set_debug_points(&server.target.points());
        Ok(server)
    }

    /// The listening socket and the connection's descriptor (for the
    /// host filter).
    #[must_use]
    pub fn descriptors(&self) -> (RawFd, RawFd) {
        (self.listener.as_raw_fd(), self.slot.as_raw_fd())
    }

    /// The address it listens at.
    #[must_use]
    pub fn local_address(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Whether the vCPU is stopped for the stub (the host loop then waits
    /// on the connection rather than for exits).
    #[must_use]
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Whether a session is open.
    #[must_use]
    pub fn attached(&self) -> bool {
        self.machine.is_some()
    }

    /// A new boot starts (after a reset): with a session, its world must
    /// stop once to take gdb's points (true: ask for that pause).
    pub fn rebooting(&mut self) -> bool {
        if self.machine.is_some() {
            self.pausing = true;
            self.rebooted = true;
        }
        self.machine.is_some()
    }

    /// The vCPU stopped ([`Exit::Paused`]): whether the stub takes the
    /// stop (else it is the display's pause). `wait`: the stop before the
    /// first instruction that `--gdb-wait` asked for.
    pub fn take_stop(&mut self, registers: VcpuRegisters, cause: PauseCause, wait: bool) -> bool {
        let ours = self.pausing || wait || cause != PauseCause::Requested;
        if !ours {
            return false;
        }
        self.pausing = false;
        self.target.channel.request_pause(false);
        self.target.registers = Some(registers);
        self.target.fpu = None;
        self.stopped = true;
        let interrupted = std::mem::take(&mut self.interrupted);
        let rebooted = std::mem::take(&mut self.rebooted);
        if self.machine.is_none() && !wait {
            // gdb went away while the guest ran: the world stopped at a
            // point it still had; it runs on without them.
            self.resume(false);
            return true;
        }
        if !matches!(self.machine, Some(Machine::Running(_))) {
            // Attached while the guest ran: gdb asks where it is.
            return true;
        }
        if let Some(Machine::Running(running)) = self.machine.take() {
            let reason = match cause {
                PauseCause::Requested if interrupted && !rebooted => {
                    SingleThreadStopReason::Signal(Signal::SIGINT)
                }
                // A new boot's: the points reach the new world, and it
                // runs on.
                PauseCause::Requested => {
                    self.machine = Some(Machine::Running(running));
                    self.resume(false);
                    return true;
                }
                PauseCause::Breakpoint if self.target.hardware.contains(&registers.eip) => {
                    SingleThreadStopReason::HwBreak(())
                }
                PauseCause::Breakpoint => SingleThreadStopReason::SwBreak(()),
                PauseCause::Step => SingleThreadStopReason::DoneStep,
                PauseCause::Watchpoint { guest_virt } => SingleThreadStopReason::Watch {
                    tid: (),
                    kind: WatchKind::Write,
                    addr: guest_virt,
                },
            };
            match running.report_stop(&mut self.target, reason) {
                Ok(machine) => self.machine = Some(machine),
                Err(error) => self.end_session(&format!("reporting a stop: {error}")),
            }
        }
        true
    }

    /// Lets the stopped vCPU go (true: one step), with the points as gdb
    /// left them.
    fn resume(&mut self, step: bool) {
        if !self.stopped {
            return;
        }
        self.target.channel.set_debug_points(&self.target.points());
        self.target.registers = None;
        self.target.fpu = None;
        self.stopped = false;
        self.target
            .channel
            .reply(Reply::Debug(DebugCommand::Resume { step }));
    }

    /// Serves the listening socket and the session: waits up to `wait`
    /// for gdb's bytes when the vCPU is stopped, none otherwise.
    pub fn serve(&mut self, wait: Duration) -> GdbWants {
        let mut wants = GdbWants::default();
        if self.machine.is_none() {
            self.accept(&mut wants);
        }
        let Some(mut machine) = self.machine.take() else {
            if self.stopped {
                // Waiting for gdb to attach (--gdb-wait).
                let _ = readable(&self.listener, wait);
            }
            return wants;
        };
        // Until the vCPU stops, a new session's gdb waits.
        let ready = !matches!(machine, Machine::Idle(_)) || self.stopped;
        if ready {
            let timeout = if self.stopped { wait } else { Duration::ZERO };
            let mut buffer = [0u8; 4096];
            let read = if readable(&self.slot, timeout) {
                nix::sys::socket::recv(self.slot.as_raw_fd(), &mut buffer, MsgFlags::empty())
            } else {
                Ok(usize::MAX)
            };
            match read {
                Ok(0) | Err(_) => {
                    // gdb went away without detaching: as a detach.
                    self.machine = None;
                    self.detached();
                    return wants;
                }
                Ok(usize::MAX) => {}
                Ok(count) => {
                    for &byte in &buffer[..count] {
                        machine = match self.feed(machine, byte, &mut wants) {
                            Some(next) => next,
                            None => return wants,
                        };
                        // Before the next byte, which may be a Ctrl-C for
                        // the run this one started.
                        if let Some(step) = self.target.resume.take() {
                            self.resume(step);
                        }
                    }
                }
            }
        }
        self.machine = Some(machine);
        if let Some(step) = self.target.resume.take() {
            self.resume(step);
        }
        if let Some(failure) = self.target.failed.take() {
            wants.failure = Some(failure);
        }
        wants
    }

    /// One byte from gdb; None when the session ended.
    fn feed(&mut self, machine: Machine, byte: u8, wants: &mut GdbWants) -> Option<Machine> {
        let next = match machine {
            Machine::Idle(idle) => idle.incoming_data(&mut self.target, byte),
            Machine::Running(running) => running.incoming_data(&mut self.target, byte),
            other => Ok(other),
        };
        let next = match next {
            Ok(next) => next,
            Err(error) => {
                self.end_session(&format!("{error}"));
                return None;
            }
        };
        match next {
            Machine::CtrlCInterrupt(interrupt) => {
                if !self.stopped {
                    self.interrupted = true;
                    self.pausing = true;
                    wants.pause = true;
                }
                match interrupt
                    .interrupt_handled(&mut self.target, None::<SingleThreadStopReason<u32>>)
                {
                    Ok(next) => Some(next),
                    Err(error) => {
                        self.end_session(&format!("{error}"));
                        None
                    }
                }
            }
            Machine::Disconnected(gone) => {
                match gone.get_reason() {
                    DisconnectReason::Kill => wants.kill = true,
                    _ => self.detached(),
                }
                self.close();
                None
            }
            other => Some(other),
        }
    }

    fn accept(&mut self, wants: &mut GdbWants) {
        let Ok((stream, _)) = self.listener.accept() else {
            return;
        };
        let _ = stream.set_nodelay(true);
        // The accepted descriptor closes once it is in the slot.
        let accepted = OwnedFd::from(stream);
        if let Err(error) = nix::unistd::dup2(accepted.as_fd(), &mut self.slot) {
            eprintln!("btvmm: gdb: could not take the connection: {error}");
            return;
        }
        let conn = Conn {
            fd: self.slot.as_raw_fd(),
            out: Vec::new(),
        };
        match GdbStub::new(conn).run_state_machine(&mut self.target) {
            Ok(machine) => {
                self.machine = Some(machine);
                if !self.stopped {
                    self.pausing = true;
                    wants.pause = true;
                }
            }
            Err(error) => eprintln!("btvmm: gdb: {error}"),
        }
    }

    /// gdb detached (or went away): its points go and the vCPU runs on.
    fn detached(&mut self) {
        self.pausing = false;
        self.target.software.clear();
        self.target.hardware.clear();
        self.target.watchpoints.clear();
        self.target.changed();
        self.interrupted = false;
        self.resume(false);
    }

    fn end_session(&mut self, why: &str) {
        eprintln!("btvmm: gdb: the session ended: {why}");
        self.close();
        self.detached();
    }

    fn close(&mut self) {
        self.machine = None;
        // The slot stays open until the next connection replaces it.
        let _ = nix::sys::socket::shutdown(self.slot.as_raw_fd(), Shutdown::Both);
    }

    /// The VM ended: gdb hears how (`status` 0-255), and the session
    /// closes.
    pub fn vm_ended(&mut self, status: u8) {
        if let Some(machine) = self.machine.take() {
            if let Machine::Running(running) = machine {
                let _ =
                    running.report_stop(&mut self.target, SingleThreadStopReason::Exited(status));
            }
            self.close();
        }
    }
}

/// Whether the connection has bytes (or news of its end) within
/// `timeout`.
fn readable(fd: &impl AsFd, timeout: Duration) -> bool {
    let mut fds = [nix::poll::PollFd::new(
        fd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    matches!(nix::poll::poll(&mut fds, millis), Ok(ready) if ready > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_takes_qemu_s_spelling() {
        assert_eq!(
            GdbAddress::parse("tcp::1234"),
            Ok(GdbAddress("127.0.0.1:1234".parse().expect("address")))
        );
        assert_eq!(
            GdbAddress::parse("tcp:0.0.0.0:4321"),
            Ok(GdbAddress("0.0.0.0:4321".parse().expect("address")))
        );
        assert!(GdbAddress::parse("1234").is_err());
        assert!(GdbAddress::parse("tcp::port").is_err());
        assert!(GdbAddress::parse("unix:/tmp/gdb").is_err());
    }

    #[test]
    fn the_tag_word_marks_empty_zero_and_valid_registers() {
        let mut image = vec![0u8; 512];
        // TOP = 7: ST(0) is physical register 7.
        image[2..4].copy_from_slice(&(7u16 << 11).to_le_bytes());
        // Physical 7 (ST0) holds 1.0; physical 0 (ST1) holds +0.
        image[4] = 0b1000_0001;
        image[32..40].copy_from_slice(&(1u64 << 63).to_le_bytes());
        image[40..42].copy_from_slice(&0x3fffu16.to_le_bytes());
        let tags = full_tag_word(&image);
        assert_eq!(tags >> 14, 0, "ST0 valid");
        assert_eq!(tags & 3, 1, "ST1 zero");
        assert_eq!((tags >> 2) & 3, 3, "the others empty");
    }
}
