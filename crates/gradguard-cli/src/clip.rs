//! `gradguard clip IN OUT RULE… [--json]`: apply clipping rules to a gradient file.

use anyhow::Result;
use clap::ArgMatches;
use gradguard::norm::total_norm;
use gradguard::rules::{Chain, Rule, RuleOptions, RuleOutcome, RuleSpec};
use gradguard::{Decision, Guard, GuardConfig, NormType, StepReport};
use serde::Serialize;

use crate::args::ClipArgs;
use crate::exit::BadInput;
use crate::files::{print_json, read_gradient_file, write_atomically};
use gradguard_report::table::{num, render};

/// A rule flag, in the order the user gave them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleFlag {
    /// `--value`.
    Value,
    /// `--per-tensor-norm`.
    PerTensorNorm,
    /// `--global-norm`.
    GlobalNorm,
    /// `--agc`.
    Agc,
    /// The k-th `--rule`.
    Registered(usize),
}

/// The rule flags present, in command-line order.
pub fn rule_order(m: &ArgMatches) -> Vec<RuleFlag> {
    let mut found: Vec<(usize, RuleFlag)> = [
        ("value", RuleFlag::Value),
        ("per_tensor_norm", RuleFlag::PerTensorNorm),
        ("global_norm", RuleFlag::GlobalNorm),
        ("agc", RuleFlag::Agc),
    ]
    .into_iter()
    .filter_map(|(id, flag)| {
        m.indices_of(id)
            .and_then(|mut i| i.next())
            .map(|i| (i, flag))
    })
    .collect();
    if let Some(indices) = m.indices_of("rules") {
        found.extend(
            indices
                .enumerate()
                .map(|(k, i)| (i, RuleFlag::Registered(k))),
        );
    }
    found.sort_by_key(|(i, _)| *i);
    found.into_iter().map(|(_, f)| f).collect()
}

/// The rules in command-line order, each built by the core's registry: a dedicated flag is an
/// alias of its registry name (`--global-norm M` is `--rule clip-global=M`), and `--norm-type`,
/// `--eps` and `--layout` apply to every rule that takes them, however it was named.
fn build_rules(args: &ClipArgs, order: &[RuleFlag]) -> Result<Vec<Box<dyn Rule>>> {
    let options = RuleOptions {
        norm_type: args.norm_type,
        agc_eps: args.eps,
        layout: args.layout.into(),
    };
    let alias = |flag: &str, name: &str, v: Option<f64>| {
        let v = v.expect("flag present");
        RuleSpec::new(name, Some(v)).map_err(|e| BadInput(format!("--{flag} {v}: {e}")))
    };
    let mut rules: Vec<Box<dyn Rule>> = Vec::new();
    for flag in order {
        let spec = match flag {
            RuleFlag::Value => alias("value", "clip-value", args.value)?,
            RuleFlag::PerTensorNorm => alias("per-tensor-norm", "clip-norm", args.per_tensor_norm)?,
            RuleFlag::GlobalNorm => alias("global-norm", "clip-global", args.global_norm)?,
            RuleFlag::Agc => alias("agc", "agc", args.agc)?,
            RuleFlag::Registered(k) => args.rules[*k],
        };
        let rule = spec.build_with(&options)?;
        if rule.needs_parameters() && args.params.is_none() {
            return Err(BadInput(format!("rule {spec} needs --params")).into());
        }
        rules.push(rule);
    }
    if rules.is_empty() {
        return Err(BadInput(
            "no rule given: use --value, --per-tensor-norm, --global-norm, --agc or --rule".into(),
        )
        .into());
    }
    Ok(rules)
}

#[derive(Serialize)]
struct ClipSummary<'a> {
    input: String,
    output: Option<String>,
    decision: Decision,
    norm_type: NormType,
    /// The total norm of all gradients as one vector, in `norm_type`'s p (PyTorch's
    /// `clip_grad_norm_` return value), before and after the rules.
    total_norm_before: f64,
    total_norm_after: f64,
    /// The same totals in L2, whatever `norm_type` is.
    total_l2_before: f64,
    total_l2_after: f64,
    /// The factor of the last global-norm rule, when one ran.
    scale: Option<f64>,
    rules: &'a [RuleOutcome],
    reasons: &'a [String],
    non_finite: u64,
}

/// Runs the command.
pub fn run(args: &ClipArgs, order: &[RuleFlag]) -> Result<()> {
    let rules = build_rules(args, order)?;
    let mut file = read_gradient_file(&args.input, args.params.as_deref())?;
    let config = GuardConfig {
        non_finite: args.on_non_finite.into(),
        grad_spike: None,
        loss_spike: None,
        max_consecutive_bad: u32::MAX,
        ..GuardConfig::default()
    };
    let mut guard = Guard::new(config, Chain::new(rules)?)?;
    let grads = file.grads();
    let total_before = total_norm(grads, &grads.stats(), args.norm_type);
    let report = guard.step(file.grads_mut(), None)?;
    let grads = file.grads();
    let total_after = total_norm(grads, &grads.stats(), args.norm_type);
    let written = report.decision == Decision::Apply;
    if written {
        // Each tensor goes back in the dtype it came in (narrower ones rounded to nearest even).
        write_atomically(&args.output, &file.to_bytes()?)?;
    }
    let summary = ClipSummary {
        input: args.input.display().to_string(),
        output: written.then(|| args.output.display().to_string()),
        decision: report.decision,
        norm_type: args.norm_type,
        total_norm_before: total_before,
        total_norm_after: total_after,
        total_l2_before: report.norm_before,
        total_l2_after: report.norm_after,
        scale: report
            .rules
            .iter()
            .rev()
            .find(|o| o.rule == "clip-global")
            .and_then(|o| o.scale),
        rules: &report.rules,
        reasons: &report.reasons,
        non_finite: report.tensors.iter().map(|t| t.non_finite).sum(),
    };
    if args.json {
        return print_json(&summary);
    }
    print_text(&summary, &report);
    Ok(())
}

fn norm_name(norm: NormType) -> String {
    match norm {
        NormType::L1 => "L1".into(),
        NormType::L2 => "L2".into(),
        NormType::Inf => "L∞".into(),
        NormType::P(p) => format!("L{p}"),
    }
}

fn print_text(s: &ClipSummary<'_>, report: &StepReport) {
    let rows: Vec<Vec<String>> = s
        .rules
        .iter()
        .map(|o| {
            vec![
                o.rule.clone(),
                format!("{:?}", o.action).to_lowercase(),
                o.norm.map_or("-".into(), num),
                o.threshold.map_or("-".into(), num),
                o.scale.map_or("-".into(), num),
                o.tensors_changed.to_string(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        print!(
            "{}",
            render(
                &[
                    "rule",
                    "action",
                    "norm",
                    "threshold",
                    "scale",
                    "tensors changed"
                ],
                &rows
            )
        );
    }
    println!(
        "total norm ({}) before {}, after {}; {} tensors",
        norm_name(s.norm_type),
        num(s.total_norm_before),
        num(s.total_norm_after),
        report.tensors.len()
    );
    for r in s.reasons {
        println!("note: {r}");
    }
    match &s.output {
        Some(out) => println!("wrote {out}"),
        None => println!("skipped: no output written"),
    }
}
