//! A debugger's hold on the vCPU (the host's gdb stub).
//!
//! Nothing is written into guest memory for a breakpoint. In guest kernel
//! mode a breakpoint is one more point where every plan stops: the planner
//! ends blocks before it (its hardware breakpoints fire there), the split
//! view puts INT3 there in the alias the guest cannot see, and the
//! interpreters stop before it. In guest user mode, which runs untraced,
//! the breakpoints are the world's hardware breakpoints (as many as it
//! has). The monitor's loop looks at EIP before each step it takes and
//! stops there: a [`btvmm_core::Exit::Paused`] exit, and then the host's
//! commands (read and write memory and registers) until it resumes.
//!
//! A write watchpoint write-protects its page (the shadow MMU's
//! [`shadow_mmu::TrackReasons::WATCH`], or the identity view with paging
//! off): every write there traps and is emulated, and the monitor
//! compares the watched bytes with what they held after each of its
//! steps; a change stops the vCPU past the writing instruction, as a
//! hardware watchpoint does. Writes the monitor's interpreters make are
//! caught by the same comparison (they run one instruction at a time
//! while a watchpoint is set).
//!
//! A single step executes one instruction in the emulator, or natively
//! under TF when the emulator does not handle it, with interrupts held
//! off, and stops after it (or at the entry of the exception it raised).
//!
//! Without a debugger the monitor holds no [`Debugger`] and pays one
//! branch per step.
//!
//! Limits: breakpoints are guest-linear addresses, the split view's
//! aliases are per guest-physical page: kernel code mapped at two linear
//! addresses, filled through the one without the breakpoint, runs the
//! breakpoint's instruction natively through the other. A watchpoint's
//! address is translated in the address space that runs at each look: a
//! change of mapping (another process) is a new reference, not a hit.

use btvmm_core::cpu::Eflags;
use btvmm_core::exit::STRING_EXIT_BYTES;
use btvmm_core::{
    DebugCommand, Exit, GuestPhys, GuestVirt, PAGE_SIZE, PauseCause, Reply, StopReason,
    VcpuRegisters, WorldServices,
};

use crate::counters::Counter;
use crate::view::read_physical;
use crate::{Failure, Monitor, Why};

/// Where a debugger's single step is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum StepState {
    /// No step asked for.
    #[default]
    Idle,
    /// Asked for: the next step of the loop executes one instruction.
    Pending,
    /// The instruction was executed or runs natively under TF: stop once
    /// it has.
    InFlight,
}

/// A debugger's points and where the vCPU is with them. It travels with
/// the vCPU between the world processes of a pool.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Debugger {
    /// The host's generation of the points.
    pub(crate) generation: u32,
    /// Breakpoints (guest-linear, sorted).
    pub(crate) breakpoints: Vec<u32>,
    /// Watchpoints: first byte and length.
    pub(crate) watchpoints: Vec<(u32, u32)>,
    /// The watched bytes at the last look and the guest-physical address
    /// of their first byte then (None: not mapped).
    watched: Vec<Option<(u32, Vec<u8>)>>,
    /// The vCPU resumed on this breakpoint: it runs the instruction there
    /// once before the breakpoint counts again.
    pass: Option<u32>,
    /// The debugger's single step.
    pub(crate) step: StepState,
}

impl Debugger {
    /// Whether any watchpoint is set (the interpreters then go one
    /// instruction at a time).
    pub(crate) fn watching(&self) -> bool {
        !self.watchpoints.is_empty()
    }

    /// Whether a breakpoint is on the instruction at `linear`.
    pub(crate) fn breaks_at(&self, linear: u32) -> bool {
        !self.breakpoints.is_empty() && self.breakpoints.binary_search(&linear).is_ok()
    }
}

/// What the monitor's loop does after its look for the debugger.
pub(crate) enum Flow {
    /// Go on with the step.
    Go,
    /// Start the loop over (something changed).
    Again,
    /// Resume the guest now (a native single step).
    Return,
}

impl Monitor {
    /// The registers as the host sees them.
    pub(crate) fn vcpu_registers(&self) -> VcpuRegisters {
        VcpuRegisters {
            gpr: self.cpu.gpr,
            eip: self.cpu.eip,
            eflags: self.cpu.eflags,
            selectors: std::array::from_fn(|index| self.cpu.segments[index].selector),
            cr: [self.cpu.cr0, self.cpu.cr2, self.cpu.cr3, self.cpu.cr4],
            cpl: self.cpu.cpl,
            halted: self.halted,
        }
    }

