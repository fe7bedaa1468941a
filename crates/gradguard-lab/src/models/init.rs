//! Weight initialization schemes, each scaled by a gain.

use burn::nn::Initializer;
use serde::{Deserialize, Serialize};

/// How a layer's weight matrix `W ∈ ℝ^{fan_in × fan_out}` is drawn. Every scheme multiplies its
/// standard deviation by the run's `init_gain`; biases start at 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// `W ~ N(0, gain² / fan_in)`: the knob of mean-field analyses (Poole et al. 2016), where
    /// gain 1 is critical for tanh and √2 for ReLU.
    Gaussian,
    /// Glorot & Bengio (2010): `N(0, gain² · 2 / (fan_in + fan_out))`.
    Xavier,
    /// He et al. (2015): `N(0, gain² · 2 / fan_in)`, which keeps ReLU activations' variance.
    He,
    /// Saxe et al. (2014): `gain · Q` with `Q` a (semi-)orthogonal matrix.
    Orthogonal,
    /// Mishkin & Matas (2016), layer-sequential unit variance: orthogonal, then each layer's
    /// weight is rescaled until its pre-activations on a data batch have variance 1 (the gain
    /// is ignored; the data sets the scale). Deep MLP only.
    Lsuv,
}

impl Init {
    /// Every scheme, in the order the CLI lists them.
    pub const ALL: [Init; 5] = [
        Init::Gaussian,
        Init::Xavier,
        Init::He,
        Init::Orthogonal,
        Init::Lsuv,
    ];

    /// The scheme's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Init::Gaussian => "gaussian",
            Init::Xavier => "xavier",
            Init::He => "he",
            Init::Orthogonal => "orthogonal",
            Init::Lsuv => "lsuv",
        }
    }

    /// The Burn initializer of a weight with this scheme and `gain`.
    pub(crate) fn initializer(self, gain: f64, fan_in: usize) -> Initializer {
        match self {
            Init::Gaussian => Initializer::Normal {
                mean: 0.0,
                std: gain / (fan_in as f64).sqrt(),
            },
            Init::Xavier => Initializer::XavierNormal { gain },
            Init::He => Initializer::KaimingNormal {
                gain: gain * std::f64::consts::SQRT_2,
                fan_out_only: false,
            },
            Init::Orthogonal | Init::Lsuv => Initializer::Orthogonal { gain },
        }
    }
}

impl std::fmt::Display for Init {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Init {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Init::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .ok_or_else(|| {
                format!("unknown init '{s}' (expected gaussian, xavier, he, orthogonal or lsuv)")
            })
    }
}
