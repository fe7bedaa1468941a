//! Does the prediction hold? For each cell of a depth × gain grid, the probe's verdict on the
//! lab's MLP at the task's own inputs, and what a short training run of that network did.

use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::meanfield::correlation_depth;
use super::{ProbeConfig, Verdict, probe_mlp_at};
use crate::config::RunConfig;
use crate::error::LabError;
use crate::models::{Init, Net, Norm};
use crate::objective::data_loss;
use crate::plan::Plan;
use crate::plan::build_net;
use crate::tasks::{Task, TaskData};
use crate::train::{TrainOptions, TrainOutcome, train};

/// Inputs the probe of each cell reads from the task.
const PROBE_INPUTS: usize = 64;

/// One cell of the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgreementCell {
    /// The seed of its weights, data split and batches.
    pub seed: u64,
    /// Hidden layers.
    pub depth: usize,
    /// Initialization gain.
    pub gain: f64,
    /// λ measured at initialization.
    pub lyapunov: f64,
    /// The probe's verdict.
    pub verdict: Verdict,
    /// The predicted ratio of first- to last-layer gradient norm, exp(λ·depth).
    pub gradient_ratio: f64,
    /// What training did: `diverged`, `stable`, `learning` or `stopped`.
    pub outcome: String,
    /// Whether the verdict agrees: exploding ↔ diverged, vanishing ↔ stable (not learning),
    /// critical ↔ learning.
    pub agree: bool,
    /// Whether the depth-aware prediction agrees: ratio above 1e3 ↔ diverged, below 1e-3 ↔
    /// stable, in between ↔ learning.
    pub agree_depth_aware: bool,
    /// ‖Δθ‖/‖θ‖ of the first SGD step at the run's rate, on its first batch: the learning rate
    /// as the weights feel it (`None`: not finite).
    pub first_update_ratio: Option<f64>,
    /// ξ_c, the mean-field correlation depth at this gain (Schoenholz et al. 2017; `None` where
    /// the variance has no fixed point).
    pub correlation_depth: Option<f64>,
    /// What the informed prediction ([`informed_prediction`]) expects.
    pub expected_informed: String,
    /// Whether it agrees with the outcome.
    pub agree_informed: bool,
}

/// The grid's cells and how often the probe was right.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgreementResult {
    /// Every cell, depth-major.
    pub cells: Vec<AgreementCell>,
    /// The fraction of cells where verdict and outcome agree.
    pub rate: f64,
    /// The fraction where the depth-aware prediction and the outcome agree.
    pub rate_depth_aware: f64,
    /// The 95% Wilson score interval of `rate` over the cells (lower, upper).
    pub rate_interval: (f64, f64),
    /// The 95% Wilson score interval of `rate_depth_aware`.
    pub rate_depth_aware_interval: (f64, f64),
    /// The fraction where the informed prediction and the outcome agree.
    pub rate_informed: f64,
    /// The 95% Wilson score interval of `rate_informed`.
    pub rate_informed_interval: (f64, f64),
    /// The seeds of the grid (every depth × gain at each).
    pub seeds: Vec<u64>,
    /// Steps each training run took.
    pub steps: u64,
}

/// The outcome a gradient ratio predicts for a network of that depth.
fn expected_from_ratio(ratio: f64) -> &'static str {
    if ratio > 1e3 {
        "diverged"
    } else if ratio < 1e-3 {
        "stable"
    } else {
        "learning"
    }
}

/// A first SGD step larger than this share of the weights' norm diverges a network whose forward
/// variance is unbounded. Chosen on seed 0 of the default grid (0.16–0.28 all scored best there).
pub const DIVERGING_FIRST_STEP: f64 = 0.2;
/// Below this predicted first-to-last gradient ratio the first layers do not learn in the budget.
/// Chosen on seed 0 (0.01 and 0.02 scored best; the depth-aware rule's 1e-3 scored worse).
pub const STALLING_RATIO: f64 = 0.01;
/// A chaotic network deeper than this many correlation depths ξ_c does not learn in the budget.
/// Chosen on seed 0 (1.2–1.4 scored best; Schoenholz et al. 2017 found 6 ξ_c with far longer
/// training).
pub const CHAOTIC_DEPTHS: f64 = 1.3;

