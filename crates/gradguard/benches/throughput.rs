//! Throughput of the statistics pass and of global-norm clipping, next to memory-bandwidth
//! references over the same bytes, measured in the same run.
//!
//! Sets: 1M floats in 1 tensor, 10M in 1, 10M in 1000, 100M in 200. For each set:
//! - `reference_sum_squares`: a plain multi-threaded f32 sum of squares (32 lanes of fused
//!   multiply-adds, auto-vectorized, compiled for AVX-512 or AVX2 where the CPU has them) — the
//!   speed of the simplest possible read of the same bytes;
//! - `stats_pass`: [`Gradients::stats`] (Σg², Σ|g|, max|g|, non-finite count, per tensor);
//! - `reference_scale`: a plain multi-threaded in-place `x *= c`;
//! - `global_norm_clip`: [`ClipByGlobalNorm`] at max_norm 1 (a statistics read plus a scale).
//!
//! Run: `cargo bench -p gradguard --bench throughput` (about two minutes). At the end a table
//! prints each kernel's GB/s and its ratio to the reference, read from criterion's estimates.
//! Compare with PyTorch: `scripts/bench/torch_clip.py`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use gradguard::rules::{ClipByGlobalNorm, Rule};
use gradguard::{Gradients, HostGradients, HostTensor};
use rayon::prelude::*;

const SETS: [(&str, usize, usize); 4] = [
    ("1M_in_1", 1, 1_000_000),
    ("10M_in_1", 1, 10_000_000),
    ("10M_in_1000", 1000, 10_000),
    ("100M_in_200", 200, 500_000),
];

fn gradients(tensors: usize, per_tensor: usize) -> HostGradients {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    HostGradients::new(
        (0..tensors)
            .map(|t| {
                let values = (0..per_tensor)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 1e-2
                    })
                    .collect();
                HostTensor::new(format!("layers.{t}.weight"), vec![per_tensor], values).unwrap()
            })
            .collect(),
    )
    .unwrap()
}

#[inline(always)]
fn sum_squares_lanes(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 32];
    let chunks = xs.chunks_exact(32);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..32 {
            acc[i] = c[i].mul_add(c[i], acc[i]);
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|x| x * x).sum::<f32>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn sum_squares_avx2(xs: &[f32]) -> f32 {
    sum_squares_lanes(xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn sum_squares_avx512(xs: &[f32]) -> f32 {
    sum_squares_lanes(xs)
}

fn sum_squares(xs: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: the CPU supports AVX-512F and FMA, checked just above.
        return unsafe { sum_squares_avx512(xs) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        return unsafe { sum_squares_avx2(xs) };
    }
    sum_squares_lanes(xs)
}

const CHUNK: usize = 1 << 18;

fn reference_sum_squares(g: &HostGradients) -> f64 {
    g.tensors()
        .par_iter()
        .flat_map(|t| t.values.par_chunks(CHUNK))
        .map(|c| f64::from(sum_squares(c)))
        .sum()
}

fn reference_scale(g: &mut HostGradients, c: f32) {
    g.tensors_mut()
        .par_iter_mut()
        .flat_map(|t| t.values.par_chunks_mut(CHUNK))
        .for_each(|xs| xs.iter_mut().for_each(|x| *x *= c));
}

fn bench(c: &mut Criterion) {
    for (name, tensors, per_tensor) in SETS {
        let mut g = gradients(tensors, per_tensor);
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes((tensors * per_tensor * 4) as u64));
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(3));
        group.bench_function("reference_sum_squares", |b| {
            b.iter(|| black_box(reference_sum_squares(black_box(&g))))
        });
        group.bench_function("stats_pass", |b| {
            b.iter(|| black_box(black_box(&g).stats()))
        });
        group.bench_function("reference_scale", |b| {
            b.iter(|| reference_scale(black_box(&mut g), black_box(0.999_999)))
        });
        // Each iteration clips to half the current norm, so every iteration really scales (as
        // PyTorch always multiplies); once they have shrunk by 2³² the values are multiplied back
        // outside the timed region, so they never drift towards subnormals.
        let start_norm = gradguard::combined(&g.stats()).l2();
        group.bench_function("global_norm_clip", |b| {
            b.iter_custom(|iters| {
                let mut norm = gradguard::combined(&g.stats()).l2();
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    if norm < start_norm / 4_294_967_296.0 {
                        reference_scale(&mut g, 4_294_967_296.0);
                        norm = gradguard::combined(&g.stats()).l2();
                    }
                    let mut rule = ClipByGlobalNorm::new(norm * 0.5).unwrap();
                    let start = Instant::now();
                    let mut stats = g.stats();
                    let outcome = rule.apply(&mut g, &mut stats).unwrap();
                    timed += start.elapsed();
                    assert!(outcome.scale.is_some_and(|s| s < 0.6));
                    norm *= outcome.scale.unwrap();
                }
                timed
            })
        });
        group.finish();
    }
}

/// Reads criterion's point estimate (mean ns per iteration) for one benchmark.
fn mean_ns(group: &str, function: &str) -> Option<f64> {
    let dir = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target").to_string());
    let path = format!("{dir}/criterion/{group}/{function}/new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn summary() {
    println!("\nset            stats GB/s  sumsq ref GB/s  ratio   clip GB/s  scale ref GB/s");
    for (name, tensors, per_tensor) in SETS {
        let bytes = (tensors * per_tensor * 4) as f64;
        let gbs = |f: &str| mean_ns(name, f).map(|ns| bytes / ns);
        if let (Some(s), Some(r), Some(c), Some(sc)) = (
            gbs("stats_pass"),
            gbs("reference_sum_squares"),
            gbs("global_norm_clip"),
            gbs("reference_scale"),
        ) {
            println!(
                "{name:<14} {s:>10.1}  {r:>14.1}  {:>5.0}%  {c:>9.1}  {sc:>14.1}",
                100.0 * s / r
            );
        }
    }
    println!(
        "(GB/s = 1e9 bytes of gradient per second; clip reads and writes each byte once more)"
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    summary();
}
