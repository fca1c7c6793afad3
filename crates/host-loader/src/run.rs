//! `btvmm run`: boot a kernel in a world process and serve its exits.
//!
//! The host process owns guest RAM (a memfd), the channel, the devices that
//! need host resources and the console; the world process runs the guest,
//! its monitor and the interrupt/timer chipset. The host loop waits on the
//! channel, answers port I/O from the device bus, wakes the world when its
//! timer is due, and ends the VM when the guest writes the debug-exit
//! port, stops, or the world dies.

use std::io::Write;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use btvmm_core::{Exit, Reply, StopReason};
use devices::BusEffect;
use devices::board::Board;
use guest_monitor::counters::Counters;
use world_switch::channel::{BootState, CHANNEL_BYTES, Channel};
use world_switch::sys::memory::{GuestRam, SharedRegion};

use crate::LoaderError;
use crate::multiboot;

/// Exit status of `btvmm run` when the VM stopped for a reason other than
/// the debug-exit port (even, so it never collides with QEMU's debug-exit
/// statuses, which are odd).
pub const EXIT_VM_STOPPED: i32 = 2;

/// What `btvmm run` was asked.
#[derive(Clone, Debug)]
pub struct RunRequest {
    /// The Multiboot kernel.
    pub kernel: PathBuf,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// The kernel command line.
    pub cmdline: String,
    /// Print the monitor's counters at the end.
    pub stats: bool,
    /// Trace the monitor to standard error.
    pub trace: bool,
    /// World processes in the pool of address spaces (1 to 8).
    pub address_spaces: usize,
}

/// World processes kept for guest address spaces unless asked otherwise.
pub const DEFAULT_ADDRESS_SPACES: u8 = 4;

/// How the VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The guest wrote the debug-exit port: this is the exit status.
    DebugExit(i32),
    /// The VM stopped.
    Stopped(StopReason),
    /// The guest halted with nothing that could wake it.
    Halted {
        /// The virtual interrupt flag at the HLT.
        interrupts_enabled: bool,
    },
    /// The world process ended on its own.
    WorldDied(String),
}

/// What one world process used when the guest wrote the debug-exit port
/// (from /proc/PID/status and /proc/PID/maps): the cost of the shadow it
/// holds, beside guest RAM, which every world maps and shares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorldMemory {
    /// Host page tables, KiB (VmPTE).
    pub page_tables_kib: u64,
    /// Private memory touched, KiB (RssAnon): the monitor's heap (shadow
    /// entries, decode caches) and stacks.
    pub anonymous_kib: u64,
    /// Shared memory touched through this process, KiB (RssShmem): guest
    /// RAM and the channels.
    pub shared_kib: u64,
    /// Mappings (lines of /proc/PID/maps): shadow runs, mostly.
    pub mappings: u64,
}

impl WorldMemory {
    fn of(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|value| value.parse().ok())
                .unwrap_or(0)
        };
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        Some(Self {
            page_tables_kib: field("VmPTE:"),
            anonymous_kib: field("RssAnon:"),
            shared_kib: field("RssShmem:"),
            mappings: maps.lines().count() as u64,
        })
    }
}

/// The result of a run.
#[derive(Debug)]
pub struct RunOutcome {
    /// How it ended.
    pub ending: Ending,
    /// The monitor's last published counters.
    pub counters: Counters,
    /// Each world process's memory at the debug-exit port (empty for other
    /// endings).
    pub worlds: Vec<WorldMemory>,
}

impl RunOutcome {
    /// The process exit status for this ending.
    #[must_use]
    pub fn exit_status(&self) -> i32 {
        match self.ending {
            Ending::DebugExit(status) => status,
            _ => EXIT_VM_STOPPED,
        }
    }

    /// A one-line description of an ending other than the debug-exit port.
    #[must_use]
    pub fn message(&self) -> Option<String> {
        match &self.ending {
            Ending::DebugExit(_) => None,
            Ending::Stopped(reason) => Some(format!("the VM stopped: {reason}")),
            Ending::Halted {
                interrupts_enabled: false,
            } => Some("the VM stopped: the guest halted with interrupts disabled".into()),
            Ending::Halted {
                interrupts_enabled: true,
            } => Some("the VM stopped: the guest halted".into()),
            Ending::WorldDied(how) => Some(format!("the VM stopped: the world process {how}")),
        }
    }
}

/// Boots the kernel and serves the VM until it ends. Guest console output
/// goes to `console`.
pub fn run(request: &RunRequest, console: impl Write + 'static) -> Result<RunOutcome, LoaderError> {
    let kernel = crate::report::read_limited(&request.kernel)?;
    run_image(request, &kernel, console, |_| {})
}

