//! `btvmm plan`: what breakpoint tracing will face in a kernel. Counts every
//! instruction of the kernel's executable sections by point-of-interest
//! class, then explores the CFG from one entry and shows the breakpoint plan
//! for 1 to N breakpoints.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Formatter, GasFormatter, Instruction, Mnemonic, OpKind,
};
use serde::Serialize;

use btvmm_core::{GuestMemory, GuestVirt};
use cfg_planner::petgraph::visit::{Bfs, EdgeRef};
use cfg_planner::{
    CfgNode, ClassifyConfig, Delivery, EdgeKind, Isa, NodeKind, PlanCacheSummary, Planner,
    PlannerConfig, PoiKind, PointerKind, SensitiveKind, X86, classify,
};

use crate::LoaderError;
use crate::elf::{KernelElf, parse_system_map};
use crate::image::{BzImageInfo, MAX_VMLINUX_BYTES, decompress, parse_bzimage};

/// What `btvmm plan` was asked.
#[derive(Clone, Debug)]
pub struct PlanRequest {
    /// The kernel: a bzImage or a vmlinux ELF.
    pub kernel: PathBuf,
    /// Plan from this guest-virtual address.
    pub at: Option<u32>,
    /// Plan from this symbol.
    pub symbol: Option<String>,
    /// Symbols from a System.map when the ELF has none.
    pub system_map: Option<PathBuf>,
    /// Plans for 1..=this many breakpoints.
    pub max_breakpoints: usize,
    /// POI nodes a plan explores at most.
    pub explore_limit: usize,
    /// Sensitive instruction forms listed.
    pub top: usize,
    /// CFG nodes listed.
    pub show_nodes: usize,
    /// Host facts for the classifier.
    pub classify: ClassifyConfig,
    /// Also plan from every function entry with this many breakpoints.
    pub all_functions: Option<usize>,
}

/// How the kernel came.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "format", rename_all = "lowercase")]
pub enum ImageFormat {
    /// A bzImage with a compressed vmlinux inside.
    BzImage {
        /// Its setup header.
        header: BzImageInfo,
        /// Seconds spent inflating the payload.
        inflate_seconds: f64,
    },
    /// A bare vmlinux ELF.
    Elf,
}

/// A loaded kernel.
#[derive(Debug)]
pub struct LoadedKernel {
    /// The file.
    pub path: PathBuf,
    /// Its container.
    pub format: ImageFormat,
    /// Size of the vmlinux ELF.
    pub vmlinux_bytes: usize,
    /// The parsed ELF.
    pub elf: KernelElf,
}

/// The largest kernel file (bzImage or vmlinux) read.
pub const MAX_IMAGE_BYTES: u64 = 512 << 20;

/// Reads a kernel file of at most [`MAX_IMAGE_BYTES`].
pub fn read_limited(path: &Path) -> Result<Vec<u8>, LoaderError> {
    let io_error = |source| LoaderError::Io {
        path: path.to_owned(),
        source,
    };
    let mut data = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_IMAGE_BYTES + 1).read_to_end(&mut data))
        .map_err(io_error)?;
    if data.len() as u64 > MAX_IMAGE_BYTES {
        return Err(LoaderError::NotAKernel {
            reason: format!("the file is larger than {MAX_IMAGE_BYTES} bytes"),
        });
    }
    Ok(data)
}

