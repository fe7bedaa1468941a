//! What a run accumulates besides its tensors — the position, the loss of every batch, the rate —
//! and what it comes to: the run's summary.

use gradguard::UpdateFamily;
use gradguard_report::{LogitPoint, LogitSummary, RemedyList, RunSummary, TimeGradients};

use crate::config::RunConfig;
use crate::objective::Evaluation;

/// Steps averaged for the final training loss and for reaching the target.
const WINDOW: usize = 10;

/// Everything a run accumulates besides the tensors (kept in each checkpoint).
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    /// The batch the run goes on from.
    pub next_batch: u64,
    /// The training loss of every batch taken (`None` where it was not finite).
    pub losses: Vec<Option<f64>>,
    /// The base learning rate (the plan's, or what the range test chose).
    pub lr: f64,
    /// The range test's largest stable rate, when it ran.
    pub largest_stable_lr: Option<f64>,
    /// Wall time spent by earlier processes of this run.
    pub wall_before: f64,
    /// Why the guard stopped the run, if it did.
    pub stopped: Option<String>,
    /// The held-out loss before the first step.
    pub initial_eval: Option<f64>,
    /// Gradients through time on the held-out batch (recurrent tasks): at the first step, and
    /// after the last once the run ends.
    pub time_gradients: Vec<TimeGradients>,
    /// The lm task's logit telemetry of every batch taken (empty for the other tasks).
    pub logits: Vec<LogitPoint>,
}

impl Progress {
    /// A run that has not started, at base rate `lr`.
    pub fn new(lr: f64) -> Self {
        Progress {
            next_batch: 0,
            losses: Vec::new(),
            lr,
            largest_stable_lr: None,
            wall_before: 0.0,
            stopped: None,
            initial_eval: None,
            time_gradients: Vec::new(),
            logits: Vec::new(),
        }
    }

    /// Whether the last `n` losses (and at least `n`) were all non-finite.
    pub fn last_losses_dead(&self, n: usize) -> bool {
        self.losses.len() >= n
            && self.losses[self.losses.len() - n..]
                .iter()
                .all(Option::is_none)
    }

    /// The run's summary, from what it accumulated, the guard's counters and the final held-out
    /// evaluation; `wall_time_s` is this process's time plus the earlier ones'.
    pub fn summarize(
        &self,
        config: &RunConfig,
        guard: &gradguard::Guard,
        eval: Evaluation,
        wall_in_this_process: f64,
    ) -> RunSummary {
        let losses = &self.losses;
        let initial = losses.first().copied().flatten();
        let final_train = mean(&losses[losses.len().saturating_sub(WINDOW)..]);
        // Diverged: the held-out loss ends non-finite or not below where it started.
        let diverged = match (self.initial_eval, eval.loss) {
            (Some(start), Some(end)) => !(end < start),
            (None, Some(_)) => false,
            (_, None) => true,
        };
        let diverged_at = diverged
            .then(|| {
                losses.iter().position(|l| match (l, initial) {
                    (None, _) => true,
                    (Some(l), Some(first)) => *l > 10.0 * first,
                    _ => false,
                })
            })
            .flatten()
            .map(|i| i as u64);
        let steps_to_target = (WINDOW..=losses.len())
            .find(|&end| mean(&losses[end - WINDOW..end]).is_some_and(|m| m <= config.target_loss))
            .map(|end| end as u64);
        let counters = guard.counters();
        RunSummary {
            task: config.task.name().into(),
            remedy: RemedyList(config.remedies.clone()),
            seed: config.seed,
            steps: self.next_batch,
            final_loss: eval.loss,
            final_train_loss: final_train,
            initial_loss: self.initial_eval,
            trivial_loss: None,
            accuracy: eval.accuracy,
            diverged,
            diverged_at,
            stopped: self.stopped.clone(),
            skipped_steps: counters.skipped,
            rollbacks: counters.rolled_back,
            bounded_steps: counters.bounded_steps,
            update_family: counters.update_family.map(|family| {
                match family {
                    UpdateFamily::Proportional => "proportional",
                    UpdateFamily::Normalized => "normalized",
                }
                .to_string()
            }),
            non_finite_steps: counters.non_finite_steps,
            target_loss: config.target_loss,
            steps_to_target,
            lr: self.lr,
            largest_stable_lr: self.largest_stable_lr,
            rate_choice: None,
            time_gradients: self.time_gradients.clone(),
            logits: LogitSummary::of(&self.logits, WINDOW),
            wall_time_s: self.wall_before + wall_in_this_process,
            config: serde_json::to_value(config).expect("configs serialize"),
        }
    }
}

/// The mean of a window of losses; `None` if any is missing or the mean is not finite.
fn mean(window: &[Option<f64>]) -> Option<f64> {
    let sum = window.iter().copied().sum::<Option<f64>>()?;
    let m = sum / window.len().max(1) as f64;
    m.is_finite().then_some(m)
}
