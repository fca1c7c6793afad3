//! The monitor: what happens at every trap of the guest world.
//!
//! [`Monitor::handle`] is a plain function from a trap and the guest's
//! registers to a resume decision, acting on the world only through
//! [`WorldServices`]; tests feed it made-up traps. In the world process it
//! runs in signal context (see world-switch's `sys::signal` for why that is
//! safe here).
//!
//! At each trap the monitor
//! 1. reads the guest's registers back into the vCPU ([`segments`]),
//! 2. handles the trap: an instruction that faulted natively is emulated
//!    (which gives its architectural result, or the exception the guest
//!    must see); a system call or INT3 is backed up to its instruction and
//!    emulated; a planned breakpoint needs nothing more,
//! 3. in guest kernel mode, asks the planner what to do at EIP until it can
//!    resume natively under a breakpoint plan (emulating sensitive
//!    instructions and delivering exceptions on the way),
//! 4. writes the vCPU back into host registers and resumes.

/// The monitor's [`GuestView`] for one step of work: a macro rather than a
/// method, so that the vCPU and the decode cache stay free to borrow beside
/// it (the view takes the other fields).
macro_rules! guest_view {
    ($monitor:ident, $world:expr, $terminate:ident) => {
        GuestView {
            world: $world,
            planner: &mut $monitor.planner,
            counters: &mut $monitor.counters,
            chipset: &mut $monitor.chipset,
            terminate: &mut $terminate,
            mmu: &mut $monitor.mmu,
        }
    };
}

pub mod counters;
mod debug;
pub mod mmu;
pub mod policy;
pub mod profile;
pub mod segments;
pub mod split;
pub mod view;

use btvmm_core::cpu::{Cpu, Cr0, Eflags, Gpr, SegReg};
use btvmm_core::emu::interrupt::deliver_exception;
use btvmm_core::emu::{self, Outcome};
use btvmm_core::exception::{Exception, vector};
use btvmm_core::exit::{Exit, StopReason};
use btvmm_core::{Action, CpuView, HostRegisters, Stop, Trap, WorldServices};
use std::sync::Arc;

use btvmm_core::GuestVirt;
use cfg_planner::{Block, BlockEnd, Planner, PlannerConfig, PoiKind, Step, X86};
use devices::chipset::Chipset;
use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use crate::counters::{Counter, Counters};
use crate::mmu::Mmu;
use crate::segments::Shadows;
use crate::split::SplitStep;
use crate::view::{GuestView, PlannerMemory, read_physical};

/// EFLAGS bits the guest's native execution owns (the rest, IF, IOPL, NT,
/// VM, ID, VIF, VIP, are virtual and kept in the vCPU: sigreturn does not
/// let us set them on the host).
const NATIVE_FLAGS: u32 = Eflags::CF
    | Eflags::PF
    | Eflags::AF
    | Eflags::ZF
    | Eflags::SF
    | Eflags::TF
    | Eflags::DF
    | Eflags::OF
    | Eflags::AC;

/// EFLAGS bits guest code can change natively at CPL 3 (POPF) but the
/// monitor cannot set through sigreturn: a change on the host since the last
/// resume is the guest's; otherwise the vCPU's value stands.
const HYBRID_FLAGS: u32 = Eflags::NT | Eflags::ID;

/// DR6.BS: the #DB came from single-stepping.
const DR6_BS: u32 = 1 << 14;

/// Instructions emulated in one trap between two looks at the clock (the
/// guest's timer keeps ticking through long runs of sensitive
/// instructions, which a legal guest may have).
const EMULATION_BUDGET: usize = 10_000;

/// Most instructions in one run of the fast interpreter: the monitor's
/// loop looks at the clock and the chipset between runs.
const FAST_RUN_BUDGET: u32 = 1024;

/// Why an instruction is being emulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    /// The planner stopped it (sensitive, or a transfer it cannot follow).
    Planned,
    /// It faulted natively.
    AfterFault,
    /// The monitor interprets a short stretch rather than trap again soon.
    Interpreted,
}

/// Most instructions interpreted in one trap.
const INTERPRET_BUDGET: u32 = 256;
/// Blocks copied into alias pages at one trap (the block at EIP and the
/// code its direct branches reach on the same page).
const SPLIT_FILL_BLOCKS: usize = 64;

/// A start mark of [`Monitor::stopwatch`].
#[derive(Clone, Copy, Debug)]
enum Stopwatch {
    Clock(u64),
    Tsc { start: u64, khz: u32 },
}

impl Stopwatch {
    /// Nanoseconds since the mark.
    fn elapsed_ns(self, world: &dyn WorldServices) -> u64 {
        match self {
            Self::Clock(start) => world.now_ns().saturating_sub(start),
            Self::Tsc { start, khz } => {
                let ticks = world.timestamp().saturating_sub(start);
                // Ticks of one run are far below 2^44: no overflow.
                ticks.saturating_mul(1_000_000) / u64::from(khz)
            }
        }
    }
}

/// The guest's state at hand-over from the loader: 32-bit protected mode,
/// paging and interrupts off, flat 4 GiB segments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Boot {
    /// Entry point.
    pub eip: u32,
    /// EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI (Multiboot: the magic in EAX
    /// and the information address in EBX; Linux: `boot_params` in ESI).
    pub gpr: [u32; 8],
    /// The selector CS holds (its descriptor cache is flat code).
    pub code_selector: u16,
    /// The selector DS, ES, FS, GS and SS hold (flat data).
    pub data_selector: u16,
    /// The GDT the selectors come from (base, limit); `(0, 0)` for none.
    pub gdt: (u32, u16),
    /// Host real time (Unix epoch, ns) when the VM's clock reads zero: the
    /// guest's real-time clock starts there.
    pub wall_clock_ns: i128,
    /// Bytes of guest RAM (the CMOS tells the guest).
    pub ram_bytes: u64,
    /// The CMOS type of floppy drive 0 (4: 1.44 MB; 0: none).
    pub floppy_drive_type: u8,
}

