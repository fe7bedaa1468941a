//! The `gradguard` binary end to end: outputs, exit codes, and nothing left behind on error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gradguard::HostTensor;
use gradguard::safetensors_io::{read_tensors, write_tensors};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gradguard"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the binary runs")
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn save(path: &Path, tensors: &[(&str, &[usize], Vec<f32>)]) {
    let ts: Vec<HostTensor> = tensors
        .iter()
        .map(|(n, s, v)| HostTensor::new(*n, s.to_vec(), v.clone()).unwrap())
        .collect();
    std::fs::write(path, write_tensors(&ts, None).unwrap()).unwrap();
}

fn sample(dir: &Path) -> PathBuf {
    let p = dir.join("grads.safetensors");
    save(
        &p,
        &[
            (
                "layers.0.weight",
                &[2, 3],
                vec![3.0, 0.0, 0.0, 4.0, 0.0, 0.0],
            ),
            ("layers.0.bias", &[3], vec![0.0, 0.0, 12.0]),
            ("layers.1.weight", &[3, 1], vec![0.1, 0.2, 0.2]),
        ],
    );
    p
}

fn load(path: &Path) -> Vec<HostTensor> {
    read_tensors(&std::fs::read(path).unwrap()).unwrap().0
}

fn l2(ts: &[HostTensor]) -> f64 {
    ts.iter()
        .flat_map(|t| &t.values)
        .map(|&x| f64::from(x).powi(2))
        .sum::<f64>()
        .sqrt()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).expect("stdout is JSON")
}

/// Exit code 2, exactly one line on stderr that contains `needle`.
fn assert_bad_input(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    assert!(err.contains(needle), "'{needle}' not in: {err}");
}

