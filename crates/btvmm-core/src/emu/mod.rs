//! A general x86-32 instruction emulator: one handler per instruction
//! family, over the [`Cpu`] state and a [`Machine`] for memory and I/O.
//!
//! The monitor uses it for the sensitive instructions it must not let run
//! natively, for guest writes the shadow MMU traps, and (later) to interpret
//! short stretches of guest kernel code instead of bouncing between native
//! execution and the monitor (DESIGN.md section 3, "Where the time will
//! go"). Instructions decode with iced-x86; every handler gives the
//! architectural result of a 32-bit protected-mode CPU, faults included,
//! and changes no state when it faults (stack pushes are committed only
//! when all of them succeed).
//!
//! Families: [`alu`] (arithmetic, logic, shifts, bit operations, flags
//! instructions), [`data`] (moves, exchanges, stack), [`string`] (string
//! instructions and REP), [`control`] (near branches), [`system`]
//! (privileged and system-state instructions), [`segment`] (segment
//! loads and reads, LAR/LSL/VERR/VERW), [`interrupt`] (INT n, IRET, far
//! transfers, exception delivery), [`io`] (IN/OUT/INS/OUTS), [`cpuid`] (the
//! virtual CPU's identity).

pub mod alu;
pub mod control;
pub mod cpuid;
pub mod data;
pub mod decode_cache;
pub mod fast;
pub mod flags;
pub mod fpu;
pub mod interrupt;
pub mod io;
pub mod segment;
pub mod speed;
pub mod string;
pub mod system;

use iced_x86::{Instruction, OpKind, Register};

use decode_cache::{DecodeCache, Decoded, decode_uncached};

use crate::cpu::{Cpu, Eflags, SegReg};
use crate::exception::{Exception, Stop};
use crate::machine::{Access, AccessKind, Machine};

/// What an emulated instruction did besides retiring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Retired; EIP points at the next instruction.
    Retired,
    /// HLT retired: the CPU waits for an interrupt (EIP is past the HLT).
    Halted,
    /// The instruction delivered an interrupt or exception through the IDT
    /// (INT n, INT3, INTO with OF set, INT1): EIP is the handler's.
    Delivered,
}

/// Fetches, decodes and executes the instruction at CS:EIP.
///
/// On [`Stop::Exception`] the CPU state is as before the instruction (a
/// fault) and the caller delivers the exception; traps raised by the
/// instruction itself (INT n, INT3, INTO) are delivered inside the step.
pub fn step(cpu: &mut Cpu, machine: &mut dyn Machine) -> Result<Outcome, Stop> {
    let instr = fetch(cpu, machine)?;
    execute(cpu, machine, &instr)
}

/// Reads and decodes the instruction at CS:EIP.
pub fn fetch(cpu: &Cpu, machine: &mut dyn Machine) -> Result<Instruction, Stop> {
    let (bytes, fetched, fault) = fetch_bytes(cpu, machine);
    decoded(
        decode_uncached(bitness(cpu), cpu.eip, &bytes[..fetched]),
        fault,
    )
}

/// [`fetch`], decoding through `cache` (the same instruction, without
/// decoding bytes seen at that address before again).
pub fn fetch_with<N: Copy>(
    cpu: &Cpu,
    machine: &mut dyn Machine,
    cache: &mut DecodeCache<N>,
) -> Result<Instruction, Stop> {
    let (bytes, fetched, fault) = fetch_bytes(cpu, machine);
    decoded(
        cache.decode(bitness(cpu), cpu.eip, &bytes[..fetched]),
        fault,
    )
}

/// Longest x86 instruction.
const MAX_INSTRUCTION: usize = 15;

fn bitness(cpu: &Cpu) -> u32 {
    if cpu.segment(SegReg::Cs).cache.big {
        32
    } else {
        16
    }
}

