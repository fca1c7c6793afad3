//! Guest address newtypes. A 32-bit guest on a 64-bit host makes it easy to
//! mix up guest-virtual, guest-physical and host-virtual addresses; separate
//! types make such a mix-up a compile error.

use std::fmt;

use serde::Serialize;

/// Size of a guest page (x86 4 KiB pages; 4 MiB pages are handled as runs).
pub const PAGE_SIZE: u32 = 4096;

/// A guest-virtual (linear) address, as the guest's code and page tables see it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct GuestVirt(pub u32);

/// A guest-physical address: an offset into guest RAM as the guest's page
/// tables (or, with paging off, its linear addresses) name it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct GuestPhys(pub u32);

macro_rules! guest_address {
    ($t:ident, $prefix:literal) => {
        impl $t {
            /// The address `bytes` further on, wrapping at 4 GiB like the
            /// guest's own address arithmetic.
            #[must_use]
            pub const fn offset(self, bytes: u32) -> Self {
                Self(self.0.wrapping_add(bytes))
            }

            /// The 4 KiB page frame number holding this address.
            #[must_use]
            pub const fn page(self) -> u32 {
                self.0 / PAGE_SIZE
            }

            /// Bytes from this address to the end of its 4 KiB page.
            #[must_use]
            pub const fn bytes_to_page_end(self) -> u32 {
                PAGE_SIZE - self.0 % PAGE_SIZE
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{:#010x}"), self.0)
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#010x}", self.0)
            }
        }

        impl fmt::LowerHex for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

guest_address!(GuestVirt, "gv:");
guest_address!(GuestPhys, "gp:");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_wraps_like_the_guest() {
        assert_eq!(GuestVirt(0xffff_fffe).offset(4), GuestVirt(2));
    }

    #[test]
    fn page_arithmetic() {
        let at = GuestPhys(0x1234_5678);
        assert_eq!(at.page(), 0x12345);
        assert_eq!(at.bytes_to_page_end(), 0x1000 - 0x678);
        assert_eq!(GuestVirt(0x2000).bytes_to_page_end(), 0x1000);
    }

    #[test]
    fn formatting_names_the_address_space() {
        assert_eq!(format!("{:?}", GuestVirt(0xc100_0000)), "gv:0xc1000000");
        assert_eq!(format!("{}", GuestPhys(0x10)), "0x00000010");
    }
}
