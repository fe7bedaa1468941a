//! Per-tensor statistics, computed in one fused read of the gradient bytes.

use serde::{Deserialize, Serialize};

/// Statistics of one gradient tensor (or a slice of one), from one pass over its values.
///
/// Sums cover the finite values only and accumulate in f64, so a finite f32 tensor never
/// overflows: the largest f32 squared is ~1.2e77, far inside f64's range. Non-finite values are
/// counted and the first one's flat index is kept; [`TensorStats::l2`] and friends then report NaN
/// (any NaN present) or +inf (only infinities present), as PyTorch's norms do.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct TensorStats {
    /// Number of values.
    pub len: usize,
    /// Σ g² over finite values.
    pub sum_squares: f64,
    /// Σ |g| over finite values.
    pub sum_abs: f64,
    /// max |g| over finite values (0 for an empty tensor).
    pub max_abs: f64,
    /// Count of NaN values.
    pub nan_count: u64,
    /// Count of ±inf values.
    pub inf_count: u64,
    /// The first non-finite value (flat index and kind), if any.
    pub first_non_finite: Option<NonFiniteAt>,
}

/// What a non-finite value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NonFiniteKind {
    /// Not a number.
    #[serde(rename = "NaN")]
    Nan,
    /// +∞.
    #[serde(rename = "inf")]
    PosInf,
    /// −∞.
    #[serde(rename = "-inf")]
    NegInf,
}

impl NonFiniteKind {
    /// The kind of `x` (an `f32` or `f64`), or `None` when `x` is finite.
    pub fn of(x: impl Into<f64>) -> Option<Self> {
        let x: f64 = x.into();
        if x.is_nan() {
            Some(NonFiniteKind::Nan)
        } else if x == f64::INFINITY {
            Some(NonFiniteKind::PosInf)
        } else if x == f64::NEG_INFINITY {
            Some(NonFiniteKind::NegInf)
        } else {
            None
        }
    }
}

impl std::fmt::Display for NonFiniteKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NonFiniteKind::Nan => "NaN",
            NonFiniteKind::PosInf => "inf",
            NonFiniteKind::NegInf => "-inf",
        })
    }
}

/// Where the first non-finite value of a tensor is, and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonFiniteAt {
    /// Flat (row-major) index.
    pub index: usize,
    /// NaN, inf or -inf.
    pub kind: NonFiniteKind,
}

impl TensorStats {
    /// Number of NaN and ±inf values.
    pub fn non_finite(&self) -> u64 {
        self.nan_count + self.inf_count
    }

    /// Whether every value is finite.
    pub fn is_finite(&self) -> bool {
        self.non_finite() == 0
    }

    /// NaN if a NaN is present, +inf if an infinity is present, else `None`.
    fn non_finite_norm(&self) -> Option<f64> {
        if self.nan_count > 0 {
            Some(f64::NAN)
        } else if self.inf_count > 0 {
            Some(f64::INFINITY)
        } else {
            None
        }
    }

    /// Euclidean norm ‖g‖₂ = √(Σ g²).
    pub fn l2(&self) -> f64 {
        self.non_finite_norm()
            .unwrap_or_else(|| self.sum_squares.sqrt())
    }

    /// ‖g‖₁ = Σ |g|.
    pub fn l1(&self) -> f64 {
        self.non_finite_norm().unwrap_or(self.sum_abs)
    }

    /// ‖g‖∞ = max |g|.
    pub fn linf(&self) -> f64 {
        self.non_finite_norm().unwrap_or(self.max_abs)
    }

    /// Adds the statistics of a later slice of the same tensor that starts at flat index `offset`.
    pub fn merge(&mut self, other: &TensorStats, offset: usize) {
        self.len += other.len;
        self.sum_squares += other.sum_squares;
        self.sum_abs += other.sum_abs;
        if other.max_abs > self.max_abs {
            self.max_abs = other.max_abs;
        }
        self.nan_count += other.nan_count;
        self.inf_count += other.inf_count;
        if self.first_non_finite.is_none() {
            self.first_non_finite = other.first_non_finite.map(|at| NonFiniteAt {
                index: at.index + offset,
                kind: at.kind,
            });
        }
    }

    /// The statistics after every value is multiplied by `factor` (exact up to f32 rounding of
    /// the scaled values), so a rule that scales need not read the tensor again.
    pub fn scaled(&self, factor: f64) -> TensorStats {
        let factor = factor.abs();
        TensorStats {
            sum_squares: self.sum_squares * factor * factor,
            sum_abs: self.sum_abs * factor,
            max_abs: self.max_abs * factor,
            ..*self
        }
    }
}

/// Sums the statistics of all tensors as if they were one vector. `first_non_finite` is
/// meaningless across tensors and left `None`; use [`first_non_finite`] for that.
pub fn combined(stats: &[TensorStats]) -> TensorStats {
    let mut all = TensorStats::default();
    for s in stats {
        all.merge(
            &TensorStats {
                first_non_finite: None,
                ..*s
            },
            0,
        );
    }
    all
}

/// The first tensor (by index) that holds a non-finite value, and where in it.
pub fn first_non_finite(stats: &[TensorStats]) -> Option<(usize, NonFiniteAt)> {
    stats
        .iter()
        .enumerate()
        .find_map(|(t, s)| s.first_non_finite.map(|at| (t, at)))
}
