//! Flags of the lab's commands: `train`, `sweep`, `report`, `demo`, `probe`, `reproduce`.

use std::path::PathBuf;

use clap::Args;
use gradguard_lab::models::{Activation, Cell, Init};
use gradguard_lab::optimizer::{OptimizerKind, Schedule};
use gradguard_lab::tasks::Task;
use gradguard_lab::{Precision, Remedy, RunConfig};

/// A comma-separated remedy list, one flag value, and whether it names `adam` without a rate.
#[derive(Debug, Clone, PartialEq)]
pub struct RemedyList(pub Vec<Remedy>, pub bool);

/// The `--remedy` help, generated from the lab's list so that it names every remedy.
fn remedy_help() -> String {
    format!(
        "Remedies, comma-separated: {}. A clipping rule takes its other settings after colons \
         (zclip:z-thresh=3:alpha=0.9); `gradguard clip --help` lists them.",
        gradguard_lab::Remedy::names()
    )
}

/// The papers `gradguard reproduce` knows, from the lab's own list.
fn paper_help() -> String {
    let papers: Vec<String> = gradguard_lab::reproduce::Paper::ALL
        .iter()
        .map(|p| format!("{} ({})", p.name(), p.subject()))
        .collect();
    format!(
        "Papers: {}, or all. Each prints: paper claims / we measured / holds: yes|no.",
        papers.join(", ")
    )
}

fn remedy_list(s: &str) -> Result<RemedyList, String> {
    let bare_adam = s.split(',').any(|name| name.trim() == "adam");
    Remedy::parse_list(s).map(|list| RemedyList(list, bare_adam))
}

fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        Ok(v) => Err(format!("must be a positive number, got {v}")),
        Err(_) => Err(format!("'{s}' is not a number")),
    }
}

fn unit_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("must be in [0, 1), got {v}")),
        Err(_) => Err(format!("'{s}' is not a number")),
    }
}

fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        Ok(v) => Err(format!("must be a number ≥ 0, got {v}")),
        Err(_) => Err(format!("'{s}' is not a number")),
    }
}

fn at_least_one(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(format!("must be a whole number ≥ 1, got '{s}'")),
    }
}

