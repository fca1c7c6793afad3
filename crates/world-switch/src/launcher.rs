//! The launcher: the one process that starts world processes.
//!
//! The btvmm process confines itself with a seccomp filter once a VM is
//! set up (sys::host_filter). Starting a world needs `clone` and `execve`,
//! which no filter can pin to one program (the path is in memory, which a
//! filter cannot read); a btvmm process allowed them could run anything.
//! So btvmm starts this small process first, before it reads any guest
//! input, and asks it over a socket: "start a world with these
//! descriptors" (the launcher builds the world's command line itself from
//! a few checked numbers and always runs `btvmm __world`), "has this world
//! ended", "how much memory does it use". The launcher answers only about
//! its own children and hands back a pidfd per world, so btvmm can signal
//! its worlds and nothing else (`pidfd_send_signal`; `kill` is not on its
//! allow-list). It dies with btvmm (PR_SET_PDEATHSIG) and the worlds die
//! with it.
//!
//! Messages are datagrams on a SOCK_SEQPACKET pair (a message is never
//! torn or merged), encoded with bincode with a size limit; descriptors
//! travel as SCM_RIGHTS.

use std::collections::HashSet;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use serde::{Deserialize, Serialize};

use crate::WorldError;

/// Descriptor number of the launcher's socket in the launcher.
pub const LAUNCHER_FD: RawFd = 3;

/// Largest message either side sends or accepts.
const MESSAGE_BYTES: usize = 512;
/// Most descriptors one message carries (RAM, channel, pool, aliases).
const MAX_FDS: usize = 4;

/// What a world is started with (the launcher turns it into the world's
/// command line; see `host-loader`'s `__world` subcommand).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorldSpec {
    /// Bytes of guest RAM.
    pub ram_size: u32,
    /// Index in the pool of address spaces (None: no pool).
    pub member: Option<u32>,
    /// The split code view (the alias memfd comes along).
    pub split: bool,
    /// How the monitor runs guest kernel code.
    pub exec: btvmm_core::ExecMode,
    /// Trace the monitor to standard error.
    pub trace: bool,
    /// The CPU the world is pinned to.
    pub cpu: Option<u32>,
    /// Attacker tests only: scribble (seed, victim pid) instead of running.
    pub scribble: Option<(u64, i32)>,
    /// Attacker tests only: leak a `syscall; ret` address at this
    /// guest-physical address.
    pub leak_syscall_gadget: Option<u32>,
}

/// Largest pool index a world can have (host-loader allows 8 members).
const MAX_MEMBER: u32 = 63;

impl WorldSpec {
    /// Descriptors that come with the request: RAM, channel, then the pool
    /// with a member index, then the aliases with the split view.
    #[must_use]
    pub fn descriptors(&self) -> usize {
        2 + usize::from(self.member.is_some()) + usize::from(self.split)
    }

    /// Checks what a (possibly compromised) btvmm process asked for.
    fn check(&self) -> Result<(), String> {
        if self.ram_size == 0 || !self.ram_size.is_multiple_of(4096) {
            return Err(format!("guest RAM of {} bytes", self.ram_size));
        }
        if self.member.is_some_and(|member| member > MAX_MEMBER) {
            return Err(format!("pool member {:?}", self.member));
        }
        if self.cpu.is_some_and(|cpu| cpu >= 1024) {
            return Err(format!("CPU {:?}", self.cpu));
        }
        Ok(())
    }

    /// The world's command line after the executable.
    #[must_use]
    pub fn arguments(&self) -> Vec<String> {
        let mut args = vec![
            "__world".to_owned(),
            "--ram-size".to_owned(),
            self.ram_size.to_string(),
        ];
        if self.trace {
            args.push("--trace".to_owned());
        }
        if let Some(member) = self.member {
            args.extend(["--member".to_owned(), member.to_string()]);
        }
        if self.split {
            args.push("--split".to_owned());
        }
        if self.exec != btvmm_core::ExecMode::Auto {
            args.extend(["--exec".to_owned(), self.exec.name().to_owned()]);
        }
        if let Some((seed, victim)) = self.scribble {
            args.extend([
                "--scribble".to_owned(),
                seed.to_string(),
                "--scribble-victim".to_owned(),
                victim.to_string(),
            ]);
        }
        if let Some(guest_phys) = self.leak_syscall_gadget {
            args.extend([
                "--leak-syscall-gadget".to_owned(),
                format!("{guest_phys:#x}"),
            ]);
        }
        args
    }
}

