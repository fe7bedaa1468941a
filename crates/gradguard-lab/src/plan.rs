//! A run's settings after its remedies: the model, the optimizer, the rules and the guard.

use burn::tensor::Device;
use gradguard::rules::{Chain, Rule};
use gradguard::{Guard, GuardConfig, LossScaler, LossScalerConfig, NonFinitePolicy, SpikeAction};

use crate::config::RunConfig;
use crate::error::LabError;
use crate::models::{Cell, Init, MlpConfig, Net, Norm, RecurrentConfig, TransformerConfig};
use crate::optimizer::{OptimizerKind, OptimizerSettings, Schedule};
use crate::precision::Precision;
use crate::remedy::Remedy;
use crate::tasks::{Task, TaskData};

/// Examples LSUV scales the layers on.
const LSUV_BATCH: usize = 256;

/// The network to build.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ModelPlan {
    /// A deep MLP.
    Mlp(MlpConfig),
    /// A recurrent network.
    Recurrent(RecurrentConfig),
    /// A causal transformer language model.
    Lm(TransformerConfig),
}

/// Everything the training loop needs, derived from a [`RunConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The network.
    pub model: ModelPlan,
    /// The learning rate: the task's SGD rate, or Adam's own with `adam`; times `small-lr`'s
    /// factor (and before `lr-find`, which the run measures).
    pub lr: f64,
    /// Linear warm-up steps (0: none).
    pub warmup: u64,
    /// The rate's schedule after the warm-up.
    pub schedule: Schedule,
    /// Steps of the run (the schedule's length).
    pub steps: u64,
    /// The optimizer (Adam's with the `adam` remedy).
    pub optimizer: OptimizerSettings,
    /// Coupled L2 coefficient λ (loss + λ/2 Σ‖W‖²).
    pub l2: f64,
    /// Decoupled weight decay λ (W ← W(1 − ηλ) after each step).
    pub weight_decay: f64,
    /// Max-norm cap on each unit's incoming weights.
    pub weight_max_norm: Option<f64>,
    /// Run a learning-rate range test first.
    pub lr_find: bool,
    /// The guard's configuration.
    pub guard: GuardConfig,
    /// The format of the forward and backward passes.
    pub precision: Precision,
    /// Dynamic loss scaling (the `loss-scale` remedy).
    pub loss_scale: Option<LossScalerConfig>,
    /// The z-loss coefficient C (loss + C · mean(log² Z); 0: none).
    pub z_loss: f64,
    remedies: Vec<Remedy>,
}

