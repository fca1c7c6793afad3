//! The world process: attach to guest RAM and the channel the host made,
//! check the address space, open the breakpoints, map guest memory, then
//! install the monitor's handler and the seccomp filter and enter the guest.

use std::convert::Infallible;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;

use btvmm_core::descriptor::Descriptor;
use btvmm_core::{
    Action, AddressSpaces, CodeAliases, Exit, GuestPhys, GuestVirt, HostRegisters, MemFault,
    PhysMemory, Reply, ServiceError, Trap, WorldServices,
};

use crate::WorldError;
use crate::channel::{CHANNEL_BYTES, Channel};
use crate::pool::Pool;
use crate::shadow::LdtEntry;
use crate::sys::alias::AliasMemory;
use crate::sys::memory::{GuestRam, SharedRegion};
use crate::sys::perf::Breakpoints;
use crate::sys::timer::KickTimer;
use crate::sys::{ldt, lockdown, maps, seccomp, signal};
use crate::trap::{self, ENTER_SIGNAL, SIGNALS};

/// Hardware breakpoints on x86.
pub const BREAKPOINTS: usize = 4;
/// The world's resources, which the monitor reaches through
/// [`WorldServices`].
#[derive(Debug)]
pub struct World {
    ram: GuestRam,
    channel: Channel,
    breakpoints: Breakpoints,
    /// Sends the kick signal when the guest's timer chipset is due.
    timer: KickTimer,
    cpuid_faults: bool,
    /// The pool of world processes this one belongs to.
    pool: Option<Pool>,
    /// RDTSC faults in this process (the guest's CR4.TSD): the vDSO clock,
    /// which reads the TSC, cannot be used meanwhile.
    timestamp_faulting: bool,
    /// The split code view's alias pages.
    aliases: Option<AliasMemory>,
    /// Which system-call instruction the host's fast path takes.
    fast_path: btvmm_core::HostFastPath,
    /// The guest's FPU state in the frame of the trap being handled, read
    /// before the monitor runs; a new image to load when it resumes.
    fpu: FpuExchange,
    /// The btvmm process (this one's parent), which it must die with.
    parent: libc::pid_t,
    /// Say at start-up what the sandbox could not do (one world of a pool
    /// says it for all).
    announce_sandbox: bool,
}

/// The guest FPU image of the current trap (see `WorldServices::guest_fpu`).
#[derive(Debug, Default)]
struct FpuExchange {
    current: Option<[u8; crate::sys::signal::FXSAVE_BYTES]>,
    replacement: Option<[u8; crate::sys::signal::FXSAVE_BYTES]>,
}

impl World {
    /// Attaches to the guest RAM and channel memfds the host passed as
    /// `ram_fd` and `channel_fd`.
    ///
    /// # Safety
    ///
    /// The descriptors must be the open memfds the host created, owned by
    /// this process from now on.
    pub unsafe fn attach(
        ram_fd: RawFd,
        ram_size: usize,
        channel_fd: RawFd,
    ) -> Result<Self, WorldError> {
        // Die with the host.
        // SAFETY: prctl with integer arguments.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        }
        let parent = nix::unistd::getppid().as_raw();
        signal::check_fsgsbase()?;
        // SAFETY: forwarded ownership of the host's descriptors.
        let ram = unsafe { GuestRam::from_raw_fd(ram_fd, ram_size)? };
        // SAFETY: as above.
        let channel =
            Channel::new(unsafe { SharedRegion::from_raw_fd(channel_fd, CHANNEL_BYTES)? })?;
        // Before any guest mapping exists, nothing may lie below 4 GiB.
        maps::check_nothing_below_4g()?;
        let breakpoints = Breakpoints::open(BREAKPOINTS)?;
        let timer = KickTimer::create(crate::trap::KICK_SIGNAL)?;
        // The LDT is where every guest segment lives: make sure the host
        // lets us write one before the guest needs it.
        ldt::write_entry(crate::shadow::FIRST_SLOT, &LdtEntry::EMPTY).map_err(
            |error| match error {
                WorldError::Host { source, .. } => WorldError::MissingFeature {
                    feature: "modify_ldt(2)",
                    hint: "the host kernel needs CONFIG_MODIFY_LDT_SYSCALL",
                    source,
                },
                other => other,
            },
        )?;
        let fast_path = host_fast_path();
        let cpuid_faults = enable_cpuid_faulting();
        Ok(Self {
            ram,
            channel,
            breakpoints,
            timer,
            cpuid_faults,
            pool: None,
            timestamp_faulting: false,
            aliases: None,
            fast_path,
            fpu: FpuExchange::default(),
            parent,
            announce_sandbox: true,
        })
    }

