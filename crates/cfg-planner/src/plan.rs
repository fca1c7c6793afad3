//! Choosing where the hardware breakpoints go.
//!
//! The problem, on a graph of points of interest: from the root (where the
//! guest resumes), every path must reach an armed node before it reaches a
//! node that must not run unobserved ([`Role::Stop`]: sensitive-silent
//! instructions, pointer branches, undecodable or unexplored code). Nodes
//! that trap by themselves ([`Role::SelfTrap`]) end a path for free. With N
//! breakpoints we want the set of at most N armed nodes that lets the guest
//! run as far as possible before the next trap.
//!
//! The dissertation's BFS (3.4.3) walks the graph spending one breakpoint
//! per stop and, when a single breakpoint is left, spends it on the next
//! conditional branch. It can run out of breakpoints with a branch still
//! unexplored and leave that region uncovered. We keep its preference for
//! arming deep, and make the result always safe:
//!
//! 1. Arm every reachable stop if there are at most N of them (as deep as
//!    it gets).
//! 2. Otherwise pull the armed set towards the root, one merge at a time:
//!    replace the armed nodes that one node dominates (every path to them
//!    passes through it) by that node, choosing the deepest such node in the
//!    dominator tree. This is the dissertation's "arm the conditional branch
//!    that leads to the region" generalised to any shape of graph; on its
//!    fig. 3.3 it gives exactly its answers.
//! 3. If no single node merges two armed nodes and there are still too many,
//!    take a minimum vertex cut between the root and the stops (max-flow on
//!    the split graph), the one closest to the stops.
//! 4. If even that needs more than N (only when the root itself may not be
//!    armed, e.g. a conditional branch at the resume point with one
//!    breakpoint), there is no safe plan: the caller must step the root
//!    instruction itself.
//!
//! Every result is checked against the invariant by construction (armed
//! sets only shrink by domination or by a cut), and the property tests
//! check it against a brute-force path walker.

use std::collections::VecDeque;

use rustc_hash::{FxHashMap, FxHashSet as HashSet};

use petgraph::Direction;
use petgraph::algo::dinics;
use petgraph::algo::dominators::simple_fast;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

/// What a node means for coverage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Runs natively and continues to its successors (conditional and
    /// direct branches, the entry point).
    Pass,
    /// Must be armed, or cut off by an armed node before it.
    Stop,
    /// Traps by itself when it executes: ends the path, needs nothing.
    SelfTrap,
}

/// Chooses at most `budget` nodes to arm so that every path from `root`
/// reaches an armed node before any [`Role::Stop`] node runs.
///
/// `root_armable` says whether a breakpoint on the root itself would fire:
/// false when the guest resumes *at* the root with EFLAGS.RF set, so the
/// root's own breakpoint is skipped once. Nodes in `unarmable` can never be
/// armed either (the caller's pseudo-nodes).
///
/// Returns `None` when no safe plan within the budget exists.
#[must_use]
pub fn choose_breakpoints(
    graph: &DiGraph<Role, ()>,
    root: NodeIndex,
    root_armable: bool,
    budget: usize,
) -> Option<Vec<NodeIndex>> {
    let armable = |node: NodeIndex| node != root || root_armable;
    if graph[root] == Role::Stop {
        return (root_armable && budget >= 1).then(|| vec![root]);
    }

    let reachable = reachable_from(graph, root);
    let mut armed: Vec<NodeIndex> = reachable
        .iter()
        .copied()
        .filter(|&node| graph[node] == Role::Stop)
        .collect();
    if armed.len() <= budget {
        return Some(armed);
    }

    // Step 2: merge by dominators, deepest first.
    let tree = DominatorTree::new(graph, root, &reachable);
    loop {
        if armed.len() <= budget {
            return Some(armed);
        }
        // How many armed nodes each node strictly dominates: walk up from
        // every armed node (linear in armed nodes times tree depth).
        let mut merged = vec![0usize; graph.node_count()];
        for &member in &armed {
            let mut ancestor = tree.parent(member);
            while let Some(node) = ancestor {
                merged[node.index()] += 1;
                ancestor = tree.parent(node);
            }
        }
        let best = reachable
            .iter()
            .copied()
            .filter(|&node| {
                merged[node.index()] >= 2
                    && armable(node)
                    && graph[node] == Role::Pass
                    && !armed.contains(&node)
            })
            // Deepest first; among equals, the bigger merge; then the lowest
            // index for determinism.
            .max_by_key(|&node| {
                (
                    tree.depth(node),
                    merged[node.index()],
                    std::cmp::Reverse(node),
                )
            });
        let Some(merger) = best else { break };
        armed.retain(|&member| !tree.strictly_dominates(merger, member));
        armed.push(merger);
        armed = needed_members(graph, root, &armed);
    }

    // Step 3: a minimum cut, as close to the stops as possible.
    let cut = min_cut_near_stops(graph, root, root_armable, &reachable);
    (cut.len() <= budget).then_some(cut)
}

