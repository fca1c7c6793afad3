//! Write tracking per guest-physical page.
//!
//! The guest kernel writes its page tables through its direct map and
//! patches code through temporary aliases, so protection must follow the
//! guest-physical page, not one guest-virtual address: protecting a page
//! means making *every* guest-virtual alias of it read-only in the shadow.
//! The tracker therefore keeps two maps: why each guest-physical page is
//! tracked, and which guest-virtual pages currently shadow-map it.
//!
//! Memory bound: at most one reasons entry per guest RAM page (4 bytes of
//! key and one byte of value each, plus hash-map overhead), and at most one
//! alias per shadow-mapped guest-virtual page, so at most 2^20 aliases for a
//! 32-bit address space. Both shrink as pages are untracked or unmapped.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::{BitOr, BitOrAssign};

use btvmm_core::{GuestPhys, GuestVirt, PAGE_SIZE};
use rustc_hash::FxHashMap;

/// Why a guest-physical page is write-tracked; a set of reasons.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TrackReasons(u8);

impl TrackReasons {
    /// No reason: the page is not tracked.
    pub const NONE: Self = Self(0);
    /// The page is a page table (second level) of a shadowed address space.
    pub const PAGE_TABLE: Self = Self(1 << 0);
    /// The page is the root page directory of a shadowed address space.
    pub const PAGE_DIRECTORY: Self = Self(1 << 1);
    /// The page holds code the planner has decoded.
    pub const CODE: Self = Self(1 << 2);
    /// Another address space (another world process of the pool) tracks
    /// the page: writes here must be seen so that it can hear of them.
    pub const FOREIGN: Self = Self(1 << 3);
    /// A debugger watches bytes on the page: writes must be seen. Each
    /// address space of a pool tracks it for itself (not in
    /// [`TrackReasons::OWN`]: nothing derived from the page goes stale).
    pub const WATCH: Self = Self(1 << 4);
    /// The reasons this address space has of its own.
    pub const OWN: Self = Self(Self::PAGE_TABLE.0 | Self::PAGE_DIRECTORY.0 | Self::CODE.0);

    const NAMES: [(Self, &'static str); 5] = [
        (Self::PAGE_TABLE, "PAGE_TABLE"),
        (Self::PAGE_DIRECTORY, "PAGE_DIRECTORY"),
        (Self::CODE, "CODE"),
        (Self::FOREIGN, "FOREIGN"),
        (Self::WATCH, "WATCH"),
    ];

    /// The raw bits.
    #[must_use]
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether no reason is set.
    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every reason of `other` is set.
    #[must_use]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether some reason of `other` is set.
    #[must_use]
    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// The reasons of `self` that are not in `other`.
    #[must_use]
    pub const fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }
}

impl BitOr for TrackReasons {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl BitOrAssign for TrackReasons {
    fn bitor_assign(&mut self, other: Self) {
        self.0 |= other.0;
    }
}

impl fmt::Debug for TrackReasons {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = Self::NAMES
            .iter()
            .filter(|(reason, _)| self.contains(*reason))
            .map(|(_, name)| *name);
        match names.next() {
            None => f.write_str("NONE"),
            Some(first) => {
                f.write_str(first)?;
                names.try_for_each(|name| write!(f, " | {name}"))
            }
        }
    }
}

/// Tracked guest-physical pages and the guest-virtual pages that alias them.
/// Any address inside a page names the page.
#[derive(Clone, Debug, Default)]
pub struct WriteTracker {
    /// Guest-physical page frame -> reasons; never holds an empty set.
    reasons: FxHashMap<u32, TrackReasons>,
    /// Guest-physical page frame -> guest-virtual page frames shadow-mapped
    /// to it; never holds an empty set.
    aliases: FxHashMap<u32, BTreeSet<u32>>,
}

impl WriteTracker {
    /// A tracker with nothing tracked and no aliases.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `reasons` to the page holding `guest_phys`. Returns whether the
    /// page was untracked before, i.e. whether its aliases must now be
    /// write-protected.
    pub fn add(&mut self, guest_phys: GuestPhys, reasons: TrackReasons) -> bool {
        if reasons.is_empty() {
            return false;
        }
        let slot = self.reasons.entry(guest_phys.page()).or_default();
        let was_untracked = slot.is_empty();
        *slot |= reasons;
        was_untracked
    }

    /// Removes `reasons` from the page holding `guest_phys` and returns the
    /// reasons left; with none left the page is no longer tracked.
    pub fn remove(&mut self, guest_phys: GuestPhys, reasons: TrackReasons) -> TrackReasons {
        let page = guest_phys.page();
        let Some(slot) = self.reasons.get_mut(&page) else {
            return TrackReasons::NONE;
        };
        *slot = slot.without(reasons);
        let left = *slot;
        if left.is_empty() {
            self.reasons.remove(&page);
        }
        left
    }

    /// Why the page holding `guest_phys` is tracked ([`TrackReasons::NONE`]
    /// when it is not).
    #[must_use]
    pub fn reasons(&self, guest_phys: GuestPhys) -> TrackReasons {
        self.reasons
            .get(&guest_phys.page())
            .copied()
            .unwrap_or_default()
    }

