//! What the integration tests that boot guests/ kernels share. Each test
//! crate includes it and uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The guests/ directory.
pub fn guests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guests")
}

/// Builds every guest kernel into a fresh directory (one per call, so
/// tests running side by side do not share one) and returns it.
pub fn build_guests(tag: &str) -> PathBuf {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let build = std::env::temp_dir().join(format!("btvmm-{tag}-{}-{call}", std::process::id()));
    let made = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(guests())
        .arg(format!("BUILD={}", build.display()))
        .status()
        .expect("make must be installed to build the guests");
    assert!(made.success(), "building the guests failed");
    build
}

/// The value of counter `name` in `btvmm run --stats` output, if printed
/// (counters that stayed zero are left out).
pub fn counter(stats: &str, name: &str) -> Option<u64> {
    assert!(
        stats.lines().any(|line| line.starts_with("time: ")) && stats.contains("\ntraps "),
        "no --stats output:\n{stats}"
    );
    stats
        .lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with("  "))
        .and_then(|line| line.split_whitespace().last())
        .map(|value| value.parse().expect("a number"))
}

/// Waits for `child`, killing it (and failing) after `limit`.
pub fn wait_with_timeout(child: std::process::Child, limit: Duration) -> Output {
    let pid = child.id();
    let (done, waited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match waited.recv_timeout(limit) {
        Ok(output) => output.expect("wait for btvmm"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let output = waited.recv().expect("the waiter").expect("wait for btvmm");
            panic!(
                "btvmm did not finish within {limit:?}:\n{}\nstandard error:\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}
