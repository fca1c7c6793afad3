//! Shadow segment descriptors: how a guest code or data descriptor is
//! expressed in the host LDT, where `modify_ldt` lets us put DPL-3 code and
//! data segments only.
//!
//! The host LDT holds two kinds of entries:
//!
//! - **Register slots** ([`slot_selector`]): one per segment register. When
//!   the monitor loads a guest segment register it writes the guest's
//!   descriptor (the hidden part the CPU caches) into that register's slot
//!   and loads the slot's selector. A later change to the guest's GDT does
//!   not touch a loaded register, exactly as on hardware.
//! - **Guest LDT shadows** (index j for guest LDT entry j below
//!   [`FIRST_SLOT`]): guest user code loads LDT selectors natively, and they
//!   must find the guest's descriptors there.
//!
//! Guest GDT selectors loaded natively by untraced guest user code refer to
//! the host GDT instead (DESIGN.md section 2, selector collisions); the
//! monitor repairs them when it next sees the context.

use btvmm_core::descriptor::{Descriptor, TYPE_EXPAND_DOWN_CONFORMING, TYPE_WRITABLE_READABLE};

pub use btvmm_core::world::ldt_layout::{FIRST_SLOT, slot_of, slot_selector};

/// A host LDT entry as `modify_ldt` takes it (`struct user_desc`, without
/// the entry number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LdtEntry {
    /// Segment base.
    pub base: u32,
    /// Raw 20-bit limit.
    pub limit: u32,
    /// 32-bit segment (D/B).
    pub seg_32bit: bool,
    /// 0 data, 1 expand-down data, 2 code (conforming code is made
    /// non-conforming: Linux refuses present conforming segments, and with
    /// every shadow at DPL 3 the difference does not show at host CPL 3).
    pub contents: u8,
    /// Read-only data or execute-only code.
    pub read_exec_only: bool,
    /// Limit in 4 KiB units.
    pub limit_in_pages: bool,
    /// Not present.
    pub not_present: bool,
    /// AVL.
    pub useable: bool,
}

impl LdtEntry {
    /// An empty entry: loading its selector faults.
    pub const EMPTY: LdtEntry = LdtEntry {
        base: 0,
        limit: 0,
        seg_32bit: false,
        contents: 0,
        read_exec_only: true,
        limit_in_pages: false,
        not_present: true,
        useable: false,
    };

    /// The shadow of a guest descriptor, or `None` for a system descriptor
    /// (TSS, LDT, gates), which has no place in a data or code register.
    #[must_use]
    pub fn shadow(guest: &Descriptor) -> Option<LdtEntry> {
        if !guest.code_or_data {
            return None;
        }
        let raw_limit = if guest.granular {
            guest.limit >> 12
        } else {
            guest.limit
        } & 0xf_ffff;
        let (contents, read_exec_only) = if guest.is_code() {
            (2, guest.kind & TYPE_WRITABLE_READABLE == 0)
        } else {
            let expand_down = guest.kind & TYPE_EXPAND_DOWN_CONFORMING != 0;
            (
                u8::from(expand_down),
                guest.kind & TYPE_WRITABLE_READABLE == 0,
            )
        };
        Some(LdtEntry {
            base: guest.base,
            limit: raw_limit,
            seg_32bit: guest.big,
            contents,
            read_exec_only,
            limit_in_pages: guest.granular,
            not_present: !guest.present,
            useable: guest.available,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_kernel_segments_shadow_as_flat_ldt_segments() {
        let code = LdtEntry::shadow(&Descriptor::from_raw(0x00cf_9a00_0000_ffff)).expect("code");
        assert_eq!(
            code,
            LdtEntry {
                base: 0,
                limit: 0xf_ffff,
                seg_32bit: true,
                contents: 2,
                read_exec_only: false,
                limit_in_pages: true,
                not_present: false,
                useable: false,
            }
        );
        let data = LdtEntry::shadow(&Descriptor::from_raw(0x00cf_9200_0000_ffff)).expect("data");
        assert_eq!(data.contents, 0);
        assert!(!data.read_exec_only);
        // Execute-only code, read-only data, expand-down, not present.
        assert!(
            LdtEntry::shadow(&Descriptor::from_raw(0x00cf_9800_0000_ffff))
                .expect("x")
                .read_exec_only
        );
        assert!(
            LdtEntry::shadow(&Descriptor::from_raw(0x00cf_9000_0000_ffff))
                .expect("r")
                .read_exec_only
        );
        assert_eq!(
            LdtEntry::shadow(&Descriptor::from_raw(0x00cf_9600_0000_ffff))
                .expect("d")
                .contents,
            1
        );
        assert!(
            LdtEntry::shadow(&Descriptor::from_raw(0x00cf_1200_0000_ffff))
                .expect("np")
                .not_present
        );
        // Conforming code becomes plain code.
        assert_eq!(
            LdtEntry::shadow(&Descriptor::from_raw(0x00cf_9e00_0000_ffff))
                .expect("c")
                .contents,
            2
        );
        // A TSS has no shadow.
        assert_eq!(
            LdtEntry::shadow(&Descriptor::from_raw(0x0000_8900_4000_0067)),
            None
        );
    }

    #[test]
    fn byte_granular_limits_and_bases() {
        let entry = LdtEntry::shadow(&Descriptor::from_raw(0x0040_9212_3456_0fff)).expect("data");
        assert_eq!(
            (entry.base, entry.limit, entry.limit_in_pages),
            (0x0012_3456, 0xfff, false)
        );
    }
}
