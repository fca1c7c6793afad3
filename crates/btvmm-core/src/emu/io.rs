//! Port I/O: IN, OUT, INS and OUTS (with REP), with the protected-mode
//! permission check: CPL <= IOPL, or else the I/O permission bitmap of the
//! current 32-bit TSS.

use iced_x86::{Mnemonic, OpKind, Register};

use crate::cpu::{Eflags, Gpr, SegReg};
use crate::descriptor::system;
use crate::exception::{Exception, Stop};
use crate::machine::{Access, AccessKind};

use super::{Ctx, mask, segreg};

/// Most iterations of a REP INS/OUTS per emulation step; the instruction
/// is re-executed for the rest (REP string instructions are interruptible).
const REP_BATCH: u32 = 4096;

/// Executes the instruction if it belongs to this family.
pub(crate) fn execute(ctx: &mut Ctx<'_>) -> Option<Result<(), Stop>> {
    let result = match ctx.instr.mnemonic() {
        Mnemonic::In => port_in(ctx),
        Mnemonic::Out => port_out(ctx),
        Mnemonic::Insb | Mnemonic::Insw | Mnemonic::Insd => string_io(ctx, true),
        Mnemonic::Outsb | Mnemonic::Outsw | Mnemonic::Outsd => string_io(ctx, false),
        _ => return None,
    };
    Some(result)
}

/// #GP(0) unless the current privilege may access `size` ports from `port`.
pub fn check_port_access(ctx: &mut Ctx<'_>, port: u16, size: u32) -> Result<(), Stop> {
    if ctx.cpu.cpl <= ctx.cpu.iopl() {
        return Ok(());
    }
    let tr = ctx.cpu.tr;
    let denied = || Err(Exception::gp(0).into());
    if tr.is_null() || !matches!(tr.cache.kind, system::TSS32_AVAILABLE | system::TSS32_BUSY) {
        return denied();
    }
    if tr.cache.limit < 103 {
        return denied();
    }
    let mut base = [0u8; 2];
    ctx.machine.read_linear(
        tr.cache.base.wrapping_add(102),
        &mut base,
        Access::SYSTEM_READ,
    )?;
    let bitmap = u32::from(u16::from_le_bytes(base));
    // The bits for the ports may straddle a byte: read two bytes.
    let first = bitmap + u32::from(port) / 8;
    if first + 1 > tr.cache.limit {
        return denied();
    }
    let mut bits = [0u8; 2];
    ctx.machine.read_linear(
        tr.cache.base.wrapping_add(first),
        &mut bits,
        Access::SYSTEM_READ,
    )?;
    let bits = u32::from(u16::from_le_bytes(bits)) >> (port % 8);
    if bits & ((1 << size) - 1) != 0 {
        return denied();
    }
    Ok(())
}

fn port_operand(ctx: &Ctx<'_>, op: u32) -> u16 {
    match ctx.instr.op_kind(op) {
        OpKind::Register => (ctx.reg(Register::DX) & 0xffff) as u16,
        _ => u16::from(ctx.instr.immediate8()),
    }
}

fn port_in(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let port = port_operand(ctx, 1);
    let size = ctx.op_size(0);
    check_port_access(ctx, port, size)?;
    #[allow(clippy::cast_possible_truncation)] // 1, 2 or 4
    let value = ctx.machine.port_in(port, size as u8)?;
    let register = ctx.instr.op_register(0);
    ctx.set_reg(register, value & mask(size));
    Ok(())
}

fn port_out(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let port = port_operand(ctx, 0);
    let size = ctx.op_size(1);
    check_port_access(ctx, port, size)?;
    let value = ctx.reg(ctx.instr.op_register(1)) & mask(size);
    #[allow(clippy::cast_possible_truncation)] // 1, 2 or 4
    ctx.machine.port_out(port, size as u8, value)
}

