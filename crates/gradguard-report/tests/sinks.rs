//! Sinks write what the reports say, and the reader gives it back or names the bad line.

use std::io::BufReader;

use gradguard::rules::{Chain, ClipByGlobalNorm, Rule};
use gradguard::{Guard, GuardConfig, HostGradients, HostTensor};
use gradguard_report::{
    CsvSink, JsonlSink, MetricsError, MetricsRecord, Sink, Sinks, TensorBoardSink, read_metrics,
};

/// Runs a small guarded sequence (one NaN step) and returns its records. Without an update bound
/// the NaN skip backs the rate off, so the records carry a changed rate too.
pub fn records() -> Vec<MetricsRecord> {
    let rules: Vec<Box<dyn Rule>> = vec![Box::new(ClipByGlobalNorm::new(1.0).unwrap())];
    let config = GuardConfig {
        grad_spike: None,
        loss_spike: None,
        update_bound: None,
        ..Default::default()
    };
    let mut guard = Guard::new(config, Chain::new(rules).unwrap()).unwrap();
    (0..6)
        .map(|i| {
            let bad = if i == 3 { f32::NAN } else { 0.5 };
            let mut g = HostGradients::new(vec![
                HostTensor::new("layers.0.weight", vec![2], vec![3.0 * (i + 1) as f32, 4.0])
                    .unwrap(),
                HostTensor::new("layers.1.weight", vec![1], vec![bad]).unwrap(),
            ])
            .unwrap();
            let report = guard.step(&mut g, Some(1.0 / (i + 1) as f64)).unwrap();
            MetricsRecord::from_report(&report, 0.1)
        })
        .collect()
}

#[test]
fn jsonl_round_trips_and_csv_has_a_column_per_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("metrics.jsonl");
    let csv = dir.path().join("metrics.csv");
    let mut sinks = Sinks::new()
        .with(JsonlSink::create(&jsonl).unwrap())
        .with(CsvSink::create(&csv).unwrap())
        .with(TensorBoardSink::create(dir.path()).unwrap());
    let recs = records();
    for r in &recs {
        sinks.write(r).unwrap();
    }
    sinks.flush().unwrap();
    let back = read_metrics(BufReader::new(std::fs::File::open(&jsonl).unwrap())).unwrap();
    assert_eq!(back, recs);
    assert_eq!(back[3].decision, gradguard_report::StepDecision::Skip);
    assert_eq!(back[3].tensor_norms["layers.1.weight"], None);
    assert!(
        (back[4].lr - 0.05).abs() < 1e-12,
        "the multiplier backed off after the skip"
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "step,loss,grad_norm,grad_norm_clipped,lr,lr_multiplier,decision,layers.0.weight,layers.1.weight"
    );
    assert_eq!(lines.len(), 7);
    assert!(lines[4].starts_with("3,0.25,,"), "{}", lines[4]);
    let events: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("tfevents"))
        .collect();
    assert_eq!(events.len(), 1);
}

#[test]
fn a_language_models_logits_have_their_csv_columns() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("metrics.csv");
    let mut sink = CsvSink::create(&csv).unwrap();
    for (i, r) in records().into_iter().take(2).enumerate() {
        let attention = [2.5, if i == 1 { f64::INFINITY } else { 7.0 }];
        sink.write(&r.with_logits(&attention, 4.5, 6.25)).unwrap();
    }
    sink.flush().unwrap();
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "step,loss,grad_norm,grad_norm_clipped,lr,lr_multiplier,decision,\
         attention_logit_max/layer0,attention_logit_max/layer1,log_z_mean,log_z_max,\
         layers.0.weight,layers.1.weight"
    );
    let cells = |line: &str| {
        line.split(',')
            .skip(7)
            .take(4)
            .collect::<Vec<_>>()
            .join(",")
    };
    assert_eq!(cells(lines[1]), "2.5,7,4.5,6.25");
    assert_eq!(
        cells(lines[2]),
        "2.5,,4.5,6.25",
        "a non-finite logit is an empty cell"
    );
}

#[test]
fn a_malformed_line_is_named() {
    let good = serde_json::to_string(&records()[0]).unwrap();
    let text = format!("{good}\n\n{{\"step\": \"three\"}}\n");
    let err = read_metrics(text.as_bytes()).unwrap_err();
    match err {
        MetricsError::Malformed { line, message } => {
            assert_eq!(line, 3);
            assert!(message.contains("expected a metrics record"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let err = read_metrics("not json\n".as_bytes()).unwrap_err();
    assert!(err.to_string().starts_with("line 1: "), "{err}");
}

/// TensorBoard's own reader, when CI provides it (`GRADGUARD_PYTHON` with `tensorboard`
/// installed; `.ci/run` sets this up). Without it the test says so and checks nothing more —
/// unless `GRADGUARD_REQUIRE_TOOLS=1` is set, where a missing reader is a failure.
#[test]
fn tensorboard_reads_the_event_file() {
    let python = match std::env::var("GRADGUARD_PYTHON") {
        Ok(p) => p,
        Err(_) => {
            let required =
                std::env::var("GRADGUARD_REQUIRE_TOOLS").is_ok_and(|v| !v.is_empty() && v != "0");
            assert!(
                !required,
                "GRADGUARD_PYTHON must name a Python with tensorboard installed (see .ci/run)"
            );
            eprintln!("GRADGUARD_PYTHON not set: skipping the TensorBoard reader check");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mut tb = TensorBoardSink::create(dir.path()).unwrap();
    // A language model's records: the logit telemetry has its tags too.
    let recs: Vec<MetricsRecord> = records()
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.with_logits(&[2.0 + i as f64, 30.0], 4.5 - 0.5 * i as f64, 7.0))
        .collect();
    for r in &recs {
        tb.write(r).unwrap();
    }
    tb.flush().unwrap();
    let expected: Vec<serde_json::Value> = recs
        .iter()
        .map(|r| {
            serde_json::json!({
                "step": r.step, "loss": r.loss, "grad_norm": r.grad_norm, "lr": r.lr,
                "skipped": r.skipped(),
                "tags": {
                    "attention_logit_max/layer0": r.attention_logit_max[0],
                    "attention_logit_max/layer1": r.attention_logit_max[1],
                    "log_z/mean": r.log_z_mean,
                    "log_z/max": r.log_z_max,
                },
            })
        })
        .collect();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/check_tensorboard.py"
    );
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg(dir.path())
        .arg(serde_json::to_string(&expected).unwrap())
        .output()
        .unwrap_or_else(|e| panic!("GRADGUARD_PYTHON={python} could not be run: {e}"));
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
