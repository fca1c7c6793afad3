//! The virtual CPU's identity: what CPUID tells the guest (DESIGN.md
//! section 5): a plain i686 with FPU, 4 MiB pages (PSE), TSC, MSRs, CX8,
//! CMOV, MMX, FXSR, SSE and SSE2, and nothing the VMM does not implement
//! (no APIC, PAE, PGE, SEP, no XSAVE/AVX, no SMEP/SMAP).
//!
//! Leaves 2 to 0x14 describe caches, topology, power management and
//! extended features this CPU does not enumerate: all zero, which is how
//! the SDM says "not enumerated", but for leaf 7's IA32_TSC_ADJUST. Leaves 0x15 and 0x16 give the TSC's
//! frequency, which the host measured (the guest's TSC is the host's): a
//! kernel that knows it needs no calibration against the PIT, whose port
//! polling loop gives up whenever one of its reads takes ten times
//! longer than the fastest (a host that preempts the VM once is enough).

/// CPUID leaf 1 EDX feature bits the virtual CPU reports.
pub mod feature {
    /// x87 FPU on chip.
    pub const FPU: u32 = 1 << 0;
    /// 4 MiB pages (CR4.PSE).
    pub const PSE: u32 = 1 << 3;
    /// Time-stamp counter.
    pub const TSC: u32 = 1 << 4;
    /// RDMSR/WRMSR.
    pub const MSR: u32 = 1 << 5;
    /// CMPXCHG8B.
    pub const CX8: u32 = 1 << 8;
    /// CMOVcc.
    pub const CMOV: u32 = 1 << 15;
    /// MMX.
    pub const MMX: u32 = 1 << 23;
    /// FXSAVE/FXRSTOR.
    pub const FXSR: u32 = 1 << 24;
    /// SSE.
    pub const SSE: u32 = 1 << 25;
    /// SSE2.
    pub const SSE2: u32 = 1 << 26;
}

/// Leaf 1 EDX.
pub const FEATURES_EDX: u32 = feature::FPU
    | feature::PSE
    | feature::TSC
    | feature::MSR
    | feature::CX8
    | feature::CMOV
    | feature::MMX
    | feature::FXSR
    | feature::SSE
    | feature::SSE2;

/// Leaf 1 ECX: no SSE3 or later; bit 31 says a hypervisor runs the CPU
/// (true, and what lets Linux skip probing model-specific hardware the
/// virtual CPU does not have: the P6 performance counters, microcode
/// loading).
pub const FEATURES_ECX: u32 = HYPERVISOR;

/// Leaf 1 ECX bit 31.
pub const HYPERVISOR: u32 = 1 << 31;

/// Family 6, model 6, stepping 3 (a Pentium II-era i686, like QEMU's
/// `qemu32`).
pub const SIGNATURE: u32 = 0x0000_0663;

const MAX_BASIC: u32 = 0x16;
/// The TSC-to-crystal ratio (leaf 0x15) and the processor frequency
/// (leaf 0x16).
const TSC_CRYSTAL: u32 = 0x15;
const FREQUENCY: u32 = 0x16;
const MAX_EXTENDED: u32 = 0x8000_0007;
/// Leaf 7 (subleaf 0 EBX) and its IA32_TSC_ADJUST bit.
const STRUCTURED_FEATURES: u32 = 7;
const TSC_ADJUST: u32 = 1 << 1;
/// Leaf 0x8000_0007 EDX bit 8.
const INVARIANT_TSC: u32 = 1 << 8;
const BRAND: &[u8; 48] =
    b"btvmm virtual i686 CPU\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

fn word(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(word)
}

/// EAX, EBX, ECX, EDX for a CPUID leaf (`subleaf` in ECX matters for leaf
/// 7 only), on a machine whose TSC counts `tsc_khz` kHz (0:
/// unknown, and leaves 0x15 and 0x16 say nothing).
#[must_use]
pub fn cpuid(leaf: u32, subleaf: u32, tsc_khz: u32) -> [u32; 4] {
    match leaf {
        // "GenuineIntel" in EBX, EDX, ECX.
        0 => [MAX_BASIC, word(b"Genu"), word(b"ntel"), word(b"ineI")],
        1 => [SIGNATURE, 0, FEATURES_ECX, FEATURES_EDX],
        // Structured extended features: only IA32_TSC_ADJUST.
        STRUCTURED_FEATURES if subleaf == 0 => [0, TSC_ADJUST, 0, 0],
        TSC_CRYSTAL => tsc_crystal(tsc_khz),
        // Base and maximum MHz; the bus frequency is not enumerated.
        FREQUENCY => [tsc_khz / 1000, tsc_khz / 1000, 0, 0],
        2..TSC_CRYSTAL => [0; 4],
        // L1 and L2 cache descriptions: not enumerated.
        0x8000_0005 | 0x8000_0006 => [0; 4],
        // Advanced power management: the invariant TSC, when the host
        // measured it (it measures only a TSC its kernel trusts as constant
        // and non-stop). With it and TSC_ADJUST, Linux drops the clocksource
        // watchdog for the TSC: checking it against the PIT, whose ticks
        // reach a VM late when the host is busy, could mark it unstable.
        0x8000_0007 => [0, 0, 0, if tsc_khz == 0 { 0 } else { INVARIANT_TSC }],
        0x8000_0000 => [MAX_EXTENDED, 0, 0, 0],
        0x8000_0001 => [0, 0, 0, 0],
        0x8000_0002..=0x8000_0004 => {
            let start = ((leaf - 0x8000_0002) * 16) as usize;
            let chunk = &BRAND[start..start + 16];
            [
                word(&chunk[0..]),
                word(&chunk[4..]),
                word(&chunk[8..]),
                word(&chunk[12..]),
            ]
        }
        // Intel: leaves beyond the maximum return the highest basic leaf.
        _ => cpuid(MAX_BASIC, 0, tsc_khz),
    }
}

