//! x87, MMX and SSE instructions as far as the VMM must judge them: the
//! guest's CR0.EM, CR0.TS, CR0.MP and CR4.OSFXSR decide whether they fault
//! (#NM or #UD). The instructions themselves run natively (the FPU state is
//! the guest's own); the emulator is only asked when one of these bits makes
//! the instruction fault, and raises that fault.

use iced_x86::{CpuidFeature, Instruction, Mnemonic, OpCodeTableKind, OpKind};

use crate::cpu::Cr0;
use crate::exception::{Exception, Stop, vector};

use super::Ctx;

/// CR4.OSFXSR: the OS supports FXSAVE/FXRSTOR and SSE.
pub const CR4_OSFXSR: u32 = 1 << 9;

/// Which FPU-state rules an instruction follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FpuClass {
    /// An x87 instruction.
    X87,
    /// WAIT/FWAIT.
    Wait,
    /// An MMX instruction.
    Mmx,
    /// An SSE (or later SIMD) instruction.
    Sse,
    /// FXSAVE / FXRSTOR.
    FxState,
}

/// The FPU-state class of an instruction, if it has one.
#[must_use]
pub fn fpu_class(instr: &Instruction) -> Option<FpuClass> {
    if instr.mnemonic() == Mnemonic::Wait {
        return Some(FpuClass::Wait);
    }
    // The common case first: a one-byte opcode outside the x87 escapes
    // (D8-DF) touches no FPU/SIMD state; all of MMX/SSE lives in the 0F
    // maps. Saves the feature lookup for most instructions.
    // (x87 register forms are listed with both bytes, e.g. 0xDBE3.)
    let op_code = instr.op_code();
    let first_byte = if op_code.op_code() > 0xff {
        op_code.op_code() >> 8
    } else {
        op_code.op_code()
    };
    if op_code.table() == OpCodeTableKind::Normal && !(0xd8..=0xdf).contains(&first_byte) {
        return None;
    }
    fpu_class_by_features(instr)
}

/// [`fpu_class`] without the one-byte-opcode shortcut.
fn fpu_class_by_features(instr: &Instruction) -> Option<FpuClass> {
    if instr.mnemonic() == Mnemonic::Wait {
        return Some(FpuClass::Wait);
    }
    let features = instr.cpuid_features();
    let any = |wanted: &[CpuidFeature]| features.iter().any(|feature| wanted.contains(feature));
    if any(&[CpuidFeature::FXSR]) {
        return Some(FpuClass::FxState);
    }
    if any(&[
        CpuidFeature::FPU,
        CpuidFeature::FPU287,
        CpuidFeature::FPU287XL_ONLY,
        CpuidFeature::FPU387,
        CpuidFeature::FPU387SL_ONLY,
    ]) {
        return Some(FpuClass::X87);
    }
    let registers = (0..instr.op_count())
        .filter(|&op| instr.op_kind(op) == OpKind::Register)
        .map(|op| instr.op_register(op));
    let mut mmx = false;
    let mut xmm = false;
    for register in registers {
        mmx |= register.is_mm();
        xmm |= register.is_xmm();
    }
    if mmx || any(&[CpuidFeature::MMX]) && !xmm {
        return Some(FpuClass::Mmx);
    }
    // Only instructions on SIMD state: fences, prefetches, CLFLUSH and
    // MOVNTI also come with SSE/SSE2 but do not depend on CR0.TS or
    // CR4.OSFXSR.
    if xmm || matches!(instr.mnemonic(), Mnemonic::Ldmxcsr | Mnemonic::Stmxcsr) {
        return Some(FpuClass::Sse);
    }
    None
}

/// The exception an instruction of `class` raises under the guest's CR0
/// and CR4, if any (#UD takes priority over #NM).
#[must_use]
pub fn fault(class: FpuClass, cr0: u32, cr4: u32) -> Option<Exception> {
    let em = cr0 & Cr0::EM != 0;
    let ts = cr0 & Cr0::TS != 0;
    let mp = cr0 & Cr0::MP != 0;
    let nm = Exception::new(vector::NM);
    match class {
        FpuClass::X87 | FpuClass::FxState => (em || ts).then_some(nm),
        FpuClass::Wait => (ts && mp).then_some(nm),
        FpuClass::Mmx => {
            if em {
                Some(Exception::ud())
            } else {
                ts.then_some(nm)
            }
        }
        FpuClass::Sse => {
            if em || cr4 & CR4_OSFXSR == 0 {
                Some(Exception::ud())
            } else {
                ts.then_some(nm)
            }
        }
    }
}

