//! Decoding guest code into straight-line runs that end at a point of
//! interest, and the cache that keeps them.
//!
//! A *block* here is the code from some start address up to and including
//! the first point of interest (POI). Blocks are keyed by their start
//! address, so two starts inside the same run of plain instructions give two
//! blocks ending at the same POI; the CFG joins them at that POI.
//!
//! Guest code is read only through [`GuestMemory`], i.e. through the guest's
//! own page tables: every block records the guest-virtual and guest-physical
//! pages its bytes came from, so a write to a code page (reported by the
//! shadow MMU by guest-physical page) or a change of a code mapping
//! (reported by guest-virtual page) drops exactly the blocks that depend on
//! it.

// Fx hashing: the keys are guest addresses and page numbers; a guest that
// makes its own addresses collide only slows down its own monitor.
use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction};

use btvmm_core::{GuestMemory, GuestPhys, GuestVirt, MemFault};

use crate::classify::{ClassifyConfig, PoiKind, classify};
use crate::isa::{Isa, X86};

/// Longest straight-line run decoded in one block. Longer runs end in
/// [`BlockEnd::TooLong`] and continue in a block of their own: this bounds
/// the work of one decode and the pages one block depends on (at most 15
/// KiB of code, so at most five pages), not what the planner can follow.
pub const MAX_BLOCK_INSTRUCTIONS: u32 = 1024;

/// Longest x86 instruction.
const MAX_INSTRUCTION_LEN: usize = 15;

/// Bytes of code read at a time while decoding a block.
const CHUNK: usize = 256;

/// A decoded point of interest.
#[derive(Clone, Copy, Debug)]
pub struct Poi {
    /// Guest-virtual (linear) address of the instruction.
    pub at: GuestVirt,
    /// What it is to the planner.
    pub kind: PoiKind,
    /// The decoded instruction, for computing targets and for emulation.
    pub instr: Instruction,
}

impl Poi {
    /// Length of the instruction in bytes (1 to 15).
    #[must_use]
    pub fn length(&self) -> u32 {
        // An x86 instruction is at most 15 bytes long.
        #[allow(clippy::cast_possible_truncation)]
        let len = self.instr.len() as u32;
        len
    }

    /// Address of the next instruction in memory (the fall-through).
    #[must_use]
    pub fn next(&self) -> GuestVirt {
        self.at.offset(self.length())
    }
}

/// How a block ends.
#[derive(Clone, Copy, Debug)]
pub enum BlockEnd<I: Isa = X86> {
    /// At a point of interest (included in the block).
    Poi(I::Poi),
    /// The instruction here cannot be fetched through the guest's page
    /// tables (unmapped, or straddles into an unmapped page).
    Unfetchable(I::Start),
    /// The block's bound on straight-line code; the run goes on here.
    TooLong(I::Start),
    /// A debugger's breakpoint is on the instruction here (not included):
    /// execution must stop before it.
    Breakpoint(I::Start),
}

impl<I: Isa> BlockEnd<I> {
    /// Where the instruction the block ends at is.
    #[must_use]
    pub fn at(&self) -> I::Start {
        match self {
            Self::Poi(poi) => I::poi_start(poi),
            Self::Unfetchable(at) | Self::TooLong(at) | Self::Breakpoint(at) => *at,
        }
    }
}

/// One guest page a block's bytes came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CodePage {
    /// Guest-virtual page number.
    pub virt_page: u32,
    /// Guest-physical page number it mapped to, or `None` when it was not
    /// mapped (the block ends there).
    pub phys_page: Option<u32>,
}

/// Straight-line guest code from `start` to its first point of interest.
#[derive(Clone, Debug)]
pub struct Block<I: Isa = X86> {
    /// First instruction.
    pub start: I::Start,
    /// How it ends.
    pub end: BlockEnd<I>,
    /// Instructions decoded, the ending POI included.
    pub instructions: u32,
    /// Guest pages read (or found unmapped) while decoding.
    pub pages: Vec<CodePage>,
}

