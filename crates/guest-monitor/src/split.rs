//! The split code view (DESIGN.md section 3b): software breakpoints the
//! guest cannot see.
//!
//! In guest kernel mode the shadow code segment gets a base B, so the CPU
//! fetches guest code at linear B + EIP while data accesses keep going
//! through base-0 segments to the guest's own pages. At B + V, for each
//! guest code page V the planner has decoded, the world maps an alias page
//! (world-switch's `sys::alias`, shared by the pool): the decoded
//! instructions' bytes, INT3 (0xCC) at the first byte of every instruction
//! the monitor must handle, and INT3 wherever nothing was decoded yet.
//! Plain code, direct branches, near returns and indirect calls and jumps
//! then run natively: a branch lands on decoded code or on an INT3, whose
//! trap makes the monitor decode there. Sensitive instructions, far
//! transfers, IRET, unrecognized bytes and instructions that read memory
//! through CS trap through their INT3 (about a #GP's cost) and are
//! emulated from the original bytes, which the guest keeps seeing: a read
//! of its own code goes through DS to the original page.
//!
//! Where the aliases live (the window):
//! - paging off: B is guest RAM's size rounded up to 256 MiB, so B + V
//!   lies above RAM, where the identity view maps nothing; the code
//!   segment's limit keeps B + EIP below the top hole.
//! - paging on: B puts the page of the first kernel code seen 32 MiB
//!   inside a 64 MiB stretch of the guest kernel's half (at or above
//!   3 GiB) whose page-directory entries are not present: linear pages the
//!   guest has not mapped, which truncated user segments keep user code
//!   away from. An alias page only ever sits in a 4 MiB region whose
//!   guest PDE is not present; when the guest writes a PDE there (the page
//!   directory is write-tracked) or loads a CR3 whose PDE there is
//!   present, the aliases of the region go, and the next one that cannot
//!   be placed moves the window (all aliases dropped, counted). Kernel code
//!   whose alias would fall below 3 GiB, into the top hole or past the
//!   window's limit runs under hardware breakpoints instead.
//!
//! Limits, as DESIGN.md 3b says: a jump into the middle of a decoded
//! instruction runs bytes the planner did not judge (compiled code never
//! does it); so does a native pointer branch of the guest kernel to an
//! address whose alias would lie below 3 GiB (user space: linear B + EIP
//! there is whatever the shadow maps; a kernel never jumps to user
//! addresses). A guest kernel read (not a write) of an unmapped address
//! inside the window reads alias bytes instead of faulting.
//!
//! An instruction that straddles a page boundary is never copied (its two
//! halves could be reset independently): its first byte is INT3 and the
//! monitor emulates it.

use rustc_hash::FxHashMap as HashMap;

use btvmm_core::Stop;
use btvmm_core::cpu::{Cpu, CpuView, Cr0, Eflags};
use btvmm_core::emu::Outcome;
use btvmm_core::emu::fast::{self, Driver, End};
use btvmm_core::{GuestVirt, PAGE_SIZE, StopReason, WorldServices};
use cfg_planner::{BlockEnd, PoiKind, PointerKind};
use iced_x86::{Decoder, DecoderOptions, Instruction, OpKind, Register};

use crate::counters::Counter;
use crate::mmu::USER_TOP;
use crate::view::{GuestView, PlannerMemory};
use crate::{Failure, Monitor};

/// INT3, what an alias holds wherever the monitor must step in.
pub const INT3: u8 = 0xcc;

/// The first linear address of the top hole (never mapped).
const HIGH_HOLE: u32 = 0xffff_0000;
/// One page-directory entry's span.
const REGION: u32 = 4 << 20;
/// The stretch of free regions a paging-on window is placed in, and how
/// far into it the first code page goes.
const WINDOW_SPAN: u32 = 64 << 20;
const WINDOW_LEAD: u32 = 32 << 20;
/// Window moves after which this address space gives the split view up.
const MAX_MOVES: u32 = 16;

/// How the world's kernel-mode code segment runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// B: added to the guest's code segment base.
    pub base: u32,
    /// The highest EIP (guest linear) whose alias stays below the top
    /// hole without wrapping.
    pub max_linear: u32,
}

/// What the split view knows in one world process.
#[derive(Debug, Default)]
pub struct SplitView {
    /// The window of the current mode (paging on or off); None until one
    /// is chosen.
    window: Option<Window>,
    /// Whether the window was chosen with paging on.
    paging: bool,
    /// Alias pages mapped in this process: guest-virtual page number to
    /// guest-physical page number.
    mapped: HashMap<u32, u32>,
    /// Window moves so far.
    moves: u32,
    /// Given up for this process (too many moves).
    disabled: bool,
    /// An alias the host would not unmap: the guest must not run on.
    failure: Option<String>,
}

