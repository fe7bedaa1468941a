//! Gradients that stay on an accelerator, and their statistics in one small read per step.
//!
//! The gradients stay where the backward pass left them, one flat tensor each. Every measurement
//! and every change goes through the step's [`DeviceOps`] (chosen once, when the gradients are
//! collected): the statistics of all tensors and the loss in one host read, unit norms in one
//! more, and clamping, zeroing non-finite values, scaling and AGC's per-unit factors as one
//! rewrite. Power sums for a general p are tensor ops over a padded copy everywhere.

use std::cell::Cell;

use burn::tensor::{DType, Device, Int, Tensor, Transaction};
use gradguard::{GuardError, NonFiniteAt, NonFiniteKind, Result, Source, TensorStats, UnitSpan};

use crate::device_ops::{self, DeviceOps, Rewrite};
use crate::padded::{BLOCK, Padded, Segment, f32_of, pairwise_row_sums, read_f32};

/// The gradients (and, for AGC, parameter values) of one step, on their device.
#[derive(Debug)]
pub(crate) struct DeviceGradients {
    /// Flattened: in their own dtype as the backward pass left them, f32 once rewritten.
    tensors: Vec<Tensor<1>>,
    /// Where each tensor's blocks are in the statistics.
    segments: Vec<Segment>,
    /// Each gradient's own dtype, restored when the gradients are handed back.
    dtypes: Vec<DType>,
    device: Option<Device>,
    values: Vec<Tensor<1>>,
    ops: &'static dyn DeviceOps,
    pub cached: Option<Vec<TensorStats>>,
    pub host_reads: Cell<u32>,
    /// A rule rewrote the gradients (they are not the backward pass's any more).
    rewritten: bool,
}

impl DeviceGradients {
    /// Keeps `grads` (flattened) as they are and chooses the device operations for them; nothing
    /// is copied or launched yet. A tensor still under autodiff (a gradient a user registered from
    /// an autodiff device) is taken without it, so that every tensor here is of one backend.
    pub fn new(grads: Vec<Tensor<1>>, values: Vec<Tensor<1>>) -> Self {
        let tensors: Vec<Tensor<1>> = grads.into_iter().map(Tensor::inner).collect();
        let values: Vec<Tensor<1>> = values.into_iter().map(Tensor::inner).collect();
        DeviceGradients {
            dtypes: tensors.iter().map(Tensor::dtype).collect(),
            device: tensors.first().map(Tensor::device),
            segments: Padded::segments_of(tensors.iter().map(|t| t.shape().num_elements())),
            ops: device_ops::choose(&tensors),
            tensors,
            values,
            cached: None,
            host_reads: Cell::new(0),
            rewritten: false,
        }
    }

