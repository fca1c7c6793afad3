//! Fuzz targets for the planner: its decoder, its CFG exploration, its
//! breakpoint plans, the step decision and the caches, on random code.
//!
//! Guest memory is a few pages at random guest-virtual addresses (near each
//! other, at address 0 and at the top of the address space, so that code
//! runs across page ends and around the 4 GiB wrap), each with its own
//! guest-physical page, filled with random bytes or with a soup of real
//! instructions (branches between the pages, pointer branches, sensitive
//! instructions, prefixes, undecodable bytes). Entry points are anywhere in
//! those pages and now and then outside them. The planner decodes 32-bit
//! code only; CPU states with a 16-bit code segment or stack are part of
//! the step target.
//!
//! Properties: nothing panics or hangs; a block is exactly what decoding
//! one instruction at a time from its start gives (the decoder reads code
//! in chunks across pages); every CFG node sits at an instruction boundary
//! the decoder produced and every edge goes where its branch says; a plan
//! arms at most its budget, only addresses of CFG nodes, not the resume
//! point's own node when it may not arm it, and leaves no path from the
//! resume point to a node that must not run unobserved; the step decision
//! matches a fresh planner's and never needs a single step; after code or
//! a mapping changes and is invalidated, cached answers match a fresh
//! planner's.
//!
//! A short run by default (CI); `PROPTEST_CASES=N` runs N cases per
//! target. Failures are not persisted (`failure_persistence: None`): a bug
//! found here gets a plain regression test next to its fix.

use std::collections::{BTreeSet, VecDeque};

use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction};
use proptest::prelude::*;
use proptest::sample::{Index, select};

use btvmm_core::{
    CpuView, Eflags, GuestMemory, GuestPhys, GuestVirt, PAGE_SIZE, RegionMemory, SegReg,
};
use cfg_planner::decode::{MAX_BLOCK_INSTRUCTIONS, scan_block};
use cfg_planner::plan::{Role, uncovered_stop};
use cfg_planner::{
    BlockEnd, ClassifyConfig, NodeKind, Planner, PlannerConfig, PoiKind, Step, X86, classify,
};

// The case count (PROPTEST_CASES) and the hang limit every fuzz target
// shares.
#[path = "../../../tests/support/fuzz.rs"]
mod fuzz;
use fuzz::{HANG, config, within};

// ---------------------------------------------------------------------
// Guest code.

// Instructions the soup is made of, each with the size of the
// displacement at its end (filled in at random).

/// Plain code.
const PLAIN: &[(&[u8], usize)] = &[
    (&[0x90], 0),                   // nop
    (&[0xb8, 1, 0, 0, 0], 0),       // mov eax, 1
    (&[0x01, 0xc8], 0),             // add eax, ecx
    (&[0x85, 0xc0], 0),             // test eax, eax
    (&[0x83, 0xf9, 0x03], 0),       // cmp ecx, 3
    (&[0x55], 0),                   // push ebp
    (&[0x5d], 0),                   // pop ebp
    (&[0x89, 0xe5], 0),             // mov ebp, esp
    (&[0x8b, 0x44, 0x24, 0x04], 0), // mov eax, [esp+4]
    (&[0xf3, 0xa5], 0),             // rep movsd
    (&[0x0f, 0xaf, 0xc1], 0),       // imul eax, ecx
    (&[0x66, 0x0f, 0x6f, 0xc1], 0), // movdqa xmm0, xmm1
    (&[0xd9, 0xc9], 0),             // fxch
];

