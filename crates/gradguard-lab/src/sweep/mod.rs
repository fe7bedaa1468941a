//! A grid of runs — depth × learning rate × init × gain × remedy × seed — run in parallel,
//! resumable (a finished run directory is read back, not redone), and ranked by measured effect.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gradguard_report::{RemedyList, RunSummary, write_atomic};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

mod grid;
mod sensitivity;
mod verdict;

pub use grid::Grid;
pub use sensitivity::{RateCurve, config_labels, lr_sensitivity, rate_curves};
pub use verdict::{GuardVerdict, TWIN_TOLERANCE, TwinVerdict, WorstCell, guard_verdict};

use crate::config::{LmSettings, RunConfig};
use crate::error::LabError;
use crate::train::{TrainOptions, TrainOutcome, train};

/// The sweep's summary file in its output directory.
pub const SWEEP_FILE: &str = "sweep.json";
/// The folder of the sweep's run directories.
pub const RUNS_DIR: &str = "runs";

/// The directory name of a run: its axes, readable and unique within a grid.
pub fn run_name(config: &RunConfig) -> String {
    let remedy: String = config
        .remedy_name()
        .chars()
        .map(|c| match c {
            ',' => '+',
            c if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '=' => c,
            _ => '_',
        })
        .collect();
    let arch = if config.task.is_recurrent() {
        format!("{}-T{}", config.cell.name(), config.seq_len)
    } else if config.task == crate::tasks::Task::Lm {
        let norm = if config.lm.post_norm { "post" } else { "pre" };
        let embed = if config.lm.embed_std == LmSettings::default().embed_std {
            String::new()
        } else {
            format!("-e{}", config.lm.embed_std)
        };
        format!(
            "d{}-w{}-h{}-T{}-{norm}{embed}",
            config.depth, config.width, config.lm.heads, config.seq_len
        )
    } else {
        format!("d{}-{}", config.depth, config.activation.name())
    };
    let precision = if config.precision.is_f32() {
        String::new()
    } else {
        format!("-{}", config.precision)
    };
    let optimizer = if config.optimizer.is_default() {
        String::new()
    } else {
        format!("-{}", config.optimizer.kind.name())
    };
    format!(
        "{}-{arch}-lr{}-{}-g{}-{remedy}-s{}{precision}{optimizer}",
        config.task, config.lr, config.init, config.init_gain, config.seed
    )
}

/// One run of a sweep, finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRun {
    /// Its directory, relative to the sweep's.
    pub dir: String,
    /// What it did.
    pub summary: RunSummary,
}

/// A remedy's measured effect over the grid's cells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemedyEffect {
    /// The task.
    pub task: String,
    /// The remedies.
    pub remedy: RemedyList,
    /// Runs with it.
    pub runs: usize,
    /// Of those, diverged (non-finite or not learning).
    pub diverged: usize,
    /// Stopped by the guard.
    pub stopped: usize,
    /// Reached the target loss.
    pub reached_target: usize,
    /// Median steps to the target over the runs that reached it.
    pub median_steps_to_target: Option<u64>,
    /// Median held-out loss at the end over the runs where it was finite.
    pub median_final_loss: Option<f64>,
    /// Mean held-out accuracy (classification).
    pub mean_accuracy: Option<f64>,
    /// Runs that diverged without a remedy in the same cell (same depth, rate, init, gain, seed)
    /// and did not with this one.
    pub rescued: usize,
}

/// What a sweep found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepResult {
    /// Every run, in grid order.
    pub runs: Vec<SweepRun>,
    /// Remedies per task, best first: fewest diverged or stopped, then most reaching the target, then
    /// fewest steps to it, then the lowest final loss.
    pub ranking: Vec<RemedyEffect>,
    /// The default guard against the best clipping rule, when the grid compares them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardVerdict>,
    /// Each method's final loss against the rate, and its LR sensitivity, where the grid has
    /// two or more rates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_curves: Vec<RateCurve>,
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> Option<T> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len().checked_sub(1)? / 2).copied()
}

/// A run's cell: its configuration but the remedies (same task, depth, rate, init, gain, seed).
pub(crate) fn cell(s: &RunSummary) -> String {
    let mut c = s.config.clone();
    if let Some(obj) = c.as_object_mut() {
        obj.remove("remedies");
    }
    c.to_string()
}

