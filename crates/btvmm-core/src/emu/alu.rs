//! Arithmetic and logic: ADD ADC SUB SBB CMP AND OR XOR TEST, INC DEC NEG
//! NOT, MUL IMUL DIV IDIV, the shifts and rotates (SHL/SAL SHR SAR ROL ROR
//! RCL RCR SHLD SHRD), the bit tests and scans (BT BTS BTR BTC BSF BSR),
//! XADD CMPXCHG CMPXCHG8B, SETcc CMOVcc, CBW CWDE CWD CDQ, BSWAP, the flag
//! instructions (LAHF SAHF CLC STC CMC CLD STD), the BCD adjustments (DAA
//! DAS AAA AAS AAM AAD) and SALC.
//!
//! Flags the SDM leaves undefined get the values an Intel processor
//! (Sapphire Rapids, checked by the differential test at the end of this
//! file) produces where that is a simple function of the operands; the
//! BCD instructions, which cannot run natively on a 64-bit host, get
//! documented choices.
//!
//! Destinations in memory are read with write intent
//! ([`Ctx::read_mem_rmw`]): a read-only segment or page faults as a write,
//! before anything is written.

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use crate::cpu::Eflags;
use crate::exception::{Exception, Stop};
use crate::machine::AccessKind;

use super::flags::{self, STATUS, flag, szp};
use super::{Ctx, Handler, mask, sign_bit};

/// Executes the instruction if it belongs to this family.
pub(crate) fn execute(ctx: &mut Ctx<'_>) -> Option<Result<(), Stop>> {
    handler(ctx.instr).map(|handler| handler(ctx))
}

/// The handler of `instr` if it belongs to this family (chosen once per
/// decoding by the fast interpreter). Every handler changes only the
/// general registers, EFLAGS and memory.
pub(crate) fn handler(instr: &Instruction) -> Option<Handler> {
    let handler: Handler = match instr.mnemonic() {
        Mnemonic::Add
        | Mnemonic::Adc
        | Mnemonic::Sub
        | Mnemonic::Sbb
        | Mnemonic::Cmp
        | Mnemonic::And
        | Mnemonic::Or
        | Mnemonic::Xor
        | Mnemonic::Test => |ctx: &mut Ctx<'_>| binary(ctx, ctx.instr.mnemonic()),
        Mnemonic::Inc | Mnemonic::Dec | Mnemonic::Neg | Mnemonic::Not => {
            |ctx: &mut Ctx<'_>| unary(ctx, ctx.instr.mnemonic())
        }
        Mnemonic::Mul | Mnemonic::Imul => {
            |ctx: &mut Ctx<'_>| multiply(ctx, ctx.instr.mnemonic() == Mnemonic::Imul)
        }
        Mnemonic::Div | Mnemonic::Idiv => {
            |ctx: &mut Ctx<'_>| divide(ctx, ctx.instr.mnemonic() == Mnemonic::Idiv)
        }
        Mnemonic::Shl
        | Mnemonic::Sal
        | Mnemonic::Shr
        | Mnemonic::Sar
        | Mnemonic::Rol
        | Mnemonic::Ror
        | Mnemonic::Rcl
        | Mnemonic::Rcr => |ctx: &mut Ctx<'_>| shift_rotate(ctx, ctx.instr.mnemonic()),
        Mnemonic::Shld | Mnemonic::Shrd => {
            |ctx: &mut Ctx<'_>| double_shift(ctx, ctx.instr.mnemonic() == Mnemonic::Shld)
        }
        Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc => {
            |ctx: &mut Ctx<'_>| bit_test(ctx, ctx.instr.mnemonic())
        }
        Mnemonic::Bsf | Mnemonic::Bsr => {
            |ctx: &mut Ctx<'_>| bit_scan(ctx, ctx.instr.mnemonic() == Mnemonic::Bsr)
        }
        Mnemonic::Xadd => xadd,
        Mnemonic::Cmpxchg => cmpxchg,
        Mnemonic::Cmpxchg8b => cmpxchg8b,
        Mnemonic::Seta
        | Mnemonic::Setae
        | Mnemonic::Setb
        | Mnemonic::Setbe
        | Mnemonic::Sete
        | Mnemonic::Setg
        | Mnemonic::Setge
        | Mnemonic::Setl
        | Mnemonic::Setle
        | Mnemonic::Setne
        | Mnemonic::Setno
        | Mnemonic::Setnp
        | Mnemonic::Setns
        | Mnemonic::Seto
        | Mnemonic::Setp
        | Mnemonic::Sets => setcc,
        Mnemonic::Cmova
        | Mnemonic::Cmovae
        | Mnemonic::Cmovb
        | Mnemonic::Cmovbe
        | Mnemonic::Cmove
        | Mnemonic::Cmovg
        | Mnemonic::Cmovge
        | Mnemonic::Cmovl
        | Mnemonic::Cmovle
        | Mnemonic::Cmovne
        | Mnemonic::Cmovno
        | Mnemonic::Cmovnp
        | Mnemonic::Cmovns
        | Mnemonic::Cmovo
        | Mnemonic::Cmovp
        | Mnemonic::Cmovs => cmovcc,
        Mnemonic::Cbw | Mnemonic::Cwde | Mnemonic::Cwd | Mnemonic::Cdq => |ctx: &mut Ctx<'_>| {
            sign_extend_accumulator(ctx, ctx.instr.mnemonic());
            Ok(())
        },
        Mnemonic::Bswap => bswap,
        Mnemonic::Lahf
        | Mnemonic::Sahf
        | Mnemonic::Clc
        | Mnemonic::Stc
        | Mnemonic::Cmc
        | Mnemonic::Cld
        | Mnemonic::Std
        | Mnemonic::Salc => |ctx: &mut Ctx<'_>| {
            flag_instruction(ctx, ctx.instr.mnemonic());
            Ok(())
        },
        Mnemonic::Daa | Mnemonic::Das | Mnemonic::Aaa | Mnemonic::Aas => |ctx: &mut Ctx<'_>| {
            bcd_adjust(ctx, ctx.instr.mnemonic());
            Ok(())
        },
        Mnemonic::Aam | Mnemonic::Aad => {
            |ctx: &mut Ctx<'_>| ascii_multiply_divide(ctx, ctx.instr.mnemonic() == Mnemonic::Aam)
        }
        _ => return None,
    };
    Some(handler)
}

/// Reads operand `op` of an instruction that writes it back: a memory
/// operand is read with write intent (see [`Ctx::read_mem_rmw`]).
pub(crate) fn read_rmw(ctx: &mut Ctx<'_>, op: u32) -> Result<u32, Stop> {
    if ctx.instr.op_kind(op) == OpKind::Memory {
        let (segment, offset) = ctx.memory_operand(op);
        let size = ctx.op_size(op).min(4);
        ctx.read_mem_rmw(segment, offset, size)
    } else {
        ctx.read_op(op)
    }
}

/// `value` (`size` bytes) sign-extended to 64 bits.
#[must_use]
pub(crate) fn sign_extend(value: u32, size: u32) -> i64 {
    let shift = 64 - 8 * size.clamp(1, 4);
    // Reinterpreting the shifted bits as signed is the point.
    #[allow(clippy::cast_possible_wrap)]
    let signed = (u64::from(value) << shift) as i64;
    signed >> shift
}

/// The low 32 bits of a 64-bit value.
#[must_use]
pub(crate) const fn low32(value: u64) -> u32 {
    // Truncation is the point.
    #[allow(clippy::cast_possible_truncation)]
    let low = value as u32;
    low
}

/// The low 32 bits of a signed 64-bit value, as an unsigned pattern.
#[must_use]
pub(crate) const fn low32_signed(value: i64) -> u32 {
    // Truncation and reinterpretation are the point.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let low = value as u32;
    low
}

fn set_status(ctx: &mut Ctx<'_>, which: u32, new: u32) {
    flags::update(&mut ctx.cpu.eflags, which, new);
}

fn binary(ctx: &mut Ctx<'_>, mnemonic: Mnemonic) -> Result<(), Stop> {
    let size = ctx.op_size(0);
    let writes = !matches!(mnemonic, Mnemonic::Cmp | Mnemonic::Test);
    let dest = if writes {
        read_rmw(ctx, 0)?
    } else {
        ctx.read_op(0)?
    };
    let src = ctx.read_op(1)?;
    let carry = ctx.cpu.eflags & Eflags::CF != 0;
    let (result, status) = match mnemonic {
        Mnemonic::Add => flags::add(dest, src, false, size),
        Mnemonic::Adc => flags::add(dest, src, carry, size),
        Mnemonic::Sub | Mnemonic::Cmp => flags::sub(dest, src, false, size),
        Mnemonic::Sbb => flags::sub(dest, src, carry, size),
        _ => {
            let result = match mnemonic {
                Mnemonic::Or => dest | src,
                Mnemonic::Xor => dest ^ src,
                _ => dest & src,
            } & mask(size);
            (result, flags::logic(result, size))
        }
    };
    if writes {
        ctx.write_op(0, result)?;
    }
    set_status(ctx, STATUS, status);
    Ok(())
}

fn unary(ctx: &mut Ctx<'_>, mnemonic: Mnemonic) -> Result<(), Stop> {
    let size = ctx.op_size(0);
    let value = read_rmw(ctx, 0)?;
    let eflags = ctx.cpu.eflags;
    let (result, status) = match mnemonic {
        Mnemonic::Inc => flags::inc(value, size, eflags),
        Mnemonic::Dec => flags::dec(value, size, eflags),
        Mnemonic::Neg => flags::neg(value, size),
        _ => (!value & mask(size), eflags),
    };
    ctx.write_op(0, result)?;
    set_status(ctx, STATUS, status);
    Ok(())
}

/// The flags of MUL and IMUL: CF = OF = the product does not fit in the
/// low half. The undefined SF, ZF, AF and PF as this Intel processor
/// computes them: SF and PF from the low half, ZF and AF cleared.
fn multiply_flags(low: u32, size: u32, overflow: bool) -> u32 {
    (szp(low, size) & !Eflags::ZF) | flag(overflow, Eflags::CF | Eflags::OF)
}

fn multiply(ctx: &mut Ctx<'_>, signed: bool) -> Result<(), Stop> {
    let size = ctx.op_size(0);
    let m = mask(size);
    if ctx.instr.op_count() == 1 {
        // AL/AX/EAX times r/m into AX, DX:AX or EDX:EAX.
        let src = ctx.read_op(0)?;
        let accumulator = match size {
            1 => Register::AL,
            2 => Register::AX,
            _ => Register::EAX,
        };
        let a = ctx.reg(accumulator);
        let product = if signed {
            // Two's complement bits of the signed product.
            #[allow(clippy::cast_sign_loss)]
            let product = sign_extend(a, size).wrapping_mul(sign_extend(src, size)) as u64;
            product
        } else {
            u64::from(a & m) * u64::from(src & m)
        };
        let bits = 8 * size;
        let low = low32(product) & m;
        let high = low32(product >> bits) & m;
        let overflow = if signed {
            // The product does not fit in the low half, sign-extended.
            #[allow(clippy::cast_possible_wrap)]
            let product = product as i64;
            product != sign_extend(low, size)
        } else {
            high != 0
        };
        match size {
            1 => ctx.set_reg(Register::AX, (high << 8) | low),
            2 => {
                ctx.set_reg(Register::AX, low);
                ctx.set_reg(Register::DX, high);
            }
            _ => {
                ctx.set_reg(Register::EAX, low);
                ctx.set_reg(Register::EDX, high);
            }
        }
        set_status(ctx, STATUS, multiply_flags(low, size, overflow));
        return Ok(());
    }
    // IMUL r, r/m and IMUL r, r/m, imm: truncated to the register.
    let (a, b) = if ctx.instr.op_count() == 2 {
        (ctx.read_op(0)?, ctx.read_op(1)?)
    } else {
        (ctx.read_op(1)?, ctx.read_op(2)?)
    };
    let product = sign_extend(a, size).wrapping_mul(sign_extend(b, size));
    let low = low32_signed(product) & m;
    let overflow = product != sign_extend(low, size);
    ctx.write_op(0, low)?;
    set_status(ctx, STATUS, multiply_flags(low, size, overflow));
    Ok(())
}

