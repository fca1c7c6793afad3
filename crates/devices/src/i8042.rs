//! The Intel 8042 keyboard controller of the PC, with an MF2 keyboard on
//! its keyboard port and nothing on its auxiliary (PS/2 mouse) port.
//!
//! # On the bus
//!
//! Offset 0 is the data port (PC port 0x60: the output buffer on reads,
//! the input buffer on writes: a controller command's data byte, or a byte
//! for the keyboard), offset 4 the status register on reads and the command
//! register on writes (port 0x64). The board dispatches them:
//! `kbc.read(port - 0x60)`, `kbc.write(port - 0x60, value)`. A write
//! returns [`I8042Effect::Reset`] when it pulses the CPU's reset line.
//!
//! # Interrupts
//!
//! IRQ 1 is high while the output buffer holds a keyboard byte and command
//! byte bit 0 is set, IRQ 12 while it holds an auxiliary byte and bit 1 is
//! set ([`I8042::irq1_level`], [`I8042::irq12_level`]). Reading the data
//! port empties the buffer and drops the line, and the next byte waiting
//! (a keyboard reply right after its ACK, say) moves in at once and raises
//! it again, all within the one read. The PC's 8259A latches these lines on
//! rising edges, so after every access the board asks
//! [`I8042::take_irq1_rising_edge`] and [`I8042::take_irq12_rising_edge`]
//! whether the line rose since it last asked; if so it drops the line and
//! raises it again (an edge the interrupt controller sees), then sets it to
//! the level:
//!
//! ```
//! # use devices::i8042::I8042;
//! # let mut kbc = I8042::new();
//! # let set_irq = |_line: u8, _level: bool| {};
//! kbc.write(0, 0xf4); // enable scanning: the keyboard answers ACK
//! if kbc.take_irq1_rising_edge() {
//!     set_irq(1, false);
//!     set_irq(1, true);
//! }
//! set_irq(1, kbc.irq1_level());
//! ```
//!
//! Nothing here depends on time: commands complete at once (IBF always
//! reads 0), and keyboard bytes move into the output buffer as soon as it is
//! empty.
//!
//! # What is modelled
//!
//! - The controller: status register, command byte (and the rest of its 32
//!   bytes of RAM, commands 0x20-0x3F and 0x60-0x7F), the commands Linux
//!   and BIOSes use (AUX and keyboard enable, disable and interface tests,
//!   self-test, input port, output port with the reset and A20 lines, the
//!   write-output-buffer loopbacks 0xD2 and 0xD3, 0xD4 to the AUX device,
//!   test inputs, the 0xDD/0xDF A20 commands, output line pulses); unknown
//!   commands are ignored. Bytes the controller makes itself wait for the
//!   output buffer ahead of device bytes.
//! - Translation (command byte bit 6): every byte from the keyboard goes
//!   through the 8042's set 2 to set 1 table on its way into the output
//!   buffer, and an 0xF0 prefix is swallowed to set bit 7 of the next byte,
//!   as the chip does. So the keyboard's ID 0xAB 0x83 reads 0xAB 0x41 and
//!   scan code set 2 reads 0x41, as Linux's atkbd expects on a translating
//!   controller. Bytes the controller makes itself are not translated.
//! - Disabling the keyboard interface (command byte bit 4, 0xAD) holds the
//!   keyboard's bytes in the keyboard; writing a byte to the keyboard clears
//!   the bit again (as QEMU does).
//! - The keyboard: a 16-byte buffer for scan codes (the byte in the
//!   controller's output buffer counted in, so at most 16 bytes wait in
//!   all, which Linux's i8042_flush can always empty), with replies to
//!   commands going ahead of it; reset, identify, LEDs, typematic, enable,
//!   disable and defaults, scan code set get and set, echo, resend, the
//!   set 3 key-type commands (acknowledged, no effect); others answer 0xFE.
//!   A new command drops replies to the previous one not yet read (QEMU); a
//!   command byte (0xED and above) where an argument was expected starts the
//!   new command. The host pushes set 2 codes with
//!   [`I8042::push_scancodes`]: dropped while scanning is disabled, taken
//!   whole or not at all (a sequence that does not fit leaves an overrun code
//!   instead, 0x00, or 0xFF in set 1). In scan code set 1 the keyboard
//!   converts them with the same table; set 3 gets them unconverted.
//! - No AUX device: a byte written with 0xD4 is answered by the controller
//!   with 0xFE in the output buffer, AUXB and the timeout bit set (IRQ 12 if
//!   enabled), as a controller that got no clock from the device does. Linux
//!   takes the timeout flag as a failed command at once, so psmouse gives up
//!   without waiting for its timeouts.

use std::collections::VecDeque;
use std::mem;

use serde::{Deserialize, Serialize};

/// Offset of the data port (PC port 0x60).
pub const DATA_OFFSET: u16 = 0;
/// Offset of the status and command port (PC port 0x64).
pub const COMMAND_OFFSET: u16 = 4;

/// Status: output buffer full.
pub const STATUS_OBF: u8 = 0x01;
/// Status: input buffer full (always 0 here: commands complete at once).
pub const STATUS_IBF: u8 = 0x02;
/// Status: system flag (command byte bit 2).
pub const STATUS_SYS: u8 = 0x04;
/// Status: A2, the last write was to the command port.
pub const STATUS_A2: u8 = 0x08;
/// Status: inhibit switch, 1 = keyboard not inhibited.
pub const STATUS_INH: u8 = 0x10;
/// Status: the output buffer holds auxiliary device data.
pub const STATUS_AUXB: u8 = 0x20;
/// Status: timeout (the device did not answer).
pub const STATUS_TIMEOUT: u8 = 0x40;
/// Status: parity error.
pub const STATUS_PARITY: u8 = 0x80;

/// Command byte: keyboard output buffer full interrupt (IRQ 1).
pub const CB_KBD_INT: u8 = 0x01;
/// Command byte: auxiliary output buffer full interrupt (IRQ 12).
pub const CB_AUX_INT: u8 = 0x02;
/// Command byte: system flag.
pub const CB_SYS: u8 = 0x04;
/// Command byte: inhibit override.
pub const CB_INHIBIT_OVERRIDE: u8 = 0x08;
/// Command byte: keyboard interface disabled.
pub const CB_KBD_DISABLE: u8 = 0x10;
/// Command byte: auxiliary interface disabled.
pub const CB_AUX_DISABLE: u8 = 0x20;
/// Command byte: translate keyboard bytes to scan code set 1.
pub const CB_XLATE: u8 = 0x40;

/// Output port: system reset (active low).
pub const OUT_RESET: u8 = 0x01;
/// Output port: gate A20.
pub const OUT_A20: u8 = 0x02;
/// Output port: auxiliary data line.
pub const OUT_AUX_DATA: u8 = 0x04;
/// Output port: auxiliary clock line.
pub const OUT_AUX_CLOCK: u8 = 0x08;
/// Output port: keyboard output buffer full (IRQ 1).
pub const OUT_KBD_OBF: u8 = 0x10;
/// Output port: auxiliary output buffer full (IRQ 12).
pub const OUT_AUX_OBF: u8 = 0x20;
/// Output port: keyboard clock line.
pub const OUT_KBD_CLOCK: u8 = 0x40;
/// Output port: keyboard data line.
pub const OUT_KBD_DATA: u8 = 0x80;

/// Input port as read by 0xC0: keyboard not inhibited (bit 7), no
/// manufacturing jumper (bit 5), auxiliary and keyboard data lines idle
/// high (bits 1 and 0).
pub const INPUT_PORT: u8 = 0xa3;

