//! The shadow MMU's host side: shadow-mmu decides what the world's address
//! space below 4 GiB must hold, [`RamMapper`] makes it so with mmap,
//! mprotect and munmap of the guest RAM memfd.
//!
//! Host protection has no user/supervisor bit: a shadow mapping is
//! reachable from all guest code running natively at host CPL 3. Keeping
//! guest user code off supervisor pages is the job of the user-mode shadow
//! segments (DESIGN.md section 2), not of these calls, so `Protection::user`
//! is not used here.

use btvmm_core::{GuestPhys, GuestVirt, PAGE_SIZE};
use shadow_mmu::{HostMapper, Protection, ShadowError};

use crate::WorldError;
use crate::sys::memory::GuestRam;

/// Shadow mappings of guest RAM in the calling process.
#[derive(Debug)]
pub struct RamMapper<'a> {
    ram: &'a GuestRam,
}

impl<'a> RamMapper<'a> {
    /// A mapper over `ram`'s memfd.
    #[must_use]
    pub fn new(ram: &'a GuestRam) -> Self {
        Self { ram }
    }
}

/// The byte length of `pages` pages, if it fits the 32-bit guest.
fn length(guest_virt: GuestVirt, pages: u32) -> Result<u32, ShadowError> {
    pages
        .checked_mul(PAGE_SIZE)
        .ok_or_else(|| refused(guest_virt, pages, "the range passes 4 GiB".into()))
}

fn refused(guest_virt: GuestVirt, pages: u32, why: String) -> ShadowError {
    ShadowError::Host {
        guest_virt,
        pages,
        source: std::io::Error::other(why),
    }
}

fn host(guest_virt: GuestVirt, pages: u32, error: WorldError) -> ShadowError {
    match error {
        WorldError::Host { source, .. } => ShadowError::Host {
            guest_virt,
            pages,
            source,
        },
        other => refused(guest_virt, pages, other.to_string()),
    }
}

impl HostMapper for RamMapper<'_> {
    fn map(
        &mut self,
        guest_virt: GuestVirt,
        guest_phys: GuestPhys,
        pages: u32,
        prot: Protection,
    ) -> Result<(), ShadowError> {
        let len = length(guest_virt, pages)?;
        self.ram
            .map_at(guest_virt.0, guest_phys.0, len, prot.writable)
            .map_err(|error| host(guest_virt, pages, error))
    }

    fn protect(
        &mut self,
        guest_virt: GuestVirt,
        pages: u32,
        prot: Protection,
    ) -> Result<(), ShadowError> {
        let len = length(guest_virt, pages)?;
        self.ram
            .protect_at(guest_virt.0, len, prot.writable)
            .map_err(|error| host(guest_virt, pages, error))
    }

    fn unmap(&mut self, guest_virt: GuestVirt, pages: u32) -> Result<(), ShadowError> {
        let len = length(guest_virt, pages)?;
        self.ram
            .unmap_at(guest_virt.0, len)
            .map_err(|error| host(guest_virt, pages, error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The protection of the mapping holding `host_virt`, from
    /// /proc/self/maps (e.g. "rw-s").
    fn protection_at(host_virt: u64) -> Option<String> {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
        maps.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let start = u64::from_str_radix(start, 16).ok()?;
            let end = u64::from_str_radix(end, 16).ok()?;
            (start..end)
                .contains(&host_virt)
                .then(|| fields.next().map(str::to_owned))?
        })
    }

    /// A free 64 KiB stretch below 4 GiB in this test process.
    fn free_low_range() -> u32 {
        // SAFETY: a fresh private reservation where the kernel finds room
        // below 2 GiB, released at once: only its address is used.
        let reservation = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                0x1_0000,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
                -1,
                0,
            )
        };
        assert_ne!(reservation, libc::MAP_FAILED);
        // SAFETY: releases the reservation just made.
        unsafe { libc::munmap(reservation, 0x1_0000) };
        u32::try_from(reservation as usize).expect("below 4 GiB")
    }

    #[test]
    fn shadow_mappings_show_guest_ram_and_follow_protection_changes() {
        let ram = GuestRam::create(1 << 20).expect("guest RAM");
        assert!(ram.write(0x3000, b"guest page 3"));
        assert!(ram.write(0x4000, b"guest page 4"));
        let guest_virt = GuestVirt(free_low_range());
        let mut mapper = RamMapper::new(&ram);
        let writable = Protection {
            writable: true,
            user: true,
        };
        mapper
            .map(guest_virt, GuestPhys(0x3000), 2, writable)
            .expect("map two pages");
        let host_virt = u64::from(guest_virt.0);
        // SAFETY: the two pages at guest_virt were just mapped readable.
        let seen = unsafe { std::slice::from_raw_parts(host_virt as *const u8, 0x2000) };
        assert_eq!(&seen[..12], b"guest page 3");
        assert_eq!(&seen[0x1000..0x100c], b"guest page 4");
        assert_eq!(protection_at(host_virt).as_deref(), Some("rwxs"));

        mapper
            .protect(
                guest_virt,
                1,
                Protection {
                    writable: false,
                    user: true,
                },
            )
            .expect("write-protect one page");
        assert_eq!(protection_at(host_virt).as_deref(), Some("r-xs"));
        assert_eq!(protection_at(host_virt + 0x1000).as_deref(), Some("rwxs"));

        mapper.unmap(guest_virt, 2).expect("unmap");
        assert_eq!(protection_at(host_virt), None);
        assert_eq!(protection_at(host_virt + 0x1000), None);
    }

    #[test]
    fn requests_the_host_cannot_take_are_errors() {
        let ram = GuestRam::create(1 << 20).expect("guest RAM");
        let mut mapper = RamMapper::new(&ram);
        let prot = Protection {
            writable: false,
            user: false,
        };
        // Past the end of guest RAM.
        assert!(
            mapper
                .map(GuestVirt(0x4000_0000), GuestPhys(0xff000), 2, prot)
                .is_err()
        );
        // Past 4 GiB.
        assert!(mapper.unmap(GuestVirt(0xffff_f000), 2).is_err());
        assert!(mapper.protect(GuestVirt(0x1000), 0x10_0000, prot).is_err());
    }
}
