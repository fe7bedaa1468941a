//! A run directory's summary (`summary.json`) and how a finished run is read back.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::MetricsError;
use crate::jsonl::read_metrics;
use crate::record::MetricsRecord;
use crate::remedy::{Remedy, RemedyList};

/// The per-step log of a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The summary of a run directory.
pub const SUMMARY_FILE: &str = "summary.json";

/// What a finished (or stopped) run did, measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The task's name.
    pub task: String,
    /// The remedies, written as their comma-separated text (`guard,clip-global=1`, `none`).
    pub remedy: RemedyList,
    /// The seed.
    pub seed: u64,
    /// Batches trained on (skipped ones included).
    pub steps: u64,
    /// Loss on the held-out set at the end (`null` when not finite).
    pub final_loss: Option<f64>,
    /// Mean training loss over the last 10 steps (`null` when not finite).
    pub final_train_loss: Option<f64>,
    /// Loss on the held-out set before the first step (`null` when not finite).
    pub initial_loss: Option<f64>,
    /// Held-out loss of the trivial predictor — uniform over classes (ln C), or the targets'
    /// mean (their variance) — the bar a run must clear to count as learning.
    #[serde(default)]
    pub trivial_loss: Option<f64>,
    /// Held-out accuracy at the end, for classification tasks.
    pub accuracy: Option<f64>,
    /// The held-out loss ended non-finite, or not below `initial_loss`.
    pub diverged: bool,
    /// For a diverged run, the first step whose training loss was non-finite or above 10× the
    /// first step's.
    pub diverged_at: Option<u64>,
    /// Why the guard stopped the run, if it did.
    pub stopped: Option<String>,
    /// Steps the guard skipped.
    pub skipped_steps: u64,
    /// Rollbacks to a snapshot.
    pub rollbacks: u64,
    /// Applied steps whose update the guard's update bound scaled down.
    #[serde(default)]
    pub bounded_steps: u64,
    /// The optimizer family the guard's update bound recognized from the first update it judged
    /// (`proportional`: gradient descent; `normalized`: Adam, AdamW and their kin), which
    /// decides the limits it applied; `None` without an update bound, before its first step, or
    /// when the guard's setting names the family.
    #[serde(default)]
    pub update_family: Option<String>,
    /// Steps with NaN/inf in the loss or gradients.
    pub non_finite_steps: u64,
    /// The loss counted as reached for `steps_to_target`.
    pub target_loss: f64,
    /// The first step after which the 10-step mean training loss was at or below the target.
    pub steps_to_target: Option<u64>,
    /// The learning rate trained at (after `small-lr` and `lr-find`).
    pub lr: f64,
    /// The largest stable rate a range test found (`lr-find`).
    pub largest_stable_lr: Option<f64>,
    /// The optimizer and why it trained at `lr`, for a reader: e.g. "Adam 0.001 (Adam's own
    /// rate)", "SGD 0.1 (the task's rate)".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_choice: Option<String>,
    /// Recurrent tasks: ‖∂L/∂h_t‖ for every time step on the held-out batch, at the first step
    /// and after the last (gradients through time).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub time_gradients: Vec<TimeGradients>,
    /// A language model's logits over the run: attention-logit growth and `log Z` drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits: Option<LogitSummary>,
    /// Seconds of training, summed over interrupted sessions.
    pub wall_time_s: f64,
    /// The run's full configuration.
    pub config: serde_json::Value,
}

/// What a transformer language model's logits did over a run (Wortsman et al. 2023's two
/// instabilities): how large the attention logits grew and how far the output's `log Z` drifted.
/// Each value is over the steps where it was finite; `None` when it never was.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LogitSummary {
    /// The largest attention logit over every step and layer.
    pub attention_logit_peak: Option<f64>,
    /// The per-step largest attention logit, averaged over the last 10 steps.
    pub attention_logit_final: Option<f64>,
    /// The batch's mean `log Z`, averaged over the last 10 steps.
    pub log_z_final: Option<f64>,
    /// The largest `|mean log Z|` of any step.
    pub log_z_peak: Option<f64>,
    /// The first step's mean `log Z` (near `ln V` for a vocabulary of `V` and small logits).
    #[serde(default)]
    pub log_z_first: Option<f64>,
}

