//! The depth profile: how the gradient norm changes from the output layer back to the input.

use serde::{Deserialize, Serialize};

use crate::stats::TensorStats;

/// The gradient norm of one layer (all its tensors together).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerGradNorm {
    /// Layer name: the tensor name without its last component (`layers.3.weight` → `layers.3`).
    pub layer: String,
    /// ‖g‖₂ over the layer's tensors.
    pub norm: f64,
}

/// Per-layer norms along the network and how they grow going backwards.
///
/// Back-propagation multiplies the gradient by one Jacobian per layer, so in an exploding network
/// the norm grows geometrically from the output towards the input. With layers ordered input →
/// output (`n_0 … n_{L-1}`): `ratios[k] = n_k / n_{k+1}` is the growth across one layer going
/// backwards; `growth_factor` is their geometric mean (> 1: exploding, < 1: vanishing); and
/// `growth_onset` is the layer nearest the output from which every step back to the input grows by
/// more than `1 + tolerance` — where the explosion starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DepthProfile {
    /// Layers in model order with their norms.
    pub layers: Vec<LayerGradNorm>,
    /// `ratios[k] = layers[k].norm / layers[k+1].norm`.
    pub ratios: Vec<f64>,
    /// Geometric mean of the finite, positive ratios.
    pub growth_factor: Option<f64>,
    /// Index into `layers` of the growth onset.
    pub growth_onset: Option<usize>,
}

/// The layer a tensor belongs to: its name without the last `.`-separated component.
pub fn layer_of(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(layer, _)| layer)
}

/// Builds the profile from tensor names (in model order) and their statistics.
pub fn depth_profile(names: &[&str], stats: &[TensorStats], tolerance: f64) -> DepthProfile {
    let mut layers: Vec<(String, f64, bool)> = Vec::new();
    for (name, s) in names.iter().zip(stats) {
        let layer = layer_of(name);
        let finite = s.is_finite();
        match layers.iter_mut().find(|(l, _, _)| l == layer) {
            Some(entry) => {
                entry.1 += s.sum_squares;
                entry.2 &= finite;
            }
            None => layers.push((layer.to_string(), s.sum_squares, finite)),
        }
    }
    let layers = layers
        .into_iter()
        .map(|(layer, sq, finite)| LayerGradNorm {
            layer,
            norm: if finite { sq.sqrt() } else { f64::NAN },
        })
        .collect();
    DepthProfile::from_layers(layers, tolerance)
}

impl DepthProfile {
    /// The profile of per-layer norms already measured (in model order, input → output): their
    /// ratios, growth factor and the onset of growth more than `1 + tolerance` per layer.
    pub fn from_layers(layers: Vec<LayerGradNorm>, tolerance: f64) -> DepthProfile {
        let ratios: Vec<f64> = layers.windows(2).map(|w| w[0].norm / w[1].norm).collect();
        let logs: Vec<f64> = ratios
            .iter()
            .filter(|r| r.is_finite() && **r > 0.0)
            .map(|r| r.ln())
            .collect();
        let growth_factor =
            (!logs.is_empty()).then(|| (logs.iter().sum::<f64>() / logs.len() as f64).exp());
        let growing = |r: &f64| *r > 1.0 + tolerance;
        let growth_onset = if ratios.first().is_some_and(growing) {
            let run = ratios.iter().take_while(|r| growing(r)).count();
            Some(run)
        } else {
            None
        };
        DepthProfile {
            layers,
            ratios,
            growth_factor,
            growth_onset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_with_norm(n: f64) -> TensorStats {
        TensorStats {
            len: 1,
            sum_squares: n * n,
            ..Default::default()
        }
    }

    #[test]
    fn geometric_growth_is_measured_and_onset_found() {
        // Norms input → output: 64, 32, 16, 8, 8, 8 — growth ×2 per layer back from layer 3.
        let norms = [64.0, 32.0, 16.0, 8.0, 8.0, 8.0];
        let names: Vec<String> = (0..6).map(|i| format!("layers.{i}.weight")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let stats: Vec<TensorStats> = norms.iter().map(|&n| stats_with_norm(n)).collect();
        let p = depth_profile(&names, &stats, 0.1);
        assert_eq!(p.layers[0].layer, "layers.0");
        assert_eq!(p.ratios, vec![2.0, 2.0, 2.0, 1.0, 1.0]);
        assert_eq!(p.growth_onset, Some(3));
        let expected = (8.0f64.ln() / 5.0).exp();
        assert!((p.growth_factor.unwrap() - expected).abs() < 1e-12);
    }

    #[test]
    fn weight_and_bias_form_one_layer() {
        let names = ["l.0.weight", "l.0.bias", "l.1.weight"];
        let stats = [
            stats_with_norm(3.0),
            stats_with_norm(4.0),
            stats_with_norm(5.0),
        ];
        let p = depth_profile(&names, &stats, 0.0);
        assert_eq!(p.layers.len(), 2);
        assert_eq!(p.layers[0].norm, 5.0);
        assert_eq!(p.ratios, vec![1.0]);
        assert_eq!(p.growth_onset, None);
    }
}