/// Decodes the block starting at `start`.
///
/// Never fails: code that cannot be read or decoded becomes the block's end
/// ([`BlockEnd::Unfetchable`], [`PoiKind::Unrecognized`]).
#[must_use]
pub fn scan_block(mem: &dyn GuestMemory, start: GuestVirt, config: &ClassifyConfig) -> Block {
    scan_block_with_stops(mem, start, config, &[])
}

/// [`scan_block`] that also ends before any instruction whose address is
/// in `stops` (sorted: a debugger's breakpoints), `start` included.
#[must_use]
pub fn scan_block_with_stops(
    mem: &dyn GuestMemory,
    start: GuestVirt,
    config: &ClassifyConfig,
    stops: &[GuestVirt],
) -> Block {
    let mut pages = Vec::new();
    let mut instructions = 0u32;
    let mut cursor = start;
    let mut instr = Instruction::default();
    // Blocks are short (a handful of instructions), so code is read in small
    // chunks, each with room for an instruction that starts in the chunk and
    // runs past its end. A chunk that reaches the end of its page is up to
    // CHUNK + 15 bytes long and gets 15 more from the next page.
    let mut window = [0u8; CHUNK + 2 * MAX_INSTRUCTION_LEN];

    let end = 'chunks: loop {
        // A run that used its instructions up exactly at the end of a chunk
        // ends there as too long, whatever follows (as within a chunk).
        if instructions >= MAX_BLOCK_INSTRUCTIONS {
            break BlockEnd::TooLong(cursor);
        }
        let in_page = cursor.bytes_to_page_end() as usize;
        match mem.translate(cursor) {
            Ok(phys) => note_page(&mut pages, cursor, Some(phys)),
            Err(_) => {
                note_page(&mut pages, cursor, None);
                break BlockEnd::Unfetchable(cursor);
            }
        }
        // Instructions starting in [0, chunk) are decoded from this window.
        let (chunk, readable) = if in_page > CHUNK + MAX_INSTRUCTION_LEN {
            (CHUNK, CHUNK + MAX_INSTRUCTION_LEN)
        } else {
            (in_page, in_page)
        };
        if mem.read_virt(cursor, &mut window[..readable]).is_err() {
            break BlockEnd::Unfetchable(cursor);
        }
        // When the chunk runs to the end of the page, the tail comes from the
        // next page, if the guest maps it.
        #[allow(clippy::cast_possible_truncation)] // in_page <= PAGE_SIZE
        let next_page = cursor.offset(in_page as u32);
        let mut next_phys = None;
        let mut len = readable;
        if chunk == in_page {
            next_phys = mem.translate(next_page).ok();
            let tail = &mut window[readable..readable + MAX_INSTRUCTION_LEN];
            // A failed read just means a straddling instruction (if any)
            // cannot be fetched; the decoder reports it as truncated.
            if next_phys.is_some() && mem.read_virt(next_page, tail).is_ok() {
                len += MAX_INSTRUCTION_LEN;
            }
        }

        let mut decoder = Decoder::with_ip(
            32,
            &window[..len],
            u64::from(cursor.0),
            DecoderOptions::NONE,
        );
        while decoder.position() < chunk {
            if instructions >= MAX_BLOCK_INSTRUCTIONS {
                break 'chunks BlockEnd::TooLong(instruction_at(&decoder, cursor));
            }
            let at = instruction_at(&decoder, cursor);
            if !stops.is_empty() && stops.binary_search(&at).is_ok() {
                break 'chunks BlockEnd::Breakpoint(at);
            }
            decoder.decode_out(&mut instr);
            instructions += 1;
            if decoder.last_error() == DecoderError::NoMoreBytes {
                note_page(&mut pages, next_page, next_phys);
                break 'chunks BlockEnd::Unfetchable(at);
            }
            if decoder.position() > in_page {
                note_page(&mut pages, next_page, next_phys);
            }
            let kind = classify(&instr, config);
            if kind.is_poi() {
                break 'chunks BlockEnd::Poi(Poi { at, kind, instr });
            }
        }
        #[allow(clippy::cast_possible_truncation)] // position <= CHUNK + 15
        let consumed = decoder.position() as u32;
        cursor = cursor.offset(consumed);
    };
    Block {
        start,
        end,
        instructions,
        pages,
    }
}

