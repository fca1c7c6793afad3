//! ARMv7 code to the planner's graph: blocks from [`crate::arm`]'s
//! classifier become a CFG of points of interest whose roles
//! ([`crate::plan::Role`]) feed the same breakpoint choice as on x86
//! ([`crate::plan::choose_breakpoints`]). A Cortex-A9 has 6 breakpoint
//! registers.
//!
//! Also a traversal of everything reachable from a set of entries (the
//! kernel's functions): ARM text mixes code with literal pools, which a
//! linear sweep would decode as instructions; following fall-throughs and
//! branch targets from function entries does not.
//!
//! How an ARM point of interest stops or passes (as [`crate::cfg::CfgNode::role`]
//! does for x86): unconditional direct branches and conditional branches
//! pass (their targets are followed); a sensitive instruction that traps
//! by itself stops on its own ([`Role::SelfTrap`]) when it always
//! executes, and traps or falls through when conditional (B1.9: a failed
//! condition may make it a NOP); silent sensitive instructions, SVC (a host
//! system call), pointer branches and undecodable code need a breakpoint
//! ([`Role::Stop`]).

use std::collections::{HashMap, HashSet, VecDeque};

use btvmm_core::GuestVirt;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;

use crate::arm::{ArmClassifier, ArmDelivery, ArmInstruction, ArmMode, ArmPoiKind};
use crate::cfg::EdgeKind;
use crate::plan::{Role, choose_breakpoints};

/// Most bytes one block is decoded from: a longer straight run continues
/// in a block of its own (x86's `TooLong`).
const MAX_BLOCK_BYTES: usize = 1024;

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

/// What a node stands for.
#[derive(Clone, Debug, Serialize)]
pub enum ArmNodeKind {
    /// The start, when it is not a POI itself.
    Entry,
    /// A point of interest (its text and kind).
    Poi {
        /// As capstone prints it.
        text: String,
        /// Its class.
        kind: ArmPoiKind,
        /// Conditional (condition field or IT block).
        conditional: bool,
    },
    /// Outside the code given.
    Unfetchable,
    /// A straight run past [`MAX_BLOCK_BYTES`] continues here.
    LongRun,
    /// Exploration stopped here (node budget).
    Frontier,
}

/// A node: where, in which instruction set, what.
#[derive(Clone, Debug, Serialize)]
pub struct ArmNode {
    /// Its address.
    pub at: GuestVirt,
    /// ARM or Thumb.
    pub mode: ArmMode,
    /// What is there.
    pub kind: ArmNodeKind,
}

impl ArmNode {
    /// The node's meaning for breakpoint coverage (module docs).
    #[must_use]
    pub fn role(&self) -> Role {
        match &self.kind {
            ArmNodeKind::Entry => Role::Pass,
            ArmNodeKind::Poi {
                kind, conditional, ..
            } => match kind {
                ArmPoiKind::DirectBranch { .. } | ArmPoiKind::CondBranch { .. } => Role::Pass,
                ArmPoiKind::Sensitive {
                    delivery: ArmDelivery::Traps,
                    ..
                } if *conditional => Role::Pass,
                ArmPoiKind::Sensitive {
                    delivery: ArmDelivery::Traps,
                    ..
                } => Role::SelfTrap,
                ArmPoiKind::Sensitive { .. }
                | ArmPoiKind::PointerBranch(_)
                | ArmPoiKind::Unrecognized
                | ArmPoiKind::Plain => Role::Stop,
            },
            ArmNodeKind::Unfetchable | ArmNodeKind::LongRun | ArmNodeKind::Frontier => Role::Stop,
        }
    }
}

/// The CFG of points of interest from one start.
#[derive(Clone, Debug)]
pub struct ArmCfg {
    /// The graph.
    pub graph: DiGraph<ArmNode, EdgeKind>,
    /// Where execution starts.
    pub root: NodeIndex,
    /// Instructions decoded for it.
    pub instructions: u64,
}

/// How a block ends, for the graph.
struct BlockEnd {
    at: GuestVirt,
    kind: ArmNodeKind,
    /// Successors: (edge, address, instruction set).
    successors: Vec<(EdgeKind, GuestVirt, ArmMode)>,
}

/// The block at `at` and how it ends.
fn block_end(
    classifier: &ArmClassifier,
    code: &ArmCode<'_>,
    at: GuestVirt,
    mode: ArmMode,
) -> (BlockEnd, u64) {
    let Some(bytes) = code.from(at) else {
        return (
            BlockEnd {
                at,
                kind: ArmNodeKind::Unfetchable,
                successors: Vec::new(),
            },
            0,
        );
    };
    let window = &bytes[..bytes.len().min(MAX_BLOCK_BYTES)];
    let block = classifier.scan_block(mode, at, window);
    let decoded = block.len() as u64;
    let Some(last) = block.last().filter(|last| last.kind.is_poi()) else {
        let next = block.last().map_or(at, ArmInstruction::fall_through);
        let kind = if window.len() < bytes.len() {
            ArmNodeKind::LongRun
        } else {
            ArmNodeKind::Unfetchable
        };
        return (
            BlockEnd {
                at: next,
                kind,
                successors: Vec::new(),
            },
            decoded,
        );
    };
    let node = ArmNodeKind::Poi {
        text: last.text.clone(),
        kind: last.kind,
        conditional: last.conditional,
    };
    let fall = (EdgeKind::NotTaken, last.fall_through(), mode);
    let successors = match last.kind {
        ArmPoiKind::DirectBranch {
            target,
            link,
            target_mode,
        } => {
            let edge = if link { EdgeKind::Call } else { EdgeKind::Jump };
            vec![(edge, target, target_mode)]
        }
        ArmPoiKind::CondBranch {
            taken, target_mode, ..
        } => vec![(EdgeKind::Taken, taken, target_mode), fall],
        ArmPoiKind::Sensitive {
            delivery: ArmDelivery::Traps,
            ..
        } if last.conditional => vec![fall],
        _ => Vec::new(),
    };
    (
        BlockEnd {
            at: last.guest_virt,
            kind: node,
            successors,
        },
        decoded,
    )
}

