//! Multiboot (version 1) loading of test kernels: the header in the first
//! 8 KiB of the file, ELF32 segments (or the a.out kludge addresses) loaded
//! at their physical addresses, and the boot information structure with
//! memory size, memory map, command line and loader name.

use object::Endianness;
use object::elf::PT_LOAD;
use object::read::elf::{ElfFile32, FileHeader, ProgramHeader};

use crate::LoaderError;
use crate::boot::Handover;

/// Puts bytes into guest RAM at a physical address (and remembers the
/// range, so that the boot information goes elsewhere).
type Place<'a> = dyn FnMut(u32, &[u8]) -> Result<(), LoaderError> + 'a;
/// Says whether `len` bytes at a physical address fit guest RAM, before
/// anything is allocated for them.
fn fits(ram_size: u32, phys: u32, len: u64) -> bool {
    u64::from(phys) + len <= u64::from(ram_size)
}

/// The Multiboot header magic.
const HEADER_MAGIC: u32 = 0x1bad_b002;
/// What the loader puts in EAX.
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// Where the header must lie.
const SEARCH_BYTES: usize = 8192;

/// Header flag bits.
const FLAG_PAGE_ALIGN: u32 = 1 << 0;
const FLAG_MEMORY_INFO: u32 = 1 << 1;
const FLAG_VIDEO_MODE: u32 = 1 << 2;
const FLAG_AOUT_KLUDGE: u32 = 1 << 16;

/// Boot information flag bits.
const INFO_MEMORY: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MMAP: u32 = 1 << 6;
const INFO_LOADER_NAME: u32 = 1 << 9;

/// Where the boot information, command line and memory map go unless the
/// kernel is loaded there: above the never-mapped low 64 KiB, below
/// conventional memory's end.
pub const BOOT_INFO_ADDRESS: u32 = 0x2_0000;
/// The first address boot information may use.
const BOOT_INFO_LOWEST: u32 = 0x1_0000;

/// The flat code and data selectors of the Multiboot hand-over (the
/// specification leaves them undefined; GRUB uses these).
const MULTIBOOT_CS: u16 = 0x08;
const MULTIBOOT_DS: u16 = 0x10;

/// The header found in a kernel file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    offset: usize,
    pub(crate) flags: u32,
    header_addr: u32,
    load_addr: u32,
    load_end_addr: u32,
    bss_end_addr: u32,
    entry_addr: u32,
}

