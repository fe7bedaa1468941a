//! Classic results about exploding and vanishing gradients, and the transformer instabilities of
//! today, re-measured here: each paper's claim,
//! what these runs measured, and whether the claim holds — with the figure that shows it.
//!
//! | name | paper | what is re-measured |
//! | --- | --- | --- |
//! | `pascanu2013` | Pascanu, Mikolov & Bengio 2013 | the largest stable SGD rate of a vanilla RNN with and without norm clipping; whether a recurrent net then learns the adding problem |
//! | `he2015` | He, Zhang, Ren & Sun 2015 | a 30-layer ReLU net from He init against Xavier init (gain off by √2) |
//! | `saxe2014` | Saxe, McClelland & Ganguli 2014 | steps to a target loss against depth, deep linear nets, orthogonal against scaled Gaussian init |
//! | `schoenholz2017` | Schoenholz, Gilmer, Ganguli & Sohl-Dickstein 2017 | which tanh nets train, over depth × σ_w, against 6 ξ_c from mean-field theory |
//! | `wortsman2023` | Wortsman et al. 2023 | a transformer's attention logits and output log Z over a rate grid, with and without qk-norm, z-loss and the default guard |
//!
//! Every run is an ordinary lab run ([`crate::train`]) in memory, so each number can be re-made
//! with `gradguard train`; [`Budget::Quick`] is a smaller grid with fewer steps (seconds, for CI),
//! [`Budget::Full`] the one docs/lab.md quotes (each paper ≤ 5 minutes on 2 cores).

mod he;
pub mod page;
mod pascanu;
mod saxe;
mod schoenholz;
mod wortsman;

use std::time::Instant;

use gradguard_report::RunSummary;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::error::LabError;
use crate::models::Init;
use crate::train::{TrainOptions, TrainOutcome, train};

/// A paper whose result `gradguard reproduce` re-measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Paper {
    /// Pascanu, Mikolov & Bengio 2013, "On the difficulty of training recurrent neural networks".
    Pascanu2013,
    /// He, Zhang, Ren & Sun 2015, "Delving deep into rectifiers".
    He2015,
    /// Saxe, McClelland & Ganguli 2014, "Exact solutions to the nonlinear dynamics of learning in
    /// deep linear neural networks".
    Saxe2014,
    /// Schoenholz, Gilmer, Ganguli & Sohl-Dickstein 2017, "Deep information propagation".
    Schoenholz2017,
    /// Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
    /// instabilities".
    Wortsman2023,
}

impl Paper {
    /// Every paper, in the order `gradguard reproduce all` runs them.
    pub const ALL: [Paper; 5] = [
        Paper::Pascanu2013,
        Paper::He2015,
        Paper::Saxe2014,
        Paper::Schoenholz2017,
        Paper::Wortsman2023,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Paper::Pascanu2013 => "pascanu2013",
            Paper::He2015 => "he2015",
            Paper::Saxe2014 => "saxe2014",
            Paper::Schoenholz2017 => "schoenholz2017",
            Paper::Wortsman2023 => "wortsman2023",
        }
    }

    /// What it is about, in a few words (the command line's list of papers).
    pub fn subject(self) -> &'static str {
        match self {
            Paper::Pascanu2013 => "clipping and RNN stability",
            Paper::He2015 => "He init, 30-layer ReLU",
            Paper::Saxe2014 => "deep linear nets, orthogonal init",
            Paper::Schoenholz2017 => "trainable depth and the correlation depth ξ_c",
            Paper::Wortsman2023 => "transformer attention-logit growth and output-logit divergence",
        }
    }

    /// The citation.
    pub fn citation(self) -> &'static str {
        match self {
            Paper::Pascanu2013 => {
                "Pascanu, Mikolov & Bengio (2013), On the difficulty of training recurrent neural \
                 networks, ICML"
            }
            Paper::He2015 => {
                "He, Zhang, Ren & Sun (2015), Delving deep into rectifiers: surpassing human-level \
                 performance on ImageNet classification, ICCV"
            }
            Paper::Saxe2014 => {
                "Saxe, McClelland & Ganguli (2014), Exact solutions to the nonlinear dynamics of \
                 learning in deep linear neural networks, ICLR"
            }
            Paper::Schoenholz2017 => {
                "Schoenholz, Gilmer, Ganguli & Sohl-Dickstein (2017), Deep information \
                 propagation, ICLR"
            }
            Paper::Wortsman2023 => {
                "Wortsman, Liu, Xiao, Everett, Alemi, Adlam, Co-Reyes, Gur, Kumar, Novak, \
                 Pennington, Sohl-Dickstein, Xu, Lee, Gilmer & Kornblith (2023), Small-scale \
                 proxies for large-scale Transformer training instabilities, ICLR 2024"
            }
        }
    }
}

