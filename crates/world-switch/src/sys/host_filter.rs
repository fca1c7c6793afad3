//! The btvmm process's own seccomp filter, installed once a VM is set up
//! (the launcher runs, the console reader and the signal handlers are in
//! place): from then on btvmm serves exits, loads the kernel again on a
//! reset and prints, and a compromised btvmm (a bug a guest found in a
//! device model, say) can do no more than that. Firecracker applies such a
//! filter to its VMM threads.
//!
//! What it cannot do any more: open a file, create a socket, execute a
//! program or start a process (the launcher starts worlds), signal any
//! process but its own worlds (through their pidfds), change credentials,
//! trace, map memory executable. A call outside the list is not made: the
//! kernel raises SIGSYS, whose handler says which call it was and ends
//! btvmm (the launcher and the worlds die with it).

use std::os::fd::RawFd;

use seccompiler::{BpfProgram, SeccompAction};

use crate::WorldError;
use crate::sys::seccomp::{Check, INT, LONG, Rule, allow_list, int, rule};

/// The descriptors and processes btvmm's calls may name once confined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostAllowed {
    /// The socket to the launcher.
    pub launcher_socket: RawFd,
    /// The launcher process (the only child btvmm waits for).
    pub launcher_pid: libc::pid_t,
    /// This process.
    pub pid: libc::pid_t,
    /// The disk images the ATA disk and the floppy drive read and write
    /// (`--disk`, `--floppy`).
    pub images: Vec<RawFd>,
    /// The file COM1's output goes to (`--serial`), if any.
    pub serial: Option<RawFd>,
    /// Whether the curses display runs (`--display curses`): the terminal
    /// calls its thread makes.
    pub display: bool,
    /// The gdb stub's listening socket and the descriptor number its
    /// connection takes (`--gdb`): an accepted connection is moved there
    /// with dup2, so that the filter can name it.
    pub gdb: Option<(RawFd, RawFd)>,
}

/// `FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME`: not part of the operation.
const FUTEX_MODIFIERS: u64 = 0x80 | 0x100;

