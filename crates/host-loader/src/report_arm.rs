//! `btvmm plan --arch arm`: what breakpoint tracing faces in an ARMv7
//! kernel (Debian's armmp zImage): its instructions by planner class, the
//! most frequent sensitive forms, decode speed, and the CFG and plans from
//! an entry for 1..N breakpoints (a Cortex-A9 has 6).
//!
//! The kernel's symbols come from its own kallsyms tables
//! ([`crate::kallsyms`]): Debian ships a stub System.map. They give the
//! text's bounds and the functions; the instructions counted are those
//! reachable from the functions' entries ([`cfg_planner::arm_cfg::reachable`]),
//! because ARM text interleaves literal pools that a linear sweep would
//! decode as instructions. The kernel is built in ARM state
//! (`CONFIG_THUMB2_KERNEL` off in Debian's armmp), so entries are ARM.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use btvmm_core::{GuestPhys, GuestVirt, RegionMemory};
use cfg_planner::arm::{
    ArmClassifier, ArmDelivery, ArmMode, ArmPoiKind, ArmPointerKind, ArmSensitiveKind, ItState,
};
use cfg_planner::arm_cfg::{self, ArmCode, ArmStart, Armv7};
use cfg_planner::{CfgNode, NodeKind, PlanCacheSummary, Planner, PlannerConfig};
use serde::Serialize;

use crate::LoaderError;
use crate::image::{Compression, parse_zimage};
use crate::report::{
    EntryReport, FunctionPlans, entry_report, plan_functions, read_limited, write_planning,
};

/// PAGE_OFFSET of a `CONFIG_VMSPLIT_3G` kernel (Debian's armmp).
pub const PAGE_OFFSET: u32 = 0xc000_0000;

/// Where the Image runs: PAGE_OFFSET plus TEXT_OFFSET, which is 0x8000 for
/// most platforms but larger when a platform reserves memory below the
/// kernel (Debian's armmp enables Meson: 0x208000). The Image does not
/// say; the kallsyms addresses do: with the right offset, the functions'
/// first words are prologues (`push {..., lr}`, `mov ip, sp`, `str lr,
/// [sp, #-4]!`), and at a wrong one they are whatever lies there.
fn image_base(image: &[u8], symbols: &crate::kallsyms::Symbols) -> u32 {
    let entries: Vec<u32> = symbols
        .functions()
        .map(|symbol| symbol.guest_virt)
        .take(4000)
        .collect();
    let prologues = |base: u32| {
        entries
            .iter()
            .filter_map(|&at| {
                let offset = usize::try_from(at.checked_sub(base)?).ok()?;
                let bytes = image.get(offset..offset + 4)?;
                Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            })
            .filter(|&word| word >> 16 == 0xe92d || word == 0xe1a0_c00d || word == 0xe52d_e004)
            .count()
    };
    (0..32u32)
        .map(|megabytes| PAGE_OFFSET + (megabytes << 20) + 0x8000)
        .max_by_key(|&base| prologues(base))
        .unwrap_or(PAGE_OFFSET + 0x8000)
}

/// What `btvmm plan --arch arm` asks for.
#[derive(Clone, Debug)]
pub struct ArmPlanRequest {
    /// The zImage.
    pub kernel: PathBuf,
    /// Plan from this address (else `--symbol`, else `start_kernel`).
    pub at: Option<u32>,
    /// Plan from this kernel symbol.
    pub symbol: Option<String>,
    /// Plans for 1..=this many breakpoints.
    pub max_breakpoints: usize,
    /// CFG nodes explored at most.
    pub explore_limit: usize,
    /// Sensitive forms listed.
    pub top: usize,
    /// CFG nodes listed.
    pub show_nodes: usize,
    /// Also plan from every function entry with this many breakpoints.
    pub all_functions: Option<usize>,
}

/// A count by name.
#[derive(Clone, Debug, Serialize)]
pub struct ArmCount {
    /// The class.
    pub class: String,
    /// Instructions.
    pub count: u64,
}

/// A sensitive form and how often it occurs.
#[derive(Clone, Debug, Serialize)]
pub struct ArmForm {
    /// The normalized form (`mcr p15, 0, c7, c10, 5`).
    pub form: String,
    /// Its class.
    pub kind: ArmSensitiveKind,
    /// Traps by itself at PL0, silent, or a host system call.
    pub delivery: ArmDelivery,
    /// Occurrences.
    pub count: u64,
}

