//! The update the optimizer produced: measured per parameter against the weights before the
//! step, and scaled back where the guard's update bound says so.
//!
//! Burn tensors are copy-on-write, so keeping the module from before the step is a clone of
//! handles. Where the device's memory is host memory (the CPU backend) both versions of every
//! parameter are read as `f32` slices and ‖w‖², ‖Δw‖² accumulated in one pass (f32 lanes per
//! block of 1024 values, f64 across blocks, an exact f64 pass for blocks of huge values: no
//! overflow for any finite f32). On an accelerator both versions go into one padded buffer each
//! ([`Padded`]: one copy per parameter), the update is one subtraction, and the block statistics
//! of both (f32 sums scaled by each block's largest magnitude: no f64, no overflow) come back in
//! one host read of a small tensor.
//! With the unit-wise bound on, every unit's (‖w_u‖, ‖Δw_u‖) is measured too: on the host in f64
//! in the same visit; on a CubeCL device by the fused unit kernel ([`crate::cube::units`]: one
//! launch per group of parameters, f32 partials scaled by their maximum, no f64); on another
//! accelerator by tensor ops, each tensor's values divided by its largest magnitude before they
//! are squared. Either way one host read, from which the tensors' own norms are summed.
//! Scaling an update back touches only the bounded tensors: w ← w_before + s·(w_after − w_before),
//! s one factor per tensor or one per unit — on a CubeCL device by one fused launch per group of
//! tensors ([`crate::cube::rewrite`]: the results are views into one buffer per group), elsewhere
//! by tensor ops per tensor.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, TensorData};
use gradguard::{UnitLayout, UnitSpan, UpdateNorms};

use crate::padded::{Padded, f32_of, pairwise_sums_along, read_f32};

/// A parameter's position in `norms`, its value before the step, and its units when measured.
type Kept = (usize, Tensor<1>, Option<UnitSpan>);

/// The weights before the step, by parameter id, and the norms of the step's updates.
pub(crate) struct Updates {
    pub norms: Vec<UpdateNorms>,
    before: HashMap<ParamId, Kept>,
}

fn flat<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    let n = t.shape().num_elements();
    t.reshape([n])
}

fn f32s(t: Tensor<1>) -> TensorData {
    t.into_data().convert::<f32>()
}

/// Values summed in f32 lanes before a block's total joins the f64 sums.
const BLOCK: usize = 1024;
/// Independent f32 accumulators per block, so the loop vectorizes.
const LANES: usize = 8;

/// (Σ before², Σ (after − before)²) of one block in f32 lanes; non-finite when a square or a sum
/// overflows f32 (values beyond ~1e19), for the caller to redo in f64.
fn block_sums_f32(before: &[f32], after: &[f32]) -> (f32, f32) {
    let (mut w, mut d) = ([0.0f32; LANES], [0.0f32; LANES]);
    let mut b_chunks = before.chunks_exact(LANES);
    let mut a_chunks = after.chunks_exact(LANES);
    for (b, a) in (&mut b_chunks).zip(&mut a_chunks) {
        for k in 0..LANES {
            let diff = a[k] - b[k];
            w[k] += b[k] * b[k];
            d[k] += diff * diff;
        }
    }
    for (&b, &a) in b_chunks.remainder().iter().zip(a_chunks.remainder()) {
        let diff = a - b;
        w[0] += b * b;
        d[0] += diff * diff;
    }
    (w.iter().sum(), d.iter().sum())
}

/// (‖before‖², ‖after − before‖²) over two f32 slices of one length: f32 lanes within blocks of
/// 1024 values, f64 across blocks, and an exact f64 pass for a block whose values are so large
/// that f32 squares overflow — so any finite weights give finite sums.
fn host_sums(before: &[f32], after: &[f32]) -> (f64, f64) {
    let (mut w, mut d) = (0.0f64, 0.0f64);
    for (b, a) in before.chunks(BLOCK).zip(after.chunks(BLOCK)) {
        let (bw, bd) = block_sums_f32(b, a);
        if bw.is_finite() && bd.is_finite() {
            w += f64::from(bw);
            d += f64::from(bd);
        } else {
            for (&x, &y) in b.iter().zip(a) {
                let x64 = f64::from(x);
                let diff = f64::from(y) - x64;
                w += x64 * x64;
                d += diff * diff;
            }
        }
    }
    (w, d)
}

