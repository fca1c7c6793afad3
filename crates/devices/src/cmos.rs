//! The Motorola MC146818 real-time clock of the PC/AT and its CMOS RAM.
//!
//! 128 bytes: the time, alarm and control registers 0x00-0x0D of the
//! MC146818 datasheet, then RAM that a PC BIOS lays out (equipment byte,
//! memory sizes, the checksum over 0x10-0x2D, the century byte at 0x32).
//!
//! # Time
//!
//! Every method that needs it takes `now_ns`, a monotonic host clock in
//! nanoseconds; the model never reads a clock. [`Cmos::new`] is given the
//! host's real time (Unix epoch, ns) that corresponds to `now_ns == 0`, and
//! the clock runs on from there in UTC. A `now_ns` earlier than one already
//! seen is taken as the latest seen.
//!
//! The divider chain is modelled in ticks of the 32.768 kHz time base, fixed
//! on the time axis: while the divider runs, tick `k` is at
//! `origin + k / 32768 s`. Every 32768th tick is an update (the time
//! advances one second); the periodic flag sets every `2^(RS - 1)` ticks;
//! UIP reads 1 during the last 8 ticks (244.14 us) before an update. Long
//! gaps between calls cost O(1).
//!
//! # On the bus
//!
//! Offset 0 is the index register (PC port 0x70; bit 7 of the written value
//! is the PC's NMI disable bit, kept apart from the index and readable with
//! [`Cmos::nmi_disabled`]; the port reads 0xFF, it is write-only on a PC),
//! offset 1 the data register (port 0x71). The board dispatches them with
//! its clock: `cmos.read(port - 0x70, now)`, `cmos.write(port - 0x70, value,
//! now)`.
//!
//! # Interrupt
//!
//! The IRQ pin drives IRQ 8. [`Cmos::irq_level`] is the pin (IRQF); it only
//! rises with time and only drops on a port access (reading register C, or a
//! write to register B that clears an enable). After every port access, and
//! when the time [`Cmos::next_event`] returned has come (call it again then:
//! it brings the flags up to date and gives the next deadline), the board
//! passes `irq_level()` to the interrupt controller.
//!
//! # What is modelled
//!
//! The time and calendar registers in BCD or binary, 24-hour or 12-hour
//! (PM in bit 7), the alarm with don't-care bytes (0xC0-0xFF), the SET bit
//! (updates inhibited, the registers frozen and writable; UIE cleared as SET
//! goes high), the divider (010 runs; 11x holds the chain in reset and the
//! first update comes 500 ms after it is released; other values stop the
//! chain where it is), the periodic rates (RS 1 and 2 are 3.90625 ms and
//! 7.8125 ms as with a 32.768 kHz time base), the PF, AF, UF and IRQF flags
//! (set whether or not their interrupt is enabled, cleared by reading
//! register C), and register D's VRT bit. Choices where the chip and a PC
//! differ or the datasheet is silent:
//!
//! - While the clock runs, the time registers read the current time in the
//!   format register B selects at the time of the read (as QEMU does), so
//!   changing DM or 24/12 converts them. While SET is 1 or the divider is
//!   stopped they hold the bytes as frozen or written, and clearing SET (or
//!   starting the divider) takes the time from them in the format then
//!   selected.
//! - A time register written while the clock runs sets the clock at once;
//!   the sub-second phase of the divider chain is kept.
//! - The century byte (0x32) is counted with the year, as the BIOS and
//!   ACPI's century field expect, and the calendar is the Gregorian one (the
//!   chip itself takes every fourth year as a leap year).
//! - The day of the week counts on its own, as on the chip: a guest may
//!   write any day, and it advances with the date from there.
//! - Values out of range written to the time registers are taken at their
//!   weight (BCD digits above 9 too) and normalised: 0x75 seconds read back
//!   as 15 seconds of the next minute.
//! - DSE (daylight saving) and SQWE are stored and do nothing; register D's
//!   date alarm bits (ACPI) are not modelled; D reads 0x80.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

/// Offset of the index register (PC port 0x70).
pub const INDEX_OFFSET: u16 = 0;
/// Offset of the data register (PC port 0x71).
pub const DATA_OFFSET: u16 = 1;
/// Index port: the PC's NMI disable bit (not part of the index).
pub const INDEX_NMI_DISABLE: u8 = 0x80;
/// Index port: the register index.
pub const INDEX_MASK: u8 = 0x7f;
/// Bytes of RAM, registers included.
pub const RAM_SIZE: usize = 128;

/// Seconds.
pub const REG_SECONDS: u8 = 0x00;
/// Seconds alarm.
pub const REG_SECONDS_ALARM: u8 = 0x01;
/// Minutes.
pub const REG_MINUTES: u8 = 0x02;
/// Minutes alarm.
pub const REG_MINUTES_ALARM: u8 = 0x03;
/// Hours (PM in bit 7 in 12-hour mode).
pub const REG_HOURS: u8 = 0x04;
/// Hours alarm.
pub const REG_HOURS_ALARM: u8 = 0x05;
/// Day of the week, 1-7, Sunday = 1.
pub const REG_DAY_OF_WEEK: u8 = 0x06;
/// Date of the month, 1-31.
pub const REG_DATE_OF_MONTH: u8 = 0x07;
/// Month, 1-12.
pub const REG_MONTH: u8 = 0x08;
/// Year of the century, 0-99.
pub const REG_YEAR: u8 = 0x09;
/// Register A: UIP, divider, rate select.
pub const REG_A: u8 = 0x0a;
/// Register B: SET, interrupt enables, data mode.
pub const REG_B: u8 = 0x0b;
/// Register C: interrupt flags (read-only, cleared by reading).
pub const REG_C: u8 = 0x0c;
/// Register D: valid RAM and time (read-only).
pub const REG_D: u8 = 0x0d;

/// Register A: update in progress (read-only).
pub const A_UIP: u8 = 0x80;
/// Register A: DV2 DV1 DV0, the divider.
pub const A_DV: u8 = 0x70;
/// Register A: RS3-RS0, the periodic rate.
pub const A_RS: u8 = 0x0f;
/// DV2 DV1 DV0 = 010: 32.768 kHz time base, running.
pub const DV_32768_HZ: u8 = 0x20;
/// DV2 DV1 = 11: divider chain held in reset.
pub const DV_RESET: u8 = 0x60;
/// Register B: SET, updates inhibited.
pub const B_SET: u8 = 0x80;
/// Register B: periodic interrupt enable.
pub const B_PIE: u8 = 0x40;
/// Register B: alarm interrupt enable.
pub const B_AIE: u8 = 0x20;
/// Register B: update-ended interrupt enable.
pub const B_UIE: u8 = 0x10;
/// Register B: square wave enable.
pub const B_SQWE: u8 = 0x08;
/// Register B: data mode, 1 = binary, 0 = BCD.
pub const B_DM: u8 = 0x04;
/// Register B: 1 = 24-hour mode, 0 = 12-hour mode.
pub const B_24_12: u8 = 0x02;
/// Register B: daylight saving enable.
pub const B_DSE: u8 = 0x01;
/// Register C: interrupt request flag (the IRQ pin).
pub const C_IRQF: u8 = 0x80;
/// Register C: periodic interrupt flag.
pub const C_PF: u8 = 0x40;
/// Register C: alarm interrupt flag.
pub const C_AF: u8 = 0x20;
/// Register C: update-ended interrupt flag.
pub const C_UF: u8 = 0x10;
/// Register D: valid RAM and time.
pub const D_VRT: u8 = 0x80;
/// Alarm bytes with both top bits set match any value.
pub const ALARM_DONT_CARE: u8 = 0xc0;

