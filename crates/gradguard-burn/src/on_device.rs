//! Gradients that stay on an accelerator: statistics by tensor ops, one stacked read.

use std::cell::Cell;

use burn::tensor::{DType, Device, Int, Tensor, Transaction};
use gradguard::{GuardError, NonFiniteAt, NonFiniteKind, Result, Source, TensorStats, UnitSpan};

/// Scalars per tensor in the statistics read: max |g|, Σg², Σ|g|, NaN count, inf count — all
/// accumulated in f64 on the device, so a finite f32 tensor cannot overflow and long sums keep
/// their digits (an f32 sum of 1e5 squares on the CPU backend is off by ~4e-6).
const PER_TENSOR: usize = 5;

/// The flattened gradients (and, for AGC, parameter values) of one step, on their device.
///
/// Every statistic is computed with tensor ops where the tensors live, and all per-tensor scalars
/// (and the loss) reach the host in **one** read: they are concatenated into one small tensor.
/// Only when a tensor holds NaN or inf does a second read locate the first one and recompute that
/// tensor's sums over its finite values. Scales, clamps and masks are applied on the device.
#[derive(Debug)]
pub(crate) struct DeviceGradients {
    pub grads: Vec<Tensor<1>>,
    pub values: Vec<Tensor<1>>,
    pub cached: Option<Vec<TensorStats>>,
    pub host_reads: Cell<u32>,
}

fn f64_of(t: Tensor<1>) -> Tensor<1> {
    t.cast(DType::F64)
}

fn read_f64(t: Tensor<1>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .expect("statistics convert to f64")
}

impl DeviceGradients {
    pub fn new(grads: Vec<Tensor<1>>, values: Vec<Tensor<1>>) -> Self {
        DeviceGradients {
            grads,
            values,
            cached: None,
            host_reads: Cell::new(0),
        }
    }

    fn count_read(&self) {
        self.host_reads.set(self.host_reads.get() + 1);
    }

    fn device(&self) -> Option<Device> {
        self.grads.first().map(Tensor::device)
    }

    /// The statistics of every tensor, and the loss, in one read (plus one more only for tensors
    /// holding non-finite values).
    pub fn read_stats(&self, loss: Option<Tensor<1>>) -> (Vec<TensorStats>, Option<f64>) {
        let mut parts = Vec::with_capacity(self.grads.len() * PER_TENSOR + 1);
        for g in self.grads.iter().filter(|g| g.shape().num_elements() > 0) {
            let g64 = f64_of(g.clone());
            parts.push(g64.clone().abs().max());
            parts.push(g64.clone().square().sum());
            parts.push(g64.abs().sum());
            parts.push(f64_of(g.clone().is_nan().int().sum().float()));
            parts.push(f64_of(g.clone().is_inf().int().sum().float()));
        }
        let has_loss = loss.is_some();
        if let Some(l) = loss {
            parts.push(f64_of(l.inner().reshape([1])));
        }
        let host: Vec<f64> = if parts.is_empty() {
            Vec::new()
        } else {
            self.count_read();
            read_f64(Tensor::cat(parts, 0))
        };
        let loss_value = has_loss.then(|| host[host.len() - 1]);
        let mut stats = Vec::with_capacity(self.grads.len());
        let mut k = 0;
        for g in &self.grads {
            let len = g.shape().num_elements();
            if len == 0 {
                stats.push(TensorStats::default());
                continue;
            }
            let v = &host[k..k + PER_TENSOR];
            k += PER_TENSOR;
            stats.push(TensorStats {
                len,
                sum_squares: v[1],
                sum_abs: v[2],
                max_abs: v[0],
                nan_count: v[3] as u64,
                inf_count: v[4] as u64,
                first_non_finite: None,
            });
        }
        self.fill_non_finite(&mut stats);
        (stats, loss_value)
    }

    /// For tensors with NaN or inf: the first one's index and kind, and sums over finite values.
    fn fill_non_finite(&self, stats: &mut [TensorStats]) {
        let bad: Vec<usize> = (0..stats.len())
            .filter(|&i| !stats[i].is_finite())
            .collect();
        if bad.is_empty() {
            return;
        }
        let mut tx = Transaction::default();
        for &i in &bad {
            let g = self.grads[i].clone();
            let n = g.shape().num_elements();
            let finite = g.clone().is_finite();
            let positions = Tensor::<1, Int>::arange(0..n as i64, &g.device());
            let first = positions.mask_fill(finite.clone(), n as i64).min();
            let clean = f64_of(g.clone().mask_fill(finite.bool_not(), 0.0));
            let floats = Tensor::cat(
                vec![
                    clean.clone().abs().max(),
                    clean.clone().square().sum(),
                    clean.abs().sum(),
                    f64_of(g.select(0, first.clone())),
                ],
                0,
            );
            tx = tx.register(floats).register(first);
        }
        self.count_read();
        let data = tx.execute();
        for (k, &i) in bad.iter().enumerate() {
            let f = data[2 * k]
                .clone()
                .convert::<f64>()
                .try_into_vec::<f64>()
                .expect("f64 statistics");
            let index = data[2 * k + 1].iter::<i64>().next().expect("one index") as usize;
            let st = &mut stats[i];
            st.max_abs = f[0];
            st.sum_squares = f[1];
            st.sum_abs = f[2];
            st.first_non_finite =
                NonFiniteKind::of(f[3] as f32).map(|kind| NonFiniteAt { index, kind });
        }
    }