    /// The debugger's look at the start of each step of the loop: a step
    /// done, a watched write, a breakpoint at EIP.
    pub(crate) fn debug_check(&mut self, world: &mut dyn WorldServices) -> Result<Flow, Failure> {
        let Some(debug) = &mut self.debug else {
            return Ok(Flow::Go);
        };
        if self.stepping {
            // A native single step is under way: its trap comes first.
            return Ok(Flow::Go);
        }
        match debug.step {
            // A halted vCPU steps into the handler of what wakes it.
            StepState::InFlight if self.halted => return Ok(Flow::Go),
            StepState::InFlight => {
                debug.step = StepState::Idle;
                self.stop_for_host(world, PauseCause::Step)?;
                return Ok(Flow::Again);
            }
            StepState::Pending => {
                debug.step = StepState::InFlight;
                return self.debug_execute_one(world);
            }
            StepState::Idle => {}
        }
        if let Some(guest_virt) = self.watch_hit(world)? {
            self.stop_for_host(world, PauseCause::Watchpoint { guest_virt })?;
            return Ok(Flow::Again);
        }
        let Some(debug) = &mut self.debug else {
            return Ok(Flow::Go);
        };
        let linear = self.cpu.linear_eip();
        if self.halted || !debug.breaks_at(linear) {
            debug.pass = None;
            return Ok(Flow::Go);
        }
        if debug.pass.take() == Some(linear) {
            // Executed here, whatever the mode: an interrupt taken first
            // would come back to the breakpoint and stop again.
            return self.debug_execute_one(world);
        }
        self.counters.bump(Counter::DebugBreakpoints);
        self.stop_for_host(world, PauseCause::Breakpoint)?;
        Ok(Flow::Again)
    }

    /// Whether interrupts wait: a debugger's step is under way, or the
    /// instruction under a breakpoint runs natively under TF.
    pub(crate) fn debug_holds_interrupts(&self) -> bool {
        !self.halted
            && self
                .debug
                .as_ref()
                .is_some_and(|debug| debug.step != StepState::Idle || self.stepping)
    }

    /// A debugger's native step was cut by a fault the shadow only had to
    /// map: the instruction has not run, take the step again.
    pub(crate) fn debug_step_again(&mut self) {
        if let Some(debug) = &mut self.debug
            && debug.step == StepState::InFlight
        {
            debug.step = StepState::Pending;
        }
    }

    /// Executes the instruction at EIP for the debugger (a step, or the
    /// instruction under a breakpoint the vCPU resumed on): in the
    /// emulator, or natively under TF.
    fn debug_execute_one(&mut self, world: &mut dyn WorldServices) -> Result<Flow, Failure> {
        if self.halted {
            return Ok(Flow::Go);
        }
        if self
            .execute_at_eip(world, Why::Interpreted, None)?
            .is_some()
        {
            return Ok(Flow::Again);
        }
        self.stepping = true;
        self.cpu.eflags |= Eflags::TF;
        Ok(Flow::Return)
    }

    /// The first watchpoint whose bytes changed since the last look; keeps
    /// the watched pages write-protected.
    fn watch_hit(&mut self, world: &mut dyn WorldServices) -> Result<Option<u32>, Failure> {
        let Some(debug) = &self.debug else {
            return Ok(None);
        };
        if !debug.watching() {
            return Ok(None);
        }
        let watchpoints = debug.watchpoints.clone();
        let mut hit = None;
        for (index, &(guest_virt, len)) in watchpoints.iter().enumerate() {
            for page_of in [guest_virt, guest_virt.wrapping_add(len.saturating_sub(1))] {
                self.mmu.watch(world, page_of).map_err(|error| {
                    StopReason::Internal(format!("write-protecting a watched page: {error}"))
                })?;
            }
            let now = self.watched_bytes(&*world, guest_virt, len);
            if let Some(debug) = &mut self.debug
                && let Some(slot) = debug.watched.get_mut(index)
                && *slot != now
            {
                // Only a change of the same bytes is a write: another
                // address space, or a mapping made or changed, shows
                // other bytes, which become the new reference.
                let written = matches!(
                    (&*slot, &now),
                    (Some((before, _)), Some((after, _))) if before == after
                );
                *slot = now;
                if written {
                    hit = hit.or(Some(guest_virt));
                }
            }
        }
        Ok(hit)
    }

    /// A watchpoint's bytes and where they are now.
    fn watched_bytes(
        &self,
        world: &dyn WorldServices,
        guest_virt: u32,
        len: u32,
    ) -> Option<(u32, Vec<u8>)> {
        let phys = self.mmu.peek_data(world, guest_virt)?;
        Some((phys, self.debug_read(world, guest_virt, len as usize)?))
    }

