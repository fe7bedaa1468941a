//! The loss scaler against PyTorch's `torch.amp.GradScaler`, step by step, on sequences of
//! overflow / no-overflow steps recorded by `scripts/reference/make_loss_scale_fixture.py`.

use gradguard::{LossScaler, LossScalerConfig};

#[test]
fn the_scale_and_the_skips_follow_grad_scaler_step_by_step() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/loss_scale.json")).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    let mut grew = 0;
    for (k, case) in cases.iter().enumerate() {
        let c = &case["config"];
        let mut scaler = LossScaler::new(LossScalerConfig {
            init_scale: c["init_scale"].as_f64().unwrap(),
            growth_factor: c["growth_factor"].as_f64().unwrap(),
            backoff_factor: c["backoff_factor"].as_f64().unwrap(),
            growth_interval: c["growth_interval"].as_u64().unwrap() as u32,
            // PyTorch has no bounds; these are wide enough never to bind on the recordings.
            min_scale: 1e-30,
            max_scale: 1e30,
        })
        .unwrap();
        for (t, step) in case["steps"].as_array().unwrap().iter().enumerate() {
            let expected_scale = step["scale"].as_f64().unwrap();
            assert_eq!(scaler.scale(), expected_scale, "case {k} step {t}");
            let update = scaler.update(step["overflow"].as_bool().unwrap()).unwrap();
            assert_eq!(
                update.skip,
                step["skipped"].as_bool().unwrap(),
                "case {k} step {t}"
            );
            assert_eq!(
                update.next_scale,
                step["next_scale"].as_f64().unwrap(),
                "case {k} step {t}"
            );
            grew += usize::from(update.next_scale > update.scale);
        }
    }
    assert!(grew >= 4, "the recordings exercise growth ({grew} growths)");
}
