//! A floppy disk controller, the Intel 82077AA in PC-AT mode, at
//! 0x3F0-0x3F5 and 0x3F7 with IRQ 6 and ISA DMA channel 2, and one 3.5"
//! 1.44 MB drive (drive 0) holding a disk image.
//!
//! What a guest can do, as the 82077AA datasheet describes it: the digital
//! output register (drive select, reset, DMA and interrupt gate, motors),
//! the tape drive register, the main status register and data rate select
//! register, the FIFO through which commands, their parameters and results
//! go (command, execution and result phases with RQM, DIO and CB), the
//! digital input register's disk change line and the configuration control
//! register. Commands: SPECIFY, SENSE DRIVE STATUS, SENSE INTERRUPT STATUS,
//! RECALIBRATE, SEEK and RELATIVE SEEK, READ DATA and WRITE DATA (with MT,
//! over DMA channel 2, ending at the DMA's terminal count or with "end of
//! cylinder" past the last sector), READ ID, FORMAT TRACK, DUMPREG,
//! CONFIGURE, PERPENDICULAR MODE, LOCK and UNLOCK, VERSION (0x90: an
//! 82077). Anything else is an invalid command (a one-byte result of 0x80)
//! as on the chip: so PART ID reads as an 82077AA, which is how Linux's
//! floppy driver tells it apart ("post-1991 82077"). A reset (DOR bit 2 or
//! DSR bit 7) ends with an interrupt and four SENSE INTERRUPT STATUS
//! results, one per drive, as with polling enabled.
//!
//! The disk: 80 cylinders, 2 heads, 18 sectors of 512 bytes, MFM at 500
//! kbit/s; another data rate, sector size or FM finds no sector (missing
//! address mark), as a real 1.44 MB disk would. The disk change line is
//! set at power-on and cleared by the first step (SEEK or RECALIBRATE) with
//! the disk in, as on a PC drive. A read-only image is write-protected.
//! Transfers are instantaneous: a command completes (and interrupts) as
//! soon as the DMA controller lets its data move, which the board does
//! right after the port access that started it ([`Fdc::run_dma`]). Drives
//! 1-3 are absent: commands to them find no drive (not ready, or equipment
//! check on RECALIBRATE). Not modelled: non-DMA (PIO) data transfers (a
//! read or write with SPECIFY's ND bit set ends with an abnormal
//! termination), VERIFY, READ TRACK, the deleted-data and SCAN commands
//! (invalid commands here), the PS/2 status registers A and B (they float
//! in PC-AT mode), implied seeks and power-down.

use std::collections::VecDeque;

use crate::ata::{BlockBackend, SECTOR_BYTES};
use crate::dma::{DmaMemory, IsaDma};

/// The controller's first port.
pub const BASE: u16 = 0x3f0;
/// Its IRQ.
pub const IRQ: u8 = 6;
/// Its ISA DMA channel.
pub const DMA_CHANNEL: u8 = 2;
/// The CMOS drive type of a 3.5" 1.44 MB drive (register 0x10).
pub const CMOS_DRIVE_TYPE: u8 = 4;

/// Register offsets from [`BASE`].
mod reg {
    pub const DOR: u16 = 2;
    pub const TDR: u16 = 3;
    /// Main status (read), data rate select (write).
    pub const MSR_DSR: u16 = 4;
    pub const FIFO: u16 = 5;
    /// Digital input (read), configuration control (write).
    pub const DIR_CCR: u16 = 7;
}

/// Digital output register bits.
mod dor {
    pub const DRIVE_SELECT: u8 = 0x03;
    /// 0 holds the controller in reset.
    pub const NOT_RESET: u8 = 0x04;
    /// Gates the interrupt and DMA request outputs.
    pub const DMA_GATE: u8 = 0x08;
}

/// Main status register bits.
mod msr {
    pub const CB: u8 = 0x10;
    pub const DIO: u8 = 0x40;
    pub const RQM: u8 = 0x80;
}

/// Status register 0.
mod st0 {
    pub const ABNORMAL: u8 = 0x40;
    pub const INVALID: u8 = 0x80;
    pub const SEEK_END: u8 = 0x20;
    pub const EQUIPMENT_CHECK: u8 = 0x10;
    pub const NOT_READY: u8 = 0x08;
    /// After a reset, with polling: the drive's ready line changed.
    pub const READY_CHANGED: u8 = 0xc0;
}

/// Status register 1.
mod st1 {
    pub const END_OF_CYLINDER: u8 = 0x80;
    pub const DATA_ERROR: u8 = 0x20;
    pub const OVERRUN: u8 = 0x10;
    pub const NO_DATA: u8 = 0x04;
    pub const NOT_WRITABLE: u8 = 0x02;
    pub const MISSING_ADDRESS_MARK: u8 = 0x01;
}

/// Status register 2.
mod st2 {
    pub const DATA_ERROR_IN_DATA: u8 = 0x20;
    pub const WRONG_CYLINDER: u8 = 0x10;
}

/// Status register 3.
mod st3 {
    pub const WRITE_PROTECTED: u8 = 0x40;
    pub const READY: u8 = 0x20;
    pub const TRACK_0: u8 = 0x10;
    pub const TWO_SIDED: u8 = 0x08;
}