/// PC CMOS: diagnostic status.
pub const CMOS_DIAGNOSTIC_STATUS: u8 = 0x0e;
/// PC CMOS: shutdown status.
pub const CMOS_SHUTDOWN_STATUS: u8 = 0x0f;
/// PC CMOS: floppy drive types.
pub const CMOS_FLOPPY_TYPES: u8 = 0x10;
/// PC CMOS: hard disk types.
pub const CMOS_DISK_TYPES: u8 = 0x12;
/// PC CMOS: equipment byte.
pub const CMOS_EQUIPMENT: u8 = 0x14;
/// PC CMOS: base memory in KiB, low byte (high byte at +1).
pub const CMOS_BASE_MEMORY: u8 = 0x15;
/// PC CMOS: extended memory above 1 MiB in KiB, low byte (high byte at +1).
pub const CMOS_EXTENDED_MEMORY: u8 = 0x17;
/// PC CMOS: checksum of [`CHECKSUM_RANGE`], high byte (low byte at +1).
pub const CMOS_CHECKSUM: u8 = 0x2e;
/// PC CMOS: extended memory found by POST in KiB, low byte (high at +1).
pub const CMOS_EXTENDED_MEMORY_POST: u8 = 0x30;
/// PC CMOS: century (BCD or binary as register B says).
pub const CMOS_CENTURY: u8 = 0x32;
/// PC CMOS: memory above 16 MiB in 64 KiB blocks, low byte (high at +1).
pub const CMOS_MEMORY_ABOVE_16M: u8 = 0x34;
/// The bytes the AT BIOS checksum covers.
pub const CHECKSUM_RANGE: RangeInclusive<u8> = 0x10..=0x2d;
/// Equipment byte: math coprocessor present.
pub const EQUIPMENT_FPU: u8 = 0x02;
/// Equipment byte: floppy drives installed.
pub const EQUIPMENT_FLOPPY: u8 = 0x01;

/// Ticks of the 32.768 kHz time base per second (one update).
pub const TICKS_PER_SECOND: i128 = 32_768;
/// Ticks UIP is set before each update (244.140625 us).
pub const UIP_TICKS: i128 = 8;

/// Register A after a PC BIOS: 32.768 kHz time base, 1024 Hz rate.
const POWER_ON_A: u8 = DV_32768_HZ | 0x06;
/// Register B after a PC BIOS: 24-hour mode, BCD, no interrupts.
const POWER_ON_B: u8 = B_24_12;
const NS_PER_SECOND: i128 = 1_000_000_000;
const SECONDS_PER_DAY: i64 = 86_400;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// The registers that hold the time, in the order of [`Cmos::time_bytes`].
const TIME_REGISTERS: [u8; 8] = [
    REG_SECONDS,
    REG_MINUTES,
    REG_HOURS,
    REG_DAY_OF_WEEK,
    REG_DATE_OF_MONTH,
    REG_MONTH,
    REG_YEAR,
    CMOS_CENTURY,
];

/// Days since 1970-01-01 of the proleptic Gregorian date `year-month-day`.
/// `month` is 1-12; `day` may run past the month (or be 0), counting on
/// from its first day.
#[must_use]
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Years start on March 1 so that the leap day is the year's last day.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = (month + 9).rem_euclid(12);
    // Days before each month counted from March: 31 30 31 30 31 31 30 31
    // 30 31 31 29 repeats with 153 days every 5 months.
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719468 days from 0000-03-01 to 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date (year, month 1-12, day 1-31) of day `days`
/// since 1970-01-01.
#[must_use]
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    // The year of the era, with the 4-, 100- and 400-year leap rules.
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400;
    (if month <= 2 { year + 1 } else { year }, month, day)
}

/// The day of the week of day `days` since 1970-01-01, 0 = Sunday.
#[must_use]
pub fn weekday(days: i64) -> i64 {
    // 1970-01-01 was a Thursday.
    (days + 4).rem_euclid(7)
}

/// `numerator / denominator` rounded up (`denominator > 0`).
fn ceil_div(numerator: i128, denominator: i128) -> i128 {
    -(-numerator).div_euclid(denominator)
}

fn saturating_i64(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

/// The MC146818 with the PC's 128 bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cmos {
    /// The 128 bytes. The time registers ([`TIME_REGISTERS`]) hold the time
    /// only while the clock is stopped (SET, or the divider not running);
    /// while it runs the time is `base_seconds` plus the updates since
    /// `origin_ns`. Register C holds PF, AF and UF (IRQF is computed);
    /// register A's UIP and register D are computed.
    ram: Vec<u8>,
    /// The index register.
    index: u8,
    /// The NMI disable bit last written with the index.
    nmi_disabled: bool,
    /// The latest time seen (ns).
    last_ns: u64,
    /// While the divider runs: the time (ns) of tick 0 of the chain, which
    /// starts a second (updates happen at every 32768th tick).
    origin_ns: i64,
    /// While the divider is stopped: the chain's position, in ticks into
    /// the second.
    held_tick: i64,
    /// While the clock runs: the time (seconds since 1970-01-01 00:00:00 in
    /// the clock's calendar) at tick 0 of the chain.
    base_seconds: i64,
    /// The day of the week register minus the day of the week of the date,
    /// modulo 7 (the chip counts the day of the week on its own).
    dow_offset: i64,
}

impl Cmos {
    /// The chip and RAM as a PC BIOS leaves them, the clock set to
    /// `wall_clock_at_zero_ns` (Unix epoch, ns, UTC) at `now_ns == 0`, and
    /// memory sizes for `ram_bytes` of guest RAM: register A 0x26, B 0x02
    /// (24-hour, BCD), D 0x80, 640 KiB base memory, extended memory above
    /// 1 MiB (at most 0xFFFF KiB) at 0x17 and 0x30, memory above 16 MiB in
    /// 64 KiB blocks at 0x34, no floppy, a math coprocessor, the century,
    /// and the checksum.
    #[must_use]
    pub fn new(wall_clock_at_zero_ns: i128, ram_bytes: u64) -> Self {
        let mut cmos = Self {
            ram: vec![0; RAM_SIZE],
            index: 0,
            nmi_disabled: false,
            last_ns: 0,
            // Whole seconds of the wall clock fall on update boundaries.
            origin_ns: -saturating_i64(wall_clock_at_zero_ns.rem_euclid(NS_PER_SECOND)),
            held_tick: 0,
            base_seconds: saturating_i64(wall_clock_at_zero_ns.div_euclid(NS_PER_SECOND)),
            dow_offset: 0,
        };
        cmos.set_byte(REG_A, POWER_ON_A);
        cmos.set_byte(REG_B, POWER_ON_B);
        cmos.set_byte(CMOS_EQUIPMENT, EQUIPMENT_FPU);
        cmos.set_word(CMOS_BASE_MEMORY, 640);
        let extended_kib = ram_bytes.saturating_sub(MIB) / KIB;
        let extended_kib = u16::try_from(extended_kib).unwrap_or(u16::MAX);
        cmos.set_word(CMOS_EXTENDED_MEMORY, extended_kib);
        cmos.set_word(CMOS_EXTENDED_MEMORY_POST, extended_kib);
        let above_16m = ram_bytes.saturating_sub(16 * MIB) / (64 * KIB);
        cmos.set_word(
            CMOS_MEMORY_ABOVE_16M,
            u16::try_from(above_16m).unwrap_or(u16::MAX),
        );
        // The registers show the power-on time too (read while stopped).
        cmos.store_time(cmos.base_seconds);
        let [high, low] = cmos.checksum().to_be_bytes();
        cmos.set_byte(CMOS_CHECKSUM, high);
        cmos.set_byte(CMOS_CHECKSUM + 1, low);
        cmos
    }

    /// Records the floppy drives as a BIOS does: `drive_0_type` (the
    /// CMOS type code: 4 is a 3.5" 1.44 MB drive, 0 none) in the high
    /// nibble of 0x10, the equipment byte's floppy bit and drive count,
    /// and the checksum again.
    pub fn set_floppy_drive(&mut self, drive_0_type: u8) {
        self.set_byte(CMOS_FLOPPY_TYPES, drive_0_type << 4);
        let equipment = self.byte(CMOS_EQUIPMENT) & !(EQUIPMENT_FLOPPY | 0xc0);
        let floppy = if drive_0_type == 0 {
            0
        } else {
            // One drive: a count of 1 is 00 in bits 6-7.
            EQUIPMENT_FLOPPY
        };
        self.set_byte(CMOS_EQUIPMENT, equipment | floppy);
        let [high, low] = self.checksum().to_be_bytes();
        self.set_byte(CMOS_CHECKSUM, high);
        self.set_byte(CMOS_CHECKSUM + 1, low);
    }

    /// The AT BIOS checksum: the sum of the bytes in [`CHECKSUM_RANGE`]
    /// (stored big-endian at [`CMOS_CHECKSUM`]).
    #[must_use]
    pub fn checksum(&self) -> u16 {
        CHECKSUM_RANGE.fold(0u16, |sum, index| {
            sum.wrapping_add(u16::from(self.byte(index)))
        })
    }

