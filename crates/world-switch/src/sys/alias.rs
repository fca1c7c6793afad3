//! Alias code pages for the split code view (DESIGN.md section 3b).
//!
//! One memfd holds an alias page per guest-physical page: the guest code
//! the planner decoded there, with every instruction that must not run
//! natively replaced by INT3 and every byte not decoded yet left as INT3
//! (0xCC). The guest kernel's shadow code segment has a base B, so its
//! fetches go to linear B + EIP, where the world maps these pages read and
//! execute only; its data accesses keep going to the guest's own pages.
//!
//! Layout of the memfd: the alias pages, one per guest-physical page in
//! guest-physical order, then a bitmap with a bit per page that says the
//! page has been filled with INT3 (a fresh memfd reads as zeros, which
//! would run as `add %al,(%eax)`). The world processes of a pool share it:
//! what one decodes, the others run, and a reset of a page (the guest wrote
//! its code) reaches them all at once. Each process maps the whole memfd
//! read-write above 4 GiB (the monitor's window) and single pages read and
//! execute below 4 GiB, where the guest's fetches reach them.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use crate::WorldError;

/// Bytes per alias page.
pub const PAGE: usize = 4096;
/// What a byte not (yet) decoded holds: INT3.
pub const UNDECODED: u8 = 0xcc;

