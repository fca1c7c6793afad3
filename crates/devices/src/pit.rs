//! The Intel 8254 programmable interval timer of the PC, and the timer bits
//! of the PC's system control port B.
//!
//! Three counters clocked at [`CLOCK_HZ`], each a state machine that follows
//! the 8254 datasheet one CLK pulse at a time. Runs of pulses that only
//! decrement the count are taken in one step, and so are whole periods of
//! modes 2 and 3, so catching up after a long host sleep costs O(1); a test
//! checks this fast path against running every pulse.
//!
//! # Time
//!
//! Every method takes `now_ns`, a monotonic host clock in nanoseconds; the
//! model never reads a clock. CLK pulse `k` happens at the first nanosecond
//! `t` with `t * CLOCK_HZ / 10^9 >= k`, so pulses are fixed on the time axis
//! and results do not depend on how often the model is called. A `now_ns`
//! earlier than one already seen is taken as the latest seen.
//!
//! # On the bus
//!
//! Registers are addressed by A1A0: offsets 0-2 are counters 0-2 and offset
//! 3 the control word register (PC ports 0x40-0x43). Port B (PC port 0x61)
//! has its own pair of methods. [`crate::bus::PortDevice`] has no time
//! argument, so the board dispatches these ports itself with its clock:
//! `pit.read(port - 0x40, now)`, `pit.write(port - 0x40, value, now)`,
//! `pit.read_port_b(now)`, `pit.write_port_b(value, now)`.
//!
//! # Wiring as on a PC
//!
//! - Gates 0 and 1 are tied high; gate 2 is port B bit 0.
//! - OUT0 drives IRQ 0. The 8259A latches IRQ 0 on a rising edge, and OUT0's
//!   low pulse in mode 2 lasts one CLK (838 ns), so the host should not
//!   sample the level: it asks [`Pit::take_rising_edges`] how many edges
//!   happened since it last asked (exact, including edges a control word
//!   write makes), and if any, pulses IRQ 0 once, as the 8259A's single IRR
//!   bit would have absorbed the rest anyway. [`Pit::next_rising_edge`]
//!   tells it how long it may sleep ([`Pit::next_output_change`] gives
//!   either edge).
//! - OUT2 reads at port B bit 5; OUT1 (DRAM refresh) is not wired: port B
//!   bit 4 toggles every 18 CLKs (15.085 us), derived from time as on a PC
//!   whose BIOS programmed counter 1 for refresh.
//!
//! # What is modelled
//!
//! All six modes, binary and BCD counting, LSB / MSB / LSB-then-MSB access
//! (with separate read and write byte pointers, so reads and writes may
//! interleave as the datasheet allows), the counter latch command, the
//! read-back command (count and status, status first), the null count flag,
//! gate level and edge sensing, and counts of 0 meaning 2^16 (10^4 in BCD).
//! Choices where the datasheet is silent or calls a count illegal:
//!
//! - A count of 1 in modes 2 and 3 is illegal (the minimum is 2); the counter
//!   then holds its CE at 1 and OUT high.
//! - With LSB-then-MSB access the CR takes the count when its MSB arrives,
//!   so a reload between the two bytes still uses the previous whole count.
//! - BCD digits above 9 are taken at their binary weight, modulo 10^4.
//! - Before the first count after a control word, the CE keeps whatever it
//!   held (the datasheet calls it undefined); in modes 1 and 5 it does not
//!   count until the first trigger.
//! - At power-on each counter is as if control word 0x36 (mode 3, LSB then
//!   MSB, binary) had been written with no count: OUT high and idle, so IRQ 0
//!   stays quiet until the guest programs counter 0.
//! - Mode 3 with an odd count N follows the datasheet's description: N - 1
//!   is loaded and decremented by two, and OUT goes low one CLK after the
//!   count expires, so OUT is high (N + 1) / 2 and low (N - 1) / 2 CLKs.

use std::mem;

/// The PIT's input clock on a PC.
pub const CLOCK_HZ: u64 = 1_193_182;
/// Offset of the control word register (counters are at 0-2).
pub const CONTROL_OFFSET: u16 = 3;

/// Control word: SC1 SC0, the counter selected.
pub const CW_SC: u8 = 0xc0;
/// Control word: SC1 SC0 = 11, the read-back command.
pub const CW_SC_READ_BACK: u8 = 0xc0;
/// Control word: RW1 RW0.
pub const CW_RW: u8 = 0x30;
/// RW1 RW0 = 00: counter latch command.
pub const RW_LATCH: u8 = 0x00;
/// RW1 RW0 = 01: read/write least significant byte only.
pub const RW_LSB: u8 = 0x10;
/// RW1 RW0 = 10: read/write most significant byte only.
pub const RW_MSB: u8 = 0x20;
/// RW1 RW0 = 11: least significant byte first, then most significant byte.
pub const RW_LSB_MSB: u8 = 0x30;
/// Control word: M2 M1 M0.
pub const CW_M: u8 = 0x0e;
/// Control word: binary coded decimal counting.
pub const CW_BCD: u8 = 0x01;
/// Read-back command: COUNT (active low: latch the count).
pub const RB_COUNT: u8 = 0x20;
/// Read-back command: STATUS (active low: latch the status).
pub const RB_STATUS: u8 = 0x10;
/// Read-back command: select counter 0 (counter n is this shifted left n).
pub const RB_CNT0: u8 = 0x02;
/// Status byte: OUTPUT pin.
pub const STATUS_OUTPUT: u8 = 0x80;
/// Status byte: NULL COUNT.
pub const STATUS_NULL_COUNT: u8 = 0x40;
/// Port B: timer 2 gate.
pub const PORT_B_GATE2: u8 = 0x01;
/// Port B: speaker data enable.
pub const PORT_B_SPKR_DATA: u8 = 0x02;
/// Port B: parity check and channel check enables (stored, read back).
pub const PORT_B_CHECK_ENABLES: u8 = 0x0c;
/// Port B: refresh request toggle.
pub const PORT_B_REFRESH: u8 = 0x10;
/// Port B: timer 2 OUT.
pub const PORT_B_OUT2: u8 = 0x20;
/// CLK pulses per refresh request toggle (counter 1 in mode 2, count 18).
pub const REFRESH_CLKS: u64 = 18;

/// Control word a counter powers on with (mode 3, LSB then MSB, binary).
const POWER_ON_CONTROL: u8 = 0x36;

/// CLK pulses that have happened by `now_ns`.
#[must_use]
pub fn clk_at(now_ns: u64) -> u64 {
    let clks = u128::from(now_ns) * u128::from(CLOCK_HZ) / 1_000_000_000;
    u64::try_from(clks).unwrap_or(u64::MAX)
}

