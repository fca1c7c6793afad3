//! Least privilege for the world process (DESIGN.md section 2, threat
//! model): assume the guest owns the process. 64-bit code that never traps
//! can reach the monitor's own `syscall` instructions above 4 GiB, so the
//! filter's allow-list is not the only wall: the process also gives up its
//! user id, its capabilities, its view of the host (namespaces and an empty
//! root directory), its other descriptors and its core dumps, before the
//! filter goes on and the guest runs.
//!
//! Every step runs once, single-threaded, after the world opened what it
//! needs (guest RAM, the channel, perf events, the timer) and before
//! seccomp. A step the host refuses is recorded in [`Sandbox::missing`]
//! together with what its absence leaves open, and the world goes on: the
//! filter still stands.

use std::os::fd::RawFd;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::resource::Resource;
use nix::unistd::{Gid, Uid};

/// The user and group id the world runs as when btvmm starts as root:
/// Debian's `nobody`/`nogroup`, which own no files.
pub const SANDBOX_ID: u32 = 65534;

/// What the lockdown achieved.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// Steps the host refused, each with what that leaves open.
    pub missing: Vec<String>,
}

impl Sandbox {
    fn missing(&mut self, step: &str, error: impl std::fmt::Display, leaves: &str) {
        self.missing.push(format!("{step} ({error}): {leaves}"));
    }
}

/// Locks this process down, keeping only the descriptors in `keep` (and
/// standard input, output and error, which the host pointed at /dev/null,
/// /dev/null and its own standard error). `parent` is what getppid said
/// at start: the launcher, which this one must die with (0 in a PID
/// namespace of its own, where the parent is outside: the check below
/// then cannot see the launcher die, the parent-death signal still does).
pub fn lock_down(keep: &[RawFd], parent: libc::pid_t) -> Sandbox {
    let mut sandbox = Sandbox::default();
    // The launcher starts each world as process 1 of a PID namespace of
    // its own where the host allows it (spawn::spawn).
    if nix::unistd::getpid().as_raw() != 1 {
        sandbox.missing(
            "a PID namespace",
            "the launcher could not create one",
            "the world sees the host's process ids (its filter allows no call that names \
             another process)",
        );
    }
    close_other_descriptors(keep, &mut sandbox);
    drop_user(&mut sandbox);
    let namespaces = enter_namespaces(&mut sandbox);
    if namespaces {
        empty_root(&mut sandbox);
    }
    limit_resources(keep, &mut sandbox);
    drop_capabilities(&mut sandbox);
    // Changing credentials cleared the parent-death signal and made the
    // process dumpable again (or not): set both last.
    if let Err(error) = nix::sys::prctl::set_dumpable(false) {
        sandbox.missing(
            "no core dumps (PR_SET_DUMPABLE)",
            error,
            "a crash could dump guest memory to a core file",
        );
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    }
    if nix::unistd::getppid().as_raw() != parent {
        // The host died before the signal was armed again.
        // SAFETY: ends this process at once.
        unsafe { libc::_exit(1) }
    }
    sandbox
}

/// Closes every descriptor above standard error that is not in `keep`,
/// whatever leaked in (the host marks its own close-on-exec, but a
/// library's descriptor without the flag would otherwise reach the guest).
fn close_other_descriptors(keep: &[RawFd], sandbox: &mut Sandbox) {
    let mut kept: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .filter(|&fd| fd > 2)
        .collect();
    kept.sort_unstable();
    kept.dedup();
    let mut from = 3u32;
    for fd in kept.into_iter().chain([u32::MAX]) {
        if fd > from {
            // SAFETY: close_range closes descriptors of this process only;
            // none in the range is owned by a live Rust object (the kept
            // ones are outside it).
            let closed = unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0) };
            if closed != 0 {
                sandbox.missing(
                    "closing inherited descriptors (close_range)",
                    std::io::Error::last_os_error(),
                    "descriptors the world inherited stay open",
                );
                return;
            }
        }
        from = fd.saturating_add(1);
    }
}

