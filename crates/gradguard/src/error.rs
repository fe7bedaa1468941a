//! Typed errors of the core library. Every message carries the data a user needs to act on it.

use thiserror::Error;

/// Everything that can go wrong in gradguard's core.
///
/// Variants that stop training (`NonFiniteGradient`, `NonFiniteLoss`, `GradientSpike`,
/// `TooManyBadSteps`) name the step and, where there is one, the offending tensor.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum GuardError {
    /// A gradient holds NaN or ±inf and the non-finite policy is `error`.
    #[error(
        "non-finite gradient at step {step}: tensor '{tensor}' flat index {index} is {value} ({count} non-finite values in all)"
    )]
    NonFiniteGradient {
        /// Step index (0-based) at which the value was seen.
        step: u64,
        /// Name of the first tensor holding a non-finite value.
        tensor: String,
        /// Flat (row-major) index of the first non-finite value in that tensor.
        index: usize,
        /// The offending value as text: `NaN`, `inf` or `-inf`.
        value: String,
        /// Number of non-finite values across all tensors.
        count: u64,
    },
    /// A parameter that a rule reads (AGC's weights) holds NaN or ±inf: the model itself is
    /// broken, and the non-finite policy decides (this error under `error`, a skipped step under
    /// `skip` and `zero`), never a silent substitute.
    #[error(
        "non-finite parameter at step {step}: tensor '{tensor}' unit {unit} has a {value} norm (read by rule '{rule}')"
    )]
    NonFiniteParameter {
        /// Step index (0-based).
        step: u64,
        /// The rule that read the parameter.
        rule: String,
        /// The parameter tensor's name.
        tensor: String,
        /// The first unit (output neuron or channel) whose weights are not finite.
        unit: usize,
        /// `NaN` or `inf`.
        value: String,
    },
    /// The loss is NaN or ±inf and the non-finite policy is `error`.
    #[error("non-finite loss at step {step}: {loss}")]
    NonFiniteLoss {
        /// Step index.
        step: u64,
        /// The loss value.
        loss: f64,
    },
    /// A spike was detected and the spike action is `stop`.
    #[error("{metric} spike at step {step}: {value:.6e} is above the threshold {threshold:.6e}")]
    GradientSpike {
        /// Step index.
        step: u64,
        /// Which signal spiked: `gradient norm` or `loss`.
        metric: String,
        /// The observed value.
        value: f64,
        /// The detector's threshold (mean + k·std of the window).
        threshold: f64,
    },
    /// The guard saw more consecutive bad steps than its configured limit.
    #[error("gave up at step {step} after {count} consecutive bad steps; last: {reason}")]
    TooManyBadSteps {
        /// Step index.
        step: u64,
        /// Consecutive bad steps counted.
        count: u32,
        /// Why the last step was bad.
        reason: String,
    },
    /// A configuration value is out of range or contradicts another.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A read back from an accelerator failed (the non-blocking step reads a step's statistics
    /// one step late).
    #[error("reading from the device failed: {0}")]
    DeviceRead(String),
    /// A rule chain whose composition cannot work as written.
    #[error("inconsistent rule chain: {0}")]
    InconsistentChain(String),
    /// A tensor's shape, length or name does not fit what the operation needs.
    #[error("tensor '{tensor}': {reason}")]
    BadTensor {
        /// Tensor name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A rule that reads parameters (AGC) ran on gradients that carry none.
    #[error("rule '{rule}' needs the parameters next to the gradients, and none were given")]
    MissingParameters {
        /// Rule name.
        rule: String,
    },
    /// A saved state does not fit the rule or guard it is loaded into.
    #[error("cannot restore state of '{what}': {reason}")]
    BadState {
        /// Rule or component name.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// Dynamic loss scaling overflowed even at its smallest scale: the loss or the model itself
    /// produces inf/NaN, which no scale can fix.
    #[error(
        "loss scale underflow: a scaled gradient overflowed at the smallest scale (next would be {scale:e}, minimum {min_scale:e}); the loss or the model produces inf/NaN on its own"
    )]
    ScaleUnderflow {
        /// The scale the overflow would have set.
        scale: f64,
        /// The configured minimum.
        min_scale: f64,
    },
    /// A gradient file that cannot be read as f32 safetensors.
    #[error("{0}")]
    BadFile(String),
}

impl GuardError {
    /// Whether the error is about the input given (a bad file, flag, config, or state), as opposed
    /// to training going wrong. A command line maps the former to exit code 2.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            GuardError::InvalidConfig(_)
                | GuardError::InconsistentChain(_)
                | GuardError::BadTensor { .. }
                | GuardError::MissingParameters { .. }
                | GuardError::BadState { .. }
                | GuardError::BadFile(_)
        )
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = GuardError> = std::result::Result<T, E>;
