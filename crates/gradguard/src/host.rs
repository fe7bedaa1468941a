//! `HostGradients`: gradients held in host memory as f32 or f64 (`Vec<f32>` by default), for
//! tests, files, the command line and the CPU adapters. The per-type kernels are in
//! [`crate::host_float`].

use std::collections::HashSet;

use rayon::prelude::*;

use crate::error::{GuardError, Result};
use crate::gradients::{Gradients, Source, UnitLayout};
use crate::host_float::HostFloat;
use crate::stats::TensorStats;

/// Values per parallel work item: 256 Ki floats (1 MiB of f32), a multiple of
/// [`crate::kernel::BLOCK`] so that results are the same with one thread or many.
const CHUNK: usize = 1 << 18;
/// Below this many values in all, threads cost more than they save.
const PARALLEL_MIN: usize = 1 << 16;

/// One named tensor in host memory, row-major.
///
/// The values live in any storage that lends a `[f32]` or `[f64]` ([`Values`]) — a `Vec<f32>` by
/// default, a `Vec<f64>` ([`crate::F64Tensor`]), or a framework's own buffer, so that an adapter
/// can run the host kernels on memory it does not copy.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor<V = Vec<f32>> {
    /// Name, e.g. `layers.0.weight`.
    pub name: String,
    /// Shape; the product equals the number of values.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: V,
}

/// What [`HostTensor`] and [`HostGradients`] need of their storage: a slice of f32 or f64
/// values, lent for reading and for writing.
pub trait Values: Send + Sync {
    /// The number type of the values.
    type Float: HostFloat;

    /// The values, row-major.
    fn floats(&self) -> &[Self::Float];

    /// The values, mutably.
    fn floats_mut(&mut self) -> &mut [Self::Float];
}

impl<F: HostFloat> Values for Vec<F> {
    type Float = F;

    fn floats(&self) -> &[F] {
        self
    }

    fn floats_mut(&mut self) -> &mut [F] {
        self
    }
}

impl<V: Values> HostTensor<V> {
    /// A tensor, checking that the shape's product is the number of values.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, values: V) -> Result<Self> {
        let name = name.into();
        let expected = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| GuardError::BadTensor {
                tensor: name.clone(),
                reason: format!("shape {shape:?} overflows"),
            })?;
        let len = values.floats().len();
        if expected != len {
            return Err(GuardError::BadTensor {
                tensor: name,
                reason: format!("shape {shape:?} holds {expected} values but {len} were given"),
            });
        }
        Ok(HostTensor {
            name,
            shape,
            values,
        })
    }
}

/// One named f64 tensor: a file saved from a double-precision model keeps its precision.
pub type F64Tensor = HostTensor<Vec<f64>>;

/// Gradients held in f64, measured and clipped in f64 (see [`crate::host_float`]).
pub type F64Gradients = HostGradients<Vec<f64>>;

/// A set of named gradient tensors in host memory, optionally with the parameters they belong to
/// (needed by adaptive gradient clipping).
#[derive(Debug, Clone, PartialEq)]
pub struct HostGradients<V = Vec<f32>> {
    tensors: Vec<HostTensor<V>>,
    parameters: Option<Vec<HostTensor<V>>>,
}

impl<V> Default for HostGradients<V> {
    fn default() -> Self {
        HostGradients {
            tensors: Vec::new(),
            parameters: None,
        }
    }
}

impl<V: Values> HostGradients<V> {
    /// Gradients from tensors with distinct names, kept in the given order.
    pub fn new(tensors: Vec<HostTensor<V>>) -> Result<Self> {
        distinct_names(tensors.iter().map(|t| t.name.as_str()))?;
        Ok(HostGradients {
            tensors,
            parameters: None,
        })
    }

    /// Attaches the parameters: one per gradient tensor, matched by name, of the same shape.
    pub fn with_parameters(mut self, parameters: Vec<HostTensor<V>>) -> Result<Self> {
        let gradients = self.tensors.iter().map(|g| (g.name.as_str(), &g.shape[..]));
        let ordered = in_gradient_order(gradients, parameters, |p| (&p.name, &p.shape))?;
        self.parameters = Some(ordered);
        Ok(self)
    }

    /// The tensors, in order.
    pub fn tensors(&self) -> &[HostTensor<V>] {
        &self.tensors
    }

    /// The tensors, mutably (names and shapes are the caller's to keep consistent).
    pub fn tensors_mut(&mut self) -> &mut [HostTensor<V>] {
        &mut self.tensors
    }

    /// Takes the tensors out.
    pub fn into_tensors(self) -> Vec<HostTensor<V>> {
        self.tensors
    }

    /// The tensor of a given name.
    pub fn get(&self, name: &str) -> Option<&HostTensor<V>> {
        self.tensors.iter().find(|t| t.name == name)
    }

    fn total_len(&self) -> usize {
        self.tensors.iter().map(|t| t.values.floats().len()).sum()
    }

    /// Runs `f` over every (tensor, chunk) in parallel when the set is large, and merges the
    /// per-chunk statistics per tensor in a fixed order.
    fn chunked_stats<F>(&mut self, f: F) -> Vec<TensorStats>
    where
        F: Fn(&mut [V::Float]) -> TensorStats + Sync,
    {
        let parallel = self.total_len() >= PARALLEL_MIN;
        let mut jobs: Vec<(usize, usize, &mut [V::Float])> = Vec::new();
        for (t, tensor) in self.tensors.iter_mut().enumerate() {
            for (c, chunk) in tensor.values.floats_mut().chunks_mut(CHUNK).enumerate() {
                jobs.push((t, c * CHUNK, chunk));
            }
        }
        let partials: Vec<(usize, usize, TensorStats)> = if parallel {
            jobs.into_par_iter()
                .map(|(t, off, xs)| (t, off, f(xs)))
                .collect()
        } else {
            jobs.into_iter()
                .map(|(t, off, xs)| (t, off, f(xs)))
                .collect()
        };
        merge_partials(self.tensors.len(), partials)
    }
}