/// Root gives up its user and groups for [`SANDBOX_ID`]: files owned by
/// root are then out of reach even where a namespace is missing. (An
/// unprivileged btvmm already runs as its user, without capabilities.)
fn drop_user(sandbox: &mut Sandbox) {
    if !Uid::effective().is_root() {
        return;
    }
    let id = Uid::from_raw(SANDBOX_ID);
    let group = Gid::from_raw(SANDBOX_ID);
    let dropped = nix::unistd::setgroups(&[])
        .and_then(|()| nix::unistd::setresgid(group, group, group))
        .and_then(|()| nix::unistd::setresuid(id, id, id));
    if let Err(error) = dropped {
        sandbox.missing(
            "giving up root for nobody",
            error,
            "the world keeps root's user id (and its capabilities until they are dropped)",
        );
    }
}

/// New user, network, IPC, mount and UTS namespaces: no network devices,
/// no host System V IPC, mounts of its own. The user namespace gives this
/// process capabilities over the new namespaces only, which it drops at
/// the end. Returns whether the namespaces exist.
fn enter_namespaces(sandbox: &mut Sandbox) -> bool {
    if let Err(error) = nix::sched::unshare(CloneFlags::CLONE_NEWUSER) {
        sandbox.missing(
            "a user namespace",
            error,
            "no network, IPC or mount namespaces and no empty root either; the host's \
             network, System V IPC and file system stay reachable to the allowed system calls",
        );
        return false;
    }
    if let Err(error) = nix::sched::unshare(
        CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS,
    ) {
        sandbox.missing(
            "network, IPC, mount and UTS namespaces",
            error,
            "the host's network, System V IPC and file system stay reachable to the allowed \
             system calls",
        );
        return false;
    }
    true
}

/// Makes an empty, read-only tmpfs the root directory (in the world's own
/// mount namespace): no path names a host file any more.
fn empty_root(sandbox: &mut Sandbox) {
    const POINT: &str = "/tmp";
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let rooted = nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .and_then(|()| nix::mount::mount(Some("tmpfs"), POINT, Some("tmpfs"), flags, Some("size=4k")))
    .and_then(|()| nix::unistd::chdir(POINT))
    .and_then(|()| nix::unistd::chroot("."))
    .and_then(|()| nix::unistd::chdir("/"));
    if let Err(error) = rooted {
        sandbox.missing(
            "an empty root directory",
            error,
            "host files stay nameable (though not openable: open is not allowed)",
        );
    }
}

/// No core files, no new processes, no more descriptors than it has, no
/// locked memory, no message queues.
fn limit_resources(keep: &[RawFd], sandbox: &mut Sandbox) {
    let highest = keep.iter().copied().max().unwrap_or(2).max(2);
    let descriptors = u64::try_from(highest).unwrap_or(u64::MAX).saturating_add(1);
    for (resource, limit, name) in [
        (Resource::RLIMIT_CORE, 0, "RLIMIT_CORE"),
        (Resource::RLIMIT_NPROC, 0, "RLIMIT_NPROC"),
        (Resource::RLIMIT_NOFILE, descriptors, "RLIMIT_NOFILE"),
        (Resource::RLIMIT_MEMLOCK, 0, "RLIMIT_MEMLOCK"),
        (Resource::RLIMIT_MSGQUEUE, 0, "RLIMIT_MSGQUEUE"),
    ] {
        if let Err(error) = nix::sys::resource::setrlimit(resource, limit, limit) {
            sandbox.missing(name, error, "that resource stays unlimited");
        }
    }
}

/// Empties every capability set (effective, permitted, inheritable,
/// ambient and the bounding set): whatever the namespaces gave, nothing
/// is left.
fn drop_capabilities(sandbox: &mut Sandbox) {
    // The bounding set first: dropping from it needs CAP_SETPCAP, which
    // goes with the other sets.
    for capability in caps::all() {
        if let Err(error) = caps::drop(None, caps::CapSet::Bounding, capability) {
            // EPERM without CAP_SETPCAP (an unprivileged btvmm without a
            // user namespace): the bounding set only limits what exec can
            // grant, and exec is not allowed.
            if !Uid::effective().is_root()
                && caps::read(None, caps::CapSet::Permitted)
                    .is_ok_and(|permitted| permitted.is_empty())
            {
                break;
            }
            sandbox.missing(
                "emptying the capability bounding set",
                error,
                "exec could grant capabilities, but exec is not allowed",
            );
            break;
        }
    }
    for set in [
        caps::CapSet::Ambient,
        caps::CapSet::Inheritable,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ] {
        if let Err(error) = caps::clear(None, set) {
            sandbox.missing(
                "dropping capabilities",
                error,
                "the world keeps capabilities (over its own namespaces if it has them)",
            );
        }
    }
}
