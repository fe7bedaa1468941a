//! The probe's HTML page: the gain per layer on a log scale, the phase diagram, the butterfly.

use std::fmt::Write as _;

use crate::probe::{AgreementResult, Butterfly, PhaseDiagram, ProbeResult, Verdict};
use gradguard_report::html::{CategoryGrid, LineChart, STYLE, Series, escape, legend};

fn verdict_color(v: Verdict) -> &'static str {
    match v {
        Verdict::Exploding => "#e15759",
        Verdict::Vanishing => "#4e79a7",
        Verdict::Critical => "#59a14f",
    }
}

/// The page for probe `r`, its text summary `text`, its phase diagram and the runs asked for: a
/// self-contained HTML document (inline SVG, no script).
pub fn html_report(
    r: &ProbeResult,
    text: &str,
    phase: &PhaseDiagram,
    fly: Option<&Butterfly>,
    agree: Option<&AgreementResult>,
) -> String {
    let unit = if r.config.cell.is_some() {
        "time step"
    } else {
        "layer"
    };
    let points = |v: &[f64]| -> Vec<(f64, Option<f64>)> {
        v.iter()
            .enumerate()
            .map(|(i, g)| ((i + 1) as f64, Some(*g)))
            .collect()
    };
    let band = |sign: f64| -> Vec<(f64, Option<f64>)> {
        r.per_layer_gain
            .iter()
            .zip(&r.per_layer_gain_err)
            .enumerate()
            .map(|(i, (g, e))| ((i + 1) as f64, Some(g * e.powf(sign))))
            .collect()
    };
    let series = vec![
        Series {
            label: "backward gain ‖Jᵀv‖/‖v‖".into(),
            color: "#4e79a7".into(),
            points: points(&r.per_layer_gain),
            dashed: false,
            width: 2.0,
        },
        Series {
            label: "±1σ".into(),
            color: "#9bb8d6".into(),
            points: band(1.0),
            dashed: true,
            width: 1.0,
        },
        Series {
            label: "±1σ".into(),
            color: "#9bb8d6".into(),
            points: band(-1.0),
            dashed: true,
            width: 1.0,
        },
        Series {
            label: "forward perturbation growth".into(),
            color: "#f28e2b".into(),
            points: points(&r.per_layer_forward_gain),
            dashed: false,
            width: 1.5,
        },
        Series {
            label: "gain 1 (critical)".into(),
            color: "#333".into(),
            points: vec![(1.0, Some(1.0)), (r.per_layer_gain.len() as f64, Some(1.0))],
            dashed: true,
            width: 1.0,
        },
    ];
    let gains = LineChart {
        title: format!("Gain per {unit} (log scale)"),
        x_label: format!("{unit} (input side first)"),
        y_label: "gain (log)".into(),
        log_y: true,
        series: series.clone(),
        size: (820.0, 300.0),
        ..Default::default()
    };
    let grid = CategoryGrid {
        title: "Phase diagram: the probe's verdict at each gain and depth (cell text: λ)".into(),
        x_label: if r.config.cell.is_some() {
            "time steps"
        } else {
            "depth"
        }
        .into(),
        y_label: "gain".into(),
        columns: phase.depths.iter().map(|d| d.to_string()).collect(),
        rows: phase.gains.iter().map(|g| format!("{g}")).collect(),
        cells: phase
            .verdict
            .iter()
            .zip(&phase.lyapunov)
            .zip(&phase.gains)
            .map(|((vs, ls), g)| {
                vs.iter()
                    .zip(ls)
                    .zip(&phase.depths)
                    .map(|((v, l), d)| {
                        (
                            verdict_color(*v).to_string(),
                            format!("{l:+.3}"),
                            format!("gain {g}, depth {d}: {} (λ = {l:+.4})", v.name()),
                        )
                    })
                    .collect()
            })
            .collect(),
        legend: [Verdict::Exploding, Verdict::Critical, Verdict::Vanishing]
            .map(|v| (verdict_color(v).to_string(), v.name().to_string()))
            .to_vec(),
    };
    let mut body = String::new();
    let _ = write!(
        body,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>gradguard probe</title><style>{STYLE}</style></head><body><h1>gradguard probe</h1><pre>{}</pre>{}{}{}",
        escape(text),
        gains.render(),
        legend(&series),
        grid.render()
    );
    if let Some(b) = fly {
        let chart = LineChart {
            title: "Butterfly: distance between two runs that started ε apart".into(),
            x_label: "step".into(),
            y_label: "‖θ_A − θ_B‖ (log)".into(),
            log_y: true,
            series: vec![Series {
                label: "weight distance".into(),
                color: "#b07aa1".into(),
                points: b
                    .distance
                    .iter()
                    .enumerate()
                    .map(|(t, d)| (t as f64, *d))
                    .collect(),
                dashed: false,
                width: 2.0,
            }],
            size: (820.0, 260.0),
            ..Default::default()
        };
        body.push_str(&chart.render());
    }
    if let Some(a) = agree {
        let _ = write!(
            body,
            "<p class=\"note\">Against training over {} cells (seeds {:?}): the verdict (exploding ↔ diverged, vanishing ↔ stable, critical ↔ learning) agreed in {}; the depth-aware prediction (exp(λ·depth) above 1e3 ↔ diverged, below 1e-3 ↔ stable, between ↔ learning) in {}; the informed prediction (the first step's size, the depth in correlation depths, whether the forward signal is bounded; thresholds chosen on seed 0) in {}.</p>",
            a.cells.len(),
            a.seeds,
            super::agreement::percent_with_interval(a.rate, a.rate_interval),
            super::agreement::percent_with_interval(
                a.rate_depth_aware,
                a.rate_depth_aware_interval
            ),
            super::agreement::percent_with_interval(a.rate_informed, a.rate_informed_interval)
        );
    }
    body.push_str("</body></html>\n");
    body
}
