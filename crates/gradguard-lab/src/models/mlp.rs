//! A deep fully connected network whose depth, activation and initialization gain are the knobs.

use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::LabError;

/// The hidden layers' nonlinearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// tanh: critical at gain 1 (mean-field theory, σ_b = 0).
    Tanh,
    /// ReLU: critical at gain √2 (He et al. 2015).
    Relu,
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
    /// Weights are drawn from N(0, gain² / fan_in) — biases too.
    pub init_gain: f64,
}

impl MlpConfig {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), LabError> {
        if self.depth == 0 || self.width == 0 || self.inputs == 0 || self.outputs == 0 {
            return Err(LabError::Config(format!(
                "depth, width, inputs and outputs must be at least 1, got {self:?}"
            )));
        }
        if !(self.init_gain > 0.0 && self.init_gain.is_finite()) {
            return Err(LabError::Config(format!(
                "init gain must be a positive number, got {}",
                self.init_gain
            )));
        }
        Ok(())
    }

    /// The network, initialized on `device` (seed the device first for a reproducible draw).
    pub fn init(&self, device: &Device) -> Result<DeepMlp, LabError> {
        self.validate()?;
        let layer = |fan_in: usize, fan_out: usize| {
            LinearConfig::new(fan_in, fan_out)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: self.init_gain / (fan_in as f64).sqrt(),
                })
                .init(device)
        };
        Ok(DeepMlp {
            layers: (0..self.depth)
                .map(|i| layer(if i == 0 { self.inputs } else { self.width }, self.width))
                .collect(),
            head: layer(self.width, self.outputs),
            relu: self.activation == Activation::Relu,
        })
    }
}

/// `depth` × (Linear → activation), then a linear head producing logits.
#[derive(Module, Debug)]
pub struct DeepMlp {
    layers: Vec<Linear>,
    head: Linear,
    #[module(skip)]
    relu: bool,
}

impl DeepMlp {
    /// Logits for a batch `[n, inputs]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mut h = x;
        for layer in &self.layers {
            h = layer.forward(h);
            h = if self.relu {
                burn::tensor::activation::relu(h)
            } else {
                h.tanh()
            };
        }
        self.head.forward(h)
    }

    /// Hidden layers.
    pub fn depth(&self) -> usize {
        self.layers.len()
    }
}
