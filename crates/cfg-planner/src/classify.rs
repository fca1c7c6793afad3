//! Points of interest: what each 32-bit x86 instruction means for a guest
//! kernel that runs natively at host CPL 3.
//!
//! # The sensitive instructions, and why each is where it is
//!
//! An instruction matters to breakpoint tracing when it changes control flow
//! in a way the planner cannot follow statically (pointer branches), or when
//! it reads or writes state that the guest kernel believes is privileged but
//! that the host keeps for itself (sensitive instructions). A sensitive
//! instruction either raises a fault on its own at host CPL 3 (the monitor
//! gets it for free, [`Delivery::Traps`]) or runs without complaint and gives
//! the wrong answer (it needs a planned breakpoint, [`Delivery::Silent`]).
//!
//! Trapping by themselves at CPL 3 on an x86-64 Linux host, with IOPL 0, no
//! I/O bitmap and the guest in compatibility mode:
//!
//! | class | instructions | host event |
//! |---|---|---|
//! | [`SensitiveKind::InterruptFlag`] | CLI, STI | #GP (IOPL 0) |
//! | [`SensitiveKind::Halt`] | HLT | #GP |
//! | [`SensitiveKind::PortIo`] | IN, OUT, INS*, OUTS* (all sizes, REP) | #GP (IOPL 0, no bitmap) |
//! | [`SensitiveKind::ControlRegister`] | MOV to/from CR0-CR8, LMSW, CLTS | #GP |
//! | [`SensitiveKind::DebugRegister`] | MOV to/from DR0-DR7 | #GP |
//! | [`SensitiveKind::DescriptorTableLoad`] | LGDT, LIDT, LLDT, LTR | #GP |
//! | [`SensitiveKind::CacheTlb`] | INVD, WBINVD, WBNOINVD, INVLPG, INVPCID | #GP |
//! | [`SensitiveKind::Msr`] | RDMSR, WRMSR | #GP |
//! | [`SensitiveKind::SoftwareInterrupt`] | INT n, INT3, INT1 (ICEBP); INTO, which traps only with OF set and otherwise falls through ([`Delivery::TrapsOrFallsThrough`]) | #GP for DPL-0 host gates; SIGTRAP for 3, #OF for 4, seccomp for 0x80 |
//! | [`SensitiveKind::SystemReturn`] | SYSEXIT, SYSRET | #GP |
//! | [`SensitiveKind::InvalidOpcode`] | UD0, UD1, UD2 | #UD, which the guest must see as its own |
//! | [`SensitiveKind::Privileged`] | every other CPL-0-only instruction (XSETBV, RSM, VMX/SVM, CLAC/STAC, ...) | #GP or #UD |
//!
//! The last row is not a hand-kept list: iced-x86 marks every instruction
//! that requires CPL 0 ([`iced_x86::OpCodeInfo::is_privileged`],
//! [`iced_x86::OpCodeInfo::must_be_cpl0`]), so new privileged instructions
//! land there without a change here.
//!
//! Silent at CPL 3, so a breakpoint must stop them in guest kernel mode:
//!
//! | class | instructions | what goes wrong natively |
//! |---|---|---|
//! | [`SensitiveKind::FlagsRead`] | PUSHF, PUSHFD (`9c`, `66 9c`) | shows the host's IF=1, IOPL=0 instead of the virtual IF/IOPL |
//! | [`SensitiveKind::FlagsWrite`] | POPF, POPFD (`9d`, `66 9d`) | changes to IF and IOPL are dropped silently |
//! | [`SensitiveKind::DescriptorTableRead`] | SGDT, SIDT, SLDT, STR, SMSW | host values (with UMIP, the host kernel answers SGDT/SIDT/SMSW with dummies) |
//! | [`SensitiveKind::SegmentRead`] | MOV r/m, Sreg; PUSH CS/SS/DS/ES/FS/GS | shows the shadow (LDT, RPL 3) selector, not the guest's |
//! | [`SensitiveKind::SegmentLoad`] | MOV Sreg, r/m; POP DS/ES/SS/FS/GS; LDS, LES, LFS, LGS, LSS | loads against the host GDT/LDT: wrong descriptor or a host selector |
//! | [`SensitiveKind::SegmentCheck`] | LAR, LSL, VERR, VERW | judges the shadow descriptor at CPL 3 |
//! | [`SensitiveKind::SystemCall`] | SYSENTER, SYSCALL | one of them (SYSENTER on Intel hosts, SYSCALL on AMD hosts) enters the host's fast 32-bit system-call path (seccomp SIGSYS), which loses the guest's EIP; the other raises #UD |
//! | [`SensitiveKind::Cpuid`] | CPUID | host CPU instead of the virtual i686 (traps instead when CPUID faulting is on, see [`ClassifyConfig::cpuid_faults`]) |
//! | [`SensitiveKind::Xgetbv`] | XGETBV | host XCR0; the virtual CPU has no XSAVE |
//! | [`SensitiveKind::Timestamp`] | RDTSC, RDTSCP, RDPID | host TSC and TSC_AUX; only sensitive when the TSC is virtualized ([`ClassifyConfig::virtualize_timestamp`]) |
//! | [`SensitiveKind::PerfCounter`] | RDPMC | runs natively if the host sets CR4.PCE for the process |
//! | [`SensitiveKind::Transactional`] | XBEGIN, XABORT, XEND | the virtual CPU has no RTM: the guest must see #UD, a TSX host would run them |
//! | [`SensitiveKind::ShortBranch`] | near JMP/CALL/Jcc/LOOP with a 16-bit operand size | not sensitive, but the target wraps at 64 KiB of CS offsets, which the planner's linear addresses cannot follow: the monitor emulates it |
//! | [`SensitiveKind::StateDependent`] | MONITOR, MWAIT and any other instruction that iced-x86 marks "may require CPL 0" (depends on host CR4 bits or model-specific enables such as ring-3 MWAIT) | unknown: stop it to be safe |
//!
//! Pointer branches ([`PointerKind`]) are RET, RET imm16, indirect JMP and
//! CALL (register or memory, any addressing mode and segment override),
//! IRET, and far JMP/CALL/RET. Far transfers and IRET are also sensitive
//! (they load CS, and IRET changes IF/IOPL and maybe CPL): the monitor
//! emulates them instead of letting them run.
//!
//! | [`SensitiveKind::FpuState`] | x87, MMX, SSE, FXSAVE/FXRSTOR and WAIT, only while the guest's CR0.TS/EM/MP or CR4.OSFXSR make them fault ([`ClassifyConfig::guest_cr0`]) | they run natively under the host's CR0/CR4 and would not raise the #NM/#UD the guest expects |
//!
//! Deliberately **not** sensitive:
//!
//! - ARPL computes on a selector value in a register or memory, nothing more.
//! - Memory operands with segment overrides: shadow segments carry the
//!   guest's base and limit, so the access is the one the guest asked for.
//! - FPU/MMX/SSE instructions while the guest's CR0 and CR4 let them run:
//!   the monitor updates [`ClassifyConfig::guest_cr0`] and
//!   [`ClassifyConfig::guest_cr4`] as the guest changes them (a change
//!   drops every cached plan). In untraced guest user mode they always run
//!   natively.
//! - Instructions from extensions the virtual CPU does not offer (AVX and
//!   later) run natively if the host has them. A guest kernel only uses them
//!   after CPUID says so, which it will not.
//! - PUSHA/POPA, ENTER/LEAVE, BOUND, string instructions without I/O: ordinary
//!   memory and register effects; faults they raise reach the monitor anyway.
//!
//! VMCALL, VMMCALL, VMGEXIT and TDCALL are [`PoiKind::Unrecognized`]: at
//! CPL 3 under an outer hypervisor (KVM on our hosts) VMCALL exits to it
//! and comes back with EAX = -EPERM and the instruction skipped, no fault.
//! So is any instruction with control flow the planner does not model.
//!
//! FNSTENV, FNSAVE and FXSAVE store the x87 code and data selectors; CPUs
//! that deprecate those fields (most current ones) store zeros, where an
//! i686 would store the guest's CS and DS. The planner leaves them plain:
//! no guest we target reads those fields back.
//!
//! Anything iced-x86 cannot decode is [`PoiKind::Unrecognized`]: iced-x86
//! knows every documented encoding, so the real CPU raises #UD on it as well,
//! but the planner never lets it run natively (its length is unknown).

