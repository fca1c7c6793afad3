//! The host side of the btvmm PC: the devices that need host resources
//! (the console), and the port layout. The interrupt and timer chipset
//! runs in the world process ([`crate::chipset`]).

use std::io::Write;

use crate::bus::{Bus, BusEffect, OverlapError, PortDevice};
use crate::debug_exit::DebugExit;
use crate::uart::{InterruptCount, Uart};

/// COM1.
pub const COM1: u16 = 0x3f8;
/// QEMU's debug-exit port as the test harness configures it.
pub const DEBUG_EXIT: u16 = 0xf4;
/// COM1's IRQ.
pub const COM1_IRQ: u8 = 4;

/// The host's devices.
pub struct Board {
    /// Port devices.
    pub bus: Bus,
    /// COM1 (dispatched by the board: its interrupt line goes to the world).
    pub com1: Uart<Box<dyn Write>>,
}

impl Board {
    /// COM1 transmitting to `console`, and the debug-exit port.
    pub fn new(console: impl Write + 'static) -> Result<Self, OverlapError> {
        let mut bus = Bus::new();
        bus.add("debug-exit", DEBUG_EXIT, 4, Box::new(DebugExit))?;
        Ok(Self {
            bus,
            com1: Uart::new(Box::new(console), InterruptCount::default()),
        })
    }

    /// IN.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        match port {
            COM1..=0x3ff if size == 1 => self.com1.read(port - COM1, size),
            _ => self.bus.read(port, size),
        }
    }

    /// OUT.
    pub fn write(&mut self, port: u16, size: u8, value: u32) -> BusEffect {
        match port {
            COM1..=0x3ff if size == 1 => self.com1.write(port - COM1, size, value),
            _ => self.bus.write(port, size, value),
        }
    }

    /// Levels of the board's interrupt lines (bit n = IRQ n), for the
    /// world's interrupt controller.
    #[must_use]
    pub fn interrupt_levels(&self) -> u16 {
        u16::from(self.com1.interrupt_level()) << COM1_IRQ
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn com1_line_and_debug_exit() {
        let mut board = Board::new(Vec::new()).expect("board");
        assert_eq!(board.interrupt_levels(), 0);
        board.write(COM1 + 1, 1, 0x02);
        assert_eq!(board.interrupt_levels(), 1 << 4);
        assert_eq!(board.write(DEBUG_EXIT, 1, 0), BusEffect::Exit(1));
        assert_eq!(board.read(0x80, 1), 0xff);
    }
}
