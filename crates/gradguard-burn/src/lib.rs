//! # gradguard-burn
//!
//! gradguard for [Burn](https://burn.dev) 0.22: the core [`gradguard::Gradients`] view over Burn's
//! `GradientsParams` ([`BurnGradients`]), and [`GuardedOptimizer`], one call that runs the guard
//! and steps any Burn optimizer — or does not.

#![deny(missing_docs)]

mod collect;
mod on_device;
mod step;
mod view;

pub use collect::parameter_names;
pub use step::{GuardedOptimizer, GuardedStep, Stopped};
pub use view::{BurnGradients, Placement};
