//! Near control transfers: JMP (rel8, rel16, rel32, r/m16, r/m32), Jcc,
//! JCXZ/JECXZ, LOOP/LOOPE/LOOPNE, CALL (rel, r/m) and RET / RET imm16,
//! with 16- and 32-bit operand sizes (a 16-bit operand size masks the
//! target to 16 bits and pushes or pops 2 bytes).
//!
//! A target beyond the CS limit raises #GP(0) before anything is pushed.
//! Far transfers (JMP/CALL far, RETF) belong to the interrupt family.

use iced_x86::{Code, Mnemonic, Register};

use crate::cpu::{Eflags, SegReg};
use crate::exception::{Exception, Stop};

use super::flags;
use super::{Ctx, mask};

/// Executes the instruction if it belongs to this family.
pub(crate) fn execute(ctx: &mut Ctx<'_>) -> Option<Result<(), Stop>> {
    Some(match ctx.instr.code() {
        Code::Jmp_rel8_16 | Code::Jmp_rel8_32 | Code::Jmp_rel16 | Code::Jmp_rel32_32 => {
            jump(ctx, relative_target(ctx))
        }
        Code::Jmp_rm16 | Code::Jmp_rm32 => ctx.read_op(0).and_then(|target| jump(ctx, target)),
        Code::Call_rel16 | Code::Call_rel32_32 => call(ctx, relative_target(ctx)),
        // The target is read before the push (CALL [ESP+n] uses the old
        // ESP).
        Code::Call_rm16 | Code::Call_rm32 => ctx.read_op(0).and_then(|target| call(ctx, target)),
        Code::Retnw | Code::Retnd => ret(ctx, 0),
        Code::Retnw_imm16 | Code::Retnd_imm16 => ret(ctx, u32::from(ctx.instr.immediate16())),
        Code::Jcxz_rel8_16 | Code::Jcxz_rel8_32 => {
            let taken = ctx.reg(Register::CX) == 0;
            branch_if(ctx, taken)
        }
        Code::Jecxz_rel8_16 | Code::Jecxz_rel8_32 => {
            let taken = ctx.reg(Register::ECX) == 0;
            branch_if(ctx, taken)
        }
        Code::Loop_rel8_16_CX
        | Code::Loop_rel8_32_CX
        | Code::Loope_rel8_16_CX
        | Code::Loope_rel8_32_CX
        | Code::Loopne_rel8_16_CX
        | Code::Loopne_rel8_32_CX => loop_(ctx, Register::CX),
        Code::Loop_rel8_16_ECX
        | Code::Loop_rel8_32_ECX
        | Code::Loope_rel8_16_ECX
        | Code::Loope_rel8_32_ECX
        | Code::Loopne_rel8_16_ECX
        | Code::Loopne_rel8_32_ECX => loop_(ctx, Register::ECX),
        _ => match ctx.instr.mnemonic() {
            Mnemonic::Ja
            | Mnemonic::Jae
            | Mnemonic::Jb
            | Mnemonic::Jbe
            | Mnemonic::Je
            | Mnemonic::Jg
            | Mnemonic::Jge
            | Mnemonic::Jl
            | Mnemonic::Jle
            | Mnemonic::Jne
            | Mnemonic::Jno
            | Mnemonic::Jnp
            | Mnemonic::Jns
            | Mnemonic::Jo
            | Mnemonic::Jp
            | Mnemonic::Js => {
                let taken = flags::condition(ctx.instr.condition_code(), ctx.cpu.eflags);
                branch_if(ctx, taken)
            }
            _ => return None,
        },
    })
}

/// The target of a relative branch: iced adds the displacement to the
/// next instruction's address and wraps it to the operand size.
fn relative_target(ctx: &Ctx<'_>) -> u32 {
    // The target is already wrapped to 16 or 32 bits.
    #[allow(clippy::cast_possible_truncation)]
    let target = ctx.instr.near_branch_target() as u32;
    target
}

/// Checks `target` against the CS limit.
fn check_target(ctx: &Ctx<'_>, target: u32) -> Result<(), Stop> {
    if ctx.cpu.segment(SegReg::Cs).cache.contains(target, 1) {
        Ok(())
    } else {
        Err(Exception::gp(0).into())
    }
}

fn jump(ctx: &mut Ctx<'_>, target: u32) -> Result<(), Stop> {
    check_target(ctx, target)?;
    ctx.next_eip = target;
    Ok(())
}

fn branch_if(ctx: &mut Ctx<'_>, taken: bool) -> Result<(), Stop> {
    if taken {
        jump(ctx, relative_target(ctx))
    } else {
        Ok(())
    }
}

fn call(ctx: &mut Ctx<'_>, target: u32) -> Result<(), Stop> {
    check_target(ctx, target)?;
    let size = ctx.operand_size();
    ctx.push(ctx.next_eip & mask(size), size)?;
    ctx.next_eip = target;
    Ok(())
}

