//! The HTML report: one self-contained file (inline SVG and CSS, no script, no download) with
//! the pictures people look for — the outcome table, loss curves of each remedy against none,
//! the gradient norm at initialization against depth, the global norm with its clip threshold
//! and spikes, a per-layer gradient-norm heatmap over steps, and a language model's attention
//! logits and log Z.

mod grid;
mod headline;
mod heatmap;
mod logit_charts;
mod run_charts;
mod svg;

use std::collections::BTreeMap;
use std::fmt::Write;

pub use grid::CategoryGrid;
pub use headline::guard_headline;
pub use heatmap::Heatmap;
use logit_charts::logit_charts;
use run_charts::{depth_chart, heatmap, loss_charts, norm_chart, scale_chart, time_chart};
pub use svg::{LineChart, Marker, PALETTE, Series, escape, legend};

use crate::summary::RunData;

/// A table for the report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// The caption.
    pub caption: String,
    /// Column headers.
    pub headers: Vec<String>,
    /// Rows of cells.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    fn render(&self) -> String {
        let mut out = String::from("<table>");
        let _ = write!(out, "<caption>{}</caption><tr>", escape(&self.caption));
        for h in &self.headers {
            let _ = write!(out, "<th>{}</th>", escape(h));
        }
        out.push_str("</tr>");
        for row in &self.rows {
            out.push_str("<tr>");
            for (i, cell) in row.iter().enumerate() {
                let class = match cell.as_str() {
                    "diverged" => " class=\"bad\"",
                    "stopped" | "stalled" => " class=\"warn\"",
                    "learning" => " class=\"good\"",
                    _ if i > 0 => " class=\"num\"",
                    _ => "",
                };
                let _ = write!(out, "<td{class}>{}</td>", escape(cell));
            }
            out.push_str("</tr>");
        }
        out.push_str("</table>");
        out
    }
}

/// What goes into a report.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    /// The page title.
    pub title: &'a str,
    /// Paragraphs under the title.
    pub intro: &'a [String],
    /// Tables before the per-task pictures (e.g. a sweep's ranking).
    pub tables: &'a [Table],
    /// Figures after the tables, as rendered HTML/SVG fragments (e.g. a sweep's loss against
    /// the rate, [`LineChart::render`] with a [`legend`]).
    pub figures: &'a [String],
    /// The runs.
    pub runs: &'a [RunData],
    /// Open with each task's headline ([`guard_headline`]: none, the default guard and the best
    /// hand-picked remedy), before any table.
    pub headline: bool,
}

/// The report's stylesheet, for other pages built from these charts.
pub const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1180px;\
color:#222;padding:0 16px}h1{font-size:24px}h2{font-size:19px;margin-top:34px;border-bottom:1px solid \
#ddd}h3{font-size:15px;margin:18px 0 4px}p.note{color:#555;max-width:900px}table{border-collapse:\
collapse;margin:12px 0;font-size:13px}caption{text-align:left;font-weight:600;padding:4px 0}th,td{\
border:1px solid #ddd;padding:3px 8px}th{background:#f4f4f4}td.num{text-align:right;font-variant-\
numeric:tabular-nums}td.bad{background:#fde0dd;color:#a50f15}td.warn{background:#fff3cd}td.good{\
background:#e5f5e0;color:#006d2c}.grid{stroke:#eee}.plot{fill:#fff;stroke:#ccc}.tick{font-size:10px;\
fill:#555}.axis{font-size:11px;fill:#333}.title{font-size:12px;font-weight:600;fill:#222}.empty{\
fill:#999}.multiples{display:flex;flex-wrap:wrap;gap:6px}.legend{display:flex;flex-wrap:wrap;gap:\
4px 14px;font-size:12px;margin:2px 0 8px 58px}.legend i{display:inline-block;width:18px;height:0;\
border-top:3px solid;margin-right:5px;vertical-align:middle}";

fn fmt(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| {
        if v != 0.0 && !(1e-3..1e5).contains(&v.abs()) {
            format!("{v:.2e}")
        } else {
            format!("{v:.4}")
        }
    })
}

/// A loss in the outcome table: `None` means it was not finite.
fn loss_cell(v: Option<f64>) -> String {
    v.map_or_else(|| "non-finite".into(), |v| fmt(Some(v)))
}

/// The outcome table of `runs`.
pub fn outcome_table(runs: &[RunData]) -> Table {
    Table {
        caption: "Outcome of every run (measured in these runs)".into(),
        headers: [
            "task",
            "remedy",
            "seed",
            "outcome",
            "diverged at",
            "steps to target",
            "start loss",
            "final loss",
            "accuracy",
            "rate (why)",
            "skipped",
            "rollbacks",
            "seconds",
        ]
        .map(String::from)
        .to_vec(),
        rows: runs
            .iter()
            .map(|r| {
                let s = &r.summary;
                vec![
                    s.task.clone(),
                    s.label(),
                    s.seed.to_string(),
                    s.outcome().to_string(),
                    s.diverged_at.map_or("–".into(), |v| v.to_string()),
                    s.steps_to_target
                        .map_or("not reached".into(), |v| v.to_string()),
                    loss_cell(s.initial_loss),
                    loss_cell(s.final_loss),
                    s.accuracy
                        .map_or("–".into(), |a| format!("{:.1}%", 100.0 * a)),
                    s.rate_choice.clone().unwrap_or_else(|| format!("{}", s.lr)),
                    s.skipped_steps.to_string(),
                    s.rollbacks.to_string(),
                    format!("{:.1}", s.wall_time_s),
                ]
            })
            .collect(),
    }
}

