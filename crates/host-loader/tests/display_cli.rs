//! `--display curses` and `--serial` refuse what they cannot use with one
//! line, before any guest runs: no terminal to draw on, a serial file that
//! cannot be made.

use std::process::{Command, Stdio};

const LOAD: u32 = 0x0010_0000;

/// A kernel that would halt at once (never reached here).
fn kernel(tag: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("btvmm-display-{tag}-{}.bin", std::process::id()));
    std::fs::write(
        &path,
        experiments::image::aout_kludge_image(LOAD, &[0xfa, 0xf4], LOAD + 32),
    )
    .expect("write the kernel");
    path
}

fn one_line_failure(args: &[&str], tag: &str) -> String {
    let kernel = kernel(tag);
    let output = Command::new(env!("CARGO_BIN_EXE_btvmm"))
        .args(["run", "--kernel"])
        .arg(&kernel)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run btvmm");
    let _ = std::fs::remove_file(&kernel);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(output.stdout.is_empty(), "the guest ran");
    stderr
}

#[test]
fn the_display_needs_a_terminal() {
    let stderr = one_line_failure(&["--display", "curses"], "terminal");
    assert!(
        stderr.contains("--display curses needs a terminal"),
        "{stderr}"
    );
}

#[test]
fn a_serial_file_that_cannot_be_made_stops_btvmm() {
    let stderr = one_line_failure(&["--serial", "/nonexistent-directory/serial.log"], "serial");
    assert!(
        stderr.contains("/nonexistent-directory/serial.log"),
        "{stderr}"
    );
}
