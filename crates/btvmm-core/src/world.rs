//! The seam between the world process (host kernel mechanics) and the
//! monitor (guest semantics): what trapped, the guest's registers as the
//! host holds them, and the services the monitor uses to act.

use crate::GuestVirt;
use crate::descriptor::Descriptor;
use crate::exit::{Exit, Reply};
use crate::mem::PhysMemory;

/// Why guest execution stopped and the monitor runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trap {
    /// The world is about to enter the guest for the first time.
    Enter,
    /// A planned hardware breakpoint fired: the instruction at EIP has not
    /// run.
    Breakpoint,
    /// The single step the monitor asked for completed.
    SingleStep,
    /// A CPU exception from guest code, with the host's record of it.
    Fault {
        /// The x86 vector (13 #GP, 14 #PF, 6 #UD, ...).
        vector: u8,
        /// The hardware error code (0 when the vector has none).
        error_code: u32,
        /// For #PF: the linear address.
        address: Option<u32>,
    },
    /// A guest INT3 (`cc` or `cd 03`): EIP is past the instruction.
    SoftwareBreakpoint,
    /// A system-call instruction trapped by seccomp: EIP is past the
    /// instruction (except on the host's fast path, see `fast_path`).
    SystemCall {
        /// The guest's EAX (the host kernel keeps it as the call number).
        number: u32,
        /// From the host's 32-bit ABI (`int $0x80`, `sysenter`, 32-bit
        /// `syscall`) rather than a 64-bit `syscall`.
        compat: bool,
        /// The host kernel's fast 32-bit system-call path ran (SYSENTER on
        /// Intel hosts, SYSCALL on AMD hosts, see [`HostFastPath`]): the
        /// guest's EIP is lost (the host kernel reports its own landing
        /// address), and after SYSENTER its ESP too.
        fast_path: bool,
    },
    /// The host asked the monitor to look at pending events.
    Kick,
}

/// The guest's registers as the host CPU holds them while the guest runs:
/// general registers, EIP and EFLAGS as they are, segment registers as
/// host selectors (register slots, guest LDT shadows, or host GDT selectors
/// the guest loaded natively).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HostRegisters {
    /// EAX..EDI.
    pub gpr: [u32; 8],
    /// Instruction pointer (offset in CS).
    pub eip: u32,
    /// The upper half of RIP: nonzero only if guest code reached 64-bit
    /// code above 4 GiB, which is an escape.
    pub rip_high: u32,
    /// Host EFLAGS (IF is always 1 and IOPL 0 on the host).
    pub eflags: u32,
    /// ES, CS, SS, DS, FS, GS host selectors, in encoding order.
    pub selectors: [u16; 6],
    /// FS base.
    pub fs_base: u64,
    /// GS base.
    pub gs_base: u64,
}

/// What the monitor does with the world after handling a trap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run the guest with these registers.
    Resume(HostRegisters),
    /// The VM is over: the world process exits.
    Terminate,
}

/// Which 32-bit system-call instruction the host CPU sends through the
/// host kernel's fast path from compatibility mode (the other one raises
/// #UD there): SYSENTER on Intel, SYSCALL on AMD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostFastPath {
    /// Intel and others: SYSENTER.
    Sysenter,
    /// AMD and Hygon: SYSCALL.
    Syscall,
}

/// How the monitor runs guest kernel code between the instructions it must
/// handle (`btvmm run --exec`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExecMode {
    /// Natively, except for short stretches the monitor interprets after
    /// an instruction it handled, where another is likely close.
    #[default]
    Auto,
    /// Natively: the monitor emulates only what it must.
    Native,
    /// Interpreted wherever the emulator handles the instruction; what it
    /// does not handle runs natively from there.
    Interpret,
}

impl ExecMode {
    /// The name `--exec` takes.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Interpret => "interpret",
        }
    }

    /// The mode `--exec` names.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Auto, Self::Native, Self::Interpret]
            .into_iter()
            .find(|mode| mode.name() == name)
    }
}

