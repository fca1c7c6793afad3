//! Fuzz targets for the kernel loaders: boot-format detection, the
//! Multiboot loader (ELF32 and a.out kludge), the Linux boot protocol
//! loader (bzImage, initrd placement), the bzImage container parser and
//! its payload decompressors, and the vmlinux ELF parser.
//!
//! Inputs: fully random bytes (now and then with a signature planted so
//! that the parsers get past their first check), and valid images built
//! here or with the crate's own builders, then mutated: bytes flipped or
//! overwritten, header fields set to boundary values, the file truncated.
//! Guest RAM is small (at most 64 MiB) and never allocated: the loaders'
//! writes are recorded.
//!
//! Properties: nothing panics or hangs; a load either fails with the
//! loader's own error or wrote only inside guest RAM, with its pieces (the
//! kernel, the boot information, the zero page, the command line, the
//! GDT, the initrd) where the hand-over says and not on top of each other;
//! an image that was not mutated and fits loads exactly as built.
//!
//! There is no initramfs reader on the host: the initrd is an opaque blob
//! the guest kernel unpacks, so only its placement is fuzzed (random
//! sizes against random RAM and `initrd_addr_max`).
//!
//! A short run by default (CI); `PROPTEST_CASES=N` runs N cases per
//! target. Failures are not persisted (`failure_persistence: None`): a bug
//! found here gets a plain regression test next to its fix.

use std::io::Write;

use proptest::prelude::*;
use proptest::sample::{Index, select};

use host_loader::LoaderError;
use host_loader::boot::{Handover, KernelKind};
use host_loader::elf::{KernelElf, MAX_LOADED_BYTES};
use host_loader::image::{Compression, decompress, parse_bzimage, wrap_in_bzimage};
use host_loader::linux::{self, BOOT_CS, BOOT_DS, BOOT_GDT, CMDLINE, Placement, ZERO_PAGE};
use host_loader::multiboot::{self, BOOTLOADER_MAGIC};

// The case count (PROPTEST_CASES) and the hang limit every fuzz target
// shares.
#[path = "../../../tests/support/fuzz.rs"]
mod fuzz;
use fuzz::{HANG, config, within};

const MIB: u32 = 1 << 20;

// ---------------------------------------------------------------------
// Mutations.

/// One change to a file.
#[derive(Clone, Debug)]
enum Edit {
    /// Flip one bit of the byte at an index.
    Flip(Index, u8),
    /// Overwrite the byte at an index.
    Byte(Index, u8),
    /// Overwrite the 32-bit word at one of the image's header fields.
    Field(Index, u32),
    /// Overwrite a 32-bit word anywhere.
    Word(Index, u32),
    /// Cut the file at an index.
    Truncate(Index),
}

/// Values that sit on the edges loaders compare against.
fn edge_word() -> impl Strategy<Value = u32> + Clone {
    prop_oneof![
        3 => select(
            &[
                0u32, 1, 2, 3, 4, 0x20, 0xff, 0x100, 0x1ff, 0x200, 0x1000, 0xffff, 0x1_0000,
                0x2_0000, 0x9_fc00, 0xa_0000, 0x10_0000, 0x10_0020, 0x100_0000, 0x400_0000,
                0x7fff_ffff, 0x8000_0000, 0xc000_0000, 0xffff_f000, 0xffff_fffc, 0xffff_ffff,
                0x1bad_b002, 0x5372_6448, 0xaa55, 0x0204, 0x0206, 0x0208, 0x020a, 0x020f,
            ][..]
        ),
        2 => any::<u32>(),
        1 => 0u32..4 * MIB,
    ]
}

fn edit(word: impl Strategy<Value = u32> + Clone) -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Edit::Flip(at, bit)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Edit::Byte(at, byte)),
        4 => (any::<Index>(), word.clone()).prop_map(|(at, value)| Edit::Field(at, value)),
        1 => (any::<Index>(), word).prop_map(|(at, value)| Edit::Word(at, value)),
        1 => any::<Index>().prop_map(Edit::Truncate),
    ]
}

/// Zero to a few edits with words from `word`; none at all now and then,
/// so that the valid image itself is checked too.
fn edits_with(word: impl Strategy<Value = u32> + Clone) -> impl Strategy<Value = Vec<Edit>> {
    prop_oneof![
        1 => Just(Vec::new()),
        4 => proptest::collection::vec(edit(word), 1..6),
    ]
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    edits_with(edge_word())
}

/// Applies `edits` to `file`; `fields` are the offsets of its header
/// fields (little-endian 32-bit words, or the low bytes of narrower ones).
fn mutate(mut file: Vec<u8>, edits: &[Edit], fields: &[usize]) -> Vec<u8> {
    let put = |file: &mut Vec<u8>, at: usize, value: u32| {
        for (index, byte) in value.to_le_bytes().into_iter().enumerate() {
            if let Some(slot) = file.get_mut(at + index) {
                *slot = byte;
            }
        }
    };
    for edit in edits {
        if file.is_empty() {
            break;
        }
        match edit {
            Edit::Flip(at, bit) => {
                let at = at.index(file.len());
                file[at] ^= 1 << bit;
            }
            Edit::Byte(at, byte) => {
                let at = at.index(file.len());
                file[at] = *byte;
            }
            Edit::Field(at, value) if !fields.is_empty() => {
                put(&mut file, fields[at.index(fields.len())], *value);
            }
            Edit::Field(at, value) | Edit::Word(at, value) => {
                let at = at.index(file.len());
                put(&mut file, at, *value);
            }
            Edit::Truncate(at) => file.truncate(at.index(file.len())),
        }
    }
    file
}

