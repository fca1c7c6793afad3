//! The PC/AT's ISA DMA: two Intel 8237A DMA controllers and the page
//! registers that give their transfers address bits 16-23.
//!
//! # On the bus
//!
//! - DMA1, the 8-bit channels 0-3, at ports 0x00-0x0F: register `n` of the
//!   8237A (address lines A3-A0) at port `n`.
//! - DMA2, the 16-bit channels 4-7, at ports 0xC0-0xDF: register `n` at the
//!   even port `0xC0 + 2 * n` (the AT wires the system address bits SA4-SA1
//!   to A3-A0). The odd ports are not claimed.
//! - The page registers (a 74LS612 on the AT) at 0x87 (channel 0), 0x83
//!   (1), 0x81 (2), 0x82 (3), 0x8F (4, the refresh page), 0x8B (5), 0x89
//!   (6) and 0x8A (7). The other ports of 0x81-0x8F are plain read/write
//!   bytes, as in a PC chipset. Port 0x80 is the POST port, not here.
//!
//! The board passes the port itself: `dma.read(port)`, `dma.write(port,
//! value)`, for every port [`IsaDma::claims`].
//!
//! # Transfers
//!
//! A device whose DREQ the 8237A would answer calls
//! [`IsaDma::write_to_memory`] (a write transfer, mode type 01: I/O to
//! memory, what Linux calls `DMA_MODE_READ`, 0x44) or
//! [`IsaDma::read_from_memory`] (a read transfer, type 10: memory to I/O,
//! Linux's `DMA_MODE_WRITE`, 0x48) with the bytes it has or wants; guest
//! memory comes in through [`DmaMemory`]. A transfer runs at once, as far as
//! the bytes offered and the channel's word count allow: it moves count + 1
//! units (bytes on channels 0-3, 16-bit words on 5-7), stepping the current
//! address up or down as the mode register says, then at terminal count sets
//! the channel's TC bit in the status register and either reloads the base
//! address and count (autoinitialize) or masks the channel, as the 8237A
//! does. [`IsaDma::terminal_count`] tells the device whether the transfer
//! reached it (the EOP a floppy controller ends its command on).
//!
//! Addresses are formed as on the AT: on channels 0-3 the page register is
//! A23-A16 and the 8237A's 16-bit address A15-A0; on channels 5-7 the
//! 8237A's address is shifted left one (A16-A1, word addresses), the page
//! register's bits 7-1 give A23-A17 and its bit 0 is unused. The page
//! register does not count: a transfer that runs past the end of a 64 KiB
//! (128 KiB on channels 5-7) page wraps to its start, which is why Linux
//! never programs one that crosses such a boundary.
//!
//! # What is modelled
//!
//! Per 8237A: the base and current address and word count registers of each
//! channel (written low byte then high byte through the byte pointer
//! flip-flop, base and current together; read back as the current values
//! through the same flip-flop), the mode registers (transfer type,
//! autoinitialize, address decrement, mode select), the command register
//! (only its controller disable bit has an effect), the request register
//! (software requests show in status bits 4-7 until terminal count or a
//! master clear; they start no transfer), the mask register (single channel
//! mask, write all mask bits, clear mask register), the status register
//! (TC bits 0-3 cleared by reading it), the temporary register (reads 0),
//! clear byte pointer flip-flop and master clear (all channels masked;
//! command, status, request, temporary registers and the flip-flop
//! cleared; addresses, counts and modes kept, as in the datasheet).
//! Reading a register the datasheet calls illegal (mode, mask, request,
//! the software command addresses) floats: 0xFF.
//!
//! # What is not
//!
//! - Timing: transfers are instantaneous, so demand, single and block mode
//!   behave the same, a device's DREQ never shows in the status register,
//!   and priority between channels (fixed or rotating) never matters.
//! - Memory-to-memory transfers (command bit 0, with channel 0 address
//!   hold): the bit is stored and nothing is transferred.
//! - Verify transfers (type 00) move nothing: a device on a channel in
//!   verify mode gets no transfer, and neither does one on a channel in
//!   cascade mode or with the illegal type 11.
//! - The cascade: channel 4 carries DMA1's requests to DMA2 and no device
//!   can use it. DMA1's transfers do not depend on channel 4's mask or mode
//!   or on DMA2's controller disable bit: no firmware runs here to program
//!   the cascade (a PC BIOS sets channel 4 to cascade mode and unmasks it;
//!   Linux does only on resume), and the mask and mode registers cannot be
//!   read, so a guest cannot tell.
//! - The DREQ and DACK sense bits, compressed timing and extended write
//!   (command bits 3, 5, 6, 7) are stored and change nothing; the EOP input
//!   (a device ending a transfer early) is the device simply offering fewer
//!   bytes.
//! - Page registers for A24-A31 (the 0x48x ports of later chipsets): ISA
//!   DMA reaches the first 16 MiB only.
//!
//! # References
//!
//! Intel 8237A/8237A-4/8237A-5 High Performance Programmable DMA Controller
//! datasheet (registers, software commands, terminal count and
//! autoinitialize); IBM Personal Computer AT Technical Reference, "System
//! Board" (the two controllers' ports, the page registers and the 16-bit
//! channels' address shift); Linux `arch/x86/include/asm/dma.h` (what Linux
//! writes: `disable_dma`, `clear_dma_ff`, `set_dma_mode`, `set_dma_addr`,
//! `set_dma_count`, `enable_dma`, `get_dma_residue`).

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// DMA1's first port (channels 0-3, register `n` at `DMA1_BASE + n`).
pub const DMA1_BASE: u16 = 0x00;
/// DMA2's first port (channels 4-7, register `n` at `DMA2_BASE + 2 * n`).
pub const DMA2_BASE: u16 = 0xc0;
/// The page register ports of channels 0-7 (0x8F is channel 4's, the
/// refresh page on the AT).
pub const PAGE_PORTS: [u16; 8] = [0x87, 0x83, 0x81, 0x82, 0x8f, 0x8b, 0x89, 0x8a];
/// The first and last ports of the page register block (0x80, the POST
/// port, is not in it).
pub const PAGE_FIRST: u16 = 0x81;
/// See [`PAGE_FIRST`].
pub const PAGE_LAST: u16 = 0x8f;
/// DMA2's channel 0, channel 4: the cascade from DMA1.
pub const CASCADE_CHANNEL: u8 = 4;

