//! The probe: predicts explosion before training by treating the network as a dynamical system.
//!
//! The gradient at layer `l` is the product of the Jacobians above it, so its norm grows or
//! shrinks like `exp(λ·L)` where λ, the mean log gain per layer, is the finite-depth Lyapunov
//! exponent of the backward dynamics. λ > 0 explodes, λ < 0 vanishes, λ ≈ 0 is the edge of
//! chaos; [`calibrate`] finds the initialization gain there and [`meanfield`] predicts it.

mod agreement;
mod butterfly;
mod calibrate;
mod jacobian;
pub mod meanfield;
pub mod page;
mod rate_agreement;
mod rate_page;
mod task;
pub mod text;

use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use serde::{Deserialize, Serialize};

pub use agreement::{
    AgreementCell, AgreementResult, CHAOTIC_DEPTHS, DIVERGING_FIRST_STEP, STALLING_RATIO,
    agreement, informed_prediction,
};
pub use butterfly::{Butterfly, butterfly};
pub use calibrate::{PhaseDiagram, calibrate, phase_diagram};
pub use gradguard_burn::probe::{ModelProbe, ProbeSettings};
pub use rate_agreement::{
    AGREEMENT_FACTOR, RateAgreement, RateCell, rate_agreement, rate_agreement_text, rate_cell,
};
pub use rate_page::rate_agreement_page;
pub use task::{TaskProbe, probe_task};

use crate::error::LabError;
use crate::models::{
    Activation, Cell, DeepMlp, Init, MlpConfig, Norm, RecurrentConfig, RecurrentNet,
};
use crate::tasks::{Task, TaskData};
use meanfield::{MIN_VARIANCE, Theory};

/// Generator stream of the probe's inputs and vectors (data 0–1, weights 2).
const PROBE_STREAM: u64 = 3;

/// What to probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeConfig {
    /// Hidden layers (MLP).
    pub depth: usize,
    /// Units per layer, or hidden units (recurrent).
    pub width: usize,
    /// The MLP's nonlinearity.
    pub activation: Activation,
    /// Weight initialization (the recurrent weight's, for recurrent models).
    pub init: Init,
    /// Multiplies the initialization's standard deviation (σ_w for `gaussian`).
    pub init_gain: f64,
    /// σ_b²: biases drawn from N(0, σ_b²) (MLP).
    pub bias_var: f64,
    /// Normalization before each nonlinearity (MLP; batch norm couples examples and is refused).
    pub norm: Norm,
    /// Skip connections (MLP).
    pub residual: bool,
    /// A recurrent cell instead of an MLP.
    pub cell: Option<Cell>,
    /// Time steps (recurrent).
    pub seq_len: usize,
    /// Random vectors per input.
    pub probes: usize,
    /// Inputs.
    pub inputs: usize,
    /// The variance of the inputs; `None`: the mean-field fixed point `q*` of (σ_w, σ_b²), at least
    /// 1e-4 (MLP), or adding-problem sequences (recurrent).
    pub input_var: Option<f64>,
    /// Draw the inputs as φ(z), z ~ N(0, q), with this q instead of this gain's fixed point
    /// ([`calibrate`] holds it at the critical gain's q*, so every gain sees the same inputs).
    #[serde(default)]
    pub input_q: Option<f64>,
    /// Seed of the weights, inputs and vectors.
    pub seed: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            depth: 50,
            width: 256,
            activation: Activation::Tanh,
            init: Init::Gaussian,
            init_gain: 1.0,
            bias_var: 0.0,
            norm: Norm::None,
            residual: false,
            cell: None,
            seq_len: 100,
            probes: 4,
            inputs: 16,
            input_var: None,
            input_q: None,
            seed: 0,
        }
    }
}

/// The probe's verdict on the backward dynamics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// λ > tolerance: gradients grow towards the input.
    Exploding,
    /// λ < −tolerance: gradients shrink towards the input.
    Vanishing,
    /// |λ| within the tolerance: the edge of chaos.
    Critical,
}

impl Verdict {
    /// The verdict's name.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Exploding => "exploding",
            Verdict::Vanishing => "vanishing",
            Verdict::Critical => "critical",
        }
    }
}

/// Per-layer log-gain tolerance of a `critical` verdict: |λ| ≤ 0.01 keeps the gradient ratio
/// within e^{±0.5} ≈ ×1.65 over 50 layers. Twice λ's standard error is used when larger.
pub const CRITICAL_TOLERANCE: f64 = 0.01;