    /// Joins the pool of world processes as member `member`.
    ///
    /// # Safety
    ///
    /// `pool_fd` must be the pool memfd the host created, owned by this
    /// process from now on.
    pub unsafe fn join_pool(&mut self, pool_fd: RawFd, member: usize) -> Result<(), WorldError> {
        let pages = u32::try_from(self.ram.size() / 4096).unwrap_or(u32::MAX);
        // SAFETY: forwarded contract.
        self.pool = Some(unsafe { Pool::from_raw_fd(pool_fd, pages, member)? });
        self.announce_sandbox = member == 0;
        Ok(())
    }

    /// Attaches to the alias code pages of the split code view.
    ///
    /// # Safety
    ///
    /// `alias_fd` must be the alias memfd the host created for this VM's
    /// guest RAM, owned by this process from now on.
    pub unsafe fn attach_aliases(&mut self, alias_fd: RawFd) -> Result<(), WorldError> {
        let pages = self.ram.size() / 4096;
        // SAFETY: forwarded contract.
        self.aliases = Some(unsafe { AliasMemory::from_raw_fd(alias_fd, pages)? });
        Ok(())
    }

    /// Which 32-bit system-call instruction this host's CPU sends through
    /// the host kernel's fast path (read with CPUID before faulting was
    /// turned on).
    #[must_use]
    pub fn host_fast_path(&self) -> btvmm_core::HostFastPath {
        self.fast_path
    }

    /// Whether CPUID faults in this process (so guest CPUID, in user mode
    /// too, reaches the monitor and shows the virtual CPU).
    #[must_use]
    pub fn cpuid_faults(&self) -> bool {
        self.cpuid_faults
    }

    /// The channel to the host.
    #[must_use]
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The descriptors the world keeps: guest RAM, the channel, the pool,
    /// the code aliases and the breakpoint events.
    fn descriptors(&self) -> Vec<RawFd> {
        let mut kept = vec![
            self.ram.fd().as_raw_fd(),
            self.channel.region().fd().as_raw_fd(),
        ];
        kept.extend(self.pool.as_ref().map(|pool| pool.fd().as_raw_fd()));
        kept.extend(
            self.aliases
                .as_ref()
                .map(|aliases| aliases.fd().as_raw_fd()),
        );
        kept.extend(self.breakpoints.fds());
        kept
    }

    /// What the filter lets the monitor name in its system calls.
    fn allowed(&self) -> seccomp::Allowed {
        let region = |region: &SharedRegion| {
            (
                region.as_ptr() as u64,
                u64::try_from(region.size()).unwrap_or(0),
            )
        };
        let mut futex_regions = vec![region(self.channel.region())];
        futex_regions.extend(self.pool.as_ref().map(|pool| region(pool.region())));
        seccomp::Allowed {
            ram_fd: self.ram.fd().as_raw_fd(),
            alias_fd: self
                .aliases
                .as_ref()
                .map(|aliases| aliases.fd().as_raw_fd()),
            perf_fds: self.breakpoints.fds(),
            futex_regions,
            pid: nix::unistd::getpid().as_raw(),
        }
    }

    /// Installs `monitor` as the handler of every world signal, drops every
    /// privilege (sys::lockdown), locks the process down with seccomp and
    /// enters the guest. Returns only if set-up fails.
    pub fn run(
        self,
        mut monitor: impl FnMut(Trap, HostRegisters, &mut World) -> Action + 'static,
    ) -> Result<Infallible, WorldError> {
        let sandbox = lockdown::lock_down(&self.descriptors(), self.parent);
        if self.announce_sandbox {
            for missing in &sandbox.missing {
                eprintln!("btvmm: world sandbox: no {missing}");
            }
        }
        let program = seccomp::build(&self.allowed())?;
        let mut world = self;
        let handler: signal::Handler = Box::new(move |frame| {
            let (trap, registers) = trap::decode(frame);
            // Only a pool's handoff needs the FPU image (its members are
            // processes with FPUs of their own), and a debugger, which
            // shows it: read it for those only.
            world.fpu.current = if world.pool.is_some() || world.channel.debugger_present() {
                frame.fpu_image()
            } else {
                None
            };
            let action = monitor(trap, registers, &mut world);
            if let Some(image) = world.fpu.replacement.take() {
                frame.set_fpu_image(&image);
            }
            match action {
                Action::Resume(registers) => trap::apply(frame, &registers),
                Action::Terminate => {
                    // SAFETY: ends the process at once; nothing to unwind.
                    unsafe { libc::_exit(0) }
                }
            }
        });
        signal::install(handler, &SIGNALS)?;
        seccomp::install(&program)?;
        signal::raise(ENTER_SIGNAL)?;
        Err(WorldError::Host {
            what: "entering the guest (the handler returned to the world)",
            source: std::io::Error::other("no guest context"),
        })
    }
}