fn ret(ctx: &mut Ctx<'_>, release: u32) -> Result<(), Stop> {
    let size = ctx.operand_size();
    let target = ctx.pop(size)?;
    check_target(ctx, target)?;
    if release != 0 {
        // set_stack_pointer wraps a 16-bit stack.
        let top = ctx.stack_pointer().wrapping_add(release);
        ctx.set_stack_pointer(top);
    }
    ctx.next_eip = target;
    Ok(())
}

/// LOOP, LOOPE, LOOPNE: decrement the counter (CX or ECX by address size,
/// no flags changed) and branch while it is not 0 (and ZF agrees).
fn loop_(ctx: &mut Ctx<'_>, counter: Register) -> Result<(), Stop> {
    let count = ctx.reg(counter).wrapping_sub(1) & mask(super::register_size(counter));
    ctx.set_reg(counter, count);
    let zf = ctx.cpu.eflags & Eflags::ZF != 0;
    let taken = count != 0
        && match ctx.instr.mnemonic() {
            Mnemonic::Loope => zf,
            Mnemonic::Loopne => !zf,
            _ => true,
        };
    branch_if(ctx, taken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{Cpu, Gpr};
    use crate::emu::Outcome;
    use crate::emu::alu::tests::{
        FLAG_SETS, claims, expected_condition, fault, get, set, setup, status,
    };
    use crate::emu::flags::STATUS;
    use crate::emu::testing::{CODE, STACK, TestMachine, disassemble, run};

    use Gpr::{Eax, Ecx, Esp};

    /// Runs the branch in `code` at `eip`; it must retire.
    fn branch(cpu: &mut Cpu, machine: &mut TestMachine, eip: u32, code: &[u8]) -> u32 {
        cpu.eip = eip;
        let result = run(cpu, machine, code);
        assert_eq!(result, Ok(Outcome::Retired), "{}", disassemble(code));
        cpu.eip
    }

    #[test]
    fn relative_jumps() {
        let (mut c, mut m) = setup(STATUS);
        assert_eq!(branch(&mut c, &mut m, CODE, &[0xeb, 0x05]), 0x1007); // jmp .+7
        assert_eq!(branch(&mut c, &mut m, CODE, &[0xeb, 0xfe]), 0x1000); // jmp .
        assert_eq!(branch(&mut c, &mut m, CODE, &[0xeb, 0x80]), 0x0f82); // jmp .-126
        let jmp32 = [0xe9, 0x00, 0x10, 0x00, 0x00]; // jmp .+0x1005
        assert_eq!(branch(&mut c, &mut m, CODE, &jmp32), 0x2005);
        // A 16-bit operand size masks the target to 16 bits.
        let jmp16 = [0x66, 0xe9, 0x10, 0x00]; // jmpw .+0x14
        assert_eq!(branch(&mut c, &mut m, 0x1_2000, &jmp16), 0x2014);
        assert_eq!(status(&c), STATUS);
    }

    #[test]
    fn indirect_jumps() {
        let (mut c, mut m) = setup(0);
        set(&mut c, Eax, 0x3000);
        assert_eq!(branch(&mut c, &mut m, CODE, &[0xff, 0xe0]), 0x3000); // jmp *%eax
        m.poke_u32(0x2000, 0x4000);
        let jmp_mem = [0xff, 0x25, 0x00, 0x20, 0x00, 0x00]; // jmp *0x2000
        assert_eq!(branch(&mut c, &mut m, CODE, &jmp_mem), 0x4000);
        set(&mut c, Eax, 0x1234_5678);
        assert_eq!(branch(&mut c, &mut m, CODE, &[0x66, 0xff, 0xe0]), 0x5678); // jmpw *%ax
        m.unmapped_pages = vec![0x30];
        let jmp_unmapped = [0xff, 0x25, 0x00, 0x00, 0x03, 0x00]; // jmp *0x30000
        c.eip = CODE;
        fault(
            &mut c,
            &mut m,
            &jmp_unmapped,
            Exception::page_fault(0x3_0000, 0),
        );
    }

    #[test]
    fn conditional_jumps_for_every_condition() {
        for cc in 0u8..16 {
            for flags in FLAG_SETS {
                let (mut c, mut m) = setup(flags);
                let holds = expected_condition(cc, flags);
                let short = [0x70 + cc, 0x10]; // jcc .+0x12
                let target = branch(&mut c, &mut m, CODE, &short);
                assert_eq!(
                    target,
                    if holds { 0x1012 } else { 0x1002 },
                    "j{cc:x} {flags:x}"
                );
                let near = [0x0f, 0x80 + cc, 0x00, 0x01, 0x00, 0x00]; // jcc .+0x106
                let target = branch(&mut c, &mut m, CODE, &near);
                assert_eq!(
                    target,
                    if holds { 0x1106 } else { 0x1006 },
                    "j{cc:x} {flags:x}"
                );
                assert_eq!(status(&c), flags);
            }
        }
    }

    #[test]
    fn jcxz_and_loops() {
        let (mut c, mut m) = setup(0);
        set(&mut c, Ecx, 0x1_0000);
        assert_eq!(branch(&mut c, &mut m, CODE, &[0xe3, 0x10]), 0x1002); // jecxz
        assert_eq!(branch(&mut c, &mut m, CODE, &[0x67, 0xe3, 0x10]), 0x1013); // jcxz
        set(&mut c, Ecx, 0);
        assert_eq!(branch(&mut c, &mut m, CODE, &[0xe3, 0x10]), 0x1012); // jecxz

        set(&mut c, Ecx, 3);
        assert_eq!(branch(&mut c, &mut m, CODE, &[0xe2, 0xfe]), 0x1000); // loop .
        assert_eq!(get(&c, Ecx), 2);
        set(&mut c, Ecx, 1);
        assert_eq!(branch(&mut c, &mut m, CODE, &[0xe2, 0xfe]), 0x1002); // loop .
        assert_eq!(get(&c, Ecx), 0);
        set(&mut c, Ecx, 0x1_0000);
        assert_eq!(branch(&mut c, &mut m, CODE, &[0x67, 0xe2, 0xfd]), 0x1000); // loopw .
        assert_eq!(get(&c, Ecx), 0x1_ffff, "CX wraps, the upper half stays");

        c.eflags |= ZF;
        set(&mut c, Ecx, 5);
        assert_eq!(branch(&mut c, &mut m, CODE, &[0xe1, 0x10]), 0x1012); // loope
        assert_eq!(branch(&mut c, &mut m, CODE, &[0xe0, 0x10]), 0x1002); // loopne
        c.eflags &= !ZF;
        assert_eq!(branch(&mut c, &mut m, CODE, &[0xe1, 0x10]), 0x1002); // loope
        assert_eq!(branch(&mut c, &mut m, CODE, &[0xe0, 0x10]), 0x1012); // loopne
        assert_eq!(get(&c, Ecx), 1);
        assert_eq!(branch(&mut c, &mut m, CODE, &[0xe0, 0x10]), 0x1002); // loopne: ECX hits 0
        assert_eq!(status(&c), 0, "loops change no flags");
    }

    const ZF: u32 = Eflags::ZF;

    #[test]
    fn calls_and_returns() {
        let (mut c, mut m) = setup(0);
        let call = [0xe8, 0x00, 0x10, 0x00, 0x00]; // call .+0x1005
        assert_eq!(branch(&mut c, &mut m, CODE, &call), 0x2005);
        assert_eq!((get(&c, Esp), m.u32_at(0x7ffc)), (0x7ffc, 0x1005));
        assert_eq!(branch(&mut c, &mut m, 0x2005, &[0xc3]), 0x1005); // ret
        assert_eq!(get(&c, Esp), STACK);

        set(&mut c, Eax, 0x3000);
        assert_eq!(branch(&mut c, &mut m, CODE, &[0xff, 0xd0]), 0x3000); // call *%eax
        assert_eq!(m.u32_at(0x7ffc), 0x1002);
        assert_eq!(branch(&mut c, &mut m, 0x3000, &[0xc2, 0x08, 0x00]), 0x1002); // ret $8
        assert_eq!(get(&c, Esp), STACK + 8);

        set(&mut c, Esp, STACK);
        m.poke_u32(0x2000, 0x4000);
        let call_mem = [0xff, 0x15, 0x00, 0x20, 0x00, 0x00]; // call *0x2000
        assert_eq!(branch(&mut c, &mut m, CODE, &call_mem), 0x4000);
        assert_eq!(m.u32_at(0x7ffc), 0x1006);
        // CALL *4(%esp) reads its target with the ESP before the push.
        m.poke_u32(0x7ffc + 4, 0x5000);
        let call_esp = [0xff, 0x54, 0x24, 0x04]; // call *0x4(%esp)
        assert_eq!(branch(&mut c, &mut m, CODE, &call_esp), 0x5000);
        assert_eq!((get(&c, Esp), m.u32_at(0x7ff8)), (0x7ff8, 0x1004));

        // 16-bit operand size: 2-byte return addresses.
        set(&mut c, Esp, STACK);
        assert_eq!(
            branch(&mut c, &mut m, CODE, &[0x66, 0xe8, 0x10, 0x00]),
            0x1014
        ); // callw
        assert_eq!((get(&c, Esp), m.u16_at(0x7ffe)), (0x7ffe, 0x1004));
        assert_eq!(branch(&mut c, &mut m, 0x1014, &[0x66, 0xc3]), 0x1004); // retw
        assert_eq!(get(&c, Esp), STACK);
        m.poke(0x7ffc, &[0x34, 0x12, 0xff, 0xff]);
        set(&mut c, Esp, 0x7ffc);
        assert_eq!(
            branch(&mut c, &mut m, CODE, &[0x66, 0xc2, 0x04, 0x00]),
            0x1234
        ); // retw $4
        assert_eq!(get(&c, Esp), 0x8002);
    }

    #[test]
    fn targets_beyond_the_cs_limit_raise_gp() {
        let (mut c, mut m) = setup(0);
        c.segment_mut(SegReg::Cs).cache.limit = 0x1fff;
        let jmp = [0xe9, 0x00, 0x10, 0x00, 0x00]; // jmp .+0x1005
        fault(&mut c, &mut m, &jmp, Exception::gp(0));
        let call = [0xe8, 0x00, 0x10, 0x00, 0x00]; // call .+0x1005
        fault(&mut c, &mut m, &call, Exception::gp(0));
        assert_eq!(m.u32_at(0x7ffc), 0, "nothing pushed");
        m.poke_u32(0x7ffc, 0x3000);
        set(&mut c, Esp, 0x7ffc);
        fault(&mut c, &mut m, &[0xc3], Exception::gp(0)); // ret
        c.eflags |= ZF;
        assert_eq!(
            branch(&mut c, &mut m, CODE, &[0x0f, 0x85, 0x00, 0x10, 0x00, 0x00]),
            0x1006
        ); // jne: not taken
        let to_limit = [0xe9, 0xfa, 0x0f, 0x00, 0x00]; // jmp .+0xfff
        assert_eq!(branch(&mut c, &mut m, CODE, &to_limit), 0x1fff);
    }

    #[test]
    fn sixteen_bit_code_segment() {
        let (mut c, mut m) = setup(0);
        c.segment_mut(SegReg::Cs).cache.big = false;
        assert_eq!(branch(&mut c, &mut m, CODE, &[0xeb, 0x05]), 0x1007); // jmp .+7
        assert_eq!(branch(&mut c, &mut m, 0xfff0, &[0xeb, 0x20]), 0x0012); // wraps at 64 KiB
        assert_eq!(branch(&mut c, &mut m, CODE, &[0xe8, 0x10, 0x00]), 0x1013); // call .+0x13
        assert_eq!((get(&c, Esp), m.u16_at(0x7ffe)), (0x7ffe, 0x1003));
        assert_eq!(branch(&mut c, &mut m, 0x1013, &[0xc3]), 0x1003); // ret
        assert_eq!(get(&c, Esp), STACK);
        let call32 = [0x66, 0xe8, 0x00, 0x01, 0x00, 0x00]; // calll .+0x106
        assert_eq!(branch(&mut c, &mut m, CODE, &call32), 0x1106);
        assert_eq!((get(&c, Esp), m.u32_at(0x7ffc)), (0x7ffc, 0x1006));
        assert_eq!(branch(&mut c, &mut m, 0x1106, &[0x66, 0xc3]), 0x1006); // retl
        assert_eq!(get(&c, Esp), STACK);
    }

    #[test]
    fn stack_faults_leave_state_alone() {
        let (mut c, mut m) = setup(0);
        m.unmapped_pages = vec![0x30];
        set(&mut c, Esp, 0x3_0004);
        let call = [0xe8, 0x00, 0x10, 0x00, 0x00]; // call .+0x1005
        fault(&mut c, &mut m, &call, Exception::page_fault(0x3_0000, 2));
        fault(&mut c, &mut m, &[0xc3], Exception::page_fault(0x3_0004, 0)); // ret
        c.segment_mut(SegReg::Ss).cache.limit = 0x7fff;
        set(&mut c, Esp, 0x7ffe);
        fault(&mut c, &mut m, &[0xc3], Exception::ss(0)); // ret: beyond the SS limit
    }

    #[test]
    fn far_forms_are_not_ours() {
        assert!(claims(execute, &[0xeb, 0x00])); // jmp .+2
        assert!(claims(execute, &[0xc3])); // ret
        assert!(claims(execute, &[0xf3, 0xc3])); // repz ret
        assert!(!claims(
            execute,
            &[0xea, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00]
        )); // ljmp $0x8,$0x0
        assert!(!claims(
            execute,
            &[0x9a, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00]
        )); // lcall $0x8,$0x0
        assert!(!claims(execute, &[0xcb])); // lret
        assert!(!claims(execute, &[0xca, 0x04, 0x00])); // lret $4
        assert!(!claims(execute, &[0xff, 0x2d, 0x00, 0x20, 0x00, 0x00])); // ljmp *0x2000
        assert!(!claims(execute, &[0xff, 0x1d, 0x00, 0x20, 0x00, 0x00])); // lcall *0x2000
    }
}
