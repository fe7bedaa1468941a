//! `gradguard demo`: the showcase. A deep MLP and a vanilla RNN on a long sequence, first without
//! a remedy, then with one remedy of every family; a transformer language model under AdamW over a
//! rate grid, plain, clipped and guarded ([`crate::demo_lm`]); a terminal table and `report.html`,
//! every claim taken from the runs just made.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use gradguard_lab::sweep::run_name;
use gradguard_lab::tasks::Task;
use gradguard_lab::{Precision, Remedy, RunConfig};
use gradguard_report::html::{Report, render};
use gradguard_report::{Outcome, RunData, RunSummary, best_hand_picked};

use crate::demo_lm::{lm_claims, lm_runs, of_block};
use crate::files::write_atomically;
use crate::lab::{ensure_dir, outcome_table, sweep_with_progress};
use crate::lab_args::DemoArgs;
use crate::report_cmd::{rate_chart, rate_table, read_runs};

const MLP_REMEDIES: &[&str] = &[
    "none",
    "clip-value",
    "clip-norm",
    "clip-global",
    "agc",
    "autoclip",
    "zclip",
    "l2",
    "weight-decay",
    "max-norm",
    "xavier",
    "he",
    "orthogonal",
    "lsuv",
    "batch-norm",
    "layer-norm",
    "rms-norm",
    "shallow",
    "residual",
    "small-lr",
    "warmup",
    "backoff",
    "adam",
    "lr-find",
    "guard",
    "guard,clip-global",
];

const RNN_REMEDIES: &[&str] = &[
    "none",
    "clip-value",
    "clip-global",
    "autoclip",
    "zclip",
    "max-norm",
    "orthogonal",
    "small-lr",
    "lr-find",
    "lstm",
    "gru",
    "guard",
    "guard,clip-global",
];

/// The mixed-precision block: the vanilla RNN at recurrent gain 2, whose gradients through
/// time reach ~10⁵ per element — inside f32's and bf16's range, past f16's largest value
/// (65,504). (precision, remedies) of each run.
const PRECISION_RUNS: &[(Precision, &str)] = &[
    (Precision::F32, "none"),
    (Precision::F32, "guard"),
    (Precision::F16, "guard"),
    (Precision::F16, "guard,loss-scale"),
    (Precision::Bf16, "guard"),
];
/// The recurrent gain of the mixed-precision block.
const PRECISION_GAIN: f64 = 2.0;

/// The demo's tasks, in the order it reports them.
const TASKS: [&str; 2] = ["mlp", "adding"];

/// The runs of `task` among `summaries`.
fn of_task<'a>(summaries: &[&'a RunSummary], task: &str) -> Vec<&'a RunSummary> {
    summaries
        .iter()
        .copied()
        .filter(|s| s.task == task)
        .collect()
}

/// The mixed-precision block's runs, known by their directory names (the lab names a run's
/// directory after its whole configuration, [`run_name`]).
struct PrecisionBlock(BTreeSet<String>);

impl PrecisionBlock {
    fn of(quick: bool) -> Self {
        PrecisionBlock(precision_runs(quick).iter().map(run_name).collect())
    }

    /// Whether the run in `dir` is one of the block's.
    fn holds(&self, dir: impl AsRef<Path>) -> bool {
        dir.as_ref()
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| self.0.contains(n))
    }
}

/// The mixed-precision block: the vanilla RNN on adding at [`PRECISION_GAIN`], in each precision.
fn precision_runs(quick: bool) -> Vec<RunConfig> {
    let mut base = RunConfig::for_task(Task::Adding);
    base.init_gain = PRECISION_GAIN;
    base.steps = if quick { 40 } else { 200 };
    PRECISION_RUNS
        .iter()
        .map(|&(precision, spec)| RunConfig {
            precision,
            remedies: Remedy::parse_list(spec).expect("the demo's remedies parse"),
            ..base.clone()
        })
        .collect()
}

/// The curated runs: full, or `quick` for smoke tests.
pub fn demo_runs(quick: bool) -> Vec<RunConfig> {
    let mut runs = Vec::new();
    for (task, remedies) in [(Task::Mlp, MLP_REMEDIES), (Task::Adding, RNN_REMEDIES)] {
        let mut base = RunConfig::for_task(task);
        base.steps = if quick { 40 } else { 500 };
        if quick {
            base.seq_len = 30;
        }
        for spec in remedies {
            runs.push(RunConfig {
                remedies: Remedy::parse_list(spec).expect("the demo's remedies parse"),
                ..base.clone()
            });
        }
    }
    runs.extend(precision_runs(quick));
    runs.extend(lm_runs(quick));
    runs
}