/// One parameter's per-unit sums on its device, as one flat tensor: its largest |w| and |Δw|,
/// then Σ (w/max|w|)² and Σ (Δw/max|Δw|)² per unit.
fn device_unit_sums(old: Tensor<1>, new: Tensor<1>, span: UnitSpan) -> Tensor<1> {
    let [rows, cols] = [span.rows, span.cols];
    let axis = if span.units_are_columns { 0 } else { 1 };
    // In f32: a half-precision tensor's smallest divisor below would round to 0.
    let (old, new) = (f32_of(old), f32_of(new));
    let delta = new.sub(old.clone());
    let sums = |x: Tensor<1>| {
        // The divisor is at least the smallest normal f32, so an all-zero tensor divides by it.
        let top = x.clone().abs().max().clamp_min(f32::MIN_POSITIVE);
        let scaled = x.div(top.clone()).reshape([rows, cols]);
        let per_unit = pairwise_sums_along(scaled.square(), axis);
        (top, per_unit)
    };
    let (top_w, units_w) = sums(old);
    let (top_d, units_d) = sums(delta);
    Tensor::cat(vec![top_w, top_d, units_w, units_d], 0)
}

/// Undoes [`device_unit_sums`] for every parameter, read back as one slice: per unit (‖w_u‖, ‖Δw_u‖).
fn unit_norms_from(host: &[f32], spans: &[UnitSpan]) -> Vec<Vec<(f64, f64)>> {
    let mut at = 0;
    spans
        .iter()
        .map(|span| {
            let units = span.units();
            let part = &host[at..at + 2 + 2 * units];
            at += 2 + 2 * units;
            let (top_w, top_d) = (f64::from(part[0]), f64::from(part[1]));
            (0..units)
                .map(|u| {
                    let w = top_w * f64::from(part[2 + u]).sqrt();
                    let d = top_d * f64::from(part[2 + units + u]).sqrt();
                    (w, d)
                })
                .collect()
        })
        .collect()
}

/// Per parameter, per unit: (‖w_u‖, ‖Δw_u‖), on the device in one host read: on a CubeCL device
/// by the fused unit kernel's pair form (one launch per group of parameters, read where they
/// lie), elsewhere by tensor ops per parameter ([`device_unit_sums`]).
fn device_unit_norms(
    olds: Vec<Tensor<1>>,
    news: Vec<Tensor<1>>,
    spans: &[UnitSpan],
) -> Vec<Vec<(f64, f64)>> {
    #[cfg(feature = "cube")]
    if let (Some(before), Some(after)) = (
        crate::cube::resolve_all(&olds),
        crate::cube::resolve_all(&news),
    ) {
        return crate::cube::units::unit_sums(&before, Some(&after), spans)
            .into_iter()
            .map(|units| {
                units
                    .into_iter()
                    .map(|u| (u[0].norm(), u[1].norm()))
                    .collect()
            })
            .collect();
    }
    let parts: Vec<Tensor<1>> = olds
        .into_iter()
        .zip(news)
        .zip(spans)
        .map(|((old, new), &span)| device_unit_sums(old, new, span))
        .collect();
    unit_norms_from(&read_f32(Tensor::cat(parts, 0)), spans)
}

struct Before {
    path: Vec<String>,
    values: HashMap<ParamId, (String, Tensor<1>)>,
}

impl ModuleVisitor for Before {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.values
            .insert(param.id, (self.path.join("."), flat(param.val().inner())));
    }
}

/// Pairs each parameter of the module after the step with its value before.
struct After {
    before: HashMap<ParamId, (String, Tensor<1>)>,
    on_host: bool,
    /// The unit layout when the unit-wise bound is on.
    layout: Option<UnitLayout>,
    /// Per parameter with units measured: its span (device path: measured at the end).
    spans: Vec<UnitSpan>,
    /// Per parameter: (‖w_u‖, ‖Δw_u‖) per unit (host path; empty when not measured).
    units: Vec<Vec<(f64, f64)>>,
    names: Vec<String>,
    lens: Vec<usize>,
    /// Host path: the two norms per parameter.
    sums: Vec<(f64, f64)>,
    /// Device path: every parameter before and after the step, measured together at the end.
    olds: Vec<Tensor<1>>,
    news: Vec<Tensor<1>>,
    kept: HashMap<ParamId, Kept>,
}