/// Reads a bzImage or vmlinux file.
pub fn load_kernel(path: &Path) -> Result<LoadedKernel, LoaderError> {
    let data = read_limited(path)?;
    let (format, vmlinux) = if data.starts_with(b"\x7fELF") {
        (ImageFormat::Elf, data)
    } else {
        let header = parse_bzimage(&data)?;
        let started = Instant::now();
        let payload = &data[header.payload_offset..header.payload_offset + header.payload_length];
        let vmlinux = decompress(payload, header.compression, MAX_VMLINUX_BYTES)?;
        if !vmlinux.starts_with(b"\x7fELF") {
            return Err(LoaderError::NotAKernel {
                reason: "the decompressed payload is not an ELF file".into(),
            });
        }
        let inflate_seconds = started.elapsed().as_secs_f64();
        (
            ImageFormat::BzImage {
                header,
                inflate_seconds,
            },
            vmlinux,
        )
    };
    let elf = KernelElf::parse(&vmlinux)?;
    Ok(LoadedKernel {
        path: path.to_owned(),
        format,
        vmlinux_bytes: vmlinux.len(),
        elf,
    })
}

/// One row of a count table.
#[derive(Clone, Debug, Serialize)]
pub struct Count {
    /// What is counted.
    pub class: String,
    /// How many.
    pub count: u64,
}

/// One sensitive instruction form and how often it occurs.
#[derive(Clone, Debug, Serialize)]
pub struct Form {
    /// The form, e.g. `push %ds` or `mov to %cr3`.
    pub form: String,
    /// Its class.
    pub kind: SensitiveKind,
    /// Traps by itself or silent.
    pub delivery: Delivery,
    /// Sites.
    pub count: u64,
}

/// An executable section.
#[derive(Clone, Debug, Serialize)]
pub struct SectionSummary {
    /// Name.
    pub name: String,
    /// Link address.
    pub virt: GuestVirt,
    /// Size in bytes.
    pub bytes: usize,
}

/// The linear sweep over all executable sections.
#[derive(Clone, Debug, Serialize)]
pub struct Sweep {
    /// The sections swept.
    pub sections: Vec<SectionSummary>,
    /// Bytes decoded.
    pub bytes: u64,
    /// Instructions decoded.
    pub instructions: u64,
    /// Of those, undecodable byte runs (data or padding in text).
    pub unrecognized: u64,
    /// INT3 bytes that follow an unconditional transfer (ret, jmp, ud2 or
    /// another such int3): the padding between functions, not code that runs.
    pub int3_padding: u64,
    /// Wall time of decoding and classifying.
    pub seconds: f64,
    /// Instructions per second.
    pub instructions_per_second: f64,
    /// Instructions by planner class.
    pub classes: Vec<Count>,
    /// Pointer branches by kind.
    pub pointer_branches: Vec<Count>,
    /// Sensitive instructions by class, trapping ones first.
    pub sensitive: Vec<Form>,
    /// The most frequent sensitive instruction forms.
    pub top_sensitive: Vec<Form>,
    /// Distinct targets of direct calls inside the text: the kernel's
    /// function entries, as far as direct calls reach them.
    #[serde(skip)]
    pub call_targets: Vec<GuestVirt>,
}

