//! The HTML report: one self-contained file (inline SVG and CSS, no script, no download) with
//! the pictures people look for — the outcome table, loss curves of each remedy against none,
//! the gradient norm at initialization against depth, the global norm with its clip threshold
//! and spikes, and a per-layer gradient-norm heatmap over steps.

mod svg;

use std::collections::BTreeMap;
use std::fmt::Write;

use svg::{BASELINE, PALETTE};
pub use svg::{CategoryGrid, Heatmap, LineChart, Marker, Series, escape, legend};

use crate::record::MetricsRecord;
use crate::summary::RunData;

/// Points a line keeps; longer runs are binned.
const MAX_POINTS: usize = 800;
/// Columns a heatmap keeps; longer runs are binned (by the bin's largest norm).
const MAX_COLUMNS: usize = 160;

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
    /// The runs.
    pub runs: &'a [RunData],
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

/// Sort key that orders `layers.10` after `layers.9`, and unnumbered tensors (a head) last.
fn natural_key(name: &str) -> (u64, Vec<(String, u64)>) {
    let mut parts = Vec::new();
    let mut first_number = None;
    let mut text = String::new();
    let mut digits = String::new();
    for ch in name.chars().chain(std::iter::once('\0')) {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        if !digits.is_empty() {
            let n = digits.parse().unwrap_or(u64::MAX);
            first_number.get_or_insert(n);
            parts.push((std::mem::take(&mut text), n));
            digits.clear();
        }
        text.push(ch);
    }
    parts.push((text, 0));
    (first_number.unwrap_or(u64::MAX), parts)
}

/// The weight matrices of a record in forward order (the heatmap's rows).
fn weight_names(record: &MetricsRecord) -> Vec<String> {
    let mut names: Vec<String> = record
        .tensor_norms
        .keys()
        .filter(|n| n.ends_with("weight"))
        .cloned()
        .collect();
    names.sort_by_key(|n| natural_key(n));
    names
}

/// `(step, value)` points binned down to `max` (by `reduce`); a bin with a non-finite value is
/// non-finite.
fn binned(
    points: &[(f64, Option<f64>)],
    max: usize,
    reduce: fn(&[f64]) -> f64,
) -> Vec<(f64, Option<f64>)> {
    if points.len() <= max {
        return points.to_vec();
    }
    let size = points.len().div_ceil(max);
    points
        .chunks(size)
        .map(|bin| {
            let values: Option<Vec<f64>> = bin.iter().map(|p| p.1).collect();
            (bin[0].0, values.map(|v| reduce(&v)))
        })
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

fn run_label(run: &RunData) -> String {
    run.summary.remedy.clone()
}

fn color(run: &RunData, i: usize) -> String {
    if run.summary.remedy == "none" {
        BASELINE.to_string()
    } else {
        PALETTE[i % PALETTE.len()].to_string()
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| {
        if v != 0.0 && !(1e-3..1e5).contains(&v.abs()) {
            format!("{v:.2e}")
        } else {
            format!("{v:.4}")
        }
    })
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
                    s.remedy.clone(),
                    s.seed.to_string(),
                    s.outcome().to_string(),
                    s.diverged_at.map_or("–".into(), |v| v.to_string()),
                    s.steps_to_target
                        .map_or("not reached".into(), |v| v.to_string()),
                    fmt(s.initial_loss),
                    fmt(s.final_loss),
                    s.accuracy
                        .map_or("–".into(), |a| format!("{:.1}%", 100.0 * a)),
                    s.skipped_steps.to_string(),
                    s.rollbacks.to_string(),
                    format!("{:.1}", s.wall_time_s),
                ]
            })
            .collect(),
    }
}

fn loss_points(run: &RunData) -> Vec<(f64, Option<f64>)> {
    let points: Vec<(f64, Option<f64>)> = run
        .metrics
        .iter()
        .map(|m| (m.step as f64, m.loss))
        .collect();
    binned(&points, MAX_POINTS, mean)
}

