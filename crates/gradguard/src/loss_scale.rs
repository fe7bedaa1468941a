//! Dynamic loss scaling for f16/bf16 training, with PyTorch's `torch.amp.GradScaler` semantics.
//!
//! The loss is multiplied by the scale S before the backward pass, so small f16 gradients do not
//! underflow to zero; the gradients are divided by S before the optimizer sees them. After each
//! step, with `found_non_finite` telling whether any scaled gradient overflowed to inf or NaN:
//!
//! - overflow: the step is **skipped**, S ← S · backoff (0.5), the streak of good steps resets;
//! - otherwise the streak grows; when it reaches `growth_interval` (2,000) steps,
//!   S ← S · growth (2) and the streak resets.
//!
//! That is `torch._amp_update_scale_` (PyTorch's `GradScaler.update`), checked step by step against
//! a sequence recorded through `GradScaler` itself (`scripts/reference/make_loss_scale_fixture.py`).
//!
//! Where we differ, on purpose: PyTorch lets the scale grow until it overflows f32 and shrink
//! towards zero without end. Here it stays in `[min_scale, max_scale]` (defaults 2⁻²⁴ and 2²⁴): a
//! growth beyond `max_scale` is not taken, and an overflow that would take the scale below
//! `min_scale` is an error ([`GuardError::ScaleUnderflow`]) — at a scale of 2⁻²⁴ even the
//! smallest f16 value times S is zero, so a step that still overflows is a broken model or loss,
//! not something scaling can fix. An overflow skip is normal scaling, not a bad step: the guard
//! does not count it towards its limit.

use serde::{Deserialize, Serialize};

use crate::error::{GuardError, Result};

/// The settings of a [`LossScaler`]; the defaults are PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossScalerConfig {
    /// The first scale (PyTorch: 2¹⁶ = 65,536).
    pub init_scale: f64,
    /// Multiplies the scale after `growth_interval` good steps in a row; > 1 (PyTorch: 2).
    pub growth_factor: f64,
    /// Multiplies the scale on an overflow; in (0, 1) (PyTorch: 0.5).
    pub backoff_factor: f64,
    /// Good steps in a row before the scale grows; ≥ 1 (PyTorch: 2,000).
    pub growth_interval: u32,
    /// The smallest scale: an overflow below it is [`GuardError::ScaleUnderflow`] (2⁻²⁴).
    pub min_scale: f64,
    /// The largest scale: growth stops there (2²⁴).
    pub max_scale: f64,
}

impl Default for LossScalerConfig {
    fn default() -> Self {
        LossScalerConfig {
            init_scale: 65_536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            min_scale: 2f64.powi(-24),
            max_scale: 2f64.powi(24),
        }
    }
}

impl LossScalerConfig {
    /// Checks every setting; the error names the one that is wrong.
    pub fn validated(self) -> Result<Self> {
        let bad = |what: String| Err(GuardError::InvalidConfig(format!("loss scaler: {what}")));
        let positive = |x: f64| x > 0.0 && x.is_finite();
        if !positive(self.min_scale) || !positive(self.max_scale) || self.min_scale > self.max_scale
        {
            return bad(format!(
                "min_scale {:?} and max_scale {:?} must be positive, finite, min ≤ max",
                self.min_scale, self.max_scale
            ));
        }
        if !positive(self.init_scale)
            || self.init_scale < self.min_scale
            || self.init_scale > self.max_scale
        {
            return bad(format!(
                "init_scale {:?} must be positive and finite, within [{:?}, {:?}]",
                self.init_scale, self.min_scale, self.max_scale
            ));
        }
        if !(self.growth_factor > 1.0 && self.growth_factor.is_finite()) {
            return bad(format!(
                "growth_factor {:?} must be above 1",
                self.growth_factor
            ));
        }
        if !(self.backoff_factor > 0.0 && self.backoff_factor < 1.0) {
            return bad(format!(
                "backoff_factor {:?} must be in (0, 1)",
                self.backoff_factor
            ));
        }
        if self.growth_interval == 0 {
            return bad("growth_interval must be at least 1".into());
        }
        Ok(self)
    }
}

/// A loss scaler's state: plain data, saved with a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScalerState {
    /// The scale the next step's loss is multiplied by.
    pub scale: f64,
    /// Good steps in a row since the last growth or overflow.
    pub good_steps: u32,
}

/// What one step did to the scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScaleUpdate {
    /// The scale this step's loss was multiplied by (its gradients are divided by it).
    pub scale: f64,
    /// Whether the step must be skipped: a scaled gradient overflowed.
    pub skip: bool,
    /// The scale for the next step.
    pub next_scale: f64,
}

/// Dynamic loss scaling (see the module documentation for the rule and its source).
#[derive(Debug, Clone, PartialEq)]
pub struct LossScaler {
    config: LossScalerConfig,
    state: LossScalerState,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler::new(LossScalerConfig::default()).expect("the defaults are valid")
    }
}

impl LossScaler {
    /// A scaler at `config.init_scale`; the configuration is checked.
    pub fn new(config: LossScalerConfig) -> Result<Self> {
        let config = config.validated()?;
        Ok(LossScaler {
            config,
            state: LossScalerState {
                scale: config.init_scale,
                good_steps: 0,
            },
        })
    }