impl ModuleVisitor for After {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some((name, old)) = self.before.remove(&param.id) else {
            return;
        };
        let new = flat(param.val().inner());
        let span = self
            .layout
            .map(|layout| layout.span_or_whole(&name, &param.val().dims()));
        if self.on_host {
            let (b, a) = (f32s(old.clone()), f32s(new));
            let (b, a) = (
                b.as_slice().expect("f32 after convert"),
                a.as_slice().expect("f32 after convert"),
            );
            // The tensor's norms in f32 lanes, its units' in f64: a second pass over both
            // versions, kept so that the grids' figures (docs/library.md) are what this code computes.
            let (w, d) = host_sums(b, a);
            self.sums.push((w.sqrt(), d.sqrt()));
            self.units.push(span.map_or_else(Vec::new, |span| {
                gradguard::kernel::unit_update_norms(b, a, span)
            }));
        } else {
            self.spans.extend(span);
            self.olds.push(old.clone());
            self.news.push(new);
        }
        self.kept.insert(param.id, (self.names.len(), old, span));
        self.lens.push(param.val().shape().num_elements());
        self.names.push(name);
    }
}

/// (‖before‖, ‖after − before‖) of every parameter on its device, in one host read: on a CubeCL
/// device by the fused kernel's pair form, reading both versions where they lie; elsewhere by two
/// padded buffers, one subtraction, and the block statistics of both.
fn device_norms(olds: Vec<Tensor<1>>, news: Vec<Tensor<1>>) -> Vec<(f64, f64)> {
    #[cfg(feature = "cube")]
    if let (Some(before), Some(after)) = (
        crate::cube::resolve_all(&olds),
        crate::cube::resolve_all(&news),
    ) {
        let segments = Padded::segments_of(olds.iter().map(|t| t.shape().num_elements()));
        let Some(stats) = crate::cube::block_statistics(&before, Some(&after)) else {
            return vec![(0.0, 0.0); segments.len()];
        };
        let (host, _) = crate::cube::read(Some(&stats), None);
        // Per block: the four statistics of `before`, then the four of the update.
        let (mut b, mut d) = (Vec::new(), Vec::new());
        for block in host.chunks_exact(2 * crate::padded::PER_BLOCK) {
            b.extend_from_slice(&block[..crate::padded::PER_BLOCK]);
            d.extend_from_slice(&block[crate::padded::PER_BLOCK..]);
        }
        let norms = |h: &[f32]| Padded::norms_of(&segments, h);
        return norms(&b).into_iter().zip(norms(&d)).collect();
    }
    let (before, _) = Padded::new(olds);
    let (after, _) = Padded::new(news);
    let delta = after.minus(&before);
    let parts: Vec<Tensor<1>> = [before.statistics(), delta.statistics()]
        .into_iter()
        .flatten()
        .collect();
    if parts.is_empty() {
        return vec![(0.0, 0.0); before.segments.len()];
    }
    let host = read_f32(Tensor::cat(parts, 0));
    let (b, d) = host.split_at(host.len() / 2);
    before.norms(b).into_iter().zip(delta.norms(d)).collect()
}