/// The monitor of one vCPU.
#[derive(Debug)]
pub struct Monitor {
    cpu: Cpu,
    planner: Planner,
    /// Instructions the emulator and the split view decoded, by their
    /// bytes (the same kernel paths are interpreted over and over).
    decode_cache: emu::decode_cache::DecodeCache<split::Judged>,
    /// The fast interpreter's blocks, with the split view's judgement of
    /// each instruction.
    blocks: emu::fast::BlockCache<split::Judged>,
    shadows: Shadows,
    counters: Counters,
    /// The monitor set TF for one instruction.
    stepping: bool,
    /// Write a line per trap and per emulation to standard error.
    trace: bool,
    /// RDTSC faults in the world (the guest's CR4.TSD is set).
    timestamp_faulting: bool,
    /// CPUID faults in the world.
    cpuid_faults: bool,
    /// The hybrid flags the host showed at the last trap, to see which ones
    /// guest code changed natively since.
    resumed_eflags: u32,
    /// The host selectors of the last resume: what CS and SS held when the
    /// host's fast system-call path reports its own instead.
    resumed_selectors: [u16; 6],
    /// The guest executed HLT and waits for an interrupt.
    halted: bool,
    /// The PIC pair and the PIT (see devices::chipset for why they live
    /// here rather than in the host).
    chipset: Chipset,
    /// The deadline the world's timer is armed for.
    published_deadline: Option<u64>,
    /// Guest paging and the shadow of its address space.
    mmu: Mmu,
    /// The last hidden fault (EIP, address) and how often it repeated.
    last_hidden_fault: (u32, u32, u32),
    /// Which system-call instruction the host's fast path takes.
    host_fast_path: btvmm_core::HostFastPath,
    /// Run guest kernel code in the split code view (DESIGN.md 3b) where
    /// its alias can be placed; hardware breakpoints elsewhere.
    split: bool,
    /// The window the guest was last resumed in (split view), until the
    /// next trap.
    resumed_window: Option<split::Window>,
    /// How guest kernel code runs between the instructions the monitor
    /// must handle.
    exec: btvmm_core::ExecMode,
    /// The current interpreted run's length in the split view
    /// ([`policy::Policy::run_after_entry`] or
    /// [`policy::Policy::run_after_emulated`]).
    split_limit: u32,
    /// The split view's interpreted runs: per-site lengths and the run
    /// under way.
    runs: profile::Runs,
    /// How far the monitor interprets.
    policy: policy::Policy,
    /// The monitor just moved the guest into code where more instructions
    /// it must handle usually follow soon (an interrupt, exception or
    /// system-call entry): the split view interprets on from there before
    /// resuming natively, instead of resuming into a trap a few
    /// instructions on.
    interpret_after: bool,
    /// Hardware breakpoints are armed.
    breakpoints_armed: bool,
    /// When the monitor's current stretch of work began (VM clock, ns),
    /// and the waits counted up to then: monitor time is the rest.
    work_started: (u64, u64),
    /// The last alias fetch fault (EIP) and how often it repeated: a
    /// fault that does not go away sends that code to hardware
    /// breakpoints instead of looping.
    last_alias_fault: (u32, u32),
    /// A debugger's points and state (None: no debugger, no cost).
    debug: Option<debug::Debugger>,
    /// The generation of the debugger's points this process's planner,
    /// split view and watched pages follow.
    debug_applied: u32,
}

/// The vCPU as it travels between the world processes of the pool: the
/// architectural state and what the monitor keeps for the guest (the
/// chipset, the counters, HLT and single-step state). Everything else (the
/// planner's caches, the shadow, the LDT slots, the host timer) belongs to
/// each process.
#[derive(serde::Serialize, serde::Deserialize)]
struct VcpuState {
    cpu: Cpu,
    chipset: Chipset,
    counters: Vec<u64>,
    halted: bool,
    stepping: bool,
    /// The guest's x87/SSE registers (an FXSAVE image), which live in the
    /// host FPU of the process that runs the guest.
    fpu: Option<Vec<u8>>,
    /// A debugger's points and state.
    debug: Option<debug::Debugger>,
}

/// What went wrong while handling a trap.
enum Failure {
    Stop(StopReason),
    Terminated,
}

impl From<StopReason> for Failure {
    fn from(reason: StopReason) -> Self {
        Self::Stop(reason)
    }
}

impl Monitor {
    /// A monitor for a guest entered at `boot` in 32-bit protected mode
    /// with flat segments and paging off (the Multiboot and Linux 32-bit
    /// hand-over state).
    /// `cpuid_faults` says whether the world made CPUID fault.
    pub fn new(boot: Boot, cpuid_faults: bool) -> Result<Self, cfg_planner::PlannerError> {
        let mut cpu = Cpu {
            eip: boot.eip,
            gpr: boot.gpr,
            ..Cpu::default()
        };
        for (index, segment) in cpu.segments.iter_mut().enumerate() {
            segment.selector = if index == SegReg::Cs as usize {
                boot.code_selector
            } else {
                boot.data_selector
            };
        }
        cpu.gdtr = btvmm_core::cpu::TableRegister {
            base: boot.gdt.0,
            limit: boot.gdt.1,
        };
        Ok(Self {
            decode_cache: emu::decode_cache::DecodeCache::default(),
            blocks: emu::fast::BlockCache::default(),
            cpu,
            planner: Planner::<X86>::new(PlannerConfig {
                classify: cfg_planner::ClassifyConfig {
                    cpuid_faults,
                    ..cfg_planner::ClassifyConfig::default()
                },
                ..PlannerConfig::default()
            })?,
            shadows: Shadows::default(),
            counters: Counters::default(),
            stepping: false,
            trace: false,
            timestamp_faulting: false,
            cpuid_faults,
            resumed_eflags: 0,
            resumed_selectors: [0; 6],
            halted: false,
            chipset: {
                let mut chipset = Chipset::new(boot.wall_clock_ns, boot.ram_bytes);
                if boot.floppy_drive_type != 0 {
                    chipset.cmos.set_floppy_drive(boot.floppy_drive_type);
                }
                chipset
            },
            published_deadline: None,
            mmu: Mmu::default(),
            last_hidden_fault: (0, 0, 0),
            host_fast_path: btvmm_core::HostFastPath::Sysenter,
            split: false,
            resumed_window: None,
            interpret_after: false,
            split_limit: policy::Policy::TUNED.run_after_entry,
            runs: profile::Runs::default(),
            policy: policy::Policy::TUNED,
            exec: btvmm_core::ExecMode::Auto,
            breakpoints_armed: false,
            work_started: (0, 0),
            last_alias_fault: (0, 0),
            debug: None,
            debug_applied: 0,
        })
    }

    /// Tells the monitor which system-call instruction the host CPU sends
    /// through the host kernel's fast path (world-switch reads it).
    pub fn set_host_fast_path(&mut self, fast_path: btvmm_core::HostFastPath) {
        self.host_fast_path = fast_path;
    }

    /// Runs guest kernel code in the split code view where possible (the
    /// world must have code aliases), or with hardware breakpoints only.
    pub fn set_split(&mut self, split: bool) {
        self.split = split;
    }

    /// How far the monitor interprets under [`btvmm_core::ExecMode::Auto`]
    /// (the default: [`policy::Policy::TUNED`]).
    pub fn set_policy(&mut self, policy: policy::Policy) {
        self.policy = policy;
        self.split_limit = policy.run_after_entry;
        self.runs.forget();
    }

    /// The interpretation settings in use.
    #[must_use]
    pub fn policy(&self) -> policy::Policy {
        self.policy
    }

    /// How guest kernel code runs between the instructions the monitor
    /// must handle (the default: [`btvmm_core::ExecMode::Auto`]).
    pub fn set_exec(&mut self, exec: btvmm_core::ExecMode) {
        self.exec = exec;
    }

    /// In the split view: how many instructions the monitor interprets
    /// past the last one it had to handle before it resumes natively.
    pub(crate) fn split_run(&self) -> u32 {
        match self.exec {
            btvmm_core::ExecMode::Auto => self.split_limit,
            btvmm_core::ExecMode::Native => 0,
            btvmm_core::ExecMode::Interpret => u32::MAX,
        }
    }

    /// Where a trap's count of interpreted instructions starts (see
    /// [`Monitor::run_kernel`]).
    fn first_streak(&self) -> u32 {
        match (self.split, self.exec) {
            (false, _) | (true, btvmm_core::ExecMode::Interpret) => 0,
            // None until an instruction the monitor handles (or an entry).
            (true, _) => u32::MAX,
        }
    }

    /// Traces every trap, emulation and resume to standard error.
    pub fn set_trace(&mut self, trace: bool) {
        self.trace = trace;
    }

    /// The vCPU.
    #[must_use]
    pub fn cpu(&self) -> &Cpu {
        &self.cpu
    }

