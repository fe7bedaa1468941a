//! The fused statistics kernel: every block of many tensors in one launch.
//!
//! A cube of `units` units (one plane: see `units_per_cube`) reads one block of [`BLOCK`]
//! values of one tensor — unit k the vectors k, k + units, … of the block, `vector` values each
//! (4, 2 or 1: the widest that divides every tensor of the launch), so neighbouring units read
//! neighbouring bytes — and writes the block's four statistics, the same ones, in the same layout,
//! as the tensor-op path of [`crate::padded::Padded::statistics`]:
//!
//! - m = max |x| over the block's finite values;
//! - with u = m (at least f32's smallest normal; 1 for an all-zero block) and r = |x| / u ≤ 1,
//!   Σ r² and Σ r;
//! - the count of non-finite values (|x| ≤ f32::MAX is false for NaN and ±inf alike).
//!
//! One pass takes m, Σ x², Σ |x| and the count; the sums are then divided by u², u once per
//! block. That is exact enough wherever m lies within [2⁻⁴⁰, 2⁴⁰] ([`DIRECT_MIN`]): nothing
//! overflows and the squares that underflow are below 2⁻³⁴ of m². A block outside that range
//! (gradients near 1e30, or subnormal ones) is read a second time for Σ (|x|·(1/u))², Σ |x|·(1/u),
//! relative to its largest magnitude — LAPACK `nrm2`'s idea: a finite f32 gradient never
//! overflows and no f64 is needed (WGSL and Metal have none). No division per value either way.
//! The units' partials meet in shared memory: two barriers per block.
//!
//! Values are read in their own dtype (f32, f16, bf16) and widened to f32 in registers.
//!
//! In the *pair* form the kernel reads two sequences of tensors of the same lengths, a and b, and
//! writes the statistics of a and then of b − a per block (the update bound: the weights before
//! a step and the update the optimizer made).

use cubecl::prelude::*;

/// Values per block; a tensor's blocks never hold values of another.
pub const BLOCK: usize = 4096;
/// Statistics per block and tensor sequence: max |x|, Σ r², Σ r, non-finite count.
pub const STATS: usize = 4;

/// Folds one value of sequence `q` into this unit's partials: directly (`scaled` false) the
/// largest finite magnitude into `largest[q]` and Σ x², Σ |x| and the non-finite count into
/// `sums[3q..3q + 3]`; scaled, Σ r² and Σ r with r = |x|·`inv` into `sums[3q..3q + 2]`.
#[cube]
pub(super) fn take(
    x: f32,
    inv: f32,
    largest: &mut Array<f32>,
    sums: &mut Array<f32>,
    #[comptime] q: usize,
    #[comptime] scaled: bool,
) {
    let magnitude = f32::abs(x);
    let k = comptime![3 * q];
    if magnitude <= f32::MAX {
        if scaled {
            let r = magnitude * inv;
            sums[k] += r * r;
            sums[k + 1] += r;
        } else {
            largest[q] = f32::max(largest[q], magnitude);
            sums[k] += magnitude * magnitude;
            sums[k + 1] += magnitude;
        }
    } else if !scaled {
        sums[k + 2] += 1.0;
    }
}

/// One pass over this unit's values of block `block` of whichever input holds it
/// (`starts[i]` is the first block of input i, `starts[n]` one past the last block): with
/// `pair`, also over b − a; the partials as [`take`] keeps them. `units` and `vector` are powers
/// of two, so a block is a whole number of rounds.
#[cube]
#[allow(clippy::too_many_arguments)]
fn pass<F: Float, N: Size>(
    a: &Sequence<OwnedTensor<Vector<F, N>>>,
    b: &Sequence<OwnedTensor<Vector<F, N>>>,
    starts: &Sequence<u32>,
    block: u32,
    inv: &Array<f32>,
    largest: &mut Array<f32>,
    sums: &mut Array<f32>,
    #[comptime] units: usize,
    #[comptime] vector: usize,
    #[comptime] pair: bool,
    #[comptime] scaled: bool,
) {
    let n = comptime![a.len()];
    #[unroll]
    for i in 0..n {
        let start = *starts.index(i);
        let end = *starts.index(comptime![i + 1]);
        if block >= start && block < end {
            let ta = a.index(i).as_slice();
            let len = ta.len();
            let per_block = comptime![BLOCK / vector];
            let base = (block - start) as usize * per_block;
            let stop = block_end(base, per_block, len);
            let unit = UNIT_POS_X as usize;
            let tb = if pair { b.index(i).as_slice() } else { ta };
            if stop - base == per_block {
                // A whole block: a trip count known when the kernel is compiled.
                for j in 0..comptime![BLOCK / vector / units] {
                    take_at::<F, N>(
                        ta,
                        tb,
                        base + j * units + unit,
                        inv,
                        largest,
                        sums,
                        pair,
                        scaled,
                    );
                }
            } else {
                let mut at = base + unit;
                while at < stop {
                    take_at::<F, N>(ta, tb, at, inv, largest, sums, pair, scaled);
                    at += units;
                }
            }
        }
    }
}

