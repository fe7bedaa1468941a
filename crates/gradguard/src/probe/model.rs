//! The model probe's settings, its result, and the protocol every adapter follows: profile,
//! the trial at the user's rate with its butterfly, the safe-rate search, the verdict.

use serde::{Deserialize, Serialize};

use super::butterfly::Butterfly;
use super::path::PathReading;
use super::profile::ProfileSummary;
use super::search::{RateSearch, SafeRate, search_safe_rate};
use super::trial::{RateTrial, TrialStep};
use super::verdict::{AfterTrial, ModelVerdict, verdict};
use crate::detect::DepthProfile;
use crate::error::GuardError;

/// What a model probe measures, and how long.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProbeSettings {
    /// The learning rate you will train with.
    pub rate: f64,
    /// Batches of the gradient depth profile (batches `0 … n−1`).
    pub profile_batches: usize,
    /// Optimizer steps of each trial (batch `i` at step `i`); the loss of batch 0 before and
    /// after them decides whether the trial diverged.
    pub trial_steps: usize,
    /// Where and how finely the safe rate is searched.
    pub search: RateSearch,
    /// The butterfly copy's relative perturbation.
    pub butterfly_epsilon: f64,
    /// A layer "grows" the gradient when it multiplies its norm by more than `1 + tolerance`.
    pub growth_tolerance: f64,
    /// Seed of the butterfly's perturbation.
    pub seed: u64,
}

impl ProbeSettings {
    /// The defaults at `rate`: a 4-batch profile, 10-step trials over 1e-6 … 10 bisected to √2,
    /// a butterfly at ε = 1e-4.
    pub fn at_rate(rate: f64) -> Self {
        ProbeSettings {
            rate,
            profile_batches: 4,
            trial_steps: 10,
            search: RateSearch::default(),
            butterfly_epsilon: 1e-4,
            growth_tolerance: 0.1,
            seed: 0,
        }
    }

    /// The batches a probe draws: `0 … max(profile_batches, trial_steps) − 1`.
    pub fn batches(&self) -> usize {
        self.profile_batches.max(self.trial_steps)
    }

    /// Checks every range.
    pub fn validate(&self) -> Result<(), GuardError> {
        let bad = |what: String| Err(GuardError::InvalidConfig(what));
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            return bad(format!("the rate must be positive, got {}", self.rate));
        }
        if self.profile_batches == 0 || self.trial_steps == 0 {
            return bad("the profile and the trials need at least one batch".into());
        }
        if !(self.butterfly_epsilon > 0.0 && self.butterfly_epsilon < 1.0) {
            return bad(format!(
                "the butterfly's ε must be in (0, 1), got {}",
                self.butterfly_epsilon
            ));
        }
        if !(self.growth_tolerance >= 0.0 && self.growth_tolerance.is_finite()) {
            return bad(format!(
                "the growth tolerance must be ≥ 0, got {}",
                self.growth_tolerance
            ));
        }
        self.search.validate()
    }
}

/// One parameter tensor after the first step at the probed rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorUpdate {
    /// The parameter's name (its module path).
    pub name: String,
    /// ‖w‖₂ before the step.
    pub weight_norm: f64,
    /// ‖Δw‖₂ of the step.
    pub update_norm: f64,
}

impl TensorUpdate {
    /// ‖Δw‖/‖w‖ (`None` where `w` is zero or either norm is not finite).
    pub fn ratio(&self) -> Option<f64> {
        let r = self.update_norm / self.weight_norm;
        r.is_finite().then_some(r)
    }
}

/// ‖Σ Δw²‖ over ‖Σ w²‖ across tensors: the whole model's relative step, or relative distance
/// between two copies (`None`: not finite, or the weights are all zero).
pub fn relative_update(tensors: &[TensorUpdate]) -> Option<f64> {
    let weight: f64 = tensors.iter().map(|t| t.weight_norm.powi(2)).sum();
    let update: f64 = tensors.iter().map(|t| t.update_norm.powi(2)).sum();
    let r = (update / weight).sqrt();
    r.is_finite().then_some(r)
}

