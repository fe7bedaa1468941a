//! The Burn adapter on a wgpu device (Vulkan, Metal, DirectX): the shared suite, with the
//! statistics computed where the gradients live. CI runs it on Mesa's software Vulkan driver
//! (`llvmpipe`): `cargo test -p gradguard-burn --features wgpu --test wgpu`.
//!
//! Without a wgpu adapter (no Vulkan, Metal, DirectX or OpenGL driver) each test says so and
//! skips, unless `GRADGUARD_REQUIRE_TOOLS=1` is set, as `.ci/run` does: then it fails.

mod common;

#[path = "../examples/wgpu_loop.rs"]
mod wgpu_loop;

use std::sync::{Mutex, OnceLock};

use burn::tensor::{Device, DeviceKind, Tensor};
use gradguard_burn::Placement;

/// The tests take turns: one of them counts kernel launches, which cubecl observes per process.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `f` on the wgpu device, alone.
fn on_wgpu(f: impl FnOnce(&Device)) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = device() {
        f(&d);
    }
}

/// Whether this machine has a wgpu adapter: probed once per process (a missing adapter panics
/// inside Burn, and its message is printed once rather than by every test).
static ADAPTER_FOUND: OnceLock<bool> = OnceLock::new();

/// The wgpu device under autodiff, or `None` (after saying why) when this machine has no adapter
/// and the caller allowed that.
fn device() -> Option<Device> {
    let found = *ADAPTER_FOUND.get_or_init(|| {
        std::panic::catch_unwind(|| {
            let d = Device::wgpu(DeviceKind::DefaultDevice);
            let t = Tensor::<1>::from_floats([1.0f32, 2.0].as_slice(), &d);
            let _ = t.sum().into_scalar::<f32>();
        })
        .is_ok()
    });
    if found {
        return Some(Device::wgpu(DeviceKind::DefaultDevice).autodiff());
    }
    assert!(
        !tools_required(),
        "no wgpu adapter, and GRADGUARD_REQUIRE_TOOLS is set: install a Vulkan driver \
         (Debian: mesa-vulkan-drivers)"
    );
    eprintln!("no wgpu adapter on this machine (Debian: mesa-vulkan-drivers): test skipped");
    None
}

