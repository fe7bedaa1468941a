//! The update the optimizer produced: measured per parameter against the weights before the
//! step, and scaled back where the guard's update bound says so.
//!
//! Burn tensors are copy-on-write, so keeping the module from before the step is a clone of
//! handles. On the host path (a CPU backend) both versions of every parameter are read as `f32`
//! slices and measured by the core's host kernels ([`gradguard::kernel::update_norms`], and
//! [`gradguard::kernel::unit_update_norms`] per unit): no overflow for any finite f32. On an
//! accelerator the step's [`DeviceOps`] measure both versions in their pair form — block
//! statistics of the weights and of the update, or every unit's (‖w_u‖, ‖Δw_u‖) — in one host
//! read, from which the tensors' own norms are summed. Scaling an update back touches only the
//! bounded tensors: w ← w_before + s·(w_after − w_before), s one factor per tensor or one per
//! unit, as one [`DeviceOps::rewrite`] relative to the weights before the step.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, TensorData};
use gradguard::{UnitLayout, UnitSpan, UpdateNorms, UpdateSpread};

use crate::device_ops::{DeviceOps, Engine, QueuedUnitNorms, Rewrite, UnitNorms};
use crate::padded::{PER_BLOCK, Padded, Segment};

/// A parameter's position in `norms`, its value before the step, and its units when measured.
type Kept = (usize, Tensor<1>, Option<UnitSpan>);

/// The weights before the step, by parameter id, and the norms of the step's updates.
pub(crate) struct Updates {
    pub norms: Vec<UpdateNorms>,
    before: HashMap<ParamId, Kept>,
    engine: Engine,
}

fn flat<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    let n = t.shape().num_elements();
    t.reshape([n])
}

fn f32s(t: Tensor<1>) -> TensorData {
    t.into_data().convert::<f32>()
}

/// Every float parameter of a module in module order: its id, path name and weights, flat.
struct Before {
    path: Vec<String>,
    values: Vec<(ParamId, String, Tensor<1>)>,
}

impl Before {
    fn of<M: Module>(module: &M) -> Vec<(ParamId, String, Tensor<1>)> {
        let mut b = Before {
            path: Vec::new(),
            values: Vec::new(),
        };
        module.visit(&mut b);
        b.values
    }
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
            .push((param.id, self.path.join("."), flat(param.val().inner())));
    }
}

