//! The btvmm PC's port layout, in one place.

use std::io::Write;

use crate::bus::{Bus, OverlapError};
use crate::debug_exit::DebugExit;
use crate::uart::{InterruptCount, Uart};

/// COM1.
pub const COM1: u16 = 0x3f8;
/// QEMU's debug-exit port as the test harness configures it.
pub const DEBUG_EXIT: u16 = 0xf4;

/// The devices of the PC, wired on a bus.
pub struct Board {
    /// The port bus.
    pub bus: Bus,
    /// COM1's interrupts.
    pub com1_interrupts: InterruptCount,
}

impl Board {
    /// COM1 transmitting to `console`, and the debug-exit port.
    pub fn new(console: impl Write + 'static) -> Result<Self, OverlapError> {
        let com1_interrupts = InterruptCount::default();
        let mut bus = Bus::new();
        bus.add(
            "com1",
            COM1,
            8,
            Box::new(Uart::new(console, com1_interrupts.clone())),
        )?;
        bus.add("debug-exit", DEBUG_EXIT, 4, Box::new(DebugExit))?;
        Ok(Self {
            bus,
            com1_interrupts,
        })
    }
}
