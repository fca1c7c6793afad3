//! Guests the VMM cannot run on are stopped with one line and exit status
//! 2, never run on with made-up semantics: here, a guest whose page
//! directory lies outside its RAM.

use std::process::Command;

const LOAD: u32 = 0x0010_0000;

#[test]
fn a_page_directory_outside_ram_stops_the_vm_with_one_line() {
    let code = [
        0xb8, 0x00, 0x00, 0x00, 0xf0, // mov eax, 0xf0000000 (far beyond RAM)
        0x0f, 0x22, 0xd8, // mov cr3, eax
        0x0f, 0x20, 0xc0, // mov eax, cr0
        0x0d, 0x00, 0x00, 0x00, 0x80, // or eax, 0x80000000
        0x0f, 0x22, 0xc0, // mov cr0, eax
        0xf4, // hlt
    ];
    let path = std::env::temp_dir().join(format!("btvmm-paging-{}.bin", std::process::id()));
    std::fs::write(
        &path,
        experiments::image::aout_kludge_image(LOAD, &code, LOAD + 32),
    )
    .expect("write the kernel");
    let output = Command::new(env!("CARGO_BIN_EXE_btvmm"))
        .args(["run", "--kernel"])
        .arg(&path)
        .output()
        .expect("run btvmm");
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("outside guest RAM"), "{stderr}");
}
