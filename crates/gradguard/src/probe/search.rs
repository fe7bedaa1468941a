//! The largest learning rate whose short trial does not diverge.

use serde::{Deserialize, Serialize};

use super::trial::RateTrial;
use crate::error::{GuardError, Result};

/// Where and how finely [`search_safe_rate`] looks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateSearch {
    /// The smallest rate tried; a model that diverges even here gets no safe rate.
    pub min_rate: f64,
    /// The largest rate tried; a model that survives it is safe "at least" there.
    pub max_rate: f64,
    /// The factor by which the bracket grows while it is looked for (10: a decade per trial).
    pub expand: f64,
    /// Bisection stops once the first diverging rate is at most this factor above the safe one.
    pub resolution: f64,
}

impl Default for RateSearch {
    /// 1e-6 … 10, a decade per expanding trial, bisected to a factor of √2.
    fn default() -> Self {
        RateSearch {
            min_rate: 1e-6,
            max_rate: 10.0,
            expand: 10.0,
            resolution: std::f64::consts::SQRT_2,
        }
    }
}

impl RateSearch {
    /// Checks every range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(GuardError::InvalidConfig(what));
        if !(self.min_rate > 0.0 && self.min_rate.is_finite()) {
            return bad(format!(
                "the smallest rate must be positive, got {}",
                self.min_rate
            ));
        }
        if !(self.max_rate > self.min_rate && self.max_rate.is_finite()) {
            return bad(format!(
                "the largest rate must be finite and above the smallest ({}), got {}",
                self.min_rate, self.max_rate
            ));
        }
        if !(self.expand > 1.0 && self.expand.is_finite()) {
            return bad(format!(
                "the expansion factor must be above 1, got {}",
                self.expand
            ));
        }
        if !(self.resolution > 1.0 && self.resolution.is_finite()) {
            return bad(format!(
                "the resolution must be a factor above 1, got {}",
                self.resolution
            ));
        }
        Ok(())
    }
}

/// What the search found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafeRate {
    /// The largest rate tried whose trial did not diverge (`None`: even the smallest diverged).
    pub rate: Option<f64>,
    /// The smallest rate tried whose trial diverged (`None`: even the largest did not).
    pub first_diverging: Option<f64>,
    /// Every trial, in the order run.
    pub trials: Vec<RateTrial>,
}

impl SafeRate {
    /// How far the answer may be off: the first diverging rate over the safe one (`None` where
    /// either side of the bracket is open).
    pub fn uncertainty(&self) -> Option<f64> {
        Some(self.first_diverging? / self.rate?)
    }

    /// The trial run at `rate`, if one was.
    pub fn trial_at(&self, rate: f64) -> Option<&RateTrial> {
        self.trials.iter().find(|t| t.rate == rate)
    }
}

