//! Points of interest on ARMv7-A (Cortex-A9 class): what each ARM or
//! Thumb-2 instruction means for a guest kernel that runs natively in the
//! host's user mode (PL0). The x86 counterpart is [`mod@crate::classify`]; this
//! module uses the same vocabulary (plain, direct, conditional and pointer
//! branches, sensitive instructions that trap or are silent).
//!
//! Decoding is done by capstone, but the facts that decide a class
//! (coprocessor fields, MSR masks, the S bit of a block transfer, branch
//! offsets, the condition field and the IT state) are read from the
//! encoding itself: they are stable architecture, capstone's operand
//! details are not.
//!
//! # Sensitive instructions and how they reach the monitor
//!
//! References are to the ARM Architecture Reference Manual, ARMv7-A and
//! ARMv7-R edition (DDI 0406C), cited by section and instruction or
//! register name. "Traps" means the instruction raises the
//! Undefined Instruction exception (or a debug event) at PL0, which a Linux
//! host turns into a signal for the world process: the monitor gets it
//! without a breakpoint. "Silent" means it runs at PL0 without complaint and
//! does the wrong thing for a kernel: a planned breakpoint must stop it.
//! Where the architecture says UNPREDICTABLE at PL0, or the answer depends
//! on how the host kernel configured the CPU, the class is silent: a
//! breakpoint too many costs time, a missed one costs correctness.
//!
//! The column "at PL0 on a Linux host" is checked for 41 instructions
//! (`guests/arm/pl0-cases.txt`) by running them in user mode under Debian's
//! armmp kernel on `qemu-system-arm -cpu cortex-a15` (`guests/arm/pl0probe.c`,
//! `scripts/arm-route --probes-only`, in `.ci/run`): an emulated CPU, not
//! a Cortex-A9 board.
//!
//! | class | instructions | at PL0 on a Linux host | reference |
//! |---|---|---|---|
//! | [`ArmSensitiveKind::SystemRegister`] | MCR/MRC/MCRR/MRRC p15 to PL1 registers (SCTLR, TTBRn, TTBCR, DACR, CONTEXTIDR, TPIDRPRW, ...); MCR to TPIDRURO | traps, SIGILL | B4.1, each register's description (PL0 access UNDEFINED); TPIDRURO is read-only at PL0 |
//! | [`ArmSensitiveKind::CacheTlbMaintenance`] | MCR p15 c7 (except the three barrier operations) and c8 | traps, SIGILL | B4.1 (the c7 and c8 operations are PL1-only) |
//! | [`ArmSensitiveKind::FpSystemRegister`] | VMRS/VMSR of FPSID, MVFR0, MVFR1, FPEXC | traps, SIGILL (Linux's VFP undef hook declines it) | B9.3 VMRS, VMSR (in User mode every register but FPSCR is UNDEFINED) |
//! | [`ArmSensitiveKind::OtherCoprocessor`] | CDP, LDC, STC, MCR, MRC to coprocessors a Cortex-A9 lacks; every `2` form (MCR2, LDC2, ...) | traps, SIGILL, as the guest expects | A5.6 coprocessor instructions (an absent coprocessor is UNDEFINED) |
//! | [`ArmSensitiveKind::SecureMonitorCall`] | SMC | traps, SIGILL | B9.3 SMC (UNDEFINED in User mode) |
//! | [`ArmSensitiveKind::HypervisorCall`] | HVC | traps, SIGILL | B9.3 HVC (UNDEFINED in User mode; a Cortex-A9 has no Virtualization Extensions at all) |
//! | [`ArmSensitiveKind::Breakpoint`] | BKPT | traps, SIGTRAP (a Prefetch Abort debug event) | A8.8 BKPT; C4 (debug exceptions) |
//! | [`ArmSensitiveKind::Undefined`] | UDF (permanently undefined) | traps: SIGILL, or SIGTRAP for the one encoding Linux keeps for ptrace breakpoints (`0xe7f001f0`, Thumb `0xde01`) | A8.8 UDF |
//! | [`ArmSensitiveKind::SupervisorCall`] | SVC | **a host system call** ([`ArmDelivery::HostSyscall`]): the host kernel runs it with the guest's r7 as the call number, the x86 `int $0x80` problem | A8.8 SVC |
//! | [`ArmSensitiveKind::ChangeProcessorState`] | CPS (CPSIE, CPSID, mode change) | silent: a NOP | B9.3 CPS (a NOP in User mode) |
//! | [`ArmSensitiveKind::StatusRead`] | MRS of CPSR (APSR), SPSR or a banked register | silent: CPSR shows the host's User mode and masks, not the guest's; SPSR and banked reads are UNPREDICTABLE | B9.3 MRS, MRS (Banked register); B1.3.3 |
//! | [`ArmSensitiveKind::StatusWrite`] | MSR to CPSR with the c or x field, MSR to SPSR, MSR banked | silent: at PL0 only N, Z, C, V, Q, GE and E are written, mode and A/I/F writes are ignored; SPSR and banked writes are UNPREDICTABLE | B9.3 MSR (register), MSR (immediate); B1.3.3 |
//! | [`ArmSensitiveKind::ApsrWrite`] | MSR to CPSR with only the f and/or s field (`msr apsr_nzcvq`, `apsr_g`) | silent and in fact identical at PL0 and PL1 (NZCVQ and GE only; MSR never writes the execution-state bits); kept sensitive by choice, see the variant | B9.3 MSR; B1.3.3 |
//! | [`ArmSensitiveKind::ThreadIdRegister`] | MRC of TPIDRURO; MRC/MCR of TPIDRURW | silent: the host thread's TLS values | B4.1 TPIDRURO, TPIDRURW |
//! | [`ArmSensitiveKind::PerfMonitor`] | MRC/MCR p15 c9, c12-c14 (PMU) | traps while PMUSERENR.EN is 0 (stock Linux), silent on a host that enables user access | C12 (Performance Monitors); B4.1 PMUSERENR |
//! | [`ArmSensitiveKind::GenericTimer`] | MRC/MCR/MRRC/MCRR p15 c14 | traps on a Cortex-A9 (no Generic Timer); silent on hosts that have one, where Linux lets PL0 read CNTVCT and CNTFRQ for the vDSO | B8 (Generic Timer); B4.1 CNTKCTL |
//! | [`ArmSensitiveKind::DebugCoprocessor`] | MCR/MRC/MCRR/MRRC/LDC/STC p14 | silent: the DCC registers, DBGDSCRint, DBGDIDR, JIDR and TEEHBR are PL0-accessible unless the host disables them | part C (debug registers, DBGDSCR.UDCCdis); JIDR and TEEHBR in chapter A2 |
//! | [`ArmSensitiveKind::SaveReturnState`] | SRS | silent: UNPREDICTABLE in User mode | B9.3 SRS |
//! | [`ArmSensitiveKind::ReturnFromException`] | RFE | silent: UNPREDICTABLE in User mode (and it loads PC and CPSR) | B9.3 RFE |
//! | [`ArmSensitiveKind::UserRegisters`] | LDM/STM with `^` and no PC in a load's list | silent: UNPREDICTABLE in User mode (the current bank is used) | B9.3 LDM (User registers), STM (User registers) |
//! | [`ArmSensitiveKind::ExceptionReturn`] | LDM `^` with PC; SUBS PC, LR, #n; MOVS PC, LR and every other data-processing write of PC with S; ERET | silent: UNPREDICTABLE in User mode (no SPSR) | B9.3 LDM (exception return), SUBS PC, LR (Thumb), SUBS PC, LR and related instructions (ARM), ERET |
//! | [`ArmSensitiveKind::WaitForInterrupt`] | WFI | silent: the host CPU sleeps (ARMv7 cannot trap it at PL0) | A8.8 WFI; B1.14 (power management) |
//! | [`ArmSensitiveKind::WaitForEvent`] | WFE | silent: waits on the host's event register | A8.8 WFE; B1.14 |
//! | [`ArmSensitiveKind::SendEvent`] | SEV | silent: signals the host's other CPUs, not the guest's | A8.8 SEV |
//! | [`ArmSensitiveKind::UnprivilegedAccess`] | LDRT, STRT, LDRBT, STRBT, LDRHT, STRHT, LDRSBT, LDRSHT | silent: at PL0 they are ordinary accesses, so the guest's user-permission check (its copy_to_user and friends) is lost | B9.3 LDRT and the other `T` forms (in User mode, the plain access) |
//!
//! **Conditional trapping instructions.** A trapping instruction that is
//! conditional (condition field or IT block) and fails its condition may
//! execute as a NOP instead of trapping; for instructions UNDEFINED by
//! encoding or privilege this is IMPLEMENTATION DEFINED (B1.9, Undefined
//! Instruction exception, "Conditional execution of undefined
//! instructions"). The planner treats such a POI like x86's
//! `TrapsOrFallsThrough`: it traps or falls through, and the fall-through
//! must be planned too ([`ArmInstruction::conditional`]).
//!
//! Deliberately **not** sensitive:
//!
//! - The CP15 barrier operations (`mcr p15, 0, rN, c7, c10, 4/5` and
//!   `c7, c5, 4`): PL0-accessible on ARMv7 (B4.1; Linux's ARMv6 kuser
//!   helpers run them in user mode) and identical there.
//! - YIELD, NOP and unallocated hints (including SEVL, ESB, CSDB on this
//!   core): hints with no architectural effect on a Cortex-A9, so there is
//!   nothing for the monitor to virtualize; DBG, PLD, PLI and the barrier
//!   instructions DMB, DSB, ISB likewise.
//! - VMRS/VMSR of FPSCR, SETEND (E is writable at PL0), CLREX, LDREX/STREX,
//!   SWP (UNDEFINED with SCTLR.SW clear, which a host either emulates
//!   atomically or reports as SIGILL: both are what the guest would see).
//! - VFP and Advanced SIMD data instructions. Whether they should fault
//!   depends on the guest's FPEXC.EN and CPACR, which the monitor tracks
//!   separately (as x86 does with CR0.TS); this table does not.
//! - PC-relative reads (`ldr r0, [pc, #8]`, `add r0, pc, #4`, STM with PC):
//!   correct as long as guest code runs at its own guest-virtual address.
//!
//! **Unrecognized** (never run natively): bytes capstone cannot decode, BXJ
//! (its effect depends on the host's Jazelle configuration), the ARMv8-only
//! DCPS1-3, HLT, SETPAN and the ARMv8-M security instructions, and any other
//! instruction that names PC as a written operand in a way not modelled
//! here (the architecture calls most of those UNPREDICTABLE).
//!
//! # Pointer branches
//!
//! [`ArmPointerKind`]: BX (BX LR is [`ArmPointerKind::Return`]), BLX
//! register, LDR to PC, LDM/POP with PC, data-processing writes of PC
//! without S (MOV PC, ADD PC, ...) and the table branches TBB/TBH. In ARM
//! state LDR, LDM/POP and (ARMv7) data-processing writes of PC interwork:
//! bit 0 of the value chooses the next instruction set; in Thumb state only
//! BX, BLX and loads interwork (A2.3, ALUWritePC and LoadWritePC).
//!
//! # Conditions and IT blocks
//!
//! An ARM instruction with a condition field other than AL (and other than
//! the unconditional `1111` space) is conditional; a Thumb instruction is
//! conditional inside an IT block whose current condition is not AL, and
//! 16-bit and 32-bit `B<cond>` carry their own. A conditional POI that is not
//! a branch still has a fall-through edge. IT state is tracked here from
//! the IT instruction's bits (A2.5.2 ITSTATE), not taken from capstone, so a
//! decode can start inside an IT block ([`ItState::from_cpsr`]) and runs
//! decoded in several pieces stay correct.

use capstone::arch::arm::{ArmCC, ArmInsn, ArmOperand, ArmOperandType, ArmReg};
use capstone::prelude::*;
use serde::Serialize;
use thiserror::Error;

use btvmm_core::GuestVirt;

/// The instruction set of the code being decoded (CPSR.T).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum ArmMode {
    /// ARM (A32): 4-byte instructions, condition field in bits 31:28.
    Arm,
    /// Thumb-2 (T32): 2- and 4-byte instructions, IT blocks.
    Thumb,
}

impl ArmMode {
    /// The other instruction set (the target of BLX with an immediate).
    #[must_use]
    pub const fn other(self) -> Self {
        match self {
            Self::Arm => Self::Thumb,
            Self::Thumb => Self::Arm,
        }
    }
}

