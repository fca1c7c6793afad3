//! `btvmm run`: boot a kernel in world processes and serve their exits.
//!
//! The host process owns guest RAM (a memfd), the channel, the devices that
//! need host resources and the console; the world processes run the guest,
//! its monitor and the interrupt/timer chipset. The host loop waits on the
//! channel, answers port I/O from the device bus, feeds console input to
//! COM1, and ends the VM when the guest powers off, writes the debug-exit
//! port, stops, or a world dies. A reset (keyboard controller, port 0x92,
//! a triple fault) boots the kernel again from its entry in fresh RAM and
//! fresh world processes, unless `--no-reboot` asks to end instead.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use btvmm_core::{Exit, Reply, StopReason};
use devices::BusEffect;
use devices::board::Board;
use guest_monitor::counters::Counters;
use std::os::fd::AsRawFd;

use world_switch::channel::{BootState, CHANNEL_BYTES, Channel};
use world_switch::launcher::{Launcher, WorldProcess, WorldSpec};
use world_switch::sys::alias::AliasMemory;
use world_switch::sys::memory::{GuestRam, SharedRegion};

use crate::LoaderError;
use crate::boot::{Handover, KernelKind};
use crate::console::{Console, ConsoleEvent};
use crate::display::{Display, DisplayEvent, Frame};
use crate::{linux, multiboot};

/// Exit status of `btvmm run` when the VM stopped for a reason other than
/// the guest's own ending (even, so it never collides with QEMU's
/// debug-exit statuses, which are odd).
pub const EXIT_VM_STOPPED: i32 = 2;

/// Guest RAM for a Linux kernel unless `--memory` says otherwise, MiB.
pub const DEFAULT_LINUX_MEMORY_MIB: u32 = 256;
/// Guest RAM for a Multiboot test kernel unless `--memory` says otherwise.
pub const DEFAULT_MULTIBOOT_MEMORY_MIB: u32 = 128;

/// The largest initrd btvmm reads (it must fit guest RAM anyway).
const MAX_INITRD_BYTES: u64 = 2 << 30;

/// What `btvmm run` was asked.
#[derive(Clone, Debug)]
pub struct RunRequest {
    /// The kernel: a Linux bzImage or a Multiboot kernel.
    pub kernel: PathBuf,
    /// The initial RAM disk (Linux only).
    pub initrd: Option<PathBuf>,
    /// Guest RAM in MiB (None: the default for the kernel's kind).
    pub memory_mib: Option<u32>,
    /// The kernel command line.
    pub cmdline: String,
    /// End the run when the guest resets instead of booting again.
    pub no_reboot: bool,
    /// Print the monitor's counters at the end.
    pub stats: bool,
    /// Trace the monitor to standard error.
    pub trace: bool,
    /// World processes in the pool of address spaces (1 to 8).
    pub address_spaces: usize,
    /// Feed standard input to COM1 (raw mode on a terminal).
    pub console_input: bool,
    /// How guest kernel code is traced.
    pub breakpoints: Breakpoints,
    /// How the monitor runs guest kernel code between the instructions it
    /// must handle.
    pub exec: btvmm_core::ExecMode,
    /// How far it interprets under [`btvmm_core::ExecMode::Auto`].
    pub policy: guest_monitor::policy::Policy,
    /// The image behind the ATA disk on the primary channel, if any.
    pub disk: Option<crate::disk::DiskSpec>,
    /// The 1.44 MB image in floppy drive 0, if any.
    pub floppy: Option<crate::disk::DiskSpec>,
    /// Show the VGA screen in the terminal and take keys for the keyboard
    /// (`--display curses`; standard input then feeds no serial port).
    pub display: DisplayMode,
    /// COM1's output to this file instead of the run's console writer.
    pub serial: Option<PathBuf>,
    /// A gdb remote stub listens here (`--gdb`, `-s`).
    pub gdb: Option<crate::gdb::GdbAddress>,
    /// Stop before the first guest instruction until gdb continues
    /// (`--gdb-wait`, `-S`).
    pub gdb_wait: bool,
    /// Attacker tests only: the first world writes the address of a
    /// `syscall; ret` of its own code at this guest-physical address.
    pub leak_syscall_gadget: Option<u32>,
    /// Attacker tests only: the worlds scribble over the channel and the
    /// pool (seed, and a pid they name as a world) instead of running.
    pub scribble: Option<(u64, i32)>,
    /// Attacker tests only: once confined, btvmm itself tries this, as a
    /// btvmm process a guest took over would.
    pub host_escape: Option<HostEscape>,
    /// Put the btvmm process under its own seccomp filter once the VM is
    /// set up (`btvmm run` does; a library caller that goes on doing other
    /// things afterwards cannot).
    pub confine_host: bool,
}

/// What a btvmm process a guest took over might try (`--test-host-escape`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostEscape {
    /// Create /tmp/btvmm-host-probe.
    CreateFile,
    /// Run a shell that creates /tmp/btvmm-host-probe.
    Execute,
    /// Send SIGTERM to this process.
    Kill(i32),
    /// Open a network socket.
    Socket,
    /// Become root (setuid 0).
    SetUid,
}