    /// The PC's NMI disable bit, bit 7 of the last write to the index port.
    #[must_use]
    pub fn nmi_disabled(&self) -> bool {
        self.nmi_disabled
    }

    /// The register the index port selects.
    #[must_use]
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The IRQ pin (IRQ 8 on a PC), as of the last time passed in: IRQF,
    /// that is PF and PIE, AF and AIE, or UF and UIE.
    #[must_use]
    pub fn irq_level(&self) -> bool {
        // The enables in B sit at the bit positions of their flags in C.
        self.byte(REG_C) & self.byte(REG_B) & (C_PF | C_AF | C_UF) != 0
    }

    /// The time the clock shows at `now_ns`, as seconds since 1970-01-01
    /// 00:00:00 of its calendar (Unix time when it keeps UTC).
    pub fn unix_seconds(&mut self, now_ns: u64) -> i64 {
        self.advance(now_ns);
        if self.clock_running() {
            self.seconds_at(self.last_ns)
        } else {
            self.registers_time().0
        }
    }

    /// Register read at `port_offset` (0: the index port, write-only, reads
    /// 0xFF; 1: the register the index selects).
    pub fn read(&mut self, port_offset: u16, now_ns: u64) -> u8 {
        if port_offset != DATA_OFFSET {
            return 0xff;
        }
        self.advance(now_ns);
        let index = self.index;
        match index {
            REG_A => {
                let uip = if self.update_in_progress() { A_UIP } else { 0 };
                (self.byte(REG_A) & !A_UIP) | uip
            }
            REG_C => {
                let irqf = if self.irq_level() { C_IRQF } else { 0 };
                let flags = self.byte(REG_C);
                self.set_byte(REG_C, 0);
                irqf | flags
            }
            REG_D => D_VRT,
            _ => match TIME_REGISTERS
                .iter()
                .position(|&register| register == index)
            {
                Some(position) if self.clock_running() => {
                    let bytes = self.time_bytes(self.seconds_at(self.last_ns));
                    bytes.get(position).copied().unwrap_or(0)
                }
                _ => self.byte(index),
            },
        }
    }

    /// Register write at `port_offset` (0: the index and NMI disable bit;
    /// 1: the register the index selects).
    pub fn write(&mut self, port_offset: u16, value: u8, now_ns: u64) {
        match port_offset {
            INDEX_OFFSET => {
                self.index = value & INDEX_MASK;
                self.nmi_disabled = value & INDEX_NMI_DISABLE != 0;
            }
            DATA_OFFSET => {
                self.advance(now_ns);
                self.write_register(value);
            }
            _ => {}
        }
    }

    /// Brings the flags of register C up to `now_ns`: PF for every periodic
    /// edge, UF for every update, AF for an update onto the alarm time.
    pub fn advance(&mut self, now_ns: u64) {
        let now = now_ns.max(self.last_ns);
        if self.divider_running() {
            let (from, to) = (self.tick(self.last_ns), self.tick(now));
            let mut flags = 0;
            if let Some(period) = self.periodic_ticks()
                && to.div_euclid(period) > from.div_euclid(period)
            {
                flags |= C_PF;
            }
            if self.byte(REG_B) & B_SET == 0 {
                let first = saturating_i64(from.div_euclid(TICKS_PER_SECOND));
                let last = saturating_i64(to.div_euclid(TICKS_PER_SECOND));
                if last > first {
                    flags |= C_UF;
                    let start = self.base_seconds.saturating_add(first);
                    let end = self.base_seconds.saturating_add(last);
                    if self
                        .next_alarm_after(start)
                        .is_some_and(|alarm| alarm <= end)
                    {
                        flags |= C_AF;
                    }
                }
            }
            self.set_byte(REG_C, self.byte(REG_C) | flags);
        }
        self.last_ns = now;
    }

    /// When (ns) the IRQ pin must next be looked at: the next periodic edge
    /// with PIE, update with UIE, or update onto the alarm time with AIE,
    /// whichever comes first, assuming no port access before then. `None`
    /// if no enabled interrupt can raise the pin (none enabled, the divider
    /// stopped, SET for AIE and UIE), or if the pin is already high (it then
    /// only drops on a port access). Brings the flags up to `now_ns` first.
    pub fn next_event(&mut self, now_ns: u64) -> Option<u64> {
        self.advance(now_ns);
        if self.irq_level() || !self.divider_running() {
            return None;
        }
        let enables = self.byte(REG_B);
        let tick = self.tick(self.last_ns);
        let periodic = self
            .periodic_ticks()
            .filter(|_| enables & B_PIE != 0)
            .map(|period| self.time_of_tick((tick.div_euclid(period) + 1) * period));
        let next_second = tick.div_euclid(TICKS_PER_SECOND) + 1;
        let updates = enables & B_SET == 0;
        let update = (updates && enables & B_UIE != 0)
            .then(|| self.time_of_tick(next_second * TICKS_PER_SECOND));
        let alarm = if updates && enables & B_AIE != 0 {
            let now = self.seconds_at(self.last_ns);
            self.next_alarm_after(now).map(|alarm| {
                let seconds = next_second + i128::from(alarm - now - 1);
                self.time_of_tick(seconds * TICKS_PER_SECOND)
            })
        } else {
            None
        };
        [periodic, update, alarm]
            .into_iter()
            .flatten()
            .min()
            .map(|at| u64::try_from(at).unwrap_or(u64::MAX))
    }

    fn byte(&self, index: u8) -> u8 {
        self.ram.get(usize::from(index)).copied().unwrap_or(0)
    }

    fn set_byte(&mut self, index: u8, value: u8) {
        if let Some(byte) = self.ram.get_mut(usize::from(index)) {
            *byte = value;
        }
    }

    /// A 16-bit little-endian value at `index` and `index + 1`.
    fn set_word(&mut self, index: u8, value: u16) {
        let [low, high] = value.to_le_bytes();
        self.set_byte(index, low);
        self.set_byte(index + 1, high);
    }

    fn write_register(&mut self, value: u8) {
        let now = self.last_ns;
        match self.index {
            REG_A => self.write_a(value, now),
            REG_B => self.write_b(value, now),
            REG_C | REG_D => {}
            index if TIME_REGISTERS.contains(&index) && self.clock_running() => {
                // Set the clock from the registers as they read, with this
                // one written; the divider chain keeps its phase.
                self.store_time(self.seconds_at(now));
                self.set_byte(index, value);
                self.load_time(now);
            }
            index => self.set_byte(index, value),
        }
    }

    fn write_a(&mut self, value: u8, now: u64) {
        let was_running = self.clock_running();
        let chain_was_running = self.divider_running();
        if was_running {
            self.store_time(self.seconds_at(now));
        }
        let tick = if chain_was_running {
            saturating_i64(self.tick(now).rem_euclid(TICKS_PER_SECOND))
        } else {
            self.held_tick
        };
        self.set_byte(REG_A, value & !A_UIP);
        if self.byte(REG_A) & DV_RESET == DV_RESET {
            // Held in reset: the first update comes half a second after
            // the divider is released.
            self.held_tick = saturating_i64(TICKS_PER_SECOND / 2);
        } else if !self.divider_running() {
            self.held_tick = tick;
        } else if !chain_was_running {
            let held = ceil_div(i128::from(self.held_tick) * NS_PER_SECOND, TICKS_PER_SECOND);
            self.origin_ns = saturating_i64(i128::from(now) - held);
        }
        if self.clock_running() && !was_running {
            self.load_time(now);
        }
    }

    fn write_b(&mut self, value: u8, now: u64) {
        let was_running = self.clock_running();
        // SET going high clears UIE.
        let value = if value & B_SET != 0 {
            value & !B_UIE
        } else {
            value
        };
        self.set_byte(REG_B, value);
        let running = self.clock_running();
        if was_running && !running {
            self.store_time(self.seconds_at(now));
        } else if running && !was_running {
            self.load_time(now);
        }
    }

    /// DV2 DV1 DV0 = 010: the chain counts.
    fn divider_running(&self) -> bool {
        self.byte(REG_A) & A_DV == DV_32768_HZ
    }

    /// The chain counts and SET is clear: the time advances.
    fn clock_running(&self) -> bool {
        self.divider_running() && self.byte(REG_B) & B_SET == 0
    }

