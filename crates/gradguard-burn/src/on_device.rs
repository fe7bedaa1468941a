//! Gradients that stay on an accelerator, and their statistics in one small read per step.
//!
//! On Burn's CubeCL backends (wgpu, CUDA, ROCm; feature `cube`) the gradients stay where the
//! backward pass left them and one fused kernel ([`crate::cube`]) measures them all in place. On
//! any other accelerator backend, and once a rule needs them in one piece, they are copied into
//! one padded buffer ([`Padded`], one copy per tensor) and measured by a fixed number of f32 tensor
//! ops over it. Both write the same four numbers per block, read in one host read with the loss.
//!
//! Scaling multiplies each tensor a rule changed (one op per tensor, or one op over the padded
//! buffer). On a CubeCL device clamping, zeroing non-finite values and AGC's per-unit factors
//! rewrite the gradients where they lie, one fused launch per group of tensors
//! ([`crate::cube::rewrite`]), and AGC's unit norms are one launch per group too
//! ([`crate::cube::units`]); elsewhere they run as tensor ops on the padded buffer, as power
//! sums for a general p do everywhere.

use std::cell::{Cell, RefCell, RefMut};

use burn::tensor::{DType, Device, Int, Tensor, Transaction};
use gradguard::{GuardError, NonFiniteAt, NonFiniteKind, Result, Source, TensorStats, UnitSpan};

use crate::padded::{
    BLOCK, Padded, Segment, f32_of, pairwise_row_sums, pairwise_sums_along, read_f32,
};

/// Where the gradients are kept.
#[derive(Debug)]
enum Storage {
    /// Flattened, in their own dtype, as the backward pass left them (or as a scale left them).
    Separate(Vec<Tensor<1>>),
    /// Copied into one padded f32 buffer; the empty tensors kept as they came.
    Padded(Box<Padded>, Vec<Option<Tensor<1>>>),
}

/// A change of the gradients that the fused kernel makes where they lie.
#[cfg(feature = "cube")]
#[derive(Debug, Clone, Copy)]
enum GradientRewrite<'a> {
    /// Clamp to `[-limit, limit]`, NaN kept.
    Clamp(f32),
    /// NaN and ±inf become 0.
    ZeroNonFinite,
    /// Tensor t's units multiplied by `factors[t]` (by `spans[t]`); `None`: t left as it is.
    Units {
        spans: &'a [UnitSpan],
        factors: &'a [Option<Vec<f32>>],
    },
}

/// The gradients (and, for AGC, parameter values) of one step, on their device.
#[derive(Debug)]
pub(crate) struct DeviceGradients {
    storage: RefCell<Storage>,
    /// Where each tensor's blocks are in the statistics (and in the padded buffer).
    segments: Vec<Segment>,
    /// Each gradient's own dtype, restored when the gradients are handed back.
    dtypes: Vec<DType>,
    device: Option<Device>,
    values: Vec<Tensor<1>>,
    pub cached: Option<Vec<TensorStats>>,
    pub host_reads: Cell<u32>,
}

impl DeviceGradients {
    /// Keeps `grads` (flattened) as they are; nothing is copied or launched yet. A tensor still
    /// under autodiff (a gradient a user registered from an autodiff device) is taken without it,
    /// so that every tensor here is of one backend.
    pub fn new(grads: Vec<Tensor<1>>, values: Vec<Tensor<1>>) -> Self {
        let grads: Vec<Tensor<1>> = grads.into_iter().map(Tensor::inner).collect();
        let values: Vec<Tensor<1>> = values.into_iter().map(Tensor::inner).collect();
        let dtypes = grads.iter().map(Tensor::dtype).collect();
        let device = grads.first().map(Tensor::device);
        let segments = Padded::segments_of(grads.iter().map(|t| t.shape().num_elements()));
        DeviceGradients {
            storage: RefCell::new(Storage::Separate(grads)),
            segments,
            dtypes,
            device,
            values,
            cached: None,
            host_reads: Cell::new(0),
        }
    }