/// A world's memory as the host kernel counts it (/proc/PID/status and
/// maps).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorldMemory {
    /// Host page tables, KiB (VmPTE).
    pub page_tables_kib: u64,
    /// Private memory touched, KiB (RssAnon): the monitor's heap (shadow
    /// entries, decode caches) and stacks.
    pub anonymous_kib: u64,
    /// Shared memory touched through this process, KiB (RssShmem): guest
    /// RAM and the channels.
    pub shared_kib: u64,
    /// Mappings (lines of /proc/PID/maps): shadow runs, mostly.
    pub mappings: u64,
}

impl WorldMemory {
    /// Reads process `pid`'s counters.
    #[must_use]
    pub fn of(pid: i32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        Some(Self::parse(&status, &maps))
    }

    fn parse(status: &str, maps: &str) -> Self {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|value| value.parse().ok())
                .unwrap_or(0)
        };
        Self {
            page_tables_kib: field("VmPTE:"),
            anonymous_kib: field("RssAnon:"),
            shared_kib: field("RssShmem:"),
            mappings: maps.lines().count() as u64,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// Start a world; the descriptors come along.
    Spawn(WorldSpec),
    /// Has world `pid` ended (wait for it with `block`)?
    Wait { pid: i32, block: bool },
    /// World `pid`'s memory.
    Memory { pid: i32 },
}

#[derive(Debug, Serialize, Deserialize)]
enum Response {
    /// Started; its pidfd comes along.
    Spawned { pid: i32 },
    /// The raw wait status if it ended (then it is forgotten).
    Status(Option<i32>),
    /// Its memory, if it could be read.
    Memory(Option<WorldMemory>),
    /// The request was refused or failed.
    Refused(String),
}

fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Requests and responses are small enums of integers and short
    // strings: encoding into a Vec cannot fail.
    bincode::serialize(message).unwrap_or_default()
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(MESSAGE_BYTES as u64)
        .reject_trailing_bytes()
        .deserialize(bytes)
        .map_err(|error| error.to_string())
}

fn host_error(what: &'static str, source: impl Into<std::io::Error>) -> WorldError {
    WorldError::Host {
        what,
        source: source.into(),
    }
}

