//! x86 segment and gate descriptors (Intel SDM vol. 3, 3.4.5 and 6.11), as
//! they sit in the guest's GDT, LDT and IDT.

/// A segment descriptor, decoded from its 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Descriptor {
    /// Segment base.
    pub base: u32,
    /// Limit in bytes (granularity applied: a 4 KiB-granular limit of n is
    /// `n << 12 | 0xfff`).
    pub limit: u32,
    /// The 4-bit type field.
    pub kind: u8,
    /// S: code/data (true) or system (false).
    pub code_or_data: bool,
    /// Descriptor privilege level.
    pub dpl: u8,
    /// P.
    pub present: bool,
    /// AVL.
    pub available: bool,
    /// D/B: 32-bit default operand size (code) or 32-bit stack (SS).
    pub big: bool,
    /// G: limit in 4 KiB units.
    pub granular: bool,
}

/// Type bit: accessed (code/data).
pub const TYPE_ACCESSED: u8 = 1;
/// Type bit: writable (data) / readable (code).
pub const TYPE_WRITABLE_READABLE: u8 = 2;
/// Type bit: expand-down (data) / conforming (code).
pub const TYPE_EXPAND_DOWN_CONFORMING: u8 = 4;
/// Type bit: code.
pub const TYPE_CODE: u8 = 8;

/// System descriptor types (S = 0) in 32-bit protected mode.
pub mod system {
    /// 16-bit TSS, available.
    pub const TSS16_AVAILABLE: u8 = 1;
    /// LDT.
    pub const LDT: u8 = 2;
    /// 16-bit TSS, busy.
    pub const TSS16_BUSY: u8 = 3;
    /// 16-bit call gate.
    pub const CALL_GATE16: u8 = 4;
    /// Task gate.
    pub const TASK_GATE: u8 = 5;
    /// 16-bit interrupt gate.
    pub const INTERRUPT_GATE16: u8 = 6;
    /// 16-bit trap gate.
    pub const TRAP_GATE16: u8 = 7;
    /// 32-bit TSS, available.
    pub const TSS32_AVAILABLE: u8 = 9;
    /// 32-bit TSS, busy.
    pub const TSS32_BUSY: u8 = 11;
    /// 32-bit call gate.
    pub const CALL_GATE32: u8 = 12;
    /// 32-bit interrupt gate.
    pub const INTERRUPT_GATE32: u8 = 14;
    /// 32-bit trap gate.
    pub const TRAP_GATE32: u8 = 15;
}

impl Descriptor {
    /// Decodes a descriptor from its in-memory form.
    #[must_use]
    pub fn from_raw(raw: u64) -> Self {
        let low = (raw & 0xffff_ffff) as u32;
        let high = (raw >> 32) as u32;
        let base = (low >> 16) | ((high & 0xff) << 16) | (high & 0xff00_0000);
        let raw_limit = (low & 0xffff) | (high & 0x000f_0000);
        let granular = high & (1 << 23) != 0;
        let limit = if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        };
        Self {
            base,
            limit,
            kind: ((high >> 8) & 0xf) as u8,
            code_or_data: high & (1 << 12) != 0,
            dpl: ((high >> 13) & 3) as u8,
            present: high & (1 << 15) != 0,
            available: high & (1 << 20) != 0,
            big: high & (1 << 22) != 0,
            granular,
        }
    }

    /// Encodes the descriptor back to its in-memory form. A granular limit
    /// keeps its upper 20 bits.
    #[must_use]
    pub fn to_raw(&self) -> u64 {
        let raw_limit = if self.granular {
            self.limit >> 12
        } else {
            self.limit
        } & 0xf_ffff;
        let low = (raw_limit & 0xffff) | (self.base << 16);
        let high = ((self.base >> 16) & 0xff)
            | (u32::from(self.kind & 0xf) << 8)
            | (u32::from(self.code_or_data) << 12)
            | (u32::from(self.dpl & 3) << 13)
            | (u32::from(self.present) << 15)
            | (raw_limit & 0xf_0000)
            | (u32::from(self.available) << 20)
            | (u32::from(self.big) << 22)
            | (u32::from(self.granular) << 23)
            | (self.base & 0xff00_0000);
        u64::from(low) | (u64::from(high) << 32)
    }

    /// A code segment.
    #[must_use]
    pub fn is_code(&self) -> bool {
        self.code_or_data && self.kind & TYPE_CODE != 0
    }

    /// A data segment.
    #[must_use]
    pub fn is_data(&self) -> bool {
        self.code_or_data && self.kind & TYPE_CODE == 0
    }

    /// A readable code or any data segment.
    #[must_use]
    pub fn is_readable(&self) -> bool {
        self.is_data() || (self.is_code() && self.kind & TYPE_WRITABLE_READABLE != 0)
    }

    /// A writable data segment.
    #[must_use]
    pub fn is_writable(&self) -> bool {
        self.is_data() && self.kind & TYPE_WRITABLE_READABLE != 0
    }

    /// A conforming code segment.
    #[must_use]
    pub fn is_conforming(&self) -> bool {
        self.is_code() && self.kind & TYPE_EXPAND_DOWN_CONFORMING != 0
    }

    /// An expand-down data segment.
    #[must_use]
    pub fn is_expand_down(&self) -> bool {
        self.is_data() && self.kind & TYPE_EXPAND_DOWN_CONFORMING != 0
    }

    /// Whether `len` bytes at `offset` lie within the segment's limit
    /// (expand-up: offset..offset+len-1 <= limit; expand-down: above the
    /// limit, up to 0xffff or 0xffffffff by the B bit).
    #[must_use]
    pub fn contains(&self, offset: u32, len: u32) -> bool {
        let last = u64::from(offset) + u64::from(len.max(1)) - 1;
        if self.is_expand_down() {
            let upper = if self.big { 0xffff_ffffu64 } else { 0xffff };
            u64::from(offset) > u64::from(self.limit) && last <= upper
        } else {
            last <= u64::from(self.limit)
        }
    }
}

