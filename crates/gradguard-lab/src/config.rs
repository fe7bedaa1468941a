//! What a user asks of one run.

use serde::{Deserialize, Serialize};

use crate::error::LabError;
use crate::models::{Activation, Cell, Init};
use crate::optimizer::{OptimizerSettings, Schedule};
use crate::precision::Precision;
use crate::remedy::Remedy;
use crate::tasks::Task;

/// The settings of one run, before remedies change them. Everything that decides the result is
/// here, so two runs with equal configs end with equal weights (on the CPU backend).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The task.
    pub task: Task,
    /// Hidden layers of the MLP.
    pub depth: usize,
    /// Units per hidden layer (MLP) or hidden units (recurrent).
    pub width: usize,
    /// The MLP's nonlinearity.
    pub activation: Activation,
    /// The recurrent cell.
    pub cell: Cell,
    /// Sequence length of the recurrent tasks.
    pub seq_len: usize,
    /// Weight initialization (the recurrent weight's, for recurrent tasks).
    pub init: Init,
    /// Multiplies the initialization's standard deviation.
    pub init_gain: f64,
    /// Learning rate (SGD unless a remedy says otherwise).
    pub lr: f64,
    /// Batches to train on.
    pub steps: u64,
    /// Examples per batch.
    pub batch: usize,
    /// Seed of the weights, the split and the batches.
    pub seed: u64,
    /// What is done about exploding gradients (empty: nothing).
    pub remedies: Vec<Remedy>,
    /// Training loss (mean over 10 steps) counted as reached for `steps_to_target`.
    pub target_loss: f64,
    /// Good steps between checkpoints (and rollback snapshots).
    pub checkpoint_every: u64,
    /// The format of the forward and backward passes (weights stay f32). Left out of the JSON
    /// when f32, so configurations written before precisions existed read back equal.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    /// The optimizer (the rate is `lr`). Left out of the JSON when plain SGD, as are the
    /// schedule, the warm-up and the language model's settings at their defaults, so
    /// configurations written before they existed read back equal.
    #[serde(default, skip_serializing_if = "OptimizerSettings::is_default")]
    pub optimizer: OptimizerSettings,
    /// How the rate moves over the run.
    #[serde(default, skip_serializing_if = "Schedule::is_default")]
    pub schedule: Schedule,
    /// Linear warm-up steps (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub warmup: u64,
    /// The language-model task's settings (its depth is `depth`, its width `width`, its context
    /// length `seq_len`).
    #[serde(default, skip_serializing_if = "LmSettings::is_default")]
    pub lm: LmSettings,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Settings of the `lm` task's transformer and text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LmSettings {
    /// Attention heads (dividing the width).
    pub heads: usize,
    /// Layer norm after each residual sum (post-norm, Vaswani et al. 2017) instead of before
    /// each sub-layer (pre-norm, the default).
    pub post_norm: bool,
    /// A text file to train on instead of the lab's own (plain, or gzip by a `.gz` extension).
    pub text: Option<String>,
    /// Standard deviation of the token and position embeddings' normal initialization: GPT-2's
    /// 0.02 by default; 1 is Burn's own `Embedding` default.
    pub embed_std: f64,
}

impl Default for LmSettings {
    fn default() -> Self {
        LmSettings {
            heads: 4,
            post_norm: false,
            text: None,
            embed_std: 0.02,
        }
    }
}

