//! The probe's verdict on a model at the rate its user will train with.

use serde::{Deserialize, Serialize};

use super::model::{TensorUpdate, input_to_output_update};
use super::path::PathReading;
use super::profile::ProfileSummary;
use super::search::SafeRate;
use super::trial::RateTrial;

/// Below this input-side over output-side gradient norm the first layers barely move: the
/// lab's stalling threshold for a predicted first-to-last gradient ratio
/// (`gradguard_lab::probe::STALLING_RATIO`, chosen on seed 0 of its depth × gain grid).
pub const STALLING_RATIO: f64 = 0.01;

/// What training at the user's rate will do, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// The loss blows up: the trial at the rate diverged, or the gradients at initialization
    /// are already not finite.
    Explodes,
    /// The input-side layers (or, through time, the first steps) get too little gradient to
    /// learn.
    Vanishes,
    /// Neither.
    Healthy,
}

impl Health {
    /// The word reports print.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Explodes => "explodes",
            Health::Vanishes => "vanishes",
            Health::Healthy => "healthy",
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What the copy looked like after the trial at the user's rate, as the verdict reads it.
#[derive(Debug, Clone, Copy)]
pub struct AfterTrial<'a> {
    /// The gradient depth profile after the trial's last step, on its reference batch.
    pub profile: &'a ProfileSummary,
    /// Each tensor's last step of the trial (empty: not measured).
    pub last_step: &'a [TensorUpdate],
}

/// The verdict and why, in one line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVerdict {
    /// The verdict.
    pub health: Health,
    /// The measurement it rests on, in one line.
    pub reason: String,
}

/// A loss for a sentence: three significant digits, or "not finite".
fn loss_text(loss: Option<f64>) -> String {
    loss.map_or("a non-finite value".into(), |l| format!("{l:.3}"))
}

/// The safe rate with its bracket, for a sentence.
fn safe_text(safe: &SafeRate) -> String {
    match (safe.rate, safe.first_diverging) {
        (Some(r), Some(d)) => format!("the largest safe rate is {r:.3e} (diverging from {d:.3e})"),
        (Some(r), None) => format!("every rate tried up to {r:.3e} is safe"),
        (None, _) => "no rate tried is safe".into(),
    }
}

