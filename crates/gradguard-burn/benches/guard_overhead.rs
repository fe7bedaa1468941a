//! What the guard costs in a lab-sized training step.
//!
//! Model: 24 × Linear(256) + tanh and a linear head (1.6M parameters), batch 128, Adam, on the
//! default CPU backend. Each iteration times one full training step (forward, backward, Adam), and
//! separately the guard's part of a guarded step: collecting the gradients, the default guard
//! (non-finite and spike detection on gradient norm and loss, LR back-off; then also with
//! global-norm clipping, which rewrites every gradient), per-layer telemetry into a JSONL file,
//! and handing the gradients back. Prints medians, the overhead as a percentage of the step, the
//! phases, and the host reads per step, for both placements. Last, whole training steps of this
//! MLP under Adam and of a 4-layer pre-norm transformer stack under AdamW, each with Burn's
//! optimizer alone, and with `GuardedOptimizer` over it and the fused guarded optimizer of the
//! same rule, each with the default guard and without its update bound (interleaved, each round
//! starting with another, so a busy machine slows all alike): each guard's cost, the median of
//! its steps' ratios to the plain step of the same round — for `GuardedOptimizer::new` the bound's share is the pre-step clone and ‖w‖, ‖Δw‖
//! of every parameter; the fused one measures them in its update pass. Then, for a guard the
//! device can follow (a global-norm clip at 1, non-finite steps skipped), steps run back to
//! back as a training loop runs them (one device sync per eight steps): Burn's optimizer alone,
//! the fused guarded optimizer (one blocking read per step) and `NonBlockingOptimizer` (none
//! before the optimizer; the previous step's statistics read after it).
//!
//! Run: `cargo bench -p gradguard-burn --bench guard_overhead` (about three minutes, on flex).
//! On a GPU through wgpu: `GRADGUARD_BENCH_DEVICE=wgpu cargo bench -p gradguard-burn --features
//! wgpu --bench guard_overhead`; there each phase ends with a device sync (so the times are the
//! device's, not the queueing's), and the kernel launches of the guard's part are counted
//! (cubecl's launch observer) — per step, and for models of 8 to 194 tensors, to show how they
//! grow with the tensor count. `GRADGUARD_BENCH_STACK=large` times the whole steps of a
//! 101M-parameter transformer stack instead of the small one: `scripts/bench/gpu_guard_overhead.sh`
//! runs that on a GPU.

use std::time::{Duration, Instant};

use burn::module::Module;
use burn::nn::attention::generate_autoregressive_mask;
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Distribution, Tensor};
use gradguard::rules::{Chain, ClipByGlobalNorm, Rule};
use gradguard::{Guard, GuardConfig};
use gradguard_burn::{
    AdamMoments, BurnGradients, FusedRule, GuardedOptimizer, NonBlockingOptimizer, Placement,
};
use gradguard_report::{JsonlSink, MetricsRecord, Sink};

#[derive(Module, Debug)]
struct Mlp {
    layers: Vec<Linear>,
    head: Linear,
}