/// The settings of one run; unset flags take the task's defaults.
#[derive(Debug, Clone, Args)]
pub struct RunFlags {
    /// The task: mlp (deep MLP on the UCI digits), adding or order (recurrent, long sequences),
    /// lm (a causal transformer on English text, next-byte prediction).
    #[arg(long, default_value = "mlp")]
    pub task: Task,
    /// Hidden layers of the MLP, or transformer layers [default: 24 (mlp), 2 (lm)].
    #[arg(long, value_parser = at_least_one)]
    pub depth: Option<u64>,
    /// Units per hidden layer, hidden units of the RNN, or the transformer's width
    /// [default: 64 (mlp, lm), 32 (recurrent)].
    #[arg(long, value_parser = at_least_one)]
    pub width: Option<u64>,
    /// The MLP's nonlinearity: tanh or relu [default: relu].
    #[arg(long)]
    pub activation: Option<Activation>,
    /// The recurrent cell: rnn, lstm or gru [default: rnn].
    #[arg(long)]
    pub cell: Option<Cell>,
    /// Sequence length of the recurrent tasks, or the lm task's context [default: 100, 64 (lm)].
    #[arg(long, value_parser = at_least_one)]
    pub seq_len: Option<u64>,
    /// Attention heads of the lm task's transformer (dividing the width) [default: 4].
    #[arg(long, value_parser = at_least_one)]
    pub heads: Option<u64>,
    /// The lm task's transformer with post-norm layers (Vaswani et al. 2017) instead of pre-norm.
    #[arg(long)]
    pub post_norm: bool,
    /// A text file for the lm task instead of the lab's own (plain, or gzip by its .gz name).
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// Standard deviation of the lm task's embeddings [default: 0.02 (GPT-2's); Burn's is 1].
    #[arg(long, value_name = "STD")]
    pub embed_std: Option<f64>,
    /// The optimizer: sgd, adam or adamw [default: sgd, adamw (lm)].
    #[arg(long, value_name = "sgd|adam|adamw")]
    pub optimizer: Option<OptimizerKind>,
    /// β₁ of Adam and AdamW [default: 0.9].
    #[arg(long, value_parser = unit_interval, value_name = "B")]
    pub beta1: Option<f64>,
    /// β₂ of Adam and AdamW [default: 0.999, 0.95 for adamw].
    #[arg(long, value_parser = unit_interval, value_name = "B")]
    pub beta2: Option<f64>,
    /// ε of Adam and AdamW [default: 1e-8].
    #[arg(long, value_parser = positive_f64, value_name = "E")]
    pub eps: Option<f64>,
    /// The optimizer's weight decay: coupled for sgd and adam, decoupled for adamw
    /// [default: 0, 0.1 for adamw].
    #[arg(long, value_parser = non_negative, value_name = "λ")]
    pub weight_decay: Option<f64>,
    /// The rate's schedule: constant or warmup-cosine (cosine decay to a tenth after the
    /// warm-up) [default: constant, warmup-cosine (lm)].
    #[arg(long, value_name = "constant|warmup-cosine")]
    pub schedule: Option<Schedule>,
    /// Linear warm-up steps [default: 0, 30 (lm)].
    #[arg(long, value_name = "N")]
    pub warmup: Option<u64>,
    /// Initialization: gaussian, xavier, he, orthogonal or lsuv [default: gaussian].
    #[arg(long)]
    pub init: Option<Init>,
    /// Multiplies the init's standard deviation [default: 1.7 (mlp), 1.5 (recurrent)].
    #[arg(long, value_parser = positive_f64, value_name = "G", allow_negative_numbers = true)]
    pub init_gain: Option<f64>,
    /// SGD learning rate [default: 0.1]; the lm task's AdamW rate [default: 0.003]; with
    /// `--remedy adam` (no rate of its own), Adam's rate [default: 0.001].
    #[arg(long, value_parser = positive_f64, value_name = "X", allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// Batches to train on [default: 300].
    #[arg(long, value_parser = at_least_one, value_name = "N")]
    pub steps: Option<u64>,
    /// Examples per batch [default: 32].
    #[arg(long, value_parser = at_least_one)]
    pub batch: Option<u64>,
    /// Seed of the weights, the split and the batches [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, value_parser = remedy_list, default_value = "none", value_name = "NAME[,NAME…]",
          help = remedy_help())]
    pub remedy: RemedyList,
    /// Training loss (mean of 10 steps) counted as reached [default: 0.5 (mlp), 0.05 (adding),
    /// 0.3 (order)].
    #[arg(long, value_name = "L", allow_negative_numbers = true)]
    pub target_loss: Option<f64>,
    /// Good steps between checkpoints (and rollback snapshots) [default: 50].
    #[arg(long, value_parser = at_least_one, value_name = "N")]
    pub checkpoint_every: Option<u64>,
    /// The format of the forward and backward passes: f32, or mixed precision with f16 or bf16
    /// (weights stay f32, as with PyTorch's autocast; add the `loss-scale` remedy for f16).
    #[arg(long, default_value = "f32", value_name = "f32|f16|bf16")]
    pub precision: Precision,
}

impl RunFlags {
    /// Every setting left to `task`'s defaults, no remedy, f32.
    pub fn for_task(task: Task) -> Self {
        RunFlags {
            task,
            depth: None,
            width: None,
            activation: None,
            cell: None,
            seq_len: None,
            heads: None,
            post_norm: false,
            text: None,
            embed_std: None,
            optimizer: None,
            beta1: None,
            beta2: None,
            eps: None,
            weight_decay: None,
            schedule: None,
            warmup: None,
            init: None,
            init_gain: None,
            lr: None,
            steps: None,
            batch: None,
            seed: None,
            remedy: RemedyList(Vec::new(), false),
            target_loss: None,
            checkpoint_every: None,
            precision: Precision::F32,
        }
    }

