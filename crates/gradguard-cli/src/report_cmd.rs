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
                    e.remedy.to_string(),
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

/// Each method's final loss at each rate and its LR sensitivity (Wortsman et al. 2023), where
/// the sweep has a rate axis.
pub fn rate_table(result: &SweepResult) -> Option<Table> {
    let curves = &result.rate_curves;
    let first = curves.first()?;
    let labels = gradguard_lab::sweep::config_labels(curves);
    let labelled = labels.iter().any(|l| !l.is_empty());
    let mut headers = vec!["task".to_string()];
    if labelled {
        headers.push("configuration".to_string());
    }
    headers.push("method".to_string());
    headers.extend(first.lrs.iter().map(|lr| format!("lr {lr}")));
    headers.extend(["best".to_string(), "LR sensitivity".to_string()]);
    let rows = curves
        .iter()
        .zip(&labels)
        .map(|(c, label)| {
            let mut row = vec![c.task.clone()];
            if labelled {
                row.push(label.clone());
            }
            row.push(c.remedy.to_string());
            row.extend(c.losses.iter().zip(&c.failed).map(|(l, &f)| {
                if f > 0 {
                    format!("{l:.3} ({f} failed)")
                } else {
                    format!("{l:.3}")
                }
            }));
            row.push(format!("{:.3} at {}", c.best_loss, c.best_lr));
            row.push(format!("{:.4}", c.sensitivity));
            row
        })
        .collect();
    Some(Table {
        caption: format!(
            "Final held-out loss against the rate (mean over seeds; a failed run counts as its \
             loss at initialization) and LR sensitivity = mean over rates of min(L(η), L₀) − the \
             best (Wortsman et al. 2023, §3.1); {} seed(s)",
            first.seeds
        ),
        headers,
        rows,
    })
}

/// Final loss against the rate, one line per method, for each configuration of a sweep with a
/// rate axis: the picture of LR sensitivity (x: log₁₀ of the rate).
pub fn rate_chart(result: &SweepResult) -> Option<String> {
    use gradguard_report::html::{LineChart, PALETTE, Series, legend};
    let labels = gradguard_lab::sweep::config_labels(&result.rate_curves);
    let mut configs: Vec<(&str, &str)> = result
        .rate_curves
        .iter()
        .zip(&labels)
        .map(|(c, label)| (c.config.as_str(), label.as_str()))
        .collect();
    configs.sort();
    configs.dedup();
    let mut out = String::new();
    for (config, label) in configs {
        let curves: Vec<_> = result
            .rate_curves
            .iter()
            .filter(|c| c.config == config)
            .collect();
        let series: Vec<Series> = curves
            .iter()
            .enumerate()
            .map(|(i, c)| Series {
                label: format!("{} (LR sensitivity {:.3})", c.remedy, c.sensitivity),
                color: PALETTE[i % PALETTE.len()].to_string(),
                points: c
                    .lrs
                    .iter()
                    .zip(&c.losses)
                    .map(|(lr, l)| (lr.log10(), Some(*l)))
                    .collect(),
                dashed: false,
                width: 2.0,
            })
            .collect();
        let chart = LineChart {
            title: format!(
                "{}{}{label}: final held-out loss against the rate",
                curves[0].task,
                if label.is_empty() { "" } else { " " }
            ),
            x_label: "log₁₀ learning rate".into(),
            y_label: "final held-out loss".into(),
            series: series.clone(),
            size: (560.0, 300.0),
            ..LineChart::default()
        };
        out.push_str(&legend(&series));
        out.push_str(&chart.render());
    }
    (!out.is_empty()).then_some(out)
}

/// Runs `gradguard report`.
pub fn run(args: &ReportArgs) -> Result<()> {
    let runs = read_runs(&args.dirs)?;
    let mut tables = Vec::new();
    let mut figures = Vec::new();
    for dir in &args.dirs {
        if let Ok(text) = std::fs::read_to_string(dir.join(SWEEP_FILE))
            && let Ok(result) = serde_json::from_str::<SweepResult>(&text)
        {
            tables.push(ranking_table(&result));
            tables.extend(rate_table(&result));
            figures.extend(rate_chart(&result));
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
        figures: &figures,
        runs: &runs,
        headline: true,
    });
    write_atomically(&out, html.as_bytes())?;
    println!("{}", out.display());
    Ok(())
}
