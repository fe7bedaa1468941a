//! A sweep's grid: its axes, read from flags or a TOML file, and expanded into checked runs.

use std::path::Path;

use serde::Deserialize;

use crate::config::RunConfig;
use crate::error::LabError;
use crate::models::{Activation, Cell, Init};
use crate::optimizer::{OptimizerKind, Schedule};
use crate::plan::Plan;
use crate::precision::Precision;
use crate::remedy::Remedy;
use crate::tasks::{Task, TaskData};

/// The axes of a sweep; every combination is one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    /// Settings shared by every run (its depth, lr, init, gain, remedies and seed are replaced).
    pub base: RunConfig,
    /// Hidden layers (MLP).
    pub depths: Vec<usize>,
    /// Nonlinearities (MLP).
    pub activations: Vec<Activation>,
    /// Learning rates.
    pub lrs: Vec<f64>,
    /// Initialization schemes.
    pub inits: Vec<Init>,
    /// Initialization gains.
    pub init_gains: Vec<f64>,
    /// Remedy lists (empty: none).
    pub remedies: Vec<Vec<Remedy>>,
    /// Seeds.
    pub seeds: Vec<u64>,
}

/// A value or a list of values in a grid file.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The grid file (TOML): scalars for shared settings, a value or a list for each axis.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GridFile {
    task: Option<String>,
    width: Option<usize>,
    activation: Option<OneOrMany<String>>,
    cell: Option<String>,
    seq_len: Option<usize>,
    steps: Option<u64>,
    batch: Option<usize>,
    target_loss: Option<f64>,
    precision: Option<String>,
    optimizer: Option<String>,
    beta1: Option<f64>,
    beta2: Option<f64>,
    eps: Option<f64>,
    weight_decay: Option<f64>,
    schedule: Option<String>,
    warmup: Option<u64>,
    heads: Option<usize>,
    post_norm: Option<bool>,
    text: Option<String>,
    embed_std: Option<f64>,
    depth: Option<OneOrMany<usize>>,
    lr: Option<OneOrMany<f64>>,
    init: Option<OneOrMany<String>>,
    init_gain: Option<OneOrMany<f64>>,
    remedy: Option<OneOrMany<String>>,
    seed: Option<OneOrMany<u64>>,
}

impl Grid {
    /// A one-run grid of `base`.
    pub fn single(base: RunConfig) -> Self {
        Grid {
            depths: vec![base.depth],
            activations: vec![base.activation],
            lrs: vec![base.lr],
            inits: vec![base.init],
            init_gains: vec![base.init_gain],
            remedies: vec![base.remedies.clone()],
            seeds: vec![base.seed],
            base,
        }
    }

