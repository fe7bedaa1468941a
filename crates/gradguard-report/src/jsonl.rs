//! JSON Lines: one [`MetricsRecord`] object per line, and the reader.

use std::fs::File;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{MetricsError, SinkError, create_file};
use crate::record::MetricsRecord;
use crate::sink::Sink;

/// Appends one JSON object per step to a file (`metrics.jsonl`).
#[derive(Debug)]
pub struct JsonlSink {
    path: PathBuf,
    out: BufWriter<File>,
}

impl JsonlSink {
    /// Creates (or truncates) the file.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, SinkError> {
        let path = path.as_ref().to_path_buf();
        let file = create_file(&path)?;
        Ok(JsonlSink {
            path,
            out: BufWriter::new(file),
        })
    }

    /// Opens the file for appending (a resumed run continues its log).
    pub fn append(path: impl AsRef<Path>) -> Result<Self, SinkError> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| SinkError::io(&path, e))?;
        Ok(JsonlSink {
            path,
            out: BufWriter::new(file),
        })
    }

    fn io(&self, source: std::io::Error) -> SinkError {
        SinkError::io(&self.path, source)
    }
}

impl Sink for JsonlSink {
    fn write(&mut self, record: &MetricsRecord) -> Result<(), SinkError> {
        let line = serde_json::to_string(record).expect("records serialize");
        writeln!(self.out, "{line}").map_err(|e| self.io(e))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| self.io(e))
    }
}

/// Parses a metrics JSONL stream. Blank lines are skipped; any other line that is not a record
/// is an error naming the line number and what was expected.
pub fn read_metrics(reader: impl BufRead) -> Result<Vec<MetricsRecord>, MetricsError> {
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| MetricsError::Io(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let record: MetricsRecord =
            serde_json::from_str(&line).map_err(|e| MetricsError::Malformed {
                line: i + 1,
                message: format!("expected a metrics record object: {e}"),
            })?;
        out.push(record);
    }
    Ok(out)
}
