//! `gradguard train`: one run, into a run directory, resumable.

use std::path::PathBuf;

use anyhow::Result;
use gradguard_lab::sweep::run_name;
use gradguard_lab::{TrainOptions, TrainOutcome, train};

use crate::exit::BadInput;
use crate::lab::{bar, ensure_dir, lab_error, outcome_table};
use crate::lab_args::TrainArgs;

/// The run diverged or was stopped, under `--fail-on-divergence` (exit code 1).
#[derive(Debug)]
pub struct Diverged(pub String);

impl std::error::Error for Diverged {}

impl std::fmt::Display for Diverged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs `gradguard train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    let config = args.run.config();
    gradguard_lab::check(&config).map_err(lab_error)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(run_name(&config)));
    if out.is_file() {
        return Err(BadInput(format!(
            "--out '{}' is a file, not a directory",
            out.display()
        ))
        .into());
    }
    ensure_dir(&out)?;
    let progress = bar(config.steps, "training");
    let tick = |n: u64| progress.set_position(n);
    let options = TrainOptions {
        out: Some(out.clone()),
        progress: Some(&tick),
        ..TrainOptions::default()
    };
    let outcome = train(&config, &options).map_err(lab_error)?;
    progress.finish_and_clear();
    let TrainOutcome::Finished(summary) = outcome else {
        unreachable!("train was not asked to stop early")
    };
    if args.json {
        crate::files::print_json(&summary)?;
    } else {
        print!("{}", outcome_table(&[&summary]));
        if let Some(why) = &summary.stopped {
            println!("the guard stopped the run: {why}");
        }
        println!("run directory: {}", out.display());
    }
    if args.fail_on_divergence && summary.failed() {
        return Err(Diverged(format!(
            "the run {} (see {})",
            summary.outcome(),
            out.join("summary.json").display()
        ))
        .into());
    }
    Ok(())
}