fn put32(file: &mut [u8], at: usize, value: u32) {
    file[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put16(file: &mut [u8], at: usize, value: u16) {
    file[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn get32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

/// Guest RAM sizes: at most 64 MiB, often around the sizes the images
/// ask for.
fn ram_size() -> impl Strategy<Value = u32> {
    prop_oneof![
        2 => select(&[MIB, 2 * MIB, 16 * MIB, 17 * MIB, 32 * MIB, 64 * MIB][..]),
        2 => MIB..=64 * MIB,
        1 => 0u32..=64 * MIB,
    ]
}

/// Any command line (NULs, non-ASCII, longer than kernels take) or a
/// plain one.
fn cmdline() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[ -~]{0,80}",
        1 => proptest::collection::vec(any::<char>(), 0..40).prop_map(String::from_iter),
        1 => (0usize..5000).prop_map(|len| "x".repeat(len)),
    ]
}

// ---------------------------------------------------------------------
// Recording guest RAM.

/// One write a loader made.
#[derive(Debug)]
struct Written {
    at: u32,
    len: u64,
    /// The bytes, for writes of at most a MiB.
    bytes: Option<Vec<u8>>,
    /// Whether the write was inside RAM (what `write` answered).
    inside: bool,
}

impl Written {
    fn end(&self) -> u64 {
        u64::from(self.at) + self.len
    }

    fn overlaps(&self, other: &Self) -> bool {
        u64::from(self.at) < other.end() && u64::from(other.at) < self.end()
    }
}

/// A `write` callback for a loader: records the writes and answers as
/// `GuestRam::write` does (false outside RAM).
fn recorder(ram_size: u32, log: &mut Vec<Written>) -> impl FnMut(u32, &[u8]) -> bool + '_ {
    move |at, bytes| {
        let len = bytes.len() as u64;
        let inside = u64::from(at) + len <= u64::from(ram_size);
        log.push(Written {
            at,
            len,
            bytes: (len <= u64::from(MIB)).then(|| bytes.to_vec()),
            inside,
        });
        inside
    }
}

fn writes_at(log: &[Written], at: u32) -> Vec<&Written> {
    log.iter().filter(|written| written.at == at).collect()
}

// ---------------------------------------------------------------------
// Multiboot.

/// Loads `file` as a Multiboot kernel and checks the properties; returns
/// the hand-over and the writes.
fn multiboot_load(
    file: &[u8],
    ram_size: u32,
    cmdline: &str,
) -> (Result<Handover, String>, Vec<Written>) {
    let mut log = Vec::new();
    let result = multiboot::load(file, ram_size, cmdline, &mut recorder(ram_size, &mut log));
    let result = match result {
        Err(error) => {
            assert!(
                matches!(error, LoaderError::Multiboot(_)),
                "not the Multiboot loader's error: {error:?}"
            );
            let message = error.to_string();
            assert!(message.len() > "cannot boot this Multiboot kernel: ".len());
            Err(message)
        }
        Ok(handover) => {
            check_multiboot(&handover, &log, ram_size, cmdline);
            Ok(handover)
        }
    };
    (result, log)
}

fn check_multiboot(handover: &Handover, log: &[Written], ram_size: u32, cmdline: &str) {
    for written in log {
        assert!(
            written.inside,
            "a write of {} bytes at {:#x} outside {ram_size} bytes of RAM",
            written.len, written.at
        );
    }
    assert_eq!(handover.gpr[0], BOOTLOADER_MAGIC, "EAX");
    // The boot information is the last write, where EBX points, above the
    // low 64 KiB and on top of nothing the kernel loaded.
    let (info, kernel) = log.split_last().expect("the boot information was written");
    assert_eq!(handover.gpr[3], info.at, "EBX");
    assert!(info.at >= 0x1_0000, "boot information at {:#x}", info.at);
    for piece in kernel {
        assert!(
            !info.overlaps(piece),
            "boot information {:#x}+{} on the kernel's {:#x}+{}",
            info.at,
            info.len,
            piece.at,
            piece.len
        );
    }
    let bytes = info.bytes.as_deref().expect("boot information is small");
    // flags: memory, command line, memory map, loader name.
    assert_eq!(get32(bytes, 0) & 0x245, 0x245);
    let upper_kib = get32(bytes, 8);
    assert_eq!(upper_kib, ram_size.saturating_sub(MIB) / 1024, "mem_upper");
    let line_at = usize::try_from(get32(bytes, 16) - info.at).expect("small");
    let mut line = cmdline.as_bytes().to_vec();
    line.push(0);
    assert_eq!(
        bytes.get(line_at..line_at + line.len()),
        Some(&line[..]),
        "command line"
    );
    let mmap_at = usize::try_from(get32(bytes, 48) - info.at).expect("small");
    let mmap_len = usize::try_from(get32(bytes, 44)).expect("small");
    assert!(mmap_at + mmap_len <= bytes.len(), "memory map inside");
    assert_eq!(
        (handover.code_selector, handover.data_selector),
        (0x08, 0x10)
    );
}

/// An a.out kludge kernel: `pad` bytes, then the image the crate's builder
/// makes (header, then `code`). The 32-byte header must lie in the first
/// 8 KiB (Multiboot 3.1.1), so `pad` is at most 8160.
#[derive(Clone, Debug)]
struct Aout {
    pad: usize,
    load: u32,
    code: Vec<u8>,
    entry: u32,
}

fn aout() -> impl Strategy<Value = Aout> {
    (
        prop_oneof![3 => Just(0usize), 1 => (0usize..2040).prop_map(|pad| pad * 4)],
        prop_oneof![
            3 => (0x10u32..0x400).prop_map(|page| page << 12),
            1 => edge_word(),
        ],
        proptest::collection::vec(any::<u8>(), 0..600),
        any::<u32>(),
    )
        .prop_map(|(pad, load, code, entry)| Aout {
            pad,
            load,
            code,
            entry,
        })
}

impl Aout {
    /// The file and the offsets of its header's address fields.
    fn build(&self) -> (Vec<u8>, Vec<usize>) {
        let mut file = vec![0x90u8; self.pad];
        file.extend(experiments::image::aout_kludge_image(
            self.load, &self.code, self.entry,
        ));
        let fields = (1..8).map(|index| self.pad + 4 * index).collect();
        (file, fields)
    }
}

/// A Multiboot ELF32 kernel: segments `(paddr, file bytes, extra BSS)`.
#[derive(Clone, Debug)]
struct MultibootElf {
    segments: Vec<(u32, Vec<u8>, u32)>,
    entry: u32,
    header_flags: u32,
}

fn multiboot_elf() -> impl Strategy<Value = MultibootElf> {
    let segment = (
        prop_oneof![
            3 => (0x10u32..0x400).prop_map(|page| page << 12),
            1 => edge_word(),
        ],
        proptest::collection::vec(any::<u8>(), 0..300),
        prop_oneof![2 => Just(0u32), 1 => 0u32..0x4000, 1 => edge_word()],
    );
    (
        proptest::collection::vec(segment, 1..4),
        any::<u32>(),
        prop_oneof![3 => Just(0u32), 1 => select(&[1u32, 2, 3][..])],
    )
        .prop_map(|(segments, entry, header_flags)| MultibootElf {
            segments,
            entry,
            header_flags,
        })
}

impl MultibootElf {
    /// The file and the offsets of its ELF and program header fields.
    fn build(&self) -> (Vec<u8>, Vec<usize>) {
        let phnum = self.segments.len();
        let header_at = 0x34 + 0x20 * phnum;
        let mut file = vec![0u8; header_at + 12];
        file[..4].copy_from_slice(b"\x7fELF");
        file[4] = 1; // 32-bit
        file[5] = 1; // little-endian
        file[6] = 1;
        put16(&mut file, 0x10, 2); // executable
        put16(&mut file, 0x12, 3); // i386
        put32(&mut file, 0x14, 1);
        put32(&mut file, 0x18, self.entry);
        put32(&mut file, 0x1c, 0x34); // phoff
        put16(&mut file, 0x28, 0x34); // ehsize
        put16(&mut file, 0x2a, 0x20); // phentsize
        put16(&mut file, 0x2c, u16::try_from(phnum).expect("a few"));
        let magic = 0x1bad_b002u32;
        put32(&mut file, header_at, magic);
        put32(&mut file, header_at + 4, self.header_flags);
        put32(
            &mut file,
            header_at + 8,
            0u32.wrapping_sub(magic.wrapping_add(self.header_flags)),
        );
        let mut fields = vec![0x18, 0x1c, 0x2a, 0x2c, header_at + 4];
        for (index, (paddr, data, bss)) in self.segments.iter().enumerate() {
            let ph = 0x34 + 0x20 * index;
            let offset = u32::try_from(file.len()).expect("small");
            let filesz = u32::try_from(data.len()).expect("small");
            let memsz = filesz.wrapping_add(*bss);
            for (field, value) in [1, offset, *paddr, *paddr, filesz, memsz, 7, 4]
                .into_iter()
                .enumerate()
            {
                put32(&mut file, ph + 4 * field, value);
                fields.push(ph + 4 * field);
            }
            file.extend_from_slice(data);
        }
        (file, fields)
    }

    /// Whether every segment fits `ram_size` (what the loader must then
    /// load).
    fn fits(&self, ram_size: u32) -> bool {
        self.segments.iter().all(|(paddr, data, bss)| {
            u64::from(*paddr) + data.len() as u64 + u64::from(*bss) <= u64::from(ram_size)
        })
    }
}

// ---------------------------------------------------------------------
// Linux bzImage (boot protocol).

/// A bzImage for the boot protocol loader.
#[derive(Clone, Debug)]
struct BzImage {
    setup_sects: u8,
    protocol: u16,
    code32_start: u32,
    initrd_addr_max: u32,
    cmdline_size: u32,
    pref_address: u32,
    init_size: u32,
    kernel: Vec<u8>,
}

fn bzimage() -> impl Strategy<Value = BzImage> {
    (
        0u8..6,
        select(&[0x0204u16, 0x0206, 0x0208, 0x020a, 0x020c, 0x020f][..]),
        prop_oneof![3 => Just(0x10_0000u32), 1 => (0x100u32..0x800).prop_map(|page| page << 12)],
        prop_oneof![3 => Just(0x7fff_ffffu32), 1 => edge_word()],
        prop_oneof![3 => Just(2047u32), 1 => 0u32..5000],
        select(&[0x10_0000u32, 0x100_0000][..]),
        prop_oneof![2 => 0u32..0x10_0000, 1 => 0u32..64 * MIB],
        proptest::collection::vec(any::<u8>(), 1..3000),
    )
        .prop_map(
            |(
                setup_sects,
                protocol,
                code32_start,
                initrd_addr_max,
                cmdline_size,
                pref_address,
                init_size,
                kernel,
            )| BzImage {
                setup_sects,
                protocol,
                code32_start,
                initrd_addr_max,
                cmdline_size,
                pref_address,
                init_size,
                kernel,
            },
        )
}

/// Setup header fields (offsets in the image) the loader reads.
const SETUP_FIELDS: &[usize] = &[
    0x1f1, 0x1fe, 0x202, 0x206, 0x211, 0x214, 0x218, 0x21c, 0x228, 0x22c, 0x230, 0x238, 0x248,
    0x24c, 0x250, 0x258, 0x25c, 0x260,
];

impl BzImage {
    fn protected_offset(&self) -> usize {
        (usize::from(match self.setup_sects {
            0 => 4,
            sects => sects,
        }) + 1)
            * 512
    }

    fn build(&self) -> Vec<u8> {
        let mut file = vec![0u8; self.protected_offset()];
        file[0x1f1] = self.setup_sects;
        put16(&mut file, 0x1fe, 0xaa55);
        put32(&mut file, 0x202, 0x5372_6448);
        put16(&mut file, 0x206, self.protocol);
        file[0x211] = 1; // LOADED_HIGH
        put32(&mut file, 0x214, self.code32_start);
        put32(&mut file, 0x22c, self.initrd_addr_max);
        put32(&mut file, 0x238, self.cmdline_size);
        put32(&mut file, 0x258, self.pref_address);
        put32(&mut file, 0x260, self.init_size);
        file.extend_from_slice(&self.kernel);
        file
    }

    /// Whether the unmutated image must load into `ram_size` bytes with
    /// `initrd_len` bytes of initrd and `cmdline` (a simpler, stricter
    /// rule than the loader's).
    fn must_load(&self, ram_size: u32, initrd_len: usize, cmdline: &str) -> bool {
        let kernel_end = u64::from(self.code32_start) + self.kernel.len() as u64;
        let area_end = if self.protocol >= 0x020a {
            kernel_end.max(u64::from(self.pref_address) + u64::from(self.init_size))
        } else {
            kernel_end
        };
        let line_limit = if self.protocol >= 0x0206 {
            self.cmdline_size.min(4095)
        } else {
            255
        };
        let top = u64::from(ram_size).min(u64::from(self.initrd_addr_max) + 1);
        area_end.next_multiple_of(0x1000) + (initrd_len as u64).next_multiple_of(0x1000) <= top
            && area_end <= u64::from(ram_size)
            && cmdline.len() as u64 <= u64::from(line_limit)
            && !cmdline.contains('\0')
    }
}

fn linux_load(
    file: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    ram_size: u32,
) -> (Result<(Handover, Placement), String>, Vec<Written>) {
    let mut log = Vec::new();
    let result = linux::load(
        file,
        initrd,
        cmdline,
        ram_size,
        &mut recorder(ram_size, &mut log),
    );
    let result = match result {
        Err(error) => {
            assert!(
                matches!(error, LoaderError::Linux(_) | LoaderError::Truncated { .. }),
                "not the Linux loader's error: {error:?}"
            );
            Err(error.to_string())
        }
        Ok((handover, placement)) => {
            check_linux(file, initrd, cmdline, ram_size, &handover, &placement, &log);
            Ok((handover, placement))
        }
    };
    (result, log)
}

fn check_linux(
    file: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    ram_size: u32,
    handover: &Handover,
    placement: &Placement,
    log: &[Written],
) {
    for (index, written) in log.iter().enumerate() {
        assert!(
            written.inside,
            "a write of {} bytes at {:#x} outside {ram_size} bytes of RAM",
            written.len, written.at
        );
        for other in &log[..index] {
            assert!(
                !written.overlaps(other),
                "{:#x}+{} on top of {:#x}+{}",
                written.at,
                written.len,
                other.at,
                other.len
            );
        }
    }
    // The kernel: the protected-mode part of the file, at code32_start,
    // above 1 MiB, below the end of its decompression area.
    let setup_sects = match file[0x1f1] {
        0 => 4,
        sects => usize::from(sects),
    };
    let kernel = &file[(setup_sects + 1) * 512..];
    assert_eq!(handover.eip, get32(file, 0x214), "entry at code32_start");
    assert!(handover.eip >= MIB);
    let kernel_len = u32::try_from(kernel.len()).expect("small");
    assert_eq!(placement.kernel, (handover.eip, kernel_len));
    assert!(
        u64::from(handover.eip) + u64::from(kernel_len) <= u64::from(placement.kernel_area_end)
    );
    assert!(placement.kernel_area_end <= ram_size);
    let loaded = writes_at(log, handover.eip);
    assert_eq!(loaded.len(), 1);
    assert_eq!(
        loaded[0].bytes.as_deref(),
        Some(kernel),
        "the kernel's bytes"
    );
    // The zero page, the command line and the GDT where the hand-over and
    // the zero page say.
    assert_eq!(handover.gpr[6], ZERO_PAGE, "ESI");
    let zero_page = writes_at(log, ZERO_PAGE);
    let zero_page = zero_page[0].bytes.as_deref().expect("a page");
    assert_eq!(zero_page.len(), 4096);
    assert_eq!(&zero_page[0x202..0x206], b"HdrS");
    assert_eq!(get32(zero_page, 0x228), CMDLINE, "cmd_line_ptr");
    assert_eq!(&zero_page[0x250..0x258], &[0; 8], "setup_data");
    let line = writes_at(log, CMDLINE);
    let mut expected_line = cmdline.as_bytes().to_vec();
    expected_line.push(0);
    assert_eq!(line[0].bytes.as_deref(), Some(&expected_line[..]));
    assert_eq!(
        (handover.code_selector, handover.data_selector),
        (BOOT_CS, BOOT_DS)
    );
    assert_eq!(handover.gdt_base, BOOT_GDT);
    let gdt = writes_at(log, BOOT_GDT);
    assert_eq!(gdt[0].len, u64::from(handover.gdt_limit) + 1);
    // The initrd: page-aligned, above the kernel's area, inside RAM and
    // below initrd_addr_max, and named in the zero page.
    let (initrd_at, initrd_len) = placement.initrd;
    assert_eq!(get32(zero_page, 0x218), initrd_at, "ramdisk_image");
    assert_eq!(get32(zero_page, 0x21c), initrd_len, "ramdisk_size");
    match initrd {
        Some(initrd) if !initrd.is_empty() => {
            assert_eq!(initrd_len as usize, initrd.len());
            assert_eq!(initrd_at % 0x1000, 0);
            assert!(initrd_at >= placement.kernel_area_end);
            let end = u64::from(initrd_at) + u64::from(initrd_len);
            assert!(end <= u64::from(ram_size));
            if u16::from_le_bytes([file[0x206], file[0x207]]) >= 0x0203 {
                assert!(end - 1 <= u64::from(get32(file, 0x22c)), "initrd_addr_max");
            }
            let placed = writes_at(log, initrd_at);
            assert_eq!(placed[0].len, initrd.len() as u64);
            if let Some(bytes) = &placed[0].bytes {
                assert_eq!(&bytes[..], initrd);
            }
        }
        _ => assert_eq!(placement.initrd, (0, 0)),
    }
}

// ---------------------------------------------------------------------
// The bzImage container and its payload.

fn compress(data: &[u8], method: Compression) -> Vec<u8> {
    match method {
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(data).expect("in-memory write");
            encoder.finish().expect("in-memory gzip")
        }
        Compression::Xz => {
            let mut encoder = liblzma::write::XzEncoder::new(Vec::new(), 1);
            encoder.write_all(data).expect("in-memory write");
            encoder.finish().expect("in-memory xz")
        }
        Compression::Lzma => {
            let options = liblzma::stream::LzmaOptions::new_preset(1).expect("preset 1");
            let stream = liblzma::stream::Stream::new_lzma_encoder(&options).expect("encoder");
            let mut encoder = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
            encoder.write_all(data).expect("in-memory write");
            encoder.finish().expect("in-memory lzma")
        }
        Compression::Zstd => {
            let mut payload = zstd::stream::encode_all(data, 1).expect("in-memory zstd");
            // The kernel appends the uncompressed size.
            payload.extend_from_slice(&u32::try_from(data.len()).expect("small").to_le_bytes());
            payload
        }
        Compression::Bzip2 => {
            let mut encoder = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            encoder.write_all(data).expect("in-memory write");
            encoder.finish().expect("in-memory bzip2")
        }
        // Not inflated by btvmm: the magic and some bytes.
        Compression::Lz4 => [&[0x02, 0x21, 0x4c, 0x18][..], data].concat(),
        Compression::Lzo => [&[0x89, b'L', b'Z', b'O'][..], data].concat(),
    }
}

