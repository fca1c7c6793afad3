//! Guest memory and I/O as the emulator and the planner reach them from the
//! monitor: guest-physical memory through the world's window, after a
//! software walk of the guest's page tables when paging is on ([`Mmu`]);
//! port I/O to the world's chipset or through exits to the host.

use btvmm_core::exit::{Exit, Reply, STRING_EXIT_BYTES};
use std::cell::RefCell;

use btvmm_core::machine::{Access, Event, Machine};
use btvmm_core::mem::{GuestMemory, MemFault};
use btvmm_core::{GuestPhys, GuestVirt, Stop, WorldServices};
use cfg_planner::Planner;
use devices::chipset::Chipset;

use crate::counters::{Counter, Counters};
use crate::mmu::{Mmu, TranslateError};

/// Reads of guest-physical addresses that are not RAM return all ones, as
/// on a PC bus with nothing there; writes there are dropped.
const OPEN_BUS: u8 = 0xff;

/// Memory and I/O for one trap's work.
pub struct GuestView<'a> {
    /// The world's services.
    pub world: &'a mut dyn WorldServices,
    /// Decoded code caches to invalidate when the guest writes memory.
    pub planner: &'a mut Planner,
    /// Counters of exits.
    pub counters: &'a mut Counters,
    /// The PIC pair and the PIT.
    pub chipset: &'a mut Chipset,
    /// Set when the host answered an exit with Terminate.
    pub terminate: &'a mut bool,
    /// Guest paging and its shadow.
    pub mmu: &'a mut Mmu,
}

/// Reads guest-physical memory with open-bus fill outside RAM.
pub fn read_physical(world: &dyn WorldServices, phys: u32, buf: &mut [u8]) {
    if world.read_phys(GuestPhys(phys), buf).is_ok() {
        return;
    }
    // Partly or wholly outside RAM: byte by byte.
    for (offset, byte) in buf.iter_mut().enumerate() {
        #[allow(clippy::cast_possible_truncation)] // buffers are small
        let at = phys.wrapping_add(offset as u32);
        let mut one = [OPEN_BUS];
        if world.read_phys(GuestPhys(at), &mut one).is_err() {
            one[0] = OPEN_BUS;
        }
        *byte = one[0];
    }
}

impl GuestView<'_> {
    fn exit(&mut self, exit: Exit) -> Result<Reply, Stop> {
        self.exit_with_data(exit, &mut [])
    }

    /// An exit with the data of a string exit.
    fn exit_with_data(&mut self, exit: Exit, data: &mut [u8]) -> Result<Reply, Stop> {
        self.counters.bump(Counter::Exits);
        // The host may end the VM at this exit: it reads the counters then.
        let stats = self.planner.stats();
        self.counters
            .set(Counter::BlocksDecoded, stats.blocks.misses);
        self.counters
            .set(Counter::PlansComputed, stats.plans.misses);
        self.counters.set(
            Counter::CodeInvalidations,
            stats.blocks.invalidated + stats.plans.invalidated,
        );
        self.world.publish_counters(self.counters.as_slice());
        let asked = self.world.now_ns();
        let reply = match exit {
            Exit::PortInString { .. } | Exit::PortOutString { .. } => {
                self.world.exit_string(exit, data)
            }
            other => self.world.exit(other),
        };
        self.counters.add(
            Counter::ExitWaitNs,
            self.world.now_ns().saturating_sub(asked),
        );
        if reply == Reply::Terminate {
            *self.terminate = true;
            return Err(Stop::Machine("the host ended the VM".into()));
        }
        // A host device's line may have changed with this access.
        let pulses = self.world.take_irq_pulses();
        self.chipset
            .set_host_levels(self.world.irq_levels(), pulses);
        Ok(reply)
    }
}

