//! Finding and decoding the kernel's own symbol table (`kallsyms`) inside a
//! raw 32-bit little-endian kernel image: a decompressed ARM `Image`, or the
//! bytes of an x86 vmlinux ELF file. This gives the kernel's symbols
//! (address, `nm` type letter, name) when no real `System.map` is at hand
//! (Debian ships a stub one).
//!
//! # The tables
//!
//! `scripts/kallsyms.c` emits, into `.rodata`, each table aligned to the
//! word size (4 here):
//!
//! * `kallsyms_offsets`: one 32-bit offset per symbol
//!   (`CONFIG_KALLSYMS_BASE_RELATIVE=y`, the default);
//! * `kallsyms_relative_base`: one word, the lowest symbol address;
//! * `kallsyms_num_syms`: one word, the symbol count N;
//! * `kallsyms_names`: N entries, each a length (one byte, or from 6.1 on
//!   two bytes, 7 bits each, low first, when the first has its top bit set)
//!   and that many indexes into the token table; the expansion's first
//!   character is the type letter, the rest the name;
//! * `kallsyms_markers`: one word per 256 symbols, the offset in the names
//!   of entry 256·i;
//! * `kallsyms_token_table`: 256 NUL-terminated strings;
//! * `kallsyms_token_index`: 256 `u16` offsets into the token table.
//!
//! That is the order up to 6.3. 6.2 and 6.3 add `kallsyms_seqs_of_names`
//! (N 3-byte big-endian symbol indexes in name order, then padding)
//! between the markers and the token table, and so do later 6.1 stable
//! kernels (Debian's 6.1.0-57 has it); it must be a permutation of
//! 0..N. From 6.4 on the offsets and the relative base follow the token
//! index instead. All three arrangements are tried.
//!
//! # Finding them
//!
//! As the vmlinux-to-elf tool does, by the token table: every character a
//! symbol uses is also its own one-character token, at the index equal to
//! its code, so the table always holds `"0\0" "1\0" … "9\0"` at indexes
//! 0x30..=0x39. From each such run the rest of the table is parsed, the
//! token index after it must point exactly at the start of every token,
//! the markers are read backwards from the table's start, the names must
//! end at the markers with every 256th entry where its marker says, the
//! word before the names must give a count matching the markers, and the
//! offsets must be sorted. Anything else is refused with a reason; nothing
//! panics on garbage.
//!
//! Without `CONFIG_KALLSYMS_ALL` only text symbols (and a few markers such
//! as `_etext`) are listed: those in `_stext.._etext` and the init text.
//! ARM's head code (`_text`, `stext`) lies before `_stext` and is absent.
//!
//! # Addresses
//!
//! Address = relative base + offset taken as unsigned, as
//! `kallsyms_sym_address()` computes it without
//! `CONFIG_KALLSYMS_ABSOLUTE_PERCPU` (only x86-64 SMP kernels set that; its
//! negative "relative" offsets are not handled). An address past 4 GiB is
//! refused. Absolute-address tables (`CONFIG_KALLSYMS_BASE_RELATIVE=n`),
//! 64-bit and big-endian kernels are not recognised.

/// The word size of the kernels handled (32-bit).
const WORD: usize = 4;
/// More symbols than any kernel has; bounds the searches.
const MAX_SYMBOLS: usize = 1 << 21;
/// The longest encoded name entry: a two-byte length of at most 0x3fff.
const MAX_ENTRY_BYTES: usize = 2 + 0x3fff;
/// The longest token accepted (real ones are a few dozen bytes).
const MAX_TOKEN_BYTES: usize = 512;
/// The tokens for '0'..='9', each NUL-terminated, consecutive.
const DIGIT_TOKENS: &[u8] = b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00";

/// One kernel symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSymbol {
    /// Its (link-time) virtual address.
    pub guest_virt: u32,
    /// Its `nm` type letter: `t`/`T` text, `d`/`D` data, `r`/`R` read-only,
    /// `b`/`B` bss, ...
    pub kind: char,
    /// Its name.
    pub name: String,
}

/// The symbols read from a kernel's kallsyms tables.
#[derive(Clone, Debug, Default)]
pub struct Symbols {
    /// All of them, sorted by address (ties in the kernel's order).
    pub symbols: Vec<KernelSymbol>,
}

