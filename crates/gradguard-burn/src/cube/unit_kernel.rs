//! The fused unit-norms kernel: the norms of every unit (AGC's neurons: a row or a column of a
//! weight) of many tensors in one launch.
//!
//! A unit's values are `first + k·stride` for k < n (a row: stride 1; a column of a row-major
//! `[rows, cols]` tensor: stride `cols`). One thread folds one *piece* of one unit — at most
//! [`PIECE`] of its values — and neighbouring threads take neighbouring units, so a layer whose
//! units are columns is read in coalesced rows. Per piece it writes four numbers:
//!
//! - a scale s: 1 when the piece's largest finite magnitude m lies within 1e-15..1e15, else
//!   1/m (at most 1e30) — so no finite f32 overflows when squared and no f64 is needed;
//! - Σ (s·x)² over the finite values, in 16 interleaved partial sums of at most 256 terms each,
//!   added pairwise — so the f32 error does not grow with a unit's length the way one running
//!   sum's does (Kahan compensation is no remedy: shader compilers may reassociate floats not
//!   marked exact and fold `(t − s) − y` to 0).
//! - the NaN count and the ±inf count.
//!
//! One pass takes the maximum and Σ x² unscaled — in the *pair* form (two sequences of tensors
//! of the same shapes, a and b: the weights before a step and after it) of a and of b − a
//! together, each value of a and b read once — and only a piece whose maximum lies outside
//! 1e-15..1e15 is read a second time for Σ (s·x)² — no division per value, which Vulkan lets be
//! 2.5 ulp off (the design history is in docs/measurements/2026-12-07-statistics-kernel.md).
//! The host combines a unit's pieces in f64: ‖x_u‖² = Σ_p sum_p / s_p².
//! The pair form writes the four numbers of a, then those of b − a.

use cubecl::prelude::*;

/// Threads per cube.
pub const THREADS: usize = 256;
/// Values of one unit that one thread folds at most.
pub const PIECE: usize = 4096;
/// Numbers per piece and tensor sequence: the scale s, Σ (s·x)², NaN count, inf count.
pub const STATS: usize = 4;
/// Partial sums per thread: each of a piece's 4,096 values goes to lane k mod 16, so no f32
/// running sum is longer than 256 terms.
const LANES: usize = 16;
/// Below this largest magnitude a piece is summed unscaled: 4,096 squares of at most 1e15 stay
/// below 4.1e33 < f32::MAX.
const SAFE_MAX: f32 = 1e15;
/// Above this largest magnitude a piece is summed unscaled: squares of values near it stay far
/// above f32's subnormals.
const SAFE_MIN: f32 = 1e-15;

/// Value k of the piece: `a[first + k·stride]`, or with `difference` `b[…] − a[…]`, in f32.
#[cube]
fn value_at<F: Float>(
    a: &[F],
    b: &[F],
    first: usize,
    stride: usize,
    k: usize,
    #[comptime] difference: bool,
) -> f32 {
    let i = first + k * stride;
    let mut value = f32::cast_from(a[i]);
    if difference {
        value = f32::cast_from(b[i]) - value;
    }
    value
}

/// Folds one value into sequence `q`'s partials: its largest finite magnitude and non-finite
/// counts in `counts[3q..3q + 3]` (m, NaN, inf), x² into lane `l` of `lanes[q·LANES..]`.
#[cube]
fn take(
    x: f32,
    counts: &mut Array<f32>,
    lanes: &mut Array<f32>,
    #[comptime] l: usize,
    #[comptime] q: usize,
) {
    let magnitude = f32::abs(x);
    let c = comptime![3 * q];
    if magnitude <= f32::MAX {
        counts[c] = f32::max(counts[c], magnitude);
        lanes[comptime![q * LANES + l]] += x * x;
    } else if magnitude > f32::MAX {
        counts[c + 2] += 1.0;
    } else {
        // Neither comparison holds for NaN.
        counts[c + 1] += 1.0;
    }
}

/// Folds value k of the piece (`a[first + k·stride]`, and with `pair` `b[…] − a[…]`) into lane
/// `l`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn take_at<F: Float>(
    a: &[F],
    b: &[F],
    at: usize,
    counts: &mut Array<f32>,
    lanes: &mut Array<f32>,
    #[comptime] l: usize,
    #[comptime] pair: bool,
) {
    let x = f32::cast_from(a[at]);
    take(x, counts, lanes, l, 0usize);
    if pair {
        take(f32::cast_from(b[at]) - x, counts, lanes, l, 1usize);
    }
}

/// Σ (s·x)² of the piece's values of sequence `difference` (b − a, else a) in LANES
/// interleaved partial sums, added pairwise: the second pass of a piece whose largest
/// magnitude lies outside `SAFE_MIN..SAFE_MAX`.
#[cube]
#[allow(clippy::manual_div_ceil)]
fn scaled_sum<F: Float>(
    a: &[F],
    b: &[F],
    first: usize,
    stride: usize,
    count: usize,
    scale: f32,
    #[comptime] difference: bool,
) -> f32 {
    let mut lanes = Array::<f32>::new(LANES);
    #[unroll]
    for l in 0..LANES {
        lanes[l] = 0.0;
    }
    let rounds = (count + LANES - 1) / LANES;
    for r in 0..rounds {
        #[unroll]
        for l in 0..LANES {
            let k = r * LANES + l;
            if k < count {
                let x = value_at::<F>(a, b, first, stride, k, difference) * scale;
                if f32::abs(x) <= f32::MAX {
                    lanes[l] += x * x;
                }
            }
        }
    }
    pairwise(&lanes, 0usize)
}

