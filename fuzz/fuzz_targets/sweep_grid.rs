//! The sweep grid parser (TOML): any text gives a grid or an error naming the file and line,
//! never a panic; a grid it accepts expands or refuses its runs cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("grid.toml");
    if let Ok(grid) = gradguard_lab::sweep::Grid::from_toml(text, path) {
        // Expanding checks every run; cap the product so a fuzzed grid cannot ask for millions.
        let size = grid.depths.len()
            * grid.lrs.len()
            * grid.inits.len()
            * grid.init_gains.len()
            * grid.remedies.len()
            * grid.seeds.len();
        if size <= 64 {
            let _ = grid.runs();
        }
    }
});
