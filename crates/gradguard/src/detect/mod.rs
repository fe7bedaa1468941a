//! Detectors: non-finite values, spikes in a signal, and the depth profile of gradient norms.

mod depth;
mod non_finite;
mod spike;

pub use depth::{DepthProfile, LayerGradNorm, depth_profile, layer_of};
pub use non_finite::{NonFiniteFinding, find_non_finite};
pub use spike::{SpikeCheck, SpikeConfig, SpikeDetector};
