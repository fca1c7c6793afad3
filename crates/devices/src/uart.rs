//! The 16550A UART, from rust-vmm's vm-superio, on the port bus.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use vm_superio::{Serial, Trigger};

use crate::bus::{BusEffect, PortDevice};

/// The UART's interrupt output. Until the interrupt controller exists it
/// counts the interrupts the UART raises (vm-superio signals edges only; the
/// level is derived from the IIR when the PIC arrives).
#[derive(Clone, Debug, Default)]
pub struct InterruptCount(Arc<AtomicU64>);

impl InterruptCount {
    /// Interrupts raised so far.
    #[must_use]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Trigger for InterruptCount {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A UART whose transmitter writes to `W`.
pub struct Uart<W: Write> {
    serial: Serial<InterruptCount, vm_superio::serial::NoEvents, W>,
}

impl<W: Write> Uart<W> {
    /// A UART writing transmitted bytes to `out`.
    pub fn new(out: W, interrupts: InterruptCount) -> Self {
        Self {
            serial: Serial::new(interrupts, out),
        }
    }

    /// The output writer.
    pub fn writer_mut(&mut self) -> &mut W {
        self.serial.writer_mut()
    }
}

impl<W: Write> PortDevice for Uart<W> {
    fn read(&mut self, offset: u16, _size: u8) -> u32 {
        // The UART decodes 8 registers; the bus gives offsets below 8.
        let register = u8::try_from(offset & 7).unwrap_or(0);
        u32::from(self.serial.read(register))
    }

    fn write(&mut self, offset: u16, _size: u8, value: u32) -> BusEffect {
        let register = u8::try_from(offset & 7).unwrap_or(0);
        let byte = value.to_le_bytes()[0];
        // A failing output (closed stdout) drops the byte, as a UART with
        // nothing on its line does.
        let _ = self.serial.write(register, byte);
        BusEffect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmits_and_reports_an_empty_transmitter() {
        let mut uart = Uart::new(Vec::new(), InterruptCount::default());
        for byte in b"ok\n" {
            uart.write(0, 1, u32::from(*byte));
        }
        assert_eq!(uart.writer_mut().as_slice(), b"ok\n");
        // LSR: transmitter holding register and transmitter empty.
        assert_eq!(uart.read(5, 1) & 0x60, 0x60);
        // Scratch register round trip.
        uart.write(7, 1, 0x5a);
        assert_eq!(uart.read(7, 1), 0x5a);
    }
}