/// The file the host-escape attempts would create.
pub const HOST_ESCAPE_PROBE: &str = "/tmp/btvmm-host-probe";

impl HostEscape {
    /// Parses `file`, `exec`, `kill:PID`, `socket` or `setuid`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "file" => Ok(Self::CreateFile),
            "exec" => Ok(Self::Execute),
            "socket" => Ok(Self::Socket),
            "setuid" => Ok(Self::SetUid),
            _ => text
                .strip_prefix("kill:")
                .and_then(|pid| pid.parse().ok())
                .map(Self::Kill)
                .ok_or_else(|| format!("unknown host escape {text:?}")),
        }
    }

    /// Tries it; returns what happened if the filter let it through.
    fn attempt(self) -> String {
        match self {
            Self::CreateFile => format!(
                "created a file: {:?}",
                std::fs::File::create(HOST_ESCAPE_PROBE)
            ),
            Self::Execute => format!(
                "ran a shell: {:?}",
                std::process::Command::new("/bin/sh")
                    .args(["-c", &format!("touch {HOST_ESCAPE_PROBE}")])
                    .status()
            ),
            Self::Kill(pid) => format!(
                "signalled {pid}: {:?}",
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM
                )
            ),
            Self::Socket => format!(
                "opened a socket: {:?}",
                std::net::UdpSocket::bind("127.0.0.1:0")
            ),
            Self::SetUid => format!(
                "set its uid: {:?}",
                nix::unistd::setuid(nix::unistd::Uid::from_raw(0))
            ),
        }
    }
}

/// Where the guest's screen goes (`--display`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DisplayMode {
    /// Nowhere: the VGA is there, nobody looks at it.
    #[default]
    None,
    /// The terminal, through curses (crate::display).
    Curses,
}

/// How guest kernel code is traced (`--breakpoints`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Breakpoints {
    /// The CPU's hardware breakpoints only, as in the dissertation.
    Hardware,
    /// The split code view (DESIGN.md 3b): INT3 in alias pages the guest
    /// cannot see, hardware breakpoints where an alias cannot be placed.
    Split,
}

impl Breakpoints {
    /// The mechanism for this host: the split view, whose INT3 costs about
    /// a #GP where a hardware breakpoint's #DB costs 3-20 times more.
    pub const DEFAULT: Self = Self::Split;

    /// The option's spelling.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Hardware => "hw",
            Self::Split => "split",
        }
    }
}

impl RunRequest {
    /// A request to boot `kernel` with the defaults and no console input.
    #[must_use]
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            memory_mib: None,
            cmdline: String::new(),
            no_reboot: false,
            stats: false,
            trace: false,
            address_spaces: usize::from(DEFAULT_ADDRESS_SPACES),
            console_input: false,
            breakpoints: Breakpoints::DEFAULT,
            exec: btvmm_core::ExecMode::Auto,
            policy: guest_monitor::policy::Policy::TUNED,
            disk: None,
            floppy: None,
            display: DisplayMode::None,
            serial: None,
            gdb: None,
            gdb_wait: false,
            leak_syscall_gadget: None,
            scribble: None,
            host_escape: None,
            confine_host: false,
        }
    }
}

/// World processes kept for guest address spaces unless asked otherwise.
pub const DEFAULT_ADDRESS_SPACES: u8 = 4;

/// How the VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The guest wrote the debug-exit port: this is the exit status.
    DebugExit(i32),
    /// The guest powered off: it halted with interrupts disabled, which is
    /// how Linux ends `poweroff` on a PC without ACPI ("reboot: Power
    /// down"), and nothing but a reset could wake it.
    PowerOff,
    /// The guest reset the machine and `--no-reboot` was given.
    Reset,
    /// The user asked to end the VM at the console (`Ctrl-A x`).
    Quit,
    /// The btvmm process got this signal (SIGINT, SIGTERM).
    Signal(i32),
    /// The VM stopped.
    Stopped(StopReason),
    /// The debugger killed the VM (gdb's `kill`).
    Killed,
    /// The world process ended on its own.
    WorldDied(String),
}

/// What one world process used when the guest wrote the debug-exit port
/// (from /proc/PID/status and /proc/PID/maps, read by the launcher): the
/// cost of the shadow it holds, beside guest RAM, which every world maps
/// and shares.
pub use world_switch::launcher::WorldMemory;

/// The result of a run.
#[derive(Debug)]
pub struct RunOutcome {
    /// How it ended.
    pub ending: Ending,
    /// The monitor's last published counters.
    pub counters: Counters,
    /// Each world process's memory at the debug-exit port, with `--stats`
    /// (empty otherwise and for other endings).
    pub worlds: Vec<WorldMemory>,
    /// Ports no device claims that the guest accessed: (port, reads,
    /// writes).
    pub unclaimed_ports: Vec<(u16, u64, u64)>,
    /// How many times the guest reset and was booted again.
    pub resets: u64,
    /// The counters at each write to the counter-mark port (value,
    /// counters), the first [`MARKS_KEPT`] of them.
    pub marks: Vec<(u32, Counters)>,
}

/// Counter marks kept at most: a guest that writes the port in a loop
/// costs no more host memory than this.
pub const MARKS_KEPT: usize = 4096;