/// Command codes (the low 5 bits where MT, MFM and SK ride in the top 3).
mod op {
    pub const SPECIFY: u8 = 0x03;
    pub const SENSE_DRIVE_STATUS: u8 = 0x04;
    pub const WRITE_DATA: u8 = 0x05;
    pub const READ_DATA: u8 = 0x06;
    pub const RECALIBRATE: u8 = 0x07;
    pub const SENSE_INTERRUPT: u8 = 0x08;
    pub const READ_ID: u8 = 0x0a;
    pub const FORMAT_TRACK: u8 = 0x0d;
    pub const DUMPREG: u8 = 0x0e;
    pub const SEEK: u8 = 0x0f;
    pub const VERSION: u8 = 0x10;
    pub const PERPENDICULAR: u8 = 0x12;
    pub const CONFIGURE: u8 = 0x13;
    pub const LOCK: u8 = 0x14;
    /// Multi-track.
    pub const MT: u8 = 0x80;
    /// MFM (double density).
    pub const MFM: u8 = 0x40;
}

/// The 1.44 MB disk's geometry.
pub const CYLINDERS: u8 = 80;
/// Heads.
pub const HEADS: u8 = 2;
/// Sectors a track.
pub const SECTORS_PER_TRACK: u8 = 18;
/// Sectors on the disk: a 1.44 MB image has this many.
pub const DISK_SECTORS: u64 = CYLINDERS as u64 * HEADS as u64 * SECTORS_PER_TRACK as u64;
/// The sector size code N of 512-byte sectors.
const SIZE_CODE_512: u8 = 2;
/// The data rate select value of 500 kbit/s (MFM), a 1.44 MB disk's.
const RATE_500K: u8 = 0;

/// A command's length in bytes with its parameters, from its first byte
/// (None: not a command this controller knows).
fn command_length(first: u8) -> Option<usize> {
    let with_flags = first & 0x1f;
    let length = match with_flags {
        op::READ_DATA => 9,
        op::WRITE_DATA if first & 0x20 == 0 => 9,
        op::READ_ID | op::FORMAT_TRACK if first & 0xa0 == 0 => {
            if with_flags == op::READ_ID {
                2
            } else {
                6
            }
        }
        // SEEK, and RELATIVE SEEK with its direction bits.
        op::SEEK if first & 0x3f == op::SEEK => 3,
        op::LOCK if first & 0x7f == op::LOCK => 1,
        _ => match first {
            op::SPECIFY => 3,
            op::SENSE_DRIVE_STATUS | op::RECALIBRATE | op::PERPENDICULAR => 2,
            op::SENSE_INTERRUPT | op::DUMPREG | op::VERSION => 1,
            op::CONFIGURE => 4,
            _ => return None,
        },
    };
    Some(length)
}

/// Where a data transfer is on the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Position {
    cylinder: u8,
    head: u8,
    sector: u8,
}

impl Position {
    fn lba(self) -> u64 {
        (u64::from(self.cylinder) * u64::from(HEADS) + u64::from(self.head))
            * u64::from(SECTORS_PER_TRACK)
            + u64::from(self.sector)
            - 1
    }
}

/// A command waiting for its data to move over DMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transfer {
    /// READ DATA or WRITE DATA from `at` to `end_of_track` (EOT).
    Data {
        write: bool,
        drive: u8,
        at: Position,
        end_of_track: u8,
        multi_track: bool,
    },
    /// FORMAT TRACK: `sectors` IDs to take over DMA, sectors filled with
    /// `filler`.
    Format {
        drive: u8,
        head: u8,
        sectors: u8,
        filler: u8,
    },
}

/// The 82077AA with drive 0.
pub struct Fdc {
    disk: Option<Box<dyn BlockBackend>>,
    dor: u8,
    tdr: u8,
    data_rate: u8,
    command: Vec<u8>,
    result: VecDeque<u8>,
    pending: Option<Transfer>,
    /// The interrupt output (before the DOR's gate).
    interrupt: bool,
    /// What SENSE INTERRUPT STATUS reports next: (ST0, cylinder).
    sense: VecDeque<(u8, u8)>,
    /// Each drive's present cylinder number.
    cylinder: [u8; 4],
    disk_changed: bool,
    specify: [u8; 2],
    configure: [u8; 2],
    locked: bool,
    perpendicular: u8,
}

impl std::fmt::Debug for Fdc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fdc")
            .field("disk", &self.disk.is_some())
            .field("dor", &self.dor)
            .field("command", &self.command)
            .field("result", &self.result)
            .field("pending", &self.pending)
            .field("interrupt", &self.interrupt)
            .finish_non_exhaustive()
    }
}

impl Fdc {
    /// The controller at power-on with `disk` in drive 0 (a 1.44 MB
    /// image: [`DISK_SECTORS`] sectors).
    #[must_use]
    pub fn new(disk: Option<Box<dyn BlockBackend>>) -> Self {
        let mut fdc = Self {
            disk,
            dor: 0,
            tdr: 0,
            data_rate: 2,
            command: Vec::new(),
            result: VecDeque::new(),
            pending: None,
            interrupt: false,
            sense: VecDeque::new(),
            cylinder: [0; 4],
            disk_changed: true,
            specify: [0; 2],
            configure: [0x20, 0],
            locked: false,
            perpendicular: 0,
        };
        fdc.power_on();
        fdc
    }

    /// Back to the state a PC BIOS leaves after power-on (out of reset,
    /// DMA and interrupts on, motors off, no interrupt pending: the BIOS
    /// took the reset's statuses); the disk stays in.
    pub fn power_on(&mut self) {
        self.dor = dor::NOT_RESET | dor::DMA_GATE;
        self.tdr = 0;
        self.locked = false;
        self.configure = [0x20, 0];
        self.disk_changed = true;
        self.cylinder = [0; 4];
        self.reset_state();
        self.interrupt = false;
        self.sense.clear();
    }

