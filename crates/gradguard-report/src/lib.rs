//! # gradguard-report
//!
//! Telemetry for guarded training runs. Each [`gradguard::StepReport`] becomes a
//! [`MetricsRecord`] that [`Sink`]s write as JSON Lines ([`JsonlSink`]), CSV ([`CsvSink`]) or
//! TensorBoard event files ([`TensorBoardSink`], read by TensorBoard itself). [`read_metrics`]
//! parses a JSONL file back, naming the line and the field of any malformed record. A finished
//! run's [`RunSummary`] records its [`Remedy`]s as values ([`remedy`], [`schemes`]).
//!
//! ```
//! use gradguard::{Guard, HostGradients, HostTensor};
//! use gradguard_report::{JsonlSink, MetricsRecord, Sink, read_metrics};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("metrics.jsonl");
//! let mut sink = JsonlSink::create(&path)?;
//! let mut guard = Guard::default();
//! let mut grads = HostGradients::new(vec![HostTensor::new("w", vec![2], vec![3.0, 4.0])?])?;
//! let report = guard.step(&mut grads, Some(0.5))?;
//! sink.write(&MetricsRecord::from_report(&report, 0.1))?;
//! sink.flush()?;
//!
//! let records = read_metrics(std::io::BufReader::new(std::fs::File::open(&path)?))?;
//! assert_eq!(records[0].grad_norm, Some(5.0));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

mod csv_sink;
mod error;
pub mod html;
mod jsonl;
mod record;
pub mod remedy;
pub mod schemes;
mod sink;
mod summary;
pub mod table;
mod tensorboard;

pub use csv_sink::CsvSink;
pub use error::{MetricsError, SinkError};
pub use jsonl::{JsonlSink, read_metrics};
pub use record::{MetricsRecord, StepDecision};
pub use remedy::{Family, Remedy, RemedyList};
pub use sink::{Sink, Sinks};
pub use summary::{
    LogitPoint, LogitSummary, METRICS_FILE, Outcome, RunData, RunDirError, RunSummary,
    SUMMARY_FILE, TEMP_PREFIX, TimeGradients, best_hand_picked, read_run, write_atomic,
};
pub use tensorboard::{TensorBoardSink, encode_scalar_event};