/// The bytes at CS:EIP, as many as the segment limit and paging allow (the
/// decoder says whether the instruction needed more), with how many and
/// the fault that stopped the fetch early, if one did.
fn fetch_bytes(
    cpu: &Cpu,
    machine: &mut dyn Machine,
) -> ([u8; MAX_INSTRUCTION], usize, Option<Stop>) {
    let cs = cpu.segment(SegReg::Cs).cache;
    let mut bytes = [0u8; MAX_INSTRUCTION];
    let mut fetched = 0;
    let mut fault = None;
    while fetched < MAX_INSTRUCTION {
        #[allow(clippy::cast_possible_truncation)] // fetched < 15
        let offset = cpu.eip.wrapping_add(fetched as u32);
        if !cs.contains(offset, 1) {
            fault = Some(Stop::Exception(Exception::gp(0)));
            break;
        }
        let linear = cs.base.wrapping_add(offset);
        // Read to the end of the page at most, so a fault names the first
        // byte that cannot be fetched.
        let in_page = (0x1000 - (linear & 0xfff)) as usize;
        let chunk = in_page.min(MAX_INSTRUCTION - fetched);
        let access = Access {
            kind: AccessKind::Execute,
            user: cpu.cpl == 3,
        };
        match machine.read_linear(linear, &mut bytes[fetched..fetched + chunk], access) {
            Ok(()) => fetched += chunk,
            Err(stop) => {
                fault = Some(stop);
                break;
            }
        }
    }
    (bytes, fetched, fault)
}

/// The instruction decoded from fetched bytes, or the fault a fetch that
/// stopped short of it raised.
fn decoded(decoded: Decoded, fault: Option<Stop>) -> Result<Instruction, Stop> {
    match decoded {
        Decoded::Instruction(instr) => Ok(instr),
        Decoded::NeedsMoreBytes => Err(fault.unwrap_or(Stop::Exception(Exception::ud()))),
        Decoded::Invalid => Err(Stop::Exception(Exception::ud())),
    }
}

/// Executes one decoded instruction (decoded at CS:EIP).
pub fn execute(
    cpu: &mut Cpu,
    machine: &mut dyn Machine,
    instr: &Instruction,
) -> Result<Outcome, Stop> {
    let saved = cpu.clone();
    #[allow(clippy::cast_possible_truncation)] // instructions are <= 15 bytes
    let next_eip = if cpu.segment(SegReg::Cs).cache.big {
        cpu.eip.wrapping_add(instr.len() as u32)
    } else {
        (cpu.eip.wrapping_add(instr.len() as u32)) & 0xffff
    };
    let mut ctx = Ctx {
        cpu,
        machine,
        instr,
        next_eip,
        outcome: Outcome::Retired,
        shadow: false,
    };
    match dispatch(&mut ctx) {
        Ok(()) => {
            let (next_eip, outcome, shadow) = (ctx.next_eip, ctx.outcome, ctx.shadow);
            cpu.eip = next_eip;
            cpu.eflags &= !Eflags::RF;
            cpu.interrupt_shadow = shadow;
            Ok(outcome)
        }
        Err(stop) => {
            // Faults leave the state as before the instruction.
            *cpu = saved;
            Err(stop)
        }
    }
}

fn dispatch(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    if let Some(result) = fpu::execute(ctx) {
        return result;
    }
    if let Some(result) = alu::execute(ctx) {
        return result;
    }
    if let Some(result) = data::execute(ctx) {
        return result;
    }
    if let Some(result) = string::execute(ctx) {
        return result;
    }
    if let Some(result) = control::execute(ctx) {
        return result;
    }
    if let Some(result) = segment::execute(ctx) {
        return result;
    }
    if let Some(result) = system::execute(ctx) {
        return result;
    }
    if let Some(result) = interrupt::execute(ctx) {
        return result;
    }
    if let Some(result) = io::execute(ctx) {
        return result;
    }
    Err(Stop::NotEmulated(ctx.instr.mnemonic()))
}

/// An instruction family's handler of one instruction, chosen from its
/// decoding (see [`alu::handler`]).
pub(crate) type Handler = for<'a, 'b> fn(&'a mut Ctx<'b>) -> Result<(), Stop>;

