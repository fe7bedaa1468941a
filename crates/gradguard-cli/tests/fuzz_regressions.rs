//! Replays every input kept under `fuzz/regressions/TARGET/` through the reader that target
//! fuzzes: each must give a value or an error, never a panic.

use std::path::PathBuf;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no input", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

#[test]
fn safetensors_reader_inputs() {
    for (path, bytes) in inputs("safetensors_reader") {
        if let Ok((tensors, _)) = gradguard::safetensors_io::read_tensors(&bytes) {
            for t in &tensors {
                let _ = gradguard::kernel::slice_stats(&t.values);
            }
        } else {
            eprintln!("{}: refused", path.display());
        }
    }
}

#[test]
fn metrics_jsonl_inputs() {
    for (path, bytes) in inputs("metrics_jsonl") {
        if let Err(e) = gradguard_report::read_metrics(bytes.as_slice()) {
            assert!(
                e.to_string().starts_with("line "),
                "{}: {e}",
                path.display()
            );
        }
    }
}

#[test]
fn sweep_grid_inputs() {
    for (path, bytes) in inputs("sweep_grid") {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        match gradguard_lab::sweep::Grid::from_toml(text, &path) {
            Ok(grid) => {
                let _ = grid.runs();
            }
            // An error names the file it came from.
            Err(e) => assert!(
                e.to_string().starts_with(&path.display().to_string()),
                "{e}"
            ),
        }
    }
}
