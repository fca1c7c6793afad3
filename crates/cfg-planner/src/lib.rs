//! Breakpoint tracing's planner: decodes 32-bit guest code, finds its points
//! of interest, builds their control-flow graph and chooses where the few
//! hardware breakpoints go (dissertation chapter 3.3 and 3.4.3; DESIGN.md
//! section 3). The architecture is a parameter ([`Isa`]): [`X86`], and
//! [`arm_cfg::Armv7`] on [`arm`]'s classifier of ARMv7 (ARM and Thumb-2)
//! code (DESIGN.md section 7b).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod arm;
pub mod arm_cfg;
pub mod arm_step;
pub mod cfg;
pub mod classify;
pub mod decode;
pub mod isa;
pub mod plan;
pub mod planner;
pub mod target;

pub use cfg::{Cfg, CfgNode, EdgeKind, NodeKind};
pub use classify::{ClassifyConfig, Delivery, PoiKind, PointerKind, SensitiveKind, classify};
pub use decode::{Block, BlockEnd, CacheStats, CodePage, Poi};
pub use isa::{Isa, X86};
/// The graph library of [`Cfg`], for callers that walk it.
pub use petgraph;
pub use planner::{
    Plan, PlanCacheSummary, Planner, PlannerConfig, PlannerError, PlannerStats, Step,
};
