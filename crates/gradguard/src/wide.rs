//! Gradients held in f64: a file saved from a double-precision model keeps its precision.
//!
//! The f32 kernels ([`crate::HostGradients`]) would narrow every value and every clip factor to
//! f32; here the values, the factors and the limits stay f64 ([`Gradients::applied`] is the
//! identity), as `torch.nn.utils.clip_grad_norm_` computes on f64 tensors. Statistics are plain
//! f64 sums in index order: exact to f64 rounding, as PyTorch's; like PyTorch's f64 norms, Σ g²
//! overflows to +inf for values beyond ~1.3e154 (f32 gradients cannot reach that).

use rayon::prelude::*;

use crate::error::{GuardError, Result};
use crate::gradients::{Gradients, Source, UnitLayout};
use crate::host::{distinct_names, in_gradient_order};
use crate::stats::{NonFiniteAt, NonFiniteKind, TensorStats};

/// One named f64 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct F64Tensor {
    /// The parameter's name, e.g. `layers.3.weight`.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub values: Vec<f64>,
}

impl F64Tensor {
    /// A tensor, checking that the shape's product is the number of values.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, values: Vec<f64>) -> Result<Self> {
        let name = name.into();
        let expected = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if expected != Some(values.len()) {
            return Err(GuardError::BadTensor {
                tensor: name,
                reason: format!(
                    "shape {shape:?} does not hold the {} values given",
                    values.len()
                ),
            });
        }
        Ok(F64Tensor {
            name,
            shape,
            values,
        })
    }
}

/// A set of named f64 gradient tensors, optionally with their parameters (for AGC).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct F64Gradients {
    tensors: Vec<F64Tensor>,
    parameters: Option<Vec<F64Tensor>>,
}

impl F64Gradients {
    /// Gradients from tensors with distinct names, kept in the given order.
    pub fn new(tensors: Vec<F64Tensor>) -> Result<Self> {
        distinct_names(tensors.iter().map(|t| t.name.as_str()))?;
        Ok(F64Gradients {
            tensors,
            parameters: None,
        })
    }

    /// Attaches the parameters: one per gradient tensor, matched by name, of the same shape.
    pub fn with_parameters(mut self, parameters: Vec<F64Tensor>) -> Result<Self> {
        let gradients = self.tensors.iter().map(|g| (g.name.as_str(), &g.shape[..]));
        let ordered = in_gradient_order(gradients, parameters, |p| (&p.name, &p.shape))?;
        self.parameters = Some(ordered);
        Ok(self)
    }

    /// The tensors, in order.
    pub fn tensors(&self) -> &[F64Tensor] {
        &self.tensors
    }

    /// Takes the tensors out.
    pub fn into_tensors(self) -> Vec<F64Tensor> {
        self.tensors
    }
}