/// Classes of sensitive instructions. The module documentation has the
/// table with the members, the behaviour at PL0 and the reference of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum ArmSensitiveKind {
    /// CP15 accesses to PL1-only registers (B4.1): UNDEFINED at PL0.
    /// Includes MCR to TPIDRURO (read-only at PL0) and the
    /// per-CPU-offset register TPIDRPRW that Linux reads often.
    SystemRegister,
    /// CP15 c7 cache and c8 TLB maintenance (B4.1): UNDEFINED at PL0.
    CacheTlbMaintenance,
    /// VMRS/VMSR of FPSID, MVFR0, MVFR1, FPEXC (B9.3 VMRS, VMSR): UNDEFINED
    /// at PL0. Linux's VFP undefined-instruction hook may first enable VFP
    /// for the thread and retry, then delivers SIGILL.
    FpSystemRegister,
    /// Coprocessor instructions for coprocessors a Cortex-A9 lacks, and every
    /// `2` form: UNDEFINED everywhere, which the guest must see.
    OtherCoprocessor,
    /// SMC (B9.3 SMC): UNDEFINED in User mode.
    SecureMonitorCall,
    /// HVC (B9.3 HVC): UNDEFINED in User mode and on cores without the
    /// Virtualization Extensions.
    HypervisorCall,
    /// BKPT (A8.8 BKPT): a debug event (Prefetch Abort), SIGTRAP on Linux.
    Breakpoint,
    /// UDF, the permanently undefined encodings (A8.8 UDF): SIGILL, or
    /// SIGTRAP for Linux's ptrace breakpoint encoding.
    Undefined,
    /// SVC (A8.8 SVC): at PL0 it is the **host's** system call, taken with
    /// the guest's registers (EABI: r7 is the number). It neither faults
    /// nor does what the guest meant, exactly like `int $0x80` on x86; a
    /// seccomp filter keyed on the instruction pointer can turn it into
    /// SIGSYS, otherwise a breakpoint must stop it first.
    SupervisorCall,
    /// CPS (B9.3 CPS): a NOP in User mode, so masking interrupts or changing
    /// mode silently does nothing.
    ChangeProcessorState,
    /// MRS of CPSR, SPSR or a banked register (B9.3 MRS, MRS (Banked
    /// register)): CPSR shows the host's User mode and masks; SPSR
    /// and banked reads are UNPREDICTABLE in User mode.
    StatusRead,
    /// MSR writing the CPSR control (c) or extension (x) field, the SPSR or
    /// a banked register (B9.3 MSR): at PL0 the mode and A/I/F writes are
    /// ignored (B1.3.3), SPSR and banked writes are UNPREDICTABLE.
    StatusWrite,
    /// MSR writing only the CPSR flags (f) and/or status (s) field, printed
    /// `apsr_nzcvq`, `apsr_g`, `apsr_nzcvqg`. The write is architecturally
    /// the same at PL0 and PL1 (N, Z, C, V, Q and GE only; MSR never writes
    /// the execution-state bits, B1.3.3), so native execution is correct;
    /// it is kept sensitive and silent so that every MSR is seen, and is a
    /// class of its own so the planner can drop it once that is measured to
    /// matter.
    ApsrWrite,
    /// MRC of TPIDRURO, MRC/MCR of TPIDRURW (B4.1):
    /// accessible at PL0, so they read or write the host thread's TLS
    /// registers instead of the guest's.
    ThreadIdRegister,
    /// CP15 c9, c12-c14: the performance monitors. UNDEFINED at PL0 while
    /// PMUSERENR.EN is 0 (B4.1 PMUSERENR; stock Linux), accessible when a host
    /// enables user access: silent to be safe.
    PerfMonitor,
    /// CP15 c14: the Generic Timer (B8). A Cortex-A9 has none (UNDEFINED),
    /// but a host that has one lets PL0 read CNTVCT and CNTFRQ (Linux sets
    /// CNTKCTL for its vDSO): silent to be safe.
    GenericTimer,
    /// CP14 accesses: debug, trace, Jazelle and ThumbEE registers. The debug
    /// communication channel, DBGDSCRint and DBGDIDR (unless the host sets
    /// DBGDSCR.UDCCdis), JIDR and TEEHBR are accessible at PL0: silent.
    DebugCoprocessor,
    /// SRS (B9.3 SRS): UNPREDICTABLE in User mode.
    SaveReturnState,
    /// RFE (B9.3 RFE): UNPREDICTABLE in User mode; it also loads PC and
    /// CPSR, so the monitor emulates it.
    ReturnFromException,
    /// LDM/STM with `^` and no PC in a load's list (B9.3 LDM (User
    /// registers), STM (User registers)): UNPREDICTABLE in User mode, where
    /// the guest meant the user bank.
    UserRegisters,
    /// LDM `^` with PC, SUBS PC, LR, #n, MOVS PC, LR and any data-processing
    /// write of PC with S, ERET (B9.3 LDM (exception return), SUBS PC, LR):
    /// copy SPSR to CPSR, which User mode does not have (UNPREDICTABLE).
    ExceptionReturn,
    /// WFI (A8.8 WFI, B1.14): executes at PL0 and sleeps the host CPU until a host
    /// interrupt; the guest meant to wait for a virtual one.
    WaitForInterrupt,
    /// WFE (A8.8 WFE, B1.14): waits on the host CPU's event register.
    WaitForEvent,
    /// SEV (A8.8 SEV): wakes the host's CPUs, not the guest's other vCPUs.
    SendEvent,
    /// LDRT, STRT and the other unprivileged loads and stores (B9.3 LDRT,
    /// ...): at PL0 they behave as ordinary LDR/STR, so an access the
    /// guest kernel meant to check against user permissions is not checked.
    UnprivilegedAccess,
}

impl ArmSensitiveKind {
    /// Every class, in report order (trapping first).
    pub const ALL: [ArmSensitiveKind; 25] = [
        Self::SystemRegister,
        Self::CacheTlbMaintenance,
        Self::FpSystemRegister,
        Self::OtherCoprocessor,
        Self::SecureMonitorCall,
        Self::HypervisorCall,
        Self::Breakpoint,
        Self::Undefined,
        Self::SupervisorCall,
        Self::ChangeProcessorState,
        Self::StatusRead,
        Self::StatusWrite,
        Self::ApsrWrite,
        Self::ThreadIdRegister,
        Self::PerfMonitor,
        Self::GenericTimer,
        Self::DebugCoprocessor,
        Self::SaveReturnState,
        Self::ReturnFromException,
        Self::UserRegisters,
        Self::ExceptionReturn,
        Self::WaitForInterrupt,
        Self::WaitForEvent,
        Self::SendEvent,
        Self::UnprivilegedAccess,
    ];

    /// How an instruction of this class reaches the monitor when it runs
    /// natively at PL0 on a Linux host.
    #[must_use]
    pub const fn delivery(self) -> ArmDelivery {
        match self {
            Self::SystemRegister
            | Self::CacheTlbMaintenance
            | Self::FpSystemRegister
            | Self::OtherCoprocessor
            | Self::SecureMonitorCall
            | Self::HypervisorCall
            | Self::Breakpoint
            | Self::Undefined => ArmDelivery::Traps,
            Self::SupervisorCall => ArmDelivery::HostSyscall,
            Self::ChangeProcessorState
            | Self::StatusRead
            | Self::StatusWrite
            | Self::ApsrWrite
            | Self::ThreadIdRegister
            | Self::PerfMonitor
            | Self::GenericTimer
            | Self::DebugCoprocessor
            | Self::SaveReturnState
            | Self::ReturnFromException
            | Self::UserRegisters
            | Self::ExceptionReturn
            | Self::WaitForInterrupt
            | Self::WaitForEvent
            | Self::SendEvent
            | Self::UnprivilegedAccess => ArmDelivery::Silent,
        }
    }

    /// Short name for reports.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::SystemRegister => "cp15-system-reg",
            Self::CacheTlbMaintenance => "cp15-cache/tlb",
            Self::FpSystemRegister => "vmrs/vmsr-fpexc",
            Self::OtherCoprocessor => "other-coprocessor",
            Self::SecureMonitorCall => "smc",
            Self::HypervisorCall => "hvc",
            Self::Breakpoint => "bkpt",
            Self::Undefined => "udf",
            Self::SupervisorCall => "svc",
            Self::ChangeProcessorState => "cps",
            Self::StatusRead => "mrs",
            Self::StatusWrite => "msr",
            Self::ApsrWrite => "msr-apsr",
            Self::ThreadIdRegister => "cp15-tpidruro/rw",
            Self::PerfMonitor => "cp15-pmu",
            Self::GenericTimer => "cp15-timer",
            Self::DebugCoprocessor => "cp14",
            Self::SaveReturnState => "srs",
            Self::ReturnFromException => "rfe",
            Self::UserRegisters => "ldm/stm-user",
            Self::ExceptionReturn => "exception-return",
            Self::WaitForInterrupt => "wfi",
            Self::WaitForEvent => "wfe",
            Self::SendEvent => "sev",
            Self::UnprivilegedAccess => "ldrt/strt",
        }
    }
}

/// How a sensitive instruction reaches the monitor when it runs natively
/// at PL0 on a Linux host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ArmDelivery {
    /// Undefined Instruction exception or debug event: the host sends the
    /// world SIGILL or SIGTRAP, no breakpoint needed. When the instruction
    /// is conditional and fails its condition it may fall through instead
    /// (B1.9).
    Traps,
    /// It runs silently: a breakpoint must stop it first.
    Silent,
    /// SVC: the host kernel takes it as one of its own system calls. Unless
    /// the world's seccomp filter turns system calls from guest code into
    /// SIGSYS, the planner must treat it as [`ArmDelivery::Silent`].
    HostSyscall,
}

/// Pointer branches: the target depends on run-time state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum ArmPointerKind {
    /// `bx lr`: a function return.
    Return,
    /// `bx rN` for any other register (interworking).
    BranchExchange,
    /// `blx rN`: an indirect call (interworking).
    BranchLinkExchange,
    /// A single-register load of PC: `ldr pc, [...]` in any addressing mode,
    /// including `pop {pc}` encoded as one load.
    LoadPc,
    /// LDM or POP with PC in the list (without `^`).
    LoadMultiplePc,
    /// A data-processing instruction without S that writes PC
    /// (`mov pc, rN`, `add pc, pc, rN, lsl #2`, ...).
    DataProcessingPc,
    /// TBB or TBH: a jump through a table of forward offsets.
    TableBranch,
}

impl ArmPointerKind {
    /// Every kind, in report order.
    pub const ALL: [ArmPointerKind; 7] = [
        Self::Return,
        Self::BranchExchange,
        Self::BranchLinkExchange,
        Self::LoadPc,
        Self::LoadMultiplePc,
        Self::DataProcessingPc,
        Self::TableBranch,
    ];

    /// Short name for reports.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Return => "bx-lr",
            Self::BranchExchange => "bx",
            Self::BranchLinkExchange => "blx-reg",
            Self::LoadPc => "ldr-pc",
            Self::LoadMultiplePc => "ldm/pop-pc",
            Self::DataProcessingPc => "alu-pc",
            Self::TableBranch => "tbb/tbh",
        }
    }
}

/// What one ARM or Thumb instruction is to the planner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ArmPoiKind {
    /// Runs natively with the architectural result; not a point of interest.
    Plain,
    /// B, BL or BLX with an immediate that always executes: one successor.
    DirectBranch {
        /// Where it goes.
        target: GuestVirt,
        /// BL/BLX: writes the return address to LR.
        link: bool,
        /// The instruction set at the target (BLX with an immediate switches).
        target_mode: ArmMode,
    },
    /// `B<cond>`, `BL<cond>`, a branch inside an IT block, CBZ or CBNZ: the
    /// taken target or the fall-through.
    CondBranch {
        /// Where it goes when taken.
        taken: GuestVirt,
        /// `BL<cond>`/BLX inside an IT block: writes LR when taken.
        link: bool,
        /// The instruction set at the taken target.
        target_mode: ArmMode,
    },
    /// A branch whose target is known only at run time.
    PointerBranch(ArmPointerKind),
    /// An instruction whose native execution at PL0 is wrong for a guest
    /// kernel.
    Sensitive {
        /// Which class.
        kind: ArmSensitiveKind,
        /// Whether it traps by itself ([`ArmSensitiveKind::delivery`]).
        delivery: ArmDelivery,
    },
    /// Not decodable, or not modelled: never run natively.
    Unrecognized,
}

impl ArmPoiKind {
    /// True for everything but [`ArmPoiKind::Plain`].
    #[must_use]
    pub const fn is_poi(self) -> bool {
        !matches!(self, Self::Plain)
    }

    const fn sensitive(kind: ArmSensitiveKind) -> Self {
        Self::Sensitive {
            kind,
            delivery: kind.delivery(),
        }
    }
}

/// The Thumb IT execution state (`CPSR.IT[7:0]`, A2.5.2 ITSTATE): the condition of
/// the current instruction in bits 7:4 and what is left of the block below.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct ItState(u8);

/// The condition field value meaning "always".
const COND_AL: u32 = 0b1110;

impl ItState {
    /// Outside any IT block.
    pub const NONE: Self = Self(0);

    /// The state from the ITSTATE bits as the IT instruction writes them
    /// (firstcond:mask).
    #[must_use]
    pub const fn from_bits(bits: u8) -> Self {
        Self(bits)
    }

    /// The state saved in a CPSR or SPSR value: `IT[1:0]` in bits 26:25,
    /// `IT[7:2]` in bits 15:10 (B1.3.3).
    #[must_use]
    pub fn from_cpsr(cpsr: u32) -> Self {
        let high = (cpsr >> 10) & 0x3f;
        let low = (cpsr >> 25) & 0x3;
        Self(((high << 2) | low).to_le_bytes()[0])
    }

    /// ITSTATE as the eight bits of the CPSR fields.
    #[must_use]
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// True while instructions remain in the block.
    #[must_use]
    pub const fn in_block(self) -> bool {
        self.0 & 0xf != 0
    }

    /// The condition (`cond` field encoding) of the current instruction, if
    /// it is in a block.
    #[must_use]
    pub const fn condition(self) -> Option<u32> {
        if self.in_block() {
            Some((self.0 >> 4) as u32)
        } else {
            None
        }
    }

