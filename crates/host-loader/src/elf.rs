//! The 32-bit x86 kernel ELF: executable sections, loadable segments as
//! guest memory, the entry point and symbols.

use std::collections::HashMap;

use object::elf::{PT_LOAD, SHF_EXECINSTR};
use object::read::elf::{ElfFile32, FileHeader, ProgramHeader, SectionHeader};
use object::{Endianness, Object, ObjectSymbol, SymbolKind};
use serde::Serialize;

use btvmm_core::{GuestPhys, GuestVirt, RegionMemory};

use crate::LoaderError;

/// The most memory the loadable segments of a kernel may ask for. Debian's
/// 686 kernel loads about 30 MiB; a 32-bit guest kernel with segments
/// adding up to more than this is not one we can run.
pub const MAX_LOADED_BYTES: u64 = 512 << 20;

/// An executable section.
#[derive(Clone, Debug, Serialize)]
pub struct CodeSection {
    /// Section name (`.text`, `.init.text`, ...).
    pub name: String,
    /// Guest-virtual address it is linked at.
    pub virt: GuestVirt,
    /// Its bytes.
    #[serde(skip)]
    pub bytes: Vec<u8>,
}

/// A parsed kernel ELF.
#[derive(Debug)]
pub struct KernelElf {
    /// The executable sections, in file order.
    pub sections: Vec<CodeSection>,
    /// The loadable segments at their virtual addresses, backed by their
    /// physical addresses, as the kernel's own page tables will map them.
    pub memory: RegionMemory,
    /// The entry point as a guest-virtual address (the ELF header gives a
    /// physical one for the i386 kernel, which starts with paging off).
    pub entry: GuestVirt,
    /// Function symbols by name, when the ELF has a symbol table.
    pub symbols: HashMap<String, GuestVirt>,
}

impl KernelElf {
    /// Parses an ELF32 i386 image.
    pub fn parse(data: &[u8]) -> Result<Self, LoaderError> {
        let file = ElfFile32::<Endianness>::parse(data)
            .map_err(|error| LoaderError::Elf(error.to_string()))?;
        if file.architecture() != object::Architecture::I386 {
            return Err(LoaderError::Elf(format!(
                "the kernel is built for {:?}, not 32-bit x86",
                file.architecture()
            )));
        }
        let endian = file.endian();
        let header = file.elf_header();

        let mut memory = RegionMemory::new();
        let mut segments = Vec::new();
        let mut total_size = 0u64;
        for segment in header
            .program_headers(endian, data)
            .map_err(|error| LoaderError::Elf(error.to_string()))?
        {
            if segment.p_type(endian) != PT_LOAD {
                continue;
            }
            let virt = segment.p_vaddr(endian);
            let phys = segment.p_paddr(endian);
            let mem_size = segment.p_memsz(endian);
            let file_bytes = segment
                .data(endian, data)
                .map_err(|_| LoaderError::Elf("a segment lies outside the file".into()))?;
            if u64::from(virt) + u64::from(mem_size) > 1 << 32
                || u64::from(phys) + u64::from(mem_size) > 1 << 32
                || file_bytes.len() > mem_size as usize
            {
                return Err(LoaderError::Elf(format!(
                    "segment at {virt:#x} does not fit a 32-bit address space"
                )));
            }
            total_size += u64::from(mem_size);
            if total_size > MAX_LOADED_BYTES {
                return Err(LoaderError::Elf(format!(
                    "loadable segments add up to more than {MAX_LOADED_BYTES} bytes"
                )));
            }
            let mut bytes = file_bytes.to_vec();
            bytes.resize(mem_size as usize, 0);
            memory.add(GuestVirt(virt), GuestPhys(phys), bytes);
            segments.push((virt, phys, mem_size));
        }

        let mut sections = Vec::new();
        for section in header
            .section_headers(endian, data)
            .map_err(|error| LoaderError::Elf(error.to_string()))?
        {
            if !section.sh_flags(endian).contains(SHF_EXECINSTR) || section.sh_size(endian) == 0 {
                continue;
            }
            let bytes = section
                .data(endian, data)
                .map_err(|_| LoaderError::Elf("a section lies outside the file".into()))?;
            // An executable SHT_NOBITS section has a size but no bytes:
            // no code to decode either.
            if bytes.is_empty() {
                continue;
            }
            let name = file
                .elf_section_table()
                .section_name(endian, section)
                .map(|name| String::from_utf8_lossy(name).into_owned())
                .unwrap_or_else(|_| "?".into());
            sections.push(CodeSection {
                name,
                virt: GuestVirt(section.sh_addr(endian)),
                bytes: bytes.to_vec(),
            });
        }
        if sections.is_empty() {
            return Err(LoaderError::Elf("no executable sections".into()));
        }

        // The i386 kernel's e_entry is physical (it starts with paging
        // off); other ELFs give a virtual one.
        let entry_field = header.e_entry(endian);
        let is_virtual = segments
            .iter()
            .any(|&(virt, _, size)| entry_field.wrapping_sub(virt) < size);
        let entry = segments
            .iter()
            .find(|&&(_, phys, size)| !is_virtual && entry_field.wrapping_sub(phys) < size)
            .map_or(GuestVirt(entry_field), |&(virt, phys, _)| {
                GuestVirt(virt.wrapping_add(entry_field.wrapping_sub(phys)))
            });

        let mut kernel = Self {
            sections,
            memory,
            entry,
            symbols: HashMap::new(),
        };
        // Code symbols: anything defined inside an executable section
        // (assembly labels often carry no STT_FUNC type).
        for symbol in file.symbols() {
            if symbol.is_undefined()
                || !matches!(
                    symbol.kind(),
                    SymbolKind::Text | SymbolKind::Label | SymbolKind::Unknown
                )
            {
                continue;
            }
            let (Ok(name), Ok(address)) = (symbol.name(), u32::try_from(symbol.address())) else {
                continue;
            };
            if !name.is_empty() && kernel.section_at(GuestVirt(address)).is_some() {
                kernel
                    .symbols
                    .entry(name.to_owned())
                    .or_insert(GuestVirt(address));
            }
        }
        Ok(kernel)
    }

