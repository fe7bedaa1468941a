//! Pascanu, Mikolov & Bengio 2013: clipping the gradient norm keeps SGD on a vanilla RNN stable
//! at rates where the unclipped network diverges, and the tamed network learns.
//!
//! Two measurements on the adding problem, vanilla tanh RNN, SGD:
//! 1. **Stability** at T = 100, recurrent gain 1.5 (the lab's default, which explodes): a ladder
//!    of rates with and without `clip-global` (threshold 1, the paper's choice of a threshold
//!    around the average norm); a rate is stable when no seed's run diverged. The claim holds
//!    when the largest stable rate with clipping is above the one without.
//! 2. **Learning** at T = 10, gain 1: at the rates of the ladder's upper half, whether the
//!    clipped network learns (held-out loss ≥ 5% below the trivial predictor's, every seed)
//!    at a rate where every unclipped run failed. T = 10 is what 2,000 SGD steps teach a vanilla
//!    RNN here; the paper trained far longer (and with its regularizer) for T up to 200.

use gradguard_report::RunSummary;

use super::{Budget, Curve, Draft, Figure, Finding, Key, Runner, Trained, learned, median, show};
use crate::config::RunConfig;
use crate::error::LabError;
use crate::remedy::Remedy;
use crate::tasks::Task;

use super::Paper;

/// The two settings compared.
const SETTINGS: [&str; 2] = ["none", "clip-global"];

/// Per setting and rate: the runs (a [`Trained`] grid whose x is the rate).
struct Ladder {
    lrs: Vec<f64>,
    trained: Trained,
}

impl Ladder {
    /// Trains `base` at every rate of `lrs` and seed of `seeds`, with and without clipping.
    fn train(
        runner: &Runner,
        base: &RunConfig,
        lrs: &[f64],
        seeds: &[u64],
    ) -> Result<Self, LabError> {
        let mut planned = Vec::new();
        for (series, name) in SETTINGS.iter().enumerate() {
            let remedies = Remedy::parse_list(name).map_err(LabError::Config)?;
            for &lr in lrs {
                for &seed in seeds {
                    let key = Key { series, x: lr, lr };
                    let config = RunConfig {
                        lr,
                        seed,
                        remedies: remedies.clone(),
                        ..base.clone()
                    };
                    planned.push((key, config));
                }
            }
        }
        Ok(Ladder {
            lrs: lrs.to_vec(),
            trained: Trained::train(runner, planned)?,
        })
    }

    fn at(&self, setting: usize, lr: f64) -> impl Iterator<Item = &RunSummary> {
        self.trained.at(setting, lr, lr)
    }

    /// The largest rate at which no run of `setting` failed.
    fn largest_stable(&self, setting: usize) -> Option<f64> {
        self.lrs
            .iter()
            .copied()
            .filter(|&lr| self.at(setting, lr).all(|r| !r.failed()))
            .reduce(f64::max)
    }

    /// The median final held-out loss of `setting` at each rate, over the runs that did not
    /// fail (`None`: every run failed).
    fn curve(&self, setting: usize, label: &str) -> Curve {
        let points = self
            .lrs
            .iter()
            .map(|&lr| {
                let kept = self.at(setting, lr).filter(|r| !r.failed());
                (lr.log10(), median(kept.map(|r| r.final_loss)))
            })
            .collect();
        Curve::measured(label, points, "every run diverged")
    }
}

fn figure(title: &str, ladder: &Ladder) -> Figure {
    let mut curves = vec![
        ladder.curve(0, "no clipping"),
        ladder.curve(1, "clip-global at 1"),
    ];
    if let Some(t) = ladder.trained.trivial() {
        curves.push(Curve::level(
            "trivial predictor",
            ladder.lrs.iter().map(|lr| lr.log10()),
            t,
        ));
    }
    Figure {
        title: title.into(),
        x_label: "learning rate (log10)".into(),
        y_label: "final held-out loss".into(),
        log_y: true,
        curves,
    }
}