impl RunOutcome {
    /// The process exit status for this ending.
    #[must_use]
    pub fn exit_status(&self) -> i32 {
        match self.ending {
            Ending::DebugExit(status) => status,
            Ending::PowerOff | Ending::Reset | Ending::Quit | Ending::Killed => 0,
            Ending::Signal(signal) => 128 + signal,
            Ending::Stopped(_) | Ending::WorldDied(_) => EXIT_VM_STOPPED,
        }
    }

    /// A one-line description of the ending, when it is worth telling the
    /// user (not for the guest's own ways of ending).
    #[must_use]
    pub fn message(&self) -> Option<String> {
        match &self.ending {
            Ending::DebugExit(_) | Ending::PowerOff | Ending::Quit => None,
            Ending::Killed => Some("btvmm: the debugger killed the VM".into()),
            Ending::Reset => Some("the guest reset the machine; stopping (--no-reboot)".into()),
            Ending::Signal(signal) => Some(format!("stopped by signal {signal}")),
            Ending::Stopped(reason) => Some(format!("the VM stopped: {reason}")),
            Ending::WorldDied(how) => Some(format!("the VM stopped: the world process {how}")),
        }
    }
}

/// The kernel and initrd of a run, read and recognised.
struct Images {
    kernel: Vec<u8>,
    kind: KernelKind,
    initrd: Option<Vec<u8>>,
}

/// Boots the kernel and serves the VM until it ends. Guest console output
/// goes to `console`.
pub fn run(request: &RunRequest, console: impl Write + 'static) -> Result<RunOutcome, LoaderError> {
    check_request(request)?;
    let kernel = crate::report::read_limited(&request.kernel)?;
    let kind = KernelKind::detect(&kernel)?;
    let initrd = match &request.initrd {
        None => None,
        Some(path) => {
            if kind != KernelKind::BzImage {
                return Err(LoaderError::Option(
                    "--initrd is for Linux kernels; this is a Multiboot kernel".into(),
                ));
            }
            Some(read_initrd(path)?)
        }
    };
    let images = Images {
        kernel,
        kind,
        initrd,
    };
    serve_vm(request, &images, console)
}

/// The checks that need no file: bad options fail before anything is
/// built.
fn check_request(request: &RunRequest) -> Result<(), LoaderError> {
    if let Some(memory) = request.memory_mib
        && !(2..=3072).contains(&memory)
    {
        return Err(LoaderError::Option(format!(
            "--memory {memory} is outside 2..=3072 MiB"
        )));
    }
    if request.gdb_wait && request.gdb.is_none() {
        return Err(LoaderError::Option(
            "--gdb-wait (-S) needs a gdb stub: --gdb tcp::PORT or -s".into(),
        ));
    }
    if !(1..=world_switch::pool::MAX_MEMBERS).contains(&request.address_spaces) {
        return Err(LoaderError::Option(format!(
            "--address-spaces {} is outside 1..={}",
            request.address_spaces,
            world_switch::pool::MAX_MEMBERS
        )));
    }
    Ok(())
}

fn read_initrd(path: &std::path::Path) -> Result<Vec<u8>, LoaderError> {
    use std::io::Read;
    let io = |source| LoaderError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_INITRD_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_INITRD_BYTES {
        return Err(LoaderError::Option(format!(
            "the initrd {} is larger than {} MiB",
            path.display(),
            MAX_INITRD_BYTES >> 20
        )));
    }
    Ok(bytes)
}

/// Loads the kernel (and initrd) into `ram` of `ram_size` bytes.
fn load(
    images: &Images,
    request: &RunRequest,
    ram: &GuestRam,
    ram_size: u32,
) -> Result<Handover, LoaderError> {
    let mut write = |phys: u32, bytes: &[u8]| ram.write(phys, bytes);
    match images.kind {
        KernelKind::Multiboot => {
            multiboot::load(&images.kernel, ram_size, &request.cmdline, &mut write)
        }
        KernelKind::BzImage => linux::load(
            &images.kernel,
            images.initrd.as_deref(),
            &request.cmdline,
            ram_size,
            &mut write,
        )
        .map(|(handover, _)| handover),
    }
}

/// One boot's world processes and their RAM, pool and code aliases.
struct Machine<'a> {
    ram: GuestRam,
    pool: Option<world_switch::pool::Pool>,
    aliases: Option<AliasMemory>,
    launcher: &'a Launcher,
    worlds: Vec<WorldProcess>,
}

