//! Counting the kernel launches of a piece of work on Burn's CubeCL backends (wgpu, CUDA).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::cubecl::logging::{LaunchObservation, LaunchObserver};

#[derive(Default)]
struct Count(AtomicU64);

impl LaunchObserver for Count {
    fn launched(&self, _kernel: &'static str) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs `work` and counts the kernels it launched, through CubeCL's launch observer.
///
/// The observer is process-wide: launches from other threads while `work` runs are counted too,
/// and autotune's trial launches the first time a shape is seen. Count a warm, quiet run (the
/// adapter's wgpu tests and the `guard_overhead` bench do). Backends that are not CubeCL (flex)
/// launch no kernels: 0.
pub fn count_launches<R>(work: impl FnOnce() -> R) -> (R, u64) {
    let count = Arc::new(Count::default());
    let watching = LaunchObservation::new(count.clone());
    let out = work();
    drop(watching);
    (out, count.0.load(Ordering::Relaxed))
}
