//! The monitor's counters: every trap by kind, every emulation by class,
//! every exit to the host. Published to the host on each exit and at the
//! end (`btvmm run --stats`).

use cfg_planner::{PointerKind, SensitiveKind};

/// A counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Entries into the monitor, all kinds.
    Traps,
    /// Planned hardware breakpoints that fired.
    BreakpointHits,
    /// Single steps the monitor asked for.
    SingleSteps,
    /// #GP from guest code (privileged instructions, segment faults).
    GeneralProtection,
    /// #PF from guest code (accesses to never-mapped memory).
    PageFaults,
    /// #UD from guest code.
    InvalidOpcodes,
    /// #DE from guest code.
    DivideErrors,
    /// Other CPU exceptions from guest code.
    OtherFaults,
    /// Guest INT3.
    SoftwareBreakpoints,
    /// Guest system-call instructions caught by seccomp.
    SystemCalls,
    /// Kicks from the host.
    Kicks,
    /// Instructions the emulator executed.
    Emulated,
    /// Emulated because the planner stopped them (sensitive or pointer).
    EmulatedPlanned,
    /// Emulated because they faulted natively.
    EmulatedAfterFault,
    /// Exceptions delivered to the guest IDT.
    ExceptionsDelivered,
    /// Resumes into guest kernel mode with a breakpoint plan.
    PlannedResumes,
    /// Breakpoints armed, summed over planned resumes.
    BreakpointsArmed,
    /// Resumes into guest user mode (untraced).
    UserResumes,
    /// Exits to the host, all kinds.
    Exits,
    /// Port reads through the host.
    PortIn,
    /// Port writes through the host.
    PortOut,
    /// Exits for a stretch of a REP INS (up to a sector's bytes each).
    PortInString,
    /// Exits for a stretch of a REP OUTS.
    PortOutString,
    /// HLTs waited out (the world sleeps until its timer or a host kick).
    Halts,
    /// Segment registers repaired after native loads of host GDT selectors.
    SelectorRepairs,
    /// Shadow LDT writes.
    LdtWrites,
    /// External interrupts delivered to the guest.
    InterruptsInjected,
    /// Port accesses served by the world's own chipset (PIC, PIT, port
    /// 0x61): no exit.
    ChipsetIo,
    /// Instructions interpreted instead of run natively (short stretches
    /// between sensitive instructions).
    Interpreted,
    /// Blocks decoded (decode cache misses).
    BlocksDecoded,
    /// Plans computed (plan cache misses).
    PlansComputed,
    /// Instructions the emulator decoded afresh (misses of its cache of
    /// decoded instructions).
    InstructionsDecoded,
    /// Cached blocks and plans dropped because guest code pages were
    /// written.
    CodeInvalidations,
    /// Host #PF the shadow MMU served by mapping (the guest saw nothing).
    HiddenFaults,
    /// Host #PF that were the guest's own page faults, delivered.
    GuestPageFaults,
    /// Native writes to write-tracked pages (page tables, decoded code),
    /// emulated.
    TrackedWrites,
    /// Hidden faults that repeated at once and were emulated instead.
    RepeatedHiddenFaults,
    /// Pages tracked as page tables that no page directory names any more
    /// (freed and reused), released at a write.
    TablesReleased,
    /// Pages other members tracked (a table or code once, data now)
    /// released pool-wide at a write.
    ForeignReleased,
    /// Guest-virtual pages shadow-mapped now (a level, not a count).
    ShadowPages,
    /// CR3 loads that handed the vCPU to another world process of the
    /// pool.
    AddressSpaceSwitches,
    /// Pool events replayed when taking the vCPU over.
    PoolEventsReplayed,
    /// Take-overs that found the pool's log overrun (or paging turned off
    /// since) and started the shadow afresh.
    PoolRestarts,
    /// #DB from guest code that was neither a planned breakpoint nor a
    /// step (a host race around moving a breakpoint); planned again.
    StrayDebugTraps,
    /// Resumes into guest kernel mode in the split code view.
    SplitResumes,
    /// INT3 traps from alias pages (an instruction to emulate, or code not
    /// decoded yet).
    SplitTraps,
    /// Fetch faults on alias pages not mapped yet.
    SplitAliasFaults,
    /// Blocks of guest code copied into alias pages.
    SplitBlocksFilled,
    /// Alias pages mapped now (a level, not a count).
    SplitAliasPages,
    /// Window moves (the guest mapped a region aliases sat in).
    SplitWindowMoves,
    /// Instructions crossing a page boundary, emulated instead of copied.
    SplitStraddlers,
    /// Kernel-mode resumes under hardware breakpoints although the split
    /// view is on (code whose alias cannot be placed).
    SplitFallbacks,
    /// Instructions interpreted past a run's limit because one the
    /// monitor must emulate followed a few instructions on in the same
    /// straight-line block (each run on saves an INT3 trap).
    SplitRanOn,
    /// Interpreted runs that explored how far the next instruction the
    /// monitor must emulate is ([`crate::profile`]).
    SplitExplored,
    /// Interpreted runs that reached the next instruction to emulate.
    SplitReached,
    /// Interpreted runs that used up their length and resumed natively.
    SplitMissed,
    /// Blocks the fast interpreter decoded (first use, or changed bytes).
    FastBlocksDecoded,
    /// Instructions the fast interpreter ran through a fast form (the rest
    /// of its instructions went through the general emulator).
    FastForms,
    /// Runs of the fast interpreter (one per trap or more).
    FastRuns,
    /// Instructions the fast interpreter ran.
    FastInstructions,
    /// Time in fast interpreter runs (part of the monitor's work).
    FastNs,
    /// Nanoseconds the monitor worked (trap handling, without the waits
    /// below).
    MonitorNs,
    /// Nanoseconds waiting for the host's reply to an exit.
    ExitWaitNs,
    /// Nanoseconds asleep in a guest HLT.
    HaltNs,
    /// Guest-physical accesses outside RAM (open bus: reads give all ones,
    /// writes are dropped).
    OpenBus,
    /// Guest writes of CR3 (address-space switches and TLB flushes).
    Cr3Loads,
    /// Stops for the host: its display's menu, a debugger.
    Pauses,
    /// Stops at a debugger's breakpoints.
    DebugBreakpoints,
}

