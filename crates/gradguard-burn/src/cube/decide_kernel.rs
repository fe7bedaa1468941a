//! The non-blocking step's decision as one kernel: from the block statistics of every gradient
//! (the layout of [`super::kernel`]: per block max |x|, Σ r², Σ r, the non-finite count) to
//! `[factor, accept]`, in one cube. The arithmetic of `non_blocking::decision` (Burn's tensor
//! ops, one launch per operation): with u_b = max(m_b, f32's smallest normal) and U = max_b u_b,
//! ‖g‖₂ = U·√(Σ_b (u_b/U)²·Σr²_b), ‖g‖₁ = U·Σ_b (u_b/U)·Σr_b, ‖g‖∞ = max_b m_b; accept when no
//! value is non-finite, the loss is finite and no skip rule fires; each clip multiplies the
//! factor by `min(1, (1/(‖g‖·factor + ε))·max_norm)` where that norm is finite.

use cubecl::prelude::*;

use super::kernel::{STATS, cube_max, cube_sums};

/// A rule of [`decide_step`]: clip by the global norm.
pub const CLIP: u32 = 0;
/// A rule of [`decide_step`]: skip above a global norm.
pub const SKIP: u32 = 1;
/// [`decide_step`]'s norms: ‖g‖₁, ‖g‖₂, ‖g‖∞.
pub const L1: u32 = 1;
/// See [`L1`].
pub const L2: u32 = 2;
/// See [`L1`].
pub const INF: u32 = 3;

/// Rule r is `kinds[r]` ([`CLIP`] or [`SKIP`]) on norm `norms[r]` with `values[r]` (the clip's
/// largest norm, the skip's limit); `eps` the clips' ε. Writes `out = [factor, accept]`; with
/// `has_loss`, a non-finite `loss[0]` skips the step.
#[cube(launch)]
// `has_loss` is known when the kernel is compiled: its branch stays apart from the runtime test.
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
pub fn decide_step(
    stats: &Tensor<f32>,
    loss: &Tensor<f32>,
    out: &mut Tensor<f32>,
    kinds: &Sequence<u32>,
    norms: &Sequence<u32>,
    values: &Sequence<f32>,
    eps: f32,
    #[comptime] has_loss: bool,
    #[comptime] units: usize,
) {
    let rules = comptime![kinds.len()];
    let unit = UNIT_POS_X as usize;
    let blocks = stats.len() / STATS;
    let mut top = 0.0f32;
    let mut largest = 0.0f32;
    let mut acc = Array::<f32>::new(3usize);
    acc[0] = 0.0;
    acc[1] = 0.0;
    acc[2] = 0.0;
    let mut b = unit;
    while b < blocks {
        let m = stats[b * STATS];
        top = f32::max(top, f32::max(m, f32::MIN_POSITIVE));
        largest = f32::max(largest, m);
        acc[2] += stats[b * STATS + 3];
        b += units;
    }
    top = cube_max(top, units);
    largest = cube_max(largest, units);
    b = unit;
    while b < blocks {
        let u = f32::max(stats[b * STATS], f32::MIN_POSITIVE) / top;
        acc[0] += (u * u) * stats[b * STATS + 1];
        acc[1] += u * stats[b * STATS + 2];
        b += units;
    }
    cube_sums(&mut acc, 3usize, units);
    if unit == 0 {
        let l2 = f32::sqrt(acc[0]) * top;
        let l1 = acc[1] * top;
        let mut accept = 1.0f32;
        if acc[2] != 0.0 {
            accept = 0.0;
        }
        let mut factor = 1.0f32;
        #[unroll]
        for r in 0..rules {
            let p = *norms.index(r);
            let mut norm = l2;
            if p == L1 {
                norm = l1;
            } else if p == INF {
                norm = largest;
            }
            norm *= factor;
            let value = *values.index(r);
            if *kinds.index(r) == CLIP {
                let coefficient = f32::min((1.0 / (norm + eps)) * value, 1.0);
                if f32::abs(norm) <= f32::MAX {
                    factor *= coefficient;
                }
            } else if !(norm <= value) {
                // NaN is not ≤ the limit: it skips, as on the host.
                accept = 0.0;
            }
        }
        if has_loss {
            if !(f32::abs(loss[0]) <= f32::MAX) {
                accept = 0.0;
            }
        }
        out[0] = factor;
        out[1] = accept;
    }
}
