//! Tests an attacker would write (DESIGN.md section 2, threat model):
//! guest CPL 3 code far-jumps to the host's 64-bit code segment and calls
//! a `syscall; ret` of the world's own code above 4 GiB
//! (guests/attack/host_syscall.c), whose address btvmm's test-only option
//! hands it as if ASLR were broken. Each attack tries to reach outside the
//! VM: signal another process of the host, create a file, open a socket,
//! ptrace, make memory executable, exec a shell, become root. Nothing
//! outside the world may happen: the other process lives on untraced, no
//! file appears, and btvmm itself ends the run cleanly with one line
//! saying that the world was killed by its filter.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The file attack 3 tries to create (guests/attack/host_syscall.c).
const PROBE: &str = "/tmp/btvmm-attack-probe";
/// Where the world leaves the gadget's address for the guest.
const GADGET_AT: u32 = 0x7000;
/// Attack 9 writes this to the world's standard error before its kill.
const MESSAGE: &str = "btvmm-attack: write(2) from the guest's 64-bit code";

/// The victim is still running and nobody traces it.
fn check_victim(victim: &mut Child, attack: u32, findings: &mut Vec<String>) {
    match victim.try_wait() {
        Ok(None) => {}
        other => findings.push(format!("attack {attack}: the victim ended: {other:?}")),
    }
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", victim.id())).unwrap_or_default();
    if !status.lines().any(|line| line == "TracerPid:\t0") {
        findings.push(format!("attack {attack}: the victim is traced"));
    }
}

#[test]
fn guest_code_calling_the_worlds_own_syscall_cannot_reach_the_host() {
    let build = common::build_guests("attacker");
    let kernel = build.join("attack/host_syscall.elf");
    let _ = std::fs::remove_file(PROBE);
    let mut victim = Command::new("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .expect("start the victim");
    let mut findings = Vec::new();
    for attack in 1..=10 {
        let child = Command::new(env!("CARGO_BIN_EXE_btvmm"))
            .args(["run", "--address-spaces", "1", "--kernel"])
            .arg(&kernel)
            .args(["--test-leak-syscall-gadget", &format!("{GADGET_AT:#x}")])
            .args([
                "--append",
                &format!(
                    "gadget_at={GADGET_AT} attack={attack} victim={}",
                    victim.id()
                ),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run btvmm");
        let output = common::wait_with_timeout(child, Duration::from_secs(30));
        let console = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = format!("console:\n{console}stderr:\n{stderr}");
        // The attack ran: the kernel printed the gadget it got.
        if !console.contains(&format!("# attack {attack}: far jump to 64-bit code")) {
            findings.push(format!("attack {attack}: did not start\n{said}"));
        }
        if output.status.code() != Some(2) {
            findings.push(format!(
                "attack {attack}: status {:?}\n{said}",
                output.status
            ));
        }
        let stops: Vec<&str> = stderr
            .lines()
            .filter(|line| line.starts_with("btvmm:"))
            .collect();
        if stops
            != [
                "btvmm: the VM stopped: the world process was killed by its seccomp filter \
                 (a system call outside the monitor's allow-list)",
            ]
        {
            findings.push(format!(
                "attack {attack}: not stopped by the filter\n{said}"
            ));
        }
        if stderr.contains("panicked") || console.contains("came back") {
            findings.push(format!("attack {attack}: unexpected\n{said}"));
        }
        // Attack 9's first call is allowed: it shows the gadget works.
        if attack == 9 && !stderr.contains(MESSAGE) {
            findings.push(format!("attack 9: the allowed write did not run\n{said}"));
        }
        check_victim(&mut victim, attack, &mut findings);
        if Path::new(PROBE).exists() {
            findings.push(format!("attack {attack}: {PROBE} was created"));
            let _ = std::fs::remove_file(PROBE);
        }
    }
    let _ = victim.kill();
    let _ = victim.wait();
    let _ = std::fs::remove_dir_all(&build);
    assert!(findings.is_empty(), "{}", findings.join("\n"));
}
