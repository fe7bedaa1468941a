//! The model probe (`gradguard_burn::probe`) on the lab's own models: an MLP, a vanilla RNN and
//! the lm transformer, each with its task's batches and optimizer.

use gradguard::probe::{Health, RateSearch};
use gradguard_lab::RunConfig;
use gradguard_lab::optimizer::OptimizerKind;
use gradguard_lab::probe::{ProbeSettings, TaskProbe, probe_task};
use gradguard_lab::tasks::Task;

/// Short trials and a coarse bisection: the tests check the wiring, not the figures.
fn quick() -> ProbeSettings {
    ProbeSettings {
        profile_batches: 2,
        trial_steps: 5,
        search: RateSearch {
            resolution: 2.0,
            ..RateSearch::default()
        },
        ..ProbeSettings::at_rate(1.0)
    }
}

/// What holds for every probe: the verdict follows the trial at the rate, the bracket is
/// consistent, and every parameter was measured.
fn check(p: &TaskProbe, rate: f64) {
    let probe = &p.probe;
    assert_eq!(probe.settings.rate, rate, "the run's own rate is probed");
    let diverged = probe.at_rate.diverged();
    assert_eq!(
        diverged,
        probe.verdict.health == Health::Explodes,
        "{}",
        probe.verdict.reason
    );
    if let (Some(safe), Some(bad)) = (probe.safe_rate.rate, probe.safe_rate.first_diverging) {
        assert!(bad > safe && bad / safe <= 2.0 + 1e-9);
        assert_eq!(diverged, rate >= bad);
    }
    assert!(probe.profile.profile.layers.len() > 1);
    assert!(!probe.first_step.is_empty());
    assert!(p.text().contains("largest safe rate"));
}

#[test]
fn the_deep_mlp_at_its_task_rate_explodes_and_a_smaller_rate_is_safe() {
    let config = RunConfig::for_task(Task::Mlp);
    let p = probe_task(&config, quick()).unwrap();
    check(&p, config.lr);
    assert_eq!(p.probe.verdict.health, Health::Explodes, "{}", p.text());
    assert!(p.probe.safe_rate.rate.unwrap() < config.lr);
}

#[test]
fn a_vanilla_rnn_and_the_lm_transformer_are_probed_with_their_optimizers() {
    let rnn = RunConfig {
        seq_len: 30,
        ..RunConfig::for_task(Task::Adding)
    };
    let p = probe_task(&rnn, quick()).unwrap();
    check(&p, rnn.lr);
    assert_eq!(p.optimizer, "SGD");
    assert!(p.probe.path.as_ref().is_some_and(|t| t.at_init.is_some()));

    let mut lm = RunConfig::for_task(Task::Lm);
    lm.set_optimizer(OptimizerKind::Adamw);
    let p = probe_task(&lm, quick()).unwrap();
    check(&p, lm.lr);
    assert!(p.optimizer.starts_with("AdamW"), "{}", p.optimizer);
    assert_eq!(p.probe.path, None, "no time steps");
    assert!(
        p.probe.first_step.iter().any(|t| t.name.contains(".mha.")),
        "{:?}",
        p.probe
            .first_step
            .iter()
            .map(|t| &t.name)
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_rate_that_saturates_the_first_layers_vanishes_after_its_trial() {
    // 24 tanh layers at gain 1.8 under SGD 0.1: healthy by the gradient at initialization
    // (the input side gets more than the output side), but ten steps at the rate saturate the
    // first layers and their gradient falls to ~1e-3 of the head's — the unprotected run at
    // this rate neither diverges nor learns (docs/measurements/2026-12-07-probe-after-trial.md).
    let config = RunConfig {
        depth: 24,
        init_gain: 1.8,
        activation: gradguard_lab::models::Activation::Tanh,
        ..RunConfig::for_task(Task::Mlp)
    };
    let p = probe_task(&config, ProbeSettings::at_rate(config.lr)).unwrap();
    check(&p, config.lr);
    assert!(p.probe.profile.input_to_output().unwrap() > 1.0);
    assert_eq!(p.probe.verdict.health, Health::Vanishes, "{}", p.text());
    assert!(
        p.probe
            .verdict
            .reason
            .starts_with("after 10 steps at rate 1.000e-1, 'Mlp.layers.0'"),
        "{}",
        p.probe.verdict.reason
    );
}

#[test]
fn a_gradient_that_fades_through_time_vanishes_though_the_weights_get_one() {
    // A vanilla RNN at gain 0.7 over 30 steps: every weight gets a gradient (summed over the
    // steps, dominated by the last ones), but the one reaching the first step is ~1e-5 of the
    // last step's — the unprotected run stays at the trivial loss. At gain 1.1 the gradient
    // reaches the start and the verdict rests on the trial
    // (docs/measurements/2026-12-08-probe-through-time.md).
    let rnn = |gain: f64| RunConfig {
        seq_len: 30,
        init_gain: gain,
        ..RunConfig::for_task(Task::Order)
    };
    let faded = rnn(0.7);
    let p = probe_task(&faded, ProbeSettings::at_rate(faded.lr)).unwrap();
    check(&p, faded.lr);
    assert!(
        p.probe.profile.input_to_output().unwrap() > 0.01,
        "{}",
        p.text()
    );
    assert!(
        p.probe.path.as_ref().unwrap().at_init.unwrap() < 1e-3,
        "{}",
        p.text()
    );
    assert_eq!(p.probe.verdict.health, Health::Vanishes, "{}", p.text());
    assert!(
        p.probe
            .verdict
            .reason
            .starts_with("the gradient reaching the first time step is"),
        "{}",
        p.probe.verdict.reason
    );
    assert!(p.text().contains("gradient through time"), "{}", p.text());

    let kept = rnn(1.1);
    let p = probe_task(&kept, ProbeSettings::at_rate(kept.lr)).unwrap();
    check(&p, kept.lr);
    assert!(
        p.probe.path.as_ref().unwrap().at_init.unwrap() > 0.1,
        "{}",
        p.text()
    );
    assert_eq!(p.probe.path.as_ref().unwrap().point, "time step");
    assert_ne!(p.probe.verdict.health, Health::Vanishes, "{}", p.text());
}