#[test]
fn inspect_prints_per_tensor_and_global_statistics() {
    let dir = tmp();
    let f = sample(dir.path());
    let o = run(&["inspect", f.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    // Natural name order: bias before weight within a layer, layer 0 before layer 1.
    assert_eq!(v["tensors"][0]["name"], "layers.0.bias");
    assert_eq!(v["tensors"][1]["name"], "layers.0.weight");
    assert_eq!(v["tensors"][1]["l2"], 5.0);
    assert_eq!(v["tensors"][0]["linf"], 12.0);
    let expected = (169.0f64 + 0.09).sqrt();
    assert!((v["global"]["l2"].as_f64().unwrap() - expected).abs() < 1e-6);
    assert_eq!(v["global"]["tensors"], 3);
    assert_eq!(v["depth"]["layers"][0]["layer"], "layers.0");
    let text = run(&["inspect", f.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(
        out.contains("layers.1.weight") && out.contains("global: 3 tensors"),
        "{out}"
    );
}

#[test]
fn clip_by_global_norm_writes_clipped_gradients_and_reports_the_scale() {
    let dir = tmp();
    let f = sample(dir.path());
    let out = dir.path().join("out.safetensors");
    let o = run(&[
        "clip",
        f.to_str().unwrap(),
        out.to_str().unwrap(),
        "--global-norm",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    let before = (169.0f64 + 0.09).sqrt();
    assert!((v["total_norm_before"].as_f64().unwrap() - before).abs() < 1e-6);
    assert!((v["scale"].as_f64().unwrap() - 1.0 / (before + 1e-6)).abs() < 1e-9);
    assert_eq!(v["decision"]["kind"], "apply");
    let clipped = load(&out);
    assert_eq!(clipped[2].name, "layers.1.weight");
    assert!((l2(&clipped) - 1.0).abs() < 1e-5);
}

/// Issue "Peer parity": the top-level total is in the chosen p, as PyTorch's `clip_grad_norm_`
/// returns it; the L2 total keeps its own name.
#[test]
fn clip_reports_the_total_norm_in_the_chosen_p() {
    let dir = tmp();
    let f = sample(dir.path());
    let out = dir.path().join("out.safetensors");
    let o = run(&[
        "clip",
        f.to_str().unwrap(),
        out.to_str().unwrap(),
        "--global-norm",
        "1",
        "--norm-type",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    // Σ|g| = 3 + 4 + 12 + 0.1 + 0.2 + 0.2.
    let l1 = 19.5f64;
    assert!(
        (v["total_norm_before"].as_f64().unwrap() - l1).abs() < 1e-5,
        "{v}"
    );
    assert!(
        (v["total_norm_after"].as_f64().unwrap() - 1.0).abs() < 1e-5,
        "{v}"
    );
    let l2 = (169.0f64 + 0.09).sqrt();
    assert!(
        (v["total_l2_before"].as_f64().unwrap() - l2).abs() < 1e-6,
        "{v}"
    );
    let text = run(&[
        "clip",
        f.to_str().unwrap(),
        out.to_str().unwrap(),
        "--global-norm",
        "1",
        "--norm-type",
        "1",
    ]);
    let printed = String::from_utf8_lossy(&text.stdout);
    assert!(printed.contains("total norm (L1) before 1.95"), "{printed}");
}

#[test]
fn rules_apply_in_command_line_order() {
    let dir = tmp();
    let f = sample(dir.path());
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    let fs = f.to_str().unwrap();
    assert!(
        run(&[
            "clip",
            fs,
            a.to_str().unwrap(),
            "--value",
            "1",
            "--global-norm",
            "1"
        ])
        .status
        .success()
    );
    assert!(
        run(&[
            "clip",
            fs,
            b.to_str().unwrap(),
            "--global-norm",
            "1",
            "--value",
            "1"
        ])
        .status
        .success()
    );
    // Clamping first leaves [1, 1, 1, 0.1, 0.2, 0.2]: norm ≈ 1.77, then scaled to 1.
    assert!((l2(&load(&a)) - 1.0).abs() < 1e-5);
    // Scaling first makes every value < 1: the clamp then changes nothing.
    let bias = load(&b)
        .into_iter()
        .find(|t| t.name == "layers.0.bias")
        .unwrap();
    assert!((bias.values[2] - 12.0 / 13.0035).abs() < 1e-4, "{bias:?}");
}

/// Any registered rule is reachable by its lab name, ordered with the flags; a bad one is one
/// line and exit code 2.
#[test]
fn registered_rules_run_by_name_in_command_line_order() {
    let dir = tmp();
    let f = sample(dir.path());
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    let fs = f.to_str().unwrap();
    let by_flags = run(&[
        "clip",
        fs,
        a.to_str().unwrap(),
        "--value",
        "1",
        "--global-norm",
        "1",
    ]);
    assert!(by_flags.status.success(), "{}", stderr(&by_flags));
    let by_name = run(&[
        "clip",
        fs,
        b.to_str().unwrap(),
        "--rule",
        "clip-value=1",
        "--global-norm",
        "1",
        "--json",
    ]);
    assert!(by_name.status.success(), "{}", stderr(&by_name));
    let rules = json(&by_name)["rules"].as_array().unwrap().clone();
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[1]["rule"], "clip-global");
    for (x, y) in load(&a).iter().zip(load(&b)) {
        assert_eq!(x.values, y.values, "{}", x.name);
    }
    let o = run(&["clip", fs, b.to_str().unwrap(), "--rule", "zclip", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_bad_input(
        &run(&["clip", fs, "x.safetensors", "--rule", "nope"]),
        "nope",
    );
    assert_bad_input(
        &run(&["clip", fs, "x.safetensors", "--rule", "agc"]),
        "needs --params",
    );
}

/// f16 and bf16 files (how PyTorch users save gradients) are read exactly and written back in
/// their own dtype; the clip matches the f32 computation rounded once.
#[test]
fn half_precision_files_are_clipped_and_written_back_in_kind() {
    use gradguard::safetensors_io::{StoredDtype, read_tensors_with_dtypes, write_tensors_as};
    let dir = tmp();
    let values: Vec<f32> = vec![3.0, -4.0, 0.25, 12.0];
    for dtype in [StoredDtype::F16, StoredDtype::BF16] {
        let input = dir.path().join("half.safetensors");
        let out = dir.path().join("half-out.safetensors");
        let t = HostTensor::new("w", vec![2, 2], values.clone()).unwrap();
        std::fs::write(&input, write_tensors_as(&[t], &[dtype], None).unwrap()).unwrap();
        let (is, os) = (input.to_str().unwrap(), out.to_str().unwrap());
        let o = run(&["inspect", is, "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = run(&["clip", is, os, "--global-norm", "1", "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let norm = values
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((json(&o)["total_norm_before"].as_f64().unwrap() - norm).abs() < 1e-9);
        let (back, dtypes, _) = read_tensors_with_dtypes(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(dtypes, vec![dtype], "written back in kind");
        let scale = (1.0 / (norm + 1e-6)) as f32;
        let expected: Vec<f32> = values.iter().map(|v| v * scale).collect();
        let expected = HostTensor::new("w", vec![2, 2], expected).unwrap();
        let bytes = write_tensors_as(&[expected], &[dtype], None).unwrap();
        let (expected, _, _) = read_tensors_with_dtypes(&bytes).unwrap();
        assert_eq!(back[0].values, expected[0].values, "{dtype:?}");
    }
}

/// An f64 file (a double-precision model's gradients) keeps f64 precision through `inspect` and
/// `clip`: values that f32 cannot hold survive, the total is the f64 one, the output is F64.
#[test]
fn f64_files_keep_their_precision_through_inspect_and_clip() {
    use gradguard::F64Tensor;
    use gradguard::safetensors_io::{StoredDtype, read_f64_tensors, write_f64_tensors_as};
    let dir = tmp();
    let input = dir.path().join("f64.safetensors");
    let out = dir.path().join("f64-out.safetensors");
    // 1 + 2⁻⁴⁰ rounds to 1 in f32.
    let values = vec![3.0 * (1.0 + 2f64.powi(-40)), -4.0, 0.25, 12.0];
    let mixed = [
        F64Tensor::new("layers.0.weight", vec![2, 2], values.clone()).unwrap(),
        F64Tensor::new("layers.1.bias", vec![1], vec![0.5]).unwrap(),
    ];
    let dtypes = [StoredDtype::F64, StoredDtype::F32];
    std::fs::write(&input, write_f64_tensors_as(&mixed, &dtypes, None).unwrap()).unwrap();
    let (is, os) = (input.to_str().unwrap(), out.to_str().unwrap());
    let all: Vec<f64> = values.iter().copied().chain([0.5]).collect();
    let norm = all.iter().map(|v| v * v).sum::<f64>().sqrt();

    let o = run(&["inspect", is, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["global"]["l2"].as_f64().unwrap(), norm);

    let o = run(&["clip", is, os, "--global-norm", "1", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["total_norm_before"].as_f64().unwrap(), norm);
    let (back, kinds, _) = read_f64_tensors(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(kinds, dtypes, "each tensor written back in kind");
    let coef = 1.0 / (norm + 1e-6);
    let expected: Vec<f64> = values.iter().map(|v| v * coef).collect();
    assert_eq!(back[0].values, expected, "f64 values clipped in f64");
    assert_eq!(back[1].values, vec![f64::from((0.5 * coef) as f32)]);
}

/// One name per rule: every rule in the core's registry runs as `--rule NAME`, reports itself
/// under that name, and the help lists exactly the registry's names.
#[test]
fn every_registered_rule_runs_by_its_name_and_reports_that_name() {
    let dir = tmp();
    let g = dir.path().join("g.safetensors");
    let p = dir.path().join("p.safetensors");
    let out = dir.path().join("o.safetensors");
    save(&g, &[("w", &[2, 2], vec![3.0, -4.0, 0.5, 100.0])]);
    save(&p, &[("w", &[2, 2], vec![1.0, 1.0, 1.0, 1.0])]);
    let (gs, ps, os) = (
        g.to_str().unwrap(),
        p.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    for entry in gradguard::rules::RULES {
        let o = run(&[
            "clip", gs, os, "--rule", entry.name, "--params", ps, "--json",
        ]);
        assert!(o.status.success(), "{}: {}", entry.name, stderr(&o));
        let rules = json(&o)["rules"].as_array().unwrap().clone();
        assert_eq!(rules.len(), 1, "{}", entry.name);
        assert_eq!(rules[0]["rule"], entry.name);
    }
    let help = run(&["clip", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout).replace('\n', " ");
    let listed = help
        .split("Any registered rule by name: ")
        .nth(1)
        .and_then(|rest| rest.split(" (agc needs").next())
        .expect("the --rule help lists the rules");
    let listed: Vec<&str> = listed
        .split(", ")
        .map(|n| n.split('[').next().unwrap())
        .collect();
    let registry: Vec<&str> = gradguard::rules::RULES.iter().map(|e| e.name).collect();
    assert_eq!(listed, registry);
}

/// A dedicated flag and `--rule` build the same rule with the same settings: `--norm-type`,
/// `--eps` and `--layout` reach a rule however it is named.
#[test]
fn dedicated_flags_and_rule_names_cannot_disagree() {
    let dir = tmp();
    let g = dir.path().join("g.safetensors");
    let p = dir.path().join("p.safetensors");
    save(&g, &[("w", &[2, 3], vec![3.0, -4.0, 0.5, 100.0, 0.0, 2.0])]);
    save(&p, &[("w", &[2, 3], vec![1.0, 0.0, 2.0, 0.5, 0.0, 1.0])]);
    let (gs, ps) = (g.to_str().unwrap(), p.to_str().unwrap());
    let pairs: [(&[&str], &[&str]); 5] = [
        (
            &["--global-norm", "1", "--norm-type", "1"],
            &["--rule", "clip-global=1", "--norm-type", "1"],
        ),
        (
            &["--per-tensor-norm", "2", "--norm-type", "inf"],
            &["--rule", "clip-norm=2", "--norm-type", "inf"],
        ),
        (
            &["--agc", "0.1", "--eps", "0.5", "--layout", "output-first"],
            &[
                "--rule",
                "agc=0.1",
                "--eps",
                "0.5",
                "--layout",
                "output-first",
            ],
        ),
        // A rule's own keys reach the same settings.
        (
            &["--global-norm", "1", "--norm-type", "1"],
            &["--rule", "clip-global=1:p=1"],
        ),
        (
            &["--agc", "0.1", "--eps", "0.5", "--layout", "output-first"],
            &["--rule", "agc=0.1:eps=0.5:layout=output-first"],
        ),
    ];
    for (k, (by_flag, by_name)) in pairs.iter().enumerate() {
        let a = dir.path().join(format!("a{k}.safetensors"));
        let b = dir.path().join(format!("b{k}.safetensors"));
        let outputs = [(&a, *by_flag), (&b, *by_name)].map(|(out, rule)| {
            let mut cmd = vec!["clip", gs, out.to_str().unwrap(), "--params", ps, "--json"];
            cmd.extend_from_slice(rule);
            let o = run(&cmd);
            assert!(o.status.success(), "{rule:?}: {}", stderr(&o));
            json(&o)["rules"].clone()
        });
        assert_eq!(outputs[0], outputs[1], "{by_flag:?} against {by_name:?}");
        for (x, y) in load(&a).iter().zip(load(&b)) {
            assert_eq!(x.values, y.values, "{by_flag:?}");
        }
    }
    // The settings really reach the rule named by --rule: p = 1 and p = 2 clip differently.
    let l1 = dir.path().join("l1.safetensors");
    let l2 = dir.path().join("l2.safetensors");
    for (out, p) in [(&l1, "1"), (&l2, "2")] {
        let o = run(&[
            "clip",
            gs,
            out.to_str().unwrap(),
            "--rule",
            "clip-global=1",
            "--norm-type",
            p,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_ne!(load(&l1)[0].values, load(&l2)[0].values);
}

#[test]
fn agc_with_parameters_clips_units() {
    let dir = tmp();
    let g = dir.path().join("g.safetensors");
    let p = dir.path().join("p.safetensors");
    let out = dir.path().join("o.safetensors");
    save(&g, &[("w", &[2, 2], vec![1.0, 0.001, 1.0, 0.001])]);
    save(&p, &[("w", &[2, 2], vec![1.0, 1.0, 0.0, 1.0])]);
    let o = run(&[
        "clip",
        g.to_str().unwrap(),
        out.to_str().unwrap(),
        "--agc",
        "0.1",
        "--params",
        p.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let w = &load(&out)[0].values;
    // Column 0 (input-first): ‖G‖ = √2 > 0.1·‖W‖ = 0.1 → scaled to norm 0.1. Column 1 untouched.
    assert!(((f64::from(w[0]).powi(2) + f64::from(w[2]).powi(2)).sqrt() - 0.1).abs() < 1e-6);
    assert_eq!(w[1], 0.001);
}

#[test]
fn non_finite_gradients_follow_the_policy() {
    let dir = tmp();
    let f = dir.path().join("nan.safetensors");
    save(
        &f,
        &[
            ("a", &[2], vec![1.0, 2.0]),
            ("b.weight", &[3], vec![0.0, 0.0, f32::NAN]),
        ],
    );
    let out = dir.path().join("out.safetensors");
    let (fs, os) = (f.to_str().unwrap(), out.to_str().unwrap());

    let o = run(&["clip", fs, os, "--global-norm", "1"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("'b.weight' flat index 2 is NaN"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());

    let o = run(&[
        "clip",
        fs,
        os,
        "--global-norm",
        "1",
        "--on-nonfinite",
        "skip",
        "--json",
    ]);
    assert!(o.status.success());
    assert_eq!(json(&o)["decision"]["kind"], "skip");
    assert!(!out.exists());

    let o = run(&[
        "clip",
        fs,
        os,
        "--global-norm",
        "1",
        "--on-nonfinite",
        "zero",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let repaired = load(&out);
    assert_eq!(repaired[1].values[2], 0.0);
    assert!((l2(&repaired) - 1.0).abs() < 1e-5);
}

#[test]
fn bad_input_is_one_line_exit_2_and_leaves_nothing_behind() {
    let dir = tmp();
    let good = sample(dir.path());
    let gs = good.to_str().unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 5]).unwrap();
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a tensor file at all").unwrap();
    let int_file = dir.path().join("i64.safetensors");
    let header = br#"{"x":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#;
    let mut int_bytes = (header.len() as u64).to_le_bytes().to_vec();
    int_bytes.extend_from_slice(header);
    int_bytes.extend_from_slice(&3i64.to_le_bytes());
    std::fs::write(&int_file, int_bytes).unwrap();
    let params = dir.path().join("params.safetensors");
    save(&params, &[("layers.0.weight", &[3, 2], vec![0.0; 6])]);
    let out = dir.path().join("out.safetensors");
    let os = out.to_str().unwrap();
    let missing_dir = dir.path().join("no/such/dir/out.safetensors");

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["inspect", "/no/such/file.safetensors"],
            "cannot read '/no/such/file.safetensors'",
        ),
        (
            vec!["inspect", truncated.to_str().unwrap()],
            "truncated.safetensors",
        ),
        (
            vec!["inspect", garbage.to_str().unwrap()],
            "not a valid safetensors file",
        ),
        (vec!["inspect", int_file.to_str().unwrap()], "dtype I64"),
        (
            vec![
                "clip",
                truncated.to_str().unwrap(),
                os,
                "--global-norm",
                "1",
            ],
            "truncated.safetensors",
        ),
        (
            vec!["clip", gs, os, "--global-norm", "-1"],
            "--global-norm -1: rule 'clip-global' needs a positive number, got -1",
        ),
        (
            vec!["clip", gs, os, "--global-norm", "abc"],
            "invalid value 'abc'",
        ),
        (
            vec!["clip", gs, os, "--global-norm", "1", "--norm-type", "0.5"],
            "norm type must be",
        ),
        (
            vec!["clip", gs, os, "--value", "-2"],
            "--value -2: rule 'clip-value' needs a positive number",
        ),
        (vec!["clip", gs, os], "no rule given"),
        (vec!["clip", gs, os, "--agc", "0.1"], "--params"),
        (
            vec![
                "clip",
                gs,
                os,
                "--agc",
                "0.1",
                "--params",
                params.to_str().unwrap(),
            ],
            "no parameter of this name",
        ),
        (
            vec!["clip", gs, os, "--agc", "0", "--params", gs],
            "--agc 0: rule 'agc' needs a positive number",
        ),
        (
            vec!["clip", gs, os, "--frobnicate"],
            "unexpected argument '--frobnicate'",
        ),
        (
            vec![
                "clip",
                gs,
                missing_dir.to_str().unwrap(),
                "--global-norm",
                "1",
            ],
            "cannot write",
        ),
        (
            vec![
                "clip",
                gs,
                dir.path().to_str().unwrap(),
                "--global-norm",
                "1",
            ],
            "it is a directory",
        ),
        (vec!["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, needle) in cases {
        let o = run(&args);
        assert_bad_input(&o, needle);
        assert!(!out.exists(), "{args:?} left an output file");
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn a_failed_run_leaves_an_existing_output_untouched() {
    let dir = tmp();
    let f = dir.path().join("nan.safetensors");
    save(&f, &[("a", &[1], vec![f32::INFINITY])]);
    let out = dir.path().join("out.safetensors");
    std::fs::write(&out, b"previous").unwrap();
    let o = run(&[
        "clip",
        f.to_str().unwrap(),
        out.to_str().unwrap(),
        "--value",
        "1",
        "--on-nonfinite",
        "error",
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");
}
