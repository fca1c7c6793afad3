//! The pool of world processes: the paging kernels (guests/conformance/
//! paging.c and processes.c, three address spaces each, whose output the
//! conformance test compares with QEMU's under the default pool) give the
//! same output with one world process, with a pool of two (which must
//! then give address spaces up and take others on) and with a pool of
//! eight; and the vCPU moves between processes only when there is more
//! than one.

mod common;

use std::path::Path;
use std::process::Command;

use common::build_guests;

/// The value of counter `name` in `btvmm run --stats` output (0 when it
/// stayed zero).
fn counter(stats: &str, name: &str) -> u64 {
    common::counter(stats, name).unwrap_or(0)
}

/// Console output and the address-space switches of one run.
fn run(kernel: &Path, address_spaces: u8) -> (String, u64) {
    let output = Command::new(env!("CARGO_BIN_EXE_btvmm"))
        .args(["run", "--stats", "--address-spaces"])
        .arg(address_spaces.to_string())
        .arg("--kernel")
        .arg(kernel)
        .output()
        .expect("run btvmm");
    let console = String::from_utf8_lossy(&output.stdout).into_owned();
    let stats = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{} with {address_spaces} world processes:\n{console}\n{stats}",
        kernel.display()
    );
    (console, counter(&stats, "pool: address-space switches"))
}

#[test]
fn paging_kernels_give_the_same_output_whatever_the_pool_size() {
    let build = build_guests("pool");
    for name in ["paging", "processes"] {
        let kernel = build.join(format!("{name}.elf"));
        let (alone, switches) = run(&kernel, 1);
        assert_eq!(switches, 0, "{name}: one world process never hands over");
        let last = alone.lines().last().unwrap_or_default().to_owned();
        let (passed, total) = last
            .split_once(" passed")
            .and_then(|(counts, _)| counts.split_once('/'))
            .unwrap_or_else(|| panic!("{name}: no summary in {last:?}"));
        assert_eq!(passed, total, "{name}: {alone}");
        for pool in [2, 8] {
            let (output, switches) = run(&kernel, pool);
            assert_eq!(output, alone, "{name} with {pool} world processes");
            assert!(
                switches > 0,
                "{name} with {pool} world processes: CR3 loads must move the vCPU"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&build);
}

#[test]
fn a_pool_size_out_of_range_is_refused_with_a_message() {
    for size in ["0", "9"] {
        let output = Command::new(env!("CARGO_BIN_EXE_btvmm"))
            .args(["run", "--kernel", "/nonexistent", "--address-spaces", size])
            .output()
            .expect("run btvmm");
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("address-spaces"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Runs guests/bench/spaces.c with `cmdline` and a pool of four; its
/// `--stats` output, after checking that the guest passed.
fn run_spaces(cmdline: &str) -> String {
    let build = build_guests("spaces");
    let output = Command::new(env!("CARGO_BIN_EXE_btvmm"))
        .args([
            "run",
            "--stats",
            "--address-spaces",
            "4",
            "--cmdline",
            cmdline,
        ])
        .arg("--kernel")
        .arg(build.join("bench/spaces.elf"))
        .output()
        .expect("run btvmm");
    let _ = std::fs::remove_dir_all(&build);
    let stats = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}\n{stats}",
        String::from_utf8_lossy(&output.stdout)
    );
    stats
}

#[test]
fn stats_summarize_the_run_and_show_each_world_process_s_memory() {
    let stats = run_spaces("spaces=3 mib=8");
    // The summary first: time, traps by mechanism, resumes, emulation.
    let lines: Vec<&str> = stats.lines().collect();
    assert!(
        lines[0].starts_with("time: ") && lines[0].contains(" s wall: monitor work "),
        "{stats}"
    );
    let traps = counter(&stats, "traps");
    assert!(traps > 0, "{stats}");
    assert!(
        lines[1].starts_with(&format!("traps: {traps}: split-view int3 ")),
        "{stats}"
    );
    assert!(
        lines[2].starts_with("resumes: guest kernel in the split view "),
        "{stats}"
    );
    assert!(lines[3].starts_with("emulated: "), "{stats}");
    // Four world processes ran the vCPU in turn: their counts add up (the
    // interpreter's fast forms are some of the instructions it ran).
    let run = counter(&stats, "interpreter: instructions run");
    let fast = counter(&stats, "interpreter: instructions in fast forms");
    assert!(run > 0 && fast <= run, "{stats}");
    let worlds: Vec<&str> = stats
        .lines()
        .filter(|line| line.starts_with("world "))
        .collect();
    assert_eq!(worlds.len(), 4, "{stats}");
    // Three worlds held an address space each (8 MiB of shadow pages
    // besides the kernel's): they have more page tables than the one that
    // never ran the guest.
    let page_tables: Vec<u64> = worlds
        .iter()
        .map(|line| {
            line.split("page tables ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("no page tables in {line:?}"))
        })
        .collect();
    assert!(
        page_tables[..3].iter().all(|&used| used > page_tables[3]),
        "{stats}"
    );
}

#[test]
fn a_member_that_missed_more_than_the_log_holds_starts_afresh() {
    let stats = run_spaces("spaces=3 mib=4 rounds=2 churn=140000");
    // Two members start afresh on their first turn (the run without
    // churn shows only those); the three turns after the 140000 table
    // writes find the log (131,072 events) overrun.
    assert_eq!(
        counter(&stats, "pool: shadows started afresh"),
        5,
        "{stats}"
    );
}
