//! The host side: creating the world process.

use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};

use crate::WorldError;

/// Descriptor number of guest RAM in the world process.
pub const RAM_FD: RawFd = 3;
/// Descriptor number of the channel in the world process.
pub const CHANNEL_FD: RawFd = 4;
/// Descriptor number of the pool region in a pool member.
pub const POOL_FD: RawFd = 5;
/// Descriptor number of the code aliases (the split code view).
pub const ALIAS_FD: RawFd = 6;

/// The CPU this thread runs on now.
#[must_use]
pub fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu takes no arguments.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// Highest CPU number a `cpu_set_t` holds.
const CPU_SETSIZE: usize = 8 * std::mem::size_of::<libc::cpu_set_t>();

/// Pins the calling thread to `cpu`.
pub fn pin_to(cpu: usize) -> Result<(), WorldError> {
    if cpu >= CPU_SETSIZE {
        return Err(WorldError::Host {
            what: "pinning to a CPU",
            source: std::io::Error::other("CPU number out of range"),
        });
    }
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it
    // (cpu is below its size); sched_setaffinity reads it.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if result != 0 {
        return Err(WorldError::Host {
            what: "sched_setaffinity",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The descriptors a world starts with (this process's numbers).
#[derive(Clone, Copy, Debug)]
pub struct WorldFds {
    /// Guest RAM.
    pub ram: RawFd,
    /// The channel.
    pub channel: RawFd,
    /// The pool region, in a pool.
    pub pool: Option<RawFd>,
    /// The code aliases, with the split view.
    pub aliases: Option<RawFd>,
}

/// Starts `exe args...` as a world process (the launcher does), with
/// guest RAM on
/// [`RAM_FD`], the channel on [`CHANNEL_FD`], the pool (if any) on
/// [`POOL_FD`] and the code aliases (if any) on [`ALIAS_FD`]. Its standard
/// input and output are /dev/null (the console belongs to the host; its
/// standard error is the host's, for fatal messages) and it runs in a
/// process group of its own, so that the terminal's signals reach only
/// the host, which ends the VM cleanly. The world dies with the
/// host (PR_SET_PDEATHSIG). With `cpu`, the world is pinned to that CPU:
/// the host pins itself there too, so every handoff between them stays on
/// one CPU (a cross-CPU futex handoff costs about three times more and
/// wakes an idle CPU, DESIGN.md section 6).
pub fn spawn(
    exe: &Path,
    args: &[String],
    fds: WorldFds,
    cpu: Option<usize>,
) -> Result<Child, WorldError> {
    let ram_fd = fds.ram;
    let alias_fd = fds.aliases;
    let channel_fd = fds.channel;
    let pool_fd = fds.pool;
    let mut command = Command::new(exe);
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls (fcntl, dup2, prctl) on
    // descriptors the parent keeps open across the fork.
    unsafe {
        command.pre_exec(move || {
            // Move both out of the way first, so neither dup2 clobbers the
            // other; dup2 leaves the new descriptors without CLOEXEC.
            let ram_copy = libc::fcntl(ram_fd, libc::F_DUPFD_CLOEXEC, 100);
            let channel_copy = libc::fcntl(channel_fd, libc::F_DUPFD_CLOEXEC, 100);
            let pool_copy = pool_fd.map(|fd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100));
            let alias_copy = alias_fd.map(|fd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100));
            if let Some(pool_copy) = pool_copy
                && (pool_copy < 0 || libc::dup2(pool_copy, POOL_FD) < 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(alias_copy) = alias_copy
                && (alias_copy < 0 || libc::dup2(alias_copy, ALIAS_FD) < 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(cpu) = cpu.filter(|&cpu| cpu < CPU_SETSIZE) {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(
                    0,
                    std::mem::size_of::<libc::cpu_set_t>(),
                    &raw const set,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if ram_copy < 0
                || channel_copy < 0
                || libc::dup2(ram_copy, RAM_FD) < 0
                || libc::dup2(channel_copy, CHANNEL_FD) < 0
                || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().map_err(|source| WorldError::Host {
        what: "starting the world process",
        source,
    })
}
