//! System instructions: interrupt flag, flags register, descriptor-table
//! registers, control and debug registers, MSRs, time stamp, CPUID, HLT,
//! TLB and cache maintenance, SYSENTER/SYSEXIT, and the instructions the
//! virtual CPU does not have (which raise #UD as on an i686 without them).

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use crate::cpu::{Cpu, Cr0, Eflags, Gpr, SegReg, Segment, TableRegister};
use crate::descriptor::{Descriptor, TYPE_ACCESSED, TYPE_CODE, TYPE_WRITABLE_READABLE, system};
use crate::exception::{Exception, Stop};
use crate::machine::{Access, Event};

use super::interrupt::merge_flags;
use super::segment::{read_descriptor, selector_error};
use super::{Ctx, Handler, Outcome, cpuid};

/// CR4 bits the virtual CPU implements: TSD, PSE, PCE, OSFXSR, OSXMMEXCPT
/// (no VME, DE, PAE, MCE, PGE: CPUID does not offer them).
pub const CR4_SUPPORTED: u32 = (1 << 2) | CR4_PSE | (1 << 8) | (1 << 9) | (1 << 10);
/// CR4.PSE: page-directory entries with PS set map 4 MiB pages.
pub const CR4_PSE: u32 = 1 << 4;
/// CR4.TSD: RDTSC is privileged.
pub const CR4_TSD: u32 = 1 << 2;
/// CR0 bits that exist.
const CR0_DEFINED: u32 = Cr0::PE
    | Cr0::MP
    | Cr0::EM
    | Cr0::TS
    | Cr0::ET
    | Cr0::NE
    | Cr0::WP
    | Cr0::AM
    | Cr0::NW
    | Cr0::CD
    | Cr0::PG;

/// MSR numbers the virtual CPU implements.
pub mod msr {
    /// IA32_TIME_STAMP_COUNTER.
    pub const TSC: u32 = 0x10;
    /// IA32_TSC_ADJUST: what was added to the TSC by writes (to either
    /// MSR) since reset. The guest's TSC is the host's plus one offset,
    /// which is exactly that.
    pub const TSC_ADJUST: u32 = 0x3b;
    /// IA32_PLATFORM_ID (read-only; P6 family).
    pub const PLATFORM_ID: u32 = 0x17;
    /// IA32_BIOS_SIGN_ID: the microcode update signature. Linux writes 0,
    /// runs CPUID and reads the revision back (every family-6 Intel CPU).
    pub const BIOS_SIGN_ID: u32 = 0x8b;
    /// IA32_SYSENTER_CS.
    pub const SYSENTER_CS: u32 = 0x174;
    /// IA32_SYSENTER_ESP.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// IA32_SYSENTER_EIP.
    pub const SYSENTER_EIP: u32 = 0x176;
}

/// The handler of `instr` if it is one of this family's that change only
/// EFLAGS, the general registers and the stack (and may hold interrupts
/// off for one instruction): CLI, STI, PUSHF, POPF, RDTSC. The fast
/// interpreter calls it straight from the decoding; [`execute`] through
/// it.
pub(crate) fn flags_handler(instr: &Instruction) -> Option<Handler> {
    let handler: Handler = match instr.mnemonic() {
        Mnemonic::Cli => |ctx: &mut Ctx<'_>| set_interrupt_flag(ctx, false),
        Mnemonic::Sti => |ctx: &mut Ctx<'_>| set_interrupt_flag(ctx, true),
        Mnemonic::Pushf | Mnemonic::Pushfd => pushf,
        Mnemonic::Popf | Mnemonic::Popfd => popf,
        Mnemonic::Rdtsc => rdtsc,
        _ => return None,
    };
    Some(handler)
}

