//! Saxe, McClelland & Ganguli 2014: a deep *linear* network from a random orthogonal
//! initialization learns in a number of steps that does not grow with its depth (at the best
//! rate for each depth), while from a scaled Gaussian one (`N(0, 1/fan_in)`) it slows down with
//! depth: the product of Gaussian matrices has singular values spread over orders of magnitude,
//! that of orthogonal ones has them all at 1 (dynamical isometry).
//!
//! Measured on the digits (a linear net is a linear classifier however deep, so only the
//! dynamics differ): steps until the training loss (mean of 10 steps) reaches 0.5 in a run that
//! did not diverge, each (init, depth) at the best rate of a grid wide enough to hold every
//! depth's best. The claim holds when orthogonal's time at
//! the deepest net is at most 1.25 × its time at the shallowest, and Gaussian's at least 2 ×
//! (or never within the budget).

use gradguard_report::RunSummary;

use super::{Budget, Draft, Figure, Finding, Paper, Runner, Trained, depth_curves, init_by_depth};
use crate::config::RunConfig;
use crate::error::LabError;
use crate::models::{Activation, Init};
use crate::tasks::Task;

/// The initializations compared, in figure order.
const INITS: [(Init, &str); 2] = [
    (Init::Orthogonal, "orthogonal init"),
    (Init::Gaussian, "scaled Gaussian init"),
];
/// At most this growth from the shallowest to the deepest counts as "does not grow".
const FLAT: f64 = 1.25;
/// At least this growth counts as "grows".
const GROWS: f64 = 2.0;

/// Steps to the target of a run that did not fail (a run that reached it and then diverged did
/// not learn).
fn steps(r: &RunSummary) -> Option<f64> {
    r.steps_to_target.filter(|_| !r.failed()).map(|s| s as f64)
}

/// `deep / shallow`, +∞ when the deep net never reached the target (and the shallow one did).
fn growth(shallow: Option<f64>, deep: Option<f64>) -> Option<f64> {
    match (shallow, deep) {
        (Some(s), Some(d)) => Some(d / s),
        (Some(_), None) => Some(f64::INFINITY),
        (None, _) => None,
    }
}

fn show_steps(v: Option<f64>) -> String {
    v.map_or("never".into(), |v| format!("{v:.0}"))
}

pub(super) fn reproduce(budget: Budget, runner: &Runner) -> Result<Finding, LabError> {
    let depths: Vec<usize> = budget.pick(vec![2, 64], vec![2, 8, 32, 64]);
    // The best rate falls with depth (0.3 at depth 2, 0.01 at 64 from orthogonal init): a grid
    // that stops short of it would slow the shallow nets and fake a depth dependence.
    let lrs: Vec<f64> = budget.pick(vec![0.01, 0.3], vec![0.003, 0.01, 0.03, 0.1, 0.3]);
    let seeds: Vec<u64> = budget.pick(vec![0], vec![0, 1]);
    let base = RunConfig {
        activation: Activation::Linear,
        init_gain: 1.0,
        steps: 400,
        ..RunConfig::for_task(Task::Mlp)
    };
    let inits = INITS.map(|(init, _)| init);
    let trained = Trained::train(runner, init_by_depth(&base, &inits, &depths, &lrs, &seeds))?;
    let time = |series: usize, depth: usize| trained.best_rate(series, depth as f64, &lrs, steps);
    let (shallow, deep) = (depths[0], depths[depths.len() - 1]);
    let orthogonal = growth(time(0, shallow).1, time(0, deep).1);
    let gaussian = growth(time(1, shallow).1, time(1, deep).1);
    let holds = orthogonal.is_some_and(|g| g <= FLAT) && gaussian.is_some_and(|g| g >= GROWS);

    let curves = depth_curves(
        &INITS.map(|(_, label)| label),
        &depths,
        "never reached the target",
        |s, d| time(s, d).1,
    );
    let describe = |series: usize| {
        depths
            .iter()
            .map(|&d| {
                let (lr, t) = time(series, d);
                format!("{d}: {} (lr {lr})", show_steps(t))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ratio = |g: Option<f64>| match g {
        Some(g) if g.is_finite() => format!("×{g:.2}"),
        Some(_) => format!("never reached at depth {deep}"),
        None => "not reached by the shallowest net".into(),
    };
    let measured = format!(
        "Steps to a training loss of 0.5 by depth (best rate): orthogonal {}; scaled Gaussian \
         {}. From depth {shallow} to {deep}: orthogonal {}, Gaussian {}.",
        describe(0),
        describe(1),
        ratio(orthogonal),
        ratio(gaussian),
    );
    Ok(Draft {
        paper: Paper::Saxe2014,
        claim: "Deep linear networks from a random orthogonal initialization learn in a time \
                that does not grow with depth; from a scaled Gaussian initialization the time \
                grows with depth."
            .into(),
        measured,
        holds,
        rule: format!(
            "holds when, at the best rate of {lrs:?} for each depth (median over seeds \
             {seeds:?}), orthogonal's steps to the target at depth {deep} are ≤ {FLAT} × those \
             at depth {shallow}, and Gaussian's ≥ {GROWS} × (or never within {} steps)",
            base.steps
        ),
        figures: vec![Figure {
            title: "Digits, deep linear MLP: steps to a loss of 0.5 at the best rate (× on top: \
                    never)"
                .into(),
            x_label: "hidden layers".into(),
            y_label: "steps to a loss of 0.5".into(),
            log_y: true,
            curves,
        }],
        budget,
        runs: trained.runs.len(),
        parts: Vec::new(),
    }
    .into())
}