/// Direct and conditional branches.
const BRANCHES: &[(&[u8], usize)] = &[
    (&[0x74, 0], 1),                // je rel8
    (&[0x75, 0], 1),                // jne rel8
    (&[0x72, 0], 1),                // jb rel8
    (&[0xe2, 0], 1),                // loop rel8
    (&[0xe3, 0], 1),                // jecxz rel8
    (&[0x0f, 0x84, 0, 0, 0, 0], 4), // je rel32
    (&[0x66, 0x0f, 0x85, 0, 0], 2), // jne rel16
    (&[0xeb, 0], 1),                // jmp rel8
    (&[0xe9, 0, 0, 0, 0], 4),       // jmp rel32
    (&[0xe8, 0, 0, 0, 0], 4),       // call rel32
    (&[0x66, 0xe8, 0, 0], 2),       // call rel16
];

/// Pointer branches, sensitive instructions, undecodable bytes, prefixes.
const OTHERS: &[(&[u8], usize)] = &[
    (&[0xc3], 0),                                  // ret
    (&[0xc2, 0x08, 0x00], 0),                      // ret 8
    (&[0x66, 0xc3], 0),                            // retw
    (&[0xff, 0xe0], 0),                            // jmp eax
    (&[0xff, 0xd0], 0),                            // call eax
    (&[0xff, 0x13], 0),                            // call [ebx]
    (&[0xff, 0x64, 0x24, 0x04], 0),                // jmp [esp+4]
    (&[0x3e, 0xff, 0x24, 0x8d, 0, 0x10, 0, 0], 0), // jmp [ds:ecx*4+0x1000]
    (&[0x9c], 0),                                  // pushfd
    (&[0x9d], 0),                                  // popfd
    (&[0xfa], 0),                                  // cli
    (&[0xfb], 0),                                  // sti
    (&[0xf4], 0),                                  // hlt
    (&[0xec], 0),                                  // in al, dx
    (&[0xee], 0),                                  // out dx, al
    (&[0xcc], 0),                                  // int3
    (&[0xcd, 0x80], 0),                            // int 0x80
    (&[0xce], 0),                                  // into
    (&[0xcf], 0),                                  // iretd
    (&[0xcb], 0),                                  // retf
    (&[0xea, 0, 0, 0, 0, 0x10, 0], 0),             // jmp far 0x10:0
    (&[0x9a, 0, 0, 0, 0, 0x10, 0], 0),             // call far 0x10:0
    (&[0x0f, 0x01, 0x10], 0),                      // lgdt [eax]
    (&[0x0f, 0x01, 0x00], 0),                      // sgdt [eax]
    (&[0x0f, 0x01, 0xe0], 0),                      // smsw eax
    (&[0x0f, 0x00, 0xc8], 0),                      // str eax
    (&[0x0f, 0x20, 0xc0], 0),                      // mov eax, cr0
    (&[0x0f, 0x22, 0xd8], 0),                      // mov cr3, eax
    (&[0x8c, 0xc8], 0),                            // mov eax, cs
    (&[0x8e, 0xd8], 0),                            // mov ds, eax
    (&[0x0e], 0),                                  // push cs
    (&[0x1f], 0),                                  // pop ds
    (&[0x0f, 0xa2], 0),                            // cpuid
    (&[0x0f, 0x31], 0),                            // rdtsc
    (&[0x0f, 0x01, 0x38], 0),                      // invlpg [eax]
    (&[0x0f, 0x09], 0),                            // wbinvd
    (&[0x0f, 0x02, 0xc1], 0),                      // lar eax, ecx
    (&[0x0f, 0x0b], 0),                            // ud2
    (&[0xf0, 0x90], 0),                            // lock nop (undecodable)
    (&[0x66], 0),                                  // operand-size prefix
    (&[0x67], 0),                                  // address-size prefix
    (&[0xf3], 0),                                  // rep prefix
    (&[0x26], 0),                                  // es: prefix
];

