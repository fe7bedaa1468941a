//! Sharded gradients: every device reduces partial sums and takes the same decision.

mod common;

use std::thread;

use common::exact_l2;
use gradguard::rules::{Chain, ClipByGlobalNorm, Rule};
use gradguard::shard::{Collective, ShardedGradients};
use gradguard::{
    Decision, Guard, GuardConfig, HostGradients, HostTensor, StepReport, ThreadCollective,
    all_reduce_max_by_sum,
};

const DEVICES: usize = 4;

fn whole(poison: Option<(usize, usize)>) -> Vec<(String, Vec<f32>)> {
    (0..3)
        .map(|t| {
            let mut v: Vec<f32> = (0..1000)
                .map(|i| (((i * 7 + t * 13) % 101) as f32 - 50.0) * 10f32.powi(t as i32))
                .collect();
            if let Some((pt, pi)) = poison
                && pt == t
            {
                v[pi] = f32::NAN;
            }
            (format!("layers.{t}.weight"), v)
        })
        .collect()
}

/// A collective that can only sum, as NCCL's all-reduce through Burn: its maxima are gathered
/// through one sum (`all_reduce_max_by_sum`).
struct SumOnly<'a> {
    inner: &'a ThreadCollective,
    rank: usize,
}

impl Collective for SumOnly<'_> {
    fn all_reduce_sum(&self, values: &mut [f64]) {
        self.inner.all_reduce_sum(values);
    }

    fn all_reduce_max(&self, values: &mut [f64]) {
        all_reduce_max_by_sum(values, self.rank, DEVICES, |slots| {
            self.inner.all_reduce_sum(slots)
        });
    }
}

/// Runs one guarded step on `DEVICES` threads, each with a contiguous shard of every tensor.
fn sharded_step(tensors: &[(String, Vec<f32>)]) -> Vec<(StepReport, HostGradients)> {
    sharded_step_with(tensors, false)
}

/// `sharded_step`, its maxima reduced by a native maximum or (`sum_only`) gathered by a sum.
fn sharded_step_with(
    tensors: &[(String, Vec<f32>)],
    sum_only: bool,
) -> Vec<(StepReport, HostGradients)> {
    let collective = ThreadCollective::new(DEVICES);
    thread::scope(|s| {
        let handles: Vec<_> = (0..DEVICES)
            .map(|rank| {
                let collective = &collective;
                s.spawn(move || {
                    let mut offsets = Vec::new();
                    let shard: Vec<HostTensor> = tensors
                        .iter()
                        .map(|(name, v)| {
                            let n = v.len().div_ceil(DEVICES);
                            let lo = (rank * n).min(v.len());
                            let hi = ((rank + 1) * n).min(v.len());
                            offsets.push(lo);
                            HostTensor::new(name.clone(), vec![hi - lo], v[lo..hi].to_vec())
                                .unwrap()
                        })
                        .collect();
                    let mut local = HostGradients::new(shard).unwrap();
                    let rules: Vec<Box<dyn Rule>> =
                        vec![Box::new(ClipByGlobalNorm::new(1.0).unwrap())];
                    let config = GuardConfig {
                        grad_spike: None,
                        loss_spike: None,
                        ..Default::default()
                    };
                    let mut guard = Guard::new(config, Chain::new(rules).unwrap()).unwrap();
                    let report = if sum_only {
                        let summing = SumOnly {
                            inner: collective,
                            rank,
                        };
                        let mut view = ShardedGradients::new(&mut local, &summing, offsets);
                        guard.step(&mut view, Some(1.0)).unwrap()
                    } else {
                        let mut view = ShardedGradients::new(&mut local, collective, offsets);
                        guard.step(&mut view, Some(1.0)).unwrap()
                    };
                    (report, local)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn every_device_sees_the_global_norm_and_clips_alike() {
    let tensors = whole(None);
    let unsharded = HostGradients::new(
        tensors
            .iter()
            .map(|(n, v)| HostTensor::new(n.clone(), vec![v.len()], v.clone()).unwrap())
            .collect(),
    )
    .unwrap();
    let total = exact_l2(&unsharded);
    let results = sharded_step(&tensors);
    let scale = results[0].0.rules[0].scale.unwrap();
    for (report, _) in &results {
        assert_eq!(report.decision, Decision::Apply);
        assert!(
            (report.norm_before - total).abs() <= 1e-12 * total,
            "{} vs {total}",
            report.norm_before
        );
        assert_eq!(
            report.rules[0].scale.unwrap(),
            scale,
            "every device applies the same factor"
        );
    }
    // Adding the per-device norms instead would have been wrong (√a + √b ≠ √(a + b)):
    let wrong: f64 = (0..DEVICES)
        .map(|rank| {
            tensors
                .iter()
                .flat_map(|(_, v)| {
                    let n = v.len().div_ceil(DEVICES);
                    v[(rank * n).min(v.len())..((rank + 1) * n).min(v.len())].to_vec()
                })
                .map(|x| f64::from(x).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .sum();
    assert!(wrong > total * 1.5, "{wrong} vs {total}");
    // The shards put back together have global norm 1.
    let sq: f64 = results.iter().map(|(_, g)| exact_l2(g).powi(2)).sum();
    assert!((sq.sqrt() - 1.0).abs() < 1e-5);
}

#[test]
fn a_nan_on_one_device_makes_every_device_skip_and_name_it() {
    let tensors = whole(Some((1, 777)));
    for (report, _) in sharded_step(&tensors) {
        assert_eq!(report.decision, Decision::Skip);
        assert!(
            report.reasons[0].contains("first NaN in 'layers.1.weight' at index 777"),
            "{:?}",
            report.reasons
        );
    }
}

#[test]
fn maxima_gathered_through_a_sum_decide_exactly_as_a_native_maximum() {
    // NCCL (Burn's all-reduce) sums but has no maximum: the gathered maximum must give the same
    // reports, bit for bit, clean and with a NaN (max|g| and the first non-finite index are maxima).
    for poison in [None, Some((2, 5)), Some((0, 999))] {
        let tensors = whole(poison);
        let native = sharded_step_with(&tensors, false);
        let gathered = sharded_step_with(&tensors, true);
        for ((a, ga), (b, gb)) in native.iter().zip(&gathered) {
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "poison {poison:?}");
            assert_eq!(exact_l2(ga).to_bits(), exact_l2(gb).to_bits());
        }
    }
}