fn rate(v: Option<f64>) -> String {
    v.map_or("none of the ladder".into(), |v| format!("{v}"))
}

pub(super) fn reproduce(budget: Budget, runner: &Runner) -> Result<Finding, LabError> {
    let seeds: Vec<u64> = budget.pick(vec![0], vec![0, 1, 2]);

    // 1. Stability at T = 100.
    let stability_lrs: Vec<f64> =
        budget.pick(vec![0.03, 0.3], vec![0.01, 0.03, 0.1, 0.3, 1.0, 3.0]);
    let long = RunConfig {
        steps: budget.pick(100, 300),
        ..RunConfig::for_task(Task::Adding)
    };
    let long_ladder = Ladder::train(runner, &long, &stability_lrs, &seeds)?;
    let unclipped = long_ladder.largest_stable(0);
    let clipped = long_ladder.largest_stable(1);
    let stable_holds = match (unclipped, clipped) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(u), Some(c)) => c > u,
    };

    // 2. Learning at T = 10.
    let learning_lrs: Vec<f64> = budget.pick(vec![0.3], vec![0.1, 0.3]);
    let short = RunConfig {
        seq_len: 10,
        init_gain: 1.0,
        steps: budget.pick(1000, 2000),
        ..RunConfig::for_task(Task::Adding)
    };
    let short_ladder = Ladder::train(runner, &short, &learning_lrs, &seeds)?;
    let learns_where_unclipped_fails: Vec<f64> = learning_lrs
        .iter()
        .copied()
        .filter(|&lr| {
            short_ladder.at(0, lr).all(|r| r.failed()) && short_ladder.at(1, lr).all(learned)
        })
        .collect();
    let learn_holds = !learns_where_unclipped_fails.is_empty();
    let best_clipped = short_ladder
        .at(1, learning_lrs[learning_lrs.len() - 1])
        .filter_map(|r| r.final_loss)
        .fold(f64::INFINITY, f64::min);
    let trivial_short = short_ladder.trained.trivial();

    let measured = format!(
        "T = 100, gain 1.5, rates {:?}: largest stable rate {} without clipping, {} with it. \
         T = 10, gain 1: {}; the clipped run's best held-out loss at lr {} is {} (trivial \
         predictor {}).",
        stability_lrs,
        rate(unclipped),
        rate(clipped),
        if learn_holds {
            format!(
                "at lr {:?} every unclipped run failed and every clipped run learned",
                learns_where_unclipped_fails
            )
        } else {
            "no rate where every unclipped run failed and every clipped run learned".into()
        },
        learning_lrs[learning_lrs.len() - 1],
        show(best_clipped.is_finite().then_some(best_clipped)),
        show(trivial_short),
    );
    let figures = vec![
        figure(
            "Adding, T = 100, vanilla RNN at gain 1.5: median final loss of the runs that did \
             not diverge (× on top: all diverged)",
            &long_ladder,
        ),
        figure(
            "Adding, T = 10, gain 1: the tamed network learns (× on top: all diverged)",
            &short_ladder,
        ),
    ];
    Ok(Draft {
        paper: Paper::Pascanu2013,
        claim: "Clipping the gradient norm keeps SGD on a vanilla RNN stable at learning rates \
                where the unclipped network diverges, and with the explosion tamed the network \
                learns a task whose target depends on inputs far apart in time (the adding \
                problem)."
            .into(),
        measured,
        holds: stable_holds && learn_holds,
        rule: format!(
            "holds when the largest rate at which no seed diverged is higher with clip-global \
             than without (T = 100), and at some rate every unclipped run fails while every \
             clipped run learns (T = 10); seeds {seeds:?}"
        ),
        figures,
        budget,
        runs: long_ladder.trained.runs.len() + short_ladder.trained.runs.len(),
        parts: Vec::new(),
    }
    .into())
}
