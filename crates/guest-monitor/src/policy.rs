//! How far the monitor interprets guest kernel code instead of resuming it
//! natively (DESIGN.md 3, issue 12 item 3): a native run that soon
//! reaches another instruction the monitor must handle costs a trap, an
//! interpreted instruction costs a fraction of one. The settings were
//! measured on the development host (alternating A/B runs of the
//! benchmarks, see each field); on another host they scale with how many
//! interpreted instructions a trap costs there, from the costs `btvmm
//! calibrate --json` measured (`btvmm run --costs FILE`).

use thiserror::Error;

/// What the settings are derived from: nanoseconds per event on a host.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Costs {
    /// An INT3 trap from the split view's aliases, with the monitor's
    /// emulation of the instruction (calibrate's "split int3 + pushf").
    pub split_trap_ns: f64,
    /// A hardware-breakpoint trap with its emulation and the next plan
    /// (calibrate's "hw breakpoint + pushf + re-plan").
    pub hw_trap_ns: f64,
    /// One instruction interpreted in the monitor (calibrate's
    /// "instruction interpreted").
    pub interpreted_ns: f64,
}

/// The costs on the host the settings were tuned on (`btvmm calibrate
/// --json --iterations 200 --rounds 1`, 2026-12-07): a split-view trap is
/// worth 48 interpreted instructions there, a hardware-breakpoint trap
/// 154.
pub const TUNED_ON: Costs = Costs {
    split_trap_ns: 5049.0,
    hw_trap_ns: 16107.0,
    interpreted_ns: 104.7,
};

/// The least [`Policy::run_after_entry`] may be: Linux's PIT calibration
/// polls port 0x42 with 10 instructions between reads and needs the reads
/// evenly spaced (a trap per read fails it and marks the TSC unstable,
/// where the TSC's frequency is not given by CPUID).
const MIN_RUN_AFTER_ENTRY: u32 = 12;

/// How far a host's trap-to-instruction ratio may move the settings from
/// the tuned ones, either way: a calibration taken on a loaded host is
/// noisy, and the tuning has not been repeated on other hosts.
const MAX_SCALE: f64 = 4.0;

/// Costs that cannot be right.
#[derive(Debug, Error, PartialEq)]
pub enum PolicyError {
    /// A cost that is not a positive number of nanoseconds.
    #[error("the cost of {what} is {ns} ns: not a positive number")]
    BadCost {
        /// Which cost.
        what: &'static str,
        /// Its value.
        ns: f64,
    },
}

/// The monitor's interpretation settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Split view: instructions interpreted after delivering an
    /// interrupt, exception or system call (entry code is a cluster of
    /// sensitive instructions: segment pushes and loads) and after port
    /// I/O, looking for the next instruction the monitor must handle.
    pub run_after_entry: u32,
    /// Split view: the same after any other emulated instruction: enough
    /// for the next of a tight cluster (POP %DS; POP %ES; POP %FS; ...;
    /// IRET), short since the next is mostly far. Measured with the fast
    /// interpreter (getuid:20000,pipe-switch:2000,fork-exec:100): 32/8 and
    /// 64/16 for these two made pipe-switch 825 and 969 us against 710 us
    /// with 16/4; 256/64 halved getuid's traps but not its time.
    pub run_after_emulated: u32,
    /// Split view: how far ahead in a straight-line block a run at its
    /// limit looks for an instruction it must emulate, to interpret on to
    /// it rather than trap there. Measured: 8 made getuid 13% faster and
    /// sigsegv 6%, 16 made sigsegv slower than none.
    pub lookahead: u32,
    /// Hardware breakpoints: code is interpreted when the straight-line
    /// run to its next point of interest is at most this long.
    pub hw_interpret_run: u32,
    /// Split view: how far a run from a site with nothing learned looks
    /// for the next instruction to emulate ([`crate::profile`]); each
    /// site then runs as far as it found one, or not at all. 0: no
    /// profiles, every run as long as `run_after_entry` or
    /// `run_after_emulated` says.
    pub explore: u32,
}

impl Policy {
    /// The settings tuned on the development host ([`TUNED_ON`]).
    pub const TUNED: Self = Self {
        run_after_entry: 16,
        run_after_emulated: 4,
        lookahead: 8,
        hw_interpret_run: 24,
        explore: 24,
    };

