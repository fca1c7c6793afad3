//! Guest page tables for the unit tests, written with plain 32-bit values.

use btvmm_core::GuestPhys;

use crate::PhysMemory;
use btvmm_core::VecPhysMemory;

/// Where the tests put the page directory.
pub const DIR: u32 = 0x1000;
pub const P: u32 = 1 << 0;
pub const RW: u32 = 1 << 1;
pub const US: u32 = 1 << 2;
pub const A: u32 = 1 << 5;
pub const D: u32 = 1 << 6;
pub const PS: u32 = 1 << 7;

pub fn pde_at(guest_virt: u32) -> GuestPhys {
    GuestPhys(DIR + (guest_virt >> 22) * 4)
}

pub fn pte_at(table: u32, guest_virt: u32) -> GuestPhys {
    GuestPhys(table + ((guest_virt >> 12) & 0x3ff) * 4)
}

pub fn write(mem: &mut VecPhysMemory, guest_phys: GuestPhys, value: u32) {
    mem.write_u32(guest_phys, value)
        .expect("test tables lie in RAM");
}

pub fn read(mem: &VecPhysMemory, guest_phys: GuestPhys) -> u32 {
    mem.read_u32(guest_phys).expect("test tables lie in RAM")
}

/// Points the PDE of `guest_virt` at `table` and its PTE at `pte`.
pub fn map_4k(mem: &mut VecPhysMemory, table: u32, pde_flags: u32, guest_virt: u32, pte: u32) {
    write(mem, pde_at(guest_virt), table | pde_flags);
    write(mem, pte_at(table, guest_virt), pte);
}
