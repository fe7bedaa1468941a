//! How the guard judges one step's gradients, in named stages.
//!
//! [`Guard::step`] unscales, then [`Guard::judge`] runs the stages in order, each adding to one
//! [`Findings`]: [`Guard::check_loss`] and [`Guard::check_gradients`] apply the
//! [`NonFinitePolicy`], [`Guard::watch_spikes`] feeds the detectors and applies the
//! [`SpikeAction`], [`Guard::run_rules`] clips through the chain, and [`Findings::decide`] turns
//! what was found into a [`Decision`]. A stage that finds trouble leaves the later ones nothing
//! to do: a step that will be skipped is neither observed by the detectors nor clipped.

use super::{Decision, Guard, NonFinitePolicy, SpikeAction, StepReport, TensorReport};
use crate::detect::{SpikeCheck, find_non_finite};
use crate::error::{GuardError, Result};
use crate::gradients::Gradients;
use crate::loss_scale::ScaleUpdate;
use crate::rules::{RuleAction, RuleOutcome};
use crate::stats::{TensorStats, combined};

/// Why a step is bad, before the decision is made.
enum Trouble {
    Skip,
    Rollback(u32),
}

/// What the stages found about one step.
#[derive(Default)]
struct Findings {
    /// Why the step is not plain, one line each, in the order found.
    reasons: Vec<String>,
    /// The worst trouble found so far; `None` while the step can be applied.
    trouble: Option<Trouble>,
    /// The loss, a gradient or a parameter a rule reads is not finite.
    non_finite: bool,
    /// A detector flagged the gradient norm or the loss.
    spiked: bool,
}

impl Findings {
    /// Whether the later stages have nothing to do: the step is already bad, or it is
    /// non-finite under [`NonFinitePolicy::Apply`] (which hands it to the optimizer untouched).
    fn settled(&self, policy: NonFinitePolicy) -> bool {
        self.trouble.is_some() || (self.non_finite && policy == NonFinitePolicy::Apply)
    }

    /// The decision the findings call for: apply, skip, or roll back to `snapshot` — a skip
    /// (saying so) when there is no snapshot yet.
    fn decide(&mut self, snapshot: Option<u64>) -> Decision {
        match self.trouble {
            None => Decision::Apply,
            Some(Trouble::Skip) => Decision::Skip,
            Some(Trouble::Rollback(skip_batches)) => match snapshot {
                Some(to_step) => Decision::Rollback {
                    to_step,
                    skip_batches,
                },
                None => {
                    self.reasons
                        .push("no snapshot yet: skipping instead of rolling back".into());
                    Decision::Skip
                }
            },
        }
    }
}

/// A finding that a value is not finite, as the [`NonFinitePolicy`] treats it: skip, with `what`
/// as the reason (`Zero` too, where zeroing does not apply), or apply, saying so.
fn non_finite_finding(findings: &mut Findings, policy: NonFinitePolicy, what: String) {
    findings.non_finite = true;
    if policy == NonFinitePolicy::Apply {
        findings.reasons.push(format!("applied: {what}"));
    } else {
        findings.reasons.push(what);
        findings.trouble = Some(Trouble::Skip);
    }
}

impl Guard {
    /// [`Guard::step`] after the loss scale is taken out: `stats` and `loss` are unscaled.
    pub(super) fn judge(
        &mut self,
        grads: &mut dyn Gradients,
        mut stats: Vec<TensorStats>,
        loss: Option<f64>,
        loss_scale: Option<ScaleUpdate>,
    ) -> Result<StepReport> {
        let step = self.counters.step;
        let before = stats.clone();
        let mut findings = Findings::default();
        self.check_loss(loss, &mut findings)?;
        self.check_gradients(grads, &mut stats, &mut findings)?;
        let (grad_spike, loss_spike) = self.watch_spikes(&stats, loss, &mut findings)?;
        let rules = self.run_rules(grads, &mut stats, &mut findings)?;
        let decision = findings.decide(self.counters.snapshot_step);
        let take_snapshot = self.account(
            decision,
            findings.spiked,
            findings.non_finite,
            &findings.reasons,
        )?;
        Ok(StepReport {
            step,
            loss,
            norm_before: combined(&before).l2(),
            norm_after: combined(&stats).l2(),
            tensors: tensor_reports(grads, &before, &stats),
            rules,
            grad_spike,
            loss_spike,
            decision,
            reasons: findings.reasons,
            lr_multiplier: self.counters.lr_multiplier,
            take_snapshot,
            consecutive_bad: self.counters.consecutive_bad,
            update: None,
            loss_scale,
        })
    }

    /// Stage 1: a non-finite loss, under the [`NonFinitePolicy`] (`Error` stops here).
    fn check_loss(&self, loss: Option<f64>, findings: &mut Findings) -> Result<()> {
        let Some(l) = loss.filter(|l| !l.is_finite()) else {
            return Ok(());
        };
        let policy = self.config.non_finite;
        if policy == NonFinitePolicy::Error {
            return Err(GuardError::NonFiniteLoss {
                step: self.counters.step,
                loss: l,
            });
        }
        non_finite_finding(findings, policy, format!("non-finite loss {l}"));
        Ok(())
    }

