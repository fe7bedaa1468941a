//! Data sets the lab ships.

mod digits;

pub use digits::{Digits, Split};