/// One piece of soup: an instruction and a displacement for its branch.
/// Mostly plain code, so that CFGs grow past a few nodes.
fn soup_piece() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![16 => select(PLAIN), 6 => select(BRANCHES), 1 => select(OTHERS)],
        prop_oneof![
            4 => 0i32..0x40,
            2 => -0x40i32..0,
            1 => -0x3000i32..0x3000,
            1 => any::<i32>(),
        ],
    )
        .prop_map(|((template, rel), displacement)| {
            let mut bytes = template.to_vec();
            let len = bytes.len();
            let displacement = displacement.to_le_bytes();
            bytes[len - rel..].copy_from_slice(&displacement[..rel]);
            bytes
        })
}

/// A page of code: random bytes or soup (cut at the page end, or padded
/// with a random byte).
fn page_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), PAGE_SIZE as usize),
        4 => (proptest::collection::vec(soup_piece(), 1000..2500), any::<u8>()).prop_map(
            |(pieces, fill)| {
                let mut page = pieces.concat();
                page.resize(PAGE_SIZE as usize, fill);
                page
            },
        ),
    ]
}

/// Guest-virtual page numbers: close together (branches reach each
/// other), page 0 and the top page (the 4 GiB wrap), anywhere.
fn virt_page() -> impl Strategy<Value = u32> {
    prop_oneof![
        6 => 0x10u32..0x18,
        1 => Just(0u32),
        1 => Just(0xf_ffffu32),
        1 => 0u32..0x10_0000,
    ]
}

/// A small guest memory: `(virtual page, physical page, bytes)`, distinct
/// virtual pages (a run of consecutive ones, and a few more), each with a
/// physical page of its own.
#[derive(Clone, Debug)]
struct Code {
    pages: Vec<(u32, u32, Vec<u8>)>,
}

fn code() -> impl Strategy<Value = Code> {
    (
        virt_page(),
        proptest::collection::vec(page_bytes(), 1..4),
        proptest::collection::vec((virt_page(), page_bytes()), 0..3),
    )
        .prop_map(|(first, run, others)| {
            // A run of consecutive pages, then a few anywhere.
            let run = run.into_iter().enumerate().map(|(index, bytes)| {
                (
                    first.wrapping_add(u32::try_from(index).expect("a few")) & 0xf_ffff,
                    bytes,
                )
            });
            let mut seen = BTreeSet::new();
            let pages = run
                .chain(others)
                .filter(|(virt, _)| seen.insert(*virt))
                .enumerate()
                .map(|(index, (virt, bytes))| {
                    (virt, 0x100 + u32::try_from(index).expect("a few"), bytes)
                })
                .collect();
            Code { pages }
        })
}

impl Code {
    fn memory(&self) -> RegionMemory {
        let mut memory = RegionMemory::new();
        for (virt, phys, bytes) in &self.pages {
            memory.add(
                GuestVirt(virt * PAGE_SIZE),
                GuestPhys(phys * PAGE_SIZE),
                bytes.clone(),
            );
        }
        memory
    }

    fn address(&self, pick: (Index, u16, u32)) -> GuestVirt {
        let virts: Vec<u32> = self.pages.iter().map(|(virt, ..)| *virt).collect();
        address_in(&virts, pick)
    }
}

/// An address: mostly inside one of the virtual pages `virts`, now and
/// then anywhere.
fn address_in(virts: &[u32], (page, offset, anywhere): (Index, u16, u32)) -> GuestVirt {
    if offset >= 0xf000 {
        return GuestVirt(anywhere);
    }
    GuestVirt(virts[page.index(virts.len())] * PAGE_SIZE + u32::from(offset) % PAGE_SIZE)
}

fn address_pick() -> impl Strategy<Value = (Index, u16, u32)> {
    (any::<Index>(), any::<u16>(), any::<u32>())
}

/// The classifier's view of host and guest: random CR0.MP/EM/TS, CR4
/// OSFXSR, CPUID faulting and TSC virtualization.
fn classify_config() -> impl Strategy<Value = ClassifyConfig> {
    (any::<bool>(), any::<bool>(), 0u32..16, any::<bool>()).prop_map(
        |(cpuid_faults, virtualize_timestamp, cr0, osfxsr)| ClassifyConfig {
            cpuid_faults,
            virtualize_timestamp,
            guest_cr0: cr0 & 0xe,
            guest_cr4: if osfxsr {
                btvmm_core::emu::fpu::CR4_OSFXSR
            } else {
                0
            },
        },
    )
}

