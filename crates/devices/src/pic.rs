//! The PC's pair of Intel 8259A programmable interrupt controllers.
//!
//! Each chip ([`I8259`]) follows the 8259A datasheet: the ICW1-ICW4
//! initialisation sequence, OCW1 (the IMR), OCW2 (EOI, rotation, priority),
//! OCW3 (register read select, poll, special mask mode), priority resolution
//! with rotation, and the INTA cycle. [`Pic`] wires two of them as on a PC/AT:
//! the slave's INT drives the master's IR2, and in an INTA cycle for IR2 the
//! slave whose ICW3 ID is 2 supplies the vector.
//!
//! # On the bus
//!
//! Registers are addressed by A0 (offset 0: ICW1/OCW2/OCW3 writes, IRR/ISR or
//! poll reads; offset 1: ICW2-ICW4/OCW1 writes, IMR reads). The board owns the
//! pair in an `Rc<RefCell<Pic>>` (it also needs it to raise lines and run INTA
//! cycles) and puts one [`PicPort`] per chip on the bus:
//!
//! ```
//! # use std::{cell::RefCell, rc::Rc};
//! # use devices::Bus;
//! # use devices::pic::{Pic, PicChip, PicPort};
//! let pic = Rc::new(RefCell::new(Pic::new()));
//! let mut bus = Bus::new();
//! bus.add("pic-master", 0x20, 2, Box::new(PicPort::new(pic.clone(), PicChip::Master)))?;
//! bus.add("pic-slave", 0xa0, 2, Box::new(PicPort::new(pic.clone(), PicChip::Slave)))?;
//! # Ok::<(), devices::bus::OverlapError>(())
//! ```
//!
//! # Modelling choices
//!
//! - Edge-triggered requests (LTIM = 0) are latched in the IRR on the rising
//!   edge and stay there until acknowledged, even if the line drops first (as
//!   in QEMU). A real 8259A also wants the line still high at INTA;
//!   latching lets a host deliver a timer tick as a short pulse. In level mode
//!   the IRR follows the line, so a line that drops before INTA gives the
//!   spurious IR7 vector.
//! - ICW1 clears the IRR (the datasheet resets the edge sense circuit, so a
//!   line already high must go low and high again) and the ISR (as QEMU does;
//!   the datasheet leaves it alone, but a re-initialised chip with a stale
//!   in-service bit would block its level and all below it).
//! - The vector is always formed as in 8086 mode (ICW2 T7-T3 plus the level):
//!   an x86 CPU cannot run the MCS-80 CALL sequence, so uPM = 0 is recorded
//!   but changes nothing, as in QEMU.
//! - Special fully nested mode is honoured on the master: a slave's IR may
//!   interrupt again while that IR is in service. Buffered mode only selects
//!   master or slave (M/S), which on the PC the SP/EN wiring already does.
//! - Special mask mode: in-service levels do not inhibit other levels (only
//!   masked levels are inhibited), and a non-specific EOI skips in-service
//!   levels that are masked, as the datasheet says.
//! - There is no BIOS: [`Pic::new`] leaves the chips as a PC BIOS would
//!   (ICW1 0x11, vectors 0x08 and 0x70, cascade on IR2, 8086 mode), with
//!   every line masked until the guest programs them.
//!
//! Devices drive their ISA line through [`Pic::set_irq`] or a [`PicLine`]
//! (`set_level(bool)`); the CPU side asks [`Pic::interrupt_pending`] and runs
//! [`Pic::acknowledge`] for the vector.

use std::cell::RefCell;
use std::rc::Rc;

use crate::bus::{BusEffect, PortDevice};

