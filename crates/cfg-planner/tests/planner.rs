//! The planner on real machine code: the dissertation's fig. 3.3, loops,
//! call chains, the step decisions and cache invalidation.

use btvmm_core::{CpuView, Eflags, Gpr, GuestPhys, GuestVirt, MemFault, RegionMemory, SegReg};
use cfg_planner::{Planner, PlannerConfig, PoiKind, SensitiveKind, Step, X86};

#[derive(Clone, Debug, Default)]
struct Cpu {
    gprs: [u32; 8],
    eip: u32,
    eflags: u32,
}

impl CpuView for Cpu {
    fn gpr(&self, reg: Gpr) -> u32 {
        self.gprs[reg as usize]
    }
    fn eip(&self) -> u32 {
        self.eip
    }
    fn eflags(&self) -> u32 {
        self.eflags
    }
    fn segment_base(&self, _seg: SegReg) -> u32 {
        0
    }
    fn code_32bit(&self) -> bool {
        true
    }
    fn stack_32bit(&self) -> bool {
        true
    }
}

fn planner(breakpoints: usize) -> Planner {
    Planner::<X86>::new(PlannerConfig {
        breakpoints,
        ..PlannerConfig::default()
    })
    .expect("valid config")
}

/// Guest memory with `code` placed at the given addresses (identity-mapped,
/// as with paging off) and a stack page at 0x8000.
/// A counted loop at 0x2000: its exit is the only point of interest past
/// the loop's branch.
fn counted_loop() -> RegionMemory {
    memory(&[
        (0x2000, &[0x31, 0xc9]),       // xor ecx, ecx
        (0x2002, &[0x41]),             // inc ecx
        (0x2003, &[0x83, 0xf9, 0x0a]), // cmp ecx, 10
        (0x2006, &[0x72, 0xfa]),       // jb 0x2002
        (0x2008, &[0xc3]),             // ret
    ])
}

fn memory(code: &[(u32, &[u8])]) -> RegionMemory {
    let mut page = vec![0xccu8; 0x1000];
    let mut mem = RegionMemory::new();
    let base = code[0].0 & !0xfff;
    for (at, bytes) in code {
        let offset = (at - base) as usize;
        page[offset..offset + bytes.len()].copy_from_slice(bytes);
    }
    mem.add_identity(base, page);
    mem.add_identity(0x8000, vec![0; 0x1000]);
    mem
}

/// Fig. 3.3 as code. Conditional branch 1 at 0x1007, conditional branch 2 at
/// 0x100c, the sensitive instruction (pushfd) at 0x100f, pointer branch 1
/// (ret) at 0x1022, pointer branch 2 (jmp eax) at 0x1030.
fn fig_3_3() -> RegionMemory {
    memory(&[
        (0x1000, &[0xb8, 0x01, 0, 0, 0]), // mov eax, 1
        (0x1005, &[0x85, 0xc0]),          // test eax, eax
        (0x1007, &[0x74, 0x17]),          // je 0x1020        (cond 1)
        (0x1009, &[0x83, 0xf9, 0x03]),    // cmp ecx, 3
        (0x100c, &[0x75, 0x22]),          // jne 0x1030       (cond 2)
        (0x100e, &[0x90]),                // nop
        (0x100f, &[0x9c]),                // pushfd           (sensitive)
        (0x1020, &[0x01, 0xc8]),          // add eax, ecx
        (0x1022, &[0xc3]),                // ret              (pointer 1)
        (0x1030, &[0xff, 0xe0]),          // jmp eax          (pointer 2)
    ])
}

fn virt(addresses: &[u32]) -> Option<Vec<GuestVirt>> {
    Some(addresses.iter().copied().map(GuestVirt).collect())
}

#[test]
fn fig_3_3_plans_match_the_dissertation() {
    let mem = fig_3_3();
    let mut planner = planner(4);
    let at = GuestVirt(0x1000);
    let plan = |planner: &mut Planner, n| {
        planner
            .plan_with_budget(&mem, at, false, n)
            .breakpoints
            .clone()
    };
    assert_eq!(plan(&mut planner, 3), virt(&[0x100f, 0x1022, 0x1030]));
    assert_eq!(plan(&mut planner, 2), virt(&[0x100c, 0x1022]));
    assert_eq!(plan(&mut planner, 1), virt(&[0x1007]));
    assert_eq!(plan(&mut planner, 4), virt(&[0x100f, 0x1022, 0x1030]));
}

#[test]
fn fig_3_3_cfg_has_the_expected_shape() {
    let mem = fig_3_3();
    let mut planner = planner(4);
    let cfg = planner.explore(&mem, GuestVirt(0x1000));
    // Entry pseudo-node + 5 POIs.
    assert_eq!(cfg.poi_count(), 5);
    assert_eq!(cfg.graph.node_count(), 6);
    // Entry->cond1, cond1->{ret, cond2}, cond2->{pushfd, jmp}.
    assert_eq!(cfg.graph.edge_count(), 5);
}

