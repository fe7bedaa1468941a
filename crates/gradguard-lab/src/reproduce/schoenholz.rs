//! Schoenholz, Gilmer, Ganguli & Sohl-Dickstein 2017: away from the edge of chaos, a random
//! tanh network is trainable only to a depth of about 6 ξ_c, where ξ_c — the correlation depth of
//! mean-field theory ([`crate::probe::meanfield::correlation_depth`]) — is how many layers two
//! inputs stay distinguishable; at criticality (σ_w = 1 without bias) ξ_c diverges and every
//! depth trains.
//!
//! Measured on the digits: tanh MLPs, `N(0, σ_w²/fan_in)` weights, zero biases, SGD at 0.01,
//! over depth × σ_w; a net trained when its held-out accuracy reached 50% (chance: 10%; the
//! paper, too, judged trainability by accuracy — a loss a few percent below the trivial
//! predictor's is reached by nets far beyond the bound). The claim holds when no net deeper than
//! 6 ξ_c trained, and at least half the nets within 6 ξ_c did (the budget here is far shorter
//! than the paper's, which makes nets near the bound fail to train in time: the rule asks the
//! bound to bind, not to be reached).

use gradguard_report::RunSummary;

use super::{Budget, Curve, Draft, Figure, Finding, Key, Paper, Runner, Trained};
use crate::config::RunConfig;
use crate::error::LabError;
use crate::models::{Activation, Init};
use crate::probe::meanfield::correlation_depth;
use crate::tasks::Task;

/// The multiple of ξ_c the paper found trainable.
const BOUND: f64 = 6.0;
/// The rate (the paper's SGD rate was 10⁻³ over far more steps).
const LR: f64 = 0.01;
/// The held-out accuracy at which a net counts as trained.
const TRAINED: f64 = 0.5;

fn trained_well(r: &RunSummary) -> bool {
    r.accuracy.is_some_and(|a| a >= TRAINED)
}

pub(super) fn reproduce(budget: Budget, runner: &Runner) -> Result<Finding, LabError> {
    let gains: Vec<f64> = budget.pick(vec![1.0, 4.0], vec![0.6, 0.8, 0.9, 1.0, 1.5, 2.5, 4.0]);
    let depths: Vec<usize> = budget.pick(vec![8, 48], vec![4, 8, 16, 24, 32, 48, 64]);
    let base = RunConfig {
        activation: Activation::Tanh,
        init: Init::Gaussian,
        lr: LR,
        steps: 300,
        ..RunConfig::for_task(Task::Mlp)
    };
    let mut planned = Vec::new();
    for (series, &gain) in gains.iter().enumerate() {
        for &depth in &depths {
            let key = Key {
                series,
                x: depth as f64,
                lr: LR,
            };
            let config = RunConfig {
                init_gain: gain,
                depth,
                ..base.clone()
            };
            planned.push((key, config));
        }
    }
    let trained = Trained::train(runner, planned)?;
    let xi: Vec<f64> = gains
        .iter()
        .map(|&g| correlation_depth(Activation::Tanh, g, 0.0).unwrap_or(f64::INFINITY))
        .collect();
    let trained_at =
        |series: usize, depth: usize| trained.at(series, depth as f64, LR).all(trained_well);

    let (mut beyond, mut beyond_trained, mut within, mut within_trained) = (0, 0, 0, 0);
    let mut deepest_over_xi: Option<f64> = None;
    for (series, &x) in xi.iter().enumerate() {
        for &depth in &depths {
            let ok = trained_at(series, depth);
            if depth as f64 > BOUND * x {
                beyond += 1;
                beyond_trained += usize::from(ok);
            } else {
                within += 1;
                within_trained += usize::from(ok);
            }
            if ok && x.is_finite() {
                let ratio = depth as f64 / x;
                deepest_over_xi = Some(deepest_over_xi.map_or(ratio, |r: f64| r.max(ratio)));
            }
        }
    }
    let holds = beyond_trained == 0 && 2 * within_trained >= within && within > 0 && beyond > 0;

    let deepest = |series: usize| {
        depths
            .iter()
            .rev()
            .find(|&&d| trained_at(series, d))
            .map(|&d| d as f64)
    };
    let max_depth = depths.iter().copied().max().unwrap_or(1) as f64;
    let figure = Figure {
        title: "Digits, tanh MLP, SGD at 0.01: the deepest net that trained, against 6 ξ_c".into(),
        x_label: "σ_w (weights N(0, σ_w²/fan_in), zero biases)".into(),
        y_label: "hidden layers".into(),
        log_y: true,
        curves: vec![
            Curve {
                label: "deepest net that trained (≥ 50% held-out accuracy)".into(),
                points: gains
                    .iter()
                    .enumerate()
                    .map(|(s, &g)| (g, deepest(s)))
                    .collect(),
                reference: false,
                marks: gains
                    .iter()
                    .enumerate()
                    .filter(|&(s, _)| deepest(s).is_none())
                    .map(|(_, &g)| (g, "no depth trained".to_string()))
                    .collect(),
            },
            Curve {
                label: "6 ξ_c, mean-field theory (drawn up to twice the deepest net tried)".into(),
                points: gains
                    .iter()
                    .zip(&xi)
                    .map(|(&g, &x)| (g, Some((BOUND * x).min(2.0 * max_depth))))
                    .collect(),
                reference: true,
                marks: Vec::new(),
            },
        ],
    };
    let per_gain = gains
        .iter()
        .zip(&xi)
        .enumerate()
        .map(|(s, (&g, &x))| {
            // At the critical σ_w the variance creeps to its fixed point like 1/l, so ξ_c comes
            // out finite but far beyond any depth here.
            let bound = if BOUND * x <= 1000.0 {
                format!("{:.0}", BOUND * x)
            } else {
                "> 1000".into()
            };
            let deepest = deepest(s).map_or("none".into(), |d| format!("{d:.0}"));
            format!("σ_w {g}: 6ξ_c {bound}, deepest trained {deepest}")
        })
        .collect::<Vec<_>>()
        .join("; ");
    let measured = format!(
        "{per_gain}. Of {beyond} nets deeper than 6 ξ_c, {beyond_trained} trained to {:.0}% \
         held-out accuracy; of {within} within it, {within_trained}. The deepest net that trained \
         was {} ξ_c deep (finite ξ_c).",
        100.0 * TRAINED,
        deepest_over_xi.map_or("–".into(), |r| format!("{r:.1}")),
    );
    Ok(Draft {
        paper: Paper::Schoenholz2017,
        claim: "Away from the edge of chaos a random tanh network trains only to a depth of \
                about 6 ξ_c, the correlation depth of mean-field theory; at the critical σ_w \
                every depth trains."
            .into(),
        measured,
        holds,
        rule: format!(
            "holds when no net deeper than {BOUND} ξ_c reaches {:.0}% held-out accuracy in {} \
             steps and at least half the nets within it do; depths {depths:?}, σ_w {gains:?}, \
             seed 0",
            100.0 * TRAINED,
            base.steps
        ),
        figures: vec![figure],
        budget,
        runs: trained.runs.len(),
        parts: Vec::new(),
    }
    .into())
}