    /// Whether `port` is one of the controller's (0x3F6 is the ATA
    /// disk's).
    #[must_use]
    pub fn claims(port: u16) -> bool {
        matches!(port.wrapping_sub(BASE), 0..=5 | 7)
    }

    /// The IRQ 6 line: the interrupt output, gated by DOR bit 3.
    #[must_use]
    pub fn irq_level(&self) -> bool {
        self.interrupt && self.dor & dor::DMA_GATE != 0
    }

    /// Whether a command waits for DMA ([`Fdc::run_dma`]).
    #[must_use]
    pub fn transfer_pending(&self) -> bool {
        self.pending.is_some()
    }

    fn in_reset(&self) -> bool {
        self.dor & dor::NOT_RESET == 0
    }

    /// The controller's state after a reset: no command, no result; the
    /// parameters of CONFIGURE survive while LOCK holds them.
    fn reset_state(&mut self) {
        self.command.clear();
        self.result.clear();
        self.pending = None;
        self.specify = [0; 2];
        self.perpendicular = 0;
        if !self.locked {
            self.configure = [0x20, 0];
        }
    }

    /// A reset ends: with polling on, one interrupt and a status per drive.
    fn end_reset(&mut self) {
        self.reset_state();
        self.sense.clear();
        for drive in 0..4u8 {
            self.sense.push_back((
                st0::READY_CHANGED | drive,
                self.cylinder[usize::from(drive)],
            ));
        }
        self.interrupt = true;
    }

    /// Register read at `port`.
    pub fn read(&mut self, port: u16) -> u8 {
        match port.wrapping_sub(BASE) {
            reg::DOR => self.dor,
            reg::TDR => self.tdr,
            reg::MSR_DSR => self.main_status(),
            reg::FIFO => self.read_fifo(),
            reg::DIR_CCR => {
                let selected = self.dor & dor::DRIVE_SELECT;
                // No disk in a drive reads as changed (the line stays set).
                if selected != 0 || self.disk.is_none() || self.disk_changed {
                    0x80
                } else {
                    0x00
                }
            }
            // Status registers A and B float in PC-AT mode.
            _ => 0xff,
        }
    }

    fn main_status(&self) -> u8 {
        if self.in_reset() {
            return 0;
        }
        if !self.result.is_empty() {
            return msr::RQM | msr::DIO | msr::CB;
        }
        if self.pending.is_some() {
            return msr::CB;
        }
        if self.command.is_empty() {
            msr::RQM
        } else {
            msr::RQM | msr::CB
        }
    }

    fn read_fifo(&mut self) -> u8 {
        match self.result.pop_front() {
            Some(byte) => {
                // The first result byte read clears the interrupt.
                self.interrupt = false;
                byte
            }
            None => 0xff,
        }
    }

    /// Register write at `port`.
    pub fn write(&mut self, port: u16, value: u8) {
        match port.wrapping_sub(BASE) {
            reg::DOR => {
                let was_in_reset = self.in_reset();
                self.dor = value;
                if self.in_reset() {
                    self.reset_state();
                    self.interrupt = false;
                } else if was_in_reset {
                    self.end_reset();
                }
            }
            reg::TDR => self.tdr = value & 0x03,
            reg::MSR_DSR => {
                self.data_rate = value & 0x03;
                if value & 0x80 != 0 && !self.in_reset() {
                    self.end_reset();
                }
            }
            reg::FIFO => self.write_fifo(value),
            reg::DIR_CCR => self.data_rate = value & 0x03,
            _ => {}
        }
    }

    fn write_fifo(&mut self, value: u8) {
        if self.in_reset() || !self.result.is_empty() || self.pending.is_some() {
            return;
        }
        if self.command.is_empty() {
            self.interrupt = false;
        }
        self.command.push(value);
        match command_length(self.command[0]) {
            None => {
                self.command.clear();
                self.result.push_back(st0::INVALID);
            }
            Some(length) if self.command.len() >= length => {
                let command = std::mem::take(&mut self.command);
                self.execute(&command);
            }
            Some(_) => {}
        }
    }

    fn drive_present(&self, drive: u8) -> bool {
        drive == 0
    }

