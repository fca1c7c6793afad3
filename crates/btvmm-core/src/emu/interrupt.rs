//! Control transfers between privilege levels and code segments: exception
//! and interrupt delivery through the guest IDT, INT n / INT3 / INTO /
//! INT1, IRET, and far JMP / CALL / RET (Intel SDM vol. 3 chapters 5 and 6,
//! vol. 2 for the instructions).
//!
//! Not implemented, and reported as [`Stop::Unsupported`] when a guest uses
//! them: task gates and task switches (IRET with NT=1, far transfers to a
//! TSS or task gate), call gates, and virtual-8086 mode.

use iced_x86::{Code, Mnemonic};

use crate::cpu::{Cpu, Eflags, SegReg, Segment};
use crate::descriptor::{Descriptor, Gate, TYPE_ACCESSED, system};
use crate::exception::{Exception, Stop, vector};
use crate::machine::{Access, AccessKind, Machine};

use super::segment::{mark_accessed, read_descriptor, selector_error};
use super::{Ctx, mask};

/// What is being delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// An exception raised by the CPU (EXT = 1 in error codes it causes).
    Exception(Exception),
    /// A hardware interrupt from the interrupt controller.
    External(u8),
    /// INT n, INT3 or INTO: the gate's DPL is checked against CPL.
    Software(u8),
    /// INT1 (ICEBP): a #DB without the DPL check.
    Icebp,
}

impl Event {
    fn vector(&self) -> u8 {
        match *self {
            Self::Exception(exception) => exception.vector,
            Self::External(vector) | Self::Software(vector) => vector,
            Self::Icebp => vector::DB,
        }
    }

    /// The EXT bit of error codes raised while delivering this event.
    fn ext(&self) -> u32 {
        u32::from(matches!(self, Self::Exception(_) | Self::External(_)))
    }
}

/// Delivers an exception through the guest IDT, turning faults raised
/// during delivery into a double fault, and a fault while delivering a
/// double fault into [`Stop::TripleFault`] (SDM table 6-5).
///
/// `cpu.eip` must be the address to return to (the faulting instruction
/// for faults, the next one for traps).
pub fn deliver_exception(
    cpu: &mut Cpu,
    machine: &mut dyn Machine,
    exception: Exception,
) -> Result<(), Stop> {
    let mut current = exception;
    loop {
        if let Some(cr2) = current.cr2 {
            cpu.cr2 = cr2;
        }
        match deliver(cpu, machine, Event::Exception(current)) {
            Ok(()) => return Ok(()),
            Err(Stop::Exception(second)) => {
                if current.vector == vector::DF {
                    return Err(Stop::TripleFault);
                }
                let first_contributory = current.is_contributory();
                let first_page_fault = current.vector == vector::PF;
                let second_serious = second.is_contributory() || second.vector == vector::PF;
                current = if (first_contributory && second.is_contributory())
                    || (first_page_fault && second_serious)
                {
                    Exception::with_code(vector::DF, 0)
                } else {
                    second
                };
            }
            Err(stop) => return Err(stop),
        }
    }
}

/// Delivers a hardware interrupt (the caller checked IF and the interrupt
/// shadow). Faults during delivery are delivered as exceptions.
pub fn deliver_external(cpu: &mut Cpu, machine: &mut dyn Machine, vector: u8) -> Result<(), Stop> {
    match deliver(cpu, machine, Event::External(vector)) {
        Err(Stop::Exception(exception)) => deliver_exception(cpu, machine, exception),
        other => other,
    }
}