/// The input-side layer's relative step over the output-side layer's, ‖Δw‖/‖w‖ of each layer
/// (its tensors together, grouped by [`crate::detect::layer_of`] as the depth profile groups
/// them): how much the optimizer still moves the first layer, relative to the last (`None` with
/// fewer than two layers, or a ratio that is not finite).
pub fn input_to_output_update(tensors: &[TensorUpdate]) -> Option<f64> {
    let mut layers: Vec<(&str, f64, f64)> = Vec::new();
    for t in tensors {
        let layer = crate::detect::layer_of(&t.name);
        match layers.iter_mut().find(|(l, _, _)| *l == layer) {
            Some(entry) => {
                entry.1 += t.weight_norm.powi(2);
                entry.2 += t.update_norm.powi(2);
            }
            None => layers.push((layer, t.weight_norm.powi(2), t.update_norm.powi(2))),
        }
    }
    let relative = |&(_, w, u): &(&str, f64, f64)| (u / w).sqrt();
    let ratio = relative(layers.first()?) / relative(layers.last()?);
    (layers.len() > 1 && ratio.is_finite()).then_some(ratio)
}

/// One trial as an adapter ran it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialRun {
    /// The trial.
    pub trial: RateTrial,
    /// Each tensor's first step.
    pub first_step: Vec<TensorUpdate>,
    /// With a twin: how the two copies separated.
    pub butterfly: Option<Butterfly>,
    /// The gradient depth profile of the copy after the trial, on the reference batch (`None`:
    /// not measured — adapters measure it on the trial at the user's rate).
    pub end_profile: Option<DepthProfile>,
    /// Each tensor's last step of the trial (empty: not measured — adapters keep it for the
    /// trial at the user's rate).
    pub last_step: Vec<TensorUpdate>,
    /// The gradient path's start-to-end ratio after the trial, on the reference batch
    /// ([`crate::probe::path_ratio`]; `None`: no path, or not measured).
    pub end_path: Option<f64>,
}

impl TrialRun {
    /// A trial at `rate` from what an adapter recorded: its steps (the first step's loss is the
    /// reference start), the reference loss after them, each tensor's first step, and the
    /// butterfly's separations at `epsilon` (empty: no twin ran).
    pub fn from_steps(
        rate: f64,
        steps: Vec<TrialStep>,
        end_loss: Option<f64>,
        first_step: Vec<TensorUpdate>,
        epsilon: f64,
        separation: Vec<Option<f64>>,
    ) -> TrialRun {
        let butterfly = (!separation.is_empty()).then_some(Butterfly {
            rate,
            epsilon,
            separation,
        });
        TrialRun {
            trial: RateTrial {
                rate,
                start_loss: steps.first().and_then(|s| s.loss),
                end_loss,
                steps,
            },
            first_step,
            butterfly,
            end_profile: None,
            last_step: Vec::new(),
            end_path: None,
        }
    }

    /// The same trial with what its copy looked like at the end: the gradient depth profile
    /// after the last step, and each tensor's last step.
    pub fn with_end(mut self, profile: DepthProfile, last_step: Vec<TensorUpdate>) -> TrialRun {
        self.end_profile = Some(profile);
        self.last_step = last_step;
        self
    }

    /// The same trial with the gradient path's ratio after its last step.
    pub fn with_end_path(mut self, ratio: Option<f64>) -> TrialRun {
        self.end_path = ratio;
        self
    }
}