/// Controller command: read byte 0 (the command byte) of internal RAM
/// (0x21-0x3F read bytes 1-31).
pub const CMD_READ_RAM: u8 = 0x20;
/// Controller command: write the next data byte to byte 0 (the command
/// byte) of internal RAM (0x61-0x7F write bytes 1-31).
pub const CMD_WRITE_RAM: u8 = 0x60;
/// Controller command: disable the auxiliary interface.
pub const CMD_AUX_DISABLE: u8 = 0xa7;
/// Controller command: enable the auxiliary interface.
pub const CMD_AUX_ENABLE: u8 = 0xa8;
/// Controller command: auxiliary interface test.
pub const CMD_AUX_TEST: u8 = 0xa9;
/// Controller command: self-test.
pub const CMD_SELF_TEST: u8 = 0xaa;
/// Controller command: keyboard interface test.
pub const CMD_KBD_TEST: u8 = 0xab;
/// Controller command: disable the keyboard interface.
pub const CMD_KBD_DISABLE: u8 = 0xad;
/// Controller command: enable the keyboard interface.
pub const CMD_KBD_ENABLE: u8 = 0xae;
/// Controller command: read the input port.
pub const CMD_READ_INPUT_PORT: u8 = 0xc0;
/// Controller command: read the output port.
pub const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
/// Controller command: write the next data byte to the output port.
pub const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
/// Controller command: the next data byte appears as keyboard data.
pub const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
/// Controller command: the next data byte appears as auxiliary data.
pub const CMD_WRITE_AUX_BUFFER: u8 = 0xd3;
/// Controller command: send the next data byte to the auxiliary device.
pub const CMD_WRITE_AUX: u8 = 0xd4;
/// Controller command: gate A20 off.
pub const CMD_A20_OFF: u8 = 0xdd;
/// Controller command: gate A20 on.
pub const CMD_A20_ON: u8 = 0xdf;
/// Controller command: read the test inputs (T0 keyboard clock, T1
/// auxiliary clock).
pub const CMD_READ_TEST_INPUTS: u8 = 0xe0;
/// Controller commands 0xF0-0xFF: pulse the output port bits 3-0 whose bit
/// in the command is 0 (0xFE pulses the reset line).
pub const CMD_PULSE: u8 = 0xf0;
/// Self-test passed.
pub const SELF_TEST_OK: u8 = 0x55;
/// Interface test passed.
pub const INTERFACE_TEST_OK: u8 = 0x00;

/// Keyboard command: set the LEDs (argument: the LED bits).
pub const KBD_SET_LEDS: u8 = 0xed;
/// Keyboard command: echo.
pub const KBD_ECHO: u8 = 0xee;
/// Keyboard command: get or set the scan code set (argument: 0 to get, 1-3
/// to set).
pub const KBD_SCANCODE_SET: u8 = 0xf0;
/// Keyboard command: identify.
pub const KBD_IDENTIFY: u8 = 0xf2;
/// Keyboard command: set the typematic rate and delay (argument).
pub const KBD_TYPEMATIC: u8 = 0xf3;
/// Keyboard command: enable scanning.
pub const KBD_ENABLE: u8 = 0xf4;
/// Keyboard command: set defaults and disable scanning.
pub const KBD_DEFAULT_DISABLE: u8 = 0xf5;
/// Keyboard command: set defaults (scanning on).
pub const KBD_SET_DEFAULT: u8 = 0xf6;
/// Keyboard command: resend the last byte.
pub const KBD_RESEND: u8 = 0xfe;
/// Keyboard command: reset and self-test.
pub const KBD_RESET: u8 = 0xff;
/// Keyboard reply: acknowledge.
pub const KBD_ACK: u8 = 0xfa;
/// Keyboard reply: basic assurance test passed.
pub const KBD_BAT_OK: u8 = 0xaa;
/// Keyboard reply: resend (and the unknown-command answer).
pub const KBD_NAK: u8 = 0xfe;
/// The MF2 keyboard's identification bytes.
pub const KBD_ID: [u8; 2] = [0xab, 0x83];
/// Prefix of a set 2 break code.
pub const SET2_BREAK: u8 = 0xf0;

/// Keyboard's scan code buffer size.
const KBD_BUFFER_SIZE: usize = 16;
/// Typematic rate and delay after reset (10.9 characters/s, 500 ms).
const KBD_DEFAULT_TYPEMATIC: u8 = 0x2b;
/// The command byte a PC BIOS leaves: translation, AUX disabled (no mouse
/// found), system flag, keyboard interrupt.
const POWER_ON_COMMAND_BYTE: u8 = CB_XLATE | CB_AUX_DISABLE | CB_SYS | CB_KBD_INT;
/// The output port at power-on: reset high, A20 on, lines idle high.
const POWER_ON_OUTPUT_PORT: u8 =
    OUT_RESET | OUT_A20 | OUT_AUX_DATA | OUT_AUX_CLOCK | OUT_KBD_CLOCK | OUT_KBD_DATA;

/// The 8042's set 2 to set 1 translation of bytes 0x00-0x7F; bytes 0x80
/// and above are kept, except 0x83 (F7) and 0x84 (Alt+SysRq).
const XLATE_LOW: [u8; 128] = [
    0xff, 0x43, 0x41, 0x3f, 0x3d, 0x3b, 0x3c, 0x58, 0x64, 0x44, 0x42, 0x40, 0x3e, 0x0f, 0x29, 0x59,
    0x65, 0x38, 0x2a, 0x70, 0x1d, 0x10, 0x02, 0x5a, 0x66, 0x71, 0x2c, 0x1f, 0x1e, 0x11, 0x03, 0x5b,
    0x67, 0x2e, 0x2d, 0x20, 0x12, 0x05, 0x04, 0x5c, 0x68, 0x39, 0x2f, 0x21, 0x14, 0x13, 0x06, 0x5d,
    0x69, 0x31, 0x30, 0x23, 0x22, 0x15, 0x07, 0x5e, 0x6a, 0x72, 0x32, 0x24, 0x16, 0x08, 0x09, 0x5f,
    0x6b, 0x33, 0x25, 0x17, 0x18, 0x0b, 0x0a, 0x60, 0x6c, 0x34, 0x35, 0x26, 0x27, 0x19, 0x0c, 0x61,
    0x6d, 0x73, 0x28, 0x74, 0x1a, 0x0d, 0x62, 0x6e, 0x3a, 0x36, 0x1c, 0x1b, 0x75, 0x2b, 0x63, 0x76,
    0x55, 0x56, 0x77, 0x78, 0x79, 0x7a, 0x0e, 0x7b, 0x7c, 0x4f, 0x7d, 0x4b, 0x47, 0x7e, 0x7f, 0x6f,
    0x52, 0x53, 0x50, 0x4c, 0x4d, 0x48, 0x01, 0x45, 0x57, 0x4e, 0x51, 0x4a, 0x37, 0x49, 0x46, 0x54,
];

/// The 8042's translation of one byte from the keyboard to scan code set 1.
#[must_use]
pub fn translate(byte: u8) -> u8 {
    match byte {
        0x83 => 0x41,
        0x84 => 0x54,
        _ => XLATE_LOW.get(usize::from(byte)).copied().unwrap_or(byte),
    }
}

/// What a write did beyond the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum I8042Effect {
    /// Nothing.
    None,
    /// The CPU reset line was pulsed (or driven low) through the output
    /// port.
    Reset,
}

/// A byte in the output buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct OutputByte {
    value: u8,
    /// From (or on behalf of) the auxiliary device: AUXB, IRQ 12.
    aux: bool,
    /// The device did not answer: the timeout status bit.
    timeout: bool,
}