/// ICW1 marker bit (D4): a command-port write with D4 set is ICW1.
pub const ICW1: u8 = 0x10;
/// ICW1: ICW4 needed.
pub const ICW1_IC4: u8 = 0x01;
/// ICW1: single (no ICW3).
pub const ICW1_SNGL: u8 = 0x02;
/// ICW1: call address interval 4 (MCS-80 only).
pub const ICW1_ADI: u8 = 0x04;
/// ICW1: level triggered mode.
pub const ICW1_LTIM: u8 = 0x08;
/// ICW2: the vector base bits T7-T3 in 8086 mode.
pub const ICW2_T7_T3: u8 = 0xf8;
/// ICW3 of a slave: its ID (the master's IR it is wired to).
pub const ICW3_ID: u8 = 0x07;
/// ICW4: 8086/8088 mode.
pub const ICW4_UPM: u8 = 0x01;
/// ICW4: automatic end of interrupt.
pub const ICW4_AEOI: u8 = 0x02;
/// ICW4: master (1) or slave (0), in buffered mode.
pub const ICW4_MS: u8 = 0x04;
/// ICW4: buffered mode.
pub const ICW4_BUF: u8 = 0x08;
/// ICW4: special fully nested mode.
pub const ICW4_SFNM: u8 = 0x10;
/// OCW2: rotate.
pub const OCW2_R: u8 = 0x80;
/// OCW2: specific level.
pub const OCW2_SL: u8 = 0x40;
/// OCW2: end of interrupt.
pub const OCW2_EOI: u8 = 0x20;
/// OCW2: the level L2-L0 for specific commands.
pub const OCW2_L: u8 = 0x07;
/// OCW2 R SL EOI = 001: non-specific EOI command.
const NON_SPECIFIC_EOI: u8 = OCW2_EOI;
/// OCW2 R SL EOI = 011: specific EOI command.
const SPECIFIC_EOI: u8 = OCW2_SL | OCW2_EOI;
/// OCW2 R SL EOI = 101: rotate on non-specific EOI command.
const ROTATE_ON_NON_SPECIFIC_EOI: u8 = OCW2_R | OCW2_EOI;
/// OCW2 R SL EOI = 100: rotate in automatic EOI mode (set).
const ROTATE_IN_AEOI_SET: u8 = OCW2_R;
/// OCW2 R SL EOI = 000: rotate in automatic EOI mode (clear).
const ROTATE_IN_AEOI_CLEAR: u8 = 0;
/// OCW2 R SL EOI = 111: rotate on specific EOI command.
const ROTATE_ON_SPECIFIC_EOI: u8 = OCW2_R | OCW2_SL | OCW2_EOI;
/// OCW2 R SL EOI = 110: set priority command.
const SET_PRIORITY: u8 = OCW2_R | OCW2_SL;
/// OCW3 marker bit (D3, with D4 clear): a command-port write with D3 set is
/// OCW3, otherwise OCW2.
pub const OCW3: u8 = 0x08;
/// OCW3: enable special mask mode change.
pub const OCW3_ESMM: u8 = 0x40;
/// OCW3: special mask mode (with ESMM).
pub const OCW3_SMM: u8 = 0x20;
/// OCW3: poll command.
pub const OCW3_P: u8 = 0x04;
/// OCW3: read register command.
pub const OCW3_RR: u8 = 0x02;
/// OCW3: read ISR (1) or IRR (0), with RR.
pub const OCW3_RIS: u8 = 0x01;
/// Poll byte: an interrupt was pending (W2-W0 hold its level).
pub const POLL_I: u8 = 0x80;
/// The IR the 8259A answers with when the request went away before INTA.
pub const SPURIOUS_IR: u8 = 7;
/// The master IR the slave's INT is wired to on a PC/AT.
pub const CASCADE_IR: u8 = 2;

/// Where a chip is in its initialisation sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Init {
    /// Initialised: data-port writes are OCW1.
    Ready,
    /// ICW1 written: the next data-port write is ICW2.
    Icw2,
    /// The next data-port write is ICW3.
    Icw3,
    /// The next data-port write is ICW4.
    Icw4,
}

/// One 8259A.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct I8259 {
    /// Interrupt request register.
    irr: u8,
    /// In-service register.
    isr: u8,
    /// Interrupt mask register (OCW1).
    imr: u8,
    /// The levels on IR0-IR7, for edge sensing.
    ir: u8,
    /// The SP/EN pin: high on the master of a non-buffered cascade.
    sp: bool,
    /// Initialisation command words as last written (ICW4 is 0 when ICW1
    /// said none follows).
    icw1: u8,
    icw2: u8,
    icw3: u8,
    icw4: u8,
    init: Init,
    /// The IR with the lowest priority (IR7 after ICW1; moved by rotation).
    lowest_priority: u8,
    /// Rotate in automatic EOI mode (OCW2).
    rotate_in_aeoi: bool,
    /// OCW3 RIS: reads of the command port return the ISR, else the IRR.
    ris: bool,
    /// OCW3 P: the next read is a poll.
    poll: bool,
    /// OCW3 SMM: special mask mode.
    smm: bool,
}

impl I8259 {
    /// A chip before any ICW, its SP/EN pin tied as `sp` (high: master).
    fn new(sp: bool) -> Self {
        Self {
            irr: 0,
            isr: 0,
            imr: 0,
            ir: 0,
            sp,
            icw1: 0,
            icw2: 0,
            icw3: 0,
            icw4: 0,
            init: Init::Ready,
            lowest_priority: 7,
            rotate_in_aeoi: false,
            ris: false,
            poll: false,
            smm: false,
        }
    }

    /// Interrupt request register.
    #[must_use]
    pub fn irr(&self) -> u8 {
        self.irr
    }

    /// In-service register.
    #[must_use]
    pub fn isr(&self) -> u8 {
        self.isr
    }

    /// Interrupt mask register.
    #[must_use]
    pub fn imr(&self) -> u8 {
        self.imr
    }

    fn level_triggered(&self) -> bool {
        self.icw1 & ICW1_LTIM != 0
    }

    fn auto_eoi(&self) -> bool {
        self.icw4 & ICW4_AEOI != 0
    }

    /// Master or slave: ICW4 M/S in buffered mode, else the SP/EN pin.
    fn is_master(&self) -> bool {
        if self.icw4 & ICW4_BUF != 0 {
            self.icw4 & ICW4_MS != 0
        } else {
            self.sp
        }
    }