impl<'a> Machine<'a> {
    /// Loads the images into fresh RAM and has the launcher start the
    /// world processes; with `pause`, the vCPU stops for the host before
    /// the guest's first instruction.
    fn boot(
        images: &Images,
        request: &RunRequest,
        ram_size: u32,
        channel: &Channel,
        launcher: &'a Launcher,
        cpu: Option<usize>,
        pause: bool,
    ) -> Result<Self, LoaderError> {
        let ram = GuestRam::create(ram_size as usize)?;
        let handover = load(images, request, &ram, ram_size)?;
        channel.prepare_boot(
            world_switch::channel::monotonic_ns(),
            world_switch::channel::realtime_ns(),
        );
        // Before the world starts: its first look finds it.
        channel.request_pause(pause);
        channel.set_boot(BootState {
            eip: handover.eip,
            gpr: handover.gpr,
            code_selector: handover.code_selector,
            data_selector: handover.data_selector,
            gdt_base: handover.gdt_base,
            gdt_limit: handover.gdt_limit,
            floppy_drive_type: if request.floppy.is_some() {
                devices::floppy::CMOS_DRIVE_TYPE
            } else {
                0
            },
        });
        let pool = if request.address_spaces > 1 {
            Some(world_switch::pool::Pool::create(
                request.address_spaces,
                ram_size / 4096,
            )?)
        } else {
            None
        };
        let aliases = match request.breakpoints {
            Breakpoints::Split => Some(AliasMemory::create(ram_size as usize / 4096)?),
            Breakpoints::Hardware => None,
        };
        let mut machine = Self {
            ram,
            pool,
            aliases,
            launcher,
            worlds: Vec::new(),
        };
        for member in 0..request.address_spaces {
            let spec = WorldSpec {
                ram_size,
                member: machine
                    .pool
                    .as_ref()
                    .map(|_| u32::try_from(member).unwrap_or(u32::MAX)),
                split: machine.aliases.is_some(),
                exec: request.exec,
                trace: request.trace,
                cpu: cpu.and_then(|cpu| u32::try_from(cpu).ok()),
                scribble: request.scribble,
                leak_syscall_gadget: request.leak_syscall_gadget,
            };
            let mut fds = vec![
                machine.ram.fd().as_raw_fd(),
                channel.region().fd().as_raw_fd(),
            ];
            fds.extend(machine.pool.as_ref().map(|pool| pool.fd().as_raw_fd()));
            fds.extend(
                machine
                    .aliases
                    .as_ref()
                    .map(|aliases| aliases.fd().as_raw_fd()),
            );
            let world = launcher.spawn(&spec, &fds)?;
            machine.worlds.push(world);
        }
        Ok(machine)
    }

    /// Ends every world process: the active one exits on its own after
    /// Terminate, the others wait for a turn.
    fn end_worlds(&mut self) {
        for world in &self.worlds {
            let _ = world.signal(nix::sys::signal::Signal::SIGKILL as i32);
        }
        for world in self.worlds.drain(..) {
            let _ = self.launcher.wait(&world);
        }
    }

    /// The world that runs the guest now. The pool's record of it is
    /// written by the (untrusted) worlds: it is a member index, mapped to
    /// the processes this machine started (members in order), so only one
    /// of them is ever signalled.
    fn active(&self) -> Option<&WorldProcess> {
        match &self.pool {
            Some(pool) => pool
                .active_member()
                .and_then(|member| self.worlds.get(member)),
            None => self.worlds.first(),
        }
    }

    fn world_died(&mut self) -> Option<Ending> {
        if let Some(pool) = &self.pool
            && pool.active_word() as usize >= self.worlds.len()
        {
            return Some(Ending::WorldDied(format!(
                "broke the pool's protocol: it named member {} of {} as the one running the guest",
                pool.active_word(),
                self.worlds.len()
            )));
        }
        for world in &self.worlds {
            match self.launcher.try_wait(world) {
                Ok(Some(status)) => return Some(Ending::WorldDied(describe_status(status))),
                Ok(None) => {}
                Err(error) => {
                    return Some(Ending::WorldDied(format!("cannot be waited for: {error}")));
                }
            }
        }
        None
    }
}

impl Drop for Machine<'_> {
    fn drop(&mut self) {
        self.end_worlds();
    }
}

/// Signals that end the VM cleanly; the host loop looks at the flag.
fn watch_signals() -> Arc<AtomicUsize> {
    let flag = Arc::new(AtomicUsize::new(0));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Without the handler the default action ends btvmm abruptly; the
        // world processes still die with it (PR_SET_PDEATHSIG).
        #[allow(clippy::cast_sign_loss)] // signal numbers are positive
        let _ = signal_hook::flag::register_usize(signal, Arc::clone(&flag), signal as usize);
    }
    flag
}

