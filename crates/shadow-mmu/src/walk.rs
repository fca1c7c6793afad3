//! Software walk of the guest's page tables (Intel SDM vol. 3, 4.3 for the
//! formats, 4.6 for access rights, 4.7 for the #PF error code, 4.8 for the
//! Accessed and Dirty bits).
//!
//! Only 32-bit 2-level paging exists today, with 4 MiB pages when CR4.PSE=1.
//! The loop is driven by a per-mode table of levels ([`PagingMode`]) and the
//! entry bits live in [`crate::entry`], so PAE becomes one more mode with
//! three levels and 8-byte entries rather than a second walker.
//!
//! Not modelled, because btvmm does not offer them to the guest: NX (needs
//! PAE), SMEP, SMAP, protection keys, PSE-36. Their absence fixes two error
//! code bits: I/D (bit 4) is set only when NX or SMEP is enabled, so it is
//! always 0 here even for instruction fetches, and RSVD (bit 3) can only come
//! from bits 21:13 of a 4 MiB PDE (see [`crate::entry::RESERVED_4M_32`]).

use btvmm_core::{Cr0, Exception, GuestPhys, GuestVirt, PAGE_SIZE};

use crate::entry::{self, Entry};
use crate::{PhysMemory, ShadowError};

/// CR4.PSE: 4 MiB pages in 32-bit paging.
const CR4_PSE: u32 = 1 << 4;

/// Most levels any supported mode walks (PAE will need 3).
const MAX_LEVELS: usize = 3;

/// How the guest's paging structures are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PagingMode {
    /// 32-bit paging: a page directory of 1024 4-byte PDEs, page tables of
    /// 1024 4-byte PTEs; 4 MiB pages when CR4.PSE=1 and PDE.PS=1.
    TwoLevel,
}

/// Which paging structure an entry belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TableLevel {
    /// The root structure CR3 points to (the page directory).
    Directory,
    /// A page table, reached through a PDE.
    Table,
}

/// One level of a mode's walk.
struct LevelFormat {
    level: TableLevel,
    /// Lowest guest-virtual bit of this level's index.
    index_shift: u32,
    /// Mask of the index once shifted down.
    index_mask: u32,
    entry_bytes: u32,
    /// The page an entry of this level maps when it is a leaf before the
    /// last level (PS=1), if the level can be one.
    large_page: Option<PageSize>,
}

const TWO_LEVEL: [LevelFormat; 2] = [
    LevelFormat {
        level: TableLevel::Directory,
        index_shift: 22,
        index_mask: 0x3ff,
        entry_bytes: 4,
        large_page: Some(PageSize::Size4M),
    },
    LevelFormat {
        level: TableLevel::Table,
        index_shift: 12,
        index_mask: 0x3ff,
        entry_bytes: 4,
        large_page: None,
    },
];

impl PagingMode {
    fn levels(self) -> &'static [LevelFormat] {
        match self {
            Self::TwoLevel => &TWO_LEVEL,
        }
    }

    /// Where the root structure (the page directory) lies for `cr3`; the
    /// low CR3 bits are PCD/PWT and ignored ones, not address bits.
    #[must_use]
    pub const fn root(self, cr3: u32) -> GuestPhys {
        match self {
            Self::TwoLevel => GuestPhys(cr3 & !(PAGE_SIZE - 1)),
        }
    }

    fn read_entry<M: PhysMemory + ?Sized>(
        self,
        mem: &M,
        entry_guest_phys: GuestPhys,
    ) -> Result<Entry, ShadowError> {
        match self {
            Self::TwoLevel => Ok(Entry(u64::from(mem.read_u32(entry_guest_phys)?))),
        }
    }

    fn write_entry<M: PhysMemory + ?Sized>(
        self,
        mem: &mut M,
        entry_guest_phys: GuestPhys,
        entry: Entry,
    ) -> Result<(), ShadowError> {
        match self {
            Self::TwoLevel => {
                let raw = u32::try_from(entry.0 & 0xffff_ffff).unwrap_or(u32::MAX);
                Ok(mem.write_u32(entry_guest_phys, raw)?)
            }
        }
    }

    /// Whether `entry` (present) ends the walk at a level that may map a
    /// large page. In 32-bit paging PS counts only with CR4.PSE=1; with
    /// PSE=0 the bit is ignored and the PDE points to a page table.
    fn maps_large(self, format: &LevelFormat, entry: Entry, regs: PagingRegs) -> bool {
        match self {
            Self::TwoLevel => format.large_page.is_some() && regs.cr4_pse && entry.page_size_bit(),
        }
    }

    fn reserved_bits(self, format: &LevelFormat, large: bool) -> u64 {
        match (self, format.level, large) {
            (Self::TwoLevel, TableLevel::Directory, true) => entry::RESERVED_4M_32,
            (Self::TwoLevel, _, _) => 0,
        }
    }

    fn frame(self, entry: Entry, page_size: PageSize) -> u64 {
        match (self, page_size) {
            (Self::TwoLevel, PageSize::Size4K) => entry.0 & entry::FRAME_4K_32,
            (Self::TwoLevel, PageSize::Size4M) => entry.0 & entry::FRAME_4M_32,
        }
    }
}

