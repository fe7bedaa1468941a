//! # gradguard-lab
//!
//! Reproduces exploding gradients on real tasks and measures what each classic remedy does:
//! a deep MLP on the UCI handwritten digits (shipped in this crate's `data/digits`), and vanilla RNN, LSTM
//! and GRU networks on the adding and temporal-order problems. A run ([`train`]) writes a run
//! directory with per-step telemetry, checkpoints it can resume from, and a summary; a sweep
//! ([`sweep`]) runs a grid in parallel and ranks remedies by their measured effect; the
//! [`probe`] predicts explosion before training from the network's Jacobians, beside
//! mean-field theory; [`faults`] lets tests make a run suffer what the guard must survive.
//!
//! One short run in memory — the default configuration explodes on purpose; the default guard
//! keeps it finite:
//!
//! ```
//! use gradguard_lab::tasks::Task;
//! use gradguard_lab::{Remedy, RunConfig, TrainOptions, TrainOutcome, train};
//!
//! let config = RunConfig {
//!     depth: 8,
//!     steps: 10,
//!     remedies: Remedy::parse_list("guard")?,
//!     ..RunConfig::for_task(Task::Mlp)
//! };
//! let TrainOutcome::Finished(summary) = train(&config, &TrainOptions::default())? else {
//!     unreachable!("not interrupted");
//! };
//! assert_eq!(summary.steps, 10);
//! assert!(summary.final_loss.is_some(), "{:?}", summary.outcome());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

pub mod checkpoint;
mod config;
mod error;
pub mod faults;
pub mod lr_find;
pub mod models;
pub mod objective;
pub mod optimizer;
mod plan;
mod precision;
pub mod probe;
mod progress;
pub mod reproduce;
mod run;
mod run_dir;
pub mod sweep;
pub mod tasks;
pub mod through_time;
mod train;

pub use config::{LmSettings, RunConfig};
pub use error::LabError;
pub use gradguard_report::remedy;
pub use gradguard_report::remedy::{Family, Remedy, RemedyList};
pub use plan::{ModelPlan, Plan};
pub use precision::Precision;
pub use run_dir::{CONFIG_FILE, TENSORBOARD_DIR, load_run_model};
pub use train::{TrainOptions, TrainOutcome, check, train};