    /// Parses a TOML grid file; `path` names it in errors. Keys: `task`, `width`, `cell`,
    /// `seq_len`, `steps`, `batch`, `target_loss`, `precision`, `optimizer`, `beta1`, `beta2`,
    /// `eps`, `weight_decay`, `schedule`, `warmup`, `heads`, `post_norm`, `text`, `embed_std` (one value
    /// each; the lm task warms up over 10% of its steps unless `warmup` is given) and `depth`, `activation`,
    /// `lr`, `init`, `init_gain`, `remedy`, `seed` (a value or a list). Unset keys take the task's
    /// defaults ([`RunConfig::for_task`]).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, LabError> {
        let bad = |reason: String| LabError::Grid {
            path: path.display().to_string(),
            reason,
        };
        let file: GridFile = toml::from_str(text).map_err(|e| {
            let message = e.message().to_string();
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].lines().count().max(1);
                    bad(format!("line {line}: {message}"))
                }
                None => bad(message),
            }
        })?;
        fn parse<T>(path: &Path, what: &str, r: Result<T, String>) -> Result<T, LabError> {
            r.map_err(|e| LabError::Grid {
                path: path.display().to_string(),
                reason: format!("{what}: {e}"),
            })
        }
        let task: Task = match &file.task {
            Some(t) => parse(path, "task", t.parse())?,
            None => Task::Mlp,
        };
        let mut base = RunConfig::for_task(task);
        if let Some(v) = file.width {
            base.width = v;
        }
        if let Some(v) = &file.cell {
            base.cell = parse(path, "cell", v.parse::<Cell>())?;
        }
        if let Some(v) = file.seq_len {
            base.seq_len = v;
        }
        if let Some(v) = file.steps {
            base.steps = v;
        }
        if let Some(v) = file.batch {
            base.batch = v;
        }
        if let Some(v) = file.target_loss {
            base.target_loss = v;
        }
        if let Some(v) = &file.precision {
            base.precision = parse(path, "precision", v.parse::<Precision>())?;
        }
        if let Some(v) = &file.optimizer {
            base.set_optimizer(parse(path, "optimizer", v.parse::<OptimizerKind>())?);
        }
        let o = &mut base.optimizer;
        for (dst, src) in [
            (&mut o.beta1, file.beta1),
            (&mut o.beta2, file.beta2),
            (&mut o.eps, file.eps),
            (&mut o.weight_decay, file.weight_decay),
        ] {
            if let Some(v) = src {
                *dst = v;
            }
        }
        if let Some(v) = &file.schedule {
            base.schedule = parse(path, "schedule", v.parse::<Schedule>())?;
        }
        base.set_warmup(file.warmup);
        if let Some(v) = file.heads {
            base.lm.heads = v;
        }
        if let Some(v) = file.post_norm {
            base.lm.post_norm = v;
        }
        if let Some(v) = file.text {
            base.lm.text = Some(v);
        }
        if let Some(v) = file.embed_std {
            base.lm.embed_std = v;
        }
        let mut grid = Grid::single(base);
        if let Some(v) = file.depth {
            grid.depths = v.into_vec();
        }
        if let Some(v) = file.activation {
            grid.activations = v
                .into_vec()
                .iter()
                .map(|s| parse(path, "activation", s.parse::<Activation>()))
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = file.lr {
            grid.lrs = v.into_vec();
        }
        if let Some(v) = file.init {
            grid.inits = v
                .into_vec()
                .iter()
                .map(|s| parse(path, "init", s.parse::<Init>()))
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = file.init_gain {
            grid.init_gains = v.into_vec();
        }
        if let Some(v) = file.remedy {
            grid.remedies = v
                .into_vec()
                .iter()
                .map(|s| parse(path, "remedy", Remedy::parse_list(s)))
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = file.seed {
            grid.seeds = v.into_vec();
        }
        Ok(grid)
    }

    /// Every run of the grid, each checked (remedies that do not fit the task are refused here,
    /// before anything runs).
    pub fn runs(&self) -> Result<Vec<RunConfig>, LabError> {
        let axes = [
            ("depth", self.depths.len()),
            ("activation", self.activations.len()),
            ("lr", self.lrs.len()),
            ("init", self.inits.len()),
            ("init_gain", self.init_gains.len()),
            ("remedy", self.remedies.len()),
            ("seed", self.seeds.len()),
        ];
        if let Some((name, _)) = axes.iter().find(|(_, n)| *n == 0) {
            return Err(LabError::Config(format!("the grid's {name} list is empty")));
        }
        let data = TaskData::for_run(&self.base)?;
        let mut runs = Vec::new();
        for (&depth, &activation) in self
            .depths
            .iter()
            .flat_map(|d| self.activations.iter().map(move |a| (d, a)))
        {
            for &lr in &self.lrs {
                for &init in &self.inits {
                    for &init_gain in &self.init_gains {
                        for remedies in &self.remedies {
                            for &seed in &self.seeds {
                                let config = RunConfig {
                                    depth,
                                    activation,
                                    lr,
                                    init,
                                    init_gain,
                                    remedies: remedies.clone(),
                                    seed,
                                    ..self.base.clone()
                                };
                                Plan::new(&config, &data)?;
                                runs.push(config);
                            }
                        }
                    }
                }
            }
        }
        Ok(runs)
    }
}