fn instruction_at(decoder: &Decoder<'_>, chunk_start: GuestVirt) -> GuestVirt {
    #[allow(clippy::cast_possible_truncation)] // position <= PAGE_SIZE + 15
    chunk_start.offset(decoder.position() as u32)
}

pub(crate) fn note_page(pages: &mut Vec<CodePage>, virt: GuestVirt, phys: Option<GuestPhys>) {
    let page = CodePage {
        virt_page: virt.page(),
        phys_page: phys.map(GuestPhys::page),
    };
    if !pages.contains(&page) {
        pages.push(page);
    }
}

/// Why the code at an address could not be decoded, for callers that need
/// an error rather than a block end: the first of the (up to `longest`,
/// the architecture's longest instruction) bytes of the instruction that
/// cannot be read.
#[must_use]
pub fn fetch_fault(mem: &dyn GuestMemory, at: GuestVirt, longest: u32) -> MemFault {
    let mut byte = [0u8; 1];
    for offset in 0..longest {
        let probe = at.offset(offset);
        if let Err(fault) = mem.read_virt(probe, &mut byte) {
            return fault;
        }
    }
    // Every byte reads: then the code itself was the problem, which
    // scan_block reports as a POI, not as a fetch failure.
    MemFault::NotMapped(at)
}

/// Counters of the decode cache (and of the plan cache built on the same
/// machinery).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to decode (or plan).
    pub misses: u64,
    /// Entries dropped because a page they depend on changed.
    pub invalidated: u64,
    /// Times the cache was emptied because it reached its bound.
    pub overflows: u64,
}

/// A bounded map from guest code address to an entry that depends on a set
/// of guest pages, with removal by guest-physical or guest-virtual page.
///
/// When it holds `capacity` entries, inserting another empties it first:
/// the bound is strict, and in a guest kernel's steady state the working set
/// of hot code fits far below it.
#[derive(Debug)]
pub(crate) struct PageKeyedCache<K, V> {
    entries: HashMap<K, (Arc<V>, Vec<CodePage>)>,
    by_phys_page: HashMap<u32, Vec<K>>,
    by_virt_page: HashMap<u32, Vec<K>>,
    capacity: usize,
    pub(crate) stats: CacheStats,
}

impl<K: Copy + Eq + std::hash::Hash, V> PageKeyedCache<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::default(),
            by_phys_page: HashMap::default(),
            by_virt_page: HashMap::default(),
            capacity,
            stats: CacheStats::default(),
        }
    }

    pub(crate) fn get(&mut self, key: &K) -> Option<Arc<V>> {
        let found = self.entries.get(key).map(|(value, _)| Arc::clone(value));
        if found.is_some() {
            self.stats.hits += 1;
        } else {
            self.stats.misses += 1;
        }
        found
    }

    pub(crate) fn insert(&mut self, key: K, value: Arc<V>, pages: &[CodePage]) {
        self.remove(&key);
        if self.entries.len() >= self.capacity {
            self.clear();
            self.stats.overflows += 1;
        }
        for page in pages {
            self.by_virt_page
                .entry(page.virt_page)
                .or_default()
                .push(key);
            if let Some(phys_page) = page.phys_page {
                self.by_phys_page.entry(phys_page).or_default().push(key);
            }
        }
        self.entries.insert(key, (value, pages.to_vec()));
    }

    pub(crate) fn invalidate_phys_page(&mut self, phys_page: u32) {
        let keys = self
            .by_phys_page
            .get(&phys_page)
            .cloned()
            .unwrap_or_default();
        for key in keys {
            if self.remove(&key) {
                self.stats.invalidated += 1;
            }
        }
    }

    pub(crate) fn invalidate_virt_page(&mut self, virt_page: u32) {
        let keys = self
            .by_virt_page
            .get(&virt_page)
            .cloned()
            .unwrap_or_default();
        for key in keys {
            if self.remove(&key) {
                self.stats.invalidated += 1;
            }
        }
    }

    pub(crate) fn invalidate_virt_range(&mut self, virt_pages: std::ops::Range<u32>) {
        let mut pages: Vec<u32> = self
            .by_virt_page
            .keys()
            .copied()
            .filter(|page| virt_pages.contains(page))
            .collect();
        pages.sort_unstable();
        for page in pages {
            self.invalidate_virt_page(page);
        }
    }

    /// Removes one entry and its index references, so the indexes never
    /// hold more references than the live entries have pages.
    fn remove(&mut self, key: &K) -> bool {
        let Some((_, pages)) = self.entries.remove(key) else {
            return false;
        };
        for page in pages {
            unlist(&mut self.by_virt_page, page.virt_page, key);
            if let Some(phys_page) = page.phys_page {
                unlist(&mut self.by_phys_page, phys_page, key);
            }
        }
        true
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.by_phys_page.clear();
        self.by_virt_page.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub(crate) fn index_len(&self) -> usize {
        self.by_phys_page.values().map(Vec::len).sum::<usize>()
            + self.by_virt_page.values().map(Vec::len).sum::<usize>()
    }
}