/// One delivery attempt through the IDT. On error nothing in `cpu` has
/// changed, but stack memory may have been written.
pub fn deliver(cpu: &mut Cpu, machine: &mut dyn Machine, event: Event) -> Result<(), Stop> {
    if cpu.eflags & Eflags::VM != 0 {
        return Err(Stop::Unsupported("virtual-8086 mode"));
    }
    let vector = event.vector();
    let ext = event.ext();
    let idt_error = u32::from(vector) * 8 + 2 + ext;
    if u32::from(vector) * 8 + 7 > u32::from(cpu.idtr.limit) {
        return Err(Exception::gp(idt_error).into());
    }
    let mut raw = [0u8; 8];
    machine.read_linear(
        cpu.idtr.base.wrapping_add(u32::from(vector) * 8),
        &mut raw,
        Access::SYSTEM_READ,
    )?;
    let gate = Gate::from_raw(u64::from_le_bytes(raw));
    if gate.code_or_data || !(gate.is_interrupt_gate() || gate.is_trap_gate()) {
        if !gate.code_or_data && gate.kind == system::TASK_GATE {
            return Err(Stop::Unsupported("task gates"));
        }
        return Err(Exception::gp(idt_error).into());
    }
    if matches!(event, Event::Software(_)) && gate.dpl < cpu.cpl {
        return Err(Exception::gp(idt_error).into());
    }
    if !gate.present {
        return Err(Exception::np(idt_error).into());
    }

    // The handler's code segment.
    if gate.selector & !3 == 0 {
        return Err(Exception::gp(ext).into());
    }
    let with_ext = |exception: fn(u32) -> Exception| move |code: u32| exception(code | ext);
    let slot = read_descriptor(cpu, machine, gate.selector, with_ext(Exception::gp))?;
    let code = slot.descriptor;
    let code_error = selector_error(gate.selector) | ext;
    if !code.is_code() || code.dpl > cpu.cpl {
        return Err(Exception::gp(code_error).into());
    }
    if !code.present {
        return Err(Exception::np(code_error).into());
    }
    let offset = if gate.is_32bit() {
        gate.offset
    } else {
        gate.offset & 0xffff
    };
    if !code.contains(offset, 1) {
        return Err(Exception::gp(0).into());
    }

    let size = if gate.is_32bit() { 4 } else { 2 };
    let error_code = match event {
        Event::Exception(exception) => exception.error_code,
        _ => None,
    };
    let old_flags = cpu.eflags;
    let old_cs = cpu.segment(SegReg::Cs).selector;
    let old_eip = cpu.eip;
    let inner = !code.is_conforming() && code.dpl < cpu.cpl;
    let new_cpl = if inner { code.dpl } else { cpu.cpl };

    let mut frame: Vec<u32> = Vec::with_capacity(6);
    let (stack, stack_pointer) = if inner {
        let (ss, esp) = inner_stack(cpu, machine, code.dpl, ext)?;
        frame.push(u32::from(cpu.segment(SegReg::Ss).selector));
        frame.push(cpu.gpr[crate::Gpr::Esp as usize]);
        (ss, esp)
    } else {
        let ss = *cpu.segment(SegReg::Ss);
        (ss, cpu.gpr[crate::Gpr::Esp as usize])
    };
    frame.push(old_flags);
    frame.push(u32::from(old_cs));
    frame.push(old_eip);
    if let Some(error_code) = error_code {
        frame.push(error_code);
    }
    let stack_fault = if inner {
        Exception::ss(selector_error(stack.selector) | ext)
    } else {
        Exception::ss(ext)
    };
    let new_sp = push_frame(
        machine,
        &stack,
        stack_pointer,
        &frame,
        size,
        new_cpl,
        stack_fault,
    )?;

    mark_accessed(machine, &slot)?;
    let mut cs_cache = code;
    cs_cache.kind |= TYPE_ACCESSED;
    *cpu.segment_mut(SegReg::Cs) = Segment {
        selector: (gate.selector & !3) | u16::from(new_cpl),
        cache: cs_cache,
    };
    if inner {
        *cpu.segment_mut(SegReg::Ss) = stack;
    }
    set_stack_pointer(cpu, &stack, new_sp);
    cpu.cpl = new_cpl;
    cpu.eip = offset;
    cpu.eflags &= !(Eflags::TF | Eflags::NT | Eflags::RF | Eflags::VM);
    if gate.is_interrupt_gate() {
        cpu.eflags &= !Eflags::IF;
    }
    cpu.interrupt_shadow = false;
    Ok(())
}

/// The stack for privilege level `dpl` from the current TSS, checked.
fn inner_stack(
    cpu: &Cpu,
    machine: &mut dyn Machine,
    dpl: u8,
    ext: u32,
) -> Result<(Segment, u32), Stop> {
    let tr = cpu.tr;
    let tss_error = selector_error(tr.selector) | ext;
    let is32 = matches!(tr.cache.kind, system::TSS32_AVAILABLE | system::TSS32_BUSY);
    let (esp_at, ss_at, width) = if is32 {
        (4 + 8 * u32::from(dpl), 8 + 8 * u32::from(dpl), 4)
    } else {
        (2 + 4 * u32::from(dpl), 4 + 4 * u32::from(dpl), 2)
    };
    if tr.is_null() || ss_at + 1 > tr.cache.limit {
        return Err(Exception::ts(tss_error).into());
    }
    let mut esp_bytes = [0u8; 4];
    machine.read_linear(
        tr.cache.base.wrapping_add(esp_at),
        &mut esp_bytes[..width],
        Access::SYSTEM_READ,
    )?;
    let mut ss_bytes = [0u8; 2];
    machine.read_linear(
        tr.cache.base.wrapping_add(ss_at),
        &mut ss_bytes,
        Access::SYSTEM_READ,
    )?;
    let esp = u32::from_le_bytes(esp_bytes);
    let ss_selector = u16::from_le_bytes(ss_bytes);
    let ss_error = selector_error(ss_selector) | ext;
    if ss_selector & !3 == 0 {
        return Err(Exception::ts(ext).into());
    }
    if (ss_selector & 3) as u8 != dpl {
        return Err(Exception::ts(ss_error).into());
    }
    let with_ext = move |code: u32| Exception::ts(code | ext);
    let slot = read_descriptor(cpu, machine, ss_selector, with_ext)?;
    let desc = slot.descriptor;
    if !desc.is_writable() || desc.dpl != dpl {
        return Err(Exception::ts(ss_error).into());
    }
    if !desc.present {
        return Err(Exception::ss(ss_error).into());
    }
    mark_accessed(machine, &slot)?;
    let mut cache = desc;
    cache.kind |= TYPE_ACCESSED;
    Ok((
        Segment {
            selector: ss_selector,
            cache,
        },
        esp,
    ))
}

