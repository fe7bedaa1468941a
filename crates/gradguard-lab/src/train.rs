//! One training run from start to end: check the configuration, prepare the run directory, and
//! drive a `Run` batch by batch (or until an interruption asked for by a test).

use std::path::PathBuf;

use gradguard_report::RunSummary;

use crate::config::RunConfig;
use crate::error::LabError;
use crate::plan::Plan;
use crate::run::{Flow, Run};
use crate::run_dir::prepare_dir;
use crate::tasks::TaskData;

/// How a run is carried out (not what it computes).
#[derive(Default)]
pub struct TrainOptions<'a> {
    /// The run directory; `None` trains in memory without files.
    pub out: Option<PathBuf>,
    /// Stop after this many batches in this process, as if killed (for tests of resuming).
    pub interrupt_after: Option<u64>,
    /// Called after each batch with the batch count so far.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
    /// Faults to inject (tests of what the guard promises).
    pub faults: Vec<crate::faults::Fault>,
}

impl std::fmt::Debug for TrainOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainOptions")
            .field("out", &self.out)
            .field("interrupt_after", &self.interrupt_after)
            .field("progress", &self.progress.is_some())
            .field("faults", &self.faults)
            .finish()
    }
}

/// How a call to [`train`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainOutcome {
    /// The run is complete (now, or already before this call).
    Finished(Box<RunSummary>),
    /// `interrupt_after` was reached; the same call resumes from the last checkpoint.
    Interrupted {
        /// The batch the next call would start from without a checkpoint in between.
        next_batch: u64,
    },
}

/// Checks `config` completely — ranges, and remedies against the task — without training.
pub fn check(config: &RunConfig) -> Result<(), LabError> {
    let data = TaskData::for_run(config)?;
    Plan::new(config, &data).map(|_| ())
}

/// Trains one run. With `options.out`, writes the run directory (`config.json`, `metrics.jsonl`,
/// `tensorboard/`, `checkpoint.ggck`, `summary.json`) and resumes from its last checkpoint.
pub fn train(config: &RunConfig, options: &TrainOptions) -> Result<TrainOutcome, LabError> {
    config.validate()?;
    let data = TaskData::for_run(config)?;
    let plan = Plan::new(config, &data)?;
    if let Some(dir) = &options.out
        && let Some(done) = prepare_dir(dir, config)?
    {
        return Ok(TrainOutcome::Finished(Box::new(done)));
    }
    let (mut run, mut net) = Run::start(
        config,
        &plan,
        &data,
        options.out.as_deref(),
        &options.faults,
    )?;
    let mut in_this_process = 0u64;
    while !run.is_over() {
        if options.interrupt_after == Some(in_this_process) {
            return Ok(TrainOutcome::Interrupted {
                next_batch: run.next_batch(),
            });
        }
        in_this_process += 1;
        if let Some(report) = options.progress {
            report(run.next_batch() + 1);
        }
        let (stepped, flow) = run.step(net)?;
        net = stepped;
        if flow == Flow::Over {
            break;
        }
    }
    run.finish(net)
        .map(|summary| TrainOutcome::Finished(Box::new(summary)))
}
