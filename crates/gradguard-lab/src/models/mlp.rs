//! A deep fully connected network whose depth, activation, initialization, normalization and
//! skip connections are the knobs.

use burn::module::{Module, Param};
use burn::nn::{BatchNorm, BatchNormConfig, LayerNorm, LayerNormConfig, Linear};
use burn::nn::{RmsNorm, RmsNormConfig};
use burn::tensor::{Device, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::init::{Init, draw_weight, linear, weight_rng};
use crate::error::LabError;

pub use gradguard_report::schemes::Norm;

/// The hidden layers' nonlinearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// tanh: critical at gain 1 (mean-field theory, σ_b = 0).
    Tanh,
    /// ReLU: critical at gain √2 (He et al. 2015).
    Relu,
    /// The identity: a deep linear network (Saxe et al. 2014), critical at gain 1.
    Linear,
}

impl Activation {
    /// `φ(x)`.
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Tanh => x.tanh(),
            Activation::Relu => burn::tensor::activation::relu(x),
            Activation::Linear => x,
        }
    }

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Tanh => "tanh",
            Activation::Relu => "relu",
            Activation::Linear => "linear",
        }
    }
}

impl std::str::FromStr for Activation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tanh" => Ok(Activation::Tanh),
            "relu" => Ok(Activation::Relu),
            "linear" => Ok(Activation::Linear),
            other => Err(format!(
                "unknown activation '{other}' (expected tanh, relu or linear)"
            )),
        }
    }
}

/// Shape and initialization of a [`DeepMlp`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Inputs per example.
    pub inputs: usize,
    /// Hidden layers (2 to 128 in the lab).
    pub depth: usize,
    /// Units per hidden layer.
    pub width: usize,
    /// Classes (outputs).
    pub outputs: usize,
    /// Nonlinearity.
    pub activation: Activation,
    /// How the weights are drawn.
    pub init: Init,
    /// Multiplies the scheme's standard deviation.
    pub init_gain: f64,
    /// Normalization before each nonlinearity.
    pub norm: Norm,
    /// Skip connections `h ← h + α·φ(norm(W h + b))` around every hidden layer after the first,
    /// with α = 1/√(number of branches): the sum of L unscaled branches grows the activations'
    /// variance with depth, and scaling each branch by 1/√L keeps it O(1) at initialization, as
    /// modern residual nets do in some form (Fixup, Zhang et al. 2019; SkipInit, De & Smith 2020;
    /// the 1/√L depth scaling of Hayou et al. 2021).
    pub residual: bool,
    /// Biases are drawn from N(0, σ_b²) with this σ_b² (0: biases start at 0).
    #[serde(default)]
    pub bias_var: f64,
}

impl MlpConfig {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), LabError> {
        if self.depth == 0 || self.width == 0 || self.inputs == 0 || self.outputs == 0 {
            return Err(LabError::Config(format!(
                "depth, width, inputs and outputs must be at least 1, got depth {}, width {}",
                self.depth, self.width
            )));
        }
        if !(self.init_gain > 0.0 && self.init_gain.is_finite()) {
            return Err(LabError::Config(format!(
                "init gain must be a positive number, got {}",
                self.init_gain
            )));
        }
        if !(self.bias_var >= 0.0 && self.bias_var.is_finite()) {
            return Err(LabError::Config(format!(
                "bias variance must be ≥ 0, got {}",
                self.bias_var
            )));
        }
        Ok(())
    }

    /// The network on `device`, its weights drawn from `seed` (biases 0).
    /// [`Init::Lsuv`] starts orthogonal here; [`DeepMlp::lsuv`] then scales it on data.
    pub fn init(&self, device: &Device, seed: u64) -> Result<DeepMlp, LabError> {
        self.validate()?;
        let mut rng = weight_rng(seed);
        let bias_std = self.bias_var.sqrt();
        let mut layer = |fan_in: usize, fan_out: usize| {
            let w = draw_weight(self.init, self.init_gain, fan_in, fan_out, &mut rng);
            // No draw at σ_b = 0, so the weights do not depend on whether biases are random.
            let b: Vec<f32> = if bias_std > 0.0 {
                (0..fan_out)
                    .map(|_| (bias_std * rng.sample::<f64, _>(rand_distr::StandardNormal)) as f32)
                    .collect()
            } else {
                vec![0.0; fan_out]
            };
            linear(fan_in, fan_out, w, Some(b), device)
        };
        let (mut batch, mut layer_norms, mut rms) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..self.depth {
            match self.norm {
                Norm::None => {}
                Norm::Batch => batch.push(BatchNormConfig::new(self.width).init(device)),
                Norm::Layer => layer_norms.push(LayerNormConfig::new(self.width).init(device)),
                Norm::Rms => rms.push(RmsNormConfig::new(self.width).init(device)),
            }
        }
        let layers = (0..self.depth)
            .map(|i| layer(if i == 0 { self.inputs } else { self.width }, self.width))
            .collect();
        let head = layer(self.width, self.outputs);
        Ok(DeepMlp {
            layers,
            batch_norms: batch,
            layer_norms,
            rms_norms: rms,
            head,
            activation: self.activation,
            residual: self.residual,
            branch_scale: branch_scale(self.depth),
        })
    }
}

