//! The probe's results as terminal text (the HTML page, [`super::page`], embeds it too).

use std::fmt::Write as _;

use gradguard_report::table;

use super::agreement::percent_with_interval;
use super::{AgreementResult, Butterfly, ProbeConfig, ProbeResult, Verdict};

/// One line that says what was probed: the network, its initialization, its inputs.
pub fn describe(c: &ProbeConfig, r: &ProbeResult) -> String {
    let model = match c.cell {
        Some(cell) => format!(
            "{} cell of {} units over {} steps (adding-problem inputs)",
            cell.name(),
            c.width,
            c.seq_len
        ),
        None => format!(
            "MLP of {} layers × {} {} units{}{}",
            c.depth,
            c.width,
            c.activation.name(),
            if c.residual { ", residual" } else { "" },
            match c.norm {
                crate::models::Norm::Layer => ", layer norm",
                crate::models::Norm::Rms => ", rms norm",
                _ => "",
            }
        ),
    };
    let inputs = match (c.input_var, r.input_variance) {
        (Some(v), _) => format!("Gaussian inputs of variance {v}"),
        (None, Some(q)) => format!("inputs at q = {q:.4e}"),
        _ => "task inputs".into(),
    };
    format!(
        "{model}, {} init at gain {}, σ_b² {}; {inputs}; {} inputs × {} probes",
        c.init, c.init_gain, c.bias_var, c.inputs, c.probes
    )
}

/// The probe's text report: λ and its error, the predicted gradient ratio, the verdict, theory
/// beside measurement, the critical gain when calibrated (`critical`: measured, and predicted by
/// mean-field theory for MLPs), a table of per-layer gains, and the butterfly and agreement
/// results when they ran.
pub fn text_report(
    r: &ProbeResult,
    critical: Option<(Option<f64>, Option<f64>)>,
    fly: Option<&Butterfly>,
    agree: Option<&AgreementResult>,
) -> String {
    let c = &r.config;
    let unit = if c.cell.is_some() {
        "time step"
    } else {
        "layer"
    };
    let layers = r.per_layer_gain.len();
    let mut out = String::new();
    let _ = writeln!(out, "probe: {}", describe(c, r));
    let _ = writeln!(
        out,
        "λ (backward Lyapunov exponent per {unit}): {:+.5} ± {:.5}",
        r.lyapunov, r.lyapunov_err
    );
    let _ = writeln!(
        out,
        "predicted gradient ratio first/last {unit} = exp(λ·{layers}) = {:.4e}",
        r.predicted_gradient_ratio
    );
    let _ = writeln!(
        out,
        "forward perturbation exponent: {:+.5} per {unit}",
        r.forward_lyapunov
    );
    let _ = writeln!(
        out,
        "verdict: {} (critical when |λ| ≤ {:.4})",
        r.verdict.name(),
        r.tolerance
    );
    if let Some(d) = r.depth_to_1e3 {
        let bound = if r.verdict == Verdict::Exploding {
            "1e3"
        } else {
            "1e-3"
        };
        let _ = writeln!(out, "the gradient ratio passes {bound} at {d:.0} {unit}s");
    }
    if let Some(t) = r.theory {
        let _ = writeln!(
            out,
            "mean-field theory: q* = {}, χ = {:.5}, λ = ½ ln χ = {:+.5}",
            t.q_star
                .map_or("none (variance explodes)".into(), |q| format!("{q:.4e}")),
            t.chi,
            t.lyapunov
        );
    }
    if let Some((measured, predicted)) = critical {
        let _ = writeln!(
            out,
            "critical gain (λ = 0): measured {}, predicted {}",
            measured.map_or("not in the searched range".into(), |g| format!("{g:.4}")),
            predicted.map_or("–".into(), |g| format!("{g:.4}"))
        );
    }
    let step = (layers / 10).max(1);
    let rows: Vec<Vec<String>> = (0..layers)
        .step_by(step)
        .chain(std::iter::once(layers - 1))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|l| {
            vec![
                (l + 1).to_string(),
                format!("{:.4}", r.per_layer_gain[l]),
                format!("×÷{:.4}", r.per_layer_gain_err[l]),
                format!("{:.4}", r.per_layer_forward_gain[l]),
            ]
        })
        .collect();
    out.push_str(&table::render(
        &[unit, "backward gain", "±1σ", "forward gain"],
        &rows,
    ));
    if let Some(b) = fly {
        let last = b.distance.last().copied().flatten();
        let _ = writeln!(
            out,
            "butterfly: two runs {:.2e} apart at the start are {} apart after {} steps; growth {} per step{}",
            b.epsilon,
            last.map_or("NaN".into(), |d| format!("{d:.3e}")),
            b.distance.len() - 1,
            b.growth_rate.map_or("–".into(), |g| format!("{g:+.4}")),
            b.doubling_steps
                .map_or(String::new(), |d| format!(" (doubling every {d:.1} steps)"))
        );
    }
    if let Some(a) = agree {
        let _ = writeln!(
            out,
            "agreement with training ({} steps) over {} cells (seeds {:?}): the verdict (sign of \
             λ) {}, the depth-aware prediction (exp(λ·depth) above 1e3: diverges, below 1e-3: \
             stalls) {}, the informed prediction (first step, depth, chaos; thresholds chosen on \
             seed 0) {}",
            a.steps,
            a.cells.len(),
            a.seeds,
            percent_with_interval(a.rate, a.rate_interval),
            percent_with_interval(a.rate_depth_aware, a.rate_depth_aware_interval),
            percent_with_interval(a.rate_informed, a.rate_informed_interval)
        );
        let rows: Vec<Vec<String>> = a
            .cells
            .iter()
            .map(|c| {
                vec![
                    c.seed.to_string(),
                    c.depth.to_string(),
                    format!("{}", c.gain),
                    format!("{:+.4}", c.lyapunov),
                    c.verdict.name().into(),
                    format!("{:.2e}", c.gradient_ratio),
                    c.outcome.clone(),
                    if c.agree { "yes" } else { "no" }.into(),
                    if c.agree_depth_aware { "yes" } else { "no" }.into(),
                    c.first_update_ratio
                        .map_or("non-finite".into(), |r| format!("{r:.2e}")),
                    c.correlation_depth
                        .map_or("–".into(), |x| format!("{x:.3}")),
                    c.expected_informed.clone(),
                    if c.agree_informed { "yes" } else { "no" }.into(),
                ]
            })
            .collect();
        out.push_str(&table::render(
            &[
                "seed",
                "depth",
                "gain",
                "λ",
                "verdict",
                "exp(λ·depth)",
                "training",
                "agrees",
                "depth-aware agrees",
                "first step ‖Δθ‖/‖θ‖",
                "ξ_c",
                "informed",
                "informed agrees",
            ],
            &rows,
        ));
    }
    out
}