impl std::fmt::Display for Paper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Paper {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Paper::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Paper::ALL.iter().map(|p| p.name()).collect();
                format!("unknown paper '{s}' (expected {} or all)", names.join(", "))
            })
    }
}

/// How much to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Budget {
    /// A few runs with fewer steps: seconds, for CI. The verdict uses the same rule on less data.
    Quick,
    /// The grids docs/lab.md quotes (each paper ≤ 5 minutes on 2 cores, release build).
    Full,
}

impl Budget {
    /// `quick` or `full`.
    pub fn name(self) -> &'static str {
        match self {
            Budget::Quick => "quick",
            Budget::Full => "full",
        }
    }

    /// `quick` when `full` is the other, and the other way round.
    fn pick<T>(self, quick: T, full: T) -> T {
        match self {
            Budget::Quick => quick,
            Budget::Full => full,
        }
    }
}

/// One line of a figure: `(x, y)` points, `None` where the run had no finite value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// The legend text.
    pub label: String,
    /// Points in x order.
    pub points: Vec<(f64, Option<f64>)>,
    /// A reference line (a threshold, a prediction) rather than a measurement.
    pub reference: bool,
    /// Where the measurement has no value and why (`x`, e.g. "diverged"): drawn on the top edge.
    #[serde(default)]
    pub marks: Vec<(f64, String)>,
}

impl Curve {
    /// A reference line: `value` at every `x`.
    pub fn level(label: &str, xs: impl IntoIterator<Item = f64>, value: f64) -> Curve {
        Curve {
            label: label.into(),
            points: xs.into_iter().map(|x| (x, Some(value))).collect(),
            reference: true,
            marks: Vec::new(),
        }
    }

    /// A measured line whose points without a value are marked `missing` ("diverged").
    pub fn measured(label: &str, points: Vec<(f64, Option<f64>)>, missing: &str) -> Curve {
        let marks = points
            .iter()
            .filter(|(_, y)| y.is_none())
            .map(|(x, _)| (*x, missing.to_string()))
            .collect();
        Curve {
            label: label.into(),
            points,
            reference: false,
            marks,
        }
    }
}

/// A figure of a finding: the picture the paper drew, from these runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// The title.
    pub title: String,
    /// The x axis.
    pub x_label: String,
    /// The y axis.
    pub y_label: String,
    /// Whether y is drawn on a log scale.
    pub log_y: bool,
    /// The lines.
    pub curves: Vec<Curve>,
}

/// What a paper claims, what was measured here, and whether the claim holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The paper's command-line name (`pascanu2013`).
    pub name: String,
    /// The citation.
    pub paper: String,
    /// The claim, as re-measured here.
    pub claim: String,
    /// What these runs measured, in one or two sentences with the numbers.
    pub measured: String,
    /// Whether the measurement supports the claim (by the rule in `rule`).
    pub holds: bool,
    /// The rule that turns the measurement into `holds`.
    pub rule: String,
    /// The figures.
    pub figures: Vec<Figure>,
    /// The budget it ran at.
    pub budget: Budget,
    /// Training runs made.
    pub runs: usize,
    /// Wall time of the runs, seconds.
    pub wall_time_s: f64,
    /// The verdicts of a claim made of several parts (empty for a claim of one part): `holds`
    /// is true when every part holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
}

