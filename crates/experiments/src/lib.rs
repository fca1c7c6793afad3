//! btvmm's evaluation (issue: experiments): `btvmm bench` runs the guest
//! benchmark programs (`guests/linux/bench.c`) natively on the host, in
//! Debian's kernel under btvmm and under QEMU TCG (and QEMU KVM where it
//! runs), each several times, and reports per benchmark the median, minimum
//! and maximum beside each other, as JSON, CSV, a markdown table and SVG
//! plots ([`plot`]).
//!
//! [`results`] is pure (parsing result lines, statistics, tables) and
//! unit-tests anywhere, as is [`model`] (what the counted monitor events
//! cost at calibrate's prices); [`bench`] runs the systems.
//!
//! `btvmm calibrate` measures here too: [`bare`] the host traps btvmm's
//! paths ride on, [`calibrate`] those paths, through generated guest
//! kernels ([`image`]) run by `btvmm run`. [`bare`] reuses the runtime's
//! own pieces (world_switch) and needs one `unsafe` function of its own,
//! a fork.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod bare;
pub mod bench;
pub mod calibrate;
pub mod image;
pub mod model;
pub mod plot;
pub mod results;

use thiserror::Error;

/// Why an experiment could not be run or its results written.
#[derive(Debug, Error)]
pub enum ExperimentsError {
    /// An input file or program is missing or unreadable.
    #[error("{what} {path}: {source}")]
    Input {
        /// What it is.
        what: &'static str,
        /// Where it should be.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A results file could not be written.
    #[error("cannot write {path}: {source}")]
    Output {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An impossible option.
    #[error("{0}")]
    Option(String),
    /// The host refused what a measurement needs.
    #[error(transparent)]
    World(#[from] world_switch::WorldError),
    /// A bare measurement went wrong (events lost or out of place).
    #[error("bare measurement: {0}")]
    Bare(String),
    /// A calibration guest or child did not give its readings.
    #[error("calibrate: {0}")]
    Calibrate(String),
}