/// What [`SplitView::decide`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run in this window (the current one).
    Use(Window),
    /// Choose this window first (none yet, the mode changed, or the guest
    /// mapped where the current one puts the alias: `moved`).
    Adopt {
        /// The new window.
        window: Window,
        /// The old one had to go.
        moved: bool,
    },
    /// Not in the split view.
    Refuse(Refusal),
    /// Too many moves: the split view is given up in this process.
    GiveUp,
}

/// Why an alias could not be placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The split view is off here (or no window fits): run under hardware
    /// breakpoints.
    Unavailable,
    /// The alias would fall outside the window's reach (below 3 GiB, past
    /// the limit, in the top hole): this code runs under hardware
    /// breakpoints.
    OutOfReach,
}

impl SplitView {
    /// The window in use, if any.
    #[must_use]
    pub fn window(&self) -> Option<Window> {
        self.window
    }

    /// A host failure to unmap an alias, if one happened.
    pub fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }

    /// Window moves so far.
    #[must_use]
    pub fn moves(&self) -> u32 {
        self.moves
    }

    /// Alias pages mapped now.
    #[must_use]
    pub fn mapped_pages(&self) -> usize {
        self.mapped.len()
    }

    /// The guest-physical page whose alias is mapped for guest-virtual
    /// page `virt_page`, if any.
    #[must_use]
    pub fn alias_of(&self, virt_page: u32) -> Option<u32> {
        self.mapped.get(&virt_page).copied()
    }

    /// What to do for code at guest-linear `linear`: the window its alias
    /// goes by, whether the window must be (re)chosen first, or why it
    /// cannot run in the split view. `pde` reads the guest's
    /// page-directory entry for a linear address (paging on).
    #[must_use]
    pub fn decide(
        &self,
        paging: bool,
        ram_size: u32,
        linear: u32,
        pde: &dyn Fn(u32) -> Option<u32>,
    ) -> Decision {
        if self.disabled {
            return Decision::Refuse(Refusal::Unavailable);
        }
        let current = self.window.filter(|_| self.paging == paging);
        let fresh = |moved: bool| {
            let window = if paging {
                choose_paging_window(linear, pde)
            } else {
                paging_off_window(ram_size)
            };
            match window {
                Some(window) if linear <= window.max_linear => Decision::Adopt { window, moved },
                Some(_) => Decision::Refuse(Refusal::OutOfReach),
                None => Decision::Refuse(Refusal::Unavailable),
            }
        };
        let Some(window) = current else {
            return fresh(false);
        };
        let alias = window.base.wrapping_add(linear);
        if linear > window.max_linear || (paging && alias < USER_TOP) {
            // Code the window does not reach (early boot code at low
            // addresses, then the kernel's own half, say): move it here.
            if self.moves + 1 >= MAX_MOVES {
                return Decision::GiveUp;
            }
            return fresh(true);
        }
        if !paging {
            return Decision::Use(window);
        }
        if pde(alias).is_none_or(|entry| entry & 1 != 0) {
            // The guest maps the region the alias would take.
            if self.moves + 1 >= MAX_MOVES {
                return Decision::GiveUp;
            }
            return fresh(true);
        }
        Decision::Use(window)
    }

    /// Carries out a decision (dropping every alias when the window moves)
    /// and returns the window to run in.
    pub fn adopt(
        &mut self,
        world: &mut dyn WorldServices,
        paging: bool,
        decision: Decision,
    ) -> Result<Window, Refusal> {
        match decision {
            Decision::Use(window) => Ok(window),
            Decision::Adopt { window, moved } => {
                self.drop_all(world);
                if moved {
                    self.moves += 1;
                }
                self.window = Some(window);
                self.paging = paging;
                Ok(window)
            }
            Decision::Refuse(refusal) => Err(refusal),
            Decision::GiveUp => {
                self.drop_all(world);
                self.window = None;
                self.disabled = true;
                Err(Refusal::Unavailable)
            }
        }
    }

    /// Forgets that the alias of `virt_page` is mapped (a fetch found it
    /// missing): the next [`SplitView::map`] maps it again.
    pub fn forget_mapping(&mut self, virt_page: u32) {
        self.mapped.remove(&virt_page);
    }

    /// Maps the alias of guest-physical page `phys_page` for guest-virtual
    /// page `virt_page` (the window must admit it: see
    /// [`SplitView::decide`] and [`SplitView::adopt`]).
    pub fn map(
        &mut self,
        world: &mut dyn WorldServices,
        virt_page: u32,
        phys_page: u32,
    ) -> Result<(), String> {
        let Some(window) = self.window else {
            return Err("no split-view window".into());
        };
        if self.mapped.get(&virt_page) == Some(&phys_page) {
            return Ok(());
        }
        let linear = window.base.wrapping_add(virt_page.wrapping_mul(PAGE_SIZE));
        let aliases = world
            .code_aliases()
            .ok_or("the world has no code aliases")?;
        aliases
            .map(linear, phys_page)
            .map_err(|error| error.to_string())?;
        self.mapped.insert(virt_page, phys_page);
        Ok(())
    }

    fn unmap_page(&mut self, world: &mut dyn WorldServices, virt_page: u32) {
        if self.mapped.remove(&virt_page).is_some()
            && let Some(window) = self.window
        {
            let linear = window.base.wrapping_add(virt_page.wrapping_mul(PAGE_SIZE));
            // Failing to unmap leaves a stale alias the guest could run:
            // the monitor stops the VM before it resumes.
            if let Err(what) = world.unmap_guest(linear, PAGE_SIZE) {
                self.failure
                    .get_or_insert(format!("unmapping the code alias at {linear:#x}: {what}"));
            }
        }
    }

    /// The guest's mapping of these guest-virtual pages may have changed
    /// (INVLPG, a CR3 load that dropped them): their aliases go.
    pub fn forget_virt_pages(
        &mut self,
        world: &mut dyn WorldServices,
        pages: std::ops::Range<u32>,
    ) {
        if pages.len() > self.mapped.len() {
            let doomed: Vec<u32> = self
                .mapped
                .keys()
                .copied()
                .filter(|page| pages.contains(page))
                .collect();
            for page in doomed {
                self.unmap_page(world, page);
            }
        } else {
            for page in pages {
                self.unmap_page(world, page);
            }
        }
    }

    /// Every alias mapping of this process goes (paging turned on or off,
    /// a PSE change, a fresh shadow).
    pub fn drop_all(&mut self, world: &mut dyn WorldServices) {
        let pages: Vec<u32> = self.mapped.keys().copied().collect();
        for page in pages {
            self.unmap_page(world, page);
        }
    }

    /// The guest wrote the page-directory entry for linear `region_base`'s
    /// 4 MiB region (or a CR3 load brought a directory where it is
    /// present): aliases placed there go. Returns whether any did.
    pub fn region_mapped_by_guest(
        &mut self,
        world: &mut dyn WorldServices,
        region_base: u32,
    ) -> bool {
        let Some(window) = self.window.filter(|_| self.paging) else {
            return false;
        };
        let doomed: Vec<u32> = self
            .mapped
            .keys()
            .copied()
            .filter(|&page| {
                window.base.wrapping_add(page.wrapping_mul(PAGE_SIZE)) & !(REGION - 1)
                    == region_base & !(REGION - 1)
            })
            .collect();
        let any = !doomed.is_empty();
        for page in doomed {
            self.unmap_page(world, page);
        }
        any
    }

    /// The 4 MiB regions (linear bases) where aliases are mapped now.
    #[must_use]
    pub fn alias_regions(&self) -> Vec<u32> {
        let Some(window) = self.window else {
            return Vec::new();
        };
        let mut regions: Vec<u32> = self
            .mapped
            .keys()
            .map(|&page| window.base.wrapping_add(page.wrapping_mul(PAGE_SIZE)) & !(REGION - 1))
            .collect();
        regions.sort_unstable();
        regions.dedup();
        regions
    }
}

