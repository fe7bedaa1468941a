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
//! Scaling an update back touches only the bounded tensors: w ← w_before + s·(w_after − w_before).

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, TensorData};
use gradguard::UpdateNorms;

use crate::padded::{Padded, read_f32};

/// The weights before the step, by parameter id, and the norms of the step's updates.
pub(crate) struct Updates {
    pub norms: Vec<UpdateNorms>,
    before: HashMap<ParamId, (usize, Tensor<1>)>,
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
    names: Vec<String>,
    lens: Vec<usize>,
    /// Host path: the two norms per parameter.
    sums: Vec<(f64, f64)>,
    /// Device path: every parameter before and after the step, measured together at the end.
    olds: Vec<Tensor<1>>,
    news: Vec<Tensor<1>>,
    kept: HashMap<ParamId, (usize, Tensor<1>)>,
}

impl ModuleVisitor for After {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some((name, old)) = self.before.remove(&param.id) else {
            return;
        };
        let new = flat(param.val().inner());
        if self.on_host {
            let (b, a) = (f32s(old.clone()), f32s(new));
            let (w, d) = host_sums(
                b.as_slice().expect("f32 after convert"),
                a.as_slice().expect("f32 after convert"),
            );
            self.sums.push((w.sqrt(), d.sqrt()));
        } else {
            self.olds.push(old.clone());
            self.news.push(new);
        }
        self.kept.insert(param.id, (self.names.len(), old));
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
    pub fn measure<M: Module>(before: &M, after: &M, on_host: bool) -> Self {
        let mut b = Before {
            path: Vec::new(),
            values: HashMap::new(),
        };
        before.visit(&mut b);
        let mut a = After {
            before: b.values,
            on_host,
            names: Vec::new(),
            lens: Vec::new(),
            sums: Vec::new(),
            olds: Vec::new(),
            news: Vec::new(),
            kept: HashMap::new(),
        };
        after.visit(&mut a);
        if !a.olds.is_empty() {
            a.sums = device_norms(std::mem::take(&mut a.olds), std::mem::take(&mut a.news));
        }
        let norms = a
            .names
            .into_iter()
            .zip(a.lens)
            .zip(a.sums)
            .map(|((name, len), (weight, update))| UpdateNorms {
                name,
                len,
                weight,
                update,
            })
            .collect();
        Updates {
            norms,
            before: a.kept,
        }
    }

    /// `after` with each parameter's update multiplied by its factor in `scales` (in the order of
    /// `norms`): w ← w_before + s·(w_after − w_before). Parameters with s = 1 are left as they are.
    pub fn scale<M: Module>(self, after: M, scales: &[f64]) -> M {
        struct Scale<'a> {
            before: HashMap<ParamId, (usize, Tensor<1>)>,
            scales: &'a [f64],
        }
        impl ModuleMapper for Scale<'_> {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                let Some((i, old)) = self.before.remove(&param.id) else {
                    return param;
                };
                let s = self.scales[i];
                if !(s < 1.0) {
                    return param;
                }
                param.map(|w| {
                    let dims = w.dims();
                    let (autodiff, require_grad) = (w.is_autodiff(), w.is_require_grad());
                    // Computed off the graph, then a leaf as the optimizer's output was.
                    let old = old.reshape(dims);
                    let kept = old.clone().add(w.inner().sub(old).mul_scalar(s));
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
        })
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
