//! The fast interpreter: runs of guest instructions decoded once per
//! block and kept, dispatched without fetching or decoding again, with the
//! general emulator's exact semantics.
//!
//! A [`Block`] is the straight-line code from an address to its first
//! control transfer (or the end of its page), decoded once. It is kept in
//! a [`BlockCache`] by address, with the bytes it was decoded from: each
//! time a run enters it, those bytes are fetched again as the CPU would
//! (one read through the guest's page tables and the CS limit for the
//! whole block, where the general path fetches and compares every
//! instruction) and compared, so a block whose code the guest rewrote, or
//! mapped elsewhere, is simply decoded again: no invalidation to get
//! wrong, whatever wrote the code (the guest natively, the emulator, a
//! device). A store by the block's own instructions into its own page ends
//! the block there, so the next instruction is fetched again.
//!
//! The commonest kernel instructions (32-bit MOV, ADD, SUB, AND, OR, XOR,
//! CMP, TEST, INC, DEC, LEA, PUSH, POP, JMP, Jcc, CALL, RET) have a
//! pre-analysed [`Form`]: their operands are resolved to registers,
//! immediates and address expressions when the block is decoded, and they
//! run through the general emulator's own memory accesses
//! ([`Ctx::read_mem`] and friends: segment checks, paging, faults) and
//! flag functions. Every other instruction runs through [`super::execute`]
//! from its kept decoding. A fault leaves the vCPU as before the
//! instruction, as the general path does. The unit tests run instruction
//! sequences both ways and compare the vCPU and memory after each.
//!
//! What a caller (the monitor) must decide between instructions (whether
//! an instruction may be interpreted at all, when to stop for an
//! interrupt) it decides in a [`Driver`], called before and after each
//! one; each instruction has a note slot of type `N` for what the driver
//! judged of it, made once per decoding.

use iced_x86::{
    Code, ConditionCode, Decoder, DecoderError, DecoderOptions, FlowControl, Instruction, Mnemonic,
    OpKind, Register,
};

use crate::cpu::{Cpu, Eflags, Gpr, SegReg};
use crate::exception::{Exception, Stop};
use crate::machine::{Access, AccessKind, Machine};

use super::flags::{self, STATUS};
use super::{Ctx, Outcome};

/// Blocks kept: a direct-mapped table indexed by a hash of the address.
const SLOT_BITS: u32 = 12;
const SLOTS: usize = 1 << SLOT_BITS;
/// Most bytes decoded into one block.
const MAX_BLOCK_BYTES: u32 = 160;
/// Most instructions in one block.
const MAX_BLOCK_OPS: usize = 48;

/// A general register index, or none.
const NO_REG: u8 = 8;

/// A memory operand's address expression (32-bit addressing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MemRef {
    segment: SegReg,
    base: u8,
    index: u8,
    /// log2 of the index's scale.
    shift: u8,
    displacement: u32,
}

impl MemRef {
    #[inline]
    fn offset(&self, cpu: &Cpu) -> u32 {
        let mut offset = self.displacement;
        if self.base != NO_REG {
            offset = offset.wrapping_add(cpu.gpr[self.base as usize]);
        }
        if self.index != NO_REG {
            offset = offset.wrapping_add(cpu.gpr[self.index as usize] << self.shift);
        }
        offset
    }
}

/// A 32-bit operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    Reg(u8),
    Imm(u32),
    Mem(MemRef),
}

/// The arithmetic and logic operations with a fast form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AluOp {
    Add,
    Sub,
    And,
    Or,
    Xor,
    Cmp,
    Test,
}

