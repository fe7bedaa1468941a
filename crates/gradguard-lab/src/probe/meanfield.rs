//! Mean-field theory of signal propagation in wide random networks (Poole et al. 2016;
//! Schoenholz et al. 2017). With weights `W ~ N(0, σ_w²/N)` and biases `b ~ N(0, σ_b²)`, the
//! pre-activation variance follows `q_{l+1} = σ_w² E_z[φ(√q_l z)²] + σ_b²` (z standard normal)
//! towards a fixed point `q*`, and a gradient's squared norm is multiplied per layer by
//! `χ = σ_w² E_z[φ'(√q* z)²]`. `χ = 1` is the critical line — the edge of chaos — and the
//! per-layer log growth of the gradient norm is `λ = ½ ln χ`.

use serde::{Deserialize, Serialize};

use crate::models::Activation;

/// Nodes of the Gaussian integrals (composite Simpson on [−10, 10]: the tails beyond carry less
/// than 1e-22 of the mass; tanh's integrands are smooth, so the error is far below 1e-10).
/// ReLU and the identity use their closed forms.
const NODES: usize = 1601;
const LIMIT: f64 = 10.0;
/// The smallest variance the probe feeds a network (a fixed point at 0 is approached, never
/// reached, by real inputs).
pub const MIN_VARIANCE: f64 = 1e-4;

/// `E_z[f(z)]` for a standard normal `z`.
pub fn gaussian_expectation(f: impl Fn(f64) -> f64) -> f64 {
    let h = 2.0 * LIMIT / (NODES - 1) as f64;
    let density = |z: f64| (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let mut sum = 0.0;
    for i in 0..NODES {
        let z = -LIMIT + i as f64 * h;
        let weight = if i == 0 || i == NODES - 1 {
            1.0
        } else if i % 2 == 1 {
            4.0
        } else {
            2.0
        };
        sum += weight * f(z) * density(z);
    }
    sum * h / 3.0
}

fn phi(activation: Activation, x: f64) -> f64 {
    match activation {
        Activation::Tanh => x.tanh(),
        Activation::Relu => x.max(0.0),
        Activation::Linear => x,
    }
}

fn phi_prime(activation: Activation, x: f64) -> f64 {
    match activation {
        Activation::Tanh => 1.0 - x.tanh().powi(2),
        Activation::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::Linear => 1.0,
    }
}

/// `E[φ(√q z)²]`.
fn second_moment(activation: Activation, q: f64) -> f64 {
    let q = q.max(0.0);
    match activation {
        Activation::Relu => q / 2.0,
        Activation::Linear => q,
        Activation::Tanh => {
            let root = q.sqrt();
            gaussian_expectation(|z| phi(activation, root * z).powi(2))
        }
    }
}

/// The variance map `q ↦ σ_w² E[φ(√q z)²] + σ_b²`.
pub fn variance_map(activation: Activation, sigma_w: f64, bias_var: f64, q: f64) -> f64 {
    sigma_w * sigma_w * second_moment(activation, q) + bias_var
}

/// The fixed point `q*` reached from `q = 1`, or `None` when the variance grows without bound.
pub fn fixed_point(activation: Activation, sigma_w: f64, bias_var: f64) -> Option<f64> {
    let mut q = 1.0;
    for _ in 0..5000 {
        let next = variance_map(activation, sigma_w, bias_var, q);
        if !(next < 1e8) {
            return None;
        }
        // Converged, or creeping towards 0 by less than 1e-10 a layer (tanh near σ_w = 1
        // without bias, where q* = 0 is approached like 1/l): close enough for the probe, which
        // floors input variances at 1e-4 anyway.
        if (next - q).abs() <= 1e-12 * q.max(1e-12) || (next - q).abs() < 1e-10 {
            return Some(next);
        }
        q = next;
    }
    // Slow convergence towards 0 (tanh at σ_w ≤ 1, σ_b = 0) or a neutral map: where it got.
    Some(q)
}

/// `χ = σ_w² E[φ'(√q z)²]` at variance `q`.
pub fn chi(activation: Activation, sigma_w: f64, q: f64) -> f64 {
    let slope = match activation {
        Activation::Relu => 0.5,
        Activation::Linear => 1.0,
        Activation::Tanh => {
            let root = q.max(0.0).sqrt();
            gaussian_expectation(|z| phi_prime(activation, root * z).powi(2))
        }
    };
    sigma_w * sigma_w * slope
}

/// What the theory predicts for one (σ_w, σ_b²).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Theory {
    /// σ_w: the weights' standard deviation times √fan_in.
    pub sigma_w: f64,
    /// σ_b².
    pub bias_var: f64,
    /// The variance fixed point (`None`: the variance explodes).
    pub q_star: Option<f64>,
    /// χ at the fixed point.
    pub chi: f64,
    /// `½ ln χ`: the predicted per-layer log growth of the gradient norm.
    pub lyapunov: f64,
}

