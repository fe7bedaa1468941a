//! One model type for every task, so a run, its checkpoint and its guard are written once.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use super::mlp::DeepMlp;
use super::recurrent::RecurrentNet;
use crate::tasks::HostBatch;

/// The network a run trains.
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
}
