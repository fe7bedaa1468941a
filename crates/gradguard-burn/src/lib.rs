//! # gradguard-burn
//!
//! gradguard for [Burn](https://burn.dev) 0.22: the core [`gradguard::Gradients`] view over Burn's
//! `GradientsParams` ([`BurnGradients`]), [`GuardedOptimizer`] — one call that runs the guard and
//! steps any Burn optimizer, or does not — and, with the `learner` feature, `LearnerGuard` for
//! burn-train's `Learner`.

#![deny(missing_docs)]

mod collect;
pub mod faults;
#[cfg(feature = "wgpu")]
mod launches;
#[cfg(feature = "learner")]
mod learner;
mod on_device;
mod padded;
mod step;
mod update;
mod view;

pub use collect::parameter_names;
#[cfg(feature = "wgpu")]
pub use launches::count_launches;
#[cfg(feature = "learner")]
pub use learner::LearnerGuard;
pub use step::{GuardedOptimizer, GuardedStep, Stopped};
pub use view::{BurnGradients, Placement};
