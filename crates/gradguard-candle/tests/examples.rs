//! The example runs and does what its doc comment says.

#[path = "../examples/digits.rs"]
mod digits;

#[test]
fn the_digits_example_learns_under_the_default_guard_and_skips_corrupt_batches() {
    let dir = tempfile::tempdir().unwrap();
    let o = digits::run(300, 100, gradguard::Guard::default(), dir.path()).unwrap();
    eprintln!("{o:?}");
    assert!(o.finite, "{o:?}");
    assert!(o.snapshot_seconds > 0.0 && o.snapshot_seconds < o.seconds);
    assert_eq!(o.skipped, 3, "steps 99, 199 and 299 carry a NaN: {o:?}");
    assert!(o.last_loss < 0.2 * o.first_loss, "{o:?}");
    assert!(o.accuracy > 0.85, "{o:?}");
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let records = gradguard_report::read_metrics(metrics.as_bytes()).unwrap();
    assert_eq!(records.len(), 300);
    assert_eq!(records[99].decision, gradguard_report::StepDecision::Skip);
    assert_eq!(
        records[0].tensor_norms.len(),
        6,
        "3 layers, weight and bias each"
    );
}
