//! The host <-> world channel: one shared page with a futex word
//! (DESIGN.md section 1, step 5).
//!
//! Protocol: the world owns the page while `state` is RUNNING. To exit, it
//! writes the exit fields, stores EXIT (release), wakes the host and waits
//! while the state stays EXIT. The host waits while the state is RUNNING,
//! reads the exit (acquire), writes the reply, stores RUNNING (release) and
//! wakes the world. Each side only writes the page while it owns it, and
//! the release/acquire pair on `state` orders the fields. The world is
//! untrusted: the host validates every field it reads.
//!
//! Interrupts: the interrupt controllers and the timer run in the world
//! (devices::chipset), which arms its own host timer (sys::timer). One
//! field crosses outside the ownership rule: the levels of the host
//! devices' interrupt lines (host -> world). A change is never missed: the
//! host stores the levels first and then, if the world owns the page (it
//! is running guest code, the monitor, or sleeping in a guest HLT), sends
//! it the kick signal. The monitor reads the levels while handling each
//! trap, with every signal blocked; a kick sent after that read stays
//! pending and arrives the moment the monitor returns into the guest (or
//! ends its HLT sleep at once), so the next read sees the change. While
//! the world waits for a reply the host owns the page and updates the
//! levels before replying.
//!
//! Both sides tell time with CLOCK_MONOTONIC from the epoch the host
//! records at boot.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use btvmm_core::{Exit, Reply, StopReason};

use crate::WorldError;
use crate::sys::futex;
use crate::sys::memory::SharedRegion;

const RUNNING: u32 = 0;
const EXIT: u32 = 1;

const EXIT_PORT_IN: u32 = 1;
const EXIT_PORT_OUT: u32 = 2;
const EXIT_HALT: u32 = 3;
const EXIT_STOP_TRIPLE: u32 = 10;
const EXIT_STOP_UNSUPPORTED: u32 = 11;
const EXIT_STOP_ESCAPE: u32 = 12;
const EXIT_STOP_INTERNAL: u32 = 13;

const REPLY_CONTINUE: u32 = 0;
const REPLY_VALUE: u32 = 1;
const REPLY_TERMINATE: u32 = 2;

/// Counters the channel carries.
pub const COUNTERS: usize = 96;
const MESSAGE_WORDS: usize = 128;

/// The initial guest state the host hands to the world.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootState {
    /// EIP (with the boot code segment flat at base 0).
    pub eip: u32,
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ESP.
    pub esp: u32,
}

#[repr(C)]
struct Page {
    state: AtomicU32,
    irq_levels: AtomicU32,
    epoch_ns: AtomicU64,
    exit_kind: AtomicU32,
    exit_args: [AtomicU32; 3],
    reply_kind: AtomicU32,
    reply_value: AtomicU32,
    message_len: AtomicU32,
    message: [AtomicU32; MESSAGE_WORDS],
    boot: [AtomicU32; 4],
    counters: [AtomicU64; COUNTERS],
}

/// Size of the shared region.
pub const CHANNEL_BYTES: usize = 4096;
const _: () = assert!(std::mem::size_of::<Page>() <= CHANNEL_BYTES);

/// One end of the channel.
#[derive(Debug)]
pub struct Channel {
    region: SharedRegion,
}

impl Channel {
    /// Wraps a shared region of at least [`CHANNEL_BYTES`].
    pub fn new(region: SharedRegion) -> Result<Self, WorldError> {
        if region.size() < CHANNEL_BYTES {
            return Err(WorldError::RamSize(region.size()));
        }
        Ok(Self { region })
    }

    /// The region (to hand its descriptor to the world).
    #[must_use]
    pub fn region(&self) -> &SharedRegion {
        &self.region
    }

    fn page(&self) -> &Page {
        // SAFETY: the region is a page-aligned shared mapping of at least
        // size_of::<Page>() bytes (checked in new), zero-initialised by
        // ftruncate; every field is an atomic, valid for any bit pattern,
        // and shared access to atomics is sound across processes.
        unsafe { &*self.region.as_ptr().cast::<Page>() }
    }

    /// Host: records the boot state for the world.
    pub fn set_boot(&self, boot: BootState) {
        let page = self.page();
        for (slot, value) in page
            .boot
            .iter()
            .zip([boot.eip, boot.eax, boot.ebx, boot.esp])
        {
            slot.store(value, Ordering::Relaxed);
        }
    }

    /// World: the boot state.
    #[must_use]
    pub fn boot(&self) -> BootState {
        let boot = &self.page().boot;
        BootState {
            eip: boot[0].load(Ordering::Relaxed),
            eax: boot[1].load(Ordering::Relaxed),
            ebx: boot[2].load(Ordering::Relaxed),
            esp: boot[3].load(Ordering::Relaxed),
        }
    }

