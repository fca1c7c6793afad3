//! The PC's interrupt and timer chipset: the 8259A pair, the 8254 PIT and
//! system control port B, with the PIT's counter 0 wired to IRQ 0, and the
//! MC146818 real-time clock with its CMOS RAM on IRQ 8.
//!
//! It runs inside the world process, next to the monitor: the guest
//! programs these chips constantly (an EOI per interrupt, Linux's TSC
//! calibration polls port 0x61 and the counters thousands of times), and
//! none of them needs a host resource, so they cost no exit to the host
//! (the clock's time comes from the host's real time at boot, passed in).
//! The host only reports the levels of the interrupt lines of its own
//! devices (COM1); the world arms a host timer for [`Chipset::next_event`].

use crate::cmos::Cmos;
use crate::pic::{Pic, PicChip};
use crate::pit::Pit;

/// The master PIC.
pub const PIC_MASTER: u16 = 0x20;
/// The slave PIC.
pub const PIC_SLAVE: u16 = 0xa0;
/// The PIT's first port (counters 0-2 and the control word at +3).
pub const PIT: u16 = 0x40;
/// System control port B (PIT gate 2, speaker, refresh, OUT2).
pub const PORT_B: u16 = 0x61;
/// The POST diagnostic port: Linux writes it as an I/O delay (`outb_p`,
/// `slow_down_io`) around PIC, PIT and CMOS accesses, thousands of times
/// during boot, so it costs no exit either.
pub const POST: u16 = 0x80;
/// The PIT's counter 0 drives this IRQ.
pub const TIMER_IRQ: u8 = 0;
/// The real-time clock's index and data ports.
pub const RTC: u16 = 0x70;
/// The real-time clock drives this IRQ.
pub const RTC_IRQ: u8 = 8;

/// PIC pair, PIT, port B, the real-time clock and the POST port.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Chipset {
    /// The interrupt controllers.
    pub pic: Pic,
    /// The timer.
    pub pit: Pit,
    /// The real-time clock and CMOS RAM.
    pub cmos: Cmos,
    /// Levels of the host's interrupt lines last applied (bit n = IRQ n).
    host_levels: u16,
    /// The last POST code written.
    post_code: u8,
    /// Edges of the PIT's counter 0 that came while the PIC still held
    /// the previous one: raised one at a time as the guest takes them.
    timer_backlog: u64,
}

/// Most timer edges kept for catching up: a second's worth at 1 kHz. A
/// guest kept from running longer than that loses the rest, as a PC whose
/// CPU was stopped would.
const MAX_TIMER_BACKLOG: u64 = 1000;

impl Chipset {
    /// Power-on state; the real-time clock shows `wall_clock_at_zero_ns`
    /// (host real time, Unix epoch ns) at `now_ns == 0` and the CMOS the
    /// memory sizes of `ram_bytes` of guest RAM.
    #[must_use]
    pub fn new(wall_clock_at_zero_ns: i128, ram_bytes: u64) -> Self {
        Self {
            pic: Pic::default(),
            pit: Pit::default(),
            cmos: Cmos::new(wall_clock_at_zero_ns, ram_bytes),
            host_levels: 0,
            post_code: 0,
            timer_backlog: 0,
        }
    }

    /// Whether `port` belongs to the chipset.
    #[must_use]
    pub fn claims(port: u16) -> bool {
        matches!(
            port,
            PIC_MASTER | 0x21 | PIC_SLAVE | 0xa1 | PIT..=0x43 | PORT_B | RTC | 0x71 | POST
        )
    }

    /// IN of `size` bytes at time `now_ns`; `None` if the port is not the
    /// chipset's. Wider accesses read consecutive byte ports, as on the
    /// ISA bus.
    pub fn read(&mut self, port: u16, size: u8, now_ns: u64) -> Option<u32> {
        if !Self::claims(port) {
            return None;
        }
        let mut value = 0u32;
        // At most four bytes: IN has no wider form.
        for index in 0..size.min(4) {
            let byte = match port.wrapping_add(u16::from(index)) {
                port @ (PIC_MASTER | 0x21) => self.pic.read(PicChip::Master, port - PIC_MASTER),
                port @ (PIC_SLAVE | 0xa1) => self.pic.read(PicChip::Slave, port - PIC_SLAVE),
                port @ PIT..=0x43 => self.pit.read(port - PIT, now_ns),
                PORT_B => self.pit.read_port_b(now_ns),
                port @ (RTC | 0x71) => self.cmos.read(port - RTC, now_ns),
                // Reads of the POST port float (QEMU answers 0xff too).
                _ => 0xff,
            };
            value |= u32::from(byte) << (8 * u32::from(index));
        }
        self.advance(now_ns);
        Some(value)
    }