impl OutputByte {
    fn keyboard(value: u8) -> Self {
        Self {
            value,
            aux: false,
            timeout: false,
        }
    }

    fn aux(value: u8) -> Self {
        Self {
            value,
            aux: true,
            timeout: false,
        }
    }
}

/// The argument a keyboard command waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum KeyboardArgument {
    Leds,
    Typematic,
    ScancodeSet,
    /// Set 3 key-type commands: key codes until the next command.
    KeyList,
}

/// The MF2 keyboard.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Keyboard {
    /// Replies to the last command, sent ahead of scan codes.
    replies: VecDeque<u8>,
    /// Scan codes waiting to be sent.
    scancodes: VecDeque<u8>,
    scanning: bool,
    /// 1, 2 or 3.
    scancode_set: u8,
    /// Scroll, Num and Caps Lock LEDs (bits 0-2).
    leds: u8,
    typematic: u8,
    awaiting: Option<KeyboardArgument>,
    /// The last byte sent to the controller, for resend.
    last_sent: u8,
}

impl Keyboard {
    fn new() -> Self {
        Self {
            replies: VecDeque::new(),
            scancodes: VecDeque::new(),
            scanning: true,
            scancode_set: 2,
            leds: 0,
            typematic: KBD_DEFAULT_TYPEMATIC,
            awaiting: None,
            last_sent: 0,
        }
    }

    /// The next byte to send to the controller.
    fn send(&mut self) -> Option<u8> {
        let byte = self
            .replies
            .pop_front()
            .or_else(|| self.scancodes.pop_front())?;
        self.last_sent = byte;
        Some(byte)
    }

    fn has_data(&self) -> bool {
        !self.replies.is_empty() || !self.scancodes.is_empty()
    }

    fn reply(&mut self, bytes: &[u8]) {
        self.replies.extend(bytes);
    }

    /// Default typematic rate, buffer cleared.
    fn set_defaults(&mut self) {
        self.typematic = KBD_DEFAULT_TYPEMATIC;
        self.scancodes.clear();
    }

    /// A byte from the host.
    fn receive(&mut self, byte: u8) {
        if byte == KBD_RESEND {
            // Does not disturb a command waiting for its argument.
            self.replies.push_back(self.last_sent);
            return;
        }
        self.replies.clear();
        if let Some(argument) = self.awaiting.take()
            && byte < KBD_SET_LEDS
        {
            self.argument(argument, byte);
            return;
        }
        match byte {
            KBD_SET_LEDS => self.expect(KeyboardArgument::Leds),
            KBD_ECHO => self.reply(&[KBD_ECHO]),
            KBD_SCANCODE_SET => self.expect(KeyboardArgument::ScancodeSet),
            KBD_IDENTIFY => self.reply(&[KBD_ACK, KBD_ID[0], KBD_ID[1]]),
            KBD_TYPEMATIC => self.expect(KeyboardArgument::Typematic),
            KBD_ENABLE => {
                self.scancodes.clear();
                self.scanning = true;
                self.reply(&[KBD_ACK]);
            }
            KBD_DEFAULT_DISABLE => {
                self.set_defaults();
                self.scanning = false;
                self.reply(&[KBD_ACK]);
            }
            KBD_SET_DEFAULT => {
                self.set_defaults();
                self.scanning = true;
                self.reply(&[KBD_ACK]);
            }
            // Set all keys typematic, make/break, make, all (set 3).
            0xf7..=0xfa => self.reply(&[KBD_ACK]),
            // Set keys typematic, make/break, make (set 3): a key list.
            0xfb..=0xfd => self.expect(KeyboardArgument::KeyList),
            KBD_RESET => {
                *self = Self {
                    last_sent: self.last_sent,
                    ..Self::new()
                };
                self.reply(&[KBD_ACK, KBD_BAT_OK]);
            }
            _ => self.reply(&[KBD_NAK]),
        }
    }

    fn expect(&mut self, argument: KeyboardArgument) {
        self.awaiting = Some(argument);
        self.reply(&[KBD_ACK]);
    }

    fn argument(&mut self, argument: KeyboardArgument, byte: u8) {
        match argument {
            KeyboardArgument::Leds => {
                self.leds = byte & 0x07;
                self.reply(&[KBD_ACK]);
            }
            KeyboardArgument::Typematic => {
                self.typematic = byte & 0x7f;
                self.reply(&[KBD_ACK]);
            }
            KeyboardArgument::ScancodeSet => match byte {
                0 => self.reply(&[KBD_ACK, self.scancode_set]),
                1..=3 => {
                    self.scancode_set = byte;
                    self.reply(&[KBD_ACK]);
                }
                _ => self.reply(&[KBD_NAK]),
            },
            KeyboardArgument::KeyList => {
                self.awaiting = Some(KeyboardArgument::KeyList);
                self.reply(&[KBD_ACK]);
            }
        }
    }

    /// Keys from the host, as set 2 codes, with room for `capacity` bytes.
    fn push_scancodes(&mut self, codes: &[u8], capacity: usize) {
        if !self.scanning || codes.is_empty() {
            return;
        }
        let codes: Vec<u8> = if self.scancode_set == 1 {
            to_set1(codes)
        } else {
            codes.to_vec()
        };
        let overrun = if self.scancode_set == 1 { 0xff } else { 0x00 };
        if self.scancodes.len() + codes.len() < capacity {
            self.scancodes.extend(codes);
        } else if self.scancodes.len() < capacity && self.scancodes.back() != Some(&overrun) {
            self.scancodes.push_back(overrun);
        }
    }
}

/// Set 2 codes converted to set 1 (break prefixes folded into bit 7).
fn to_set1(codes: &[u8]) -> Vec<u8> {
    let mut set1 = Vec::with_capacity(codes.len());
    let mut release = false;
    for &code in codes {
        if code == SET2_BREAK {
            release = true;
        } else {
            let high = if mem::take(&mut release) { 0x80 } else { 0 };
            set1.push(translate(code) | high);
        }
    }
    set1
}

/// The 8042 with its keyboard.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct I8042 {
    /// Internal RAM; byte 0 is the command byte.
    ram: [u8; 32],
    output_port: u8,
    /// The output buffer.
    output_buffer: Option<OutputByte>,
    /// The last byte read from the output buffer (what port 0x60 reads when
    /// the buffer is empty).
    last_output: u8,
    /// A byte the controller made, waiting for the output buffer.
    controller_output: Option<OutputByte>,
    /// A command waiting for its data byte.
    pending_command: Option<u8>,
    /// The A2 status bit: the last write was to the command port.
    a2: bool,
    /// Translation: an 0xF0 from the keyboard was swallowed, the next byte
    /// gets bit 7.
    xlate_break: bool,
    keyboard: Keyboard,
    irq1: bool,
    irq12: bool,
    irq1_rose: bool,
    irq12_rose: bool,
}

impl Default for I8042 {
    fn default() -> Self {
        Self::new()
    }
}

impl I8042 {
    /// The controller as a PC BIOS leaves it (command byte 0x65:
    /// translation, AUX interface disabled, system flag, keyboard interrupt;
    /// A20 on), the keyboard reset and scanning, all buffers empty.
    #[must_use]
    pub fn new() -> Self {
        let mut ram = [0; 32];
        ram[0] = POWER_ON_COMMAND_BYTE;
        Self {
            ram,
            output_port: POWER_ON_OUTPUT_PORT,
            output_buffer: None,
            last_output: 0,
            controller_output: None,
            pending_command: None,
            a2: true,
            xlate_break: false,
            keyboard: Keyboard::new(),
            irq1: false,
            irq12: false,
            irq1_rose: false,
            irq12_rose: false,
        }
    }

