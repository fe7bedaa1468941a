//! Models of the lab's tasks.

mod attention;
mod init;
mod mlp;
mod net;
mod recurrent;
mod transformer;

pub use attention::QkNorm;
pub use init::Init;
pub use mlp::{Activation, DeepMlp, MlpConfig, Norm};
pub use net::Net;
pub use recurrent::{Cell, RecurrentConfig, RecurrentNet};
pub use transformer::{LmOutput, LmTransformer, TransformerConfig};