/// How an instruction runs.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// Through the general emulator.
    General,
    /// Straight to its family's handler (arithmetic and data movement of
    /// every size, CLI STI PUSHF POPF RDTSC: what [`super::execute`] would
    /// find after looking through the families), which changes only the
    /// general registers, EFLAGS, memory and the interrupt shadow.
    /// `may_store`: it has a memory operand or pushes.
    Handler {
        handler: super::Handler,
        may_store: bool,
    },
    Mov {
        dst: Loc,
        src: Loc,
    },
    Alu {
        op: AluOp,
        dst: Loc,
        src: Loc,
    },
    IncDec {
        inc: bool,
        dst: Loc,
    },
    Lea {
        dst: u8,
        mem: MemRef,
    },
    Push(Loc),
    Pop(u8),
    Jmp(u32),
    Jcc(ConditionCode, u32),
    Call(u32),
    Ret(u16),
}

/// The index of a 32-bit general register.
fn gpr32(register: Register) -> Option<u8> {
    if register.size() != 4 {
        return None;
    }
    // At most 7.
    #[allow(clippy::cast_possible_truncation)]
    super::gpr_index(register).map(|index| index as u8)
}

/// A register or index register of a 32-bit address, or none.
fn address_register(register: Register) -> Option<u8> {
    if register == Register::None {
        Some(NO_REG)
    } else {
        gpr32(register)
    }
}

/// The address expression of `instr`'s memory operand, if it uses 32-bit
/// addressing.
fn mem_ref(instr: &Instruction) -> Option<MemRef> {
    let base = address_register(instr.memory_base())?;
    let index = address_register(instr.memory_index())?;
    // With neither register, a 16-bit address has a 2-byte displacement.
    if base == NO_REG && index == NO_REG && instr.memory_displ_size() != 4 {
        return None;
    }
    let shift = match instr.memory_index_scale() {
        1 => 0,
        2 => 1,
        4 => 2,
        8 => 3,
        _ => return None,
    };
    Some(MemRef {
        segment: super::segreg(instr.memory_segment())?,
        base,
        index,
        shift,
        displacement: instr.memory_displacement32(),
    })
}

/// Operand `op` as a 32-bit location, if it is one.
fn loc(instr: &Instruction, op: u32) -> Option<Loc> {
    match instr.op_kind(op) {
        OpKind::Register => gpr32(instr.op_register(op)).map(Loc::Reg),
        // The immediate, already extended by iced to 32 bits.
        #[allow(clippy::cast_possible_truncation)]
        OpKind::Immediate32 | OpKind::Immediate8to32 => Some(Loc::Imm(instr.immediate(op) as u32)),
        OpKind::Memory if instr.memory_size().size() == 4 => mem_ref(instr).map(Loc::Mem),
        _ => None,
    }
}

/// The fast form of `instr` (32-bit code), or its family's handler, or
/// [`Form::General`].
fn form(instr: &Instruction) -> Form {
    if let Some(form) = fast_form(instr) {
        return form;
    }
    // The general emulator looks at the FPU family first: an instruction
    // of its (and of any family but these two) goes the general way.
    if super::fpu::fpu_class(instr).is_some() {
        return Form::General;
    }
    let handler = super::alu::handler(instr)
        .or_else(|| super::data::handler(instr))
        .or_else(|| super::system::flags_handler(instr));
    match handler {
        Some(handler) => Form::Handler {
            handler,
            may_store: (0..instr.op_count()).any(|op| instr.op_kind(op) == OpKind::Memory)
                || matches!(
                    instr.mnemonic(),
                    Mnemonic::Push
                        | Mnemonic::Pusha
                        | Mnemonic::Pushad
                        | Mnemonic::Enter
                        | Mnemonic::Pushf
                        | Mnemonic::Pushfd
                ),
        },
        None => Form::General,
    }
}