/// Writes `values` as pushes (first value pushed first) below `sp` on
/// `stack`, after checking the whole frame fits; returns the new stack
/// pointer.
fn push_frame(
    machine: &mut dyn Machine,
    stack: &Segment,
    sp: u32,
    values: &[u32],
    size: u32,
    cpl: u8,
    fault: Exception,
) -> Result<u32, Stop> {
    #[allow(clippy::cast_possible_truncation)] // frames are at most 6 values
    let total = size * values.len() as u32;
    let sp = if stack.cache.big { sp } else { sp & 0xffff };
    let bottom = sp.wrapping_sub(total);
    let bottom = if stack.cache.big {
        bottom
    } else {
        bottom & 0xffff
    };
    if stack.is_null() || !stack.cache.is_writable() || !stack.cache.contains(bottom, total) {
        return Err(fault.into());
    }
    let access = Access {
        kind: AccessKind::Write,
        user: cpl == 3,
    };
    let mut at = sp;
    for value in values {
        at = at.wrapping_sub(size);
        if !stack.cache.big {
            at &= 0xffff;
        }
        machine.write_linear(
            stack.cache.base.wrapping_add(at),
            &value.to_le_bytes()[..size as usize],
            access,
        )?;
    }
    Ok(bottom)
}

fn set_stack_pointer(cpu: &mut Cpu, stack: &Segment, value: u32) {
    let esp = &mut cpu.gpr[crate::Gpr::Esp as usize];
    if stack.cache.big {
        *esp = value;
    } else {
        *esp = (*esp & 0xffff_0000) | (value & 0xffff);
    }
}

/// Executes the instruction if it belongs to this family.
pub(crate) fn execute(ctx: &mut Ctx<'_>) -> Option<Result<(), Stop>> {
    let result = match ctx.instr.mnemonic() {
        Mnemonic::Int => software_interrupt(ctx, Event::Software(ctx.instr.immediate8())),
        Mnemonic::Int3 => software_interrupt(ctx, Event::Software(vector::BP)),
        Mnemonic::Into => {
            if ctx.cpu.eflags & Eflags::OF != 0 {
                software_interrupt(ctx, Event::Software(vector::OF))
            } else {
                Ok(())
            }
        }
        Mnemonic::Int1 => software_interrupt(ctx, Event::Icebp),
        Mnemonic::Bound => bound(ctx),
        Mnemonic::Iret | Mnemonic::Iretd => iret(ctx),
        Mnemonic::Jmp if is_far(ctx.instr.code()) => far_jmp_or_call(ctx, false),
        Mnemonic::Call if is_far(ctx.instr.code()) => far_jmp_or_call(ctx, true),
        Mnemonic::Retf => far_ret(ctx),
        _ => return None,
    };
    Some(result)
}

/// BOUND r, m: #BR (a fault) unless lower <= index <= upper, all signed,
/// with the bounds at m and m + operand size.
fn bound(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let size = ctx.op_size(0);
    let index = ctx.reg(ctx.instr.op_register(0));
    let (segment, offset) = ctx.memory_operand(1);
    let lower = ctx.read_mem(segment, offset, size)?;
    let upper = ctx.read_mem(segment, offset.wrapping_add(size), size)?;
    let signed = |value: u32| -> i32 {
        // Reinterpret the operand-sized value as signed.
        #[allow(clippy::cast_possible_wrap, clippy::cast_possible_truncation)]
        if size == 2 {
            i32::from(value as u16 as i16)
        } else {
            value as i32
        }
    };
    if signed(index) < signed(lower) || signed(index) > signed(upper) {
        return Err(Exception::new(vector::BR).into());
    }
    Ok(())
}

fn is_far(code: Code) -> bool {
    matches!(
        code,
        Code::Jmp_ptr1616
            | Code::Jmp_ptr1632
            | Code::Jmp_m1616
            | Code::Jmp_m1632
            | Code::Call_ptr1616
            | Code::Call_ptr1632
            | Code::Call_m1616
            | Code::Call_m1632
    )
}

fn software_interrupt(ctx: &mut Ctx<'_>, event: Event) -> Result<(), Stop> {
    // Traps: the return address is the next instruction.
    ctx.cpu.eip = ctx.next_eip;
    deliver(ctx.cpu, ctx.machine, event)?;
    ctx.next_eip = ctx.cpu.eip;
    ctx.outcome = super::Outcome::Delivered;
    Ok(())
}

/// EFLAGS bits IRET and POPF always restore.
const ALWAYS: u32 = Eflags::CF
    | Eflags::PF
    | Eflags::AF
    | Eflags::ZF
    | Eflags::SF
    | Eflags::TF
    | Eflags::DF
    | Eflags::OF
    | Eflags::NT;