impl World {
    /// Attacker tests only (`btvmm run --test-scribble`): instead of
    /// running the guest, lock down exactly as for a guest and then do
    /// what a guest that owns this process could do to the btvmm process:
    /// write garbage, out-of-range values and torn updates into the
    /// channel and the pool, name `victim` as the pool's active member,
    /// and wake the host, forever. The btvmm process must stay in control
    /// (its test checks it never signals `victim`, never panics and ends
    /// cleanly).
    pub fn scribble(self, seed: u64, victim: libc::pid_t) -> Result<Infallible, WorldError> {
        let sandbox = lockdown::lock_down(&self.descriptors(), self.parent);
        drop(sandbox);
        seccomp::install(&seccomp::build(&self.allowed())?)?;
        let words = |region: &SharedRegion| {
            // SAFETY: the region is a page-aligned shared mapping of
            // `size` bytes that lives as long as `self`; AtomicU32 is valid
            // for any bits and sound to share across processes.
            unsafe {
                std::slice::from_raw_parts(
                    region.as_ptr().cast::<std::sync::atomic::AtomicU32>(),
                    region.size() / 4,
                )
            }
        };
        let channel = words(self.channel.region());
        let pool = self.pool.as_ref().map(|pool| words(pool.region()));
        let edges = [
            0,
            1,
            2,
            3,
            4,
            10,
            11,
            12,
            13,
            0x3f8,
            0x3fd,
            0xffff,
            0x7fff_ffff,
            0x8000_0000,
            u32::MAX,
            victim.cast_unsigned(),
        ];
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        loop {
            let random = next();
            let value = if random & 1 == 0 {
                edges[(random >> 8) as usize % edges.len()]
            } else {
                #[allow(clippy::cast_possible_truncation)] // any 32 bits
                let bits = (random >> 32) as u32;
                bits
            };
            // Any port but those that end the run (debug exit, resets), so
            // that the garbage keeps coming.
            #[allow(clippy::cast_possible_truncation)] // any 16 bits
            let port = match (random >> 40) as u16 {
                port @ (0xf0..=0xf7 | 0x64 | 0x92 | 0xcf9) => port ^ 0x100,
                port => port,
            };
            match (random >> 4) % 16 {
                // Well-formed exits with wild ports, sizes and values: the
                // host's devices take whatever the guest could send.
                0..=7 => {
                    let size = [1, 2, 4][(random >> 20) as usize % 3];
                    let exit = if random & 2 == 0 {
                        Exit::PortIn { port, size }
                    } else {
                        Exit::PortOut { port, size, value }
                    };
                    if self.channel.exit(&exit) == Reply::Terminate {
                        // The host ended the VM; a real world would exit.
                        continue;
                    }
                }
                // The channel's header words (state, lines, exit, reply,
                // message length), sometimes anywhere in it.
                8..=10 => channel[(random >> 16) as usize % 16].store(value, Ordering::SeqCst),
                11 => {
                    channel[(random >> 16) as usize % channel.len()].store(value, Ordering::SeqCst)
                }
                12 => {
                    if let Some(pool) = pool {
                        pool[(random >> 16) as usize % 64].store(value, Ordering::SeqCst);
                    }
                }
                13 => {
                    // Ask for console input with COM1's receive interrupt
                    // on (RTS and OUT2 in the MCR, IER bit 0), then name
                    // the victim as the running member: console input
                    // raises IRQ 4 while this world runs, which the host
                    // announces with a kick to the running member.
                    for _ in 0..16 {
                        // Empty the receive FIFO: the line drops, and the
                        // next byte raises it while this world runs.
                        let _ = self.channel.exit(&Exit::PortIn {
                            port: 0x3f8,
                            size: 1,
                        });
                    }
                    for (port, value) in [(0x3fc, 0x0b), (0x3f9, 0x01)] {
                        let _ = self.channel.exit(&Exit::PortOut {
                            port,
                            size: 1,
                            value,
                        });
                    }
                    if let Some(pool) = &self.pool {
                        pool.forge_active(victim);
                    }
                }
                _ => {
                    // An exit, with whatever the fields hold now.
                    channel[0].store(1, Ordering::SeqCst);
                    crate::sys::futex::wake(&channel[0]);
                }
            }
        }
    }
}

