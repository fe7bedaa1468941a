//! The loss a run minimizes, its evaluation on held-out data, and the weight constraints applied
//! after each step.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::models::Net;
use crate::precision::Precision;
use crate::tasks::{HostBatch, Targets};

/// The data loss of `net` on `batch`: cross-entropy for classes, mean squared error for values,
/// computed in f32 from the network's outputs in `precision`.
pub fn data_loss(net: &Net, batch: &HostBatch, device: &Device, precision: Precision) -> Tensor<1> {
    loss_of(net.forward(batch, device, precision), batch, device)
}

/// The data loss of outputs `out` (f32) against `batch`'s targets.
pub(crate) fn loss_of(out: Tensor<2>, batch: &HostBatch, device: &Device) -> Tensor<1> {
    match &batch.targets {
        Targets::Classes(labels) => {
            let y = Tensor::<1, Int>::from_data(
                TensorData::new(labels.clone(), [labels.len()]),
                device,
            );
            CrossEntropyLossConfig::new().init(device).forward(out, y)
        }
        Targets::Values(values) => {
            let y = Tensor::<1>::from_data(TensorData::new(values.clone(), [values.len()]), device);
            let [n, _] = out.dims();
            (out.reshape([n]) - y).powi_scalar(2).mean()
        }
    }
}

/// The log-partition function of each row of `logits` `[n, V]`: `log Z = log Σ_j exp(z_j)`,
/// computed as `m + log Σ_j exp(z_j − m)` with `m` the row's (detached) maximum, exact and
/// finite for any finite logits. A softmax is unchanged when its logits shift, so nothing in the
/// cross-entropy pins `log Z`: Wortsman et al. 2023 (§3.2) show it drifting far from 0 at high
/// learning rates before the loss diverges.
pub fn log_partition(logits: Tensor<2>) -> Tensor<1> {
    let [n, _] = logits.dims();
    let m = logits.clone().detach().max_dim(1);
    ((logits - m.clone()).exp().sum_dim(1).log() + m).reshape([n])
}

/// The auxiliary z-loss `C · mean_i (log Z_i)²` of PaLM (Chowdhery et al. 2022, §5), which keeps
/// `log Z` near 0. Its gradient with respect to logit `z_ij` is `2C/n · log Z_i · softmax(z_i)_j`.
pub fn z_loss(log_z: Tensor<1>, coefficient: f64) -> Tensor<1> {
    log_z.powi_scalar(2).mean() * coefficient
}

/// `λ/2 · Σ‖W‖²` over the weight matrices (biases and norm scales excluded).
pub fn l2_penalty(net: &Net, lambda: f64) -> Option<Tensor<1>> {
    struct SumOfSquares(Option<Tensor<1>>);
    impl ModuleVisitor for SumOfSquares {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if D == 2 {
                let s = param.val().powi_scalar(2).sum();
                self.0 = Some(match self.0.take() {
                    Some(acc) => acc + s,
                    None => s,
                });
            }
        }
    }
    let mut sum = SumOfSquares(None);
    net.visit(&mut sum);
    sum.0.map(|s| s * (lambda / 2.0))
}

/// What a held-out evaluation measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// The mean loss (`None` when not finite).
    pub loss: Option<f64>,
    /// The accuracy, for classification (NaN outputs count as wrong).
    pub accuracy: Option<f64>,
}

/// Evaluates `net` on `batch` in inference mode (batch norm uses its running statistics), in
/// the run's `precision`.
pub fn evaluate(net: &Net, batch: &HostBatch, device: &Device, precision: Precision) -> Evaluation {
    let net = net.valid();
    let device = device.clone().inner();
    let loss = f64::from(data_loss(&net, batch, &device, precision).into_scalar::<f32>());
    let accuracy = match &batch.targets {
        Targets::Values(_) => None,
        Targets::Classes(labels) => {
            let out: Vec<f32> = net
                .forward(batch, &device, precision)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap_or_default();
            let classes = out.len() / labels.len().max(1);
            let correct = out
                .chunks(classes.max(1))
                .zip(labels)
                .filter(|(row, label)| {
                    row.iter().all(|v| v.is_finite())
                        && row
                            .iter()
                            .enumerate()
                            .max_by(|a, b| a.1.total_cmp(b.1))
                            .map(|(i, _)| i as i64)
                            == Some(**label)
                })
                .count();
            Some(correct as f64 / labels.len().max(1) as f64)
        }
    };
    Evaluation {
        loss: loss.is_finite().then_some(loss),
        accuracy,
    }
}

/// Scales every weight matrix by `1 − η λ` (decoupled weight decay) and then caps each unit's
/// incoming weight vector — a column of Burn's `[fan_in, fan_out]` weight — at L2 norm `max_norm`.
pub fn constrain(net: Net, decay_factor: Option<f64>, max_norm: Option<f64>) -> Net {
    struct Constrain {
        decay: Option<f64>,
        max_norm: Option<f64>,
    }
    impl ModuleMapper for Constrain {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if D != 2 {
                return param;
            }
            let (decay, max_norm) = (self.decay, self.max_norm);
            param.map(|w| {
                // Computed off the graph, then a fresh trainable leaf again.
                let mut w = w.inner();
                if let Some(f) = decay {
                    w = w * f;
                }
                if let Some(c) = max_norm {
                    let norms = w.clone().powi_scalar(2).sum_dim(0).sqrt();
                    let factor = norms.clamp_min(1e-12).recip().mul_scalar(c).clamp_max(1.0);
                    w = w * factor;
                }
                w.autodiff().require_grad()
            })
        }
    }
    if decay_factor.is_none() && max_norm.is_none() {
        return net;
    }
    net.map(&mut Constrain {
        decay: decay_factor,
        max_norm,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_partition_and_z_loss_gradient_match_their_closed_forms() {
        let device = Device::flex().autodiff();
        let rows: [[f32; 4]; 2] = [[0.5, -1.0, 2.0, 0.0], [30.0, 31.0, 29.5, -3.0]];
        let logits = Tensor::<2>::from_data(TensorData::from(rows), &device).require_grad();
        let c = 1e-2;
        let log_z = log_partition(logits.clone());
        let loss = z_loss(log_z.clone(), c);
        let grads = loss.backward();
        let grad: Vec<f32> = logits
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let got_z: Vec<f32> = log_z.into_data().try_to_vec::<f32>().unwrap();
        for (i, row) in rows.iter().enumerate() {
            let z: f64 = row.iter().map(|&v| f64::from(v).exp()).sum::<f64>().ln();
            assert!(
                (f64::from(got_z[i]) - z).abs() < 1e-5,
                "{} vs {z}",
                got_z[i]
            );
            for (j, &v) in row.iter().enumerate() {
                let softmax = (f64::from(v) - z).exp();
                let expected = 2.0 * c / rows.len() as f64 * z * softmax;
                let g = f64::from(grad[i * 4 + j]);
                assert!(
                    (g - expected).abs() < 1e-6 + 1e-4 * expected.abs(),
                    "{g} vs {expected}"
                );
            }
        }
    }
}