fn planner(breakpoints: usize, explore_limit: usize, classify: ClassifyConfig) -> Planner {
    Planner::<X86>::new(PlannerConfig {
        breakpoints,
        explore_limit,
        classify,
        ..PlannerConfig::default()
    })
    .expect("a valid configuration")
}

// ---------------------------------------------------------------------
// The reference decoder: one instruction at a time.

/// Up to 32 bytes readable at `at` without a fault.
fn readable(memory: &RegionMemory, at: GuestVirt) -> Vec<u8> {
    let mut bytes = Vec::new();
    for offset in 0..32 {
        let mut byte = [0u8];
        if memory.read_virt(at.offset(offset), &mut byte).is_err() {
            break;
        }
        bytes.push(byte[0]);
    }
    bytes
}

/// What `scan_block` should give: instructions, how it ends, and the
/// virtual pages of every byte decoded.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    Poi(u32, PoiKind, iced_x86::Code, usize),
    Unfetchable(u32),
    TooLong(u32),
}

fn reference_block(
    memory: &RegionMemory,
    start: GuestVirt,
    config: &ClassifyConfig,
) -> (u32, Ending, BTreeSet<u32>) {
    let mut pages = BTreeSet::new();
    let mut cursor = start;
    let mut instructions = 0;
    let mut instr = Instruction::default();
    loop {
        if instructions >= MAX_BLOCK_INSTRUCTIONS {
            return (instructions, Ending::TooLong(cursor.0), pages);
        }
        let bytes = readable(memory, cursor);
        if bytes.is_empty() {
            pages.insert(cursor.page());
            return (instructions, Ending::Unfetchable(cursor.0), pages);
        }
        let mut decoder = Decoder::with_ip(32, &bytes, u64::from(cursor.0), DecoderOptions::NONE);
        decoder.decode_out(&mut instr);
        instructions += 1;
        if decoder.last_error() == DecoderError::NoMoreBytes {
            // The instruction runs into an unmapped page.
            let len = u32::try_from(bytes.len()).expect("small");
            pages.insert(cursor.page());
            pages.insert(cursor.offset(len).page());
            return (instructions, Ending::Unfetchable(cursor.0), pages);
        }
        let len = u32::try_from(instr.len()).expect("short");
        assert!((1..=15).contains(&len));
        pages.insert(cursor.page());
        pages.insert(cursor.offset(len - 1).page());
        let kind = classify(&instr, config);
        if kind.is_poi() {
            return (
                instructions,
                Ending::Poi(cursor.0, kind, instr.code(), instr.len()),
                pages,
            );
        }
        cursor = cursor.offset(len);
    }
}

fn ending(end: &BlockEnd) -> Ending {
    match end {
        BlockEnd::Poi(poi) => {
            assert_eq!(
                u64::from(poi.at.0),
                poi.instr.ip(),
                "the POI's instruction is at the POI"
            );
            Ending::Poi(poi.at.0, poi.kind, poi.instr.code(), poi.instr.len())
        }
        BlockEnd::Unfetchable(at) => Ending::Unfetchable(at.0),
        BlockEnd::TooLong(at) => Ending::TooLong(at.0),
        BlockEnd::Breakpoint(at) => panic!("a breakpoint at {:#x} with none set", at.0),
    }
}

// ---------------------------------------------------------------------
// CFG and plan checks.

/// Where each successor of a POI goes, as its instruction says.
fn successors(kind: PoiKind, next: GuestVirt) -> Vec<GuestVirt> {
    match kind {
        PoiKind::CondBranch { taken } => vec![taken, next],
        PoiKind::DirectBranch { target, .. } => vec![target],
        PoiKind::Sensitive {
            delivery: cfg_planner::Delivery::TrapsOrFallsThrough,
            ..
        } => vec![next],
        _ => Vec::new(),
    }
}

