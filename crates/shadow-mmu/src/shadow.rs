//! The shadow of one guest address space (one world process in the VMM):
//! which guest-virtual pages are host-mapped, to what, with what protection,
//! and which guest-physical pages must stay read-only in every alias.
//!
//! Rules the shadow keeps:
//!
//! - **Host writable** only when the guest's tables allow writes on the
//!   whole path (R/W=1), the leaf's Dirty bit is already set, and the
//!   guest-physical page is not write-tracked. A clean page is mapped
//!   read-only so that the first write traps and sets D, as DESIGN.md 4 asks.
//!   CR0.WP never widens a shadow: a supervisor write that only WP=0 allows
//!   is emulated ([`EmulateReason::SupervisorWriteReadOnly`]), because guest
//!   user code shares the host mapping. So the shadow does not depend on
//!   CR0.WP, and a change of WP needs no flush (a change of CR4.PSE does:
//!   call [`Shadow::flush_all`]).
//! - **Runs.** A hidden fault on a 4 KiB page also maps the pages after it,
//!   up to [`ShadowConfig::max_run_pages`] in all, in the same host call,
//!   while they are mapped by the same page table to consecutive RAM pages
//!   with the same guest rights, have A already set (pre-mapping must not
//!   make the guest see accesses it did not make: A is never set on them)
//!   and get the same host protection (so a writable run stops at the first
//!   page whose D is clear or that is tracked). A 4 MiB guest page is mapped
//!   whole when it is touched: A is set once, for the whole page, by the
//!   walk; its tracked pages are split out read-only.
//! - **Write tracking.** The page directory and every page table a walk
//!   uses are tracked ([`TrackReasons::PAGE_DIRECTORY`],
//!   [`TrackReasons::PAGE_TABLE`]); so are the planner's code pages. When a
//!   page becomes tracked, every writable alias of it is write-protected.
//!   Untracking does not upgrade aliases: the next write takes a hidden
//!   fault and is mapped writable then.
//! - **Staleness.** An emulated write to a tracked table marks the shadow
//!   entries it may change stale ([`Shadow::after_tracked_write`]); they are
//!   dropped no later than the guest's next INVLPG of them or CR3 load, the
//!   points where a real TLB would have to forget them too.
//!
//! Segment truncation is the caller's (guest-monitor); the shadow keeps
//! [`Protection::user`] for it and drops supervisor pages from the user
//! view ([`Shadow::drop_supervisor_below`]).
//! - **CR3 loads** compare the old and new page directories entry by entry
//!   and keep the regions whose PDE did not change ([`Shadow::set_cr3`]).
//! - **Decoded code** ([`Shadow::note_decoded`]): the translations the
//!   planner decoded through are kept like TLB entries too, so the caller
//!   learns when the planner must forget a page.
//!
//! - **Release on user writes.** A user-mode write through a user-writable
//!   translation to a page tracked as a page table no PDE of the current
//!   directory names any more, or tracked for another address space,
//!   untracks it: the guest freed the table and reuses the page as data.
//!
//! Not here yet: global pages (CR4.PGE is not offered), untracking a freed
//! page table before user code writes it (kernel writes to it stay
//! emulated until then).
//!
//! Memory bound: one [`ShadowEntry`] and one alias per shadow-mapped
//! guest-virtual page (at most 2^20), and one table record per page table
//! the walks used (at most the guest's RAM pages).

use std::collections::{BTreeMap, BTreeSet};

use btvmm_core::{GuestPhys, GuestVirt, PAGE_SIZE};
use rustc_hash::FxHashMap;

use crate::walk::{TableLevel, walk, walk_and_update};
use crate::{
    Access, HostMapper, PageFault, PageSize, PagingMode, PagingRegs, PhysMemory, Protection,
    ShadowError, TrackReasons, Translation, WalkOutcome, WriteTracker,
};

/// Pages per 4 MiB guest page, and 32-bit entries per paging structure.
const PAGES_PER_4M: u32 = 1024;

/// Tunables of a [`Shadow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShadowConfig {
    /// Most pages one hidden fault on a 4 KiB page maps, the faulting page
    /// included (at least 1).
    pub max_run_pages: u32,
    /// Lowest guest-virtual address the shadow may map. DESIGN.md 2 keeps
    /// the low 64 KiB empty so that stray host-GDT selectors fault.
    pub mappable_start: GuestVirt,
    /// Highest guest-virtual address the shadow may map; the top 64 KiB stay
    /// empty for the same reason.
    pub mappable_last: GuestVirt,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        Self {
            max_run_pages: 16,
            mappable_start: GuestVirt(0x1_0000),
            mappable_last: GuestVirt(0xfffe_ffff),
        }
    }
}

/// Why a fault must be completed by emulating the access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EmulateReason {
    /// The guest page is not RAM (device memory is never mapped).
    NotRam,
    /// The guest-virtual page lies where the shadow never maps
    /// ([`ShadowConfig::mappable_start`], [`ShadowConfig::mappable_last`]).
    Unmappable,
    /// A supervisor write to a page the tables make read-only, allowed only
    /// because CR0.WP=0; mapping it writable would let guest user code write
    /// it too.
    SupervisorWriteReadOnly,
}

/// What a host fault in guest code turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultOutcome {
    /// A hidden fault: the guest's tables map the address; `pages` pages
    /// from `guest_virt` are now shadow-mapped. Resume the guest.
    Mapped {
        /// First page mapped (not always the faulting page for 4 MiB pages).
        guest_virt: GuestVirt,
        /// Pages mapped in all.
        pages: u32,
    },
    /// The guest's tables refuse the access: deliver this #PF.
    GuestFault(PageFault),
    /// A write, allowed by the guest's tables, to a write-tracked page.
    /// Emulate the instruction, then call [`Shadow::after_tracked_write`]
    /// (and tell the planner when `reasons` has CODE).
    TrackedWrite {
        /// Where the write lands.
        guest_phys: GuestPhys,
        /// Why the page is tracked.
        reasons: TrackReasons,
    },
    /// An access the guest's tables allow but the shadow will not map:
    /// emulate it.
    Emulate {
        /// Where the access lands.
        guest_phys: GuestPhys,
        /// Why it is not mapped.
        reason: EmulateReason,
    },
}

/// What a CR3 load dropped that the decode caches must drop too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cr3Switch {
    /// 4 MiB regions (directory indices, ascending) whose PDE differs
    /// between the old and new directory: everything in them goes.
    pub dropped_regions: Vec<u32>,
    /// Decoded pages (guest-virtual page frames) whose tables changed.
    pub dropped_decoded: Vec<u32>,
}

/// One shadow-mapped guest-virtual page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShadowEntry {
    /// The guest-physical page it is mapped to (page-aligned).
    pub guest_phys: GuestPhys,
    /// The host protection it has now.
    pub prot: Protection,
    /// Where the PDE it came through lies.
    pub pde_guest_phys: GuestPhys,
    /// Where the leaf it came from lies: the PTE, or the PDE of a 4 MiB page.
    pub leaf_guest_phys: GuestPhys,
    /// Part of a 4 MiB guest page.
    pub large: bool,
    /// A write to the guest's tables may have changed the translation; the
    /// entry goes at the next INVLPG or CR3 load.
    pub stale: bool,
}

/// The shadow state of one guest address space.
#[derive(Clone, Debug)]
pub struct Shadow {
    config: ShadowConfig,
    cr3: u32,
    /// Guest-virtual page frame -> shadow entry.
    entries: BTreeMap<u32, ShadowEntry>,
    /// Guest-virtual page frame -> the translation the planner decoded
    /// code through (no host mapping; `prot` unused). Kept and dropped
    /// like TLB entries, so the planner's caches follow the guest's
    /// mappings as the hardware's instruction fetches would.
    decoded: BTreeMap<u32, ShadowEntry>,
    tracker: WriteTracker,
    /// Page-table page frame -> directory indices seen pointing to it. Kept
    /// until the next CR3 load so those tables can be untracked then; an
    /// index whose PDE is written goes (unless it is the table's last), so
    /// an index whose PDE has since changed only costs extra lookups.
    tables: FxHashMap<u32, BTreeSet<u32>>,
    /// Pages (of `entries`, then of `decoded`) marked stale since the last
    /// flush, so that a flush need not look at every entry.
    stale_entries: Vec<u32>,
    stale_decoded: Vec<u32>,
    /// Guest-physical page frames whose own tracking (any of
    /// [`TrackReasons::OWN`]) started (true) or ended (false), in order,
    /// until [`Shadow::take_tracking_changes`].
    journal: Vec<(u32, bool)>,
}

impl Shadow {
    /// An empty shadow of the address space whose CR3 is `cr3`, with the
    /// default [`ShadowConfig`].
    #[must_use]
    pub fn new(cr3: u32) -> Self {
        Self::with_config(cr3, ShadowConfig::default())
    }

    /// An empty shadow of the address space whose CR3 is `cr3`.
    #[must_use]
    pub fn with_config(cr3: u32, config: ShadowConfig) -> Self {
        let mut tracker = WriteTracker::new();
        tracker.add(directory_of(cr3), TrackReasons::PAGE_DIRECTORY);
        Self {
            config,
            cr3,
            entries: BTreeMap::new(),
            decoded: BTreeMap::new(),
            tracker,
            tables: FxHashMap::default(),
            stale_entries: Vec::new(),
            stale_decoded: Vec::new(),
            journal: vec![(directory_of(cr3).page(), true)],
        }
    }

    /// The CR3 this shadow mirrors.
    #[must_use]
    pub const fn cr3(&self) -> u32 {
        self.cr3
    }

    /// The write tracker (tracked pages and aliases).
    #[must_use]
    pub const fn tracker(&self) -> &WriteTracker {
        &self.tracker
    }

    /// The shadow entry of the page holding `guest_virt`.
    #[must_use]
    pub fn entry(&self, guest_virt: GuestVirt) -> Option<&ShadowEntry> {
        self.entries.get(&guest_virt.page())
    }

    /// How many guest-virtual pages are shadow-mapped.
    #[must_use]
    pub fn mapped_pages(&self) -> usize {
        self.entries.len()
    }