/// One step's logit telemetry, as a run keeps it for its [`LogitSummary`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LogitPoint {
    /// The step's largest attention logit over the layers (`None`: not finite).
    pub attention: Option<f64>,
    /// The step's mean `log Z` (`None`: not finite).
    pub log_z: Option<f64>,
}

impl LogitSummary {
    /// The summary of a run's steps, `window` of them averaged for the final values; `None`
    /// when there are no steps.
    pub fn of(points: &[LogitPoint], window: usize) -> Option<Self> {
        if points.is_empty() {
            return None;
        }
        let peak = |v: &mut dyn Iterator<Item = f64>| {
            v.fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
        };
        let tail = &points[points.len().saturating_sub(window.max(1))..];
        let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        Some(LogitSummary {
            attention_logit_peak: peak(&mut points.iter().filter_map(|p| p.attention)),
            attention_logit_final: mean(tail.iter().filter_map(|p| p.attention).collect()),
            log_z_final: mean(tail.iter().filter_map(|p| p.log_z).collect()),
            log_z_peak: peak(&mut points.iter().filter_map(|p| p.log_z.map(f64::abs))),
            log_z_first: points[0].log_z,
        })
    }
}

/// The gradient of the loss with respect to a recurrent net's hidden state at every time step,
/// measured at one training step: the product of per-step Jacobians that explodes or vanishes
/// over time, as the per-layer profile does over depth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeGradients {
    /// The training step it was measured at (before that step's update).
    pub step: u64,
    /// ‖∂L/∂h_t‖ for t = 1 … T (`None` where not finite).
    pub norms: Vec<Option<f64>>,
}

impl RunSummary {
    /// The run's outcome: `stopped` (by the guard); `diverged` (the held-out loss ended
    /// non-finite or more than 10% above its start); `learning` (it ended at least 5% below both
    /// its start and the trivial predictor's loss); otherwise `stable` — finite, but not learning
    /// more than the trivial predictor (vanishing gradients, or too few steps).
    pub fn outcome(&self) -> Outcome {
        if self.stopped.is_some() {
            return Outcome::Stopped;
        }
        let Some(end) = self.final_loss else {
            return Outcome::Diverged;
        };
        if self.initial_loss.is_some_and(|start| end > 1.1 * start) {
            return Outcome::Diverged;
        }
        let bar = [self.initial_loss, self.trivial_loss]
            .into_iter()
            .flatten()
            .fold(f64::INFINITY, f64::min);
        if end < 0.95 * bar {
            Outcome::Learning
        } else {
            Outcome::Stable
        }
    }

    /// Whether the run failed: its [`RunSummary::outcome`] is `diverged` or `stopped`.
    pub fn failed(&self) -> bool {
        matches!(self.outcome(), Outcome::Diverged | Outcome::Stopped)
    }

    /// The reduced precision the run computed in (`"f16"`, `"bf16"`), `None` for f32: the lab
    /// writes the configuration's `precision` only when it is not f32.
    pub fn precision(&self) -> Option<&str> {
        self.config
            .get("precision")
            .and_then(|p| p.as_str())
            .filter(|p| *p != "f32")
    }

    /// Whether the run had no remedy (`none`): the reference every remedy is measured against.
    pub fn unremedied(&self) -> bool {
        self.remedy.is_none()
    }

    /// Whether the run had no remedy and computed in f32: the baseline of a task's charts.
    pub fn is_baseline(&self) -> bool {
        self.unremedied() && self.precision().is_none()
    }

