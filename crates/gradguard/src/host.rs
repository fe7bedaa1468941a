//! `HostGradients`: gradients held in plain `Vec<f32>`s, for tests, files and the command line.

use std::collections::HashSet;

use rayon::prelude::*;

use crate::error::{GuardError, Result};
use crate::gradients::{Gradients, Source, UnitLayout};
use crate::kernel;
use crate::stats::TensorStats;

/// Values per parallel work item: 256 Ki floats (1 MiB), a multiple of [`kernel::BLOCK`] so that
/// results are the same with one thread or many.
const CHUNK: usize = 1 << 18;
/// Below this many values in all, threads cost more than they save.
const PARALLEL_MIN: usize = 1 << 16;

/// One named f32 tensor in host memory, row-major.
///
/// The values live in any storage that lends a `[f32]` — a `Vec<f32>` by default, or a
/// framework's own buffer, so that an adapter can run the host kernels on memory it does not
/// copy.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor<V = Vec<f32>> {
    /// Name, e.g. `layers.0.weight`.
    pub name: String,
    /// Shape; the product equals the number of values.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: V,
}

/// What [`HostTensor`] and [`HostGradients`] need of their storage.
pub trait Values: AsRef<[f32]> + AsMut<[f32]> + Send + Sync {}

impl<V: AsRef<[f32]> + AsMut<[f32]> + Send + Sync> Values for V {}

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
        let len = values.as_ref().len();
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
        self.tensors.iter().map(|t| t.values.as_ref().len()).sum()
    }

    /// Runs `f` over every (tensor, chunk) in parallel when the set is large, and merges the
    /// per-chunk statistics per tensor in a fixed order.
    fn chunked_stats<F>(&mut self, f: F) -> Vec<TensorStats>
    where
        F: Fn(&mut [f32]) -> TensorStats + Sync,
    {
        let parallel = self.total_len() >= PARALLEL_MIN;
        let mut jobs: Vec<(usize, usize, &mut [f32])> = Vec::new();
        for (t, tensor) in self.tensors.iter_mut().enumerate() {
            for (c, chunk) in tensor.values.as_mut().chunks_mut(CHUNK).enumerate() {
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

fn read_chunks<V: Values>(tensors: &[HostTensor<V>]) -> Vec<(usize, usize, &[f32])> {
    let mut jobs = Vec::new();
    for (t, tensor) in tensors.iter().enumerate() {
        for (c, chunk) in tensor.values.as_ref().chunks(CHUNK).enumerate() {
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
                .map(|(t, off, xs)| (t, off, kernel::slice_stats(xs)))
                .collect()
        } else {
            jobs.into_iter()
                .map(|(t, off, xs)| (t, off, kernel::slice_stats(xs)))
                .collect()
        };
        merge_partials(self.tensors.len(), partials)
    }

    fn power_sums(&self, p: f64, scales: &[f64]) -> Vec<f64> {
        let sum_of = |(t, _, xs): (usize, usize, &[f32])| {
            let scale = scales[t];
            let sum = if scale > 0.0 && scale.is_finite() {
                kernel::scaled_power_sum(xs, p, scale)
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

    fn scale(&mut self, factors: &[f64]) {
        let parallel = self.total_len() >= PARALLEL_MIN;
        let jobs: Vec<(&mut [f32], f32)> = self
            .tensors
            .iter_mut()
            .zip(factors.iter().map(|&f| f as f32))
            .filter(|(_, f)| *f != 1.0)
            .flat_map(|(t, f)| t.values.as_mut().chunks_mut(CHUNK).map(move |c| (c, f)))
            .collect();
        if parallel {
            jobs.into_par_iter()
                .for_each(|(xs, f)| kernel::scale_in_place(xs, f));
        } else {
            jobs.into_iter()
                .for_each(|(xs, f)| kernel::scale_in_place(xs, f));
        }
    }

    fn clamp(&mut self, limit: f64) -> Vec<TensorStats> {
        let limit = limit as f32;
        self.chunked_stats(|xs| kernel::clamp_with_stats(xs, limit))
    }

    fn zero_non_finite(&mut self) -> Vec<TensorStats> {
        self.chunked_stats(kernel::zero_non_finite_with_stats)
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
                let values = t.values.as_ref();
                let sums = if span.units_are_columns {
                    kernel::column_sum_squares(values, span.rows, span.cols)
                } else {
                    kernel::row_sum_squares(values, span.cols)
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
                for (i, x) in t.values.as_mut().iter_mut().enumerate() {
                    let factor = f[span.unit_of(i)] as f32;
                    if factor != 1.0 {
                        *x *= factor;
                    }
                }
                Ok(Some(kernel::slice_stats(t.values.as_ref())))
            })
            .collect()
    }
}