    fn cascaded(&self) -> bool {
        self.icw1 & ICW1_SNGL == 0
    }

    /// Whether a slave hangs on IR `level` of this master.
    fn slave_at(&self, level: u8) -> bool {
        self.cascaded() && self.is_master() && self.icw3 & (1 << level) != 0
    }

    /// The ID a cascaded slave answers to on CAS0-CAS2.
    fn slave_id(&self) -> Option<u8> {
        (self.cascaded() && !self.is_master()).then_some(self.icw3 & ICW3_ID)
    }

    /// IR levels from highest to lowest priority.
    fn by_priority(&self) -> impl Iterator<Item = u8> + use<> {
        let lowest = self.lowest_priority;
        (1..=8).map(move |step| (lowest + step) & 7)
    }

    /// The priority resolver: the IR that INT asks service for, if any.
    fn resolve(&self) -> Option<u8> {
        let requests = self.irr & !self.imr;
        let sfnm = self.icw4 & ICW4_SFNM != 0 && self.is_master();
        for level in self.by_priority() {
            let bit = 1 << level;
            if self.isr & bit != 0 {
                if self.smm {
                    // Special mask mode: in-service levels inhibit nothing
                    // else, and their own level only while in service.
                    continue;
                }
                // Fully nested: this level and lower ones wait. In special
                // fully nested mode the slave on this IR may interrupt again
                // (for one of its own higher-priority requests).
                return (sfnm && self.slave_at(level) && requests & bit != 0).then_some(level);
            }
            if requests & bit != 0 {
                return Some(level);
            }
        }
        None
    }

    /// The INT output.
    fn int(&self) -> bool {
        self.resolve().is_some()
    }

    /// A new level on input IR `level`.
    fn set_ir(&mut self, level: u8, high: bool) {
        let bit = 1 << (level & 7);
        let rising = high && self.ir & bit == 0;
        if high {
            self.ir |= bit;
        } else {
            self.ir &= !bit;
        }
        if self.level_triggered() {
            self.irr = (self.irr & !bit) | (self.ir & bit);
        } else if rising {
            self.irr |= bit;
        }
    }

    /// An INTA cycle (or a poll, which the 8259A treats as one): freezes the
    /// highest request, sets its ISR bit and clears its (edge) IRR bit.
    /// `None` is the default IR7 answer when no request is left.
    fn acknowledge(&mut self) -> Option<u8> {
        let level = self.resolve()?;
        let bit = 1 << level;
        self.isr |= bit;
        if !self.level_triggered() {
            self.irr &= !bit;
        }
        if self.auto_eoi() {
            // The automatic EOI at the end of the last INTA pulse.
            self.isr &= !bit;
            if self.rotate_in_aeoi {
                self.lowest_priority = level;
            }
        }
        Some(level)
    }

    /// The vector for an acknowledged level (`None`: the spurious IR7).
    fn vector(&self, level: Option<u8>) -> u8 {
        (self.icw2 & ICW2_T7_T3) | level.unwrap_or(SPURIOUS_IR)
    }

    /// The in-service level a non-specific EOI clears: the highest priority
    /// one, ignoring masked ones in special mask mode.
    fn highest_in_service(&self) -> Option<u8> {
        let isr = if self.smm {
            self.isr & !self.imr
        } else {
            self.isr
        };
        self.by_priority().find(|level| isr & (1 << level) != 0)
    }

    /// Register read at A0 = `offset & 1`.
    fn read(&mut self, offset: u16) -> u8 {
        if self.poll {
            self.poll = false;
            return self.acknowledge().map_or(0, |level| POLL_I | level);
        }
        if offset & 1 == 1 {
            self.imr
        } else if self.ris {
            self.isr
        } else {
            self.irr
        }
    }

    /// Register write at A0 = `offset & 1`.
    fn write(&mut self, offset: u16, value: u8) {
        if offset & 1 == 0 {
            if value & ICW1 != 0 {
                self.write_icw1(value);
            } else if value & OCW3 != 0 {
                self.write_ocw3(value);
            } else {
                self.write_ocw2(value);
            }
            return;
        }
        match self.init {
            Init::Ready => self.imr = value,
            Init::Icw2 => {
                self.icw2 = value;
                self.init = if self.cascaded() {
                    Init::Icw3
                } else {
                    self.after_icw3()
                };
            }
            Init::Icw3 => {
                self.icw3 = value;
                self.init = self.after_icw3();
            }
            Init::Icw4 => {
                self.icw4 = value;
                self.init = Init::Ready;
            }
        }
    }

    fn after_icw3(&self) -> Init {
        if self.icw1 & ICW1_IC4 != 0 {
            Init::Icw4
        } else {
            Init::Ready
        }
    }

