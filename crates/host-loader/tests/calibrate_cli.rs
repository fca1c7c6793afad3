//! `btvmm calibrate` measures every bare event and every btvmm path in one
//! run. The numbers vary between hosts and runs (they are measurements,
//! not test criteria); what must hold is that every row is there, was
//! measured (finite, positive, below a second) and that each ratio is the
//! path's cost over the sum of the bare events it names.

use std::process::Command;

const BARE: [&str; 10] = [
    "gp",
    "db",
    "pf",
    "pf-map",
    "sigsys",
    "bp-move",
    "futex-handoff",
    "futex-handoff-proc",
    "futex-handoff-proc-filtered",
    "signal",
];

const PATHS: [&str; 9] = [
    "cli/sti emulated",
    "breakpoint + pushf + re-plan",
    "guest int 0x80 + iret",
    "interrupt injected",
    "exit to the host and back",
    "hidden fault + invlpg",
    "guest #PF delivered + iret",
    "cr3 switch (pool)",
    "cr3 switch (one process)",
];

fn measured(ns: f64, what: &str) {
    assert!(ns.is_finite() && ns > 0.0 && ns < 1e9, "{what}: {ns} ns");
}

#[test]
fn calibrate_reports_every_bare_event_and_path() {
    let output = Command::new(env!("CARGO_BIN_EXE_btvmm"))
        .args([
            "calibrate",
            // A path's cost is its loop time minus the bare loop's: one
            // short round on a busy machine can come out negative.
            "--iterations",
            "500",
            "--rounds",
            "3",
            "--json",
        ])
        .output()
        .expect("run btvmm calibrate");
    assert!(
        output.status.success(),
        "calibrate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("calibrate --json prints JSON");
    let bare = table["bare"].as_array().expect("a bare array");
    let names: Vec<&str> = bare
        .iter()
        .filter_map(|row| row["event"].as_str())
        .collect();
    assert_eq!(names, BARE);
    let bare_ns = |name: &str| {
        bare.iter()
            .find(|row| row["event"] == name)
            .and_then(|row| row["ns"].as_f64())
            .expect("a bare cost")
    };
    for name in BARE {
        measured(bare_ns(name), name);
    }
    let paths = table["paths"].as_array().expect("a paths array");
    let names: Vec<&str> = paths
        .iter()
        .filter_map(|row| row["path"].as_str())
        .collect();
    assert_eq!(names, PATHS);
    for row in paths {
        let name = row["path"].as_str().unwrap_or_default();
        let ns = row["ns"].as_f64().expect("a path cost");
        measured(ns, name);
        // "gp + 2 futex-handoff": the bare column is that sum.
        let needs: f64 = row["needs"]
            .as_str()
            .expect("needs")
            .split(" + ")
            .map(|term| match term.split_once(' ') {
                Some((count, event)) => count.parse::<f64>().expect("a count") * bare_ns(event),
                None => bare_ns(term),
            })
            .sum();
        let bare_total = row["bare_ns"].as_f64().expect("bare_ns");
        assert!(
            (bare_total - needs).abs() < 1e-6 * needs,
            "{name}: {bare_total} vs {needs}"
        );
        let ratio = row["ratio"].as_f64().expect("ratio");
        assert!(
            (ratio - ns / needs).abs() < 1e-9 * ratio.max(1.0),
            "{name}: ratio {ratio}"
        );
    }
}

#[test]
fn calibrate_rejects_a_bad_option_with_one_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_btvmm"))
        .args(["calibrate", "--iterations", "0"])
        .output()
        .expect("run btvmm calibrate");
    assert_eq!(output.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"));
}
