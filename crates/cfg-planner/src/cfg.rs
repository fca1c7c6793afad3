//! The control-flow graph of points of interest, built lazily from a start
//! address (dissertation 3.4.3).
//!
//! Written once for every instruction set ([`Isa`]). Nodes are POIs keyed
//! by where they are (the guest-virtual address; on ARM also the
//! instruction set and IT state), plus pseudo-nodes
//! for the entry (when the start is not itself a POI), for code that cannot
//! be fetched, and for the frontier where exploration stopped. Conditional
//! branches have a taken and a not-taken successor, direct jumps and calls
//! one (a call is followed into its callee: the return comes back through
//! the callee's `ret`, a pointer branch), everything else none.

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;

use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;

use btvmm_core::GuestVirt;

use crate::decode::{Block, BlockEnd, CodePage};
use crate::isa::{Isa, X86};
use crate::plan::{Role, choose_breakpoints};

/// A node of the CFG.
#[derive(Clone, Debug)]
pub struct CfgNode<I: Isa = X86> {
    /// Where a breakpoint on this node would go.
    pub at: I::Start,
    /// What is there.
    pub kind: NodeKind<I>,
}

impl<I: Isa + Copy> Copy for CfgNode<I> where I::Poi: Copy {}

/// What a CFG node stands for.
#[derive(Clone, Copy, Debug)]
pub enum NodeKind<I: Isa = X86> {
    /// The start address, when it is not a POI itself: plain code that
    /// runs into the first POI.
    Entry,
    /// A point of interest.
    Poi(I::Poi),
    /// Code that cannot be fetched through the guest's page tables.
    Unfetchable,
    /// A straight-line run longer than the decoder's block bound continues
    /// here.
    LongRun,
    /// Exploration stopped here (node budget reached): unknown code.
    Frontier,
    /// A debugger's breakpoint: execution must stop here.
    Breakpoint,
}

impl<I: Isa> CfgNode<I> {
    /// The node's meaning for breakpoint coverage.
    #[must_use]
    pub fn role(&self) -> Role {
        match &self.kind {
            NodeKind::Entry => Role::Pass,
            NodeKind::Poi(poi) => I::role(poi),
            NodeKind::Unfetchable
            | NodeKind::LongRun
            | NodeKind::Frontier
            | NodeKind::Breakpoint => Role::Stop,
        }
    }

    /// The guest-virtual address of the node.
    #[must_use]
    pub fn guest_virt(&self) -> GuestVirt {
        I::address(self.at)
    }
}

/// How one node leads to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum EdgeKind {
    /// Plain code from the entry to the first POI.
    Fallthrough,
    /// Conditional branch taken.
    Taken,
    /// Conditional branch not taken.
    NotTaken,
    /// Direct jump.
    Jump,
    /// Direct call, into the callee.
    Call,
}

/// A lazily explored CFG.
#[derive(Clone, Debug)]
pub struct Cfg<I: Isa = X86> {
    /// The graph.
    pub graph: DiGraph<CfgNode<I>, EdgeKind>,
    /// Where execution starts.
    pub root: NodeIndex,
    /// Guest pages the explored code came from.
    pub pages: Vec<CodePage>,
    /// Instructions decoded for this graph (blocks overlap, so this counts
    /// some instructions more than once).
    pub instructions: u64,
    index: HashMap<I::Start, NodeIndex>,
}

