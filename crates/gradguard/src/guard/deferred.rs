//! Unscaling fused with the first clip: loss-scaled gradients are divided by the scale in the
//! same pass as a rule's scaling, instead of a pass of their own.
//!
//! The guard reads the scaled gradients once; their statistics are unscaled arithmetically
//! ([`TensorStats::scaled`]). The division itself is held back as a pending factor that the first
//! scaling multiplies in (`g · (c/S)` in one pass instead of `(g/S) · c` in two — the same f32
//! values when S is a power of two, as every scale of a default `LossScaler` is). A step that no
//! rule scales pays the one pass at the end ([`DeferredScale::flush`]).

use crate::error::Result;
use crate::gradients::{Gradients, Source, UnitLayout};
use crate::stats::TensorStats;

/// `inner` as if every value were already multiplied by `pending`.
pub(super) struct DeferredScale<'a> {
    inner: &'a mut dyn Gradients,
    pending: f64,
}

impl<'a> DeferredScale<'a> {
    /// The gradients of `inner` times `pending`, not yet applied.
    pub(super) fn new(inner: &'a mut dyn Gradients, pending: f64) -> Self {
        DeferredScale { inner, pending }
    }

    /// Applies the pending factor, if a rule has not.
    pub(super) fn flush(&mut self) {
        if self.pending != 1.0 {
            let factors = vec![self.pending; self.inner.tensor_count()];
            self.inner.scale(&factors);
            self.pending = 1.0;
        }
    }

    fn unscaled(&self, stats: Vec<TensorStats>) -> Vec<TensorStats> {
        stats.iter().map(|s| s.scaled(self.pending)).collect()
    }
}

impl Gradients for DeferredScale<'_> {
    fn tensor_count(&self) -> usize {
        self.inner.tensor_count()
    }

    fn name(&self, index: usize) -> &str {
        self.inner.name(index)
    }

    fn shape(&self, index: usize) -> &[usize] {
        self.inner.shape(index)
    }

    fn stats(&self) -> Vec<TensorStats> {
        self.unscaled(self.inner.stats())
    }

    fn power_sums(&self, p: f64, scales: &[f64]) -> Vec<f64> {
        // Σ (|g·s| / c)^p = Σ (|g| / (c/s))^p.
        let scales: Vec<f64> = scales.iter().map(|c| c / self.pending).collect();
        self.inner.power_sums(p, &scales)
    }

    fn applied(&self, x: f64) -> f64 {
        self.inner.applied(x)
    }

    fn scale(&mut self, factors: &[f64]) {
        let fused: Vec<f64> = factors.iter().map(|f| f * self.pending).collect();
        self.inner.scale(&fused);
        self.pending = 1.0;
    }

    fn clamp(&mut self, limit: f64) -> Vec<TensorStats> {
        self.flush();
        self.inner.clamp(limit)
    }

    fn zero_non_finite(&mut self) -> Vec<TensorStats> {
        let stats = self.inner.zero_non_finite();
        self.unscaled(stats)
    }

    fn unit_norms(&self, source: Source, layout: UnitLayout) -> Result<Vec<Vec<f64>>> {
        let norms = self.inner.unit_norms(source, layout)?;
        Ok(match source {
            Source::Parameter => norms,
            Source::Gradient => norms
                .into_iter()
                .map(|units| units.into_iter().map(|n| n * self.pending).collect())
                .collect(),
        })
    }

    fn scale_units(
        &mut self,
        layout: UnitLayout,
        factors: &[Option<Vec<f64>>],
    ) -> Result<Vec<Option<TensorStats>>> {
        self.flush();
        self.inner.scale_units(layout, factors)
    }
}
