//! The probe measures what mean-field theory and the literature predict.

use gradguard_lab::RunConfig;
use gradguard_lab::models::{Activation, Cell, Init};
use gradguard_lab::probe::meanfield::critical_gain;
use gradguard_lab::probe::{
    ProbeConfig, Verdict, agreement, butterfly, calibrate, informed_prediction, probe,
};
use gradguard_lab::tasks::Task;

fn wide(activation: Activation) -> ProbeConfig {
    ProbeConfig {
        depth: 50,
        width: 256,
        activation,
        ..ProbeConfig::default()
    }
}

#[test]
fn the_calibrated_gain_of_a_wide_deep_tanh_net_is_one() {
    let g = calibrate(&wide(Activation::Tanh), 0.5, 2.0)
        .unwrap()
        .unwrap();
    assert!((g - 1.0).abs() < 0.05, "{g}");
    assert!((critical_gain(Activation::Tanh, 0.0) - 1.0).abs() < 1e-3);
    // With bias variance the critical line moves; measured and predicted agree within 5%.
    let biased = ProbeConfig {
        bias_var: 0.05,
        ..wide(Activation::Tanh)
    };
    let measured = calibrate(&biased, 0.8, 2.0).unwrap().unwrap();
    let predicted = critical_gain(Activation::Tanh, 0.05);
    assert!(
        (measured / predicted - 1.0).abs() < 0.05,
        "{measured} vs {predicted}"
    );
}

#[test]
fn the_calibrated_gain_of_a_wide_deep_relu_net_is_root_two() {
    let g = calibrate(&wide(Activation::Relu), 0.8, 2.5)
        .unwrap()
        .unwrap();
    assert!((g / 2f64.sqrt() - 1.0).abs() < 0.05, "{g}");
}

#[test]
fn the_measured_exponent_has_the_theorys_sign_on_both_sides_of_the_line() {
    for (activation, gain, bias_var) in [
        (Activation::Tanh, 0.7, 0.0),
        (Activation::Tanh, 1.6, 0.0),
        (Activation::Tanh, 1.1, 0.05),
        (Activation::Tanh, 1.6, 0.05),
        (Activation::Relu, 1.1, 0.0),
        (Activation::Relu, 1.8, 0.0),
    ] {
        let r = probe(&ProbeConfig {
            init_gain: gain,
            bias_var,
            ..wide(activation)
        })
        .unwrap();
        let theory = r.theory.expect("a plain Gaussian MLP has a theory");
        assert_eq!(
            r.lyapunov.signum(),
            theory.lyapunov.signum(),
            "{activation:?} gain {gain} σ_b² {bias_var}: measured {} predicted {}",
            r.lyapunov,
            theory.lyapunov
        );
        let expected = if theory.lyapunov > 0.0 {
            Verdict::Exploding
        } else {
            Verdict::Vanishing
        };
        assert_eq!(r.verdict, expected, "{activation:?} {gain}");
        assert_eq!(r.per_layer_gain.len(), 50);
        assert!(r.depth_to_1e3.is_some());
    }
}

#[test]
fn an_orthogonal_linear_network_at_gain_one_is_critical() {
    let r = probe(&ProbeConfig {
        activation: Activation::Linear,
        init: Init::Orthogonal,
        ..wide(Activation::Linear)
    })
    .unwrap();
    assert!(r.lyapunov.abs() < 1e-4, "{}", r.lyapunov);
    assert_eq!(r.verdict, Verdict::Critical);
    assert!(r.per_layer_gain.iter().all(|g| (g - 1.0).abs() < 1e-3));
    assert!((r.forward_lyapunov).abs() < 1e-2, "{}", r.forward_lyapunov);
}

#[test]
fn recurrent_cells_are_probed_per_time_step() {
    let rnn = |gain, cell| {
        probe(&ProbeConfig {
            cell: Some(cell),
            width: 64,
            seq_len: 60,
            init_gain: gain,
            ..ProbeConfig::default()
        })
        .unwrap()
    };
    let small = rnn(0.5, Cell::Rnn);
    assert_eq!(small.verdict, Verdict::Vanishing);
    assert_eq!(small.per_layer_gain.len(), 60);
    let lstm = rnn(1.0, Cell::Lstm);
    assert_eq!(lstm.per_layer_gain.len(), 60);
    assert!(lstm.lyapunov.is_finite());
    let gru = rnn(1.0, Cell::Gru);
    assert!(gru.lyapunov.is_finite());
}

#[test]
fn two_runs_from_nearby_starts_are_measured_apart() {
    let config = RunConfig {
        depth: 8,
        steps: 30,
        init_gain: 1.2,
        lr: 0.05,
        ..RunConfig::for_task(Task::Mlp)
    };
    let b = butterfly(&config, 1e-3).unwrap();
    assert_eq!(b.distance.len(), 31);
    assert!((b.epsilon / 1e-3 - 1.0).abs() < 0.05, "{}", b.epsilon);
    assert!(b.distance.iter().all(Option::is_some));
    assert!(b.growth_rate.is_some());
    assert_eq!(b.loss_a.len(), 30);
    assert_ne!(b.loss_a, b.loss_b);
}

/// What a 50-layer probe measures; its cost is reported (`seconds`), not asserted — timing
/// belongs in a benchmark, not a test (issue "Peer parity … code health").
#[test]
fn a_fifty_layer_probe_measures_every_layer() {
    let r = probe(&wide(Activation::Tanh)).unwrap();
    assert_eq!(r.per_layer_gain.len(), 50);
    assert_eq!(r.per_layer_forward_gain.len(), 50);
    assert!(r.per_layer_gain.iter().all(|g| g.is_finite() && *g > 0.0));
    assert!(r.lyapunov.is_finite() && r.seconds > 0.0);
}

#[test]
fn the_agreement_grid_runs_every_seed_and_scores_the_informed_prediction() {
    let base = RunConfig {
        activation: Activation::Relu,
        steps: 40,
        ..RunConfig::for_task(Task::Mlp)
    };
    let result = agreement(&base, &[4, 16], &[0.6, 2.0], &[0, 1], 0).unwrap();
    assert_eq!(result.seeds, vec![0, 1]);
    assert_eq!(result.cells.len(), 8);
    for seed in [0, 1] {
        assert_eq!(result.cells.iter().filter(|c| c.seed == seed).count(), 4);
    }
    for c in &result.cells {
        let expected = informed_prediction(
            c.depth,
            c.lyapunov,
            c.gradient_ratio,
            c.first_update_ratio,
            c.correlation_depth,
        );
        assert_eq!(c.expected_informed, expected, "{c:?}");
        assert_eq!(c.agree_informed, c.outcome == expected, "{c:?}");
        // ReLU above √2 has no variance fixed point; below, its ξ_c is finite.
        assert_eq!(c.correlation_depth.is_none(), c.gain > 2f64.sqrt(), "{c:?}");
    }
    // A 16-layer ReLU net at gain 2 takes a first step of the order of its weights.
    let hot = result
        .cells
        .iter()
        .find(|c| c.depth == 16 && c.gain == 2.0)
        .unwrap();
    assert!(hot.first_update_ratio.is_none_or(|r| r > 0.2), "{hot:?}");
    let k = result.cells.iter().filter(|c| c.agree_informed).count();
    assert_eq!(result.rate_informed, k as f64 / 8.0);
    let (lo, hi) = result.rate_informed_interval;
    assert!(lo <= result.rate_informed && result.rate_informed <= hi);
}
