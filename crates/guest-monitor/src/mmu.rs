//! Guest paging as the monitor keeps it: the world's address space below
//! 4 GiB holds the guest's physical memory at the same addresses while
//! paging is off (the identity view), and the shadow of the current guest
//! address space once the guest sets CR0.PG (shadow-mmu decides what, the
//! world's mmap/mprotect/munmap do it).
//!
//! Every emulated access translates through the guest's own tables with the
//! hardware's A/D updates and #PF error codes; the planner's reads walk
//! without updating anything (the hardware sets A only on real accesses).
//! The decode caches follow the guest's TLB rules: what was decoded through
//! a mapping is dropped at the INVLPG of its page or at a CR3 load, and
//! every guest-physical page the planner decoded is write-tracked, so a
//! write to decoded code, natively or emulated, drops it at once.
//!
//! Guest user mode: host protection has no user/supervisor bit, so the
//! shadow segments of user mode are truncated below [`USER_TOP`] (see
//! [`truncate_user_segment`]) and, while the guest runs at CPL 3, no
//! supervisor page below [`USER_TOP`] is mapped. User pages at or above it
//! lie beyond the truncated limits: accesses there raise #GP natively and
//! are emulated.

use btvmm_core::cpu::Cr0;
use btvmm_core::descriptor::Descriptor;
use btvmm_core::emu::system::CR4_PSE;
use btvmm_core::{GuestPhys, GuestVirt, PAGE_SIZE, WorldServices};
use cfg_planner::Planner;
use shadow_mmu::{
    Access, FaultOutcome, HostMapper, PagingRegs, Protection, Shadow, ShadowError, TrackReasons,
    WalkOutcome, walk, walk_and_update,
};

/// The lowest guest-virtual address guest user code never reaches
/// natively: user-mode shadow segments end below it. 3 GiB is where the
/// i386 Linux kernel's own mapping starts (PAGE_OFFSET), so ordinary user
/// programs never meet the limit.
pub const USER_TOP: u32 = 0xc000_0000;

/// Guest-physical memory below this is never mapped natively (nor is the
/// top 64 KiB of the 4 GiB space): DESIGN.md section 2.
pub const LOW_HOLE: u32 = 0x1_0000;
/// The first address of the top hole.
const HIGH_HOLE: u32 = 0xffff_0000;

/// Why a translation failed.
#[derive(Debug)]
pub enum TranslateError {
    /// The guest's tables refuse the access: the guest gets this #PF.
    Fault(shadow_mmu::PageFault),
    /// The guest's tables lie outside RAM, or the host refused a mapping.
    Broken(ShadowError),
}

/// The world's shadow mappings as shadow-mmu's host mapper.
pub struct WorldMapper<'a>(pub &'a mut dyn WorldServices);

/// Paging off: write-protects the identity view's `page` (a page number)
/// the first time `protected` gets it, so that native writes to it trap.
/// A page outside the identity view is left alone.
fn protect_identity_page(
    identity: Option<(u32, u32)>,
    protected: &mut std::collections::BTreeSet<u32>,
    world: &mut dyn WorldServices,
    page: u32,
) -> Result<(), ShadowError> {
    let in_view = identity.is_some_and(|(start, len)| {
        u64::from(page) * u64::from(PAGE_SIZE) >= u64::from(start)
            && (u64::from(page) + 1) * u64::from(PAGE_SIZE) <= u64::from(start) + u64::from(len)
    });
    if in_view && protected.insert(page) {
        world
            .protect_guest(page * PAGE_SIZE, PAGE_SIZE, false)
            .map_err(|what| host_error(GuestVirt(page * PAGE_SIZE), 1, what))?;
    }
    Ok(())
}

fn host_error<E>(guest_virt: GuestVirt, pages: u32, what: E) -> ShadowError
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    ShadowError::Host {
        guest_virt,
        pages,
        source: std::io::Error::other(what),
    }
}

fn byte_len(guest_virt: GuestVirt, pages: u32) -> Result<u32, ShadowError> {
    pages
        .checked_mul(PAGE_SIZE)
        .ok_or_else(|| host_error(guest_virt, pages, "the range passes 4 GiB"))
}

impl HostMapper for WorldMapper<'_> {
    fn map(
        &mut self,
        guest_virt: GuestVirt,
        guest_phys: GuestPhys,
        pages: u32,
        prot: Protection,
    ) -> Result<(), ShadowError> {
        let len = byte_len(guest_virt, pages)?;
        self.0
            .map_guest(guest_virt.0, guest_phys.0, len, prot.writable)
            .map_err(|what| host_error(guest_virt, pages, what))
    }

    fn protect(
        &mut self,
        guest_virt: GuestVirt,
        pages: u32,
        prot: Protection,
    ) -> Result<(), ShadowError> {
        let len = byte_len(guest_virt, pages)?;
        self.0
            .protect_guest(guest_virt.0, len, prot.writable)
            .map_err(|what| host_error(guest_virt, pages, what))
    }

    fn unmap(&mut self, guest_virt: GuestVirt, pages: u32) -> Result<(), ShadowError> {
        let len = byte_len(guest_virt, pages)?;
        self.0
            .unmap_guest(guest_virt.0, len)
            .map_err(|what| host_error(guest_virt, pages, what))
    }
}

/// One mapping change a [`DeferredMapper`] holds.
#[derive(Clone, Copy, Debug)]
enum MapChange {
    Map(GuestVirt, GuestPhys, u32, Protection),
    Protect(GuestVirt, u32, Protection),
    Unmap(GuestVirt, u32),
}

/// A host mapper that collects changes to make later, in order (for calls
/// that also need the world for guest memory).
#[derive(Debug, Default)]
struct DeferredMapper {
    changes: Vec<MapChange>,
}

impl DeferredMapper {
    fn apply(self, mapper: &mut dyn HostMapper) -> Result<(), ShadowError> {
        for change in self.changes {
            match change {
                MapChange::Map(guest_virt, guest_phys, pages, prot) => {
                    mapper.map(guest_virt, guest_phys, pages, prot)?;
                }
                MapChange::Protect(guest_virt, pages, prot) => {
                    mapper.protect(guest_virt, pages, prot)?;
                }
                MapChange::Unmap(guest_virt, pages) => mapper.unmap(guest_virt, pages)?,
            }
        }
        Ok(())
    }
}

