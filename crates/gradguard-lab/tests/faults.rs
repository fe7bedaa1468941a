//! What the guard promises under faults: every injected fault either ends with finite weights
//! and a held-out loss near the clean run's, or stops with a typed error naming the step —
//! never a panic, never silently NaN weights.

use gradguard_lab::faults::Fault;
use gradguard_lab::models::Activation;
use gradguard_lab::tasks::Task;
use gradguard_lab::{Remedy, RunConfig, TrainOptions, TrainOutcome, load_run_model, train};
use gradguard_report::{Outcome, RunSummary};

/// A faulted run's final held-out loss stays below this multiple of the clean run's: the skipped
/// batch, the rollback to the last snapshot and the halved learning rate (recovered after 50
/// calm steps) cost progress — 1.3–1.7× the clean loss at 200 steps when measured.
const TOLERANCE: f64 = 2.0;

fn config() -> RunConfig {
    RunConfig {
        depth: 8,
        activation: Activation::Tanh,
        init_gain: 1.0,
        lr: 0.05,
        steps: 200,
        checkpoint_every: 20,
        remedies: Remedy::parse_list("guard").unwrap(),
        ..RunConfig::for_task(Task::Mlp)
    }
}

fn run(faults: Vec<Fault>) -> (RunSummary, Vec<f32>) {
    let dir = tempfile::tempdir().unwrap();
    let options = TrainOptions {
        out: Some(dir.path().to_path_buf()),
        faults,
        ..TrainOptions::default()
    };
    let TrainOutcome::Finished(summary) = train(&config(), &options).expect("no panic, no error")
    else {
        panic!("not interrupted")
    };
    let (_, net) = load_run_model(dir.path()).unwrap();
    (*summary, net.parameters_flat())
}

#[test]
fn every_fault_is_survived_or_stopped_with_a_named_step() {
    let (clean, weights) = run(Vec::new());
    let clean_loss = clean.final_loss.unwrap();
    eprintln!(
        "clean: final held-out loss {clean_loss:.4}, skipped {}, rollbacks {}",
        clean.skipped_steps, clean.rollbacks
    );
    assert!(weights.iter().all(|w| w.is_finite()));
    let cases = vec![
        (
            "NaN in one layer's gradient",
            Fault::NanGradient {
                step: 30,
                tensor: "Mlp.layers.3.weight".into(),
            },
        ),
        (
            "inf in the head's gradient",
            Fault::InfGradient {
                step: 31,
                tensor: "Mlp.head.weight".into(),
            },
        ),
        ("NaN loss", Fault::NanLoss { step: 40 }),
        ("NaN in the batch", Fault::NanBatch { step: 50 }),
        (
            "gradient spike ×1e6",
            Fault::Spike {
                step: 60,
                factor: 1e6,
            },
        ),
    ];
    for (what, fault) in cases {
        let (s, weights) = run(vec![fault]);
        assert!(s.stopped.is_none(), "{what}: {s:?}");
        assert!(weights.iter().all(|w| w.is_finite()), "{what}: NaN weights");
        assert!(
            s.skipped_steps + s.rollbacks >= 1,
            "{what}: the guard did not act: {s:?}"
        );
        let loss = s.final_loss.expect("finite");
        eprintln!(
            "{what}: final held-out loss {loss:.4} (clean {clean_loss:.4}), skipped {}, rollbacks {}",
            s.skipped_steps, s.rollbacks
        );
        assert!(
            loss <= TOLERANCE * clean_loss,
            "{what}: {loss} vs clean {clean_loss}"
        );
        assert_eq!(s.outcome(), Outcome::Learning, "{what}: {s:?}");
        assert_eq!(
            s.update_family.as_deref(),
            Some("proportional"),
            "{what}: SGD"
        );
    }
}

#[test]
fn a_run_of_bad_steps_longer_than_the_limit_stops_with_the_step_named() {
    let (s, weights) = run(vec![Fault::BadRun {
        from: 70,
        steps: 25,
    }]);
    let why = s
        .stopped
        .clone()
        .expect("the guard gives up after 20 bad steps");
    // Batch 70 is the first bad one; the guard numbers its own steps (batches skipped after a
    // rollback are not steps), so the 20th bad step is numbered 89 or a little less.
    let step: u64 = why
        .strip_prefix("gave up at step ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{why}"));
    assert!((80..=89).contains(&step), "{why}");
    assert!(why.contains("after 20 consecutive bad steps"), "{why}");
    assert!(why.contains("non-finite loss"), "{why}");
    assert!(
        weights.iter().all(|w| w.is_finite()),
        "weights stay finite when stopped"
    );
    assert_eq!(s.outcome(), Outcome::Stopped);
}

#[test]
fn a_fault_naming_no_parameter_is_a_clear_error() {
    let options = TrainOptions {
        faults: vec![Fault::NanGradient {
            step: 1,
            tensor: "Mlp.nope.weight".into(),
        }],
        ..TrainOptions::default()
    };
    let err = train(&config(), &options).unwrap_err().to_string();
    assert!(
        err.contains("no parameter named 'Mlp.nope.weight'"),
        "{err}"
    );
}
