//! The optimizer a run trains with and its learning-rate schedule: settings of every task, not
//! remedies (the `adam` remedy still names the change from SGD to Adam as one).

use burn::optim::ModuleOptimizer;
use gradguard_burn::{AdamMoments, FusedRule};
use serde::{Deserialize, Serialize};

use crate::error::LabError;

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Plain stochastic gradient descent, `θ ← θ − η g` (weight decay, if any, coupled: added to g).
    Sgd,
    /// Adam (Kingma & Ba 2015), weight decay coupled (added to the gradient, PyTorch's `Adam`).
    Adam,
    /// AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay, `θ ← θ(1 − ηλ) − η·m̂/(√v̂ + ε)`,
    /// on every parameter (as Burn's `AdamW` and PyTorch's `AdamW` without parameter groups).
    Adamw,
}

impl OptimizerKind {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
            OptimizerKind::Adamw => "adamw",
        }
    }
}

impl std::str::FromStr for OptimizerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sgd" => Ok(OptimizerKind::Sgd),
            "adam" => Ok(OptimizerKind::Adam),
            "adamw" => Ok(OptimizerKind::Adamw),
            other => Err(format!(
                "unknown optimizer '{other}' (expected sgd, adam or adamw)"
            )),
        }
    }
}

/// The optimizer and its hyper-parameters (the rate is the run's `lr`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSettings {
    /// The update rule.
    pub kind: OptimizerKind,
    /// β₁, the first moment's decay (Adam, AdamW).
    pub beta1: f64,
    /// β₂, the second moment's decay (Adam, AdamW).
    pub beta2: f64,
    /// ε added to √v̂ (Adam, AdamW).
    pub eps: f64,
    /// Weight decay λ: coupled for SGD and Adam, decoupled for AdamW.
    pub weight_decay: f64,
}