use iced_x86::{Code, FlowControl, Instruction, Mnemonic, OpKind, Register};
use serde::Serialize;

use btvmm_core::GuestVirt;
use btvmm_core::emu::fpu::{fault as fpu_fault, fpu_class};

/// Classes of sensitive instructions. See the module documentation for the
/// members of each class and the reason it is sensitive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[allow(missing_docs)]
pub enum SensitiveKind {
    // Trapping at host CPL 3.
    InterruptFlag,
    Halt,
    PortIo,
    ControlRegister,
    DebugRegister,
    DescriptorTableLoad,
    CacheTlb,
    Msr,
    SoftwareInterrupt,
    SystemCall,
    SystemReturn,
    InvalidOpcode,
    Privileged,
    // Silent at host CPL 3.
    FlagsRead,
    FlagsWrite,
    DescriptorTableRead,
    SegmentRead,
    SegmentLoad,
    SegmentCheck,
    Cpuid,
    Xgetbv,
    Timestamp,
    PerfCounter,
    Transactional,
    StateDependent,
    ShortBranch,
    FpuState,
}

impl SensitiveKind {
    /// Every class, in report order.
    pub const ALL: [SensitiveKind; 27] = [
        Self::InterruptFlag,
        Self::Halt,
        Self::PortIo,
        Self::ControlRegister,
        Self::DebugRegister,
        Self::DescriptorTableLoad,
        Self::CacheTlb,
        Self::Msr,
        Self::SoftwareInterrupt,
        Self::SystemCall,
        Self::SystemReturn,
        Self::InvalidOpcode,
        Self::Privileged,
        Self::FlagsRead,
        Self::FlagsWrite,
        Self::DescriptorTableRead,
        Self::SegmentRead,
        Self::SegmentLoad,
        Self::SegmentCheck,
        Self::Cpuid,
        Self::Xgetbv,
        Self::Timestamp,
        Self::PerfCounter,
        Self::Transactional,
        Self::StateDependent,
        Self::ShortBranch,
        Self::FpuState,
    ];

    /// Short name for reports.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::InterruptFlag => "cli/sti",
            Self::Halt => "hlt",
            Self::PortIo => "port-io",
            Self::ControlRegister => "control-reg",
            Self::DebugRegister => "debug-reg",
            Self::DescriptorTableLoad => "desc-table-load",
            Self::CacheTlb => "cache/tlb",
            Self::Msr => "msr",
            Self::SoftwareInterrupt => "int-n",
            Self::SystemCall => "syscall/sysenter",
            Self::SystemReturn => "sysexit/sysret",
            Self::InvalidOpcode => "ud",
            Self::Privileged => "other-privileged",
            Self::FlagsRead => "pushf",
            Self::FlagsWrite => "popf",
            Self::DescriptorTableRead => "desc-table-read",
            Self::SegmentRead => "segment-read",
            Self::SegmentLoad => "segment-load",
            Self::SegmentCheck => "lar/lsl/verr/verw",
            Self::Cpuid => "cpuid",
            Self::Xgetbv => "xgetbv",
            Self::Timestamp => "rdtsc/rdtscp/rdpid",
            Self::PerfCounter => "rdpmc",
            Self::Transactional => "xbegin/xabort/xend",
            Self::StateDependent => "state-dependent",
            Self::ShortBranch => "16-bit-branch",
            Self::FpuState => "fpu-state",
        }
    }
}

