//! CSV: one row per step, one column per tensor norm.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{SinkError, create_file};
use crate::record::MetricsRecord;
use crate::sink::Sink;

/// Writes `step,loss,grad_norm,grad_norm_clipped,lr,lr_multiplier,decision,<tensor>…` rows. The
/// tensor columns are fixed by the first record; a later record's missing tensor is left empty.
/// Non-finite values are empty cells.
#[derive(Debug)]
pub struct CsvSink {
    path: PathBuf,
    out: csv::Writer<File>,
    tensors: Option<Vec<String>>,
}

impl CsvSink {
    /// Creates (or truncates) the file.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, SinkError> {
        let path = path.as_ref().to_path_buf();
        let file = create_file(&path)?;
        Ok(CsvSink {
            path,
            out: csv::Writer::from_writer(file),
            tensors: None,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> SinkError {
        SinkError::Csv {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }
}

fn cell(x: Option<f64>) -> String {
    x.map(|v| v.to_string()).unwrap_or_default()
}

impl Sink for CsvSink {
    fn write(&mut self, r: &MetricsRecord) -> Result<(), SinkError> {
        if self.tensors.is_none() {
            let names: Vec<String> = r.tensor_norms.keys().cloned().collect();
            let mut header: Vec<String> = [
                "step",
                "loss",
                "grad_norm",
                "grad_norm_clipped",
                "lr",
                "lr_multiplier",
                "decision",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            header.extend(names.iter().cloned());
            self.out.write_record(&header).map_err(|e| self.err(e))?;
            self.tensors = Some(names);
        }
        let mut row = vec![
            r.step.to_string(),
            cell(r.loss),
            cell(r.grad_norm),
            cell(r.grad_norm_clipped),
            r.lr.to_string(),
            r.lr_multiplier.to_string(),
            r.decision.to_string(),
        ];
        for name in self.tensors.as_ref().expect("set above") {
            row.push(cell(r.tensor_norms.get(name).copied().flatten()));
        }
        self.out.write_record(&row).map_err(|e| self.err(e))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| self.err(e))
    }
}
