//! Fuzz targets for the instruction emulator and the descriptor decoding it
//! relies on.
//!
//! The emulator runs random instruction bytes (random, or an opcode of
//! every family with random prefixes, ModRM, displacements and immediates)
//! on random CPU states (privilege levels 0-3, 16- and 32-bit code, random
//! flags, registers, control registers and segment caches) against 1 MiB of
//! memory holding a GDT, an LDT, an IDT and a TSS that are mostly valid and
//! partly random, repeated through the linear address space up to
//! 0xf000_0000 (everything above faults). Exceptions and interrupts are
//! delivered through random IDTs on their own, and descriptors, gates, flag
//! merges and the pool's event words are decoded from random bits.
//!
//! Properties: nothing panics or hangs; every guest error is an error
//! value, and an exception is well formed (error code exactly for the
//! vectors that push one, CR2 exactly for #PF) and leaves the CPU as it
//! was; the machine's own failures come back as such and no other
//! `Stop::Machine` appears; a retired instruction leaves EFLAGS with its
//! fixed bits right, a CPL of at most 3 matching CS, and segment registers
//! it loaded present and of the right kind; a plain instruction moves EIP
//! by its length and changes only the registers, flags and memory
//! iced-x86's instruction information says it writes (the descriptor tables
//! and TSS aside: accessed and busy bits); delivery never ends in an
//! exception (a fault becomes a double, then a triple fault) and enters a
//! present code segment at a CPL matching it; the same input gives the same
//! result.
//!
//! A short run by default (CI); `PROPTEST_CASES=N` runs N cases per target.
//! Failures are not persisted (`failure_persistence: None`): a bug found
//! here gets a plain regression test next to its fix.

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess,
    Register, RflagsBits,
};
use proptest::prelude::*;
use proptest::sample::select;

use btvmm_core::descriptor::{
    Descriptor, Gate, TYPE_ACCESSED, TYPE_CODE, TYPE_EXPAND_DOWN_CONFORMING,
    TYPE_WRITABLE_READABLE, system,
};
use btvmm_core::emu::{self, Outcome, interrupt};
use btvmm_core::exception::vector;
use btvmm_core::{
    Access, AccessKind, Cpu, Eflags, Event, Exception, Gpr, Machine, PoolEvent, SegReg, Segment,
    Stop, TableRegister,
};

// The case count (PROPTEST_CASES) and the hang limit every fuzz target
// shares.
#[path = "../../../tests/support/fuzz.rs"]
mod fuzz;
use fuzz::{HANG, config, within};

// ---------------------------------------------------------------------
// The machine.

/// Memory: 1 MiB, repeated through the linear address space below
/// [`UNMAPPED`] (so that random addresses mostly reach it).
const MEMORY: u32 = 1 << 20;
/// Linear addresses from here on page-fault.
const UNMAPPED: u32 = 0xf000_0000;
/// The IDT (256 gates).
const IDT: u32 = 0;
/// The GDT.
const GDT: u32 = 0x800;
/// GDT entries generated.
const GDT_ENTRIES: u16 = 16;
/// The LDT.
const LDT: u32 = 0x1000;
/// LDT entries generated.
const LDT_ENTRIES: u32 = 4;
/// The 32-bit TSS, with an I/O permission bitmap.
const TSS: u32 = 0x2000;
/// The I/O permission bitmap's offset in the TSS.
const IO_BITMAP: u16 = 0x68;
/// Where code runs (linear), unless a random state says otherwise.
const CODE: u32 = 0x1_0000;

/// Selectors of the GDT template.
const KERNEL_CS: u16 = 0x08;
const KERNEL_DS: u16 = 0x10;
const USER_CS: u16 = 0x1b;
const USER_DS: u16 = 0x23;
const TSS_SELECTOR: u16 = 0x28;
const LDT_SELECTOR: u16 = 0x30;
const CODE16: u16 = 0x38;

#[derive(Clone, Debug, PartialEq, Eq)]
struct FlatMachine {
    memory: Vec<u8>,
    /// Values IN reads, in turn.
    port_input: Vec<u32>,
    reads: usize,
    /// (port, size, value) of every OUT, (port, size, 0) of every IN.
    port_log: Vec<(u16, u8, u32)>,
    events: Vec<Event>,
    /// Port I/O fails (a device error on the host side).
    ports_fail: bool,
}

impl FlatMachine {
    fn check(linear: u32, len: usize, access: Access) -> Result<(), Stop> {
        for offset in 0..len {
            let at = linear.wrapping_add(u32::try_from(offset).expect("short"));
            if at >= UNMAPPED {
                let code = u32::from(access.kind == AccessKind::Write) << 1
                    | u32::from(access.user) << 2
                    | u32::from(access.kind == AccessKind::Execute) << 4;
                return Err(Exception::page_fault(at, code).into());
            }
        }
        Ok(())
    }

    fn put(&mut self, at: u32, bytes: &[u8]) {
        for (offset, &byte) in (0u32..).zip(bytes) {
            self.memory[(at.wrapping_add(offset) % MEMORY) as usize] = byte;
        }
    }

    fn get(&self, at: u32, buf: &mut [u8]) {
        for (offset, byte) in (0u32..).zip(buf) {
            *byte = self.memory[(at.wrapping_add(offset) % MEMORY) as usize];
        }
    }
}

impl Machine for FlatMachine {
    fn read_linear(&mut self, linear: u32, buf: &mut [u8], access: Access) -> Result<(), Stop> {
        Self::check(linear, buf.len(), access)?;
        self.get(linear, buf);
        Ok(())
    }

    fn write_linear(&mut self, linear: u32, data: &[u8], access: Access) -> Result<(), Stop> {
        Self::check(linear, data.len(), access)?;
        self.put(linear, data);
        Ok(())
    }