/// The sum of `lanes[from..from + LANES]`, added pairwise (16 → 8 → 4 → 2 → 1).
#[cube]
fn pairwise(lanes: &Array<f32>, #[comptime] from: usize) -> f32 {
    let mut half = Array::<f32>::new(8usize);
    #[unroll]
    for l in 0..8 {
        half[l] = lanes[from + l] + lanes[from + l + 8];
    }
    #[unroll]
    for l in 0..4 {
        half[l] += half[l + 4];
    }
    (half[0] + half[2]) + (half[1] + half[3])
}

/// Folds the `count` values of the piece — of a, and with `pair` of b − a — in one pass, and
/// writes each sequence's four statistics at `out[at..]` (then `out[at + STATS..]`): the scale
/// s, Σ (s·x)² over the finite values, the NaN count, the inf count.
#[cube]
// `RangeInclusive::contains` does not exist in a kernel.
#[allow(clippy::too_many_arguments, clippy::manual_range_contains)]
fn fold_piece<F: Float>(
    a: &[F],
    b: &[F],
    first: usize,
    stride: usize,
    count: usize,
    out: &mut Tensor<f32>,
    at: usize,
    #[comptime] pair: bool,
) {
    let sequences = comptime![if pair { 2usize } else { 1usize }];
    let mut counts = Array::<f32>::new(6usize);
    let mut lanes = Array::<f32>::new(comptime![2 * LANES]);
    #[unroll]
    for c in 0..6 {
        counts[c] = 0.0;
    }
    #[unroll]
    for l in 0..comptime![2 * LANES] {
        lanes[l] = 0.0;
    }
    // Whole rounds of LANES values, then the rest.
    let full = count / LANES;
    for r in 0..full {
        let base = first + r * LANES * stride;
        #[unroll]
        for l in 0..LANES {
            take_at::<F>(a, b, base + l * stride, &mut counts, &mut lanes, l, pair);
        }
    }
    let done = full * LANES;
    #[unroll]
    for l in 0..LANES {
        if done + l < count {
            take_at::<F>(
                a,
                b,
                first + (done + l) * stride,
                &mut counts,
                &mut lanes,
                l,
                pair,
            );
        }
    }
    #[unroll]
    for q in 0..sequences {
        let m = counts[comptime![3 * q]];
        // s = 1 where 4,096 squares can neither overflow nor underflow; else about 1/m, and a
        // second pass sums Σ (s·x)² again.
        let mut scale = 1.0f32;
        let mut sum = pairwise(&lanes, comptime![q * LANES]);
        if m > 0.0 && (m > SAFE_MAX || m < SAFE_MIN) {
            // At most 1e30: 1/m of a subnormal m would overflow.
            scale = 1.0 / f32::max(m, 1e-30);
            sum = scaled_sum::<F>(a, b, first, stride, count, scale, comptime![q == 1]);
        }
        let o = at + q * STATS;
        out[o] = scale;
        out[o + 1] = sum;
        out[o + 2] = counts[comptime![3 * q + 1]];
        out[o + 3] = counts[comptime![3 * q + 2]];
    }
}

/// The statistics of every piece of every unit of the inputs this launch covers. Input i's
/// pieces are the items `starts[i] .. starts[i + 1]` (relative to `first_item`), unit-major
/// within a piece index: item = piece·units[i] + unit. Its unit u holds the values
/// `u·unit_stride[i] + k·value_stride[i]`, k < unit_len[i].
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn unit_statistics<F: Float>(
    a: &Sequence<OwnedTensor<F>>,
    b: &Sequence<OwnedTensor<F>>,
    starts: &Sequence<u32>,
    units: &Sequence<u32>,
    unit_stride: &Sequence<u32>,
    value_stride: &Sequence<u32>,
    unit_len: &Sequence<u32>,
    out: &mut Tensor<f32>,
    first_item: u32,
    #[comptime] pair: bool,
    #[define(F)] _dtype: ElemType,
) {
    let n = comptime![a.len()];
    let item = CUBE_POS as u32 * comptime![THREADS as u32] + UNIT_POS_X;
    if item >= *starts.index(n) {
        terminate!();
    }
    let per_item = comptime![if pair { 2 * STATS } else { STATS }];
    let at = (first_item + item) as usize * per_item;
    #[unroll]
    for i in 0..n {
        let start = *starts.index(i);
        let end = *starts.index(comptime![i + 1]);
        if item >= start && item < end {
            let local = item - start;
            let count = *units.index(i);
            let unit = (local % count) as usize;
            let piece = (local / count) as usize;
            let len = *unit_len.index(i) as usize;
            let from = piece * PIECE;
            let take = usize::min(PIECE, len - from);
            let stride = *value_stride.index(i) as usize;
            let first = unit * *unit_stride.index(i) as usize + from * stride;
            let x = a.index(i).as_slice();
            let y = if pair { b.index(i).as_slice() } else { x };
            fold_piece::<F>(x, y, first, stride, take, out, at, pair);
        }
    }
}