/// Executes the instruction if it belongs to this family.
pub(crate) fn execute(ctx: &mut Ctx<'_>) -> Option<Result<(), Stop>> {
    if let Some(handler) = flags_handler(ctx.instr) {
        return Some(handler(ctx));
    }
    let result = match ctx.instr.mnemonic() {
        Mnemonic::Lgdt | Mnemonic::Lidt => load_table_register(ctx),
        Mnemonic::Sgdt | Mnemonic::Sidt => store_table_register(ctx),
        Mnemonic::Lldt => privileged(ctx).and_then(|()| lldt(ctx)),
        Mnemonic::Ltr => privileged(ctx).and_then(|()| ltr(ctx)),
        Mnemonic::Sldt => {
            let selector = u32::from(ctx.cpu.ldtr.selector);
            ctx.write_op(0, selector)
        }
        Mnemonic::Str => {
            let selector = u32::from(ctx.cpu.tr.selector);
            ctx.write_op(0, selector)
        }
        Mnemonic::Smsw => {
            // A register destination gets all of CR0 (as on P6 and later
            // and in QEMU); memory gets the low 16 bits.
            let cr0 = ctx.cpu.cr0;
            ctx.write_op(0, cr0)
        }
        Mnemonic::Lmsw => privileged(ctx).and_then(|()| lmsw(ctx)),
        Mnemonic::Clts => privileged(ctx).map(|()| ctx.cpu.cr0 &= !Cr0::TS),
        Mnemonic::Mov if is_register_kind(ctx, Register::is_cr) => {
            privileged(ctx).and_then(|()| mov_control(ctx))
        }
        Mnemonic::Mov if is_register_kind(ctx, Register::is_dr) => {
            privileged(ctx).and_then(|()| mov_debug(ctx))
        }
        Mnemonic::Mov if is_register_kind(ctx, Register::is_tr) => Err(Exception::ud().into()),
        Mnemonic::Invlpg => privileged(ctx).map(|()| {
            let (segment, offset) = ctx.memory_operand(0);
            let linear = ctx.cpu.segment(segment).cache.base.wrapping_add(offset);
            ctx.machine.notify(Event::InvalidatePage(linear));
        }),
        Mnemonic::Invd | Mnemonic::Wbinvd | Mnemonic::Wbnoinvd => privileged(ctx),
        Mnemonic::Hlt => privileged(ctx).map(|()| ctx.outcome = Outcome::Halted),
        Mnemonic::Cpuid => {
            let leaf = ctx.cpu.gpr[Gpr::Eax as usize];
            let subleaf = ctx.cpu.gpr[Gpr::Ecx as usize];
            let [eax, ebx, ecx, edx] = cpuid::cpuid(leaf, subleaf, ctx.machine.tsc_khz());
            ctx.cpu.gpr[Gpr::Eax as usize] = eax;
            ctx.cpu.gpr[Gpr::Ebx as usize] = ebx;
            ctx.cpu.gpr[Gpr::Ecx as usize] = ecx;
            ctx.cpu.gpr[Gpr::Edx as usize] = edx;
            Ok(())
        }
        Mnemonic::Rdmsr => privileged(ctx).and_then(|()| rdmsr(ctx)),
        Mnemonic::Wrmsr => privileged(ctx).and_then(|()| wrmsr(ctx)),
        // No performance counters: every counter index is invalid.
        Mnemonic::Rdpmc => Err(Exception::gp(0).into()),
        Mnemonic::Sysenter => sysenter(ctx),
        Mnemonic::Sysexit => sysexit(ctx),
        // SYSCALL/SYSRET need EFER.SCE, which an i686 does not have.
        Mnemonic::Syscall | Mnemonic::Sysret => Err(Exception::ud().into()),
        // Instructions of extensions CPUID does not offer, and the
        // explicit invalid opcodes.
        Mnemonic::Ud0
        | Mnemonic::Ud1
        | Mnemonic::Ud2
        | Mnemonic::Rdtscp
        | Mnemonic::Rdpid
        | Mnemonic::Xgetbv
        | Mnemonic::Xsetbv
        | Mnemonic::Monitor
        | Mnemonic::Mwait
        | Mnemonic::Clac
        | Mnemonic::Stac
        | Mnemonic::Invpcid
        | Mnemonic::Rsm => Err(Exception::ud().into()),
        _ => return None,
    };
    Some(result)
}

fn is_register_kind(ctx: &Ctx<'_>, test: fn(Register) -> bool) -> bool {
    (0..ctx.instr.op_count())
        .any(|op| ctx.instr.op_kind(op) == OpKind::Register && test(ctx.instr.op_register(op)))
}

/// #GP(0) unless CPL is 0.
fn privileged(ctx: &Ctx<'_>) -> Result<(), Stop> {
    if ctx.cpu.cpl == 0 {
        Ok(())
    } else {
        Err(Exception::gp(0).into())
    }
}

fn set_interrupt_flag(ctx: &mut Ctx<'_>, enable: bool) -> Result<(), Stop> {
    if ctx.cpu.cpl > ctx.cpu.iopl() {
        return Err(Exception::gp(0).into());
    }
    if enable {
        // STI delays interrupts by one instruction when IF was clear.
        ctx.shadow = ctx.cpu.eflags & Eflags::IF == 0;
        ctx.cpu.eflags |= Eflags::IF;
    } else {
        ctx.cpu.eflags &= !Eflags::IF;
    }
    Ok(())
}

fn pushf(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let size = ctx.operand_size();
    // VM and RF read as 0 in the pushed image.
    let image = ctx.cpu.eflags & !(Eflags::VM | Eflags::RF);
    ctx.push(image, size)
}

fn popf(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let size = ctx.operand_size();
    let popped = ctx.pop(size)?;
    ctx.cpu.eflags = merge_flags(ctx.cpu.eflags, popped, ctx.cpu.cpl, size, false);
    Ok(())
}

