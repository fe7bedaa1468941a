//! The workspace README's Rust examples, compiled and run as doctests. A crate of its own because
//! a published crate cannot include a file outside its package; this one is never published.

#![deny(missing_docs)]

/// The README, whose `rust` blocks `cargo test` runs.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