    fn port_in(&mut self, port: u16, size: u8) -> Result<u32, Stop> {
        assert!(matches!(size, 1 | 2 | 4), "IN of {size} bytes");
        if self.ports_fail {
            return Err(Stop::Machine("the device failed".into()));
        }
        self.port_log.push((port, size, 0));
        let value = self
            .port_input
            .get(self.reads % self.port_input.len().max(1))
            .copied()
            .unwrap_or(u32::MAX);
        self.reads += 1;
        Ok(match size {
            1 => value & 0xff,
            2 => value & 0xffff,
            _ => value,
        })
    }

    fn port_out(&mut self, port: u16, size: u8, value: u32) -> Result<(), Stop> {
        assert!(matches!(size, 1 | 2 | 4), "OUT of {size} bytes");
        if self.ports_fail {
            return Err(Stop::Machine("the device failed".into()));
        }
        self.port_log.push((port, size, value));
        Ok(())
    }

    fn timestamp(&mut self) -> u64 {
        0x1234_5678_9abc
    }

    fn notify(&mut self, event: Event) {
        self.events.push(event);
    }
}

// ---------------------------------------------------------------------
// Descriptor tables.

fn descriptor(base: u32, limit: u32, kind: u8, dpl: u8, big: bool) -> u64 {
    let granular = limit > 0xf_ffff;
    Descriptor {
        base,
        limit,
        kind,
        code_or_data: true,
        dpl,
        present: true,
        available: false,
        big,
        granular,
    }
    .to_raw()
}

fn system_descriptor(base: u32, limit: u32, kind: u8) -> u64 {
    Descriptor {
        base,
        limit,
        kind,
        code_or_data: false,
        dpl: 0,
        present: true,
        available: false,
        big: false,
        granular: false,
    }
    .to_raw()
}

fn gate(selector: u16, offset: u32, kind: u8, dpl: u8) -> u64 {
    let low = u64::from(offset & 0xffff) | u64::from(selector) << 16;
    let high =
        u64::from(offset & 0xffff_0000) | u64::from(kind) << 8 | u64::from(dpl) << 13 | 1 << 15;
    low | high << 32
}

const CODE_READ: u8 = TYPE_CODE | TYPE_WRITABLE_READABLE | TYPE_ACCESSED;
const DATA_WRITE: u8 = TYPE_WRITABLE_READABLE | TYPE_ACCESSED;

/// The GDT as Linux-like kernels set it up, plus odd but valid entries.
fn gdt_template() -> [u64; GDT_ENTRIES as usize] {
    [
        0,
        descriptor(0, u32::MAX, CODE_READ, 0, true),
        descriptor(0, u32::MAX, DATA_WRITE, 0, true),
        descriptor(0, u32::MAX, CODE_READ, 3, true),
        descriptor(0, u32::MAX, DATA_WRITE, 3, true),
        system_descriptor(TSS, u32::from(IO_BITMAP) + 0x2000, system::TSS32_AVAILABLE),
        system_descriptor(LDT, 8 * LDT_ENTRIES - 1, system::LDT),
        descriptor(CODE, 0xffff, CODE_READ, 0, false),
        descriptor(CODE, 0xffff, DATA_WRITE, 0, false),
        gate(KERNEL_CS, CODE + 0x100, system::CALL_GATE32, 3),
        descriptor(0, 0xfff, DATA_WRITE | TYPE_EXPAND_DOWN_CONFORMING, 0, true),
        descriptor(
            0,
            u32::MAX,
            CODE_READ | TYPE_EXPAND_DOWN_CONFORMING,
            0,
            true,
        ),
        descriptor(0x8_0000, 0x7_ffff, DATA_WRITE, 1, true),
        descriptor(0, u32::MAX, TYPE_CODE, 0, true),
        descriptor(0, u32::MAX, TYPE_ACCESSED, 2, true),
        system_descriptor(TSS, u32::from(IO_BITMAP) + 0x2000, system::TSS32_BUSY),
    ]
}

/// An entry: the template's, the template's with a bit flipped, or random.
fn entry(template: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => Just(template),
        2 => (0u32..64).prop_map(move |bit| template ^ (1 << bit)),
        1 => any::<u64>(),
    ]
}

fn gdt() -> impl Strategy<Value = Vec<u64>> {
    gdt_template().into_iter().map(entry).collect::<Vec<_>>()
}

/// IDT gates: interrupt and trap gates into the kernel (some for user
/// mode), task gates, not-present and random ones.
fn idt_gate() -> impl Strategy<Value = u64> {
    let offset = prop_oneof![4 => CODE..CODE + 0x1000, 1 => any::<u32>()];
    let selector = prop_oneof![
        6 => Just(KERNEL_CS),
        1 => select(&[USER_CS, CODE16, 0x4b, 0x58, 0x68, 0x04, 0][..]),
        1 => any::<u16>(),
    ];
    prop_oneof![
        6 => (selector, offset, select(&[system::INTERRUPT_GATE32, system::TRAP_GATE32,
            system::INTERRUPT_GATE16, system::TRAP_GATE16][..]), 0u8..4)
            .prop_map(|(selector, offset, kind, dpl)| gate(selector, offset, kind, dpl)),
        1 => Just(gate(TSS_SELECTOR, 0, system::TASK_GATE, 0)),
        1 => Just(0u64),
        1 => any::<u64>(),
    ]
}

fn ldt() -> impl Strategy<Value = Vec<u64>> {
    (
        entry(descriptor(0, u32::MAX, CODE_READ, 3, true)),
        entry(descriptor(0x4_0000, 0xffff, DATA_WRITE, 3, true)),
        entry(descriptor(0, u32::MAX, DATA_WRITE, 0, false)),
        any::<u64>(),
    )
        .prop_map(|(a, b, c, d)| vec![a, b, c, d])
}