/// The EFLAGS an IRET or POPF at privilege `cpl` produces from `popped`
/// (operand size `size`), per the SDM's rules: IOPL only changes at CPL 0,
/// IF only when CPL <= IOPL, VM never here, RF cleared by POPF.
#[must_use]
pub fn merge_flags(old: u32, popped: u32, cpl: u8, size: u32, iret: bool) -> u32 {
    let iopl = ((old & Eflags::IOPL) >> 12) as u8;
    let mut writable = ALWAYS;
    if size == 4 {
        writable |= Eflags::AC | Eflags::ID;
        if iret {
            writable |= Eflags::RF;
        }
    }
    if cpl <= iopl {
        writable |= Eflags::IF;
    }
    if cpl == 0 {
        writable |= Eflags::IOPL;
    }
    let writable = writable & mask(size);
    let mut flags = (old & !writable) | (popped & writable);
    if !iret {
        flags &= !Eflags::RF;
    }
    // Bit 1 is always set, bits 3, 5 and 15 always clear.
    (flags | 0x2) & !(0x8 | 0x20 | 0x8000)
}

/// Checks a return code-segment selector for IRET and far RET; returns its
/// descriptor slot.
fn check_return_cs(
    cpu: &Cpu,
    machine: &mut dyn Machine,
    selector: u16,
) -> Result<super::segment::DescriptorSlot, Stop> {
    if selector & !3 == 0 {
        return Err(Exception::gp(0).into());
    }
    let error = selector_error(selector);
    let rpl = (selector & 3) as u8;
    let slot = read_descriptor(cpu, machine, selector, Exception::gp)?;
    let desc = slot.descriptor;
    if !desc.is_code() || rpl < cpu.cpl {
        return Err(Exception::gp(error).into());
    }
    if (desc.is_conforming() && desc.dpl > rpl) || (!desc.is_conforming() && desc.dpl != rpl) {
        return Err(Exception::gp(error).into());
    }
    if !desc.present {
        return Err(Exception::np(error).into());
    }
    Ok(slot)
}

/// Checks the stack-segment selector of a return to an outer level.
fn check_return_ss(
    cpu: &Cpu,
    machine: &mut dyn Machine,
    selector: u16,
    rpl: u8,
) -> Result<super::segment::DescriptorSlot, Stop> {
    if selector & !3 == 0 {
        return Err(Exception::gp(0).into());
    }
    let error = selector_error(selector);
    let slot = read_descriptor(cpu, machine, selector, Exception::gp)?;
    let desc = slot.descriptor;
    if (selector & 3) as u8 != rpl || !desc.is_writable() || desc.dpl != rpl {
        return Err(Exception::gp(error).into());
    }
    if !desc.present {
        return Err(Exception::ss(error).into());
    }
    Ok(slot)
}

/// After a return to an outer privilege level, data segment registers the
/// new level may not use become null (SDM, RET and IRET).
fn null_inaccessible_segments(cpu: &mut Cpu) {
    for seg in [SegReg::Es, SegReg::Fs, SegReg::Gs, SegReg::Ds] {
        let loaded = cpu.segment(seg);
        let desc = loaded.cache;
        let data_or_nonconforming = desc.is_data() || (desc.is_code() && !desc.is_conforming());
        if !loaded.is_null() && data_or_nonconforming && desc.dpl < cpu.cpl {
            *cpu.segment_mut(seg) = Segment::default();
        }
    }
}

fn load_code_segment(
    cpu: &mut Cpu,
    machine: &mut dyn Machine,
    slot: &super::segment::DescriptorSlot,
    selector: u16,
) -> Result<(), Stop> {
    mark_accessed(machine, slot)?;
    let mut cache = slot.descriptor;
    cache.kind |= TYPE_ACCESSED;
    *cpu.segment_mut(SegReg::Cs) = Segment { selector, cache };
    Ok(())
}

fn data_segment_from(slot: &super::segment::DescriptorSlot, selector: u16) -> Segment {
    let mut cache = slot.descriptor;
    cache.kind |= TYPE_ACCESSED;
    Segment { selector, cache }
}

