//! The lab's architecture choices that a remedy can name — how weights are drawn ([`Init`]),
//! the normalization of an MLP ([`Norm`]) and the recurrent cell ([`Cell`]) — as plain data, so
//! that a run's summary holds its remedies as values ([`crate::remedy::Remedy`]). The lab builds
//! the networks from them.

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

/// Normalization between each hidden layer's linear map and its nonlinearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// None.
    #[default]
    None,
    /// Batch normalization (Ioffe & Szegedy 2015): batch statistics in training, running ones
    /// in evaluation.
    Batch,
    /// Layer normalization (Ba et al. 2016).
    Layer,
    /// RMS normalization (Zhang & Sennrich 2019).
    Rms,
}

/// The recurrent cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cell {
    /// `h ← tanh(W x + U h + b)` (Elman 1990).
    Rnn,
    /// Long short-term memory (Hochreiter & Schmidhuber 1997; forget gate of Gers et al. 2000,
    /// forget bias 1 as in Jozefowicz et al. 2015): the cell state's additive path carries the
    /// gradient without repeated multiplication by `U`.
    Lstm,
    /// Gated recurrent unit (Cho et al. 2014), reset applied after the recurrent product.
    Gru,
}

impl Cell {
    /// The cell's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Cell::Rnn => "rnn",
            Cell::Lstm => "lstm",
            Cell::Gru => "gru",
        }
    }

    /// Gate blocks in the projections (1, 4 or 3).
    pub fn gates(self) -> usize {
        match self {
            Cell::Rnn => 1,
            Cell::Lstm => 4,
            Cell::Gru => 3,
        }
    }
}

impl std::str::FromStr for Cell {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rnn" => Ok(Cell::Rnn),
            "lstm" => Ok(Cell::Lstm),
            "gru" => Ok(Cell::Gru),
            other => Err(format!(
                "unknown cell '{other}' (expected rnn, lstm or gru)"
            )),
        }
    }
}