/// The machine: tables, a TSS (ring 0 stack, I/O bitmap) and random
/// bytes around them.
#[derive(Clone, Debug)]
struct World {
    gdt: Vec<u64>,
    ldt: Vec<u64>,
    idt: Vec<u64>,
    esp0: u32,
    ss0: u16,
    io_bitmap: Vec<u8>,
    port_input: Vec<u32>,
    ports_fail: bool,
    /// Random bytes at random places (stack contents, memory operands).
    scatter: Vec<(u32, Vec<u8>)>,
}

fn world() -> impl Strategy<Value = World> {
    (
        gdt(),
        ldt(),
        proptest::collection::vec(idt_gate(), 256),
        prop_oneof![4 => Just(0x9000u32), 1 => any::<u32>()],
        prop_oneof![4 => Just(KERNEL_DS), 1 => any::<u16>()],
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u32>(), 0..4),
        prop_oneof![9 => Just(false), 1 => Just(true)],
        proptest::collection::vec(
            (
                0x3000u32..MEMORY - 64,
                proptest::collection::vec(any::<u8>(), 1..64),
            ),
            0..8,
        ),
    )
        .prop_map(
            |(gdt, ldt, idt, esp0, ss0, io_bitmap, port_input, ports_fail, scatter)| World {
                gdt,
                ldt,
                idt,
                esp0,
                ss0,
                io_bitmap,
                port_input,
                ports_fail,
                scatter,
            },
        )
}

impl World {
    fn machine(&self) -> FlatMachine {
        let mut machine = FlatMachine {
            memory: vec![0; MEMORY as usize],
            port_input: self.port_input.clone(),
            reads: 0,
            port_log: Vec::new(),
            events: Vec::new(),
            ports_fail: self.ports_fail,
        };
        for (at, bytes) in &self.scatter {
            machine.put(*at, bytes);
        }
        for (base, table) in [(IDT, &self.idt), (GDT, &self.gdt), (LDT, &self.ldt)] {
            for (index, raw) in (0u32..).zip(table) {
                machine.put(base + 8 * index, &raw.to_le_bytes());
            }
        }
        machine.put(TSS + 4, &self.esp0.to_le_bytes());
        machine.put(TSS + 8, &u32::from(self.ss0).to_le_bytes());
        machine.put(TSS + 0x66, &IO_BITMAP.to_le_bytes());
        machine.put(TSS + u32::from(IO_BITMAP), &self.io_bitmap);
        machine
    }

    /// The descriptor cache a selector loads, as the GDT or LDT says.
    fn cache(&self, selector: u16) -> Descriptor {
        let table = if selector & 4 == 0 {
            &self.gdt
        } else {
            &self.ldt
        };
        table
            .get(usize::from(selector >> 3))
            .map_or_else(Descriptor::default, |&raw| Descriptor::from_raw(raw))
    }
}

// ---------------------------------------------------------------------
// CPU states.

/// Register values: addresses in memory, small numbers, edges, anything.
fn register() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => 0u32..MEMORY,
        2 => 0u32..0x100,
        1 => select(&[0xffffu32, 0x1_0000, 0x7fff_ffff, 0x8000_0000, 0xffff_fffc, u32::MAX][..]),
        2 => any::<u32>(),
    ]
}

/// The mode the CPU is in.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Ring 0, flat 32-bit (a kernel).
    Kernel,
    /// Ring 3, flat 32-bit (user space).
    User,
    /// Ring 0, 16-bit code and data (BIOS thunks).
    Code16,
    /// Random selectors with the caches their descriptors give, at a
    /// random CPL.
    Random,
}

#[derive(Clone, Debug)]
struct State {
    mode: Mode,
    gprs: [u32; 8],
    eip: u32,
    eflags: u32,
    cr0: u32,
    cr4: u32,
    gdt_limit: u16,
    idt_limit: u16,
    selectors: [u16; 6],
    cpl: u8,
    dr7: u32,
}

fn state() -> impl Strategy<Value = State> {
    (
        prop_oneof![
            6 => Just(Mode::Kernel),
            2 => Just(Mode::User),
            1 => Just(Mode::Code16),
            1 => Just(Mode::Random),
        ],
        proptest::array::uniform8(register()),
        prop_oneof![8 => Just(0u32), 1 => 0u32..0x1000, 1 => any::<u32>()],
        any::<u32>(),
        prop_oneof![
            6 => Just(0x8000_0011u32),
            1 => Just(0x11u32),
            1 => any::<u32>().prop_map(|cr0| cr0 | 1),
            1 => any::<u32>(),
        ],
        prop_oneof![3 => Just(0x200u32), 1 => any::<u32>()],
        prop_oneof![6 => Just(8 * GDT_ENTRIES - 1), 1 => any::<u16>()],
        prop_oneof![6 => Just(0x7ffu16), 1 => any::<u16>()],
        proptest::array::uniform6(prop_oneof![
            3 => select(&[KERNEL_CS, KERNEL_DS, USER_CS, USER_DS, CODE16, 0x40, 0x0f, 0x14, 0x50, 0x62, 0x73][..]),
            1 => any::<u16>(),
        ]),
        0u8..4,
        prop_oneof![4 => Just(0x400u32), 1 => any::<u32>()],
    )
        .prop_map(
            |(mode, gprs, eip, eflags, cr0, cr4, gdt_limit, idt_limit, selectors, cpl, dr7)| {
                State {
                    mode,
                    gprs,
                    eip,
                    eflags,
                    cr0,
                    cr4,
                    gdt_limit,
                    idt_limit,
                    selectors,
                    cpl,
                    dr7,
                }
            },
        )
}