/// One instruction's execution context: the CPU, the machine, the decoded
/// instruction and where execution continues.
pub struct Ctx<'a> {
    /// The CPU.
    pub cpu: &'a mut Cpu,
    /// Memory and I/O.
    pub machine: &'a mut dyn Machine,
    /// The instruction.
    pub instr: &'a Instruction,
    /// EIP after the instruction; branches overwrite it.
    pub next_eip: u32,
    /// What to report besides retiring.
    pub outcome: Outcome,
    /// Set by instructions that inhibit interrupts for one instruction.
    pub shadow: bool,
}

impl Ctx<'_> {
    /// The access mode of data accesses (user at CPL 3).
    #[must_use]
    pub fn data_access(&self, kind: AccessKind) -> Access {
        Access {
            kind,
            user: self.cpu.cpl == 3,
        }
    }

    /// Operand size of the instruction's operand `op` in bytes (1, 2, 4 or 8).
    #[must_use]
    pub fn op_size(&self, op: u32) -> u32 {
        match self.instr.op_kind(op) {
            OpKind::Register => register_size(self.instr.op_register(op)),
            OpKind::Immediate8 | OpKind::Immediate8_2nd => 1,
            OpKind::Immediate16 | OpKind::Immediate8to16 => 2,
            OpKind::Immediate32 | OpKind::Immediate8to32 => 4,
            OpKind::Memory => size_u32(self.instr.memory_size().size()),
            _ => 4,
        }
    }

    /// Reads a general register of any size (zero-extended).
    #[must_use]
    pub fn reg(&self, register: Register) -> u32 {
        read_register(self.cpu, register)
    }

    /// Writes a general register of any size (8- and 16-bit writes keep the
    /// rest of the 32-bit register).
    pub fn set_reg(&mut self, register: Register, value: u32) {
        write_register(self.cpu, register, value);
    }

    /// The segment and offset of memory operand `op` (before any check).
    #[must_use]
    pub fn memory_operand(&self, op: u32) -> (SegReg, u32) {
        let segment = segreg(self.instr.memory_segment()).unwrap_or(SegReg::Ds);
        let offset = self
            .instr
            .virtual_address(op, 0, |register, _, _| {
                if register.is_segment_register() {
                    Some(0)
                } else {
                    Some(u64::from(read_register(self.cpu, register)))
                }
            })
            .unwrap_or(0);
        // Offsets are 32-bit (or 16-bit with 16-bit addressing, which iced
        // already wrapped).
        #[allow(clippy::cast_possible_truncation)]
        (segment, offset as u32)
    }

    /// Checks an access of `len` bytes at `segment:offset` against the
    /// segment's type and limit and returns its linear address.
    #[inline]
    pub fn linear(
        &self,
        segment: SegReg,
        offset: u32,
        len: u32,
        kind: AccessKind,
    ) -> Result<u32, Stop> {
        let loaded = self.cpu.segment(segment);
        let fault = || {
            if segment == SegReg::Ss {
                Exception::ss(0)
            } else {
                Exception::gp(0)
            }
        };
        if loaded.is_null() && segment != SegReg::Cs {
            return Err(Exception::gp(0).into());
        }
        let cache = &loaded.cache;
        let allowed = match kind {
            AccessKind::Read => cache.is_readable(),
            AccessKind::Write => cache.is_writable(),
            AccessKind::Execute => cache.is_code(),
        };
        if !allowed || !cache.contains(offset, len) {
            return Err(fault().into());
        }
        Ok(cache.base.wrapping_add(offset))
    }

    /// Reads `size` (1, 2 or 4) bytes at `segment:offset`, zero-extended.
    #[inline]
    pub fn read_mem(&mut self, segment: SegReg, offset: u32, size: u32) -> Result<u32, Stop> {
        let linear = self.linear(segment, offset, size, AccessKind::Read)?;
        let mut bytes = [0u8; 4];
        let access = self.data_access(AccessKind::Read);
        self.machine
            .read_linear(linear, &mut bytes[..size as usize], access)?;
        Ok(u32::from_le_bytes(bytes))
    }

    /// Reads `size` (1, 2 or 4) bytes at `segment:offset` for an
    /// instruction that writes them back (read-modify-write, XCHG, CMPXCHG)
    /// or as a probe before a multi-part write: the segment must be
    /// writable and paging judges the read as a write, so a fault reports a
    /// write as the CPU does and a successful read means the write will
    /// not fault.
    #[inline]
    pub fn read_mem_rmw(&mut self, segment: SegReg, offset: u32, size: u32) -> Result<u32, Stop> {
        let linear = self.linear(segment, offset, size, AccessKind::Write)?;
        let mut bytes = [0u8; 4];
        let access = self.data_access(AccessKind::Write);
        self.machine
            .read_linear(linear, &mut bytes[..size as usize], access)?;
        Ok(u32::from_le_bytes(bytes))
    }

    /// Writes the low `size` (1, 2 or 4) bytes of `value` at `segment:offset`.
    #[inline]
    pub fn write_mem(
        &mut self,
        segment: SegReg,
        offset: u32,
        size: u32,
        value: u32,
    ) -> Result<(), Stop> {
        let linear = self.linear(segment, offset, size, AccessKind::Write)?;
        let access = self.data_access(AccessKind::Write);
        self.machine
            .write_linear(linear, &value.to_le_bytes()[..size as usize], access)
    }

    /// Reads operand `op` (register, memory or immediate), zero-extended to
    /// 32 bits; sign-extended immediates are extended to the operand size.
    pub fn read_op(&mut self, op: u32) -> Result<u32, Stop> {
        match self.instr.op_kind(op) {
            OpKind::Register => Ok(self.reg(self.instr.op_register(op))),
            OpKind::Memory => {
                let (segment, offset) = self.memory_operand(op);
                let size = self.op_size(op).min(4);
                self.read_mem(segment, offset, size)
            }
            // The immediate, already extended by iced to the operand size.
            #[allow(clippy::cast_possible_truncation)]
            _ => Ok(self.instr.immediate(op) as u32),
        }
    }

    /// Writes operand `op` (register or memory).
    pub fn write_op(&mut self, op: u32, value: u32) -> Result<(), Stop> {
        match self.instr.op_kind(op) {
            OpKind::Register => {
                self.set_reg(self.instr.op_register(op), value);
                Ok(())
            }
            OpKind::Memory => {
                let (segment, offset) = self.memory_operand(op);
                let size = self.op_size(op).min(4);
                self.write_mem(segment, offset, size, value)
            }
            _ => Err(Stop::Machine("write to an immediate operand".into())),
        }
    }

    /// The stack pointer as the stack's address size sees it.
    #[must_use]
    #[inline]
    pub fn stack_pointer(&self) -> u32 {
        let esp = self.cpu.gpr[crate::Gpr::Esp as usize];
        if self.cpu.segment(SegReg::Ss).cache.big {
            esp
        } else {
            esp & 0xffff
        }
    }

    /// Sets the stack pointer (16-bit stacks change only SP).
    #[inline]
    pub fn set_stack_pointer(&mut self, value: u32) {
        let esp = &mut self.cpu.gpr[crate::Gpr::Esp as usize];
        if self.cpu.segments[SegReg::Ss as usize].cache.big {
            *esp = value;
        } else {
            *esp = (*esp & 0xffff_0000) | (value & 0xffff);
        }
    }

    /// Pushes `size` (2 or 4) bytes.
    #[inline]
    pub fn push(&mut self, value: u32, size: u32) -> Result<(), Stop> {
        let sp = self.stack_pointer().wrapping_sub(size);
        let sp = if self.cpu.segment(SegReg::Ss).cache.big {
            sp
        } else {
            sp & 0xffff
        };
        self.write_mem(SegReg::Ss, sp, size, value)?;
        self.set_stack_pointer(sp);
        Ok(())
    }

    /// Pops `size` (2 or 4) bytes.
    #[inline]
    pub fn pop(&mut self, size: u32) -> Result<u32, Stop> {
        let sp = self.stack_pointer();
        let value = self.read_mem(SegReg::Ss, sp, size)?;
        self.set_stack_pointer(sp.wrapping_add(size));
        Ok(value)
    }

    /// Reads the value `depth` bytes above the stack top without popping.
    pub fn peek(&mut self, depth: u32, size: u32) -> Result<u32, Stop> {
        let sp = self.stack_pointer().wrapping_add(depth);
        let sp = if self.cpu.segment(SegReg::Ss).cache.big {
            sp
        } else {
            sp & 0xffff
        };
        self.read_mem(SegReg::Ss, sp, size)
    }

    /// Operand size of the instruction's code (2 or 4): 16-bit forms of
    /// push/pop/call/ret/iret and friends.
    #[must_use]
    pub fn operand_size(&self) -> u32 {
        self.instr.op_code().operand_size().max(16) / 8
    }
}