fn string_io(ctx: &mut Ctx<'_>, input: bool) -> Result<(), Stop> {
    let size = match ctx.instr.mnemonic() {
        Mnemonic::Insb | Mnemonic::Outsb => 1,
        Mnemonic::Insw | Mnemonic::Outsw => 2,
        _ => 4,
    };
    let port = (ctx.reg(Register::DX) & 0xffff) as u16;
    check_port_access(ctx, port, size)?;
    let wide_addresses = address_size_32(ctx);
    let address_mask = if wide_addresses { 0xffff_ffff } else { 0xffff };
    let rep = ctx.instr.has_rep_prefix() || ctx.instr.has_repne_prefix();
    let mut count = if rep {
        ctx.cpu.gpr[Gpr::Ecx as usize] & address_mask
    } else {
        1
    };
    let step = if ctx.cpu.eflags & Eflags::DF != 0 {
        size.wrapping_neg()
    } else {
        size
    };
    let index_register = if input { Gpr::Edi } else { Gpr::Esi };
    let segment = if input {
        SegReg::Es
    } else {
        segreg(ctx.instr.memory_segment()).unwrap_or(SegReg::Ds)
    };
    let mut done = 0;
    while count > 0 && done < REP_BATCH {
        if rep && step == size {
            // Forward: whole stretches within a page at once.
            let moved = string_io_batch(
                ctx,
                input,
                port,
                size,
                segment,
                index_register,
                address_mask,
                count.min(REP_BATCH - done),
            )?;
            if moved > 0 {
                count -= moved;
                done += moved;
                continue;
            }
        }
        let index = ctx.cpu.gpr[index_register as usize] & address_mask;
        #[allow(clippy::cast_possible_truncation)] // 1, 2 or 4
        let port_size = size as u8;
        if input {
            // The destination is checked before the port is read, so a
            // faulting INS does not consume device data.
            let linear = ctx.linear(segment, index, size, AccessKind::Write)?;
            let value = ctx.machine.port_in(port, port_size)?;
            let access = ctx.data_access(AccessKind::Write);
            ctx.machine
                .write_linear(linear, &value.to_le_bytes()[..size as usize], access)?;
        } else {
            let value = ctx.read_mem(segment, index, size)?;
            ctx.machine.port_out(port, port_size, value)?;
        }
        let next = index.wrapping_add(step) & address_mask;
        let register = &mut ctx.cpu.gpr[index_register as usize];
        *register = (*register & !address_mask) | next;
        count -= 1;
        done += 1;
        if rep {
            let ecx = &mut ctx.cpu.gpr[Gpr::Ecx as usize];
            *ecx = (*ecx & !address_mask) | count;
        }
    }
    if count > 0 {
        // Resume the REP at the same instruction.
        ctx.next_eip = ctx.cpu.eip;
    }
    Ok(())
}

/// A forward REP INS or OUTS's items up to the end of the page its next
/// one lies on (at most [`REP_BATCH`]), moved through one
/// [`Machine::port_in_string`] or [`Machine::port_out_string`]: how many.
/// 0 when the next item straddles a page or the index would wrap, which
/// the one-by-one loop handles. As there, the memory is checked first, so
/// a faulting INS consumes no device data: the destination is translated
/// for writing (and read) before the port is.
///
/// [`Machine::port_in_string`]: crate::machine::Machine::port_in_string
/// [`Machine::port_out_string`]: crate::machine::Machine::port_out_string
#[allow(clippy::too_many_arguments)]
fn string_io_batch(
    ctx: &mut Ctx<'_>,
    input: bool,
    port: u16,
    size: u32,
    segment: SegReg,
    index_register: Gpr,
    address_mask: u32,
    count: u32,
) -> Result<u32, Stop> {
    let index = ctx.cpu.gpr[index_register as usize] & address_mask;
    let kind = if input {
        AccessKind::Write
    } else {
        AccessKind::Read
    };
    let first = ctx.linear(segment, index, size, kind)?;
    let to_page_end = crate::PAGE_SIZE - first % crate::PAGE_SIZE;
    // Items before the index would wrap around its address size.
    let room = (u64::from(address_mask) - u64::from(index) + 1) / u64::from(size);
    let items = (to_page_end / size)
        .min(count)
        .min(REP_BATCH)
        .min(u32::try_from(room).unwrap_or(u32::MAX));
    if items < 2 {
        return Ok(0);
    }
    let len = items * size;
    // The segment limit for the whole stretch; a fault here is the first
    // item's fault only if the first item is out, which the check above
    // passed: leave the rest to the loop, which faults where the CPU does.
    let Ok(linear) = ctx.linear(segment, index, len, kind) else {
        return Ok(0);
    };
    let mut buf = [0u8; crate::PAGE_SIZE as usize];
    let bytes = &mut buf[..len as usize];
    let access = ctx.data_access(kind);
    #[allow(clippy::cast_possible_truncation)] // 1, 2 or 4
    let port_size = size as u8;
    if input {
        // Translated for the write (with its faults and A/D bits) before
        // any device data moves.
        ctx.machine.read_linear(linear, bytes, access)?;
        ctx.machine.port_in_string(port, port_size, bytes)?;
        ctx.machine.write_linear(linear, bytes, access)?;
    } else {
        ctx.machine.read_linear(linear, bytes, access)?;
        ctx.machine.port_out_string(port, port_size, bytes)?;
    }
    let next = index.wrapping_add(len) & address_mask;
    let register = &mut ctx.cpu.gpr[index_register as usize];
    *register = (*register & !address_mask) | next;
    let ecx = &mut ctx.cpu.gpr[Gpr::Ecx as usize];
    *ecx = (*ecx & !address_mask) | ((*ecx & address_mask) - items);
    Ok(items)
}