impl Plan {
    /// Applies `config.remedies` to `config` for a task whose data is `data`.
    pub fn new(config: &RunConfig, data: &TaskData) -> Result<Self, LabError> {
        config.validate()?;
        let recurrent = config.task.is_recurrent();
        let mut mlp = MlpConfig {
            inputs: data.inputs(),
            depth: config.depth,
            width: config.width,
            outputs: data.outputs(),
            activation: config.activation,
            init: config.init,
            init_gain: config.init_gain,
            norm: Norm::None,
            residual: false,
            bias_var: 0.0,
        };
        let mut rnn = RecurrentConfig {
            inputs: data.inputs(),
            hidden: config.width,
            outputs: data.outputs(),
            cell: config.cell,
            init: config.init,
            init_gain: config.init_gain,
        };
        let mut plan = Plan {
            model: ModelPlan::Mlp(mlp),
            lr: config.lr,
            warmup: config.warmup,
            schedule: config.schedule,
            steps: config.steps,
            optimizer: config.optimizer,
            l2: 0.0,
            weight_decay: 0.0,
            weight_max_norm: None,
            lr_find: false,
            guard: passthrough(config.checkpoint_every),
            precision: config.precision,
            loss_scale: None,
            z_loss: 0.0,
            remedies: config.remedies.clone(),
        };
        let only = |task_ok: bool, r: &Remedy, which: &str| {
            if task_ok {
                Ok(())
            } else {
                Err(LabError::Config(format!(
                    "remedy '{r}' applies to the {which} only (task '{}')",
                    config.task
                )))
            }
        };
        let lm = config.task == Task::Lm;
        let not_lm = |r: &Remedy| {
            if lm {
                Err(LabError::Config(format!(
                    "remedy '{r}' changes the MLP or recurrent models, not the lm task's transformer"
                )))
            } else {
                Ok(())
            }
        };
        let mut qk_norm = false;
        let mut guarded = false;
        let mut backoff = false;
        let mut lr_factor = 1.0;
        for r in &config.remedies {
            match *r {
                Remedy::L2(l) => plan.l2 = l,
                Remedy::WeightDecay(l) => plan.weight_decay = l,
                Remedy::MaxNorm(c) => plan.weight_max_norm = Some(c),
                Remedy::Init(init) => {
                    not_lm(r)?;
                    if init == Init::Lsuv {
                        only(config.task == Task::Mlp, r, "mlp task")?;
                    }
                    (mlp.init, mlp.init_gain, rnn.init, rnn.init_gain) = (init, 1.0, init, 1.0);
                }
                Remedy::Gain(g) => {
                    not_lm(r)?;
                    (mlp.init_gain, rnn.init_gain) = (g, g);
                }
                Remedy::Norm(n) => {
                    only(config.task == Task::Mlp, r, "mlp task")?;
                    mlp.norm = n;
                }
                Remedy::Shallow(n) => {
                    only(config.task == Task::Mlp, r, "mlp task")?;
                    mlp.depth = mlp.depth.min(n);
                }
                Remedy::Residual => {
                    only(config.task == Task::Mlp, r, "mlp task")?;
                    mlp.residual = true;
                }
                Remedy::Cell(c) => {
                    only(recurrent, r, "recurrent tasks")?;
                    if config.cell != Cell::Rnn {
                        return Err(LabError::Config(format!(
                            "remedy '{r}' replaces a vanilla rnn, but the run's cell is already {}",
                            config.cell.name()
                        )));
                    }
                    rnn.cell = c;
                }
                Remedy::QkNorm => {
                    only(lm, r, "lm task")?;
                    qk_norm = true;
                }
                Remedy::ZLoss(c) => {
                    only(lm, r, "lm task")?;
                    plan.z_loss = c;
                }
                Remedy::SmallLr(f) => lr_factor *= f,
                Remedy::Warmup(n) => plan.warmup = n,
                Remedy::Adam(rate) => {
                    plan.optimizer.kind = OptimizerKind::Adam;
                    plan.lr = rate;
                }
                Remedy::LrFind => plan.lr_find = true,
                Remedy::LossScale(init_scale) => {
                    let scaler = LossScalerConfig {
                        init_scale,
                        ..LossScalerConfig::default()
                    };
                    plan.loss_scale = Some(scaler.validated()?);
                }
                Remedy::Backoff => backoff = true,
                Remedy::Guard => guarded = true,
                Remedy::Clip(_) => {}
            }
        }
        plan.lr *= lr_factor;
        if guarded {
            // The default guard, as a user gets it; snapshots at the run's checkpoints.
            plan.guard = GuardConfig {
                snapshot_every: config.checkpoint_every,
                ..GuardConfig::default()
            };
        } else if backoff {
            plan.guard.grad_spike = Some(Default::default());
            plan.guard.loss_spike = Some(Default::default());
            plan.guard.on_spike = SpikeAction::Ignore;
        }
        plan.model = match config.task {
            Task::Mlp => ModelPlan::Mlp(mlp),
            Task::Adding | Task::Order => ModelPlan::Recurrent(rnn),
            Task::Lm => ModelPlan::Lm(TransformerConfig {
                vocab: data.outputs(),
                layers: config.depth,
                width: config.width,
                heads: config.lm.heads,
                context: config.seq_len,
                pre_norm: !config.lm.post_norm,
                embed_std: config.lm.embed_std,
                qk_norm,
            }),
        };
        // Build the guard once now so a bad setting fails before training starts.
        plan.build_guard()?;
        Ok(plan)
    }

