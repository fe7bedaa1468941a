//! One model type for every task, so a run, its checkpoint and its guard are written once.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};

use super::mlp::DeepMlp;
use super::recurrent::RecurrentNet;
use crate::tasks::HostBatch;

/// The network a run trains.
// One value per run, moved once per step: a few hundred bytes of handles, not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Net {
    /// A deep MLP (the digits task).
    Mlp(DeepMlp),
    /// A recurrent network (sequence tasks).
    Recurrent(RecurrentNet),
}

impl Net {
    /// Outputs `[n, outputs]` for `batch`'s inputs, placed on `device`.
    pub fn forward(&self, batch: &HostBatch, device: &Device) -> Tensor<2> {
        let data = TensorData::new(batch.inputs.clone(), batch.shape.clone());
        match self {
            Net::Mlp(m) => m.forward(Tensor::from_data(data, device)),
            Net::Recurrent(r) => r.forward(Tensor::from_data(data, device)),
        }
    }

    /// Every float parameter's values, concatenated in module order: two networks of the same
    /// configuration compare value by value (for bit-for-bit resume checks, or the distance
    /// between two runs).
    pub fn parameters_flat(&self) -> Vec<f32> {
        struct Flatten(Vec<f32>);
        impl ModuleVisitor for Flatten {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let values = param.val().into_data().try_to_vec::<f32>();
                self.0.extend(values.unwrap_or_default());
            }
        }
        let mut flat = Flatten(Vec::new());
        self.visit(&mut flat);
        flat.0
    }
}