    /// OUT of `size` bytes at time `now_ns`; false if the port is not the
    /// chipset's.
    pub fn write(&mut self, port: u16, size: u8, value: u32, now_ns: u64) -> bool {
        if !Self::claims(port) {
            return false;
        }
        for (index, byte) in value
            .to_le_bytes()
            .into_iter()
            .take(usize::from(size))
            .enumerate()
        {
            #[allow(clippy::cast_possible_truncation)] // index < 4
            match port.wrapping_add(index as u16) {
                port @ (PIC_MASTER | 0x21) => {
                    self.pic.write(PicChip::Master, port - PIC_MASTER, byte)
                }
                port @ (PIC_SLAVE | 0xa1) => self.pic.write(PicChip::Slave, port - PIC_SLAVE, byte),
                port @ PIT..=0x43 => self.pit.write(port - PIT, byte, now_ns),
                PORT_B => self.pit.write_port_b(byte, now_ns),
                port @ (RTC | 0x71) => self.cmos.write(port - RTC, byte, now_ns),
                POST => self.post_code = byte,
                _ => {}
            }
        }
        self.advance(now_ns);
        true
    }

    /// Brings the timer to `now_ns`: if counter 0's output rose since the
    /// last call, IRQ 0 gets an edge (the PIC latches one; a world that was
    /// not scheduled for several periods takes one late tick, as a PC whose
    /// CPU was stopped would).
    ///
    /// Edges that came while the PIC still held an unacknowledged one are
    /// not lost but kept and raised one at a time as the guest takes the
    /// interrupt (up to [`MAX_TIMER_BACKLOG`]): the world may not run for
    /// a while (an exit to the host, the host's scheduler) while the guest
    /// counts ticks to keep time, and Linux compares its tick count with
    /// the TSC, which runs on.
    pub fn advance(&mut self, now_ns: u64) {
        let edges = self.pit.take_rising_edges(0, now_ns);
        if edges > 0 {
            if self.pic.chip(PicChip::Master).imr() & (1 << TIMER_IRQ) == 0 {
                self.timer_backlog = self
                    .timer_backlog
                    .saturating_add(edges)
                    .min(MAX_TIMER_BACKLOG);
            } else {
                // Masked: the IRR latches one edge, as on a PC.
                self.pic.set_irq(TIMER_IRQ, true);
                self.pic.set_irq(TIMER_IRQ, false);
            }
        }
        self.raise_timer_backlog();
        // The clock's pin is a level; the PIC latches its rising edge.
        self.cmos.advance(now_ns);
        self.pic.set_irq(RTC_IRQ, self.cmos.irq_level());
    }

    /// Applies the levels of the host's interrupt lines (bit n = IRQ n);
    /// only lines that changed are touched, except `pulses`: lines that
    /// dropped and rose again meanwhile, which give the PIC a new edge.
    /// The chipset's own lines (IRQ 0, the cascade IRQ 2, IRQ 8) are left
    /// to the chipset: a host level there would fight the timer's and the
    /// clock's pins and give the PIC edges `next_event` never announced.
    pub fn set_host_levels(&mut self, levels: u16, pulses: u16) {
        let own = (1 << TIMER_IRQ) | (1 << 2) | (1 << RTC_IRQ);
        let (levels, pulses) = (levels & !own, pulses & !own);
        let changed = levels ^ self.host_levels;
        for line in 0..16u8 {
            let bit = 1 << line;
            if pulses & bit != 0 && levels & bit != 0 && changed & bit == 0 {
                self.pic.set_irq(line, false);
                self.pic.set_irq(line, true);
            } else if changed & bit != 0 {
                self.pic.set_irq(line, levels & bit != 0);
            }
        }
        self.host_levels = levels;
    }