/// The paging state a walk depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PagingRegs {
    /// The guest's CR3 (page-directory base plus PCD/PWT).
    pub cr3: u32,
    /// CR0.WP: supervisor writes honour R/W=0.
    pub cr0_wp: bool,
    /// CR4.PSE: PDEs with PS=1 map 4 MiB pages.
    pub cr4_pse: bool,
}

impl PagingRegs {
    /// The paging state named by the guest's control registers.
    #[must_use]
    pub const fn from_control_registers(cr0: u32, cr3: u32, cr4: u32) -> Self {
        Self {
            cr3,
            cr0_wp: cr0 & Cr0::WP != 0,
            cr4_pse: cr4 & CR4_PSE != 0,
        }
    }

    /// The paging mode these registers select (only 32-bit paging so far;
    /// CR4.PAE will choose PAE here).
    #[must_use]
    pub const fn mode(self) -> PagingMode {
        PagingMode::TwoLevel
    }
}

/// A memory access as paging judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    /// A write (otherwise a read or a fetch).
    pub write: bool,
    /// A user-mode access: CPL 3 and not an implicit supervisor access such
    /// as a descriptor-table read.
    pub user: bool,
    /// An instruction fetch. Without NX a fetch needs the same rights as a
    /// read and leaves the I/D error-code bit 0; the flag is kept so that
    /// PAE with NX can use it.
    pub fetch: bool,
}

impl Access {
    /// A data read.
    #[must_use]
    pub const fn read(user: bool) -> Self {
        Self {
            write: false,
            user,
            fetch: false,
        }
    }

    /// A data write.
    #[must_use]
    pub const fn write(user: bool) -> Self {
        Self {
            write: true,
            user,
            fetch: false,
        }
    }

    /// An instruction fetch.
    #[must_use]
    pub const fn fetch(user: bool) -> Self {
        Self {
            write: false,
            user,
            fetch: true,
        }
    }
}

impl From<btvmm_core::Access> for Access {
    fn from(access: btvmm_core::Access) -> Self {
        use btvmm_core::AccessKind;
        match access.kind {
            AccessKind::Read => Self::read(access.user),
            AccessKind::Write => Self::write(access.user),
            AccessKind::Execute => Self::fetch(access.user),
        }
    }
}

/// A #PF the guest must receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageFault {
    /// The linear address that faulted, for CR2.
    pub cr2: GuestVirt,
    /// The error code exactly as the hardware pushes it.
    pub error_code: u32,
}

impl PageFault {
    /// Error code bit 0: the page was present (protection or reserved-bit
    /// violation); clear for a not-present entry.
    pub const PRESENT: u32 = 1 << 0;
    /// Error code bit 1: the access was a write.
    pub const WRITE: u32 = 1 << 1;
    /// Error code bit 2: the access was a user-mode access.
    pub const USER: u32 = 1 << 2;
    /// Error code bit 3: a reserved bit was set in a paging-structure entry.
    pub const RESERVED: u32 = 1 << 3;
    /// Error code bit 4: instruction fetch; never set here (no NX, no SMEP).
    pub const FETCH: u32 = 1 << 4;

    fn new(cr2: GuestVirt, access: Access, cause: u32) -> Self {
        let mut error_code = cause;
        if access.write {
            error_code |= Self::WRITE;
        }
        if access.user {
            error_code |= Self::USER;
        }
        Self { cr2, error_code }
    }

    /// The exception to inject.
    #[must_use]
    pub const fn to_exception(self) -> Exception {
        Exception::page_fault(self.cr2.0, self.error_code)
    }
}

/// Size of the page a translation lands in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageSize {
    /// A 4 KiB page mapped by a PTE.
    Size4K,
    /// A 4 MiB page mapped by a PDE with PS=1 (CR4.PSE=1).
    Size4M,
}

impl PageSize {
    /// The page size in bytes.
    #[must_use]
    pub const fn bytes(self) -> u32 {
        match self {
            Self::Size4K => PAGE_SIZE,
            Self::Size4M => 4 << 20,
        }
    }

    /// The page size in 4 KiB pages.
    #[must_use]
    pub const fn pages(self) -> u32 {
        self.bytes() / PAGE_SIZE
    }
}