/// The time (ns) of CLK pulse `clk`: the first `t` with `clk_at(t) >= clk`.
#[must_use]
pub fn ns_of_clk(clk: u64) -> u64 {
    let ns = (u128::from(clk) * 1_000_000_000).div_ceil(u128::from(CLOCK_HZ));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// One 8254 counter.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Counter {
    /// Control word bits D5-D0 as last written (RW1 RW0 M2 M1 M0 BCD),
    /// which is also the low part of the status byte.
    control: u8,
    /// Count register (CRm, CRl) as written.
    cr: u16,
    /// LSB-then-MSB writes: the LSB written, waiting for its MSB before
    /// the two go into the CR together.
    lsb_written: Option<u8>,
    /// LSB-then-MSB reads: the next byte read is the MSB.
    read_msb: bool,
    /// Output latch (OLm, OLl), while a latched count waits to be read.
    ol: Option<u16>,
    /// Status latch, while a latched status waits to be read.
    status: Option<u8>,
    /// NULL COUNT: the CR was written and not yet loaded into the CE.
    null_count: bool,
    /// Counting element, as a number below the modulus (BCD counters keep
    /// their count as a number and show it in BCD).
    ce: u64,
    /// The count the CE was last loaded from (1 to the modulus).
    initial: u64,
    /// The OUT pin.
    out: bool,
    /// The GATE pin.
    gate: bool,
    /// A whole count has been written since the control word.
    has_count: bool,
    /// The CE was loaded and counts (writing the first byte of a mode 0
    /// count stops it).
    counting: bool,
    /// The CR is transferred to the CE on the next CLK pulse (after a count
    /// write in modes 0, 2, 3, 4).
    load: bool,
    /// The gate's edge-sensitive flip-flop (modes 1, 2, 3, 5): a rising edge
    /// waiting to be sampled by the next CLK pulse.
    trigger: bool,
    /// Modes 4 and 5: the strobe of the current count is still to come.
    strobe_pending: bool,
    /// Mode 3, odd count: the count expired with OUT high, OUT goes low on
    /// the next CLK pulse.
    expired: bool,
    /// CLK pulses accounted for (absolute pulse number).
    clk: u64,
    /// OUT low-to-high transitions not yet taken by the host.
    rising_edges: u64,
}

impl Counter {
    fn new(gate: bool) -> Self {
        Self {
            control: POWER_ON_CONTROL & !CW_SC,
            cr: 0,
            lsb_written: None,
            read_msb: false,
            ol: None,
            status: None,
            null_count: true,
            ce: 0,
            initial: 0,
            out: true,
            gate,
            has_count: false,
            counting: false,
            load: false,
            trigger: false,
            strobe_pending: false,
            expired: false,
            clk: 0,
            rising_edges: 0,
        }
    }

    /// The counting mode, 0-5 (M2 M1 M0 = x10 and x11 are modes 2 and 3).
    fn mode(&self) -> u8 {
        match (self.control & CW_M) >> 1 {
            6 => 2,
            7 => 3,
            mode => mode,
        }
    }

    fn bcd(&self) -> bool {
        self.control & CW_BCD != 0
    }

    /// 2^16 in binary, 10^4 in BCD.
    fn modulus(&self) -> u64 {
        if self.bcd() { 10_000 } else { 0x1_0000 }
    }

    /// The count the CR holds, with 0 meaning the modulus.
    fn cr_count(&self) -> u64 {
        let count = if self.bcd() {
            bcd_to_number(self.cr) % 10_000
        } else {
            u64::from(self.cr)
        };
        if count == 0 { self.modulus() } else { count }
    }

    /// The CE as the counter shows it on reads.
    fn shown_count(&self) -> u16 {
        let value = if self.bcd() {
            number_to_bcd(self.ce)
        } else {
            self.ce
        };
        let [low, high, ..] = value.to_le_bytes();
        u16::from_le_bytes([low, high])
    }

    fn set_out(&mut self, high: bool) {
        if high && !self.out {
            self.rising_edges = self.rising_edges.saturating_add(1);
        }
        self.out = high;
    }

    /// CR to CE transfer.
    fn load_ce(&mut self) {
        self.initial = self.cr_count();
        self.ce = match self.mode() {
            // Mode 3 counts the even part of the count down by two.
            3 if self.initial != 1 => (self.initial & !1) % self.modulus(),
            _ => self.initial % self.modulus(),
        };
        self.null_count = false;
        self.counting = true;
    }

    /// Modes 2 and 3 with the illegal count 1 do nothing.
    fn stuck(&self) -> bool {
        matches!(self.mode(), 2 | 3) && self.initial == 1
    }

    /// Whether a CLK pulse decrements the CE.
    fn decrementing(&self) -> bool {
        match self.mode() {
            1 | 5 => self.counting,
            _ => self.counting && self.gate && !self.stuck(),
        }
    }

    fn decrement(&mut self, by: u64) {
        let modulus = self.modulus();
        self.ce = (self.ce + modulus - by % modulus) % modulus;
    }

    /// CLK pulses (at least 1) until the CE reaches zero counting down by
    /// `step`.
    fn to_zero(&self, step: u64) -> u64 {
        let count = if self.ce == 0 {
            self.modulus()
        } else {
            self.ce
        };
        (count / step).max(1)
    }

    /// One CLK pulse, as the datasheet describes each mode.
    fn pulse(&mut self) {
        let load = mem::take(&mut self.load);
        let trigger = mem::take(&mut self.trigger);
        match self.mode() {
            0 => {
                if load {
                    // Loading does not decrement: OUT rises N + 1 pulses
                    // after the count is written.
                    self.load_ce();
                } else if self.decrementing() {
                    self.decrement(1);
                    if self.ce == 0 {
                        self.set_out(true);
                    }
                }
            }
            1 => {
                if trigger {
                    self.load_ce();
                    self.set_out(false);
                } else if self.decrementing() {
                    self.decrement(1);
                    if self.ce == 0 {
                        self.set_out(true);
                    }
                }
            }
            2 => {
                if load || trigger {
                    self.load_ce();
                    self.set_out(true);
                } else if self.decrementing() {
                    if self.ce == 1 {
                        // End of the period: reload (a new count takes
                        // effect here), OUT back high.
                        self.load_ce();
                        self.set_out(true);
                    } else {
                        self.decrement(1);
                        if self.ce == 1 {
                            self.set_out(false);
                        }
                    }
                }
            }
            3 => {
                if load || trigger {
                    self.load_ce();
                    self.expired = false;
                    self.set_out(true);
                } else if self.decrementing() {
                    if mem::take(&mut self.expired) {
                        self.set_out(false);
                        self.load_ce();
                    } else {
                        self.decrement(2);
                        if self.ce == 0 {
                            if self.out && self.initial % 2 == 1 {
                                self.expired = true;
                            } else {
                                // End of the half-cycle: OUT flips and the
                                // CE reloads (a new count takes effect here).
                                self.set_out(!self.out);
                                self.load_ce();
                            }
                        }
                    }
                }
            }
            mode => {
                // Modes 4 and 5: the strobe lasts one CLK.
                self.set_out(true);
                if (mode == 4 && load) || (mode == 5 && trigger) {
                    self.load_ce();
                    self.strobe_pending = true;
                } else if self.decrementing() {
                    self.decrement(1);
                    if self.ce == 0 && mem::take(&mut self.strobe_pending) {
                        self.set_out(false);
                    }
                }
            }
        }
    }