impl Counter {
    /// The counter's slot: its place in [`Counter::ALL`], which lists
    /// the counters in declaration order (a unit test checks), so the
    /// discriminant is the slot (counting sits on the interpreter's path:
    /// no search).
    #[must_use]
    pub const fn slot(self) -> usize {
        self as usize
    }

    /// Every plain counter, in report order.
    pub const ALL: [Counter; 68] = [
        Counter::Traps,
        Counter::BreakpointHits,
        Counter::SingleSteps,
        Counter::GeneralProtection,
        Counter::PageFaults,
        Counter::InvalidOpcodes,
        Counter::DivideErrors,
        Counter::OtherFaults,
        Counter::SoftwareBreakpoints,
        Counter::SystemCalls,
        Counter::Kicks,
        Counter::Emulated,
        Counter::EmulatedPlanned,
        Counter::EmulatedAfterFault,
        Counter::ExceptionsDelivered,
        Counter::PlannedResumes,
        Counter::BreakpointsArmed,
        Counter::UserResumes,
        Counter::Exits,
        Counter::PortIn,
        Counter::PortOut,
        Counter::PortInString,
        Counter::PortOutString,
        Counter::Halts,
        Counter::SelectorRepairs,
        Counter::LdtWrites,
        Counter::InterruptsInjected,
        Counter::ChipsetIo,
        Counter::Interpreted,
        Counter::BlocksDecoded,
        Counter::PlansComputed,
        Counter::InstructionsDecoded,
        Counter::CodeInvalidations,
        Counter::HiddenFaults,
        Counter::GuestPageFaults,
        Counter::TrackedWrites,
        Counter::RepeatedHiddenFaults,
        Counter::TablesReleased,
        Counter::ForeignReleased,
        Counter::ShadowPages,
        Counter::AddressSpaceSwitches,
        Counter::PoolEventsReplayed,
        Counter::PoolRestarts,
        Counter::StrayDebugTraps,
        Counter::SplitResumes,
        Counter::SplitTraps,
        Counter::SplitAliasFaults,
        Counter::SplitBlocksFilled,
        Counter::SplitAliasPages,
        Counter::SplitWindowMoves,
        Counter::SplitStraddlers,
        Counter::SplitFallbacks,
        Counter::SplitRanOn,
        Counter::SplitExplored,
        Counter::SplitReached,
        Counter::SplitMissed,
        Counter::FastBlocksDecoded,
        Counter::FastForms,
        Counter::FastRuns,
        Counter::FastInstructions,
        Counter::FastNs,
        Counter::MonitorNs,
        Counter::ExitWaitNs,
        Counter::HaltNs,
        Counter::OpenBus,
        Counter::Cr3Loads,
        Counter::Pauses,
        Counter::DebugBreakpoints,
    ];