    /// When the host must next bring the chipset up to date: the next
    /// rising edge of counter 0 (an edge already past but not taken yet is
    /// due now). None while IRQ 0 is masked at the master: its edges are
    /// taken lazily at the next access, with the same visible result
    /// (advance runs before any register read and after every write).
    pub fn next_event(&mut self, now_ns: u64) -> Option<u64> {
        let clock = self.cmos.next_event(now_ns);
        if self.pic.chip(PicChip::Master).imr() & (1 << TIMER_IRQ) != 0 {
            return clock;
        }
        // Brings the counter up to now first: an edge already past is due
        // at once.
        let next = self.pit.next_rising_edge(0, now_ns);
        let timer = if self.pit.pending_rising_edges(0) > 0
            || (self.timer_backlog > 0
                && self.pic.chip(PicChip::Master).irr() & (1 << TIMER_IRQ) == 0)
        {
            Some(now_ns)
        } else {
            next
        };
        match (timer, clock) {
            (Some(timer), Some(clock)) => Some(timer.min(clock)),
            (timer, clock) => timer.or(clock),
        }
    }

    /// Raises the next kept timer edge if the PIC's request for the last
    /// one was taken.
    fn raise_timer_backlog(&mut self) {
        if self.timer_backlog > 0 && self.pic.chip(PicChip::Master).irr() & (1 << TIMER_IRQ) == 0 {
            self.pic.set_irq(TIMER_IRQ, true);
            self.pic.set_irq(TIMER_IRQ, false);
            self.timer_backlog -= 1;
        }
    }

    /// The last POST code the guest wrote to port 0x80.
    #[must_use]
    pub fn post_code(&self) -> u8 {
        self.post_code
    }

    /// The CPU's INTR line.
    #[must_use]
    pub fn interrupt_pending(&self) -> bool {
        self.pic.interrupt_pending()
    }

    /// The interrupt acknowledge cycle: the vector to deliver.
    pub fn acknowledge(&mut self) -> u8 {
        let vector = self.pic.acknowledge();
        self.raise_timer_backlog();
        vector
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn program_pic(chipset: &mut Chipset) {
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
            assert!(chipset.write(port, 1, value, 0));
        }
    }

    #[test]
    fn the_timer_interrupts_through_the_pic() {
        let mut chipset = Chipset::new(0, 64 << 20);
        program_pic(&mut chipset);
        // Counter 0, mode 2, LSB then MSB, 1193 -> ~1 kHz.
        chipset.write(0x43, 1, 0x34, 0);
        chipset.write(0x40, 1, 1193 & 0xff, 0);
        chipset.write(0x40, 1, 1193 >> 8, 0);
        assert!(!chipset.interrupt_pending());
        let due = chipset
            .next_event(0)
            .expect("a programmed timer has a next edge");
        assert!(due > 900_000 && due < 1_100_000, "{due}");
        chipset.advance(due);
        assert!(chipset.interrupt_pending());
        assert_eq!(chipset.acknowledge(), 0x20);
        assert!(!chipset.interrupt_pending());
        chipset.write(0x20, 1, 0x20, due);
        // An edge that passed without being taken is due at once.
        assert_eq!(chipset.next_event(due + MS), Some(due + MS));
        chipset.advance(due + MS);
        assert!(chipset.interrupt_pending());
    }

    #[test]
    fn timer_edges_missed_while_one_is_pending_are_delivered_later() {
        let mut chipset = Chipset::new(0, 64 << 20);
        program_pic(&mut chipset);
        // 1 kHz, then 5 ms without a look: five edges.
        chipset.write(0x43, 1, 0x34, 0);
        chipset.write(0x40, 1, 1193 & 0xff, 0);
        chipset.write(0x40, 1, 1193 >> 8, 0);
        chipset.advance(5 * MS + MS / 2);
        let mut taken = 0;
        while chipset.interrupt_pending() {
            assert_eq!(chipset.acknowledge(), 0x20);
            chipset.write(0x20, 1, 0x20, 5 * MS + MS / 2);
            taken += 1;
        }
        assert_eq!(taken, 5, "every tick reaches the guest");
    }

    #[test]
    fn the_real_time_clock_interrupts_on_irq_8() {
        let mut chipset = Chipset::new(0, 64 << 20);
        program_pic(&mut chipset);
        chipset.write(0xa1, 1, 0xfe, 0); // unmask IRQ 8
        chipset.write(0x21, 1, 0xfa, 0); // and the cascade
        // Periodic interrupt at 1024 Hz.
        chipset.write(0x70, 1, 0x0b, 0);
        chipset.write(0x71, 1, 0x42, 0);
        let due = chipset.next_event(0).expect("the clock's next edge");
        assert!(due <= MS, "{due}");
        chipset.advance(due);
        assert!(chipset.interrupt_pending());
        assert_eq!(chipset.acknowledge(), 0x28);
    }

