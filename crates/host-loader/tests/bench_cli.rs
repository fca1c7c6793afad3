//! `btvmm bench --quick`: every benchmark runs natively, under btvmm and
//! under QEMU TCG (and QEMU KVM is tried) in one quick run, and every cell
//! of the results is produced, as a value or as the reason there is none,
//! and so are btvmm's breakdown and time model of every benchmark.
//! Values are not checked: timing belongs to the experiments, not tests.
//!
//! The inputs come from the environment, as .ci/run builds them:
//! BTVMM_DEBIAN_KERNEL, BTVMM_LINUX_INITRD (an initramfs with
//! /bin/bench), BTVMM_BENCH_PROGRAM (guests/linux/bench.c built) and
//! BTVMM_BUSYBOX. Hence ignored by default:
//! `cargo test -p host-loader --test bench_cli -- --ignored`.

use std::path::PathBuf;
use std::process::Command;

fn input(name: &str) -> PathBuf {
    let path = std::env::var_os(name)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{name} is not set (see .ci/run)"));
    assert!(path.is_file(), "{name}: no file {}", path.display());
    path
}

#[test]
#[ignore = "boots Debian's kernel under btvmm and QEMU; .ci/run gives the inputs"]
fn a_quick_run_produces_every_cell() {
    let out = std::env::temp_dir().join(format!("btvmm-bench-quick-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_btvmm"))
        .arg("bench")
        .arg("--kernel")
        .arg(input("BTVMM_DEBIAN_KERNEL"))
        .arg("--initrd")
        .arg(input("BTVMM_LINUX_INITRD"))
        .arg("--program")
        .arg(input("BTVMM_BENCH_PROGRAM"))
        .arg("--busybox")
        .arg(input("BTVMM_BUSYBOX"))
        .args([
            "--quick",
            "--runs",
            "1",
            "--systems",
            "native,btvmm,tcg,kvm",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("run btvmm bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).expect("results.json"))
            .expect("results.json is JSON");
    let csv = std::fs::read_to_string(out.join("results.csv")).expect("results.csv");
    let markdown = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    let _ = std::fs::remove_dir_all(&out);

    let benchmarks: Vec<String> = json["benchmarks"]
        .as_array()
        .expect("benchmarks")
        .iter()
        .filter_map(|pair| pair[0].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        benchmarks.len(),
        12,
        "ten benchmarks and the boot's two rows: {benchmarks:?}"
    );
    let boot_row = |name: &str| name.starts_with("boot ");
    let cells = json["cells"].as_array().expect("cells");
    let mut problems = Vec::new();
    for benchmark in &benchmarks {
        for system in ["native", "btvmm", "tcg", "kvm"] {
            // Native has no boot.
            if system == "native" && boot_row(benchmark) {
                continue;
            }
            let cell = cells.iter().find(|cell| {
                cell["benchmark"].as_str() == Some(benchmark.as_str())
                    && cell["system"].as_str() == Some(system)
            });
            let Some(cell) = cell else {
                problems.push(format!("{benchmark} on {system}: no cell"));
                continue;
            };
            let samples = cell["samples"].as_array().map_or(0, Vec::len);
            let errors = cell["errors"].as_array().map_or(0, Vec::len);
            match system {
                // QEMU KVM may not run here (kvm_pvm): a reason will do.
                "kvm" if samples + errors == 1 => {}
                _ if samples == 1 && errors == 0 => {}
                _ => problems.push(format!("{benchmark} on {system}: {cell}")),
            }
        }
        if !markdown.contains(&format!("| {benchmark} |")) {
            problems.push(format!("{benchmark}: no row in results.md"));
        }
        if !csv
            .lines()
            .any(|line| line.starts_with(&format!("{benchmark},")))
        {
            problems.push(format!("{benchmark}: no line in results.csv"));
        }
    }
    // btvmm's counters per unit, for every benchmark.
    let breakdown = &json["breakdown"];
    for benchmark in benchmarks.iter().filter(|name| !boot_row(name)) {
        match breakdown[benchmark.as_str()].get("Ok") {
            Some(counters) if counters["traps"].as_f64().is_some() => {}
            _ => problems.push(format!(
                "{benchmark}: no breakdown: {}",
                breakdown[benchmark.as_str()]
            )),
        }
        if markdown.matches(&format!("| {benchmark} (")).count() != 2 {
            problems.push(format!(
                "{benchmark}: no breakdown row and model row in results.md"
            ));
        }
        // The counted events at calibrate's costs.
        let model = &json["model"][benchmark.as_str()];
        if model["explanation"]["modelled_ns"].as_f64().is_none() {
            problems.push(format!("{benchmark}: no time model: {model}"));
        }
        // Every term has its calibrate path.
        if model["explanation"]["missing"]
            .as_array()
            .is_none_or(|missing| !missing.is_empty())
        {
            problems.push(format!("{benchmark}: costs missing: {model}"));
        }
    }
    if json["calibration"].get("Ok").is_none() {
        problems.push(format!("calibrate: {}", json["calibration"]));
    }
    assert!(problems.is_empty(), "{problems:#?}\n{markdown}");
    assert!(stdout.contains("| benchmark | unit |"), "{stdout}");
}
