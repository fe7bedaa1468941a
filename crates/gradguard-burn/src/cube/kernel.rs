//! The fused statistics kernel: every block of many tensors in one launch.
//!
//! A cube reads one block of [`BLOCK`] values of one tensor ([`UNITS`] units, [`PER_UNIT`] values
//! each, strided so neighbouring units read neighbouring values), and writes the block's four
//! statistics — the same ones, in the same layout, as the tensor-op path of
//! [`crate::padded::Padded::statistics`]:
//!
//! - m = max |x| over the block's finite values;
//! - with u = m (at least f32's smallest normal; 1 for an all-zero block) and r = |x| / u ≤ 1,
//!   Σ r² and Σ r (sixteen values per unit in sequence, then a tree over the 256 units in
//!   shared memory);
//! - the count of non-finite values (|x| ≤ f32::MAX is false for NaN and ±inf alike).
//!
//! Scaling by the block's largest magnitude before squaring is LAPACK `nrm2`'s idea: a finite
//! f32 gradient never overflows (1e30² would), and no f64 is needed — WGSL and Metal have none.
//! Values are read in their own dtype (f32, f16, bf16) and widened to f32 in registers.
//!
//! In the *pair* form the kernel reads two sequences of tensors of the same lengths, a and b, and
//! writes the statistics of a and then of b − a per block (the update bound: the weights before
//! a step and the update the optimizer made).

use cubecl::prelude::*;

/// Values per block; a tensor's blocks never hold values of another.
pub const BLOCK: usize = 4096;
/// Units per cube.
pub const UNITS: usize = 256;
/// Values each unit reads.
pub const PER_UNIT: usize = BLOCK / UNITS;
/// Statistics per block and tensor sequence: max |x|, Σ r², Σ r, non-finite count.
pub const STATS: usize = 4;

/// Reads this unit's values of block `block` of whichever input holds it: `starts[i]` is the
/// first block of input i, `starts[n]` one past the last block.
#[cube]
fn load<F: Float>(
    inputs: &Sequence<OwnedTensor<F>>,
    starts: &Sequence<u32>,
    block: u32,
    values: &mut Array<f32>,
) {
    let n = comptime![inputs.len()];
    let unit = UNIT_POS_X as usize;
    #[unroll]
    for i in 0..n {
        let start = *starts.index(i);
        let end = *starts.index(comptime![i + 1]);
        if block >= start && block < end {
            let tensor = inputs.index(i).as_slice();
            let len = tensor.len();
            let base = (block - start) as usize * BLOCK;
            for j in 0..PER_UNIT {
                let at = base + j * UNITS + unit;
                if at < len {
                    values[j] = f32::cast_from(tensor[at]);
                }
            }
        }
    }
}

/// The block's four statistics from every unit's `values`, written by unit 0 at `out[at..at+4]`.
/// Every unit of the cube must call it (it synchronizes the cube).
#[cube]
fn reduce_block(
    values: &Array<f32>,
    shared_a: &mut Shared<[f32]>,
    shared_b: &mut Shared<[f32]>,
    out: &mut Tensor<f32>,
    at: usize,
) {
    let unit = UNIT_POS_X as usize;
    let mut largest = 0.0f32;
    let mut bad = 0.0f32;
    for j in 0..PER_UNIT {
        let magnitude = f32::abs(values[j]);
        if magnitude <= f32::MAX {
            largest = f32::max(largest, magnitude);
        } else {
            bad += 1.0;
        }
    }
    shared_a[unit] = largest;
    shared_b[unit] = bad;
    sync_cube();
    #[unroll]
    for level in 1..9 {
        let stride = comptime![UNITS >> level];
        if unit < stride {
            shared_a[unit] = f32::max(shared_a[unit], shared_a[unit + stride]);
            shared_b[unit] += shared_b[unit + stride];
        }
        sync_cube();
    }
    let m = shared_a[0];
    let bad_total = shared_b[0];
    sync_cube();

    let mut block_unit = f32::max(m, f32::MIN_POSITIVE);
    if m == 0.0 {
        block_unit = 1.0;
    }
    let inverse = 1.0 / block_unit;
    let mut s2 = 0.0f32;
    let mut s1 = 0.0f32;
    for j in 0..PER_UNIT {
        let magnitude = f32::abs(values[j]);
        if magnitude <= f32::MAX {
            let r = magnitude * inverse;
            s2 += r * r;
            s1 += r;
        }
    }
    shared_a[unit] = s2;
    shared_b[unit] = s1;
    sync_cube();
    #[unroll]
    for level in 1..9 {
        let stride = comptime![UNITS >> level];
        if unit < stride {
            shared_a[unit] += shared_a[unit + stride];
            shared_b[unit] += shared_b[unit + stride];
        }
        sync_cube();
    }
    if unit == 0 {
        out[at] = m;
        out[at + 1] = shared_a[0];
        out[at + 2] = shared_b[0];
        out[at + 3] = bad_total;
    }
    sync_cube();
}

/// The statistics of every block of `a` (and, with `pair`, of `b − a`), for the blocks
/// `first_block ..` of the whole set that this launch covers.
#[cube(launch)]
pub fn block_statistics<F: Float>(
    a: &Sequence<OwnedTensor<F>>,
    b: &Sequence<OwnedTensor<F>>,
    starts: &Sequence<u32>,
    out: &mut Tensor<f32>,
    first_block: u32,
    #[comptime] pair: bool,
    #[define(F)] _dtype: ElemType,
) {
    let n = comptime![a.len()];
    let block = CUBE_POS as u32;
    if block >= *starts.index(n) {
        terminate!();
    }
    let mut shared_a = Shared::<[f32]>::new_slice(UNITS);
    let mut shared_b = Shared::<[f32]>::new_slice(UNITS);
    let per_block = comptime![if pair { 2 * STATS } else { STATS }];
    let at = (first_block + block) as usize * per_block;

    let mut values = Array::<f32>::new(PER_UNIT);
    load::<F>(a, starts, block, &mut values);
    if pair {
        let mut after = Array::<f32>::new(PER_UNIT);
        load::<F>(b, starts, block, &mut after);
        for j in 0..PER_UNIT {
            after[j] -= values[j];
        }
        reduce_block(&values, &mut shared_a, &mut shared_b, out, at);
        reduce_block(&after, &mut shared_a, &mut shared_b, out, at + STATS);
    } else {
        reduce_block(&values, &mut shared_a, &mut shared_b, out, at);
    }
}
