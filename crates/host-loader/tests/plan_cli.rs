//! `btvmm plan` end to end: the fixture kernel from `guests/planner`
//! (assembled at test time), wrapped in a bzImage, and bad inputs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use btvmm_core::GuestVirt;
use host_loader::elf::KernelElf;
use host_loader::image::wrap_in_bzimage;

/// A temporary directory removed when the test ends.
struct Scratch(PathBuf);

impl Scratch {
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Best effort: a leftover temp dir is harmless.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch_dir(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("btvmm-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    Scratch(dir)
}

/// Assembles and links `guests/planner/fixture.S` as a 32-bit ELF linked at
/// 0xc1000000 (needs binutils: `as --32`, `ld -m elf_i386`).
fn fixture_elf(dir: &Scratch) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guests/planner/fixture.S");
    let object = dir.join("fixture.o");
    let elf = dir.join("fixture.elf");
    let status = Command::new("as")
        .args(["--32", "-o"])
        .arg(&object)
        .arg(&source)
        .status()
        .expect("binutils `as` must be installed to build the planner fixture");
    assert!(status.success(), "assembling {}", source.display());
    let status = Command::new("ld")
        .args(["-m", "elf_i386", "-Ttext=0xc1000000", "-o"])
        .arg(&elf)
        .arg(&object)
        .status()
        .expect("binutils `ld` must be installed to link the planner fixture");
    assert!(status.success(), "linking the fixture");
    elf
}

fn btvmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_btvmm"))
        .args(args)
        .output()
        .expect("run btvmm")
}

fn plan_json(args: &[&str]) -> serde_json::Value {
    let mut full = vec!["plan", "--json"];
    full.extend_from_slice(args);
    let output = btvmm(&full);
    assert!(
        output.status.success(),
        "btvmm {full:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON report")
}

fn plans(report: &serde_json::Value) -> Vec<Option<Vec<u32>>> {
    report["entry"]["plans"]
        .as_array()
        .expect("plans")
        .iter()
        .map(|plan| {
            plan["breakpoints"].as_array().map(|list| {
                list.iter()
                    .map(|at| u32::try_from(at.as_u64().expect("address")).expect("32-bit"))
                    .collect()
            })
        })
        .collect()
}

fn symbol(elf: &KernelElf, name: &str) -> u32 {
    let GuestVirt(at) = elf.symbols[name];
    at
}

#[test]
fn fixture_fig33_plans_follow_the_dissertation() {
    let dir = scratch_dir("fig33");
    let elf_path = fixture_elf(&dir);
    let elf = KernelElf::parse(&std::fs::read(&elf_path).expect("fixture")).expect("parses");
    let report = plan_json(&[
        elf_path.to_str().expect("utf-8 path"),
        "--symbol",
        "fig33",
        "--breakpoints",
        "4",
    ]);
    let s = |name| symbol(&elf, name);
    let mut three = vec![
        s("fig33_sensitive"),
        s("fig33_pointer1"),
        s("fig33_pointer2"),
    ];
    three.sort_unstable();
    let mut two = vec![s("fig33_cond2"), s("fig33_pointer1")];
    two.sort_unstable();
    assert_eq!(
        plans(&report),
        vec![
            Some(vec![s("fig33_cond1")]),
            Some(two),
            Some(three.clone()),
            Some(three)
        ]
    );
    assert_eq!(report["entry"]["pois"], 5);
    // The sweep saw the fixture's sensitive instructions.
    let sensitive = report["sweep"]["sensitive"].as_array().expect("rows");
    assert!(
        sensitive
            .iter()
            .any(|row| row["kind"] == "FlagsRead" && row["count"] == 1)
    );
}

#[test]
fn fixture_loops_and_call_chains() {
    let dir = scratch_dir("shapes");
    let elf_path = fixture_elf(&dir);
    let elf = KernelElf::parse(&std::fs::read(&elf_path).expect("fixture")).expect("parses");
    let path = elf_path.to_str().expect("utf-8 path");
    let report = plan_json(&[path, "--symbol", "loop_entry", "--breakpoints", "2"]);
    let exit = symbol(&elf, "loop_exit");
    assert_eq!(plans(&report), vec![Some(vec![exit]), Some(vec![exit])]);
    let report = plan_json(&[path, "--symbol", "chain_outer", "--breakpoints", "1"]);
    assert_eq!(
        plans(&report),
        vec![Some(vec![symbol(&elf, "chain_inner_ret")])]
    );
}

#[test]
fn a_bzimage_around_the_fixture_is_unpacked_and_planned() {
    let dir = scratch_dir("bzimage");
    let elf_path = fixture_elf(&dir);
    let elf_bytes = std::fs::read(&elf_path).expect("fixture");
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
    xz.write_all(&elf_bytes).expect("compress");
    let image = dir.join("bzImage");
    std::fs::write(
        &image,
        wrap_in_bzimage(&xz.finish().expect("compress"), 0x020f),
    )
    .expect("write");
    let report = plan_json(&[
        image.to_str().expect("utf-8 path"),
        "--at",
        "0xc1000000",
        "--breakpoints",
        "1",
    ]);
    assert_eq!(report["image"]["format"], "bzimage");
    assert_eq!(report["image"]["header"]["compression"], "xz");
    assert_eq!(report["vmlinux_bytes"], elf_bytes.len());
    assert_eq!(plans(&report).len(), 1);
}