/// The allow-list: every system call btvmm makes after set-up, each with
/// the host path that needs it.
#[must_use]
pub fn rules(allowed: &HostAllowed) -> Vec<Rule> {
    use Check::{Eq, Masked};
    let exec = int(libc::PROT_EXEC);
    let never_exec = (
        2,
        INT,
        Masked {
            mask: exec,
            value: 0,
        },
    );
    let mut list = vec![
        rule(
            "read",
            libc::SYS_read,
            vec![(0, INT, Eq(0))],
            "the console reader thread: standard input for COM1",
        ),
        rule(
            "write",
            libc::SYS_write,
            vec![(0, INT, Eq(1))],
            "the guest's serial output and the end-of-run report (standard output)",
        ),
        rule(
            "write",
            libc::SYS_write,
            vec![(0, INT, Eq(2))],
            "btvmm's messages and --stats (standard error)",
        ),
        rule(
            "ioctl",
            libc::SYS_ioctl,
            vec![(0, INT, Eq(0)), (1, INT, Eq(libc::TCSETSW))],
            "the terminal back from raw mode at the end (console::restore_terminal)",
        ),
        rule(
            "ioctl",
            libc::SYS_ioctl,
            vec![(0, INT, Eq(0)), (1, INT, Eq(libc::TCGETS))],
            "the terminal's settings read back when they are restored",
        ),
        rule(
            "sendmsg",
            libc::SYS_sendmsg,
            vec![(0, INT, Eq(int(allowed.launcher_socket)))],
            "requests to the launcher: start a world, has it ended, its memory",
        ),
        rule(
            "recvmsg",
            libc::SYS_recvmsg,
            vec![(0, INT, Eq(int(allowed.launcher_socket)))],
            "the launcher's answers (a world's pidfd among them)",
        ),
        rule(
            "shutdown",
            libc::SYS_shutdown,
            vec![(0, INT, Eq(int(allowed.launcher_socket)))],
            "the end of the run tells the launcher to end (Launcher's drop)",
        ),
        rule(
            "pidfd_send_signal",
            libc::SYS_pidfd_send_signal,
            vec![
                (1, INT, Eq(int(crate::trap::KICK_SIGNAL))),
                (2, LONG, Eq(0)),
                (3, INT, Eq(0)),
            ],
            "kicking the world that runs the guest when a device's interrupt line changes \
             (only processes btvmm holds a pidfd of: its worlds)",
        ),
        rule(
            "pidfd_send_signal",
            libc::SYS_pidfd_send_signal,
            vec![
                (1, INT, Eq(int(libc::SIGKILL))),
                (2, LONG, Eq(0)),
                (3, INT, Eq(0)),
            ],
            "ending the worlds at the end of the run or on a reset",
        ),
        rule(
            "wait4",
            libc::SYS_wait4,
            vec![(0, INT, Eq(int(allowed.launcher_pid)))],
            "the launcher ends with the run (Launcher's drop)",
        ),
        rule(
            "memfd_create",
            libc::SYS_memfd_create,
            vec![(1, INT, Eq(u64::from(libc::MFD_CLOEXEC)))],
            "fresh guest RAM, pool and code aliases on a reset (never inherited by the launcher)",
        ),
        rule(
            "ftruncate",
            libc::SYS_ftruncate,
            vec![],
            "sizing those memfds (btvmm's only writable file is the guest's disk image, \
             whose contents the guest owns anyway)",
        ),
        rule(
            "mmap",
            libc::SYS_mmap,
            vec![
                never_exec,
                (
                    3,
                    INT,
                    Masked {
                        mask: int(libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE),
                        value: 0,
                    },
                ),
            ],
            "guest RAM, the pool and the aliases mapped where the kernel chooses; \
             allocations (the kernel's decompression on a reset); never executable",
        ),
        rule(
            "mprotect",
            libc::SYS_mprotect,
            vec![never_exec],
            "glibc malloc growing a heap (never executable)",
        ),
        rule(
            "mremap",
            libc::SYS_mremap,
            vec![(
                3,
                INT,
                Masked {
                    mask: int(libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP),
                    value: 0,
                },
            )],
            "glibc realloc of a large allocation (moved where the kernel chooses)",
        ),
        rule(
            "munmap",
            libc::SYS_munmap,
            vec![],
            "a machine's memory goes on a reset and at the end; freed allocations",
        ),
        rule("brk", libc::SYS_brk, vec![], "glibc malloc's main arena"),
        rule(
            "madvise",
            libc::SYS_madvise,
            vec![(2, INT, Eq(int(libc::MADV_DONTNEED)))],
            "glibc free giving pages of a heap back",
        ),
        rule(
            "close",
            libc::SYS_close,
            vec![],
            "a machine's memfds and pidfds on a reset and at the end",
        ),
        rule(
            "fcntl",
            libc::SYS_fcntl,
            vec![(1, INT, Eq(int(libc::F_GETFD)))],
            "std checks a descriptor is open before it closes it (OwnedFd's drop)",
        ),
        rule(
            "clock_gettime",
            libc::SYS_clock_gettime,
            vec![],
            "the devices' clocks (the RTC's wall clock, the PIT's monotonic one) where the vDSO \
             falls back to the kernel",
        ),
        rule(
            "sched_yield",
            libc::SYS_sched_yield,
            vec![],
            "crossbeam's channel backs off between console events",
        ),
        rule(
            "getrandom",
            libc::SYS_getrandom,
            vec![],
            "std's hash maps seed themselves on first use",
        ),
        rule(
            "rt_sigreturn",
            libc::SYS_rt_sigreturn,
            vec![],
            "the SIGINT/SIGTERM handlers return",
        ),
        rule(
            "rt_sigprocmask",
            libc::SYS_rt_sigprocmask,
            vec![],
            "glibc abort() and raise() (a panic that cannot unwind)",
        ),
        rule(
            "sigaltstack",
            libc::SYS_sigaltstack,
            vec![],
            "std's stack-overflow guard at a thread's end",
        ),
        rule("getpid", libc::SYS_getpid, vec![], "glibc raise()"),
        rule("gettid", libc::SYS_gettid, vec![], "glibc raise()"),
        rule(
            "tgkill",
            libc::SYS_tgkill,
            vec![(0, INT, Eq(int(allowed.pid)))],
            "glibc raise() and abort(): to this process only",
        ),
        rule(
            "exit",
            libc::SYS_exit,
            vec![],
            "a thread ends (the console reader)",
        ),
        rule(
            "exit_group",
            libc::SYS_exit_group,
            vec![],
            "btvmm ends with the VM's exit status",
        ),
    ];
    if let Some(serial) = allowed.serial {
        list.push(rule(
            "write",
            libc::SYS_write,
            vec![(0, INT, Eq(int(serial)))],
            "COM1's output to its file (--serial)",
        ));
    }
    if allowed.display {
        list.extend(display_rules());
    }
    if let Some((listener, connection)) = allowed.gdb {
        list.extend(gdb_rules(listener, connection));
    }
    for &image in &allowed.images {
        let on_image = vec![(0, INT, Eq(int(image)))];
        list.extend([
            rule(
                "pread64",
                libc::SYS_pread64,
                on_image.clone(),
                "the ATA disk's and floppy drive's reads from their images (--disk, --floppy)",
            ),
            rule(
                "pwrite64",
                libc::SYS_pwrite64,
                on_image.clone(),
                "their writes to their images, before the guest sees them complete",
            ),
            rule(
                "fsync",
                libc::SYS_fsync,
                on_image,
                "FLUSH CACHE, and the images flushed at the end of the run",
            ),
        ]);
    }

    for (operation, needed_by) in [
        (
            libc::FUTEX_WAIT,
            "the host loop sleeps on the channel (Channel::wait_exit); std's locks",
        ),
        (
            libc::FUTEX_WAKE,
            "replies to the world, the console reader waking the loop; std's locks",
        ),
        (
            libc::FUTEX_WAIT_BITSET,
            "std's and crossbeam's timed waits (thread parking)",
        ),
        (libc::FUTEX_WAKE_BITSET, "std's thread unparking"),
    ] {
        list.push(rule(
            "futex",
            libc::SYS_futex,
            vec![(
                1,
                INT,
                Masked {
                    mask: !FUTEX_MODIFIERS & 0xffff_ffff,
                    value: int(operation),
                },
            )],
            needed_by,
        ));
    }
    list
}

