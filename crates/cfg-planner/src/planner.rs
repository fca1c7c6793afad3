//! The planner as the monitor uses it: cached blocks and plans, the step
//! decision at every entry into the monitor, and invalidation when guest
//! code or its mapping changes.

use std::sync::Arc;

use serde::Serialize;
use thiserror::Error;

use btvmm_core::{CpuView, GuestMemory, GuestPhys, GuestVirt, MemFault, SegReg};

use crate::arm::ArmClassifierError;
use crate::cfg::Cfg;
use crate::classify::{ClassifyConfig, PoiKind, PointerKind};
use crate::decode::{Block, BlockEnd, CacheStats, PageKeyedCache, fetch_fault};
use crate::isa::{Isa, X86};
use crate::target::{branch_taken, pointer_target};

/// Most breakpoints any supported CPU has (x86: 4, Cortex-A9: 6).
pub const MAX_BREAKPOINTS: usize = 8;

/// Plans whose CFG read code from more guest pages than this are not cached
/// (they are recomputed each time), which bounds the plan cache's memory.
pub const MAX_CACHED_PLAN_PAGES: usize = 32;

/// Errors in setting up a planner. Guest behaviour is never an error: odd
/// guest code becomes nodes of the CFG and [`Step`] decisions.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlannerError {
    /// A breakpoint budget outside 1..=[`MAX_BREAKPOINTS`].
    #[error("breakpoint count {0} is outside 1..={MAX_BREAKPOINTS}")]
    BreakpointCount(usize),
    /// An exploration limit of zero nodes.
    #[error("the exploration limit must be at least one node")]
    ExploreLimit,
    /// The ARM decoder could not be opened.
    #[error(transparent)]
    ArmDecoder(#[from] ArmClassifierError),
}

/// How the planner works; `C` is the architecture's classifier
/// configuration ([`Isa::Config`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannerConfig<C = ClassifyConfig> {
    /// Hardware breakpoints available to plans.
    pub breakpoints: usize,
    /// Most POI nodes a plan explores before treating the rest as unknown.
    pub explore_limit: usize,
    /// Host facts for the classifier.
    pub classify: C,
    /// Most blocks in the decode cache.
    pub block_cache_capacity: usize,
    /// Most plans in the plan cache.
    pub plan_cache_capacity: usize,
}

impl Default for PlannerConfig {
    /// x86 (4 breakpoints) with caches bounded as documented on [`Planner`].
    fn default() -> Self {
        Self::for_isa::<X86>()
    }
}

impl<C: Default> PlannerConfig<C> {
    /// The configuration for `I`: all its breakpoints, the default
    /// classifier configuration, caches bounded as documented on
    /// [`Planner`].
    #[must_use]
    pub fn for_isa<I: Isa<Config = C>>() -> Self {
        Self {
            breakpoints: I::BREAKPOINTS,
            explore_limit: 64,
            classify: C::default(),
            block_cache_capacity: 1 << 16,
            plan_cache_capacity: 1 << 14,
        }
    }
}

/// Where to put breakpoints for one resume point.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// Where the guest resumes.
    pub start: GuestVirt,
    /// Whether a breakpoint on `start` itself would fire (false when the
    /// guest resumes at `start` with EFLAGS.RF set).
    pub start_armable: bool,
    /// Breakpoints the plan could use.
    pub budget: usize,
    /// Addresses to arm, or `None` when no safe plan exists within the
    /// budget (the instruction at `start` must be handled first).
    pub breakpoints: Option<Vec<GuestVirt>>,
    /// POI nodes explored.
    pub explored_pois: usize,
    /// Nodes explored, pseudo-nodes included.
    pub explored_nodes: usize,
}

/// What the monitor does next, decided at every entry into the monitor
/// (planned breakpoint hit, fault, interrupt delivery, after an emulation).
#[derive(Clone, Debug)]
pub enum Step<I: Isa = X86> {
    /// Resume native execution at the guest's EIP with EFLAGS.RF set and
    /// exactly these breakpoints armed (at most the budget; maybe none).
    Resume {
        /// Guest-virtual addresses to arm.
        breakpoints: Vec<GuestVirt>,
    },
    /// The instruction at EIP must not run natively: emulate it, then ask
    /// again. Sensitive instructions, IRET and far transfers.
    Emulate(I::Poi),
    /// The bytes at EIP are not a valid instruction: the guest gets #UD.
    Unrecognized(GuestVirt),
    /// Guest memory needed to decide (the code at EIP, or the stack or
    /// table a pointer branch reads) is not mapped by the guest: resolve the
    /// fault (hidden) or deliver #PF, then ask again.
    Fault(MemFault),
    /// The planner cannot judge the instruction at EIP in this CPU mode
    /// (a 16-bit code segment, or a return through a 16-bit stack): the
    /// monitor emulates it, then asks again.
    Interpret,
    /// No breakpoint plan covers what follows the (non-sensitive)
    /// instruction at EIP: run that one instruction natively with EFLAGS.TF
    /// set, then ask again. A safety net: the planner's construction never
    /// needs it (a branch at EIP is resolved from the flags instead).
    SingleStep,
}