    fn execute(&mut self, command: &[u8]) {
        let first = command[0];
        let drive = command.get(1).map_or(0, |byte| byte & 3);
        let head = command.get(1).map_or(0, |byte| (byte >> 2) & 1);
        match first & 0x1f {
            op::READ_DATA | op::WRITE_DATA => self.start_data(command),
            op::READ_ID if first & 0xa0 == 0 => self.read_id(drive, head, first & op::MFM != 0),
            op::FORMAT_TRACK if first & 0xa0 == 0 => self.start_format(command),
            op::SEEK => {
                let target = command[2];
                let cylinder = &mut self.cylinder[usize::from(drive)];
                *cylinder = match first & 0xc0 {
                    // RELATIVE SEEK outward, inward.
                    0x80 => cylinder.saturating_sub(target),
                    0xc0 => cylinder.saturating_add(target),
                    _ => target,
                };
                self.step(drive, head, false);
            }
            op::LOCK => {
                self.locked = first & 0x80 != 0;
                self.result.push_back(u8::from(self.locked) << 4);
            }
            _ => match first {
                op::SPECIFY => self.specify = [command[1], command[2]],
                op::SENSE_DRIVE_STATUS => {
                    let mut status = drive | (head << 2);
                    if self.drive_present(drive) {
                        status |= st3::READY | st3::TWO_SIDED;
                        if self.cylinder[usize::from(drive)] == 0 {
                            status |= st3::TRACK_0;
                        }
                        if self.disk.as_ref().is_none_or(|disk| disk.read_only()) {
                            status |= st3::WRITE_PROTECTED;
                        }
                    }
                    self.result.push_back(status);
                }
                op::RECALIBRATE => {
                    self.cylinder[usize::from(drive)] = 0;
                    self.step(drive, 0, true);
                }
                // The first SENSE INTERRUPT STATUS clears the interrupt;
                // the statuses of a reset's polling stay to be read (one
                // interrupt for all four drives).
                op::SENSE_INTERRUPT => match self.sense.pop_front() {
                    Some((status, cylinder)) => {
                        self.interrupt = false;
                        self.result.extend([status, cylinder]);
                    }
                    None => self.result.push_back(st0::INVALID),
                },
                op::DUMPREG => {
                    self.result.extend(self.cylinder);
                    self.result.extend(self.specify);
                    self.result.push_back(SECTORS_PER_TRACK);
                    self.result
                        .push_back((u8::from(self.locked) << 7) | (self.perpendicular & 0x7f));
                    self.result.extend(self.configure);
                }
                op::VERSION => self.result.push_back(0x90),
                op::PERPENDICULAR => self.perpendicular = command[1],
                op::CONFIGURE => self.configure = [command[2], command[3]],
                _ => self.result.push_back(st0::INVALID),
            },
        }
    }

    /// A SEEK or RECALIBRATE has stepped `drive`: its interrupt and
    /// status; a disk in drive 0 clears its change line.
    fn step(&mut self, drive: u8, head: u8, recalibrate: bool) {
        let mut status = st0::SEEK_END | (head << 2) | drive;
        if !self.drive_present(drive) {
            status |= st0::ABNORMAL | st0::NOT_READY;
            if recalibrate {
                status |= st0::EQUIPMENT_CHECK;
            }
        } else if self.disk.is_some() {
            self.disk_changed = false;
        }
        if self.cylinder[usize::from(drive)] >= CYLINDERS {
            self.cylinder[usize::from(drive)] = CYLINDERS - 1;
        }
        self.sense.clear();
        self.sense
            .push_back((status, self.cylinder[usize::from(drive)]));
        self.interrupt = true;
    }

    /// Ends a command with its 7-byte result and the interrupt.
    fn finish(&mut self, status: [u8; 3], id: [u8; 4]) {
        self.pending = None;
        self.result.extend(status);
        self.result.extend(id);
        self.interrupt = true;
    }

    /// Why a data command on `drive` cannot find its sectors now, as ST0,
    /// ST1 and ST2 (None: it can).
    fn unreadable(&self, drive: u8, head: u8, mfm: bool, size_code: u8) -> Option<[u8; 3]> {
        let head_bits = (head << 2) | drive;
        if !self.drive_present(drive) || self.disk.is_none() {
            return Some([st0::ABNORMAL | st0::NOT_READY | head_bits, 0, 0]);
        }
        if self.data_rate != RATE_500K || !mfm || size_code != SIZE_CODE_512 {
            return Some([
                st0::ABNORMAL | head_bits,
                st1::MISSING_ADDRESS_MARK | st1::NO_DATA,
                0,
            ]);
        }
        if self.specify[1] & 1 != 0 {
            // Non-DMA transfers are not modelled.
            return Some([st0::ABNORMAL | head_bits, st1::NO_DATA, 0]);
        }
        None
    }

    fn start_data(&mut self, command: &[u8]) {
        let first = command[0];
        let drive = command[1] & 3;
        let head = (command[1] >> 2) & 1;
        let id = [command[2], command[3], command[4], command[5]];
        let write = first & 0x1f == op::WRITE_DATA;
        if let Some(status) = self.unreadable(drive, head, first & op::MFM != 0, command[5]) {
            self.finish(status, id);
            return;
        }
        let head_bits = (head << 2) | drive;
        let at = Position {
            cylinder: command[2],
            head: command[3],
            sector: command[4],
        };
        if at.cylinder != self.cylinder[usize::from(drive)] {
            // The head is over another cylinder: its IDs do not match.
            self.finish(
                [st0::ABNORMAL | head_bits, st1::NO_DATA, st2::WRONG_CYLINDER],
                id,
            );
            return;
        }
        if at.head != head
            || at.cylinder >= CYLINDERS
            || at.sector == 0
            || at.sector > SECTORS_PER_TRACK
        {
            self.finish([st0::ABNORMAL | head_bits, st1::NO_DATA, 0], id);
            return;
        }
        if write && self.disk.as_ref().is_some_and(|disk| disk.read_only()) {
            self.finish([st0::ABNORMAL | head_bits, st1::NOT_WRITABLE, 0], id);
            return;
        }
        self.pending = Some(Transfer::Data {
            write,
            drive,
            at,
            end_of_track: command[6].min(SECTORS_PER_TRACK),
            multi_track: first & op::MT != 0,
        });
    }