impl<I: Isa> Cfg<I> {
    /// Explores the CFG from `start` breadth-first, decoding blocks with
    /// `block`, until `node_limit` POI nodes exist; successors beyond the
    /// limit become [`NodeKind::Frontier`] nodes.
    pub fn explore(
        start: I::Start,
        node_limit: usize,
        mut block: impl FnMut(I::Start) -> std::sync::Arc<Block<I>>,
    ) -> Self {
        let mut cfg = Cfg {
            graph: DiGraph::new(),
            root: NodeIndex::new(0),
            pages: Vec::new(),
            instructions: 0,
            index: HashMap::default(),
        };
        let first = block(start);
        cfg.note_block(&first);
        let mut queue = VecDeque::new();
        let first_node = cfg.node_for_block_end(&first.end, &mut queue);
        cfg.root = if first.end.at() == start {
            first_node
        } else {
            let entry = cfg.graph.add_node(CfgNode {
                at: start,
                kind: NodeKind::Entry,
            });
            cfg.graph.add_edge(entry, first_node, EdgeKind::Fallthrough);
            entry
        };

        while let Some((from, edge, target)) = queue.pop_front() {
            let node = match cfg.index.get(&target) {
                Some(&node) => node,
                None if cfg.index.len() >= node_limit => cfg.add(target, NodeKind::Frontier),
                None => {
                    let found = block(target);
                    cfg.note_block(&found);
                    match cfg.index.get(&found.end.at()) {
                        // A new way into the run that ends at a known POI.
                        Some(&known) => known,
                        None => cfg.node_for_block_end(&found.end, &mut queue),
                    }
                }
            };
            cfg.graph.add_edge(from, node, edge);
        }
        cfg
    }

    fn note_block(&mut self, block: &Block<I>) {
        self.instructions += u64::from(block.instructions);
        for page in &block.pages {
            if !self.pages.contains(page) {
                self.pages.push(*page);
            }
        }
    }

    fn add(&mut self, at: I::Start, kind: NodeKind<I>) -> NodeIndex {
        let node = self.graph.add_node(CfgNode { at, kind });
        self.index.insert(at, node);
        node
    }

    /// The node for a block's end, created (with its successors queued) if
    /// it is new.
    fn node_for_block_end(
        &mut self,
        end: &BlockEnd<I>,
        queue: &mut VecDeque<(NodeIndex, EdgeKind, I::Start)>,
    ) -> NodeIndex {
        if let Some(&node) = self.index.get(&end.at()) {
            return node;
        }
        match end {
            BlockEnd::Unfetchable(at) => self.add(*at, NodeKind::Unfetchable),
            BlockEnd::TooLong(at) => self.add(*at, NodeKind::LongRun),
            BlockEnd::Breakpoint(at) => self.add(*at, NodeKind::Breakpoint),
            BlockEnd::Poi(poi) => {
                let node = self.add(I::poi_start(poi), NodeKind::Poi(poi.clone()));
                I::successors(poi, &mut |edge, target| {
                    queue.push_back((node, edge, target));
                });
                node
            }
        }
    }

    /// The graph reduced to coverage roles, for [`crate::plan`].
    #[must_use]
    pub fn roles(&self) -> DiGraph<Role, ()> {
        self.graph.map(|_, node| node.role(), |_, _| ())
    }

    /// Number of POI nodes (entry and frontier pseudo-nodes excluded).
    #[must_use]
    pub fn poi_count(&self) -> usize {
        self.graph
            .node_weights()
            .filter(|node| matches!(node.kind, NodeKind::Poi(_)))
            .count()
    }

    /// The breakpoints (addresses, sorted) that cover every path from the
    /// root with at most `budget`, or None; the root is armable only when
    /// `root_armable` and it is a point of interest (the entry
    /// pseudo-node stands for plain code ahead of the first one: arming
    /// that is as good).
    #[must_use]
    pub fn breakpoints(&self, root_armable: bool, budget: usize) -> Option<Vec<GuestVirt>> {
        let roles = self.roles();
        let root_armable = root_armable && !matches!(self.graph[self.root].kind, NodeKind::Entry);
        choose_breakpoints(&roles, self.root, root_armable, budget).map(|nodes| {
            let mut addresses: Vec<GuestVirt> = nodes
                .iter()
                .map(|&node| self.graph[node].guest_virt())
                .collect();
            addresses.sort_unstable();
            addresses
        })
    }
}