/// Explores the CFG from `start` breadth-first until `node_limit` nodes
/// exist; successors beyond become [`ArmNodeKind::Frontier`].
#[must_use]
pub fn explore(
    classifier: &ArmClassifier,
    code: &ArmCode<'_>,
    start: GuestVirt,
    mode: ArmMode,
    node_limit: usize,
) -> ArmCfg {
    let mut graph = DiGraph::new();
    let mut index: HashMap<(GuestVirt, ArmMode), NodeIndex> = HashMap::new();
    let mut queue = VecDeque::new();
    let mut instructions = 0;
    let mut node_for = |graph: &mut DiGraph<ArmNode, EdgeKind>,
                        queue: &mut VecDeque<(NodeIndex, EdgeKind, GuestVirt, ArmMode)>,
                        end: BlockEnd,
                        mode: ArmMode| {
        if let Some(&node) = index.get(&(end.at, mode)) {
            return node;
        }
        let node = graph.add_node(ArmNode {
            at: end.at,
            mode,
            kind: end.kind,
        });
        index.insert((end.at, mode), node);
        for (edge, target, target_mode) in end.successors {
            queue.push_back((node, edge, target, target_mode));
        }
        node
    };
    let (first, decoded) = block_end(classifier, code, start, mode);
    instructions += decoded;
    let first_at = first.at;
    let first_node = node_for(&mut graph, &mut queue, first, mode);
    let root = if first_at == start {
        first_node
    } else {
        let entry = graph.add_node(ArmNode {
            at: start,
            mode,
            kind: ArmNodeKind::Entry,
        });
        graph.add_edge(entry, first_node, EdgeKind::Fallthrough);
        entry
    };
    let mut starts: HashMap<(GuestVirt, ArmMode), NodeIndex> = HashMap::new();
    while let Some((from, edge, target, target_mode)) = queue.pop_front() {
        let node = if let Some(&node) = starts.get(&(target, target_mode)) {
            node
        } else if graph.node_count() >= node_limit {
            graph.add_node(ArmNode {
                at: target,
                mode: target_mode,
                kind: ArmNodeKind::Frontier,
            })
        } else {
            let (end, decoded) = block_end(classifier, code, target, target_mode);
            instructions += decoded;
            let node = node_for(&mut graph, &mut queue, end, target_mode);
            starts.insert((target, target_mode), node);
            node
        };
        graph.add_edge(from, node, edge);
    }
    ArmCfg {
        graph,
        root,
        instructions,
    }
}

impl ArmCfg {
    /// The graph reduced to coverage roles.
    #[must_use]
    pub fn roles(&self) -> DiGraph<Role, ()> {
        self.graph.map(|_, node| node.role(), |_, _| ())
    }

    /// Points of interest in the graph.
    #[must_use]
    pub fn poi_count(&self) -> usize {
        self.graph
            .node_weights()
            .filter(|node| matches!(node.kind, ArmNodeKind::Poi { .. }))
            .count()
    }

    /// The breakpoints (addresses, sorted) that cover every path from the
    /// start with at most `budget`, or None; the start itself is not
    /// armable (the guest resumes there).
    #[must_use]
    pub fn plan(&self, budget: usize) -> Option<Vec<GuestVirt>> {
        let roles = self.roles();
        choose_breakpoints(&roles, self.root, false, budget).map(|nodes| {
            let mut addresses: Vec<GuestVirt> =
                nodes.iter().map(|&node| self.graph[node].at).collect();
            addresses.sort_unstable();
            addresses
        })
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
                    kind: crate::arm::ArmSensitiveKind::ExceptionReturn,
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
    use super::*;

    fn words(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|word| word.to_le_bytes()).collect()
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
        let code = ArmCode {
            base: GuestVirt(0x1000),
            bytes: &bytes,
        };
        let classifier = ArmClassifier::new().expect("capstone");
        let cfg = explore(&classifier, &code, GuestVirt(0x1000), ArmMode::Arm, 64);
        assert_eq!(cfg.poi_count(), 3, "bne, mcrne, mrs: {:?}", cfg.graph);
        // The loop and the conditional MCR pass (it traps or falls
        // through): one breakpoint on the MRS covers everything.
        assert_eq!(cfg.plan(1), Some(vec![GuestVirt(0x1014)]));
        // Resumed on the MRS or the BX itself: no plan (emulated first).
        for at in [0x1014, 0x1018] {
            let here = explore(&classifier, &code, GuestVirt(at), ArmMode::Arm, 64);
            assert_eq!(here.plan(1), None, "{at:#x}");
        }
        // An unconditional MCR traps by itself: nothing to arm after it.
        let mut trapping = bytes.clone();
        trapping[16..20].copy_from_slice(&0xee07_0f15u32.to_le_bytes());
        let code = ArmCode {
            base: GuestVirt(0x1000),
            bytes: &trapping,
        };
        let cfg = explore(&classifier, &code, GuestVirt(0x1000), ArmMode::Arm, 64);
        assert_eq!(cfg.plan(1), Some(Vec::new()));
        let code = ArmCode {
            base: GuestVirt(0x1000),
            bytes: &bytes,
        };
        let reached = reachable(&classifier, &code, &[(GuestVirt(0x1000), ArmMode::Arm)]);
        assert_eq!(reached.len(), 7);
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