impl Updates {
    /// Measures every float parameter's ‖w‖ in `before` and ‖Δw‖ from `before` to `after`: on
    /// the host when `on_host` (a CPU backend, no host read at all), else on the device with one
    /// host read.
    ///
    /// With `units` (the unit-wise bound's layout), every parameter's units are measured too.
    pub fn measure<M: Module>(
        before: &M,
        after: &M,
        on_host: bool,
        units: Option<UnitLayout>,
    ) -> Self {
        let mut b = Before {
            path: Vec::new(),
            values: HashMap::new(),
        };
        before.visit(&mut b);
        let mut a = After {
            before: b.values,
            on_host,
            layout: units,
            spans: Vec::new(),
            units: Vec::new(),
            names: Vec::new(),
            lens: Vec::new(),
            sums: Vec::new(),
            olds: Vec::new(),
            news: Vec::new(),
            kept: HashMap::new(),
        };
        after.visit(&mut a);
        if !a.olds.is_empty() {
            let (olds, news) = (std::mem::take(&mut a.olds), std::mem::take(&mut a.news));
            if a.layout.is_some() {
                a.units = device_unit_norms(olds, news, &a.spans);
                a.sums = a
                    .units
                    .iter()
                    .map(|u| gradguard::kernel::tensor_norms_of_units(u))
                    .collect();
            } else {
                a.sums = device_norms(olds, news);
            }
        }
        a.units.resize(a.names.len(), Vec::new());
        let norms: Vec<UpdateNorms> = a
            .names
            .into_iter()
            .zip(a.lens)
            .zip(a.sums)
            .zip(a.units)
            .map(|(((name, len), (weight, update)), units)| UpdateNorms {
                name,
                len,
                weight,
                update,
                units,
            })
            .collect();
        Updates {
            norms,
            before: a.kept,
        }
    }

    /// `after` with each parameter's update multiplied by its factor in `scales` (in the order of
    /// `norms`), or unit by unit where `unit_scales` has factors for it (its units as measured):
    /// w ← w_before + s·(w_after − w_before). Parameters with s = 1 are left as they are.
    pub fn scale<M: Module>(self, after: M, scales: &[f64], unit_scales: &[Vec<f64>]) -> M {
        #[cfg(feature = "cube")]
        let fused = fused_scaling(&self.before, &after, scales, unit_scales);
        #[cfg(not(feature = "cube"))]
        let fused = HashMap::new();
        struct Scale<'a> {
            before: HashMap<ParamId, Kept>,
            scales: &'a [f64],
            unit_scales: &'a [Vec<f64>],
            /// The scaled values already computed by the fused kernel, flat.
            fused: HashMap<ParamId, Tensor<1>>,
        }
        impl ModuleMapper for Scale<'_> {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                let Some((i, old, span)) = self.before.remove(&param.id) else {
                    return param;
                };
                if let Some(kept) = self.fused.remove(&param.id) {
                    return param.map(|w| {
                        let kept = kept.reshape(w.dims());
                        if w.is_autodiff() {
                            kept.autodiff().set_require_grad(w.is_require_grad())
                        } else {
                            kept
                        }
                    });
                }
                let s = self.scales[i];
                let units = self.unit_scales.get(i).filter(|u| !u.is_empty());
                if !(s < 1.0) && units.is_none() {
                    return param;
                }
                param.map(|w| {
                    let dims = w.dims();
                    let (autodiff, require_grad) = (w.is_autodiff(), w.is_require_grad());
                    // Computed off the graph, then a leaf as the optimizer's output was.
                    let old = old.reshape(dims);
                    let delta = w.inner().sub(old.clone());
                    let delta = match (units, span) {
                        (Some(factors), Some(span)) if factors.len() == span.units() => {
                            let shape = if span.units_are_columns {
                                [1, span.cols]
                            } else {
                                [span.rows, 1]
                            };
                            let f: Vec<f32> = factors.iter().map(|&f| f as f32).collect();
                            let f =
                                Tensor::<2>::from_data(TensorData::new(f, shape), &delta.device());
                            // Through the flat shape on purpose: on wgpu (llvmpipe) the direct
                            // `reshape([rows, cols])` made the placements test's device and host
                            // measurements of the same step disagree (‖Δθ‖/‖θ‖ 345.0 against
                            // 344.6), an effect of Burn's fusion not yet understood.
                            let n = dims.iter().product::<usize>();
                            let by_unit = delta.reshape([n]).reshape([span.rows, span.cols]).mul(f);
                            by_unit.reshape([n]).reshape(dims)
                        }
                        _ => delta.mul_scalar(s),
                    };
                    let kept = old.add(delta);
                    if autodiff {
                        kept.autodiff().set_require_grad(require_grad)
                    } else {
                        kept
                    }
                })
            }
        }
        after.map(&mut Scale {
            before: self.before,
            scales,
            unit_scales,
            fused,
        })
    }
}

