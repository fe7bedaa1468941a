//! The fused statistics kernel: every block of many tensors in one launch.
//!
//! A cube reads one block of [`BLOCK`] values of one tensor ([`UNITS`] units, [`PER_UNIT`] values
//! each, strided so neighbouring units read neighbouring values), and writes the block's four
//! statistics — the same ones, in the same layout, as the tensor-op path of
//! [`crate::padded::Padded::statistics`]:
//!
//! - m = max |x| over the block's finite values;
//! - with u = m (at least f32's smallest normal; 1 for an all-zero block) and r = |x| / u ≤ 1,
//!   Σ r² and Σ r: each unit finds the largest magnitude of its sixteen values, then sums them
//!   relative to it (times its reciprocal: one division per unit), and the 256 partials are
//!   folded, rescaling whichever has the smaller magnitude (256 → 16 → 1 in shared memory);
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
            // Not unrolled: the loop is repeated for every input of the group already.
            for j in 0..PER_UNIT {
                let at = base + j * UNITS + unit;
                if at < len {
                    values[j] = f32::cast_from(tensor[at]);
                }
            }
        }
    }
}

/// Folds `(m2, s2_2, s1_2)` — a largest magnitude and the sums of (|x|/m2)² and |x|/m2 — into
/// the partial `acc = [m, s2, s1]`, rescaling whichever side has the smaller largest magnitude
/// (LAPACK `nrm2`'s update, for partial sums).
#[cube]
fn fold(acc: &mut Array<f32>, m2: f32, s2_2: f32, s1_2: f32) {
    let m = acc[0];
    if m2 > m {
        let r = m / m2;
        acc[1] = acc[1] * r * r + s2_2;
        acc[2] = acc[2] * r + s1_2;
        acc[0] = m2;
    } else if m2 > 0.0 {
        let r = m2 / m;
        acc[1] += s2_2 * r * r;
        acc[2] += s1_2 * r;
    }
}

/// Level-2 partial sums: this many units each fold this many of the units' partials.
const FOLDERS: usize = 16;

/// The block's four statistics from every unit's `values`, written by unit 0 at `out[at..at+4]`.
/// Every unit of the cube must call it (it synchronizes the cube three times: a tree of shared
/// partials, 256 → 16 → 1, rather than one barrier per level, which is what costs most on a
/// CPU-emulated device such as llvmpipe).
#[cube]
fn reduce_block(values: &Array<f32>, out: &mut Tensor<f32>, at: usize) {
    let unit = UNIT_POS_X as usize;
    // This unit's largest finite magnitude and its non-finite count, then its sums relative to
    // that magnitude: one division per unit (a reciprocal), none per value — except where the
    // magnitude is subnormal and its reciprocal would overflow.
    let mut m = 0.0f32;
    let mut bad = 0.0f32;
    #[unroll]
    for j in 0..PER_UNIT {
        let magnitude = f32::abs(values[j]);
        if magnitude <= f32::MAX {
            m = f32::max(m, magnitude);
        } else {
            bad += 1.0;
        }
    }
    let mut acc = Array::<f32>::new(3usize);
    acc[0] = m;
    acc[1] = 0.0;
    acc[2] = 0.0;
    if m >= f32::MIN_POSITIVE {
        let inv = 1.0 / m;
        #[unroll]
        for j in 0..PER_UNIT {
            let magnitude = f32::abs(values[j]);
            if magnitude <= f32::MAX {
                let r = magnitude * inv;
                acc[1] += r * r;
                acc[2] += r;
            }
        }
    } else if m > 0.0 {
        #[unroll]
        for j in 0..PER_UNIT {
            let magnitude = f32::abs(values[j]);
            if magnitude <= f32::MAX {
                let r = magnitude / m;
                acc[1] += r * r;
                acc[2] += r;
            }
        }
    }
    let mut shared_m = Shared::<[f32]>::new_slice(UNITS);
    let mut shared_s2 = Shared::<[f32]>::new_slice(UNITS);
    let mut shared_s1 = Shared::<[f32]>::new_slice(UNITS);
    let mut shared_bad = Shared::<[f32]>::new_slice(UNITS);
    shared_m[unit] = acc[0];
    shared_s2[unit] = acc[1];
    shared_s1[unit] = acc[2];
    shared_bad[unit] = bad;
    sync_cube();

    let mut folded_m = Shared::<[f32]>::new_slice(FOLDERS);
    let mut folded_s2 = Shared::<[f32]>::new_slice(FOLDERS);
    let mut folded_s1 = Shared::<[f32]>::new_slice(FOLDERS);
    let mut folded_bad = Shared::<[f32]>::new_slice(FOLDERS);
    if unit < FOLDERS {
        let mut part = Array::<f32>::new(3usize);
        let mut part_bad = 0.0f32;
        for k in 0..UNITS / FOLDERS {
            let i = unit * (UNITS / FOLDERS) + k;
            fold(&mut part, shared_m[i], shared_s2[i], shared_s1[i]);
            part_bad += shared_bad[i];
        }
        folded_m[unit] = part[0];
        folded_s2[unit] = part[1];
        folded_s1[unit] = part[2];
        folded_bad[unit] = part_bad;
    }
    sync_cube();

    if unit == 0 {
        let mut total = Array::<f32>::new(3usize);
        let mut bb = 0.0f32;
        for k in 0..FOLDERS {
            fold(&mut total, folded_m[k], folded_s2[k], folded_s1[k]);
            bb += folded_bad[k];
        }
        let (bm, b2, b1) = (total[0], total[1], total[2]);
        // Sums relative to the block's unit u = max(m, f32's smallest normal), 1 for an all-zero
        // block — what the host multiplies back by (`padded::block_unit`).
        let mut rel = 0.0f32;
        if bm > 0.0 {
            rel = bm / f32::max(bm, f32::MIN_POSITIVE);
        }
        out[at] = bm;
        out[at + 1] = b2 * rel * rel;
        out[at + 2] = b1 * rel;
        out[at + 3] = bb;
    }
    // The shared partials are reused by the next call (the pair form's second sequence).
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
    let per_block = comptime![if pair { 2 * STATS } else { STATS }];
    let at = (first_block + block) as usize * per_block;

    let mut values = Array::<f32>::new(PER_UNIT);
    load::<F>(a, starts, block, &mut values);
    if pair {
        let mut after = Array::<f32>::new(PER_UNIT);
        load::<F>(b, starts, block, &mut after);
        #[unroll]
        for j in 0..PER_UNIT {
            after[j] -= values[j];
        }
        reduce_block(&values, out, at);
        reduce_block(&after, out, at + STATS);
    } else {
        reduce_block(&values, out, at);
    }
}
