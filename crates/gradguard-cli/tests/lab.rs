//! The lab's commands end to end: `train`, `sweep`, `report`, `demo`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gradguard"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o.stdout)))
}

/// `gradguard train FLAGS… --out OUT`.
fn train_args(flags: &[&str], out: &Path) -> Vec<String> {
    std::iter::once("train")
        .chain(flags.iter().copied())
        .map(str::to_string)
        .chain(["--out".to_string(), out.display().to_string()])
        .collect()
}

fn summary_without_time(dir: &Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("wall_time_s");
    v
}

#[test]
fn train_writes_a_run_directory_and_prints_its_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let o = run(&[
        "train",
        "--task",
        "mlp",
        "--depth",
        "6",
        "--steps",
        "20",
        "--remedy",
        "clip-global,warmup=5",
        "--out",
        dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let s = json(&o);
    for key in [
        "task",
        "remedy",
        "seed",
        "steps",
        "final_loss",
        "accuracy",
        "diverged",
        "diverged_at",
        "skipped_steps",
        "rollbacks",
        "wall_time_s",
    ] {
        assert!(s.get(key).is_some(), "summary lacks {key}: {s}");
    }
    assert_eq!(s["task"], "mlp");
    assert_eq!(s["remedy"], "clip-global=1,warmup=5");
    assert_eq!(s["steps"], 20);
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 20);
    let events: Vec<_> = std::fs::read_dir(dir.join("tensorboard"))
        .unwrap()
        .collect();
    assert_eq!(events.len(), 1);
    for file in ["config.json", "checkpoint.ggck", "summary.json"] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
}

#[test]
fn a_killed_run_resumes_and_ends_as_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (killed, whole) = (tmp.path().join("killed"), tmp.path().join("whole"));
    let flags = [
        "--task",
        "adding",
        "--seq-len",
        "40",
        "--steps",
        "400",
        "--checkpoint-every",
        "10",
        "--remedy",
        "guard,clip-global",
    ];
    let args = |out: &Path| train_args(&flags, out);
    let mut child = bin()
        .args(args(&killed))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !killed.join("checkpoint.ggck").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before it could be killed"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!killed.join("summary.json").exists());

    let resumed = bin().args(args(&killed)).output().unwrap();
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    let reference = bin().args(args(&whole)).output().unwrap();
    assert!(reference.status.success());
    assert_eq!(summary_without_time(&killed), summary_without_time(&whole));
    let (a, b) = (
        std::fs::read_to_string(killed.join("metrics.jsonl")).unwrap(),
        std::fs::read_to_string(whole.join("metrics.jsonl")).unwrap(),
    );
    assert_eq!(a.lines().count(), b.lines().count());
    assert!(
        a == b,
        "every step's loss and norms match the uninterrupted run's"
    );
}

