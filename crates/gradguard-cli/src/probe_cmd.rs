//! `gradguard probe`: gains, Lyapunov exponent, verdict, edge of chaos — before training.

use anyhow::Result;
use gradguard::probe::RateSearch;
use gradguard_lab::RunConfig;
use gradguard_lab::models::{Activation, Init};
use gradguard_lab::probe::meanfield::critical_gain;
use gradguard_lab::probe::page::html_report;
use gradguard_lab::probe::text::text_report;
use gradguard_lab::probe::{
    ProbeConfig, ProbeResult, ProbeSettings, agreement, butterfly, calibrate, phase_diagram, probe,
    probe_run_dir, probe_task, rate_agreement, rate_agreement_page, rate_agreement_text,
};
use gradguard_lab::tasks::Task;

use crate::exit::BadInput;
use crate::files::write_atomically;
use crate::lab::lab_error;
use crate::lab_args::{ProbeArgs, RunFlags};

/// Depths of the report's phase diagram.
const PHASE_DEPTHS: [usize; 4] = [10, 20, 50, 100];

fn config_of(args: &ProbeArgs) -> ProbeConfig {
    let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    ProbeConfig {
        depth: n(args.depth.unwrap_or(50)),
        width: n(args.width.unwrap_or(256)),
        activation: args.activation.unwrap_or(Activation::Tanh),
        init: args.init.unwrap_or(Init::Gaussian),
        init_gain: args.init_gain.unwrap_or(1.0),
        bias_var: args.bias_var,
        norm: args.norm,
        residual: args.residual,
        cell: args.cell,
        seq_len: n(args.seq_len.unwrap_or(100)),
        probes: n(args.probes),
        inputs: n(args.inputs),
        input_var: args.input_var,
        input_q: None,
        seed: args.seed.unwrap_or(0),
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
        lr: args.lr.unwrap_or(SGD_LR),
        steps: args.train_steps,
        seed: c.seed,
        ..RunConfig::for_task(task)
    }
}

fn probe_trained(args: &ProbeArgs, dir: &std::path::Path) -> Result<ProbeResult> {
    let rows = usize::try_from(args.inputs * args.probes).unwrap_or(usize::MAX);
    probe_run_dir(dir, rows, args.seed.unwrap_or(0)).map_err(lab_error)
}

/// The SGD rate of --butterfly and --agreement when --lr is not given.
const SGD_LR: f64 = 0.1;

/// The run configuration of `--task`: the task's defaults under the flags given.
fn task_config_of(args: &ProbeArgs, task: Task) -> RunConfig {
    let flags = RunFlags {
        task,
        depth: args.depth,
        width: args.width,
        activation: args.activation,
        cell: args.cell,
        seq_len: args.seq_len,
        optimizer: args.optimizer,
        init: args.init,
        init_gain: args.init_gain,
        lr: args.lr,
        batch: args.batch,
        seed: args.seed,
        ..RunFlags::for_task(task)
    };
    flags.config()
}

/// `gradguard probe --task`: the model probe on a lab task's own model.
fn run_task(args: &ProbeArgs, task: Task) -> Result<()> {
    let config = task_config_of(args, task);
    config.validate().map_err(lab_error)?;
    let settings = ProbeSettings {
        trial_steps: usize::try_from(args.trial_steps).unwrap_or(usize::MAX),
        seed: args.seed.unwrap_or(0),
        ..ProbeSettings::at_rate(config.lr)
    };
    if args.agreement {
        return run_rate_agreement(args, &config, settings);
    }
    if args.report.is_some() {
        return Err(
            BadInput("--report with --task draws --agreement: add --agreement".into()).into(),
        );
    }
    let probe = probe_task(&config, settings).map_err(lab_error)?;
    if args.json {
        // The answer at the top, for scripts; every measurement under `probe`.
        let mut value = serde_json::to_value(&probe)?;
        let obj = value.as_object_mut().expect("a task probe is an object");
        let (verdict, safe) = (&probe.probe.verdict, &probe.probe.safe_rate);
        obj.insert("verdict".into(), serde_json::to_value(verdict.health)?);
        obj.insert("largest_safe_rate".into(), serde_json::to_value(safe.rate)?);
        obj.insert(
            "first_diverging_rate".into(),
            serde_json::to_value(safe.first_diverging)?,
        );
        return crate::files::print_json(&value);
    }
    print!("{}", probe.text());
    Ok(())
}

/// `gradguard probe --task … --agreement`: the probe's safe rate against whole runs' at every
/// seed × depth × gain.
fn run_rate_agreement(args: &ProbeArgs, base: &RunConfig, settings: ProbeSettings) -> Result<()> {
    let seeds = match args.agreement_seeds.as_slice() {
        [] => vec![base.seed],
        seeds => seeds.to_vec(),
    };
    let mut configs = Vec::new();
    for &seed in &seeds {
        for &depth in &args.agreement_depths {
            for &gain in &args.gains {
                let config = RunConfig {
                    seed,
                    depth: usize::try_from(depth).unwrap_or(usize::MAX),
                    init_gain: gain,
                    ..base.clone()
                };
                config.validate().map_err(lab_error)?;
                configs.push(config);
            }
        }
    }
    let measure = RateSearch::default();
    let result = rate_agreement(&configs, settings, &measure, 0).map_err(lab_error)?;
    let text = rate_agreement_text(&result);
    if let Some(path) = &args.report {
        let page = rate_agreement_page(&result, &text, measure.min_rate);
        write_atomically(path, page.as_bytes())?;
    }
    if args.json {
        return crate::files::print_json(&serde_json::to_value(&result)?);
    }
    print!("{text}");
    if let Some(path) = &args.report {
        println!("report: {}", path.display());
    }
    Ok(())
}

/// Runs `gradguard probe`.
pub fn run(args: &ProbeArgs) -> Result<()> {
    if let Some(task) = args.task {
        return run_task(args, task);
    }
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
            lr: args.lr.unwrap_or(SGD_LR),
            steps: args.train_steps,
            seed: config.seed,
            ..RunConfig::for_task(Task::Mlp)
        };
        let depths: Vec<usize> = args
            .agreement_depths
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX).max(1))
            .collect();
        Some(agreement(&base, &depths, &args.gains, &args.agreement_seeds, 0).map_err(lab_error)?)
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
