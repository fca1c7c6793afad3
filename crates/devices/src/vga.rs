//! The VGA's registers in text mode, for Linux's vgacon and a display that
//! shows the text buffer.
//!
//! The text buffer itself is guest RAM (0xB8000-0xBFFFF in colour modes):
//! the guest writes characters and attributes there with ordinary stores,
//! which run natively, and a display reads them. What this device holds is
//! the rest of what decides how that memory looks on a screen, as the IBM
//! VGA Technical Reference describes the registers:
//!
//! - the miscellaneous output register (0x3C2 write, 0x3CC read), whose bit
//!   0 puts the CRT controller and input status 1 at 0x3D4/0x3D5/0x3DA
//!   (colour) or 0x3B4/0x3B5/0x3BA (mono); the other pair floats;
//! - the CRT controller's 25 registers behind its index: geometry (display
//!   end, maximum scan line, offset), start address (Linux scrolls the
//!   console by moving it), cursor location and shape, with the protect bit
//!   of register 0x11 guarding registers 0-7 (except the line compare bit of
//!   7) as on the chip;
//! - the sequencer (5 registers: screen off is bit 5 of clocking mode), the
//!   graphics controller (9: the memory map select of miscellaneous decides
//!   where the text window is, and its bit 0 graphics mode), the attribute
//!   controller (21, one port for index and data behind the flip-flop that
//!   a read of input status 1 resets; PAS off blanks the screen), and the
//!   DAC's 256 colours (6 bits a component) with its read and write indexes;
//! - input status 1, whose display-enable and vertical-retrace bits toggle
//!   on each read, so code that waits for a retrace finds one at once.
//!
//! Every register reads back what was written (index registers too), the
//! way vgacon's cursor-size code reads CRTC registers before it writes
//! them. The power-on state is mode 3 (80x25 colour text, 16-line font) as
//! a VGA BIOS leaves it, which is what the Linux boot parameters say the
//! screen is. Not modelled: the planar memory behind 0xA0000 (fonts a guest
//! loads with `setfont` go to RAM and are not shown: the display draws the
//! host's font), graphics modes (the display says so when the guest
//! switches to one), the light pen and the feature connector.

/// First port the VGA decodes (the mono CRTC's range starts here).
pub const FIRST_PORT: u16 = 0x3b0;
/// Last port it decodes.
pub const LAST_PORT: u16 = 0x3df;

/// Attribute controller index/data (write), index (read).
pub const ATTRIBUTE: u16 = 0x3c0;
/// Attribute controller data (read).
pub const ATTRIBUTE_READ: u16 = 0x3c1;
/// Miscellaneous output (write), input status 0 (read).
pub const MISC_WRITE: u16 = 0x3c2;
/// Video subsystem enable.
pub const SUBSYSTEM_ENABLE: u16 = 0x3c3;
/// Sequencer index.
pub const SEQUENCER_INDEX: u16 = 0x3c4;
/// Sequencer data.
pub const SEQUENCER_DATA: u16 = 0x3c5;
/// DAC pixel mask.
pub const DAC_MASK: u16 = 0x3c6;
/// DAC read index (write), DAC state (read).
pub const DAC_READ_INDEX: u16 = 0x3c7;
/// DAC write index.
pub const DAC_WRITE_INDEX: u16 = 0x3c8;
/// DAC data.
pub const DAC_DATA: u16 = 0x3c9;
/// Feature control (read; written at input status 1's port).
pub const FEATURE_READ: u16 = 0x3ca;
/// Miscellaneous output (read).
pub const MISC_READ: u16 = 0x3cc;
/// Graphics controller index.
pub const GRAPHICS_INDEX: u16 = 0x3ce;
/// Graphics controller data.
pub const GRAPHICS_DATA: u16 = 0x3cf;
/// CRT controller index, colour (the mono one is 0x20 lower).
pub const CRTC_INDEX_COLOR: u16 = 0x3d4;
/// Input status 1 (read), feature control (write), colour.
pub const INPUT_STATUS_1_COLOR: u16 = 0x3da;
/// The distance from a colour port to its mono twin.
const MONO_DISTANCE: u16 = 0x20;

