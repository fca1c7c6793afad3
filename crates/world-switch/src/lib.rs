//! The guest world: a stub process per guest address space in which 32-bit
//! guest code runs natively at CPL 3 (DESIGN.md section 2).
//!
//! This crate owns every interaction with the host kernel that the world
//! needs, in [`sys`]: guest RAM as a memfd mapped above 4 GiB and at shadow
//! addresses below it, shadow segment descriptors in the LDT, hardware
//! breakpoints through perf events, the seccomp filter that keeps guest
//! system calls from the host, the signal trampoline into the monitor, and
//! the futex channel to the host process. [`trap`] turns a signal into the
//! monitor's vocabulary ([`btvmm_core::Trap`], [`btvmm_core::HostRegisters`])
//! and back; [`world`] wires it together; [`spawn`] is the host side.

pub mod channel;
pub mod launcher;
pub mod pool;
pub mod shadow;
pub mod spawn;
pub mod sys;
pub mod trap;
pub mod world;

use thiserror::Error;

/// Exit status of btvmm when its own seccomp filter refused a call (the
/// status `btvmm run` ends with when the VM stopped for a reason other
/// than the guest's own ending).
pub const HOST_FILTER_EXIT: i32 = 2;

/// Why the world could not be set up or driven.
#[derive(Debug, Error)]
pub enum WorldError {
    /// The host lacks something btvmm needs.
    #[error("the host lacks {feature}: {source} ({hint})")]
    MissingFeature {
        /// What is missing.
        feature: &'static str,
        /// What would provide it.
        hint: &'static str,
        /// The OS error seen.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{what} failed: {source}")]
    Host {
        /// The operation.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Something of the VMM is mapped where guest code could reach it.
    #[error("the world process has a mapping below 4 GiB, where guest code could reach it: {0}")]
    AddressSpace(String),
    /// An impossible RAM or region size.
    #[error("bad memory size {0}")]
    RamSize(usize),
    /// A shadow mapping outside guest RAM or not page aligned.
    #[error(
        "bad shadow mapping of {len:#x} bytes at guest-virtual {virt:#x} from guest-physical {phys:#x}"
    )]
    BadMapping {
        /// Guest-virtual start.
        virt: u32,
        /// Guest-physical start.
        phys: u32,
        /// Length.
        len: u32,
    },
    /// More breakpoints than the CPU has.
    #[error("{0} breakpoints requested, more than the CPU has")]
    TooManyBreakpoints(usize),
    /// The seccomp filter could not be built.
    #[error("building the seccomp filter: {0}")]
    Seccomp(String),
}