    fn update_in_progress(&self) -> bool {
        self.clock_running()
            && self.tick(self.last_ns).rem_euclid(TICKS_PER_SECOND) >= TICKS_PER_SECOND - UIP_TICKS
    }

    /// Ticks of the chain at `now` since its origin (while it runs).
    fn tick(&self, now: u64) -> i128 {
        ((i128::from(now) - i128::from(self.origin_ns)) * TICKS_PER_SECOND)
            .div_euclid(NS_PER_SECOND)
    }

    /// The time (ns) of tick `tick`: the first `t` with `self.tick(t) >=
    /// tick`.
    fn time_of_tick(&self, tick: i128) -> i128 {
        i128::from(self.origin_ns) + ceil_div(tick * NS_PER_SECOND, TICKS_PER_SECOND)
    }

    /// The clock at `now`, while it runs.
    fn seconds_at(&self, now: u64) -> i64 {
        let updates = saturating_i64(self.tick(now).div_euclid(TICKS_PER_SECOND));
        self.base_seconds.saturating_add(updates)
    }

    /// Ticks per periodic edge for the rate in register A, `None` for rate
    /// 0.
    fn periodic_ticks(&self) -> Option<i128> {
        match self.byte(REG_A) & A_RS {
            0 => None,
            // With a 32.768 kHz time base, RS 1 and 2 give 256 and 128 Hz.
            1 => Some(128),
            2 => Some(256),
            rate => Some(1 << (rate - 1)),
        }
    }

    fn binary(&self) -> bool {
        self.byte(REG_B) & B_DM != 0
    }

    fn hours_24(&self) -> bool {
        self.byte(REG_B) & B_24_12 != 0
    }

    /// `value` (taken modulo 100) in the data mode of register B.
    fn encode(&self, value: i64) -> u8 {
        let value = value.rem_euclid(100);
        let value = if self.binary() {
            value
        } else {
            value / 10 * 16 + value % 10
        };
        u8::try_from(value).unwrap_or(0)
    }

    /// The value of `byte` in the data mode of register B (BCD digits above
    /// 9 at their binary weight).
    fn decode(&self, byte: u8) -> i64 {
        if self.binary() {
            i64::from(byte)
        } else {
            i64::from(byte >> 4) * 10 + i64::from(byte & 0x0f)
        }
    }

