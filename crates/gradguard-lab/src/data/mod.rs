//! Data sets the lab ships.

mod digits;

pub use digits::{CLASSES, Digits, FEATURES, Split};
