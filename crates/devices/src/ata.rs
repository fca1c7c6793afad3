//! An ATA (IDE) disk on a legacy channel: the task file at 0x1F0-0x1F7,
//! the alternate status and device control register at 0x3F6, IRQ 14,
//! PIO data transfers, one device (device 0, the master) behind a
//! [`BlockBackend`] that holds the sectors.
//!
//! What a guest can do, as ATA/ATAPI-7 volume 1 describes it: IDENTIFY
//! DEVICE; READ and WRITE SECTORS and READ and WRITE MULTIPLE in 28-bit
//! (and CHS) and 48-bit addressing; SET MULTIPLE MODE; FLUSH CACHE (EXT),
//! which flushes the backend; SET FEATURES (transfer mode, write cache,
//! read look-ahead); INITIALIZE DEVICE PARAMETERS; READ VERIFY; EXECUTE
//! DEVICE DIAGNOSTIC; the power-management commands that need no state;
//! software reset through SRST with the device signature after it; and
//! INTRQ with nIEN. Everything else is aborted (ERR, ABRT), as a device
//! does with a command it does not implement. Commands complete at once:
//! BSY is never seen, and a write's data is in the backend before its
//! completion is.
//!
//! Device 1 (the slave) is absent: with it selected, status reads 0 and
//! commands are ignored, as on a channel with one drive (the task-file
//! registers are shared, so the others read back what was written).

use std::io;

/// Bytes in a sector.
pub const SECTOR_BYTES: usize = 512;

/// The primary channel's command block.
pub const PRIMARY_COMMAND: u16 = 0x1f0;
/// The primary channel's control block (alternate status, device control).
pub const PRIMARY_CONTROL: u16 = 0x3f6;
/// The primary channel's IRQ.
pub const PRIMARY_IRQ: u8 = 14;

/// Most sectors a READ/WRITE MULTIPLE moves per DRQ block.
const MAX_MULTIPLE: u16 = 16;

/// Status register bits.
mod status {
    pub const ERR: u8 = 0x01;
    pub const DRQ: u8 = 0x08;
    /// Device seek complete (obsolete, still set by drives and expected).
    pub const DSC: u8 = 0x10;
    /// Device fault.
    pub const DF: u8 = 0x20;
    pub const DRDY: u8 = 0x40;
}

/// Error register bits.
mod error {
    pub const ABRT: u8 = 0x04;
    /// ID not found: an address beyond the last sector.
    pub const IDNF: u8 = 0x10;
    /// Uncorrectable data: the backend could not read or write.
    pub const UNC: u8 = 0x40;
}

/// Device control register bits.
mod control {
    pub const NIEN: u8 = 0x02;
    pub const SRST: u8 = 0x04;
    pub const HOB: u8 = 0x80;
}

/// The device/head register's device-select bit and LBA-mode bit.
const DEV: u8 = 0x10;
const LBA: u8 = 0x40;

