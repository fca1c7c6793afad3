//! Guest memory as the monitor reaches it: through a software walk of the
//! guest's page tables, never by dereferencing a guest-virtual address.
//!
//! One way in, one error: everything that reads guest RAM (the emulator
//! through the monitor's view, the planner, the shadow MMU's walks) reaches
//! it by guest-physical address through [`PhysMemory`], and what cannot be
//! reached is a [`MemFault`]. The world process implements it over its
//! window onto the guest RAM memfd; tests over a vector
//! ([`VecPhysMemory`]).

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
    /// A guest-physical access reached past the end of guest RAM.
    #[error("guest-physical {guest_phys} is outside guest RAM")]
    OutsideRam {
        /// The first byte of the access.
        guest_phys: GuestPhys,
    },
}

/// Guest RAM by guest-physical address. Values are little-endian, as x86's
/// are.
pub trait PhysMemory {
    /// Copies guest RAM at `guest_phys` into `buf`, or
    /// [`MemFault::OutsideRam`] (and nothing copied) when any byte is not
    /// RAM.
    ///
    /// # Errors
    ///
    /// [`MemFault::OutsideRam`].
    fn read_phys(&self, guest_phys: GuestPhys, buf: &mut [u8]) -> Result<(), MemFault>;

    /// Copies `data` into guest RAM at `guest_phys`, or
    /// [`MemFault::OutsideRam`] (and nothing written) when any byte is not
    /// RAM.
    ///
    /// # Errors
    ///
    /// [`MemFault::OutsideRam`].
    fn write_phys(&mut self, guest_phys: GuestPhys, data: &[u8]) -> Result<(), MemFault>;

    /// Bytes of guest RAM (it starts at guest-physical 0).
    fn ram_size(&self) -> u32;

    /// Reads the 32-bit value at `guest_phys`.
    ///
    /// # Errors
    ///
    /// [`MemFault::OutsideRam`].
    fn read_u32(&self, guest_phys: GuestPhys) -> Result<u32, MemFault> {
        let mut bytes = [0u8; 4];
        self.read_phys(guest_phys, &mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    /// Writes the 32-bit `value` at `guest_phys`.
    ///
    /// # Errors
    ///
    /// [`MemFault::OutsideRam`].
    fn write_u32(&mut self, guest_phys: GuestPhys, value: u32) -> Result<(), MemFault> {
        self.write_phys(guest_phys, &value.to_le_bytes())
    }

    /// Reads the 1024 32-bit entries of the paging structure at
    /// `guest_phys` (page aligned) in one copy.
    ///
    /// # Errors
    ///
    /// [`MemFault::OutsideRam`] when the page is not RAM.
    fn read_table(&self, guest_phys: GuestPhys, entries: &mut [u32; 1024]) -> Result<(), MemFault> {
        let mut bytes = [0u8; PAGE_SIZE as usize];
        self.read_phys(guest_phys, &mut bytes)?;
        for (entry, word) in entries.iter_mut().zip(bytes.chunks_exact(4)) {
            *entry = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        }
        Ok(())
    }

    /// Whether the whole 4 KiB page holding `guest_phys` is RAM.
    fn is_ram_page(&self, guest_phys: GuestPhys) -> bool {
        u64::from(guest_phys.page()) * u64::from(PAGE_SIZE) + u64::from(PAGE_SIZE)
            <= u64::from(self.ram_size())
    }
}

/// Guest RAM of a given size held in a vector: for tests, here and in other
/// crates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VecPhysMemory {
    bytes: Vec<u8>,
}

impl VecPhysMemory {
    /// Zeroed RAM of `len` bytes (at most 4 GiB are reachable).
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

    /// The RAM contents, to change behind the guest's back.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    fn range(&self, guest_phys: GuestPhys, len: usize) -> Result<std::ops::Range<usize>, MemFault> {
        let start = usize::try_from(guest_phys.0).unwrap_or(usize::MAX);
        match start.checked_add(len) {
            Some(end) if end <= self.bytes.len() => Ok(start..end),
            _ => Err(MemFault::OutsideRam { guest_phys }),
        }
    }
}

impl PhysMemory for VecPhysMemory {
    fn read_phys(&self, guest_phys: GuestPhys, buf: &mut [u8]) -> Result<(), MemFault> {
        let range = self.range(guest_phys, buf.len())?;
        buf.copy_from_slice(&self.bytes[range]);
        Ok(())
    }

    fn write_phys(&mut self, guest_phys: GuestPhys, data: &[u8]) -> Result<(), MemFault> {
        let range = self.range(guest_phys, data.len())?;
        self.bytes[range].copy_from_slice(data);
        Ok(())
    }

    fn ram_size(&self) -> u32 {
        u32::try_from(self.bytes.len()).unwrap_or(u32::MAX)
    }
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
    fn physical_memory_reads_back_what_was_written_little_endian() {
        let mut ram = VecPhysMemory::new(0x2000);
        ram.write_u32(GuestPhys(0x1ffc), 0x1122_3344)
            .expect("inside RAM");
        assert_eq!(ram.read_u32(GuestPhys(0x1ffc)), Ok(0x1122_3344));
        assert_eq!(ram.bytes()[0x1ffc], 0x44);
        let mut table = [0; 1024];
        ram.read_table(GuestPhys(0x1000), &mut table)
            .expect("inside RAM");
        assert_eq!(table[1023], 0x1122_3344);
    }

    #[test]
    fn physical_accesses_past_the_end_of_ram_are_outside_and_change_nothing() {
        let mut ram = VecPhysMemory::new(0x2000);
        assert_eq!(
            ram.read_u32(GuestPhys(0x1ffe)),
            Err(MemFault::OutsideRam {
                guest_phys: GuestPhys(0x1ffe)
            })
        );
        assert!(ram.write_phys(GuestPhys(0x1fff), &[1, 2]).is_err());
        assert_eq!(ram.bytes()[0x1fff], 0, "nothing written");
        assert!(ram.write_u32(GuestPhys(0xffff_fffe), 1).is_err());
        assert!(ram.is_ram_page(GuestPhys(0x1fff)));
        assert!(!ram.is_ram_page(GuestPhys(0x2000)));
        let mut table = [0; 1024];
        assert!(ram.read_table(GuestPhys(0x2000), &mut table).is_err());
    }

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
