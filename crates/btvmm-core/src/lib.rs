//! The shared vocabulary of btvmm: guest addresses, views of the virtual
//! CPU's registers and of guest memory. No I/O lives here; every other crate
//! speaks in these terms.
// Unsafe code is forbidden; test builds only deny it, so that the
// emulator's differential test (`emu::alu`) can run instructions natively
// with `asm!` under a scoped allowance.
#![cfg_attr(not(test), forbid(unsafe_code))]
#![cfg_attr(test, deny(unsafe_code))]

pub mod addr;
pub mod cpu;
pub mod descriptor;
pub mod emu;
pub mod exception;
pub mod exit;
pub mod machine;
pub mod mem;
pub mod world;

pub use addr::{GuestPhys, GuestVirt, PAGE_SIZE};
pub use cpu::{Cpu, CpuView, Cr0, Eflags, Gpr, SegReg, Segment, TableRegister};
pub use exception::{Exception, Stop};
pub use exit::{
    DebugCommand, DebugPoints, Exit, PauseCause, Reply, StopReason, VcpuRegisters, Watchpoint,
};
pub use machine::{Access, AccessKind, Event, Machine};
pub use mem::{GuestMemory, MemFault, PhysMemory, RegionMemory, VecPhysMemory};
pub use world::{
    Action, AddressSpaces, CodeAliases, ExecMode, HostFastPath, HostRegisters, PoolEvent,
    ServiceError, Trap, WorldServices,
};
