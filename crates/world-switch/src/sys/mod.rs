//! Everything that talks to the host kernel. Each `unsafe` block is small
//! and says which invariant makes it sound.

pub mod alias;
pub mod futex;
pub mod host_filter;
pub mod ldt;
pub mod lockdown;
pub mod maps;
pub mod memory;
pub mod perf;
pub mod seccomp;
pub mod signal;
pub mod timer;
pub mod tsc;