#[test]
fn breakpoint_on_cond2_resolves_to_the_sensitive_side() {
    let mem = fig_3_3();
    let mut planner = planner(1);
    // Stopped at cond 2 with ZF set: jne falls through to the pushfd.
    let cpu = Cpu {
        eip: 0x100c,
        eflags: Eflags::ZF,
        ..Cpu::default()
    };
    let Step::Resume { breakpoints } = planner.step(&cpu, &mem) else {
        panic!("resume expected")
    };
    assert_eq!(Some(breakpoints), virt(&[0x100f]));
    assert_eq!(planner.stats().evaluated_branches, 1);
    // ZF clear: it jumps to pointer branch 2.
    let cpu = Cpu {
        eip: 0x100c,
        ..Cpu::default()
    };
    let Step::Resume { breakpoints } = planner.step(&cpu, &mem) else {
        panic!("resume expected")
    };
    assert_eq!(Some(breakpoints), virt(&[0x1030]));
}

#[test]
fn sensitive_instruction_at_eip_is_emulated() {
    let mem = fig_3_3();
    let mut planner = planner(4);
    let cpu = Cpu {
        eip: 0x100f,
        ..Cpu::default()
    };
    let Step::Emulate(poi) = planner.step(&cpu, &mem) else {
        panic!("emulate expected")
    };
    assert_eq!(poi.at, GuestVirt(0x100f));
    assert!(matches!(
        poi.kind,
        PoiKind::Sensitive {
            kind: SensitiveKind::FlagsRead,
            ..
        }
    ));
}

#[test]
fn pointer_branch_at_eip_is_followed_without_single_step() {
    let mem = fig_3_3();
    let mut planner = planner(4);
    // jmp eax with eax = 0x1009: plans from the cmp, i.e. cond 2's region.
    let mut cpu = Cpu {
        eip: 0x1030,
        ..Cpu::default()
    };
    cpu.gprs[Gpr::Eax as usize] = 0x1009;
    let Step::Resume { breakpoints } = planner.step(&cpu, &mem) else {
        panic!("resume expected")
    };
    assert_eq!(Some(breakpoints), virt(&[0x100f, 0x1030]));
    // jmp eax to itself: the only safe plan is the jmp itself, which fires
    // after it ran once (resumed with RF).
    cpu.gprs[Gpr::Eax as usize] = 0x1030;
    let Step::Resume { breakpoints } = planner.step(&cpu, &mem) else {
        panic!("resume expected")
    };
    assert_eq!(Some(breakpoints), virt(&[0x1030]));
}

#[test]
fn a_counted_loop_runs_natively_until_its_exit() {
    let mem = counted_loop();
    let mut planner = planner(4);
    let plan = planner.plan(&mem, GuestVirt(0x2000), false);
    assert_eq!(plan.breakpoints, virt(&[0x2008]));
    // Resumed on the loop branch itself.
    let cpu = Cpu {
        eip: 0x2006,
        ..Cpu::default()
    };
    let Step::Resume { breakpoints } = planner.step(&cpu, &mem) else {
        panic!("resume expected")
    };
    assert_eq!(Some(breakpoints), virt(&[0x2008]));
}

#[test]
fn an_endless_loop_without_pois_needs_no_breakpoint() {
    let mem = memory(&[(0x2000, &[0xf3, 0x90]), (0x2002, &[0xeb, 0xfc])]); // pause; jmp 0x2000
    let mut planner = planner(4);
    let cpu = Cpu {
        eip: 0x2000,
        ..Cpu::default()
    };
    let Step::Resume { breakpoints } = planner.step(&cpu, &mem) else {
        panic!("resume expected")
    };
    assert!(breakpoints.is_empty());
}