fn load_table_register(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    privileged(ctx)?;
    let (segment, offset) = ctx.memory_operand(0);
    let limit = ctx.read_mem(segment, offset, 2)?;
    let mut base = ctx.read_mem(segment, offset.wrapping_add(2), 4)?;
    if ctx.operand_size() == 2 {
        base &= 0x00ff_ffff;
    }
    let table = TableRegister {
        base,
        limit: (limit & 0xffff) as u16,
    };
    if ctx.instr.mnemonic() == Mnemonic::Lgdt {
        ctx.cpu.gdtr = table;
        ctx.machine.notify(Event::DescriptorTablesChanged);
    } else {
        ctx.cpu.idtr = table;
    }
    Ok(())
}

fn store_table_register(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let table = if ctx.instr.mnemonic() == Mnemonic::Sgdt {
        ctx.cpu.gdtr
    } else {
        ctx.cpu.idtr
    };
    let (segment, offset) = ctx.memory_operand(0);
    // Check the whole 6 bytes before writing any.
    ctx.linear(segment, offset, 6, crate::machine::AccessKind::Write)?;
    ctx.write_mem(segment, offset, 2, u32::from(table.limit))?;
    ctx.write_mem(segment, offset.wrapping_add(2), 4, table.base)
}

fn lldt(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let selector = (ctx.read_op(0)? & 0xffff) as u16;
    if selector & !3 == 0 {
        ctx.cpu.ldtr = Segment {
            selector,
            cache: Descriptor::default(),
        };
        ctx.machine.notify(Event::DescriptorTablesChanged);
        return Ok(());
    }
    let error = selector_error(selector);
    if selector & 4 != 0 {
        return Err(Exception::gp(error).into());
    }
    let slot = read_descriptor(ctx.cpu, ctx.machine, selector, Exception::gp)?;
    let desc = slot.descriptor;
    if desc.code_or_data || desc.kind != system::LDT {
        return Err(Exception::gp(error).into());
    }
    if !desc.present {
        return Err(Exception::np(error).into());
    }
    ctx.cpu.ldtr = Segment {
        selector,
        cache: desc,
    };
    ctx.machine.notify(Event::DescriptorTablesChanged);
    Ok(())
}

fn ltr(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let selector = (ctx.read_op(0)? & 0xffff) as u16;
    if selector & !3 == 0 {
        return Err(Exception::gp(0).into());
    }
    let error = selector_error(selector);
    if selector & 4 != 0 {
        return Err(Exception::gp(error).into());
    }
    let slot = read_descriptor(ctx.cpu, ctx.machine, selector, Exception::gp)?;
    let desc = slot.descriptor;
    if desc.code_or_data || !matches!(desc.kind, system::TSS16_AVAILABLE | system::TSS32_AVAILABLE)
    {
        return Err(Exception::gp(error).into());
    }
    if !desc.present {
        return Err(Exception::np(error).into());
    }
    // Mark the TSS busy in the GDT (type bit 1).
    #[allow(clippy::cast_possible_truncation)] // byte 5 of the descriptor
    let type_byte = ((slot.raw >> 40) & 0xff) as u8 | 2;
    ctx.machine.write_linear(
        slot.linear.wrapping_add(5),
        &[type_byte],
        Access::SYSTEM_WRITE,
    )?;
    let mut cache = desc;
    cache.kind |= 2;
    ctx.cpu.tr = Segment { selector, cache };
    Ok(())
}

fn lmsw(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let source = ctx.read_op(0)?;
    let low = Cr0::PE | Cr0::MP | Cr0::EM | Cr0::TS;
    // LMSW can set PE but never clear it.
    let value = (ctx.cpu.cr0 & !low) | (source & low) | (ctx.cpu.cr0 & Cr0::PE);
    write_cr0(ctx, value)
}

fn write_cr0(ctx: &mut Ctx<'_>, value: u32) -> Result<(), Stop> {
    if (value & Cr0::PG != 0 && value & Cr0::PE == 0)
        || (value & Cr0::NW != 0 && value & Cr0::CD == 0)
    {
        return Err(Exception::gp(0).into());
    }
    if value & Cr0::PE == 0 {
        return Err(Stop::Unsupported("real mode (clearing CR0.PE)"));
    }
    // ET is hardwired to 1; undefined bits read as 0.
    let value = (value & CR0_DEFINED) | Cr0::ET;
    ctx.cpu.cr0 = value;
    ctx.machine
        .notify(Event::ControlRegisterWritten { register: 0, value });
    Ok(())
}

fn control_number(register: Register) -> u32 {
    register as u32 - Register::CR0 as u32
}