/// The end of the block that starts at `base` of a tensor of `len` items, `per_block` items a
/// block.
#[cube]
pub(super) fn block_end(base: usize, #[comptime] per_block: usize, len: usize) -> usize {
    let mut stop = base + per_block;
    if stop > len {
        stop = len;
    }
    stop
}

/// Folds the value at `at` of `a` (and of b − a, with `pair`) into this unit's partials.
#[cube]
#[allow(clippy::too_many_arguments)]
fn take_at<F: Float, N: Size>(
    a: &[Vector<F, N>],
    b: &[Vector<F, N>],
    at: usize,
    inv: &Array<f32>,
    largest: &mut Array<f32>,
    sums: &mut Array<f32>,
    #[comptime] pair: bool,
    #[comptime] scaled: bool,
) {
    let va = a[at];
    #[unroll]
    for l in 0..N::value() {
        take(
            f32::cast_from(va.extract(l)),
            inv[0],
            largest,
            sums,
            0usize,
            scaled,
        );
    }
    if pair {
        let vb = b[at];
        #[unroll]
        for l in 0..N::value() {
            let d = f32::cast_from(vb.extract(l)) - f32::cast_from(va.extract(l));
            take(d, inv[1], largest, sums, 1usize, scaled);
        }
    }
}

/// The largest of every unit's `value`, known to every unit.
#[cube]
pub(super) fn cube_max(value: f32, #[comptime] units: usize) -> f32 {
    let mut shared = Shared::<[f32]>::new_slice(units);
    shared[UNIT_POS_X as usize] = value;
    sync_cube();
    let mut out = value;
    #[unroll]
    for k in 0..units {
        out = f32::max(out, shared[k]);
    }
    out
}

/// The sum over the cube's units of each of `acc[0..count]`, in unit 0.
#[cube]
pub(super) fn cube_sums(acc: &mut Array<f32>, #[comptime] count: usize, #[comptime] units: usize) {
    let mut shared = Shared::<[f32]>::new_slice(comptime![count * units]);
    let unit = UNIT_POS_X as usize;
    #[unroll]
    for k in 0..count {
        shared[k * units + unit] = acc[k];
    }
    sync_cube();
    if unit == 0 {
        #[unroll]
        for k in 0..count {
            let mut total = 0.0f32;
            for j in 0..units {
                total += shared[k * units + j];
            }
            acc[k] = total;
        }
    }
}

/// The range of a block's largest magnitude m in which Σ x² is taken directly and divided by
/// u² once: up to 4,096 values of at most 2⁴⁰ cannot overflow (Σ x² ≤ 2⁹²), and with
/// m ≥ 2⁻⁴⁰ the squares that underflow (below 2⁻¹²⁶ each) change Σ x² by less than 2⁻³⁴ of m².
const DIRECT_MIN: f32 = 1.0 / DIRECT_MAX;
/// See [`DIRECT_MIN`].
const DIRECT_MAX: f32 = 1_099_511_627_776.0;

/// 1/u for a block's largest finite magnitude m: u = m, at least f32's smallest normal (so the
/// reciprocal is finite), 1 for an all-zero block — what the host multiplies back by
/// (`padded::block_unit`).
#[cube]
fn reciprocal_unit(m: f32) -> f32 {
    let mut u = 1.0f32;
    if m > 0.0 {
        u = f32::max(m, f32::MIN_POSITIVE);
    }
    1.0 / u
}

