//! Data movement: MOV between general registers, memory and immediates
//! (moffs forms included), MOVZX MOVSX MOVBE, XCHG, LEA, PUSH/POP of
//! general registers, memory and immediates, PUSHA/PUSHAD POPA/POPAD,
//! ENTER LEAVE, XLAT, and the instructions that do nothing the emulator can
//! see: NOP and the multi-byte and reserved NOPs, PAUSE, the fences and
//! the prefetches.
//!
//! MOV to or from segment, control, debug and test registers and PUSH/POP
//! of segment registers belong to other families.

use iced_x86::{Code, Instruction, Mnemonic, Register};

use crate::cpu::{Gpr, SegReg};
use crate::exception::{Exception, Stop};

use super::alu::{read_rmw, sign_extend};
use super::{Ctx, Handler, mask};

/// Executes the instruction if it belongs to this family.
pub(crate) fn execute(ctx: &mut Ctx<'_>) -> Option<Result<(), Stop>> {
    handler(ctx.instr).map(|handler| handler(ctx))
}

/// The handler of `instr` if it belongs to this family (chosen once per
/// decoding by the fast interpreter). Every handler changes only the
/// general registers and memory.
pub(crate) fn handler(instr: &Instruction) -> Option<Handler> {
    let handler: Handler = match instr.code() {
        Code::Mov_rm8_r8
        | Code::Mov_rm16_r16
        | Code::Mov_rm32_r32
        | Code::Mov_r8_rm8
        | Code::Mov_r16_rm16
        | Code::Mov_r32_rm32
        | Code::Mov_AL_moffs8
        | Code::Mov_AX_moffs16
        | Code::Mov_EAX_moffs32
        | Code::Mov_moffs8_AL
        | Code::Mov_moffs16_AX
        | Code::Mov_moffs32_EAX
        | Code::Mov_r8_imm8
        | Code::Mov_r16_imm16
        | Code::Mov_r32_imm32
        | Code::Mov_rm8_imm8
        | Code::Mov_rm16_imm16
        | Code::Mov_rm32_imm32 => mov,
        Code::Movzx_r16_rm8 | Code::Movzx_r32_rm8 | Code::Movzx_r16_rm16 | Code::Movzx_r32_rm16 => {
            mov
        }
        Code::Movsx_r16_rm8 | Code::Movsx_r32_rm8 | Code::Movsx_r16_rm16 | Code::Movsx_r32_rm16 => {
            movsx
        }
        Code::Movbe_r16_m16 | Code::Movbe_r32_m32 | Code::Movbe_m16_r16 | Code::Movbe_m32_r32 => {
            movbe
        }
        Code::Xchg_rm8_r8
        | Code::Xchg_rm16_r16
        | Code::Xchg_rm32_r32
        | Code::Xchg_r16_AX
        | Code::Xchg_r32_EAX => xchg,
        Code::Lea_r16_m | Code::Lea_r32_m => |ctx: &mut Ctx<'_>| {
            let (_, offset) = ctx.memory_operand(1);
            ctx.write_op(0, offset)
        },
        Code::Push_r16
        | Code::Push_r32
        | Code::Push_rm16
        | Code::Push_rm32
        | Code::Push_imm16
        | Code::Pushd_imm32
        | Code::Pushw_imm8
        | Code::Pushd_imm8 => push,
        Code::Pop_r16 | Code::Pop_r32 | Code::Pop_rm16 | Code::Pop_rm32 => pop,
        Code::Pushaw | Code::Pushad => pusha,
        Code::Popaw | Code::Popad => popa,
        Code::Enterw_imm16_imm8 | Code::Enterd_imm16_imm8 => enter,
        Code::Leavew | Code::Leaved => leave,
        Code::Xlat_m8 => |ctx: &mut Ctx<'_>| {
            // AL <- [seg:EBX + AL] (BX with 16-bit addressing); iced gives the
            // memory operand with EBX as base and AL as index.
            ctx.read_op(0).map(|value| ctx.set_reg(Register::AL, value))
        },
        _ => match instr.mnemonic() {
            // NOP (90, 66 90, 0F 1F /0) and the reserved NOPs (0F 0D, 0F 18-0F
            // 1F): no memory access even with a memory operand. ENDBR32 is a
            // NOP without CET, which the virtual CPU does not have.
            Mnemonic::Nop
            | Mnemonic::Reservednop
            | Mnemonic::Endbr32
            | Mnemonic::Pause
            | Mnemonic::Lfence
            | Mnemonic::Mfence
            | Mnemonic::Sfence
            // Prefetches never fault.
            | Mnemonic::Prefetch
            | Mnemonic::Prefetchw
            | Mnemonic::Prefetchwt1
            | Mnemonic::Prefetchnta
            | Mnemonic::Prefetcht0
            | Mnemonic::Prefetcht1
            | Mnemonic::Prefetcht2
            | Mnemonic::Prefetchit0
            | Mnemonic::Prefetchit1 => |_: &mut Ctx<'_>| Ok(()),
            _ => return None,
        },
    };
    Some(handler)
}