impl Symbols {
    /// The address of the first symbol called `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<u32> {
        self.symbols
            .iter()
            .find(|symbol| symbol.name == name)
            .map(|symbol| symbol.guest_virt)
    }

    /// The kernel text, `_stext` to `_etext` (end exclusive), when both are
    /// present and in order.
    #[must_use]
    pub fn text_range(&self) -> Option<(u32, u32)> {
        let start = self.get("_stext")?;
        let end = self.get("_etext")?;
        (start < end).then_some((start, end))
    }

    /// The function symbols (`t` and `T`) inside [`Self::text_range`]; every
    /// `t`/`T` symbol when the kernel has no text range. Init text and the
    /// ARM head code lie outside `_stext.._etext` and are left out.
    pub fn functions(&self) -> impl Iterator<Item = &KernelSymbol> {
        let range = self.text_range();
        self.symbols.iter().filter(move |symbol| {
            matches!(symbol.kind, 't' | 'T')
                && range.is_none_or(|(start, end)| (start..end).contains(&symbol.guest_virt))
        })
    }
}

/// Finds and decodes the kallsyms tables in `image` (a raw kernel image or
/// a vmlinux file's bytes). Addresses come out absolute (from the tables'
/// relative base), so no load address is needed. On failure, says why.
pub fn find(image: &[u8]) -> Result<Symbols, String> {
    let mut candidates = 0usize;
    // The failure that got furthest, as (stage, reason).
    let mut best: Option<(u8, String)> = None;
    let mut at = 0;
    while let Some(found) = find_bytes(&image[at..], DIGIT_TOKENS) {
        let digits = at + found;
        at = digits + 1;
        candidates += 1;
        match decode_at(image, digits) {
            Ok(symbols) => return Ok(symbols),
            Err((stage, why)) => {
                if best.as_ref().is_none_or(|(seen, _)| stage > *seen) {
                    best = Some((stage, format!("at {digits:#x}: {why}")));
                }
            }
        }
    }
    Err(match best {
        None => "no kallsyms token table (no \"0\\0\" .. \"9\\0\" token run)".into(),
        Some((_, why)) => {
            format!("no valid kallsyms tables ({candidates} token-table candidates; best: {why})")
        }
    })
}

/// The first position of `needle` in `haystack`.
fn find_bytes(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut at = 0;
    while let Some(offset) = haystack.get(at..)?.iter().position(|&byte| byte == first) {
        let start = at + offset;
        if haystack.get(start..start + needle.len()) == Some(needle) {
            return Some(start);
        }
        at = start + 1;
    }
    None
}

fn u16_at(image: &[u8], at: usize) -> Option<u16> {
    let bytes = image.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([bytes[0], bytes[1]]))
}