/// Boots the Multiboot kernel image `kernel` (`request.kernel` only names
/// it) and serves the VM until it ends; then hands guest RAM to `inspect`
/// (e.g. to read results the guest left there).
pub fn run_image(
    request: &RunRequest,
    kernel: &[u8],
    console: impl Write + 'static,
    inspect: impl FnOnce(&GuestRam),
) -> Result<RunOutcome, LoaderError> {
    if !(2..=3072).contains(&request.memory_mib) {
        return Err(LoaderError::Option(format!(
            "--memory {} is outside 2..=3072 MiB",
            request.memory_mib
        )));
    }
    let ram_size = request.memory_mib << 20;
    let ram = GuestRam::create(ram_size as usize)?;
    let handover = multiboot::load(kernel, ram_size, &request.cmdline, &mut |phys, bytes| {
        ram.write(phys, bytes)
    })?;

    let channel = Channel::new(SharedRegion::create(CHANNEL_BYTES)?)?;
    channel.set_epoch(world_switch::channel::monotonic_ns());
    channel.set_boot(BootState {
        eip: handover.entry,
        eax: handover.eax,
        ebx: handover.ebx,
        esp: 0,
    });
    let exe = std::env::current_exe().map_err(|source| LoaderError::Io {
        path: "/proc/self/exe".into(),
        source,
    })?;
    if !(1..=world_switch::pool::MAX_MEMBERS).contains(&request.address_spaces) {
        return Err(LoaderError::Option(format!(
            "--address-spaces {} is outside 1..={}",
            request.address_spaces,
            world_switch::pool::MAX_MEMBERS
        )));
    }
    let pool = if request.address_spaces > 1 {
        Some(world_switch::pool::Pool::create(
            request.address_spaces,
            ram_size / 4096,
        )?)
    } else {
        None
    };
    // Host and worlds on one CPU (see spawn).
    let cpu = world_switch::spawn::current_cpu();
    if let Some(cpu) = cpu {
        world_switch::spawn::pin_to(cpu)?;
    }
    let mut worlds = Vec::new();
    for member in 0..request.address_spaces {
        let mut args = vec![
            "__world".to_owned(),
            "--ram-size".to_owned(),
            ram_size.to_string(),
        ];
        if request.trace {
            args.push("--trace".to_owned());
        }
        if pool.is_some() {
            args.extend(["--member".to_owned(), member.to_string()]);
        }
        match world_switch::spawn::spawn(&exe, &args, &ram, &channel, pool.as_ref(), cpu) {
            Ok(child) => worlds.push(child),
            Err(error) => {
                end_worlds(&mut worlds);
                return Err(error.into());
            }
        }
    }
    let board = Board::new(console).map_err(|error| LoaderError::Option(error.to_string()))?;

    let mut host = Host {
        channel: &channel,
        board,
        worlds: &mut worlds,
        pool: pool.as_ref(),
        levels: 0,
        memory: Vec::new(),
    };
    let ending = host.serve();
    let memory = std::mem::take(&mut host.memory);
    // The active world exits on its own after Terminate, the others wait
    // for a turn: make sure all are gone.
    end_worlds(&mut worlds);
    inspect(&ram);
    Ok(RunOutcome {
        ending,
        counters: Counters::from_slice(&channel.counters()),
        worlds: memory,
    })
}

fn end_worlds(worlds: &mut [Child]) {
    for world in worlds.iter_mut() {
        let _ = world.kill();
    }
    for world in worlds.iter_mut() {
        let _ = world.wait();
    }
}

/// Longest the host sleeps before looking at the world process again.
const POLL: Duration = Duration::from_millis(100);

/// The host side of a running VM: the console and debug-exit devices, the
/// channel, the world process. (The guest's timer and interrupt
/// controllers run in the world, which sets its own host timer.)
struct Host<'a> {
    channel: &'a Channel,
    board: Board,
    /// The world processes (the pool's members, in member order).
    worlds: &'a mut [Child],
    /// Which world runs the guest, when there are several.
    pool: Option<&'a world_switch::pool::Pool>,
    /// The worlds' memory, read at the debug-exit port.
    memory: Vec<WorldMemory>,
    /// The host devices' interrupt lines as last written to the channel.
    levels: u16,
}

impl Host<'_> {
    /// Publishes the host devices' interrupt lines; a change kicks the
    /// world when it is running (see the channel's protocol: the levels
    /// are stored before the kick).
    fn update_levels(&mut self) {
        let levels = self.board.interrupt_levels();
        if levels != self.levels {
            self.levels = levels;
            if self.channel.set_irq_levels(levels) {
                self.kick();
            }
        }
    }

    fn kick(&self) {
        // The levels are stored: the world that runs the guest now (see
        // world_switch::pool for why a handoff in between loses nothing).
        // A world that already died is noticed by world_died.
        let pid = match self.pool {
            Some(pool) => pool.active_pid(),
            None => self
                .worlds
                .first()
                .and_then(|world| i32::try_from(world.id()).ok()),
        };
        if let Some(pid) = pid {
            let _ = world_switch::spawn::kick_pid(pid);
        }
    }

    fn world_died(&mut self) -> Option<Ending> {
        for world in self.worlds.iter_mut() {
            match world.try_wait() {
                Ok(Some(status)) => return Some(Ending::WorldDied(describe_status(status))),
                Ok(None) => {}
                Err(error) => {
                    return Some(Ending::WorldDied(format!("cannot be waited for: {error}")));
                }
            }
        }
        None
    }

    /// The loop: serve exits until the VM ends.
    fn serve(&mut self) -> Ending {
        loop {
            let Some(exit) = self.channel.wait_exit(POLL) else {
                if let Some(ending) = self.world_died() {
                    return ending;
                }
                continue;
            };
            let reply = match exit {
                Exit::PortIn { port, size } => Reply::Value(self.board.read(port, size)),
                Exit::PortOut { port, size, value } => match self.board.write(port, size, value) {
                    BusEffect::Exit(status) => {
                        // Before the reply: the active world exits then.
                        self.memory = self
                            .worlds
                            .iter()
                            .filter_map(|world| WorldMemory::of(world.id()))
                            .collect();
                        self.channel.reply(Reply::Terminate);
                        return Ending::DebugExit(status);
                    }
                    BusEffect::None => Reply::Continue,
                },
                Exit::Halt { interrupts_enabled } => {
                    // The world sleeps through HLT itself while an
                    // interrupt can wake the guest: it exits only when
                    // none can.
                    self.channel.reply(Reply::Terminate);
                    return Ending::Halted { interrupts_enabled };
                }
                Exit::Stop(reason) => {
                    self.channel.reply(Reply::Terminate);
                    return Ending::Stopped(reason);
                }
            };
            // The world reads the levels after the reply: publish first.
            self.update_levels();
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