/// Where a disk's sectors live: an image file in the VMM.
pub trait BlockBackend: Send {
    /// Sectors of [`SECTOR_BYTES`].
    fn sectors(&self) -> u64;
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// Reads whole sectors from `lba` into `buf`.
    ///
    /// # Errors
    ///
    /// The backend's I/O error.
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes whole sectors at `lba`; they are in the backend (the host's
    /// page cache for a file) when this returns.
    ///
    /// # Errors
    ///
    /// The backend's I/O error.
    fn write(&mut self, lba: u64, data: &[u8]) -> io::Result<()>;
    /// Makes what was written durable (fsync for a file).
    ///
    /// # Errors
    ///
    /// The backend's I/O error.
    fn flush(&mut self) -> io::Result<()>;
}

/// Sectors in memory: for tests.
#[derive(Clone, Debug, Default)]
pub struct MemoryBackend {
    /// The disk's bytes (a whole number of sectors).
    pub bytes: Vec<u8>,
    /// Whether writes are refused.
    pub read_only: bool,
}

impl BlockBackend for MemoryBackend {
    fn sectors(&self) -> u64 {
        (self.bytes.len() / SECTOR_BYTES) as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(&mut self, lba: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(lba).map_err(io::Error::other)? * SECTOR_BYTES;
        let source = self
            .bytes
            .get(start..start + buf.len())
            .ok_or_else(|| io::Error::other("past the end"))?;
        buf.copy_from_slice(source);
        Ok(())
    }

    fn write(&mut self, lba: u64, data: &[u8]) -> io::Result<()> {
        let start = usize::try_from(lba).map_err(io::Error::other)? * SECTOR_BYTES;
        let target = self
            .bytes
            .get_mut(start..start + data.len())
            .ok_or_else(|| io::Error::other("past the end"))?;
        target.copy_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A task-file register with the value written before it (48-bit
/// commands read both: the "previous" one is the high-order byte).
#[derive(Clone, Copy, Debug, Default)]
struct Latched {
    current: u8,
    previous: u8,
}

impl Latched {
    fn write(&mut self, value: u8) {
        self.previous = self.current;
        self.current = value;
    }

    fn read(self, hob: bool) -> u8 {
        if hob { self.previous } else { self.current }
    }

    fn set(&mut self, value: u8) {
        self.current = value;
    }
}

/// What a PIO transfer under way is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transfer {
    /// No data phase.
    None,
    /// IDENTIFY's block to the host.
    Identify,
    /// Sectors to the host: the next block starts at `lba`, `left`
    /// sectors to go after the buffered block.
    Read { lba: u64, left: u64 },
    /// Sectors from the host: the buffered block goes to `lba`, `left`
    /// sectors to come after it.
    Write { lba: u64, left: u64 },
}

/// The disk and its channel.
pub struct AtaDisk {
    backend: Box<dyn BlockBackend>,
    /// The 40-character model string (IDENTIFY words 27-46).
    model: String,
    /// The 20-character serial number (words 10-19).
    serial: String,
    features: Latched,
    sector_count: Latched,
    lba_low: Latched,
    lba_mid: Latched,
    lba_high: Latched,
    device: u8,
    status: u8,
    error: u8,
    control: u8,
    /// INTRQ as the device drives it (before nIEN).
    interrupt: bool,
    transfer: Transfer,
    /// The DRQ block: `buffer[..len]`, `pos` bytes moved so far.
    buffer: Vec<u8>,
    len: usize,
    pos: usize,
    /// Sectors per DRQ block of READ/WRITE MULTIPLE (0: not set).
    multiple: u16,
    /// Sectors per DRQ block of the command under way.
    block_sectors: u16,
    write_cache: bool,
}

impl std::fmt::Debug for AtaDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtaDisk")
            .field("sectors", &self.backend.sectors())
            .field("status", &self.status)
            .field("transfer", &self.transfer)
            .finish_non_exhaustive()
    }
}

impl AtaDisk {
    /// A disk over `backend`, its IDENTIFY naming `serial` (at most 20
    /// characters are kept).
    pub fn new(backend: Box<dyn BlockBackend>, serial: &str) -> Self {
        let mut disk = Self {
            backend,
            model: "btvmm ATA disk".into(),
            serial: serial.chars().take(20).collect(),
            features: Latched::default(),
            sector_count: Latched::default(),
            lba_low: Latched::default(),
            lba_mid: Latched::default(),
            lba_high: Latched::default(),
            device: 0,
            status: 0,
            error: 0,
            control: 0,
            interrupt: false,
            transfer: Transfer::None,
            buffer: vec![0; usize::from(MAX_MULTIPLE) * SECTOR_BYTES],
            len: 0,
            pos: 0,
            multiple: 0,
            block_sectors: 1,
            write_cache: true,
        };
        disk.power_on();
        disk
    }

    /// The device's sectors.
    #[must_use]
    pub fn sectors(&self) -> u64 {
        self.backend.sectors()
    }

    /// Power-on (a reset of the PC): as after a software reset, with the
    /// channel's interrupts enabled, the write cache on and READ/WRITE
    /// MULTIPLE moving 16 sectors a block (IDENTIFY word 59 says so, and
    /// Linux's libata then uses them: one interrupt per 8 KiB instead of
    /// per sector; QEMU's IDE disk powers up the same way). A software
    /// reset keeps the multiple setting.
    pub fn power_on(&mut self) {
        self.control = 0;
        self.write_cache = true;
        self.multiple = MAX_MULTIPLE;
        self.reset();
    }

    /// Power-on or software reset: the device signature of an ATA device
    /// in the task file, diagnostics passed.
    fn reset(&mut self) {
        self.sector_count = Latched {
            current: 1,
            previous: 0,
        };
        self.lba_low = Latched {
            current: 1,
            previous: 0,
        };
        self.lba_mid = Latched::default();
        self.lba_high = Latched::default();
        self.features = Latched::default();
        self.device = 0;
        self.error = 0x01;
        self.status = status::DRDY | status::DSC;
        self.transfer = Transfer::None;
        self.len = 0;
        self.pos = 0;
        self.interrupt = false;
    }

    fn selected(&self) -> bool {
        self.device & DEV == 0
    }

    /// INTRQ on the IRQ line: the device's, unless nIEN masks it or the
    /// absent device is selected.
    #[must_use]
    pub fn irq_level(&self) -> bool {
        self.interrupt && self.control & control::NIEN == 0 && self.selected()
    }