    /// The counters.
    #[must_use]
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Handles one trap and says how the world goes on.
    pub fn handle(
        &mut self,
        trap: Trap,
        host: HostRegisters,
        world: &mut dyn WorldServices,
    ) -> Action {
        // One clock read for the start of the work and the chipset.
        let now_ns = world.now_ns();
        self.work_started = (now_ns, self.waits());
        self.counters.bump(Counter::Traps);
        if self.trace {
            world.trace(&format!(
                "trap {trap:?} at {:#x}:{:#x} esp {:#x} eflags {:#x} cs/ss {:#x}/{:#x}",
                host.selectors[1],
                host.eip,
                host.gpr[4],
                host.eflags,
                host.selectors[1],
                host.selectors[2]
            ));
        }
        // Timer edges and host lines since the last trap (once a trap: the
        // chipset's own ports bring it up to date as they are used).
        self.update_chipset_at(world, now_ns);
        let result = self
            .enter(trap, &host, world)
            .and_then(|()| self.run_kernel(world))
            .and_then(|()| self.leave(world));
        self.charge_work(world);
        match result {
            Ok(registers) => Action::Resume(registers),
            Err(Failure::Terminated) => {
                world.publish_counters(self.counters.as_slice());
                Action::Terminate
            }
            Err(Failure::Stop(reason)) => {
                world.publish_counters(self.counters.as_slice());
                // The host reports the reason and ends the VM; whatever it
                // answers, this world is done.
                let _ = world.exit(Exit::Stop(reason));
                Action::Terminate
            }
        }
    }

    /// The waits counted so far (exits and HLT sleeps).
    fn waits(&self) -> u64 {
        self.counters
            .get(Counter::ExitWaitNs)
            .wrapping_add(self.counters.get(Counter::HaltNs))
    }

    /// Starts timing a short stretch of the monitor's work (an interpreter
    /// run): the TSC where RDTSC runs in this process and its frequency
    /// is known, a read much cheaper than the clock's; else the clock.
    fn stopwatch(&self, world: &dyn WorldServices) -> Stopwatch {
        let tsc_khz = world.tsc_khz();
        if self.timestamp_faulting || tsc_khz == 0 {
            Stopwatch::Clock(world.now_ns())
        } else {
            Stopwatch::Tsc {
                start: world.timestamp(),
                khz: tsc_khz,
            }
        }
    }

    /// Starts timing the monitor's work.
    fn start_work(&mut self, world: &dyn WorldServices) {
        self.work_started = (world.now_ns(), self.waits());
    }

    /// Counts the monitor's work since the trap began or the last charge,
    /// without the waits, and starts timing again.
    fn charge_work(&mut self, world: &dyn WorldServices) {
        let (started, waits_then) = self.work_started;
        let now_ns = world.now_ns();
        let waits = self.waits();
        let waited = waits.wrapping_sub(waits_then);
        self.counters.add(
            Counter::MonitorNs,
            now_ns.saturating_sub(started).saturating_sub(waited),
        );
        self.work_started = (now_ns, waits);
    }

    /// Steps 1 and 2: registers in, the trap itself.
    fn enter(
        &mut self,
        trap: Trap,
        host: &HostRegisters,
        world: &mut dyn WorldServices,
    ) -> Result<(), Failure> {
        if trap == Trap::Enter {
            let mut state = Vec::new();
            let later_member = match world.address_spaces() {
                Some(pool) if pool.member() != 0 => {
                    // Not the first address space: wait until a CR3 load
                    // hands the vCPU here.
                    pool.wait_turn(&mut state);
                    true
                }
                _ => false,
            };
            if later_member {
                let taken = self.take_over(world, &state);
                // The wait for a turn was not work.
                self.start_work(world);
                return taken;
            }
            self.mmu
                .start(world)
                .map_err(|error| StopReason::Internal(format!("mapping guest RAM: {error}")))?;
            return Ok(());
        }
        let split_context = self.resumed_window.take();
        let fast_path = matches!(
            trap,
            Trap::SystemCall {
                fast_path: true,
                ..
            }
        );
        let sysenter = fast_path && self.host_fast_path == btvmm_core::HostFastPath::Sysenter;
        let esp = self.cpu.gpr[Gpr::Esp as usize];
        self.cpu.gpr = host.gpr;
        self.cpu.eip = host.eip;
        let mut host = *host;
        if fast_path {
            // The host's fast system-call path reports its own CS, SS and
            // RIP (the vDSO's landing pad) instead of the guest's: CS and SS
            // are taken as the guest was resumed with them (a native far
            // transfer or SS load in between would go unseen; before, they
            // were taken from the register slots, which need not hold the
            // user's CS at all: a run whose kernel code was all
            // interpreted left the CS slot empty).
            host.rip_high = 0;
            for seg in [SegReg::Cs, SegReg::Ss] {
                host.selectors[seg as usize] = self.resumed_selectors[seg as usize];
            }
        }
        if sysenter {
            // SYSENTER follows the vDSO convention: RSP holds the guest's
            // EBP, and RBP the dword at [EBP]. SYSENTER replaces CS, SS,
            // EIP and ESP anyway; EBP is taken back from RSP.
            self.cpu.gpr[Gpr::Ebp as usize] = host.gpr[Gpr::Esp as usize];
            self.cpu.gpr[Gpr::Esp as usize] = esp;
        }
        let host = &host;
        // Sigreturn keeps the host's own NT and ID: a difference from what
        // the host showed at the last trap was made by guest code.
        let changed_natively = (host.eflags ^ self.resumed_eflags) & HYBRID_FLAGS;
        self.resumed_eflags = host.eflags & HYBRID_FLAGS;
        self.cpu.eflags = (host.eflags & (NATIVE_FLAGS | changed_natively))
            | (self.cpu.eflags & !(NATIVE_FLAGS | changed_natively))
            | 0x2;
        // The monitor's native single step ended by something other than
        // its #DB (a kick leaves it pending: the instruction has not run).
        // Its TF must not reach a frame the guest sees, nor the next
        // instruction; a fault the shadow just maps runs the instruction
        // again, so a debugger's step is taken afresh.
        let step_cut = self.stepping && !matches!(trap, Trap::SingleStep | Trap::Kick);
        if step_cut {
            self.stepping = false;
            self.cpu.eflags &= !Eflags::TF;
        }
        let hidden_before = self.counters.get(Counter::HiddenFaults);
        let mut terminate = false;
        let repairs = {
            let mut view = guest_view!(self, world, terminate);
            self.shadows.sync_in(&mut self.cpu, host, &mut view)?
        };
        self.counters.add(Counter::SelectorRepairs, repairs);
        match trap {
            Trap::Enter | Trap::Kick => {
                if trap == Trap::Kick {
                    self.counters.bump(Counter::Kicks);
                    // The host's live figures (its display's status line)
                    // come from here when no exit publishes them: a
                    // busy guest has a timer kick at each of its ticks.
                    world.publish_counters(self.counters.as_slice());
                }
                Ok(())
            }
            Trap::Breakpoint => {
                self.counters.bump(Counter::BreakpointHits);
                Ok(())
            }
            Trap::SingleStep if self.stepping => {
                self.stepping = false;
                self.cpu.eflags &= !Eflags::TF;
                self.counters.bump(Counter::SingleSteps);
                Ok(())
            }
            Trap::SingleStep => {
                // The guest's own TF: a #DB trap after the instruction.
                self.single_step_trap(world)
            }
            Trap::Fault {
                vector,
                error_code,
                address,
            } => {
                // After a repair the host's fault address was computed with
                // the host's segment base: only the emulator, with the
                // guest's segment, knows what the access was.
                let address = address.filter(|_| repairs == 0);
                if let Some(window) = split_context
                    && vector == vector::PF
                    && error_code & 0x10 != 0
                {
                    return self.alias_fault(window, address);
                }
                let handled = self.fault(world, vector, error_code, address);
                let mapped = self.counters.get(Counter::HiddenFaults) != hidden_before
                    && self.last_hidden_fault.2 <= 2;
                if step_cut && mapped {
                    self.debug_step_again();
                }
                handled
            }
            Trap::SoftwareBreakpoint if split_context.is_some() => {
                // An INT3 of an alias page: an instruction the monitor
                // handles, or code not decoded yet. The planner's step from
                // there decides which.
                self.counters.bump(Counter::SplitTraps);
                self.cpu.eip = self.cpu.eip.wrapping_sub(1);
                Ok(())
            }
            Trap::SoftwareBreakpoint => {
                self.counters.bump(Counter::SoftwareBreakpoints);
                // EIP is past the INT3: back up to it (cc, or cd 03).
                let back = if self.byte_before(world, 1) == 0xcc {
                    1
                } else {
                    2
                };
                self.cpu.eip = self.cpu.eip.wrapping_sub(back);
                self.emulate(world, false)
            }
            Trap::SystemCall {
                number,
                compat,
                fast_path,
            } => {
                self.counters.bump(Counter::SystemCalls);
                self.cpu.gpr[Gpr::Eax as usize] = number;
                if !compat {
                    return Err(StopReason::GuestEscape(
                        "a 64-bit system call from guest code".into(),
                    )
                    .into());
                }
                self.interpret_after = true;
                if sysenter {
                    return self.user_sysenter(world);
                }
                if fast_path {
                    // On this AMD host the guest's SYSCALL went through the
                    // host's 32-bit SYSCALL path, which kept no EIP: the
                    // #UD the guest's CPU gives it cannot be placed.
                    return Err(StopReason::Unsupported(
                        "SYSCALL in guest user code (on AMD hosts the host's 32-bit SYSCALL path does not report where it was)".into(),
                    )
                    .into());
                }
                // int $0x80 or a 32-bit syscall, both two bytes long.
                self.cpu.eip = self.cpu.eip.wrapping_sub(2);
                self.emulate(world, false)
            }
        }
    }

