//! # gradguard-burn
//!
//! gradguard for [Burn](https://burn.dev) 0.22: the core [`gradguard::Gradients`] view over Burn's
//! `GradientsParams` ([`BurnGradients`]), [`GuardedOptimizer`] — one call that runs the guard and
//! steps any Burn optimizer, or does not; for SGD, Adam and AdamW [`GuardedOptimizer::fused`]
//! measures the update bound in the optimizer's own pass ([`FusedOptimizer`]), and
//! [`NonBlockingOptimizer`] decides each step on the device and reads its report a step late —
//! [`probe::probe_model`], which says before training
//! whether a model will explode at a rate and which rate is safe, and, with the `learner`
//! feature, `LearnerGuard` for burn-train's `Learner`.
//!
//! Wrap the optimizer once; each step then measures every gradient, clips by the guard's rules,
//! and applies, skips or rolls back ([`GuardedStep::report`] says which and why):
//!
//! ```
//! use burn::nn::LinearConfig;
//! use burn::optim::{GradientsParams, SgdConfig};
//! use burn::tensor::{Device, Distribution, Tensor};
//! use gradguard::Guard;
//! use gradguard_burn::GuardedOptimizer;
//!
//! let device = Device::flex().autodiff();
//! let mut model = LinearConfig::new(4, 1).init(&device);
//! // The default guard: no rule or threshold to choose.
//! let mut optim = GuardedOptimizer::new(SgdConfig::new().init(), Guard::default());
//! for _ in 0..3 {
//!     let x = Tensor::<2>::random([8, 4], Distribution::Default, &device);
//!     let loss = model.forward(x).square().mean();
//!     let grads = GradientsParams::from_grads(loss.backward(), &model);
//!     let step = optim.step(0.1, model, grads, Some(loss)).expect("the guard did not stop");
//!     assert!(step.report.norm_before.is_finite());
//!     model = step.module;
//! }
//! ```

#![deny(missing_docs)]

mod collect;
mod collective;
#[cfg(feature = "cube")]
mod cube;
mod device_ops;
pub mod faults;
mod fused;
#[cfg(feature = "cube")]
mod launches;
#[cfg(feature = "learner")]
mod learner;
mod non_blocking;
mod on_device;
mod padded;
pub mod probe;
mod step;
mod update;
mod view;

pub use collect::parameter_names;
pub use collective::DeviceCollective;
#[cfg(feature = "cube")]
pub use cube::{step_tensors_per_launch, tensors_per_launch, unit_tensors_per_launch};
pub use fused::{AdamMoments, FusedOptimizer, FusedRule};
#[cfg(feature = "cube")]
pub use launches::count_launches;
#[cfg(feature = "learner")]
pub use learner::LearnerGuard;
pub use non_blocking::{NonBlockingOptimizer, NonBlockingStep};
pub use step::{GuardedOptimizer, GuardedStep, Stopped};
pub use view::{BurnGradients, Placement};
