//! The report's first screen: the unprotected run exploding, the default guard's run beside the
//! best hand-picked remedy, and a three-row table whose guard row is the answer.

use std::fmt::Write;

use super::svg::{BASELINE, escape, legend};
use super::{LineChart, Marker, Series, Table, loss_cell};
use crate::summary::{RunData, best_hand_picked};

/// The default guard's color (green): the answer.
const GUARD: &str = "#2ca02c";
/// The best hand-picked remedy's color (blue).
const BEST: &str = "#1f77b4";

/// The headline of one task's runs: `None` unless they hold `none`, `guard` and another remedy
/// that finished.
pub fn guard_headline(runs: &[&RunData]) -> Option<String> {
    let none = runs.iter().find(|r| r.summary.is_baseline())?;
    let guard = runs.iter().find(|r| r.summary.guard_alone())?;
    let best = &runs[best_hand_picked(runs.iter().map(|r| &r.summary))?];
    let cap = [none, guard, best]
        .iter()
        .filter_map(|r| r.metrics.first().and_then(|m| m.loss))
        .fold(f64::NEG_INFINITY, f64::max)
        * 100.0;
    let mut chart = LineChart {
        title: format!(
            "{}: training loss without protection, with the default guard, and with the best \
             hand-picked remedy of this demo",
            none.summary.task
        ),
        x_label: "step".into(),
        y_label: "training loss (log)".into(),
        log_y: true,
        size: (900.0, 320.0),
        y_max: cap.is_finite().then_some(cap),
        ..Default::default()
    };
    for (run, label, color, width) in [
        (none, "none (unprotected)".to_string(), BASELINE, 1.4),
        (
            best,
            format!("{} (best hand-picked)", best.summary.remedy),
            BEST,
            1.6,
        ),
        (guard, "guard (default, no setting)".to_string(), GUARD, 2.6),
    ] {
        chart.series.push(Series {
            label,
            color: color.into(),
            points: run
                .metrics
                .iter()
                .map(|m| (m.step as f64, m.loss))
                .collect(),
            dashed: false,
            width,
        });
        if let Some(bad) = run.metrics.iter().find(|m| m.loss.is_none()) {
            chart.markers.push(Marker {
                x: bad.step as f64,
                y: None,
                color: color.into(),
                title: format!(
                    "{}: loss not finite at step {}",
                    run.summary.remedy, bad.step
                ),
            });
        }
    }
    let table = Table {
        caption: "The answer: the default guard, with no rule or threshold chosen".into(),
        headers: [
            "run",
            "outcome",
            "final held-out loss",
            "accuracy",
            "skipped / rollbacks",
        ]
        .map(String::from)
        .to_vec(),
        rows: [
            (none, "none (unprotected)"),
            (best, "best hand-picked remedy"),
            (guard, "guard (default)"),
        ]
        .iter()
        .map(|(r, what)| {
            let s = &r.summary;
            vec![
                format!("{what}: {}", s.remedy),
                s.outcome().to_string(),
                loss_cell(s.final_loss),
                s.accuracy
                    .map_or("–".into(), |a| format!("{:.1}%", 100.0 * a)),
                format!("{} / {}", s.skipped_steps, s.rollbacks),
            ]
        })
        .collect(),
    };
    let mut out = String::from("<section class=\"headline\">");
    out.push_str(&chart.render());
    out.push_str(&legend(&chart.series));
    out.push_str(&table.render());
    let _ = write!(
        out,
        "<p class=\"note\">{}</p></section>",
        escape(
            "The guard needs no clipping rule and no threshold: it bounds each step's change of \
             the weights relative to the weights (‖Δθ‖/‖θ‖), skips non-finite steps, rolls back \
             on loss spikes and backs off the rate. The best hand-picked remedy is the one with \
             the lowest final held-out loss among every other remedy run here."
        )
    );
    Some(out)
}
