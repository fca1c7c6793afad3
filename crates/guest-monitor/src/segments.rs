//! Keeping the guest's segment registers and the host's in step.
//!
//! Each guest segment register runs on a host LDT slot that holds the
//! guest's cached descriptor (see world-switch's `shadow` module). On every
//! trap the host selectors are read back: a slot selector means "what the
//! monitor put there" (possibly copied to another register by native guest
//! code, e.g. `mov %ds, %ax; mov %ax, %es`); a guest LDT selector or a
//! host GDT selector means the guest loaded it natively in user mode, and
//! the monitor gives it the guest's meaning (the selector-collision repair
//! of DESIGN.md section 2). On the way out, slots whose descriptor changed
//! are rewritten and every register gets its own slot.
//!
//! In guest user mode a register holding a guest GDT selector runs on the
//! host LDT entry of the same index instead (a GDT mirror): its host
//! selector is then the guest's with the table bit set (0x33 reads 0x37),
//! so that untraced user code that reads a segment register natively gets
//! the guest's descriptor index. glibc's pthread_create does exactly that:
//! it passes `%gs >> 3` to the kernel as the TLS entry of the new thread.

use btvmm_core::cpu::{Cpu, SegReg, Segment};
use btvmm_core::descriptor::Descriptor;
use btvmm_core::emu::segment::{load_data_segment, read_descriptor};
use btvmm_core::exception::Exception;
use btvmm_core::machine::Machine;
pub use btvmm_core::world::ldt_layout::slot_selector;
use btvmm_core::world::ldt_layout::{FIRST_SLOT, slot_of};
use btvmm_core::{HostRegisters, StopReason, WorldServices};

/// The host's 64-bit user code selector on x86-64 Linux: guest code that
/// switches to it runs as 64-bit code, outside the virtual machine.
const HOST_USER_CS64: u16 = 0x33;

/// What the register slots hold now.
#[derive(Clone, Debug, Default)]
pub struct Shadows {
    /// The guest segment each register slot stands for.
    slots: [Option<Segment>; 6],
    /// The descriptor each slot holds in the host LDT (the guest's, or its
    /// truncated form in user mode).
    written: [Option<Descriptor>; 6],
    /// GDT mirrors: host LDT index (= guest GDT index) to the guest segment
    /// it stands for and the descriptor written there.
    mirrors: std::collections::BTreeMap<u16, (Segment, Descriptor)>,
}

/// The outcome of reading a host selector back.
#[derive(Debug)]
pub enum Repair {
    /// Nothing unusual.
    None,
    /// A natively loaded host GDT selector was given the guest's meaning.
    Repaired,
}

impl Shadows {
    /// Reads the host's segment registers into `cpu` (see the module
    /// documentation). `machine` reads guest descriptor tables.
    pub fn sync_in(
        &self,
        cpu: &mut Cpu,
        host: &HostRegisters,
        machine: &mut dyn Machine,
    ) -> Result<u64, StopReason> {
        if host.rip_high != 0 || host.selectors[SegReg::Cs as usize] == HOST_USER_CS64 {
            return Err(StopReason::GuestEscape(format!(
                "guest code switched to the host's 64-bit code segment (CS {:#x}, RIP {:#x}{:08x})",
                host.selectors[SegReg::Cs as usize],
                host.rip_high,
                host.eip
            )));
        }
        let mut repairs = 0;
        // Code and stack first: CPL decides how data selectors are judged.
        for seg in [
            SegReg::Cs,
            SegReg::Ss,
            SegReg::Ds,
            SegReg::Es,
            SegReg::Fs,
            SegReg::Gs,
        ] {
            let selector = host.selectors[seg as usize];
            if selector & 4 != 0
                && let Some((mirrored, _)) = self.mirrors.get(&(selector >> 3))
            {
                *cpu.segment_mut(seg) = *mirrored;
                continue;
            }
            if let Some(slot) = slot_of(selector) {
                let Some(loaded) = self.slots[slot as usize] else {
                    return Err(StopReason::Internal(format!(
                        "{seg:?} holds the empty slot of {slot:?}"
                    )));
                };
                *cpu.segment_mut(seg) = loaded;
                if seg == SegReg::Cs && cpu.cpl == 0 && loaded.selector & 3 == 3 {
                    // Cannot happen: CPL follows emulated transfers only.
                    return Err(StopReason::Internal("CS RPL 3 in kernel mode".into()));
                }
                continue;
            }
            if selector & !3 == 0 {
                if matches!(seg, SegReg::Cs | SegReg::Ss) {
                    return Err(StopReason::Internal(format!(
                        "null {seg:?} in a guest context"
                    )));
                }
                *cpu.segment_mut(seg) = Segment {
                    selector,
                    cache: Default::default(),
                };
                continue;
            }
            // Loaded natively by guest user code.
            repairs += 1;
            self.repair(cpu, machine, seg, selector)?;
        }
        Ok(repairs)
    }