/// What the probe measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// The configuration probed.
    pub config: ProbeConfig,
    /// Geometric-mean backward gain ‖Jᵀv‖/‖v‖ of each layer (time step), input side first.
    pub per_layer_gain: Vec<f64>,
    /// Its standard error, as a factor: the gain is within `gain ÷× err` (one σ).
    pub per_layer_gain_err: Vec<f64>,
    /// λ: the mean log gain per layer (time step) of the backward dynamics.
    pub lyapunov: f64,
    /// λ's standard error over inputs and probes.
    pub lyapunov_err: f64,
    /// exp(λ·L): the predicted ratio of first-layer to last-layer gradient norm.
    pub predicted_gradient_ratio: f64,
    /// Geometric-mean forward growth of a small input perturbation, per layer (time step).
    pub per_layer_forward_gain: Vec<f64>,
    /// The forward exponent: mean log growth of a perturbation per layer (time step).
    pub forward_lyapunov: f64,
    /// The verdict.
    pub verdict: Verdict,
    /// The tolerance the verdict used (max of [`CRITICAL_TOLERANCE`] and 2 standard errors).
    pub tolerance: f64,
    /// The depth (steps) at which the gradient ratio passes 1e3 (exploding) or 1e-3 (vanishing).
    pub depth_to_1e3: Option<f64>,
    /// The variance of the inputs used.
    pub input_variance: Option<f64>,
    /// Mean-field theory at this (σ_w, σ_b²), for a Gaussian-family MLP without norm or skips.
    pub theory: Option<Theory>,
    /// Seconds the probe took.
    pub seconds: f64,
}

/// σ_w of `init` at `gain` for square layers, as mean-field theory reads it.
fn sigma_w(init: Init, gain: f64) -> Option<f64> {
    match init {
        Init::Gaussian | Init::Xavier | Init::Orthogonal => Some(gain),
        Init::He => Some(gain * std::f64::consts::SQRT_2),
        Init::Lsuv => None,
    }
}

fn stats(rows: &[f64]) -> (f64, f64) {
    let n = rows.len().max(1) as f64;
    let mean = rows.iter().sum::<f64>() / n;
    let var = rows.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, (var / n).sqrt())
}

impl ProbeConfig {
    fn validate(&self) -> Result<(), LabError> {
        let bad = |m: String| Err(LabError::Config(m));
        if self.depth == 0 || self.width == 0 || self.probes == 0 || self.inputs == 0 {
            return bad("depth, width, probes and inputs must be at least 1".into());
        }
        if self.cell.is_some() && self.seq_len < 2 {
            return bad(format!(
                "sequence length must be at least 2, got {}",
                self.seq_len
            ));
        }
        if self.norm == Norm::Batch {
            return bad(
                "the probe measures one example at a time; batch norm couples examples (use \
                 layer or rms)"
                    .into(),
            );
        }
        if self.init == Init::Lsuv {
            return bad("lsuv needs data; probe a trained run directory instead".into());
        }
        if let Some(v) = self.input_var
            && !(v > 0.0 && v.is_finite())
        {
            return bad(format!("input variance must be positive, got {v}"));
        }
        Ok(())
    }

    /// The mean-field theory of this configuration, when it applies.
    pub fn theory(&self) -> Option<Theory> {
        let plain = self.cell.is_none() && self.norm == Norm::None && !self.residual;
        let sw = sigma_w(self.init, self.init_gain)?;
        plain.then(|| meanfield::predict(self.activation, sw, self.bias_var))
    }
}

/// Runs the probe on a freshly initialized network of `config`.
pub fn probe(config: &ProbeConfig) -> Result<ProbeResult, LabError> {
    config.validate()?;
    let started = Instant::now();
    let device = Device::flex().autodiff();
    let mut rng = crate::tasks::rng(config.seed, PROBE_STREAM, 0);
    let rows = config.inputs * config.probes;
    let theory = config.theory();
    let (backward, forward, input_variance, layers) = match config.cell {
        None => {
            let mlp = MlpConfig {
                inputs: config.width,
                depth: config.depth,
                width: config.width,
                outputs: 1,
                activation: config.activation,
                init: config.init,
                init_gain: config.init_gain,
                norm: config.norm,
                residual: config.residual,
                bias_var: config.bias_var,
            }
            .init(&device, config.seed)?;
            let q = config.input_var.or(config.input_q).unwrap_or_else(|| {
                theory
                    .and_then(|t| t.q_star)
                    .unwrap_or(1.0)
                    .max(MIN_VARIANCE)
            });
            // Inputs as if from a layer at variance q: φ(z), z ~ N(0, q), each repeated for
            // every probe vector (linear: z itself).
            let one: Vec<f32> = (0..config.inputs * config.width)
                .map(|_| {
                    let z = q.sqrt() * rng.sample::<f64, _>(rand_distr::StandardNormal);
                    let x = if config.input_var.is_some() {
                        z
                    } else {
                        match config.activation {
                            Activation::Tanh => z.tanh(),
                            Activation::Relu => z.max(0.0),
                            Activation::Linear => z,
                        }
                    };
                    x as f32
                })
                .collect();
            let x: Vec<f32> = (0..config.probes)
                .flat_map(|_| one.iter().copied())
                .collect();
            let x0 = Tensor::from_data(TensorData::new(x, [rows, config.width]), &device);
            let (b, f) = jacobian::mlp_gains(&mlp, x0, &mut rng, &device);
            (b, f, Some(q), config.depth)
        }
        Some(cell) => {
            let net = RecurrentConfig {
                inputs: 2,
                hidden: config.width,
                outputs: 1,
                cell,
                init: config.init,
                init_gain: config.init_gain,
            }
            .init(&device, config.seed)?;
            let (b, f) = probe_recurrent(&net, config, rows, &mut rng, &device)?;
            (b, f, None, config.seq_len)
        }
    };
    Ok(summarize(
        config.clone(),
        &backward,
        &forward,
        input_variance,
        theory,
        layers,
        &started,
    ))
}