/// Size in bytes of a general register.
#[must_use]
pub fn register_size(register: Register) -> u32 {
    size_u32(register.size())
}

fn size_u32(size: usize) -> u32 {
    // Operand sizes are at most 64 bytes.
    #[allow(clippy::cast_possible_truncation)]
    let size = size as u32;
    size
}

/// The [`SegReg`] for an iced segment register.
#[must_use]
pub fn segreg(register: Register) -> Option<SegReg> {
    Some(match register {
        Register::ES => SegReg::Es,
        Register::CS => SegReg::Cs,
        Register::SS => SegReg::Ss,
        Register::DS => SegReg::Ds,
        Register::FS => SegReg::Fs,
        Register::GS => SegReg::Gs,
        _ => return None,
    })
}

pub(crate) fn gpr_index(register: Register) -> Option<usize> {
    Some(match register.full_register32() {
        Register::EAX => 0,
        Register::ECX => 1,
        Register::EDX => 2,
        Register::EBX => 3,
        Register::ESP => 4,
        Register::EBP => 5,
        Register::ESI => 6,
        Register::EDI => 7,
        _ => return None,
    })
}

fn is_high_byte(register: Register) -> bool {
    matches!(
        register,
        Register::AH | Register::CH | Register::DH | Register::BH
    )
}

