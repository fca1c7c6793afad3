//! Breakpoint tracing's planner: decodes 32-bit guest code, finds its points
//! of interest, builds their control-flow graph and chooses where the few
//! hardware breakpoints go (dissertation chapter 3.3 and 3.4.3; DESIGN.md
//! section 3).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod classify;

pub use classify::{ClassifyConfig, Delivery, PoiKind, PointerKind, SensitiveKind, classify};