    pub fn fresh_stats(&mut self) -> Vec<TensorStats> {
        let (stats, _) = self.read_stats(None);
        self.cached = Some(stats.clone());
        stats
    }

    fn tensors(&self, source: Source) -> Result<&[Tensor<1>]> {
        match source {
            Source::Gradient => Ok(&self.grads),
            Source::Parameter if self.values.len() == self.grads.len() => Ok(&self.values),
            Source::Parameter => Err(GuardError::MissingParameters {
                rule: "unit-wise norms of parameters".into(),
            }),
        }
    }
}

impl DeviceGradients {
    pub fn stats(&self) -> Vec<TensorStats> {
        match &self.cached {
            Some(s) => s.clone(),
            None => self.read_stats(None).0,
        }
    }

    pub fn power_sums(&self, p: f64, scales: &[f64]) -> Vec<f64> {
        let parts: Vec<Tensor<1>> = self
            .grads
            .iter()
            .zip(scales)
            .filter(|(g, _)| g.shape().num_elements() > 0)
            .map(|(g, &s)| {
                let clean = f64_of(g.clone().mask_fill(g.clone().is_finite().bool_not(), 0.0));
                let s = if s > 0.0 && s.is_finite() { s } else { 1.0 };
                (clean.abs() / s).powf_scalar(p).sum()
            })
            .collect();
        if parts.is_empty() {
            return vec![0.0; self.grads.len()];
        }
        self.count_read();
        let mut it = read_f64(Tensor::cat(parts, 0)).into_iter();
        self.grads
            .iter()
            .map(|g| {
                if g.shape().num_elements() > 0 {
                    it.next().expect("one sum per tensor")
                } else {
                    0.0
                }
            })
            .collect()
    }

    pub fn scale(&mut self, factors: &[f32]) {
        for (g, &f) in self.grads.iter_mut().zip(factors) {
            if f != 1.0 {
                *g = g.clone().mul_scalar(f);
            }
        }
        self.cached = None;
    }

    pub fn clamp(&mut self, limit: f32) -> Vec<TensorStats> {
        for g in &mut self.grads {
            *g = g.clone().clamp(-limit, limit);
        }
        self.fresh_stats()
    }

    pub fn zero_non_finite(&mut self) -> Vec<TensorStats> {
        for g in &mut self.grads {
            *g = g.clone().mask_fill(g.clone().is_finite().bool_not(), 0.0);
        }
        self.fresh_stats()
    }

    /// Unit norms of every tensor, by the spans the caller computed from names and shapes.
    pub fn unit_norms(&self, source: Source, spans: &[UnitSpan]) -> Result<Vec<Vec<f64>>> {
        let tensors = self.tensors(source)?;
        let mut parts = Vec::new();
        for (span, t) in spans.iter().zip(tensors) {
            if span.units() == 0 || t.shape().num_elements() == 0 {
                continue;
            }
            let x: Tensor<2> = f64_of(t.clone()).reshape([span.rows, span.cols]);
            let dim = if span.units_are_columns { 0 } else { 1 };
            parts.push(x.square().sum_dim(dim).reshape([span.units()]));
        }
        let host: Vec<f64> = if parts.is_empty() {
            Vec::new()
        } else {
            self.count_read();
            read_f64(Tensor::cat(parts, 0))
        };
        let mut k = 0;
        Ok(spans
            .iter()
            .zip(tensors)
            .map(|(span, t)| {
                if span.units() == 0 || t.shape().num_elements() == 0 {
                    return vec![0.0; span.units()];
                }
                let out = host[k..k + span.units()].iter().map(|s| s.sqrt()).collect();
                k += span.units();
                out
            })
            .collect())
    }

    /// Multiplies units by factors; `spans[t]` is tensor t's split into units, `names[t]` its
    /// name (for errors).
    pub fn scale_units(
        &mut self,
        spans: &[UnitSpan],
        names: &[&str],
        factors: &[Option<Vec<f32>>],
    ) -> Result<Vec<Option<TensorStats>>> {
        let device = self.device();
        for (((&span, name), g), f) in spans.iter().zip(names).zip(&mut self.grads).zip(factors) {
            let (Some(f), Some(device)) = (f, &device) else {
                continue;
            };
            if f.len() != span.units() {
                return Err(GuardError::BadTensor {
                    tensor: name.to_string(),
                    reason: format!("{} unit factors for {} units", f.len(), span.units()),
                });
            }
            let factor = Tensor::<1>::from_floats(f.as_slice(), device);
            let factor: Tensor<2> = if span.units_are_columns {
                factor.reshape([1, span.cols])
            } else {
                factor.reshape([span.rows, 1])
            };
            let x: Tensor<2> = g.clone().reshape([span.rows, span.cols]);
            *g = (x * factor).reshape([span.rows * span.cols]);
        }
        let fresh = self.fresh_stats();
        Ok(fresh
            .into_iter()
            .zip(factors)
            .map(|(s, f)| f.as_ref().map(|_| s))
            .collect())
    }
}
