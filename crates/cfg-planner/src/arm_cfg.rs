//! ARMv7 as the planner's architecture parameter ([`Armv7`], an
//! [`Isa`]): blocks decoded by [`crate::arm`]'s classifier through the
//! guest's page tables, the roles of ARM points of interest and their
//! successors. The CFG, the breakpoint choice and the cached planner are
//! the x86 ones ([`crate::Cfg`], [`crate::plan`], [`crate::Planner`]). A
//! Cortex-A9 has 6 breakpoint registers.
//!
//! Also a traversal of everything reachable from a set of entries (the
//! kernel's functions): ARM text mixes code with literal pools, which a
//! linear sweep would decode as instructions; following fall-throughs and
//! branch targets from function entries does not.
//!
//! How an ARM point of interest stops or passes (as [`crate::isa::X86`]'s
//! do): unconditional direct branches and conditional branches pass (their
//! targets are followed); a sensitive instruction that traps by itself
//! stops on its own ([`Role::SelfTrap`]) when it always executes, and
//! traps or falls through when conditional (B1.9: a failed condition may
//! make it a NOP); silent sensitive instructions, SVC (a host system
//! call), pointer branches and undecodable code need a breakpoint
//! ([`Role::Stop`]).

use std::collections::HashSet;

use btvmm_core::{GuestMemory, GuestVirt};
use serde::Serialize;

use crate::arm::{
    ArmClassifier, ArmDelivery, ArmInstruction, ArmMode, ArmPoiKind, ArmSensitiveKind, ItState,
};
use crate::cfg::EdgeKind;
use crate::decode::{Block, BlockEnd, note_page};
use crate::isa::Isa;
use crate::plan::Role;
use crate::planner::PlannerError;

/// Most bytes one block is decoded from: a longer straight run continues
/// in a block of its own (x86's `TooLong`), and a block depends on at
/// most two pages.
const MAX_BLOCK_BYTES: usize = 1024;

/// ARMv7-A (ARM and Thumb-2), decoded by capstone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Armv7;

/// Where ARM code starts: its address, the instruction set (the CPSR's T
/// bit) and the IT state (inside a Thumb IT block after a conditional
/// instruction that trapped or fell through).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ArmStart {
    /// The guest-virtual address.
    pub at: GuestVirt,
    /// ARM or Thumb.
    pub mode: ArmMode,
    /// IT state ([`ItState::NONE`] in ARM state and outside IT blocks).
    pub it: ItState,
}

impl ArmStart {
    /// ARM code at `at`.
    #[must_use]
    pub const fn arm(at: GuestVirt) -> Self {
        Self {
            at,
            mode: ArmMode::Arm,
            it: ItState::NONE,
        }
    }

    /// Thumb code at `at`, outside an IT block.
    #[must_use]
    pub const fn thumb(at: GuestVirt) -> Self {
        Self {
            at,
            mode: ArmMode::Thumb,
            it: ItState::NONE,
        }
    }

    /// Where an instruction is.
    #[must_use]
    pub const fn of(instruction: &ArmInstruction) -> Self {
        Self {
            at: instruction.guest_virt,
            mode: instruction.mode,
            it: instruction.it_before,
        }
    }

    /// The instruction after `instruction` in memory, in its IT block.
    #[must_use]
    pub const fn after(instruction: &ArmInstruction) -> Self {
        Self {
            at: instruction.fall_through(),
            mode: instruction.mode,
            it: instruction.it_after,
        }
    }
}

impl Isa for Armv7 {
    type Start = ArmStart;
    type Poi = ArmInstruction;
    /// Nothing to configure: which instructions trap at PL0 on a Linux
    /// host is the classifier's fixed table.
    type Config = ();
    type Decoder = ArmClassifier;
    const BREAKPOINTS: usize = 6;
    const LONGEST_INSTRUCTION: u32 = 4;

    fn decoder((): &()) -> Result<ArmClassifier, PlannerError> {
        Ok(ArmClassifier::new()?)
    }