/// Decides, in this order: not-finite gradients at initialization or a diverging trial at
/// `rate` (`at_rate`) explode; an input-to-output gradient ratio below [`STALLING_RATIO`] at
/// initialization (`profile`) vanishes, and so does one after the trial at the rate
/// (`after_trial`, on the trial's reference batch) where the trial's last step also moved the
/// input-side layer by less than [`STALLING_RATIO`] of the output-side layer's relative step
/// ([`input_to_output_update`]; not checked where the last step was not measured); anything else
/// is healthy.
///
/// The reading after the trial catches what the rate itself does to the gradient's path: a few
/// steps too large for the network kill ReLUs or saturate tanh units in the first layers, and
/// the input side stops getting a gradient although it got one at initialization — a run that
/// then neither diverges nor learns. Its step condition keeps it to optimizers whose step
/// follows the gradient's size: Adam and AdamW divide each coordinate's step by its own
/// gradient scale: a width-512 transformer's token embeddings, whose gradient falls to 0.5% of
/// the head's within ten AdamW steps, still move as much as the head does
/// (docs/measurements/2026-12-07-probe-after-trial.md).
///
/// Where the adapter measured a gradient path the parameters do not show (`path`: through time
/// in a recurrent net, [`PathReading`]), its start-to-end ratio below [`STALLING_RATIO`] vanishes
/// too, at initialization or after the trial, with no step condition: every time step shares
/// the same weights, so no optimizer's step can give the first steps the gradient they lack
/// (docs/measurements/2026-12-08-probe-through-time.md).
pub fn verdict(
    rate: f64,
    profile: &ProfileSummary,
    at_rate: &RateTrial,
    after_trial: Option<AfterTrial<'_>>,
    path: Option<&PathReading>,
    safe: &SafeRate,
) -> ModelVerdict {
    let explodes = |reason| ModelVerdict {
        health: Health::Explodes,
        reason,
    };
    if let Some(layer) = &profile.non_finite_layer {
        return explodes(format!(
            "the gradient of '{layer}' is not finite at initialization"
        ));
    }
    let steps = at_rate.steps.len();
    if at_rate.diverged() {
        return explodes(format!(
            "at rate {rate:.3e} the loss went from {} to {} in {steps} steps; {}",
            loss_text(at_rate.start_loss),
            loss_text(at_rate.end_loss),
            safe_text(safe)
        ));
    }
    let starved = |p: &ProfileSummary| {
        let ratio = p.input_to_output().filter(|r| *r < STALLING_RATIO)?;
        let layers = &p.profile.layers;
        Some(format!(
            "'{}' gets {ratio:.1e} of the gradient norm of '{}' (below {STALLING_RATIO})",
            layers[0].layer,
            layers[layers.len() - 1].layer
        ))
    };
    let vanishes = |reason| ModelVerdict {
        health: Health::Vanishes,
        reason,
    };
    if let Some(reason) = starved(profile) {
        return vanishes(reason);
    }
    let faded = |ratio: Option<f64>| ratio.filter(|r| *r < STALLING_RATIO);
    if let Some(ratio) = faded(path.and_then(|p| p.at_init)) {
        let point = path.map_or("point", |p| p.point.as_str());
        return vanishes(format!(
            "the gradient reaching the first {point} is {ratio:.1e} of the gradient at the last \
             (below {STALLING_RATIO})"
        ));
    }
    if let Some(after) = after_trial {
        let moved = input_to_output_update(after.last_step);
        let still = after.last_step.is_empty() || moved.is_some_and(|r| r < STALLING_RATIO);
        if let Some(reason) = starved(after.profile).filter(|_| still) {
            let at_init = profile
                .input_to_output()
                .map_or("no reading".into(), |r| format!("{r:.1e}"));
            let step = moved.map_or(String::new(), |r| {
                format!(" and its last step moved it {r:.1e} as much, relative to its weights")
            });
            return vanishes(format!(
                "after {steps} steps at rate {rate:.3e}, {reason}{step}; {at_init} at initialization"
            ));
        }
    }
    if let Some(ratio) = faded(path.and_then(|p| p.after_trial)) {
        let at_init = path
            .and_then(|p| p.at_init)
            .map_or("no reading".into(), |r| format!("{r:.1e}"));
        let point = path.map_or("point", |p| p.point.as_str());
        return vanishes(format!(
            "after {steps} steps at rate {rate:.3e}, the gradient reaching the first {point} is \
             {ratio:.1e} of the gradient at the last (below {STALLING_RATIO}); {at_init} at \
             initialization"
        ));
    }
    ModelVerdict {
        health: Health::Healthy,
        reason: format!(
            "at rate {rate:.3e} the loss went from {} to {} in {steps} steps; {}",
            loss_text(at_rate.start_loss),
            loss_text(at_rate.end_loss),
            safe_text(safe)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::TrialStep;
    use crate::probe::profile::tests::profile;

    fn summary(norms: &[f64]) -> ProfileSummary {
        ProfileSummary::combine(&[profile(norms)], 0.1)
    }

    fn trial(rate: f64, end: Option<f64>) -> RateTrial {
        RateTrial {
            rate,
            start_loss: Some(2.0),
            end_loss: end,
            steps: vec![
                TrialStep {
                    loss: Some(2.0),
                    update_ratio: Some(0.01),
                };
                5
            ],
        }
    }

    fn safe() -> SafeRate {
        SafeRate {
            rate: Some(0.01),
            first_diverging: Some(0.014),
            trials: Vec::new(),
        }
    }

    #[test]
    fn a_diverging_trial_explodes_and_names_the_safe_rate() {
        let v = verdict(
            0.1,
            &summary(&[1.0, 1.0]),
            &trial(0.1, Some(9.0)),
            None,
            None,
            &safe(),
        );
        assert_eq!(v.health, Health::Explodes);
        assert!(
            v.reason.contains("2.000 to 9.000 in 5 steps"),
            "{}",
            v.reason
        );
        assert!(v.reason.contains("1.000e-2"), "{}", v.reason);
    }

    #[test]
    fn a_fading_profile_vanishes_and_a_calm_one_is_healthy() {
        let v = verdict(
            1e-3,
            &summary(&[1e-4, 1.0, 1.0]),
            &trial(1e-3, Some(1.9)),
            None,
            None,
            &safe(),
        );
        assert_eq!(v.health, Health::Vanishes);
        assert!(
            v.reason.starts_with("'layers.0' gets 1.0e-4"),
            "{}",
            v.reason
        );
        let v = verdict(
            1e-3,
            &summary(&[1.0, 1.0]),
            &trial(1e-3, Some(1.9)),
            None,
            None,
            &safe(),
        );
        assert_eq!(v.health, Health::Healthy);
        assert_eq!(format!("{:>9}", v.health), "  healthy");
    }

    #[test]
    fn non_finite_gradients_explode_before_anything_else() {
        let v = verdict(
            1e-3,
            &summary(&[f64::NAN, 1.0]),
            &trial(1e-3, Some(1.9)),
            None,
            None,
            &safe(),
        );
        assert_eq!(v.health, Health::Explodes);
        assert!(v.reason.contains("'layers.0'"), "{}", v.reason);
    }

    #[test]
    fn a_trial_that_starves_the_input_side_vanishes() {
        // Healthy at initialization; after the trial the first layer gets no gradient at all
        // (every ReLU it feeds is dead) or 0.5% of the last one's, and (where the last step was
        // measured) moves by 0.1% of the last one's relative step.
        let calm = summary(&[1.0, 1.0]);
        let step = |name: &str, moved: f64| TensorUpdate {
            name: name.into(),
            weight_norm: 1.0,
            update_norm: moved,
        };
        let still = [step("layers.0.weight", 1e-5), step("layers.1.weight", 1e-2)];
        for (after, shown) in [(0.0, "0.0e0"), (5e-3, "5.0e-3")] {
            let starved = summary(&[after, 1.0]);
            for last_step in [&still[..], &[]] {
                let v = verdict(
                    0.1,
                    &calm,
                    &trial(0.1, Some(1.9)),
                    Some(AfterTrial {
                        profile: &starved,
                        last_step,
                    }),
                    None,
                    &safe(),
                );
                assert_eq!(v.health, Health::Vanishes, "{after}");
                assert!(
                    v.reason.starts_with(&format!(
                        "after 5 steps at rate 1.000e-1, 'layers.0' gets {shown} of the gradient norm"
                    )),
                    "{}",
                    v.reason
                );
                assert_eq!(
                    v.reason.contains("its last step moved it 1.0e-3 as much"),
                    !last_step.is_empty(),
                    "{}",
                    v.reason
                );
                assert!(
                    v.reason.ends_with("1.0e0 at initialization"),
                    "{}",
                    v.reason
                );
            }
        }
        let judge = |gradient: f64, last_step: &[TensorUpdate], end: f64| {
            let after = summary(&[gradient, 1.0]);
            verdict(
                0.1,
                &calm,
                &trial(0.1, Some(end)),
                Some(AfterTrial {
                    profile: &after,
                    last_step,
                }),
                None,
                &safe(),
            )
            .health
        };
        // A first layer at 2% of the last after the trial is still healthy.
        assert_eq!(judge(0.02, &still, 1.9), Health::Healthy);
        // A starved gradient whose layer the optimizer still moves (Adam's normalized step):
        // healthy.
        let moving = [step("layers.0.weight", 5e-3), step("layers.1.weight", 1e-2)];
        assert_eq!(judge(1e-3, &moving, 1.9), Health::Healthy);
        // A diverging trial explodes whatever the profile after it says.
        assert_eq!(judge(0.0, &still, 9.0), Health::Explodes);
    }

    #[test]
    fn a_gradient_that_fades_through_time_vanishes_at_initialization_or_after_the_trial() {
        // The parameters' profile is calm (a recurrent net's weights sum their gradient over
        // every step); the path says the first steps get almost nothing.
        let calm = summary(&[1.0, 1.0]);
        let judge = |at_init: Option<f64>, after_trial: Option<f64>, end: f64| {
            let path = PathReading {
                point: "time step".into(),
                at_init,
                after_trial,
            };
            verdict(
                0.1,
                &calm,
                &trial(0.1, Some(end)),
                None,
                Some(&path),
                &safe(),
            )
        };
        let v = judge(Some(2e-5), Some(0.5), 1.9);
        assert_eq!(v.health, Health::Vanishes);
        assert!(
            v.reason
                .starts_with("the gradient reaching the first time step is 2.0e-5"),
            "{}",
            v.reason
        );
        let v = judge(Some(0.3), Some(1e-4), 1.9);
        assert_eq!(v.health, Health::Vanishes);
        assert!(
            v.reason.starts_with("after 5 steps at rate 1.000e-1")
                && v.reason
                    .contains("first time step is 1.0e-4 of the gradient at the last")
                && v.reason.ends_with("3.0e-1 at initialization"),
            "{}",
            v.reason
        );
        // At the threshold, or with no reading, the path says nothing.
        assert_eq!(judge(Some(0.01), Some(0.02), 1.9).health, Health::Healthy);
        assert_eq!(judge(None, None, 1.9).health, Health::Healthy);
        // A diverging trial explodes whatever the path says.
        assert_eq!(judge(Some(0.0), Some(0.0), 9.0).health, Health::Explodes);
    }
}