fn describe(run: &RunData) -> String {
    let c = &run.summary.config;
    let get = |k: &str| {
        c.get(k)
            .map(|v| v.to_string().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    if c.get("task").and_then(|t| t.as_str()) == Some("mlp") {
        format!(
            "Deep MLP on the UCI handwritten digits: {} hidden layers of {} {} units, {} init at gain {}, SGD at {} for {} steps, batch {}.",
            get("depth"),
            get("width"),
            get("activation"),
            get("init"),
            get("init_gain"),
            get("lr"),
            get("steps"),
            get("batch")
        )
    } else {
        format!(
            "{} task with a {} cell of {} units over sequences of length {}, recurrent {} init at gain {}, SGD at {} for {} steps, batch {}.",
            get("task"),
            get("cell"),
            get("width"),
            get("seq_len"),
            get("init"),
            get("init_gain"),
            get("lr"),
            get("steps"),
            get("batch")
        )
    }
}

/// The report as one HTML document.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body><h1>{t}</h1>",
        t = escape(report.title)
    );
    let mut by_task: BTreeMap<(String, String), Vec<&RunData>> = BTreeMap::new();
    for run in report.runs {
        let mut cell = run.summary.config.clone();
        if let Some(obj) = cell.as_object_mut() {
            // Runs that differ only in remedies, seed or precision are compared side by side.
            for key in ["remedies", "seed", "precision"] {
                obj.remove(key);
            }
        }
        by_task
            .entry((run.summary.task.clone(), cell.to_string()))
            .or_default()
            .push(run);
    }
    if report.headline {
        // In the order the runs came (a demo lists its flagship task first).
        let mut groups: Vec<&Vec<&RunData>> = by_task.values().collect();
        let first = |runs: &Vec<&RunData>| {
            report
                .runs
                .iter()
                .position(|r| std::ptr::eq(r, runs[0]))
                .unwrap_or(usize::MAX)
        };
        groups.sort_by_key(|runs| first(runs));
        for runs in groups {
            if let Some(h) = guard_headline(runs) {
                out.push_str(&h);
            }
        }
    }
    for p in report.intro {
        let _ = write!(out, "<p class=\"note\">{}</p>", escape(p));
    }
    for t in report.tables {
        out.push_str(&t.render());
    }
    for f in report.figures {
        out.push_str(f);
    }
    out.push_str(&outcome_table(report.runs).render());
    for runs in by_task.values_mut() {
        // The unremedied run first: it is the reference every picture compares against.
        runs.sort_by_key(|r| !r.summary.unremedied());
        let mut about = describe(runs[0]);
        if runs.iter().any(|r| r.summary.precision().is_some()) {
            about.push_str(
                " Runs marked f16 or bf16 compute the forward and backward passes in that format \
                 with f32 weights (mixed precision); the others compute in f32.",
            );
        }
        let _ = write!(
            out,
            "<h2>{}</h2><p class=\"note\">{}</p>",
            escape(&runs[0].summary.task),
            escape(&about)
        );
        let _ = write!(
            out,
            "<h3>Training loss of each remedy (color) against none (red); × marks the first non-finite loss</h3><div class=\"multiples losses\">{}</div>",
            loss_charts(runs)
        );
        if let Some(chart) = scale_chart(runs) {
            let _ = write!(
                out,
                "<section class=\"scale\">{}{}</section>",
                chart.render(),
                legend(&chart.series)
            );
        }
        for chart in logit_charts(runs) {
            let _ = write!(
                out,
                "<section class=\"logits\">{}{}</section>",
                chart.render(),
                legend(&chart.series)
            );
        }
        let (chart, series) = depth_chart(runs);
        if !series.is_empty() {
            let _ = write!(
                out,
                "<section class=\"depth\">{}{}</section>",
                chart.render(),
                legend(&series)
            );
        }
        for first in [true, false] {
            if let Some(chart) = time_chart(runs, first) {
                let _ = write!(
                    out,
                    "<section class=\"through-time\">{}{}</section>",
                    chart.render(),
                    legend(&chart.series)
                );
            }
        }
        out.push_str("<h3>Global gradient norm — dashed: clip threshold; dots: skipped (red), spike (orange), non-finite (magenta)</h3><div class=\"multiples norms\">");
        for (i, run) in runs.iter().enumerate() {
            out.push_str(&norm_chart(run, i));
        }
        out.push_str("</div><h3>Per-layer gradient norm over steps (log₁₀; magenta: NaN/inf)</h3><div class=\"multiples heatmaps\">");
        for run in runs {
            if let Some(h) = heatmap(run) {
                out.push_str(&h);
            }
        }
        out.push_str("</div>");
    }
    out.push_str("</body></html>\n");
    out
}