    /// Handles a host fault of guest code at `guest_virt`: walks the guest's
    /// tables, sets A/D as the hardware would (for every outcome but
    /// [`FaultOutcome::GuestFault`]: the access does happen, natively or
    /// emulated), tracks the tables walked, and maps what may be mapped.
    ///
    /// # Errors
    ///
    /// [`ShadowError::Cr3Mismatch`] when `regs.cr3` is not this shadow's;
    /// [`ShadowError::Memory`] when the guest's tables lie outside RAM;
    /// [`ShadowError::Host`] when the mapper fails.
    pub fn handle_fault<M, H>(
        &mut self,
        mem: &mut M,
        mapper: &mut H,
        regs: PagingRegs,
        guest_virt: GuestVirt,
        access: Access,
    ) -> Result<FaultOutcome, ShadowError>
    where
        M: PhysMemory + ?Sized,
        H: HostMapper + ?Sized,
    {
        if regs.cr3 != self.cr3 {
            return Err(ShadowError::Cr3Mismatch {
                shadow_cr3: self.cr3,
                fault_cr3: regs.cr3,
            });
        }
        let translation = match walk_and_update(mem, regs, guest_virt, access)? {
            WalkOutcome::Fault(page_fault) => return Ok(FaultOutcome::GuestFault(page_fault)),
            WalkOutcome::Translated(translation) => translation,
        };
        self.track_walked_table(mapper, &translation)?;
        let guest_phys = translation.guest_phys;
        let emulate = |reason| Ok(FaultOutcome::Emulate { guest_phys, reason });
        if !mem.is_ram_page(guest_phys) {
            return emulate(EmulateReason::NotRam);
        }
        let mut reasons = self.tracker.reasons(guest_phys);
        if access.write && access.user && translation.user && translation.writable {
            reasons = self.release_user_page(&*mem, guest_phys)?;
        }
        if access.write && !reasons.is_empty() {
            return Ok(FaultOutcome::TrackedWrite {
                guest_phys,
                reasons,
            });
        }
        if access.write && !translation.writable {
            return emulate(EmulateReason::SupervisorWriteReadOnly);
        }
        if !self.mappable(guest_virt.page()) {
            return emulate(EmulateReason::Unmappable);
        }
        match translation.page_size {
            PageSize::Size4K => self.map_run(mem, mapper, regs, &translation),
            PageSize::Size4M => self.map_large(mem, mapper, &translation),
        }
    }

    /// Marks stale the shadow entries that an emulated write of `len` bytes
    /// at `guest_phys` (to a tracked page) may have changed: entries mapped
    /// through a written PDE or from a written PTE. Returns how many entries
    /// became stale. Writes to code pages change no entry; the planner hears
    /// of them from [`FaultOutcome::TrackedWrite`].
    pub fn after_tracked_write(&mut self, guest_phys: GuestPhys, len: u32) -> usize {
        let Some(last_byte) = len
            .checked_sub(1)
            .map(|tail| guest_phys.0.saturating_add(tail))
        else {
            return 0;
        };
        let directory_page = directory_of(self.cr3).page();
        let mut marked = 0;
        // Tables the written PDEs named: they may name others now.
        let mut unnamed = Vec::new();
        for (map, stale_list) in [
            (&mut self.entries, &mut self.stale_entries),
            (&mut self.decoded, &mut self.stale_decoded),
        ] {
            let mut stale_pages = Vec::new();
            for written_page in guest_phys.page()..=GuestPhys(last_byte).page() {
                let page_start = written_page * PAGE_SIZE;
                let first_index = guest_phys.0.max(page_start) % PAGE_SIZE / 4;
                let last_index = last_byte.min(page_start + (PAGE_SIZE - 1)) % PAGE_SIZE / 4;
                if written_page == directory_page {
                    for pde_index in first_index..=last_index {
                        let region = pde_index * PAGES_PER_4M..(pde_index + 1) * PAGES_PER_4M;
                        for (&virt_page, entry) in map.range(region) {
                            stale_pages.push(virt_page);
                            if !entry.large {
                                unnamed.push((entry.leaf_guest_phys.page(), pde_index));
                            }
                        }
                    }
                }
                if let Some(pde_indices) = self.tables.get(&written_page) {
                    for &pde_index in pde_indices {
                        for pte_index in first_index..=last_index {
                            let virt_page = pde_index * PAGES_PER_4M + pte_index;
                            let from_this_table = map.get(&virt_page).is_some_and(|entry| {
                                !entry.large && entry.leaf_guest_phys.page() == written_page
                            });
                            if from_this_table {
                                stale_pages.push(virt_page);
                            }
                        }
                    }
                }
            }
            for virt_page in stale_pages {
                if let Some(entry) = map.get_mut(&virt_page)
                    && !entry.stale
                {
                    entry.stale = true;
                    stale_list.push(virt_page);
                    marked += 1;
                }
            }
        }
        // Every entry made through those PDEs is stale now, and a walk
        // through one names its table again: until then a write to the
        // table has nothing in that region to mark. Without this, a
        // table page reused under other PDEs (Linux frees and reallocates
        // them with each exec) kept every index it was ever seen under,
        // and each write to it looked all of them up.
        // The last index stays: an empty set would untrack the table at
        // the next CR3 load, and most come back (tracking it again costs
        // every world process of the pool a replay).
        unnamed.sort_unstable();
        unnamed.dedup();
        for (table_page, pde_index) in unnamed {
            if let Some(pde_indices) = self.tables.get_mut(&table_page)
                && pde_indices.len() > 1
            {
                pde_indices.remove(&pde_index);
            }
        }
        marked
    }

    /// Records that the planner decodes code through the translation of
    /// `guest_virt`, as an instruction fetch would use it: the page tables
    /// walked and the code page become write-tracked, and the translation
    /// is dropped (the planner must forget the page) at the next INVLPG or
    /// CR3 load after its tables change. Returns where the page lies, or
    /// None when the tables do not map it (nothing is recorded).
    ///
    /// # Errors
    ///
    /// [`ShadowError::Cr3Mismatch`], [`ShadowError::Memory`] or
    /// [`ShadowError::Host`] as for [`Shadow::handle_fault`].
    pub fn note_decoded<M, H>(
        &mut self,
        mem: &M,
        mapper: &mut H,
        regs: PagingRegs,
        guest_virt: GuestVirt,
    ) -> Result<Option<GuestPhys>, ShadowError>
    where
        M: PhysMemory + ?Sized,
        H: HostMapper + ?Sized,
    {
        if regs.cr3 != self.cr3 {
            return Err(ShadowError::Cr3Mismatch {
                shadow_cr3: self.cr3,
                fault_cr3: regs.cr3,
            });
        }
        let WalkOutcome::Translated(translation) =
            walk(mem, regs, guest_virt, Access::fetch(false))?
        else {
            return Ok(None);
        };
        self.track_walked_table(mapper, &translation)?;
        let page_guest_phys = GuestPhys(translation.guest_phys.0 & !(PAGE_SIZE - 1));
        self.track(mapper, page_guest_phys, TrackReasons::CODE)?;
        let (Some(pde), Some(leaf)) = (
            translation.path.at(TableLevel::Directory),
            translation.path.leaf(),
        ) else {
            return Ok(Some(page_guest_phys));
        };
        self.decoded.insert(
            guest_virt.page(),
            ShadowEntry {
                guest_phys: page_guest_phys,
                prot: Protection::read_only(translation.user),
                pde_guest_phys: pde.entry_guest_phys,
                leaf_guest_phys: leaf.entry_guest_phys,
                large: translation.page_size == PageSize::Size4M,
                stale: false,
            },
        );
        Ok(Some(page_guest_phys))
    }

    /// How many decoded translations are recorded.
    #[must_use]
    pub fn decoded_pages(&self) -> usize {
        self.decoded.len()
    }

    /// INVLPG: drops the shadow of the page holding `guest_virt` and, as a
    /// 4 MiB TLB entry would go whole, every page of a 4 MiB guest page
    /// covering it.
    ///
    /// # Errors
    ///
    /// [`ShadowError::Host`] when the mapper fails.
    pub fn invlpg<H: HostMapper + ?Sized>(
        &mut self,
        mapper: &mut H,
        guest_virt: GuestVirt,
    ) -> Result<(), ShadowError> {
        let virt_page = guest_virt.page();
        let region_start = virt_page - virt_page % PAGES_PER_4M;
        let victims: Vec<u32> = self
            .entries
            .range(region_start..region_start + PAGES_PER_4M)
            .filter(|&(&page, entry)| entry.large || page == virt_page)
            .map(|(&page, _)| page)
            .collect();
        let decoded_victims: Vec<u32> = self
            .decoded
            .range(region_start..region_start + PAGES_PER_4M)
            .filter(|&(&page, entry)| entry.large || page == virt_page)
            .map(|(&page, _)| page)
            .collect();
        for page in decoded_victims {
            self.decoded.remove(&page);
        }
        self.drop_pages(mapper, &victims)
    }

