//! AdaGC: per-tensor clipping against an EMA of each tensor's own clipped norm (Wang et al. 2025).

use serde::{Deserialize, Serialize};

use super::global_norm::scale_tensors;
use super::{Rule, RuleAction, RuleOutcome, check_positive, parse_state};
use crate::error::{GuardError, Result};
use crate::gradients::Gradients;
use crate::stats::{TensorStats, combined};

/// Configuration of [`AdaGc`]; defaults are the paper's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdaGcConfig {
    /// λ_abs: the global-norm threshold of the warm-up steps (default 1.0).
    pub lambda_abs: f64,
    /// λ_rel: after warm-up each tensor may exceed its EMA γ by this factor (default 1.05).
    pub lambda_rel: f64,
    /// β: the EMA's smoothing factor in [0, 1) (default 0.98).
    pub beta: f64,
    /// Steps counted from 1 while `step < warmup_steps` are warm-up steps (default 100, so 99).
    pub warmup_steps: u64,
    /// ε added to the global norm in warm-up (default 1e-8).
    pub eps: f64,
}

impl Default for AdaGcConfig {
    fn default() -> Self {
        AdaGcConfig {
            lambda_abs: 1.0,
            lambda_rel: 1.05,
            beta: 0.98,
            warmup_steps: 100,
            eps: 1e-8,
        }
    }
}

/// Adaptive per-tensor gradient clipping with an EMA of each tensor's own norm.
///
/// Source: Wang et al., "AdaGC: Improving Training Stability for Large Language Model
/// Pretraining" (2025, arXiv:2502.11034), formula as in the reference implementation. With steps
/// t = 1, 2, …, tensor i's gradient g_i and its EMA γ_i:
///
/// - warm-up (t < `warmup_steps`): h = min(λ_abs / (‖g‖ + ε), 1) over the global L2 norm;
///   ĝ_i = h·g_i; γ_i = ‖ĝ_i‖ at t = 1, else min(γ_i, ‖ĝ_i‖);
/// - then: h_i = min(λ_rel · γ_i / ‖g_i‖, 1); ĝ_i = h_i·g_i; γ_i ← β·γ_i + (1 − β)·‖ĝ_i‖.
///
/// A tensor whose norm is 0 is left as it is (the reference divides by it). Non-finite gradients
/// change nothing and do not enter γ (the guard's non-finite policy decides the step).
#[derive(Debug, Clone, PartialEq)]
pub struct AdaGc {
    config: AdaGcConfig,
    state: AdaGcState,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct AdaGcState {
    /// Steps seen with finite gradients.
    step: u64,
    /// γ per tensor (empty before the first step).
    gamma: Vec<f64>,
}

impl AdaGc {
    /// AdaGC with a checked configuration.
    pub fn new(config: AdaGcConfig) -> Result<Self> {
        check_positive("AdaGC lambda_abs", config.lambda_abs, false)?;
        check_positive("AdaGC lambda_rel", config.lambda_rel, false)?;
        check_positive("AdaGC eps", config.eps, true)?;
        if !(config.beta >= 0.0 && config.beta < 1.0) {
            return Err(GuardError::InvalidConfig(format!(
                "AdaGC beta must be in [0, 1), got {}",
                config.beta
            )));
        }
        Ok(AdaGc {
            config,
            state: AdaGcState::default(),
        })
    }

    /// γ per tensor so far.
    pub fn gamma(&self) -> &[f64] {
        &self.state.gamma
    }
}

impl Rule for AdaGc {
    fn name(&self) -> &'static str {
        "adagc"
    }

    fn apply(
        &mut self,
        grads: &mut dyn Gradients,
        stats: &mut [TensorStats],
    ) -> Result<RuleOutcome> {
        let global = combined(stats).l2();
        if !global.is_finite() {
            return Ok(RuleOutcome {
                action: RuleAction::NonFinite,
                ..RuleOutcome::untouched(self.name(), global)
            });
        }
        let c = self.config;
        let norms: Vec<f64> = stats.iter().map(TensorStats::l2).collect();
        if self.state.gamma.len() != norms.len() {
            if self.state.step > 0 {
                return Err(GuardError::BadState {
                    what: self.name().into(),
                    reason: format!(
                        "{} tensors now, {} when the EMA started",
                        norms.len(),
                        self.state.gamma.len()
                    ),
                });
            }
            self.state.gamma = vec![0.0; norms.len()];
        }
        self.state.step += 1;
        let t = self.state.step;
        let factors: Vec<f64> = if t < c.warmup_steps {
            let h = (c.lambda_abs / (global + c.eps)).min(1.0);
            for (g, n) in self.state.gamma.iter_mut().zip(&norms) {
                let clipped = h * n;
                *g = if t == 1 { clipped } else { g.min(clipped) };
            }
            vec![h; norms.len()]
        } else {
            let factors: Vec<f64> = norms
                .iter()
                .zip(&self.state.gamma)
                .map(|(&n, &g)| {
                    if n > 0.0 {
                        (c.lambda_rel * g / n).min(1.0)
                    } else {
                        1.0
                    }
                })
                .collect();
            for ((g, n), h) in self.state.gamma.iter_mut().zip(&norms).zip(&factors) {
                *g = c.beta * *g + (1.0 - c.beta) * h * n;
            }
            factors
        };
        let mut outcome = RuleOutcome::new(self.name(), RuleAction::Unchanged);
        outcome.norm = Some(global);
        outcome.tensors_changed = factors.iter().filter(|&&f| f < 1.0).count();
        if outcome.tensors_changed > 0 {
            scale_tensors(grads, stats, &factors);
            outcome.action = RuleAction::Scaled;
        }
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