fn probe_recurrent(
    net: &RecurrentNet,
    config: &ProbeConfig,
    rows: usize,
    rng: &mut rand_chacha::ChaCha8Rng,
    device: &Device,
) -> Result<(jacobian::LogGains, jacobian::LogGains), LabError> {
    let data = TaskData::new(Task::Adding, config.seq_len, config.seed)?;
    let batch = data.train_batch(0, rows, config.seed);
    let x = Tensor::from_data(TensorData::new(batch.inputs, batch.shape), device);
    Ok(jacobian::recurrent_gains(net, net.project(x), rng, device))
}

/// Probes the hidden layers of a trained (or any) MLP at real inputs `x0`.
pub fn probe_mlp_at(mlp: &DeepMlp, x0: Tensor<2>, config: ProbeConfig, seed: u64) -> ProbeResult {
    let started = Instant::now();
    let device = x0.device();
    let mut rng = crate::tasks::rng(seed, PROBE_STREAM, 1);
    let (b, f) = jacobian::mlp_gains(mlp, x0, &mut rng, &device);
    let layers = b.len();
    summarize(config, &b, &f, None, None, layers, &started)
}

/// Probes the trained MLP of a `gradguard train` run directory at `rows` of its task's inputs.
pub fn probe_run_dir(
    dir: &std::path::Path,
    rows: usize,
    seed: u64,
) -> Result<ProbeResult, LabError> {
    let (run, net) = crate::run_dir::load_run_model(dir)?;
    let crate::models::Net::Mlp(mlp) = net else {
        return Err(LabError::Config(format!(
            "{} holds a recurrent run; the probe reads MLP run directories",
            dir.display()
        )));
    };
    let data = TaskData::new(run.task, run.seq_len, run.seed)?;
    let batch = data.train_batch(0, rows.max(1), run.seed);
    let device = Device::flex().autodiff();
    let x0 = Tensor::from_data(TensorData::new(batch.inputs, batch.shape), &device);
    let config = ProbeConfig {
        depth: run.depth,
        width: run.width,
        activation: run.activation,
        init: run.init,
        init_gain: run.init_gain,
        inputs: rows.max(1),
        probes: 1,
        seed,
        ..ProbeConfig::default()
    };
    Ok(probe_mlp_at(&mlp, x0, config, seed))
}

fn summarize(
    config: ProbeConfig,
    backward: &jacobian::LogGains,
    forward: &jacobian::LogGains,
    input_variance: Option<f64>,
    theory: Option<Theory>,
    layers: usize,
    started: &Instant,
) -> ProbeResult {
    let per_layer: Vec<(f64, f64)> = backward.iter().map(|rows| stats(rows)).collect();
    let rows = backward.first().map_or(0, Vec::len);
    // λ per example (mean over layers), then its mean and standard error over examples.
    let per_row: Vec<f64> = (0..rows)
        .map(|r| backward.iter().map(|l| l[r]).sum::<f64>() / layers.max(1) as f64)
        .collect();
    let (lyapunov, lyapunov_err) = stats(&per_row);
    let forward_means: Vec<f64> = forward.iter().map(|rows| stats(rows).0).collect();
    let forward_lyapunov = forward_means.iter().sum::<f64>() / forward_means.len().max(1) as f64;
    let tolerance = CRITICAL_TOLERANCE.max(2.0 * lyapunov_err);
    let verdict = if lyapunov > tolerance {
        Verdict::Exploding
    } else if lyapunov < -tolerance {
        Verdict::Vanishing
    } else {
        Verdict::Critical
    };
    ProbeResult {
        config,
        per_layer_gain: per_layer.iter().map(|(m, _)| m.exp()).collect(),
        per_layer_gain_err: per_layer.iter().map(|(_, e)| e.exp()).collect(),
        lyapunov,
        lyapunov_err,
        predicted_gradient_ratio: (lyapunov * layers as f64).exp(),
        per_layer_forward_gain: forward_means.iter().map(|m| m.exp()).collect(),
        forward_lyapunov,
        verdict,
        tolerance,
        depth_to_1e3: (verdict != Verdict::Critical).then(|| 1e3f64.ln() / lyapunov.abs()),
        input_variance,
        theory,
        seconds: started.elapsed().as_secs_f64(),
    }
}
