//! The monitor's step decision on ARMv7 ([`Planner::step`] for
//! [`Armv7`]): at every entry into the monitor, what to do with the guest
//! stopped at its program counter, resolving a branch there from the
//! guest's registers and memory as the x86 planner does from EFLAGS and
//! the stack, so that the guest is never single-stepped for a branch.
//!
//! Registers come through [`ArmCpuView`]: R0-R14 of the guest's current
//! mode, the address of the instruction about to run, and the CPSR (its
//! flags, T bit and IT state). Reading PC as an operand gives the
//! instruction's address plus 8 in ARM state and plus 4 in Thumb (A2.3).
//! A write of PC by a load, LDM/POP or BX interworks (bit 0 selects
//! Thumb); a data-processing write of PC interworks in ARM state and stays
//! in Thumb state (ALUWritePC, A2.3.2).
//!
//! Forms the step does not resolve (data-processing writes of PC other
//! than MOV and ADD with a register or immediate operand, register-shifted
//! operands) give [`Step::SingleStep`], which the ARM world must carry out
//! with a mismatch breakpoint: never a native run without a plan.

use btvmm_core::{GuestMemory, GuestVirt, MemFault};

use crate::arm::{ArmInstruction, ArmMode, ArmPoiKind, ArmPointerKind, ItState};
use crate::arm_cfg::{ArmStart, Armv7};
use crate::decode::{BlockEnd, fetch_fault};
use crate::isa::Isa;
use crate::planner::{Planner, Step};

/// The guest CPU state the ARM step decision reads.
pub trait ArmCpuView {
    /// R0-R14 as the guest's current mode sees them (`n` < 15).
    fn register(&self, n: u8) -> u32;
    /// The address of the instruction about to execute.
    fn pc(&self) -> GuestVirt;
    /// The guest's CPSR.
    fn cpsr(&self) -> u32;
}

/// CPSR.T: Thumb state.
const CPSR_T: u32 = 1 << 5;

/// Where the guest is about to execute.
#[must_use]
pub fn current_start(cpu: &dyn ArmCpuView) -> ArmStart {
    let cpsr = cpu.cpsr();
    if cpsr & CPSR_T == 0 {
        ArmStart::arm(cpu.pc())
    } else {
        ArmStart {
            at: cpu.pc(),
            mode: ArmMode::Thumb,
            it: ItState::from_cpsr(cpsr),
        }
    }
}

/// ConditionPassed() for a `cond` field and the CPSR's flags (A8.3).
#[must_use]
pub const fn condition_passed(cond: u32, cpsr: u32) -> bool {
    let n = cpsr & (1 << 31) != 0;
    let z = cpsr & (1 << 30) != 0;
    let c = cpsr & (1 << 29) != 0;
    let v = cpsr & (1 << 28) != 0;
    let result = match (cond >> 1) & 0x7 {
        0 => z,
        1 => c,
        2 => n,
        3 => v,
        4 => c && !z,
        5 => n == v,
        6 => n == v && !z,
        _ => true,
    };
    if cond & 1 == 1 && cond != 0xf {
        !result
    } else {
        result
    }
}

/// Whether a conditional instruction executes with the guest's flags (and,
/// for CBZ/CBNZ, its register): always true for an unconditional one.
#[must_use]
pub fn executes(instruction: &ArmInstruction, cpu: &dyn ArmCpuView) -> bool {
    if !instruction.conditional {
        return true;
    }
    let word = instruction.encoding;
    let cond = match instruction.mode {
        ArmMode::Arm => word >> 28,
        ArmMode::Thumb => {
            if let Some(cond) = instruction.it_before.condition() {
                cond
            } else if instruction.len == 2 && word & 0xf500 == 0xb100 {
                // CBZ/CBNZ: branch when Rn is (non)zero.
                let zero = cpu.register(word.to_le_bytes()[0] & 0x7) == 0;
                return zero != (word & 0x0800 != 0);
            } else if instruction.len == 2 && word & 0xf000 == 0xd000 {
                (word >> 8) & 0xf
            } else if instruction.len == 4 && word & 0xf800_d000 == 0xf000_8000 {
                (word >> 22) & 0xf
            } else {
                // Conditional for a reason not modelled here: let the
                // instruction be handled as if it executes.
                return true;
            }
        }
    };
    condition_passed(cond, cpu.cpsr())
}