/// The instructions reachable from the kernel's functions.
#[derive(Clone, Debug, Serialize)]
pub struct ArmSweep {
    /// Function entries walked from.
    pub functions: usize,
    /// Instructions reached (each once).
    pub instructions: u64,
    /// Seconds the walk and classification took.
    pub seconds: f64,
    /// Instructions per second.
    pub instructions_per_second: f64,
    /// Instructions by planner class.
    pub classes: Vec<ArmCount>,
    /// Pointer branches by kind.
    pub pointer_branches: Vec<ArmCount>,
    /// Sensitive instructions by class.
    pub sensitive: Vec<ArmForm>,
    /// The most frequent sensitive forms.
    pub top_sensitive: Vec<ArmForm>,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct ArmReport {
    /// The file.
    pub kernel: String,
    /// Its size.
    pub zimage_bytes: usize,
    /// Where the compressed kernel sits in it.
    pub payload_offset: usize,
    /// How it is compressed.
    pub compression: Compression,
    /// The inflated Image's size.
    pub image_bytes: usize,
    /// Where the Image runs.
    pub image_base: GuestVirt,
    /// Symbols in its kallsyms.
    pub symbols: usize,
    /// `_stext` .. `_etext`.
    pub text: (GuestVirt, GuestVirt),
    /// The instructions reachable from the functions.
    pub sweep: ArmSweep,
    /// The CFG and plans from the entry, by the planner shared with x86
    /// ([`Planner`] over [`Armv7`]).
    pub entry: EntryReport,
    /// The planner's caches after planning from the entry.
    pub planner_cache: PlanCacheSummary,
    /// Plans from every function entry, when asked for.
    pub function_plans: Option<FunctionPlans>,
}

fn class_name(kind: &ArmPoiKind, conditional: bool) -> &'static str {
    match kind {
        ArmPoiKind::Plain => "plain",
        ArmPoiKind::DirectBranch { link: false, .. } => "direct branch",
        ArmPoiKind::DirectBranch { link: true, .. } => "direct call (BL, BLX)",
        ArmPoiKind::CondBranch { .. } => "conditional branch",
        ArmPoiKind::PointerBranch(_) => "pointer branch",
        ArmPoiKind::Sensitive {
            delivery: ArmDelivery::Traps,
            ..
        } if conditional => "sensitive, traps or falls through (conditional)",
        ArmPoiKind::Sensitive {
            delivery: ArmDelivery::Traps,
            ..
        } => "sensitive, traps by itself",
        ArmPoiKind::Sensitive {
            delivery: ArmDelivery::Silent,
            ..
        } => "sensitive, silent (needs a breakpoint)",
        ArmPoiKind::Sensitive {
            delivery: ArmDelivery::HostSyscall,
            ..
        } => "sensitive, SVC (a host system call: needs a breakpoint)",
        ArmPoiKind::Unrecognized => "unrecognized",
    }
}

fn pointer_name(kind: ArmPointerKind) -> String {
    format!("{kind:?}")
}

