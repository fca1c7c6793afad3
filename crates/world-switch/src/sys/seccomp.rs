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

/// A BPF statement (`BPF_STMT`): `code` with operand `k`.
#[must_use]
pub fn statement(code: u32, k: u32) -> sock_filter {
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

/// The prefix that traps guest system calls before the allow-list runs:
/// every call from a non-x86-64 ABI or from an instruction below 4 GiB
/// gets SECCOMP_RET_TRAP; the rest falls through to what follows it.
#[must_use]
pub fn guest_trap_prefix() -> Vec<sock_filter> {
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

fn filter_error(error: impl std::fmt::Display) -> WorldError {
    WorldError::Seccomp(error.to_string())
}

/// What the world's filter is built from: the descriptors, memory and
/// process the monitor's system calls may name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// Guest RAM (shadow mappings below 4 GiB).
    pub ram_fd: RawFd,
    /// The code aliases of the split view, if any.
    pub alias_fd: Option<RawFd>,
    /// The breakpoint events.
    pub perf_fds: Vec<RawFd>,
    /// The shared regions whose words the monitor waits on and wakes (the
    /// channel and the pool): `(start, length)` in this process.
    pub futex_regions: Vec<(u64, u64)>,
    /// This process (its only thread has the same id).
    pub pid: libc::pid_t,
}

/// How an argument is compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Equal.
    Eq(u64),
    /// At least.
    Ge(u64),
    /// Below.
    Lt(u64),
    /// `(argument & mask) == value`.
    Masked {
        /// The bits looked at.
        mask: u64,
        /// What they must be.
        value: u64,
    },
}

/// One allowed form of a system call: every condition must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The system call's name (for the listing).
    pub name: &'static str,
    /// Its number.
    pub number: i64,
    /// `(argument index, width in bits, check)`.
    pub conditions: Vec<(u8, u8, Check)>,
    /// The monitor path that makes this call (why the rule exists).
    pub needed_by: &'static str,
}

const FOUR_GIB: u64 = 1 << 32;

/// `int` arguments are compared on their low 32 bits: the ABI leaves a
/// register's upper half undefined for them.
pub(crate) const INT: u8 = 32;
pub(crate) const LONG: u8 = 64;

pub(crate) fn rule(
    name: &'static str,
    number: i64,
    conditions: Vec<(u8, u8, Check)>,
    needed_by: &'static str,
) -> Rule {
    Rule {
        name,
        number,
        conditions,
        needed_by,
    }
}

pub(crate) fn int(value: i32) -> u64 {
    u64::from(value.cast_unsigned())
}

fn descriptor(fd: RawFd) -> u64 {
    int(fd)
}

