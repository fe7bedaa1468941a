//! The `Gradients` view: what gradguard needs from a framework's named gradient tensors.

use serde::{Deserialize, Serialize};

use crate::error::{GuardError, Result};
use crate::stats::TensorStats;

/// Which tensors a unit-wise query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The gradients themselves.
    Gradient,
    /// The parameters the gradients belong to (AGC compares the two).
    Parameter,
}

/// Where a weight tensor keeps its output units, which decides what "unit-wise" means in AGC.
///
/// - `InputFirst` — JAX/Flax, Optax and Burn: a Linear weight is `[in, out]`, a conv kernel
///   `HWIO`. As in Optax's `unitwise_norm`: rank 2 and 3 reduce axis 0, rank 4 reduces axes
///   0, 1, 2, rank 5 (a 3-D conv kernel, DHWIO) axes 0 to 3; rank ≥ 6 is an error, as there.
/// - `OutputFirst` — PyTorch: a Linear weight is `[out, in]`, a conv kernel `OIHW`; every axis
///   but the first is reduced (as in the NFNets PyTorch ports), any rank ≥ 2.
///
/// In both, a tensor with at most one axis longer than 1 (a bias, a scalar, `[1, n]`) is one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitLayout {
    /// `[in, out]` / HWIO (JAX, Optax, Burn). The default.
    #[default]
    InputFirst,
    /// `[out, in]` / OIHW (PyTorch).
    OutputFirst,
}

/// A tensor seen as a row-major `[rows, cols]` matrix whose units are its columns or its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitSpan {
    /// Leading extent.
    pub rows: usize,
    /// Trailing extent.
    pub cols: usize,
    /// `true`: each column is a unit (reduce over rows); `false`: each row is a unit.
    pub units_are_columns: bool,
}

impl UnitSpan {
    /// Number of units.
    pub fn units(&self) -> usize {
        if self.units_are_columns {
            self.cols
        } else {
            self.rows
        }
    }

    /// A tensor of `len` values as one unit (one row).
    pub fn whole(len: usize) -> Self {
        UnitSpan {
            rows: 1,
            cols: len,
            units_are_columns: false,
        }
    }

    /// The unit that flat index `i` belongs to.
    pub fn unit_of(&self, i: usize) -> usize {
        if self.units_are_columns {
            i % self.cols.max(1)
        } else {
            i / self.cols.max(1)
        }
    }
}

impl UnitLayout {
    /// [`UnitLayout::span`], checking that `factors` (one per unit) matches the unit count.
    pub fn span_for_factors(
        &self,
        name: &str,
        shape: &[usize],
        factors: usize,
    ) -> Result<UnitSpan> {
        let span = self.span(name, shape)?;
        if factors != span.units() {
            return Err(GuardError::BadTensor {
                tensor: name.to_string(),
                reason: format!("{factors} unit factors for {} units", span.units()),
            });
        }
        Ok(span)
    }

    /// [`UnitLayout::span`], or the whole tensor as one unit where the layout does not split its
    /// shape (the update bound's units: every tensor has some).
    pub fn span_or_whole(&self, name: &str, shape: &[usize]) -> UnitSpan {
        self.span(name, shape)
            .unwrap_or_else(|_| UnitSpan::whole(shape.iter().product()))
    }

    /// How a tensor of `shape` splits into units under this layout.
    pub fn span(&self, name: &str, shape: &[usize]) -> Result<UnitSpan> {
        let len: usize = shape.iter().product();
        let long_axes = shape.iter().filter(|&&d| d > 1).count();
        if long_axes <= 1 {
            return Ok(UnitSpan {
                rows: 1,
                cols: len,
                units_are_columns: false,
            });
        }
        match self {
            UnitLayout::InputFirst => {
                let reduced = match shape.len() {
                    2 | 3 => 1,
                    4 => 3,
                    5 => 4,
                    r => {
                        return Err(GuardError::BadTensor {
                            tensor: name.to_string(),
                            reason: format!(
                                "unit-wise norms take rank 0 to 5 in the input-first layout (as \
                                 Optax's unitwise_norm), got rank {r}"
                            ),
                        });
                    }
                };
                let rows: usize = shape[..reduced].iter().product();
                Ok(UnitSpan {
                    rows,
                    cols: len / rows.max(1),
                    units_are_columns: true,
                })
            }
            UnitLayout::OutputFirst => Ok(UnitSpan {
                rows: shape[0],
                cols: len / shape[0].max(1),
                units_are_columns: false,
            }),
        }
    }
}

/// A framework's set of named gradient tensors, as gradguard sees it.
///
/// Tensors are addressed by index `0..tensor_count()` in a fixed order (the model's parameter
/// order). Implementations must read each gradient byte once in [`Gradients::stats`] and touch
/// values only in the mutating methods. The host implementation is [`crate::HostGradients`]; the
/// Burn adapter implements this with on-device tensor ops and a single host read per call.
pub trait Gradients {
    /// Number of tensors.
    fn tensor_count(&self) -> usize;

    /// Name of tensor `index`, e.g. `layers.3.weight`.
    fn name(&self, index: usize) -> &str;

    /// Shape of tensor `index`.
    fn shape(&self, index: usize) -> &[usize];

    /// One fused pass over every tensor: see [`TensorStats`].
    fn stats(&self) -> Vec<TensorStats>;

    /// For each tensor t, Σ (|g| / `scales[t]`)^p over its finite values (for general p-norms).
    fn power_sums(&self, p: f64, scales: &[f64]) -> Vec<f64>;

    /// `x` as this set applies a factor or a limit to its values: rounded to f32 (the default,
    /// for f32, f16 and bf16 gradients, which are scaled in f32), or unchanged for f64 values.
    /// Rules use it to keep the statistics they update in step with what was applied.
    fn applied(&self, x: f64) -> f64 {
        f64::from(x as f32)
    }

    /// Multiplies tensor t by `factors[t]` (as [`Gradients::applied`] rounds it); a factor of
    /// exactly 1 leaves the tensor untouched.
    fn scale(&mut self, factors: &[f64]);

    /// Clamps every value to `[-limit, limit]` (NaN stays NaN) and returns the new statistics.
    fn clamp(&mut self, limit: f64) -> Vec<TensorStats>;

    /// Replaces NaN and ±inf by 0 and returns the new statistics.
    fn zero_non_finite(&mut self) -> Vec<TensorStats>;

    /// Euclidean norm of every unit of every tensor (gradients or parameters), by `layout`.
    fn unit_norms(&self, source: Source, layout: UnitLayout) -> Result<Vec<Vec<f64>>>;

    /// Multiplies each unit of tensor t by `factors[t][unit]` where `factors[t]` is `Some`, and
    /// returns the new statistics of the tensors it touched.
    fn scale_units(
        &mut self,
        layout: UnitLayout,
        factors: &[Option<Vec<f64>>],
    ) -> Result<Vec<Option<TensorStats>>>;
}