fn reachable_from(graph: &DiGraph<Role, ()>, root: NodeIndex) -> Vec<NodeIndex> {
    let mut seen = HashSet::from_iter([root]);
    let mut order = vec![root];
    let mut queue = VecDeque::from([root]);
    while let Some(node) = queue.pop_front() {
        for next in graph.neighbors_directed(node, Direction::Outgoing) {
            if seen.insert(next) {
                order.push(next);
                queue.push_back(next);
            }
        }
    }
    order
}

/// The dominator tree of the reachable graph with constant-time
/// dominance queries (entry/exit numbers of a depth-first walk).
struct DominatorTree {
    parent: Vec<Option<NodeIndex>>,
    depth: Vec<usize>,
    enter: Vec<usize>,
    exit: Vec<usize>,
}

impl DominatorTree {
    fn new(graph: &DiGraph<Role, ()>, root: NodeIndex, reachable: &[NodeIndex]) -> Self {
        let dominators = simple_fast(graph, root);
        let count = graph.node_count();
        let mut parent = vec![None; count];
        let mut children: Vec<Vec<NodeIndex>> = vec![Vec::new(); count];
        for &node in reachable {
            if let Some(idom) = dominators.immediate_dominator(node) {
                parent[node.index()] = Some(idom);
                children[idom.index()].push(node);
            }
        }
        let mut depth = vec![0; count];
        let mut enter = vec![0; count];
        let mut exit = vec![0; count];
        let mut clock = 0;
        // Iterative DFS: (node, next child index).
        let mut stack = vec![(root, 0usize)];
        enter[root.index()] = clock;
        clock += 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&child) = children[node.index()].get(*next) {
                *next += 1;
                depth[child.index()] = depth[node.index()] + 1;
                enter[child.index()] = clock;
                clock += 1;
                stack.push((child, 0));
            } else {
                exit[node.index()] = clock;
                clock += 1;
                stack.pop();
            }
        }
        Self {
            parent,
            depth,
            enter,
            exit,
        }
    }

    fn parent(&self, node: NodeIndex) -> Option<NodeIndex> {
        self.parent[node.index()]
    }

    fn depth(&self, node: NodeIndex) -> usize {
        self.depth[node.index()]
    }

    fn strictly_dominates(&self, over: NodeIndex, node: NodeIndex) -> bool {
        over != node
            && self.enter[over.index()] <= self.enter[node.index()]
            && self.exit[node.index()] <= self.exit[over.index()]
    }
}

/// The members of `armed` that some path from the root reaches before any
/// other member; the rest are redundant (every path to them already passed
/// an armed node).
fn needed_members(
    graph: &DiGraph<Role, ()>,
    root: NodeIndex,
    armed: &[NodeIndex],
) -> Vec<NodeIndex> {
    let armed_set: HashSet<NodeIndex> = armed.iter().copied().collect();
    if armed_set.contains(&root) {
        return vec![root];
    }
    let mut seen = HashSet::from_iter([root]);
    let mut queue = VecDeque::from([root]);
    let mut needed = Vec::new();
    while let Some(node) = queue.pop_front() {
        for next in graph.neighbors_directed(node, Direction::Outgoing) {
            if seen.insert(next) {
                if armed_set.contains(&next) {
                    needed.push(next);
                } else {
                    queue.push_back(next);
                }
            }
        }
    }
    needed
}