/// Counters of the planner's caches.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct PlannerStats {
    /// Decode cache.
    pub blocks: CacheStats,
    /// Plan cache.
    pub plans: CacheStats,
    /// Plans that needed the conditional branch at EIP to be evaluated
    /// from the flags first.
    pub evaluated_branches: u64,
    /// Plans not cached because their CFG spanned more than
    /// [`MAX_CACHED_PLAN_PAGES`] pages.
    pub uncached_plans: u64,
}

/// Sizes and counters of the planner's caches.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PlanCacheSummary {
    /// Blocks cached.
    pub blocks: usize,
    /// Plans cached.
    pub plans: usize,
    /// Counters.
    pub stats: PlannerStats,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey<S> {
    start: S,
    start_armable: bool,
    budget: u8,
}

/// Decode and plan caches plus the step decision.
///
/// Memory is bounded: at most `block_cache_capacity` blocks (default 65,536)
/// and `plan_cache_capacity` plans (default 16,384); a full cache is emptied
/// before the next insertion. A cached block is a [`Block`] (at most 128
/// bytes, checked by a test) behind an `Arc`, plus its pages (at most five,
/// see [`crate::decode::MAX_BLOCK_INSTRUCTIONS`]; 12 bytes each, kept twice)
/// and two index references per page: at most ~450 bytes with hash-table
/// overhead, ~28 MiB for a full block cache. A cached plan is a [`Plan`] (at
/// most 96 bytes, plus 4 bytes per armed address) and at most
/// [`MAX_CACHED_PLAN_PAGES`] pages kept the same way: at most ~1.5 KiB, ~24
/// MiB for a full plan cache. Kernel code is far from these worst cases
/// (one or two pages per block, a few per plan): on Debian's 686 kernel,
/// `btvmm plan --all-functions 4` plans from all 22,423 function entries
/// and the resident memory grows by about 14 MiB.
///
/// The architecture is a parameter ([`Isa`]): x86 by default, ARMv7 with
/// [`crate::arm_cfg::Armv7`]. Everything but the step decision, which
/// reads each CPU's own registers, is shared; `resume_planned`, which
/// turns its answer into breakpoints, is shared too.
pub struct Planner<I: Isa = X86> {
    config: PlannerConfig<I::Config>,
    decoder: I::Decoder,
    blocks: PageKeyedCache<I::Start, Block<I>>,
    plans: PageKeyedCache<PlanKey<I::Start>, Plan>,
    evaluated_branches: u64,
    uncached_plans: u64,
    /// A debugger's breakpoints (sorted): blocks end before them.
    stops: Vec<GuestVirt>,
}

impl<I: Isa> std::fmt::Debug for Planner<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planner")
            .field("config", &self.config)
            .field("blocks", &self.blocks.len())
            .field("plans", &self.plans.len())
            .field("stops", &self.stops)
            .finish_non_exhaustive()
    }
}

