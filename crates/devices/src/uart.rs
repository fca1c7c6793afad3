//! The 16550A UART, from rust-vmm's vm-superio, on the port bus.

use std::collections::VecDeque;
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

    /// The UART's interrupt output: an enabled interrupt condition is
    /// pending (IIR with IER). A PC gates the line with the modem control
    /// register's OUT2 bit; QEMU, the reference our conformance kernels are
    /// compared with, does not, and neither does vm-superio's reset state
    /// (OUT2 set), so the line is not gated here either.
    #[must_use]
    pub fn interrupt_level(&self) -> bool {
        let state = self.serial.state();
        let iir = state.interrupt_identification;
        let ier = state.interrupt_enable;
        let transmitter_empty = iir & IIR_THR_EMPTY != 0 && ier & IER_THR_EMPTY != 0;
        let received_data = iir & IIR_RECEIVED_DATA != 0 && ier & IER_RECEIVED_DATA != 0;
        transmitter_empty || received_data
    }
}

impl<W: Write> Uart<W> {
    /// Whether the guest asks for data: the modem control register's RTS
    /// (request to send) is set, as Linux's 8250 driver does when a
    /// program opens the port (after resetting the FIFOs) and undoes when
    /// the last one closes it. The host holds console input back until
    /// then, the way hardware flow control would, instead of letting the
    /// driver's FIFO resets throw it away.
    #[must_use]
    pub fn ready_to_receive(&self) -> bool {
        self.serial.state().modem_control & MCR_RTS != 0
    }

    /// Moves bytes from `input` into the receiver FIFO while it has room
    /// (received-data interrupt as the IER says). Bytes that do not fit
    /// wait in `input` for the guest to read the FIFO.
    pub fn receive(&mut self, input: &mut VecDeque<u8>) {
        while !input.is_empty() && self.serial.fifo_capacity() > 0 {
            let (front, _) = input.as_slices();
            let take = front.len().min(self.serial.fifo_capacity());
            // Loopback mode or a full FIFO takes nothing: wait.
            match self.serial.enqueue_raw_bytes(&front[..take]) {
                Ok(0) | Err(_) => return,
                Ok(taken) => {
                    input.drain(..taken);
                }
            }
        }
    }
}

impl Uart<Box<dyn Write>> {
    /// The power-on state, keeping the output writer.
    pub fn reset(&mut self) {
        let interrupts = self.serial.interrupt_evt().clone();
        let old = std::mem::replace(
            &mut self.serial,
            Serial::new(interrupts.clone(), Box::new(std::io::sink())),
        );
        self.serial = Serial::new(interrupts, old.into_writer());
    }
}

/// MCR: request to send.
pub const MCR_RTS: u8 = 0x02;
/// IIR: transmitter holding register empty.
pub const IIR_THR_EMPTY: u8 = 0x02;
/// IIR: received data available.
pub const IIR_RECEIVED_DATA: u8 = 0x04;
/// IER: received data available interrupt enable.
pub const IER_RECEIVED_DATA: u8 = 0x01;
/// IER: transmitter holding register empty interrupt enable.
pub const IER_THR_EMPTY: u8 = 0x02;

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

    #[test]
    fn received_bytes_wait_for_room_in_the_fifo() {
        let mut uart = Uart::new(Vec::new(), InterruptCount::default());
        assert!(!uart.ready_to_receive(), "RTS is clear at reset");
        uart.write(4, 1, u32::from(MCR_RTS | 0x08));
        assert!(uart.ready_to_receive());
        uart.write(1, 1, u32::from(IER_RECEIVED_DATA));
        let mut input: VecDeque<u8> = (0..100u8).collect();
        uart.receive(&mut input);
        assert_eq!(input.len(), 100 - 64, "the FIFO holds 64");
        assert!(uart.interrupt_level(), "received data with IER");
        assert_eq!(uart.read(5, 1) & 1, 1, "LSR data ready");
        for expected in 0..64u32 {
            assert_eq!(uart.read(0, 1), expected);
        }
        assert!(!uart.interrupt_level());
        uart.receive(&mut input);
        assert!(input.is_empty());
        assert_eq!(uart.read(0, 1), 64);
    }

    #[test]
    fn interrupt_line_follows_iir_and_ier() {
        let mut uart = Uart::new(Vec::new(), InterruptCount::default());
        assert!(!uart.interrupt_level());
        uart.write(1, 1, u32::from(IER_THR_EMPTY));
        assert!(uart.interrupt_level(), "THR empty with IER");
        // Reading the IIR acknowledges the THRE interrupt.
        assert_eq!(uart.read(2, 1) & 0x0f, 0x02);
        assert!(!uart.interrupt_level());
        // A transmitted byte makes the holding register empty again.
        uart.write(0, 1, u32::from(b'x'));
        assert!(uart.interrupt_level());
        uart.write(1, 1, 0);
        assert!(!uart.interrupt_level(), "disabled in IER");
    }
}
