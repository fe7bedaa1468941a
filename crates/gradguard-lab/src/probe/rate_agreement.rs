//! Does the model probe's safe rate hold? For each cell (a run configuration), the probe's
//! largest safe rate against the largest rate at which an unprotected run of the full budget
//! does not diverge — found by the same bracketing search, with whole runs as its trials — and
//! the probe's verdict at the cell's own rate against what that run did.

use std::collections::HashMap;

use gradguard::probe::{Health, PathReading, RateSearch, RateTrial, SafeRate, search_safe_rate};
use gradguard_burn::probe::ProbeSettings;
use gradguard_report::{Outcome, RunSummary};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::agreement::wilson_interval;
use super::task::probe_task;
use crate::config::RunConfig;
use crate::error::LabError;
use crate::train::{TrainOptions, TrainOutcome, train};

/// The predicted and the measured safe rate agree when they are within this factor.
pub const AGREEMENT_FACTOR: f64 = 2.0;

/// The factor between two rates, the larger over the smaller (`None` where one side has a rate
/// and the other has none; 1 where neither has).
fn factor(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some((a / b).max(b / a)),
        (None, None) => Some(1.0),
        _ => None,
    }
}

/// Whether a factor is within [`AGREEMENT_FACTOR`].
fn within(factor: Option<f64>) -> bool {
    factor.is_some_and(|f| f <= AGREEMENT_FACTOR * (1.0 + 1e-9))
}

/// One cell: a configuration, the probe's answer and what whole runs did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateCell {
    /// The configuration (its `lr` is the rate the verdict judges).
    pub config: RunConfig,
    /// The probe's largest safe rate (`None`: none in the range).
    pub predicted: Option<f64>,
    /// The smallest rate whose probe trial diverged (`None`: none in the range).
    pub predicted_diverging: Option<f64>,
    /// The largest rate whose whole unprotected run did not diverge.
    pub measured: Option<f64>,
    /// The smallest rate whose whole run diverged.
    pub measured_diverging: Option<f64>,
    /// The largest rate whose whole run still learned (ended [`Outcome::Learning`]), searched
    /// the same way from the probe's answer (`None`: none in the range). Where an optimizer's
    /// steps are bounded (Adam), runs can survive rates at which they no longer learn: this is
    /// then the edge that matters (docs/probe.md, "The model probe").
    pub measured_learning: Option<f64>,
    /// The probe's verdict at `config.lr`.
    pub verdict: Health,
    /// What the unprotected run at `config.lr` did.
    pub outcome: Outcome,
    /// The probe's trial at `config.lr`: its reference loss's relative change.
    pub trial_change: Option<f64>,
    /// The probe's input-side over output-side gradient norm at initialization.
    pub input_to_output: Option<f64>,
    /// The butterfly's mean log growth of the separation per step at `config.lr`.
    #[serde(default)]
    pub butterfly_exponent: Option<f64>,
    /// The first step's ‖Δθ‖/‖θ‖ at `config.lr`.
    #[serde(default)]
    pub first_update_ratio: Option<f64>,
    /// The input-side over output-side gradient norm after the trial at `config.lr`.
    #[serde(default)]
    pub after_trial_input_to_output: Option<f64>,
    /// The input-side over output-side layer's relative step in the trial's last step.
    #[serde(default)]
    pub last_step_input_to_output: Option<f64>,
    /// A recurrent net's gradient through time at initialization and after the trial
    /// (`None`: the other nets).
    #[serde(default)]
    pub through_time: Option<PathReading>,
    /// Whole runs spent on this cell.
    pub runs: usize,
    /// Seconds the probe took.
    pub probe_seconds: f64,
}

impl RateCell {
    /// The factor between the predicted and the measured safe rate (`None` where one side has
    /// no safe rate and the other has one; 1 where neither has).
    pub fn factor(&self) -> Option<f64> {
        factor(self.predicted, self.measured)
    }

    /// Whether the two safe rates are within [`AGREEMENT_FACTOR`].
    pub fn rates_agree(&self) -> bool {
        within(self.factor())
    }

    /// The factor between the predicted safe rate and the largest rate that still learned.
    pub fn learning_factor(&self) -> Option<f64> {
        factor(self.predicted, self.measured_learning)
    }

    /// Whether some rate learned and the predicted safe rate is within [`AGREEMENT_FACTOR`] of
    /// the largest that did.
    pub fn learning_agrees(&self) -> bool {
        self.measured_learning.is_some() && within(self.learning_factor())
    }

    /// Whether the verdict called explosion right: `explodes` exactly where the run diverged.
    pub fn explosion_agrees(&self) -> bool {
        (self.verdict == Health::Explodes) == (self.outcome == Outcome::Diverged)
    }