/// A service of the world the host refused (a system call that failed):
/// the monitor cannot go on, and stops the VM saying which and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{service}: {detail}")]
pub struct ServiceError {
    /// What the monitor asked for ("mapping guest memory", ...).
    pub service: &'static str,
    /// What the host said.
    pub detail: String,
}

impl ServiceError {
    /// The `service` failed with `detail`.
    pub fn new(service: &'static str, detail: impl std::fmt::Display) -> Self {
        Self {
            service,
            detail: detail.to_string(),
        }
    }
}

impl From<ServiceError> for crate::exit::StopReason {
    fn from(error: ServiceError) -> Self {
        Self::Internal(error.to_string())
    }
}

/// Services of the world process the monitor acts through; guest RAM is
/// reached through its [`PhysMemory`].
pub trait WorldServices: PhysMemory {
    /// Maps `len` bytes of guest RAM at `guest_phys` at the host address
    /// `guest_virt` below 4 GiB (page aligned), read-only or writable,
    /// replacing what was there: a shadow mapping.
    fn map_guest(
        &mut self,
        guest_virt: u32,
        guest_phys: u32,
        len: u32,
        writable: bool,
    ) -> Result<(), ServiceError>;
    /// Changes the protection of the shadow mappings in
    /// `[guest_virt, guest_virt + len)`.
    fn protect_guest(
        &mut self,
        guest_virt: u32,
        len: u32,
        writable: bool,
    ) -> Result<(), ServiceError>;
    /// Removes the shadow mappings in `[guest_virt, guest_virt + len)`;
    /// holes are fine.
    fn unmap_guest(&mut self, guest_virt: u32, len: u32) -> Result<(), ServiceError>;
    /// Writes host LDT entry `index` as the shadow of `descriptor` (a code
    /// or data descriptor), or empties it.
    fn write_ldt(
        &mut self,
        index: u16,
        descriptor: Option<&Descriptor>,
    ) -> Result<(), ServiceError>;
    /// Arms exactly these hardware breakpoints.
    fn arm_breakpoints(&mut self, addresses: &[GuestVirt]) -> Result<(), ServiceError>;
    /// How many hardware breakpoints there are.
    fn breakpoint_count(&self) -> usize;
    /// Hands an exit to the host and waits for its reply.
    fn exit(&mut self, exit: Exit) -> Reply;
    /// Hands a string exit ([`Exit::PortInString`] or
    /// [`Exit::PortOutString`], `data` its `count * size` bytes, at most
    /// [`crate::exit::STRING_EXIT_BYTES`]) to the host: the data goes with
    /// an OUTS and comes back into `data` with an INS's reply. By default
    /// one port exit an item.
    fn exit_string(&mut self, exit: Exit, data: &mut [u8]) -> Reply {
        let (port, size, input) = match exit {
            Exit::PortInString { port, size, .. } => (port, size, true),
            Exit::PortOutString { port, size, .. } => (port, size, false),
            other => return self.exit(other),
        };
        // Err: the host ended the VM.
        let done = if input {
            crate::machine::read_items(size, data, || {
                match self.exit(Exit::PortIn { port, size }) {
                    Reply::Terminate => Err(()),
                    Reply::Value(value) => Ok(value),
                    Reply::Continue | Reply::Debug(_) => Ok(u32::MAX),
                }
            })
        } else {
            crate::machine::write_items(size, data, |value| {
                match self.exit(Exit::PortOut { port, size, value }) {
                    Reply::Terminate => Err(()),
                    _ => Ok(()),
                }
            })
        };
        match done {
            Ok(()) => Reply::Continue,
            Err(()) => Reply::Terminate,
        }
    }
    /// Levels of the host devices' interrupt lines (bit n = IRQ n). See
    /// world-switch's channel for why a change is never missed.
    fn irq_levels(&self) -> u16;
    /// Whether the host wants the vCPU paused: the monitor then makes an
    /// [`crate::Exit::Paused`] exit between two guest instructions. The
    /// host kicks the world after asking, as for a line change.
    fn pause_requested(&self) -> bool {
        false
    }
    /// A debugger conversation's exit ([`crate::Exit::Paused`] or
    /// [`crate::Exit::DebugResult`]): `data`'s first bytes go with the
    /// exit (the result's `len`), and the data of the command that answers
    /// it comes back into `data`. By default a plain exit (no debugger).
    fn debug_exit(
        &mut self,
        exit: crate::Exit,
        data: &mut [u8; crate::exit::STRING_EXIT_BYTES],
    ) -> Reply {
        let _ = data;
        self.exit(exit)
    }
    /// The debugger's breakpoints and watchpoints (none without one).
    fn debug_points(&self) -> crate::DebugPoints {
        crate::DebugPoints::default()
    }
    /// Host devices' lines that dropped and rose again since the last call
    /// (bit n = IRQ n): the PIC must latch a new edge for them.
    fn take_irq_pulses(&mut self) -> u16 {
        0
    }
    /// Nanoseconds on the VM's clock (shared with the host).
    fn now_ns(&self) -> u64;
    /// Arms the world's timer: the kick arrives at `deadline_ns` on the
    /// VM's clock (None: never).
    fn set_timer_deadline(&mut self, deadline_ns: Option<u64>) -> Result<(), ServiceError>;
    /// Sleeps until a kick is pending (the timer, or the host after one of
    /// its devices' interrupt lines changed) and takes it: how a halted
    /// guest idles.
    fn wait_for_kick(&mut self);
    /// Publishes the monitor's counters for the host to read.
    fn publish_counters(&mut self, counters: &[u64]);
    /// The host's time-stamp counter.
    fn timestamp(&self) -> u64;
    /// How fast it counts, in kHz, as the host measured it (0: unknown).
    fn tsc_khz(&self) -> u32 {
        0
    }
    /// Writes a diagnostic line (the `--trace` output) to the VMM's
    /// standard error.
    fn trace(&mut self, line: &str);
    /// Makes RDTSC and RDTSCP fault (#GP) in guest code, or run natively:
    /// how the guest's CR4.TSD takes effect in untraced user mode.
    fn set_timestamp_faulting(&mut self, faulting: bool) -> Result<(), ServiceError>;
    /// The pool of world processes this one belongs to (one guest address
    /// space each), if there is more than one.
    fn address_spaces(&self) -> Option<&dyn AddressSpaces> {
        None
    }
    /// The guest's x87/SSE registers as the trap being handled found them
    /// (an FXSAVE image): they live in the world process's own FPU, so a
    /// handoff to another world process must carry them along.
    fn guest_fpu(&self) -> Option<Vec<u8>> {
        None
    }
    /// Makes `image` (an FXSAVE image from [`WorldServices::guest_fpu`])
    /// the guest's x87/SSE registers when it resumes.
    fn set_guest_fpu(&mut self, image: &[u8]) -> Result<(), ServiceError> {
        let _ = image;
        Err(ServiceError::new(
            "loading the guest's FPU state",
            "this world cannot",
        ))
    }
    /// The alias code pages of the split code view (DESIGN.md section
    /// 3b), if this world has them.
    fn code_aliases(&mut self) -> Option<&mut dyn CodeAliases> {
        None
    }
}

