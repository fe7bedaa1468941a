//! The Rust examples of the workspace README and the guide pages under `docs/`, compiled and run
//! as doctests. A crate of its own because
//! a published crate cannot include a file outside its package; this one is never published.

#![deny(missing_docs)]

/// The README, whose `rust` blocks `cargo test` runs.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The library guide (`docs/library.md`), whose `rust` blocks `cargo test` runs.
#[doc = include_str!("../../../docs/library.md")]
#[cfg(doctest)]
pub struct LibraryGuideDoctests;

/// The Candle guide (`docs/candle.md`), whose `rust` blocks `cargo test` runs.
#[doc = include_str!("../../../docs/candle.md")]
#[cfg(doctest)]
pub struct CandleGuideDoctests;

/// The model-probe guide (`docs/probe-your-model.md`), whose `rust` blocks `cargo test` runs.
#[doc = include_str!("../../../docs/probe-your-model.md")]
#[cfg(doctest)]
pub struct ProbeGuideDoctests;