    /// Whether the verdict names what the run did: explodes ↔ diverged, vanishes ↔ stable (not
    /// learning), healthy ↔ learning.
    pub fn verdict_agrees(&self) -> bool {
        matches!(
            (self.verdict, self.outcome),
            (Health::Explodes, Outcome::Diverged)
                | (Health::Vanishes, Outcome::Stable)
                | (Health::Healthy, Outcome::Learning)
        )
    }
}

/// Every cell and the shares that agreed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateAgreement {
    /// The cells, in the order given.
    pub cells: Vec<RateCell>,
    /// The share of cells whose safe rates are within [`AGREEMENT_FACTOR`].
    pub rate_share: f64,
    /// Its 95% Wilson score interval.
    pub rate_interval: (f64, f64),
    /// The share whose verdict named the run's outcome.
    pub verdict_share: f64,
    /// Its 95% Wilson score interval.
    pub verdict_interval: (f64, f64),
    /// Of the cells where some rate learned, the share whose safe rate is within
    /// [`AGREEMENT_FACTOR`] of the largest rate that did.
    pub learning_share: f64,
    /// Its 95% Wilson score interval.
    pub learning_interval: (f64, f64),
    /// The share whose verdict called explosion right ([`RateCell::explosion_agrees`]).
    pub explosion_share: f64,
    /// Its 95% Wilson score interval.
    pub explosion_interval: (f64, f64),
}

/// A whole unprotected run at `rate` as a trial: its held-out loss before and after (the
/// trial's divergence rule is the run outcome's).
fn whole_run(config: &RunConfig, rate: f64) -> Result<RunSummary, LabError> {
    let config = RunConfig {
        lr: rate,
        remedies: Vec::new(),
        ..config.clone()
    };
    match train(&config, &TrainOptions::default())? {
        TrainOutcome::Finished(summary) => Ok(*summary),
        TrainOutcome::Interrupted { .. } => unreachable!("no interruption was asked for"),
    }
}

fn as_trial(rate: f64, s: &RunSummary) -> RateTrial {
    RateTrial {
        rate,
        start_loss: s.initial_loss.filter(|l| l.is_finite()),
        end_loss: s.final_loss.filter(|l| l.is_finite()),
        steps: Vec::new(),
    }
}

/// A whole run as a trial that "diverges" unless the run learned: the search's predicate for
/// the largest rate that still learns.
fn as_learning_trial(rate: f64, s: &RunSummary) -> RateTrial {
    let learned = s.outcome() == Outcome::Learning;
    RateTrial {
        end_loss: if learned { s.final_loss } else { None },
        ..as_trial(rate, s)
    }
}

