//! The digits MLP explodes without a remedy and learns with global-norm clipping.

use gradguard::GuardError;
use gradguard_lab::LabError;
use gradguard_lab::models::{Activation, MlpConfig};
use gradguard_lab::run::{Remedy, RunConfig, train_digits};

fn config(remedy: Remedy) -> RunConfig {
    RunConfig {
        model: MlpConfig {
            inputs: 64,
            depth: 16,
            width: 64,
            outputs: 10,
            activation: Activation::Relu,
            init_gain: 3.0,
        },
        lr: 0.1,
        steps: 40,
        batch: 64,
        seed: 1,
        remedy,
    }
}

#[test]
fn an_oversized_relu_init_explodes_and_global_norm_clipping_keeps_it_learning() {
    let none = train_digits(&config(Remedy::None)).unwrap();
    assert!(none.diverged(), "{:?}", &none.losses[..5]);
    assert!(none.diverged_at.is_some(), "plain SGD reaches NaN");

    let clipped = train_digits(&config(Remedy::GlobalNorm { max_norm: 1.0 })).unwrap();
    assert_eq!(clipped.diverged_at, None);
    assert!(!clipped.diverged(), "{:?}", clipped.losses);
    assert!(clipped.losses.last().unwrap() < &(0.5 * clipped.losses[0]));
    assert!(
        clipped.accuracy > 0.1,
        "better than chance: {}",
        clipped.accuracy
    );
}

#[test]
fn the_default_guard_without_clipping_stops_with_a_typed_error() {
    match train_digits(&config(Remedy::Guard)) {
        Err(LabError::Guard(GuardError::TooManyBadSteps { count, .. })) => assert_eq!(count, 20),
        other => panic!("expected the guard to give up, got {other:?}"),
    }
}
