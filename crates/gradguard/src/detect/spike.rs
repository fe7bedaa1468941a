//! Spike detection on a scalar signal (gradient norm, loss) against a rolling window.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::error::{GuardError, Result};

/// Configuration of a [`SpikeDetector`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpikeConfig {
    /// How many recent normal values form the baseline.
    pub window: usize,
    /// A value is a spike when it exceeds mean + k·σ of the window.
    pub k: f64,
    /// No verdict before this many values are in the window.
    pub min_history: usize,
    /// Floor on σ as a fraction of |mean|, so a flat history (σ ≈ 0) does not flag tiny wiggles.
    pub min_relative_std: f64,
}

impl Default for SpikeConfig {
    fn default() -> Self {
        SpikeConfig {
            window: 100,
            k: 6.0,
            min_history: 20,
            min_relative_std: 0.05,
        }
    }
}

impl SpikeConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        if self.window == 0 {
            return Err(GuardError::InvalidConfig(
                "spike window must be at least 1".into(),
            ));
        }
        if self.min_history == 0 || self.min_history > self.window {
            return Err(GuardError::InvalidConfig(format!(
                "spike min_history must be in 1..={}, got {}",
                self.window, self.min_history
            )));
        }
        if !(self.k > 0.0) || !(self.min_relative_std >= 0.0) {
            return Err(GuardError::InvalidConfig(format!(
                "spike k must be > 0 and min_relative_std >= 0, got {} and {}",
                self.k, self.min_relative_std
            )));
        }
        Ok(())
    }
}

/// The verdict on one value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpikeCheck {
    /// The value looked at.
    pub value: f64,
    /// mean + k·σ of the window before this value; `None` during warm-up.
    pub threshold: Option<f64>,
    /// Whether the value is a spike.
    pub is_spike: bool,
}

/// Flags values above mean + k·σ of a rolling window of earlier normal values.
///
/// The mean and σ (population) are recomputed over the window each time, O(window), which keeps
/// them exact (no drift from running sums). Non-finite values and spikes are kept out of the
/// window so one outlier cannot raise the bar for the next; the guard's limit on consecutive bad
/// steps stops a run whose scale has truly moved.
#[derive(Debug, Clone, PartialEq)]
pub struct SpikeDetector {
    config: SpikeConfig,
    window: VecDeque<f64>,
}

impl SpikeDetector {
    /// A detector with a checked configuration.
    pub fn new(config: SpikeConfig) -> Result<Self> {
        config.validate()?;
        Ok(SpikeDetector {
            config,
            window: VecDeque::with_capacity(config.window.min(1 << 16)),
        })
    }

    /// mean + k·max(σ, min_relative_std·|mean|) of the window, once it is warm.
    pub fn threshold(&self) -> Option<f64> {
        let n = self.window.len();
        if n < self.config.min_history {
            return None;
        }
        let mean = self.window.iter().sum::<f64>() / n as f64;
        let var = self.window.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        let std = var.sqrt().max(self.config.min_relative_std * mean.abs());
        Some(mean + self.config.k * std)
    }

    /// Judges `value` and, when it is finite and normal, adds it to the window.
    pub fn observe(&mut self, value: f64) -> SpikeCheck {
        let threshold = self.threshold();
        if !value.is_finite() {
            return SpikeCheck {
                value,
                threshold,
                is_spike: false,
            };
        }
        let is_spike = threshold.is_some_and(|t| value > t);
        if !is_spike {
            if self.window.len() == self.config.window {
                self.window.pop_front();
            }
            self.window.push_back(value);
        }
        SpikeCheck {
            value,
            threshold,
            is_spike,
        }
    }

    /// The window, oldest first, as plain data.
    pub fn state(&self) -> Vec<f64> {
        self.window.iter().copied().collect()
    }

    /// Loads a window saved by [`SpikeDetector::state`].
    pub fn restore(&mut self, window: &[f64]) -> Result<()> {
        if window.len() > self.config.window || window.iter().any(|x| !x.is_finite()) {
            return Err(GuardError::BadState {
                what: "spike detector".into(),
                reason: format!(
                    "a window of {} values does not fit {} finite values",
                    window.len(),
                    self.config.window
                ),
            });
        }
        self.window = window.iter().copied().collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_a_spike_and_keeps_it_out_of_the_window() {
        let mut d = SpikeDetector::new(SpikeConfig {
            window: 10,
            k: 3.0,
            min_history: 5,
            min_relative_std: 0.0,
        })
        .unwrap();
        for i in 0..10 {
            assert!(!d.observe(1.0 + 0.01 * (i % 3) as f64).is_spike);
        }
        let before = d.state();
        assert!(d.observe(100.0).is_spike);
        assert_eq!(d.state(), before);
        assert!(!d.observe(f64::NAN).is_spike);
        assert_eq!(d.state(), before);
        assert!(!d.observe(1.01).is_spike);
    }

    #[test]
    fn no_verdict_during_warm_up() {
        let mut d = SpikeDetector::new(SpikeConfig::default()).unwrap();
        assert!(!d.observe(1.0).is_spike);
        assert!(!d.observe(1e9).is_spike);
    }
}