impl Default for OptimizerSettings {
    /// Plain SGD, the setting of the classic explosion papers.
    fn default() -> Self {
        OptimizerSettings {
            kind: OptimizerKind::Sgd,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl OptimizerSettings {
    /// Adam with PyTorch's defaults (β 0.9/0.999, ε 1e-8, no weight decay).
    pub fn adam() -> Self {
        OptimizerSettings {
            kind: OptimizerKind::Adam,
            ..Self::default()
        }
    }

    /// AdamW as language models are trained today: β₂ 0.95, weight decay 0.1 (GPT-3, Brown et al.
    /// 2020; Wortsman et al. 2023).
    pub fn adamw() -> Self {
        OptimizerSettings {
            kind: OptimizerKind::Adamw,
            beta2: 0.95,
            weight_decay: 0.1,
            ..Self::default()
        }
    }

    /// The task's settings for `kind`: [`Self::adamw`] for AdamW, [`Self::adam`], plain SGD.
    pub fn of_kind(kind: OptimizerKind) -> Self {
        match kind {
            OptimizerKind::Sgd => Self::default(),
            OptimizerKind::Adam => Self::adam(),
            OptimizerKind::Adamw => Self::adamw(),
        }
    }

    /// Whether these are the defaults (plain SGD): left out of a configuration's JSON, so runs
    /// written before optimizers were settings read back equal.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Checks every range.
    pub fn validate(&self) -> Result<(), LabError> {
        let bad = |what: String| Err(LabError::Config(what));
        for (name, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(format!("{name} must be in [0, 1), got {v}"));
            }
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return bad(format!("eps must be positive, got {}", self.eps));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad(format!(
                "weight decay must be ≥ 0, got {}",
                self.weight_decay
            ));
        }
        Ok(())
    }

    /// A fresh Burn optimizer with these settings: Burn's optimizer of [`Self::fused_rule`].
    pub fn build(&self) -> ModuleOptimizer {
        self.fused_rule().to_burn()
    }

    /// The rule of these settings, for the fused guarded optimizer ([`GuardedOptimizer::fused`])
    /// and, through [`FusedRule::to_burn`], for Burn's own optimizer ([`Self::build`]).
    ///
    /// [`GuardedOptimizer::fused`]: gradguard_burn::GuardedOptimizer::fused
    pub fn fused_rule(&self) -> FusedRule {
        let moments = AdamMoments {
            beta_1: self.beta1 as f32,
            beta_2: self.beta2 as f32,
            epsilon: self.eps as f32,
        };
        let coupled = (self.weight_decay > 0.0).then_some(self.weight_decay as f32);
        match self.kind {
            OptimizerKind::Sgd => FusedRule::Sgd {
                weight_decay: coupled,
            },
            OptimizerKind::Adam => FusedRule::Adam {
                moments,
                weight_decay: coupled,
            },
            OptimizerKind::Adamw => FusedRule::AdamW {
                moments,
                weight_decay: self.weight_decay as f32,
            },
        }
    }

    /// One line for reports: e.g. "AdamW (β 0.9/0.95, ε 1e-8, weight decay 0.1)".
    pub fn describe(&self) -> String {
        let name = match self.kind {
            OptimizerKind::Sgd => {
                return match self.weight_decay > 0.0 {
                    true => format!("SGD (weight decay {})", self.weight_decay),
                    false => "SGD".into(),
                };
            }
            OptimizerKind::Adam => "Adam",
            OptimizerKind::Adamw => "AdamW",
        };
        let wd = if self.weight_decay > 0.0 {
            format!(", weight decay {}", self.weight_decay)
        } else {
            String::new()
        };
        format!(
            "{name} (β {}/{}, ε {:e}{wd})",
            self.beta1, self.beta2, self.eps
        )
    }
}

/// How the learning rate moves over a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// The rate as given (after any warm-up).
    #[default]
    Constant,
    /// Linear warm-up, then a cosine decay to a tenth of the rate at the last step (the schedule
    /// of GPT-3 and of Wortsman et al. 2023, whose final rate is 10% of the peak).
    WarmupCosine,
}

impl Schedule {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Constant => "constant",
            Schedule::WarmupCosine => "warmup-cosine",
        }
    }

    /// Whether this is the default (constant).
    pub fn is_default(&self) -> bool {
        *self == Schedule::Constant
    }

    /// The rate at step `step` (0-based) of `steps`, for a peak rate `lr` and `warmup` linear
    /// warm-up steps: `lr·(step+1)/warmup` during the warm-up, then constant or
    /// `lr·(0.1 + 0.9·½(1 + cos(π·p)))` with p the fraction of the post-warm-up steps taken.
    pub fn rate(self, lr: f64, step: u64, steps: u64, warmup: u64) -> f64 {
        if step < warmup {
            return lr * (step + 1) as f64 / warmup as f64;
        }
        match self {
            Schedule::Constant => lr,
            Schedule::WarmupCosine => {
                let span = steps.saturating_sub(warmup).max(1) as f64;
                let p = ((step - warmup) as f64 / span).min(1.0);
                lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
            }
        }
    }
}

impl std::str::FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(Schedule::Constant),
            "warmup-cosine" | "cosine" => Ok(Schedule::WarmupCosine),
            other => Err(format!(
                "unknown schedule '{other}' (expected constant or warmup-cosine)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_a_tenth() {
        let s = Schedule::WarmupCosine;
        assert_eq!(s.rate(1.0, 0, 100, 10), 0.1);
        assert_eq!(s.rate(1.0, 9, 100, 10), 1.0);
        assert_eq!(s.rate(1.0, 10, 100, 10), 1.0);
        assert!((s.rate(1.0, 55, 100, 10) - 0.55).abs() < 1e-12);
        assert!((s.rate(1.0, 100, 100, 10) - 0.1).abs() < 1e-12);
        assert_eq!(Schedule::Constant.rate(0.5, 50, 100, 10), 0.5);
    }

    #[test]
    fn settings_are_checked() {
        assert!(OptimizerSettings::adamw().validate().is_ok());
        let bad = OptimizerSettings {
            beta2: 1.0,
            ..OptimizerSettings::adamw()
        };
        assert!(bad.validate().is_err());
        assert_eq!(
            OptimizerSettings::adamw().describe(),
            "AdamW (β 0.9/0.95, ε 1e-8, weight decay 0.1)"
        );
    }
}