/// Miscellaneous output: I/O address select (1: colour ports).
const MISC_COLOR_PORTS: u8 = 0x01;

/// CRTC registers.
mod crtc {
    pub const HORIZONTAL_DISPLAY_END: usize = 0x01;
    pub const OVERFLOW: usize = 0x07;
    pub const MAXIMUM_SCAN_LINE: usize = 0x09;
    pub const CURSOR_START: usize = 0x0a;
    pub const CURSOR_END: usize = 0x0b;
    pub const START_HIGH: usize = 0x0c;
    pub const START_LOW: usize = 0x0d;
    pub const CURSOR_HIGH: usize = 0x0e;
    pub const CURSOR_LOW: usize = 0x0f;
    pub const VERTICAL_RETRACE_END: usize = 0x11;
    pub const VERTICAL_DISPLAY_END: usize = 0x12;
    pub const OFFSET: usize = 0x13;
    /// Cursor start: cursor off.
    pub const CURSOR_DISABLE: u8 = 0x20;
    /// Vertical retrace end: registers 0-7 write-protected.
    pub const PROTECT: u8 = 0x80;
    /// Overflow: line compare bit 8, writable under the protect bit.
    pub const OVERFLOW_LINE_COMPARE: u8 = 0x10;
    pub const COUNT: usize = 25;
}

/// Sequencer clocking mode: screen off.
const SEQ_SCREEN_OFF: u8 = 0x20;
/// Graphics controller miscellaneous register.
const GC_MISC: usize = 6;
/// Attribute mode control register.
const ATTR_MODE: usize = 0x10;
/// Attribute controller color select register.
const ATTR_COLOR_SELECT: usize = 0x14;
/// Attribute index: palette address source (0: the screen is blanked while
/// the CPU addresses the palette).
const ATTR_PAS: u8 = 0x20;
/// Attribute registers.
const ATTR_COUNT: usize = 21;

/// Mode 3 as a VGA BIOS sets it (IBM VGA Technical Reference, BIOS mode
/// tables).
const MODE3_MISC: u8 = 0x67;
const MODE3_SEQUENCER: [u8; 5] = [0x03, 0x00, 0x03, 0x00, 0x02];
const MODE3_CRTC: [u8; crtc::COUNT] = [
    0x5f, 0x4f, 0x50, 0x82, 0x55, 0x81, 0xbf, 0x1f, 0x00, 0x4f, 0x0d, 0x0e, 0x00, 0x00, 0x00, 0x00,
    0x9c, 0x8e, 0x8f, 0x28, 0x1f, 0x96, 0xb9, 0xa3, 0xff,
];
const MODE3_GRAPHICS: [u8; 9] = [0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0e, 0x00, 0xff];
const MODE3_ATTRIBUTE: [u8; ATTR_COUNT] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e, 0x3f,
    0x0c, 0x00, 0x0f, 0x08, 0x00,
];

/// The 16 CGA colours in 6-bit DAC components, in the order of a text
/// attribute's colour nibble: black, blue, green, cyan, red, magenta,
/// brown, light grey, then their bright forms.
pub const CGA_COLORS: [[u8; 3]; 16] = [
    [0x00, 0x00, 0x00],
    [0x00, 0x00, 0x2a],
    [0x00, 0x2a, 0x00],
    [0x00, 0x2a, 0x2a],
    [0x2a, 0x00, 0x00],
    [0x2a, 0x00, 0x2a],
    [0x2a, 0x15, 0x00],
    [0x2a, 0x2a, 0x2a],
    [0x15, 0x15, 0x15],
    [0x15, 0x15, 0x3f],
    [0x15, 0x3f, 0x15],
    [0x15, 0x3f, 0x3f],
    [0x3f, 0x15, 0x15],
    [0x3f, 0x15, 0x3f],
    [0x3f, 0x3f, 0x15],
    [0x3f, 0x3f, 0x3f],
];

