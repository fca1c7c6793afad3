//! The gdb stub with Debian's gdb in batch mode, on the `debugged` test
//! kernel (guests/conformance/debugged.c, ELF symbols only): stop before
//! the first instruction (`--gdb-wait`), break on a function by name three
//! times and read a variable between, step over a sensitive instruction
//! (CR0 read: the step shows the emulated value), a write watchpoint,
//! a breakpoint in user mode, a register written by gdb, continue to the
//! end. Under both breakpoint mechanisms. The Linux session is in
//! linux.rs.

mod common;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// gdb's output for `commands` against btvmm running `kernel` with
/// `--gdb-wait`, and btvmm's output.
fn session(
    kernel: &std::path::Path,
    mechanism: &str,
    commands: &[&str],
) -> (String, String, Option<i32>) {
    let port = free_port();
    let btvmm = Command::new(env!("CARGO_BIN_EXE_btvmm"))
        .args(["run", "--breakpoints", mechanism, "--gdb"])
        .arg(format!("tcp::{port}"))
        .arg("--gdb-wait")
        .arg("--kernel")
        .arg(kernel)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start btvmm");
    // Until the stub listens (a probing connection would be a session).
    for _ in 0..100 {
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut gdb = Command::new("gdb");
    gdb.args(["-batch", "-nx", "-ex", "set architecture i386", "-ex"])
        .arg(format!("target remote :{port}"));
    for command in commands {
        gdb.args(["-ex", command]);
    }
    let gdb = gdb
        .arg(kernel)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gdb (scripts/install-deps --tests installs it)");
    let gdb = common::wait_with_timeout(gdb, Duration::from_secs(60));
    let btvmm = common::wait_with_timeout(btvmm, Duration::from_secs(60));
    (
        format!(
            "{}{}",
            String::from_utf8_lossy(&gdb.stdout),
            String::from_utf8_lossy(&gdb.stderr)
        ),
        format!(
            "{}{}",
            String::from_utf8_lossy(&btvmm.stdout),
            String::from_utf8_lossy(&btvmm.stderr)
        ),
        btvmm.status.code(),
    )
}

/// The value gdb printed for `$N = ...`.
fn printed(output: &str, number: u32) -> String {
    let prefix = format!("${number} = ");
    output
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no ${number} in gdb's output:\n{output}"))
        .trim()
        .to_owned()
}

fn debugs_the_test_kernel(mechanism: &str) {
    let build = common::build_guests(&format!("gdb-{mechanism}"));
    let kernel = build.join("debugged.elf");
    let (gdb, btvmm, status) = session(
        &kernel,
        mechanism,
        &[
            "p/x $eip",
            "break tick",
            "continue",
            "p/x *(int*)&counter",
            "continue",
            "p/x *(int*)&counter",
            "continue",
            "p/x *(int*)&counter",
            // A write through the guest's tables, read back, then undone
            // (the kernel checks the sum).
            "set var *(int*)&counter = 0x41",
            "p/x *(int*)&counter",
            "set var *(int*)&counter = 3",
            "delete",
            "break read_cr0",
            "continue",
            "stepi",
            "p/x $eax",
            "p/x $eip",
            "watch *(int*)&watched",
            "continue",
            "p/x *(int*)&watched",
            "delete",
            "break user_code",
            "continue",
            "p/x $cs & 3",
            "set var $eax = 0x1234",
            "p/x $eax",
            "p/x $mxcsr",
            // On from the user-mode breakpoint, which stays set.
            "continue",
        ],
    );
    let context = format!("gdb:\n{gdb}\nbtvmm:\n{btvmm}");
    // --gdb-wait: stopped at the Multiboot entry.
    assert_eq!(printed(&gdb, 1), "0x10000c", "{context}");
    assert_eq!(
        gdb.matches("Breakpoint 1, ").count(),
        3,
        "tick is called three times\n{context}"
    );
    // counter += step before each later call: 0, 1, 3.
    assert_eq!(printed(&gdb, 2), "0x0", "{context}");
    assert_eq!(printed(&gdb, 3), "0x1", "{context}");
    assert_eq!(printed(&gdb, 4), "0x3", "{context}");
    assert_eq!(printed(&gdb, 5), "0x41", "a debugger's write\n{context}");
    assert!(gdb.contains("Breakpoint 2, "), "{context}");
    // The guest's CR0 (PE, MP, ET, NE: guests/lib), emulated, not the
    // host's; the step went one instruction (mov %cr0,%eax is 3 bytes).
    assert_eq!(printed(&gdb, 6), "0x33", "{context}");
    let read_cr0 = gdb
        .lines()
        .find_map(|line| line.strip_prefix("Breakpoint 2 at "))
        .and_then(|at| u32::from_str_radix(at.trim().trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| panic!("no address for read_cr0\n{context}"));
    assert_eq!(
        printed(&gdb, 7),
        format!("{:#x}", read_cr0 + 3),
        "{context}"
    );
    assert!(
        gdb.contains("Hardware watchpoint 3: *(int*)&watched\n\nOld value = 0\nNew value = 23130"),
        "{context}"
    );
    assert_eq!(printed(&gdb, 8), "0x5a5a", "{context}");
    // The user-mode breakpoint (a hardware breakpoint of the world).
    assert!(gdb.contains("Breakpoint 4, "), "{context}");
    assert_eq!(printed(&gdb, 9), "0x3", "at CPL 3\n{context}");
    assert_eq!(printed(&gdb, 10), "0x1234", "{context}");
    // The SSE control register as the guest's FPU holds it (its reset
    // value).
    assert_eq!(printed(&gdb, 11), "0x1f80", "{context}");
    // To the end: every check of the kernel passed (its exit status 1).
    assert!(
        gdb.contains("[Inferior 1 (process 1) exited with code 01]"),
        "{context}"
    );
    assert!(btvmm.contains("5/5 passed"), "{context}");
    assert_eq!(status, Some(1), "{context}");
    let _ = std::fs::remove_dir_all(build);
}

#[test]
fn gdb_debugs_a_test_kernel_in_the_split_view() {
    debugs_the_test_kernel("split");
}

#[test]
fn gdb_debugs_a_test_kernel_with_hardware_breakpoints() {
    debugs_the_test_kernel("hw");
}

/// gdb's `kill` ends the VM at once; a wrong address, or --gdb-wait
/// without a stub, is an error message and status 2.
#[test]
fn gdb_kill_ends_the_vm_and_a_bad_address_is_one_line() {
    let build = common::build_guests("gdb-kill");
    let kernel = build.join("debugged.elf");
    let (gdb, btvmm, status) = session(&kernel, "split", &["break tick", "continue", "kill"]);
    assert!(
        gdb.contains("Breakpoint 1, "),
        "gdb:\n{gdb}\nbtvmm:\n{btvmm}"
    );
    assert!(
        btvmm.contains("btvmm: the debugger killed the VM"),
        "gdb:\n{gdb}\nbtvmm:\n{btvmm}"
    );
    assert_eq!(status, Some(0), "gdb:\n{gdb}\nbtvmm:\n{btvmm}");
    let output = Command::new(env!("CARGO_BIN_EXE_btvmm"))
        .args(["run", "--gdb", "localhost:1234", "--kernel"])
        .arg(&kernel)
        .output()
        .expect("btvmm");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: invalid value 'localhost:1234' for '--gdb")
            && stderr.contains("only tcp:[HOST]:PORT is supported"),
        "{stderr}"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_btvmm"))
        .args(["run", "--gdb-wait", "--kernel"])
        .arg(&kernel)
        .output()
        .expect("btvmm");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--gdb-wait (-S) needs a gdb stub"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let _ = std::fs::remove_dir_all(build);
}
