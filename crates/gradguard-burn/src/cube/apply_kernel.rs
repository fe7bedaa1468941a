//! The fused scaling kernel: w ← w_before + f·(w_after − w_before) for many tensors in one
//! launch, f one factor per unit of each tensor (a tensor scaled as a whole is one unit).
//!
//! A cube writes one block of [`BLOCK`] values of one tensor (each of its [`UNITS`] threads
//! [`PER_UNIT`] values, strided so neighbouring threads write neighbouring values) into the
//! group's output buffer at the tensor's offset. The arithmetic is the tensor-op path's, in f32:
//! the update b − a, times the factor, plus a — values read in their own dtype and written back
//! in it.

use cubecl::prelude::*;

use super::kernel::{BLOCK, PER_UNIT, UNITS};

/// Input i's blocks are `starts[i] .. starts[i + 1]`; its values go to `out[offsets[i] ..]`; its
/// value at flat index k belongs to unit `k % cols[i]` when `columns[i]` is 1, else `k / cols[i]`,
/// whose factor is `factors[first_factor[i] + unit]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn apply_scales<F: Float>(
    before: &Sequence<OwnedTensor<F>>,
    after: &Sequence<OwnedTensor<F>>,
    factors: &Tensor<f32>,
    out: &mut Tensor<F>,
    starts: &Sequence<u32>,
    offsets: &Sequence<u32>,
    first_factor: &Sequence<u32>,
    cols: &Sequence<u32>,
    columns: &Sequence<u32>,
    #[define(F)] _dtype: ElemType,
) {
    let n = comptime![before.len()];
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
            let a = before.index(i).as_slice();
            let b = after.index(i).as_slice();
            let len = a.len();
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
                    let x = f32::cast_from(a[at]);
                    let update = f32::cast_from(b[at]) - x;
                    out[offset + at] = F::cast_from(x + update * factors[first + owner]);
                }
            }
        }
    }
}