    /// A fetch of an alias page that is not mapped (split view): the code
    /// at EIP gets decoded and its alias mapped by the step from here. The
    /// mapping is made afresh even if this process thought it was there.
    fn alias_fault(&mut self, window: split::Window, address: Option<u32>) -> Result<(), Failure> {
        self.counters.bump(Counter::SplitAliasFaults);
        if let Some(linear) = address {
            let virt_page = linear.wrapping_sub(window.base) / btvmm_core::PAGE_SIZE;
            self.mmu.split.forget_mapping(virt_page);
        }
        let (eip, count) = self.last_alias_fault;
        self.last_alias_fault = if eip == self.cpu.eip {
            (eip, count + 1)
        } else {
            (self.cpu.eip, 1)
        };
        Ok(())
    }

    /// The byte `distance` before EIP (the instruction that trapped), as
    /// the guest's current mapping shows it; 0 when nothing is mapped
    /// there.
    fn byte_before(&self, world: &dyn WorldServices, distance: u32) -> u8 {
        let mut byte = [0u8];
        if let Some(phys) = self
            .mmu
            .peek(world, self.cpu.linear_eip().wrapping_sub(distance))
        {
            read_physical(world, phys, &mut byte);
        }
        byte[0]
    }

    /// A CPU exception from natively running guest code.
    fn fault(
        &mut self,
        world: &mut dyn WorldServices,
        vector: u8,
        error_code: u32,
        address: Option<u32>,
    ) -> Result<(), Failure> {
        let counter = match vector {
            vector::GP => Counter::GeneralProtection,
            vector::PF => Counter::PageFaults,
            vector::UD => Counter::InvalidOpcodes,
            vector::DE => Counter::DivideErrors,
            _ => Counter::OtherFaults,
        };
        self.counters.bump(counter);
        if vector == vector::PF
            && self.mmu.paging()
            && let Some(address) = address
        {
            return self.page_fault(world, error_code, address);
        }
        match vector {
            // Faults: the instruction at EIP did not complete. Emulating it
            // gives its architectural result: done (a privileged or
            // low-memory instruction), or the exception the guest sees.
            vector::DE
            | vector::BR
            | vector::UD
            | vector::TS
            | vector::NP
            | vector::SS
            | vector::GP
            | vector::PF
            | vector::AC => self.emulate(world, true),
            // INTO and INT1 are traps: back up over them and emulate.
            vector::OF => {
                self.cpu.eip = self.cpu.eip.wrapping_sub(1);
                self.emulate(world, true)
            }
            vector::DB if self.byte_before(world, 1) == 0xf1 => {
                self.cpu.eip = self.cpu.eip.wrapping_sub(1);
                self.emulate(world, true)
            }
            // A debug trap the host did not report as our breakpoint or
            // step (seen when a breakpoint hits while perf is moving it:
            // the host's #DB handler finds no event for the slot and
            // sends a plain SIGTRAP). The guest did not ask for it (its
            // own TF steps come as steps, its DR7 is not supported), and
            // whatever it stopped, the code at EIP has not run yet:
            // planning again from here is all it needs.
            vector::DB => {
                self.counters.bump(Counter::StrayDebugTraps);
                Ok(())
            }
            // x87 and SIMD exceptions: the FPU state is the guest's own.
            vector::MF | vector::XM => self.deliver(world, Exception::new(vector)),
            _ => Err(StopReason::Internal(format!(
                "unexpected host exception {vector} (error code {error_code:#x}) at guest EIP {:#x}",
                self.cpu.eip
            ))
            .into()),
        }
    }

