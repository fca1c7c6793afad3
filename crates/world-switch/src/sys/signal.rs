//! Signal delivery into the monitor: the alternate stack, the handlers,
//! and the entry trampoline.
//!
//! When a signal interrupts guest code, the kernel switches to 64-bit mode
//! and runs the handler, but leaves the guest's DS, ES, FS and GS loaded;
//! in particular FS still has the guest's base, and Rust code addresses its
//! thread-local storage through FS. So the handler is an assembly
//! trampoline that saves the guest's segment selectors and FS/GS bases,
//! installs the monitor's FS base, and only then calls Rust. On the way
//! back it loads the segment selectors and bases the monitor chose for the
//! guest (sigreturn restores CS and SS from the signal context, but not
//! these four on x86-64).
//!
//! Async-signal safety: the world thread runs guest code or this handler,
//! nothing else, once the guest is entered; every signal is blocked while
//! the handler runs, and a fault inside it kills the process (the host
//! reports it). So the handler never interrupts Rust code, and may use the
//! allocator and any non-reentrant state of the monitor.

use std::cell::UnsafeCell;

use crate::WorldError;

/// Guest segment state crossing the trampoline: what the guest had loaded
/// when the signal arrived (written on entry) and what it gets on return
/// (read on exit).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestSegmentRegisters {
    /// DS selector.
    pub ds: u16,
    /// ES selector.
    pub es: u16,
    /// FS selector.
    pub fs: u16,
    /// GS selector.
    pub gs: u16,
    /// FS base.
    pub fs_base: u64,
    /// GS base.
    pub gs_base: u64,
}

/// The trampoline's data: the guest's segment registers and the monitor's
/// own FS base (offsets are used by the assembly below).
#[repr(C)]
struct TrampolineArea {
    guest: GuestSegmentRegisters,
    monitor_fs_base: u64,
}

/// Shared with the trampoline. Written only by the world thread: at set-up
/// (before any handler is installed) and inside the handler.
#[unsafe(no_mangle)]
static mut BTVMM_TRAMPOLINE_AREA: TrampolineArea = TrampolineArea {
    guest: GuestSegmentRegisters {
        ds: 0,
        es: 0,
        fs: 0,
        gs: 0,
        fs_base: 0,
        gs_base: 0,
    },
    monitor_fs_base: 0,
};

// The trampoline (System V x86-64). Entry: rdi = signal, rsi = siginfo,
// rdx = ucontext, on the alternate stack, aligned as after a call.
std::arch::global_asm!(
    ".globl btvmm_signal_trampoline",
    ".type btvmm_signal_trampoline, @function",
    "btvmm_signal_trampoline:",
    // The kernel clears DF and TF for the handler but not AC, which the
    // guest may have set: with the host's CR0.AM, a misaligned access in
    // the monitor would then raise #AC. Clear it (the guest's value is in
    // the signal context and comes back on sigreturn).
    "pushfq",
    "and dword ptr [rsp], 0xfffbffff",
    "popfq",
    "lea rax, [rip + BTVMM_TRAMPOLINE_AREA]",
    "mov word ptr [rax + 0], ds",
    "mov word ptr [rax + 2], es",
    "mov word ptr [rax + 4], fs",
    "mov word ptr [rax + 6], gs",
    "rdfsbase rcx",
    "mov [rax + 8], rcx",
    "rdgsbase rcx",
    "mov [rax + 16], rcx",
    "mov rcx, [rax + 24]",
    "wrfsbase rcx",
    // Entered as if called: rsp = 8 mod 16; realign for the call.
    "sub rsp, 8",
    "call {dispatch}",
    "add rsp, 8",
    "lea rax, [rip + BTVMM_TRAMPOLINE_AREA]",
    "mov cx, word ptr [rax + 0]",
    "mov ds, cx",
    "mov cx, word ptr [rax + 2]",
    "mov es, cx",
    "mov cx, word ptr [rax + 4]",
    "mov fs, cx",
    "mov rcx, [rax + 8]",
    "wrfsbase rcx",
    "mov cx, word ptr [rax + 6]",
    "mov gs, cx",
    "mov rcx, [rax + 16]",
    "wrgsbase rcx",
    "ret",
    ".size btvmm_signal_trampoline, . - btvmm_signal_trampoline",
    dispatch = sym dispatch,
);