#[test]
fn a_call_chain_is_followed_into_callees_and_back_through_rets() {
    let mem = memory(&[
        (0x3000, &[0xe8, 0x0b, 0, 0, 0]), // call 0x3010
        (0x3005, &[0xc3]),                // ret
        (0x3010, &[0xe8, 0x0b, 0, 0, 0]), // call 0x3020
        (0x3015, &[0xc3]),                // ret
        (0x3020, &[0x55]),                // push ebp
        (0x3021, &[0x89, 0xe5]),          // mov ebp, esp
        (0x3023, &[0x5d]),                // pop ebp
        (0x3024, &[0xc3]),                // ret
    ]);
    let mut planner = planner(4);
    let mut cpu = Cpu {
        eip: 0x3000,
        ..Cpu::default()
    };
    let Step::Resume { breakpoints } = planner.step(&cpu, &mem) else {
        panic!("resume expected")
    };
    assert_eq!(Some(breakpoints), virt(&[0x3024]), "the innermost ret");

    // Unwind: each ret's target is read from the stack, and the plan covers
    // the code after it.
    let mut page = vec![0u8; 0x1000];
    page[0xff0..0xff4].copy_from_slice(&0x3015u32.to_le_bytes());
    page[0xff4..0xff8].copy_from_slice(&0x3005u32.to_le_bytes());
    page[0xff8..0xffc].copy_from_slice(&0x4000u32.to_le_bytes());
    let mut combined = mem.clone();
    combined.add_identity(0x8000, page);
    for (eip, esp, next) in [(0x3024, 0x8ff0, 0x3015), (0x3015, 0x8ff4, 0x3005)] {
        cpu.eip = eip;
        cpu.gprs[Gpr::Esp as usize] = esp;
        let Step::Resume { breakpoints } = planner.step(&cpu, &combined) else {
            panic!("resume expected at {eip:#x}")
        };
        assert_eq!(Some(breakpoints), virt(&[next]));
    }
    // The outermost ret returns to unmapped code: the plan arms its target,
    // which will fault or fire before anything runs there.
    cpu.eip = 0x3005;
    cpu.gprs[Gpr::Esp as usize] = 0x8ff8;
    let Step::Resume { breakpoints } = planner.step(&cpu, &combined) else {
        panic!("resume expected")
    };
    assert_eq!(Some(breakpoints), virt(&[0x4000]));
}

#[test]
fn unreadable_code_or_stack_is_a_fault() {
    let mem = fig_3_3();
    let mut planner = planner(4);
    let cpu = Cpu {
        eip: 0x7000,
        ..Cpu::default()
    };
    assert!(matches!(
        planner.step(&cpu, &mem),
        Step::Fault(MemFault::NotMapped(GuestVirt(0x7000)))
    ));
    // ret with ESP pointing at nothing.
    let mut cpu = Cpu {
        eip: 0x1022,
        ..Cpu::default()
    };
    cpu.gprs[Gpr::Esp as usize] = 0x0010_0000;
    assert!(matches!(
        planner.step(&cpu, &mem),
        Step::Fault(MemFault::NotMapped(GuestVirt(0x0010_0000)))
    ));
}

#[test]
fn undecodable_code_at_eip_is_unrecognized_and_never_runs() {
    let mem = memory(&[(0x1000, &[0x90]), (0x1001, &[0xf0, 0x90])]); // nop; lock nop
    let mut planner = planner(4);
    let cpu = Cpu {
        eip: 0x1000,
        ..Cpu::default()
    };
    let Step::Resume { breakpoints } = planner.step(&cpu, &mem) else {
        panic!("resume expected")
    };
    assert_eq!(Some(breakpoints), virt(&[0x1001]));
    let cpu = Cpu {
        eip: 0x1001,
        ..Cpu::default()
    };
    assert!(matches!(
        planner.step(&cpu, &mem),
        Step::Unrecognized(GuestVirt(0x1001))
    ));
}

#[test]
fn far_transfers_and_iret_are_emulated() {
    for bytes in [
        &[0xcf][..],
        &[0xea, 0, 0x10, 0, 0, 0x08, 0],
        &[0xcb],
        &[0xff, 0x18],
    ] {
        let mem = memory(&[(0x1000, bytes)]);
        let mut planner = planner(4);
        let cpu = Cpu {
            eip: 0x1000,
            ..Cpu::default()
        };
        assert!(
            matches!(planner.step(&cpu, &mem), Step::Emulate(_)),
            "{bytes:02x?}"
        );
    }
}

#[test]
fn trapping_instructions_need_no_breakpoint() {
    let mem = memory(&[
        (0x1000, &[0x85, 0xc0]), // test eax, eax
        (0x1002, &[0x74, 0x01]), // je 0x1005
        (0x1004, &[0xfa]),       // cli (traps by itself)
        (0x1005, &[0xf4]),       // hlt (traps by itself)
    ]);
    let mut planner = planner(4);
    let plan = planner.plan(&mem, GuestVirt(0x1000), false);
    assert_eq!(plan.breakpoints, Some(vec![]));
}