/// How a sensitive instruction reaches the monitor when it runs natively.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Delivery {
    /// It faults at host CPL 3: no breakpoint needed.
    Traps,
    /// It faults when its condition holds and otherwise does nothing and
    /// falls through (INTO with OF clear): no breakpoint needed, but the
    /// code after it runs natively too.
    TrapsOrFallsThrough,
    /// It runs silently: a breakpoint must stop it first.
    Silent,
}

/// Pointer branches: the target depends on run-time state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum PointerKind {
    /// `ret` (near).
    Ret,
    /// `ret imm16` (near), releasing stack bytes.
    RetImm,
    /// `jmp r/m` (near, register or memory).
    IndirectJmp,
    /// `call r/m` (near, register or memory).
    IndirectCall,
    /// `iret`: also sensitive (IF, IOPL, CS, maybe CPL and stack).
    Iret,
    /// Far `jmp` (direct `ptr16:32` or memory `m16:32`): loads CS.
    FarJmp,
    /// Far `call`: loads CS and pushes the guest CS.
    FarCall,
    /// Far `ret`: loads CS, maybe CPL and stack.
    FarRet,
}

impl PointerKind {
    /// Every kind, in report order.
    pub const ALL: [PointerKind; 8] = [
        Self::Ret,
        Self::RetImm,
        Self::IndirectJmp,
        Self::IndirectCall,
        Self::Iret,
        Self::FarJmp,
        Self::FarCall,
        Self::FarRet,
    ];

    /// True when the monitor must emulate the transfer (it loads a segment
    /// register or changes privileged flags); false when it only computes
    /// the target and lets the instruction run natively.
    #[must_use]
    pub const fn needs_emulation(self) -> bool {
        matches!(
            self,
            Self::Iret | Self::FarJmp | Self::FarCall | Self::FarRet
        )
    }

    /// Short name for reports.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ret => "ret",
            Self::RetImm => "ret-imm16",
            Self::IndirectJmp => "jmp-indirect",
            Self::IndirectCall => "call-indirect",
            Self::Iret => "iret",
            Self::FarJmp => "jmp-far",
            Self::FarCall => "call-far",
            Self::FarRet => "ret-far",
        }
    }
}

/// What one instruction is to the planner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum PoiKind {
    /// Runs natively with the architectural result; not a point of interest.
    Plain,
    /// Jcc, JCXZ/JECXZ, LOOP/LOOPE/LOOPNE: taken target or fall through.
    CondBranch {
        /// Where it goes when taken.
        taken: GuestVirt,
    },
    /// JMP rel or CALL rel: one successor.
    DirectBranch {
        /// Where it goes.
        target: GuestVirt,
        /// CALL (pushes a return address) rather than JMP.
        call: bool,
    },
    /// A branch whose target is known only at run time.
    PointerBranch(PointerKind),
    /// An instruction whose native execution at CPL 3 is wrong for a guest kernel.
    Sensitive {
        /// Which class.
        kind: SensitiveKind,
        /// Whether it traps by itself.
        delivery: Delivery,
    },
    /// Not decodable: never run natively.
    Unrecognized,
}

impl PoiKind {
    /// True for everything but [`PoiKind::Plain`].
    #[must_use]
    pub const fn is_poi(self) -> bool {
        !matches!(self, Self::Plain)
    }
}

/// Host facts and guest state that change whether an instruction is
/// sensitive or traps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassifyConfig {
    /// The world process runs with CPUID faulting on
    /// (`arch_prctl(ARCH_SET_CPUID, 0)`), so CPUID raises #GP by itself.
    pub cpuid_faults: bool,
    /// The guest's time stamp counter is virtualized, so RDTSC, RDTSCP and
    /// RDPID must not run natively. Off by default: the guest then reads the
    /// host TSC, which advances with the host time that drives the virtual
    /// timers.
    pub virtualize_timestamp: bool,
    /// The guest's CR0 (TS, EM and MP decide whether x87/MMX/SSE
    /// instructions fault, which they cannot natively: the host's CR0 is
    /// not the guest's).
    pub guest_cr0: u32,
    /// The guest's CR4 (OSFXSR decides whether SSE instructions fault).
    pub guest_cr4: u32,
}

impl Default for ClassifyConfig {
    /// A running OS's state: FPU usable (CR0.TS/EM clear), SSE enabled
    /// (CR4.OSFXSR set), CPUID and RDTSC not faulting on the host.
    fn default() -> Self {
        Self {
            cpuid_faults: false,
            virtualize_timestamp: false,
            guest_cr0: 0,
            guest_cr4: btvmm_core::emu::fpu::CR4_OSFXSR,
        }
    }
}

