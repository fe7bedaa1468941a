//! The pictures of one task's runs: loss against the unremedied run, gradient norm per layer at
//! step 0, global norm per step with threshold and events, and the per-layer heatmap.

use super::svg::{BASELINE, PALETTE};
use super::{Heatmap, LineChart, Marker, Series};
use crate::record::MetricsRecord;
use crate::summary::RunData;

/// Points a line keeps; longer runs are binned.
pub(super) const MAX_POINTS: usize = 800;
/// Columns a heatmap keeps; longer runs are binned (by the bin's largest norm).
const MAX_COLUMNS: usize = 160;

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
pub(super) fn binned(
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

pub(super) fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

pub(super) fn run_label(run: &RunData) -> String {
    run.summary.label()
}

fn color(run: &RunData, i: usize) -> String {
    if run.summary.is_baseline() {
        BASELINE.to_string()
    } else {
        PALETTE[i % PALETTE.len()].to_string()
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
pub(super) fn loss_charts(runs: &[&RunData]) -> String {
    let baseline = runs.iter().find(|r| r.summary.is_baseline());
    // A blow-up is drawn at the top edge, 100× above the largest first loss.
    let cap = runs
        .iter()
        .filter_map(|r| r.metrics.first().and_then(|m| m.loss))
        .fold(f64::NEG_INFINITY, f64::max)
        * 100.0;
    let mut out = String::new();
    for (i, run) in runs.iter().enumerate() {
        if baseline.is_some() && run.summary.is_baseline() && runs.len() > 1 {
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
            let is_baseline = r.summary.is_baseline();
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

/// The loss scale of every run that has one, over steps (log₂ steps: each halving after an
/// overflow is one step down, each doubling after a run of good steps one up).
pub(super) fn scale_chart(runs: &[&RunData]) -> Option<LineChart> {
    let mut chart = LineChart {
        title: "Dynamic loss scale: halved (and the step skipped) on an overflow, doubled after 2,000 good steps".into(),
        size: (900.0, 260.0),
        x_label: "step".into(),
        y_label: "loss scale (log)".into(),
        log_y: true,
        ..Default::default()
    };
    for (i, run) in runs.iter().enumerate() {
        let points: Vec<(f64, Option<f64>)> = run
            .metrics
            .iter()
            .filter_map(|m| m.loss_scale.map(|s| (m.step as f64, Some(s))))
            .collect();
        if points.is_empty() {
            continue;
        }
        chart.series.push(run_line(run, i, points));
    }
    (!chart.series.is_empty()).then_some(chart)
}

pub(super) fn depth_chart(runs: &[&RunData]) -> (LineChart, Vec<Series>) {
    let mut chart = LineChart {
        title: "Gradient norm per layer at step 0: the product of per-layer factors (one line per distinct start)".into(),
        size: (900.0, 300.0),
        x_label: "layer (input → output)".into(),
        y_label: "‖∇W‖ at step 0 (log)".into(),
        log_y: true,
        ..Default::default()
    };
    for (i, run) in runs.iter().enumerate() {
        let Some(first) = run.metrics.first() else {
            continue;
        };
        let points: Vec<(f64, Option<f64>)> = weight_names(first)
            .iter()
            .enumerate()
            .map(|(k, n)| (k as f64, first.tensor_norms[n]))
            .collect();
        // Fewer than four weight matrices (a recurrent net) is no depth profile.
        if points.len() >= 4 {
            push_distinct(&mut chart, run, i, points);
        }
    }
    let series = chart.series.clone();
    (chart, series)
}

/// Gradients through time, one chart per measured moment (`first`: at the first step; else after
/// the last): ‖∂L/∂h_t‖ over t for every recurrent run, one line per distinct profile.
pub(super) fn time_chart(runs: &[&RunData], first: bool) -> Option<LineChart> {
    let when = if first {
        "at step 0"
    } else {
        "after the last step"
    };
    let mut chart = LineChart {
        title: format!("Gradient through time {when}: ‖∂L/∂h_t‖, a product of per-step Jacobians"),
        size: (900.0, 300.0),
        x_label: "time step t (first → last)".into(),
        y_label: format!("‖∂L/∂h_t‖ {when} (log)"),
        log_y: true,
        ..Default::default()
    };
    for (i, run) in runs.iter().enumerate() {
        let measured = &run.summary.time_gradients;
        let Some(at) = (if first {
            measured.first()
        } else {
            measured.last()
        }) else {
            continue;
        };
        if first != (at.step == 0) {
            continue;
        }
        let points: Vec<(f64, Option<f64>)> = at
            .norms
            .iter()
            .enumerate()
            .map(|(t, &n)| ((t + 1) as f64, n))
            .collect();
        push_distinct(&mut chart, run, i, points);
    }
    (!chart.series.is_empty()).then_some(chart)
}

/// Adds run `i`'s line to a profile chart unless an earlier run drew the same one: remedies that
/// leave the initial network as it is draw the same profile, drawn once.
fn push_distinct(chart: &mut LineChart, run: &RunData, i: usize, points: Vec<(f64, Option<f64>)>) {
    if chart.series.iter().any(|s| s.points == points) {
        return;
    }
    chart.series.push(run_line(run, i, points));
}

/// Run `i`'s solid line in its color and legend label.
pub(super) fn run_line(run: &RunData, i: usize, points: Vec<(f64, Option<f64>)>) -> Series {
    Series {
        label: run_label(run),
        color: color(run, i),
        points,
        dashed: false,
        width: 2.0,
    }
}

pub(super) fn norm_chart(run: &RunData, i: usize) -> String {
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

pub(super) fn heatmap(run: &RunData) -> Option<String> {
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