/// Reads a general register of any size from `cpu`, zero-extended;
/// segment registers give their selector; anything else reads 0.
#[must_use]
pub fn read_register(cpu: &Cpu, register: Register) -> u32 {
    if let Some(seg) = segreg(register) {
        return u32::from(cpu.segment(seg).selector);
    }
    let Some(index) = gpr_index(register) else {
        return 0;
    };
    let full = cpu.gpr[index];
    match register.size() {
        1 if is_high_byte(register) => (full >> 8) & 0xff,
        1 => full & 0xff,
        2 => full & 0xffff,
        _ => full,
    }
}

/// Writes a general register of any size in `cpu`.
pub fn write_register(cpu: &mut Cpu, register: Register, value: u32) {
    let Some(index) = gpr_index(register) else {
        return;
    };
    let full = &mut cpu.gpr[index];
    *full = match register.size() {
        1 if is_high_byte(register) => (*full & !0xff00) | ((value & 0xff) << 8),
        1 => (*full & !0xff) | (value & 0xff),
        2 => (*full & !0xffff) | (value & 0xffff),
        _ => value,
    };
}

/// Mask of the low `size` bytes.
#[must_use]
pub const fn mask(size: u32) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

/// Sign bit of a `size`-byte value.
#[must_use]
pub const fn sign_bit(size: u32) -> u32 {
    match size {
        1 => 0x80,
        2 => 0x8000,
        _ => 0x8000_0000,
    }
}

#[cfg(test)]
pub(crate) mod testing;