/// The paging-off window: above guest RAM.
fn paging_off_window(ram_size: u32) -> Option<Window> {
    let base = u64::from(ram_size).next_multiple_of(256 << 20);
    if base >= u64::from(HIGH_HOLE) {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)] // below 4 GiB, checked
    let base = base as u32;
    Some(Window {
        base,
        max_linear: HIGH_HOLE - 1 - base,
    })
}

/// A paging-on window for code at `linear`: B such that `linear`'s alias
/// lies [`WINDOW_LEAD`] into a [`WINDOW_SPAN`] stretch of regions at or
/// above 3 GiB whose PDEs are not present, searched from the top down
/// (guests fill their kernel half from the bottom up).
fn choose_paging_window(linear: u32, pde: &dyn Fn(u32) -> Option<u32>) -> Option<Window> {
    let code_region = linear & !(REGION - 1);
    let mut stretch_start = (HIGH_HOLE & !(REGION - 1)).checked_sub(WINDOW_SPAN)?;
    while stretch_start >= USER_TOP {
        let free = (0..WINDOW_SPAN / REGION)
            .all(|index| pde(stretch_start + index * REGION).is_some_and(|entry| entry & 1 == 0));
        let alias_region = stretch_start + WINDOW_LEAD;
        if free && alias_region != code_region {
            let base = alias_region.wrapping_sub(code_region);
            // EIPs past this would wrap their alias around 4 GiB or into
            // the top hole.
            let max_linear = (HIGH_HOLE - 1).wrapping_sub(base);
            if max_linear >= linear {
                return Some(Window { base, max_linear });
            }
        }
        stretch_start -= REGION;
    }
    None
}

