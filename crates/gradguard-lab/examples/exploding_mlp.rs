//! A 16-layer ReLU network on the handwritten digits, initialized with gain 3 (the critical gain
//! for ReLU is √2): without a remedy its first SGD step turns the weights into NaN; clipping the
//! global norm to 1 keeps it finite and learning; the default guard (no clipping) refuses the NaN
//! steps and stops with a typed error instead of training on garbage.
//!
//! Run: `cargo run --release -p gradguard-lab --example exploding_mlp`

use gradguard_lab::models::{Activation, MlpConfig};
use gradguard_lab::run::{Remedy, RunConfig, train_digits};

fn main() {
    let model = MlpConfig {
        inputs: 64,
        depth: 16,
        width: 64,
        outputs: 10,
        activation: Activation::Relu,
        init_gain: 3.0,
    };
    for remedy in [
        Remedy::None,
        Remedy::GlobalNorm { max_norm: 1.0 },
        Remedy::Guard,
    ] {
        let config = RunConfig {
            model,
            lr: 0.1,
            steps: 60,
            batch: 64,
            seed: 1,
            remedy,
        };
        match train_digits(&config) {
            Ok(s) => println!(
                "{remedy:?}: loss {:.3e} -> {:.3e}, first non-finite loss at {:?}, test accuracy {:.1}%",
                s.losses[0],
                s.losses.last().copied().unwrap_or(f64::NAN),
                s.diverged_at,
                100.0 * s.accuracy
            ),
            Err(e) => println!("{remedy:?}: {e}"),
        }
    }
}
