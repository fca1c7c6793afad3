//! Guest images made here: generated code wrapped as a Multiboot kernel
//! that `btvmm run` boots (the calibration guests, test kernels).

/// A Multiboot kernel image in the a.out kludge form: the 32-byte header
/// (load address, load and BSS end, entry), then `code`, all loaded at
/// `load`: the form host_loader::multiboot loads without an ELF.
#[must_use]
pub fn aout_kludge_image(load: u32, code: &[u8], entry: u32) -> Vec<u8> {
    const MAGIC: u32 = 0x1bad_b002;
    const FLAGS: u32 = 1 << 16;
    const HEADER_BYTES: u32 = 32;
    let end = u32::try_from(code.len())
        .ok()
        .and_then(|len| load.checked_add(HEADER_BYTES)?.checked_add(len))
        .unwrap_or(u32::MAX);
    let mut image = Vec::with_capacity(code.len() + HEADER_BYTES as usize);
    for word in [
        MAGIC,
        FLAGS,
        0u32.wrapping_sub(MAGIC).wrapping_sub(FLAGS),
        load,
        load,
        end,
        end,
        entry,
    ] {
        image.extend_from_slice(&word.to_le_bytes());
    }
    image.extend_from_slice(code);
    image
}
