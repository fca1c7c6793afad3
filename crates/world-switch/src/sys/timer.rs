//! The world's timer: a POSIX timer on CLOCK_MONOTONIC that sends the
//! world the kick signal when the guest's timer chipset is next due, and
//! the wait for that signal while the guest halts.
//!
//! The world drives its own timer, so an idle guest costs one host wakeup
//! per guest timer tick: the world sleeps in `sigtimedwait` for the kick,
//! which the timer (or the host, when one of its devices' interrupt lines
//! changes) sends. The kick is blocked while the monitor runs, so a kick
//! sent before the wait is not lost: it is pending, and the wait returns
//! at once.

use std::time::Duration;

use crate::WorldError;

/// A timer that raises one signal in one thread at an absolute time.
#[derive(Debug)]
pub struct KickTimer {
    id: libc::timer_t,
    signal: libc::c_int,
}

impl KickTimer {
    /// A disarmed timer that will raise `signal` in the calling thread.
    pub fn create(signal: libc::c_int) -> Result<Self, WorldError> {
        // SAFETY: sigevent is plain data; all-zero is a valid value that
        // the fields below complete.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = signal;
        // SAFETY: gettid has no arguments and cannot fail.
        event.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: timer_create reads `event` and writes the new timer's id
        // into `id`, both live locals.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &raw mut event, &raw mut id) } != 0 {
            return Err(WorldError::Host {
                what: "creating the world's timer (timer_create)",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self { id, signal })
    }

    /// Fires once at CLOCK_MONOTONIC time `at_ns` (at once if that has
    /// passed), or never (`None`). Async-signal-safe.
    pub fn arm(&self, at_ns: Option<u64>) -> Result<(), WorldError> {
        let value = match at_ns {
            // A zero it_value disarms; the earliest real time is 1 ns.
            Some(at) => duration_timespec(Duration::from_nanos(at.max(1))),
            None => duration_timespec(Duration::ZERO),
        };
        let spec = libc::itimerspec {
            it_interval: duration_timespec(Duration::ZERO),
            it_value: value,
        };
        // SAFETY: timer_settime on this process's timer reads one
        // itimerspec from a live local; the old value is not asked for.
        let result = unsafe {
            libc::timer_settime(
                self.id,
                libc::TIMER_ABSTIME,
                &raw const spec,
                std::ptr::null_mut(),
            )
        };
        if result == 0 {
            Ok(())
        } else {
            Err(WorldError::Host {
                what: "arming the world's timer (timer_settime)",
                source: std::io::Error::last_os_error(),
            })
        }
    }

    /// Fires every `period` from now on, until armed again. Async-signal-
    /// safe.
    pub fn arm_periodic(&self, period: Duration) -> Result<(), WorldError> {
        let spec = libc::itimerspec {
            it_interval: duration_timespec(period),
            it_value: duration_timespec(period),
        };
        // SAFETY: timer_settime on this process's timer reads one
        // itimerspec from a live local; the old value is not asked for.
        let result =
            unsafe { libc::timer_settime(self.id, 0, &raw const spec, std::ptr::null_mut()) };
        if result == 0 {
            Ok(())
        } else {
            Err(WorldError::Host {
                what: "arming a periodic timer (timer_settime)",
                source: std::io::Error::last_os_error(),
            })
        }
    }

    /// Sleeps until the timer's signal is pending, and takes it. The
    /// signal must be blocked (it is inside the monitor's handler).
    /// Async-signal-safe.
    pub fn wait(&self) {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset
        // before use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: sigemptyset/sigaddset write the live local set;
        // sigtimedwait reads it and takes one pending signal of it, with
        // no info and no timeout asked for.
        unsafe {
            libc::sigemptyset(&raw mut set);
            libc::sigaddset(&raw mut set, self.signal);
            // EINTR (another signal's handler ran, which cannot happen
            // with every signal blocked) only ends the wait early: the
            // monitor looks again and waits again.
            libc::sigtimedwait(&raw const set, std::ptr::null_mut(), std::ptr::null());
        }
    }
}

fn duration_timespec(duration: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: libc::time_t::try_from(duration.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(duration.subsec_nanos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_at_its_deadline_and_the_wait_takes_the_signal() {
        // A thread-directed wait needs the signal blocked in this thread.
        // SAFETY: sigset_t is plain data initialised by sigemptyset;
        // pthread_sigmask changes only this test thread's mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&raw mut set);
            libc::sigaddset(&raw mut set, libc::SIGRTMIN() + 3);
            libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
        }
        let timer = KickTimer::create(libc::SIGRTMIN() + 3).expect("timer");
        let start = crate::channel::monotonic_ns();
        timer.arm(Some(start + 20_000_000)).expect("arm");
        timer.wait();
        let waited = crate::channel::monotonic_ns() - start;
        assert!(waited >= 20_000_000, "woke after {waited} ns");
        // A deadline in the past fires at once.
        timer.arm(Some(1)).expect("arm");
        timer.wait();
        timer.arm(None).expect("disarm");
    }
}