/// Everything a model probe measured, and its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelProbe {
    /// The settings it ran with.
    pub settings: ProbeSettings,
    /// The gradient depth profile at initialization.
    pub profile: ProfileSummary,
    /// Each tensor's first step at the probed rate, in model order.
    pub first_step: Vec<TensorUpdate>,
    /// The trial at the probed rate.
    pub at_rate: RateTrial,
    /// The butterfly at the probed rate.
    pub butterfly: Butterfly,
    /// The gradient depth profile after the trial at the probed rate, on the reference batch
    /// (`None` where the trial stopped at a non-finite loss or the adapter does not measure it).
    #[serde(default)]
    pub after_trial: Option<ProfileSummary>,
    /// Each tensor's last step of the trial at the probed rate, in model order (empty where not
    /// measured).
    #[serde(default)]
    pub last_step: Vec<TensorUpdate>,
    /// The gradient along the path the adapter was given (through time in a recurrent net;
    /// `None`: no path).
    #[serde(default)]
    pub path: Option<PathReading>,
    /// The largest safe rate and every trial that found it.
    pub safe_rate: SafeRate,
    /// The verdict at the probed rate.
    pub verdict: ModelVerdict,
}

/// The probe's protocol, for adapters: `profiles` (one per profile batch, at initialization)
/// are combined; `trial(rate, twin)` runs one trial of copies of the model (with the butterfly's
/// twin when `twin`) — first at `settings.rate`, with its twin, then at every rate the search
/// asks for; the verdict judges the lot. The first error a trial returns ends the probe.
pub fn run_probe<E: From<GuardError>>(
    settings: &ProbeSettings,
    profiles: &[DepthProfile],
    trial: impl FnMut(f64, bool) -> Result<TrialRun, E>,
) -> Result<ModelProbe, E> {
    run_probe_along(settings, profiles, "point", None, trial)
}

