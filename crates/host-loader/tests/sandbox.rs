//! The world processes of a running VM hold nothing of the host: looked at
//! from outside, as an administrator would (/proc), while an idle guest
//! runs. Each world runs as nobody (when btvmm runs as root), with no
//! capability in any set, no_new_privs and a seccomp filter, in user, PID
//! (as its process 1), network, IPC, mount and UTS namespaces of its own, with an empty root
//! directory, no core dumps and only the descriptors the monitor needs.
//! They are children of the launcher, btvmm's only child; btvmm itself
//! runs under its own seccomp filter with no capability but CAP_KILL.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The world processes (children) of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return found;
    };
    for task in tasks.flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        found.extend(
            list.split_whitespace()
                .filter_map(|word| word.parse::<u32>().ok()),
        );
    }
    found
}

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in\n{status}"))
        .trim()
        .to_string()
}

fn link(path: impl AsRef<Path>) -> String {
    std::fs::read_link(path)
        .map(|target| target.display().to_string())
        .unwrap_or_default()
}

#[test]
fn world_processes_run_without_privileges_in_namespaces_of_their_own() {
    let build = common::build_guests("sandbox");
    let mut btvmm = Command::new(env!("CARGO_BIN_EXE_btvmm"))
        .args(["run", "--kernel"])
        .arg(build.join("bench/idle.elf"))
        .args(["--cmdline", "hz=100 seconds=5", "--address-spaces", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run btvmm");
    // Both worlds exist once the guest runs; give them time to lock down.
    let start = Instant::now();
    let mut worlds = Vec::new();
    while start.elapsed() < Duration::from_secs(20) {
        worlds = children(btvmm.id())
            .into_iter()
            .flat_map(children)
            .collect();
        if worlds.len() == 2
            && worlds.iter().all(|world| {
                std::fs::read_to_string(format!("/proc/{world}/status"))
                    .is_ok_and(|status| status_field(&status, "Seccomp") == "2")
            })
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let root = nix::unistd::Uid::effective().is_root();
    let mut findings = Vec::new();
    let launchers = children(btvmm.id());
    for &launcher in &launchers {
        let command = std::fs::read(format!("/proc/{launcher}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&command).contains("__launcher") {
            findings.push(format!("btvmm's child {launcher} is no launcher"));
        }
    }
    if launchers.len() != 1 {
        findings.push(format!("btvmm has children {launchers:?}"));
    }
    let tasks = std::fs::read_dir(format!("/proc/{}/task", btvmm.id())).expect("tasks");
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        if status.is_empty() {
            continue;
        }
        // CAP_KILL (bit 5) alone, when btvmm runs as root.
        let kill_only = if root {
            "0000000000000020"
        } else {
            "0000000000000000"
        };
        for (field, want) in [
            ("NoNewPrivs", "1"),
            ("Seccomp", "2"),
            ("CapEff", kill_only),
            ("CapPrm", kill_only),
            ("CapInh", "0000000000000000"),
            ("CapAmb", "0000000000000000"),
        ] {
            if status_field(&status, field) != want {
                findings.push(format!(
                    "btvmm thread {}: {field} {}",
                    task.path().display(),
                    status_field(&status, field)
                ));
            }
        }
    }
    for entry in std::fs::read_dir(format!("/proc/{}/fd", btvmm.id()))
        .expect("fd")
        .flatten()
    {
        let target = link(entry.path());
        let number: i32 = entry.file_name().to_string_lossy().parse().unwrap_or(-1);
        // The standard streams; then the launcher's socket, the machine's
        // memfds and the worlds' pidfds, nothing else.
        if !(number <= 2
            || target.starts_with("socket:")
            || target.starts_with("/memfd:btvmm-")
            || target == "anon_inode:[pidfd]")
        {
            findings.push(format!("btvmm descriptor {number}: {target}"));
        }
    }
    for &world in &worlds {
        let status = std::fs::read_to_string(format!("/proc/{world}/status")).expect("status");
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            if status_field(&status, set) != "0000000000000000" {
                findings.push(format!(
                    "world {world}: {set} {}",
                    status_field(&status, set)
                ));
            }
        }
        if status_field(&status, "NoNewPrivs") != "1" || status_field(&status, "Seccomp") != "2" {
            findings.push(format!("world {world}: no filter"));
        }
        if root {
            for ids in ["Uid", "Gid"] {
                let values = status_field(&status, ids);
                if values.split_whitespace().any(|id| id != "65534") {
                    findings.push(format!("world {world}: {ids} {values}"));
                }
            }
            if !status_field(&status, "Groups").is_empty() {
                findings.push(format!("world {world}: supplementary groups"));
            }
        }
        if status_field(&status, "NSpid").split_whitespace().last() != Some("1") {
            findings.push(format!(
                "world {world}: not process 1 of its own PID namespace (NSpid {})",
                status_field(&status, "NSpid")
            ));
        }
        for namespace in ["user", "pid", "net", "ipc", "mnt", "uts"] {
            let own = link(format!("/proc/{world}/ns/{namespace}"));
            if own.is_empty() || own == link(format!("/proc/self/ns/{namespace}")) {
                findings.push(format!("world {world}: the host's {namespace} namespace"));
            }
        }
        let root_entries = std::fs::read_dir(format!("/proc/{world}/root"))
            .map(|entries| entries.count())
            .unwrap_or(usize::MAX);
        if root_entries != 0 {
            findings.push(format!("world {world}: root directory not empty"));
        }
        let mut descriptors: Vec<String> = std::fs::read_dir(format!("/proc/{world}/fd"))
            .expect("fd")
            .flatten()
            .map(|entry| link(entry.path()))
            .collect();
        descriptors.sort();
        let unexpected: Vec<&String> = descriptors
            .iter()
            .filter(|target| {
                !(target.starts_with("/memfd:btvmm-")
                    || target.as_str() == "anon_inode:[perf_event]"
                    || target.as_str() == "/dev/null"
                    || target.starts_with("pipe:"))
            })
            .collect();
        // Standard error is the test's pipe; everything else is guest
        // RAM, the channel, the pool, the aliases and the breakpoints.
        if !unexpected.is_empty() || descriptors.len() > 12 {
            findings.push(format!("world {world}: descriptors {descriptors:?}"));
        }
        let limits = std::fs::read_to_string(format!("/proc/{world}/limits")).expect("limits");
        for (name, want) in [("Max core file size", "0"), ("Max processes", "0")] {
            let line = limits
                .lines()
                .find(|line| line.starts_with(name))
                .unwrap_or("");
            if line.split_whitespace().rev().nth(1) != Some(want) {
                findings.push(format!("world {world}: {line}"));
            }
        }
    }
    let _ = btvmm.kill();
    let output = btvmm.wait_with_output().expect("wait");
    let _ = std::fs::remove_dir_all(&build);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(worlds.len(), 2, "world processes: {worlds:?}\n{stderr}");
    assert!(findings.is_empty(), "{findings:#?}\n{stderr}");
    // Everything was available on this host: nothing to report.
    assert!(!stderr.contains("world sandbox"), "{stderr}");
}
