//! PCI configuration mechanism #1 (ports 0xCF8 and 0xCFC-0xCFF) of a host
//! bridge whose bus has no devices at all: the address register latches
//! and reads back, and every configuration read finds no device (all
//! ones), as an empty bus answers a master abort. Writes go nowhere.
//!
//! Linux probes it with a dword write and read of 0xCF8; finding neither a
//! host bridge nor a VGA device behind it (its sanity check), it concludes
//! there is no usable PCI. Byte and word accesses to 0xCF8-0xCFB are not
//! decoded by mechanism #1 (they belong to the ISA bus, where nothing
//! answers them), which is how Linux's check for mechanism #2 fails.

use serde::{Deserialize, Serialize};

/// CONFIG_ADDRESS.
pub const CONFIG_ADDRESS: u16 = 0xcf8;
/// CONFIG_DATA (four byte lanes).
pub const CONFIG_DATA: u16 = 0xcfc;

/// The configuration space ports of an empty PCI bus.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmptyPciBus {
    address: u32,
}

impl EmptyPciBus {
    /// Whether an access of `size` bytes at `port` is this device's: dword
    /// accesses to CONFIG_ADDRESS and any access within CONFIG_DATA.
    #[must_use]
    pub fn claims(port: u16, size: u8) -> bool {
        (port == CONFIG_ADDRESS && size == 4) || (CONFIG_DATA..CONFIG_DATA + 4).contains(&port)
    }

    /// IN.
    #[must_use]
    pub fn read(&self, port: u16, size: u8) -> u32 {
        if port == CONFIG_ADDRESS && size == 4 {
            return self.address;
        }
        // No function exists at any bus/device/function: the read is
        // master-aborted and returns all ones, whatever the address.
        match size {
            1 => 0xff,
            2 => 0xffff,
            _ => 0xffff_ffff,
        }
    }

    /// OUT.
    pub fn write(&mut self, port: u16, size: u8, value: u32) {
        if port == CONFIG_ADDRESS && size == 4 {
            // Bits 1:0 are reserved and read as 0, bits 30:24 reserved.
            self.address = value & 0x80ff_fffc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_type1_probe_sees_the_register_but_no_devices() {
        let mut bus = EmptyPciBus::default();
        assert!(EmptyPciBus::claims(0xcf8, 4));
        assert!(!EmptyPciBus::claims(0xcfb, 1), "byte port 0xCFB is ISA's");
        assert!(!EmptyPciBus::claims(0xcf8, 1), "byte port 0xCF8 is ISA's");
        bus.write(0xcf8, 4, 0x8000_0000);
        assert_eq!(bus.read(0xcf8, 4), 0x8000_0000);
        // Vendor ID of bus 0, device 0, function 0: nothing there.
        bus.write(0xcf8, 4, 0x8000_0000);
        assert_eq!(bus.read(0xcfc, 2), 0xffff);
        assert_eq!(bus.read(0xcfe, 2), 0xffff);
        assert_eq!(bus.read(0xcfc, 4), 0xffff_ffff);
        bus.write(0xcfc, 4, 0x1234_5678);
        assert_eq!(bus.read(0xcfc, 4), 0xffff_ffff, "writes go nowhere");
        bus.write(0xcf8, 4, 0xffff_ffff);
        assert_eq!(bus.read(0xcf8, 4), 0x80ff_fffc);
    }
}