    /// The scale to multiply this step's loss by.
    pub fn scale(&self) -> f64 {
        self.state.scale
    }

    /// The factor that unscales this step's gradients, 1/S.
    pub fn inverse_scale(&self) -> f64 {
        1.0 / self.state.scale
    }

    /// The settings.
    pub fn config(&self) -> &LossScalerConfig {
        &self.config
    }

    /// The state, to save.
    pub fn state(&self) -> LossScalerState {
        self.state
    }

    /// Restores a saved state; a scale outside the bounds is [`GuardError::BadState`].
    pub fn restore(&mut self, state: LossScalerState) -> Result<()> {
        let s = state.scale;
        if !(s >= self.config.min_scale && s <= self.config.max_scale) {
            return Err(GuardError::BadState {
                what: "loss scaler".into(),
                reason: format!(
                    "scale {s} outside [{}, {}]",
                    self.config.min_scale, self.config.max_scale
                ),
            });
        }
        self.state = state;
        Ok(())
    }

    /// Ends a step: `found_non_finite` says whether any scaled gradient was inf or NaN. Returns
    /// whether to skip the step and the next scale; an overflow at the smallest scale is
    /// [`GuardError::ScaleUnderflow`] (the state is left as it was).
    pub fn update(&mut self, found_non_finite: bool) -> Result<ScaleUpdate> {
        let scale = self.state.scale;
        if found_non_finite {
            let next = scale * self.config.backoff_factor;
            if next < self.config.min_scale {
                return Err(GuardError::ScaleUnderflow {
                    scale: next,
                    min_scale: self.config.min_scale,
                });
            }
            self.state = LossScalerState {
                scale: next,
                good_steps: 0,
            };
            return Ok(ScaleUpdate {
                scale,
                skip: true,
                next_scale: next,
            });
        }
        let good = self.state.good_steps + 1;
        self.state = if good >= self.config.growth_interval {
            let grown = scale * self.config.growth_factor;
            LossScalerState {
                scale: if grown <= self.config.max_scale {
                    grown
                } else {
                    scale
                },
                good_steps: 0,
            }
        } else {
            LossScalerState {
                scale,
                good_steps: good,
            }
        };
        Ok(ScaleUpdate {
            scale,
            skip: false,
            next_scale: self.state.scale,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_after_the_interval_and_halves_on_overflow() {
        let mut s = LossScaler::new(LossScalerConfig {
            growth_interval: 3,
            ..Default::default()
        })
        .unwrap();
        let steps = [false, false, false, true, false];
        let seen: Vec<(bool, f64)> = steps
            .iter()
            .map(|&inf| {
                let u = s.update(inf).unwrap();
                (u.skip, u.next_scale)
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (false, 65_536.0),
                (false, 65_536.0),
                (false, 131_072.0),
                (true, 65_536.0),
                (false, 65_536.0)
            ]
        );
        assert_eq!(s.state().good_steps, 1);
    }

    #[test]
    fn bounds_hold_and_an_underflow_is_an_error() {
        let mut s = LossScaler::new(LossScalerConfig {
            init_scale: 4.0,
            min_scale: 1.0,
            max_scale: 8.0,
            growth_interval: 1,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.update(false).unwrap().next_scale, 8.0);
        assert_eq!(
            s.update(false).unwrap().next_scale,
            8.0,
            "capped at max_scale"
        );
        assert_eq!(s.update(true).unwrap().next_scale, 4.0);
        assert_eq!(s.update(true).unwrap().next_scale, 2.0);
        assert_eq!(s.update(true).unwrap().next_scale, 1.0);
        let before = s.state();
        assert!(matches!(
            s.update(true),
            Err(GuardError::ScaleUnderflow { .. })
        ));
        assert_eq!(s.state(), before);
    }

    #[test]
    fn bad_settings_are_named() {
        for (config, needle) in [
            (
                LossScalerConfig {
                    init_scale: f64::NAN,
                    ..Default::default()
                },
                "init_scale",
            ),
            (
                LossScalerConfig {
                    init_scale: -1.0,
                    ..Default::default()
                },
                "init_scale",
            ),
            (
                LossScalerConfig {
                    growth_factor: 1.0,
                    ..Default::default()
                },
                "growth_factor",
            ),
            (
                LossScalerConfig {
                    backoff_factor: 1.5,
                    ..Default::default()
                },
                "backoff_factor",
            ),
            (
                LossScalerConfig {
                    growth_interval: 0,
                    ..Default::default()
                },
                "growth_interval",
            ),
        ] {
            let err = LossScaler::new(config).unwrap_err();
            assert!(
                err.is_bad_input() && err.to_string().contains(needle),
                "{err}"
            );
        }
    }

    #[test]
    fn state_round_trips_and_a_bad_one_is_refused() {
        let mut s = LossScaler::default();
        s.update(true).unwrap();
        let json = serde_json::to_string(&s.state()).unwrap();
        let mut t = LossScaler::default();
        t.restore(serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(t, s);
        assert!(
            t.restore(LossScalerState {
                scale: f64::INFINITY,
                good_steps: 0
            })
            .is_err()
        );
    }
}