/// The theory's prediction for `activation` at (σ_w, σ_b²).
pub fn predict(activation: Activation, sigma_w: f64, bias_var: f64) -> Theory {
    let q_star = fixed_point(activation, sigma_w, bias_var);
    // Without a fixed point (ReLU or linear above critical) χ is taken at large q: it does not
    // depend on q for these.
    let chi = chi(activation, sigma_w, q_star.unwrap_or(1.0));
    Theory {
        sigma_w,
        bias_var,
        q_star,
        chi,
        lyapunov: 0.5 * chi.ln(),
    }
}

/// The σ_w with `χ = 1` at the fixed point, for bias variance `bias_var` (bisection).
pub fn critical_gain(activation: Activation, bias_var: f64) -> f64 {
    let (mut lo, mut hi) = (0.05, 8.0);
    for _ in 0..40 {
        let mid = 0.5 * (lo + hi);
        if predict(activation, mid, bias_var).chi < 1.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Nodes per axis of the two-dimensional Gaussian integrals of the correlation map (Simpson on
/// [−10, 10] in each direction; 401² evaluations, smooth integrands).
const NODES_2D: usize = 401;

/// `E[f(z₁, z₂)]` for independent standard normals `z₁, z₂` (product Simpson rule).
fn gaussian_expectation_2d(f: impl Fn(f64, f64) -> f64) -> f64 {
    let h = 2.0 * LIMIT / (NODES_2D - 1) as f64;
    let weight = |i: usize| {
        if i == 0 || i == NODES_2D - 1 {
            1.0
        } else if i % 2 == 1 {
            4.0
        } else {
            2.0
        }
    };
    let density = |z: f64| (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let nodes: Vec<(f64, f64)> = (0..NODES_2D)
        .map(|i| {
            let z = -LIMIT + i as f64 * h;
            (z, weight(i) * density(z) * h / 3.0)
        })
        .collect();
    let mut sum = 0.0;
    for &(z1, w1) in &nodes {
        let mut inner = 0.0;
        for &(z2, w2) in &nodes {
            inner += w2 * f(z1, z2);
        }
        sum += w1 * inner;
    }
    sum
}

/// The correlation map of two inputs at the variance fixed point `q*` (Poole et al. 2016,
/// eq. 5): `c ↦ (σ_w² E[φ(u₁) φ(u₂)] + σ_b²) / q*` with `u₁ = √q* z₁`,
/// `u₂ = √q* (c z₁ + √(1−c²) z₂)`.
fn correlation_map(activation: Activation, sigma_w: f64, bias_var: f64, q: f64, c: f64) -> f64 {
    let root = q.sqrt();
    let side = (1.0 - c * c).max(0.0).sqrt();
    let e = gaussian_expectation_2d(|z1, z2| {
        phi(activation, root * z1) * phi(activation, root * (c * z1 + side * z2))
    });
    (sigma_w * sigma_w * e + bias_var) / q
}

/// The correlation depth ξ_c of Schoenholz et al. 2017 (eq. 9): how many layers two inputs stay
/// distinguishable, `ξ_c = −1 / ln χ_c` with `χ_c = σ_w² E[φ'(u₁) φ'(u₂)]` at the correlation
/// fixed point c*. In the ordered phase (χ₁ = χ at q* below 1) c* = 1 and χ_c = χ₁; in the
/// chaotic phase c* < 1 is found by iterating the correlation map. Infinite on the critical
/// line; `None` where the variance has no fixed point (ReLU or linear above critical).
///
/// Schoenholz et al. found networks trainable to a depth of about 6 ξ_c and not beyond.
pub fn correlation_depth(activation: Activation, sigma_w: f64, bias_var: f64) -> Option<f64> {
    let q = fixed_point(activation, sigma_w, bias_var)?.max(f64::MIN_POSITIVE);
    let chi_1 = chi(activation, sigma_w, q);
    let chi_c = if chi_1 < 1.0 {
        chi_1
    } else {
        let mut c = 0.5;
        for _ in 0..200 {
            let next = correlation_map(activation, sigma_w, bias_var, q, c).clamp(-1.0, 1.0);
            let done = (next - c).abs() < 1e-9;
            c = next;
            if done {
                break;
            }
        }
        let root = q.sqrt();
        let side = (1.0 - c * c).max(0.0).sqrt();
        sigma_w
            * sigma_w
            * gaussian_expectation_2d(|z1, z2| {
                phi_prime(activation, root * z1)
                    * phi_prime(activation, root * (c * z1 + side * z2))
            })
    };
    let log = chi_c.ln();
    Some(if log < 0.0 { -1.0 / log } else { f64::INFINITY })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_correlation_depth_diverges_at_the_edge_of_chaos() {
        // Ordered tanh without bias: c* = 1, χ_c = σ_w² (q* → 0), ξ_c = −1 / ln σ_w².
        let xi = correlation_depth(Activation::Tanh, 0.8, 0.0).unwrap();
        assert!((xi + 1.0 / (0.64f64).ln()).abs() < 1e-3, "{xi}");
        // Chaotic without bias: c* = 0 (tanh is odd), χ_c = σ_w² E[φ'(√q* z)]².
        let q = fixed_point(Activation::Tanh, 2.0, 0.0).unwrap();
        let slope = gaussian_expectation(|z| phi_prime(Activation::Tanh, q.sqrt() * z));
        let expected = -1.0 / (4.0 * slope * slope).ln();
        let xi = correlation_depth(Activation::Tanh, 2.0, 0.0).unwrap();
        assert!(
            (xi - expected).abs() < 1e-3 * expected,
            "{xi} vs {expected}"
        );
        // Deeper towards the critical line, from both sides.
        let depth = |g| correlation_depth(Activation::Tanh, g, 0.0).unwrap();
        assert!(depth(0.6) < depth(0.9) && depth(0.9) < depth(0.99));
        assert!(depth(1.01) > depth(1.2) && depth(1.2) > depth(2.0) && depth(2.0) > depth(4.0));
    }

    #[test]
    fn gaussian_moments_are_exact_to_high_precision() {
        assert!((gaussian_expectation(|_| 1.0) - 1.0).abs() < 1e-12);
        assert!((gaussian_expectation(|z| z * z) - 1.0).abs() < 1e-12);
        assert!((gaussian_expectation(|z| z.powi(4)) - 3.0).abs() < 1e-10);
        // E[relu(z)²] = 1/2.
        assert!((gaussian_expectation(|z| z.max(0.0).powi(2)) - 0.5).abs() < 1e-6);
    }

    #[test]
    fn the_critical_gains_of_the_literature() {
        // tanh without bias: χ = σ_w² at q* = 0 → 1.
        assert!((critical_gain(Activation::Tanh, 0.0) - 1.0).abs() < 1e-3);
        // ReLU: χ = σ_w²/2 whatever q → √2 (He et al. 2015).
        assert!((critical_gain(Activation::Relu, 0.0) - 2f64.sqrt()).abs() < 1e-3);
        assert!((critical_gain(Activation::Relu, 0.05) - 2f64.sqrt()).abs() < 1e-3);
        // tanh with σ_b² = 0.05: 1.327 (DESIGN.md; Schoenholz et al. 2017, Fig. 1).
        let g = critical_gain(Activation::Tanh, 0.05);
        assert!((g - 1.327).abs() < 0.01, "{g}");
        assert!((critical_gain(Activation::Linear, 0.0) - 1.0).abs() < 1e-3);
    }

    #[test]
    fn the_exponent_changes_sign_across_the_critical_line() {
        assert!(predict(Activation::Tanh, 0.8, 0.0).lyapunov < 0.0);
        assert!(predict(Activation::Tanh, 1.5, 0.0).lyapunov > 0.0);
        assert!(predict(Activation::Relu, 1.2, 0.0).lyapunov < 0.0);
        assert!(predict(Activation::Relu, 1.6, 0.0).lyapunov > 0.0);
    }
}
