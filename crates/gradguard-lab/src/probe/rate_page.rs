//! The model probe's agreement page: every cell's predicted largest safe rate against the one
//! whole runs measured, on log–log axes, with the 2× band that counts as agreement.

use gradguard_report::html::{LineChart, Marker, STYLE, Series, escape, legend};

use super::rate_agreement::{AGREEMENT_FACTOR, RateAgreement, RateCell};

const AGREE: &str = "#59a14f";
const DISAGREE: &str = "#e15759";

/// A rate's log10 (`None` for no rate).
fn log_rate(rate: Option<f64>) -> Option<f64> {
    rate.filter(|r| *r > 0.0).map(f64::log10)
}

/// The hover text of one cell.
fn cell_title(c: &RateCell) -> String {
    let rate = |r: Option<f64>| r.map_or("none".into(), |r| format!("{r:.3e}"));
    format!(
        "{} seed {}, depth {}, width {}, gain {}: predicted {}, measured {}; verdict {} at {:.0e}, the run {}",
        c.config.task,
        c.config.seed,
        c.config.depth,
        c.config.width,
        c.config.init_gain,
        rate(c.predicted),
        rate(c.measured),
        c.verdict,
        c.config.lr,
        c.outcome
    )
}

/// The page for `result` with its text table `text`: a self-contained HTML document (inline
/// SVG, no script). A cell with no predicted safe rate is drawn as a cross at the top edge; one
/// with no measured safe rate at the left edge of the search range, `min_rate`.
pub fn rate_agreement_page(result: &RateAgreement, text: &str, min_rate: f64) -> String {
    let points: Vec<(f64, Option<f64>, &RateCell)> = result
        .cells
        .iter()
        .map(|c| {
            let x = log_rate(c.measured).unwrap_or(min_rate.log10());
            (x, log_rate(c.predicted), c)
        })
        .collect();
    let (lo, hi) = points
        .iter()
        .flat_map(|(x, y, _)| std::iter::once(*x).chain(*y))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let (lo, hi) = if lo.is_finite() {
        (lo.floor(), hi.ceil().max(lo.floor() + 1.0))
    } else {
        (min_rate.log10(), 1.0)
    };
    let band = AGREEMENT_FACTOR.log10();
    let line = |offset: f64, label: &str, dashed: bool| Series {
        label: label.into(),
        color: if dashed { "#999" } else { "#333" }.into(),
        points: vec![(lo, Some(lo + offset)), (hi, Some(hi + offset))],
        dashed,
        width: 1.0,
    };
    let series = vec![
        line(0.0, "predicted = measured", false),
        line(band, &format!("{AGREEMENT_FACTOR}× band"), true),
        line(-band, &format!("{AGREEMENT_FACTOR}× band"), true),
    ];
    let markers = points
        .iter()
        .map(|(x, y, c)| Marker {
            x: *x,
            y: *y,
            color: if c.rates_agree() { AGREE } else { DISAGREE }.into(),
            title: cell_title(c),
        })
        .collect();
    let chart = LineChart {
        title: "Largest safe rate: the probe's prediction against whole unprotected runs".into(),
        x_label: "measured (log₁₀ of the rate)".into(),
        y_label: "predicted (log₁₀)".into(),
        log_y: false,
        series: series.clone(),
        markers,
        size: (560.0, 520.0),
        y_max: None,
    };
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>gradguard probe: safe rates</title><style>{STYLE}</style></head><body><h1>gradguard probe: predicted against measured safe rates</h1>{}{}<p class=\"note\">Green: within {AGREEMENT_FACTOR}× (the dashed band); red: outside. Hover a point for its cell.</p><pre>{}</pre></body></html>\n",
        chart.render(),
        legend(&series[..2]),
        escape(text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RunConfig;
    use crate::tasks::Task;
    use gradguard::probe::Health;
    use gradguard_report::Outcome;

    fn cell(predicted: Option<f64>, measured: Option<f64>) -> RateCell {
        RateCell {
            config: RunConfig::for_task(Task::Mlp),
            predicted,
            predicted_diverging: None,
            measured,
            measured_diverging: None,
            measured_learning: measured,
            verdict: Health::Healthy,
            outcome: Outcome::Learning,
            trial_change: None,
            input_to_output: None,
            butterfly_exponent: None,
            first_update_ratio: None,
            after_trial_input_to_output: None,
            last_step_input_to_output: None,
            through_time: None,
            runs: 3,
            probe_seconds: 0.1,
        }
    }

    #[test]
    fn every_cell_is_a_point_colored_by_agreement() {
        let result = RateAgreement {
            cells: vec![
                cell(Some(0.1), Some(0.12)),
                cell(Some(1.0), Some(0.1)),
                cell(None, Some(0.01)),
            ],
            rate_share: 1.0 / 3.0,
            rate_interval: (0.0, 1.0),
            verdict_share: 1.0,
            verdict_interval: (0.0, 1.0),
            learning_share: 1.0 / 3.0,
            learning_interval: (0.0, 1.0),
            explosion_share: 1.0,
            explosion_interval: (0.0, 1.0),
        };
        let page = rate_agreement_page(&result, "a <table>", 1e-6);
        assert_eq!(page.matches(AGREE).count(), 1, "one agreeing point");
        // Two disagreeing points: a circle and the cross of the missing prediction.
        assert_eq!(page.matches(DISAGREE).count(), 2);
        assert!(page.contains("predicted none, measured 1.000e-2"));
        assert!(page.contains("a &lt;table&gt;"), "the text is escaped");
    }
}
