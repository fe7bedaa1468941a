//! The number types the host gradient sets compute on: f32 and f64.
//!
//! One [`crate::HostGradients`] implementation serves both; what differs per type is here.
//!
//! - **f32** runs the block-wise kernels of [`crate::kernel`] (32 f32 lanes per block of 1,024,
//!   block sums added in f64), and a factor or limit is rounded to f32 before it is applied, as
//!   PyTorch applies a clip coefficient to f32 tensors.
//! - **f64** keeps its precision: a file saved from a double-precision model is measured and
//!   clipped in f64 (values, factors and limits; [`crate::Gradients::applied`] is the identity),
//!   as `torch.nn.utils.clip_grad_norm_` computes on f64 tensors. Statistics are plain f64 sums
//!   in index order within each 256 Ki-value chunk, the chunks added in order: exact to f64
//!   rounding; like PyTorch's f64 norms, Σ g² overflows to +inf for values beyond ~1.3e154 (f32
//!   gradients cannot reach that).

use std::fmt::Debug;
use std::ops::MulAssign;

use crate::kernel;
use crate::stats::{NonFiniteAt, NonFiniteKind, TensorStats};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A floating-point type whose tensors the host kernels measure and rewrite: `f32` or `f64`.
///
/// Sealed: the set's semantics (what overflows, what a factor rounds to) are defined per type here.
pub trait HostFloat:
    Copy + PartialEq + MulAssign + Send + Sync + Debug + 'static + sealed::Sealed
{
    /// 1 in this type.
    const ONE: Self;

    /// `x` rounded to this type: what a factor or a limit becomes when applied.
    fn from_f64(x: f64) -> Self;

    /// This value in f64 (exact for both types).
    fn to_f64(self) -> f64;

    /// Σg², Σ|g|, max|g| over the finite values, the non-finite count and the first non-finite
    /// index (from 0) of one slice, in one read.
    fn stats(xs: &[Self]) -> TensorStats;

    /// Σ (|g| / scale)^p over the finite values, in f64.
    fn scaled_power_sum(xs: &[Self], p: f64, scale: f64) -> f64;

    /// Multiplies every value by `factor` in place.
    fn scale_in_place(xs: &mut [Self], factor: Self);

    /// Clamps every value to `[-limit, limit]` (NaN stays NaN) and returns the statistics after.
    fn clamp_with_stats(xs: &mut [Self], limit: Self) -> TensorStats;

    /// Replaces NaN and ±inf by 0 and returns the statistics after.
    fn zero_non_finite_with_stats(xs: &mut [Self]) -> TensorStats;

    /// Σ g² of each row of a row-major `[rows, cols]` matrix, in f64, each row in index order
    /// (non-finite values propagate).
    fn row_sum_squares(xs: &[Self], cols: usize) -> Vec<f64>;

    /// Σ g² of each column of a row-major `[rows, cols]` matrix, in f64, each column in row
    /// order (non-finite values propagate).
    fn column_sum_squares(xs: &[Self], rows: usize, cols: usize) -> Vec<f64>;
}

impl HostFloat for f32 {
    const ONE: f32 = 1.0;

    fn from_f64(x: f64) -> f32 {
        x as f32
    }

    fn to_f64(self) -> f64 {
        f64::from(self)
    }

    fn stats(xs: &[f32]) -> TensorStats {
        kernel::slice_stats(xs)
    }

    fn scaled_power_sum(xs: &[f32], p: f64, scale: f64) -> f64 {
        kernel::scaled_power_sum(xs, p, scale)
    }

    fn scale_in_place(xs: &mut [f32], factor: f32) {
        kernel::scale_in_place(xs, factor)
    }

    fn clamp_with_stats(xs: &mut [f32], limit: f32) -> TensorStats {
        kernel::clamp_with_stats(xs, limit)
    }

    fn zero_non_finite_with_stats(xs: &mut [f32]) -> TensorStats {
        kernel::zero_non_finite_with_stats(xs)
    }

    fn row_sum_squares(xs: &[f32], cols: usize) -> Vec<f64> {
        kernel::row_sum_squares(xs, cols)
    }