fn iret(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    if ctx.cpu.eflags & Eflags::NT != 0 {
        return Err(Stop::Unsupported("IRET with NT set (task return)"));
    }
    let size = ctx.operand_size();
    let new_eip = ctx.peek(0, size)?;
    let new_cs = (ctx.peek(size, size)? & 0xffff) as u16;
    let popped_flags = ctx.peek(2 * size, size)?;
    if size == 4 && popped_flags & Eflags::VM != 0 && ctx.cpu.cpl == 0 {
        return Err(Stop::Unsupported("IRET to virtual-8086 mode"));
    }
    let slot = check_return_cs(ctx.cpu, ctx.machine, new_cs)?;
    let rpl = (new_cs & 3) as u8;
    let new_eip = new_eip & mask(size);
    if !slot.descriptor.contains(new_eip, 1) {
        return Err(Exception::gp(0).into());
    }
    let old_cpl = ctx.cpu.cpl;
    let flags = merge_flags(ctx.cpu.eflags, popped_flags, old_cpl, size, true);
    if rpl == old_cpl {
        let sp = ctx.stack_pointer().wrapping_add(3 * size);
        load_code_segment(ctx.cpu, ctx.machine, &slot, new_cs)?;
        ctx.set_stack_pointer(sp);
    } else {
        let new_esp = ctx.peek(3 * size, size)?;
        let new_ss = (ctx.peek(4 * size, size)? & 0xffff) as u16;
        let ss_slot = check_return_ss(ctx.cpu, ctx.machine, new_ss, rpl)?;
        load_code_segment(ctx.cpu, ctx.machine, &slot, new_cs)?;
        mark_accessed(ctx.machine, &ss_slot)?;
        let stack = data_segment_from(&ss_slot, new_ss);
        *ctx.cpu.segment_mut(SegReg::Ss) = stack;
        set_stack_pointer(ctx.cpu, &stack, new_esp & mask(size));
        ctx.cpu.cpl = rpl;
        null_inaccessible_segments(ctx.cpu);
    }
    ctx.cpu.cpl = rpl;
    ctx.cpu.eflags = flags;
    ctx.next_eip = new_eip;
    Ok(())
}

fn far_target(ctx: &mut Ctx<'_>) -> Result<(u16, u32), Stop> {
    match ctx.instr.code() {
        Code::Jmp_ptr1616 | Code::Call_ptr1616 => Ok((
            ctx.instr.far_branch_selector(),
            u32::from(ctx.instr.far_branch16()),
        )),
        Code::Jmp_ptr1632 | Code::Call_ptr1632 => {
            Ok((ctx.instr.far_branch_selector(), ctx.instr.far_branch32()))
        }
        _ => {
            let size = if matches!(ctx.instr.code(), Code::Jmp_m1616 | Code::Call_m1616) {
                2
            } else {
                4
            };
            let (segment, offset) = ctx.memory_operand(0);
            let target = ctx.read_mem(segment, offset, size)?;
            let selector = (ctx.read_mem(segment, offset.wrapping_add(size), 2)? & 0xffff) as u16;
            Ok((selector, target))
        }
    }
}

fn far_jmp_or_call(ctx: &mut Ctx<'_>, call: bool) -> Result<(), Stop> {
    let (selector, offset) = far_target(ctx)?;
    let size = ctx.operand_size();
    if selector & !3 == 0 {
        return Err(Exception::gp(0).into());
    }
    let error = selector_error(selector);
    let slot = read_descriptor(ctx.cpu, ctx.machine, selector, Exception::gp)?;
    let desc: Descriptor = slot.descriptor;
    if !desc.code_or_data {
        return Err(match desc.kind {
            system::CALL_GATE16 | system::CALL_GATE32 => Stop::Unsupported("call gates"),
            system::TASK_GATE | system::TSS16_AVAILABLE | system::TSS32_AVAILABLE => {
                Stop::Unsupported("task switches")
            }
            _ => Exception::gp(error).into(),
        });
    }
    let rpl = (selector & 3) as u8;
    let cpl = ctx.cpu.cpl;
    let allowed = desc.is_code()
        && if desc.is_conforming() {
            desc.dpl <= cpl
        } else {
            rpl <= cpl && desc.dpl == cpl
        };
    if !allowed {
        return Err(Exception::gp(error).into());
    }
    if !desc.present {
        return Err(Exception::np(error).into());
    }
    let offset = offset & mask(size);
    if !desc.contains(offset, 1) {
        return Err(Exception::gp(0).into());
    }
    if call {
        let cs = u32::from(ctx.cpu.segment(SegReg::Cs).selector);
        let sp = ctx.stack_pointer();
        let stack = *ctx.cpu.segment(SegReg::Ss);
        let new_sp = push_frame(
            ctx.machine,
            &stack,
            sp,
            &[cs, ctx.next_eip],
            size,
            cpl,
            Exception::ss(0),
        )?;
        ctx.set_stack_pointer(new_sp);
    }
    load_code_segment(
        ctx.cpu,
        ctx.machine,
        &slot,
        (selector & !3) | u16::from(cpl),
    )?;
    ctx.next_eip = offset;
    Ok(())
}

