//! What crosses between the world (where the guest runs) and the host
//! process (where devices live): exits, replies, and why a VM stopped.

/// A request from the world to the host; the world waits for the reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// IN from a port the host's devices serve; reply with the value.
    PortIn {
        /// The port.
        port: u16,
        /// 1, 2 or 4 bytes.
        size: u8,
    },
    /// OUT to a port.
    PortOut {
        /// The port.
        port: u16,
        /// 1, 2 or 4 bytes.
        size: u8,
        /// The value (low `size` bytes).
        value: u32,
    },
    /// REP INS from a port the host's devices serve: `count` items of
    /// `size` bytes (at most [`STRING_EXIT_BYTES`] in all), which the host
    /// sends back with the reply.
    PortInString {
        /// The port.
        port: u16,
        /// 1, 2 or 4 bytes an item.
        size: u8,
        /// Items.
        count: u16,
    },
    /// REP OUTS to such a port: `count` items of `size` bytes that go
    /// with the exit.
    PortOutString {
        /// The port.
        port: u16,
        /// 1, 2 or 4 bytes an item.
        size: u8,
        /// Items.
        count: u16,
    },
    /// The guest executed HLT and nothing can wake it (the world sleeps
    /// through HLTs an interrupt can end without exiting).
    Halt {
        /// Whether an interrupt could ever wake it (virtual IF set).
        interrupts_enabled: bool,
    },
    /// The vCPU stopped between two guest instructions for the host (its
    /// monitor menu asked, or a debugger's breakpoint, step or watchpoint):
    /// the world waits until the host replies (Continue resumes, Terminate
    /// ends the VM, a [`Reply::Debug`] command is carried out and answered
    /// with [`Exit::DebugResult`], or resumes under the debugger).
    Paused(Box<VcpuRegisters>, PauseCause),
    /// The result of a debugger command ([`DebugCommand`]) other than a
    /// resume; the world waits for the next command. Data read (memory,
    /// the FPU image) goes with it, `len` bytes.
    DebugResult {
        /// The command succeeded (memory unmapped: no).
        ok: bool,
        /// Bytes of data that go with it.
        len: u16,
    },
    /// The VM cannot go on.
    Stop(StopReason),
}

/// The vCPU's registers as the guest sees them, between two of its
/// instructions (what a paused vCPU shows).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuRegisters {
    /// EAX..EDI in encoding order.
    pub gpr: [u32; 8],
    /// EIP.
    pub eip: u32,
    /// EFLAGS as the guest sees them (its IF and IOPL, not the host's).
    pub eflags: u32,
    /// ES, CS, SS, DS, FS, GS selectors.
    pub selectors: [u16; 6],
    /// CR0, CR2, CR3, CR4.
    pub cr: [u32; 4],
    /// Current privilege level.
    pub cpl: u8,
    /// Whether the vCPU is in a HLT, waiting for an interrupt.
    pub halted: bool,
}

impl VcpuRegisters {
    /// 32-bit words the registers take (see [`VcpuRegisters::to_words`]).
    pub const WORDS: usize = 18;

    /// The registers as words, for a channel.
    #[must_use]
    pub fn to_words(&self) -> [u32; Self::WORDS] {
        let mut words = [0; Self::WORDS];
        words[..8].copy_from_slice(&self.gpr);
        words[8] = self.eip;
        words[9] = self.eflags;
        for (slot, pair) in words[10..13].iter_mut().zip(self.selectors.chunks(2)) {
            *slot = u32::from(pair[0]) | (u32::from(pair[1]) << 16);
        }
        words[13..17].copy_from_slice(&self.cr);
        words[17] = u32::from(self.cpl) | (u32::from(self.halted) << 8);
        words
    }

    /// The registers from [`VcpuRegisters::to_words`]'s words (any words
    /// are some registers: an untrusted sender cannot make this fail).
    #[must_use]
    pub fn from_words(words: &[u32; Self::WORDS]) -> Self {
        let mut gpr = [0; 8];
        gpr.copy_from_slice(&words[..8]);
        let mut selectors = [0; 6];
        for (pair, word) in selectors.chunks_mut(2).zip(&words[10..13]) {
            #[allow(clippy::cast_possible_truncation)] // two selectors a word
            {
                pair[0] = *word as u16;
                pair[1] = (*word >> 16) as u16;
            }
        }
        let mut cr = [0; 4];
        cr.copy_from_slice(&words[13..17]);
        #[allow(clippy::cast_possible_truncation)] // the low byte
        Self {
            gpr,
            eip: words[8],
            eflags: words[9],
            selectors,
            cr,
            cpl: (words[17] & 3) as u8,
            halted: words[17] & 0x100 != 0,
        }
    }
}

/// Most bytes one string exit ([`Exit::PortInString`],
/// [`Exit::PortOutString`]) moves: a sector.
pub const STRING_EXIT_BYTES: usize = 512;

