//! Arithmetic-flag computation shared by the instruction families: the
//! status flags (CF, PF, AF, ZF, SF, OF) of additions, subtractions,
//! logical operations, INC/DEC/NEG, and the evaluation of the condition
//! codes of Jcc, SETcc, CMOVcc and LOOPcc from EFLAGS.
//!
//! Every function takes operands already masked to the operand size
//! (`size` in bytes: 1, 2 or 4) or masks them itself, and returns the new
//! status flags as EFLAGS bits; [`update`] merges them into EFLAGS.

use iced_x86::ConditionCode;

use crate::cpu::Eflags;

use super::{mask, sign_bit};

/// The six status flags.
pub(crate) const STATUS: u32 =
    Eflags::CF | Eflags::PF | Eflags::AF | Eflags::ZF | Eflags::SF | Eflags::OF;

/// The flags LAHF reads and SAHF writes: SF, ZF, AF, PF, CF.
pub(crate) const LAHF_FLAGS: u32 = Eflags::SF | Eflags::ZF | Eflags::AF | Eflags::PF | Eflags::CF;

/// `bit` if `condition` holds, else 0.
#[must_use]
pub(crate) const fn flag(condition: bool, bit: u32) -> u32 {
    if condition { bit } else { 0 }
}

/// Whether the low byte of `value` has an even number of set bits (PF).
#[must_use]
pub(crate) const fn parity(value: u32) -> bool {
    (value & 0xff).count_ones().is_multiple_of(2)
}

/// SF, ZF and PF of a `size`-byte result.
#[must_use]
pub(crate) const fn szp(result: u32, size: u32) -> u32 {
    let result = result & mask(size);
    flag(result & sign_bit(size) != 0, Eflags::SF)
        | flag(result == 0, Eflags::ZF)
        | flag(parity(result), Eflags::PF)
}

/// Replaces the bits `which` of `eflags` with those of `new`.
pub(crate) fn update(eflags: &mut u32, which: u32, new: u32) {
    *eflags = (*eflags & !which) | (new & which);
}

/// `a + b + carry` on `size` bytes: the result and all six status flags.
#[must_use]
pub(crate) const fn add(a: u32, b: u32, carry: bool, size: u32) -> (u32, u32) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let carry = carry as u32;
    let result = a.wrapping_add(b).wrapping_add(carry) & m;
    let wide = a as u64 + b as u64 + carry as u64;
    let flags = szp(result, size)
        | flag(wide > m as u64, Eflags::CF)
        | flag((a ^ b ^ result) & 0x10 != 0, Eflags::AF)
        | flag(
            (a ^ result) & (b ^ result) & sign_bit(size) != 0,
            Eflags::OF,
        );
    (result, flags)
}

/// `a - b - borrow` on `size` bytes: the result and all six status flags
/// (CMP, SUB, SBB, NEG, CMPS, SCAS, CMPXCHG).
#[must_use]
pub(crate) const fn sub(a: u32, b: u32, borrow: bool, size: u32) -> (u32, u32) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let borrow = borrow as u32;
    let result = a.wrapping_sub(b).wrapping_sub(borrow) & m;
    let flags = szp(result, size)
        | flag((a as u64) < b as u64 + borrow as u64, Eflags::CF)
        | flag((a ^ b ^ result) & 0x10 != 0, Eflags::AF)
        | flag((a ^ b) & (a ^ result) & sign_bit(size) != 0, Eflags::OF);
    (result, flags)
}

/// The status flags of AND, OR, XOR and TEST: CF = OF = 0, SF/ZF/PF from
/// the result. AF is undefined; Intel processors clear it (checked by the
/// differential test in `alu`), and so do we.
#[must_use]
pub(crate) const fn logic(result: u32, size: u32) -> u32 {
    szp(result, size)
}

/// INC: `a + 1` with CF kept from `eflags`.
#[must_use]
pub(crate) const fn inc(a: u32, size: u32, eflags: u32) -> (u32, u32) {
    let (result, flags) = add(a, 1, false, size);
    (result, (flags & !Eflags::CF) | (eflags & Eflags::CF))
}

/// DEC: `a - 1` with CF kept from `eflags`.
#[must_use]
pub(crate) const fn dec(a: u32, size: u32, eflags: u32) -> (u32, u32) {
    let (result, flags) = sub(a, 1, false, size);
    (result, (flags & !Eflags::CF) | (eflags & Eflags::CF))
}

/// NEG: `0 - a`; CF is set unless `a` is 0.
#[must_use]
pub(crate) const fn neg(a: u32, size: u32) -> (u32, u32) {
    sub(0, a, false, size)
}

