//! The pool of world processes (DESIGN.md section 2): one process per
//! recently used guest address space, so that switching back to it finds
//! its shadow mappings still in place. The processes share one region
//! (a memfd the host creates) holding
//!
//! - which member runs the vCPU now (the host kicks it), and each member's
//!   pid as it sees itself (non-zero: attached),
//! - each member's key (the CR3 it shadows) and last use (LRU),
//! - the vCPU state in transit and one futex word per member: a handoff
//!   writes the state, makes the target active, wakes it and waits on its
//!   own word until some member hands the vCPU back,
//! - a ring of [`PoolEvent`]s (pages that became write-tracked somewhere,
//!   emulated writes to tracked pages) that a member replays when it takes
//!   over, and a count per guest-physical page of the address spaces that
//!   track it.
//!
//! Only the active member writes the state, the log and the counts; the
//! handoff's sequentially consistent stores and the futex order those
//! writes before the next member reads them.
//!
//! Kicks and the handoff: the host stores the interrupt lines, then reads
//! `active` and kicks that member; a member taking over stores `active`
//! before it reads the lines. Either the host sees the new member (and
//! kicks it), or the new member sees the new lines: no change is missed.
//! A kick that reaches a waiting member stays pending until it runs again
//! and is then a harmless extra look.

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU32, AtomicU64};

use btvmm_core::{AddressSpaces, PoolEvent};

use crate::WorldError;
use crate::sys::futex;
use crate::sys::memory::SharedRegion;

/// Most members a pool has.
pub const MAX_MEMBERS: usize = 8;
/// Events the log keeps; a member that missed more starts afresh, and a
/// fresh start throws away every decoded block and alias of the guest
/// kernel's code. A fork and exec in Linux publishes some 20,000 events
/// (page-table writes, tables tracked and untracked): with 16,384 slots
/// each fork-exec restarted two members (5,400 blocks decoded again, 125
/// ms a process); with these 2 MiB of slots, 3 restarts in 50 fork-execs
/// and 62-68 ms a process.
const LOG_CAPACITY: usize = 131_072;
/// Bytes of vCPU state a handoff carries at most.
const STATE_CAPACITY: usize = 64 * 1024;
const PAGE: usize = 4096;

#[repr(C)]
struct Header {
    members: AtomicU32,
    active: AtomicU32,
    turn: [AtomicU32; MAX_MEMBERS],
    pids: [AtomicI32; MAX_MEMBERS],
    /// CR3 + 1 (0: none).
    keys: [AtomicU64; MAX_MEMBERS],
    stamps: [AtomicU64; MAX_MEMBERS],
    clock: AtomicU64,
    epoch: AtomicU64,
    log_head: AtomicU64,
    state_len: AtomicU32,
    pages: AtomicU32,
}

#[repr(C)]
struct LogSlot {
    /// Sequence number + 1 of the event in `word` (0: never written).
    seq: AtomicU64,
    word: AtomicU64,
}

const LOG_OFFSET: usize = PAGE;
const STATE_OFFSET: usize = LOG_OFFSET + LOG_CAPACITY * std::mem::size_of::<LogSlot>();
const COUNTS_OFFSET: usize = STATE_OFFSET + STATE_CAPACITY;
const _: () = assert!(std::mem::size_of::<Header>() <= PAGE);

/// One member's view of the pool (or the host's, which is no member).
#[derive(Debug)]
pub struct Pool {
    region: SharedRegion,
    member: usize,
}

impl Pool {
    /// Bytes of the region for guest RAM of `ram_pages` pages.
    #[must_use]
    pub fn bytes_for(ram_pages: u32) -> usize {
        (COUNTS_OFFSET + ram_pages as usize).next_multiple_of(PAGE)
    }

    /// Host: a pool of `members` processes for guest RAM of `ram_pages`
    /// pages. Member 0 runs the guest first.
    pub fn create(members: usize, ram_pages: u32) -> Result<Self, WorldError> {
        if !(1..=MAX_MEMBERS).contains(&members) {
            return Err(WorldError::Host {
                what: "creating the pool of world processes",
                source: std::io::Error::other(format!(
                    "{members} members: must be 1 to {MAX_MEMBERS}"
                )),
            });
        }
        let pool = Self {
            region: SharedRegion::create(Self::bytes_for(ram_pages))?,
            member: usize::MAX,
        };
        let header = pool.header();
        #[allow(clippy::cast_possible_truncation)] // at most MAX_MEMBERS
        header.members.store(members as u32, SeqCst);
        header.pages.store(ram_pages, SeqCst);
        header.active.store(0, SeqCst);
        Ok(pool)
    }