/// A gate descriptor in the IDT (or a call gate in the GDT/LDT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gate {
    /// Target code segment selector (or TSS selector for a task gate).
    pub selector: u16,
    /// Target offset.
    pub offset: u32,
    /// System type (see [`system`]).
    pub kind: u8,
    /// Gate's DPL (checked for software interrupts).
    pub dpl: u8,
    /// P.
    pub present: bool,
    /// S bit, which must be 0 for a gate.
    pub code_or_data: bool,
    /// Parameter count of a call gate.
    pub parameters: u8,
}

impl Gate {
    /// Decodes a gate from its in-memory form.
    #[must_use]
    pub fn from_raw(raw: u64) -> Self {
        let low = (raw & 0xffff_ffff) as u32;
        let high = (raw >> 32) as u32;
        Self {
            selector: (low >> 16) as u16,
            offset: (low & 0xffff) | (high & 0xffff_0000),
            kind: ((high >> 8) & 0xf) as u8,
            dpl: ((high >> 13) & 3) as u8,
            present: high & (1 << 15) != 0,
            code_or_data: high & (1 << 12) != 0,
            parameters: (high & 0x1f) as u8,
        }
    }

    /// An interrupt gate (16- or 32-bit): clears IF on entry.
    #[must_use]
    pub fn is_interrupt_gate(&self) -> bool {
        matches!(
            self.kind,
            system::INTERRUPT_GATE16 | system::INTERRUPT_GATE32
        )
    }

    /// A trap gate (16- or 32-bit).
    #[must_use]
    pub fn is_trap_gate(&self) -> bool {
        matches!(self.kind, system::TRAP_GATE16 | system::TRAP_GATE32)
    }

    /// A 32-bit gate (pushes 32-bit values).
    #[must_use]
    pub fn is_32bit(&self) -> bool {
        self.kind & 8 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_code_and_data_descriptors() {
        // Linux's __KERNEL_CS and __USER_DS.
        let code = Descriptor::from_raw(0x00cf_9a00_0000_ffff);
        assert_eq!(code.base, 0);
        assert_eq!(code.limit, 0xffff_ffff);
        assert!(code.is_code() && code.is_readable() && !code.is_conforming());
        assert_eq!(code.dpl, 0);
        assert!(code.present && code.big && code.granular);
        let data = Descriptor::from_raw(0x00cf_f200_0000_ffff);
        assert!(data.is_data() && data.is_writable());
        assert_eq!(data.dpl, 3);
        assert_eq!(Descriptor::from_raw(code.to_raw()), code);
        assert_eq!(code.to_raw(), 0x00cf_9a00_0000_ffff);
    }

    #[test]
    fn base_and_byte_limit_split_across_fields() {
        let raw = 0x1240_9234_5678_0fffu64;
        let desc = Descriptor::from_raw(raw);
        assert_eq!(desc.base, 0x1234_5678);
        assert_eq!(desc.limit, 0x0fff);
        assert!(!desc.granular && desc.big);
        assert_eq!(desc.to_raw(), raw);
    }

    #[test]
    fn limits_expand_up_and_down() {
        let up = Descriptor {
            limit: 0xfff,
            kind: TYPE_WRITABLE_READABLE,
            code_or_data: true,
            big: true,
            ..Descriptor::default()
        };
        assert!(up.contains(0xffc, 4));
        assert!(!up.contains(0xffd, 4));
        let down = Descriptor {
            kind: TYPE_WRITABLE_READABLE | TYPE_EXPAND_DOWN_CONFORMING,
            ..up
        };
        assert!(!down.contains(0xfff, 1));
        assert!(down.contains(0x1000, 4));
        assert!(down.contains(0xffff_fffc, 4));
        assert!(!down.contains(0xffff_fffd, 4));
    }

    #[test]
    fn interrupt_gate_fields() {
        // Interrupt gate, DPL 0, selector 0x10, offset 0xc1234567.
        let raw = 0xc123_8e00_0010_4567u64;
        let gate = Gate::from_raw(raw);
        assert_eq!(gate.selector, 0x10);
        assert_eq!(gate.offset, 0xc123_4567);
        assert!(gate.is_interrupt_gate() && gate.is_32bit() && gate.present);
        assert_eq!(gate.dpl, 0);
        let trap = Gate::from_raw(raw | (1 << 40) | (3 << 45));
        assert!(trap.is_trap_gate());
        assert_eq!(trap.dpl, 3);
    }
}