/// One small chart per remedy: its training loss against the unremedied run's.
fn loss_charts(runs: &[&RunData]) -> String {
    let baseline = runs.iter().find(|r| r.summary.remedy == "none");
    // A blow-up is drawn at the top edge, 100× above the largest first loss.
    let cap = runs
        .iter()
        .filter_map(|r| r.metrics.first().and_then(|m| m.loss))
        .fold(f64::NEG_INFINITY, f64::max)
        * 100.0;
    let mut out = String::new();
    for (i, run) in runs.iter().enumerate() {
        if baseline.is_some() && run.summary.remedy == "none" && runs.len() > 1 {
            continue;
        }
        let mut chart = LineChart {
            title: format!("{} vs none — {}", run_label(run), run.summary.outcome()),
            x_label: "step".into(),
            y_label: "training loss (log)".into(),
            log_y: true,
            size: (370.0, 210.0),
            y_max: cap.is_finite().then_some(cap),
            ..Default::default()
        };
        for r in baseline.into_iter().chain(std::iter::once(run)) {
            let is_baseline = r.summary.remedy == "none";
            chart.series.push(Series {
                label: run_label(r),
                color: if is_baseline {
                    BASELINE.into()
                } else {
                    color(r, i)
                },
                points: loss_points(r),
                dashed: false,
                width: if is_baseline { 1.2 } else { 1.6 },
            });
            if let Some(bad) = r.metrics.iter().find(|m| m.loss.is_none()) {
                chart.markers.push(Marker {
                    x: bad.step as f64,
                    y: None,
                    color: if is_baseline {
                        BASELINE.into()
                    } else {
                        color(r, i)
                    },
                    title: format!("{}: loss not finite at step {}", run_label(r), bad.step),
                });
            }
        }
        out.push_str(&chart.render());
    }
    out
}

fn depth_chart(runs: &[&RunData]) -> (LineChart, Vec<Series>) {
    let mut chart = LineChart {
        title: "Gradient norm per layer at step 0: the product of per-layer factors (one line per distinct start)".into(),
        size: (900.0, 300.0),
        x_label: "layer (input → output)".into(),
        y_label: "‖∇W‖ at step 0 (log)".into(),
        log_y: true,
        ..Default::default()
    };
    let mut seen: Vec<Vec<(f64, Option<f64>)>> = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let Some(first) = run.metrics.first() else {
            continue;
        };
        let points: Vec<(f64, Option<f64>)> = weight_names(first)
            .iter()
            .enumerate()
            .map(|(k, n)| (k as f64, first.tensor_norms[n]))
            .collect();
        // Remedies that leave the initial network as it is draw the same line: draw it once.
        // Fewer than four weight matrices (a recurrent net) is no depth profile.
        if points.len() < 4 || seen.contains(&points) {
            continue;
        }
        seen.push(points.clone());
        chart.series.push(Series {
            label: run_label(run),
            color: color(run, i),
            points,
            dashed: false,
            width: 2.0,
        });
    }
    let series = chart.series.clone();
    (chart, series)
}

fn norm_chart(run: &RunData, i: usize) -> String {
    let points: Vec<(f64, Option<f64>)> = run
        .metrics
        .iter()
        .map(|m| (m.step as f64, m.grad_norm))
        .collect();
    let mut chart = LineChart {
        title: run_label(run),
        x_label: "step".into(),
        y_label: "‖g‖₂ (log)".into(),
        log_y: true,
        size: (370.0, 210.0),
        ..Default::default()
    };
    chart.series.push(Series {
        label: "global norm".into(),
        color: color(run, i),
        points: binned(&points, MAX_POINTS, max),
        dashed: false,
        width: 1.3,
    });
    if run.metrics.iter().any(|m| m.clip_threshold.is_some()) {
        let threshold: Vec<(f64, Option<f64>)> = run
            .metrics
            .iter()
            .map(|m| (m.step as f64, m.clip_threshold))
            .collect();
        chart.series.push(Series {
            label: "clip threshold".into(),
            color: "#333".into(),
            points: binned(&threshold, MAX_POINTS, mean),
            dashed: true,
            width: 1.2,
        });
    }
    for m in &run.metrics {
        let (color, what) = if m.grad_norm.is_none() {
            ("#e0007a", "non-finite gradient")
        } else if m.skipped() {
            ("#d62728", m.decision.as_str())
        } else if m.spike {
            ("#f28e2b", "spike")
        } else {
            continue;
        };
        chart.markers.push(Marker {
            x: m.step as f64,
            y: m.grad_norm,
            color: color.into(),
            title: format!("step {}: {what} {}", m.step, m.reasons.join("; ")),
        });
        if chart.markers.len() >= 400 {
            break;
        }
    }
    chart.render()
}

