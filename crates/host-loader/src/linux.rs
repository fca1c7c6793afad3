//! The Linux 32-bit boot protocol (Documentation/arch/x86/boot.rst) for
//! bzImage kernels: the protected-mode kernel loaded at `code32_start`,
//! the zero page (`boot_params`) with the setup header, an e820 map, the
//! command line and the initrd, and entry at `code32_start` with ESI
//! pointing at `boot_params`, flat `__BOOT_CS`/`__BOOT_DS` segments from a
//! GDT the loader provides, interrupts and paging off. The kernel's own
//! decompressor runs as guest code.
//!
//! Guest-physical layout of what the loader writes below 1 MiB: nothing in
//! the low 64 KiB (the world never maps it: accesses there are emulated,
//! and the kernel keeps it reserved), the zero page at [`ZERO_PAGE`], the
//! command line after it, the boot GDT after that; above 1 MiB the kernel
//! at `code32_start`, and the initrd as high in RAM as `initrd_addr_max`
//! allows, above the area the kernel decompresses into.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::ByteValued;

use crate::LoaderError;
use crate::boot::Handover;

/// Offset of the setup header in the image and in the zero page.
const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// "HdrS".
const HEADER_MAGIC: u32 = 0x5372_6448;
/// The boot sector signature.
const BOOT_FLAG: u16 = 0xaa55;
/// 2.04 is the first protocol whose 32-bit entry and fields we rely on
/// (`syssize` as 32 bits, `code32_start`, `initrd_addr_max`).
const MIN_PROTOCOL: u16 = 0x0204;
/// loadflags: the protected-mode code is loaded at 0x100000 (bzImage).
const LOADED_HIGH: u8 = 1 << 0;
/// `type_of_loader` for a boot loader without an assigned ID.
const LOADER_UNDEFINED: u8 = 0xff;
/// e820 types.
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
/// Where conventional memory ends and the legacy video/BIOS hole begins.
const LOW_RAM_END: u64 = 0xa_0000;
/// Where extended memory begins.
const HIGH_RAM_START: u64 = 0x10_0000;

/// Guest-physical address of `boot_params` (the zero page).
pub const ZERO_PAGE: u32 = 0x2_0000;
/// Guest-physical address of the command line.
pub const CMDLINE: u32 = ZERO_PAGE + 0x1000;
/// Longest command line the loader places (the protocol's `cmdline_size`
/// limits it further); the boot GDT follows.
const CMDLINE_MAX: u32 = 0x1000;
/// Guest-physical address of the boot GDT.
pub const BOOT_GDT: u32 = CMDLINE + CMDLINE_MAX;
/// `__BOOT_CS` and `__BOOT_DS`: the selectors the protocol asks for.
pub const BOOT_CS: u16 = 0x10;
/// See [`BOOT_CS`].
pub const BOOT_DS: u16 = 0x18;

/// Whether `file` carries a Linux setup header (boot sector flag and
/// "HdrS"), whatever its protocol version.
#[must_use]
pub fn is_bzimage(file: &[u8]) -> bool {
    let word = |at: usize, len: usize| {
        file.get(at..at + len).map(|bytes| {
            bytes
                .iter()
                .rev()
                .fold(0u32, |value, &byte| (value << 8) | u32::from(byte))
        })
    };
    word(0x1fe, 2) == Some(u32::from(BOOT_FLAG)) && word(0x202, 4) == Some(HEADER_MAGIC)
}

/// What the loader placed, for messages and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Where the protected-mode kernel went and how long it is.
    pub kernel: (u32, u32),
    /// The end of the area the kernel decompresses into (`init_size`
    /// bytes from its preferred address), which nothing else may use.
    pub kernel_area_end: u32,
    /// Where the initrd went and how long it is (0, 0 without one).
    pub initrd: (u32, u32),
}