/// Leaf 0x15: TSC = crystal Hz (ECX) x EBX / EAX. Linux reads the crystal
/// in whole kHz, so the crystal is a whole number of kHz; a TSC above
/// 4.29 GHz needs a ratio above 1 for the crystal to fit ECX (at most
/// ratio - 1 kHz lost).
fn tsc_crystal(tsc_khz: u32) -> [u32; 4] {
    if tsc_khz == 0 {
        return [0; 4];
    }
    let ratio = (u64::from(tsc_khz) * 1000).div_ceil(u64::from(u32::MAX));
    #[allow(clippy::cast_possible_truncation)] // at most 1000 (tsc_khz fits u32)
    let ratio = ratio as u32;
    [1, ratio, (tsc_khz / ratio) * 1000, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_signature_and_features() {
        let [max, ebx, ecx, edx] = cpuid(0, 0, 0);
        assert_eq!(max, 0x16);
        let mut vendor = Vec::new();
        for register in [ebx, edx, ecx] {
            vendor.extend_from_slice(&register.to_le_bytes());
        }
        assert_eq!(vendor, b"GenuineIntel");
        let [signature, _, ecx, edx] = cpuid(1, 0, 0);
        assert_eq!(signature, 0x663);
        assert_eq!(ecx, 1 << 31, "only the hypervisor bit");
        assert_eq!(edx, 0x0780_8139);
    }

    #[test]
    fn brand_string_and_out_of_range_leaves() {
        let mut brand = Vec::new();
        for leaf in 0x8000_0002..=0x8000_0004 {
            for register in cpuid(leaf, 0, 0) {
                brand.extend_from_slice(&register.to_le_bytes());
            }
        }
        assert!(brand.starts_with(b"btvmm virtual i686 CPU\0"));
        assert_eq!(cpuid(7, 0, 2_445_519), [0, 1 << 1, 0, 0], "TSC_ADJUST only");
        assert_eq!(cpuid(7, 1, 2_445_519), [0; 4]);
        assert_eq!(
            cpuid(0x8000_0007, 0, 2_445_519),
            [0, 0, 0, 1 << 8],
            "invariant"
        );
        assert_eq!(cpuid(0x8000_0007, 0, 0), [0; 4], "unknown: not invariant");
        assert_eq!(cpuid(0x17, 0, 2_445_519), cpuid(0x16, 0, 2_445_519));
        assert_eq!(cpuid(0x8000_0000, 0, 0)[0], 0x8000_0007);
        assert_eq!(cpuid(0x8000_0008, 0, 0), cpuid(0x16, 0, 0));
    }

    /// What Linux's native_calibrate_tsc computes from leaf 0x15.
    fn linux_tsc_khz(tsc_khz: u32) -> u64 {
        let [denominator, numerator, crystal_hz, _] = cpuid(0x15, 0, tsc_khz);
        if denominator == 0 || numerator == 0 {
            return 0;
        }
        u64::from(crystal_hz / 1000) * u64::from(numerator) / u64::from(denominator)
    }

    #[test]
    fn the_tsc_frequency_reaches_linux_to_the_khz() {
        assert_eq!(linux_tsc_khz(2_445_519), 2_445_519);
        assert_eq!(cpuid(0x16, 0, 2_445_519)[0], 2445, "base MHz");
        assert_eq!(linux_tsc_khz(4_294_967), 4_294_967, "the largest 1:1");
        // Above 4.29 GHz the crystal needs a ratio; at most a kHz is lost.
        let fast: u64 = 5_123_457;
        assert!(fast - linux_tsc_khz(5_123_457) <= 1);
        assert!(linux_tsc_khz(u32::MAX).abs_diff(u64::from(u32::MAX)) < 1000);
        // Unknown: no ratio, no frequency (Linux calibrates itself).
        assert_eq!(cpuid(0x15, 0, 0), [0; 4]);
        assert_eq!(cpuid(0x16, 0, 0), [0; 4]);
    }
}