    /// CLK pulses until the next one that does more than decrement (1: the
    /// very next), or `None` if none will with the inputs as they are.
    fn next_event(&self) -> Option<u64> {
        let mode = self.mode();
        if self.load || self.trigger || (matches!(mode, 4 | 5) && !self.out) {
            return Some(1);
        }
        if !self.decrementing() {
            return None;
        }
        match mode {
            0 | 1 => (!self.out).then(|| self.to_zero(1)),
            2 if self.ce == 1 => Some(1),
            // Pulses until the CE reaches 1.
            2 => Some((self.ce + self.modulus() - 1) % self.modulus()),
            3 if self.expired => Some(1),
            3 => Some(self.to_zero(2)),
            _ => self.strobe_pending.then(|| self.to_zero(1)),
        }
    }

    /// `pulses` CLK pulses none of which does more than decrement.
    fn skip(&mut self, pulses: u64) {
        if pulses > 0 && self.decrementing() {
            let step = if self.mode() == 3 { 2 } else { 1 };
            self.decrement(pulses % self.modulus() * step);
        }
    }

    /// The period in CLK pulses while modes 2 and 3 repeat themselves (the
    /// CE was loaded from the CR as it is, and the gate stays high), with one
    /// rising edge of OUT per period.
    fn period(&self) -> Option<u64> {
        (matches!(self.mode(), 2 | 3)
            && self.decrementing()
            && !self.load
            && !self.trigger
            && !self.null_count)
            .then_some(self.initial)
    }

    /// Runs the CLK pulses up to absolute pulse `clk`.
    fn advance(&mut self, clk: u64) {
        let mut left = clk.saturating_sub(self.clk);
        self.clk = self.clk.max(clk);
        while left > 0 {
            if let Some(period) = self.period() {
                let periods = left / period;
                self.rising_edges = self.rising_edges.saturating_add(periods);
                left -= periods * period;
            }
            match self.next_event() {
                Some(pulses) if pulses <= left => {
                    self.skip(pulses.saturating_sub(1));
                    self.pulse();
                    left -= pulses;
                }
                _ => {
                    self.skip(left);
                    left = 0;
                }
            }
        }
    }

    /// CLK pulses from now until OUT next changes by itself to `rising`'s
    /// new level (`None`: to either level), with the inputs as they are.
    fn clks_to_output_change(&self, rising: Option<bool>) -> Option<u64> {
        let mut counter = self.clone();
        let mut clks = 0u64;
        // Every mode reaches either OUT edge within five events of any
        // state (mode 3, odd count, from a pending load: load, expiry, low,
        // expiry and high), or never does.
        for _ in 0..8 {
            let pulses = counter.next_event()?;
            let out = counter.out;
            counter.skip(pulses.saturating_sub(1));
            counter.pulse();
            clks = clks.saturating_add(pulses);
            if counter.out != out && rising.is_none_or(|rising| rising == counter.out) {
                return Some(clks);
            }
        }
        None
    }

    /// A control word for this counter (RW not 00).
    fn write_control(&mut self, control: u8) {
        self.control = control & !CW_SC;
        // All control logic is reset and OUT goes to its initial state.
        self.lsb_written = None;
        self.read_msb = false;
        self.ol = None;
        self.status = None;
        self.null_count = true;
        self.has_count = false;
        self.counting = false;
        self.load = false;
        self.trigger = false;
        self.strobe_pending = false;
        self.expired = false;
        self.set_out(self.mode() != 0);
    }

    /// A count byte.
    fn write_count(&mut self, byte: u8) {
        self.cr = match self.control & CW_RW {
            RW_LSB => u16::from(byte),
            RW_MSB => u16::from_le_bytes([0, byte]),
            _ => match self.lsb_written.take() {
                Some(low) => u16::from_le_bytes([low, byte]),
                None => {
                    self.lsb_written = Some(byte);
                    if self.mode() == 0 {
                        // Writing the first byte stops counting and sets OUT
                        // low at once.
                        self.counting = false;
                        self.load = false;
                        self.set_out(false);
                    }
                    return;
                }
            },
        };
        self.null_count = true;
        self.has_count = true;
        match self.mode() {
            0 => {
                self.set_out(false);
                self.load = true;
            }
            // Counting: the new count waits for the end of the period or
            // half-cycle (or a trigger).
            2 | 3 => self.load |= !self.counting,
            4 => self.load = true,
            // Modes 1 and 5 wait for a trigger.
            _ => {}
        }
    }

    /// A new GATE level.
    fn set_gate(&mut self, high: bool) {
        if high == self.gate {
            return;
        }
        self.gate = high;
        let mode = self.mode();
        if high {
            if matches!(mode, 1 | 2 | 3 | 5) && self.has_count {
                self.trigger = true;
            }
        } else if matches!(mode, 2 | 3) {
            self.set_out(true);
        }
    }

    fn latch_count(&mut self) {
        if self.ol.is_none() {
            self.ol = Some(self.shown_count());
        }
    }

    fn latch_status(&mut self) {
        if self.status.is_none() {
            let output = if self.out { STATUS_OUTPUT } else { 0 };
            let null_count = if self.null_count {
                STATUS_NULL_COUNT
            } else {
                0
            };
            self.status = Some(output | null_count | self.control);
        }
    }

    /// A read of the counter: latched status, then latched count, else the
    /// CE as it counts.
    fn read(&mut self) -> u8 {
        if let Some(status) = self.status.take() {
            return status;
        }
        let [low, high] = self.ol.unwrap_or_else(|| self.shown_count()).to_le_bytes();
        let (byte, last) = match self.control & CW_RW {
            RW_LSB => (low, true),
            RW_MSB => (high, true),
            _ if self.read_msb => (high, true),
            _ => (low, false),
        };
        self.read_msb = !last;
        if last {
            self.ol = None;
        }
        byte
    }
}

/// The value of BCD digits (digits above 9 at their binary weight).
fn bcd_to_number(bcd: u16) -> u64 {
    let [low, high] = bcd.to_le_bytes();
    [high >> 4, high & 0xf, low >> 4, low & 0xf]
        .into_iter()
        .fold(0, |value, digit| value * 10 + u64::from(digit))
}