/// Loads bzImage `file` with `initrd` and `cmdline` into guest RAM of
/// `ram_size` bytes (`write(phys, bytes)` returns false outside RAM) and
/// returns the entry state.
pub fn load(
    file: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    ram_size: u32,
    write: &mut dyn FnMut(u32, &[u8]) -> bool,
) -> Result<(Handover, Placement), LoaderError> {
    let header = read_header(file)?;
    let protocol = header.version;
    if protocol < MIN_PROTOCOL {
        return Err(LoaderError::Linux(format!(
            "boot protocol {protocol:#06x} is older than 2.04, the first with the 32-bit entry btvmm uses"
        )));
    }
    if header.loadflags & LOADED_HIGH == 0 {
        return Err(LoaderError::Linux(
            "a zImage (loaded at 0x10000, not 0x100000) is not supported: only bzImage".into(),
        ));
    }
    let setup_sects = match header.setup_sects {
        0 => 4,
        sects => sects,
    };
    let protected_offset = (usize::from(setup_sects) + 1) * 512;
    let kernel = file
        .get(protected_offset..)
        .filter(|kernel| !kernel.is_empty())
        .ok_or(LoaderError::Truncated {
            what: "protected-mode kernel",
            needed: protected_offset + 1,
            found: file.len(),
        })?;
    let load_at = header.code32_start;
    let ram = u64::from(ram_size);
    let kernel_end = u64::from(load_at) + kernel.len() as u64;
    if u64::from(load_at) < HIGH_RAM_START || kernel_end > ram {
        return Err(LoaderError::Linux(format!(
            "the {} KiB kernel at code32_start {load_at:#x} does not fit {} MiB of RAM above 1 MiB",
            kernel.len() / 1024,
            ram >> 20
        )));
    }
    // The decompressed kernel needs init_size bytes from its preferred
    // address (protocol 2.10+; before, from the load address).
    let (preferred, init_size) = if protocol >= 0x020a {
        (header.pref_address, u64::from(header.init_size))
    } else {
        (u64::from(load_at), 0)
    };
    let kernel_area_end = kernel_end.max(preferred.saturating_add(init_size));
    if kernel_area_end > ram {
        return Err(LoaderError::Linux(format!(
            "the kernel decompresses up to {:#x} ({} MiB); give the guest more memory (--memory)",
            kernel_area_end,
            kernel_area_end.div_ceil(1 << 20)
        )));
    }

    let cmdline_limit = if protocol >= 0x0206 {
        header.cmdline_size
    } else {
        255
    };
    if cmdline.len() as u64 > u64::from(cmdline_limit.min(CMDLINE_MAX - 1)) {
        return Err(LoaderError::Linux(format!(
            "the command line is {} bytes; this kernel takes at most {}",
            cmdline.len(),
            cmdline_limit.min(CMDLINE_MAX - 1)
        )));
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(LoaderError::Linux(
            "the command line contains a NUL byte".into(),
        ));
    }

    let initrd_place = match initrd {
        None | Some([]) => None,
        Some(initrd) => Some(place_initrd(
            initrd.len() as u64,
            &header,
            ram,
            kernel_area_end,
        )?),
    };

    let mut params = boot_params {
        hdr: header,
        ..boot_params::default()
    };
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE;
    // Fields the loader writes, whatever the file holds there: no initrd
    // (unless one is placed below) and no setup_data list.
    params.hdr.ramdisk_image = 0;
    params.hdr.ramdisk_size = 0;
    params.hdr.setup_data = 0;
    if let (Some(initrd), Some(at)) = (initrd, initrd_place) {
        params.hdr.ramdisk_image = at;
        #[allow(clippy::cast_possible_truncation)] // placed below 4 GiB
        {
            params.hdr.ramdisk_size = initrd.len() as u32;
        }
    }
    // The screen as a VGA BIOS leaves it after mode 3: 80x25 colour text
    // with a 16-line font, the cursor at the top left (devices::vga's
    // power-on state). vgacon takes the VGA from this; EGA_BX's low byte
    // is not 0x10 (an EGA or better answered INT 10h AH=12h: 256 KiB).
    params.screen_info.orig_video_mode = 3;
    params.screen_info.orig_video_cols = 80;
    params.screen_info.orig_video_lines = 25;
    params.screen_info.orig_video_isVGA = 1;
    params.screen_info.orig_video_points = 16;
    params.screen_info.orig_video_ega_bx = 0x0003;
    let e820 = e820_map(ram);
    for (slot, entry) in params.e820_table.iter_mut().zip(&e820) {
        *slot = *entry;
    }
    #[allow(clippy::cast_possible_truncation)] // three entries
    {
        params.e820_entries = e820.len() as u8;
    }
    // Extended memory in KiB, for kernels that fall back on it.
    #[allow(clippy::cast_possible_truncation)] // RAM is below 4 GiB
    {
        params.alt_mem_k = ((ram - HIGH_RAM_START) / 1024) as u32;
    }

    let mut place = |phys: u32, bytes: &[u8], what: &str| -> Result<(), LoaderError> {
        if write(phys, bytes) {
            Ok(())
        } else {
            Err(LoaderError::Linux(format!(
                "the {what} ({} bytes at {phys:#x}) does not fit guest RAM",
                bytes.len()
            )))
        }
    };
    place(load_at, kernel, "kernel")?;
    place(ZERO_PAGE, params.as_slice(), "zero page")?;
    let mut line = cmdline.as_bytes().to_vec();
    line.push(0);
    place(CMDLINE, &line, "command line")?;
    place(BOOT_GDT, &boot_gdt(), "boot GDT")?;
    if let (Some(initrd), Some(at)) = (initrd, initrd_place) {
        place(at, initrd, "initrd")?;
    }

    let mut gpr = [0; 8];
    gpr[6] = ZERO_PAGE; // ESI
    #[allow(clippy::cast_possible_truncation)] // checked against RAM
    let placement = Placement {
        kernel: (load_at, kernel.len() as u32),
        kernel_area_end: kernel_area_end as u32,
        initrd: match (initrd, initrd_place) {
            (Some(initrd), Some(at)) => (at, initrd.len() as u32),
            _ => (0, 0),
        },
    };
    Ok((
        Handover {
            eip: load_at,
            gpr,
            code_selector: BOOT_CS,
            data_selector: BOOT_DS,
            gdt_base: BOOT_GDT,
            #[allow(clippy::cast_possible_truncation)] // 4 descriptors
            gdt_limit: (boot_gdt().len() - 1) as u16,
        },
        placement,
    ))
}

