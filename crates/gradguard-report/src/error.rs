//! Errors of the telemetry crate.

use thiserror::Error;

/// Writing telemetry failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The file could not be created or written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A CSV row could not be written.
    #[error("cannot write CSV {path}: {message}")]
    Csv {
        /// The file.
        path: String,
        /// The cause.
        message: String,
    },
}

/// Reading a metrics file failed.
#[derive(Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum MetricsError {
    /// The file could not be read.
    #[error("cannot read metrics: {0}")]
    Io(String),
    /// A line is not a metrics record.
    #[error("line {line}: {message}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What was expected and what was found.
        message: String,
    },
}

impl SinkError {
    /// An I/O error on `path`.
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        SinkError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Creates (or truncates) `path`, naming it in the error.
pub(crate) fn create_file(path: &std::path::Path) -> Result<std::fs::File, SinkError> {
    std::fs::File::create(path).map_err(|e| SinkError::io(path, e))
}
