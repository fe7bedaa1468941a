//! The lab's tasks: a deep MLP on real handwritten digits, recurrent networks on long sequences
//! (the adding and temporal-order problems), and a causal transformer language model on real
//! English text. Each yields host batches that are pure
//! functions of the seed and the step, so runs are deterministic and resumable.

mod digits_data;
mod sequences;
mod text;

use serde::{Deserialize, Serialize};

pub use digits_data::{CLASSES, Digits, FEATURES, Split};
pub(crate) use sequences::rng;
pub use sequences::{ORDER_CLASSES, ORDER_SYMBOLS, adding, temporal_order};
pub use text::Corpus;

use crate::error::LabError;

/// Which task a run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// A deep MLP classifying the UCI 8×8 handwritten digits (10 classes).
    Mlp,
    /// A recurrent network on the adding problem (regression, mean squared error).
    Adding,
    /// A recurrent network on the temporal-order problem (4 classes).
    Order,
    /// A causal transformer predicting the next byte of English text (character level).
    Lm,
}

impl Task {
    /// The task's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Task::Mlp => "mlp",
            Task::Adding => "adding",
            Task::Order => "order",
            Task::Lm => "lm",
        }
    }

    /// Whether the task is solved by a recurrent network.
    pub fn is_recurrent(self) -> bool {
        matches!(self, Task::Adding | Task::Order)
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Task {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mlp" | "digits" => Ok(Task::Mlp),
            "adding" => Ok(Task::Adding),
            "order" | "temporal-order" => Ok(Task::Order),
            "lm" => Ok(Task::Lm),
            other => Err(format!(
                "unknown task '{other}' (expected mlp, adding, order or lm)"
            )),
        }
    }
}

/// What a batch must be mapped to.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// One class index per example (cross-entropy).
    Classes(Vec<i64>),
    /// One value per example (mean squared error).
    Values(Vec<f32>),
}

/// A batch on the host: row-major inputs of `shape` (`[n, features]` or `[n, T, features]`).
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    /// The input values.
    pub inputs: Vec<f32>,
    /// Their shape; the first axis is the batch.
    pub shape: Vec<usize>,
    /// The targets.
    pub targets: Targets,
}

/// Examples in a sequence task's fixed test set.
const SEQUENCE_TEST_SIZE: usize = 512;
/// Generator stream of training batches.
const TRAIN_STREAM: u64 = 0;
/// Generator stream of the test set.
const TEST_STREAM: u64 = 1;

/// A task's data, ready to serve batches.
#[derive(Debug, Clone)]
pub enum TaskData {
    /// The digits, split 80/20 by the seed.
    Digits(Split),
    /// Adding-problem sequences of this length.
    Adding(usize),
    /// Temporal-order sequences of this length.
    Order(usize),
    /// A text for next-byte prediction, in windows of its context length.
    Text(Corpus),
}

impl TaskData {
    /// The data of a run: [`TaskData::new`], with the run's own text file for `lm` when it
    /// names one.
    pub fn for_run(config: &crate::RunConfig) -> Result<Self, LabError> {
        match (&config.task, &config.lm.text) {
            (Task::Lm, Some(path)) => Ok(TaskData::Text(Corpus::from_file(
                std::path::Path::new(path),
                config.seq_len,
            )?)),
            _ => Self::new(config.task, config.seq_len, config.seed),
        }
    }

    /// Loads (digits, the lab's text) or sets up (sequences) the data of `task`; `seq_len` is the
    /// sequence length of the recurrent tasks and the context length of `lm`.
    pub fn new(task: Task, seq_len: usize, seed: u64) -> Result<Self, LabError> {
        if task != Task::Mlp && !(2..=10_000).contains(&seq_len) {
            return Err(LabError::Config(format!(
                "sequence length must be in 2..=10000, got {seq_len}"
            )));
        }
        Ok(match task {
            Task::Mlp => TaskData::Digits(Digits::load()?.split(0.2, seed)?),
            Task::Adding => TaskData::Adding(seq_len),
            Task::Order => TaskData::Order(seq_len),
            Task::Lm => TaskData::Text(Corpus::embedded(seq_len)?),
        })
    }