    /// The run configuration: the task's defaults with the given flags over them.
    pub fn config(&self) -> RunConfig {
        let mut c = RunConfig::for_task(self.task);
        let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        if let Some(v) = self.depth {
            c.depth = n(v);
        }
        if let Some(v) = self.width {
            c.width = n(v);
        }
        if let Some(v) = self.activation {
            c.activation = v;
        }
        if let Some(v) = self.cell {
            c.cell = v;
        }
        if let Some(v) = self.seq_len {
            c.seq_len = n(v);
        }
        if let Some(v) = self.init {
            c.init = v;
        }
        if let Some(v) = self.init_gain {
            c.init_gain = v;
        }
        if let Some(v) = self.lr {
            c.lr = v;
        }
        if let Some(v) = self.steps {
            c.steps = v;
        }
        if let Some(v) = self.batch {
            c.batch = n(v);
        }
        if let Some(v) = self.seed {
            c.seed = v;
        }
        c.remedies = self.remedy.0.clone();
        // A rate the user asked for is the one Adam trains at, unless `adam=LR` gave its own.
        if let (Some(lr), RemedyList(_, true)) = (self.lr, &self.remedy) {
            for r in &mut c.remedies {
                if let Remedy::Adam(rate) = r {
                    *rate = lr;
                }
            }
        }
        if let Some(v) = self.target_loss {
            c.target_loss = v;
        }
        if let Some(v) = self.checkpoint_every {
            c.checkpoint_every = v;
        }
        c.precision = self.precision;
        if let Some(v) = self.heads {
            c.lm.heads = n(v);
        }
        c.lm.post_norm |= self.post_norm;
        if let Some(v) = &self.text {
            c.lm.text = Some(v.display().to_string());
        }
        if let Some(v) = self.embed_std {
            c.lm.embed_std = v;
        }
        if let Some(kind) = self.optimizer {
            c.set_optimizer(kind);
        }
        if let Some(v) = self.beta1 {
            c.optimizer.beta1 = v;
        }
        if let Some(v) = self.beta2 {
            c.optimizer.beta2 = v;
        }
        if let Some(v) = self.eps {
            c.optimizer.eps = v;
        }
        if let Some(v) = self.weight_decay {
            c.optimizer.weight_decay = v;
        }
        if let Some(v) = self.schedule {
            c.schedule = v;
        }
        c.set_warmup(self.warmup);
        c
    }
}

/// `gradguard train`.
#[derive(Debug, Args)]
#[command(
    after_help = "The run directory holds config.json, metrics.jsonl, tensorboard/, \
    checkpoint.ggck and summary.json. Run the same command again with the same --out to resume \
    an interrupted run from its last checkpoint."
)]
pub struct TrainArgs {
    /// The run's settings.
    #[command(flatten)]
    pub run: RunFlags,
    /// The run directory [default: runs/NAME, NAME from the settings].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Exit with code 1 when the run diverges or the guard stops it.
    #[arg(long)]
    pub fail_on_divergence: bool,
}

/// `gradguard sweep`.
#[derive(Debug, Args)]
#[command(
    after_help = "Axes take comma-separated lists; `--remedy` takes `;`-separated \
    remedy lists (`--remedy 'none;clip-global;guard,clip-global'`). A grid file (TOML) sets the \
    same keys: task, width, cell, seq_len, steps, batch, target_loss, and depth, activation, lr, \
    init, init_gain, remedy, seed as a value or a list. Finished runs are read back, not redone."
)]
pub struct SweepArgs {
    /// A TOML grid file (flags below then refine nothing: use one or the other).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["depth", "activation", "lr", "init", "init_gain", "remedy", "seed"])]
    pub grid: Option<PathBuf>,
    /// The task and shared settings (used without --grid).
    #[arg(long, default_value = "mlp")]
    pub task: Task,
    /// Hidden layers, e.g. `8,24,64`.
    #[arg(long, value_delimiter = ',', value_parser = at_least_one)]
    pub depth: Vec<u64>,
    /// Nonlinearities of the MLP, e.g. `tanh,relu`.
    #[arg(long, value_delimiter = ',')]
    pub activation: Vec<Activation>,
    /// Learning rates, e.g. `0.001,0.01,0.1`.
    #[arg(long, value_delimiter = ',', value_parser = positive_f64, allow_negative_numbers = true)]
    pub lr: Vec<f64>,
    /// Initializations, e.g. `gaussian,he`.
    #[arg(long, value_delimiter = ',')]
    pub init: Vec<Init>,
    /// Initialization gains, e.g. `1,1.5,2`.
    #[arg(long, value_delimiter = ',', value_parser = positive_f64, allow_negative_numbers = true)]
    pub init_gain: Vec<f64>,
    /// Remedy lists separated by `;`, e.g. `none;clip-global;he`.
    #[arg(long, value_delimiter = ';', value_parser = remedy_list)]
    pub remedy: Vec<RemedyList>,
    /// Seeds, e.g. `0,1,2`.
    #[arg(long, value_delimiter = ',')]
    pub seed: Vec<u64>,
    /// Batches per run.
    #[arg(long, value_parser = at_least_one)]
    pub steps: Option<u64>,
    /// Sequence length (recurrent tasks) or context (lm).
    #[arg(long, value_parser = at_least_one)]
    pub seq_len: Option<u64>,
    /// The optimizer: sgd, adam or adamw, at its task defaults [default: the task's].
    #[arg(long, value_name = "sgd|adam|adamw")]
    pub optimizer: Option<OptimizerKind>,
    /// The rate's schedule: constant or warmup-cosine [default: the task's].
    #[arg(long, value_name = "constant|warmup-cosine")]
    pub schedule: Option<Schedule>,
    /// Linear warm-up steps [default: the task's; 10% of the steps for lm].
    #[arg(long, value_name = "N")]
    pub warmup: Option<u64>,
    /// The format of the forward and backward passes: f32, f16 or bf16 (with a grid file, its
    /// `precision` key, overridden by this flag when given).
    #[arg(long, value_name = "f32|f16|bf16")]
    pub precision: Option<Precision>,
    /// The sweep directory (runs/, sweep.json, report.html).
    #[arg(long, value_name = "DIR", default_value = "sweep")]
    pub out: PathBuf,
    /// Runs at once [default: one per core].
    #[arg(long, default_value_t = 0)]
    pub jobs: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `gradguard report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run directories, or sweep/demo directories (their runs/ are read).
    #[arg(required = true, value_name = "RUN_DIR")]
    pub dirs: Vec<PathBuf>,
    /// The HTML file to write [default: report.html in the first directory].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// `gradguard demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the runs and `report.html` go.
    #[arg(long, value_name = "DIR", default_value = "gradguard-demo")]
    pub out: PathBuf,
    /// A short version (fewer steps, shorter sequences) for smoke tests.
    #[arg(long)]
    pub quick: bool,
    /// Runs at once [default: one per core].
    #[arg(long, default_value_t = 0)]
    pub jobs: usize,
}

