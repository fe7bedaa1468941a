//! Guarding sharded gradients: every device reduces partial sums, so every device decides alike.
//!
//! With sharded optimizer state (ZeRO / FSDP style) each device holds a slice of every gradient.
//! A global norm must come from the partial sums of |g|^p (and the partial maxima) reduced across
//! devices *before* the root is taken — adding per-device norms is wrong (√a + √b ≠ √(a + b)).
//! [`ShardedGradients`] wraps a device's local [`Gradients`] and reduces every statistic through a
//! [`Collective`], so each device's [`crate::Guard`] sees the same global statistics and, with the
//! same configuration and state, takes the same decision and applies the same scale factors.

use crate::error::Result;
use crate::gradients::{Gradients, Source, UnitLayout};
use crate::stats::{NonFiniteAt, NonFiniteKind, TensorStats};

/// The reductions a guard needs across devices. Every device calls the same methods in the same
/// order with slices of the same length; each gets the reduced values back in place.
pub trait Collective {
    /// Element-wise sum across devices.
    fn all_reduce_sum(&self, values: &mut [f64]);
    /// Element-wise maximum across devices.
    fn all_reduce_max(&self, values: &mut [f64]);
}

/// One device's shard of every tensor, with statistics reduced across all devices.
///
/// Names are the tensors' names; shapes are the local shards'. Unit-wise rules (AGC) reduce
/// per-unit sums of squares, which is right when each device holds a slice of every unit (the
/// tensor split along its reduced axis), so that all devices report the same units.
#[derive(Debug)]
pub struct ShardedGradients<'a, G: Gradients, C: Collective> {
    local: &'a mut G,
    collective: &'a C,
    offsets: Vec<usize>,
}

impl<'a, G: Gradients, C: Collective> ShardedGradients<'a, G, C> {
    /// Wraps this device's local shard. `offsets[t]` is where this shard of tensor t starts in
    /// the whole (flat) tensor, so the first non-finite value is located in the whole tensor and
    /// every device names the same index.
    pub fn new(local: &'a mut G, collective: &'a C, offsets: Vec<usize>) -> Self {
        ShardedGradients {
            local,
            collective,
            offsets,
        }
    }
}

fn kind_code(k: NonFiniteKind) -> f64 {
    match k {
        NonFiniteKind::Nan => 0.0,
        NonFiniteKind::PosInf => 1.0,
        NonFiniteKind::NegInf => 2.0,
    }
}

fn kind_of(code: f64) -> NonFiniteKind {
    match code as u8 {
        0 => NonFiniteKind::Nan,
        1 => NonFiniteKind::PosInf,
        _ => NonFiniteKind::NegInf,
    }
}

/// Reduces per-tensor statistics: sums and counts add, maxima take the maximum, and the first
/// non-finite value is the one with the smallest global index (`offsets[t]` + local index).
pub fn reduce_stats(
    local: &[TensorStats],
    offsets: &[usize],
    collective: &impl Collective,
) -> Vec<TensorStats> {
    let mut sums: Vec<f64> = local
        .iter()
        .flat_map(|s| {
            [
                s.len as f64,
                s.sum_squares,
                s.sum_abs,
                s.nan_count as f64,
                s.inf_count as f64,
            ]
        })
        .collect();
    collective.all_reduce_sum(&mut sums);
    // Maxima first, then for each tensor −(4·global index + kind): the largest is the first.
    let mut maxima: Vec<f64> = local.iter().map(|s| s.max_abs).collect();
    maxima.extend(local.iter().enumerate().map(|(t, s)| {
        s.first_non_finite.map_or(f64::NEG_INFINITY, |at| {
            let global = (offsets.get(t).copied().unwrap_or(0) + at.index) as f64;
            -(4.0 * global + kind_code(at.kind))
        })
    }));
    collective.all_reduce_max(&mut maxima);
    let (maxima, firsts) = maxima.split_at(local.len());
    sums.chunks_exact(5)
        .zip(maxima)
        .zip(firsts)
        .map(|((s, &max_abs), &first)| TensorStats {
            len: s[0] as usize,
            sum_squares: s[1],
            sum_abs: s[2],
            max_abs,
            nan_count: s[3] as u64,
            inf_count: s[4] as u64,
            first_non_finite: first.is_finite().then(|| {
                let code = -first;
                NonFiniteAt {
                    index: (code / 4.0).floor() as usize,
                    kind: kind_of(code % 4.0),
                }
            }),
        })
        .collect()
}

impl<G: Gradients, C: Collective> Gradients for ShardedGradients<'_, G, C> {
    fn tensor_count(&self) -> usize {
        self.local.tensor_count()
    }

    fn name(&self, index: usize) -> &str {
        self.local.name(index)
    }

    fn shape(&self, index: usize) -> &[usize] {
        self.local.shape(index)
    }

    fn stats(&self) -> Vec<TensorStats> {
        reduce_stats(&self.local.stats(), &self.offsets, self.collective)
    }

    fn power_sums(&self, p: f64, scales: &[f64]) -> Vec<f64> {
        let mut sums = self.local.power_sums(p, scales);
        self.collective.all_reduce_sum(&mut sums);
        sums
    }

    fn applied(&self, x: f64) -> f64 {
        self.local.applied(x)
    }

    fn scale(&mut self, factors: &[f64]) {
        self.local.scale(factors);
    }

    fn clamp(&mut self, limit: f64) -> Vec<TensorStats> {
        let local = self.local.clamp(limit);
        reduce_stats(&local, &self.offsets, self.collective)
    }

    fn zero_non_finite(&mut self) -> Vec<TensorStats> {
        let local = self.local.zero_non_finite();
        reduce_stats(&local, &self.offsets, self.collective)
    }

    fn unit_norms(&self, source: Source, layout: UnitLayout) -> Result<Vec<Vec<f64>>> {
        let local = self.local.unit_norms(source, layout)?;
        let mut flat: Vec<f64> = local.iter().flatten().map(|n| n * n).collect();
        self.collective.all_reduce_sum(&mut flat);
        let mut it = flat.into_iter();
        Ok(local
            .iter()
            .map(|units| {
                units
                    .iter()
                    .map(|_| it.next().expect("same length").sqrt())
                    .collect()
            })
            .collect())
    }

    fn scale_units(
        &mut self,
        layout: UnitLayout,
        factors: &[Option<Vec<f64>>],
    ) -> Result<Vec<Option<TensorStats>>> {
        let local = self.local.scale_units(layout, factors)?;
        let filled: Vec<TensorStats> = local
            .iter()
            .zip(self.local.stats())
            .map(|(fresh, now)| fresh.unwrap_or(now))
            .collect();
        let reduced = reduce_stats(&filled, &self.offsets, self.collective);
        Ok(reduced
            .into_iter()
            .zip(factors)
            .map(|(s, f)| f.as_ref().map(|_| s))
            .collect())
    }
}