/// The factors of parameter `i` as the scaling applies them: one per unit where the unit-wise
/// bound gave factors matching its span, else its tensor factor (as one unit), or `None` when
/// it is left as it is.
#[cfg(feature = "cube")]
fn factors_of(
    i: usize,
    span: Option<UnitSpan>,
    len: usize,
    scales: &[f64],
    unit_scales: &[Vec<f64>],
) -> Option<(UnitSpan, Vec<f32>)> {
    let units = unit_scales.get(i).filter(|u| !u.is_empty());
    match (units, span) {
        (Some(f), Some(span)) if f.len() == span.units() => {
            Some((span, f.iter().map(|&f| f as f32).collect()))
        }
        _ if scales[i] < 1.0 || units.is_some() => {
            Some((UnitSpan::whole(len.max(1)), vec![scales[i] as f32]))
        }
        _ => None,
    }
}

/// Every parameter to scale, scaled by the fused kernel in one launch per group when all of
/// them live on a CubeCL device; empty otherwise (the tensor-op path then scales each).
#[cfg(feature = "cube")]
fn fused_scaling<M: Module>(
    before: &HashMap<ParamId, Kept>,
    after: &M,
    scales: &[f64],
    unit_scales: &[Vec<f64>],
) -> HashMap<ParamId, Tensor<1>> {
    struct Collect<'a> {
        before: &'a HashMap<ParamId, Kept>,
        scales: &'a [f64],
        unit_scales: &'a [Vec<f64>],
        ids: Vec<ParamId>,
        olds: Vec<Tensor<1>>,
        news: Vec<Tensor<1>>,
        spans: Vec<UnitSpan>,
        factors: Vec<Vec<f32>>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let Some((i, old, span)) = self.before.get(&param.id) else {
                return;
            };
            let len = old.shape().num_elements();
            if let Some((span, f)) = factors_of(*i, *span, len, self.scales, self.unit_scales) {
                self.ids.push(param.id);
                self.olds.push(old.clone());
                self.news.push(flat(param.val().inner()));
                self.spans.push(span);
                self.factors.push(f);
            }
        }
    }
    let mut c = Collect {
        before,
        scales,
        unit_scales,
        ids: Vec::new(),
        olds: Vec::new(),
        news: Vec::new(),
        spans: Vec::new(),
        factors: Vec::new(),
    };
    after.visit(&mut c);
    let Some(device) = c.olds.first().map(Tensor::device) else {
        return HashMap::new();
    };
    let (Some(olds), Some(news)) = (
        crate::cube::resolve_all(&c.olds),
        crate::cube::resolve_all(&c.news),
    ) else {
        return HashMap::new();
    };
    let how = crate::cube::rewrite::Rewrite {
        zero_non_finite: false,
        limit: None,
        spans: &c.spans,
        factors: &c.factors,
        origin: Some(&olds),
        dtype: None,
    };
    match crate::cube::rewrite::rewrite(&device, &news, how) {
        Some(scaled) => c.ids.into_iter().zip(scaled).collect(),
        None => HashMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::host_sums;

    #[test]
    fn host_sums_are_exact_enough_and_never_overflow() {
        let before: Vec<f32> = (0..5000).map(|i| (i as f32 * 0.37).sin()).collect();
        let after: Vec<f32> = before.iter().map(|x| x + 0.5).collect();
        let (w, d) = host_sums(&before, &after);
        let exact_w: f64 = before.iter().map(|&x| f64::from(x).powi(2)).sum();
        assert!((w / exact_w - 1.0).abs() < 1e-6, "{w} {exact_w}");
        assert!((d / 1250.0 - 1.0).abs() < 1e-6, "{d}");
        // Squares of 1e30 overflow f32: the block is redone in f64.
        let (w, d) = host_sums(&[1e30, 0.0], &[1e30, 3e30]);
        assert!((w / 1e60 - 1.0).abs() < 1e-6 && (d / 9e60 - 1.0).abs() < 1e-6);
    }
}