fn fast_form(instr: &Instruction) -> Option<Form> {
    if instr.has_lock_prefix() || instr.has_rep_prefix() || instr.has_repne_prefix() {
        return None;
    }
    let two = |instr: &Instruction| -> Option<(Loc, Loc)> {
        if instr.op_count() != 2 {
            return None;
        }
        let dst = loc(instr, 0)?;
        let src = loc(instr, 1)?;
        matches!(dst, Loc::Reg(_) | Loc::Mem(_)).then_some((dst, src))
    };
    // Branch targets are offsets in CS, already wrapped to 32 bits.
    #[allow(clippy::cast_possible_truncation)]
    let target = || instr.near_branch_target() as u32;
    let near32 = instr.op_count() == 1 && instr.op0_kind() == OpKind::NearBranch32;
    Some(match instr.mnemonic() {
        Mnemonic::Mov => {
            let (dst, src) = two(instr)?;
            Form::Mov { dst, src }
        }
        Mnemonic::Add
        | Mnemonic::Sub
        | Mnemonic::And
        | Mnemonic::Or
        | Mnemonic::Xor
        | Mnemonic::Cmp
        | Mnemonic::Test => {
            let op = match instr.mnemonic() {
                Mnemonic::Add => AluOp::Add,
                Mnemonic::Sub => AluOp::Sub,
                Mnemonic::And => AluOp::And,
                Mnemonic::Or => AluOp::Or,
                Mnemonic::Xor => AluOp::Xor,
                Mnemonic::Cmp => AluOp::Cmp,
                _ => AluOp::Test,
            };
            let (dst, src) = two(instr)?;
            Form::Alu { op, dst, src }
        }
        Mnemonic::Inc | Mnemonic::Dec if instr.op_count() == 1 => {
            let dst = loc(instr, 0)?;
            if matches!(dst, Loc::Imm(_)) {
                return None;
            }
            Form::IncDec {
                inc: instr.mnemonic() == Mnemonic::Inc,
                dst,
            }
        }
        Mnemonic::Lea
            if instr.op_count() == 2
                && instr.op1_kind() == OpKind::Memory
                && instr.op_code().operand_size() == 32 =>
        {
            Form::Lea {
                dst: gpr32(instr.op0_register())?,
                mem: mem_ref(instr)?,
            }
        }
        Mnemonic::Push => match instr.code() {
            Code::Push_r32 => Form::Push(Loc::Reg(gpr32(instr.op0_register())?)),
            Code::Pushd_imm8 | Code::Pushd_imm32 => {
                // Already extended by iced to 32 bits.
                #[allow(clippy::cast_possible_truncation)]
                let value = instr.immediate(0) as u32;
                Form::Push(Loc::Imm(value))
            }
            _ => return None,
        },
        // POP ESP loads the popped value after the increment: general.
        Mnemonic::Pop if instr.code() == Code::Pop_r32 => {
            let dst = gpr32(instr.op0_register())?;
            if dst == Gpr::Esp as u8 {
                return None;
            }
            Form::Pop(dst)
        }
        Mnemonic::Jmp if near32 => Form::Jmp(target()),
        Mnemonic::Call if near32 => Form::Call(target()),
        _ if near32 && instr.is_jcc_short_or_near() => Form::Jcc(instr.condition_code(), target()),
        Mnemonic::Ret => match instr.code() {
            Code::Retnd => Form::Ret(0),
            Code::Retnd_imm16 => Form::Ret(instr.immediate16()),
            _ => return None,
        },
        _ => return None,
    })
}

/// One instruction of a block.
#[derive(Clone, Debug)]
pub struct Op<N> {
    /// Its decoding.
    pub instr: Instruction,
    form: Form,
    /// What the driver judged of it (see [`Driver::before`]).
    pub note: Option<N>,
}

/// Straight-line code decoded once.
#[derive(Clone, Debug)]
pub struct Block<N> {
    /// Offset in CS of the first instruction.
    eip: u32,
    /// The bytes decoded.
    bytes: Vec<u8>,
    /// The instructions, in order.
    ops: Vec<Op<N>>,
}

/// Counts of a cache's work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Blocks entered with their kept decoding.
    pub hits: u64,
    /// Blocks decoded (first use, a collision, or changed bytes).
    pub decoded: u64,
    /// Instructions run through a fast form or straight through their
    /// family's handler.
    pub fast: u64,
    /// Instructions run through the general emulator.
    pub general: u64,
}