    /// Member `member`: maps the region the host created.
    ///
    /// # Safety
    ///
    /// `fd` must be the pool memfd the host created for `ram_pages`, owned
    /// by this process from now on.
    pub unsafe fn from_raw_fd(
        fd: RawFd,
        ram_pages: u32,
        member: usize,
    ) -> Result<Self, WorldError> {
        // SAFETY: forwarded contract.
        let region = unsafe { SharedRegion::from_raw_fd(fd, Self::bytes_for(ram_pages))? };
        let pool = Self { region, member };
        let header = pool.header();
        if header.pages.load(SeqCst) != ram_pages || member >= pool.members() {
            return Err(WorldError::Host {
                what: "attaching to the pool of world processes",
                source: std::io::Error::other("the pool does not match this world"),
            });
        }
        // SAFETY: getpid takes no arguments.
        header.pids[member].store(unsafe { libc::getpid() }, SeqCst);
        Ok(pool)
    }

    /// The memfd (to hand to the members).
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.region.fd()
    }

    /// The shared region (its words are futexes).
    #[must_use]
    pub fn region(&self) -> &SharedRegion {
        &self.region
    }

    /// The size of the region.
    #[must_use]
    pub fn size(&self) -> usize {
        self.region.size()
    }

    /// Host: the member that runs the vCPU now, once it has attached
    /// (None when the word the members write names no member). The host
    /// maps it to the process it started: a pid a member writes is never
    /// trusted (each world may be process 1 of a PID namespace of its own
    /// anyway).
    #[must_use]
    pub fn active_member(&self) -> Option<usize> {
        let header = self.header();
        let active = header.active.load(SeqCst) as usize;
        if active >= self.members() {
            return None;
        }
        let attached = header.pids.get(active)?.load(SeqCst) != 0;
        attached.then_some(active)
    }

    /// Host: the word naming the active member, as the members wrote it.
    #[must_use]
    pub fn active_word(&self) -> u32 {
        self.header().active.load(SeqCst)
    }

    /// Attacker tests only (`World::scribble`): what a hostile member can
    /// write into the header, here naming `pid` as the active member.
    pub fn forge_active(&self, pid: i32) {
        let header = self.header();
        for slot in &header.pids {
            slot.store(pid, SeqCst);
        }
        header.active.store(0, SeqCst);
    }

    fn header(&self) -> &Header {
        // SAFETY: the region is a page-aligned shared mapping larger than
        // Header (bytes_for), zeroed by ftruncate; every field is an
        // atomic, valid for any bit pattern and sound to share.
        unsafe { &*self.region.as_ptr().cast::<Header>() }
    }

    fn slot(&self, seq: u64) -> &LogSlot {
        #[allow(clippy::cast_possible_truncation)] // reduced modulo the capacity
        let index = (seq % LOG_CAPACITY as u64) as usize;
        // SAFETY: LOG_OFFSET + LOG_CAPACITY slots lie inside the region
        // (bytes_for), 16-byte aligned after a page; atomics as above.
        unsafe {
            &*self
                .region
                .as_ptr()
                .add(LOG_OFFSET)
                .cast::<LogSlot>()
                .add(index)
        }
    }

    fn count(&self, page: u32) -> Option<&AtomicU8> {
        if page >= self.header().pages.load(SeqCst) {
            return None;
        }
        // SAFETY: one byte per RAM page after COUNTS_OFFSET lies inside the
        // region (bytes_for); AtomicU8 has no alignment requirement.
        Some(unsafe {
            &*self
                .region
                .as_ptr()
                .add(COUNTS_OFFSET + page as usize)
                .cast::<AtomicU8>()
        })
    }

    fn write_state(&self, state: &[u8]) {
        let len = state.len().min(STATE_CAPACITY);
        // SAFETY: [STATE_OFFSET, +STATE_CAPACITY) lies inside the region;
        // only the active member touches it, and the handoff's atomics
        // order this copy before the next member's read.
        unsafe {
            std::ptr::copy_nonoverlapping(
                state.as_ptr(),
                self.region.as_ptr().add(STATE_OFFSET),
                len,
            );
        }
        #[allow(clippy::cast_possible_truncation)] // at most STATE_CAPACITY
        self.header().state_len.store(len as u32, SeqCst);
    }

    fn read_state(&self, back: &mut Vec<u8>) {
        let len = (self.header().state_len.load(SeqCst) as usize).min(STATE_CAPACITY);
        back.clear();
        back.resize(len, 0);
        // SAFETY: as in write_state; the member that wrote it is waiting.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.region.as_ptr().add(STATE_OFFSET),
                back.as_mut_ptr(),
                len,
            );
        }
    }

    fn wait_own_turn(&self) {
        let turn = &self.header().turn[self.member];
        while turn.swap(0, SeqCst) == 0 {
            futex::wait(turn, 0, None);
        }
        #[allow(clippy::cast_possible_truncation)] // at most MAX_MEMBERS
        self.header().active.store(self.member as u32, SeqCst);
    }
}