/// INS/OUTS have no ModRM; their address size is the code segment's,
/// flipped by a 0x67 prefix, and iced tells it by the operand kind.
fn address_size_32(ctx: &Ctx<'_>) -> bool {
    (0..ctx.instr.op_count()).any(|op| {
        matches!(
            ctx.instr.op_kind(op),
            OpKind::MemoryESEDI | OpKind::MemorySegESI
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{Segment, TableRegister};
    use crate::descriptor::Descriptor;
    use crate::emu::testing::{TestMachine, cpu, run};

    #[test]
    fn in_and_out_sizes() {
        let mut machine = TestMachine::default();
        let mut cpu = cpu();
        cpu.gpr[Gpr::Eax as usize] = 0x1234_5678;
        run(&mut cpu, &mut machine, &[0xe6, 0x80]).expect("out 0x80, al");
        cpu.gpr[Gpr::Edx as usize] = 0x3f8;
        run(&mut cpu, &mut machine, &[0x66, 0xef]).expect("out dx, ax");
        run(&mut cpu, &mut machine, &[0xef]).expect("out dx, eax");
        assert_eq!(
            machine.port_output,
            vec![(0x80, 1, 0x78), (0x3f8, 2, 0x5678), (0x3f8, 4, 0x1234_5678)]
        );
        machine.port_input.extend([0xab, 0xcdef]);
        run(&mut cpu, &mut machine, &[0xec]).expect("in al, dx");
        assert_eq!(cpu.gpr[Gpr::Eax as usize], 0x1234_56ab);
        run(&mut cpu, &mut machine, &[0x66, 0xe5, 0x60]).expect("in ax, 0x60");
        assert_eq!(cpu.gpr[Gpr::Eax as usize], 0x1234_cdef);
        assert_eq!(machine.port_reads, vec![(0x3f8, 1), (0x60, 2)]);
    }

    #[test]
    fn rep_outsb_and_insw() {
        let mut machine = TestMachine::default();
        let mut cpu = cpu();
        machine.poke(0x3000, b"hello");
        cpu.gpr[Gpr::Esi as usize] = 0x3000;
        cpu.gpr[Gpr::Ecx as usize] = 5;
        cpu.gpr[Gpr::Edx as usize] = 0x3f8;
        run(&mut cpu, &mut machine, &[0xf3, 0x6e]).expect("rep outsb");
        let bytes: Vec<u8> = machine
            .port_output
            .iter()
            .map(|&(_, _, value)| value.to_le_bytes()[0])
            .collect();
        assert_eq!(bytes, b"hello");
        assert_eq!(cpu.gpr[Gpr::Ecx as usize], 0);
        assert_eq!(cpu.gpr[Gpr::Esi as usize], 0x3005);
        machine.port_input.extend([0x1111, 0x2222]);
        cpu.gpr[Gpr::Edi as usize] = 0x3104;
        cpu.gpr[Gpr::Ecx as usize] = 2;
        cpu.eflags |= Eflags::DF;
        run(&mut cpu, &mut machine, &[0xf3, 0x66, 0x6d]).expect("rep insw, backwards");
        assert_eq!(machine.u16_at(0x3104), 0x1111);
        assert_eq!(machine.u16_at(0x3102), 0x2222);
        assert_eq!(cpu.gpr[Gpr::Edi as usize], 0x3100);
    }

    #[test]
    fn forward_rep_ins_and_outs_move_page_stretches_at_once() {
        let mut machine = TestMachine::default();
        let mut cpu = cpu();
        // 6 dwords from 0x3ff8: two to the end of the page in one
        // transfer, the four on the next page in another.
        machine.port_input.extend(1..=6);
        cpu.gpr[Gpr::Edi as usize] = 0x3ff8;
        cpu.gpr[Gpr::Ecx as usize] = 6;
        cpu.gpr[Gpr::Edx as usize] = 0x1f0;
        run(&mut cpu, &mut machine, &[0xf3, 0x6d]).expect("rep insl");
        assert_eq!(machine.string_transfers, [8, 16]);
        for (n, at) in (1u32..).zip((0x3ff8..0x4010).step_by(4)) {
            assert_eq!(
                u32::from_le_bytes(machine.memory[at..at + 4].try_into().expect("4")),
                n
            );
        }
        assert_eq!(cpu.gpr[Gpr::Ecx as usize], 0);
        assert_eq!(cpu.gpr[Gpr::Edi as usize], 0x4010);
        // OUTS the same bytes back, words this time.
        cpu.gpr[Gpr::Esi as usize] = 0x3ff8;
        cpu.gpr[Gpr::Ecx as usize] = 12;
        run(&mut cpu, &mut machine, &[0xf3, 0x66, 0x6f]).expect("rep outsw");
        assert_eq!(machine.string_transfers[2..], [-8, -16]);
        assert_eq!(machine.port_output.len(), 12);
        assert_eq!(machine.port_output[2], (0x1f0, 2, 2));
    }

    #[test]
    fn a_rep_ins_into_an_unmapped_page_consumes_no_device_data() {
        let mut machine = TestMachine::default();
        let mut cpu = cpu();
        machine.unmapped_pages.push(0x5);
        machine.port_input.extend(1..=4);
        cpu.gpr[Gpr::Edi as usize] = 0x5000;
        cpu.gpr[Gpr::Ecx as usize] = 4;
        cpu.gpr[Gpr::Edx as usize] = 0x1f0;
        assert!(matches!(
            run(&mut cpu, &mut machine, &[0xf3, 0x6d]),
            Err(Stop::Exception(_))
        ));
        assert_eq!(machine.port_input.len(), 4);
        assert_eq!(cpu.gpr[Gpr::Ecx as usize], 4);
    }

    #[test]
    fn ring_3_needs_iopl_or_the_tss_bitmap() {
        let mut machine = TestMachine::default();
        let mut cpu = cpu();
        cpu.cpl = 3;
        cpu.gpr[Gpr::Edx as usize] = 0x3f8;
        assert_eq!(
            run(&mut cpu, &mut machine, &[0xee]),
            Err(Stop::Exception(Exception::gp(0)))
        );
        // A TSS whose bitmap at offset 0x68 allows 0x3f8 only.
        let tss = 0x6000;
        machine.poke(tss + 102, &0x68u16.to_le_bytes());
        let bitmap = tss + 0x68;
        for byte in 0..0x81 {
            machine.poke(bitmap + byte, &[0xff]);
        }
        machine.poke(bitmap + 0x3f8 / 8, &[0xfe]);
        cpu.tr = Segment {
            selector: 0x28,
            cache: Descriptor::from_raw(0x0000_8b00_6000_00e8),
        };
        cpu.gdtr = TableRegister::default();
        run(&mut cpu, &mut machine, &[0xee]).expect("out dx, al allowed by the bitmap");
        assert_eq!(
            run(&mut cpu, &mut machine, &[0x66, 0xef]),
            Err(Stop::Exception(Exception::gp(0))),
            "a 2-byte access also needs 0x3f9"
        );
        cpu.eflags |= Eflags::IOPL;
        run(&mut cpu, &mut machine, &[0x66, 0xef]).expect("IOPL 3 allows all");
    }
}
