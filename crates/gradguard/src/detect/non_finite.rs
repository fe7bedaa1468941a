//! Finding the first non-finite gradient value, by tensor name and index.

use serde::{Deserialize, Serialize};

use crate::gradients::Gradients;
use crate::stats::{NonFiniteKind, TensorStats, first_non_finite};

/// Where the first non-finite gradient value is (tensors in model order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NonFiniteFinding {
    /// Name of the first tensor holding a NaN or ±inf.
    pub tensor: String,
    /// Flat index of the first such value in it.
    pub index: usize,
    /// What the value is.
    pub kind: NonFiniteKind,
    /// Non-finite values across all tensors.
    pub count: u64,
    /// Tensors holding at least one.
    pub tensors_affected: usize,
}

/// Reads the statistics of one pass; no further read of the gradients.
pub fn find_non_finite(grads: &dyn Gradients, stats: &[TensorStats]) -> Option<NonFiniteFinding> {
    let (t, at) = first_non_finite(stats)?;
    Some(NonFiniteFinding {
        tensor: grads.name(t).to_string(),
        index: at.index,
        kind: at.kind,
        count: stats.iter().map(TensorStats::non_finite).sum(),
        tensors_affected: stats.iter().filter(|s| !s.is_finite()).count(),
    })
}
