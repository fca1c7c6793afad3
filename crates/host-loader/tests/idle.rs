//! An idle guest sleeps: guests/bench/idle.c waits in HLT for a number of
//! PIT ticks. Each wait must end with the tick that woke it (the world
//! sleeps until its timer), never by spinning: the counters show one HLT
//! wait and one injected interrupt per tick, and few traps. (How much host
//! CPU that costs is a measurement, not a test: see the README.)

mod common;

use std::process::Command;

fn counter(stats: &str, name: &str) -> u64 {
    common::counter(stats, name).unwrap_or_else(|| panic!("no counter {name:?} in:\n{stats}"))
}

#[test]
fn an_idle_guest_sleeps_until_each_tick() {
    let build = common::build_guests("idle");
    let output = Command::new(env!("CARGO_BIN_EXE_btvmm"))
        .args(["run", "--stats", "--kernel"])
        .arg(build.join("bench/idle.elf"))
        .args(["--cmdline", "hz=200 seconds=1"])
        .output()
        .expect("run btvmm");
    let _ = std::fs::remove_dir_all(&build);
    let console = String::from_utf8_lossy(&output.stdout);
    let stats = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{console}\n{stats}");
    assert!(
        console.contains("# idle: 200 ticks at 200 Hz handled with hlt"),
        "{console}"
    );
    let waits = counter(&stats, "hlt: waits for an interrupt");
    let injected = counter(&stats, "interrupts injected");
    let traps = counter(&stats, "traps");
    assert!(
        (200..=205).contains(&injected),
        "{injected} interrupts injected"
    );
    assert!(
        (195..=205).contains(&waits),
        "{waits} HLT waits for 200 ticks: the world must sleep until each tick"
    );
    // A tick costs about ten traps (the kick, the injection, the
    // handler's EOI and IRET, the next HLT); a world that spun instead of
    // sleeping would take orders of magnitude more. The bound is that
    // structure, not a timing: 1,937-2,010 were seen against the old bound
    // of 2,000.
    assert!(
        traps < 50 * 200,
        "{traps} traps while idle: more than 50 a tick"
    );
}