fn compression() -> impl Strategy<Value = Compression> {
    select(
        &[
            Compression::Gzip,
            Compression::Xz,
            Compression::Lzma,
            Compression::Zstd,
            Compression::Bzip2,
            Compression::Lz4,
            Compression::Lzo,
        ][..],
    )
}

/// Kernel-like data: runs and random bytes, so that it compresses.
fn vmlinux() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            (any::<u8>(), 1usize..400).prop_map(|(byte, len)| vec![byte; len]),
            proptest::collection::vec(any::<u8>(), 0..64),
        ],
        0..40,
    )
    .prop_map(|pieces| pieces.concat())
}

/// Parses `image` as a bzImage and inflates its payload with `limit`,
/// checking the properties; the inflated bytes when it worked.
fn parse_and_inflate(image: &[u8], limit: u64) -> Option<Result<Vec<u8>, String>> {
    let info = match parse_bzimage(image) {
        Ok(info) => info,
        Err(error) => {
            assert!(
                matches!(
                    error,
                    LoaderError::Truncated { .. }
                        | LoaderError::NotAKernel { .. }
                        | LoaderError::OldProtocol(_)
                        | LoaderError::UnknownCompression(_)
                ),
                "{error:?}"
            );
            assert!(!error.to_string().is_empty());
            return None;
        }
    };
    assert!(info.protocol >= 0x0208);
    assert_eq!(
        info.protected_mode_offset,
        (usize::from(info.setup_sects) + 1) * 512
    );
    assert!(info.payload_offset >= info.protected_mode_offset);
    let payload = image
        .get(info.payload_offset..info.payload_offset + info.payload_length)
        .expect("the parser checked the payload is inside the file");
    assert_eq!(Compression::detect(payload), Some(info.compression));
    if let Some(version) = &info.kernel_version {
        assert!(version.len() < 256 && !version.contains('\0'));
    }
    Some(match decompress(payload, info.compression, limit) {
        Ok(inflated) => {
            assert!(inflated.len() as u64 <= limit, "inflated past the limit");
            Ok(inflated)
        }
        Err(error) => {
            assert!(
                matches!(
                    error,
                    LoaderError::Decompress { .. }
                        | LoaderError::TooLarge(_)
                        | LoaderError::UnsupportedCompression(_)
                ),
                "{error:?}"
            );
            Err(error.to_string())
        }
    })
}

