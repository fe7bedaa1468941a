//! CSV: one row per step, one column per tensor norm.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{SinkError, create_file};
use crate::record::MetricsRecord;
use crate::sink::Sink;

/// Writes `step,loss,grad_norm,grad_norm_clipped,lr,lr_multiplier,decision,<tensor>…` rows; a
/// language model's records (with logit telemetry) add `attention_logit_max/layer{i}…,log_z_mean,
/// log_z_max` before the tensors. The columns are fixed by the first record; a later record's
/// missing value is left empty. Non-finite values are empty cells.
#[derive(Debug)]
pub struct CsvSink {
    path: PathBuf,
    out: csv::Writer<File>,
    columns: Option<Columns>,
}

/// The variable columns, fixed by the first record.
#[derive(Debug)]
struct Columns {
    /// Layers whose largest attention logit has a column (0: no logit columns).
    attention_layers: usize,
    tensors: Vec<String>,
}

impl CsvSink {
    /// Creates (or truncates) the file.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, SinkError> {
        let path = path.as_ref().to_path_buf();
        let file = create_file(&path)?;
        Ok(CsvSink {
            path,
            out: csv::Writer::from_writer(file),
            columns: None,
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
        if self.columns.is_none() {
            let names: Vec<String> = r.tensor_norms.keys().cloned().collect();
            let attention_layers = r.attention_logit_max.len();
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
            if attention_layers > 0 {
                header
                    .extend((0..attention_layers).map(|i| format!("attention_logit_max/layer{i}")));
                header.extend(["log_z_mean".to_string(), "log_z_max".to_string()]);
            }
            header.extend(names.iter().cloned());
            self.out.write_record(&header).map_err(|e| self.err(e))?;
            self.columns = Some(Columns {
                attention_layers,
                tensors: names,
            });
        }
        let columns = self.columns.as_ref().expect("set above");
        let mut row = vec![
            r.step.to_string(),
            cell(r.loss),
            cell(r.grad_norm),
            cell(r.grad_norm_clipped),
            r.lr.to_string(),
            r.lr_multiplier.to_string(),
            r.decision.to_string(),
        ];
        if columns.attention_layers > 0 {
            for i in 0..columns.attention_layers {
                row.push(cell(r.attention_logit_max.get(i).copied().flatten()));
            }
            row.push(cell(r.log_z_mean));
            row.push(cell(r.log_z_max));
        }
        for name in &columns.tensors {
            row.push(cell(r.tensor_norms.get(name).copied().flatten()));
        }
        self.out.write_record(&row).map_err(|e| self.err(e))
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| self.err(e))
    }
}