fn mov_control(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let to_cr = ctx.instr.op_register(0).is_cr();
    let (cr, gpr) = if to_cr {
        (ctx.instr.op_register(0), ctx.instr.op_register(1))
    } else {
        (ctx.instr.op_register(1), ctx.instr.op_register(0))
    };
    let number = control_number(cr);
    if to_cr {
        let value = ctx.reg(gpr);
        match number {
            0 => write_cr0(ctx, value)?,
            2 => ctx.cpu.cr2 = value,
            3 => {
                ctx.cpu.cr3 = value;
                ctx.machine
                    .notify(Event::ControlRegisterWritten { register: 3, value });
            }
            4 => {
                if value & !CR4_SUPPORTED != 0 {
                    return Err(Exception::gp(0).into());
                }
                ctx.cpu.cr4 = value;
                ctx.machine
                    .notify(Event::ControlRegisterWritten { register: 4, value });
            }
            _ => return Err(Exception::ud().into()),
        }
    } else {
        let value = match number {
            0 => ctx.cpu.cr0,
            2 => ctx.cpu.cr2,
            3 => ctx.cpu.cr3,
            4 => ctx.cpu.cr4,
            _ => return Err(Exception::ud().into()),
        };
        ctx.set_reg(gpr, value);
    }
    Ok(())
}

fn mov_debug(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let to_dr = ctx.instr.op_register(0).is_dr();
    let (dr, gpr) = if to_dr {
        (ctx.instr.op_register(0), ctx.instr.op_register(1))
    } else {
        (ctx.instr.op_register(1), ctx.instr.op_register(0))
    };
    // DR4/DR5 alias DR6/DR7 (CR4.DE is not available).
    let number = match dr as u32 - Register::DR0 as u32 {
        4 => 6,
        5 => 7,
        number @ 0..=7 => number,
        _ => return Err(Exception::ud().into()),
    } as usize;
    if to_dr {
        let value = ctx.reg(gpr);
        match number {
            // Reserved bits of DR6 read as 1 (bits 4-11, 16-31) or 0 (12).
            6 => ctx.cpu.dr[6] = (value | 0xffff_0ff0) & !0x1000,
            7 => {
                // Breakpoint enables (L0-G3) and general detect.
                if value & (0xff | (1 << 13)) != 0 {
                    return Err(Stop::Unsupported(
                        "guest hardware breakpoints (DR7 enables)",
                    ));
                }
                ctx.cpu.dr[7] = (value | 0x400) & !((1 << 11) | (1 << 12) | (1 << 14) | (1 << 15));
            }
            _ => ctx.cpu.dr[number] = value,
        }
    } else {
        let value = ctx.cpu.dr[number];
        ctx.set_reg(gpr, value);
    }
    Ok(())
}

fn rdmsr(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let value = match ctx.cpu.gpr[Gpr::Ecx as usize] {
        msr::TSC => ctx.machine.timestamp().wrapping_add(ctx.cpu.tsc_offset),
        msr::TSC_ADJUST => ctx.cpu.tsc_offset,
        // Platform 0 (bits 52:50), no microcode update loaded (revision 0
        // in EDX).
        msr::PLATFORM_ID | msr::BIOS_SIGN_ID => 0,
        msr::SYSENTER_CS => u64::from(ctx.cpu.sysenter[0]),
        msr::SYSENTER_ESP => u64::from(ctx.cpu.sysenter[1]),
        msr::SYSENTER_EIP => u64::from(ctx.cpu.sysenter[2]),
        _ => return Err(Exception::gp(0).into()),
    };
    set_edx_eax(ctx.cpu, value);
    Ok(())
}

fn wrmsr(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let value = (u64::from(ctx.cpu.gpr[Gpr::Edx as usize]) << 32)
        | u64::from(ctx.cpu.gpr[Gpr::Eax as usize]);
    #[allow(clippy::cast_possible_truncation)] // 32-bit MSRs take EAX
    let low = value as u32;
    match ctx.cpu.gpr[Gpr::Ecx as usize] {
        msr::TSC => ctx.cpu.tsc_offset = value.wrapping_sub(ctx.machine.timestamp()),
        msr::TSC_ADJUST => ctx.cpu.tsc_offset = value,
        // Writing it asks the CPU to latch the signature: nothing to keep.
        msr::BIOS_SIGN_ID => {}
        msr::SYSENTER_CS => ctx.cpu.sysenter[0] = low & 0xffff,
        msr::SYSENTER_ESP => ctx.cpu.sysenter[1] = low,
        msr::SYSENTER_EIP => ctx.cpu.sysenter[2] = low,
        _ => return Err(Exception::gp(0).into()),
    }
    Ok(())
}

fn set_edx_eax(cpu: &mut Cpu, value: u64) {
    #[allow(clippy::cast_possible_truncation)] // the two halves
    {
        cpu.gpr[Gpr::Eax as usize] = value as u32;
        cpu.gpr[Gpr::Edx as usize] = (value >> 32) as u32;
    }
}

fn rdtsc(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    if ctx.cpu.cr4 & CR4_TSD != 0 && ctx.cpu.cpl != 0 {
        return Err(Exception::gp(0).into());
    }
    let value = ctx.machine.timestamp().wrapping_add(ctx.cpu.tsc_offset);
    set_edx_eax(ctx.cpu, value);
    Ok(())
}

