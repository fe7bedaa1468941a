//! Host kernels over `&[f32]`: the fused statistics pass, and in-place scale / clamp / zero.
//!
//! Speed comes from block-wise f32 accumulation (DESIGN.md, "Performance rules"): within a block of
//! [`BLOCK`] values, 32 independent f32 lanes accumulate Σg², Σ|g| and max|g|, which the compiler
//! turns into SIMD code; each block's result is then added to f64 totals. A block is trusted only
//! when its sums are finite and its max |g| lies in [2⁻⁵⁰, 2⁵⁰] (or is 0): there Σg² over 1,024
//! values cannot overflow f32 and no square is small enough to lose precision. Any other block
//! (huge, tiny, NaN or inf) is redone exactly in f64, which also counts the non-finite values and
//! finds the first one. Results do not depend on the instruction set or the thread count: the lane
//! structure and the order of every addition are fixed by this code (on CPUs with FMA, Σg² uses
//! fused multiply-adds, so there the last bits differ from a CPU without).
//!
//! The default x86-64 target only guarantees SSE2, so the kernels are compiled a second and third
//! time for AVX2 and AVX-512 and chosen at run time with `is_x86_feature_detected!`.

#![allow(unsafe_code)]

use crate::UnitSpan;
use crate::stats::{NonFiniteAt, NonFiniteKind, TensorStats};

/// Values per block of f32 accumulation.
pub const BLOCK: usize = 1024;
const LANES: usize = 32;
/// 2⁵⁰: the largest block max |g| the f32 fast path accepts (1024 · 2¹⁰⁰ ≪ f32::MAX).
const FAST_MAX: f32 = 1_125_899_906_842_624.0;
/// 2⁻⁵⁰: the smallest non-zero block max |g| the fast path accepts.
const FAST_MIN: f32 = 1.0 / 1_125_899_906_842_624.0;

/// Σg², Σ|g|, max|g| of one block, per f32 lane. The max is kept on bit patterns: for
/// non-negative floats integer order is float order, and a NaN's pattern lies above +inf's, so
/// the block max is NaN or inf exactly when the block holds one.
/// With `FMA`, Σg² uses fused multiply-adds (one rounding instead of two per value), which is
/// only fast where the CPU has FMA; results then differ from the portable path in the last bits.
#[inline(always)]
fn block_lanes<const FMA: bool>(xs: &[f32]) -> ([f32; LANES], [f32; LANES], [u32; LANES]) {
    let mut sq = [0f32; LANES];
    let mut ab = [0f32; LANES];
    let mut mx = [0u32; LANES];
    // Callers pass whole multiples of LANES: with no remainder loop indexing the lanes at run
    // time, the accumulators stay in registers.
    for c in xs.chunks_exact(LANES) {
        for i in 0..LANES {
            let bits = c[i].to_bits() & 0x7fff_ffff;
            let a = f32::from_bits(bits);
            sq[i] = if FMA {
                a.mul_add(a, sq[i])
            } else {
                sq[i] + a * a
            };
            ab[i] += a;
            mx[i] = mx[i].max(bits);
        }
    }
    (sq, ab, mx)
}

/// Pairwise sum of lanes (halves added in place): a fixed order that vectorizes.
#[inline(always)]
fn tree_sum(mut v: [f64; LANES]) -> f64 {
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            v[i] += v[i + n];
        }
    }
    v[0]
}

/// Pairwise max of lanes.
#[inline(always)]
fn tree_max(mut v: [u32; LANES]) -> u32 {
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            v[i] = v[i].max(v[i + n]);
        }
    }
    v[0]
}

/// Running statistics of a slice: f64 lane sums of the trusted blocks, plus the exact results of
/// the blocks that needed the f64 path. Lanes are only reduced once, at the end, so a block costs
/// no horizontal reduction but its max.
struct Accumulator {
    sq: [f64; LANES],
    ab: [f64; LANES],
    mx: [u32; LANES],
    exact: TensorStats,
}

impl Accumulator {
    #[inline(always)]
    fn new() -> Self {
        Accumulator {
            sq: [0.0; LANES],
            ab: [0.0; LANES],
            mx: [0; LANES],
            exact: TensorStats::default(),
        }
    }

    /// Adds one block that starts at flat index `start`. The last < LANES values of a short
    /// block take the exact path.
    #[inline(always)]
    fn add<const FMA: bool>(&mut self, block: &[f32], start: usize) {
        let whole = block.len() - block.len() % LANES;
        let (head, tail) = block.split_at(whole);
        self.add_lanes::<FMA>(head, start);
        if !tail.is_empty() {
            block_exact(tail, start + whole, &mut self.exact);
        }
    }