    /// World: hands `exit` to the host and waits for the reply.
    pub fn exit(&self, exit: &Exit) -> Reply {
        let page = self.page();
        let (kind, args, message) = match exit {
            Exit::PortIn { port, size } => {
                (EXIT_PORT_IN, [u32::from(*port), u32::from(*size), 0], None)
            }
            Exit::PortOut { port, size, value } => (
                EXIT_PORT_OUT,
                [u32::from(*port), u32::from(*size), *value],
                None,
            ),
            Exit::Halt { interrupts_enabled } => {
                (EXIT_HALT, [u32::from(*interrupts_enabled), 0, 0], None)
            }
            Exit::Stop(reason) => match reason {
                StopReason::TripleFault => (EXIT_STOP_TRIPLE, [0; 3], None),
                StopReason::Unsupported(text) => (EXIT_STOP_UNSUPPORTED, [0; 3], Some(text)),
                StopReason::GuestEscape(text) => (EXIT_STOP_ESCAPE, [0; 3], Some(text)),
                StopReason::Internal(text) => (EXIT_STOP_INTERNAL, [0; 3], Some(text)),
            },
        };
        page.exit_kind.store(kind, Ordering::Relaxed);
        for (slot, value) in page.exit_args.iter().zip(args) {
            slot.store(value, Ordering::Relaxed);
        }
        if let Some(text) = message {
            write_message(page, text);
        }
        page.state.store(EXIT, Ordering::Release);
        futex::wake(&page.state);
        while page.state.load(Ordering::Acquire) == EXIT {
            futex::wait(&page.state, EXIT, None);
        }
        match page.reply_kind.load(Ordering::Relaxed) {
            REPLY_VALUE => Reply::Value(page.reply_value.load(Ordering::Relaxed)),
            REPLY_TERMINATE => Reply::Terminate,
            _ => Reply::Continue,
        }
    }

    /// Host: waits up to `timeout` for an exit. Fields come from the
    /// untrusted world: anything malformed becomes a Stop.
    #[must_use]
    pub fn wait_exit(&self, timeout: Duration) -> Option<Exit> {
        let page = self.page();
        if page.state.load(Ordering::Acquire) == RUNNING {
            futex::wait(&page.state, RUNNING, Some(timeout));
            if page.state.load(Ordering::Acquire) == RUNNING {
                return None;
            }
        }
        let args: Vec<u32> = page
            .exit_args
            .iter()
            .map(|arg| arg.load(Ordering::Relaxed))
            .collect();
        let size = u8::try_from(args[1])
            .ok()
            .filter(|size| matches!(size, 1 | 2 | 4));
        let port = u16::try_from(args[0]).ok();
        let malformed = || Exit::Stop(StopReason::Internal("malformed exit from the world".into()));
        Some(match page.exit_kind.load(Ordering::Relaxed) {
            EXIT_PORT_IN => match (port, size) {
                (Some(port), Some(size)) => Exit::PortIn { port, size },
                _ => malformed(),
            },
            EXIT_PORT_OUT => match (port, size) {
                (Some(port), Some(size)) => Exit::PortOut {
                    port,
                    size,
                    value: args[2],
                },
                _ => malformed(),
            },
            EXIT_HALT => Exit::Halt {
                interrupts_enabled: args[0] != 0,
            },
            EXIT_STOP_TRIPLE => Exit::Stop(StopReason::TripleFault),
            EXIT_STOP_UNSUPPORTED => Exit::Stop(StopReason::Unsupported(read_message(page))),
            EXIT_STOP_ESCAPE => Exit::Stop(StopReason::GuestEscape(read_message(page))),
            EXIT_STOP_INTERNAL => Exit::Stop(StopReason::Internal(read_message(page))),
            _ => malformed(),
        })
    }

    /// Host: answers the pending exit and lets the world run.
    pub fn reply(&self, reply: Reply) {
        let page = self.page();
        let (kind, value) = match reply {
            Reply::Continue => (REPLY_CONTINUE, 0),
            Reply::Value(value) => (REPLY_VALUE, value),
            Reply::Terminate => (REPLY_TERMINATE, 0),
        };
        page.reply_kind.store(kind, Ordering::Relaxed);
        page.reply_value.store(value, Ordering::Relaxed);
        page.state.store(RUNNING, Ordering::Release);
        futex::wake(&page.state);
    }

    /// Host: records the clock's epoch (CLOCK_MONOTONIC nanoseconds at
    /// boot).
    pub fn set_epoch(&self, epoch_ns: u64) {
        self.page().epoch_ns.store(epoch_ns, Ordering::Relaxed);
    }

    /// The epoch (CLOCK_MONOTONIC nanoseconds at boot).
    #[must_use]
    pub fn epoch_ns(&self) -> u64 {
        self.page().epoch_ns.load(Ordering::Relaxed)
    }

    /// Host: sets the levels of the host devices' interrupt lines (bit n =
    /// IRQ n). Returns whether the world owns the page, i.e. whether a
    /// change needs a kick signal to be noticed soon.
    pub fn set_irq_levels(&self, levels: u16) -> bool {
        let page = self.page();
        page.irq_levels.store(u32::from(levels), Ordering::SeqCst);
        page.state.load(Ordering::SeqCst) == RUNNING
    }