/// α = 1/√(depth − 1): the scale of each of a residual MLP's `depth − 1` branches (1 without any).
fn branch_scale(depth: usize) -> f32 {
    1.0 / (depth.saturating_sub(1).max(1) as f32).sqrt()
}

/// `depth` × (Linear → norm → activation, with an optional skip), then a linear head.
#[derive(Module, Debug)]
pub struct DeepMlp {
    layers: Vec<Linear>,
    batch_norms: Vec<BatchNorm>,
    layer_norms: Vec<LayerNorm>,
    rms_norms: Vec<RmsNorm>,
    head: Linear,
    #[module(skip)]
    activation: Activation,
    #[module(skip)]
    residual: bool,
    /// α of every residual branch ([`MlpConfig::residual`]).
    #[module(skip)]
    branch_scale: f32,
}

impl DeepMlp {
    fn normalize(&self, i: usize, z: Tensor<2>) -> Tensor<2> {
        if let Some(n) = self.batch_norms.get(i) {
            n.forward(z)
        } else if let Some(n) = self.layer_norms.get(i) {
            n.forward(z)
        } else if let Some(n) = self.rms_norms.get(i) {
            n.forward(z)
        } else {
            z
        }
    }

    /// Hidden layer `i` applied to `h`: `φ(norm(W h + b))`; with skip connections
    /// `h + α·φ(norm(W h + b))`.
    pub fn hidden(&self, i: usize, h: Tensor<2>) -> Tensor<2> {
        let out = self
            .activation
            .apply(self.normalize(i, self.layers[i].forward(h.clone())));
        if self.residual && i > 0 {
            h + out.mul_scalar(self.branch_scale)
        } else {
            out
        }
    }

    /// Logits for a batch `[n, inputs]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = (0..self.layers.len()).fold(x, |h, i| self.hidden(i, h));
        self.head.forward(h)
    }

    /// Hidden layers.
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// Layer-sequential unit variance (Mishkin & Matas 2016): for each hidden layer in order,
    /// rescales `W` (and `b`) by `1/√Var(Wh + b)` over the batch `x` until the variance is within
    /// `tolerance` of 1 (at most 10 passes per layer). Returns the variances reached.
    pub fn lsuv(mut self, x: Tensor<2>, tolerance: f64) -> (Self, Vec<f64>) {
        let mut h = x.detach();
        let mut reached = Vec::with_capacity(self.layers.len());
        for i in 0..self.layers.len() {
            let mut var = f64::NAN;
            for _ in 0..10 {
                var = variance(self.layers[i].forward(h.clone()));
                if !(var > 0.0 && var.is_finite()) || (var - 1.0).abs() <= tolerance {
                    break;
                }
                let scale = (1.0 / var.sqrt()) as f32;
                let layer = &mut self.layers[i];
                layer.weight = Param::from_tensor((layer.weight.val().inner() * scale).autodiff());
                if let Some(b) = &layer.bias {
                    layer.bias = Some(Param::from_tensor((b.val().inner() * scale).autodiff()));
                }
            }
            reached.push(var);
            h = self.hidden(i, h).detach();
        }
        (self, reached)
    }
}

/// Variance of every value of `z`, on the host, in f64.
fn variance(z: Tensor<2>) -> f64 {
    let values: Vec<f32> = z.into_data().try_to_vec::<f32>().unwrap_or_default();
    let n = values.len().max(1) as f64;
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    values
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n
}