/// Register 8 read: the status register.
pub const REG_STATUS: u8 = 0x08;
/// Register 8 write: the command register.
pub const REG_COMMAND: u8 = 0x08;
/// Register 9 write: the request register.
pub const REG_REQUEST: u8 = 0x09;
/// Register 10 write: single mask register bit.
pub const REG_SINGLE_MASK: u8 = 0x0a;
/// Register 11 write: the mode register.
pub const REG_MODE: u8 = 0x0b;
/// Register 12 write: clear byte pointer flip-flop.
pub const REG_CLEAR_FLIP_FLOP: u8 = 0x0c;
/// Register 13 read: the temporary register.
pub const REG_TEMPORARY: u8 = 0x0d;
/// Register 13 write: master clear.
pub const REG_MASTER_CLEAR: u8 = 0x0d;
/// Register 14 write: clear mask register.
pub const REG_CLEAR_MASK: u8 = 0x0e;
/// Register 15 write: write all mask register bits.
pub const REG_WRITE_ALL_MASK: u8 = 0x0f;

/// Mode, request and single mask registers: channel select (bits 1-0).
pub const CHANNEL_SELECT: u8 = 0x03;
/// Request and single mask registers: set (1) or reset (0) the bit.
pub const SET_BIT: u8 = 0x04;

/// Mode register: transfer type (bits 3-2).
pub const MODE_TRANSFER: u8 = 0x0c;
/// Transfer type 00: verify (no memory access).
pub const MODE_VERIFY: u8 = 0x00;
/// Transfer type 01: write transfer (I/O to memory).
pub const MODE_WRITE: u8 = 0x04;
/// Transfer type 10: read transfer (memory to I/O).
pub const MODE_READ: u8 = 0x08;
/// Mode register: autoinitialize.
pub const MODE_AUTOINIT: u8 = 0x10;
/// Mode register: address decrement.
pub const MODE_DECREMENT: u8 = 0x20;
/// Mode register: mode select (bits 7-6).
pub const MODE_SELECT: u8 = 0xc0;
/// Mode select 00: demand mode.
pub const MODE_DEMAND: u8 = 0x00;
/// Mode select 01: single mode.
pub const MODE_SINGLE: u8 = 0x40;
/// Mode select 10: block mode.
pub const MODE_BLOCK: u8 = 0x80;
/// Mode select 11: cascade mode.
pub const MODE_CASCADE: u8 = 0xc0;

/// Command register: memory-to-memory enable.
pub const CMD_MEM_TO_MEM: u8 = 0x01;
/// Command register: channel 0 address hold enable.
pub const CMD_CH0_ADDRESS_HOLD: u8 = 0x02;
/// Command register: controller disable.
pub const CMD_CONTROLLER_DISABLE: u8 = 0x04;
/// Command register: compressed timing.
pub const CMD_COMPRESSED_TIMING: u8 = 0x08;
/// Command register: rotating priority.
pub const CMD_ROTATING_PRIORITY: u8 = 0x10;
/// Command register: extended write selection.
pub const CMD_EXTENDED_WRITE: u8 = 0x20;
/// Command register: DREQ sense active low.
pub const CMD_DREQ_ACTIVE_LOW: u8 = 0x40;
/// Command register: DACK sense active high.
pub const CMD_DACK_ACTIVE_HIGH: u8 = 0x80;

/// Status register: channels 0-3 reached terminal count (bits 3-0).
pub const STATUS_TC: u8 = 0x0f;
/// Status register: shift of the channels' request bits (bits 7-4).
pub const STATUS_REQUEST_SHIFT: u8 = 4;

/// What an illegal register read and an unclaimed port read return.
const FLOATING: u8 = 0xff;

/// Guest memory as a DMA transfer reaches it (guest-physical addresses).
pub trait DmaMemory {
    /// Reads `buf.len()` bytes at `guest_phys`; false if any of them is
    /// outside RAM (`buf` is then unspecified).
    fn read(&self, guest_phys: u32, buf: &mut [u8]) -> bool;
    /// Writes `data` at `guest_phys`; false, writing nothing, if any byte
    /// is outside RAM.
    fn write(&mut self, guest_phys: u32, data: &[u8]) -> bool;
}

/// One channel's registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Channel {
    base_address: u16,
    current_address: u16,
    base_count: u16,
    current_count: u16,
    /// The mode register, bits 7-2 (bits 1-0 select the channel).
    mode: u8,
    /// The last transfer call on the channel ended at terminal count.
    reached_tc: bool,
}

/// One 8237A.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Controller {
    channels: [Channel; 4],
    command: u8,
    /// Terminal count bits 3-0 of the status register.
    tc: u8,
    /// The request register, bits 3-0.
    request: u8,
    /// The mask register, bits 3-0 (1 = masked).
    mask: u8,
    /// The byte pointer flip-flop: the next address or count access is the
    /// high byte.
    flip_flop: bool,
}

impl Controller {
    /// After RESET: everything cleared, every channel masked.
    fn new() -> Self {
        Self {
            channels: [Channel::default(); 4],
            command: 0,
            tc: 0,
            request: 0,
            mask: 0x0f,
            flip_flop: false,
        }
    }

    /// Master clear: RESET's effect on the registers the datasheet names
    /// (command, status, request, temporary, flip-flop, mask); the
    /// channels' addresses, counts and modes are kept.
    fn master_clear(&mut self) {
        self.command = 0;
        self.tc = 0;
        self.request = 0;
        self.mask = 0x0f;
        self.flip_flop = false;
    }

    fn status(&self) -> u8 {
        (self.tc & STATUS_TC) | (self.request << STATUS_REQUEST_SHIFT)
    }

    /// The byte the flip-flop points at, toggling it.
    fn next_byte(&mut self) -> bool {
        let high = self.flip_flop;
        self.flip_flop = !high;
        high
    }

    /// Reads register `reg` (0-15).
    fn read(&mut self, reg: u8) -> u8 {
        match reg {
            0..=7 => {
                let high = self.next_byte();
                let channel = &self.channels[usize::from(reg >> 1)];
                let value = if reg & 1 == 0 {
                    channel.current_address
                } else {
                    channel.current_count
                };
                byte_of(value, high)
            }
            REG_STATUS => {
                let status = self.status();
                self.tc = 0;
                status
            }
            // Memory-to-memory transfers are not modelled: the temporary
            // register keeps the 0 RESET and master clear leave in it.
            REG_TEMPORARY => 0,
            _ => FLOATING,
        }
    }

    /// Writes register `reg` (0-15).
    fn write(&mut self, reg: u8, value: u8) {
        let bit = 1 << (value & CHANNEL_SELECT);
        match reg {
            0..=7 => {
                let high = self.next_byte();
                let channel = &mut self.channels[usize::from(reg >> 1)];
                if reg & 1 == 0 {
                    set_byte(&mut channel.base_address, high, value);
                    set_byte(&mut channel.current_address, high, value);
                } else {
                    set_byte(&mut channel.base_count, high, value);
                    set_byte(&mut channel.current_count, high, value);
                }
            }
            REG_COMMAND => self.command = value,
            REG_REQUEST => {
                if value & SET_BIT == 0 {
                    self.request &= !bit;
                } else {
                    self.request |= bit;
                }
            }
            REG_SINGLE_MASK => {
                if value & SET_BIT == 0 {
                    self.mask &= !bit;
                } else {
                    self.mask |= bit;
                }
            }
            REG_MODE => {
                self.channels[usize::from(value & CHANNEL_SELECT)].mode = value & !CHANNEL_SELECT;
            }
            REG_CLEAR_FLIP_FLOP => self.flip_flop = false,
            REG_MASTER_CLEAR => self.master_clear(),
            REG_CLEAR_MASK => self.mask = 0,
            REG_WRITE_ALL_MASK => self.mask = value & 0x0f,
            _ => {}
        }
    }
}

