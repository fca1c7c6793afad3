//! The host's TSC frequency, measured against CLOCK_MONOTONIC_RAW: the
//! guest's TSC is the host's, and the virtual CPU tells the guest its
//! frequency (CPUID leaf 0x15) so that the guest kernel need not
//! calibrate it against the PIT.

use std::time::Duration;

use crate::channel::read_tsc;

/// How long the measurement spans at least: the two readings' brackets
/// (an RDTSC each side of a clock_gettime, a few hundred nanoseconds at
/// worst on the shortest of several tries) stay within 50 ppm of it.
pub const SPAN: Duration = Duration::from_millis(20);

/// Brackets tried per reading; the narrowest one counts.
const TRIES: usize = 8;

/// The first reading of a measurement, taken early so that the host's
/// own start-up fills most of [`SPAN`].
#[derive(Clone, Copy, Debug)]
pub struct TscMeasurement {
    start: Reading,
}

#[derive(Clone, Copy, Debug)]
struct Reading {
    tsc: u64,
    ns: u64,
}

impl TscMeasurement {
    /// Takes the first reading.
    #[must_use]
    pub fn start() -> Self {
        Self { start: reading() }
    }

    /// Takes the second reading (after sleeping until [`SPAN`] has passed
    /// since the first) and gives the TSC's frequency in kHz, or None
    /// when the counter or the clock did not advance sensibly (then the
    /// guest is told nothing and calibrates the TSC itself).
    #[must_use]
    pub fn finish(self) -> Option<u32> {
        let span_ns = u64::try_from(SPAN.as_nanos()).unwrap_or(u64::MAX);
        let elapsed_ns = monotonic_raw_ns().saturating_sub(self.start.ns);
        if elapsed_ns < span_ns {
            std::thread::sleep(Duration::from_nanos(span_ns - elapsed_ns));
        }
        let end = reading();
        khz(
            end.tsc.wrapping_sub(self.start.tsc),
            end.ns.saturating_sub(self.start.ns),
        )
    }
}

/// Whether the host kernel trusts its TSC to count at a constant rate and
/// through sleep states (`constant_tsc` and `nonstop_tsc` in
/// /proc/cpuinfo): only such a TSC is measured and given to the guest as
/// invariant.
#[must_use]
pub fn host_tsc_invariant() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|cpuinfo| invariant_in(&cpuinfo))
}

/// [`host_tsc_invariant`] on the text of /proc/cpuinfo.
fn invariant_in(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .find(|line| line.starts_with("flags"))
        .is_some_and(|flags| {
            let has = |flag: &str| flags.split_whitespace().any(|word| word == flag);
            has("constant_tsc") && has("nonstop_tsc")
        })
}

/// kHz from `ticks` counted in `ns` nanoseconds; None outside 1 MHz to
/// 4.29 THz (a counter that stopped, wrapped or a clock that stood
/// still).
#[must_use]
pub fn khz(ticks: u64, ns: u64) -> Option<u32> {
    if ns == 0 {
        return None;
    }
    let khz = u128::from(ticks) * 1_000_000 / u128::from(ns);
    u32::try_from(khz).ok().filter(|&khz| khz >= 1000)
}

/// One (TSC, clock) pair: the clock read between two RDTSCs, the pair
/// whose RDTSCs lie closest together of [`TRIES`], the TSC taken halfway.
fn reading() -> Reading {
    let mut best: Option<(u64, Reading)> = None;
    for _ in 0..TRIES {
        let before = read_tsc();
        let ns = monotonic_raw_ns();
        let after = read_tsc();
        let width = after.wrapping_sub(before);
        if best.is_none_or(|(narrowest, _)| width < narrowest) {
            let tsc = before.wrapping_add(width / 2);
            best = Some((width, Reading { tsc, ns }));
        }
    }
    best.map_or(Reading { tsc: 0, ns: 0 }, |(_, reading)| reading)
}

fn monotonic_raw_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_RAW, &raw mut now) };
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    seconds.saturating_mul(1_000_000_000).saturating_add(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn khz_from_ticks_and_nanoseconds() {
        assert_eq!(khz(48_910_380, 20_000_000), Some(2_445_519));
        assert_eq!(khz(1, 0), None, "a clock that stood still");
        assert_eq!(khz(0, 20_000_000), None, "a counter that stood still");
        assert_eq!(khz(u64::MAX, 1), None, "a counter that wrapped");
    }

    #[test]
    fn an_invariant_tsc_is_constant_and_non_stop() {
        let flags = "processor\t: 0\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n";
        assert!(invariant_in(flags));
        assert!(!invariant_in("flags\t\t: fpu tsc constant_tsc\n"));
        assert!(!invariant_in("flags\t\t: fpu tsc nonstop_tsc_s3\n"));
        assert!(!invariant_in(""));
    }

    #[test]
    fn the_host_tsc_measures_steady() {
        // Two measurements side by side agree to 0.1 % (the host may
        // preempt this test between readings, which only lengthens the
        // span: the readings themselves are bracketed).
        let first = TscMeasurement::start().finish().expect("a TSC");
        let second = TscMeasurement::start().finish().expect("a TSC");
        assert!(
            first.abs_diff(second) <= first / 1000,
            "{first} kHz, then {second} kHz"
        );
    }
}