    #[inline(always)]
    fn add_lanes<const FMA: bool>(&mut self, block: &[f32], start: usize) {
        let (sq, ab, mx) = block_lanes::<FMA>(block);
        let m = f32::from_bits(tree_max(mx));
        // NaN-safe: a NaN or inf block max fails `m <= FAST_MAX`. Below 2⁵⁰, 1024 squares cannot
        // overflow f32; above 2⁻⁵⁰, no square is small enough to lose precision.
        if m <= FAST_MAX && (m >= FAST_MIN || m == 0.0) {
            for i in 0..LANES {
                self.sq[i] += f64::from(sq[i]);
                self.ab[i] += f64::from(ab[i]);
                self.mx[i] = self.mx[i].max(mx[i]);
            }
        } else {
            block_exact(block, start, &mut self.exact);
        }
    }

    #[inline(always)]
    fn finish(self, len: usize) -> TensorStats {
        let fast_max = f64::from(f32::from_bits(tree_max(self.mx)));
        TensorStats {
            len,
            sum_squares: tree_sum(self.sq) + self.exact.sum_squares,
            sum_abs: tree_sum(self.ab) + self.exact.sum_abs,
            max_abs: fast_max.max(self.exact.max_abs),
            ..self.exact
        }
    }
}

/// The exact f64 path for one block starting at flat index `start`.
#[inline(never)]
fn block_exact(xs: &[f32], start: usize, acc: &mut TensorStats) {
    for (i, &x) in xs.iter().enumerate() {
        if x.is_finite() {
            let a = f64::from(x.abs());
            acc.sum_squares += a * a;
            acc.sum_abs += a;
            if a > acc.max_abs {
                acc.max_abs = a;
            }
        } else if let Some(kind) = NonFiniteKind::of(x) {
            if kind == NonFiniteKind::Nan {
                acc.nan_count += 1;
            } else {
                acc.inf_count += 1;
            }
            acc.first_non_finite.get_or_insert(NonFiniteAt {
                index: start + i,
                kind,
            });
        }
    }
}

#[inline(always)]
fn stats_generic<const FMA: bool>(xs: &[f32]) -> TensorStats {
    let mut acc = Accumulator::new();
    for (b, block) in xs.chunks(BLOCK).enumerate() {
        acc.add::<FMA>(block, b * BLOCK);
    }
    acc.finish(xs.len())
}

#[inline(always)]
fn clamp_stats_generic<const FMA: bool>(xs: &mut [f32], limit: f32) -> TensorStats {
    let len = xs.len();
    let mut acc = Accumulator::new();
    for (b, block) in xs.chunks_mut(BLOCK).enumerate() {
        for x in block.iter_mut() {
            // NaN stays NaN, as in torch.clamp and jnp.clip.
            *x = x.clamp(-limit, limit);
        }
        acc.add::<FMA>(block, b * BLOCK);
    }
    acc.finish(len)
}

#[inline(always)]
fn scale_generic<const FMA: bool>(xs: &mut [f32], factor: f32) {
    for x in xs.iter_mut() {
        *x *= factor;
    }
}

macro_rules! dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty => $generic:ident) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,fma")]
                fn avx512($($arg: $ty),*) -> $ret { $generic::<true>($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) -> $ret { $generic::<true>($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports AVX-512F, checked just above.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic::<false>($($arg),*)
        }
    };
}

dispatch! {
    /// Fused statistics of a slice: one read of every value.
    pub fn slice_stats(xs: &[f32]) -> TensorStats => stats_generic
}

dispatch! {
    /// Clamps every value to `[-limit, limit]` in place and returns the statistics after the clamp,
    /// in the same pass (one read-modify-write).
    pub fn clamp_with_stats(xs: &mut [f32], limit: f32) -> TensorStats => clamp_stats_generic
}

dispatch! {
    /// Multiplies every value by `factor` in place.
    pub fn scale_in_place(xs: &mut [f32], factor: f32) -> () => scale_generic
}

/// Replaces NaN and ±inf by 0 in place and returns the statistics after, in the same pass.
pub fn zero_non_finite_with_stats(xs: &mut [f32]) -> TensorStats {
    let len = xs.len();
    let mut acc = Accumulator::new();
    for (b, block) in xs.chunks_mut(BLOCK).enumerate() {
        for x in block.iter_mut() {
            if !x.is_finite() {
                *x = 0.0;
            }
        }
        acc.add::<false>(block, b * BLOCK);
    }
    acc.finish(len)
}

