//! The run directory: its files, how it is prepared or recognized as finished, how its metrics
//! log is cut back to the last checkpoint on resume, and how its trained network is loaded.

use std::path::Path;

use burn::tensor::Device;
use gradguard_report::{RunSummary, SUMMARY_FILE, read_metrics, write_atomic};

use crate::checkpoint;
use crate::config::RunConfig;
use crate::error::LabError;
use crate::models::Net;
use crate::plan::{Plan, build_net};
use crate::tasks::TaskData;

/// The configuration file of a run directory.
pub const CONFIG_FILE: &str = "config.json";
/// The TensorBoard folder of a run directory.
pub const TENSORBOARD_DIR: &str = "tensorboard";
pub(crate) fn io_err(path: &Path, e: impl std::fmt::Display) -> LabError {
    LabError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// The trained network of a run directory: its configuration and the weights of its latest
/// readable checkpoint.
pub fn load_run_model(dir: &Path) -> Result<(RunConfig, Net), LabError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
    let config: RunConfig = serde_json::from_str(&text)
        .map_err(|e| io_err(&path, format!("not a run configuration: {e}")))?;
    let data = TaskData::for_run(&config)?;
    let plan = Plan::new(&config, &data)?;
    let device = Device::flex().autodiff();
    let net = build_net(&plan, &data, config.seed, &device)?;
    let (found, warnings) = checkpoint::load_latest(dir);
    let Some((ckpt, path)) = found else {
        return Err(LabError::Checkpoint {
            path: dir.join(checkpoint::CHECKPOINT_FILE).display().to_string(),
            reason: format!("no readable checkpoint ({})", warnings.join("; ")),
        });
    };
    Ok((config, ckpt.load_model(net, &path)?))
}

/// Prepares `dir`: creates it, checks or writes its configuration. Returns the finished summary
/// when the run is already complete.
pub(crate) fn prepare_dir(dir: &Path, config: &RunConfig) -> Result<Option<RunSummary>, LabError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    // A process killed while writing leaves its temporary file behind; the rename never happened,
    // so nothing refers to it.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(gradguard_report::TEMP_PREFIX)
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let config_path = dir.join(CONFIG_FILE);
    match std::fs::read_to_string(&config_path) {
        Ok(text) => {
            let existing: RunConfig = serde_json::from_str(&text).map_err(|e| LabError::Io {
                path: config_path.display().to_string(),
                reason: format!("not a run configuration: {e}"),
            })?;
            if &existing != config {
                return Err(LabError::Config(format!(
                    "{} holds a run with another configuration; resume it with the same flags \
                     or choose another output directory",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = serde_json::to_vec_pretty(config).expect("configs serialize");
            write_atomic(&config_path, &text).map_err(|e| io_err(&config_path, e))?;
        }
        Err(e) => return Err(io_err(&config_path, e)),
    }
    let summary_path = dir.join(SUMMARY_FILE);
    match std::fs::read_to_string(&summary_path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| io_err(&summary_path, format!("not a run summary: {e}"))),
        Err(_) => Ok(None),
    }
}

/// Keeps the first `steps` records of the metrics log (a resumed run rewrites what followed its
/// checkpoint); a torn last line from a kill is dropped.
pub(crate) fn truncate_metrics(path: &Path, steps: u64) -> Result<(), LabError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path, e)),
    };
    let mut kept = String::new();
    for line in text.lines() {
        match read_metrics(line.as_bytes()) {
            Ok(records) if records.first().is_some_and(|r| r.step < steps) => {
                kept.push_str(line);
                kept.push('\n');
            }
            _ => break,
        }
    }
    write_atomic(path, kept.as_bytes()).map_err(|e| io_err(path, e))
}
