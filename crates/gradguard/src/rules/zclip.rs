//! ZClip: z-score clipping of the gradient norm against its EMA (Kumar et al. 2025).

use serde::{Deserialize, Serialize};

use super::global_norm::scale_all_to;
use super::{Rule, RuleOutcome, check_positive, parse_state};
use crate::error::{GuardError, Result};
use crate::gradients::Gradients;
use crate::norm::{NormType, total_norm};
use crate::stats::TensorStats;

/// Configuration of [`ZClip`]; defaults are the paper's (`alpha` 0.97, `z_thresh` 2.5, 25 warm-up
/// steps, `clip_factor` 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ZClipConfig {
    /// EMA smoothing factor α ∈ (0, 1).
    pub alpha: f64,
    /// z-score above which a norm counts as a spike.
    pub z_thresh: f64,
    /// Added to σ before dividing.
    pub eps: f64,
    /// Steps whose norms only initialise μ and σ² (their mean and population variance).
    pub warmup_steps: usize,
    /// Multiplies the adaptive threshold (< 1 clips harder).
    pub clip_factor: f64,
    /// An optional fixed cap on the norm, always in force. The reference code defaults to 1.0;
    /// here it is off unless set, since a chain can add [`super::ClipByGlobalNorm`] for that.
    pub max_norm: Option<f64>,
}

impl Default for ZClipConfig {
    fn default() -> Self {
        ZClipConfig {
            alpha: 0.97,
            z_thresh: 2.5,
            eps: 1e-6,
            warmup_steps: 25,
            clip_factor: 1.0,
            max_norm: None,
        }
    }
}

/// Spike clipping from running statistics of the global L2 gradient norm.
///
/// Source: Kumar, Owen, Chowdhury, Güra, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training"
/// (2025), z-score mode with reciprocal ("adaptive scaling") clipping, as in its reference code:
///
/// - warm-up: collect the first `warmup_steps` norms; μ ← mean, σ² ← population variance;
/// - then `z = (‖g‖ − μ) / (σ + eps)`; if `z > z_thresh` the threshold is
///   `c = (μ + z_thresh · σ / (z / z_thresh)) · clip_factor`, and `g` is scaled by `c / (‖g‖ + 1e-6)`
///   when `‖g‖ > c`;
/// - `μ ← α μ + (1 − α) x`, `σ² ← α σ² + (1 − α)(x − μ)²` (with the updated μ), where `x` is the
///   clipped norm `c` on a spike and `‖g‖` otherwise.
///
/// Non-finite norms neither clip nor enter μ, σ² or the warm-up buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct ZClip {
    config: ZClipConfig,
    state: ZClipState,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct ZClipState {
    warmup: Vec<f64>,
    /// (μ, σ²) once warm-up is over.
    ema: Option<(f64, f64)>,
}

impl ZClip {
    /// ZClip with a checked configuration.
    pub fn new(config: ZClipConfig) -> Result<Self> {
        if !(config.alpha > 0.0 && config.alpha < 1.0) {
            return Err(GuardError::InvalidConfig(format!(
                "ZClip alpha must be in (0, 1), got {}",
                config.alpha
            )));
        }
        check_positive("ZClip z_thresh", config.z_thresh, false)?;
        check_positive("ZClip eps", config.eps, true)?;
        check_positive("ZClip clip_factor", config.clip_factor, false)?;
        if config.warmup_steps == 0 {
            return Err(GuardError::InvalidConfig(
                "ZClip warmup_steps must be at least 1".into(),
            ));
        }
        if let Some(m) = config.max_norm {
            check_positive("ZClip max_norm", m, false)?;
        }
        Ok(ZClip {
            config,
            state: ZClipState::default(),
        })
    }

    /// The EMA mean and variance, once warm-up is over.
    pub fn ema(&self) -> Option<(f64, f64)> {
        self.state.ema
    }

    /// The adaptive threshold for a norm, or `None` when it is not a spike.
    fn spike_threshold(&self, norm: f64, mean: f64, var: f64) -> Option<f64> {
        let c = &self.config;
        let std = var.sqrt();
        let z = (norm - mean) / (std + c.eps);
        (z > c.z_thresh).then(|| (mean + c.z_thresh * std / (z / c.z_thresh)) * c.clip_factor)
    }
}

impl Rule for ZClip {
    fn name(&self) -> &'static str {
        "zclip"
    }

    fn apply(
        &mut self,
        grads: &mut dyn Gradients,
        stats: &mut [TensorStats],
    ) -> Result<RuleOutcome> {
        let total = total_norm(grads, stats, NormType::L2);
        if !total.is_finite() {
            return Ok(RuleOutcome::untouched(self.name(), total));
        }
        let Some((mean, var)) = self.state.ema else {
            self.state.warmup.push(total);
            if self.state.warmup.len() >= self.config.warmup_steps {
                let n = self.state.warmup.len() as f64;
                let mean = self.state.warmup.iter().sum::<f64>() / n;
                let var = self
                    .state
                    .warmup
                    .iter()
                    .map(|x| (x - mean).powi(2))
                    .sum::<f64>()
                    / n;
                self.state.ema = Some((mean, var));
                self.state.warmup.clear();
            }
            return Ok(match self.config.max_norm {
                Some(m) => scale_all_to(self.name(), grads, stats, total, m),
                None => RuleOutcome::untouched(self.name(), total),
            });
        };
        let spike = self.spike_threshold(total, mean, var);
        let adaptive = spike.unwrap_or(total);
        let effective = match self.config.max_norm {
            Some(m) => adaptive.min(m),
            None => adaptive,
        };
        let outcome = if total > effective {
            scale_all_to(self.name(), grads, stats, total, effective)
        } else {
            RuleOutcome {
                threshold: Some(effective),
                ..RuleOutcome::untouched(self.name(), total)
            }
        };
        let x = spike.unwrap_or(total);
        let a = self.config.alpha;
        let mean = a * mean + (1.0 - a) * x;
        let var = a * var + (1.0 - a) * (x - mean).powi(2);
        self.state.ema = Some((mean, var));
        Ok(outcome)
    }

    fn needs_finite_input(&self) -> bool {
        true
    }

    fn unique_in_chain(&self) -> bool {
        true
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).expect("plain data serializes")
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        self.state = parse_state(self.name(), state)?;
        Ok(())
    }
}