/// EFLAGS bits a guest can hold (VM rarely: the emulator refuses it).
const FLAGS: u32 = 0x003f_7fd5;

impl State {
    fn cpu(&self, world: &World) -> Cpu {
        let mut cpu = Cpu {
            gpr: self.gprs,
            eip: self.eip,
            eflags: (self.eflags & FLAGS & !(Eflags::VM | Eflags::RF)) | 0x2,
            gdtr: TableRegister {
                base: GDT,
                limit: self.gdt_limit,
            },
            idtr: TableRegister {
                base: IDT,
                limit: self.idt_limit,
            },
            cr0: self.cr0,
            cr4: self.cr4,
            cr3: 0x5000,
            ..Cpu::default()
        };
        if self.eflags & 0x8000_0000 != 0 && self.eflags & 0x4000_0000 != 0 {
            cpu.eflags |= Eflags::VM;
        }
        cpu.dr[7] = self.dr7;
        cpu.tr = Segment {
            selector: TSS_SELECTOR,
            cache: world.cache(TSS_SELECTOR),
        };
        cpu.ldtr = Segment {
            selector: LDT_SELECTOR,
            cache: world.cache(LDT_SELECTOR),
        };
        let segment = |selector: u16| Segment {
            selector,
            cache: world.cache(selector),
        };
        match self.mode {
            Mode::Kernel => {
                cpu.segments = [
                    segment(KERNEL_DS),
                    segment(KERNEL_CS),
                    segment(KERNEL_DS),
                    segment(KERNEL_DS),
                    segment(KERNEL_DS),
                    segment(0),
                ];
                cpu.eip = cpu.eip.wrapping_add(CODE);
            }
            Mode::User => {
                cpu.cpl = 3;
                cpu.segments = [
                    segment(USER_DS),
                    segment(USER_CS),
                    segment(USER_DS),
                    segment(USER_DS),
                    segment(0),
                    segment(0),
                ];
                cpu.eip = cpu.eip.wrapping_add(CODE);
            }
            Mode::Code16 => {
                let data = segment(CODE16 + 8);
                cpu.segments = [data, segment(CODE16), data, data, data, data];
                cpu.eip &= 0xffff;
            }
            Mode::Random => {
                cpu.cpl = self.cpl;
                for (slot, &selector) in cpu.segments.iter_mut().zip(&self.selectors) {
                    *slot = segment(selector);
                }
                let cs = cpu.segment(SegReg::Cs).cache.base;
                cpu.eip = cpu.eip.wrapping_add(CODE.wrapping_sub(cs));
            }
        }
        cpu
    }
}

// ---------------------------------------------------------------------
// Instruction bytes.