/// Minimum vertex cut separating the root from every stop, the one closest
/// to the stops: max-flow on the graph with each node split into in/out
/// halves (capacity 1 for armable nodes, unbounded for the root when it
/// cannot be armed), then the nodes whose out-half can still reach the sink
/// in the residual graph while their in-half cannot.
fn min_cut_near_stops(
    graph: &DiGraph<Role, ()>,
    root: NodeIndex,
    root_armable: bool,
    reachable: &[NodeIndex],
) -> Vec<NodeIndex> {
    const UNBOUNDED: u32 = 1 << 20;
    let mut flow_graph: DiGraph<(), u32> = DiGraph::new();
    let mut halves = FxHashMap::default();
    for &node in reachable {
        let node_in = flow_graph.add_node(());
        let node_out = flow_graph.add_node(());
        let capacity = if node == root && !root_armable {
            UNBOUNDED
        } else {
            1
        };
        flow_graph.add_edge(node_in, node_out, capacity);
        halves.insert(node, (node_in, node_out));
    }
    let sink = flow_graph.add_node(());
    for &node in reachable {
        let (_, node_out) = halves[&node];
        match graph[node] {
            Role::Stop => {
                flow_graph.add_edge(node_out, sink, UNBOUNDED);
            }
            Role::Pass => {
                for next in graph.neighbors_directed(node, Direction::Outgoing) {
                    let (next_in, _) = halves[&next];
                    flow_graph.add_edge(node_out, next_in, UNBOUNDED);
                }
            }
            Role::SelfTrap => {}
        }
    }
    let (root_in, _) = halves[&root];
    let (_, flows) = dinics(&flow_graph, root_in, sink);

    // Nodes that can reach the sink in the residual graph: walk backwards
    // from the sink over residual capacity.
    let mut reaches_sink = HashSet::from_iter([sink]);
    let mut queue = VecDeque::from([sink]);
    while let Some(node) = queue.pop_front() {
        for edge in flow_graph.edges_directed(node, Direction::Incoming) {
            let flow = flows[edge.id().index()];
            if flow < *edge.weight() && reaches_sink.insert(edge.source()) {
                queue.push_back(edge.source());
            }
        }
        for edge in flow_graph.edges_directed(node, Direction::Outgoing) {
            let flow = flows[edge.id().index()];
            if flow > 0 && reaches_sink.insert(edge.target()) {
                queue.push_back(edge.target());
            }
        }
    }
    reachable
        .iter()
        .copied()
        .filter(|node| {
            let (node_in, node_out) = halves[node];
            !reaches_sink.contains(&node_in) && reaches_sink.contains(&node_out)
        })
        .collect()
}