    /// `len` bytes at a guest-virtual address through the guest's tables,
    /// or None if any of them is not mapped.
    fn debug_read(
        &self,
        world: &dyn WorldServices,
        guest_virt: u32,
        len: usize,
    ) -> Option<Vec<u8>> {
        let mut bytes = vec![0u8; len];
        let mut done = 0;
        while done < len {
            #[allow(clippy::cast_possible_truncation)] // len is small
            let at = guest_virt.wrapping_add(done as u32);
            let in_page = (PAGE_SIZE - at % PAGE_SIZE) as usize;
            let piece = in_page.min(len - done);
            let phys = self.mmu.peek_data(world, at)?;
            if world
                .read_phys(GuestPhys(phys), &mut bytes[done..done + piece])
                .is_err()
            {
                read_physical(world, phys, &mut bytes[done..done + piece]);
            }
            done += piece;
        }
        Some(bytes)
    }

    /// Writes `data` at a guest-virtual address for the debugger (whatever
    /// the page's rights); decoded code there goes as after any write.
    fn debug_write(&mut self, world: &mut dyn WorldServices, guest_virt: u32, data: &[u8]) -> bool {
        // All of it mapped, or nothing written.
        let mut pieces = Vec::new();
        let mut done = 0;
        while done < data.len() {
            #[allow(clippy::cast_possible_truncation)] // at most a string exit
            let at = guest_virt.wrapping_add(done as u32);
            let in_page = (PAGE_SIZE - at % PAGE_SIZE) as usize;
            let piece = in_page.min(data.len() - done);
            let Some(phys) = self.mmu.peek_data(&*world, at) else {
                return false;
            };
            pieces.push((phys, done, piece));
            done += piece;
        }
        for (phys, offset, piece) in pieces {
            if world
                .write_phys(GuestPhys(phys), &data[offset..offset + piece])
                .is_err()
            {
                return false;
            }
            #[allow(clippy::cast_possible_truncation)] // a page at most
            self.mmu
                .written(world, &mut self.planner, phys, piece as u32);
        }
        true
    }

    /// Stops the vCPU for the host: the pause exit, then the debugger's
    /// commands until it resumes. Runs between two guest instructions.
    pub(crate) fn stop_for_host(
        &mut self,
        world: &mut dyn WorldServices,
        cause: PauseCause,
    ) -> Result<(), Failure> {
        self.counters.bump(Counter::Pauses);
        self.counters.bump(Counter::Exits);
        world.publish_counters(self.counters.as_slice());
        let asked = world.now_ns();
        let mut data = [0u8; STRING_EXIT_BYTES];
        let mut exit = Exit::Paused(Box::new(self.vcpu_registers()), cause);
        loop {
            let reply = world.debug_exit(exit, &mut data);
            let command = match reply {
                Reply::Terminate => return Err(Failure::Terminated),
                Reply::Debug(DebugCommand::Resume { step }) => {
                    self.debug_resume(world, step)?;
                    break;
                }
                Reply::Debug(command) => command,
                Reply::Continue | Reply::Value(_) => break,
            };
            let (ok, len) = self.debug_command(world, command, &mut data)?;
            exit = Exit::DebugResult { ok, len };
        }
        self.counters
            .add(Counter::ExitWaitNs, world.now_ns().saturating_sub(asked));
        self.update_chipset(world);
        Ok(())
    }

    /// Carries out a debugger's command other than a resume: whether it
    /// worked, and the bytes of its answer in `data`.
    fn debug_command(
        &mut self,
        world: &mut dyn WorldServices,
        command: DebugCommand,
        data: &mut [u8; STRING_EXIT_BYTES],
    ) -> Result<(bool, u16), Failure> {
        Ok(match command {
            DebugCommand::ReadMemory { guest_virt, len } => {
                let len = usize::from(len).min(STRING_EXIT_BYTES);
                match self.debug_read(&*world, guest_virt, len) {
                    Some(bytes) => {
                        data[..len].copy_from_slice(&bytes);
                        #[allow(clippy::cast_possible_truncation)] // at most 512
                        (true, len as u16)
                    }
                    None => (false, 0),
                }
            }
            DebugCommand::WriteMemory { guest_virt, len } => {
                let len = usize::from(len).min(STRING_EXIT_BYTES);
                let bytes = data[..len].to_vec();
                let ok = self.debug_write(world, guest_virt, &bytes);
                if let Some(error) = self.mmu.take_failure() {
                    return Err(StopReason::Internal(format!(
                        "shadow MMU, after a debugger's write: {error}"
                    ))
                    .into());
                }
                (ok, 0)
            }
            DebugCommand::WriteRegisters => {
                let mut words = [0u32; VcpuRegisters::WORDS];
                for (word, bytes) in words.iter_mut().zip(data.chunks(4)) {
                    *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                }
                (
                    self.debug_set_registers(&VcpuRegisters::from_words(&words)),
                    0,
                )
            }
            DebugCommand::ReadFpu => match world.guest_fpu() {
                Some(image) if image.len() <= STRING_EXIT_BYTES => {
                    data[..image.len()].copy_from_slice(&image);
                    #[allow(clippy::cast_possible_truncation)] // at most 512
                    (true, image.len() as u16)
                }
                _ => (false, 0),
            },
            DebugCommand::WriteFpu => (world.set_guest_fpu(&data[..]).is_ok(), 0),
            // Handled by the caller.
            DebugCommand::Resume { .. } => (false, 0),
        })
    }