/// Whether an instruction at guest-linear `start` of `len` bytes crosses
/// a page boundary.
#[must_use]
pub fn straddles(start: GuestVirt, len: u32) -> bool {
    len > start.bytes_to_page_end()
}

/// What the split view does at EIP.
pub(crate) enum SplitStep {
    /// Resume natively in this window.
    Resume(Window),
    /// The instruction at EIP was emulated: look again.
    Continue,
    /// This code runs under hardware breakpoints.
    Hardware,
}

/// The split view's judgement of a decoded instruction, kept with its
/// decoding (the emulator's decode cache) since it depends on nothing else
/// but the classification's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Judged {
    /// The settings it was classified under.
    classify: cfg_planner::ClassifyConfig,
    /// The planner's class.
    kind: PoiKind,
    /// [`split_native`].
    native: bool,
}

/// Whether an instruction of planner class `kind` may run natively from an
/// alias page: everything but what the monitor must handle (sensitive and
/// unrecognized instructions, far transfers and IRET) and instructions
/// that read memory through CS, which would read the alias instead of the
/// guest's bytes.
#[must_use]
pub fn split_native(kind: PoiKind, instr: &Instruction) -> bool {
    let native = match kind {
        PoiKind::Plain | PoiKind::CondBranch { .. } | PoiKind::DirectBranch { .. } => true,
        PoiKind::PointerBranch(pointer) => matches!(
            pointer,
            PointerKind::Ret
                | PointerKind::RetImm
                | PointerKind::IndirectJmp
                | PointerKind::IndirectCall
        ),
        PoiKind::Sensitive { .. } | PoiKind::Unrecognized => false,
    };
    native && !reads_through_cs(instr)
}

fn reads_through_cs(instr: &Instruction) -> bool {
    instr.memory_segment() == Register::CS
        && (0..instr.op_count()).any(|op| {
            matches!(
                instr.op_kind(op),
                OpKind::Memory
                    | OpKind::MemorySegSI
                    | OpKind::MemorySegESI
                    | OpKind::MemorySegRSI
                    | OpKind::MemorySegDI
                    | OpKind::MemorySegEDI
                    | OpKind::MemorySegRDI
            )
        })
}

/// Longest x86 instruction.
const MAX_INSTRUCTION: usize = 15;

impl Monitor {
    /// The split view at EIP (guest kernel mode): emulates the instruction
    /// there if it must not run natively, else makes sure the code from
    /// EIP is in its alias and resumes.
    ///
    /// `streak` counts the instructions interpreted since the last one the
    /// monitor had to emulate (at most [`Monitor::split_run`] are, then the
    /// guest resumes natively); it starts past the limit at each trap.
    pub(crate) fn split_step(
        &mut self,
        world: &mut dyn WorldServices,
        streak: &mut u32,
    ) -> Result<SplitStep, Failure> {
        if self.cpu.eflags & Eflags::TF != 0 || !self.cpu.code_32bit() {
            return Ok(SplitStep::Hardware);
        }
        let (eip, repeats) = self.last_alias_fault;
        if eip == self.cpu.eip && repeats > 3 {
            // A fetch fault that mapping does not cure: leave this code to
            // hardware breakpoints.
            self.last_alias_fault = (eip, 0);
            return Ok(SplitStep::Hardware);
        }
        let linear = self.cpu.linear_eip();
        // The instruction at EIP, fetched once as the CPU would: emulated
        // if it must not run natively or crosses a page, interpreted if
        // another instruction the monitor must handle may be close. The
        // hardware path handles code that cannot be fetched (its emulation
        // gives the guest its #PF).
        let Ok(instr) = self.fetch_at_eip(world) else {
            return Ok(SplitStep::Hardware);
        };
        let classify = self.planner.config().classify;
        let Judged { kind, native, .. } = match self.decode_cache.note() {
            Some(judged) if judged.classify == classify => judged,
            _ => {
                let kind = cfg_planner::classify(&instr, &classify);
                let judged = Judged {
                    classify,
                    kind,
                    native: split_native(kind, &instr),
                };
                self.decode_cache.set_note(judged);
                judged
            }
        };
        #[allow(clippy::cast_possible_truncation)] // at most 15
        let length = instr.len() as u32;
        if straddles(GuestVirt(linear), length) {
            self.counters.bump(Counter::SplitStraddlers);
            self.execute_fetched(world, crate::Why::Planned, Ok(instr), Some(kind))?;
            return Ok(SplitStep::Continue);
        }
        if !native {
            self.split_limit = self.runs.emulated(
                &self.policy,
                linear,
                *streak,
                is_port_io(kind),
                &mut self.counters,
            );
            *streak = 0;
            self.execute_fetched(world, crate::Why::Planned, Ok(instr), Some(kind))?;
            return Ok(SplitStep::Continue);
        }
        if *streak < self.split_run() {
            *streak = streak.saturating_add(1);
            if self
                .execute_fetched(world, crate::Why::Interpreted, Ok(instr), Some(kind))?
                .is_some()
            {
                return Ok(SplitStep::Continue);
            }
        }
        // Native from here: in the window the alias goes by.
        self.runs
            .resumed(*streak, self.split_run(), &mut self.counters);
        let paging = self.mmu.paging();
        let decision = {
            let mmu = &self.mmu;
            let world_view: &dyn WorldServices = &*world;
            let pde = |at: u32| mmu.pde(world_view, at);
            self.mmu
                .split
                .decide(paging, world_view.ram_size(), linear, &pde)
        };
        let moved = matches!(decision, Decision::Adopt { moved: true, .. });
        let Ok(window) = self.mmu.split.adopt(world, paging, decision) else {
            return Ok(SplitStep::Hardware);
        };
        if moved {
            self.counters.bump(Counter::SplitWindowMoves);
        }
        self.split_fill(world, GuestVirt(linear))?;
        Ok(SplitStep::Resume(window))
    }