    fn write_icw1(&mut self, value: u8) {
        self.icw1 = value;
        self.init = Init::Icw2;
        // The edge sense circuit is reset: only new rising edges count.
        self.irr = if self.level_triggered() { self.ir } else { 0 };
        self.isr = 0;
        self.imr = 0;
        self.lowest_priority = 7;
        // Slave mode address set to 7.
        self.icw3 = ICW3_ID;
        self.smm = false;
        self.ris = false;
        self.poll = false;
        self.rotate_in_aeoi = false;
        // No ICW4: all its functions are zero.
        self.icw4 = 0;
    }

    fn write_ocw2(&mut self, value: u8) {
        let level = value & OCW2_L;
        match value & (OCW2_R | OCW2_SL | OCW2_EOI) {
            NON_SPECIFIC_EOI | ROTATE_ON_NON_SPECIFIC_EOI => {
                if let Some(done) = self.highest_in_service() {
                    self.isr &= !(1 << done);
                    if value & OCW2_R != 0 {
                        self.lowest_priority = done;
                    }
                }
            }
            SPECIFIC_EOI | ROTATE_ON_SPECIFIC_EOI => {
                self.isr &= !(1 << level);
                if value & OCW2_R != 0 {
                    self.lowest_priority = level;
                }
            }
            SET_PRIORITY => self.lowest_priority = level,
            ROTATE_IN_AEOI_SET => self.rotate_in_aeoi = true,
            ROTATE_IN_AEOI_CLEAR => self.rotate_in_aeoi = false,
            // No operation (SL alone).
            _ => {}
        }
    }

    fn write_ocw3(&mut self, value: u8) {
        if value & OCW3_ESMM != 0 {
            self.smm = value & OCW3_SMM != 0;
        }
        if value & OCW3_RR != 0 {
            self.ris = value & OCW3_RIS != 0;
        }
        // The poll command takes precedence over the register read.
        self.poll = value & OCW3_P != 0;
    }
}

/// One chip of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PicChip {
    /// The master (PC ports 0x20-0x21), IRQ 0-7.
    Master,
    /// The slave (PC ports 0xa0-0xa1), IRQ 8-15, on master IR2.
    Slave,
}

/// The PC/AT pair of 8259As: IRQ 0-7 on the master, IRQ 8-15 on the slave,
/// the slave's INT on master IR2.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Pic {
    master: I8259,
    slave: I8259,
}

impl Default for Pic {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic {
    /// The pair as a PC BIOS leaves it (edge triggered, master vectors
    /// 0x08-0x0f, slave 0x70-0x77, cascade on IR2, 8086 mode), with every
    /// line masked until the guest programs it.
    #[must_use]
    pub fn new() -> Self {
        let mut pic = Self {
            master: I8259::new(true),
            slave: I8259::new(false),
        };
        for (chip, icw2, icw3) in [(PicChip::Master, 0x08, 0x04), (PicChip::Slave, 0x70, 0x02)] {
            for (offset, value) in [(0, 0x11), (1, icw2), (1, icw3), (1, 0x01), (1, 0xff)] {
                pic.write(chip, offset, value);
            }
        }
        pic
    }

    /// One chip's registers, for inspection.
    #[must_use]
    pub fn chip(&self, chip: PicChip) -> &I8259 {
        match chip {
            PicChip::Master => &self.master,
            PicChip::Slave => &self.slave,
        }
    }

    fn chip_mut(&mut self, chip: PicChip) -> &mut I8259 {
        match chip {
            PicChip::Master => &mut self.master,
            PicChip::Slave => &mut self.slave,
        }
    }

    /// Drives ISA interrupt line `line` (0-15) to `level`. Line 2 is the
    /// cascade input, driven by the slave only (a PC/AT routes the ISA bus's
    /// IRQ 2 pin to IRQ 9), so it and lines above 15 are ignored.
    pub fn set_irq(&mut self, line: u8, level: bool) {
        match line {
            0..=7 if line != CASCADE_IR => self.master.set_ir(line, level),
            8..=15 => self.slave.set_ir(line - 8, level),
            _ => {}
        }
        self.update();
    }

    /// Register read at `offset` (A0) of `chip`.
    pub fn read(&mut self, chip: PicChip, offset: u16) -> u8 {
        let value = self.chip_mut(chip).read(offset);
        self.update();
        value
    }

    /// Register write at `offset` (A0) of `chip`.
    pub fn write(&mut self, chip: PicChip, offset: u16, value: u8) {
        self.chip_mut(chip).write(offset, value);
        self.update();
    }

    /// The master's INT output: the CPU should run an INTA cycle
    /// ([`Pic::acknowledge`]) when its IF allows.
    #[must_use]
    pub fn interrupt_pending(&self) -> bool {
        self.master.int()
    }

    /// The INTA cycle: the vector the CPU receives. When the request went
    /// away, the master answers its IR7 (spurious IRQ 7); when the master
    /// granted the slave's IR2 but the slave has nothing left, the master's
    /// IR2 stays in service and the slave answers its IR7 (spurious IRQ 15).
    /// If the guest programmed the master to expect a slave on an IR that no
    /// slave's ICW3 ID matches, nobody drives the data bus and the CPU reads
    /// 0xff.
    pub fn acknowledge(&mut self) -> u8 {
        let vector = match self.master.acknowledge() {
            Some(level) if self.master.slave_at(level) => {
                if self.slave.slave_id() == Some(level) {
                    let slave_level = self.slave.acknowledge();
                    self.slave.vector(slave_level)
                } else {
                    // No slave answers these CAS lines: the data bus floats.
                    0xff
                }
            }
            level => self.master.vector(level),
        };
        self.update();
        vector
    }

