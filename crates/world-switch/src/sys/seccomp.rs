//! The world's seccomp filter (DESIGN.md section 2): a guest instruction
//! never performs a host system call.
//!
//! 1. A system call from a non-x86-64 ABI (`int $0x80`, `sysenter` or
//!    `syscall` from compatibility mode) or from an instruction below 4 GiB
//!    (guest code, whatever mode it switched to) is trapped: SIGSYS, which
//!    the monitor turns into the guest's own system call or exception.
//! 2. Everything else comes from the monitor (above 4 GiB) and is checked
//!    against an explicit allow-list; anything not on it kills the world.

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use crate::WorldError;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SECCOMP_RET_TRAP: u32 = 0x0003_0000;
/// Offsets in `struct seccomp_data`.
const ARCH_OFFSET: u32 = 4;
const IP_HIGH_OFFSET: u32 = 12;

fn statement(code: u32, k: u32) -> sock_filter {
    sock_filter {
        // BPF opcodes fit 16 bits.
        #[allow(clippy::cast_possible_truncation)]
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        jt,
        jf,
        ..statement(code, k)
    }
}

/// The prefix that traps guest system calls before the allow-list runs.
fn guest_trap_prefix() -> Vec<sock_filter> {
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let ret = libc::BPF_RET | libc::BPF_K;
    vec![
        // 0: arch != x86-64 -> trap
        statement(load, ARCH_OFFSET),
        jump(jeq, AUDIT_ARCH_X86_64, 1, 0),
        statement(ret, SECCOMP_RET_TRAP),
        // 3: instruction pointer below 4 GiB -> trap
        statement(load, IP_HIGH_OFFSET),
        jump(jeq, 0, 0, 1),
        statement(ret, SECCOMP_RET_TRAP),
        // 6: the allow-list follows
    ]
}

fn condition(arg: u8, operator: SeccompCmpOp, value: u64) -> Result<SeccompCondition, WorldError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, operator, value).map_err(filter_error)
}

fn filter_error(error: impl std::fmt::Display) -> WorldError {
    WorldError::Seccomp(error.to_string())
}

/// Builds the filter for a world whose guest RAM is `memfd`, whose code
/// aliases (if any) are `alias_fd` and whose breakpoints are `perf_fds`.
pub fn build(
    memfd: RawFd,
    alias_fd: Option<RawFd>,
    perf_fds: &[RawFd],
) -> Result<BpfProgram, WorldError> {
    let fd = |fd: RawFd| u64::try_from(fd).unwrap_or(u64::MAX);
    let rule =
        |conditions: Vec<SeccompCondition>| SeccompRule::new(conditions).map_err(filter_error);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // Unconditional: returning from the handler, the host handoff, leaving,
    // the monitor's memory allocator, shadow segment descriptors.
    for syscall in [
        libc::SYS_rt_sigreturn,
        libc::SYS_futex,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_brk,
        libc::SYS_munmap,
        libc::SYS_mprotect,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_modify_ldt,
        libc::SYS_clock_gettime,
        // The world's timer (sys::timer): re-armed at each guest timer
        // event, waited for while the guest halts.
        libc::SYS_timer_settime,
        libc::SYS_rt_sigtimedwait,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_tgkill,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sched_yield,
        // Hash maps seed themselves from it on first use.
        libc::SYS_getrandom,
    ] {
        rules.insert(syscall, vec![]);
    }
    // mmap: anonymous memory anywhere the kernel likes, or guest RAM at a
    // fixed address below 4 GiB (shadow mappings).
    let anonymous = u64::from(libc::MAP_ANONYMOUS.cast_unsigned());
    let fixed = u64::from(libc::MAP_FIXED.cast_unsigned());
    rules.insert(
        libc::SYS_mmap,
        vec![
            rule(vec![condition(
                3,
                SeccompCmpOp::MaskedEq(anonymous | fixed),
                anonymous,
            )?])?,
            rule(vec![
                condition(4, SeccompCmpOp::Eq, fd(memfd))?,
                condition(0, SeccompCmpOp::Lt, 1 << 32)?,
            ])?,
        ],
    );
    // The split code view: an alias page at a fixed address below 4 GiB,
    // read and execute only (sys::alias).
    if let Some(alias_fd) = alias_fd
        && let Some(rules) = rules.get_mut(&libc::SYS_mmap)
    {
        let read_exec = u64::from((libc::PROT_READ | libc::PROT_EXEC).cast_unsigned());
        rules.push(rule(vec![
            condition(4, SeccompCmpOp::Eq, fd(alias_fd))?,
            condition(0, SeccompCmpOp::Lt, 1 << 32)?,
            condition(2, SeccompCmpOp::Eq, read_exec)?,
        ])?);
    }
    // ioctl on the breakpoint events only.
    let mut ioctls = Vec::new();
    for &perf in perf_fds {
        ioctls.push(rule(vec![condition(0, SeccompCmpOp::Eq, fd(perf))?])?);
    }
    if !ioctls.is_empty() {
        rules.insert(libc::SYS_ioctl, ioctls);
    }
    // prctl only to switch RDTSC faulting (the guest's CR4.TSD).
    rules.insert(
        libc::SYS_prctl,
        vec![rule(vec![condition(
            0,
            SeccompCmpOp::Eq,
            u64::from(libc::PR_SET_TSC.cast_unsigned()),
        )?])?],
    );
    // write to standard error (fatal messages of the world itself).
    rules.insert(
        libc::SYS_write,
        vec![rule(vec![condition(0, SeccompCmpOp::Eq, 2)?])?],
    );

    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(filter_error)?;
    let allow_list: BpfProgram = filter.try_into().map_err(filter_error)?;
    let mut program = guest_trap_prefix();
    program.extend(allow_list);
    Ok(program)
}

