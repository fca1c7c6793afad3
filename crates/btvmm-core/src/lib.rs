//! The shared vocabulary of btvmm: guest addresses, views of the virtual
//! CPU's registers and of guest memory. No I/O lives here; every other crate
//! speaks in these terms.
#![forbid(unsafe_code)]

pub mod addr;
pub mod cpu;
pub mod mem;

pub use addr::{GuestPhys, GuestVirt, PAGE_SIZE};
pub use cpu::{CpuView, Eflags, Gpr, SegReg};
pub use mem::{GuestMemory, MemFault, RegionMemory};