    /// The command byte.
    #[must_use]
    pub fn command_byte(&self) -> u8 {
        self.ram[0]
    }

    /// The status register.
    #[must_use]
    pub fn status(&self) -> u8 {
        let mut status = STATUS_INH | (self.command_byte() & CB_SYS);
        if self.a2 {
            status |= STATUS_A2;
        }
        if let Some(byte) = self.output_buffer {
            status |= STATUS_OBF;
            if byte.aux {
                status |= STATUS_AUXB;
            }
            if byte.timeout {
                status |= STATUS_TIMEOUT;
            }
        }
        status
    }

    /// The IRQ 1 line: a keyboard byte in the output buffer, command byte
    /// bit 0 set.
    #[must_use]
    pub fn irq1_level(&self) -> bool {
        self.irq1
    }

    /// The IRQ 12 line: an auxiliary byte in the output buffer, command
    /// byte bit 1 set.
    #[must_use]
    pub fn irq12_level(&self) -> bool {
        self.irq12
    }

    /// Whether IRQ 1 rose since the last call (see the module
    /// documentation).
    pub fn take_irq1_rising_edge(&mut self) -> bool {
        mem::take(&mut self.irq1_rose)
    }

    /// Whether IRQ 12 rose since the last call (see the module
    /// documentation).
    pub fn take_irq12_rising_edge(&mut self) -> bool {
        mem::take(&mut self.irq12_rose)
    }

    /// The A20 gate (output port bit 1).
    #[must_use]
    pub fn a20_enabled(&self) -> bool {
        self.output_port & OUT_A20 != 0
    }

    /// The keyboard's LEDs: bit 0 Scroll Lock, bit 1 Num Lock, bit 2 Caps
    /// Lock.
    #[must_use]
    pub fn keyboard_leds(&self) -> u8 {
        self.keyboard.leds
    }

    /// Keys pressed or released on the host, as scan code set 2 bytes of
    /// whole key events (an 0xE0 or 0xF0 prefix with the code it belongs
    /// to). Dropped while the keyboard does not scan; held in the keyboard
    /// while its interface is disabled.
    pub fn push_scancodes(&mut self, codes: &[u8]) {
        // The byte in the output buffer counts against the keyboard's 16,
        // so that at most 16 wait in all: Linux's i8042_flush reads 16 and
        // no more before it calls the controller absent.
        let held = usize::from(self.output_buffer.is_some());
        self.keyboard
            .push_scancodes(codes, KBD_BUFFER_SIZE.saturating_sub(held));
        self.fill_output_buffer();
    }

    /// Whether the keyboard and the controller hold no key bytes the guest
    /// has not read: a host that types pushes its next key event then, so
    /// that typing goes at the pace the guest reads and nothing overruns.
    #[must_use]
    pub fn keyboard_idle(&self) -> bool {
        self.output_buffer.is_none() && self.keyboard.scancodes.is_empty()
    }

    /// Register read at `offset`: the output buffer (0) or the status
    /// register (4); other offsets float.
    pub fn read(&mut self, offset: u16) -> u8 {
        match offset {
            DATA_OFFSET => {
                if let Some(byte) = self.output_buffer.take() {
                    self.last_output = byte.value;
                    self.update_lines();
                    self.fill_output_buffer();
                }
                self.last_output
            }
            COMMAND_OFFSET => self.status(),
            _ => 0xff,
        }
    }

    /// Register write at `offset`: a data byte (0) or a controller command
    /// (4); other offsets are ignored.
    pub fn write(&mut self, offset: u16, value: u8) -> I8042Effect {
        let effect = match offset {
            DATA_OFFSET => {
                self.a2 = false;
                match self.pending_command.take() {
                    Some(command) => self.command_data(command, value),
                    None => {
                        self.write_keyboard(value);
                        I8042Effect::None
                    }
                }
            }
            COMMAND_OFFSET => {
                self.a2 = true;
                self.pending_command = None;
                self.command(value)
            }
            _ => I8042Effect::None,
        };
        self.fill_output_buffer();
        effect
    }

    fn write_keyboard(&mut self, value: u8) {
        // Sending to the keyboard enables its interface again.
        self.ram[0] &= !CB_KBD_DISABLE;
        self.keyboard.receive(value);
    }

    /// A byte the controller makes itself.
    fn controller_reply(&mut self, byte: OutputByte) {
        self.controller_output = Some(byte);
    }

    fn command(&mut self, command: u8) -> I8042Effect {
        match command {
            0x20..=0x3f => {
                let value = self.ram[usize::from(command & 0x1f)];
                self.controller_reply(OutputByte::keyboard(value));
            }
            0x60..=0x7f
            | CMD_WRITE_OUTPUT_PORT
            | CMD_WRITE_KBD_BUFFER
            | CMD_WRITE_AUX_BUFFER
            | CMD_WRITE_AUX => self.pending_command = Some(command),
            CMD_AUX_DISABLE => self.ram[0] |= CB_AUX_DISABLE,
            CMD_AUX_ENABLE => self.ram[0] &= !CB_AUX_DISABLE,
            CMD_AUX_TEST | CMD_KBD_TEST => {
                self.controller_reply(OutputByte::keyboard(INTERFACE_TEST_OK));
            }
            CMD_SELF_TEST => {
                self.ram[0] |= CB_SYS;
                self.controller_reply(OutputByte::keyboard(SELF_TEST_OK));
            }
            CMD_KBD_DISABLE => self.ram[0] |= CB_KBD_DISABLE,
            CMD_KBD_ENABLE => self.ram[0] &= !CB_KBD_DISABLE,
            CMD_READ_INPUT_PORT => self.controller_reply(OutputByte::keyboard(INPUT_PORT)),
            CMD_READ_OUTPUT_PORT => {
                let value = self.output_port_value();
                self.controller_reply(OutputByte::keyboard(value));
            }
            CMD_A20_OFF => self.output_port &= !OUT_A20,
            CMD_A20_ON => self.output_port |= OUT_A20,
            CMD_READ_TEST_INPUTS => {
                // A disabled interface has its clock held low.
                let kbd_clock = u8::from(self.ram[0] & CB_KBD_DISABLE == 0);
                let aux_clock = u8::from(self.ram[0] & CB_AUX_DISABLE == 0);
                self.controller_reply(OutputByte::keyboard(kbd_clock | aux_clock << 1));
            }
            CMD_PULSE..=0xff if command & OUT_RESET == 0 => return I8042Effect::Reset,
            _ => {}
        }
        I8042Effect::None
    }

    fn command_data(&mut self, command: u8, value: u8) -> I8042Effect {
        match command {
            0x60..=0x7f => self.ram[usize::from(command & 0x1f)] = value,
            CMD_WRITE_OUTPUT_PORT => {
                self.output_port = value & !(OUT_KBD_OBF | OUT_AUX_OBF);
                if value & OUT_RESET == 0 {
                    return I8042Effect::Reset;
                }
            }
            CMD_WRITE_KBD_BUFFER => self.controller_reply(OutputByte::keyboard(value)),
            CMD_WRITE_AUX_BUFFER => self.controller_reply(OutputByte::aux(value)),
            CMD_WRITE_AUX => {
                // Sending to the AUX device enables its interface again;
                // no device clocks the byte in, so the controller answers.
                self.ram[0] &= !CB_AUX_DISABLE;
                self.controller_reply(OutputByte {
                    value: KBD_NAK,
                    aux: true,
                    timeout: true,
                });
            }
            _ => {}
        }
        I8042Effect::None
    }

