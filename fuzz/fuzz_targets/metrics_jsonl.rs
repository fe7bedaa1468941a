//! The metrics JSONL reader: any text gives records or an error naming the line, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gradguard_report::read_metrics(data);
});