    /// The device operations chosen for these gradients.
    pub fn ops(&self) -> &'static dyn DeviceOps {
        self.ops
    }

    fn count_read(&self) {
        self.host_reads.set(self.host_reads.get() + 1);
    }

    /// The statistics of every tensor, and the loss, in one read (plus one more only for tensors
    /// holding non-finite values, to locate the first).
    pub fn read_stats(&self, loss: Option<Tensor<1>>) -> (Vec<TensorStats>, Option<f64>) {
        let (stats, loss, _) = self.read_stats_with(loss, None);
        (stats, loss)
    }

    /// [`Self::read_stats`], and the f32 tensor `extra` (queued on the same device) in the same
    /// read: its values come back third.
    pub fn read_stats_with(
        &self,
        loss: Option<Tensor<1>>,
        extra: Option<Tensor<1>>,
    ) -> (Vec<TensorStats>, Option<f64>, Vec<f32>) {
        let loss = loss.map(|l| f32_of(l.inner().reshape([1])));
        let has_values = self.segments.iter().any(|s| s.len > 0);
        if has_values || loss.is_some() || extra.is_some() {
            self.count_read();
        }
        let read = self.ops.block_statistics(&self.tensors, None, loss, extra);
        let mut stats = Padded::combine_segments(&self.segments, &read.values);
        self.locate_non_finite(&mut stats, &read.values);
        (stats, read.loss, read.extra)
    }

    /// Whether a rule rewrote the gradients since they were collected.
    pub fn rewritten(&self) -> bool {
        self.rewritten
    }

    /// For tensors with NaN or inf: the first one's index and kind, from the first block that
    /// holds one (by the statistics read's counts), in a second, small read.
    fn locate_non_finite(&self, stats: &mut [TensorStats], host: &[f32]) {
        let bad: Vec<usize> = (0..stats.len())
            .filter(|&i| !stats[i].is_finite())
            .collect();
        let Some(device) = self.device.as_ref().filter(|_| !bad.is_empty()) else {
            return;
        };
        let mut tx = Transaction::default();
        let mut offsets = Vec::with_capacity(bad.len());
        for &i in &bad {
            let segment = self.segments[i];
            let block = Padded::first_bad_block_of(segment, host)
                .expect("a tensor with non-finite values has a block holding one");
            let values = self.tensors[i].clone();
            let offset = (block - segment.first_block) * BLOCK;
            let width = BLOCK.min(segment.len - offset);
            let row = values.clone().slice(offset..offset + width);
            let positions = Tensor::<1, Int>::arange(0..width as i64, device);
            let first = positions
                .mask_fill(row.clone().is_finite(), width as i64)
                .min();
            let nan_count = values.is_nan().int().sum();
            tx = tx
                .register(f32_of(row.select(0, first.clone())))
                .register(first)
                .register(nan_count);
            offsets.push(offset);
        }
        self.count_read();
        let data = tx.execute();
        for (k, &i) in bad.iter().enumerate() {
            let read = |j: usize| data[3 * k + j].clone();
            let value = read(0).try_into_vec_as::<f32>().expect("one value")[0];
            let offset = read(1).try_into_vec_as::<i64>().expect("one index")[0] as usize;
            let nan_count = read(2).try_into_vec_as::<i64>().expect("one count")[0] as u64;
            let st = &mut stats[i];
            // The statistics read counted every non-finite value as inf.
            st.inf_count -= nan_count;
            st.nan_count = nan_count;
            st.first_non_finite = NonFiniteKind::of(value).map(|kind| NonFiniteAt {
                index: offsets[k] + offset,
                kind,
            });
        }
    }

    /// The block statistics of every tensor, queued on the device and not read (the
    /// non-blocking step decides from them there and reads them a step later).
    pub fn queued_stats(&self) -> Option<Tensor<1>> {
        self.ops.queued_statistics(&self.tensors)
    }

    /// Takes the statistics from the block values of [`Self::queued_stats`], read later, and
    /// locates the non-finite values (one more read, only where there are any).
    pub fn set_read_stats(&mut self, host: &[f32]) {
        let mut stats = Padded::combine_segments(&self.segments, host);
        self.locate_non_finite(&mut stats, host);
        self.cached = Some(stats);
    }

    /// The flat gradients, as collected.
    pub fn tensors(&self) -> &[Tensor<1>] {
        &self.tensors
    }

    pub fn fresh_stats(&mut self) -> Vec<TensorStats> {
        let (stats, _) = self.read_stats(None);
        self.cached = Some(stats.clone());
        stats
    }

    pub fn stats(&self) -> Vec<TensorStats> {
        match &self.cached {
            Some(s) => s.clone(),
            None => self.read_stats(None).0,
        }
    }

    /// Σ (|g| / scale_t)^p over finite values, per block on the device over a padded copy, per
    /// tensor in f64.
    pub fn power_sums(&self, p: f64, scales: &[f64]) -> Vec<f64> {
        let usable = |s: f64| s > 0.0 && s.is_finite();
        let (padded, _) = Padded::new(self.tensors.clone());
        let (Some(blocks), Some(device)) = (padded.block_view(), &self.device) else {
            return vec![0.0; self.segments.len()];
        };
        // Divided, not multiplied by 1/s, which overflows f32 for a subnormal scale.
        let divisor = padded.per_block(
            |t| {
                if usable(scales[t]) {
                    (scales[t] as f32).max(f32::from_bits(1))
                } else {
                    1.0
                }
            },
            device,
        );
        let finite = blocks.clone().is_finite();
        let ratio = blocks.mask_fill(finite.bool_not(), 0.0).abs() / divisor;
        let sums = pairwise_row_sums(ratio.powf_scalar(p as f32));
        self.count_read();
        let host = read_f32(sums.reshape([padded.blocks()]));
        self.segments
            .iter()
            .enumerate()
            .map(|(t, s)| {
                if !usable(scales[t]) {
                    return 0.0;
                }
                host[s.first_block..s.first_block + s.blocks()]
                    .iter()
                    .map(|&x| f64::from(x))
                    .sum()
            })
            .collect()
    }

    /// Rewrites the tensors `chosen` (their `spans` and `factors` in that order) by the device
    /// operations, in f32; the statistics are read again by the caller.
    fn rewrite(&mut self, chosen: &[usize], how: Rewrite<'_>) {
        if chosen.is_empty() {
            return;
        }
        let picked: Vec<Tensor<1>> = chosen.iter().map(|&t| self.tensors[t].clone()).collect();
        let how = Rewrite {
            dtype: Some(DType::F32),
            ..how
        };
        for (&t, r) in chosen.iter().zip(self.ops.rewrite(&picked, how)) {
            self.tensors[t] = r;
        }
        self.cached = None;
        self.rewritten = true;
    }

    /// The tensors that have values and pass `keep`, each as one unit.
    fn whole(&self, keep: impl Fn(usize) -> bool) -> (Vec<usize>, Vec<UnitSpan>) {
        let chosen: Vec<usize> = (0..self.segments.len())
            .filter(|&t| self.segments[t].len > 0 && keep(t))
            .collect();
        let spans = chosen
            .iter()
            .map(|&t| UnitSpan::whole(self.segments[t].len))
            .collect();
        (chosen, spans)
    }

    /// Every tensor that has values, as one unit each with factor 1: for clamping and zeroing.
    fn whole_tensors(&self) -> (Vec<usize>, Vec<UnitSpan>, Vec<Vec<f32>>) {
        let (chosen, spans) = self.whole(|_| true);
        let ones = vec![vec![1.0]; chosen.len()];
        (chosen, spans, ones)
    }

    /// Multiplies tensor t by `factors[t]` (in f32), rewriting only the tensors whose factor is
    /// not 1.
    pub fn scale(&mut self, factors: &[f32]) {
        let (chosen, spans) = self.whole(|t| factors[t] != 1.0);
        let f: Vec<Vec<f32>> = chosen.iter().map(|&t| vec![factors[t]]).collect();
        self.rewrite(&chosen, Rewrite::by_units(&spans, &f));
    }

    /// Clamps to `[-limit, limit]`; NaN stays NaN.
    pub fn clamp(&mut self, limit: f32) -> Vec<TensorStats> {
        let (chosen, spans, ones) = self.whole_tensors();
        let how = Rewrite {
            limit: Some(limit),
            ..Rewrite::by_units(&spans, &ones)
        };
        self.rewrite(&chosen, how);
        self.fresh_stats()
    }

    /// NaN and ±inf become 0.
    pub fn zero_non_finite(&mut self) -> Vec<TensorStats> {
        let (chosen, spans, ones) = self.whole_tensors();
        let how = Rewrite {
            zero_non_finite: true,
            ..Rewrite::by_units(&spans, &ones)
        };
        self.rewrite(&chosen, how);
        self.fresh_stats()
    }

    /// Unit norms of every tensor, by the spans the caller computed from names and shapes, in
    /// one read; NaN and inf kept.
    pub fn unit_norms(&self, source: Source, spans: &[UnitSpan]) -> Result<Vec<Vec<f64>>> {
        let tensors = match source {
            Source::Gradient => &self.tensors,
            Source::Parameter if self.values.len() == self.tensors.len() => &self.values,
            Source::Parameter => {
                return Err(GuardError::MissingParameters {
                    rule: "unit-wise norms of parameters".into(),
                });
            }
        };
        let measured = tensors
            .iter()
            .zip(spans)
            .any(|(t, s)| t.shape().num_elements() > 0 && s.units() > 0);
        if measured {
            self.count_read();
        }
        Ok(self
            .ops
            .unit_norms(tensors, None, spans)
            .into_iter()
            .map(|units| units.into_iter().map(|(norm, _)| norm).collect())
            .collect())
    }

    /// Multiplies units by factors; `spans[t]` is tensor t's split into units, `names[t]` its
    /// name (for errors). Returns the fresh statistics of the tensors that had factors.
    pub fn scale_units(
        &mut self,
        spans: &[UnitSpan],
        names: &[&str],
        factors: &[Option<Vec<f32>>],
    ) -> Result<Vec<Option<TensorStats>>> {
        for ((&span, name), f) in spans.iter().zip(names).zip(factors) {
            if let Some(f) = f.as_ref().filter(|f| f.len() != span.units()) {
                return Err(GuardError::BadTensor {
                    tensor: name.to_string(),
                    reason: format!("{} unit factors for {} units", f.len(), span.units()),
                });
            }
        }
        let chosen: Vec<usize> = (0..factors.len())
            .filter(|&t| factors[t].is_some() && self.segments[t].len > 0)
            .collect();
        let picked_spans: Vec<UnitSpan> = chosen.iter().map(|&t| spans[t]).collect();
        let picked_factors: Vec<Vec<f32>> =
            chosen.iter().filter_map(|&t| factors[t].clone()).collect();
        self.rewrite(&chosen, Rewrite::by_units(&picked_spans, &picked_factors));
        let fresh = self.fresh_stats();
        Ok(fresh
            .into_iter()
            .zip(factors)
            .map(|(s, f)| f.as_ref().map(|_| s))
            .collect())
    }

    /// The gradients as they are now, flattened (f32 once rewritten).
    pub fn grads(&self) -> &[Tensor<1>] {
        &self.tensors
    }

    /// The gradients, flattened, each in its own dtype.
    pub fn into_grads(self) -> Vec<Tensor<1>> {
        self.tensors
            .into_iter()
            .zip(self.dtypes)
            .map(|(g, dtype)| if g.dtype() == dtype { g } else { g.cast(dtype) })
            .collect()
    }
}