/// One paging-structure entry a walk read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntryRef {
    /// The structure it belongs to.
    pub level: TableLevel,
    /// Where the entry itself lies.
    pub entry_guest_phys: GuestPhys,
    /// Its value when the walk read it (or after the update, for
    /// [`walk_and_update`]).
    pub entry: Entry,
}

/// The entries a walk went through, root first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct WalkPath {
    entries: [Option<EntryRef>; MAX_LEVELS],
}

impl WalkPath {
    fn push(&mut self, entry_ref: EntryRef) {
        if let Some(slot) = self.entries.iter_mut().find(|slot| slot.is_none()) {
            *slot = Some(entry_ref);
        }
    }

    /// The entries, root first.
    pub fn entries(&self) -> impl Iterator<Item = &EntryRef> {
        self.entries.iter().flatten()
    }

    /// The entry at `level`, if the walk used one.
    #[must_use]
    pub fn at(&self, level: TableLevel) -> Option<&EntryRef> {
        self.entries().find(|entry_ref| entry_ref.level == level)
    }

    /// The entry that maps the page (the last one read).
    #[must_use]
    pub fn leaf(&self) -> Option<&EntryRef> {
        self.entries().last()
    }
}

/// An Accessed/Dirty update the hardware would make after a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AdUpdate {
    /// The entry to update.
    pub entry_guest_phys: GuestPhys,
    /// The bits to set in it ([`entry::A`], [`entry::D`]).
    pub set_bits: u64,
}

/// A successful walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Translation {
    /// The address translated.
    pub guest_virt: GuestVirt,
    /// Where it lands.
    pub guest_phys: GuestPhys,
    /// The size of the guest page it lies in.
    pub page_size: PageSize,
    /// R/W of every entry on the path ANDed: what the tables allow user
    /// writes (and supervisor writes with CR0.WP=1).
    pub writable: bool,
    /// U/S of every entry on the path ANDed.
    pub user: bool,
    /// The leaf's Accessed bit as guest memory holds it.
    pub accessed: bool,
    /// The leaf's Dirty bit as guest memory holds it.
    pub dirty: bool,
    /// The leaf's Global bit.
    pub global: bool,
    /// The entries read, root first.
    pub path: WalkPath,
    /// The access was a write, so the leaf needs D.
    write: bool,
}

impl Translation {
    /// The guest-physical address of the start of the guest page (4 KiB or
    /// 4 MiB) the translation lands in.
    #[must_use]
    pub const fn page_guest_phys(&self) -> GuestPhys {
        GuestPhys(self.guest_phys.0 & !(self.page_size.bytes() - 1))
    }

    /// The guest-virtual address of the start of that guest page.
    #[must_use]
    pub const fn page_guest_virt(&self) -> GuestVirt {
        GuestVirt(self.guest_virt.0 & !(self.page_size.bytes() - 1))
    }

    /// The A/D bits the hardware sets after this walk, entries that already
    /// have them left out: A in every entry of the path, D in the leaf on a
    /// write. A non-leaf PDE has no D bit to set.
    pub fn ad_updates(&self) -> impl Iterator<Item = AdUpdate> + '_ {
        let leaf_guest_phys = self.path.leaf().map(|leaf| leaf.entry_guest_phys);
        self.path.entries().filter_map(move |entry_ref| {
            let mut set_bits = entry::A;
            if self.write && Some(entry_ref.entry_guest_phys) == leaf_guest_phys {
                set_bits |= entry::D;
            }
            let missing = set_bits & !entry_ref.entry.0;
            (missing != 0).then_some(AdUpdate {
                entry_guest_phys: entry_ref.entry_guest_phys,
                set_bits: missing,
            })
        })
    }
}

/// What a walk finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WalkOutcome {
    /// The tables map the address with rights that allow the access.
    Translated(Translation),
    /// The hardware would raise this #PF.
    Fault(PageFault),
}

