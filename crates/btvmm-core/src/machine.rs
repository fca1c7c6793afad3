//! What the instruction emulator needs from the rest of the VMM: guest
//! memory by linear address (through the guest's paging when it is on),
//! port I/O, time, and notice of changes that the shadow structures follow.

use crate::exception::Stop;

/// The kind of a memory access, for paging checks and fault error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Execute,
}

/// A memory access as paging judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Read, write or fetch.
    pub kind: AccessKind,
    /// A user-mode access (CPL 3 and not an implicit supervisor access such
    /// as a descriptor-table or TSS read).
    pub user: bool,
}

impl Access {
    /// A supervisor read (descriptor tables, TSS, IDT).
    pub const SYSTEM_READ: Access = Access {
        kind: AccessKind::Read,
        user: false,
    };
    /// A supervisor write (accessed bits, busy bits, TSS back-link).
    pub const SYSTEM_WRITE: Access = Access {
        kind: AccessKind::Write,
        user: false,
    };
}

/// Something the shadow structures of the VMM must follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// CR0, CR3 or CR4 was written (paging mode or root may have changed).
    ControlRegisterWritten {
        /// Which register (0, 3 or 4).
        register: u8,
        /// The new value.
        value: u32,
    },
    /// INVLPG of this linear address.
    InvalidatePage(u32),
    /// LGDT, LLDT or a write through an emulated instruction to a
    /// descriptor: shadow descriptors must be refreshed.
    DescriptorTablesChanged,
}

/// Guest memory, I/O and time, as the emulator reaches them.
pub trait Machine {
    /// Reads `buf.len()` bytes at a linear address, translating through
    /// the guest's page tables when paging is on. A guest page fault is
    /// returned as [`Stop::Exception`] with the #PF error code and address.
    fn read_linear(&mut self, linear: u32, buf: &mut [u8], access: Access) -> Result<(), Stop>;

    /// Writes bytes at a linear address (see [`Machine::read_linear`]).
    fn write_linear(&mut self, linear: u32, data: &[u8], access: Access) -> Result<(), Stop>;

    /// IN from an I/O port; `size` is 1, 2 or 4. The result is zero-extended.
    fn port_in(&mut self, port: u16, size: u8) -> Result<u32, Stop>;

    /// OUT to an I/O port; `size` is 1, 2 or 4.
    fn port_out(&mut self, port: u16, size: u8, value: u32) -> Result<(), Stop>;

    /// INS of `buf.len() / size` items from one port, in order (a REP
    /// INS's stretch within one page). By default one [`Machine::port_in`]
    /// each; a machine whose devices sit across an exit moves them in one.
    fn port_in_string(&mut self, port: u16, size: u8, buf: &mut [u8]) -> Result<(), Stop> {
        read_items(size, buf, || self.port_in(port, size))
    }

    /// OUTS of `data.len() / size` items to one port, in order (see
    /// [`Machine::port_in_string`]).
    fn port_out_string(&mut self, port: u16, size: u8, data: &[u8]) -> Result<(), Stop> {
        write_items(size, data, |value| self.port_out(port, size, value))
    }

    /// The guest's time-stamp counter.
    fn timestamp(&mut self) -> u64;

    /// How fast [`Machine::timestamp`] counts, in kHz, for CPUID to tell
    /// the guest (0: unknown).
    fn tsc_khz(&self) -> u32 {
        0
    }

    /// Notice of a change the shadow structures follow.
    fn notify(&mut self, event: Event) {
        let _ = event;
    }
}

/// A string port transfer done one item at a time: `buf` filled with the
/// values `read` gives, `size` bytes each, little-endian.
///
/// # Errors
///
/// The first error of `read`.
pub fn read_items<E>(
    size: u8,
    buf: &mut [u8],
    mut read: impl FnMut() -> Result<u32, E>,
) -> Result<(), E> {
    for item in buf.chunks_exact_mut(usize::from(size.clamp(1, 4))) {
        let value = read()?;
        item.copy_from_slice(&value.to_le_bytes()[..item.len()]);
    }
    Ok(())
}

/// A string port transfer done one item at a time: each `size` bytes of
/// `data` (little-endian) handed to `write`.
///
/// # Errors
///
/// The first error of `write`.
pub fn write_items<E>(
    size: u8,
    data: &[u8],
    mut write: impl FnMut(u32) -> Result<(), E>,
) -> Result<(), E> {
    for item in data.chunks_exact(usize::from(size.clamp(1, 4))) {
        let mut value = [0u8; 4];
        value[..item.len()].copy_from_slice(item);
        write(u32::from_le_bytes(value))?;
    }
    Ok(())
}
