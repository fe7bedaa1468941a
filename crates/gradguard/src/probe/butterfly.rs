//! Two copies of a model ε apart, trained on the same batches: how fast they separate.

use serde::{Deserialize, Serialize};

/// The butterfly experiment on training itself: the weights `θ_a` and a copy `θ_b` perturbed
/// by a relative ε take the same optimizer steps on the same batches, and their distance is
/// followed step by step. Its growth per step is the finite-time Lyapunov exponent of the
/// training map at this rate: well above 0, tiny differences (another seed, another batch
/// order) grow into different runs — the sensitivity to initial conditions that precedes a
/// blow-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Butterfly {
    /// The learning rate both copies trained at.
    pub rate: f64,
    /// The relative perturbation of the copy.
    pub epsilon: f64,
    /// ‖θ_a − θ_b‖ / ‖θ_a‖ before the first step and after each step (`None`: not finite).
    pub separation: Vec<Option<f64>>,
}

impl Butterfly {
    /// The mean log growth of the separation per step, `ln(d_k / d_0) / k` (`None` without a
    /// step, or where the separation is zero or not finite).
    pub fn exponent(&self) -> Option<f64> {
        let first = (*self.separation.first()?)?;
        let last = (*self.separation.last()?)?;
        let steps = self.separation.len() - 1;
        let e = (last / first).ln() / steps as f64;
        (steps > 0 && e.is_finite()).then_some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exponent_is_the_mean_log_growth_per_step() {
        let b = Butterfly {
            rate: 0.1,
            epsilon: 1e-6,
            separation: vec![Some(1e-6), Some(2e-6), Some(4e-6), Some(8e-6)],
        };
        assert!((b.exponent().unwrap() - 2f64.ln()).abs() < 1e-12);
        let broken = Butterfly {
            separation: vec![Some(1e-6), None],
            ..b.clone()
        };
        assert_eq!(broken.exponent(), None);
        let unstepped = Butterfly {
            separation: vec![Some(1e-6)],
            ..b
        };
        assert_eq!(unstepped.exponent(), None);
    }
}
