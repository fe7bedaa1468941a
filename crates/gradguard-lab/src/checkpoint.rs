//! Checkpoints: the model, the optimizer state, the guard state and the run's position in one
//! file, written atomically and checked by a CRC-32C on read.
//!
//! Layout: the 8-byte magic `GGCKPT01`, then three sections each as a little-endian `u64` length
//! and its bytes — a JSON [`CheckpointHeader`], the model record and the optimizer record (Burn
//! burnpack) — then the CRC-32C of everything before it, as a little-endian `u32`.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use gradguard::GuardState;
use gradguard_burn::GuardedOptimizer;
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::error::LabError;
use crate::models::Net;

const MAGIC: &[u8; 8] = b"GGCKPT01";
/// The latest checkpoint of a run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.ggck";
/// The one before it, kept until the next is safely written.
pub const PREVIOUS_CHECKPOINT_FILE: &str = "checkpoint.prev.ggck";

/// Where a run stands: everything but the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointHeader {
    /// The configuration the run was started with.
    pub config: RunConfig,
    /// The next batch index to train on.
    pub next_batch: u64,
    /// Whether the weights are the guard's rollback snapshot.
    pub is_snapshot: bool,
    /// The guard.
    pub guard: GuardState,
    /// Training loss of every guard step so far (`null` for non-finite).
    pub losses: Vec<Option<f64>>,
    /// The learning rate trained at.
    pub lr: f64,
    /// The range test's answer, when one ran.
    pub largest_stable_lr: Option<f64>,
    /// Training seconds so far.
    pub wall_time_s: f64,
    /// Why the guard stopped the run, when it did.
    pub stopped: Option<String>,
    /// Held-out loss before the first step.
    pub initial_loss: Option<f64>,
    /// Gradients through time measured so far (recurrent tasks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub time_gradients: Vec<gradguard_report::TimeGradients>,
    /// The lm task's logit telemetry of every batch so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logits: Vec<gradguard_report::LogitPoint>,
}

/// A checkpoint in memory.
pub struct Checkpoint {
    /// Where the run stands.
    pub header: CheckpointHeader,
    /// The model's burnpack record.
    pub model: Vec<u8>,
    /// The optimizer's burnpack record.
    pub optimizer: Vec<u8>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("header", &self.header)
            .field("model_bytes", &self.model.len())
            .field("optimizer_bytes", &self.optimizer.len())
            .finish()
    }
}

impl Checkpoint {
    /// Captures `net` and the state of `optimizer`.
    pub fn capture(
        header: CheckpointHeader,
        net: &Net,
        optimizer: &GuardedOptimizer<Net>,
    ) -> Result<Self, LabError> {
        let record_err = |e: burn::store::RecordError| LabError::Checkpoint {
            path: String::new(),
            reason: format!("cannot serialize: {e}"),
        };
        Ok(Checkpoint {
            header,
            model: net
                .clone()
                .into_record()
                .into_bytes()
                .map_err(record_err)?
                .to_vec(),
            optimizer: optimizer.optimizer_bytes().map_err(record_err)?.to_vec(),
        })
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&self.header).expect("headers serialize");
        let mut out =
            Vec::with_capacity(40 + header.len() + self.model.len() + self.optimizer.len());
        out.extend_from_slice(MAGIC);
        for section in [&header, &self.model, &self.optimizer] {
            out.extend_from_slice(&(section.len() as u64).to_le_bytes());
            out.extend_from_slice(section);
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses a file's bytes; `path` names it in errors.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self, LabError> {
        let bad = |reason: String| LabError::Checkpoint {
            path: path.display().to_string(),
            reason,
        };
        if bytes.len() < MAGIC.len() + 4 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(bad(
                "not a gradguard checkpoint (bad magic or too short)".into()
            ));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        if crc32c::crc32c(body) != stored {
            return Err(bad(
                "checksum mismatch: the file is truncated or corrupt".into()
            ));
        }
        let mut rest = &body[MAGIC.len()..];
        let mut sections = Vec::with_capacity(3);
        for name in ["header", "model", "optimizer"] {
            if rest.len() < 8 {
                return Err(bad(format!("{name} section missing")));
            }
            let len = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
            rest = &rest[8..];
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| l <= rest.len())
                .ok_or_else(|| bad(format!("{name} section overruns the file")))?;
            sections.push(rest[..len].to_vec());
            rest = &rest[len..];
        }
        let header =
            serde_json::from_slice(&sections[0]).map_err(|e| bad(format!("header: {e}")))?;
        let optimizer = sections.pop().expect("three sections");
        let model = sections.pop().expect("three sections");
        Ok(Checkpoint {
            header,
            model,
            optimizer,
        })
    }

    /// Loads the weights into `net` (built from the same configuration).
    pub fn load_model(&self, net: Net, path: &Path) -> Result<Net, LabError> {
        let record =
            ModuleRecord::from_bytes(Bytes::from_bytes_vec(self.model.clone())).map_err(|e| {
                LabError::Checkpoint {
                    path: path.display().to_string(),
                    reason: format!("model record: {e}"),
                }
            })?;
        net.try_load_record(record)
            .map_err(|e| LabError::Checkpoint {
                path: path.display().to_string(),
                reason: format!("model record does not fit the configured network: {e}"),
            })
    }

    /// Loads the optimizer state into `optimizer`.
    pub fn load_optimizer(
        &self,
        optimizer: &mut GuardedOptimizer<Net>,
        path: &Path,
    ) -> Result<(), LabError> {
        optimizer
            .load_optimizer_bytes(Bytes::from_bytes_vec(self.optimizer.clone()))
            .map_err(|e| LabError::Checkpoint {
                path: path.display().to_string(),
                reason: format!("optimizer record: {e}"),
            })
    }
}

/// Writes `checkpoint` into `dir`: the current file becomes the previous one, then the new one is
/// written to a temporary file, synced and renamed into place.
pub fn save(dir: &Path, checkpoint: &Checkpoint) -> Result<(), LabError> {
    let current = dir.join(CHECKPOINT_FILE);
    let io = |path: &Path, e: std::io::Error| LabError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    if current.exists() {
        std::fs::rename(&current, dir.join(PREVIOUS_CHECKPOINT_FILE))
            .map_err(|e| io(&current, e))?;
    }
    gradguard_report::write_atomic(&current, &checkpoint.encode()).map_err(|e| io(&current, e))
}

/// The newest readable checkpoint of `dir`, with a warning for each file that was unreadable.
/// `Ok(None)` when there is none to resume from.
pub fn load_latest(dir: &Path) -> (Option<(Checkpoint, PathBuf)>, Vec<String>) {
    let mut warnings = Vec::new();
    for name in [CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE] {
        let path = dir.join(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                warnings.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        match Checkpoint::decode(&bytes, &path) {
            Ok(c) => return (Some((c, path)), warnings),
            Err(e) => warnings.push(e.to_string()),
        }
    }
    (None, warnings)
}
