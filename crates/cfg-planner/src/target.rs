//! Where a branch goes, computed from the trapped guest state, so that the
//! monitor never single-steps a pointer branch (one trap instead of two).

use iced_x86::{Code, ConditionCode, Instruction, Mnemonic, OpKind, Register};

use btvmm_core::{CpuView, Eflags, Gpr, GuestMemory, GuestVirt, MemFault, SegReg};

/// The guest-virtual (linear) address a near pointer branch will jump to
/// when it executes in the given state: `ret`, `ret imm16`, `jmp r/m`,
/// `call r/m`, in 32- and 16-bit operand sizes, with any addressing mode and
/// segment override.
///
/// Returns `None` for instructions that are not near pointer branches.
/// Assumes a 32-bit stack segment (SS.B = 1), as in every protected-mode
/// kernel the VMM runs.
pub fn pointer_target(
    instr: &Instruction,
    cpu: &dyn CpuView,
    mem: &dyn GuestMemory,
) -> Option<Result<GuestVirt, MemFault>> {
    let wide = match instr.code() {
        Code::Retnd | Code::Retnd_imm16 | Code::Jmp_rm32 | Code::Call_rm32 => true,
        Code::Retnw | Code::Retnw_imm16 | Code::Jmp_rm16 | Code::Call_rm16 => false,
        _ => return None,
    };
    let offset = match instr.mnemonic() {
        Mnemonic::Ret => {
            let top = GuestVirt(cpu.segment_base(SegReg::Ss).wrapping_add(cpu.gpr(Gpr::Esp)));
            read_offset(mem, top, wide)
        }
        _ => match instr.op0_kind() {
            OpKind::Register => Ok(register_value(cpu, instr.op0_register())?),
            _ => match memory_operand_address(instr, cpu) {
                Some(at) => read_offset(mem, at, wide),
                None => return None,
            },
        },
    };
    Some(offset.map(|offset| {
        let offset = if wide { offset } else { offset & 0xffff };
        GuestVirt(cpu.segment_base(SegReg::Cs).wrapping_add(offset))
    }))
}

fn read_offset(mem: &dyn GuestMemory, at: GuestVirt, wide: bool) -> Result<u32, MemFault> {
    if wide {
        mem.read_u32(at)
    } else {
        mem.read_u16(at).map(u32::from)
    }
}

/// Linear address of operand 0's memory reference.
fn memory_operand_address(instr: &Instruction, cpu: &dyn CpuView) -> Option<GuestVirt> {
    let linear = instr.virtual_address(0, 0, |register, _, _| {
        if register.is_segment_register() {
            btvmm_core::emu::segreg(register).map(|seg| u64::from(cpu.segment_base(seg)))
        } else {
            register_value(cpu, register).map(u64::from)
        }
    })?;
    // 32-bit linear addresses wrap at 4 GiB.
    #[allow(clippy::cast_possible_truncation)]
    Some(GuestVirt(linear as u32))
}

/// Value of a general register of any size, zero-extended.
fn register_value(cpu: &dyn CpuView, register: Register) -> Option<u32> {
    let gpr = match register.full_register32() {
        Register::EAX => Gpr::Eax,
        Register::ECX => Gpr::Ecx,
        Register::EDX => Gpr::Edx,
        Register::EBX => Gpr::Ebx,
        Register::ESP => Gpr::Esp,
        Register::EBP => Gpr::Ebp,
        Register::ESI => Gpr::Esi,
        Register::EDI => Gpr::Edi,
        _ => return None,
    };
    let full = cpu.gpr(gpr);
    Some(match register.size() {
        4 => full,
        2 => full & 0xffff,
        1 if matches!(
            register,
            Register::AH | Register::CH | Register::DH | Register::BH
        ) =>
        {
            (full >> 8) & 0xff
        }
        1 => full & 0xff,
        _ => return None,
    })
}