/// Whether a missing outside program fails the test instead of skipping it (`.ci/run` sets this).
fn tools_required() -> bool {
    std::env::var("GRADGUARD_REQUIRE_TOOLS").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Auto places the statistics on the device for wgpu: what a user gets without asking.
const PLACEMENT: Placement = Placement::Auto;

#[test]
fn auto_placement_keeps_the_statistics_on_the_device() {
    on_wgpu(|d| assert!(!common::runs_on_host(d, PLACEMENT)));
}

#[test]
fn names_are_module_paths() {
    on_wgpu(common::names_are_module_paths);
}

#[test]
fn statistics_match_the_host_in_one_read_for_an_mlp_and_an_lstm() {
    on_wgpu(|d| common::statistics_match(d, PLACEMENT));
}

#[test]
fn clipping_on_the_device_matches_the_host_rules() {
    on_wgpu(|d| common::clipping_matches(d, PLACEMENT));
}

#[test]
fn an_injected_nan_is_named_and_under_skip_changes_nothing() {
    on_wgpu(|d| common::injected_nan(d, PLACEMENT));
}

#[test]
fn a_forced_spike_rolls_back_to_the_snapshot_exactly() {
    on_wgpu(|d| common::rollback_is_exact(d, PLACEMENT));
}

#[test]
fn the_lr_multiplier_reaches_the_optimizer() {
    on_wgpu(|d| common::lr_multiplier_reaches_the_optimizer(d, PLACEMENT));
}

/// Kernel launches of `f`, counted by cubecl's launch observer.
fn launches(f: &mut dyn FnMut()) -> u64 {
    gradguard_burn::count_launches(f).1
}

#[test]
fn the_statistics_take_one_launch_per_group_of_tensors_and_one_read() {
    on_wgpu(|d| {
        let group = gradguard_burn::tensors_per_launch(d).expect("wgpu is a CubeCL device");
        let few = common::statistics_launches(d, 3, launches);
        let many = common::statistics_launches(d, 30, launches);
        eprintln!("{group} tensors per launch: {few:?}, {many:?}");
        // 8 and 62 tensors: one fused launch per group the device can bind at once (llvmpipe:
        // 29), nothing per tensor — the tensor-op path took a copy per tensor plus 27.
        for m in [&few, &many] {
            assert!(m.launches <= m.tensors.div_ceil(group) as u64, "{m:?}");
        }
        assert_eq!((few.reads, many.reads), (1, 1));
    });
}

#[test]
fn every_norm_the_device_follows_decides_on_wgpu_as_the_host() {
    on_wgpu(common::non_blocking_norms_decide_as_the_host);
}

#[test]
fn the_non_blocking_state_round_trips_through_the_record_format() {
    on_wgpu(|d| common::non_blocking_state_round_trips(d, false));
}

#[test]
fn the_non_blocking_step_is_a_few_launches_whatever_the_parameter_count() {
    on_wgpu(|d| {
        let rule = gradguard_burn::FusedRule::adamw(0.1);
        let group = gradguard_burn::step_tensors_per_launch(d, rule).expect("a CubeCL device");
        let few = common::non_blocking_step_launches(d, 2, launches);
        let many = common::non_blocking_step_launches(d, 12, launches);
        eprintln!("{group} parameters per launch; (parameters, launches): {few:?}, {many:?}");
        // The step kernel steps every parameter in one launch per group of parameters;
        // Burn's tensor ops took about 1.7 launches per parameter (34 more for these 20 on
        // llvmpipe). What does not grow with the model — the statistics, the decision, Adam's
        // corrections, the previous step's read — is the rest, but for the statistics kernel's
        // own groups.
        let statistics = gradguard_burn::tensors_per_launch(d).expect("a CubeCL device");
        let more = |per: usize| (many.0.div_ceil(per) - few.0.div_ceil(per)) as u64;
        let allowed = more(group) + more(statistics) + 1;
        assert!(many.1.saturating_sub(few.1) <= allowed, "{few:?} {many:?}");
    });
}

#[test]
fn unit_norms_match_the_host_in_one_launch_per_group_of_tensors() {
    on_wgpu(|d| {
        let group = gradguard_burn::unit_tensors_per_launch(d).expect("wgpu is a CubeCL device");
        let few = common::unit_norms_match_the_host(d, PLACEMENT, 3, launches);
        let many = common::unit_norms_match_the_host(d, PLACEMENT, 30, launches);
        eprintln!("{group} tensors per launch: (tensors, launches) {few:?}, {many:?}");
        // The tensor-op path launched several kernels per tensor.
        for (tensors, launched) in [few, many] {
            assert!(
                launched <= tensors.div_ceil(group) as u64,
                "{tensors} {launched}"
            );
        }
    });
}

#[test]
fn clips_match_the_host_in_one_launch_per_group_of_tensors() {
    on_wgpu(|d| {
        let group = gradguard_burn::tensors_per_launch(d).expect("wgpu is a CubeCL device");
        let unit_group =
            gradguard_burn::unit_tensors_per_launch(d).expect("wgpu is a CubeCL device");
        let few = common::clips_match_the_host(d, PLACEMENT, 3, launches);
        let many = common::clips_match_the_host(d, PLACEMENT, 30, launches);
        eprintln!("{group} tensors per launch: (rule, tensors, launches) {few:?}, {many:?}");
        // A clip is one rewrite launch and one statistics launch per group (AGC: the unit norms
        // of gradients and of parameters too, in the unit kernel's smaller groups); a rewrite
        // binds one buffer more than the statistics, so its groups may hold one tensor fewer.
        // The tensor-op path copied every tensor into a padded buffer first, and AGC scaled each
        // tensor's units on its own.
        for (rule, tensors, launched) in few.into_iter().chain(many) {
            let mut bound = 2 * tensors.div_ceil(group - 1) as u64;
            if rule == "agc" {
                bound += 2 * tensors.div_ceil(unit_group) as u64;
            }
            assert!(
                launched <= bound,
                "{rule}: {tensors} tensors, {launched} launches"
            );
        }
    });
}

#[test]
fn the_example_trains_on_wgpu_and_skips_corrupt_batches() {
    on_wgpu(|d| {
        let outcome = wgpu_loop::run(60, d);
        assert_eq!(
            outcome.skipped, 2,
            "steps 24 and 49 carry a NaN: {outcome:?}"
        );
        assert!(outcome.last_loss < outcome.first_loss, "{outcome:?}");
        // Statistics and loss in one read, the update bound's norms in another; on the first
        // step one more, the update's spread, from which the optimizer's family is recognized.
        assert!(
            outcome.reads_per_step <= (2.0 * 60.0 + 1.0) / 60.0 + 1e-9,
            "{outcome:?}"
        );
    });
}

#[test]
fn gradients_near_1e30_have_a_finite_norm_and_are_clipped() {
    on_wgpu(|d| common::huge_gradients_stay_finite(d, PLACEMENT));
}

#[test]
fn statistics_match_the_host_at_every_read_width() {
    on_wgpu(|d| common::statistics_match_at_every_read_width(d, PLACEMENT));
}

#[test]
fn subnormal_gradients_keep_their_statistics() {
    on_wgpu(|d| common::tiny_gradients_keep_their_statistics(d, PLACEMENT));
}

#[test]
fn half_precision_models_step_with_a_loss_scaler() {
    on_wgpu(|d| {
        let tested = common::half_precision_models_step(d, PLACEMENT);
        // A device without half-precision arithmetic (OpenGL, WebGPU without `shader-f16`) has
        // nothing to test here; CI's Vulkan driver has f16, and CI requires it.
        if tested.is_empty() {
            let required = std::env::var("GRADGUARD_WGPU_HALF").as_deref() == Ok("required");
            assert!(
                !required,
                "this device computes in neither f16 nor bf16, and GRADGUARD_WGPU_HALF=required"
            );
            eprintln!("this device computes in neither f16 nor bf16: nothing to test");
        }
    });
}

#[test]
fn the_update_bound_measures_on_the_device_as_the_host_does() {
    on_wgpu(|d| common::update_bound_matches_the_host(d, PLACEMENT));
}

#[test]
fn a_device_collective_is_refused_on_wgpu_before_burn_would_panic() {
    // cubecl's wgpu runtime has no all-reduce yet: turned away here, naming the runtime.
    on_wgpu(|d| {
        let err = gradguard_burn::DeviceCollective::new(vec![d.clone()], 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CUDA only") && err.contains("Wgpu device"),
            "{err}"
        );
    });
}

#[test]
fn the_fused_optimizer_guards_as_the_wrapped_one() {
    on_wgpu(|d| {
        common::fused_matches_the_wrapped_optimizer(d, PLACEMENT, common::FusedPath::Kernel)
    });
}

#[test]
fn the_fused_step_is_queued_ahead_and_read_with_the_statistics() {
    on_wgpu(common::fused_device_step_reads_once);
}

#[test]
fn the_fused_kernel_measures_weights_of_any_magnitude() {
    on_wgpu(common::fused_measures_weights_of_any_magnitude);
}

#[test]
fn the_non_blocking_step_matches_the_blocking_one() {
    on_wgpu(|d| common::non_blocking_matches_the_blocking_step(d, PLACEMENT));
}

#[test]
fn the_fused_kernel_undoes_rolls_back_and_saves_as_burns_optimizer() {
    on_wgpu(|d| common::fused_keeps_the_guards_contract(d, false));
}