/// Pairs each parameter of the module after the step with its value before.
struct After {
    before: HashMap<ParamId, (String, Tensor<1>)>,
    engine: Engine,
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
    /// Whether to measure each update's spread (host path: measured as it goes).
    spread: bool,
    spreads: Vec<UpdateSpread>,
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
        if let Engine::Host = self.engine {
            let (b, a) = (f32s(old.clone()), f32s(new));
            let (b, a) = (
                b.as_slice().expect("f32 after convert"),
                a.as_slice().expect("f32 after convert"),
            );
            self.sums.push(gradguard::kernel::update_norms(b, a));
            if self.spread {
                self.spreads.push(spread_of(b, a));
            }
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

/// ‖after − before‖₁ and ‖after − before‖_∞ of one parameter on the host, in f64 (NaN when a
/// change is not finite).
pub(crate) fn spread_of(before: &[f32], after: &[f32]) -> UpdateSpread {
    let (sum_abs, max_abs) =
        before
            .iter()
            .zip(after)
            .fold((0.0f64, 0.0f64), |(sum, max), (&b, &a)| {
                let d = (f64::from(a) - f64::from(b)).abs();
                (sum + d, if d.is_finite() { max.max(d) } else { f64::NAN })
            });
    UpdateSpread { sum_abs, max_abs }
}

/// (‖before‖, ‖after − before‖) and the spread of `after − before` of every parameter, from the
/// block statistics of both in one host read.
fn device_norms(
    ops: &dyn DeviceOps,
    olds: &[Tensor<1>],
    news: &[Tensor<1>],
) -> (Vec<(f64, f64)>, Vec<UpdateSpread>) {
    let segments = Padded::segments_of(olds.iter().map(|t| t.shape().num_elements()));
    let read = ops.block_statistics(olds, Some(news), None, None);
    pair_norms(&segments, &read.values, &read.deltas)
}

/// (‖before‖, ‖after − before‖) and the spread of `after − before` of every tensor of
/// `segments`, from the block statistics of the weights (`values`) and of the update (`deltas`).
fn pair_norms(
    segments: &[Segment],
    values: &[f32],
    deltas: &[f32],
) -> (Vec<(f64, f64)>, Vec<UpdateSpread>) {
    let weights = Padded::norms_of(segments, values);
    let deltas = Padded::combine_segments(segments, deltas);
    let updates = deltas.iter().map(|s| {
        if s.is_finite() {
            s.sum_squares.sqrt()
        } else {
            f64::NAN
        }
    });
    let spreads = deltas
        .iter()
        .map(|s| {
            let max_abs = if s.is_finite() { s.max_abs } else { f64::NAN };
            UpdateSpread {
                sum_abs: s.sum_abs,
                max_abs,
            }
        })
        .collect();
    (weights.into_iter().zip(updates).collect(), spreads)
}

impl Updates {
    /// Measures every float parameter's ‖w‖ in `before` and ‖Δw‖ from `before` to `after`: on
    /// the host by [`Engine::Host`] (a CPU backend, no host read at all), else by the device
    /// operations with one host read.
    ///
    /// With `units` (the unit-wise bound's layout), every parameter's units are measured too;
    /// with `spread`, every update's ℓ1 and ℓ∞ norms (on a device, one more host read when units
    /// are measured too).
    pub fn measure<M: Module>(
        before: &M,
        after: &M,
        engine: Engine,
        units: Option<UnitLayout>,
        spread: bool,
    ) -> Self {
        Measuring::collect(before, after, engine, units, spread).finish(None)
    }
}

/// A step's update paired with the weights before it, not yet measured: on a device every
/// parameter is measured together, when [`Measuring::finish`] asks — or, for the unit-wise
/// bound, from unit norms queued earlier ([`Measuring::queue_units`]) and read with something
/// else.
pub(crate) struct Measuring {
    a: After,
}

impl Measuring {
    /// Pairs every float parameter of `after` with its value in `before`; on the host path
    /// (a CPU backend) measures them as it goes. `units` and `spread` as in [`Updates::measure`].
    pub fn collect<M: Module>(
        before: &M,
        after: &M,
        engine: Engine,
        units: Option<UnitLayout>,
        spread: bool,
    ) -> Self {
        let mut a = After {
            before: Before::of(before)
                .into_iter()
                .map(|(id, name, t)| (id, (name, t)))
                .collect(),
            engine,
            layout: units,
            spans: Vec::new(),
            units: Vec::new(),
            names: Vec::new(),
            lens: Vec::new(),
            sums: Vec::new(),
            spread,
            spreads: Vec::new(),
            olds: Vec::new(),
            news: Vec::new(),
            kept: HashMap::new(),
        };
        after.visit(&mut a);
        Measuring { a }
    }

    /// On a device, with units and without the spread: every unit's norms queued (not read), to
    /// be read with something else and handed to [`Self::finish`]. `None` otherwise.
    pub fn queue_units(&self) -> Option<QueuedUnitNorms> {
        let a = &self.a;
        match a.engine {
            Engine::Device(ops) if a.layout.is_some() && !a.spread && !a.olds.is_empty() => {
                Some(ops.queued_unit_norms(&a.olds, Some(&a.news), &a.spans))
            }
            _ => None,
        }
    }

    /// The measurements: on a device, with units, from `units` (the norms [`Self::queue_units`]
    /// queued, as read back) or else in one host read; the tensors' own norms summed from them.
    pub fn finish(self, units: Option<UnitNorms>) -> Updates {
        let mut a = self.a;
        if let Engine::Device(ops) = a.engine
            && !a.olds.is_empty()
        {
            if a.layout.is_some() {
                a.units = units.unwrap_or_else(|| ops.unit_norms(&a.olds, Some(&a.news), &a.spans));
                a.sums = a
                    .units
                    .iter()
                    .map(|u| gradguard::kernel::tensor_norms_of_units(u))
                    .collect();
                if a.spread {
                    a.spreads = device_norms(ops, &a.olds, &a.news).1;
                }
            } else {
                let spreads;
                (a.sums, spreads) = device_norms(ops, &a.olds, &a.news);
                if a.spread {
                    a.spreads = spreads;
                }
            }
        }
        a.units.resize(a.names.len(), Vec::new());
        // Measured only when asked (empty otherwise): `None` for every parameter then.
        let spreads = a
            .spreads
            .into_iter()
            .map(Some)
            .chain(std::iter::repeat(None));
        let norms: Vec<UpdateNorms> = a
            .names
            .into_iter()
            .zip(a.lens)
            .zip(a.sums)
            .zip(a.units)
            .zip(spreads)
            .map(
                |((((name, len), (weight, update)), units), spread)| UpdateNorms {
                    name,
                    len,
                    weight,
                    update,
                    units,
                    spread,
                },
            )
            .collect();
        Updates {
            norms,
            before: a.kept,
            engine: a.engine,
        }
    }
}

impl Updates {
    /// The measurements of a step whose kernel took them: `pairs` are the pair block statistics
    /// (per block, those of the weights, then those of the update; the layout of
    /// [`DeviceOps::block_statistics`]'s pair form) of every float parameter of `before`, in
    /// module order. With `spread`, every update's ℓ1 and ℓ∞ norms too. `None` when `pairs` does
    /// not hold every parameter's blocks.
    pub fn from_pair_statistics<M: Module>(
        before: &M,
        pairs: &[f32],
        engine: Engine,
        spread: bool,
    ) -> Option<Self> {
        let params = Before::of(before);
        let lens: Vec<usize> = params
            .iter()
            .map(|(_, _, t)| t.shape().num_elements())
            .collect();
        let segments = Padded::segments_of(lens.iter().copied());
        let blocks: usize = lens.iter().map(|l| l.div_ceil(crate::padded::BLOCK)).sum();
        if pairs.len() != blocks * 2 * PER_BLOCK {
            return None;
        }
        let (mut values, mut deltas) = (Vec::new(), Vec::new());
        for block in pairs.chunks_exact(2 * PER_BLOCK) {
            values.extend_from_slice(&block[..PER_BLOCK]);
            deltas.extend_from_slice(&block[PER_BLOCK..]);
        }
        let (sums, spreads) = pair_norms(&segments, &values, &deltas);
        let mut kept = HashMap::with_capacity(params.len());
        let mut norms = Vec::with_capacity(params.len());
        for (index, (((id, name, old), (weight, update)), spreads)) in
            params.into_iter().zip(sums).zip(spreads).enumerate()
        {
            norms.push(UpdateNorms {
                name,
                len: lens[index],
                weight,
                update,
                units: Vec::new(),
                spread: spread.then_some(spreads),
            });
            kept.insert(id, (index, old, None));
        }
        Some(Updates {
            norms,
            before: kept,
            engine,
        })
    }

    /// `after` with each parameter's update multiplied by its factor in `scales` (in the order of
    /// `norms`), or unit by unit where `unit_scales` has factors for it (its units as measured):
    /// w ← w_before + s·(w_after − w_before), by one rewrite of the parameters to scale.
    /// Parameters with s = 1 are left as they are.
    pub fn scale<M: Module>(self, after: M, scales: &[f64], unit_scales: &[Vec<f64>]) -> M {
        let scaled = scale_updates(self.engine.ops(), &self.before, &after, scales, unit_scales);
        if scaled.is_empty() {
            return after;
        }
        struct Replace {
            scaled: HashMap<ParamId, Tensor<1>>,
        }
        impl ModuleMapper for Replace {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                let Some(kept) = self.scaled.remove(&param.id) else {
                    return param;
                };
                param.map(|w| {
                    // Computed off the graph, then a leaf as the optimizer's output was.
                    let kept = kept.reshape(w.dims());
                    if w.is_autodiff() {
                        kept.autodiff().set_require_grad(w.is_require_grad())
                    } else {
                        kept
                    }
                })
            }
        }
        after.map(&mut Replace { scaled })
    }
}

/// The factors of parameter `i` as the scaling applies them: one per unit where the unit-wise
/// bound gave factors matching its span, else its tensor factor (as one unit), or `None` when
/// it is left as it is.
pub(crate) fn factors_of(
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

/// Every parameter to scale, by id: its scaled value (flat, in its own dtype), from one rewrite
/// relative to its value before the step.
fn scale_updates<M: Module>(
    ops: &dyn DeviceOps,
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
            if len == 0 {
                return;
            }
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
    if c.ids.is_empty() {
        return HashMap::new();
    }
    let how = Rewrite {
        origin: Some(&c.olds),
        ..Rewrite::by_units(&c.spans, &c.factors)
    };
    c.ids.into_iter().zip(ops.rewrite(&c.news, how)).collect()
}