/// MOV and MOVZX: the source, zero-extended, to the destination.
fn mov(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let value = ctx.read_op(1)?;
    ctx.write_op(0, value)
}

fn movsx(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let size = ctx.op_size(1);
    let value = ctx.read_op(1)?;
    ctx.write_op(0, super::alu::low32_signed(sign_extend(value, size)))
}

fn movbe(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let value = ctx.read_op(1)?;
    let swapped = if ctx.op_size(0) == 2 {
        ((value & 0xff) << 8) | ((value >> 8) & 0xff)
    } else {
        value.swap_bytes()
    };
    ctx.write_op(0, swapped)
}

fn xchg(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let first = read_rmw(ctx, 0)?;
    let second = ctx.read_op(1)?;
    ctx.write_op(0, second)?;
    ctx.write_op(1, first)
}

/// The stack-address-size wrap of a stack offset.
fn stack_wrap(ctx: &Ctx<'_>, offset: u32) -> u32 {
    if ctx.cpu.segment(SegReg::Ss).cache.big {
        offset
    } else {
        offset & 0xffff
    }
}

fn push(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let size = ctx.operand_size();
    // Read before the push: PUSH ESP pushes the old value, PUSH [ESP+n]
    // addresses with the old ESP.
    let value = ctx.read_op(0)? & mask(size);
    ctx.push(value, size)
}

fn pop(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let size = ctx.operand_size();
    // ESP is incremented before the destination is written: POP ESP loads
    // the popped value, POP [ESP+n] addresses with the new ESP.
    let value = ctx.pop(size)?;
    ctx.write_op(0, value)
}

const PUSHA_ORDER: [Gpr; 8] = [
    Gpr::Eax,
    Gpr::Ecx,
    Gpr::Edx,
    Gpr::Ebx,
    Gpr::Esp,
    Gpr::Ebp,
    Gpr::Esi,
    Gpr::Edi,
];

fn pusha(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let size = ctx.operand_size();
    let top = ctx.stack_pointer();
    // The ESP pushed is the value before the instruction.
    let values = PUSHA_ORDER.map(|gpr| ctx.cpu.gpr[gpr as usize] & mask(size));
    let slots = core::array::from_fn::<u32, 8, _>(|i| {
        // i < 8
        #[allow(clippy::cast_possible_truncation)]
        let depth = (i as u32 + 1) * size;
        stack_wrap(ctx, top.wrapping_sub(depth))
    });
    // Nothing is written unless all eight pushes can be.
    for &slot in &slots {
        ctx.read_mem_rmw(SegReg::Ss, slot, size)?;
    }
    for (&slot, &value) in slots.iter().zip(&values) {
        ctx.write_mem(SegReg::Ss, slot, size, value)?;
    }
    let new_top = stack_wrap(ctx, top.wrapping_sub(8 * size));
    ctx.set_stack_pointer(new_top);
    Ok(())
}

fn popa(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let size = ctx.operand_size();
    let top = ctx.stack_pointer();
    let mut values = [0u32; 8];
    // Slot 0 is EDI (pushed last) up to slot 7, EAX.
    for (i, value) in (0u32..).zip(values.iter_mut()) {
        let slot = stack_wrap(ctx, top.wrapping_add(i * size));
        *value = ctx.read_mem(SegReg::Ss, slot, size)?;
    }
    for (gpr, value) in PUSHA_ORDER.iter().rev().zip(values) {
        // The stored ESP is skipped.
        if *gpr == Gpr::Esp {
            continue;
        }
        let register = gpr_register(*gpr, size);
        ctx.set_reg(register, value);
    }
    let new_top = stack_wrap(ctx, top.wrapping_add(8 * size));
    ctx.set_stack_pointer(new_top);
    Ok(())
}