/// What the mixed-precision block showed, from its runs (`data`: theirs with their metrics).
fn precision_claims(runs: &[&RunSummary], data: &[&RunData]) -> Vec<String> {
    let find = |precision: Option<&str>, scaled: bool| {
        runs.iter().copied().find(|s| {
            s.remedy.guarded() && s.precision() == precision && s.remedy.loss_scaled() == scaled
        })
    };
    let mut out = Vec::new();
    let (Some(f32), Some(f16), Some(scaled)) = (
        find(None, false),
        find(Some("f16"), false),
        find(Some("f16"), true),
    ) else {
        return out;
    };
    let describe = |s: &RunSummary| match &s.stopped {
        Some(_) => format!(
            "stopped by the guard after {} steps with non-finite gradients",
            s.non_finite_steps
        ),
        None => format!(
            "{}, held-out loss {} → {}",
            s.outcome(),
            loss(s.initial_loss),
            loss(s.final_loss)
        ),
    };
    out.push(format!(
        "mixed precision (vanilla RNN at recurrent gain {PRECISION_GAIN}): the default guard in f32: {}; in f16 without loss scaling: {} (its gradients overflow f16's largest value, 65,504, so no clip can act on them); in f16 with loss scaling: {}.",
        describe(f32),
        describe(f16),
        describe(scaled)
    ));
    let scales: Vec<f64> = data
        .iter()
        .find(|d| d.summary.label() == scaled.label())
        .map(|d| d.metrics.iter().filter_map(|m| m.loss_scale).collect())
        .unwrap_or_default();
    if let (Some(first), Some(last)) = (scales.first(), scales.last()) {
        out.push(format!(
            "mixed precision: the loss scale went from {first} to {last} — {} overflowing steps skipped, none counted against the guard's limit of bad steps in a row.",
            scaled.skipped_steps
        ));
    }
    if let Some(bf16) = find(Some("bf16"), false) {
        out.push(format!(
            "mixed precision: bf16 keeps f32's exponent range; without a scaler: {} ({} non-finite steps).",
            describe(bf16),
            bf16.non_finite_steps
        ));
    }
    out
}

fn family(summary: &RunSummary) -> &'static str {
    summary.remedy.family().name()
}

fn loss(v: Option<f64>) -> String {
    v.map_or("NaN".into(), |v| format!("{v:.3}"))
}

/// Sentences stating what the runs of one task showed, each from a measurement.
pub fn claims(task: &str, runs: &[&RunSummary]) -> Vec<String> {
    let mut out = Vec::new();
    let Some(none) = runs.iter().find(|s| s.unremedied()) else {
        return out;
    };
    out.push(match (none.diverged, none.diverged_at) {
        (true, Some(at)) => format!(
            "{task}: without a remedy the run diverged — the training loss was non-finite or 10× its start from step {at}, and the held-out loss ended at {}.",
            loss(none.final_loss)
        ),
        (true, None) => format!(
            "{task}: without a remedy the run did not learn: held-out loss {} at the end against {} at the start.",
            loss(none.final_loss),
            loss(none.initial_loss)
        ),
        (false, _) => format!(
            "{task}: without a remedy this run stayed stable (held-out loss {} → {}); the remedies below are measured against that.",
            loss(none.initial_loss),
            loss(none.final_loss)
        ),
    });
    let list = |outcome: Outcome| -> Vec<String> {
        runs.iter()
            .filter(|s| !s.unremedied() && s.outcome() == outcome)
            .map(|s| format!("{} ({})", s.remedy, loss(s.final_loss)))
            .collect()
    };
    let trivial = runs.iter().find_map(|s| s.trivial_loss);
    let (learning, stable) = (list(Outcome::Learning), list(Outcome::Stable));
    let failed: Vec<String> = runs
        .iter()
        .filter(|s| !s.unremedied() && s.failed())
        .map(|s| format!("{} ({})", s.remedy, s.outcome()))
        .collect();
    if !learning.is_empty() {
        out.push(format!(
            "{task}: finite and learning, below the trivial predictor's {} (final held-out loss): {}.",
            loss(trivial),
            learning.join(", ")
        ));
    }
    if !stable.is_empty() {
        out.push(format!(
            "{task}: finite but not beating the trivial predictor's {} in these steps: {}.",
            loss(trivial),
            stable.join(", ")
        ));
    }
    if !failed.is_empty() {
        out.push(format!(
            "{task}: did not rescue this configuration: {}.",
            failed.join(", ")
        ));
    }
    if let Some(best) = runs
        .iter()
        .filter(|s| !s.failed() && s.final_loss.is_some())
        .min_by(|a, b| a.final_loss.partial_cmp(&b.final_loss).expect("finite"))
    {
        out.push(format!(
            "{task}: lowest final held-out loss: {} at {}{}.",
            best.remedy,
            loss(best.final_loss),
            best.accuracy
                .map_or(String::new(), |a| format!(", accuracy {:.1}%", 100.0 * a))
        ));
    }
    for s in runs.iter().filter(|s| s.largest_stable_lr.is_some()) {
        out.push(format!(
            "{task}: the learning-rate range test found {:.3e} the largest stable rate and trained at {:.3e}.",
            s.largest_stable_lr.unwrap_or(f64::NAN),
            s.lr
        ));
    }
    out
}