/// Installs the filter on this thread (with no_new_privs).
pub fn install(program: &BpfProgram) -> Result<(), WorldError> {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(WorldError::Host {
            what: "prctl(PR_SET_NO_NEW_PRIVS)",
            source: std::io::Error::last_os_error(),
        });
    }
    seccompiler::apply_filter(program).map_err(|error| WorldError::MissingFeature {
        feature: "seccomp filters",
        hint: "the host kernel must allow seccomp(SECCOMP_SET_MODE_FILTER)",
        source: std::io::Error::other(error.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `child` in a forked process and returns its wait status.
    fn in_child(child: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child only makes system calls (prctl, seccomp,
        // mmap, sigaction, _exit) before it exits; it never returns into
        // the test harness.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0, "fork");
            if pid == 0 {
                libc::_exit(child());
            }
            let mut status = 0;
            libc::waitpid(pid, &raw mut status, 0);
            status
        }
    }

    extern "C" fn exit_on_sigsys(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(42) }
    }

    #[test]
    fn the_monitor_may_only_make_listed_calls() {
        let program = build(5, Some(7), &[6]).expect("builds");
        let allowed = in_child(|| {
            if install(&program).is_err() {
                return 99;
            }
            // SAFETY: getpid has no arguments.
            unsafe { libc::syscall(libc::SYS_getpid) };
            7
        });
        assert!(
            libc::WIFEXITED(allowed) && libc::WEXITSTATUS(allowed) == 7,
            "status {allowed:#x}"
        );
        let forbidden = in_child(|| {
            if install(&program).is_err() {
                return 99;
            }
            // SAFETY: getppid has no arguments; the filter kills us here.
            unsafe { libc::syscall(libc::SYS_getppid) };
            8
        });
        assert!(
            libc::WIFSIGNALED(forbidden) && libc::WTERMSIG(forbidden) == libc::SIGSYS,
            "status {forbidden:#x}"
        );
    }

    #[test]
    fn system_calls_from_below_4g_trap_instead_of_running() {
        let program = build(5, Some(7), &[6]).expect("builds");
        let status = in_child(|| {
            // 64-bit code at 0x20000: mov eax, 39 (getpid); syscall; ret
            let code: [u8; 8] = [0xb8, 39, 0, 0, 0, 0x0f, 0x05, 0xc3];
            // SAFETY: a fresh fixed mapping in the forked child's empty low
            // address space, filled with our stub, then called.
            unsafe {
                let at = libc::mmap(
                    0x20000 as *mut libc::c_void,
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                );
                if at == libc::MAP_FAILED {
                    return 98;
                }
                std::ptr::copy_nonoverlapping(code.as_ptr(), at.cast::<u8>(), code.len());
                libc::signal(libc::SIGSYS, exit_on_sigsys as *const () as usize);
                if install(&program).is_err() {
                    return 99;
                }
                let stub: extern "C" fn() = std::mem::transmute(at);
                stub();
            }
            9
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 42,
            "status {status:#x}"
        );
    }
}
