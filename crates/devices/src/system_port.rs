//! System control port A (port 0x92, "fast A20 and reset"), as on PS/2 and
//! every PC chipset since: bit 1 gates address line 20, a 0 -> 1 change of
//! bit 0 pulses the CPU's reset line.

use serde::{Deserialize, Serialize};

/// Bit 0: fast reset (a rising edge resets the CPU).
pub const FAST_RESET: u8 = 1 << 0;
/// Bit 1: A20 enabled.
pub const A20_ENABLE: u8 = 1 << 1;

/// Port 0x92.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemPortA {
    value: u8,
}

impl SystemPortA {
    /// Power-on state: A20 on (btvmm's CPU has no real mode; A20 is never
    /// masked), reset bit clear.
    #[must_use]
    pub fn new() -> Self {
        Self { value: A20_ENABLE }
    }

    /// Reads the port.
    #[must_use]
    pub fn read(&self) -> u8 {
        self.value
    }

    /// Writes the port; returns true when the write pulses the reset line.
    pub fn write(&mut self, value: u8) -> bool {
        let reset = self.value & FAST_RESET == 0 && value & FAST_RESET != 0;
        self.value = value;
        reset
    }

    /// Whether A20 is enabled.
    #[must_use]
    pub fn a20(&self) -> bool {
        self.value & A20_ENABLE != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a20_reads_back_and_the_reset_bit_edges() {
        let mut port = SystemPortA::new();
        assert!(port.a20());
        assert!(!port.write(0x00), "A20 off is no reset");
        assert!(!port.a20());
        assert_eq!(port.read(), 0x00);
        assert!(port.write(A20_ENABLE | FAST_RESET), "0 -> 1 resets");
        assert!(
            !port.write(A20_ENABLE | FAST_RESET),
            "staying at 1 does not"
        );
        assert!(!port.write(A20_ENABLE));
        assert!(port.write(FAST_RESET));
    }
}
