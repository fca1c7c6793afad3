//! Segment registers: loads (MOV, POP, LDS/LES/LFS/LGS/LSS) with the
//! protected-mode checks, reads (MOV r/m, Sreg; PUSH Sreg), and the
//! descriptor probes LAR, LSL, VERR and VERW (Intel SDM vol. 2 and vol. 3
//! chapter 5).

use iced_x86::{Code, Mnemonic, OpKind};

use crate::cpu::{Cpu, Eflags, SegReg, Segment};
use crate::descriptor::{Descriptor, TYPE_ACCESSED, system};
use crate::exception::{Exception, Stop};
use crate::machine::{Access, Machine};

use super::{Ctx, segreg};

/// Where a selector's descriptor lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescriptorSlot {
    /// Linear address of the 8-byte descriptor.
    pub linear: u32,
    /// The descriptor.
    pub descriptor: Descriptor,
    /// Its raw form.
    pub raw: u64,
}

/// The error code naming a selector (index and TI, RPL cleared).
#[must_use]
pub const fn selector_error(selector: u16) -> u32 {
    (selector & 0xfffc) as u32
}

/// Reads the descriptor a (non-null) selector names from the GDT or LDT.
/// A selector beyond the table's limit (or into a null LDT) raises
/// `#GP(selector)`; `fault` chooses another vector (e.g. #TS) for callers
/// that need one.
pub fn read_descriptor(
    cpu: &Cpu,
    machine: &mut dyn Machine,
    selector: u16,
    fault: impl Fn(u32) -> Exception,
) -> Result<DescriptorSlot, Stop> {
    let (base, limit) = if selector & 4 != 0 {
        if cpu.ldtr.is_null() || !cpu.ldtr.cache.present {
            return Err(fault(selector_error(selector)).into());
        }
        (cpu.ldtr.cache.base, cpu.ldtr.cache.limit)
    } else {
        (cpu.gdtr.base, u32::from(cpu.gdtr.limit))
    };
    let offset = u32::from(selector & 0xfff8);
    if offset + 7 > limit {
        return Err(fault(selector_error(selector)).into());
    }
    let linear = base.wrapping_add(offset);
    let mut bytes = [0u8; 8];
    machine.read_linear(linear, &mut bytes, Access::SYSTEM_READ)?;
    let raw = u64::from_le_bytes(bytes);
    Ok(DescriptorSlot {
        linear,
        descriptor: Descriptor::from_raw(raw),
        raw,
    })
}

/// Sets the accessed bit of a code or data descriptor in memory, as the
/// CPU does when it loads one.
pub fn mark_accessed(machine: &mut dyn Machine, slot: &DescriptorSlot) -> Result<(), Stop> {
    if slot.descriptor.kind & TYPE_ACCESSED != 0 {
        return Ok(());
    }
    // The type byte is byte 5 of the descriptor.
    let type_byte = ((slot.raw >> 40) & 0xff) as u8 | TYPE_ACCESSED;
    machine.write_linear(
        slot.linear.wrapping_add(5),
        &[type_byte],
        Access::SYSTEM_WRITE,
    )
}

/// Loads a data or stack segment register (not CS) with the checks of MOV
/// Sreg / POP Sreg / Lxs in protected mode.
pub fn load_data_segment(
    cpu: &mut Cpu,
    machine: &mut dyn Machine,
    seg: SegReg,
    selector: u16,
) -> Result<(), Stop> {
    let error = selector_error(selector);
    let rpl = (selector & 3) as u8;
    if selector & !3 == 0 {
        if seg == SegReg::Ss {
            return Err(Exception::gp(0).into());
        }
        // A null selector loads; using it faults later.
        *cpu.segment_mut(seg) = Segment {
            selector,
            cache: Descriptor::default(),
        };
        return Ok(());
    }
    let slot = read_descriptor(cpu, machine, selector, Exception::gp)?;
    let desc = slot.descriptor;
    if seg == SegReg::Ss {
        if rpl != cpu.cpl || !desc.is_writable() || desc.dpl != cpu.cpl {
            return Err(Exception::gp(error).into());
        }
        if !desc.present {
            return Err(Exception::ss(error).into());
        }
    } else {
        if !desc.is_readable() {
            return Err(Exception::gp(error).into());
        }
        if !desc.is_conforming() && (desc.dpl < cpu.cpl || desc.dpl < rpl) {
            return Err(Exception::gp(error).into());
        }
        if !desc.present {
            return Err(Exception::np(error).into());
        }
    }
    mark_accessed(machine, &slot)?;
    let mut cache = desc;
    cache.kind |= TYPE_ACCESSED;
    *cpu.segment_mut(seg) = Segment { selector, cache };
    Ok(())
}

