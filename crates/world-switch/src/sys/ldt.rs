//! The host LDT, written with `modify_ldt(2)`.

use crate::WorldError;
use crate::shadow::LdtEntry;

/// `struct user_desc` (asm/ldt.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct UserDesc {
    entry_number: u32,
    base_addr: u32,
    limit: u32,
    /// seg_32bit:1, contents:2, read_exec_only:1, limit_in_pages:1,
    /// seg_not_present:1, useable:1, lm:1.
    flags: u32,
}

/// `modify_ldt` function 0x11: write an entry, new mode (honours `useable`).
const WRITE_LDT: libc::c_long = 0x11;

/// Writes host LDT entry `index`.
pub fn write_entry(index: u16, entry: &LdtEntry) -> Result<(), WorldError> {
    let desc = UserDesc {
        entry_number: u32::from(index),
        base_addr: entry.base,
        limit: entry.limit,
        flags: u32::from(entry.seg_32bit)
            | (u32::from(entry.contents & 3) << 1)
            | (u32::from(entry.read_exec_only) << 3)
            | (u32::from(entry.limit_in_pages) << 4)
            | (u32::from(entry.not_present) << 5)
            | (u32::from(entry.useable) << 6),
    };
    // SAFETY: modify_ldt reads `size_of::<UserDesc>()` bytes from a valid,
    // initialised `struct user_desc` on our stack and changes nothing in
    // our address space.
    let result = unsafe {
        libc::syscall(
            libc::SYS_modify_ldt,
            WRITE_LDT,
            std::ptr::from_ref(&desc),
            std::mem::size_of::<UserDesc>(),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(WorldError::Host {
            what: "modify_ldt",
            source: std::io::Error::last_os_error(),
        })
    }
}