/// The setup header of `file`, checked for the signatures.
fn read_header(file: &[u8]) -> Result<setup_header, LoaderError> {
    let len = std::mem::size_of::<setup_header>();
    let bytes = file
        .get(SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + len)
        .ok_or(LoaderError::Truncated {
            what: "setup header",
            needed: SETUP_HEADER_OFFSET + len,
            found: file.len(),
        })?;
    let header = setup_header::from_slice(bytes)
        .copied()
        .ok_or_else(|| LoaderError::Linux("the setup header does not fit".into()))?;
    let (flag, magic) = (header.boot_flag, header.header);
    if flag != BOOT_FLAG || magic != HEADER_MAGIC {
        return Err(LoaderError::Linux(
            "no boot sector signature or \"HdrS\" setup header".into(),
        ));
    }
    Ok(header)
}

/// Where the initrd goes: page-aligned, as high as RAM and
/// `initrd_addr_max` allow, above the kernel's decompression area.
fn place_initrd(
    len: u64,
    header: &setup_header,
    ram: u64,
    kernel_area_end: u64,
) -> Result<u32, LoaderError> {
    // Before 2.03 the field did not exist and the limit was 0x37ffffff.
    let highest = u64::from(if header.version >= 0x0203 {
        header.initrd_addr_max
    } else {
        0x37ff_ffff
    });
    let top = ram.min(highest + 1);
    let start = top.saturating_sub(len) & !0xfff;
    if len > top || start < kernel_area_end.next_multiple_of(0x1000) {
        return Err(LoaderError::Linux(format!(
            "the {} KiB initrd does not fit between the kernel (up to {kernel_area_end:#x}) and {top:#x}; give the guest more memory (--memory)",
            len / 1024
        )));
    }
    #[allow(clippy::cast_possible_truncation)] // below top, itself below 4 GiB
    Ok(start as u32)
}

