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
    /// A configuration value out of range, or remedies that do not fit the task.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A checkpoint that cannot be read or written.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A file or directory that cannot be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A sweep grid file that does not parse.
    #[error("{path}: {reason}")]
    Grid {
        /// The file.
        path: String,
        /// Where and what.
        reason: String,
    },
    /// The guard refused its configuration.
    #[error("the guard: {0}")]
    Guard(#[from] gradguard::GuardError),
    /// Telemetry could not be written.
    #[error(transparent)]
    Sink(#[from] gradguard_report::SinkError),
}