    /// Interprets from EIP through the fast interpreter
    /// ([`btvmm_core::emu::fast`]) with [`Monitor::split_step`]'s
    /// decisions, made instruction by instruction in a [`SplitDriver`]:
    /// instructions that must not run natively are emulated, others are
    /// interpreted while the current run lasts, and the run stops before
    /// the first that should run natively, or after an instruction that
    /// leaves something for the monitor's loop (an interrupt the guest can
    /// take, an address-space switch, a change of privilege or code size,
    /// single-stepping, HLT). Returns whether anything happened; if not,
    /// [`Monitor::split_step`] takes the instruction at EIP (resumes
    /// natively there, or handles what no block can hold). `streak` is as
    /// in `split_step`; `steps` counts the instructions run.
    pub(crate) fn split_fast(
        &mut self,
        world: &mut dyn WorldServices,
        streak: &mut u32,
        steps: &mut usize,
    ) -> Result<bool, Failure> {
        if self.trace
            || self.cpu.eflags & Eflags::TF != 0
            || !self.cpu.code_32bit()
            || self
                .debug
                .as_ref()
                .is_some_and(crate::debug::Debugger::watching)
        {
            // Tracing names every instruction, and a debugger's
            // watchpoints are checked after each: one at a time.
            return Ok(false);
        }
        let stopwatch = self.stopwatch(&*world);
        let mut driver = SplitDriver {
            runs: &mut self.runs,
            classify: self.planner.config().classify,
            fpu_bits: fpu_bits(&self.cpu),
            streak: *streak,
            split_limit: self.split_limit,
            exec: self.exec,
            last_interpreted: false,
            granted: 0,
            policy: self.policy,
            breakpoints: self
                .debug
                .as_ref()
                .map_or(&[][..], |debug| debug.breakpoints.as_slice()),
        };
        let mut terminate = false;
        let stats_before = self.blocks.stats();
        let ran = {
            let mut view = guest_view!(self, world, terminate);
            btvmm_core::emu::fast::run(
                &mut self.cpu,
                &mut view,
                &mut self.blocks,
                &mut driver,
                crate::FAST_RUN_BUDGET,
            )
        };
        self.counters
            .add(Counter::FastNs, stopwatch.elapsed_ns(&*world));
        *streak = driver.streak;
        self.split_limit = driver.split_limit;
        *steps += ran.retired as usize;
        // The counters go from world process to world process with the
        // vCPU; each has its own blocks: add what this run did.
        let stats = self.blocks.stats();
        self.counters.bump(Counter::FastRuns);
        self.counters
            .add(Counter::FastInstructions, u64::from(ran.retired));
        self.counters.add(
            Counter::FastBlocksDecoded,
            stats.decoded - stats_before.decoded,
        );
        self.counters
            .add(Counter::FastForms, stats.fast - stats_before.fast);
        let retired = ran.retired > 0;
        match ran.end {
            End::Stopped(Stop::NotEmulated(_)) if driver.last_interpreted => {
                // An instruction the emulator does not handle, met while
                // interpreting: it runs natively instead.
                *streak = u32::MAX;
                if retired {
                    self.after_emulation(world, Ok(Outcome::Retired), terminate)?;
                }
                Ok(false)
            }
            End::Stopped(stop) => {
                self.after_emulation(world, Err(stop), terminate)?;
                Ok(true)
            }
            End::Halted => {
                self.after_emulation(world, Ok(Outcome::Halted), terminate)?;
                Ok(true)
            }
            End::Driver | End::NoBlock => {
                if retired || terminate {
                    self.after_emulation(world, Ok(Outcome::Retired), terminate)?;
                }
                Ok(retired)
            }
        }
    }