/// The e820 map of the btvmm PC: conventional memory, the legacy hole
/// (video memory and BIOS area, reserved: the kernel scans it for firmware
/// tables and finds zeros), extended memory to the end of RAM.
fn e820_map(ram: u64) -> Vec<boot_e820_entry> {
    let entry = |addr: u64, size: u64, type_: u32| boot_e820_entry { addr, size, type_ };
    vec![
        entry(0, LOW_RAM_END, E820_RAM),
        entry(LOW_RAM_END, HIGH_RAM_START - LOW_RAM_END, E820_RESERVED),
        entry(HIGH_RAM_START, ram - HIGH_RAM_START, E820_RAM),
    ]
}

/// A GDT with flat 4 GiB code at `__BOOT_CS` and data at `__BOOT_DS`
/// (the decompressor loads its own at once; the protocol asks the loader
/// for these).
fn boot_gdt() -> Vec<u8> {
    const FLAT_CODE: u64 = 0x00cf_9b00_0000_ffff;
    const FLAT_DATA: u64 = 0x00cf_9300_0000_ffff;
    [0u64, 0, FLAT_CODE, FLAT_DATA]
        .iter()
        .flat_map(|descriptor| descriptor.to_le_bytes())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const MIB: u32 = 1 << 20;

    /// A bzImage with `setup_sects` 1 and protocol 2.15 whose protected
    /// part is `kernel`.
    fn image(kernel: &[u8], init_size: u32) -> Vec<u8> {
        let mut image = vec![0u8; 1024];
        image[0x1f1] = 1;
        image[0x1fe..0x200].copy_from_slice(&BOOT_FLAG.to_le_bytes());
        image[0x202..0x206].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
        image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        image[0x211] = LOADED_HIGH;
        image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        image[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        image[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        image[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        image[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
        image.extend_from_slice(kernel);
        image
    }

    /// What a load did: its result and the writes it made, by address.
    type Loaded = (
        Result<(Handover, Placement), LoaderError>,
        BTreeMap<u32, Vec<u8>>,
    );

    fn load_into(file: &[u8], initrd: Option<&[u8]>, ram: u32) -> Loaded {
        let mut memory = BTreeMap::new();
        let result = load(file, initrd, "console=ttyS0", ram, &mut |at, bytes| {
            memory.insert(at, bytes.to_vec());
            u64::from(at) + bytes.len() as u64 <= u64::from(ram)
        });
        (result, memory)
    }

    #[test]
    fn boot_params_follow_the_protocol() {
        let file = image(&[0x90; 3000], 16 * MIB);
        let initrd = vec![0x55u8; 10_000];
        let (result, memory) = load_into(&file, Some(&initrd), 64 * MIB);
        let (handover, placement) = result.expect("loads");
        assert_eq!(handover.eip, 0x10_0000);
        assert_eq!(handover.gpr[6], ZERO_PAGE, "ESI");
        assert_eq!(
            (handover.code_selector, handover.data_selector),
            (0x10, 0x18)
        );
        assert_eq!(memory[&0x10_0000], vec![0x90; 3000]);
        // The initrd as high as RAM allows, page-aligned.
        assert_eq!(placement.initrd, (64 * MIB - 0x3000, 10_000));
        assert_eq!(memory[&(64 * MIB - 0x3000)], initrd);
        let params = boot_params::from_slice(&memory[&ZERO_PAGE]).expect("a zero page");
        let hdr = params.hdr;
        let (image_at, size, line, loader) = (
            hdr.ramdisk_image,
            hdr.ramdisk_size,
            hdr.cmd_line_ptr,
            hdr.type_of_loader,
        );
        assert_eq!((image_at, size), (64 * MIB - 0x3000, 10_000));
        assert_eq!(line, CMDLINE);
        assert_eq!(loader, 0xff);
        assert_eq!(&memory[&CMDLINE], b"console=ttyS0\0");
        // A VGA in 80x25 colour text mode, as vgacon checks it.
        let screen = params.screen_info;
        assert_eq!(
            (
                screen.orig_video_mode,
                screen.orig_video_cols,
                screen.orig_video_lines,
                screen.orig_video_isVGA,
                screen.orig_video_points,
                screen.orig_video_ega_bx & 0xff != 0x10
            ),
            (3, 80, 25, 1, 16, true)
        );
        assert_eq!(params.e820_entries, 3);
        let map: Vec<(u64, u64, u32)> = params.e820_table[..3]
            .iter()
            .map(|entry| (entry.addr, entry.size, entry.type_))
            .collect();
        assert_eq!(
            map,
            [
                (0, 0xa_0000, 1),
                (0xa_0000, 0x6_0000, 2),
                (0x10_0000, u64::from(63 * MIB), 1)
            ]
        );
        // The GDT's __BOOT_CS and __BOOT_DS are flat code and data.
        let gdt = &memory[&BOOT_GDT];
        assert_eq!(gdt[0x10 + 5], 0x9b);
        assert_eq!(gdt[0x18 + 5], 0x93);
        assert_eq!(usize::from(handover.gdt_limit) + 1, gdt.len());
    }

    #[test]
    fn too_little_memory_or_a_huge_initrd_is_refused_with_the_reason() {
        let file = image(&[0x90; 3000], 16 * MIB);
        let (result, _) = load_into(&file, None, 20 * MIB);
        let error = result.expect_err("16 MiB + 16 MiB does not fit 20 MiB");
        assert!(error.to_string().contains("--memory"), "{error}");
        let initrd = vec![0u8; 40 << 20];
        let (result, _) = load_into(&file, Some(&initrd), 64 * MIB);
        let error = result.expect_err("the initrd would overlap the kernel");
        assert!(error.to_string().contains("initrd"), "{error}");
    }

    /// The header copied from the file once carried its `ramdisk_image`,
    /// `ramdisk_size` and `setup_data` into the zero page: a kernel booted
    /// without an initrd was told of one at whatever address the file
    /// held. Found by the fuzz target `bzimages_load_inside_ram`.
    #[test]
    fn loader_fields_in_the_file_do_not_reach_the_kernel() {
        let mut file = image(&[0x90; 100], 0);
        file[0x218..0x21c].copy_from_slice(&0x0300_0000u32.to_le_bytes());
        file[0x21c..0x220].copy_from_slice(&0x1000u32.to_le_bytes());
        file[0x250..0x258].copy_from_slice(&0x9_0000u64.to_le_bytes());
        let (result, memory) = load_into(&file, None, 64 * MIB);
        result.expect("loads");
        let params = boot_params::from_slice(&memory[&ZERO_PAGE]).expect("a zero page");
        let hdr = params.hdr;
        let (image_at, size, setup_data) = (hdr.ramdisk_image, hdr.ramdisk_size, hdr.setup_data);
        assert_eq!((image_at, size, setup_data), (0, 0, 0));
    }

    #[test]
    fn old_protocols_zimages_and_long_command_lines_are_refused() {
        let mut old = image(&[0x90; 100], 0);
        old[0x206..0x208].copy_from_slice(&0x0202u16.to_le_bytes());
        assert!(load_into(&old, None, 64 * MIB).0.is_err());
        let mut zimage = image(&[0x90; 100], 0);
        zimage[0x211] = 0;
        assert!(load_into(&zimage, None, 64 * MIB).0.is_err());
        let file = image(&[0x90; 100], 0);
        let long = "x".repeat(3000);
        let result = load(&file, None, &long, 64 * MIB, &mut |_, _| true);
        assert!(result.is_err());
        assert!(is_bzimage(&file));
        assert!(!is_bzimage(&file[..0x200]));
        assert!(
            load_into(&file[..0x300], None, 64 * MIB).0.is_err(),
            "truncated"
        );
    }
}