fn check_cfg(
    planner: &mut Planner,
    memory: &RegionMemory,
    start: GuestVirt,
    config: &ClassifyConfig,
    explore_limit: usize,
) {
    let cfg = planner.explore(memory, start);
    assert_eq!(cfg.graph[cfg.root].at, start, "the root is the start");
    assert!(
        cfg.poi_count() <= explore_limit,
        "{} POIs explored, limit {explore_limit}",
        cfg.poi_count()
    );
    let mut addresses = BTreeSet::new();
    for node in cfg.graph.node_indices() {
        let at = cfg.graph[node].at;
        match cfg.graph[node].kind {
            NodeKind::Entry => assert_eq!(node, cfg.root, "an entry node that is not the root"),
            _ => assert!(addresses.insert(at.0), "two nodes at {at:?}"),
        }
        match cfg.graph[node].kind {
            NodeKind::Poi(poi) => {
                assert_eq!(poi.at, at);
                // Decoding from the node itself ends right there.
                let (instructions, end, _) = reference_block(memory, at, config);
                assert_eq!(
                    instructions, 1,
                    "the POI at {at:?} is not where decoding stops"
                );
                assert_eq!(
                    end,
                    Ending::Poi(at.0, poi.kind, poi.instr.code(), poi.instr.len())
                );
                // Each edge goes where the branch says, or to the POI that
                // code there runs into.
                let expected = successors(poi.kind, poi.next());
                assert_eq!(
                    cfg.graph.edges(node).count(),
                    expected.len(),
                    "edges of {at:?}"
                );
                for edge in cfg.graph.edges(node) {
                    let target = cfg.graph[petgraph_target(&edge)];
                    let fits = expected.iter().any(|&goes| {
                        target.at == goes || ending_at(memory, goes, config) == target.at
                    });
                    assert!(fits, "an edge from {at:?} to {:?}", target.at);
                }
            }
            NodeKind::Unfetchable => {
                let (_, end, _) = reference_block(memory, at, config);
                assert_eq!(end, Ending::Unfetchable(at.0), "unfetchable node {at:?}");
            }
            NodeKind::Entry | NodeKind::LongRun | NodeKind::Frontier | NodeKind::Breakpoint => {}
        }
    }
}

fn petgraph_target(
    edge: &cfg_planner::petgraph::graph::EdgeReference<'_, cfg_planner::EdgeKind>,
) -> cfg_planner::petgraph::graph::NodeIndex {
    use cfg_planner::petgraph::visit::EdgeRef;
    edge.target()
}

/// Where decoding from `at` stops: the POI, the unreadable instruction or
/// the end of a long run.
fn ending_at(memory: &RegionMemory, at: GuestVirt, config: &ClassifyConfig) -> GuestVirt {
    match reference_block(memory, at, config).1 {
        Ending::Poi(end, ..) | Ending::Unfetchable(end) | Ending::TooLong(end) => GuestVirt(end),
    }
}