    fn address(start: ArmStart) -> GuestVirt {
        start.at
    }

    fn poi_start(poi: &ArmInstruction) -> ArmStart {
        ArmStart::of(poi)
    }

    fn role(poi: &ArmInstruction) -> Role {
        match poi.kind {
            ArmPoiKind::DirectBranch { .. } | ArmPoiKind::CondBranch { .. } => Role::Pass,
            ArmPoiKind::Sensitive {
                delivery: ArmDelivery::Traps,
                ..
            } if poi.conditional => Role::Pass,
            ArmPoiKind::Sensitive {
                delivery: ArmDelivery::Traps,
                ..
            } => Role::SelfTrap,
            ArmPoiKind::Sensitive { .. }
            | ArmPoiKind::PointerBranch(_)
            | ArmPoiKind::Unrecognized
            | ArmPoiKind::Plain => Role::Stop,
        }
    }

    fn successors(poi: &ArmInstruction, push: &mut dyn FnMut(EdgeKind, ArmStart)) {
        // A branch leaves any IT block (it may only be its last
        // instruction), so its target starts outside one.
        let target_start = |at, mode| ArmStart {
            at,
            mode,
            it: ItState::NONE,
        };
        match poi.kind {
            ArmPoiKind::DirectBranch {
                target,
                link,
                target_mode,
            } => push(
                if link { EdgeKind::Call } else { EdgeKind::Jump },
                target_start(target, target_mode),
            ),
            ArmPoiKind::CondBranch {
                taken, target_mode, ..
            } => {
                push(EdgeKind::Taken, target_start(taken, target_mode));
                push(EdgeKind::NotTaken, ArmStart::after(poi));
            }
            ArmPoiKind::Sensitive {
                delivery: ArmDelivery::Traps,
                ..
            } if poi.conditional => push(EdgeKind::NotTaken, ArmStart::after(poi)),
            _ => {}
        }
    }

    fn scan_block(
        classifier: &ArmClassifier,
        mem: &dyn GuestMemory,
        start: ArmStart,
        stops: &[GuestVirt],
    ) -> Block<Self> {
        // Read what the guest maps from `start`, up to the block's bound.
        let mut window = [0u8; MAX_BLOCK_BYTES];
        let mut readable = 0usize;
        let mut unmapped = None;
        while readable < MAX_BLOCK_BYTES {
            // readable < MAX_BLOCK_BYTES, which fits.
            #[allow(clippy::cast_possible_truncation)]
            let cursor = start.at.offset(readable as u32);
            let take = (cursor.bytes_to_page_end() as usize).min(MAX_BLOCK_BYTES - readable);
            if mem.translate(cursor).is_err()
                || mem
                    .read_virt(cursor, &mut window[readable..readable + take])
                    .is_err()
            {
                unmapped = Some(cursor);
                break;
            }
            readable += take;
        }
        let mut decoded =
            classifier.scan_block_in(start.mode, start.it, start.at, &window[..readable]);
        let stop = decoded
            .iter()
            .position(|instruction| stops.binary_search(&instruction.guest_virt).is_ok());
        let end = if let Some(stop) = stop {
            let at = ArmStart::of(&decoded[stop]);
            decoded.truncate(stop);
            BlockEnd::Breakpoint(at)
        } else {
            match decoded.last() {
                Some(last) if last.kind.is_poi() => BlockEnd::Poi(last.clone()),
                last => {
                    let next = last.map_or(start, ArmStart::after);
                    if unmapped.is_some() {
                        BlockEnd::Unfetchable(next)
                    } else {
                        BlockEnd::TooLong(next)
                    }
                }
            }
        };
        // The pages the decoded bytes came from; for a block that ends
        // unfetchable, every page read (the first half of an instruction
        // that runs into the unmapped page included) and that page.
        let extent = if matches!(end, BlockEnd::Unfetchable(_)) {
            readable
        } else {
            decoded.last().map_or(0, |last| {
                last.fall_through().0.wrapping_sub(start.at.0) as usize
            })
        };
        let mut pages = Vec::new();
        let mut offset = 0usize;
        while offset < extent {
            #[allow(clippy::cast_possible_truncation)] // extent <= MAX_BLOCK_BYTES
            let cursor = start.at.offset(offset as u32);
            note_page(&mut pages, cursor, mem.translate(cursor).ok());
            offset += cursor.bytes_to_page_end() as usize;
        }
        if let (BlockEnd::Unfetchable(_), Some(unmapped)) = (&end, unmapped) {
            note_page(&mut pages, unmapped, mem.translate(unmapped).ok());
        }
        Block {
            start,
            end,
            // At most MAX_BLOCK_BYTES / 2 instructions.
            #[allow(clippy::cast_possible_truncation)]
            instructions: decoded.len() as u32,
            pages,
        }
    }
}

