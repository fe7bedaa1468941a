//! One line of telemetry per step.

use std::collections::BTreeMap;

use gradguard::{Decision, StepReport};
use serde::{Deserialize, Serialize};

/// What every sink writes for one step: the loss, the global gradient norm before and after the
/// rules, the per-tensor norms (before the rules), the decision and the learning rate in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsRecord {
    /// Step index, from 0.
    pub step: u64,
    /// The loss, when known (`null` for NaN/inf or none).
    pub loss: Option<f64>,
    /// Global L2 gradient norm before the rules (`null` when not finite).
    pub grad_norm: Option<f64>,
    /// Global L2 gradient norm after the rules.
    pub grad_norm_clipped: Option<f64>,
    /// The learning rate applied (base rate × the guard's multiplier).
    pub lr: f64,
    /// The guard's multiplier.
    pub lr_multiplier: f64,
    /// What the step did: `apply`, `skip` or `rollback` in the file.
    pub decision: StepDecision,
    /// Why the step was not a plain apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// L2 norm of each tensor before the rules, by name (`null` when not finite).
    pub tensor_norms: BTreeMap<String, Option<f64>>,
    /// The threshold the first norm-based rule compared the gradients against this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_threshold: Option<f64>,
    /// Whether a spike detector fired on this step (gradient norm or loss).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spike: bool,
    /// ‖Δθ‖/‖θ‖ of the optimizer's update over the whole model, before the guard's update bound
    /// (when the bound is on and the step was applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_ratio: Option<f64>,
    /// The factor the update bound applied to the update of the whole model (1: untouched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_scale: Option<f64>,
    /// The loss scale this step's loss was multiplied by (mixed precision with a
    /// `gradguard::LossScaler`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// A transformer's largest attention logit `q·k/√d_k` in each layer this step, in layer order
    /// (`null` where not finite; empty for other models). Its growth precedes divergence at high
    /// learning rates (Wortsman et al. 2023, §3.1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attention_logit_max: Vec<Option<f64>>,
    /// A language model's `log Z` of the output softmax, averaged over the batch's positions
    /// (Wortsman et al. 2023, §3.2: it drifts from 0 before output-logit divergence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_z_mean: Option<f64>,
    /// The largest `log Z` over the batch's positions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_z_max: Option<f64>,
}

/// What a step did, as the telemetry records it (the guard's [`Decision`] without its data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepDecision {
    /// The optimizer stepped.
    Apply,
    /// The step was skipped.
    Skip,
    /// The weights were rolled back to a snapshot.
    Rollback,
}

impl StepDecision {
    /// The word the files use: `apply`, `skip`, `rollback`.
    pub fn as_str(self) -> &'static str {
        match self {
            StepDecision::Apply => "apply",
            StepDecision::Skip => "skip",
            StepDecision::Rollback => "rollback",
        }
    }
}

impl std::fmt::Display for StepDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

impl MetricsRecord {
    /// The record of `report` at base learning rate `lr`.
    pub fn from_report(report: &StepReport, lr: f64) -> Self {
        MetricsRecord {
            step: report.step,
            loss: report.loss.and_then(finite),
            grad_norm: finite(report.norm_before),
            grad_norm_clipped: finite(report.norm_after),
            lr: report.effective_lr(lr),
            lr_multiplier: report.lr_multiplier,
            decision: match report.decision {
                Decision::Apply => StepDecision::Apply,
                Decision::Skip => StepDecision::Skip,
                Decision::Rollback { .. } => StepDecision::Rollback,
            },
            reasons: report.reasons.clone(),
            tensor_norms: report
                .tensors
                .iter()
                .map(|t| (t.name.clone(), finite(t.norm_before)))
                .collect(),
            clip_threshold: report.rules.iter().find_map(|r| r.threshold),
            spike: [&report.grad_spike, &report.loss_spike]
                .into_iter()
                .flatten()
                .any(|c| c.is_spike),
            update_ratio: report.update.as_ref().and_then(|u| finite(u.global_ratio)),
            update_scale: report.update.as_ref().map(|u| u.global_scale),
            loss_scale: report.loss_scale.map(|u| u.scale),
            attention_logit_max: Vec::new(),
            log_z_mean: None,
            log_z_max: None,
        }
    }

    /// The record with a language model's logit telemetry: each layer's largest attention
    /// logit and the output's mean and largest `log Z` (non-finite values become `null`).
    pub fn with_logits(
        mut self,
        attention_logit_max: &[f64],
        log_z_mean: f64,
        log_z_max: f64,
    ) -> Self {
        self.attention_logit_max = attention_logit_max.iter().map(|&v| finite(v)).collect();
        self.log_z_mean = finite(log_z_mean);
        self.log_z_max = finite(log_z_max);
        self
    }

    /// The largest attention logit over the layers this step (`None` without telemetry, or when
    /// a layer's is not finite).
    pub fn attention_logit_peak(&self) -> Option<f64> {
        if self.attention_logit_max.is_empty() {
            return None;
        }
        self.attention_logit_max
            .iter()
            .copied()
            .collect::<Option<Vec<f64>>>()
            .map(|v| v.into_iter().fold(f64::NEG_INFINITY, f64::max))
    }

    /// Whether the optimizer did not step.
    pub fn skipped(&self) -> bool {
        self.decision != StepDecision::Apply
    }
}
