//! [`Monitor::handle`]'s decisions on made-up traps, over a world that
//! keeps guest RAM in a vector and records what the monitor asked of it
//! (breakpoints armed, exits, mappings): the guest code is placed in RAM,
//! the monitor enters, and each test plays the host's part (the guest ran
//! natively to the breakpoint, it faulted, it left 32-bit code).

use btvmm_core::descriptor::Descriptor;
use btvmm_core::exit::{Exit, Reply, STRING_EXIT_BYTES, StopReason};
use btvmm_core::{
    Action, CodeAliases, Eflags, GuestPhys, GuestVirt, HostRegisters, MemFault, PhysMemory,
    ServiceError, Trap, WorldServices,
};
use btvmm_core::{DebugCommand, DebugPoints, PauseCause};
use rustc_hash::FxHashMap;

use crate::{Boot, Monitor};

/// Guest RAM of the tests.
const RAM: usize = 1 << 20;
/// Where the test code goes (paging off: also its linear address).
const CODE: u32 = 0x1000;
/// The boot stack.
const STACK: u32 = 0x8000;

/// A world of guest RAM and records.
#[derive(Default)]
struct FakeWorld {
    ram: Vec<u8>,
    /// Every `arm_breakpoints` call, in order.
    armed: Vec<Vec<GuestVirt>>,
    /// Every exit to the host, in order.
    exits: Vec<Exit>,
    /// Shadow mappings made (calls).
    mappings: usize,
    now: u64,
    /// The split code view's alias pages, when the test turns it on.
    aliases: Option<FakeAliases>,
    /// The host asks for a pause (its menu); the pause exit's reply takes
    /// it back, as the user's resume does.
    pause: bool,
    /// A debugger's answers to the debug exits, in order, each with the
    /// points it sets first (Continue when they run out).
    debugger: std::collections::VecDeque<(Reply, Option<DebugPoints>)>,
    /// The debugger's points.
    points: DebugPoints,
    /// The data of each debug result.
    results: Vec<Vec<u8>>,
}

/// Alias pages by guest-physical page frame (INT3 until written), and the
/// linear page each was last mapped at.
#[derive(Default)]
struct FakeAliases {
    pages: FxHashMap<u32, Vec<u8>>,
    mapped: FxHashMap<u32, u32>,
}

impl CodeAliases for FakeAliases {
    fn reset(&mut self, guest_phys_page: u32) {
        self.pages.remove(&guest_phys_page);
    }

    fn reset_all(&mut self) {
        self.pages.clear();
    }