impl HostMapper for DeferredMapper {
    fn map(
        &mut self,
        guest_virt: GuestVirt,
        guest_phys: GuestPhys,
        pages: u32,
        prot: Protection,
    ) -> Result<(), ShadowError> {
        self.changes
            .push(MapChange::Map(guest_virt, guest_phys, pages, prot));
        Ok(())
    }

    fn protect(
        &mut self,
        guest_virt: GuestVirt,
        pages: u32,
        prot: Protection,
    ) -> Result<(), ShadowError> {
        self.changes
            .push(MapChange::Protect(guest_virt, pages, prot));
        Ok(())
    }

    fn unmap(&mut self, guest_virt: GuestVirt, pages: u32) -> Result<(), ShadowError> {
        self.changes.push(MapChange::Unmap(guest_virt, pages));
        Ok(())
    }
}

/// Whether a present entry of one of the page directories at
/// guest-physical page numbers `directories` names guest-physical page
/// `page` (as a page table; a 4 MiB entry naming it counts too, on the
/// safe side). A directory outside RAM counts as naming it.
fn named_by(world: &dyn WorldServices, directories: &[u32], page: u32) -> bool {
    let mut bytes = [0u8; PAGE_SIZE as usize];
    directories.iter().any(|&directory| {
        if world
            .read_phys(GuestPhys(directory * PAGE_SIZE), &mut bytes)
            .is_err()
        {
            return true;
        }
        bytes.chunks_exact(4).any(|word| {
            let pde = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            pde & 1 != 0 && pde >> 12 == page
        })
    })
}

/// Entries of the emulator's translation cache.
const TLB_ENTRIES: usize = 64;

/// A translation the emulator made during the current trap, with the rights
/// the guest's tables gave it.
#[derive(Clone, Copy, Debug)]
struct TlbEntry {
    virt_page: u32,
    phys_page: u32,
    writable: bool,
    user: bool,
    /// The leaf's Dirty bit is set: a write needs no walk to set it.
    dirty: bool,
    /// The guest-physical page holding the leaf entry (a page table, or
    /// the directory for a 4 MiB page): a write there drops the cache.
    table_page: u32,
}

/// The emulator's translations (a software TLB). Like the CPU's own TLB
/// it may hold a translation the guest has since changed in its tables
/// until a CR0, CR3 or CR4 write or an INVLPG drops it (the shadow keeps
/// stale entries just as long), so it lasts across traps. Nothing is cached
/// that the guest could see the difference of: only present translations
/// are, a lookup the cached rights refuse walks again (a fault always
/// comes from a fresh walk, as the CPU's does), and a write that needs the
/// Dirty bit set walks. Emulated writes to the directory or to a table a
/// cached translation came from drop it all, and so does a pool member's
/// taking the vCPU over.
#[derive(Debug)]
struct Tlb {
    entries: [Option<TlbEntry>; TLB_ENTRIES],
    /// The directory the entries came through.
    directory_page: u32,
    /// One bit per table page number modulo 64 that a cached entry came
    /// through: an emulated write elsewhere (nearly all of them: stacks,
    /// data) is told apart without a look at every entry.
    table_pages: u64,
}

impl Default for Tlb {
    fn default() -> Self {
        Self {
            entries: [None; TLB_ENTRIES],
            directory_page: u32::MAX,
            table_pages: 0,
        }
    }
}

impl Tlb {
    fn flush(&mut self) {
        self.entries = [None; TLB_ENTRIES];
        self.table_pages = 0;
    }

    fn table_bit(page: u32) -> u64 {
        1 << (page % 64)
    }

    fn insert(&mut self, entry: TlbEntry) {
        self.table_pages |= Self::table_bit(entry.table_page);
        self.entries[entry.virt_page as usize % TLB_ENTRIES] = Some(entry);
    }

    fn lookup(&self, virt_page: u32, access: Access, cr0_wp: bool) -> Option<u32> {
        let entry = self.entries[virt_page as usize % TLB_ENTRIES]?;
        if entry.virt_page != virt_page || (access.write && !entry.dirty) {
            return None;
        }
        let allowed = if access.user {
            entry.user && (!access.write || entry.writable)
        } else {
            !access.write || entry.writable || !cr0_wp
        };
        allowed.then_some(entry.phys_page)
    }

    fn written(&mut self, page: u32) {
        if page == self.directory_page
            || (self.table_pages & Self::table_bit(page) != 0
                && self
                    .entries
                    .iter()
                    .flatten()
                    .any(|entry| entry.table_page == page))
        {
            self.flush();
        }
    }
}

/// The guest's paging state and the shadow of its current address space.
#[derive(Debug, Default)]
pub struct Mmu {
    cr0: u32,
    cr3: u32,
    cr4: u32,
    /// The shadow of the current address space; Some exactly while the
    /// guest's CR0.PG is set.
    shadow: Option<Shadow>,
    /// The identity view of guest RAM is mapped (paging off).
    identity: Option<(u32, u32)>,
    /// Pages of the identity view the planner decoded code from, mapped
    /// read-only so that a native write to them traps (paging off).
    identity_code: std::collections::BTreeSet<u32>,
    /// Pages of the identity view a debugger's watchpoints keep read-only.
    identity_watched: std::collections::BTreeSet<u32>,
    /// Supervisor pages below [`USER_TOP`] are kept unmapped: the guest
    /// runs (or is about to run) at CPL 3.
    user_view: bool,
    /// A host mapping failed inside an emulated instruction (where
    /// `Machine::notify` cannot return it); the monitor stops the VM.
    failure: Option<ShadowError>,
    /// A CR3 load asked for the address space another pool member holds
    /// (or will hold): the monitor hands the vCPU over after the
    /// instruction.
    pending_switch: Option<usize>,
    /// The pool's log position this member has caught up to.
    pool_seq: u64,
    /// The pool's epoch when this member last ran.
    pool_epoch: u64,
    /// The split code view's alias pages in this process.
    pub split: crate::split::SplitView,
    /// The emulator's translations.
    tlb: Tlb,
    /// Tracked pages found named by a page directory of the pool since a
    /// directory last changed: writes to them are page-table writes, not
    /// looked at again (see [`Mmu::handle_fault`]).
    live_tables: rustc_hash::FxHashSet<u32>,
    /// Pages whose stale table tracking was released so far.
    tables_released: u64,
    /// Pages whose stale tracking by other members was released pool-wide
    /// so far.
    foreign_released: u64,
}

