//! Per-tensor norms of a module's weights and of their difference from another copy, and a
//! perturbed copy: what the probe reads off its trial copies.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{DType, Tensor, TensorData};
use gradguard::probe::TensorUpdate;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::padded::f32_of;

/// Every float parameter of a module, flattened, with its module path.
struct Flatten {
    path: Vec<String>,
    tensors: Vec<(String, Tensor<1>)>,
}

impl ModuleVisitor for Flatten {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val().inner();
        let n = t.shape().num_elements();
        // Squares summed in f16 overflow past 65,504: every norm is taken in f32.
        self.tensors
            .push((self.path.join("."), f32_of(t.reshape([n]))));
    }
}

fn flatten<M: Module>(module: &M) -> Vec<(String, Tensor<1>)> {
    let mut f = Flatten {
        path: Vec::new(),
        tensors: Vec::new(),
    };
    module.visit(&mut f);
    f.tensors
}

/// ‖a‖ (`weight_norm`) and ‖b − a‖ (`update_norm`) for every float parameter of two copies of
/// one module (same structure), in module order, read from the device in one transfer.
pub(crate) fn pair_norms<M: Module>(a: &M, b: &M) -> Vec<TensorUpdate> {
    let (a, b) = (flatten(a), flatten(b));
    assert_eq!(a.len(), b.len(), "two copies of one module");
    if a.is_empty() {
        return Vec::new();
    }
    let sums: Vec<Tensor<1>> = a
        .iter()
        .zip(&b)
        .flat_map(|((_, x), (_, y))| {
            [
                x.clone().square().sum(),
                (x.clone() - y.clone()).square().sum(),
            ]
        })
        .collect();
    let sums = Tensor::cat(sums, 0)
        .into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .expect("converted to f64");
    a.into_iter()
        .zip(sums.chunks(2))
        .map(|((name, _), s)| TensorUpdate {
            name,
            weight_norm: s[0].sqrt(),
            update_norm: s[1].sqrt(),
        })
        .collect()
}

/// `module` with every float parameter moved by a relative `epsilon`: each value plus
/// `epsilon · rms(tensor) · u`, `u` uniform with unit variance, drawn from `seed`.
pub(crate) fn perturbed<M: Module>(module: M, epsilon: f64, seed: u64) -> M {
    struct Perturb(StdRng, f64);
    impl ModuleMapper for Perturb {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let Perturb(rng, epsilon) = self;
            param.map(|t| {
                let (shape, dtype) = (t.shape(), t.dtype());
                let n = shape.num_elements();
                let wide = t.clone().inner().cast(DType::F32);
                let rms = f64::from(wide.square().mean().into_scalar::<f32>()).sqrt();
                let scale = *epsilon * rms * 3f64.sqrt();
                let shift: Vec<f32> = (0..n)
                    .map(|_| (scale * rng.random_range(-1.0..1.0)) as f32)
                    .collect();
                let shift = Tensor::<D>::from_data(TensorData::new(shift, shape), &t.device());
                let tracked = t.is_autodiff();
                let moved = t.inner() + shift.inner().cast(dtype);
                // A fresh trainable leaf where the original was one.
                if tracked {
                    moved.autodiff().require_grad()
                } else {
                    moved
                }
            })
        }
    }
    module.map(&mut Perturb(StdRng::seed_from_u64(seed), epsilon))
}