/// Alias code pages, one per guest-physical page, shared by the world
/// processes of a VM: decoded guest code with INT3 where the monitor must
/// step in (DESIGN.md section 3b). Offsets are within the page.
pub trait CodeAliases {
    /// Forgets what was decoded on alias page `guest_phys_page`: INT3
    /// everywhere.
    fn reset(&mut self, guest_phys_page: u32);
    /// Forgets what was decoded on every alias page.
    fn reset_all(&mut self);
    /// Copies `bytes` to the alias page at `offset`; false outside guest
    /// RAM or past the page.
    fn write(&mut self, guest_phys_page: u32, offset: u32, bytes: &[u8]) -> bool;
    /// Reads the alias page at `offset`; false outside guest RAM or past
    /// the page.
    fn read(&self, guest_phys_page: u32, offset: u32, buf: &mut [u8]) -> bool;
    /// Maps the alias page read and execute only at the page-aligned
    /// `linear` address below 4 GiB, replacing what was there. (Unmapping
    /// is `WorldServices::unmap_guest`.)
    fn map(&mut self, linear: u32, guest_phys_page: u32) -> Result<(), ServiceError>;
}

/// Something one world process of the pool did that the others must
/// learn before they run the guest again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolEvent {
    /// The guest-physical page frame `page` became write-tracked (a page
    /// table, directory or decoded code page of some address space): every
    /// process write-protects its aliases of it.
    Tracked {
        /// Guest-physical page frame.
        page: u32,
    },
    /// No address space tracks `page` any more.
    Untracked {
        /// Guest-physical page frame.
        page: u32,
    },
    /// No address space may track `page` any more: it is none of their
    /// page directories nor named by one, so whatever an address space
    /// tracked it for (a page table it walked once, code it decoded) is
    /// gone and the page holds anything now. Its author stopped trapping
    /// writes to it at once; every other member drops what it derived from
    /// the page (shadow entries made through it as a table, decoded code)
    /// and its tracking of it before it runs the guest again, as if the
    /// whole page had been written.
    Released {
        /// Guest-physical page frame.
        page: u32,
    },
    /// An emulated write of `len` bytes at `guest_phys`, to a page some
    /// address space tracks.
    Written {
        /// First byte written.
        guest_phys: u32,
        /// Bytes written.
        len: u16,
    },
}

