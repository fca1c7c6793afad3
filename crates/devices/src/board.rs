//! The host side of the btvmm PC: the devices that need host resources
//! (the console, the wall clock) or are touched too rarely to be worth
//! running in the world, and the port layout. The interrupt and timer
//! chipset runs in the world process ([`crate::chipset`]).
//!
//! | ports          | device                                   | IRQ |
//! |----------------|------------------------------------------|-----|
//! | 0x60, 0x64     | 8042 keyboard controller, AT keyboard    | 1, 12 |
//! | 0x3f8-0x3ff    | COM1, 16550A ([`crate::uart`])           | 4   |
//! | 0x92           | system control port A (A20, fast reset)  |     |
//! | 0xcf8, 0xcfc   | PCI configuration, an empty bus          |     |
//! | 0xf4           | QEMU's debug-exit device (test kernels)  |     |
//! | 0x508-0x50b    | btvmm's counter marks ([`crate::counter_mark`]) |  |
//! | 0x1f0-0x1f7, 0x3f6 | ATA disk on the primary channel ([`crate::ata`]), with `--disk` | 14 |
//! | 0x3b0-0x3df    | VGA registers ([`crate::vga`]; the text buffer at 0xB8000 is guest RAM) |  |
//! | 0x00-0x0f, 0x81-0x8f, 0xc0-0xdf | ISA DMA controllers and page registers ([`crate::dma`]) |  |
//! | 0x3f0-0x3f5, 0x3f7 | floppy disk controller ([`crate::floppy`], DMA channel 2), with `--floppy` | 6 |
//!
//! Every other port floats: reads give all ones, writes go nowhere, and
//! each access is counted by port so that what a guest probes is visible.

use std::collections::BTreeMap;
use std::io::Write;

use crate::ata::{AtaDisk, PRIMARY_COMMAND, PRIMARY_IRQ};
use crate::bus::{Bus, BusEffect, OverlapError, PortDevice};
use crate::counter_mark::CounterMark;
use crate::debug_exit::DebugExit;
use crate::dma::{DmaMemory, IsaDma};
use crate::floppy::Fdc;
use crate::i8042::{I8042, I8042Effect};
use crate::pci::EmptyPciBus;
use crate::system_port::SystemPortA;
use crate::uart::{InterruptCount, Uart};
use crate::vga::Vga;

/// COM1.
pub const COM1: u16 = 0x3f8;
/// QEMU's debug-exit port as the test harness configures it.
pub const DEBUG_EXIT: u16 = 0xf4;
/// btvmm's counter-mark port.
pub const COUNTER_MARK: u16 = 0x508;
/// System control port A.
pub const SYSTEM_PORT_A: u16 = 0x92;
/// COM1's IRQ.
pub const COM1_IRQ: u8 = 4;
/// The keyboard controller's data port (its command/status port is 4
/// above).
pub const KBC: u16 = 0x60;
/// The keyboard's IRQ.
pub const KEYBOARD_IRQ: u8 = 1;
/// The auxiliary (mouse) port's IRQ.
pub const AUX_IRQ: u8 = 12;

/// Accesses to a port no device claims.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unclaimed {
    /// INs.
    pub reads: u64,
    /// OUTs.
    pub writes: u64,
}

/// The host's devices.
pub struct Board {
    /// Port devices without board-level wiring.
    pub bus: Bus,
    /// COM1 (dispatched by the board: its interrupt line goes to the world).
    pub com1: Uart<Box<dyn Write>>,
    /// The keyboard controller.
    pub kbc: I8042,
    /// The disk on the primary ATA channel, if the VM has one.
    pub disk: Option<AtaDisk>,
    /// The VGA's registers.
    pub vga: Vga,
    /// The ISA DMA controllers.
    pub dma: IsaDma,
    /// The floppy disk controller with its drive, if the VM has one.
    pub floppy: Option<Fdc>,
    pci: EmptyPciBus,
    system_port_a: SystemPortA,
    unclaimed: BTreeMap<u16, Unclaimed>,
    /// Lines that rose again within one access (see [`Board::take_pulses`]).
    pulses: u16,
}