/// A flat 4 GiB segment with the given type and DPL, as SYSENTER and
/// SYSEXIT load them without reading descriptors.
fn flat(selector: u16, code: bool, dpl: u8) -> Segment {
    Segment {
        selector,
        cache: Descriptor {
            base: 0,
            limit: 0xffff_ffff,
            kind: if code { TYPE_CODE } else { 0 } | TYPE_WRITABLE_READABLE | TYPE_ACCESSED,
            code_or_data: true,
            dpl,
            present: true,
            available: false,
            big: true,
            granular: true,
        },
    }
}

/// SYSENTER as QEMU implements it for the i686 (it does not check CPUID's
/// SEP bit): #GP(0) while IA32_SYSENTER_CS is 0, otherwise a jump to ring
/// 0 at SYSENTER_EIP with the flat segments it implies.
fn sysenter(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let cs = (ctx.cpu.sysenter[0] & 0xfffc) as u16;
    if cs == 0 {
        return Err(Exception::gp(0).into());
    }
    *ctx.cpu.segment_mut(SegReg::Cs) = flat(cs, true, 0);
    *ctx.cpu.segment_mut(SegReg::Ss) = flat(cs.wrapping_add(8), false, 0);
    ctx.cpu.cpl = 0;
    ctx.cpu.eflags &= !(Eflags::VM | Eflags::IF | Eflags::RF);
    ctx.cpu.gpr[Gpr::Esp as usize] = ctx.cpu.sysenter[1];
    ctx.next_eip = ctx.cpu.sysenter[2];
    Ok(())
}