/// Walks the guest's tables for one access, without changing guest memory.
/// The result says which A/D bits the hardware would set
/// ([`Translation::ad_updates`]).
///
/// # Errors
///
/// [`ShadowError::Memory`] when a paging-structure entry lies outside
/// guest RAM.
pub fn walk<M: PhysMemory + ?Sized>(
    mem: &M,
    regs: PagingRegs,
    guest_virt: GuestVirt,
    access: Access,
) -> Result<WalkOutcome, ShadowError> {
    let mode = regs.mode();
    let mut table = mode.root(regs.cr3);
    let mut path = WalkPath::default();
    let mut writable = true;
    let mut user = true;
    let levels = mode.levels();
    for (depth, format) in levels.iter().enumerate() {
        let index = (guest_virt.0 >> format.index_shift) & format.index_mask;
        let entry_guest_phys = table.offset(index * format.entry_bytes);
        let entry = mode.read_entry(mem, entry_guest_phys)?;
        path.push(EntryRef {
            level: format.level,
            entry_guest_phys,
            entry,
        });
        if !entry.present() {
            return Ok(WalkOutcome::Fault(PageFault::new(guest_virt, access, 0)));
        }
        let large = mode.maps_large(format, entry, regs);
        if entry.0 & mode.reserved_bits(format, large) != 0 {
            return Ok(WalkOutcome::Fault(PageFault::new(
                guest_virt,
                access,
                PageFault::PRESENT | PageFault::RESERVED,
            )));
        }
        writable &= entry.writable();
        user &= entry.user();
        let page_size = match format.large_page {
            Some(size) if large => size,
            _ if depth + 1 == levels.len() => PageSize::Size4K,
            _ => {
                table = GuestPhys(low_u32(mode.frame(entry, PageSize::Size4K)));
                continue;
            }
        };
        if !allowed(access, writable, user, regs.cr0_wp) {
            return Ok(WalkOutcome::Fault(PageFault::new(
                guest_virt,
                access,
                PageFault::PRESENT,
            )));
        }
        let frame = low_u32(mode.frame(entry, page_size));
        return Ok(WalkOutcome::Translated(Translation {
            guest_virt,
            guest_phys: GuestPhys(frame | (guest_virt.0 & (page_size.bytes() - 1))),
            page_size,
            writable,
            user,
            accessed: entry.accessed(),
            dirty: entry.dirty(),
            global: entry.global(),
            path,
            write: access.write,
        }));
    }
    unreachable!("the last level of every paging mode maps a page")
}

/// [`walk`], then the A/D updates written back as the hardware does them:
/// A in every entry of the path, D in the leaf on a write, and nothing at all
/// when the walk faults. (Hardware may already set A in a PDE whose page
/// table then holds a not-present PTE; the SDM allows either, and setting A
/// only on success keeps a faulting walk free of side effects.) Each entry
/// is re-read just before its update, so a page directory that maps itself
/// (PDE and PTE the same entry) ends up with both bits.
///
/// The returned translation shows the entries as they are after the update.
///
/// # Errors
///
/// [`ShadowError::Memory`] when a paging-structure entry lies outside
/// guest RAM.
pub fn walk_and_update<M: PhysMemory + ?Sized>(
    mem: &mut M,
    regs: PagingRegs,
    guest_virt: GuestVirt,
    access: Access,
) -> Result<WalkOutcome, ShadowError> {
    let mode = regs.mode();
    let outcome = walk(mem, regs, guest_virt, access)?;
    let WalkOutcome::Translated(mut translation) = outcome else {
        return Ok(outcome);
    };
    let mut updates = [None; MAX_LEVELS];
    for (slot, update) in updates.iter_mut().zip(translation.ad_updates()) {
        *slot = Some(update);
    }
    for update in updates.into_iter().flatten() {
        let current = mode.read_entry(mem, update.entry_guest_phys)?;
        mode.write_entry(
            mem,
            update.entry_guest_phys,
            Entry(current.0 | update.set_bits),
        )?;
    }
    for entry_ref in translation.path.entries.iter_mut().flatten() {
        entry_ref.entry = mode.read_entry(mem, entry_ref.entry_guest_phys)?;
    }
    if let Some(leaf) = translation.path.leaf() {
        translation.accessed = leaf.entry.accessed();
        translation.dirty = leaf.entry.dirty();
    }
    Ok(WalkOutcome::Translated(translation))
}

/// The access-rights rule of SDM 4.6 without SMEP/SMAP/NX: user accesses
/// need U/S=1 on the whole path and, to write, R/W=1 on the whole path;
/// supervisor reads (and fetches) always pass; supervisor writes need R/W=1
/// only when CR0.WP=1.
const fn allowed(access: Access, writable: bool, user: bool, cr0_wp: bool) -> bool {
    if access.user {
        user && (!access.write || writable)
    } else {
        !access.write || writable || !cr0_wp
    }
}

