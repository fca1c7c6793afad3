//! Device models of the btvmm PC and the port I/O bus that reaches them.
//!
//! Devices are state machines driven by port reads and writes (and, for
//! timers, by time passed in as an argument); nothing here does I/O of its
//! own except through the writer a device is given.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod ata;
pub mod board;
pub mod bus;
pub mod chipset;
pub mod cmos;
pub mod counter_mark;
pub mod debug_exit;
pub mod dma;
pub mod floppy;
pub mod i8042;
pub mod keyboard;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod system_port;
pub mod uart;
pub mod vga;

pub use bus::{Bus, BusEffect, PortDevice};