    /// Whether `port` is one of the channel's.
    #[must_use]
    pub fn claims(port: u16) -> bool {
        (PRIMARY_COMMAND..PRIMARY_COMMAND + 8).contains(&port) || port == PRIMARY_CONTROL
    }

    /// IN from one of the channel's ports.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        if port == PRIMARY_COMMAND {
            let mut bytes = [0u8; 4];
            let size = usize::from(size.clamp(1, 4));
            self.read_data(&mut bytes[..size]);
            return u32::from_le_bytes(bytes);
        }
        let hob = self.control & control::HOB != 0;
        let value = match port {
            0x1f1 => self.error,
            0x1f2 => self.sector_count.read(hob),
            0x1f3 => self.lba_low.read(hob),
            0x1f4 => self.lba_mid.read(hob),
            0x1f5 => self.lba_high.read(hob),
            0x1f6 => self.device | 0xa0,
            0x1f7 => {
                if !self.selected() {
                    return 0;
                }
                self.interrupt = false;
                self.status
            }
            PRIMARY_CONTROL => {
                if !self.selected() {
                    return 0;
                }
                self.status
            }
            _ => 0xff,
        };
        u32::from(value)
    }

    /// OUT to one of the channel's ports.
    pub fn write(&mut self, port: u16, size: u8, value: u32) {
        if port == PRIMARY_COMMAND {
            let size = usize::from(size.clamp(1, 4));
            self.write_data(&value.to_le_bytes()[..size]);
            return;
        }
        #[allow(clippy::cast_possible_truncation)] // byte registers
        let byte = value as u8;
        // A write to the command block clears HOB.
        if port != PRIMARY_CONTROL {
            self.control &= !control::HOB;
        }
        match port {
            0x1f1 => self.features.write(byte),
            0x1f2 => self.sector_count.write(byte),
            0x1f3 => self.lba_low.write(byte),
            0x1f4 => self.lba_mid.write(byte),
            0x1f5 => self.lba_high.write(byte),
            0x1f6 => self.device = byte & 0x5f,
            0x1f7 if self.selected() => self.command(byte),
            PRIMARY_CONTROL => {
                let was_reset = self.control & control::SRST != 0;
                self.control = byte;
                if byte & control::SRST != 0 && !was_reset {
                    self.reset();
                }
            }
            _ => {}
        }
    }