    /// A CR3 load. Entries made stale by table writes go, as from a TLB
    /// (there are no global pages: nothing else survives a flush). When
    /// the page directory changes, its 1024 entries are compared with the
    /// old directory's (the dissertation's root-table compare: the old
    /// directory is write-tracked, so its memory is what the remaining
    /// entries came from): a 4 MiB region whose PDE is the same in both
    /// keeps its shadow (the same table, itself tracked, maps it), every
    /// other region is dropped and the tables only it used are untracked.
    /// Returns what the caller must drop from the decode caches.
    ///
    /// # Errors
    ///
    /// [`ShadowError::Memory`] when a directory lies outside RAM;
    /// [`ShadowError::Host`] when the mapper fails.
    pub fn set_cr3<M, H>(
        &mut self,
        mem: &M,
        mapper: &mut H,
        new_cr3: u32,
    ) -> Result<Cr3Switch, ShadowError>
    where
        M: PhysMemory + ?Sized,
        H: HostMapper + ?Sized,
    {
        let mut switch = Cr3Switch {
            dropped_regions: Vec::new(),
            dropped_decoded: self.flush_stale(mapper)?,
        };
        let old_directory = directory_of(self.cr3);
        let new_directory = directory_of(new_cr3);
        if old_directory != new_directory {
            let mut old_entries = [0u32; 1024];
            let mut new_entries = [0u32; 1024];
            mem.read_table(old_directory, &mut old_entries)?;
            mem.read_table(new_directory, &mut new_entries)?;
            switch.dropped_regions = (0..PAGES_PER_4M)
                .zip(old_entries.iter().zip(&new_entries))
                .filter(|(_, (old, new))| old != new)
                .map(|(pde_index, _)| pde_index)
                .collect();
            let mut victims = Vec::new();
            for &pde_index in &switch.dropped_regions {
                let region = pde_index * PAGES_PER_4M..(pde_index + 1) * PAGES_PER_4M;
                victims.extend(self.entries.range(region.clone()).map(|(&page, _)| page));
                let decoded: Vec<u32> = self.decoded.range(region).map(|(&page, _)| page).collect();
                for page in decoded {
                    self.decoded.remove(&page);
                }
            }
            self.drop_pages(mapper, &victims)?;
            let mut unused_tables = Vec::new();
            for (&table_page, pde_indices) in &mut self.tables {
                pde_indices.retain(|index| switch.dropped_regions.binary_search(index).is_err());
                if pde_indices.is_empty() {
                    unused_tables.push(table_page);
                }
            }
            for table_page in unused_tables {
                self.tables.remove(&table_page);
                self.untrack(GuestPhys(table_page * PAGE_SIZE), TrackReasons::PAGE_TABLE);
            }
            self.untrack(old_directory, TrackReasons::PAGE_DIRECTORY);
            // The new directory may be mapped writable in a kept region.
            self.track(mapper, new_directory, TrackReasons::PAGE_DIRECTORY)?;
        }
        self.cr3 = new_cr3;
        Ok(switch)
    }

    /// Drops every shadow entry, keeping the tracking; for a change of
    /// CR4.PSE or any other full TLB flush that keeps CR3.
    ///
    /// # Errors
    ///
    /// [`ShadowError::Host`] when the mapper fails.
    pub fn flush_all<H: HostMapper + ?Sized>(&mut self, mapper: &mut H) -> Result<(), ShadowError> {
        let victims: Vec<u32> = self.entries.keys().copied().collect();
        self.decoded.clear();
        self.stale_entries.clear();
        self.stale_decoded.clear();
        self.drop_pages(mapper, &victims)
    }

    /// Drops every entry marked stale, host-mapped or decoded; returns the
    /// decoded pages dropped (guest-virtual page frames), which the
    /// planner must forget.
    ///
    /// # Errors
    ///
    /// [`ShadowError::Host`] when the mapper fails.
    pub fn flush_stale<H: HostMapper + ?Sized>(
        &mut self,
        mapper: &mut H,
    ) -> Result<Vec<u32>, ShadowError> {
        // The lists may name pages dropped (or replaced) since they were
        // marked: only entries still marked go.
        let mut victims: Vec<u32> = std::mem::take(&mut self.stale_entries)
            .into_iter()
            .filter(|page| self.entries.get(page).is_some_and(|entry| entry.stale))
            .collect();
        victims.sort_unstable();
        victims.dedup();
        let mut decoded: Vec<u32> = std::mem::take(&mut self.stale_decoded)
            .into_iter()
            .filter(|page| self.decoded.get(page).is_some_and(|entry| entry.stale))
            .collect();
        decoded.sort_unstable();
        decoded.dedup();
        for page in &decoded {
            self.decoded.remove(page);
        }
        self.drop_pages(mapper, &victims)?;
        Ok(decoded)
    }

    /// Unmaps every supervisor page below `limit`: the view of guest user
    /// mode, whose truncated segments reach everything below the limit
    /// while host protection has no user/supervisor bit. Returns how many
    /// pages went.
    ///
    /// # Errors
    ///
    /// [`ShadowError::Host`] when the mapper fails.
    pub fn drop_supervisor_below<H: HostMapper + ?Sized>(
        &mut self,
        mapper: &mut H,
        limit: GuestVirt,
    ) -> Result<usize, ShadowError> {
        let victims: Vec<u32> = self
            .entries
            .range(..limit.page())
            .filter(|(_, entry)| !entry.prot.user)
            .map(|(&page, _)| page)
            .collect();
        self.drop_pages(mapper, &victims)?;
        Ok(victims.len())
    }

    /// Tracks the page holding `guest_phys` as decoded code: every alias is
    /// write-protected now, and later writes report
    /// [`FaultOutcome::TrackedWrite`].
    ///
    /// # Errors
    ///
    /// [`ShadowError::Host`] when the mapper fails.
    pub fn track_code_page<H: HostMapper + ?Sized>(
        &mut self,
        mapper: &mut H,
        guest_phys: GuestPhys,
    ) -> Result<(), ShadowError> {
        self.track(mapper, guest_phys, TrackReasons::CODE)
    }

    /// Tracks the page holding `guest_phys` for a debugger's watchpoint
    /// ([`TrackReasons::WATCH`]).
    ///
    /// # Errors
    ///
    /// [`ShadowError::Host`] when the mapper fails.
    pub fn track_watch_page<H: HostMapper + ?Sized>(
        &mut self,
        mapper: &mut H,
        guest_phys: GuestPhys,
    ) -> Result<(), ShadowError> {
        self.track(mapper, guest_phys, TrackReasons::WATCH)
    }

    /// No watchpoint covers any page any more.
    pub fn untrack_watch_pages(&mut self) {
        let watched: Vec<u32> = self
            .tracker
            .pages()
            .filter(|(_, reasons)| reasons.contains(TrackReasons::WATCH))
            .map(|(page, _)| page)
            .collect();
        for page in watched {
            self.untrack(GuestPhys(page * PAGE_SIZE), TrackReasons::WATCH);
        }
    }

    /// Stops tracking the page holding `guest_phys` as code. Its aliases
    /// stay read-only until a write fault upgrades them.
    pub fn untrack_code_page(&mut self, guest_phys: GuestPhys) {
        self.untrack(guest_phys, TrackReasons::CODE);
    }

    /// Tracks the page holding `guest_phys` because another address space
    /// of the pool does ([`TrackReasons::FOREIGN`]): aliases become
    /// read-only, writes report [`FaultOutcome::TrackedWrite`].
    ///
    /// # Errors
    ///
    /// [`ShadowError::Host`] when the mapper fails.
    pub fn track_foreign<H: HostMapper + ?Sized>(
        &mut self,
        mapper: &mut H,
        guest_phys: GuestPhys,
    ) -> Result<(), ShadowError> {
        self.track(mapper, guest_phys, TrackReasons::FOREIGN)
    }

    /// No other address space tracks the page holding `guest_phys` now.
    pub fn untrack_foreign(&mut self, guest_phys: GuestPhys) {
        self.untrack(guest_phys, TrackReasons::FOREIGN);
    }

    /// The pages whose own tracking started (true) or ended (false) since
    /// the last call, in order: what the other address spaces of a pool
    /// must hear of.
    pub fn take_tracking_changes(&mut self) -> Vec<(u32, bool)> {
        std::mem::take(&mut self.journal)
    }

    /// The pool released the page holding `guest_phys` (no address space
    /// may track it any more, and none counts as tracking it): everything
    /// derived from it goes, as if the whole page had been written, with
    /// every reason this address space tracked it for but the current
    /// directory's, and no tracking change is journaled for it (the pool's
    /// count is already zero). Returns whether it held decoded code.
    pub fn release_everywhere(&mut self, guest_phys: GuestPhys) -> bool {
        let page = guest_phys.page();
        let reasons = self.tracker.reasons(guest_phys);
        if reasons.contains(TrackReasons::PAGE_DIRECTORY) {
            // Its author checked it was nobody's directory; this one still
            // is (a later CR3 load): keep what the directory needs.
            return false;
        }
        if reasons.contains(TrackReasons::PAGE_TABLE) {
            self.after_tracked_write(GuestPhys(page * PAGE_SIZE), PAGE_SIZE);
            self.tables.remove(&page);
        }
        self.tracker.remove(
            guest_phys,
            TrackReasons::PAGE_TABLE | TrackReasons::CODE | TrackReasons::FOREIGN,
        );
        self.journal.retain(|&(journaled, _)| journaled != page);
        reasons.contains(TrackReasons::CODE)
    }

    /// A write from guest user mode through a user-writable translation
    /// hit a tracked page: the guest kernel gave the page to user space,
    /// so it is no longer a page table of this address space unless a PDE
    /// of the current directory still points to it (a kernel that frees a
    /// page table clears its PDE; the page is reused for anything), and no
    /// longer one of another address space's (FOREIGN: a process that
    /// exited, whose pool member keeps its shadow). Those reasons go, and
    /// the shadow entries made through the page are stale; code and the
    /// current directory stay tracked. Returns the reasons left.
    ///
    /// Without this, every write to such a page stays an emulated one for
    /// as long as the shadow lives (and an SSE store, which the emulator
    /// does not complete, stops the VM).
    fn release_user_page<M: PhysMemory + ?Sized>(
        &mut self,
        mem: &M,
        guest_phys: GuestPhys,
    ) -> Result<TrackReasons, ShadowError> {
        let reasons = self.tracker.reasons(guest_phys);
        let page = guest_phys.page();
        if reasons.contains(TrackReasons::PAGE_TABLE) {
            let mut directory = [0u32; 1024];
            mem.read_table(directory_of(self.cr3), &mut directory)?;
            // A present PDE naming the page keeps it (a 4 MiB PDE too, on
            // the safe side: the filter costs one more emulated write).
            let still_a_table = directory
                .iter()
                .any(|&pde| pde & 1 != 0 && pde >> 12 == page);
            if !still_a_table {
                self.release_table(guest_phys);
            }
        }
        if reasons.contains(TrackReasons::FOREIGN) {
            self.untrack(guest_phys, TrackReasons::FOREIGN);
        }
        Ok(self.tracker.reasons(guest_phys))
    }