fn sysexit(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let cs = (ctx.cpu.sysenter[0] & 0xfffc) as u16;
    if cs == 0 || ctx.cpu.cpl != 0 {
        return Err(Exception::gp(0).into());
    }
    *ctx.cpu.segment_mut(SegReg::Cs) = flat(cs.wrapping_add(16) | 3, true, 3);
    *ctx.cpu.segment_mut(SegReg::Ss) = flat(cs.wrapping_add(24) | 3, false, 3);
    ctx.cpu.cpl = 3;
    ctx.cpu.gpr[Gpr::Esp as usize] = ctx.cpu.gpr[Gpr::Ecx as usize];
    ctx.next_eip = ctx.cpu.gpr[Gpr::Edx as usize];
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emu::testing::{STACK, TestMachine, cpu, run};

    fn eax(cpu: &Cpu) -> u32 {
        cpu.gpr[Gpr::Eax as usize]
    }

    #[test]
    fn cli_sti_follow_iopl_and_cpl() {
        let mut machine = TestMachine::default();
        let mut cpu = cpu();
        run(&mut cpu, &mut machine, &[0xfb]).expect("sti"); // sti
        assert_ne!(cpu.eflags & Eflags::IF, 0);
        assert!(cpu.interrupt_shadow, "sti with IF=0 opens a shadow");
        run(&mut cpu, &mut machine, &[0xfb]).expect("sti");
        assert!(!cpu.interrupt_shadow, "no shadow when IF was already 1");
        run(&mut cpu, &mut machine, &[0xfa]).expect("cli"); // cli
        assert_eq!(cpu.eflags & Eflags::IF, 0);
        cpu.cpl = 3;
        assert_eq!(
            run(&mut cpu, &mut machine, &[0xfa]),
            Err(Stop::Exception(Exception::gp(0)))
        );
        cpu.eflags |= Eflags::IOPL;
        run(&mut cpu, &mut machine, &[0xfb]).expect("sti with IOPL 3");
    }

    #[test]
    fn pushf_shows_the_virtual_if_and_popf_follows_privilege() {
        let mut machine = TestMachine::default();
        let mut cpu = cpu();
        cpu.eflags = 0x0001_0246 | Eflags::IF; // RF set: not pushed
        run(&mut cpu, &mut machine, &[0x9c]).expect("pushfd");
        assert_eq!(machine.u32_at(STACK - 4), 0x246 | Eflags::IF);
        // popfd of IOPL 3, IF 0 at CPL 0: both change.
        machine.poke_u32(STACK - 4, 0x3002);
        run(&mut cpu, &mut machine, &[0x9d]).expect("popfd");
        assert_eq!(cpu.eflags, 0x3002);
        // pushfw / popfw
        run(&mut cpu, &mut machine, &[0x66, 0x9c]).expect("pushfw");
        assert_eq!(cpu.gpr[Gpr::Esp as usize], STACK - 2);
        assert_eq!(machine.u16_at(STACK - 2), 0x3002);
        machine.poke(STACK - 2, &0x0202u16.to_le_bytes());
        run(&mut cpu, &mut machine, &[0x66, 0x9d]).expect("popfw");
        assert_eq!(cpu.eflags, 0x0202);
        // At CPL 3 with IOPL 0, popf silently keeps IF and IOPL.
        cpu.cpl = 3;
        machine.poke_u32(STACK - 4, 0x3000);
        cpu.gpr[Gpr::Esp as usize] = STACK - 4;
        run(&mut cpu, &mut machine, &[0x9d]).expect("popfd at CPL 3");
        assert_eq!(cpu.eflags, 0x0202);
    }

    #[test]
    fn descriptor_table_registers_round_trip() {
        let mut machine = TestMachine::default();
        let mut cpu = cpu();
        machine.poke(0x3000, &[0x27, 0x00, 0x00, 0x20, 0x10, 0xc0]);
        // lgdt [0x3000]
        run(
            &mut cpu,
            &mut machine,
            &[0x0f, 0x01, 0x15, 0x00, 0x30, 0, 0],
        )
        .expect("lgdt");
        assert_eq!(
            cpu.gdtr,
            TableRegister {
                base: 0xc010_2000,
                limit: 0x27
            }
        );
        assert_eq!(machine.events, vec![Event::DescriptorTablesChanged]);
        // sgdt [0x3100]
        run(
            &mut cpu,
            &mut machine,
            &[0x0f, 0x01, 0x05, 0x00, 0x31, 0, 0],
        )
        .expect("sgdt");
        assert_eq!(
            &machine.memory[0x3100..0x3106],
            &[0x27, 0x00, 0x00, 0x20, 0x10, 0xc0]
        );
        // lidt at CPL 3 faults; sidt does not.
        cpu.cpl = 3;
        assert_eq!(
            run(
                &mut cpu,
                &mut machine,
                &[0x0f, 0x01, 0x1d, 0x00, 0x30, 0, 0]
            ),
            Err(Stop::Exception(Exception::gp(0)))
        );
        run(
            &mut cpu,
            &mut machine,
            &[0x0f, 0x01, 0x0d, 0x00, 0x31, 0, 0],
        )
        .expect("sidt");
        assert_eq!(&machine.memory[0x3100..0x3102], &[0xff, 0x03]);
    }

    fn gdt_with_ldt_and_tss(machine: &mut TestMachine, cpu: &mut Cpu) {
        let entries: [u64; 4] = [
            0,
            0x00cf_9a00_0000_ffff,
            0x0000_8200_5000_003f, // LDT at 0x5000
            0x0000_8900_6000_0067, // available 32-bit TSS at 0x6000
        ];
        for (index, entry) in entries.iter().enumerate() {
            #[allow(clippy::cast_possible_truncation)]
            machine.poke(0x2000 + index as u32 * 8, &entry.to_le_bytes());
        }
        cpu.gdtr = TableRegister {
            base: 0x2000,
            limit: 31,
        };
    }

    #[test]
    fn lldt_ltr_sldt_str() {
        let mut machine = TestMachine::default();
        let mut cpu = cpu();
        gdt_with_ldt_and_tss(&mut machine, &mut cpu);
        cpu.gpr[Gpr::Eax as usize] = 0x10;
        run(&mut cpu, &mut machine, &[0x0f, 0x00, 0xd0]).expect("lldt ax");
        assert_eq!(cpu.ldtr.cache.base, 0x5000);
        cpu.gpr[Gpr::Eax as usize] = 0x18;
        run(&mut cpu, &mut machine, &[0x0f, 0x00, 0xd8]).expect("ltr ax");
        assert_eq!(cpu.tr.selector, 0x18);
        assert_eq!(machine.memory[0x2018 + 5], 0x8b, "TSS busy in the GDT");
        // ltr again: busy TSS -> #GP(0x18)
        assert_eq!(
            run(&mut cpu, &mut machine, &[0x0f, 0x00, 0xd8]),
            Err(Stop::Exception(Exception::gp(0x18)))
        );
        // sldt ecx / str edx
        run(&mut cpu, &mut machine, &[0x0f, 0x00, 0xc1]).expect("sldt");
        run(&mut cpu, &mut machine, &[0x0f, 0x00, 0xca]).expect("str");
        assert_eq!(cpu.gpr[Gpr::Ecx as usize], 0x10);
        assert_eq!(cpu.gpr[Gpr::Edx as usize], 0x18);
        // lldt of a code segment: #GP(sel)
        cpu.gpr[Gpr::Eax as usize] = 0x08;
        assert_eq!(
            run(&mut cpu, &mut machine, &[0x0f, 0x00, 0xd0]),
            Err(Stop::Exception(Exception::gp(0x08)))
        );
    }

    #[test]
    fn control_registers() {
        let mut machine = TestMachine::default();
        let mut cpu = cpu();
        // mov eax, cr0
        run(&mut cpu, &mut machine, &[0x0f, 0x20, 0xc0]).expect("read cr0");
        assert_eq!(eax(&cpu), Cr0::PE | Cr0::ET);
        // set TS and WP: mov cr0, eax
        cpu.gpr[Gpr::Eax as usize] = Cr0::PE | Cr0::TS | Cr0::WP;
        run(&mut cpu, &mut machine, &[0x0f, 0x22, 0xc0]).expect("write cr0");
        assert_eq!(cpu.cr0, Cr0::PE | Cr0::TS | Cr0::WP | Cr0::ET);
        run(&mut cpu, &mut machine, &[0x0f, 0x06]).expect("clts");
        assert_eq!(cpu.cr0 & Cr0::TS, 0);
        // lmsw ax cannot clear PE
        cpu.gpr[Gpr::Eax as usize] = Cr0::MP;
        run(&mut cpu, &mut machine, &[0x0f, 0x01, 0xf0]).expect("lmsw");
        assert_eq!(cpu.cr0 & 0xf, Cr0::PE | Cr0::MP);
        // smsw eax: whole CR0
        run(&mut cpu, &mut machine, &[0x0f, 0x01, 0xe0]).expect("smsw");
        assert_eq!(eax(&cpu), cpu.cr0);
        // PG without PE is #GP; NW without CD is #GP.
        cpu.gpr[Gpr::Eax as usize] = Cr0::PE | Cr0::NW;
        assert_eq!(
            run(&mut cpu, &mut machine, &[0x0f, 0x22, 0xc0]),
            Err(Stop::Exception(Exception::gp(0)))
        );
        // cr3 and cr2 round trip; cr4 rejects unsupported bits (PAE).
        cpu.gpr[Gpr::Eax as usize] = 0x0012_3000;
        run(&mut cpu, &mut machine, &[0x0f, 0x22, 0xd8]).expect("cr3");
        run(&mut cpu, &mut machine, &[0x0f, 0x20, 0xd9]).expect("read cr3 to ecx");
        assert_eq!(cpu.gpr[Gpr::Ecx as usize], 0x0012_3000);
        cpu.gpr[Gpr::Eax as usize] = 1 << 5;
        assert_eq!(
            run(&mut cpu, &mut machine, &[0x0f, 0x22, 0xe0]),
            Err(Stop::Exception(Exception::gp(0)))
        );
        cpu.gpr[Gpr::Eax as usize] = 0x600;
        run(&mut cpu, &mut machine, &[0x0f, 0x22, 0xe0]).expect("OSFXSR|OSXMMEXCPT");
        assert_eq!(cpu.cr4, 0x600);
        // At CPL 3 every form faults.
        cpu.cpl = 3;
        assert_eq!(
            run(&mut cpu, &mut machine, &[0x0f, 0x20, 0xc0]),
            Err(Stop::Exception(Exception::gp(0)))
        );
    }

    #[test]
    fn debug_registers_store_without_arming() {
        let mut machine = TestMachine::default();
        let mut cpu = cpu();
        cpu.gpr[Gpr::Eax as usize] = 0x1234_5678;
        run(&mut cpu, &mut machine, &[0x0f, 0x23, 0xc8]).expect("mov dr1, eax");
        run(&mut cpu, &mut machine, &[0x0f, 0x21, 0xcb]).expect("mov ebx, dr1");
        assert_eq!(cpu.gpr[Gpr::Ebx as usize], 0x1234_5678);
        run(&mut cpu, &mut machine, &[0x0f, 0x21, 0xfb]).expect("mov ebx, dr7");
        assert_eq!(cpu.gpr[Gpr::Ebx as usize], 0x400);
        cpu.gpr[Gpr::Eax as usize] = 1;
        assert!(matches!(
            run(&mut cpu, &mut machine, &[0x0f, 0x23, 0xf8]),
            Err(Stop::Unsupported(_))
        ));
    }

    #[test]
    fn msrs_tsc_and_cpuid() {
        let mut machine = TestMachine::default();
        let mut cpu = cpu();
        for (msr, value) in [(0x174, 0x10), (0x175, 0xc000_8000), (0x176, 0xc010_0000)] {
            cpu.gpr[Gpr::Ecx as usize] = msr;
            cpu.gpr[Gpr::Eax as usize] = value;
            cpu.gpr[Gpr::Edx as usize] = 0;
            run(&mut cpu, &mut machine, &[0x0f, 0x30]).expect("wrmsr");
            cpu.gpr[Gpr::Eax as usize] = 0;
            run(&mut cpu, &mut machine, &[0x0f, 0x32]).expect("rdmsr");
            assert_eq!(eax(&cpu), value);
        }
        cpu.gpr[Gpr::Ecx as usize] = 0x1b; // APIC base: no APIC
        assert_eq!(
            run(&mut cpu, &mut machine, &[0x0f, 0x32]),
            Err(Stop::Exception(Exception::gp(0)))
        );
        // TSC written through the MSR moves RDTSC.
        cpu.gpr[Gpr::Ecx as usize] = 0x10;
        cpu.gpr[Gpr::Eax as usize] = 0;
        cpu.gpr[Gpr::Edx as usize] = 1;
        run(&mut cpu, &mut machine, &[0x0f, 0x30]).expect("wrmsr tsc");
        machine.tsc += 100;
        run(&mut cpu, &mut machine, &[0x0f, 0x31]).expect("rdtsc");
        assert_eq!((eax(&cpu), cpu.gpr[Gpr::Edx as usize]), (100, 1));
        // IA32_TSC_ADJUST holds what the writes added; writing it moves
        // the TSC by the difference, as on the CPU.
        let host = machine.tsc;
        cpu.gpr[Gpr::Ecx as usize] = 0x3b;
        run(&mut cpu, &mut machine, &[0x0f, 0x32]).expect("rdmsr tsc_adjust");
        let adjust = (u64::from(cpu.gpr[Gpr::Edx as usize]) << 32) | u64::from(eax(&cpu));
        assert_eq!(adjust, ((1u64 << 32) + 100).wrapping_sub(host));
        cpu.gpr[Gpr::Eax as usize] = 0;
        cpu.gpr[Gpr::Edx as usize] = 0;
        run(&mut cpu, &mut machine, &[0x0f, 0x30]).expect("wrmsr tsc_adjust");
        run(&mut cpu, &mut machine, &[0x0f, 0x31]).expect("rdtsc");
        assert_eq!(
            (u64::from(cpu.gpr[Gpr::Edx as usize]) << 32) | u64::from(eax(&cpu)),
            host,
            "back to the host's count"
        );
        // CR4.TSD makes RDTSC privileged.
        cpu.cr4 = CR4_TSD;
        cpu.cpl = 3;
        assert_eq!(
            run(&mut cpu, &mut machine, &[0x0f, 0x31]),
            Err(Stop::Exception(Exception::gp(0)))
        );
        cpu.cpl = 0;
        cpu.gpr[Gpr::Eax as usize] = 1;
        run(&mut cpu, &mut machine, &[0x0f, 0xa2]).expect("cpuid");
        assert_eq!(cpu.gpr[Gpr::Edx as usize], cpuid::FEATURES_EDX);
    }

    #[test]
    fn hlt_invlpg_and_absent_instructions() {
        let mut machine = TestMachine::default();
        let mut cpu = cpu();
        assert_eq!(run(&mut cpu, &mut machine, &[0xf4]), Ok(Outcome::Halted));
        assert_eq!(cpu.eip, 0x1001);
        cpu.gpr[Gpr::Eax as usize] = 0x4000;
        run(&mut cpu, &mut machine, &[0x0f, 0x01, 0x38]).expect("invlpg [eax]");
        assert_eq!(machine.events.last(), Some(&Event::InvalidatePage(0x4000)));
        for code in [
            &[0x0f, 0x0b][..],
            &[0x0f, 0x01, 0xd0],
            &[0x0f, 0x01, 0xf9],
            &[0x0f, 0x05],
        ] {
            assert_eq!(
                run(&mut cpu, &mut machine, code),
                Err(Stop::Exception(Exception::ud())),
                "{code:02x?}"
            );
        }
        cpu.cpl = 3;
        assert_eq!(
            run(&mut cpu, &mut machine, &[0xf4]),
            Err(Stop::Exception(Exception::gp(0)))
        );
    }

    #[test]
    fn sysenter_and_sysexit() {
        let mut machine = TestMachine::default();
        let mut cpu = cpu();
        assert_eq!(
            run(&mut cpu, &mut machine, &[0x0f, 0x34]),
            Err(Stop::Exception(Exception::gp(0)))
        );
        cpu.sysenter = [0x10, 0x9000, 0x5000];
        cpu.cpl = 3;
        run(&mut cpu, &mut machine, &[0x0f, 0x34]).expect("sysenter");
        assert_eq!(
            (cpu.cpl, cpu.eip, cpu.gpr[Gpr::Esp as usize]),
            (0, 0x5000, 0x9000)
        );
        assert_eq!(cpu.segment(SegReg::Cs).selector, 0x10);
        assert_eq!(cpu.segment(SegReg::Ss).selector, 0x18);
        cpu.gpr[Gpr::Ecx as usize] = 0x7000;
        cpu.gpr[Gpr::Edx as usize] = 0x6000;
        machine.poke(0x5000, &[0x0f, 0x35]);
        crate::emu::step(&mut cpu, &mut machine).expect("sysexit");
        assert_eq!(
            (cpu.cpl, cpu.eip, cpu.gpr[Gpr::Esp as usize]),
            (3, 0x6000, 0x7000)
        );
        assert_eq!(cpu.segment(SegReg::Cs).selector, 0x23);
        assert_eq!(cpu.segment(SegReg::Ss).selector, 0x2b);
    }
}