/// Whether a conditional branch (Jcc, JCXZ/JECXZ, LOOP/LOOPE/LOOPNE) will
/// be taken when it executes in the given state. For LOOP this accounts for
/// the decrement of the counter the instruction itself performs.
#[must_use]
pub fn branch_taken(instr: &Instruction, cpu: &dyn CpuView) -> bool {
    let flags = cpu.eflags();
    let set = |flag: u32| flags & flag != 0;
    let ecx = cpu.gpr(Gpr::Ecx);
    let counter_is_cx = matches!(
        instr.code(),
        Code::Loopne_rel8_16_CX
            | Code::Loopne_rel8_32_CX
            | Code::Loope_rel8_16_CX
            | Code::Loope_rel8_32_CX
            | Code::Loop_rel8_16_CX
            | Code::Loop_rel8_32_CX
            | Code::Jcxz_rel8_16
            | Code::Jcxz_rel8_32
    );
    let counter = if counter_is_cx { ecx & 0xffff } else { ecx };
    let counter_after_decrement_nonzero = counter != 1;
    match instr.mnemonic() {
        Mnemonic::Jcxz | Mnemonic::Jecxz => counter == 0,
        Mnemonic::Loop => counter_after_decrement_nonzero,
        Mnemonic::Loope => counter_after_decrement_nonzero && set(Eflags::ZF),
        Mnemonic::Loopne => counter_after_decrement_nonzero && !set(Eflags::ZF),
        _ => match instr.condition_code() {
            ConditionCode::o => set(Eflags::OF),
            ConditionCode::no => !set(Eflags::OF),
            ConditionCode::b => set(Eflags::CF),
            ConditionCode::ae => !set(Eflags::CF),
            ConditionCode::e => set(Eflags::ZF),
            ConditionCode::ne => !set(Eflags::ZF),
            ConditionCode::be => set(Eflags::CF) || set(Eflags::ZF),
            ConditionCode::a => !set(Eflags::CF) && !set(Eflags::ZF),
            ConditionCode::s => set(Eflags::SF),
            ConditionCode::ns => !set(Eflags::SF),
            ConditionCode::p => set(Eflags::PF),
            ConditionCode::np => !set(Eflags::PF),
            ConditionCode::l => set(Eflags::SF) != set(Eflags::OF),
            ConditionCode::ge => set(Eflags::SF) == set(Eflags::OF),
            ConditionCode::le => set(Eflags::ZF) || set(Eflags::SF) != set(Eflags::OF),
            ConditionCode::g => !set(Eflags::ZF) && set(Eflags::SF) == set(Eflags::OF),
            // Not a conditional branch: it falls through.
            ConditionCode::None => false,
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use btvmm_core::RegionMemory;
    use iced_x86::{Decoder, DecoderOptions};

    use super::*;

    /// A register file for tests.
    #[derive(Clone, Debug, Default)]
    pub(crate) struct TestCpu {
        pub gprs: [u32; 8],
        pub eip: u32,
        pub eflags: u32,
        pub bases: [u32; 6],
    }

    impl TestCpu {
        pub(crate) fn with(mut self, reg: Gpr, value: u32) -> Self {
            self.gprs[reg as usize] = value;
            self
        }
    }

    impl CpuView for TestCpu {
        fn gpr(&self, reg: Gpr) -> u32 {
            self.gprs[reg as usize]
        }
        fn eip(&self) -> u32 {
            self.eip
        }
        fn eflags(&self) -> u32 {
            self.eflags
        }
        fn segment_base(&self, seg: SegReg) -> u32 {
            self.bases[seg as usize]
        }
        fn code_32bit(&self) -> bool {
            true
        }
        fn stack_32bit(&self) -> bool {
            true
        }
    }

    fn decode(bytes: &[u8]) -> Instruction {
        Decoder::with_ip(32, bytes, 0x1000, DecoderOptions::NONE).decode()
    }

    fn memory() -> RegionMemory {
        let mut mem = RegionMemory::new();
        let mut stack = vec![0u8; 0x1000];
        stack[0xf00..0xf04].copy_from_slice(&0xc010_2030u32.to_le_bytes());
        stack[0xf04..0xf08].copy_from_slice(&0xc040_5060u32.to_le_bytes());
        mem.add_identity(0x8000, stack);
        let mut table = vec![0u8; 0x1000];
        for (slot, value) in [0xc000_0100u32, 0xc000_0200, 0xc000_0300, 0xc000_0400]
            .iter()
            .enumerate()
        {
            table[slot * 4..slot * 4 + 4].copy_from_slice(&value.to_le_bytes());
        }
        mem.add_identity(0x9000, table);
        mem
    }

    fn target(bytes: &[u8], cpu: &TestCpu) -> Result<GuestVirt, MemFault> {
        pointer_target(&decode(bytes), cpu, &memory()).expect("a near pointer branch")
    }

    #[test]
    fn returns_read_the_stack_top() {
        let cpu = TestCpu::default().with(Gpr::Esp, 0x8f00);
        assert_eq!(target(&[0xc3], &cpu), Ok(GuestVirt(0xc010_2030)), "ret");
        assert_eq!(
            target(&[0xc2, 0x08, 0x00], &cpu),
            Ok(GuestVirt(0xc010_2030)),
            "ret 8"
        );
        assert_eq!(target(&[0x66, 0xc3], &cpu), Ok(GuestVirt(0x2030)), "retw");
        // SS base counts.
        let mut based = cpu.clone().with(Gpr::Esp, 0xf04);
        based.bases[SegReg::Ss as usize] = 0x8000;
        assert_eq!(target(&[0xc3], &based), Ok(GuestVirt(0xc040_5060)));
    }

    #[test]
    fn register_branches_use_the_register() {
        let cpu = TestCpu::default()
            .with(Gpr::Eax, 0xc123_4567)
            .with(Gpr::Edi, 0x89ab_cdef);
        assert_eq!(
            target(&[0xff, 0xe0], &cpu),
            Ok(GuestVirt(0xc123_4567)),
            "jmp eax"
        );
        assert_eq!(
            target(&[0xff, 0xd7], &cpu),
            Ok(GuestVirt(0x89ab_cdef)),
            "call edi"
        );
        assert_eq!(
            target(&[0x66, 0xff, 0xe0], &cpu),
            Ok(GuestVirt(0x4567)),
            "jmp ax"
        );
    }

    #[test]
    fn memory_branches_use_any_addressing_mode() {
        let cpu = TestCpu::default()
            .with(Gpr::Eax, 2)
            .with(Gpr::Ebx, 0x9000)
            .with(Gpr::Esp, 0x8f00);
        // jmp [eax*4+0x9000]
        assert_eq!(
            target(&[0xff, 0x24, 0x85, 0x00, 0x90, 0x00, 0x00], &cpu),
            Ok(GuestVirt(0xc000_0300))
        );
        // call [ebx+4]
        assert_eq!(
            target(&[0xff, 0x53, 0x04], &cpu),
            Ok(GuestVirt(0xc000_0200))
        );
        // call [ebx+eax*4+4]
        assert_eq!(
            target(&[0xff, 0x54, 0x83, 0x04], &cpu),
            Ok(GuestVirt(0xc000_0400))
        );
        // call [esp+4] reads before the push
        assert_eq!(
            target(&[0xff, 0x54, 0x24, 0x04], &cpu),
            Ok(GuestVirt(0xc040_5060))
        );
        // jmp [0x9004]
        assert_eq!(
            target(&[0xff, 0x25, 0x04, 0x90, 0, 0], &cpu),
            Ok(GuestVirt(0xc000_0200))
        );
        // jmp fs:[0x4] with FS base 0x9000
        let mut fs = cpu.clone();
        fs.bases[SegReg::Fs as usize] = 0x9000;
        assert_eq!(
            target(&[0x64, 0xff, 0x25, 0x04, 0, 0, 0], &fs),
            Ok(GuestVirt(0xc000_0200))
        );
        // 16-bit addressing: jmp [bx+si] with 67 prefix
        let sixteen = TestCpu::default().with(Gpr::Ebx, 0x9000).with(Gpr::Esi, 8);
        assert_eq!(
            target(&[0x67, 0xff, 0x20], &sixteen),
            Ok(GuestVirt(0xc000_0300))
        );
    }

    #[test]
    fn unreadable_memory_is_a_fault_and_cs_base_applies() {
        let cpu = TestCpu::default().with(Gpr::Esp, 0x100);
        assert_eq!(
            target(&[0xc3], &cpu),
            Err(MemFault::NotMapped(GuestVirt(0x100)))
        );
        let mut based = TestCpu::default().with(Gpr::Eax, 0x10);
        based.bases[SegReg::Cs as usize] = 0x4000_0000;
        assert_eq!(target(&[0xff, 0xe0], &based), Ok(GuestVirt(0x4000_0010)));
        assert!(
            pointer_target(&decode(&[0xcb]), &based, &memory()).is_none(),
            "retf"
        );
    }

    #[test]
    fn conditions_follow_the_flags() {
        let with_flags = |eflags| TestCpu {
            eflags,
            ..TestCpu::default()
        };
        let je = decode(&[0x74, 0x00]);
        assert!(branch_taken(&je, &with_flags(Eflags::ZF)));
        assert!(!branch_taken(&je, &with_flags(0)));
        let jl = decode(&[0x7c, 0x00]);
        assert!(branch_taken(&jl, &with_flags(Eflags::SF)));
        assert!(!branch_taken(&jl, &with_flags(Eflags::SF | Eflags::OF)));
        let jg = decode(&[0x7f, 0x00]);
        assert!(branch_taken(&jg, &with_flags(0)));
        assert!(!branch_taken(&jg, &with_flags(Eflags::ZF)));
        let ja = decode(&[0x77, 0x00]);
        assert!(!branch_taken(&ja, &with_flags(Eflags::CF)));
        let jp = decode(&[0x7a, 0x00]);
        assert!(branch_taken(&jp, &with_flags(Eflags::PF)));
    }

    #[test]
    fn counters_follow_ecx_or_cx() {
        let ecx = |value| TestCpu::default().with(Gpr::Ecx, value);
        let loop_ = decode(&[0xe2, 0xfe]);
        assert!(branch_taken(&loop_, &ecx(2)));
        assert!(!branch_taken(&loop_, &ecx(1)));
        assert!(branch_taken(&loop_, &ecx(0)), "0 wraps to 0xffffffff");
        let loop_cx = decode(&[0x67, 0xe2, 0xfe]);
        assert!(!branch_taken(&loop_cx, &ecx(0x1_0001)), "CX is 1");
        let loope = decode(&[0xe1, 0xfe]);
        let mut zero = ecx(5);
        assert!(!branch_taken(&loope, &zero));
        zero.eflags = Eflags::ZF;
        assert!(branch_taken(&loope, &zero));
        let loopne = decode(&[0xe0, 0xfe]);
        assert!(!branch_taken(&loopne, &zero));
        let jecxz = decode(&[0xe3, 0x00]);
        assert!(branch_taken(&jecxz, &ecx(0)));
        assert!(!branch_taken(&jecxz, &ecx(0x1_0000)));
        let jcxz = decode(&[0x67, 0xe3, 0x00]);
        assert!(branch_taken(&jcxz, &ecx(0x1_0000)));
    }
}
