//! Typed errors of the lab.

use thiserror::Error;

/// What can go wrong in the lab.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LabError {
    /// A data file that does not parse.
    #[error("{file}, line {line}: {reason}")]
    Data {
        /// The data set's file.
        file: &'static str,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A configuration value out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The guard stopped the run.
    #[error("the guard stopped the run: {0}")]
    Guard(#[from] gradguard::GuardError),
}