/// Probes and measures one cell: the probe with `settings`, then whole runs bracketing the
/// largest rate that does not diverge and the largest that still learns, each to
/// `measure.resolution` from the probe's answer (a rate's run is trained once and serves both;
/// a run that fails to start ends both searches and its error is returned).
pub fn rate_cell(
    config: &RunConfig,
    settings: ProbeSettings,
    measure: &RateSearch,
) -> Result<RateCell, LabError> {
    let probe = probe_task(config, settings)?;
    let mut runs: HashMap<u64, RunSummary> = HashMap::new();
    let mut failure = None;
    let mut run_at = |rate: f64| -> Option<RunSummary> {
        if let Some(s) = runs.get(&rate.to_bits()) {
            return Some(s.clone());
        }
        match whole_run(config, rate) {
            Ok(s) => {
                runs.insert(rate.to_bits(), s.clone());
                Some(s)
            }
            Err(e) => {
                failure.get_or_insert(e);
                None
            }
        }
    };
    let own = run_at(config.lr);
    let start = probe.probe.safe_rate.rate.unwrap_or(measure.min_rate);
    let measured: SafeRate = search_safe_rate(start, measure, |rate| match run_at(rate) {
        Some(s) => as_trial(rate, &s),
        None => RateTrial::failed(rate),
    })?;
    let learning: SafeRate = search_safe_rate(start, measure, |rate| match run_at(rate) {
        Some(s) => as_learning_trial(rate, &s),
        None => RateTrial::failed(rate),
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    let own = own.expect("no failure");
    Ok(RateCell {
        config: config.clone(),
        predicted: probe.probe.safe_rate.rate,
        predicted_diverging: probe.probe.safe_rate.first_diverging,
        measured: measured.rate,
        measured_diverging: measured.first_diverging,
        measured_learning: learning.rate,
        verdict: probe.probe.verdict.health,
        outcome: own.outcome(),
        trial_change: probe.probe.at_rate.relative_change(),
        input_to_output: probe.probe.profile.input_to_output(),
        butterfly_exponent: probe.probe.butterfly.exponent(),
        first_update_ratio: probe.probe.at_rate.first_update_ratio(),
        after_trial_input_to_output: probe
            .probe
            .after_trial
            .as_ref()
            .and_then(|p| p.input_to_output()),
        last_step_input_to_output: gradguard::probe::input_to_output_update(&probe.probe.last_step),
        through_time: probe.probe.path.clone(),
        runs: runs.len(),
        probe_seconds: probe.seconds,
    })
}

/// [`rate_cell`] for every configuration, `jobs` at a time (0: one per core).
pub fn rate_agreement(
    configs: &[RunConfig],
    settings: ProbeSettings,
    measure: &RateSearch,
    jobs: usize,
) -> Result<RateAgreement, LabError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(|e| LabError::Config(format!("cannot start {jobs} workers: {e}")))?;
    let cells: Vec<RateCell> = pool.install(|| {
        configs
            .par_iter()
            .map(|c| rate_cell(c, settings, measure))
            .collect::<Result<_, _>>()
    })?;
    let n = cells.len();
    let rates = cells.iter().filter(|c| c.rates_agree()).count();
    let verdicts = cells.iter().filter(|c| c.verdict_agrees()).count();
    let explosions = cells.iter().filter(|c| c.explosion_agrees()).count();
    let learned = cells
        .iter()
        .filter(|c| c.measured_learning.is_some())
        .count();
    let learning = cells.iter().filter(|c| c.learning_agrees()).count();
    let share = |k: usize| k as f64 / n.max(1) as f64;
    Ok(RateAgreement {
        rate_share: share(rates),
        rate_interval: wilson_interval(rates, n),
        verdict_share: share(verdicts),
        verdict_interval: wilson_interval(verdicts, n),
        learning_share: learning as f64 / learned.max(1) as f64,
        learning_interval: wilson_interval(learning, learned),
        explosion_share: share(explosions),
        explosion_interval: wilson_interval(explosions, n),
        cells,
    })
}

/// A rate for the table, "—" for none.
fn rate_text(rate: Option<f64>) -> String {
    rate.map_or("—".into(), |r| format!("{r:.2e}"))
}

/// The table `gradguard probe --task … --agreement` prints.
pub fn rate_agreement_text(result: &RateAgreement) -> String {
    let mut out = format!(
        "{:>4} {:>5} {:>5} {:>5} {:>8} {:>9} {:>9} {:>9} {:>6} {:>9} {:>9}\n",
        "seed",
        "depth",
        "width",
        "gain",
        "rate",
        "predicted",
        "survives",
        "learns",
        "factor",
        "verdict",
        "outcome"
    );
    for c in &result.cells {
        let factor = c.factor().map_or("—".into(), |f| format!("{f:.2}"));
        out += &format!(
            "{:>4} {:>5} {:>5} {:>5} {:>8.1e} {:>9} {:>9} {:>9} {:>6} {:>9} {:>9}\n",
            c.config.seed,
            c.config.depth,
            c.config.width,
            c.config.init_gain,
            c.config.lr,
            rate_text(c.predicted),
            rate_text(c.measured),
            rate_text(c.measured_learning),
            factor,
            c.verdict,
            c.outcome
        );
    }
    let n = result.cells.len();
    let line = |what: &str, agrees: fn(&RateCell) -> bool, share: f64, interval: (f64, f64)| {
        format!(
            "{what} in {} of {n} cells: {}\n",
            result.cells.iter().filter(|c| agrees(c)).count(),
            super::agreement::percent_with_interval(share, interval)
        )
    };
    let learned = result
        .cells
        .iter()
        .filter(|c| c.measured_learning.is_some())
        .count();
    out += "\nsurvives: the largest rate whose whole unprotected run did not diverge\n\
            learns: the largest rate whose whole run still learned\n\
            factor: predicted against survives\n\n";
    out += &line(
        &format!("safe rate within {AGREEMENT_FACTOR}× of the largest surviving rate"),
        RateCell::rates_agree,
        result.rate_share,
        result.rate_interval,
    );
    out += &format!(
        "safe rate within {AGREEMENT_FACTOR}× of the largest learning rate in {} of the {learned} cells where some rate learned: {}\n",
        result.cells.iter().filter(|c| c.learning_agrees()).count(),
        super::agreement::percent_with_interval(result.learning_share, result.learning_interval)
    );
    out += &line(
        "verdict called explosion (explodes ↔ diverged) right",
        RateCell::explosion_agrees,
        result.explosion_share,
        result.explosion_interval,
    );
    out += &line(
        "verdict named the outcome (explodes ↔ diverged, vanishes ↔ stable, healthy ↔ learning)",
        RateCell::verdict_agrees,
        result.verdict_share,
        result.verdict_interval,
    );
    out
}