/// The statistics of every block of `a` (and, with `pair`, of `b − a`), for the blocks
/// `first_block ..` of the whole set that this launch covers; a cube is `units` units.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn block_statistics<F: Float, N: Size>(
    a: &Sequence<OwnedTensor<Vector<F, N>>>,
    b: &Sequence<OwnedTensor<Vector<F, N>>>,
    starts: &Sequence<u32>,
    out: &mut Tensor<f32>,
    first_block: u32,
    #[comptime] units: usize,
    #[comptime] vector: usize,
    #[comptime] pair: bool,
    #[define(F)] _dtype: ElemType,
) {
    let n = comptime![a.len()];
    let block = CUBE_POS as u32;
    if block >= *starts.index(n) {
        terminate!();
    }
    let sequences = comptime![if pair { 2usize } else { 1usize }];

    let mut inv = Array::<f32>::new(2usize);
    let mut largest = Array::<f32>::new(2usize);
    let mut sums = Array::<f32>::new(6usize);
    #[unroll]
    for q in 0..2 {
        inv[q] = 0.0;
        largest[q] = 0.0;
    }
    #[unroll]
    for k in 0..6 {
        sums[k] = 0.0;
    }
    pass::<F, N>(
        a,
        b,
        starts,
        block,
        &inv,
        &mut largest,
        &mut sums,
        units,
        vector,
        pair,
        false,
    );
    let mut m = Array::<f32>::new(2usize);
    if close_block(&largest, &mut sums, &mut m, &mut inv, sequences, units) {
        // A block whose largest magnitude lies outside [2⁻⁴⁰, 2⁴⁰]: Σ x² may have overflowed or
        // lost its small terms, so the sums are taken again relative to u.
        let mut scaled = Array::<f32>::new(6usize);
        #[unroll]
        for k in 0..6 {
            scaled[k] = 0.0;
        }
        pass::<F, N>(
            a,
            b,
            starts,
            block,
            &inv,
            &mut largest,
            &mut scaled,
            units,
            vector,
            pair,
            true,
        );
        take_rescan(&mut scaled, &mut sums, sequences, units);
    }
    write_block(out, first_block + block, &m, &sums, sequences);
}

/// Closes a block's first pass: each of the `sequences`' largest magnitude over the cube into
/// `top`, its reciprocal unit into `inv`, and the sums (in unit 0) relative to it:
/// `Σ r² = Σ x²/u²`, `Σ r = Σ |x|/u`. Whether a largest magnitude lies outside
/// [[`DIRECT_MIN`], [`DIRECT_MAX`]], where the sums are to be taken again, scaled
/// ([`take_rescan`]).
#[cube]
pub(super) fn close_block(
    largest: &Array<f32>,
    sums: &mut Array<f32>,
    top: &mut Array<f32>,
    inv: &mut Array<f32>,
    #[comptime] sequences: usize,
    #[comptime] units: usize,
) -> bool {
    cube_sums(sums, comptime![3 * sequences], units);
    let mut rescan = false;
    #[unroll]
    for q in 0..sequences {
        top[q] = cube_max(largest[q], units);
        inv[q] = reciprocal_unit(top[q]);
        rescan = rescan || top[q] < DIRECT_MIN || top[q] > DIRECT_MAX;
        sums[3 * q] *= inv[q] * inv[q];
        sums[3 * q + 1] *= inv[q];
    }
    rescan
}

/// The sums of a block's second, scaled pass (`scaled`, per unit) over the cube, as its Σ r² and
/// Σ r in `sums` (unit 0).
#[cube]
pub(super) fn take_rescan(
    scaled: &mut Array<f32>,
    sums: &mut Array<f32>,
    #[comptime] sequences: usize,
    #[comptime] units: usize,
) {
    cube_sums(scaled, comptime![3 * sequences], units);
    #[unroll]
    for q in 0..sequences {
        sums[3 * q] = scaled[3 * q];
        sums[3 * q + 1] = scaled[3 * q + 1];
    }
}

/// Unit 0 writes block `index`'s statistics of each of the `sequences` to `out`: max |x|,
/// Σ r², Σ r, the non-finite count.
#[cube]
pub(super) fn write_block(
    out: &mut Tensor<f32>,
    index: u32,
    top: &Array<f32>,
    sums: &Array<f32>,
    #[comptime] sequences: usize,
) {
    if UNIT_POS_X == 0 {
        let at = index as usize * comptime![sequences * STATS];
        #[unroll]
        for q in 0..sequences {
            let o = at + q * STATS;
            out[o] = top[q];
            out[o + 1] = sums[3 * q];
            out[o + 2] = sums[3 * q + 1];
            out[o + 3] = sums[3 * q + 2];
        }
    }
}
