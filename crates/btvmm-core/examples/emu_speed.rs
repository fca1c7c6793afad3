//! The emulator alone on a kernel-like mix (`btvmm_core::emu::speed`):
//! `cargo run --release -p btvmm-core --example emu_speed [INSTRUCTIONS]`.
//! `btvmm calibrate` reports the same beside the monitor's path.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let instructions: u64 = match std::env::args().nth(1) {
        Some(count) => count.parse()?,
        None => 5_000_000,
    };
    let general = btvmm_core::emu::speed::kernel_like_mix(instructions)?.0;
    let fast = btvmm_core::emu::speed::kernel_like_mix_fast(instructions)?.0;
    for (what, ns) in [("general emulator", general), ("fast interpreter", fast)] {
        #[allow(clippy::cast_precision_loss)] // a rate
        let per_instruction = ns / instructions as f64;
        println!(
            "{what}: {instructions} instructions in {:.3} s: {per_instruction:.1} ns an instruction, {:.1} M a second",
            ns / 1e9,
            1e3 / per_instruction
        );
    }
    Ok(())
}