    /// Copies the code from `start` into its alias, and the code its
    /// direct branches reach on the same page, block by block; maps the
    /// alias page. Instructions the monitor handles get INT3.
    fn split_fill(
        &mut self,
        world: &mut dyn WorldServices,
        start: GuestVirt,
    ) -> Result<(), Failure> {
        let Some(start_phys) = self.mmu.peek(&*world, start.0) else {
            return Ok(());
        };
        self.mmu
            .split
            .map(world, start.page(), start_phys / PAGE_SIZE)
            .map_err(|what| StopReason::Internal(format!("mapping a code alias: {what}")))?;
        let mut work = vec![start];
        let mut blocks = 0;
        while let Some(at) = work.pop() {
            if blocks >= crate::SPLIT_FILL_BLOCKS || at.page() != start.page() {
                continue;
            }
            let offset = at.0 % PAGE_SIZE;
            let phys_page = start_phys / PAGE_SIZE;
            let mut first = [0u8];
            let Some(aliases) = world.code_aliases() else {
                return Err(StopReason::Internal("the world has no code aliases".into()).into());
            };
            if aliases.read(phys_page, offset, &mut first) && first[0] != INT3 {
                // Decoded already (by this process or another).
                continue;
            }
            blocks += 1;
            let memory = PlannerMemory::new(&*world, &self.mmu);
            let block = self.planner.block(&memory, at);
            let pages = memory.into_pages();
            self.track_decoded(world, pages)?;
            self.counters.bump(Counter::SplitBlocksFilled);
            let successors = self.copy_block(world, phys_page, at, &block.end)?;
            work.extend(successors);
        }
        Ok(())
    }

    /// Copies the block from `at` to its end into alias page `phys_page`
    /// (stopping at the page's end), INT3 at an ending instruction the
    /// monitor handles or one that straddles the page; returns where
    /// execution can go next on the same page.
    fn copy_block(
        &mut self,
        world: &mut dyn WorldServices,
        phys_page: u32,
        at: GuestVirt,
        end: &BlockEnd,
    ) -> Result<Vec<GuestVirt>, Failure> {
        let page_end = at.0 - at.0 % PAGE_SIZE + PAGE_SIZE;
        // The block's bytes up to its last instruction's end at most (the
        // page's end, and what an instruction there needs of the next).
        let block_len = end.at().0.wrapping_sub(at.0) as usize + MAX_INSTRUCTION;
        let in_page = (at.bytes_to_page_end() as usize).min(block_len);
        let mut buffer = [0u8; 256];
        let mut heap = Vec::new();
        let bytes: &mut [u8] = if in_page + MAX_INSTRUCTION <= buffer.len() {
            &mut buffer[..in_page + MAX_INSTRUCTION]
        } else {
            heap.resize(in_page + MAX_INSTRUCTION, 0);
            &mut heap
        };
        let readable = {
            let memory = PlannerMemory::new(&*world, &self.mmu);
            if btvmm_core::GuestMemory::read_virt(&memory, at, &mut bytes[..in_page]).is_err() {
                return Ok(Vec::new());
            }
            #[allow(clippy::cast_possible_truncation)] // a page at most
            let next = at.offset(in_page as u32);
            if in_page < block_len
                && btvmm_core::GuestMemory::read_virt(&memory, next, &mut bytes[in_page..]).is_ok()
            {
                bytes.len()
            } else {
                in_page
            }
        };
        let (stop_before, end_poi) = match end {
            BlockEnd::Poi(poi) => (None, Some(poi)),
            BlockEnd::TooLong(next) | BlockEnd::Unfetchable(next) | BlockEnd::Breakpoint(next) => {
                (Some(next.0), None)
            }
        };
        let mut decoder = Decoder::with_ip(
            32,
            &bytes[..readable],
            u64::from(at.0),
            DecoderOptions::NONE,
        );
        let mut instr = Instruction::default();
        let mut copy_to = at.0;
        let mut trap_at = None;
        let mut successors = Vec::new();
        let classify = self.planner.config().classify;
        while decoder.can_decode() {
            #[allow(clippy::cast_possible_truncation)] // inside the buffer
            let here = at.0.wrapping_add(decoder.position() as u32);
            if here >= page_end || end_poi.is_some_and(|poi| here > poi.at.0) {
                break;
            }
            if stop_before == Some(here) {
                match end {
                    BlockEnd::TooLong(_) => successors.push(GuestVirt(here)),
                    // The monitor stops there for the debugger.
                    BlockEnd::Breakpoint(_) => trap_at = Some(here),
                    _ => {}
                }
                break;
            }
            decoder.decode_out(&mut instr);
            #[allow(clippy::cast_possible_truncation)] // at most 15
            let length = instr.len() as u32;
            if instr.is_invalid() || straddles(GuestVirt(here), length) {
                trap_at = Some(here);
                break;
            }
            let is_end = end_poi.is_some_and(|poi| poi.at.0 == here);
            let kind = match end_poi {
                Some(poi) if is_end => poi.kind,
                _ => cfg_planner::classify(&instr, &classify),
            };
            if !split_native(kind, &instr) {
                trap_at = Some(here);
                // The monitor resumes after a sensitive instruction (most
                // do not transfer control): decode on from there too.
                if matches!(kind, PoiKind::Sensitive { .. }) {
                    successors.push(GuestVirt(here.wrapping_add(length)));
                }
                break;
            }
            copy_to = here.wrapping_add(length);
            if is_end {
                let next = GuestVirt(copy_to);
                match kind {
                    PoiKind::CondBranch { taken } => successors.extend([taken, next]),
                    PoiKind::DirectBranch { target, call } => {
                        successors.push(target);
                        if call {
                            successors.push(next);
                        }
                    }
                    PoiKind::PointerBranch(PointerKind::IndirectCall) => successors.push(next),
                    _ => {}
                }
                break;
            }
        }
        let offset = at.0 % PAGE_SIZE;
        let copied = (copy_to.wrapping_sub(at.0)) as usize;
        let Some(aliases) = world.code_aliases() else {
            return Err(StopReason::Internal("the world has no code aliases".into()).into());
        };
        if copied > 0 && !aliases.write(phys_page, offset, &bytes[..copied]) {
            return Err(StopReason::Internal(format!(
                "writing the code alias of guest-physical page {phys_page:#x}"
            ))
            .into());
        }
        if let Some(trap) = trap_at {
            // Already INT3 unless decoded before: make sure.
            let _ = aliases.write(phys_page, trap % PAGE_SIZE, &[INT3]);
        }
        Ok(successors)
    }
}

