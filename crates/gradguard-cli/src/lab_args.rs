//! Flags of the lab's commands: `train`, `sweep`, `report`, `demo`.

use std::path::PathBuf;

use clap::Args;
use gradguard_lab::models::{Activation, Cell, Init};
use gradguard_lab::tasks::Task;
use gradguard_lab::{Remedy, RunConfig};

/// A comma-separated remedy list, one flag value.
#[derive(Debug, Clone, PartialEq)]
pub struct RemedyList(pub Vec<Remedy>);

fn remedy_list(s: &str) -> Result<RemedyList, String> {
    Remedy::parse_list(s).map(RemedyList)
}

fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        Ok(v) => Err(format!("must be a positive number, got {v}")),
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
    /// The task: mlp (deep MLP on the UCI digits), adding or order (recurrent, long sequences).
    #[arg(long, default_value = "mlp")]
    pub task: Task,
    /// Hidden layers of the MLP [default: 24].
    #[arg(long, value_parser = at_least_one)]
    pub depth: Option<u64>,
    /// Units per hidden layer, or hidden units of the RNN [default: 64 (mlp), 32 (recurrent)].
    #[arg(long, value_parser = at_least_one)]
    pub width: Option<u64>,
    /// The MLP's nonlinearity: tanh or relu [default: relu].
    #[arg(long)]
    pub activation: Option<Activation>,
    /// The recurrent cell: rnn, lstm or gru [default: rnn].
    #[arg(long)]
    pub cell: Option<Cell>,
    /// Sequence length of the recurrent tasks [default: 100].
    #[arg(long, value_parser = at_least_one)]
    pub seq_len: Option<u64>,
    /// Initialization: gaussian, xavier, he, orthogonal or lsuv [default: gaussian].
    #[arg(long)]
    pub init: Option<Init>,
    /// Multiplies the init's standard deviation [default: 2 (mlp), 1.5 (recurrent)].
    #[arg(long, value_parser = positive_f64, value_name = "G", allow_negative_numbers = true)]
    pub init_gain: Option<f64>,
    /// SGD learning rate [default: 0.01 (mlp), 0.1 (recurrent)].
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
    /// Remedies, comma-separated: `none`, or any of: clip-value[=C], clip-norm[=C],
    /// clip-global[=C], agc[=λ], autoclip[=P], zclip, l2[=λ], weight-decay[=λ], max-norm[=C],
    /// xavier, he, orthogonal, lsuv, gain=G, batch-norm, layer-norm, rms-norm, shallow[=N],
    /// residual, lstm, gru, small-lr[=F], warmup[=N], backoff, adam, lr-find, guard.
    #[arg(long, value_parser = remedy_list, default_value = "none", value_name = "NAME[,NAME…]")]
    pub remedy: RemedyList,
    /// Training loss (mean of 10 steps) counted as reached [default: 0.5 (mlp), 0.05 (adding),
    /// 0.3 (order)].
    #[arg(long, value_name = "L", allow_negative_numbers = true)]
    pub target_loss: Option<f64>,
    /// Good steps between checkpoints (and rollback snapshots) [default: 50].
    #[arg(long, value_parser = at_least_one, value_name = "N")]
    pub checkpoint_every: Option<u64>,
}

impl RunFlags {
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
        if let Some(v) = self.target_loss {
            c.target_loss = v;
        }
        if let Some(v) = self.checkpoint_every {
            c.checkpoint_every = v;
        }
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
    same keys: task, width, activation, cell, seq_len, steps, batch, target_loss, and depth, lr, \
    init, init_gain, remedy, seed as a value or a list. Finished runs are read back, not redone."
)]
pub struct SweepArgs {
    /// A TOML grid file (flags below then refine nothing: use one or the other).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["depth", "lr", "init", "init_gain", "remedy", "seed"])]
    pub grid: Option<PathBuf>,
    /// The task and shared settings (used without --grid).
    #[arg(long, default_value = "mlp")]
    pub task: Task,
    /// Hidden layers, e.g. `8,24,64`.
    #[arg(long, value_delimiter = ',', value_parser = at_least_one)]
    pub depth: Vec<u64>,
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
    /// Sequence length (recurrent tasks).
    #[arg(long, value_parser = at_least_one)]
    pub seq_len: Option<u64>,
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