impl AddressSpaces for Pool {
    fn members(&self) -> usize {
        (self.header().members.load(SeqCst) as usize).min(MAX_MEMBERS)
    }

    fn member(&self) -> usize {
        self.member
    }

    fn key(&self, member: usize) -> Option<u32> {
        let key = self.header().keys.get(member)?.load(SeqCst);
        #[allow(clippy::cast_possible_truncation)] // a CR3 + 1
        key.checked_sub(1).map(|cr3| cr3 as u32)
    }

    fn set_key(&self, member: usize, cr3: Option<u32>) {
        if let Some(key) = self.header().keys.get(member) {
            key.store(cr3.map_or(0, |cr3| u64::from(cr3) + 1), SeqCst);
        }
    }

    fn touch(&self, member: usize) {
        let header = self.header();
        let now = header.clock.fetch_add(1, SeqCst) + 1;
        if let Some(stamp) = header.stamps.get(member) {
            stamp.store(now, SeqCst);
        }
    }

    fn least_recent(&self, except: usize) -> usize {
        let header = self.header();
        (0..self.members())
            .filter(|&member| member != except)
            .min_by_key(|&member| header.stamps[member].load(SeqCst))
            .unwrap_or(except)
    }

    fn epoch(&self) -> u64 {
        self.header().epoch.load(SeqCst)
    }

    fn bump_epoch(&self) {
        self.header().epoch.fetch_add(1, SeqCst);
    }

    fn hand_over(&self, to: usize, state: &[u8], back: &mut Vec<u8>) {
        let header = self.header();
        self.write_state(state);
        #[allow(clippy::cast_possible_truncation)] // at most MAX_MEMBERS
        header.active.store(to as u32, SeqCst);
        if let Some(turn) = header.turn.get(to) {
            turn.store(1, SeqCst);
            futex::wake(turn);
        }
        self.wait_own_turn();
        self.read_state(back);
    }

    fn wait_turn(&self, back: &mut Vec<u8>) {
        self.wait_own_turn();
        self.read_state(back);
    }

    fn publish(&self, event: PoolEvent) {
        let seq = self.header().log_head.load(SeqCst);
        let slot = self.slot(seq);
        #[allow(clippy::cast_possible_truncation)] // at most MAX_MEMBERS
        slot.word.store(event.encode(self.member as u8), SeqCst);
        slot.seq.store(seq + 1, SeqCst);
        self.header().log_head.store(seq + 1, SeqCst);
    }

    fn log_head(&self) -> u64 {
        self.header().log_head.load(SeqCst)
    }

    fn events_since(&self, from: u64, each: &mut dyn FnMut(u8, PoolEvent)) -> Option<u64> {
        let head = self.log_head();
        if head.saturating_sub(from) > LOG_CAPACITY as u64 {
            return None;
        }
        for seq in from..head {
            let slot = self.slot(seq);
            if slot.seq.load(SeqCst) != seq + 1 {
                return None;
            }
            if let Some((author, event)) = PoolEvent::decode(slot.word.load(SeqCst)) {
                each(author, event);
            }
        }
        Some(head)
    }

    fn count_tracking(&self, page: u32, tracked: bool) -> bool {
        let Some(count) = self.count(page) else {
            return false;
        };
        if tracked {
            count.fetch_add(1, SeqCst) == 0
        } else {
            count
                .fetch_update(SeqCst, SeqCst, |value| value.checked_sub(1))
                .is_ok_and(|old| old == 1)
        }
    }

    fn tracked_anywhere(&self, page: u32) -> bool {
        self.count(page).is_some_and(|count| count.load(SeqCst) > 0)
    }

