//! Composing rules in order.

use serde::{Deserialize, Serialize};

use super::{Rule, RuleAction, RuleOutcome};
use crate::error::{GuardError, Result};
use crate::gradients::Gradients;
use crate::stats::TensorStats;

/// Rules applied one after another, as Optax's `chain`; each sees the gradients the previous left.
///
/// [`Chain::new`] fails loudly on compositions that cannot work as written:
/// - a rule that repairs non-finite values ([`super::ZeroNonFinite`]) after a rule that needs
///   finite input: that rule saw the NaN norm and did nothing;
/// - two of a rule that keeps one history (AutoClip, ZClip, ZeroNonFinite);
/// - a skip limit after a global-norm clip with the same p and a bound at or below the limit:
///   the skip could never fire.
///
/// Applying stops at the first rule that asks to skip the step.
#[derive(Debug, Default)]
pub struct Chain {
    rules: Vec<Box<dyn Rule>>,
}

/// The saved state of one rule in a chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    /// The rule's name, checked on restore.
    pub rule: String,
    /// Its state (`null` for stateless rules).
    pub state: serde_json::Value,
}

impl Chain {
    /// A chain of `rules`, checked for consistency.
    pub fn new(rules: Vec<Box<dyn Rule>>) -> Result<Self> {
        for (i, later) in rules.iter().enumerate() {
            for earlier in &rules[..i] {
                if later.repairs_non_finite() && earlier.needs_finite_input() {
                    return Err(GuardError::InconsistentChain(format!(
                        "'{}' must come before '{}': '{}' cannot act on non-finite gradients",
                        later.name(),
                        earlier.name(),
                        earlier.name()
                    )));
                }
                if later.unique_in_chain() && later.name() == earlier.name() {
                    return Err(GuardError::InconsistentChain(format!(
                        "'{}' appears twice; it keeps one history per run",
                        later.name()
                    )));
                }
                if let (Some((bound_norm, bound)), Some((skip_norm, limit))) =
                    (earlier.global_norm_bound(), later.skip_limit())
                    && bound_norm == skip_norm
                    && bound <= limit
                {
                    return Err(GuardError::InconsistentChain(format!(
                        "'{}' after '{}' can never fire: the norm is already at most {bound}, \
                         and the skip limit is {limit}",
                        later.name(),
                        earlier.name()
                    )));
                }
            }
        }
        Ok(Chain { rules })
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Box<dyn Rule>] {
        &self.rules
    }

    /// Whether any rule reads the parameters (see [`Rule::needs_parameters`]).
    pub fn needs_parameters(&self) -> bool {
        self.rules.iter().any(|r| r.needs_parameters())
    }

    /// Whether the chain holds no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Applies every rule in order, stopping after a rule that asks to skip the step.
    pub fn apply(
        &mut self,
        grads: &mut dyn Gradients,
        stats: &mut [TensorStats],
    ) -> Result<Vec<RuleOutcome>> {
        let mut outcomes = Vec::with_capacity(self.rules.len());
        for rule in &mut self.rules {
            let outcome = rule.apply(grads, stats)?;
            let skip = outcome.action == RuleAction::Skip;
            outcomes.push(outcome);
            if skip {
                break;
            }
        }
        Ok(outcomes)
    }

    /// The state of every rule, in order.
    pub fn state(&self) -> Vec<RuleState> {
        self.rules
            .iter()
            .map(|r| RuleState {
                rule: r.name().to_string(),
                state: r.state(),
            })
            .collect()
    }

    /// Loads states saved by [`Chain::state`] from a chain of the same rules in the same order.
    pub fn restore(&mut self, states: &[RuleState]) -> Result<()> {
        if states.len() != self.rules.len() {
            return Err(GuardError::BadState {
                what: "chain".into(),
                reason: format!(
                    "{} rule states for a chain of {} rules",
                    states.len(),
                    self.rules.len()
                ),
            });
        }
        for (rule, saved) in self.rules.iter_mut().zip(states) {
            if canonical_name(&saved.rule) != rule.name() {
                return Err(GuardError::BadState {
                    what: "chain".into(),
                    reason: format!(
                        "saved state is for '{}' where the chain has '{}'",
                        saved.rule,
                        rule.name()
                    ),
                });
            }
            rule.restore(&saved.state)?;
        }
        Ok(())
    }
}

/// A rule name as this version spells it: state saved by gradguard 0.1 names five rules by their
/// old report names (`value`, `per_tensor_norm`, `global_norm`, and the guard's `skip_above` and
/// `zero_non_finite`), which 0.2 spells as the registry does (`clip-value`, …).
fn canonical_name(saved: &str) -> &str {
    match saved {
        "value" => "clip-value",
        "per_tensor_norm" => "clip-norm",
        "global_norm" => "clip-global",
        "skip_above" => "skip-above",
        "zero_non_finite" => "zero-non-finite",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{ClipByGlobalNorm, ClipByValue};

    #[test]
    fn state_saved_under_the_old_names_restores() {
        let mut chain = Chain::new(vec![
            Box::new(ClipByValue::new(1.0).unwrap()) as Box<dyn Rule>,
            Box::new(ClipByGlobalNorm::new(1.0).unwrap()),
        ])
        .unwrap();
        let mut saved = chain.state();
        assert_eq!(saved[1].rule, "clip-global");
        saved[0].rule = "value".into();
        saved[1].rule = "global_norm".into();
        chain.restore(&saved).unwrap();
        saved[1].rule = "agc".into();
        assert!(chain.restore(&saved).is_err());
    }
}