/// Sends `message` with `fds`.
fn send<T: Serialize>(socket: RawFd, message: &T, fds: &[RawFd]) -> std::io::Result<()> {
    let bytes = encode(message);
    let iov = [IoSlice::new(&bytes)];
    let rights = [ControlMessage::ScmRights(fds)];
    let control: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(socket, &iov, control, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Receives one message and the descriptors that came with it (None at
/// the end of the stream).
fn receive(socket: RawFd) -> std::io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut bytes = vec![0u8; MESSAGE_BYTES];
    let mut control = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (length, fds, truncated) = {
        let mut iov = [IoSliceMut::new(&mut bytes)];
        let message = recvmsg::<()>(
            socket,
            &mut iov,
            Some(&mut control),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for control in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = control {
                for fd in received {
                    // SAFETY: the kernel just installed `fd` in this
                    // process for this message; nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        let truncated = message
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        (message.bytes, fds, truncated)
    };
    if length == 0 && fds.is_empty() {
        return Ok(None);
    }
    if truncated {
        return Err(std::io::Error::other("a message longer than allowed"));
    }
    bytes.truncate(length);
    Ok(Some((bytes, fds)))
}

/// The host's side: the launcher process and the socket to it.
#[derive(Debug)]
pub struct Launcher {
    socket: OwnedFd,
    process: Child,
}

/// A world process as the host sees it: its pid and a pidfd, the only way
/// the host can signal it.
#[derive(Debug)]
pub struct WorldProcess {
    pid: i32,
    pidfd: OwnedFd,
}

impl WorldProcess {
    /// Its pid.
    #[must_use]
    pub const fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends it `signal`.
    pub fn signal(&self, signal: i32) -> Result<(), WorldError> {
        // SAFETY: pidfd_send_signal with our own pidfd, a signal number,
        // no siginfo and no flags.
        let result = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if result != 0 {
            return Err(host_error(
                "signalling a world",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Its pidfd (for the host's filter, which allows signals through it).
    #[must_use]
    pub fn pidfd(&self) -> RawFd {
        self.pidfd.as_raw_fd()
    }
}

impl Launcher {
    /// Starts `exe __launcher` (exe: btvmm itself).
    pub fn start(exe: &Path) -> Result<Self, WorldError> {
        let (host_end, launcher_end) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|errno| host_error("socketpair for the launcher", errno))?;
        let launcher_raw = launcher_end.as_raw_fd();
        let host = std::process::id();
        let mut command = Command::new(exe);
        command
            .args(["__launcher", "--host", &host.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            // The terminal's signals reach only btvmm, which ends the VM.
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and
        // makes only async-signal-safe calls (dup2, prctl) on a descriptor
        // the parent keeps open across the fork.
        unsafe {
            command.pre_exec(move || {
                // dup2 leaves LAUNCHER_FD without CLOEXEC, the original
                // keeps it.
                if libc::dup2(launcher_raw, LAUNCHER_FD) < 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let process = command
            .spawn()
            .map_err(|source| host_error("starting the launcher", source))?;
        drop(launcher_end);
        Ok(Self {
            socket: host_end,
            process,
        })
    }

    /// The launcher's pid (for the host's filter).
    #[must_use]
    pub fn pid(&self) -> i32 {
        i32::try_from(self.process.id()).unwrap_or(-1)
    }

    /// The socket (for the host's filter).
    #[must_use]
    pub fn socket(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    fn ask(
        &self,
        request: &Request,
        fds: &[RawFd],
    ) -> Result<(Response, Vec<OwnedFd>), WorldError> {
        send(self.socket.as_raw_fd(), request, fds)
            .map_err(|error| host_error("asking the launcher", error))?;
        match receive(self.socket.as_raw_fd()) {
            Ok(Some((bytes, fds))) => match decode::<Response>(&bytes) {
                Ok(Response::Refused(why)) => Err(host_error(
                    "the launcher's answer",
                    std::io::Error::other(why),
                )),
                Ok(response) => Ok((response, fds)),
                Err(why) => Err(host_error(
                    "reading the launcher's answer",
                    std::io::Error::other(why),
                )),
            },
            Ok(None) => Err(host_error(
                "the launcher",
                std::io::Error::other("it ended"),
            )),
            Err(error) => Err(host_error("reading the launcher's answer", error)),
        }
    }

    /// Starts a world with guest RAM, the channel, the pool (with a
    /// member index) and the aliases (with the split view).
    pub fn spawn(&self, spec: &WorldSpec, fds: &[RawFd]) -> Result<WorldProcess, WorldError> {
        let (response, mut received) = self.ask(&Request::Spawn(spec.clone()), fds)?;
        match (response, received.pop()) {
            (Response::Spawned { pid }, Some(pidfd)) if received.is_empty() => {
                Ok(WorldProcess { pid, pidfd })
            }
            (response, _) => Err(host_error(
                "starting a world",
                std::io::Error::other(format!("unexpected answer {response:?}")),
            )),
        }
    }

    /// The wait status of `world` if it has ended.
    pub fn try_wait(&self, world: &WorldProcess) -> Result<Option<ExitStatus>, WorldError> {
        self.status(world, false)
    }

    /// Waits for `world` to end.
    pub fn wait(&self, world: &WorldProcess) -> Result<ExitStatus, WorldError> {
        self.status(world, true)?.ok_or_else(|| {
            host_error(
                "waiting for a world",
                std::io::Error::other("the launcher did not wait"),
            )
        })
    }

    fn status(&self, world: &WorldProcess, block: bool) -> Result<Option<ExitStatus>, WorldError> {
        match self.ask(
            &Request::Wait {
                pid: world.pid,
                block,
            },
            &[],
        )? {
            (Response::Status(status), fds) if fds.is_empty() => {
                Ok(status.map(ExitStatus::from_raw))
            }
            (response, _) => Err(host_error(
                "waiting for a world",
                std::io::Error::other(format!("unexpected answer {response:?}")),
            )),
        }
    }

    /// `world`'s memory counters.
    pub fn memory(&self, world: &WorldProcess) -> Result<Option<WorldMemory>, WorldError> {
        match self.ask(&Request::Memory { pid: world.pid }, &[])? {
            (Response::Memory(memory), fds) if fds.is_empty() => Ok(memory),
            (response, _) => Err(host_error(
                "reading a world's memory",
                std::io::Error::other(format!("unexpected answer {response:?}")),
            )),
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        // The end of the stream tells the launcher to end its worlds and
        // itself.
        // SAFETY: shutdown on our own socket.
        unsafe {
            libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR);
        }
        let _ = self.process.wait();
    }
}

/// The launcher process (`btvmm __launcher`): serves requests on
/// [`LAUNCHER_FD`] until btvmm closes it, then ends its worlds. Never
/// returns.
pub fn serve(host: libc::pid_t) -> ! {
    // Already armed by the host before exec; a host that died in between
    // is noticed here.
    if nix::unistd::getppid().as_raw() != host {
        std::process::exit(1);
    }
    let code = match std::env::current_exe() {
        Ok(exe) => {
            let mut launcher = Serving {
                exe,
                worlds: HashSet::new(),
            };
            launcher.run();
            launcher.end_worlds();
            0
        }
        Err(error) => {
            eprintln!("btvmm: the launcher cannot find its executable: {error}");
            1
        }
    };
    std::process::exit(code)
}

struct Serving {
    exe: PathBuf,
    /// The worlds started and not yet waited for.
    worlds: HashSet<i32>,
}

impl Serving {
    fn run(&mut self) {
        loop {
            let (bytes, fds) = match receive(LAUNCHER_FD) {
                Ok(Some(message)) => message,
                Ok(None) => return,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    let _ = send(
                        LAUNCHER_FD,
                        &Response::Refused(format!("unreadable request: {error}")),
                        &[],
                    );
                    continue;
                }
            };
            let (response, pidfd) = match decode::<Request>(&bytes) {
                Ok(request) => self.answer(request, fds),
                Err(why) => (Response::Refused(format!("malformed request: {why}")), None),
            };
            let fds: Vec<RawFd> = pidfd.iter().map(AsRawFd::as_raw_fd).collect();
            if send(LAUNCHER_FD, &response, &fds).is_err() {
                return;
            }
        }
    }

    fn answer(&mut self, request: Request, fds: Vec<OwnedFd>) -> (Response, Option<OwnedFd>) {
        let refuse = |why: String| (Response::Refused(why), None);
        match request {
            Request::Spawn(spec) => {
                if let Err(why) = spec.check() {
                    return refuse(format!("no world with {why}"));
                }
                if fds.len() != spec.descriptors() {
                    return refuse(format!(
                        "a world needs {} descriptors, the request had {}",
                        spec.descriptors(),
                        fds.len()
                    ));
                }
                match self.spawn(&spec, &fds) {
                    Ok((pid, pidfd)) => (Response::Spawned { pid }, Some(pidfd)),
                    Err(error) => refuse(error.to_string()),
                }
            }
            Request::Wait { pid, block } if fds.is_empty() => {
                if !self.worlds.contains(&pid) {
                    return refuse(format!("process {pid} is no world"));
                }
                match wait(pid, block) {
                    Ok(status) => {
                        if status.is_some() {
                            self.worlds.remove(&pid);
                        }
                        (Response::Status(status), None)
                    }
                    Err(error) => refuse(format!("waiting for {pid}: {error}")),
                }
            }
            Request::Memory { pid } if fds.is_empty() => {
                if self.worlds.contains(&pid) {
                    (Response::Memory(WorldMemory::of(pid)), None)
                } else {
                    refuse(format!("process {pid} is no world"))
                }
            }
            _ => refuse("descriptors where none belong".into()),
        }
    }

    fn spawn(&mut self, spec: &WorldSpec, fds: &[OwnedFd]) -> Result<(i32, OwnedFd), WorldError> {
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let (ram, channel) = (raw[0], raw[1]);
        let mut rest = raw[2..].iter().copied();
        let pool = spec.member.and_then(|_| rest.next());
        let aliases = if spec.split { rest.next() } else { None };
        let cpu = spec.cpu.map(|cpu| cpu as usize);
        let child = crate::spawn::spawn(
            &self.exe,
            &spec.arguments(),
            crate::spawn::WorldFds {
                ram,
                channel,
                pool,
                aliases,
            },
            cpu,
        )?;
        let pid = child.pid;
        // The child is not waited for until asked: its pid cannot be
        // reused before the pidfd exists.
        // SAFETY: pidfd_open with our own child's pid and no flags.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        self.worlds.insert(pid);
        let pidfd = RawFd::try_from(pidfd)
            .ok()
            .filter(|&fd| fd >= 0)
            .ok_or_else(|| WorldError::MissingFeature {
                feature: "pidfd_open(2)",
                hint: "Linux 5.3 or later",
                source: std::io::Error::last_os_error(),
            })?;
        // SAFETY: pidfd_open just returned this new descriptor.
        Ok((pid, unsafe { OwnedFd::from_raw_fd(pidfd) }))
    }

    fn end_worlds(&mut self) {
        for &pid in &self.worlds {
            // SAFETY: kill(2) of our own child, not yet waited for.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for pid in self.worlds.drain() {
            let _ = wait(pid, true);
        }
    }
}

/// The raw wait status of child `pid` if it has ended (waits for it with
/// `block`).
fn wait(pid: i32, block: bool) -> std::io::Result<Option<i32>> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid for our own child into a local.
        let result =
            unsafe { libc::waitpid(pid, &raw mut status, if block { 0 } else { libc::WNOHANG }) };
        match result {
            0 => return Ok(None),
            result if result == pid => return Ok(Some(status)),
            _ => {
                let error = std::io::Error::last_os_error();
                if error.kind() != std::io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WorldSpec {
        WorldSpec {
            ram_size: 64 << 20,
            member: Some(2),
            split: true,
            exec: btvmm_core::ExecMode::Auto,
            trace: false,
            cpu: Some(1),
            scribble: None,
            leak_syscall_gadget: None,
        }
    }

    #[test]
    fn the_world_command_line_comes_from_checked_numbers() {
        assert_eq!(
            spec().arguments(),
            [
                "__world",
                "--ram-size",
                "67108864",
                "--member",
                "2",
                "--split"
            ]
        );
        assert_eq!(spec().descriptors(), 4);
        assert!(spec().check().is_ok());
        for bad in [
            WorldSpec {
                ram_size: 4097,
                ..spec()
            },
            WorldSpec {
                ram_size: 0,
                ..spec()
            },
            WorldSpec {
                member: Some(64),
                ..spec()
            },
            WorldSpec {
                cpu: Some(5000),
                ..spec()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let request = Request::Wait {
            pid: 42,
            block: true,
        };
        assert!(matches!(
            decode::<Request>(&encode(&request)),
            Ok(Request::Wait {
                pid: 42,
                block: true
            })
        ));
        assert!(decode::<Request>(&[0xff; 16]).is_err());
        assert!(decode::<Request>(&[]).is_err());
        let mut long = encode(&request);
        long.push(0);
        assert!(decode::<Request>(&long).is_err(), "trailing bytes");
        // A string length beyond the message cannot allocate.
        let mut huge = encode(&Response::Refused(String::new()));
        huge.truncate(4);
        huge.extend(u64::MAX.to_le_bytes());
        assert!(decode::<Response>(&huge).is_err());
    }

    #[test]
    fn memory_counters_parse_from_proc() {
        let status =
            "Name:\tbtvmm\nVmPTE:\t     92 kB\nRssAnon:\t    1624 kB\nRssShmem:\t 492 kB\n";
        let maps = "a\nb\nc\n";
        assert_eq!(
            WorldMemory::parse(status, maps),
            WorldMemory {
                page_tables_kib: 92,
                anonymous_kib: 1624,
                shared_kib: 492,
                mappings: 3,
            }
        );
    }
}