    /// A host #PF while guest paging is on: a hidden fault (map and resume),
    /// the guest's own #PF, or an access to emulate (a tracked page, device
    /// memory, a hole the shadow never maps).
    fn page_fault(
        &mut self,
        world: &mut dyn WorldServices,
        error_code: u32,
        address: u32,
    ) -> Result<(), Failure> {
        // The host's error code: bit 1 a write, bit 4 an instruction fetch
        // (the host runs with NX). User/supervisor is the guest's CPL: the
        // host always sees CPL 3.
        let access = shadow_mmu::Access {
            write: error_code & 2 != 0,
            user: self.cpu.cpl == 3,
            fetch: error_code & 0x10 != 0,
        };
        let released = self.mmu.tables_released();
        let foreign_released = self.mmu.foreign_released();
        let outcome = self.mmu.handle_fault(world, address, access).map_err(
            |error| match error {
                shadow_mmu::ShadowError::Memory(_) => StopReason::Unsupported(format!(
                    "guest paging structures outside guest RAM (access at {address:#x}: {error})"
                )),
                error => StopReason::Internal(format!("shadow MMU at {address:#x}: {error}")),
            },
        )?;
        self.counters.add(
            Counter::TablesReleased,
            self.mmu.tables_released() - released,
        );
        self.counters.add(
            Counter::ForeignReleased,
            self.mmu.foreign_released() - foreign_released,
        );
        match outcome {
            Some(shadow_mmu::FaultOutcome::Mapped { .. }) => {
                self.counters.bump(Counter::HiddenFaults);
                // The same access faulting again right after its mapping
                // was made means the shadow cannot serve it natively (a
                // VMM bug, or host state the shadow does not know): the
                // emulator completes it rather than loop.
                let (eip, at, count) = self.last_hidden_fault;
                let repeat = if (eip, at) == (self.cpu.eip, address) {
                    count + 1
                } else {
                    1
                };
                self.last_hidden_fault = (self.cpu.eip, address, repeat);
                if repeat > 2 {
                    self.counters.bump(Counter::RepeatedHiddenFaults);
                    return self.emulate(world, true);
                }
                Ok(())
            }
            Some(shadow_mmu::FaultOutcome::GuestFault(fault)) => {
                self.counters.bump(Counter::GuestPageFaults);
                self.deliver(world, fault.to_exception())
            }
            Some(shadow_mmu::FaultOutcome::TrackedWrite {
                guest_phys,
                reasons,
            }) => {
                if self.trace {
                    world.trace(&format!(
                        "  write to tracked guest-physical {:#x} ({reasons:?})",
                        guest_phys.0
                    ));
                }
                self.counters.bump(Counter::TrackedWrites);
                self.emulate(world, true)
            }
            Some(shadow_mmu::FaultOutcome::Emulate { .. }) | None => self.emulate(world, true),
        }
    }

    /// Hands the vCPU to pool member `target` (a CR3 load asked for the
    /// address space it holds, or the one it is to hold) and waits until
    /// some member hands it back; then takes it over.
    fn switch_address_space(
        &mut self,
        world: &mut dyn WorldServices,
        target: usize,
    ) -> Result<(), Failure> {
        self.counters.bump(Counter::AddressSpaceSwitches);
        self.charge_work(world);
        self.mmu.sync_pool(world);
        // This process does not run the guest until it is handed back.
        if self.published_deadline.is_some() {
            world.set_timer_deadline(None).map_err(StopReason::from)?;
            self.published_deadline = None;
        }
        let state = VcpuState {
            cpu: self.cpu.clone(),
            chipset: self.chipset.clone(),
            counters: self.counters.as_slice().to_vec(),
            halted: self.halted,
            stepping: self.stepping,
            fpu: world.guest_fpu(),
            debug: self.debug.clone(),
        };
        let bytes = bincode::serialize(&state)
            .map_err(|error| StopReason::Internal(format!("packing the vCPU: {error}")))?;
        let mut back = Vec::new();
        {
            let pool = world.address_spaces().ok_or_else(|| {
                StopReason::Internal("an address-space switch without a pool".into())
            })?;
            pool.set_key(target, Some(self.cpu.cr3));
            pool.touch(target);
            pool.hand_over(target, &bytes, &mut back);
        }
        let taken = self.take_over(world, &back);
        // The counters came with the vCPU: time from here.
        self.start_work(world);
        taken
    }

    /// Takes over the vCPU another pool member handed here.
    fn take_over(&mut self, world: &mut dyn WorldServices, bytes: &[u8]) -> Result<(), Failure> {
        let state: VcpuState = bincode::deserialize(bytes)
            .map_err(|error| StopReason::Internal(format!("unpacking the vCPU: {error}")))?;
        self.cpu = state.cpu;
        self.chipset = state.chipset;
        self.counters = Counters::from_slice(&state.counters);
        self.halted = state.halted;
        self.stepping = state.stepping;
        self.debug = state.debug;
        self.published_deadline = None;
        if let Some(image) = &state.fpu {
            world.set_guest_fpu(image).map_err(|error| {
                StopReason::Internal(format!("loading the guest's FPU: {error}"))
            })?;
        }
        let catchup = self
            .mmu
            .take_over(world, &mut self.planner, &self.cpu)
            .map_err(|error| match error {
                shadow_mmu::ShadowError::Memory(_) => StopReason::Unsupported(format!(
                    "guest paging structures outside guest RAM ({error})"
                )),
                error => StopReason::Internal(format!("taking the vCPU over: {error}")),
            })?;
        self.counters
            .add(Counter::PoolEventsReplayed, catchup.events);
        if catchup.restarted {
            self.counters.bump(Counter::PoolRestarts);
        }
        self.mmu.sync_pool(world);
        self.sync_debug(world)?;
        // After `active` names this process (the pool's kick protocol).
        self.update_chipset(world);
        Ok(())
    }

    /// SYSENTER in guest user code went through the host's SYSENTER path,
    /// which keeps neither EIP nor ESP. With IA32_SYSENTER_CS set, SYSENTER
    /// needs neither; without, the guest must get #GP at an EIP we do not
    /// know, so the VM stops.
    fn user_sysenter(&mut self, world: &mut dyn WorldServices) -> Result<(), Failure> {
        if self.cpu.sysenter[0] & 0xfffc == 0 {
            return Err(StopReason::Unsupported(
                "SYSENTER in guest user code with IA32_SYSENTER_CS = 0 (the host does not report where it was)".into(),
            )
            .into());
        }
        // SYSENTER is two bytes (0f 34); any address works for the
        // emulation, which does not use EIP: emulate it in place.
        let sysenter = [0x0f, 0x34];
        let mut decoder = iced_x86::Decoder::new(32, &sysenter, iced_x86::DecoderOptions::NONE);
        let instr = decoder.decode();
        let mut terminate = false;
        let result = {
            let mut view = guest_view!(self, world, terminate);
            emu::execute(&mut self.cpu, &mut view, &instr)
        };
        self.counters.bump(Counter::Emulated);
        self.after_emulation(world, result, terminate).map(|_| ())
    }

    /// Emulates the instruction at CS:EIP, with the single-step trap the
    /// guest's TF asks for after it.
    fn emulate(&mut self, world: &mut dyn WorldServices, after_fault: bool) -> Result<(), Failure> {
        let why = if after_fault {
            Why::AfterFault
        } else {
            Why::Planned
        };
        self.execute_at_eip(world, why, None).map(|_| ())
    }

    /// Executes the instruction at CS:EIP in the emulator; `known` is its
    /// planner class when the caller has it. Returns the instruction's
    /// length, or None only when interpreting (`Why::Interpreted`) an
    /// instruction the emulator does not handle: nothing changed, it runs
    /// natively instead.
    fn execute_at_eip(
        &mut self,
        world: &mut dyn WorldServices,
        why: Why,
        known: Option<PoiKind>,
    ) -> Result<Option<u32>, Failure> {
        let fetched = self.fetch_at_eip(world);
        self.execute_fetched(world, why, fetched, known)
    }

    /// Fetches and decodes the instruction at CS:EIP as the CPU would
    /// (through the guest's tables, setting their Accessed bits), or the
    /// fault the fetch raises.
    fn fetch_at_eip(&mut self, world: &mut dyn WorldServices) -> Result<Instruction, Stop> {
        let mut terminate = false;
        let misses = self.decode_cache.stats().1;
        let mut view = guest_view!(self, world, terminate);
        let fetched = emu::fetch_with(&self.cpu, &mut view, &mut self.decode_cache);
        // Each world process has its own cache; the counters go with the
        // vCPU.
        self.counters.add(
            Counter::InstructionsDecoded,
            self.decode_cache.stats().1 - misses,
        );
        fetched
    }