#[test]
fn writes_to_code_pages_invalidate_blocks_and_plans() {
    let mem = fig_3_3();
    let mut planner = planner(3);
    let before = planner.plan(&mem, GuestVirt(0x1000), false);
    assert_eq!(before.breakpoints, virt(&[0x100f, 0x1022, 0x1030]));
    // The guest patches the pushfd into a nop. Until the shadow MMU reports
    // the write, the cached plan stands; afterwards it is re-derived.
    let patched = memory(&[
        (0x1000, &[0xb8, 0x01, 0, 0, 0]),
        (0x1005, &[0x85, 0xc0]),
        (0x1007, &[0x74, 0x17]),
        (0x1009, &[0x83, 0xf9, 0x03]),
        (0x100c, &[0x75, 0x22]),
        (0x100e, &[0x90]),
        (0x100f, &[0x90]),
        (0x1010, &[0xc3]),
        (0x1020, &[0x01, 0xc8]),
        (0x1022, &[0xc3]),
        (0x1030, &[0xff, 0xe0]),
    ]);
    assert_eq!(
        planner.plan(&patched, GuestVirt(0x1000), false).breakpoints,
        before.breakpoints
    );
    planner.invalidate_phys_page(GuestPhys(0x1000));
    let after = planner.plan(&patched, GuestVirt(0x1000), false);
    assert_eq!(after.breakpoints, virt(&[0x1010, 0x1022, 0x1030]));
    assert!(planner.stats().blocks.invalidated > 0);
    assert!(planner.stats().plans.invalidated > 0);

    // A mapping change is reported by virtual page.
    planner.invalidate_virt_page(GuestVirt(0x1000));
    assert_eq!(planner.cached(), (0, 0));
}

#[test]
fn bad_configurations_are_refused() {
    assert!(
        Planner::<X86>::new(PlannerConfig {
            breakpoints: 0,
            ..PlannerConfig::default()
        })
        .is_err()
    );
    assert!(
        Planner::<X86>::new(PlannerConfig {
            breakpoints: 9,
            ..PlannerConfig::default()
        })
        .is_err()
    );
    assert!(
        Planner::<X86>::new(PlannerConfig {
            explore_limit: 0,
            ..PlannerConfig::default()
        })
        .is_err()
    );
}

#[test]
fn exploration_limit_turns_the_rest_into_armed_frontier() {
    // A chain of conditional branches longer than the limit.
    let mut code: Vec<(u32, Vec<u8>)> = Vec::new();
    for i in 0..40u32 {
        // jne +1 (over the next pushfd); pushfd
        code.push((0x1000 + i * 3, vec![0x75, 0x01]));
        code.push((0x1002 + i * 3, vec![0x9c]));
    }
    let refs: Vec<(u32, &[u8])> = code
        .iter()
        .map(|(at, bytes)| (*at, bytes.as_slice()))
        .collect();
    let mem = memory(&refs);
    let mut planner = Planner::<X86>::new(PlannerConfig {
        breakpoints: 4,
        explore_limit: 8,
        ..PlannerConfig::default()
    })
    .expect("valid config");
    let plan = planner.plan(&mem, GuestVirt(0x1000), false);
    let breakpoints = plan.breakpoints.clone().expect("a plan");
    assert!(breakpoints.len() <= 4);
    assert!(plan.explored_nodes <= 9 + 2);
    assert!(!breakpoints.is_empty());
}

#[test]
fn a_debuggers_breakpoint_is_a_stop_every_plan_covers_and_costs_nothing_once_gone() {
    // The counted loop: a debugger's breakpoint on its body (inc ecx), a
    // block start, and inside it, where no block starts.
    let mem = counted_loop();
    let mut planner = planner(4);
    assert_eq!(
        planner.plan(&mem, GuestVirt(0x2000), false).breakpoints,
        virt(&[0x2008])
    );
    planner.set_debug_stops(vec![GuestVirt(0x2002)]);
    assert_eq!(
        planner.plan(&mem, GuestVirt(0x2000), false).breakpoints,
        virt(&[0x2002]),
        "a cached plan does not outlive the change"
    );
    // Resumed on the loop branch: the loop's way back reaches it.
    let cpu = Cpu {
        eip: 0x2006,
        ..Cpu::default()
    };
    let Step::Resume { breakpoints } = planner.step(&cpu, &mem) else {
        panic!("resume expected")
    };
    assert_eq!(Some(breakpoints), virt(&[0x2002, 0x2008]));
    // At the breakpoint itself (the monitor passes it on its own): one
    // native step is safe.
    let at_stop = Cpu {
        eip: 0x2002,
        ..Cpu::default()
    };
    assert!(matches!(planner.step(&at_stop, &mem), Step::SingleStep));
    planner.set_debug_stops(vec![GuestVirt(0x2003)]);
    assert_eq!(
        planner.plan(&mem, GuestVirt(0x2000), false).breakpoints,
        virt(&[0x2003])
    );
    planner.set_debug_stops(Vec::new());
    assert_eq!(
        planner.plan(&mem, GuestVirt(0x2000), false).breakpoints,
        virt(&[0x2008])
    );
}