    /// A fresh guard with this plan's rules (clip remedies, in the order given).
    pub fn build_guard(&self) -> Result<Guard, LabError> {
        let mut rules: Vec<Box<dyn Rule>> = Vec::new();
        for r in &self.remedies {
            if let Remedy::Clip(rule) = r {
                rules.push(rule.build()?);
            }
        }
        let guard = Guard::new(self.guard.clone(), Chain::new(rules)?)?;
        Ok(match self.loss_scale {
            Some(config) => guard.with_loss_scaler(LossScaler::new(config)?),
            None => guard,
        })
    }

    /// The optimizer and why the run trains at `lr` (its base rate after any range test), for
    /// the report: e.g. "Adam (β 0.9/0.999, ε 1e-8) 0.001 (Adam's own rate)".
    pub fn rate_choice(&self, lr: f64) -> String {
        let optimizer = self.optimizer.describe();
        let adam_rate = self.remedies.iter().find_map(|r| match r {
            Remedy::Adam(rate) => Some(*rate),
            _ => None,
        });
        let mut why = vec![match adam_rate {
            Some(rate) if rate == crate::remedy::ADAM_LR => "Adam's own rate".to_string(),
            Some(_) => "the rate set for Adam".to_string(),
            None if self.optimizer.kind == OptimizerKind::Sgd => "the task's rate".to_string(),
            None => "the rate set".to_string(),
        }];
        for r in &self.remedies {
            if let Remedy::SmallLr(f) = r {
                why.push(format!("× {f} (small-lr)"));
            }
        }
        if self.lr_find && lr < self.lr {
            why = vec!["a tenth of the range test's largest stable rate".into()];
        }
        if self.warmup > 0 {
            why.push(format!("warmed up over {} steps", self.warmup));
        }
        if self.schedule != Schedule::Constant {
            why.push(format!("{} schedule", self.schedule.name()));
        }
        format!("{optimizer} {lr} ({})", why.join(", "))
    }

    /// The learning rate at `step` for a base rate `lr`: linear warm-up, then the schedule
    /// ([`Schedule::rate`]).
    pub fn lr_at(&self, lr: f64, step: u64) -> f64 {
        self.schedule.rate(lr, step, self.steps, self.warmup)
    }

    /// A fresh optimizer of this plan.
    pub fn optimizer(&self) -> burn::optim::ModuleOptimizer {
        self.optimizer.build()
    }
}

/// A guard that only measures: non-finite steps reach the optimizer as an unguarded loop's
/// would, nothing is skipped, and snapshots (checkpoints) come every `every` steps.
fn passthrough(every: u64) -> GuardConfig {
    GuardConfig {
        non_finite: NonFinitePolicy::Apply,
        grad_spike: None,
        loss_spike: None,
        on_spike: SpikeAction::Ignore,
        snapshot_every: every,
        max_consecutive_bad: u32::MAX,
        update_bound: None,
        ..GuardConfig::default()
    }
}

/// Builds the network of `plan` (LSUV scales it on the first training examples).
pub(crate) fn build_net(
    plan: &Plan,
    data: &TaskData,
    seed: u64,
    device: &Device,
) -> Result<Net, LabError> {
    // The flex device has one random generator per process: a sweep's parallel runs would draw
    // each other's numbers between `seed` and the initializers that use it (the transformer's
    // are Burn's own). One build at a time keeps every run a function of its seed.
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    device.seed(seed);
    Ok(match plan.model {
        ModelPlan::Mlp(config) => {
            let mut mlp = config.init(device, seed)?;
            if config.init == Init::Lsuv {
                let batch = data.train_batch(0, LSUV_BATCH, seed);
                let x = burn::tensor::Tensor::from_data(
                    burn::tensor::TensorData::new(batch.inputs, batch.shape),
                    device,
                );
                mlp = mlp.lsuv(x, 0.02).0;
            }
            Net::Mlp(mlp)
        }
        ModelPlan::Recurrent(config) => Net::Recurrent(config.init(device, seed)?),
        ModelPlan::Lm(config) => Net::Lm(config.init(device)?),
    })
}