    /// The state for the next instruction (ITAdvance(), A2.5.2).
    #[must_use]
    pub const fn advance(self) -> Self {
        if self.0 & 0x7 == 0 {
            Self::NONE
        } else {
            Self((self.0 & 0xe0) | ((self.0 << 1) & 0x1f))
        }
    }

    /// True when the current instruction executes only if a condition
    /// other than AL holds.
    const fn makes_conditional(self) -> bool {
        match self.condition() {
            Some(cond) => cond != COND_AL,
            None => false,
        }
    }
}

/// One decoded and classified instruction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArmInstruction {
    /// Where it is in the guest.
    pub guest_virt: GuestVirt,
    /// Its length in bytes: 4 in ARM state, 2 or 4 in Thumb state.
    pub len: u32,
    /// The instruction set it was decoded in.
    pub mode: ArmMode,
    /// The encoding: the ARM word, a 16-bit Thumb halfword, or a 32-bit
    /// Thumb instruction as `first_halfword << 16 | second_halfword` (the
    /// layout the ARM ARM draws).
    pub encoding: u32,
    /// Capstone's text (`mnemonic operands`) for reports; empty when it
    /// could not be decoded.
    pub text: String,
    /// What it is to the planner.
    pub kind: ArmPoiKind,
    /// It executes only when a condition holds (condition field, IT block,
    /// `B<cond>`, CBZ/CBNZ); otherwise it does nothing and falls through, so a
    /// conditional POI keeps its fall-through edge in the CFG.
    pub conditional: bool,
    /// The IT state while it executes ([`ItState::NONE`] in ARM state).
    pub it_before: ItState,
    /// The IT state for the instruction that follows it in memory.
    pub it_after: ItState,
    #[serde(skip)]
    insn_id: u32,
}

impl ArmInstruction {
    /// The address of the next instruction in memory (the fall-through).
    #[must_use]
    pub const fn fall_through(&self) -> GuestVirt {
        self.guest_virt.offset(self.len)
    }
}

/// Errors in setting up the classifier.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArmClassifierError {
    /// Capstone could not open a decoder (not built with ARM support, or
    /// out of memory).
    #[error("capstone could not open an ARM decoder for {mode:?} code: {source}")]
    Decoder {
        /// Which instruction set.
        mode: ArmMode,
        /// Capstone's error.
        #[source]
        source: capstone::Error,
    },
}

/// Most instructions [`ArmClassifier::scan_block`] decodes per capstone call:
/// blocks are short, and a call decodes everything it is allowed to.
const SCAN_CHUNK: usize = 16;

/// Decodes and classifies ARMv7 code. Holds one capstone handle per
/// instruction set, opened once; capstone handles are neither `Send` nor
/// `Sync`, so neither is this.
pub struct ArmClassifier {
    arm: Capstone,
    thumb: Capstone,
}

impl std::fmt::Debug for ArmClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmClassifier").finish_non_exhaustive()
    }
}

impl ArmClassifier {
    /// Opens the ARM and Thumb decoders.
    ///
    /// # Errors
    ///
    /// [`ArmClassifierError::Decoder`] when capstone cannot open one.
    pub fn new() -> Result<Self, ArmClassifierError> {
        let open = |mode: ArmMode| {
            let arch_mode = match mode {
                ArmMode::Arm => arch::arm::ArchMode::Arm,
                ArmMode::Thumb => arch::arm::ArchMode::Thumb,
            };
            Capstone::new()
                .arm()
                .mode(arch_mode)
                .detail(true)
                .build()
                .map_err(|source| ArmClassifierError::Decoder { mode, source })
        };
        Ok(Self {
            arm: open(ArmMode::Arm)?,
            thumb: open(ArmMode::Thumb)?,
        })
    }

    fn handle(&self, mode: ArmMode) -> &Capstone {
        match mode {
            ArmMode::Arm => &self.arm,
            ArmMode::Thumb => &self.thumb,
        }
    }

    /// Decodes and classifies up to `max` instructions of straight-line
    /// code at `guest_virt`, outside any IT block. See
    /// [`ArmClassifier::classify_run_in`].
    #[must_use]
    pub fn classify_run(
        &self,
        mode: ArmMode,
        guest_virt: GuestVirt,
        code: &[u8],
        max: usize,
    ) -> Vec<ArmInstruction> {
        self.classify_run_in(mode, ItState::NONE, guest_virt, code, max)
    }

    /// Decodes and classifies up to `max` instructions of straight-line
    /// code at `guest_virt`, starting with IT state `it` (ignored in ARM
    /// state), for example one taken from the guest's CPSR after a trap
    /// inside an IT block.
    ///
    /// The run ends early at an instruction that cannot be decoded (its
    /// entry is [`ArmPoiKind::Unrecognized`], 4 bytes long or 2 for a
    /// 16-bit Thumb encoding) and before an instruction that `code` holds
    /// only part of (the caller reads more and decodes again).
    #[must_use]
    pub fn classify_run_in(
        &self,
        mode: ArmMode,
        it: ItState,
        guest_virt: GuestVirt,
        code: &[u8],
        max: usize,
    ) -> Vec<ArmInstruction> {
        let mut out = Vec::new();
        if max == 0 {
            return out;
        }
        let cs = self.handle(mode);
        let mut it = match mode {
            ArmMode::Arm => ItState::NONE,
            ArmMode::Thumb => it,
        };
        let mut consumed = 0usize;
        // One call for the whole run: capstone follows IT blocks within a
        // call (its own predicate and S-bit choices then match ours).
        if let Ok(insns) = cs.disasm_count(code, u64::from(guest_virt.0), max) {
            for insn in insns.iter() {
                let bytes = insn.bytes();
                let Some(encoding) = encoding_of(mode, bytes) else {
                    break;
                };
                let len = u32::try_from(bytes.len()).unwrap_or(4);
                let at = guest_virt.offset(u32::try_from(consumed).unwrap_or(u32::MAX));
                let it_after = if is_it_instruction(mode, encoding, len) {
                    ItState::from_bits(encoding.to_le_bytes()[0])
                } else {
                    it.advance()
                };
                let entry = Self::classify_decoded(cs, insn, mode, at, encoding, len, it, it_after);
                consumed += bytes.len();
                it = it_after;
                let stop = entry.kind == ArmPoiKind::Unrecognized;
                out.push(entry);
                if stop {
                    return out;
                }
            }
        }
        if out.len() < max {
            let rest = &code[consumed.min(code.len())..];
            if let Some((encoding, len)) = undecodable(mode, rest) {
                let at = guest_virt.offset(u32::try_from(consumed).unwrap_or(u32::MAX));
                out.push(ArmInstruction {
                    guest_virt: at,
                    len,
                    mode,
                    encoding,
                    text: String::new(),
                    kind: ArmPoiKind::Unrecognized,
                    conditional: false,
                    it_before: it,
                    it_after: ItState::NONE,
                    insn_id: ArmInsn::ARM_INS_INVALID as u32,
                });
            }
        }
        out
    }

    /// Straight-line code from `guest_virt` up to and including its first
    /// point of interest (the x86 planner's block), outside any IT block.
    /// The block ends without a POI when `code` runs out first.
    #[must_use]
    pub fn scan_block(
        &self,
        mode: ArmMode,
        guest_virt: GuestVirt,
        code: &[u8],
    ) -> Vec<ArmInstruction> {
        self.scan_block_in(mode, ItState::NONE, guest_virt, code)
    }

    /// [`ArmClassifier::scan_block`] starting with IT state `it`.
    #[must_use]
    pub fn scan_block_in(
        &self,
        mode: ArmMode,
        it: ItState,
        guest_virt: GuestVirt,
        code: &[u8],
    ) -> Vec<ArmInstruction> {
        let mut block = Vec::new();
        let mut it = it;
        let mut offset = 0usize;
        loop {
            let at = guest_virt.offset(u32::try_from(offset).unwrap_or(u32::MAX));
            let chunk = self.classify_run_in(mode, it, at, &code[offset..], SCAN_CHUNK);
            let decoded = chunk.len();
            for entry in chunk {
                offset += entry.len as usize;
                it = entry.it_after;
                let poi = entry.kind.is_poi();
                block.push(entry);
                if poi {
                    return block;
                }
            }
            if decoded < SCAN_CHUNK || offset >= code.len() {
                return block;
            }
        }
    }

    /// The normalized form of an instruction for "most frequent forms"
    /// tables: the coprocessor fields for MCR/MRC (`mcr p15, 0, c7, c10, 5`,
    /// without the transfer register), the PSR and fields for MRS/MSR
    /// (`msr cpsr_c`), the register for VMRS/VMSR (`vmrs fpexc`), the `^`
    /// forms of LDM/STM (`ldm ^ pc`), `subs pc` for data-processing
    /// exception returns, and capstone's base mnemonic otherwise (no
    /// condition, no width qualifier).
    #[must_use]
    pub fn summary_key(&self, instruction: &ArmInstruction) -> String {
        let word = instruction.encoding;
        let id = instruction.insn_id;
        let base = self
            .handle(instruction.mode)
            .insn_name(InsnId(id))
            .unwrap_or_else(|| "(undecodable)".to_owned());
        if instruction.kind == ArmPoiKind::Unrecognized && instruction.text.is_empty() {
            return "(undecodable)".to_owned();
        }
        let fields = CoprocFields::of(word);
        match id {
            ids::MCR | ids::MRC | ids::MCR2 | ids::MRC2 => format!(
                "{base} p{}, {}, c{}, c{}, {}",
                fields.coproc, fields.opc1, fields.crn, fields.crm, fields.opc2
            ),
            ids::MCRR | ids::MRRC | ids::MCRR2 | ids::MRRC2 => format!(
                "{base} p{}, {}, c{}",
                fields.coproc,
                (word >> 4) & 0xf,
                fields.crm
            ),
            ids::CDP | ids::LDC | ids::LDCL | ids::STC | ids::STCL => {
                format!("{base} p{}", fields.coproc)
            }
            ids::MRS => format!("mrs {}", psr_name(instruction.mode, word)),
            ids::MSR => {
                let msr = MsrFields::of(instruction.mode, word);
                if msr.banked {
                    "msr banked".to_owned()
                } else {
                    let psr = if msr.spsr { "spsr" } else { "cpsr" };
                    format!("msr {psr}_{}", mask_letters(msr.mask))
                }
            }
            ids::VMRS | ids::VMSR => format!("{base} {}", fp_register_name((word >> 16) & 0xf)),
            _ => match instruction.kind {
                ArmPoiKind::Sensitive {
                    kind: ArmSensitiveKind::UserRegisters,
                    ..
                } => format!("{base} ^"),
                ArmPoiKind::Sensitive {
                    kind: ArmSensitiveKind::ExceptionReturn,
                    ..
                } if is_block_transfer(instruction.mode, word) => format!("{base} ^ pc"),
                ArmPoiKind::Sensitive {
                    kind: ArmSensitiveKind::ExceptionReturn,
                    ..
                } if id != ids::ERET => {
                    // Capstone names the ARM form `sub`, the Thumb one `subs`.
                    format!("{}s pc", base.strip_suffix('s').unwrap_or(&base))
                }
                _ => base,
            },
        }
    }

    #[allow(clippy::too_many_arguments)] // One decoded instruction's facts, used once.
    fn classify_decoded(
        cs: &Capstone,
        insn: &capstone::Insn<'_>,
        mode: ArmMode,
        guest_virt: GuestVirt,
        encoding: u32,
        len: u32,
        it_before: ItState,
        it_after: ItState,
    ) -> ArmInstruction {
        let text = match (insn.mnemonic(), insn.op_str()) {
            (Some(m), Some(ops)) if !ops.is_empty() => format!("{m} {ops}"),
            (Some(m), _) => m.to_owned(),
            _ => String::new(),
        };
        let id = insn.id().0;
        let facts = cs.insn_detail(insn).ok().and_then(|detail| {
            detail.arch_detail().arm().map(|arm| DecodedFacts {
                cc: arm.cc(),
                update_flags: arm.update_flags(),
                usermode: arm.usermode(),
                operands: arm.operands().collect(),
            })
        });
        let (kind, conditional) = match facts {
            Some(facts) => {
                let conditional = match mode {
                    ArmMode::Arm => encoding >> 28 < COND_AL,
                    ArmMode::Thumb => it_before.makes_conditional(),
                } || (!is_it_instruction(mode, encoding, len)
                    && !matches!(facts.cc, ArmCC::ARM_CC_AL | ArmCC::ARM_CC_INVALID));
                let decoded = Decoded {
                    id,
                    mode,
                    guest_virt,
                    word: encoding,
                    len,
                    facts: &facts,
                    conditional,
                };
                let kind = decoded.classify();
                let conditional = conditional || matches!(kind, ArmPoiKind::CondBranch { .. });
                (kind, conditional)
            }
            None => (ArmPoiKind::Unrecognized, false),
        };
        ArmInstruction {
            guest_virt,
            len,
            mode,
            encoding,
            text,
            kind,
            conditional,
            it_before,
            it_after,
            insn_id: id,
        }
    }
}

/// Capstone instruction ids as constants, so that `match` can use them.
mod ids {
    use capstone::arch::arm::ArmInsn;

    macro_rules! ids {
        ($($name:ident = $insn:ident),* $(,)?) => {
            $(pub(super) const $name: u32 = ArmInsn::$insn as u32;)*
        };
    }