impl GuestView<'_> {
    /// The guest-physical address of each page `len` bytes at `linear`
    /// touch (one or two: emulated accesses are at most a few bytes, never
    /// more than a page), all translated before any byte moves, as the
    /// hardware checks both pages of a split access first.
    fn translate(
        &mut self,
        linear: u32,
        len: usize,
        access: Access,
    ) -> Result<[(u32, usize); 2], Stop> {
        let first_len = len.min(GuestVirt(linear).bytes_to_page_end() as usize);
        let mut pieces = [(0, 0); 2];
        pieces[0] = (self.translate_one(linear, access)?, first_len);
        if first_len < len {
            #[allow(clippy::cast_possible_truncation)] // at most a page
            let second = linear.wrapping_add(first_len as u32);
            pieces[1] = (self.translate_one(second, access)?, len - first_len);
        }
        Ok(pieces)
    }

    fn translate_one(&mut self, linear: u32, access: Access) -> Result<u32, Stop> {
        match self.mmu.translate(self.world, linear, access.into()) {
            Ok(phys) => Ok(phys),
            Err(TranslateError::Fault(fault)) => Err(Stop::Exception(fault.to_exception())),
            Err(TranslateError::Broken(shadow_mmu::ShadowError::Memory(_))) => Err(
                Stop::Unsupported("guest paging structures outside guest RAM"),
            ),
            Err(TranslateError::Broken(error)) => Err(Stop::Machine(format!(
                "guest paging at linear {linear:#x}: {error}"
            ))),
        }
    }
}

impl Machine for GuestView<'_> {
    fn read_linear(&mut self, linear: u32, buf: &mut [u8], access: Access) -> Result<(), Stop> {
        let mut done = 0;
        while done < buf.len() {
            #[allow(clippy::cast_possible_truncation)] // buffers are small
            let at = linear.wrapping_add(done as u32);
            let end = buf.len().min(done + 4096);
            for (phys, len) in self.translate(at, end - done, access)? {
                if len > 0 {
                    if self
                        .world
                        .read_phys(GuestPhys(phys), &mut buf[done..done + len])
                        .is_err()
                    {
                        self.counters.bump(Counter::OpenBus);
                        read_physical(&*self.world, phys, &mut buf[done..done + len]);
                    }
                    done += len;
                }
            }
        }
        Ok(())
    }

    fn write_linear(&mut self, linear: u32, data: &[u8], access: Access) -> Result<(), Stop> {
        let mut done = 0;
        while done < data.len() {
            #[allow(clippy::cast_possible_truncation)] // buffers are small
            let at = linear.wrapping_add(done as u32);
            let end = data.len().min(done + 4096);
            for (phys, len) in self.translate(at, end - done, access)? {
                if len == 0 {
                    continue;
                }
                let piece = &data[done..done + len];
                if self.world.write_phys(GuestPhys(phys), piece).is_err() {
                    self.counters.bump(Counter::OpenBus);
                    // Partly outside RAM: what is RAM is written, the rest
                    // is dropped (open bus).
                    for (offset, byte) in piece.iter().enumerate() {
                        #[allow(clippy::cast_possible_truncation)] // a page at most
                        let _ = self
                            .world
                            .write_phys(GuestPhys(phys.wrapping_add(offset as u32)), &[*byte]);
                    }
                }
                // The write may have changed decoded code or page tables.
                #[allow(clippy::cast_possible_truncation)] // a page at most
                self.mmu.written(self.world, self.planner, phys, len as u32);
                done += len;
            }
        }
        Ok(())
    }

    fn notify(&mut self, event: Event) {
        let result = match event {
            Event::ControlRegisterWritten { register, value } => {
                if register == 3 {
                    self.counters.bump(Counter::Cr3Loads);
                }
                self.mmu
                    .control_written(self.world, self.planner, register, value)
            }
            Event::InvalidatePage(linear) => self.mmu.invlpg(self.world, self.planner, linear),
            Event::DescriptorTablesChanged => Ok(()),
        };
        if let Err(error) = result {
            self.mmu.record_failure(error);
        }
    }

    fn port_in(&mut self, port: u16, size: u8) -> Result<u32, Stop> {
        if let Some(value) = self.chipset.read(port, size, self.world.now_ns()) {
            self.counters.bump(Counter::ChipsetIo);
            return Ok(value);
        }
        self.counters.bump(Counter::PortIn);
        match self.exit(Exit::PortIn { port, size })? {
            Reply::Value(value) => Ok(value),
            _ => Ok(u32::MAX),
        }
    }

    fn port_out(&mut self, port: u16, size: u8, value: u32) -> Result<(), Stop> {
        if self.chipset.write(port, size, value, self.world.now_ns()) {
            self.counters.bump(Counter::ChipsetIo);
            return Ok(());
        }
        self.counters.bump(Counter::PortOut);
        self.exit(Exit::PortOut { port, size, value }).map(|_| ())
    }

    fn port_in_string(&mut self, port: u16, size: u8, buf: &mut [u8]) -> Result<(), Stop> {
        if Chipset::claims(port) {
            return btvmm_core::machine::read_items(size, buf, || self.port_in(port, size));
        }
        for chunk in buf.chunks_mut(STRING_EXIT_BYTES) {
            self.counters.bump(Counter::PortInString);
            let count = u16::try_from(chunk.len() / usize::from(size)).unwrap_or(u16::MAX);
            self.exit_with_data(Exit::PortInString { port, size, count }, chunk)?;
        }
        Ok(())
    }

    fn port_out_string(&mut self, port: u16, size: u8, data: &[u8]) -> Result<(), Stop> {
        if Chipset::claims(port) {
            return btvmm_core::machine::write_items(size, data, |value| {
                self.port_out(port, size, value)
            });
        }
        let mut copy = [0u8; STRING_EXIT_BYTES];
        for chunk in data.chunks(STRING_EXIT_BYTES) {
            self.counters.bump(Counter::PortOutString);
            let count = u16::try_from(chunk.len() / usize::from(size)).unwrap_or(u16::MAX);
            let copy = &mut copy[..chunk.len()];
            copy.copy_from_slice(chunk);
            self.exit_with_data(Exit::PortOutString { port, size, count }, copy)?;
        }
        Ok(())
    }

    fn timestamp(&mut self) -> u64 {
        self.world.timestamp()
    }

    fn tsc_khz(&self) -> u32 {
        self.world.tsc_khz()
    }
}