/// Executes the instruction if it belongs to this family.
pub(crate) fn execute(ctx: &mut Ctx<'_>) -> Option<Result<(), Stop>> {
    let instr = ctx.instr;
    let result = match instr.mnemonic() {
        Mnemonic::Mov if is_sreg(ctx, 0) => mov_to_sreg(ctx),
        Mnemonic::Mov if is_sreg(ctx, 1) => mov_from_sreg(ctx),
        Mnemonic::Push if is_sreg(ctx, 0) => push_sreg(ctx),
        Mnemonic::Pop if is_sreg(ctx, 0) => pop_sreg(ctx),
        Mnemonic::Lds => load_far_pointer(ctx, SegReg::Ds),
        Mnemonic::Les => load_far_pointer(ctx, SegReg::Es),
        Mnemonic::Lfs => load_far_pointer(ctx, SegReg::Fs),
        Mnemonic::Lgs => load_far_pointer(ctx, SegReg::Gs),
        Mnemonic::Lss => load_far_pointer(ctx, SegReg::Ss),
        Mnemonic::Lar => probe(ctx, Probe::Lar),
        Mnemonic::Lsl => probe(ctx, Probe::Lsl),
        Mnemonic::Verr => probe(ctx, Probe::Verr),
        Mnemonic::Verw => probe(ctx, Probe::Verw),
        _ => return None,
    };
    Some(result)
}

fn is_sreg(ctx: &Ctx<'_>, op: u32) -> bool {
    op < ctx.instr.op_count()
        && ctx.instr.op_kind(op) == OpKind::Register
        && ctx.instr.op_register(op).is_segment_register()
}

fn sreg_operand(ctx: &Ctx<'_>, op: u32) -> Result<SegReg, Stop> {
    segreg(ctx.instr.op_register(op)).ok_or(Stop::Exception(Exception::ud()))
}

fn mov_to_sreg(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let seg = sreg_operand(ctx, 0)?;
    if seg == SegReg::Cs {
        return Err(Exception::ud().into());
    }
    // The source is r/m16 (a 32-bit register form reads its low 16 bits).
    let selector = (ctx.read_op(1)? & 0xffff) as u16;
    load_data_segment(ctx.cpu, ctx.machine, seg, selector)?;
    if seg == SegReg::Ss {
        ctx.shadow = true;
    }
    Ok(())
}

fn mov_from_sreg(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let seg = sreg_operand(ctx, 1)?;
    let selector = u32::from(ctx.cpu.segment(seg).selector);
    // A 32-bit register destination gets the selector zero-extended (as on
    // every CPU since the Pentium Pro and in QEMU); memory gets 16 bits.
    ctx.write_op(0, selector)
}

fn push_sreg(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let seg = sreg_operand(ctx, 0)?;
    let selector = u32::from(ctx.cpu.segment(seg).selector);
    let size = ctx.operand_size();
    ctx.push(selector, size)
}

fn pop_sreg(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let seg = sreg_operand(ctx, 0)?;
    let size = ctx.operand_size();
    let sp = ctx.stack_pointer();
    let selector = (ctx.peek(0, size)? & 0xffff) as u16;
    load_data_segment(ctx.cpu, ctx.machine, seg, selector)?;
    ctx.set_stack_pointer(sp.wrapping_add(size));
    if seg == SegReg::Ss {
        ctx.shadow = true;
    }
    Ok(())
}