/// Decodes and classifies every instruction of the executable sections,
/// front to back.
#[must_use]
pub fn sweep(elf: &KernelElf, config: &ClassifyConfig, top: usize) -> Sweep {
    let started = Instant::now();
    let mut plain = 0u64;
    let mut conditional = 0u64;
    let mut jumps = 0u64;
    let mut calls = 0u64;
    let mut unrecognized = 0u64;
    let mut pointers: BTreeMap<PointerKind, u64> = BTreeMap::new();
    let mut sensitive: BTreeMap<SensitiveKind, (Delivery, u64)> = BTreeMap::new();
    let mut forms: HashMap<String, (SensitiveKind, Delivery, u64)> = HashMap::new();
    let mut instructions = 0u64;
    let mut bytes = 0u64;
    let mut int3_padding = 0u64;
    let mut call_targets = Vec::new();
    let mut instr = Instruction::default();

    for section in &elf.sections {
        bytes += section.bytes.len() as u64;
        let mut decoder = Decoder::with_ip(
            32,
            &section.bytes,
            u64::from(section.virt.0),
            DecoderOptions::NONE,
        );
        let mut after_transfer = false;
        while decoder.can_decode() {
            decoder.decode_out(&mut instr);
            instructions += 1;
            let padding = after_transfer && instr.mnemonic() == Mnemonic::Int3;
            int3_padding += u64::from(padding);
            after_transfer = padding
                || matches!(
                    instr.flow_control(),
                    FlowControl::Return
                        | FlowControl::UnconditionalBranch
                        | FlowControl::IndirectBranch
                )
                || instr.mnemonic() == Mnemonic::Ud2;
            match classify(&instr, config) {
                PoiKind::Plain => plain += 1,
                PoiKind::CondBranch { .. } => conditional += 1,
                PoiKind::DirectBranch { call: false, .. } => jumps += 1,
                PoiKind::DirectBranch { call: true, target } => {
                    calls += 1;
                    call_targets.push(target);
                }
                PoiKind::PointerBranch(kind) => *pointers.entry(kind).or_default() += 1,
                PoiKind::Sensitive { kind, delivery } => {
                    sensitive.entry(kind).or_insert((delivery, 0)).1 += 1;
                    forms.entry(form(&instr)).or_insert((kind, delivery, 0)).2 += 1;
                }
                PoiKind::Unrecognized => unrecognized += 1,
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    call_targets.sort_unstable();
    call_targets.dedup();
    call_targets.retain(|&target| elf.section_at(target).is_some());

    let pointer_total: u64 = pointers.values().sum();
    let silent_total: u64 = sensitive
        .values()
        .filter(|(delivery, _)| *delivery == Delivery::Silent)
        .map(|(_, count)| count)
        .sum();
    let trapping_total: u64 =
        sensitive.values().map(|(_, count)| count).sum::<u64>() - silent_total;
    let count = |class: &str, count| Count {
        class: class.into(),
        count,
    };
    let mut sensitive_rows: Vec<Form> = sensitive
        .iter()
        .map(|(&kind, &(delivery, count))| Form {
            form: kind.name().into(),
            kind,
            delivery,
            count,
        })
        .collect();
    sensitive_rows.sort_by_key(|row| {
        (
            row.delivery == Delivery::Silent,
            std::cmp::Reverse(row.count),
        )
    });
    let mut top_sensitive: Vec<Form> = forms
        .into_iter()
        .map(|(form, (kind, delivery, count))| Form {
            form,
            kind,
            delivery,
            count,
        })
        .collect();
    top_sensitive.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.form.cmp(&b.form)));
    top_sensitive.truncate(top);

    Sweep {
        sections: elf
            .sections
            .iter()
            .map(|section| SectionSummary {
                name: section.name.clone(),
                virt: section.virt,
                bytes: section.bytes.len(),
            })
            .collect(),
        bytes,
        instructions,
        unrecognized,
        int3_padding,
        seconds,
        // Counts far below 2^52 convert exactly.
        #[allow(clippy::cast_precision_loss)]
        instructions_per_second: instructions as f64 / seconds.max(1e-9),
        classes: vec![
            count("plain", plain),
            count("conditional branch", conditional),
            count("direct jmp", jumps),
            count("direct call", calls),
            count("pointer branch", pointer_total),
            count("sensitive, traps by itself", trapping_total),
            count("sensitive, silent (needs a breakpoint)", silent_total),
            count("unrecognized", unrecognized),
        ],
        pointer_branches: PointerKind::ALL
            .iter()
            .map(|kind| count(kind.name(), pointers.get(kind).copied().unwrap_or(0)))
            .collect(),
        sensitive: sensitive_rows,
        top_sensitive,
        call_targets,
    }
}

/// Planning from every function entry: the planner at kernel scale.
#[derive(Clone, Debug, Serialize)]
pub struct FunctionPlans {
    /// Function entries planned.
    pub functions: usize,
    /// Which entries (x86: the distinct direct-call targets; ARM: the
    /// kallsyms functions).
    pub entries: String,
    /// Breakpoints per plan.
    pub budget: usize,
    /// Wall time for all of them, cold caches.
    pub seconds: f64,
    /// Plans per second.
    pub plans_per_second: f64,
    /// Plans by number of breakpoints armed (index = count).
    pub by_breakpoints: Vec<u64>,
    /// Entries whose first instruction must be handled by the monitor
    /// before anything can run natively (a sensitive instruction or a
    /// pointer branch right at the entry).
    pub step_first: u64,
    /// POI nodes explored per plan, on average.
    pub mean_explored_pois: f64,
    /// Plans whose exploration hit the node limit.
    pub hit_explore_limit: u64,
    /// Blocks and plans in the caches afterwards.
    pub cache: PlanCacheSummary,
    /// Growth of the process's resident memory while planning (VmRSS
    /// after minus before), KiB: the planner's caches and graphs.
    pub resident_growth_kib: Option<u64>,
}

/// Plans from every one of `functions` with `budget` breakpoints, cold
/// caches: the planner at kernel scale, for any architecture.
pub(crate) fn plan_functions<I: Isa>(
    mem: &dyn GuestMemory,
    planner: &mut Planner<I>,
    functions: &[I::Start],
    entries: &str,
    budget: usize,
) -> FunctionPlans {
    let resident_before = status_kib("VmRSS:");
    let started = Instant::now();
    let mut by_breakpoints = vec![0u64; budget + 1];
    let mut step_first = 0u64;
    let mut explored = 0u64;
    let mut hit_limit = 0u64;
    let limit = planner.config().explore_limit;
    for &function in functions {
        let plan = planner.plan_with_budget(mem, function, false, budget);
        explored += plan.explored_pois as u64;
        hit_limit += u64::from(plan.explored_pois >= limit);
        match &plan.breakpoints {
            Some(armed) => by_breakpoints[armed.len().min(budget)] += 1,
            None => step_first += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // Counts far below 2^52 convert exactly.
    #[allow(clippy::cast_precision_loss)]
    let (plans_per_second, mean_explored_pois) = (
        functions.len() as f64 / seconds.max(1e-9),
        explored as f64 / functions.len().max(1) as f64,
    );
    FunctionPlans {
        functions: functions.len(),
        entries: entries.to_owned(),
        budget,
        seconds,
        plans_per_second,
        by_breakpoints,
        step_first,
        mean_explored_pois,
        hit_explore_limit: hit_limit,
        cache: planner.cache_summary(),
        resident_growth_kib: status_kib("VmRSS:")
            .zip(resident_before)
            .map(|(after, before)| after.saturating_sub(before)),
    }
}

/// A readable name for a sensitive instruction's form: the mnemonic, plus
/// the segment, control or debug register it touches and the vector of an
/// INT n.
fn form(instr: &Instruction) -> String {
    let mnemonic = format!("{:?}", instr.mnemonic()).to_lowercase();
    let special = (0..instr.op_count()).find_map(|op| {
        let is_register = instr.op_kind(op) == OpKind::Register;
        let register = instr.op_register(op);
        (is_register && (register.is_segment_register() || register.is_cr() || register.is_dr()))
            .then(|| (op, format!("%{register:?}").to_lowercase()))
    });
    match (instr.mnemonic(), special) {
        (Mnemonic::Mov, Some((0, register))) => format!("mov to {register}"),
        (Mnemonic::Mov, Some((_, register))) => format!("mov from {register}"),
        (_, Some((_, register))) => format!("{mnemonic} {register}"),
        (Mnemonic::Int, None) => format!("int ${:#x}", instr.immediate8()),
        _ => mnemonic,
    }
}

/// One node of the explored CFG.
#[derive(Clone, Debug, Serialize)]
pub struct NodeSummary {
    /// Address.
    pub at: GuestVirt,
    /// The instruction (GNU syntax) or pseudo-node name.
    pub text: String,
    /// Coverage role.
    pub role: String,
    /// Successors.
    pub successors: Vec<(EdgeKind, GuestVirt)>,
}

/// One plan.
#[derive(Clone, Debug, Serialize)]
pub struct PlanSummary {
    /// Breakpoints available.
    pub budget: usize,
    /// Addresses armed, or `None` when none is safe.
    pub breakpoints: Option<Vec<GuestVirt>>,
}

/// The CFG and plans from one entry.
#[derive(Clone, Debug, Serialize)]
pub struct EntryReport {
    /// The entry.
    pub at: GuestVirt,
    /// How it was chosen.
    pub chosen_by: String,
    /// POI nodes explored.
    pub pois: usize,
    /// All nodes explored.
    pub nodes: usize,
    /// Node limit.
    pub explore_limit: usize,
    /// The first nodes, in exploration order.
    pub listed: Vec<NodeSummary>,
    /// Plans for resuming at the entry (EFLAGS.RF set), 1..=N breakpoints.
    pub plans: Vec<PlanSummary>,
    /// Wall time of exploring and planning.
    pub seconds: f64,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The kernel file.
    pub kernel: PathBuf,
    /// Its container.
    pub image: ImageFormat,
    /// Size of the vmlinux ELF.
    pub vmlinux_bytes: usize,
    /// Instruction counts.
    pub sweep: Sweep,
    /// The entry's CFG and plans.
    pub entry: EntryReport,
    /// The planner's caches after planning from the entry.
    pub planner_cache: PlanCacheSummary,
    /// Plans from every function entry, when asked for.
    pub function_plans: Option<FunctionPlans>,
    /// Peak resident memory of the process, KiB (VmHWM).
    pub peak_memory_kib: Option<u64>,
}

/// Builds the report.
pub fn build_report(request: &PlanRequest) -> Result<Report, LoaderError> {
    let kernel = load_kernel(&request.kernel)?;
    let elf = &kernel.elf;
    let (entry, chosen_by) = choose_entry(request, elf)?;
    if elf.section_at(entry).is_none() {
        return Err(LoaderError::OutsideText(entry.0));
    }
    let sweep = sweep(elf, &request.classify, request.top);

    let mut planner = Planner::<X86>::new(PlannerConfig {
        breakpoints: request.max_breakpoints,
        explore_limit: request.explore_limit,
        classify: request.classify,
        ..PlannerConfig::default()
    })?;
    let entry = entry_report(
        &mut planner,
        &elf.memory,
        entry,
        chosen_by,
        request.show_nodes,
        |node| describe(&node.kind),
    );
    let planner_cache = planner.cache_summary();
    let function_plans = match request.all_functions {
        Some(budget) => {
            let mut planner = Planner::<X86>::new(PlannerConfig {
                breakpoints: budget,
                explore_limit: request.explore_limit,
                classify: request.classify,
                ..PlannerConfig::default()
            })?;
            Some(plan_functions(
                &elf.memory,
                &mut planner,
                &sweep.call_targets,
                "distinct direct-call targets",
                budget,
            ))
        }
        None => None,
    };
    Ok(Report {
        kernel: kernel.path.clone(),
        image: kernel.format.clone(),
        vmlinux_bytes: kernel.vmlinux_bytes,
        sweep,
        entry,
        planner_cache,
        function_plans,
        peak_memory_kib: peak_memory_kib(),
    })
}

/// The CFG from `entry` (the first `show_nodes` nodes breadth-first, each
/// described by `describe`) and plans for 1..=N breakpoints, N the
/// planner's configured count, for any architecture. The entry is not
/// armable: the guest resumes there (x86: with EFLAGS.RF set; ARM: the
/// monitor passes it first).
pub(crate) fn entry_report<I: Isa>(
    planner: &mut Planner<I>,
    mem: &dyn GuestMemory,
    entry: I::Start,
    chosen_by: String,
    show_nodes: usize,
    describe: impl Fn(&CfgNode<I>) -> String,
) -> EntryReport {
    let started = Instant::now();
    let max_breakpoints = planner.config().breakpoints;
    let cfg = planner.explore(mem, entry);
    let plans = (1..=max_breakpoints)
        .map(|budget| PlanSummary {
            budget,
            breakpoints: planner
                .plan_with_budget(mem, entry, false, budget)
                .breakpoints
                .clone(),
        })
        .collect();
    let seconds = started.elapsed().as_secs_f64();
    let mut order = Vec::new();
    let mut bfs = Bfs::new(&cfg.graph, cfg.root);
    while let Some(node) = bfs.next(&cfg.graph) {
        order.push(node);
    }
    let listed = order
        .into_iter()
        .take(show_nodes)
        .map(|node| {
            let weight = &cfg.graph[node];
            NodeSummary {
                at: weight.guest_virt(),
                text: describe(weight),
                role: format!("{:?}", weight.role()).to_lowercase(),
                successors: cfg
                    .graph
                    .edges(node)
                    .map(|edge| (*edge.weight(), cfg.graph[edge.target()].guest_virt()))
                    .collect(),
            }
        })
        .collect();
    EntryReport {
        at: I::address(entry),
        chosen_by,
        pois: cfg.poi_count(),
        nodes: cfg.graph.node_count(),
        explore_limit: planner.config().explore_limit,
        listed,
        plans,
        seconds,
    }
}

fn choose_entry(
    request: &PlanRequest,
    elf: &KernelElf,
) -> Result<(GuestVirt, String), LoaderError> {
    if let Some(at) = request.at {
        return Ok((GuestVirt(at), "--at".into()));
    }
    let Some(name) = &request.symbol else {
        return Ok((elf.entry, "the ELF entry point".into()));
    };
    let symbols = match &request.system_map {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| LoaderError::Io {
                path: path.clone(),
                source,
            })?;
            parse_system_map(&text)?
        }
        None if elf.symbols.is_empty() => {
            return Err(LoaderError::NoSymbols(
                "the kernel ELF has no symbol table (a bzImage's vmlinux is stripped); pass --system-map or --at"
                    .into(),
            ));
        }
        None => elf.symbols.clone(),
    };
    let at = symbols
        .get(name)
        .copied()
        .ok_or_else(|| LoaderError::UnknownSymbol(name.clone()))?;
    Ok((at, format!("symbol {name}")))
}

fn describe(kind: &NodeKind) -> String {
    match kind {
        NodeKind::Entry => "(entry: plain code)".into(),
        NodeKind::Unfetchable => "(code not mapped)".into(),
        NodeKind::LongRun => "(long straight-line run continues)".into(),
        NodeKind::Frontier => "(not explored: node limit)".into(),
        NodeKind::Breakpoint => "(a debugger's breakpoint)".into(),
        NodeKind::Poi(poi) => {
            let mut formatter = GasFormatter::new();
            formatter.options_mut().set_uppercase_hex(false);
            formatter.options_mut().set_hex_prefix("0x");
            formatter.options_mut().set_hex_suffix("");
            let mut text = String::new();
            formatter.format(&poi.instr, &mut text);
            text
        }
    }
}

/// Peak resident set size of this process (Linux `VmHWM`).
fn peak_memory_kib() -> Option<u64> {
    status_kib("VmHWM:")
}

/// A KiB field of `/proc/self/status`.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The report as text for a terminal.
#[must_use]
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_text(report, &mut out);
    out
}