/// [`run_probe`] with a gradient path the parameters do not show (through time in a recurrent
/// net, whose points are time steps: `point` names one, for the verdict's sentence):
/// `path_at_init` is its start-to-end ratio over the profile's batches
/// ([`crate::probe::path_ratio`]), and the trial at the user's rate brings its ratio after the
/// trial ([`TrialRun::end_path`]); the verdict reads both.
pub fn run_probe_along<E: From<GuardError>>(
    settings: &ProbeSettings,
    profiles: &[DepthProfile],
    point: &str,
    path_at_init: Option<f64>,
    mut trial: impl FnMut(f64, bool) -> Result<TrialRun, E>,
) -> Result<ModelProbe, E> {
    settings.validate()?;
    let profile = ProfileSummary::combine(profiles, settings.growth_tolerance);
    let walked = trial(settings.rate, true)?;
    let at_rate = walked.trial;
    let butterfly = walked.butterfly.unwrap_or(Butterfly {
        rate: settings.rate,
        epsilon: settings.butterfly_epsilon,
        separation: Vec::new(),
    });
    let mut failure = None;
    let safe_rate = search_safe_rate(settings.rate, &settings.search, |rate| {
        if rate == at_rate.rate {
            return at_rate.clone();
        }
        match trial(rate, false) {
            Ok(run) => run.trial,
            Err(e) => {
                failure.get_or_insert(e);
                // Ends the search as a divergence would; the error is returned below.
                RateTrial::failed(rate)
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    let after_trial = walked
        .end_profile
        .map(|p| ProfileSummary::combine(&[p], settings.growth_tolerance));
    let after = after_trial.as_ref().map(|profile| AfterTrial {
        profile,
        last_step: &walked.last_step,
    });
    let path = (path_at_init.is_some() || walked.end_path.is_some()).then(|| PathReading {
        point: point.to_string(),
        at_init: path_at_init,
        after_trial: walked.end_path,
    });
    let verdict = verdict(
        settings.rate,
        &profile,
        &at_rate,
        after,
        path.as_ref(),
        &safe_rate,
    );
    Ok(ModelProbe {
        settings: *settings,
        profile,
        first_step: walked.first_step,
        at_rate,
        butterfly,
        after_trial,
        last_step: walked.last_step,
        path,
        safe_rate,
        verdict,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::profile::tests::profile;

    /// A model that diverges above `limit`: its trial's loss falls below the limit and
    /// rises above it.
    fn toy(limit: f64) -> impl FnMut(f64, bool) -> Result<TrialRun, GuardError> {
        move |rate, twin| {
            let end = if rate > limit { 3.0 } else { 1.0 };
            Ok(TrialRun {
                trial: RateTrial {
                    rate,
                    start_loss: Some(2.0),
                    end_loss: Some(end),
                    steps: vec![TrialStep {
                        loss: Some(2.0),
                        update_ratio: Some(rate),
                    }],
                },
                first_step: vec![TensorUpdate {
                    name: "w".into(),
                    weight_norm: 1.0,
                    update_norm: rate,
                }],
                butterfly: twin.then(|| Butterfly {
                    rate,
                    epsilon: 1e-4,
                    separation: vec![Some(1e-4), Some(2e-4)],
                }),
                end_profile: None,
                last_step: Vec::new(),
                end_path: None,
            })
        }
    }

    #[test]
    fn the_protocol_brackets_the_limit_and_judges_the_users_rate() {
        let profiles = [profile(&[1.0, 1.0, 1.0])];
        let calm = run_probe(&ProbeSettings::at_rate(0.01), &profiles, toy(0.3)).unwrap();
        assert_eq!(calm.verdict.health, crate::probe::Health::Healthy);
        let (safe, bad) = (
            calm.safe_rate.rate.unwrap(),
            calm.safe_rate.first_diverging.unwrap(),
        );
        assert!(safe <= 0.3 && 0.3 < bad, "{safe} {bad}");
        assert_eq!(calm.butterfly.separation.len(), 2);
        assert_eq!(calm.first_step[0].ratio(), Some(0.01));

        let hot = run_probe(&ProbeSettings::at_rate(1.0), &profiles, toy(0.3)).unwrap();
        assert_eq!(hot.verdict.health, crate::probe::Health::Explodes);
    }

    #[test]
    fn a_failing_trial_ends_the_probe_with_its_error() {
        let profiles = [profile(&[1.0, 1.0])];
        let mut calls = 0;
        let err = run_probe(&ProbeSettings::at_rate(0.01), &profiles, |rate, twin| {
            calls += 1;
            if calls > 1 {
                return Err(GuardError::InvalidConfig("the device went away".into()));
            }
            toy(0.3)(rate, twin)
        })
        .unwrap_err();
        assert!(err.to_string().contains("device went away"), "{err}");
        let err = run_probe(&ProbeSettings::at_rate(0.0), &profiles, toy(0.3)).unwrap_err();
        assert!(err.to_string().contains("rate must be positive"), "{err}");
    }

    #[test]
    fn the_layer_update_ratio_groups_tensors_by_layer() {
        let t = |name: &str, w: f64, u: f64| TensorUpdate {
            name: name.into(),
            weight_norm: w,
            update_norm: u,
        };
        // layers.0 moves by 0.5/5 = 0.1 of itself (weight 3-4-5, update 0.3-0.4-0.5), the head
        // by 1: the first layer moves a tenth as much.
        let steps = [
            t("layers.0.weight", 3.0, 0.3),
            t("layers.0.bias", 4.0, 0.4),
            t("head.weight", 2.0, 2.0),
        ];
        let r = input_to_output_update(&steps).unwrap();
        assert!((r - 0.1).abs() < 1e-12, "{r}");
        assert_eq!(input_to_output_update(&steps[..2]), None, "one layer");
        assert_eq!(input_to_output_update(&[]), None);
        // A head that did not move: no ratio.
        assert_eq!(
            input_to_output_update(&[t("a.w", 1.0, 1.0), t("b.w", 1.0, 0.0)]),
            None
        );
    }

    #[test]
    fn the_relative_update_is_taken_over_every_tensor() {
        let t = |w: f64, u: f64| TensorUpdate {
            name: "t".into(),
            weight_norm: w,
            update_norm: u,
        };
        assert_eq!(relative_update(&[t(3.0, 0.0), t(4.0, 0.5)]), Some(0.1));
        assert_eq!(relative_update(&[t(0.0, 1.0)]), None);
    }
}
