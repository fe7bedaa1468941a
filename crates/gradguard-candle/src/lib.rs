//! # gradguard-candle
//!
//! gradguard for [Candle](https://github.com/huggingface/candle) 0.11, which has no gradient
//! clipping of its own: [`CandleGradients`], the core's [`gradguard::Gradients`] view over a
//! `GradStore` and the model's named `Var`s (names from the `VarMap`, `layers.3.weight`), and
//! [`GuardedOptimizer`] — backward, guard, then step any `candle_nn::Optimizer` (SGD, AdamW), or
//! skip, or roll back; and [`probe::probe_varmap`], the model probe (a verdict and the largest
//! safe learning rate before training).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{Linear, Module, ParamsAdamW, VarBuilder, VarMap, AdamW};
//! use gradguard::Guard;
//! use gradguard_candle::GuardedOptimizer;
//!
//! let device = Device::Cpu;
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
//! let layer: Linear = candle_nn::linear(4, 1, vb.pp("head"))?;
//! // The default guard: no rule or threshold to choose.
//! let mut optim = GuardedOptimizer::<AdamW>::new(&varmap, ParamsAdamW::default(), Guard::default())?;
//! for _ in 0..3 {
//!     let x = Tensor::randn(0f32, 1.0, (8, 4), &device)?;
//!     let loss = layer.forward(&x)?.sqr()?.mean_all()?;
//!     let report = optim.step(&loss)?;
//!     assert!(report.norm_before.is_finite());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

mod error;
pub mod probe;
mod step;
mod view;

pub use error::CandleGuardError;
pub use step::{GuardedOptimizer, named_vars};
pub use view::CandleGradients;