/// What the gdb stub calls (`--gdb`): it takes a debugger's connection
/// on its listening socket, moves it to its own descriptor number, and
/// talks and polls on that one only.
fn gdb_rules(listener: RawFd, connection: RawFd) -> Vec<Rule> {
    use Check::Eq;
    let on_connection = vec![(0, INT, Eq(int(connection)))];
    vec![
        rule(
            "accept4",
            libc::SYS_accept4,
            vec![(0, INT, Eq(int(listener)))],
            "the gdb stub takes a debugger's connection (--gdb)",
        ),
        rule(
            "dup2",
            libc::SYS_dup2,
            vec![(1, INT, Eq(int(connection)))],
            "the connection moves to the descriptor the filter names",
        ),
        rule(
            "setsockopt",
            libc::SYS_setsockopt,
            vec![
                (1, INT, Eq(int(libc::IPPROTO_TCP))),
                (2, INT, Eq(int(libc::TCP_NODELAY))),
            ],
            "the connection sends gdb's small packets at once",
        ),
        rule(
            "recvfrom",
            libc::SYS_recvfrom,
            on_connection.clone(),
            "the gdb stub reads the debugger's packets",
        ),
        rule(
            "sendto",
            libc::SYS_sendto,
            on_connection.clone(),
            "the gdb stub answers",
        ),
        rule(
            "shutdown",
            libc::SYS_shutdown,
            on_connection,
            "the gdb stub ends a session (detach, kill, the VM's end)",
        ),
        rule(
            "poll",
            libc::SYS_poll,
            vec![],
            "the host loop waits for the debugger's packets while the guest is stopped",
        ),
    ]
}

