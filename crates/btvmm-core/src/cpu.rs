//! Views of the virtual CPU's registers.
//!
//! The full vCPU state (control registers, descriptor tables, the virtual
//! interrupt flag) grows here as the world and the emulator need it; what is
//! here now is what the planner needs to follow guest control flow: the
//! general registers, EFLAGS and the segment bases used to form linear
//! addresses.

/// A 32-bit general-purpose register, numbered as in the ModRM encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Gpr {
    Eax = 0,
    Ecx = 1,
    Edx = 2,
    Ebx = 3,
    Esp = 4,
    Ebp = 5,
    Esi = 6,
    Edi = 7,
}

impl Gpr {
    /// All eight, in encoding order.
    pub const ALL: [Gpr; 8] = [
        Gpr::Eax,
        Gpr::Ecx,
        Gpr::Edx,
        Gpr::Ebx,
        Gpr::Esp,
        Gpr::Ebp,
        Gpr::Esi,
        Gpr::Edi,
    ];
}

/// A segment register, numbered as in the `Sreg` encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum SegReg {
    Es = 0,
    Cs = 1,
    Ss = 2,
    Ds = 3,
    Fs = 4,
    Gs = 5,
}

impl SegReg {
    /// All six, in encoding order.
    pub const ALL: [SegReg; 6] = [
        SegReg::Es,
        SegReg::Cs,
        SegReg::Ss,
        SegReg::Ds,
        SegReg::Fs,
        SegReg::Gs,
    ];
}

/// EFLAGS bits, named as in the Intel SDM.
pub struct Eflags;

impl Eflags {
    /// Carry flag.
    pub const CF: u32 = 1 << 0;
    /// Parity flag.
    pub const PF: u32 = 1 << 2;
    /// Auxiliary carry flag.
    pub const AF: u32 = 1 << 4;
    /// Zero flag.
    pub const ZF: u32 = 1 << 6;
    /// Sign flag.
    pub const SF: u32 = 1 << 7;
    /// Trap flag (single step).
    pub const TF: u32 = 1 << 8;
    /// Interrupt enable flag: virtual for the guest, kept by the VMM.
    pub const IF: u32 = 1 << 9;
    /// Direction flag.
    pub const DF: u32 = 1 << 10;
    /// Overflow flag.
    pub const OF: u32 = 1 << 11;
    /// I/O privilege level (two bits).
    pub const IOPL: u32 = 3 << 12;
    /// Nested task.
    pub const NT: u32 = 1 << 14;
    /// Resume flag: suppresses instruction breakpoints for one instruction.
    pub const RF: u32 = 1 << 16;
    /// Virtual-8086 mode.
    pub const VM: u32 = 1 << 17;
    /// Alignment check.
    pub const AC: u32 = 1 << 18;
    /// CPUID-detection flag.
    pub const ID: u32 = 1 << 21;
}

/// Read access to the guest's register state at a trap, in the guest's terms
/// (guest EIP, guest EFLAGS, the bases of the guest's segments).
pub trait CpuView {
    /// A general register.
    fn gpr(&self, reg: Gpr) -> u32;
    /// The guest instruction pointer (offset in CS).
    fn eip(&self) -> u32;
    /// Guest EFLAGS, arithmetic flags as the hardware left them.
    fn eflags(&self) -> u32;
    /// Base of a guest segment, to turn an effective address into a
    /// guest-virtual (linear) one.
    fn segment_base(&self, seg: SegReg) -> u32;
    /// The code segment is 32-bit (CS.D = 1).
    fn code_32bit(&self) -> bool;
    /// The stack segment is 32-bit (SS.B = 1): pushes and pops use ESP.
    fn stack_32bit(&self) -> bool;
}

/// A segment register as the CPU holds it: the visible selector and the
/// hidden descriptor cache loaded with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    /// The guest's selector.
    pub selector: u16,
    /// The descriptor loaded with it (base, limit, type, DPL, ...).
    pub cache: crate::descriptor::Descriptor,
}

impl Segment {
    /// A null selector: any use faults.
    #[must_use]
    pub fn is_null(&self) -> bool {
        self.selector & !3 == 0
    }
}

/// GDTR or IDTR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct TableRegister {
    /// Linear base.
    pub base: u32,
    /// Limit (bytes - 1).
    pub limit: u16,
}

/// Control-register bits used by the VMM.
pub struct Cr0;

impl Cr0 {
    /// Protection enable.
    pub const PE: u32 = 1 << 0;
    /// Monitor coprocessor.
    pub const MP: u32 = 1 << 1;
    /// Emulation (no FPU).
    pub const EM: u32 = 1 << 2;
    /// Task switched.
    pub const TS: u32 = 1 << 3;
    /// Extension type (always 1 on i486 and later).
    pub const ET: u32 = 1 << 4;
    /// Numeric error.
    pub const NE: u32 = 1 << 5;
    /// Write protect.
    pub const WP: u32 = 1 << 16;
    /// Alignment mask.
    pub const AM: u32 = 1 << 18;
    /// Not write-through.
    pub const NW: u32 = 1 << 29;
    /// Cache disable.
    pub const CD: u32 = 1 << 30;
    /// Paging.
    pub const PG: u32 = 1 << 31;
}

