//! The host side of btvmm: loading guest kernels, running them (`btvmm
//! run`: the world process, the devices, the exit loop) and the planner's
//! report on kernels (`btvmm plan`).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod boot;
pub mod console;
pub mod disk;
pub mod display;
pub mod elf;
pub mod gdb;
pub mod image;
pub mod kallsyms;
pub mod linux;
pub mod multiboot;
pub mod report;
pub mod report_arm;
pub mod run;

use std::path::PathBuf;

use thiserror::Error;

/// Why a kernel image could not be loaded or a request about it answered.
#[derive(Debug, Error)]
pub enum LoaderError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The `--disk` image cannot be used.
    #[error("disk image {path}: {why}")]
    Disk {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Neither a bzImage nor an ELF kernel.
    #[error("not a Linux bzImage or 32-bit x86 ELF kernel: {reason}")]
    NotAKernel {
        /// What was wrong.
        reason: String,
    },
    /// The file ends before a structure it must hold.
    #[error("truncated image: the {what} needs {needed} bytes, the file has {found}")]
    Truncated {
        /// The structure.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        found: usize,
    },
    /// Boot protocol too old to locate the payload.
    #[error("boot protocol {0:#06x} predates payload fields (2.08 or later needed)")]
    OldProtocol(u16),
    /// The payload starts with no known compression magic.
    #[error("unknown payload compression (first bytes: {0})")]
    UnknownCompression(String),
    /// A compression Linux can use that btvmm does not inflate.
    #[error("{0}-compressed kernels are not supported (gzip, xz, lzma, zstd and bzip2 are)")]
    UnsupportedCompression(&'static str),
    /// The payload did not inflate.
    #[error("corrupt {compression} payload: {source}")]
    Decompress {
        /// The method.
        compression: &'static str,
        /// The decoder's error.
        #[source]
        source: std::io::Error,
    },
    /// The payload inflates past the limit.
    #[error("the decompressed kernel exceeds {0} bytes")]
    TooLarge(u64),
    /// The vmlinux ELF is malformed or not for 32-bit x86.
    #[error("bad kernel ELF: {0}")]
    Elf(String),
    /// Symbols were asked for and there are none.
    #[error("no symbols: {0}")]
    NoSymbols(String),
    /// An unknown symbol name.
    #[error("no code symbol named {0:?}")]
    UnknownSymbol(String),
    /// An address that is not in any executable section.
    #[error("address {0:#010x} is outside the kernel's executable sections")]
    OutsideText(u32),
    /// A planner configuration problem.
    #[error(transparent)]
    Planner(#[from] cfg_planner::PlannerError),
    /// A file that is neither kind of kernel `btvmm run` boots.
    #[error(
        "not a kernel btvmm can boot: neither a Linux bzImage (boot sector signature 0xAA55 and a \"HdrS\" setup header at 0x1F1) nor a Multiboot kernel (magic 0x1BADB002 with a valid checksum in the first 8 KiB)"
    )]
    UnknownKernel,
    /// A bzImage that cannot be booted.
    #[error("cannot boot this Linux kernel: {0}")]
    Linux(String),
    /// A Multiboot kernel that cannot be loaded.
    #[error("cannot boot this Multiboot kernel: {0}")]
    Multiboot(String),
    /// The world process could not be set up.
    #[error(transparent)]
    World(#[from] world_switch::WorldError),
    /// An impossible option value.
    #[error("{0}")]
    Option(String),
}
