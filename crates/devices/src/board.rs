//! The btvmm PC: its devices and port layout in one place, and the time
//! and interrupt wiring between them.

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;

use crate::bus::{Bus, BusEffect, OverlapError, PortDevice};
use crate::debug_exit::DebugExit;
use crate::pic::{Pic, PicChip, PicPort};
use crate::pit::Pit;
use crate::uart::{InterruptCount, Uart};

/// COM1.
pub const COM1: u16 = 0x3f8;
/// QEMU's debug-exit port as the test harness configures it.
pub const DEBUG_EXIT: u16 = 0xf4;
/// The master PIC.
pub const PIC_MASTER: u16 = 0x20;
/// The slave PIC.
pub const PIC_SLAVE: u16 = 0xa0;
/// The PIT's first port (counters 0-2 and the control word at +3).
pub const PIT: u16 = 0x40;
/// System control port B (PIT gate 2, speaker, refresh, OUT2).
pub const PORT_B: u16 = 0x61;
/// The PIT's counter 0 drives this IRQ.
pub const TIMER_IRQ: u8 = 0;
/// COM1's IRQ.
pub const COM1_IRQ: u8 = 4;

/// The devices of the PC, wired on a bus.
pub struct Board {
    /// Port devices that need no time.
    pub bus: Bus,
    /// The interrupt controllers (also on the bus).
    pub pic: Rc<RefCell<Pic>>,
    /// The timer (dispatched by the board: it needs the time).
    pub pit: Pit,
    /// COM1 (dispatched by the board: it drives IRQ 4).
    pub com1: Uart<Box<dyn Write>>,
}

impl Board {
    /// COM1 transmitting to `console`, the PIC pair, the PIT and the
    /// debug-exit port.
    pub fn new(console: impl Write + 'static) -> Result<Self, OverlapError> {
        let pic = Rc::new(RefCell::new(Pic::new()));
        let mut bus = Bus::new();
        bus.add("debug-exit", DEBUG_EXIT, 4, Box::new(DebugExit))?;
        bus.add(
            "pic-master",
            PIC_MASTER,
            2,
            Box::new(PicPort::new(pic.clone(), PicChip::Master)),
        )?;
        bus.add(
            "pic-slave",
            PIC_SLAVE,
            2,
            Box::new(PicPort::new(pic.clone(), PicChip::Slave)),
        )?;
        Ok(Self {
            bus,
            pic,
            pit: Pit::new(),
            com1: Uart::new(Box::new(console), InterruptCount::default()),
        })
    }

    /// IN at time `now_ns`.
    pub fn read(&mut self, port: u16, size: u8, now_ns: u64) -> u32 {
        if size == 1 {
            match port {
                PIT..=0x43 => return u32::from(self.pit.read(port - PIT, now_ns)),
                PORT_B => return u32::from(self.pit.read_port_b(now_ns)),
                COM1..=0x3ff => {
                    let value = self.com1.read(port - COM1, size);
                    self.update_com1();
                    return value;
                }
                _ => {}
            }
        }
        let value = self.bus.read(port, size);
        self.advance(now_ns);
        value
    }

    /// OUT at time `now_ns`.
    pub fn write(&mut self, port: u16, size: u8, value: u32, now_ns: u64) -> BusEffect {
        let byte = value.to_le_bytes()[0];
        let effect = match port {
            PIT..=0x43 if size == 1 => {
                self.pit.write(port - PIT, byte, now_ns);
                BusEffect::None
            }
            PORT_B if size == 1 => {
                self.pit.write_port_b(byte, now_ns);
                BusEffect::None
            }
            COM1..=0x3ff if size == 1 => {
                let effect = self.com1.write(port - COM1, size, value);
                self.update_com1();
                effect
            }
            _ => self.bus.write(port, size, value),
        };
        self.advance(now_ns);
        effect
    }

    fn update_com1(&mut self) {
        let level = self.com1.interrupt_level();
        self.pic.borrow_mut().set_irq(COM1_IRQ, level);
    }