/// Classifies one decoded 32-bit instruction.
#[must_use]
pub fn classify(instr: &Instruction, config: &ClassifyConfig) -> PoiKind {
    use Delivery::{Silent, Traps};

    if instr.is_invalid() {
        return PoiKind::Unrecognized;
    }
    let sensitive = |kind, delivery| PoiKind::Sensitive { kind, delivery };

    let mnemonic = instr.mnemonic();
    let explicit = match mnemonic {
        Mnemonic::Cli | Mnemonic::Sti => Some((SensitiveKind::InterruptFlag, Traps)),
        Mnemonic::Hlt => Some((SensitiveKind::Halt, Traps)),
        Mnemonic::In
        | Mnemonic::Out
        | Mnemonic::Insb
        | Mnemonic::Insw
        | Mnemonic::Insd
        | Mnemonic::Outsb
        | Mnemonic::Outsw
        | Mnemonic::Outsd => Some((SensitiveKind::PortIo, Traps)),
        Mnemonic::Lmsw | Mnemonic::Clts => Some((SensitiveKind::ControlRegister, Traps)),
        Mnemonic::Lgdt | Mnemonic::Lidt | Mnemonic::Lldt | Mnemonic::Ltr => {
            Some((SensitiveKind::DescriptorTableLoad, Traps))
        }
        Mnemonic::Invd
        | Mnemonic::Wbinvd
        | Mnemonic::Wbnoinvd
        | Mnemonic::Invlpg
        | Mnemonic::Invpcid => Some((SensitiveKind::CacheTlb, Traps)),
        Mnemonic::Rdmsr | Mnemonic::Wrmsr => Some((SensitiveKind::Msr, Traps)),
        Mnemonic::Int | Mnemonic::Int1 | Mnemonic::Int3 => {
            Some((SensitiveKind::SoftwareInterrupt, Traps))
        }
        Mnemonic::Into => Some((
            SensitiveKind::SoftwareInterrupt,
            Delivery::TrapsOrFallsThrough,
        )),
        // Under an outer hypervisor (KVM, as on our hosts) VMCALL at CPL 3
        // exits to it, which answers -EPERM in EAX and skips the
        // instruction: it neither faults nor does what the guest meant.
        Mnemonic::Vmcall | Mnemonic::Vmmcall | Mnemonic::Vmgexit | Mnemonic::Tdcall => {
            return PoiKind::Unrecognized;
        }
        // From compatibility mode one of the two enters the host kernel's
        // fast system-call path (SYSENTER on Intel hosts, SYSCALL on AMD
        // hosts), which reports the vDSO landing pad instead of the guest's
        // EIP; the other raises #UD. A breakpoint stops both first in
        // kernel mode.
        Mnemonic::Syscall | Mnemonic::Sysenter => Some((SensitiveKind::SystemCall, Silent)),
        Mnemonic::Sysexit | Mnemonic::Sysret => Some((SensitiveKind::SystemReturn, Traps)),
        Mnemonic::Ud0 | Mnemonic::Ud1 | Mnemonic::Ud2 => {
            Some((SensitiveKind::InvalidOpcode, Traps))
        }
        Mnemonic::Clac | Mnemonic::Stac => Some((SensitiveKind::Privileged, Traps)),
        Mnemonic::Pushf | Mnemonic::Pushfd => Some((SensitiveKind::FlagsRead, Silent)),
        Mnemonic::Popf | Mnemonic::Popfd => Some((SensitiveKind::FlagsWrite, Silent)),
        Mnemonic::Sgdt | Mnemonic::Sidt | Mnemonic::Sldt | Mnemonic::Str | Mnemonic::Smsw => {
            Some((SensitiveKind::DescriptorTableRead, Silent))
        }
        Mnemonic::Lds | Mnemonic::Les | Mnemonic::Lfs | Mnemonic::Lgs | Mnemonic::Lss => {
            Some((SensitiveKind::SegmentLoad, Silent))
        }
        Mnemonic::Lar | Mnemonic::Lsl | Mnemonic::Verr | Mnemonic::Verw => {
            Some((SensitiveKind::SegmentCheck, Silent))
        }
        Mnemonic::Cpuid => Some((
            SensitiveKind::Cpuid,
            if config.cpuid_faults { Traps } else { Silent },
        )),
        Mnemonic::Xgetbv => Some((SensitiveKind::Xgetbv, Silent)),
        Mnemonic::Rdtsc | Mnemonic::Rdtscp | Mnemonic::Rdpid => {
            if !config.virtualize_timestamp {
                return PoiKind::Plain;
            }
            Some((SensitiveKind::Timestamp, Silent))
        }
        Mnemonic::Rdpmc => Some((SensitiveKind::PerfCounter, Silent)),
        Mnemonic::Xbegin | Mnemonic::Xabort | Mnemonic::Xend => {
            Some((SensitiveKind::Transactional, Silent))
        }
        Mnemonic::Mov => mov_class(instr),
        Mnemonic::Push if is_segment_operand(instr, 0) => {
            Some((SensitiveKind::SegmentRead, Silent))
        }
        Mnemonic::Pop if is_segment_operand(instr, 0) => Some((SensitiveKind::SegmentLoad, Silent)),
        _ => None,
    };
    if let Some((kind, delivery)) = explicit {
        return sensitive(kind, delivery);
    }

    if let Some(kind) = pointer_kind(instr) {
        return PoiKind::PointerBranch(kind);
    }

    let near = matches!(
        instr.op0_kind(),
        OpKind::NearBranch16 | OpKind::NearBranch32
    );
    if instr.op0_kind() == OpKind::NearBranch16 {
        // The target wraps at 64 KiB of the code segment's offsets, which
        // the planner (working in linear addresses without the CS base)
        // cannot follow: the monitor emulates the branch.
        return sensitive(SensitiveKind::ShortBranch, Silent);
    }
    match instr.flow_control() {
        FlowControl::ConditionalBranch if near => {
            return PoiKind::CondBranch {
                taken: branch_target(instr),
            };
        }
        FlowControl::UnconditionalBranch if near => {
            return PoiKind::DirectBranch {
                target: branch_target(instr),
                call: false,
            };
        }
        FlowControl::Call if near => {
            return PoiKind::DirectBranch {
                target: branch_target(instr),
                call: true,
            };
        }
        _ => {}
    }

    if instr.flow_control() != FlowControl::Next {
        // Control flow the planner does not model (VMRUN, VMLAUNCH and the
        // like): never let it run natively, whatever its privilege.
        return PoiKind::Unrecognized;
    }
    let op_code = instr.op_code();
    if op_code.is_privileged() || op_code.must_be_cpl0() {
        return sensitive(SensitiveKind::Privileged, Traps);
    }
    if op_code.may_require_cpl0() {
        return sensitive(SensitiveKind::StateDependent, Silent);
    }
    if fpu_class(instr)
        .is_some_and(|class| fpu_fault(class, config.guest_cr0, config.guest_cr4).is_some())
    {
        return sensitive(SensitiveKind::FpuState, Silent);
    }
    PoiKind::Plain
}