    fn read_id(&mut self, drive: u8, head: u8, mfm: bool) {
        let cylinder = self.cylinder[usize::from(drive)];
        let id = [cylinder, head, 1, SIZE_CODE_512];
        match self.unreadable(drive, head, mfm, SIZE_CODE_512) {
            Some(status) => self.finish(status, id),
            None => self.finish([(head << 2) | drive, 0, 0], id),
        }
    }

    fn start_format(&mut self, command: &[u8]) {
        let drive = command[1] & 3;
        let head = (command[1] >> 2) & 1;
        let cylinder = self.cylinder[usize::from(drive)];
        let id = [cylinder, head, 1, command[2]];
        if let Some(status) = self.unreadable(drive, head, command[0] & op::MFM != 0, command[2]) {
            self.finish(status, id);
            return;
        }
        if self.disk.as_ref().is_some_and(|disk| disk.read_only()) {
            self.finish(
                [st0::ABNORMAL | (head << 2) | drive, st1::NOT_WRITABLE, 0],
                id,
            );
            return;
        }
        self.pending = Some(Transfer::Format {
            drive,
            head,
            sectors: command[3],
            filler: command[5],
        });
    }

    /// Runs the command that waits for DMA, if the DMA controller's
    /// channel 2 is ready for it: data moves between the disk and guest
    /// memory, and the command ends with its result and interrupt.
    pub fn run_dma(&mut self, dma: &mut IsaDma, memory: &mut dyn DmaMemory) {
        let Some(transfer) = self.pending else {
            return;
        };
        if !dma.ready(DMA_CHANNEL) {
            // The guest programs the channel later; the board calls again.
            return;
        }
        match transfer {
            Transfer::Data {
                write,
                drive,
                at,
                end_of_track,
                multi_track,
            } => self.run_data(dma, memory, write, drive, at, end_of_track, multi_track),
            Transfer::Format {
                drive,
                head,
                sectors,
                filler,
            } => self.run_format(dma, memory, drive, head, sectors, filler),
        }
    }

    #[allow(clippy::too_many_arguments)] // one transfer's fields
    fn run_data(
        &mut self,
        dma: &mut IsaDma,
        memory: &mut dyn DmaMemory,
        write: bool,
        drive: u8,
        mut at: Position,
        end_of_track: u8,
        multi_track: bool,
    ) {
        let head_bits = |head: u8| (head << 2) | drive;
        let mut sector = [0u8; SECTOR_BYTES];
        loop {
            let Some(disk) = self.disk.as_mut() else {
                self.finish(
                    [st0::ABNORMAL | st0::NOT_READY | head_bits(at.head), 0, 0],
                    [at.cylinder, at.head, at.sector, SIZE_CODE_512],
                );
                return;
            };
            let moved = if write {
                let moved = dma.read_from_memory(DMA_CHANNEL, &mut sector, memory);
                // A sector cut short by terminal count is written whole,
                // the rest filled with zeros as the chip does.
                sector[moved..].fill(0);
                disk.write(at.lba(), &sector).map(|()| moved)
            } else {
                disk.read(at.lba(), &mut sector)
                    .map(|()| dma.write_to_memory(DMA_CHANNEL, &sector, memory))
            };
            let Ok(moved) = moved else {
                self.finish(
                    [
                        st0::ABNORMAL | head_bits(at.head),
                        st1::DATA_ERROR,
                        st2::DATA_ERROR_IN_DATA,
                    ],
                    [at.cylinder, at.head, at.sector, SIZE_CODE_512],
                );
                return;
            };
            // The next sector's ID, which the result reports.
            let mut next = at;
            let mut past_end = false;
            if at.sector < end_of_track {
                next.sector += 1;
            } else {
                next.sector = 1;
                if multi_track && at.head == 0 {
                    next.head = 1;
                } else {
                    next.cylinder = at.cylinder.saturating_add(1);
                    if multi_track {
                        next.head = 0;
                    }
                    past_end = true;
                }
            }
            let id = [next.cylinder, next.head, next.sector, SIZE_CODE_512];
            if moved == 0 {
                // The channel runs the other way (or not at all): the
                // data had nowhere to go.
                self.finish(
                    [st0::ABNORMAL | head_bits(at.head), st1::OVERRUN, 0],
                    [at.cylinder, at.head, at.sector, SIZE_CODE_512],
                );
                return;
            }
            if dma.terminal_count(DMA_CHANNEL) {
                self.finish([head_bits(at.head), 0, 0], id);
                return;
            }
            if past_end {
                // More data was asked for than the track holds.
                self.finish(
                    [st0::ABNORMAL | head_bits(at.head), st1::END_OF_CYLINDER, 0],
                    id,
                );
                return;
            }
            at = next;
        }
    }

    fn run_format(
        &mut self,
        dma: &mut IsaDma,
        memory: &mut dyn DmaMemory,
        drive: u8,
        head: u8,
        sectors: u8,
        filler: u8,
    ) {
        let cylinder = self.cylinder[usize::from(drive)];
        let filled = [filler; SECTOR_BYTES];
        let mut last = [cylinder, head, 1, SIZE_CODE_512];
        for _ in 0..sectors {
            let mut id = [0u8; 4];
            if dma.read_from_memory(DMA_CHANNEL, &mut id, memory) < id.len() {
                break;
            }
            last = id;
            let at = Position {
                cylinder: id[0],
                head: id[1],
                sector: id[2],
            };
            let writable = at.cylinder == cylinder
                && at.head == head
                && (1..=SECTORS_PER_TRACK).contains(&at.sector)
                && id[3] == SIZE_CODE_512;
            let written = match self.disk.as_mut() {
                Some(disk) if writable => disk.write(at.lba(), &filled).is_ok(),
                // An ID this disk cannot hold formats nothing readable.
                _ => true,
            };
            if !written {
                self.finish(
                    [st0::ABNORMAL | (head << 2) | drive, st1::DATA_ERROR, 0],
                    last,
                );
                return;
            }
        }
        self.finish([(head << 2) | drive, 0, 0], last);
    }