/// Σ (|g| / scale)^p over the finite values, in f64. Dividing by a scale ≥ max |g| keeps every
/// term ≤ 1, so large p cannot overflow (‖g‖_p = scale · (Σ (|g|/scale)^p)^(1/p)).
pub fn scaled_power_sum(xs: &[f32], p: f64, scale: f64) -> f64 {
    xs.iter()
        .filter(|x| x.is_finite())
        .map(|&x| (f64::from(x.abs()) / scale).powf(p))
        .sum()
}

/// Σ g² of each column of a row-major `[rows, cols]` matrix, in f64 (non-finite values propagate).
pub fn column_sum_squares(xs: &[f32], rows: usize, cols: usize) -> Vec<f64> {
    let mut acc = vec![0f64; cols];
    for row in xs.chunks_exact(cols).take(rows) {
        for (a, &x) in acc.iter_mut().zip(row) {
            let x = f64::from(x);
            *a += x * x;
        }
    }
    acc
}

/// Σ g² of each row of a row-major `[rows, cols]` matrix, in f64 (non-finite values propagate).
/// Each unit is summed in index order, as in [`column_sum_squares`], so both layouts give the
/// same bits for the same unit.
pub fn row_sum_squares(xs: &[f32], cols: usize) -> Vec<f64> {
    if cols == 0 {
        return Vec::new();
    }
    xs.chunks_exact(cols)
        .map(|row| row.iter().map(|&x| f64::from(x) * f64::from(x)).sum())
        .collect()
}

/// (‖before‖₂, ‖after − before‖₂) of two slices of one length — a weight before and after an
/// optimizer step: the update bound's measurement of a whole tensor on the host. Within each
/// block of [`BLOCK`] values, 32 independent f32 lanes accumulate both sums (so the loop
/// vectorizes), and each block's sums join f64 totals; a block whose f32 sums are not finite
/// (values beyond ~1e17 or non-finite ones) is redone exactly in f64, so any finite weights give
/// finite norms.
pub fn update_norms(before: &[f32], after: &[f32]) -> (f64, f64) {
    let mut sums = UpdateSums::new(None);
    sums.add(before, after);
    sums.finish().0
}

/// Per unit of `span`: (‖before_u‖₂, ‖after_u − before_u‖₂) of two row-major slices of one
/// shape — a weight before and after an optimizer step — accumulated in f64 in index order (no
/// overflow for any finite f32). The unit-wise update bound's measurement on the host.
pub fn unit_update_norms(before: &[f32], after: &[f32], span: UnitSpan) -> Vec<(f64, f64)> {
    let mut sums = UpdateSums::new(Some(span));
    sums.add(before, after);
    sums.finish().1
}

/// [`update_norms`] and, with a span, [`unit_update_norms`] of one tensor, fed slice by slice in
/// index order — e.g. each slice of the weights as an optimizer writes its new values, while both
/// are in cache. Every slice but the last must hold a multiple of [`BLOCK`] values; the result
/// is then the same, bit for bit, as measuring the whole tensor at once.
#[derive(Debug, Clone)]
pub struct UpdateSums {
    weight: f64,
    update: f64,
    /// Values added so far.
    offset: usize,
    units: Option<(UnitSpan, Vec<f64>, Vec<f64>)>,
}

impl UpdateSums {
    /// Empty sums; per unit of `span` too when given.
    pub fn new(span: Option<UnitSpan>) -> Self {
        UpdateSums {
            weight: 0.0,
            update: 0.0,
            offset: 0,
            units: span.map(|s| (s, vec![0.0; s.units()], vec![0.0; s.units()])),
        }
    }

    /// Adds the next slice of the weights before and after the step.
    pub fn add(&mut self, before: &[f32], after: &[f32]) {
        debug_assert!(
            self.offset.is_multiple_of(BLOCK),
            "a slice before this one was cut mid-block"
        );
        for (b, a) in before.chunks(BLOCK).zip(after.chunks(BLOCK)) {
            let (w, d) = block_update_sums(b, a);
            self.weight += w;
            self.update += d;
        }
        if let Some((span, w, d)) = &mut self.units {
            add_unit_sums(*span, self.offset, before, after, w, d);
        }
        self.offset += before.len();
    }

    /// (‖w‖₂, ‖Δw‖₂) of the tensor, and per unit when a span was given (else empty).
    pub fn finish(self) -> ((f64, f64), Vec<(f64, f64)>) {
        let units = self.units.map_or_else(Vec::new, |(_, w, d)| {
            w.into_iter()
                .zip(d)
                .map(|(w, d)| (w.sqrt(), d.sqrt()))
                .collect()
        });
        ((self.weight.sqrt(), self.update.sqrt()), units)
    }
}