impl<I: Isa> Planner<I> {
    /// A planner with empty caches.
    ///
    /// # Errors
    ///
    /// A breakpoint count outside 1..=[`MAX_BREAKPOINTS`], an exploration
    /// limit of zero, or a decoder that cannot be set up.
    pub fn new(config: PlannerConfig<I::Config>) -> Result<Self, PlannerError> {
        if !(1..=MAX_BREAKPOINTS).contains(&config.breakpoints) {
            return Err(PlannerError::BreakpointCount(config.breakpoints));
        }
        if config.explore_limit == 0 {
            return Err(PlannerError::ExploreLimit);
        }
        Ok(Self {
            decoder: I::decoder(&config.classify)?,
            blocks: PageKeyedCache::new(config.block_cache_capacity.max(1)),
            plans: PageKeyedCache::new(config.plan_cache_capacity.max(1)),
            config,
            evaluated_branches: 0,
            uncached_plans: 0,
            stops: Vec::new(),
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &PlannerConfig<I::Config> {
        &self.config
    }

    /// Makes a debugger's breakpoints points where every plan stops:
    /// blocks end before them ([`BlockEnd::Breakpoint`]). A change drops
    /// every cached block and plan; none costs nothing.
    pub fn set_debug_stops(&mut self, mut stops: Vec<GuestVirt>) {
        stops.sort_unstable();
        stops.dedup();
        if stops != self.stops {
            self.stops = stops;
            self.invalidate_all();
        }
    }

    /// The block starting at `start`, decoded or from the cache.
    pub fn block(&mut self, mem: &dyn GuestMemory, start: I::Start) -> Arc<Block<I>> {
        if let Some(block) = self.blocks.get(&start) {
            return block;
        }
        let block = Arc::new(I::scan_block(&self.decoder, mem, start, &self.stops));
        self.blocks.insert(start, Arc::clone(&block), &block.pages);
        block
    }

    /// The CFG explored from `start` (up to the configured node limit).
    pub fn explore(&mut self, mem: &dyn GuestMemory, start: I::Start) -> Cfg<I> {
        let limit = self.config.explore_limit;
        Cfg::explore(start, limit, |at| self.block(mem, at))
    }

    /// The plan for resuming at `start` with the configured budget.
    pub fn plan(
        &mut self,
        mem: &dyn GuestMemory,
        start: I::Start,
        start_armable: bool,
    ) -> Arc<Plan> {
        self.plan_with_budget(mem, start, start_armable, self.config.breakpoints)
    }

    /// The plan for resuming at `start` with `budget` breakpoints (clamped to
    /// 1..=[`MAX_BREAKPOINTS`]).
    pub fn plan_with_budget(
        &mut self,
        mem: &dyn GuestMemory,
        start: I::Start,
        start_armable: bool,
        budget: usize,
    ) -> Arc<Plan> {
        let budget = budget.clamp(1, MAX_BREAKPOINTS);
        let key = PlanKey {
            start,
            start_armable,
            // Clamped to MAX_BREAKPOINTS just above.
            #[allow(clippy::cast_possible_truncation)]
            budget: budget as u8,
        };
        if let Some(plan) = self.plans.get(&key) {
            return plan;
        }
        let cfg = self.explore(mem, start);
        let plan = Arc::new(plan_on(&cfg, I::address(start), start_armable, budget));
        // A plan that read code from many pages is rare and cheap to redo;
        // not caching it keeps every cached plan's dependency list short.
        if cfg.pages.len() <= MAX_CACHED_PLAN_PAGES {
            self.plans.insert(key, Arc::clone(&plan), &cfg.pages);
        } else {
            self.uncached_plans += 1;
        }
        plan
    }

    /// Resume with the plan for `start`; when it has none (the branch at
    /// EIP needs more breakpoints than there are), plan from the known
    /// successor of that branch instead, which the branch reaches natively.
    pub(crate) fn resume_planned(
        &mut self,
        mem: &dyn GuestMemory,
        start: I::Start,
        start_armable: bool,
        successor: Option<I::Start>,
    ) -> Step<I> {
        let plan = self.plan(mem, start, start_armable);
        if let Some(breakpoints) = &plan.breakpoints {
            return Step::Resume {
                breakpoints: breakpoints.clone(),
            };
        }
        // Without a known successor there is nothing better than a single
        // step. Plain code before the first POI always admits the plan "arm
        // the first POI", so this does not happen; but never resume without
        // a safe plan.
        let Some(successor) = successor else {
            return Step::SingleStep;
        };
        self.evaluated_branches += 1;
        // Resuming natively on the branch takes it to `successor`, where a
        // breakpoint does fire: a one-node plan on it always exists.
        let plan = self.plan(mem, successor, true);
        match &plan.breakpoints {
            Some(breakpoints) => Step::Resume {
                breakpoints: breakpoints.clone(),
            },
            None => Step::SingleStep,
        }
    }

    /// A guest-physical page was written: drop the blocks and plans decoded
    /// from it. The shadow MMU calls this for write-tracked code pages.
    pub fn invalidate_phys_page(&mut self, page: GuestPhys) {
        self.blocks.invalidate_phys_page(page.page());
        self.plans.invalidate_phys_page(page.page());
    }

    /// The mapping of a guest-virtual page changed: drop what was decoded
    /// through it.
    pub fn invalidate_virt_page(&mut self, page: GuestVirt) {
        self.blocks.invalidate_virt_page(page.page());
        self.plans.invalidate_virt_page(page.page());
    }

    /// The mappings of the guest-virtual pages in `pages` (page numbers)
    /// changed: drop what was decoded through them.
    pub fn invalidate_virt_range(&mut self, pages: std::ops::Range<u32>) {
        self.blocks.invalidate_virt_range(pages.clone());
        self.plans.invalidate_virt_range(pages);
    }

    /// Everything may have changed (e.g. paging switched on).
    pub fn invalidate_all(&mut self) {
        self.blocks.clear();
        self.plans.clear();
    }

    /// Cache counters.
    #[must_use]
    pub fn stats(&self) -> PlannerStats {
        PlannerStats {
            blocks: self.blocks.stats,
            plans: self.plans.stats,
            evaluated_branches: self.evaluated_branches,
            uncached_plans: self.uncached_plans,
        }
    }

    /// Blocks and plans cached now.
    #[must_use]
    pub fn cached(&self) -> (usize, usize) {
        (self.blocks.len(), self.plans.len())
    }

    /// Cache sizes and counters, for reports.
    #[must_use]
    pub fn cache_summary(&self) -> PlanCacheSummary {
        PlanCacheSummary {
            blocks: self.blocks.len(),
            plans: self.plans.len(),
            stats: self.stats(),
        }
    }
}

impl Planner<X86> {
    /// Changes the classifier's view of host and guest state; every cached
    /// block and plan is dropped when it differs.
    pub fn set_classify(&mut self, classify: ClassifyConfig) {
        if classify != self.config.classify {
            self.config.classify = classify;
            self.decoder = classify;
            self.invalidate_all();
        }
    }

    /// Decides what to do with the guest stopped at its current EIP.
    ///
    /// Call it on every entry into the monitor in guest kernel mode: after
    /// a planned breakpoint fires, after an emulated instruction, after an
    /// exception or interrupt was delivered. Pointer branches and
    /// conditional branches at EIP are resolved from `cpu` and `mem`, so the
    /// guest never needs to be single-stepped.
    pub fn step(&mut self, cpu: &dyn CpuView, mem: &dyn GuestMemory) -> Step {
        let at = GuestVirt(cpu.segment_base(SegReg::Cs).wrapping_add(cpu.eip()));
        if !cpu.code_32bit() {
            // The planner decodes 32-bit code only; 16-bit protected-mode
            // code (BIOS thunks and the like) is interpreted.
            return Step::Interpret;
        }
        let block = self.block(mem, at);
        let poi = match block.end {
            BlockEnd::Unfetchable(bad) if bad == at => {
                return Step::Fault(fetch_fault(mem, at, X86::LONGEST_INSTRUCTION));
            }
            BlockEnd::Poi(poi) if poi.at == at => poi,
            // The monitor passes a debugger's breakpoint itself before it
            // asks; should it not, one native step is always safe.
            BlockEnd::Breakpoint(stop) if stop == at => return Step::SingleStep,
            // Plain code first: the first POI can always be armed.
            _ => return self.resume_planned(mem, at, false, None),
        };
        match poi.kind {
            PoiKind::Sensitive { .. } => Step::Emulate(poi),
            PoiKind::PointerBranch(kind) if kind.needs_emulation() => Step::Emulate(poi),
            PoiKind::Unrecognized => Step::Unrecognized(at),
            PoiKind::PointerBranch(PointerKind::Ret | PointerKind::RetImm)
                if !cpu.stack_32bit() =>
            {
                Step::Interpret
            }
            PoiKind::PointerBranch(_) => match pointer_target(&poi.instr, cpu, mem) {
                Some(Ok(target)) => self.resume_planned(mem, target, true, None),
                Some(Err(fault)) => Step::Fault(fault),
                // Every near pointer kind has a target; anything else is
                // emulated rather than guessed.
                None => Step::Emulate(poi),
            },
            PoiKind::CondBranch { taken } => {
                let successor = if branch_taken(&poi.instr, cpu) {
                    taken
                } else {
                    poi.next()
                };
                self.resume_planned(mem, at, false, Some(successor))
            }
            PoiKind::DirectBranch { target, .. } => {
                self.resume_planned(mem, at, false, Some(target))
            }
            PoiKind::Plain => self.resume_planned(mem, at, false, None),
        }
    }
}

/// The plan for an explored CFG.
#[must_use]
pub fn plan_on<I: Isa>(cfg: &Cfg<I>, start: GuestVirt, start_armable: bool, budget: usize) -> Plan {
    Plan {
        start,
        start_armable,
        budget,
        breakpoints: cfg.breakpoints(start_armable, budget),
        explored_pois: cfg.poi_count(),
        explored_nodes: cfg.graph.node_count(),
    }
}
