//! What kind of kernel a file is, and the state every loader hands over.

use crate::LoaderError;
use crate::{linux, multiboot};

/// The guest's state at entry: 32-bit protected mode, paging and
/// interrupts off, flat segments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handover {
    /// Entry point.
    pub eip: u32,
    /// EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI.
    pub gpr: [u32; 8],
    /// CS.
    pub code_selector: u16,
    /// DS, ES, FS, GS, SS.
    pub data_selector: u16,
    /// GDTR base (0 with no GDT).
    pub gdt_base: u32,
    /// GDTR limit.
    pub gdt_limit: u16,
}

/// The boot protocols btvmm speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    /// A Linux bzImage (the 32-bit boot protocol).
    BzImage,
    /// A Multiboot (v1) kernel: ELF32 or a.out kludge.
    Multiboot,
}

impl KernelKind {
    /// Recognises a kernel file by its headers.
    pub fn detect(file: &[u8]) -> Result<Self, LoaderError> {
        if linux::is_bzimage(file) {
            return Ok(Self::BzImage);
        }
        if multiboot::find_header(file).is_ok() {
            return Ok(Self::Multiboot);
        }
        Err(LoaderError::UnknownKernel)
    }
}
