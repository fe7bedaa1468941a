//! The gradient depth profile at initialization, over several batches.

use serde::{Deserialize, Serialize};

use crate::detect::{DepthProfile, LayerGradNorm};

/// Per-layer gradient norms at initialization, combined over batches.
///
/// Each layer's norm is the geometric mean of its norms over the batches (growth is a product
/// of per-layer factors, so its average belongs in log space); the combined profile's ratios,
/// growth factor and onset follow from those means ([`DepthProfile::from_layers`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileSummary {
    /// The combined profile, layers in model order (input → output).
    pub profile: DepthProfile,
    /// Batches measured.
    pub batches: usize,
    /// The smallest and largest per-batch growth factor (`None`: no batch had one).
    pub growth_range: Option<(f64, f64)>,
    /// The first layer whose gradient was not finite in some batch.
    pub non_finite_layer: Option<String>,
}

impl ProfileSummary {
    /// Combines per-batch profiles of the same model (same layers, same order); growth is
    /// "onset" when a layer grows the gradient by more than `1 + tolerance` going back.
    ///
    /// # Panics
    /// If the profiles do not list the same layers.
    pub fn combine(profiles: &[DepthProfile], tolerance: f64) -> ProfileSummary {
        let first = profiles.first().map_or(&[][..], |p| &p.layers[..]);
        for p in profiles {
            assert!(
                p.layers.len() == first.len()
                    && p.layers.iter().zip(first).all(|(a, b)| a.layer == b.layer),
                "every batch's profile lists the model's layers in the same order"
            );
        }
        let non_finite_layer = first
            .iter()
            .enumerate()
            .find(|(i, _)| profiles.iter().any(|p| !p.layers[*i].norm.is_finite()))
            .map(|(_, l)| l.layer.clone());
        let layers = first
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let logs: Vec<f64> = profiles.iter().map(|p| p.layers[i].norm.ln()).collect();
                LayerGradNorm {
                    layer: l.layer.clone(),
                    norm: (logs.iter().sum::<f64>() / logs.len() as f64).exp(),
                }
            })
            .collect();
        let factors = profiles.iter().filter_map(|p| p.growth_factor);
        let growth_range = factors.fold(None, |range: Option<(f64, f64)>, g| {
            Some(range.map_or((g, g), |(lo, hi)| (lo.min(g), hi.max(g))))
        });
        ProfileSummary {
            profile: DepthProfile::from_layers(layers, tolerance),
            batches: profiles.len(),
            growth_range,
            non_finite_layer,
        }
    }

    /// The input-side layer's gradient norm over the output-side layer's: above 1 the gradient
    /// grows on its way back to the input, below 1 it fades; 0 where no gradient reaches the
    /// input side at all (`None` with fewer than two layers, an output-side norm of zero, or a
    /// norm that is not finite).
    pub fn input_to_output(&self) -> Option<f64> {
        let layers = &self.profile.layers;
        let (first, last) = (layers.first()?, layers.last()?);
        let ratio = first.norm / last.norm;
        (layers.len() > 1 && ratio.is_finite() && ratio >= 0.0).then_some(ratio)
    }

    /// The layer where growth toward the input starts, if it does.
    pub fn growth_onset_layer(&self) -> Option<&str> {
        let onset = self.profile.growth_onset?;
        self.profile.layers.get(onset).map(|l| l.layer.as_str())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A profile of layers `layers.0 …` with these norms, growth tolerance 0.1.
    pub(crate) fn profile(norms: &[f64]) -> DepthProfile {
        let layers = norms
            .iter()
            .enumerate()
            .map(|(i, &norm)| LayerGradNorm {
                layer: format!("layers.{i}"),
                norm,
            })
            .collect();
        DepthProfile::from_layers(layers, 0.1)
    }

    #[test]
    fn norms_are_averaged_in_log_space() {
        let s =
            ProfileSummary::combine(&[profile(&[8.0, 2.0, 1.0]), profile(&[2.0, 2.0, 4.0])], 0.1);
        let norms: Vec<f64> = s.profile.layers.iter().map(|l| l.norm).collect();
        assert_eq!(norms, vec![4.0, 2.0, 2.0]);
        assert_eq!(s.input_to_output(), Some(2.0));
        assert_eq!(s.profile.growth_onset, Some(1));
        assert_eq!(s.growth_onset_layer(), Some("layers.1"));
        let (lo, hi) = s.growth_range.unwrap();
        assert!((lo - 0.5f64.sqrt()).abs() < 1e-12 && (hi - 8f64.sqrt()).abs() < 1e-12);
        assert_eq!(s.non_finite_layer, None);
    }

    #[test]
    fn a_non_finite_layer_is_named() {
        let s = ProfileSummary::combine(&[profile(&[1.0, 1.0]), profile(&[f64::NAN, 1.0])], 0.1);
        assert_eq!(s.non_finite_layer.as_deref(), Some("layers.0"));
        assert_eq!(s.input_to_output(), None);
    }

    #[test]
    #[should_panic(expected = "same order")]
    fn profiles_of_different_models_are_refused() {
        let mut other = profile(&[1.0, 1.0]);
        other.layers[1].layer = "head".into();
        ProfileSummary::combine(&[profile(&[1.0, 1.0]), other], 0.1);
    }
}