    /// Whether the run's one remedy was the default guard, in f32.
    pub fn guard_alone(&self) -> bool {
        self.remedy[..] == [Remedy::Guard] && self.precision().is_none()
    }

    /// The remedies, and the precision when it is not f32 (`guard,loss-scale · f16`): what
    /// tells runs of one task apart in tables and legends.
    pub fn label(&self) -> String {
        match self.precision() {
            Some(p) => format!("{} · {p}", self.remedy),
            None => self.remedy.to_string(),
        }
    }
}

/// The index of the best hand-picked remedy among one task's runs: the lowest final held-out
/// loss among the runs that did not fail, leaving out no remedy (`none`) and the guard (alone or
/// with a rule). What the demo and the report set beside the default guard.
pub fn best_hand_picked<'a>(runs: impl IntoIterator<Item = &'a RunSummary>) -> Option<usize> {
    runs.into_iter()
        .enumerate()
        .filter(|(_, s)| {
            !s.unremedied() && !s.remedy.guarded() && s.precision().is_none() && !s.failed()
        })
        .min_by(|(_, a), (_, b)| {
            let loss = |s: &RunSummary| s.final_loss.unwrap_or(f64::INFINITY);
            loss(a).total_cmp(&loss(b))
        })
        .map(|(i, _)| i)
}

/// How a run ended, in one word (see [`RunSummary::outcome`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// At least 5% below both its start and the trivial predictor's loss.
    Learning,
    /// Finite, but not learning beyond the trivial predictor.
    Stable,
    /// The held-out loss ended non-finite or more than 10% above its start.
    Diverged,
    /// Stopped by the guard.
    Stopped,
}

impl Outcome {
    /// The word tables and reports print.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Learning => "learning",
            Outcome::Stable => "stable",
            Outcome::Diverged => "diverged",
            Outcome::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A finished run read back from its directory.
#[derive(Debug, Clone, PartialEq)]
pub struct RunData {
    /// The directory.
    pub dir: PathBuf,
    /// Its summary.
    pub summary: RunSummary,
    /// Its per-step records.
    pub metrics: Vec<MetricsRecord>,
}

/// Reading a run directory failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunDirError {
    /// A file is missing or unreadable.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A file does not parse.
    #[error("{path}: {message}")]
    Malformed {
        /// The file.
        path: String,
        /// Where and what.
        message: String,
    },
}

/// Reads `dir/summary.json` and `dir/metrics.jsonl`.
pub fn read_run(dir: impl AsRef<Path>) -> Result<RunData, RunDirError> {
    let dir = dir.as_ref();
    let summary_path = dir.join(SUMMARY_FILE);
    let text = std::fs::read_to_string(&summary_path).map_err(|e| RunDirError::Io {
        path: summary_path.display().to_string(),
        message: format!("{e} (is this a finished run directory?)"),
    })?;
    let summary = serde_json::from_str(&text).map_err(|e| RunDirError::Malformed {
        path: summary_path.display().to_string(),
        message: e.to_string(),
    })?;
    let metrics_path = dir.join(METRICS_FILE);
    let file = std::fs::File::open(&metrics_path).map_err(|e| RunDirError::Io {
        path: metrics_path.display().to_string(),
        message: e.to_string(),
    })?;
    let metrics = read_metrics(std::io::BufReader::new(file)).map_err(|e: MetricsError| {
        RunDirError::Malformed {
            path: metrics_path.display().to_string(),
            message: e.to_string(),
        }
    })?;
    Ok(RunData {
        dir: dir.to_path_buf(),
        summary,
        metrics,
    })
}

/// The name prefix of the temporary files [`write_atomic`] leaves only if killed mid-write (a
/// resumed run removes them).
pub const TEMP_PREFIX: &str = ".tmp-gradguard-";