    /// [`Monitor::execute_at_eip`] for an instruction already fetched at
    /// CS:EIP by [`Monitor::fetch_at_eip`] (or its fetch's fault).
    fn execute_fetched(
        &mut self,
        world: &mut dyn WorldServices,
        why: Why,
        fetched: Result<Instruction, Stop>,
        known: Option<PoiKind>,
    ) -> Result<Option<u32>, Failure> {
        if self.trace {
            let what = match &fetched {
                Ok(instr) => format!("{instr}"),
                Err(stop) => format!("fetch: {stop:?}"),
            };
            world.trace(&format!(
                "  emulate at {:#x} ({why:?}): {what} (cpl {}, esp {:#x})",
                self.cpu.eip,
                self.cpu.cpl,
                self.cpu.gpr[Gpr::Esp as usize]
            ));
        }
        self.counters.bump(Counter::Emulated);
        self.counters.bump(match why {
            Why::AfterFault => Counter::EmulatedAfterFault,
            Why::Planned => Counter::EmulatedPlanned,
            Why::Interpreted => Counter::Interpreted,
        });
        let single_step = self.cpu.eflags & Eflags::TF != 0 && !self.stepping;
        let classify = self.planner.config().classify;
        let mut terminate = false;
        let mut class = PoiKind::Plain;
        let mut length = 0;
        let (result, stack_switch) = match fetched {
            Ok(instr) => {
                class = known.unwrap_or_else(|| cfg_planner::classify(&instr, &classify));
                #[allow(clippy::cast_possible_truncation)] // at most 15
                {
                    length = instr.len() as u32;
                }
                // MOV SS and POP SS hold a single-step trap back by one
                // instruction.
                let stack_switch = matches!(instr.mnemonic(), Mnemonic::Mov | Mnemonic::Pop)
                    && instr.op0_kind() == OpKind::Register
                    && instr.op0_register() == Register::SS;
                let mut view = guest_view!(self, world, terminate);
                (emu::execute(&mut self.cpu, &mut view, &instr), stack_switch)
            }
            Err(stop) => (Err(stop), false),
        };
        if why == Why::Interpreted && matches!(result, Err(Stop::NotEmulated(_))) {
            return Ok(None);
        }
        // Count by the planner's class, whatever brought the instruction
        // here (a plan or a native fault).
        match class {
            PoiKind::Sensitive { kind, .. } => self.counters.bump_sensitive(kind),
            PoiKind::PointerBranch(kind) => self.counters.bump_pointer(kind),
            _ => {}
        }
        let outcome = self.after_emulation(world, result, terminate)?;
        if single_step && outcome == Outcome::Retired && !stack_switch {
            self.single_step_trap(world)?;
        }
        Ok(Some(length))
    }

    /// The #DB a set TF raises after an instruction (DR6.BS set).
    fn single_step_trap(&mut self, world: &mut dyn WorldServices) -> Result<(), Failure> {
        self.cpu.dr[6] |= DR6_BS;
        self.deliver(world, Exception::new(vector::DB))
    }

    fn after_emulation(
        &mut self,
        world: &mut dyn WorldServices,
        result: Result<Outcome, Stop>,
        terminate: bool,
    ) -> Result<Outcome, Failure> {
        if terminate {
            return Err(Failure::Terminated);
        }
        if let Some(error) = self.mmu.take_failure() {
            return Err(StopReason::Internal(format!(
                "shadow MMU, after the instruction at EIP {:#x}: {error}",
                self.cpu.eip
            ))
            .into());
        }
        match result {
            Ok(Outcome::Halted) => {
                self.halted = true;
                Ok(Outcome::Halted)
            }
            Ok(outcome) => Ok(outcome),
            Err(Stop::Exception(exception)) => {
                self.deliver(world, exception)?;
                Ok(Outcome::Retired)
            }
            Err(Stop::TripleFault) => Err(StopReason::TripleFault.into()),
            Err(Stop::Unsupported(what)) => Err(StopReason::Unsupported(what.into()).into()),
            Err(Stop::NotEmulated(mnemonic)) => Err(StopReason::Unsupported(format!(
                "emulating {mnemonic:?} at EIP {:#x}",
                self.cpu.eip
            ))
            .into()),
            Err(Stop::Machine(what)) => Err(StopReason::Internal(what).into()),
        }
    }

    /// The guest halted with nothing pending. With interrupts enabled the
    /// world sleeps until its timer or the host kicks it, and the caller
    /// looks again; with interrupts disabled nothing but a reset could
    /// wake it, and the host ends the VM.
    fn wait_halted(&mut self, world: &mut dyn WorldServices) -> Result<(), Failure> {
        self.counters.bump(Counter::Halts);
        if self.cpu.interrupts_enabled() {
            self.publish_deadline(world)?;
            let slept = world.now_ns();
            world.wait_for_kick();
            self.counters
                .add(Counter::HaltNs, world.now_ns().saturating_sub(slept));
            // An idle guest's timer ticks end here, not in a kick trap:
            // the host's live figures come from here then.
            world.publish_counters(self.counters.as_slice());
            self.update_chipset(world);
            return Ok(());
        }
        self.counters.bump(Counter::Exits);
        world.publish_counters(self.counters.as_slice());
        let _ = world.exit(Exit::Halt {
            interrupts_enabled: false,
        });
        Err(Failure::Terminated)
    }

    /// Brings the chipset to now: timer edges, and the host devices' lines.
    fn update_chipset(&mut self, world: &mut dyn WorldServices) {
        let now_ns = world.now_ns();
        self.update_chipset_at(world, now_ns);
    }

    /// [`Monitor::update_chipset`] with the clock read already.
    fn update_chipset_at(&mut self, world: &mut dyn WorldServices, now_ns: u64) {
        self.chipset.advance(now_ns);
        let pulses = world.take_irq_pulses();
        self.chipset.set_host_levels(world.irq_levels(), pulses);
    }

    /// Arms the world's timer for the chipset's next event, if that
    /// changed. With the virtual IF clear the timer is left as it is: the
    /// guest cannot take an interrupt until an instruction sets IF, and
    /// every such instruction (STI, POPF, IRET) comes to the monitor, which
    /// publishes again then. A deadline armed before may still fire
    /// meanwhile: one kick the monitor answers by looking and resuming,
    /// cheaper than disarming and arming the host timer (two system calls)
    /// on every guest kernel entry and exit.
    fn publish_deadline(&mut self, world: &mut dyn WorldServices) -> Result<(), Failure> {
        if !self.cpu.interrupts_enabled() {
            return Ok(());
        }
        let deadline = self.chipset.next_event(world.now_ns());
        if deadline != self.published_deadline {
            world
                .set_timer_deadline(deadline)
                .map_err(StopReason::from)?;
            self.published_deadline = deadline;
        }
        Ok(())
    }

    /// Delivers a pending external interrupt if the guest can take it now
    /// (IF set, no interrupt shadow). Returns whether control moved (an
    /// interrupt was delivered, or the instruction in the shadow ran).
    fn try_inject(&mut self, world: &mut dyn WorldServices) -> Result<bool, Failure> {
        if !self.cpu.interrupts_enabled() || !self.chipset.interrupt_pending() {
            return Ok(false);
        }
        if self.cpu.interrupt_shadow {
            // STI (or MOV SS) lets one more instruction run first.
            self.emulate(world, false)?;
            return Ok(true);
        }
        let vector = self.chipset.acknowledge();
        self.inject(world, vector)?;
        Ok(true)
    }