fn word(data: &[u8], at: usize) -> Option<u32> {
    data.get(at..at + 4)
        .map(|bytes| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

pub(crate) fn find_header(file: &[u8]) -> Result<Header, LoaderError> {
    let limit = file.len().min(SEARCH_BYTES);
    let offset = (0..limit.saturating_sub(11))
        .step_by(4)
        .find(|&at| {
            let (Some(magic), Some(flags), Some(checksum)) =
                (word(file, at), word(file, at + 4), word(file, at + 8))
            else {
                return false;
            };
            magic == HEADER_MAGIC && magic.wrapping_add(flags).wrapping_add(checksum) == 0
        })
        .ok_or_else(|| {
            LoaderError::Multiboot(
                "no Multiboot header (magic 0x1BADB002 with a valid checksum) in the first 8 KiB"
                    .into(),
            )
        })?;
    let field = |index: usize| word(file, offset + 4 * index).unwrap_or(0);
    Ok(Header {
        offset,
        flags: field(1),
        header_addr: field(3),
        load_addr: field(4),
        load_end_addr: field(5),
        bss_end_addr: field(6),
        entry_addr: field(7),
    })
}

/// Loads a Multiboot kernel into guest RAM (`write(phys, bytes)` returns
/// false outside RAM) of `ram_size` bytes and builds the boot information
/// where the kernel left room for it.
pub fn load(
    file: &[u8],
    ram_size: u32,
    cmdline: &str,
    write: &mut dyn FnMut(u32, &[u8]) -> bool,
) -> Result<Handover, LoaderError> {
    let header = find_header(file)?;
    let required_unknown = header.flags & 0xffff & !(FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO);
    if header.flags & FLAG_VIDEO_MODE != 0 {
        return Err(LoaderError::Multiboot(
            "the kernel requires a graphics mode (Multiboot flag 2), which btvmm does not set up"
                .into(),
        ));
    }
    if required_unknown != 0 {
        return Err(LoaderError::Multiboot(format!(
            "the kernel requires unknown Multiboot features (flags {required_unknown:#x})"
        )));
    }
    let mut loaded: Vec<(u64, u64)> = Vec::new();
    let mut place = |phys: u32, bytes: &[u8]| -> Result<(), LoaderError> {
        if bytes.is_empty() {
            return Ok(());
        }
        if !fits(ram_size, phys, bytes.len() as u64) || !write(phys, bytes) {
            return Err(LoaderError::Multiboot(format!(
                "{} bytes at {phys:#x} do not fit the guest's {ram_size} bytes of RAM",
                bytes.len()
            )));
        }
        loaded.push((u64::from(phys), u64::from(phys) + bytes.len() as u64));
        Ok(())
    };
    let entry = if header.flags & FLAG_AOUT_KLUDGE != 0 {
        load_aout(file, &header, ram_size, &mut place)?
    } else {
        load_elf(file, ram_size, &mut place)?
    };

    let info_len = boot_information(ram_size, cmdline, 0).len() as u64;
    let info_at = boot_info_address(&loaded, info_len, ram_size)?;
    let info = boot_information(ram_size, cmdline, info_at);
    if !write(info_at, &info) {
        return Err(LoaderError::Multiboot(
            "the boot information does not fit guest RAM".into(),
        ));
    }
    let mut gpr = [0; 8];
    gpr[0] = BOOTLOADER_MAGIC; // EAX
    gpr[3] = info_at; // EBX
    Ok(Handover {
        eip: entry,
        gpr,
        code_selector: MULTIBOOT_CS,
        data_selector: MULTIBOOT_DS,
        gdt_base: 0,
        gdt_limit: 0,
    })
}

/// The first place for `len` bytes of boot information that overlaps no
/// loaded range: [`BOOT_INFO_ADDRESS`] when it is free, else the lowest
/// free 4 KiB-aligned address above the low 64 KiB.
fn boot_info_address(loaded: &[(u64, u64)], len: u64, ram_size: u32) -> Result<u32, LoaderError> {
    let free = |at: u64| {
        at + len <= u64::from(ram_size)
            && loaded
                .iter()
                .all(|&(start, end)| at + len <= start || end <= at)
    };
    let candidates = std::iter::once(u64::from(BOOT_INFO_ADDRESS))
        .chain(std::iter::once(u64::from(BOOT_INFO_LOWEST)))
        .chain(loaded.iter().map(|&(_, end)| end.next_multiple_of(0x1000)));
    let mut candidates: Vec<u64> = candidates
        .filter(|&at| at >= u64::from(BOOT_INFO_LOWEST))
        .collect();
    candidates[1..].sort_unstable();
    candidates
        .into_iter()
        .find(|&at| free(at))
        .and_then(|at| u32::try_from(at).ok())
        .ok_or_else(|| {
            LoaderError::Multiboot(
                "no room in guest RAM for the boot information beside the kernel".into(),
            )
        })
}

fn load_aout(
    file: &[u8],
    header: &Header,
    ram_size: u32,
    place: &mut Place<'_>,
) -> Result<u32, LoaderError> {
    let bad = |why: &str| LoaderError::Multiboot(format!("bad a.out kludge addresses: {why}"));
    if header.load_addr > header.header_addr {
        return Err(bad("load_addr above header_addr"));
    }
    let start = (header.offset as u64)
        .checked_sub(u64::from(header.header_addr - header.load_addr))
        .ok_or_else(|| bad("the image would start before the file"))?;
    let start = usize::try_from(start).map_err(|_| bad("offset"))?;
    let end = if header.load_end_addr == 0 {
        file.len()
    } else {
        let length = header
            .load_end_addr
            .checked_sub(header.load_addr)
            .ok_or_else(|| bad("load_end_addr below load_addr"))?;
        start + length as usize
    };
    let image = file
        .get(start..end)
        .ok_or_else(|| bad("the image runs past the file"))?;
    place(header.load_addr, image)?;
    #[allow(clippy::cast_possible_truncation)] // checked to fit RAM above
    let loaded_end = header.load_addr.wrapping_add(image.len() as u32);
    if header.bss_end_addr > loaded_end {
        if !fits(
            ram_size,
            loaded_end,
            u64::from(header.bss_end_addr - loaded_end),
        ) {
            return Err(bad("the BSS runs past the end of guest RAM"));
        }
        place(
            loaded_end,
            &vec![0; (header.bss_end_addr - loaded_end) as usize],
        )?;
    }
    Ok(header.entry_addr)
}

fn load_elf(file: &[u8], ram_size: u32, place: &mut Place<'_>) -> Result<u32, LoaderError> {
    let elf = ElfFile32::<Endianness>::parse(file).map_err(|error| {
        LoaderError::Multiboot(format!(
            "neither an ELF32 file nor an a.out kludge header: {error}"
        ))
    })?;
    let endian = elf.endian();
    let header = elf.elf_header();
    if header.e_machine(endian) != object::elf::EM_386 {
        return Err(LoaderError::Multiboot(
            "the ELF file is not for 32-bit x86".into(),
        ));
    }
    let mut loaded = 0u64;
    for segment in header
        .program_headers(endian, file)
        .map_err(|error| LoaderError::Multiboot(error.to_string()))?
    {
        if segment.p_type(endian) != PT_LOAD {
            continue;
        }
        let data = segment
            .data(endian, file)
            .map_err(|_| LoaderError::Multiboot("a segment lies outside the file".into()))?;
        let memory_size = segment.p_memsz(endian) as usize;
        if data.len() > memory_size {
            return Err(LoaderError::Multiboot(
                "a segment's file size exceeds its memory size".into(),
            ));
        }
        loaded += memory_size as u64;
        let paddr = segment.p_paddr(endian);
        // Checked before anything is allocated for the segment.
        if loaded > 1 << 31 || !fits(ram_size, paddr, memory_size as u64) {
            return Err(LoaderError::Multiboot(format!(
                "a segment of {memory_size:#x} bytes at {paddr:#x} does not fit the guest's {ram_size} bytes of RAM"
            )));
        }
        let mut bytes = data.to_vec();
        bytes.resize(memory_size, 0);
        place(paddr, &bytes)?;
    }
    Ok(header.e_entry(endian))
}

/// The boot information block: the structure, then the memory map, the
/// command line and the loader name, all in one buffer placed at
/// `info_at`.
fn boot_information(ram_size: u32, cmdline: &str, info_at: u32) -> Vec<u8> {
    const INFO_SIZE: u32 = 0x58;
    const MMAP_ENTRY: u32 = 24;
    let mmap: [(u64, u64, u32); 3] = [
        (0, 0x9_fc00, 1),
        (0x9_fc00, 0x400, 2),
        (0x10_0000, u64::from(ram_size).saturating_sub(0x10_0000), 1),
    ];
    let mmap_at = info_at + INFO_SIZE;
    #[allow(clippy::cast_possible_truncation)] // three entries
    let mmap_length = MMAP_ENTRY * mmap.len() as u32;
    let cmdline_at = mmap_at + mmap_length;
    let mut cmdline_bytes = cmdline.as_bytes().to_vec();
    cmdline_bytes.push(0);
    #[allow(clippy::cast_possible_truncation)] // command lines are short
    let name_at = cmdline_at + cmdline_bytes.len() as u32;

    let mut info = vec![0u8; INFO_SIZE as usize];
    let mut put = |at: usize, value: u32| info[at..at + 4].copy_from_slice(&value.to_le_bytes());
    put(0, INFO_MEMORY | INFO_CMDLINE | INFO_MMAP | INFO_LOADER_NAME);
    put(4, 639);
    put(8, (ram_size.saturating_sub(0x10_0000)) / 1024);
    put(16, cmdline_at);
    put(44, mmap_length);
    put(48, mmap_at);
    put(64, name_at);
    for (base, length, kind) in mmap {
        // Each entry: size (of the rest), base, length, type.
        info.extend_from_slice(&(MMAP_ENTRY - 4).to_le_bytes());
        info.extend_from_slice(&base.to_le_bytes());
        info.extend_from_slice(&length.to_le_bytes());
        info.extend_from_slice(&kind.to_le_bytes());
    }
    info.extend_from_slice(&cmdline_bytes);
    info.extend_from_slice(b"btvmm\0");
    info
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn header(flags: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        for value in [
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(flags)),
        ] {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        bytes
    }

    fn load_into(file: &[u8]) -> (Result<Handover, LoaderError>, BTreeMap<u32, Vec<u8>>) {
        let mut ram = BTreeMap::new();
        let result = load(file, 64 << 20, "test", &mut |at, bytes| {
            ram.insert(at, bytes.to_vec());
            u64::from(at) + bytes.len() as u64 <= 64 << 20
        });
        (result, ram)
    }

    #[test]
    fn aout_kludge_kernels_load_at_their_addresses() {
        // header at file offset 16, image starts at file offset 0.
        let mut file = vec![0x90u8; 16];
        file.extend(header(FLAG_AOUT_KLUDGE | FLAG_MEMORY_INFO));
        for value in [0x10_0010u32, 0x10_0000, 0, 0x10_2000, 0x10_0030] {
            file.extend_from_slice(&value.to_le_bytes());
        }
        file.extend_from_slice(&[0xf4; 16]);
        let (result, ram) = load_into(&file);
        let handover = result.expect("loads");
        assert_eq!(handover.eip, 0x10_0030);
        assert_eq!(handover.gpr[0], BOOTLOADER_MAGIC);
        assert_eq!(handover.gpr[3], BOOT_INFO_ADDRESS);
        assert_eq!(ram[&0x10_0000], file);
        #[allow(clippy::cast_possible_truncation)]
        let bss_start = 0x10_0000 + file.len() as u32;
        assert!(ram[&bss_start].iter().all(|&byte| byte == 0));
        let info = &ram[&BOOT_INFO_ADDRESS];
        assert_eq!(
            word(info, 8),
            Some((64 << 20) / 1024 - 1024),
            "mem_upper in KiB"
        );
        assert!(info.windows(6).any(|window| window == b"btvmm\0"));
    }

    #[test]
    fn bad_kernels_are_refused() {
        assert!(matches!(
            load_into(&[0u8; 100]).0,
            Err(LoaderError::Multiboot(_))
        ));
        let mut bad_checksum = header(0);
        bad_checksum[8] ^= 1;
        assert!(load_into(&bad_checksum).0.is_err());
        assert!(matches!(
            load_into(&header(FLAG_VIDEO_MODE)).0,
            Err(LoaderError::Multiboot(_))
        ));
        assert!(matches!(
            load_into(&header(1 << 5)).0,
            Err(LoaderError::Multiboot(_))
        ));
        // A valid header but neither ELF nor a.out addresses.
        assert!(matches!(
            load_into(&header(0)).0,
            Err(LoaderError::Multiboot(_))
        ));
    }

    /// An ELF whose one segment claims almost 2 GiB of memory is refused
    /// before anything that size is allocated.
    #[test]
    fn huge_segments_are_refused_before_allocation() {
        let file = elf_with_segment(0x10_0000, 0x7ff0_0000);
        let (result, ram) = load_into(&file);
        let error = result.expect_err("does not fit 64 MiB");
        assert!(error.to_string().contains("does not fit"), "{error}");
        assert!(ram.is_empty());
    }

    /// A kernel loaded where the boot information usually goes pushes the
    /// boot information elsewhere instead of being overwritten.
    #[test]
    fn boot_information_avoids_the_kernel() {
        let mut file = vec![0x90u8; 16];
        file.extend(header(FLAG_AOUT_KLUDGE));
        for value in [0x2_0010u32, 0x2_0000, 0, 0x2_2000, 0x2_0030] {
            file.extend_from_slice(&value.to_le_bytes());
        }
        let (result, ram) = load_into(&file);
        let handover = result.expect("loads");
        let info_at = handover.gpr[3];
        assert!(
            info_at >= 0x2_2000 || info_at + 0x100 <= 0x2_0000,
            "{info_at:#x}"
        );
        assert!(info_at >= 0x1_0000);
        assert_eq!(ram[&0x2_0000][..16], [0x90; 16]);
    }

    /// A minimal ELF32 for i386 with one PT_LOAD segment of `memsz` bytes
    /// (4 of them in the file) at `paddr`.
    fn elf_with_segment(paddr: u32, memsz: u32) -> Vec<u8> {
        let mut elf = vec![0u8; 0x60];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 1; // 32-bit
        elf[5] = 1; // little endian
        elf[6] = 1;
        elf[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // executable
        elf[0x12..0x14].copy_from_slice(&3u16.to_le_bytes()); // i386
        elf[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
        elf[0x18..0x1c].copy_from_slice(&paddr.to_le_bytes()); // entry
        elf[0x1c..0x20].copy_from_slice(&0x34u32.to_le_bytes()); // phoff
        elf[0x28..0x2a].copy_from_slice(&0x34u16.to_le_bytes()); // ehsize
        elf[0x2a..0x2c].copy_from_slice(&0x20u16.to_le_bytes()); // phentsize
        elf[0x2c..0x2e].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let ph = 0x34;
        for (index, value) in [1u32, 0x60, paddr, paddr, 4, memsz, 7, 4]
            .into_iter()
            .enumerate()
        {
            elf[ph + 4 * index..ph + 4 * index + 4].copy_from_slice(&value.to_le_bytes());
        }
        // A Multiboot header (no flags) after the program header.
        let mut file = elf;
        file.truncate(0x54);
        file.extend(header(0));
        file.extend_from_slice(&[0xf4; 4]);
        file
    }
}