#[test]
fn bad_input_gets_one_line_and_exit_code_2_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let grid = tmp.path().join("grid.toml");
    std::fs::write(&grid, "depth = [4, 8]\nlearning_rate = 0.1\n").unwrap();
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();
    // A directory cannot be created under a file: an unwritable output, even for root.
    let under_file = file.join("run").display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["train", "--remedy", "clip-glob", "--out", o],
            "unknown remedy 'clip-glob'",
        ),
        (vec!["train", "--lr", "-1", "--out", o], "positive"),
        (
            vec!["train", "--remedy", "autoclip=120", "--out", o],
            "above 100",
        ),
        (vec!["train", "--steps", "0", "--out", o], "≥ 1"),
        (
            vec!["train", "--precision", "f8", "--out", o],
            "unknown precision 'f8'",
        ),
        (
            vec!["train", "--remedy", "loss-scale=0", "--out", o],
            "positive",
        ),
        (
            vec!["train", "--remedy", "loss-scale=1e30", "--out", o],
            "init_scale 1e30",
        ),
        (
            vec![
                "train",
                "--task",
                "adding",
                "--remedy",
                "batch-norm",
                "--out",
                o,
            ],
            "mlp task only",
        ),
        (
            vec!["train", "--task", "cnn", "--out", o],
            "unknown task 'cnn'",
        ),
        (vec!["train", "--out", file.to_str().unwrap()], "is a file"),
        (
            vec!["sweep", "--grid", grid.to_str().unwrap(), "--out", o],
            "unknown field `learning_rate`",
        ),
        (
            vec!["sweep", "--grid", "/no/such/grid.toml", "--out", o],
            "cannot read",
        ),
        (
            vec!["sweep", "--remedy", "none;zclip=3", "--out", o],
            "takes no value",
        ),
        (
            vec!["report", tmp.path().to_str().unwrap()],
            "neither a finished run",
        ),
        (vec!["report", "/no/such/run"], "neither a finished run"),
        (vec!["demo", "--bogus"], "--bogus"),
        (
            vec!["train", "--out", &under_file],
            "cannot create directory",
        ),
        (
            vec!["sweep", "--steps", "2", "--out", &under_file],
            "cannot create directory",
        ),
        (
            vec!["demo", "--quick", "--out", &under_file],
            "cannot create directory",
        ),
        (
            vec!["train", "--remedy", "clip-global=-1", "--out", o],
            "positive",
        ),
        (
            vec!["train", "--remedy", "autoclip=0", "--out", o],
            "positive",
        ),
        (vec!["train", "--init-gain", "nan", "--out", o], "positive"),
        (
            vec!["train", "--depth", "100000", "--out", o],
            "depth must be in 1..=1024",
        ),
        (vec!["sweep", "--lr", "0.1,-2", "--out", o], "positive"),
        (vec!["probe", "--from", "/no/such/run"], "config.json"),
        (vec!["reproduce", "pascanu", "--out", o], "pascanu2013"),
        (
            vec!["reproduce", "he2015", "--jobs", "x", "--out", o],
            "--jobs",
        ),
    ];
    for (args, needle) in cases {
        let r = run(&args);
        let err = text(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
        assert!(!out.exists(), "{args:?} left {}", out.display());
    }
}

#[test]
fn fail_on_divergence_exits_1_for_an_exploding_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r");
    let r = run(&[
        "train",
        "--steps",
        "10",
        "--fail-on-divergence",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r.stderr));
    assert!(text(&r.stderr).contains("diverged"));
    assert!(out.join("summary.json").is_file(), "the evidence stays");
}