    ids!(
        ADC = ARM_INS_ADC,
        ADD = ARM_INS_ADD,
        ADR = ARM_INS_ADR,
        AND = ARM_INS_AND,
        ASR = ARM_INS_ASR,
        B = ARM_INS_B,
        BIC = ARM_INS_BIC,
        BKPT = ARM_INS_BKPT,
        BL = ARM_INS_BL,
        BLX = ARM_INS_BLX,
        BLXNS = ARM_INS_BLXNS,
        BX = ARM_INS_BX,
        BXJ = ARM_INS_BXJ,
        BXNS = ARM_INS_BXNS,
        CBNZ = ARM_INS_CBNZ,
        CBZ = ARM_INS_CBZ,
        CDP = ARM_INS_CDP,
        CDP2 = ARM_INS_CDP2,
        CPS = ARM_INS_CPS,
        DCPS1 = ARM_INS_DCPS1,
        DCPS2 = ARM_INS_DCPS2,
        DCPS3 = ARM_INS_DCPS3,
        EOR = ARM_INS_EOR,
        ERET = ARM_INS_ERET,
        HINT = ARM_INS_HINT,
        HLT = ARM_INS_HLT,
        HVC = ARM_INS_HVC,
        LDC = ARM_INS_LDC,
        LDC2 = ARM_INS_LDC2,
        LDC2L = ARM_INS_LDC2L,
        LDCL = ARM_INS_LDCL,
        LDM = ARM_INS_LDM,
        LDMDA = ARM_INS_LDMDA,
        LDMDB = ARM_INS_LDMDB,
        LDMIB = ARM_INS_LDMIB,
        LDR = ARM_INS_LDR,
        LDRBT = ARM_INS_LDRBT,
        LDRHT = ARM_INS_LDRHT,
        LDRSBT = ARM_INS_LDRSBT,
        LDRSHT = ARM_INS_LDRSHT,
        LDRT = ARM_INS_LDRT,
        LSL = ARM_INS_LSL,
        LSR = ARM_INS_LSR,
        MCR = ARM_INS_MCR,
        MCR2 = ARM_INS_MCR2,
        MCRR = ARM_INS_MCRR,
        MCRR2 = ARM_INS_MCRR2,
        MOV = ARM_INS_MOV,
        MOVS = ARM_INS_MOVS,
        MRC = ARM_INS_MRC,
        MRC2 = ARM_INS_MRC2,
        MRRC = ARM_INS_MRRC,
        MRRC2 = ARM_INS_MRRC2,
        MRS = ARM_INS_MRS,
        MSR = ARM_INS_MSR,
        MVN = ARM_INS_MVN,
        ORN = ARM_INS_ORN,
        ORR = ARM_INS_ORR,
        POP = ARM_INS_POP,
        PUSH = ARM_INS_PUSH,
        RFEDA = ARM_INS_RFEDA,
        RFEDB = ARM_INS_RFEDB,
        RFEIA = ARM_INS_RFEIA,
        RFEIB = ARM_INS_RFEIB,
        ROR = ARM_INS_ROR,
        RRX = ARM_INS_RRX,
        RSB = ARM_INS_RSB,
        RSC = ARM_INS_RSC,
        SBC = ARM_INS_SBC,
        SETPAN = ARM_INS_SETPAN,
        SEV = ARM_INS_SEV,
        SG = ARM_INS_SG,
        SMC = ARM_INS_SMC,
        SRSDA = ARM_INS_SRSDA,
        SRSDB = ARM_INS_SRSDB,
        SRSIA = ARM_INS_SRSIA,
        SRSIB = ARM_INS_SRSIB,
        STC = ARM_INS_STC,
        STC2 = ARM_INS_STC2,
        STC2L = ARM_INS_STC2L,
        STCL = ARM_INS_STCL,
        STM = ARM_INS_STM,
        STMDA = ARM_INS_STMDA,
        STMDB = ARM_INS_STMDB,
        STMIB = ARM_INS_STMIB,
        STRBT = ARM_INS_STRBT,
        STRHT = ARM_INS_STRHT,
        STRT = ARM_INS_STRT,
        SUB = ARM_INS_SUB,
        SUBS = ARM_INS_SUBS,
        SVC = ARM_INS_SVC,
        TBB = ARM_INS_TBB,
        TBH = ARM_INS_TBH,
        TRAP = ARM_INS_TRAP,
        TT = ARM_INS_TT,
        TTA = ARM_INS_TTA,
        TTAT = ARM_INS_TTAT,
        TTT = ARM_INS_TTT,
        UDF = ARM_INS_UDF,
        VLLDM = ARM_INS_VLLDM,
        VLSTM = ARM_INS_VLSTM,
        VMRS = ARM_INS_VMRS,
        VMSR = ARM_INS_VMSR,
        WFE = ARM_INS_WFE,
        WFI = ARM_INS_WFI,
    );
}

/// What capstone's detail says about one instruction.
struct DecodedFacts {
    cc: ArmCC,
    update_flags: bool,
    usermode: bool,
    operands: Vec<ArmOperand>,
}

/// One decoded instruction with the facts classification needs.
struct Decoded<'a> {
    id: u32,
    mode: ArmMode,
    guest_virt: GuestVirt,
    word: u32,
    len: u32,
    facts: &'a DecodedFacts,
    conditional: bool,
}

impl Decoded<'_> {
    fn classify(&self) -> ArmPoiKind {
        use ArmSensitiveKind as S;

        let sensitive = ArmPoiKind::sensitive;
        // SUBS PC, LR, #imm8 (ERET for #0) in Thumb: capstone prints PC and
        // LR as text, not as operands.
        if self.mode == ArmMode::Thumb && self.len == 4 && self.word & 0xffff_ff00 == 0xf3de_8f00 {
            return sensitive(S::ExceptionReturn);
        }
        match self.id {
            ids::CPS => sensitive(S::ChangeProcessorState),
            ids::MRS => sensitive(S::StatusRead),
            ids::MSR => sensitive(MsrFields::of(self.mode, self.word).class()),
            ids::MCR | ids::MRC => coprocessor_register(self.id == ids::MRC, self.word),
            ids::MCRR | ids::MRRC => coprocessor_register_pair(self.word),
            ids::CDP | ids::LDC | ids::LDCL | ids::STC | ids::STCL => {
                match CoprocFields::of(self.word).coproc {
                    14 => sensitive(S::DebugCoprocessor),
                    // VFP and Advanced SIMD live here; capstone names
                    // their instructions (VLDM, VMOV, ...) instead, so an
                    // encoding that reaches this arm is one it did not
                    // recognize as VFP.
                    10 | 11 => ArmPoiKind::Unrecognized,
                    _ => sensitive(S::OtherCoprocessor),
                }
            }
            // The `2` forms (cond = 1111) have no coprocessor to go to on
            // ARMv7-A: CP14 and CP15 define none.
            ids::MCR2
            | ids::MRC2
            | ids::MCRR2
            | ids::MRRC2
            | ids::CDP2
            | ids::LDC2
            | ids::LDC2L
            | ids::STC2
            | ids::STC2L => sensitive(S::OtherCoprocessor),
            ids::VMRS | ids::VMSR => {
                // FPSCR (spec_reg 0001) is the one VFP system register that
                // PL0 may access.
                if (self.word >> 16) & 0xf == 0b0001 {
                    ArmPoiKind::Plain
                } else {
                    sensitive(S::FpSystemRegister)
                }
            }
            ids::SRSDA | ids::SRSDB | ids::SRSIA | ids::SRSIB => sensitive(S::SaveReturnState),
            ids::RFEDA | ids::RFEDB | ids::RFEIA | ids::RFEIB => sensitive(S::ReturnFromException),
            ids::SVC => sensitive(S::SupervisorCall),
            ids::SMC => sensitive(S::SecureMonitorCall),
            ids::HVC => sensitive(S::HypervisorCall),
            ids::BKPT => sensitive(S::Breakpoint),
            ids::UDF | ids::TRAP => sensitive(S::Undefined),
            ids::ERET => sensitive(S::ExceptionReturn),
            // Capstone reports most hints as HINT and prints the alias.
            ids::HINT | ids::WFI | ids::WFE | ids::SEV => {
                let hint = hint_number(self.mode, self.word, self.len).or(match self.id {
                    ids::WFE => Some(2),
                    ids::WFI => Some(3),
                    ids::SEV => Some(4),
                    _ => None,
                });
                match hint {
                    Some(2) => sensitive(S::WaitForEvent),
                    Some(3) => sensitive(S::WaitForInterrupt),
                    Some(4) => sensitive(S::SendEvent),
                    _ => ArmPoiKind::Plain,
                }
            }
            ids::LDRT
            | ids::STRT
            | ids::LDRBT
            | ids::STRBT
            | ids::LDRHT
            | ids::STRHT
            | ids::LDRSBT
            | ids::LDRSHT => sensitive(S::UnprivilegedAccess),
            // ARMv8 and ARMv8-M instructions a Cortex-A9 kernel does not
            // use, and BXJ, whose effect depends on the host's Jazelle
            // configuration.
            ids::BXJ
            | ids::DCPS1
            | ids::DCPS2
            | ids::DCPS3
            | ids::HLT
            | ids::SETPAN
            | ids::SG
            | ids::TT
            | ids::TTA
            | ids::TTAT
            | ids::TTT
            | ids::BLXNS
            | ids::BXNS
            | ids::VLLDM
            | ids::VLSTM => ArmPoiKind::Unrecognized,
            ids::LDM
            | ids::LDMDA
            | ids::LDMDB
            | ids::LDMIB
            | ids::STM
            | ids::STMDA
            | ids::STMDB
            | ids::STMIB
            | ids::POP
            | ids::PUSH => self.block_transfer(),
            ids::LDR if self.writes_pc_operand(0) => {
                ArmPoiKind::PointerBranch(ArmPointerKind::LoadPc)
            }
            ids::BX => {
                if self.register_operand(0) == Some(ArmReg::ARM_REG_LR) {
                    ArmPoiKind::PointerBranch(ArmPointerKind::Return)
                } else {
                    ArmPoiKind::PointerBranch(ArmPointerKind::BranchExchange)
                }
            }
            ids::BLX if self.register_operand(0).is_some() => {
                ArmPoiKind::PointerBranch(ArmPointerKind::BranchLinkExchange)
            }
            ids::B | ids::BL | ids::BLX | ids::CBZ | ids::CBNZ => self.direct_branch(),
            ids::TBB | ids::TBH => ArmPoiKind::PointerBranch(ArmPointerKind::TableBranch),
            ids::AND
            | ids::EOR
            | ids::SUB
            | ids::SUBS
            | ids::RSB
            | ids::ADD
            | ids::ADC
            | ids::SBC
            | ids::RSC
            | ids::ORR
            | ids::ORN
            | ids::MOV
            | ids::MOVS
            | ids::MVN
            | ids::BIC
            | ids::LSL
            | ids::LSR
            | ids::ASR
            | ids::ROR
            | ids::RRX
            | ids::ADR
                if self.register_operand(0) == Some(ArmReg::ARM_REG_PC) =>
            {
                if self.sets_flags() {
                    sensitive(S::ExceptionReturn)
                } else {
                    ArmPoiKind::PointerBranch(ArmPointerKind::DataProcessingPc)
                }
            }
            _ if self.any_operand_writes_pc() => ArmPoiKind::Unrecognized,
            _ => ArmPoiKind::Plain,
        }
    }

    fn register_operand(&self, index: usize) -> Option<u32> {
        match self.facts.operands.get(index)?.op_type {
            ArmOperandType::Reg(reg) => Some(u32::from(reg.0)),
            _ => None,
        }
    }

    fn writes_pc_operand(&self, index: usize) -> bool {
        self.register_operand(index) == Some(ArmReg::ARM_REG_PC)
    }

    fn any_operand_writes_pc(&self) -> bool {
        self.facts.operands.iter().any(|op| {
            matches!(op.op_type, ArmOperandType::Reg(reg) if u32::from(reg.0) == ArmReg::ARM_REG_PC)
                && op.access.is_some_and(capstone::AccessType::is_writable)
        })
    }

    /// The S bit, from capstone and, in ARM state, from the encoding
    /// (SUBS PC, LR is its own opcode in capstone's tables).
    fn sets_flags(&self) -> bool {
        let arm_s_bit = self.mode == ArmMode::Arm
            && (self.word >> 26) & 0b11 == 0b00
            && (self.word >> 20) & 1 == 1;
        self.facts.update_flags || arm_s_bit || matches!(self.id, ids::SUBS | ids::MOVS)
    }

    fn block_transfer(&self) -> ArmPoiKind {
        let load = matches!(
            self.id,
            ids::LDM | ids::LDMDA | ids::LDMDB | ids::LDMIB | ids::POP
        );
        // A load's list: every register operand but LDM's base register
        // (POP names only the list).
        let list_start = usize::from(self.id != ids::POP);
        let list: Vec<u32> = self
            .facts
            .operands
            .iter()
            .skip(list_start)
            .filter_map(|op| match op.op_type {
                ArmOperandType::Reg(reg) => Some(u32::from(reg.0)),
                _ => None,
            })
            .collect();
        let loads_pc = load && list.contains(&ArmReg::ARM_REG_PC);
        // The `^` (S bit 22 of an ARM block transfer; Thumb has no such form).
        let user_form = self.facts.usermode
            || (self.mode == ArmMode::Arm
                && is_block_transfer(self.mode, self.word)
                && (self.word >> 22) & 1 == 1);
        if user_form {
            return ArmPoiKind::sensitive(if loads_pc {
                ArmSensitiveKind::ExceptionReturn
            } else {
                ArmSensitiveKind::UserRegisters
            });
        }
        if !loads_pc {
            return ArmPoiKind::Plain;
        }
        if self.id == ids::POP && list.len() == 1 {
            ArmPoiKind::PointerBranch(ArmPointerKind::LoadPc)
        } else {
            ArmPoiKind::PointerBranch(ArmPointerKind::LoadMultiplePc)
        }
    }

    fn direct_branch(&self) -> ArmPoiKind {
        let Some((target, target_mode)) =
            branch_target(self.mode, self.guest_virt, self.word, self.len)
        else {
            return ArmPoiKind::Unrecognized;
        };
        let link = matches!(self.id, ids::BL | ids::BLX);
        if self.conditional || matches!(self.id, ids::CBZ | ids::CBNZ) {
            ArmPoiKind::CondBranch {
                taken: target,
                link,
                target_mode,
            }
        } else {
            ArmPoiKind::DirectBranch {
                target,
                link,
                target_mode,
            }
        }
    }
}

