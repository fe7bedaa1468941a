//! The device operations by Burn's tensor ops, on any backend: the statistics over one padded
//! buffer ([`Padded`]: one copy per tensor, then a fixed number of ops however many tensors there
//! are), unit norms and rewrites by a few ops per tensor, everything in f32.

use burn::tensor::{Tensor, TensorData};
use gradguard::UnitSpan;

use super::{BlockRead, DeviceOps, QueuedUnitNorms, Rewrite};
use crate::padded::{PER_BLOCK, Padded, f32_of, pairwise_sums_along, read_f32};

/// [`DeviceOps`] by Burn's tensor ops.
#[derive(Debug)]
pub(crate) struct TensorOps;

impl DeviceOps for TensorOps {
    fn block_statistics(
        &self,
        tensors: &[Tensor<1>],
        after: Option<&[Tensor<1>]>,
        loss: Option<Tensor<1>>,
        extra: Option<Tensor<1>>,
    ) -> BlockRead {
        let (before, _) = Padded::new(tensors.to_vec());
        let deltas = after.map(|after| Padded::new(after.to_vec()).0.minus(&before));
        let values = before.statistics();
        let delta_values = deltas.as_ref().and_then(Padded::statistics);
        let n = if values.is_some() {
            before.blocks() * PER_BLOCK
        } else {
            0
        };
        let n_deltas = if delta_values.is_some() { n } else { 0 };
        let n_loss = usize::from(loss.is_some());
        let parts: Vec<Tensor<1>> = values
            .into_iter()
            .chain(delta_values)
            .chain(loss.map(f32_of))
            .chain(extra.map(f32_of))
            .collect();
        if parts.is_empty() {
            return BlockRead::default();
        }
        let host = read_f32(Tensor::cat(parts, 0));
        let losses = n + n_deltas;
        BlockRead {
            values: host[..n].to_vec(),
            deltas: host[n..losses].to_vec(),
            loss: host[losses..losses + n_loss].first().map(|&l| f64::from(l)),
            extra: host[losses + n_loss..].to_vec(),
        }
    }

    fn queued_statistics(&self, tensors: &[Tensor<1>]) -> Option<Tensor<1>> {
        Padded::new(tensors.to_vec()).0.statistics()
    }

    fn unit_norms(
        &self,
        tensors: &[Tensor<1>],
        after: Option<&[Tensor<1>]>,
        spans: &[UnitSpan],
    ) -> Vec<Vec<(f64, f64)>> {
        let mut queued = self.queued_unit_norms(tensors, after, spans);
        let host = queued.tensor.take().map(read_f32).unwrap_or_default();
        queued.decode(&host).unwrap_or_default()
    }

    fn queued_unit_norms(
        &self,
        tensors: &[Tensor<1>],
        after: Option<&[Tensor<1>]>,
        spans: &[UnitSpan],
    ) -> QueuedUnitNorms {
        let deltas: Option<Vec<Tensor<1>>> = after.map(|after| {
            tensors
                .iter()
                .zip(after)
                .map(|(b, a)| f32_of(a.clone()).sub(f32_of(b.clone())))
                .collect()
        });
        let lens: Vec<usize> = tensors.iter().map(|t| t.shape().num_elements()).collect();
        let measured = |len: usize, span: &UnitSpan| len > 0 && span.units() > 0;
        let mut parts = Vec::new();
        for set in std::iter::once(tensors).chain(deltas.as_deref()) {
            for ((t, span), _) in set
                .iter()
                .zip(spans)
                .zip(&lens)
                .filter(|((_, s), len)| measured(**len, s))
            {
                parts.extend(unit_parts(f32_of(t.clone()), *span));
            }
        }
        let tensor = (!parts.is_empty()).then(|| Tensor::cat(parts, 0));
        let spans = spans.to_vec();
        let pair = deltas.is_some();
        let decode = move |host: &[f32]| {
            // Per measured tensor: max, Σ(x/max)², NaN count, inf count, `units` values each.
            let mut at = 0;
            let mut decode = |len: usize, span: &UnitSpan| -> Vec<f64> {
                let units = span.units();
                if !measured(len, span) {
                    return vec![0.0; units];
                }
                let part = &host[at..at + 4 * units];
                at += 4 * units;
                (0..units)
                    .map(|u| {
                        if part[2 * units + u] > 0.0 {
                            f64::NAN
                        } else if part[3 * units + u] > 0.0 {
                            f64::INFINITY
                        } else {
                            f64::from(part[u]) * f64::from(part[units + u]).sqrt()
                        }
                    })
                    .collect()
            };
            // The weights' units, then the updates' in the same order.
            let mut every_tensor = || -> Vec<Vec<f64>> {
                lens.iter()
                    .zip(&spans)
                    .map(|(&l, s)| decode(l, s))
                    .collect()
            };
            let norms = every_tensor();
            let delta_norms = if pair {
                every_tensor()
            } else {
                spans.iter().map(|s| vec![0.0; s.units()]).collect()
            };
            norms
                .into_iter()
                .zip(delta_norms)
                .map(|(w, d)| w.into_iter().zip(d).collect())
                .collect()
        };
        QueuedUnitNorms::new(tensor, decode)
    }