    #[test]
    fn masked_lines_and_host_levels() {
        let mut chipset = Chipset::new(0, 64 << 20);
        program_pic(&mut chipset);
        chipset.write(0x21, 1, 0xff, 0);
        chipset.write(0x43, 1, 0x34, 0);
        chipset.write(0x40, 1, 0xa9, 0);
        chipset.write(0x40, 1, 0x04, 0);
        assert_eq!(chipset.next_event(0), None, "IRQ 0 masked: no timer events");
        chipset.advance(10 * MS);
        assert!(!chipset.interrupt_pending());
        chipset.write(0x21, 1, 0xef, 10 * MS);
        assert!(!chipset.interrupt_pending(), "timer still masked");
        chipset.set_host_levels(1 << 4, 0);
        assert!(chipset.interrupt_pending(), "COM1's level on IRQ 4");
        assert_eq!(chipset.acknowledge(), 0x24);
        // IRQ 4's edge was taken; the masked timer's edges stay requested.
        assert_eq!(
            chipset.read(0x20, 1, 10 * MS),
            Some(0x01),
            "IRR after the acknowledge"
        );
        assert_eq!(chipset.read(0x3f8, 1, 0), None);
        assert!(!chipset.write(0x3f8, 1, 0, 0));
    }

    /// A host level on the clock's IRQ 8 once fought the RTC's pin: the
    /// host dropping it let the next `advance` give the PIC an edge that
    /// `next_event` had not announced. Found by the fuzz target
    /// `chipset_survives_any_port_sequence`.
    #[test]
    fn host_levels_leave_the_chipsets_own_lines_alone() {
        let mut chipset = Chipset::new(0, 64 << 20);
        program_pic(&mut chipset);
        chipset.write(0x21, 1, 0x00, 0);
        chipset.write(0xa1, 1, 0x00, 0);
        // The clock's update-ended interrupt: IRQ 8 high after a second.
        chipset.write(0x70, 1, 0x0b, 0);
        chipset.write(0x71, 1, 0x12, 0);
        chipset.advance(2_000 * MS);
        assert!(chipset.interrupt_pending());
        assert_eq!(chipset.acknowledge(), 0x28);
        chipset.write(0xa0, 1, 0x20, 2_000 * MS);
        chipset.write(0x20, 1, 0x20, 2_000 * MS);
        assert!(!chipset.interrupt_pending());
        // The host claims IRQ 8 (and 0 and 2) and lets go again.
        chipset.set_host_levels(0x0105, 0x0105);
        chipset.set_host_levels(0, 0);
        assert_eq!(chipset.next_event(2_000 * MS), None);
        chipset.advance(2_000 * MS);
        assert!(!chipset.interrupt_pending(), "an edge nobody announced");
    }

    /// An IN wider than four bytes (no CPU makes one) once overflowed the
    /// byte shift: found by the fuzz target
    /// `chipset_survives_any_port_sequence`.
    #[test]
    fn reads_wider_than_a_dword_stop_at_four_bytes() {
        let mut chipset = Chipset::new(0, 64 << 20);
        assert_eq!(chipset.read(0x80, 5, 0), Some(0xffff_ffff));
        assert!(chipset.read(0x40, 255, 0).is_some());
        assert!(chipset.write(0x80, 255, 0x42, 0));
        assert_eq!(chipset.post_code(), 0x42);
    }

    #[test]
    fn pit_and_port_b() {
        let mut chipset = Chipset::new(0, 64 << 20);
        // Linux's calibration: gate 2 on, speaker off, mode 0 on counter 2.
        chipset.write(0x61, 1, 0x01, 0);
        chipset.write(0x43, 1, 0xb0, 0);
        chipset.write(0x42, 1, 0xff, 0);
        chipset.write(0x42, 1, 0xff, 0);
        assert_eq!(chipset.read(0x61, 1, 0).map(|value| value & 0x20), Some(0));
        assert_eq!(
            chipset.read(0x61, 1, 60 * MS).map(|value| value & 0x20),
            Some(0x20)
        );
        // A word read of 0x40 reads counters 0 and 1.
        assert!(chipset.read(0x40, 2, 60 * MS).is_some());
        // The POST port takes Linux's I/O delay writes without an exit.
        assert!(chipset.write(0x80, 1, 0x42, 0));
        assert_eq!(chipset.post_code(), 0x42);
        assert_eq!(chipset.read(0x80, 1, 0), Some(0xff));
    }
}
