//! One model type for every task, so a run, its checkpoint and its guard are written once.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use super::mlp::DeepMlp;
use super::recurrent::RecurrentNet;
use super::transformer::LmTransformer;
use crate::precision::Precision;
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
    /// A causal transformer language model (the text task).
    Lm(LmTransformer),
}

impl Net {
    /// Outputs `[n, outputs]` in f32 for `batch`'s inputs, placed on `device`, the network run
    /// in `precision` (the f32 weights cast on the graph, see [`Precision`]).
    pub fn forward(&self, batch: &HostBatch, device: &Device, precision: Precision) -> Tensor<2> {
        self.forward_probed(batch, device, precision, &[])
    }

    /// [`Net::forward`], with each transformer layer's largest attention logit for the lm task
    /// ([`LmTransformer::forward_observed`]; `None` for the other nets).
    pub fn forward_observed(
        &self,
        batch: &HostBatch,
        device: &Device,
        precision: Precision,
    ) -> (Tensor<2>, Option<Tensor<1>>) {
        self.forward_inner(batch, device, precision, &[])
    }

    /// [`Net::forward`] with probes added to a recurrent net's hidden states
    /// ([`RecurrentNet::forward_probed`]); an MLP ignores them.
    pub fn forward_probed(
        &self,
        batch: &HostBatch,
        device: &Device,
        precision: Precision,
        probes: &[Tensor<2>],
    ) -> Tensor<2> {
        self.forward_inner(batch, device, precision, probes).0
    }

    fn forward_inner(
        &self,
        batch: &HostBatch,
        device: &Device,
        precision: Precision,
        probes: &[Tensor<2>],
    ) -> (Tensor<2>, Option<Tensor<1>>) {
        let half = precision.cast_module(self);
        fn input<const D: usize>(batch: &HostBatch, device: &Device, p: Precision) -> Tensor<D> {
            let data = TensorData::new(batch.inputs.clone(), batch.shape.clone());
            p.cast_input(Tensor::from_data(data, device))
        }
        let (out, attention) = match half.as_ref().unwrap_or(self) {
            Net::Mlp(m) => (m.forward(input(batch, device, precision)), None),
            Net::Recurrent(r) => (
                r.forward_probed(input(batch, device, precision), probes),
                None,
            ),
            Net::Lm(lm) => {
                // The inputs are symbol indices, exact in f32.
                let ids: Vec<i64> = batch.inputs.iter().map(|&v| v as i64).collect();
                let ids = TensorData::new(ids, batch.shape.clone());
                let out = lm.forward_observed(Tensor::<2, Int>::from_data(ids, device));
                (out.logits, Some(out.attention_logit_max))
            }
        };
        if half.is_some() {
            (out.cast(DType::F32), attention.map(|a| a.cast(DType::F32)))
        } else {
            (out, attention)
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