fn write_text(report: &Report, out: &mut String) -> std::fmt::Result {
    let sweep = &report.sweep;
    writeln!(out, "btvmm plan: {}", report.kernel.display())?;
    match &report.image {
        ImageFormat::BzImage {
            header,
            inflate_seconds,
        } => {
            writeln!(
                out,
                "image     bzImage, boot protocol {}.{:02}, {}",
                header.protocol >> 8,
                header.protocol & 0xff,
                header
                    .kernel_version
                    .as_deref()
                    .unwrap_or("(no version string)")
            )?;
            writeln!(
                out,
                "payload   {} {} bytes -> vmlinux ELF {} bytes ({:.2} s to inflate)",
                header.compression.name(),
                thousands(header.payload_length as u64),
                thousands(report.vmlinux_bytes as u64),
                inflate_seconds
            )?;
        }
        ImageFormat::Elf => {
            writeln!(
                out,
                "image     vmlinux ELF, {} bytes",
                thousands(report.vmlinux_bytes as u64)
            )?;
        }
    }
    let sections: Vec<String> = sweep
        .sections
        .iter()
        .map(|section| {
            format!(
                "{} @{} ({})",
                section.name,
                section.virt,
                thousands(section.bytes as u64)
            )
        })
        .collect();
    writeln!(out, "text      {}", sections.join(", "))?;
    writeln!(
        out,
        "decode    {} instructions, {} bytes in {:.3} s: {:.1} M instructions/s",
        thousands(sweep.instructions),
        thousands(sweep.bytes),
        sweep.seconds,
        sweep.instructions_per_second / 1e6
    )?;

    writeln!(
        out,
        "\n{:<44}{:>12}{:>9}",
        "instructions by class", "count", "share"
    )?;
    // Shares of counts far below 2^52.
    #[allow(clippy::cast_precision_loss)]
    let share = |count: u64| 100.0 * count as f64 / sweep.instructions.max(1) as f64;
    for row in &sweep.classes {
        writeln!(
            out,
            "  {:<42}{:>12}{:>8.2}%",
            row.class,
            thousands(row.count),
            share(row.count)
        )?;
    }
    writeln!(out, "\npointer branches by kind")?;
    for row in &sweep.pointer_branches {
        writeln!(out, "  {:<42}{:>12}", row.class, thousands(row.count))?;
    }
    writeln!(out, "\nsensitive instructions by class")?;
    for row in &sweep.sensitive {
        let delivery = match row.delivery {
            Delivery::Traps => "traps",
            Delivery::TrapsOrFallsThrough => "traps/falls through",
            Delivery::Silent => "silent",
        };
        writeln!(
            out,
            "  {:<34}{:<8}{:>12}",
            row.form,
            delivery,
            thousands(row.count)
        )?;
    }
    writeln!(
        out,
        "  (int3 counts the {} int3 bytes that pad functions after a ret/jmp/ud2)",
        thousands(sweep.int3_padding)
    )?;
    writeln!(out, "\ntop sensitive instruction forms")?;
    for row in &sweep.top_sensitive {
        writeln!(
            out,
            "  {:<34}{:<20}{:>10}",
            row.form,
            row.kind.name(),
            thousands(row.count)
        )?;
    }

    write_planning(
        out,
        &report.entry,
        &report.planner_cache,
        report.function_plans.as_ref(),
    )?;
    if let Some(kib) = report.peak_memory_kib {
        writeln!(out, "memory     peak resident {} KiB", thousands(kib))?;
    }
    Ok(())
}