/// The low (`high` false) or high byte of `value`.
fn byte_of(value: u16, high: bool) -> u8 {
    let [low, high_byte] = value.to_le_bytes();
    if high { high_byte } else { low }
}

/// Sets the low (`high` false) or high byte of `register`.
fn set_byte(register: &mut u16, high: bool, value: u8) {
    let mut bytes = register.to_le_bytes();
    bytes[usize::from(high)] = value;
    *register = u16::from_le_bytes(bytes);
}

/// The low 16 bits of `value`.
fn low16(value: u32) -> u16 {
    let [low, high, _, _] = value.to_le_bytes();
    u16::from_le_bytes([low, high])
}

/// `value` as a `usize` (lossless on every host btvmm builds for).
fn to_usize(value: u32) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// `data` with the order of its `unit`-byte units reversed and the bytes
/// within each unit kept: what an address-decrementing transfer puts at
/// ascending addresses.
fn reverse_units(data: &[u8], unit: usize) -> Vec<u8> {
    data.chunks_exact(unit).rev().flatten().copied().collect()
}

/// Writes `data` at `guest_phys`, byte by byte if some of it is outside RAM
/// (those bytes are dropped).
fn write_memory(memory: &mut dyn DmaMemory, guest_phys: u32, data: &[u8]) {
    if !memory.write(guest_phys, data) {
        // A run stays below 16 MiB: the addresses cannot overflow.
        for (address, byte) in (guest_phys..).zip(data) {
            memory.write(address, std::slice::from_ref(byte));
        }
    }
}

/// Reads `buf` from `guest_phys`, byte by byte if some of it is outside RAM
/// (those bytes read 0xFF, a floating bus).
fn read_memory(memory: &dyn DmaMemory, guest_phys: u32, buf: &mut [u8]) {
    if !memory.read(guest_phys, buf) {
        for (address, byte) in (guest_phys..).zip(buf.iter_mut()) {
            let mut one = [FLOATING];
            *byte = if memory.read(address, &mut one) {
                one[0]
            } else {
                FLOATING
            };
        }
    }
}

/// The two 8237As of the PC/AT and the page registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsaDma {
    /// DMA1 (channels 0-3) and DMA2 (channels 4-7).
    controllers: [Controller; 2],
    /// Ports 0x80-0x8F; entry 0 (the POST port) is unused.
    pages: [u8; 16],
}

impl Default for IsaDma {
    fn default() -> Self {
        Self::new()
    }
}

impl IsaDma {
    /// Power-on: both controllers after RESET (every channel masked,
    /// command, status and request registers and the flip-flops cleared),
    /// addresses, counts, modes and page registers 0.
    #[must_use]
    pub fn new() -> Self {
        Self {
            controllers: [Controller::new(), Controller::new()],
            pages: [0; 16],
        }
    }

    /// Back to the power-on state.
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Whether `port` is one of the controllers' or the page registers'.
    #[must_use]
    pub fn claims(port: u16) -> bool {
        Self::decode(port).is_some()
    }

    /// Reads `port`; ports not claimed float (0xFF).
    pub fn read(&mut self, port: u16) -> u8 {
        match Self::decode(port) {
            Some(Port::Register(controller, reg)) => self.controllers[controller].read(reg),
            Some(Port::Page(index)) => self.pages[index],
            None => FLOATING,
        }
    }

    /// Writes `port`; writes to ports not claimed are ignored.
    pub fn write(&mut self, port: u16, value: u8) {
        match Self::decode(port) {
            Some(Port::Register(controller, reg)) => self.controllers[controller].write(reg, value),
            Some(Port::Page(index)) => self.pages[index] = value,
            None => {}
        }
    }

    /// Whether `channel` is unmasked, its controller enabled, and programmed
    /// for a transfer a device may run now: a write or read transfer in
    /// demand, single or block mode. Never for channel 4 (the cascade) or a
    /// channel above 7.
    #[must_use]
    pub fn ready(&self, channel: u8) -> bool {
        matches!(self.transfer_type(channel), Some(MODE_WRITE | MODE_READ))
    }

    /// A device on `channel` hands it `data` to put in memory: a write
    /// transfer (mode type 01, I/O to memory). Moves as many bytes as the
    /// channel's word count allows (count + 1 units: bytes on channels 0-3,
    /// 16-bit words on 5-7, where a trailing odd byte of `data` is not
    /// moved), stepping the current address up or down as the mode says and
    /// wrapping within the 64 KiB (128 KiB) page; updates the current
    /// address and count; at terminal count sets the channel's TC status
    /// bit and reloads the base address and count (autoinitialize) or masks
    /// the channel. Bytes outside RAM are dropped but count as moved, as on
    /// a bus. Returns the bytes moved: 0 if the channel is not
    /// [`ready`](Self::ready) or not programmed for a write transfer.
    pub fn write_to_memory(
        &mut self,
        channel: u8,
        data: &[u8],
        memory: &mut dyn DmaMemory,
    ) -> usize {
        if self.transfer_type(channel) != Some(MODE_WRITE) {
            return self.no_transfer(channel);
        }
        self.transfer(channel, data.len(), |guest_phys, range, unit, decrement| {
            let Some(run) = data.get(range) else {
                return;
            };
            if decrement {
                write_memory(memory, guest_phys, &reverse_units(run, unit));
            } else {
                write_memory(memory, guest_phys, run);
            }
        })
    }

    /// A device on `channel` takes bytes from memory into `buf`: a read
    /// transfer (mode type 10, memory to I/O). Fills `buf` from its start as
    /// far as the channel's word count allows, with the same addressing,
    /// register updates and terminal count as
    /// [`write_to_memory`](Self::write_to_memory); bytes outside RAM read
    /// 0xFF. Returns the bytes moved (the rest of `buf` is left alone): 0 if
    /// the channel is not ready or not programmed for a read transfer.
    pub fn read_from_memory(
        &mut self,
        channel: u8,
        buf: &mut [u8],
        memory: &dyn DmaMemory,
    ) -> usize {
        if self.transfer_type(channel) != Some(MODE_READ) {
            return self.no_transfer(channel);
        }
        let len = buf.len();
        self.transfer(channel, len, |guest_phys, range, unit, decrement| {
            let Some(run) = buf.get_mut(range) else {
                return;
            };
            if decrement {
                let mut ascending = vec![0; run.len()];
                read_memory(memory, guest_phys, &mut ascending);
                run.copy_from_slice(&reverse_units(&ascending, unit));
            } else {
                read_memory(memory, guest_phys, run);
            }
        })
    }