unsafe extern "C" {
    fn btvmm_signal_trampoline(
        signal: libc::c_int,
        info: *mut libc::siginfo_t,
        context: *mut libc::c_void,
    );
}

/// What a handler gets: the signal, its siginfo, the interrupted context,
/// and the guest's segment registers (in and out).
pub struct SignalFrame<'a> {
    /// The signal number.
    pub signal: i32,
    /// The siginfo the kernel wrote.
    pub info: &'a libc::siginfo_t,
    /// The interrupted context; changes take effect on return.
    pub context: &'a mut libc::ucontext_t,
    /// Segment registers of the interrupted code; changes take effect on
    /// return.
    pub segments: &'a mut GuestSegmentRegisters,
}

/// Bytes of the FXSAVE image of the x87/SSE state (the legacy part of
/// the signal frame's floating-point state).
pub const FXSAVE_BYTES: usize = 512;
/// Where, in the FXSAVE image, the kernel keeps its own signal-frame
/// bookkeeping (`struct _fpx_sw_bytes`): bytes the FXSAVE format leaves to
/// software, which sigreturn checks.
const SW_RESERVED: usize = 464;
/// `FP_XSTATE_MAGIC1`: the frame's state is in XSAVE format, with an XSAVE
/// header right after the FXSAVE image.
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
/// XSTATE_BV bits of the x87 and SSE components.
const XSTATE_FP_SSE: u64 = 0b11;

impl SignalFrame<'_> {
    /// The interrupted context's general register `index` (a `libc::REG_*`
    /// index into `mcontext_t.gregs`), as its 64 bits.
    #[must_use]
    pub fn greg(&self, index: libc::c_int) -> u64 {
        // Register values are stored as i64 bit patterns.
        #[allow(clippy::cast_sign_loss)]
        let value = self.context.uc_mcontext.gregs[index.unsigned_abs() as usize] as u64;
        value
    }

    /// Sets the interrupted context's general register `index` (see
    /// [`greg`](Self::greg)); it takes effect on return.
    pub fn set_greg(&mut self, index: libc::c_int, value: u64) {
        #[allow(clippy::cast_possible_wrap)]
        let value = value as i64;
        self.context.uc_mcontext.gregs[index.unsigned_abs() as usize] = value;
    }

    fn fpstate(&self) -> *mut u8 {
        self.context.uc_mcontext.fpregs.cast::<u8>()
    }

    /// The interrupted code's x87/SSE registers as an FXSAVE image (the
    /// kernel saved them in the frame), if the frame has them.
    #[must_use]
    pub fn fpu_image(&self) -> Option<[u8; FXSAVE_BYTES]> {
        let state = self.fpstate();
        if state.is_null() {
            return None;
        }
        let mut image = [0u8; FXSAVE_BYTES];
        // SAFETY: the kernel's fpregs pointer of a live signal frame points
        // at its floating-point state, at least the 512-byte FXSAVE image.
        unsafe { std::ptr::copy_nonoverlapping(state, image.as_mut_ptr(), FXSAVE_BYTES) };
        Some(image)
    }

    /// Makes `image` (an FXSAVE image) the x87/SSE registers the
    /// interrupted code resumes with. The kernel's bookkeeping bytes of the
    /// frame are kept; in an XSAVE-format frame the x87 and SSE components
    /// are marked present so that sigreturn loads them. False if the frame
    /// has no floating-point state.
    pub fn set_fpu_image(&mut self, image: &[u8; FXSAVE_BYTES]) -> bool {
        let state = self.fpstate();
        if state.is_null() {
            return false;
        }
        // SAFETY: as in `fpu_image`; the frame is writable and read back by
        // sigreturn. The XSAVE header (8 bytes at offset 512) exists when
        // the kernel wrote magic1 into the software bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(image.as_ptr(), state, SW_RESERVED);
            let magic = std::ptr::read_unaligned(state.add(SW_RESERVED).cast::<u32>());
            if magic == FP_XSTATE_MAGIC1 {
                let header = state.add(FXSAVE_BYTES).cast::<u64>();
                std::ptr::write_unaligned(header, std::ptr::read_unaligned(header) | XSTATE_FP_SSE);
            }
        }
        true
    }
}