/// One part of a claim and whether it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// What the part is about ("attention-logit growth").
    pub name: String,
    /// Whether the measurement supports it.
    pub holds: bool,
}

/// Re-measures `paper`'s claim at `budget` on `jobs` threads (0: one per core).
pub fn reproduce(paper: Paper, budget: Budget, jobs: usize) -> Result<Finding, LabError> {
    let start = Instant::now();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(|e| LabError::Config(format!("cannot start {jobs} workers: {e}")))?;
    let runner = Runner { pool: &pool };
    let mut finding = match paper {
        Paper::Pascanu2013 => pascanu::reproduce(budget, &runner)?,
        Paper::He2015 => he::reproduce(budget, &runner)?,
        Paper::Saxe2014 => saxe::reproduce(budget, &runner)?,
        Paper::Schoenholz2017 => schoenholz::reproduce(budget, &runner)?,
        Paper::Wortsman2023 => wortsman::reproduce(budget, &runner)?,
    };
    finding.wall_time_s = start.elapsed().as_secs_f64();
    Ok(finding)
}

/// Trains batches of runs in memory on a thread pool, counting them.
struct Runner<'a> {
    pool: &'a rayon::ThreadPool,
}

impl Runner<'_> {
    /// Trains every configuration; the summaries come back in the order given.
    fn train_all(&self, configs: &[RunConfig]) -> Result<Vec<RunSummary>, LabError> {
        let summaries: Vec<Result<RunSummary, LabError>> = self.pool.install(|| {
            configs
                .par_iter()
                .map(|config| match train(config, &TrainOptions::default())? {
                    TrainOutcome::Finished(summary) => Ok(*summary),
                    TrainOutcome::Interrupted { .. } => unreachable!("no interruption requested"),
                })
                .collect()
        });
        summaries.into_iter().collect()
    }
}

/// Where a run sits in a paper's grid: which line of the figure (`series`), where on its x axis
/// (a depth), at which rate.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Key {
    series: usize,
    x: f64,
    lr: f64,
}

/// A paper's grid, trained: every run with its key.
struct Trained {
    keys: Vec<Key>,
    runs: Vec<RunSummary>,
}

impl Trained {
    /// Trains every `(key, config)`.
    fn train(runner: &Runner, planned: Vec<(Key, RunConfig)>) -> Result<Self, LabError> {
        let (keys, configs): (Vec<Key>, Vec<RunConfig>) = planned.into_iter().unzip();
        Ok(Trained {
            keys,
            runs: runner.train_all(&configs)?,
        })
    }

    /// The runs (one per seed) of a series at `x` and `lr`.
    fn at(&self, series: usize, x: f64, lr: f64) -> impl Iterator<Item = &RunSummary> {
        self.keys
            .iter()
            .zip(&self.runs)
            .filter(move |(k, _)| k.series == series && k.x == x && k.lr == lr)
            .map(|(_, r)| r)
    }

    /// The trivial predictor's held-out loss (the same in every run of a task and seed 0's split).
    fn trivial(&self) -> Option<f64> {
        self.runs.first().and_then(|r| r.trivial_loss)
    }

    /// Of `lrs`, the rate whose runs at (`series`, `x`) have the lowest median `score`
    /// (`None` scores count as +∞), with that median (`None`: no run scored at any rate).
    fn best_rate(
        &self,
        series: usize,
        x: f64,
        lrs: &[f64],
        score: impl Fn(&RunSummary) -> Option<f64>,
    ) -> (f64, Option<f64>) {
        lrs.iter()
            .map(|&lr| (lr, median(self.at(series, x, lr).map(&score))))
            .min_by(|a, b| {
                let v = |m: Option<f64>| m.unwrap_or(f64::INFINITY);
                v(a.1).total_cmp(&v(b.1))
            })
            .unwrap_or((f64::NAN, None))
    }
}