/// What a member must catch up on when it takes the vCPU over.
#[derive(Debug, Default)]
pub struct Catchup {
    /// Events replayed.
    pub events: u64,
    /// The shadow was started afresh (log overrun, paging turned off
    /// meanwhile, or the member's first turn).
    pub restarted: bool,
}

/// An event replayed, with what the pool says about it now.
enum Replay {
    Tracked(u32),
    Untracked { page: u32, still_tracked: bool },
    Written { guest_phys: u32, len: u32 },
    Released(u32),
}

impl Mmu {
    /// Whether guest paging is on.
    #[must_use]
    pub fn paging(&self) -> bool {
        self.shadow.is_some()
    }

    /// The shadow of the current address space, while paging is on.
    #[must_use]
    pub fn shadow(&self) -> Option<&Shadow> {
        self.shadow.as_ref()
    }

    /// The paging registers walks use.
    #[must_use]
    pub fn regs(&self) -> PagingRegs {
        PagingRegs::from_control_registers(self.cr0, self.cr3, self.cr4)
    }

    /// Maps guest RAM at its own addresses, as a guest with paging off sees
    /// it (the Multiboot hand-over state).
    ///
    /// # Errors
    ///
    /// When the host refuses the mapping.
    pub fn start(&mut self, world: &mut dyn WorldServices) -> Result<(), ShadowError> {
        self.map_identity(world)
    }

    fn map_identity(&mut self, world: &mut dyn WorldServices) -> Result<(), ShadowError> {
        let top = world.ram_size().min(HIGH_HOLE) & !(PAGE_SIZE - 1);
        if top > LOW_HOLE {
            let len = top - LOW_HOLE;
            world
                .map_guest(LOW_HOLE, LOW_HOLE, len, true)
                .map_err(|what| host_error(GuestVirt(LOW_HOLE), len / PAGE_SIZE, what))?;
            self.identity = Some((LOW_HOLE, len));
            self.identity_code.clear();
            self.identity_watched.clear();
        }
        Ok(())
    }

    fn unmap_identity(&mut self, world: &mut dyn WorldServices) -> Result<(), ShadowError> {
        self.identity_code.clear();
        self.identity_watched.clear();
        if let Some((start, len)) = self.identity.take() {
            world
                .unmap_guest(start, len)
                .map_err(|what| host_error(GuestVirt(start), len / PAGE_SIZE, what))?;
        }
        Ok(())
    }

    /// A failure is recorded (see [`Mmu::take_failure`]).
    #[must_use]
    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// The failure recorded while handling an event, if any.
    pub fn take_failure(&mut self) -> Option<ShadowError> {
        self.failure.take()
    }

    /// Records a failure seen where it cannot be returned.
    pub fn record_failure(&mut self, error: ShadowError) {
        self.failure.get_or_insert(error);
    }

    /// Translates `guest_virt` for an emulated access, with the A/D updates
    /// the hardware makes.
    ///
    /// # Errors
    ///
    /// The guest's #PF, or a broken table.
    pub fn translate(
        &mut self,
        world: &mut dyn WorldServices,
        guest_virt: u32,
        access: Access,
    ) -> Result<u32, TranslateError> {
        if self.shadow.is_none() {
            return Ok(guest_virt);
        }
        let regs = self.regs();
        let virt_page = guest_virt / PAGE_SIZE;
        if let Some(phys_page) = self.tlb.lookup(virt_page, access, regs.cr0_wp) {
            return Ok(phys_page * PAGE_SIZE + guest_virt % PAGE_SIZE);
        }
        match walk_and_update(world, regs, GuestVirt(guest_virt), access) {
            Ok(WalkOutcome::Translated(translation)) => {
                if let Some(leaf) = translation.path.leaf() {
                    self.tlb.directory_page = self.cr3 / PAGE_SIZE;
                    self.tlb.insert(TlbEntry {
                        virt_page,
                        phys_page: translation.guest_phys.0 / PAGE_SIZE,
                        writable: translation.writable,
                        user: translation.user,
                        dirty: translation.dirty,
                        table_page: leaf.entry_guest_phys.0 / PAGE_SIZE,
                    });
                }
                Ok(translation.guest_phys.0)
            }
            Ok(WalkOutcome::Fault(fault)) => Err(TranslateError::Fault(fault)),
            Err(error) => Err(TranslateError::Broken(error)),
        }
    }

    /// Translates without changing guest memory (the planner's view).
    #[must_use]
    pub fn peek(&self, world: &dyn WorldServices, guest_virt: u32) -> Option<u32> {
        self.peek_as(world, guest_virt, Access::fetch(false))
    }

    /// Translates a supervisor data access without changing guest memory
    /// (a debugger's view: kernel data is readable, whatever NX says).
    #[must_use]
    pub fn peek_data(&self, world: &dyn WorldServices, guest_virt: u32) -> Option<u32> {
        self.peek_as(world, guest_virt, Access::read(false))
    }

    fn peek_as(&self, world: &dyn WorldServices, guest_virt: u32, access: Access) -> Option<u32> {
        if self.shadow.is_none() {
            return Some(guest_virt);
        }
        match walk(world, self.regs(), GuestVirt(guest_virt), access) {
            Ok(WalkOutcome::Translated(translation)) => Some(translation.guest_phys.0),
            _ => None,
        }
    }