fn mov_class(instr: &Instruction) -> Option<(SensitiveKind, Delivery)> {
    use Delivery::{Silent, Traps};

    let register = |op| (instr.op_kind(op) == OpKind::Register).then(|| instr.op_register(op));
    let (Some(dst), src) = (register(0), register(1)) else {
        // MOV m, Sreg: a memory destination with a segment source.
        return is_segment_operand(instr, 1).then_some((SensitiveKind::SegmentRead, Silent));
    };
    let either = |test: fn(Register) -> bool| test(dst) || src.is_some_and(test);
    if either(Register::is_cr) {
        Some((SensitiveKind::ControlRegister, Traps))
    } else if either(Register::is_dr) {
        Some((SensitiveKind::DebugRegister, Traps))
    } else if either(Register::is_tr) {
        Some((SensitiveKind::Privileged, Traps))
    } else if dst.is_segment_register() {
        Some((SensitiveKind::SegmentLoad, Silent))
    } else if src.is_some_and(Register::is_segment_register) {
        Some((SensitiveKind::SegmentRead, Silent))
    } else {
        None
    }
}

fn is_segment_operand(instr: &Instruction, operand: u32) -> bool {
    operand < instr.op_count()
        && instr.op_kind(operand) == OpKind::Register
        && instr.op_register(operand).is_segment_register()
}

fn pointer_kind(instr: &Instruction) -> Option<PointerKind> {
    Some(match instr.code() {
        Code::Retnw | Code::Retnd => PointerKind::Ret,
        Code::Retnw_imm16 | Code::Retnd_imm16 => PointerKind::RetImm,
        Code::Jmp_rm16 | Code::Jmp_rm32 => PointerKind::IndirectJmp,
        Code::Call_rm16 | Code::Call_rm32 => PointerKind::IndirectCall,
        Code::Iretw | Code::Iretd => PointerKind::Iret,
        Code::Jmp_ptr1616 | Code::Jmp_ptr1632 | Code::Jmp_m1616 | Code::Jmp_m1632 => {
            PointerKind::FarJmp
        }
        Code::Call_ptr1616 | Code::Call_ptr1632 | Code::Call_m1616 | Code::Call_m1632 => {
            PointerKind::FarCall
        }
        Code::Retfw | Code::Retfd | Code::Retfw_imm16 | Code::Retfd_imm16 => PointerKind::FarRet,
        _ => return None,
    })
}

fn branch_target(instr: &Instruction) -> GuestVirt {
    // In 32-bit mode iced-x86 computes targets modulo 2^32 (or 2^16 with an
    // operand-size prefix), so the value always fits.
    #[allow(clippy::cast_possible_truncation)]
    GuestVirt(instr.near_branch_target() as u32)
}

#[cfg(test)]
mod tests {
    use iced_x86::{Decoder, DecoderOptions};

    use super::*;

    fn kind_of(bytes: &[u8]) -> PoiKind {
        kind_with(bytes, &ClassifyConfig::default())
    }

    fn kind_with(bytes: &[u8], config: &ClassifyConfig) -> PoiKind {
        let mut decoder = Decoder::with_ip(32, bytes, 0x1000, DecoderOptions::NONE);
        let instr = decoder.decode();
        assert!(
            instr.is_invalid() || instr.len() == bytes.len(),
            "{bytes:02x?} decoded as {} bytes",
            instr.len()
        );
        classify(&instr, config)
    }

    fn assert_sensitive(cases: &[(&[u8], &str)], kind: SensitiveKind, delivery: Delivery) {
        for (bytes, asm) in cases {
            assert_eq!(
                kind_of(bytes),
                PoiKind::Sensitive { kind, delivery },
                "{asm} ({bytes:02x?})"
            );
        }
    }

    #[test]
    fn interrupt_flag_halt_and_port_io_trap() {
        assert_sensitive(
            &[(&[0xfa], "cli"), (&[0xfb], "sti")],
            SensitiveKind::InterruptFlag,
            Delivery::Traps,
        );
        assert_sensitive(&[(&[0xf4], "hlt")], SensitiveKind::Halt, Delivery::Traps);
        assert_sensitive(
            &[
                (&[0xe4, 0x60], "in al, 0x60"),
                (&[0xe5, 0x40], "in eax, 0x40"),
                (&[0x66, 0xe5, 0x40], "in ax, 0x40"),
                (&[0xe6, 0x80], "out 0x80, al"),
                (&[0xe7, 0x80], "out 0x80, eax"),
                (&[0xec], "in al, dx"),
                (&[0xed], "in eax, dx"),
                (&[0xee], "out dx, al"),
                (&[0x66, 0xef], "out dx, ax"),
                (&[0x6c], "insb"),
                (&[0x6d], "insd"),
                (&[0x66, 0x6d], "insw"),
                (&[0x6e], "outsb"),
                (&[0x6f], "outsd"),
                (&[0xf3, 0x6f], "rep outsd"),
                (&[0xf3, 0x66, 0x6d], "rep insw"),
            ],
            SensitiveKind::PortIo,
            Delivery::Traps,
        );
    }