    fn write(&mut self, guest_phys_page: u32, offset: u32, bytes: &[u8]) -> bool {
        let page = self
            .pages
            .entry(guest_phys_page)
            .or_insert_with(|| vec![0xcc; 4096]);
        let start = offset as usize;
        match page.get_mut(start..start + bytes.len()) {
            Some(place) => {
                place.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }

    fn read(&self, guest_phys_page: u32, offset: u32, buf: &mut [u8]) -> bool {
        let start = offset as usize;
        if start + buf.len() > 4096 {
            return false;
        }
        match self.pages.get(&guest_phys_page) {
            Some(page) => buf.copy_from_slice(&page[start..start + buf.len()]),
            None => buf.fill(0xcc),
        }
        true
    }

    fn map(&mut self, linear: u32, guest_phys_page: u32) -> Result<(), ServiceError> {
        self.mapped.insert(linear, guest_phys_page);
        Ok(())
    }
}

impl FakeWorld {
    /// Where the vCPU stopped for the debugger, and why, in order.
    fn stops(&self) -> Vec<(u32, PauseCause)> {
        self.exits
            .iter()
            .filter_map(|exit| match exit {
                Exit::Paused(registers, cause) => Some((registers.eip, *cause)),
                _ => None,
            })
            .collect()
    }

    fn with_code(code: &[u8]) -> Self {
        let mut ram = vec![0; RAM];
        ram[CODE as usize..CODE as usize + code.len()].copy_from_slice(code);
        Self {
            ram,
            ..Self::default()
        }
    }

    fn range(&self, phys: u32, len: usize) -> Option<std::ops::Range<usize>> {
        let start = phys as usize;
        let end = start.checked_add(len)?;
        (end <= self.ram.len()).then_some(start..end)
    }
}

impl PhysMemory for FakeWorld {
    fn read_phys(&self, guest_phys: GuestPhys, buf: &mut [u8]) -> Result<(), MemFault> {
        let range = self
            .range(guest_phys.0, buf.len())
            .ok_or(MemFault::OutsideRam { guest_phys })?;
        buf.copy_from_slice(&self.ram[range]);
        Ok(())
    }

    fn write_phys(&mut self, guest_phys: GuestPhys, data: &[u8]) -> Result<(), MemFault> {
        let range = self
            .range(guest_phys.0, data.len())
            .ok_or(MemFault::OutsideRam { guest_phys })?;
        self.ram[range].copy_from_slice(data);
        Ok(())
    }

    fn ram_size(&self) -> u32 {
        u32::try_from(self.ram.len()).unwrap_or(u32::MAX)
    }
}

impl WorldServices for FakeWorld {
    fn map_guest(&mut self, _: u32, _: u32, _: u32, _: bool) -> Result<(), ServiceError> {
        self.mappings += 1;
        Ok(())
    }

    fn protect_guest(&mut self, _: u32, _: u32, _: bool) -> Result<(), ServiceError> {
        Ok(())
    }

    fn unmap_guest(&mut self, _: u32, _: u32) -> Result<(), ServiceError> {
        Ok(())
    }

    fn write_ldt(&mut self, _: u16, _: Option<&Descriptor>) -> Result<(), ServiceError> {
        Ok(())
    }

    fn arm_breakpoints(&mut self, addresses: &[GuestVirt]) -> Result<(), ServiceError> {
        self.armed.push(addresses.to_vec());
        Ok(())
    }

    fn breakpoint_count(&self) -> usize {
        4
    }

    fn exit(&mut self, exit: Exit) -> Reply {
        let reply = match exit {
            Exit::PortIn { .. } => Reply::Value(u32::MAX),
            Exit::PortOut { .. } | Exit::PortInString { .. } | Exit::PortOutString { .. } => {
                Reply::Continue
            }
            Exit::Paused(..) | Exit::DebugResult { .. } => {
                self.pause = false;
                Reply::Continue
            }
            // The host ends the VM at these.
            Exit::Halt { .. } | Exit::Stop(_) => Reply::Terminate,
        };
        self.exits.push(exit);
        reply
    }

    fn irq_levels(&self) -> u16 {
        0
    }

    fn pause_requested(&self) -> bool {
        self.pause
    }

    fn debug_exit(&mut self, exit: Exit, data: &mut [u8; STRING_EXIT_BYTES]) -> Reply {
        if let Exit::DebugResult { len, .. } = exit {
            self.results.push(data[..usize::from(len)].to_vec());
        }
        self.pause = false;
        self.exits.push(exit);
        let Some((reply, points)) = self.debugger.pop_front() else {
            return Reply::Continue;
        };
        if let Some(points) = points {
            self.points = points;
        }
        reply
    }

    fn debug_points(&self) -> DebugPoints {
        self.points.clone()
    }

    fn now_ns(&self) -> u64 {
        self.now
    }

    fn set_timer_deadline(&mut self, _: Option<u64>) -> Result<(), ServiceError> {
        Ok(())
    }

    fn wait_for_kick(&mut self) {
        self.now += 1_000_000;
    }

    fn publish_counters(&mut self, _: &[u64]) {}

    fn timestamp(&self) -> u64 {
        self.now
    }

    fn trace(&mut self, _: &str) {}

    fn set_timestamp_faulting(&mut self, _: bool) -> Result<(), ServiceError> {
        Ok(())
    }

    fn code_aliases(&mut self) -> Option<&mut dyn CodeAliases> {
        self.aliases
            .as_mut()
            .map(|aliases| aliases as &mut dyn CodeAliases)
    }
}

/// A monitor booting at [`CODE`] in flat 32-bit protected mode, paging
/// and interrupts off, with the hardware-breakpoint mechanism (no split
/// view: the fake world has no alias pages).
fn monitor() -> Monitor {
    let mut gpr = [0; 8];
    gpr[4] = STACK;
    let boot = Boot {
        eip: CODE,
        gpr,
        code_selector: 0x08,
        data_selector: 0x10,
        gdt: (0, 0),
        wall_clock_ns: 0,
        ram_bytes: RAM as u64,
        floppy_drive_type: 0,
    };
    let mut monitor = Monitor::new(boot, false).expect("a monitor");
    monitor.set_split(false);
    monitor
}

fn resumed(action: Action) -> HostRegisters {
    match action {
        Action::Resume(registers) => registers,
        Action::Terminate => panic!("the monitor ended the VM"),
    }
}

/// cli; 30 x nop; then `last`: CLI is emulated, the NOPs are too many to
/// interpret and run natively.
fn cli_then_nops_then(last: &[u8]) -> Vec<u8> {
    let mut code = vec![0xfa];
    code.extend([0x90; 30]);
    code.extend(last);
    code
}

#[test]
fn a_silent_sensitive_instruction_gets_a_breakpoint_and_is_emulated_there() {
    // PUSHF would run natively without a fault and push the host's flags:
    // the plan puts a breakpoint on it.
    let pushf = CODE + 31;
    let mut world = FakeWorld::with_code(&cli_then_nops_then(&[0x9c, 0xf4]));
    let mut monitor = monitor();
    let registers = resumed(monitor.handle(Trap::Enter, HostRegisters::default(), &mut world));
    assert_eq!(registers.eip, CODE + 1, "resumes after the emulated CLI");
    assert_eq!(
        monitor.cpu().eflags & Eflags::IF,
        0,
        "the virtual IF is clear"
    );
    assert_ne!(registers.eflags & Eflags::IF, 0, "the host's IF stays set");
    assert_eq!(world.armed.last(), Some(&vec![GuestVirt(pushf)]));
    assert!(world.mappings > 0, "guest RAM is mapped for native runs");
    // The guest ran natively to the breakpoint. PUSHF pushes the virtual
    // flags (IF clear); the HLT after it, with IF clear, can never wake:
    // the monitor tells the host, which ends the VM.
    let at_pushf = HostRegisters {
        eip: pushf,
        ..registers
    };
    assert_eq!(
        monitor.handle(Trap::Breakpoint, at_pushf, &mut world),
        Action::Terminate
    );
    let pushed = u32::from_le_bytes(
        world.ram[STACK as usize - 4..STACK as usize]
            .try_into()
            .expect("4 bytes"),
    );
    assert_eq!(pushed & (Eflags::IF | 0x2), 0x2, "pushed {pushed:#x}");
    assert_eq!(
        world.exits,
        [Exit::Halt {
            interrupts_enabled: false
        }]
    );
}

#[test]
fn a_pause_the_host_asks_for_shows_the_registers_between_instructions() {
    // The host asked for a pause before a kick: the monitor stops between
    // two guest instructions, shows the registers and goes on after the
    // reply.
    let mut world = FakeWorld::with_code(&cli_then_nops_then(&[0xf4]));
    let mut monitor = monitor();
    let registers = resumed(monitor.handle(Trap::Enter, HostRegisters::default(), &mut world));
    assert!(world.exits.is_empty());
    world.pause = true;
    let kicked = HostRegisters {
        eip: CODE + 5,
        gpr: [0x11, 0x22, 0x33, 0x44, STACK, 0x66, 0x77, 0x88],
        ..registers
    };
    let resumed_at = resumed(monitor.handle(Trap::Kick, kicked, &mut world));
    assert_eq!(resumed_at.eip, CODE + 5, "the guest goes on where it was");
    let [Exit::Paused(shown, PauseCause::Requested)] = world.exits.as_slice() else {
        panic!("exits {:?}", world.exits);
    };
    assert_eq!(shown.eip, CODE + 5);
    assert_eq!(shown.gpr, kicked.gpr);
    assert_eq!(shown.cpl, 0);
    assert_eq!(shown.selectors[1], 0x08, "the guest's CS");
    assert_eq!(shown.eflags & Eflags::IF, 0, "the guest's IF (CLI ran)");
    assert!(!shown.halted);
    assert_eq!(monitor.counters().get(crate::counters::Counter::Pauses), 1);
}

#[test]
fn a_debugger_breakpoint_stops_the_guest_before_it_without_touching_its_code() {
    // cli; 60 x nop; hlt. The debugger attaches (a pause), reads memory,
    // sets a breakpoint on the nop at CODE + 10 and continues; the
    // monitor stops there, the debugger steps one instruction, detaches.
    let mut code = vec![0xfa];
    code.extend([0x90; 60]);
    code.push(0xf4);
    let mut world = FakeWorld::with_code(&code);
    let mut monitor = monitor();
    let registers = resumed(monitor.handle(Trap::Enter, HostRegisters::default(), &mut world));
    let points = DebugPoints {
        generation: 1,
        breakpoints: vec![CODE + 10],
        watchpoints: Vec::new(),
    };
    let read = |at: u32| {
        Reply::Debug(DebugCommand::ReadMemory {
            guest_virt: at,
            len: 3,
        })
    };
    world.pause = true;
    world.debugger.extend([
        (read(CODE), None),
        (
            Reply::Debug(DebugCommand::Resume { step: false }),
            Some(points),
        ),
        (Reply::Debug(DebugCommand::Resume { step: true }), None),
        (
            Reply::Debug(DebugCommand::Resume { step: false }),
            Some(DebugPoints {
                generation: 2,
                ..DebugPoints::default()
            }),
        ),
    ]);
    let kicked = HostRegisters {
        eip: CODE + 5,
        ..registers
    };
    let resumed_at = resumed(monitor.handle(Trap::Kick, kicked, &mut world));
    let stops = world.stops();
    assert_eq!(
        stops,
        [
            (CODE + 5, PauseCause::Requested),
            (CODE + 10, PauseCause::Breakpoint),
            (CODE + 11, PauseCause::Step),
        ]
    );
    assert_eq!(world.results, [vec![0xfa, 0x90, 0x90]], "the code read");
    assert!(
        world.ram[CODE as usize + 1..CODE as usize + 31]
            .iter()
            .all(|&byte| byte == 0x90),
        "guest memory is untouched"
    );
    assert_eq!(resumed_at.eip, CODE + 11, "detached, the guest runs on");
    assert!(
        world
            .armed
            .last()
            .is_some_and(|armed| !armed.contains(&GuestVirt(CODE + 10))),
        "the breakpoint is gone: {:?}",
        world.armed
    );
    assert_eq!(
        monitor
            .counters()
            .get(crate::counters::Counter::DebugBreakpoints),
        1
    );
}

#[test]
fn a_debugger_write_watchpoint_stops_past_the_writing_instruction() {
    // cli; mov dword [0x6000], 7; 60 x nop; hlt (paging off, kernel mode): the
    // emulator executes the store for the debugger's step-free continue
    // only when the monitor interprets it; natively the identity page is
    // write-protected and the write faults into the emulator. Either way
    // the monitor stops after it with the watchpoint's address.
    let mut code = vec![
        0xfa, 0xc7, 0x05, 0x00, 0x60, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00,
    ];
    code.extend([0x90; 60]);
    code.push(0xf4);
    let mut world = FakeWorld::with_code(&code);
    let mut monitor = monitor();
    let registers = resumed(monitor.handle(Trap::Enter, HostRegisters::default(), &mut world));
    assert_eq!(registers.eip, CODE + 1);
    world.pause = true;
    world.debugger.extend([(
        Reply::Debug(DebugCommand::Resume { step: false }),
        Some(DebugPoints {
            generation: 1,
            breakpoints: Vec::new(),
            watchpoints: vec![btvmm_core::Watchpoint {
                guest_virt: 0x6000,
                len: 4,
            }],
        }),
    )]);
    let action = monitor.handle(Trap::Kick, registers, &mut world);
    let stops = world.stops();
    if let Action::Resume(native) = action {
        // Resumed natively onto the store: it faults on the protected page.
        assert_eq!(stops, [(CODE + 1, PauseCause::Requested)]);
        assert_eq!(native.eip, CODE + 1);
        let fault = Trap::Fault {
            vector: btvmm_core::exception::vector::PF,
            error_code: 2,
            address: Some(0x6000),
        };
        let _ = monitor.handle(fault, native, &mut world);
    }
    let stops = world.stops();
    assert_eq!(
        stops,
        [
            (CODE + 1, PauseCause::Requested),
            (CODE + 11, PauseCause::Watchpoint { guest_virt: 0x6000 }),
        ]
    );
    assert_eq!(world.ram[0x6000], 7);
}

#[test]
fn an_instruction_that_faults_natively_needs_no_breakpoint() {
    // HLT raises #GP in the deprivileged guest kernel by itself.
    let hlt = CODE + 31;
    let mut world = FakeWorld::with_code(&cli_then_nops_then(&[0xf4]));
    let mut monitor = monitor();
    let registers = resumed(monitor.handle(Trap::Enter, HostRegisters::default(), &mut world));
    assert_eq!(world.armed.last(), Some(&vec![]));
    let at_hlt = HostRegisters {
        eip: hlt,
        ..registers
    };
    let fault = Trap::Fault {
        vector: 13,
        error_code: 0,
        address: None,
    };
    assert_eq!(monitor.handle(fault, at_hlt, &mut world), Action::Terminate);
    assert_eq!(
        world.exits,
        [Exit::Halt {
            interrupts_enabled: false
        }]
    );
}

#[test]
fn a_short_stretch_between_sensitive_instructions_is_interpreted() {
    // cli; mov eax, 7; inc eax; hlt: all four in the monitor, no native
    // run and no breakpoint.
    let code = [0xfa, 0xb8, 7, 0, 0, 0, 0x40, 0xf4];
    let mut world = FakeWorld::with_code(&code);
    let mut monitor = monitor();
    assert_eq!(
        monitor.handle(Trap::Enter, HostRegisters::default(), &mut world),
        Action::Terminate
    );
    assert_eq!(monitor.cpu().gpr[0], 8);
    assert!(world.armed.iter().all(Vec::is_empty), "{:?}", world.armed);
    assert_eq!(
        world.exits,
        [Exit::Halt {
            interrupts_enabled: false
        }]
    );
}

#[test]
fn an_exception_with_no_idt_to_take_it_is_a_triple_fault() {
    // ud2 with an IDT of zeros at 0: #UD, then #NP for the absent gate,
    // then #DF, then shutdown, as on a real CPU.
    let mut world = FakeWorld::with_code(&[0x0f, 0x0b]);
    let mut monitor = monitor();
    assert_eq!(
        monitor.handle(Trap::Enter, HostRegisters::default(), &mut world),
        Action::Terminate
    );
    assert_eq!(world.exits, [Exit::Stop(StopReason::TripleFault)]);
}

#[test]
fn guest_code_above_4_gib_is_an_escape_that_ends_the_vm() {
    let mut world = FakeWorld::with_code(&cli_then_nops_then(&[0xf4]));
    let mut monitor = monitor();
    let registers = resumed(monitor.handle(Trap::Enter, HostRegisters::default(), &mut world));
    let escaped = HostRegisters {
        rip_high: 1,
        ..registers
    };
    assert_eq!(
        monitor.handle(Trap::Kick, escaped, &mut world),
        Action::Terminate
    );
    assert!(
        matches!(
            world.exits.last(),
            Some(Exit::Stop(StopReason::GuestEscape(_)))
        ),
        "{:?}",
        world.exits
    );
}

/// A world and monitor with the split code view on, its runs as long as
/// the tuned policy's fixed lengths (no per-site profiles).
fn split_view(code: &[u8]) -> (FakeWorld, Monitor) {
    let (world, mut monitor) = split_view_profiled(code);
    monitor.set_policy(crate::policy::Policy {
        explore: 0,
        ..crate::policy::Policy::TUNED
    });
    (world, monitor)
}

/// The same with the tuned policy's per-site profiles.
fn split_view_profiled(code: &[u8]) -> (FakeWorld, Monitor) {
    let mut world = FakeWorld::with_code(code);
    world.aliases = Some(FakeAliases::default());
    let mut monitor = monitor();
    monitor.set_split(true);
    (world, monitor)
}

#[test]
fn an_interpreted_run_goes_on_to_a_sensitive_instruction_a_few_instructions_ahead() {
    // cli; 6 x nop; pushf; hlt. After the emulated CLI the run's limit
    // ends interpreting within the NOPs, but PUSHF follows in the same
    // straight-line code: resuming natively would only trap there.
    // Everything stays in the monitor: no resume, no breakpoint.
    let mut code = vec![0xfa];
    code.extend([0x90; 6]);
    code.extend([0x9c, 0xf4]);
    let (mut world, mut monitor) = split_view(&code);
    assert_eq!(
        monitor.handle(Trap::Enter, HostRegisters::default(), &mut world),
        Action::Terminate
    );
    assert!(world.armed.iter().all(Vec::is_empty), "{:?}", world.armed);
    assert_eq!(monitor.cpu().gpr[4], STACK - 4, "PUSHF ran, in the monitor");
    assert!(monitor.counters.get(crate::counters::Counter::SplitRanOn) > 0);
    assert_eq!(
        world.exits,
        [Exit::Halt {
            interrupts_enabled: false
        }]
    );
}

#[test]
fn a_sensitive_instruction_far_ahead_is_left_to_a_native_run() {
    // The same with 30 NOPs: too far to interpret on; the guest resumes
    // natively in the split view (its alias window), PUSHF an INT3 there.
    let code = cli_then_nops_then(&[0x9c, 0xf4]);
    let (mut world, mut monitor) = split_view(&code);
    let registers = resumed(monitor.handle(Trap::Enter, HostRegisters::default(), &mut world));
    assert_eq!(monitor.cpu().gpr[4], STACK, "PUSHF did not run yet");
    assert_eq!(
        monitor.counters.get(crate::counters::Counter::SplitRanOn),
        0
    );
    let eip = registers.eip;
    assert!(
        eip > CODE && eip < CODE + 31,
        "resumes within the NOPs: {eip:#x}"
    );
    assert!(world.armed.iter().all(Vec::is_empty), "{:?}", world.armed);
    let alias = world.aliases.as_ref().expect("aliases");
    let mut bytes = [0; 2];
    assert!(alias.read(CODE / 4096, eip % 4096, &mut bytes[..1]));
    assert_eq!(bytes[0], 0x90, "the NOP at EIP is copied to its alias");
    let pushf = CODE + 31;
    assert!(alias.read(pushf / 4096, pushf % 4096, &mut bytes[..1]));
    assert_eq!(bytes[0], 0xcc, "PUSHF is an INT3 in its alias");
}

#[test]
fn a_new_site_explores_and_reaches_a_sensitive_instruction_beyond_the_fixed_run() {
    // cli; 20 x nop; pushf; hlt: past the fixed 4 after an emulated
    // instruction and the look-ahead's 8, within the first run's
    // exploration: interpreted to PUSHF, no resume.
    let mut code = vec![0xfa];
    code.extend([0x90; 20]);
    code.extend([0x9c, 0xf4]);
    let (mut world, mut monitor) = split_view_profiled(&code);
    assert_eq!(
        monitor.handle(Trap::Enter, HostRegisters::default(), &mut world),
        Action::Terminate
    );
    assert_eq!(monitor.cpu().gpr[4], STACK - 4, "PUSHF ran, in the monitor");
    let counter = |counter| monitor.counters.get(counter);
    assert!(counter(crate::counters::Counter::SplitExplored) >= 1);
    assert!(counter(crate::counters::Counter::SplitReached) >= 1);
    assert_eq!(counter(crate::counters::Counter::SplitRanOn), 0);
    assert_eq!(counter(crate::counters::Counter::SplitResumes), 0);
}

#[test]
fn an_exploring_run_that_finds_nothing_resumes_natively_and_counts_a_miss() {
    // cli; 40 x nop; pushf: beyond exploration and look-ahead.
    let mut code = vec![0xfa];
    code.extend([0x90; 40]);
    code.extend([0x9c, 0xf4]);
    let (mut world, mut monitor) = split_view_profiled(&code);
    let registers = resumed(monitor.handle(Trap::Enter, HostRegisters::default(), &mut world));
    let explore = crate::policy::Policy::TUNED.explore;
    assert_eq!(registers.eip, CODE + 1 + explore, "explored, then native");
    assert_eq!(monitor.cpu().gpr[4], STACK, "PUSHF did not run yet");
    assert_eq!(
        monitor.counters.get(crate::counters::Counter::SplitMissed),
        1
    );
}