/// Finds the largest rate in `[search.min_rate, search.max_rate]` whose trial does not diverge,
/// assuming a trial that diverges at one rate diverges at every larger one.
///
/// From `start` (clamped into the range) it steps by `search.expand` — up while trials survive,
/// down while they diverge — until a safe and a diverging rate bracket the answer, then bisects
/// the bracket at its geometric mean until the two are within `search.resolution` of each other.
/// From a start within a decade of the answer, 1e-6 … 10 and √2 take about six trials.
pub fn search_safe_rate(
    start: f64,
    search: &RateSearch,
    mut trial: impl FnMut(f64) -> RateTrial,
) -> Result<SafeRate> {
    search.validate()?;
    if !(start > 0.0 && start.is_finite()) {
        return Err(GuardError::InvalidConfig(format!(
            "the starting rate must be positive, got {start}"
        )));
    }
    let mut trials = Vec::new();
    let mut run = |rate: f64, trials: &mut Vec<RateTrial>| {
        let t = trial(rate);
        let diverged = t.diverged();
        trials.push(t);
        diverged
    };
    let mut rate = start.clamp(search.min_rate, search.max_rate);
    let (mut safe, mut diverging) = (None, None);
    if run(rate, &mut trials) {
        diverging = Some(rate);
        while rate > search.min_rate {
            rate = (rate / search.expand).max(search.min_rate);
            if run(rate, &mut trials) {
                diverging = Some(rate);
            } else {
                safe = Some(rate);
                break;
            }
        }
    } else {
        safe = Some(rate);
        while rate < search.max_rate {
            rate = (rate * search.expand).min(search.max_rate);
            if run(rate, &mut trials) {
                diverging = Some(rate);
                break;
            }
            safe = Some(rate);
        }
    }
    if let (Some(mut lo), Some(mut hi)) = (safe, diverging) {
        while hi / lo > search.resolution {
            let mid = (lo * hi).sqrt();
            if run(mid, &mut trials) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        (safe, diverging) = (Some(lo), Some(hi));
    }
    Ok(SafeRate {
        rate: safe,
        first_diverging: diverging,
        trials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::TrialStep;
    use proptest::prelude::*;

    /// A trial that diverges exactly above `limit`.
    fn threshold(limit: f64) -> impl FnMut(f64) -> RateTrial {
        move |rate| RateTrial {
            rate,
            start_loss: Some(1.0),
            end_loss: Some(if rate > limit { 2.0 } else { 0.9 }),
            steps: vec![TrialStep {
                loss: Some(1.0),
                update_ratio: Some(rate),
            }],
        }
    }

    #[test]
    fn brackets_from_either_side_and_bisects_to_the_resolution() {
        let search = RateSearch::default();
        for start in [1e-5, 1e-3, 0.05, 3.0] {
            let found = search_safe_rate(start, &search, threshold(0.02)).unwrap();
            let (safe, bad) = (found.rate.unwrap(), found.first_diverging.unwrap());
            assert!(safe <= 0.02 && bad > 0.02, "start {start}: {safe} … {bad}");
            assert!(found.uncertainty().unwrap() <= search.resolution);
            assert!(found.trials.len() <= 12, "{} trials", found.trials.len());
        }
    }

    #[test]
    fn open_brackets_at_the_ends_of_the_range() {
        let search = RateSearch::default();
        let never = search_safe_rate(0.1, &search, threshold(f64::INFINITY)).unwrap();
        assert_eq!(never.rate, Some(search.max_rate));
        assert_eq!(never.first_diverging, None);
        let always = search_safe_rate(0.1, &search, threshold(0.0)).unwrap();
        assert_eq!(always.rate, None);
        assert_eq!(always.first_diverging, Some(search.min_rate));
        assert_eq!(always.uncertainty(), None);
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let bad = RateSearch {
            resolution: 1.0,
            ..RateSearch::default()
        };
        let err = search_safe_rate(0.1, &bad, threshold(1.0)).unwrap_err();
        assert!(err.to_string().contains("resolution"), "{err}");
        let err = search_safe_rate(0.0, &RateSearch::default(), threshold(1.0)).unwrap_err();
        assert!(err.to_string().contains("starting rate"), "{err}");
    }

    proptest! {
        /// Whatever the start and the true limit, a closed bracket holds the limit and is at
        /// most the resolution wide, and every trial lies inside the range.
        #[test]
        fn the_bracket_holds_the_limit(start in -7.0f64..2.0, limit in -5.9f64..0.9) {
            let (start, limit) = (10f64.powf(start), 10f64.powf(limit));
            let search = RateSearch::default();
            let found = search_safe_rate(start, &search, threshold(limit)).unwrap();
            let (safe, bad) = (found.rate.unwrap(), found.first_diverging.unwrap());
            prop_assert!(safe <= limit && limit < bad);
            prop_assert!(bad / safe <= search.resolution * (1.0 + 1e-12));
            for t in &found.trials {
                prop_assert!(t.rate >= search.min_rate && t.rate <= search.max_rate);
            }
        }
    }
}