/// The CR0 and CR4 bits the planner's classification depends on (which
/// FPU and SSE instructions fault).
fn fpu_bits(cpu: &Cpu) -> (u32, u32) {
    (
        cpu.cr0 & (Cr0::TS | Cr0::EM | Cr0::MP),
        cpu.cr4 & btvmm_core::emu::fpu::CR4_OSFXSR,
    )
}

/// Whether the monitor's class of an instruction is port I/O.
fn is_port_io(kind: PoiKind) -> bool {
    matches!(
        kind,
        PoiKind::Sensitive {
            kind: cfg_planner::SensitiveKind::PortIo,
            ..
        }
    )
}

/// [`Monitor::split_step`]'s decisions for a fast interpreter run.
struct SplitDriver<'a> {
    /// [`Monitor::runs`].
    runs: &'a mut crate::profile::Runs,
    /// The classification settings of the run.
    classify: cfg_planner::ClassifyConfig,
    /// [`fpu_bits`] at the start: a change ends the run (the
    /// classification changes with them).
    fpu_bits: (u32, u32),
    /// Instructions interpreted since the last one that had to be
    /// emulated.
    streak: u32,
    /// [`Monitor::split_limit`].
    split_limit: u32,
    exec: btvmm_core::ExecMode,
    /// The last instruction let run was interpreted (could have run
    /// natively) rather than emulated because it had to be.
    last_interpreted: bool,
    /// Instructions [`Driver::run_on`] let run past the limit, to reach
    /// one that must be emulated a few instructions on.
    granted: u32,
    /// [`Monitor::policy`].
    policy: crate::policy::Policy,
    /// A debugger's breakpoints (sorted): the run stops before them.
    breakpoints: &'a [u32],
}

impl SplitDriver<'_> {
    /// [`Monitor::split_run`].
    fn run_limit(&self) -> u32 {
        match self.exec {
            btvmm_core::ExecMode::Auto => self.split_limit,
            btvmm_core::ExecMode::Native => 0,
            btvmm_core::ExecMode::Interpret => u32::MAX,
        }
    }

    /// What the split view makes of `instr` (kept in its note).
    fn judge(&self, instr: &Instruction, note: &mut Option<Judged>) -> Judged {
        match note {
            Some(judged) if judged.classify == self.classify => *judged,
            _ => {
                let kind = cfg_planner::classify(instr, &self.classify);
                let judged = Judged {
                    classify: self.classify,
                    kind,
                    native: split_native(kind, instr),
                };
                *note = Some(judged);
                judged
            }
        }
    }
}