/// Decoded blocks by address (a few hundred KiB at most; nothing
/// allocated on a hit).
pub struct BlockCache<N> {
    slots: Box<[Option<Block<N>>]>,
    stats: CacheStats,
}

impl<N: Clone> Default for BlockCache<N> {
    fn default() -> Self {
        Self {
            slots: vec![None; SLOTS].into_boxed_slice(),
            stats: CacheStats::default(),
        }
    }
}

impl<N> std::fmt::Debug for BlockCache<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<N> BlockCache<N> {
    /// What the cache has done so far.
    #[must_use]
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Forgets every block and every note (when what the notes judged by
    /// changed).
    pub fn clear(&mut self) {
        for slot in self.slots.iter_mut() {
            *slot = None;
        }
    }
}

/// Where a run ended.
#[derive(Debug)]
pub enum End {
    /// The driver said so (before an instruction, which did not run, or
    /// after one).
    Driver,
    /// The code at EIP is not one a block can hold: 16-bit code, a fetch
    /// that faults or crosses the CS limit, an instruction that crosses a
    /// page or does not decode. The general path takes it (and raises its
    /// fault).
    NoBlock,
    /// The instruction at EIP stopped: the vCPU is as before it.
    Stopped(Stop),
    /// A HLT retired.
    Halted,
}

/// What a run did.
#[derive(Debug)]
pub struct Ran {
    /// Instructions retired.
    pub retired: u32,
    /// Why it ended.
    pub end: End,
}

/// The caller's say between instructions.
pub trait Driver<M: ?Sized, N> {
    /// Before the instruction at EIP: whether to run it. `note` is its
    /// note slot, kept with its decoding.
    fn before(
        &mut self,
        cpu: &Cpu,
        machine: &mut M,
        instr: &Instruction,
        note: &mut Option<N>,
    ) -> bool;

    /// After an instruction retired with `outcome` (not HLT: a run ends
    /// at HLT): whether to go on.
    fn after(&mut self, cpu: &Cpu, machine: &mut M, outcome: Outcome) -> bool;

