//! x86 exceptions as the guest sees them, and what stops the emulator short
//! of an exception.

use thiserror::Error;

/// Exception vectors (Intel SDM vol. 3, table 6-1).
pub mod vector {
    /// #DE divide error.
    pub const DE: u8 = 0;
    /// #DB debug.
    pub const DB: u8 = 1;
    /// NMI.
    pub const NMI: u8 = 2;
    /// #BP breakpoint (INT3).
    pub const BP: u8 = 3;
    /// #OF overflow (INTO).
    pub const OF: u8 = 4;
    /// #BR BOUND range exceeded.
    pub const BR: u8 = 5;
    /// #UD invalid opcode.
    pub const UD: u8 = 6;
    /// #NM device not available.
    pub const NM: u8 = 7;
    /// #DF double fault.
    pub const DF: u8 = 8;
    /// #TS invalid TSS.
    pub const TS: u8 = 10;
    /// #NP segment not present.
    pub const NP: u8 = 11;
    /// #SS stack fault.
    pub const SS: u8 = 12;
    /// #GP general protection.
    pub const GP: u8 = 13;
    /// #PF page fault.
    pub const PF: u8 = 14;
    /// #MF x87 floating-point error.
    pub const MF: u8 = 16;
    /// #AC alignment check.
    pub const AC: u8 = 17;
    /// #XM SIMD floating-point exception.
    pub const XM: u8 = 19;
}

/// An exception the guest must receive through its IDT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    /// The vector.
    pub vector: u8,
    /// The error code, for the vectors that push one.
    pub error_code: Option<u32>,
    /// For #PF: the faulting linear address, to put in CR2.
    pub cr2: Option<u32>,
}

impl Exception {
    /// An exception without error code.
    #[must_use]
    pub const fn new(vector: u8) -> Self {
        Self {
            vector,
            error_code: None,
            cr2: None,
        }
    }

    /// An exception with an error code.
    #[must_use]
    pub const fn with_code(vector: u8, error_code: u32) -> Self {
        Self {
            vector,
            error_code: Some(error_code),
            cr2: None,
        }
    }

    /// #GP(code).
    #[must_use]
    pub const fn gp(error_code: u32) -> Self {
        Self::with_code(vector::GP, error_code)
    }

    /// #SS(code).
    #[must_use]
    pub const fn ss(error_code: u32) -> Self {
        Self::with_code(vector::SS, error_code)
    }

    /// #NP(code).
    #[must_use]
    pub const fn np(error_code: u32) -> Self {
        Self::with_code(vector::NP, error_code)
    }

    /// #TS(code).
    #[must_use]
    pub const fn ts(error_code: u32) -> Self {
        Self::with_code(vector::TS, error_code)
    }

    /// #UD.
    #[must_use]
    pub const fn ud() -> Self {
        Self::new(vector::UD)
    }

    /// #DE.
    #[must_use]
    pub const fn de() -> Self {
        Self::new(vector::DE)
    }

    /// #PF at `linear` with the hardware's error code.
    #[must_use]
    pub const fn page_fault(linear: u32, error_code: u32) -> Self {
        Self {
            vector: vector::PF,
            error_code: Some(error_code),
            cr2: Some(linear),
        }
    }

    /// Whether the vector is a "contributory" exception for the double-fault
    /// rules (SDM table 6-5).
    #[must_use]
    pub const fn is_contributory(&self) -> bool {
        matches!(
            self.vector,
            vector::DE | vector::TS | vector::NP | vector::SS | vector::GP
        )
    }
}

/// Why emulation stopped without an architectural result.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Stop {
    /// The guest raised an exception: deliver it.
    #[error("guest exception {0:?}")]
    Exception(Exception),
    /// Three faults in a row: a real CPU would shut down (and a PC reset).
    #[error("triple fault")]
    TripleFault,
    /// The guest used a feature the virtual CPU does not implement yet.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// The emulator has no handler for this instruction (FPU, SIMD and
    /// other instructions the monitor lets run natively).
    #[error("the emulator does not handle {0:?}")]
    NotEmulated(iced_x86::Mnemonic),
    /// The machine (devices, the host side) failed.
    #[error("machine error: {0}")]
    Machine(String),
}

impl From<Exception> for Stop {
    fn from(exception: Exception) -> Self {
        Self::Exception(exception)
    }
}