    /// The page holding `guest_phys` is no page table any more (the
    /// caller found no page directory naming it): its table tracking goes
    /// (the entries made through it become stale) and so does the tracking
    /// for other address spaces; code and directory tracking stay. A table
    /// linked again later is tracked again by the walk that uses it.
    pub fn release_table(&mut self, guest_phys: GuestPhys) {
        let page = guest_phys.page();
        if self
            .tracker
            .reasons(guest_phys)
            .contains(TrackReasons::PAGE_TABLE)
        {
            self.after_tracked_write(GuestPhys(page * PAGE_SIZE), PAGE_SIZE);
            self.tables.remove(&page);
            self.untrack(guest_phys, TrackReasons::PAGE_TABLE);
        }
        self.untrack(guest_phys, TrackReasons::FOREIGN);
    }

    fn untrack(&mut self, guest_phys: GuestPhys, reasons: TrackReasons) {
        let before = self.tracker.reasons(guest_phys);
        self.tracker.remove(guest_phys, reasons);
        self.note_change(guest_phys, before);
    }

    /// Journals a change of the page's own tracking since `before`.
    fn note_change(&mut self, guest_phys: GuestPhys, before: TrackReasons) {
        let own_before = before.intersects(TrackReasons::OWN);
        let own_now = self
            .tracker
            .reasons(guest_phys)
            .intersects(TrackReasons::OWN);
        if own_before != own_now {
            self.journal.push((guest_phys.page(), own_now));
        }
    }

    fn mappable(&self, virt_page: u32) -> bool {
        (self.config.mappable_start.page()..=self.config.mappable_last.page()).contains(&virt_page)
    }

    /// The host protection of a page with these guest rights.
    fn host_prot(
        &self,
        guest_writable: bool,
        user: bool,
        dirty: bool,
        guest_phys: GuestPhys,
    ) -> Protection {
        Protection {
            writable: guest_writable && dirty && !self.tracker.is_tracked(guest_phys),
            user,
        }
    }

    fn track<H: HostMapper + ?Sized>(
        &mut self,
        mapper: &mut H,
        guest_phys: GuestPhys,
        reasons: TrackReasons,
    ) -> Result<(), ShadowError> {
        let before = self.tracker.reasons(guest_phys);
        let newly_tracked = self.tracker.add(guest_phys, reasons);
        self.note_change(guest_phys, before);
        if !newly_tracked {
            // Already tracked, so its aliases are already read-only.
            return Ok(());
        }
        let aliases: Vec<GuestVirt> = self.tracker.aliases(guest_phys).collect();
        for alias in aliases {
            if let Some(entry) = self.entries.get_mut(&alias.page())
                && entry.prot.writable
            {
                let read_only = Protection::read_only(entry.prot.user);
                mapper.protect(alias, 1, read_only)?;
                entry.prot = read_only;
            }
        }
        Ok(())
    }

    fn track_walked_table<H: HostMapper + ?Sized>(
        &mut self,
        mapper: &mut H,
        translation: &Translation,
    ) -> Result<(), ShadowError> {
        let Some(pte) = translation.path.at(TableLevel::Table) else {
            return Ok(());
        };
        let table_page = pte.entry_guest_phys.page();
        let pde_index = translation.guest_virt.page() / PAGES_PER_4M;
        self.tables.entry(table_page).or_default().insert(pde_index);
        self.track(mapper, pte.entry_guest_phys, TrackReasons::PAGE_TABLE)
    }

    /// Maps the faulting 4 KiB page and the run after it.
    fn map_run<M, H>(
        &mut self,
        mem: &M,
        mapper: &mut H,
        regs: PagingRegs,
        translation: &Translation,
    ) -> Result<FaultOutcome, ShadowError>
    where
        M: PhysMemory + ?Sized,
        H: HostMapper + ?Sized,
    {
        let (Some(pde), Some(pte)) = (
            translation.path.at(TableLevel::Directory),
            translation.path.at(TableLevel::Table),
        ) else {
            return Ok(FaultOutcome::Mapped {
                guest_virt: translation.page_guest_virt(),
                pages: 0,
            });
        };
        let first = translation.page_guest_virt();
        let first_phys = translation.page_guest_phys();
        let prot = self.host_prot(
            translation.writable,
            translation.user,
            translation.dirty,
            first_phys,
        );
        let mut leaves = vec![pte.entry_guest_phys];
        for k in 1..self.config.max_run_pages.max(1) {
            let guest_virt = first.offset(k * PAGE_SIZE);
            if guest_virt.page().is_multiple_of(PAGES_PER_4M) || !self.mappable(guest_virt.page()) {
                break;
            }
            // A pure walk per page keeps the run independent of the entry
            // format; a supervisor read never faults on rights.
            let WalkOutcome::Translated(next) = walk(mem, regs, guest_virt, Access::read(false))?
            else {
                break;
            };
            let Some(next_pte) = next.path.at(TableLevel::Table) else {
                break;
            };
            let joins = next.accessed
                && next_pte.entry_guest_phys.page() == pte.entry_guest_phys.page()
                && next
                    .path
                    .at(TableLevel::Directory)
                    .map(|at| at.entry_guest_phys)
                    == Some(pde.entry_guest_phys)
                && next.guest_phys == first_phys.offset(k * PAGE_SIZE)
                && next.writable == translation.writable
                && next.user == translation.user
                && mem.is_ram_page(next.guest_phys)
                && self.host_prot(next.writable, next.user, next.dirty, next.guest_phys) == prot;
            if !joins {
                break;
            }
            leaves.push(next_pte.entry_guest_phys);
        }
        let pages = u32::try_from(leaves.len()).unwrap_or(1);
        mapper.map(first, first_phys, pages, prot)?;
        for (k, leaf_guest_phys) in (0..).zip(leaves) {
            self.record(
                first.offset(k * PAGE_SIZE),
                ShadowEntry {
                    guest_phys: first_phys.offset(k * PAGE_SIZE),
                    prot,
                    pde_guest_phys: pde.entry_guest_phys,
                    leaf_guest_phys,
                    large: false,
                    stale: false,
                },
            );
        }
        Ok(FaultOutcome::Mapped {
            guest_virt: first,
            pages,
        })
    }

    /// Maps the 4 MiB guest page around the fault: the part that is RAM and
    /// mappable, contiguous with the faulting page, in as few host calls as
    /// tracked pages inside it allow.
    fn map_large<M, H>(
        &mut self,
        mem: &M,
        mapper: &mut H,
        translation: &Translation,
    ) -> Result<FaultOutcome, ShadowError>
    where
        M: PhysMemory + ?Sized,
        H: HostMapper + ?Sized,
    {
        let Some(pde) = translation.path.at(TableLevel::Directory) else {
            return Ok(FaultOutcome::Mapped {
                guest_virt: translation.page_guest_virt(),
                pages: 0,
            });
        };
        let pde_guest_phys = pde.entry_guest_phys;
        let region_virt = translation.page_guest_virt();
        let region_phys = translation.page_guest_phys();
        let usable = |k: u32| {
            self.mappable(region_virt.offset(k * PAGE_SIZE).page())
                && mem.is_ram_page(region_phys.offset(k * PAGE_SIZE))
        };
        let fault_k = translation.guest_virt.page() - region_virt.page();
        let mut start = fault_k;
        while start > 0 && usable(start - 1) {
            start -= 1;
        }
        let mut end = fault_k + 1;
        while end < PAGES_PER_4M && usable(end) {
            end += 1;
        }
        let prots: Vec<Protection> = (start..end)
            .map(|k| {
                self.host_prot(
                    translation.writable,
                    translation.user,
                    translation.dirty,
                    region_phys.offset(k * PAGE_SIZE),
                )
            })
            .collect();
        let mut k = start;
        for group in prots.chunk_by(|a, b| a == b) {
            let pages = u32::try_from(group.len()).unwrap_or(PAGES_PER_4M);
            let prot = group[0];
            let guest_virt = region_virt.offset(k * PAGE_SIZE);
            let guest_phys = region_phys.offset(k * PAGE_SIZE);
            mapper.map(guest_virt, guest_phys, pages, prot)?;
            for i in 0..pages {
                self.record(
                    guest_virt.offset(i * PAGE_SIZE),
                    ShadowEntry {
                        guest_phys: guest_phys.offset(i * PAGE_SIZE),
                        prot,
                        pde_guest_phys,
                        leaf_guest_phys: pde_guest_phys,
                        large: true,
                        stale: false,
                    },
                );
            }
            k += pages;
        }
        Ok(FaultOutcome::Mapped {
            guest_virt: region_virt.offset(start * PAGE_SIZE),
            pages: end - start,
        })
    }

    fn record(&mut self, guest_virt: GuestVirt, entry: ShadowEntry) {
        if let Some(old) = self.entries.insert(guest_virt.page(), entry)
            && old.guest_phys != entry.guest_phys
        {
            self.tracker.remove_alias(old.guest_phys, guest_virt);
        }
        self.tracker.add_alias(entry.guest_phys, guest_virt);
    }

    /// Unmaps and forgets `victims` (guest-virtual page frames, ascending),
    /// one host call per run of consecutive pages.
    fn drop_pages<H: HostMapper + ?Sized>(
        &mut self,
        mapper: &mut H,
        victims: &[u32],
    ) -> Result<(), ShadowError> {
        for run in victims.chunk_by(|a, b| a + 1 == *b) {
            let first = GuestVirt(run[0] * PAGE_SIZE);
            let pages = u32::try_from(run.len()).unwrap_or(u32::MAX);
            mapper.unmap(first, pages)?;
            for &virt_page in run {
                let guest_virt = GuestVirt(virt_page * PAGE_SIZE);
                if let Some(entry) = self.entries.remove(&virt_page) {
                    self.tracker.remove_alias(entry.guest_phys, guest_virt);
                }
            }
        }
        Ok(())
    }
}