/// What the curses display thread calls on the terminal once confined:
/// it reads standard input and writes standard output, which the rules
/// above allow already, and these.
fn display_rules() -> Vec<Rule> {
    use Check::Eq;
    let mut list = vec![rule(
        "poll",
        libc::SYS_poll,
        vec![],
        "ncurses waits for a key with a timeout (the display's frame interval)",
    )];
    list.push(rule(
        "rt_sigaction",
        libc::SYS_rt_sigaction,
        vec![(0, INT, Eq(int(libc::SIGTSTP)))],
        "ncurses holds off SIGTSTP while it updates the screen (its handler, then back)",
    ));
    for fd in [0, 1] {
        list.push(rule(
            "ioctl",
            libc::SYS_ioctl,
            vec![(0, INT, Eq(fd)), (1, INT, Eq(libc::TIOCGWINSZ))],
            "ncurses reads the terminal's size after it changed (SIGWINCH)",
        ));
    }
    for (request, needed_by) in [
        (libc::TCGETS, "ncurses reads the terminal's modes (endwin)"),
        (
            libc::TCSETSW,
            "ncurses gives the terminal its modes back at the end (endwin)",
        ),
    ] {
        list.push(rule(
            "ioctl",
            libc::SYS_ioctl,
            vec![(0, INT, Eq(1)), (1, INT, Eq(request))],
            needed_by,
        ));
    }
    list
}

/// Builds the filter: what [`rules`] allows runs, anything else traps.
pub fn build(allowed: &HostAllowed) -> Result<BpfProgram, WorldError> {
    allow_list(rules(allowed), SeccompAction::Trap)
}

/// The message the SIGSYS handler prints, before the call's number.
const BLOCKED: &[u8] = b"btvmm: internal error: the btvmm process made a system call outside its \
seccomp allow-list (system call ";

/// SIGSYS handler: says which call was refused and ends btvmm.
///
/// Async-signal-safe: it formats into a stack buffer and calls only
/// write(2) and _exit(2).
extern "C" fn refused(
    _signal: libc::c_int,
    _info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // For a SECCOMP_RET_TRAP the kernel leaves the system call's number in
    // RAX of the interrupted context.
    // SAFETY: the kernel passes a valid ucontext_t to an SA_SIGINFO
    // handler.
    let number =
        unsafe { (*context.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RAX as usize] };
    let mut line = [0u8; 160];
    let mut length = 0;
    for &byte in BLOCKED {
        line[length] = byte;
        length += 1;
    }
    let mut digits = [0u8; 20];
    let mut count = 0;
    let mut value = number.unsigned_abs();
    loop {
        digits[count] = b'0' + (value % 10) as u8;
        count += 1;
        value /= 10;
        if value == 0 || count == digits.len() {
            break;
        }
    }
    for index in (0..count).rev() {
        line[length] = digits[index];
        length += 1;
    }
    for &byte in b"); stopping\n" {
        line[length] = byte;
        length += 1;
    }
    // SAFETY: write and _exit are async-signal-safe; the buffer is ours.
    unsafe {
        libc::write(2, line.as_ptr().cast(), length);
        libc::_exit(crate::HOST_FILTER_EXIT);
    }
}