    /// Makes what was written durable (the PC's end).
    ///
    /// # Errors
    ///
    /// The disk's I/O error.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.disk.as_mut().map_or(Ok(()), |disk| disk.flush())
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // byte patterns, port bytes
mod tests {
    use super::*;
    use crate::ata::MemoryBackend;

    /// Guest RAM for DMA.
    struct Ram(Vec<u8>);

    impl DmaMemory for Ram {
        fn read(&self, guest_phys: u32, buf: &mut [u8]) -> bool {
            let start = guest_phys as usize;
            match self.0.get(start..start + buf.len()) {
                Some(bytes) => {
                    buf.copy_from_slice(bytes);
                    true
                }
                None => false,
            }
        }

        fn write(&mut self, guest_phys: u32, data: &[u8]) -> bool {
            let start = guest_phys as usize;
            match self.0.get_mut(start..start + data.len()) {
                Some(bytes) => {
                    bytes.copy_from_slice(data);
                    true
                }
                None => false,
            }
        }
    }

    /// A disk whose sector n is filled with n's low byte.
    fn disk(read_only: bool) -> Box<dyn BlockBackend> {
        let mut image = vec![0u8; DISK_SECTORS as usize * SECTOR_BYTES];
        for (index, sector) in image.chunks_mut(SECTOR_BYTES).enumerate() {
            sector.fill(index as u8);
        }
        Box::new(MemoryBackend {
            bytes: image,
            read_only,
        })
    }

    fn fdc() -> Fdc {
        let mut fdc = Fdc::new(Some(disk(false)));
        // Drive 0's motor on; 500 kbit/s as Linux sets it for a 1.44 MB
        // disk (the power-on rate is 250).
        fdc.write(BASE + reg::DOR, 0x1c);
        fdc.write(BASE + reg::DIR_CCR, RATE_500K);
        fdc
    }

    fn sense_all(fdc: &mut Fdc) -> Vec<(u8, u8)> {
        let mut seen = Vec::new();
        loop {
            let result = command(fdc, &[op::SENSE_INTERRUPT]);
            if result.len() != 2 {
                return seen;
            }
            seen.push((result[0], result[1]));
        }
    }

    /// Writes a command byte by byte as Linux's output_byte does (RQM
    /// set, DIO clear) and reads its result while RQM and DIO are set.
    fn command(fdc: &mut Fdc, bytes: &[u8]) -> Vec<u8> {
        for &byte in bytes {
            assert_eq!(
                fdc.read(BASE + reg::MSR_DSR) & (msr::RQM | msr::DIO),
                msr::RQM,
                "ready for {byte:#x}"
            );
            fdc.write(BASE + reg::FIFO, byte);
        }
        result(fdc)
    }

    fn result(fdc: &mut Fdc) -> Vec<u8> {
        let mut result = Vec::new();
        while fdc.read(BASE + reg::MSR_DSR) & (msr::RQM | msr::DIO) == msr::RQM | msr::DIO {
            result.push(fdc.read(BASE + reg::FIFO));
        }
        result
    }

    /// Channel 2 as Linux's floppy driver programs it (asm/dma.h).
    fn program_dma(dma: &mut IsaDma, mode: u8, guest_phys: u32, bytes: u16) {
        dma.write(0x0a, 0x04 | 2); // mask
        dma.write(0x0c, 0); // clear the flip-flop
        dma.write(0x0b, mode | 2);
        dma.write(0x04, guest_phys as u8);
        dma.write(0x04, (guest_phys >> 8) as u8);
        dma.write(0x81, (guest_phys >> 16) as u8);
        dma.write(0x0c, 0);
        dma.write(0x05, (bytes - 1) as u8);
        dma.write(0x05, ((bytes - 1) >> 8) as u8);
        dma.write(0x0a, 2); // unmask
    }

    const DMA_MODE_READ: u8 = 0x44;
    const DMA_MODE_WRITE: u8 = 0x48;