/// Four BCD digits of `value` (below 10^4).
fn number_to_bcd(value: u64) -> u64 {
    (0..4).fold(0, |bcd, digit| {
        bcd | ((value / 10u64.pow(digit) % 10) << (4 * digit))
    })
}

/// The 8254 with the PC's port B timer bits.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Pit {
    counters: [Counter; 3],
    /// Port B bits 0-3 as written.
    port_b: u8,
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit {
    /// Counters idle with OUT high (see the module documentation), gate 2 and
    /// port B low.
    #[must_use]
    pub fn new() -> Self {
        Self {
            counters: [Counter::new(true), Counter::new(true), Counter::new(false)],
            port_b: 0,
        }
    }

    fn advance(&mut self, now_ns: u64) {
        let clk = clk_at(now_ns);
        for counter in &mut self.counters {
            counter.advance(clk);
        }
    }

    /// Register read at `offset` (A1A0): counters 0-2; the control word
    /// register (3) is write-only and floats.
    pub fn read(&mut self, offset: u16, now_ns: u64) -> u8 {
        self.advance(now_ns);
        match self.counters.get_mut(usize::from(offset)) {
            Some(counter) => counter.read(),
            None => 0xff,
        }
    }

    /// Register write at `offset` (A1A0): a count byte to counters 0-2, or a
    /// control word (mode, counter latch or read-back command) at 3.
    pub fn write(&mut self, offset: u16, value: u8, now_ns: u64) {
        self.advance(now_ns);
        if offset != CONTROL_OFFSET {
            if let Some(counter) = self.counters.get_mut(usize::from(offset)) {
                counter.write_count(value);
            }
            return;
        }
        if value & CW_SC == CW_SC_READ_BACK {
            for (index, counter) in self.counters.iter_mut().enumerate() {
                if value & (RB_CNT0 << index) != 0 {
                    if value & RB_COUNT == 0 {
                        counter.latch_count();
                    }
                    if value & RB_STATUS == 0 {
                        counter.latch_status();
                    }
                }
            }
            return;
        }
        let Some(counter) = self.counters.get_mut(usize::from(value >> 6)) else {
            return;
        };
        if value & CW_RW == RW_LATCH {
            counter.latch_count();
        } else {
            counter.write_control(value);
        }
    }

    /// A read of PC port B (0x61): bits 0-3 as written, bit 4 the refresh
    /// toggle, bit 5 OUT2; bits 6 and 7 (parity and channel check errors)
    /// read 0.
    pub fn read_port_b(&mut self, now_ns: u64) -> u8 {
        self.advance(now_ns);
        let refresh = if (clk_at(now_ns) / REFRESH_CLKS) % 2 == 1 {
            PORT_B_REFRESH
        } else {
            0
        };
        let out2 = if self.counters[2].out { PORT_B_OUT2 } else { 0 };
        self.port_b | refresh | out2
    }

    /// A write of PC port B (0x61): bit 0 is gate 2, bit 1 the speaker data
    /// enable, bits 2-3 the check enables; the rest is read-only.
    pub fn write_port_b(&mut self, value: u8, now_ns: u64) {
        self.advance(now_ns);
        self.port_b = value & (PORT_B_GATE2 | PORT_B_SPKR_DATA | PORT_B_CHECK_ENABLES);
        self.counters[2].set_gate(value & PORT_B_GATE2 != 0);
    }

    /// The OUT pin of `channel` (0-2; others read low).
    pub fn output(&mut self, channel: usize, now_ns: u64) -> bool {
        self.advance(now_ns);
        self.counters
            .get(channel)
            .is_some_and(|counter| counter.out)
    }

    /// When (ns) the OUT pin of `channel` next changes by itself, assuming no
    /// register or gate write before then; `None` if it never will (an idle
    /// counter, mode 0 or 1 after terminal count, modes 4 and 5 after their
    /// strobe, modes 2 and 3 with the gate low, an unknown channel).
    pub fn next_output_change(&mut self, channel: usize, now_ns: u64) -> Option<u64> {
        self.advance(now_ns);
        let counter = self.counters.get(channel)?;
        let clks = counter.clks_to_output_change(None)?;
        Some(ns_of_clk(counter.clk.saturating_add(clks)))
    }

    /// When (ns) the OUT pin of `channel` next rises by itself, assuming no
    /// register or gate write before then (`None` as for
    /// [`Pit::next_output_change`]): when the host has an interrupt to
    /// deliver from an edge-triggered IRQ 0.
    pub fn next_rising_edge(&mut self, channel: usize, now_ns: u64) -> Option<u64> {
        self.advance(now_ns);
        let counter = self.counters.get(channel)?;
        let clks = counter.clks_to_output_change(Some(true))?;
        Some(ns_of_clk(counter.clk.saturating_add(clks)))
    }

    /// Rising edges of OUT of `channel` counted up to the last time passed
    /// in and not taken yet.
    #[must_use]
    pub fn pending_rising_edges(&self, channel: usize) -> u64 {
        self.counters
            .get(channel)
            .map_or(0, |counter| counter.rising_edges)
    }

    /// Rising edges of OUT of `channel` since the previous call (or since
    /// power-on), up to `now_ns`: exact, saturating at `u64::MAX`. For IRQ 0
    /// the host delivers one edge when this is non-zero.
    pub fn take_rising_edges(&mut self, channel: usize, now_ns: u64) -> u64 {
        self.advance(now_ns);
        self.counters
            .get_mut(channel)
            .map_or(0, |counter| mem::take(&mut counter.rising_edges))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Time of CLK pulse `clk`.
    fn at(clk: u64) -> u64 {
        ns_of_clk(clk)
    }

    /// Programs `counter` with control word `control` and then the count
    /// bytes, at time 0 (so the count loads on pulse 1).
    fn program(pit: &mut Pit, control: u8, count: &[u8]) {
        pit.write(CONTROL_OFFSET, control, 0);
        for byte in count {
            pit.write(u16::from(control >> 6), *byte, 0);
        }
    }

    /// Latches and reads a two-byte count.
    fn latched(pit: &mut Pit, counter: u8, now: u64) -> u16 {
        pit.write(CONTROL_OFFSET, counter << 6, now);
        let low = pit.read(u16::from(counter), now);
        let high = pit.read(u16::from(counter), now);
        u16::from_le_bytes([low, high])
    }

    /// OUT of `channel` at pulses `from..to`.
    fn outs(pit: &mut Pit, channel: usize, clks: std::ops::Range<u64>) -> Vec<u8> {
        clks.map(|clk| u8::from(pit.output(channel, at(clk))))
            .collect()
    }

    #[test]
    fn clock_conversions_round_trip() {
        assert_eq!(clk_at(0), 0);
        assert_eq!(clk_at(1_000_000_000), CLOCK_HZ);
        for clk in [1, 2, 17, 1193, 1_193_182, 10_000_000_000] {
            assert_eq!(clk_at(at(clk)), clk);
            assert_eq!(clk_at(at(clk) - 1), clk - 1);
        }
    }

    #[test]
    fn mode_0_interrupt_on_terminal_count() {
        let mut pit = Pit::new();
        pit.write(CONTROL_OFFSET, 0x30, 0);
        assert!(!pit.output(0, 0));
        pit.write(0, 5, 0);
        pit.write(0, 0, 0);
        // Loaded on pulse 1, OUT high N + 1 = 6 pulses after the write.
        assert_eq!(outs(&mut pit, 0, 1..9), [0, 0, 0, 0, 0, 1, 1, 1]);
        assert_eq!(pit.take_rising_edges(0, at(8)), 1);
        // The CE keeps counting past zero, OUT stays high.
        assert_eq!(latched(&mut pit, 0, at(8)), 0xfffe);
        assert_eq!(pit.next_output_change(0, at(8)), None);
        // A new count (LSB, MSB): the first byte drops OUT and stops the
        // count, the second loads it on the next pulse.
        pit.write(0, 3, at(10));
        assert!(!pit.output(0, at(10)));
        assert_eq!(latched(&mut pit, 0, at(12)), 0xfffc);
        pit.write(0, 0, at(12));
        assert_eq!(latched(&mut pit, 0, at(13)), 3);
        assert_eq!(outs(&mut pit, 0, 13..18), [0, 0, 0, 1, 1]);
        assert_eq!(pit.take_rising_edges(0, at(20)), 1);
    }

    #[test]
    fn mode_0_gate_low_holds_the_count() {
        let mut pit = Pit::new();
        program(&mut pit, 0xb0, &[4, 0]);
        // Gate 2 is low: the count loads but does not count.
        assert_eq!(latched(&mut pit, 2, at(10)), 4);
        assert!(!pit.output(2, at(10)));
        pit.write_port_b(PORT_B_GATE2, at(10));
        // OUT goes high N pulses after the gate.
        assert_eq!(outs(&mut pit, 2, 11..16), [0, 0, 0, 1, 1]);
        // Gating off again freezes the wrapped count.
        pit.write_port_b(0, at(16));
        let frozen = latched(&mut pit, 2, at(16));
        assert_eq!(latched(&mut pit, 2, at(100)), frozen);
    }

    #[test]
    fn mode_1_hardware_retriggerable_one_shot() {
        let mut pit = Pit::new();
        program(&mut pit, 0xb2, &[3, 0]);
        // Armed, OUT high, nothing happens without a trigger.
        assert_eq!(outs(&mut pit, 2, 1..5), [1, 1, 1, 1]);
        assert_eq!(pit.next_output_change(2, at(5)), None);
        // Trigger between pulses 5 and 6: OUT low on pulse 6 for 3 pulses.
        pit.write_port_b(PORT_B_GATE2, at(5));
        assert_eq!(pit.next_output_change(2, at(5)), Some(at(6)));
        assert_eq!(outs(&mut pit, 2, 5..11), [1, 0, 0, 0, 1, 1]);
        // Retriggering during the pulse restarts it from the full count.
        pit.write_port_b(0, at(11));
        pit.write_port_b(PORT_B_GATE2, at(11));
        assert_eq!(outs(&mut pit, 2, 12..14), [0, 0]);
        pit.write_port_b(0, at(13));
        pit.write_port_b(PORT_B_GATE2, at(13));
        assert_eq!(outs(&mut pit, 2, 14..19), [0, 0, 0, 1, 1]);
        // The gate does not stop a mode 1 count.
        pit.write_port_b(0, at(20));
        pit.write_port_b(PORT_B_GATE2, at(20));
        pit.write_port_b(0, at(21));
        assert_eq!(outs(&mut pit, 2, 21..26), [0, 0, 0, 1, 1]);
        // Counters 0 and 1 have their gates tied high: never triggered.
        program(&mut pit, 0x32, &[3, 0]);
        assert!(pit.output(0, at(1000)));
    }

    #[test]
    fn mode_2_rate_generator() {
        let mut pit = Pit::new();
        program(&mut pit, 0x34, &[4, 0]);
        let counts: Vec<u16> = (1..6).map(|clk| latched(&mut pit, 0, at(clk))).collect();
        assert_eq!(counts, [4, 3, 2, 1, 4]);
        let mut pit = Pit::new();
        program(&mut pit, 0x34, &[4, 0]);
        // Load on pulse 1; OUT low for one pulse when the CE reaches 1.
        assert_eq!(
            outs(&mut pit, 0, 0..14),
            [1, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 1]
        );
        // A new count waits for the end of the current period.
        pit.write(0, 2, at(14));
        pit.write(0, 0, at(14));
        assert_eq!(outs(&mut pit, 0, 14..22), [1, 1, 0, 1, 0, 1, 0, 1]);
        assert_eq!(pit.take_rising_edges(0, at(22)), 6);
    }

    #[test]
    fn mode_2_gate_stops_and_retriggers() {
        let mut pit = Pit::new();
        pit.write_port_b(PORT_B_GATE2, 0);
        program(&mut pit, 0xb4, &[5, 0]);
        assert_eq!(outs(&mut pit, 2, 1..7), [1, 1, 1, 1, 0, 1]);
        // Gate low during the low pulse (pulse 10) sets OUT high at once.
        assert!(!pit.output(2, at(10)));
        pit.write_port_b(0, at(10));
        assert!(pit.output(2, at(10)));
        assert_eq!(pit.next_output_change(2, at(10)), None);
        assert_eq!(latched(&mut pit, 2, at(50)), 1);
        // The rising gate reloads on the next pulse: low N pulses later.
        pit.write_port_b(PORT_B_GATE2, at(50));
        assert_eq!(pit.next_output_change(2, at(50)), Some(at(55)));
        assert_eq!(outs(&mut pit, 2, 51..57), [1, 1, 1, 1, 0, 1]);
    }

    #[test]
    fn mode_3_square_wave_even_and_odd() {
        let mut pit = Pit::new();
        program(&mut pit, 0x36, &[4, 0]);
        // The CE counts down by two.
        let counts: Vec<u16> = (1..5).map(|clk| latched(&mut pit, 0, at(clk))).collect();
        assert_eq!(counts, [4, 2, 4, 2]);
        assert_eq!(outs(&mut pit, 0, 5..11), [1, 1, 0, 0, 1, 1]);
        let mut pit = Pit::new();
        program(&mut pit, 0x36, &[4, 0]);
        assert_eq!(outs(&mut pit, 0, 1..11), [1, 1, 0, 0, 1, 1, 0, 0, 1, 1]);
        // Odd: high (N + 1) / 2, low (N - 1) / 2, N - 1 loaded.
        let mut pit = Pit::new();
        program(&mut pit, 0x36, &[5, 0]);
        assert_eq!(pit.next_output_change(0, 0), Some(at(4)));
        assert_eq!(pit.next_rising_edge(0, 0), Some(at(6)));
        assert_eq!(outs(&mut pit, 0, 1..12), [1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 1]);
        let counts: Vec<u16> = (12..17).map(|clk| latched(&mut pit, 0, at(clk))).collect();
        assert_eq!(counts, [2, 0, 4, 2, 4]);
        assert_eq!(pit.take_rising_edges(0, at(16)), 3);
        // A new count waits for the end of the half-cycle.
        let mut pit = Pit::new();
        program(&mut pit, 0x36, &[8, 0]);
        pit.write(0, 2, at(2));
        pit.write(0, 0, at(2));
        assert_eq!(outs(&mut pit, 0, 1..9), [1, 1, 1, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn mode_3_gate_low_forces_out_high() {
        let mut pit = Pit::new();
        pit.write_port_b(PORT_B_GATE2, 0);
        program(&mut pit, 0xb6, &[6, 0]);
        assert!(!pit.output(2, at(5)));
        pit.write_port_b(0, at(5));
        assert!(pit.output(2, at(5)));
        assert_eq!(pit.take_rising_edges(2, at(6)), 1);
        assert_eq!(pit.next_output_change(2, at(100)), None);
        pit.write_port_b(PORT_B_GATE2, at(100));
        assert_eq!(outs(&mut pit, 2, 101..108), [1, 1, 1, 0, 0, 0, 1]);
    }

    #[test]
    fn mode_4_software_triggered_strobe() {
        let mut pit = Pit::new();
        program(&mut pit, 0x38, &[3, 0]);
        // Strobe N + 1 pulses after the write, for one pulse.
        assert_eq!(outs(&mut pit, 0, 0..8), [1, 1, 1, 1, 0, 1, 1, 1]);
        assert_eq!(pit.next_output_change(0, at(5)), None);
        assert_eq!(pit.take_rising_edges(0, at(8)), 1);
        // Writing the first byte does not disturb counting; the whole count
        // restarts the sequence.
        pit.write(0, 2, at(10));
        assert_eq!(latched(&mut pit, 0, at(11)), 0xfff9);
        pit.write(0, 0, at(11));
        assert_eq!(pit.next_output_change(0, at(11)), Some(at(14)));
        assert_eq!(outs(&mut pit, 0, 12..16), [1, 1, 0, 1]);
    }

    #[test]
    fn mode_4_gate_inhibits_counting() {
        let mut pit = Pit::new();
        program(&mut pit, 0xb8, &[2, 0]);
        assert_eq!(outs(&mut pit, 2, 1..10), [1; 9]);
        pit.write_port_b(PORT_B_GATE2, at(10));
        assert_eq!(outs(&mut pit, 2, 11..14), [1, 0, 1]);
    }

    #[test]
    fn mode_5_hardware_triggered_strobe() {
        let mut pit = Pit::new();
        program(&mut pit, 0xba, &[3, 0]);
        assert_eq!(pit.next_output_change(2, at(5)), None);
        pit.write_port_b(PORT_B_GATE2, at(5));
        // Loaded on pulse 6, strobe N pulses later, for one pulse.
        assert_eq!(outs(&mut pit, 2, 6..11), [1, 1, 1, 0, 1]);
        // Retrigger with a new count before expiry: the new count counts.
        pit.write(2, 2, at(12));
        pit.write(2, 0, at(12));
        pit.write_port_b(0, at(12));
        pit.write_port_b(PORT_B_GATE2, at(12));
        pit.write_port_b(0, at(14));
        pit.write_port_b(PORT_B_GATE2, at(14));
        assert_eq!(outs(&mut pit, 2, 15..19), [1, 1, 0, 1]);
    }

    #[test]
    fn counter_latch_holds_until_read() {
        let mut pit = Pit::new();
        program(&mut pit, 0x34, &[0x00, 0x10]);
        pit.write(CONTROL_OFFSET, 0x00, at(11));
        // A second latch before the read is ignored.
        pit.write(CONTROL_OFFSET, 0x00, at(50));
        assert_eq!(pit.read(0, at(100)), 0xf6);
        assert_eq!(pit.read(0, at(100)), 0x0f);
        // Released: reads follow the count again.
        assert_eq!(pit.read(0, at(100)), 0x9d);
        assert_eq!(pit.read(0, at(100)), 0x0f);
        // Reprogramming drops a latched count.
        pit.write(CONTROL_OFFSET, 0x00, at(100));
        pit.write(CONTROL_OFFSET, 0x34, at(100));
        pit.write(0, 0x00, at(100));
        pit.write(0, 0x20, at(100));
        assert_eq!(latched(&mut pit, 0, at(101)), 0x2000);
    }

    #[test]
    fn read_back_status_and_count() {
        let mut pit = Pit::new();
        pit.write(CONTROL_OFFSET, 0x34, 0);
        pit.write(CONTROL_OFFSET, 0x7a, 0);
        pit.write(CONTROL_OFFSET, 0x91, 0);
        // Status of all three: nothing written yet, so NULL COUNT.
        pit.write(CONTROL_OFFSET, 0xee, 0);
        assert_eq!(pit.read(0, 0), 0xc0 | 0x34);
        assert_eq!(pit.read(1, 0), 0xc0 | 0x3a);
        // Mode 0 starts with OUT low.
        assert_eq!(pit.read(2, 0), 0x40 | 0x11);
        // A half-written count is not a count yet.
        pit.write(0, 10, 0);
        pit.write(CONTROL_OFFSET, 0xe2, 0);
        assert_eq!(pit.read(0, 0) & STATUS_NULL_COUNT, STATUS_NULL_COUNT);
        pit.write(0, 0, 0);
        pit.write(CONTROL_OFFSET, 0xe2, 0);
        assert_eq!(pit.read(0, 0) & STATUS_NULL_COUNT, STATUS_NULL_COUNT);
        // Loaded on the next pulse: NULL COUNT clears. Count and status:
        // status first, then the count; extra status latches are ignored.
        pit.write(CONTROL_OFFSET, 0xc2, at(3));
        pit.write(CONTROL_OFFSET, 0xe2, at(9));
        assert_eq!(pit.read(0, at(20)), 0x80 | 0x34);
        assert_eq!(pit.read(0, at(20)), 8);
        assert_eq!(pit.read(0, at(20)), 0);
        // OUT low in the status at the low pulse of mode 2.
        pit.write(CONTROL_OFFSET, 0xe2, at(10));
        assert_eq!(pit.read(0, at(20)), 0x34);
        // Count only, counter 2 (BCD, mode 0, LSB only).
        pit.write_port_b(PORT_B_GATE2, at(20));
        pit.write(2, 0x25, at(20));
        pit.write(CONTROL_OFFSET, 0xd8, at(26));
        assert_eq!(pit.read(2, at(30)), 0x20);
    }

    #[test]
    fn byte_access_modes() {
        let mut pit = Pit::new();
        // LSB only: the MSB is zero.
        program(&mut pit, 0x14, &[200]);
        assert_eq!(pit.read(0, at(1)), 200);
        assert_eq!(pit.read(0, at(1)), 200);
        pit.write(CONTROL_OFFSET, 0x00, at(11));
        assert_eq!(pit.read(0, at(50)), 190);
        // MSB only: the LSB is zero.
        let mut pit = Pit::new();
        program(&mut pit, 0x24, &[0x12]);
        assert_eq!(pit.read(0, at(1)), 0x12);
        assert_eq!(latched(&mut pit, 0, at(1)), 0x1212);
        pit.write(CONTROL_OFFSET, 0x00, at(2));
        assert_eq!(pit.read(0, at(2)), 0x11);
        // LSB then MSB with interleaved read and write, as the datasheet
        // allows.
        let mut pit = Pit::new();
        program(&mut pit, 0x30, &[0x34, 0x12]);
        assert_eq!(pit.read(0, at(1)), 0x34);
        pit.write(0, 0x78, at(1));
        assert_eq!(pit.read(0, at(1)), 0x12);
        pit.write(0, 0x56, at(1));
        assert_eq!(latched(&mut pit, 0, at(2)), 0x5678);
    }

    #[test]
    fn count_zero_is_the_modulus() {
        let mut pit = Pit::new();
        program(&mut pit, 0x34, &[0, 0]);
        assert_eq!(latched(&mut pit, 0, at(1)), 0);
        assert_eq!(latched(&mut pit, 0, at(2)), 0xffff);
        assert_eq!(pit.next_output_change(0, at(2)), Some(at(65536)));
        assert_eq!(pit.next_output_change(0, at(65536)), Some(at(65537)));
        assert_eq!(pit.take_rising_edges(0, at(1 + 10 * 65536)), 10);
        // Mode 0: OUT high 65537 pulses after the write.
        let mut pit = Pit::new();
        program(&mut pit, 0x30, &[0, 0]);
        assert_eq!(pit.next_output_change(0, 0), Some(at(65537)));
        // Mode 3: half-cycles of 32768.
        let mut pit = Pit::new();
        program(&mut pit, 0x36, &[0, 0]);
        assert_eq!(pit.next_output_change(0, 0), Some(at(32769)));
        assert_eq!(latched(&mut pit, 0, at(2)), 0xfffe);
    }

    #[test]
    fn bcd_counting() {
        let mut pit = Pit::new();
        program(&mut pit, 0x35, &[0x10, 0x00]);
        assert_eq!(latched(&mut pit, 0, at(1)), 0x0010);
        assert_eq!(latched(&mut pit, 0, at(2)), 0x0009);
        assert_eq!(pit.next_output_change(0, at(2)), Some(at(10)));
        // 0 is 10^4 in BCD; the CE wraps from 0000 to 9999.
        let mut pit = Pit::new();
        program(&mut pit, 0x31, &[0, 0]);
        assert_eq!(latched(&mut pit, 0, at(2)), 0x9999);
        assert_eq!(pit.next_output_change(0, at(2)), Some(at(10_001)));
        assert_eq!(latched(&mut pit, 0, at(10_003)), 0x9998);
    }

    /// Linux 6.1 pit_calibrate_tsc: channel 2, mode 0, gate via port 0x61,
    /// polling OUT2 at port 0x61 bit 5.
    #[test]
    fn linux_pit_calibrate_tsc() {
        // PIT_TICK_RATE / (1000 / CAL_MS), CAL_MS = 10.
        const CAL_LATCH: u16 = 11_931;
        for latch in [0xffff, CAL_LATCH] {
            let mut pit = Pit::new();
            let start = 3_000_000_000;
            let value = pit.read_port_b(start);
            pit.write_port_b((value & !0x02) | 0x01, start);
            pit.write(CONTROL_OFFSET, 0xb0, start);
            let [low, high] = latch.to_le_bytes();
            pit.write(2, low, start + 1000);
            pit.write(2, high, start + 2000);
            let written = clk_at(start + 2000);
            let fires = at(written + u64::from(latch) + 1);
            let mut now = start + 2000;
            let mut polls = 0;
            while pit.read_port_b(now) & 0x20 == 0 {
                now += 700;
                polls += 1;
            }
            assert!(now >= fires && now < fires + 700, "latch {latch:#x}");
            assert!(polls > 10);
            // Speaker off, gate on, read back.
            assert_eq!(pit.read_port_b(now) & 0x03, 0x01);
        }
    }

    /// Linux 6.1 quick_pit_calibrate: the same setup with 0xffff, then the
    /// MSB of the running count read with LSB-MSB pairs of inb(0x42).
    #[test]
    fn linux_quick_pit_calibrate() {
        let mut pit = Pit::new();
        let mut now = 0;
        let value = pit.read_port_b(now);
        pit.write_port_b((value & !0x02) | 0x01, now);
        pit.write(CONTROL_OFFSET, 0xb0, now);
        pit.write(2, 0xff, now);
        pit.write(2, 0xff, now);
        let mut msb = |now: u64| {
            pit.read(2, now);
            pit.read(2, now)
        };
        now += 1000;
        assert_eq!(msb(now), 0xff);
        // The MSB steps down once per 256 pulses.
        for expected in [0xfe, 0xfd, 0xfc] {
            while msb(now) != expected {
                now += 500;
            }
            // Loaded with 0xffff on pulse 1, the CE is 0xffff - (k - 1) at
            // pulse k.
            let below = (u64::from(expected) << 8) | 0xff;
            assert_eq!(clk_at(now), 1 + 0xffff - below);
        }
    }

    #[test]
    fn channel_0_at_1_khz() {
        let mut pit = Pit::new();
        // Linux's periodic PIT clockevent: 0x34, LATCH LSB then MSB.
        program(&mut pit, 0x34, &1193u16.to_le_bytes());
        assert_eq!(pit.take_rising_edges(0, 1_000_000_000), 1000);
        // Taken in small steps, the total is the same.
        let mut total = 0;
        for ms in 1001..=2000 {
            total += pit.take_rising_edges(0, ms * 1_000_000);
        }
        assert_eq!(total, 1000);
        // A long sleep counts every edge without replaying them one by one.
        let day = 86_400_000_000_000;
        let edges = pit.take_rising_edges(0, day);
        assert_eq!(edges + 2000, (clk_at(day) - 1) / 1193);
    }

    #[test]
    fn next_output_change_tracks_channel_0() {
        let mut pit = Pit::new();
        assert_eq!(pit.next_output_change(0, 0), None);
        program(&mut pit, 0x34, &1193u16.to_le_bytes());
        // Low when the CE reaches 1 (pulse 1193), high again at 1194.
        let low = pit.next_output_change(0, 0);
        assert_eq!(low, Some(at(1193)));
        assert!(pit.output(0, at(1193) - 1));
        assert!(!pit.output(0, at(1193)));
        assert_eq!(pit.next_output_change(0, at(1193)), Some(at(1194)));
        assert_eq!(pit.next_rising_edge(0, at(1193)), Some(at(1194)));
        assert_eq!(pit.next_output_change(0, at(1194)), Some(at(1193 + 1193)));
        assert_eq!(pit.next_rising_edge(0, at(1194)), Some(at(1194 + 1193)));
        // Linux's oneshot: 0x30 then LSB, MSB; re-armed with LSB, MSB only.
        let mut pit = Pit::new();
        program(&mut pit, 0x30, &100u16.to_le_bytes());
        assert_eq!(pit.next_output_change(0, 0), Some(at(101)));
        pit.take_rising_edges(0, 0);
        assert_eq!(pit.take_rising_edges(0, at(101)), 1);
        pit.write(0, 50, at(200));
        pit.write(0, 0, at(200));
        assert!(!pit.output(0, at(200)));
        assert_eq!(pit.next_output_change(0, at(200)), Some(at(251)));
        assert_eq!(pit.take_rising_edges(0, at(300)), 1);
        // Unknown channels.
        assert_eq!(pit.next_output_change(3, 0), None);
        assert!(!pit.output(3, 0));
    }

    #[test]
    fn port_b_bits() {
        let mut pit = Pit::new();
        assert_eq!(pit.read_port_b(0), PORT_B_OUT2);
        // Refresh toggles every 18 pulses.
        assert_eq!(pit.read_port_b(at(17)) & PORT_B_REFRESH, 0);
        assert_eq!(pit.read_port_b(at(18)) & PORT_B_REFRESH, PORT_B_REFRESH);
        assert_eq!(pit.read_port_b(at(36)) & PORT_B_REFRESH, 0);
        // Bits 0-3 read back; bits 4-7 are not writable.
        pit.write_port_b(0xff, 0);
        assert_eq!(pit.read_port_b(0), 0x0f | PORT_B_OUT2);
        pit.write_port_b(0x02, 0);
        assert_eq!(pit.read_port_b(0), 0x02 | PORT_B_OUT2);
    }

    #[test]
    fn illegal_count_1_in_modes_2_and_3_holds_out_high() {
        let mut pit = Pit::new();
        program(&mut pit, 0x34, &[1, 0]);
        assert_eq!(outs(&mut pit, 0, 0..5), [1; 5]);
        assert_eq!(pit.next_output_change(0, at(5)), None);
        program(&mut pit, 0x36, &[1, 0]);
        assert_eq!(outs(&mut pit, 0, 0..5), [1; 5]);
        assert_eq!(latched(&mut pit, 0, at(5)), 1);
    }

    #[test]
    fn unwired_offsets_and_time_going_back() {
        let mut pit = Pit::new();
        assert_eq!(pit.read(3, 0), 0xff);
        assert_eq!(pit.read(7, 0), 0xff);
        pit.write(9, 0x12, 0);
        program(&mut pit, 0x34, &[10, 0]);
        assert_eq!(latched(&mut pit, 0, at(5)), 6);
        // An earlier time is the latest seen.
        assert_eq!(latched(&mut pit, 0, at(2)), 6);
    }

    /// The pulse-skipping fast path and the output-change predictions agree
    /// with running every CLK pulse through the state machine, over random
    /// programs of every mode.
    #[test]
    fn skipping_matches_pulse_by_pulse() {
        /// Runs every pulse up to `clk`; returns the pulses after the start
        /// at which OUT first changed and first rose.
        fn naive(counter: &mut Counter, clk: u64) -> (Option<u64>, Option<u64>) {
            let (start, mut change, mut rise) = (counter.clk, None, None);
            while counter.clk < clk {
                let out = counter.out;
                counter.clk += 1;
                counter.pulse();
                if counter.out != out {
                    change = change.or(Some(counter.clk - start));
                    if counter.out {
                        rise = rise.or(Some(counter.clk - start));
                    }
                }
            }
            (change, rise)
        }
        fn state(counter: &Counter) -> (u64, bool, u64, bool, bool, bool, u16) {
            (
                counter.ce,
                counter.out,
                counter.rising_edges,
                counter.null_count,
                counter.expired,
                counter.strobe_pending,
                counter.shown_count(),
            )
        }
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = move |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % below
        };
        for script in 0..800 {
            let mut fast = Counter::new(random(2) == 0);
            let mut slow = fast.clone();
            let mut clk = random(3);
            for _ in 0..24 {
                let op = random(8);
                let (mode, bcd) = (random(6), random(4) == 0);
                let control = (0x30 | (mode << 1) | u64::from(bcd)).to_le_bytes()[0];
                let count = match random(6) {
                    0 => 0,
                    1 => random(0x1_0000),
                    _ => random(12),
                }
                .to_le_bytes();
                for counter in [&mut fast, &mut slow] {
                    match op {
                        0 => counter.write_control(control),
                        1 => counter.write_count(count[0]),
                        2 => counter.write_count(count[1]),
                        3 | 4 => {
                            counter.write_count(count[0]);
                            counter.write_count(count[1]);
                        }
                        5 => counter.set_gate(!counter.gate),
                        _ => {}
                    }
                }
                clk += match random(4) {
                    0 => random(3),
                    1 => random(40),
                    2 => random(300),
                    _ => random(25_000),
                };
                let change = fast.clks_to_output_change(None);
                let rise = fast.clks_to_output_change(Some(true));
                let left = clk - fast.clk;
                fast.advance(clk);
                let (seen_change, seen_rise) = naive(&mut slow, clk);
                assert_eq!(state(&fast), state(&slow), "script {script}");
                for (predicted, seen) in [(change, seen_change), (rise, seen_rise)] {
                    let in_range = predicted.filter(|&pulses| pulses <= left);
                    assert_eq!(in_range, seen, "script {script}");
                }
            }
        }
    }
}