/// Reads register `n` as an operand of the instruction: PC reads as the
/// instruction's address plus 8 (ARM) or plus 4 (Thumb).
fn operand(instruction: &ArmInstruction, cpu: &dyn ArmCpuView, n: u32) -> u32 {
    if n == 15 {
        let ahead = match instruction.mode {
            ArmMode::Arm => 8,
            ArmMode::Thumb => 4,
        };
        instruction.guest_virt.0.wrapping_add(ahead)
    } else {
        cpu.register(n.to_le_bytes()[0] & 0xf)
    }
}

/// A PC write that interworks (LoadWritePC, BXWritePC): bit 0 selects
/// Thumb.
fn interworking(value: u32) -> ArmStart {
    if value & 1 == 1 {
        ArmStart::thumb(GuestVirt(value & !1))
    } else {
        ArmStart::arm(GuestVirt(value & !3))
    }
}

/// The immediate shift of a register operand (DecodeImmShift and Shift,
/// A8.4.3): `kind` LSL, LSR, ASR or ROR, an `amount` of 0 meaning 32 for
/// LSR and ASR and RRX for ROR.
fn shifted(value: u32, kind: u32, amount: u32, carry: bool) -> u32 {
    match kind {
        0 => value << (amount & 31),
        1 if amount == 0 => 0,
        1 => value >> (amount & 31),
        2 => {
            // ASR #32 gives the sign in every bit, as ASR #31 does.
            let amount = if amount == 0 { 31 } else { amount & 31 };
            if value & (1 << 31) == 0 {
                value >> amount
            } else {
                !(!value >> amount)
            }
        }
        _ if amount == 0 => (u32::from(carry) << 31) | (value >> 1),
        _ => value.rotate_right(amount),
    }
}

