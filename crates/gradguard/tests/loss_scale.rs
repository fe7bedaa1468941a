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

mod in_the_guard {
    use gradguard::{
        Decision, Gradients, Guard, GuardConfig, HostGradients, HostTensor, LossScaler,
        LossScalerConfig,
    };

    fn grads(values: Vec<f32>) -> HostGradients {
        HostGradients::new(vec![
            HostTensor::new("w", vec![values.len()], values).unwrap(),
        ])
        .unwrap()
    }

    fn guard() -> Guard {
        Guard::new(
            GuardConfig {
                update_bound: None,
                ..GuardConfig::default()
            },
            Default::default(),
        )
        .unwrap()
        .with_loss_scaler(
            LossScaler::new(LossScalerConfig {
                growth_interval: 2,
                ..Default::default()
            })
            .unwrap(),
        )
    }

    #[test]
    fn scaled_gradients_and_loss_come_out_unscaled_exactly() {
        let mut g = guard();
        let s = g.loss_scale() as f32;
        assert_eq!(s, 65_536.0);
        let original = vec![0.5f32, -3.0e-6, 1.25, 7.0e-8];
        let mut scaled = grads(original.iter().map(|x| x * s).collect());
        let report = g.step(&mut scaled, Some(2.5 * f64::from(s))).unwrap();
        assert_eq!(report.decision, Decision::Apply);
        assert_eq!(report.loss, Some(2.5));
        assert_eq!(scaled.tensors()[0].values, original);
        let exact: f64 = original.iter().map(|&x| f64::from(x).powi(2)).sum();
        assert!((report.norm_before - exact.sqrt()).abs() <= 1e-12 * exact.sqrt());
        assert_eq!(scaled.stats()[0].sum_squares, report_sum(&scaled));
    }

    /// Gradients that count the passes that scale them.
    struct Counting(HostGradients, usize);

    impl Gradients for Counting {
        fn tensor_count(&self) -> usize {
            self.0.tensor_count()
        }
        fn name(&self, index: usize) -> &str {
            self.0.name(index)
        }
        fn shape(&self, index: usize) -> &[usize] {
            self.0.shape(index)
        }
        fn stats(&self) -> Vec<gradguard::TensorStats> {
            self.0.stats()
        }
        fn power_sums(&self, p: f64, scales: &[f64]) -> Vec<f64> {
            self.0.power_sums(p, scales)
        }
        fn scale(&mut self, factors: &[f64]) {
            self.1 += 1;
            self.0.scale(factors)
        }
        fn clamp(&mut self, limit: f64) -> Vec<gradguard::TensorStats> {
            self.0.clamp(limit)
        }
        fn zero_non_finite(&mut self) -> Vec<gradguard::TensorStats> {
            self.0.zero_non_finite()
        }
        fn unit_norms(
            &self,
            source: gradguard::Source,
            layout: gradguard::UnitLayout,
        ) -> gradguard::Result<Vec<Vec<f64>>> {
            self.0.unit_norms(source, layout)
        }
        fn scale_units(
            &mut self,
            layout: gradguard::UnitLayout,
            factors: &[Option<Vec<f64>>],
        ) -> gradguard::Result<Vec<Option<gradguard::TensorStats>>> {
            self.0.scale_units(layout, factors)
        }
    }

    /// The unscale rides on the clip's scaling: one pass over the gradients, with the values of
    /// unscaling and clipping in two.
    #[test]
    fn the_unscale_and_a_clip_are_one_pass() {
        use gradguard::rules::{Chain, ClipByGlobalNorm};
        let original = vec![3.0f32, -4.0, 0.5];
        let clip = || Chain::new(vec![Box::new(ClipByGlobalNorm::new(1.0).unwrap())]).unwrap();
        let config = GuardConfig {
            update_bound: None,
            ..GuardConfig::default()
        };
        let mut plain = Guard::new(config.clone(), clip()).unwrap();
        let mut reference = grads(original.clone());
        plain.step(&mut reference, None).unwrap();

        let mut scaled_guard = Guard::new(config.clone(), clip())
            .unwrap()
            .with_loss_scaler(LossScaler::default());
        let s = scaled_guard.loss_scale() as f32;
        let mut scaled = Counting(grads(original.iter().map(|x| x * s).collect()), 0);
        let report = scaled_guard.step(&mut scaled, None).unwrap();
        assert_eq!(report.decision, Decision::Apply);
        assert_eq!(scaled.1, 1, "one scaling pass");
        assert_eq!(scaled.0.tensors()[0].values, reference.tensors()[0].values);

        // No rule scales: the unscale is its own pass at the end.
        let mut unclipped = Guard::new(config, Default::default())
            .unwrap()
            .with_loss_scaler(LossScaler::default());
        let mut scaled = Counting(grads(original.iter().map(|x| x * s).collect()), 0);
        unclipped.step(&mut scaled, None).unwrap();
        assert_eq!(scaled.1, 1);
        assert_eq!(scaled.0.tensors()[0].values, original);
    }

    fn report_sum(g: &HostGradients) -> f64 {
        g.tensors()[0]
            .values
            .iter()
            .map(|&x| f64::from(x).powi(2))
            .sum()
    }

    #[test]
    fn an_overflow_is_skipped_as_normal_scaling_not_as_a_bad_step() {
        let mut g = guard();
        for k in 0..30 {
            // Thirty overflows in a row: more than the guard's 20-bad-steps limit, yet no stop.
            let mut overflowing = grads(vec![1.0, f32::INFINITY]);
            let report = g.step(&mut overflowing, Some(1.0)).unwrap();
            assert_eq!(report.decision, Decision::Skip, "step {k}");
            assert_eq!(report.consecutive_bad, 0);
            assert_eq!(report.lr_multiplier, 1.0);
        }
        assert_eq!(g.loss_scale(), 65_536.0 / 2f64.powi(30));
        assert_eq!(g.counters().skipped, 30);
        // Two good steps grow the scale again.
        for _ in 0..2 {
            let mut fine = grads(vec![1.0, 2.0]);
            g.step(&mut fine, None).unwrap();
        }
        assert_eq!(g.loss_scale(), 65_536.0 / 2f64.powi(29));
        // The scaler's state travels with the guard's.
        let state = g.state();
        let mut restored = guard();
        restored.restore(&state).unwrap();
        assert_eq!(restored.loss_scale(), g.loss_scale());
    }
}