    /// Whether the last [`write_to_memory`](Self::write_to_memory) or
    /// [`read_from_memory`](Self::read_from_memory) on `channel` ended at
    /// terminal count (false after one that moved nothing): the device's
    /// end of transfer.
    #[must_use]
    pub fn terminal_count(&self, channel: u8) -> bool {
        Self::locate(channel).is_some_and(|(controller, index)| {
            self.controllers[controller].channels[index].reached_tc
        })
    }

    /// The controller (0 or 1) and register number (0-15) of a port, or the
    /// page register index.
    fn decode(port: u16) -> Option<Port> {
        let [low, _] = port.to_le_bytes();
        match port {
            0x00..=0x0f => Some(Port::Register(0, low)),
            0xc0..=0xdf if port & 1 == 0 => Some(Port::Register(1, (low - 0xc0) >> 1)),
            PAGE_FIRST..=PAGE_LAST => Some(Port::Page(usize::from(low & 0x0f))),
            _ => None,
        }
    }

    /// The controller (0 or 1) and its channel (0-3) of `channel` 0-7.
    fn locate(channel: u8) -> Option<(usize, usize)> {
        (channel < 8).then(|| (usize::from(channel >> 2), usize::from(channel & 3)))
    }

    /// The transfer type of `channel` if a device may run a transfer on it
    /// now: not the cascade channel, controller enabled, channel unmasked,
    /// not in cascade mode.
    fn transfer_type(&self, channel: u8) -> Option<u8> {
        let (controller, index) = Self::locate(channel)?;
        let controller = &self.controllers[controller];
        let mode = controller.channels[index].mode;
        let usable = channel != CASCADE_CHANNEL
            && controller.command & CMD_CONTROLLER_DISABLE == 0
            && controller.mask & (1 << index) == 0
            && mode & MODE_SELECT != MODE_CASCADE;
        usable.then_some(mode & MODE_TRANSFER)
    }

    /// A transfer call that moves nothing: the channel did not reach
    /// terminal count in it.
    fn no_transfer(&mut self, channel: u8) -> usize {
        if let Some((controller, index)) = Self::locate(channel) {
            self.controllers[controller].channels[index].reached_tc = false;
        }
        0
    }

    /// Runs a transfer of at most `len` bytes on a ready `channel`: calls
    /// `move_run(guest_phys, bytes, unit, decrement)` for each stretch that
    /// is contiguous in memory (`bytes` the range of the device's buffer it
    /// takes, `guest_phys` the lowest address of the stretch; with
    /// `decrement` the buffer's units go to descending addresses), then
    /// updates the channel's registers. Returns the bytes moved.
    fn transfer(
        &mut self,
        channel: u8,
        len: usize,
        mut move_run: impl FnMut(u32, Range<usize>, usize, bool),
    ) -> usize {
        let Some((controller_index, index)) = Self::locate(channel) else {
            return 0;
        };
        let page = self.pages[usize::from(PAGE_PORTS[usize::from(channel & 7)] & 0x0f)];
        let words = controller_index == 1;
        // Bytes per unit, and the shift from the 8237A's address to A15-A0.
        let (unit, shift) = if words { (2, 1) } else { (1, 0) };
        let page_base = if words {
            u32::from(page & 0xfe) << 16
        } else {
            u32::from(page) << 16
        };
        let controller = &mut self.controllers[controller_index];
        let channel_regs = &mut controller.channels[index];
        let decrement = channel_regs.mode & MODE_DECREMENT != 0;

        let remaining = u32::from(channel_regs.current_count) + 1;
        let offered = u32::try_from(len / unit).unwrap_or(u32::MAX);
        let units = remaining.min(offered);
        let mut address = u32::from(channel_regs.current_address);
        let mut done = 0;
        while done < units {
            let left = units - done;
            // The stretch up to the end (or down to the start) of the page.
            let (count, lowest) = if decrement {
                let count = left.min(address + 1);
                (count, address + 1 - count)
            } else {
                (left.min(0x1_0000 - address), address)
            };
            move_run(
                page_base | (lowest << shift),
                to_usize(done) * unit..to_usize(done + count) * unit,
                unit,
                decrement,
            );
            address = if decrement {
                (address + 0x1_0000 - count) & 0xffff
            } else {
                (address + count) & 0xffff
            };
            done += count;
        }

        let reached_tc = units > 0 && units == remaining;
        channel_regs.reached_tc = reached_tc;
        if reached_tc {
            controller.tc |= 1 << index;
            controller.request &= !(1 << index);
            let channel_regs = &mut controller.channels[index];
            if channel_regs.mode & MODE_AUTOINIT == 0 {
                // The count steps past 0 to 0xFFFF; the channel masks itself.
                channel_regs.current_address = low16(address);
                channel_regs.current_count = 0xffff;
                controller.mask |= 1 << index;
            } else {
                channel_regs.current_address = channel_regs.base_address;
                channel_regs.current_count = channel_regs.base_count;
            }
        } else {
            channel_regs.current_address = low16(address);
            channel_regs.current_count = low16(remaining - 1 - units);
        }
        to_usize(units) * unit
    }
}

/// What a claimed port reaches.
enum Port {
    /// A controller (0: DMA1, 1: DMA2) and its register (0-15).
    Register(usize, u8),
    /// The page register block's byte at 0x80 + index.
    Page(usize),
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// RAM of a given size at guest-physical 0.
    struct Ram(Vec<u8>);

    impl Ram {
        fn new(size: usize) -> Self {
            Self(vec![0; size])
        }

        fn range(&self, guest_phys: u32, len: usize) -> Option<Range<usize>> {
            let start = usize::try_from(guest_phys).ok()?;
            let end = start.checked_add(len)?;
            (end <= self.0.len()).then_some(start..end)
        }

        fn at(&self, guest_phys: u32, len: usize) -> &[u8] {
            let start = usize::try_from(guest_phys).expect("small address");
            &self.0[start..start + len]
        }
    }

    impl DmaMemory for Ram {
        fn read(&self, guest_phys: u32, buf: &mut [u8]) -> bool {
            match self.range(guest_phys, buf.len()) {
                Some(range) => {
                    buf.copy_from_slice(&self.0[range]);
                    true
                }
                None => false,
            }
        }

        fn write(&mut self, guest_phys: u32, data: &[u8]) -> bool {
            match self.range(guest_phys, data.len()) {
                Some(range) => {
                    self.0[range].copy_from_slice(data);
                    true
                }
                None => false,
            }
        }
    }