    /// Name for reports.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Traps => "traps",
            Self::BreakpointHits => "trap: planned breakpoint",
            Self::SingleSteps => "trap: single step",
            Self::GeneralProtection => "trap: #GP",
            Self::PageFaults => "trap: #PF",
            Self::InvalidOpcodes => "trap: #UD",
            Self::DivideErrors => "trap: #DE",
            Self::OtherFaults => "trap: other exception",
            Self::SoftwareBreakpoints => "trap: int3",
            Self::SystemCalls => "trap: system call (seccomp)",
            Self::Kicks => "trap: kick",
            Self::Emulated => "emulated instructions",
            Self::EmulatedPlanned => "emulated: stopped by the planner",
            Self::EmulatedAfterFault => "emulated: after a native fault",
            Self::ExceptionsDelivered => "exceptions delivered to the guest",
            Self::PlannedResumes => "kernel-mode resumes with a plan",
            Self::BreakpointsArmed => "breakpoints in those plans",
            Self::UserResumes => "user-mode resumes",
            Self::Exits => "exits to the host",
            Self::PortIn => "exit: port in",
            Self::PortOut => "exit: port out",
            Self::PortInString => "exit: string port in",
            Self::PortOutString => "exit: string port out",
            Self::Halts => "hlt: waits for an interrupt",
            Self::SelectorRepairs => "selector repairs",
            Self::LdtWrites => "shadow LDT writes",
            Self::InterruptsInjected => "interrupts injected",
            Self::ChipsetIo => "port i/o: PIC/PIT in the world",
            Self::Interpreted => "emulated: interpreted stretches",
            Self::BlocksDecoded => "planner: blocks decoded",
            Self::InstructionsDecoded => "emulator: instructions decoded",
            Self::PlansComputed => "planner: plans computed",
            Self::CodeInvalidations => "planner: cache entries dropped by code writes",
            Self::HiddenFaults => "shadow: hidden faults mapped",
            Self::GuestPageFaults => "shadow: guest page faults delivered",
            Self::TrackedWrites => "shadow: writes to tracked pages emulated",
            Self::RepeatedHiddenFaults => "shadow: repeated hidden faults emulated",
            Self::TablesReleased => "shadow: stale table tracking released",
            Self::ForeignReleased => "pool: stale tracking of other members released",
            Self::ShadowPages => "shadow: pages mapped now",
            Self::AddressSpaceSwitches => "pool: address-space switches",
            Self::PoolEventsReplayed => "pool: events replayed",
            Self::PoolRestarts => "pool: shadows started afresh",
            Self::StrayDebugTraps => "trap: stray #DB (planned again)",
            Self::SplitResumes => "kernel-mode resumes in the split view",
            Self::SplitTraps => "split: int3 traps from aliases",
            Self::SplitAliasFaults => "split: alias fetch faults",
            Self::SplitBlocksFilled => "split: blocks copied to aliases",
            Self::SplitAliasPages => "split: alias pages mapped now",
            Self::SplitWindowMoves => "split: window moves",
            Self::SplitStraddlers => "split: page-straddling instructions emulated",
            Self::SplitRanOn => "split: instructions interpreted on to a near emulated one",
            Self::SplitExplored => "split: interpreted runs exploring their site",
            Self::SplitReached => "split: interpreted runs reaching an emulated instruction",
            Self::SplitMissed => "split: interpreted runs resuming natively at their length",
            Self::SplitFallbacks => "split: resumes under hardware breakpoints instead",
            Self::FastBlocksDecoded => "interpreter: blocks decoded",
            Self::FastForms => "interpreter: instructions in fast forms",
            Self::FastRuns => "interpreter: runs",
            Self::FastInstructions => "interpreter: instructions run",
            Self::FastNs => "time: interpreter runs (ns)",
            Self::MonitorNs => "time: monitor work (ns)",
            Self::ExitWaitNs => "time: waiting for the host (ns)",
            Self::HaltNs => "time: guest HLT sleeps (ns)",
            Self::OpenBus => "memory: open-bus accesses outside RAM",
            Self::Cr3Loads => "emulated: CR3 loads",
            Self::Pauses => "host: pauses",
            Self::DebugBreakpoints => "host: debugger breakpoints hit",
        }
    }
}

/// Emulations by the planner's class come after the plain counters:
/// sensitive classes, then pointer kinds.
const BY_CLASS_START: usize = Counter::ALL.len();
/// Total number of counter slots.
pub const COUNTER_SLOTS: usize = BY_CLASS_START + SensitiveKind::ALL.len() + PointerKind::ALL.len();
/// The world/host channel carries 128 counters.
const _: () = assert!(COUNTER_SLOTS <= 128);

