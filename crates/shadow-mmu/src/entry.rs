//! Paging-structure entry formats (Intel SDM vol. 3, 4.3, tables 4-4 to
//! 4-6), kept apart from the walk loop so that PAE's 64-bit entries can be
//! added as another format. Entries are held as `u64` for that reason; a
//! 32-bit entry simply has its upper half zero.

/// Present.
pub const P: u64 = 1 << 0;
/// Read/write: writes allowed through this entry when set.
pub const RW: u64 = 1 << 1;
/// User/supervisor: user-mode accesses allowed through this entry when set.
pub const US: u64 = 1 << 2;
/// Accessed: set by the walk whenever the entry is used for a translation.
pub const A: u64 = 1 << 5;
/// Dirty: set in the entry that maps the page (the leaf) on a write.
pub const D: u64 = 1 << 6;
/// Page size: in a PDE with CR4.PSE=1, the entry maps a 4 MiB page.
pub const PS: u64 = 1 << 7;
/// Global: the leaf's translation survives CR3 loads when CR4.PGE=1.
pub const G: u64 = 1 << 8;

/// Frame of a 4 KiB page or of a page table, in a 32-bit entry.
pub const FRAME_4K_32: u64 = 0xffff_f000;
/// Frame of a 4 MiB page, in a 32-bit PDE with PS=1.
pub const FRAME_4M_32: u64 = 0xffc0_0000;
/// Bits 21:13 of a 32-bit 4 MiB PDE. With PSE-36 they would carry physical
/// address bits 39:32; btvmm offers no PSE-36 (MAXPHYADDR is 32), and the
/// SDM (table 4-4, bits 21:(M-19)) then makes them reserved: a set bit is a
/// reserved-bit #PF. Bit 12 is PAT and stays legal.
pub const RESERVED_4M_32: u64 = 0x003f_e000;

/// One paging-structure entry, whatever its level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry(pub u64);

impl Entry {
    /// Whether the entry is present (P=1). Every other bit of a non-present
    /// entry is ignored by the hardware, reserved bits included.
    #[must_use]
    pub const fn present(self) -> bool {
        self.0 & P != 0
    }

    /// Whether the entry allows writes (R/W=1).
    #[must_use]
    pub const fn writable(self) -> bool {
        self.0 & RW != 0
    }

    /// Whether the entry allows user-mode accesses (U/S=1).
    #[must_use]
    pub const fn user(self) -> bool {
        self.0 & US != 0
    }

    /// The Accessed bit.
    #[must_use]
    pub const fn accessed(self) -> bool {
        self.0 & A != 0
    }

    /// The Dirty bit; meaningful only in a leaf.
    #[must_use]
    pub const fn dirty(self) -> bool {
        self.0 & D != 0
    }

    /// The PS bit as stored; whether it counts depends on the level and on
    /// CR4.PSE, which the walk decides.
    #[must_use]
    pub const fn page_size_bit(self) -> bool {
        self.0 & PS != 0
    }

    /// The Global bit; meaningful only in a leaf.
    #[must_use]
    pub const fn global(self) -> bool {
        self.0 & G != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_their_own_bits() {
        let entry = Entry(0x1234_5167);
        assert!(entry.present() && entry.writable() && entry.user());
        assert!(entry.accessed() && entry.dirty() && entry.global());
        assert!(!entry.page_size_bit());
    }

    #[test]
    fn reserved_4m_bits_are_21_to_13() {
        let bits: Vec<u32> = (0..32)
            .filter(|bit| RESERVED_4M_32 & (1 << bit) != 0)
            .collect();
        assert_eq!(bits, (13..=21).collect::<Vec<u32>>());
    }
}