/// An error naming the first name that appears twice.
pub(crate) fn distinct_names<'a>(names: impl Iterator<Item = &'a str>) -> Result<()> {
    let mut seen = HashSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(GuardError::BadTensor {
                tensor: name.to_string(),
                reason: "the name appears twice".into(),
            });
        }
    }
    Ok(())
}

/// `parameters` reordered to match `gradients` (name, shape) one to one, by name; an error names
/// a gradient without a parameter or with a parameter of another shape.
pub(crate) fn in_gradient_order<'a, T>(
    gradients: impl Iterator<Item = (&'a str, &'a [usize])>,
    parameters: Vec<T>,
    key: impl Fn(&T) -> (&String, &Vec<usize>),
) -> Result<Vec<T>> {
    let mut by_name: std::collections::HashMap<String, T> = parameters
        .into_iter()
        .map(|p| (key(&p).0.clone(), p))
        .collect();
    gradients
        .map(|(name, shape)| {
            let p = by_name.remove(name).ok_or_else(|| GuardError::BadTensor {
                tensor: name.to_string(),
                reason: "no parameter of this name was given".into(),
            })?;
            let p_shape = key(&p).1;
            if p_shape.as_slice() != shape {
                return Err(GuardError::BadTensor {
                    tensor: name.to_string(),
                    reason: format!(
                        "gradient shape {shape:?} differs from parameter shape {p_shape:?}"
                    ),
                });
            }
            Ok(p)
        })
        .collect()
}

fn merge_partials(count: usize, partials: Vec<(usize, usize, TensorStats)>) -> Vec<TensorStats> {
    let mut out = vec![TensorStats::default(); count];
    for (t, offset, s) in partials {
        out[t].merge(&s, offset);
    }
    out
}

fn read_chunks<V: Values>(tensors: &[HostTensor<V>]) -> Vec<(usize, usize, &[V::Float])> {
    let mut jobs = Vec::new();
    for (t, tensor) in tensors.iter().enumerate() {
        for (c, chunk) in tensor.values.floats().chunks(CHUNK).enumerate() {
            jobs.push((t, c * CHUNK, chunk));
        }
    }
    jobs
}

impl<V: Values> Gradients for HostGradients<V> {
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
        let jobs = read_chunks(&self.tensors);
        let partials: Vec<(usize, usize, TensorStats)> = if self.total_len() >= PARALLEL_MIN {
            jobs.into_par_iter()
                .map(|(t, off, xs)| (t, off, V::Float::stats(xs)))
                .collect()
        } else {
            jobs.into_iter()
                .map(|(t, off, xs)| (t, off, V::Float::stats(xs)))
                .collect()
        };
        merge_partials(self.tensors.len(), partials)
    }

    fn power_sums(&self, p: f64, scales: &[f64]) -> Vec<f64> {
        let sum_of = |(t, _, xs): (usize, usize, &[V::Float])| {
            let scale = scales[t];
            let sum = if scale > 0.0 && scale.is_finite() {
                V::Float::scaled_power_sum(xs, p, scale)
            } else {
                0.0
            };
            (t, sum)
        };
        let jobs = read_chunks(&self.tensors);
        let parts: Vec<(usize, f64)> = if self.total_len() >= PARALLEL_MIN {
            jobs.into_par_iter().map(sum_of).collect()
        } else {
            jobs.into_iter().map(sum_of).collect()
        };
        let mut out = vec![0.0; self.tensors.len()];
        for (t, s) in parts {
            out[t] += s;
        }
        out
    }

    fn applied(&self, x: f64) -> f64 {
        V::Float::from_f64(x).to_f64()
    }

    fn scale(&mut self, factors: &[f64]) {
        let parallel = self.total_len() >= PARALLEL_MIN;
        let jobs: Vec<(&mut [V::Float], V::Float)> = self
            .tensors
            .iter_mut()
            .zip(factors.iter().map(|&f| V::Float::from_f64(f)))
            .filter(|(_, f)| *f != V::Float::ONE)
            .flat_map(|(t, f)| t.values.floats_mut().chunks_mut(CHUNK).map(move |c| (c, f)))
            .collect();
        if parallel {
            jobs.into_par_iter()
                .for_each(|(xs, f)| V::Float::scale_in_place(xs, f));
        } else {
            jobs.into_iter()
                .for_each(|(xs, f)| V::Float::scale_in_place(xs, f));
        }
    }

    fn clamp(&mut self, limit: f64) -> Vec<TensorStats> {
        let limit = V::Float::from_f64(limit);
        self.chunked_stats(|xs| V::Float::clamp_with_stats(xs, limit))
    }

    fn zero_non_finite(&mut self) -> Vec<TensorStats> {
        self.chunked_stats(V::Float::zero_non_finite_with_stats)
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
                let values = t.values.floats();
                let sums = if span.units_are_columns {
                    V::Float::column_sum_squares(values, span.rows, span.cols)
                } else {
                    V::Float::row_sum_squares(values, span.cols)
                };
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
                for (i, x) in t.values.floats_mut().iter_mut().enumerate() {
                    let factor = V::Float::from_f64(f[span.unit_of(i)]);
                    if factor != V::Float::ONE {
                        *x *= factor;
                    }
                }
                Ok(Some(V::Float::stats(t.values.floats())))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{ClipByGlobalNorm, Rule};

    #[test]
    fn f64_values_and_factors_keep_f64_precision() {
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