/// Whether condition `cc` holds for `eflags` (Jcc, SETcc, CMOVcc). The
/// absence of a condition holds.
#[must_use]
pub(crate) fn condition(cc: ConditionCode, eflags: u32) -> bool {
    let cf = eflags & Eflags::CF != 0;
    let zf = eflags & Eflags::ZF != 0;
    let sf = eflags & Eflags::SF != 0;
    let of = eflags & Eflags::OF != 0;
    let pf = eflags & Eflags::PF != 0;
    match cc {
        ConditionCode::None => true,
        ConditionCode::o => of,
        ConditionCode::no => !of,
        ConditionCode::b => cf,
        ConditionCode::ae => !cf,
        ConditionCode::e => zf,
        ConditionCode::ne => !zf,
        ConditionCode::be => cf || zf,
        ConditionCode::a => !cf && !zf,
        ConditionCode::s => sf,
        ConditionCode::ns => !sf,
        ConditionCode::p => pf,
        ConditionCode::np => !pf,
        ConditionCode::l => sf != of,
        ConditionCode::ge => sf == of,
        ConditionCode::le => zf || sf != of,
        ConditionCode::g => !zf && sf == of,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CF: u32 = Eflags::CF;
    const PF: u32 = Eflags::PF;
    const AF: u32 = Eflags::AF;
    const ZF: u32 = Eflags::ZF;
    const SF: u32 = Eflags::SF;
    const OF: u32 = Eflags::OF;

    #[test]
    fn parity_counts_the_low_byte_only() {
        assert!(parity(0));
        assert!(parity(0x03));
        assert!(!parity(0x01));
        assert!(parity(0x100)); // bit 8 is not looked at
        assert!(!parity(0xff_fe));
    }

    #[test]
    fn add_flags_in_every_size() {
        assert_eq!(add(0x7f, 1, false, 1), (0x80, SF | AF | OF));
        assert_eq!(add(0xff, 1, false, 1), (0, CF | ZF | AF | PF));
        assert_eq!(add(0xff, 0, true, 1), (0, CF | ZF | AF | PF));
        assert_eq!(add(0x7fff, 1, false, 2), (0x8000, SF | AF | OF | PF));
        assert_eq!(
            add(0xffff_ffff, 0xffff_ffff, true, 4),
            (0xffff_ffff, CF | SF | AF | PF)
        );
        assert_eq!(
            add(0x8000_0000, 0x8000_0000, false, 4),
            (0, CF | ZF | OF | PF)
        );
    }

    #[test]
    fn sub_flags_in_every_size() {
        assert_eq!(sub(0, 1, false, 1), (0xff, CF | SF | AF | PF));
        assert_eq!(sub(0x80, 1, false, 1), (0x7f, AF | OF));
        assert_eq!(sub(5, 5, false, 2), (0, ZF | PF));
        assert_eq!(sub(5, 4, true, 4), (0, ZF | PF));
        assert_eq!(sub(5, 5, true, 4), (0xffff_ffff, CF | SF | AF | PF));
        assert_eq!(sub(0x8000_0000, 1, false, 4), (0x7fff_ffff, AF | OF | PF));
    }

    #[test]
    fn inc_dec_keep_carry_and_neg_sets_it() {
        assert_eq!(inc(0xff, 1, CF), (0, CF | ZF | AF | PF));
        assert_eq!(inc(0xff, 1, 0), (0, ZF | AF | PF));
        assert_eq!(dec(0, 2, 0), (0xffff, SF | AF | PF));
        assert_eq!(dec(1, 4, CF), (0, CF | ZF | PF));
        assert_eq!(neg(0, 4), (0, ZF | PF));
        assert_eq!(neg(1, 1), (0xff, CF | SF | AF | PF));
        assert_eq!(neg(0x80, 1), (0x80, CF | SF | OF));
    }

    #[test]
    fn conditions_follow_the_sdm_table() {
        use ConditionCode as C;
        assert!(condition(C::a, 0) && !condition(C::a, CF) && !condition(C::a, ZF));
        assert!(condition(C::be, ZF) && condition(C::be, CF) && !condition(C::be, 0));
        assert!(condition(C::l, SF) && condition(C::l, OF) && !condition(C::l, SF | OF));
        assert!(condition(C::ge, SF | OF) && !condition(C::ge, OF));
        assert!(condition(C::le, ZF) && condition(C::le, SF) && !condition(C::le, SF | OF));
        assert!(condition(C::g, 0) && !condition(C::g, ZF | SF | OF));
        assert!(condition(C::p, PF) && condition(C::np, 0));
        assert!(condition(C::o, OF) && condition(C::no, 0));
        assert!(condition(C::s, SF) && condition(C::ns, 0));
        assert!(condition(C::e, ZF) && condition(C::ne, 0));
        assert!(condition(C::b, CF) && condition(C::ae, 0));
        assert!(condition(C::None, 0));
    }
}
