//! Maxima from a collective that can only sum.
//!
//! NCCL's all-reduce, and with it Burn's `burn::tensor::distributed::all_reduce`, offers sum and
//! mean but no maximum. A maximum still comes out of one sum by gathering: device `r` of `w`
//! writes its `n` values into slot `r` of a `w · n` buffer of zeros, the all-reduce sum of those
//! buffers holds every device's values side by side (x + 0 = x exactly, for ±inf and NaN too,
//! and no slot receives two non-zero terms), and each device takes the maximum of the slots.
//! The buffer is `w` times larger than the values, which are a few scalars per tensor.

/// The NaN-propagating maximum every collective here uses: a NaN on any device makes the
/// reduced value NaN, so a poisoned statistic is never hidden by a larger finite one.
pub fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if b > a {
        b
    } else {
        a
    }
}

/// The element-wise maximum across `world` devices of `values`, computed with one all-reduce
/// *sum* (`all_reduce_sum`, called once with a buffer of `world · values.len()` entries) by
/// gathering each device's values in its own slot. `rank` is this device's position in
/// `0..world`; every device must call with the same `world` and the same number of values.
///
/// # Panics
/// If `rank >= world`: a caller's bookkeeping error, not a runtime condition.
pub fn all_reduce_max_by_sum(
    values: &mut [f64],
    rank: usize,
    world: usize,
    all_reduce_sum: impl FnOnce(&mut [f64]),
) {
    assert!(
        rank < world,
        "rank {rank} is not below the world size {world}"
    );
    let n = values.len();
    let mut slots = vec![0.0; world * n];
    slots[rank * n..(rank + 1) * n].copy_from_slice(values);
    all_reduce_sum(&mut slots);
    for (i, v) in values.iter_mut().enumerate() {
        *v = (0..world)
            .map(|r| slots[r * n + i])
            .fold(f64::NEG_INFINITY, nan_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_wins_either_side_and_infinities_order() {
        assert!(nan_max(f64::NAN, 1.0).is_nan());
        assert!(nan_max(1.0, f64::NAN).is_nan());
        assert_eq!(nan_max(f64::NEG_INFINITY, -3.0), -3.0);
        assert_eq!(nan_max(2.0, f64::INFINITY), f64::INFINITY);
    }
}