/// Ranks the remedies of `runs` by their measured effect.
pub fn rank(runs: &[SweepRun]) -> Vec<RemedyEffect> {
    let baseline: BTreeMap<String, bool> = runs
        .iter()
        .filter(|r| r.summary.unremedied())
        .map(|r| {
            (
                cell(&r.summary),
                r.summary.diverged || r.summary.stopped.is_some(),
            )
        })
        .collect();
    // Grouped by the list's canonical text: one text per list.
    let mut by_remedy: BTreeMap<(&str, String), Vec<&RunSummary>> = BTreeMap::new();
    for r in runs {
        by_remedy
            .entry((&r.summary.task, r.summary.remedy.to_string()))
            .or_default()
            .push(&r.summary);
    }
    let mut effects: Vec<RemedyEffect> = by_remedy
        .into_iter()
        .map(|((task, _), list)| {
            let failed = |s: &&RunSummary| s.diverged || s.stopped.is_some();
            let accuracies: Vec<f64> = list.iter().filter_map(|s| s.accuracy).collect();
            RemedyEffect {
                task: task.to_string(),
                remedy: list[0].remedy.clone(),
                runs: list.len(),
                diverged: list
                    .iter()
                    .filter(|s| s.diverged && s.stopped.is_none())
                    .count(),
                stopped: list.iter().filter(|s| s.stopped.is_some()).count(),
                reached_target: list.iter().filter(|s| s.steps_to_target.is_some()).count(),
                median_steps_to_target: median(
                    list.iter().filter_map(|s| s.steps_to_target).collect(),
                ),
                median_final_loss: median(list.iter().filter_map(|s| s.final_loss).collect()),
                mean_accuracy: (!accuracies.is_empty())
                    .then(|| accuracies.iter().sum::<f64>() / accuracies.len() as f64),
                rescued: list
                    .iter()
                    .filter(|s| !failed(s) && baseline.get(&cell(s)) == Some(&true))
                    .count(),
            }
        })
        .collect();
    effects.sort_by(|a, b| a.task.cmp(&b.task).then_with(|| rank_order(a, b)));
    effects
}

/// Best first: fewest failures, most reaching the target, fewest steps to it, lowest loss.
fn rank_order(a: &RemedyEffect, b: &RemedyEffect) -> std::cmp::Ordering {
    {
        let fail = |e: &RemedyEffect| (e.diverged + e.stopped) as f64 / e.runs.max(1) as f64;
        let reach = |e: &RemedyEffect| e.reached_target as f64 / e.runs.max(1) as f64;
        fail(a)
            .total_cmp(&fail(b))
            .then(reach(b).total_cmp(&reach(a)))
            .then(
                a.median_steps_to_target
                    .unwrap_or(u64::MAX)
                    .cmp(&b.median_steps_to_target.unwrap_or(u64::MAX)),
            )
            .then(
                a.median_final_loss
                    .unwrap_or(f64::INFINITY)
                    .total_cmp(&b.median_final_loss.unwrap_or(f64::INFINITY)),
            )
    }
}

/// Runs every run of `runs` under `out/runs/NAME` on `jobs` threads (0: one per core). Finished
/// runs are read back; interrupted ones resume from their checkpoints. `on_done` is called as
/// each run finishes. Writes `out/sweep.json`.
pub fn run_sweep(
    runs: &[RunConfig],
    out: &Path,
    jobs: usize,
    on_done: &(dyn Fn(&RunConfig, &RunSummary) + Sync),
) -> Result<SweepResult, LabError> {
    let runs_dir = out.join(RUNS_DIR);
    std::fs::create_dir_all(&runs_dir).map_err(|e| LabError::Io {
        path: runs_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(|e| LabError::Config(format!("cannot start {jobs} workers: {e}")))?;
    let finished: Vec<Result<SweepRun, LabError>> = pool.install(|| {
        runs.par_iter()
            .map(|config| {
                let name = run_name(config);
                let dir: PathBuf = runs_dir.join(&name);
                let options = TrainOptions {
                    out: Some(dir),
                    ..TrainOptions::default()
                };
                match train(config, &options)? {
                    TrainOutcome::Finished(summary) => {
                        on_done(config, &summary);
                        Ok(SweepRun {
                            dir: format!("{RUNS_DIR}/{name}"),
                            summary: *summary,
                        })
                    }
                    TrainOutcome::Interrupted { .. } => unreachable!("no interruption requested"),
                }
            })
            .collect()
    });
    let runs = finished.into_iter().collect::<Result<Vec<_>, _>>()?;
    let result = SweepResult {
        ranking: rank(&runs),
        guard: guard_verdict(&runs),
        rate_curves: rate_curves(&runs),
        runs,
    };
    let path = out.join(SWEEP_FILE);
    let text = serde_json::to_vec_pretty(&result).expect("results serialize");
    write_atomic(&path, &text).map_err(|e| LabError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(result)
}
