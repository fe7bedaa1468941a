//! He, Zhang, Ren & Sun 2015: a 30-layer ReLU network trains from He initialization
//! (`N(0, 2/fan_in)`, which keeps the activations' variance through ReLUs) and stalls from
//! Xavier initialization (`N(0, 1/fan_in)` for square layers: a gain off by √2 per layer, so the
//! signal shrinks by 2^(L/2) over L layers). The paper's Figure 3: the 30-layer net from Xavier
//! "completely stalls", from He it converges.
//!
//! Measured on the digits with SGD, each (init, depth) at the best rate of a small grid (lowest
//! median final held-out loss over the seeds): the claim holds when at depth 30 every seed
//! learns from He init and none learns from Xavier init.

use super::{
    Budget, Curve, Draft, Figure, Finding, Paper, Runner, Trained, depth_curves, init_by_depth,
    learned, show,
};
use crate::config::RunConfig;
use crate::error::LabError;
use crate::models::{Activation, Init};
use crate::tasks::Task;

/// The initializations compared, in figure order.
const INITS: [(Init, &str); 2] = [(Init::He, "He init"), (Init::Xavier, "Xavier init")];
/// The depth of the paper's claim.
const DEEP: usize = 30;

pub(super) fn reproduce(budget: Budget, runner: &Runner) -> Result<Finding, LabError> {
    let depths: Vec<usize> = budget.pick(vec![DEEP], vec![10, 20, DEEP]);
    let lrs: Vec<f64> = budget.pick(vec![0.01], vec![0.01, 0.03]);
    let seeds: Vec<u64> = budget.pick(vec![0], vec![0, 1, 2]);
    let base = RunConfig {
        activation: Activation::Relu,
        init_gain: 1.0,
        // 300 steps left one of three seeds short of learning from He init (held-out loss 2.28
        // at its best rate; 1.20 after 600): a 30-layer net needs the longer budget.
        steps: budget.pick(200, 600),
        ..RunConfig::for_task(Task::Mlp)
    };
    let inits = INITS.map(|(init, _)| init);
    let trained = Trained::train(runner, init_by_depth(&base, &inits, &depths, &lrs, &seeds))?;
    let loss = |r: &gradguard_report::RunSummary| r.final_loss.filter(|_| !r.failed());
    let best = |series: usize, depth: usize| trained.best_rate(series, depth as f64, &lrs, loss);

    let deep = DEEP as f64;
    let (he_lr, he_loss) = best(0, DEEP);
    let he_learns = trained.at(0, deep, he_lr).all(learned);
    let xavier_learns_anywhere = lrs.iter().any(|&lr| trained.at(1, deep, lr).any(learned));
    let (xavier_lr, xavier_loss) = best(1, DEEP);
    let accuracy = |series: usize, lr: f64| {
        super::median(trained.at(series, deep, lr).map(|r| r.accuracy))
            .map_or("–".to_string(), |a| format!("{:.0}%", 100.0 * a))
    };
    let trivial = trained.trivial();

    let mut curves = depth_curves(
        &INITS.map(|(_, label)| label),
        &depths,
        "every run failed",
        |s, d| best(s, d).1,
    );
    if let Some(t) = trivial {
        curves.push(Curve::level(
            "trivial predictor",
            depths.iter().map(|&d| d as f64),
            t,
        ));
    }
    let measured = format!(
        "At depth {DEEP}, median final held-out loss (accuracy): He init {} ({}) at lr {he_lr}, \
         {}; Xavier init {} ({}) at lr {xavier_lr}, {} (trivial predictor {}).",
        show(he_loss),
        accuracy(0, he_lr),
        if he_learns {
            "every seed learned"
        } else {
            "not every seed learned"
        },
        show(xavier_loss),
        accuracy(1, xavier_lr),
        if xavier_learns_anywhere {
            "a seed learned"
        } else {
            "no seed learned at any rate"
        },
        show(trivial),
    );
    Ok(Draft {
        paper: Paper::He2015,
        claim: "A 30-layer ReLU network trains from He initialization, N(0, 2/fan_in), and \
                stalls from an initialization whose gain is off by √2 per layer (Xavier, \
                N(0, 1/fan_in) for square layers)."
            .into(),
        measured,
        holds: he_learns && !xavier_learns_anywhere,
        rule: format!(
            "holds when, at depth {DEEP}, every seed learns from He init at its best rate of \
             {lrs:?} (held-out loss ≥ 5% below the trivial predictor's) and no seed learns from \
             Xavier init at any of them; seeds {seeds:?}"
        ),
        figures: vec![Figure {
            title: "Digits, ReLU MLP, SGD: median final held-out loss at the best rate, by depth"
                .into(),
            x_label: "hidden layers".into(),
            y_label: "final held-out loss".into(),
            log_y: false,
            curves,
        }],
        budget,
        runs: trained.runs.len(),
        parts: Vec::new(),
    }
    .into())
}