fn unlist<K: Eq>(index: &mut HashMap<u32, Vec<K>>, page: u32, key: &K) {
    if let Some(keys) = index.get_mut(&page) {
        keys.retain(|listed| listed != key);
        if keys.is_empty() {
            index.remove(&page);
        }
    }
}

#[cfg(test)]
mod tests {
    use btvmm_core::RegionMemory;

    use super::*;
    use crate::classify::SensitiveKind;

    fn memory(at: u32, bytes: &[u8]) -> RegionMemory {
        let mut mem = RegionMemory::new();
        mem.add_identity(at, bytes.to_vec());
        mem
    }

    #[test]
    fn block_ends_at_first_poi() {
        // mov eax, 1; add eax, ecx; pushfd; ret
        let mem = memory(0x1000, &[0xb8, 1, 0, 0, 0, 0x01, 0xc8, 0x9c, 0xc3]);
        let block = scan_block(&mem, GuestVirt(0x1000), &ClassifyConfig::default());
        assert_eq!(block.instructions, 3);
        let BlockEnd::Poi(poi) = block.end else {
            panic!("expected a POI, got {:?}", block.end)
        };
        assert_eq!(poi.at, GuestVirt(0x1007));
        assert!(matches!(
            poi.kind,
            PoiKind::Sensitive {
                kind: SensitiveKind::FlagsRead,
                ..
            }
        ));
        assert_eq!(poi.next(), GuestVirt(0x1008));
        assert_eq!(
            block.pages,
            vec![CodePage {
                virt_page: 1,
                phys_page: Some(1)
            }]
        );
    }

    #[test]
    fn instruction_straddling_a_page_records_both_pages() {
        // nops up to 0x1ffe, then "mov eax, imm32" across the boundary, then
        // ret; decoding starts 1 KiB before the boundary.
        let mut bytes = vec![0x90; 0xffe];
        bytes.extend_from_slice(&[0xb8, 1, 2, 3, 4, 0xc3]);
        let mut mem = RegionMemory::new();
        mem.add(
            GuestVirt(0x1000),
            GuestPhys(0x7000),
            bytes[..0x1000].to_vec(),
        );
        mem.add(
            GuestVirt(0x2000),
            GuestPhys(0x3000),
            bytes[0x1000..].to_vec(),
        );
        let block = scan_block(&mem, GuestVirt(0x1c00), &ClassifyConfig::default());
        assert_eq!(block.end.at(), GuestVirt(0x2003));
        assert_eq!(
            block.pages,
            vec![
                CodePage {
                    virt_page: 1,
                    phys_page: Some(7)
                },
                CodePage {
                    virt_page: 2,
                    phys_page: Some(3)
                },
            ]
        );
    }