    /// Hour 0-23 as the hours register shows it.
    fn encode_hour(&self, hour: i64) -> u8 {
        if self.hours_24() {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { 0x80 } else { 0 };
        let hour = match hour % 12 {
            0 => 12,
            hour => hour,
        };
        self.encode(hour) | pm
    }

    /// The hour 0-23 of an hours register byte.
    fn decode_hour(&self, byte: u8) -> i64 {
        if self.hours_24() {
            return self.decode(byte);
        }
        let pm = if byte & 0x80 != 0 { 12 } else { 0 };
        self.decode(byte & 0x7f) % 12 + pm
    }

    /// The bytes of [`TIME_REGISTERS`] for the time `seconds`.
    fn time_bytes(&self, seconds: i64) -> [u8; 8] {
        let days = seconds.div_euclid(SECONDS_PER_DAY);
        let time_of_day = seconds.rem_euclid(SECONDS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let day_of_week = (weekday(days) + self.dow_offset).rem_euclid(7) + 1;
        [
            self.encode(time_of_day % 60),
            self.encode(time_of_day / 60 % 60),
            self.encode_hour(time_of_day / 3600),
            self.encode(day_of_week),
            self.encode(day),
            self.encode(month),
            self.encode(year.rem_euclid(100)),
            self.encode(year.div_euclid(100)),
        ]
    }

    /// Freezes the time `seconds` into the registers.
    fn store_time(&mut self, seconds: i64) {
        for (index, byte) in TIME_REGISTERS.into_iter().zip(self.time_bytes(seconds)) {
            self.set_byte(index, byte);
        }
    }

    /// The time the registers hold and the day-of-week offset they imply.
    fn registers_time(&self) -> (i64, i64) {
        let value = |index| self.decode(self.byte(index));
        let year = value(CMOS_CENTURY) * 100 + value(REG_YEAR);
        let month = value(REG_MONTH).clamp(1, 12);
        let days = days_from_civil(year, month, value(REG_DATE_OF_MONTH));
        let seconds = days * SECONDS_PER_DAY
            + self.decode_hour(self.byte(REG_HOURS)) * 3600
            + value(REG_MINUTES) * 60
            + value(REG_SECONDS);
        let day_of_week = value(REG_DAY_OF_WEEK) - 1;
        let dow_offset = (day_of_week - weekday(seconds.div_euclid(SECONDS_PER_DAY))).rem_euclid(7);
        (seconds, dow_offset)
    }

    /// Runs the clock on from the time in the registers at `now`, in the
    /// current second of the chain.
    fn load_time(&mut self, now: u64) {
        let (seconds, dow_offset) = self.registers_time();
        let updates = saturating_i64(self.tick(now).div_euclid(TICKS_PER_SECOND));
        self.base_seconds = seconds.saturating_sub(updates);
        self.dow_offset = dow_offset;
    }

    /// Which of `count` values (0..count) the alarm byte at `index` matches
    /// (bit n: value n), as `encode` shows a value.
    fn alarm_mask(&self, index: u8, count: u32, encode: impl Fn(i64) -> u8) -> u64 {
        let alarm = self.byte(index);
        (0..count).fold(0, |mask, value| {
            let matches =
                alarm & ALARM_DONT_CARE == ALARM_DONT_CARE || encode(i64::from(value)) == alarm;
            if matches { mask | (1 << value) } else { mask }
        })
    }

    /// The first time after `after` (seconds) whose seconds, minutes and
    /// hours registers match the alarm bytes; `None` if none ever does.
    fn next_alarm_after(&self, after: i64) -> Option<i64> {
        let seconds = self.alarm_mask(REG_SECONDS_ALARM, 60, |value| self.encode(value));
        let minutes = self.alarm_mask(REG_MINUTES_ALARM, 60, |value| self.encode(value));
        let hours = self.alarm_mask(REG_HOURS_ALARM, 24, |value| self.encode_hour(value));
        if seconds == 0 || minutes == 0 || hours == 0 {
            return None;
        }
        // Near the ends of the i64 range (a host clock far off) the alarm
        // day cannot be written down: no alarm then.
        let day_start = after.checked_sub(after.rem_euclid(SECONDS_PER_DAY))?;
        // The first candidate second of the day (86400: none today).
        let start = after.rem_euclid(SECONDS_PER_DAY) + 1;
        // The alarm matches once a day at least: today or tomorrow.
        for day in 0..2 {
            let from = if day == 0 { start } else { 0 };
            for hour in (0..24).filter(|hour| hours & (1 << hour) != 0) {
                for minute in (0..60).filter(|minute| minutes & (1 << minute) != 0) {
                    let base = hour * 3600 + minute * 60;
                    // Seconds of this minute not yet past.
                    let first = (from - base).max(0);
                    if first >= 60 {
                        continue;
                    }
                    let first = u32::try_from(first).unwrap_or(0);
                    let candidates = seconds & (u64::MAX << first);
                    if candidates != 0 {
                        let second = i64::from(candidates.trailing_zeros());
                        return day_start.checked_add(day * SECONDS_PER_DAY + base + second);
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;
    /// 2026-12-06 10:22:06 UTC, a Sunday.
    const INSTANT: i64 = 1_796_552_526;

    fn wall(seconds: i64) -> i128 {
        i128::from(seconds) * NS_PER_SECOND
    }

    fn read(cmos: &mut Cmos, index: u8, now: u64) -> u8 {
        cmos.write(INDEX_OFFSET, index, now);
        cmos.read(DATA_OFFSET, now)
    }

    fn write(cmos: &mut Cmos, index: u8, value: u8, now: u64) {
        cmos.write(INDEX_OFFSET, index, now);
        cmos.write(DATA_OFFSET, value, now);
    }

    /// Seconds, minutes, hours, day of week, date, month, year, century.
    fn time(cmos: &mut Cmos, now: u64) -> [u8; 8] {
        TIME_REGISTERS.map(|index| read(cmos, index, now))
    }

    fn uip(cmos: &mut Cmos, now: u64) -> bool {
        read(cmos, REG_A, now) & A_UIP != 0
    }

    #[test]
    fn civil_dates() {
        let known = [
            (1970, 1, 1, 0),
            (1969, 12, 31, -1),
            (2000, 2, 29, 11_016),
            (2000, 3, 1, 11_017),
            (2024, 2, 29, 19_782),
            (2026, 12, 6, 20_793),
            (2100, 2, 28, 47_540),
            (2100, 3, 1, 47_541),
            (1600, 3, 1, -135_080),
        ];
        for (year, month, day, days) in known {
            assert_eq!(
                days_from_civil(year, month, day),
                days,
                "{year}-{month}-{day}"
            );
            assert_eq!(civil_from_days(days), (year, month, day));
        }
        // 2000 is a leap year, 1900 and 2100 are not.
        let february = |year| days_from_civil(year, 3, 1) - days_from_civil(year, 2, 1);
        assert_eq!(february(2000), 29);
        assert_eq!(february(2024), 29);
        assert_eq!(february(1900), 28);
        assert_eq!(february(2100), 28);
        assert_eq!(february(2026), 28);
        // A day past the month's end counts on.
        assert_eq!(days_from_civil(2026, 11, 36), 20_793);
        // Every day of three millennia round-trips and follows the last.
        let mut previous = civil_from_days(-400_001);
        for days in -400_000..400_000 {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days);
            let next_day = (previous.0, previous.1, previous.2 + 1);
            let next_month = (previous.0, previous.1 + 1, 1);
            let next_year = (previous.0 + 1, 1, 1);
            assert!([next_day, next_month, next_year].contains(&(year, month, day)));
            previous = (year, month, day);
        }
        assert_eq!(weekday(0), 4);
        assert_eq!(weekday(20_793), 0);
        assert_eq!(weekday(-1), 3);
    }

    #[test]
    fn power_on_contents_and_checksum() {
        let mut cmos = Cmos::new(wall(INSTANT), 32 << 20);
        assert_eq!(read(&mut cmos, REG_A, 0), 0x26);
        assert_eq!(read(&mut cmos, REG_B, 0), 0x02);
        assert_eq!(read(&mut cmos, REG_C, 0), 0x00);
        assert_eq!(read(&mut cmos, REG_D, 0), 0x80);
        assert_eq!(read(&mut cmos, CMOS_SHUTDOWN_STATUS, 0), 0);
        assert_eq!(read(&mut cmos, CMOS_FLOPPY_TYPES, 0), 0);
        assert_eq!(read(&mut cmos, CMOS_EQUIPMENT, 0), EQUIPMENT_FPU);
        // 640 KiB.
        assert_eq!(read(&mut cmos, 0x15, 0), 0x80);
        assert_eq!(read(&mut cmos, 0x16, 0), 0x02);
        // 31 MiB above 1 MiB = 0x7C00 KiB.
        for index in [0x17, 0x30] {
            assert_eq!(read(&mut cmos, index, 0), 0x00);
            assert_eq!(read(&mut cmos, index + 1, 0), 0x7c);
        }
        // 16 MiB above 16 MiB = 0x0100 blocks of 64 KiB.
        assert_eq!(read(&mut cmos, 0x34, 0), 0x00);
        assert_eq!(read(&mut cmos, 0x35, 0), 0x01);
        assert_eq!(read(&mut cmos, CMOS_CENTURY, 0), 0x20);
        // 0x02 + 0x80 + 0x02 + 0x00 + 0x7C, big-endian.
        assert_eq!(cmos.checksum(), 0x0100);
        assert_eq!(read(&mut cmos, 0x2e, 0), 0x01);
        assert_eq!(read(&mut cmos, 0x2f, 0), 0x00);
        // 128 MiB: the KiB fields saturate at 0xFFFF (64 MiB).
        let mut cmos = Cmos::new(wall(INSTANT), 128 << 20);
        assert_eq!(read(&mut cmos, 0x18, 0), 0xff);
        assert_eq!(read(&mut cmos, 0x35, 0), 0x07);
        // Memory sizes saturate; the checksum follows them.
        let mut cmos = Cmos::new(wall(INSTANT), 8 << 30);
        for index in [0x17, 0x18, 0x30, 0x31, 0x34, 0x35] {
            assert_eq!(read(&mut cmos, index, 0), 0xff);
        }
        let stored = u16::from_be_bytes([read(&mut cmos, 0x2e, 0), read(&mut cmos, 0x2f, 0)]);
        assert_eq!(stored, 0x02 + 0x80 + 0x02 + 0xff + 0xff);
        assert_eq!(stored, cmos.checksum());
        let mut cmos = Cmos::new(wall(INSTANT), 512 << 10);
        assert_eq!(read(&mut cmos, 0x17, 0), 0);
        assert_eq!(read(&mut cmos, 0x18, 0), 0);
        // The checksum is the BIOS's: the chip does not keep it.
        write(&mut cmos, 0x20, 0x11, 0);
        assert_eq!(cmos.checksum(), 0x0084 + 0x11);
        assert_eq!(read(&mut cmos, 0x2f, 0), 0x84);
    }

    #[test]
    fn a_floppy_drive_is_recorded_with_the_checksum() {
        let mut cmos = Cmos::new(wall(INSTANT), 32 << 20);
        // A 1.44 MB drive 0, as --floppy gives it.
        let sum = cmos.checksum();
        cmos.set_floppy_drive(4);
        assert_eq!(read(&mut cmos, CMOS_FLOPPY_TYPES, 0), 0x40);
        assert_eq!(
            read(&mut cmos, CMOS_EQUIPMENT, 0),
            EQUIPMENT_FPU | EQUIPMENT_FLOPPY
        );
        assert_eq!(cmos.checksum(), sum + 0x41);
        assert_eq!(
            u16::from_be_bytes([
                read(&mut cmos, CMOS_CHECKSUM, 0),
                read(&mut cmos, CMOS_CHECKSUM + 1, 0)
            ]),
            sum + 0x41
        );
    }

    #[test]
    fn formats_of_a_known_instant() {
        let mut cmos = Cmos::new(wall(INSTANT), 0);
        // BCD, 24-hour: Sunday (1) 2026-12-06 10:22:06.
        assert_eq!(
            time(&mut cmos, 0),
            [0x06, 0x22, 0x10, 0x01, 0x06, 0x12, 0x26, 0x20]
        );
        assert_eq!(cmos.unix_seconds(0), INSTANT);
        // Binary, 24-hour.
        write(&mut cmos, REG_B, B_24_12 | B_DM, 0);
        assert_eq!(time(&mut cmos, 0), [6, 22, 10, 1, 6, 12, 26, 20]);
        // BCD, 12-hour: 10 AM, then noon (12 PM) and 2 PM.
        write(&mut cmos, REG_B, 0, 0);
        assert_eq!(read(&mut cmos, REG_HOURS, 0), 0x10);
        assert_eq!(read(&mut cmos, REG_HOURS, 2 * 3600 * SECOND), 0x92);
        assert_eq!(read(&mut cmos, REG_HOURS, 4 * 3600 * SECOND), 0x82);
        // Binary, 12-hour: 2 PM, then 3 PM, 11 PM and midnight.
        write(&mut cmos, REG_B, B_DM, 4 * 3600 * SECOND);
        assert_eq!(read(&mut cmos, REG_HOURS, 4 * 3600 * SECOND), 0x80 | 2);
        assert_eq!(read(&mut cmos, REG_HOURS, 5 * 3600 * SECOND), 0x80 | 3);
        let midnight = (86_400 - 37_326) * SECOND;
        assert_eq!(read(&mut cmos, REG_HOURS, midnight - SECOND), 0x80 | 11);
        assert_eq!(
            time(&mut cmos, midnight),
            [0, 0, 12, 2, 7, 12, 26, 20],
            "Monday 2026-12-07 12 AM"
        );
        write(&mut cmos, REG_B, 0, midnight);
        assert_eq!(read(&mut cmos, REG_HOURS, midnight), 0x12);
        assert_eq!(read(&mut cmos, REG_HOURS, midnight + 3600 * SECOND), 0x01);
        write(&mut cmos, REG_B, B_24_12, midnight + 3600 * SECOND);
        assert_eq!(read(&mut cmos, REG_HOURS, midnight + 3600 * SECOND), 0x01);
    }

    #[test]
    fn the_clock_runs_on_and_rolls_over() {
        let mut cmos = Cmos::new(wall(INSTANT), 0);
        assert_eq!(read(&mut cmos, REG_SECONDS, 54 * SECOND - 1), 0x59);
        assert_eq!(time(&mut cmos, 54 * SECOND)[..3], [0x00, 0x23, 0x10]);
        // 2026-12-31 23:59:59 to 2027-01-01: Friday 6 to Saturday 7.
        let new_year = (days_from_civil(2027, 1, 1) * SECONDS_PER_DAY - INSTANT)
            .try_into()
            .unwrap_or(0)
            * SECOND;
        assert_eq!(
            time(&mut cmos, new_year - 1),
            [0x59, 0x59, 0x23, 0x05, 0x31, 0x12, 0x26, 0x20]
        );
        assert_eq!(
            time(&mut cmos, new_year),
            [0x00, 0x00, 0x00, 0x06, 0x01, 0x01, 0x27, 0x20]
        );
        // The day of the week wraps from 7 to 1.
        let day = 86_400 * SECOND;
        assert_eq!(read(&mut cmos, REG_DAY_OF_WEEK, new_year + day), 0x07);
        assert_eq!(read(&mut cmos, REG_DAY_OF_WEEK, new_year + 2 * day), 0x01);
        assert_eq!(read(&mut cmos, REG_DAY_OF_WEEK, new_year + 7 * day), 0x06);
    }

    #[test]
    fn time_going_back_is_the_latest_seen() {
        let mut cmos = Cmos::new(wall(INSTANT), 0);
        assert_eq!(read(&mut cmos, REG_SECONDS, 10 * SECOND), 0x16);
        assert_eq!(read(&mut cmos, REG_SECONDS, 5 * SECOND), 0x16);
        assert_eq!(cmos.unix_seconds(0), INSTANT + 10);
    }

    #[test]
    fn uip_in_the_last_244_us_before_each_update() {
        let mut cmos = Cmos::new(wall(INSTANT), 0);
        assert!(!uip(&mut cmos, 0));
        assert!(!uip(&mut cmos, SECOND - 244_141));
        assert!(uip(&mut cmos, SECOND - 244_140));
        assert_eq!(read(&mut cmos, REG_SECONDS, SECOND - 1), 0x06);
        assert!(uip(&mut cmos, SECOND - 1));
        assert!(!uip(&mut cmos, SECOND));
        assert_eq!(read(&mut cmos, REG_SECONDS, SECOND), 0x07);
        // SET clears UIP, and so does a stopped divider.
        write(&mut cmos, REG_B, B_24_12 | B_SET, 2 * SECOND - 100_000);
        assert!(!uip(&mut cmos, 2 * SECOND - 100_000));
        write(&mut cmos, REG_B, B_24_12, 2 * SECOND - 100_000);
        assert!(uip(&mut cmos, 2 * SECOND - 100_000));
        write(&mut cmos, REG_A, 0x66, 3 * SECOND - 100_000);
        assert!(!uip(&mut cmos, 3 * SECOND - 100_000));
        // The phase follows the wall clock's fraction of a second.
        let mut cmos = Cmos::new(wall(INSTANT) + 250_000_000, 0);
        assert!(!uip(&mut cmos, 750 * MS - 244_141));
        assert!(uip(&mut cmos, 750 * MS - 244_140));
        assert_eq!(read(&mut cmos, REG_SECONDS, 750 * MS - 1), 0x06);
        assert_eq!(read(&mut cmos, REG_SECONDS, 750 * MS), 0x07);
        // UIP is read-only.
        write(&mut cmos, REG_A, 0xa6, SECOND);
        assert_eq!(read(&mut cmos, REG_A, SECOND), 0x26);
    }

    /// The readout loop of Linux 6.1 mc146818_avoid_UIP, with mdelay(1)
    /// as a step of the clock; returns the time read and when.
    fn linux_get_time(cmos: &mut Cmos, mut now: u64) -> Option<([u8; 6], u64)> {
        for _ in 0..10 {
            let seconds = read(cmos, REG_SECONDS, now);
            if read(cmos, REG_A, now) & A_UIP != 0 {
                now += MS;
                continue;
            }
            if seconds != read(cmos, REG_SECONDS, now) {
                continue;
            }
            let time = [
                seconds,
                read(cmos, REG_MINUTES, now),
                read(cmos, REG_HOURS, now),
                read(cmos, REG_DATE_OF_MONTH, now),
                read(cmos, REG_MONTH, now),
                read(cmos, REG_YEAR, now),
            ];
            assert_eq!(read(cmos, REG_B, now) & (B_DM | B_24_12), B_24_12);
            if read(cmos, REG_A, now) & A_UIP != 0 {
                now += MS;
                continue;
            }
            if seconds != read(cmos, REG_SECONDS, now) {
                continue;
            }
            return Some((time, now));
        }
        None
    }

    #[test]
    fn linux_reads_the_time() {
        let mut cmos = Cmos::new(wall(INSTANT), 0);
        // rtc_cmos probe: register D bit 6 clear, 1024 Hz, IRQs off,
        // 24-hour mode.
        assert_eq!(read(&mut cmos, REG_D, 0) & 0x40, 0);
        write(&mut cmos, REG_A, 0x26, 0);
        let control = read(&mut cmos, REG_B, 0);
        write(&mut cmos, REG_B, control & !(B_PIE | B_AIE | B_UIE), 0);
        assert_ne!(read(&mut cmos, REG_B, 0) & B_24_12, 0);
        assert_eq!(
            linux_get_time(&mut cmos, 0),
            Some(([0x06, 0x22, 0x10, 0x06, 0x12, 0x26], 0))
        );
        // Started inside the UIP window, it waits a millisecond.
        assert_eq!(
            linux_get_time(&mut cmos, SECOND - 100_000),
            Some((
                [0x07, 0x22, 0x10, 0x06, 0x12, 0x26],
                2 * SECOND - 100_000 - SECOND + MS
            ))
        );
    }

    #[test]
    fn set_freezes_and_written_time_runs_on() {
        let mut cmos = Cmos::new(wall(INSTANT), 0);
        let start = 5 * SECOND + 300 * MS;
        write(&mut cmos, REG_B, B_24_12 | B_SET | B_UIE, start);
        // SET clears UIE.
        assert_eq!(read(&mut cmos, REG_B, start), B_24_12 | B_SET);
        read(&mut cmos, REG_C, start);
        // Frozen at 10:22:11, no updates.
        let frozen = [0x11, 0x22, 0x10, 0x01, 0x06, 0x12, 0x26, 0x20];
        assert_eq!(time(&mut cmos, start + 3 * SECOND), frozen);
        assert_eq!(read(&mut cmos, REG_C, start + 3 * SECOND) & C_UF, 0);
        // hwclock-style writes, one register at a time: 2099-12-31
        // 23:59:58 (the date passes through days that do not exist).
        for (index, value) in [
            (REG_YEAR, 0x99),
            (REG_MONTH, 0x02),
            (REG_DATE_OF_MONTH, 0x31),
            (REG_MONTH, 0x12),
            (REG_HOURS, 0x23),
            (REG_MINUTES, 0x59),
            (REG_SECONDS, 0x58),
        ] {
            write(&mut cmos, index, value, start + 3 * SECOND);
        }
        let written = [0x58, 0x59, 0x23, 0x01, 0x31, 0x12, 0x99, 0x20];
        assert_eq!(time(&mut cmos, start + 3 * SECOND + 500 * MS), written);
        // Cleared at 9.3 s: the next update is the chain's, at 10 s.
        write(&mut cmos, REG_B, B_24_12, 9 * SECOND + 300 * MS);
        assert_eq!(time(&mut cmos, 10 * SECOND - 1), written);
        assert_eq!(read(&mut cmos, REG_SECONDS, 10 * SECOND), 0x59);
        // Into 2100: the century counts, and the day of the week goes on
        // from the register (1, as it was never written) to 2.
        assert_eq!(
            time(&mut cmos, 11 * SECOND),
            [0x00, 0x00, 0x00, 0x02, 0x01, 0x01, 0x00, 0x21]
        );
        let year_2100 = days_from_civil(2100, 1, 1) * SECONDS_PER_DAY;
        assert_eq!(cmos.unix_seconds(11 * SECOND), year_2100);
        // 2100 is not a leap year.
        let march = (days_from_civil(2100, 3, 1) - days_from_civil(2100, 1, 1)) * SECONDS_PER_DAY;
        let march = 11 * SECOND + u64::try_from(march).unwrap_or(0) * SECOND;
        assert_eq!(time(&mut cmos, march)[4..6], [0x01, 0x03]);
    }

    #[test]
    fn writes_while_running_keep_the_phase() {
        let mut cmos = Cmos::new(wall(INSTANT), 0);
        write(&mut cmos, REG_MINUTES, 0x30, 500 * MS);
        assert_eq!(time(&mut cmos, 500 * MS)[..3], [0x06, 0x30, 0x10]);
        assert_eq!(read(&mut cmos, REG_SECONDS, SECOND - 1), 0x06);
        assert_eq!(read(&mut cmos, REG_SECONDS, SECOND), 0x07);
        // Out-of-range values are normalised: 75 seconds.
        write(&mut cmos, REG_SECONDS, 0x75, SECOND);
        assert_eq!(time(&mut cmos, SECOND)[..3], [0x15, 0x31, 0x10]);
        // The day of the week is the chip's own counter.
        write(&mut cmos, REG_DAY_OF_WEEK, 0x05, SECOND);
        assert_eq!(read(&mut cmos, REG_DAY_OF_WEEK, SECOND), 0x05);
        let next_day = SECOND + 86_400 * SECOND;
        assert_eq!(time(&mut cmos, next_day)[3..5], [0x06, 0x07]);
    }

    /// Linux 6.1 mc146818_set_time: SET, divider reset, the registers,
    /// then control and divider back: the first update is 500 ms later.
    #[test]
    fn linux_sets_the_time() {
        let mut cmos = Cmos::new(wall(INSTANT), 0);
        let now = 2 * SECOND + 700 * MS;
        let control = read(&mut cmos, REG_B, now);
        write(&mut cmos, REG_B, control | B_SET, now);
        let freq_select = read(&mut cmos, REG_A, now);
        write(&mut cmos, REG_A, freq_select | DV_RESET, now);
        for (index, value) in [
            (REG_YEAR, 0x27),
            (REG_MONTH, 0x01),
            (REG_DATE_OF_MONTH, 0x01),
            (REG_HOURS, 0x00),
            (REG_MINUTES, 0x00),
            (REG_SECONDS, 0x00),
        ] {
            write(&mut cmos, index, value, now);
        }
        write(&mut cmos, REG_B, control, now);
        // Still held in reset: no update, no UIP.
        assert_eq!(read(&mut cmos, REG_SECONDS, now + 2 * SECOND), 0x00);
        assert!(!uip(&mut cmos, now + 2 * SECOND));
        let released = now + 2 * SECOND + 400 * MS;
        write(&mut cmos, REG_A, freq_select, released);
        let first = released + 500 * MS;
        assert_eq!(read(&mut cmos, REG_SECONDS, first - 1), 0x00);
        assert!(uip(&mut cmos, first - 100_000));
        assert_eq!(time(&mut cmos, first)[..3], [0x01, 0x00, 0x00]);
        assert_eq!(read(&mut cmos, REG_SECONDS, first + SECOND), 0x02);
        let new_year = days_from_civil(2027, 1, 1) * SECONDS_PER_DAY;
        assert_eq!(cmos.unix_seconds(first + SECOND), new_year + 2);
    }

    #[test]
    fn a_stopped_divider_keeps_its_phase() {
        let mut cmos = Cmos::new(wall(INSTANT), 0);
        // DV = 000 at 0.25 s stops the chain a quarter into the second.
        write(&mut cmos, REG_A, 0x06, 250 * MS);
        assert_eq!(read(&mut cmos, REG_C, 250 * MS), C_PF);
        assert_eq!(read(&mut cmos, REG_SECONDS, 5 * SECOND), 0x06);
        // Neither updates nor periodic edges while stopped.
        assert_eq!(read(&mut cmos, REG_C, 5 * SECOND), 0);
        write(&mut cmos, REG_A, 0x26, 5 * SECOND);
        assert_eq!(
            read(&mut cmos, REG_SECONDS, 5 * SECOND + 750 * MS - 1),
            0x06
        );
        assert_eq!(read(&mut cmos, REG_SECONDS, 5 * SECOND + 750 * MS), 0x07);
    }

    #[test]
    fn periodic_interrupt_at_1024_hz() {
        let mut cmos = Cmos::new(wall(INSTANT), 0);
        assert_eq!(cmos.next_event(0), None);
        write(&mut cmos, REG_B, B_24_12 | B_PIE, 0);
        // 32 ticks: 976562.5 ns.
        assert_eq!(cmos.next_event(0), Some(976_563));
        cmos.advance(976_562);
        assert!(!cmos.irq_level());
        cmos.advance(976_563);
        assert!(cmos.irq_level());
        // The line is high: nothing to wait for until C is read.
        assert_eq!(cmos.next_event(976_563), None);
        assert_eq!(read(&mut cmos, REG_C, 976_563), C_IRQF | C_PF);
        assert!(!cmos.irq_level());
        assert_eq!(read(&mut cmos, REG_C, 976_563), 0);
        // Driven by next_event, 1024 interrupts a second.
        let mut now = 976_563;
        let mut interrupts = 1;
        while let Some(next) = cmos.next_event(now) {
            if next > SECOND {
                break;
            }
            assert!(next > now);
            cmos.advance(next - 1);
            assert!(!cmos.irq_level());
            now = next;
            cmos.advance(now);
            assert!(cmos.irq_level());
            assert_eq!(read(&mut cmos, REG_C, now) & C_PF, C_PF);
            interrupts += 1;
        }
        assert_eq!(interrupts, 1024);
        // Without PIE, PF still sets but the line stays low.
        write(&mut cmos, REG_B, B_24_12, now);
        assert_eq!(cmos.next_event(now), None);
        cmos.advance(now + 2 * MS);
        assert!(!cmos.irq_level());
        assert_eq!(read(&mut cmos, REG_C, now + 2 * MS), C_PF);
        // Enabling PIE with PF set raises the line at once.
        cmos.advance(now + 4 * MS);
        write(&mut cmos, REG_B, B_24_12 | B_PIE, now + 4 * MS);
        assert!(cmos.irq_level());
        // And disabling it drops the line.
        write(&mut cmos, REG_B, B_24_12, now + 4 * MS);
        assert!(!cmos.irq_level());
    }

    #[test]
    fn periodic_rates() {
        let period = |rate: u8| {
            let mut cmos = Cmos::new(wall(INSTANT), 0);
            write(&mut cmos, REG_A, DV_32768_HZ | rate, 0);
            write(&mut cmos, REG_B, B_24_12 | B_PIE, 0);
            cmos.next_event(0)
        };
        assert_eq!(period(0), None);
        // RS 1 and 2: 256 and 128 Hz, as RS 8 and 9.
        assert_eq!(period(1), Some(3_906_250));
        assert_eq!(period(2), Some(7_812_500));
        assert_eq!(period(8), Some(3_906_250));
        assert_eq!(period(9), Some(7_812_500));
        assert_eq!(period(3), Some(122_071));
        assert_eq!(period(6), Some(976_563));
        assert_eq!(period(15), Some(500_000_000));
        // No periodic flag while the divider is held.
        let mut cmos = Cmos::new(wall(INSTANT), 0);
        write(&mut cmos, REG_A, DV_RESET | 0x06, 0);
        write(&mut cmos, REG_B, B_24_12 | B_PIE, 0);
        assert_eq!(cmos.next_event(0), None);
        assert_eq!(read(&mut cmos, REG_C, SECOND), 0);
        // Nor with rate 0.
        write(&mut cmos, REG_A, DV_32768_HZ, SECOND);
        assert_eq!(read(&mut cmos, REG_C, 2 * SECOND) & C_PF, 0);
    }

    #[test]
    fn update_ended_interrupt_once_a_second() {
        let mut cmos = Cmos::new(wall(INSTANT) + 500_000_000, 0);
        // No periodic flag to keep C simple.
        write(&mut cmos, REG_A, DV_32768_HZ, 0);
        write(&mut cmos, REG_B, B_24_12 | B_UIE, 0);
        assert_eq!(cmos.next_event(0), Some(500 * MS));
        cmos.advance(500 * MS - 1);
        assert!(!cmos.irq_level());
        cmos.advance(500 * MS);
        assert!(cmos.irq_level());
        assert_eq!(read(&mut cmos, REG_C, 500 * MS), C_IRQF | C_UF);
        assert!(!cmos.irq_level());
        assert_eq!(read(&mut cmos, REG_SECONDS, 500 * MS), 0x07);
        let mut now = 500 * MS;
        for second in 1..=10 {
            let next = cmos.next_event(now);
            assert_eq!(next, Some(500 * MS + second * SECOND));
            now = next.unwrap_or(0);
            cmos.advance(now);
            assert!(cmos.irq_level());
            assert_eq!(read(&mut cmos, REG_C, now), C_IRQF | C_UF);
        }
        // UF sets once however long the gap.
        assert_eq!(read(&mut cmos, REG_C, now + 5 * SECOND), C_IRQF | C_UF);
        assert_eq!(read(&mut cmos, REG_C, now + 5 * SECOND), 0);
        // With the chip's usual 1024 Hz rate, C shows PF too.
        write(&mut cmos, REG_A, 0x26, now + 5 * SECOND);
        assert_eq!(
            read(&mut cmos, REG_C, now + 6 * SECOND),
            C_IRQF | C_PF | C_UF
        );
        // No updates, so no UF, while SET.
        write(&mut cmos, REG_B, B_24_12 | B_SET, now + 6 * SECOND);
        assert_eq!(cmos.next_event(now + 6 * SECOND), None);
        assert_eq!(read(&mut cmos, REG_C, now + 9 * SECOND), C_PF);
    }

    #[test]
    fn alarm_interrupt_and_dont_care_bytes() {
        let mut cmos = Cmos::new(wall(INSTANT), 0);
        write(&mut cmos, REG_A, DV_32768_HZ, 0);
        // 10:22:10.
        write(&mut cmos, REG_SECONDS_ALARM, 0x10, 0);
        write(&mut cmos, REG_MINUTES_ALARM, 0x22, 0);
        write(&mut cmos, REG_HOURS_ALARM, 0x10, 0);
        write(&mut cmos, REG_B, B_24_12 | B_AIE, 0);
        assert_eq!(cmos.next_event(0), Some(4 * SECOND));
        cmos.advance(4 * SECOND - 1);
        assert!(!cmos.irq_level());
        cmos.advance(4 * SECOND);
        assert!(cmos.irq_level());
        assert_eq!(read(&mut cmos, REG_C, 4 * SECOND), C_IRQF | C_AF | C_UF);
        // Next: the same time tomorrow.
        assert_eq!(
            cmos.next_event(4 * SECOND),
            Some(4 * SECOND + 86_400 * SECOND)
        );
        // Second 30 of every minute.
        write(&mut cmos, REG_SECONDS_ALARM, 0x30, 4 * SECOND);
        write(&mut cmos, REG_MINUTES_ALARM, 0xff, 4 * SECOND);
        write(&mut cmos, REG_HOURS_ALARM, ALARM_DONT_CARE, 4 * SECOND);
        assert_eq!(cmos.next_event(4 * SECOND), Some(24 * SECOND));
        assert_eq!(read(&mut cmos, REG_C, 24 * SECOND), C_IRQF | C_AF | C_UF);
        assert_eq!(cmos.next_event(24 * SECOND), Some(84 * SECOND));
        assert_eq!(read(&mut cmos, REG_C, 84 * SECOND), C_IRQF | C_AF | C_UF);
        // Every second of minute 25 of every hour.
        write(&mut cmos, REG_SECONDS_ALARM, 0xc5, 84 * SECOND);
        write(&mut cmos, REG_MINUTES_ALARM, 0x25, 84 * SECOND);
        // 10:25:00.
        assert_eq!(cmos.next_event(84 * SECOND), Some(174 * SECOND));
        assert_eq!(read(&mut cmos, REG_C, 174 * SECOND), C_IRQF | C_AF | C_UF);
        assert_eq!(cmos.next_event(174 * SECOND), Some(175 * SECOND));
        // After 10:25:59, 11:25:00.
        let last = 174 * SECOND + 59 * SECOND;
        assert_eq!(read(&mut cmos, REG_C, last), C_IRQF | C_AF | C_UF);
        assert_eq!(cmos.next_event(last), Some(last + 3541 * SECOND));
        // AF sets without AIE, and over a long gap.
        write(&mut cmos, REG_B, B_24_12, last);
        assert_eq!(cmos.next_event(last), None);
        cmos.advance(last + 3 * 86_400 * SECOND);
        assert!(!cmos.irq_level());
        assert_eq!(
            read(&mut cmos, REG_C, last + 3 * 86_400 * SECOND),
            C_AF | C_UF
        );
        // An alarm byte out of range never matches.
        write(&mut cmos, REG_SECONDS_ALARM, 0x60, 0);
        write(&mut cmos, REG_B, B_24_12 | B_AIE, 0);
        assert_eq!(cmos.next_event(0), None);
        assert_eq!(read(&mut cmos, REG_C, last + 4 * 86_400 * SECOND), C_UF);
    }

    #[test]
    fn alarm_in_12_hour_mode() {
        let mut cmos = Cmos::new(wall(INSTANT), 0);
        write(&mut cmos, REG_A, DV_32768_HZ, 0);
        write(&mut cmos, REG_B, B_AIE, 0);
        // 2 PM.
        write(&mut cmos, REG_SECONDS_ALARM, 0x00, 0);
        write(&mut cmos, REG_MINUTES_ALARM, 0x00, 0);
        write(&mut cmos, REG_HOURS_ALARM, 0x82, 0);
        let two_pm = (4 * 3600 - 22 * 60 - 6) * SECOND;
        assert_eq!(cmos.next_event(0), Some(two_pm));
        // 12 AM is 0x12.
        write(&mut cmos, REG_HOURS_ALARM, 0x12, 0);
        let midnight = (86_400 - 37_326) * SECOND;
        assert_eq!(cmos.next_event(0), Some(midnight));
    }

    #[test]
    fn nmi_bit_is_not_part_of_the_index() {
        let mut cmos = Cmos::new(wall(INSTANT), 0);
        assert!(!cmos.nmi_disabled());
        cmos.write(INDEX_OFFSET, INDEX_NMI_DISABLE | REG_A, 0);
        assert!(cmos.nmi_disabled());
        assert_eq!(cmos.index(), REG_A);
        assert_eq!(cmos.read(DATA_OFFSET, 0), 0x26);
        cmos.write(INDEX_OFFSET, INDEX_NMI_DISABLE | 0x40, 0);
        cmos.write(DATA_OFFSET, 0x5a, 0);
        cmos.write(INDEX_OFFSET, 0x40, 0);
        assert!(!cmos.nmi_disabled());
        assert_eq!(cmos.read(DATA_OFFSET, 0), 0x5a);
        // The index port is write-only; other offsets float.
        assert_eq!(cmos.read(INDEX_OFFSET, 0), 0xff);
        assert_eq!(cmos.read(2, 0), 0xff);
        cmos.write(2, 0x12, 0);
        assert_eq!(cmos.index(), 0x40);
    }

    #[test]
    fn ram_round_trip_and_read_only_registers() {
        let mut cmos = Cmos::new(wall(INSTANT), 64 << 20);
        let indices = [REG_SECONDS_ALARM, REG_MINUTES_ALARM, REG_HOURS_ALARM]
            .into_iter()
            .chain((0x0e..0x80).filter(|&index| index != CMOS_CENTURY));
        for index in indices {
            for value in [0x00, 0x5a, 0xa5, 0xff] {
                write(&mut cmos, index, value, 0);
                assert_eq!(read(&mut cmos, index, 0), value, "{index:#x}");
            }
        }
        write(&mut cmos, REG_C, 0xff, 0);
        assert_eq!(read(&mut cmos, REG_C, 0), 0);
        write(&mut cmos, REG_D, 0x00, 0);
        assert_eq!(read(&mut cmos, REG_D, 0), D_VRT);
        // The clock did not move.
        assert_eq!(cmos.unix_seconds(0), INSTANT);
        // A snapshot carries on where it was taken.
        let mut copy = cmos.clone();
        assert_eq!(time(&mut copy, 90 * SECOND), time(&mut cmos, 90 * SECOND));
    }
}
