//! From a signal to the monitor's vocabulary and back.

use btvmm_core::{HostRegisters, Trap};

use crate::sys::signal::SignalFrame;

const REG_GPRS: [libc::c_int; 8] = [
    libc::REG_RAX,
    libc::REG_RCX,
    libc::REG_RDX,
    libc::REG_RBX,
    libc::REG_RSP,
    libc::REG_RBP,
    libc::REG_RSI,
    libc::REG_RDI,
];

/// The signal that starts guest execution.
pub const ENTER_SIGNAL: libc::c_int = libc::SIGUSR2;
/// The signal the host sends to make the monitor look at events.
pub const KICK_SIGNAL: libc::c_int = libc::SIGUSR1;
/// Every signal the monitor handles.
pub const SIGNALS: [libc::c_int; 8] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGTRAP,
    libc::SIGSYS,
    KICK_SIGNAL,
    ENTER_SIGNAL,
];

const TRAP_TRACE: libc::c_int = 2;
/// si_code of a signal the kernel raised for a CPU exception (INT3).
const SI_KERNEL: libc::c_int = 0x80;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// x86-64 Linux's 32-bit user code selector, which the SYSENTER path puts
/// in CS.
const HOST_USER32_CS: u16 = 0x23;

/// The fields of `siginfo_t` for SIGTRAP, SIGSEGV and SIGSYS on x86-64
/// (include/uapi/asm-generic/siginfo.h): after signo, errno, code and
/// padding come `_sigfault.si_addr` and the union at offset 24 holding
/// `_perf` data or `_sigsys { _syscall, _arch }` after the call address.
#[repr(C)]
struct SigInfo {
    signo: i32,
    errno: i32,
    code: i32,
    padding: i32,
    address: u64,
    word3: u32,
    word4: u32,
}

const _: () = assert!(std::mem::size_of::<SigInfo>() <= std::mem::size_of::<libc::siginfo_t>());

fn siginfo<'a>(frame: &SignalFrame<'a>) -> &'a SigInfo {
    // SAFETY: SigInfo mirrors the leading fields of the kernel's siginfo
    // (checked smaller than siginfo_t above), all plain integers valid for
    // any bits, and siginfo_t is at least as aligned.
    unsafe { &*std::ptr::from_ref(frame.info).cast::<SigInfo>() }
}

fn low(value: u64) -> u32 {
    #[allow(clippy::cast_possible_truncation)]
    let low = value as u32;
    low
}

/// Reads the guest's registers and what trapped.
#[must_use]
pub fn decode(frame: &SignalFrame<'_>) -> (Trap, HostRegisters) {
    let mut gpr = [0u32; 8];
    for (slot, index) in gpr.iter_mut().zip(REG_GPRS) {
        *slot = low(frame.greg(index));
    }
    let rip = frame.greg(libc::REG_RIP);
    let csgsfs = frame.greg(libc::REG_CSGSFS);
    let cs = (csgsfs & 0xffff) as u16;
    let ss = ((csgsfs >> 48) & 0xffff) as u16;
    let segments = *frame.segments;
    let registers = HostRegisters {
        gpr,
        eip: low(rip),
        rip_high: low(rip >> 32),
        eflags: low(frame.greg(libc::REG_EFL)),
        selectors: [segments.es, cs, ss, segments.ds, segments.fs, segments.gs],
        fs_base: segments.fs_base,
        gs_base: segments.gs_base,
    };
    let info = siginfo(frame);
    let trapno = frame.greg(libc::REG_TRAPNO);
    // A perf breakpoint's SIGTRAP is sent from the perf event's handler,
    // which does not update the thread's trap number: the ucontext's
    // trapno is then stale (e.g. 3 after an earlier INT3). The si_code says
    // what happened.
    let trap = match frame.signal {
        libc::SIGTRAP if info.code == libc::TRAP_PERF => Trap::Breakpoint,
        libc::SIGTRAP if info.code == TRAP_TRACE => Trap::SingleStep,
        libc::SIGTRAP if trapno == 3 && info.code == SI_KERNEL => Trap::SoftwareBreakpoint,
        libc::SIGSYS => {
            let compat = info.word4 == AUDIT_ARCH_I386;
            let mut number = info.word3;
            // The fast path reports the vDSO landing pad (above 4 GiB here)
            // in the host's 32-bit user code segment.
            let fast_path = compat && cs == HOST_USER32_CS && rip >> 32 != 0;
            if !compat {
                // A 64-bit syscall keeps the number in RAX's low half too.
                number = low(frame.greg(libc::REG_RAX));
            }
            Trap::SystemCall {
                number,
                compat,
                fast_path,
            }
        }
        KICK_SIGNAL => Trap::Kick,
        ENTER_SIGNAL => Trap::Enter,
        _ => {
            let vector = u8::try_from(trapno).unwrap_or(u8::MAX);
            Trap::Fault {
                vector,
                error_code: low(frame.greg(libc::REG_ERR)),
                address: (vector == 14).then(|| low(info.address)),
            }
        }
    };
    // A 64-bit syscall's RAX is -ENOSYS in the frame; the guest's EAX is
    // the call number (restored above for the trap, fixed here for the
    // registers).
    let mut registers = registers;
    if let Trap::SystemCall { number, .. } = trap {
        registers.gpr[0] = number;
    }
    (trap, registers)
}

/// Makes the signal return into the guest with `registers`.
pub fn apply(frame: &mut SignalFrame<'_>, registers: &HostRegisters) {
    for (value, index) in registers.gpr.iter().zip(REG_GPRS) {
        frame.set_greg(index, u64::from(*value));
    }
    frame.set_greg(libc::REG_RIP, u64::from(registers.eip));
    frame.set_greg(libc::REG_EFL, u64::from(registers.eflags));
    let [es, cs, ss, ds, fs, gs] = registers.selectors;
    let csgsfs = frame.greg(libc::REG_CSGSFS);
    // Keep the (unused on return) gs/fs halves, replace CS and SS.
    let csgsfs = (csgsfs & 0x0000_ffff_ffff_0000) | u64::from(cs) | (u64::from(ss) << 48);
    frame.set_greg(libc::REG_CSGSFS, csgsfs);
    *frame.segments = crate::sys::signal::GuestSegmentRegisters {
        ds,
        es,
        fs,
        gs,
        fs_base: registers.fs_base,
        gs_base: registers.gs_base,
    };
}