/// A bad input ends with exit status 2 and one line on stderr.
fn assert_one_line_error(args: &[&str], expected: &str) {
    let output = btvmm(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "btvmm {args:?}: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "btvmm {args:?} printed: {stderr}"
    );
    assert!(
        stderr.contains(expected),
        "btvmm {args:?} said {stderr:?}, expected {expected:?}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn bad_inputs_get_one_line_and_exit_status_2() {
    let dir = scratch_dir("bad");
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        path.to_str().expect("utf-8 path").to_owned()
    };
    assert_one_line_error(&["plan", "/nonexistent/vmlinuz"], "cannot read");
    let garbage = write("garbage", &[0x55; 8192]);
    assert_one_line_error(&["plan", &garbage], "not a Linux bzImage");
    let tiny = write("tiny", b"MZ");
    assert_one_line_error(&["plan", &tiny], "truncated");

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&[0x42; 4096]).expect("compress");
    let image = wrap_in_bzimage(&gz.finish().expect("compress"), 0x020f);
    let truncated = write("truncated", &image[..image.len() - 100]);
    assert_one_line_error(&["plan", &truncated], "truncated");
    let not_elf = write("not-elf", &image);
    assert_one_line_error(&["plan", &not_elf], "not an ELF");
    let unknown = write("unknown", &wrap_in_bzimage(b"\x11\x22\x33\x44 raw", 0x020f));
    assert_one_line_error(&["plan", &unknown], "unknown payload compression");
    let lzo = write("lzo", &wrap_in_bzimage(b"\x89LZO\x00\x0d", 0x020f));
    assert_one_line_error(&["plan", &lzo], "lzo-compressed kernels are not supported");
    let mut corrupt = image.clone();
    let middle = 1024 + 20;
    corrupt[middle] ^= 0xff;
    let corrupt = write("corrupt", &corrupt);
    assert_one_line_error(&["plan", &corrupt], "corrupt gzip payload");

    let fixture = fixture_elf(&dir);
    let fixture = fixture.to_str().expect("utf-8 path");
    assert_one_line_error(
        &["plan", fixture, "--at", "0x1000"],
        "outside the kernel's executable sections",
    );
    assert_one_line_error(
        &["plan", fixture, "--symbol", "no_such_function"],
        "no code symbol",
    );
    let stub_map = write(
        "System.map",
        b"ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n",
    );
    assert_one_line_error(
        &[
            "plan",
            fixture,
            "--symbol",
            "fig33",
            "--system-map",
            &stub_map,
        ],
        "no symbols",
    );
    // Option errors are clap's, also status 2.
    let output = btvmm(&["plan", fixture, "--at", "0xzz"]);
    assert_eq!(output.status.code(), Some(2));
    let output = btvmm(&["plan", fixture, "--breakpoints", "0"]);
    assert_eq!(output.status.code(), Some(2));
}

/// Debian's real 686 kernel, fetched by `.ci/run` (scripts/fetch-debian-kernel)
/// and passed in `BTVMM_DEBIAN_KERNEL`. Ignored by plain `cargo test`;
/// `.ci/run` runs it with `--ignored`.
#[test]
#[ignore = "needs Debian's i386 kernel; .ci/run provides it"]
fn debian_686_kernel_report() {
    let kernel = std::env::var("BTVMM_DEBIAN_KERNEL")
        .expect("set BTVMM_DEBIAN_KERNEL to a Debian linux-image-*-686 vmlinuz (scripts/fetch-debian-kernel)");
    let report = plan_json(&[&kernel]);
    assert_eq!(report["image"]["format"], "bzimage");
    assert_eq!(report["image"]["header"]["compression"], "xz");
    let sweep = &report["sweep"];
    let instructions = sweep["instructions"].as_u64().expect("count");
    assert!(
        instructions > 1_000_000,
        "only {instructions} instructions decoded"
    );
    let unrecognized = sweep["unrecognized"].as_u64().expect("count");
    assert!(
        unrecognized * 10_000 < instructions,
        "{unrecognized} undecodable"
    );
    let rows = sweep["sensitive"].as_array().expect("rows");
    for kind in [
        "FlagsRead",
        "FlagsWrite",
        "InterruptFlag",
        "PortIo",
        "Cpuid",
        "ControlRegister",
    ] {
        assert!(
            rows.iter()
                .any(|row| row["kind"] == kind && row["count"].as_u64() > Some(0)),
            "no {kind} in the kernel"
        );
    }
    // startup_32 begins with lgdt, which traps by itself.
    assert_eq!(report["entry"]["at"], 0xc100_0000u32);
    assert_eq!(plans(&report).len(), 6);
}