    #[test]
    fn code_running_into_unmapped_memory_is_unfetchable() {
        let mem = memory(0x1ff0, &[0x90; 0x10]);
        let block = scan_block(&mem, GuestVirt(0x1ff0), &ClassifyConfig::default());
        assert!(matches!(
            block.end,
            BlockEnd::Unfetchable(GuestVirt(0x2000))
        ));
        assert!(block.pages.contains(&CodePage {
            virt_page: 2,
            phys_page: None
        }));

        // An instruction cut by the unmapped page: the instruction itself is
        // unfetchable, not its second half.
        let mem = memory(0x1ffd, &[0x90, 0xb8, 0x01]);
        let block = scan_block(&mem, GuestVirt(0x1ffd), &ClassifyConfig::default());
        assert!(matches!(
            block.end,
            BlockEnd::Unfetchable(GuestVirt(0x1ffe))
        ));
    }

    #[test]
    fn unmapped_start_is_unfetchable() {
        let mem = RegionMemory::new();
        let block = scan_block(&mem, GuestVirt(0x5000), &ClassifyConfig::default());
        assert!(matches!(
            block.end,
            BlockEnd::Unfetchable(GuestVirt(0x5000))
        ));
        assert_eq!(block.instructions, 0);
        assert_eq!(
            fetch_fault(&mem, GuestVirt(0x5000), 15),
            MemFault::NotMapped(GuestVirt(0x5000))
        );
    }

    #[test]
    fn long_runs_are_cut() {
        let mem = memory(0x10000, &vec![0x90; 3 * btvmm_core::PAGE_SIZE as usize]);
        let block = scan_block(&mem, GuestVirt(0x10000), &ClassifyConfig::default());
        let BlockEnd::TooLong(at) = block.end else {
            panic!("expected TooLong, got {:?}", block.end)
        };
        assert_eq!(at, GuestVirt(0x10000 + MAX_BLOCK_INSTRUCTIONS));
        assert_eq!(block.instructions, MAX_BLOCK_INSTRUCTIONS);
    }

    /// A run whose last allowed instruction ends at a page whose successor
    /// is unmapped is cut as too long there, as a run cut mid-page is (the
    /// fuzz test's one-instruction decoder found the difference).
    #[test]
    fn a_long_run_that_ends_at_an_unmapped_page_is_too_long() {
        let start = 0x11000 - MAX_BLOCK_INSTRUCTIONS;
        let mem = memory(start, &vec![0x90; MAX_BLOCK_INSTRUCTIONS as usize]);
        let block = scan_block(&mem, GuestVirt(start), &ClassifyConfig::default());
        assert!(
            matches!(block.end, BlockEnd::TooLong(GuestVirt(0x11000))),
            "{:?}",
            block.end
        );
        assert_eq!(block.instructions, MAX_BLOCK_INSTRUCTIONS);
    }