// ---------------------------------------------------------------------
// The vmlinux ELF.

/// Edge words, but none that would make the parser materialize more than
/// a few MiB of BSS: it takes up to [`MAX_LOADED_BYTES`] (512 MiB) of
/// segments, as a kernel file the user names may ask for.
fn elf_word() -> impl Strategy<Value = u32> + Clone {
    edge_word().prop_map(|word| {
        if (0x40_0000..=0x2000_0000).contains(&word) {
            word & 0x3f_ffff
        } else {
            word
        }
    })
}

/// A vmlinux-like ELF32: loadable segments, a `.text` section, symbols.
#[derive(Clone, Debug)]
struct Vmlinux {
    /// `(vaddr, paddr, bytes, extra BSS)`.
    segments: Vec<(u32, u32, Vec<u8>, u32)>,
    text: Vec<u8>,
    text_addr: u32,
    /// Offsets into `.text` of function symbols.
    symbols: Vec<u16>,
    entry: u32,
}

fn vmlinux_elf() -> impl Strategy<Value = Vmlinux> {
    let segment = (
        prop_oneof![3 => (0xc0000u32..0xc0400).prop_map(|page| page << 12), 1 => edge_word()],
        prop_oneof![3 => (0x100u32..0x400).prop_map(|page| page << 12), 1 => edge_word()],
        proptest::collection::vec(any::<u8>(), 0..200),
        prop_oneof![3 => 0u32..0x4000, 1 => elf_word()],
    );
    (
        proptest::collection::vec(segment, 0..3),
        proptest::collection::vec(any::<u8>(), 1..300),
        prop_oneof![3 => Just(0xc100_0000u32), 1 => edge_word()],
        proptest::collection::vec(any::<u16>(), 0..4),
        any::<u32>(),
    )
        .prop_map(|(segments, text, text_addr, symbols, entry)| Vmlinux {
            segments,
            text,
            text_addr,
            symbols,
            entry,
        })
}