/// The iced register for a general register at operand size 2 or 4.
fn gpr_register(gpr: Gpr, size: u32) -> Register {
    let (word, dword) = match gpr {
        Gpr::Eax => (Register::AX, Register::EAX),
        Gpr::Ecx => (Register::CX, Register::ECX),
        Gpr::Edx => (Register::DX, Register::EDX),
        Gpr::Ebx => (Register::BX, Register::EBX),
        Gpr::Esp => (Register::SP, Register::ESP),
        Gpr::Ebp => (Register::BP, Register::EBP),
        Gpr::Esi => (Register::SI, Register::ESI),
        Gpr::Edi => (Register::DI, Register::EDI),
    };
    if size == 2 { word } else { dword }
}

/// Most values ENTER pushes: EBP, 31 frame pointers, the frame pointer.
const ENTER_MAX_PUSHES: usize = 33;

fn enter(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let size = ctx.operand_size();
    let alloc = u32::from(ctx.instr.immediate16());
    let level = u32::from(ctx.instr.immediate8_2nd() & 0x1f);
    let big_stack = ctx.cpu.segment(SegReg::Ss).cache.big;
    let top = ctx.stack_pointer();
    let ebp = ctx.cpu.gpr[Gpr::Ebp as usize];
    // All reads first: the values to push, in order.
    let mut pushes = [0u32; ENTER_MAX_PUSHES];
    let mut count = 0;
    let mut record = |value: u32| {
        if let Some(slot) = pushes.get_mut(count) {
            *slot = value;
            count += 1;
        }
    };
    record(ebp & mask(size));
    let frame = stack_wrap(ctx, top.wrapping_sub(size));
    if level > 0 {
        // The enclosing frames' pointers, read through EBP (BP on a 16-bit
        // stack).
        let mut pointer = stack_wrap(ctx, ebp);
        for _ in 1..level {
            pointer = stack_wrap(ctx, pointer.wrapping_sub(size));
            record(ctx.read_mem(SegReg::Ss, pointer, size)?);
        }
        record(frame & mask(size));
    }
    let pushes = pushes.get(..count).unwrap_or(&[]);
    let mut slots = [0u32; ENTER_MAX_PUSHES];
    let mut depth = 0u32;
    for slot in slots.iter_mut().take(pushes.len()) {
        depth += size;
        *slot = stack_wrap(ctx, top.wrapping_sub(depth));
    }
    let new_top = stack_wrap(ctx, top.wrapping_sub(depth).wrapping_sub(alloc));
    // Nothing is written unless every push can be and the new stack
    // pointer is within the stack segment.
    for &slot in slots.iter().take(pushes.len()) {
        ctx.read_mem_rmw(SegReg::Ss, slot, size)?;
    }
    if !ctx.cpu.segment(SegReg::Ss).cache.contains(new_top, 1) {
        return Err(Exception::ss(0).into());
    }
    for (&slot, &value) in slots.iter().zip(pushes) {
        ctx.write_mem(SegReg::Ss, slot, size, value)?;
    }
    if big_stack {
        ctx.set_reg(Register::EBP, frame);
    } else {
        ctx.set_reg(Register::BP, frame);
    }
    ctx.set_stack_pointer(new_top);
    Ok(())
}