impl PoolEvent {
    const KIND_SHIFT: u32 = 48;
    const AUTHOR_SHIFT: u32 = 52;

    /// The event and the pool member that published it, as one word.
    #[must_use]
    pub fn encode(self, author: u8) -> u64 {
        let (kind, low, len) = match self {
            Self::Tracked { page } => (1u64, page, 0),
            Self::Untracked { page } => (2, page, 0),
            Self::Written { guest_phys, len } => (3, guest_phys, len),
            Self::Released { page } => (4, page, 0),
        };
        u64::from(low)
            | u64::from(len) << 32
            | kind << Self::KIND_SHIFT
            | u64::from(author & 0xf) << Self::AUTHOR_SHIFT
    }

    /// The event and its author from [`PoolEvent::encode`]'s word.
    #[must_use]
    pub fn decode(word: u64) -> Option<(u8, Self)> {
        #[allow(clippy::cast_possible_truncation)] // masked fields
        let (low, len, author) = (
            word as u32,
            (word >> 32) as u16,
            ((word >> Self::AUTHOR_SHIFT) & 0xf) as u8,
        );
        let event = match (word >> Self::KIND_SHIFT) & 0xf {
            1 => Self::Tracked { page: low },
            2 => Self::Untracked { page: low },
            3 => Self::Written {
                guest_phys: low,
                len,
            },
            4 => Self::Released { page: low },
            _ => return None,
        };
        Some((author, event))
    }
}

