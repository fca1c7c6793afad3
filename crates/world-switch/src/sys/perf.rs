//! Hardware execution breakpoints through perf events (DESIGN.md section
//! 2): `perf_event_open(PERF_TYPE_BREAKPOINT, HW_BREAKPOINT_X)` on this
//! thread with `sigtrap`, so a hit is a synchronous SIGTRAP (si_code
//! TRAP_PERF) in the world thread. Slots move with
//! PERF_EVENT_IOC_MODIFY_ATTRIBUTES, and only the slots that change.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use btvmm_core::GuestVirt;

use crate::WorldError;

const PERF_TYPE_BREAKPOINT: u32 = 5;
const HW_BREAKPOINT_X: u32 = 4;
/// `struct perf_event_attr` up to `sig_data` (PERF_ATTR_SIZE_VER7).
const ATTR_SIZE: u32 = 128;

// Bits of the attr flags word.
const DISABLED: u64 = 1 << 0;
const EXCLUDE_KERNEL: u64 = 1 << 5;
const EXCLUDE_HV: u64 = 1 << 6;
const REMOVE_ON_EXEC: u64 = 1 << 36;
const SIGTRAP: u64 = 1 << 37;

/// PERF_FLAG_FD_CLOEXEC.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
const IOC_ENABLE: libc::c_ulong = 0x2400;
const IOC_DISABLE: libc::c_ulong = 0x2401;
/// `_IOW('$', 11, __u64 *)`.
const IOC_MODIFY_ATTRIBUTES: libc::c_ulong = 0x4008_240b;

/// `struct perf_event_attr` (linux/perf_event.h), the fields we set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    bp_addr: u64,
    bp_len: u64,
    branch_sample_type: u64,
    sample_regs_user: u64,
    sample_stack_user: u32,
    clockid: i32,
    sample_regs_intr: u64,
    aux_watermark: u32,
    sample_max_stack: u16,
    reserved_2: u16,
    aux_sample_size: u32,
    reserved_3: u32,
    sig_data: u64,
}

const _: () = assert!(std::mem::size_of::<PerfEventAttr>() == ATTR_SIZE as usize);

fn attr(slot: usize, address: u64, disabled: bool) -> PerfEventAttr {
    PerfEventAttr {
        kind: PERF_TYPE_BREAKPOINT,
        size: ATTR_SIZE,
        sample_period: 1,
        flags: EXCLUDE_KERNEL
            | EXCLUDE_HV
            | REMOVE_ON_EXEC
            | SIGTRAP
            | if disabled { DISABLED } else { 0 },
        bp_type: HW_BREAKPOINT_X,
        bp_addr: address,
        bp_len: std::mem::size_of::<libc::c_long>() as u64,
        sig_data: slot as u64,
        ..PerfEventAttr::default()
    }
}

/// The breakpoint slots of the world thread.
#[derive(Debug)]
pub struct Breakpoints {
    events: Vec<OwnedFd>,
    armed: Vec<Option<GuestVirt>>,
    /// Number of PERF_EVENT_IOC_* calls made, for the counters.
    pub ioctls: u64,
}

/// Where an unused breakpoint points while disabled: a page-aligned address
/// in the never-mapped first 64 KiB.
const PARKED: u64 = 0x1000;

impl Breakpoints {
    /// Opens `count` disabled breakpoint events on the calling thread.
    pub fn open(count: usize) -> Result<Self, WorldError> {
        let mut events = Vec::with_capacity(count);
        for slot in 0..count {
            let attr = attr(slot, PARKED, true);
            // SAFETY: perf_event_open reads the attr struct (its size field
            // says how much); pid 0 / cpu -1 means this thread on any CPU.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_perf_event_open,
                    std::ptr::from_ref(&attr),
                    0,
                    -1,
                    -1,
                    PERF_FLAG_FD_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(WorldError::MissingFeature {
                    feature: "hardware breakpoints through perf events (perf_event_open with sigtrap)",
                    hint: "needs Linux 5.13 or later and kernel.perf_event_paranoid <= 2 (or CAP_PERFMON)",
                    source: std::io::Error::last_os_error(),
                });
            }
            // SAFETY: a fresh descriptor we own.
            events.push(unsafe { OwnedFd::from_raw_fd(RawFd::try_from(fd).unwrap_or(-1)) });
        }
        Ok(Self {
            events,
            armed: vec![None; count],
            ioctls: 0,
        })
    }

    /// The perf descriptors (for the seccomp allow-list).
    #[must_use]
    pub fn fds(&self) -> Vec<RawFd> {
        self.events.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// How many slots there are.
    #[must_use]
    pub fn count(&self) -> usize {
        self.events.len()
    }

    /// Arms exactly `addresses` (at most `count()` of them), moving only the
    /// slots that change and disabling the rest.
    pub fn arm(&mut self, addresses: &[GuestVirt]) -> Result<(), WorldError> {
        if addresses.len() > self.events.len() {
            return Err(WorldError::TooManyBreakpoints(addresses.len()));
        }
        // Slots already on a wanted address stay.
        let mut wanted: Vec<GuestVirt> = addresses
            .iter()
            .copied()
            .filter(|address| !self.armed.contains(&Some(*address)))
            .collect();
        for slot in 0..self.events.len() {
            let keep = self.armed[slot].is_some_and(|address| addresses.contains(&address));
            if keep {
                continue;
            }
            match wanted.pop() {
                Some(address) => self.point(slot, address)?,
                None => {
                    if self.armed[slot].is_some() {
                        self.ioctl(slot, IOC_DISABLE, 0)?;
                        self.armed[slot] = None;
                    }
                }
            }
        }
        Ok(())
    }

    fn point(&mut self, slot: usize, address: GuestVirt) -> Result<(), WorldError> {
        let attr = attr(slot, u64::from(address.0), false);
        let attr_address = std::ptr::from_ref(&attr) as libc::c_ulong;
        self.ioctl(slot, IOC_MODIFY_ATTRIBUTES, attr_address)?;
        if self.armed[slot].is_none() {
            self.ioctl(slot, IOC_ENABLE, 0)?;
        }
        self.armed[slot] = Some(address);
        Ok(())
    }

    fn ioctl(
        &mut self,
        slot: usize,
        request: libc::c_ulong,
        argument: libc::c_ulong,
    ) -> Result<(), WorldError> {
        self.ioctls += 1;
        // SAFETY: perf ioctls on our own event descriptor; MODIFY_ATTRIBUTES
        // reads the attr struct whose address is passed and which outlives
        // the call.
        let result = unsafe { libc::ioctl(self.events[slot].as_raw_fd(), request, argument) };
        if result < 0 {
            return Err(WorldError::Host {
                what: "perf breakpoint ioctl",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Addresses armed now, by slot.
    #[must_use]
    pub fn armed(&self) -> &[Option<GuestVirt>] {
        &self.armed
    }
}