/// Builds the report.
pub fn build_arm_report(request: &ArmPlanRequest) -> Result<ArmReport, LoaderError> {
    let file = read_limited(&request.kernel)?;
    let zimage = parse_zimage(&file)?;
    let symbols = crate::kallsyms::find(&zimage.image).map_err(|why| {
        LoaderError::NoSymbols(format!("no kallsyms tables found in the ARM Image: {why}"))
    })?;
    let (text_start, text_end) = symbols.text_range().ok_or_else(|| {
        LoaderError::NoSymbols("the kernel's kallsyms has no _stext/_etext".into())
    })?;
    let classifier = ArmClassifier::new()
        .map_err(|error| LoaderError::Option(format!("the ARM decoder: {error}")))?;
    let text_len = usize::try_from(text_end - text_start).unwrap_or(usize::MAX);
    let image_base = image_base(&zimage.image, &symbols);
    let text_offset = usize::try_from(text_start.wrapping_sub(image_base)).unwrap_or(usize::MAX);
    // Code is read from all of the Image (init text, where start_kernel
    // is, follows the data), but the text must lie in it.
    zimage
        .image
        .get(text_offset..text_offset.saturating_add(text_len))
        .ok_or_else(|| {
            LoaderError::NotAKernel {
                reason: format!(
                    "the text {text_start:#x}..{text_end:#x} lies outside the {}-byte Image at {image_base:#x}",
                    zimage.image.len()
                ),
            }
        })?;
    let code = ArmCode {
        base: GuestVirt(image_base),
        bytes: &zimage.image,
    };
    let image_end = u32::try_from(zimage.image.len())
        .ok()
        .and_then(|len| image_base.checked_add(len))
        .unwrap_or(u32::MAX);

    // The sweep: everything reachable from the functions.
    let entries: Vec<(GuestVirt, ArmMode)> = symbols
        .functions()
        .map(|symbol| (GuestVirt(symbol.guest_virt), ArmMode::Arm))
        .collect();
    let started = Instant::now();
    let reached = arm_cfg::reachable(&classifier, &code, &entries);
    let mut classes: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut pointers: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_kind: BTreeMap<ArmSensitiveKind, u64> = BTreeMap::new();
    let mut forms: BTreeMap<(String, ArmSensitiveKind), u64> = BTreeMap::new();
    for instruction in &reached {
        *classes
            .entry(class_name(&instruction.kind, instruction.conditional))
            .or_default() += 1;
        match instruction.kind {
            ArmPoiKind::PointerBranch(kind) => {
                *pointers.entry(pointer_name(kind)).or_default() += 1
            }
            ArmPoiKind::Sensitive { kind, .. } => {
                *by_kind.entry(kind).or_default() += 1;
                *forms
                    .entry((classifier.summary_key(instruction), kind))
                    .or_default() += 1;
            }
            _ => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut top: Vec<ArmForm> = forms
        .into_iter()
        .map(|((form, kind), count)| ArmForm {
            form,
            kind,
            delivery: kind.delivery(),
            count,
        })
        .collect();
    top.sort_by(|a, b| b.count.cmp(&a.count).then(a.form.cmp(&b.form)));
    top.truncate(request.top);
    let mut sensitive: Vec<ArmForm> = by_kind
        .into_iter()
        .map(|(kind, count)| ArmForm {
            form: format!("{kind:?}"),
            kind,
            delivery: kind.delivery(),
            count,
        })
        .collect();
    sensitive.sort_by_key(|form| std::cmp::Reverse(form.count));
    let count_list = |map: BTreeMap<String, u64>| {
        let mut list: Vec<ArmCount> = map
            .into_iter()
            .map(|(class, count)| ArmCount { class, count })
            .collect();
        list.sort_by_key(|count| std::cmp::Reverse(count.count));
        list
    };
    let instructions = reached.len() as u64;
    let sweep = ArmSweep {
        functions: entries.len(),
        instructions,
        seconds,
        instructions_per_second: instructions as f64 / seconds.max(1e-9),
        classes: count_list(
            classes
                .into_iter()
                .map(|(class, count)| (class.to_owned(), count))
                .collect(),
        ),
        pointer_branches: count_list(pointers),
        sensitive,
        top_sensitive: top,
    };

    // The entry.
    let (name, at) = match (&request.at, &request.symbol) {
        (Some(at), _) => ("--at".to_owned(), *at),
        (None, symbol) => {
            let name = symbol.clone().unwrap_or_else(|| "start_kernel".to_owned());
            let at = symbols
                .get(&name)
                .ok_or_else(|| LoaderError::UnknownSymbol(name.clone()))?;
            (format!("symbol {name}"), at)
        }
    };
    if !(image_base..image_end).contains(&at) {
        return Err(LoaderError::OutsideText(at));
    }
    // The planner reads the Image through guest memory as it would run
    // with the MMU on: at its link address, over its physical load address.
    let mut memory = RegionMemory::new();
    memory.add(
        GuestVirt(image_base),
        GuestPhys(image_base - PAGE_OFFSET),
        zimage.image.clone(),
    );
    let config = |breakpoints| PlannerConfig {
        breakpoints,
        explore_limit: request.explore_limit,
        ..PlannerConfig::for_isa::<Armv7>()
    };
    let mut planner = Planner::<Armv7>::new(config(request.max_breakpoints))?;
    let entry = entry_report(
        &mut planner,
        &memory,
        ArmStart::arm(GuestVirt(at)),
        name,
        request.show_nodes,
        describe,
    );
    let planner_cache = planner.cache_summary();
    let function_plans = match request.all_functions {
        Some(budget) => {
            let mut planner = Planner::<Armv7>::new(config(budget))?;
            let starts: Vec<ArmStart> = entries
                .iter()
                .map(|&(at, mode)| ArmStart {
                    at,
                    mode,
                    it: ItState::NONE,
                })
                .collect();
            Some(plan_functions(
                &memory,
                &mut planner,
                &starts,
                "the kallsyms functions",
                budget,
            ))
        }
        None => None,
    };
    Ok(ArmReport {
        kernel: request.kernel.display().to_string(),
        zimage_bytes: file.len(),
        payload_offset: zimage.payload_offset,
        compression: zimage.compression,
        image_bytes: zimage.image.len(),
        image_base: GuestVirt(image_base),
        symbols: symbols.symbols.len(),
        text: (GuestVirt(text_start), GuestVirt(text_end)),
        sweep,
        entry,
        planner_cache,
        function_plans,
    })
}

/// A node as the report lists it: the instruction (ARM or Thumb) or the
/// pseudo-node.
fn describe(node: &CfgNode<Armv7>) -> String {
    match &node.kind {
        NodeKind::Poi(instruction) => {
            let state = match instruction.mode {
                ArmMode::Arm => "",
                ArmMode::Thumb => " (thumb)",
            };
            format!("{}{state}", instruction.text)
        }
        NodeKind::Entry => "(entry: plain code)".into(),
        NodeKind::Unfetchable => "(outside the Image)".into(),
        NodeKind::LongRun => "(long straight-line run continues)".into(),
        NodeKind::Frontier => "(not explored: node limit)".into(),
        NodeKind::Breakpoint => "(a debugger's breakpoint)".into(),
    }
}

/// The report as text.
#[must_use]
pub fn render_arm_text(report: &ArmReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "kernel     {} (ARM zImage, {} bytes)",
        report.kernel, report.zimage_bytes
    );
    let _ = writeln!(
        out,
        "payload    {} at offset {:#x}, Image {} bytes at {:#x}",
        report.compression.name(),
        report.payload_offset,
        report.image_bytes,
        report.image_base.0
    );
    let _ = writeln!(
        out,
        "symbols    {} from the Image's kallsyms; text {:#x}..{:#x} ({} KiB)",
        report.symbols,
        report.text.0.0,
        report.text.1.0,
        (report.text.1.0 - report.text.0.0) / 1024
    );
    let sweep = &report.sweep;
    let _ = writeln!(
        out,
        "decoded    {} instructions reachable from {} function entries in {:.2} s ({:.0} instructions/s)",
        sweep.instructions, sweep.functions, sweep.seconds, sweep.instructions_per_second
    );
    let _ = writeln!(
        out,
        "\nclass                                                   count"
    );
    for count in &sweep.classes {
        let _ = writeln!(out, "{:<52} {:>10}", count.class, count.count);
    }
    let _ = writeln!(out, "\npointer branches");
    for count in &sweep.pointer_branches {
        let _ = writeln!(out, "  {:<50} {:>10}", count.class, count.count);
    }
    let _ = writeln!(out, "\nsensitive instructions by class");
    for form in &sweep.sensitive {
        let _ = writeln!(
            out,
            "  {:<30} {:<12} {:>10}",
            form.form,
            format!("{:?}", form.delivery),
            form.count
        );
    }
    let _ = writeln!(out, "\nmost frequent sensitive forms");
    for form in &sweep.top_sensitive {
        let _ = writeln!(
            out,
            "  {:<34} {:<20} {:<12} {:>8}",
            form.form,
            format!("{:?}", form.kind),
            format!("{:?}", form.delivery),
            form.count
        );
    }
    let _ = write_planning(
        &mut out,
        &report.entry,
        &report.planner_cache,
        report.function_plans.as_ref(),
    );
    out
}