    #[test]
    fn reset_reports_each_drive_and_linux_identifies_an_82077() {
        let mut fdc = Fdc::new(Some(disk(false)));
        // As the BIOS left it: ready, nothing pending.
        assert_eq!(fdc.read(BASE + reg::MSR_DSR), msr::RQM);
        assert!(!fdc.irq_level());
        assert_eq!(command(&mut fdc, &[op::SENSE_INTERRUPT]), [0x80]);
        // Linux's reset of an older controller: DOR bit 2 low, then high.
        fdc.write(BASE + reg::DOR, 0x08);
        assert_eq!(fdc.read(BASE + reg::MSR_DSR), 0, "held in reset");
        fdc.write(BASE + reg::DOR, 0x0c);
        assert!(fdc.irq_level(), "the reset's interrupt");
        assert_eq!(command(&mut fdc, &[op::SENSE_INTERRUPT]), [0xc0, 0]);
        assert!(!fdc.irq_level(), "one interrupt for the four drives");
        assert_eq!(sense_all(&mut fdc), [(0xc1, 0), (0xc2, 0), (0xc3, 0)]);
        assert!(!fdc.irq_level());
        // Linux's get_fdc_version: DUMPREG's 10 bytes, CONFIGURE taken,
        // PERPENDICULAR takes a byte, UNLOCK 0x00, PART ID invalid.
        assert_eq!(command(&mut fdc, &[op::DUMPREG]).len(), 10);
        assert!(command(&mut fdc, &[op::CONFIGURE, 0, 0x1a, 0]).is_empty());
        assert!(command(&mut fdc, &[op::PERPENDICULAR, 0]).is_empty());
        assert_eq!(command(&mut fdc, &[0x14]), [0x00]);
        assert_eq!(command(&mut fdc, &[0x18]), [0x80]);
        assert_eq!(command(&mut fdc, &[op::VERSION]), [0x90]);
        // LOCK keeps CONFIGURE's values over a reset (DSR bit 7).
        assert_eq!(command(&mut fdc, &[0x94]), [0x10]);
        fdc.write(BASE + reg::MSR_DSR, 0x80);
        sense_all(&mut fdc);
        assert_eq!(command(&mut fdc, &[op::DUMPREG])[8], 0x1a);
        // SENSE INTERRUPT STATUS with nothing pending is invalid.
        assert_eq!(command(&mut fdc, &[op::SENSE_INTERRUPT]), [0x80]);
    }

    #[test]
    fn seek_interrupts_and_clears_the_disk_change_line() {
        let mut fdc = fdc();
        assert_eq!(fdc.read(BASE + reg::DIR_CCR) & 0x80, 0x80, "changed");
        assert!(command(&mut fdc, &[op::SPECIFY, 0xdf, 0x02]).is_empty());
        assert!(command(&mut fdc, &[op::SEEK, 0x04, 33]).is_empty());
        assert!(fdc.irq_level());
        assert_eq!(sense_all(&mut fdc), [(0x24, 33)]);
        assert_eq!(fdc.read(BASE + reg::DIR_CCR) & 0x80, 0);
        assert_eq!(command(&mut fdc, &[op::SENSE_DRIVE_STATUS, 0]), [0x28]);
        assert!(command(&mut fdc, &[op::RECALIBRATE, 0]).is_empty());
        assert_eq!(sense_all(&mut fdc), [(0x20, 0)]);
        assert_eq!(command(&mut fdc, &[op::SENSE_DRIVE_STATUS, 0]), [0x38]);
        // Relative seek inward by 5.
        command(&mut fdc, &[0xcf, 0, 5]);
        assert_eq!(sense_all(&mut fdc), [(0x20, 5)]);
        // Drive 1 is absent.
        command(&mut fdc, &[op::RECALIBRATE, 1]);
        assert_eq!(sense_all(&mut fdc), [(0x79, 0)]);
    }

    #[test]
    fn read_data_moves_sectors_over_dma_until_terminal_count() {
        let mut fdc = fdc();
        let mut dma = IsaDma::new();
        let mut ram = Ram(vec![0; 0x4_0000]);
        command(&mut fdc, &[op::SEEK, 0x04, 2]);
        sense_all(&mut fdc);
        // Cylinder 2, head 1, sectors 17-18 and (MT) head... end of track:
        // two sectors.
        program_dma(&mut dma, DMA_MODE_READ, 0x1_2000, 1024);
        for &byte in &[0xe6, 0x04, 2, 1, 17, 2, 18, 0x1b, 0xff] {
            fdc.write(BASE + reg::FIFO, byte);
        }
        assert!(fdc.transfer_pending());
        assert_eq!(fdc.read(BASE + reg::MSR_DSR), msr::CB, "execution");
        fdc.run_dma(&mut dma, &mut ram);
        assert!(fdc.irq_level());
        // The sector after the last one moved: cylinder 3, head 0 (MT).
        assert_eq!(result(&mut fdc), [0x04, 0, 0, 3, 0, 1, 2]);
        assert!(!fdc.irq_level(), "the first result byte cleared it");
        let first = Position {
            cylinder: 2,
            head: 1,
            sector: 17,
        }
        .lba();
        assert!(ram.0[0x1_2000..0x1_2200].iter().all(|&b| b == first as u8));
        assert!(
            ram.0[0x1_2200..0x1_2400]
                .iter()
                .all(|&b| b == (first + 1) as u8)
        );
        assert_eq!(ram.0[0x1_2400], 0, "nothing past the count");
    }

    #[test]
    fn a_transfer_longer_than_the_track_ends_with_end_of_cylinder() {
        let mut fdc = fdc();
        let mut dma = IsaDma::new();
        let mut ram = Ram(vec![0; 0x2_0000]);
        program_dma(&mut dma, DMA_MODE_READ, 0x1000, 4096);
        // No MT: sectors 17 and 18 of head 0, then the track ends.
        for &byte in &[0x66, 0x00, 0, 0, 17, 2, 18, 0x1b, 0xff] {
            fdc.write(BASE + reg::FIFO, byte);
        }
        fdc.run_dma(&mut dma, &mut ram);
        assert_eq!(result(&mut fdc), [0x40, 0x80, 0, 1, 0, 1, 2]);
    }