    /// Input features per example (per time step for sequences).
    pub fn inputs(&self) -> usize {
        match self {
            TaskData::Digits(_) => FEATURES,
            TaskData::Adding(_) => 2,
            TaskData::Order(_) => ORDER_SYMBOLS,
            TaskData::Text(c) => c.vocab(),
        }
    }

    /// Network outputs: classes, or 1 for regression.
    pub fn outputs(&self) -> usize {
        match self {
            TaskData::Digits(_) => CLASSES,
            TaskData::Adding(_) => 1,
            TaskData::Order(_) => ORDER_CLASSES,
            TaskData::Text(c) => c.vocab(),
        }
    }

    /// Training batch number `index` (a pure function of `seed` and `index`).
    pub fn train_batch(&self, index: u64, size: usize, seed: u64) -> HostBatch {
        match self {
            TaskData::Digits(split) => digits_batch(&split.train, index, size),
            TaskData::Adding(t) => adding(*t, size, &mut sequences::rng(seed, TRAIN_STREAM, index)),
            TaskData::Order(t) => {
                temporal_order(*t, size, &mut sequences::rng(seed, TRAIN_STREAM, index))
            }
            TaskData::Text(c) => {
                c.train_batch(size, &mut sequences::rng(seed, TRAIN_STREAM, index))
            }
        }
    }

    /// The held-out set: the digits' test split, or a fixed set of fresh sequences.
    pub fn test_batch(&self, seed: u64) -> HostBatch {
        let mut rng = sequences::rng(seed, TEST_STREAM, 0);
        match self {
            TaskData::Digits(split) => digits_batch(&split.test, 0, split.test.len()),
            TaskData::Adding(t) => adding(*t, SEQUENCE_TEST_SIZE, &mut rng),
            TaskData::Order(t) => temporal_order(*t, SEQUENCE_TEST_SIZE, &mut rng),
            TaskData::Text(c) => c.test_batch(),
        }
    }

    /// The loss of the best predictor that ignores the inputs, on `batch`: for text the unigram
    /// entropy of the training bytes, otherwise [`HostBatch::trivial_loss`].
    pub fn trivial_loss(&self, batch: &HostBatch) -> f64 {
        match self {
            TaskData::Text(c) => c.unigram_loss(batch),
            _ => batch.trivial_loss(self.outputs()),
        }
    }
}

impl HostBatch {
    /// The loss of the trivial predictor on this batch: `ln C` for `C` classes (uniform), or the
    /// targets' variance for values (predicting their mean).
    pub fn trivial_loss(&self, classes: usize) -> f64 {
        match &self.targets {
            Targets::Classes(_) => (classes.max(1) as f64).ln(),
            Targets::Values(v) => {
                let n = v.len().max(1) as f64;
                let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
                v.iter()
                    .map(|&x| (f64::from(x) - mean).powi(2))
                    .sum::<f64>()
                    / n
            }
        }
    }
}

/// Batch `index` of `size` images, cycling through the (already shuffled) set.
fn digits_batch(data: &Digits, index: u64, size: usize) -> HostBatch {
    let n = data.len().max(1);
    let start = (index as usize).wrapping_mul(size) % n;
    let rows: Vec<usize> = (0..size).map(|k| (start + k) % n).collect();
    HostBatch {
        inputs: rows
            .iter()
            .flat_map(|&i| {
                data.features[i * FEATURES..(i + 1) * FEATURES]
                    .iter()
                    .copied()
            })
            .collect(),
        shape: vec![size, FEATURES],
        targets: Targets::Classes(rows.iter().map(|&i| i64::from(data.labels[i])).collect()),
    }
}