/// Checks a plan by brute force: walks every path from the root and reports
/// the first stop reached without passing an armed node. `None` means the
/// plan is safe. Meant for tests and debug assertions; linear in the graph.
#[must_use]
pub fn uncovered_stop(
    graph: &DiGraph<Role, ()>,
    root: NodeIndex,
    root_armable: bool,
    armed: &[NodeIndex],
) -> Option<NodeIndex> {
    let armed: HashSet<NodeIndex> = armed.iter().copied().collect();
    if root_armable && armed.contains(&root) {
        return None;
    }
    let mut seen = HashSet::from_iter([root]);
    let mut queue = VecDeque::from([root]);
    while let Some(node) = queue.pop_front() {
        match graph[node] {
            Role::Stop => return Some(node),
            Role::SelfTrap => continue,
            Role::Pass => {}
        }
        for next in graph.neighbors_directed(node, Direction::Outgoing) {
            if !armed.contains(&next) && seen.insert(next) {
                queue.push_back(next);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The dissertation's fig. 3.3: code runs into conditional branch 1,
    /// whose one side reaches pointer branch 1 and whose other side reaches
    /// conditional branch 2; that one's sides reach the sensitive
    /// instruction and pointer branch 2.
    struct Fig33 {
        graph: DiGraph<Role, ()>,
        entry: NodeIndex,
        cond1: NodeIndex,
        cond2: NodeIndex,
        pointer1: NodeIndex,
        pointer2: NodeIndex,
        sensitive: NodeIndex,
    }

    fn fig_3_3() -> Fig33 {
        let mut graph = DiGraph::new();
        let entry = graph.add_node(Role::Pass);
        let cond1 = graph.add_node(Role::Pass);
        let cond2 = graph.add_node(Role::Pass);
        let pointer1 = graph.add_node(Role::Stop);
        let pointer2 = graph.add_node(Role::Stop);
        let sensitive = graph.add_node(Role::Stop);
        link(
            &mut graph,
            [
                (entry, cond1),
                (cond1, pointer1),
                (cond1, cond2),
                (cond2, sensitive),
                (cond2, pointer2),
            ],
        );
        Fig33 {
            graph,
            entry,
            cond1,
            cond2,
            pointer1,
            pointer2,
            sensitive,
        }
    }

    fn link<const N: usize>(graph: &mut DiGraph<Role, ()>, edges: [(NodeIndex, NodeIndex); N]) {
        for (from, to) in edges {
            graph.add_edge(from, to, ());
        }
    }

    fn sorted(mut nodes: Vec<NodeIndex>) -> Vec<NodeIndex> {
        nodes.sort();
        nodes
    }

    #[test]
    fn fig_3_3_with_three_breakpoints_arms_the_three_stops() {
        let f = fig_3_3();
        let plan = choose_breakpoints(&f.graph, f.entry, false, 3).expect("plan");
        assert_eq!(
            sorted(plan),
            sorted(vec![f.sensitive, f.pointer1, f.pointer2])
        );
    }

    #[test]
    fn fig_3_3_with_two_breakpoints_arms_cond2_and_pointer1() {
        let f = fig_3_3();
        let plan = choose_breakpoints(&f.graph, f.entry, false, 2).expect("plan");
        assert_eq!(sorted(plan), sorted(vec![f.cond2, f.pointer1]));
    }

    #[test]
    fn fig_3_3_with_one_breakpoint_arms_cond1() {
        let f = fig_3_3();
        let plan = choose_breakpoints(&f.graph, f.entry, false, 1).expect("plan");
        assert_eq!(plan, vec![f.cond1]);
    }

    #[test]
    fn fig_3_3_resumed_at_cond1_with_one_breakpoint_has_no_plan() {
        // Resuming *at* conditional branch 1 with RF set: its breakpoint
        // would be skipped, and one breakpoint cannot cover both sides.
        let f = fig_3_3();
        assert_eq!(choose_breakpoints(&f.graph, f.cond1, false, 1), None);
        let plan = choose_breakpoints(&f.graph, f.cond1, false, 2).expect("plan");
        assert_eq!(sorted(plan), sorted(vec![f.cond2, f.pointer1]));
    }

    #[test]
    fn a_loop_without_stops_needs_no_breakpoint() {
        let mut graph = DiGraph::new();
        let head = graph.add_node(Role::Pass);
        let body = graph.add_node(Role::Pass);
        link(&mut graph, [(head, body), (body, head)]);
        assert_eq!(choose_breakpoints(&graph, head, false, 1), Some(vec![]));
    }

    #[test]
    fn a_loop_with_an_exit_arms_the_exit() {
        // head: jcc body / exit; body: jmp head; exit: ret
        let mut graph = DiGraph::new();
        let head = graph.add_node(Role::Pass);
        let body = graph.add_node(Role::Pass);
        let exit = graph.add_node(Role::Stop);
        link(&mut graph, [(head, body), (body, head), (head, exit)]);
        assert_eq!(choose_breakpoints(&graph, head, false, 1), Some(vec![exit]));
    }

    #[test]
    fn self_trapping_instructions_cost_nothing() {
        let mut graph = DiGraph::new();
        let cond = graph.add_node(Role::Pass);
        let cli = graph.add_node(Role::SelfTrap);
        let ret = graph.add_node(Role::Stop);
        link(&mut graph, [(cond, cli), (cond, ret)]);
        assert_eq!(choose_breakpoints(&graph, cond, false, 1), Some(vec![ret]));
    }

    #[test]
    fn shared_stops_fall_back_to_a_cut() {
        // root -> a, b; a -> t1, t2; b -> t2, t3. No node but the root
        // dominates two stops; {a, b} is the cut.
        let mut graph = DiGraph::new();
        let root = graph.add_node(Role::Pass);
        let a = graph.add_node(Role::Pass);
        let b = graph.add_node(Role::Pass);
        let t1 = graph.add_node(Role::Stop);
        let t2 = graph.add_node(Role::Stop);
        let t3 = graph.add_node(Role::Stop);
        link(
            &mut graph,
            [(root, a), (root, b), (a, t1), (a, t2), (b, t2), (b, t3)],
        );
        let plan = choose_breakpoints(&graph, root, false, 2).expect("plan");
        assert_eq!(sorted(plan), sorted(vec![a, b]));
        assert_eq!(choose_breakpoints(&graph, root, false, 1), None);
        assert_eq!(choose_breakpoints(&graph, root, true, 1), Some(vec![root]));
    }

    #[test]
    fn a_stop_at_the_root_must_be_stepped() {
        let mut graph = DiGraph::new();
        let root = graph.add_node(Role::Stop);
        assert_eq!(choose_breakpoints(&graph, root, false, 4), None);
        assert_eq!(choose_breakpoints(&graph, root, true, 4), Some(vec![root]));
    }

    /// A random graph of `roles.len()` nodes: Pass nodes get up to two
    /// successors (a conditional branch), the others none.
    fn build(roles: &[Role], edges: &[(usize, usize)]) -> DiGraph<Role, ()> {
        let mut graph = DiGraph::new();
        let nodes: Vec<_> = roles.iter().map(|&role| graph.add_node(role)).collect();
        let mut out_degree = vec![0; roles.len()];
        for &(from, to) in edges {
            let (from, to) = (from % roles.len(), to % roles.len());
            if roles[from] == Role::Pass && out_degree[from] < 2 {
                graph.add_edge(nodes[from], nodes[to], ());
                out_degree[from] += 1;
            }
        }
        graph
    }

    /// Is there any safe plan of at most `budget` nodes? Exhaustive.
    fn some_plan_exists(
        graph: &DiGraph<Role, ()>,
        root: NodeIndex,
        root_armable: bool,
        budget: usize,
    ) -> bool {
        let nodes: Vec<NodeIndex> = graph.node_indices().collect();
        let n = nodes.len();
        (0u32..1 << n).any(|mask| {
            let armed: Vec<NodeIndex> = (0..n)
                .filter(|bit| mask & (1 << bit) != 0)
                .map(|bit| nodes[bit])
                .collect();
            armed.len() <= budget
                && armed.iter().all(|&node| node != root || root_armable)
                && uncovered_stop(graph, root, root_armable, &armed).is_none()
        })
    }

    fn role() -> impl Strategy<Value = Role> {
        prop_oneof![4 => Just(Role::Pass), 3 => Just(Role::Stop), 1 => Just(Role::SelfTrap)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The invariant: a plan never leaves a path uncovered, never
        /// exceeds the budget, never arms an unarmable root, and exists
        /// whenever any safe plan exists.
        #[test]
        fn plans_never_leave_a_path_uncovered(
            roles in proptest::collection::vec(role(), 1..12),
            edges in proptest::collection::vec((0usize..12, 0usize..12), 0..24),
            budget in 1usize..=6,
            root_armable in any::<bool>(),
        ) {
            let graph = build(&roles, &edges);
            let root = NodeIndex::new(0);
            let plan = choose_breakpoints(&graph, root, root_armable, budget);
            match plan {
                Some(armed) => {
                    prop_assert!(armed.len() <= budget);
                    prop_assert!(root_armable || !armed.contains(&root));
                    prop_assert_eq!(uncovered_stop(&graph, root, root_armable, &armed), None);
                }
                None => prop_assert!(!some_plan_exists(&graph, root, root_armable, budget)),
            }
        }
    }
}