    #[test]
    fn control_debug_and_table_instructions_trap() {
        assert_sensitive(
            &[
                (&[0x0f, 0x20, 0xc0], "mov eax, cr0"),
                (&[0x0f, 0x22, 0xd8], "mov cr3, eax"),
                (&[0x0f, 0x20, 0xe0], "mov eax, cr4"),
                (&[0x0f, 0x20, 0xd0], "mov eax, cr2"),
                (&[0x0f, 0x01, 0xf0], "lmsw ax"),
                (&[0x0f, 0x06], "clts"),
            ],
            SensitiveKind::ControlRegister,
            Delivery::Traps,
        );
        assert_sensitive(
            &[
                (&[0x0f, 0x21, 0xf8], "mov eax, dr7"),
                (&[0x0f, 0x23, 0xc0], "mov dr0, eax"),
            ],
            SensitiveKind::DebugRegister,
            Delivery::Traps,
        );
        assert_sensitive(
            &[
                (&[0x0f, 0x01, 0x15, 0, 0x10, 0, 0], "lgdt [0x1000]"),
                (&[0x0f, 0x01, 0x18], "lidt [eax]"),
                (&[0x0f, 0x00, 0xd0], "lldt ax"),
                (&[0x0f, 0x00, 0xd8], "ltr ax"),
            ],
            SensitiveKind::DescriptorTableLoad,
            Delivery::Traps,
        );
        assert_sensitive(
            &[
                (&[0x0f, 0x08], "invd"),
                (&[0x0f, 0x09], "wbinvd"),
                (&[0x0f, 0x01, 0x38], "invlpg [eax]"),
                (&[0x66, 0x0f, 0x38, 0x82, 0x01], "invpcid eax, [ecx]"),
            ],
            SensitiveKind::CacheTlb,
            Delivery::Traps,
        );
        assert_sensitive(
            &[(&[0x0f, 0x32], "rdmsr"), (&[0x0f, 0x30], "wrmsr")],
            SensitiveKind::Msr,
            Delivery::Traps,
        );
    }

    #[test]
    fn interrupts_and_system_calls_trap() {
        assert_sensitive(
            &[
                (&[0xcd, 0x80], "int 0x80"),
                (&[0xcd, 0x03], "int 3 (long form)"),
                (&[0xcc], "int3"),
                (&[0xf1], "int1"),
            ],
            SensitiveKind::SoftwareInterrupt,
            Delivery::Traps,
        );
        assert_sensitive(
            &[(&[0xce], "into")],
            SensitiveKind::SoftwareInterrupt,
            Delivery::TrapsOrFallsThrough,
        );
        // One of them takes the host's fast path (losing EIP) on any host.
        assert_sensitive(
            &[(&[0x0f, 0x05], "syscall"), (&[0x0f, 0x34], "sysenter")],
            SensitiveKind::SystemCall,
            Delivery::Silent,
        );
        assert_sensitive(
            &[(&[0x0f, 0x35], "sysexit"), (&[0x0f, 0x07], "sysret")],
            SensitiveKind::SystemReturn,
            Delivery::Traps,
        );
        assert_sensitive(
            &[
                (&[0x0f, 0x0b], "ud2"),
                (&[0x0f, 0xb9, 0xc0], "ud1 eax, eax"),
            ],
            SensitiveKind::InvalidOpcode,
            Delivery::Traps,
        );
    }

    #[test]
    fn other_privileged_instructions_come_from_iced_metadata() {
        assert_sensitive(
            &[
                (&[0x0f, 0x01, 0xd1], "xsetbv"),
                (&[0x0f, 0x01, 0xca], "clac"),
                (&[0x0f, 0x01, 0xcb], "stac"),
                (&[0x0f, 0x01, 0xc4], "vmxoff"),
            ],
            SensitiveKind::Privileged,
            Delivery::Traps,
        );
        // Some hosts let ring 3 use MONITOR/MWAIT: stop them to be safe.
        assert_sensitive(
            &[
                (&[0x0f, 0x01, 0xc8], "monitor"),
                (&[0x0f, 0x01, 0xc9], "mwait"),
            ],
            SensitiveKind::StateDependent,
            Delivery::Silent,
        );
    }

    #[test]
    fn flags_instructions_are_silent_in_every_operand_size() {
        assert_sensitive(
            &[(&[0x9c], "pushfd"), (&[0x66, 0x9c], "pushfw")],
            SensitiveKind::FlagsRead,
            Delivery::Silent,
        );
        assert_sensitive(
            &[(&[0x9d], "popfd"), (&[0x66, 0x9d], "popfw")],
            SensitiveKind::FlagsWrite,
            Delivery::Silent,
        );
    }

    #[test]
    fn descriptor_table_reads_are_silent() {
        assert_sensitive(
            &[
                (&[0x0f, 0x01, 0x00], "sgdt [eax]"),
                (&[0x0f, 0x01, 0x08], "sidt [eax]"),
                (&[0x0f, 0x00, 0xc0], "sldt eax"),
                (&[0x0f, 0x00, 0xc8], "str eax"),
                (&[0x0f, 0x01, 0xe0], "smsw eax"),
                (&[0x66, 0x0f, 0x01, 0xe0], "smsw ax"),
                (&[0x0f, 0x01, 0x20], "smsw [eax]"),
            ],
            SensitiveKind::DescriptorTableRead,
            Delivery::Silent,
        );
    }

