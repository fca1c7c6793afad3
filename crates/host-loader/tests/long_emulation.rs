//! Guests the monitor must keep up with. A legal guest that keeps the monitor busy for a long time is run, not
//! stopped: 50,100 PUSHFD/POPFD pairs in a row (each a sensitive
//! instruction the monitor emulates, with no native stretch between them)
//! once made btvmm stop with "100000 instructions emulated in a row".

use std::process::Command;

const LOAD: u32 = 0x0010_0000;

#[test]
fn fifty_thousand_pushfd_popfd_pairs_run_to_the_end() {
    let pairs = 50_100;
    let mut code = Vec::with_capacity(pairs * 2 + 16);
    // mov esp, LOAD: a stack below the code.
    code.push(0xbc);
    code.extend_from_slice(&LOAD.to_le_bytes());
    for _ in 0..pairs {
        code.extend_from_slice(&[0x9c, 0x9d]); // pushfd; popfd
    }
    code.extend_from_slice(&[
        0xb0, 0x00, // mov al, 0
        0xe6, 0xf4, // out 0xf4, al: exit status 1
        0xf4, // hlt (not reached)
    ]);
    passes_under_both_mechanisms("pushf", &code);
}

/// WRMSR to IA32_TIME_STAMP_COUNTER moves what RDTSC returns, also where
/// RDTSC runs natively (btvmm makes it fault while an offset is set; it
/// used to move only the emulated RDTSC). QEMU's TCG ignores the write, so
/// this is not a conformance kernel.
#[test]
fn wrmsr_to_the_tsc_moves_native_rdtsc() {
    // After the WRMSR, enough NOPs that the monitor resumes natively
    // before the RDTSC instead of interpreting up to it.
    let mut code = vec![
        0xb9, 0x10, 0x00, 0x00, 0x00, // mov ecx, 0x10 (IA32_TIME_STAMP_COUNTER)
        0x31, 0xc0, // xor eax, eax
        0xba, 0x00, 0x00, 0x04, 0x00, // mov edx, 0x40000: EDX:EAX = 1 << 50
        0x0f, 0x30, // wrmsr
    ];
    code.extend_from_slice(&[0x90; 64]);
    code.extend_from_slice(&[
        0x0f, 0x31, // rdtsc
        0x81, 0xfa, 0x00, 0x00, 0x04, 0x00, // cmp edx, 0x40000
        0x72, 0x1a, // jb fail
        0x81, 0xfa, 0x10, 0x00, 0x04, 0x00, // cmp edx, 0x40010 (2^36 cycles later)
        0x73, 0x12, // jae fail
        0x0f, 0x32, // rdmsr (ECX still 0x10)
        0x81, 0xfa, 0x00, 0x00, 0x04, 0x00, // cmp edx, 0x40000
        0x72, 0x08, // jb fail
        0xb0, 0x00, // mov al, 0
        0xe6, 0xf4, // out 0xf4, al: status 1, passed
        0xf4, // hlt
        0x90, 0x90, 0x90, // padding
        0xb0, 0x01, // fail: mov al, 1
        0xe6, 0xf4, // out 0xf4, al: status 3
        0xf4, // hlt
    ]);
    passes_under_both_mechanisms("tsc", &code);
}

/// Boots `code` as a Multiboot kernel under the split view and under
/// hardware breakpoints; each run must end with debug-exit status 1.
fn passes_under_both_mechanisms(name: &str, code: &[u8]) {
    let path = std::env::temp_dir().join(format!("btvmm-{name}-{}.bin", std::process::id()));
    std::fs::write(
        &path,
        experiments::image::aout_kludge_image(LOAD, code, LOAD + 32),
    )
    .expect("write the kernel");
    for mechanism in ["split", "hw"] {
        let output = Command::new(env!("CARGO_BIN_EXE_btvmm"))
            .args(["run", "--no-reboot", "--breakpoints", mechanism, "--kernel"])
            .arg(&path)
            .output()
            .expect("run btvmm");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{name}, {mechanism}: {stderr}"
        );
    }
    let _ = std::fs::remove_file(&path);
}
