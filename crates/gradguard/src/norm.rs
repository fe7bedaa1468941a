//! Norm types and the per-tensor and global p-norms built from one statistics pass.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{GuardError, Result};
use crate::gradients::Gradients;
use crate::stats::{TensorStats, combined};

/// Which p-norm: ‖g‖_p = (Σ |g|^p)^(1/p), with ‖g‖_∞ = max |g|.
///
/// Written on the command line and in configs as `1`, `2`, `inf` or any number ≥ 1.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum NormType {
    /// Σ |g|.
    L1,
    /// √(Σ g²), the default everywhere (PyTorch's `norm_type=2.0`).
    #[default]
    L2,
    /// max |g|.
    Inf,
    /// Any finite p ≥ 1 other than 1 or 2.
    P(f64),
}

impl NormType {
    /// Builds a norm type from p, rejecting p < 1 (not a norm) and NaN.
    pub fn from_p(p: f64) -> Result<Self> {
        if p == f64::INFINITY {
            Ok(NormType::Inf)
        } else if p == 1.0 {
            Ok(NormType::L1)
        } else if p == 2.0 {
            Ok(NormType::L2)
        } else if p.is_finite() && p > 1.0 {
            Ok(NormType::P(p))
        } else {
            Err(GuardError::InvalidConfig(format!(
                "norm type must be a number >= 1 or 'inf', got {p}"
            )))
        }
    }

    /// The exponent p (∞ for [`NormType::Inf`]).
    pub fn p(&self) -> f64 {
        match self {
            NormType::L1 => 1.0,
            NormType::L2 => 2.0,
            NormType::Inf => f64::INFINITY,
            NormType::P(p) => *p,
        }
    }

    /// The norm of a single tensor given its statistics, for the norms the fused pass covers
    /// (1, 2, ∞). `None` for a general p, which needs [`Gradients::power_sums`].
    pub fn from_stats(&self, s: &TensorStats) -> Option<f64> {
        match self {
            NormType::L1 => Some(s.l1()),
            NormType::L2 => Some(s.l2()),
            NormType::Inf => Some(s.linf()),
            NormType::P(_) => None,
        }
    }
}

impl fmt::Display for NormType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NormType::L1 => f.write_str("1"),
            NormType::L2 => f.write_str("2"),
            NormType::Inf => f.write_str("inf"),
            NormType::P(p) => write!(f, "{p}"),
        }
    }
}

impl FromStr for NormType {
    type Err = GuardError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "inf" | "infinity" => Ok(NormType::Inf),
            other => {
                let p: f64 = other.parse().map_err(|_| {
                    GuardError::InvalidConfig(format!(
                        "norm type must be a number >= 1 or 'inf', got '{s}'"
                    ))
                })?;
                NormType::from_p(p)
            }
        }
    }
}

impl Serialize for NormType {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for NormType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// NaN if any tensor holds a NaN, +inf if any holds an infinity.
fn non_finite_total(stats: &[TensorStats]) -> Option<f64> {
    let all = combined(stats);
    if all.nan_count > 0 {
        Some(f64::NAN)
    } else if all.inf_count > 0 {
        Some(f64::INFINITY)
    } else {
        None
    }
}

/// The p-norm of each tensor. Norms 1, 2 and ∞ come from `stats` with no further read; a general
/// p costs one more read, scaled by each tensor's own max |g| so that no power overflows.
pub fn tensor_norms(grads: &dyn Gradients, stats: &[TensorStats], norm: NormType) -> Vec<f64> {
    match norm {
        NormType::P(p) => {
            let scales: Vec<f64> = stats.iter().map(|s| s.max_abs).collect();
            let sums = grads.power_sums(p, &scales);
            stats
                .iter()
                .zip(sums)
                .map(|(s, sum)| {
                    if !s.is_finite() {
                        s.l2()
                    } else if s.max_abs == 0.0 {
                        0.0
                    } else {
                        s.max_abs * sum.powf(1.0 / p)
                    }
                })
                .collect()
        }
        fixed => stats
            .iter()
            .map(|s| {
                fixed
                    .from_stats(s)
                    .expect("1, 2 and inf come from the stats")
            })
            .collect(),
    }
}

/// The p-norm of all tensors taken as one vector — PyTorch's `total_norm` in `clip_grad_norm_`
/// (the p-norm of the per-tensor p-norms, which is the same number). Accumulated in f64.
pub fn total_norm(grads: &dyn Gradients, stats: &[TensorStats], norm: NormType) -> f64 {
    if let Some(bad) = non_finite_total(stats) {
        return bad;
    }
    let all = combined(stats);
    match norm {
        NormType::P(p) => {
            if all.max_abs == 0.0 {
                return 0.0;
            }
            let scales = vec![all.max_abs; stats.len()];
            let sum: f64 = grads.power_sums(p, &scales).iter().sum();
            all.max_abs * sum.powf(1.0 / p)
        }
        fixed => fixed
            .from_stats(&all)
            .expect("1, 2 and inf come from the stats"),
    }
}