/// The page directory of `cr3`. Only 2-level paging exists; PAE will make
/// the shadow keep its mode.
fn directory_of(cr3: u32) -> GuestPhys {
    PagingMode::TwoLevel.root(cr3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FakeMapper;
    use crate::testing::{A, D, DIR, P, PS, RW, US, map_4k, pde_at, pte_at, read, write};
    use btvmm_core::VecPhysMemory;

    const RAM: usize = 10 << 20;
    const TABLE: u32 = 0x3000;
    const USER_CODE: u32 = 0x0804_8000;
    const DATA_PHYS: u32 = 0x0020_0000;

    fn regs() -> PagingRegs {
        PagingRegs {
            cr3: DIR,
            cr0_wp: true,
            cr4_pse: true,
        }
    }

    struct Rig {
        mem: VecPhysMemory,
        mapper: FakeMapper,
        shadow: Shadow,
    }

    impl Rig {
        fn new() -> Self {
            Self {
                mem: VecPhysMemory::new(RAM),
                mapper: FakeMapper::new(),
                shadow: Shadow::new(DIR),
            }
        }

        fn fault(&mut self, guest_virt: u32, access: Access) -> FaultOutcome {
            self.shadow
                .handle_fault(
                    &mut self.mem,
                    &mut self.mapper,
                    regs(),
                    GuestVirt(guest_virt),
                    access,
                )
                .expect("no VMM error")
        }

        fn host(&self, guest_virt: u32) -> Option<(GuestPhys, Protection)> {
            self.mapper.lookup(GuestVirt(guest_virt))
        }

        /// The shadow and the fake host agree page by page.
        fn assert_consistent(&self) {
            let shadow: BTreeMap<u32, (u32, Protection)> = self
                .shadow
                .entries
                .iter()
                .map(|(&virt_page, entry)| (virt_page, (entry.guest_phys.page(), entry.prot)))
                .collect();
            assert_eq!(shadow, self.mapper.pages);
            assert_eq!(self.shadow.tracker.alias_count(), self.shadow.entries.len());
        }
    }

    fn mapped(guest_virt: u32, pages: u32) -> FaultOutcome {
        FaultOutcome::Mapped {
            guest_virt: GuestVirt(guest_virt),
            pages,
        }
    }

    #[test]
    fn the_user_view_drops_supervisor_pages_below_the_limit_only() {
        let mut rig = Rig::new();
        let limit = 0xc000_0000;
        // A supervisor page and a user page below the limit, a supervisor
        // 4 MiB page above it.
        map_4k(
            &mut rig.mem,
            TABLE,
            P | RW | US,
            0x0040_0000,
            DATA_PHYS | P | RW,
        );
        map_4k(
            &mut rig.mem,
            TABLE,
            P | RW | US,
            0x0040_1000,
            (DATA_PHYS + 0x1000) | P | RW | US,
        );
        write(&mut rig.mem, pde_at(limit), PS | P | RW | A | D);
        for guest_virt in [0x0040_0000, 0x0040_1000, limit] {
            assert!(matches!(
                rig.fault(guest_virt, Access::read(false)),
                FaultOutcome::Mapped { .. }
            ));
        }
        let before = rig.shadow.mapped_pages();
        let dropped = rig
            .shadow
            .drop_supervisor_below(&mut rig.mapper, GuestVirt(limit))
            .expect("unmap");
        assert_eq!(dropped, 1);
        assert_eq!(rig.shadow.mapped_pages(), before - 1);
        assert_eq!(rig.host(0x0040_0000), None);
        assert!(rig.host(0x0040_1000).is_some(), "the user page stays");
        assert!(rig.host(limit).is_some(), "pages above the limit stay");
        rig.assert_consistent();
        // A user access to the supervisor page is the guest's fault, and
        // maps nothing.
        assert!(matches!(
            rig.fault(0x0040_0000, Access::read(true)),
            FaultOutcome::GuestFault(_)
        ));
        assert_eq!(rig.host(0x0040_0000), None);
    }

    #[test]
    fn read_of_a_clean_page_maps_read_only_and_the_first_write_sets_dirty() {
        let mut rig = Rig::new();
        let pte = DATA_PHYS | P | RW | US;
        map_4k(&mut rig.mem, TABLE, P | RW | US, USER_CODE, pte);
        assert_eq!(
            rig.fault(USER_CODE + 0x10, Access::read(true)),
            mapped(USER_CODE, 1)
        );
        assert_eq!(
            rig.host(USER_CODE),
            Some((GuestPhys(DATA_PHYS), Protection::read_only(true)))
        );
        assert_eq!(read(&rig.mem, pde_at(USER_CODE)), TABLE | P | RW | US | A);
        assert_eq!(read(&rig.mem, pte_at(TABLE, USER_CODE)), pte | A);

        assert_eq!(
            rig.fault(USER_CODE + 0x10, Access::write(true)),
            mapped(USER_CODE, 1)
        );
        assert_eq!(read(&rig.mem, pte_at(TABLE, USER_CODE)), pte | A | D);
        assert_eq!(
            rig.host(USER_CODE),
            Some((GuestPhys(DATA_PHYS), Protection::read_write(true)))
        );
        assert_eq!(rig.mapper.map_calls, 2);
        rig.assert_consistent();
    }

    #[test]
    fn a_guest_fault_is_passed_on_and_changes_nothing() {
        let mut rig = Rig::new();
        map_4k(&mut rig.mem, TABLE, P | RW, USER_CODE, DATA_PHYS | P | RW);
        let before = rig.mem.clone();
        assert_eq!(
            rig.fault(USER_CODE + 4, Access::write(true)),
            FaultOutcome::GuestFault(PageFault {
                cr2: GuestVirt(USER_CODE + 4),
                error_code: PageFault::PRESENT | PageFault::WRITE | PageFault::USER,
            })
        );
        assert_eq!(rig.mem, before);
        assert_eq!(rig.mapper.calls(), 0);
    }

    /// Fills PTEs for `count` pages from USER_CODE, page k at DATA_PHYS + k
    /// pages, with `flags(k)`.
    fn fill(rig: &mut Rig, count: u32, flags: impl Fn(u32) -> u32) {
        write(&mut rig.mem, pde_at(USER_CODE), TABLE | P | RW | US);
        for k in 0..count {
            let guest_virt = USER_CODE + k * PAGE_SIZE;
            write(
                &mut rig.mem,
                pte_at(TABLE, guest_virt),
                (DATA_PHYS + k * PAGE_SIZE) | flags(k),
            );
        }
    }

    #[test]
    fn runs_of_accessed_contiguous_pages_are_mapped_in_one_call() {
        const FULL: u32 = P | RW | US | A | D;
        type PteFlags = fn(u32) -> u32;
        let cases: [(&str, PteFlags, Access, u32, bool); 7] = [
            (
                "all accessed and dirty",
                |_| FULL,
                Access::write(true),
                16,
                true,
            ),
            (
                "A clear at page 5",
                |k| if k == 5 { FULL & !A } else { FULL },
                Access::write(true),
                5,
                true,
            ),
            (
                "D clear at page 3 stops a writable run",
                |k| if k == 3 { FULL & !D } else { FULL },
                Access::write(true),
                3,
                true,
            ),
            (
                "a read of clean pages maps a read-only run",
                |_| FULL & !D,
                Access::read(true),
                16,
                false,
            ),
            (
                "a read-only run stops where pages could be writable",
                |k| if k < 4 { FULL & !D } else { FULL },
                Access::read(true),
                4,
                false,
            ),
            (
                "rights change at page 7",
                |k| if k == 7 { FULL & !US } else { FULL },
                Access::write(true),
                7,
                true,
            ),
            (
                "not present at page 2",
                |k| if k == 2 { 0 } else { FULL },
                Access::write(true),
                2,
                true,
            ),
        ];
        for (name, flags, access, pages, writable) in cases {
            let mut rig = Rig::new();
            // The run must not reach page 0 of the next table, nor more than 16.
            fill(&mut rig, 20, flags);
            let ptes_before: Vec<u32> = (1..20)
                .map(|k| read(&rig.mem, pte_at(TABLE, USER_CODE + k * PAGE_SIZE)))
                .collect();
            let first_pte_before = read(&rig.mem, pte_at(TABLE, USER_CODE));
            assert_eq!(
                rig.fault(USER_CODE, access),
                mapped(USER_CODE, pages),
                "{name}"
            );
            assert_eq!(rig.mapper.map_calls, 1, "{name}");
            let prot = Protection {
                writable,
                user: true,
            };
            for k in 0..pages {
                assert_eq!(
                    rig.host(USER_CODE + k * PAGE_SIZE),
                    Some((GuestPhys(DATA_PHYS + k * PAGE_SIZE), prot)),
                    "{name}: page {k}"
                );
            }
            assert_eq!(rig.host(USER_CODE + pages * PAGE_SIZE), None, "{name}");
            let ptes_after: Vec<u32> = (1..20)
                .map(|k| read(&rig.mem, pte_at(TABLE, USER_CODE + k * PAGE_SIZE)))
                .collect();
            assert_eq!(ptes_after, ptes_before, "{name}: pre-mapping sets no A/D");
            let first_pte_after = read(&rig.mem, pte_at(TABLE, USER_CODE));
            assert_eq!(first_pte_after, first_pte_before | A, "{name}");
            rig.assert_consistent();
        }
    }

    #[test]
    fn a_run_stops_at_discontiguous_frames_and_at_the_table_end() {
        let mut rig = Rig::new();
        fill(&mut rig, 4, |_| P | RW | US | A | D);
        write(
            &mut rig.mem,
            pte_at(TABLE, USER_CODE + 2 * PAGE_SIZE),
            0x0050_0000 | P | RW | US | A | D,
        );
        assert_eq!(
            rig.fault(USER_CODE, Access::read(true)),
            mapped(USER_CODE, 2)
        );

        let mut rig = Rig::new();
        let last_in_table = 0x083f_f000;
        map_4k(
            &mut rig.mem,
            TABLE,
            P | RW | US,
            last_in_table,
            DATA_PHYS | P | RW | US | A | D,
        );
        map_4k(
            &mut rig.mem,
            0x4000,
            P | RW | US | A,
            0x0840_0000,
            (DATA_PHYS + PAGE_SIZE) | P | RW | US | A | D,
        );
        assert_eq!(
            rig.fault(last_in_table, Access::read(true)),
            mapped(last_in_table, 1)
        );
    }

    #[test]
    fn a_4m_page_is_mapped_whole_and_dropped_whole() {
        let mut rig = Rig::new();
        let pde = 0x0040_0000 | PS | P | RW | US;
        write(&mut rig.mem, pde_at(0x0080_0000), pde);
        assert_eq!(
            rig.fault(0x0090_0000, Access::read(true)),
            mapped(0x0080_0000, 1024)
        );
        assert_eq!(rig.mapper.map_calls, 1);
        assert_eq!(read(&rig.mem, pde_at(0x0080_0000)), pde | A);
        assert_eq!(
            rig.host(0x00bf_f000),
            Some((GuestPhys(0x007f_f000), Protection::read_only(true)))
        );
        assert_eq!(
            rig.fault(0x0080_0000, Access::write(true)),
            mapped(0x0080_0000, 1024)
        );
        assert_eq!(read(&rig.mem, pde_at(0x0080_0000)), pde | A | D);
        assert_eq!(
            rig.host(0x0080_0000),
            Some((GuestPhys(0x0040_0000), Protection::read_write(true)))
        );
        rig.assert_consistent();

        rig.shadow
            .invlpg(&mut rig.mapper, GuestVirt(0x00a0_0000))
            .expect("unmap works");
        assert_eq!(rig.shadow.mapped_pages(), 0);
        assert!(rig.mapper.pages.is_empty());
        assert_eq!(rig.mapper.unmap_calls, 1);
    }

    #[test]
    fn tracked_pages_inside_a_4m_page_stay_read_only() {
        // Virtual 4 MiB at 0x0040_0000 maps physical 0, which holds the page
        // directory (tracked from the start).
        let mut rig = Rig::new();
        write(&mut rig.mem, pde_at(0x0040_0000), PS | P | RW | A | D);
        assert_eq!(
            rig.fault(0x0040_0000, Access::write(false)),
            mapped(0x0040_0000, 1024)
        );
        assert_eq!(rig.mapper.map_calls, 3);
        assert_eq!(
            rig.host(0x0040_0000).map(|(_, prot)| prot.writable),
            Some(true)
        );
        assert_eq!(
            rig.host(0x0040_0000 + DIR).map(|(_, prot)| prot.writable),
            Some(false)
        );
        assert_eq!(
            rig.host(0x0040_2000).map(|(_, prot)| prot.writable),
            Some(true)
        );
        assert_eq!(
            rig.fault(0x0040_0000 + DIR + 8, Access::write(false)),
            FaultOutcome::TrackedWrite {
                guest_phys: GuestPhys(DIR + 8),
                reasons: TrackReasons::PAGE_DIRECTORY,
            }
        );
        rig.assert_consistent();
    }

    #[test]
    fn a_4m_page_leaves_out_what_cannot_be_mapped() {
        // Identity 4 MiB at 0: the low 64 KiB stay unmapped.
        let mut rig = Rig::new();
        write(&mut rig.mem, pde_at(0), PS | P | RW | A | D);
        assert_eq!(
            rig.fault(0x0020_0000, Access::read(false)),
            mapped(0x0001_0000, 1024 - 16)
        );
        // RAM ends at 10 MiB, inside this 4 MiB page.
        let mut rig = Rig::new();
        write(
            &mut rig.mem,
            pde_at(0x0080_0000),
            0x0080_0000 | PS | P | RW | A | D,
        );
        assert_eq!(
            rig.fault(0x0080_0000, Access::read(false)),
            mapped(0x0080_0000, 512)
        );
        assert_eq!(
            rig.fault(0x00a0_0000, Access::read(false)),
            FaultOutcome::Emulate {
                guest_phys: GuestPhys(0x00a0_0000),
                reason: EmulateReason::NotRam,
            }
        );
    }

    #[test]
    fn invlpg_drops_one_4k_page() {
        let mut rig = Rig::new();
        fill(&mut rig, 3, |_| P | RW | US | A | D);
        assert_eq!(
            rig.fault(USER_CODE, Access::read(true)),
            mapped(USER_CODE, 3)
        );
        rig.shadow
            .invlpg(&mut rig.mapper, GuestVirt(USER_CODE + PAGE_SIZE + 0x123))
            .expect("unmap works");
        assert!(rig.host(USER_CODE).is_some());
        assert!(rig.host(USER_CODE + PAGE_SIZE).is_none());
        assert!(rig.host(USER_CODE + 2 * PAGE_SIZE).is_some());
        assert_eq!(rig.shadow.mapped_pages(), 2);
        rig.assert_consistent();
    }

    #[test]
    fn set_cr3_keeps_the_regions_whose_directory_entry_is_the_same() {
        let mut rig = Rig::new();
        fill(&mut rig, 2, |_| P | RW | US | A | D);
        let kernel = 0xc000_0000;
        let kernel_pde = 0x0040_0000 | PS | P | RW | A | D;
        write(&mut rig.mem, pde_at(kernel), kernel_pde);
        rig.fault(USER_CODE, Access::read(true));
        rig.fault(kernel, Access::read(false));
        let kernel_pages = rig.shadow.mapped_pages() - 2;
        // A second directory: the same kernel PDE, another user table.
        let new_dir = 0x9000;
        let other_table = 0xa000;
        write(
            &mut rig.mem,
            GuestPhys(new_dir + (kernel >> 22) * 4),
            kernel_pde,
        );
        write(
            &mut rig.mem,
            GuestPhys(new_dir + (USER_CODE >> 22) * 4),
            other_table | P | RW | US,
        );
        let unmaps = rig.mapper.unmap_calls;
        let switch = rig
            .shadow
            .set_cr3(&rig.mem, &mut rig.mapper, new_dir)
            .expect("switch");
        assert_eq!(switch.dropped_regions, vec![USER_CODE >> 22]);
        assert_eq!(
            rig.shadow.mapped_pages(),
            kernel_pages,
            "the kernel region stays"
        );
        assert!(rig.host(kernel).is_some());
        assert_eq!(rig.host(USER_CODE), None);
        assert_eq!(rig.mapper.unmap_calls, unmaps + 1);
        assert!(!rig.shadow.tracker().is_tracked(GuestPhys(TABLE)));
        assert_eq!(
            rig.shadow.tracker().reasons(GuestPhys(new_dir)),
            TrackReasons::PAGE_DIRECTORY
        );
        assert!(!rig.shadow.tracker().is_tracked(GuestPhys(DIR)));
        rig.assert_consistent();
        // And back: the old directory's user region comes back by faults.
        let switch = rig
            .shadow
            .set_cr3(&rig.mem, &mut rig.mapper, DIR)
            .expect("switch back");
        assert_eq!(switch.dropped_regions, vec![USER_CODE >> 22]);
        assert!(rig.host(kernel).is_some());
    }

    #[test]
    fn own_tracking_changes_are_journaled_and_foreign_tracking_protects_without_them() {
        let mut rig = Rig::new();
        assert_eq!(rig.shadow.take_tracking_changes(), vec![(DIR >> 12, true)]);
        fill(&mut rig, 1, |_| P | RW | US | A | D);
        rig.fault(USER_CODE, Access::write(true));
        assert_eq!(
            rig.shadow.take_tracking_changes(),
            vec![(TABLE >> 12, true)]
        );
        assert!(rig.host(USER_CODE).expect("mapped").1.writable);
        // Another address space tracks the data page: read-only here, and
        // supervisor writes are reported, but nothing is journaled.
        rig.shadow
            .track_foreign(&mut rig.mapper, GuestPhys(DATA_PHYS))
            .expect("protect");
        assert!(!rig.host(USER_CODE).expect("mapped").1.writable);
        assert!(matches!(
            rig.fault(USER_CODE, Access::write(false)),
            FaultOutcome::TrackedWrite { reasons, .. } if reasons == TrackReasons::FOREIGN
        ));
        assert!(rig.shadow.take_tracking_changes().is_empty());
        rig.shadow.untrack_foreign(GuestPhys(DATA_PHYS));
        assert!(rig.shadow.take_tracking_changes().is_empty());
        rig.shadow
            .set_cr3(&rig.mem, &mut rig.mapper, 0x9000)
            .expect("switch");
        let mut changes = rig.shadow.take_tracking_changes();
        changes.sort_unstable();
        assert_eq!(
            changes,
            vec![(DIR >> 12, false), (TABLE >> 12, false), (0x9, true)]
        );
    }

    /// A page table the guest freed (its PDE cleared) and handed to user
    /// space as data: the first user write releases it and later writes
    /// run natively. A page another address space tracks (FOREIGN) goes
    /// the same way. A page table the current directory still uses stays
    /// tracked even when the guest maps it user-writable.
    /// A page table named by two PDEs and unlinked from one (Linux reuses
    /// table pages with each exec) is known under the other only, so a
    /// write to it looks up one region, not every region it was ever seen
    /// under; its last index stays (an empty set would untrack the table
    /// at the next CR3 load).
    #[test]
    fn a_table_unlinked_from_a_pde_is_known_under_the_others_only() {
        let mut rig = Rig::new();
        const FIRST: u32 = 0x0800_0000;
        const SECOND: u32 = 0x0c00_0000;
        for guest_virt in [FIRST, SECOND] {
            map_4k(
                &mut rig.mem,
                TABLE,
                P | RW | US,
                guest_virt,
                DATA_PHYS | P | RW | US | A | D,
            );
            rig.fault(guest_virt, Access::read(true));
        }
        let names = |rig: &Rig| rig.shadow.tables.get(&(TABLE >> 12)).cloned();
        assert_eq!(names(&rig), Some([FIRST >> 22, SECOND >> 22].into()));
        write(&mut rig.mem, pde_at(FIRST), 0);
        assert_eq!(rig.shadow.after_tracked_write(pde_at(FIRST), 4), 1);
        assert_eq!(names(&rig), Some([SECOND >> 22].into()));
        // A write to the PTE: the entry under SECOND goes stale (the one
        // under FIRST already is).
        let pte = pte_at(TABLE, SECOND);
        assert_eq!(rig.shadow.after_tracked_write(pte, 4), 1);
        assert!(
            rig.shadow
                .entry(GuestVirt(SECOND))
                .expect("kept until flushed")
                .stale
        );
        write(&mut rig.mem, pde_at(SECOND), 0);
        rig.shadow.after_tracked_write(pde_at(SECOND), 4);
        assert_eq!(names(&rig), Some([SECOND >> 22].into()), "the last stays");
    }

    #[test]
    fn user_writes_release_pages_that_are_no_longer_tables() {
        let mut rig = Rig::new();
        const OLD_TABLE: u32 = 0x0030_0000;
        const REUSE_AT: u32 = 0x0900_0000;
        // A table for the region at 0x4000_0000, walked once.
        map_4k(
            &mut rig.mem,
            OLD_TABLE,
            P | RW | US,
            0x4000_0000,
            DATA_PHYS | P | RW | US | A | D,
        );
        rig.fault(0x4000_0000, Access::read(true));
        assert!(
            rig.shadow
                .tracker()
                .reasons(GuestPhys(OLD_TABLE))
                .contains(TrackReasons::PAGE_TABLE)
        );
        // The guest frees it: the PDE goes (an emulated, tracked write).
        write(&mut rig.mem, pde_at(0x4000_0000), 0);
        rig.shadow.after_tracked_write(pde_at(0x4000_0000), 4);
        // ... and maps the page as user data elsewhere.
        map_4k(
            &mut rig.mem,
            TABLE,
            P | RW | US,
            REUSE_AT,
            OLD_TABLE | P | RW | US | A | D,
        );
        // A supervisor write is still emulated (the kernel may yet use it).
        assert!(matches!(
            rig.fault(REUSE_AT, Access::write(false)),
            FaultOutcome::TrackedWrite { .. }
        ));
        assert!(matches!(
            rig.fault(REUSE_AT, Access::write(true)),
            FaultOutcome::Mapped { .. }
        ));
        assert!(!rig.shadow.tracker().is_tracked(GuestPhys(OLD_TABLE)));
        assert!(rig.host(REUSE_AT).expect("mapped").1.writable);
        assert!(
            rig.shadow
                .take_tracking_changes()
                .contains(&(OLD_TABLE >> 12, false)),
            "the pool hears that this space stopped tracking it"
        );
        rig.assert_consistent();

        // A live table mapped user-writable: writes stay emulated.
        map_4k(
            &mut rig.mem,
            TABLE,
            P | RW | US,
            REUSE_AT + PAGE_SIZE,
            TABLE | P | RW | US | A | D,
        );
        assert!(matches!(
            rig.fault(REUSE_AT + PAGE_SIZE, Access::write(true)),
            FaultOutcome::TrackedWrite { reasons, .. } if reasons.contains(TrackReasons::PAGE_TABLE)
        ));

        // Another space's page, written by user code here: released.
        map_4k(
            &mut rig.mem,
            TABLE,
            P | RW | US,
            REUSE_AT + 2 * PAGE_SIZE,
            0x0040_0000 | P | RW | US | A | D,
        );
        rig.shadow
            .track_foreign(&mut rig.mapper, GuestPhys(0x0040_0000))
            .expect("protect");
        assert!(matches!(
            rig.fault(REUSE_AT + 2 * PAGE_SIZE, Access::write(true)),
            FaultOutcome::Mapped { .. }
        ));
        assert!(!rig.shadow.tracker().is_tracked(GuestPhys(0x0040_0000)));
    }

    #[test]
    fn a_page_released_everywhere_loses_every_reason_without_a_journal_entry() {
        let mut rig = Rig::new();
        const OLD_TABLE: u32 = 0x0030_0000;
        map_4k(
            &mut rig.mem,
            OLD_TABLE,
            P | RW | US,
            0x4000_0000,
            DATA_PHYS | P | RW | US | A | D,
        );
        rig.fault(0x4000_0000, Access::read(false));
        rig.shadow
            .track_foreign(&mut rig.mapper, GuestPhys(OLD_TABLE))
            .expect("protect");
        let _ = rig.shadow.take_tracking_changes();
        // Another member released it pool-wide: the pool's count is zero
        // already, so this space's untracking is not journaled.
        assert!(
            !rig.shadow.release_everywhere(GuestPhys(OLD_TABLE)),
            "no code"
        );
        assert_eq!(
            rig.shadow.tracker().reasons(GuestPhys(OLD_TABLE)),
            TrackReasons::NONE
        );
        assert!(
            rig.shadow
                .entry(GuestVirt(0x4000_0000))
                .is_some_and(|entry| entry.stale),
            "what was mapped through it is stale"
        );
        assert_eq!(rig.shadow.take_tracking_changes(), vec![]);
        // This space's own directory is never released from under it.
        assert!(!rig.shadow.release_everywhere(GuestPhys(DIR)));
        assert!(
            rig.shadow
                .tracker()
                .reasons(GuestPhys(DIR))
                .contains(TrackReasons::PAGE_DIRECTORY)
        );
    }

    #[test]
    fn a_released_table_stops_being_tracked_until_a_walk_uses_it_again() {
        let mut rig = Rig::new();
        const OLD_TABLE: u32 = 0x0030_0000;
        map_4k(
            &mut rig.mem,
            OLD_TABLE,
            P | RW | US,
            0x4000_0000,
            DATA_PHYS | P | RW | US | A | D,
        );
        rig.fault(0x4000_0000, Access::read(false));
        assert!(rig.shadow.entry(GuestVirt(0x4000_0000)).is_some());
        let _ = rig.shadow.take_tracking_changes();
        // The caller found no directory naming the page: it goes.
        rig.shadow.release_table(GuestPhys(OLD_TABLE));
        assert!(!rig.shadow.tracker().is_tracked(GuestPhys(OLD_TABLE)));
        assert!(
            rig.shadow
                .entry(GuestVirt(0x4000_0000))
                .is_some_and(|entry| entry.stale),
            "what was mapped through it is stale"
        );
        assert_eq!(
            rig.shadow.take_tracking_changes(),
            vec![(OLD_TABLE >> 12, false)],
            "the pool hears that this space stopped tracking it"
        );
        // Linked again (it never stopped being named here): the next walk
        // through it tracks it again.
        rig.shadow
            .flush_stale(&mut rig.mapper)
            .expect("flush the stale entry");
        rig.fault(0x4000_0000, Access::read(false));
        assert!(
            rig.shadow
                .tracker()
                .reasons(GuestPhys(OLD_TABLE))
                .contains(TrackReasons::PAGE_TABLE)
        );
        rig.assert_consistent();
    }

    #[test]
    fn a_cr3_reload_drops_only_stale_entries() {
        let mut rig = Rig::new();
        fill(&mut rig, 2, |_| P | RW | US | A | D);
        rig.fault(USER_CODE, Access::read(true));
        rig.fault(USER_CODE + PAGE_SIZE, Access::read(true));
        assert_eq!(rig.shadow.mapped_pages(), 2);
        // The guest rewrites the second PTE (an emulated, tracked write).
        write(
            &mut rig.mem,
            pte_at(TABLE, USER_CODE + PAGE_SIZE),
            (DATA_PHYS + 0x10_0000) | P | RW | US | A | D,
        );
        rig.shadow
            .after_tracked_write(pte_at(TABLE, USER_CODE + PAGE_SIZE), 4);
        let switch = rig
            .shadow
            .set_cr3(&rig.mem, &mut rig.mapper, DIR)
            .expect("reload");
        assert!(switch.dropped_regions.is_empty());
        assert!(rig.host(USER_CODE).is_some(), "untouched: kept");
        assert_eq!(rig.host(USER_CODE + PAGE_SIZE), None, "stale: dropped");
        assert_eq!(
            rig.shadow.tracker().reasons(GuestPhys(DIR)),
            TrackReasons::PAGE_DIRECTORY
        );
        rig.assert_consistent();
    }

    #[test]
    fn decoded_translations_are_tracked_and_dropped_like_tlb_entries() {
        let mut rig = Rig::new();
        fill(&mut rig, 2, |_| P | US | A);
        let code = rig
            .shadow
            .note_decoded(
                &rig.mem,
                &mut rig.mapper,
                regs(),
                GuestVirt(USER_CODE + 0x10),
            )
            .expect("walk");
        assert_eq!(code, Some(GuestPhys(DATA_PHYS)));
        assert_eq!(rig.shadow.decoded_pages(), 1);
        assert!(
            rig.shadow
                .tracker()
                .reasons(GuestPhys(DATA_PHYS))
                .contains(TrackReasons::CODE)
        );
        assert!(
            rig.shadow
                .tracker()
                .reasons(GuestPhys(TABLE))
                .contains(TrackReasons::PAGE_TABLE)
        );
        assert_eq!(rig.mapper.calls(), 0, "no host mapping for a decoded page");
        // Nothing mapped: not recorded.
        assert_eq!(
            rig.shadow
                .note_decoded(&rig.mem, &mut rig.mapper, regs(), GuestVirt(0x5000_0000))
                .expect("walk"),
            None
        );
        // A write to its PTE makes it stale; the next flush point drops it.
        rig.shadow.after_tracked_write(pte_at(TABLE, USER_CODE), 4);
        assert_eq!(
            rig.shadow.flush_stale(&mut rig.mapper).expect("flush"),
            vec![USER_CODE >> 12]
        );
        assert_eq!(rig.shadow.decoded_pages(), 0);
        // INVLPG drops one too.
        rig.shadow
            .note_decoded(
                &rig.mem,
                &mut rig.mapper,
                regs(),
                GuestVirt(USER_CODE + PAGE_SIZE),
            )
            .expect("walk");
        rig.shadow
            .invlpg(&mut rig.mapper, GuestVirt(USER_CODE + PAGE_SIZE))
            .expect("invlpg");
        assert_eq!(rig.shadow.decoded_pages(), 0);
    }

    #[test]
    fn set_cr3_to_an_empty_directory_drops_everything_and_moves_the_tracking() {
        let mut rig = Rig::new();
        fill(&mut rig, 3, |_| P | RW | US | A | D);
        rig.fault(USER_CODE, Access::read(true));
        write(
            &mut rig.mem,
            pde_at(0x0080_0000),
            0x0040_0000 | PS | P | RW | A,
        );
        rig.fault(0x0080_0000, Access::read(false));
        assert_eq!(rig.shadow.mapped_pages(), 3 + 1024);
        assert_eq!(
            rig.shadow.tracker().reasons(GuestPhys(TABLE)),
            TrackReasons::PAGE_TABLE
        );

        let new_dir = 0x9000;
        let switch = rig
            .shadow
            .set_cr3(&rig.mem, &mut rig.mapper, new_dir | 0x18)
            .expect("unmap works");
        assert_eq!(
            switch.dropped_regions,
            vec![0x0080_0000 >> 22, USER_CODE >> 22],
            "the new directory is empty: every region the old one mapped differs"
        );
        assert_eq!(rig.shadow.mapped_pages(), 0);
        assert!(rig.mapper.pages.is_empty());
        assert_eq!(rig.mapper.unmap_calls, 2, "one call per contiguous range");
        assert!(!rig.shadow.tracker().is_tracked(GuestPhys(TABLE)));
        assert!(!rig.shadow.tracker().is_tracked(GuestPhys(DIR)));
        assert_eq!(
            rig.shadow.tracker().reasons(GuestPhys(new_dir)),
            TrackReasons::PAGE_DIRECTORY
        );
        assert_eq!(rig.shadow.cr3(), new_dir | 0x18);
        assert!(matches!(
            rig.shadow.handle_fault(
                &mut rig.mem,
                &mut rig.mapper,
                regs(),
                GuestVirt(USER_CODE),
                Access::read(true)
            ),
            Err(ShadowError::Cr3Mismatch { .. })
        ));
        rig.assert_consistent();
    }

    #[test]
    fn an_alias_of_a_tracked_page_is_mapped_read_only() {
        // The kernel's direct map: virtual 0xc000_0000 + phys.
        let mut rig = Rig::new();
        let kernel_table = 0x5000;
        let direct = |guest_phys: u32| 0xc000_0000 + guest_phys;
        write(&mut rig.mem, pde_at(direct(0)), kernel_table | P | RW | A);
        for guest_phys in [DIR, TABLE, DATA_PHYS] {
            write(
                &mut rig.mem,
                pte_at(kernel_table, direct(guest_phys)),
                guest_phys | P | RW | A | D,
            );
        }
        rig.fault(direct(DIR), Access::read(false));
        assert_eq!(
            rig.host(direct(DIR)),
            Some((GuestPhys(DIR), Protection::read_only(false))),
            "the page directory"
        );
        assert_eq!(
            rig.fault(direct(DIR) + 0x80, Access::write(false)),
            FaultOutcome::TrackedWrite {
                guest_phys: GuestPhys(DIR + 0x80),
                reasons: TrackReasons::PAGE_DIRECTORY,
            }
        );
        // The kernel's own page table is tracked by that walk: it is the
        // page table of the direct map.
        assert_eq!(
            rig.shadow.tracker().reasons(GuestPhys(kernel_table)),
            TrackReasons::PAGE_TABLE
        );

        // TABLE is mapped writable while it is plain data...
        rig.fault(direct(TABLE), Access::write(false));
        assert_eq!(
            rig.host(direct(TABLE)).map(|(_, prot)| prot.writable),
            Some(true)
        );
        // ...until a walk uses it as a page table: then every alias is
        // protected.
        map_4k(
            &mut rig.mem,
            TABLE,
            P | RW | US,
            USER_CODE,
            DATA_PHYS | P | RW | US | A | D,
        );
        let protects_before = rig.mapper.protect_calls;
        rig.fault(USER_CODE, Access::read(true));
        assert_eq!(rig.mapper.protect_calls, protects_before + 1);
        assert_eq!(
            rig.host(direct(TABLE)).map(|(_, prot)| prot.writable),
            Some(false)
        );
        rig.assert_consistent();
    }

    #[test]
    fn tracked_writes_mark_exactly_the_affected_entries_stale() {
        let mut rig = Rig::new();
        fill(&mut rig, 4, |_| P | RW | US | A | D);
        assert_eq!(
            rig.fault(USER_CODE, Access::read(true)),
            mapped(USER_CODE, 4)
        );
        write(
            &mut rig.mem,
            pde_at(0x0080_0000),
            0x0040_0000 | PS | P | RW | A,
        );
        rig.fault(0x0080_0000, Access::read(false));

        // A write to the PTE of page 2 (as emulated after TrackedWrite).
        let pte2 = pte_at(TABLE, USER_CODE + 2 * PAGE_SIZE);
        assert_eq!(rig.shadow.after_tracked_write(pte2, 4), 1);
        assert!(
            rig.shadow
                .entry(GuestVirt(USER_CODE + 2 * PAGE_SIZE))
                .is_some_and(|entry| entry.stale)
        );
        assert!(
            rig.shadow
                .entry(GuestVirt(USER_CODE + PAGE_SIZE))
                .is_some_and(|entry| !entry.stale)
        );
        // Writing PTEs 1 and 2 with one 8-byte store.
        assert_eq!(
            rig.shadow
                .after_tracked_write(pte2.offset(0u32.wrapping_sub(4)), 8),
            1
        );
        // A PDE write makes the whole 4 MiB page stale.
        assert_eq!(rig.shadow.after_tracked_write(pde_at(0x0080_0000), 4), 1024);
        // Nothing mapped through these entries.
        assert_eq!(
            rig.shadow
                .after_tracked_write(pte_at(TABLE, USER_CODE + 8 * PAGE_SIZE), 4),
            0
        );
        assert_eq!(rig.shadow.after_tracked_write(pde_at(0xc000_0000), 0), 0);

        rig.shadow
            .flush_stale(&mut rig.mapper)
            .expect("unmap works");
        assert_eq!(rig.shadow.mapped_pages(), 2);
        assert!(rig.host(USER_CODE).is_some() && rig.host(USER_CODE + 3 * PAGE_SIZE).is_some());
        rig.assert_consistent();
    }

    #[test]
    fn code_pages_are_protected_in_every_alias() {
        let mut rig = Rig::new();
        fill(&mut rig, 1, |_| P | RW | US | A | D);
        let kernel_alias = 0xc000_0000 + DATA_PHYS;
        map_4k(
            &mut rig.mem,
            0x5000,
            P | RW | A,
            kernel_alias,
            DATA_PHYS | P | RW | A | D,
        );
        rig.fault(USER_CODE, Access::write(true));
        rig.fault(kernel_alias, Access::write(false));
        rig.shadow
            .track_code_page(&mut rig.mapper, GuestPhys(DATA_PHYS + 0x42))
            .expect("protect works");
        assert_eq!(rig.mapper.protect_calls, 2);
        assert_eq!(
            rig.host(USER_CODE).map(|(_, prot)| prot),
            Some(Protection::read_only(true))
        );
        assert_eq!(
            rig.host(kernel_alias).map(|(_, prot)| prot),
            Some(Protection::read_only(false))
        );
        assert_eq!(
            rig.fault(kernel_alias + 5, Access::write(false)),
            FaultOutcome::TrackedWrite {
                guest_phys: GuestPhys(DATA_PHYS + 5),
                reasons: TrackReasons::CODE,
            }
        );
        rig.shadow.untrack_code_page(GuestPhys(DATA_PHYS));
        assert_eq!(
            rig.fault(USER_CODE, Access::write(true)),
            mapped(USER_CODE, 1)
        );
        assert_eq!(
            rig.host(USER_CODE).map(|(_, prot)| prot),
            Some(Protection::read_write(true))
        );
        rig.assert_consistent();
    }

    #[test]
    fn accesses_the_shadow_will_not_map_are_emulated() {
        let mut rig = Rig::new();
        map_4k(
            &mut rig.mem,
            TABLE,
            P | RW | US,
            0x8000,
            DATA_PHYS | P | RW | US,
        );
        assert_eq!(
            rig.fault(0x8000, Access::read(true)),
            FaultOutcome::Emulate {
                guest_phys: GuestPhys(DATA_PHYS),
                reason: EmulateReason::Unmappable,
            }
        );
        assert_eq!(
            read(&rig.mem, pte_at(TABLE, 0x8000)) & A,
            A,
            "the access happens"
        );

        map_4k(
            &mut rig.mem,
            TABLE,
            P | RW | US,
            USER_CODE,
            0x00fe_b000 | P | RW | US,
        );
        assert_eq!(
            rig.fault(USER_CODE + 1, Access::read(true)),
            FaultOutcome::Emulate {
                guest_phys: GuestPhys(0x00fe_b001),
                reason: EmulateReason::NotRam,
            }
        );

        map_4k(
            &mut rig.mem,
            TABLE,
            P | RW | US,
            USER_CODE,
            DATA_PHYS | P | US | A | D,
        );
        let wp_off = PagingRegs {
            cr0_wp: false,
            ..regs()
        };
        let outcome = rig
            .shadow
            .handle_fault(
                &mut rig.mem,
                &mut rig.mapper,
                wp_off,
                GuestVirt(USER_CODE),
                Access::write(false),
            )
            .expect("no VMM error");
        assert_eq!(
            outcome,
            FaultOutcome::Emulate {
                guest_phys: GuestPhys(DATA_PHYS),
                reason: EmulateReason::SupervisorWriteReadOnly,
            }
        );
        assert_eq!(rig.mapper.calls(), 0);
    }

    #[test]
    fn flush_all_keeps_the_tracking() {
        let mut rig = Rig::new();
        fill(&mut rig, 2, |_| P | RW | US | A | D);
        rig.fault(USER_CODE, Access::read(true));
        rig.shadow.flush_all(&mut rig.mapper).expect("unmap works");
        assert_eq!(rig.shadow.mapped_pages(), 0);
        assert!(rig.shadow.tracker().is_tracked(GuestPhys(TABLE)));
        assert!(rig.shadow.tracker().is_tracked(GuestPhys(DIR)));
        rig.assert_consistent();
    }
}
