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
    /// The VM cannot go on.
    Stop(StopReason),
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
}