    /// Recomputes the cascade: the slave's INT onto master IR2.
    fn update(&mut self) {
        let slave_int = self.slave.int();
        self.master.set_ir(CASCADE_IR, slave_int);
    }
}

/// One chip of a shared [`Pic`] on the port bus (two ports, A0 = offset).
#[derive(Debug)]
pub struct PicPort {
    pic: Rc<RefCell<Pic>>,
    chip: PicChip,
}

impl PicPort {
    /// `chip` of `pic`.
    #[must_use]
    pub fn new(pic: Rc<RefCell<Pic>>, chip: PicChip) -> Self {
        Self { pic, chip }
    }
}

impl PortDevice for PicPort {
    fn read(&mut self, offset: u16, _size: u8) -> u32 {
        // The pair is only borrowed elsewhere by the board between bus
        // accesses; a clash answers like an empty bus rather than panicking.
        self.pic
            .try_borrow_mut()
            .map_or(0xff, |mut pic| u32::from(pic.read(self.chip, offset)))
    }

    fn write(&mut self, offset: u16, _size: u8, value: u32) -> BusEffect {
        if let Ok(mut pic) = self.pic.try_borrow_mut() {
            pic.write(self.chip, offset, value.to_le_bytes()[0]);
        }
        BusEffect::None
    }
}

/// One interrupt line of a shared [`Pic`], for a device model to drive
/// (the house style's level-triggered `set_level`).
#[derive(Clone, Debug)]
pub struct PicLine {
    pic: Rc<RefCell<Pic>>,
    line: u8,
}

impl PicLine {
    /// ISA line `line` (0-15) of `pic`.
    #[must_use]
    pub fn new(pic: Rc<RefCell<Pic>>, line: u8) -> Self {
        Self { pic, line }
    }

