//! The safetensors readers behind `gradguard inspect` and `gradguard clip`: any bytes give
//! tensors or a typed error, never a panic; what they accept, they can statistically summarize.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((tensors, _)) = gradguard::safetensors_io::read_tensors(data) {
        for t in &tensors {
            let _ = gradguard::kernel::slice_stats(&t.values);
        }
    }
    if let Ok((tensors, _, _)) = gradguard::safetensors_io::read_f64_tensors(data) {
        for t in &tensors {
            let _ = gradguard::f64_stats(&t.values);
        }
    }
});