    fn release_everywhere(&self, page: u32) {
        if let Some(count) = self.count(page) {
            count.store(0, SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A second view of the pool in this process, as member `member`.
    fn member_view(pool: &Pool, pages: u32, member: usize) -> Pool {
        // SAFETY: dup gives this view its own descriptor of the memfd.
        let fd = unsafe { libc::dup(pool.fd().as_raw_fd()) };
        assert!(fd >= 0);
        // SAFETY: the memfd the pool created, for the same RAM size.
        unsafe { Pool::from_raw_fd(fd, pages, member) }.expect("attach")
    }

    #[test]
    fn the_vcpu_goes_round_the_members_and_back() {
        let host = Pool::create(3, 64).expect("pool");
        let first = member_view(&host, 64, 0);
        let others: Vec<_> = (1..3)
            .map(|index| {
                let member = member_view(&host, 64, index);
                std::thread::spawn(move || {
                    let mut state = Vec::new();
                    member.wait_turn(&mut state);
                    state.push(u8::try_from(member.member()).expect("small"));
                    let next = (member.member() + 1) % 3;
                    let mut back = Vec::new();
                    member.hand_over(next, &state, &mut back);
                    back
                })
            })
            .collect();
        let mut state = Vec::new();
        first.hand_over(1, &[9], &mut state);
        assert_eq!(state, vec![9, 1, 2]);
        assert_eq!(host.header().active.load(SeqCst), 0);
        // The others wait for a turn inside their handoff: give them one
        // (with the state left as it is) so that their threads end.
        for waiting in 1..3 {
            let turn = &host.header().turn[waiting];
            turn.store(1, SeqCst);
            futex::wake(turn);
        }
        for thread in others {
            assert_eq!(thread.join().expect("member thread"), vec![9, 1, 2]);
        }
    }

    #[test]
    fn the_log_replays_in_order_and_reports_overflow() {
        let host = Pool::create(2, 16).expect("pool");
        let member = member_view(&host, 16, 1);
        let start = member.log_head();
        member.publish(PoolEvent::Tracked { page: 3 });
        member.publish(PoolEvent::Written {
            guest_phys: 0x3004,
            len: 4,
        });
        let mut seen = Vec::new();
        let next = member
            .events_since(start, &mut |author, event| seen.push((author, event)))
            .expect("in the log");
        assert_eq!(next, start + 2);
        assert_eq!(
            seen,
            vec![
                (1, PoolEvent::Tracked { page: 3 }),
                (
                    1,
                    PoolEvent::Written {
                        guest_phys: 0x3004,
                        len: 4
                    }
                )
            ]
        );
        for page in 0..=u32::try_from(LOG_CAPACITY).expect("small") {
            member.publish(PoolEvent::Untracked { page });
        }
        assert_eq!(member.events_since(next, &mut |_, _| {}), None);
    }

    #[test]
    fn counts_say_when_a_page_becomes_tracked_and_untracked() {
        let host = Pool::create(2, 16).expect("pool");
        assert!(host.count_tracking(5, true));
        assert!(!host.count_tracking(5, true));
        assert!(host.tracked_anywhere(5));
        assert!(!host.count_tracking(5, false));
        assert!(host.count_tracking(5, false));
        assert!(!host.tracked_anywhere(5));
        assert!(!host.count_tracking(5, false), "never below zero");
        assert!(!host.count_tracking(99, true), "outside RAM: ignored");
        // Released pool-wide: nobody counts; the owners' later untracking
        // does not go below zero, and a new tracker counts from one.
        assert!(host.count_tracking(6, true));
        assert!(!host.count_tracking(6, true));
        host.release_everywhere(6);
        assert!(!host.tracked_anywhere(6));
        assert!(!host.count_tracking(6, false));
        assert!(host.count_tracking(6, true));
        host.release_everywhere(99);
    }

    #[test]
    fn keys_and_least_recent_use() {
        let host = Pool::create(3, 16).expect("pool");
        host.set_key(1, Some(0x1000));
        assert_eq!(host.key(1), Some(0x1000));
        assert_eq!(host.key(2), None);
        host.set_key(0, Some(0));
        assert_eq!(host.key(0), Some(0), "CR3 0 is a key too");
        host.touch(0);
        host.touch(2);
        host.touch(1);
        assert_eq!(host.least_recent(1), 0);
        assert_eq!(host.least_recent(0), 2);
    }
}
