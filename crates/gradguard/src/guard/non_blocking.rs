//! What a guard asks of a device that decides a step without the host: the plan an adapter's
//! non-blocking mode follows.
//!
//! In that mode the step's decision — skip it, or scale its gradients — is computed on the device
//! from the step's own statistics, and the host reads the statistics one step later, when it
//! replays the same judgement ([`Guard::step`]) for the report and the guard's counters. That is
//! the skip step of OLMo-core (a 0/1 step factor computed on the device, so the host never waits)
//! generalized to the rules whose decision is a pure function of the step's statistics. A policy
//! with state the device cannot see — spike detectors, the update bound, AutoClip's and ZClip's
//! histories, the loss scaler — cannot be followed without the host, and [`Guard::device_plan`]
//! names the first such part.

use serde::{Deserialize, Serialize};

use super::{Guard, NonFinitePolicy};
use crate::error::{GuardError, Result};
use crate::norm::NormType;

/// A rule the device applies from the step's block statistics alone.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum DeviceRule {
    /// Scale every gradient by `min(1, max_norm / (‖g‖_p + 1e-6))` (PyTorch's
    /// `clip_grad_norm_`), p ∈ {1, 2, ∞}.
    ClipGlobalNorm {
        /// The largest global norm.
        max_norm: f64,
        /// Which norm (L1, L2 or Inf).
        norm_type: NormType,
    },
    /// Skip the step when `‖g‖_p > limit` or the norm is not finite (Optax's
    /// `skip_large_updates`), p ∈ {1, 2, ∞}.
    SkipAbove {
        /// The largest global norm still applied.
        limit: f64,
        /// Which norm (L1, L2 or Inf).
        norm_type: NormType,
    },
}

impl DeviceRule {
    /// The rule's norm.
    pub fn norm_type(&self) -> NormType {
        match *self {
            DeviceRule::ClipGlobalNorm { norm_type, .. }
            | DeviceRule::SkipAbove { norm_type, .. } => norm_type,
        }
    }

    /// Whether a device can compute the rule's norm from block statistics (max, Σx², Σ|x|).
    pub fn norm_on_device(norm_type: NormType) -> bool {
        matches!(norm_type, NormType::L1 | NormType::L2 | NormType::Inf)
    }
}

/// Everything a device needs to decide a step: the rules in order, and whether a non-finite
/// gradient value or loss skips the step (it always does: under [`NonFinitePolicy::Error`] the
/// error comes with the next step's report, the step itself skipped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DevicePlan {
    /// The chain's rules, in order.
    pub rules: Vec<DeviceRule>,
}

impl Guard {
    /// The plan a device follows to decide this guard's steps without a host read, or
    /// [`GuardError::InvalidConfig`] naming the first part of the policy that needs the host:
    /// the update bound, a spike detector, a loss scaler, a non-finite policy other than `Skip`
    /// and `Error`, or a rule other than a global-norm clip or skip with p ∈ {1, 2, ∞}.
    ///
    /// What the mode gives up, as the adapter documents it: the report (and a stop, and a
    /// learning-rate back-off) of step t arrives with step t + 1.
    pub fn device_plan(&self) -> Result<DevicePlan> {
        let refuse = |what: &str| {
            Err(GuardError::InvalidConfig(format!(
                "the non-blocking mode decides each step on the device and cannot follow {what}; \
                 it follows global-norm clips and skips (p = 1, 2 or inf) and skips non-finite \
                 steps"
            )))
        };
        let config = self.config();
        if config.update_bound.is_some() {
            return refuse("the update bound (set update_bound to None)");
        }
        if config.grad_spike.is_some() || config.loss_spike.is_some() {
            return refuse("spike detection (set grad_spike and loss_spike to None)");
        }
        if self.loss_scaler().is_some() {
            return refuse("a loss scaler");
        }
        if !matches!(
            config.non_finite,
            NonFinitePolicy::Skip | NonFinitePolicy::Error
        ) {
            return refuse(&format!(
                "the non-finite policy {:?} (use Skip or Error)",
                config.non_finite
            ));
        }
        let mut rules = Vec::new();
        for rule in self.chain().rules() {
            match rule.on_device() {
                Some(r) if DeviceRule::norm_on_device(r.norm_type()) => rules.push(r),
                _ => return refuse(&format!("the rule '{}'", rule.name())),
            }
        }
        Ok(DevicePlan { rules })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::GuardConfig;
    use crate::rules::{Chain, ClipByGlobalNorm, Rule, SkipIfNormAbove, ZClip, ZClipConfig};

    fn guard(config: GuardConfig, rules: Vec<Box<dyn Rule>>) -> Guard {
        Guard::new(config, Chain::new(rules).unwrap()).unwrap()
    }

    fn plain() -> GuardConfig {
        GuardConfig {
            update_bound: None,
            grad_spike: None,
            loss_spike: None,
            ..GuardConfig::default()
        }
    }

    #[test]
    fn clips_and_skips_are_planned_in_order() {
        let g = guard(
            plain(),
            vec![
                Box::new(SkipIfNormAbove::new(100.0, NormType::Inf).unwrap()),
                Box::new(ClipByGlobalNorm::new(1.0).unwrap()),
            ],
        );
        let plan = g.device_plan().unwrap();
        assert_eq!(
            plan.rules,
            vec![
                DeviceRule::SkipAbove {
                    limit: 100.0,
                    norm_type: NormType::Inf
                },
                DeviceRule::ClipGlobalNorm {
                    max_norm: 1.0,
                    norm_type: NormType::L2
                },
            ]
        );
    }

    #[test]
    fn what_needs_the_host_is_named() {
        let clip = || -> Vec<Box<dyn Rule>> { vec![Box::new(ClipByGlobalNorm::new(1.0).unwrap())] };
        let message = |g: Guard| g.device_plan().unwrap_err().to_string();
        assert!(message(guard(GuardConfig::default(), clip())).contains("update bound"));
        let spikes = GuardConfig {
            update_bound: None,
            ..GuardConfig::default()
        };
        assert!(message(guard(spikes, clip())).contains("spike"));
        let zero = GuardConfig {
            non_finite: NonFinitePolicy::Zero,
            ..plain()
        };
        assert!(message(guard(zero, clip())).contains("Zero"));
        let zclip = guard(
            plain(),
            vec![Box::new(ZClip::new(ZClipConfig::default()).unwrap())],
        );
        assert!(message(zclip).contains("'zclip'"));
        let p3 = guard(
            plain(),
            vec![Box::new(
                ClipByGlobalNorm::with_norm(1.0, NormType::P(3.0)).unwrap(),
            )],
        );
        assert!(message(p3).contains("'clip-global'"));
    }
}