/// The host CPU's vendor decides which 32-bit system-call instruction its
/// compatibility mode supports: AMD (and Hygon) CPUs take SYSCALL and
/// raise #UD on SYSENTER, Intel's the other way round.
fn host_fast_path() -> btvmm_core::HostFastPath {
    // CPUID leaf 0 exists on every x86-64 CPU (faulting is not on yet).
    let leaf = std::arch::x86_64::__cpuid(0);
    let vendor: Vec<u8> = [leaf.ebx, leaf.edx, leaf.ecx]
        .iter()
        .flat_map(|word| word.to_le_bytes())
        .collect();
    if vendor == b"AuthenticAMD" || vendor == b"HygonGenuine" {
        btvmm_core::HostFastPath::Syscall
    } else {
        btvmm_core::HostFastPath::Sysenter
    }
}

/// Turns on CPUID faulting (`arch_prctl(ARCH_SET_CPUID, 0)`), where the
/// CPU supports it: CPUID then raises #GP at CPL 3. False when it does not.
fn enable_cpuid_faulting() -> bool {
    const ARCH_SET_CPUID: libc::c_int = 0x1012;
    // SAFETY: arch_prctl with integer arguments changes only this
    // process's CPUID behaviour.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_SET_CPUID, 0) == 0 }
}

impl PhysMemory for World {
    fn read_phys(&self, guest_phys: GuestPhys, buf: &mut [u8]) -> Result<(), MemFault> {
        self.ram
            .read(guest_phys.0, buf)
            .then_some(())
            .ok_or(MemFault::OutsideRam { guest_phys })
    }

    fn write_phys(&mut self, guest_phys: GuestPhys, data: &[u8]) -> Result<(), MemFault> {
        self.ram
            .write(guest_phys.0, data)
            .then_some(())
            .ok_or(MemFault::OutsideRam { guest_phys })
    }

    fn ram_size(&self) -> u32 {
        u32::try_from(self.ram.size()).unwrap_or(u32::MAX)
    }
}

impl WorldServices for World {
    fn map_guest(
        &mut self,
        guest_virt: u32,
        guest_phys: u32,
        len: u32,
        writable: bool,
    ) -> Result<(), ServiceError> {
        self.ram
            .map_at(guest_virt, guest_phys, len, writable)
            .map_err(|error| ServiceError::new("mapping guest memory", error))
    }

    fn protect_guest(
        &mut self,
        guest_virt: u32,
        len: u32,
        writable: bool,
    ) -> Result<(), ServiceError> {
        self.ram
            .protect_at(guest_virt, len, writable)
            .map_err(|error| ServiceError::new("protecting guest memory", error))
    }

    fn unmap_guest(&mut self, guest_virt: u32, len: u32) -> Result<(), ServiceError> {
        self.ram
            .unmap_at(guest_virt, len)
            .map_err(|error| ServiceError::new("unmapping guest memory", error))
    }

    fn write_ldt(
        &mut self,
        index: u16,
        descriptor: Option<&Descriptor>,
    ) -> Result<(), ServiceError> {
        let entry = descriptor
            .and_then(LdtEntry::shadow)
            .unwrap_or(LdtEntry::EMPTY);
        ldt::write_entry(index, &entry)
            .map_err(|error| ServiceError::new("writing the host LDT", error))
    }

    fn arm_breakpoints(&mut self, addresses: &[GuestVirt]) -> Result<(), ServiceError> {
        self.breakpoints
            .arm(addresses)
            .map_err(|error| ServiceError::new("arming hardware breakpoints", error))
    }

    fn irq_levels(&self) -> u16 {
        self.channel.irq_levels()
    }

    fn pause_requested(&self) -> bool {
        self.channel.pause_requested()
    }

    fn take_irq_pulses(&mut self) -> u16 {
        self.channel.take_irq_pulses()
    }

    fn now_ns(&self) -> u64 {
        let now = if self.timestamp_faulting {
            crate::channel::monotonic_ns_syscall()
        } else {
            crate::channel::monotonic_ns()
        };
        now.saturating_sub(self.channel.epoch_ns())
    }

    fn set_timer_deadline(&mut self, deadline_ns: Option<u64>) -> Result<(), ServiceError> {
        let epoch = self.channel.epoch_ns();
        self.timer
            .arm(deadline_ns.map(|deadline| deadline.saturating_add(epoch)))
            .map_err(|error| ServiceError::new("arming the world's timer", error))
    }

    fn wait_for_kick(&mut self) {
        self.timer.wait();
    }

    fn breakpoint_count(&self) -> usize {
        self.breakpoints.count()
    }

