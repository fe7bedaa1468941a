//! The gradient along a path the parameters do not show: through time in a recurrent net.
//!
//! A recurrent net applies the same weights at every time step, so its gradient depth profile
//! (one entry per layer of parameters) cannot see the gradient fade on its way back through the
//! sequence: each weight's gradient is a sum over the steps, dominated by the last ones.
//! Backpropagation through time multiplies ∂L/∂h_t by one Jacobian ∂h_t/∂h_{t−1} per step, so
//! ‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ is the recurrent analogue of the input-to-output ratio of a deep net's
//! profile (Pascanu, Mikolov & Bengio 2013, §2). An adapter measures the norms along the path
//! where its user can name the path (e.g. `gradguard_burn::probe::probe_model_along`); the
//! verdict reads the ratio as it reads the profile's.

use serde::{Deserialize, Serialize};

/// The first over the last of the summed norms along a path, over one or more batches (each
/// batch's norms in path order, input side first): 0 where no gradient reaches the start; `None`
/// where a batch has fewer than two points, a norm is not finite, or the end's norm is zero.
pub fn path_ratio(batches: &[Vec<f64>]) -> Option<f64> {
    let (mut first, mut last) = (0.0, 0.0);
    for norms in batches {
        if norms.len() < 2 || norms.iter().any(|n| !n.is_finite()) {
            return None;
        }
        first += norms[0];
        last += norms[norms.len() - 1];
    }
    let ratio = first / last;
    (!batches.is_empty() && ratio.is_finite() && ratio >= 0.0).then_some(ratio)
}

/// The gradient reaching the start of a path relative to its end (see [`path_ratio`]), at
/// initialization and after the trial at the probed rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathReading {
    /// What one point of the path is, for sentences ("time step": "the first time step").
    pub point: String,
    /// Over the profile's batches at initialization.
    pub at_init: Option<f64>,
    /// On the reference batch after the trial at the probed rate (`None`: not measured, or the
    /// trial stopped at a non-finite loss).
    pub after_trial: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sums_the_batches_before_dividing() {
        let r = path_ratio(&[vec![1e-3, 0.5, 1.0], vec![3e-3, 1.0, 3.0]]).unwrap();
        assert!((r - 1e-3).abs() < 1e-12, "{r}");
        assert_eq!(path_ratio(&[vec![0.0, 2.0]]), Some(0.0));
    }

    #[test]
    fn no_reading_from_a_point_a_dead_end_or_a_non_finite_norm() {
        assert_eq!(path_ratio(&[]), None);
        assert_eq!(path_ratio(&[vec![1.0]]), None);
        assert_eq!(path_ratio(&[vec![1.0, 0.0]]), None);
        assert_eq!(path_ratio(&[vec![1.0, 1.0], vec![f64::NAN, 1.0]]), None);
        assert_eq!(path_ratio(&[vec![1.0, f64::INFINITY]]), None);
    }

    proptest! {
        #[test]
        fn scaling_every_norm_leaves_the_ratio(
            norms in proptest::collection::vec(1e-6f64..1e3, 2..40),
            scale in 1e-3f64..1e3,
        ) {
            let plain = path_ratio(std::slice::from_ref(&norms)).unwrap();
            let scaled: Vec<f64> = norms.iter().map(|n| n * scale).collect();
            let r = path_ratio(&[scaled]).unwrap();
            prop_assert!((r / plain - 1.0).abs() < 1e-9, "{} {}", r, plain);
        }
    }
}
