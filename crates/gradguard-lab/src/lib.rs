//! # gradguard-lab
//!
//! Tasks that reproduce exploding gradients on real data, and runs that measure what a remedy
//! does. This first part holds the UCI handwritten digits task (data shipped in `data/digits`),
//! the deep MLP with a chosen activation and initialization gain, and a training run that reports
//! whether it diverged. Remedies, sweeps and reports build on it (issue: the lab).

#![deny(missing_docs)]

pub mod data;
mod error;
pub mod models;
pub mod run;

pub use error::LabError;