/// Where a pointer branch that executes goes: `None` for a form not
/// resolved here, an error when the memory it reads is not mapped.
#[must_use]
pub fn pointer_target(
    instruction: &ArmInstruction,
    cpu: &dyn ArmCpuView,
    mem: &dyn GuestMemory,
) -> Option<Result<ArmStart, MemFault>> {
    let ArmPoiKind::PointerBranch(kind) = instruction.kind else {
        return None;
    };
    let word = instruction.encoding;
    let carry = cpu.cpsr() & (1 << 29) != 0;
    let load = |address: u32| Some(mem.read_u32(GuestVirt(address)).map(interworking));
    match (instruction.mode, kind) {
        (
            ArmMode::Arm,
            ArmPointerKind::Return
            | ArmPointerKind::BranchExchange
            | ArmPointerKind::BranchLinkExchange,
        ) => Some(Ok(interworking(operand(instruction, cpu, word & 0xf)))),
        (ArmMode::Arm, ArmPointerKind::LoadPc | ArmPointerKind::LoadMultiplePc) => {
            // By encoding: a one-register POP may be either form.
            if (word >> 25) & 0x7 == 0b100 {
                // LDM: cond 100P U0W1 Rn list; PC is at the highest address.
                let count = (word & 0xffff).count_ones();
                let base = operand(instruction, cpu, (word >> 16) & 0xf);
                let before = word & (1 << 24) != 0;
                let up = word & (1 << 23) != 0;
                load(match (before, up) {
                    (false, true) => base.wrapping_add(4 * count.saturating_sub(1)),
                    (true, true) => base.wrapping_add(4 * count),
                    (false, false) => base,
                    (true, false) => base.wrapping_sub(4),
                })
            } else if (word >> 26) & 0x3 == 0b01 {
                // LDR (immediate or register): cond 01IP UBW1 Rn Rt ...
                let pre = word & (1 << 24) != 0;
                let up = word & (1 << 23) != 0;
                let base = operand(instruction, cpu, (word >> 16) & 0xf);
                let offset = if word & (1 << 25) == 0 {
                    word & 0xfff
                } else {
                    let rm = operand(instruction, cpu, word & 0xf);
                    shifted(rm, (word >> 5) & 0x3, (word >> 7) & 0x1f, carry)
                };
                let indexed = if up {
                    base.wrapping_add(offset)
                } else {
                    base.wrapping_sub(offset)
                };
                load(if pre { indexed } else { base })
            } else {
                None
            }
        }
        (ArmMode::Arm, ArmPointerKind::DataProcessingPc) => {
            // MOV or ADD to PC: cond 00I opcode 0 Rn 1111 operand2.
            let opcode = (word >> 21) & 0xf;
            let second = if word & (1 << 25) != 0 {
                (word & 0xff).rotate_right(2 * ((word >> 8) & 0xf))
            } else if word & (1 << 4) == 0 {
                let rm = operand(instruction, cpu, word & 0xf);
                shifted(rm, (word >> 5) & 0x3, (word >> 7) & 0x1f, carry)
            } else {
                return None;
            };
            match opcode {
                0b1101 => Some(Ok(interworking(second))),
                0b0100 => Some(Ok(interworking(
                    operand(instruction, cpu, (word >> 16) & 0xf).wrapping_add(second),
                ))),
                _ => None,
            }
        }
        (
            ArmMode::Thumb,
            ArmPointerKind::Return
            | ArmPointerKind::BranchExchange
            | ArmPointerKind::BranchLinkExchange,
        ) if instruction.len == 2 => Some(Ok(interworking(operand(
            instruction,
            cpu,
            (word >> 3) & 0xf,
        )))),
        (ArmMode::Thumb, ArmPointerKind::LoadPc | ArmPointerKind::LoadMultiplePc)
            if instruction.len == 2 =>
        {
            // POP {..., pc}: 1011 110P list (the only 16-bit load of PC).
            if word & 0xfe00 != 0xbc00 {
                return None;
            }
            let count = (word & 0x1ff).count_ones();
            load(cpu.register(13).wrapping_add(4 * count.saturating_sub(1)))
        }
        (ArmMode::Thumb, ArmPointerKind::LoadPc | ArmPointerKind::LoadMultiplePc) => {
            let first = word >> 16;
            let rn = first & 0xf;
            let base = operand(instruction, cpu, rn);
            let count = (word & 0xffff).count_ones();
            match first & 0xfff0 {
                // LDM.W / POP.W (IA, 1110 1000 10W1) and LDMDB (1110 1001
                // 00W1), W masked.
                0xe890 | 0xe8b0 => load(base.wrapping_add(4 * count.saturating_sub(1))),
                0xe910 | 0xe930 => load(base.wrapping_sub(4)),
                // LDR (literal): 1111 1000 U101 1111, Align(PC, 4) +/- imm12.
                0xf850 | 0xf8d0 if rn == 15 => {
                    let aligned = operand(instruction, cpu, 15) & !3;
                    let offset = word & 0xfff;
                    load(if first & (1 << 7) != 0 {
                        aligned.wrapping_add(offset)
                    } else {
                        aligned.wrapping_sub(offset)
                    })
                }
                // T3: [Rn, #imm12].
                0xf8d0 => load(base.wrapping_add(word & 0xfff)),
                // T4: [Rn, #+/-imm8] with P, U, W.
                0xf850 if word & 0x0800 != 0 => {
                    let pre = word & 0x0400 != 0;
                    let up = word & 0x0200 != 0;
                    let offset = word & 0xff;
                    let indexed = if up {
                        base.wrapping_add(offset)
                    } else {
                        base.wrapping_sub(offset)
                    };
                    load(if pre { indexed } else { base })
                }
                // [Rn, Rm, LSL #imm2].
                0xf850 if word & 0x0fc0 == 0 => {
                    let rm = operand(instruction, cpu, word & 0xf);
                    load(base.wrapping_add(rm << ((word >> 4) & 0x3)))
                }
                _ => None,
            }
        }
        (ArmMode::Thumb, ArmPointerKind::DataProcessingPc) if instruction.len == 2 => {
            // MOV pc, Rm (0100 0110 1 Rm 111) or ADD pc, Rm (0100 0100 1 Rm
            // 111): a branch that stays in Thumb state.
            let rm = operand(instruction, cpu, (word >> 3) & 0xf);
            let value = match word & 0xff00 {
                0x4600 => rm,
                0x4400 => operand(instruction, cpu, 15).wrapping_add(rm),
                _ => return None,
            };
            Some(Ok(ArmStart::thumb(GuestVirt(value & !1))))
        }
        (ArmMode::Thumb, ArmPointerKind::TableBranch) => {
            // TBB/TBH [Rn, Rm]: 1110 1000 1101 Rn | 1111 0000 000H Rm.
            let base = operand(instruction, cpu, (word >> 16) & 0xf);
            let index = operand(instruction, cpu, word & 0xf);
            let entry = if word & 0x10 == 0 {
                let mut byte = [0u8; 1];
                mem.read_virt(GuestVirt(base.wrapping_add(index)), &mut byte)
                    .map(|()| u32::from(byte[0]))
            } else {
                mem.read_u16(GuestVirt(base.wrapping_add(index.wrapping_mul(2))))
                    .map(u32::from)
            };
            let pc = operand(instruction, cpu, 15);
            Some(entry.map(|entry| ArmStart::thumb(GuestVirt(pc.wrapping_add(2 * entry)))))
        }
        _ => None,
    }
}