/// Guest code: bytes that sit at a guest-virtual address.
#[derive(Clone, Copy, Debug)]
pub struct ArmCode<'a> {
    /// Where `bytes` start.
    pub base: GuestVirt,
    /// The code.
    pub bytes: &'a [u8],
}

impl<'a> ArmCode<'a> {
    /// The bytes from `at` to the end (None outside).
    #[must_use]
    pub fn from(&self, at: GuestVirt) -> Option<&'a [u8]> {
        let offset = usize::try_from(at.0.checked_sub(self.base.0)?).ok()?;
        self.bytes.get(offset..).filter(|rest| !rest.is_empty())
    }
}

/// Every instruction reachable from `entries` (fall-throughs, branch
/// targets, the return of calls), decoded once, in address order.
#[must_use]
pub fn reachable(
    classifier: &ArmClassifier,
    code: &ArmCode<'_>,
    entries: &[(GuestVirt, ArmMode)],
) -> Vec<ArmInstruction> {
    let mut seen: HashSet<GuestVirt> = HashSet::new();
    let mut decoded = Vec::new();
    let mut work: Vec<(GuestVirt, ArmMode)> = entries.to_vec();
    while let Some((at, mode)) = work.pop() {
        if seen.contains(&at) {
            continue;
        }
        let Some(bytes) = code.from(at) else {
            continue;
        };
        let window = &bytes[..bytes.len().min(MAX_BLOCK_BYTES)];
        let block = classifier.scan_block(mode, at, window);
        let mut next = None;
        for instruction in block {
            if !seen.insert(instruction.guest_virt) {
                next = None;
                break;
            }
            next = Some(instruction.fall_through());
            match instruction.kind {
                ArmPoiKind::Plain => {}
                ArmPoiKind::DirectBranch {
                    target,
                    link,
                    target_mode,
                } => {
                    work.push((target, target_mode));
                    if !link {
                        next = None;
                    }
                }
                ArmPoiKind::CondBranch {
                    taken, target_mode, ..
                } => work.push((taken, target_mode)),
                ArmPoiKind::PointerBranch(_) if !instruction.conditional => next = None,
                ArmPoiKind::Sensitive {
                    kind: ArmSensitiveKind::ExceptionReturn,
                    ..
                } if !instruction.conditional => next = None,
                ArmPoiKind::Unrecognized => next = None,
                _ => {}
            }
            decoded.push(instruction);
        }
        if let Some(next) = next {
            work.push((next, mode));
        }
    }
    decoded.sort_by_key(|instruction| instruction.guest_virt);
    decoded
}

#[cfg(test)]
mod tests {
    use btvmm_core::{GuestPhys, RegionMemory};

    use super::*;
    use crate::cfg::NodeKind;
    use crate::planner::{Planner, PlannerConfig};