    /// Delivers an acknowledged external interrupt.
    fn inject(&mut self, world: &mut dyn WorldServices, vector: u8) -> Result<(), Failure> {
        if self.trace {
            world.trace(&format!(
                "  inject vector {vector:#x} at {:#x}",
                self.cpu.eip
            ));
        }
        self.counters.bump(Counter::InterruptsInjected);
        self.interpret_after = true;
        self.halted = false;
        let mut terminate = false;
        let result = {
            let mut view = guest_view!(self, world, terminate);
            btvmm_core::emu::interrupt::deliver_external(&mut self.cpu, &mut view, vector)
        };
        if terminate {
            return Err(Failure::Terminated);
        }
        match result {
            Ok(()) => Ok(()),
            Err(Stop::TripleFault) => Err(StopReason::TripleFault.into()),
            Err(Stop::Unsupported(what)) => Err(StopReason::Unsupported(what.into()).into()),
            Err(other) => Err(StopReason::Internal(format!(
                "delivering interrupt {vector:#x}: {other}"
            ))
            .into()),
        }
    }

    fn deliver(
        &mut self,
        world: &mut dyn WorldServices,
        exception: Exception,
    ) -> Result<(), Failure> {
        self.counters.bump(Counter::ExceptionsDelivered);
        self.interpret_after = true;
        let mut terminate = false;
        let result = {
            let mut view = guest_view!(self, world, terminate);
            deliver_exception(&mut self.cpu, &mut view, exception)
        };
        if terminate {
            return Err(Failure::Terminated);
        }
        match result {
            Ok(()) => Ok(()),
            Err(Stop::TripleFault) => Err(StopReason::TripleFault.into()),
            Err(Stop::Unsupported(what)) => Err(StopReason::Unsupported(what.into()).into()),
            Err(other) => {
                Err(StopReason::Internal(format!("delivering {exception:?}: {other}")).into())
            }
        }
    }

    /// Step 3: in guest kernel mode, emulate and plan until the guest can
    /// run natively under a safe breakpoint plan.
    fn run_kernel(&mut self, world: &mut dyn WorldServices) -> Result<(), Failure> {
        // In the split view: instructions interpreted since the last one
        // the monitor had to emulate (none yet: no interpreting until one).
        let mut interpreted = self.first_streak();
        let mut steps = 0;
        loop {
            steps += 1;
            if steps >= EMULATION_BUDGET {
                // A long run of instructions that all need the monitor: a
                // legal guest may do that. Let time pass for its timer.
                self.update_chipset(world);
                steps = 0;
                if !self.split {
                    interpreted = 0;
                }
            }
            if let Some(target) = self.mmu.take_pending_switch() {
                self.switch_address_space(world, target)?;
                continue;
            }
            if self.debug.is_some() {
                match self.debug_check(world)? {
                    debug::Flow::Go => {}
                    debug::Flow::Again => continue,
                    debug::Flow::Return => return Ok(()),
                }
            }
            if world.pause_requested() {
                self.stop_for_host(world, btvmm_core::PauseCause::Requested)?;
                continue;
            }
            if !self.debug_holds_interrupts() && self.try_inject(world)? {
                continue;
            }
            if self.halted {
                self.wait_halted(world)?;
                // An idle guest may go from interrupt to HLT for ever
                // without leaving the monitor: each wake-up is a new start.
                steps = 0;
                interpreted = self.first_streak();
                continue;
            }
            if self.cpu.cpl != 0 {
                // Guest user mode is not traced (DESIGN.md section 3).
                self.counters.bump(Counter::UserResumes);
                return Ok(());
            }
            let classify = cfg_planner::ClassifyConfig {
                cpuid_faults: self.cpuid_faults,
                virtualize_timestamp: false,
                guest_cr0: self.cpu.cr0 & (Cr0::TS | Cr0::EM | Cr0::MP),
                guest_cr4: self.cpu.cr4 & btvmm_core::emu::fpu::CR4_OSFXSR,
            };
            if classify != self.planner.config().classify {
                // What is sensitive changed (FPU instructions with CR0.TS,
                // say): the aliases, shared by the pool, hold the old
                // judgement.
                if let Some(aliases) = world.code_aliases() {
                    aliases.reset_all();
                }
                self.runs.forget();
                self.planner.set_classify(classify);
            }
            // Short stretches between sensitive instructions are cheaper to
            // interpret than to run natively up to the next breakpoint trap.
            if !self.split && self.exec == btvmm_core::ExecMode::Interpret {
                // Everything the emulator handles; the planner's step for
                // the rest.
                if self
                    .execute_at_eip(world, Why::Interpreted, None)?
                    .is_some()
                {
                    continue;
                }
            } else if !self.split
                && self.exec == btvmm_core::ExecMode::Auto
                && interpreted < INTERPRET_BUDGET
                && let Some(block) = self.short_run_ahead(world)?
            {
                if self.interpret_run(world, &block, &mut interpreted)? {
                    continue;
                }
                interpreted = INTERPRET_BUDGET;
            }
            if self.split {
                if std::mem::take(&mut self.interpret_after)
                    && self.exec != btvmm_core::ExecMode::Native
                {
                    interpreted = 0;
                    self.split_limit =
                        self.runs
                            .entered(&self.policy, self.cpu.linear_eip(), &mut self.counters);
                }
                if self.split_fast(world, &mut interpreted, &mut steps)? {
                    continue;
                }
                match self.split_step(world, &mut interpreted)? {
                    SplitStep::Resume(window) => {
                        if self.trace {
                            world.trace(&format!(
                                "  resume in the split view at {:#x}",
                                self.cpu.eip
                            ));
                        }
                        self.resumed_window = Some(window);
                        self.counters.bump(Counter::SplitResumes);
                        return Ok(());
                    }
                    SplitStep::Continue => continue,
                    SplitStep::Hardware => self.counters.bump(Counter::SplitFallbacks),
                }
            }
            let memory = PlannerMemory::new(&*world, &self.mmu);
            let step = self.planner.step(&self.cpu, &memory);
            let pages = memory.into_pages();
            self.track_decoded(world, pages)?;
            match step {
                Step::Resume { breakpoints } => {
                    if self.trace {
                        world.trace(&format!(
                            "  resume at {:#x} arming {breakpoints:x?}",
                            self.cpu.eip
                        ));
                    }
                    world
                        .arm_breakpoints(&breakpoints)
                        .map_err(StopReason::from)?;
                    self.breakpoints_armed = !breakpoints.is_empty();
                    self.counters.bump(Counter::PlannedResumes);
                    self.counters
                        .add(Counter::BreakpointsArmed, breakpoints.len() as u64);
                    return Ok(());
                }
                Step::Emulate(_) => self.emulate(world, false)?,
                Step::Interpret => self.emulate(world, false)?,
                Step::Unrecognized(_) => self.deliver(world, Exception::ud())?,
                Step::SingleStep => {
                    self.stepping = true;
                    self.cpu.eflags |= Eflags::TF;
                    return Ok(());
                }
                // The code at EIP, or the stack a return pops, is not
                // mapped: the emulator's own fetch or read gives the
                // guest its #PF (or, outside RAM, open-bus bytes).
                // The planner may have seen the page unmapped before the
                // guest mapped it (no INVLPG is needed for that): forget.
                Step::Fault(_) => {
                    self.planner
                        .invalidate_virt_page(GuestVirt(self.cpu.linear_eip()));
                    self.emulate(world, false)?;
                }
            }
        }
    }