/// Σ before² and Σ (after − before)² of one block (see [`update_norms`]).
fn block_update_sums(b: &[f32], a: &[f32]) -> (f64, f64) {
    let (mut wl, mut dl) = ([0.0f32; LANES], [0.0f32; LANES]);
    let (bc, ac) = (b.chunks_exact(LANES), a.chunks_exact(LANES));
    let (b_rest, a_rest) = (bc.remainder(), ac.remainder());
    for (bs, as_) in bc.zip(ac) {
        for k in 0..LANES {
            let diff = as_[k] - bs[k];
            wl[k] += bs[k] * bs[k];
            dl[k] += diff * diff;
        }
    }
    for (k, (&x, &y)) in b_rest.iter().zip(a_rest).enumerate() {
        let diff = y - x;
        wl[k] += x * x;
        dl[k] += diff * diff;
    }
    let (bw, bd) = (tree_sum(wl.map(f64::from)), tree_sum(dl.map(f64::from)));
    if bw.is_finite() && bd.is_finite() {
        return (bw, bd);
    }
    let (mut w, mut d) = (0.0, 0.0);
    for (&x, &y) in b.iter().zip(a) {
        let x64 = f64::from(x);
        let diff = f64::from(y) - x64;
        w += x64 * x64;
        d += diff * diff;
    }
    (w, d)
}

/// Adds the values at flat indices `offset..` of a row-major tensor to their units' f64 sums, in
/// index order: whole rows at a time where the slice holds them (a unit per column: one pass
/// over the row that vectorizes), value by value at a slice's cut ends.
fn add_unit_sums(
    span: UnitSpan,
    offset: usize,
    before: &[f32],
    after: &[f32],
    w: &mut [f64],
    d: &mut [f64],
) {
    let cols = span.cols.max(1);
    let one = |i: usize, x: f32, y: f32, w: &mut [f64], d: &mut [f64]| {
        let u = span.unit_of(i);
        let x64 = f64::from(x);
        let diff = f64::from(y) - x64;
        w[u] += x64 * x64;
        d[u] += diff * diff;
    };
    let n = before.len();
    let head = ((cols - offset % cols) % cols).min(n);
    for i in 0..head {
        one(offset + i, before[i], after[i], w, d);
    }
    let rows = (n - head) / cols;
    for r in 0..rows {
        let start = head + r * cols;
        let (b, a) = (&before[start..start + cols], &after[start..start + cols]);
        if span.units_are_columns {
            for c in 0..cols {
                let x64 = f64::from(b[c]);
                let diff = f64::from(a[c]) - x64;
                w[c] += x64 * x64;
                d[c] += diff * diff;
            }
        } else {
            let u = (offset + start) / cols;
            let (mut sw, mut sd) = (w[u], d[u]);
            for (&x, &y) in b.iter().zip(a) {
                let x64 = f64::from(x);
                let diff = f64::from(y) - x64;
                sw += x64 * x64;
                sd += diff * diff;
            }
            (w[u], d[u]) = (sw, sd);
        }
    }
    for i in head + rows * cols..n {
        one(offset + i, before[i], after[i], w, d);
    }
}