    #[test]
    fn segment_reads_in_every_form() {
        assert_sensitive(
            &[
                (&[0x8c, 0xd8], "mov eax, ds"),
                (&[0x66, 0x8c, 0xd8], "mov ax, ds"),
                (&[0x8c, 0x18], "mov [eax], ds"),
                (&[0x8c, 0xc8], "mov eax, cs"),
                (&[0x8c, 0xe0], "mov eax, fs"),
                (&[0x06], "push es"),
                (&[0x0e], "push cs"),
                (&[0x16], "push ss"),
                (&[0x1e], "push ds"),
                (&[0x0f, 0xa0], "push fs"),
                (&[0x0f, 0xa8], "push gs"),
                (&[0x66, 0x1e], "pushw ds"),
            ],
            SensitiveKind::SegmentRead,
            Delivery::Silent,
        );
    }

    #[test]
    fn segment_loads_in_every_form() {
        assert_sensitive(
            &[
                (&[0x8e, 0xd8], "mov ds, eax"),
                (&[0x8e, 0x18], "mov ds, [eax]"),
                (&[0x8e, 0xd0], "mov ss, eax"),
                (&[0x8e, 0xe8], "mov gs, eax"),
                (&[0x07], "pop es"),
                (&[0x17], "pop ss"),
                (&[0x1f], "pop ds"),
                (&[0x0f, 0xa1], "pop fs"),
                (&[0x0f, 0xa9], "pop gs"),
                (&[0x66, 0x0f, 0xa1], "popw fs"),
                (&[0xc5, 0x00], "lds eax, [eax]"),
                (&[0xc4, 0x00], "les eax, [eax]"),
                (&[0x0f, 0xb4, 0x00], "lfs eax, [eax]"),
                (&[0x0f, 0xb5, 0x00], "lgs eax, [eax]"),
                (&[0x0f, 0xb2, 0x00], "lss eax, [eax]"),
            ],
            SensitiveKind::SegmentLoad,
            Delivery::Silent,
        );
    }

    #[test]
    fn segment_checks_cpuid_and_friends_are_silent() {
        assert_sensitive(
            &[
                (&[0x0f, 0x02, 0xc1], "lar eax, ecx"),
                (&[0x0f, 0x03, 0xc1], "lsl eax, ecx"),
                (&[0x0f, 0x00, 0xe0], "verr ax"),
                (&[0x0f, 0x00, 0xe8], "verw ax"),
            ],
            SensitiveKind::SegmentCheck,
            Delivery::Silent,
        );
        assert_sensitive(
            &[(&[0x0f, 0xa2], "cpuid")],
            SensitiveKind::Cpuid,
            Delivery::Silent,
        );
        assert_sensitive(
            &[(&[0x0f, 0x01, 0xd0], "xgetbv")],
            SensitiveKind::Xgetbv,
            Delivery::Silent,
        );
        assert_sensitive(
            &[(&[0x0f, 0x33], "rdpmc")],
            SensitiveKind::PerfCounter,
            Delivery::Silent,
        );
        assert_sensitive(
            &[
                (&[0x0f, 0x01, 0xd5], "xend"),
                (&[0xc6, 0xf8, 0x01], "xabort 1"),
            ],
            SensitiveKind::Transactional,
            Delivery::Silent,
        );
    }