    /// The output port with its buffer-full bits.
    fn output_port_value(&self) -> u8 {
        let mut value = self.output_port;
        match self.output_buffer {
            Some(OutputByte { aux: true, .. }) => value |= OUT_AUX_OBF,
            Some(_) => value |= OUT_KBD_OBF,
            None => {}
        }
        value
    }

    /// Moves the next byte (the controller's own first, then the
    /// keyboard's unless its interface is disabled) into an empty output
    /// buffer, translating keyboard bytes if the command byte says so.
    fn fill_output_buffer(&mut self) {
        while self.output_buffer.is_none() {
            if let Some(byte) = self.controller_output.take() {
                self.output_buffer = Some(byte);
                break;
            }
            if self.ram[0] & CB_KBD_DISABLE != 0 || !self.keyboard.has_data() {
                break;
            }
            let Some(byte) = self.keyboard.send() else {
                break;
            };
            if self.ram[0] & CB_XLATE == 0 {
                self.output_buffer = Some(OutputByte::keyboard(byte));
            } else if byte == SET2_BREAK {
                self.xlate_break = true;
            } else {
                let high = if mem::take(&mut self.xlate_break) {
                    0x80
                } else {
                    0
                };
                self.output_buffer = Some(OutputByte::keyboard(translate(byte) | high));
            }
        }
        self.update_lines();
    }

