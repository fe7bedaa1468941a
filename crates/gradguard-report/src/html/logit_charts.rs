//! The pictures of a transformer language model's logits over a run, one line per run: the
//! largest attention logit (its growth precedes divergence at high learning rates, Wortsman et
//! al. 2023 §3.1) and the output softmax's mean `log Z` (its drift, §3.2).

use super::LineChart;
use super::run_charts::{MAX_POINTS, binned, mean, run_line};
use crate::record::MetricsRecord;
use crate::summary::RunData;

/// What a chart draws of one step (`None`: nothing to draw there).
type StepValue = fn(&MetricsRecord) -> Option<f64>;

/// The two charts, for the runs that recorded logit telemetry (none when no run did).
pub(super) fn logit_charts(runs: &[&RunData]) -> Vec<LineChart> {
    let chart = |title: &str, y_label: &str, log_y: bool| LineChart {
        title: title.into(),
        size: (900.0, 280.0),
        x_label: "step".into(),
        y_label: y_label.into(),
        log_y,
        ..Default::default()
    };
    let attention = chart(
        "Largest attention logit q·k/√d_k over the layers, per step",
        "largest attention logit (log)",
        true,
    );
    let log_z = chart(
        "Mean log Z of the output softmax, per step (0: normalized logits)",
        "mean log Z",
        false,
    );
    let measures: [(LineChart, StepValue); 2] = [
        (attention, MetricsRecord::attention_logit_peak),
        (log_z, |m| m.log_z_mean),
    ];
    measures
        .into_iter()
        .filter_map(|(mut chart, value)| {
            for (i, run) in runs.iter().enumerate() {
                if run.metrics.iter().all(|m| m.attention_logit_max.is_empty()) {
                    continue;
                }
                let points: Vec<(f64, Option<f64>)> = run
                    .metrics
                    .iter()
                    .map(|m| (m.step as f64, value(m)))
                    .collect();
                chart
                    .series
                    .push(run_line(run, i, binned(&points, MAX_POINTS, mean)));
            }
            (!chart.series.is_empty()).then_some(chart)
        })
        .collect()
}
