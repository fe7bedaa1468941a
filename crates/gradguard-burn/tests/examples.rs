//! The examples run, and do what their doc comments say.

#[path = "../examples/plain_loop.rs"]
mod plain_loop;

#[test]
fn the_plain_loop_example_survives_corrupt_batches_that_ruin_an_unguarded_run() {
    let dir = tempfile::tempdir().unwrap();
    let plain = plain_loop::run(120, false, dir.path());
    assert!(
        !plain.finite,
        "without the guard a NaN batch poisons the weights"
    );
    let guarded = plain_loop::run(120, true, dir.path());
    assert!(guarded.finite);
    assert_eq!(guarded.skipped, 3, "steps 39, 79 and 119 carry a NaN");
    assert!(guarded.last_loss < guarded.first_loss, "{guarded:?}");
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let records = gradguard_report::read_metrics(metrics.as_bytes()).unwrap();
    assert_eq!(records.len(), 120);
    assert_eq!(records[39].decision, gradguard_report::StepDecision::Skip);
    assert_eq!(
        records[0].tensor_norms.len(),
        26,
        "12 hidden layers and a head, weight and bias each"
    );
}

#[cfg(feature = "learner")]
#[path = "../examples/learner.rs"]
mod learner;

#[cfg(feature = "learner")]
#[test]
fn the_learner_example_skips_corrupt_batches_and_stays_finite() {
    let dir = tempfile::tempdir().unwrap();
    // 320 items in batches of 16: 20 steps per epoch, 8 corrupt items in 8 different batches.
    let (guard, model) = learner::run(320, 1, dir.path());
    let c = guard.counters();
    assert_eq!(c.step, 20);
    assert_eq!(c.skipped, 8, "{c:?}");
    assert!(model.is_finite());
    assert!(guard.take_error().is_none());
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let records = gradguard_report::read_metrics(metrics.as_bytes()).unwrap();
    assert_eq!(records.len(), 20);
    assert_eq!(
        records
            .iter()
            .filter(|r| r.decision == gradguard_report::StepDecision::Skip)
            .count(),
        8
    );
}