    /// Recomputes IRQ 1 and IRQ 12 from the output buffer and the command
    /// byte, noting rising edges.
    fn update_lines(&mut self) {
        let (irq1, irq12) = match self.output_buffer {
            Some(OutputByte { aux: false, .. }) => (self.ram[0] & CB_KBD_INT != 0, false),
            Some(OutputByte { aux: true, .. }) => (false, self.ram[0] & CB_AUX_INT != 0),
            None => (false, false),
        };
        self.irq1_rose |= irq1 && !self.irq1;
        self.irq12_rose |= irq12 && !self.irq12;
        self.irq1 = irq1;
        self.irq12 = irq12;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls of the status register Linux makes before it gives up
    /// (I8042_CTL_TIMEOUT).
    const CTL_TIMEOUT: usize = 10_000;

    /// Linux i8042_wait_write.
    fn wait_write(kbc: &mut I8042) {
        let ready = (0..CTL_TIMEOUT).any(|_| kbc.read(COMMAND_OFFSET) & STATUS_IBF == 0);
        assert!(ready, "wait write timeout");
    }

    /// Linux i8042_wait_read.
    fn wait_read(kbc: &mut I8042) {
        let ready = (0..CTL_TIMEOUT).any(|_| kbc.read(COMMAND_OFFSET) & STATUS_OBF != 0);
        assert!(ready, "wait read timeout");
    }

    /// Linux __i8042_command: the command, its parameters, then its
    /// results by polling (the AUX loopback's must carry AUXB).
    fn command(kbc: &mut I8042, command: u8, params: &[u8], results: usize) -> Vec<u8> {
        wait_write(kbc);
        assert_eq!(kbc.write(COMMAND_OFFSET, command), I8042Effect::None);
        for &param in params {
            wait_write(kbc);
            assert_eq!(kbc.write(DATA_OFFSET, param), I8042Effect::None);
        }
        (0..results)
            .map(|_| {
                wait_read(kbc);
                if command == CMD_WRITE_AUX_BUFFER {
                    assert_ne!(kbc.read(COMMAND_OFFSET) & STATUS_AUXB, 0, "auxerr");
                }
                kbc.read(DATA_OFFSET)
            })
            .collect()
    }

    /// Linux i8042_flush.
    fn flush(kbc: &mut I8042) -> Vec<u8> {
        let mut flushed = Vec::new();
        while kbc.read(COMMAND_OFFSET) & STATUS_OBF != 0 {
            // I8042_BUFFER_SIZE bytes, then it gives up.
            assert!(flushed.len() < 16, "no controller found");
            flushed.push(kbc.read(DATA_OFFSET));
        }
        flushed
    }

    /// The interrupt handler run for every rising edge of IRQ 1 (as the
    /// 8259A latches them): status, then data. Returns the bytes.
    fn irq1_bytes(kbc: &mut I8042) -> Vec<u8> {
        let mut bytes = Vec::new();
        while kbc.take_irq1_rising_edge() {
            assert!(kbc.irq1_level());
            let status = kbc.read(COMMAND_OFFSET);
            assert_eq!(status & (STATUS_OBF | STATUS_AUXB), STATUS_OBF);
            bytes.push(kbc.read(DATA_OFFSET));
            assert!(bytes.len() <= 16);
        }
        assert!(!kbc.irq1_level());
        assert_eq!(kbc.read(COMMAND_OFFSET) & STATUS_OBF, 0);
        bytes
    }

    /// A byte to the keyboard (Linux i8042_kbd_write) and the bytes its
    /// interrupts bring.
    fn kbd_write(kbc: &mut I8042, byte: u8) -> Vec<u8> {
        wait_write(kbc);
        assert_eq!(kbc.write(DATA_OFFSET, byte), I8042Effect::None);
        irq1_bytes(kbc)
    }

    #[test]
    fn power_on_state() {
        let mut kbc = I8042::new();
        assert_eq!(
            kbc.read(COMMAND_OFFSET),
            STATUS_SYS | STATUS_A2 | STATUS_INH
        );
        assert_eq!(kbc.command_byte(), 0x65);
        assert!(kbc.a20_enabled());
        assert!(!kbc.irq1_level() && !kbc.irq12_level());
        assert!(!kbc.take_irq1_rising_edge() && !kbc.take_irq12_rising_edge());
        assert_eq!(kbc.keyboard_leds(), 0);
        // Other offsets float.
        assert_eq!(kbc.read(1), 0xff);
        assert_eq!(kbc.write(2, 0xfe), I8042Effect::None);
    }

    /// The Linux 6.1 probe as the kernel performs it: i8042_controller_check,
    /// selftest, i8042_controller_init, i8042_check_aux (loopback, AUX
    /// enable bits, IRQ 12 delivery), the MUX check, the port setup, atkbd's
    /// probe and activation, psmouse's probe of the empty AUX port, and a
    /// key.
    #[test]
    fn linux_probe_sequence() {
        let mut kbc = I8042::new();
        assert!(flush(&mut kbc).is_empty());
        assert_eq!(command(&mut kbc, CMD_SELF_TEST, &[], 1), [SELF_TEST_OK]);
        // A stable CTR read.
        let initial = command(&mut kbc, CMD_READ_RAM, &[], 1)[0];
        assert_eq!(command(&mut kbc, CMD_READ_RAM, &[], 1), [initial]);
        let mut ctr = (initial | CB_KBD_DISABLE) & !CB_KBD_INT;
        // No keylock; translation left on (not i8042.direct).
        assert_ne!(kbc.read(COMMAND_OFFSET) & STATUS_INH, 0);
        assert_ne!(ctr & CB_XLATE, 0);
        command(&mut kbc, CMD_WRITE_RAM, &[ctr], 0);
        assert!(flush(&mut kbc).is_empty());

        // i8042_check_aux: the loopback.
        assert_eq!(command(&mut kbc, CMD_WRITE_AUX_BUFFER, &[0x5a], 1), [0x5a]);
        // i8042_toggle_aux off and on.
        command(&mut kbc, CMD_AUX_DISABLE, &[], 0);
        assert_ne!(
            command(&mut kbc, CMD_READ_RAM, &[], 1)[0] & CB_AUX_DISABLE,
            0
        );
        command(&mut kbc, CMD_AUX_ENABLE, &[], 0);
        assert_eq!(
            command(&mut kbc, CMD_READ_RAM, &[], 1)[0] & CB_AUX_DISABLE,
            0
        );
        // IRQ 12 delivery: AUX port enabled, loopback of 0xa5 without
        // polling.
        ctr = (ctr & !CB_AUX_DISABLE) | CB_AUX_INT;
        command(&mut kbc, CMD_WRITE_RAM, &[ctr], 0);
        command(&mut kbc, CMD_WRITE_AUX_BUFFER, &[0xa5], 0);
        assert!(kbc.take_irq12_rising_edge());
        assert!(kbc.irq12_level() && !kbc.irq1_level());
        let status = kbc.read(COMMAND_OFFSET);
        assert_eq!(
            status & (STATUS_OBF | STATUS_AUXB),
            STATUS_OBF | STATUS_AUXB
        );
        assert_eq!(kbc.read(DATA_OFFSET), 0xa5);
        assert!(!kbc.irq12_level() && !kbc.take_irq12_rising_edge());
        ctr = (ctr | CB_AUX_DISABLE) & !CB_AUX_INT;
        command(&mut kbc, CMD_WRITE_RAM, &[ctr], 0);

        // i8042_check_mux: a plain loopback returns the version byte
        // unchanged, so there is no active multiplexer.
        assert!(flush(&mut kbc).is_empty());
        for byte in [0xf0, 0x56, 0xa4] {
            assert_eq!(command(&mut kbc, CMD_WRITE_AUX_BUFFER, &[byte], 1), [byte]);
        }

        // i8042_enable_aux_port, i8042_enable_kbd_port.
        ctr = (ctr & !CB_AUX_DISABLE) | CB_AUX_INT;
        command(&mut kbc, CMD_WRITE_RAM, &[ctr], 0);
        ctr = (ctr & !CB_KBD_DISABLE) | CB_KBD_INT;
        command(&mut kbc, CMD_WRITE_RAM, &[ctr], 0);
        assert_eq!(kbc.command_byte(), ctr);

        // atkbd_probe: GETID, translated by the controller.
        assert_eq!(kbd_write(&mut kbc, KBD_IDENTIFY), [KBD_ACK, 0xab, 0x41]);
        // atkbd_deactivate, atkbd_reset_state, atkbd_activate.
        assert_eq!(kbd_write(&mut kbc, KBD_DEFAULT_DISABLE), [KBD_ACK]);
        assert_eq!(kbd_write(&mut kbc, KBD_SET_LEDS), [KBD_ACK]);
        assert_eq!(kbd_write(&mut kbc, 0x00), [KBD_ACK]);
        assert_eq!(kbd_write(&mut kbc, KBD_TYPEMATIC), [KBD_ACK]);
        assert_eq!(kbd_write(&mut kbc, 0x00), [KBD_ACK]);
        assert_eq!(kbd_write(&mut kbc, KBD_ENABLE), [KBD_ACK]);

        // psmouse_probe: GETID to the AUX port fails at once, on IRQ 12,
        // with the timeout flag.
        command(&mut kbc, CMD_WRITE_AUX, &[0xf2], 0);
        assert!(kbc.take_irq12_rising_edge() && kbc.irq12_level());
        assert_eq!(
            kbc.read(COMMAND_OFFSET),
            STATUS_OBF | STATUS_AUXB | STATUS_TIMEOUT | STATUS_SYS | STATUS_INH
        );
        assert_eq!(kbc.read(DATA_OFFSET), KBD_NAK);
        assert!(!kbc.irq12_level());
        assert_eq!(kbc.read(COMMAND_OFFSET) & (STATUS_OBF | STATUS_TIMEOUT), 0);

        // A key: A pressed and released (set 2 0x1C, set 1 0x1E).
        assert!(kbc.keyboard_idle());
        kbc.push_scancodes(&[0x1c]);
        assert!(!kbc.keyboard_idle(), "a byte the guest has not read");
        assert_eq!(irq1_bytes(&mut kbc), [0x1e]);
        assert!(kbc.keyboard_idle());
        kbc.push_scancodes(&[SET2_BREAK, 0x1c]);
        assert_eq!(irq1_bytes(&mut kbc), [0x9e]);
        // LED updates as atkbd sends them.
        assert_eq!(kbd_write(&mut kbc, KBD_SET_LEDS), [KBD_ACK]);
        assert_eq!(kbd_write(&mut kbc, 0x04), [KBD_ACK]);
        assert_eq!(kbc.keyboard_leds(), 0x04);
    }

    #[test]
    fn reset_pulses() {
        for command in CMD_PULSE..=0xff {
            let mut kbc = I8042::new();
            let expected = if command & 1 == 0 {
                I8042Effect::Reset
            } else {
                I8042Effect::None
            };
            assert_eq!(kbc.write(COMMAND_OFFSET, command), expected, "{command:#x}");
        }
        // Linux's BOOT_KBD reboot: kb_wait, then 0xFE.
        let mut kbc = I8042::new();
        wait_write(&mut kbc);
        assert_eq!(kbc.write(COMMAND_OFFSET, 0xfe), I8042Effect::Reset);
        // The reset line through the output port.
        let mut kbc = I8042::new();
        assert_eq!(
            kbc.write(COMMAND_OFFSET, CMD_WRITE_OUTPUT_PORT),
            I8042Effect::None
        );
        assert_eq!(kbc.write(DATA_OFFSET, 0xcf), I8042Effect::None);
        assert_eq!(
            kbc.write(COMMAND_OFFSET, CMD_WRITE_OUTPUT_PORT),
            I8042Effect::None
        );
        assert_eq!(kbc.write(DATA_OFFSET, 0xce), I8042Effect::Reset);
        // Without the command the byte goes to the keyboard.
        let mut kbc = I8042::new();
        assert_eq!(kbc.write(DATA_OFFSET, 0xce), I8042Effect::None);
        assert_eq!(irq1_bytes(&mut kbc), [KBD_NAK]);
    }

    #[test]
    fn a20_through_the_output_port() {
        let mut kbc = I8042::new();
        assert_eq!(command(&mut kbc, CMD_READ_OUTPUT_PORT, &[], 1), [0xcf]);
        command(&mut kbc, CMD_WRITE_OUTPUT_PORT, &[0xcd], 0);
        assert!(!kbc.a20_enabled());
        assert_eq!(command(&mut kbc, CMD_READ_OUTPUT_PORT, &[], 1), [0xcd]);
        command(&mut kbc, CMD_WRITE_OUTPUT_PORT, &[0xdf], 0);
        assert!(kbc.a20_enabled());
        command(&mut kbc, CMD_A20_OFF, &[], 0);
        assert!(!kbc.a20_enabled());
        command(&mut kbc, CMD_A20_ON, &[], 0);
        assert!(kbc.a20_enabled());
        // The buffer-full bits show the output buffer at the time of the
        // command; the answer waits behind the byte there.
        kbc.push_scancodes(&[0x1c]);
        kbc.write(COMMAND_OFFSET, CMD_READ_OUTPUT_PORT);
        assert_eq!(kbc.read(DATA_OFFSET), 0x1e);
        assert_eq!(kbc.read(DATA_OFFSET), 0xdf | OUT_KBD_OBF);
    }

    #[test]
    fn translation_of_pushed_scancodes() {
        let mut kbc = I8042::new();
        let keys = |kbc: &mut I8042, codes: &[u8]| {
            kbc.push_scancodes(codes);
            irq1_bytes(kbc)
        };
        assert_eq!(keys(&mut kbc, &[0x76]), [0x01], "Esc");
        assert_eq!(keys(&mut kbc, &[0x5a]), [0x1c], "Enter");
        assert_eq!(keys(&mut kbc, &[0x29]), [0x39], "Space");
        assert_eq!(keys(&mut kbc, &[0x0d]), [0x0f], "Tab");
        assert_eq!(keys(&mut kbc, &[0x83]), [0x41], "F7");
        assert_eq!(keys(&mut kbc, &[SET2_BREAK, 0x83]), [0xc1], "F7 up");
        assert_eq!(keys(&mut kbc, &[0xe0, 0x75]), [0xe0, 0x48], "Up");
        assert_eq!(
            keys(&mut kbc, &[0xe0, SET2_BREAK, 0x75]),
            [0xe0, 0xc8],
            "Up up"
        );
        // Pause.
        assert_eq!(
            keys(&mut kbc, &[0xe1, 0x14, 0x77, 0xe1, 0xf0, 0x14, 0xf0, 0x77]),
            [0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5]
        );
        // Translation off: set 2 as pushed.
        command(&mut kbc, CMD_WRITE_RAM, &[0x25], 0);
        assert_eq!(
            keys(&mut kbc, &[0xe0, SET2_BREAK, 0x75]),
            [0xe0, 0xf0, 0x75]
        );
        assert_eq!(kbd_write(&mut kbc, KBD_IDENTIFY), [KBD_ACK, 0xab, 0x83]);
        // Keyboard in set 1: it converts the codes itself.
        assert_eq!(kbd_write(&mut kbc, KBD_SCANCODE_SET), [KBD_ACK]);
        assert_eq!(kbd_write(&mut kbc, 1), [KBD_ACK]);
        assert_eq!(keys(&mut kbc, &[0xe0, SET2_BREAK, 0x75]), [0xe0, 0xc8]);
        // The table keeps the upper half but for F7 and Alt+SysRq.
        for byte in 0x80..=0xff {
            let expected = match byte {
                0x83 => 0x41,
                0x84 => 0x54,
                _ => byte,
            };
            assert_eq!(translate(byte), expected);
        }
        assert_eq!(translate(0x00), 0xff);
    }

    #[test]
    fn scancode_set_get_and_set() {
        let mut kbc = I8042::new();
        // Translated, set 2 reads 0x41 (1: 0x43, 3: 0x3F), as QEMU.
        for (set, translated) in [(2, 0x41), (1, 0x43), (3, 0x3f)] {
            if set != 2 {
                assert_eq!(kbd_write(&mut kbc, KBD_SCANCODE_SET), [KBD_ACK]);
                assert_eq!(kbd_write(&mut kbc, set), [KBD_ACK]);
            }
            assert_eq!(kbd_write(&mut kbc, KBD_SCANCODE_SET), [KBD_ACK]);
            assert_eq!(kbd_write(&mut kbc, 0), [KBD_ACK, translated]);
        }
        command(&mut kbc, CMD_WRITE_RAM, &[0x25], 0);
        assert_eq!(kbd_write(&mut kbc, KBD_SCANCODE_SET), [KBD_ACK]);
        assert_eq!(kbd_write(&mut kbc, 0), [KBD_ACK, 3]);
        // Out of range: resend.
        assert_eq!(kbd_write(&mut kbc, KBD_SCANCODE_SET), [KBD_ACK]);
        assert_eq!(kbd_write(&mut kbc, 4), [KBD_NAK]);
        // Reset: set 2, ACK and BAT.
        assert_eq!(kbd_write(&mut kbc, KBD_RESET), [KBD_ACK, KBD_BAT_OK]);
        assert_eq!(kbd_write(&mut kbc, KBD_SCANCODE_SET), [KBD_ACK]);
        assert_eq!(kbd_write(&mut kbc, 0), [KBD_ACK, 2]);
    }

    #[test]
    fn keyboard_commands() {
        let mut kbc = I8042::new();
        assert_eq!(kbd_write(&mut kbc, KBD_ECHO), [KBD_ECHO]);
        // Resend repeats the last byte sent (0x83, translated again).
        assert_eq!(kbd_write(&mut kbc, KBD_IDENTIFY), [KBD_ACK, 0xab, 0x41]);
        assert_eq!(kbd_write(&mut kbc, KBD_RESEND), [0x41]);
        // Unknown commands.
        for byte in [0x00, 0x05, 0xef, 0xf1] {
            assert_eq!(kbd_write(&mut kbc, byte), [KBD_NAK], "{byte:#x}");
        }
        // Set 3 key types: acknowledged, lists too.
        assert_eq!(kbd_write(&mut kbc, 0xfa), [KBD_ACK]);
        assert_eq!(kbd_write(&mut kbc, 0xfb), [KBD_ACK]);
        assert_eq!(kbd_write(&mut kbc, 0x1c), [KBD_ACK]);
        assert_eq!(kbd_write(&mut kbc, 0x1b), [KBD_ACK]);
        assert_eq!(kbd_write(&mut kbc, KBD_ECHO), [KBD_ECHO]);
        // A command where the LED byte was expected starts that command.
        assert_eq!(kbd_write(&mut kbc, KBD_SET_LEDS), [KBD_ACK]);
        assert_eq!(kbd_write(&mut kbc, KBD_ENABLE), [KBD_ACK]);
        assert_eq!(kbd_write(&mut kbc, 0x07), [KBD_NAK]);
        assert_eq!(kbc.keyboard_leds(), 0);
        // Typematic and LEDs.
        assert_eq!(kbd_write(&mut kbc, KBD_TYPEMATIC), [KBD_ACK]);
        assert_eq!(kbd_write(&mut kbc, 0x20), [KBD_ACK]);
        assert_eq!(kbd_write(&mut kbc, KBD_SET_LEDS), [KBD_ACK]);
        assert_eq!(kbd_write(&mut kbc, 0x07), [KBD_ACK]);
        assert_eq!(kbc.keyboard_leds(), 0x07);
        // Reset turns them off.
        assert_eq!(kbd_write(&mut kbc, KBD_RESET), [KBD_ACK, KBD_BAT_OK]);
        assert_eq!(kbc.keyboard_leds(), 0);
        // Each byte of a reply raises its own edge.
        kbc.write(DATA_OFFSET, KBD_IDENTIFY);
        for expected in [KBD_ACK, 0xab, 0x41] {
            assert!(kbc.take_irq1_rising_edge());
            assert!(kbc.irq1_level());
            assert_eq!(kbc.read(DATA_OFFSET), expected);
        }
        assert!(!kbc.take_irq1_rising_edge() && !kbc.irq1_level());
        // Reading an empty buffer gives its last byte again.
        assert_eq!(kbc.read(DATA_OFFSET), 0x41);
    }

    #[test]
    fn scanning_and_interface_disable() {
        let mut kbc = I8042::new();
        // Default-disable: keys are dropped until enable.
        assert_eq!(kbd_write(&mut kbc, KBD_DEFAULT_DISABLE), [KBD_ACK]);
        kbc.push_scancodes(&[0x1c]);
        assert!(irq1_bytes(&mut kbc).is_empty());
        assert_eq!(kbd_write(&mut kbc, KBD_ENABLE), [KBD_ACK]);
        kbc.push_scancodes(&[0x1c]);
        assert_eq!(irq1_bytes(&mut kbc), [0x1e]);
        // The interface disabled: keys wait in the keyboard.
        command(&mut kbc, CMD_KBD_DISABLE, &[], 0);
        assert_ne!(kbc.command_byte() & CB_KBD_DISABLE, 0);
        kbc.push_scancodes(&[0x1c]);
        kbc.push_scancodes(&[0x32]);
        assert!(irq1_bytes(&mut kbc).is_empty());
        // The controller's own bytes still come.
        assert_eq!(command(&mut kbc, CMD_KBD_TEST, &[], 1), [INTERFACE_TEST_OK]);
        assert_eq!(command(&mut kbc, CMD_AUX_TEST, &[], 1), [INTERFACE_TEST_OK]);
        assert_eq!(command(&mut kbc, CMD_READ_INPUT_PORT, &[], 1), [INPUT_PORT]);
        // Test inputs: keyboard clock held low, AUX clock too (disabled).
        assert_eq!(command(&mut kbc, CMD_READ_TEST_INPUTS, &[], 1), [0x00]);
        command(&mut kbc, CMD_KBD_ENABLE, &[], 0);
        assert_eq!(irq1_bytes(&mut kbc), [0x1e, 0x30]);
        assert_eq!(command(&mut kbc, CMD_READ_TEST_INPUTS, &[], 1), [0x01]);
        // Writing to the keyboard enables its interface again, and its
        // reply comes before the keys it held.
        command(&mut kbc, CMD_KBD_DISABLE, &[], 0);
        kbc.push_scancodes(&[0x1c]);
        assert_eq!(kbd_write(&mut kbc, KBD_ECHO), [KBD_ECHO, 0x1e]);
        assert_eq!(kbc.command_byte() & CB_KBD_DISABLE, 0);
        // Without the keyboard interrupt the byte is there but IRQ 1 stays
        // low.
        command(&mut kbc, CMD_WRITE_RAM, &[0x64], 0);
        kbc.push_scancodes(&[0x1c]);
        assert!(!kbc.irq1_level() && !kbc.take_irq1_rising_edge());
        assert_eq!(flush(&mut kbc), [0x1e]);
    }

    #[test]
    fn keyboard_buffer_overrun() {
        let mut kbc = I8042::new();
        command(&mut kbc, CMD_KBD_DISABLE, &[], 0);
        for _ in 0..15 {
            kbc.push_scancodes(&[0x1c]);
        }
        // No room for a whole key: the overrun code, once; then nothing.
        kbc.push_scancodes(&[0xe0, 0x75]);
        kbc.push_scancodes(&[0x1c]);
        command(&mut kbc, CMD_KBD_ENABLE, &[], 0);
        let mut expected = vec![0x1e; 15];
        expected.push(0xff);
        assert_eq!(irq1_bytes(&mut kbc), expected);
        kbc.push_scancodes(&[0x1c]);
        assert_eq!(irq1_bytes(&mut kbc), [0x1e]);
        // Keys pushed long before the driver looks, the output buffer full:
        // 16 bytes in all, so Linux's flush empties the controller.
        let mut kbc = I8042::new();
        for _ in 0..40 {
            kbc.push_scancodes(&[0x1c]);
        }
        let flushed = flush(&mut kbc);
        assert_eq!(flushed.len(), 16);
        assert_eq!(flushed.last(), Some(&0xff));
    }

    #[test]
    fn controller_bytes_wait_for_the_buffer_and_go_first() {
        let mut kbc = I8042::new();
        command(&mut kbc, CMD_KBD_DISABLE, &[], 0);
        kbc.push_scancodes(&[0x1c]);
        command(&mut kbc, CMD_KBD_ENABLE, &[], 0);
        // A key fills the buffer; the command's answer waits behind it,
        // and goes ahead of the next key.
        kbc.push_scancodes(&[0x32]);
        kbc.write(COMMAND_OFFSET, CMD_READ_RAM);
        assert_eq!(kbc.read(DATA_OFFSET), 0x1e);
        assert_eq!(kbc.read(COMMAND_OFFSET) & STATUS_OBF, STATUS_OBF);
        assert_eq!(kbc.read(DATA_OFFSET), 0x65);
        assert_eq!(kbc.read(DATA_OFFSET), 0x30);
        // 0xD2: keyboard data, not translated, on IRQ 1.
        assert!(kbc.take_irq1_rising_edge());
        command(&mut kbc, CMD_WRITE_KBD_BUFFER, &[0x1c], 0);
        assert!(kbc.take_irq1_rising_edge() && kbc.irq1_level());
        assert_eq!(kbc.read(COMMAND_OFFSET) & STATUS_AUXB, 0);
        assert_eq!(kbc.read(DATA_OFFSET), 0x1c);
        // Internal RAM.
        command(&mut kbc, 0x7f, &[0x5a], 0);
        assert_eq!(command(&mut kbc, 0x3f, &[], 1), [0x5a]);
        // The command byte's system flag is the status bit; self-test sets
        // it.
        command(&mut kbc, CMD_WRITE_RAM, &[0x61], 0);
        assert_eq!(kbc.read(COMMAND_OFFSET) & STATUS_SYS, 0);
        assert_eq!(command(&mut kbc, CMD_SELF_TEST, &[], 1), [SELF_TEST_OK]);
        assert_ne!(kbc.read(COMMAND_OFFSET) & STATUS_SYS, 0);
        assert_eq!(kbc.command_byte(), 0x65);
        // A2 follows the last write.
        assert_ne!(kbc.read(COMMAND_OFFSET) & STATUS_A2, 0);
        kbc.write(DATA_OFFSET, KBD_ECHO);
        assert_eq!(kbc.read(COMMAND_OFFSET) & STATUS_A2, 0);
        // A command cancels one still waiting for its data byte.
        kbc.write(COMMAND_OFFSET, CMD_WRITE_OUTPUT_PORT);
        kbc.write(COMMAND_OFFSET, 0xff);
        assert_eq!(kbc.write(DATA_OFFSET, 0x00), I8042Effect::None);
        // Unknown commands are ignored.
        kbc.write(COMMAND_OFFSET, 0xa1);
        kbc.write(COMMAND_OFFSET, 0xc8);
        assert_eq!(flush(&mut kbc), [KBD_ECHO, KBD_NAK]);
    }

    #[test]
    fn aux_device_absent() {
        let mut kbc = I8042::new();
        // AUX interrupt off: the answer is there, IRQ 12 stays low; the
        // write enabled the AUX interface.
        assert_ne!(kbc.command_byte() & CB_AUX_DISABLE, 0);
        command(&mut kbc, CMD_WRITE_AUX, &[0xff], 0);
        assert_eq!(kbc.command_byte() & CB_AUX_DISABLE, 0);
        assert!(!kbc.irq12_level() && !kbc.irq1_level());
        let status = kbc.read(COMMAND_OFFSET);
        assert_eq!(
            status & (STATUS_OBF | STATUS_AUXB | STATUS_TIMEOUT),
            STATUS_OBF | STATUS_AUXB | STATUS_TIMEOUT
        );
        assert_eq!(kbc.read(DATA_OFFSET), KBD_NAK);
        // The loopback is no device: no timeout flag.
        command(&mut kbc, CMD_WRITE_RAM, &[0x47], 0);
        command(&mut kbc, CMD_WRITE_AUX_BUFFER, &[0x12], 0);
        assert!(kbc.take_irq12_rising_edge() && kbc.irq12_level());
        assert_eq!(
            kbc.read(COMMAND_OFFSET) & (STATUS_AUXB | STATUS_TIMEOUT),
            STATUS_AUXB
        );
        assert_eq!(kbc.read(DATA_OFFSET), 0x12);
        assert!(!kbc.irq12_level());
    }
}