fn serve_vm(
    request: &RunRequest,
    images: &Images,
    console: impl Write + 'static,
) -> Result<RunOutcome, LoaderError> {
    let memory_mib = request.memory_mib.unwrap_or(match images.kind {
        KernelKind::BzImage => DEFAULT_LINUX_MEMORY_MIB,
        KernelKind::Multiboot => DEFAULT_MULTIBOOT_MEMORY_MIB,
    });
    let ram_size = memory_mib << 20;
    let channel = Channel::new(SharedRegion::create(CHANNEL_BYTES)?)?;
    // Host and worlds on one CPU (see spawn).
    let cpu = world_switch::spawn::current_cpu();
    if let Some(cpu) = cpu {
        world_switch::spawn::pin_to(cpu)?;
    }
    // Its span passes mostly while the launcher starts.
    let tsc = world_switch::sys::tsc::host_tsc_invariant()
        .then(world_switch::sys::tsc::TscMeasurement::start);
    // COM1's output: the file asked for, else the console writer, which
    // the display's terminal takes from it.
    let (console, serial_fd): (Box<dyn Write>, _) = match &request.serial {
        Some(path) => {
            let file = std::fs::File::create(path).map_err(|source| LoaderError::Io {
                path: path.clone(),
                source,
            })?;
            let fd = file.as_raw_fd();
            (Box::new(file), Some(fd))
        }
        None if request.display == DisplayMode::Curses => (Box::new(std::io::sink()), None),
        None => (Box::new(console), None),
    };
    let mut board = Board::new(console).map_err(|error| LoaderError::Option(error.to_string()))?;
    let signals = watch_signals();
    // Before any guest input is parsed: the only process that can start
    // worlds once btvmm is confined.
    let exe = std::env::current_exe().map_err(|source| LoaderError::Io {
        path: "/proc/self/exe".into(),
        source,
    })?;
    let launcher = Launcher::start(&exe)?;
    // After the launcher: no process but this one holds the image.
    let disk_fd = match &request.disk {
        Some(spec) => {
            let image = crate::disk::DiskImage::open(spec)?;
            let fd = image.raw_fd();
            let serial = image.serial();
            board.disk = Some(devices::ata::AtaDisk::new(Box::new(image), &serial));
            Some(fd)
        }
        None => None,
    };
    let floppy_fd = match &request.floppy {
        Some(spec) => {
            let image = crate::disk::DiskImage::open(spec)?;
            let sectors = devices::ata::BlockBackend::sectors(&image);
            if sectors != devices::floppy::DISK_SECTORS {
                return Err(LoaderError::Disk {
                    path: spec.path.clone(),
                    why: format!(
                        "{} bytes: a 1.44 MB floppy image is {} bytes",
                        sectors * devices::ata::SECTOR_BYTES as u64,
                        devices::floppy::DISK_SECTORS * devices::ata::SECTOR_BYTES as u64
                    ),
                });
            }
            let fd = image.raw_fd();
            board.floppy = Some(devices::floppy::Fdc::new(Some(Box::new(image))));
            Some(fd)
        }
        None => None,
    };
    let tsc_khz = match tsc.map(world_switch::sys::tsc::TscMeasurement::finish) {
        Some(Some(khz)) => khz,
        Some(None) => {
            eprintln!(
                "btvmm: the host's TSC frequency could not be measured: the guest calibrates its TSC itself"
            );
            0
        }
        // Not invariant on this host: the guest is not told a frequency
        // that may change, and calibrates.
        None => 0,
    };
    channel.set_tsc_khz(tsc_khz);
    channel.set_policy(request.policy.to_words());
    if request.confine_host {
        // Capabilities are per thread: before the console reader starts.
        world_switch::sys::host_filter::keep_only_kill_capability()?;
    }
    let display = if request.display == DisplayMode::Curses {
        let waker = channel.reopen()?;
        Some(Display::start(move || waker.wake_host())?)
    } else {
        None
    };
    // With the display the terminal's keys go to the keyboard.
    let console_input = if request.console_input && display.is_none() {
        let waker = channel.reopen()?;
        Some(Console::start(move || waker.wake_host()))
    } else {
        None
    };
    let gdb = match &request.gdb {
        Some(address) => {
            let server = crate::gdb::GdbServer::listen(address, channel.reopen()?)
                .map_err(LoaderError::Option)?;
            if let Some(local) = server.local_address() {
                eprintln!("btvmm: gdb stub listening on {local} (target remote {local})");
            }
            Some(server)
        }
        None => None,
    };
    if request.confine_host {
        confine(
            &launcher,
            [disk_fd, floppy_fd],
            serial_fd,
            display.is_some(),
            gdb.as_ref().map(crate::gdb::GdbServer::descriptors),
        )?;
    }
    if let Some(escape) = request.host_escape {
        // Only reached when the filter let the attempt through.
        return Err(LoaderError::Option(format!(
            "the host filter failed: btvmm {}",
            escape.attempt()
        )));
    }
    let mut host = Host {
        channel: &channel,
        board,
        levels: 0,
        memory: Vec::new(),
        stats: request.stats,
        console: console_input.as_ref(),
        input: VecDeque::new(),
        signals: &signals,
        marks: Vec::new(),
        display: display.as_ref(),
        keys: VecDeque::new(),
        paused: None,
        pause_wanted: false,
        last_frame: None,
        gdb,
        gdb_wait: request.gdb_wait,
        gdb_looked: None,
    };
    let mut resets = 0;
    let ending = loop {
        // A pause the user asked for before the reset holds for the new
        // boot too (the channel starts each boot without one). With gdb,
        // each boot stops first: before its first instruction for
        // --gdb-wait, else to take gdb's points and run on.
        let gdb_stop = host
            .gdb
            .as_mut()
            .is_some_and(crate::gdb::GdbServer::rebooting)
            || (host.gdb_wait && resets == 0);
        let mut machine = Machine::boot(
            images,
            request,
            ram_size,
            &channel,
            &launcher,
            cpu,
            host.pause_wanted || gdb_stop,
        )?;
        host.levels = 0;
        let ending = host.serve(&mut machine);
        machine.end_worlds();
        match ending {
            Ending::Reset if !request.no_reboot => {
                resets += 1;
                host.board.reset();
            }
            ending => break ending,
        }
    };
    if let Some(gdb) = &mut host.gdb {
        gdb.vm_ended(match &ending {
            Ending::DebugExit(status) => u8::try_from(*status & 0xff).unwrap_or(1),
            Ending::PowerOff | Ending::Reset | Ending::Quit | Ending::Killed => 0,
            _ => 1,
        });
    }
    let unclaimed_ports = host
        .board
        .unclaimed()
        .iter()
        .map(|(&port, count)| (port, count.reads, count.writes))
        .collect();
    Ok(RunOutcome {
        ending,
        counters: Counters::from_slice(&channel.counters()),
        worlds: std::mem::take(&mut host.memory),
        unclaimed_ports,
        resets,
        marks: std::mem::take(&mut host.marks),
    })
}