/// What the text screen is, from the registers: where its characters are
/// in guest memory and how they are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextLayout {
    /// Guest-physical address of the memory window (0xB8000 in colour
    /// text modes).
    pub window_guest_phys: u32,
    /// Bytes in the window; character addresses wrap within it.
    pub window_bytes: u32,
    /// Character cell of the top-left corner, from the window's start (the
    /// CRTC start address).
    pub start: u32,
    /// Characters on a row.
    pub columns: u16,
    /// Rows on the screen.
    pub rows: u16,
    /// Character cells from one row to the next.
    pub stride: u32,
    /// Scan lines of a character cell.
    pub char_height: u8,
    /// The cursor, when it is on and on the screen.
    pub cursor: Option<Cursor>,
    /// Attribute bit 7 blinks (else it selects a bright background).
    pub blink: bool,
    /// What the screen shows.
    pub content: Content,
}

/// What the screen shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    /// Text.
    Text,
    /// Nothing: the sequencer turned the screen off, or the attribute
    /// controller's palette is being addressed.
    Blank,
    /// A graphics mode (not shown by a text display).
    Graphics,
}

/// The hardware text cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// Row on the screen.
    pub row: u16,
    /// Column.
    pub column: u16,
    /// First scan line of the cell it covers.
    pub first_line: u8,
    /// Last scan line.
    pub last_line: u8,
}

impl TextLayout {
    /// Byte offset in the window of the cell at `row`, `column` (two bytes
    /// a cell: character, attribute), wrapped to the window.
    #[must_use]
    pub fn cell_offset(&self, row: u16, column: u16) -> u32 {
        let cell = self
            .start
            .wrapping_add(u32::from(row).wrapping_mul(self.stride))
            .wrapping_add(u32::from(column));
        cell.wrapping_mul(2) % self.window_bytes.max(2)
    }
}

/// Which port of an index/data pair the flip-flop expects next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AttributeNext {
    Index,
    Data,
}

/// The VGA's registers.
#[derive(Clone, Debug)]
pub struct Vga {
    misc: u8,
    feature: u8,
    subsystem_enable: u8,
    sequencer_index: u8,
    sequencer: [u8; 5],
    graphics_index: u8,
    graphics: [u8; 9],
    crtc_index: u8,
    crtc: [u8; crtc::COUNT],
    attribute_index: u8,
    attribute_next: AttributeNext,
    attribute: [u8; ATTR_COUNT],
    dac_mask: u8,
    /// Colours, 6 bits a component.
    dac: [[u8; 3]; 256],
    dac_write_index: u8,
    dac_read_index: u8,
    /// Component (0-2) the next DAC data access moves.
    dac_component: u8,
    /// Whether the last index written was the read index (DAC state).
    dac_reading: bool,
    /// Input status 1's toggling retrace bits.
    retrace: bool,
}

impl Default for Vga {
    fn default() -> Self {
        Self::new()
    }
}

impl Vga {
    /// The VGA as the BIOS leaves it in mode 3.
    #[must_use]
    pub fn new() -> Self {
        Self {
            misc: MODE3_MISC,
            feature: 0,
            subsystem_enable: 1,
            sequencer_index: 0,
            sequencer: MODE3_SEQUENCER,
            graphics_index: 0,
            graphics: MODE3_GRAPHICS,
            crtc_index: 0,
            crtc: MODE3_CRTC,
            attribute_index: ATTR_PAS,
            attribute_next: AttributeNext::Index,
            attribute: MODE3_ATTRIBUTE,
            dac_mask: 0xff,
            dac: default_dac(),
            dac_write_index: 0,
            dac_read_index: 0,
            dac_component: 0,
            dac_reading: false,
            retrace: false,
        }
    }

    /// Whether `port` is one of the VGA's.
    #[must_use]
    pub fn claims(port: u16) -> bool {
        (FIRST_PORT..=LAST_PORT).contains(&port)
    }

