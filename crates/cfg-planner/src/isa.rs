//! The planner's architecture parameter: what it needs from an instruction
//! set's decoder. The CFG ([`crate::Cfg`]), the breakpoint choice
//! ([`crate::plan`]) and the planner with its caches and invalidation
//! ([`crate::Planner`]) are written once over [`Isa`]; [`X86`] (32-bit
//! x86, iced-x86) and [`crate::arm_cfg::Armv7`] (ARM and Thumb-2,
//! capstone) supply blocks and points of interest.
//!
//! What stays per architecture: decoding a block through the guest's page
//! tables, the role of a point of interest for breakpoint coverage, and
//! where control can go from it, and the monitor's step decision, which
//! resolves a branch at the guest's program counter from its registers
//! (`Planner<X86>::step` from EFLAGS and the stack,
//! [`crate::arm_step`]'s from the CPSR, registers and memory): the two
//! CPUs' register views differ.

use std::fmt::Debug;
use std::hash::Hash;

use btvmm_core::{GuestMemory, GuestVirt};

use crate::cfg::EdgeKind;
use crate::classify::{ClassifyConfig, Delivery, PoiKind};
use crate::decode::{Block, Poi, scan_block_with_stops};
use crate::plan::Role;
use crate::planner::PlannerError;

/// An instruction set the planner works on.
pub trait Isa: Sized + 'static {
    /// Where a run of code starts: a guest-virtual address, and on ARM the
    /// instruction set and IT state it is decoded in.
    type Start: Copy + Eq + Hash + Debug;
    /// A decoded point of interest.
    type Poi: Clone + Debug;
    /// Facts the classifier needs (host and guest state), part of
    /// [`crate::PlannerConfig`].
    type Config: Clone + PartialEq + Debug + Default;
    /// What decodes, made from the configuration.
    type Decoder;
    /// Hardware breakpoints of the architecture's CPUs (x86: 4; a
    /// Cortex-A9: 6).
    const BREAKPOINTS: usize;
    /// Bytes in the longest instruction (x86: 15; ARM and Thumb-2: 4).
    const LONGEST_INSTRUCTION: u32;

    /// The decoder for a configuration.
    ///
    /// # Errors
    ///
    /// A [`PlannerError`] when the decoding library cannot be set up.
    fn decoder(config: &Self::Config) -> Result<Self::Decoder, PlannerError>;

    /// The guest-virtual address a start stands for (where a breakpoint on
    /// it goes).
    fn address(start: Self::Start) -> GuestVirt;

    /// Where a point of interest is.
    fn poi_start(poi: &Self::Poi) -> Self::Start;

    /// What a point of interest means for breakpoint coverage.
    fn role(poi: &Self::Poi) -> Role;

    /// Where control goes from a point of interest on its own: branch
    /// targets, and the fall-through of what may not branch or trap. A
    /// pointer branch or a stop has none (the planner stops there).
    fn successors(poi: &Self::Poi, push: &mut dyn FnMut(EdgeKind, Self::Start));

    /// Decodes the block at `start` through the guest's page tables,
    /// ending before any address in `stops` (sorted: a debugger's
    /// breakpoints). Never fails: unreadable or undecodable code is the
    /// block's end.
    fn scan_block(
        decoder: &Self::Decoder,
        mem: &dyn GuestMemory,
        start: Self::Start,
        stops: &[GuestVirt],
    ) -> Block<Self>;
}

/// 32-bit x86 (protected mode), decoded by iced-x86.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct X86;

impl Isa for X86 {
    type Start = GuestVirt;
    type Poi = Poi;
    type Config = ClassifyConfig;
    type Decoder = ClassifyConfig;
    const BREAKPOINTS: usize = 4;
    const LONGEST_INSTRUCTION: u32 = 15;

    fn decoder(config: &ClassifyConfig) -> Result<ClassifyConfig, PlannerError> {
        Ok(*config)
    }

    fn address(start: GuestVirt) -> GuestVirt {
        start
    }

    fn poi_start(poi: &Poi) -> GuestVirt {
        poi.at
    }

    fn role(poi: &Poi) -> Role {
        match poi.kind {
            PoiKind::CondBranch { .. }
            | PoiKind::DirectBranch { .. }
            | PoiKind::Sensitive {
                delivery: Delivery::TrapsOrFallsThrough,
                ..
            } => Role::Pass,
            PoiKind::Sensitive {
                delivery: Delivery::Traps,
                ..
            } => Role::SelfTrap,
            // A plain instruction never ends a block; listing it keeps the
            // match total and safe.
            PoiKind::Plain
            | PoiKind::Sensitive {
                delivery: Delivery::Silent,
                ..
            }
            | PoiKind::PointerBranch(_)
            | PoiKind::Unrecognized => Role::Stop,
        }
    }

    fn successors(poi: &Poi, push: &mut dyn FnMut(EdgeKind, GuestVirt)) {
        match poi.kind {
            PoiKind::CondBranch { taken } => {
                push(EdgeKind::Taken, taken);
                push(EdgeKind::NotTaken, poi.next());
            }
            PoiKind::DirectBranch { target, call } => {
                push(if call { EdgeKind::Call } else { EdgeKind::Jump }, target);
            }
            PoiKind::Sensitive {
                delivery: Delivery::TrapsOrFallsThrough,
                ..
            } => push(EdgeKind::NotTaken, poi.next()),
            _ => {}
        }
    }

    fn scan_block(
        decoder: &ClassifyConfig,
        mem: &dyn GuestMemory,
        start: GuestVirt,
        stops: &[GuestVirt],
    ) -> Block<Self> {
        scan_block_with_stops(mem, start, decoder, stops)
    }
}
