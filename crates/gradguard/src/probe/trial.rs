//! A trial: a few optimizer steps of a copy of the model at one rate.

use serde::{Deserialize, Serialize};

/// A trial diverged when its reference loss ended above this multiple of its start: the rule the
/// lab applies to a whole run's held-out loss (`RunSummary::outcome`: more than 10% above).
pub const DIVERGENCE_RISE: f64 = 1.1;

/// One optimizer step of a trial.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrialStep {
    /// The training loss of the step's batch, before the step (`None`: not finite).
    pub loss: Option<f64>,
    /// ‖Δθ‖/‖θ‖ over every parameter: how far the step moved the weights, relative to where
    /// they were (`None`: not finite).
    pub update_ratio: Option<f64>,
}

/// A short run of a copy of the model at one constant rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateTrial {
    /// The learning rate.
    pub rate: f64,
    /// The loss on the reference batch before the first step (`None`: not finite).
    pub start_loss: Option<f64>,
    /// The loss on the reference batch after the last step (`None`: not finite, or the trial
    /// stopped early at a non-finite training loss).
    pub end_loss: Option<f64>,
    /// Every step taken, in order.
    pub steps: Vec<TrialStep>,
}

impl RateTrial {
    /// A trial that could not run at `rate` (its caller keeps the error): no loss, so it counts
    /// as diverged and ends a search there.
    pub fn failed(rate: f64) -> RateTrial {
        RateTrial {
            rate,
            start_loss: None,
            end_loss: None,
            steps: Vec::new(),
        }
    }

    /// Whether the trial diverged: a loss was not finite, or the reference loss ended above
    /// [`DIVERGENCE_RISE`] × its start.
    pub fn diverged(&self) -> bool {
        let (Some(start), Some(end)) = (self.start_loss, self.end_loss) else {
            return true;
        };
        self.steps.iter().any(|s| s.loss.is_none()) || end > DIVERGENCE_RISE * start
    }

    /// The first step's ‖Δθ‖/‖θ‖: the rate as the weights feel it.
    pub fn first_update_ratio(&self) -> Option<f64> {
        self.steps.first().and_then(|s| s.update_ratio)
    }

    /// The reference loss's relative change, `end / start − 1` (`None` where either is missing).
    pub fn relative_change(&self) -> Option<f64> {
        Some(self.end_loss? / self.start_loss? - 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(start: Option<f64>, end: Option<f64>, losses: &[Option<f64>]) -> RateTrial {
        RateTrial {
            rate: 0.1,
            start_loss: start,
            end_loss: end,
            steps: losses
                .iter()
                .map(|&loss| TrialStep {
                    loss,
                    update_ratio: Some(0.01),
                })
                .collect(),
        }
    }

    #[test]
    fn divergence_is_a_missing_loss_or_a_ten_percent_rise() {
        assert!(!trial(Some(2.0), Some(1.5), &[Some(2.0), Some(1.8)]).diverged());
        // At the boundary: 10% above the start is still not diverged.
        assert!(!trial(Some(2.0), Some(2.2), &[Some(2.0)]).diverged());
        assert!(trial(Some(2.0), Some(2.21), &[Some(2.0)]).diverged());
        assert!(trial(Some(2.0), Some(1.0), &[Some(2.0), None]).diverged());
        assert!(trial(Some(2.0), None, &[Some(2.0)]).diverged());
        assert!(trial(None, Some(1.0), &[]).diverged());
        assert!(RateTrial::failed(0.1).diverged());
    }

    #[test]
    fn relative_change_compares_the_reference_losses() {
        let t = trial(Some(2.0), Some(1.5), &[]);
        assert_eq!(t.relative_change(), Some(-0.25));
        assert_eq!(t.first_update_ratio(), None);
        assert_eq!(trial(Some(2.0), None, &[]).relative_change(), None);
    }
}