/// Opcodes of every family the emulator handles (and some it does not),
/// each followed by random bytes (ModRM, SIB, displacement, immediate).
const OPCODES: &[&[u8]] = &[
    // ALU, shifts, bit operations, multiply and divide, BCD.
    &[0x00],
    &[0x01],
    &[0x03],
    &[0x05],
    &[0x29],
    &[0x31],
    &[0x39],
    &[0x80],
    &[0x81],
    &[0x83],
    &[0x84],
    &[0x85],
    &[0xc0],
    &[0xc1],
    &[0xd0],
    &[0xd1],
    &[0xd2],
    &[0xd3],
    &[0xf6],
    &[0xf7],
    &[0xfe],
    &[0xff],
    &[0x0f, 0xa3],
    &[0x0f, 0xab],
    &[0x0f, 0xb3],
    &[0x0f, 0xbb],
    &[0x0f, 0xba],
    &[0x0f, 0xa4],
    &[0x0f, 0xa5],
    &[0x0f, 0xac],
    &[0x0f, 0xad],
    &[0x0f, 0xaf],
    &[0x0f, 0xbc],
    &[0x0f, 0xbd],
    &[0x0f, 0xc0],
    &[0x0f, 0xc1],
    &[0x0f, 0xb0],
    &[0x0f, 0xb1],
    &[0x0f, 0xc7],
    &[0x27],
    &[0x2f],
    &[0x37],
    &[0x3f],
    &[0xd4],
    &[0xd5],
    &[0xd6],
    &[0x98],
    &[0x99],
    &[0x69],
    &[0x6b],
    &[0x0f, 0xc8],
    &[0x0f, 0x40],
    &[0x0f, 0x90],
    // Flags.
    &[0x9c],
    &[0x9d],
    &[0x9e],
    &[0x9f],
    &[0xf5],
    &[0xf8],
    &[0xf9],
    &[0xfa],
    &[0xfb],
    &[0xfc],
    &[0xfd],
    // Moves, exchanges, stack.
    &[0x88],
    &[0x89],
    &[0x8a],
    &[0x8b],
    &[0x8d],
    &[0x8f],
    &[0xa0],
    &[0xa1],
    &[0xa2],
    &[0xa3],
    &[0xb0],
    &[0xb8],
    &[0xc6],
    &[0xc7],
    &[0x86],
    &[0x87],
    &[0x91],
    &[0x50],
    &[0x58],
    &[0x60],
    &[0x61],
    &[0x68],
    &[0x6a],
    &[0xc8],
    &[0xc9],
    &[0x0f, 0xb6],
    &[0x0f, 0xb7],
    &[0x0f, 0xbe],
    &[0x0f, 0xbf],
    &[0xd7],
    &[0x62],
    // Strings.
    &[0xa4],
    &[0xa5],
    &[0xa6],
    &[0xa7],
    &[0xaa],
    &[0xab],
    &[0xac],
    &[0xad],
    &[0xae],
    &[0xaf],
    &[0xf3, 0xa4],
    &[0xf3, 0xa5],
    &[0xf3, 0xab],
    &[0xf3, 0xa6],
    &[0xf2, 0xae],
    &[0xf3, 0xad],
    // Near branches.
    &[0x70],
    &[0x74],
    &[0x7f],
    &[0xe0],
    &[0xe1],
    &[0xe2],
    &[0xe3],
    &[0xe8],
    &[0xe9],
    &[0xeb],
    &[0xc2],
    &[0xc3],
    &[0x0f, 0x84],
    // System.
    &[0x0f, 0x00],
    &[0x0f, 0x01],
    &[0x0f, 0x20],
    &[0x0f, 0x21],
    &[0x0f, 0x22],
    &[0x0f, 0x23],
    &[0x0f, 0x06],
    &[0x0f, 0x08],
    &[0x0f, 0x09],
    &[0x0f, 0x30],
    &[0x0f, 0x31],
    &[0x0f, 0x32],
    &[0x0f, 0x33],
    &[0x0f, 0xa2],
    &[0x0f, 0x34],
    &[0x0f, 0x35],
    &[0x0f, 0x05],
    &[0x0f, 0x07],
    &[0xf4],
    &[0x0f, 0x0b],
    &[0x0f, 0xae],
    &[0x0f, 0x18],
    &[0x0f, 0x1f],
    &[0x0f, 0x01, 0xf9],
    // Segments.
    &[0x8c],
    &[0x8e],
    &[0x06],
    &[0x07],
    &[0x0e],
    &[0x16],
    &[0x17],
    &[0x1e],
    &[0x1f],
    &[0x0f, 0xa0],
    &[0x0f, 0xa1],
    &[0x0f, 0xa8],
    &[0x0f, 0xa9],
    &[0xc4],
    &[0xc5],
    &[0x0f, 0xb2],
    &[0x0f, 0xb4],
    &[0x0f, 0xb5],
    &[0x0f, 0x02],
    &[0x0f, 0x03],
    &[0x63],
    // Interrupts and far transfers.
    &[0xcc],
    &[0xcd],
    &[0xce],
    &[0xcf],
    &[0xf1],
    &[0xca],
    &[0xcb],
    &[0x9a],
    &[0xea],
    &[0xff, 0x18],
    &[0xff, 0x28],
    &[0x66, 0xcf],
    // I/O.
    &[0xe4],
    &[0xe5],
    &[0xe6],
    &[0xe7],
    &[0xec],
    &[0xed],
    &[0xee],
    &[0xef],
    &[0x6c],
    &[0x6d],
    &[0x6e],
    &[0x6f],
    &[0xf3, 0x6c],
    &[0xf3, 0x6f],
    // FPU, MMX, SSE (mostly not emulated).
    &[0xd8],
    &[0xd9],
    &[0xdb],
    &[0xdd],
    &[0xdf],
    &[0x9b],
    &[0x0f, 0x6f],
    &[0x0f, 0x28],
    &[0x0f, 0x77],
    &[0x66, 0x0f, 0xef],
];

/// Prefixes: operand and address size, segment overrides, LOCK, REP.
const PREFIXES: &[u8] = &[
    0x66, 0x67, 0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65, 0xf0, 0xf2, 0xf3,
];

fn instruction() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 15),
        6 => (
            proptest::collection::vec(select(PREFIXES), 0..3),
            select(OPCODES),
            proptest::collection::vec(any::<u8>(), 15),
        )
            .prop_map(|(prefixes, opcode, tail)| {
                let mut bytes = prefixes;
                bytes.extend_from_slice(opcode);
                bytes.extend_from_slice(&tail);
                bytes.truncate(16);
                bytes
            }),
    ]
}

// ---------------------------------------------------------------------
// Checks.

/// An exception as the CPU raises it: an error code exactly for #DF, #TS,
/// #NP, #SS, #GP, #PF and #AC, CR2 exactly for #PF.
fn check_exception(exception: &Exception) {
    let pushes_code = matches!(
        exception.vector,
        vector::DF | vector::TS | vector::NP | vector::SS | vector::GP | vector::PF | vector::AC
    );
    assert!(exception.vector < 32, "{exception:?}");
    assert_eq!(
        exception.error_code.is_some(),
        pushes_code,
        "error code of {exception:?}"
    );
    assert_eq!(
        exception.cr2.is_some(),
        exception.vector == vector::PF,
        "CR2 of {exception:?}"
    );
    if let Some(code) = exception.error_code
        && exception.vector != vector::PF
    {
        assert!(code <= 0xffff, "a selector error code {code:#x}");
    }
}

/// EFLAGS with bit 1 set, bits 3, 5, 15 and 22-31 clear and RF clear.
fn check_eflags(eflags: u32) {
    assert_eq!(eflags & 0x2, 0x2, "EFLAGS bit 1 in {eflags:#x}");
    assert_eq!(
        eflags & (0x8 | 0x20 | 0x8000 | 0xffc0_0000),
        0,
        "reserved EFLAGS bits in {eflags:#x}"
    );
}

/// The code segment matches the CPL and is a present code segment.
fn check_code_segment(cpu: &Cpu) {
    let cs = cpu.segment(SegReg::Cs);
    assert!(cpu.cpl <= 3);
    assert_eq!(
        u8::try_from(cs.selector & 3).expect("two bits"),
        cpu.cpl,
        "CS {:#x} at CPL {}",
        cs.selector,
        cpu.cpl
    );
    assert!(
        cs.cache.is_code() && cs.cache.present,
        "CS cache {:?}",
        cs.cache
    );
}

fn writes(access: OpAccess) -> bool {
    matches!(
        access,
        OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
    )
}

