//! The seam between shadow decisions and the host: [`HostMapper`] changes
//! the world process's mappings below 4 GiB. world-switch implements it with
//! mmap/mprotect/munmap of the guest memfd; [`FakeMapper`] records calls.

use std::collections::BTreeMap;
use std::io;

use btvmm_core::{GuestPhys, GuestVirt, PAGE_SIZE};

use crate::ShadowError;

/// Host protection of a shadow mapping. Everything below 4 GiB is reached
/// by guest code at host CPL 3, so `user` is not a host permission: it
/// records the guest's U/S so that segment truncation (later) can keep guest
/// user code out of supervisor pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Protection {
    /// Host writes allowed.
    pub writable: bool,
    /// The guest's tables allow user-mode access.
    pub user: bool,
}

impl Protection {
    /// Read-only (reads and fetches; no NX without PAE).
    #[must_use]
    pub const fn read_only(user: bool) -> Self {
        Self {
            writable: false,
            user,
        }
    }

    /// Readable and writable.
    #[must_use]
    pub const fn read_write(user: bool) -> Self {
        Self {
            writable: true,
            user,
        }
    }
}

/// Changes shadow mappings in the host address space of one world process.
/// Ranges are whole 4 KiB pages starting at page-aligned addresses.
pub trait HostMapper {
    /// Maps `pages` guest pages at `guest_virt` to guest RAM at `guest_phys`
    /// with `prot`, replacing whatever was mapped there.
    ///
    /// # Errors
    ///
    /// [`ShadowError::Host`] when the host refuses.
    fn map(
        &mut self,
        guest_virt: GuestVirt,
        guest_phys: GuestPhys,
        pages: u32,
        prot: Protection,
    ) -> Result<(), ShadowError>;

    /// Changes the protection of `pages` mapped pages at `guest_virt`.
    ///
    /// # Errors
    ///
    /// [`ShadowError::Host`] when the host refuses (as mprotect does for a
    /// range with holes).
    fn protect(
        &mut self,
        guest_virt: GuestVirt,
        pages: u32,
        prot: Protection,
    ) -> Result<(), ShadowError>;

    /// Removes the mappings of `pages` pages at `guest_virt`; holes are fine.
    ///
    /// # Errors
    ///
    /// [`ShadowError::Host`] when the host refuses.
    fn unmap(&mut self, guest_virt: GuestVirt, pages: u32) -> Result<(), ShadowError>;
}

/// A [`HostMapper`] that keeps a page-granular picture of what would be
/// mapped and counts calls; for tests here and in other crates. It checks
/// requests as the host would: page-aligned, non-empty, below 4 GiB, and
/// `protect` only over mapped pages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FakeMapper {
    /// Guest-virtual page frame -> (guest-physical page frame, protection).
    pub pages: BTreeMap<u32, (u32, Protection)>,
    /// Calls to [`HostMapper::map`] so far.
    pub map_calls: usize,
    /// Calls to [`HostMapper::protect`] so far.
    pub protect_calls: usize,
    /// Calls to [`HostMapper::unmap`] so far.
    pub unmap_calls: usize,
}

impl FakeMapper {
    /// An empty address space.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// What the page holding `guest_virt` is mapped to: the guest-physical
    /// address of the same byte, and the protection.
    #[must_use]
    pub fn lookup(&self, guest_virt: GuestVirt) -> Option<(GuestPhys, Protection)> {
        self.pages
            .get(&guest_virt.page())
            .map(|&(phys_page, prot)| {
                (
                    GuestPhys(phys_page * PAGE_SIZE + guest_virt.0 % PAGE_SIZE),
                    prot,
                )
            })
    }

    /// Total calls of any kind.
    #[must_use]
    pub fn calls(&self) -> usize {
        self.map_calls + self.protect_calls + self.unmap_calls
    }

