//! Where records go.

use crate::error::SinkError;
use crate::record::MetricsRecord;

/// A destination for per-step telemetry.
pub trait Sink {
    /// Writes one step.
    fn write(&mut self, record: &MetricsRecord) -> Result<(), SinkError>;

    /// Pushes buffered records to storage.
    fn flush(&mut self) -> Result<(), SinkError>;
}

/// Several sinks fed the same records.
#[derive(Default)]
pub struct Sinks {
    sinks: Vec<Box<dyn Sink>>,
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sinks({})", self.sinks.len())
    }
}

impl Sinks {
    /// No sinks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a sink.
    pub fn with(mut self, sink: impl Sink + 'static) -> Self {
        self.sinks.push(Box::new(sink));
        self
    }
}

impl Sink for Sinks {
    fn write(&mut self, record: &MetricsRecord) -> Result<(), SinkError> {
        self.sinks.iter_mut().try_for_each(|s| s.write(record))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.sinks.iter_mut().try_for_each(|s| s.flush())
    }
}