    fn words(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|word| word.to_le_bytes()).collect()
    }

    fn planner() -> Planner<Armv7> {
        Planner::new(PlannerConfig::for_isa::<Armv7>()).expect("capstone")
    }

    fn memory(at: u32, bytes: &[u8]) -> RegionMemory {
        let mut mem = RegionMemory::new();
        mem.add_identity(at, bytes.to_vec());
        mem
    }

    fn plan(
        planner: &mut Planner<Armv7>,
        mem: &RegionMemory,
        start: ArmStart,
        budget: usize,
    ) -> Option<Vec<u32>> {
        let plan = planner.plan_with_budget(mem, start, false, budget);
        plan.breakpoints
            .as_ref()
            .map(|addresses| addresses.iter().map(|at| at.0).collect())
    }

    #[test]
    fn a_loop_with_a_cache_operation_is_planned_like_x86() {
        // 0x1000: mov r0, #0
        // 0x1004: add r0, r0, #1
        // 0x1008: cmp r0, #10
        // 0x100c: bne 0x1004
        // 0x1010: mcrne p15, 0, r0, c7, c5, 0 (ICIALLU: traps, or falls
        //         through when NE fails)
        // 0x1014: mrs r1, cpsr                (silent: a breakpoint)
        // 0x1018: bx lr                       (pointer: a breakpoint)
        let bytes = words(&[
            0xe3a0_0000,
            0xe280_0001,
            0xe350_000a,
            0x1aff_fffc,
            0x1e07_0f15,
            0xe10f_1000,
            0xe12f_ff1e,
        ]);
        let mem = memory(0x1000, &bytes);
        let mut planner = planner();
        let start = ArmStart::arm(GuestVirt(0x1000));
        let cfg = planner.explore(&mem, start);
        assert_eq!(cfg.poi_count(), 3, "bne, mcrne, mrs: {:?}", cfg.graph);
        assert!(matches!(cfg.graph[cfg.root].kind, NodeKind::Entry));
        // The loop and the conditional MCR pass (it traps or falls
        // through): one breakpoint on the MRS covers everything.
        assert_eq!(plan(&mut planner, &mem, start, 1), Some(vec![0x1014]));
        // Resumed on the MRS or the BX itself: no plan (emulated first).
        for at in [0x1014, 0x1018] {
            let here = ArmStart::arm(GuestVirt(at));
            assert_eq!(plan(&mut planner, &mem, here, 1), None, "{at:#x}");
        }
        // An unconditional MCR traps by itself: nothing to arm after it.
        // The code page changed: what was decoded from it goes.
        let mut trapping = bytes.clone();
        trapping[16..20].copy_from_slice(&0xee07_0f15u32.to_le_bytes());
        let changed = memory(0x1000, &trapping);
        assert_eq!(plan(&mut planner, &changed, start, 1), Some(vec![0x1014]));
        planner.invalidate_phys_page(GuestPhys(0x1000));
        assert_eq!(plan(&mut planner, &changed, start, 1), Some(Vec::new()));
        let code = ArmCode {
            base: GuestVirt(0x1000),
            bytes: &bytes,
        };
        let classifier = ArmClassifier::new().expect("capstone");
        let reached = reachable(&classifier, &code, &[(GuestVirt(0x1000), ArmMode::Arm)]);
        assert_eq!(reached.len(), 7);
    }

    #[test]
    fn thumb_it_blocks_keep_their_state_past_a_conditional_trap() {
        // Thumb at 0x3000:
        // 0x3000: ite eq                       (bf0c)
        // 0x3002: mcreq p15, 0, r0, c7, c5, 0  (ee07 0f15: traps, or not)
        // 0x3006: mrsne r1, apsr               (f3ef 8100: silent)
        // 0x300a: bx lr                        (4770)
        let bytes = [
            0x0c, 0xbf, 0x07, 0xee, 0x15, 0x0f, 0xef, 0xf3, 0x00, 0x81, 0x70, 0x47,
        ];
        let mem = memory(0x3000, &bytes);
        let mut planner = planner();
        let start = ArmStart::thumb(GuestVirt(0x3000));
        let cfg = planner.explore(&mem, start);
        let mrs = cfg
            .graph
            .node_weights()
            .find(|node| node.at.at == GuestVirt(0x3006))
            .expect("the MRS is a node");
        // The MRS is decoded as the IT block's second instruction (its
        // condition is NE), not as an unconditional one.
        let NodeKind::Poi(instruction) = &mrs.kind else {
            panic!("{mrs:?}");
        };
        assert!(instruction.conditional, "{instruction:?}");
        assert_ne!(mrs.at.it, ItState::NONE);
        assert_eq!(plan(&mut planner, &mem, start, 1), Some(vec![0x3006]));
    }

    #[test]
    fn blocks_end_at_unmapped_code_and_before_a_debuggers_breakpoint() {
        // Plain code to the end of the page, then nothing mapped.
        let bytes = words(&[0xe3a0_0000; 1024]);
        let mem = memory(0x4000, &bytes);
        let mut planner = planner();
        let block = planner.block(&mem, ArmStart::arm(GuestVirt(0x4f00)));
        assert!(
            matches!(block.end, BlockEnd::Unfetchable(at) if at.at == GuestVirt(0x5000)),
            "{:?}",
            block.end
        );
        assert_eq!(block.instructions, 64);
        assert_eq!(block.pages.len(), 2, "{:?}", block.pages);
        // A Thumb instruction whose second half lies on the unmapped page:
        // the block still depends on the page of its first half.
        let mut thumb = [0xbf00u16; 2048]; // nop
        thumb[2047] = 0xf3ef; // the first half of mrs r0, apsr
        let thumb_mem = memory(
            0x9000,
            &thumb
                .iter()
                .flat_map(|h| h.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
        let block = planner.block(&thumb_mem, ArmStart::thumb(GuestVirt(0x9ffe)));
        assert!(
            matches!(block.end, BlockEnd::Unfetchable(at) if at.at == GuestVirt(0x9ffe)),
            "{:?}",
            block.end
        );
        assert!(
            block
                .pages
                .iter()
                .any(|page| page.virt_page == 0x9 && page.phys_page == Some(0x9)),
            "{:?}",
            block.pages
        );
        // A long straight run continues in a block of its own.
        let block = planner.block(&mem, ArmStart::arm(GuestVirt(0x4000)));
        assert!(matches!(block.end, BlockEnd::TooLong(at) if at.at == GuestVirt(0x4400)));
        planner.set_debug_stops(vec![GuestVirt(0x4010)]);
        let block = planner.block(&mem, ArmStart::arm(GuestVirt(0x4000)));
        assert!(matches!(block.end, BlockEnd::Breakpoint(at) if at.at == GuestVirt(0x4010)));
        assert_eq!(
            plan(&mut planner, &mem, ArmStart::arm(GuestVirt(0x4000)), 1),
            Some(vec![0x4010])
        );
    }

    #[test]
    fn literal_pools_after_a_return_are_not_code() {
        // 0x2000: ldr r0, [pc, #4]   (the pool word at 0x200c)
        // 0x2004: bl 0x2010
        // 0x2008: bx lr
        // 0x200c: .word 0xee010f10    (would decode as mcr p15 SCTLR)
        // 0x2010: bx lr
        let bytes = words(&[
            0xe59f_0004,
            0xeb00_0001,
            0xe12f_ff1e,
            0xee01_0f10,
            0xe12f_ff1e,
        ]);
        let code = ArmCode {
            base: GuestVirt(0x2000),
            bytes: &bytes,
        };
        let classifier = ArmClassifier::new().expect("capstone");
        let reached = reachable(&classifier, &code, &[(GuestVirt(0x2000), ArmMode::Arm)]);
        let addresses: Vec<u32> = reached.iter().map(|i| i.guest_virt.0).collect();
        assert_eq!(addresses, [0x2000, 0x2004, 0x2008, 0x2010]);
    }
}
