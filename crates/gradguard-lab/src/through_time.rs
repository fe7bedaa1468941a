//! Gradients through time: ‖∂L/∂h_t‖ for every time step t of a recurrent net.
//!
//! Backpropagation through time multiplies the gradient by one Jacobian ∂h_t/∂h_{t−1} per step,
//! so over a long sequence it grows or shrinks geometrically — the recurrent analogue of the
//! per-layer profile of a deep MLP (Pascanu, Mikolov & Bengio 2013, §2). Autodiff keeps no
//! gradient for intermediate values, so a zero probe is added to each hidden state and its
//! gradient read instead (∂L/∂p_t = ∂L/∂h_t).

use burn::tensor::{Device, Tensor};

use crate::models::Net;
use crate::objective::loss_of;
use crate::precision::Precision;
use crate::tasks::HostBatch;

/// ‖∂L/∂h_t‖ (over the batch) for t = 1 … T of `net` on `batch`, on an autodiff `device`;
/// `None` for a network without time steps (an MLP). The backward pass is a graph of its own:
/// the network's weights and training are untouched. `None` entries are non-finite norms.
pub fn hidden_gradient_norms(
    net: &Net,
    batch: &HostBatch,
    device: &Device,
    precision: Precision,
) -> Option<Vec<Option<f64>>> {
    let Net::Recurrent(rnn) = net else {
        return None;
    };
    let (n, steps) = (batch.shape[0], batch.shape[1]);
    let probes: Vec<Tensor<2>> = (0..steps)
        .map(|_| Tensor::<2>::zeros([n, rnn.hidden_size()], device).require_grad())
        .collect();
    let out = net.forward_probed(batch, device, precision, &probes);
    let grads = loss_of(out, batch, device).backward();
    Some(
        probes
            .iter()
            .map(|p| {
                let g = p.grad(&grads)?;
                let norm = f64::from(g.square().sum().sqrt().into_scalar::<f32>());
                norm.is_finite().then_some(norm)
            })
            .collect(),
    )
}