    /// [`Driver::before`] declined the instruction at EIP: `ahead` is it
    /// and the rest of its straight-line block (which the run reaches
    /// unless something stops it), each with its note. Whether to run it
    /// after all. By default, no.
    fn run_on(&mut self, cpu: &Cpu, machine: &mut M, ahead: &mut [Op<N>]) -> bool {
        let _ = (cpu, machine, ahead);
        false
    }
}

/// The slot of a block at `eip`.
fn slot_of(eip: u32) -> usize {
    super::decode_cache::slot_hash(eip, SLOT_BITS)
}

/// The fetch access of the current privilege level.
fn fetch_access(cpu: &Cpu) -> Access {
    Access {
        kind: AccessKind::Execute,
        user: cpu.cpl == 3,
    }
}

/// Fetches `len` bytes of code at CS:`eip` as the CPU would (limit,
/// paging), or None if any of them faults.
fn fetch_code(cpu: &Cpu, machine: &mut dyn Machine, eip: u32, buf: &mut [u8]) -> bool {
    let cs = &cpu.segment(SegReg::Cs).cache;
    #[allow(clippy::cast_possible_truncation)] // at most MAX_BLOCK_BYTES
    let len = buf.len() as u32;
    if !cs.contains(eip, len) {
        return false;
    }
    let linear = cs.base.wrapping_add(eip);
    machine.read_linear(linear, buf, fetch_access(cpu)).is_ok()
}

/// Decodes the block at CS:EIP (32-bit code), or None if its first
/// instruction cannot be in one.
fn decode_block<N>(cpu: &Cpu, machine: &mut dyn Machine) -> Option<Block<N>> {
    let cs = &cpu.segment(SegReg::Cs).cache;
    let eip = cpu.eip;
    let linear = cs.base.wrapping_add(eip);
    let to_page_end = 0x1000 - (linear & 0xfff);
    // Within the CS limit (code segments expand up).
    if eip > cs.limit {
        return None;
    }
    let to_limit = u64::from(cs.limit) + 1 - u64::from(eip);
    #[allow(clippy::cast_possible_truncation)] // at most MAX_BLOCK_BYTES
    let len = u64::from(to_page_end.min(MAX_BLOCK_BYTES)).min(to_limit) as usize;
    let mut bytes = vec![0u8; len];
    if len == 0 || !fetch_code(cpu, machine, eip, &mut bytes) {
        return None;
    }
    let mut decoder = Decoder::with_ip(32, &bytes, u64::from(eip), DecoderOptions::NONE);
    let mut ops = Vec::new();
    let mut instr = Instruction::default();
    let mut end = 0;
    while decoder.can_decode() && ops.len() < MAX_BLOCK_OPS {
        decoder.decode_out(&mut instr);
        if decoder.last_error() != DecoderError::None || instr.is_invalid() {
            // Crosses the page or the limit, or invalid: the general path
            // fetches it.
            break;
        }
        end += instr.len();
        ops.push(Op {
            instr,
            form: form(&instr),
            note: None,
        });
        if instr.flow_control() != FlowControl::Next {
            break;
        }
    }
    if ops.is_empty() {
        return None;
    }
    bytes.truncate(end);
    Some(Block { eip, bytes, ops })
}

/// Runs guest instructions from CS:EIP through kept blocks while the
/// driver lets it and they retire, at most `budget`.
pub fn run<M, N, D>(
    cpu: &mut Cpu,
    machine: &mut M,
    cache: &mut BlockCache<N>,
    driver: &mut D,
    budget: u32,
) -> Ran
where
    M: Machine,
    N: Clone,
    D: Driver<M, N> + ?Sized,
{
    let mut retired = 0;
    let end = 'blocks: loop {
        if retired >= budget {
            break End::Driver;
        }
        if !cpu.segment(SegReg::Cs).cache.big {
            break End::NoBlock;
        }
        let eip = cpu.eip;
        let slot = &mut cache.slots[slot_of(eip)];
        let mut current = [0u8; MAX_BLOCK_BYTES as usize];
        let kept = match slot {
            Some(block) if block.eip == eip => {
                let current = &mut current[..block.bytes.len()];
                fetch_code(cpu, machine, eip, current) && *current == block.bytes[..]
            }
            _ => false,
        };
        if kept {
            cache.stats.hits += 1;
        } else {
            let Some(block) = decode_block(cpu, machine) else {
                break End::NoBlock;
            };
            cache.stats.decoded += 1;
            *slot = Some(block);
        }
        let Some(block) = slot.as_mut() else {
            break End::NoBlock;
        };
        let block_linear = cpu.segment(SegReg::Cs).cache.base.wrapping_add(block.eip);
        let mut at = block.eip;
        let mut index = 0;
        while index < block.ops.len() {
            if retired >= budget {
                break 'blocks End::Driver;
            }
            let op = &mut block.ops[index];
            if !driver.before(cpu, machine, &op.instr, &mut op.note)
                && !driver.run_on(cpu, machine, &mut block.ops[index..])
            {
                break 'blocks End::Driver;
            }
            let op = &block.ops[index];
            let result = if matches!(op.form, Form::General) {
                cache.stats.general += 1;
                super::execute(cpu, machine, &op.instr).map(|outcome| (outcome, true))
            } else {
                cache.stats.fast += 1;
                execute_fast(cpu, machine, &op.instr, op.form, block_linear)
                    .map(|wrote_block_page| (Outcome::Retired, wrote_block_page))
            };
            let (outcome, fetch_again) = match result {
                Ok(done) => done,
                Err(stop) => break 'blocks End::Stopped(stop),
            };
            retired += 1;
            #[allow(clippy::cast_possible_truncation)] // at most 15
            let next = at.wrapping_add(op.instr.len() as u32);
            if outcome == Outcome::Halted {
                break 'blocks End::Halted;
            }
            if !driver.after(cpu, machine, outcome) {
                break 'blocks End::Driver;
            }
            if cpu.eip != next || outcome != Outcome::Retired {
                // A branch taken (or an interrupt delivered): the next
                // block.
                continue 'blocks;
            }
            if fetch_again && index + 1 < block.ops.len() {
                // The general emulator may have changed anything (paging,
                // the CS limit, the code itself): the rest of the block is
                // fetched and compared again before it runs.
                let from = (next - block.eip) as usize;
                let rest = &mut current[..block.bytes.len() - from];
                if !(fetch_code(cpu, machine, next, rest) && *rest == block.bytes[from..]) {
                    continue 'blocks;
                }
            }
            at = next;
            index += 1;
        }
    };
    Ran { retired, end }
}