    // Linux's asm/dma.h, as the kernel writes the ports.

    const DMA_MODE_READ: u8 = 0x44;
    const DMA_MODE_WRITE: u8 = 0x48;
    const DMA_AUTOINIT: u8 = 0x10;

    fn mask_reg(channel: u8) -> u16 {
        if channel <= 3 { 0x0a } else { 0xd4 }
    }

    fn enable_dma(dma: &mut IsaDma, channel: u8) {
        dma.write(mask_reg(channel), channel & 3);
    }

    fn disable_dma(dma: &mut IsaDma, channel: u8) {
        dma.write(mask_reg(channel), (channel & 3) | 4);
    }

    fn clear_dma_ff(dma: &mut IsaDma, channel: u8) {
        dma.write(if channel <= 3 { 0x0c } else { 0xd8 }, 0);
    }

    fn set_dma_mode(dma: &mut IsaDma, channel: u8, mode: u8) {
        dma.write(if channel <= 3 { 0x0b } else { 0xd6 }, mode | (channel & 3));
    }

    fn set_dma_page(dma: &mut IsaDma, channel: u8, page: u8) {
        let page = if channel <= 3 { page } else { page & 0xfe };
        dma.write(PAGE_PORTS[usize::from(channel)], page);
    }

    fn addr_port(channel: u8) -> u16 {
        let channel = u16::from(channel);
        if channel <= 3 {
            (channel & 3) << 1
        } else {
            ((channel & 3) << 2) + DMA2_BASE
        }
    }

    fn count_port(channel: u8) -> u16 {
        if channel <= 3 {
            addr_port(channel) + 1
        } else {
            addr_port(channel) + 2
        }
    }

    fn bytes(value: u32) -> [u8; 4] {
        value.to_le_bytes()
    }

    fn set_dma_addr(dma: &mut IsaDma, channel: u8, a: u32) {
        set_dma_page(dma, channel, bytes(a)[2]);
        let port = addr_port(channel);
        if channel <= 3 {
            dma.write(port, bytes(a)[0]);
            dma.write(port, bytes(a)[1]);
        } else {
            dma.write(port, bytes(a >> 1)[0]);
            dma.write(port, bytes(a >> 9)[0]);
        }
    }

    fn set_dma_count(dma: &mut IsaDma, channel: u8, count: u32) {
        let count = count - 1;
        let port = count_port(channel);
        if channel <= 3 {
            dma.write(port, bytes(count)[0]);
            dma.write(port, bytes(count >> 8)[0]);
        } else {
            dma.write(port, bytes(count >> 1)[0]);
            dma.write(port, bytes(count >> 9)[0]);
        }
    }

    /// `get_dma_residue`: bytes left, with its 16-bit wrap.
    fn get_dma_residue(dma: &mut IsaDma, channel: u8) -> u32 {
        let port = count_port(channel);
        let mut count = 1u16.wrapping_add(u16::from(dma.read(port)));
        count = count.wrapping_add(u16::from(dma.read(port)) << 8);
        if channel <= 3 {
            u32::from(count)
        } else {
            u32::from(count) << 1
        }
    }

    /// The floppy driver's setup of a transfer (`setup_DMA`).
    fn program(dma: &mut IsaDma, channel: u8, mode: u8, address: u32, count: u32) {
        disable_dma(dma, channel);
        clear_dma_ff(dma, channel);
        set_dma_mode(dma, channel, mode);
        set_dma_addr(dma, channel, address);
        set_dma_count(dma, channel, count);
        enable_dma(dma, channel);
    }