impl Planner<Armv7> {
    /// Decides what to do with the guest stopped at its program counter:
    /// call it on every entry into the monitor in guest kernel mode (a
    /// planned breakpoint fired, an instruction was emulated, an exception
    /// was delivered). Branches at the program counter are resolved from
    /// `cpu` and `mem`; sensitive instructions whose condition holds are
    /// emulated, and ones whose condition fails run natively as the NOPs
    /// they are.
    pub fn step(&mut self, cpu: &dyn ArmCpuView, mem: &dyn GuestMemory) -> Step<Armv7> {
        // An ARM breakpoint fires before its instruction runs, and there
        // is no EFLAGS.RF to let the first pass through: a plan that arms
        // the address the guest resumes at (a loop back to it) would stop
        // it there again at once. Step that instruction instead.
        match self.decide(cpu, mem) {
            Step::Resume { breakpoints } if breakpoints.contains(&cpu.pc()) => Step::SingleStep,
            step => step,
        }
    }

    fn decide(&mut self, cpu: &dyn ArmCpuView, mem: &dyn GuestMemory) -> Step<Armv7> {
        let start = current_start(cpu);
        let block = self.block(mem, start);
        let poi = match &block.end {
            BlockEnd::Unfetchable(bad) if *bad == start => {
                return Step::Fault(fetch_fault(mem, start.at, Armv7::LONGEST_INSTRUCTION));
            }
            BlockEnd::Poi(poi) if ArmStart::of(poi) == start => poi.clone(),
            BlockEnd::Breakpoint(stop) if *stop == start => return Step::SingleStep,
            _ => return self.resume_planned(mem, start, false, None),
        };
        let after = ArmStart::after(&poi);
        if !executes(&poi, cpu) {
            // Fails its condition: natively a NOP (or, for one UNDEFINED at
            // PL0, a trap the monitor sees), then the fall-through.
            return self.resume_planned(mem, start, false, Some(after));
        }
        match poi.kind {
            ArmPoiKind::Sensitive { .. } => Step::Emulate(poi),
            ArmPoiKind::Unrecognized => Step::Unrecognized(start.at),
            ArmPoiKind::PointerBranch(_) => match pointer_target(&poi, cpu, mem) {
                Some(Ok(target)) => self.resume_planned(mem, target, true, None),
                Some(Err(fault)) => Step::Fault(fault),
                None => Step::SingleStep,
            },
            ArmPoiKind::CondBranch {
                taken, target_mode, ..
            } => {
                let target = ArmStart {
                    at: taken,
                    mode: target_mode,
                    it: ItState::NONE,
                };
                self.resume_planned(mem, start, false, Some(target))
            }
            ArmPoiKind::DirectBranch {
                target,
                target_mode,
                ..
            } => {
                let target = ArmStart {
                    at: target,
                    mode: target_mode,
                    it: ItState::NONE,
                };
                self.resume_planned(mem, start, false, Some(target))
            }
            ArmPoiKind::Plain => self.resume_planned(mem, start, false, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use btvmm_core::RegionMemory;

    use super::*;
    use crate::planner::PlannerConfig;

    /// CPSR flags.
    const Z: u32 = 1 << 30;
    const C: u32 = 1 << 29;

    #[derive(Clone, Copy, Debug, Default)]
    struct Cpu {
        registers: [u32; 15],
        pc: u32,
        cpsr: u32,
    }

    impl ArmCpuView for Cpu {
        fn register(&self, n: u8) -> u32 {
            self.registers[usize::from(n)]
        }
        fn pc(&self) -> GuestVirt {
            GuestVirt(self.pc)
        }
        fn cpsr(&self) -> u32 {
            self.cpsr
        }
    }

    fn arm_code(mem: &mut RegionMemory, at: u32, words: &[u32]) {
        mem.add_identity(at, words.iter().flat_map(|w| w.to_le_bytes()).collect());
    }

    fn thumb_code(mem: &mut RegionMemory, at: u32, halfwords: &[u16]) {
        mem.add_identity(at, halfwords.iter().flat_map(|h| h.to_le_bytes()).collect());
    }

    fn planner(breakpoints: usize) -> Planner<Armv7> {
        Planner::new(PlannerConfig {
            breakpoints,
            ..PlannerConfig::for_isa::<Armv7>()
        })
        .expect("capstone")
    }

    fn armed(step: &Step<Armv7>) -> Vec<u32> {
        match step {
            Step::Resume { breakpoints } => breakpoints.iter().map(|at| at.0).collect(),
            other => panic!("not a resume: {other:?}"),
        }
    }

    #[test]
    fn returns_and_pops_go_where_the_registers_and_stack_say() {
        let mut mem = RegionMemory::new();
        // 0x1000: pop {r4, pc}; 0x1004: bx lr
        arm_code(&mut mem, 0x1000, &[0xe8bd_8010, 0xe12f_ff1e]);
        // 0x3000: mrs r1, cpsr (ARM)
        arm_code(&mut mem, 0x3000, &[0xe10f_1000]);
        // 0x2000: movs r0, #1; mrs r0, apsr (Thumb)
        thumb_code(&mut mem, 0x2000, &[0x2001, 0xf3ef, 0x8000]);
        // The stack: r4's slot, then PC's (a Thumb address).
        mem.add_identity(
            0x8000,
            [0u32, 0x2001]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect(),
        );
        let mut planner = planner(4);
        let mut cpu = Cpu {
            pc: 0x1000,
            ..Cpu::default()
        };
        cpu.registers[13] = 0x8000;
        assert_eq!(armed(&planner.step(&cpu, &mem)), [0x2002]);
        cpu.pc = 0x1004;
        cpu.registers[14] = 0x3000;
        assert_eq!(armed(&planner.step(&cpu, &mem)), [0x3000]);
        // A return to itself, or to code that comes back to it, cannot be
        // armed before it runs.
        cpu.registers[14] = 0x1004;
        assert!(matches!(planner.step(&cpu, &mem), Step::SingleStep));
        // 0x6000: mov r1, r1; 0x6004: bx r0 (r0 = 0x6000): the plan from
        // the target would arm the branch.
        arm_code(&mut mem, 0x6000, &[0xe1a0_1001, 0xe12f_ff10]);
        cpu.pc = 0x6004;
        cpu.registers[0] = 0x6000;
        assert!(matches!(planner.step(&cpu, &mem), Step::SingleStep));
        cpu.registers[0] = 0x3000;
        assert_eq!(armed(&planner.step(&cpu, &mem)), [0x3000]);
        // One-register pops, each encoding: ARM ldm sp!, {pc}; Thumb pop
        // {pc}, pop.w {r4, pc} and ldr.w pc, [sp], #4 (both stack slots
        // hold 0x3000).
        arm_code(&mut mem, 0xa000, &[0xe8bd_8000]);
        thumb_code(
            &mut mem,
            0xb000,
            &[0xbd00, 0xbf00, 0xe8bd, 0x8010, 0xf85d, 0xfb04],
        );
        mem.add_identity(
            0xc000,
            [0x3000u32, 0x3000]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect(),
        );
        cpu.registers[13] = 0xc000;
        for (pc, cpsr) in [
            (0xa000, 0),
            (0xb000, CPSR_T),
            (0xb004, CPSR_T),
            (0xb008, CPSR_T),
        ] {
            cpu.pc = pc;
            cpu.cpsr = cpsr;
            assert_eq!(armed(&planner.step(&cpu, &mem)), [0x3000], "{pc:#x}");
        }
        cpu.cpsr = 0;
        // A stack the guest has not mapped: its fault.
        cpu.pc = 0x1000;
        cpu.registers[13] = 0x9000;
        assert!(matches!(
            planner.step(&cpu, &mem),
            Step::Fault(MemFault::NotMapped(GuestVirt(0x9004)))
        ));
    }

    #[test]
    fn a_jump_table_load_follows_the_index_or_its_condition_fails() {
        let mut mem = RegionMemory::new();
        // 0x1000: ldrls pc, [pc, r0, lsl #2]; 0x1004: mrs r1, cpsr;
        // 0x1008: the table (0x3000, 0x3004).
        arm_code(
            &mut mem,
            0x1000,
            &[0x979f_f100, 0xe10f_1000, 0x0000_3000, 0x0000_3004],
        );
        arm_code(&mut mem, 0x3000, &[0xe10f_2000, 0xe10f_3000]);
        let mut planner = planner(4);
        let mut cpu = Cpu {
            pc: 0x1000,
            cpsr: Z,
            ..Cpu::default()
        };
        cpu.registers[0] = 1;
        assert_eq!(armed(&planner.step(&cpu, &mem)), [0x3004]);
        // LS fails with C set and Z clear: the load does nothing.
        cpu.cpsr = C;
        assert_eq!(armed(&planner.step(&cpu, &mem)), [0x1004]);
        // mrsne r0, cpsr with Z set: a NOP natively; with Z clear: emulated.
        arm_code(&mut mem, 0x6000, &[0x110f_0000, 0xe10f_1000]);
        cpu.pc = 0x6000;
        cpu.cpsr = Z;
        assert_eq!(armed(&planner.step(&cpu, &mem)), [0x6004]);
        cpu.cpsr = 0;
        assert!(matches!(planner.step(&cpu, &mem), Step::Emulate(_)));
    }

    #[test]
    fn conditional_branches_are_resolved_when_the_budget_is_short() {
        let mut mem = RegionMemory::new();
        // 0x1000: beq 0x1010; 0x1004: mrs r1, cpsr; 0x1010: mrs r2, cpsr.
        arm_code(
            &mut mem,
            0x1000,
            &[0x0a00_0002, 0xe10f_1000, 0, 0, 0xe10f_2000],
        );
        // Thumb 0x5000: cbz r0, 0x5008; mrs r1, apsr; nop; mrs r2, apsr.
        thumb_code(
            &mut mem,
            0x5000,
            &[0xb110, 0xf3ef, 0x8100, 0xbf00, 0xf3ef, 0x8200],
        );
        // With one breakpoint neither side can be left unarmed.
        let mut planner = planner(1);
        let mut cpu = Cpu {
            pc: 0x1000,
            cpsr: Z,
            ..Cpu::default()
        };
        assert_eq!(armed(&planner.step(&cpu, &mem)), [0x1010]);
        cpu.cpsr = 0;
        assert_eq!(armed(&planner.step(&cpu, &mem)), [0x1004]);
        cpu.pc = 0x5000;
        cpu.cpsr = CPSR_T;
        assert_eq!(armed(&planner.step(&cpu, &mem)), [0x5008]);
        cpu.registers[0] = 7;
        assert_eq!(armed(&planner.step(&cpu, &mem)), [0x5002]);
    }

    #[test]
    fn a_thumb_table_branch_and_unmapped_code() {
        let mut mem = RegionMemory::new();
        // 0x4000: tbb [pc, r0]; 0x4004: the table (2, 4); nops; 0x400c:
        // mrs r0, apsr. Entry 1 is 4 halfwords past PC (0x4004).
        thumb_code(
            &mut mem,
            0x4000,
            &[
                0xe8df, 0xf000, 0x0402, 0xbf00, 0xbf00, 0xbf00, 0xf3ef, 0x8000,
            ],
        );
        let mut planner = planner(4);
        let mut cpu = Cpu {
            pc: 0x4000,
            cpsr: CPSR_T,
            ..Cpu::default()
        };
        cpu.registers[0] = 1;
        assert_eq!(armed(&planner.step(&cpu, &mem)), [0x400c]);
        cpu.pc = 0x7000;
        assert!(matches!(
            planner.step(&cpu, &mem),
            Step::Fault(MemFault::NotMapped(GuestVirt(0x7000)))
        ));
    }

    #[test]
    fn shifts_and_conditions_follow_the_pseudocode() {
        assert_eq!(shifted(0x8000_0001, 0, 2, false), 4);
        assert_eq!(shifted(0x8000_0000, 1, 0, false), 0);
        assert_eq!(shifted(0x8000_0000, 2, 0, false), u32::MAX);
        assert_eq!(shifted(0x8000_0000, 2, 4, false), 0xf800_0000);
        assert_eq!(shifted(3, 3, 0, true), 0x8000_0001);
        assert_eq!(shifted(1, 3, 1, false), 0x8000_0000);
        // EQ, NE, HI (C and not Z), GE (N == V), AL.
        assert!(condition_passed(0x0, Z));
        assert!(!condition_passed(0x1, Z));
        assert!(condition_passed(0x8, C));
        assert!(!condition_passed(0x8, C | Z));
        assert!(condition_passed(0xa, (1 << 31) | (1 << 28)));
        assert!(condition_passed(0xe, 0));
    }
}
