//! A step's decision computed on its device from the queued block statistics, by Burn's tensor
//! ops: nothing is read.
//!
//! From block b's largest magnitude m_b, Σr² and Σr (r = |x|/u_b, u_b = max(m_b, f32's smallest
//! normal)) and non-finite count c_b ([`crate::padded`]), with U = max_b u_b:
//! ‖g‖₂ = U·√(Σ_b (u_b/U)²·Σr²_b), ‖g‖₁ = U·Σ_b (u_b/U)·Σr_b, ‖g‖∞ = max_b m_b — scaled by the
//! largest unit first, so no f32 sum overflows where the host's f64 would not. The step is
//! accepted when Σ c_b = 0, the loss is finite and no skip rule fires; each clip multiplies the
//! factor by PyTorch's `min(1, max / (‖g‖ + 1e-6))` on the norm the rules before it left
//! ([`gradguard::rules::clip_coefficient`]; a non-finite norm changes nothing, as on the host).

use burn::tensor::{Device, Tensor};
use gradguard::{DevicePlan, DeviceRule, NormType};

use crate::padded::PER_BLOCK;

/// The decision: both `[1]` f32 tensors on the step's device.
#[derive(Debug, Clone)]
pub(crate) struct Decision {
    /// 1 to apply the step, 0 to skip it.
    pub accept: Tensor<1>,
    /// The factor every gradient is multiplied by.
    pub factor: Tensor<1>,
}

/// The step's three norms, from its block statistics.
struct Norms {
    l1: Tensor<1>,
    l2: Tensor<1>,
    inf: Tensor<1>,
    non_finite: Tensor<1>,
}

impl Norms {
    fn of(stats: Tensor<1>) -> Self {
        let blocks = stats.dims()[0] / PER_BLOCK;
        let stats = stats.reshape([blocks, PER_BLOCK]);
        let column = |k: usize| stats.clone().slice([0..blocks, k..k + 1]).reshape([blocks]);
        let (m, s2, s1, count) = (column(0), column(1), column(2), column(3));
        let unit = m.clone().clamp_min(f32::MIN_POSITIVE);
        let top = unit.clone().max();
        let relative = unit / top.clone();
        Norms {
            l2: (relative.clone().square() * s2).sum().sqrt() * top.clone(),
            l1: (relative * s1).sum() * top,
            inf: m.max(),
            non_finite: count.sum(),
        }
    }

    fn get(&self, norm_type: NormType) -> Tensor<1> {
        match norm_type {
            NormType::L1 => self.l1.clone(),
            NormType::Inf => self.inf.clone(),
            // The plan holds only p ∈ {1, 2, ∞} (`DeviceRule::norm_on_device`).
            _ => self.l2.clone(),
        }
    }
}

/// The decision of `plan` for a step with block statistics `stats` (`None`: no gradient has
/// values) and `loss`, on `device`.
pub(crate) fn decide(
    plan: &DevicePlan,
    stats: Option<Tensor<1>>,
    loss: Option<Tensor<1>>,
    device: &Device,
) -> Decision {
    let ones = || Tensor::<1>::ones([1], device);
    let mut accept = ones();
    let mut factor = ones();
    if let Some(stats) = stats {
        let norms = Norms::of(stats);
        accept = accept * norms.non_finite.clone().equal_elem(0.0).float();
        for rule in &plan.rules {
            // The norm as the rules before this one left the gradients.
            let norm = norms.get(rule.norm_type()) * factor.clone();
            match *rule {
                DeviceRule::ClipGlobalNorm { max_norm, .. } => {
                    let coefficient = norm
                        .clone()
                        .add_scalar(gradguard::rules::NORM_EPS)
                        .recip()
                        .mul_scalar(max_norm)
                        .clamp_max(1.0);
                    let keep = norm.is_finite().bool_not();
                    factor = factor * coefficient.mask_fill(keep, 1.0);
                }
                DeviceRule::SkipAbove { limit, .. } => {
                    // NaN is not ≤ limit: it skips, as on the host.
                    accept = accept * norm.lower_equal_elem(limit).float();
                }
            }
        }
    }
    if let Some(loss) = loss {
        let loss = loss.reshape([1]);
        let loss = if loss.dtype() == burn::tensor::DType::F32 {
            loss
        } else {
            loss.cast(burn::tensor::DType::F32)
        };
        accept = accept * loss.is_finite().float();
    }
    Decision { accept, factor }
}