fn u32_at(image: &[u8], at: usize) -> Option<u32> {
    let bytes = image.get(at..at.checked_add(WORD)?)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Word alignment of the image's `.rodata`: positions `p` with
/// `p % WORD == phase` are aligned. (A vmlinux file keeps its sections'
/// alignment; a raw image starts aligned; any phase is accepted.)
#[derive(Clone, Copy)]
struct Align {
    phase: usize,
}

impl Align {
    fn up(self, at: usize) -> usize {
        at + (self.phase + WORD - at % WORD) % WORD
    }

    /// The last aligned position at or before `at`, if any.
    fn down(self, at: usize) -> Option<usize> {
        at.checked_sub((at + WORD - self.phase) % WORD)
    }
}

/// The token table and its index.
struct TokenTable {
    /// Start of `kallsyms_token_table`.
    start: usize,
    /// End of `kallsyms_token_index`.
    index_end: usize,
    /// The 256 tokens' byte ranges.
    tokens: Vec<std::ops::Range<usize>>,
    align: Align,
}

type Failure = (u8, String);

/// Decodes everything around a `"0\0".."9\0"` run at `digits`. Failures
/// carry the stage reached, to report the most convincing candidate.
fn decode_at(image: &[u8], digits: usize) -> Result<Symbols, Failure> {
    let table = token_table(image, digits).map_err(|why| (0, why))?;
    let align = table.align;
    let (names_start, count) = names_and_count(image, table.start, align)?;
    let addresses = offsets(image, names_start, count, &table).map_err(|why| (3, why))?;
    let mut symbols = Vec::with_capacity(count);
    let mut at = names_start;
    let mut expanded = Vec::new();
    for address in addresses {
        let (header, length) = entry_length(image, at).ok_or((4, "names end early".into()))?;
        let indexes = image
            .get(at + header..at + header + length)
            .ok_or((4, "names end early".into()))?;
        at += header + length;
        expanded.clear();
        for &index in indexes {
            expanded.extend_from_slice(&image[table.tokens[usize::from(index)].clone()]);
        }
        let (&kind, name) = expanded
            .split_first()
            .ok_or((4, "a symbol expands to nothing".into()))?;
        if !kind.is_ascii_graphic() || name.is_empty() {
            return Err((4, format!("symbol with type {kind:#04x}, name {name:?}")));
        }
        // Tokens are checked to be printable ASCII.
        let name = String::from_utf8_lossy(name).into_owned();
        symbols.push(KernelSymbol {
            guest_virt: address,
            kind: char::from(kind),
            name,
        });
    }
    symbols.sort_by_key(|symbol| symbol.guest_virt);
    Ok(Symbols { symbols })
}

/// Parses the token table whose token 0x30 ("0") is at `digits`, and the
/// token index after it, checking each against the other.
fn token_table(image: &[u8], digits: usize) -> Result<TokenTable, String> {
    // Tokens 0x30..=0xff forward from the digits.
    let mut end = digits;
    for _ in 0x30..=0xff {
        end = token_end(image, end).ok_or("token table: bad or truncated token")? + 1;
    }
    let table_end = end;
    // The index follows, aligned; padding is zeros. Its entry for "0"
    // gives the table's start, hence the alignment phase.
    for padding in 0..WORD {
        if padding > 0 && image.get(table_end + padding - 1) != Some(&0) {
            break;
        }
        let index_start = table_end + padding;
        let Some(zero_offset) = u16_at(image, index_start + 2 * 0x30) else {
            break;
        };
        let Some(start) = digits.checked_sub(usize::from(zero_offset)) else {
            continue;
        };
        let align = Align {
            phase: start % WORD,
        };
        if align.up(table_end) != index_start {
            continue;
        }
        if let Some(tokens) = check_index(image, start, index_start, table_end) {
            return Ok(TokenTable {
                start,
                index_end: index_start + 2 * 256,
                tokens,
                align,
            });
        }
    }
    Err("token index does not match the token table".into())
}

/// The position of the NUL ending a printable token starting at `at`.
fn token_end(image: &[u8], at: usize) -> Option<usize> {
    let rest = image.get(at..)?;
    let length = rest
        .iter()
        .take(MAX_TOKEN_BYTES + 1)
        .position(|&byte| byte == 0)?;
    rest[..length]
        .iter()
        .all(u8::is_ascii_graphic)
        .then_some(at + length)
}

/// Walks the 256 tokens from `start`, checking that the index at
/// `index_start` points at each and that they end at `table_end`.
fn check_index(
    image: &[u8],
    start: usize,
    index_start: usize,
    table_end: usize,
) -> Option<Vec<std::ops::Range<usize>>> {
    let mut tokens = Vec::with_capacity(256);
    let mut at = start;
    for i in 0..256 {
        let offset = usize::from(u16_at(image, index_start + 2 * i)?);
        if start + offset != at {
            return None;
        }
        let end = token_end(image, at)?;
        tokens.push(at..end);
        at = end + 1;
    }
    (at == table_end).then_some(tokens)
}

/// Finds the markers and names before the token table at `table_start`,
/// with or without a `kallsyms_seqs_of_names` between markers and tokens.
/// Returns the names' start and the symbol count.
fn names_and_count(
    image: &[u8],
    table_start: usize,
    align: Align,
) -> Result<(usize, usize), Failure> {
    // Markers right before the token table.
    let plain = markers_before(image, table_start).map_err(|why| (1, why));
    let plain = match plain {
        Ok((markers_start, markers)) => names_before(image, markers_start, &markers, align, None)
            .map_err(|why| (2, format!("without seqs_of_names: {why}"))),
        Err(failure) => Err(failure),
    };
    let Err(plain) = plain else {
        return plain;
    };
    // 3-byte entries of kallsyms_seqs_of_names, then padding: try each
    // symbol count whose seqs would end the markers at a 0-led, strictly
    // increasing run of exactly count/256 (rounded up) words.
    for count in 1..=MAX_SYMBOLS {
        let seqs_bytes = 3 * count;
        let Some(start) = table_start.checked_sub(seqs_bytes.next_multiple_of(WORD)) else {
            break;
        };
        let groups = count.div_ceil(256);
        if start < groups * WORD
            || image[start + seqs_bytes..table_start]
                .iter()
                .any(|&b| b != 0)
        {
            continue;
        }
        if let Some(markers) = markers_ending_at(image, start, groups)
            && let Ok(found) =
                names_before(image, start - groups * WORD, &markers, align, Some(count))
            && is_permutation(&image[start..start + seqs_bytes], count)
        {
            return Ok(found);
        }
    }
    Err((
        plain.0,
        format!("{}; nor with a kallsyms_seqs_of_names", plain.1),
    ))
}

/// Whether `seqs` holds `count` 3-byte big-endian values that are a
/// permutation of `0..count`.
fn is_permutation(seqs: &[u8], count: usize) -> bool {
    let mut seen = vec![false; count];
    seqs.chunks_exact(3).all(|seq| {
        let value = usize::from(seq[0]) << 16 | usize::from(seq[1]) << 8 | usize::from(seq[2]);
        value < count && !std::mem::replace(&mut seen[value], true)
    })
}

/// Exactly `groups` markers ending at `end`: strictly increasing words
/// starting with 0.
fn markers_ending_at(image: &[u8], end: usize, groups: usize) -> Option<Vec<u32>> {
    let mut markers = Vec::with_capacity(groups);
    for i in 1..=groups {
        let marker = u32_at(image, end.checked_sub(i * WORD)?)?;
        let last = i == groups;
        if markers.last().is_some_and(|&next| marker >= next) || (marker == 0) != last {
            return None;
        }
        markers.push(marker);
    }
    markers.reverse();
    Some(markers)
}

/// Reads `kallsyms_markers` backwards from `end` (the token table's
/// start): strictly decreasing words down to the first marker, 0.
fn markers_before(image: &[u8], end: usize) -> Result<(usize, Vec<u32>), String> {
    let mut markers = Vec::new();
    let mut at = end;
    loop {
        if markers.len() > MAX_SYMBOLS / 256 {
            return Err("markers: too many".into());
        }
        at = at
            .checked_sub(WORD)
            .ok_or("markers: the image starts inside them")?;
        let marker = u32_at(image, at).ok_or("markers: truncated")?;
        if markers.last().is_some_and(|&next| marker >= next) {
            return Err(format!("markers: {marker:#x} at {at:#x} does not decrease"));
        }
        markers.push(marker);
        if marker == 0 {
            break;
        }
    }
    markers.reverse();
    Ok((at, markers))
}

/// An entry's header size and length at `at`.
fn entry_length(image: &[u8], at: usize) -> Option<(usize, usize)> {
    let first = *image.get(at)?;
    if first & 0x80 == 0 {
        return Some((1, usize::from(first)));
    }
    let second = *image.get(at + 1)?;
    Some((2, usize::from(first & 0x7f) | usize::from(second) << 7))
}

/// Walks `count` name entries from `start`, checking each 256th against
/// its marker; returns where they end.
fn walk_names(image: &[u8], start: usize, count: usize, markers: &[u32]) -> Option<usize> {
    let mut at = start;
    for i in 0..count {
        if i % 256 == 0 && usize::try_from(markers[i / 256]).ok()? != at - start {
            return None;
        }
        let (header, length) = entry_length(image, at)?;
        if length == 0 {
            return None;
        }
        at += header + length;
    }
    Some(at)
}

/// Finds `kallsyms_names` ending at the markers (`markers_start`) and the
/// `kallsyms_num_syms` word just before it. Returns the names' start and
/// the symbol count.
fn names_before(
    image: &[u8],
    markers_start: usize,
    markers: &[u32],
    align: Align,
    expected: Option<usize>,
) -> Result<(usize, usize), String> {
    let last = usize::try_from(*markers.last().ok_or("markers: none")?)
        .map_err(|_| "markers: too large")?;
    // The last group holds at least one entry of at least two bytes.
    let latest = markers_start
        .checked_sub(last + 2)
        .ok_or("names: the image starts inside them")?;
    let earliest = markers_start.saturating_sub(last + 256 * MAX_ENTRY_BYTES + WORD);
    let mut start = align
        .down(latest)
        .ok_or("names: the image starts inside them")?;
    while start >= earliest.max(WORD) {
        if let Some(count) = u32_at(image, start - WORD).and_then(|n| usize::try_from(n).ok())
            && count > 0
            && expected.is_none_or(|expected| count == expected)
            && count.div_ceil(256) == markers.len()
            && let Some(end) = walk_names(image, start, count, markers)
            && align.up(end) == markers_start
            && image[end..markers_start].iter().all(|&byte| byte == 0)
        {
            return Ok((start, count));
        }
        start -= WORD;
    }
    Err(format!(
        "names: no symbol count and name entries end at the {} markers",
        markers.len()
    ))
}

/// Reads the offsets and relative base, before `kallsyms_num_syms` (up to
/// 6.3) or after the token index (6.4 on), and turns them into addresses.
fn offsets(
    image: &[u8],
    names_start: usize,
    count: usize,
    table: &TokenTable,
) -> Result<Vec<u32>, String> {
    let before = names_start
        .checked_sub(2 * WORD + count * WORD)
        .map(|start| (start, names_start - 2 * WORD));
    let after_start = table.align.up(table.index_end);
    let after = Some((after_start, after_start + count * WORD));
    let mut why = String::new();
    for (start, base_at) in [before, after].into_iter().flatten() {
        match addresses(image, start, base_at, count) {
            Ok(addresses) => return Ok(addresses),
            Err(reason) => {
                if !why.is_empty() {
                    why.push_str("; ");
                }
                why.push_str(&reason);
            }
        }
    }
    Err(format!("offsets: {why}"))
}

fn addresses(image: &[u8], start: usize, base_at: usize, count: usize) -> Result<Vec<u32>, String> {
    let base = u32_at(image, base_at).ok_or("the relative base is past the image")?;
    let mut addresses = Vec::with_capacity(count);
    let mut previous = 0;
    for i in 0..count {
        let offset = u32_at(image, start + i * WORD).ok_or("truncated")?;
        if offset < previous {
            return Err(format!("offsets at {start:#x} are not sorted (entry {i})"));
        }
        previous = offset;
        addresses.push(
            base.checked_add(offset)
                .ok_or(format!("base {base:#x} + offset {offset:#x} passes 4 GiB"))?,
        );
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    /// Multi-character tokens of the synthetic table, at the indexes no
    /// symbol character uses.
    const WORDS: [&str; 6] = ["sys_", "get", "uid", "_s", "text", "_e"];

    fn synthetic_tokens() -> Vec<Vec<u8>> {
        let mut extra = 0;
        (0..=255u8)
            .map(|index| {
                if index.is_ascii_graphic() {
                    vec![index]
                } else {
                    extra += 1;
                    match WORDS.get(extra - 1) {
                        Some(word) => word.as_bytes().to_vec(),
                        None if index % 3 == 0 => Vec::new(), // unused slot
                        None => format!("q{index}").into_bytes(),
                    }
                }
            })
            .collect()
    }

    /// Greedy encoding of a type letter and name with `tokens`.
    fn encode(tokens: &[Vec<u8>], text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < text.len() {
            let (index, token) = tokens
                .iter()
                .enumerate()
                .filter(|(_, token)| !token.is_empty() && text[at..].starts_with(token))
                .max_by_key(|(_, token)| token.len())
                .expect("every character is a token");
            out.push(u8::try_from(index).expect("256 tokens"));
            at += token.len();
        }
        out
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Layout {
        /// Up to 6.3: offsets, base, count, names, markers, tokens, index.
        Classic,
        /// 6.2, 6.3 (and Debian's 6.1): Classic with the names' order
        /// (`kallsyms_seqs_of_names`) between markers and tokens.
        Seqs,
        /// 6.4 on: count, names, markers, tokens, index, offsets, base.
        Late,
    }

    /// A synthetic image: junk, the tables, junk. `symbols` must be sorted.
    fn blob(symbols: &[(u32, char, String)], base: u32, layout: Layout, phase: usize) -> Vec<u8> {
        let tokens = synthetic_tokens();
        let mut out = vec![0xaa; 8 + phase];
        let pad = |out: &mut Vec<u8>| {
            while out.len() % WORD != phase {
                out.push(0);
            }
        };
        let count = u32::try_from(symbols.len()).expect("small");
        let offsets_and_base = |out: &mut Vec<u8>| {
            for (address, _, _) in symbols {
                out.extend_from_slice(&(address - base).to_le_bytes());
            }
            out.extend_from_slice(&base.to_le_bytes());
        };
        if layout != Layout::Late {
            offsets_and_base(&mut out);
        }
        out.extend_from_slice(&count.to_le_bytes());
        let names_start = out.len();
        let mut markers = Vec::new();
        for (i, (_, kind, name)) in symbols.iter().enumerate() {
            if i % 256 == 0 {
                markers.push(u32::try_from(out.len() - names_start).expect("small"));
            }
            let mut text = vec![u8::try_from(*kind).expect("ascii")];
            text.extend_from_slice(name.as_bytes());
            let encoded = encode(&tokens, &text);
            let length = encoded.len();
            if length > 0x7f {
                out.push(u8::try_from(length & 0x7f).expect("7 bits") | 0x80);
                out.push(u8::try_from(length >> 7).expect("small"));
            } else {
                out.push(u8::try_from(length).expect("7 bits"));
            }
            out.extend_from_slice(&encoded);
        }
        pad(&mut out);
        for marker in markers {
            out.extend_from_slice(&marker.to_le_bytes());
        }
        if layout == Layout::Seqs {
            let mut order: Vec<usize> = (0..symbols.len()).collect();
            order.sort_by_key(|&i| &symbols[i].2);
            for i in order {
                out.extend_from_slice(&u32::try_from(i).expect("small").to_be_bytes()[1..]);
            }
            pad(&mut out);
        }
        let table_start = out.len();
        let mut index = Vec::new();
        for token in &tokens {
            index.push(u16::try_from(out.len() - table_start).expect("small"));
            out.extend_from_slice(token);
            out.push(0);
        }
        pad(&mut out);
        for offset in index {
            out.extend_from_slice(&offset.to_le_bytes());
        }
        if layout == Layout::Late {
            pad(&mut out);
            offsets_and_base(&mut out);
        }
        out.extend_from_slice(&[0x55; 16]);
        out
    }

    fn small_kernel() -> Vec<(u32, char, String)> {
        [
            (0xc000_8000, 'T', "_text"),
            (0xc000_8000, 'T', "stext"),
            (0xc010_0000, 'T', "_stext"),
            (0xc010_0040, 't', "helper_9"),
            (0xc010_0100, 'T', "sys_getuid"),
            (0xc020_0000, 'T', "_etext"),
            (0xc030_0000, 'D', "init_task"),
        ]
        .into_iter()
        .map(|(address, kind, name)| (address, kind, name.to_owned()))
        .collect()
    }

    fn many_symbols() -> Vec<(u32, char, String)> {
        let mut symbols = vec![(0xc010_0000, 'T', "_stext".to_owned())];
        for i in 0..700u32 {
            symbols.push((
                0xc010_0000 + 16 * i,
                't',
                format!("f{i}_{}", "x".repeat(i as usize % 7)),
            ));
        }
        // A name longer than 127 tokens: a two-byte length.
        symbols.push((0xc020_0000, 'T', format!("long_{}", "Z".repeat(300))));
        symbols.push((0xc030_0000, 'T', "_etext".to_owned()));
        symbols.push((0xc040_0000, 'b', "some_bss".to_owned()));
        symbols
    }

    fn check(decoded: &Symbols, expected: &[(u32, char, String)]) {
        let got: Vec<_> = decoded
            .symbols
            .iter()
            .map(|symbol| (symbol.guest_virt, symbol.kind, symbol.name.clone()))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn decodes_a_small_synthetic_table_in_both_layouts_and_alignments() {
        let symbols = small_kernel();
        for layout in [Layout::Classic, Layout::Seqs, Layout::Late] {
            for phase in 0..WORD {
                let image = blob(&symbols, 0xc000_8000, layout, phase);
                let decoded = find(&image).expect("decodes");
                check(&decoded, &symbols);
                assert_eq!(decoded.get("sys_getuid"), Some(0xc010_0100));
                assert_eq!(decoded.get("nope"), None);
                assert_eq!(decoded.text_range(), Some((0xc010_0000, 0xc020_0000)));
                let functions: Vec<_> = decoded.functions().map(|f| f.name.as_str()).collect();
                assert_eq!(functions, ["_stext", "helper_9", "sys_getuid"]);
            }
        }
    }

    #[test]
    fn decodes_many_symbols_with_markers_and_long_names() {
        let symbols = many_symbols();
        for layout in [Layout::Classic, Layout::Seqs, Layout::Late] {
            let image = blob(&symbols, 0xc010_0000, layout, 1);
            let decoded = find(&image).expect("decodes");
            check(&decoded, &symbols);
            assert_eq!(decoded.functions().count(), 702);
        }
    }

    #[test]
    fn without_a_text_range_all_text_symbols_are_functions() {
        let symbols: Vec<_> = small_kernel()
            .into_iter()
            .filter(|(_, _, name)| name != "_etext")
            .collect();
        let decoded = find(&blob(&symbols, 0xc000_8000, Layout::Classic, 0)).expect("decodes");
        assert_eq!(decoded.text_range(), None);
        assert_eq!(decoded.functions().count(), 5);
    }

    #[test]
    fn garbage_gives_a_reason() {
        assert!(find(&[]).is_err());
        let mut state = 0x1234_5678u32;
        let mut noise: Vec<u8> = (0..100_000)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (state >> 16).to_le_bytes()[0]
            })
            .collect();
        let why = find(&noise).expect_err("noise");
        assert!(why.contains("no kallsyms token table"), "{why}");
        // A digit run alone is not a table.
        noise[5000..5000 + DIGIT_TOKENS.len()].copy_from_slice(DIGIT_TOKENS);
        let why = find(&noise).expect_err("noise with digits");
        assert!(why.contains("1 token-table candidates"), "{why}");
    }

    #[test]
    fn truncated_or_corrupted_tables_are_refused() {
        let symbols = many_symbols();
        let image = blob(&symbols, 0xc010_0000, Layout::Classic, 0);
        // Cut anywhere inside the tables: the offsets start after 8 bytes
        // of junk, and the index ends 16 bytes before the end.
        for cut in (9..image.len() - 16).step_by(7) {
            assert!(find(&image[..cut]).is_err(), "end cut at {cut}");
            assert!(find(&image[cut..]).is_err(), "start cut at {cut}");
        }
        // Unsorted offsets.
        let mut bad = image.clone();
        bad[8..12].copy_from_slice(&0xffffu32.to_le_bytes());
        let why = find(&bad).expect_err("unsorted");
        assert!(why.contains("offsets"), "{why}");
        // A wrong symbol count.
        let count_at = 8 + 4 * symbols.len() + 4;
        let mut bad = image.clone();
        bad[count_at..count_at + 4]
            .copy_from_slice(&(u32::try_from(symbols.len() - 1).expect("small")).to_le_bytes());
        let why = find(&bad).expect_err("count");
        assert!(why.contains("names"), "{why}");
        // A token index entry off by one.
        let mut bad = image.clone();
        let index_at = image.len() - 16 - 512 + 2 * 0x41;
        bad[index_at] = bad[index_at].wrapping_add(1);
        let why = find(&bad).expect_err("index");
        assert!(why.contains("token index"), "{why}");
    }

    #[test]
    fn seqs_of_names_must_be_a_permutation() {
        let symbols = small_kernel();
        let mut image = blob(&symbols, 0xc000_8000, Layout::Seqs, 0);
        assert!(find(&image).is_ok());
        // 7 symbols: 21 bytes of seqs and 3 of padding before the tokens.
        let table = find_bytes(&image, b"sys_\0get\0").expect("token table");
        let seqs = table - 24;
        image.copy_within(seqs + 3..seqs + 6, seqs);
        let why = find(&image).expect_err("duplicate seq");
        assert!(why.contains("seqs_of_names"), "{why}");
    }

    proptest::proptest! {
        #[test]
        fn mutations_never_panic(at in 0usize..20_000, value: u8, cut in 0usize..20_000) {
            let mut image = blob(&many_symbols(), 0xc010_0000, Layout::Classic, 2);
            let at = at % image.len();
            image[at] = value;
            let cut = cut % image.len();
            let _ = find(&image);
            let _ = find(&image[..cut]);
            let _ = find(&image[cut..]);
        }
    }

    fn cache(path: &str) -> Option<PathBuf> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../.cache")
            .join(path);
        if path.exists() {
            Some(path)
        } else {
            eprintln!("skipped: {} is absent", path.display());
            None
        }
    }

    /// The checks common to both real kernels; returns the symbols.
    fn check_real(image: &[u8], names: &[&str]) -> Symbols {
        let started = std::time::Instant::now();
        let symbols = find(image).expect("kallsyms found");
        eprintln!(
            "{} symbols in {:.2?}",
            symbols.symbols.len(),
            started.elapsed()
        );
        assert!(symbols.symbols.len() > 20_000);
        for symbol in symbols.symbols.iter().take(3) {
            eprintln!(
                "first: {:#010x} {} {}",
                symbol.guest_virt, symbol.kind, symbol.name
            );
        }
        if let Some(symbol) = symbols.symbols.last() {
            eprintln!(
                "last: {:#010x} {} {}",
                symbol.guest_virt, symbol.kind, symbol.name
            );
        }
        let (stext, etext) = symbols.text_range().expect("_stext < _etext");
        eprintln!("_stext {stext:#010x}  _etext {etext:#010x}");
        for name in names {
            let symbol = symbols
                .symbols
                .iter()
                .find(|symbol| symbol.name == *name)
                .unwrap_or_else(|| panic!("{name} missing"));
            eprintln!(
                "{:#010x} {} {}",
                symbol.guest_virt, symbol.kind, symbol.name
            );
        }
        let text: Vec<_> = symbols
            .symbols
            .iter()
            .filter(|symbol| matches!(symbol.kind, 't' | 'T'))
            .collect();
        let outside: Vec<_> = text
            .iter()
            .filter(|symbol| !(stext..etext).contains(&symbol.guest_virt))
            .collect();
        eprintln!(
            "{} t/T symbols, {} inside _stext.._etext, {} outside (e.g. {:?})",
            text.len(),
            symbols.functions().count(),
            outside.len(),
            outside
                .iter()
                .take(3)
                .map(|symbol| format!("{:#010x} {}", symbol.guest_virt, symbol.name))
                .collect::<Vec<_>>()
        );
        assert!(
            outside.len() * 5 < text.len(),
            "most text symbols are in the text"
        );
        assert!(
            symbols
                .symbols
                .windows(2)
                .all(|pair| pair[0].guest_virt <= pair[1].guest_virt)
        );
        symbols
    }

    #[test]
    #[ignore = "needs the Debian armmp kernel in .cache"]
    fn real_arm_kernel() {
        let Some(path) = cache("debian-kernel-armhf/root/boot/vmlinuz-6.1.0-57-armmp") else {
            return;
        };
        let zimage = std::fs::read(path).expect("read");
        // The decompressor's messages hold the xz magic too: take the
        // first that inflates.
        let mut at = 0x30;
        let image = loop {
            let payload = at
                + find_bytes(&zimage[at..], &[0xfd, b'7', b'z', b'X', b'Z', 0])
                    .expect("xz payload");
            at = payload + 1;
            if let Ok(image) = crate::image::decompress(
                &zimage[payload..],
                crate::image::Compression::Xz,
                crate::image::MAX_VMLINUX_BYTES,
            ) {
                eprintln!("xz payload at {payload:#x}");
                break image;
            }
        };
        eprintln!("Image: {} bytes", image.len());
        let symbols = check_real(
            &image,
            &[
                "_stext",
                "__turn_mmu_on",
                "vector_swi",
                "__hyp_stub_install",
                "sys_getuid",
                "_etext",
                "start_kernel",
            ],
        );
        // kallsyms leaves out the head code (_text, stext) outside
        // _stext.._etext. The Image is not at 0xc0008000: multi-platform
        // kernels with CONFIG_ARCH_MESON use TEXT_OFFSET 0x208000, so
        // offset 0 is 0xc0208000, where _stext holds __turn_mmu_on's
        // first instruction (mov r0, r0).
        let (stext, etext) = symbols.text_range().expect("text");
        assert_eq!(symbols.get("__turn_mmu_on"), Some(stext));
        let at = usize::try_from(stext - 0xc020_8000).expect("fits");
        assert_eq!(u32_at(&image, at), Some(0xe1a0_0000));
        let getuid = symbols.get("sys_getuid").expect("sys_getuid");
        assert!(symbols.functions().any(|f| f.guest_virt == getuid));
        let start_kernel = symbols.get("start_kernel").expect("start_kernel");
        assert!(start_kernel >= etext, "init text follows the text");
    }

    #[test]
    #[ignore = "needs the Debian 686 kernel in .cache"]
    fn real_x86_kernel() {
        let Some(path) = cache("debian-kernel/root/boot/vmlinuz-6.1.0-57-686") else {
            return;
        };
        let data = std::fs::read(path).expect("read");
        let header = crate::image::parse_bzimage(&data).expect("bzImage");
        let payload = &data[header.payload_offset..header.payload_offset + header.payload_length];
        let vmlinux =
            crate::image::decompress(payload, header.compression, crate::image::MAX_VMLINUX_BYTES)
                .expect("inflates");
        eprintln!("vmlinux: {} bytes", vmlinux.len());
        let symbols = check_real(
            &vmlinux,
            &[
                "_text",
                "_stext",
                "_etext",
                "start_kernel",
                "__ia32_sys_getuid",
            ],
        );
        let getuid = symbols.get("__ia32_sys_getuid").expect("getuid");
        assert!(symbols.functions().any(|f| f.guest_virt == getuid));
    }
}