fn far_ret(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let size = ctx.operand_size();
    let release = if matches!(ctx.instr.code(), Code::Retfw_imm16 | Code::Retfd_imm16) {
        u32::from(ctx.instr.immediate16())
    } else {
        0
    };
    let new_eip = ctx.peek(0, size)? & mask(size);
    let new_cs = (ctx.peek(size, size)? & 0xffff) as u16;
    let slot = check_return_cs(ctx.cpu, ctx.machine, new_cs)?;
    if !slot.descriptor.contains(new_eip, 1) {
        return Err(Exception::gp(0).into());
    }
    let rpl = (new_cs & 3) as u8;
    if rpl == ctx.cpu.cpl {
        let sp = ctx.stack_pointer().wrapping_add(2 * size + release);
        load_code_segment(ctx.cpu, ctx.machine, &slot, new_cs)?;
        ctx.set_stack_pointer(sp);
    } else {
        let new_esp = ctx.peek(2 * size + release, size)?;
        let new_ss = (ctx.peek(3 * size + release, size)? & 0xffff) as u16;
        let ss_slot = check_return_ss(ctx.cpu, ctx.machine, new_ss, rpl)?;
        load_code_segment(ctx.cpu, ctx.machine, &slot, new_cs)?;
        mark_accessed(ctx.machine, &ss_slot)?;
        let stack = data_segment_from(&ss_slot, new_ss);
        *ctx.cpu.segment_mut(SegReg::Ss) = stack;
        set_stack_pointer(
            ctx.cpu,
            &stack,
            (new_esp & mask(size)).wrapping_add(release),
        );
        ctx.cpu.cpl = rpl;
        null_inaccessible_segments(ctx.cpu);
    }
    ctx.next_eip = new_eip;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{Gpr, TableRegister};
    use crate::emu::testing::{STACK, TestMachine, cpu, run};

    const GDT: u32 = 0x2000;
    const IDT: u32 = 0x3000;
    const TSS: u32 = 0x4000;
    const KERNEL_STACK: u32 = 0x9000;

    /// GDT: 1 ring-0 code, 2 ring-0 data, 3 ring-3 code, 4 ring-3 data,
    /// 5 TSS, 6 ring-0 code with base 0x1000, 7 not-present code.
    fn setup() -> (Cpu, TestMachine) {
        let mut machine = TestMachine::default();
        let entries: [u64; 8] = [
            0,
            0x00cf_9a00_0000_ffff,
            0x00cf_9200_0000_ffff,
            0x00cf_fa00_0000_ffff,
            0x00cf_f200_0000_ffff,
            0x0000_8900_4000_0067,
            0x00cf_9a00_1000_ffff,
            0x00cf_1a00_0000_ffff,
        ];
        for (index, entry) in entries.iter().enumerate() {
            #[allow(clippy::cast_possible_truncation)]
            machine.poke(GDT + index as u32 * 8, &entry.to_le_bytes());
        }
        // TSS: ESP0, SS0.
        machine.poke_u32(TSS + 4, KERNEL_STACK);
        machine.poke_u32(TSS + 8, 0x10);
        let mut cpu = cpu();
        cpu.gdtr = TableRegister {
            base: GDT,
            limit: 8 * 8 - 1,
        };
        cpu.idtr = TableRegister {
            base: IDT,
            limit: 256 * 8 - 1,
        };
        cpu.tr = Segment {
            selector: 0x28,
            cache: Descriptor::from_raw(0x0000_8b00_4000_0067),
        };
        (cpu, machine)
    }

    /// Installs a 32-bit gate for `vector` to 0x08:`handler`.
    fn gate(machine: &mut TestMachine, vector: u8, handler: u32, trap: bool, dpl: u8) {
        let kind: u64 = if trap { 0xf } else { 0xe };
        let raw = u64::from(handler & 0xffff)
            | (0x08 << 16)
            | (kind << 40)
            | (u64::from(dpl) << 45)
            | (1 << 47)
            | (u64::from(handler >> 16) << 48);
        machine.poke(IDT + u32::from(vector) * 8, &raw.to_le_bytes());
    }

    fn enter_user(cpu: &mut Cpu, machine: &mut TestMachine) {
        for (seg, selector) in [(SegReg::Ss, 0x23), (SegReg::Ds, 0x23), (SegReg::Es, 0x23)] {
            let slot = read_descriptor(cpu, machine, selector, Exception::gp).expect("descriptor");
            *cpu.segment_mut(seg) = data_segment_from(&slot, selector);
        }
        let slot = read_descriptor(cpu, machine, 0x1b, Exception::gp).expect("descriptor");
        *cpu.segment_mut(SegReg::Cs) = data_segment_from(&slot, 0x1b);
        cpu.cpl = 3;
        cpu.gpr[Gpr::Esp as usize] = 0x7000;
        cpu.eflags = 0x202;
    }

    #[test]
    fn exception_in_ring_0_uses_the_current_stack() {
        let (mut cpu, mut machine) = setup();
        gate(&mut machine, 13, 0x5000, false, 0);
        cpu.eflags = 0x246;
        deliver_exception(&mut cpu, &mut machine, Exception::gp(0x18)).expect("delivers");
        assert_eq!(cpu.eip, 0x5000);
        assert_eq!(cpu.gpr[Gpr::Esp as usize], STACK - 16);
        assert_eq!(machine.u32_at(STACK - 4), 0x246, "EFLAGS");
        assert_eq!(machine.u32_at(STACK - 8), 0x08, "CS");
        assert_eq!(machine.u32_at(STACK - 12), 0x1000, "EIP");
        assert_eq!(machine.u32_at(STACK - 16), 0x18, "error code");
        assert_eq!(cpu.eflags & Eflags::IF, 0, "interrupt gate clears IF");
    }

    #[test]
    fn interrupt_from_ring_3_switches_to_the_tss_stack_and_iret_returns() {
        let (mut cpu, mut machine) = setup();
        gate(&mut machine, 0x80, 0x5000, true, 3);
        enter_user(&mut cpu, &mut machine);
        cpu.eip = 0x6000;
        // int 0x80
        run(&mut cpu, &mut machine, &[0xcd, 0x80]).expect("system call");
        assert_eq!(cpu.cpl, 0);
        assert_eq!(cpu.eip, 0x5000);
        assert_eq!(cpu.segment(SegReg::Ss).selector, 0x10);
        assert_eq!(cpu.segment(SegReg::Cs).selector, 0x08);
        assert_eq!(cpu.gpr[Gpr::Esp as usize], KERNEL_STACK - 20);
        assert_eq!(machine.u32_at(KERNEL_STACK - 4), 0x23, "old SS");
        assert_eq!(machine.u32_at(KERNEL_STACK - 8), 0x7000, "old ESP");
        assert_eq!(machine.u32_at(KERNEL_STACK - 12), 0x202, "old EFLAGS");
        assert_eq!(machine.u32_at(KERNEL_STACK - 16), 0x1b, "old CS");
        assert_eq!(machine.u32_at(KERNEL_STACK - 20), 0x6002, "return EIP");
        assert_ne!(cpu.eflags & Eflags::IF, 0, "trap gate keeps IF");

        // The kernel loads a ring-0 DS, then IRETs back: DS is nulled.
        *cpu.segment_mut(SegReg::Ds) = data_segment_from(
            &read_descriptor(&cpu, &mut machine, 0x10, Exception::gp).expect("descriptor"),
            0x10,
        );
        run(&mut cpu, &mut machine, &[0xcf]).expect("iret");
        assert_eq!(cpu.cpl, 3);
        assert_eq!(cpu.eip, 0x6002);
        assert_eq!(cpu.gpr[Gpr::Esp as usize], 0x7000);
        assert_eq!(cpu.segment(SegReg::Ss).selector, 0x23);
        assert!(cpu.segment(SegReg::Ds).is_null(), "ring-0 DS nulled");
        assert_eq!(cpu.segment(SegReg::Es).selector, 0x23, "ring-3 ES kept");
    }

    #[test]
    fn software_interrupt_through_a_dpl_0_gate_from_ring_3_is_gp() {
        let (mut cpu, mut machine) = setup();
        gate(&mut machine, 0x40, 0x5000, false, 0);
        gate(&mut machine, 13, 0x5100, false, 0);
        enter_user(&mut cpu, &mut machine);
        cpu.eip = 0x6000;
        let result = run(&mut cpu, &mut machine, &[0xcd, 0x40]);
        assert_eq!(result, Err(Stop::Exception(Exception::gp(0x40 * 8 + 2))));
        assert_eq!(cpu.eip, 0x6000, "fault: EIP at the INT");
        deliver_exception(&mut cpu, &mut machine, Exception::gp(0x40 * 8 + 2)).expect("delivers");
        assert_eq!(cpu.eip, 0x5100);
        assert_eq!(machine.u32_at(KERNEL_STACK - 24), 0x40 * 8 + 2);
    }

    #[test]
    fn int3_and_into_are_traps() {
        let (mut cpu, mut machine) = setup();
        gate(&mut machine, 3, 0x5000, true, 3);
        gate(&mut machine, 4, 0x5200, true, 3);
        run(&mut cpu, &mut machine, &[0xcc]).expect("int3");
        assert_eq!(cpu.eip, 0x5000);
        assert_eq!(machine.u32_at(STACK - 12), 0x1001);
        let (mut cpu, mut machine) = setup();
        gate(&mut machine, 4, 0x5200, true, 3);
        run(&mut cpu, &mut machine, &[0xce]).expect("into without OF");
        assert_eq!(cpu.eip, 0x1001);
        cpu.eflags |= Eflags::OF;
        run(&mut cpu, &mut machine, &[0xce]).expect("into with OF");
        assert_eq!(cpu.eip, 0x5200);
        assert_eq!(machine.u32_at(STACK - 12), 0x1002);
    }

    #[test]
    fn missing_gates_escalate_to_double_and_triple_faults() {
        let (mut cpu, mut machine) = setup();
        gate(&mut machine, 8, 0x5800, false, 0);
        // No #GP gate: #GP while delivering #GP -> #DF.
        deliver_exception(&mut cpu, &mut machine, Exception::gp(0)).expect("double fault");
        assert_eq!(cpu.eip, 0x5800);
        assert_eq!(machine.u32_at(STACK - 16), 0, "#DF error code");
        // No #DF gate either: triple fault.
        let (mut cpu, mut machine) = setup();
        assert_eq!(
            deliver_exception(&mut cpu, &mut machine, Exception::gp(0)),
            Err(Stop::TripleFault)
        );
        // A benign first exception is not escalated: #UD without a gate
        // gives #GP(vector 6 * 8 + 2 + EXT).
        let (mut cpu, mut machine) = setup();
        gate(&mut machine, 13, 0x5100, false, 0);
        deliver_exception(&mut cpu, &mut machine, Exception::ud()).expect("delivers #GP");
        assert_eq!(cpu.eip, 0x5100);
        assert_eq!(machine.u32_at(STACK - 16), 6 * 8 + 2 + 1);
    }

    #[test]
    fn iret_flag_rules_by_privilege() {
        // At CPL 3 with IOPL 0, IRET cannot change IF or IOPL.
        assert_eq!(merge_flags(0x202, 0x3046, 3, 4, true), 0x246);
        // At CPL 0 both change.
        assert_eq!(merge_flags(0x202, 0x3046, 0, 4, true), 0x3046);
        // POPF clears RF and 16-bit forms keep the upper half.
        assert_eq!(merge_flags(0x1_0202, 0x1_0202, 0, 4, false), 0x202);
        assert_eq!(merge_flags(0x4_0202, 0x0, 0, 2, false), 0x4_0002);
    }

    #[test]
    fn far_jmp_call_and_ret_between_code_segments() {
        let (mut cpu, mut machine) = setup();
        // call 0x30:0x20 (segment 6 has base 0x1000)
        run(&mut cpu, &mut machine, &[0x9a, 0x20, 0, 0, 0, 0x30, 0]).expect("far call");
        assert_eq!(cpu.segment(SegReg::Cs).selector, 0x30);
        assert_eq!(cpu.eip, 0x20);
        assert_eq!(cpu.linear_eip(), 0x1020);
        assert_eq!(machine.u32_at(STACK - 4), 0x08);
        assert_eq!(machine.u32_at(STACK - 8), 0x1007);
        // retf 4 back (after pushing an argument below the frame)
        machine.poke(0x1020, &[0xca, 0x04, 0x00]);
        crate::emu::step(&mut cpu, &mut machine).expect("retf 4");
        assert_eq!(cpu.segment(SegReg::Cs).selector, 0x08);
        assert_eq!(cpu.eip, 0x1007);
        assert_eq!(cpu.gpr[Gpr::Esp as usize], STACK + 4);
        // jmp far [0x3000] -> not-present segment 7: #NP(0x38)
        machine.poke_u32(0x3000, 0x10);
        machine.poke(0x3004, &0x38u16.to_le_bytes());
        assert_eq!(
            run(&mut cpu, &mut machine, &[0xff, 0x2d, 0x00, 0x30, 0, 0]),
            Err(Stop::Exception(Exception::np(0x38)))
        );
        // A ring-3 code segment is not a far-jump target from ring 0.
        assert_eq!(
            run(&mut cpu, &mut machine, &[0xea, 0, 0, 0, 0, 0x1b, 0]),
            Err(Stop::Exception(Exception::gp(0x18)))
        );
        // Selector beyond the GDT: #GP(selector), e.g. the host's 0x33.
        assert_eq!(
            run(&mut cpu, &mut machine, &[0xea, 0, 0, 0, 0, 0x33, 0]),
            Err(Stop::Exception(Exception::gp(0x30)))
        );
    }

    #[test]
    fn bound_raises_br_outside_the_range() {
        let (mut cpu, mut machine) = setup();
        machine.poke_u32(0x3000, (-5i32).cast_unsigned());
        machine.poke_u32(0x3004, 10);
        for (index, inside) in [
            (-5i32, true),
            (10, true),
            (0, true),
            (11, false),
            (-6, false),
        ] {
            cpu.gpr[Gpr::Eax as usize] = index.cast_unsigned();
            cpu.eip = 0x1000;
            // bound eax, [0x3000]
            let result = run(&mut cpu, &mut machine, &[0x62, 0x05, 0x00, 0x30, 0, 0]);
            if inside {
                assert_eq!(result, Ok(crate::emu::Outcome::Retired), "{index}");
            } else {
                assert_eq!(
                    result,
                    Err(Stop::Exception(Exception::new(vector::BR))),
                    "{index}"
                );
                assert_eq!(cpu.eip, 0x1000, "a fault");
            }
        }
    }

    #[test]
    fn far_ret_to_ring_3_switches_stacks() {
        let (mut cpu, mut machine) = setup();
        // Frame: EIP, CS, ESP, SS for a return to ring 3.
        let sp = STACK - 16;
        machine.poke_u32(sp, 0x6000);
        machine.poke_u32(sp + 4, 0x1b);
        machine.poke_u32(sp + 8, 0x7000);
        machine.poke_u32(sp + 12, 0x23);
        cpu.gpr[Gpr::Esp as usize] = sp;
        run(&mut cpu, &mut machine, &[0xcb]).expect("retf");
        assert_eq!(cpu.cpl, 3);
        assert_eq!(cpu.eip, 0x6000);
        assert_eq!(cpu.segment(SegReg::Ss).selector, 0x23);
        assert_eq!(cpu.gpr[Gpr::Esp as usize], 0x7000);
    }
}