/// Puts this process under its own seccomp filter (sys::host_filter).
fn confine(
    launcher: &Launcher,
    images: [Option<std::os::fd::RawFd>; 2],
    serial: Option<std::os::fd::RawFd>,
    display: bool,
    gdb: Option<(std::os::fd::RawFd, std::os::fd::RawFd)>,
) -> Result<(), LoaderError> {
    let allowed = world_switch::sys::host_filter::HostAllowed {
        launcher_socket: launcher.socket(),
        launcher_pid: launcher.pid(),
        pid: i32::try_from(std::process::id()).unwrap_or(-1),
        images: images.into_iter().flatten().collect(),
        serial,
        display,
        gdb,
    };
    world_switch::sys::host_filter::install(&allowed)?;
    Ok(())
}

/// Guest RAM as the ISA DMA controller reaches it.
struct RamDma<'a>(&'a GuestRam);

impl devices::dma::DmaMemory for RamDma<'_> {
    fn read(&self, guest_phys: u32, buf: &mut [u8]) -> bool {
        self.0.read(guest_phys, buf)
    }

    fn write(&mut self, guest_phys: u32, data: &[u8]) -> bool {
        self.0.write(guest_phys, data)
    }
}

/// How often the gdb stub looks at its sockets while the guest runs (and
/// how long it waits on them while the guest is stopped).
const GDB_LOOK: Duration = Duration::from_millis(20);

/// Longest the host sleeps before looking at the world process again.
const POLL: Duration = Duration::from_millis(100);

/// The host side of a running VM: the devices, the channel, the console.
/// (The guest's timer and interrupt controllers run in the world, which
/// sets its own host timer.)
struct Host<'a> {
    channel: &'a Channel,
    board: Board,
    /// The worlds' memory, read at the debug-exit port with --stats.
    memory: Vec<WorldMemory>,
    /// Read the worlds' memory at the debug-exit port.
    stats: bool,
    /// The host devices' interrupt lines as last written to the channel.
    levels: u16,
    /// Standard input, when it feeds COM1.
    console: Option<&'a Console>,
    /// Console bytes COM1 has not taken yet.
    input: VecDeque<u8>,
    /// Set to the number of a terminating signal.
    signals: &'a AtomicUsize,
    /// Counter marks so far.
    marks: Vec<(u32, Counters)>,
    /// The screen and keyboard in the terminal, with `--display curses`.
    display: Option<&'a Display>,
    /// Key events (set 2 bytes each) the keyboard has not taken yet.
    keys: VecDeque<Vec<u8>>,
    /// The vCPU's registers while it is paused: the world waits for the
    /// reply to its pause exit.
    paused: Option<Box<btvmm_core::VcpuRegisters>>,
    /// The user asked for a pause and has not resumed.
    pause_wanted: bool,
    /// When the display got its last frame.
    last_frame: Option<std::time::Instant>,
    /// The gdb stub (`--gdb`).
    gdb: Option<crate::gdb::GdbServer>,
    /// Stop before the first instruction until gdb continues.
    gdb_wait: bool,
    /// When the gdb stub last looked at its sockets.
    gdb_looked: Option<std::time::Instant>,
}

