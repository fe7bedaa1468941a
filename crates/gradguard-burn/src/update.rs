//! The update the optimizer produced: measured per parameter against the weights before the
//! step, and scaled back where the guard's update bound says so.
//!
//! Burn tensors are copy-on-write, so keeping the module from before the step is a clone of
//! handles; the optimizer then writes its result into new buffers instead of in place. The norms
//! are computed on the parameters' device in their own dtype (no f64, so they run where WGSL and
//! Metal do), scaled by each tensor's largest magnitude so that finite weights never overflow,
//! and read to the host in one read of a small stacked tensor.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;
use gradguard::UpdateNorms;

/// The updates of one step, flattened, by parameter id.
pub(crate) struct Updates {
    pub norms: Vec<UpdateNorms>,
    deltas: HashMap<ParamId, (usize, Tensor<1>)>,
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

struct After {
    before: HashMap<ParamId, (String, Tensor<1>)>,
    names: Vec<String>,
    lens: Vec<usize>,
    parts: Vec<Tensor<1>>,
    deltas: HashMap<ParamId, (usize, Tensor<1>)>,
}

impl ModuleVisitor for After {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some((name, old)) = self.before.remove(&param.id) else {
            return;
        };
        let delta = flat(param.val().inner()).sub(old.clone());
        self.parts.push(scaled_norm(old));
        self.parts.push(scaled_norm(delta.clone()));
        self.deltas.insert(param.id, (self.names.len(), delta));
        self.lens.push(param.val().shape().num_elements());
        self.names.push(name);
    }
}

impl Updates {
    /// Measures every float parameter's ‖w‖ in `before` and ‖Δw‖ from `before` to `after`, in one
    /// host read.
    pub fn measure<M: Module>(before: &M, after: &M) -> Self {
        let mut b = Before {
            path: Vec::new(),
            values: HashMap::new(),
        };
        before.visit(&mut b);
        let mut a = After {
            before: b.values,
            names: Vec::new(),
            lens: Vec::new(),
            parts: Vec::new(),
            deltas: HashMap::new(),
        };
        after.visit(&mut a);
        if a.parts.is_empty() {
            return Updates {
                norms: Vec::new(),
                deltas: a.deltas,
            };
        }
        let read: Vec<f64> = Tensor::cat(a.parts, 0)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32 after convert")
            .into_iter()
            .map(f64::from)
            .collect();
        let norms = a
            .names
            .into_iter()
            .zip(a.lens)
            .zip(read.chunks_exact(2))
            .map(|((name, len), pair)| UpdateNorms {
                name,
                len,
                weight: pair[0],
                update: pair[1],
            })
            .collect();
        Updates {
            norms,
            deltas: a.deltas,
        }
    }

    /// `after` with each parameter's update multiplied by its factor in `scales` (in the order of
    /// `norms`): w ← w_after − (1 − s)·Δw = w_before + s·Δw.
    pub fn scale<M: Module>(self, after: M, scales: &[f64]) -> M {
        struct Scale<'a> {
            deltas: HashMap<ParamId, (usize, Tensor<1>)>,
            scales: &'a [f64],
        }
        impl ModuleMapper for Scale<'_> {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                let Some((i, delta)) = self.deltas.remove(&param.id) else {
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
                    let kept = w.inner().sub(delta.mul_scalar(1.0 - s).reshape(dims));
                    if autodiff {
                        kept.autodiff().set_require_grad(require_grad)
                    } else {
                        kept
                    }
                })
            }
        }
        after.map(&mut Scale {
            deltas: self.deltas,
            scales,
        })
    }
}