fn heatmap(run: &RunData) -> Option<String> {
    let first = run.metrics.first()?;
    let rows = weight_names(first);
    if rows.is_empty() {
        return None;
    }
    let size = run.metrics.len().div_ceil(MAX_COLUMNS).max(1);
    let bins: Vec<&[MetricsRecord]> = run.metrics.chunks(size).collect();
    let cells = rows
        .iter()
        .map(|name| {
            bins.iter()
                .map(|bin| {
                    let values: Option<Vec<f64>> = bin
                        .iter()
                        .map(|m| m.tensor_norms.get(name).copied().unwrap_or(Some(f64::NAN)))
                        .collect();
                    values.map(|v| {
                        let m = max(&v);
                        if m > 0.0 {
                            m.log10()
                        } else if m == 0.0 {
                            f64::NEG_INFINITY
                        } else {
                            f64::NAN
                        }
                    })
                })
                .collect()
        })
        .collect();
    Some(
        Heatmap {
            title: format!("{}: ‖∇W‖ per layer", run_label(run)),
            rows: rows
                .iter()
                .map(|n| n.trim_end_matches(".weight").to_string())
                .collect(),
            columns: bins.iter().map(|b| b[0].step as f64).collect(),
            cells,
            x_label: "step".into(),
        }
        .render(),
    )
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
    for p in report.intro {
        let _ = write!(out, "<p class=\"note\">{}</p>", escape(p));
    }
    for t in report.tables {
        out.push_str(&t.render());
    }
    out.push_str(&outcome_table(report.runs).render());
    let mut by_task: BTreeMap<(String, String), Vec<&RunData>> = BTreeMap::new();
    for run in report.runs {
        let mut cell = run.summary.config.clone();
        if let Some(obj) = cell.as_object_mut() {
            for key in ["remedies", "seed"] {
                obj.remove(key);
            }
        }
        by_task
            .entry((run.summary.task.clone(), cell.to_string()))
            .or_default()
            .push(run);
    }
    for runs in by_task.values_mut() {
        // The unremedied run first: it is the reference every picture compares against.
        runs.sort_by_key(|r| r.summary.remedy != "none");
        let _ = write!(
            out,
            "<h2>{}</h2><p class=\"note\">{}</p>",
            escape(&runs[0].summary.task),
            escape(&describe(runs[0]))
        );
        let _ = write!(
            out,
            "<h3>Training loss of each remedy (color) against none (red); × marks the first non-finite loss</h3><div class=\"multiples losses\">{}</div>",
            loss_charts(runs)
        );
        let (chart, series) = depth_chart(runs);
        if !series.is_empty() {
            let _ = write!(
                out,
                "<section class=\"depth\">{}{}</section>",
                chart.render(),
                legend(&series)
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_sort_by_depth_and_the_head_comes_last() {
        let mut names = vec![
            "Mlp.layers.10.weight",
            "Mlp.head.weight",
            "Mlp.layers.2.weight",
            "Mlp.layers.0.weight",
        ];
        names.sort_by_key(|n| natural_key(n));
        assert_eq!(
            names,
            [
                "Mlp.layers.0.weight",
                "Mlp.layers.2.weight",
                "Mlp.layers.10.weight",
                "Mlp.head.weight"
            ]
        );
    }

    #[test]
    fn binning_keeps_non_finite_bins_visible() {
        let points: Vec<(f64, Option<f64>)> = (0..10)
            .map(|i| (i as f64, if i == 7 { None } else { Some(i as f64) }))
            .collect();
        let b = binned(&points, 5, max);
        assert_eq!(b.len(), 5);
        assert_eq!(b[0], (0.0, Some(1.0)));
        assert_eq!(b[3], (6.0, None));
    }
}
