//! A run interrupted and resumed ends exactly as an uninterrupted one; sweeps do not redo
//! finished runs.

use std::path::Path;

use gradguard_lab::checkpoint::{CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE};
use gradguard_lab::sweep::{Grid, run_sweep};
use gradguard_lab::tasks::Task;
use gradguard_lab::{Remedy, RunConfig, TrainOptions, TrainOutcome, load_run_model, train};
use gradguard_report::{RunSummary, read_run};

fn finish(config: &RunConfig, dir: &Path) -> RunSummary {
    let options = TrainOptions {
        out: Some(dir.to_path_buf()),
        ..TrainOptions::default()
    };
    match train(config, &options).unwrap() {
        TrainOutcome::Finished(s) => *s,
        TrainOutcome::Interrupted { .. } => panic!("not interrupted"),
    }
}

fn interrupt(config: &RunConfig, dir: &Path, after: u64) {
    let options = TrainOptions {
        out: Some(dir.to_path_buf()),
        interrupt_after: Some(after),
        ..TrainOptions::default()
    };
    assert!(matches!(
        train(config, &options).unwrap(),
        TrainOutcome::Interrupted { .. }
    ));
}

fn same_except_time(a: &RunSummary, b: &RunSummary) {
    let strip = |s: &RunSummary| RunSummary {
        wall_time_s: 0.0,
        ..s.clone()
    };
    assert_eq!(strip(a), strip(b));
}

#[test]
fn an_interrupted_guarded_run_resumes_to_the_same_weights_bit_for_bit() {
    // The guarded RNN on the adding problem rolls back several times in these steps, so the
    // resumed run must restore the guard, the optimizer and the rollback snapshot exactly.
    let config = RunConfig {
        seq_len: 40,
        steps: 90,
        checkpoint_every: 10,
        remedies: Remedy::parse_list("guard,adam,weight-decay").unwrap(),
        ..RunConfig::for_task(Task::Adding)
    };
    let tmp = tempfile::tempdir().unwrap();
    let (whole, parts) = (tmp.path().join("whole"), tmp.path().join("parts"));
    let reference = finish(&config, &whole);
    interrupt(&config, &parts, 37);
    interrupt(&config, &parts, 21);
    let resumed = finish(&config, &parts);
    same_except_time(&reference, &resumed);
    let (_, a) = load_run_model(&whole).unwrap();
    let (_, b) = load_run_model(&parts).unwrap();
    let (a, b) = (a.parameters_flat(), b.parameters_flat());
    assert!(!a.is_empty());
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "weights differ after resuming"
    );
    // The metrics log holds each step once, as the uninterrupted run's does.
    let (ma, mb) = (
        read_run(&whole).unwrap().metrics,
        read_run(&parts).unwrap().metrics,
    );
    assert_eq!(ma, mb);
}

#[test]
fn a_corrupt_checkpoint_falls_back_to_the_previous_one() {
    let config = RunConfig {
        depth: 4,
        steps: 40,
        checkpoint_every: 5,
        remedies: Remedy::parse_list("clip-global").unwrap(),
        ..RunConfig::for_task(Task::Mlp)
    };
    let tmp = tempfile::tempdir().unwrap();
    let (whole, parts) = (tmp.path().join("whole"), tmp.path().join("parts"));
    let reference = finish(&config, &whole);
    interrupt(&config, &parts, 23);
    assert!(parts.join(PREVIOUS_CHECKPOINT_FILE).exists());
    let latest = parts.join(CHECKPOINT_FILE);
    let mut bytes = std::fs::read(&latest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&latest, &bytes).unwrap();
    let resumed = finish(&config, &parts);
    same_except_time(&reference, &resumed);
}

#[test]
fn a_finished_run_is_read_back_and_another_configuration_is_refused() {
    let config = RunConfig {
        depth: 3,
        steps: 5,
        ..RunConfig::for_task(Task::Mlp)
    };
    let tmp = tempfile::tempdir().unwrap();
    let first = finish(&config, tmp.path());
    let again = finish(&config, tmp.path());
    assert_eq!(first, again, "the summary is read back, not recomputed");
    let other = RunConfig { lr: 0.5, ..config };
    let err = train(
        &other,
        &TrainOptions {
            out: Some(tmp.path().to_path_buf()),
            ..TrainOptions::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("another configuration"), "{err}");
}

#[test]
fn a_sweep_runs_its_grid_ranks_remedies_and_does_not_redo_finished_runs() {
    let text = r#"
        task = "mlp"
        steps = 40
        depth = 24
        seed = [0, 1]
        remedy = ["none", "clip-global", "he"]
    "#;
    let grid = Grid::from_toml(text, Path::new("grid.toml")).unwrap();
    let runs = grid.runs().unwrap();
    assert_eq!(runs.len(), 6);
    let tmp = tempfile::tempdir().unwrap();
    let count = std::sync::atomic::AtomicUsize::new(0);
    let done = |_: &RunConfig, _: &RunSummary| {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    let result = run_sweep(&runs, tmp.path(), 2, &done).unwrap();
    assert_eq!(result.runs.len(), 6);
    assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 6);
    let names: Vec<String> = result
        .ranking
        .iter()
        .map(|e| e.remedy.to_string())
        .collect();
    let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
    assert!(pos("clip-global=1") < pos("none"), "{names:?}");
    assert!(pos("he") < pos("none"), "{names:?}");
    let none = &result.ranking[pos("none")];
    assert_eq!(none.diverged, 2);
    assert_eq!(result.ranking[pos("clip-global=1")].rescued, 2);

    // Again: every summary is read back unchanged (same wall times).
    let again = run_sweep(&runs, tmp.path(), 2, &done).unwrap();
    assert_eq!(again, result);
}

#[test]
fn grid_files_name_the_line_of_a_mistake() {
    for (text, needle) in [
        ("task = \"mlp\"\nsteps = -3\n", "line 2"),
        (
            "depth = [4, 8]\nlearning_rate = 0.1\n",
            "unknown field `learning_rate`",
        ),
        (
            "remedy = [\"none\", \"clip-glob\"]\n",
            "unknown remedy 'clip-glob'",
        ),
        ("task = \"cnn\"\n", "unknown task 'cnn'"),
    ] {
        let err = Grid::from_toml(text, Path::new("g.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("g.toml: "), "{err}");
        assert!(err.contains(needle), "{text}: {err}");
    }
}