/// Checks a plan against the CFG it was made on.
fn check_plan(
    planner: &mut Planner,
    memory: &RegionMemory,
    start: GuestVirt,
    start_armable: bool,
    budget: usize,
) -> Option<Vec<GuestVirt>> {
    let plan = planner.plan_with_budget(memory, start, start_armable, budget);
    assert_eq!(plan.start, start);
    let cfg = planner.explore(memory, start);
    let roles = cfg.roles();
    let root_armable = start_armable && !matches!(cfg.graph[cfg.root].kind, NodeKind::Entry);
    let reachable = {
        let mut seen = BTreeSet::from([cfg.root]);
        let mut queue = VecDeque::from([cfg.root]);
        while let Some(node) = queue.pop_front() {
            for next in cfg.graph.neighbors(node) {
                if seen.insert(next) {
                    queue.push_back(next);
                }
            }
        }
        seen
    };
    let stops = reachable
        .iter()
        .filter(|&&node| roles[node] == Role::Stop)
        .count();
    match &plan.breakpoints {
        None => {
            // Arming every stop is a plan whenever the budget allows it.
            assert!(
                stops > budget || (roles[cfg.root] == Role::Stop && !root_armable),
                "no plan, though {stops} stops fit {budget} breakpoints"
            );
            None
        }
        Some(breakpoints) => {
            assert!(breakpoints.len() <= budget.clamp(1, 8), "over budget");
            assert!(
                breakpoints.windows(2).all(|pair| pair[0] < pair[1]),
                "sorted, no duplicates: {breakpoints:?}"
            );
            let armed: Vec<_> = breakpoints
                .iter()
                .map(|&at| {
                    cfg.graph
                        .node_indices()
                        .find(|&node| {
                            cfg.graph[node].at == at
                                && !matches!(cfg.graph[node].kind, NodeKind::Entry)
                        })
                        .unwrap_or_else(|| panic!("{at:?} armed is no node of the CFG"))
                })
                .collect();
            // The root itself only when a breakpoint there fires (the
            // same address reached again later may be armed: EFLAGS.RF
            // skips the breakpoint for one instruction only).
            if !root_armable {
                assert!(
                    !armed.contains(&cfg.root),
                    "the resume point armed though it may not be: {breakpoints:?}"
                );
            }
            assert_eq!(
                uncovered_stop(&roles, cfg.root, root_armable, &armed),
                None,
                "a path from {start:?} reaches a stop unobserved with {breakpoints:?}"
            );
            Some(breakpoints.clone())
        }
    }
}

// ---------------------------------------------------------------------
// CPU states for the step decision.

#[derive(Clone, Debug)]
struct Cpu {
    gprs: [u32; 8],
    eip: u32,
    eflags: u32,
    cs_base: u32,
    ss_base: u32,
    code_32bit: bool,
    stack_32bit: bool,
}

impl CpuView for Cpu {
    fn gpr(&self, reg: btvmm_core::Gpr) -> u32 {
        self.gprs[reg as usize]
    }
    fn eip(&self) -> u32 {
        self.eip
    }
    fn eflags(&self) -> u32 {
        self.eflags
    }
    fn segment_base(&self, seg: SegReg) -> u32 {
        match seg {
            SegReg::Cs => self.cs_base,
            SegReg::Ss => self.ss_base,
            _ => 0,
        }
    }
    fn code_32bit(&self) -> bool {
        self.code_32bit
    }
    fn stack_32bit(&self) -> bool {
        self.stack_32bit
    }
}

/// A CPU stopped at `at` (linear): registers that point into the code
/// pages or anywhere, random flags, mostly flat 32-bit segments.
fn cpu(code: &Code) -> impl Strategy<Value = Cpu> + use<> {
    let pages: Vec<u32> = code.pages.iter().map(|(virt, ..)| *virt).collect();
    let register = {
        let pages = pages.clone();
        (any::<Index>(), any::<u16>(), any::<u32>(), any::<bool>()).prop_map(
            move |(page, offset, value, inside)| {
                if inside {
                    pages[page.index(pages.len())] * PAGE_SIZE + u32::from(offset) % PAGE_SIZE
                } else {
                    value
                }
            },
        )
    };
    (
        proptest::array::uniform8(register),
        address_pick(),
        any::<u32>(),
        prop_oneof![4 => Just(0u32), 1 => any::<u32>()],
        prop_oneof![4 => Just(0u32), 1 => any::<u32>()],
        prop_oneof![6 => Just(true), 1 => Just(false)],
        prop_oneof![6 => Just(true), 1 => Just(false)],
    )
        .prop_map(
            move |(gprs, pick, eflags, cs_base, ss_base, code_32bit, stack_32bit)| {
                let linear = address_in(&pages, pick);
                Cpu {
                    gprs,
                    eip: linear.0.wrapping_sub(cs_base),
                    eflags: (eflags & FLAGS) | 0x2,
                    cs_base,
                    ss_base,
                    code_32bit,
                    stack_32bit,
                }
            },
        )
}