    fn check(guest_virt: GuestVirt, pages: u32) -> Result<std::ops::Range<u32>, ShadowError> {
        let first = guest_virt.page();
        let end = first.checked_add(pages).filter(|&end| end <= 1 << 20);
        match end {
            Some(end) if pages > 0 && guest_virt.0.is_multiple_of(PAGE_SIZE) => Ok(first..end),
            _ => Err(ShadowError::Host {
                guest_virt,
                pages,
                source: io::Error::from(io::ErrorKind::InvalidInput),
            }),
        }
    }
}

impl HostMapper for FakeMapper {
    fn map(
        &mut self,
        guest_virt: GuestVirt,
        guest_phys: GuestPhys,
        pages: u32,
        prot: Protection,
    ) -> Result<(), ShadowError> {
        self.map_calls += 1;
        let range = Self::check(guest_virt, pages)?;
        let phys_fits = guest_phys
            .page()
            .checked_add(pages)
            .is_some_and(|end| end <= 1 << 20);
        if !guest_phys.0.is_multiple_of(PAGE_SIZE) || !phys_fits {
            return Err(ShadowError::Host {
                guest_virt,
                pages,
                source: io::Error::from(io::ErrorKind::InvalidInput),
            });
        }
        for (virt_page, phys_page) in range.zip(guest_phys.page()..) {
            self.pages.insert(virt_page, (phys_page, prot));
        }
        Ok(())
    }

    fn protect(
        &mut self,
        guest_virt: GuestVirt,
        pages: u32,
        prot: Protection,
    ) -> Result<(), ShadowError> {
        self.protect_calls += 1;
        let range = Self::check(guest_virt, pages)?;
        if range
            .clone()
            .any(|virt_page| !self.pages.contains_key(&virt_page))
        {
            return Err(ShadowError::Host {
                guest_virt,
                pages,
                source: io::Error::new(io::ErrorKind::NotFound, "protect over unmapped pages"),
            });
        }
        for virt_page in range {
            if let Some(slot) = self.pages.get_mut(&virt_page) {
                slot.1 = prot;
            }
        }
        Ok(())
    }

    fn unmap(&mut self, guest_virt: GuestVirt, pages: u32) -> Result<(), ShadowError> {
        self.unmap_calls += 1;
        for virt_page in Self::check(guest_virt, pages)? {
            self.pages.remove(&virt_page);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_pages_and_counts_calls() {
        let mut mapper = FakeMapper::new();
        mapper
            .map(
                GuestVirt(0x8000),
                GuestPhys(0x3000),
                2,
                Protection::read_write(true),
            )
            .expect("valid request");
        assert_eq!(
            mapper.lookup(GuestVirt(0x9abc)),
            Some((GuestPhys(0x4abc), Protection::read_write(true)))
        );
        mapper
            .protect(GuestVirt(0x9000), 1, Protection::read_only(true))
            .expect("mapped");
        assert_eq!(
            mapper.lookup(GuestVirt(0x9000)).map(|(_, prot)| prot),
            Some(Protection::read_only(true))
        );
        mapper.unmap(GuestVirt(0x8000), 4).expect("holes are fine");
        assert!(mapper.pages.is_empty());
        assert_eq!(
            (mapper.map_calls, mapper.protect_calls, mapper.unmap_calls),
            (1, 1, 1)
        );
    }

    #[test]
    fn rejects_what_the_host_would_reject() {
        let mut mapper = FakeMapper::new();
        let prot = Protection::read_only(false);
        assert!(
            mapper
                .map(GuestVirt(0x8001), GuestPhys(0), 1, prot)
                .is_err()
        );
        assert!(
            mapper
                .map(GuestVirt(0x8000), GuestPhys(0), 0, prot)
                .is_err()
        );
        assert!(
            mapper
                .map(GuestVirt(0xffff_f000), GuestPhys(0), 2, prot)
                .is_err()
        );
        assert!(mapper.protect(GuestVirt(0x8000), 1, prot).is_err());
        assert_eq!(mapper.calls(), 4);
    }
}