/// A tensor's own (‖w‖₂, ‖Δw‖₂) from its units' ([`unit_update_norms`]): the root of the summed
/// squares, in f64 (non-finite units give a non-finite result).
pub fn tensor_norms_of_units(units: &[(f64, f64)]) -> (f64, f64) {
    let (w, d) = units
        .iter()
        .fold((0.0, 0.0), |(w, d), &(uw, ud)| (w + uw * uw, d + ud * ud));
    (w.sqrt(), d.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per unit, in index order, in f64: the definition the sums must reproduce bit for bit.
    fn unit_reference(b: &[f32], a: &[f32], span: UnitSpan) -> Vec<(f64, f64)> {
        let mut sums = vec![(0.0f64, 0.0f64); span.units()];
        for (i, (&x, &y)) in b.iter().zip(a).enumerate() {
            let s = &mut sums[span.unit_of(i)];
            let x64 = f64::from(x);
            s.0 += x64 * x64;
            s.1 += (f64::from(y) - x64).powi(2);
        }
        sums.into_iter()
            .map(|(w, d)| (w.sqrt(), d.sqrt()))
            .collect()
    }

    #[test]
    fn update_sums_fed_in_slices_are_the_whole_tensors_bit_for_bit() {
        for (rows, cols) in [(700, 7), (9, 1000), (64, 256), (3, 5000), (1, 4100)] {
            let n = rows * cols;
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let a: Vec<f32> = b
                .iter()
                .enumerate()
                .map(|(i, x)| x + (i as f32 * 0.11).cos() * 1e-3)
                .collect();
            for units_are_columns in [true, false] {
                let span = UnitSpan {
                    rows,
                    cols,
                    units_are_columns,
                };
                let whole = (update_norms(&b, &a), unit_update_norms(&b, &a, span));
                assert_eq!(whole.1, unit_reference(&b, &a, span), "{rows}x{cols}");
                for slice in [BLOCK, 3 * BLOCK] {
                    let mut sums = UpdateSums::new(Some(span));
                    for (bs, as_) in b.chunks(slice).zip(a.chunks(slice)) {
                        sums.add(bs, as_);
                    }
                    assert_eq!(sums.finish(), whole, "{rows}x{cols} in slices of {slice}");
                }
            }
        }
    }

    #[test]
    fn update_norms_are_exact_enough_and_never_overflow() {
        let before: Vec<f32> = (0..5000).map(|i| (i as f32 * 0.37).sin()).collect();
        let after: Vec<f32> = before.iter().map(|x| x + 0.5).collect();
        let (w, d) = update_norms(&before, &after);
        let exact_w: f64 = before
            .iter()
            .map(|&x| f64::from(x).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((w / exact_w - 1.0).abs() < 1e-6, "{w} {exact_w}");
        assert!((d / 1250f64.sqrt() - 1.0).abs() < 1e-6, "{d}");
        // Squares of 1e30 overflow f32: the block is redone in f64.
        let (w, d) = update_norms(&[1e30, 0.0], &[1e30, 3e30]);
        assert!((w / 1e30 - 1.0).abs() < 1e-6 && (d / 3e30 - 1.0).abs() < 1e-6);
        assert_eq!(update_norms(&[], &[]), (0.0, 0.0));
    }

    fn exact(xs: &[f32]) -> TensorStats {
        let mut acc = TensorStats {
            len: xs.len(),
            ..Default::default()
        };
        block_exact(xs, 0, &mut acc);
        acc
    }

    #[test]
    fn fast_path_matches_exact_within_f32_rounding() {
        let xs: Vec<f32> = (0..10_000)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let fast = slice_stats(&xs);
        let slow = exact(&xs);
        assert!((fast.sum_squares - slow.sum_squares).abs() <= 1e-6 * slow.sum_squares);
        assert!((fast.sum_abs - slow.sum_abs).abs() <= 1e-6 * slow.sum_abs);
        assert_eq!(fast.max_abs, slow.max_abs);
    }

    #[test]
    fn extreme_blocks_take_the_exact_path() {
        let mut xs = vec![3e38f32; 3000];
        xs[2500] = f32::NAN;
        xs[2700] = f32::NEG_INFINITY;
        let s = slice_stats(&xs);
        assert_eq!(s.nan_count, 1);
        assert_eq!(s.inf_count, 1);
        assert_eq!(s.first_non_finite.map(|at| at.index), Some(2500));
        let expected = 2998.0 * (3e38f32 as f64).powi(2);
        assert!((s.sum_squares - expected).abs() <= 1e-12 * expected);
        let tiny = vec![1e-30f32; 100];
        let t = slice_stats(&tiny);
        let expected = 100.0 * (1e-30f32 as f64).powi(2);
        assert!((t.sum_squares - expected).abs() <= 1e-12 * expected);
    }

    #[test]
    fn first_non_finite_is_the_earliest_even_with_a_ragged_tail() {
        // 1030 = one full block + 6 values; 37 = one lane group + 5 values.
        for len in [37usize, 1030, 3000] {
            let mut xs = vec![0.5f32; len];
            xs[len - 1] = f32::INFINITY;
            xs[3] = f32::NAN;
            let s = slice_stats(&xs);
            assert_eq!(s.first_non_finite.map(|at| at.index), Some(3), "len {len}");
            assert_eq!((s.nan_count, s.inf_count), (1, 1));
            let expected = (len - 2) as f64 * 0.25;
            assert!((s.sum_squares - expected).abs() < 1e-9, "len {len}");
            assert_eq!(s.max_abs, 0.5);
        }
    }

    #[test]
    fn clamp_keeps_nan_and_bounds_infinities() {
        let mut xs = vec![5.0, -5.0, f32::NAN, f32::INFINITY, 0.5];
        let s = clamp_with_stats(&mut xs, 1.0);
        assert_eq!(&xs[..2], &[1.0, -1.0]);
        assert!(xs[2].is_nan());
        assert_eq!(xs[3], 1.0);
        assert_eq!(s.nan_count, 1);
        assert_eq!(s.inf_count, 0);
    }
}
