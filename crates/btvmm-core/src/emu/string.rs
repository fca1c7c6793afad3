//! String instructions: MOVS STOS LODS CMPS SCAS in byte, word and
//! doubleword sizes, with REP (MOVS STOS LODS; F2 and F3 both repeat them)
//! and REPE/REPNE (CMPS SCAS), 16- or 32-bit address size (SI/DI/CX or
//! ESI/EDI/ECX), a source segment override (the destination is always ES)
//! and the direction flag. INS and OUTS belong to the I/O family.
//!
//! A repeated instruction runs at most [`MAX_ITERATIONS`] iterations per
//! call. When iterations remain, or when an iteration after the first
//! faults, it retires with the count and index registers updated and EIP
//! left on the instruction itself: REP is interruptible between
//! iterations, so re-executing it is what the CPU would do after an
//! interrupt, and a fault is then raised by the re-execution with the
//! registers of the iterations done (the architectural state at the fault)
//! rather than rolled back over memory already written.

use iced_x86::{Code, OpKind, Register};

use crate::cpu::{Eflags, SegReg};
use crate::exception::Stop;

use super::flags::{self, STATUS};
use super::{Ctx, segreg};

/// Iterations of a repeated string instruction per call.
pub const MAX_ITERATIONS: u32 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Movs,
    Stos,
    Lods,
    Cmps,
    Scas,
}

/// Executes the instruction if it belongs to this family.
pub(crate) fn execute(ctx: &mut Ctx<'_>) -> Option<Result<(), Stop>> {
    let (kind, size) = match ctx.instr.code() {
        Code::Movsb_m8_m8 => (Kind::Movs, 1),
        Code::Movsw_m16_m16 => (Kind::Movs, 2),
        Code::Movsd_m32_m32 => (Kind::Movs, 4),
        Code::Stosb_m8_AL => (Kind::Stos, 1),
        Code::Stosw_m16_AX => (Kind::Stos, 2),
        Code::Stosd_m32_EAX => (Kind::Stos, 4),
        Code::Lodsb_AL_m8 => (Kind::Lods, 1),
        Code::Lodsw_AX_m16 => (Kind::Lods, 2),
        Code::Lodsd_EAX_m32 => (Kind::Lods, 4),
        Code::Cmpsb_m8_m8 => (Kind::Cmps, 1),
        Code::Cmpsw_m16_m16 => (Kind::Cmps, 2),
        Code::Cmpsd_m32_m32 => (Kind::Cmps, 4),
        Code::Scasb_AL_m8 => (Kind::Scas, 1),
        Code::Scasw_AX_m16 => (Kind::Scas, 2),
        Code::Scasd_EAX_m32 => (Kind::Scas, 4),
        _ => return None,
    };
    Some(string(ctx, kind, size))
}

/// One string instruction's fixed parameters.
struct Op {
    kind: Kind,
    size: u32,
    /// SI or ESI.
    si: Register,
    /// DI or EDI.
    di: Register,
    /// The source segment (DS unless overridden).
    source: SegReg,
    /// The accumulator of the operand size.
    accumulator: Register,
    /// What SI and DI move by (negative when DF is set).
    step: u32,
}

fn string(ctx: &mut Ctx<'_>, kind: Kind, size: u32) -> Result<(), Stop> {
    let instr = ctx.instr;
    let wide = (0..instr.op_count()).any(|op| {
        matches!(
            instr.op_kind(op),
            OpKind::MemorySegESI | OpKind::MemoryESEDI
        )
    });
    let (si, di, cx) = if wide {
        (Register::ESI, Register::EDI, Register::ECX)
    } else {
        (Register::SI, Register::DI, Register::CX)
    };
    let op = Op {
        kind,
        size,
        si,
        di,
        source: segreg(instr.memory_segment()).unwrap_or(SegReg::Ds),
        accumulator: match size {
            1 => Register::AL,
            2 => Register::AX,
            _ => Register::EAX,
        },
        step: if ctx.cpu.eflags & Eflags::DF != 0 {
            size.wrapping_neg()
        } else {
            size
        },
    };
    let repne = instr.has_repne_prefix();
    if !(repne || instr.has_repe_prefix()) {
        return iteration(ctx, &op);
    }
    let compare = matches!(kind, Kind::Cmps | Kind::Scas);
    let mut done = 0;
    loop {
        let count = ctx.reg(cx);
        if count == 0 {
            return Ok(());
        }
        if done == MAX_ITERATIONS {
            // Continue on re-execution.
            ctx.next_eip = ctx.cpu.eip;
            return Ok(());
        }
        if let Err(stop) = iteration(ctx, &op) {
            if done == 0 {
                return Err(stop);
            }
            // Keep the iterations done; the re-execution faults.
            ctx.next_eip = ctx.cpu.eip;
            return Ok(());
        }
        ctx.set_reg(cx, count.wrapping_sub(1));
        done += 1;
        if compare {
            let zf = ctx.cpu.eflags & Eflags::ZF != 0;
            // REPNE stops on equal, REPE on different.
            if zf == repne {
                return Ok(());
            }
        }
    }
}