    fn column_sum_squares(xs: &[f32], rows: usize, cols: usize) -> Vec<f64> {
        kernel::column_sum_squares(xs, rows, cols)
    }
}

impl HostFloat for f64 {
    const ONE: f64 = 1.0;

    fn from_f64(x: f64) -> f64 {
        x
    }

    fn to_f64(self) -> f64 {
        self
    }

    fn stats(xs: &[f64]) -> TensorStats {
        f64_stats(xs)
    }

    fn scaled_power_sum(xs: &[f64], p: f64, scale: f64) -> f64 {
        xs.iter()
            .filter(|x| x.is_finite())
            .map(|x| (x.abs() / scale).powf(p))
            .sum()
    }

    fn scale_in_place(xs: &mut [f64], factor: f64) {
        xs.iter_mut().for_each(|x| *x *= factor);
    }

    fn clamp_with_stats(xs: &mut [f64], limit: f64) -> TensorStats {
        // NaN stays NaN, as in torch.clamp.
        xs.iter_mut().for_each(|x| *x = x.clamp(-limit, limit));
        f64_stats(xs)
    }

    fn zero_non_finite_with_stats(xs: &mut [f64]) -> TensorStats {
        xs.iter_mut()
            .filter(|x| !x.is_finite())
            .for_each(|x| *x = 0.0);
        f64_stats(xs)
    }

    fn row_sum_squares(xs: &[f64], cols: usize) -> Vec<f64> {
        if cols == 0 {
            return Vec::new();
        }
        xs.chunks_exact(cols)
            .map(|row| row.iter().map(|x| x * x).sum())
            .collect()
    }

    fn column_sum_squares(xs: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        let mut sums = vec![0.0f64; cols];
        if cols == 0 {
            return sums;
        }
        for row in xs.chunks_exact(cols).take(rows) {
            for (sum, x) in sums.iter_mut().zip(row) {
                *sum += x * x;
            }
        }
        sums
    }
}

/// One pass over f64 values: sums over the finite values in index order, the non-finite counts
/// and the first non-finite index.
pub fn f64_stats(xs: &[f64]) -> TensorStats {
    let mut s = TensorStats {
        len: xs.len(),
        ..TensorStats::default()
    };
    for (index, &x) in xs.iter().enumerate() {
        if x.is_finite() {
            let a = x.abs();
            s.sum_squares += a * a;
            s.sum_abs += a;
            s.max_abs = s.max_abs.max(a);
        } else if let Some(kind) = NonFiniteKind::of(x) {
            if kind == NonFiniteKind::Nan {
                s.nan_count += 1;
            } else {
                s.inf_count += 1;
            }
            s.first_non_finite
                .get_or_insert(NonFiniteAt { index, kind });
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_types_sum_units_in_index_order_and_agree_on_exact_values() {
        let m32 = [1.0f32, -2.0, 3.0, 0.5, 4.0, -1.5];
        let m64 = m32.map(f64::from);
        assert_eq!(f32::row_sum_squares(&m32, 3), f64::row_sum_squares(&m64, 3));
        assert_eq!(
            f32::column_sum_squares(&m32, 2, 3),
            f64::column_sum_squares(&m64, 2, 3)
        );
        assert_eq!(f64::column_sum_squares(&m64, 2, 3), vec![1.25, 20.0, 11.25]);
        assert_eq!(f32::stats(&m32), f64::stats(&m64));
    }

    #[test]
    fn f64_stats_count_and_locate_non_finite_values() {
        let s = f64_stats(&[1.0, f64::NEG_INFINITY, f64::NAN, -2.0]);
        assert_eq!((s.nan_count, s.inf_count), (1, 1));
        assert_eq!(
            s.first_non_finite,
            Some(NonFiniteAt {
                index: 1,
                kind: NonFiniteKind::NegInf
            })
        );
        assert_eq!((s.sum_squares, s.sum_abs, s.max_abs), (5.0, 3.0, 2.0));
    }

    #[test]
    fn a_factor_rounds_to_the_type_it_is_applied_in() {
        let x = 1.0 + 2f64.powi(-40);
        assert_eq!(f32::from_f64(x).to_f64(), 1.0);
        assert_eq!(f64::from_f64(x).to_f64(), x);
    }
}
