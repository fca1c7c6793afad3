//! The port I/O bus: device ranges, byte-wise splitting of wide accesses to
//! 8-bit devices, and what unclaimed ports answer (all ones, as on a PC).

use std::fmt;

/// A device on the port bus, addressed by offset within its range.
pub trait PortDevice {
    /// Reads `size` (1, 2 or 4) bytes at `offset`.
    fn read(&mut self, offset: u16, size: u8) -> u32;
    /// Writes `size` bytes of `value` at `offset`.
    fn write(&mut self, offset: u16, size: u8, value: u32) -> BusEffect;
    /// Whether the device only decodes byte accesses (wide accesses are then
    /// split into bytes at consecutive ports, as the ISA bus does).
    fn byte_wide(&self) -> bool {
        true
    }
}

/// Something a port write did beyond the device's own state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusEffect {
    /// Nothing more.
    None,
    /// The guest asked to end the VM with this exit status.
    Exit(i32),
    /// The write pulsed the CPU's reset line.
    Reset,
    /// The guest marked a point of its run ([`crate::counter_mark`]).
    Mark(u32),
}

struct Range {
    start: u16,
    len: u16,
    name: &'static str,
    device: Box<dyn PortDevice>,
}

/// The port bus.
#[derive(Default)]
pub struct Bus {
    ranges: Vec<Range>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.ranges
                    .iter()
                    .map(|range| (range.name, range.start, range.len)),
            )
            .finish()
    }
}

/// A port range that overlaps one already on the bus.
#[derive(Debug, thiserror::Error)]
#[error("ports {start:#x}+{len} of {name} overlap {other}")]
pub struct OverlapError {
    /// The new device.
    pub name: &'static str,
    /// Its first port.
    pub start: u16,
    /// Its port count.
    pub len: u16,
    /// The device already there.
    pub other: &'static str,
}

impl Bus {
    /// An empty bus.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at ports `[start, start + len)`.
    pub fn add(
        &mut self,
        name: &'static str,
        start: u16,
        len: u16,
        device: Box<dyn PortDevice>,
    ) -> Result<(), OverlapError> {
        let end = u32::from(start) + u32::from(len);
        if let Some(other) = self.ranges.iter().find(|range| {
            u32::from(range.start) < end
                && u32::from(start) < u32::from(range.start) + u32::from(range.len)
        }) {
            return Err(OverlapError {
                name,
                start,
                len,
                other: other.name,
            });
        }
        self.ranges.push(Range {
            start,
            len,
            name,
            device,
        });
        Ok(())
    }

    /// Whether a device on the bus decodes `port`.
    #[must_use]
    pub fn claims(&self, port: u16) -> bool {
        self.ranges
            .iter()
            .any(|range| port.wrapping_sub(range.start) < range.len)
    }

    fn find(&mut self, port: u16) -> Option<(&mut Range, u16)> {
        self.ranges.iter_mut().find_map(|range| {
            let offset = port.wrapping_sub(range.start);
            (offset < range.len).then_some((range, offset))
        })
    }

    /// IN of `size` bytes from `port`.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        let whole = match self.find(port) {
            Some((range, offset)) if !range.device.byte_wide() || size == 1 => {
                return range.device.read(offset, size) & mask(size);
            }
            Some(_) => false,
            None => size == 1,
        };
        if whole {
            return 0xff;
        }
        // Split into bytes at consecutive ports (at most four: IN has no
        // wider form, and a wider value would not fit).
        (0..size.min(4)).fold(0, |value, index| {
            let byte = match self.find(port.wrapping_add(u16::from(index))) {
                Some((range, offset)) => range.device.read(offset, 1) & 0xff,
                None => 0xff,
            };
            value | (byte << (8 * u32::from(index)))
        })
    }

    /// OUT of `size` bytes of `value` to `port`.
    pub fn write(&mut self, port: u16, size: u8, value: u32) -> BusEffect {
        match self.find(port) {
            Some((range, offset)) if !range.device.byte_wide() || size == 1 => {
                return range.device.write(offset, size, value & mask(size));
            }
            None if size == 1 => return BusEffect::None,
            _ => {}
        }
        let mut effect = BusEffect::None;
        for index in 0..size.min(4) {
            if let Some((range, offset)) = self.find(port.wrapping_add(u16::from(index))) {
                let byte = (value >> (8 * u32::from(index))) & 0xff;
                match range.device.write(offset, 1, byte) {
                    BusEffect::None => {}
                    other => effect = other,
                }
            }
        }
        effect
    }
}

fn mask(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers what was written, reads back offset + 0x10.
    struct Echo(Vec<(u16, u8, u32)>);

    impl PortDevice for Echo {
        fn read(&mut self, offset: u16, _size: u8) -> u32 {
            u32::from(offset) + 0x10
        }
        fn write(&mut self, offset: u16, size: u8, value: u32) -> BusEffect {
            self.0.push((offset, size, value));
            BusEffect::None
        }
    }

    #[test]
    fn unclaimed_ports_read_all_ones_and_ignore_writes() {
        let mut bus = Bus::new();
        assert_eq!(bus.read(0x80, 1), 0xff);
        assert_eq!(bus.read(0x80, 2), 0xffff);
        assert_eq!(bus.read(0x80, 4), 0xffff_ffff);
        assert_eq!(bus.write(0x80, 4, 1), BusEffect::None);
    }

    /// Sizes the CPU never uses (IN and OUT move 1, 2 or 4 bytes) once
    /// overflowed the byte shift of a split access: found by the fuzz
    /// target `bus_splits_and_floats`.
    #[test]
    fn odd_access_sizes_do_not_overflow_the_split() {
        let mut bus = Bus::new();
        bus.add("echo", 0x3f8, 8, Box::new(Echo(Vec::new())))
            .expect("free range");
        assert_eq!(bus.read(0x80, 5), 0xffff_ffff);
        assert_eq!(bus.read(0x80, 255), 0xffff_ffff);
        assert_eq!(bus.read(0x3f8, 3), 0x12_1110);
        assert_eq!(bus.read(0x3f8, 0), 0);
        assert_eq!(bus.write(0x3f8, 200, 0x0403_0201), BusEffect::None);
        assert_eq!(bus.write(0x80, 9, 1), BusEffect::None);
    }

    #[test]
    fn wide_accesses_to_byte_devices_split() {
        let mut bus = Bus::new();
        bus.add("echo", 0x3f8, 8, Box::new(Echo(Vec::new())))
            .expect("free range");
        assert_eq!(bus.read(0x3f8, 1), 0x10);
        assert_eq!(bus.read(0x3fe, 2), 0x1716);
        // The last byte falls past the device.
        assert_eq!(bus.read(0x3fe, 4), 0xffff_1716);
        assert!(
            bus.add("other", 0x3ff, 2, Box::new(Echo(Vec::new())))
                .is_err()
        );
    }
}