/// The kind of a non-finite `x`, `None` when finite.
fn non_finite_kind(x: f64) -> Option<NonFiniteKind> {
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

/// One pass over `xs`: sums over the finite values, counts and the first of the others.
pub fn f64_stats(xs: &[f64]) -> TensorStats {
    let mut s = TensorStats {
        len: xs.len(),
        ..TensorStats::default()
    };
    for (index, &x) in xs.iter().enumerate() {
        match non_finite_kind(x) {
            None => {
                let a = x.abs();
                s.sum_squares += a * a;
                s.sum_abs += a;
                s.max_abs = s.max_abs.max(a);
            }
            Some(kind) => {
                if kind == NonFiniteKind::Nan {
                    s.nan_count += 1;
                } else {
                    s.inf_count += 1;
                }
                s.first_non_finite
                    .get_or_insert(NonFiniteAt { index, kind });
            }
        }
    }
    s
}

impl Gradients for F64Gradients {
    fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    fn name(&self, index: usize) -> &str {
        &self.tensors[index].name
    }

    fn shape(&self, index: usize) -> &[usize] {
        &self.tensors[index].shape
    }

    fn stats(&self) -> Vec<TensorStats> {
        self.tensors
            .par_iter()
            .map(|t| f64_stats(&t.values))
            .collect()
    }

    fn power_sums(&self, p: f64, scales: &[f64]) -> Vec<f64> {
        self.tensors
            .par_iter()
            .zip(scales)
            .map(|(t, &scale)| {
                if !(scale > 0.0 && scale.is_finite()) {
                    return 0.0;
                }
                t.values
                    .iter()
                    .filter(|x| x.is_finite())
                    .map(|x| (x.abs() / scale).powf(p))
                    .sum()
            })
            .collect()
    }

    fn applied(&self, x: f64) -> f64 {
        x
    }

    fn scale(&mut self, factors: &[f64]) {
        self.tensors
            .par_iter_mut()
            .zip(factors)
            .filter(|(_, f)| **f != 1.0)
            .for_each(|(t, &f)| t.values.iter_mut().for_each(|x| *x *= f));
    }

    fn clamp(&mut self, limit: f64) -> Vec<TensorStats> {
        self.tensors
            .par_iter_mut()
            .map(|t| {
                // NaN stays NaN, as in torch.clamp.
                t.values
                    .iter_mut()
                    .for_each(|x| *x = x.clamp(-limit, limit));
                f64_stats(&t.values)
            })
            .collect()
    }

    fn zero_non_finite(&mut self) -> Vec<TensorStats> {
        self.tensors
            .par_iter_mut()
            .map(|t| {
                t.values
                    .iter_mut()
                    .filter(|x| !x.is_finite())
                    .for_each(|x| *x = 0.0);
                f64_stats(&t.values)
            })
            .collect()
    }

    fn unit_norms(&self, source: Source, layout: UnitLayout) -> Result<Vec<Vec<f64>>> {
        let tensors = match source {
            Source::Gradient => &self.tensors,
            Source::Parameter => {
                self.parameters
                    .as_ref()
                    .ok_or_else(|| GuardError::MissingParameters {
                        rule: "unit-wise norms of parameters".into(),
                    })?
            }
        };
        tensors
            .par_iter()
            .map(|t| {
                let span = layout.span(&t.name, &t.shape)?;
                let mut sums = vec![0.0f64; span.units()];
                // Non-finite values propagate into their unit's norm.
                for (i, &x) in t.values.iter().enumerate() {
                    sums[span.unit_of(i)] += x * x;
                }
                Ok(sums.into_iter().map(f64::sqrt).collect())
            })
            .collect()
    }

    fn scale_units(
        &mut self,
        layout: UnitLayout,
        factors: &[Option<Vec<f64>>],
    ) -> Result<Vec<Option<TensorStats>>> {
        self.tensors
            .par_iter_mut()
            .zip(factors)
            .map(|(t, f)| {
                let Some(f) = f else { return Ok(None) };
                let span = layout.span_for_factors(&t.name, &t.shape, f.len())?;
                for (i, x) in t.values.iter_mut().enumerate() {
                    let factor = f[span.unit_of(i)];
                    if factor != 1.0 {
                        *x *= factor;
                    }
                }
                Ok(Some(f64_stats(&t.values)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{ClipByGlobalNorm, Rule};

    #[test]
    fn values_and_factors_keep_f64_precision() {
        // 1 + 2⁻⁴⁰ is not an f32: the f32 kernels would lose it.
        let x = 1.0 + 2f64.powi(-40);
        let mut g = F64Gradients::new(vec![
            F64Tensor::new("a", vec![2], vec![x, -3.0]).unwrap(),
            F64Tensor::new("b", vec![1], vec![f64::NAN]).unwrap(),
        ])
        .unwrap();
        let s = g.stats();
        assert_eq!(s[0].sum_squares, x * x + 9.0);
        assert_eq!(
            (s[1].nan_count, s[1].first_non_finite.unwrap().index),
            (1, 0)
        );
        g.zero_non_finite();
        let mut stats = g.stats();
        let total = (x * x + 9.0).sqrt();
        ClipByGlobalNorm::new(1.0)
            .unwrap()
            .apply(&mut g, &mut stats)
            .unwrap();
        let coef = 1.0 / (total + 1e-6);
        assert_eq!(g.tensors()[0].values, vec![x * coef, -3.0 * coef]);
        assert!((stats[0].l2() - total * coef).abs() < 1e-15);
    }

    #[test]
    fn a_shape_that_does_not_hold_the_values_is_refused() {
        assert!(F64Tensor::new("w", vec![2, 2], vec![1.0; 3]).is_err());
    }
}