fn leave(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let size = ctx.operand_size();
    // ESP <- EBP (SP <- BP on a 16-bit stack), then pop EBP (BP with a
    // 16-bit operand size).
    let frame = stack_wrap(ctx, ctx.cpu.gpr[Gpr::Ebp as usize]);
    let value = ctx.read_mem(SegReg::Ss, frame, size)?;
    let new_top = stack_wrap(ctx, frame.wrapping_add(size));
    ctx.set_stack_pointer(new_top);
    ctx.set_reg(gpr_register(Gpr::Ebp, size), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emu::alu::tests::{claims, exec, fault, get, set, setup, status};
    use crate::emu::flags::STATUS;
    use crate::emu::testing::STACK;

    use Gpr::{Eax, Ebp, Ebx, Ecx, Edi, Edx, Esi, Esp};

    #[test]
    fn mov_between_registers_memory_and_immediates() {
        let (mut c, mut m) = setup(STATUS);
        set(&mut c, Ebx, 0x1234_5678);
        exec(&mut c, &mut m, &[0x89, 0xd8]); // mov %ebx,%eax
        assert_eq!(get(&c, Eax), 0x1234_5678);
        exec(&mut c, &mut m, &[0x88, 0xe0]); // mov %ah,%al
        assert_eq!(get(&c, Eax), 0x1234_5656);
        set(&mut c, Ecx, 0xaaaa_aaaa);
        exec(&mut c, &mut m, &[0x66, 0x89, 0xd9]); // mov %bx,%cx
        assert_eq!(get(&c, Ecx), 0xaaaa_5678);
        exec(&mut c, &mut m, &[0xb8, 0x78, 0x56, 0x34, 0x12]); // mov $0x12345678,%eax
        exec(&mut c, &mut m, &[0xb4, 0x9a]); // mov $0x9a,%ah
        assert_eq!(get(&c, Eax), 0x1234_9a78);
        set(&mut c, Edx, 0xffff_ffff);
        exec(&mut c, &mut m, &[0x66, 0xba, 0x34, 0x12]); // mov $0x1234,%dx
        assert_eq!(get(&c, Edx), 0xffff_1234);
        exec(&mut c, &mut m, &[0x89, 0x05, 0x00, 0x20, 0x00, 0x00]); // mov %eax,0x2000
        assert_eq!(m.u32_at(0x2000), 0x1234_9a78);
        exec(&mut c, &mut m, &[0x8b, 0x0d, 0x00, 0x20, 0x00, 0x00]); // mov 0x2000,%ecx
        assert_eq!(get(&c, Ecx), 0x1234_9a78);
        let movl = [0xc7, 0x05, 0x04, 0x20, 0x00, 0x00, 0xef, 0xbe, 0xad, 0xde]; // movl $0xdeadbeef,0x2004
        exec(&mut c, &mut m, &movl);
        assert_eq!(m.u32_at(0x2004), 0xdead_beef);
        exec(&mut c, &mut m, &[0xc6, 0x05, 0x08, 0x20, 0x00, 0x00, 0x55]); // movb $0x55,0x2008
        assert_eq!(m.memory[0x2008], 0x55);
        let movw = [0x66, 0xc7, 0x05, 0x0a, 0x20, 0x00, 0x00, 0x34, 0x12]; // movw $0x1234,0x200a
        exec(&mut c, &mut m, &movw);
        assert_eq!(m.u16_at(0x200a), 0x1234);
        set(&mut c, Ebx, 0x2000);
        exec(&mut c, &mut m, &[0x8a, 0x63, 0x04]); // mov 0x4(%ebx),%ah
        assert_eq!(get(&c, Eax), 0x1234_ef78);
        assert_eq!(status(&c), STATUS, "MOV changes no flags");
    }

    #[test]
    fn mov_with_moffs_and_segment_overrides() {
        let (mut c, mut m) = setup(0);
        m.poke_u32(0x2000, 0x8765_4321);
        exec(&mut c, &mut m, &[0xa1, 0x00, 0x20, 0x00, 0x00]); // mov 0x2000,%eax
        assert_eq!(get(&c, Eax), 0x8765_4321);
        exec(&mut c, &mut m, &[0xa2, 0x10, 0x20, 0x00, 0x00]); // mov %al,0x2010
        exec(&mut c, &mut m, &[0x66, 0xa3, 0x12, 0x20, 0x00, 0x00]); // mov %ax,0x2012
        assert_eq!(m.u32_at(0x2010), 0x4321_0021);
        exec(&mut c, &mut m, &[0xa0, 0x03, 0x20, 0x00, 0x00]); // mov 0x2003,%al
        assert_eq!(get(&c, Eax), 0x8765_4387);
        c.segment_mut(SegReg::Fs).cache.base = 0x1000;
        set(&mut c, Eax, 0);
        exec(&mut c, &mut m, &[0x64, 0xa1, 0x00, 0x10, 0x00, 0x00]); // mov %fs:0x1000,%eax
        assert_eq!(get(&c, Eax), 0x8765_4321);
        set(&mut c, Eax, 0);
        exec(&mut c, &mut m, &[0x67, 0xa1, 0x00, 0x20]); // addr16 mov 0x2000,%eax
        assert_eq!(get(&c, Eax), 0x8765_4321);
        m.unmapped_pages = vec![0x30];
        let store = [0x89, 0x05, 0x00, 0x00, 0x03, 0x00]; // mov %eax,0x30000
        fault(&mut c, &mut m, &store, Exception::page_fault(0x30000, 2));
        let load = [0x8b, 0x05, 0x00, 0x00, 0x03, 0x00]; // mov 0x30000,%eax
        fault(&mut c, &mut m, &load, Exception::page_fault(0x30000, 0));
    }

    #[test]
    fn leaves_segment_control_and_debug_registers_to_others() {
        assert!(claims(execute, &[0x89, 0xd8])); // mov %ebx,%eax
        assert!(!claims(execute, &[0x8e, 0xd8])); // mov %eax,%ds
        assert!(!claims(execute, &[0x8c, 0xd8])); // mov %ds,%eax
        assert!(!claims(execute, &[0x0f, 0x22, 0xd8])); // mov %eax,%cr3
        assert!(!claims(execute, &[0x0f, 0x20, 0xc0])); // mov %cr0,%eax
        assert!(!claims(execute, &[0x0f, 0x21, 0xf8])); // mov %db7,%eax
        assert!(!claims(execute, &[0x06])); // push %es
        assert!(!claims(execute, &[0x1f])); // pop %ds
        assert!(!claims(execute, &[0x0f, 0xa0])); // push %fs
        assert!(!claims(execute, &[0x9c])); // pushf
        assert!(!claims(execute, &[0xa4])); // movsb
    }

    #[test]
    fn movzx_movsx_movbe() {
        let (mut c, mut m) = setup(0);
        set(&mut c, Ebx, 0x8281);
        exec(&mut c, &mut m, &[0x0f, 0xb6, 0xc3]); // movzbl %bl,%eax
        assert_eq!(get(&c, Eax), 0x81);
        exec(&mut c, &mut m, &[0x0f, 0xbe, 0xc3]); // movsbl %bl,%eax
        assert_eq!(get(&c, Eax), 0xffff_ff81);
        set(&mut c, Eax, 0x1234_5678);
        exec(&mut c, &mut m, &[0x66, 0x0f, 0xbe, 0xc3]); // movsbw %bl,%ax
        assert_eq!(get(&c, Eax), 0x1234_ff81);
        exec(&mut c, &mut m, &[0x0f, 0xb7, 0xc3]); // movzwl %bx,%eax
        assert_eq!(get(&c, Eax), 0x8281);
        m.poke(0x2000, &[0x00, 0x80]);
        exec(&mut c, &mut m, &[0x0f, 0xbf, 0x05, 0x00, 0x20, 0x00, 0x00]); // movswl 0x2000,%eax
        assert_eq!(get(&c, Eax), 0xffff_8000);
        exec(
            &mut c,
            &mut m,
            &[0x66, 0x0f, 0xb6, 0x05, 0x01, 0x20, 0x00, 0x00],
        ); // movzbw 0x2001,%ax
        assert_eq!(get(&c, Eax), 0xffff_0080);

        m.poke_u32(0x2000, 0x1234_5678);
        exec(
            &mut c,
            &mut m,
            &[0x0f, 0x38, 0xf0, 0x05, 0x00, 0x20, 0x00, 0x00],
        ); // movbe 0x2000,%eax
        assert_eq!(get(&c, Eax), 0x7856_3412);
        set(&mut c, Ebx, 0xaabb);
        exec(
            &mut c,
            &mut m,
            &[0x66, 0x0f, 0x38, 0xf1, 0x1d, 0x04, 0x20, 0x00, 0x00],
        ); // movbe %bx,0x2004
        assert_eq!(m.u16_at(0x2004), 0xbbaa);
        exec(
            &mut c,
            &mut m,
            &[0x0f, 0x38, 0xf1, 0x05, 0x08, 0x20, 0x00, 0x00],
        ); // movbe %eax,0x2008
        assert_eq!(m.u32_at(0x2008), 0x1234_5678);
    }

    #[test]
    fn xchg_and_nop() {
        let (mut c, mut m) = setup(0);
        set(&mut c, Eax, 1);
        set(&mut c, Ebx, 2);
        exec(&mut c, &mut m, &[0x93]); // xchg %eax,%ebx
        assert_eq!((get(&c, Eax), get(&c, Ebx)), (2, 1));
        set(&mut c, Eax, 0x1234);
        exec(&mut c, &mut m, &[0x86, 0xc4]); // xchg %al,%ah
        assert_eq!(get(&c, Eax), 0x3412);
        set(&mut c, Ebx, 0xffff_0001);
        exec(&mut c, &mut m, &[0x66, 0x93]); // xchg %ax,%bx
        assert_eq!((get(&c, Eax), get(&c, Ebx)), (0x0001, 0xffff_3412));
        m.poke_u32(0x2000, 0xcafe_f00d);
        exec(&mut c, &mut m, &[0x87, 0x05, 0x00, 0x20, 0x00, 0x00]); // xchg %eax,0x2000
        assert_eq!((get(&c, Eax), m.u32_at(0x2000)), (0xcafe_f00d, 1));
        let before = c.gpr;
        exec(&mut c, &mut m, &[0x90]); // nop, not xchg %eax,%eax
        assert_eq!(c.gpr, before);
        m.unmapped_pages = vec![0x30];
        let code = [0x87, 0x05, 0x00, 0x00, 0x03, 0x00]; // xchg %eax,0x30000
        fault(&mut c, &mut m, &code, Exception::page_fault(0x30000, 2));
    }

    #[test]
    fn lea_computes_offsets_only() {
        let (mut c, mut m) = setup(0);
        set(&mut c, Eax, 0x100);
        set(&mut c, Ebx, 0x10);
        exec(&mut c, &mut m, &[0x8d, 0x44, 0x98, 0x10]); // lea 0x10(%eax,%ebx,4),%eax
        assert_eq!(get(&c, Eax), 0x150);
        set(&mut c, Edi, 0x1234_5678);
        set(&mut c, Eax, 0xffff_ffff);
        exec(&mut c, &mut m, &[0x66, 0x8d, 0x07]); // lea (%edi),%ax
        assert_eq!(get(&c, Eax), 0xffff_5678);
        set(&mut c, Ebx, 0x0001_fff8);
        set(&mut c, Esi, 0x0001_0000);
        exec(&mut c, &mut m, &[0x67, 0x8d, 0x40, 0x10]); // lea 0x10(%bx,%si),%eax
        assert_eq!(get(&c, Eax), 0x0008, "16-bit addresses wrap");
        c.segment_mut(SegReg::Fs).cache.base = 0x1000;
        set(&mut c, Ebx, 0x3_0000);
        m.unmapped_pages = vec![0x30, 0x31];
        exec(&mut c, &mut m, &[0x64, 0x8d, 0x03]); // lea %fs:(%ebx),%eax
        assert_eq!(get(&c, Eax), 0x3_0000, "no segment base, no access");
    }

    #[test]
    fn push_and_pop() {
        let (mut c, mut m) = setup(STATUS);
        set(&mut c, Eax, 0x1122_3344);
        exec(&mut c, &mut m, &[0x50]); // push %eax
        assert_eq!((get(&c, Esp), m.u32_at(0x7ffc)), (0x7ffc, 0x1122_3344));
        set(&mut c, Ebx, 0xaaaa_bbbb);
        exec(&mut c, &mut m, &[0x66, 0x53]); // push %bx
        assert_eq!((get(&c, Esp), m.u16_at(0x7ffa)), (0x7ffa, 0xbbbb));
        exec(&mut c, &mut m, &[0x6a, 0xff]); // push $-1
        assert_eq!((get(&c, Esp), m.u32_at(0x7ff6)), (0x7ff6, 0xffff_ffff));
        exec(&mut c, &mut m, &[0x66, 0x6a, 0x80]); // pushw $-128
        assert_eq!((get(&c, Esp), m.u16_at(0x7ff4)), (0x7ff4, 0xff80));
        exec(&mut c, &mut m, &[0x68, 0x78, 0x56, 0x34, 0x12]); // push $0x12345678
        assert_eq!((get(&c, Esp), m.u32_at(0x7ff0)), (0x7ff0, 0x1234_5678));
        m.poke_u32(0x2000, 0xfeed_face);
        exec(&mut c, &mut m, &[0xff, 0x35, 0x00, 0x20, 0x00, 0x00]); // pushl 0x2000
        assert_eq!((get(&c, Esp), m.u32_at(0x7fec)), (0x7fec, 0xfeed_face));
        exec(&mut c, &mut m, &[0x54]); // push %esp: the old value
        assert_eq!((get(&c, Esp), m.u32_at(0x7fe8)), (0x7fe8, 0x7fec));
        exec(&mut c, &mut m, &[0xff, 0x74, 0x24, 0x04]); // pushl 0x4(%esp): the old ESP
        assert_eq!((get(&c, Esp), m.u32_at(0x7fe4)), (0x7fe4, 0xfeed_face));

        exec(&mut c, &mut m, &[0x58]); // pop %eax
        assert_eq!((get(&c, Eax), get(&c, Esp)), (0xfeed_face, 0x7fe8));
        exec(&mut c, &mut m, &[0x5c]); // pop %esp: the popped value
        assert_eq!(get(&c, Esp), 0x7fec);
        exec(&mut c, &mut m, &[0x8f, 0x05, 0x10, 0x20, 0x00, 0x00]); // popl 0x2010
        assert_eq!((m.u32_at(0x2010), get(&c, Esp)), (0xfeed_face, 0x7ff0));
        exec(&mut c, &mut m, &[0x8f, 0x04, 0x24]); // popl (%esp): addressed after the pop
        assert_eq!((m.u32_at(0x7ff4), get(&c, Esp)), (0x1234_5678, 0x7ff4));
        set(&mut c, Eax, 0xffff_ffff);
        exec(&mut c, &mut m, &[0x66, 0x58]); // pop %ax
        assert_eq!((get(&c, Eax), get(&c, Esp)), (0xffff_5678, 0x7ff6));
        assert_eq!(status(&c), STATUS);

        m.unmapped_pages = vec![0x30];
        set(&mut c, Esp, 0x3_0004);
        fault(&mut c, &mut m, &[0x50], Exception::page_fault(0x30000, 2)); // push %eax
        fault(&mut c, &mut m, &[0x58], Exception::page_fault(0x30004, 0)); // pop %eax
    }

    #[test]
    fn push_and_pop_on_a_16_bit_stack() {
        let (mut c, mut m) = setup(0);
        c.segment_mut(SegReg::Ss).cache.big = false;
        set(&mut c, Esp, 0x1234_0002);
        set(&mut c, Eax, 0xa1b2_c3d4);
        exec(&mut c, &mut m, &[0x50]); // push %eax: SP wraps
        assert_eq!((get(&c, Esp), m.u32_at(0xfffe)), (0x1234_fffe, 0xa1b2_c3d4));
        set(&mut c, Eax, 0);
        exec(&mut c, &mut m, &[0x58]); // pop %eax
        assert_eq!((get(&c, Eax), get(&c, Esp)), (0xa1b2_c3d4, 0x1234_0002));
    }

    #[test]
    fn pusha_and_popa() {
        let (mut c, mut m) = setup(0);
        c.gpr = [1, 2, 3, 4, STACK, 6, 7, 8];
        exec(&mut c, &mut m, &[0x60]); // pusha
        assert_eq!(get(&c, Esp), STACK - 32);
        let stored: Vec<u32> = (0..8).map(|i| m.u32_at(STACK - 32 + 4 * i)).collect();
        assert_eq!(stored, [8, 7, 6, STACK, 4, 3, 2, 1]);
        m.poke_u32(STACK - 20, 0xdead); // the stored ESP is not loaded
        c.gpr = [0, 0, 0, 0, STACK - 32, 0, 0, 0];
        exec(&mut c, &mut m, &[0x61]); // popa
        assert_eq!(c.gpr, [1, 2, 3, 4, STACK, 6, 7, 8]);

        c.gpr = [0xa_0001, 0xa_0002, 3, 4, STACK, 6, 7, 0xa_0008];
        exec(&mut c, &mut m, &[0x66, 0x60]); // pushaw
        assert_eq!(get(&c, Esp), STACK - 16);
        let stored: Vec<u16> = (0..8).map(|i| m.u16_at(STACK - 16 + 2 * i)).collect();
        assert_eq!(stored, [8, 7, 6, 0x8000, 4, 3, 2, 1]);
        c.gpr = [0xffff_0000, 0, 0, 0, STACK - 16, 0, 0, 0xffff_0000];
        exec(&mut c, &mut m, &[0x66, 0x61]); // popaw
        assert_eq!(c.gpr, [0xffff_0001, 2, 3, 4, STACK, 6, 7, 0xffff_0008]);

        // The lower half of the range is unmapped: nothing is written.
        m.unmapped_pages = vec![0x30];
        c.gpr = [1, 2, 3, 4, 0x3_1010, 6, 7, 8];
        fault(&mut c, &mut m, &[0x60], Exception::page_fault(0x3_0ffc, 2)); // pusha
        assert!(m.memory[0x3_1000..0x3_1010].iter().all(|&b| b == 0));
        set(&mut c, Esp, 0x2_fff0);
        fault(&mut c, &mut m, &[0x61], Exception::page_fault(0x3_0000, 0)); // popa
    }

    #[test]
    fn enter_and_leave() {
        let (mut c, mut m) = setup(0);
        set(&mut c, Ebp, 0x9000);
        exec(&mut c, &mut m, &[0xc8, 0x10, 0x00, 0x00]); // enter $0x10,$0
        assert_eq!((get(&c, Ebp), get(&c, Esp)), (0x7ffc, 0x7fec));
        assert_eq!(m.u32_at(0x7ffc), 0x9000);
        exec(&mut c, &mut m, &[0xc9]); // leave
        assert_eq!((get(&c, Ebp), get(&c, Esp)), (0x9000, STACK));

        // Nesting level 3: two enclosing frame pointers, then the new one.
        m.poke_u32(0x8ffc, 0xaaaa);
        m.poke_u32(0x8ff8, 0xbbbb);
        exec(&mut c, &mut m, &[0xc8, 0x08, 0x00, 0x03]); // enter $8,$3
        let stored: Vec<u32> = (0..4).map(|i| m.u32_at(0x7ffc - 4 * i)).collect();
        assert_eq!(stored, [0x9000, 0xaaaa, 0xbbbb, 0x7ffc]);
        assert_eq!((get(&c, Ebp), get(&c, Esp)), (0x7ffc, 0x7fe8));
        exec(&mut c, &mut m, &[0xc9]); // leave
        assert_eq!((get(&c, Ebp), get(&c, Esp)), (0x9000, STACK));

        // 16-bit operand size: word pushes.
        m.poke(0x8ffe, &[0xcc, 0xcc]);
        exec(&mut c, &mut m, &[0x66, 0xc8, 0x04, 0x00, 0x02]); // enterw $4,$2
        let stored: Vec<u16> = (0..3).map(|i| m.u16_at(0x7ffe - 2 * i)).collect();
        assert_eq!(stored, [0x9000, 0xcccc, 0x7ffe]);
        assert_eq!((get(&c, Ebp), get(&c, Esp)), (0x7ffe, 0x7ff6));
        exec(&mut c, &mut m, &[0x66, 0xc9]); // leavew
        assert_eq!((get(&c, Ebp), get(&c, Esp)), (0x9000, STACK));

        // The level is taken modulo 32.
        exec(&mut c, &mut m, &[0xc8, 0x00, 0x00, 0x21]); // enter $0,$0x21
        assert_eq!(get(&c, Esp), STACK - 8);

        // A push that would fault leaves memory and registers alone.
        m.unmapped_pages = vec![0x30];
        set(&mut c, Esp, 0x3_1004);
        set(&mut c, Ebp, 0x9000);
        let enter = [0xc8, 0x00, 0x00, 0x03]; // enter $0,$3
        fault(&mut c, &mut m, &enter, Exception::page_fault(0x3_0ffc, 2));
        assert_eq!(m.u32_at(0x3_1000), 0);
        set(&mut c, Ebp, 0x3_0000);
        fault(&mut c, &mut m, &[0xc9], Exception::page_fault(0x3_0000, 0)); // leave
    }

    #[test]
    fn xlat_reads_the_table() {
        let (mut c, mut m) = setup(0);
        m.poke(0x2005, &[0x99]);
        m.poke(0x2105, &[0x77]);
        set(&mut c, Ebx, 0x2000);
        set(&mut c, Eax, 0x1234_5605);
        exec(&mut c, &mut m, &[0xd7]); // xlat %ds:(%ebx)
        assert_eq!(get(&c, Eax), 0x1234_5699);
        set(&mut c, Ebx, 0x0001_2000);
        set(&mut c, Eax, 0x05);
        exec(&mut c, &mut m, &[0x67, 0xd7]); // addr16 xlat %ds:(%bx)
        assert_eq!(get(&c, Eax), 0x99);
        c.segment_mut(SegReg::Fs).cache.base = 0x100;
        set(&mut c, Ebx, 0x2000);
        set(&mut c, Eax, 0x05);
        exec(&mut c, &mut m, &[0x64, 0xd7]); // xlat %fs:(%ebx)
        assert_eq!(get(&c, Eax), 0x77);
    }

    #[test]
    fn nops_fences_and_prefetches_do_nothing() {
        let (mut c, mut m) = setup(STATUS);
        m.unmapped_pages = vec![0x30];
        let codes: [&[u8]; 11] = [
            &[0x90],                                                 // nop
            &[0x66, 0x90],                                           // xchg %ax,%ax
            &[0x0f, 0x1f, 0x44, 0x00, 0x00],                         // nopl 0x0(%eax,%eax,1)
            &[0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00], // nopw 0x0(%eax,%eax,1)
            &[0x0f, 0x1f, 0x05, 0x00, 0x00, 0x03, 0x00],             // nopl 0x30000
            &[0xf3, 0x90],                                           // pause
            &[0x0f, 0xae, 0xe8],                                     // lfence
            &[0x0f, 0xae, 0xf0],                                     // mfence
            &[0x0f, 0xae, 0xf8],                                     // sfence
            &[0x0f, 0x18, 0x05, 0x00, 0x00, 0x03, 0x00],             // prefetchnta 0x30000
            &[0x0f, 0x0d, 0x0d, 0x00, 0x00, 0x03, 0x00],             // prefetchw 0x30000
        ];
        for code in codes {
            let before = c.clone();
            exec(&mut c, &mut m, code);
            c.eip = before.eip;
            assert_eq!(c, before);
        }
    }
}
