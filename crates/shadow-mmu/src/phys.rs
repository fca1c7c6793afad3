//! Guest-physical memory as the shadow MMU reaches it. In the VMM this is
//! the guest-physical window onto the guest RAM memfd; in tests a vector.

use btvmm_core::GuestPhys;

use crate::ShadowError;

/// Guest RAM by guest-physical address. Values are little-endian, as x86
/// paging structures are.
pub trait PhysMemory {
    /// Reads the 32-bit value at `guest_phys`, or
    /// [`ShadowError::OutsideRam`] when any of its bytes is not RAM.
    fn read_u32(&self, guest_phys: GuestPhys) -> Result<u32, ShadowError>;

    /// Writes `value` at `guest_phys`, or [`ShadowError::OutsideRam`] when
    /// any of its bytes is not RAM (nothing is written then).
    fn write_u32(&mut self, guest_phys: GuestPhys, value: u32) -> Result<(), ShadowError>;

    /// Reads the 1024 32-bit entries of the paging structure at
    /// `guest_phys` (page aligned). The default reads entry by entry;
    /// memories that can copy a page at once should.
    ///
    /// # Errors
    ///
    /// [`ShadowError::OutsideRam`] when the page is not RAM.
    fn read_table(
        &self,
        guest_phys: GuestPhys,
        entries: &mut [u32; 1024],
    ) -> Result<(), ShadowError> {
        for (index, entry) in (0u32..).zip(entries.iter_mut()) {
            *entry = self.read_u32(guest_phys.offset(index * 4))?;
        }
        Ok(())
    }

    /// Whether the whole 4 KiB page holding `guest_phys` is RAM. Only RAM
    /// may be shadow-mapped; anything else is device memory, emulated.
    fn is_ram_page(&self, guest_phys: GuestPhys) -> bool;
}

/// Guest RAM of `len` bytes starting at guest-physical 0, held in a vector.
/// Meant for tests, here and in other crates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VecMemory {
    bytes: Vec<u8>,
}

impl VecMemory {
    /// Zeroed RAM of `len` bytes.
    #[must_use]
    pub fn new(len: usize) -> Self {
        Self {
            bytes: vec![0; len],
        }
    }

    /// The RAM contents.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn range(&self, guest_phys: GuestPhys) -> Result<std::ops::Range<usize>, ShadowError> {
        let start = usize::try_from(guest_phys.0).unwrap_or(usize::MAX);
        match start.checked_add(4) {
            Some(end) if end <= self.bytes.len() => Ok(start..end),
            _ => Err(ShadowError::OutsideRam { guest_phys }),
        }
    }
}

impl PhysMemory for VecMemory {
    fn read_u32(&self, guest_phys: GuestPhys) -> Result<u32, ShadowError> {
        let range = self.range(guest_phys)?;
        let mut value = [0u8; 4];
        value.copy_from_slice(&self.bytes[range]);
        Ok(u32::from_le_bytes(value))
    }

    fn write_u32(&mut self, guest_phys: GuestPhys, value: u32) -> Result<(), ShadowError> {
        let range = self.range(guest_phys)?;
        self.bytes[range].copy_from_slice(&value.to_le_bytes());
        Ok(())
    }

    fn is_ram_page(&self, guest_phys: GuestPhys) -> bool {
        let page_start = u64::from(guest_phys.page()) * u64::from(btvmm_core::PAGE_SIZE);
        let page_end = page_start + u64::from(btvmm_core::PAGE_SIZE);
        u64::try_from(self.bytes.len()).is_ok_and(|len| page_end <= len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_was_written_little_endian() {
        let mut ram = VecMemory::new(0x2000);
        ram.write_u32(GuestPhys(0x1ffc), 0x1122_3344)
            .expect("inside RAM");
        assert_eq!(ram.read_u32(GuestPhys(0x1ffc)).ok(), Some(0x1122_3344));
        assert_eq!(ram.bytes()[0x1ffc], 0x44);
    }

    #[test]
    fn straddling_the_end_of_ram_is_outside() {
        let mut ram = VecMemory::new(0x2000);
        assert!(matches!(
            ram.read_u32(GuestPhys(0x1ffe)),
            Err(ShadowError::OutsideRam {
                guest_phys: GuestPhys(0x1ffe)
            })
        ));
        assert!(ram.write_u32(GuestPhys(0xffff_fffe), 1).is_err());
        assert!(ram.is_ram_page(GuestPhys(0x1fff)));
        assert!(!ram.is_ram_page(GuestPhys(0x2000)));
    }
}