    /// The settings for a host with `costs`: the tuned ones scaled by how
    /// many interpreted instructions a trap is worth there against the
    /// tuning host (at most 4 times more or fewer).
    ///
    /// # Errors
    ///
    /// [`PolicyError::BadCost`] for a cost that is not a positive finite
    /// number.
    pub fn from_costs(costs: &Costs) -> Result<Self, PolicyError> {
        for (what, ns) in [
            ("a split-view trap", costs.split_trap_ns),
            ("a hardware-breakpoint trap", costs.hw_trap_ns),
            ("an interpreted instruction", costs.interpreted_ns),
        ] {
            if !(ns.is_finite() && ns > 0.0) {
                return Err(PolicyError::BadCost { what, ns });
            }
        }
        let scale = |trap_ns: f64, tuned_trap_ns: f64| {
            let here = trap_ns / costs.interpreted_ns;
            let tuned = tuned_trap_ns / TUNED_ON.interpreted_ns;
            (here / tuned).clamp(1.0 / MAX_SCALE, MAX_SCALE)
        };
        let split = scale(costs.split_trap_ns, TUNED_ON.split_trap_ns);
        let hw = scale(costs.hw_trap_ns, TUNED_ON.hw_trap_ns);
        // Rounded to the nearest instruction; the clamp keeps it far
        // below u32::MAX.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let scaled = |tuned: u32, by: f64| (f64::from(tuned) * by).round() as u32;
        Ok(Self {
            run_after_entry: scaled(Self::TUNED.run_after_entry, split).max(MIN_RUN_AFTER_ENTRY),
            run_after_emulated: scaled(Self::TUNED.run_after_emulated, split),
            lookahead: scaled(Self::TUNED.lookahead, split),
            hw_interpret_run: scaled(Self::TUNED.hw_interpret_run, hw),
            explore: scaled(Self::TUNED.explore, split),
        })
    }

    /// The settings as four words (the channel to a world process).
    #[must_use]
    pub const fn to_words(self) -> [u32; 5] {
        [
            self.run_after_entry,
            self.run_after_emulated,
            self.lookahead,
            self.hw_interpret_run,
            self.explore,
        ]
    }

    /// Settings from [`Policy::to_words`]; all zero (nothing set) is
    /// [`Policy::TUNED`].
    #[must_use]
    pub const fn from_words(words: [u32; 5]) -> Self {
        if words[0] == 0 && words[1] == 0 && words[2] == 0 && words[3] == 0 && words[4] == 0 {
            return Self::TUNED;
        }
        Self {
            run_after_entry: words[0],
            run_after_emulated: words[1],
            lookahead: words[2],
            hw_interpret_run: words[3],
            explore: words[4],
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::TUNED
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "interpret {} instructions after an entry, {} after an emulated one, \
             on to one {} ahead; {} under hardware breakpoints; ",
            self.run_after_entry, self.run_after_emulated, self.lookahead, self.hw_interpret_run
        )?;
        if self.explore == 0 {
            write!(f, "no per-site profiles")
        } else {
            write!(
                f,
                "per-site profiles exploring {} instructions",
                self.explore
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tuning_host_gets_the_tuned_settings() {
        assert_eq!(Policy::from_costs(&TUNED_ON), Ok(Policy::TUNED));
    }

    #[test]
    fn cheaper_traps_mean_less_interpreting_and_dearer_ones_more() {
        // Bare metal: a trap worth about 12 instructions in the split view.
        let cheap = Policy::from_costs(&Costs {
            split_trap_ns: 1200.0,
            hw_trap_ns: 4000.0,
            interpreted_ns: 100.0,
        })
        .expect("valid");
        assert_eq!(cheap.run_after_emulated, 1);
        assert_eq!(cheap.lookahead, 2);
        assert_eq!(cheap.hw_interpret_run, 6);
        assert_eq!(cheap.explore, 6);
        assert_eq!(cheap.run_after_entry, MIN_RUN_AFTER_ENTRY, "PIT polling");
        // A faster interpreter against the same traps: twice the runs.
        let fast = Policy::from_costs(&Costs {
            interpreted_ns: TUNED_ON.interpreted_ns / 2.0,
            ..TUNED_ON
        })
        .expect("valid");
        assert_eq!(
            (
                fast.run_after_entry,
                fast.run_after_emulated,
                fast.lookahead,
                fast.explore
            ),
            (32, 8, 16, 48)
        );
        // At most MAX_SCALE either way.
        let extreme = Policy::from_costs(&Costs {
            interpreted_ns: 0.001,
            ..TUNED_ON
        })
        .expect("valid");
        assert_eq!(extreme.lookahead, 32);
    }

    #[test]
    fn costs_that_cannot_be_right_are_refused() {
        for ns in [0.0, -5.0, f64::NAN, f64::INFINITY] {
            assert!(
                Policy::from_costs(&Costs {
                    interpreted_ns: ns,
                    ..TUNED_ON
                })
                .is_err(),
                "{ns}"
            );
        }
    }

    #[test]
    fn words_round_trip_and_nothing_set_is_the_tuned_policy() {
        let policy = Policy {
            run_after_entry: 20,
            run_after_emulated: 5,
            lookahead: 0,
            hw_interpret_run: 30,
            explore: 0,
        };
        assert_eq!(Policy::from_words(policy.to_words()), policy);
        assert_eq!(Policy::from_words([0; 5]), Policy::TUNED);
    }
}
