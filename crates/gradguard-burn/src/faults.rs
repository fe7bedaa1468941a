//! Fault injection for tests of guarded training: corrupt one parameter's gradient the way real
//! failures do (a NaN or ±inf from an overflow, a spike from a bad batch), so a test can check
//! what the guard does about it. The lab's training loop uses it for its fault-injection runs.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};

/// What to do to a gradient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GradientFault {
    /// Its first value becomes NaN.
    Nan,
    /// Its first value becomes +inf.
    Inf,
    /// Every value is multiplied by this factor (a spike).
    Scale(f32),
}

struct Inject<'a> {
    grads: &'a mut GradientsParams,
    target: &'a str,
    fault: GradientFault,
    path: Vec<String>,
    found: bool,
}

impl ModuleVisitor for Inject<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.found || self.path.join(".") != self.target {
            return;
        }
        let Some(grad) = self.grads.remove::<D>(param.id) else {
            return;
        };
        let device = grad.device();
        let shape = grad.shape();
        let mut values: Vec<f32> = grad.into_data().try_to_vec::<f32>().unwrap_or_default();
        match self.fault {
            GradientFault::Nan => values.first_mut().into_iter().for_each(|v| *v = f32::NAN),
            GradientFault::Inf => values
                .first_mut()
                .into_iter()
                .for_each(|v| *v = f32::INFINITY),
            GradientFault::Scale(f) => values.iter_mut().for_each(|v| *v *= f),
        }
        let corrupted = Tensor::<D>::from_data(TensorData::new(values, shape), &device);
        self.grads.register::<D>(param.id, corrupted);
        self.found = true;
    }
}

/// Applies `fault` to the gradient of the parameter named `name` (a module path such as
/// `layers.3.weight`, as [`crate::parameter_names`] lists them). Returns whether it was found.
pub fn inject<M: Module>(
    module: &M,
    grads: &mut GradientsParams,
    name: &str,
    fault: GradientFault,
) -> bool {
    let mut visitor = Inject {
        grads,
        target: name,
        fault,
        path: Vec::new(),
        found: false,
    };
    module.visit(&mut visitor);
    visitor.found
}