/// The pool of world processes, one per recently used guest address space
/// (DESIGN.md section 2): which process shadows which CR3, the handoff of
/// the vCPU between them, the log of [`PoolEvent`]s and how many address
/// spaces track each guest-physical page. Exactly one member runs the
/// guest at a time; the others wait inside [`AddressSpaces::hand_over`].
pub trait AddressSpaces {
    /// Members in the pool.
    fn members(&self) -> usize;
    /// This process's member index.
    fn member(&self) -> usize;
    /// The CR3 `member` shadows, if any.
    fn key(&self, member: usize) -> Option<u32>;
    /// Records the CR3 `member` shadows.
    fn set_key(&self, member: usize, cr3: Option<u32>);
    /// Marks `member` used now (for [`AddressSpaces::least_recent`]).
    fn touch(&self, member: usize);
    /// The member used longest ago, other than `except`.
    fn least_recent(&self, except: usize) -> usize;
    /// A counter bumped whenever every other shadow becomes untrustworthy
    /// (the guest turned paging off: writes are not tracked then).
    fn epoch(&self) -> u64;
    /// Bumps [`AddressSpaces::epoch`].
    fn bump_epoch(&self);
    /// Gives the vCPU (`state`) to member `to` and waits until some member
    /// gives it back; then `back` holds the state handed in.
    fn hand_over(&self, to: usize, state: &[u8], back: &mut Vec<u8>);
    /// Waits for this member's first turn; `back` as for `hand_over`.
    fn wait_turn(&self, back: &mut Vec<u8>);
    /// Appends an event to the log.
    fn publish(&self, event: PoolEvent);
    /// The sequence number the next event will get.
    fn log_head(&self) -> u64;
    /// Calls `each` with every event (and its author) from sequence number
    /// `from` on; returns the sequence number to continue from, or None
    /// when events from `from` on were overwritten (the log is a ring).
    fn events_since(&self, from: u64, each: &mut dyn FnMut(u8, PoolEvent)) -> Option<u64>;
    /// One more (or one fewer) address space tracks guest-physical page
    /// frame `page`; true when the page went from untracked to tracked (or
    /// from tracked to untracked).
    fn count_tracking(&self, page: u32, tracked: bool) -> bool;
    /// Whether any address space tracks `page`.
    fn tracked_anywhere(&self, page: u32) -> bool;
    /// No address space counts as tracking `page` any more (the author of
    /// a [`PoolEvent::Released`] clears the count for all of them; they
    /// drop their tracking when they replay the event, without counting).
    fn release_everywhere(&self, page: u32);
}

/// Layout of the host LDT: the last eight entries are register slots (one
/// per segment register, holding the guest's cached descriptor); entries
/// below shadow the guest's own LDT.
pub mod ldt_layout {
    use crate::cpu::SegReg;

    /// Entries in an LDT.
    pub const ENTRIES: u16 = 8192;
    /// First entry used as a register slot.
    pub const FIRST_SLOT: u16 = ENTRIES - 8;

    /// The host selector of a register's slot (TI = 1, RPL 3).
    #[must_use]
    pub fn slot_selector(seg: SegReg) -> u16 {
        ((FIRST_SLOT + seg as u16) << 3) | 4 | 3
    }

    /// The segment register whose slot a host selector names, if any.
    #[must_use]
    pub fn slot_of(selector: u16) -> Option<SegReg> {
        if selector & 4 == 0 {
            return None;
        }
        (selector >> 3)
            .checked_sub(FIRST_SLOT)
            .and_then(|slot| SegReg::ALL.get(usize::from(slot)).copied())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn slot_selectors_round_trip() {
            for seg in SegReg::ALL {
                let selector = slot_selector(seg);
                assert_eq!(selector & 7, 7, "TI=1, RPL=3");
                assert_eq!(slot_of(selector), Some(seg));
            }
            assert_eq!(slot_of(0x23), None, "a GDT selector");
            assert_eq!(slot_of(0x0f), None, "a guest LDT shadow");
        }
    }
}

#[cfg(test)]
mod pool_event_tests {
    use super::PoolEvent;

    #[test]
    fn events_round_trip_through_their_word() {
        for (author, event) in [
            (0, PoolEvent::Tracked { page: 0xf_ffff }),
            (7, PoolEvent::Untracked { page: 1 }),
            (3, PoolEvent::Released { page: 0x1234 }),
            (
                3,
                PoolEvent::Written {
                    guest_phys: 0xffff_fffc,
                    len: 512,
                },
            ),
        ] {
            assert_eq!(
                PoolEvent::decode(event.encode(author)),
                Some((author, event))
            );
        }
        assert_eq!(PoolEvent::decode(0), None, "an empty slot is no event");
    }
}
