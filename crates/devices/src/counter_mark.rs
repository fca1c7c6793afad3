//! btvmm's counter-mark port: a guest program that wants the monitor's
//! counters for a stretch of its own work alone writes a number here at its
//! start and at its end; `btvmm run --stats` then reports the counters as
//! they stood at each write (`btvmm bench`'s breakdown per benchmark).
//!
//! Nothing else lives at this port on a PC or in QEMU's default machine,
//! where such a write goes nowhere, so the same guest program runs
//! unchanged under every system it is compared on.

use crate::bus::{BusEffect, PortDevice};

/// The port.
#[derive(Clone, Copy, Debug, Default)]
pub struct CounterMark;

impl PortDevice for CounterMark {
    fn read(&mut self, _offset: u16, _size: u8) -> u32 {
        // Reads float, as at a port nothing claims.
        u32::MAX
    }

    fn write(&mut self, _offset: u16, _size: u8, value: u32) -> BusEffect {
        BusEffect::Mark(value)
    }

    fn byte_wide(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_a_mark_with_its_value() {
        assert_eq!(
            CounterMark.write(0, 4, 0x0001_0002),
            BusEffect::Mark(0x0001_0002)
        );
        assert_eq!(CounterMark.write(0, 1, 7), BusEffect::Mark(7));
        assert_eq!(CounterMark.read(0, 4), u32::MAX);
    }
}