/// Executes the instruction if it belongs to this family: raises its
/// fault, or reports that the instruction runs natively.
pub(crate) fn execute(ctx: &mut Ctx<'_>) -> Option<Result<(), Stop>> {
    let class = fpu_class(ctx.instr)?;
    Some(match fault(class, ctx.cpu.cr0, ctx.cpu.cr4) {
        Some(exception) => Err(exception.into()),
        None => Err(Stop::NotEmulated(ctx.instr.mnemonic())),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_one_byte_shortcut_never_hides_a_class() {
        // Every one-byte opcode with every ModRM byte and SIB-free tails.
        for first in 0u8..=0xff {
            for modrm in 0u8..=0xff {
                let bytes = [first, modrm, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                let mut decoder =
                    iced_x86::Decoder::with_ip(32, &bytes, 0, iced_x86::DecoderOptions::NONE);
                let instr = decoder.decode();
                if instr.is_invalid() {
                    continue;
                }
                assert_eq!(
                    fpu_class(&instr),
                    fpu_class_by_features(&instr),
                    "{first:02x} {modrm:02x}: {instr}"
                );
            }
        }
    }

    use iced_x86::{Decoder, DecoderOptions};

    use super::*;
    use crate::emu::testing::{TestMachine, cpu, run};

    fn class_of(bytes: &[u8]) -> Option<FpuClass> {
        fpu_class(&Decoder::new(32, bytes, DecoderOptions::NONE).decode())
    }

    #[test]
    fn classes() {
        assert_eq!(class_of(&[0xdb, 0xe3]), Some(FpuClass::X87), "fninit");
        assert_eq!(class_of(&[0xd9, 0xe8]), Some(FpuClass::X87), "fld1");
        assert_eq!(class_of(&[0x9b]), Some(FpuClass::Wait), "fwait");
        assert_eq!(class_of(&[0x0f, 0x77]), Some(FpuClass::Mmx), "emms");
        assert_eq!(
            class_of(&[0x0f, 0xfc, 0xc1]),
            Some(FpuClass::Mmx),
            "paddb mm0, mm1"
        );
        assert_eq!(
            class_of(&[0x0f, 0x28, 0xc1]),
            Some(FpuClass::Sse),
            "movaps xmm0, xmm1"
        );
        assert_eq!(
            class_of(&[0x66, 0x0f, 0xfc, 0xc1]),
            Some(FpuClass::Sse),
            "paddb xmm0, xmm1"
        );
        assert_eq!(
            class_of(&[0x0f, 0xae, 0x10]),
            Some(FpuClass::Sse),
            "ldmxcsr [eax]"
        );
        assert_eq!(
            class_of(&[0x0f, 0xae, 0x00]),
            Some(FpuClass::FxState),
            "fxsave [eax]"
        );
        assert_eq!(class_of(&[0x89, 0xc8]), None, "mov");
        assert_eq!(class_of(&[0x0f, 0xae, 0xe8]), None, "lfence");
        assert_eq!(class_of(&[0x0f, 0x18, 0x00]), None, "prefetchnta");
        assert_eq!(class_of(&[0x0f, 0xc3, 0x00]), None, "movnti");
    }

    #[test]
    fn faults_follow_cr0_and_cr4() {
        let nm = Some(Exception::new(vector::NM));
        let ud = Some(Exception::ud());
        assert_eq!(fault(FpuClass::X87, Cr0::TS, 0), nm);
        assert_eq!(fault(FpuClass::X87, Cr0::EM, 0), nm);
        assert_eq!(fault(FpuClass::X87, 0, 0), None);
        assert_eq!(fault(FpuClass::Wait, Cr0::TS, 0), None);
        assert_eq!(fault(FpuClass::Wait, Cr0::TS | Cr0::MP, 0), nm);
        assert_eq!(fault(FpuClass::Mmx, Cr0::EM | Cr0::TS, 0), ud);
        assert_eq!(fault(FpuClass::Mmx, Cr0::TS, 0), nm);
        assert_eq!(fault(FpuClass::Sse, 0, 0), ud, "OSFXSR clear");
        assert_eq!(fault(FpuClass::Sse, Cr0::TS, CR4_OSFXSR), nm);
        assert_eq!(fault(FpuClass::Sse, 0, CR4_OSFXSR), None);
        assert_eq!(fault(FpuClass::FxState, Cr0::EM, 0), nm);
    }

    #[test]
    fn the_emulator_raises_the_fault() {
        let mut machine = TestMachine::default();
        let mut cpu = cpu();
        cpu.cr0 |= Cr0::TS;
        assert_eq!(
            run(&mut cpu, &mut machine, &[0xdb, 0xe3]),
            Err(Stop::Exception(Exception::new(vector::NM)))
        );
        cpu.cr0 &= !Cr0::TS;
        assert_eq!(
            run(&mut cpu, &mut machine, &[0xdb, 0xe3]),
            Err(Stop::NotEmulated(Mnemonic::Fninit))
        );
    }
}
