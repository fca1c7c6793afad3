//! Guest memory as the monitor reaches it: through a software walk of the
//! guest's page tables, never by dereferencing a guest-virtual address.

use thiserror::Error;

use crate::{GuestPhys, GuestVirt, PAGE_SIZE};

/// Why a guest-virtual access could not be carried out. This is a guest
/// event, not a VMM failure: the caller decides whether it is a hidden fault
/// to fix or a #PF to deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum MemFault {
    /// Nothing is mapped at this guest-virtual address.
    #[error("guest-virtual {0} is not mapped")]
    NotMapped(GuestVirt),
    /// The address maps to guest-physical memory that is not RAM.
    #[error("guest-virtual {virt} maps to {phys}, outside guest RAM")]
    NotRam {
        /// The address the guest used.
        virt: GuestVirt,
        /// Where its page tables point.
        phys: GuestPhys,
    },
}

/// Guest memory seen through the guest's current address space.
pub trait GuestMemory {
    /// The guest-physical address that backs `virt` now.
    fn translate(&self, virt: GuestVirt) -> Result<GuestPhys, MemFault>;

    /// Copies guest memory starting at `virt` into `buf`, crossing pages as
    /// the guest would. All of `buf` is filled or an error names the first
    /// byte that could not be read.
    fn read_virt(&self, virt: GuestVirt, buf: &mut [u8]) -> Result<(), MemFault>;

    /// Reads a little-endian 32-bit value.
    fn read_u32(&self, virt: GuestVirt) -> Result<u32, MemFault> {
        let mut bytes = [0u8; 4];
        self.read_virt(virt, &mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    /// Reads a little-endian 16-bit value.
    fn read_u16(&self, virt: GuestVirt) -> Result<u16, MemFault> {
        let mut bytes = [0u8; 2];
        self.read_virt(virt, &mut bytes)?;
        Ok(u16::from_le_bytes(bytes))
    }
}

/// Guest memory made of a few loaded regions, each at a guest-virtual
/// address with its own guest-physical address; anything else is unmapped.
/// This is what a kernel image looks like before it runs (ELF segments with
/// virtual and physical addresses), and a convenient memory for tests.
///
/// Like paged memory, regions cover whole pages: a region is widened to the
/// pages its bytes touch, and the widening reads as zeros.
#[derive(Clone, Debug, Default)]
pub struct RegionMemory {
    regions: Vec<Region>,
}

#[derive(Clone, Debug)]
struct Region {
    virt: GuestVirt,
    phys: GuestPhys,
    bytes: Vec<u8>,
}

impl RegionMemory {
    /// An empty memory: every access is `NotMapped`.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` at `virt`, backed by guest-physical `phys`. Regions added
    /// later win where they overlap earlier ones.
    pub fn add(&mut self, virt: GuestVirt, phys: GuestPhys, bytes: Vec<u8>) {
        let lead = virt.0 % PAGE_SIZE;
        let mut padded = vec![0u8; lead as usize];
        padded.extend_from_slice(&bytes);
        let trail = (PAGE_SIZE as usize - padded.len() % PAGE_SIZE as usize) % PAGE_SIZE as usize;
        padded.resize(padded.len() + trail, 0);
        self.regions.push(Region {
            virt: GuestVirt(virt.0 - lead),
            phys: GuestPhys(phys.0.wrapping_sub(lead)),
            bytes: padded,
        });
    }

    /// Identity-mapped region, as with guest paging off.
    pub fn add_identity(&mut self, at: u32, bytes: Vec<u8>) {
        self.add(GuestVirt(at), GuestPhys(at), bytes);
    }

    fn find(&self, virt: GuestVirt) -> Option<(&Region, usize)> {
        self.regions.iter().rev().find_map(|region| {
            let offset = virt.0.wrapping_sub(region.virt.0) as usize;
            (offset < region.bytes.len()).then_some((region, offset))
        })
    }
}

impl GuestMemory for RegionMemory {
    fn translate(&self, virt: GuestVirt) -> Result<GuestPhys, MemFault> {
        let (region, offset) = self.find(virt).ok_or(MemFault::NotMapped(virt))?;
        // Region lengths come from Vec<u8> of guest-sized images: the offset
        // is below 4 GiB, and wrapping matches guest arithmetic anyway.
        #[allow(clippy::cast_possible_truncation)]
        Ok(region.phys.offset(offset as u32))
    }

    fn read_virt(&self, virt: GuestVirt, buf: &mut [u8]) -> Result<(), MemFault> {
        let mut done = 0;
        while done < buf.len() {
            #[allow(clippy::cast_possible_truncation)]
            let at = virt.offset(done as u32);
            let (region, offset) = self.find(at).ok_or(MemFault::NotMapped(at))?;
            let n = (region.bytes.len() - offset).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&region.bytes[offset..offset + n]);
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cross_regions_and_stop_at_holes() {
        let mut mem = RegionMemory::new();
        mem.add_identity(0x1ffe, vec![1, 2]);
        mem.add_identity(0x2000, vec![3, 4]);
        assert_eq!(mem.read_u32(GuestVirt(0x1ffe)), Ok(0x0403_0201));
        let mut buf = [0u8; 8];
        assert_eq!(
            mem.read_virt(GuestVirt(0x2ffc), &mut buf),
            Err(MemFault::NotMapped(GuestVirt(0x3000)))
        );
    }

    #[test]
    fn regions_cover_whole_pages() {
        let mut mem = RegionMemory::new();
        mem.add(GuestVirt(0x1010), GuestPhys(0x5010), vec![0xaa]);
        assert_eq!(mem.read_u16(GuestVirt(0x100f)), Ok(0xaa00));
        assert_eq!(mem.translate(GuestVirt(0x1fff)), Ok(GuestPhys(0x5fff)));
        assert!(mem.translate(GuestVirt(0x2000)).is_err());
        assert!(mem.translate(GuestVirt(0xfff)).is_err());
    }

    #[test]
    fn translate_uses_region_physical_base() {
        let mut mem = RegionMemory::new();
        mem.add(
            GuestVirt(0xc100_0000),
            GuestPhys(0x100_0000),
            vec![0; 0x2000],
        );
        assert_eq!(
            mem.translate(GuestVirt(0xc100_1234)),
            Ok(GuestPhys(0x100_1234))
        );
        assert!(mem.translate(GuestVirt(0xc100_2000)).is_err());
    }
}