impl LmSettings {
    /// Whether these are the defaults.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl RunConfig {
    /// The lab's defaults for `task`, chosen to explode without a remedy: a deep ReLU MLP (gain 1.7
    /// over 24 layers, SGD at 0.1), or a vanilla RNN (recurrent gain 1.5 over 100 steps, SGD at
    /// 0.1 — the setting of Pascanu et al. 2013). The language model is trained as transformers
    /// are today and does not explode at its default rate: 2 pre-norm layers of width 64, 4
    /// heads, context 64, batch 16, AdamW (β₂ 0.95, weight decay 0.1) at 3e-3 with 10% linear
    /// warm-up and a cosine decay, 300 steps.
    pub fn for_task(task: Task) -> Self {
        if task == Task::Lm {
            return RunConfig {
                task,
                target_loss: 2.5,
                depth: 2,
                width: 64,
                seq_len: 64,
                lr: 3e-3,
                batch: 16,
                init_gain: 1.0,
                optimizer: OptimizerSettings::adamw(),
                schedule: Schedule::WarmupCosine,
                warmup: 30,
                ..Self::for_task(Task::Mlp)
            };
        }
        let mlp = !task.is_recurrent();
        RunConfig {
            task,
            depth: 24,
            width: if mlp { 64 } else { 32 },
            activation: Activation::Relu,
            cell: Cell::Rnn,
            seq_len: 100,
            init: Init::Gaussian,
            init_gain: if mlp { 1.7 } else { 1.5 },
            lr: 0.1,
            steps: 300,
            batch: 32,
            seed: 0,
            remedies: Vec::new(),
            target_loss: match task {
                Task::Mlp => 0.5,
                Task::Adding => 0.05,
                Task::Order => 0.3,
                Task::Lm => 2.5,
            },
            checkpoint_every: 50,
            precision: Precision::F32,
            optimizer: OptimizerSettings::default(),
            schedule: Schedule::Constant,
            warmup: 0,
            lm: LmSettings::default(),
        }
    }

    /// Switches to the optimizer `kind` at its settings for the task
    /// ([`OptimizerSettings::of_kind`]); the same kind keeps the settings it has.
    pub fn set_optimizer(&mut self, kind: crate::optimizer::OptimizerKind) {
        if kind != self.optimizer.kind {
            self.optimizer = OptimizerSettings::of_kind(kind);
        }
    }

    /// Sets the warm-up steps, or when none are given, the task's own: 10% of the steps for the
    /// language model (set after `steps`), unchanged for the others.
    pub fn set_warmup(&mut self, warmup: Option<u64>) {
        match warmup {
            Some(v) => self.warmup = v,
            None if self.task == Task::Lm => self.warmup = self.steps / 10,
            None => {}
        }
    }

    /// The remedies as text (`none` when there are none).
    pub fn remedy_name(&self) -> String {
        Remedy::list_name(&self.remedies)
    }

    /// Checks every range.
    pub fn validate(&self) -> Result<(), LabError> {
        let bad = |what: String| Err(LabError::Config(what));
        if !(1..=1024).contains(&self.depth) {
            return bad(format!("depth must be in 1..=1024, got {}", self.depth));
        }
        if !(1..=4096).contains(&self.width) {
            return bad(format!("width must be in 1..=4096, got {}", self.width));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("learning rate must be positive, got {}", self.lr));
        }
        if !(self.init_gain > 0.0 && self.init_gain.is_finite()) {
            return bad(format!(
                "init gain must be positive, got {}",
                self.init_gain
            ));
        }
        if self.steps == 0 || self.batch == 0 || self.checkpoint_every == 0 {
            return bad("steps, batch and checkpoint interval must be at least 1".into());
        }
        if !(self.target_loss >= 0.0) {
            return bad(format!("target loss must be ≥ 0, got {}", self.target_loss));
        }
        self.optimizer.validate()?;
        if self.task == Task::Lm
            && !(self.lm.heads >= 1 && self.width.is_multiple_of(self.lm.heads))
        {
            return bad(format!(
                "the width ({}) must be a multiple of the number of heads ({})",
                self.width, self.lm.heads
            ));
        }
        if !(self.lm.embed_std > 0.0 && self.lm.embed_std.is_finite()) {
            return bad(format!(
                "the embeddings' standard deviation must be positive, got {}",
                self.lm.embed_std
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in &self.remedies {
            let key = std::mem::discriminant(r);
            if !seen.insert(format!("{key:?}")) {
                return bad(format!("remedy '{r}' is given twice"));
            }
        }
        Ok(())
    }
}
