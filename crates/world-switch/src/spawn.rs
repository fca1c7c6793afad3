//! The host side: creating the world process.

use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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

/// A world process as its parent (the launcher) sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Started {
    /// Its pid (in the launcher's PID namespace).
    pub pid: libc::pid_t,
    /// It is the first process of a PID namespace of its own.
    pub own_pid_namespace: bool,
}

/// Starts `exe args...` as a world process (the launcher does), with
/// guest RAM on [`RAM_FD`], the channel on [`CHANNEL_FD`], the pool (if
/// any) on [`POOL_FD`] and the code aliases (if any) on [`ALIAS_FD`], in a
/// PID namespace of its own where the host allows it (it then sees no
/// other process: it is process 1 there). Its standard input and output
/// are /dev/null (the console belongs to the host; its standard error is
/// the host's, for fatal messages) and it runs in a process group of its
/// own, so that the terminal's signals reach only the host, which ends the
/// VM cleanly. The world dies with its parent (PR_SET_PDEATHSIG). With
/// `cpu`, the world is pinned to that CPU: the host pins itself there too,
/// so every handoff between them stays on one CPU (a cross-CPU futex
/// handoff costs about three times more and wakes an idle CPU, DESIGN.md
/// section 6).
///
/// The caller must be single-threaded (the launcher is): the child of the
/// raw clone runs Rust code until it executes the world.
pub fn spawn(
    exe: &Path,
    args: &[String],
    fds: WorldFds,
    cpu: Option<usize>,
) -> Result<Started, WorldError> {
    let host_error =
        |what: &'static str| move |source: std::io::Error| WorldError::Host { what, source };
    let invalid = |_| std::io::Error::other("a NUL byte in the world's command line");
    // Everything the child needs is made before the clone: it only makes
    // system calls.
    let program = CString::new(exe.as_os_str().as_bytes())
        .map_err(invalid)
        .map_err(host_error("exec"))?;
    let mut arguments = vec![program.clone()];
    for arg in args {
        arguments.push(
            CString::new(arg.as_bytes())
                .map_err(invalid)
                .map_err(host_error("exec"))?,
        );
    }
    let mut argv: Vec<*const libc::c_char> = arguments.iter().map(|arg| arg.as_ptr()).collect();
    argv.push(std::ptr::null());
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(host_error("opening /dev/null"))?;
    // The child reports a failed set-up or exec here (close-on-exec: a
    // successful exec closes it with nothing written).
    let (report_read, report_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|errno| host_error("pipe2")(errno.into()))?;
    let child = Child {
        program: &program,
        argv: &argv,
        null: null.as_raw_fd(),
        report: report_write.as_raw_fd(),
        fds,
        cpu: cpu.filter(|&cpu| cpu < CPU_SETSIZE),
    };
    let mut own_pid_namespace = true;
    let mut pid = raw_fork(libc::CLONE_NEWPID);
    if pid < 0 {
        // Not allowed here (no privilege for a PID namespace): an ordinary
        // child; the world says at start-up what that leaves open.
        own_pid_namespace = false;
        pid = raw_fork(0);
    }
    if pid == 0 {
        child.exec();
    }
    if pid < 0 {
        return Err(host_error("starting the world process (clone)")(
            std::io::Error::last_os_error(),
        ));
    }
    drop(report_write);
    let mut report = [0u8; 4];
    let mut pipe = std::fs::File::from(report_read);
    match std::io::Read::read(&mut pipe, &mut report) {
        Ok(0) => Ok(Started {
            pid,
            own_pid_namespace,
        }),
        result => {
            // SAFETY: reaps our own child, which has exited or is about to.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            let source = match result {
                Ok(_) => std::io::Error::from_raw_os_error(i32::from_ne_bytes(report)),
                Err(error) => error,
            };
            Err(WorldError::Host {
                what: "starting the world process",
                source,
            })
        }
    }
}

/// A fork that can put the child in new namespaces (`flags`: CLONE_NEW*).
/// Returns the child's pid, 0 in the child, or -1.
fn raw_fork(flags: libc::c_int) -> libc::pid_t {
    // SAFETY: clone without CLONE_VM and without a new stack is fork: the
    // child gets a copy of this single-threaded process and returns here.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::c_ulong::from((flags | libc::SIGCHLD).cast_unsigned()),
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    libc::pid_t::try_from(pid).unwrap_or(-1)
}

/// What the child of [`spawn`] needs, prepared by the parent.
struct Child<'a> {
    program: &'a CString,
    argv: &'a [*const libc::c_char],
    null: RawFd,
    report: RawFd,
    fds: WorldFds,
    cpu: Option<usize>,
}

impl Child<'_> {
    /// In the child: descriptors, CPU, process group, parent-death signal,
    /// then exec. Never returns: a failure is written to the report pipe
    /// and the child exits.
    fn exec(&self) -> ! {
        let error = self.prepare().err().unwrap_or_else(|| {
            // SAFETY: the program and argument strings and the
            // NULL-terminated vector live in the parent's copied memory.
            unsafe { libc::execv(self.program.as_ptr(), self.argv.as_ptr()) };
            std::io::Error::last_os_error()
        });
        let errno = error.raw_os_error().unwrap_or(libc::EIO).to_ne_bytes();
        // SAFETY: write and _exit on our own descriptor; nothing else runs.
        unsafe {
            libc::write(self.report, errno.as_ptr().cast(), errno.len());
            libc::_exit(127)
        }
    }

    fn prepare(&self) -> std::io::Result<()> {
        let check = |result: libc::c_int| {
            if result < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(result)
            }
        };
        // SAFETY: fcntl, dup2, sched_setaffinity, setpgid and prctl on this
        // process's own descriptors and attributes.
        unsafe {
            // Move every descriptor out of the way first, so no dup2
            // clobbers another; dup2 leaves the new ones without CLOEXEC.
            let copy = |fd: RawFd| check(libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100));
            let ram = copy(self.fds.ram)?;
            let channel = copy(self.fds.channel)?;
            let pool = self.fds.pool.map(copy).transpose()?;
            let aliases = self.fds.aliases.map(copy).transpose()?;
            check(libc::dup2(self.null, 0))?;
            check(libc::dup2(self.null, 1))?;
            check(libc::dup2(ram, RAM_FD))?;
            check(libc::dup2(channel, CHANNEL_FD))?;
            if let Some(pool) = pool {
                check(libc::dup2(pool, POOL_FD))?;
            }
            if let Some(aliases) = aliases {
                check(libc::dup2(aliases, ALIAS_FD))?;
            }
            if let Some(cpu) = self.cpu {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                check(libc::sched_setaffinity(
                    0,
                    std::mem::size_of::<libc::cpu_set_t>(),
                    &raw const set,
                ))?;
            }
            check(libc::setpgid(0, 0))?;
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        }
        Ok(())
    }
}
