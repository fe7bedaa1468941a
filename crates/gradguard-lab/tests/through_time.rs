//! Gradients through time (issue "The lab as science"): ‖∂L/∂h_t‖ over the sequence, recorded
//! for recurrent runs at the first step and after the last, grows towards the start of the
//! sequence when the recurrent gain is large and shrinks when it is small.

mod common;

use common::{run, with};
use gradguard_lab::RunConfig;
use gradguard_lab::tasks::Task;

/// ‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ at step 0 of a vanilla RNN on the adding problem at recurrent `gain`.
fn first_over_last(gain: f64) -> f64 {
    let s = run(&RunConfig {
        seq_len: 40,
        init_gain: gain,
        ..with(Task::Adding, 3, "none")
    });
    assert_eq!(
        s.time_gradients.len(),
        2,
        "step 0 and after the last: {s:?}"
    );
    assert_eq!((s.time_gradients[0].step, s.time_gradients[1].step), (0, 3));
    let norms = &s.time_gradients[0].norms;
    assert_eq!(norms.len(), 40);
    let (first, last) = (norms[0].unwrap(), norms[39].unwrap());
    assert!(first > 0.0 && last > 0.0, "{norms:?}");
    first / last
}

#[test]
fn the_gradient_explodes_back_through_time_at_a_large_gain_and_vanishes_at_a_small_one() {
    let exploding = first_over_last(2.5);
    let vanishing = first_over_last(0.5);
    // Over 39 steps a per-step factor of ~2 (gain 2.5, through tanh) or ~0.5 compounds to
    // orders of magnitude.
    assert!(exploding > 1e3, "gain 2.5: h_1/h_T = {exploding:e}");
    assert!(vanishing < 1e-3, "gain 0.5: h_1/h_T = {vanishing:e}");
}

#[test]
fn an_mlp_run_records_no_gradients_through_time() {
    let s = run(&RunConfig {
        depth: 4,
        ..with(Task::Mlp, 2, "none")
    });
    assert!(s.time_gradients.is_empty());
}
