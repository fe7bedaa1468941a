//! Does the prediction hold? For each cell of a depth × gain grid, the probe's verdict on the
//! lab's MLP at the task's own inputs, and what a short training run of that network did.

use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{ProbeConfig, Verdict, probe_mlp_at};
use crate::config::RunConfig;
use crate::error::LabError;
use crate::models::{Init, Net, Norm};
use crate::plan::Plan;
use crate::plan::build_net;
use crate::tasks::{Task, TaskData};
use crate::train::{TrainOptions, TrainOutcome, train};

/// Inputs the probe of each cell reads from the task.
const PROBE_INPUTS: usize = 64;

/// One cell of the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgreementCell {
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

fn expected(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Exploding => "diverged",
        Verdict::Vanishing => "stable",
        Verdict::Critical => "learning",
    }
}

/// Probes and trains `base` (an MLP task run, no remedies) at every depth × gain, on `jobs`
/// threads (0: one per core).
pub fn agreement(
    base: &RunConfig,
    depths: &[usize],
    gains: &[f64],
    jobs: usize,
) -> Result<AgreementResult, LabError> {
    if base.task != Task::Mlp {
        return Err(LabError::Config(
            "the agreement grid runs the mlp task".into(),
        ));
    }
    let cells: Vec<(usize, f64)> = depths
        .iter()
        .flat_map(|&d| gains.iter().map(move |&g| (d, g)))
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(|e| LabError::Config(format!("cannot start {jobs} workers: {e}")))?;
    let results: Vec<Result<AgreementCell, LabError>> = pool.install(|| {
        cells
            .par_iter()
            .map(|&(depth, gain)| {
                let config = RunConfig {
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
                let result = probe_mlp_at(&mlp, x0, probe_config, config.seed);
                let TrainOutcome::Finished(summary) = train(&config, &TrainOptions::default())?
                else {
                    unreachable!("not interrupted")
                };
                let outcome = summary.outcome().to_string();
                Ok(AgreementCell {
                    depth,
                    gain,
                    lyapunov: result.lyapunov,
                    verdict: result.verdict,
                    gradient_ratio: result.predicted_gradient_ratio,
                    agree: outcome == expected(result.verdict),
                    agree_depth_aware: outcome
                        == expected_from_ratio(result.predicted_gradient_ratio),
                    outcome,
                })
            })
            .collect()
    });
    let cells = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let agreeing = |f: fn(&AgreementCell) -> bool| cells.iter().filter(|c| f(c)).count();
    let n = cells.len();
    let (plain, depth_aware) = (agreeing(|c| c.agree), agreeing(|c| c.agree_depth_aware));
    let share = |k: usize| k as f64 / n.max(1) as f64;
    Ok(AgreementResult {
        rate: share(plain),
        rate_depth_aware: share(depth_aware),
        rate_interval: wilson_interval(plain, n),
        rate_depth_aware_interval: wilson_interval(depth_aware, n),
        cells,
        steps: base.steps,
    })
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
    use super::wilson_interval;

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