/// The outcome the probe predicts from what it measures at initialization and what training
/// will do with it — the learning rate as the weights feel it, the task's depth, and whether the
/// forward signal can blow up:
///
/// - **unbounded forward variance** (no variance fixed point: ReLU above its critical gain):
///   `diverged` when the first SGD step moves the weights by more than
///   [`DIVERGING_FIRST_STEP`] of their norm, `learning` otherwise;
/// - **bounded** (tanh, or ReLU below critical): `stable` (does not learn) when the predicted
///   first-to-last gradient ratio `exp(λ·depth)` is below [`STALLING_RATIO`] (vanishing), or
///   when the network is chaotic (λ > 0) and deeper than [`CHAOTIC_DEPTHS`] × ξ_c (saturated
///   tanh units decorrelate the inputs: Schoenholz et al. 2017); `learning` otherwise.
///
/// A bounded network never counts as diverging: its activations cannot overflow, and a large
/// gradient ratio there means chaos, not a blow-up.
pub fn informed_prediction(
    depth: usize,
    lyapunov: f64,
    gradient_ratio: f64,
    first_update_ratio: Option<f64>,
    correlation_depth: Option<f64>,
) -> &'static str {
    match correlation_depth {
        None => {
            if first_update_ratio.is_none_or(|r| r > DIVERGING_FIRST_STEP) {
                "diverged"
            } else {
                "learning"
            }
        }
        Some(xi) => {
            let chaotic_too_deep = lyapunov > 0.0 && depth as f64 > CHAOTIC_DEPTHS * xi;
            if gradient_ratio < STALLING_RATIO || chaotic_too_deep {
                "stable"
            } else {
                "learning"
            }
        }
    }
}

fn expected(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Exploding => "diverged",
        Verdict::Vanishing => "stable",
        Verdict::Critical => "learning",
    }
}

/// Probes and trains `base` (an MLP task run, no remedies) at every seed × depth × gain, on
/// `jobs` threads (0: one per core). `seeds` empty: `base.seed` alone.
pub fn agreement(
    base: &RunConfig,
    depths: &[usize],
    gains: &[f64],
    seeds: &[u64],
    jobs: usize,
) -> Result<AgreementResult, LabError> {
    let seeds: Vec<u64> = if seeds.is_empty() {
        vec![base.seed]
    } else {
        seeds.to_vec()
    };
    if base.task != Task::Mlp {
        return Err(LabError::Config(
            "the agreement grid runs the mlp task".into(),
        ));
    }
    let cells: Vec<(u64, usize, f64)> = seeds
        .iter()
        .flat_map(|&s| {
            depths
                .iter()
                .flat_map(move |&d| gains.iter().map(move |&g| (s, d, g)))
        })
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(|e| LabError::Config(format!("cannot start {jobs} workers: {e}")))?;
    let results: Vec<Result<AgreementCell, LabError>> = pool.install(|| {
        cells
            .par_iter()
            .map(|&(seed, depth, gain)| {
                let config = RunConfig {
                    seed,
                    depth,
                    init_gain: gain,
                    init: Init::Gaussian,
                    remedies: Vec::new(),
                    ..base.clone()
                };
                let data = TaskData::new(config.task, config.seq_len, config.seed)?;
                let plan = Plan::new(&config, &data)?;
                let device = Device::flex().autodiff();
                let Net::Mlp(mlp) = build_net(&plan, &data, config.seed, &device)? else {
                    unreachable!("the mlp task builds an MLP")
                };
                let batch = data.train_batch(0, PROBE_INPUTS, config.seed);
                let x0 = Tensor::from_data(TensorData::new(batch.inputs, batch.shape), &device);
                let probe_config = ProbeConfig {
                    depth,
                    width: config.width,
                    activation: config.activation,
                    init_gain: gain,
                    norm: Norm::None,
                    inputs: PROBE_INPUTS,
                    probes: 1,
                    seed: config.seed,
                    ..ProbeConfig::default()
                };
                let first_update_ratio =
                    first_update_ratio(&Net::Mlp(mlp.clone()), &data, &config, &device);
                let result = probe_mlp_at(&mlp, x0, probe_config, config.seed);
                let TrainOutcome::Finished(summary) = train(&config, &TrainOptions::default())?
                else {
                    unreachable!("not interrupted")
                };
                let outcome = summary.outcome().to_string();
                let correlation_depth = correlation_depth(config.activation, gain, 0.0);
                let expected_informed = informed_prediction(
                    depth,
                    result.lyapunov,
                    result.predicted_gradient_ratio,
                    first_update_ratio,
                    correlation_depth,
                );
                Ok(AgreementCell {
                    seed,
                    depth,
                    gain,
                    lyapunov: result.lyapunov,
                    verdict: result.verdict,
                    gradient_ratio: result.predicted_gradient_ratio,
                    agree: outcome == expected(result.verdict),
                    agree_depth_aware: outcome
                        == expected_from_ratio(result.predicted_gradient_ratio),
                    agree_informed: outcome == expected_informed,
                    expected_informed: expected_informed.into(),
                    outcome,
                    first_update_ratio,
                    correlation_depth,
                })
            })
            .collect()
    });
    let cells = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let agreeing = |f: fn(&AgreementCell) -> bool| cells.iter().filter(|c| f(c)).count();
    let n = cells.len();
    let (plain, depth_aware) = (agreeing(|c| c.agree), agreeing(|c| c.agree_depth_aware));
    let informed = agreeing(|c| c.agree_informed);
    let share = |k: usize| k as f64 / n.max(1) as f64;
    Ok(AgreementResult {
        rate: share(plain),
        rate_depth_aware: share(depth_aware),
        rate_interval: wilson_interval(plain, n),
        rate_depth_aware_interval: wilson_interval(depth_aware, n),
        rate_informed: share(informed),
        rate_informed_interval: wilson_interval(informed, n),
        seeds,
        cells,
        steps: base.steps,
    })
}

