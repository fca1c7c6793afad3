//! The differential conformance test: every kernel in guests/conformance
//! (listed in its MANIFEST) runs under btvmm and under QEMU TCG; kernels
//! marked `match` must give byte-identical output and exit status, kernels
//! marked `differs` must give the recorded btvmm output and status (and
//! pass under QEMU). guests/check-btvmm does the comparing; this test
//! builds the kernels and runs it with this build's btvmm.
//!
//! Needs gcc (with -m32), binutils, make and qemu-system-i386; the test
//! command (.ci/run) installs them.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn conformance_kernels_match_qemu_in_the_split_view() {
    check_all("conformance-split", "--breakpoints split");
}

#[test]
fn conformance_kernels_match_qemu_with_hardware_breakpoints() {
    check_all("conformance-hw", "--breakpoints hw");
}

/// The emulator alone for guest kernel code (what it handles): the split
/// view's and the hardware path's interpreting, pushed to everything.
#[test]
fn conformance_kernels_match_qemu_with_kernel_code_interpreted() {
    check_all("conformance-interpret-split", "--exec interpret");
    check_all(
        "conformance-interpret-hw",
        "--exec interpret --breakpoints hw",
    );
}

/// No interpreting beyond what the monitor must emulate.
#[test]
fn conformance_kernels_match_qemu_with_kernel_code_native() {
    check_all("conformance-native-split", "--exec native");
    check_all("conformance-native-hw", "--exec native --breakpoints hw");
}

fn check_all(tag: &str, args: &str) {
    let guests = common::guests();
    let build = common::build_guests(tag);
    // security_escape64 asks the host (through seccomp, in vain) to create
    // this file.
    let probe = Path::new("/tmp/btvmm-escape-probe");
    let _ = std::fs::remove_file(probe);
    // The build directory is an argument: the two tests run side by side.
    let output = Command::new(guests.join("check-btvmm"))
        .arg(env!("CARGO_BIN_EXE_btvmm"))
        .arg(&build)
        .env("BTVMM_ARGS", args)
        .output()
        .expect("run guests/check-btvmm");
    let _ = std::fs::remove_dir_all(&build);
    let report = String::from_utf8_lossy(&output.stdout);
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "conformance failures ({args}):\n{report}\n{errors}"
    );
    // Every kernel of the manifest was checked.
    let manifest = std::fs::read_to_string(guests.join("conformance/MANIFEST")).expect("MANIFEST");
    let kernels = manifest
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .count();
    assert!(kernels >= 10, "only {kernels} kernels in the manifest");
    assert_eq!(
        report.matches("PASS").count(),
        kernels,
        "every kernel must be reported as passing:\n{report}"
    );
}
