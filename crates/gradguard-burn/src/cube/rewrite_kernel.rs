//! The fused rewrite kernel: many tensors changed in one launch and written into one buffer —
//! a clip applied to the gradients, or the update bound's scaling applied to the weights.
//!
//! Per value x (read in its dtype, computed in f32, written in the output's dtype):
//! 1. with `zero_non_finite`, NaN and ±inf become 0;
//! 2. x ← min(max(x, −limit), limit) where x is not NaN: NaN stays NaN (a GPU `clamp` of NaN is
//!    unspecified); `limit` = +inf leaves x as it is;
//! 3. with an origin a (the weights before a step, `from_origin`): a + f·(x − a), else f·x — f one
//!    factor per unit of the tensor (a tensor scaled as a whole is one unit; without an origin
//!    f = 1 leaves x bit for bit).
//!
//! A cube writes one block of [`BLOCK`] values of one tensor (each of its [`UNITS`] threads
//! [`PER_UNIT`] values, strided so neighbouring threads write neighbouring values) into the
//! group's output buffer at the tensor's offset — the tensor-op path's arithmetic, in one pass.

use cubecl::prelude::*;

use super::kernel::BLOCK;

/// Units per cube.
pub const UNITS: usize = 256;
/// Values each unit writes.
pub const PER_UNIT: usize = BLOCK / UNITS;

/// Input i's blocks are `starts[i] .. starts[i + 1]`; its values go to `out[offsets[i] ..]`; its
/// value at flat index k belongs to unit `k % cols[i]` when `columns[i]` is 1, else `k / cols[i]`,
/// whose factor is `factors[first_factor[i] + unit]`. `origin` is read only with `from_origin`
/// (then it holds tensors of the lengths of `values`; else it may be empty).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn rewrite<F: Float, O: Float>(
    origin: &Sequence<OwnedTensor<F>>,
    values: &Sequence<OwnedTensor<F>>,
    factors: &Tensor<f32>,
    out: &mut Tensor<O>,
    starts: &Sequence<u32>,
    offsets: &Sequence<u32>,
    first_factor: &Sequence<u32>,
    cols: &Sequence<u32>,
    columns: &Sequence<u32>,
    limit: f32,
    #[comptime] from_origin: bool,
    #[comptime] zero_non_finite: bool,
    #[define(F, O)] _dtypes: [ElemType; 2],
) {
    let n = comptime![values.len()];
    let block = CUBE_POS as u32;
    if block >= *starts.index(n) {
        terminate!();
    }
    let unit = UNIT_POS_X as usize;
    #[unroll]
    for i in 0..n {
        let start = *starts.index(i);
        let end = *starts.index(comptime![i + 1]);
        if block >= start && block < end {
            let v = values.index(i).as_slice();
            let len = v.len();
            let base = (block - start) as usize * BLOCK;
            let width = *cols.index(i) as usize;
            let by_column = *columns.index(i) == 1;
            let first = *first_factor.index(i) as usize;
            let offset = *offsets.index(i) as usize;
            for j in 0..PER_UNIT {
                let at = base + j * UNITS + unit;
                if at < len {
                    let mut owner = at / width;
                    if by_column {
                        owner = at % width;
                    }
                    let mut x = f32::cast_from(v[at]);
                    // |x| ≤ f32::MAX is false for NaN and ±inf alike.
                    if zero_non_finite && !(f32::abs(x) <= f32::MAX) {
                        x = 0.0;
                    }
                    // NaN is tested for, not left to the comparisons: through Mesa's OpenGL
                    // shader compiler they alone turned NaN into a number (measured).
                    if !x.is_nan() {
                        if x > limit {
                            x = limit;
                        } else if x < -limit {
                            x = -limit;
                        }
                    }
                    let f = factors[first + owner];
                    if from_origin {
                        let a = f32::cast_from(origin.index(i).as_slice()[at]);
                        out[offset + at] = O::cast_from(a + (x - a) * f);
                    } else {
                        out[offset + at] = O::cast_from(x * f);
                    }
                }
            }
        }
    }
}