    /// Stage 2: non-finite gradient values, under the [`NonFinitePolicy`]: `Error` names the
    /// first one's tensor and index, `Zero` zeroes them all (and refreshes `stats`).
    fn check_gradients(
        &self,
        grads: &mut dyn Gradients,
        stats: &mut Vec<TensorStats>,
        findings: &mut Findings,
    ) -> Result<()> {
        let Some(found) = find_non_finite(grads, stats) else {
            return Ok(());
        };
        let what = format!(
            "{} non-finite gradient values, first {} in '{}' at index {}",
            found.count, found.kind, found.tensor, found.index
        );
        match self.config.non_finite {
            NonFinitePolicy::Error => Err(GuardError::NonFiniteGradient {
                step: self.counters.step,
                tensor: found.tensor,
                index: found.index,
                value: found.kind.to_string(),
                count: found.count,
            }),
            NonFinitePolicy::Zero => {
                findings.non_finite = true;
                findings.reasons.push(format!("zeroed {what}"));
                *stats = grads.zero_non_finite();
                Ok(())
            }
            policy => {
                non_finite_finding(findings, policy, what);
                Ok(())
            }
        }
    }

    /// Stage 3: the pre-clip global L2 norm and the loss go to their spike detectors, and a
    /// spike is answered by the [`SpikeAction`] (`Stop` stops here). Returns both checks for the
    /// report; a settled step is not observed (its values would poison the windows).
    fn watch_spikes(
        &mut self,
        stats: &[TensorStats],
        loss: Option<f64>,
        findings: &mut Findings,
    ) -> Result<(Option<SpikeCheck>, Option<SpikeCheck>)> {
        if findings.settled(self.config.non_finite) {
            return Ok((None, None));
        }
        let norm = combined(stats).l2();
        let grad_check = self.grad_spike.as_mut().map(|d| d.observe(norm));
        let loss_check = match (self.loss_spike.as_mut(), loss) {
            (Some(d), Some(l)) => Some(d.observe(l)),
            _ => None,
        };
        for (check, metric) in [(grad_check, "gradient norm"), (loss_check, "loss")] {
            let Some(SpikeCheck {
                value,
                threshold: Some(threshold),
                is_spike: true,
            }) = check
            else {
                continue;
            };
            findings.spiked = true;
            findings
                .reasons
                .push(format!("{metric} spike: {value:.4e} above {threshold:.4e}"));
            match self.config.on_spike {
                SpikeAction::Ignore => {}
                SpikeAction::Skip => findings.trouble = Some(Trouble::Skip),
                SpikeAction::Rollback { skip_batches } => {
                    findings.trouble = Some(Trouble::Rollback(skip_batches));
                }
                SpikeAction::Stop => {
                    return Err(GuardError::GradientSpike {
                        step: self.counters.step,
                        metric: metric.into(),
                        value,
                        threshold,
                    });
                }
            }
        }
        Ok((grad_check, loss_check))
    }

    /// Stage 4: the rule chain clips a step that is still good. A rule that asks to skip makes
    /// the step a skip; a non-finite parameter a rule reads (AGC) is a non-finite finding under
    /// the [`NonFinitePolicy`] (`Zero` skips: a parameter is not the guard's to zero).
    fn run_rules(
        &mut self,
        grads: &mut dyn Gradients,
        stats: &mut [TensorStats],
        findings: &mut Findings,
    ) -> Result<Vec<RuleOutcome>> {
        if findings.settled(self.config.non_finite) {
            return Ok(Vec::new());
        }
        let outcomes = match self.chain.apply(grads, stats) {
            Ok(outcomes) => outcomes,
            Err(GuardError::NonFiniteParameter {
                rule,
                tensor,
                unit,
                value,
                ..
            }) => {
                let policy = self.config.non_finite;
                if policy == NonFinitePolicy::Error {
                    return Err(GuardError::NonFiniteParameter {
                        step: self.counters.step,
                        rule,
                        tensor,
                        unit,
                        value,
                    });
                }
                let what = format!("parameter '{tensor}' unit {unit} is {value} (rule '{rule}')");
                non_finite_finding(findings, policy, what);
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        if let Some(skip) = outcomes.iter().find(|o| o.action == RuleAction::Skip) {
            findings.reasons.push(format!(
                "rule '{}': norm {:.4e} above {:.4e}",
                skip.rule,
                skip.norm.unwrap_or(f64::NAN),
                skip.threshold.unwrap_or(f64::NAN)
            ));
            findings.trouble = Some(Trouble::Skip);
        }
        Ok(outcomes)
    }
}

/// One report line per tensor: its name and its norms before and after the rules.
pub(super) fn tensor_reports(
    grads: &dyn Gradients,
    before: &[TensorStats],
    after: &[TensorStats],
) -> Vec<TensorReport> {
    before
        .iter()
        .zip(after)
        .enumerate()
        .map(|(i, (b, a))| TensorReport {
            name: grads.name(i).to_string(),
            norm_before: b.l2(),
            norm_after: a.l2(),
            max_abs_before: b.max_abs,
            non_finite: b.non_finite(),
        })
        .collect()
}
