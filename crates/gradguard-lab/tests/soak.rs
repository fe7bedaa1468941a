//! Soak: 20,000 guarded steps with telemetry and checkpoints, memory measured at the start and the
//! end. Long, so ignored by default:
//! `cargo test --release -p gradguard-lab --test soak -- --ignored --nocapture`.

use gradguard_lab::faults::Fault;
use gradguard_lab::models::Activation;
use gradguard_lab::tasks::Task;
use gradguard_lab::{Remedy, RunConfig, TrainOptions, TrainOutcome, train};

/// Resident and peak resident memory of this process, in KiB (Linux).
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn config(steps: u64) -> RunConfig {
    RunConfig {
        depth: 4,
        width: 32,
        activation: Activation::Tanh,
        init_gain: 1.0,
        lr: 0.02,
        batch: 16,
        steps,
        checkpoint_every: 500,
        remedies: Remedy::parse_list("guard,clip-global").unwrap(),
        ..RunConfig::for_task(Task::Mlp)
    }
}

#[test]
#[ignore = "long: 20,000 steps"]
fn twenty_thousand_guarded_steps_keep_memory_flat() {
    let tmp = tempfile::tempdir().unwrap();
    // Faults every 1,000 steps keep the guard's skip and rollback paths busy throughout.
    let faults: Vec<Fault> = (1..20)
        .map(|k| Fault::NanLoss { step: k * 1000 + 7 })
        .collect();
    let warm = TrainOptions {
        out: Some(tmp.path().join("warm")),
        faults: faults.clone(),
        ..TrainOptions::default()
    };
    train(&config(1000), &warm).unwrap();
    let (start_rss, start_peak) = rss_kib();
    let options = TrainOptions {
        out: Some(tmp.path().join("soak")),
        faults,
        ..TrainOptions::default()
    };
    let started = std::time::Instant::now();
    let TrainOutcome::Finished(s) = train(&config(20_000), &options).unwrap() else {
        panic!("not interrupted")
    };
    let (end_rss, end_peak) = rss_kib();
    println!(
        "soak: {} steps in {:.0} s, {} skipped, {} rollbacks; RSS start {} KiB (peak {}), end {} KiB (peak {})",
        s.steps,
        started.elapsed().as_secs_f64(),
        s.skipped_steps,
        s.rollbacks,
        start_rss,
        start_peak,
        end_rss,
        end_peak
    );
    assert_eq!(s.steps, 20_000);
    assert!(s.stopped.is_none());
    // Flat: the 20,000-step run ends within 10% (and 16 MiB) of where a 1,000-step run left it.
    assert!(
        end_peak <= start_peak + start_peak / 10 + 16 * 1024,
        "peak RSS grew from {start_peak} to {end_peak} KiB"
    );
}