fn divide(ctx: &mut Ctx<'_>, signed: bool) -> Result<(), Stop> {
    let size = ctx.op_size(0);
    let m = mask(size);
    let bits = 8 * size;
    let divisor = ctx.read_op(0)? & m;
    if divisor == 0 {
        return Err(Exception::de().into());
    }
    let dividend = match size {
        1 => u64::from(ctx.reg(Register::AX)),
        2 => (u64::from(ctx.reg(Register::DX)) << 16) | u64::from(ctx.reg(Register::AX)),
        _ => (u64::from(ctx.reg(Register::EDX)) << 32) | u64::from(ctx.reg(Register::EAX)),
    };
    let (quotient, remainder) = if signed {
        // The dividend is twice the operand size: sign-extend from there.
        let shift = 64 - 2 * bits;
        #[allow(clippy::cast_possible_wrap)]
        let dividend = ((dividend << shift) as i64) >> shift;
        let divisor = sign_extend(divisor, size);
        let (Some(quotient), Some(remainder)) =
            (dividend.checked_div(divisor), dividend.checked_rem(divisor))
        else {
            return Err(Exception::de().into());
        };
        let limit = 1i64 << (bits - 1);
        if quotient < -limit || quotient >= limit {
            return Err(Exception::de().into());
        }
        (low32_signed(quotient) & m, low32_signed(remainder) & m)
    } else {
        let quotient = dividend / u64::from(divisor);
        if quotient > u64::from(m) {
            return Err(Exception::de().into());
        }
        (low32(quotient), low32(dividend % u64::from(divisor)))
    };
    match size {
        1 => ctx.set_reg(Register::AX, (remainder << 8) | quotient),
        2 => {
            ctx.set_reg(Register::AX, quotient);
            ctx.set_reg(Register::DX, remainder);
        }
        _ => {
            ctx.set_reg(Register::EAX, quotient);
            ctx.set_reg(Register::EDX, remainder);
        }
    }
    // All six flags are undefined; this Intel processor leaves them
    // unchanged, and so do we.
    Ok(())
}

/// One shift or rotate of `value` (`size` bytes) by `count` (masked to 5
/// bits here; a count of 0 changes nothing): the result and the new
/// EFLAGS.
///
/// Undefined flags, as this Intel processor produces them: OF for counts
/// above 1 is what the first 1-bit step gives, from the original operand
/// (SHL, ROL, RCL: its two top bits differ; SHR: its top bit; SAR: 0; ROR:
/// its top and bottom bits differ; RCR: its top bit and CF differ), which
/// for a count of 1 is the SDM's formula; AF is cleared by SHL/SHR/SAR; CF
/// of SHL/SHR by a count at or above the operand width is 0. An RCL/RCR
/// whose count is a multiple of the width plus one (8- and 16-bit forms)
/// changes nothing, OF included.
#[must_use]
pub(crate) fn shift_rotate_value(
    mnemonic: Mnemonic,
    value: u32,
    count: u32,
    size: u32,
    eflags: u32,
) -> (u32, u32) {
    let count = count & 0x1f;
    if count == 0 {
        return (value, eflags);
    }
    let m = mask(size);
    let msb = sign_bit(size);
    let bits = 8 * size;
    let value = value & m;
    let carry_in = eflags & Eflags::CF != 0;
    let top = value & msb != 0;
    let next = value & (msb >> 1) != 0;
    let (result, cf, of, which) = match mnemonic {
        Mnemonic::Shl | Mnemonic::Sal => {
            let wide = u64::from(value) << count;
            let result = low32(wide) & m;
            let cf = (wide >> bits) & 1 != 0;
            (result, cf, top != next, STATUS)
        }
        Mnemonic::Shr => {
            let result = value >> count;
            let cf = (u64::from(value) >> (count - 1)) & 1 != 0;
            (result, cf, top, STATUS)
        }
        Mnemonic::Sar => {
            let signed = sign_extend(value, size);
            let result = low32_signed(signed >> count) & m;
            let cf = (signed >> (count - 1)) & 1 != 0;
            (result, cf, false, STATUS)
        }
        Mnemonic::Rol | Mnemonic::Ror => {
            let n = count % bits;
            let wide = u64::from(value);
            let rotated = if n == 0 {
                value
            } else if mnemonic == Mnemonic::Rol {
                low32((wide << n) | (wide >> (bits - n))) & m
            } else {
                low32((wide >> n) | (wide << (bits - n))) & m
            };
            let (cf, of) = if mnemonic == Mnemonic::Rol {
                (rotated & 1 != 0, top != next)
            } else {
                (rotated & msb != 0, top != (value & 1 != 0))
            };
            (rotated, cf, of, Eflags::CF | Eflags::OF)
        }
        _ => {
            // RCL/RCR rotate the (size * 8 + 1)-bit quantity CF:value.
            let width = bits + 1;
            let n = count % width;
            let all = (1u64 << width) - 1;
            let wide = (u64::from(carry_in) << bits) | u64::from(value);
            if n == 0 {
                return (value, eflags);
            }
            let rotated = if mnemonic == Mnemonic::Rcl {
                ((wide << n) | (wide >> (width - n))) & all
            } else {
                ((wide >> n) | (wide << (width - n))) & all
            };
            let result = low32(rotated) & m;
            let cf = (rotated >> bits) & 1 != 0;
            let of = if mnemonic == Mnemonic::Rcl {
                top != next
            } else {
                top != carry_in
            };
            (result, cf, of, Eflags::CF | Eflags::OF)
        }
    };
    let new = szp(result, size) | flag(cf, Eflags::CF) | flag(of, Eflags::OF);
    let mut eflags = eflags;
    flags::update(&mut eflags, which, new);
    (result, eflags)
}

fn shift_rotate(ctx: &mut Ctx<'_>, mnemonic: Mnemonic) -> Result<(), Stop> {
    let size = ctx.op_size(0);
    let value = read_rmw(ctx, 0)?;
    let count = ctx.read_op(1)? & 0x1f;
    if count == 0 {
        // No flags change and nothing is written.
        return Ok(());
    }
    let (result, eflags) = shift_rotate_value(mnemonic, value, count, size, ctx.cpu.eflags);
    ctx.write_op(0, result)?;
    ctx.cpu.eflags = eflags;
    Ok(())
}

/// SHLD (`left`) or SHRD of `dest` with bits from `src` by `count` (masked
/// to 5 bits here; callers skip a count of 0, which changes nothing): the
/// result and the new status flags.
///
/// 16-bit forms with a count above 16 have an undefined result; like
/// P6-family and later Intel processors we shift the 48-bit quantity
/// dest:src:dest. AF, undefined, is cleared, and OF for counts above 1 is
/// what the first 1-bit step gives (SHLD: the two top bits of `dest`
/// differ; SHRD: the top bit of `dest` and the bottom bit of `src`
/// differ), the SDM's sign-change rule for a count of 1, as this
/// processor does.
#[must_use]
pub(crate) fn double_shift_value(
    left: bool,
    dest: u32,
    src: u32,
    count: u32,
    size: u32,
) -> (u32, u32) {
    let count = (count & 0x1f).max(1);
    let m = mask(size);
    let (dest, src) = (dest & m, src & m);
    let (result, cf) = if size == 2 {
        let wide = (u64::from(dest) << 32) | (u64::from(src) << 16) | u64::from(dest);
        if left {
            let shifted = wide << count;
            (low32(shifted >> 32) & m, (shifted >> 48) & 1 != 0)
        } else {
            (low32(wide >> count) & m, (wide >> (count - 1)) & 1 != 0)
        }
    } else if left {
        let wide = ((u64::from(dest) << 32) | u64::from(src)) << count;
        (low32(wide >> 32), (dest >> (32 - count)) & 1 != 0)
    } else {
        let wide = ((u64::from(src) << 32) | u64::from(dest)) >> count;
        (low32(wide), (dest >> (count - 1)) & 1 != 0)
    };
    let top = dest & sign_bit(size) != 0;
    let of = if left {
        top != (dest & (sign_bit(size) >> 1) != 0)
    } else {
        top != (src & 1 != 0)
    };
    let status = szp(result, size) | flag(cf, Eflags::CF) | flag(of, Eflags::OF);
    (result, status)
}

fn double_shift(ctx: &mut Ctx<'_>, left: bool) -> Result<(), Stop> {
    let size = ctx.op_size(0);
    let dest = read_rmw(ctx, 0)?;
    let src = ctx.read_op(1)?;
    let count = ctx.read_op(2)? & 0x1f;
    if count == 0 {
        return Ok(());
    }
    let (result, status) = double_shift_value(left, dest, src, count, size);
    ctx.write_op(0, result)?;
    set_status(ctx, STATUS, status);
    Ok(())
}

/// The address-size mask of the instruction's memory operand.
fn address_mask(ctx: &Ctx<'_>) -> u32 {
    let base = ctx.instr.memory_base();
    let index = ctx.instr.memory_index();
    let is16 = base.is_gpr16()
        || index.is_gpr16()
        || (base == Register::None
            && index == Register::None
            && ctx.instr.memory_displ_size() == 2);
    if is16 { 0xffff } else { 0xffff_ffff }
}

/// The flags BT/BTS/BTR/BTC leave undefined (OF, SF, AF, PF) as this
/// processor leaves them: unchanged. ZF is unaffected by definition.
const BIT_TEST_FLAGS: u32 = Eflags::CF;

fn bit_test(ctx: &mut Ctx<'_>, mnemonic: Mnemonic) -> Result<(), Stop> {
    let size = ctx.op_size(0);
    let bits = 8 * size;
    let writes = mnemonic != Mnemonic::Bt;
    let offset = ctx.read_op(1)?;
    let bit = offset & (bits - 1);
    let (value, location) = if ctx.instr.op_kind(0) == OpKind::Memory {
        let (segment, mut address) = ctx.memory_operand(0);
        if ctx.instr.op_kind(1) == OpKind::Register {
            // A register bit offset is signed and selects the operand-size
            // unit it falls in, anywhere in the segment.
            let units = sign_extend(offset, size) >> (if size == 2 { 4 } else { 5 });
            let displacement = low32_signed(units.wrapping_mul(i64::from(size)));
            address = address.wrapping_add(displacement) & address_mask(ctx);
        }
        let value = if writes {
            ctx.read_mem_rmw(segment, address, size)?
        } else {
            ctx.read_mem(segment, address, size)?
        };
        (value, Some((segment, address)))
    } else {
        (ctx.read_op(0)?, None)
    };
    let selected = 1u32 << bit;
    let result = match mnemonic {
        Mnemonic::Bts => value | selected,
        Mnemonic::Btr => value & !selected,
        Mnemonic::Btc => value ^ selected,
        _ => value,
    };
    if writes {
        match location {
            Some((segment, address)) => ctx.write_mem(segment, address, size, result)?,
            None => ctx.write_op(0, result)?,
        }
    }
    set_status(ctx, BIT_TEST_FLAGS, flag(value & selected != 0, Eflags::CF));
    Ok(())
}

fn bit_scan(ctx: &mut Ctx<'_>, reverse: bool) -> Result<(), Stop> {
    let size = ctx.op_size(0);
    let src = ctx.read_op(1)? & mask(size);
    if src == 0 {
        // The destination is undefined; Intel processors leave it unchanged.
        // The other flags are undefined: this processor computes them as
        // for a zero result (CF=OF=SF=AF=0, PF=1).
        set_status(ctx, STATUS, Eflags::ZF | Eflags::PF);
        return Ok(());
    }
    let index = if reverse {
        31 - src.leading_zeros()
    } else {
        src.trailing_zeros()
    };
    ctx.write_op(0, index)?;
    // ZF cleared; of the undefined flags this processor clears CF, OF, SF
    // and AF and sets PF from the index.
    set_status(ctx, STATUS, szp(index, size) & !Eflags::ZF);
    Ok(())
}

fn xadd(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let size = ctx.op_size(0);
    let dest = read_rmw(ctx, 0)?;
    let src = ctx.read_op(1)?;
    let (sum, status) = flags::add(dest, src, false, size);
    // SRC <- DEST, then DEST <- SUM (XADD r, r with one register gives the
    // sum). A memory destination is written first: its address may use
    // the source register.
    if ctx.instr.op0_kind() == OpKind::Memory {
        ctx.write_op(0, sum)?;
        ctx.write_op(1, dest)?;
    } else {
        ctx.write_op(1, dest)?;
        ctx.write_op(0, sum)?;
    }
    set_status(ctx, STATUS, status);
    Ok(())
}

