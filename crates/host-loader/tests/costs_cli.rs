//! `btvmm run --costs FILE`: the monitor's interpretation policy from the
//! costs `btvmm calibrate --json` measured, shown by `--stats`, taking
//! effect in the monitor; costs that cannot be used stop btvmm with one
//! line before any guest runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

const LOAD: u32 = 0x0010_0000;

/// cli; 20 x nop; pushf; hlt: the first run after the emulated CLI
/// explores as far as the policy says, finding PUSHF 20 instructions on
/// or resuming natively before it.
fn kernel(tag: &str) -> PathBuf {
    let mut code = vec![0xfa];
    code.extend([0x90; 20]);
    code.extend([0x9c, 0xf4]);
    let path = std::env::temp_dir().join(format!("btvmm-costs-{tag}-{}.bin", std::process::id()));
    std::fs::write(
        &path,
        experiments::image::aout_kludge_image(LOAD, &code, LOAD + 32),
    )
    .expect("write the kernel");
    path
}

/// calibrate's JSON with these three path costs (ns).
fn costs(tag: &str, split_trap: f64, hw_trap: f64, interpreted: f64) -> PathBuf {
    let json = format!(
        r#"{{"paths": [
            {{"path": "split int3 + pushf", "ns": {split_trap}}},
            {{"path": "hw breakpoint + pushf + re-plan", "ns": {hw_trap}}},
            {{"path": "instruction interpreted", "ns": {interpreted}}}
        ]}}"#
    );
    let path = std::env::temp_dir().join(format!("btvmm-costs-{tag}-{}.json", std::process::id()));
    std::fs::write(&path, json).expect("write the costs");
    path
}

fn run(kernel: &Path, costs: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_btvmm"));
    command.args(["run", "--stats", "--kernel"]).arg(kernel);
    if let Some(costs) = costs {
        command.arg("--costs").arg(costs);
    }
    command.output().expect("run btvmm")
}

#[test]
fn the_policy_follows_the_costs_and_takes_effect() {
    let kernel = kernel("effect");
    let tuned = run(&kernel, None);
    // Traps worth a quarter of the tuning host's interpreted instructions:
    // a quarter of the runs, of the look-ahead and of the exploration.
    let cheap_traps = costs("cheap", 1262.0, 4027.0, 104.7);
    let cheap = run(&kernel, Some(&cheap_traps));
    let _ = std::fs::remove_file(&kernel);
    let _ = std::fs::remove_file(&cheap_traps);
    let missed = "split: interpreted runs resuming natively at their length";
    for (output, policy, interpreted_to_pushf) in [
        (
            &tuned,
            "policy (tuned on the development host): interpret 16 instructions after \
             an entry, 4 after an emulated one, on to one 8 ahead; 24 under hardware \
             breakpoints; per-site profiles exploring 24 instructions",
            true,
        ),
        (
            &cheap,
            "interpret 12 instructions after an entry, 1 after an emulated one, on to one 2 \
             ahead; 6 under hardware breakpoints; per-site profiles exploring 6 instructions",
            false,
        ),
    ] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        assert!(stderr.contains(policy), "{stderr}");
        assert_eq!(
            common::counter(&stderr, missed).unwrap_or(0) == 0,
            interpreted_to_pushf,
            "{stderr}"
        );
    }
}

#[test]
fn costs_that_cannot_be_used_stop_btvmm_with_one_line() {
    let kernel = kernel("bad");
    let negative = costs("negative", 5000.0, 16000.0, -1.0);
    let not_json = std::env::temp_dir().join(format!("btvmm-costs-text-{}", std::process::id()));
    std::fs::write(&not_json, "split int3: 5 us\n").expect("write");
    let missing = std::env::temp_dir().join("btvmm-costs-no-such-file.json");
    for (costs, says) in [
        (&negative, "not a positive number"),
        (&not_json, "not calibrate's JSON"),
        (&missing, "No such file"),
    ] {
        let output = run(&kernel, Some(costs));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
    for path in [&kernel, &negative, &not_json] {
        let _ = std::fs::remove_file(path);
    }
}
