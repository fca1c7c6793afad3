//! Decoded instructions remembered by their bytes: decoding is a pure
//! function of (bytes, address, code size), so an instruction decoded once
//! is reused whenever the same bytes are fetched at the same address again,
//! with no invalidation to get wrong. Code the guest rewrites simply stops
//! matching. The monitor interprets the same kernel paths over and over
//! (system-call entry and exit, interrupt paths), and building iced's
//! decoder for each instruction cost more than the rest of a fetch.

use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction};

/// Slots: a direct-mapped table indexed by a hash of the address.
const SLOT_BITS: u32 = 12;
const SLOTS: usize = 1 << SLOT_BITS;

/// The slot of `ip` in a table of `1 << bits` slots: Fibonacci hashing,
/// which spreads the addresses of one kernel's code (an XOR of address
/// bits made instructions of one system call path collide).
#[must_use]
pub(crate) fn slot_hash(ip: u32, bits: u32) -> usize {
    (ip.wrapping_mul(0x9e37_79b9) >> (32 - bits)) as usize
}
/// Longest x86 instruction.
const MAX_LEN: usize = 15;

#[derive(Clone, Copy)]
struct Slot<N> {
    ip: u32,
    bitness: u32,
    bytes: [u8; MAX_LEN],
    instr: Instruction,
    /// What the cache's user judged of the instruction (see
    /// [`DecodeCache::note`]); goes with the slot's decoding.
    note: Option<N>,
}

/// What decoding some fetched bytes gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole valid instruction.
    Instruction(Instruction),
    /// The bytes end before the instruction does.
    NeedsMoreBytes,
    /// Not a valid instruction.
    Invalid,
}

/// Remembered decodings (a few hundred KiB; nothing allocated per
/// lookup). Each can carry a note of type `N`: a judgement its user made
/// of the instruction (the planner's class, say), a pure function of the
/// instruction like the decoding, so that it is made once too.
pub struct DecodeCache<N: Copy = ()> {
    slots: Box<[Option<Slot<N>>]>,
    /// The slot of the last decoding, while it holds that decoding.
    last: Option<usize>,
    hits: u64,
    misses: u64,
}

impl<N: Copy> Default for DecodeCache<N> {
    fn default() -> Self {
        Self {
            slots: vec![None; SLOTS].into_boxed_slice(),
            last: None,
            hits: 0,
            misses: 0,
        }
    }
}

impl<N: Copy> std::fmt::Debug for DecodeCache<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeCache")
            .field("hits", &self.hits)
            .field("misses", &self.misses)
            .finish_non_exhaustive()
    }
}

impl<N: Copy> DecodeCache<N> {
    /// Decodes the instruction at the start of `bytes`, fetched at `ip`, in
    /// 16- or 32-bit code (`bitness`), exactly as iced's decoder would.
    pub fn decode(&mut self, bitness: u32, ip: u32, bytes: &[u8]) -> Decoded {
        let index = slot_hash(ip, SLOT_BITS);
        if let Some(slot) = &self.slots[index] {
            let len = slot.instr.len();
            if slot.ip == ip
                && slot.bitness == bitness
                && bytes.len() >= len
                && bytes[..len] == slot.bytes[..len]
            {
                self.hits += 1;
                self.last = Some(index);
                return Decoded::Instruction(slot.instr);
            }
        }
        self.misses += 1;
        self.last = None;
        let decoded = decode_uncached(bitness, ip, bytes);
        if let Decoded::Instruction(instr) = decoded {
            let mut saved = [0u8; MAX_LEN];
            saved[..instr.len()].copy_from_slice(&bytes[..instr.len()]);
            self.slots[index] = Some(Slot {
                ip,
                bitness,
                bytes: saved,
                instr,
                note: None,
            });
            self.last = Some(index);
        }
        decoded
    }

    /// The note made of the instruction the last [`DecodeCache::decode`]
    /// gave, if one was.
    #[must_use]
    pub fn note(&self) -> Option<N> {
        self.slots[self.last?].as_ref()?.note
    }

    /// Notes `note` of the instruction the last [`DecodeCache::decode`]
    /// gave (nothing if it gave none).
    pub fn set_note(&mut self, note: N) {
        if let Some(slot) = self.last.and_then(|index| self.slots[index].as_mut()) {
            slot.note = Some(note);
        }
    }

    /// Lookups answered from the table and decoded afresh.
    #[must_use]
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

/// What iced's decoder makes of `bytes` at `ip`.
#[must_use]
pub fn decode_uncached(bitness: u32, ip: u32, bytes: &[u8]) -> Decoded {
    let mut decoder = Decoder::with_ip(bitness, bytes, u64::from(ip), DecoderOptions::NONE);
    let instr = decoder.decode();
    if decoder.last_error() == DecoderError::NoMoreBytes {
        Decoded::NeedsMoreBytes
    } else if instr.is_invalid() {
        Decoded::Invalid
    } else {
        Decoded::Instruction(instr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_decoding_is_the_decoders_and_changed_bytes_are_decoded_again() {
        let mut cache = DecodeCache::<()>::default();
        // jmp rel32 (the target depends on the address), then the same
        // address rewritten to push ebp; mov ebp, esp.
        let jump = [0xe9, 0x10, 0, 0, 0, 0x90, 0x90];
        let push = [0x55, 0x89, 0xe5, 0x90];
        for _ in 0..2 {
            assert_eq!(
                cache.decode(32, 0xc100_0000, &jump),
                decode_uncached(32, 0xc100_0000, &jump)
            );
        }
        assert_eq!(cache.stats(), (1, 1));
        assert_eq!(
            cache.decode(32, 0xc100_0000, &push),
            decode_uncached(32, 0xc100_0000, &push)
        );
        assert_eq!(
            cache.decode(32, 0xc200_0000, &jump),
            decode_uncached(32, 0xc200_0000, &jump)
        );
        assert_eq!(
            cache.decode(16, 0xc200_0000, &jump),
            decode_uncached(16, 0xc200_0000, &jump)
        );
        assert_eq!(cache.stats(), (1, 4));
        // Bytes that stop early give the decoder's answer, not the slot's.
        assert_eq!(
            cache.decode(16, 0xc200_0000, &jump[..2]),
            Decoded::NeedsMoreBytes
        );
        assert_eq!(
            cache.decode(32, 0x1000, &[0x0f, 0xff]),
            decode_uncached(32, 0x1000, &[0x0f, 0xff])
        );
    }

    #[test]
    fn a_note_stays_with_its_decoding_only() {
        let mut cache = DecodeCache::<u8>::default();
        let push = [0x55, 0x90];
        let nop = [0x90, 0x90];
        cache.decode(32, 0x2000, &push);
        assert_eq!(cache.note(), None);
        cache.set_note(7);
        cache.decode(32, 0x2000, &push);
        assert_eq!(cache.note(), Some(7));
        // Rewritten bytes at the same address: a new decoding, no note.
        cache.decode(32, 0x2000, &nop);
        assert_eq!(cache.note(), None);
        // An invalid instruction has no slot: notes go nowhere.
        cache.decode(32, 0x3000, &[0x0f, 0xff]);
        cache.set_note(9);
        assert_eq!(cache.note(), None);
        cache.decode(32, 0x2000, &nop);
        assert_eq!(cache.note(), None);
    }
}
