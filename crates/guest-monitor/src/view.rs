//! Guest memory and I/O as the emulator and the planner reach them from the
//! monitor: guest-physical memory through the world's window (paging is
//! off: linear = physical), port I/O to the world's chipset or through
//! exits to the host.

use btvmm_core::exit::{Exit, Reply};
use btvmm_core::machine::{Access, Machine};
use btvmm_core::mem::{GuestMemory, MemFault};
use btvmm_core::{GuestPhys, GuestVirt, Stop, WorldServices};
use cfg_planner::Planner;
use devices::chipset::Chipset;

use crate::counters::{Counter, Counters};

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
}

/// Reads guest-physical memory with open-bus fill outside RAM.
pub fn read_physical(world: &dyn WorldServices, phys: u32, buf: &mut [u8]) {
    if world.read_phys(phys, buf) {
        return;
    }
    // Partly or wholly outside RAM: byte by byte.
    for (offset, byte) in buf.iter_mut().enumerate() {
        #[allow(clippy::cast_possible_truncation)] // buffers are small
        let at = phys.wrapping_add(offset as u32);
        let mut one = [OPEN_BUS];
        if !world.read_phys(at, &mut one) {
            one[0] = OPEN_BUS;
        }
        *byte = one[0];
    }
}

impl GuestView<'_> {
    fn exit(&mut self, exit: Exit) -> Result<Reply, Stop> {
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
        let reply = self.world.exit(exit);
        if reply == Reply::Terminate {
            *self.terminate = true;
            return Err(Stop::Machine("the host ended the VM".into()));
        }
        // A host device's line may have changed with this access.
        self.chipset.set_host_levels(self.world.irq_levels());
        Ok(reply)
    }
}

impl Machine for GuestView<'_> {
    fn read_linear(&mut self, linear: u32, buf: &mut [u8], _access: Access) -> Result<(), Stop> {
        read_physical(&*self.world, linear, buf);
        Ok(())
    }

    fn write_linear(&mut self, linear: u32, data: &[u8], _access: Access) -> Result<(), Stop> {
        if !self.world.write_phys(linear, data) {
            for (offset, byte) in data.iter().enumerate() {
                #[allow(clippy::cast_possible_truncation)] // buffers are small
                self.world
                    .write_phys(linear.wrapping_add(offset as u32), &[*byte]);
            }
        }
        // The write may have changed decoded code.
        let first = linear / 4096;
        #[allow(clippy::cast_possible_truncation)] // buffers are small
        let last = linear.wrapping_add(data.len().saturating_sub(1) as u32) / 4096;
        self.planner.invalidate_phys_page(GuestPhys(first * 4096));
        if last != first {
            self.planner
                .invalidate_phys_page(GuestPhys(last.wrapping_mul(4096)));
        }
        Ok(())
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

    fn timestamp(&mut self) -> u64 {
        self.world.timestamp()
    }
}

/// Guest memory for the planner: paging off, so every linear address is
/// the guest-physical address of the same number, and memory outside RAM
/// reads as open bus (what the CPU would fetch there).
pub struct PlannerMemory<'a>(pub &'a dyn WorldServices);

impl GuestMemory for PlannerMemory<'_> {
    fn translate(&self, virt: GuestVirt) -> Result<GuestPhys, MemFault> {
        Ok(GuestPhys(virt.0))
    }

    fn read_virt(&self, virt: GuestVirt, buf: &mut [u8]) -> Result<(), MemFault> {
        read_physical(self.0, virt.0, buf);
        Ok(())
    }
}