/// EFLAGS bits iced-x86 follows, by its names.
const ICED_FLAGS: [(u32, u32); 9] = [
    (RflagsBits::CF, Eflags::CF),
    (RflagsBits::PF, Eflags::PF),
    (RflagsBits::AF, Eflags::AF),
    (RflagsBits::ZF, Eflags::ZF),
    (RflagsBits::SF, Eflags::SF),
    (RflagsBits::DF, Eflags::DF),
    (RflagsBits::IF, Eflags::IF),
    (RflagsBits::OF, Eflags::OF),
    (RflagsBits::AC, Eflags::AC),
];

/// What a plain instruction may change, as iced-x86's instruction info
/// says: general registers it writes, EFLAGS bits it modifies, memory it
/// writes (and the descriptor tables and TSS, for accessed and busy bits).
fn check_side_effects(
    instr: &Instruction,
    before: &Cpu,
    after: &Cpu,
    memory_before: &[u8],
    memory_after: &[u8],
) {
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(instr);
    let mnemonic = instr.mnemonic();
    let mut written = [false; 8];
    for used in info.used_registers() {
        if writes(used.access()) {
            let full = used.register().full_register32();
            if let Some(index) = Gpr::ALL
                .iter()
                .position(|&gpr| full == Register::EAX + gpr as u32)
            {
                written[index] = true;
            }
        }
    }
    for (index, gpr) in Gpr::ALL.iter().enumerate() {
        if !written[index] {
            assert_eq!(
                after.gpr[index], before.gpr[index],
                "{mnemonic:?} changed {gpr:?}, which it does not write"
            );
        }
    }
    let modified = instr.rflags_modified();
    for (iced, bit) in ICED_FLAGS {
        if modified & iced == 0 {
            assert_eq!(
                after.eflags & bit,
                before.eflags & bit,
                "{mnemonic:?} changed EFLAGS {bit:#x}, which it does not modify"
            );
        }
    }
    let value = |register: Register, _: usize, _: usize| -> Option<u64> {
        Some(u64::from(match emu::segreg(register) {
            Some(seg) => before.segment(seg).cache.base,
            None => emu::read_register(before, register),
        }))
    };
    let targets: Vec<(u32, u32)> = info
        .used_memory()
        .iter()
        .filter(|used| writes(used.access()))
        .filter_map(|used| {
            let at = used.virtual_address(0, value)?;
            let size = u32::try_from(used.memory_size().size()).ok()?;
            #[allow(clippy::cast_possible_truncation)] // linear addresses wrap at 4 GiB
            Some((at as u32, size))
        })
        .collect();
    // BT* with a register bit offset address the bit string beyond the
    // operand iced-x86 names (SDM "bit base, bit offset").
    if matches!(mnemonic, Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc)
        && instr.op1_kind() == iced_x86::OpKind::Register
    {
        return;
    }
    // iced-x86 takes the stack's address size from the code's; the CPU
    // from SS.B, which random states set apart.
    if instr.is_stack_instruction()
        && before.segment(SegReg::Ss).cache.big != before.segment(SegReg::Cs).cache.big
    {
        return;
    }
    let tables = [
        (GDT, 8 * u32::from(GDT_ENTRIES)),
        (LDT, 8 * LDT_ENTRIES),
        (TSS, 0x68),
    ];
    for (at, (&was, &now)) in (0u32..).zip(memory_before.iter().zip(memory_after)) {
        if was == now {
            continue;
        }
        let allowed = targets.iter().any(|&(start, size)| {
            (0..size).any(|offset| start.wrapping_add(offset) % MEMORY == at)
        }) || tables
            .iter()
            .any(|&(start, size)| (start..start + size).contains(&at));
        assert!(
            allowed,
            "{mnemonic:?} wrote {at:#x}, outside what it writes: {:?}",
            info.used_memory()
        );
    }
}

/// Steps once from `cpu` and checks the result; returns it.
fn step_and_check(cpu: &mut Cpu, machine: &mut FlatMachine, bitness: u32) -> Result<Outcome, Stop> {
    let before = cpu.clone();
    let memory_before = machine.memory.clone();
    // What the instruction at EIP is, to the decoder.
    let at = cpu.linear_eip();
    let decoded = (at < UNMAPPED).then(|| {
        let mut bytes = [0u8; 16];
        let readable = usize::try_from(UNMAPPED - at).map_or(16, |left| left.min(16));
        machine.get(at, &mut bytes[..readable]);
        Decoder::with_ip(
            bitness,
            &bytes[..readable],
            u64::from(cpu.eip),
            DecoderOptions::NONE,
        )
        .decode()
    });
    let result = emu::step(cpu, machine);
    match &result {
        Err(Stop::Exception(exception)) => {
            check_exception(exception);
            assert_eq!(*cpu, before, "a fault changed the CPU");
        }
        Err(Stop::Machine(message)) => {
            assert!(
                machine.ports_fail,
                "a machine error nobody raised: {message}"
            );
            assert_eq!(*cpu, before, "a failed instruction changed the CPU");
        }
        Err(Stop::Unsupported(_) | Stop::NotEmulated(_) | Stop::TripleFault) => {
            assert_eq!(*cpu, before, "a failed instruction changed the CPU");
        }
        Ok(outcome) => {
            check_eflags(cpu.eflags);
            assert!(cpu.cpl <= 3);
            let instr = decoded.expect("the instruction was fetched from memory");
            let mnemonic = instr.mnemonic();
            match outcome {
                Outcome::Delivered => assert!(
                    matches!(
                        mnemonic,
                        Mnemonic::Int | Mnemonic::Int3 | Mnemonic::Into | Mnemonic::Int1
                    ),
                    "{mnemonic:?} delivered an interrupt"
                ),
                Outcome::Halted => assert_eq!(mnemonic, Mnemonic::Hlt),
                Outcome::Retired => {}
            }
            let cs_changed =
                cpu.segment(SegReg::Cs) != before.segment(SegReg::Cs) || cpu.cpl != before.cpl;
            if cs_changed {
                check_code_segment(cpu);
            }
            for seg in SegReg::ALL {
                let (now, was) = (cpu.segment(seg), before.segment(seg));
                if now == was || seg == SegReg::Cs || now.is_null() {
                    continue;
                }
                assert!(now.cache.present, "{seg:?} loaded not present: {now:?}");
                if seg == SegReg::Ss {
                    assert!(now.cache.is_writable(), "SS loaded {now:?}");
                    assert_eq!(
                        u8::try_from(now.selector & 3).expect("two bits"),
                        cpu.cpl,
                        "SS RPL"
                    );
                } else {
                    assert!(now.cache.is_readable(), "{seg:?} loaded {now:?}");
                }
            }
            // A plain instruction moves EIP by its length (a repeated
            // string instruction may stay on itself until it is done).
            let repeats = instr.has_rep_prefix() || instr.has_repne_prefix();
            if instr.flow_control() == FlowControl::Next
                && !repeats
                && *outcome == Outcome::Retired
                && !cs_changed
            {
                let len = u32::try_from(instr.len()).expect("short");
                let next = before.eip.wrapping_add(len);
                let next = if bitness == 16 { next & 0xffff } else { next };
                assert_eq!(cpu.eip, next, "EIP after {mnemonic:?}");
                check_side_effects(&instr, &before, cpu, &memory_before, &machine.memory);
            }
        }
    }
    result
}