impl Vmlinux {
    /// The file and the offsets of its header fields: ELF header, program
    /// headers, section headers, symbols.
    fn build(&self) -> (Vec<u8>, Vec<usize>) {
        let phnum = self.segments.len();
        let mut file = vec![0u8; 0x34 + 0x20 * phnum];
        let mut fields = vec![0x18, 0x1c, 0x20, 0x2a, 0x2c, 0x2e, 0x30, 0x32];
        file[..4].copy_from_slice(b"\x7fELF");
        file[4] = 1;
        file[5] = 1;
        file[6] = 1;
        put16(&mut file, 0x10, 2);
        put16(&mut file, 0x12, 3);
        put32(&mut file, 0x14, 1);
        put32(&mut file, 0x18, self.entry);
        put32(&mut file, 0x1c, if phnum == 0 { 0 } else { 0x34 });
        put16(&mut file, 0x28, 0x34);
        put16(&mut file, 0x2a, 0x20);
        put16(&mut file, 0x2c, u16::try_from(phnum).expect("a few"));
        put16(&mut file, 0x2e, 0x28);
        for (index, (vaddr, paddr, data, bss)) in self.segments.iter().enumerate() {
            let ph = 0x34 + 0x20 * index;
            let offset = u32::try_from(file.len()).expect("small");
            let filesz = u32::try_from(data.len()).expect("small");
            for (field, value) in [
                1,
                offset,
                *vaddr,
                *paddr,
                filesz,
                filesz.saturating_add(*bss),
                7,
                4,
            ]
            .into_iter()
            .enumerate()
            {
                put32(&mut file, ph + 4 * field, value);
                fields.push(ph + 4 * field);
            }
            file.extend_from_slice(data);
        }
        // .text, then the symbol and string tables.
        let text_at = file.len();
        file.extend_from_slice(&self.text);
        let strtab_at = file.len();
        let mut names = vec![0u8];
        let mut symtab = vec![0u8; 16];
        for (index, offset) in self.symbols.iter().enumerate() {
            let name = u32::try_from(names.len()).expect("small");
            names.extend_from_slice(format!("function_{index}\0").as_bytes());
            let value = self
                .text_addr
                .wrapping_add(u32::from(*offset) % u32::try_from(self.text.len()).expect("small"));
            let mut symbol = [0u8; 16];
            put32(&mut symbol, 0, name);
            put32(&mut symbol, 4, value);
            symbol[12] = 0x12; // global function
            put16(&mut symbol, 14, 1); // in .text
            symtab.extend_from_slice(&symbol);
        }
        file.extend_from_slice(&names);
        let symtab_at = file.len();
        file.extend_from_slice(&symtab);
        let shstrtab_at = file.len();
        let shstrtab = b"\0.text\0.strtab\0.symtab\0.shstrtab\0";
        file.extend_from_slice(shstrtab);
        while !file.len().is_multiple_of(4) {
            file.push(0);
        }
        let shoff = file.len();
        put32(&mut file, 0x20, u32::try_from(shoff).expect("small"));
        put16(&mut file, 0x30, 5);
        put16(&mut file, 0x32, 4);
        let small = |value: usize| u32::try_from(value).expect("small");
        let sections: [[u32; 10]; 5] = [
            [0; 10],
            // name, type, flags, addr, offset, size, link, info, align, entsize
            [
                1,
                1,
                6,
                self.text_addr,
                small(text_at),
                small(self.text.len()),
                0,
                0,
                16,
                0,
            ],
            [7, 3, 0, 0, small(strtab_at), small(names.len()), 0, 0, 1, 0],
            [
                15,
                2,
                0,
                0,
                small(symtab_at),
                small(symtab.len()),
                2,
                1,
                4,
                16,
            ],
            [
                23,
                3,
                0,
                0,
                small(shstrtab_at),
                small(shstrtab.len()),
                0,
                0,
                1,
                0,
            ],
        ];
        for (index, section) in sections.iter().enumerate() {
            for (field, value) in section.iter().enumerate() {
                let at = shoff + 0x28 * index + 4 * field;
                file.extend_from_slice(&[0; 4]);
                put32(&mut file, at, *value);
                if index > 0 {
                    fields.push(at);
                }
            }
        }
        for index in 0..self.symbols.len() {
            fields.push(symtab_at + 16 * (index + 1) + 4);
        }
        (file, fields)
    }

