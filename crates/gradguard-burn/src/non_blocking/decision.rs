//! A step's decision computed on its device from the queued block statistics: nothing is read.
//! On a CubeCL device one kernel computes it (`cube::decide`, the arithmetic below); elsewhere
//! Burn's tensor ops do, one launch per operation where they launch kernels.
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
    /// `[factor, accept]` as one `[2]` tensor, where the decision kernel made them so.
    pub control: Option<Tensor<1>>,
}

/// A step's block statistics, read as the rules ask: each norm computed once, and only if a rule
/// uses it (every operation queued is a kernel launch).
struct Norms {
    m: Tensor<1>,
    s2: Tensor<1>,
    s1: Tensor<1>,
    computed: Vec<(NormType, Tensor<1>)>,
}

impl Norms {
    fn of(stats: &Tensor<1>) -> Self {
        let blocks = stats.dims()[0] / PER_BLOCK;
        let stats = stats.clone().reshape([blocks, PER_BLOCK]);
        let column = |k: usize| stats.clone().slice([0..blocks, k..k + 1]).reshape([blocks]);
        Norms {
            m: column(0),
            s2: column(1),
            s1: column(2),
            computed: Vec::new(),
        }
    }

    /// The count of non-finite values.
    fn non_finite(stats: &Tensor<1>) -> Tensor<1> {
        let blocks = stats.dims()[0] / PER_BLOCK;
        let stats = stats.clone().reshape([blocks, PER_BLOCK]);
        stats.slice([0..blocks, 3..4]).sum()
    }

    /// ‖g‖ for p = 1, 2 or ∞ (the plan holds no other: `DeviceRule::norm_on_device`).
    fn get(&mut self, norm_type: NormType) -> Tensor<1> {
        if let Some((_, n)) = self.computed.iter().find(|(t, _)| *t == norm_type) {
            return n.clone();
        }
        let unit = || self.m.clone().clamp_min(f32::MIN_POSITIVE);
        let top = || unit().max();
        let norm = match norm_type {
            NormType::Inf => self.m.clone().max(),
            NormType::L1 => (unit() / top() * self.s1.clone()).sum() * top(),
            _ => ((unit() / top()).square() * self.s2.clone()).sum().sqrt() * top(),
        };
        self.computed.push((norm_type, norm.clone()));
        norm
    }
}

/// The decision of `plan` for a step with block statistics `stats` (`None`: no gradient has
/// values) and `loss` (`[1]`, f32), on `device`.
pub(crate) fn decide(
    plan: &DevicePlan,
    stats: Option<Tensor<1>>,
    loss: Option<Tensor<1>>,
    device: &Device,
) -> Decision {
    // On a CubeCL device one kernel decides (`cube::decide`), instead of a launch per operation.
    #[cfg(feature = "cube")]
    if let Some(control) = stats
        .as_ref()
        .and_then(|s| crate::cube::decide::decide(plan, s, loss.as_ref()))
    {
        return Decision {
            factor: control.clone().slice(0..1),
            accept: control.clone().slice(1..2),
            control: Some(control),
        };
    }
    let ones = || Tensor::<1>::ones([1], device);
    let mut accept = ones();
    let mut factor = ones();
    if let Some(stats) = stats {
        accept = accept * Norms::non_finite(&stats).equal_elem(0.0).float();
        let mut norms = Norms::of(&stats);
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
        accept = accept * loss.is_finite().float();
    }
    Decision {
        accept,
        factor,
        control: None,
    }
}