/// The counter values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters {
    values: [u64; COUNTER_SLOTS],
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            values: [0; COUNTER_SLOTS],
        }
    }
}

impl Counters {
    /// Adds one.
    pub fn bump(&mut self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Sets a counter to a value kept elsewhere.
    pub fn set(&mut self, counter: Counter, value: u64) {
        self.values[counter.slot()] = value;
    }

    /// Adds `amount`.
    pub fn add(&mut self, counter: Counter, amount: u64) {
        let slot = counter.slot();
        self.values[slot] = self.values[slot].wrapping_add(amount);
    }

    /// Counts an emulation of a sensitive instruction class.
    pub fn bump_sensitive(&mut self, kind: SensitiveKind) {
        if let Some(index) = SensitiveKind::ALL.iter().position(|&known| known == kind) {
            self.values[BY_CLASS_START + index] += 1;
        }
    }

    /// Counts an emulation of a pointer branch kind.
    pub fn bump_pointer(&mut self, kind: PointerKind) {
        if let Some(index) = PointerKind::ALL.iter().position(|&known| known == kind) {
            self.values[BY_CLASS_START + SensitiveKind::ALL.len() + index] += 1;
        }
    }

    /// A counter's value.
    #[must_use]
    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter.slot()]
    }

    /// The raw slots, for publishing.
    #[must_use]
    pub fn as_slice(&self) -> &[u64] {
        &self.values
    }

    /// Rebuilds counters from published slots (missing slots are 0).
    #[must_use]
    pub fn from_slice(slots: &[u64]) -> Self {
        let mut counters = Self::default();
        for (value, slot) in counters.values.iter_mut().zip(slots) {
            *value = *slot;
        }
        counters
    }

    /// Every nonzero counter as (name, value), plain counters first, then
    /// emulations by class.
    #[must_use]
    pub fn report(&self) -> Vec<(String, u64)> {
        let mut rows: Vec<(String, u64)> = Counter::ALL
            .iter()
            .enumerate()
            .map(|(slot, counter)| (counter.name().to_owned(), self.values[slot]))
            .collect();
        for (index, kind) in SensitiveKind::ALL.iter().enumerate() {
            rows.push((
                format!("emulated {}", kind.name()),
                self.values[BY_CLASS_START + index],
            ));
        }
        for (index, kind) in PointerKind::ALL.iter().enumerate() {
            rows.push((
                format!("emulated {}", kind.name()),
                self.values[BY_CLASS_START + SensitiveKind::ALL.len() + index],
            ));
        }
        rows.retain(|(_, value)| *value != 0);
        rows
    }
}

/// Seconds of `ns` nanoseconds.
#[allow(clippy::cast_precision_loss)] // a report
fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// `part` as a percentage of `whole`.
#[allow(clippy::cast_precision_loss)] // a report
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// `part / whole`, 0 when `whole` is.
#[allow(clippy::cast_precision_loss)] // a report
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