impl Host<'_> {
    /// Publishes the host devices' interrupt lines; a change kicks the
    /// world when it is running (see the channel's protocol: the levels
    /// are stored before the kick).
    fn update_levels(&mut self, machine: &Machine<'_>) {
        let levels = self.board.interrupt_levels();
        let pulses = self.board.take_pulses();
        if levels != self.levels || pulses != 0 {
            self.levels = levels;
            if self.channel.set_irq_levels(levels, pulses)
                && let Some(world) = machine.active()
            {
                // The levels are stored: the world that runs the guest
                // now (see world_switch::pool for why a handoff in
                // between loses nothing). A world that already died is
                // noticed by world_died.
                let _ = world.signal(world_switch::trap::KICK_SIGNAL);
            }
        }
    }

    /// Console events and signals since the last look; an ending if one
    /// of them ends the VM.
    fn outside_events(&mut self, machine: &Machine<'_>) -> Option<Ending> {
        let signal = self.signals.swap(0, Ordering::Relaxed);
        if signal != 0 {
            return Some(Ending::Signal(i32::try_from(signal).unwrap_or(0)));
        }
        if let Some(console) = self.console {
            for event in console.take_events() {
                match event {
                    ConsoleEvent::Input(bytes) => self.input.extend(bytes),
                    // Input just stops; the guest runs on.
                    ConsoleEvent::EndOfInput => {}
                    ConsoleEvent::Quit => return Some(Ending::Quit),
                }
            }
        }
        if let Some(display) = self.display {
            for event in display.take_events() {
                if let Some(ending) = self.display_event(machine, event) {
                    return Some(ending);
                }
            }
        }
        self.feed_input();
        None
    }

    /// What the user did at the display.
    fn display_event(&mut self, machine: &Machine<'_>, event: DisplayEvent) -> Option<Ending> {
        match event {
            DisplayEvent::Key(keystroke) => self.keys.extend(keystroke.events()),
            DisplayEvent::Quit => return Some(Ending::Quit),
            DisplayEvent::Pause => {
                self.pause_wanted = true;
                self.channel.request_pause(true);
                // Kicked whether or not the world owns the page now: a
                // kick it need not have is one look and a resume.
                if let Some(world) = machine.active() {
                    let _ = world.signal(world_switch::trap::KICK_SIGNAL);
                }
            }
            DisplayEvent::Resume => {
                self.pause_wanted = false;
                self.channel.request_pause(false);
                if self.paused.take().is_some() {
                    self.update_levels(machine);
                    self.channel.reply(Reply::Continue);
                }
            }
        }
        self.show_frame(machine, true);
        None
    }

    /// Serves the gdb stub: its connection, gdb's stops and kills.
    fn serve_gdb(&mut self, machine: &Machine<'_>) -> Option<Ending> {
        let gdb = self.gdb.as_mut()?;
        let stopped = gdb.stopped();
        // While the guest runs, a look at the socket every GDB_LOOK at
        // most: no system call per exit.
        let now = std::time::Instant::now();
        if !stopped
            && self
                .gdb_looked
                .is_some_and(|last| now.duration_since(last) < GDB_LOOK)
        {
            return None;
        }
        self.gdb_looked = Some(now);
        let wants = gdb.serve(if stopped { GDB_LOOK } else { Duration::ZERO });
        if let Some(failure) = wants.failure {
            return Some(Ending::Stopped(StopReason::Internal(failure)));
        }
        if wants.kill {
            if gdb.stopped() {
                self.channel.reply(Reply::Terminate);
            }
            return Some(Ending::Killed);
        }
        if wants.pause {
            self.channel.request_pause(true);
            if let Some(world) = machine.active() {
                let _ = world.signal(world_switch::trap::KICK_SIGNAL);
            }
        }
        None
    }

    /// Hands the next key event to the keyboard once it holds nothing the
    /// guest has not read.
    fn feed_keys(&mut self) {
        if self.board.kbc.keyboard_idle()
            && let Some(event) = self.keys.pop_front()
        {
            self.board.push_key(&event);
        }
    }

    /// Gives the display a new frame, at most every FRAME_INTERVAL unless
    /// `now` (something the user asked for changed).
    fn show_frame(&mut self, machine: &Machine<'_>, now: bool) {
        let Some(display) = self.display else {
            return;
        };
        let at = std::time::Instant::now();
        if !now
            && self
                .last_frame
                .is_some_and(|last| at.duration_since(last) < crate::display::FRAME_INTERVAL)
        {
            return;
        }
        self.last_frame = Some(at);
        let layout = self.board.vga.text_layout();
        // The whole window at once (32 KiB in text modes): cells wrap in it.
        let mut window = vec![0u8; layout.window_bytes as usize];
        if !machine.ram.read(layout.window_guest_phys, &mut window) {
            window.fill(0);
        }
        let mut cells = Vec::with_capacity(usize::from(layout.rows) * usize::from(layout.columns));
        for row in 0..layout.rows {
            for column in 0..layout.columns {
                let offset = layout.cell_offset(row, column) as usize;
                let cell = window
                    .get(offset..offset + 2)
                    .map_or(0, |bytes| u16::from_le_bytes([bytes[0], bytes[1]]));
                cells.push(cell);
            }
        }
        display.show(Frame {
            layout,
            cells,
            palette: self.board.vga.palette(),
            counters: self.channel.counters(),
            paused: self.paused.as_deref().copied(),
            pausing: self.pause_wanted && self.paused.is_none(),
            at,
        });
    }

    /// Hands waiting console bytes to COM1 as its FIFO has room, once the
    /// guest asks for them (RTS: see `Uart::ready_to_receive`).
    fn feed_input(&mut self) {
        if !self.input.is_empty() && self.board.com1.ready_to_receive() {
            self.board.com1.receive(&mut self.input);
        }
    }

    /// The loop: serve exits until the VM ends.
    fn serve(&mut self, machine: &mut Machine<'_>) -> Ending {
        loop {
            if let Some(ending) = self.outside_events(machine) {
                return ending;
            }
            if let Some(ending) = self.serve_gdb(machine) {
                return ending;
            }
            self.feed_keys();
            self.update_levels(machine);
            self.show_frame(machine, false);
            if self
                .gdb
                .as_ref()
                .is_some_and(crate::gdb::GdbServer::stopped)
            {
                // The world waits for the debugger: serve_gdb waits on
                // its connection.
                if let Some(ending) = machine.world_died() {
                    return ending;
                }
                continue;
            }
            if self.paused.is_some() {
                // The world waits for the reply to its pause: only the
                // user (or a signal, or the world's death) changes
                // anything now.
                if let Some(display) = self.display
                    && let Some(event) = display.wait_event(crate::display::FRAME_INTERVAL)
                    && let Some(ending) = self.display_event(machine, event)
                {
                    return ending;
                }
                if let Some(ending) = machine.world_died() {
                    return ending;
                }
                continue;
            }
            let poll = if self
                .gdb
                .as_ref()
                .is_some_and(crate::gdb::GdbServer::attached)
            {
                // gdb's Ctrl-C waits for the next look.
                GDB_LOOK
            } else if self.display.is_some() {
                crate::display::FRAME_INTERVAL
            } else {
                POLL
            };
            let Some(exit) = self.channel.wait_exit(poll) else {
                if let Some(ending) = machine.world_died() {
                    return ending;
                }
                continue;
            };
            let reply = match exit {
                Exit::PortIn { port, size } => Reply::Value(self.board.read(port, size)),
                Exit::PortInString { port, size, count } => {
                    let mut data = [0u8; btvmm_core::exit::STRING_EXIT_BYTES];
                    let data = &mut data[..usize::from(count) * usize::from(size)];
                    self.board.read_string(port, size, data);
                    self.channel.set_string_data(data);
                    Reply::Continue
                }
                Exit::PortOutString { port, size, count } => {
                    let mut data = [0u8; btvmm_core::exit::STRING_EXIT_BYTES];
                    let data = &mut data[..usize::from(count) * usize::from(size)];
                    self.channel.string_data(data);
                    match self.board.write_string(port, size, data) {
                        BusEffect::None => Reply::Continue,
                        BusEffect::Reset => {
                            self.channel.reply(Reply::Terminate);
                            return Ending::Reset;
                        }
                        BusEffect::Exit(status) => {
                            self.channel.reply(Reply::Terminate);
                            return Ending::DebugExit(status);
                        }
                        BusEffect::Mark(_) => Reply::Continue,
                    }
                }
                Exit::PortOut { port, size, value } => match self.board.write(port, size, value) {
                    BusEffect::Exit(status) => {
                        // Before the reply: the active world exits then.
                        if self.stats {
                            self.memory = machine
                                .worlds
                                .iter()
                                .filter_map(|world| machine.launcher.memory(world).ok().flatten())
                                .collect();
                        }
                        self.channel.reply(Reply::Terminate);
                        return Ending::DebugExit(status);
                    }
                    BusEffect::Reset => {
                        self.channel.reply(Reply::Terminate);
                        return Ending::Reset;
                    }
                    BusEffect::Mark(value) => {
                        // The world published its counters with this exit.
                        if self.marks.len() < MARKS_KEPT {
                            self.marks
                                .push((value, Counters::from_slice(&self.channel.counters())));
                        }
                        Reply::Continue
                    }
                    BusEffect::None => Reply::Continue,
                },
                Exit::Halt { interrupts_enabled } => {
                    self.channel.reply(Reply::Terminate);
                    if interrupts_enabled {
                        // The world sleeps through HLT itself while an
                        // interrupt can wake the guest: it never asks.
                        return Ending::Stopped(StopReason::Internal(
                            "the world reported a HLT with interrupts enabled".into(),
                        ));
                    }
                    return Ending::PowerOff;
                }
                Exit::Paused(registers, cause) => {
                    let wait = std::mem::take(&mut self.gdb_wait);
                    if let Some(gdb) = &mut self.gdb
                        && gdb.take_stop(*registers, cause, wait)
                    {
                        // No reply until gdb lets the vCPU go.
                        continue;
                    }
                    if self.pause_wanted {
                        // No reply until the user resumes.
                        self.paused = Some(registers);
                        self.show_frame(machine, true);
                        continue;
                    }
                    // Resumed before the pause arrived.
                    Reply::Continue
                }
                Exit::DebugResult { .. } => {
                    self.channel.reply(Reply::Terminate);
                    return Ending::Stopped(StopReason::GuestEscape(
                        "the world process sent a debugger result nobody asked for".into(),
                    ));
                }
                Exit::Stop(StopReason::TripleFault) => {
                    // A PC resets on a triple fault (the shutdown cycle).
                    self.channel.reply(Reply::Terminate);
                    return Ending::Reset;
                }
                Exit::Stop(reason) => {
                    self.channel.reply(Reply::Terminate);
                    return Ending::Stopped(reason);
                }
            };
            // A read of COM1's receiver makes room for waiting input, a
            // write of its MCR may ask for it; a read of the keyboard's
            // output buffer for the next key.
            self.feed_input();
            self.feed_keys();
            // A floppy command or the DMA channel it waits for.
            if self.board.dma_pending() {
                self.board.run_dma(&mut RamDma(&machine.ram));
            }
            // The world reads the levels after the reply: publish first.
            self.update_levels(machine);
            self.channel.reply(reply);
        }
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(31) => {
            // SIGSYS from SECCOMP_RET_KILL_PROCESS.
            "was killed by its seccomp filter (a system call outside the monitor's allow-list)"
                .into()
        }
        Some(signal) => format!("was killed by signal {signal}"),
        None => format!("exited with status {}", status.code().unwrap_or(-1)),
    }
}
