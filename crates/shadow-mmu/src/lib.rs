//! The shadow MMU of btvmm, first layer: pure logic, no system calls.
//!
//! The guest runs natively at host CPL 3, so the host page tables of the
//! world process must hold a *shadow* of the guest's current address space.
//! This crate decides what that shadow contains:
//!
//! - [`walk`] walks the guest's own page tables in software (32-bit 2-level
//!   paging with 4 MiB PSE pages) and yields either a translation or the
//!   exact #PF the hardware would raise;
//! - [`tracking`] remembers which guest-physical pages must stay read-only in
//!   every guest-virtual alias (page tables, decoded code);
//! - [`shadow`] turns host faults into shadow mappings through the
//!   [`HostMapper`] trait, whose real implementation (mmap of the guest
//!   memfd) lives in world-switch.
//!
//! Guest memory is reached only through btvmm-core's [`PhysMemory`], by
//! guest-physical address, so tests run on a plain vector
//! ([`btvmm_core::VecPhysMemory`]) and a recording mapper ([`FakeMapper`]).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod entry;
pub mod error;
pub mod mapper;
pub mod shadow;
pub mod tracking;
pub mod walk;

pub use btvmm_core::mem::PhysMemory;
pub use error::ShadowError;
pub use mapper::{FakeMapper, HostMapper, Protection};
pub use shadow::{Cr3Switch, EmulateReason, FaultOutcome, Shadow, ShadowConfig};
pub use tracking::{TrackReasons, WriteTracker};
pub use walk::{
    Access, EntryRef, PageFault, PageSize, PagingMode, PagingRegs, Translation, WalkOutcome,
    WalkPath, walk, walk_and_update,
};

#[cfg(test)]
mod testing;
