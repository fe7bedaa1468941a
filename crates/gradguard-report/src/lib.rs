//! # gradguard-report
//!
//! Telemetry for guarded training runs. Each [`gradguard::StepReport`] becomes a
//! [`MetricsRecord`] that [`Sink`]s write as JSON Lines ([`JsonlSink`]), CSV ([`CsvSink`]) or
//! TensorBoard event files ([`TensorBoardSink`], read by TensorBoard itself). [`read_metrics`]
//! parses a JSONL file back, naming the line and the field of any malformed record.

#![deny(missing_docs)]

mod csv_sink;
mod error;
pub mod html;
mod jsonl;
mod record;
mod sink;
mod summary;
mod tensorboard;

pub use csv_sink::CsvSink;
pub use error::{MetricsError, SinkError};
pub use jsonl::{JsonlSink, read_metrics};
pub use record::{MetricsRecord, StepDecision};
pub use sink::{Sink, Sinks};
pub use summary::{
    METRICS_FILE, Outcome, RunData, RunDirError, RunSummary, SUMMARY_FILE, TEMP_PREFIX,
    best_hand_picked, read_run, write_atomic,
};
pub use tensorboard::{TensorBoardSink, encode_scalar_event};