impl Counters {
    /// What a person asks of a run first, from the counters and the run's
    /// wall time: where the time went (the monitor's work, the fast
    /// interpreter's share of it, waits for the host, HLT sleeps, and the
    /// rest: guest code running natively and the host's trap delivery),
    /// the traps by mechanism, how the monitor resumed the guest kernel,
    /// and what it emulated and interpreted per trap.
    #[must_use]
    pub fn summary(&self, wall_ns: u64) -> Vec<String> {
        let get = |counter| self.get(counter);
        let monitor = get(Counter::MonitorNs);
        let waited = get(Counter::ExitWaitNs);
        let halted = get(Counter::HaltNs);
        let rest = wall_ns.saturating_sub(monitor + waited + halted);
        let traps = get(Counter::Traps);
        let emulated = get(Counter::Emulated);
        let interpreted = get(Counter::Interpreted);
        let fast_runs = get(Counter::FastRuns);
        let fast_instructions = get(Counter::FastInstructions);
        vec![
            format!(
                "time: {:.2} s wall: monitor work {:.2} s ({:.1}%, of it interpreter runs {:.2} s), \
                 waiting for the host {:.2} s ({:.1}%), guest HLT sleeps {:.2} s ({:.1}%), \
                 the rest (guest code running natively, the host delivering traps) {:.2} s ({:.1}%)",
                seconds(wall_ns),
                seconds(monitor),
                percent(monitor, wall_ns),
                seconds(get(Counter::FastNs)),
                seconds(waited),
                percent(waited, wall_ns),
                seconds(halted),
                percent(halted, wall_ns),
                seconds(rest),
                percent(rest, wall_ns),
            ),
            format!(
                "traps: {traps}: split-view int3 {}, hardware breakpoints (#DB) {}, single steps {}, \
                 #GP {}, #PF {}, #UD {}, guest int3 {}, system calls (seccomp) {}, \
                 kicks (timer, host) {}, other {}",
                get(Counter::SplitTraps),
                get(Counter::BreakpointHits),
                get(Counter::SingleSteps),
                get(Counter::GeneralProtection),
                get(Counter::PageFaults),
                get(Counter::InvalidOpcodes),
                get(Counter::SoftwareBreakpoints),
                get(Counter::SystemCalls),
                get(Counter::Kicks),
                get(Counter::DivideErrors) + get(Counter::OtherFaults),
            ),
            format!(
                "resumes: guest kernel in the split view {}, under hardware breakpoints {} \
                 ({} where the split view could not be used), guest user mode {}",
                get(Counter::SplitResumes),
                get(Counter::PlannedResumes),
                get(Counter::SplitFallbacks),
                get(Counter::UserResumes),
            ),
            format!(
                "emulated: {emulated} instructions, {:.1} a trap: {} the monitor had to handle, \
                 {} after a native fault, {interpreted} interpreted instead of run natively; \
                 interpreter: {fast_runs} runs, {:.1} instructions a run, {:.1}% of them in fast forms",
                ratio(emulated, traps),
                get(Counter::EmulatedPlanned),
                get(Counter::EmulatedAfterFault),
                ratio(fast_instructions, fast_runs),
                percent(get(Counter::FastForms), fast_instructions),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_s_slot_is_its_place_in_the_list() {
        for (place, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(counter.slot(), place, "{counter:?}");
        }
    }

    #[test]
    fn counters_round_trip_through_slots() {
        let mut counters = Counters::default();
        counters.bump(Counter::Traps);
        counters.add(Counter::BreakpointsArmed, 3);
        counters.bump_sensitive(SensitiveKind::FlagsRead);
        counters.bump_pointer(PointerKind::Iret);
        let copy = Counters::from_slice(counters.as_slice());
        assert_eq!(copy, counters);
        let report = copy.report();
        assert!(report.contains(&("traps".to_owned(), 1)));
        assert!(report.contains(&("emulated pushf".to_owned(), 1)));
        assert!(report.contains(&("emulated iret".to_owned(), 1)));
        assert_eq!(report.len(), 4);
    }

    #[test]
    fn the_summary_splits_the_wall_time_and_names_each_trap_mechanism() {
        let mut counters = Counters::default();
        counters.add(Counter::MonitorNs, 2_000_000_000);
        counters.add(Counter::FastNs, 500_000_000);
        counters.add(Counter::ExitWaitNs, 1_000_000_000);
        counters.add(Counter::HaltNs, 3_000_000_000);
        counters.add(Counter::Traps, 100);
        counters.add(Counter::SplitTraps, 60);
        counters.add(Counter::SystemCalls, 30);
        counters.add(Counter::Kicks, 10);
        counters.add(Counter::Emulated, 250);
        counters.add(Counter::Interpreted, 200);
        counters.add(Counter::FastRuns, 50);
        counters.add(Counter::FastInstructions, 250);
        counters.add(Counter::FastForms, 125);
        let lines = counters.summary(10_000_000_000);
        assert_eq!(lines.len(), 4);
        assert!(
            lines[0].starts_with(
                "time: 10.00 s wall: monitor work 2.00 s (20.0%, of it interpreter runs 0.50 s)"
            ),
            "{}",
            lines[0]
        );
        assert!(
            lines[0].contains("guest HLT sleeps 3.00 s (30.0%)"),
            "{}",
            lines[0]
        );
        assert!(
            lines[0].contains("host delivering traps) 4.00 s (40.0%)"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("traps: 100: split-view int3 60,"),
            "{}",
            lines[1]
        );
        assert!(
            lines[1].contains("system calls (seccomp) 30, kicks (timer, host) 10, other 0"),
            "{}",
            lines[1]
        );
        assert!(
            lines[3].starts_with("emulated: 250 instructions, 2.5 a trap"),
            "{}",
            lines[3]
        );
        assert!(
            lines[3].ends_with("50 runs, 5.0 instructions a run, 50.0% of them in fast forms"),
            "{}",
            lines[3]
        );
        // A wall time shorter than the parts (counters of another clock)
        // leaves no negative rest.
        let short = counters.summary(1_000);
        assert!(short[0].ends_with("traps) 0.00 s (0.0%)"), "{}", short[0]);
    }
}