fn accumulator(size: u32) -> Register {
    match size {
        1 => Register::AL,
        2 => Register::AX,
        _ => Register::EAX,
    }
}

fn cmpxchg(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let size = ctx.op_size(0);
    let m = mask(size);
    let dest = read_rmw(ctx, 0)? & m;
    let src = ctx.read_op(1)?;
    let accumulator = accumulator(size);
    let expected = ctx.reg(accumulator) & m;
    let (_, status) = flags::sub(expected, dest, false, size);
    if expected == dest {
        ctx.write_op(0, src)?;
    } else {
        // The destination is written back unchanged (the locked cycle
        // always writes), then the accumulator gets it.
        ctx.write_op(0, dest)?;
        ctx.set_reg(accumulator, dest);
    }
    set_status(ctx, STATUS, status);
    Ok(())
}

fn cmpxchg8b(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let (segment, offset) = ctx.memory_operand(0);
    ctx.linear(segment, offset, 8, AccessKind::Write)?;
    let high_offset = offset.wrapping_add(4) & address_mask(ctx);
    let low = ctx.read_mem_rmw(segment, offset, 4)?;
    let high = ctx.read_mem_rmw(segment, high_offset, 4)?;
    let (eax, edx) = (ctx.reg(Register::EAX), ctx.reg(Register::EDX));
    let equal = low == eax && high == edx;
    let (new_low, new_high) = if equal {
        (ctx.reg(Register::EBX), ctx.reg(Register::ECX))
    } else {
        (low, high)
    };
    ctx.write_mem(segment, offset, 4, new_low)?;
    ctx.write_mem(segment, high_offset, 4, new_high)?;
    if !equal {
        ctx.set_reg(Register::EAX, low);
        ctx.set_reg(Register::EDX, high);
    }
    set_status(ctx, Eflags::ZF, flag(equal, Eflags::ZF));
    Ok(())
}

fn setcc(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let holds = flags::condition(ctx.instr.condition_code(), ctx.cpu.eflags);
    ctx.write_op(0, u32::from(holds))
}

fn cmovcc(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    // The source is read (and may fault) whether or not the move happens.
    let src = ctx.read_op(1)?;
    if flags::condition(ctx.instr.condition_code(), ctx.cpu.eflags) {
        ctx.write_op(0, src)?;
    }
    Ok(())
}

fn sign_extend_accumulator(ctx: &mut Ctx<'_>, mnemonic: Mnemonic) {
    match mnemonic {
        Mnemonic::Cbw => {
            let al = ctx.reg(Register::AL);
            ctx.set_reg(Register::AX, low32_signed(sign_extend(al, 1)));
        }
        Mnemonic::Cwde => {
            let ax = ctx.reg(Register::AX);
            ctx.set_reg(Register::EAX, low32_signed(sign_extend(ax, 2)));
        }
        Mnemonic::Cwd => {
            let ax = ctx.reg(Register::AX);
            ctx.set_reg(Register::DX, if ax & 0x8000 != 0 { 0xffff } else { 0 });
        }
        _ => {
            let eax = ctx.reg(Register::EAX);
            let edx = if eax & 0x8000_0000 != 0 {
                0xffff_ffff
            } else {
                0
            };
            ctx.set_reg(Register::EDX, edx);
        }
    }
}

fn bswap(ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let register = ctx.instr.op_register(0);
    let value = ctx.reg(register);
    // BSWAP of a 16-bit register is undefined; Intel and AMD processors
    // clear it, and so do we.
    let swapped = if ctx.instr.code() == Code::Bswap_r16 {
        0
    } else {
        value.swap_bytes()
    };
    ctx.set_reg(register, swapped);
    Ok(())
}

fn flag_instruction(ctx: &mut Ctx<'_>, mnemonic: Mnemonic) {
    let eflags = &mut ctx.cpu.eflags;
    match mnemonic {
        Mnemonic::Lahf => {
            // SF:ZF:0:AF:0:PF:1:CF
            let ah = (*eflags & flags::LAHF_FLAGS) | 0x2;
            ctx.set_reg(Register::AH, ah);
        }
        Mnemonic::Sahf => {
            let ah = ctx.reg(Register::AH);
            flags::update(&mut ctx.cpu.eflags, flags::LAHF_FLAGS, ah);
        }
        Mnemonic::Clc => *eflags &= !Eflags::CF,
        Mnemonic::Stc => *eflags |= Eflags::CF,
        Mnemonic::Cmc => *eflags ^= Eflags::CF,
        Mnemonic::Cld => *eflags &= !Eflags::DF,
        Mnemonic::Std => *eflags |= Eflags::DF,
        _ => {
            // SALC: AL <- CF ? 0xff : 0.
            let al = if *eflags & Eflags::CF != 0 { 0xff } else { 0 };
            ctx.set_reg(Register::AL, al);
        }
    }
}

/// DAA, DAS, AAA, AAS (SDM pseudocode).
///
/// Undefined flags (no native check possible: these do not exist in
/// 64-bit mode): DAA and DAS clear OF, as QEMU and Bochs do; AAA and AAS
/// compute SF, ZF and PF from the final AL and clear OF.
fn bcd_adjust(ctx: &mut Ctx<'_>, mnemonic: Mnemonic) {
    let eflags = ctx.cpu.eflags;
    let old_cf = eflags & Eflags::CF != 0;
    let old_af = eflags & Eflags::AF != 0;
    let ax = ctx.reg(Register::AX);
    let old_al = ax & 0xff;
    let low_nibble_adjust = (old_al & 0xf) > 9 || old_af;
    match mnemonic {
        Mnemonic::Daa | Mnemonic::Das => {
            let add = mnemonic == Mnemonic::Daa;
            let mut al = old_al;
            let mut cf = false;
            let af = low_nibble_adjust;
            if low_nibble_adjust {
                let carry = if add { al + 6 > 0xff } else { al < 6 };
                al = if add { al + 6 } else { al.wrapping_sub(6) } & 0xff;
                cf = old_cf || carry;
            }
            if old_al > 0x99 || old_cf {
                al = if add {
                    al + 0x60
                } else {
                    al.wrapping_sub(0x60)
                } & 0xff;
                cf = true;
            } else if add {
                cf = false;
            }
            ctx.set_reg(Register::AL, al);
            let status = szp(al, 1) | flag(cf, Eflags::CF) | flag(af, Eflags::AF);
            set_status(ctx, STATUS, status);
        }
        _ => {
            let ax = if !low_nibble_adjust {
                ax
            } else if mnemonic == Mnemonic::Aaa {
                ax.wrapping_add(0x106)
            } else {
                ax.wrapping_sub(6).wrapping_sub(0x100)
            };
            let ax = ax & 0xff0f;
            ctx.set_reg(Register::AX, ax);
            let status = szp(ax & 0xff, 1) | flag(low_nibble_adjust, Eflags::AF | Eflags::CF);
            set_status(ctx, STATUS, status);
        }
    }
}

