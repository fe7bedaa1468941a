//! Walking a module: parameter names (module paths), ids and shapes, and the way back.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Tensor};

/// One parameter that has a gradient.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub name: String,
    pub id: ParamId,
    pub shape: Vec<usize>,
    /// The gradient's dtype (f16 and bf16 gradients are read as f32 and handed back as they came).
    pub dtype: DType,
}

/// Collects every float parameter with a gradient: its path name, id and shape, its gradient
/// flattened to rank 1 (taken out of `GradientsParams`), and, when asked, its value (detached,
/// flattened) for rules that compare gradients with weights.
pub(crate) struct Collector<'a> {
    path: Vec<String>,
    grads: &'a mut GradientsParams,
    with_values: bool,
    /// Leave the gradients in `grads` (the flat ones are views of them).
    keep: bool,
    pub entries: Vec<Entry>,
    pub flat_grads: Vec<Tensor<1>>,
    pub flat_values: Vec<Tensor<1>>,
}

impl<'a> Collector<'a> {
    /// A collector that leaves the gradients in `grads` (the non-blocking step steps each
    /// parameter with its gradient in its own shape).
    pub fn keeping(mut self) -> Self {
        self.keep = true;
        self
    }

    pub fn new(grads: &'a mut GradientsParams, with_values: bool) -> Self {
        Collector {
            path: Vec::new(),
            grads,
            with_values,
            keep: false,
            entries: Vec::new(),
            flat_grads: Vec::new(),
            flat_values: Vec::new(),
        }
    }
}

fn flat<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    let n = t.shape().num_elements();
    t.reshape([n])
}

impl ModuleVisitor for Collector<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let grad = if self.keep {
            self.grads.get::<D>(param.id)
        } else {
            self.grads.remove::<D>(param.id)
        };
        let Some(grad) = grad else {
            return;
        };
        self.entries.push(Entry {
            name: self.path.join("."),
            id: param.id,
            shape: grad.dims().to_vec(),
            dtype: grad.dtype(),
        });
        self.flat_grads.push(flat(grad));
        if self.with_values {
            self.flat_values.push(flat(param.val().inner()));
        }
    }
}

/// Puts flattened gradients back into a `GradientsParams`, each with its parameter's shape.
pub(crate) struct Restorer<'a> {
    pub entries: &'a [Entry],
    pub index: HashMap<ParamId, usize>,
    pub flat_grads: Vec<Option<Tensor<1>>>,
    pub out: GradientsParams,
}

impl<'a> Restorer<'a> {
    pub fn new(entries: &'a [Entry], flat_grads: Vec<Tensor<1>>) -> Self {
        Restorer {
            entries,
            index: entries.iter().enumerate().map(|(i, e)| (e.id, i)).collect(),
            flat_grads: flat_grads.into_iter().map(Some).collect(),
            out: GradientsParams::new(),
        }
    }
}

impl ModuleVisitor for Restorer<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(&i) = self.index.get(&param.id) else {
            return;
        };
        let Some(g) = self.flat_grads[i].take() else {
            return;
        };
        let dims: [usize; D] = self.entries[i]
            .shape
            .clone()
            .try_into()
            .expect("the shape was read from a tensor of this rank");
        self.out.register::<D>(param.id, g.reshape(dims));
    }
}

/// Parameter names of a module, in visiting order (e.g. `layers.0.weight`).
pub fn parameter_names<M: Module>(module: &M) -> Vec<String> {
    struct Names {
        path: Vec<String>,
        names: Vec<String>,
    }
    impl ModuleVisitor for Names {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<D>>) {
            self.names.push(self.path.join("."));
        }
    }
    let mut v = Names {
        path: Vec::new(),
        names: Vec::new(),
    };
    module.visit(&mut v);
    v.names
}
