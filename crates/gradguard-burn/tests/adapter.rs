//! The Burn adapter on flex, Burn's CPU backend: every promise of the shared suite, with the
//! statistics on the host (no copy) and by tensor ops (the accelerator path, run on the CPU).

mod common;

use burn::tensor::Device;
use gradguard_burn::Placement;

fn device() -> Device {
    Device::flex().autodiff()
}

const PLACEMENTS: [Placement; 2] = [Placement::Host, Placement::Device];

#[test]
fn auto_placement_runs_on_the_host_for_flex() {
    assert!(common::runs_on_host(&device(), Placement::Auto));
    assert!(!common::runs_on_host(&device(), Placement::Device));
}

#[test]
fn names_are_module_paths() {
    common::names_are_module_paths(&device());
}

#[test]
fn statistics_match_the_host_in_one_read_for_an_mlp_and_an_lstm() {
    for placement in PLACEMENTS {
        common::statistics_match(&device(), placement);
    }
}

#[test]
fn clipping_on_the_device_matches_the_host_rules() {
    for placement in PLACEMENTS {
        common::clipping_matches(&device(), placement);
    }
}

#[test]
fn an_injected_nan_is_named_and_under_skip_changes_nothing() {
    for placement in PLACEMENTS {
        common::injected_nan(&device(), placement);
    }
}

#[test]
fn a_forced_spike_rolls_back_to_the_snapshot_exactly() {
    for placement in PLACEMENTS {
        common::rollback_is_exact(&device(), placement);
    }
}

#[test]
fn the_lr_multiplier_reaches_the_optimizer() {
    for placement in PLACEMENTS {
        common::lr_multiplier_reaches_the_optimizer(&device(), placement);
    }
}

#[test]
fn gradients_near_1e30_have_a_finite_norm_and_are_clipped() {
    for placement in PLACEMENTS {
        common::huge_gradients_stay_finite(&device(), placement);
    }
}

#[test]
fn statistics_match_the_host_at_every_read_width() {
    for placement in PLACEMENTS {
        common::statistics_match_at_every_read_width(&device(), placement);
    }
}

#[test]
fn subnormal_gradients_keep_their_statistics() {
    for placement in PLACEMENTS {
        common::tiny_gradients_keep_their_statistics(&device(), placement);
    }
}

#[test]
fn unit_norms_match_the_host_on_both_placements() {
    for placement in [Placement::Host, Placement::Device] {
        common::unit_norms_match_the_host(&device(), placement, 3, |f| {
            f();
            0
        });
    }
}

#[test]
fn clips_of_non_finite_gradients_match_the_host_on_both_placements() {
    for placement in PLACEMENTS {
        common::clips_match_the_host(&device(), placement, 3, |f| {
            f();
            0
        });
    }
}

#[test]
fn the_update_bound_measures_alike_on_both_placements() {
    for placement in PLACEMENTS {
        common::update_bound_matches_the_host(&device(), placement);
    }
}

#[test]
fn a_device_collective_is_refused_on_the_cpu_backend_naming_the_device() {
    use gradguard_burn::DeviceCollective;
    let err = DeviceCollective::new(vec![device()], 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("device 0") && err.contains("cannot join a collective"),
        "{err}"
    );
    let err = DeviceCollective::new(vec![device()], 1)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rank 1 is not below the number of devices (1)"),
        "{err}"
    );
}

#[test]
fn the_fused_optimizer_guards_as_the_wrapped_one_on_both_placements() {
    for placement in PLACEMENTS {
        let path = if placement == Placement::Device {
            common::FusedPath::Wrapped
        } else {
            common::FusedPath::Host
        };
        common::fused_matches_the_wrapped_optimizer(&device(), placement, path);
    }
}

#[test]
fn the_fused_step_undoes_rolls_back_and_saves_as_burns_optimizer() {
    common::fused_keeps_the_guards_contract(&device(), true);
}

#[test]
fn the_fused_step_measures_weights_of_any_magnitude() {
    common::fused_measures_weights_of_any_magnitude(&device());
}