/// The entry's CFG and plans, the planner's caches and the plans from
/// every function: the planning half of the report, for any architecture.
pub(crate) fn write_planning(
    out: &mut String,
    entry: &EntryReport,
    cache: &PlanCacheSummary,
    functions: Option<&FunctionPlans>,
) -> std::fmt::Result {
    writeln!(
        out,
        "\nentry {} ({}): CFG of {} POIs, {} nodes (limit {}), planned in {:.3} s",
        entry.at, entry.chosen_by, entry.pois, entry.nodes, entry.explore_limit, entry.seconds
    )?;
    for node in &entry.listed {
        let successors: Vec<String> = node
            .successors
            .iter()
            .map(|(edge, at)| format!("{}:{at}", edge_name(*edge)))
            .collect();
        writeln!(
            out,
            "  {}  {:<40} {:<9} {}",
            node.at,
            node.text,
            node.role,
            successors.join(" ")
        )?;
    }
    if entry.nodes > entry.listed.len() {
        writeln!(out, "  ... {} more nodes", entry.nodes - entry.listed.len())?;
    }
    writeln!(out, "plans for resuming at the entry (not armed itself):")?;
    for plan in &entry.plans {
        match &plan.breakpoints {
            Some(breakpoints) => {
                let list: Vec<String> = breakpoints.iter().map(ToString::to_string).collect();
                writeln!(
                    out,
                    "  N={}  arm {}",
                    plan.budget,
                    if list.is_empty() {
                        "nothing".into()
                    } else {
                        list.join(" ")
                    }
                )?;
            }
            None => writeln!(
                out,
                "  N={}  no safe plan: the monitor steps the instruction first",
                plan.budget
            )?,
        }
    }
    writeln!(
        out,
        "\nplanner    {} blocks, {} plans cached ({} block lookups, {} hits)",
        cache.blocks,
        cache.plans,
        cache.stats.blocks.hits + cache.stats.blocks.misses,
        cache.stats.blocks.hits
    )?;
    if let Some(functions) = functions {
        writeln!(
            out,
            "functions  planned from {} function entries ({}), N={}: {:.2} s, {:.0} plans/s",
            thousands(functions.functions as u64),
            functions.entries,
            functions.budget,
            functions.seconds,
            functions.plans_per_second
        )?;
        let spread: Vec<String> = functions
            .by_breakpoints
            .iter()
            .enumerate()
            .map(|(armed, count)| format!("{armed}: {}", thousands(*count)))
            .collect();
        writeln!(
            out,
            "           plans by breakpoints armed: {}",
            spread.join(", ")
        )?;
        writeln!(
            out,
            "           monitor must step the first instruction: {}; mean POIs explored {:.1}; {} hit the limit",
            thousands(functions.step_first),
            functions.mean_explored_pois,
            thousands(functions.hit_explore_limit)
        )?;
        writeln!(
            out,
            "           caches afterwards: {} blocks, {} plans ({} overflow flushes, {} plans too wide to cache); resident memory grew {} KiB",
            thousands(functions.cache.blocks as u64),
            thousands(functions.cache.plans as u64),
            functions.cache.stats.plans.overflows + functions.cache.stats.blocks.overflows,
            functions.cache.stats.uncached_plans,
            functions
                .resident_growth_kib
                .map_or_else(|| "?".into(), thousands)
        )?;
    }
    Ok(())
}

fn edge_name(edge: EdgeKind) -> &'static str {
    match edge {
        EdgeKind::Fallthrough => "next",
        EdgeKind::Taken => "taken",
        EdgeKind::NotTaken => "not-taken",
        EdgeKind::Jump => "jmp",
        EdgeKind::Call => "call",
    }
}

fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    fn decode(bytes: &[u8]) -> Instruction {
        Decoder::with_ip(32, bytes, 0, DecoderOptions::NONE).decode()
    }

    #[test]
    fn forms_name_the_register_touched() {
        assert_eq!(form(&decode(&[0x1e])), "push %ds");
        assert_eq!(form(&decode(&[0x0f, 0xa1])), "pop %fs");
        assert_eq!(form(&decode(&[0x8e, 0xd8])), "mov to %ds");
        assert_eq!(form(&decode(&[0x8c, 0xd8])), "mov from %ds");
        assert_eq!(form(&decode(&[0x0f, 0x22, 0xd8])), "mov to %cr3");
        assert_eq!(form(&decode(&[0xcd, 0x80])), "int $0x80");
        assert_eq!(form(&decode(&[0x9c])), "pushfd");
    }
}