fn norm_arg(s: &str) -> Result<gradguard_lab::models::Norm, String> {
    use gradguard_lab::models::Norm;
    match s {
        "none" => Ok(Norm::None),
        "layer" => Ok(Norm::Layer),
        "rms" => Ok(Norm::Rms),
        "batch" => Err("batch norm couples examples; the probe takes none, layer or rms".into()),
        other => Err(format!(
            "unknown norm '{other}' (expected none, layer or rms)"
        )),
    }
}

fn non_negative_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        Ok(v) => Err(format!("must be ≥ 0, got {v}")),
        Err(_) => Err(format!("'{s}' is not a number")),
    }
}

/// `gradguard probe`.
#[derive(Debug, Args)]
#[command(
    after_help = "Weights are drawn with variance G²/fan_in (--init gaussian); without \
    --input-var the inputs sit at the mean-field fixed point q* of (G, σ_b²). The verdict is \
    critical when |λ| ≤ max(0.01, 2 standard errors)."
)]
pub struct ProbeArgs {
    /// Probe a lab task's own model instead (mlp, adding, order, lm): its network, batches and
    /// optimizer as `gradguard train` starts them; prints a verdict (explodes, vanishes,
    /// healthy) and the largest safe learning rate. --depth, --width, --activation, --cell,
    /// --seq-len, --init, --init-gain, --lr and --seed then take the task's defaults.
    #[arg(long, conflicts_with_all = [
        "calibrate", "butterfly", "from", "bias_var", "norm", "residual", "probes", "inputs",
        "input_var", "train_steps",
    ])]
    pub task: Option<Task>,
    /// The optimizer of --task: sgd, adam or adamw [default: the task's].
    #[arg(long, value_name = "sgd|adam|adamw", requires = "task")]
    pub optimizer: Option<OptimizerKind>,
    /// Examples per batch of --task [default: the task's].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), requires = "task")]
    pub batch: Option<u64>,
    /// Optimizer steps of each of --task's rate trials.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..1000))]
    pub trial_steps: u64,
    /// Hidden layers of the MLP [default: 50].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub depth: Option<u64>,
    /// Units per layer (hidden units of a recurrent cell) [default: 256].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub width: Option<u64>,
    /// tanh, relu or linear [default: tanh].
    #[arg(long)]
    pub activation: Option<Activation>,
    /// gaussian, xavier, he or orthogonal [default: gaussian].
    #[arg(long)]
    pub init: Option<Init>,
    /// The weights' gain G (σ_w for gaussian) [default: 1].
    #[arg(long, value_parser = positive_f64, value_name = "G", allow_negative_numbers = true)]
    pub init_gain: Option<f64>,
    /// σ_b²: biases drawn from N(0, V).
    #[arg(long, default_value_t = 0.0, value_parser = non_negative_f64, value_name = "V", allow_negative_numbers = true)]
    pub bias_var: f64,
    /// Normalization before each nonlinearity: none, layer or rms.
    #[arg(long, default_value = "none", value_parser = norm_arg)]
    pub norm: gradguard_lab::models::Norm,
    /// Skip connections around hidden layers.
    #[arg(long)]
    pub residual: bool,
    /// Probe a recurrent cell (rnn, lstm, gru) per time step instead of an MLP.
    #[arg(long)]
    pub cell: Option<Cell>,
    /// Time steps of the recurrent probe [default: 100].
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..))]
    pub seq_len: Option<u64>,
    /// Random vectors per input.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    pub probes: u64,
    /// Inputs.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub inputs: u64,
    /// Variance of Gaussian inputs instead of the fixed point q*.
    #[arg(long, value_parser = positive_f64, value_name = "V", allow_negative_numbers = true)]
    pub input_var: Option<f64>,
    /// Seed of the weights, inputs and vectors [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Search the gain with λ = 0 (the edge of chaos) and print it beside mean-field theory's.
    #[arg(long)]
    pub calibrate: bool,
    /// Train the network twice from initial weights ε apart and report how the runs separate.
    #[arg(long)]
    pub butterfly: bool,
    /// ε of --butterfly (distance between the two initial weight vectors).
    #[arg(long, default_value_t = 1e-3, value_parser = positive_f64)]
    pub epsilon: f64,
    /// Training steps of --butterfly and --agreement.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub train_steps: u64,
    /// SGD learning rate of --butterfly and --agreement [default: 0.1]; with --task, the rate
    /// to judge [default: the task's].
    #[arg(long, value_parser = positive_f64, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// Probe and train the digits MLP at every depth × gain and report how often the verdict
    /// matched what training did. With --task: at every seed × depth × gain of the task, the
    /// probe's largest safe rate against the largest rates whose whole unprotected run does not
    /// diverge and still learns (bracketed to √2 by whole runs), and its verdict against the
    /// run at --lr; the depths and gains default to the MLP grid's: name the task's own (e.g.
    /// `--task lm --agreement-depths 2 --gains 1`).
    #[arg(long)]
    pub agreement: bool,
    /// Depths of --agreement.
    #[arg(long, value_delimiter = ',', default_value = "4,8,16,32")]
    pub agreement_depths: Vec<u64>,
    /// Seeds of --agreement (every depth × gain at each) [default: --seed]. The informed
    /// prediction's thresholds were chosen on seed 0: judge it on others.
    #[arg(long, value_delimiter = ',')]
    pub agreement_seeds: Vec<u64>,
    /// Gains of --agreement (and rows of the report's phase diagram).
    #[arg(long, value_delimiter = ',', value_parser = positive_f64, default_value = "0.6,0.8,1,1.2,1.4,1.6,2")]
    pub gains: Vec<f64>,
    /// Write an HTML report (gain per layer, phase diagram, and the runs asked for) to FILE;
    /// with --task, of --agreement: predicted against measured safe rates.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Probe the trained network of a `gradguard train` run directory, at its task's inputs.
    #[arg(long, value_name = "RUN_DIR")]
    pub from: Option<PathBuf>,
    /// Print JSON (keys include lyapunov, per_layer_gain, verdict, critical_gain,
    /// predicted_critical_gain).
    #[arg(long)]
    pub json: bool,
}