impl Board {
    /// COM1 transmitting to `console`, and the other devices at power-on.
    pub fn new(console: impl Write + 'static) -> Result<Self, OverlapError> {
        let mut bus = Bus::new();
        bus.add("debug-exit", DEBUG_EXIT, 4, Box::new(DebugExit))?;
        bus.add("counter-mark", COUNTER_MARK, 4, Box::new(CounterMark))?;
        Ok(Self {
            bus,
            com1: Uart::new(Box::new(console), InterruptCount::default()),
            kbc: I8042::new(),
            disk: None,
            vga: Vga::new(),
            dma: IsaDma::new(),
            floppy: None,
            pci: EmptyPciBus::default(),
            system_port_a: SystemPortA::new(),
            unclaimed: BTreeMap::new(),
            pulses: 0,
        })
    }

    /// IN.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        match port {
            COM1..=0x3ff if size == 1 => self.com1.read(port - COM1, size),
            KBC | 0x64 if size == 1 => {
                let value = self.kbc.read(port - KBC);
                self.note_kbc_edges();
                u32::from(value)
            }
            SYSTEM_PORT_A if size == 1 => u32::from(self.system_port_a.read()),
            _ if AtaDisk::claims(port) && self.disk.is_some() => self
                .disk
                .as_mut()
                .map_or(u32::MAX, |disk| disk.read(port, size)),
            _ if Vga::claims(port) => self.vga.read(port, size),
            _ if IsaDma::claims(port) && size == 1 => u32::from(self.dma.read(port)),
            _ if Fdc::claims(port) && size == 1 && self.floppy.is_some() => self
                .floppy
                .as_mut()
                .map_or(u32::MAX, |floppy| u32::from(floppy.read(port))),
            _ if EmptyPciBus::claims(port, size) => self.pci.read(port, size),
            _ if self.bus.claims(port) => self.bus.read(port, size),
            _ => {
                self.unclaimed.entry(port).or_default().reads += 1;
                self.bus.read(port, size)
            }
        }
    }

    /// OUT.
    pub fn write(&mut self, port: u16, size: u8, value: u32) -> BusEffect {
        match port {
            COM1..=0x3ff if size == 1 => self.com1.write(port - COM1, size, value),
            KBC | 0x64 if size == 1 => {
                #[allow(clippy::cast_possible_truncation)] // a byte access
                let effect = self.kbc.write(port - KBC, value as u8);
                self.note_kbc_edges();
                match effect {
                    I8042Effect::Reset => BusEffect::Reset,
                    I8042Effect::None => BusEffect::None,
                }
            }
            SYSTEM_PORT_A if size == 1 => {
                #[allow(clippy::cast_possible_truncation)] // a byte access
                if self.system_port_a.write(value as u8) {
                    BusEffect::Reset
                } else {
                    BusEffect::None
                }
            }
            _ if AtaDisk::claims(port) && self.disk.is_some() => {
                if let Some(disk) = self.disk.as_mut() {
                    disk.write(port, size, value);
                }
                BusEffect::None
            }
            _ if Vga::claims(port) => {
                self.vga.write(port, size, value);
                BusEffect::None
            }
            _ if IsaDma::claims(port) && size == 1 => {
                #[allow(clippy::cast_possible_truncation)] // a byte access
                self.dma.write(port, value as u8);
                BusEffect::None
            }
            _ if Fdc::claims(port) && size == 1 && self.floppy.is_some() => {
                if let Some(floppy) = self.floppy.as_mut() {
                    #[allow(clippy::cast_possible_truncation)] // a byte access
                    floppy.write(port, value as u8);
                }
                BusEffect::None
            }
            _ if EmptyPciBus::claims(port, size) => {
                self.pci.write(port, size, value);
                BusEffect::None
            }
            _ if self.bus.claims(port) => self.bus.write(port, size, value),
            _ => {
                self.unclaimed.entry(port).or_default().writes += 1;
                self.bus.write(port, size, value)
            }
        }
    }

    /// REP INS of `buf.len() / size` items from `port`: the disk's data
    /// register moves them at once, other ports one IN each.
    pub fn read_string(&mut self, port: u16, size: u8, buf: &mut [u8]) {
        if port == PRIMARY_COMMAND
            && let Some(disk) = self.disk.as_mut()
        {
            disk.read_data(buf);
            return;
        }
        for item in buf.chunks_exact_mut(usize::from(size.clamp(1, 4))) {
            let value = self.read(port, size);
            item.copy_from_slice(&value.to_le_bytes()[..item.len()]);
        }
    }

    /// REP OUTS of `data.len() / size` items to `port` (see
    /// [`Board::read_string`]): the first effect other than none ends it.
    pub fn write_string(&mut self, port: u16, size: u8, data: &[u8]) -> BusEffect {
        if port == PRIMARY_COMMAND
            && let Some(disk) = self.disk.as_mut()
        {
            disk.write_data(data);
            return BusEffect::None;
        }
        for item in data.chunks_exact(usize::from(size.clamp(1, 4))) {
            let mut value = [0u8; 4];
            value[..item.len()].copy_from_slice(item);
            let effect = self.write(port, size, u32::from_le_bytes(value));
            if effect != BusEffect::None {
                return effect;
            }
        }
        BusEffect::None
    }

    /// Whether a device waits for a DMA transfer ([`Board::run_dma`]).
    #[must_use]
    pub fn dma_pending(&self) -> bool {
        self.floppy.as_ref().is_some_and(Fdc::transfer_pending)
    }

    /// Runs the DMA transfers devices wait for, with guest memory: after
    /// an access that may have started one (a command, or the guest
    /// programming the channel).
    pub fn run_dma(&mut self, memory: &mut dyn DmaMemory) {
        if let Some(floppy) = self.floppy.as_mut() {
            floppy.run_dma(&mut self.dma, memory);
        }
    }

    /// Hands a key event (set 2 bytes, see [`I8042::push_scancodes`]) to
    /// the keyboard. The line to the PIC may have dropped and risen again
    /// since the host last published it (the guest just read the previous
    /// event's last byte): that edge is kept as a pulse.
    pub fn push_key(&mut self, scancodes: &[u8]) {
        self.kbc.push_scancodes(scancodes);
        self.note_kbc_edges();
    }

    /// Levels of the board's interrupt lines (bit n = IRQ n), for the
    /// world's interrupt controller.
    #[must_use]
    pub fn interrupt_levels(&self) -> u16 {
        (u16::from(self.com1.interrupt_level()) << COM1_IRQ)
            | (u16::from(self.kbc.irq1_level()) << KEYBOARD_IRQ)
            | (u16::from(self.kbc.irq12_level()) << AUX_IRQ)
            | (u16::from(self.disk.as_ref().is_some_and(AtaDisk::irq_level)) << PRIMARY_IRQ)
            | (u16::from(self.floppy.as_ref().is_some_and(Fdc::irq_level)) << crate::floppy::IRQ)
    }

    /// Lines that dropped and rose again within one access since the last
    /// call (bit n = IRQ n): the keyboard controller moves its next byte
    /// into the output buffer as the guest reads the last one. An
    /// edge-triggered PIC must latch a new edge for them although the
    /// level looks unchanged.
    pub fn take_pulses(&mut self) -> u16 {
        std::mem::take(&mut self.pulses)
    }

    fn note_kbc_edges(&mut self) {
        if self.kbc.take_irq1_rising_edge() {
            self.pulses |= 1 << KEYBOARD_IRQ;
        }
        if self.kbc.take_irq12_rising_edge() {
            self.pulses |= 1 << AUX_IRQ;
        }
    }

    /// The ports no device claims that the guest accessed, with counts.
    #[must_use]
    pub fn unclaimed(&self) -> &BTreeMap<u16, Unclaimed> {
        &self.unclaimed
    }

    /// Puts the devices in their power-on state (a reset of the PC); the
    /// console keeps its output and any input not read yet is dropped.
    pub fn reset(&mut self) {
        self.com1.reset();
        self.kbc = I8042::new();
        self.pulses = 0;
        self.pci = EmptyPciBus::default();
        self.system_port_a = SystemPortA::new();
        self.vga.reset();
        self.dma.reset();
        if let Some(floppy) = self.floppy.as_mut() {
            floppy.power_on();
        }
        if let Some(disk) = self.disk.as_mut() {
            disk.power_on();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn com1_line_and_debug_exit() {
        let mut board = Board::new(Vec::new()).expect("board");
        assert_eq!(board.interrupt_levels(), 0);
        board.write(COM1 + 1, 1, 0x02);
        assert_eq!(board.interrupt_levels(), 1 << 4);
        assert_eq!(board.write(DEBUG_EXIT, 1, 0), BusEffect::Exit(1));
        assert!(board.unclaimed().is_empty());
    }

    #[test]
    fn unclaimed_ports_float_and_are_counted() {
        let mut board = Board::new(Vec::new()).expect("board");
        assert_eq!(board.read(0x2f8, 1), 0xff);
        assert_eq!(board.read(0x2f8, 1), 0xff);
        assert_eq!(board.write(0x2f8, 1, 0), BusEffect::None);
        assert_eq!(board.read(0xcf8, 1), 0xff, "byte access to CONFIG_ADDRESS");
        assert_eq!(
            board.unclaimed().get(&0x2f8),
            Some(&Unclaimed {
                reads: 2,
                writes: 1
            })
        );
        assert_eq!(
            board.unclaimed().get(&0xcf8).map(|count| count.reads),
            Some(1)
        );
        // The PCI address register takes dword accesses.
        board.write(0xcf8, 4, 0x8000_0000);
        assert_eq!(board.read(0xcf8, 4), 0x8000_0000);
        assert_eq!(board.read(0xcfc, 4), 0xffff_ffff);
    }

    #[test]
    fn the_keyboard_controller_answers_and_resets() {
        let mut board = Board::new(Vec::new()).expect("board");
        board.write(0x64, 1, 0xaa);
        assert_eq!(board.read(0x60, 1), 0x55, "self-test passed");
        // Identify: ACK, then the ID moves in as the ACK is read.
        board.write(0x60, 1, 0xf2);
        assert_ne!(board.interrupt_levels() & (1 << KEYBOARD_IRQ), 0);
        let _ = board.take_pulses();
        assert_eq!(board.read(0x60, 1), 0xfa);
        assert_eq!(
            board.take_pulses(),
            1 << KEYBOARD_IRQ,
            "the next byte's edge"
        );
        assert_eq!(board.read(0x60, 1), 0xab);
        assert_eq!(board.write(0x64, 1, 0xfe), BusEffect::Reset);
    }

    #[test]
    fn the_vga_answers_and_resets_to_mode_3() {
        let mut board = Board::new(Vec::new()).expect("board");
        board.write(0x3d4, 1, 0x0f);
        board.write(0x3d5, 1, 0x42);
        assert_eq!(board.read(0x3d5, 1), 0x42);
        assert_eq!(board.vga.text_layout().cursor.map(|c| c.column), Some(0x42));
        assert!(board.unclaimed().is_empty());
        board.reset();
        board.write(0x3d4, 1, 0x0f);
        assert_eq!(board.read(0x3d5, 1), 0x00);
    }

    #[test]
    fn an_extended_key_reaches_the_guest_in_set_1() {
        use crate::keyboard::{Key, Keystroke};
        let mut board = Board::new(Vec::new()).expect("board");
        let mut bytes = Vec::new();
        let _ = board.take_pulses();
        for event in Keystroke::plain(Key::Left).events() {
            assert!(board.kbc.keyboard_idle());
            board.push_key(&event);
            // Each byte comes with its own edge: the first as the event
            // arrives, the next as the guest reads the one before.
            assert_eq!(board.take_pulses(), 1 << KEYBOARD_IRQ);
            while board.read(0x64, 1) & 1 != 0 {
                assert_ne!(board.interrupt_levels() & (1 << KEYBOARD_IRQ), 0);
                bytes.push(board.read(0x60, 1));
                if board.read(0x64, 1) & 1 != 0 {
                    assert_eq!(board.take_pulses(), 1 << KEYBOARD_IRQ);
                }
            }
        }
        assert_eq!(bytes, [0xe0, 0x4b, 0xe0, 0xcb]);
        assert!(board.kbc.keyboard_idle());
    }

    #[test]
    fn the_floppy_reads_over_dma_and_interrupts_on_irq_6() {
        use crate::ata::MemoryBackend;
        use crate::floppy::{DISK_SECTORS, Fdc};

        struct Ram(Vec<u8>);
        impl DmaMemory for Ram {
            fn read(&self, guest_phys: u32, buf: &mut [u8]) -> bool {
                let start = guest_phys as usize;
                self.0
                    .get(start..start + buf.len())
                    .map(|bytes| buf.copy_from_slice(bytes))
                    .is_some()
            }
            fn write(&mut self, guest_phys: u32, data: &[u8]) -> bool {
                let start = guest_phys as usize;
                self.0
                    .get_mut(start..start + data.len())
                    .map(|bytes| bytes.copy_from_slice(data))
                    .is_some()
            }
        }

        let mut board = Board::new(Vec::new()).expect("board");
        assert_eq!(board.read(0x3f4, 1), 0xff, "no controller without a disk");
        let mut image = vec![0u8; usize::try_from(DISK_SECTORS).expect("small") * 512];
        image[..512].fill(0x5a);
        board.floppy = Some(Fdc::new(Some(Box::new(MemoryBackend {
            bytes: image,
            read_only: false,
        }))));
        let mut ram = Ram(vec![0; 0x2_0000]);
        // Channel 2: device to memory at 0x1_0000, 512 bytes.
        for (port, value) in [
            (0x0a, 0x06),
            (0x0c, 0),
            (0x0b, 0x46),
            (0x04, 0x00),
            (0x04, 0x00),
            (0x81, 0x01),
            (0x0c, 0),
            (0x05, 0xff),
            (0x05, 0x01),
            (0x0a, 0x02),
        ] {
            board.write(port, 1, value);
        }
        board.write(0x3f2, 1, 0x1c);
        board.write(0x3f7, 1, 0);
        for byte in [0xe6, 0x00, 0, 0, 1, 2, 18, 0x1b, 0xff] {
            board.write(0x3f5, 1, byte);
        }
        assert!(board.dma_pending());
        board.run_dma(&mut ram);
        assert!(!board.dma_pending());
        assert_ne!(board.interrupt_levels() & (1 << crate::floppy::IRQ), 0);
        assert!(ram.0[0x1_0000..0x1_0200].iter().all(|&byte| byte == 0x5a));
        assert_eq!(board.read(0x3f5, 1), 0x00, "ST0: normal termination");
        assert_eq!(board.interrupt_levels() & (1 << crate::floppy::IRQ), 0);
        // DMA status: channel 2 reached terminal count.
        assert_eq!(board.read(0x08, 1) & 0x04, 0x04);
    }

    #[test]
    fn port_0x92_resets_on_a_rising_bit_0() {
        let mut board = Board::new(Vec::new()).expect("board");
        assert_eq!(board.read(SYSTEM_PORT_A, 1), 0x02);
        assert_eq!(board.write(SYSTEM_PORT_A, 1, 0x03), BusEffect::Reset);
        board.reset();
        assert_eq!(board.read(SYSTEM_PORT_A, 1), 0x02);
    }
}