/// One case: the code at EIP, then `steps` instructions.
fn run(world: &World, state: &State, code: &[Vec<u8>]) -> (Vec<String>, Cpu, FlatMachine) {
    let mut machine = world.machine();
    let mut cpu = state.cpu(world);
    let mut results = Vec::new();
    for bytes in code {
        let at = cpu.linear_eip();
        if at >= UNMAPPED {
            // Code outside memory: the fetch faults.
            let result = emu::step(&mut cpu, &mut machine);
            assert!(
                matches!(
                    result,
                    Err(Stop::Exception(Exception {
                        vector: vector::PF | vector::GP,
                        ..
                    }))
                ),
                "{result:?}"
            );
            results.push(format!("{result:?}"));
            break;
        }
        machine.put(at, bytes);
        let bitness = if cpu.segment(SegReg::Cs).cache.big {
            32
        } else {
            16
        };
        let result = step_and_check(&mut cpu, &mut machine, bitness);
        results.push(format!("{result:?}"));
        if result.is_err() {
            break;
        }
    }
    (results, cpu, machine)
}

// ---------------------------------------------------------------------
// Delivery.

/// An exception as the CPU raises it.
fn exception() -> impl Strategy<Value = Exception> {
    (0u8..32, any::<u32>(), any::<u16>()).prop_map(|(vector, address, code)| match vector {
        vector::PF => Exception::page_fault(address, u32::from(code) & 0x1f),
        vector::DF | vector::TS | vector::NP | vector::SS | vector::GP | vector::AC => {
            Exception::with_code(vector, u32::from(code) & 0xfffc)
        }
        _ => Exception::new(vector),
    })
}

fn check_delivery(result: &Result<(), Stop>, cpu: &Cpu, before: &Cpu) {
    match result {
        Err(Stop::Exception(exception)) => {
            panic!("delivery ended in {exception:?} instead of a double or triple fault")
        }
        Err(Stop::Machine(message)) => panic!("a machine error nobody raised: {message}"),
        Err(_) => {}
        Ok(()) => {
            check_code_segment(cpu);
            check_eflags(cpu.eflags);
            assert!(
                cpu.segment(SegReg::Cs).cache.contains(cpu.eip, 1),
                "handler EIP {:#x} outside CS {:?}",
                cpu.eip,
                cpu.segment(SegReg::Cs).cache
            );
            assert!(cpu.cpl <= before.cpl, "delivery raised the CPL");
            let ss = cpu.segment(SegReg::Ss);
            if cpu.cpl != before.cpl {
                assert_eq!(
                    u8::try_from(ss.selector & 3).expect("two bits"),
                    cpu.cpl,
                    "SS RPL after a stack switch"
                );
                assert!(ss.cache.present && ss.cache.is_writable(), "SS {ss:?}");
            }
        }
    }
}