/// The monitor's signal handler.
pub type Handler = Box<dyn FnMut(&mut SignalFrame<'_>)>;

struct HandlerSlot(UnsafeCell<Option<Handler>>);

// SAFETY: the slot is only touched by the world thread: written by
// `install` before any signal handler exists, then read by `dispatch`,
// which never nests (handlers block every signal).
unsafe impl Sync for HandlerSlot {}

static HANDLER: HandlerSlot = HandlerSlot(UnsafeCell::new(None));

extern "C" fn dispatch(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes valid siginfo and ucontext pointers for
    // SA_SIGINFO handlers; the trampoline area and handler slot are only
    // used by this thread, and this handler does not nest (see above).
    unsafe {
        let Some(handler) = (*HANDLER.0.get()).as_mut() else {
            return;
        };
        let area = &mut *std::ptr::addr_of_mut!(BTVMM_TRAMPOLINE_AREA);
        let mut frame = SignalFrame {
            signal,
            info: &*info,
            context: &mut *context.cast::<libc::ucontext_t>(),
            segments: &mut area.guest,
        };
        handler(&mut frame);
    }
}

/// Size of the monitor's signal stack.
const ALT_STACK_SIZE: usize = 1 << 20;

fn host_error(what: &'static str) -> WorldError {
    WorldError::Host {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// Checks that user space may use RDFSBASE/WRFSBASE (Linux 5.9+ on CPUs
/// with FSGSBASE).
pub fn check_fsgsbase() -> Result<(), WorldError> {
    const HWCAP2_FSGSBASE: libc::c_ulong = 1 << 1;
    // SAFETY: getauxval reads the process's auxiliary vector.
    let hwcap2 = unsafe { libc::getauxval(libc::AT_HWCAP2) };
    if hwcap2 & HWCAP2_FSGSBASE == 0 {
        return Err(WorldError::MissingFeature {
            feature: "FSGSBASE (user-space RDFSBASE/WRFSBASE)",
            hint: "needs an x86-64 CPU with FSGSBASE and Linux 5.9 or later",
            source: std::io::Error::other("HWCAP2_FSGSBASE is not set"),
        });
    }
    Ok(())
}

fn read_fs_base() -> u64 {
    let base: u64;
    // SAFETY: RDFSBASE is enabled for user space (checked by
    // check_fsgsbase before this is called) and only reads a register.
    unsafe {
        std::arch::asm!("rdfsbase {}", out(reg) base, options(nomem, nostack, preserves_flags));
    }
    base
}

/// Installs `handler` for `signals`, on an alternate stack, with every
/// signal blocked while it runs.
pub fn install(handler: Handler, signals: &[i32]) -> Result<(), WorldError> {
    check_fsgsbase()?;
    // SAFETY: an anonymous private mapping for the signal stack; it is
    // never unmapped (the world process ends with it).
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            ALT_STACK_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(host_error("mmap of the signal stack"));
    }
    let alternate = libc::stack_t {
        ss_sp: stack,
        ss_flags: 0,
        ss_size: ALT_STACK_SIZE,
    };
    // SAFETY: sigaltstack reads the stack_t describing our mapping.
    if unsafe { libc::sigaltstack(&raw const alternate, std::ptr::null_mut()) } != 0 {
        return Err(host_error("sigaltstack"));
    }
    // SAFETY: no handler is installed yet, so nothing reads the slot or the
    // trampoline area concurrently.
    unsafe {
        *HANDLER.0.get() = Some(handler);
        (*std::ptr::addr_of_mut!(BTVMM_TRAMPOLINE_AREA)).monitor_fs_base = read_fs_base();
    }
    for &signal in signals {
        // SAFETY: a zeroed sigaction is valid; we fill in the trampoline,
        // a full mask and SA_SIGINFO | SA_ONSTACK. glibc adds the restorer.
        let result = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = btvmm_signal_trampoline as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigfillset(&raw mut action.sa_mask);
            libc::sigaction(signal, &raw const action, std::ptr::null_mut())
        };
        if result != 0 {
            return Err(host_error("sigaction"));
        }
    }
    Ok(())
}

/// Raises `signal` in this thread; its handler runs before this returns.
pub fn raise(signal: i32) -> Result<(), WorldError> {
    // SAFETY: raise takes a signal number.
    if unsafe { libc::raise(signal) } != 0 {
        return Err(host_error("raise"));
    }
    Ok(())
}
