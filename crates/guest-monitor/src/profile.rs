//! Per-site profiles of the split view's interpreted runs (issue 12 item
//! 3): after an instruction the monitor emulates, it interprets on while
//! the next one it must emulate may be close, since a native run that
//! reaches it soon pays a whole trap for a few instructions. How close
//! that next one is depends on the site: after Linux's SAVE_ALL segment
//! pushes it is two instructions on, after the STI of a system call's
//! entry it is the whole system call away. A fixed run length either
//! wastes interpreting at the far sites or traps again at the near ones
//! just past it.
//!
//! So each site (the guest-linear address of the emulated instruction,
//! or of the handler an entry starts at) learns its own run length: the
//! first run from a site explores up to [`Policy::explore`] instructions
//! (about what a trap costs in interpreted instructions: going further
//! could not pay); a run that reaches an emulated instruction after d
//! interpreted ones makes d the site's length, one that does not makes
//! the site far (no interpreting from it). A site whose learned length
//! stops reaching (its code took another path) explores again after a few
//! misses, and every site re-explores now and then.
//!
//! Only performance depends on this: interpreting is exact, and whatever
//! runs natively is decoded and judged as always. A fixed table, no
//! allocation after creation (the monitor runs in a signal handler).
//!

use crate::counters::{Counter, Counters};
use crate::policy::Policy;

/// Slots in the table (a power of two); sites that share a slot evict
/// each other and explore again.
const SLOTS: usize = 4096;

/// Misses (runs that reached their learned length without meeting an
/// emulated instruction) after which a site explores again.
const MISSES_TO_EXPLORE: u8 = 4;

/// Visits after which a site explores again however it did: code paths
/// change with the guest's state.
const VISITS_TO_EXPLORE: u16 = 512;

/// What a site has learned.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// Whether the slot holds a site.
    used: bool,
    /// The guest-linear address of the site.
    site: u32,
    /// The run length learned (0: far).
    length: u32,
    /// The current run from here explores.
    exploring: bool,
    /// The next run from here explores.
    explore_next: bool,
    /// Misses since the site last reached.
    misses: u8,
    /// Visits since the site last explored.
    visits: u16,
}

/// How a run from a site starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunStart {
    /// Interpret at most this many instructions before resuming natively.
    pub length: u32,
    /// The run explores (the site is new, or explores again).
    pub exploring: bool,
}

/// The sites' profiles.
#[derive(Debug)]
pub struct RunProfiles {
    slots: Box<[Slot]>,
}

impl Default for RunProfiles {
    fn default() -> Self {
        Self::new()
    }
}

impl RunProfiles {
    /// Profiles that know no site.
    #[must_use]
    pub fn new() -> Self {
        Self {
            slots: vec![Slot::default(); SLOTS].into_boxed_slice(),
        }
    }

    /// The slot a site goes to.
    fn index(site: u32) -> usize {
        // Fibonacci hashing: kernel code addresses share their high bits.
        (site.wrapping_mul(0x9e37_79b9) >> (32 - SLOTS.trailing_zeros())) as usize
    }

    /// A run starts after the instruction at `site` (or at the handler
    /// `site` of an entry): how far it goes, exploring up to `explore`
    /// instructions when the site has nothing (usable) learned.
    pub fn start(&mut self, site: u32, explore: u32) -> RunStart {
        let slot = &mut self.slots[Self::index(site)];
        if !slot.used || slot.site != site {
            *slot = Slot {
                used: true,
                site,
                ..Slot::default()
            };
            slot.explore_next = true;
        }
        slot.visits = slot.visits.saturating_add(1);
        if slot.visits >= VISITS_TO_EXPLORE {
            slot.explore_next = true;
        }
        if std::mem::take(&mut slot.explore_next) {
            slot.exploring = true;
            slot.visits = 0;
            slot.misses = 0;
            return RunStart {
                length: explore,
                exploring: true,
            };
        }
        slot.exploring = false;
        RunStart {
            length: slot.length,
            exploring: false,
        }
    }

    /// The run from `site` met an instruction to emulate after
    /// `distance` interpreted ones.
    pub fn reached(&mut self, site: u32, distance: u32) {
        let slot = &mut self.slots[Self::index(site)];
        if !slot.used || slot.site != site {
            return;
        }
        slot.misses = 0;
        if std::mem::take(&mut slot.exploring) {
            slot.length = distance;
        } else {
            // A run granted past its length by the look-ahead.
            slot.length = slot.length.max(distance);
        }
    }

    /// The run from `site` used up its length without meeting an
    /// instruction to emulate, and the guest resumes natively.
    pub fn missed(&mut self, site: u32) {
        let slot = &mut self.slots[Self::index(site)];
        if !slot.used || slot.site != site {
            return;
        }
        if std::mem::take(&mut slot.exploring) {
            slot.length = 0;
        } else if slot.length > 0 {
            slot.misses = slot.misses.saturating_add(1);
            if slot.misses >= MISSES_TO_EXPLORE {
                slot.explore_next = true;
            }
        }
    }

    /// Forgets every site (the guest's code changed under them all).
    pub fn clear(&mut self) {
        self.slots.fill(Slot::default());
    }
}

/// The runs of one monitor: the profiles and the run under way.
#[derive(Debug, Default)]
pub struct Runs {
    profiles: RunProfiles,
    /// The site the current run started from, if one is under way.
    open: Option<u32>,
}