proptest! {
    #![proptest_config(config(1024))]

    /// Random instructions on random CPU states.
    #[test]
    fn instructions_retire_or_fault_cleanly(
        world in world(),
        state in state(),
        code in proptest::collection::vec(instruction(), 1..4),
    ) {
        within(HANG, move || {
            let first = run(&world, &state, &code);
            let again = run(&world, &state, &code);
            assert_eq!(first.0, again.0, "not deterministic");
            assert_eq!(first.1, again.1, "not deterministic");
            assert!(first.2 == again.2, "not deterministic (machine)");
        });
    }

    /// Exceptions and hardware interrupts through random IDTs.
    #[test]
    fn delivery_enters_a_handler_or_shuts_down(
        world in world(),
        state in state(),
        exception in exception(),
        external in any::<u8>(),
    ) {
        within(HANG, move || {
            let mut machine = world.machine();
            let before = state.cpu(&world);
            let mut cpu = before.clone();
            let result = interrupt::deliver_exception(&mut cpu, &mut machine, exception);
            check_delivery(&result, &cpu, &before);
            let mut cpu = before.clone();
            let result = interrupt::deliver_external(&mut cpu, &mut machine, external);
            check_delivery(&result, &cpu, &before);
            // A software interrupt at CPL 3 to a DPL 0 gate is #GP, also
            // through the same path.
            let mut cpu = before.clone();
            let result = interrupt::deliver(&mut cpu, &mut machine, interrupt::Event::Software(external));
            match &result {
                Err(Stop::Exception(exception)) => {
                    check_exception(exception);
                    assert_eq!(cpu, before, "a failed delivery changed the CPU");
                }
                other => check_delivery(other, &cpu, &before),
            }
        });
    }

    /// Descriptors and gates decode from any 8 bytes and encode back.
    #[test]
    fn descriptors_decode_any_bits(raw in any::<u64>(), offset in any::<u32>(), len in 0u32..16) {
        let descriptor = Descriptor::from_raw(raw);
        // Everything but the L bit (64-bit code, bit 53) survives.
        assert_eq!(descriptor.to_raw(), raw & !(1 << 53));
        assert_eq!(Descriptor::from_raw(descriptor.to_raw()), descriptor);
        assert!(descriptor.dpl <= 3 && descriptor.kind <= 15);
        if descriptor.granular {
            assert_eq!(descriptor.limit & 0xfff, 0xfff);
        } else {
            assert!(descriptor.limit <= 0xf_ffff);
        }
        assert!(!(descriptor.is_code() && descriptor.is_data()));
        if descriptor.is_writable() {
            assert!(descriptor.is_readable());
        }
        // The limit check against a plain computation.
        let last = u64::from(offset) + u64::from(len.max(1)) - 1;
        let inside = if descriptor.is_expand_down() {
            let top = if descriptor.big { u64::from(u32::MAX) } else { 0xffff };
            offset > descriptor.limit && last <= top
        } else {
            last <= u64::from(descriptor.limit)
        };
        assert_eq!(descriptor.contains(offset, len), inside);
        let gate = Gate::from_raw(raw);
        assert!(gate.dpl <= 3 && gate.kind <= 15 && gate.parameters < 32);
        assert_eq!(u64::from(gate.selector), (raw >> 16) & 0xffff);
        assert_eq!(u64::from(gate.offset), (raw & 0xffff) | ((raw >> 32) & 0xffff_0000));
    }

    /// IRET and POPF flag merging keeps the fixed bits and the privilege
    /// rules.
    #[test]
    fn flag_merges_keep_the_rules(
        old in any::<u32>(),
        popped in any::<u32>(),
        cpl in 0u8..4,
        size in select(&[2u32, 4][..]),
        iret in any::<bool>(),
    ) {
        let old = (old & FLAGS) | 0x2;
        let merged = interrupt::merge_flags(old, popped, cpl, size, iret);
        check_eflags(merged & !Eflags::RF);
        let iopl = (old & Eflags::IOPL) >> 12;
        assert_eq!(merged & Eflags::VM, old & Eflags::VM, "VM");
        if cpl != 0 {
            assert_eq!(merged & Eflags::IOPL, old & Eflags::IOPL, "IOPL at CPL {cpl}");
        }
        if u32::from(cpl) > iopl {
            assert_eq!(merged & Eflags::IF, old & Eflags::IF, "IF at CPL {cpl} IOPL {iopl}");
        }
        if !iret {
            assert_eq!(merged & Eflags::RF, 0, "POPF leaves RF set");
        }
        if size == 2 {
            assert_eq!(merged & 0xffff_0000 & !Eflags::RF, old & 0xffff_0000 & !Eflags::RF);
        }
    }

    /// The words world processes publish in the pool: any word decodes or
    /// is refused, and what decodes encodes back to a word that decodes
    /// the same.
    #[test]
    fn pool_event_words_decode_or_are_refused(word in any::<u64>(), author in any::<u8>()) {
        if let Some((from, event)) = PoolEvent::decode(word) {
            assert!(from < 16);
            assert_eq!(PoolEvent::decode(event.encode(from)), Some((from, event)));
            assert_eq!(PoolEvent::decode(event.encode(author)), Some((author & 0xf, event)));
        } else {
            assert!(!matches!((word >> 48) & 0xf, 1..=3));
        }
    }
}

#[test]
fn gdt_template_matches_its_selectors() {
    let world = World {
        gdt: gdt_template().to_vec(),
        ldt: vec![0; LDT_ENTRIES as usize],
        idt: vec![0; 256],
        esp0: 0x9000,
        ss0: KERNEL_DS,
        io_bitmap: Vec::new(),
        port_input: Vec::new(),
        ports_fail: false,
        scatter: Vec::new(),
    };
    assert!(world.cache(KERNEL_CS).is_code());
    assert!(world.cache(KERNEL_DS).is_writable());
    assert_eq!(world.cache(USER_CS).dpl, 3);
    assert_eq!(world.cache(USER_DS).dpl, 3);
    assert!(!world.cache(CODE16).big);
    let mut cpu = State {
        mode: Mode::Kernel,
        gprs: [0; 8],
        eip: 0,
        eflags: 0,
        cr0: 0x11,
        cr4: 0,
        gdt_limit: 0x7f,
        idt_limit: 0x7ff,
        selectors: [0; 6],
        cpl: 0,
        dr7: 0x400,
    }
    .cpu(&world);
    let mut machine = world.machine();
    // nop, then mov eax, [0x2004] (the TSS's ESP0).
    machine.put(CODE, &[0x90, 0xa1, 0x04, 0x20, 0, 0]);
    assert_eq!(emu::step(&mut cpu, &mut machine), Ok(Outcome::Retired));
    assert_eq!(emu::step(&mut cpu, &mut machine), Ok(Outcome::Retired));
    assert_eq!(cpu.gpr[Gpr::Eax as usize], 0x9000);
}