    /// Pseudo-random code, mostly plain one- and multi-byte instructions so
    /// that blocks get long (xorshift; proptest supplies the seed).
    fn code_soup(mut seed: u64, len: usize) -> Vec<u8> {
        seed |= 1;
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let [choice, byte, ..] = seed.to_le_bytes();
                match choice % 9 {
                    0..=3 => 0x90, // nop
                    4 | 5 => 0x05, // add eax, imm32
                    6 | 7 => 0x8d, // lea
                    _ => byte,
                }
            })
            .collect()
    }

    /// The reference: decode linearly over the whole mapped buffer.
    fn reference_end(bytes: &[u8], base: u32, start: u32, mapped: usize) -> (u32, u32) {
        let offset = (start - base) as usize;
        let mut decoder = Decoder::with_ip(
            32,
            &bytes[offset..mapped],
            u64::from(start),
            DecoderOptions::NONE,
        );
        let mut count = 0;
        while decoder.can_decode() {
            let at = start + u32::try_from(decoder.position()).expect("small");
            if count == MAX_BLOCK_INSTRUCTIONS {
                return (at, count);
            }
            let instr = decoder.decode();
            count += 1;
            if decoder.last_error() == DecoderError::NoMoreBytes {
                return (at, count);
            }
            if classify(&instr, &ClassifyConfig::default()).is_poi() {
                return (at, count);
            }
        }
        (base + u32::try_from(mapped).expect("small"), count)
    }

    proptest::proptest! {
        /// Chunked decoding finds the same block end as a linear decode of
        /// the whole buffer, across chunk and page boundaries.
        #[test]
        fn chunked_decoding_matches_linear_decoding(
            seed in proptest::prelude::any::<u64>(),
            start_offset in 0usize..0x1ff0,
            second_page_mapped in proptest::prelude::any::<bool>(),
        ) {
            let soup = code_soup(seed, 0x2000);
            let base = 0x4000u32;
            let mapped = if second_page_mapped { 0x2000 } else { 0x1000 };
            let start_offset = start_offset % mapped;
            let mut mem = RegionMemory::new();
            mem.add_identity(base, soup[..mapped].to_vec());
            let start = base + u32::try_from(start_offset).expect("small");
            let block = scan_block(&mem, GuestVirt(start), &ClassifyConfig::default());
            let (end, count) = reference_end(&soup, base, start, mapped);
            proptest::prop_assert_eq!(block.end.at(), GuestVirt(end));
            proptest::prop_assert_eq!(block.instructions, count);
        }
    }

    #[test]
    fn cached_values_stay_small() {
        // The memory bound documented on `Planner` relies on these.
        assert!(
            std::mem::size_of::<Block>() <= 128,
            "{}",
            std::mem::size_of::<Block>()
        );
        assert_eq!(std::mem::size_of::<CodePage>(), 12);
        assert!(
            std::mem::size_of::<crate::Plan>() <= 96,
            "{}",
            std::mem::size_of::<crate::Plan>()
        );
    }

    #[test]
    fn cache_drops_entries_by_either_page_and_stays_bounded() {
        let mut cache: PageKeyedCache<u32, u32> = PageKeyedCache::new(2);
        let page = |virt_page, phys_page| CodePage {
            virt_page,
            phys_page: Some(phys_page),
        };
        cache.insert(1, Arc::new(10), &[page(1, 7)]);
        cache.insert(2, Arc::new(20), &[page(2, 8), page(3, 9)]);
        cache.invalidate_phys_page(9);
        assert!(cache.get(&2).is_none());
        assert_eq!(cache.get(&1).as_deref(), Some(&10));
        cache.invalidate_virt_page(1);
        assert!(cache.get(&1).is_none());
        assert_eq!(cache.stats.invalidated, 2);

        cache.insert(3, Arc::new(30), &[]);
        cache.insert(4, Arc::new(40), &[]);
        cache.insert(5, Arc::new(50), &[]);
        assert!(cache.len() <= 2);
        assert_eq!(cache.stats.overflows, 1);
        assert_eq!(cache.get(&5).as_deref(), Some(&50));
    }

    #[test]
    fn a_virtual_range_drops_every_entry_with_a_page_inside_it() {
        let mut cache: PageKeyedCache<u32, u32> = PageKeyedCache::new(16);
        let page = |virt_page| CodePage {
            virt_page,
            phys_page: Some(virt_page + 100),
        };
        cache.insert(1, Arc::new(1), &[page(0x3ff)]);
        cache.insert(2, Arc::new(2), &[page(0x3ff), page(0x400)]);
        cache.insert(3, Arc::new(3), &[page(0x7ff)]);
        cache.insert(4, Arc::new(4), &[page(0x800)]);
        cache.invalidate_virt_range(0x400..0x800);
        assert_eq!(cache.get(&1).as_deref(), Some(&1));
        assert!(cache.get(&2).is_none(), "one of its pages is in the range");
        assert!(cache.get(&3).is_none());
        assert_eq!(cache.get(&4).as_deref(), Some(&4));
    }

    #[test]
    fn reinserting_invalidated_entries_does_not_grow_the_index() {
        let mut cache: PageKeyedCache<u32, u32> = PageKeyedCache::new(16);
        let pages = [
            CodePage {
                virt_page: 1,
                phys_page: Some(7),
            },
            CodePage {
                virt_page: 2,
                phys_page: Some(8),
            },
        ];
        for round in 0..100 {
            cache.insert(1, Arc::new(round), &pages);
            cache.invalidate_phys_page(8);
        }
        assert_eq!(cache.index_len(), 0);
        cache.insert(1, Arc::new(0), &pages);
        cache.insert(1, Arc::new(1), &pages);
        assert_eq!(cache.index_len(), 4);
    }
}