/// The allow-list: every system call the monitor makes once the guest
/// runs, each with its arguments pinned as far as a filter can (it sees
/// registers, not memory).
#[must_use]
pub fn rules(allowed: &Allowed) -> Vec<Rule> {
    use Check::{Eq, Ge, Lt, Masked};
    let exec = int(libc::PROT_EXEC);
    let anonymous = int(libc::MAP_ANONYMOUS);
    let fixed = int(libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE);
    let mut list = vec![
        rule(
            "rt_sigreturn",
            libc::SYS_rt_sigreturn,
            vec![],
            "every trap: the monitor's signal handler returns into the guest",
        ),
        rule(
            "exit",
            libc::SYS_exit,
            vec![],
            "the world ends (Action::Terminate, a fatal set-up error)",
        ),
        rule(
            "exit_group",
            libc::SYS_exit_group,
            vec![],
            "the world ends (_exit)",
        ),
        rule(
            "brk",
            libc::SYS_brk,
            vec![],
            "the monitor's heap (glibc malloc's main arena; brk memory is never executable)",
        ),
        rule(
            "munmap",
            libc::SYS_munmap,
            vec![],
            "shadow and alias mappings leave (GuestRam::unmap_at), freed large allocations \
             (only the world's own memory can go)",
        ),
        rule(
            "mmap",
            libc::SYS_mmap,
            vec![
                (0, LONG, Eq(0)),
                (
                    2,
                    INT,
                    Masked {
                        mask: exec,
                        value: 0,
                    },
                ),
                (
                    3,
                    INT,
                    Masked {
                        mask: anonymous | fixed,
                        value: anonymous,
                    },
                ),
            ],
            "large allocations: anonymous, never executable, where the kernel puts them \
             (above 4 GiB)",
        ),
        rule(
            "mmap",
            libc::SYS_mmap,
            vec![
                (0, LONG, Lt(FOUR_GIB)),
                (1, LONG, Lt(FOUR_GIB)),
                (
                    3,
                    INT,
                    Masked {
                        mask: int(libc::MAP_FIXED),
                        value: int(libc::MAP_FIXED),
                    },
                ),
                (4, INT, Eq(descriptor(allowed.ram_fd))),
            ],
            "shadow mappings of guest RAM below 4 GiB (GuestRam::map_at)",
        ),
        rule(
            "mprotect",
            libc::SYS_mprotect,
            vec![(0, LONG, Lt(FOUR_GIB)), (1, LONG, Lt(FOUR_GIB))],
            "write protection of shadow mappings below 4 GiB (GuestRam::protect_at)",
        ),
        rule(
            "mprotect",
            libc::SYS_mprotect,
            vec![(
                2,
                INT,
                Masked {
                    mask: exec,
                    value: 0,
                },
            )],
            "glibc malloc growing a heap (never executable)",
        ),
        rule(
            "mremap",
            libc::SYS_mremap,
            vec![
                (0, LONG, Ge(FOUR_GIB)),
                (
                    3,
                    INT,
                    Masked {
                        mask: int(libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP),
                        value: 0,
                    },
                ),
            ],
            "glibc realloc of a large allocation (moved where the kernel chooses)",
        ),
        rule(
            "modify_ldt",
            libc::SYS_modify_ldt,
            vec![(0, INT, Eq(0x11)), (2, LONG, Eq(16))],
            "shadow segment descriptors (sys::ldt::write_entry: write, one user_desc)",
        ),
        rule(
            "clock_gettime",
            libc::SYS_clock_gettime,
            vec![(0, INT, Eq(int(libc::CLOCK_MONOTONIC)))],
            "the guest's clocks while RDTSC faults (channel::monotonic_ns_syscall; the vDSO \
             otherwise)",
        ),
        rule(
            "timer_settime",
            libc::SYS_timer_settime,
            vec![],
            "the guest timer's next edge (sys::timer::KickTimer::arm; timer_create is not \
             allowed, so the world's own timer is the only one)",
        ),
        rule(
            "rt_sigtimedwait",
            libc::SYS_rt_sigtimedwait,
            vec![],
            "a guest HLT sleeps until the kick (sys::timer::KickTimer::wait)",
        ),
        rule(
            "rt_sigprocmask",
            libc::SYS_rt_sigprocmask,
            vec![],
            "glibc raise() blocks signals around tgkill (entering the guest)",
        ),
        rule(
            "getpid",
            libc::SYS_getpid,
            vec![],
            "glibc raise() names its own process",
        ),
        rule(
            "gettid",
            libc::SYS_gettid,
            vec![],
            "glibc raise() names its own thread",
        ),
        rule(
            "tgkill",
            libc::SYS_tgkill,
            vec![
                (0, INT, Eq(int(allowed.pid))),
                (1, INT, Eq(int(allowed.pid))),
            ],
            "entering the guest: raise(ENTER_SIGNAL) to this process only",
        ),
        rule(
            "getrandom",
            libc::SYS_getrandom,
            vec![],
            "std's hash maps seed themselves on first use",
        ),
        rule(
            "prctl",
            libc::SYS_prctl,
            vec![
                (0, INT, Eq(int(libc::PR_SET_TSC))),
                (1, LONG, Eq(int(libc::PR_TSC_ENABLE))),
            ],
            "the guest's CR4.TSD or TSC offset goes away: RDTSC runs natively again",
        ),
        rule(
            "prctl",
            libc::SYS_prctl,
            vec![
                (0, INT, Eq(int(libc::PR_SET_TSC))),
                (1, LONG, Eq(int(libc::PR_TSC_SIGSEGV))),
            ],
            "the guest's CR4.TSD or TSC offset: RDTSC faults into the monitor",
        ),
        rule(
            "write",
            libc::SYS_write,
            vec![(0, INT, Eq(2))],
            "--trace lines and fatal messages on standard error",
        ),
    ];
    for &(start, length) in &allowed.futex_regions {
        for (op, needed_by) in [
            (
                libc::FUTEX_WAIT,
                "waiting for the host's reply (channel) or for the vCPU (pool handoff)",
            ),
            (
                libc::FUTEX_WAKE,
                "waking the host (channel exit) or the next pool member (handoff)",
            ),
        ] {
            list.push(rule(
                "futex",
                libc::SYS_futex,
                vec![
                    (0, LONG, Ge(start)),
                    (0, LONG, Lt(start.saturating_add(length))),
                    (1, INT, Eq(int(op))),
                ],
                needed_by,
            ));
        }
    }
    if let Some(alias_fd) = allowed.alias_fd {
        list.push(rule(
            "mmap",
            libc::SYS_mmap,
            vec![
                (0, LONG, Lt(FOUR_GIB)),
                (1, LONG, Lt(FOUR_GIB)),
                (2, INT, Eq(int(libc::PROT_READ | libc::PROT_EXEC))),
                (
                    3,
                    INT,
                    Masked {
                        mask: int(libc::MAP_FIXED),
                        value: int(libc::MAP_FIXED),
                    },
                ),
                (4, INT, Eq(descriptor(alias_fd))),
            ],
            "split code view: an alias page below 4 GiB, read and execute only \
             (AliasMemory::map_at)",
        ));
    }
    for &perf in &allowed.perf_fds {
        for (request, needed_by) in [
            (
                0x4008_240b,
                "moving a hardware breakpoint (PERF_EVENT_IOC_MODIFY_ATTRIBUTES)",
            ),
            (
                0x2400,
                "arming a hardware breakpoint (PERF_EVENT_IOC_ENABLE)",
            ),
            (
                0x2401,
                "disarming a hardware breakpoint (PERF_EVENT_IOC_DISABLE)",
            ),
        ] {
            list.push(rule(
                "ioctl",
                libc::SYS_ioctl,
                vec![(0, INT, Eq(descriptor(perf))), (1, INT, Eq(request))],
                needed_by,
            ));
        }
    }
    list
}