/// The fields of an MCR/MRC (and, in part, MCRR/MRRC, LDC/STC, CDP)
/// encoding; ARM and 32-bit Thumb share the layout of bits 23:0.
struct CoprocFields {
    coproc: u32,
    opc1: u32,
    crn: u32,
    crm: u32,
    opc2: u32,
}

impl CoprocFields {
    const fn of(word: u32) -> Self {
        Self {
            coproc: (word >> 8) & 0xf,
            opc1: (word >> 21) & 0x7,
            crn: (word >> 16) & 0xf,
            crm: word & 0xf,
            opc2: (word >> 5) & 0x7,
        }
    }
}

fn coprocessor_register(read: bool, word: u32) -> ArmPoiKind {
    use ArmSensitiveKind as S;

    let f = CoprocFields::of(word);
    let kind = match f.coproc {
        14 => S::DebugCoprocessor,
        15 => match (f.opc1, f.crn, f.crm, f.opc2) {
            // CP15DSB, CP15DMB, CP15ISB: PL0 may use them.
            (0, 7, 10, 4 | 5) | (0, 7, 5, 4) if !read => return ArmPoiKind::Plain,
            // PAR is a register, not an operation.
            (0, 7, 4, 0) => S::SystemRegister,
            (0, 7 | 8, _, _) => S::CacheTlbMaintenance,
            (0, 13, 0, 2) => S::ThreadIdRegister,
            (0, 13, 0, 3) if read => S::ThreadIdRegister,
            (0, 9, 12..=14, _) => S::PerfMonitor,
            (_, 14, _, _) => S::GenericTimer,
            _ => S::SystemRegister,
        },
        // VFP: capstone decodes these as VMRS/VMSR/VMOV; see `classify`.
        10 | 11 => return ArmPoiKind::Unrecognized,
        _ => S::OtherCoprocessor,
    };
    ArmPoiKind::sensitive(kind)
}

fn coprocessor_register_pair(word: u32) -> ArmPoiKind {
    use ArmSensitiveKind as S;

    let f = CoprocFields::of(word);
    let kind = match (f.coproc, f.crm) {
        (14, _) => S::DebugCoprocessor,
        // CNTPCT, CNTVCT, CNTP_CVAL, CNTV_CVAL, CNTVOFF.
        (15, 14) => S::GenericTimer,
        (15, _) => S::SystemRegister,
        (10 | 11, _) => return ArmPoiKind::Unrecognized,
        _ => S::OtherCoprocessor,
    };
    ArmPoiKind::sensitive(kind)
}

/// The PSR and field mask of an MSR, from the encoding.
struct MsrFields {
    spsr: bool,
    banked: bool,
    mask: u32,
}

impl MsrFields {
    fn of(mode: ArmMode, word: u32) -> Self {
        match mode {
            // Register form cond 00010 R 10 mask 1111 00 B 0 0000 Rn,
            // immediate form cond 00110 R 10 mask 1111 imm12.
            ArmMode::Arm => {
                let register_form = (word >> 23) & 0x1f == 0b00010;
                Self {
                    spsr: (word >> 22) & 1 == 1,
                    banked: register_form && (word >> 9) & 1 == 1,
                    mask: (word >> 16) & 0xf,
                }
            }
            // 11110011100 R Rn | 10 0 0 mask 0 0 B 0 0000.
            ArmMode::Thumb => Self {
                spsr: (word >> 20) & 1 == 1,
                banked: (word >> 5) & 1 == 1,
                mask: (word >> 8) & 0xf,
            },
        }
    }

    fn class(&self) -> ArmSensitiveKind {
        // Mask bits: 8 = f (flags), 4 = s (status), 2 = x, 1 = c.
        if self.spsr || self.banked || self.mask & 0b0011 != 0 || self.mask == 0 {
            ArmSensitiveKind::StatusWrite
        } else {
            ArmSensitiveKind::ApsrWrite
        }
    }
}

fn mask_letters(mask: u32) -> String {
    [(8, 'f'), (4, 's'), (2, 'x'), (1, 'c')]
        .iter()
        .filter(|(bit, _)| mask & bit != 0)
        .map(|(_, letter)| *letter)
        .collect()
}

fn psr_name(mode: ArmMode, word: u32) -> &'static str {
    let (spsr, banked) = match mode {
        ArmMode::Arm => ((word >> 22) & 1 == 1, (word >> 9) & 1 == 1),
        ArmMode::Thumb => ((word >> 20) & 1 == 1, (word >> 5) & 1 == 1),
    };
    match (banked, spsr) {
        (true, _) => "banked",
        (false, true) => "spsr",
        (false, false) => "cpsr",
    }
}

fn fp_register_name(spec_reg: u32) -> String {
    match spec_reg {
        0b0000 => "fpsid".to_owned(),
        0b0001 => "fpscr".to_owned(),
        0b0110 => "mvfr1".to_owned(),
        0b0111 => "mvfr0".to_owned(),
        0b1000 => "fpexc".to_owned(),
        other => format!("spec_reg{other}"),
    }
}

/// The number of a hint instruction (A8.8 NOP, YIELD, WFE, WFI, SEV, DBG): 0 NOP, 1 YIELD, 2 WFE, 3 WFI, 4 SEV, 5 SEVL, 0xf0-0xff
/// DBG.
fn hint_number(mode: ArmMode, word: u32, len: u32) -> Option<u32> {
    match (mode, len) {
        // cond 0011 0010 0000 1111 0000 hint(8)
        (ArmMode::Arm, 4) if word & 0x0fff_ff00 == 0x0320_f000 => Some(word & 0xff),
        // 1011 1111 hint(4) 0000
        (ArmMode::Thumb, 2) if word & 0xff0f == 0xbf00 => Some((word >> 4) & 0xf),
        // 1111 0011 1010 1111 | 10 0 0 0 000 hint(8)
        (ArmMode::Thumb, 4) if word & 0xffff_ff00 == 0xf3af_8000 => Some(word & 0xff),
        _ => None,
    }
}

/// True for an ARM LDM/STM encoding (bits 27:25 = 100), where bit 22 is `^`.
const fn is_block_transfer(mode: ArmMode, word: u32) -> bool {
    matches!(mode, ArmMode::Arm) && (word >> 25) & 0b111 == 0b100
}

fn is_it_instruction(mode: ArmMode, word: u32, len: u32) -> bool {
    // 1011 1111 firstcond mask, with a mask other than 0000 (those are the
    // hints NOP, YIELD, WFE, WFI, SEV).
    mode == ArmMode::Thumb && len == 2 && word & 0xff00 == 0xbf00 && word & 0xf != 0
}

/// The encoding as a number: see [`ArmInstruction::encoding`].
fn encoding_of(mode: ArmMode, bytes: &[u8]) -> Option<u32> {
    let halfword = |at: usize| -> Option<u32> {
        Some(u32::from(u16::from_le_bytes([
            *bytes.get(at)?,
            *bytes.get(at + 1)?,
        ])))
    };
    match (mode, bytes.len()) {
        (ArmMode::Arm, 4) => Some(u32::from_le_bytes(<[u8; 4]>::try_from(bytes).ok()?)),
        (ArmMode::Thumb, 4) => Some((halfword(0)? << 16) | halfword(2)?),
        (ArmMode::Thumb, 2) => halfword(0),
        _ => None,
    }
}

/// The first instruction of `rest`, which capstone did not decode: its
/// encoding and length, or `None` when `rest` holds only part of one.
fn undecodable(mode: ArmMode, rest: &[u8]) -> Option<(u32, u32)> {
    match mode {
        ArmMode::Arm => Some((encoding_of(mode, rest.get(..4)?)?, 4)),
        ArmMode::Thumb => {
            let first = u16::from_le_bytes([*rest.first()?, *rest.get(1)?]);
            // Bits 15:11 of 11101, 11110 or 11111 start a 32-bit encoding.
            if first >> 11 >= 0b11101 {
                Some((encoding_of(mode, rest.get(..4)?)?, 4))
            } else {
                Some((u32::from(first), 2))
            }
        }
    }
}

/// Sign-extends the low `bits` bits of `value`.
const fn sign_extend(value: u32, bits: u32) -> u32 {
    let shift = 32 - bits;
    ((value << shift).cast_signed() >> shift).cast_unsigned()
}

