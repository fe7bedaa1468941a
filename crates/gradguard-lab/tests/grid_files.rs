//! Every grid file the project ships parses and expands to runs the lab accepts, so a documented
//! `gradguard sweep --grid grids/…` command never fails on a stale key.

use std::path::Path;

use gradguard_lab::check;
use gradguard_lab::sweep::Grid;

#[test]
fn every_shipped_grid_parses_and_its_runs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../grids");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let grid =
            Grid::from_toml(&text, &path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let runs = grid
            .runs()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!runs.is_empty(), "{}", path.display());
        // One check per grid loads its task's data; the settings of every run are validated.
        check(&runs[0]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for run in &runs {
            run.validate()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} grid files in {}", dir.display());
}