/// The flags branches read, and DF, IF, TF.
const FLAGS: u32 = Eflags::CF
    | Eflags::PF
    | Eflags::AF
    | Eflags::ZF
    | Eflags::SF
    | Eflags::TF
    | Eflags::IF
    | Eflags::DF
    | Eflags::OF;

fn code_and_cpus() -> impl Strategy<Value = (Code, Vec<Cpu>)> {
    code().prop_flat_map(|code| {
        let cpus = proptest::collection::vec(cpu(&code), 1..8);
        (Just(code), cpus)
    })
}

/// Checks one step decision; returns it as text for comparisons.
fn check_step(planner: &mut Planner, cpu: &Cpu, memory: &RegionMemory) -> String {
    let at = GuestVirt(cpu.cs_base.wrapping_add(cpu.eip));
    let step = planner.step(cpu, memory);
    match &step {
        Step::Resume { breakpoints } => {
            assert!(breakpoints.len() <= planner.config().breakpoints);
        }
        Step::Emulate(poi) => {
            assert_eq!(poi.at, at);
            assert!(
                matches!(
                    poi.kind,
                    PoiKind::Sensitive { .. } | PoiKind::PointerBranch(_)
                ),
                "emulating {:?}",
                poi.kind
            );
        }
        Step::Unrecognized(bad) => {
            assert_eq!(*bad, at);
            let config = planner.config().classify;
            let (_, end, _) = reference_block(memory, at, &config);
            assert!(
                matches!(end, Ending::Poi(poi, PoiKind::Unrecognized, ..) if poi == at.0),
                "{end:?}"
            );
        }
        Step::Fault(_) => assert!(cpu.code_32bit),
        Step::Interpret => assert!(
            !cpu.code_32bit || !cpu.stack_32bit,
            "interpreting 32-bit code"
        ),
        Step::SingleStep => panic!("a single step at {at:?}: the planner never needs one"),
    }
    format!("{step:?}")
}