/// AAM imm8 (AH <- AL / imm8, AL <- AL % imm8; #DE on 0) and AAD imm8
/// (AL <- AL + AH * imm8, AH <- 0). SF, ZF and PF follow AL; the undefined
/// OF, AF and CF are cleared (as QEMU does).
fn ascii_multiply_divide(ctx: &mut Ctx<'_>, multiply: bool) -> Result<(), Stop> {
    let base = u32::from(ctx.instr.immediate8());
    let al = ctx.reg(Register::AL);
    let ah = ctx.reg(Register::AH);
    let ax = if multiply {
        if base == 0 {
            return Err(Exception::de().into());
        }
        ((al / base) << 8) | (al % base)
    } else {
        al.wrapping_add(ah.wrapping_mul(base)) & 0xff
    };
    ctx.set_reg(Register::AX, ax);
    set_status(ctx, STATUS, szp(ax & 0xff, 1));
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cpu::{Cpu, Gpr, SegReg};
    use crate::descriptor::TYPE_ACCESSED;
    use crate::emu::Outcome;
    use crate::emu::testing::{TestMachine, cpu, disassemble, run};

    pub(crate) const CF: u32 = Eflags::CF;
    pub(crate) const PF: u32 = Eflags::PF;
    pub(crate) const AF: u32 = Eflags::AF;
    pub(crate) const ZF: u32 = Eflags::ZF;
    pub(crate) const SF: u32 = Eflags::SF;
    pub(crate) const OF: u32 = Eflags::OF;

    /// A flat CPU with the given status flags, and a test machine.
    pub(crate) fn setup(flags: u32) -> (Cpu, TestMachine) {
        let mut cpu = cpu();
        cpu.eflags = 0x2 | flags;
        (cpu, TestMachine::default())
    }

    /// Runs `code`, which must retire and leave EIP just past itself.
    pub(crate) fn exec(cpu: &mut Cpu, machine: &mut TestMachine, code: &[u8]) {
        let next = cpu.eip + u32::try_from(code.len()).expect("short code");
        let result = run(cpu, machine, code);
        assert_eq!(result, Ok(Outcome::Retired), "{}", disassemble(code));
        assert_eq!(cpu.eip, next, "{}", disassemble(code));
    }

    /// Runs `code`, which must raise `exception` and leave the registers
    /// as they were.
    pub(crate) fn fault(
        cpu: &mut Cpu,
        machine: &mut TestMachine,
        code: &[u8],
        exception: Exception,
    ) {
        let before = cpu.clone();
        let result = run(cpu, machine, code);
        assert_eq!(
            result,
            Err(Stop::Exception(exception)),
            "{}",
            disassemble(code)
        );
        assert_eq!(*cpu, before, "{} changed registers", disassemble(code));
    }

    pub(crate) fn status(cpu: &Cpu) -> u32 {
        cpu.eflags & STATUS
    }

    pub(crate) fn get(cpu: &Cpu, gpr: Gpr) -> u32 {
        cpu.gpr[gpr as usize]
    }

    pub(crate) fn set(cpu: &mut Cpu, gpr: Gpr, value: u32) {
        cpu.gpr[gpr as usize] = value;
    }

    /// Whether the family's `execute` claims the instruction in `code`.
    pub(crate) fn claims(
        execute: fn(&mut crate::emu::Ctx<'_>) -> Option<Result<(), Stop>>,
        code: &[u8],
    ) -> bool {
        use iced_x86::{Decoder, DecoderOptions};
        let mut cpu = cpu();
        let mut machine = TestMachine::default();
        let instr = Decoder::with_ip(32, code, u64::from(cpu.eip), DecoderOptions::NONE).decode();
        let mut ctx = crate::emu::Ctx {
            next_eip: cpu.eip,
            cpu: &mut cpu,
            machine: &mut machine,
            instr: &instr,
            outcome: Outcome::Retired,
            shadow: false,
        };
        execute(&mut ctx).is_some()
    }

    use Gpr::{Eax, Ebx, Ecx, Edi, Edx};

    #[test]
    fn claims_its_family_only() {
        assert!(claims(execute, &[0x01, 0xd8])); // add %ebx,%eax
        assert!(claims(execute, &[0x0f, 0xc7, 0x0d, 0x00, 0x20, 0x00, 0x00])); // cmpxchg8b 0x2000
        assert!(!claims(execute, &[0x89, 0xd8])); // mov %ebx,%eax
        assert!(!claims(execute, &[0xa6])); // cmpsb
        assert!(!claims(execute, &[0xf3, 0x0f, 0xbc, 0xc3])); // tzcnt %ebx,%eax
    }

    #[test]
    fn add_sub_adc_sbb_cmp_in_every_size() {
        let (mut c, mut m) = setup(0);
        set(&mut c, Eax, 0x1234_567f);
        set(&mut c, Ebx, 1);
        exec(&mut c, &mut m, &[0x00, 0xd8]); // add %bl,%al
        assert_eq!(get(&c, Eax), 0x1234_5680);
        assert_eq!(status(&c), SF | AF | OF);

        set(&mut c, Eax, 0xabcd_ffff);
        exec(&mut c, &mut m, &[0x66, 0x01, 0xd8]); // add %bx,%ax
        assert_eq!(get(&c, Eax), 0xabcd_0000);
        assert_eq!(status(&c), CF | ZF | AF | PF);

        set(&mut c, Eax, 0x8000_0000);
        set(&mut c, Ebx, 0x8000_0000);
        exec(&mut c, &mut m, &[0x01, 0xd8]); // add %ebx,%eax
        assert_eq!(get(&c, Eax), 0);
        assert_eq!(status(&c), CF | ZF | OF | PF);

        set(&mut c, Eax, 1);
        exec(&mut c, &mut m, &[0x83, 0xc0, 0xff]); // add $-1,%eax
        assert_eq!(get(&c, Eax), 0);
        assert_eq!(status(&c), CF | ZF | AF | PF);

        c.eflags = 0x2 | CF;
        set(&mut c, Eax, 0xfe);
        exec(&mut c, &mut m, &[0x14, 0x01]); // adc $1,%al
        assert_eq!(get(&c, Eax), 0);
        assert_eq!(status(&c), CF | ZF | AF | PF);

        c.eflags = 0x2 | CF;
        set(&mut c, Eax, 5);
        set(&mut c, Ebx, 5);
        exec(&mut c, &mut m, &[0x19, 0xd8]); // sbb %ebx,%eax
        assert_eq!(get(&c, Eax), 0xffff_ffff);
        assert_eq!(status(&c), CF | SF | AF | PF);

        set(&mut c, Eax, 0x80);
        exec(&mut c, &mut m, &[0x2c, 0x01]); // sub $1,%al
        assert_eq!(get(&c, Eax), 0x7f);
        assert_eq!(status(&c), AF | OF);

        set(&mut c, Eax, 0x7fff_ffff);
        exec(&mut c, &mut m, &[0x3d, 0x00, 0x00, 0x00, 0x80]); // cmp $0x80000000,%eax
        assert_eq!(get(&c, Eax), 0x7fff_ffff);
        assert_eq!(status(&c), CF | SF | OF | PF);

        set(&mut c, Eax, 0xffff);
        exec(&mut c, &mut m, &[0x66, 0x83, 0xf8, 0xff]); // cmp $-1,%ax
        assert_eq!(status(&c), ZF | PF);
    }

    #[test]
    fn arithmetic_on_memory_operands() {
        let (mut c, mut m) = setup(0);
        m.poke_u32(0x2000, 0xffff_fff0);
        set(&mut c, Eax, 0x10);
        exec(&mut c, &mut m, &[0x01, 0x05, 0x00, 0x20, 0x00, 0x00]); // add %eax,0x2000
        assert_eq!(m.u32_at(0x2000), 0);
        assert_eq!(status(&c), CF | ZF | PF);

        m.poke_u32(0x2000, 0x7fff_ffff);
        set(&mut c, Eax, 1);
        exec(&mut c, &mut m, &[0x03, 0x05, 0x00, 0x20, 0x00, 0x00]); // add 0x2000,%eax
        assert_eq!(get(&c, Eax), 0x8000_0000);
        assert_eq!(m.u32_at(0x2000), 0x7fff_ffff);
        assert_eq!(status(&c), SF | OF | AF | PF);

        m.poke(0x2000, &[5]);
        exec(&mut c, &mut m, &[0x80, 0x3d, 0x00, 0x20, 0x00, 0x00, 0x05]); // cmpb $5,0x2000
        assert_eq!(status(&c), ZF | PF);
        assert_eq!(m.memory[0x2000], 5);

        m.poke(0x2000, &[0, 0, 0x77, 0]);
        exec(
            &mut c,
            &mut m,
            &[0x66, 0x83, 0x2d, 0x00, 0x20, 0x00, 0x00, 0x01],
        ); // subw $1,0x2000
        assert_eq!(m.u32_at(0x2000), 0x77_ffff);
        assert_eq!(status(&c), CF | SF | AF | PF);

        // 16-bit addressing: [bx].
        m.poke_u32(0x2100, 1);
        set(&mut c, Ebx, 0x1234_2100);
        set(&mut c, Eax, 2);
        exec(&mut c, &mut m, &[0x67, 0x01, 0x07]); // add %eax,(%bx)
        assert_eq!(m.u32_at(0x2100), 3);
        assert_eq!(status(&c), PF);
    }

    #[test]
    fn faulting_operands_change_nothing() {
        let (mut c, mut m) = setup(CF);
        m.unmapped_pages = vec![0x30];
        set(&mut c, Eax, 7);
        // The destination is read with write intent: the fault is a write.
        let add_to = [0x01, 0x05, 0x00, 0x00, 0x03, 0x00]; // add %eax,0x30000
        fault(&mut c, &mut m, &add_to, Exception::page_fault(0x30000, 2));
        let add_from = [0x03, 0x05, 0x00, 0x00, 0x03, 0x00]; // add 0x30000,%eax
        fault(&mut c, &mut m, &add_from, Exception::page_fault(0x30000, 0));
        let inc = [0xff, 0x05, 0x00, 0x00, 0x03, 0x00]; // incl 0x30000
        fault(&mut c, &mut m, &inc, Exception::page_fault(0x30000, 2));
        // A read-only data segment: reads work, writes raise #GP(0).
        c.segment_mut(SegReg::Ds).cache.kind = TYPE_ACCESSED;
        m.poke_u32(0x2000, 1);
        fault(
            &mut c,
            &mut m,
            &[0x01, 0x05, 0x00, 0x20, 0x00, 0x00],
            Exception::gp(0),
        );
        assert_eq!(m.u32_at(0x2000), 1);
        exec(&mut c, &mut m, &[0x03, 0x05, 0x00, 0x20, 0x00, 0x00]); // add 0x2000,%eax
        assert_eq!(get(&c, Eax), 8);
        // Beyond the segment limit.
        c.segment_mut(SegReg::Ds).cache.limit = 0x1fff;
        fault(
            &mut c,
            &mut m,
            &[0x03, 0x05, 0xfe, 0x1f, 0x00, 0x00],
            Exception::gp(0),
        );
    }

    #[test]
    fn logic_clears_cf_of_and_af() {
        let (mut c, mut m) = setup(CF | OF | AF);
        set(&mut c, Eax, 0xf0f0_f0f0);
        set(&mut c, Ebx, 0x0ff0_0ff0);
        exec(&mut c, &mut m, &[0x21, 0xd8]); // and %ebx,%eax
        assert_eq!(get(&c, Eax), 0x00f0_00f0);
        assert_eq!(status(&c), PF);
        c.eflags |= CF | OF | AF;
        exec(&mut c, &mut m, &[0x09, 0xd8]); // or %ebx,%eax
        assert_eq!(get(&c, Eax), 0x0ff0_0ff0);
        assert_eq!(status(&c), PF);
        exec(&mut c, &mut m, &[0x31, 0xc0]); // xor %eax,%eax
        assert_eq!(get(&c, Eax), 0);
        assert_eq!(status(&c), ZF | PF);
        set(&mut c, Eax, 0x80);
        exec(&mut c, &mut m, &[0x84, 0xc0]); // test %al,%al
        assert_eq!(get(&c, Eax), 0x80);
        assert_eq!(status(&c), SF);
        set(&mut c, Eax, 0x8000);
        exec(&mut c, &mut m, &[0xf6, 0xc4, 0x80]); // test $0x80,%ah
        assert_eq!(status(&c), SF);
        exec(&mut c, &mut m, &[0x66, 0x35, 0xff, 0xff]); // xor $0xffff,%ax
        assert_eq!(get(&c, Eax), 0x7fff);
        assert_eq!(status(&c), PF);
        m.poke(0x2000, &[0]);
        exec(&mut c, &mut m, &[0x80, 0x0d, 0x00, 0x20, 0x00, 0x00, 0x81]); // orb $0x81,0x2000
        assert_eq!(m.memory[0x2000], 0x81);
        assert_eq!(status(&c), SF | PF);
    }

    #[test]
    fn inc_dec_neg_not() {
        let (mut c, mut m) = setup(CF);
        set(&mut c, Eax, 0x7fff_ffff);
        exec(&mut c, &mut m, &[0x40]); // inc %eax
        assert_eq!(get(&c, Eax), 0x8000_0000);
        assert_eq!(status(&c), CF | SF | OF | AF | PF);
        c.eflags = 0x2;
        set(&mut c, Eax, 0x1200);
        exec(&mut c, &mut m, &[0xfe, 0xc8]); // dec %al
        assert_eq!(get(&c, Eax), 0x12ff);
        assert_eq!(status(&c), SF | AF | PF);
        exec(&mut c, &mut m, &[0x66, 0x48]); // dec %ax
        assert_eq!(get(&c, Eax), 0x12fe);
        assert_eq!(status(&c), 0);
        set(&mut c, Eax, 5);
        exec(&mut c, &mut m, &[0xf7, 0xd8]); // neg %eax
        assert_eq!(get(&c, Eax), 0xffff_fffb);
        assert_eq!(status(&c), CF | SF | AF);
        set(&mut c, Eax, 0);
        exec(&mut c, &mut m, &[0xf7, 0xd8]); // neg %eax
        assert_eq!(status(&c), ZF | PF);
        c.eflags = 0x2 | ZF | CF;
        set(&mut c, Eax, 0x0f);
        exec(&mut c, &mut m, &[0xf6, 0xd0]); // not %al
        assert_eq!(get(&c, Eax), 0xf0);
        assert_eq!(status(&c), ZF | CF);
        m.poke_u32(0x2000, 0xffff_ffff);
        exec(&mut c, &mut m, &[0xff, 0x05, 0x00, 0x20, 0x00, 0x00]); // incl 0x2000
        assert_eq!(m.u32_at(0x2000), 0);
        assert_eq!(status(&c), CF | ZF | AF | PF);
        exec(&mut c, &mut m, &[0x66, 0xf7, 0x1d, 0x00, 0x20, 0x00, 0x00]); // negw 0x2000
        assert_eq!(m.u32_at(0x2000), 0);
        assert_eq!(status(&c), ZF | PF);
    }

    #[test]
    fn multiplication_in_every_form() {
        let (mut c, mut m) = setup(0);
        set(&mut c, Eax, 0xaaaa_0080);
        set(&mut c, Ebx, 2);
        exec(&mut c, &mut m, &[0xf6, 0xe3]); // mul %bl
        assert_eq!(get(&c, Eax), 0xaaaa_0100);
        assert_eq!(status(&c) & (CF | OF), CF | OF);

        set(&mut c, Eax, 0x8000_0000);
        set(&mut c, Ebx, 4);
        set(&mut c, Edx, 0x5555_5555);
        exec(&mut c, &mut m, &[0xf7, 0xe3]); // mul %ebx
        assert_eq!((get(&c, Edx), get(&c, Eax)), (2, 0));
        assert_eq!(status(&c) & (CF | OF), CF | OF);
        set(&mut c, Eax, 3);
        exec(&mut c, &mut m, &[0xf7, 0xe3]); // mul %ebx
        assert_eq!((get(&c, Edx), get(&c, Eax)), (0, 12));
        assert_eq!(status(&c) & (CF | OF), 0);

        set(&mut c, Eax, 0xffff);
        set(&mut c, Ebx, 2);
        set(&mut c, Edx, 0x1234_0000);
        exec(&mut c, &mut m, &[0x66, 0xf7, 0xeb]); // imul %bx
        assert_eq!((get(&c, Edx), get(&c, Eax)), (0x1234_ffff, 0xfffe));
        assert_eq!(status(&c) & (CF | OF), 0);

        set(&mut c, Eax, 0x80);
        set(&mut c, Ebx, 0xff);
        exec(&mut c, &mut m, &[0xf6, 0xeb]); // imul %bl
        assert_eq!(get(&c, Eax), 0x0080);
        assert_eq!(status(&c) & (CF | OF), CF | OF);

        set(&mut c, Eax, 0x1_0000);
        set(&mut c, Ebx, 0x1_0000);
        exec(&mut c, &mut m, &[0x0f, 0xaf, 0xc3]); // imul %ebx,%eax
        assert_eq!(get(&c, Eax), 0);
        assert_eq!(status(&c) & (CF | OF), CF | OF);

        set(&mut c, Ebx, 5);
        exec(&mut c, &mut m, &[0x6b, 0xc3, 0xfd]); // imul $-3,%ebx,%eax
        assert_eq!(get(&c, Eax), 0xffff_fff1);
        assert_eq!(status(&c) & (CF | OF), 0);

        set(&mut c, Eax, 0xdead_beef);
        set(&mut c, Ebx, 4);
        exec(&mut c, &mut m, &[0x66, 0x69, 0xc3, 0x00, 0x40]); // imul $0x4000,%bx,%ax
        assert_eq!(get(&c, Eax), 0xdead_0000);
        assert_eq!(status(&c) & (CF | OF), CF | OF);

        m.poke_u32(0x2000, 0x10);
        set(&mut c, Eax, 0x1000_0001);
        exec(&mut c, &mut m, &[0xf7, 0x25, 0x00, 0x20, 0x00, 0x00]); // mull 0x2000
        assert_eq!((get(&c, Edx), get(&c, Eax)), (1, 0x10));
        assert_eq!(status(&c) & (CF | OF), CF | OF);
    }

    #[test]
    fn division_and_divide_errors() {
        let (mut c, mut m) = setup(CF | ZF);
        set(&mut c, Eax, 0x1234_0064);
        set(&mut c, Ebx, 7);
        exec(&mut c, &mut m, &[0xf6, 0xf3]); // div %bl
        assert_eq!(get(&c, Eax), 0x1234_020e);
        assert_eq!(status(&c), CF | ZF, "flags unchanged, as on the host");

        set(&mut c, Edx, 1);
        set(&mut c, Eax, 0);
        set(&mut c, Ebx, 0x10);
        exec(&mut c, &mut m, &[0xf7, 0xf3]); // div %ebx
        assert_eq!((get(&c, Eax), get(&c, Edx)), (0x1000_0000, 0));

        set(&mut c, Edx, 0xffff_ffff);
        set(&mut c, Eax, 0xffff_fff9);
        set(&mut c, Ebx, 2);
        exec(&mut c, &mut m, &[0xf7, 0xfb]); // idiv %ebx
        assert_eq!((get(&c, Eax), get(&c, Edx)), (0xffff_fffd, 0xffff_ffff));

        set(&mut c, Eax, 0xff00);
        exec(&mut c, &mut m, &[0xf6, 0xfb]); // idiv %bl: -256 / 2
        assert_eq!(get(&c, Eax), 0x0080);

        set(&mut c, Edx, 0xabcd_0001);
        set(&mut c, Eax, 0x0000);
        exec(&mut c, &mut m, &[0x66, 0xf7, 0xf3]); // div %bx
        assert_eq!((get(&c, Eax), get(&c, Edx)), (0x8000, 0xabcd_0000));

        set(&mut c, Ebx, 0);
        fault(&mut c, &mut m, &[0xf6, 0xf3], Exception::de()); // div %bl
        set(&mut c, Edx, 1);
        set(&mut c, Eax, 0);
        set(&mut c, Ebx, 1);
        fault(&mut c, &mut m, &[0xf7, 0xf3], Exception::de()); // div %ebx
        set(&mut c, Eax, 0xff00);
        set(&mut c, Ebx, 0xfe);
        fault(&mut c, &mut m, &[0xf6, 0xfb], Exception::de()); // idiv %bl: 128
        set(&mut c, Edx, 0x8000_0000);
        set(&mut c, Eax, 0);
        set(&mut c, Ebx, 0xffff_ffff);
        fault(&mut c, &mut m, &[0xf7, 0xfb], Exception::de()); // idiv %ebx
        m.unmapped_pages = vec![0x30];
        let div_mem = [0xf7, 0x35, 0x00, 0x00, 0x03, 0x00]; // divl 0x30000
        fault(&mut c, &mut m, &div_mem, Exception::page_fault(0x30000, 0));
    }

    #[test]
    fn shifts_and_rotates() {
        let (mut c, mut m) = setup(0);
        set(&mut c, Eax, 0x8000_0001);
        exec(&mut c, &mut m, &[0xd1, 0xe0]); // shl %eax
        assert_eq!(get(&c, Eax), 2);
        assert_eq!(status(&c), CF | OF);
        exec(&mut c, &mut m, &[0xc1, 0xe0, 0x04]); // shl $4,%eax
        assert_eq!(get(&c, Eax), 0x20);
        assert_eq!(status(&c) & !(OF | AF), 0);

        set(&mut c, Eax, 0x85);
        set(&mut c, Ecx, 3);
        exec(&mut c, &mut m, &[0xd3, 0xe8]); // shr %cl,%eax
        assert_eq!(get(&c, Eax), 0x10);
        assert_eq!(status(&c) & !(OF | AF), CF);

        set(&mut c, Eax, 0x1234_5684);
        exec(&mut c, &mut m, &[0xc0, 0xf8, 0x03]); // sar $3,%al
        assert_eq!(get(&c, Eax), 0x1234_56f0);
        assert_eq!(status(&c) & !(OF | AF), CF | SF | PF);

        // Rotates touch only CF and OF.
        c.eflags = 0x2 | ZF | PF;
        set(&mut c, Eax, 0x81);
        set(&mut c, Ecx, 4);
        exec(&mut c, &mut m, &[0xd2, 0xc0]); // rol %cl,%al
        assert_eq!(get(&c, Eax), 0x18);
        assert_eq!(status(&c) & !OF, ZF | PF);
        set(&mut c, Eax, 1);
        exec(&mut c, &mut m, &[0xd1, 0xc8]); // ror %eax
        assert_eq!(get(&c, Eax), 0x8000_0000);
        assert_eq!(status(&c), ZF | PF | CF | OF);
        c.eflags = 0x2 | CF;
        set(&mut c, Eax, 0x80);
        exec(&mut c, &mut m, &[0xd0, 0xd0]); // rcl %al
        assert_eq!(get(&c, Eax), 0x01);
        assert_eq!(status(&c), CF | OF);
        c.eflags = 0x2;
        set(&mut c, Eax, 1);
        exec(&mut c, &mut m, &[0xd1, 0xd8]); // rcr %eax
        assert_eq!(get(&c, Eax), 0);
        assert_eq!(status(&c), CF);
        // RCL of a byte by 9 rotates all the way round.
        c.eflags = 0x2 | CF | OF | SF;
        set(&mut c, Eax, 0x5a);
        set(&mut c, Ecx, 9);
        exec(&mut c, &mut m, &[0xd2, 0xd0]); // rcl %cl,%al
        assert_eq!(get(&c, Eax), 0x5a);
        assert_eq!(status(&c), CF | OF | SF);

        // A count of 0 (after masking to 5 bits) changes no flags.
        c.eflags = 0x2 | STATUS;
        set(&mut c, Eax, 0x1234);
        exec(&mut c, &mut m, &[0xc1, 0xe0, 0x00]); // shl $0,%eax
        set(&mut c, Ecx, 0x20);
        exec(&mut c, &mut m, &[0xd3, 0xe8]); // shr %cl,%eax
        assert_eq!((get(&c, Eax), status(&c)), (0x1234, STATUS));
        set(&mut c, Ecx, 0x21);
        exec(&mut c, &mut m, &[0xd3, 0xe0]); // shl %cl,%eax: by 1
        assert_eq!(get(&c, Eax), 0x2468);
        assert_eq!(status(&c) & !AF, 0);
        exec(&mut c, &mut m, &[0xd1, 0xf0]); // sal %eax (D1 /6, an alias of SHL)
        assert_eq!(get(&c, Eax), 0x48d0);
        assert_eq!(status(&c) & !AF, 0);

        set(&mut c, Eax, 0xffff_1234);
        exec(&mut c, &mut m, &[0x66, 0xc1, 0xe0, 0x04]); // shl $4,%ax
        assert_eq!(get(&c, Eax), 0xffff_2340);
        assert_eq!(status(&c) & !AF, CF);

        m.poke_u32(0x2000, 0x4000_0000);
        exec(&mut c, &mut m, &[0xd1, 0x25, 0x00, 0x20, 0x00, 0x00]); // shll 0x2000
        assert_eq!(m.u32_at(0x2000), 0x8000_0000);
        assert_eq!(status(&c) & !AF, SF | OF | PF);
        m.poke_u32(0x2000, 0x8001);
        exec(&mut c, &mut m, &[0x66, 0xd1, 0x3d, 0x00, 0x20, 0x00, 0x00]); // sarw 0x2000
        assert_eq!(m.u32_at(0x2000), 0xc000);
        assert_eq!(status(&c) & !AF, CF | SF | PF);
    }

    #[test]
    fn double_precision_shifts() {
        let (mut c, mut m) = setup(0);
        set(&mut c, Eax, 0x1234_5678);
        set(&mut c, Ebx, 0x9abc_def0);
        exec(&mut c, &mut m, &[0x0f, 0xa4, 0xd8, 0x04]); // shld $4,%ebx,%eax
        assert_eq!(get(&c, Eax), 0x2345_6789);
        assert_eq!(status(&c) & !AF, CF);

        set(&mut c, Eax, 0x1234_5678);
        set(&mut c, Ecx, 8);
        exec(&mut c, &mut m, &[0x0f, 0xad, 0xd8]); // shrd %cl,%ebx,%eax
        assert_eq!(get(&c, Eax), 0xf012_3456);
        assert_eq!(status(&c) & !AF, SF | PF);

        set(&mut c, Eax, 0x5678);
        set(&mut c, Ebx, 0xdef0);
        exec(&mut c, &mut m, &[0x66, 0x0f, 0xa4, 0xd8, 0x04]); // shld $4,%bx,%ax
        assert_eq!(get(&c, Eax), 0x678d);
        assert_eq!(status(&c) & !AF, CF | PF | OF);

        m.poke_u32(0x2000, 0x1122_3344);
        set(&mut c, Ebx, 0xaabb_ccdd);
        exec(
            &mut c,
            &mut m,
            &[0x0f, 0xa4, 0x1d, 0x00, 0x20, 0x00, 0x00, 0x08],
        ); // shld $8,%ebx,0x2000
        assert_eq!(m.u32_at(0x2000), 0x2233_44aa);
        assert_eq!(status(&c) & !AF, CF | PF);

        c.eflags = 0x2 | STATUS;
        exec(
            &mut c,
            &mut m,
            &[0x0f, 0xa4, 0x1d, 0x00, 0x20, 0x00, 0x00, 0x20],
        ); // shld $32: 0
        assert_eq!((m.u32_at(0x2000), status(&c)), (0x2233_44aa, STATUS));
    }

    #[test]
    fn bit_tests_on_registers() {
        let (mut c, mut m) = setup(ZF | SF);
        set(&mut c, Eax, 0x8000_0001);
        set(&mut c, Ebx, 31);
        exec(&mut c, &mut m, &[0x0f, 0xa3, 0xd8]); // bt %ebx,%eax
        assert_eq!(status(&c), ZF | SF | CF, "only CF changes");
        set(&mut c, Ebx, 33); // bit 1: register offsets are taken modulo 32
        exec(&mut c, &mut m, &[0x0f, 0xab, 0xd8]); // bts %ebx,%eax
        assert_eq!((get(&c, Eax), status(&c) & CF), (0x8000_0003, 0));
        exec(&mut c, &mut m, &[0x0f, 0xb3, 0xd8]); // btr %ebx,%eax
        assert_eq!((get(&c, Eax), status(&c) & CF), (0x8000_0001, CF));
        exec(&mut c, &mut m, &[0x0f, 0xbb, 0xd8]); // btc %ebx,%eax
        assert_eq!((get(&c, Eax), status(&c) & CF), (0x8000_0003, 0));
        exec(&mut c, &mut m, &[0x0f, 0xba, 0xe0, 0x00]); // bt $0,%eax
        assert_eq!(status(&c) & CF, CF);
        exec(&mut c, &mut m, &[0x0f, 0xba, 0xf8, 0x1f]); // btc $31,%eax
        assert_eq!((get(&c, Eax), status(&c) & CF), (3, CF));
        set(&mut c, Ebx, 0x11);
        exec(&mut c, &mut m, &[0x66, 0x0f, 0xa3, 0xd8]); // bt %bx,%ax: bit 1
        assert_eq!(status(&c), ZF | SF | CF);
    }

    #[test]
    fn bit_tests_address_the_whole_bit_string_in_memory() {
        let (mut c, mut m) = setup(0);
        m.poke(0x2004, &[0x08]);
        set(&mut c, Ebx, 35);
        exec(&mut c, &mut m, &[0x0f, 0xa3, 0x1d, 0x00, 0x20, 0x00, 0x00]); // bt %ebx,0x2000
        assert_eq!(status(&c) & CF, CF);
        set(&mut c, Ebx, 36);
        exec(&mut c, &mut m, &[0x0f, 0xab, 0x1d, 0x00, 0x20, 0x00, 0x00]); // bts %ebx,0x2000
        assert_eq!((m.memory[0x2004], status(&c) & CF), (0x18, 0));
        // Negative offsets go below the operand.
        set(&mut c, Ebx, 0xffff_ffff);
        exec(&mut c, &mut m, &[0x0f, 0xab, 0x1d, 0x00, 0x20, 0x00, 0x00]); // bts %ebx,0x2000
        assert_eq!(m.u32_at(0x1ffc), 0x8000_0000);
        set(&mut c, Ebx, 0xfff0); // -16 as a word
        exec(
            &mut c,
            &mut m,
            &[0x66, 0x0f, 0xab, 0x1d, 0x00, 0x20, 0x00, 0x00],
        ); // bts %bx,0x2000
        assert_eq!(m.u16_at(0x1ffe), 0x8001, "bit 0 of the word at 0x1ffe");
        // An immediate offset stays inside the operand.
        m.poke(0x2000, &[0]);
        exec(
            &mut c,
            &mut m,
            &[0x0f, 0xba, 0x2d, 0x00, 0x20, 0x00, 0x00, 0x23],
        ); // btsl $35,0x2000
        assert_eq!(m.memory[0x2000], 0x08);
        assert_eq!(m.memory[0x2004], 0x18);
        // 16-bit addressing wraps the unit address within 64 KiB.
        m.poke(0x0002, &[0x01]);
        set(&mut c, Ebx, 0xfffe);
        set(&mut c, Ecx, 32);
        exec(&mut c, &mut m, &[0x67, 0x0f, 0xa3, 0x0f]); // bt %ecx,(%bx)
        assert_eq!(status(&c) & CF, CF);
        // Faults: BT reads, BTS writes.
        m.unmapped_pages = vec![0x30];
        set(&mut c, Ebx, 0x100 * 8);
        let bt = [0x0f, 0xa3, 0x1d, 0x00, 0xff, 0x02, 0x00]; // bt %ebx,0x2ff00
        fault(&mut c, &mut m, &bt, Exception::page_fault(0x30000, 0));
        let bts = [0x0f, 0xab, 0x1d, 0x00, 0xff, 0x02, 0x00]; // bts %ebx,0x2ff00
        fault(&mut c, &mut m, &bts, Exception::page_fault(0x30000, 2));
    }

    #[test]
    fn bit_scans() {
        let (mut c, mut m) = setup(ZF);
        set(&mut c, Ebx, 0x0001_0100);
        exec(&mut c, &mut m, &[0x0f, 0xbc, 0xc3]); // bsf %ebx,%eax
        assert_eq!((get(&c, Eax), status(&c) & ZF), (8, 0));
        exec(&mut c, &mut m, &[0x0f, 0xbd, 0xc3]); // bsr %ebx,%eax
        assert_eq!((get(&c, Eax), status(&c) & ZF), (16, 0));
        set(&mut c, Ebx, 0);
        set(&mut c, Eax, 0x1234);
        exec(&mut c, &mut m, &[0x0f, 0xbc, 0xc3]); // bsf %ebx,%eax
        assert_eq!(
            (get(&c, Eax), status(&c) & ZF),
            (0x1234, ZF),
            "destination kept"
        );
        set(&mut c, Ebx, 0xffff_8000);
        set(&mut c, Eax, 0xabcd_0000);
        exec(&mut c, &mut m, &[0x66, 0x0f, 0xbd, 0xc3]); // bsr %bx,%ax
        assert_eq!((get(&c, Eax), status(&c) & ZF), (0xabcd_000f, 0));
        m.poke_u32(0x2000, 0x8000_0000);
        exec(&mut c, &mut m, &[0x0f, 0xbc, 0x05, 0x00, 0x20, 0x00, 0x00]); // bsf 0x2000,%eax
        assert_eq!(get(&c, Eax), 31);
    }

    /// XADD with its source register in the destination's address once
    /// wrote the sum where the address pointed after the register took
    /// the old value. Found by the fuzz target
    /// `instructions_retire_or_fault_cleanly`.
    #[test]
    fn xadd_writes_memory_at_the_address_before_the_register_changes() {
        let (mut c, mut m) = setup(0);
        m.poke(0x2010, &[0x30, 0, 0, 0]);
        set(&mut c, Ecx, 0x2000);
        exec(&mut c, &mut m, &[0x0f, 0xc1, 0x49, 0x10]); // xadd %ecx,0x10(%ecx)
        assert_eq!(get(&c, Ecx), 0x30, "the old value");
        assert_eq!(m.u32_at(0x2010), 0x2030, "the sum, at the address before");
        assert_eq!(m.u32_at(0x40), 0, "nothing at the old value's address");
        set(&mut c, Ebx, 0x3001);
        m.poke(0x3002, &[0x10]);
        exec(&mut c, &mut m, &[0x0f, 0xc0, 0x5b, 0x01]); // xadd %bl,0x1(%ebx)
        assert_eq!(get(&c, Ebx), 0x3010);
        assert_eq!((m.memory[0x3002], m.memory[0x3011]), (0x11, 0));
    }

    #[test]
    fn xadd_and_cmpxchg() {
        let (mut c, mut m) = setup(0);
        set(&mut c, Eax, 1);
        set(&mut c, Ebx, 0xffff_ffff);
        exec(&mut c, &mut m, &[0x0f, 0xc1, 0xd8]); // xadd %ebx,%eax
        assert_eq!((get(&c, Eax), get(&c, Ebx)), (0, 1));
        assert_eq!(status(&c), CF | ZF | AF | PF);
        set(&mut c, Eax, 3);
        exec(&mut c, &mut m, &[0x0f, 0xc1, 0xc0]); // xadd %eax,%eax
        assert_eq!(get(&c, Eax), 6);
        m.poke(0x2000, &[0x7f]);
        set(&mut c, Ebx, 0x1234_5601);
        exec(
            &mut c,
            &mut m,
            &[0xf0, 0x0f, 0xc0, 0x1d, 0x00, 0x20, 0x00, 0x00],
        ); // lock xadd %bl,0x2000
        assert_eq!((m.memory[0x2000], get(&c, Ebx)), (0x80, 0x1234_567f));
        assert_eq!(status(&c), SF | AF | OF);

        set(&mut c, Eax, 5);
        set(&mut c, Ecx, 5);
        set(&mut c, Ebx, 9);
        exec(&mut c, &mut m, &[0x0f, 0xb1, 0xd9]); // cmpxchg %ebx,%ecx
        assert_eq!((get(&c, Eax), get(&c, Ecx)), (5, 9));
        assert_eq!(status(&c), ZF | PF);
        set(&mut c, Eax, 4);
        exec(&mut c, &mut m, &[0x0f, 0xb1, 0xd9]); // cmpxchg %ebx,%ecx
        assert_eq!((get(&c, Eax), get(&c, Ecx)), (9, 9));
        assert_eq!(status(&c), CF | SF | AF);
        m.poke(0x2000, &[0x42]);
        set(&mut c, Eax, 0x42);
        set(&mut c, Ebx, 0x99);
        exec(
            &mut c,
            &mut m,
            &[0xf0, 0x0f, 0xb0, 0x1d, 0x00, 0x20, 0x00, 0x00],
        ); // lock cmpxchg %bl,0x2000
        assert_eq!(m.memory[0x2000], 0x99);
        assert_eq!(status(&c), ZF | PF);
        m.poke(0x2000, &[0x34, 0x12]);
        set(&mut c, Eax, 0xffff_1235);
        exec(
            &mut c,
            &mut m,
            &[0x66, 0x0f, 0xb1, 0x1d, 0x00, 0x20, 0x00, 0x00],
        ); // cmpxchg %bx,0x2000
        assert_eq!((get(&c, Eax), m.u16_at(0x2000)), (0xffff_1234, 0x1234));
        assert_eq!(status(&c), 0);
        // The destination is always written: an unwritable one faults even
        // when the comparison fails.
        m.unmapped_pages = vec![0x30];
        let code = [0x0f, 0xb1, 0x1d, 0x00, 0x00, 0x03, 0x00]; // cmpxchg %ebx,0x30000
        fault(&mut c, &mut m, &code, Exception::page_fault(0x30000, 2));
    }

    #[test]
    fn cmpxchg8b_swaps_or_loads() {
        let (mut c, mut m) = setup(CF);
        m.poke_u32(0x2000, 0x1111_1111);
        m.poke_u32(0x2004, 0x2222_2222);
        set(&mut c, Eax, 0x1111_1111);
        set(&mut c, Edx, 0x2222_2222);
        set(&mut c, Ebx, 0xaaaa_aaaa);
        set(&mut c, Ecx, 0xbbbb_bbbb);
        let code = [0xf0, 0x0f, 0xc7, 0x0d, 0x00, 0x20, 0x00, 0x00]; // lock cmpxchg8b 0x2000
        exec(&mut c, &mut m, &code);
        assert_eq!(
            (m.u32_at(0x2000), m.u32_at(0x2004)),
            (0xaaaa_aaaa, 0xbbbb_bbbb)
        );
        assert_eq!(status(&c), CF | ZF);
        exec(&mut c, &mut m, &code);
        assert_eq!((get(&c, Eax), get(&c, Edx)), (0xaaaa_aaaa, 0xbbbb_bbbb));
        assert_eq!(status(&c), CF);
        // Straddling an unmapped page: nothing is written.
        m.unmapped_pages = vec![0x30];
        m.poke_u32(0x2fffc, 0xaaaa_aaaa);
        let code = [0x0f, 0xc7, 0x0d, 0xfc, 0xff, 0x02, 0x00]; // cmpxchg8b 0x2fffc
        fault(&mut c, &mut m, &code, Exception::page_fault(0x30000, 2));
        assert_eq!(m.u32_at(0x2fffc), 0xaaaa_aaaa);
    }

    /// Condition `cc` (the low nibble of Jcc/SETcc/CMOVcc) from the SDM's
    /// encoding: even codes test, odd codes negate.
    pub(crate) fn expected_condition(cc: u8, eflags: u32) -> bool {
        let (cf, zf, sf, of, pf) = (
            eflags & CF != 0,
            eflags & ZF != 0,
            eflags & SF != 0,
            eflags & OF != 0,
            eflags & PF != 0,
        );
        let base = match cc >> 1 {
            0 => of,
            1 => cf,
            2 => zf,
            3 => cf || zf,
            4 => sf,
            5 => pf,
            6 => sf != of,
            _ => zf || sf != of,
        };
        base != (cc & 1 == 1)
    }

    pub(crate) const FLAG_SETS: [u32; 10] =
        [0, CF, ZF, SF, OF, PF, SF | OF, ZF | SF, CF | ZF, STATUS];

    #[test]
    fn setcc_and_cmovcc_for_every_condition() {
        for cc in 0u8..16 {
            for flags in FLAG_SETS {
                let (mut c, mut m) = setup(flags);
                let holds = expected_condition(cc, flags);
                set(&mut c, Eax, 0xffff_ff55);
                exec(&mut c, &mut m, &[0x0f, 0x90 + cc, 0xc0]); // setcc %al
                assert_eq!(
                    get(&c, Eax),
                    0xffff_ff00 | u32::from(holds),
                    "set{cc:x} {flags:x}"
                );
                set(&mut c, Ebx, 0x1234_5678);
                exec(&mut c, &mut m, &[0x0f, 0x40 + cc, 0xc3]); // cmovcc %ebx,%eax
                let expected = if holds {
                    0x1234_5678
                } else {
                    0xffff_ff00 | u32::from(holds)
                };
                assert_eq!(get(&c, Eax), expected, "cmov{cc:x} {flags:x}");
                assert_eq!(status(&c), flags);
            }
        }
        let (mut c, mut m) = setup(SF);
        m.poke(0x2000, &[0xaa]);
        exec(&mut c, &mut m, &[0x0f, 0x9c, 0x05, 0x00, 0x20, 0x00, 0x00]); // setl 0x2000
        assert_eq!(m.memory[0x2000], 1);
        set(&mut c, Eax, 0xffff_0000);
        set(&mut c, Ebx, 0x1234);
        exec(&mut c, &mut m, &[0x66, 0x0f, 0x48, 0xc3]); // cmovs %bx,%ax
        assert_eq!(get(&c, Eax), 0xffff_1234);
        // A CMOV whose condition fails still reads (and faults).
        m.unmapped_pages = vec![0x30];
        let code = [0x0f, 0x4f, 0x05, 0x00, 0x00, 0x03, 0x00]; // cmovg 0x30000,%eax
        fault(&mut c, &mut m, &code, Exception::page_fault(0x30000, 0));
    }

    #[test]
    fn sign_extensions_and_bswap() {
        let (mut c, mut m) = setup(0);
        set(&mut c, Eax, 0x1234_5680);
        exec(&mut c, &mut m, &[0x66, 0x98]); // cbtw
        assert_eq!(get(&c, Eax), 0x1234_ff80);
        set(&mut c, Eax, 0x0000_8000);
        exec(&mut c, &mut m, &[0x98]); // cwtl
        assert_eq!(get(&c, Eax), 0xffff_8000);
        set(&mut c, Eax, 0x8000);
        set(&mut c, Edx, 0x1234_5678);
        exec(&mut c, &mut m, &[0x66, 0x99]); // cwtd
        assert_eq!(get(&c, Edx), 0x1234_ffff);
        set(&mut c, Eax, 0x7fff_ffff);
        exec(&mut c, &mut m, &[0x99]); // cltd
        assert_eq!(get(&c, Edx), 0);
        set(&mut c, Eax, 0x1234_5678);
        exec(&mut c, &mut m, &[0x0f, 0xc8]); // bswap %eax
        assert_eq!(get(&c, Eax), 0x7856_3412);
        set(&mut c, Edi, 0x0102_0304);
        exec(&mut c, &mut m, &[0x0f, 0xcf]); // bswap %edi
        assert_eq!(get(&c, Edi), 0x0403_0201);
        exec(&mut c, &mut m, &[0x66, 0x0f, 0xc8]); // bswap %ax: cleared
        assert_eq!(get(&c, Eax), 0x7856_0000);
        assert_eq!(status(&c), 0);
    }

    #[test]
    fn flag_instructions() {
        let (mut c, mut m) = setup(STATUS);
        exec(&mut c, &mut m, &[0x9f]); // lahf
        assert_eq!(get(&c, Eax), 0xd700);
        set(&mut c, Eax, 0x0100);
        exec(&mut c, &mut m, &[0x9e]); // sahf
        assert_eq!(status(&c), CF | OF, "OF is not loaded");
        exec(&mut c, &mut m, &[0xf8]); // clc
        assert_eq!(status(&c), OF);
        exec(&mut c, &mut m, &[0xf9]); // stc
        assert_eq!(status(&c), OF | CF);
        exec(&mut c, &mut m, &[0xf5]); // cmc
        assert_eq!(status(&c), OF);
        exec(&mut c, &mut m, &[0xfd]); // std
        assert_ne!(c.eflags & Eflags::DF, 0);
        exec(&mut c, &mut m, &[0xfc]); // cld
        assert_eq!(c.eflags & Eflags::DF, 0);
        c.eflags |= CF;
        set(&mut c, Eax, 0x1234_5600);
        exec(&mut c, &mut m, &[0xd6]); // salc
        assert_eq!(get(&c, Eax), 0x1234_56ff);
        exec(&mut c, &mut m, &[0xf5]); // cmc
        exec(&mut c, &mut m, &[0xd6]); // salc
        assert_eq!(get(&c, Eax), 0x1234_5600);
    }

    #[test]
    fn decimal_adjustments() {
        // 0x79 + 0x35 = 0xae; DAA makes it 0x14 carry 1 (79 + 35 = 114).
        let (mut c, mut m) = setup(0);
        set(&mut c, Eax, 0xae);
        exec(&mut c, &mut m, &[0x27]); // daa
        assert_eq!(get(&c, Eax), 0x14);
        assert_eq!(status(&c), CF | AF | PF);
        // 0x35 - 0x47 = 0xee with CF and AF; DAS makes it 0x88 borrow 1.
        c.eflags = 0x2 | CF | AF;
        set(&mut c, Eax, 0xee);
        exec(&mut c, &mut m, &[0x2f]); // das
        assert_eq!(get(&c, Eax), 0x88);
        assert_eq!(status(&c), CF | AF | SF | PF);
        // DAA with nothing to adjust clears CF and AF.
        c.eflags = 0x2;
        set(&mut c, Eax, 0x42);
        exec(&mut c, &mut m, &[0x27]); // daa
        assert_eq!((get(&c, Eax), status(&c)), (0x42, PF));
        // 9 + 8 = 0x11 with AF; AAA gives AH=1, AL=7.
        c.eflags = 0x2 | AF;
        set(&mut c, Eax, 0x0011);
        exec(&mut c, &mut m, &[0x37]); // aaa
        assert_eq!(get(&c, Eax), 0x0107);
        assert_eq!(status(&c), CF | AF);
        c.eflags = 0x2;
        set(&mut c, Eax, 0x0034);
        exec(&mut c, &mut m, &[0x37]); // aaa: nothing to adjust
        assert_eq!(get(&c, Eax), 0x0004);
        assert_eq!(status(&c) & (CF | AF), 0);
        // 0x12 - 5 as unpacked BCD: AH=1, AL=2-5=0xfd with AF; AAS gives 7.
        c.eflags = 0x2 | AF;
        set(&mut c, Eax, 0x01fd);
        exec(&mut c, &mut m, &[0x3f]); // aas
        assert_eq!(get(&c, Eax), 0x0007);
        assert_eq!(status(&c) & (CF | AF), CF | AF);
        set(&mut c, Eax, 0x003f);
        exec(&mut c, &mut m, &[0xd4, 0x0a]); // aam
        assert_eq!(get(&c, Eax), 0x0603);
        assert_eq!(status(&c), PF);
        exec(&mut c, &mut m, &[0xd5, 0x0a]); // aad
        assert_eq!(get(&c, Eax), 0x003f);
        assert_eq!(status(&c), PF);
        set(&mut c, Eax, 0x0102);
        exec(&mut c, &mut m, &[0xd5, 0x10]); // aad $0x10
        assert_eq!(get(&c, Eax), 0x0012);
        fault(&mut c, &mut m, &[0xd4, 0x00], Exception::de()); // aam $0
    }
}

/// The differential test: the arithmetic, logic, shift and rotate,
/// multiply and divide, bit-test and bit-scan instructions, in each
/// operand size, run natively (`asm!`) and in the emulator on the same
/// pseudo-random operands and flags; the registers and all six status
/// flags must agree, the flags the SDM leaves undefined included (this
/// module claims the host's values for all of them).
#[cfg(all(test, target_arch = "x86_64"))]
#[allow(unsafe_code)] // native execution of the instructions under test (see lib.rs)
mod differential {
    use core::arch::asm;

    use crate::emu::flags::STATUS;
    use crate::emu::mask;
    use crate::emu::testing::{TestMachine, cpu, run};
    use crate::exception::{Exception, Stop};

    /// How the operands of a case are drawn.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Draw {
        /// EAX, ECX, EDX from edge-biased random values.
        Binary,
        /// As `Binary`, with a shift count in CL (any byte, mostly 0..=33).
        Shift,
        /// A dividend in AX, DX:AX or EDX:EAX mostly small enough for the
        /// divisor in CL/CX/ECX.
        Divide,
    }

    /// One instruction form: its text (Intel syntax, also the native
    /// instruction), encoding, operand drawing and operand size.
    struct Case {
        text: &'static str,
        bytes: &'static [u8],
        draw: Draw,
        size: u32,
        native: fn([u64; 3], u64) -> ([u64; 3], u64),
    }

    /// Cases from `"text" => [bytes] Draw size;` lines; each gets a native
    /// runner that loads the flags, executes `text` with RAX, RCX and RDX
    /// as operands and returns them with the flags.
    macro_rules! cases {
        ($($text:literal => [$($byte:literal),*] $draw:ident $size:literal;)*) => {
            vec![$(Case {
                text: $text,
                bytes: &[$($byte),*],
                draw: Draw::$draw,
                size: $size,
                native: {
                    fn native(regs: [u64; 3], flags: u64) -> ([u64; 3], u64) {
                        let [mut rax, mut rcx, mut rdx] = regs;
                        let mut flags = flags;
                        // SAFETY: the instruction reads and writes only RAX,
                        // RCX, RDX and RFLAGS, all declared; the pushes and
                        // pops are balanced (the block may use the stack, no
                        // `nostack`); the loaded flags hold only status flags
                        // and bit 1, so DF stays clear and TF off; divisions
                        // are only run when they cannot fault.
                        unsafe {
                            asm!(
                                "push {flags}",
                                "popfq",
                                $text,
                                "pushfq",
                                "pop {flags}",
                                flags = inout(reg) flags,
                                inout("rax") rax,
                                inout("rcx") rcx,
                                inout("rdx") rdx,
                            );
                        }
                        ([rax, rcx, rdx], flags)
                    }
                    native
                },
            }),*]
        };
    }

    fn all_cases() -> Vec<Case> {
        cases! {
            "add al, cl" => [0x00, 0xc8] Binary 1;
            "add ax, cx" => [0x66, 0x01, 0xc8] Binary 2;
            "add eax, ecx" => [0x01, 0xc8] Binary 4;
            "or al, cl" => [0x08, 0xc8] Binary 1;
            "or ax, cx" => [0x66, 0x09, 0xc8] Binary 2;
            "or eax, ecx" => [0x09, 0xc8] Binary 4;
            "adc al, cl" => [0x10, 0xc8] Binary 1;
            "adc ax, cx" => [0x66, 0x11, 0xc8] Binary 2;
            "adc eax, ecx" => [0x11, 0xc8] Binary 4;
            "sbb al, cl" => [0x18, 0xc8] Binary 1;
            "sbb ax, cx" => [0x66, 0x19, 0xc8] Binary 2;
            "sbb eax, ecx" => [0x19, 0xc8] Binary 4;
            "and al, cl" => [0x20, 0xc8] Binary 1;
            "and ax, cx" => [0x66, 0x21, 0xc8] Binary 2;
            "and eax, ecx" => [0x21, 0xc8] Binary 4;
            "sub al, cl" => [0x28, 0xc8] Binary 1;
            "sub ax, cx" => [0x66, 0x29, 0xc8] Binary 2;
            "sub eax, ecx" => [0x29, 0xc8] Binary 4;
            "xor al, cl" => [0x30, 0xc8] Binary 1;
            "xor ax, cx" => [0x66, 0x31, 0xc8] Binary 2;
            "xor eax, ecx" => [0x31, 0xc8] Binary 4;
            "cmp al, cl" => [0x38, 0xc8] Binary 1;
            "cmp ax, cx" => [0x66, 0x39, 0xc8] Binary 2;
            "cmp eax, ecx" => [0x39, 0xc8] Binary 4;
            "test al, cl" => [0x84, 0xc8] Binary 1;
            "test ax, cx" => [0x66, 0x85, 0xc8] Binary 2;
            "test eax, ecx" => [0x85, 0xc8] Binary 4;
            "inc al" => [0xfe, 0xc0] Binary 1;
            "inc ax" => [0x66, 0xff, 0xc0] Binary 2;
            "inc eax" => [0xff, 0xc0] Binary 4;
            "dec al" => [0xfe, 0xc8] Binary 1;
            "dec ax" => [0x66, 0xff, 0xc8] Binary 2;
            "dec eax" => [0xff, 0xc8] Binary 4;
            "not al" => [0xf6, 0xd0] Binary 1;
            "not ax" => [0x66, 0xf7, 0xd0] Binary 2;
            "not eax" => [0xf7, 0xd0] Binary 4;
            "neg al" => [0xf6, 0xd8] Binary 1;
            "neg ax" => [0x66, 0xf7, 0xd8] Binary 2;
            "neg eax" => [0xf7, 0xd8] Binary 4;
            "rol al, cl" => [0xd2, 0xc0] Shift 1;
            "rol ax, cl" => [0x66, 0xd3, 0xc0] Shift 2;
            "rol eax, cl" => [0xd3, 0xc0] Shift 4;
            "ror al, cl" => [0xd2, 0xc8] Shift 1;
            "ror ax, cl" => [0x66, 0xd3, 0xc8] Shift 2;
            "ror eax, cl" => [0xd3, 0xc8] Shift 4;
            "rcl al, cl" => [0xd2, 0xd0] Shift 1;
            "rcl ax, cl" => [0x66, 0xd3, 0xd0] Shift 2;
            "rcl eax, cl" => [0xd3, 0xd0] Shift 4;
            "rcr al, cl" => [0xd2, 0xd8] Shift 1;
            "rcr ax, cl" => [0x66, 0xd3, 0xd8] Shift 2;
            "rcr eax, cl" => [0xd3, 0xd8] Shift 4;
            "shl al, cl" => [0xd2, 0xe0] Shift 1;
            "shl ax, cl" => [0x66, 0xd3, 0xe0] Shift 2;
            "shl eax, cl" => [0xd3, 0xe0] Shift 4;
            "shr al, cl" => [0xd2, 0xe8] Shift 1;
            "shr ax, cl" => [0x66, 0xd3, 0xe8] Shift 2;
            "shr eax, cl" => [0xd3, 0xe8] Shift 4;
            "sar al, cl" => [0xd2, 0xf8] Shift 1;
            "sar ax, cl" => [0x66, 0xd3, 0xf8] Shift 2;
            "sar eax, cl" => [0xd3, 0xf8] Shift 4;
            "shld ax, dx, cl" => [0x66, 0x0f, 0xa5, 0xd0] Shift 2;
            "shld eax, edx, cl" => [0x0f, 0xa5, 0xd0] Shift 4;
            "shrd ax, dx, cl" => [0x66, 0x0f, 0xad, 0xd0] Shift 2;
            "shrd eax, edx, cl" => [0x0f, 0xad, 0xd0] Shift 4;
            "mul cl" => [0xf6, 0xe1] Binary 1;
            "mul cx" => [0x66, 0xf7, 0xe1] Binary 2;
            "mul ecx" => [0xf7, 0xe1] Binary 4;
            "imul cl" => [0xf6, 0xe9] Binary 1;
            "imul cx" => [0x66, 0xf7, 0xe9] Binary 2;
            "imul ecx" => [0xf7, 0xe9] Binary 4;
            "imul ax, cx" => [0x66, 0x0f, 0xaf, 0xc1] Binary 2;
            "imul ax, cx, -123" => [0x66, 0x6b, 0xc1, 0x85] Binary 2;
            "imul ax, cx, 0x2345" => [0x66, 0x69, 0xc1, 0x45, 0x23] Binary 2;
            "imul eax, ecx" => [0x0f, 0xaf, 0xc1] Binary 4;
            "imul eax, ecx, -123" => [0x6b, 0xc1, 0x85] Binary 4;
            "imul eax, ecx, 0x12345" => [0x69, 0xc1, 0x45, 0x23, 0x01, 0x00] Binary 4;
            "div cl" => [0xf6, 0xf1] Divide 1;
            "div cx" => [0x66, 0xf7, 0xf1] Divide 2;
            "div ecx" => [0xf7, 0xf1] Divide 4;
            "idiv cl" => [0xf6, 0xf9] Divide 1;
            "idiv cx" => [0x66, 0xf7, 0xf9] Divide 2;
            "idiv ecx" => [0xf7, 0xf9] Divide 4;
            "bt ax, cx" => [0x66, 0x0f, 0xa3, 0xc8] Binary 2;
            "bt eax, ecx" => [0x0f, 0xa3, 0xc8] Binary 4;
            "bts ax, cx" => [0x66, 0x0f, 0xab, 0xc8] Binary 2;
            "bts eax, ecx" => [0x0f, 0xab, 0xc8] Binary 4;
            "btr ax, cx" => [0x66, 0x0f, 0xb3, 0xc8] Binary 2;
            "btr eax, ecx" => [0x0f, 0xb3, 0xc8] Binary 4;
            "btc ax, cx" => [0x66, 0x0f, 0xbb, 0xc8] Binary 2;
            "btc eax, ecx" => [0x0f, 0xbb, 0xc8] Binary 4;
            "bsf ax, cx" => [0x66, 0x0f, 0xbc, 0xc1] Binary 2;
            "bsf eax, ecx" => [0x0f, 0xbc, 0xc1] Binary 4;
            "bsr ax, cx" => [0x66, 0x0f, 0xbd, 0xc1] Binary 2;
            "bsr eax, ecx" => [0x0f, 0xbd, 0xc1] Binary 4;
        }
    }

    /// xorshift64* (the multiply decorrelates consecutive outputs).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, bound: u32) -> u32 {
            super::low32(self.next() >> 32) % bound
        }

        /// Random upper bits; the low `size` bytes biased towards the
        /// values where flags change.
        fn operand(&mut self, size: u32) -> u32 {
            const EDGES: [u32; 13] = [
                0,
                1,
                2,
                0x0f,
                0x10,
                0x7f,
                0x80,
                0xff,
                0x7fff,
                0x8000,
                0xffff,
                0x7fff_ffff,
                0x8000_0000,
            ];
            let random = super::low32(self.next() >> 16);
            let low = match self.below(8) {
                0 | 1 => {
                    let edge = EDGES[self.below(13) as usize];
                    match self.below(3) {
                        0 => edge,
                        1 => edge.wrapping_neg(),
                        _ => edge.wrapping_sub(1),
                    }
                }
                2 => self.below(4),
                _ => super::low32(self.next() >> 24),
            };
            (random & !mask(size)) | (low & mask(size))
        }
    }

    /// Whether DIV/IDIV of these registers raises #DE.
    fn divide_faults(signed: bool, size: u32, [eax, ecx, edx]: [u32; 3]) -> bool {
        let bits = 8 * size;
        let divisor = ecx & mask(size);
        if divisor == 0 {
            return true;
        }
        let dividend = match size {
            1 => u64::from(eax & 0xffff),
            2 => (u64::from(edx & 0xffff) << 16) | u64::from(eax & 0xffff),
            _ => (u64::from(edx) << 32) | u64::from(eax),
        };
        if signed {
            let shift = 128 - 2 * bits;
            let dividend = (i128::from(dividend) << shift) >> shift;
            let divisor = i128::from(super::sign_extend(divisor, size));
            let quotient = dividend / divisor;
            quotient < -(1i128 << (bits - 1)) || quotient >= 1i128 << (bits - 1)
        } else {
            dividend / u64::from(divisor) > u64::from(mask(size))
        }
    }

    fn draw(case: &Case, rng: &mut Rng) -> [u32; 3] {
        let size = case.size;
        let mut regs = [rng.operand(size), rng.operand(size), rng.operand(size)];
        match case.draw {
            Draw::Binary => {}
            Draw::Shift => {
                let count = if rng.below(4) == 0 {
                    rng.below(256)
                } else {
                    rng.below(34)
                };
                regs[1] = (regs[1] & !0xff) | count;
            }
            Draw::Divide => {
                if rng.below(4) != 0 {
                    // Make the high half of the dividend small (unsigned) or
                    // a sign extension (signed), so most divisions fit.
                    let divisor = (regs[1] & mask(size)).max(1);
                    let signed = case.text.starts_with("idiv");
                    let low_negative = regs[0] & super::sign_bit(size) != 0;
                    let high = if signed {
                        if low_negative { mask(size) } else { 0 }
                    } else {
                        rng.below(divisor)
                    };
                    match size {
                        1 => regs[0] = (regs[0] & !0xff00) | ((high & 0xff) << 8),
                        _ => regs[2] = (regs[2] & !mask(size)) | high,
                    }
                }
            }
        }
        regs
    }

    /// Whether the host CPU is Intel's, whose undefined flags the
    /// emulator reproduces (the virtual CPU is a GenuineIntel i686).
    fn host_is_intel() -> bool {
        let leaf = std::arch::x86_64::__cpuid(0);
        [leaf.ebx, leaf.edx, leaf.ecx]
            .iter()
            .flat_map(|word| word.to_le_bytes())
            .eq(*b"GenuineIntel")
    }

    /// What the SDM leaves undefined for `case` with these registers: the
    /// status flags, and whether the destination is too.
    fn undefined(case: &Case, regs: [u32; 3]) -> (u32, bool) {
        const CF: u32 = 1 << 0;
        const PF: u32 = 1 << 2;
        const AF: u32 = 1 << 4;
        const ZF: u32 = 1 << 6;
        const SF: u32 = 1 << 7;
        const OF: u32 = 1 << 11;
        let mnemonic = case.text.split(' ').next().unwrap_or("");
        let count = regs[1] & 0xff;
        let masked = count & 0x1f;
        match mnemonic {
            "bsf" | "bsr" => (
                CF | OF | SF | AF | PF,
                regs[1] & super::mask(case.size) == 0,
            ),
            "bt" | "bts" | "btr" | "btc" => (OF | SF | AF | PF, false),
            "mul" | "imul" => (SF | ZF | AF | PF, false),
            "div" | "idiv" => (CF | OF | SF | ZF | AF | PF, false),
            "shl" | "shr" | "sar" | "rol" | "ror" | "rcl" | "rcr" => {
                let of = if masked > 1 { OF } else { 0 };
                let af = if masked != 0 && !mnemonic.starts_with('r') {
                    AF
                } else {
                    0
                };
                (of | af, false)
            }
            "shld" | "shrd" => {
                let of = if masked > 1 { OF } else { 0 };
                let af = if masked != 0 { AF } else { 0 };
                let size_bits = case.size * 8;
                if masked > size_bits {
                    // Result and flags are all undefined.
                    (CF | OF | SF | ZF | AF | PF, true)
                } else {
                    (of | af, false)
                }
            }
            _ => (0, false),
        }
    }

    /// Runs every case whose text starts with one of `prefixes` on
    /// `rounds` draws and panics with the disagreements.
    fn compare(prefixes: &[&str], rounds: usize) {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut machine = TestMachine::default();
        let mut failures = Vec::new();
        let cases = all_cases();
        let selected = cases.iter().filter(|case| {
            let mnemonic = case.text.split(' ').next().unwrap_or("");
            prefixes.contains(&mnemonic)
        });
        for case in selected {
            let mut mismatches = 0;
            for _ in 0..rounds {
                let regs = draw(case, &mut rng);
                let flags_in = (super::low32(rng.next()) & STATUS) | 0x2;
                let mut cpu = cpu();
                cpu.gpr[..3].copy_from_slice(&regs);
                cpu.eflags = flags_in;
                let result = run(&mut cpu, &mut machine, case.bytes);
                if case.draw == Draw::Divide
                    && divide_faults(case.text.starts_with("idiv"), case.size, regs)
                {
                    assert_eq!(
                        result,
                        Err(Stop::Exception(Exception::de())),
                        "{} with {regs:08x?}",
                        case.text
                    );
                    continue;
                }
                assert!(result.is_ok(), "{} with {regs:08x?}: {result:?}", case.text);
                let (native, native_flags) =
                    (case.native)(regs.map(u64::from), u64::from(flags_in));
                let native = native.map(super::low32);
                // The emulator gives the undefined results an Intel
                // processor gives; another host's are not compared.
                let (undefined_flags, result_undefined) = if host_is_intel() {
                    (0, false)
                } else {
                    undefined(case, regs)
                };
                let native_flags = super::low32(native_flags) & STATUS & !undefined_flags;
                let emulated_flags = cpu.eflags & STATUS & !undefined_flags;
                if (!result_undefined && native != cpu.gpr[..3]) || native_flags != emulated_flags {
                    mismatches += 1;
                    if mismatches <= 4 {
                        failures.push(format!(
                            "{}: regs {regs:08x?} flags {flags_in:03x}: host {native:08x?} \
                             {native_flags:03x}, emulator {:08x?} {emulated_flags:03x} \
                             (differing flags {:03x})",
                            case.text,
                            &cpu.gpr[..3],
                            native_flags ^ emulated_flags,
                        ));
                    }
                }
            }
            if mismatches > 4 {
                failures.push(format!("{}: {mismatches} mismatches in all", case.text));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Draws per instruction form.
    const ROUNDS: usize = 3000;

    #[test]
    fn arithmetic_and_logic_match_the_host() {
        compare(
            &[
                "add", "or", "adc", "sbb", "and", "sub", "xor", "cmp", "test", "inc", "dec", "not",
                "neg",
            ],
            ROUNDS,
        );
    }

    #[test]
    fn shifts_and_rotates_match_the_host() {
        compare(
            &[
                "rol", "ror", "rcl", "rcr", "shl", "shr", "sar", "shld", "shrd",
            ],
            ROUNDS,
        );
    }

    #[test]
    fn multiplication_and_division_match_the_host() {
        compare(&["mul", "imul", "div", "idiv"], ROUNDS);
    }

    #[test]
    fn bit_tests_and_scans_match_the_host() {
        compare(&["bt", "bts", "btr", "btc", "bsf", "bsr"], ROUNDS);
    }
}