    /// IN of `size` bytes: wide accesses read consecutive ports, as the
    /// VGA's 8-bit registers on the ISA bus answer them.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        (0..u16::from(size.clamp(1, 4))).fold(0, |value, byte| {
            value | (u32::from(self.read_byte(port.wrapping_add(byte))) << (8 * byte))
        })
    }

    /// OUT of `size` bytes (a word to an index port writes the index and
    /// its data register, as `outw` to 0x3D4 does).
    pub fn write(&mut self, port: u16, size: u8, value: u32) {
        for byte in 0..u16::from(size.clamp(1, 4)) {
            #[allow(clippy::cast_possible_truncation)] // one byte of the value
            self.write_byte(port.wrapping_add(byte), (value >> (8 * byte)) as u8);
        }
    }

    /// The CRTC's and input status 1's ports in the current addressing
    /// (colour or mono): `port` as its colour twin, or None when it is the
    /// twin that floats now.
    fn crtc_port(&self, port: u16) -> Option<u16> {
        let color = self.misc & MISC_COLOR_PORTS != 0;
        match port {
            0x3d0..=0x3df if color => Some(port),
            0x3b0..=0x3bf if !color => Some(port + MONO_DISTANCE),
            0x3d0..=0x3df | 0x3b0..=0x3bf => None,
            _ => Some(port),
        }
    }

    fn read_byte(&mut self, port: u16) -> u8 {
        let Some(port) = self.crtc_port(port) else {
            return 0xff;
        };
        match port {
            ATTRIBUTE => self.attribute_index,
            ATTRIBUTE_READ => self
                .attribute
                .get(usize::from(self.attribute_index & 0x1f))
                .copied()
                .unwrap_or(0),
            // Input status 0: no interrupt pending, switch sense 0.
            MISC_WRITE => 0,
            SUBSYSTEM_ENABLE => self.subsystem_enable,
            SEQUENCER_INDEX => self.sequencer_index,
            SEQUENCER_DATA => self
                .sequencer
                .get(usize::from(self.sequencer_index))
                .copied()
                .unwrap_or(0xff),
            DAC_MASK => self.dac_mask,
            DAC_READ_INDEX => {
                if self.dac_reading {
                    0x03
                } else {
                    0x00
                }
            }
            DAC_WRITE_INDEX => self.dac_write_index,
            DAC_DATA => {
                let value =
                    self.dac[usize::from(self.dac_read_index)][usize::from(self.dac_component)];
                self.advance_dac(true);
                value
            }
            FEATURE_READ => self.feature,
            MISC_READ => self.misc,
            GRAPHICS_INDEX => self.graphics_index,
            GRAPHICS_DATA => self
                .graphics
                .get(usize::from(self.graphics_index))
                .copied()
                .unwrap_or(0xff),
            CRTC_INDEX_COLOR => self.crtc_index,
            0x3d5 => self
                .crtc
                .get(usize::from(self.crtc_index))
                .copied()
                .unwrap_or(0xff),
            INPUT_STATUS_1_COLOR => {
                self.attribute_next = AttributeNext::Index;
                self.retrace = !self.retrace;
                // Vertical retrace (bit 3) and display disabled (bit 0).
                if self.retrace { 0x09 } else { 0x00 }
            }
            _ => 0xff,
        }
    }

    fn write_byte(&mut self, port: u16, value: u8) {
        let Some(port) = self.crtc_port(port) else {
            return;
        };
        match port {
            ATTRIBUTE => match self.attribute_next {
                AttributeNext::Index => {
                    self.attribute_index = value & 0x3f;
                    self.attribute_next = AttributeNext::Data;
                }
                AttributeNext::Data => {
                    if let Some(register) = self
                        .attribute
                        .get_mut(usize::from(self.attribute_index & 0x1f))
                    {
                        *register = value;
                    }
                    self.attribute_next = AttributeNext::Index;
                }
            },
            MISC_WRITE => self.misc = value,
            SUBSYSTEM_ENABLE => self.subsystem_enable = value,
            SEQUENCER_INDEX => self.sequencer_index = value,
            SEQUENCER_DATA => {
                if let Some(register) = self.sequencer.get_mut(usize::from(self.sequencer_index)) {
                    *register = value;
                }
            }
            DAC_MASK => self.dac_mask = value,
            DAC_READ_INDEX => {
                self.dac_read_index = value;
                self.dac_component = 0;
                self.dac_reading = true;
            }
            DAC_WRITE_INDEX => {
                self.dac_write_index = value;
                self.dac_component = 0;
                self.dac_reading = false;
            }
            DAC_DATA => {
                self.dac[usize::from(self.dac_write_index)][usize::from(self.dac_component)] =
                    value & 0x3f;
                self.advance_dac(false);
            }
            GRAPHICS_INDEX => self.graphics_index = value,
            GRAPHICS_DATA => {
                if let Some(register) = self.graphics.get_mut(usize::from(self.graphics_index)) {
                    *register = value;
                }
            }
            CRTC_INDEX_COLOR => self.crtc_index = value,
            0x3d5 => self.write_crtc(value),
            INPUT_STATUS_1_COLOR => self.feature = value,
            _ => {}
        }
    }

    fn write_crtc(&mut self, value: u8) {
        let index = usize::from(self.crtc_index);
        let protected = self.crtc[crtc::VERTICAL_RETRACE_END] & crtc::PROTECT != 0;
        let Some(register) = self.crtc.get_mut(index) else {
            return;
        };
        if protected && index <= crtc::OVERFLOW {
            if index == crtc::OVERFLOW {
                *register = (*register & !crtc::OVERFLOW_LINE_COMPARE)
                    | (value & crtc::OVERFLOW_LINE_COMPARE);
            }
            return;
        }
        *register = value;
    }

    /// Moves the DAC's component, and its index after the third.
    fn advance_dac(&mut self, reading: bool) {
        self.dac_component += 1;
        if self.dac_component == 3 {
            self.dac_component = 0;
            if reading {
                self.dac_read_index = self.dac_read_index.wrapping_add(1);
            } else {
                self.dac_write_index = self.dac_write_index.wrapping_add(1);
            }
        }
    }

    /// The text screen the registers describe now.
    #[must_use]
    pub fn text_layout(&self) -> TextLayout {
        let (window_guest_phys, window_bytes) = match (self.graphics[GC_MISC] >> 2) & 3 {
            0 => (0xa_0000, 0x2_0000),
            1 => (0xa_0000, 0x1_0000),
            2 => (0xb_0000, 0x8000),
            _ => (0xb_8000, 0x8000),
        };
        let overflow = self.crtc[crtc::OVERFLOW];
        let scan_lines = (u32::from(self.crtc[crtc::VERTICAL_DISPLAY_END])
            | (u32::from(overflow & 0x02) << 7)
            | (u32::from(overflow & 0x40) << 3))
            + 1;
        let char_height = (self.crtc[crtc::MAXIMUM_SCAN_LINE] & 0x1f) + 1;
        let rows = (scan_lines / u32::from(char_height)).clamp(1, 100);
        let columns = u16::from(self.crtc[crtc::HORIZONTAL_DISPLAY_END]) + 1;
        let stride = u32::from(self.crtc[crtc::OFFSET]) * 2;
        let start =
            (u32::from(self.crtc[crtc::START_HIGH]) << 8) | u32::from(self.crtc[crtc::START_LOW]);
        #[allow(clippy::cast_possible_truncation)] // clamped to 100
        let rows = rows as u16;
        let location =
            (u32::from(self.crtc[crtc::CURSOR_HIGH]) << 8) | u32::from(self.crtc[crtc::CURSOR_LOW]);
        let first_line = self.crtc[crtc::CURSOR_START] & 0x1f;
        let last_line = self.crtc[crtc::CURSOR_END] & 0x1f;
        let cursor_on = self.crtc[crtc::CURSOR_START] & crtc::CURSOR_DISABLE == 0
            && first_line <= last_line
            && first_line < char_height;
        let cursor = location
            .checked_sub(start)
            .filter(|_| cursor_on && stride != 0)
            .and_then(|cell| {
                let row = u16::try_from(cell / stride).ok()?;
                let column = u16::try_from(cell % stride).ok()?;
                (row < rows && column < columns).then_some(Cursor {
                    row,
                    column,
                    first_line,
                    last_line,
                })
            });
        let content = if self.graphics[GC_MISC] & 1 != 0 || self.attribute[ATTR_MODE] & 1 != 0 {
            Content::Graphics
        } else if self.sequencer[1] & SEQ_SCREEN_OFF != 0 || self.attribute_index & ATTR_PAS == 0 {
            Content::Blank
        } else {
            Content::Text
        };
        TextLayout {
            window_guest_phys,
            window_bytes,
            start,
            columns,
            rows,
            stride,
            char_height,
            cursor,
            blink: self.attribute[ATTR_MODE] & 0x08 != 0,
            content,
        }
    }

    /// The colour each of a text attribute's 16 colour values shows, as
    /// the nearest CGA colour (an index into [`CGA_COLORS`]): through the
    /// attribute controller's palette registers and colour select to a DAC
    /// entry, and the DAC's colour there.
    #[must_use]
    pub fn palette(&self) -> [u8; 16] {
        let mode = self.attribute[ATTR_MODE];
        let select = self.attribute[ATTR_COLOR_SELECT];
        std::array::from_fn(|color| {
            let entry = self.attribute[color] & 0x3f;
            // P5,P4 from colour select when the mode asks; P7,P6 always.
            let entry = if mode & 0x80 != 0 {
                (entry & 0x0f) | ((select & 0x03) << 4)
            } else {
                entry
            } | ((select & 0x0c) << 4);
            nearest_cga(self.dac[usize::from(entry & self.dac_mask)])
        })
    }

    /// Back to mode 3 (a reset of the PC).
    pub fn reset(&mut self) {
        *self = Self::new();
    }
}