/// Runs a fast form; returns whether it stored into the block's page
/// (linear page `block_linear`'s), after which the rest of the block is
/// fetched again. On a fault the vCPU is as before.
#[inline]
fn execute_fast(
    cpu: &mut Cpu,
    machine: &mut dyn Machine,
    instr: &Instruction,
    form: Form,
    block_linear: u32,
) -> Result<bool, Stop> {
    let gpr = cpu.gpr;
    let eflags = cpu.eflags;
    #[allow(clippy::cast_possible_truncation)] // at most 15
    let next_eip = cpu.eip.wrapping_add(instr.len() as u32);
    let mut ctx = Ctx {
        cpu,
        machine,
        instr,
        next_eip,
        outcome: Outcome::Retired,
        shadow: false,
    };
    let result = match form {
        // Where it stored is not known: the rest of the block is fetched
        // again if it may have.
        Form::Handler { handler, may_store } => handler(&mut ctx).map(|()| may_store),
        form => run_form(&mut ctx, form).map(|stored| {
            stored.is_some_and(|(segment, offset)| {
                let linear = ctx.cpu.segment(segment).cache.base.wrapping_add(offset);
                // A 4-byte store may reach into the next page too.
                (linear >> 12) == (block_linear >> 12)
                    || (linear.wrapping_add(3) >> 12) == (block_linear >> 12)
            })
        }),
    };
    match result {
        Ok(stored_block_page) => {
            let (next_eip, shadow) = (ctx.next_eip, ctx.shadow);
            cpu.eip = next_eip;
            cpu.eflags &= !Eflags::RF;
            cpu.interrupt_shadow = shadow;
            Ok(stored_block_page)
        }
        Err(stop) => {
            cpu.gpr = gpr;
            cpu.eflags = eflags;
            Err(stop)
        }
    }
}

#[inline]
fn read(ctx: &mut Ctx<'_>, loc: Loc) -> Result<u32, Stop> {
    match loc {
        Loc::Reg(register) => Ok(ctx.cpu.gpr[register as usize]),
        Loc::Imm(value) => Ok(value),
        Loc::Mem(mem) => {
            let offset = mem.offset(ctx.cpu);
            ctx.read_mem(mem.segment, offset, 4)
        }
    }
}

/// The segment and offset a write to `loc` stores at, if memory.
type Stored = Option<(SegReg, u32)>;

#[inline]
fn write(ctx: &mut Ctx<'_>, loc: Loc, value: u32) -> Result<Stored, Stop> {
    match loc {
        Loc::Reg(register) => {
            ctx.cpu.gpr[register as usize] = value;
            Ok(None)
        }
        Loc::Mem(mem) => {
            let offset = mem.offset(ctx.cpu);
            ctx.write_mem(mem.segment, offset, 4, value)?;
            Ok(Some((mem.segment, offset)))
        }
        Loc::Imm(_) => Err(Stop::Machine("write to an immediate operand".into())),
    }
}

