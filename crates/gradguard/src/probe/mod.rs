//! The model probe's measurements and decisions, framework-free: before the first training step,
//! will this model's gradients explode at this learning rate, and which rate is safe?
//!
//! An adapter (e.g. `gradguard_burn::probe`) runs the model; this module judges what it measured:
//!
//! - [`ProfileSummary`]: the gradient depth profile at initialization over several batches
//!   ([`crate::detect::depth_profile`] per batch, combined in log space);
//! - [`RateTrial`]: a few optimizer steps of a copy of the model at one rate, and whether they
//!   diverged (the loss on the reference batch ended non-finite or above
//!   [`DIVERGENCE_RISE`] × its start — the lab's own rule for a diverged run);
//! - [`search_safe_rate`]: the largest rate whose trial does not diverge, bracketed by expanding
//!   ×10 from the user's rate and then bisected in log space (the LR range test of Smith 2017
//!   asks one run per rate; this asks a few steps per rate);
//! - [`Butterfly`]: two copies ε apart, trained on the same batches, and how fast they separate
//!   (the finite-time Lyapunov exponent of training, per step);
//! - [`PathReading`]: the gradient along a path the parameters do not show — through time in a
//!   recurrent net — at initialization and after the trial;
//! - [`ModelVerdict`]: explodes / vanishes / healthy, with the reason in one line;
//! - [`run_probe`]: the protocol that strings them together, given an adapter's profiles and
//!   trials, into a [`ModelProbe`] (`gradguard_burn::probe::probe_model`,
//!   `gradguard_candle::probe::probe_varmap`).

mod butterfly;
mod model;
mod path;
mod profile;
mod search;
mod trial;
mod verdict;

pub use butterfly::Butterfly;
pub use model::{
    ModelProbe, ProbeSettings, TensorUpdate, TrialRun, input_to_output_update, relative_update,
    run_probe, run_probe_along,
};
pub use path::{PathReading, path_ratio};
pub use profile::ProfileSummary;
pub use search::{RateSearch, SafeRate, search_safe_rate};
pub use trial::{DIVERGENCE_RISE, RateTrial, TrialStep};
pub use verdict::{AfterTrial, Health, ModelVerdict, STALLING_RATIO, verdict};