/// Why a VM stopped on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest triple-faulted (a real PC would reset).
    TripleFault,
    /// The guest used something the VMM does not implement.
    Unsupported(String),
    /// The guest left the virtual machine's rules in a way the VMM can
    /// only stop (e.g. switched to the host's 64-bit code segment).
    GuestEscape(String),
    /// A VMM failure.
    Internal(String),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TripleFault => write!(f, "the guest triple-faulted"),
            Self::Unsupported(what) => {
                write!(f, "the guest used something btvmm does not support: {what}")
            }
            Self::GuestEscape(what) => write!(f, "the guest left the virtual machine: {what}"),
            Self::Internal(what) => write!(f, "internal error in the monitor: {what}"),
        }
    }
}

/// The host's answer to an [`Exit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Go on.
    Continue,
    /// The value of a [`Exit::PortIn`].
    Value(u32),
    /// End the VM: the world process exits.
    Terminate,
    /// A debugger's command to a paused vCPU ([`Exit::Paused`] or
    /// [`Exit::DebugResult`] only).
    Debug(DebugCommand),
}

/// Why the vCPU stopped for the host ([`Exit::Paused`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PauseCause {
    /// The host asked (its menu, a debugger's Ctrl-C or attach).
    Requested,
    /// EIP reached one of the debugger's breakpoints.
    Breakpoint,
    /// The debugger's single step is done.
    Step,
    /// A write changed bytes a debugger's watchpoint covers (the one at
    /// this guest-virtual address); EIP is past the writing instruction.
    Watchpoint {
        /// The watchpoint's first byte.
        guest_virt: u32,
    },
}

/// What a debugger asks of a paused vCPU ([`Reply::Debug`]). Data that
/// goes with a command (bytes to write, registers, an FPU image) is in the
/// channel's data area, at most [`STRING_EXIT_BYTES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebugCommand {
    /// Run on under the debugger's current points
    /// ([`DebugPoints`]); with `step`, one guest instruction (or the entry
    /// of an exception it raises) and stop again.
    Resume {
        /// Stop after one instruction.
        step: bool,
    },
    /// Read `len` bytes at a guest-virtual address through the guest's
    /// page tables (no Accessed bits set).
    ReadMemory {
        /// First byte.
        guest_virt: u32,
        /// At most [`STRING_EXIT_BYTES`].
        len: u16,
    },
    /// Write `len` bytes (the data) at a guest-virtual address: decoded
    /// code there is dropped as after any guest write.
    WriteMemory {
        /// First byte.
        guest_virt: u32,
        /// At most [`STRING_EXIT_BYTES`].
        len: u16,
    },
    /// Load the registers in the data ([`VcpuRegisters::to_words`]):
    /// general registers, EIP and EFLAGS; selectors, control registers
    /// and the rest must be as they were.
    WriteRegisters,
    /// Answer with the guest's FXSAVE image (512 bytes).
    ReadFpu,
    /// Load the FXSAVE image in the data.
    WriteFpu,
}

/// A debugger's write watchpoint: `len` bytes from `guest_virt`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Watchpoint {
    /// First byte (guest-virtual).
    pub guest_virt: u32,
    /// Bytes covered (1 to [`Watchpoint::MAX_LEN`]).
    pub len: u32,
}

impl Watchpoint {
    /// The longest watched range.
    pub const MAX_LEN: u32 = 64;
}

/// The debugger's points, which the host changes only while the vCPU is
/// paused; `generation` changes with them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DebugPoints {
    /// Bumped at every change; 0: no debugger has set any.
    pub generation: u32,
    /// Breakpoints: guest-linear addresses of instructions.
    pub breakpoints: Vec<u32>,
    /// Write watchpoints.
    pub watchpoints: Vec<Watchpoint>,
}

impl DebugPoints {
    /// Most breakpoints at once.
    pub const MAX_BREAKPOINTS: usize = 64;
    /// Most watchpoints at once.
    pub const MAX_WATCHPOINTS: usize = 4;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_survive_words() {
        let registers = VcpuRegisters {
            gpr: [1, 2, 3, 4, 5, 6, 7, 8],
            eip: 0xc100_0000,
            eflags: 0x246,
            selectors: [0x7b, 0x60, 0x68, 0x7b, 0xd8, 0xe0],
            cr: [0x8005_003b, 0xb7f0_0000, 0x01c0_4000, 0x690],
            cpl: 0,
            halted: true,
        };
        assert_eq!(VcpuRegisters::from_words(&registers.to_words()), registers);
        // Words from an untrusted sender still make registers.
        let odd = VcpuRegisters::from_words(&[u32::MAX; VcpuRegisters::WORDS]);
        assert_eq!(odd.cpl, 3);
        assert!(odd.halted);
    }
}