impl Runs {
    /// The monitor emulates the instruction at `site`, `streak`
    /// instructions interpreted since the last it emulated: closes the run
    /// under way (it reached) and starts the one after it. With
    /// [`Policy::explore`] 0, the policy's fixed lengths.
    pub fn emulated(
        &mut self,
        policy: &Policy,
        site: u32,
        streak: u32,
        port_io: bool,
        counters: &mut Counters,
    ) -> u32 {
        if let Some(open) = self.open.take() {
            self.profiles.reached(open, streak);
            counters.bump(Counter::SplitReached);
        }
        // Port polling loops (Linux's PIT calibration reads port 0x42
        // every 10 instructions and needs the reads evenly spaced: a trap
        // per read fails it and marks the TSC unstable).
        let floor = if port_io { policy.run_after_entry } else { 0 };
        if policy.explore == 0 {
            return floor.max(policy.run_after_emulated);
        }
        self.start(policy, site, counters).max(floor)
    }

    /// A run from `site` starts.
    fn start(&mut self, policy: &Policy, site: u32, counters: &mut Counters) -> u32 {
        let start = self.profiles.start(site, policy.explore);
        if start.exploring {
            counters.bump(Counter::SplitExplored);
        }
        self.open = Some(site);
        start.length
    }

    /// An interrupt, exception or system call enters the guest kernel at
    /// `handler`: the run under way ends there, one starts at the handler.
    pub fn entered(&mut self, policy: &Policy, handler: u32, counters: &mut Counters) -> u32 {
        self.open = None;
        if policy.explore == 0 {
            return policy.run_after_entry;
        }
        self.start(policy, handler, counters)
    }

    /// The guest resumes natively, `streak` instructions into a run of
    /// `length`: if the run is used up, it missed.
    pub fn resumed(&mut self, streak: u32, length: u32, counters: &mut Counters) {
        if let Some(open) = self.open.take()
            && streak >= length
        {
            self.profiles.missed(open);
            counters.bump(Counter::SplitMissed);
        }
    }

    /// The run under way ends otherwise (the guest leaves kernel mode, an
    /// interrupt comes): nothing learned.
    pub fn close(&mut self) {
        self.open = None;
    }

    /// Forgets every site: what the monitor emulates changed.
    pub fn forget(&mut self) {
        self.open = None;
        self.profiles.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: u32 = 0xc100_2345;

    #[test]
    fn a_new_site_explores_then_runs_as_far_as_it_reached() {
        let mut profiles = RunProfiles::new();
        assert_eq!(
            profiles.start(SITE, 32),
            RunStart {
                length: 32,
                exploring: true
            }
        );
        profiles.reached(SITE, 9);
        for _ in 0..10 {
            assert_eq!(
                profiles.start(SITE, 32),
                RunStart {
                    length: 9,
                    exploring: false
                }
            );
            profiles.reached(SITE, 9);
        }
    }

    #[test]
    fn a_site_with_nothing_near_resumes_natively_at_once() {
        let mut profiles = RunProfiles::new();
        assert!(profiles.start(SITE, 32).exploring);
        profiles.missed(SITE);
        for _ in 0..(VISITS_TO_EXPLORE - 1) {
            let start = profiles.start(SITE, 32);
            assert_eq!(start.length, 0);
            profiles.missed(SITE);
        }
        // Now and then it looks again.
        assert!(profiles.start(SITE, 32).exploring);
    }

    #[test]
    fn a_site_whose_length_stops_reaching_explores_again() {
        let mut profiles = RunProfiles::new();
        profiles.start(SITE, 32);
        profiles.reached(SITE, 3);
        for _ in 0..MISSES_TO_EXPLORE {
            assert_eq!(profiles.start(SITE, 32).length, 3);
            profiles.missed(SITE);
        }
        let again = profiles.start(SITE, 32);
        assert!(again.exploring);
        profiles.reached(SITE, 20);
        assert_eq!(profiles.start(SITE, 32).length, 20);
    }

    #[test]
    fn the_look_ahead_lengthens_a_site() {
        let mut profiles = RunProfiles::new();
        profiles.start(SITE, 32);
        profiles.reached(SITE, 3);
        profiles.start(SITE, 32);
        profiles.reached(SITE, 7);
        assert_eq!(profiles.start(SITE, 32).length, 7);
    }

    #[test]
    fn sites_sharing_a_slot_evict_each_other() {
        let mut profiles = RunProfiles::new();
        let other = (SITE..)
            .find(|&site| site != SITE && RunProfiles::index(site) == RunProfiles::index(SITE))
            .expect("a colliding site");
        profiles.start(SITE, 32);
        profiles.reached(SITE, 5);
        assert!(profiles.start(other, 32).exploring);
        // What is reported for a site no longer held is dropped.
        profiles.reached(SITE, 1);
        profiles.reached(other, 6);
        assert_eq!(profiles.start(other, 32).length, 6);
        assert!(profiles.start(SITE, 32).exploring);
    }

    #[test]
    fn clearing_forgets_every_site() {
        let mut profiles = RunProfiles::new();
        profiles.start(SITE, 32);
        profiles.reached(SITE, 5);
        profiles.clear();
        assert!(profiles.start(SITE, 32).exploring);
    }
}
