//! The update the optimizer produced: measured per parameter against the weights before the
//! step, and scaled back where the guard's update bound says so.
//!
//! Burn tensors are copy-on-write, so keeping the module from before the step is a clone of
//! handles. Where the device's memory is host memory (the CPU backend) both versions of every
//! parameter are read as `f32` slices and ‖w‖², ‖Δw‖² accumulated in one pass (f32 lanes per
//! block of 1024 values, f64 across blocks, an exact f64 pass for blocks of huge values: no
//! overflow for any finite f32). On an accelerator the norms are tensor ops in the parameters' own
//! dtype (no f64, so they run where WGSL and Metal do), scaled by each tensor's largest magnitude
//! so finite weights never overflow, and read in one host read of a small stacked tensor.
//! Scaling an update back touches only the bounded tensors: w ← w_before + s·(w_after − w_before).

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, TensorData};
use gradguard::UpdateNorms;

/// The weights before the step, by parameter id, and the norms of the step's updates.
pub(crate) struct Updates {
    pub norms: Vec<UpdateNorms>,
    before: HashMap<ParamId, (usize, Tensor<1>)>,
}

fn flat<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    let n = t.shape().num_elements();
    t.reshape([n])
}

/// ‖x‖₂ as a one-value tensor, computed as m·‖x/m‖₂ with m = max |x|, so that a finite tensor of
/// values near f32's largest has a finite norm wherever the result itself fits.
fn scaled_norm(x: Tensor<1>) -> Tensor<1> {
    let m = x.clone().abs().max();
    let safe = m.clone().clamp_min(f32::MIN_POSITIVE);
    x.div(safe.clone())
        .square()
        .sum()
        .sqrt()
        .mul(safe)
        .mask_fill(m.equal_elem(0.0), 0.0)
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
    /// Device path: the two norm tensors per parameter, read at the end.
    parts: Vec<Tensor<1>>,
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
            let delta = new.sub(old.clone());
            self.parts.push(scaled_norm(old.clone()));
            self.parts.push(scaled_norm(delta));
        }
        self.kept.insert(param.id, (self.names.len(), old));
        self.lens.push(param.val().shape().num_elements());
        self.names.push(name);
    }
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
            parts: Vec::new(),
            kept: HashMap::new(),
        };
        after.visit(&mut a);
        if !a.parts.is_empty() {
            let read = f32s(Tensor::cat(a.parts, 0));
            a.sums = read
                .as_slice::<f32>()
                .expect("f32 after convert")
                .chunks_exact(2)
                .map(|pair| (f64::from(pair[0]), f64::from(pair[1])))
                .collect();
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
