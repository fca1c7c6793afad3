//! What every fuzz target shares (included with `#[path]` by the
//! `tests/fuzz_*.rs` files of the crates): the case count, which
//! `PROPTEST_CASES` overrides for long runs, and the per-case time limit
//! that turns a hang into a failure.

use std::sync::mpsc;
use std::time::Duration;

use proptest::test_runner::Config;

/// Cases per target unless `PROPTEST_CASES` says otherwise.
pub fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default_cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Runs `body` on a thread of its own and fails if it takes longer than
/// `limit` (a hang), passing its panics on.
pub fn within<T: Send + 'static>(limit: Duration, body: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = done.send(body());
    });
    match result.recv_timeout(limit) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the worker sends before it ends"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("a case ran longer than {limit:?}"),
    }
}

/// A case normally takes milliseconds.
pub const HANG: Duration = Duration::from_secs(20);