proptest! {
    #![proptest_config(config(256))]

    /// The chunked, page-crossing decoder against one instruction at a
    /// time.
    #[test]
    fn blocks_match_a_one_instruction_decoder(
        code in code(),
        starts in proptest::collection::vec(address_pick(), 1..16),
        config in classify_config(),
    ) {
        within(HANG, move || {
            let memory = code.memory();
            for pick in starts {
                let start = code.address(pick);
                let block = scan_block(&memory, start, &config);
                let (instructions, end, pages) = reference_block(&memory, start, &config);
                assert_eq!(block.start, start);
                assert_eq!(ending(&block.end), end, "block from {start:?}");
                assert_eq!(block.instructions, instructions, "block from {start:?}");
                assert!(block.pages.len() <= 5, "{} pages", block.pages.len());
                for page in pages {
                    let noted = block
                        .pages
                        .iter()
                        .find(|noted| noted.virt_page == page)
                        .unwrap_or_else(|| panic!("page {page:#x} not noted from {start:?}"));
                    let phys = memory
                        .translate(GuestVirt(page * PAGE_SIZE))
                        .ok()
                        .map(GuestPhys::page);
                    assert_eq!(noted.phys_page, phys, "page {page:#x}");
                }
            }
        });
    }

    /// CFGs explored from random starts: nodes at decoder boundaries,
    /// edges where the branches go, the exploration limit kept.
    #[test]
    fn cfgs_follow_the_decoder(
        code in code(),
        starts in proptest::collection::vec(address_pick(), 1..6),
        config in classify_config(),
        explore_limit in prop_oneof![1 => 1usize..8, 2 => Just(64usize)],
    ) {
        within(HANG, move || {
            let memory = code.memory();
            let mut planner = planner(4, explore_limit, config);
            for pick in starts {
                check_cfg(&mut planner, &memory, code.address(pick), &config, explore_limit);
            }
        });
    }

    /// Plans cover every path, within budget, and a warm planner plans as
    /// a fresh one does.
    #[test]
    fn plans_cover_every_path(
        code in code(),
        starts in proptest::collection::vec((address_pick(), any::<bool>(), 1usize..=8), 1..8),
        config in classify_config(),
        explore_limit in prop_oneof![1 => 1usize..8, 2 => Just(64usize)],
    ) {
        within(HANG, move || {
            let memory = code.memory();
            let mut warm = planner(4, explore_limit, config);
            for (pick, start_armable, budget) in starts {
                let start = code.address(pick);
                let planned = check_plan(&mut warm, &memory, start, start_armable, budget);
                let mut fresh = planner(4, explore_limit, config);
                let again = check_plan(&mut fresh, &memory, start, start_armable, budget);
                assert_eq!(planned, again, "cached and fresh plans differ at {start:?}");
            }
        });
    }

    /// The step decision on random CPU states: consistent with the code at
    /// EIP, never a single step, the same from a warm and a fresh planner.
    #[test]
    fn steps_are_decided_consistently(
        (code, cpus) in code_and_cpus(),
        config in classify_config(),
        breakpoints in 1usize..=8,
    ) {
        within(HANG, move || {
            let memory = code.memory();
            let mut warm = planner(breakpoints, 64, config);
            for cpu in &cpus {
                let decided = check_step(&mut warm, cpu, &memory);
                let mut fresh = planner(breakpoints, 64, config);
                assert_eq!(decided, check_step(&mut fresh, cpu, &memory), "{cpu:?}");
            }
        });
    }

    /// Code rewritten or remapped and invalidated: the warm planner's
    /// blocks and plans match a fresh planner's on the new memory.
    #[test]
    fn invalidation_drops_what_changed(
        code in code(),
        starts in proptest::collection::vec(address_pick(), 1..8),
        changes in proptest::collection::vec((any::<Index>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 1..16)), 1..6),
        remap in any::<bool>(),
        config in classify_config(),
    ) {
        within(HANG, move || {
            let before = code.memory();
            let mut warm = planner(4, 64, config);
            let starts: Vec<_> = starts.into_iter().map(|pick| code.address(pick)).collect();
            for &start in &starts {
                warm.plan(&before, start, false);
                warm.block(&before, start);
            }
            let mut changed = code.clone();
            for (page, offset, bytes) in &changes {
                let index = page.index(changed.pages.len());
                let page = &mut changed.pages[index];
                let offset = usize::from(*offset) % page.2.len();
                let end = (offset + bytes.len()).min(page.2.len());
                page.2[offset..end].copy_from_slice(&bytes[..end - offset]);
                if remap {
                    // The same virtual page now maps a new physical page.
                    page.1 += 0x1000;
                    warm.invalidate_virt_page(GuestVirt(page.0 * PAGE_SIZE));
                } else {
                    warm.invalidate_phys_page(GuestPhys(page.1 * PAGE_SIZE));
                }
            }
            let after = changed.memory();
            let mut fresh = planner(4, 64, config);
            for &start in &starts {
                let (warm_block, fresh_block) = (warm.block(&after, start), fresh.block(&after, start));
                assert_eq!(ending(&warm_block.end), ending(&fresh_block.end), "block at {start:?}");
                let (warm_plan, fresh_plan) = (warm.plan(&after, start, false), fresh.plan(&after, start, false));
                assert_eq!(warm_plan.breakpoints, fresh_plan.breakpoints, "plan at {start:?}");
            }
        });
    }
}