    /// Reads from the data register: the next bytes of the DRQ block (all
    /// ones when no transfer to the host is under way).
    pub fn read_data(&mut self, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            if self.status & status::DRQ == 0
                || !matches!(self.transfer, Transfer::Identify | Transfer::Read { .. })
            {
                out[done..].fill(0xff);
                return;
            }
            let n = (out.len() - done).min(self.len - self.pos);
            out[done..done + n].copy_from_slice(&self.buffer[self.pos..self.pos + n]);
            self.pos += n;
            done += n;
            if self.pos == self.len {
                self.block_read();
            }
        }
    }

    /// Writes to the data register: the next bytes of the DRQ block
    /// (dropped when no transfer from the host is under way).
    pub fn write_data(&mut self, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            if self.status & status::DRQ == 0 || !matches!(self.transfer, Transfer::Write { .. }) {
                return;
            }
            let n = (data.len() - done).min(self.len - self.pos);
            self.buffer[self.pos..self.pos + n].copy_from_slice(&data[done..done + n]);
            self.pos += n;
            done += n;
            if self.pos == self.len {
                self.block_written();
            }
        }
    }

    /// The host took the whole DRQ block: the next, or the end.
    fn block_read(&mut self) {
        match self.transfer {
            Transfer::Read { lba, left } if left > 0 => self.load_block(lba, left),
            _ => self.finish(),
        }
    }

    /// The host gave the whole DRQ block: into the backend, then the next
    /// or the end.
    fn block_written(&mut self) {
        let Transfer::Write { lba, left } = self.transfer else {
            return;
        };
        let sectors = self.len / SECTOR_BYTES;
        if self.backend.write(lba, &self.buffer[..self.len]).is_err() {
            self.fail(error::UNC);
            return;
        }
        if left == 0 {
            self.finish();
            self.interrupt = true;
            return;
        }
        let next = lba + sectors as u64;
        self.expect_block(next, left);
        self.interrupt = true;
    }

    /// The command is over without error.
    fn finish(&mut self) {
        self.transfer = Transfer::None;
        self.status = status::DRDY | status::DSC;
        self.len = 0;
        self.pos = 0;
    }

    /// The command ends with ERR and `bits` in the error register.
    fn fail(&mut self, bits: u8) {
        self.transfer = Transfer::None;
        self.error = bits;
        self.status = status::DRDY | status::DSC | status::ERR;
        self.len = 0;
        self.pos = 0;
        self.interrupt = true;
    }

    /// Completes a command with no data phase.
    fn complete(&mut self) {
        self.finish();
        self.error = 0;
        self.interrupt = true;
    }

    /// Fills the DRQ block from `lba` (`total` sectors still to send, the
    /// block included) and raises INTRQ.
    fn load_block(&mut self, lba: u64, total: u64) {
        let sectors = total.min(u64::from(self.block_sectors));
        #[allow(clippy::cast_possible_truncation)] // at most MAX_MULTIPLE
        let len = sectors as usize * SECTOR_BYTES;
        if self.backend.read(lba, &mut self.buffer[..len]).is_err() {
            self.fail(error::UNC);
            return;
        }
        self.len = len;
        self.pos = 0;
        self.transfer = Transfer::Read {
            lba: lba + sectors,
            left: total - sectors,
        };
        self.status = status::DRDY | status::DSC | status::DRQ;
        self.interrupt = true;
    }

    /// Opens a DRQ block for the host's data to `lba` (`total` sectors
    /// still to come, the block included).
    fn expect_block(&mut self, lba: u64, total: u64) {
        let sectors = total.min(u64::from(self.block_sectors));
        #[allow(clippy::cast_possible_truncation)] // at most MAX_MULTIPLE
        let len = sectors as usize * SECTOR_BYTES;
        self.len = len;
        self.pos = 0;
        self.transfer = Transfer::Write {
            lba,
            left: total - sectors,
        };
        self.status = status::DRDY | status::DSC | status::DRQ;
    }

    /// The command's address and count: 48-bit from both halves of the
    /// registers, 28-bit LBA or CHS from their current values.
    fn address(&self, ext: bool) -> Option<(u64, u64)> {
        if ext {
            let lba = u64::from(self.lba_low.current)
                | u64::from(self.lba_mid.current) << 8
                | u64::from(self.lba_high.current) << 16
                | u64::from(self.lba_low.previous) << 24
                | u64::from(self.lba_mid.previous) << 32
                | u64::from(self.lba_high.previous) << 40;
            let count =
                u64::from(self.sector_count.current) | u64::from(self.sector_count.previous) << 8;
            return Some((lba, if count == 0 { 65536 } else { count }));
        }
        let count = match self.sector_count.current {
            0 => 256,
            n => u64::from(n),
        };
        if self.device & LBA != 0 {
            let lba = u64::from(self.lba_low.current)
                | u64::from(self.lba_mid.current) << 8
                | u64::from(self.lba_high.current) << 16
                | u64::from(self.device & 0x0f) << 24;
            return Some((lba, count));
        }
        // CHS: 16 heads, 63 sectors a track, as IDENTIFY says.
        let cylinder = u64::from(self.lba_mid.current) | u64::from(self.lba_high.current) << 8;
        let head = u64::from(self.device & 0x0f);
        let sector = u64::from(self.lba_low.current);
        if sector == 0 || sector > 63 {
            return None;
        }
        Some(((cylinder * 16 + head) * 63 + sector - 1, count))
    }

    /// Starts a read or write of sectors.
    fn transfer_command(&mut self, write: bool, ext: bool, multiple: bool) {
        if multiple && self.multiple == 0 {
            self.fail(error::ABRT);
            return;
        }
        let Some((lba, count)) = self.address(ext) else {
            self.fail(error::IDNF);
            return;
        };
        if lba
            .checked_add(count)
            .is_none_or(|end| end > self.backend.sectors())
        {
            self.fail(error::IDNF);
            return;
        }
        if write && self.backend.read_only() {
            self.fail(error::ABRT);
            return;
        }
        self.error = 0;
        self.block_sectors = if multiple { self.multiple } else { 1 };
        if write {
            // The first block is asked for without an interrupt.
            self.expect_block(lba, count);
        } else {
            self.load_block(lba, count);
        }
    }

    fn command(&mut self, command: u8) {
        match command {
            0xec => self.identify(),
            0x20 | 0x21 => self.transfer_command(false, false, false),
            0x24 => self.transfer_command(false, true, false),
            0x30 | 0x31 => self.transfer_command(true, false, false),
            0x34 => self.transfer_command(true, true, false),
            0xc4 => self.transfer_command(false, false, true),
            0x29 => self.transfer_command(false, true, true),
            0xc5 => self.transfer_command(true, false, true),
            0x39 => self.transfer_command(true, true, true),
            // READ VERIFY SECTORS (EXT): nothing to move, only the range.
            0x40..=0x42 => match self.address(command == 0x42) {
                Some((lba, count)) if lba + count <= self.backend.sectors() => self.complete(),
                _ => self.fail(error::IDNF),
            },
            0xc6 => {
                let count = u16::from(self.sector_count.current);
                if count <= MAX_MULTIPLE && count.is_power_of_two() {
                    self.multiple = count;
                    self.complete();
                } else if count == 0 {
                    self.multiple = 0;
                    self.complete();
                } else {
                    self.fail(error::ABRT);
                }
            }
            0xe7 | 0xea => {
                if self.backend.flush().is_ok() {
                    self.complete();
                } else {
                    self.error = error::ABRT;
                    self.transfer = Transfer::None;
                    self.status = status::DRDY | status::DSC | status::ERR | status::DF;
                    self.interrupt = true;
                }
            }
            0xef => self.set_features(),
            // INITIALIZE DEVICE PARAMETERS: the geometry is fixed; the
            // one IDENTIFY gives is accepted.
            0x91 => self.complete(),
            // RECALIBRATE.
            0x10..=0x1f => self.complete(),
            // EXECUTE DEVICE DIAGNOSTIC: passed, signature in place.
            0x90 => {
                self.reset();
                self.interrupt = true;
            }
            // STANDBY IMMEDIATE, IDLE IMMEDIATE, STANDBY, IDLE, SLEEP:
            // nothing spins.
            0xe0..=0xe3 | 0x94..=0x97 | 0xe6 => self.complete(),
            // CHECK POWER MODE: active or idle.
            0xe5 | 0x98 => {
                self.complete();
                self.sector_count.set(0xff);
            }
            // IDENTIFY PACKET DEVICE on an ATA device: aborted, with the
            // signature left for the host to classify it.
            0xa1 => {
                self.fail(error::ABRT);
                self.sector_count.set(1);
                self.lba_low.set(1);
                self.lba_mid.set(0);
                self.lba_high.set(0);
            }
            _ => self.fail(error::ABRT),
        }
    }

    fn set_features(&mut self) {
        match self.features.current {
            // Set transfer mode: PIO modes (default, 0-4) only.
            0x03 => {
                let mode = self.sector_count.current;
                if mode <= 0x01 || (0x08..=0x0c).contains(&mode) {
                    self.complete();
                } else {
                    self.fail(error::ABRT);
                }
            }
            0x02 => {
                self.write_cache = true;
                self.complete();
            }
            0x82 => {
                // Writes reach the backend before they complete anyway.
                self.write_cache = false;
                self.complete();
            }
            // Read look-ahead on and off; reverting to power-on defaults.
            0xaa | 0x55 | 0xcc | 0x66 => self.complete(),
            _ => self.fail(error::ABRT),
        }
    }

    fn identify(&mut self) {
        let words = self.identify_words();
        for (chunk, word) in self.buffer.chunks_exact_mut(2).zip(words) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        self.len = SECTOR_BYTES;
        self.pos = 0;
        self.error = 0;
        self.transfer = Transfer::Identify;
        self.status = status::DRDY | status::DSC | status::DRQ;
        self.interrupt = true;
    }

    /// IDENTIFY DEVICE's 256 words.
    #[must_use]
    pub fn identify_words(&self) -> [u16; 256] {
        let mut id = [0u16; 256];
        let sectors = self.backend.sectors();
        let (cylinders, heads, per_track) = (
            u16::try_from(sectors / (16 * 63))
                .unwrap_or(16383)
                .min(16383),
            16u16,
            63u16,
        );
        id[0] = 0x0040; // fixed, not removable
        id[1] = cylinders;
        id[3] = heads;
        id[6] = per_track;
        put_string(&mut id[10..20], &self.serial);
        put_string(&mut id[23..27], env!("CARGO_PKG_VERSION"));
        put_string(&mut id[27..47], &self.model);
        id[47] = 0x8000 | MAX_MULTIPLE;
        id[49] = 0x0200; // LBA
        id[50] = 0x4000;
        id[51] = 0x0200; // PIO timing mode 2 (obsolete field)
        id[53] = 0x0003; // words 54-58 and 64-70 valid
        id[54] = cylinders;
        id[55] = heads;
        id[56] = per_track;
        let chs = u32::from(cylinders) * u32::from(heads) * u32::from(per_track);
        id[57] = (chs & 0xffff) as u16;
        id[58] = (chs >> 16) as u16;
        id[59] = if self.multiple > 0 {
            0x0100 | self.multiple
        } else {
            0
        };
        let lba28 = u32::try_from(sectors.min(0x0fff_ffff)).unwrap_or(0x0fff_ffff);
        id[60] = (lba28 & 0xffff) as u16;
        id[61] = (lba28 >> 16) as u16;
        id[64] = 0x0003; // PIO modes 3 and 4
        id[65] = 120;
        id[66] = 120;
        id[67] = 120;
        id[68] = 120;
        id[80] = 0x00f0; // ATA/ATAPI-4 to -7
        // Supported: write cache and look-ahead; NOP not; then the
        // mandatory bit 14 with FLUSH CACHE (EXT) and 48-bit addressing.
        id[82] = 0x0060;
        id[83] = 0x4000 | 0x2000 | 0x1000 | 0x0400;
        id[84] = 0x4000;
        id[85] = 0x0040 | if self.write_cache { 0x0020 } else { 0 };
        id[86] = 0x2000 | 0x1000 | 0x0400;
        id[87] = 0x4000;
        for (index, word) in id[100..104].iter_mut().enumerate() {
            #[allow(clippy::cast_possible_truncation)] // 16 bits a word
            let part = (sectors >> (16 * index)) as u16;
            *word = part;
        }
        // Integrity word: signature 0xa5 and a checksum making all 512
        // bytes sum to zero.
        id[255] = 0x00a5;
        let sum = id
            .iter()
            .flat_map(|word| word.to_le_bytes())
            .fold(0u8, u8::wrapping_add);
        id[255] |= u16::from(sum.wrapping_neg()) << 8;
        id
    }
}

