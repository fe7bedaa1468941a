//! A collective for devices simulated by threads of one process (tests, single-host runs).

use std::sync::{Barrier, Mutex};

use crate::collective_gather::nan_max;
use crate::shard::Collective;

/// All-reduce among `n` threads of one process: each thread calls with its own values and gets
/// the reduction back. Every thread must make the same calls in the same order.
#[derive(Debug)]
pub struct ThreadCollective {
    barrier: Barrier,
    buffer: Mutex<(Vec<f64>, usize)>,
}

impl ThreadCollective {
    /// A collective for `n` participants.
    pub fn new(n: usize) -> Self {
        ThreadCollective {
            barrier: Barrier::new(n),
            buffer: Mutex::new((Vec::new(), 0)),
        }
    }

    fn reduce(&self, values: &mut [f64], op: fn(f64, f64) -> f64) {
        // Phase 1: everyone adds its values; the first to arrive seeds the buffer.
        {
            let mut b = self.buffer.lock().expect("no participant panicked");
            if b.1 == 0 {
                b.0 = values.to_vec();
            } else {
                for (acc, &v) in b.0.iter_mut().zip(values.iter()) {
                    *acc = op(*acc, v);
                }
            }
            b.1 += 1;
        }
        self.barrier.wait();
        // Phase 2: everyone reads the result.
        values.copy_from_slice(&self.buffer.lock().expect("no participant panicked").0);
        // Phase 3: the leader resets the buffer once all have read it.
        if self.barrier.wait().is_leader() {
            *self.buffer.lock().expect("no participant panicked") = (Vec::new(), 0);
        }
        self.barrier.wait();
    }
}

impl Collective for ThreadCollective {
    fn all_reduce_sum(&self, values: &mut [f64]) {
        self.reduce(values, |a, b| a + b);
    }

    fn all_reduce_max(&self, values: &mut [f64]) {
        // NaN-safe: a NaN anywhere makes the maximum NaN.
        self.reduce(values, nan_max);
    }
}
