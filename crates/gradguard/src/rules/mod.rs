//! Clipping rules: small types behind one open trait, composed by [`Chain`].
//!
//! A rule reads the current statistics (kept up to date by the rules before it, so a chain reads
//! the gradients once), changes the gradients through the [`Gradients`] view, updates the
//! statistics to match, and says what it did in a [`RuleOutcome`]. Stateful rules (AutoClip,
//! ZClip) expose their state as plain serializable data so a resumed run decides as an
//! uninterrupted one would.

mod adagc;
mod agc;
mod autoclip;
mod chain;
mod clip_value;
mod global_norm;
mod per_tensor_norm;
pub mod registry;
mod skip_above;
mod zclip;
mod zero_non_finite;

pub use adagc::{AdaGc, AdaGcConfig};
pub use agc::AdaptiveGradClip;
pub use autoclip::{AutoClip, percentile};
pub use chain::{Chain, RuleState};
pub use clip_value::ClipByValue;
pub use global_norm::{ClipByGlobalNorm, NORM_EPS, clip_coefficient, clip_with_norm};
pub use per_tensor_norm::ClipPerTensorNorm;
pub use registry::{RULES, RuleOptions, RuleSpec, rule_keys, rule_names};
pub use skip_above::SkipIfNormAbove;
pub use zclip::{ZClip, ZClipConfig};
pub use zero_non_finite::ZeroNonFinite;

use serde::{Deserialize, Serialize};

use crate::error::{GuardError, Result};
use crate::gradients::Gradients;
use crate::norm::NormType;
use crate::stats::TensorStats;

/// What a rule did to the gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// Nothing changed.
    Unchanged,
    /// One or more tensors (or units) were multiplied by a factor below 1.
    Scaled,
    /// Values were clamped.
    Clamped,
    /// Non-finite values were replaced by zero.
    Zeroed,
    /// The rule asks for the whole step to be skipped.
    Skip,
    /// The rule could not act because its input was non-finite; gradients left unchanged.
    NonFinite,
}

/// The record of one rule's work on one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleOutcome {
    /// The rule's name, e.g. `clip-global`: for a registered rule, its name in the registry
    pub rule: String,
    /// What it did.
    pub action: RuleAction,
    /// The norm the rule measured before acting (global norm rules: the pre-clip total).
    pub norm: Option<f64>,
    /// The threshold it compared against (the clip value or max norm in force this step).
    pub threshold: Option<f64>,
    /// The factor applied to all tensors, for rules with one global factor.
    pub scale: Option<f64>,
    /// How many tensors were changed.
    pub tensors_changed: usize,
}

impl RuleOutcome {
    /// An outcome with no measurement.
    pub fn new(rule: &str, action: RuleAction) -> Self {
        RuleOutcome {
            rule: rule.to_string(),
            action,
            norm: None,
            threshold: None,
            scale: None,
            tensors_changed: 0,
        }
    }

    /// The outcome of a rule that measured `norm` and changed nothing (`NonFinite` when the
    /// norm is NaN or inf, `Unchanged` otherwise).
    pub fn untouched(rule: &str, norm: f64) -> Self {
        let action = if norm.is_finite() {
            RuleAction::Unchanged
        } else {
            RuleAction::NonFinite
        };
        RuleOutcome {
            norm: Some(norm),
            ..RuleOutcome::new(rule, action)
        }
    }
}

/// A gradient transformation applied between `backward()` and the optimizer step.
///
/// `apply` receives the statistics of the gradients as they are now and must leave them
/// describing the gradients as it leaves them (scale them analytically with
/// [`TensorStats::scaled`], or take the fresh statistics the mutating [`Gradients`] methods return).
pub trait Rule: Send + std::fmt::Debug {
    /// A short stable name, used in reports, saved state and chain errors.
    fn name(&self) -> &'static str;

    /// Transforms the gradients for this step.
    fn apply(
        &mut self,
        grads: &mut dyn Gradients,
        stats: &mut [TensorStats],
    ) -> Result<RuleOutcome>;

    /// Whether the rule can only act on finite gradients (norm-based rules). A chain rejects
    /// a [`ZeroNonFinite`] placed after such a rule: the rule would have seen NaN and done nothing.
    fn needs_finite_input(&self) -> bool {
        false
    }

    /// Whether the rule reads the parameters next to the gradients (AGC): an adapter then
    /// provides them ([`crate::Source::Parameter`]).
    fn needs_parameters(&self) -> bool {
        false
    }

    /// Whether the rule replaces non-finite values (it must then come before every rule that
    /// [needs finite input](Rule::needs_finite_input)).
    fn repairs_non_finite(&self) -> bool {
        false
    }

    /// The global norm above which the rule skips the step: (norm type, limit).
    fn skip_limit(&self) -> Option<(NormType, f64)> {
        None
    }

    /// The rule as a device applies it from the step's block statistics alone, for a
    /// non-blocking step ([`crate::Guard::device_plan`]); `None` for a rule that needs more (a
    /// history, unit norms, the values themselves).
    fn on_device(&self) -> Option<crate::guard::DeviceRule> {
        None
    }

    /// Whether two of this rule in one chain are a mistake (adaptive rules keep one history).
    fn unique_in_chain(&self) -> bool {
        false
    }

    /// A bound the rule guarantees on the global norm after it ran: (norm type, max).
    fn global_norm_bound(&self) -> Option<(NormType, f64)> {
        None
    }

    /// The rule's state as plain data (`null` for stateless rules).
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Loads a state produced by [`Rule::state`].
    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        if state.is_null() {
            Ok(())
        } else {
            Err(GuardError::BadState {
                what: self.name().into(),
                reason: "this rule keeps no state, but a state was given".into(),
            })
        }
    }
}

/// Parses a rule's state, naming the rule in the error.
pub(crate) fn parse_state<T: serde::de::DeserializeOwned>(
    rule: &str,
    state: &serde_json::Value,
) -> Result<T> {
    serde_json::from_value(state.clone()).map_err(|e| GuardError::BadState {
        what: rule.into(),
        reason: e.to_string(),
    })
}

/// Rejects a limit that is NaN, negative or (where `allow_zero` is false) zero.
pub(crate) fn check_positive(what: &str, value: f64, allow_zero: bool) -> Result<()> {
    let ok = if allow_zero {
        value >= 0.0
    } else {
        value > 0.0
    };
    if ok {
        Ok(())
    } else {
        Err(GuardError::InvalidConfig(format!(
            "{what} must be {}, got {value}",
            if allow_zero { ">= 0" } else { "> 0" }
        )))
    }
}
