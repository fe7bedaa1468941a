//! Issue "A guard that needs no tuning": the default guard, with no clipping rule, protects a run
//! from step 0, leaves a healthy run untouched, and does not repeat a blow-up after rolling back.

mod common;

use common::{run, with};
use gradguard_lab::faults::Fault;
use gradguard_lab::models::Activation;
use gradguard_lab::tasks::Task;
use gradguard_lab::{RunConfig, TrainOptions, TrainOutcome, train};
use gradguard_report::{METRICS_FILE, RunSummary, StepDecision, read_metrics};

/// Finished, finite, and the held-out loss below where it started.
fn tamed(s: &RunSummary) -> bool {
    s.stopped.is_none() && !s.diverged && s.final_loss.is_some_and(|l| l < s.initial_loss.unwrap())
}

#[test]
fn the_guard_alone_tames_a_first_step_explosion() {
    // The lab's default deep ReLU net at gain 1.7: unprotected, step 0 already ruins it.
    let none = run(&with(Task::Mlp, 60, "none"));
    assert!(
        none.diverged && none.diverged_at.is_some_and(|s| s < 3),
        "{none:?}"
    );
    let guard = run(&with(Task::Mlp, 100, "guard"));
    assert!(tamed(&guard), "{guard:?}");
    assert_eq!(guard.skipped_steps, 0, "{guard:?}");
    // It learns, not merely survives: below the trivial predictor (ln 10 ≈ 2.303) and above
    // chance (10%); 1.99 and 24% in these 100 steps when measured (1.42 and 51% before the
    // unit-wise update bound, which holds the first steps back; in the demo's 500 steps it
    // reaches 87.5%).
    assert!(guard.final_loss.unwrap() < 2.15, "{guard:?}");
    assert!(guard.accuracy.unwrap() > 0.18, "{guard:?}");
}

#[test]
fn the_guard_alone_tames_a_vanilla_rnn_explosion() {
    for (task, lr) in [(Task::Adding, 0.1), (Task::Adding, 0.5), (Task::Order, 0.5)] {
        let config = |remedy| RunConfig {
            seq_len: 50,
            lr,
            ..with(task, 120, remedy)
        };
        let none = run(&config("none"));
        assert!(none.diverged, "{task} at {lr}, unprotected: {none:?}");
        let guard = run(&config("guard"));
        assert!(tamed(&guard), "{task} at {lr}: {guard:?}");
    }
}

#[test]
fn a_healthy_run_is_untouched() {
    // Nothing explodes here, so no check fires and the guarded run ends with the very weights of
    // the unguarded one (the held-out loss is compared bit for bit).
    let healthy = |remedy| RunConfig {
        depth: 4,
        activation: Activation::Tanh,
        init_gain: 1.0,
        // At 0.01 the unit-wise bound already fires on some units here.
        lr: 0.001,
        ..with(Task::Mlp, 40, remedy)
    };
    let none = run(&healthy("none"));
    let guard = run(&healthy("guard"));
    assert_eq!(guard.rollbacks + guard.skipped_steps, 0);
    assert_eq!(guard.final_loss, none.final_loss);
    assert_eq!(guard.final_train_loss, none.final_train_loss);
}

#[test]
fn a_rollback_backs_off_the_rate_so_the_blow_up_does_not_repeat() {
    // A blow-up at batch 30 (every gradient and the loss ×1000): the update bound keeps it from
    // the weights, the loss spike rolls back to the snapshot of step 20 and halves the multiplier
    // (the rate, and the per-tensor bound with it); the run then goes on without rolling back
    // again and again.
    let dir = tempfile::tempdir().unwrap();
    let config = RunConfig {
        depth: 8,
        activation: Activation::Tanh,
        init_gain: 1.0,
        lr: 0.05,
        checkpoint_every: 20,
        ..with(Task::Mlp, 120, "guard")
    };
    let options = TrainOptions {
        out: Some(dir.path().to_path_buf()),
        faults: vec![Fault::Spike {
            step: 30,
            factor: 1e3,
        }],
        ..TrainOptions::default()
    };
    let TrainOutcome::Finished(s) = train(&config, &options).unwrap() else {
        panic!("not interrupted")
    };
    assert!(tamed(&s), "{s:?}");
    let file = std::fs::File::open(dir.path().join(METRICS_FILE)).unwrap();
    let records = read_metrics(std::io::BufReader::new(file)).unwrap();
    let rollback = records
        .iter()
        .position(|r| r.decision == StepDecision::Rollback)
        .expect("the spike is rolled back");
    assert_eq!(records[rollback].step, 30);
    let after = &records[rollback + 1];
    assert!(after.lr_multiplier <= 0.5, "{after:?}");
    assert!(
        (after.lr - config.lr * after.lr_multiplier).abs() < 1e-12,
        "{after:?}"
    );
    assert!(
        s.rollbacks <= 2,
        "{} rollbacks: the guard is looping",
        s.rollbacks
    );
}