    fn exit(&mut self, exit: Exit) -> Reply {
        self.channel.exit(&exit)
    }

    fn exit_string(&mut self, exit: Exit, data: &mut [u8]) -> Reply {
        self.channel.exit_string(&exit, data)
    }

    fn debug_exit(
        &mut self,
        exit: Exit,
        data: &mut [u8; btvmm_core::exit::STRING_EXIT_BYTES],
    ) -> Reply {
        self.channel.debug_exit(&exit, data)
    }

    fn debug_points(&self) -> btvmm_core::DebugPoints {
        self.channel.debug_points()
    }

    fn publish_counters(&mut self, counters: &[u64]) {
        self.channel.publish_counters(counters);
    }

    fn trace(&mut self, line: &str) {
        let mut text = String::with_capacity(line.len() + 1);
        text.push_str(line);
        text.push('\n');
        let mut rest = text.as_bytes();
        while !rest.is_empty() {
            // SAFETY: write(2) reads `rest.len()` bytes from a live buffer;
            // standard error is on the seccomp allow-list.
            let written = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
            let Ok(written) = usize::try_from(written) else {
                return;
            };
            rest = &rest[written.min(rest.len())..];
        }
    }

    fn set_timestamp_faulting(&mut self, faulting: bool) -> Result<(), ServiceError> {
        set_tsc_faulting(faulting)
            .map_err(|error| ServiceError::new("making RDTSC fault or run", error))?;
        self.timestamp_faulting = faulting;
        Ok(())
    }

    fn guest_fpu(&self) -> Option<Vec<u8>> {
        self.fpu.current.map(|image| image.to_vec())
    }

    fn set_guest_fpu(&mut self, image: &[u8]) -> Result<(), ServiceError> {
        let image: [u8; crate::sys::signal::FXSAVE_BYTES] = image.try_into().map_err(|_| {
            ServiceError::new(
                "loading the guest's FPU state",
                format!("an FPU image of {} bytes", image.len()),
            )
        })?;
        self.fpu.replacement = Some(image);
        self.fpu.current = Some(image);
        Ok(())
    }

    fn code_aliases(&mut self) -> Option<&mut dyn CodeAliases> {
        self.aliases
            .as_mut()
            .map(|aliases| aliases as &mut dyn CodeAliases)
    }

    fn address_spaces(&self) -> Option<&dyn AddressSpaces> {
        self.pool
            .as_ref()
            .filter(|pool| pool.members() > 1)
            .map(|pool| pool as &dyn AddressSpaces)
    }

    fn timestamp(&self) -> u64 {
        if self.timestamp_faulting {
            // The monitor's own RDTSC would fault too: allow it for one
            // read (rare: guest kernels that set CR4.TSD and still read
            // the TSC in ring 0).
            let _ = set_tsc_faulting(false);
            let timestamp = read_tsc();
            let _ = set_tsc_faulting(true);
            return timestamp;
        }
        read_tsc()
    }

    fn tsc_khz(&self) -> u32 {
        self.channel.tsc_khz()
    }
}

impl CodeAliases for AliasMemory {
    fn reset(&mut self, guest_phys_page: u32) {
        AliasMemory::reset(self, guest_phys_page);
    }

    fn reset_all(&mut self) {
        AliasMemory::reset_all(self);
    }

    fn write(&mut self, guest_phys_page: u32, offset: u32, bytes: &[u8]) -> bool {
        AliasMemory::write(self, guest_phys_page, offset as usize, bytes)
    }

    fn read(&self, guest_phys_page: u32, offset: u32, buf: &mut [u8]) -> bool {
        AliasMemory::read(self, guest_phys_page, offset as usize, buf)
    }

    fn map(&mut self, linear: u32, guest_phys_page: u32) -> Result<(), ServiceError> {
        self.map_at(linear, guest_phys_page)
            .map_err(|error| ServiceError::new("mapping a code alias", error))
    }
}

fn read_tsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; the callers make sure this
    // process may execute it (PR_SET_TSC enabled).
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// Makes RDTSC/RDTSCP in this process fault (SIGSEGV) or run.
fn set_tsc_faulting(faulting: bool) -> Result<(), String> {
    let mode = if faulting {
        libc::PR_TSC_SIGSEGV
    } else {
        libc::PR_TSC_ENABLE
    };
    // SAFETY: prctl(PR_SET_TSC) with an integer mode.
    if unsafe { libc::prctl(libc::PR_SET_TSC, mode, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(format!(
            "prctl(PR_SET_TSC): {}",
            std::io::Error::last_os_error()
        ))
    }
}
