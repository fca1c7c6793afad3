//! QEMU's ISA debug-exit device: a write of value v ends the VM with exit
//! status (v << 1) | 1, so the same test kernel gives the same status under
//! btvmm and under `qemu-system-i386 -device isa-debug-exit`.

use crate::bus::{BusEffect, PortDevice};

/// The debug-exit port.
#[derive(Clone, Copy, Debug, Default)]
pub struct DebugExit;

impl PortDevice for DebugExit {
    fn read(&mut self, _offset: u16, _size: u8) -> u32 {
        // QEMU's device answers reads with all ones.
        u32::MAX
    }

    fn write(&mut self, _offset: u16, _size: u8, value: u32) -> BusEffect {
        // The status is an 8-bit value for the host's exit(), as in QEMU
        // (exit((val << 1) | 1) truncated by the OS to its low byte).
        #[allow(clippy::cast_possible_wrap)]
        BusEffect::Exit((((value << 1) | 1) & 0xff) as i32)
    }

    fn byte_wide(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_qemu() {
        assert_eq!(DebugExit.write(0, 1, 0), BusEffect::Exit(1));
        assert_eq!(DebugExit.write(0, 1, 1), BusEffect::Exit(3));
        assert_eq!(DebugExit.write(0, 4, 0x41), BusEffect::Exit(0x83));
    }
}