    #[test]
    fn host_options_change_cpuid_and_tsc() {
        let faulting = ClassifyConfig {
            cpuid_faults: true,
            ..ClassifyConfig::default()
        };
        assert_eq!(
            kind_with(&[0x0f, 0xa2], &faulting),
            PoiKind::Sensitive {
                kind: SensitiveKind::Cpuid,
                delivery: Delivery::Traps
            }
        );
        assert_eq!(
            kind_of(&[0x0f, 0x31]),
            PoiKind::Plain,
            "rdtsc native by default"
        );
        let virtual_tsc = ClassifyConfig {
            virtualize_timestamp: true,
            ..ClassifyConfig::default()
        };
        for bytes in [
            &[0x0f, 0x31][..],
            &[0x0f, 0x01, 0xf9],
            &[0xf3, 0x0f, 0xc7, 0xf8],
        ] {
            assert_eq!(
                kind_with(bytes, &virtual_tsc),
                PoiKind::Sensitive {
                    kind: SensitiveKind::Timestamp,
                    delivery: Delivery::Silent
                },
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn pointer_branches_in_every_encoding() {
        let cases: &[(&[u8], PointerKind, &str)] = &[
            (&[0xc3], PointerKind::Ret, "ret"),
            (&[0x66, 0xc3], PointerKind::Ret, "retw"),
            (&[0xc2, 0x08, 0x00], PointerKind::RetImm, "ret 8"),
            (&[0x66, 0xc2, 0x04, 0x00], PointerKind::RetImm, "retw 4"),
            (&[0xff, 0xe0], PointerKind::IndirectJmp, "jmp eax"),
            (&[0xff, 0x20], PointerKind::IndirectJmp, "jmp [eax]"),
            (
                &[0xff, 0x24, 0x85, 0x00, 0x10, 0x00, 0x00],
                PointerKind::IndirectJmp,
                "jmp [eax*4+0x1000]",
            ),
            (&[0x66, 0xff, 0xe0], PointerKind::IndirectJmp, "jmp ax"),
            (
                &[0x64, 0xff, 0x25, 0, 0, 0, 0],
                PointerKind::IndirectJmp,
                "jmp fs:[0]",
            ),
            (&[0xff, 0xd0], PointerKind::IndirectCall, "call eax"),
            (
                &[0xff, 0x15, 0x00, 0x20, 0, 0],
                PointerKind::IndirectCall,
                "call [0x2000]",
            ),
            (
                &[0xff, 0x54, 0x24, 0x04],
                PointerKind::IndirectCall,
                "call [esp+4]",
            ),
            (&[0xcf], PointerKind::Iret, "iretd"),
            (&[0x66, 0xcf], PointerKind::Iret, "iretw"),
            (
                &[0xea, 0, 0x10, 0, 0, 0x08, 0],
                PointerKind::FarJmp,
                "jmp 0x8:0x1000",
            ),
            (
                &[0x66, 0xea, 0, 0x10, 0x08, 0],
                PointerKind::FarJmp,
                "jmp 0x8:0x1000 (16)",
            ),
            (&[0xff, 0x28], PointerKind::FarJmp, "jmp far [eax]"),
            (
                &[0x9a, 0, 0x10, 0, 0, 0x08, 0],
                PointerKind::FarCall,
                "call 0x8:0x1000",
            ),
            (&[0xff, 0x18], PointerKind::FarCall, "call far [eax]"),
            (
                &[0x2e, 0xff, 0x1d, 0, 0x10, 0, 0],
                PointerKind::FarCall,
                "call far cs:[0x1000]",
            ),
            (&[0xcb], PointerKind::FarRet, "retf"),
            (&[0xca, 0x04, 0x00], PointerKind::FarRet, "retf 4"),
            (&[0x66, 0xcb], PointerKind::FarRet, "retfw"),
        ];
        for (bytes, kind, asm) in cases {
            assert_eq!(kind_of(bytes), PoiKind::PointerBranch(*kind), "{asm}");
        }
    }

    #[test]
    fn direct_and_conditional_branches_carry_targets() {
        // Decoded at 0x1000.
        assert_eq!(
            kind_of(&[0xeb, 0xfe]),
            PoiKind::DirectBranch {
                target: GuestVirt(0x1000),
                call: false
            },
            "jmp $"
        );
        assert_eq!(
            kind_of(&[0xe9, 0x00, 0x01, 0x00, 0x00]),
            PoiKind::DirectBranch {
                target: GuestVirt(0x1105),
                call: false
            },
            "jmp rel32"
        );
        assert_eq!(
            kind_of(&[0xe8, 0xfb, 0xff, 0xff, 0xff]),
            PoiKind::DirectBranch {
                target: GuestVirt(0x1000),
                call: true
            },
            "call rel32"
        );
        for (bytes, taken) in [
            (&[0x74, 0x10][..], 0x1012),                     // je
            (&[0x0f, 0x85, 0x00, 0x01, 0x00, 0x00], 0x1106), // jne rel32
            (&[0xe3, 0x02], 0x1004),                         // jecxz
            (&[0x67, 0xe3, 0x02], 0x1005),                   // jcxz
            (&[0xe2, 0xfe], 0x1000),                         // loop
            (&[0xe1, 0xfe], 0x1000),                         // loope
            (&[0xe0, 0xfe], 0x1000),                         // loopne
        ] {
            assert_eq!(
                kind_of(bytes),
                PoiKind::CondBranch {
                    taken: GuestVirt(taken)
                },
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn ordinary_instructions_are_plain() {
        for bytes in [
            &[0x90][..],               // nop
            &[0x89, 0xc8],             // mov eax, ecx
            &[0x8b, 0x45, 0x08],       // mov eax, [ebp+8]
            &[0x64, 0xa1, 0, 0, 0, 0], // mov eax, fs:[0] (override is fine)
            &[0x63, 0xc8],             // arpl ax, cx
            &[0x60],                   // pushad
            &[0xc9],                   // leave
            &[0xf3, 0xa5],             // rep movsd
            &[0x0f, 0xc7, 0x0e],       // cmpxchg8b [esi]
            &[0xd9, 0xe8],             // fld1
            &[0x0f, 0xae, 0x00],       // fxsave [eax]
            &[0x0f, 0xae, 0xe8],       // lfence
            &[0xf3, 0x90],             // pause
            &[0x0f, 0x1f, 0x44, 0, 0], // nop dword [eax+eax]
            &[0x62, 0x01],             // bound eax, [ecx]
        ] {
            assert_eq!(kind_of(bytes), PoiKind::Plain, "{bytes:02x?}");
        }
    }

    #[test]
    fn unmodelled_control_flow_and_hypercalls_are_unrecognized() {
        // vmmcall: flow control "call" without a near target.
        assert_eq!(kind_of(&[0x0f, 0x01, 0xd9]), PoiKind::Unrecognized);
        // vmcall: silently answered by an outer KVM at CPL 3.
        assert_eq!(kind_of(&[0x0f, 0x01, 0xc1]), PoiKind::Unrecognized);
        // vmlaunch; rsm (a return from system-management mode)
        assert_eq!(kind_of(&[0x0f, 0x01, 0xc2]), PoiKind::Unrecognized);
        assert_eq!(kind_of(&[0x0f, 0xaa]), PoiKind::Unrecognized);
        // vmrun: a "call" into a guest.
        assert_eq!(kind_of(&[0x0f, 0x01, 0xd8]), PoiKind::Unrecognized);
    }

    #[test]
    fn sixteen_bit_near_branches_are_left_to_the_monitor() {
        for bytes in [
            &[0x66, 0xe9, 0x10, 0x00][..],   // jmp rel16
            &[0x66, 0xe8, 0x10, 0x00],       // call rel16
            &[0x66, 0x75, 0x10],             // jne rel8 with 16-bit operand size
            &[0x66, 0x0f, 0x85, 0x10, 0x00], // jne rel16
            &[0x66, 0xe2, 0xfe],             // loop with 16-bit operand size
        ] {
            assert_eq!(
                kind_of(bytes),
                PoiKind::Sensitive {
                    kind: SensitiveKind::ShortBranch,
                    delivery: Delivery::Silent
                },
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn undecodable_bytes_are_unrecognized() {
        for bytes in [
            &[0x0f, 0xff][..],
            &[0xf0, 0x90],
            &[0x0f, 0x0f, 0xc0, 0xff],
            &[0x8e, 0xc8],
        ] {
            assert_eq!(kind_of(bytes), PoiKind::Unrecognized, "{bytes:02x?}");
        }
    }
}
