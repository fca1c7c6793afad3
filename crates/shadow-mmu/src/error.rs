//! The one error type of the shadow MMU. Guest page faults are not errors
//! (they are [`crate::PageFault`] values to deliver); these are conditions
//! the VMM itself must handle or report.

use std::io;

use btvmm_core::{GuestVirt, MemFault};
use thiserror::Error;

/// A failure of the shadow MMU or of the host mapper under it.
#[derive(Debug, Error)]
pub enum ShadowError {
    /// A guest-physical access (a paging-structure entry, or an A/D update)
    /// fell outside guest RAM ([`MemFault::OutsideRam`]). Real hardware
    /// would read open bus there; a guest whose page tables point outside
    /// RAM is broken, so the VMM stops rather than invent values.
    #[error(transparent)]
    Memory(#[from] MemFault),
    /// A fault was reported with paging registers whose CR3 is not the one
    /// the shadow was built for; the caller missed a [`crate::Shadow::set_cr3`].
    #[error("shadow built for CR3 {shadow_cr3:#010x}, fault reported with CR3 {fault_cr3:#010x}")]
    Cr3Mismatch {
        /// The CR3 the shadow mirrors.
        shadow_cr3: u32,
        /// The CR3 the caller passed.
        fault_cr3: u32,
    },
    /// The host refused to change a shadow mapping.
    #[error("host mapping of {pages} page(s) at guest-virtual {guest_virt} failed")]
    Host {
        /// First guest-virtual page of the request.
        guest_virt: GuestVirt,
        /// Length of the request in pages.
        pages: u32,
        /// What the host said.
        #[source]
        source: io::Error,
    },
}