/// ATA strings: two characters a word, the first in the high byte, padded
/// with spaces.
fn put_string(words: &mut [u16], text: &str) {
    let mut bytes = text.bytes().chain(std::iter::repeat(b' '));
    for word in words {
        let high = bytes.next().unwrap_or(b' ');
        let low = bytes.next().unwrap_or(b' ');
        *word = u16::from(high) << 8 | u16::from(low);
    }
}

#[cfg(test)]
// Test values are small and known.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    const SECTORS: usize = 20_000;

    fn disk() -> AtaDisk {
        let mut bytes = vec![0; SECTORS * SECTOR_BYTES];
        for (sector, chunk) in bytes.chunks_exact_mut(SECTOR_BYTES).enumerate() {
            chunk[..8].copy_from_slice(&(sector as u64).to_le_bytes());
        }
        AtaDisk::new(
            Box::new(MemoryBackend {
                bytes,
                ..MemoryBackend::default()
            }),
            "BTVMM-TEST",
        )
    }

    fn status(disk: &mut AtaDisk) -> u8 {
        disk.read(0x1f7, 1) as u8
    }

    fn lba28(disk: &mut AtaDisk, lba: u32, count: u8) {
        disk.write(0x1f6, 1, 0xe0 | (lba >> 24) & 0x0f);
        disk.write(0x1f2, 1, u32::from(count));
        disk.write(0x1f3, 1, lba & 0xff);
        disk.write(0x1f4, 1, (lba >> 8) & 0xff);
        disk.write(0x1f5, 1, (lba >> 16) & 0xff);
    }

    fn lba48(disk: &mut AtaDisk, lba: u64, count: u16) {
        disk.write(0x1f6, 1, 0x40);
        disk.write(0x1f2, 1, u32::from(count >> 8));
        disk.write(0x1f3, 1, ((lba >> 24) & 0xff) as u32);
        disk.write(0x1f4, 1, ((lba >> 32) & 0xff) as u32);
        disk.write(0x1f5, 1, ((lba >> 40) & 0xff) as u32);
        disk.write(0x1f2, 1, u32::from(count & 0xff));
        disk.write(0x1f3, 1, (lba & 0xff) as u32);
        disk.write(0x1f4, 1, ((lba >> 8) & 0xff) as u32);
        disk.write(0x1f5, 1, ((lba >> 16) & 0xff) as u32);
    }

    fn read_block(disk: &mut AtaDisk, sectors: usize) -> Vec<u8> {
        let mut out = vec![0; sectors * SECTOR_BYTES];
        for word in out.chunks_exact_mut(2) {
            word.copy_from_slice(&(disk.read(0x1f0, 2) as u16).to_le_bytes());
        }
        out
    }

    fn sector_number(block: &[u8]) -> u64 {
        u64::from_le_bytes(block[..8].try_into().expect("8 bytes"))
    }

    #[test]
    fn power_on_shows_an_ata_signature_and_a_ready_device() {
        let mut disk = disk();
        assert_eq!(disk.read(0x1f2, 1), 1);
        assert_eq!(disk.read(0x1f3, 1), 1);
        assert_eq!(disk.read(0x1f4, 1), 0);
        assert_eq!(disk.read(0x1f5, 1), 0);
        assert_eq!(disk.read(0x1f1, 1), 1, "diagnostics passed");
        assert_eq!(status(&mut disk), 0x50);
        assert!(!disk.irq_level());
    }

    #[test]
    fn identify_describes_the_disk_and_raises_intrq() {
        let mut disk = disk();
        disk.write(0x1f6, 1, 0xa0);
        disk.write(0x1f7, 1, 0xec);
        assert!(disk.irq_level());
        assert_eq!(disk.read(0x3f6, 1), 0x58, "alternate status: DRQ");
        assert!(disk.irq_level(), "alternate status leaves INTRQ");
        assert_eq!(status(&mut disk), 0x58);
        assert!(!disk.irq_level(), "status clears INTRQ");
        let block = read_block(&mut disk, 1);
        let word = |n: usize| u16::from_le_bytes([block[2 * n], block[2 * n + 1]]);
        assert_eq!(word(0), 0x0040);
        assert_eq!(
            u32::from(word(60)) | u32::from(word(61)) << 16,
            SECTORS as u32
        );
        assert_eq!(word(100), SECTORS as u16);
        assert_eq!(word(83) & 0x0400, 0x0400, "48-bit addressing");
        assert_eq!(word(47) & 0xff, 16, "READ MULTIPLE up to 16 sectors");
        // Model: "bt" in word 27, high byte first.
        assert_eq!(word(27), u16::from(b'b') << 8 | u16::from(b't'));
        assert_eq!(
            block.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte)),
            0,
            "the integrity word's checksum"
        );
        assert_eq!(status(&mut disk), 0x50, "DRQ over after 256 words");
    }

    #[test]
    fn read_sectors_lba28_sends_each_sector_with_an_interrupt() {
        let mut disk = disk();
        lba28(&mut disk, 1234, 3);
        disk.write(0x1f7, 1, 0x20);
        for sector in 1234..1237 {
            assert!(disk.irq_level());
            assert_eq!(status(&mut disk) & 0x08, 0x08);
            assert_eq!(sector_number(&read_block(&mut disk, 1)), sector);
        }
        assert_eq!(status(&mut disk), 0x50);
        assert!(!disk.irq_level(), "no interrupt after the last read block");
    }

    #[test]
    fn write_sectors_lba48_lands_in_the_backend_before_completion() {
        let mut disk = disk();
        lba48(&mut disk, 19_990, 2);
        disk.write(0x1f7, 1, 0x34);
        assert!(!disk.irq_level(), "the first block is asked for at once");
        assert_eq!(status(&mut disk), 0x58);
        let mut data = vec![0xabu8; 2 * SECTOR_BYTES];
        data[SECTOR_BYTES] = 0xcd;
        for word in data.chunks_exact(2) {
            disk.write(0x1f0, 2, u32::from(u16::from_le_bytes([word[0], word[1]])));
        }
        assert!(disk.irq_level());
        assert_eq!(status(&mut disk), 0x50);
        lba48(&mut disk, 19_990, 2);
        disk.write(0x1f7, 1, 0x24);
        let back = [read_block(&mut disk, 1), read_block(&mut disk, 1)].concat();
        assert_eq!(back, data);
    }

    #[test]
    fn multiple_mode_moves_blocks_of_sectors_and_can_be_turned_off() {
        let mut disk = disk();
        assert_eq!(disk.identify_words()[59], 0x0110, "16 at power-on");
        disk.write(0x1f2, 1, 0);
        disk.write(0x1f7, 1, 0xc6);
        assert_eq!(status(&mut disk), 0x50);
        assert_eq!(disk.identify_words()[59], 0);
        lba28(&mut disk, 0, 5);
        disk.write(0x1f7, 1, 0xc4);
        assert_eq!(
            status(&mut disk),
            0x51,
            "READ MULTIPLE with multiple mode off"
        );
        assert_eq!(disk.read(0x1f1, 1), 0x04);
        disk.write(0x1f2, 1, 4);
        disk.write(0x1f7, 1, 0xc6);
        assert_eq!(status(&mut disk), 0x50);
        assert_eq!(disk.identify_words()[59], 0x0104);
        lba28(&mut disk, 100, 5);
        disk.write(0x1f7, 1, 0xc4);
        assert!(disk.irq_level());
        status(&mut disk);
        let block = read_block(&mut disk, 4);
        assert_eq!(sector_number(&block[3 * SECTOR_BYTES..]), 103);
        assert!(disk.irq_level(), "the second block");
        status(&mut disk);
        assert_eq!(sector_number(&read_block(&mut disk, 1)), 104);
        assert_eq!(status(&mut disk), 0x50);
        disk.write(0x1f2, 1, 3);
        disk.write(0x1f7, 1, 0xc6);
        assert_eq!(status(&mut disk), 0x51, "not a power of two");
    }

    #[test]
    fn string_transfers_move_whole_blocks_at_once() {
        let mut disk = disk();
        lba28(&mut disk, 7, 2);
        disk.write(0x1f7, 1, 0x20);
        let mut both = vec![0; 2 * SECTOR_BYTES];
        disk.read_data(&mut both);
        assert_eq!(sector_number(&both), 7);
        assert_eq!(sector_number(&both[SECTOR_BYTES..]), 8);
        let mut more = [0u8; 4];
        disk.read_data(&mut more);
        assert_eq!(more, [0xff; 4], "nothing past the transfer");
    }

    #[test]
    fn addresses_past_the_end_and_unknown_commands_fail() {
        let mut disk = disk();
        lba28(&mut disk, SECTORS as u32 - 1, 2);
        disk.write(0x1f7, 1, 0x20);
        assert_eq!(status(&mut disk), 0x51);
        assert_eq!(disk.read(0x1f1, 1), 0x10, "IDNF");
        disk.write(0x1f7, 1, 0xb0); // SMART
        assert!(disk.irq_level());
        assert_eq!(status(&mut disk), 0x51);
        assert_eq!(disk.read(0x1f1, 1), 0x04, "ABRT");
        disk.write(0x1f1, 1, 0x03);
        disk.write(0x1f2, 1, 0x45); // UDMA mode 5: no DMA here
        disk.write(0x1f7, 1, 0xef);
        assert_eq!(status(&mut disk), 0x51);
        disk.write(0x1f2, 1, 0x0c); // PIO mode 4
        disk.write(0x1f7, 1, 0xef);
        assert_eq!(status(&mut disk), 0x50);
    }

    #[test]
    fn nien_masks_intrq_and_srst_resets_to_the_signature() {
        let mut disk = disk();
        disk.write(0x3f6, 1, 0x02);
        disk.write(0x1f7, 1, 0xe7);
        assert!(!disk.irq_level(), "nIEN");
        disk.write(0x3f6, 1, 0x00);
        assert!(disk.irq_level(), "INTRQ was pending");
        lba28(&mut disk, 99, 9);
        disk.write(0x3f6, 1, 0x04);
        disk.write(0x3f6, 1, 0x00);
        assert_eq!(disk.read(0x1f2, 1), 1);
        assert_eq!(disk.read(0x1f3, 1), 1);
        assert_eq!(status(&mut disk), 0x50);
    }

    /// Counts flushes where the test can see them.
    struct Flushes(std::sync::Arc<std::sync::atomic::AtomicU32>);

    impl BlockBackend for Flushes {
        fn sectors(&self) -> u64 {
            8
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read(&mut self, _: u64, _: &mut [u8]) -> io::Result<()> {
            Ok(())
        }
        fn write(&mut self, _: u64, _: &[u8]) -> io::Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
    }

    #[test]
    fn flush_cache_flushes_the_backend() {
        let flushes = std::sync::Arc::default();
        let mut disk = AtaDisk::new(Box::new(Flushes(std::sync::Arc::clone(&flushes))), "F");
        disk.write(0x1f7, 1, 0xe7);
        assert_eq!(status(&mut disk), 0x50);
        disk.write(0x1f7, 1, 0xea);
        assert_eq!(status(&mut disk), 0x50);
        assert_eq!(flushes.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[test]
    fn the_absent_device_1_shows_no_status_and_takes_no_commands() {
        let mut disk = disk();
        disk.write(0x1f6, 1, 0xb0);
        assert_eq!(status(&mut disk), 0);
        assert_eq!(disk.read(0x3f6, 1), 0);
        disk.write(0x1f7, 1, 0xec);
        assert!(!disk.irq_level());
        disk.write(0x1f6, 1, 0xa0);
        assert_eq!(status(&mut disk), 0x50, "device 0 ran nothing");
    }

    #[test]
    fn a_read_only_disk_aborts_writes() {
        let mut disk = AtaDisk::new(
            Box::new(MemoryBackend {
                bytes: vec![0; 8 * SECTOR_BYTES],
                read_only: true,
            }),
            "RO",
        );
        lba28(&mut disk, 0, 1);
        disk.write(0x1f7, 1, 0x30);
        assert_eq!(status(&mut disk), 0x51);
        assert_eq!(disk.read(0x1f1, 1), 0x04);
    }

    #[test]
    fn lba48_reads_back_the_high_bytes_with_hob() {
        let mut disk = disk();
        lba48(&mut disk, 0x0102_0304_0506, 0x0708);
        disk.write(0x3f6, 1, 0x80);
        assert_eq!(disk.read(0x1f3, 1), 0x03);
        assert_eq!(disk.read(0x1f2, 1), 0x07);
        disk.write(0x3f6, 1, 0x00);
        assert_eq!(disk.read(0x1f3, 1), 0x06);
    }
}