/// Guest memory for the planner: the guest's current mappings, read
/// without setting A/D bits; memory outside RAM reads as open bus (what the
/// CPU would fetch there). Every guest-virtual page it translated is
/// noted, so that the monitor records the translations and write-tracks
/// the code it decoded.
pub struct PlannerMemory<'a> {
    world: &'a dyn WorldServices,
    mmu: &'a Mmu,
    pages: RefCell<Vec<u32>>,
}

impl<'a> PlannerMemory<'a> {
    /// The planner's view of the guest's memory now.
    pub fn new(world: &'a dyn WorldServices, mmu: &'a Mmu) -> Self {
        Self {
            world,
            mmu,
            pages: RefCell::new(Vec::new()),
        }
    }

    /// The guest-virtual pages translated so far (page numbers, each once).
    pub fn into_pages(self) -> Vec<u32> {
        self.pages.into_inner()
    }

    fn note(&self, virt: u32) {
        let page = virt / 4096;
        let mut pages = self.pages.borrow_mut();
        if !pages.contains(&page) {
            pages.push(page);
        }
    }
}

impl GuestMemory for PlannerMemory<'_> {
    fn translate(&self, virt: GuestVirt) -> Result<GuestPhys, MemFault> {
        let phys = self
            .mmu
            .peek(self.world, virt.0)
            .ok_or(MemFault::NotMapped(virt))?;
        self.note(virt.0);
        Ok(GuestPhys(phys))
    }

    fn read_virt(&self, virt: GuestVirt, buf: &mut [u8]) -> Result<(), MemFault> {
        let mut done = 0;
        while done < buf.len() {
            #[allow(clippy::cast_possible_truncation)] // buffers are small
            let at = virt.offset(done as u32);
            let len = (buf.len() - done).min(at.bytes_to_page_end() as usize);
            let phys = self.translate(at)?;
            read_physical(self.world, phys.0, &mut buf[done..done + len]);
            done += len;
        }
        Ok(())
    }
}