    /// Whether the page holding `guest_phys` is tracked for any reason.
    #[must_use]
    pub fn is_tracked(&self, guest_phys: GuestPhys) -> bool {
        !self.reasons(guest_phys).is_empty()
    }

    /// How many guest-physical pages are tracked.
    #[must_use]
    pub fn tracked_pages(&self) -> usize {
        self.reasons.len()
    }

    /// Every tracked page (guest-physical page frame) with its reasons, in
    /// no particular order.
    pub fn pages(&self) -> impl Iterator<Item = (u32, TrackReasons)> + '_ {
        self.reasons.iter().map(|(&page, &reasons)| (page, reasons))
    }

    /// Records that the guest-virtual page holding `guest_virt` is now
    /// shadow-mapped to the page holding `guest_phys`.
    pub fn add_alias(&mut self, guest_phys: GuestPhys, guest_virt: GuestVirt) {
        self.aliases
            .entry(guest_phys.page())
            .or_default()
            .insert(guest_virt.page());
    }

    /// Forgets that alias (after an unmap or a remap elsewhere).
    pub fn remove_alias(&mut self, guest_phys: GuestPhys, guest_virt: GuestVirt) {
        let page = guest_phys.page();
        if let Some(set) = self.aliases.get_mut(&page) {
            set.remove(&guest_virt.page());
            if set.is_empty() {
                self.aliases.remove(&page);
            }
        }
    }

    /// The guest-virtual pages (page-aligned) currently shadow-mapped to the
    /// page holding `guest_phys`, lowest first.
    pub fn aliases(&self, guest_phys: GuestPhys) -> impl Iterator<Item = GuestVirt> + '_ {
        self.aliases
            .get(&guest_phys.page())
            .into_iter()
            .flatten()
            .map(|virt_page| GuestVirt(virt_page * PAGE_SIZE))
    }

    /// Forgets every alias (the whole shadow was dropped).
    pub fn clear_aliases(&mut self) {
        self.aliases.clear();
    }

    /// How many aliases are recorded in all.
    #[must_use]
    pub fn alias_count(&self) -> usize {
        self.aliases.values().map(BTreeSet::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_reports_only_the_first_reason() {
        let mut tracker = WriteTracker::new();
        assert!(tracker.add(GuestPhys(0x5123), TrackReasons::PAGE_TABLE));
        assert!(!tracker.add(GuestPhys(0x5000), TrackReasons::CODE));
        assert!(!tracker.add(GuestPhys(0x6000), TrackReasons::NONE));
        assert_eq!(
            tracker.reasons(GuestPhys(0x5fff)),
            TrackReasons::PAGE_TABLE | TrackReasons::CODE
        );
        assert!(!tracker.is_tracked(GuestPhys(0x6000)));
        assert_eq!(tracker.tracked_pages(), 1);
    }

    #[test]
    fn removing_the_last_reason_untracks() {
        let mut tracker = WriteTracker::new();
        tracker.add(
            GuestPhys(0x5000),
            TrackReasons::PAGE_TABLE | TrackReasons::CODE,
        );
        assert_eq!(
            tracker.remove(GuestPhys(0x5000), TrackReasons::PAGE_TABLE),
            TrackReasons::CODE
        );
        assert!(tracker.is_tracked(GuestPhys(0x5000)));
        assert_eq!(
            tracker.remove(GuestPhys(0x5000), TrackReasons::CODE),
            TrackReasons::NONE
        );
        assert_eq!(tracker.tracked_pages(), 0);
        assert_eq!(
            tracker.remove(GuestPhys(0x9000), TrackReasons::CODE),
            TrackReasons::NONE
        );
    }

    #[test]
    fn aliases_are_per_guest_physical_page() {
        let mut tracker = WriteTracker::new();
        tracker.add_alias(GuestPhys(0x5000), GuestVirt(0xc000_5000));
        tracker.add_alias(GuestPhys(0x5004), GuestVirt(0x0804_8123));
        tracker.add_alias(GuestPhys(0x6000), GuestVirt(0xc000_6000));
        let aliases: Vec<GuestVirt> = tracker.aliases(GuestPhys(0x5000)).collect();
        assert_eq!(aliases, [GuestVirt(0x0804_8000), GuestVirt(0xc000_5000)]);
        tracker.remove_alias(GuestPhys(0x5000), GuestVirt(0xc000_5000));
        tracker.remove_alias(GuestPhys(0x5000), GuestVirt(0x0804_8000));
        assert_eq!(tracker.aliases(GuestPhys(0x5000)).count(), 0);
        assert_eq!(tracker.alias_count(), 1);
        tracker.clear_aliases();
        assert_eq!(tracker.alias_count(), 0);
    }

    #[test]
    fn reasons_print_their_names() {
        assert_eq!(format!("{:?}", TrackReasons::NONE), "NONE");
        assert_eq!(
            format!("{:?}", TrackReasons::PAGE_DIRECTORY | TrackReasons::CODE),
            "PAGE_DIRECTORY | CODE"
        );
    }
}
