//! Shared pieces of the lab's commands: error mapping, progress bars, the outcome table.

use std::path::{Path, PathBuf};

use gradguard_lab::sweep::{SweepResult, run_sweep};
use gradguard_lab::{LabError, RunConfig};
use gradguard_report::RunSummary;
use indicatif::{ProgressBar, ProgressStyle};

use crate::exit::BadInput;
use gradguard_report::table;

/// Lab errors as CLI errors: configuration, files and checkpoints are bad input (exit 2).
pub fn lab_error(e: LabError) -> anyhow::Error {
    match e {
        LabError::Config(_)
        | LabError::Grid { .. }
        | LabError::Data { .. }
        | LabError::Checkpoint { .. }
        | LabError::Io { .. } => BadInput(e.to_string()).into(),
        // The guard's own error decides the exit code (2 for bad input, 3 for non-finite
        // values): anyhow's downcast does not look inside a wrapping LabError.
        LabError::Guard(g) if g.is_bad_input() => BadInput(g.to_string()).into(),
        LabError::Guard(g) => anyhow::Error::new(g),
        other => anyhow::Error::new(other),
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:36}}] {{pos}}/{{len}} {{msg}} ({{elapsed}}, eta {{eta}})"
        ))
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar
}

fn short(v: Option<f64>) -> String {
    v.map_or("NaN".into(), |v| {
        if v != 0.0 && !(1e-3..1e5).contains(&v.abs()) {
            format!("{v:.2e}")
        } else {
            format!("{v:.4}")
        }
    })
}

/// The terminal table of runs: remedy, outcome, losses, accuracy, steps to target, guard work.
pub fn outcome_table(runs: &[&RunSummary]) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|s| {
            vec![
                format!("{} {}", s.task, s.label()),
                s.outcome().to_string(),
                s.diverged_at.map_or("–".into(), |v| v.to_string()),
                short(s.initial_loss),
                short(s.final_loss),
                s.accuracy
                    .map_or("–".into(), |a| format!("{:.1}%", 100.0 * a)),
                s.steps_to_target.map_or("–".into(), |v| v.to_string()),
                format!("{}/{}", s.skipped_steps, s.rollbacks),
            ]
        })
        .collect();
    table::render(
        &[
            "run",
            "outcome",
            "diverged at",
            "start loss",
            "final loss",
            "accuracy",
            "to target",
            "skip/rollback",
        ],
        &rows,
    )
}

/// Runs `runs` into `out` as a sweep, with a progress bar named `what` over the runs.
pub fn sweep_with_progress(
    runs: &[RunConfig],
    out: &Path,
    jobs: usize,
    what: &str,
) -> anyhow::Result<SweepResult> {
    let progress = bar(runs.len() as u64, what);
    let done = |config: &RunConfig, summary: &RunSummary| {
        progress.inc(1);
        progress.set_message(format!(
            "{} {}: {}",
            config.task,
            summary.remedy,
            summary.outcome()
        ));
    };
    let result = run_sweep(runs, out, jobs, &done).map_err(lab_error)?;
    progress.finish_and_clear();
    Ok(result)
}

/// Creates `dir` (and parents), as bad input naming it when that fails.
pub fn ensure_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .map_err(|e| BadInput(format!("cannot create directory '{}': {e}", dir.display())))?;
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{BAD_INPUT, NON_FINITE, code_of};
    use gradguard::GuardError;

    /// Issue "Peer parity … code health": a guard error wrapped by the lab keeps its exit code.
    #[test]
    fn a_guard_error_inside_a_lab_error_keeps_its_exit_code() {
        let bad = lab_error(LabError::Guard(GuardError::InvalidConfig("x".into())));
        assert_eq!(code_of(&bad), BAD_INPUT);
        let nan = lab_error(LabError::Guard(GuardError::NonFiniteLoss {
            step: 3,
            loss: f64::NAN,
        }));
        assert_eq!(code_of(&nan), NON_FINITE);
    }
}