/// Closes every descriptor above standard error that btvmm inherited
/// from whoever started it (a shell's, a test harness's, a build tool's):
/// a VM needs none of them.
///
/// # Safety
///
/// Nothing in this process may own a descriptor above 2 yet: call it
/// first thing in `main`.
pub unsafe fn close_inherited_descriptors() -> Result<(), WorldError> {
    // SAFETY: close_range on this process's own table; by the contract
    // no live object owns a descriptor in the range.
    if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) } != 0 {
        return Err(WorldError::Host {
            what: "closing inherited descriptors (close_range)",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Gives up every capability but CAP_KILL, which signalling the worlds
/// (nobody's uid in namespaces of their own) through their pidfds needs
/// when btvmm runs as root; the filter lets no other signal out.
pub fn keep_only_kill_capability() -> Result<(), WorldError> {
    use caps::{CapSet, Capability};
    let permitted = caps::read(None, CapSet::Permitted).map_err(capability_error)?;
    if permitted.is_empty() {
        return Ok(());
    }
    for capability in caps::all() {
        if capability != Capability::CAP_KILL {
            caps::drop(None, CapSet::Bounding, capability).map_err(capability_error)?;
        }
    }
    let kill: caps::CapsHashSet = permitted
        .into_iter()
        .filter(|&capability| capability == Capability::CAP_KILL)
        .collect();
    caps::clear(None, CapSet::Ambient).map_err(capability_error)?;
    caps::set(None, CapSet::Inheritable, &caps::CapsHashSet::new()).map_err(capability_error)?;
    caps::set(None, CapSet::Effective, &kill).map_err(capability_error)?;
    caps::set(None, CapSet::Permitted, &kill).map_err(capability_error)
}

fn capability_error(error: caps::errors::CapsError) -> WorldError {
    WorldError::Host {
        what: "giving up capabilities",
        source: std::io::Error::other(error.to_string()),
    }
}

/// Installs the filter on every thread of this process (no_new_privs
/// first; SECCOMP_FILTER_FLAG_TSYNC), with a SIGSYS handler that reports a
/// refused call.
pub fn install(allowed: &HostAllowed) -> Result<(), WorldError> {
    let program = build(allowed)?;
    // SAFETY: sigaction with a handler that is async-signal-safe (see
    // `refused`) and a zeroed mask.
    let installed = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = refused as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&raw mut action.sa_mask);
        libc::sigaction(libc::SIGSYS, &raw const action, std::ptr::null_mut())
    };
    if installed != 0 {
        return Err(WorldError::Host {
            what: "sigaction(SIGSYS)",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(WorldError::Host {
            what: "prctl(PR_SET_NO_NEW_PRIVS)",
            source: std::io::Error::last_os_error(),
        });
    }
    seccompiler::apply_filter_all_threads(&program).map_err(|error| WorldError::MissingFeature {
        feature: "seccomp filters on every thread",
        hint: "the host kernel must allow seccomp(SECCOMP_SET_MODE_FILTER) with TSYNC",
        source: std::io::Error::other(error.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> HostAllowed {
        HostAllowed {
            launcher_socket: 7,
            launcher_pid: 4000,
            pid: 3999,
            images: Vec::new(),
            serial: None,
            display: false,
            gdb: None,
        }
    }

    /// With a gdb stub, accept on its listening socket and talk on its
    /// connection's descriptor only; nothing of it without one.
    #[test]
    fn a_gdb_stub_adds_its_sockets_only() {
        let list = rules(&HostAllowed {
            gdb: Some((11, 12)),
            ..allowed()
        });
        let conditions = |name: &str| {
            list.iter()
                .filter(|rule| rule.name == name)
                .map(|rule| rule.conditions.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(conditions("accept4"), [vec![(0, INT, Check::Eq(11))]]);
        assert_eq!(conditions("dup2"), [vec![(1, INT, Check::Eq(12))]]);
        for name in ["recvfrom", "sendto"] {
            assert_eq!(conditions(name), [vec![(0, INT, Check::Eq(12))]], "{name}");
        }
        let plain = rules(&allowed());
        for name in ["accept4", "dup2", "recvfrom", "sendto", "setsockopt"] {
            assert!(!plain.iter().any(|rule| rule.name == name), "{name}");
        }
    }

    /// With a disk image, its reads, writes and flushes, on its
    /// descriptor only.
    #[test]
    fn a_disk_adds_io_on_its_descriptor_only() {
        let list = rules(&HostAllowed {
            images: vec![9],
            serial: None,
            display: false,
            ..allowed()
        });
        for name in ["pread64", "pwrite64", "fsync"] {
            let rule = list
                .iter()
                .find(|rule| rule.name == name)
                .unwrap_or_else(|| panic!("{name}"));
            assert_eq!(rule.conditions, vec![(0, INT, Check::Eq(9))], "{name}");
        }
        assert!(!rules(&allowed()).iter().any(|rule| rule.name == "pwrite64"));
    }

    /// Every rule names the host path that needs it, and nothing that
    /// reaches outside the VM is on the list: a new entry shows up here
    /// and needs a reason.
    #[test]
    fn every_rule_is_one_the_host_needs() {
        let list = rules(&allowed());
        let mut names: Vec<&str> = list.iter().map(|rule| rule.name).collect();
        names.dedup();
        assert_eq!(
            names,
            [
                "read",
                "write",
                "ioctl",
                "sendmsg",
                "recvmsg",
                "shutdown",
                "pidfd_send_signal",
                "wait4",
                "memfd_create",
                "ftruncate",
                "mmap",
                "mprotect",
                "mremap",
                "munmap",
                "brk",
                "madvise",
                "close",
                "fcntl",
                "clock_gettime",
                "sched_yield",
                "getrandom",
                "rt_sigreturn",
                "rt_sigprocmask",
                "sigaltstack",
                "getpid",
                "gettid",
                "tgkill",
                "exit",
                "exit_group",
                "futex",
            ]
        );
        for rule in &list {
            assert!(!rule.needed_by.is_empty(), "{}", rule.name);
        }
        for forbidden in [
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_fork,
            libc::SYS_kill,
            libc::SYS_ptrace,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_setuid,
            libc::SYS_pidfd_open,
            libc::SYS_process_vm_writev,
            libc::SYS_rt_sigaction,
            libc::SYS_seccomp,
            libc::SYS_prctl,
        ] {
            assert!(
                list.iter().all(|rule| rule.number != forbidden),
                "system call {forbidden} is allowed"
            );
        }
    }

    #[test]
    fn signals_only_kick_or_end_and_only_through_a_pidfd() {
        let list = rules(&allowed());
        let signals: Vec<u64> = list
            .iter()
            .filter(|rule| rule.number == libc::SYS_pidfd_send_signal)
            .map(|rule| match rule.conditions[0] {
                (1, INT, Check::Eq(signal)) => signal,
                other => panic!("unpinned signal: {other:?}"),
            })
            .collect();
        assert_eq!(signals, [int(crate::trap::KICK_SIGNAL), int(libc::SIGKILL)]);
        let tgkill = list
            .iter()
            .find(|rule| rule.number == libc::SYS_tgkill)
            .expect("tgkill");
        assert_eq!(tgkill.conditions, [(0, INT, Check::Eq(3999))]);
        assert!(build(&allowed()).is_ok());
    }

    #[test]
    fn no_allowed_mapping_is_executable() {
        for rule in rules(&allowed())
            .iter()
            .filter(|rule| [libc::SYS_mmap, libc::SYS_mprotect].contains(&rule.number))
        {
            assert!(
                rule.conditions.contains(&(
                    2,
                    INT,
                    Check::Masked {
                        mask: int(libc::PROT_EXEC),
                        value: 0
                    }
                )),
                "{rule:?}"
            );
        }
    }
}