impl Driver<GuestView<'_>, Judged> for SplitDriver<'_> {
    fn before(
        &mut self,
        cpu: &Cpu,
        view: &mut GuestView<'_>,
        instr: &Instruction,
        note: &mut Option<Judged>,
    ) -> bool {
        if !self.breakpoints.is_empty() && self.breakpoints.binary_search(&cpu.linear_eip()).is_ok()
        {
            return false;
        }
        let judged = self.judge(instr, note);
        if judged.native {
            if self.streak >= self.run_limit() {
                if self.granted == 0 {
                    return false;
                }
                self.granted -= 1;
            }
            self.streak = self.streak.saturating_add(1);
            self.last_interpreted = true;
            view.counters.bump(Counter::Interpreted);
        } else {
            self.split_limit = self.runs.emulated(
                &self.policy,
                cpu.linear_eip(),
                self.streak,
                is_port_io(judged.kind),
                view.counters,
            );
            self.streak = 0;
            self.granted = 0;
            self.last_interpreted = false;
            view.counters.bump(Counter::EmulatedPlanned);
        }
        view.counters.bump(Counter::Emulated);
        match judged.kind {
            PoiKind::Sensitive { kind, .. } => view.counters.bump_sensitive(kind),
            PoiKind::PointerBranch(kind) => view.counters.bump_pointer(kind),
            _ => {}
        }
        true
    }

    /// The run is over its limit at an instruction that could run
    /// natively: if one that must be emulated follows within
    /// [`crate::policy::Policy::lookahead`] instructions of the same straight-line
    /// block, native execution would reach it and trap there (an INT3
    /// round trip through the host costs as much as tens of interpreted
    /// instructions): interpret on to it instead. Linux's system-call
    /// entry is one such stretch (SAVE_ALL's pushes, then the loads of
    /// %ds and %es).
    fn run_on(
        &mut self,
        cpu: &Cpu,
        view: &mut GuestView<'_>,
        ahead: &mut [fast::Op<Judged>],
    ) -> bool {
        if self.exec != btvmm_core::ExecMode::Auto
            || (!self.breakpoints.is_empty()
                && self.breakpoints.binary_search(&cpu.linear_eip()).is_ok())
        {
            return false;
        }
        let Some(distance) = ahead
            .iter_mut()
            .take(self.policy.lookahead as usize)
            .position(|op| !self.judge(&op.instr, &mut op.note).native)
        else {
            return false;
        };
        #[allow(clippy::cast_possible_truncation)] // at most the lookahead
        let distance = distance as u32;
        self.granted = distance;
        view.counters.add(Counter::SplitRanOn, u64::from(distance));
        let Some((current, _)) = ahead.split_first_mut() else {
            return false;
        };
        self.before(cpu, view, &current.instr, &mut current.note)
    }

    fn after(&mut self, cpu: &Cpu, view: &mut GuestView<'_>, outcome: Outcome) -> bool {
        outcome != Outcome::Halted
            && !*view.terminate
            && !view.mmu.failed()
            && view.mmu.pending_switch().is_none()
            && cpu.cpl == 0
            && cpu.eflags & Eflags::TF == 0
            && cpu.code_32bit()
            && !(cpu.interrupts_enabled() && view.chipset.interrupt_pending())
            && fpu_bits(cpu) == self.fpu_bits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_off_windows_sit_above_ram() {
        let window = paging_off_window(256 << 20).expect("fits");
        assert_eq!(window.base, 0x1000_0000);
        assert_eq!(window.max_linear, 0xffff_0000 - 1 - 0x1000_0000);
        let odd = paging_off_window(300 << 20).expect("fits");
        assert_eq!(odd.base, 0x2000_0000);
        assert!(paging_off_window(0xfff0_0000).is_none());
    }

    #[test]
    fn paging_windows_take_free_regions_from_the_top() {
        // The guest maps 3 GiB..3 GiB + 256 MiB (a direct map) and the top
        // 8 MiB (fixmap): the stretch starts below the top.
        let pde = |linear: u32| {
            Some(u32::from(
                (0xc000_0000..0xd000_0000).contains(&linear) || linear >= 0xff80_0000,
            ))
        };
        let window = choose_paging_window(0xc100_1234, &pde).expect("a window");
        let alias = window.base.wrapping_add(0xc100_0000);
        assert!(
            alias >= 0xd000_0000 && alias + (16 << 20) <= 0xff80_0000,
            "{alias:#x}"
        );
        assert_eq!(alias & (REGION - 1), 0);
        assert!(window.max_linear >= 0xc100_1234);
        // Nothing free: no window.
        assert!(choose_paging_window(0xc100_0000, &|_| Some(1)).is_none());
    }

    #[test]
    fn straddling() {
        assert!(straddles(GuestVirt(0xfff), 2));
        assert!(!straddles(GuestVirt(0xffe), 2));
    }
}