/// Every (init, depth, rate, seed) of `base`: the grid of He and Saxe, one series per init.
fn init_by_depth(
    base: &RunConfig,
    inits: &[Init],
    depths: &[usize],
    lrs: &[f64],
    seeds: &[u64],
) -> Vec<(Key, RunConfig)> {
    let mut planned = Vec::new();
    for (series, &init) in inits.iter().enumerate() {
        for &depth in depths {
            for &lr in lrs {
                for &seed in seeds {
                    let key = Key {
                        series,
                        x: depth as f64,
                        lr,
                    };
                    let config = RunConfig {
                        init,
                        depth,
                        lr,
                        seed,
                        ..base.clone()
                    };
                    planned.push((key, config));
                }
            }
        }
    }
    planned
}

/// One measured curve per label over `depths`, `value(series, depth)` each; a depth without a
/// value is marked `missing`.
fn depth_curves(
    labels: &[&str],
    depths: &[usize],
    missing: &str,
    value: impl Fn(usize, usize) -> Option<f64>,
) -> Vec<Curve> {
    labels
        .iter()
        .enumerate()
        .map(|(series, label)| {
            let points = depths
                .iter()
                .map(|&d| (d as f64, value(series, d)))
                .collect();
            Curve::measured(label, points, missing)
        })
        .collect()
}

/// A finding before its wall time is known.
struct Draft {
    paper: Paper,
    claim: String,
    measured: String,
    holds: bool,
    rule: String,
    figures: Vec<Figure>,
    budget: Budget,
    runs: usize,
    parts: Vec<Part>,
}

impl From<Draft> for Finding {
    fn from(d: Draft) -> Self {
        Finding {
            name: d.paper.name().to_string(),
            paper: d.paper.citation().to_string(),
            claim: d.claim,
            measured: d.measured,
            holds: d.holds,
            rule: d.rule,
            figures: d.figures,
            budget: d.budget,
            runs: d.runs,
            wall_time_s: 0.0,
            parts: d.parts,
        }
    }
}

/// Whether a run learned: its held-out loss ended at least 5% below both its start and the
/// trivial predictor's (the lab's `learning` outcome).
fn learned(s: &RunSummary) -> bool {
    s.outcome() == gradguard_report::Outcome::Learning
}

/// The median of `values` (the upper one of an even count); `None` when empty. `None` entries
/// (a run with no value) count as +∞.
fn median(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = values
        .into_iter()
        .map(|x| x.unwrap_or(f64::INFINITY))
        .collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().filter(|m| m.is_finite())
}

/// A number for a sentence: 3 significant digits, `non-finite` for `None`.
fn show(v: Option<f64>) -> String {
    match v {
        None => "non-finite".into(),
        Some(v) if v != 0.0 && !(1e-3..1e4).contains(&v.abs()) => format!("{v:.2e}"),
        Some(v) => format!("{}", (v * 1000.0).round() / 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_paper_reads_back_from_its_name() {
        for p in Paper::ALL {
            assert_eq!(p.name().parse::<Paper>(), Ok(p));
        }
        let err = "pascanu".parse::<Paper>().unwrap_err();
        assert!(err.contains("pascanu2013") && err.contains("all"), "{err}");
    }

    #[test]
    fn a_missing_value_counts_as_infinitely_bad() {
        assert_eq!(median([Some(3.0), Some(1.0), Some(2.0)]), Some(2.0));
        assert_eq!(median([Some(3.0), None, Some(1.0)]), Some(3.0));
        assert_eq!(median([None, None, Some(1.0)]), None);
        assert_eq!(median([]), None);
    }

    #[test]
    fn numbers_in_sentences_keep_three_decimals() {
        assert_eq!(show(Some(0.16471)), "0.165");
        assert_eq!(show(Some(2.0)), "2");
        assert_eq!(show(Some(1.5e7)), "1.50e7");
        assert_eq!(show(None), "non-finite");
    }
}