/// A paper name of `gradguard reproduce`, or `all`.
#[derive(Debug, Clone)]
pub struct PaperArg(pub Option<gradguard_lab::reproduce::Paper>);

fn paper_arg(s: &str) -> Result<PaperArg, String> {
    if s == "all" {
        return Ok(PaperArg(None));
    }
    s.parse().map(|p| PaperArg(Some(p)))
}

/// `gradguard reproduce`.
#[derive(Debug, Args)]
#[command(after_help = paper_help())]
pub struct ReproduceArgs {
    /// The paper (listed below), or `all`.
    #[arg(value_name = "NAME", value_parser = paper_arg)]
    pub name: PaperArg,
    /// A smaller grid with the same rule (seconds each, for CI); docs/lab.md's numbers are the
    /// full runs.
    #[arg(long)]
    pub quick: bool,
    /// Print the findings as JSON (keys `name`, `claim`, `measured`, `holds`, …): one object for
    /// one paper, an array for `all`.
    #[arg(long)]
    pub json: bool,
    /// Where `report.html` and `findings.json` go.
    #[arg(long, value_name = "DIR", default_value = "gradguard-reproduce")]
    pub out: PathBuf,
    /// Runs at once [default: one per core].
    #[arg(long, default_value_t = 0)]
    pub jobs: usize,
}
