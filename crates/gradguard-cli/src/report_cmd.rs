//! `gradguard report`: the HTML report of finished runs.

use std::path::{Path, PathBuf};

use anyhow::Result;
use gradguard_lab::sweep::{RUNS_DIR, SWEEP_FILE, SweepResult};
use gradguard_report::html::{Report, Table, render};
use gradguard_report::{RunData, SUMMARY_FILE, read_run};

use crate::exit::BadInput;
use crate::files::write_atomically;
use crate::lab_args::ReportArgs;

/// The run directories under `dir`: itself when it is a run, else its `runs/*` in name order.
pub fn run_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.join(SUMMARY_FILE).is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let runs = dir.join(RUNS_DIR);
    let entries = std::fs::read_dir(&runs).map_err(|_| {
        BadInput(format!(
            "'{}' is neither a finished run directory (no {SUMMARY_FILE}) nor a sweep (no {RUNS_DIR}/)",
            dir.display()
        ))
    })?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(SUMMARY_FILE).is_file())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(BadInput(format!("'{}' holds no finished run", runs.display())).into());
    }
    Ok(dirs)
}

/// Reads every run under `dirs`.
pub fn read_runs(dirs: &[PathBuf]) -> Result<Vec<RunData>> {
    let mut runs = Vec::new();
    for dir in dirs {
        for run in run_dirs(dir)? {
            runs.push(read_run(&run).map_err(|e| BadInput(e.to_string()))?);
        }
    }
    Ok(runs)
}

/// The ranking table of a sweep result.
pub fn ranking_table(result: &SweepResult) -> Table {
    let opt = |v: Option<f64>| {
        v.map_or("–".into(), |v| {
            if v != 0.0 && !(1e-3..1e5).contains(&v.abs()) {
                format!("{v:.2e}")
            } else {
                format!("{v:.4}")
            }
        })
    };
    Table {
        caption: "Remedies ranked by measured effect (fewest failures, most reaching the target, \
                  fastest, lowest final loss)"
            .into(),
        headers: [
            "task",
            "rank",
            "remedy",
            "runs",
            "diverged",
            "stopped",
            "rescued",
            "reached target",
            "median steps",
            "median final loss",
            "mean accuracy",
        ]
        .map(String::from)
        .to_vec(),
        rows: result
            .ranking
            .iter()
            .scan((String::new(), 0usize), |(task, rank), e| {
                if *task != e.task {
                    (*task, *rank) = (e.task.clone(), 0);
                }
                *rank += 1;
                Some((*rank, e))
            })
            .map(|(i, e)| {
                vec![
                    e.task.clone(),
                    i.to_string(),
                    e.remedy.clone(),
                    e.runs.to_string(),
                    e.diverged.to_string(),
                    e.stopped.to_string(),
                    e.rescued.to_string(),
                    e.reached_target.to_string(),
                    e.median_steps_to_target
                        .map_or("–".into(), |v| v.to_string()),
                    opt(e.median_final_loss),
                    e.mean_accuracy
                        .map_or("–".into(), |a| format!("{:.1}%", 100.0 * a)),
                ]
            })
            .collect(),
    }
}

/// Runs `gradguard report`.
pub fn run(args: &ReportArgs) -> Result<()> {
    let runs = read_runs(&args.dirs)?;
    let mut tables = Vec::new();
    for dir in &args.dirs {
        if let Ok(text) = std::fs::read_to_string(dir.join(SWEEP_FILE))
            && let Ok(result) = serde_json::from_str::<SweepResult>(&text)
        {
            tables.push(ranking_table(&result));
        }
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.dirs[0].join("report.html"));
    let html = render(&Report {
        title: "gradguard report",
        intro: &[format!(
            "{} runs from {}.",
            runs.len(),
            args.dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )],
        tables: &tables,
        runs: &runs,
        headline: true,
    });
    write_atomically(&out, html.as_bytes())?;
    println!("{}", out.display());
    Ok(())
}