/// The first lines the demo prints for a task: the unprotected run, the best hand-picked remedy
/// and the default guard, from the runs just made.
pub fn answer(task: &str, runs: &[&RunSummary]) -> Option<String> {
    let none = runs.iter().find(|s| s.unremedied())?;
    let guard = runs.iter().find(|s| s.guard_alone())?;
    let best = runs[best_hand_picked(runs.iter().copied())?];
    let line = |what: &str, s: &RunSummary| {
        format!(
            "  {what:<28} {:<20} {:>9}  final held-out loss {}{}",
            s.remedy,
            s.outcome(),
            loss(s.final_loss),
            s.accuracy
                .map_or(String::new(), |a| format!(", accuracy {:.1}%", 100.0 * a))
        )
    };
    Some(format!(
        "{task}: the default guard against no protection and the best hand-picked remedy\n{}\n{}\n{}",
        line("unprotected", none),
        line("best hand-picked remedy", best),
        line("default guard (no setting)", guard)
    ))
}

/// Prints the outcome table of `rows` with each remedy's family.
fn print_table(rows: &[&RunSummary]) {
    let table = outcome_table(rows);
    let mut lines = table.lines();
    if let Some(header) = lines.next() {
        println!("{header}  family");
    }
    for (line, s) in lines.zip(rows) {
        println!("{line}  {}", family(s));
    }
}

/// Runs `gradguard demo`.
pub fn run(args: &DemoArgs) -> Result<()> {
    let started = Instant::now();
    let out = ensure_dir(&args.out)?;
    let runs = demo_runs(args.quick);
    let result = sweep_with_progress(&runs, &out, args.jobs, "demo")?;

    let precision = PrecisionBlock::of(args.quick);
    let summaries: Vec<&RunSummary> = result.runs.iter().map(|r| &r.summary).collect();
    let (block, main): (Vec<_>, Vec<_>) = result.runs.iter().partition(|r| precision.holds(&r.dir));
    let block: Vec<&RunSummary> = block.into_iter().map(|r| &r.summary).collect();
    let main: Vec<&RunSummary> = main.into_iter().map(|r| &r.summary).collect();
    let mut all_claims = Vec::new();
    for task in TASKS {
        all_claims.extend(claims(task, &of_task(&main, task)));
    }
    let data = read_runs(std::slice::from_ref(&out))?;
    let block_data: Vec<&RunData> = data.iter().filter(|d| precision.holds(&d.dir)).collect();
    all_claims.extend(precision_claims(&block, &block_data));
    all_claims.extend(lm_claims(&result.rate_curves));
    let rates = rate_table(&result);
    let mut intro =
        vec!["Every number and picture below comes from the runs this demo just made.".to_string()];
    intro.extend(all_claims.iter().cloned());
    let html = render(&Report {
        title: "gradguard demo: exploding gradients and what each remedy does",
        intro: &intro,
        tables: &rates.iter().cloned().collect::<Vec<_>>(),
        figures: &rate_chart(&result).into_iter().collect::<Vec<_>>(),
        runs: &data,
        headline: true,
    });
    let report = out.join("report.html");
    write_atomically(&report, html.as_bytes())?;

    for task in TASKS {
        if let Some(answer) = answer(task, &of_task(&main, task)) {
            println!("{answer}");
        }
    }
    println!();
    let lm = of_block(&main);
    let rows: Vec<&RunSummary> = main.iter().copied().filter(|s| !lm.contains(s)).collect();
    print_table(&rows);
    println!(
        "\nmixed precision: the vanilla RNN on adding at recurrent gain {PRECISION_GAIN}, in f32, f16 and bf16"
    );
    print_table(&block);
    if let Some(t) = &rates {
        println!("\ntransformer language model under AdamW: {}", t.caption);
        let headers: Vec<&str> = t.headers.iter().map(String::as_str).collect();
        print!("{}", gradguard_report::table::render(&headers, &t.rows));
    }
    println!();
    for c in &all_claims {
        println!("- {c}");
    }
    println!(
        "\n{} runs in {:.0} s; report: {}",
        summaries.len(),
        started.elapsed().as_secs_f64(),
        report.display()
    );
    Ok(())
}