/// Writes `bytes` to `path` atomically: a temporary file in the same directory (named
/// `TEMP_PREFIX….tmp`), flushed to disk, renamed over `path`, and the directory synced so the
/// rename is durable. A reader sees the old file or the new one, never a part. The one
/// atomic-write helper of the workspace (the CLI's output files go through it too).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if path.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "it is a directory",
        ));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // The rename is durable once the directory entry is.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_keep_the_remedy_text_on_the_wire_and_values_in_memory() {
        let mut s = summary(Some(2.0), Some(1.0), None);
        s.remedy = "guard,zclip:z-thresh=3".parse().unwrap();
        assert!(s.remedy.guarded() && !s.remedy.loss_scaled() && !s.unremedied());
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["remedy"], "guard,zclip:z-thresh=3");
        let back: RunSummary = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, s);
        // A summary naming a remedy this version does not know is refused, naming it.
        let mut unknown = json;
        unknown["remedy"] = "guard-less".into();
        let err = serde_json::from_value::<RunSummary>(unknown).unwrap_err();
        assert!(
            err.to_string().contains("unknown remedy 'guard-less'"),
            "{err}"
        );
        s.remedy = "none".parse().unwrap();
        assert!(s.unremedied());
        assert_eq!(serde_json::to_value(&s).unwrap()["remedy"], "none");
    }

    fn summary(initial: Option<f64>, end: Option<f64>, trivial: Option<f64>) -> RunSummary {
        RunSummary {
            task: "t".into(),
            remedy: RemedyList::default(),
            seed: 0,
            steps: 1,
            final_loss: end,
            final_train_loss: end,
            initial_loss: initial,
            trivial_loss: trivial,
            accuracy: None,
            diverged: !matches!((initial, end), (Some(a), Some(b)) if b < a),
            diverged_at: None,
            stopped: None,
            skipped_steps: 0,
            rollbacks: 0,
            bounded_steps: 0,
            update_family: None,
            non_finite_steps: 0,
            target_loss: 0.1,
            steps_to_target: None,
            lr: 0.1,
            largest_stable_lr: None,
            rate_choice: None,
            time_gradients: Vec::new(),
            logits: None,
            wall_time_s: 0.0,
            config: serde_json::Value::Null,
        }
    }

    #[test]
    fn outcomes_compare_against_the_start_and_the_trivial_predictor() {
        let ln10 = 10f64.ln();
        assert_eq!(
            summary(Some(2.3), None, Some(ln10)).outcome(),
            Outcome::Diverged
        );
        assert_eq!(
            summary(Some(2.3), Some(2.6), Some(ln10)).outcome(),
            Outcome::Diverged
        );
        assert_eq!(
            summary(Some(2.3), Some(1.0), Some(ln10)).outcome(),
            Outcome::Learning
        );
        // From an exploded start, a finite loss at chance level is not learning.
        assert_eq!(
            summary(Some(7000.0), Some(2.3), Some(ln10)).outcome(),
            Outcome::Stable
        );
        assert_eq!(
            summary(Some(2.3), Some(2.29), Some(ln10)).outcome(),
            Outcome::Stable
        );
        let stopped = RunSummary {
            stopped: Some("gave up".into()),
            ..summary(Some(2.3), Some(1.0), None)
        };
        assert_eq!(stopped.outcome(), Outcome::Stopped);
    }

    #[test]
    fn the_best_hand_picked_remedy_leaves_out_none_the_guard_and_failures() {
        let named = |remedy: &str, end: Option<f64>| RunSummary {
            remedy: remedy.parse().unwrap(),
            ..summary(Some(2.3), end, None)
        };
        let runs = [
            named("none", Some(0.1)),
            named("guard", Some(0.2)),
            named("guard,clip-global=1", Some(0.3)),
            named("he", Some(2.9)),
            named("clip-global=1", Some(0.9)),
            named("agc=0.01", Some(0.7)),
            named("zclip", None),
        ];
        assert_eq!(best_hand_picked(&runs), Some(5));
        assert_eq!(best_hand_picked(&runs[..3]), None);
    }
}