    fn repair(
        &self,
        cpu: &mut Cpu,
        machine: &mut dyn Machine,
        seg: SegReg,
        selector: u16,
    ) -> Result<(), StopReason> {
        match seg {
            SegReg::Cs => {
                // A native far transfer in user mode: accept it if the
                // guest's own descriptor allows it at CPL 3.
                let slot = read_descriptor(cpu, machine, selector, Exception::gp)
                    .map_err(|_| escape(seg, selector, "beyond the guest's descriptor tables"))?;
                let desc = slot.descriptor;
                let allowed =
                    desc.is_code() && desc.present && (desc.is_conforming() || desc.dpl == 3);
                if !allowed || selector & 3 != 3 {
                    return Err(escape(
                        seg,
                        selector,
                        "not a user code segment of the guest",
                    ));
                }
                *cpu.segment_mut(seg) = Segment {
                    selector,
                    cache: desc,
                };
                cpu.cpl = 3;
                Ok(())
            }
            SegReg::Ss => load_data_segment(cpu, machine, seg, selector)
                .map_err(|_| escape(seg, selector, "not a stack segment the guest allows")),
            _ => {
                if load_data_segment(cpu, machine, seg, selector).is_err() {
                    // The guest's own load would have faulted at an
                    // instruction long past; the register becomes null so
                    // its next use faults in the guest.
                    *cpu.segment_mut(seg) = Segment::default();
                }
                Ok(())
            }
        }
    }

    /// Writes the slots whose descriptor changed and returns the host
    /// selectors for `cpu`'s segment registers. At CPL 3 the slots hold
    /// truncated descriptors ([`crate::mmu::truncate_user_segment`]).
    ///
    /// With `window` (the split code view, kernel mode), CS runs with the
    /// window's base added and its limit cut to the EIPs the window
    /// reaches, so the CPU fetches the alias pages.
    pub fn sync_out(
        &mut self,
        cpu: &Cpu,
        world: &mut dyn WorldServices,
        window: Option<crate::split::Window>,
    ) -> Result<(usize, [u16; 6]), StopReason> {
        let mut writes = 0;
        let mut selectors = [0u16; 6];
        // GDT mirrors used by a register this time (a second register may
        // share one only with the same descriptor).
        let mut used = [0u16; 6];
        for seg in SegReg::ALL {
            let segment = *cpu.segment(seg);
            if segment.is_null() && !matches!(seg, SegReg::Cs | SegReg::Ss) {
                selectors[seg as usize] = segment.selector & 3;
                continue;
            }
            let shadow = if cpu.cpl == 3 {
                crate::mmu::truncate_user_segment(&segment.cache).ok_or_else(|| {
                    StopReason::Unsupported(format!(
                        "guest user code segment based at {:#x}, above the user-mode limit {:#x}",
                        segment.cache.base,
                        crate::mmu::USER_TOP
                    ))
                })?
            } else if seg == SegReg::Cs
                && let Some(window) = window
            {
                split_code_segment(&segment.cache, window)
            } else {
                segment.cache
            };
            if cpu.cpl == 3
                && let Some((selector, wrote)) = self.mirror(&segment, shadow, &used, world)?
            {
                writes += usize::from(wrote);
                selectors[seg as usize] = selector;
                used[seg as usize] = selector >> 3;
                continue;
            }
            if self.written[seg as usize] != Some(shadow) {
                world
                    .write_ldt(FIRST_SLOT + seg as u16, Some(&shadow))
                    .map_err(StopReason::from)?;
                self.written[seg as usize] = Some(shadow);
                writes += 1;
            }
            self.slots[seg as usize] = Some(segment);
            selectors[seg as usize] = slot_selector(seg);
        }
        Ok((writes, selectors))
    }
}

impl Shadows {
    /// Puts user-mode `segment` (a guest GDT selector) on the host LDT
    /// entry of its index, written as `shadow`: returns its host selector
    /// and whether the entry had to be written, or None when it cannot be
    /// mirrored (an LDT selector, an index among the slots, or the entry
    /// holding another descriptor for a register loaded earlier).
    fn mirror(
        &mut self,
        segment: &Segment,
        shadow: Descriptor,
        used: &[u16; 6],
        world: &mut dyn WorldServices,
    ) -> Result<Option<(u16, bool)>, StopReason> {
        let index = segment.selector >> 3;
        if segment.selector & 4 != 0 || index == 0 || index >= FIRST_SLOT {
            return Ok(None);
        }
        let host_selector = segment.selector | 4;
        match self.mirrors.get(&index) {
            Some((mirrored, written)) if *written == shadow => {
                if mirrored != segment {
                    // Same descriptor, another cache: keep one.
                    self.mirrors.insert(index, (*segment, shadow));
                }
                return Ok(Some((host_selector, false)));
            }
            // Another register loaded this time holds the entry with
            // another descriptor: this one takes its own slot.
            Some(_) if used.contains(&index) => return Ok(None),
            _ => {}
        }
        world
            .write_ldt(index, Some(&shadow))
            .map_err(StopReason::from)?;
        self.mirrors.insert(index, (*segment, shadow));
        Ok(Some((host_selector, true)))
    }
}

/// The shadow of a kernel code segment in the split view: based at the
/// window's B plus its own base, with a limit that keeps B + linear EIP
/// within the window's reach.
fn split_code_segment(descriptor: &Descriptor, window: crate::split::Window) -> Descriptor {
    let mut shadow = *descriptor;
    shadow.base = descriptor.base.wrapping_add(window.base);
    let reach = window.max_linear.saturating_sub(descriptor.base);
    if descriptor.limit > reach {
        crate::mmu::set_limit(&mut shadow, reach);
    }
    shadow
}

fn escape(seg: SegReg, selector: u16, why: &str) -> StopReason {
    StopReason::GuestEscape(format!(
        "guest user code loaded {seg:?} with host selector {selector:#x} natively ({why})"
    ))
}