    /// Loads the registers a debugger wrote: the general registers, EIP
    /// and EFLAGS (not VM: no virtual-8086 mode). Selectors, control
    /// registers and the privilege level load only through guest
    /// instructions (their descriptor caches and the shadow follow them),
    /// so a change to them is refused.
    fn debug_set_registers(&mut self, wanted: &VcpuRegisters) -> bool {
        let now = self.vcpu_registers();
        if wanted.selectors != now.selectors || wanted.cr != now.cr || wanted.cpl != now.cpl {
            return false;
        }
        self.cpu.gpr = wanted.gpr;
        self.cpu.eip = wanted.eip;
        // The bits software can set (CPUID's ID included), never VM.
        const WRITABLE: u32 = 0x0025_7fd5 & !Eflags::VM;
        self.cpu.eflags = (wanted.eflags & WRITABLE) | (self.cpu.eflags & !WRITABLE) | 0x2;
        true
    }

    /// The host resumes the vCPU under its debugger: the points as they
    /// are now (a change reaches the planner, the split view and the
    /// watched pages), a step if asked.
    fn debug_resume(&mut self, world: &mut dyn WorldServices, step: bool) -> Result<(), Failure> {
        let points = world.debug_points();
        let mut breakpoints = points.breakpoints;
        breakpoints.sort_unstable();
        breakpoints.dedup();
        let watchpoints: Vec<(u32, u32)> = points
            .watchpoints
            .iter()
            .map(|watch| (watch.guest_virt, watch.len))
            .collect();
        let linear = self.cpu.linear_eip();
        if breakpoints.is_empty() && watchpoints.is_empty() && !step {
            // Detached, or nothing set: no cost from here on.
            self.debug = None;
        } else {
            let mut debugger = Debugger {
                generation: points.generation,
                pass: breakpoints.binary_search(&linear).is_ok().then_some(linear),
                breakpoints,
                watched: Vec::new(),
                watchpoints,
                step: if step {
                    StepState::Pending
                } else {
                    StepState::Idle
                },
            };
            debugger.watched = debugger
                .watchpoints
                .iter()
                .map(|&(guest_virt, len)| self.watched_bytes(&*world, guest_virt, len))
                .collect();
            self.debug = Some(debugger);
        }
        self.sync_debug(world)
    }

    /// Brings this process's planner, split view and watched pages to the
    /// debugger's points (after a change, or when the vCPU arrives from
    /// another process of the pool).
    pub(crate) fn sync_debug(&mut self, world: &mut dyn WorldServices) -> Result<(), Failure> {
        let generation = self.debug.as_ref().map_or(0, |debug| debug.generation);
        if generation == self.debug_applied {
            return Ok(());
        }
        self.debug_applied = generation;
        let stops = self.debug.as_ref().map_or_else(Vec::new, |debug| {
            debug.breakpoints.iter().copied().map(GuestVirt).collect()
        });
        self.planner.set_debug_stops(stops);
        // The aliases hold the old judgement (shared by the pool).
        if let Some(aliases) = world.code_aliases() {
            aliases.reset_all();
        }
        self.runs.forget();
        self.mmu
            .unwatch_all(world)
            .map_err(|error| StopReason::Internal(format!("unwatching pages: {error}")).into())
    }

    /// In guest user mode the breakpoints are the world's hardware
    /// breakpoints, the lowest addresses first (user code sits low).
    pub(crate) fn arm_user_breakpoints(
        &mut self,
        world: &mut dyn WorldServices,
    ) -> Result<(), Failure> {
        let Some(debug) = &self.debug else {
            return Ok(());
        };
        if debug.breakpoints.is_empty() {
            return Ok(());
        }
        let slots = world.breakpoint_count();
        let armed: Vec<GuestVirt> = debug
            .breakpoints
            .iter()
            .take(slots)
            .copied()
            .map(GuestVirt)
            .collect();
        world.arm_breakpoints(&armed).map_err(StopReason::from)?;
        self.breakpoints_armed = true;
        Ok(())
    }
}