    fn rewrite(&self, values: &[Tensor<1>], how: Rewrite<'_>) -> Vec<Tensor<1>> {
        values
            .iter()
            .enumerate()
            .map(|(t, x)| {
                if x.shape().num_elements() == 0 {
                    return x.clone();
                }
                let dtype = how.dtype.unwrap_or(x.dtype());
                let mut x = f32_of(x.clone());
                if how.zero_non_finite {
                    let bad = x.clone().is_finite().bool_not();
                    x = x.mask_fill(bad, 0.0);
                }
                if let Some(limit) = how.limit {
                    // NaN stays NaN (a GPU `clamp` of NaN is unspecified).
                    let nan = x.clone().is_nan();
                    x = x.clamp(-limit, limit).mask_fill(nan, f32::NAN);
                }
                let origin = how.origin.map(|o| f32_of(o[t].clone()));
                let delta = match &origin {
                    Some(o) => x.sub(o.clone()),
                    None => x,
                };
                let scaled = by_units(delta, how.spans[t], &how.factors[t]);
                let out = match origin {
                    Some(o) => o.add(scaled),
                    None => scaled,
                };
                if out.dtype() == dtype {
                    out
                } else {
                    out.cast(dtype)
                }
            })
            .collect()
    }
}

/// One tensor's per-unit sums, as four tensors of `span.units()` values: each unit's largest
/// finite |x|, Σ (x / that)² over its finite values (pairwise, no overflow), and its counts of
/// NaN and ±inf.
fn unit_parts(x: Tensor<1>, span: UnitSpan) -> [Tensor<1>; 4] {
    let units = span.units();
    let x: Tensor<2> = x.reshape([span.rows, span.cols]);
    let dim = if span.units_are_columns { 0 } else { 1 };
    let nan = x.clone().is_nan().int().sum_dim(dim).float();
    let inf = x.clone().is_inf().int().sum_dim(dim).float();
    let magnitude = x.clone().mask_fill(x.is_finite().bool_not(), 0.0).abs();
    let max = magnitude.clone().max_dim(dim);
    let unit = max.clone().mask_fill(max.clone().equal_elem(0.0), 1.0);
    let s2 = pairwise_sums_along((magnitude / unit).square(), dim);
    [
        max.reshape([units]),
        s2,
        nan.reshape([units]),
        inf.reshape([units]),
    ]
}

/// `x` (flat, of `span`'s shape) with each unit multiplied by its factor; one factor scales the
/// whole tensor (1 leaves it as it is).
fn by_units(x: Tensor<1>, span: UnitSpan, factors: &[f32]) -> Tensor<1> {
    match factors {
        [1.0] => x,
        [f] => x.mul_scalar(*f),
        _ => {
            let n = x.shape().num_elements();
            let shape = if span.units_are_columns {
                [1, span.cols]
            } else {
                [span.rows, 1]
            };
            let f = Tensor::<2>::from_data(TensorData::new(factors.to_vec(), shape), &x.device());
            x.reshape([span.rows, span.cols]).mul(f).reshape([n])
        }
    }
}