/// Debian's real armmp (ARMv7) kernel, `scripts/fetch-debian-kernel --arch
/// armhf`, in `BTVMM_DEBIAN_ARM_KERNEL`: the zImage's xz payload, the
/// kernel's own kallsyms, the classes, and plans for 1..6 breakpoints.
#[test]
#[ignore = "needs Debian's armhf kernel; .ci/run provides it"]
fn debian_armmp_kernel_report() {
    let kernel = std::env::var("BTVMM_DEBIAN_ARM_KERNEL").expect(
        "set BTVMM_DEBIAN_ARM_KERNEL to a Debian linux-image-*-armmp vmlinuz (scripts/fetch-debian-kernel --arch armhf)",
    );
    let report = plan_json(&["--arch", "arm", &kernel, "--all-functions", "6"]);
    assert_eq!(report["compression"], "xz");
    assert!(
        report["symbols"].as_u64() > Some(10_000),
        "{}",
        report["symbols"]
    );
    let sweep = &report["sweep"];
    let instructions = sweep["instructions"].as_u64().expect("count");
    assert!(
        instructions > 1_000_000,
        "only {instructions} instructions reached"
    );
    let rows = sweep["sensitive"].as_array().expect("rows");
    for kind in [
        "SystemRegister",
        "CacheTlbMaintenance",
        "ChangeProcessorState",
        "StatusRead",
        "StatusWrite",
        "SupervisorCall",
        "WaitForInterrupt",
        "UnprivilegedAccess",
        "ExceptionReturn",
    ] {
        assert!(
            rows.iter()
                .any(|row| row["kind"] == kind && row["count"].as_u64() > Some(0)),
            "no {kind} in the kernel"
        );
    }
    assert_eq!(report["entry"]["chosen_by"], "symbol start_kernel");
    let plans = report["entry"]["plans"].as_array().expect("plans");
    assert_eq!(plans.len(), 6);
    assert!(
        plans
            .last()
            .is_some_and(|plan| plan["breakpoints"].is_array()),
        "a plan with 6 breakpoints exists: {plans:?}"
    );
    // The shared planner from every kallsyms function: nearly all get a
    // plan within 6 breakpoints; the few that cannot start natively begin
    // with a sensitive instruction or a pointer branch.
    let functions = &report["function_plans"];
    let planned = functions["functions"].as_u64().expect("functions");
    assert!(planned > 10_000, "{functions}");
    let armed: u64 = functions["by_breakpoints"]
        .as_array()
        .expect("by_breakpoints")
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .sum();
    let step_first = functions["step_first"].as_u64().expect("step_first");
    assert_eq!(armed + step_first, planned, "{functions}");
    assert!(step_first < planned / 100, "{functions}");
    // Not an ARM kernel: one line, status 2.
    let output = btvmm(&["plan", "--arch", "arm", env!("CARGO_BIN_EXE_btvmm")]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no ARM zImage magic"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn run_refuses_what_is_neither_a_bzimage_nor_a_multiboot_kernel() {
    let dir = scratch_dir("run-bad");
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        path.to_str().expect("utf-8 path").to_owned()
    };
    let garbage = write("garbage", &[0x55; 8192]);
    assert_one_line_error(
        &["run", "--kernel", &garbage],
        "neither a Linux bzImage (boot sector signature 0xAA55 and a \"HdrS\" setup header at 0x1F1) nor a Multiboot kernel",
    );
    assert_one_line_error(&["run", "--kernel", "/nonexistent.elf"], "cannot read");
    // A bzImage of a protocol before the 32-bit entry fields.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&[0x42; 64]).expect("compress");
    let old = write(
        "old-bzimage",
        &wrap_in_bzimage(&gz.finish().expect("compress"), 0x0203),
    );
    assert_one_line_error(
        &["run", "--kernel", &old],
        "cannot boot this Linux kernel: boot protocol 0x0203",
    );
    // A valid header whose a.out addresses point outside the file.
    let mut kludge = Vec::new();
    let flags: u32 = 1 << 16;
    for value in [
        0x1bad_b002u32,
        flags,
        0u32.wrapping_sub(0x1bad_b002u32.wrapping_add(flags)),
    ] {
        kludge.extend_from_slice(&value.to_le_bytes());
    }
    for value in [0x10_0000u32, 0x10_0000, 0x20_0000, 0, 0x10_0000] {
        kludge.extend_from_slice(&value.to_le_bytes());
    }
    let kludge = write("kludge", &kludge);
    assert_one_line_error(&["run", "--kernel", &kludge], "a.out kludge");
    assert_one_line_error(
        &["run", "--kernel", &kludge, "--initrd", &garbage],
        "--initrd is for Linux kernels",
    );
    // The fixture ELF has no Multiboot header.
    let fixture = fixture_elf(&dir);
    assert_one_line_error(
        &["run", "--kernel", fixture.to_str().expect("utf-8")],
        "nor a Multiboot kernel",
    );
    assert_one_line_error(&["run", "--kernel", &garbage, "--memory", "1"], "--memory");
}