    #[test]
    fn write_data_reaches_the_disk_and_read_only_disks_refuse() {
        let mut fdc = fdc();
        let mut dma = IsaDma::new();
        let mut ram = Ram(vec![0; 0x2_0000]);
        ram.0[0x3000..0x3200].fill(0xa5);
        program_dma(&mut dma, DMA_MODE_WRITE, 0x3000, 512);
        for &byte in &[0xc5, 0x00, 0, 0, 5, 2, 18, 0x1b, 0xff] {
            fdc.write(BASE + reg::FIFO, byte);
        }
        fdc.run_dma(&mut dma, &mut ram);
        assert_eq!(result(&mut fdc), [0x00, 0, 0, 0, 0, 6, 2]);
        // Read it back.
        program_dma(&mut dma, DMA_MODE_READ, 0x8000, 512);
        for &byte in &[0xe6, 0x00, 0, 0, 5, 2, 18, 0x1b, 0xff] {
            fdc.write(BASE + reg::FIFO, byte);
        }
        fdc.run_dma(&mut dma, &mut ram);
        result(&mut fdc);
        assert!(ram.0[0x8000..0x8200].iter().all(|&b| b == 0xa5));

        let mut fdc = Fdc::new(Some(disk(true)));
        fdc.write(BASE + reg::DOR, 0x1c);
        fdc.write(BASE + reg::DIR_CCR, RATE_500K);
        assert_eq!(
            command(&mut fdc, &[op::SENSE_DRIVE_STATUS, 0])[0] & 0x40,
            0x40
        );
        let result = command(&mut fdc, &[0xc5, 0x00, 0, 0, 5, 2, 18, 0x1b, 0xff]);
        assert_eq!(&result[..2], [0x40, 0x02], "not writable");
    }

    #[test]
    fn sectors_a_1_44_mb_disk_does_not_have_are_not_found() {
        let mut fdc = fdc();
        // 250 kbit/s (a 720 KB disk's rate): no address marks.
        fdc.write(BASE + reg::DIR_CCR, 2);
        let result = command(&mut fdc, &[0xe6, 0x00, 0, 0, 1, 2, 18, 0x1b, 0xff]);
        assert_eq!(&result[..3], [0x40, 0x05, 0]);
        fdc.write(BASE + reg::DIR_CCR, 0);
        // The head is on cylinder 0, the command names cylinder 3.
        let result = command(&mut fdc, &[0xe6, 0x00, 3, 0, 1, 2, 18, 0x1b, 0xff]);
        assert_eq!(&result[..3], [0x40, 0x04, 0x10]);
        // Sector 19.
        let result = command(&mut fdc, &[0xe6, 0x00, 0, 0, 19, 2, 18, 0x1b, 0xff]);
        assert_eq!(&result[..2], [0x40, 0x04]);
        // READ ID on cylinder 0.
        assert_eq!(command(&mut fdc, &[0x4a, 0x04]), [0x04, 0, 0, 0, 1, 1, 2]);
    }

    #[test]
    fn format_track_fills_the_sectors_it_is_given() {
        let mut fdc = fdc();
        let mut dma = IsaDma::new();
        let mut ram = Ram(vec![0; 0x2_0000]);
        command(&mut fdc, &[op::SEEK, 0x00, 1]);
        sense_all(&mut fdc);
        let ids: Vec<u8> = (1..=18u8).flat_map(|r| [1, 1, r, 2]).collect();
        ram.0[0x5000..0x5000 + ids.len()].copy_from_slice(&ids);
        program_dma(&mut dma, DMA_MODE_WRITE, 0x5000, 72);
        for &byte in &[0x4d, 0x04, 2, 18, 0x54, 0xf6] {
            fdc.write(BASE + reg::FIFO, byte);
        }
        fdc.run_dma(&mut dma, &mut ram);
        assert_eq!(result(&mut fdc)[..3], [0x04, 0, 0]);
        program_dma(&mut dma, DMA_MODE_READ, 0x9000, 512);
        for &byte in &[0xe6, 0x04, 1, 1, 7, 2, 18, 0x1b, 0xff] {
            fdc.write(BASE + reg::FIFO, byte);
        }
        fdc.run_dma(&mut dma, &mut ram);
        result(&mut fdc);
        assert!(ram.0[0x9000..0x9200].iter().all(|&b| b == 0xf6));
    }

    #[test]
    fn a_command_waits_for_its_dma_channel() {
        let mut fdc = fdc();
        let mut dma = IsaDma::new();
        let mut ram = Ram(vec![0; 0x2_0000]);
        for &byte in &[0xe6, 0x00, 0, 0, 1, 2, 18, 0x1b, 0xff] {
            fdc.write(BASE + reg::FIFO, byte);
        }
        fdc.run_dma(&mut dma, &mut ram);
        assert!(fdc.transfer_pending(), "channel 2 still masked");
        assert!(!fdc.irq_level());
        program_dma(&mut dma, DMA_MODE_READ, 0x1000, 512);
        fdc.run_dma(&mut dma, &mut ram);
        assert!(!fdc.transfer_pending());
        assert_eq!(result(&mut fdc)[..3], [0x00, 0, 0]);
    }

    #[test]
    fn nothing_panics_on_any_port_and_byte() {
        let mut fdc = Fdc::new(None);
        let mut dma = IsaDma::new();
        let mut ram = Ram(vec![0; 4096]);
        for port in BASE..=BASE + 7 {
            for value in [0u8, 0x04, 0x0c, 0x1c, 0x80, 0xe6, 0xff] {
                fdc.write(port, value);
                let _ = fdc.read(port);
                fdc.run_dma(&mut dma, &mut ram);
            }
        }
        for value in 0..=255u8 {
            fdc.write(BASE + reg::FIFO, value);
            let _ = result(&mut fdc);
        }
    }
}