#[test]
fn a_sweep_runs_in_the_precision_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sweep");
    let o = run(&[
        "sweep",
        "--task",
        "mlp",
        "--depth",
        "3",
        "--steps",
        "3",
        "--remedy",
        "none",
        "--precision",
        "bf16",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let runs: Vec<String> = std::fs::read_dir(out.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].ends_with("-bf16"), "{runs:?}");
    let config =
        std::fs::read_to_string(out.join("runs").join(&runs[0]).join("config.json")).unwrap();
    assert!(config.contains(r#""precision": "bf16""#), "{config}");
}

#[test]
fn a_sweep_ranks_remedies_writes_a_report_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sweep");
    let args = [
        "sweep",
        "--task",
        "mlp",
        "--steps",
        "25",
        "--remedy",
        "none;clip-global;he",
        "--seed",
        "0,1",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    let first = run(&args);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let result = json(&first);
    assert_eq!(result["runs"].as_array().unwrap().len(), 6);
    let ranking: Vec<&str> = result["ranking"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["remedy"].as_str().unwrap())
        .collect();
    assert_eq!(ranking.last(), Some(&"none"), "{ranking:?}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("Remedies ranked by measured effect"));
    let again = run(&args);
    assert_eq!(
        json(&again),
        result,
        "finished runs are read back, not redone"
    );

    let report = tmp.path().join("r.html");
    let r = run(&[
        "report",
        out.to_str().unwrap(),
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(std::fs::read_to_string(report).unwrap().contains("<svg"));
}

#[test]
fn a_sweep_with_twins_of_the_references_measures_the_grids_own_noise() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sweep");
    let sweep = |json: bool| {
        let mut args = vec![
            "sweep",
            "--task",
            "mlp",
            "--steps",
            "10",
            "--remedy",
            "clip-global;clip-global=1.01;agc;agc=0.0101;guard",
            "--seed",
            "0",
            "--out",
            out.to_str().unwrap(),
        ];
        if json {
            args.push("--json");
        }
        let o = run(&args);
        assert!(o.status.success(), "{}", text(&o.stderr));
        o
    };
    let result = json(&sweep(true));
    let twin = &result["guard"]["twin"];
    assert_eq!(twin["cells"], 1, "{result}");
    assert!(twin["within_target"].as_u64().unwrap() <= 1, "{twin}");
    let printed = text(&sweep(false).stdout);
    assert!(
        printed.contains("the grid's own noise: the better clip's twin (its threshold within 5%)"),
        "{printed}"
    );
}

/// `GRADGUARD_CHROMIUM` names a Chromium binary to check that the report renders (CI sets it);
/// without it the check says so and is skipped, unless `GRADGUARD_REQUIRE_TOOLS=1` is set.
fn check_renders(report: &Path) {
    let Ok(chromium) = std::env::var("GRADGUARD_CHROMIUM") else {
        assert!(
            !std::env::var("GRADGUARD_REQUIRE_TOOLS").is_ok_and(|v| !v.is_empty() && v != "0"),
            "GRADGUARD_REQUIRE_TOOLS is set but GRADGUARD_CHROMIUM names no Chromium"
        );
        eprintln!("GRADGUARD_CHROMIUM not set: the report's rendering is not checked here");
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let screenshot = profile.path().join("report.png");
    let url = format!("file://{}", report.canonicalize().unwrap().display());
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ];
    let chrome = |extra: &[String]| {
        Command::new(&chromium)
            .args(flags)
            .arg(format!(
                "--user-data-dir={}",
                profile.path().join("ud").display()
            ))
            .args(extra)
            .output()
            .expect("chromium runs")
    };
    let dom = chrome(&["--dump-dom".into(), url.clone()]);
    assert!(dom.status.success(), "{}", text(&dom.stderr));
    let dom = text(&dom.stdout);
    let source = std::fs::read_to_string(report).unwrap();
    assert_eq!(
        dom.matches("<svg").count(),
        source.matches("<svg").count(),
        "every chart parses"
    );
    assert!(dom.contains("Outcome of every run"));
    let shot = chrome(&[
        format!("--screenshot={}", screenshot.display()),
        "--window-size=1280,2400".into(),
        url,
    ]);
    assert!(shot.status.success(), "{}", text(&shot.stderr));
    let png = std::fs::read(&screenshot).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let (w, h) = (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    );
    assert_eq!((w, h), (1280, 2400));
    // A blank page compresses to a few kilobytes; charts and tables do not.
    assert!(
        png.len() > 60_000,
        "screenshot of {} bytes looks empty",
        png.len()
    );
}

#[test]
fn the_quick_demo_prints_its_table_and_writes_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let o = run(&["demo", "--quick", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    for needle in [
        "mlp none",
        "adding none",
        "mlp clip-global=1",
        "adding lstm",
        "adding guard,loss-scale=65536 · f16",
        "mixed precision",
        // The block's claims come from its own runs, found by their directories.
        "the default guard in f32:",
        "in f16 with loss scaling:",
        "family",
        "transformer language model under AdamW",
        "LR sensitivity",
        "report:",
    ] {
        assert!(stdout.contains(needle), "{needle} missing from:\n{stdout}");
    }
    let report = out.join("report.html");
    let html = std::fs::read_to_string(&report).unwrap();
    for needle in [
        "Outcome of every run",
        "Training loss of each remedy",
        "Gradient norm per layer at step 0",
        "Global gradient norm",
        "Per-layer gradient norm over steps",
        "clip threshold",
        "Dynamic loss scale",
        "guard · bf16",
        "data:image/png;base64,",
        "Gradient through time at step 0",
        "Gradient through time after the last step",
        "rate (why)",
        "Adam's own rate",
        "lm: final held-out loss against the rate",
    ] {
        assert!(html.contains(needle), "report lacks {needle}");
    }
    assert!(html.matches("<svg").count() > 60);
    check_renders(&report);
}

#[test]
fn probe_prints_json_with_the_documented_keys_and_calibrates() {
    let o = run(&[
        "probe",
        "--depth",
        "12",
        "--width",
        "64",
        "--activation",
        "relu",
        "--init-gain",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v = json(&o);
    assert_eq!(v["verdict"], "exploding");
    assert!(v["lyapunov"].as_f64().unwrap() > 0.2);
    assert_eq!(v["per_layer_gain"].as_array().unwrap().len(), 12);

    let o = run(&[
        "probe",
        "--depth",
        "20",
        "--width",
        "128",
        "--calibrate",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v = json(&o);
    let (measured, predicted) = (
        v["critical_gain"].as_f64().unwrap(),
        v["predicted_critical_gain"].as_f64().unwrap(),
    );
    assert!((predicted - 1.0).abs() < 1e-2, "{predicted}");
    assert!((measured - 1.0).abs() < 0.05, "{measured}");
}

#[test]
fn probe_reads_a_trained_run_and_writes_its_report() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let o = run(&[
        "train",
        "--depth",
        "6",
        "--steps",
        "10",
        "--remedy",
        "clip-global",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let report = tmp.path().join("probe.html");
    let o = run(&[
        "probe",
        "--from",
        dir.to_str().unwrap(),
        "--gains",
        "0.8,1.6",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("MLP of 6 layers"));
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("Gain per layer") && html.contains("Phase diagram"));
}

#[test]
fn probe_of_a_task_prints_a_verdict_and_a_largest_safe_rate() {
    let o = run(&[
        "probe",
        "--task",
        "mlp",
        "--depth",
        "6",
        "--optimizer",
        "adam",
        "--lr",
        "0.003",
        "--trial-steps",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v = json(&o);
    assert_eq!(v["task"], "mlp");
    assert!(v["optimizer"].as_str().unwrap().starts_with("Adam"));
    let probe = &v["probe"];
    assert_eq!(probe["settings"]["rate"], 0.003);
    let health = probe["verdict"]["health"].as_str().unwrap();
    assert!(
        ["explodes", "vanishes", "healthy"].contains(&health),
        "{health}"
    );
    assert!(probe["safe_rate"]["rate"].as_f64().is_some(), "{probe}");
    // The answer at the top, for scripts.
    assert_eq!(v["verdict"], probe["verdict"]["health"]);
    assert_eq!(v["largest_safe_rate"], probe["safe_rate"]["rate"]);
    assert_eq!(
        v["first_diverging_rate"],
        probe["safe_rate"]["first_diverging"]
    );
    assert_eq!(
        probe["profile"]["profile"]["layers"]
            .as_array()
            .unwrap()
            .len(),
        7
    );

    let o = run(&[
        "probe",
        "--task",
        "adding",
        "--seq-len",
        "20",
        "--trial-steps",
        "3",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    for needle in [
        "verdict:",
        "largest safe rate:",
        "butterfly:",
        "first step at 1e-1",
    ] {
        assert!(out.contains(needle), "{needle}: {out}");
    }

    // Predicted against measured, by whole runs, drawn.
    let tmp = tempfile::tempdir().unwrap();
    let page = tmp.path().join("rates.html");
    let o = run(&[
        "probe",
        "--task",
        "mlp",
        "--agreement",
        "--agreement-depths",
        "4",
        "--gains",
        "1,2",
        "--report",
        page.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("of 2 cells"), "{out}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert_eq!(html.matches("<circle").count(), 2, "one point per cell");
}

#[test]
fn probe_refuses_bad_settings_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (
            vec!["probe", "--norm", "batch"],
            "batch norm couples examples",
        ),
        (vec!["probe", "--init-gain", "0"], "positive"),
        (vec!["probe", "--init", "lsuv"], "lsuv needs data"),
        (vec!["probe", "--depth", "0"], "--depth"),
        (vec!["probe", "--task", "mlp", "--calibrate"], "--calibrate"),
        (vec!["probe", "--task", "mlp", "--residual"], "--residual"),
        (vec!["probe", "--optimizer", "adam"], "--task"),
        (vec!["probe", "--task", "lm", "--lr", "nan"], "--lr"),
        (
            vec!["probe", "--task", "mlp", "--report", "never.html"],
            "--agreement",
        ),
        (
            vec!["probe", "--from", tmp.path().to_str().unwrap()],
            "config.json",
        ),
    ] {
        let r = run(&args);
        let err = text(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn kills_at_random_moments_never_leave_a_corrupt_checkpoint_and_resume_bit_for_bit() {
    use gradguard_lab::checkpoint::{CHECKPOINT_FILE, Checkpoint, PREVIOUS_CHECKPOINT_FILE};
    let tmp = tempfile::tempdir().unwrap();
    let (killed, whole) = (tmp.path().join("killed"), tmp.path().join("whole"));
    let flags = [
        "--task",
        "mlp",
        "--depth",
        "8",
        "--init-gain",
        "1.4",
        "--lr",
        "0.001",
        "--steps",
        "3000",
        "--checkpoint-every",
        "3",
        "--remedy",
        "guard,adam",
    ];
    let args = |out: &Path| train_args(&flags, out);
    // A fixed sequence of pseudo-random delays (an LCG): reproducible, spread over the run,
    // checkpoint writes included.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut kills = 0;
    for _ in 0..12 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let delay = Duration::from_millis(100 + (state >> 33) % 300);
        let mut child = bin()
            .args(args(&killed))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let running = child.try_wait().unwrap().is_none();
        child.kill().ok();
        child.wait().unwrap();
        if !running {
            break;
        }
        kills += 1;
        // Whatever the moment, every checkpoint on disk is whole.
        for name in [CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE] {
            let path = killed.join(name);
            if let Ok(bytes) = std::fs::read(&path) {
                Checkpoint::decode(&bytes, &path)
                    .unwrap_or_else(|e| panic!("after kill {kills}: {e}"));
            }
        }
    }
    assert!(
        kills >= 3,
        "only {kills} kills landed before the run finished"
    );
    eprintln!("{kills} SIGKILLs landed; every checkpoint left on disk decoded");
    let resumed = bin().args(args(&killed)).output().unwrap();
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    let reference = bin().args(args(&whole)).output().unwrap();
    assert!(reference.status.success());
    assert_eq!(summary_without_time(&killed), summary_without_time(&whole));
    let (_, a) = gradguard_lab::load_run_model(&killed).unwrap();
    let (_, b) = gradguard_lab::load_run_model(&whole).unwrap();
    let (a, b) = (a.parameters_flat(), b.parameters_flat());
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "weights differ"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&killed)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn reproduce_prints_a_verdict_as_json_and_writes_its_report() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rep");
    let o = out.to_str().unwrap();
    // The transformer paper: a verdict in two parts.
    let r = run(&["reproduce", "wortsman2023", "--quick", "--json", "--out", o]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let v = json(&r);
    assert_eq!(v["name"], "wortsman2023");
    for key in ["claim", "measured", "rule"] {
        assert!(v[key].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    }
    assert!(v["holds"].is_boolean(), "{v}");
    let parts = v["parts"].as_array().expect("parts");
    assert_eq!(parts.len(), 2, "{v}");
    let all = parts.iter().all(|p| p["holds"].as_bool().unwrap());
    assert_eq!(v["holds"].as_bool(), Some(all), "{v}");
    assert_eq!(v["figures"].as_array().unwrap().len(), 3);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("wortsman2023"));
    assert!(html.contains("attention-logit growth"));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("findings.json")).unwrap()).unwrap();
    assert_eq!(saved[0]["holds"], v["holds"]);
    // Without --json: the three lines a reader looks for, and each part's verdict.
    let r = run(&["reproduce", "he2015", "--quick", "--out", o]);
    let said = text(&r.stdout);
    for needle in ["paper claims:", "we measured:", "holds: "] {
        assert!(said.contains(needle), "{said}");
    }
    // The help names every paper and `train --help` every remedy, from the lab's own lists.
    let help = text(&run(&["reproduce", "--help"]).stdout);
    for paper in gradguard_lab::reproduce::Paper::ALL {
        assert!(help.contains(paper.name()), "{paper} missing from {help}");
    }
    let help = text(&run(&["train", "--help"]).stdout);
    for name in ["adagc", "qk-norm", "z-loss", "guard"] {
        assert!(help.contains(name), "{name} missing from train --help");
    }
}

#[test]
fn the_train_help_states_the_defaults_a_run_uses() {
    use gradguard_lab::RunConfig;
    use gradguard_lab::tasks::Task;
    let help = text(&run(&["train", "--help"]).stdout);
    let (mlp, rnn) = (
        RunConfig::for_task(Task::Mlp),
        RunConfig::for_task(Task::Adding),
    );
    let gain = format!(
        "[default: {} (mlp), {} (recurrent)]",
        mlp.init_gain, rnn.init_gain
    );
    assert!(help.contains(&gain), "{gain} not in {help}");
    assert_eq!(mlp.lr, rnn.lr);
    assert!(
        help.contains(&format!("SGD learning rate [default: {}]", mlp.lr)),
        "{help}"
    );
    let lm = RunConfig::for_task(Task::Lm);
    assert!(
        help.contains(&format!(
            "[default: {} (mlp), {} (lm)]",
            mlp.depth, lm.depth
        )),
        "{help}"
    );
    assert!(
        help.contains(&format!("the lm task's AdamW rate [default: {}]", lm.lr)),
        "{help}"
    );
}

#[test]
fn adam_trains_at_its_own_rate_unless_the_user_sets_one() {
    let tmp = tempfile::tempdir().unwrap();
    let summary = |flags: &[&str], name: &str| {
        let out = tmp.path().join(name);
        let mut args = train_args(flags, &out);
        args.push("--json".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = run(&args);
        assert!(r.status.success(), "{}", text(&r.stderr));
        json(&r)
    };
    fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        ["--depth", "2", "--steps", "3"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect()
    }
    let own = summary(&with(&["--remedy", "adam"]), "own");
    assert_eq!(own["lr"], 0.001, "{own}");
    assert!(
        own["rate_choice"]
            .as_str()
            .unwrap()
            .contains("Adam's own rate")
    );
    let asked = summary(&with(&["--remedy", "adam", "--lr", "0.003"]), "asked");
    assert_eq!(asked["lr"], 0.003, "{asked}");
    assert!(
        asked["rate_choice"]
            .as_str()
            .unwrap()
            .contains("the rate set for Adam")
    );
    // A rate given to `adam` itself wins over --lr, which then stays the (unused) SGD rate.
    let given = summary(
        &with(&["--remedy", "adam=0.0005", "--lr", "0.003"]),
        "given",
    );
    assert_eq!(given["lr"], 0.0005, "{given}");
}

#[test]
fn the_lm_task_trains_under_adamw_and_a_sweep_measures_lr_sensitivity() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(&train_args(
        &[
            "--task",
            "lm",
            "--optimizer",
            "adamw",
            "--lr",
            "1e-3",
            "--steps",
            "20",
            "--json",
        ],
        &tmp.path().join("run"),
    )
    .iter()
    .map(String::as_str)
    .collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o.stderr));
    let s = json(&o);
    assert!(s["final_loss"].as_f64().unwrap().is_finite(), "{s}");
    assert_eq!(s["config"]["optimizer"]["kind"], "adamw");
    assert_eq!(s["config"]["warmup"], 2, "10% of the steps");

    let grid = tmp.path().join("grid.toml");
    std::fs::write(
        &grid,
        "task = \"lm\"\noptimizer = \"adam\"\nschedule = \"constant\"\nsteps = 4\nwidth = 16\n\
         seq_len = 16\nlr = [0.001, 0.01]\nremedy = [\"none\", \"guard\"]\n",
    )
    .unwrap();
    let out = tmp.path().join("sweep");
    let o = run(&[
        "sweep",
        "--grid",
        grid.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let r = json(&o);
    let curves = r["rate_curves"].as_array().unwrap();
    assert_eq!(curves.len(), 2, "{r}");
    for c in curves {
        assert_eq!(c["lrs"].as_array().unwrap().len(), 2);
        assert!(c["sensitivity"].as_f64().unwrap() >= 0.0);
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("final held-out loss against the rate"));
    // Every lm run's logit telemetry is drawn.
    assert!(
        html.contains("Largest attention logit q·k/√d_k"),
        "no attention chart"
    );
    assert!(
        html.contains("Mean log Z of the output softmax"),
        "no log Z chart"
    );
    // A bad key of the new settings is one line and exit code 2.
    std::fs::write(&grid, "task = \"lm\"\noptimizer = \"lion\"\n").unwrap();
    let o = run(&[
        "sweep",
        "--grid",
        grid.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("unknown optimizer 'lion'"));
}