/// One iteration: the memory accesses first, then the registers.
fn iteration(ctx: &mut Ctx<'_>, op: &Op) -> Result<(), Stop> {
    let source = ctx.reg(op.si);
    let destination = ctx.reg(op.di);
    let (advance_si, advance_di) = match op.kind {
        Kind::Movs => {
            let value = ctx.read_mem(op.source, source, op.size)?;
            ctx.write_mem(SegReg::Es, destination, op.size, value)?;
            (true, true)
        }
        Kind::Stos => {
            let value = ctx.reg(op.accumulator);
            ctx.write_mem(SegReg::Es, destination, op.size, value)?;
            (false, true)
        }
        Kind::Lods => {
            let value = ctx.read_mem(op.source, source, op.size)?;
            ctx.set_reg(op.accumulator, value);
            (true, false)
        }
        Kind::Cmps => {
            let first = ctx.read_mem(op.source, source, op.size)?;
            let second = ctx.read_mem(SegReg::Es, destination, op.size)?;
            let (_, status) = flags::sub(first, second, false, op.size);
            flags::update(&mut ctx.cpu.eflags, STATUS, status);
            (true, true)
        }
        Kind::Scas => {
            let second = ctx.read_mem(SegReg::Es, destination, op.size)?;
            let (_, status) = flags::sub(ctx.reg(op.accumulator), second, false, op.size);
            flags::update(&mut ctx.cpu.eflags, STATUS, status);
            (false, true)
        }
    };
    // 16-bit index registers wrap within 16 bits (set_reg keeps the rest).
    if advance_si {
        ctx.set_reg(op.si, source.wrapping_add(op.step));
    }
    if advance_di {
        ctx.set_reg(op.di, destination.wrapping_add(op.step));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Gpr;
    use crate::emu::Outcome;
    use crate::emu::alu::tests::{
        AF, CF, PF, SF, ZF, claims, exec, fault, get, set, setup, status,
    };
    use crate::emu::flags::STATUS;
    use crate::emu::testing::{CODE, run};
    use crate::exception::Exception;

    use Gpr::{Eax, Ecx, Edi, Esi};

    const DF: u32 = Eflags::DF;

    #[test]
    fn movs_in_each_size_and_direction() {
        let (mut c, mut m) = setup(STATUS);
        m.poke(0x2000, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        set(&mut c, Esi, 0x2000);
        set(&mut c, Edi, 0x3000);
        exec(&mut c, &mut m, &[0xa4]); // movsb %ds:(%esi),%es:(%edi)
        assert_eq!(m.memory[0x3000], 1);
        assert_eq!((get(&c, Esi), get(&c, Edi)), (0x2001, 0x3001));
        exec(&mut c, &mut m, &[0x66, 0xa5]); // movsw
        assert_eq!(m.u16_at(0x3001), 0x0302);
        assert_eq!((get(&c, Esi), get(&c, Edi)), (0x2003, 0x3003));
        exec(&mut c, &mut m, &[0xa5]); // movsl
        assert_eq!(m.u32_at(0x3003), 0x0706_0504);
        assert_eq!((get(&c, Esi), get(&c, Edi)), (0x2007, 0x3007));
        c.eflags |= DF;
        exec(&mut c, &mut m, &[0xa5]); // movsl, backwards
        assert_eq!(m.u32_at(0x3007), 0x0b0a_0908);
        assert_eq!((get(&c, Esi), get(&c, Edi)), (0x2003, 0x3003));
        assert_eq!(status(&c), STATUS);
    }

    #[test]
    fn rep_movs_forward_and_backward() {
        let (mut c, mut m) = setup(0);
        m.poke(
            0x2000,
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
        );
        set(&mut c, Esi, 0x2000);
        set(&mut c, Edi, 0x3000);
        set(&mut c, Ecx, 5);
        exec(&mut c, &mut m, &[0xf3, 0xa4]); // rep movsb
        assert_eq!(&m.memory[0x3000..0x3006], &[1, 2, 3, 4, 5, 0]);
        assert_eq!(
            (get(&c, Esi), get(&c, Edi), get(&c, Ecx)),
            (0x2005, 0x3005, 0)
        );

        c.eflags |= DF;
        set(&mut c, Esi, 0x200c);
        set(&mut c, Edi, 0x310c);
        set(&mut c, Ecx, 4);
        exec(&mut c, &mut m, &[0xf3, 0xa5]); // rep movsl, backwards
        assert_eq!(&m.memory[0x3100..0x3110], &m.memory[0x2000..0x2010]);
        assert_eq!(
            (get(&c, Esi), get(&c, Edi), get(&c, Ecx)),
            (0x1ffc, 0x30fc, 0)
        );

        // A count of 0 does nothing; F2 repeats MOVS like F3.
        let before = c.gpr;
        exec(&mut c, &mut m, &[0xf3, 0xa4]); // rep movsb
        assert_eq!(c.gpr, before);
        c.eflags &= !DF;
        set(&mut c, Esi, 0x2000);
        set(&mut c, Edi, 0x3200);
        set(&mut c, Ecx, 2);
        exec(&mut c, &mut m, &[0xf2, 0xa4]); // repnz movsb
        assert_eq!(
            (&m.memory[0x3200..0x3203], get(&c, Ecx)),
            (&[1, 2, 0][..], 0)
        );
    }

    #[test]
    fn stos_and_lods() {
        let (mut c, mut m) = setup(0);
        set(&mut c, Eax, 0xdead_beef);
        set(&mut c, Edi, 0x3000);
        set(&mut c, Ecx, 3);
        exec(&mut c, &mut m, &[0xf3, 0xab]); // rep stos %eax,%es:(%edi)
        assert_eq!(
            (m.u32_at(0x3000), m.u32_at(0x3008), m.u32_at(0x300c)),
            (0xdead_beef, 0xdead_beef, 0)
        );
        assert_eq!((get(&c, Edi), get(&c, Ecx)), (0x300c, 0));
        set(&mut c, Ecx, 2);
        exec(&mut c, &mut m, &[0xf3, 0x66, 0xab]); // rep stos %ax,%es:(%edi)
        assert_eq!((m.u32_at(0x300c), get(&c, Edi)), (0xbeef_beef, 0x3010));
        exec(&mut c, &mut m, &[0xaa]); // stos %al,%es:(%edi)
        assert_eq!((m.memory[0x3010], get(&c, Edi)), (0xef, 0x3011));

        m.poke(0x2000, &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
        set(&mut c, Esi, 0x2000);
        exec(&mut c, &mut m, &[0xac]); // lods %ds:(%esi),%al
        assert_eq!((get(&c, Eax), get(&c, Esi)), (0xdead_be11, 0x2001));
        set(&mut c, Ecx, 1);
        exec(&mut c, &mut m, &[0xf3, 0xad]); // rep lods %ds:(%esi),%eax
        assert_eq!(
            (get(&c, Eax), get(&c, Esi), get(&c, Ecx)),
            (0x5544_3322, 0x2005, 0)
        );
        c.eflags |= DF;
        exec(&mut c, &mut m, &[0x66, 0xad]); // lods %ds:(%esi),%ax, backwards
        assert_eq!((get(&c, Eax), get(&c, Esi)), (0x5544_7766, 0x2003));
    }

    #[test]
    fn cmps_and_scas_set_flags_and_stop_repeating() {
        let (mut c, mut m) = setup(0);
        m.poke(0x2000, &[5]);
        m.poke(0x3000, &[7]);
        set(&mut c, Esi, 0x2000);
        set(&mut c, Edi, 0x3000);
        exec(&mut c, &mut m, &[0xa6]); // cmpsb %es:(%edi),%ds:(%esi)
        assert_eq!(status(&c), CF | SF | AF);
        assert_eq!((get(&c, Esi), get(&c, Edi)), (0x2001, 0x3001));

        m.poke(0x2100, b"hello");
        m.poke(0x3100, b"help!");
        set(&mut c, Esi, 0x2100);
        set(&mut c, Edi, 0x3100);
        set(&mut c, Ecx, 5);
        exec(&mut c, &mut m, &[0xf3, 0xa6]); // repz cmpsb: stops at 'l' != 'p'
        assert_eq!(
            (get(&c, Esi), get(&c, Edi), get(&c, Ecx)),
            (0x2104, 0x3104, 1)
        );
        assert_eq!(status(&c), CF | SF | PF);
        set(&mut c, Esi, 0x2100);
        set(&mut c, Edi, 0x3100);
        set(&mut c, Ecx, 3);
        exec(&mut c, &mut m, &[0xf3, 0xa6]); // repz cmpsb: equal all along
        assert_eq!((get(&c, Ecx), status(&c)), (0, ZF | PF));

        // strlen: repnz scasb for the terminating 0.
        m.poke(0x3200, b"abc\0");
        set(&mut c, Eax, 0);
        set(&mut c, Edi, 0x3200);
        set(&mut c, Ecx, 0xffff_ffff);
        exec(&mut c, &mut m, &[0xf2, 0xae]); // repnz scas %es:(%edi),%al
        assert_eq!((get(&c, Edi), get(&c, Ecx)), (0x3204, 0xffff_fffb));
        assert_eq!(status(&c), ZF | PF);

        m.poke_u32(0x3300, 0x1234_5678);
        set(&mut c, Eax, 0x1234_5678);
        set(&mut c, Edi, 0x3300);
        exec(&mut c, &mut m, &[0xaf]); // scas %es:(%edi),%eax
        assert_eq!((get(&c, Edi), status(&c)), (0x3304, ZF | PF));
        c.eflags |= DF;
        set(&mut c, Eax, 0x5679);
        set(&mut c, Edi, 0x3300);
        exec(&mut c, &mut m, &[0x66, 0xaf]); // scas %es:(%edi),%ax, backwards
        assert_eq!((get(&c, Edi), status(&c)), (0x32fe, 0));
        // repz cmpsw backwards over equal words.
        m.poke(0x2400, &[1, 2, 3, 4]);
        m.poke(0x3400, &[9, 9, 3, 4]);
        set(&mut c, Esi, 0x2402);
        set(&mut c, Edi, 0x3402);
        set(&mut c, Ecx, 2);
        exec(&mut c, &mut m, &[0xf3, 0x66, 0xa7]); // repz cmpsw, backwards
        assert_eq!(
            (get(&c, Esi), get(&c, Edi), get(&c, Ecx)),
            (0x23fe, 0x33fe, 0)
        );
        assert_eq!(status(&c) & ZF, 0);
    }

    #[test]
    fn source_segment_is_overridable_destination_is_es() {
        let (mut c, mut m) = setup(0);
        c.segment_mut(SegReg::Fs).cache.base = 0x1000;
        c.segment_mut(SegReg::Ds).cache.base = 0x500;
        c.segment_mut(SegReg::Es).cache.base = 0x4000;
        m.poke(0x2000, &[0xf5]);
        m.poke(0x1500, &[0xd5]);
        set(&mut c, Esi, 0x1000);
        set(&mut c, Edi, 0);
        exec(&mut c, &mut m, &[0x64, 0xa4]); // movsb %fs:(%esi),%es:(%edi)
        assert_eq!(m.memory[0x4000], 0xf5);
        set(&mut c, Esi, 0x1000);
        exec(&mut c, &mut m, &[0xa4]); // movsb %ds:(%esi),%es:(%edi)
        assert_eq!(m.memory[0x4001], 0xd5);
    }

    #[test]
    fn sixteen_bit_addressing_uses_si_di_cx() {
        let (mut c, mut m) = setup(0);
        m.poke(0xfffe, &[1, 2, 3]);
        m.poke(0x0000, &[4]);
        set(&mut c, Esi, 0xabcd_fffe);
        set(&mut c, Edi, 0x1234_3000);
        set(&mut c, Ecx, 0x5555_0003);
        exec(&mut c, &mut m, &[0x67, 0xf3, 0xa4]); // rep movsb %ds:(%si),%es:(%di)
        assert_eq!(&m.memory[0x3000..0x3003], &[1, 2, 4], "SI wraps to 0");
        assert_eq!(
            (get(&c, Esi), get(&c, Edi), get(&c, Ecx)),
            (0xabcd_0001, 0x1234_3003, 0x5555_0000)
        );
        m.poke(0x3100, b"xyz");
        set(&mut c, Eax, u32::from(b'z'));
        set(&mut c, Edi, 0xffff_3100);
        set(&mut c, Ecx, 0xffff_0010);
        exec(&mut c, &mut m, &[0x67, 0xf2, 0xae]); // repnz scas %es:(%di),%al
        assert_eq!((get(&c, Edi), get(&c, Ecx)), (0xffff_3103, 0xffff_000d));
    }

    #[test]
    fn long_repeats_run_in_bounded_chunks() {
        let (mut c, mut m) = setup(0);
        set(&mut c, Eax, 0xab);
        set(&mut c, Edi, 0x1_0000);
        set(&mut c, Ecx, 5000);
        let code = [0xf3, 0xaa]; // rep stos %al,%es:(%edi)
        assert_eq!(run(&mut c, &mut m, &code), Ok(Outcome::Retired));
        assert_eq!(c.eip, CODE, "re-executed for the rest");
        assert_eq!(
            (get(&c, Edi), get(&c, Ecx)),
            (0x1_0000 + MAX_ITERATIONS, 5000 - MAX_ITERATIONS)
        );
        exec(&mut c, &mut m, &code);
        assert_eq!((get(&c, Edi), get(&c, Ecx)), (0x1_0000 + 5000, 0));
        assert!(
            m.memory[0x1_0000..0x1_0000 + 5000]
                .iter()
                .all(|&b| b == 0xab)
        );
        assert_eq!(m.memory[0x1_0000 + 5000], 0);
    }

    #[test]
    fn faults_keep_the_iterations_done() {
        let (mut c, mut m) = setup(0);
        m.unmapped_pages = vec![0x30];
        m.poke(0x2000, &[1, 2, 3, 4]);
        set(&mut c, Esi, 0x2000);
        set(&mut c, Edi, 0x2_fffe);
        set(&mut c, Ecx, 4);
        let code = [0xf3, 0xa4]; // rep movsb
        // Two bytes are copied, then the instruction stops short of the
        // fault; its re-execution faults with the registers of that point.
        assert_eq!(run(&mut c, &mut m, &code), Ok(Outcome::Retired));
        assert_eq!(c.eip, CODE);
        assert_eq!(&m.memory[0x2_fffe..0x3_0000], &[1, 2]);
        assert_eq!(
            (get(&c, Esi), get(&c, Edi), get(&c, Ecx)),
            (0x2002, 0x3_0000, 2)
        );
        fault(&mut c, &mut m, &code, Exception::page_fault(0x3_0000, 2));
        // Non-repeated and first-iteration faults change nothing.
        fault(&mut c, &mut m, &[0xa4], Exception::page_fault(0x3_0000, 2)); // movsb
        set(&mut c, Esi, 0x3_0000);
        set(&mut c, Edi, 0x2000);
        fault(
            &mut c,
            &mut m,
            &[0xf3, 0xa5],
            Exception::page_fault(0x3_0000, 0),
        ); // rep movsl
        fault(&mut c, &mut m, &[0xac], Exception::page_fault(0x3_0000, 0)); // lodsb
    }

    #[test]
    fn leaves_ins_outs_and_sse_to_others() {
        assert!(claims(execute, &[0xa4])); // movsb
        assert!(claims(execute, &[0xf2, 0xae])); // repnz scasb
        assert!(!claims(execute, &[0x6c])); // insb
        assert!(!claims(execute, &[0xf3, 0x6f])); // rep outsl
        assert!(!claims(execute, &[0xf2, 0x0f, 0x10, 0xc1])); // movsd %xmm1,%xmm0
        assert!(!claims(execute, &[0xf2, 0x0f, 0xc2, 0xc1, 0x00])); // cmpeqsd %xmm1,%xmm0
    }
}