/// Frames of 32-bit entries fit in 32 bits by construction of the masks.
fn low_u32(value: u64) -> u32 {
    u32::try_from(value & 0xffff_ffff).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::testing::{A, D, DIR, P, PS, RW, US, map_4k, pde_at, pte_at, read, write};
    use btvmm_core::VecPhysMemory;

    const TABLE: u32 = 0x3000;
    const RAM: usize = 1 << 20;

    fn regs(cr0_wp: bool, cr4_pse: bool) -> PagingRegs {
        PagingRegs {
            cr3: DIR,
            cr0_wp,
            cr4_pse,
        }
    }

    fn translated(outcome: Result<WalkOutcome, ShadowError>) -> Translation {
        match outcome {
            Ok(WalkOutcome::Translated(translation)) => translation,
            other => panic!("expected a translation, got {other:?}"),
        }
    }

    fn fault(outcome: Result<WalkOutcome, ShadowError>) -> PageFault {
        match outcome {
            Ok(WalkOutcome::Fault(page_fault)) => page_fault,
            other => panic!("expected a fault, got {other:?}"),
        }
    }

    /// What the SDM says one access does, written from its rules (4.3, 4.6,
    /// 4.7) independently of the walker: `None` when a paging-structure entry
    /// lies outside RAM, else the guest-physical address or the error code.
    fn reference(
        ram: &[u8],
        cr3: u32,
        wp: bool,
        pse: bool,
        guest_virt: u32,
        access: Access,
    ) -> Option<Result<u32, u32>> {
        let read_entry = |at: u32| -> Option<u32> {
            let at = usize::try_from(at).ok()?;
            let bytes = ram.get(at..at.checked_add(4)?)?;
            Some(u32::from_le_bytes(bytes.try_into().ok()?))
        };
        let w_bit = if access.write { 2 } else { 0 };
        let u_bit = if access.user { 4 } else { 0 };
        let not_present = Err(w_bit | u_bit);
        let protection = Err(1 | w_bit | u_bit);
        let reserved = Err(1 | 8 | w_bit | u_bit);

        let pde = read_entry((cr3 & 0xffff_f000) + (guest_virt >> 22) * 4)?;
        if pde & 1 == 0 {
            return Some(not_present);
        }
        let (rights, guest_phys) = if pse && pde & 0x80 != 0 {
            if pde & 0x003f_e000 != 0 {
                return Some(reserved);
            }
            (pde, (pde & 0xffc0_0000) | (guest_virt & 0x003f_ffff))
        } else {
            let pte = read_entry((pde & 0xffff_f000) + ((guest_virt >> 12) & 0x3ff) * 4)?;
            if pte & 1 == 0 {
                return Some(not_present);
            }
            (pde & pte, (pte & 0xffff_f000) | (guest_virt & 0xfff))
        };
        let all_rw = rights & 2 != 0;
        let all_us = rights & 4 != 0;
        // SDM 4.6, without SMEP/SMAP/NX: a fetch needs what a read needs.
        let permitted = match (access.user, access.write) {
            (false, false) => true,
            (false, true) => all_rw || !wp,
            (true, false) => all_us,
            (true, true) => all_us && all_rw,
        };
        Some(if permitted {
            Ok(guest_phys)
        } else {
            protection
        })
    }

    fn all_accesses() -> [Access; 6] {
        [
            Access::read(false),
            Access::write(false),
            Access::fetch(false),
            Access::read(true),
            Access::write(true),
            Access::fetch(true),
        ]
    }

    #[test]
    fn walks_a_4k_page() {
        let mut mem = VecPhysMemory::new(RAM);
        map_4k(
            &mut mem,
            TABLE,
            P | RW | US,
            0x0804_8123,
            0x0020_5000 | P | RW | US,
        );
        let translation = translated(walk(
            &mem,
            regs(true, true),
            GuestVirt(0x0804_8123),
            Access::read(true),
        ));
        assert_eq!(translation.guest_phys, GuestPhys(0x0020_5123));
        assert_eq!(translation.page_size, PageSize::Size4K);
        assert!(translation.writable && translation.user);
        assert!(!translation.accessed && !translation.dirty && !translation.global);
        let locations: Vec<(TableLevel, GuestPhys)> = translation
            .path
            .entries()
            .map(|entry_ref| (entry_ref.level, entry_ref.entry_guest_phys))
            .collect();
        assert_eq!(
            locations,
            [
                (TableLevel::Directory, pde_at(0x0804_8123)),
                (TableLevel::Table, pte_at(TABLE, 0x0804_8123)),
            ]
        );
    }

    #[test]
    fn walks_a_4m_page_with_pse() {
        let mut mem = VecPhysMemory::new(RAM);
        write(
            &mut mem,
            pde_at(0xc040_0000),
            0x0840_0000 | PS | P | RW | 0x100,
        );
        let translation = translated(walk(
            &mem,
            regs(true, true),
            GuestVirt(0xc07f_f00f),
            Access::write(false),
        ));
        assert_eq!(translation.guest_phys, GuestPhys(0x087f_f00f));
        assert_eq!(translation.page_size, PageSize::Size4M);
        assert_eq!(translation.page_guest_phys(), GuestPhys(0x0840_0000));
        assert_eq!(translation.page_guest_virt(), GuestVirt(0xc040_0000));
        assert!(translation.global && !translation.user);
        assert_eq!(translation.path.entries().count(), 1);
    }

    #[test]
    fn pse_off_ignores_the_ps_bit() {
        // With PSE=1 the same PDE is a 4 MiB page whose bit 13 (part of the
        // table address 0x3000) is reserved.
        let mut mem = VecPhysMemory::new(RAM);
        map_4k(&mut mem, TABLE, PS | P | RW, 0x0040_1000, 0x0009_9000 | P);
        let translation = translated(walk(
            &mem,
            regs(true, false),
            GuestVirt(0x0040_1004),
            Access::read(false),
        ));
        assert_eq!(translation.guest_phys, GuestPhys(0x0009_9004));
        assert_eq!(translation.page_size, PageSize::Size4K);
        let page_fault = fault(walk(
            &mem,
            regs(true, true),
            GuestVirt(0x0040_1004),
            Access::read(false),
        ));
        assert_eq!(
            page_fault.error_code,
            PageFault::PRESENT | PageFault::RESERVED
        );
    }

    #[test]
    fn reserved_bits_of_a_4m_pde_fault_with_rsvd() {
        for bit in 12..=21 {
            let mut mem = VecPhysMemory::new(RAM);
            write(
                &mut mem,
                pde_at(0x0080_0000),
                0x0080_0000 | (1 << bit) | PS | P | RW | US,
            );
            for access in all_accesses() {
                let outcome = walk(&mem, regs(true, true), GuestVirt(0x0080_0010), access);
                if bit == 12 {
                    // PAT: legal.
                    translated(outcome);
                    continue;
                }
                let page_fault = fault(outcome);
                let mut expected = PageFault::PRESENT | PageFault::RESERVED;
                if access.write {
                    expected |= PageFault::WRITE;
                }
                if access.user {
                    expected |= PageFault::USER;
                }
                assert_eq!(page_fault.error_code, expected, "bit {bit}, {access:?}");
                assert_eq!(page_fault.cr2, GuestVirt(0x0080_0010));
            }
        }
    }

    #[test]
    fn rights_truth_table_matches_the_sdm() {
        let guest_virt = 0x0804_8ffc;
        let mut cases = 0;
        for pde_bits in 0..8u32 {
            for pte_bits in 0..8u32 {
                let mut mem = VecPhysMemory::new(RAM);
                map_4k(
                    &mut mem,
                    TABLE,
                    pde_bits,
                    guest_virt,
                    0x0030_0000 | pte_bits,
                );
                for wp in [false, true] {
                    for access in all_accesses() {
                        let expected = reference(mem.bytes(), DIR, wp, true, guest_virt, access);
                        let actual = match walk(&mem, regs(wp, true), GuestVirt(guest_virt), access)
                        {
                            Ok(WalkOutcome::Translated(translation)) => {
                                Some(Ok(translation.guest_phys.0))
                            }
                            Ok(WalkOutcome::Fault(page_fault)) => {
                                assert_eq!(page_fault.cr2, GuestVirt(guest_virt));
                                Some(Err(page_fault.error_code))
                            }
                            Err(_) => None,
                        };
                        assert_eq!(
                            actual, expected,
                            "PDE {pde_bits:03b} PTE {pte_bits:03b} WP {wp} {access:?}"
                        );
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 8 * 8 * 2 * 6);
    }

    #[test]
    fn rights_truth_table_for_4m_pages() {
        for pde_bits in 0..8u32 {
            let mut mem = VecPhysMemory::new(RAM);
            write(&mut mem, pde_at(0x0080_0000), 0x0080_0000 | PS | pde_bits);
            for wp in [false, true] {
                for access in all_accesses() {
                    let expected = reference(mem.bytes(), DIR, wp, true, 0x0080_0000, access);
                    let actual = match walk(&mem, regs(wp, true), GuestVirt(0x0080_0000), access) {
                        Ok(WalkOutcome::Translated(translation)) => {
                            Some(Ok(translation.guest_phys.0))
                        }
                        Ok(WalkOutcome::Fault(page_fault)) => Some(Err(page_fault.error_code)),
                        Err(_) => None,
                    };
                    assert_eq!(actual, expected, "PDE {pde_bits:03b} WP {wp} {access:?}");
                }
            }
        }
    }

    #[test]
    fn known_error_codes() {
        // Spot checks of the truth table against codes from real traces.
        let mut mem = VecPhysMemory::new(RAM);
        map_4k(
            &mut mem,
            TABLE,
            P | RW | US,
            0x0804_8000,
            0x0030_0000 | P | US,
        );
        let code = |mem: &VecPhysMemory, wp, access| {
            fault(walk(mem, regs(wp, true), GuestVirt(0x0804_8000), access)).error_code
        };
        assert_eq!(code(&mem, true, Access::write(true)), 7);
        assert_eq!(code(&mem, true, Access::write(false)), 3);
        map_4k(
            &mut mem,
            TABLE,
            P | RW | US,
            0x0804_8000,
            0x0030_0000 | P | RW,
        );
        assert_eq!(code(&mem, true, Access::read(true)), 5);
        assert_eq!(
            code(&mem, true, Access::fetch(true)),
            5,
            "no I/D bit without NX"
        );
        map_4k(&mut mem, TABLE, P | RW | US, 0x0804_8000, 0);
        assert_eq!(code(&mem, false, Access::read(false)), 0);
        assert_eq!(code(&mem, false, Access::write(true)), 6);
        assert_eq!(code(&mem, false, Access::fetch(true)), 4);
    }

    #[test]
    fn pure_walk_changes_nothing() {
        let mut mem = VecPhysMemory::new(RAM);
        map_4k(
            &mut mem,
            TABLE,
            P | RW | US,
            0x0804_8000,
            0x0030_0000 | P | RW | US,
        );
        let before = mem.clone();
        let translation = translated(walk(
            &mem,
            regs(true, true),
            GuestVirt(0x0804_8000),
            Access::write(true),
        ));
        assert_eq!(mem, before);
        let updates: Vec<AdUpdate> = translation.ad_updates().collect();
        assert_eq!(
            updates,
            [
                AdUpdate {
                    entry_guest_phys: pde_at(0x0804_8000),
                    set_bits: entry::A,
                },
                AdUpdate {
                    entry_guest_phys: pte_at(TABLE, 0x0804_8000),
                    set_bits: entry::A | entry::D,
                },
            ]
        );
    }

    #[test]
    fn accessed_and_dirty_are_set_as_hardware_does() {
        let pte = 0x0030_0000 | P | RW | US;
        let mut mem = VecPhysMemory::new(RAM);
        map_4k(&mut mem, TABLE, P | RW | US, 0x0804_8000, pte);
        let translation = translated(walk_and_update(
            &mut mem,
            regs(true, true),
            GuestVirt(0x0804_8000),
            Access::read(true),
        ));
        assert!(translation.accessed && !translation.dirty);
        assert_eq!(read(&mem, pde_at(0x0804_8000)), TABLE | P | RW | US | A);
        assert_eq!(read(&mem, pte_at(TABLE, 0x0804_8000)), pte | A);
        let translation = translated(walk_and_update(
            &mut mem,
            regs(true, true),
            GuestVirt(0x0804_8000),
            Access::write(true),
        ));
        assert!(translation.dirty);
        assert_eq!(
            read(&mem, pde_at(0x0804_8000)),
            TABLE | P | RW | US | A,
            "no D in a PDE"
        );
        assert_eq!(read(&mem, pte_at(TABLE, 0x0804_8000)), pte | A | D);
        assert_eq!(translation.ad_updates().count(), 0);
    }

    #[test]
    fn a_faulting_walk_sets_nothing() {
        let mut mem = VecPhysMemory::new(RAM);
        map_4k(
            &mut mem,
            TABLE,
            P | RW | US,
            0x0804_8000,
            0x0030_0000 | P | US,
        );
        let before = mem.clone();
        fault(walk_and_update(
            &mut mem,
            regs(true, true),
            GuestVirt(0x0804_8000),
            Access::write(true),
        ));
        map_4k(&mut mem, TABLE, P | RW | US, 0x0804_8000, 0x0030_0000);
        let before_not_present = mem.clone();
        fault(walk_and_update(
            &mut mem,
            regs(true, true),
            GuestVirt(0x0804_8000),
            Access::read(true),
        ));
        assert_eq!(mem, before_not_present);
        assert_ne!(mem, before);
    }

    #[test]
    fn a_4m_write_sets_dirty_in_the_pde() {
        let mut mem = VecPhysMemory::new(RAM);
        write(&mut mem, pde_at(0x0080_0000), 0x0080_0000 | PS | P | RW);
        translated(walk_and_update(
            &mut mem,
            regs(true, true),
            GuestVirt(0x0080_1000),
            Access::write(false),
        ));
        assert_eq!(
            read(&mem, pde_at(0x0080_0000)),
            0x0080_0000 | PS | P | RW | A | D
        );
    }

    #[test]
    fn a_self_mapping_directory_gets_both_bits() {
        // PDE 0 points at the directory itself, so for virtual 0 the PDE is
        // also the PTE.
        let mut mem = VecPhysMemory::new(RAM);
        write(&mut mem, pde_at(0), DIR | P | RW);
        let translation = translated(walk_and_update(
            &mut mem,
            regs(true, true),
            GuestVirt(0x10),
            Access::write(false),
        ));
        assert_eq!(translation.guest_phys, GuestPhys(DIR + 0x10));
        assert_eq!(read(&mem, pde_at(0)), DIR | P | RW | A | D);
    }

    #[test]
    fn tables_outside_ram_are_an_error() {
        let mut mem = VecPhysMemory::new(RAM);
        write(&mut mem, pde_at(0x0804_8000), 0x4000_0000 | P | RW | US);
        assert!(matches!(
            walk(&mem, regs(true, true), GuestVirt(0x0804_8000), Access::read(true)),
            Err(ShadowError::Memory(btvmm_core::MemFault::OutsideRam { guest_phys })) if guest_phys.0 == 0x4000_0000 + 0x48 * 4
        ));
        let cr3_outside = PagingRegs {
            cr3: 0x8000_0000,
            ..regs(true, true)
        };
        assert!(walk(&mem, cr3_outside, GuestVirt(0), Access::read(false)).is_err());
    }

    #[test]
    fn registers_come_from_control_registers() {
        let regs = PagingRegs::from_control_registers(Cr0::PG | Cr0::WP, 0x1018, 1 << 4);
        assert_eq!(
            regs,
            PagingRegs {
                cr3: 0x1018,
                cr0_wp: true,
                cr4_pse: true
            }
        );
        assert_eq!(regs.mode().root(regs.cr3), GuestPhys(0x1000));
        let fault = PageFault {
            cr2: GuestVirt(0x1234),
            error_code: 6,
        };
        assert_eq!(fault.to_exception(), Exception::page_fault(0x1234, 6));
        let core_access = btvmm_core::Access {
            kind: btvmm_core::AccessKind::Execute,
            user: true,
        };
        assert_eq!(Access::from(core_access), Access::fetch(true));
    }

    fn any_access() -> impl Strategy<Value = Access> {
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(write, user, fetch)| Access {
            write,
            user,
            fetch: fetch && !write,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn walk_agrees_with_the_reference(
            guest_virt in any::<u32>(),
            cr3_low in 0u32..0x1000,
            pde in any::<u32>(),
            table_page in 0u32..300,
            pde_points_into_ram in any::<bool>(),
            pte in any::<u32>(),
            wp in any::<bool>(),
            pse in any::<bool>(),
            access in any_access(),
        ) {
            let mut mem = VecPhysMemory::new(RAM);
            let pde = if pde_points_into_ram { (pde & 0xfff) | (table_page << 12) } else { pde };
            write(&mut mem, pde_at(guest_virt), pde);
            let pte_location = pte_at(pde & 0xffff_f000, guest_virt);
            if mem.write_u32(pte_location, pte).is_err() {
                // The table is outside RAM: the walk must say so.
            }
            let regs = PagingRegs { cr3: DIR | cr3_low, cr0_wp: wp, cr4_pse: pse };
            let expected = reference(mem.bytes(), DIR, wp, pse, guest_virt, access);
            let before = mem.clone();
            let pure = walk(&mem, regs, GuestVirt(guest_virt), access);
            let updated = walk_and_update(&mut mem, regs, GuestVirt(guest_virt), access);
            let actual = match &updated {
                Ok(WalkOutcome::Translated(translation)) => Some(Ok(translation.guest_phys.0)),
                Ok(WalkOutcome::Fault(page_fault)) => {
                    prop_assert_eq!(page_fault.cr2, GuestVirt(guest_virt));
                    Some(Err(page_fault.error_code))
                }
                Err(_) => None,
            };
            prop_assert_eq!(actual, expected);
            prop_assert_eq!(pure.is_ok(), updated.is_ok());

            // A/D as the hardware sets them: A in the PDE and (4 KiB) the PTE,
            // D in the leaf on a write, nothing on a fault.
            let mut expected_mem = before.clone();
            if let Some(Ok(_)) = expected {
                let large = pse && read(&before, pde_at(guest_virt)) & PS != 0;
                let leaf_bits = if access.write { A | D } else { A };
                if large {
                    let value = read(&expected_mem, pde_at(guest_virt));
                    write(&mut expected_mem, pde_at(guest_virt), value | leaf_bits);
                } else {
                    let value = read(&expected_mem, pde_at(guest_virt));
                    write(&mut expected_mem, pde_at(guest_virt), value | A);
                    let value = read(&expected_mem, pte_location);
                    write(&mut expected_mem, pte_location, value | leaf_bits);
                }
            }
            prop_assert!(mem == expected_mem, "A/D bits differ from the reference");
        }
    }
}