    /// World: the levels of the host devices' interrupt lines.
    #[must_use]
    pub fn irq_levels(&self) -> u16 {
        #[allow(clippy::cast_possible_truncation)] // only 16 lines exist
        let levels = self.page().irq_levels.load(Ordering::SeqCst) as u16;
        levels
    }

    /// World: publishes counters.
    pub fn publish_counters(&self, counters: &[u64]) {
        for (slot, value) in self.page().counters.iter().zip(counters) {
            slot.store(*value, Ordering::Relaxed);
        }
    }

    /// Host: the last published counters.
    #[must_use]
    pub fn counters(&self) -> Vec<u64> {
        self.page()
            .counters
            .iter()
            .map(|counter| counter.load(Ordering::Relaxed))
            .collect()
    }
}

/// CLOCK_MONOTONIC in nanoseconds through the vDSO (no system call on
/// hosts with a TSC clock source; clock_gettime is on the world's
/// allow-list for the others). The vDSO reads the TSC: a process whose
/// RDTSC faults uses [`monotonic_ns_syscall`]. Async-signal-safe.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    timespec_ns(&now)
}

/// CLOCK_MONOTONIC in nanoseconds through the system call, which works
/// whatever PR_SET_TSC says. Async-signal-safe.
#[must_use]
pub fn monotonic_ns_syscall() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the clock_gettime system call writes one timespec into a
    // live local.
    unsafe { libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &raw mut now) };
    timespec_ns(&now)
}

/// The host's time-stamp counter (for measurements against
/// [`monotonic_ns`]).
#[must_use]
pub fn read_tsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; user-space RDTSC is allowed on
    // Linux hosts unless a process asked otherwise (PR_SET_TSC), which
    // the callers of this function do not.
    unsafe { std::arch::x86_64::_rdtsc() }
}

fn timespec_ns(now: &libc::timespec) -> u64 {
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    seconds.saturating_mul(1_000_000_000).saturating_add(nanos)
}

fn write_message(page: &Page, text: &str) {
    let bytes = text.as_bytes();
    let len = bytes.len().min(MESSAGE_WORDS * 4);
    for (index, word) in page.message.iter().enumerate() {
        let mut chunk = [0u8; 4];
        for (offset, byte) in chunk.iter_mut().enumerate() {
            if let Some(&value) = bytes
                .get(index * 4 + offset)
                .filter(|_| index * 4 + offset < len)
            {
                *byte = value;
            }
        }
        word.store(u32::from_le_bytes(chunk), Ordering::Relaxed);
    }
    // Bounded by MESSAGE_WORDS * 4.
    #[allow(clippy::cast_possible_truncation)]
    page.message_len.store(len as u32, Ordering::Relaxed);
}

fn read_message(page: &Page) -> String {
    let len = (page.message_len.load(Ordering::Relaxed) as usize).min(MESSAGE_WORDS * 4);
    let bytes: Vec<u8> = page
        .message
        .iter()
        .flat_map(|word| word.load(Ordering::Relaxed).to_le_bytes())
        .take(len)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_and_replies_cross_between_threads() {
        let host =
            Channel::new(SharedRegion::create(CHANNEL_BYTES).expect("memfd")).expect("channel");
        // The world side maps the same memfd.
        let fd = nix::unistd::dup(host.region().fd()).expect("dup");
        let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
        // SAFETY: a fresh duplicate of the channel memfd, owned by the new
        // region.
        let world =
            Channel::new(unsafe { SharedRegion::from_raw_fd(raw, CHANNEL_BYTES) }.expect("map"))
                .expect("channel");
        host.set_boot(BootState {
            eip: 0x10_0000,
            eax: 0x2bad_b002,
            ebx: 0x9000,
            esp: 0,
        });
        assert_eq!(world.boot().eax, 0x2bad_b002);
        assert_eq!(host.wait_exit(Duration::from_millis(10)), None);

        let world_thread = std::thread::spawn(move || {
            let first = world.exit(&Exit::PortIn {
                port: 0x3fd,
                size: 1,
            });
            let second = world.exit(&Exit::Stop(StopReason::Unsupported("task gates".into())));
            world.publish_counters(&[1, 2, 3]);
            (first, second, world)
        });
        let exit = loop {
            if let Some(exit) = host.wait_exit(Duration::from_millis(100)) {
                break exit;
            }
        };
        assert_eq!(
            exit,
            Exit::PortIn {
                port: 0x3fd,
                size: 1
            }
        );
        host.reply(Reply::Value(0x60));
        let exit = loop {
            if let Some(exit) = host.wait_exit(Duration::from_millis(100)) {
                break exit;
            }
        };
        assert_eq!(
            exit,
            Exit::Stop(StopReason::Unsupported("task gates".into()))
        );
        host.reply(Reply::Terminate);
        let (first, second, _world) = world_thread.join().expect("world thread");
        assert_eq!(first, Reply::Value(0x60));
        assert_eq!(second, Reply::Terminate);
        assert_eq!(&host.counters()[..3], &[1, 2, 3]);
    }
}
