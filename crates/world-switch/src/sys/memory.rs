//! Guest RAM: one memfd, mapped once above 4 GiB in every process (the
//! guest-physical window) and at guest-virtual addresses below 4 GiB in the
//! world process (the shadow mappings).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

use crate::WorldError;

/// Guest RAM and its guest-physical window in this process.
#[derive(Debug)]
pub struct GuestRam {
    fd: OwnedFd,
    size: usize,
    window: NonNull<u8>,
}

// SAFETY: the window is a shared mapping owned by this value; access goes
// through raw-pointer copies with bounds checks, never through references
// that another thread could alias.
unsafe impl Send for GuestRam {}

fn host_error(what: &'static str) -> WorldError {
    WorldError::Host {
        what,
        source: std::io::Error::last_os_error(),
    }
}

impl GuestRam {
    /// Creates `size` bytes of zeroed guest RAM and maps its window.
    pub fn create(size: usize) -> Result<Self, WorldError> {
        Self::create_named(c"btvmm-guest-ram", size)
    }

    /// Creates `size` zeroed bytes in a memfd called `name` (what
    /// /proc/PID/fd shows) and maps them.
    fn create_named(name: &std::ffi::CStr, size: usize) -> Result<Self, WorldError> {
        // SAFETY: memfd_create reads the NUL-terminated name.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(host_error("memfd_create"));
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let length = libc::off_t::try_from(size).map_err(|_| WorldError::RamSize(size))?;
        // SAFETY: ftruncate on our own memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), length) } != 0 {
            return Err(host_error("ftruncate of guest RAM"));
        }
        Self::map(fd, size)
    }

    /// Maps guest RAM created by another process (inherited descriptor).
    ///
    /// # Safety
    ///
    /// `fd` must be an open memfd of at least `size` bytes that this process
    /// may own from now on.
    pub unsafe fn from_raw_fd(fd: RawFd, size: usize) -> Result<Self, WorldError> {
        // SAFETY: the caller hands over ownership of an open descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Self::map(fd, size)
    }

    fn map(fd: OwnedFd, size: usize) -> Result<Self, WorldError> {
        // SAFETY: a fresh shared mapping of our memfd at an address the
        // kernel chooses; nothing else is touched.
        let window = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if window == libc::MAP_FAILED {
            return Err(host_error("mmap of the guest-physical window"));
        }
        let window = NonNull::new(window.cast::<u8>()).ok_or(WorldError::RamSize(size))?;
        if (window.as_ptr() as usize) < (1 << 32) {
            return Err(WorldError::AddressSpace(format!(
                "guest-physical window at {window:p} lies below 4 GiB"
            )));
        }
        Ok(Self { fd, size, window })
    }

    /// Bytes of guest RAM.
    #[must_use]
    pub fn size(&self) -> usize {
        self.size
    }

    /// The memfd.
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn range(&self, phys: u32, len: usize) -> Option<usize> {
        let start = phys as usize;
        (start.checked_add(len)? <= self.size).then_some(start)
    }

    /// Copies guest RAM at `phys` into `buf`; false if it is not all RAM.
    pub fn read(&self, phys: u32, buf: &mut [u8]) -> bool {
        let Some(start) = self.range(phys, buf.len()) else {
            return false;
        };
        // SAFETY: [start, start + len) lies inside the window mapping, which
        // lives as long as self; `buf` is a distinct host buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.window.as_ptr().add(start),
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
        true
    }

    /// Copies `data` into guest RAM at `phys`; false if it is not all RAM.
    pub fn write(&self, phys: u32, data: &[u8]) -> bool {
        let Some(start) = self.range(phys, data.len()) else {
            return false;
        };
        // SAFETY: as in `read`; the window is writable.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.window.as_ptr().add(start),
                data.len(),
            );
        }
        true
    }

    /// Maps guest-physical `[phys, phys + len)` at guest-virtual `virt` in
    /// this process, replacing whatever was there. Both must be page
    /// aligned and the range must lie below 4 GiB and inside RAM.
    pub fn map_at(&self, virt: u32, phys: u32, len: u32, writable: bool) -> Result<(), WorldError> {
        let bad = || WorldError::BadMapping { virt, phys, len };
        if !virt.is_multiple_of(4096)
            || !phys.is_multiple_of(4096)
            || !len.is_multiple_of(4096)
            || len == 0
        {
            return Err(bad());
        }
        if u64::from(virt) + u64::from(len) > 1 << 32 || self.range(phys, len as usize).is_none() {
            return Err(bad());
        }
        let protection =
            libc::PROT_READ | libc::PROT_EXEC | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: MAP_FIXED replaces mappings in [virt, virt + len), which is
        // below 4 GiB where this process keeps nothing of its own (checked
        // at start-up): only guest shadow mappings live there.
        let mapped = unsafe {
            libc::mmap(
                virt as usize as *mut libc::c_void,
                len as usize,
                protection,
                libc::MAP_SHARED | libc::MAP_FIXED,
                self.fd.as_raw_fd(),
                libc::off_t::from(phys),
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(host_error("mmap of a guest shadow mapping"));
        }
        Ok(())
    }
}