/// The VGA BIOS's palette after a mode 3 set: the 64 EGA colours (bits 0-2
/// two thirds of blue, green, red, bits 3-5 one third) in the first 64
/// entries.
fn default_dac() -> [[u8; 3]; 256] {
    let mut dac = [[0u8; 3]; 256];
    for (index, entry) in dac.iter_mut().take(64).enumerate() {
        let component = |high: usize, low: usize| -> u8 {
            let high = if index & (1 << high) != 0 { 0x2a } else { 0 };
            let low = if index & (1 << low) != 0 { 0x15 } else { 0 };
            high + low
        };
        *entry = [component(2, 5), component(1, 4), component(0, 3)];
    }
    dac
}

/// The CGA colour nearest to a DAC colour.
fn nearest_cga(rgb: [u8; 3]) -> u8 {
    let distance = |cga: &[u8; 3]| -> u32 {
        cga.iter()
            .zip(rgb)
            .map(|(&a, b)| {
                let d = i32::from(a) - i32::from(b & 0x3f);
                d.unsigned_abs().pow(2)
            })
            .sum()
    };
    let mut best = 0;
    for (index, cga) in CGA_COLORS.iter().enumerate() {
        if distance(cga) < distance(&CGA_COLORS[best]) {
            best = index;
        }
    }
    #[allow(clippy::cast_possible_truncation)] // 16 colours
    {
        best as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What vgacon's write_vga does: index, then data, a byte each.
    fn write_crtc(vga: &mut Vga, index: u8, value: u8) {
        vga.write(0x3d4, 1, u32::from(index));
        vga.write(0x3d5, 1, u32::from(value));
    }

    #[test]
    fn mode_3_at_power_on() {
        let vga = Vga::new();
        let layout = vga.text_layout();
        assert_eq!(layout.window_guest_phys, 0xb8000);
        assert_eq!(layout.window_bytes, 0x8000);
        assert_eq!((layout.columns, layout.rows), (80, 25));
        assert_eq!(layout.stride, 80);
        assert_eq!(layout.char_height, 16);
        assert_eq!(layout.content, Content::Text);
        assert!(layout.blink);
        assert_eq!(
            layout.cursor,
            Some(Cursor {
                row: 0,
                column: 0,
                first_line: 13,
                last_line: 14
            })
        );
        // The attribute palette and the BIOS's DAC give the CGA colours.
        assert_eq!(
            vga.palette(),
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
        );
    }

    #[test]
    fn registers_read_back_what_was_written() {
        let mut vga = Vga::new();
        write_crtc(&mut vga, 0x0a, 0x2e);
        assert_eq!(vga.read(0x3d4, 1), 0x0a, "the index reads back");
        assert_eq!(vga.read(0x3d5, 1), 0x2e);
        vga.write(SEQUENCER_INDEX, 1, 1);
        vga.write(SEQUENCER_DATA, 1, 0x01);
        assert_eq!(vga.read(SEQUENCER_DATA, 1), 0x01);
        vga.write(GRAPHICS_INDEX, 1, 5);
        vga.write(GRAPHICS_DATA, 1, 0x10);
        assert_eq!(vga.read(GRAPHICS_DATA, 1), 0x10);
        vga.write(MISC_WRITE, 1, 0x63);
        assert_eq!(vga.read(MISC_READ, 1), 0x63);
        // A word OUT to the index port writes index and data (outw).
        vga.write(MISC_WRITE, 1, 0x67);
        vga.write(0x3d4, 2, 0x3f0e);
        assert_eq!(vga.read(0x3d5, 1), 0x3f);
        assert_eq!(vga.read(0x3d4, 2), 0x3f0e);
    }

    #[test]
    fn cursor_and_start_address_place_the_screen() {
        let mut vga = Vga::new();
        // vgacon: cursor at row 3, column 7; then the console scrolled by
        // 2 rows (start address 160).
        let [high, low] = (3u16 * 80 + 7).to_be_bytes();
        write_crtc(&mut vga, 0x0e, high);
        write_crtc(&mut vga, 0x0f, low);
        assert_eq!(
            vga.text_layout()
                .cursor
                .map(|cursor| (cursor.row, cursor.column)),
            Some((3, 7))
        );
        write_crtc(&mut vga, 0x0c, 0);
        write_crtc(&mut vga, 0x0d, 160);
        let layout = vga.text_layout();
        assert_eq!(layout.start, 160);
        assert_eq!(
            layout.cursor.map(|cursor| (cursor.row, cursor.column)),
            Some((1, 7))
        );
        assert_eq!(layout.cell_offset(0, 0), 320);
        assert_eq!(layout.cell_offset(1, 2), 320 + 160 + 4);
        // Cells wrap within the 32 KiB window.
        write_crtc(&mut vga, 0x0c, 0x3f);
        write_crtc(&mut vga, 0x0d, 0xff);
        assert_eq!(vga.text_layout().cell_offset(0, 1), 0);
        // Cursor off (bit 5), and a cursor above the screen is not shown.
        write_crtc(&mut vga, 0x0c, 0);
        write_crtc(&mut vga, 0x0d, 0);
        write_crtc(&mut vga, 0x0a, 0x20 | 0x0d);
        assert_eq!(vga.text_layout().cursor, None);
        write_crtc(&mut vga, 0x0a, 0x0d);
        write_crtc(&mut vga, 0x0d, 250);
        assert_eq!(vga.text_layout().cursor, None, "location before start");
    }

    #[test]
    fn geometry_follows_the_crtc() {
        let mut vga = Vga::new();
        // 8-line font over 400 lines: 50 rows (vgacon's 80x50).
        write_crtc(&mut vga, 0x09, 0x47);
        assert_eq!(vga.text_layout().rows, 50);
        // Registers 0-7 are protected: the horizontal display end stays,
        // and of the overflow only the line compare bit changes.
        write_crtc(&mut vga, 0x01, 0x27);
        write_crtc(&mut vga, 0x07, 0x00);
        assert_eq!(vga.text_layout().columns, 80);
        assert_eq!(vga.read(0x3d5, 1), 0x0f);
        // Unprotected, they change.
        write_crtc(&mut vga, 0x11, 0x0e);
        write_crtc(&mut vga, 0x01, 0x27);
        assert_eq!(vga.text_layout().columns, 40);
        write_crtc(&mut vga, 0x07, 0x00);
        assert_eq!(vga.text_layout().rows, (0x8f + 1) / 8);
    }

    #[test]
    fn mono_addressing_moves_the_crtc() {
        let mut vga = Vga::new();
        vga.write(MISC_WRITE, 1, 0x66);
        assert_eq!(vga.read(0x3d5, 1), 0xff, "the colour CRTC floats");
        vga.write(0x3b4, 1, 0x0f);
        vga.write(0x3b5, 1, 0x05);
        assert_eq!(vga.read(0x3b5, 1), 0x05);
        vga.write(MISC_WRITE, 1, 0x67);
        assert_eq!(vga.read(0x3d5, 1), 0x05, "one CRTC, two addresses");
        assert_eq!(vga.read(0x3ba, 1), 0xff);
    }

    #[test]
    fn attribute_flip_flop_and_blanking() {
        let mut vga = Vga::new();
        // vgacon_startup normalises the palette: read 0x3DA, then index
        // and data at 0x3C0, and finally PAS back on with 0x20.
        for color in 0..16u32 {
            vga.read(INPUT_STATUS_1_COLOR, 1);
            vga.write(ATTRIBUTE, 1, color);
            assert_eq!(vga.text_layout().content, Content::Blank, "PAS off");
            vga.write(ATTRIBUTE, 1, color);
        }
        vga.write(ATTRIBUTE, 1, 0x20);
        assert_eq!(vga.text_layout().content, Content::Text);
        vga.write(ATTRIBUTE, 1, 0x06);
        vga.read(INPUT_STATUS_1_COLOR, 1);
        vga.write(ATTRIBUTE, 1, 0x26);
        assert_eq!(vga.read(ATTRIBUTE_READ, 1), 0x06, "the data write was kept");
        assert_eq!(vga.read(ATTRIBUTE, 1), 0x26);
        // Screen off in the sequencer.
        vga.write(SEQUENCER_INDEX, 1, 1);
        vga.write(SEQUENCER_DATA, 1, 0x21);
        assert_eq!(vga.text_layout().content, Content::Blank);
        // Graphics mode in the graphics controller.
        vga.write(SEQUENCER_DATA, 1, 0x01);
        vga.write(GRAPHICS_INDEX, 1, 6);
        vga.write(GRAPHICS_DATA, 1, 0x05);
        assert_eq!(vga.text_layout().content, Content::Graphics);
        assert_eq!(vga.text_layout().window_guest_phys, 0xa0000);
    }

    #[test]
    fn retrace_bits_toggle() {
        let mut vga = Vga::new();
        let first = vga.read(INPUT_STATUS_1_COLOR, 1) & 0x08;
        let second = vga.read(INPUT_STATUS_1_COLOR, 1) & 0x08;
        assert_ne!(first, second);
    }

    #[test]
    fn the_dac_and_palette_give_the_shown_colours() {
        let mut vga = Vga::new();
        // Linux's vgacon writes DAC entry 20 (brown in mode 3's palette)
        // with its own default; make it bright red instead.
        vga.write(DAC_WRITE_INDEX, 1, 20);
        for component in [0x3f, 0x10, 0x10] {
            vga.write(DAC_DATA, 1, component);
        }
        assert_eq!(vga.palette()[6], 12, "colour 6 shows bright red");
        vga.write(DAC_READ_INDEX, 1, 20);
        assert_eq!(vga.read(DAC_READ_INDEX, 1), 3, "DAC in read mode");
        let read: Vec<u32> = (0..3).map(|_| vga.read(DAC_DATA, 1)).collect();
        assert_eq!(read, [0x3f, 0x10, 0x10]);
        assert_eq!(vga.read(DAC_WRITE_INDEX, 1), 21, "auto-increment");
        // Palette register 1 pointing at DAC entry 4 (red).
        vga.read(INPUT_STATUS_1_COLOR, 1);
        vga.write(ATTRIBUTE, 1, 1);
        vga.write(ATTRIBUTE, 1, 4);
        vga.write(ATTRIBUTE, 1, 0x20);
        assert_eq!(vga.palette()[1], 4);
    }

    #[test]
    fn unknown_ports_float_and_nothing_panics() {
        let mut vga = Vga::new();
        assert_eq!(vga.read(0x3b0, 1), 0xff);
        for port in FIRST_PORT..=LAST_PORT {
            for value in [0u32, 0xff, 0x1234_5678] {
                vga.write(port, 4, value);
                let _ = vga.read(port, 4);
            }
        }
        let _ = vga.text_layout();
        let _ = vga.palette();
    }
}