    /// Brings the timer to `now_ns`: each time counter 0's output rose since
    /// the last call, IRQ 0 gets an edge (the PIC latches one; a host that
    /// slept through several periods delivers one late tick, as a PC whose
    /// CPU was stopped would).
    pub fn advance(&mut self, now_ns: u64) {
        if self.pit.take_rising_edges(0, now_ns) > 0 {
            let mut pic = self.pic.borrow_mut();
            pic.set_irq(TIMER_IRQ, true);
            pic.set_irq(TIMER_IRQ, false);
        }
    }

    /// When the next timer event is due (the next rising edge of counter
    /// 0's output), if any.
    pub fn next_event(&mut self, now_ns: u64) -> Option<u64> {
        self.pit.next_rising_edge(0, now_ns)
    }

    /// The CPU's INTR line: the master PIC's output.
    #[must_use]
    pub fn interrupt_pending(&self) -> bool {
        self.pic.borrow().interrupt_pending()
    }

    /// The interrupt acknowledge cycle: the vector to deliver.
    pub fn acknowledge(&mut self) -> u8 {
        self.pic.borrow_mut().acknowledge()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn program_pic(board: &mut Board) {
        for (port, value) in [
            (0x20, 0x11),
            (0x21, 0x20),
            (0x21, 0x04),
            (0x21, 0x01),
            (0xa0, 0x11),
            (0xa1, 0x28),
            (0xa1, 0x02),
            (0xa1, 0x01),
            (0x21, 0xfe),
            (0xa1, 0xff),
        ] {
            board.write(port, 1, value, 0);
        }
    }

    #[test]
    fn the_timer_interrupts_through_the_pic() {
        let mut board = Board::new(Vec::new()).expect("board");
        program_pic(&mut board);
        // Counter 0, mode 2, LSB then MSB, 1193 -> ~1 kHz.
        board.write(0x43, 1, 0x34, 0);
        board.write(0x40, 1, 1193 & 0xff, 0);
        board.write(0x40, 1, 1193 >> 8, 0);
        assert!(!board.interrupt_pending());
        let due = board
            .next_event(0)
            .expect("a programmed timer has a next edge");
        assert!(due > 900_000 && due < 1_100_000, "{due}");
        board.advance(due);
        assert!(board.interrupt_pending());
        assert_eq!(board.acknowledge(), 0x20);
        assert!(!board.interrupt_pending());
        // Non-specific EOI, then the next period.
        board.write(0x20, 1, 0x20, due);
        board.advance(due + MS);
        assert!(board.interrupt_pending());
    }

    #[test]
    fn masked_timer_stays_quiet() {
        let mut board = Board::new(Vec::new()).expect("board");
        program_pic(&mut board);
        board.write(0x21, 1, 0xff, 0);
        board.write(0x43, 1, 0x34, 0);
        board.write(0x40, 1, 0xa9, 0);
        board.write(0x40, 1, 0x04, 0);
        board.advance(10 * MS);
        assert!(!board.interrupt_pending());
        board.write(0x21, 1, 0xfe, 10 * MS);
        assert!(
            board.interrupt_pending(),
            "the latched edge shows after unmasking"
        );
    }

    #[test]
    fn pit_and_port_b_reach_the_timer() {
        let mut board = Board::new(Vec::new()).expect("board");
        // Linux's calibration: gate 2 on, speaker off, mode 0 on counter 2.
        board.write(0x61, 1, 0x01, 0);
        board.write(0x43, 1, 0xb0, 0);
        board.write(0x42, 1, 0xff, 0);
        board.write(0x42, 1, 0xff, 0);
        assert_eq!(board.read(0x61, 1, 0) & 0x20, 0, "OUT2 low while counting");
        assert_ne!(
            board.read(0x61, 1, 60 * MS) & 0x20,
            0,
            "OUT2 high after 65535 clocks"
        );
    }
}
