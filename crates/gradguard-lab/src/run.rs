//! One training run of the digits MLP task: what happened, measured.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use gradguard::rules::{Chain, ClipByGlobalNorm, Rule};
use gradguard::{Guard, GuardConfig};
use gradguard_burn::GuardedOptimizer;
use serde::{Deserialize, Serialize};

use crate::data::{CLASSES, Digits, FEATURES, Split};
use crate::error::LabError;
use crate::models::{DeepMlp, MlpConfig};

/// What guards the run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Remedy {
    /// Plain SGD.
    None,
    /// Clip the global L2 norm to `max_norm` (Pascanu et al. 2013).
    GlobalNorm {
        /// The largest allowed norm.
        max_norm: f64,
    },
    /// The full guard with its defaults (skip non-finite steps and spikes, back off the LR).
    Guard,
}

/// A run's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The network.
    pub model: MlpConfig,
    /// SGD learning rate.
    pub lr: f64,
    /// Optimizer steps.
    pub steps: usize,
    /// Examples per batch.
    pub batch: usize,
    /// Seed of the weights and of the split.
    pub seed: u64,
    /// What guards the run.
    pub remedy: Remedy,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Training loss at each step (NaN/inf as they were).
    pub losses: Vec<f64>,
    /// The first step whose loss was not finite, if any.
    pub diverged_at: Option<usize>,
    /// Test accuracy at the end (NaN logits count as wrong).
    pub accuracy: f64,
    /// Steps the guard skipped.
    pub skipped_steps: u64,
}

impl RunSummary {
    /// Whether the run diverged: a non-finite loss, or a final loss above the first.
    pub fn diverged(&self) -> bool {
        self.diverged_at.is_some()
            || match (self.losses.first(), self.losses.last()) {
                (Some(first), Some(last)) => !(last < first),
                _ => false,
            }
    }
}

fn batch(data: &Digits, step: usize, size: usize, device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
    let n = data.len();
    let idx: Vec<usize> = (0..size).map(|k| (step * size + k) % n).collect();
    let x: Vec<f32> = idx
        .iter()
        .flat_map(|&i| {
            data.features[i * FEATURES..(i + 1) * FEATURES]
                .iter()
                .copied()
        })
        .collect();
    let y: Vec<i64> = idx.iter().map(|&i| i64::from(data.labels[i])).collect();
    (
        Tensor::from_data(TensorData::new(x, [size, FEATURES]), device),
        Tensor::from_data(TensorData::new(y, [size]), device),
    )
}

fn accuracy(model: &DeepMlp, test: &Digits, device: &Device) -> f64 {
    let (x, _) = batch(test, 0, test.len(), device);
    let logits: Vec<f32> = model
        .forward(x)
        .into_data()
        .try_to_vec()
        .expect("f32 logits");
    let correct = logits
        .chunks(CLASSES)
        .zip(&test.labels)
        .filter(|&(row, label)| {
            let best = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i);
            row.iter().all(|v| v.is_finite()) && best == Some(usize::from(*label))
        })
        .count();
    correct as f64 / test.len().max(1) as f64
}

/// Trains the digits MLP with plain SGD, guarded by `config.remedy`.
pub fn train_digits(config: &RunConfig) -> Result<RunSummary, LabError> {
    let device = Device::flex().autodiff();
    device.seed(config.seed);
    let Split { train, test } = Digits::load()?.split(0.2, config.seed)?;
    let mut model = config.model.init(&device)?;
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let rules: Vec<Box<dyn Rule>> = match config.remedy {
        Remedy::GlobalNorm { max_norm } => vec![Box::new(ClipByGlobalNorm::new(max_norm)?)],
        _ => Vec::new(),
    };
    let guard_config = match config.remedy {
        Remedy::Guard => GuardConfig::default(),
        // Clipping alone: let non-finite steps through, as an unguarded run would.
        _ => GuardConfig {
            grad_spike: None,
            loss_spike: None,
            non_finite: gradguard::NonFinitePolicy::Zero,
            max_consecutive_bad: u32::MAX,
            ..GuardConfig::default()
        },
    };
    let mut plain: ModuleOptimizer = SgdConfig::new().init();
    let mut guarded = GuardedOptimizer::new(
        SgdConfig::new().init(),
        Guard::new(guard_config, Chain::new(rules)?)?,
    );
    let mut losses = Vec::with_capacity(config.steps);
    for step in 0..config.steps {
        if config.remedy != Remedy::None && guarded.skip_batch() {
            continue;
        }
        let (x, y) = batch(&train, step, config.batch, &device);
        let loss = loss_fn.forward(model.forward(x), y);
        let value = f64::from(loss.clone().into_scalar::<f32>());
        losses.push(value);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = if config.remedy == Remedy::None {
            plain.step(config.lr, model, grads)
        } else {
            match guarded.step(config.lr, model, grads, Some(loss)) {
                Ok(s) => s.module,
                Err(stopped) => return Err(LabError::Guard(stopped.error)),
            }
        };
    }
    Ok(RunSummary {
        diverged_at: losses.iter().position(|l| !l.is_finite()),
        accuracy: accuracy(&model, &test, &device),
        skipped_steps: guarded.guard().counters().skipped,
        losses,
    })
}