fn host_error(what: &'static str) -> WorldError {
    WorldError::Host {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// The alias pages of one VM and this process's window on them.
#[derive(Debug)]
pub struct AliasMemory {
    fd: OwnedFd,
    pages: usize,
    window: NonNull<u8>,
}

// SAFETY: the window is a shared mapping owned by this value; access goes
// through bounds-checked raw-pointer copies, never through references
// another thread could alias.
unsafe impl Send for AliasMemory {}

impl AliasMemory {
    /// Bytes of the memfd for `pages` alias pages: the pages, then the
    /// bitmap, rounded to a page.
    fn bytes(pages: usize) -> usize {
        (pages * PAGE + pages.div_ceil(8)).next_multiple_of(PAGE)
    }

    /// Creates alias memory for `pages` guest-physical pages (host side).
    pub fn create(pages: usize) -> Result<Self, WorldError> {
        // SAFETY: memfd_create reads the NUL-terminated name literal.
        let raw = unsafe { libc::memfd_create(c"btvmm-code-aliases".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(host_error("memfd_create of the code aliases"));
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let length =
            libc::off_t::try_from(Self::bytes(pages)).map_err(|_| WorldError::RamSize(pages))?;
        // SAFETY: ftruncate on our own memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), length) } != 0 {
            return Err(host_error("ftruncate of the code aliases"));
        }
        Self::map(fd, pages)
    }

    /// Attaches to alias memory the host created (inherited descriptor).
    ///
    /// # Safety
    ///
    /// `fd` must be the open alias memfd for `pages` pages, owned by this
    /// process from now on.
    pub unsafe fn from_raw_fd(fd: RawFd, pages: usize) -> Result<Self, WorldError> {
        // SAFETY: the caller hands over ownership of an open descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Self::map(fd, pages)
    }

    fn map(fd: OwnedFd, pages: usize) -> Result<Self, WorldError> {
        let bytes = Self::bytes(pages);
        // SAFETY: a fresh shared mapping of our memfd where the kernel
        // chooses; nothing else is touched.
        let window = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if window == libc::MAP_FAILED {
            return Err(host_error("mmap of the code alias window"));
        }
        let window = NonNull::new(window.cast::<u8>()).ok_or(WorldError::RamSize(pages))?;
        if (window.as_ptr() as usize) < (1 << 32) {
            return Err(WorldError::AddressSpace(format!(
                "code alias window at {window:p} lies below 4 GiB"
            )));
        }
        Ok(Self { fd, pages, window })
    }

    /// The memfd.
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Guest-physical pages covered.
    #[must_use]
    pub fn pages(&self) -> usize {
        self.pages
    }

    fn bitmap_byte(&self, page: usize) -> *mut u8 {
        // SAFETY: the bitmap follows the pages inside the mapping
        // (`bytes`); callers check page < self.pages.
        unsafe { self.window.as_ptr().add(self.pages * PAGE + page / 8) }
    }

    /// Makes sure alias page `page` holds INT3s where nothing was decoded:
    /// fills it the first time. False for a page outside guest RAM.
    pub fn prepare(&mut self, page: u32) -> bool {
        let page = page as usize;
        if page >= self.pages {
            return false;
        }
        let flag = self.bitmap_byte(page);
        let bit = 1u8 << (page % 8);
        // SAFETY: `flag` points into our mapping (page < pages).
        if unsafe { flag.read() } & bit == 0 {
            self.fill(page, UNDECODED);
            // SAFETY: as above.
            unsafe { flag.write(flag.read() | bit) };
        }
        true
    }

    fn fill(&mut self, page: usize, byte: u8) {
        // SAFETY: [page * PAGE, +PAGE) lies inside the mapping (page <
        // pages); no reference into it exists.
        unsafe {
            std::ptr::write_bytes(self.window.as_ptr().add(page * PAGE), byte, PAGE);
        }
    }

    /// Forgets everything decoded on `page`: all INT3 again. A page never
    /// prepared holds nothing decoded: it is left alone (every emulated
    /// write to any guest page comes here, and preparing would fill and
    /// commit an alias page for each data page written).
    pub fn reset(&mut self, page: u32) {
        if self.prepared(page) {
            self.fill(page as usize, UNDECODED);
        }
    }

    /// Whether alias page `page` was prepared (filled once; anything
    /// decoded is there).
    #[must_use]
    pub fn prepared(&self, page: u32) -> bool {
        let page = page as usize;
        // SAFETY: `bitmap_byte` stays inside the mapping (page < pages).
        page < self.pages && unsafe { self.bitmap_byte(page).read() } & (1 << (page % 8)) != 0
    }

    /// Forgets everything decoded on every page (what is sensitive
    /// changed: the guest's CR0.TS, say).
    pub fn reset_all(&mut self) {
        for page in 0..self.pages {
            // SAFETY: `bitmap_byte` stays inside the mapping (page < pages).
            let prepared = unsafe { self.bitmap_byte(page).read() } & (1 << (page % 8)) != 0;
            if prepared {
                self.fill(page, UNDECODED);
            }
        }
    }

    /// Copies `bytes` into alias page `page` at `offset` (prepared first).
    /// False outside guest RAM or past the page's end.
    pub fn write(&mut self, page: u32, offset: usize, bytes: &[u8]) -> bool {
        if offset + bytes.len() > PAGE || !self.prepare(page) {
            return false;
        }
        // SAFETY: inside the mapping: page < pages, offset + len <= PAGE;
        // `bytes` is a distinct host buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.window.as_ptr().add(page as usize * PAGE + offset),
                bytes.len(),
            );
        }
        true
    }

    /// Reads alias page `page` at `offset` into `buf`. A page never
    /// prepared reads as undecoded. False outside guest RAM or the page.
    #[must_use]
    pub fn read(&self, page: u32, offset: usize, buf: &mut [u8]) -> bool {
        let index = page as usize;
        if offset + buf.len() > PAGE || index >= self.pages {
            return false;
        }
        // SAFETY: `bitmap_byte` stays inside the mapping (index < pages).
        let prepared = unsafe { self.bitmap_byte(index).read() } & (1 << (index % 8)) != 0;
        if !prepared {
            buf.fill(UNDECODED);
            return true;
        }
        // SAFETY: inside the mapping, as in `write`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.window.as_ptr().add(index * PAGE + offset),
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
        true
    }

    /// Maps alias page `page` read and execute only at `linear` (page
    /// aligned, below 4 GiB), replacing whatever was there.
    pub fn map_at(&mut self, linear: u32, page: u32) -> Result<(), WorldError> {
        let bad = || WorldError::BadMapping {
            virt: linear,
            phys: page.wrapping_mul(4096),
            len: 4096,
        };
        if !linear.is_multiple_of(4096) || !self.prepare(page) {
            return Err(bad());
        }
        let offset = libc::off_t::try_from(page as usize * PAGE).map_err(|_| bad())?;
        // SAFETY: MAP_FIXED replaces the page at `linear`, below 4 GiB,
        // where this process keeps nothing of its own (checked at start-up):
        // only guest shadow and alias mappings live there.
        let mapped = unsafe {
            libc::mmap(
                linear as usize as *mut libc::c_void,
                PAGE,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_SHARED | libc::MAP_FIXED,
                self.fd.as_raw_fd(),
                offset,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(host_error("mmap of a code alias page"));
        }
        Ok(())
    }
}

impl Drop for AliasMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the window mapped in `map`; no reference
        // into it outlives self.
        unsafe {
            libc::munmap(self.window.as_ptr().cast(), Self::bytes(self.pages));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_start_undecoded_and_reset() {
        let mut alias = AliasMemory::create(4).expect("memfd");
        let mut byte = [0u8; 3];
        assert!(alias.read(2, 100, &mut byte));
        assert_eq!(byte, [UNDECODED; 3]);
        assert!(alias.write(2, 100, &[0x90, 0xc3]));
        assert!(alias.read(2, 99, &mut byte));
        assert_eq!(byte, [UNDECODED, 0x90, 0xc3]);
        alias.reset(2);
        assert!(alias.read(2, 99, &mut byte));
        assert_eq!(byte, [UNDECODED; 3]);
        assert!(!alias.write(4, 0, &[0]), "outside guest RAM");
        alias.reset(3);
        assert!(
            !alias.prepared(3),
            "a reset of a page never used prepares nothing"
        );
        assert!(alias.prepared(2));
        assert!(!alias.write(1, 4095, &[0, 0]), "past the page");
    }

    #[test]
    fn a_second_process_view_shares_the_bytes() {
        let mut first = AliasMemory::create(2).expect("memfd");
        let fd = first.fd().try_clone_to_owned().expect("dup");
        // SAFETY: a fresh duplicate of the alias memfd, owned by the new
        // value.
        let second = unsafe {
            AliasMemory::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd), 2).expect("map")
        };
        assert!(first.write(1, 8, &[0x55]));
        let mut byte = [0u8];
        assert!(second.read(1, 8, &mut byte));
        assert_eq!(byte, [0x55]);
    }
}
