//! A step's gradients as the guard judges them a step late: the statistics read then, and no
//! change to anything. The device already applied the decision (`super::decision`); the guard's
//! judgement over the same statistics gives the report and keeps its counters, and every change
//! a rule asks for is dropped.

use gradguard::{Gradients, Result, Source, TensorStats, UnitLayout};

use crate::collect::Entry;
use crate::on_device::DeviceGradients;

/// The gradients of a step whose statistics were read after its optimizer was queued.
pub(crate) struct Replay<'a> {
    pub entries: &'a [Entry],
    pub grads: &'a DeviceGradients,
}

impl Gradients for Replay<'_> {
    fn tensor_count(&self) -> usize {
        self.entries.len()
    }

    fn name(&self, index: usize) -> &str {
        &self.entries[index].name
    }

    fn shape(&self, index: usize) -> &[usize] {
        &self.entries[index].shape
    }

    fn stats(&self) -> Vec<TensorStats> {
        self.grads.stats()
    }

    fn power_sums(&self, p: f64, scales: &[f64]) -> Vec<f64> {
        // Not reached: the device plan holds norms the statistics give (p = 1, 2, ∞).
        self.grads.power_sums(p, scales)
    }

    fn scale(&mut self, _factors: &[f64]) {}

    fn clamp(&mut self, _limit: f64) -> Vec<TensorStats> {
        self.grads.stats()
    }

    fn zero_non_finite(&mut self) -> Vec<TensorStats> {
        self.grads.stats()
    }

    fn unit_norms(&self, _source: Source, _layout: UnitLayout) -> Result<Vec<Vec<f64>>> {
        Err(gradguard::GuardError::InvalidConfig(
            "the non-blocking mode measures no unit norms".into(),
        ))
    }

    fn scale_units(
        &mut self,
        _layout: UnitLayout,
        factors: &[Option<Vec<f64>>],
    ) -> Result<Vec<Option<TensorStats>>> {
        Ok(vec![None; factors.len()])
    }
}