fn load_far_pointer(ctx: &mut Ctx<'_>, seg: SegReg) -> Result<(), Stop> {
    let size = ctx.op_size(0);
    let (segment, offset) = ctx.memory_operand(1);
    let pointer = ctx.read_mem(segment, offset, size)?;
    let selector = (ctx.read_mem(segment, offset.wrapping_add(size), 2)? & 0xffff) as u16;
    load_data_segment(ctx.cpu, ctx.machine, seg, selector)?;
    let register = ctx.instr.op_register(0);
    ctx.set_reg(register, pointer);
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Probe {
    Lar,
    Lsl,
    Verr,
    Verw,
}

fn probe(ctx: &mut Ctx<'_>, which: Probe) -> Result<(), Stop> {
    let source = if matches!(which, Probe::Verr | Probe::Verw) {
        0
    } else {
        1
    };
    let selector = (ctx.read_op(source)? & 0xffff) as u16;
    let found = probe_descriptor(ctx, selector, which)?;
    match found {
        Some(value) => {
            ctx.cpu.eflags |= Eflags::ZF;
            if let Some(value) = value {
                ctx.write_op(0, value)?;
            }
        }
        None => ctx.cpu.eflags &= !Eflags::ZF,
    }
    Ok(())
}

/// `Some(result)` when the probe succeeds (ZF=1), `result` being what LAR
/// or LSL write; `None` when it fails (ZF=0, destination unchanged).
fn probe_descriptor(
    ctx: &mut Ctx<'_>,
    selector: u16,
    which: Probe,
) -> Result<Option<Option<u32>>, Stop> {
    if selector & !3 == 0 {
        return Ok(None);
    }
    let slot = match read_descriptor(ctx.cpu, ctx.machine, selector, Exception::gp) {
        Ok(slot) => slot,
        // Beyond the table limit: the probe fails without a fault.
        Err(Stop::Exception(exception)) if exception.vector == crate::exception::vector::GP => {
            return Ok(None);
        }
        Err(stop) => return Err(stop),
    };
    let desc = slot.descriptor;
    let rpl = (selector & 3) as u8;
    let type_ok = if desc.code_or_data {
        match which {
            Probe::Lar | Probe::Lsl => true,
            Probe::Verr => desc.is_readable(),
            Probe::Verw => desc.is_writable(),
        }
    } else {
        match which {
            Probe::Lar => matches!(
                desc.kind,
                system::TSS16_AVAILABLE
                    | system::LDT
                    | system::TSS16_BUSY
                    | system::CALL_GATE16
                    | system::TASK_GATE
                    | system::TSS32_AVAILABLE
                    | system::TSS32_BUSY
                    | system::CALL_GATE32
            ),
            Probe::Lsl => matches!(
                desc.kind,
                system::TSS16_AVAILABLE
                    | system::LDT
                    | system::TSS16_BUSY
                    | system::TSS32_AVAILABLE
                    | system::TSS32_BUSY
            ),
            Probe::Verr | Probe::Verw => false,
        }
    };
    // Conforming code segments are exempt from the privilege check.
    let privilege_ok = desc.is_conforming() || (desc.dpl >= ctx.cpu.cpl && desc.dpl >= rpl);
    if !type_ok || !privilege_ok {
        return Ok(None);
    }
    let wide = ctx.op_size(0) == 4;
    #[allow(clippy::cast_possible_truncation)] // the high dword of the raw descriptor
    let high = (slot.raw >> 32) as u32;
    Ok(Some(match which {
        Probe::Lar => Some(if wide {
            high & 0x00f0_ff00
        } else {
            high & 0xff00
        }),
        Probe::Lsl => Some(if wide {
            desc.limit
        } else {
            desc.limit & 0xffff
        }),
        Probe::Verr | Probe::Verw => None,
    }))
}

/// Whether the instruction is LSS (which, unlike MOV SS and POP SS, does
/// not inhibit interrupts).
#[must_use]
pub fn is_lss(code: Code) -> bool {
    matches!(code, Code::Lss_r16_m1616 | Code::Lss_r32_m1632)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{Gpr, TableRegister};
    use crate::emu::testing::{TestMachine, cpu, run};

    const GDT: u32 = 0x2000;

    /// A GDT with: 1 ring-0 code, 2 ring-0 data, 3 ring-3 code, 4 ring-3
    /// data, 5 not-present data, 6 read-only data, 7 execute-only code,
    /// 8 a 32-bit TSS, 9 an LDT, 10 a conforming code DPL 3, 11 an
    /// interrupt gate (not allowed for LAR), 12 data with base 0x1234 and
    /// byte limit 0xfff.
    fn setup() -> (crate::cpu::Cpu, TestMachine) {
        let mut machine = TestMachine::default();
        let entries: [u64; 13] = [
            0,
            0x00cf_9a00_0000_ffff,
            0x00cf_9200_0000_ffff,
            0x00cf_fa00_0000_ffff,
            0x00cf_f200_0000_ffff,
            0x00cf_1200_0000_ffff,
            0x00cf_9000_0000_ffff,
            0x00cf_9800_0000_ffff,
            0x0000_8900_3000_0067,
            0x0000_8200_4000_00ff,
            0x00cf_fe00_0000_ffff,
            0x0000_8e00_0008_0000,
            0x0040_9200_1234_0fff,
        ];
        for (index, entry) in entries.iter().enumerate() {
            #[allow(clippy::cast_possible_truncation)]
            let at = GDT + index as u32 * 8;
            machine.poke(at, &entry.to_le_bytes());
        }
        let mut cpu = cpu();
        cpu.gdtr = TableRegister {
            base: GDT,
            limit: 13 * 8 - 1,
        };
        (cpu, machine)
    }

    #[test]
    fn mov_to_ds_loads_the_descriptor_and_sets_accessed() {
        let (mut cpu, mut machine) = setup();
        cpu.gpr[Gpr::Eax as usize] = 0x60;
        // mov ds, ax  (selector 0x60: entry 12)
        run(&mut cpu, &mut machine, &[0x8e, 0xd8]).expect("loads");
        let ds = cpu.segment(SegReg::Ds);
        assert_eq!(ds.selector, 0x60);
        assert_eq!(ds.cache.base, 0x1234);
        assert_eq!(ds.cache.limit, 0xfff);
        assert_eq!(
            machine.memory[(GDT + 12 * 8 + 5) as usize] & 1,
            1,
            "accessed bit"
        );
        assert_eq!(cpu.eip, 0x1002);
    }

    #[test]
    fn bad_loads_fault_with_the_selector() {
        let cases: [(u32, &[u8], Exception); 6] = [
            // mov ds, ax: beyond the GDT limit
            (0x68, &[0x8e, 0xd8], Exception::gp(0x68)),
            // not present
            (0x28, &[0x8e, 0xd8], Exception::np(0x28)),
            // execute-only code into DS
            (0x38, &[0x8e, 0xd8], Exception::gp(0x38)),
            // read-only data into SS
            (0x30, &[0x8e, 0xd0], Exception::gp(0x30)),
            // null into SS
            (0x00, &[0x8e, 0xd0], Exception::gp(0)),
            // a TSS into ES
            (0x40, &[0x8e, 0xc0], Exception::gp(0x40)),
        ];
        for (selector, code, expected) in cases {
            let (mut cpu, mut machine) = setup();
            cpu.gpr[Gpr::Eax as usize] = selector;
            let before = cpu.clone();
            assert_eq!(
                run(&mut cpu, &mut machine, code),
                Err(Stop::Exception(expected)),
                "selector {selector:#x}"
            );
            assert_eq!(cpu, before, "state unchanged after a fault");
        }
    }

    #[test]
    fn privilege_rules_for_data_and_stack() {
        let (mut cpu, mut machine) = setup();
        cpu.cpl = 3;
        cpu.gpr[Gpr::Eax as usize] = 0x10; // ring-0 data at CPL 3
        assert_eq!(
            run(&mut cpu, &mut machine, &[0x8e, 0xd8]),
            Err(Stop::Exception(Exception::gp(0x10)))
        );
        cpu.gpr[Gpr::Eax as usize] = 0x23; // ring-3 data, RPL 3
        run(&mut cpu, &mut machine, &[0x8e, 0xd8]).expect("loads");
        // SS needs RPL == CPL == DPL.
        cpu.gpr[Gpr::Eax as usize] = 0x20;
        assert_eq!(
            run(&mut cpu, &mut machine, &[0x8e, 0xd0]),
            Err(Stop::Exception(Exception::gp(0x20)))
        );
        cpu.gpr[Gpr::Eax as usize] = 0x23;
        run(&mut cpu, &mut machine, &[0x8e, 0xd0]).expect("loads SS");
        assert!(cpu.interrupt_shadow, "mov ss inhibits interrupts");
        // A null selector loads into DS.
        cpu.gpr[Gpr::Eax as usize] = 0;
        run(&mut cpu, &mut machine, &[0x8e, 0xd8]).expect("null loads");
        assert!(cpu.segment(SegReg::Ds).is_null());
    }

    #[test]
    fn segment_reads_and_push_pop() {
        let (mut cpu, mut machine) = setup();
        cpu.segment_mut(SegReg::Fs).selector = 0x60;
        cpu.gpr[Gpr::Eax as usize] = 0xdead_beef;
        // mov eax, fs
        run(&mut cpu, &mut machine, &[0x8c, 0xe0]).expect("reads");
        assert_eq!(cpu.gpr[Gpr::Eax as usize], 0x60);
        // mov ax, fs (16-bit: upper half kept)
        cpu.gpr[Gpr::Eax as usize] = 0xdead_beef;
        run(&mut cpu, &mut machine, &[0x66, 0x8c, 0xe0]).expect("reads");
        assert_eq!(cpu.gpr[Gpr::Eax as usize], 0xdead_0060);
        // mov [0x3000], fs
        run(&mut cpu, &mut machine, &[0x8c, 0x25, 0x00, 0x30, 0, 0]).expect("stores");
        assert_eq!(machine.u16_at(0x3000), 0x60);
        // push fs; pop gs
        let esp = cpu.gpr[Gpr::Esp as usize];
        run(&mut cpu, &mut machine, &[0x0f, 0xa0]).expect("push");
        assert_eq!(cpu.gpr[Gpr::Esp as usize], esp - 4);
        assert_eq!(machine.u32_at(esp - 4) & 0xffff, 0x60);
        run(&mut cpu, &mut machine, &[0x0f, 0xa9]).expect("pop");
        assert_eq!(cpu.segment(SegReg::Gs).selector, 0x60);
        assert_eq!(cpu.segment(SegReg::Gs).cache.base, 0x1234);
        assert_eq!(cpu.gpr[Gpr::Esp as usize], esp);
        // pushw cs
        run(&mut cpu, &mut machine, &[0x66, 0x0e]).expect("push");
        assert_eq!(cpu.gpr[Gpr::Esp as usize], esp - 2);
        assert_eq!(machine.u16_at(esp - 2), 0x08);
    }

    #[test]
    fn pop_of_a_bad_selector_leaves_esp() {
        let (mut cpu, mut machine) = setup();
        let esp = cpu.gpr[Gpr::Esp as usize];
        machine.poke_u32(esp, 0x28);
        // pop ds
        assert_eq!(
            run(&mut cpu, &mut machine, &[0x1f]),
            Err(Stop::Exception(Exception::np(0x28)))
        );
        assert_eq!(cpu.gpr[Gpr::Esp as usize], esp);
    }

    #[test]
    fn far_pointer_loads() {
        let (mut cpu, mut machine) = setup();
        machine.poke_u32(0x3000, 0xcafe_f00d);
        machine.poke(0x3004, &0x60u16.to_le_bytes());
        // lgs ebx, [0x3000]
        run(
            &mut cpu,
            &mut machine,
            &[0x0f, 0xb5, 0x1d, 0x00, 0x30, 0, 0],
        )
        .expect("loads");
        assert_eq!(cpu.gpr[Gpr::Ebx as usize], 0xcafe_f00d);
        assert_eq!(cpu.segment(SegReg::Gs).selector, 0x60);
        // les bx, [0x3000] (16-bit offset, selector at +2)
        machine.poke(0x3002, &0x10u16.to_le_bytes());
        run(
            &mut cpu,
            &mut machine,
            &[0x66, 0xc4, 0x1d, 0x00, 0x30, 0, 0],
        )
        .expect("loads");
        assert_eq!(cpu.gpr[Gpr::Ebx as usize] & 0xffff, 0xf00d);
        assert_eq!(cpu.segment(SegReg::Es).selector, 0x10);
    }

    #[test]
    fn lar_lsl_verr_verw() {
        let (mut cpu, mut machine) = setup();
        let probe =
            |cpu: &mut crate::cpu::Cpu, machine: &mut TestMachine, code: &[u8], selector: u32| {
                cpu.gpr[Gpr::Ecx as usize] = selector;
                cpu.gpr[Gpr::Eax as usize] = 0x5555_5555;
                run(cpu, machine, code).expect("probes never fault here");
                (cpu.eflags & Eflags::ZF != 0, cpu.gpr[Gpr::Eax as usize])
            };
        // lar eax, ecx
        let lar = [0x0f, 0x02, 0xc1];
        assert_eq!(
            probe(&mut cpu, &mut machine, &lar, 0x08),
            (true, 0x00c0_9a00),
            "limit bits masked"
        );
        assert_eq!(
            probe(&mut cpu, &mut machine, &lar, 0x40),
            (true, 0x0000_8900),
            "TSS"
        );
        assert!(
            !probe(&mut cpu, &mut machine, &lar, 0x58).0,
            "interrupt gate"
        );
        assert!(!probe(&mut cpu, &mut machine, &lar, 0x68).0, "beyond limit");
        assert!(!probe(&mut cpu, &mut machine, &lar, 0x00).0, "null");
        // lsl eax, ecx
        let lsl = [0x0f, 0x03, 0xc1];
        assert_eq!(probe(&mut cpu, &mut machine, &lsl, 0x60), (true, 0xfff));
        assert_eq!(
            probe(&mut cpu, &mut machine, &lsl, 0x10),
            (true, 0xffff_ffff)
        );
        assert_eq!(probe(&mut cpu, &mut machine, &lsl, 0x40), (true, 0x67));
        // verr cx / verw cx
        let verr = [0x0f, 0x00, 0xe1];
        let verw = [0x0f, 0x00, 0xe9];
        assert!(
            probe(&mut cpu, &mut machine, &verr, 0x08).0,
            "readable code"
        );
        assert!(
            !probe(&mut cpu, &mut machine, &verr, 0x38).0,
            "execute-only code"
        );
        assert!(probe(&mut cpu, &mut machine, &verw, 0x10).0);
        assert!(
            !probe(&mut cpu, &mut machine, &verw, 0x30).0,
            "read-only data"
        );
        // At CPL 3, ring-0 segments fail, conforming code does not.
        cpu.cpl = 3;
        assert!(!probe(&mut cpu, &mut machine, &lar, 0x08).0);
        assert!(probe(&mut cpu, &mut machine, &lar, 0x50).0);
        assert!(probe(&mut cpu, &mut machine, &verr, 0x23).0);
        // RPL above DPL fails too.
        cpu.cpl = 0;
        assert!(!probe(&mut cpu, &mut machine, &lar, 0x13).0);
    }
}