    /// A control register was written (CR0, CR3 or CR4).
    ///
    /// # Errors
    ///
    /// When the host refuses a mapping change.
    pub fn control_written(
        &mut self,
        world: &mut dyn WorldServices,
        planner: &mut Planner,
        register: u8,
        value: u32,
    ) -> Result<(), ShadowError> {
        self.tlb.flush();
        self.live_tables.clear();
        match register {
            0 => {
                let was = self.cr0 & Cr0::PG != 0;
                self.cr0 = value;
                let now = value & Cr0::PG != 0;
                if was != now {
                    planner.invalidate_all();
                    self.forget_all_code(world);
                    if now {
                        self.unmap_identity(world)?;
                        self.shadow = Some(Shadow::new(self.cr3));
                        if let Some(pool) = world.address_spaces() {
                            pool.set_key(pool.member(), Some(self.cr3));
                            pool.touch(pool.member());
                        }
                    } else {
                        if let Some(mut shadow) = self.shadow.take() {
                            shadow.flush_all(&mut WorldMapper(world))?;
                            if let Some(pool) = world.address_spaces() {
                                // Writes are not tracked with paging off:
                                // every other shadow starts afresh.
                                Self::uncount_all(pool, &mut shadow);
                                pool.bump_epoch();
                                pool.set_key(pool.member(), None);
                                self.pool_epoch = pool.epoch();
                            }
                        }
                        self.map_identity(world)?;
                    }
                }
                // CR0.WP does not change what the shadow maps (shadow-mmu's
                // shadow module says why).
            }
            3 => {
                self.cr3 = value;
                if self.shadow.is_some()
                    && let Some(pool) = world.address_spaces()
                {
                    let me = pool.member();
                    if pool.key(me) != Some(value) {
                        let target = (0..pool.members())
                            .find(|&member| pool.key(member) == Some(value))
                            .unwrap_or_else(|| pool.least_recent(me));
                        self.pending_switch = Some(target);
                        return Ok(());
                    }
                }
                if let Some(shadow) = &mut self.shadow {
                    let mut deferred = DeferredMapper::default();
                    let switch = shadow.set_cr3(&*world, &mut deferred, value)?;
                    deferred.apply(&mut WorldMapper(world))?;
                    // What was decoded through a mapping the switch dropped
                    // goes too; regions whose PDE stayed keep their code.
                    for region in switch.dropped_regions {
                        planner.invalidate_virt_range(region * 1024..(region + 1) * 1024);
                        self.split
                            .forget_virt_pages(world, region * 1024..(region + 1) * 1024);
                    }
                    for page in switch.dropped_decoded {
                        planner.invalidate_virt_page(GuestVirt(page * PAGE_SIZE));
                        self.split.forget_virt_pages(world, page..page + 1);
                    }
                    self.check_alias_regions(world);
                }
            }
            4 => {
                let pse_changed = (self.cr4 ^ value) & CR4_PSE != 0;
                self.cr4 = value;
                if pse_changed && let Some(shadow) = &mut self.shadow {
                    shadow.flush_all(&mut WorldMapper(world))?;
                    planner.invalidate_all();
                    self.forget_all_code(world);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// INVLPG of the page holding `guest_virt`.
    ///
    /// # Errors
    ///
    /// When the host refuses a mapping change.
    pub fn invlpg(
        &mut self,
        world: &mut dyn WorldServices,
        planner: &mut Planner,
        guest_virt: u32,
    ) -> Result<(), ShadowError> {
        self.tlb.flush();
        let regs = self.regs();
        let Some(shadow) = &mut self.shadow else {
            return Ok(());
        };
        // A 4 MiB TLB entry goes whole: so does what was decoded through it,
        // whether the shadow or the tables say the page is large.
        let large_now = match walk(&*world, regs, GuestVirt(guest_virt), Access::read(false)) {
            Ok(WalkOutcome::Translated(translation)) => {
                translation.page_size == shadow_mmu::PageSize::Size4M
            }
            _ => false,
        };
        let large_shadow = shadow
            .entry(GuestVirt(guest_virt))
            .is_some_and(|entry| entry.large);
        shadow.invlpg(&mut WorldMapper(world), GuestVirt(guest_virt))?;
        if large_now || large_shadow {
            let region = guest_virt & !((4 << 20) - 1);
            for page in 0..1024 {
                planner.invalidate_virt_page(GuestVirt(region + page * PAGE_SIZE));
            }
            let first = region / PAGE_SIZE;
            self.split.forget_virt_pages(world, first..first + 1024);
        } else {
            planner.invalidate_virt_page(GuestVirt(guest_virt));
            let page = guest_virt / PAGE_SIZE;
            self.split.forget_virt_pages(world, page..page + 1);
        }
        Ok(())
    }

    /// An emulated instruction wrote `len` bytes at `guest_phys`: page-table
    /// writes make shadow entries stale (dropped at the next INVLPG or CR3
    /// load), and decoded code on the page is dropped; the page stops being
    /// tracked as code until the planner decodes it again, so a page that
    /// mixes code and busy data does not trap on every write.
    pub fn written(
        &mut self,
        world: &mut dyn WorldServices,
        planner: &mut Planner,
        guest_phys: u32,
        len: u32,
    ) {
        let first = guest_phys / PAGE_SIZE;
        let last = guest_phys.wrapping_add(len.saturating_sub(1)) / PAGE_SIZE;
        self.tlb.written(first);
        self.tlb.written(last);
        if let Some(shadow) = &self.shadow {
            // Nearly every emulated write (stacks, data) is to a page no
            // address space tracks: no decoded code (the planner decodes
            // only tracked pages, and aliases hold code only while their
            // page is tracked), no table a shadow follows, nothing for the
            // pool to hear of.
            let directory = self.cr3 / PAGE_SIZE;
            let quiet = |page: u32| {
                page != directory
                    && !shadow.tracker().is_tracked(GuestPhys(page * PAGE_SIZE))
                    && !world
                        .address_spaces()
                        .is_some_and(|pool| pool.tracked_anywhere(page))
            };
            if quiet(first) && (first == last || quiet(last)) {
                return;
            }
        }
        if self.shadow.is_none() && !self.identity_code.is_empty() {
            // Paging off: the written code pages become writable again
            // until the planner decodes them again (their decoded blocks
            // go below).
            let first = guest_phys / PAGE_SIZE;
            let last = guest_phys.wrapping_add(len.saturating_sub(1)) / PAGE_SIZE;
            for page in first..=last {
                if self.identity_code.remove(&page)
                    && !self.identity_watched.contains(&page)
                    && let Err(what) = world.protect_guest(page * PAGE_SIZE, PAGE_SIZE, true)
                {
                    self.record_failure(host_error(GuestVirt(page * PAGE_SIZE), 1, what));
                }
            }
        }
        if let Some(pool) = world.address_spaces() {
            let first = guest_phys / PAGE_SIZE;
            let last = guest_phys.wrapping_add(len.saturating_sub(1)) / PAGE_SIZE;
            if pool.tracked_anywhere(first) || pool.tracked_anywhere(last) {
                pool.publish(btvmm_core::PoolEvent::Written {
                    guest_phys,
                    len: u16::try_from(len).unwrap_or(u16::MAX),
                });
            }
        }
        self.apply_written(world, planner, guest_phys, len);
    }

    /// The local effects of a write of `len` bytes at `guest_phys` (see
    /// [`Mmu::written`]), for this member's own writes and those it hears
    /// of from the pool.
    fn apply_written(
        &mut self,
        world: &mut dyn WorldServices,
        planner: &mut Planner,
        guest_phys: u32,
        len: u32,
    ) {
        let first = guest_phys / PAGE_SIZE;
        let last = guest_phys.wrapping_add(len.saturating_sub(1)) / PAGE_SIZE;
        if !self.live_tables.is_empty() {
            let directories = self.directory_pages(&*world);
            if directories.contains(&first) || directories.contains(&last) {
                self.live_tables.clear();
            }
        }
        // A write to the page directory may map a region an alias sits in.
        if self.shadow.is_some() && first == self.cr3 / PAGE_SIZE {
            let first_entry = (guest_phys % PAGE_SIZE) / 4;
            let last_entry = (guest_phys.wrapping_add(len.saturating_sub(1)) % PAGE_SIZE) / 4;
            for entry in first_entry..=last_entry.max(first_entry) {
                self.split.region_mapped_by_guest(world, entry << 22);
            }
        }
        for page in [first, last] {
            // Decoded code on the page is gone: its alias too, in every
            // process of the pool at once (they share the alias pages).
            if let Some(aliases) = world.code_aliases() {
                aliases.reset(page);
            }
            planner.invalidate_phys_page(GuestPhys(page * PAGE_SIZE));
            if let Some(shadow) = &mut self.shadow {
                shadow.untrack_code_page(GuestPhys(page * PAGE_SIZE));
            }
            if first == last {
                break;
            }
        }
        if let Some(shadow) = &mut self.shadow
            && shadow.tracker().is_tracked(GuestPhys(guest_phys))
                | shadow
                    .tracker()
                    .is_tracked(GuestPhys(guest_phys.wrapping_add(len.saturating_sub(1))))
        {
            shadow.after_tracked_write(GuestPhys(guest_phys), len);
        }
    }

    /// Records that the planner decoded code through the page holding
    /// `guest_virt` (see `Shadow::note_decoded`): the code page and the
    /// tables mapping it become write-tracked.
    ///
    /// # Errors
    ///
    /// When the host refuses a protection change, or the tables lie
    /// outside RAM.
    pub fn note_decoded(
        &mut self,
        world: &mut dyn WorldServices,
        guest_virt: u32,
    ) -> Result<(), ShadowError> {
        let regs = self.regs();
        let Some(shadow) = &mut self.shadow else {
            // Paging off: write-protect the identity view of the page.
            return protect_identity_page(
                self.identity,
                &mut self.identity_code,
                world,
                guest_virt / PAGE_SIZE,
            );
        };
        let mut deferred = DeferredMapper::default();
        shadow.note_decoded(&*world, &mut deferred, regs, GuestVirt(guest_virt))?;
        deferred.apply(&mut WorldMapper(world))
    }

    /// Keeps the page holding `guest_virt` write-protected for a
    /// debugger's watchpoint (every write to it traps and is emulated);
    /// cheap when it already is. A page the guest has not mapped is left
    /// alone (nothing can write it through this address).
    ///
    /// # Errors
    ///
    /// When the host refuses a protection change, or the tables lie
    /// outside RAM.
    pub fn watch(
        &mut self,
        world: &mut dyn WorldServices,
        guest_virt: u32,
    ) -> Result<(), ShadowError> {
        let Some(guest_phys) = self.peek_data(&*world, guest_virt) else {
            return Ok(());
        };
        let Some(shadow) = &mut self.shadow else {
            return protect_identity_page(
                self.identity,
                &mut self.identity_watched,
                world,
                guest_phys / PAGE_SIZE,
            );
        };
        if shadow
            .tracker()
            .reasons(GuestPhys(guest_phys))
            .contains(shadow_mmu::TrackReasons::WATCH)
        {
            return Ok(());
        }
        let mut deferred = DeferredMapper::default();
        shadow.track_watch_page(&mut deferred, GuestPhys(guest_phys))?;
        deferred.apply(&mut WorldMapper(world))
    }

    /// No page is watched any more: they become writable as before
    /// (identity pages that hold decoded code stay protected).
    ///
    /// # Errors
    ///
    /// When the host refuses a protection change.
    pub fn unwatch_all(&mut self, world: &mut dyn WorldServices) -> Result<(), ShadowError> {
        if let Some(shadow) = &mut self.shadow {
            shadow.untrack_watch_pages();
        }
        for page in std::mem::take(&mut self.identity_watched) {
            if !self.identity_code.contains(&page) {
                world
                    .protect_guest(page * PAGE_SIZE, PAGE_SIZE, true)
                    .map_err(|what| host_error(GuestVirt(page * PAGE_SIZE), 1, what))?;
            }
        }
        Ok(())
    }

    /// The pool member a CR3 load asked for, if the vCPU must move.
    #[must_use]
    pub fn pending_switch(&self) -> Option<usize> {
        self.pending_switch
    }

    /// Clears the pending switch (the monitor is handing over).
    pub fn take_pending_switch(&mut self) -> Option<usize> {
        self.pending_switch.take()
    }

    /// Tells the pool which pages this address space started or stopped
    /// tracking since the last call; the first to track a page and the
    /// last to stop publish it. Call before the guest runs and before
    /// handing the vCPU over.
    ///
    /// A page this address space stops tracking loses its code alias too
    /// (the split view's invariant: an alias page holds decoded bytes only
    /// while its guest page is write-protected, so that no write can make
    /// them stale unnoticed).
    pub fn sync_pool(&mut self, world: &mut dyn WorldServices) {
        let Some(shadow) = &mut self.shadow else {
            return;
        };
        let changes = shadow.take_tracking_changes();
        if let Some(aliases) = world.code_aliases() {
            for &(page, tracked) in &changes {
                if !tracked {
                    aliases.reset(page);
                }
            }
        }
        let Some(pool) = world.address_spaces() else {
            return;
        };
        for (page, tracked) in changes {
            if pool.count_tracking(page, tracked) {
                pool.publish(if tracked {
                    btvmm_core::PoolEvent::Tracked { page }
                } else {
                    btvmm_core::PoolEvent::Untracked { page }
                });
            }
        }
    }

    /// Takes this address space's tracking out of the pool's counts (its
    /// shadow is going away).
    fn uncount_all(pool: &dyn btvmm_core::AddressSpaces, shadow: &mut Shadow) {
        let _ = shadow.take_tracking_changes();
        let own: Vec<u32> = shadow
            .tracker()
            .pages()
            .filter(|(_, reasons)| reasons.intersects(shadow_mmu::TrackReasons::OWN))
            .map(|(page, _)| page)
            .collect();
        for page in own {
            if pool.count_tracking(page, false) {
                pool.publish(btvmm_core::PoolEvent::Untracked { page });
            }
        }
    }

    /// This member takes the vCPU (whose registers are `cpu`) over from
    /// another: it catches up with what the others changed meanwhile
    /// (pages they track, writes to tracked pages), then loads the CR3,
    /// as the hardware's TLB flush would.
    ///
    /// # Errors
    ///
    /// A broken table, or a host mapping failure.
    pub fn take_over(
        &mut self,
        world: &mut dyn WorldServices,
        planner: &mut Planner,
        cpu: &btvmm_core::cpu::Cpu,
    ) -> Result<Catchup, ShadowError> {
        self.tlb.flush();
        self.live_tables.clear();
        let pse_changed = (self.cr4 ^ cpu.cr4) & CR4_PSE != 0;
        self.cr0 = cpu.cr0;
        self.cr4 = cpu.cr4;
        self.pending_switch = None;
        let mut catchup = Catchup::default();
        let mut replays = Vec::new();
        let mut foreign = Vec::new();
        {
            let Some(pool) = world.address_spaces() else {
                return Ok(catchup);
            };
            let me = pool.member();
            let mut restart = self.shadow.is_none() || pool.epoch() != self.pool_epoch;
            if !restart {
                let next = pool.events_since(self.pool_seq, &mut |author, event| {
                    if usize::from(author) == me {
                        return;
                    }
                    replays.push(match event {
                        btvmm_core::PoolEvent::Tracked { page } => Replay::Tracked(page),
                        btvmm_core::PoolEvent::Untracked { page } => Replay::Untracked {
                            page,
                            still_tracked: false,
                        },
                        btvmm_core::PoolEvent::Written { guest_phys, len } => Replay::Written {
                            guest_phys,
                            len: u32::from(len),
                        },
                        btvmm_core::PoolEvent::Released { page } => Replay::Released(page),
                    });
                });
                match next {
                    Some(seq) => self.pool_seq = seq,
                    None => restart = true,
                }
            }
            for replay in &mut replays {
                if let Replay::Untracked {
                    page,
                    still_tracked,
                } = replay
                {
                    *still_tracked = pool.tracked_anywhere(*page);
                }
            }
            if restart {
                replays.clear();
                self.pool_seq = pool.log_head();
                let pages = world.ram_size() / PAGE_SIZE;
                foreign = (0..pages)
                    .filter(|&page| pool.tracked_anywhere(page))
                    .collect();
            }
            self.pool_epoch = pool.epoch();
            catchup.restarted = restart;
            catchup.events = replays.len() as u64;
            pool.set_key(me, Some(cpu.cr3));
            pool.touch(me);
        }
        if catchup.restarted {
            planner.invalidate_all();
            self.forget_all_code(world);
            match &mut self.shadow {
                Some(shadow) => shadow.flush_all(&mut WorldMapper(world))?,
                None => self.shadow = Some(Shadow::new(cpu.cr3)),
            }
        } else if pse_changed && let Some(shadow) = &mut self.shadow {
            shadow.flush_all(&mut WorldMapper(world))?;
            planner.invalidate_all();
            self.forget_all_code(world);
        }
        let Some(shadow) = &mut self.shadow else {
            return Ok(catchup);
        };
        let mut deferred = DeferredMapper::default();
        for page in foreign {
            // Its own tracking counts too; FOREIGN then only matters once
            // this address space stops tracking the page itself.
            if !shadow
                .tracker()
                .reasons(GuestPhys(page * PAGE_SIZE))
                .intersects(shadow_mmu::TrackReasons::OWN)
            {
                shadow.track_foreign(&mut deferred, GuestPhys(page * PAGE_SIZE))?;
            }
        }
        for replay in replays {
            match replay {
                Replay::Tracked(page) => {
                    shadow.track_foreign(&mut deferred, GuestPhys(page * PAGE_SIZE))?;
                }
                Replay::Untracked {
                    page,
                    still_tracked: false,
                } => shadow.untrack_foreign(GuestPhys(page * PAGE_SIZE)),
                Replay::Untracked { .. } => {}
                Replay::Released(page) => {
                    // The author reset the alias page already.
                    let guest_phys = GuestPhys(page * PAGE_SIZE);
                    planner.invalidate_phys_page(guest_phys);
                    shadow.release_everywhere(guest_phys);
                }
                Replay::Written { guest_phys, len } => {
                    // The author reset the alias pages already.
                    planner.invalidate_phys_page(GuestPhys(guest_phys & !(PAGE_SIZE - 1)));
                    shadow.after_tracked_write(GuestPhys(guest_phys), len);
                    let last = guest_phys.wrapping_add(len.saturating_sub(1)) & !(PAGE_SIZE - 1);
                    planner.invalidate_phys_page(GuestPhys(last));
                    // A write to this address space's directory may map
                    // a region an alias sits in: checked after the load.
                }
            }
        }
        // The CR3 load.
        let switch = shadow.set_cr3(&*world, &mut deferred, cpu.cr3)?;
        deferred.apply(&mut WorldMapper(world))?;
        for region in switch.dropped_regions {
            planner.invalidate_virt_range(region * 1024..(region + 1) * 1024);
            self.split
                .forget_virt_pages(world, region * 1024..(region + 1) * 1024);
        }
        for page in switch.dropped_decoded {
            planner.invalidate_virt_page(GuestVirt(page * PAGE_SIZE));
            self.split.forget_virt_pages(world, page..page + 1);
        }
        self.cr3 = cpu.cr3;
        self.check_alias_regions(world);
        Ok(catchup)
    }

    /// A host page fault of natively running guest code at `guest_virt`;
    /// None while paging is off (the identity view never faults on RAM).
    ///
    /// # Errors
    ///
    /// A broken table, or a host mapping failure.
    pub fn handle_fault(
        &mut self,
        world: &mut dyn WorldServices,
        guest_virt: u32,
        access: Access,
    ) -> Result<Option<FaultOutcome>, ShadowError> {
        let regs = self.regs();
        let Some(shadow) = &mut self.shadow else {
            return Ok(None);
        };
        // In the user view the walk itself keeps supervisor pages out: a
        // user access to one is the guest's #PF. The walk updates guest RAM
        // through the world while the shadow asks for mapping changes: the
        // changes are collected and made after it.
        let mut deferred = DeferredMapper::default();
        let outcome = shadow.handle_fault(
            &mut *world,
            &mut deferred,
            regs,
            GuestVirt(guest_virt),
            access,
        )?;
        deferred.apply(&mut WorldMapper(world))?;
        if let FaultOutcome::TrackedWrite {
            guest_phys,
            reasons,
        } = outcome
        {
            self.tracked_write_seen(world, guest_phys, reasons);
        }
        Ok(Some(outcome))
    }

    /// A native write hit a tracked page (it is emulated next). A page
    /// this address space tracks only as one of its page tables that no
    /// page directory of the pool names any more is a table freed since
    /// and reused for anything, often busy kernel data (Linux's batches of
    /// pages to free, for one): its stale tracking would make every write
    /// there a trap for as long as the shadow lives. It is released (the
    /// shadow entries made through it become stale); a table linked again
    /// is tracked again by the walk that uses it. Pages found still named
    /// are remembered until a directory changes.
    ///
    /// A page only other members track (FOREIGN) is released pool-wide
    /// under the same check ([`Mmu::release_foreign`]). Dropping only this
    /// member's protection, without telling the owners, was tried once and
    /// broke a fork-exec run (ECHILD in the parent's wait): an owner that
    /// loads a directory naming the table again at the same index keeps
    /// the entries of a region whose directory entry did not change, which
    /// is right only while every write to the table reached it.
    fn tracked_write_seen(
        &mut self,
        world: &mut dyn WorldServices,
        guest_phys: GuestPhys,
        reasons: TrackReasons,
    ) {
        let page = guest_phys.page();
        let directories = self.directory_pages(world);
        if directories.contains(&page) {
            self.live_tables.clear();
            return;
        }
        if reasons == TrackReasons::FOREIGN {
            self.release_foreign(world, &directories, guest_phys);
            return;
        }
        // Only this address space's own table tracking: what another
        // member tracks a page for (a table, its directory, code it
        // decoded) is not known here.
        if reasons != TrackReasons::PAGE_TABLE || self.live_tables.contains(&page) {
            return;
        }
        if named_by(world, &directories, page) {
            self.live_tables.insert(page);
        } else if let Some(shadow) = &mut self.shadow {
            shadow.release_table(guest_phys);
            self.tables_released += 1;
        }
    }

    /// A native write hit a page only other members of the pool track
    /// (FOREIGN). If no directory of the pool names it, no member can be
    /// using it as a page table now: it is a table of an address space
    /// that changed or ended, or code decoded once, reused as data, and
    /// every write to it would trap for as long as those members live.
    /// The tracking is released pool-wide ([`btvmm_core::PoolEvent::Released`]):
    /// this member stops trapping at once, the others drop what they
    /// derived from the page before they run again (they run only after
    /// replaying the log, or start afresh when they missed it), so the
    /// writes they do not see cannot leave them stale.
    fn release_foreign(
        &mut self,
        world: &mut dyn WorldServices,
        directories: &[u32],
        guest_phys: GuestPhys,
    ) {
        let page = guest_phys.page();
        if self.live_tables.contains(&page) {
            return;
        }
        if named_by(&*world, directories, page) {
            self.live_tables.insert(page);
            return;
        }
        let Some(shadow) = &mut self.shadow else {
            return;
        };
        if let Some(pool) = world.address_spaces() {
            pool.release_everywhere(page);
            pool.publish(btvmm_core::PoolEvent::Released { page });
        }
        shadow.untrack_foreign(guest_phys);
        if let Some(aliases) = world.code_aliases() {
            aliases.reset(page);
        }
        self.foreign_released += 1;
    }

    /// Pages whose stale tracking by other members was released
    /// pool-wide so far.
    #[must_use]
    pub fn foreign_released(&self) -> u64 {
        self.foreign_released
    }

    /// The guest-physical page numbers of the page directories of the pool
    /// (this address space's first).
    fn directory_pages(&self, world: &dyn WorldServices) -> Vec<u32> {
        let mut pages = vec![self.cr3 / PAGE_SIZE];
        if let Some(pool) = world.address_spaces() {
            pages.extend(
                (0..pool.members())
                    .filter_map(|member| pool.key(member))
                    .map(|cr3| cr3 / PAGE_SIZE),
            );
        }
        pages
    }

    /// Pages whose stale table tracking was released so far.
    #[must_use]
    pub fn tables_released(&self) -> u64 {
        self.tables_released
    }

    /// Every alias mapping goes, and every alias page forgets its code:
    /// the tracking that kept them valid is gone (paging turned on or off,
    /// a PSE change, a fresh shadow).
    fn forget_all_code(&mut self, world: &mut dyn WorldServices) {
        self.split.drop_all(world);
        if let Some(aliases) = world.code_aliases() {
            aliases.reset_all();
        }
    }

    /// The guest's page-directory entry for `linear` (None with paging
    /// off or a directory outside RAM).
    #[must_use]
    pub fn pde(&self, world: &dyn WorldServices, linear: u32) -> Option<u32> {
        self.shadow.as_ref()?;
        let directory = self.cr3 & !(PAGE_SIZE - 1);
        world
            .read_u32(GuestPhys(directory + (linear >> 22) * 4))
            .ok()
    }

    /// Drops the aliases in regions the current page directory maps (after
    /// a CR3 load or its replay).
    fn check_alias_regions(&mut self, world: &mut dyn WorldServices) {
        for region in self.split.alias_regions() {
            if self.pde(&*world, region).is_none_or(|entry| entry & 1 != 0) {
                self.split.region_mapped_by_guest(world, region);
            }
        }
    }

    /// Switches between the kernel view (every page the tables map may be
    /// mapped) and the user view (no supervisor page below [`USER_TOP`]),
    /// as the guest is about to run at CPL 0 or CPL 3.
    ///
    /// # Errors
    ///
    /// When the host refuses to unmap.
    pub fn set_user_view(
        &mut self,
        world: &mut dyn WorldServices,
        user: bool,
    ) -> Result<(), ShadowError> {
        if user == self.user_view {
            return Ok(());
        }
        self.user_view = user;
        if user && let Some(shadow) = &mut self.shadow {
            shadow.drop_supervisor_below(&mut WorldMapper(world), GuestVirt(USER_TOP))?;
        }
        Ok(())
    }
}

/// The shadow of a guest user-mode segment descriptor: the same, with its
/// limit cut so that no offset reaches [`USER_TOP`] (segment truncation,
/// DESIGN.md section 2). A data segment that cannot be cut that way (it
/// starts at or above [`USER_TOP`], or grows down past it) becomes one with
/// no valid offset at all: every access through it raises #GP natively and
/// is emulated against the guest's own descriptor. None for a code segment
/// that starts at or above [`USER_TOP`]: no shadow of it is safe.
#[must_use]
pub fn truncate_user_segment(descriptor: &Descriptor) -> Option<Descriptor> {
    let mut truncated = *descriptor;
    if !descriptor.code_or_data || !descriptor.present {
        return Some(truncated);
    }
    let highest_allowed = USER_TOP - 1;
    let base = descriptor.base;
    let expand_down = !descriptor.is_code()
        && descriptor.kind & btvmm_core::descriptor::TYPE_EXPAND_DOWN_CONFORMING != 0;
    if expand_down {
        let upper = if descriptor.big { u32::MAX } else { 0xffff };
        if u64::from(base) + u64::from(upper) > u64::from(highest_allowed) {
            set_limit(&mut truncated, upper);
        }
        return Some(truncated);
    }
    if base > highest_allowed {
        if descriptor.is_code() {
            return None;
        }
        // Expand-down, 32-bit, limit at the top: offsets above 4 GiB - 1
        // only, which is none.
        truncated.kind |= btvmm_core::descriptor::TYPE_EXPAND_DOWN_CONFORMING;
        truncated.big = true;
        set_limit(&mut truncated, u32::MAX);
        return Some(truncated);
    }
    let room = highest_allowed - base;
    if descriptor.limit > room {
        set_limit(&mut truncated, room);
    }
    Some(truncated)
}

/// Sets a byte limit no higher than `limit` that the descriptor format can
/// hold: byte-granular up to 1 MiB, 4 KiB-granular (rounded down) above.
pub(crate) fn set_limit(descriptor: &mut Descriptor, limit: u32) {
    if limit <= 0xf_ffff {
        descriptor.granular = false;
        descriptor.limit = limit;
    } else {
        descriptor.granular = true;
        descriptor.limit = if limit & 0xfff == 0xfff {
            limit
        } else {
            (limit & !0xfff) - 1
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(access_kind: u8, base: u32, limit: u32) -> Descriptor {
        Descriptor {
            base,
            limit,
            kind: access_kind,
            code_or_data: true,
            dpl: 3,
            present: true,
            available: false,
            big: true,
            granular: limit > 0xf_ffff,
        }
    }

    #[test]
    fn flat_user_segments_end_below_user_top() {
        let code = truncate_user_segment(&flat(0xb, 0, u32::MAX)).expect("code");
        assert_eq!(
            (code.base, code.limit, code.granular),
            (0, USER_TOP - 1, true)
        );
        let data = truncate_user_segment(&flat(0x3, 0, u32::MAX)).expect("data");
        assert_eq!(data.limit, USER_TOP - 1);
    }

    #[test]
    fn small_segments_are_kept() {
        let tls = flat(0x3, 0x0804_a000, 0xfff);
        assert_eq!(truncate_user_segment(&tls), Some(tls));
    }

    #[test]
    fn an_unaligned_base_rounds_the_limit_down_to_what_the_format_holds() {
        let tls = truncate_user_segment(&flat(0x3, 0x0804_a123, u32::MAX)).expect("data");
        assert!(u64::from(tls.base) + u64::from(tls.limit) < u64::from(USER_TOP));
        assert_eq!(tls.limit & 0xfff, 0xfff, "4 KiB-granular");
        assert!(u64::from(tls.base) + u64::from(tls.limit) >= u64::from(USER_TOP) - 4096);
        let near_top = truncate_user_segment(&flat(0x3, 0xbfff_f800, u32::MAX)).expect("data");
        assert_eq!((near_top.limit, near_top.granular), (0x7ff, false));
    }

    #[test]
    fn segments_above_user_top_have_no_usable_offset() {
        let data = truncate_user_segment(&flat(0x3, USER_TOP, 0xfff)).expect("data");
        assert_ne!(data.kind & 4, 0, "expand-down");
        assert_eq!((data.limit, data.big), (u32::MAX, true));
        assert_eq!(truncate_user_segment(&flat(0xb, USER_TOP, 0xfff)), None);
        let down = truncate_user_segment(&flat(0x7, 0x1000_0000, 0xfff)).expect("data");
        assert_eq!(down.limit, u32::MAX);
    }

    fn cached(tlb: &mut Tlb, writable: bool, user: bool, dirty: bool) {
        tlb.directory_page = 0x10;
        tlb.insert(TlbEntry {
            virt_page: 0x400,
            phys_page: 0x99,
            writable,
            user,
            dirty,
            table_page: 0x11,
        });
    }

    #[test]
    fn the_translation_cache_keeps_the_guests_rights() {
        let mut tlb = Tlb::default();
        cached(&mut tlb, false, false, false);
        assert_eq!(tlb.lookup(0x400, Access::read(false), true), Some(0x99));
        assert_eq!(tlb.lookup(0x400, Access::read(true), true), None, "user");
        assert_eq!(tlb.lookup(0x400, Access::write(false), true), None);
        assert_eq!(tlb.lookup(0x440, Access::read(false), true), None);
        cached(&mut tlb, false, false, true);
        assert_eq!(
            tlb.lookup(0x400, Access::write(false), true),
            None,
            "CR0.WP"
        );
        assert_eq!(tlb.lookup(0x400, Access::write(false), false), Some(0x99));
        cached(&mut tlb, true, true, false);
        // A write must walk to set the Dirty bit.
        assert_eq!(tlb.lookup(0x400, Access::write(true), true), None);
        cached(&mut tlb, true, true, true);
        assert_eq!(tlb.lookup(0x400, Access::write(true), true), Some(0x99));
    }

    #[test]
    fn writes_to_the_directory_or_a_cached_table_drop_the_cache() {
        let mut tlb = Tlb::default();
        cached(&mut tlb, true, true, true);
        tlb.written(0x12);
        assert!(tlb.lookup(0x400, Access::read(true), true).is_some());
        tlb.written(0x11);
        assert!(tlb.lookup(0x400, Access::read(true), true).is_none());
        cached(&mut tlb, true, true, true);
        tlb.written(0x10);
        assert!(tlb.lookup(0x400, Access::read(true), true).is_none());
    }
}