/// The virtual CPU's architectural state.
///
/// `eflags` is the guest-visible EFLAGS: arithmetic flags as the guest
/// computed them, and IF, IOPL, NT, VM, AC, ID as the guest set them; the
/// VMM keeps the virtual IF and IOPL here while the host's real IF is always
/// 1 and its IOPL 0.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cpu {
    /// EAX..EDI in encoding order.
    pub gpr: [u32; 8],
    /// Instruction pointer (offset in CS).
    pub eip: u32,
    /// Guest-visible EFLAGS.
    pub eflags: u32,
    /// ES, CS, SS, DS, FS, GS in encoding order.
    pub segments: [Segment; 6],
    /// Local descriptor table register.
    pub ldtr: Segment,
    /// Task register.
    pub tr: Segment,
    /// Global descriptor table register.
    pub gdtr: TableRegister,
    /// Interrupt descriptor table register.
    pub idtr: TableRegister,
    /// CR0.
    pub cr0: u32,
    /// CR2: the last page-fault address.
    pub cr2: u32,
    /// CR3: page directory base.
    pub cr3: u32,
    /// CR4.
    pub cr4: u32,
    /// DR0-DR7 (DR4/DR5 alias DR6/DR7).
    pub dr: [u32; 8],
    /// Current privilege level.
    pub cpl: u8,
    /// IA32_SYSENTER_CS, _ESP, _EIP.
    pub sysenter: [u32; 3],
    /// Added to the host time-stamp counter to give the guest's (set by
    /// WRMSR to IA32_TIME_STAMP_COUNTER).
    pub tsc_offset: u64,
    /// The instruction just executed inhibits interrupts until the next one
    /// retires (STI, MOV SS, POP SS).
    pub interrupt_shadow: bool,
}

impl Default for Cpu {
    /// The state after the Multiboot loader hands over: 32-bit protected
    /// mode, paging off, flat 4 GiB code and data segments, CPL 0,
    /// interrupts disabled.
    fn default() -> Self {
        use crate::descriptor::{Descriptor, TYPE_ACCESSED, TYPE_CODE, TYPE_WRITABLE_READABLE};
        let flat = |kind| Descriptor {
            base: 0,
            limit: 0xffff_ffff,
            kind,
            code_or_data: true,
            dpl: 0,
            present: true,
            available: false,
            big: true,
            granular: true,
        };
        let code = Segment {
            selector: 0x08,
            cache: flat(TYPE_CODE | TYPE_WRITABLE_READABLE | TYPE_ACCESSED),
        };
        let data = Segment {
            selector: 0x10,
            cache: flat(TYPE_WRITABLE_READABLE | TYPE_ACCESSED),
        };
        Self {
            gpr: [0; 8],
            eip: 0,
            eflags: 0x2,
            segments: [data, code, data, data, data, data],
            ldtr: Segment::default(),
            tr: Segment::default(),
            gdtr: TableRegister::default(),
            idtr: TableRegister {
                base: 0,
                limit: 0x3ff,
            },
            cr0: Cr0::PE | Cr0::ET,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            dr: [0, 0, 0, 0, 0xffff_0ff0, 0x400, 0xffff_0ff0, 0x400],
            cpl: 0,
            sysenter: [0; 3],
            tsc_offset: 0,
            interrupt_shadow: false,
        }
    }
}

impl Cpu {
    /// A segment register.
    #[must_use]
    pub fn segment(&self, seg: SegReg) -> &Segment {
        &self.segments[seg as usize]
    }

    /// A segment register, for update.
    pub fn segment_mut(&mut self, seg: SegReg) -> &mut Segment {
        &mut self.segments[seg as usize]
    }

    /// The linear address of the next instruction.
    #[must_use]
    pub fn linear_eip(&self) -> u32 {
        self.segment(SegReg::Cs).cache.base.wrapping_add(self.eip)
    }

    /// Paging is on.
    #[must_use]
    pub fn paging(&self) -> bool {
        self.cr0 & Cr0::PG != 0
    }

    /// The virtual interrupt flag.
    #[must_use]
    pub fn interrupts_enabled(&self) -> bool {
        self.eflags & Eflags::IF != 0
    }

    /// Current IOPL.
    #[must_use]
    pub fn iopl(&self) -> u8 {
        ((self.eflags & Eflags::IOPL) >> 12) as u8
    }
}

impl CpuView for Cpu {
    fn gpr(&self, reg: Gpr) -> u32 {
        self.gpr[reg as usize]
    }
    fn eip(&self) -> u32 {
        self.eip
    }
    fn eflags(&self) -> u32 {
        self.eflags
    }
    fn segment_base(&self, seg: SegReg) -> u32 {
        self.segment(seg).cache.base
    }
    fn code_32bit(&self) -> bool {
        self.segment(SegReg::Cs).cache.big
    }
    fn stack_32bit(&self) -> bool {
        self.segment(SegReg::Ss).cache.big
    }
}
