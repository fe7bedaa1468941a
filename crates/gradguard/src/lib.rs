//! # gradguard
//!
//! Framework-free defences against exploding gradients, for the moment between `backward()` and
//! the optimizer step:
//!
//! - [`Gradients`]: a view of a framework's named gradient tensors; [`HostGradients`] holds them in
//!   host memory. [`Gradients::stats`] reads every byte once and yields Σg², Σ|g|, max|g| and the
//!   non-finite count per tensor, accumulated so that finite f32 gradients never overflow.
//! - [`rules`]: clip by value, per-tensor norm, global p-norm (PyTorch semantics), AGC, AutoClip,
//!   ZClip; zero non-finite values; skip large updates; composed by [`rules::Chain`].
//! - [`detect`]: non-finite values by tensor and index, spikes against a rolling window, and the
//!   depth profile of gradient norms.
//! - [`Guard`]: one [`Decision`] per step — apply, skip, roll back — with a learning-rate
//!   multiplier, counters, a limit on bad steps in a row, and a [`StepReport`]. Its state is plain
//!   data, so a resumed run decides exactly as an uninterrupted one.
//!
//! ```
//! use gradguard::{Guard, GuardConfig, HostGradients, HostTensor, Decision};
//! use gradguard::rules::{Chain, ClipByGlobalNorm, Rule};
//!
//! let grads = vec![HostTensor::new("layer.weight", vec![2, 2], vec![3.0, 0.0, 0.0, 4.0])?];
//! let mut grads = HostGradients::new(grads)?;
//! let rules: Vec<Box<dyn Rule>> = vec![Box::new(ClipByGlobalNorm::new(1.0)?)];
//! let mut guard = Guard::new(GuardConfig::default(), Chain::new(rules)?)?;
//! let report = guard.step(&mut grads, Some(0.7))?;
//! assert_eq!(report.decision, Decision::Apply);
//! assert_eq!(report.norm_before, 5.0);
//! assert!((report.norm_after - 1.0).abs() < 1e-6);
//! # Ok::<(), gradguard::GuardError>(())
//! ```

#![deny(missing_docs)]
#![deny(unsafe_code)]

mod collective_gather;
mod collective_local;
pub mod detect;
mod error;
mod gradients;
mod guard;
mod host;
pub mod host_float;
pub mod kernel;
pub mod loss_scale;
pub mod norm;
pub mod probe;
pub mod rules;
#[cfg(feature = "safetensors")]
pub mod safetensors_io;
pub mod shard;
mod stats;

pub use error::{GuardError, Result};

pub use collective_gather::{all_reduce_max_by_sum, nan_max};
pub use collective_local::ThreadCollective;
pub use gradients::{Gradients, Source, UnitLayout, UnitSpan};
pub use guard::{
    Decision, DevicePlan, DeviceRule, Guard, GuardConfig, GuardCounters, GuardState, LrBackoff,
    NonFinitePolicy, NormalizedLimits, OptimizerStep, SpikeAction, StepActions, StepReport,
    TensorReport, UpdateBound, UpdateCheck, UpdateFamily, UpdateMeasure, UpdateNorms, UpdateSpread,
    check_update,
};
pub use host::{F64Gradients, F64Tensor, HostGradients, HostTensor, Values};
pub use host_float::{HostFloat, f64_stats};
pub use loss_scale::{LossScaler, LossScalerConfig, LossScalerState, ScaleUpdate};
pub use norm::NormType;
pub use stats::{NonFiniteAt, NonFiniteKind, TensorStats, combined, first_non_finite};