impl GuestRam {
    /// Changes the protection of the shadow mappings in guest-virtual
    /// `[virt, virt + len)` (page aligned, below 4 GiB).
    pub fn protect_at(&self, virt: u32, len: u32, writable: bool) -> Result<(), WorldError> {
        check_low_range(virt, len)?;
        let protection =
            libc::PROT_READ | libc::PROT_EXEC | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: changes the protection of guest shadow mappings below
        // 4 GiB, where this process keeps nothing of its own (checked at
        // start-up); no Rust reference points there.
        let result =
            unsafe { libc::mprotect(virt as usize as *mut libc::c_void, len as usize, protection) };
        if result != 0 {
            return Err(host_error("mprotect of a guest shadow mapping"));
        }
        Ok(())
    }

    /// Removes the shadow mappings in guest-virtual `[virt, virt + len)`
    /// (page aligned, below 4 GiB); holes are fine.
    pub fn unmap_at(&self, virt: u32, len: u32) -> Result<(), WorldError> {
        check_low_range(virt, len)?;
        // SAFETY: as in `protect_at`: only guest shadow mappings live there.
        let result = unsafe { libc::munmap(virt as usize as *mut libc::c_void, len as usize) };
        if result != 0 {
            return Err(host_error("munmap of a guest shadow mapping"));
        }
        Ok(())
    }
}

/// A shadow range must be whole pages below 4 GiB.
fn check_low_range(virt: u32, len: u32) -> Result<(), WorldError> {
    if !virt.is_multiple_of(4096)
        || !len.is_multiple_of(4096)
        || len == 0
        || u64::from(virt) + u64::from(len) > 1 << 32
    {
        return Err(WorldError::BadMapping { virt, phys: 0, len });
    }
    Ok(())
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the window mapped in `map`; no reference
        // into it outlives self.
        unsafe {
            libc::munmap(self.window.as_ptr().cast(), self.size);
        }
    }
}

/// A small shared-memory region (the host/world channel), mapped in both
/// processes.
#[derive(Debug)]
pub struct SharedRegion(GuestRam);

impl SharedRegion {
    /// Creates a zeroed region of `size` bytes.
    pub fn create(size: usize) -> Result<Self, WorldError> {
        GuestRam::create_named(c"btvmm-shared", size).map(Self)
    }

    /// Maps a region created by another process.
    ///
    /// # Safety
    ///
    /// As [`GuestRam::from_raw_fd`].
    pub unsafe fn from_raw_fd(fd: RawFd, size: usize) -> Result<Self, WorldError> {
        // SAFETY: forwarded contract.
        unsafe { GuestRam::from_raw_fd(fd, size) }.map(Self)
    }

    /// A second mapping of the same memory in this process (for another
    /// thread to hold on its own: futexes on it are the same futexes, as
    /// their key is the shared page, not the address).
    pub fn reopen(&self) -> Result<Self, WorldError> {
        let fd = self
            .fd()
            .try_clone_to_owned()
            .map_err(|source| WorldError::Host {
                what: "duplicating a shared region's descriptor",
                source,
            })?;
        GuestRam::map(fd, self.size()).map(Self)
    }

    /// Start of the mapping.
    #[must_use]
    pub fn as_ptr(&self) -> *mut u8 {
        self.0.window.as_ptr()
    }

    /// Size in bytes.
    #[must_use]
    pub fn size(&self) -> usize {
        self.0.size
    }

    /// The region's `index`-th 32-bit word as an atomic (a futex word
    /// shared with the processes that map the region), if the region
    /// holds it.
    #[must_use]
    pub fn word(&self, index: usize) -> Option<&AtomicU32> {
        let offset = index.checked_mul(4)?;
        if offset.checked_add(4)? > self.size() {
            return None;
        }
        // SAFETY: the word lies inside the mapping, which lives as long as
        // self; the mapping is page-aligned, so the word is 4-aligned; an
        // AtomicU32 is valid for any bits, and other processes touch it
        // only atomically (futex words).
        Some(unsafe { &*self.as_ptr().add(offset).cast::<AtomicU32>() })
    }

    /// The memfd.
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.fd()
    }
}

#[cfg(test)]
mod shadow_mapping_tests {
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
        let guest_virt = free_low_range();
        ram.map_at(guest_virt, 0x3000, 0x2000, true)
            .expect("map two pages");
        let host_virt = u64::from(guest_virt);
        // SAFETY: the two pages at guest_virt were just mapped readable.
        let seen = unsafe { std::slice::from_raw_parts(host_virt as *const u8, 0x2000) };
        assert_eq!(&seen[..12], b"guest page 3");
        assert_eq!(&seen[0x1000..0x100c], b"guest page 4");
        assert_eq!(protection_at(host_virt).as_deref(), Some("rwxs"));

        ram.protect_at(guest_virt, 0x1000, false)
            .expect("write-protect one page");
        assert_eq!(protection_at(host_virt).as_deref(), Some("r-xs"));
        assert_eq!(protection_at(host_virt + 0x1000).as_deref(), Some("rwxs"));

        ram.unmap_at(guest_virt, 0x2000).expect("unmap");
        assert_eq!(protection_at(host_virt), None);
        assert_eq!(protection_at(host_virt + 0x1000), None);
    }

    #[test]
    fn requests_the_host_cannot_take_are_errors() {
        let ram = GuestRam::create(1 << 20).expect("guest RAM");
        // Past the end of guest RAM.
        assert!(ram.map_at(0x4000_0000, 0xff000, 0x2000, false).is_err());
        // Past 4 GiB.
        assert!(ram.unmap_at(0xffff_f000, 0x2000).is_err());
        assert!(ram.protect_at(0x1000, 0xffff_f000, false).is_err());
        // Not page aligned.
        assert!(ram.map_at(0x4000_0800, 0, 0x1000, false).is_err());
    }
}