/// The target of an immediate branch, computed from its encoding
/// (A8.8 B, BL and BLX (immediate), CBNZ and CBZ), and the
/// instruction set there. `None` for an encoding that is not one of them.
fn branch_target(
    mode: ArmMode,
    guest_virt: GuestVirt,
    word: u32,
    len: u32,
) -> Option<(GuestVirt, ArmMode)> {
    let at = guest_virt.0;
    match (mode, len) {
        (ArmMode::Arm, 4) if (word >> 25) & 0b111 == 0b101 => {
            let offset = sign_extend((word & 0x00ff_ffff) << 2, 26);
            if word >> 28 == 0b1111 {
                // BLX (immediate): H (bit 24) is bit 1 of the Thumb target.
                let h = (word >> 24) & 1;
                Some((
                    GuestVirt(at.wrapping_add(8).wrapping_add(offset).wrapping_add(h << 1)),
                    ArmMode::Thumb,
                ))
            } else {
                Some((
                    GuestVirt(at.wrapping_add(8).wrapping_add(offset)),
                    ArmMode::Arm,
                ))
            }
        }
        (ArmMode::Thumb, 2) => {
            let pc = at.wrapping_add(4);
            if word >> 12 == 0b1101 && (word >> 8) & 0xf < 0b1110 {
                // B<cond> T1.
                Some((
                    GuestVirt(pc.wrapping_add(sign_extend((word & 0xff) << 1, 9))),
                    mode,
                ))
            } else if word >> 11 == 0b11100 {
                // B T2.
                Some((
                    GuestVirt(pc.wrapping_add(sign_extend((word & 0x7ff) << 1, 12))),
                    mode,
                ))
            } else if word >> 12 == 0b1011 && word & 0b0101_0000_0000 == 0b0001_0000_0000 {
                // CBZ/CBNZ: 1011 op 0 i 1 imm5 Rn, a forward offset.
                let offset = (((word >> 9) & 1) << 6) | (((word >> 3) & 0x1f) << 1);
                Some((GuestVirt(pc.wrapping_add(offset)), mode))
            } else {
                None
            }
        }
        (ArmMode::Thumb, 4) if word >> 27 == 0b11110 && (word >> 15) & 1 == 1 => {
            let pc = at.wrapping_add(4);
            let s = (word >> 26) & 1;
            let j1 = (word >> 13) & 1;
            let j2 = (word >> 11) & 1;
            let imm11 = word & 0x7ff;
            let link = (word >> 14) & 1 == 1;
            let thumb_target = (word >> 12) & 1 == 1;
            if !link && !thumb_target {
                // B<cond> T3: S:J2:J1:imm6:imm11:0.
                let imm6 = (word >> 16) & 0x3f;
                let offset = sign_extend(
                    (s << 20) | (j2 << 19) | (j1 << 18) | (imm6 << 12) | (imm11 << 1),
                    21,
                );
                return Some((GuestVirt(pc.wrapping_add(offset)), mode));
            }
            // B T4, BL, BLX: S:I1:I2:imm10:imm11:0 with I = NOT(J XOR S).
            let i1 = (!(j1 ^ s)) & 1;
            let i2 = (!(j2 ^ s)) & 1;
            let imm10 = (word >> 16) & 0x3ff;
            let offset = sign_extend(
                (s << 24) | (i1 << 23) | (i2 << 22) | (imm10 << 12) | (imm11 << 1),
                25,
            );
            if thumb_target {
                Some((GuestVirt(pc.wrapping_add(offset)), mode))
            } else {
                // BLX (immediate) T2: to ARM code, from Align(PC, 4).
                Some((GuestVirt((pc & !3).wrapping_add(offset & !3)), ArmMode::Arm))
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: GuestVirt = GuestVirt(0x1000);

    fn classifier() -> ArmClassifier {
        ArmClassifier::new().expect("capstone opens ARM and Thumb decoders")
    }

    fn arm_bytes(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// Thumb code from halfwords in memory order (a 32-bit instruction is
    /// its first halfword, then its second).
    fn thumb_bytes(halfwords: &[u16]) -> Vec<u8> {
        halfwords.iter().flat_map(|h| h.to_le_bytes()).collect()
    }

    fn mnemonic(instruction: &ArmInstruction) -> &str {
        instruction.text.split_whitespace().next().unwrap_or("")
    }

    /// Decodes one instruction that must fill `code` exactly and carry
    /// capstone mnemonic `expected` (a wrong hand encoding fails here).
    fn one(mode: ArmMode, code: &[u8], expected: &str) -> ArmInstruction {
        let run = classifier().classify_run(mode, AT, code, 8);
        assert_eq!(run.len(), 1, "{expected}: {run:#?}");
        let instruction = run.into_iter().next().expect("one instruction");
        assert_eq!(
            instruction.len as usize,
            code.len(),
            "{expected}: {instruction:?}"
        );
        assert_eq!(mnemonic(&instruction), expected, "{instruction:?}");
        instruction
    }

    fn arm(word: u32, expected: &str) -> ArmInstruction {
        one(ArmMode::Arm, &arm_bytes(&[word]), expected)
    }

    fn thumb(halfwords: &[u16], expected: &str) -> ArmInstruction {
        one(ArmMode::Thumb, &thumb_bytes(halfwords), expected)
    }

    fn sensitive(kind: ArmSensitiveKind) -> ArmPoiKind {
        ArmPoiKind::sensitive(kind)
    }

    fn assert_arm(cases: &[(u32, &str)], kind: ArmPoiKind) {
        for &(word, expected) in cases {
            let instruction = arm(word, expected);
            assert_eq!(
                instruction.kind, kind,
                "{} ({word:#010x})",
                instruction.text
            );
            assert!(!instruction.conditional, "{}", instruction.text);
        }
    }

    fn assert_thumb(cases: &[(&[u16], &str)], kind: ArmPoiKind) {
        for &(halfwords, expected) in cases {
            let instruction = thumb(halfwords, expected);
            assert_eq!(
                instruction.kind, kind,
                "{} ({halfwords:04x?})",
                instruction.text
            );
            assert!(!instruction.conditional, "{}", instruction.text);
        }
    }

    /// `guests/arm/pl0-cases.txt`: what instructions do at PL0 on a Linux
    /// host (the probe checks that column on an emulated Cortex-A15),
    /// beside the classifier's class.
    #[test]
    fn pl0_cases_match_the_classifier() {
        let cases = include_str!("../../../guests/arm/pl0-cases.txt");
        let mut checked = 0;
        for line in cases.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [state, encoding, planner, host, ..] = fields[..] else {
                panic!("short line: {line}");
            };
            let word = u32::from_str_radix(encoding, 16).expect(line);
            let [first, second] =
                [word >> 16, word & 0xffff].map(|half| u16::try_from(half).expect("16 bits"));
            let (mode, bytes) = match (state, encoding.len()) {
                ("arm", 8) => (ArmMode::Arm, arm_bytes(&[word])),
                ("thumb", 8) => (ArmMode::Thumb, thumb_bytes(&[first, second])),
                ("thumb", 4) => (ArmMode::Thumb, thumb_bytes(&[second])),
                _ => panic!("bad state or encoding: {line}"),
            };
            let instruction = classifier()
                .classify_run(mode, AT, &bytes, 1)
                .pop()
                .expect(line);
            assert_eq!(instruction.len as usize, bytes.len(), "{line}");
            let class = match instruction.kind {
                ArmPoiKind::Sensitive {
                    delivery: ArmDelivery::Traps,
                    ..
                } => "traps",
                ArmPoiKind::Sensitive {
                    delivery: ArmDelivery::Silent,
                    ..
                } => "silent",
                ArmPoiKind::Plain => "plain",
                other => panic!("{line}: {other:?}"),
            };
            assert_eq!(class, planner, "{line}: {}", instruction.text);
            assert!(!instruction.conditional, "{line}");
            // What the planner lets run unobserved because it traps must
            // trap on the host.
            assert!(
                planner != "traps" || matches!(host, "sigill" | "sigtrap"),
                "{line}"
            );
            assert!(matches!(host, "sigill" | "sigtrap" | "runs"), "{line}");
            checked += 1;
        }
        assert!(checked >= 40, "{checked} cases");
    }

    #[test]
    fn deliveries_follow_the_table() {
        use ArmSensitiveKind as S;
        for kind in ArmSensitiveKind::ALL {
            let expected = match kind {
                S::SystemRegister
                | S::CacheTlbMaintenance
                | S::FpSystemRegister
                | S::OtherCoprocessor
                | S::SecureMonitorCall
                | S::HypervisorCall
                | S::Breakpoint
                | S::Undefined => ArmDelivery::Traps,
                S::SupervisorCall => ArmDelivery::HostSyscall,
                _ => ArmDelivery::Silent,
            };
            assert_eq!(kind.delivery(), expected, "{}", kind.name());
        }
        let mut names: Vec<_> = ArmSensitiveKind::ALL.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ArmSensitiveKind::ALL.len());
    }

    #[test]
    fn arm_cp15_system_registers_trap() {
        assert_arm(
            &[
                (0xee11_0f10, "mrc"),  // mrc p15, 0, r0, c1, c0, 0 (SCTLR)
                (0xee01_0f10, "mcr"),  // mcr p15, 0, r0, c1, c0, 0
                (0xee03_0f10, "mcr"),  // mcr p15, 0, r0, c3, c0, 0 (DACR)
                (0xee02_0f10, "mcr"),  // mcr p15, 0, r0, c2, c0, 0 (TTBR0)
                (0xee1d_0f90, "mrc"),  // mrc p15, 0, r0, c13, c0, 4 (TPIDRPRW)
                (0xee0d_0f70, "mcr"),  // mcr p15, 0, r0, c13, c0, 3 (TPIDRURO write)
                (0xee07_0f14, "mcr"),  // mcr p15, 0, r0, c7, c4, 0 (PAR)
                (0xec41_0f02, "mcrr"), // mcrr p15, 0, r0, r1, c2 (TTBR0, 64-bit)
                (0xec51_0f02, "mrrc"), // mrrc p15, 0, r0, r1, c2
            ],
            sensitive(ArmSensitiveKind::SystemRegister),
        );
        assert_arm(
            &[
                (0xee08_0f17, "mcr"), // mcr p15, 0, r0, c8, c7, 0 (TLBIALL)
                (0xee08_0f37, "mcr"), // mcr p15, 0, r0, c8, c7, 1 (TLBIMVA)
                (0xee07_0f3e, "mcr"), // mcr p15, 0, r0, c7, c14, 1 (DCCIMVAC)
                (0xee07_0f15, "mcr"), // mcr p15, 0, r0, c7, c5, 0 (ICIALLU)
            ],
            sensitive(ArmSensitiveKind::CacheTlbMaintenance),
        );
    }

    #[test]
    fn arm_cp15_user_accessible_registers_are_silent() {
        assert_arm(
            &[
                (0xee1d_0f70, "mrc"), // mrc p15, 0, r0, c13, c0, 3 (TPIDRURO)
                (0xee1d_0f50, "mrc"), // mrc p15, 0, r0, c13, c0, 2 (TPIDRURW)
                (0xee0d_0f50, "mcr"), // mcr p15, 0, r0, c13, c0, 2
            ],
            sensitive(ArmSensitiveKind::ThreadIdRegister),
        );
        assert_arm(
            &[(0xee19_0f1d, "mrc")], // mrc p15, 0, r0, c9, c13, 0 (PMCCNTR)
            sensitive(ArmSensitiveKind::PerfMonitor),
        );
        assert_arm(
            &[
                (0xee1e_0f10, "mrc"),  // mrc p15, 0, r0, c14, c0, 0 (CNTFRQ)
                (0xec51_0f1e, "mrrc"), // mrrc p15, 1, r0, r1, c14 (CNTVCT)
            ],
            sensitive(ArmSensitiveKind::GenericTimer),
        );
        assert_arm(
            &[
                (0xee10_0e11, "mrc"), // mrc p14, 0, r0, c0, c1, 0 (DBGDSCRint)
                (0xee00_0e15, "mcr"), // mcr p14, 0, r0, c0, c5, 0 (DBGDTRTXint)
            ],
            sensitive(ArmSensitiveKind::DebugCoprocessor),
        );
        // The CP15 barrier operations are PL0-accessible and identical.
        assert_arm(
            &[
                (0xee07_0fba, "mcr"), // mcr p15, 0, r0, c7, c10, 5 (CP15DMB)
                (0xee07_0f9a, "mcr"), // mcr p15, 0, r0, c7, c10, 4 (CP15DSB)
                (0xee07_0f95, "mcr"), // mcr p15, 0, r0, c7, c5, 4 (CP15ISB)
            ],
            ArmPoiKind::Plain,
        );
    }

    #[test]
    fn arm_status_register_access() {
        assert_arm(
            &[
                (0xe10f_0000, "mrs"), // mrs r0, cpsr
                (0xe14f_0000, "mrs"), // mrs r0, spsr
            ],
            sensitive(ArmSensitiveKind::StatusRead),
        );
        assert_arm(
            &[
                (0xe121_f000, "msr"), // msr cpsr_c, r0
                (0xe129_f000, "msr"), // msr cpsr_fc, r0
                (0xe122_f000, "msr"), // msr cpsr_x, r0
                (0xe16f_f000, "msr"), // msr spsr_fsxc, r0
                (0xe321_f0d3, "msr"), // msr cpsr_c, #0xd3
                (0xe361_f01f, "msr"), // msr spsr_c, #0x1f
            ],
            sensitive(ArmSensitiveKind::StatusWrite),
        );
        assert_arm(
            &[
                (0xe128_f000, "msr"), // msr cpsr_f, r0 (apsr_nzcvq)
                (0xe124_f000, "msr"), // msr cpsr_s, r0 (apsr_g)
                (0xe328_f20f, "msr"), // msr cpsr_f, #0xf0000000
            ],
            sensitive(ArmSensitiveKind::ApsrWrite),
        );
        assert_arm(
            &[
                (0xf10c_0080, "cpsid"), // cpsid i
                (0xf108_0080, "cpsie"), // cpsie i
                (0xf102_0013, "cps"),   // cps #0x13
            ],
            sensitive(ArmSensitiveKind::ChangeProcessorState),
        );
    }

    #[test]
    fn arm_vfp_system_registers() {
        assert_arm(
            &[
                (0xeef8_0a10, "vmrs"), // vmrs r0, fpexc
                (0xeee8_0a10, "vmsr"), // vmsr fpexc, r0
                (0xeef0_0a10, "vmrs"), // vmrs r0, fpsid
                (0xeef7_0a10, "vmrs"), // vmrs r0, mvfr0
            ],
            sensitive(ArmSensitiveKind::FpSystemRegister),
        );
        assert_arm(
            &[
                (0xeef1_0a10, "vmrs"), // vmrs r0, fpscr
                (0xeee1_0a10, "vmsr"), // vmsr fpscr, r0
                (0xeef1_fa10, "vmrs"), // vmrs APSR_nzcv, fpscr
            ],
            ArmPoiKind::Plain,
        );
    }

    #[test]
    fn arm_exception_state_instructions() {
        assert_arm(
            &[(0xf96d_0513, "srsdb")], // srsdb sp!, #0x13
            sensitive(ArmSensitiveKind::SaveReturnState),
        );
        assert_arm(
            &[(0xf8bd_0a00, "rfeia")], // rfeia sp!
            sensitive(ArmSensitiveKind::ReturnFromException),
        );
        assert_arm(
            &[
                (0xe8d0_0006, "ldm"), // ldm r0, {r1, r2}^
                (0xe8c0_0006, "stm"), // stm r0, {r1, r2}^
                (0xe8c0_8006, "stm"), // stm r0, {r1, r2, pc}^ (a store: user bank)
            ],
            sensitive(ArmSensitiveKind::UserRegisters),
        );
        assert_arm(
            &[
                (0xe8fd_800f, "ldm"),  // ldm sp!, {r0-r3, pc}^
                (0xe25e_f004, "subs"), // subs pc, lr, #4
                (0xe1b0_f00e, "movs"), // movs pc, lr
                (0xe29e_f000, "adds"), // adds pc, lr, #0
                (0xe160_006e, "eret"), // eret
            ],
            sensitive(ArmSensitiveKind::ExceptionReturn),
        );
    }

    #[test]
    fn arm_waits_calls_and_undefined() {
        assert_arm(
            &[(0xe320_f003, "wfi")],
            sensitive(ArmSensitiveKind::WaitForInterrupt),
        );
        assert_arm(
            &[(0xe320_f002, "wfe")],
            sensitive(ArmSensitiveKind::WaitForEvent),
        );
        assert_arm(
            &[(0xe320_f004, "sev")],
            sensitive(ArmSensitiveKind::SendEvent),
        );
        let svc = arm(0xef00_0000, "svc"); // svc #0
        assert_eq!(
            svc.kind,
            ArmPoiKind::Sensitive {
                kind: ArmSensitiveKind::SupervisorCall,
                delivery: ArmDelivery::HostSyscall
            }
        );
        assert_arm(
            &[(0xe160_0070, "smc")], // smc #0
            sensitive(ArmSensitiveKind::SecureMonitorCall),
        );
        assert_arm(
            &[(0xe140_0070, "hvc")], // hvc #0
            sensitive(ArmSensitiveKind::HypervisorCall),
        );
        assert_arm(
            &[(0xe120_0070, "bkpt")], // bkpt #0
            sensitive(ArmSensitiveKind::Breakpoint),
        );
        assert_arm(
            &[
                (0xe7f0_00f0, "udf"), // udf #0
                (0xe7f0_01f2, "udf"), // udf #18 (Linux's BUG())
            ],
            sensitive(ArmSensitiveKind::Undefined),
        );
        // Hints with nothing to virtualize.
        assert_arm(
            &[(0xe320_f001, "yield"), (0xe320_f000, "nop")],
            ArmPoiKind::Plain,
        );
    }

    #[test]
    fn arm_unprivileged_loads_and_stores() {
        assert_arm(
            &[
                (0xe4b1_0004, "ldrt"),   // ldrt r0, [r1], #4
                (0xe4a1_0004, "strt"),   // strt r0, [r1], #4
                (0xe4f1_0001, "ldrbt"),  // ldrbt r0, [r1], #1
                (0xe4e1_0001, "strbt"),  // strbt r0, [r1], #1
                (0xe0f1_00b2, "ldrht"),  // ldrht r0, [r1], #2
                (0xe0e1_00b2, "strht"),  // strht r0, [r1], #2
                (0xe0f1_00d1, "ldrsbt"), // ldrsbt r0, [r1], #1
                (0xe0f1_00f2, "ldrsht"), // ldrsht r0, [r1], #2
            ],
            sensitive(ArmSensitiveKind::UnprivilegedAccess),
        );
    }

    #[test]
    fn arm_other_coprocessors_trap() {
        assert_arm(
            &[
                (0xfe01_0f10, "mcr2"), // mcr2 p15, 0, r0, c1, c0, 0
                (0xee00_0710, "mcr"),  // mcr p7, 0, r0, c0, c0, 0
            ],
            sensitive(ArmSensitiveKind::OtherCoprocessor),
        );
    }

    #[test]
    fn arm_pointer_branches() {
        use ArmPointerKind as P;
        let cases: &[(u32, &str, P)] = &[
            (0xe12f_ff1e, "bx", P::Return),              // bx lr
            (0xe12f_ff10, "bx", P::BranchExchange),      // bx r0
            (0xe12f_ff33, "blx", P::BranchLinkExchange), // blx r3
            (0xe590_f000, "ldr", P::LoadPc),             // ldr pc, [r0]
            (0xe79f_f100, "ldr", P::LoadPc),             // ldr pc, [pc, r0, lsl #2]
            (0xe49d_f004, "pop", P::LoadPc),             // pop {pc} (ldr pc, [sp], #4)
            (0xe8bd_8010, "pop", P::LoadMultiplePc),     // pop {r4, pc}
            (0xe890_8006, "ldm", P::LoadMultiplePc),     // ldm r0, {r1, r2, pc}
            (0xe91b_a800, "ldmdb", P::LoadMultiplePc),   // ldmdb r11, {r11, sp, pc}
            (0xe1a0_f000, "mov", P::DataProcessingPc),   // mov pc, r0
            (0xe1a0_f00e, "mov", P::DataProcessingPc),   // mov pc, lr
            (0xe08f_f000, "add", P::DataProcessingPc),   // add pc, pc, r0
            (0xe08f_f100, "add", P::DataProcessingPc),   // add pc, pc, r0, lsl #2
        ];
        for &(word, expected, kind) in cases {
            let instruction = arm(word, expected);
            assert_eq!(
                instruction.kind,
                ArmPoiKind::PointerBranch(kind),
                "{} ({word:#010x})",
                instruction.text
            );
            assert!(!instruction.conditional);
        }
    }

    #[test]
    fn arm_direct_branches_carry_targets() {
        let b = arm(0xeaff_fffe, "b"); // b . (at 0x1000)
        assert_eq!(
            b.kind,
            ArmPoiKind::DirectBranch {
                target: GuestVirt(0x1000),
                link: false,
                target_mode: ArmMode::Arm
            }
        );
        let bl = arm(0xeb00_003e, "bl"); // bl 0x1100
        assert_eq!(
            bl.kind,
            ArmPoiKind::DirectBranch {
                target: GuestVirt(0x1100),
                link: true,
                target_mode: ArmMode::Arm
            }
        );
        let blx = arm(0xfb00_003e, "blx"); // blx 0x1102 (to Thumb, H = 1)
        assert_eq!(
            blx.kind,
            ArmPoiKind::DirectBranch {
                target: GuestVirt(0x1102),
                link: true,
                target_mode: ArmMode::Thumb
            }
        );
        assert!(!blx.conditional, "cond 1111 is not a condition");
        let back = arm(0xeaff_fbfe, "b"); // b 0x0000 (at 0x1000: -0x1000)
        assert_eq!(
            back.kind,
            ArmPoiKind::DirectBranch {
                target: GuestVirt(0),
                link: false,
                target_mode: ArmMode::Arm
            }
        );
    }

    #[test]
    fn arm_conditional_forms() {
        let beq = arm(0x0a00_0002, "beq"); // beq 0x1010
        assert_eq!(
            beq.kind,
            ArmPoiKind::CondBranch {
                taken: GuestVirt(0x1010),
                link: false,
                target_mode: ArmMode::Arm
            }
        );
        assert!(beq.conditional);
        assert_eq!(beq.fall_through(), GuestVirt(0x1004));
        let bleq = arm(0x0b00_003e, "bleq"); // bleq 0x1100
        assert_eq!(
            bleq.kind,
            ArmPoiKind::CondBranch {
                taken: GuestVirt(0x1100),
                link: true,
                target_mode: ArmMode::Arm
            }
        );
        let mcrne = arm(0x1e08_0f17, "mcrne"); // mcrne p15, 0, r0, c8, c7, 0
        assert_eq!(mcrne.kind, sensitive(ArmSensitiveKind::CacheTlbMaintenance));
        assert!(mcrne.conditional);
        let bxne = arm(0x112f_ff1e, "bxne"); // bxne lr
        assert_eq!(bxne.kind, ArmPoiKind::PointerBranch(ArmPointerKind::Return));
        assert!(bxne.conditional);
        let svcne = arm(0x1f00_0000, "svcne"); // svcne #0
        assert!(svcne.conditional);
        let ldmeq = arm(0x08bd_8010, "popeq"); // popeq {r4, pc}
        assert_eq!(
            ldmeq.kind,
            ArmPoiKind::PointerBranch(ArmPointerKind::LoadMultiplePc)
        );
        assert!(ldmeq.conditional);
        let addne = arm(0x1081_0002, "addne"); // addne r0, r1, r2
        assert_eq!(addne.kind, ArmPoiKind::Plain);
        assert!(addne.conditional);
    }

    #[test]
    fn arm_plain_instructions() {
        assert_arm(
            &[
                (0xe081_0002, "add"),      // add r0, r1, r2
                (0xe591_0004, "ldr"),      // ldr r0, [r1, #4]
                (0xe581_0000, "str"),      // str r0, [r1]
                (0xe1a0_0001, "mov"),      // mov r0, r1
                (0xe1a0_000f, "mov"),      // mov r0, pc
                (0xe59f_0004, "ldr"),      // ldr r0, [pc, #4]
                (0xe92d_4010, "push"),     // push {r4, lr}
                (0xe92d_8010, "push"),     // push {r4, pc} (stores PC)
                (0xe35f_0000, "cmp"),      // cmp pc, #0
                (0xe191_0f9f, "ldrex"),    // ldrex r0, [r1]
                (0xf57f_f05b, "dmb"),      // dmb ish
                (0xf101_0200, "setend"),   // setend be
                (0xee30_0a81, "vadd.f32"), // vadd.f32 s0, s1, s2
            ],
            ArmPoiKind::Plain,
        );
    }

    #[test]
    fn undecodable_words_are_unrecognized() {
        let c = classifier();
        for word in [0xffff_ffffu32, 0xf7f0_00f0] {
            let run = c.classify_run(ArmMode::Arm, AT, &arm_bytes(&[word, 0xe1a0_0001]), 8);
            assert_eq!(run.len(), 1, "{word:#010x}: {run:#?}");
            assert_eq!(run[0].kind, ArmPoiKind::Unrecognized, "{word:#010x}");
            assert_eq!(run[0].len, 4);
            assert_eq!(run[0].encoding, word);
            assert_eq!(c.summary_key(&run[0]), "(undecodable)");
        }
        // A 32-bit Thumb prefix with nothing after it: not decoded at all.
        let run = c.classify_run(ArmMode::Thumb, AT, &thumb_bytes(&[0xf000]), 8);
        assert!(run.is_empty(), "{run:#?}");
        // BXJ depends on the host's Jazelle setup.
        assert_eq!(arm(0xe12f_ff20, "bxj").kind, ArmPoiKind::Unrecognized); // bxj r0
    }

    #[test]
    fn thumb_sensitive_instructions() {
        use ArmSensitiveKind as S;
        let cases: &[(&[u16], &str, ArmSensitiveKind)] = &[
            (&[0xb672], "cpsid", S::ChangeProcessorState), // cpsid i
            (&[0xb662], "cpsie", S::ChangeProcessorState), // cpsie i
            (&[0xf3af, 0x8753], "cpsid", S::ChangeProcessorState), // cpsid i, #0x13 (T2)
            (&[0xf3ef, 0x8000], "mrs", S::StatusRead),     // mrs r0, apsr
            (&[0xf3ff, 0x8000], "mrs", S::StatusRead),     // mrs r0, spsr
            (&[0xf380, 0x8100], "msr", S::StatusWrite),    // msr cpsr_c, r0
            (&[0xf390, 0x8f00], "msr", S::StatusWrite),    // msr spsr_fsxc, r0
            (&[0xf380, 0x8800], "msr", S::ApsrWrite),      // msr apsr_nzcvq, r0
            (&[0xee08, 0x0f17], "mcr", S::CacheTlbMaintenance), // mcr p15, 0, r0, c8, c7, 0
            (&[0xee11, 0x0f10], "mrc", S::SystemRegister), // mrc p15, 0, r0, c1, c0, 0
            (&[0xee1d, 0x0f70], "mrc", S::ThreadIdRegister), // mrc p15, 0, r0, c13, c0, 3
            (&[0xeef8, 0x0a10], "vmrs", S::FpSystemRegister), // vmrs r0, fpexc
            (&[0xdf00], "svc", S::SupervisorCall),         // svc #0
            (&[0xbf30], "wfi", S::WaitForInterrupt),       // wfi
            (&[0xf3af, 0x8003], "wfi.w", S::WaitForInterrupt), // wfi.w
            (&[0xbf20], "wfe", S::WaitForEvent),           // wfe
            (&[0xbf40], "sev", S::SendEvent),              // sev
            (&[0xf851, 0x0e04], "ldrt", S::UnprivilegedAccess), // ldrt r0, [r1, #4]
            (&[0xf801, 0x0e00], "strbt", S::UnprivilegedAccess), // strbt r0, [r1]
            (&[0xf3de, 0x8f04], "subs", S::ExceptionReturn), // subs pc, lr, #4
            (&[0xf3de, 0x8f00], "eret", S::ExceptionReturn), // eret (subs pc, lr, #0)
            (&[0xe81d, 0xc000], "rfedb", S::ReturnFromException), // rfedb sp
            (&[0xe80d, 0xc013], "srsdb", S::SaveReturnState), // srsdb sp, #0x13
            (&[0xbe00], "bkpt", S::Breakpoint),            // bkpt #0
            (&[0xde00], "udf", S::Undefined),              // udf #0
            (&[0xf7f0, 0xa000], "udf.w", S::Undefined),    // udf.w #0
            (&[0xf7f0, 0x8000], "smc", S::SecureMonitorCall), // smc #0
        ];
        for &(halfwords, expected, kind) in cases {
            let instruction = thumb(halfwords, expected);
            assert_eq!(
                instruction.kind,
                sensitive(kind),
                "{} ({halfwords:04x?})",
                instruction.text
            );
            assert!(!instruction.conditional, "{}", instruction.text);
        }
    }

    #[test]
    fn thumb_pointer_branches() {
        use ArmPointerKind as P;
        let cases: &[(&[u16], &str, P)] = &[
            (&[0x4770], "bx", P::Return),                    // bx lr
            (&[0x4700], "bx", P::BranchExchange),            // bx r0
            (&[0x4798], "blx", P::BranchLinkExchange),       // blx r3
            (&[0xf8d0, 0xf000], "ldr.w", P::LoadPc),         // ldr.w pc, [r0]
            (&[0xf85d, 0xfb04], "ldr", P::LoadPc),           // ldr.w pc, [sp], #4 (pop.w {pc})
            (&[0xbd10], "pop", P::LoadMultiplePc),           // pop {r4, pc}
            (&[0xe8bd, 0x8ff0], "pop.w", P::LoadMultiplePc), // pop.w {r4-r11, pc}
            (&[0xe890, 0x8002], "ldm.w", P::LoadMultiplePc), // ldm.w r0, {r1, pc}
            (&[0x4687], "mov", P::DataProcessingPc),         // mov pc, r0
            (&[0x4487], "add", P::DataProcessingPc),         // add pc, r0
            (&[0xe8d0, 0xf001], "tbb", P::TableBranch),      // tbb [r0, r1]
            (&[0xe8d0, 0xf011], "tbh", P::TableBranch),      // tbh [r0, r1, lsl #1]
        ];
        for &(halfwords, expected, kind) in cases {
            let instruction = thumb(halfwords, expected);
            assert_eq!(
                instruction.kind,
                ArmPoiKind::PointerBranch(kind),
                "{} ({halfwords:04x?})",
                instruction.text
            );
        }
    }

    #[test]
    fn thumb_direct_and_conditional_branches() {
        let c = classifier();
        let at = GuestVirt(0x2000);
        let decode = |halfwords: &[u16], expected: &str| {
            let code = thumb_bytes(halfwords);
            let run = c.classify_run(ArmMode::Thumb, at, &code, 8);
            let last = run.last().expect("decoded").clone();
            assert_eq!(mnemonic(&last), expected, "{run:#?}");
            last
        };
        let bw = decode(&[0xf000, 0xb87e], "b.w"); // b.w 0x2100
        assert_eq!(
            bw.kind,
            ArmPoiKind::DirectBranch {
                target: GuestVirt(0x2100),
                link: false,
                target_mode: ArmMode::Thumb
            }
        );
        let bl = decode(&[0xf000, 0xf87e], "bl"); // bl 0x2100
        assert_eq!(
            bl.kind,
            ArmPoiKind::DirectBranch {
                target: GuestVirt(0x2100),
                link: true,
                target_mode: ArmMode::Thumb
            }
        );
        let back = decode(&[0xf7ff, 0xbffe], "b.w"); // b.w . (0x2000)
        assert_eq!(
            back.kind,
            ArmPoiKind::DirectBranch {
                target: GuestVirt(0x2000),
                link: false,
                target_mode: ArmMode::Thumb
            }
        );
        // nop; blx 0x2104 (at 0x2002: from Align(PC, 4) = 0x2004, to ARM).
        let blx = decode(&[0xbf00, 0xf000, 0xe880], "blx");
        assert_eq!(blx.guest_virt, GuestVirt(0x2002));
        assert_eq!(
            blx.kind,
            ArmPoiKind::DirectBranch {
                target: GuestVirt(0x2104),
                link: true,
                target_mode: ArmMode::Arm
            }
        );
        let b16 = decode(&[0xe7fe], "b"); // b . (16-bit)
        assert_eq!(
            b16.kind,
            ArmPoiKind::DirectBranch {
                target: at,
                link: false,
                target_mode: ArmMode::Thumb
            }
        );
        let beq = decode(&[0xd006], "beq"); // beq 0x2010
        assert_eq!(
            beq.kind,
            ArmPoiKind::CondBranch {
                taken: GuestVirt(0x2010),
                link: false,
                target_mode: ArmMode::Thumb
            }
        );
        assert!(beq.conditional);
        assert_eq!(beq.fall_through(), GuestVirt(0x2002));
        let bnew = decode(&[0xf040, 0x8080], "bne.w"); // bne.w 0x2104
        assert_eq!(
            bnew.kind,
            ArmPoiKind::CondBranch {
                taken: GuestVirt(0x2104),
                link: false,
                target_mode: ArmMode::Thumb
            }
        );
        let cbz = decode(&[0xb130], "cbz"); // cbz r0, 0x2010
        assert_eq!(
            cbz.kind,
            ArmPoiKind::CondBranch {
                taken: GuestVirt(0x2010),
                link: false,
                target_mode: ArmMode::Thumb
            }
        );
        assert!(cbz.conditional);
        let cbnz = decode(&[0xb930], "cbnz"); // cbnz r0, 0x2010
        assert_eq!(
            cbnz.kind,
            ArmPoiKind::CondBranch {
                taken: GuestVirt(0x2010),
                link: false,
                target_mode: ArmMode::Thumb
            }
        );
    }

    #[test]
    fn thumb_plain_instructions() {
        assert_thumb(
            &[
                (&[0x1888], "adds"),          // adds r0, r1, r2
                (&[0x6848], "ldr"),           // ldr r0, [r1, #4]
                (&[0xb510], "push"),          // push {r4, lr}
                (&[0xf04f, 0x0001], "mov.w"), // mov.w r0, #1
                (&[0xbf10], "yield"),         // yield
                (&[0xbf00], "nop"),           // nop
                (&[0xf3bf, 0x8f5b], "dmb"),   // dmb ish
                (&[0x4478], "add"),           // add r0, pc
            ],
            ArmPoiKind::Plain,
        );
    }

    #[test]
    fn it_blocks_make_instructions_conditional() {
        let c = classifier();
        // ite eq; moveq r0, #1; movne r0, #0; mov r1, r2
        let code = thumb_bytes(&[0xbf0c, 0x2001, 0x2000, 0x4611]);
        let run = c.classify_run(ArmMode::Thumb, AT, &code, 8);
        let names: Vec<_> = run.iter().map(mnemonic).collect();
        assert_eq!(names, ["ite", "moveq", "movne", "mov"], "{run:#?}");
        assert!(run.iter().all(|i| i.kind == ArmPoiKind::Plain));
        let conditional: Vec<_> = run.iter().map(|i| i.conditional).collect();
        assert_eq!(conditional, [false, true, true, false]);
        assert_eq!(run[1].it_before.condition(), Some(0b0000)); // eq
        assert_eq!(run[2].it_before.condition(), Some(0b0001)); // ne
        assert_eq!(run[3].it_before, ItState::NONE);

        // it ne; bxne lr
        let code = thumb_bytes(&[0xbf18, 0x4770]);
        let run = c.classify_run(ArmMode::Thumb, AT, &code, 8);
        assert_eq!(mnemonic(&run[1]), "bxne");
        assert_eq!(
            run[1].kind,
            ArmPoiKind::PointerBranch(ArmPointerKind::Return)
        );
        assert!(run[1].conditional);

        // itt eq; mrseq r0, apsr; msreq cpsr_c, r0; mrs r1, apsr
        let code = thumb_bytes(&[0xbf04, 0xf3ef, 0x8000, 0xf380, 0x8100, 0xf3ef, 0x8100]);
        let run = c.classify_run(ArmMode::Thumb, AT, &code, 8);
        let names: Vec<_> = run.iter().map(mnemonic).collect();
        assert_eq!(names, ["itt", "mrseq", "msreq", "mrs"], "{run:#?}");
        assert_eq!(run[1].kind, sensitive(ArmSensitiveKind::StatusRead));
        assert_eq!(run[2].kind, sensitive(ArmSensitiveKind::StatusWrite));
        let conditional: Vec<_> = run.iter().map(|i| i.conditional).collect();
        assert_eq!(conditional, [false, true, true, false]);

        // it eq; bleq 0x2104 (a conditional call; at 0x2002)
        let code = thumb_bytes(&[0xbf08, 0xf000, 0xf87e]);
        let run = c.classify_run(ArmMode::Thumb, GuestVirt(0x2000), &code, 8);
        assert_eq!(mnemonic(&run[1]), "bleq");
        assert_eq!(
            run[1].kind,
            ArmPoiKind::CondBranch {
                taken: GuestVirt(0x2102),
                link: true,
                target_mode: ArmMode::Thumb
            }
        );

        // it al; mov r0, r1: an IT block with condition AL is unconditional.
        let code = thumb_bytes(&[0xbfe8, 0x4608]);
        let run = c.classify_run(ArmMode::Thumb, AT, &code, 8);
        assert!(!run[1].conditional, "{run:#?}");
    }

    #[test]
    fn decoding_can_start_inside_an_it_block() {
        let c = classifier();
        // ittt ne; movne r0, #1; mcrne p15, 0, r0, c8, c7, 0; movne r1, #0; mov r2, r3
        let code = thumb_bytes(&[0xbf1e, 0x2001, 0xee08, 0x0f17, 0x2100, 0x461a]);
        let whole = c.classify_run(ArmMode::Thumb, AT, &code, 8);
        let names: Vec<_> = whole.iter().map(mnemonic).collect();
        assert_eq!(
            names,
            ["ittt", "movne", "mcrne", "movne", "mov"],
            "{whole:#?}"
        );
        let conditional: Vec<_> = whole.iter().map(|i| i.conditional).collect();
        assert_eq!(conditional, [false, true, true, true, false]);

        // Resume after the MCR (a breakpoint or trap there), with the IT
        // state the CPSR would hold then.
        let resume = whole[2].it_after;
        let cpsr = (u32::from(resume.bits() & 0x3) << 25) | (u32::from(resume.bits() >> 2) << 10);
        assert_eq!(ItState::from_cpsr(cpsr), resume);
        let tail = c.classify_run_in(
            ArmMode::Thumb,
            ItState::from_cpsr(cpsr),
            whole[3].guest_virt,
            &code[8..],
            8,
        );
        assert_eq!(tail.len(), 2, "{tail:#?}");
        assert!(tail[0].conditional, "{tail:#?}");
        assert!(!tail[1].conditional, "{tail:#?}");

        // Resume at the MCR itself: still conditional, still a POI.
        let block = c.scan_block_in(
            ArmMode::Thumb,
            whole[1].it_after,
            whole[2].guest_virt,
            &code[4..],
        );
        assert_eq!(block.len(), 1);
        assert!(block[0].conditional);
        assert_eq!(
            block[0].kind,
            sensitive(ArmSensitiveKind::CacheTlbMaintenance)
        );
    }

    #[test]
    fn it_state_advances_like_the_architecture() {
        // ITTE EQ: firstcond 0000, mask 0110 -> eq, eq, ne.
        let mut it = ItState::from_bits(0x06);
        let mut conditions = Vec::new();
        while let Some(cond) = it.condition() {
            conditions.push(cond);
            it = it.advance();
        }
        assert_eq!(conditions, [0b0000, 0b0000, 0b0001]);
        assert_eq!(ItState::from_cpsr(0), ItState::NONE);
    }

    #[test]
    fn scan_block_stops_at_the_first_poi() {
        let c = classifier();
        // mov r0, r1; add r0, r1, r2; mcr p15, 0, r0, c8, c7, 0; mov r0, r1
        let code = arm_bytes(&[0xe1a0_0001, 0xe081_0002, 0xee08_0f17, 0xe1a0_0001]);
        let block = c.scan_block(ArmMode::Arm, AT, &code);
        assert_eq!(block.len(), 3);
        assert_eq!(block[2].guest_virt, GuestVirt(0x1008));
        assert_eq!(
            block[2].kind,
            sensitive(ArmSensitiveKind::CacheTlbMaintenance)
        );
        // A run does not stop at POIs, only at max or undecodable bytes.
        assert_eq!(c.classify_run(ArmMode::Arm, AT, &code, 8).len(), 4);
        assert_eq!(c.classify_run(ArmMode::Arm, AT, &code, 2).len(), 2);
        assert!(c.classify_run(ArmMode::Arm, AT, &code, 0).is_empty());

        // Longer than one decode chunk: 40 plain instructions, then bx lr.
        let mut words = vec![0xe1a0_0001; 40];
        words.push(0xe12f_ff1e);
        let block = c.scan_block(ArmMode::Arm, AT, &arm_bytes(&words));
        assert_eq!(block.len(), 41);
        assert_eq!(
            block[40].kind,
            ArmPoiKind::PointerBranch(ArmPointerKind::Return)
        );
        // Code that runs out first: the block has no POI.
        let block = c.scan_block(ArmMode::Arm, AT, &arm_bytes(&words[..20]));
        assert_eq!(block.len(), 20);
        assert!(block.iter().all(|i| !i.kind.is_poi()));

        // Thumb, with an IT block before the POI: itt eq; moveq; moveq; pop {r4, pc}
        let code = thumb_bytes(&[0xbf04, 0x2001, 0x2100, 0xbd10, 0x4770]);
        let block = c.scan_block(ArmMode::Thumb, AT, &code);
        assert_eq!(block.len(), 4);
        assert_eq!(
            block[3].kind,
            ArmPoiKind::PointerBranch(ArmPointerKind::LoadMultiplePc)
        );
        assert!(!block[3].conditional);
    }

    #[test]
    fn summary_keys_normalize_forms() {
        let c = classifier();
        let key = |mode: ArmMode, code: &[u8]| {
            let run = c.classify_run(mode, AT, code, 1);
            c.summary_key(&run[0])
        };
        let arm_key = |word: u32| key(ArmMode::Arm, &arm_bytes(&[word]));
        assert_eq!(arm_key(0xee07_0fba), "mcr p15, 0, c7, c10, 5");
        assert_eq!(arm_key(0x1e08_0f17), "mcr p15, 0, c8, c7, 0"); // mcrne
        assert_eq!(arm_key(0xee1d_0f90), "mrc p15, 0, c13, c0, 4");
        assert_eq!(arm_key(0xec51_0f1e), "mrrc p15, 1, c14");
        assert_eq!(arm_key(0xe10f_0000), "mrs cpsr");
        assert_eq!(arm_key(0xe14f_0000), "mrs spsr");
        assert_eq!(arm_key(0xe121_f000), "msr cpsr_c");
        assert_eq!(arm_key(0xe16f_f000), "msr spsr_fsxc");
        assert_eq!(arm_key(0xeef8_0a10), "vmrs fpexc");
        assert_eq!(arm_key(0xe8fd_800f), "ldm ^ pc");
        assert_eq!(arm_key(0xe8d0_0006), "ldm ^");
        assert_eq!(arm_key(0xe25e_f004), "subs pc");
        assert_eq!(arm_key(0x112f_ff1e), "bx"); // bxne lr
        assert_eq!(arm_key(0xf10c_0080), "cps");
        assert_eq!(
            key(ArmMode::Thumb, &thumb_bytes(&[0xee08, 0x0f17])),
            "mcr p15, 0, c8, c7, 0"
        );
        assert_eq!(
            key(ArmMode::Thumb, &thumb_bytes(&[0xf380, 0x8800])),
            "msr cpsr_f"
        );
    }
}