    /// The executable section holding `at`, if any.
    #[must_use]
    pub fn section_at(&self, at: GuestVirt) -> Option<&CodeSection> {
        self.sections
            .iter()
            .find(|section| (at.0.wrapping_sub(section.virt.0) as usize) < section.bytes.len())
    }
}

/// Reads code symbols from a `System.map` (`address type name` per line).
pub fn parse_system_map(text: &str) -> Result<HashMap<String, GuestVirt>, LoaderError> {
    let mut symbols = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(address), Some(kind), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if !matches!(kind, "T" | "t" | "W" | "w") {
            continue;
        }
        if let Ok(address) = u32::from_str_radix(address, 16) {
            symbols.entry(name.to_owned()).or_insert(GuestVirt(address));
        }
    }
    if symbols.is_empty() {
        return Err(LoaderError::NoSymbols(
            "the System.map lists no code symbols (Debian ships the real one in the linux-image-*-dbg package)"
                .into(),
        ));
    }
    Ok(symbols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_map_keeps_code_symbols_only() {
        let map = "c1000000 T startup_32\nc1000100 t helper\nc2000000 D some_data\nbogus\n";
        let symbols = parse_system_map(map).expect("symbols");
        assert_eq!(symbols.get("startup_32"), Some(&GuestVirt(0xc100_0000)));
        assert_eq!(symbols.get("helper"), Some(&GuestVirt(0xc100_0100)));
        assert!(!symbols.contains_key("some_data"));
    }

    #[test]
    fn debian_stub_system_map_is_refused() {
        let stub =
            "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n";
        assert!(matches!(
            parse_system_map(stub),
            Err(LoaderError::NoSymbols(_))
        ));
    }

    /// A minimal ELF32 i386 header with one PT_LOAD program header.
    fn elf_with_segment(vaddr: u32, paddr: u32, memsz: u32, entry: u32) -> Vec<u8> {
        let mut elf = vec![0u8; 0x54 + 16];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 1; // 32-bit
        elf[5] = 1; // little-endian
        elf[6] = 1; // version
        elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // executable
        elf[18..20].copy_from_slice(&3u16.to_le_bytes()); // i386
        elf[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf[24..28].copy_from_slice(&entry.to_le_bytes());
        elf[28..32].copy_from_slice(&0x34u32.to_le_bytes()); // phoff
        elf[40..42].copy_from_slice(&0x34u16.to_le_bytes()); // ehsize
        elf[42..44].copy_from_slice(&0x20u16.to_le_bytes()); // phentsize
        elf[44..46].copy_from_slice(&1u16.to_le_bytes()); // phnum
        elf[46..48].copy_from_slice(&0x28u16.to_le_bytes()); // shentsize
        let ph = 0x34;
        elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        elf[ph + 4..ph + 8].copy_from_slice(&0x54u32.to_le_bytes()); // offset
        elf[ph + 8..ph + 12].copy_from_slice(&vaddr.to_le_bytes());
        elf[ph + 12..ph + 16].copy_from_slice(&paddr.to_le_bytes());
        elf[ph + 16..ph + 20].copy_from_slice(&16u32.to_le_bytes()); // filesz
        elf[ph + 20..ph + 24].copy_from_slice(&memsz.to_le_bytes());
        elf[ph + 24..ph + 28].copy_from_slice(&5u32.to_le_bytes()); // R+X
        elf
    }

    #[test]
    fn huge_segments_are_refused_before_allocating() {
        let elf = elf_with_segment(0x1000_0000, 0x1000_0000, 0xc000_0000, 0x1000_0000);
        assert!(
            matches!(KernelElf::parse(&elf), Err(LoaderError::Elf(message)) if message.contains("add up"))
        );
    }

    #[test]
    fn odd_physical_addresses_are_errors_not_panics() {
        let elf = elf_with_segment(0xc000_0000, 0xffff_f000, 0x2000, 0x100);
        assert!(matches!(KernelElf::parse(&elf), Err(LoaderError::Elf(_))));
    }

    /// An executable section of type SHT_NOBITS (a size, no bytes in the
    /// file) once became a code section without code, and the only one
    /// made the kernel look like it had some. Found by the fuzz target
    /// `kernel_elfs_parse_or_fail_cleanly`.
    #[test]
    fn executable_sections_without_bytes_are_no_code() {
        let mut elf = elf_with_segment(0xc000_0000, 0x10_0000, 16, 0x10_0000);
        let names = u32::try_from(elf.len()).expect("small");
        elf.extend_from_slice(b"\0.text\0\0");
        let shoff = u32::try_from(elf.len()).expect("small");
        elf[32..36].copy_from_slice(&shoff.to_le_bytes());
        elf[48..50].copy_from_slice(&3u16.to_le_bytes()); // shnum
        elf[50..52].copy_from_slice(&2u16.to_le_bytes()); // shstrndx
        // Null; .text: SHT_NOBITS, ALLOC|EXECINSTR; the name table.
        elf.extend_from_slice(&[0; 0x28]);
        for value in [1u32, 8, 6, 0xc000_0000, 0x54, 16, 0, 0, 16, 0] {
            elf.extend_from_slice(&value.to_le_bytes());
        }
        for value in [0u32, 3, 0, 0, names, 8, 0, 0, 1, 0] {
            elf.extend_from_slice(&value.to_le_bytes());
        }
        assert!(
            matches!(KernelElf::parse(&elf), Err(LoaderError::Elf(message)) if message.contains("no executable"))
        );
    }

    #[test]
    fn garbage_is_not_an_elf() {
        assert!(matches!(
            KernelElf::parse(b"\x7fELF garbage"),
            Err(LoaderError::Elf(_))
        ));
        assert!(matches!(
            KernelElf::parse(&[0u8; 64]),
            Err(LoaderError::Elf(_))
        ));
    }
}