    /// Whether the unmutated file must parse: every segment fits the
    /// 32-bit address space.
    fn must_parse(&self) -> bool {
        self.segments.iter().all(|(vaddr, paddr, data, bss)| {
            let size = data.len() as u64 + u64::from(*bss);
            u64::from(*vaddr) + size <= 1 << 32 && u64::from(*paddr) + size <= 1 << 32
        }) && self
            .segments
            .iter()
            .map(|(_, _, data, bss)| data.len() as u64 + u64::from(*bss))
            .sum::<u64>()
            <= MAX_LOADED_BYTES
    }
}

fn check_kernel_elf(file: &[u8]) -> Option<KernelElf> {
    match KernelElf::parse(file) {
        Err(error) => {
            assert!(matches!(error, LoaderError::Elf(_)), "{error:?}");
            None
        }
        Ok(elf) => {
            assert!(!elf.sections.is_empty());
            for section in &elf.sections {
                assert!(!section.bytes.is_empty());
                assert!(
                    section.bytes.len() <= file.len(),
                    "a section larger than the file"
                );
            }
            for (name, &at) in &elf.symbols {
                assert!(!name.is_empty());
                assert!(elf.section_at(at).is_some(), "{name} outside the code");
            }
            Some(elf)
        }
    }
}

// ---------------------------------------------------------------------
// Random files.

