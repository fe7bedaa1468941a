//! Raw command-line flags (first layer); each command turns them into a validated plan.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use gradguard::rules::{RuleSpec, rule_keys, rule_names};
use gradguard::{NonFinitePolicy, NormType, UnitLayout};

/// Find, explain and tame exploding gradients.
#[derive(Debug, Parser)]
#[command(name = "gradguard", version, about, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Per-tensor and global statistics of a gradient file (safetensors: f32, f16 or bf16).
    Inspect(InspectArgs),
    /// Apply clipping rules to a gradient file and write the result.
    Clip(ClipArgs),
    /// Train one run of a lab task with chosen remedies (resumable run directory).
    Train(crate::lab_args::TrainArgs),
    /// Run a grid of lab runs in parallel and rank the remedies by measured effect.
    Sweep(crate::lab_args::SweepArgs),
    /// Write the HTML report of finished runs, sweeps or demos.
    Report(crate::lab_args::ReportArgs),
    /// Show exploding gradients and every remedy family, measured, in about two minutes.
    Demo(crate::lab_args::DemoArgs),
    /// Predict explosion before training: Jacobian gains, Lyapunov exponent, edge of chaos.
    Probe(crate::lab_args::ProbeArgs),
    /// Re-measure classic results (Pascanu 2013, He 2015, Saxe 2014, Schoenholz 2017): claim,
    /// measurement, verdict, figure.
    Reproduce(crate::lab_args::ReproduceArgs),
}

/// `gradguard inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The gradient file (safetensors: f32, f16 or bf16 tensors).
    pub file: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The `--layout` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LayoutArg {
    /// Linear weights `[in, out]`, conv kernels HWIO (JAX, Optax, Burn).
    InputFirst,
    /// Linear weights `[out, in]`, conv kernels OIHW (PyTorch).
    OutputFirst,
}

impl From<LayoutArg> for UnitLayout {
    fn from(l: LayoutArg) -> Self {
        match l {
            LayoutArg::InputFirst => UnitLayout::InputFirst,
            LayoutArg::OutputFirst => UnitLayout::OutputFirst,
        }
    }
}

/// The `--on-nonfinite` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum NonFiniteArg {
    /// Exit with code 3, naming the first tensor and index holding NaN or inf.
    Error,
    /// Apply no rule and write no output; report the step as skipped.
    Skip,
    /// Replace NaN and inf by 0, then apply the rules.
    Zero,
}

impl From<NonFiniteArg> for NonFinitePolicy {
    fn from(a: NonFiniteArg) -> Self {
        match a {
            NonFiniteArg::Error => NonFinitePolicy::Error,
            NonFiniteArg::Skip => NonFinitePolicy::Skip,
            NonFiniteArg::Zero => NonFinitePolicy::Zero,
        }
    }
}

/// `gradguard clip`. Rules apply in the order their flags are given.
#[derive(Debug, Args)]
#[command(
    after_help = "Rules apply in the order given on the command line, e.g. \
    `--value 1 --global-norm 5` clamps first, then clips the global norm."
)]
pub struct ClipArgs {
    /// The gradient file to read (safetensors: f32, f16 or bf16 tensors; written back in kind).
    pub input: PathBuf,
    /// Where to write the clipped gradients (written atomically; nothing is left on error).
    pub output: PathBuf,
    /// Clamp every value to [-V, V] (PyTorch clip_grad_value_).
    #[arg(long, value_name = "V", allow_negative_numbers = true)]
    pub value: Option<f64>,
    /// Scale each tensor so that its own norm is at most M.
    #[arg(long, value_name = "M", allow_negative_numbers = true)]
    pub per_tensor_norm: Option<f64>,
    /// Scale all tensors by one factor so that their global norm is at most M (PyTorch
    /// clip_grad_norm_).
    #[arg(long, value_name = "M", allow_negative_numbers = true)]
    pub global_norm: Option<f64>,
    /// The p of the norms of --per-tensor-norm, --global-norm, and the rules clip-norm and
    /// clip-global: 1, 2, inf, or any number >= 1.
    #[arg(long, value_name = "P", default_value = "2", value_parser = parse_norm)]
    pub norm_type: NormType,
    /// Adaptive gradient clipping with ratio λ (needs --params).
    #[arg(
        long,
        value_name = "LAMBDA",
        requires = "params",
        allow_negative_numbers = true
    )]
    pub agc: Option<f64>,
    /// The parameters the gradients belong to, for --agc (safetensors, same names and shapes).
    #[arg(long, value_name = "FILE")]
    pub params: Option<PathBuf>,
    /// AGC's floor on weight norms (--agc and --rule agc alike).
    #[arg(
        long,
        value_name = "E",
        default_value_t = 1e-3,
        allow_negative_numbers = true
    )]
    pub eps: f64,
    /// Which axis of a weight holds its units (--agc and --rule agc alike).
    #[arg(long, value_enum, default_value = "input-first")]
    pub layout: LayoutArg,
    /// Any registered rule by its name (the help text lists the registry's names).
    #[arg(long = "rule", value_name = "NAME[=VALUE][:KEY=VALUE]…", value_parser = parse_rule, help = rule_help())]
    pub rules: Vec<RuleSpec>,
    /// What to do with NaN or inf values.
    #[arg(long = "on-nonfinite", value_enum, default_value = "error")]
    pub on_non_finite: NonFiniteArg,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The `--rule` help, generated from the core's registry so that it lists exactly its rules.
fn rule_help() -> String {
    format!(
        "Any registered rule by name: {} (agc needs --params). Its name is the one the JSON \
         output and the lab's remedies use. Its other settings follow colons, \
         NAME[=VALUE][:KEY=VALUE]… (e.g. zclip:z-thresh=3), and win over --norm-type, --eps and \
         --layout:\n{}\nRepeatable; ordered with the flags.",
        rule_names(),
        rule_keys()
    )
}

fn parse_rule(s: &str) -> Result<RuleSpec, String> {
    s.parse::<RuleSpec>()
}

fn parse_norm(s: &str) -> Result<NormType, String> {
    s.parse::<NormType>().map_err(|e| e.to_string())
}
