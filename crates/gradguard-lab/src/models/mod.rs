//! Models of the lab's tasks.

mod mlp;

pub use mlp::{Activation, DeepMlp, MlpConfig};