/// Reads a destination the instruction writes back: memory with write
/// intent, as [`super::alu`] does.
#[inline]
fn read_rmw(ctx: &mut Ctx<'_>, loc: Loc) -> Result<u32, Stop> {
    match loc {
        Loc::Mem(mem) => {
            let offset = mem.offset(ctx.cpu);
            ctx.read_mem_rmw(mem.segment, offset, 4)
        }
        other => read(ctx, other),
    }
}

#[inline]
fn check_target(ctx: &Ctx<'_>, target: u32) -> Result<(), Stop> {
    if ctx.cpu.segment(SegReg::Cs).cache.contains(target, 1) {
        Ok(())
    } else {
        Err(Exception::gp(0).into())
    }
}

/// The stack store of a push just made.
#[inline]
fn pushed(ctx: &Ctx<'_>) -> Stored {
    Some((SegReg::Ss, ctx.stack_pointer()))
}

/// Runs a fast form: the same steps, in the same order, as the general
/// emulator's handler of the instruction.
#[inline]
fn run_form(ctx: &mut Ctx<'_>, form: Form) -> Result<Stored, Stop> {
    match form {
        Form::General | Form::Handler { .. } => Err(Stop::Machine(
            "a general instruction in the fast path".into(),
        )),
        Form::Mov { dst, src } => {
            let value = read(ctx, src)?;
            write(ctx, dst, value)
        }
        Form::Alu { op, dst, src } => {
            let writes = !matches!(op, AluOp::Cmp | AluOp::Test);
            let dest = if writes {
                read_rmw(ctx, dst)?
            } else {
                read(ctx, dst)?
            };
            let source = read(ctx, src)?;
            let (result, status) = match op {
                AluOp::Add => flags::add(dest, source, false, 4),
                AluOp::Sub | AluOp::Cmp => flags::sub(dest, source, false, 4),
                AluOp::Or => (dest | source, flags::logic(dest | source, 4)),
                AluOp::Xor => (dest ^ source, flags::logic(dest ^ source, 4)),
                AluOp::And | AluOp::Test => (dest & source, flags::logic(dest & source, 4)),
            };
            let stored = if writes {
                write(ctx, dst, result)?
            } else {
                None
            };
            flags::update(&mut ctx.cpu.eflags, STATUS, status);
            Ok(stored)
        }
        Form::IncDec { inc, dst } => {
            let value = read_rmw(ctx, dst)?;
            let eflags = ctx.cpu.eflags;
            let (result, status) = if inc {
                flags::inc(value, 4, eflags)
            } else {
                flags::dec(value, 4, eflags)
            };
            let stored = write(ctx, dst, result)?;
            flags::update(&mut ctx.cpu.eflags, STATUS, status);
            Ok(stored)
        }
        Form::Lea { dst, mem } => {
            ctx.cpu.gpr[dst as usize] = mem.offset(ctx.cpu);
            Ok(None)
        }
        Form::Push(src) => {
            let value = read(ctx, src)?;
            ctx.push(value, 4)?;
            Ok(pushed(ctx))
        }
        Form::Pop(dst) => {
            let value = ctx.pop(4)?;
            ctx.cpu.gpr[dst as usize] = value;
            Ok(None)
        }
        Form::Jmp(target) => {
            check_target(ctx, target)?;
            ctx.next_eip = target;
            Ok(None)
        }
        Form::Jcc(condition, target) => {
            if flags::condition(condition, ctx.cpu.eflags) {
                check_target(ctx, target)?;
                ctx.next_eip = target;
            }
            Ok(None)
        }
        Form::Call(target) => {
            check_target(ctx, target)?;
            ctx.push(ctx.next_eip, 4)?;
            ctx.next_eip = target;
            Ok(pushed(ctx))
        }
        Form::Ret(release) => {
            let target = ctx.pop(4)?;
            check_target(ctx, target)?;
            if release != 0 {
                let top = ctx.stack_pointer().wrapping_add(u32::from(release));
                ctx.set_stack_pointer(top);
            }
            ctx.next_eip = target;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests;