    /// Drives the line to `level` (see [`Pic::set_irq`]).
    pub fn set_level(&self, level: bool) {
        if let Ok(mut pic) = self.pic.try_borrow_mut() {
            pic.set_irq(self.line, level);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use PicChip::{Master, Slave};

    /// Programs the pair as Linux 6.1 does (init_8259A): edge, vectors
    /// 0x20/0x28, cascade on IR2, 8086 mode, then the masks.
    fn linux(master_mask: u8, slave_mask: u8) -> Pic {
        let mut pic = Pic::new();
        for (chip, icw2, icw3, mask) in [
            (Master, 0x20, 0x04, master_mask),
            (Slave, 0x28, 0x02, slave_mask),
        ] {
            pic.write(chip, 0, 0x11);
            pic.write(chip, 1, icw2);
            pic.write(chip, 1, icw3);
            pic.write(chip, 1, 0x01);
            pic.write(chip, 1, mask);
        }
        pic
    }

    fn pulse(pic: &mut Pic, line: u8) {
        pic.set_irq(line, true);
        pic.set_irq(line, false);
    }

    fn irr(pic: &mut Pic, chip: PicChip) -> u8 {
        pic.write(chip, 0, 0x0a);
        pic.read(chip, 0)
    }

    fn isr(pic: &mut Pic, chip: PicChip) -> u8 {
        pic.write(chip, 0, 0x0b);
        pic.read(chip, 0)
    }

    #[test]
    fn power_on_state_is_masked_and_bios_like() {
        let mut pic = Pic::new();
        assert_eq!(pic.read(Master, 1), 0xff);
        assert_eq!(pic.read(Slave, 1), 0xff);
        pic.set_irq(1, true);
        assert!(!pic.interrupt_pending());
        pic.write(Master, 1, 0xfd);
        assert!(pic.interrupt_pending());
        assert_eq!(pic.acknowledge(), 0x09);
    }

    #[test]
    fn initialisation_sequence() {
        let mut pic = Pic::new();
        // ICW1 clears the IMR; the chip then takes ICW2-ICW4 on port 1.
        pic.write(Master, 0, 0x11);
        assert_eq!(pic.read(Master, 1), 0x00);
        pic.write(Master, 1, 0x20);
        pic.write(Master, 1, 0x04);
        pic.write(Master, 1, 0x01);
        assert_eq!(pic.chip(Master).init, Init::Ready);
        assert_eq!(pic.chip(Master).icw3, 0x04);
        assert_eq!(pic.chip(Master).icw4, 0x01);
        // Now port 1 is OCW1.
        pic.write(Master, 1, 0xfb);
        assert_eq!(pic.read(Master, 1), 0xfb);
        // Single mode without ICW4: ICW3 skipped, ICW4 functions zero.
        pic.write(Slave, 0, 0x1a);
        pic.write(Slave, 1, 0x40);
        assert_eq!(pic.chip(Slave).init, Init::Ready);
        assert_eq!(pic.chip(Slave).icw4, 0);
        assert!(pic.chip(Slave).level_triggered());
        // Command-port reads return the IRR after ICW1.
        pic.write(Slave, 1, 0x00);
        pic.set_irq(8, true);
        assert_eq!(pic.read(Slave, 0), 0x01);
    }

    #[test]
    fn icw1_needs_a_new_edge() {
        let mut pic = linux(0x00, 0xff);
        pic.set_irq(3, true);
        assert_eq!(irr(&mut pic, Master), 0x08);
        pic.write(Master, 0, 0x11);
        pic.write(Master, 1, 0x20);
        pic.write(Master, 1, 0x04);
        pic.write(Master, 1, 0x01);
        // The line is still high, but the edge sense circuit was reset.
        assert_eq!(irr(&mut pic, Master), 0x00);
        pic.set_irq(3, true);
        assert!(!pic.interrupt_pending());
        pic.set_irq(3, false);
        pic.set_irq(3, true);
        assert_eq!(pic.acknowledge(), 0x23);
    }

    #[test]
    fn masks_and_fixed_priorities() {
        let mut pic = linux(0x00, 0x00);
        assert!(!pic.interrupt_pending());
        pulse(&mut pic, 4);
        pulse(&mut pic, 1);
        assert_eq!(irr(&mut pic, Master), 0x12);
        // IR1 beats IR4.
        assert_eq!(pic.acknowledge(), 0x21);
        assert_eq!(isr(&mut pic, Master), 0x02);
        assert_eq!(irr(&mut pic, Master), 0x10);
        // IR4 waits for IR1's EOI.
        assert!(!pic.interrupt_pending());
        // A higher priority request nests.
        pulse(&mut pic, 0);
        assert_eq!(pic.acknowledge(), 0x20);
        assert_eq!(isr(&mut pic, Master), 0x03);
        // Non-specific EOI clears the highest priority in-service level.
        pic.write(Master, 0, 0x20);
        assert_eq!(isr(&mut pic, Master), 0x02);
        assert!(!pic.interrupt_pending());
        pic.write(Master, 0, 0x20);
        assert_eq!(pic.acknowledge(), 0x24);
        pic.write(Master, 0, 0x20);
        assert_eq!(isr(&mut pic, Master), 0x00);
        // Masked requests stay in the IRR and do not interrupt.
        pic.write(Master, 1, 0x40);
        pulse(&mut pic, 6);
        assert_eq!(irr(&mut pic, Master), 0x40);
        assert!(!pic.interrupt_pending());
    }

    #[test]
    fn edge_latched_while_masked_is_delivered_after_unmasking() {
        let mut pic = linux(0xff, 0xff);
        pulse(&mut pic, 5);
        assert!(!pic.interrupt_pending());
        pic.write(Master, 1, 0xdf);
        assert!(pic.interrupt_pending());
        assert_eq!(pic.acknowledge(), 0x25);
        // The edge was consumed: nothing more until a new rising edge.
        pic.write(Master, 0, 0x20);
        assert!(!pic.interrupt_pending());
        pic.set_irq(5, true);
        pic.set_irq(5, true);
        assert_eq!(pic.acknowledge(), 0x25);
        pic.write(Master, 0, 0x20);
        assert!(!pic.interrupt_pending());
    }

    #[test]
    fn specific_eoi() {
        let mut pic = linux(0x00, 0xff);
        pulse(&mut pic, 3);
        assert_eq!(pic.acknowledge(), 0x23);
        pulse(&mut pic, 1);
        assert_eq!(pic.acknowledge(), 0x21);
        assert_eq!(isr(&mut pic, Master), 0x0a);
        // Specific EOI of the lower priority level, as Linux does (0x60 + n).
        pic.write(Master, 0, 0x63);
        assert_eq!(isr(&mut pic, Master), 0x02);
        pic.write(Master, 0, 0x61);
        assert_eq!(isr(&mut pic, Master), 0x00);
    }

    #[test]
    fn rotation() {
        let mut pic = linux(0x00, 0xff);
        // Set priority: IR4 lowest, so IR5 is highest.
        pic.write(Master, 0, 0xc4);
        pulse(&mut pic, 1);
        pulse(&mut pic, 6);
        assert_eq!(pic.acknowledge(), 0x26);
        // Rotate on non-specific EOI: IR6 becomes lowest, IR7 highest.
        pic.write(Master, 0, 0xa0);
        assert_eq!(pic.chip(Master).lowest_priority, 6);
        pulse(&mut pic, 6);
        pulse(&mut pic, 0);
        assert_eq!(pic.acknowledge(), 0x20);
        // Rotate on specific EOI: IR0 lowest.
        pic.write(Master, 0, 0xe0);
        assert_eq!(pic.chip(Master).lowest_priority, 0);
        assert_eq!(pic.acknowledge(), 0x21);
        pic.write(Master, 0, 0x20);
        assert_eq!(pic.acknowledge(), 0x26);
        pic.write(Master, 0, 0x20);
        // ICW1 restores IR7 as lowest.
        pic.write(Master, 0, 0x11);
        assert_eq!(pic.chip(Master).lowest_priority, 7);
    }

    #[test]
    fn level_triggered_lines() {
        let mut pic = linux(0x00, 0xff);
        // Re-initialise the master in level mode.
        pic.write(Master, 0, 0x19);
        pic.write(Master, 1, 0x20);
        pic.write(Master, 1, 0x04);
        pic.write(Master, 1, 0x01);
        pic.set_irq(4, true);
        assert_eq!(pic.acknowledge(), 0x24);
        // The IRR follows the line: still requesting, so an EOI with the line
        // high interrupts again.
        assert_eq!(irr(&mut pic, Master), 0x10);
        pic.write(Master, 0, 0x20);
        assert!(pic.interrupt_pending());
        pic.set_irq(4, false);
        assert_eq!(irr(&mut pic, Master), 0x00);
        assert!(!pic.interrupt_pending());
        // A line that drops before INTA gives the spurious IR7, in service
        // nowhere.
        pic.set_irq(4, true);
        assert!(pic.interrupt_pending());
        pic.set_irq(4, false);
        assert_eq!(pic.acknowledge(), 0x27);
        assert_eq!(isr(&mut pic, Master), 0x00);
    }

    #[test]
    fn spurious_irq_15_leaves_master_ir2_in_service() {
        let mut pic = linux(0x00, 0x00);
        // The slave in level mode.
        pic.write(Slave, 0, 0x19);
        pic.write(Slave, 1, 0x28);
        pic.write(Slave, 1, 0x02);
        pic.write(Slave, 1, 0x01);
        pic.set_irq(11, true);
        assert!(pic.interrupt_pending());
        assert_eq!(irr(&mut pic, Master), 0x04);
        pic.set_irq(11, false);
        // The master latched the slave's INT edge and grants IR2; the slave
        // has nothing left and answers its IR7.
        assert_eq!(pic.acknowledge(), 0x2f);
        assert_eq!(isr(&mut pic, Master), 0x04);
        assert_eq!(isr(&mut pic, Slave), 0x00);
        pic.write(Master, 0, 0x62);
        assert_eq!(isr(&mut pic, Master), 0x00);
        assert!(!pic.interrupt_pending());
    }

    #[test]
    fn cascaded_slave_interrupts_and_their_eois() {
        let mut pic = linux(0x00, 0x00);
        pulse(&mut pic, 12);
        pulse(&mut pic, 9);
        assert!(pic.interrupt_pending());
        assert_eq!(pic.acknowledge(), 0x29);
        assert_eq!(isr(&mut pic, Master), 0x04);
        assert_eq!(isr(&mut pic, Slave), 0x02);
        // IRQ 12 waits behind IRQ 9 on the slave, and behind IR2 on the
        // master.
        assert!(!pic.interrupt_pending());
        // A master IR below IR2 nests; IR3 does not.
        pulse(&mut pic, 3);
        assert!(!pic.interrupt_pending());
        pulse(&mut pic, 1);
        assert_eq!(pic.acknowledge(), 0x21);
        pic.write(Master, 0, 0x61);
        // Linux's EOI order: slave specific, then master specific on IR2.
        pic.write(Slave, 0, 0x61);
        assert!(!pic.interrupt_pending());
        pic.write(Master, 0, 0x62);
        // The slave's INT rose again for IRQ 12; it beats IR3.
        assert_eq!(pic.acknowledge(), 0x2c);
        pic.write(Slave, 0, 0x20);
        pic.write(Master, 0, 0x20);
        assert_eq!(pic.acknowledge(), 0x23);
        pic.write(Master, 0, 0x20);
        assert!(!pic.interrupt_pending());
        assert_eq!(pic.acknowledge(), 0x27);
        // A masked cascade input hides the slave.
        pic.write(Master, 1, 0x04);
        pulse(&mut pic, 14);
        assert!(!pic.interrupt_pending());
        pic.write(Master, 1, 0x00);
        assert_eq!(pic.acknowledge(), 0x2e);
    }

    #[test]
    fn special_fully_nested_mode() {
        let mut pic = linux(0x00, 0x00);
        pic.write(Master, 0, 0x11);
        pic.write(Master, 1, 0x20);
        pic.write(Master, 1, 0x04);
        pic.write(Master, 1, 0x11);
        pulse(&mut pic, 12);
        assert_eq!(pic.acknowledge(), 0x2c);
        // IRQ 8 on the slave raises its INT again; in SFNM the master lets
        // it through although IR2 is in service.
        pulse(&mut pic, 8);
        assert_eq!(pic.acknowledge(), 0x28);
        assert_eq!(isr(&mut pic, Slave), 0x11);
    }

    #[test]
    fn auto_eoi_and_rotation_in_it() {
        let mut pic = linux(0x00, 0xff);
        pic.write(Master, 0, 0x11);
        pic.write(Master, 1, 0x20);
        pic.write(Master, 1, 0x04);
        pic.write(Master, 1, 0x03);
        pulse(&mut pic, 3);
        pulse(&mut pic, 5);
        assert_eq!(pic.acknowledge(), 0x23);
        assert_eq!(isr(&mut pic, Master), 0x00);
        // No EOI needed before the next, lower priority request.
        assert_eq!(pic.acknowledge(), 0x25);
        // Rotate in AEOI mode: each acknowledged level becomes lowest.
        pic.write(Master, 0, 0x80);
        pulse(&mut pic, 1);
        assert_eq!(pic.acknowledge(), 0x21);
        assert_eq!(pic.chip(Master).lowest_priority, 1);
        pulse(&mut pic, 1);
        pulse(&mut pic, 6);
        assert_eq!(pic.acknowledge(), 0x26);
        pic.write(Master, 0, 0x00);
        assert_eq!(pic.acknowledge(), 0x21);
        assert_eq!(pic.chip(Master).lowest_priority, 6);
    }

    #[test]
    fn poll_mode() {
        let mut pic = linux(0x00, 0x00);
        pulse(&mut pic, 6);
        pic.write(Master, 0, 0x0c);
        assert_eq!(pic.read(Master, 0), 0x86);
        assert_eq!(isr(&mut pic, Master), 0x40);
        // Nothing requesting: I = 0.
        pic.write(Master, 0, 0x0c);
        assert_eq!(pic.read(Master, 1), 0x00);
        // The poll was one read; the register select comes back.
        assert_eq!(pic.read(Master, 0), 0x40);
        pic.write(Master, 0, 0x20);
        // Polling a cascade: the master says IR2, then the slave its level.
        pulse(&mut pic, 10);
        pic.write(Master, 0, 0x0c);
        assert_eq!(pic.read(Master, 0), 0x82);
        pic.write(Slave, 0, 0x0c);
        assert_eq!(pic.read(Slave, 0), 0x82);
        assert_eq!(isr(&mut pic, Slave), 0x04);
    }

    #[test]
    fn special_mask_mode() {
        let mut pic = linux(0x00, 0xff);
        pulse(&mut pic, 3);
        assert_eq!(pic.acknowledge(), 0x23);
        // The handler masks its own level and enters special mask mode.
        pic.write(Master, 1, 0x08);
        pic.write(Master, 0, 0x68);
        pulse(&mut pic, 5);
        assert_eq!(pic.acknowledge(), 0x25);
        assert_eq!(isr(&mut pic, Master), 0x28);
        // A non-specific EOI skips the masked IR3.
        pic.write(Master, 0, 0x20);
        assert_eq!(isr(&mut pic, Master), 0x08);
        // Leaving special mask mode: IR3 in service blocks IR5 again.
        pic.write(Master, 0, 0x48);
        pic.write(Master, 1, 0x00);
        pulse(&mut pic, 5);
        assert!(!pic.interrupt_pending());
        pic.write(Master, 0, 0x20);
        assert_eq!(pic.acknowledge(), 0x25);
    }

    #[test]
    fn cascade_line_is_not_an_isa_line() {
        let mut pic = linux(0x00, 0x00);
        pic.set_irq(2, true);
        pic.set_irq(16, true);
        assert!(!pic.interrupt_pending());
        assert_eq!(pic.acknowledge(), 0x27);
    }

    #[test]
    fn on_the_bus() {
        let pic = Rc::new(RefCell::new(Pic::new()));
        let mut bus = crate::Bus::new();
        for (name, port, chip) in [("master", 0x20, Master), ("slave", 0xa0, Slave)] {
            let added = bus.add(name, port, 2, Box::new(PicPort::new(pic.clone(), chip)));
            assert!(added.is_ok());
        }
        for (port, value) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01)] {
            bus.write(port, 1, value);
        }
        for (port, value) in [(0xa0, 0x11), (0xa1, 0x28), (0xa1, 0x02), (0xa1, 0x01)] {
            bus.write(port, 1, value);
        }
        bus.write(0x21, 1, 0xfa);
        bus.write(0xa1, 1, 0xbf);
        assert_eq!(bus.read(0x21, 1), 0xfa);
        assert_eq!(bus.read(0xa1, 1), 0xbf);
        pic.borrow_mut().set_irq(14, true);
        assert_eq!(bus.read(0xa0, 1), 0x40);
        assert_eq!(pic.borrow_mut().acknowledge(), 0x2e);
        bus.write(0xa0, 1, 0x0b);
        assert_eq!(bus.read(0xa0, 1), 0x40);
        bus.write(0xa0, 1, 0x20);
        bus.write(0x20, 1, 0x20);
        // A device's line.
        let com1 = PicLine::new(pic.clone(), 4);
        bus.write(0x21, 1, 0xea);
        com1.set_level(true);
        assert!(pic.borrow().interrupt_pending());
        assert_eq!(pic.borrow_mut().acknowledge(), 0x24);
    }
}