fn seccomp_condition((arg, width, check): (u8, u8, Check)) -> Result<SeccompCondition, WorldError> {
    let length = if width == INT {
        SeccompCmpArgLen::Dword
    } else {
        SeccompCmpArgLen::Qword
    };
    let (operator, value) = match check {
        Check::Eq(value) => (SeccompCmpOp::Eq, value),
        Check::Ge(value) => (SeccompCmpOp::Ge, value),
        Check::Lt(value) => (SeccompCmpOp::Lt, value),
        Check::Masked { mask, value } => (SeccompCmpOp::MaskedEq(mask), value),
    };
    SeccompCondition::new(arg, length, operator, value).map_err(filter_error)
}

/// Compiles `rules` into an allow-list: a call no rule allows gets
/// `otherwise`.
pub(crate) fn allow_list(
    rules: Vec<Rule>,
    otherwise: SeccompAction,
) -> Result<BpfProgram, WorldError> {
    // seccompiler allows a call outright when its rule list is empty.
    let mut rules_by_number: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut unconditional = Vec::new();
    for entry in rules {
        if entry.conditions.is_empty() {
            unconditional.push(entry.number);
            continue;
        }
        let conditions = entry
            .conditions
            .into_iter()
            .map(seccomp_condition)
            .collect::<Result<Vec<_>, _>>()?;
        rules_by_number
            .entry(entry.number)
            .or_default()
            .push(SeccompRule::new(conditions).map_err(filter_error)?);
    }
    for number in unconditional {
        rules_by_number.insert(number, Vec::new());
    }
    let filter = SeccompFilter::new(
        rules_by_number,
        otherwise,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(filter_error)?;
    filter.try_into().map_err(filter_error)
}

/// Builds the filter: guest system calls trap, the monitor's go through
/// [`rules`], anything else kills the world.
pub fn build(allowed: &Allowed) -> Result<BpfProgram, WorldError> {
    let allow_list = allow_list(rules(allowed), SeccompAction::KillProcess)?;
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

    /// Filter inputs like a world's: the futex region is a page of this
    /// test process.
    fn allowed(futex_page: u64) -> Allowed {
        Allowed {
            ram_fd: 5,
            alias_fd: Some(7),
            perf_fds: vec![6],
            futex_regions: vec![(futex_page, 4096)],
            // The forked child's pid is not known here: tests that need
            // tgkill build their own.
            pid: 1,
        }
    }

    /// Runs `call` in a child under the filter built from `allowed`: true
    /// when the child survived it, false when the filter killed it.
    fn survives(allowed: &Allowed, call: impl FnOnce()) -> bool {
        let program = build(allowed).expect("builds");
        let status = in_child(|| {
            if install(&program).is_err() {
                return 99;
            }
            call();
            7
        });
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7 {
            true
        } else {
            assert!(
                libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
                "status {status:#x}"
            );
            false
        }
    }

    /// Makes system call `number` with `args` in the child under test.
    fn sys(number: libc::c_long, args: [u64; 6]) {
        // SAFETY: the tests pass arguments that either fail harmlessly or
        // touch fresh mappings of the forked child, which exits right after
        // (or is killed by the filter before the kernel runs the call).
        unsafe {
            libc::syscall(number, args[0], args[1], args[2], args[3], args[4], args[5]);
        }
    }

    /// An `int` argument as the register holds it.
    fn i(value: i32) -> u64 {
        u64::from(value.cast_unsigned())
    }

    #[test]
    fn the_monitor_may_only_make_listed_calls() {
        let allowed = allowed(0x7000_0000_0000);
        assert!(survives(&allowed, || sys(libc::SYS_getpid, [0; 6])));
        assert!(!survives(&allowed, || sys(libc::SYS_getppid, [0; 6])));
        for number in [
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_ptrace,
            libc::SYS_kill,
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_perf_event_open,
            libc::SYS_unshare,
            libc::SYS_setuid,
        ] {
            assert!(
                !survives(&allowed, || sys(number, [0; 6])),
                "system call {number}"
            );
        }
    }

    #[test]
    fn arguments_outside_what_the_monitor_uses_kill_the_world() {
        let page = 0x7000_0000_0000u64;
        let allowed = allowed(page);
        let anonymous = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let mmap = |at: u64, prot: i32, flags: i32, fd: i32| {
            sys(libc::SYS_mmap, [at, 4096, i(prot), i(flags), i(fd), 0]);
        };
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let rwx = rw | libc::PROT_EXEC;
        assert!(survives(&allowed, || mmap(0, rw, anonymous, -1)));
        assert!(
            !survives(&allowed, || mmap(0, rwx, anonymous, -1)),
            "executable anonymous memory"
        );
        let fixed = anonymous | libc::MAP_FIXED;
        assert!(
            !survives(&allowed, || mmap(0x1000_0000, rw, fixed, -1)),
            "anonymous memory at a chosen address"
        );
        let shared_fixed = libc::MAP_SHARED | libc::MAP_FIXED;
        assert!(
            survives(&allowed, || mmap(0x1000_0000, rwx, shared_fixed, 5)),
            "guest RAM"
        );
        assert!(
            !survives(&allowed, || mmap(0x1_0000_0000, rwx, shared_fixed, 5)),
            "guest RAM above 4 GiB"
        );
        assert!(
            !survives(&allowed, || mmap(0x1000_0000, rwx, shared_fixed, 6)),
            "another descriptor"
        );
        let read_exec = libc::PROT_READ | libc::PROT_EXEC;
        assert!(
            survives(&allowed, || mmap(0x2000_0000, read_exec, shared_fixed, 7)),
            "an alias page"
        );
        assert!(
            !survives(&allowed, || mmap(0x2000_0000, rwx, shared_fixed, 7)),
            "a writable alias page"
        );

        let mprotect = |at: u64, prot: i32| sys(libc::SYS_mprotect, [at, 4096, i(prot), 0, 0, 0]);
        assert!(survives(&allowed, || mprotect(0x1000_0000, rwx)), "shadow");
        assert!(survives(&allowed, || mprotect(page, rw)));
        assert!(
            !survives(&allowed, || mprotect(page, rwx)),
            "monitor memory made executable"
        );
        let mremap = |at: u64, flags: i32| sys(libc::SYS_mremap, [at, 4096, 8192, i(flags), 0, 0]);
        assert!(survives(&allowed, || mremap(page, libc::MREMAP_MAYMOVE)));
        let moved = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
        assert!(
            !survives(&allowed, || mremap(page, moved)),
            "remapped to a chosen address"
        );
        assert!(
            !survives(&allowed, || mremap(0x1000_0000, libc::MREMAP_MAYMOVE)),
            "a shadow mapping remapped"
        );

        // Signal 0 only checks; the filter decides before that.
        assert!(
            !survives(&allowed, || sys(libc::SYS_tgkill, [2, 2, 0, 0, 0, 0])),
            "another process (the filter names pid 1)"
        );

        let futex = |at: u64, op: i32| sys(libc::SYS_futex, [at, i(op), 0, 0, 0, 0]);
        assert!(survives(&allowed, || futex(page + 8, libc::FUTEX_WAKE)));
        assert!(
            !survives(&allowed, || futex(page + 4096, libc::FUTEX_WAKE)),
            "a word outside the shared regions"
        );
        assert!(
            !survives(&allowed, || futex(page, libc::FUTEX_CMP_REQUEUE)),
            "another operation"
        );

        let ioctl = |fd: i32, request: u64| sys(libc::SYS_ioctl, [i(fd), request, 0, 0, 0, 0]);
        assert!(survives(&allowed, || ioctl(6, 0x2401)));
        assert!(
            !survives(&allowed, || ioctl(6, 0x2403)),
            "PERF_EVENT_IOC_RESET"
        );
        assert!(
            !survives(&allowed, || ioctl(0, 0x2401)),
            "another descriptor"
        );

        let empty = c"".as_ptr() as u64;
        assert!(survives(&allowed, || sys(
            libc::SYS_write,
            [2, empty, 0, 0, 0, 0]
        )));
        assert!(!survives(&allowed, || sys(
            libc::SYS_write,
            [1, empty, 0, 0, 0, 0]
        )));

        let prctl =
            |option: i32, value: i32| sys(libc::SYS_prctl, [i(option), i(value), 0, 0, 0, 0]);
        assert!(survives(&allowed, || prctl(
            libc::PR_SET_TSC,
            libc::PR_TSC_ENABLE
        )));
        assert!(!survives(&allowed, || prctl(libc::PR_SET_DUMPABLE, 1)));
        let ldt = |func: u64| sys(libc::SYS_modify_ldt, [func, 0, 16, 0, 0, 0]);
        assert!(survives(&allowed, || ldt(0x11)));
        assert!(!survives(&allowed, || ldt(0)), "reading the LDT");
    }

    #[test]
    fn tgkill_reaches_only_the_world_itself() {
        let status = in_child(|| {
            // SAFETY: getpid has no arguments.
            let pid = unsafe { libc::getpid() };
            let allowed = Allowed {
                pid,
                ..allowed(0x7000_0000_0000)
            };
            let Ok(program) = build(&allowed) else {
                return 98;
            };
            if install(&program).is_err() {
                return 99;
            }
            // SAFETY: signal 0 to this very process checks and sends nothing.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, pid, 0) };
            // SAFETY: as above, to the parent: the filter kills us.
            unsafe { libc::syscall(libc::SYS_tgkill, pid - 1, pid - 1, 0) };
            7
        });
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "status {status:#x}"
        );
    }

    /// The allow-list, rule by rule. A rule that appears here without a
    /// monitor path that needs it is a hole: this list changes only with
    /// the code that makes the call.
    #[test]
    fn every_rule_is_one_the_monitor_needs() {
        let listed: Vec<(&str, &str)> = rules(&allowed(0x7000_0000_0000))
            .iter()
            .map(|rule| (rule.name, rule.needed_by))
            .collect();
        let expected = [
            ("rt_sigreturn", "every trap"),
            ("exit", "the world ends"),
            ("exit_group", "the world ends"),
            ("brk", "the monitor's heap"),
            ("munmap", "shadow and alias mappings leave"),
            ("mmap", "large allocations"),
            ("mmap", "shadow mappings of guest RAM"),
            ("mprotect", "write protection of shadow mappings"),
            ("mprotect", "glibc malloc growing a heap"),
            ("mremap", "glibc realloc"),
            ("modify_ldt", "shadow segment descriptors"),
            ("clock_gettime", "the guest's clocks while RDTSC faults"),
            ("timer_settime", "the guest timer's next edge"),
            ("rt_sigtimedwait", "a guest HLT sleeps"),
            ("rt_sigprocmask", "glibc raise()"),
            ("getpid", "glibc raise()"),
            ("gettid", "glibc raise()"),
            ("tgkill", "entering the guest"),
            ("getrandom", "std's hash maps"),
            ("prctl", "the guest's CR4.TSD or TSC offset goes away"),
            ("prctl", "the guest's CR4.TSD or TSC offset:"),
            ("write", "--trace lines"),
            ("futex", "waiting for the host's reply"),
            ("futex", "waking the host"),
            ("mmap", "split code view"),
            ("ioctl", "moving a hardware breakpoint"),
            ("ioctl", "arming a hardware breakpoint"),
            ("ioctl", "disarming a hardware breakpoint"),
        ];
        assert_eq!(listed.len(), expected.len(), "rules: {listed:#?}");
        for ((name, needed_by), (expected_name, reason)) in listed.iter().zip(expected) {
            assert_eq!(*name, expected_name);
            assert!(
                needed_by.starts_with(reason),
                "{name}: {needed_by:?} is not {reason:?}"
            );
        }
    }

    #[test]
    fn system_calls_from_below_4g_trap_instead_of_running() {
        let program = build(&allowed(0x7000_0000_0000)).expect("builds");
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