    /// The current address and count registers of `channel`, read after
    /// clearing the flip-flop.
    fn current(dma: &mut IsaDma, channel: u8) -> (u16, u16) {
        clear_dma_ff(dma, channel);
        let read16 = |dma: &mut IsaDma, port| {
            let low = dma.read(port);
            u16::from_le_bytes([low, dma.read(port)])
        };
        let address = read16(dma, addr_port(channel));
        (address, read16(dma, count_port(channel)))
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from(i % 251).expect("< 251").wrapping_add(seed))
            .collect()
    }

    #[test]
    fn linux_floppy_read_lands_at_page_and_address_and_ends_at_terminal_count() {
        let mut dma = IsaDma::new();
        let mut ram = Ram::new(0x20_0000);
        assert!(!dma.ready(2), "masked at power-on");
        program(&mut dma, 2, DMA_MODE_READ, 0x12_3400, 512);
        assert!(dma.ready(2));
        assert_eq!(dma.read(0x81), 0x12, "page register of channel 2");

        let sector = pattern(512, 7);
        assert_eq!(dma.write_to_memory(2, &sector, &mut ram), 512);
        assert_eq!(ram.at(0x12_3400, 512), &sector[..]);
        assert_eq!(ram.at(0x12_33ff, 1), &[0]);
        assert_eq!(ram.at(0x12_3600, 1), &[0]);
        assert!(dma.terminal_count(2));

        assert_eq!(current(&mut dma, 2), (0x3600, 0xffff));
        clear_dma_ff(&mut dma, 2);
        assert_eq!(get_dma_residue(&mut dma, 2), 0, "Linux sees no residue");
        assert_eq!(dma.read(0x08), 0x04, "TC of channel 2");
        assert!(!dma.ready(2), "masked itself without autoinitialize");
        assert_eq!(dma.write_to_memory(2, &sector, &mut ram), 0);
        assert!(!dma.terminal_count(2));
    }

    #[test]
    fn a_transfer_in_two_parts_reaches_terminal_count_on_the_second() {
        let mut dma = IsaDma::new();
        let mut ram = Ram::new(0x10_0000);
        program(&mut dma, 2, DMA_MODE_READ, 0x8000, 1024);
        let first = pattern(512, 1);
        let second = pattern(600, 2);
        assert_eq!(dma.write_to_memory(2, &first, &mut ram), 512);
        assert!(!dma.terminal_count(2));
        assert_eq!(dma.read(0x08) & STATUS_TC, 0);
        clear_dma_ff(&mut dma, 2);
        assert_eq!(get_dma_residue(&mut dma, 2), 512);
        assert!(dma.ready(2));
        assert_eq!(
            dma.write_to_memory(2, &second, &mut ram),
            512,
            "count limits"
        );
        assert!(dma.terminal_count(2));
        assert_eq!(ram.at(0x8000, 512), &first[..]);
        assert_eq!(ram.at(0x8200, 512), &second[..512]);
        assert_eq!(ram.at(0x8400, 1), &[0]);
    }

    #[test]
    fn read_transfer_fills_the_device_buffer_from_memory() {
        let mut dma = IsaDma::new();
        let mut ram = Ram::new(0x10_0000);
        let data = pattern(1024, 3);
        assert!(ram.write(0x4_2000, &data));
        program(&mut dma, 2, DMA_MODE_WRITE, 0x4_2000, 1024);
        let mut ignored = Ram::new(0x10_0000);
        assert_eq!(
            dma.write_to_memory(2, &data, &mut ignored),
            0,
            "wrong direction"
        );

        let mut buf = vec![0xee; 2048];
        assert_eq!(dma.read_from_memory(2, &mut buf, &ram), 1024);
        assert_eq!(&buf[..1024], &data[..]);
        assert!(buf[1024..].iter().all(|&b| b == 0xee), "rest untouched");
        assert!(dma.terminal_count(2));
        assert!(!dma.ready(2));
    }

    #[test]
    fn a_write_transfer_channel_does_not_read_memory() {
        let mut dma = IsaDma::new();
        let ram = Ram::new(0x1000);
        program(&mut dma, 2, DMA_MODE_READ, 0, 16);
        let mut buf = [0; 16];
        assert_eq!(dma.read_from_memory(2, &mut buf, &ram), 0);
        assert_eq!(current(&mut dma, 2), (0, 15), "registers unchanged");
    }

    #[test]
    fn autoinitialize_reloads_the_base_registers_and_stays_unmasked() {
        let mut dma = IsaDma::new();
        let mut ram = Ram::new(0x10_0000);
        program(&mut dma, 1, DMA_MODE_READ | DMA_AUTOINIT, 0x2_1000, 256);
        let first = pattern(256, 1);
        assert_eq!(dma.write_to_memory(1, &first, &mut ram), 256);
        assert!(dma.terminal_count(1));
        assert_eq!(dma.read(0x08) & STATUS_TC, 0x02);
        assert_eq!(current(&mut dma, 1), (0x1000, 255), "reloaded");
        assert!(dma.ready(1));
        let second = pattern(300, 9);
        assert_eq!(dma.write_to_memory(1, &second, &mut ram), 256);
        assert_eq!(ram.at(0x2_1000, 256), &second[..256]);
        assert_eq!(ram.at(0x2_1100, 1), &[0]);
    }

    #[test]
    fn address_decrement_fills_memory_downwards() {
        let mut dma = IsaDma::new();
        let mut ram = Ram::new(0x10_0000);
        program(&mut dma, 3, DMA_MODE_READ | MODE_DECREMENT, 0x5_1003, 8);
        assert_eq!(dma.write_to_memory(3, &[1, 2, 3, 4], &mut ram), 4);
        assert_eq!(ram.at(0x5_1000, 4), &[4, 3, 2, 1]);
        assert_eq!(current(&mut dma, 3), (0x0fff, 3));
        assert_eq!(dma.write_to_memory(3, &[5, 6, 7, 8, 9], &mut ram), 4);
        assert_eq!(ram.at(0x5_0ffc, 4), &[8, 7, 6, 5]);
        assert!(dma.terminal_count(3));
        assert_eq!(current(&mut dma, 3), (0x0ffb, 0xffff));
    }

    #[test]
    fn address_decrement_reads_memory_downwards() {
        let mut dma = IsaDma::new();
        let mut ram = Ram::new(0x1_0000);
        assert!(ram.write(0x100, &[10, 11, 12, 13]));
        program(&mut dma, 0, DMA_MODE_WRITE | MODE_DECREMENT, 0x103, 4);
        let mut buf = [0; 4];
        assert_eq!(dma.read_from_memory(0, &mut buf, &ram), 4);
        assert_eq!(buf, [13, 12, 11, 10]);
    }

    #[test]
    fn the_flip_flop_sequences_low_and_high_bytes() {
        let mut dma = IsaDma::new();
        clear_dma_ff(&mut dma, 2);
        dma.write(0x04, 0x34);
        dma.write(0x04, 0x12);
        dma.write(0x05, 0x78);
        dma.write(0x05, 0x56);
        clear_dma_ff(&mut dma, 2);
        assert_eq!(dma.read(0x04), 0x34);
        assert_eq!(dma.read(0x04), 0x12);
        assert_eq!(dma.read(0x05), 0x78);
        assert_eq!(dma.read(0x05), 0x56);

        // A read toggles it like a write: the next write is a high byte.
        clear_dma_ff(&mut dma, 2);
        assert_eq!(dma.read(0x04), 0x34);
        dma.write(0x04, 0xab);
        assert_eq!(current(&mut dma, 2), (0xab34, 0x5678));

        // Clearing it mid-way restarts at the low byte.
        clear_dma_ff(&mut dma, 2);
        dma.write(0x04, 0x99);
        clear_dma_ff(&mut dma, 2);
        dma.write(0x04, 0x01);
        dma.write(0x04, 0x02);
        assert_eq!(current(&mut dma, 2).0, 0x0201);

        // Each controller has its own.
        clear_dma_ff(&mut dma, 0);
        dma.write(0x00, 0x11);
        clear_dma_ff(&mut dma, 5);
        dma.write(0xc4, 0x22);
        dma.write(0x00, 0x33);
        dma.write(0xc4, 0x44);
        assert_eq!(current(&mut dma, 0).0, 0x3311);
        assert_eq!(current(&mut dma, 5).0, 0x4422);
    }

    #[test]
    fn master_clear_masks_everything_and_clears_flip_flop_status_and_requests() {
        let mut dma = IsaDma::new();
        let mut ram = Ram::new(0x1_0000);
        program(&mut dma, 2, DMA_MODE_READ, 0x100, 1);
        program(&mut dma, 3, DMA_MODE_READ, 0x200, 4);
        assert_eq!(dma.write_to_memory(2, &[1], &mut ram), 1);
        dma.write(0x09, SET_BIT | 1);
        dma.write(0x08, CMD_ROTATING_PRIORITY);
        dma.write(0x06, 0x55); // the flip-flop now points at a high byte
        dma.write(0x0d, 0);
        assert!(!dma.ready(3), "masked");
        assert_eq!(dma.read(0x08), 0, "status and requests cleared");
        dma.write(0x06, 0x00);
        dma.write(0x06, 0x02);
        dma.write(0x0e, 0); // clear mask register
        assert!(dma.ready(3), "mode kept");
        assert_eq!(dma.write_to_memory(3, &[9; 8], &mut ram), 4);
        assert_eq!(ram.at(0x200, 4), &[9; 4], "address written low byte first");
    }

    #[test]
    fn status_tc_bits_clear_on_read_and_request_bits_stay() {
        let mut dma = IsaDma::new();
        let mut ram = Ram::new(0x1_0000);
        program(&mut dma, 0, DMA_MODE_READ, 0, 1);
        program(&mut dma, 3, DMA_MODE_READ, 0x10, 1);
        dma.write(0x09, SET_BIT | 1);
        dma.write(0x09, SET_BIT | 3);
        assert_eq!(dma.read(0x08), 0xa0);
        assert_eq!(dma.write_to_memory(0, &[1], &mut ram), 1);
        assert_eq!(dma.write_to_memory(3, &[1], &mut ram), 1);
        assert_eq!(dma.read(0x08), 0x29, "TC 0 and 3; TC cleared request 3");
        assert_eq!(dma.read(0x08), 0x20);
        dma.write(0x09, 1);
        assert_eq!(dma.read(0x08), 0);
        assert!(dma.terminal_count(0), "the device's flag is its own");
    }

    #[test]
    fn sixteen_bit_channel_moves_words_at_shifted_addresses() {
        let mut dma = IsaDma::new();
        let mut ram = Ram::new(0x40_0000);
        program(&mut dma, 5, DMA_MODE_READ, 0x3_4560, 1024);
        assert_eq!(dma.read(0x8b), 0x02, "page bit 0 is not used");
        clear_dma_ff(&mut dma, 5);
        assert_eq!(
            (dma.read(0xc4), dma.read(0xc4)),
            (0xb0, 0xa2),
            "word address"
        );
        assert_eq!((dma.read(0xc6), dma.read(0xc6)), (0xff, 0x01), "word count");

        let data = pattern(1025, 5);
        assert_eq!(dma.write_to_memory(5, &data, &mut ram), 1024);
        assert_eq!(ram.at(0x3_4560, 1024), &data[..1024]);
        assert_eq!(ram.at(0x3_4960, 1), &[0]);
        assert!(dma.terminal_count(5));
        assert_eq!(dma.read(0xd0), 0x02, "TC of DMA2's channel 1");
        assert_eq!(dma.read(0x08), 0, "DMA1's status is its own");
        clear_dma_ff(&mut dma, 5);
        assert_eq!(get_dma_residue(&mut dma, 5), 0);

        // Page bit 0 is not an address line: A16 comes from the 8237A.
        program(&mut dma, 5, DMA_MODE_READ, 0x2_0010, 2);
        dma.write(0x8b, 0x03);
        assert_eq!(dma.write_to_memory(5, &[0xaa, 0xbb], &mut ram), 2);
        assert_eq!(ram.at(0x2_0010, 2), &[0xaa, 0xbb]);
        assert_eq!(ram.at(0x3_0010, 2), &[0, 0]);

        // A trailing odd byte is not a word.
        program(&mut dma, 6, DMA_MODE_READ, 0x1_0000, 8);
        assert_eq!(dma.write_to_memory(6, &[1, 2, 3], &mut ram), 2);
        assert_eq!(dma.write_to_memory(6, &[4], &mut ram), 0);
        assert_eq!(ram.at(0x1_0000, 3), &[1, 2, 0]);
        assert_eq!(current(&mut dma, 6), (0x8001, 2));
    }

    #[test]
    fn sixteen_bit_decrement_keeps_byte_order_within_words() {
        let mut dma = IsaDma::new();
        let mut ram = Ram::new(0x1_0000);
        program(&mut dma, 7, DMA_MODE_READ | MODE_DECREMENT, 0x102, 4);
        assert_eq!(dma.write_to_memory(7, &[1, 2, 3, 4], &mut ram), 4);
        assert_eq!(ram.at(0x100, 4), &[3, 4, 1, 2]);
    }

    #[test]
    fn a_transfer_wraps_within_its_64k_page() {
        let mut dma = IsaDma::new();
        let mut ram = Ram::new(0x10_0000);
        program(&mut dma, 1, DMA_MODE_READ, 0x5_fff0, 32);
        let data = pattern(32, 11);
        assert_eq!(dma.write_to_memory(1, &data, &mut ram), 32);
        assert_eq!(ram.at(0x5_fff0, 16), &data[..16]);
        assert_eq!(ram.at(0x5_0000, 16), &data[16..]);
        assert_eq!(ram.at(0x6_0000, 16), &[0; 16], "the page does not count");
        assert_eq!(current(&mut dma, 1), (0x0010, 0xffff));
        assert_eq!(dma.read(0x83), 0x05);
    }

    #[test]
    fn a_decrementing_transfer_wraps_to_the_top_of_its_page() {
        let mut dma = IsaDma::new();
        let mut ram = Ram::new(0x10_0000);
        program(&mut dma, 2, DMA_MODE_READ | MODE_DECREMENT, 0x7_0001, 4);
        assert_eq!(dma.write_to_memory(2, &[1, 2, 3, 4], &mut ram), 4);
        assert_eq!(ram.at(0x7_0000, 2), &[2, 1]);
        assert_eq!(ram.at(0x7_fffe, 2), &[4, 3]);
        assert_eq!(ram.at(0x6_fffe, 2), &[0, 0]);
    }

    #[test]
    fn a_sixteen_bit_transfer_wraps_within_its_128k_page() {
        let mut dma = IsaDma::new();
        let mut ram = Ram::new(0x40_0000);
        program(&mut dma, 6, DMA_MODE_READ, 0x3_fffc, 8);
        assert_eq!(
            dma.write_to_memory(6, &[1, 2, 3, 4, 5, 6, 7, 8], &mut ram),
            8
        );
        assert_eq!(ram.at(0x3_fffc, 4), &[1, 2, 3, 4]);
        assert_eq!(ram.at(0x2_0000, 4), &[5, 6, 7, 8]);
        assert_eq!(ram.at(0x4_0000, 4), &[0; 4]);
    }

    #[test]
    fn unready_channels_move_nothing() {
        let mut ram = Ram::new(0x1_0000);
        let data = [0x5a; 16];
        let check = |dma: &mut IsaDma, ram: &mut Ram, channel: u8| {
            assert!(!dma.ready(channel));
            assert_eq!(dma.write_to_memory(channel, &data, ram), 0);
            let mut buf = [0; 16];
            assert_eq!(dma.read_from_memory(channel, &mut buf, ram), 0);
            assert!(!dma.terminal_count(channel));
        };

        let mut dma = IsaDma::new();
        program(&mut dma, 2, DMA_MODE_READ, 0x100, 16);
        disable_dma(&mut dma, 2);
        check(&mut dma, &mut ram, 2);
        assert_eq!(current(&mut dma, 2), (0x100, 15), "registers unchanged");

        for mode in [MODE_VERIFY | MODE_SINGLE, MODE_CASCADE | MODE_WRITE, 0x4c] {
            program(&mut dma, 2, mode, 0x100, 16);
            check(&mut dma, &mut ram, 2);
        }

        program(&mut dma, 2, DMA_MODE_READ, 0x100, 16);
        dma.write(0x08, CMD_CONTROLLER_DISABLE);
        check(&mut dma, &mut ram, 2);
        dma.write(0x08, 0);
        assert!(dma.ready(2));

        dma.write(0x0f, 0x04); // write all mask bits
        check(&mut dma, &mut ram, 2);

        program(&mut dma, 4, DMA_MODE_READ, 0x100, 16);
        check(&mut dma, &mut ram, 4);
        for channel in [8, 9, 200, 255] {
            check(&mut dma, &mut ram, channel);
        }
        assert_eq!(ram.at(0, 0x1_0000).iter().filter(|&&b| b != 0).count(), 0);
    }

    #[test]
    fn dma1_does_not_depend_on_the_cascade_channel() {
        let mut dma = IsaDma::new();
        let mut ram = Ram::new(0x1_0000);
        dma.write(0xd0, CMD_CONTROLLER_DISABLE);
        program(&mut dma, 2, DMA_MODE_READ, 0x100, 1);
        assert_eq!(dma.write_to_memory(2, &[1], &mut ram), 1);
    }

    #[test]
    fn bytes_outside_ram_are_dropped_or_float_but_counted() {
        let mut dma = IsaDma::new();
        let mut ram = Ram::new(0x1_0000);
        program(&mut dma, 2, DMA_MODE_READ, 0x1_fffc, 8);
        assert_eq!(dma.write_to_memory(2, &[1; 8], &mut ram), 8, "all outside");
        assert!(dma.terminal_count(2));

        // The page wrap takes the rest back into RAM, not past its end.
        let mut ram = Ram::new(0x1_0002);
        program(&mut dma, 2, DMA_MODE_READ, 0xfffe, 4);
        assert_eq!(dma.write_to_memory(2, &[1, 2, 3, 4], &mut ram), 4);
        assert_eq!(ram.at(0xfffe, 4), &[1, 2, 0, 0], "wrapped to 0x0000");
        assert_eq!(ram.at(0, 2), &[3, 4]);

        let mut ram = Ram::new(0x1_0000);
        assert!(ram.write(0xfffe, &[7, 8]));
        program(&mut dma, 6, DMA_MODE_WRITE, 0xfffc, 8);
        let mut buf = [0; 8];
        assert_eq!(dma.read_from_memory(6, &mut buf, &ram), 8);
        assert_eq!(buf, [0, 0, 7, 8, 0xff, 0xff, 0xff, 0xff]);

        // A write that straddles the end of RAM keeps the part inside.
        let mut ram = Ram::new(0x1_0000);
        program(&mut dma, 5, DMA_MODE_READ, 0xfffc, 8);
        assert_eq!(
            dma.write_to_memory(5, &[1, 2, 3, 4, 5, 6, 7, 8], &mut ram),
            8
        );
        assert_eq!(ram.at(0xfffc, 4), &[1, 2, 3, 4]);
    }

    #[test]
    fn page_and_scratch_registers_read_back() {
        let mut dma = IsaDma::new();
        for port in PAGE_FIRST..=PAGE_LAST {
            let value = bytes(u32::from(port) * 3)[0];
            dma.write(port, value);
        }
        for port in PAGE_FIRST..=PAGE_LAST {
            assert_eq!(dma.read(port), bytes(u32::from(port) * 3)[0]);
        }
        dma.reset();
        assert_eq!(dma.read(0x87), 0, "Linux's i8237A check: not 0xFF");
    }

    #[test]
    fn claims_the_controllers_and_page_registers_but_not_the_post_port() {
        let claimed: Vec<u16> = (0..=u16::MAX)
            .filter(|&port| IsaDma::claims(port))
            .collect();
        let mut expected: Vec<u16> = (0x00..=0x0f).collect();
        expected.extend(0x81..=0x8f);
        expected.extend((0xc0..=0xde).step_by(2));
        assert_eq!(claimed, expected);
        assert!(!IsaDma::claims(0x80));
        assert!(!IsaDma::claims(0xc1));
    }

    #[test]
    fn temporary_register_reads_zero_and_write_only_registers_float() {
        let mut dma = IsaDma::new();
        assert_eq!(dma.read(0x0d), 0);
        assert_eq!(dma.read(0xda), 0);
        for reg in [0x09, 0x0a, 0x0b, 0x0c, 0x0e, 0x0f] {
            assert_eq!(dma.read(reg), 0xff);
            assert_eq!(dma.read(DMA2_BASE + 2 * reg), 0xff);
        }
        assert_eq!(dma.read(0xc1), 0xff, "odd DMA2 port");
        assert_eq!(dma.read(0x80), 0xff, "not ours");
    }

    #[test]
    fn reset_restores_power_on() {
        let mut dma = IsaDma::new();
        let mut ram = Ram::new(0x1_0000);
        program(&mut dma, 2, DMA_MODE_READ, 0x100, 1);
        assert_eq!(dma.write_to_memory(2, &[1], &mut ram), 1);
        dma.write(0x04, 0x12);
        dma.write(0x8f, 0x34);
        dma.reset();
        assert_eq!(dma, IsaDma::default());
        assert!(!dma.ready(2));
        assert!(!dma.terminal_count(2));
    }

    /// What a test step does.
    #[derive(Clone, Debug)]
    enum Step {
        Read(u16),
        Write(u16, u8),
        ToMemory(u8, usize),
        FromMemory(u8, usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        // Mostly ports the controllers claim, so that transfers get set up.
        let port = prop_oneof![0x00u16..=0x0f, 0x80u16..=0x8f, 0xc0u16..=0xdf, any::<u16>(),];
        prop_oneof![
            1 => port.clone().prop_map(Step::Read),
            4 => (port, any::<u8>()).prop_map(|(port, value)| Step::Write(port, value)),
            1 => (0u8..10, 0usize..70_000).prop_map(|(channel, len)| Step::ToMemory(channel, len)),
            1 => (0u8..10, 0usize..70_000)
                .prop_map(|(channel, len)| Step::FromMemory(channel, len)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn no_port_access_or_transfer_panics(steps in prop::collection::vec(step(), 0..200)) {
            let mut dma = IsaDma::new();
            // Smaller than the 16 MiB DMA reaches: transfers run off RAM.
            let mut ram = Ram::new(0x10_0000);
            for step in steps {
                match step {
                    Step::Read(port) => {
                        let _ = dma.read(port);
                    }
                    Step::Write(port, value) => dma.write(port, value),
                    Step::ToMemory(channel, len) => {
                        let ready = dma.ready(channel);
                        let moved = dma.write_to_memory(channel, &vec![0xa5; len], &mut ram);
                        prop_assert!(moved <= len.min(0x2_0000));
                        prop_assert!(ready || moved == 0);
                        prop_assert!(channel < 4 || moved.is_multiple_of(2));
                    }
                    Step::FromMemory(channel, len) => {
                        let mut buf = vec![0; len];
                        let ready = dma.ready(channel);
                        let moved = dma.read_from_memory(channel, &mut buf, &ram);
                        prop_assert!(moved <= len.min(0x2_0000));
                        prop_assert!(ready || moved == 0);
                        prop_assert!(channel < 4 || moved.is_multiple_of(2));
                    }
                }
            }
        }
    }
}