/// Random bytes, now and then with a signature one of the parsers looks
/// for.
fn random_file() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(any::<u8>(), 0..12_000),
        0u8..5,
        any::<Index>(),
        any::<u32>(),
    )
        .prop_map(|(mut file, plant, at, flags)| {
            match plant {
                1 if file.len() >= 0x206 => {
                    put16(&mut file, 0x1fe, 0xaa55);
                    put32(&mut file, 0x202, 0x5372_6448);
                }
                2 if file.len() >= 12 => {
                    let at = at.index(file.len().min(8192) - 11) & !3;
                    // Mostly flags the loader knows (a.out kludge, memory
                    // information, page alignment).
                    let flags = if flags & 0x300 == 0 {
                        flags
                    } else {
                        flags & 0x0001_0003
                    };
                    let magic = 0x1bad_b002u32;
                    put32(&mut file, at, magic);
                    put32(&mut file, at + 4, flags);
                    put32(
                        &mut file,
                        at + 8,
                        0u32.wrapping_sub(magic.wrapping_add(flags)),
                    );
                }
                3 if file.len() >= 0x34 => {
                    file[..7].copy_from_slice(b"\x7fELF\x01\x01\x01");
                    put16(&mut file, 0x12, 3);
                }
                _ => {}
            }
            file
        })
}

