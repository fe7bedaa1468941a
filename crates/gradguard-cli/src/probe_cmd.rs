//! `gradguard probe`: gains, Lyapunov exponent, verdict, edge of chaos — before training.

use std::fmt::Write as _;

use anyhow::Result;
use gradguard_lab::RunConfig;
use gradguard_lab::probe::meanfield::critical_gain;
use gradguard_lab::probe::page::html_report;
use gradguard_lab::probe::{
    AgreementResult, Butterfly, ProbeConfig, ProbeResult, Verdict, agreement, butterfly, calibrate,
    phase_diagram, probe, probe_run_dir,
};
use gradguard_lab::tasks::Task;

use crate::files::write_atomically;
use crate::lab::lab_error;
use crate::lab_args::ProbeArgs;
use crate::table;

/// Depths of the report's phase diagram.
const PHASE_DEPTHS: [usize; 4] = [10, 20, 50, 100];

fn config_of(args: &ProbeArgs) -> ProbeConfig {
    let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    ProbeConfig {
        depth: n(args.depth),
        width: n(args.width),
        activation: args.activation,
        init: args.init,
        init_gain: args.init_gain,
        bias_var: args.bias_var,
        norm: args.norm,
        residual: args.residual,
        cell: args.cell,
        seq_len: n(args.seq_len),
        probes: n(args.probes),
        inputs: n(args.inputs),
        input_var: args.input_var,
        input_q: None,
        seed: args.seed,
    }
}

/// The lab run whose network matches the probe's (for --butterfly).
fn run_config_of(args: &ProbeArgs, c: &ProbeConfig) -> RunConfig {
    let task = if c.cell.is_some() {
        Task::Adding
    } else {
        Task::Mlp
    };
    RunConfig {
        depth: c.depth,
        width: c.width,
        activation: c.activation,
        cell: c.cell.unwrap_or(gradguard_lab::models::Cell::Rnn),
        seq_len: c.seq_len,
        init: c.init,
        init_gain: c.init_gain,
        lr: args.lr,
        steps: args.train_steps,
        seed: c.seed,
        ..RunConfig::for_task(task)
    }
}

fn probe_trained(args: &ProbeArgs, dir: &std::path::Path) -> Result<ProbeResult> {
    let rows = usize::try_from(args.inputs * args.probes).unwrap_or(usize::MAX);
    probe_run_dir(dir, rows, args.seed).map_err(lab_error)
}

fn describe(c: &ProbeConfig, r: &ProbeResult) -> String {
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
                gradguard_lab::models::Norm::Layer => ", layer norm",
                gradguard_lab::models::Norm::Rms => ", rms norm",
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

fn text_report(
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
            "agreement with training ({} steps) over {} cells: the verdict (sign of λ) {:.0}%, \
             the depth-aware prediction (exp(λ·depth) above 1e3: diverges, below 1e-3: stalls) {:.0}%",
            a.steps,
            a.cells.len(),
            100.0 * a.rate,
            100.0 * a.rate_depth_aware
        );
        let rows: Vec<Vec<String>> = a
            .cells
            .iter()
            .map(|c| {
                vec![
                    c.depth.to_string(),
                    format!("{}", c.gain),
                    format!("{:+.4}", c.lyapunov),
                    c.verdict.name().into(),
                    format!("{:.2e}", c.gradient_ratio),
                    c.outcome.clone(),
                    if c.agree { "yes" } else { "no" }.into(),
                    if c.agree_depth_aware { "yes" } else { "no" }.into(),
                ]
            })
            .collect();
        out.push_str(&table::render(
            &[
                "depth",
                "gain",
                "λ",
                "verdict",
                "exp(λ·depth)",
                "training",
                "agrees",
                "depth-aware agrees",
            ],
            &rows,
        ));
    }
    out
}

/// Runs `gradguard probe`.
pub fn run(args: &ProbeArgs) -> Result<()> {
    let config = config_of(args);
    let result = match &args.from {
        Some(dir) => probe_trained(args, dir)?,
        None => probe(&config).map_err(lab_error)?,
    };
    let critical = if args.calibrate {
        let measured = calibrate(&config, 0.3, 4.0).map_err(lab_error)?;
        let predicted =
            (config.cell.is_none()).then(|| critical_gain(config.activation, config.bias_var));
        Some((measured, predicted))
    } else {
        None
    };
    let fly = if args.butterfly {
        Some(butterfly(&run_config_of(args, &config), args.epsilon).map_err(lab_error)?)
    } else {
        None
    };
    let agree = if args.agreement {
        let base = RunConfig {
            activation: config.activation,
            width: config.width.min(64),
            lr: args.lr,
            steps: args.train_steps,
            seed: config.seed,
            ..RunConfig::for_task(Task::Mlp)
        };
        let depths: Vec<usize> = args
            .agreement_depths
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX).max(1))
            .collect();
        Some(agreement(&base, &depths, &args.gains, 0).map_err(lab_error)?)
    } else {
        None
    };
    let text = text_report(&result, critical, fly.as_ref(), agree.as_ref());
    if let Some(path) = &args.report {
        let phase = phase_diagram(&config, &args.gains, &PHASE_DEPTHS).map_err(lab_error)?;
        let html = html_report(&result, &text, &phase, fly.as_ref(), agree.as_ref());
        write_atomically(path, html.as_bytes())?;
    }
    if args.json {
        let mut value = serde_json::to_value(&result)?;
        let obj = value.as_object_mut().expect("a probe result is an object");
        if let Some((measured, predicted)) = critical {
            obj.insert("critical_gain".into(), serde_json::to_value(measured)?);
            obj.insert(
                "predicted_critical_gain".into(),
                serde_json::to_value(predicted)?,
            );
        }
        if let Some(b) = &fly {
            obj.insert("butterfly".into(), serde_json::to_value(b)?);
        }
        if let Some(a) = &agree {
            obj.insert("agreement".into(), serde_json::to_value(a)?);
        }
        return crate::files::print_json(&value);
    }
    print!("{text}");
    if let Some(path) = &args.report {
        println!("report: {}", path.display());
    }
    Ok(())
}