    /// The block at EIP if its straight-line code runs into its next point
    /// of interest within [`policy::Policy::hw_interpret_run`] instructions (so not a long
    /// stretch worth running natively, such as a loop body or a copy).
    fn short_run_ahead(
        &mut self,
        world: &mut dyn WorldServices,
    ) -> Result<Option<Arc<Block>>, Failure> {
        if self.cpu.eflags & Eflags::TF != 0 || !self.cpu.code_32bit() {
            return Ok(None);
        }
        let at = GuestVirt(self.cpu.linear_eip());
        let memory = PlannerMemory::new(&*world, &self.mmu);
        let block = self.planner.block(&memory, at);
        // A block that ends in a backward branch closes a loop. A loop
        // whose head is a sensitive instruction or a pointer branch (a
        // port polling loop, say) traps on every round anyway: cheaper
        // interpreted. Any other loop may spin for long and natively
        // costs nothing per round; interpreting it would only repeat it
        // slowly until the budget ran out.
        let loop_head = match &block.end {
            BlockEnd::Poi(poi) => match poi.kind {
                PoiKind::CondBranch { taken: target } | PoiKind::DirectBranch { target, .. }
                    if target.0 <= poi.at.0 =>
                {
                    Some(target)
                }
                _ => None,
            },
            _ => None,
        };
        let loops = loop_head.is_some_and(|head| {
            let head = self.planner.block(&memory, head);
            !matches!(
                &head.end,
                BlockEnd::Poi(poi) if matches!(
                    poi.kind,
                    PoiKind::Sensitive { .. } | PoiKind::PointerBranch(_)
                )
            )
        });
        let pages = memory.into_pages();
        self.track_decoded(world, pages)?;
        Ok((block.instructions <= self.policy.hw_interpret_run && !loops).then_some(block))
    }

    /// Records the translations the planner just decoded code through
    /// (guest-virtual page numbers) and write-protects the code and the
    /// tables: a write to them, native or emulated, drops what was decoded
    /// before the guest can run it.
    fn track_decoded(
        &mut self,
        world: &mut dyn WorldServices,
        pages: Vec<u32>,
    ) -> Result<(), Failure> {
        for page in pages {
            self.mmu
                .note_decoded(world, page * btvmm_core::PAGE_SIZE)
                .map_err(|error| match error {
                    shadow_mmu::ShadowError::Memory(_) => StopReason::Unsupported(format!(
                        "guest paging structures outside guest RAM ({error})"
                    )),
                    error => StopReason::Internal(format!("tracking decoded code: {error}")),
                })?;
        }
        Ok(())
    }

    /// Interprets the block at EIP, its ending point of interest included,
    /// while control follows it straight and nothing else needs the
    /// monitor's attention (an interrupt the guest can take, HLT, a change
    /// of privilege or code size, single-stepping). One block lookup per
    /// run, and the class of each instruction is known from the block.
    /// Returns false when the first instruction is not one the emulator
    /// handles: it runs natively instead.
    fn interpret_run(
        &mut self,
        world: &mut dyn WorldServices,
        block: &Block,
        interpreted: &mut u32,
    ) -> Result<bool, Failure> {
        let last = block.end.at();
        let mut at = block.start;
        let mut first = true;
        loop {
            let known = match &block.end {
                BlockEnd::Poi(poi) if at == last => poi.kind,
                _ if at == last => return Ok(!first),
                _ => PoiKind::Plain,
            };
            let Some(length) = self.execute_at_eip(world, Why::Interpreted, Some(known))? else {
                return Ok(!first);
            };
            first = false;
            *interpreted += 1;
            let next = at.0.wrapping_add(length);
            if at == last
                || self.cpu.linear_eip() != next
                || *interpreted >= INTERPRET_BUDGET
                || self.halted
                || self.mmu.pending_switch().is_some()
                || self.cpu.cpl != 0
                || self.cpu.eflags & Eflags::TF != 0
                || !self.cpu.code_32bit()
                || (self.cpu.interrupts_enabled() && self.chipset.interrupt_pending())
                || self.debug.as_ref().is_some_and(debug::Debugger::watching)
            {
                return Ok(true);
            }
            at = GuestVirt(next);
        }
    }

    /// Step 4: registers out.
    fn leave(&mut self, world: &mut dyn WorldServices) -> Result<HostRegisters, Failure> {
        self.interpret_after = false;
        self.runs.close();
        // RDTSC faults while the guest's CR4.TSD asks for it, and while the
        // guest has moved its TSC with WRMSR: native RDTSC would not show
        // the offset.
        let tsd = self.cpu.cr4 & btvmm_core::emu::system::CR4_TSD != 0 || self.cpu.tsc_offset != 0;
        if tsd != self.timestamp_faulting {
            world
                .set_timestamp_faulting(tsd)
                .map_err(StopReason::from)?;
            self.timestamp_faulting = tsd;
        }
        if let Some(target) = self.mmu.take_pending_switch() {
            // run_kernel moves before it returns; should a switch still be
            // pending, move now and plan again in the new process.
            self.switch_address_space(world, target)?;
            self.run_kernel(world)?;
        }
        self.mmu
            .set_user_view(world, self.cpu.cpl == 3)
            .map_err(|error| StopReason::Internal(format!("shadow MMU user view: {error}")))?;
        self.mmu.sync_pool(world);
        self.counters.set(
            Counter::ShadowPages,
            self.mmu
                .shadow()
                .map_or(0, |shadow| shadow.mapped_pages() as u64),
        );
        if let Some(failure) = self.mmu.split.take_failure() {
            return Err(StopReason::Internal(format!("split view: {failure}")).into());
        }
        let window = self.resumed_window.filter(|_| self.cpu.cpl == 0);
        if window.is_some() && self.breakpoints_armed {
            world.arm_breakpoints(&[]).map_err(StopReason::from)?;
            self.breakpoints_armed = false;
        }
        if window.is_none() {
            self.resumed_window = None;
        }
        if self.cpu.cpl == 3 && self.debug.is_some() {
            self.arm_user_breakpoints(world)?;
        }
        self.counters.set(
            Counter::SplitAliasPages,
            self.mmu.split.mapped_pages() as u64,
        );
        self.counters
            .set(Counter::SplitWindowMoves, u64::from(self.mmu.split.moves()));
        let (writes, selectors) = self.shadows.sync_out(&self.cpu, world, window)?;
        self.resumed_selectors = selectors;
        self.counters.add(Counter::LdtWrites, writes as u64);
        // Last: a timer edge since the last look is due at once (the host
        // kicks right away), so none waits for a later trap.
        self.publish_deadline(world)?;
        // Resume with RF: a breakpoint on the resume address must not fire
        // before the instruction there runs (the plans assume it).
        let eflags = (self.cpu.eflags & NATIVE_FLAGS) | Eflags::IF | Eflags::RF | 0x2;

        Ok(HostRegisters {
            gpr: self.cpu.gpr,
            eip: self.cpu.eip,
            rip_high: 0,
            eflags,
            selectors,
            fs_base: u64::from(self.cpu.segment(SegReg::Fs).cache.base),
            gs_base: u64::from(self.cpu.segment(SegReg::Gs).cache.base),
        })
    }
}

#[cfg(test)]
mod tests;