impl Mlp {
    fn loss(&self, x: Tensor<2>, y: Tensor<2>) -> Tensor<1> {
        let mut h = x;
        for l in &self.layers {
            h = l.forward(h).tanh();
        }
        (self.head.forward(h) - y).square().mean()
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The median over rounds of `a[i] / b[i]`: each round's two timings share the machine's state
/// at that moment, so their ratio drifts less than a ratio of medians.
fn paired_ratio(a: &[Duration], b: &[Duration]) -> f64 {
    let mut ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(a, b)| a.as_secs_f64() / b.as_secs_f64())
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

/// The device named by `GRADGUARD_BENCH_DEVICE` (`flex`, the default, or `wgpu`).
fn bench_device() -> Device {
    match std::env::var("GRADGUARD_BENCH_DEVICE").as_deref() {
        Err(_) | Ok("flex") => Device::flex().autodiff(),
        #[cfg(feature = "wgpu")]
        Ok("wgpu") => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice).autodiff(),
        Ok(other) => {
            eprintln!(
                "GRADGUARD_BENCH_DEVICE={other}: expected flex or wgpu (wgpu needs --features wgpu)"
            );
            std::process::exit(2)
        }
    }
}

/// The transformer stack's shape: `GRADGUARD_BENCH_STACK=large` for the ≥ 100M-parameter stack
/// of a GPU run (d 1024, 8 layers, feed-forward 4096, 16 heads, context 512, batch 8); the small
/// one of the CPU runs otherwise (d 128, 4 layers, feed-forward 512, 4 heads, context 64, batch
/// 16).
fn stack_shape() -> StackShape {
    match std::env::var("GRADGUARD_BENCH_STACK").as_deref() {
        Err(_) | Ok("small") => StackShape {
            d: 128,
            layers: 4,
            ff: 512,
            heads: 4,
            context: 64,
            batch: 16,
        },
        Ok("large") => StackShape {
            d: 1024,
            layers: 8,
            ff: 4096,
            heads: 16,
            context: 512,
            batch: 8,
        },
        Ok(other) => {
            eprintln!("GRADGUARD_BENCH_STACK={other}: expected small or large");
            std::process::exit(2)
        }
    }
}

/// Waits for the device's queued work (a no-op cost on flex).
fn sync(device: &Device) {
    device.sync().expect("device sync");
}

/// Counts the kernel launches `f` issues (none where the backend is not a CubeCL one).
#[cfg(feature = "cube")]
fn launches<R>(f: impl FnOnce() -> R) -> (R, u64) {
    gradguard_burn::count_launches(f)
}

#[cfg(not(feature = "cube"))]
fn launches<R>(f: impl FnOnce() -> R) -> (R, u64) {
    (f(), 0)
}

fn main() {
    let device = bench_device();
    let shape = stack_shape();
    let on_flex = format!("{device:?}").contains("Flex");
    let width = 256;
    let mut model = Mlp {
        layers: (0..24)
            .map(|_| LinearConfig::new(width, width).init(&device))
            .collect(),
        head: LinearConfig::new(width, 1).init(&device),
    };
    let params: usize = model.num_params();
    let x = Tensor::<2>::random([128, width], Distribution::Default, &device);
    let y = Tensor::<2>::random([128, 1], Distribution::Default, &device);
    let mut optim: ModuleOptimizer = AdamConfig::new().init();
    let dir = tempfile::tempdir().unwrap();
    println!("model: {params} parameters, batch 128, device {device:?}");
    let runs: &[(Placement, bool)] = if on_flex {
        &[
            (Placement::Auto, false),
            (Placement::Auto, true),
            (Placement::Device, false),
        ]
    } else {
        &[(Placement::Auto, false), (Placement::Auto, true)]
    };
    for &(placement, clip) in runs {
        let rules: Vec<Box<dyn Rule>> = if clip {
            vec![Box::new(ClipByGlobalNorm::new(1.0).unwrap())]
        } else {
            Vec::new()
        };
        let mut guard = Guard::new(GuardConfig::default(), Chain::new(rules).unwrap()).unwrap();
        let (mut steps, mut guards, mut reads, mut launched) = (Vec::new(), Vec::new(), 0u32, 0u64);
        let mut phases = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        // Burn's own sum over as many f32 values as the gradients hold, read back, timed in the
        // same rounds as the collect phase (wgpu, first run): the statistics' bandwidth reference.
        let reference = (!on_flex && !clip)
            .then(|| Tensor::<1>::random([params], Distribution::Default, &device.clone().inner()));
        let mut sums = Vec::new();
        let mut log =
            JsonlSink::create(dir.path().join(format!("{placement:?}-{clip}.jsonl"))).unwrap();
        for i in 0..25 {
            let start = Instant::now();
            let loss = model.loss(x.clone(), y.clone());
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            sync(&device);
            let before_guard = Instant::now();
            let ((view, report, t1, t2, t3, grads), n) = launches(|| {
                let mut view =
                    BurnGradients::collect_with(&model, &mut grads, Some(loss), false, placement);
                let t1 = Instant::now();
                let loss = view.loss();
                let report = guard.step(&mut view, loss).unwrap();
                let t2 = Instant::now();
                log.write(&MetricsRecord::from_report(&report, 1e-3))
                    .unwrap();
                let t3 = Instant::now();
                let reads = view.host_reads();
                let grads = view.into_gradients_params(&model);
                (reads, report, t1, t2, t3, grads)
            });
            sync(&device);
            let guard_time = before_guard.elapsed();
            if i >= 5 {
                // The first steps also carry autotune's trial launches for new shapes.
                reads += view;
                launched += n;
            }
            if i >= 5 {
                phases[0].push(t1 - before_guard);
                phases[1].push(t2 - t1);
                phases[2].push(t3 - t2);
                phases[3].push(t3.elapsed());
            }
            model = optim.step(1e-3 * report.lr_multiplier, model, grads);
            sync(&device);
            if let Some(values) = &reference {
                let start = Instant::now();
                let _ = values.clone().sum().into_scalar::<f32>();
                if i >= 5 {
                    sums.push(start.elapsed());
                }
            }
            let step_time = start.elapsed();
            if i >= 5 {
                steps.push(step_time - guard_time);
                guards.push(guard_time);
            }
        }
        let (s, g) = (median(steps), median(guards));
        let policy = if clip {
            "default guard + global-norm clip"
        } else {
            "default guard"
        };
        let launches = if on_flex {
            String::new()
        } else {
            format!(" and {:.1} kernel launches", launched as f64 / 20.0)
        };
        println!(
            "{placement:?}, {policy}: unguarded step {:.2} ms, guard {:.3} ms = {:.2}% of the step, {:.1} host reads{launches} per step",
            s.as_secs_f64() * 1e3,
            g.as_secs_f64() * 1e3,
            100.0 * g.as_secs_f64() / s.as_secs_f64(),
            f64::from(reads) / 20.0,
        );
        let [collect, rules, telemetry, restore] =
            phases.clone().map(|p| median(p).as_secs_f64() * 1e3);
        println!(
            "  collect {collect:.3} ms, guard and rules {rules:.3} ms, telemetry {telemetry:.3} ms, hand back {restore:.3} ms"
        );
        if !sums.is_empty() {
            // Collecting is the statistics pass and its one read: the gradients' bytes over its
            // time, against Burn's own sum over as many f32 values, timed in the same rounds.
            let bytes = 4.0 * params as f64;
            let paired = paired_ratio(&sums, &phases[0]);
            let reference = median(sums).as_secs_f64() * 1e3;
            println!(
                "  statistics read the gradients at {:.2} GB/s; Burn's sum over the same bytes: {:.2} GB/s (ratio {:.2}; median of the rounds' ratios {paired:.2})",
                bytes / collect * 1e-6,
                bytes / reference * 1e-6,
                reference / collect
            );
        }
    }
    if !on_flex {
        launches_by_tensor_count(&device);
        clip_launches(&device);
    }
    whole_step_cost(
        &device,
        "24 x Linear(256) tanh MLP, Adam 1e-3",
        model,
        FusedRule::Adam {
            moments: AdamMoments::default(),
            weight_decay: None,
        },
        |m: &Mlp| m.loss(x.clone(), y.clone()),
    );
    // The transformer stack under AdamW: the small one on the CPU, the large one on a GPU.
    let stack = Stack::new(&shape, &device);
    let sx = Tensor::<3>::random(
        [shape.batch, shape.context, shape.d],
        Distribution::Default,
        &device,
    );
    let sy = Tensor::<3>::random(
        [shape.batch, shape.context, shape.d],
        Distribution::Default,
        &device,
    );
    let what = format!(
        "{}-layer pre-norm transformer stack (d {}, context {}, batch {}, {:.1}M parameters), \
         AdamW 1e-3",
        shape.layers,
        shape.d,
        shape.context,
        shape.batch,
        stack.num_params() as f64 / 1e6
    );
    whole_step_cost(
        &device,
        &what,
        stack,
        FusedRule::AdamW {
            moments: AdamMoments::default(),
            weight_decay: 0.1,
        },
        |m: &Stack| m.loss(sx.clone(), sy.clone()),
    );
}

/// Kernel launches of collecting the gradients and reading their statistics, for models of
/// 4 to 96 layers (8 to 194 tensors).
fn launches_by_tensor_count(device: &Device) {
    for depth in [4, 24, 96] {
        let model = Mlp {
            layers: (0..depth)
                .map(|_| LinearConfig::new(64, 64).init(device))
                .collect(),
            head: LinearConfig::new(64, 1).init(device),
        };
        let x = Tensor::<2>::random([32, 64], Distribution::Default, device);
        let y = Tensor::<2>::random([32, 1], Distribution::Default, device);
        let mut counted = None;
        // Counted the second time: the first also carries autotune's trial launches.
        for _ in 0..2 {
            let loss = model.loss(x.clone(), y.clone());
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            sync(device);
            counted = Some(launches(|| {
                BurnGradients::collect_with(&model, &mut grads, Some(loss), false, Placement::Auto)
            }));
        }
        let (view, n) = counted.expect("counted");
        println!(
            "statistics of {} tensors: {n} kernel launches, {} host read",
            2 * depth + 2,
            view.host_reads()
        );
    }
}

/// Kernel launches of whole guarded Adam steps (statistics, rules, the optimizer, and the work
/// its lazy ops leave, up to a device sync): without a clip or an update bound, with a
/// global-norm clip that fires (its per-tensor scaling is queued behind Burn's fusion and runs
/// inside the optimizer's own kernels, or costs launches of its own), and with the default
/// update bound (the unit kernel's pair form over both versions of the weights).
fn clip_launches(device: &Device) {
    let model = Mlp {
        layers: (0..24)
            .map(|_| LinearConfig::new(64, 64).init(device))
            .collect(),
        head: LinearConfig::new(64, 1).init(device),
    };
    let x = Tensor::<2>::random([32, 64], Distribution::Default, device);
    let y = Tensor::<2>::random([32, 1], Distribution::Default, device);
    for (clip, bound) in [(false, false), (true, false), (false, true)] {
        let rules: Vec<Box<dyn Rule>> = if clip {
            // A threshold every step exceeds: the clip scales all 50 tensors each time.
            vec![Box::new(ClipByGlobalNorm::new(1e-6).unwrap())]
        } else {
            Vec::new()
        };
        let config = GuardConfig {
            update_bound: GuardConfig::default().update_bound.filter(|_| bound),
            ..GuardConfig::default()
        };
        let guard = Guard::new(config, Chain::new(rules).unwrap()).unwrap();
        let mut optim = GuardedOptimizer::new(AdamConfig::new().init(), guard);
        let mut m = model.clone();
        let mut bounded = 0;
        let mut fewest = u64::MAX;
        for _ in 0..4 {
            let loss = m.loss(x.clone(), y.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            sync(device);
            let ((next, units), n) = launches(|| {
                let step = optim.step(1e-3, m.clone(), grads, Some(loss)).unwrap();
                sync(device);
                let units = step.report.update.as_ref().map_or(0, |u| u.bounded_units);
                (step.module, units)
            });
            m = next;
            fewest = fewest.min(n);
            bounded = bounded.max(units);
        }
        let what = match (clip, bound) {
            (true, _) => "global-norm clip scaling every tensor".to_string(),
            (false, false) => "no clip, no update bound".to_string(),
            (false, true) => format!(
                "the default update bound (units measured on the step that recognizes the \
                 optimizer, tensors on every step; at most {bounded} units bounded a step)"
            ),
        };
        println!("guarded Adam step on 50 tensors, {what}: {fewest} kernel launches");
    }
}

/// A pre-norm transformer stack (Burn's own encoder, causal mask) on random embeddings: the
/// guard-cost issue's second model shape, a step of which is mostly attention and matmuls.
#[derive(Module, Debug)]
struct Stack {
    encoder: TransformerEncoder,
}

/// A transformer stack's width, depth, feed-forward width, heads, and its batch's shape.
struct StackShape {
    d: usize,
    layers: usize,
    ff: usize,
    heads: usize,
    context: usize,
    batch: usize,
}

impl Stack {
    fn new(shape: &StackShape, device: &Device) -> Self {
        Stack {
            encoder: TransformerEncoderConfig::new(shape.d, shape.ff, shape.heads, shape.layers)
                .with_norm_first(true)
                .init(device),
        }
    }

    fn loss(&self, x: Tensor<3>, y: Tensor<3>) -> Tensor<1> {
        let [batch, context, _] = x.dims();
        let mask = generate_autoregressive_mask(batch, context, &x.device());
        let out = self
            .encoder
            .forward(TransformerEncoderInput::new(x).mask_attn(mask));
        (out - y).square().mean()
    }
}

/// Whole training steps of the same model and data, five ways, interleaved step by step (a busy
/// machine slows all alike): Burn's optimizer of `rule` alone, `GuardedOptimizer` over it with
/// the default guard and the same without its update bound, and the fused guarded optimizer of
/// the same rule with both guards. Each step takes its model out, so that no other handle makes
/// the optimizer copy its weights. Prints the medians and what each guard costs against the
/// plain step of the same round.
fn whole_step_cost<M: Module + Clone>(
    device: &Device,
    what: &str,
    model: M,
    rule: FusedRule,
    loss: impl Fn(&M) -> Tensor<1>,
) {
    let guard = |bound: bool| {
        let config = GuardConfig {
            update_bound: if bound {
                GuardConfig::default().update_bound
            } else {
                None
            },
            ..GuardConfig::default()
        };
        Guard::new(config, Chain::new(Vec::new()).unwrap()).unwrap()
    };
    let mut plain = rule.to_burn();
    let mut optims = [
        GuardedOptimizer::new(rule.to_burn(), guard(true)),
        GuardedOptimizer::new(rule.to_burn(), guard(false)),
        GuardedOptimizer::fused(rule, guard(true)),
        GuardedOptimizer::fused(rule, guard(false)),
    ];
    let mut models: [Option<M>; 5] = std::array::from_fn(|_| Some(model.clone()));
    let mut times: [Vec<Duration>; 5] = Default::default();
    // Each guarded variant's host reads in its last step.
    let mut reads = [0u32; 4];
    for i in 0..ROUNDS {
        // Each round starts with another variant, so none always follows the same one.
        for k in (0..5).map(|j| (i + j) % 5) {
            let start = Instant::now();
            let m = models[k].take().expect("each step puts its model back");
            let l = loss(&m);
            let grads = GradientsParams::from_grads(l.backward(), &m);
            models[k] = Some(if k == 4 {
                plain.step(1e-3, m, grads)
            } else {
                let step = optims[k].step(1e-3, m, grads, Some(l)).unwrap();
                reads[k] = step.host_reads;
                step.module
            });
            // On an accelerator the step ends when its kernels have run, not when they are queued.
            sync(device);
            if i >= 5 {
                times[k].push(start.elapsed());
            }
        }
    }
    pipelined_cost(
        device,
        what,
        models[4].take().expect("put back"),
        rule,
        &loss,
    );
    // Each guard's cost: the median over rounds of its step against the plain step of the same
    // round.
    let share = |k: usize| 100.0 * (paired_ratio(&times[k], &times[4]) - 1.0);
    let shares = [share(0), share(1), share(2), share(3)];
    let [with, without, fused, fused_without, alone] = times.map(|t| median(t).as_secs_f64() * 1e3);
    println!(
        "whole steps, {what} (medians of {} rounds, interleaved; cost: median of the rounds' \
         ratios to the plain step): plain {alone:.2} ms; `new`: default guard {with:.2} ms \
         ({:+.1}%), without its update bound {without:.2} ms ({:+.1}%); `fused`: default guard \
         {fused:.2} ms ({:+.1}%), without its update bound {fused_without:.2} ms ({:+.1}%); \
         host reads in a step (`new` with and without its bound, then `fused`): {} and {}, {} \
         and {}",
        ROUNDS - 5,
        shares[0],
        shares[1],
        shares[2],
        shares[3],
        reads[0],
        reads[1],
        reads[2],
        reads[3],
    );
}

/// Rounds of [`whole_step_cost`], the first five not counted (autotune's trial launches).
const ROUNDS: usize = 45;

/// A guard the device can follow: a global-norm clip at 1, non-finite steps skipped, nothing
/// that needs the host.
fn clip_guard() -> Guard {
    let config = GuardConfig {
        update_bound: None,
        loss_spike: None,
        grad_spike: None,
        ..GuardConfig::default()
    };
    let clip: Vec<Box<dyn Rule>> = vec![Box::new(ClipByGlobalNorm::new(1.0).unwrap())];
    Guard::new(config, Chain::new(clip).unwrap()).unwrap()
}

/// Steps run back to back, eight at a time with one device sync after them (as a training loop
/// runs them, so that the host may queue a step while the device computes the last), three
/// ways in turn: Burn's optimizer of `rule` alone, the fused guarded optimizer under
/// [`clip_guard`] (a blocking read before each optimizer step) and the non-blocking optimizer
/// under the same guard. Prints the median time per step over the rounds after the first.
fn pipelined_cost<M: Module + Clone>(
    device: &Device,
    what: &str,
    model: M,
    rule: FusedRule,
    loss: &impl Fn(&M) -> Tensor<1>,
) {
    const BURST: usize = 8;
    let mut plain = rule.to_burn();
    let mut blocking = GuardedOptimizer::fused(rule, clip_guard());
    let mut non_blocking = NonBlockingOptimizer::new(rule, clip_guard()).expect("a device plan");
    let mut models = [Some(model.clone()), Some(model.clone()), Some(model)];
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    let mut reads_before = 0;
    for round in 0..7 {
        for k in 0..3 {
            let start = Instant::now();
            let mut m = models[k].take().expect("each burst puts its model back");
            for _ in 0..BURST {
                let l = loss(&m);
                let grads = GradientsParams::from_grads(l.backward(), &m);
                m = match k {
                    0 => plain.step(1e-3, m, grads),
                    1 => blocking.step(1e-3, m, grads, Some(l)).unwrap().module,
                    _ => {
                        let step = non_blocking.step(1e-3, m, grads, Some(l)).unwrap();
                        reads_before += step.reads_before_optimizer;
                        step.module
                    }
                };
            }
            sync(device);
            if round > 0 {
                times[k].push(start.elapsed() / BURST as u32);
            }
            models[k] = Some(m);
        }
    }
    // Kernel launches of one more step each (none counted on flex).
    let mut counts = [0u64; 3];
    for (k, count) in counts.iter_mut().enumerate() {
        let m = models[k].take().expect("each burst puts its model back");
        let l = loss(&m);
        let grads = GradientsParams::from_grads(l.backward(), &m);
        sync(device);
        let (m, n) = launches(|| {
            let m = match k {
                0 => plain.step(1e-3, m, grads),
                1 => blocking.step(1e-3, m, grads, Some(l)).unwrap().module,
                _ => non_blocking.step(1e-3, m, grads, Some(l)).unwrap().module,
            };
            sync(device);
            m
        });
        *count = n;
        models[k] = Some(m);
    }
    non_blocking.finish().expect("the last report");
    let [alone, blocking, non_blocking] = times.map(|t| median(t).as_secs_f64() * 1e3);
    let share = |t: f64| 100.0 * (t - alone) / alone;
    // cubecl's observer counts nothing on flex: no launch line there.
    let launches = if counts.iter().any(|&n| n > 0) {
        format!(
            "; kernel launches of a whole step (backward pass to optimizer): {} plain, {} fused \
             guard, {} non-blocking",
            counts[0], counts[1], counts[2]
        )
    } else {
        String::new()
    };
    println!(
        "steps back to back, {what}, clip guard (median of 6 bursts of {BURST}): plain \
         {alone:.2} ms, fused guard {blocking:.2} ms ({:+.1}%), non-blocking {non_blocking:.2} ms \
         ({:+.1}%, {reads_before} host reads before an optimizer step){launches}",
        share(blocking),
        share(non_blocking),
    );
}
