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
}
