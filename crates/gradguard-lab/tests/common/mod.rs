//! Helpers shared by the lab's tests.

use gradguard_lab::tasks::Task;
use gradguard_lab::{Remedy, RunConfig, TrainOptions, TrainOutcome, train};
use gradguard_report::RunSummary;

/// Trains `config` in memory to the end.
pub fn run(config: &RunConfig) -> RunSummary {
    match train(config, &TrainOptions::default()).expect("the run trains") {
        TrainOutcome::Finished(s) => *s,
        TrainOutcome::Interrupted { .. } => panic!("not interrupted"),
    }
}

/// The task's default configuration for `steps` batches with `remedies`.
pub fn with(task: Task, steps: u64, remedies: &str) -> RunConfig {
    RunConfig {
        steps,
        remedies: Remedy::parse_list(remedies).unwrap(),
        ..RunConfig::for_task(task)
    }
}
