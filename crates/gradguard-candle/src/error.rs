//! What can go wrong in a guarded Candle step.

use gradguard::GuardError;

/// An error of the guarded step: Candle's, or the guard's stop (which names the step, the
/// tensor and the reason; the weights are as they were before the step).
#[derive(Debug, thiserror::Error)]
pub enum CandleGuardError {
    /// A Candle operation failed (a device error, a loss that is not a scalar, …).
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// The guard stopped training (or a rule refused its input).
    #[error(transparent)]
    Guard(#[from] GuardError),
}