    fn count_read(&self) {
        self.host_reads.set(self.host_reads.get() + 1);
    }

    /// The padded buffer, copied from the separate tensors the first time it is needed.
    fn padded(&self) -> RefMut<'_, Padded> {
        let mut storage = self.storage.borrow_mut();
        if let Storage::Separate(tensors) = &mut *storage {
            let (padded, empties) = Padded::new(std::mem::take(tensors));
            *storage = Storage::Padded(Box::new(padded), empties);
        }
        RefMut::map(storage, |s| match s {
            Storage::Padded(p, _) => &mut **p,
            Storage::Separate(_) => unreachable!("just padded"),
        })
    }

    /// The blocks' statistics (`segments` layout, four per block) and the loss, read together in
    /// one host read; no statistics when there are no values.
    fn block_statistics(&self, loss: Option<Tensor<1>>) -> (Vec<f32>, Option<f64>) {
        let loss = loss.map(|l| f32_of(l.inner().reshape([1])));
        #[cfg(feature = "cube")]
        if let Some(read) = self.block_statistics_fused(loss.as_ref()) {
            return read;
        }
        let stats = self.padded().statistics();
        let blocks_read = stats.as_ref().map_or(0, |s| s.shape().num_elements());
        let parts: Vec<Tensor<1>> = stats.into_iter().chain(loss).collect();
        if parts.is_empty() {
            return (Vec::new(), None);
        }
        self.count_read();
        let mut host = read_f32(Tensor::cat(parts, 0));
        let loss_value = (host.len() > blocks_read).then(|| f64::from(host[blocks_read]));
        host.truncate(blocks_read);
        (host, loss_value)
    }

    /// [`DeviceGradients::block_statistics`] by the fused kernel, when every tensor (and the
    /// loss) lives on a CubeCL device; `None` otherwise.
    #[cfg(feature = "cube")]
    fn block_statistics_fused(&self, loss: Option<&Tensor<1>>) -> Option<(Vec<f32>, Option<f64>)> {
        let storage = self.storage.borrow();
        let inputs: Vec<Tensor<1>> = match &*storage {
            Storage::Separate(tensors) => tensors.clone(),
            Storage::Padded(p, _) => p.buffer.iter().cloned().collect(),
        };
        let loss = match loss {
            Some(l) => Some(crate::cube::resolve(l)?),
            None => None,
        };
        let cube = crate::cube::resolve_all(&inputs)?;
        let stats = crate::cube::block_statistics(&cube, None);
        if stats.is_none() && loss.is_none() {
            return Some((Vec::new(), None));
        }
        self.count_read();
        let (host, loss_value) = crate::cube::read(stats.as_ref(), loss.as_ref());
        Some((host, loss_value.map(f64::from)))
    }

    /// The statistics of every tensor, and the loss, in one read (plus one more only for tensors
    /// holding non-finite values, to locate the first).
    pub fn read_stats(&self, loss: Option<Tensor<1>>) -> (Vec<TensorStats>, Option<f64>) {
        let (host, loss_value) = self.block_statistics(loss);
        let mut stats = Padded::combine_segments(&self.segments, &host);
        self.locate_non_finite(&mut stats, &host);
        (stats, loss_value)
    }

    /// For tensors with NaN or inf: the first one's index and kind, from the first block that
    /// holds one (by the statistics read's counts), in a second, small read.
    fn locate_non_finite(&self, stats: &mut [TensorStats], host: &[f32]) {
        let bad: Vec<usize> = (0..stats.len())
            .filter(|&i| !stats[i].is_finite())
            .collect();
        if bad.is_empty() {
            return;
        }
        let Some(device) = &self.device else {
            return;
        };
        // Read where the values lie: padding the gradients here would make every later rewrite
        // (a clip of this step) take the padded path.
        let tensor = |i: usize| -> Option<Tensor<1>> {
            match &*self.storage.borrow() {
                Storage::Separate(tensors) => Some(tensors[i].clone()),
                Storage::Padded(padded, _) => padded.view(i),
            }
        };
        let mut tx = Transaction::default();
        let mut offsets = Vec::with_capacity(bad.len());
        for &i in &bad {
            let segment = self.segments[i];
            let block = Padded::first_bad_block_of(segment, host)
                .expect("a tensor with non-finite values has a block holding one");
            let values = tensor(i).expect("a tensor with non-finite values has values");
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

    /// Σ (|g| / scale_t)^p over finite values, per block on the device, per tensor in f64.
    pub fn power_sums(&self, p: f64, scales: &[f64]) -> Vec<f64> {
        let usable = |s: f64| s > 0.0 && s.is_finite();
        let padded = self.padded();
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

    /// Multiplies tensor t by `factors[t]`: in f32, one op per tensor whose factor is not 1
    /// (separate tensors), or one op over the padded buffer.
    pub fn scale(&mut self, factors: &[f32]) {
        if factors.iter().all(|&f| f == 1.0) {
            return;
        }
        self.cached = None;
        match self.storage.get_mut() {
            Storage::Separate(tensors) => {
                for (t, &f) in tensors.iter_mut().zip(factors) {
                    if f != 1.0 && t.shape().num_elements() > 0 {
                        *t = f32_of(t.clone()) * f;
                    }
                }
            }
            Storage::Padded(padded, _) => {
                let blocks = padded.blocks();
                if let (Some(view), Some(device)) = (padded.block_view(), &self.device) {
                    let f = padded.per_block(|t| factors[t], device);
                    padded.buffer = Some((view * f).reshape([blocks * BLOCK]));
                }
            }
        }
    }

    /// Replaces the padded buffer by `op` of it.
    fn map_buffer(&mut self, op: impl FnOnce(Tensor<1>) -> Tensor<1>) {
        let mut padded = self.padded();
        if let Some(buffer) = padded.buffer.take() {
            padded.buffer = Some(op(buffer));
        }
    }

    /// Clamps to `[-limit, limit]`; NaN stays NaN (a GPU `clamp` of NaN is unspecified).
    pub fn clamp(&mut self, limit: f32) -> Vec<TensorStats> {
        #[cfg(feature = "cube")]
        if self.rewrite_fused(GradientRewrite::Clamp(limit)) {
            return self.fresh_stats();
        }
        self.map_buffer(|buffer| {
            let nan = buffer.clone().is_nan();
            buffer.clamp(-limit, limit).mask_fill(nan, f32::NAN)
        });
        self.fresh_stats()
    }

    pub fn zero_non_finite(&mut self) -> Vec<TensorStats> {
        #[cfg(feature = "cube")]
        if self.rewrite_fused(GradientRewrite::ZeroNonFinite) {
            return self.fresh_stats();
        }
        self.map_buffer(|buffer| {
            let bad = buffer.clone().is_finite().bool_not();
            buffer.mask_fill(bad, 0.0)
        });
        self.fresh_stats()
    }

    /// Rewrites the gradients where they lie by the fused kernel ([`crate::cube::rewrite`], one
    /// launch per group of tensors), when they are still separate tensors and all on a CubeCL
    /// device; tensors that `what` leaves alone are not touched. Results are f32, as in the
    /// padded buffer. `false` (and nothing changed) otherwise: the caller then uses the
    /// tensor-op path.
    #[cfg(feature = "cube")]
    fn rewrite_fused(&mut self, what: GradientRewrite<'_>) -> bool {
        let Some(device) = self.device.clone() else {
            return false;
        };
        let Storage::Separate(tensors) = self.storage.get_mut() else {
            return false;
        };
        let (zero_non_finite, limit, units) = match what {
            GradientRewrite::Clamp(limit) => (false, Some(limit), None),
            GradientRewrite::ZeroNonFinite => (true, None, None),
            GradientRewrite::Units { spans, factors } => (false, None, Some((spans, factors))),
        };
        let (chosen, spans, factors): (Vec<usize>, Vec<UnitSpan>, Vec<Vec<f32>>) = match units {
            Some((spans, factors)) => {
                let chosen: Vec<usize> = (0..tensors.len())
                    .filter(|&t| factors[t].is_some())
                    .collect();
                let f = chosen
                    .iter()
                    .map(|&t| factors[t].clone().unwrap())
                    .collect();
                let s = chosen.iter().map(|&t| spans[t]).collect();
                (chosen, s, f)
            }
            None => (
                (0..tensors.len()).collect(),
                tensors
                    .iter()
                    .map(|t| UnitSpan::whole(t.shape().num_elements()))
                    .collect(),
                vec![vec![1.0]; tensors.len()],
            ),
        };
        if chosen.is_empty() {
            return true;
        }
        let picked: Vec<Tensor<1>> = chosen.iter().map(|&t| tensors[t].clone()).collect();
        let Some(cube) = crate::cube::resolve_all(&picked) else {
            return false;
        };
        let how = crate::cube::rewrite::Rewrite {
            zero_non_finite,
            limit,
            spans: &spans,
            factors: &factors,
            origin: None,
            dtype: Some(DType::F32),
        };
        let Some(rewritten) = crate::cube::rewrite::rewrite(&device, &cube, how) else {
            return false;
        };
        for (t, r) in chosen.into_iter().zip(rewritten) {
            tensors[t] = r;
        }
        self.cached = None;
        true
    }

    /// Unit norms of every tensor, by the spans the caller computed from names and shapes: per
    /// unit max |x| and Σ(x/max)² on the device (f32, no overflow), one read, NaN and inf kept.
    pub fn unit_norms(&self, source: Source, spans: &[UnitSpan]) -> Result<Vec<Vec<f64>>> {
        #[cfg(feature = "cube")]
        if let Some(norms) = self.unit_norms_fused(source, spans) {
            return Ok(norms);
        }
        let tensors: Vec<Option<Tensor<1>>> = match source {
            Source::Gradient => {
                let padded = self.padded();
                (0..self.dtypes.len()).map(|t| padded.view(t)).collect()
            }
            Source::Parameter if self.values.len() == self.dtypes.len() => self
                .values
                .iter()
                .map(|v| (v.shape().num_elements() > 0).then(|| f32_of(v.clone())))
                .collect(),
            Source::Parameter => {
                return Err(GuardError::MissingParameters {
                    rule: "unit-wise norms of parameters".into(),
                });
            }
        };
        let mut parts = Vec::new();
        for (span, t) in spans.iter().zip(&tensors) {
            let Some(t) = t.as_ref().filter(|_| span.units() > 0) else {
                continue;
            };
            let x: Tensor<2> = t.clone().reshape([span.rows, span.cols]);
            let dim = if span.units_are_columns { 0 } else { 1 };
            let units = span.units();
            let nan = x.clone().is_nan().int().sum_dim(dim).float();
            let inf = x.clone().is_inf().int().sum_dim(dim).float();
            let magnitude = x.clone().mask_fill(x.is_finite().bool_not(), 0.0).abs();
            let max = magnitude.clone().max_dim(dim);
            let unit = max.clone().mask_fill(max.clone().equal_elem(0.0), 1.0);
            let s2 = pairwise_sums_along((magnitude / unit).square(), dim);
            parts.extend([
                max.reshape([units]),
                s2,
                nan.reshape([units]),
                inf.reshape([units]),
            ]);
        }
        let host: Vec<f32> = if parts.is_empty() {
            Vec::new()
        } else {
            self.count_read();
            read_f32(Tensor::cat(parts, 0))
        };
        let mut k = 0;
        Ok(spans
            .iter()
            .zip(&tensors)
            .map(|(span, t)| {
                let units = span.units();
                if t.is_none() || units == 0 {
                    return vec![0.0; units];
                }
                let at = |part: usize, u: usize| f64::from(host[k + part * units + u]);
                let out = (0..units)
                    .map(|u| {
                        if at(2, u) > 0.0 {
                            f64::NAN
                        } else if at(3, u) > 0.0 {
                            f64::INFINITY
                        } else {
                            at(0, u) * at(1, u).sqrt()
                        }
                    })
                    .collect();
                k += 4 * units;
                out
            })
            .collect())
    }

    /// [`DeviceGradients::unit_norms`] by the fused unit kernel, reading the gradients (or the
    /// parameters) where they lie, when all of them live on a CubeCL device; `None` otherwise.
    #[cfg(feature = "cube")]
    fn unit_norms_fused(&self, source: Source, spans: &[UnitSpan]) -> Option<Vec<Vec<f64>>> {
        let tensors: Vec<Tensor<1>> = match source {
            Source::Gradient => match &*self.storage.borrow() {
                Storage::Separate(tensors) => tensors.clone(),
                Storage::Padded(padded, empties) => (0..self.dtypes.len())
                    .map(|t| padded.view(t).or_else(|| empties[t].clone()))
                    .collect::<Option<_>>()?,
            },
            Source::Parameter if self.values.len() == self.dtypes.len() => self.values.clone(),
            // The tensor-op path names the missing parameters.
            Source::Parameter => return None,
        };
        let cube = crate::cube::resolve_all(&tensors)?;
        if spans.iter().any(|s| s.units() > 0) {
            self.count_read();
        }
        Some(
            crate::cube::units::unit_sums(&cube, None, spans)
                .into_iter()
                .map(|units| units.iter().map(|u| u[0].norm()).collect())
                .collect(),
        )
    }

    /// Multiplies units by factors; `spans[t]` is tensor t's split into units, `names[t]` its
    /// name (for errors).
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
        #[cfg(feature = "cube")]
        let fused = self.rewrite_fused(GradientRewrite::Units { spans, factors });
        #[cfg(not(feature = "cube"))]
        let fused = false;
        for (t, (&span, f)) in spans.iter().zip(factors).enumerate() {
            let Some(f) = f.as_ref().filter(|_| !fused) else {
                continue;
            };
            let mut padded = self.padded();
            let (Some(g), Some(device)) = (padded.view(t), &self.device) else {
                continue;
            };
            let factor = Tensor::<1>::from_floats(f.as_slice(), device);
            let factor: Tensor<2> = if span.units_are_columns {
                factor.reshape([1, span.cols])
            } else {
                factor.reshape([span.rows, 1])
            };
            let x: Tensor<2> = g.reshape([span.rows, span.cols]);
            let scaled = (x * factor).reshape([span.rows * span.cols]);
            let s = self.segments[t];
            let buffer = padded
                .buffer
                .take()
                .expect("a tensor with values has a buffer");
            padded.buffer = Some(buffer.slice_assign(s.start()..s.start() + s.len, scaled));
        }
        let fresh = self.fresh_stats();
        Ok(fresh
            .into_iter()
            .zip(factors)
            .map(|(s, f)| f.as_ref().map(|_| s))
            .collect())
    }

    /// The gradients, flattened, each in its own dtype: as they came where nothing changed them,
    /// else the scaled tensors or views into the padded buffer.
    pub fn into_grads(self) -> Vec<Tensor<1>> {
        let dtypes = self.dtypes;
        let in_own_dtype = |(t, g): (usize, Tensor<1>)| {
            if g.dtype() == dtypes[t] {
                g
            } else {
                g.cast(dtypes[t])
            }
        };
        match self.storage.into_inner() {
            Storage::Separate(tensors) => {
                tensors.into_iter().enumerate().map(in_own_dtype).collect()
            }
            Storage::Padded(padded, mut empties) => (0..dtypes.len())
                .map(|t| match padded.view(t) {
                    Some(g) => in_own_dtype((t, g)),
                    None => empties[t].take().expect("an empty gradient is kept"),
                })
                .collect(),
        }
    }
}