/// ‖θ₁ − θ₀‖ / ‖θ₀‖ of one SGD step of `net` at `config.lr` on the run's first batch, on the
/// autodiff `device` the net lives on.
fn first_update_ratio(
    net: &Net,
    data: &TaskData,
    config: &RunConfig,
    device: &Device,
) -> Option<f64> {
    let batch = data.train_batch(0, config.batch, config.seed);
    let before = net.parameters_flat();
    let loss = data_loss(net, &batch, device, config.precision);
    let grads = GradientsParams::from_grads(loss.backward(), net);
    let mut sgd: ModuleOptimizer = SgdConfig::new().init();
    let after = sgd.step(config.lr, net.clone(), grads).parameters_flat();
    let (mut moved, mut size) = (0.0f64, 0.0f64);
    for (a, b) in before.iter().zip(&after) {
        moved += (f64::from(*b) - f64::from(*a)).powi(2);
        size += f64::from(*a).powi(2);
    }
    let ratio = (moved / size).sqrt();
    ratio.is_finite().then_some(ratio)
}

/// A rate with its 95% interval, as the text and HTML reports print it: "86% (95% interval
/// 69–94%)".
pub(crate) fn percent_with_interval(rate: f64, (low, high): (f64, f64)) -> String {
    format!(
        "{:.0}% (95% interval {:.0}–{:.0}%)",
        100.0 * rate,
        100.0 * low,
        100.0 * high
    )
}

/// The 95% Wilson score interval for `k` successes in `n` trials (Wilson 1927): with z = 1.96 and
/// p = k/n, (p + z²/2n ± z·√(p(1−p)/n + z²/4n²)) / (1 + z²/n). Unlike the normal approximation it
/// stays inside [0, 1] and is honest for a rate near 1 over a few dozen cells. `(0, 1)` for n = 0.
pub(crate) fn wilson_interval(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n, z) = (k as f64, n as f64, 1.96f64);
    let p = k / n;
    let denominator = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denominator;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denominator;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::{informed_prediction, wilson_interval};

    #[test]
    fn the_informed_prediction_reads_each_feature() {
        // Unbounded forward variance (no ξ_c): the first step decides.
        assert_eq!(
            informed_prediction(8, 0.3, 12.0, Some(0.5), None),
            "diverged"
        );
        assert_eq!(informed_prediction(8, 0.3, 12.0, None, None), "diverged");
        assert_eq!(
            informed_prediction(8, 0.3, 12.0, Some(0.05), None),
            "learning"
        );
        // Bounded: vanishing stalls; chaos beyond 1.3 ξ_c stalls; a huge ratio never diverges.
        assert_eq!(
            informed_prediction(16, -0.5, 1e-4, Some(1e-3), Some(1.0)),
            "stable"
        );
        assert_eq!(
            informed_prediction(32, 0.14, 96.0, Some(0.3), Some(8.0)),
            "stable"
        );
        assert_eq!(
            informed_prediction(8, 0.14, 3.5, Some(0.02), Some(8.0)),
            "learning"
        );
        // Ordered and shallow: ξ_c small, but the gradient still reaches the first layers.
        assert_eq!(
            informed_prediction(4, -0.5, 0.1, Some(2e-3), Some(1.0)),
            "learning"
        );
    }

    #[test]
    fn the_wilson_interval_matches_published_values() {
        // 81 of 263: 0.2553–0.3662 in Newcombe (1998), Statistics in Medicine 17, 857, table I;
        // then all and none.
        let (lo, hi) = wilson_interval(81, 263);
        assert!(
            (lo - 0.2553).abs() < 5e-4 && (hi - 0.3662).abs() < 5e-4,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson_interval(10, 10);
        assert!((lo - 0.7225).abs() < 5e-4 && hi == 1.0, "{lo} {hi}");
        assert_eq!(wilson_interval(0, 0), (0.0, 1.0));
        let (lo, _) = wilson_interval(0, 20);
        assert_eq!(lo, 0.0);
    }
}