proptest! {
    #![proptest_config(config(1024))]

    /// Every entry point on random bytes: detection agrees with the
    /// loaders, and each fails cleanly or loads inside RAM.
    #[test]
    fn loaders_survive_random_files(
        file in random_file(),
        ram_size in ram_size(),
        cmdline in cmdline(),
        initrd in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..5000)),
    ) {
        within(HANG, move || {
            let kind = KernelKind::detect(&file);
            let (multiboot, _) = multiboot_load(&file, ram_size, &cmdline);
            let (linux, _) = linux_load(&file, initrd.as_deref(), &cmdline, ram_size);
            if multiboot.is_ok() {
                assert!(kind.is_ok(), "loaded but not detected");
            }
            match kind {
                Ok(KernelKind::BzImage) => assert!(linux::is_bzimage(&file)),
                Ok(KernelKind::Multiboot) => assert!(!linux::is_bzimage(&file)),
                Err(ref error) => {
                    assert!(matches!(error, LoaderError::UnknownKernel));
                    assert!(multiboot.is_err() && linux.is_err());
                }
            }
            if linux.is_ok() {
                assert_eq!(kind.ok(), Some(KernelKind::BzImage));
            }
            parse_and_inflate(&file, 1 << 20);
            check_kernel_elf(&file);
        });
    }

    /// a.out kludge kernels built with the crate's builder, mutated.
    #[test]
    fn multiboot_aout_kernels_load_inside_ram(
        kernel in aout(),
        edits in edits(),
        ram_size in ram_size(),
        cmdline in cmdline(),
    ) {
        within(HANG, move || {
            let (built, fields) = kernel.build();
            let file = mutate(built.clone(), &edits, &fields);
            let (result, log) = multiboot_load(&file, ram_size, &cmdline);
            if result.is_ok() {
                assert!(KernelKind::detect(&file).is_ok(), "loaded but not detected");
            }
            let image = &built[kernel.pad..];
            let fits = u64::from(kernel.load) + image.len() as u64 <= u64::from(ram_size)
                && kernel.load >= 0x1_0000
                && u64::from(ram_size) >= 0x3_0000;
            if edits.is_empty() && fits && cmdline.len() < 4096 {
                let handover = result.expect("a valid a.out kernel that fits loads");
                assert_eq!(handover.eip, kernel.entry);
                let loaded = writes_at(&log, kernel.load);
                assert_eq!(loaded[0].bytes.as_deref(), Some(image));
            }
        });
    }

    /// Multiboot ELF kernels, mutated.
    #[test]
    fn multiboot_elf_kernels_load_inside_ram(
        kernel in multiboot_elf(),
        edits in edits(),
        ram_size in ram_size(),
        cmdline in cmdline(),
    ) {
        within(HANG, move || {
            let (built, fields) = kernel.build();
            let file = mutate(built, &edits, &fields);
            let (result, log) = multiboot_load(&file, ram_size, &cmdline);
            if edits.is_empty() && kernel.fits(ram_size) && cmdline.len() < 4096
                && kernel.segments.iter().all(|(paddr, ..)| *paddr >= MIB)
                && u64::from(ram_size) >= 0x3_0000
            {
                let handover = result.expect("a valid ELF kernel that fits loads");
                assert_eq!(handover.eip, kernel.entry);
                // Empty segments write nothing.
                let segments = kernel
                    .segments
                    .iter()
                    .filter(|(_, data, bss)| !data.is_empty() || *bss > 0);
                assert_eq!(log.len(), segments.clone().count() + 1);
                for ((paddr, data, bss), written) in segments.zip(&log) {
                    assert_eq!(written.at, *paddr);
                    assert_eq!(written.len, data.len() as u64 + u64::from(*bss));
                    if let Some(bytes) = &written.bytes {
                        assert_eq!(&bytes[..data.len()], &data[..]);
                        assert!(bytes[data.len()..].iter().all(|&byte| byte == 0));
                    }
                }
            }
        });
    }

    /// bzImages through the boot protocol loader, with an initrd, mutated.
    #[test]
    fn bzimages_load_inside_ram(
        image in bzimage(),
        edits in edits(),
        ram_size in ram_size(),
        cmdline in cmdline(),
        initrd in prop_oneof![
            1 => Just(None),
            3 => proptest::collection::vec(any::<u8>(), 0..20_000).prop_map(Some),
            1 => (0usize..(3 << 20)).prop_map(|len| Some(vec![0x5a; len])),
        ],
    ) {
        within(HANG, move || {
            let file = mutate(image.build(), &edits, SETUP_FIELDS);
            let (result, _) = linux_load(&file, initrd.as_deref(), &cmdline, ram_size);
            let initrd_len = initrd.as_ref().map_or(0, Vec::len);
            if edits.is_empty() && image.must_load(ram_size, initrd_len, &cmdline) {
                result.expect("a valid bzImage that fits loads");
            }
        });
    }

    /// The bzImage container and its compressed payload, mutated, inflated
    /// with a limit.
    #[test]
    fn bzimage_payloads_inflate_or_fail_cleanly(
        data in vmlinux(),
        method in compression(),
        protocol in prop_oneof![3 => Just(0x020fu16), 1 => any::<u16>()],
        edits in edits(),
        limit in prop_oneof![3 => Just(1u64 << 20), 1 => 0u64..20_000],
    ) {
        within(HANG, move || {
            let image = wrap_in_bzimage(&compress(&data, method), protocol);
            // The setup header, then the payload's own header.
            let fields = [0x1f1, 0x206, 0x20e, 0x248, 0x24c, 1024, 1028, 1032, 1036];
            let file = mutate(image, &edits, &fields);
            let outcome = parse_and_inflate(&file, limit);
            if edits.is_empty() && protocol >= 0x0208 {
                let outcome = outcome.expect("the header is valid");
                match method {
                    Compression::Lz4 | Compression::Lzo => assert!(outcome.is_err()),
                    _ if data.len() as u64 <= limit => {
                        assert_eq!(outcome.expect("inflates"), data);
                    }
                    _ => assert!(outcome.is_err(), "more than the limit"),
                }
            }
        });
    }

    /// vmlinux ELF files, mutated.
    #[test]
    fn kernel_elfs_parse_or_fail_cleanly(elf in vmlinux_elf(), edits in edits_with(elf_word())) {
        within(HANG, move || {
            let (built, fields) = elf.build();
            let file = mutate(built, &edits, &fields);
            let parsed = check_kernel_elf(&file);
            if edits.is_empty() && elf.must_parse() {
                let parsed = parsed.expect("a valid vmlinux parses");
                let text = &parsed.sections[0];
                assert_eq!(text.name, ".text");
                assert_eq!(text.bytes, elf.text);
                assert_eq!(parsed.symbols.len(), elf.symbols.len());
            }
        });
    }
}
