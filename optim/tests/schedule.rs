//! Schedule values against transformers (fixtures) and the published recipe by hand.

mod common;

use common::*;
use osstune_optim::{Decay, OptimConfig, Schedule, ScheduleConfig};

#[test]
fn matches_transformers_cosine_with_warmup() {
    let fx = Fixtures::load();
    for name in ["schedule_recipe", "schedule_floor", "schedule_short"] {
        let case = fx.case(name);
        let cfg = ScheduleConfig {
            warmup_ratio: case["warmup_ratio"].as_f64().unwrap(),
            min_lr_ratio: case["min_lr_ratio"].as_f64().unwrap(),
            ..ScheduleConfig::default()
        };
        let total = case["total_steps"].as_u64().unwrap();
        let s = Schedule::new(&cfg, total).unwrap();
        assert_eq!(
            s.warmup_steps(),
            case["warmup_steps"].as_u64().unwrap(),
            "{name}"
        );
        let want = f64s(&case["multipliers"]);
        assert_eq!(want.len() as u64, total);
        for (k, w) in want.iter().enumerate() {
            let got = s.multiplier(k as u64);
            assert!((got - w).abs() < 1e-12, "{name} step {k}: {got} vs {w}");
        }
    }
}

#[test]
fn recipe_values() {
    // 40 steps, warm-up ratio 0.05 -> ceil(2.0) = 2 warm-up steps, peak 1e-5.
    let s = Schedule::new(&ScheduleConfig::default(), 40).unwrap();
    assert_eq!(s.warmup_steps(), 2);
    let peak = 1e-5;
    let close = |a: f64, b: f64| (a - b).abs() < 1e-18;
    assert!(close(s.lr_at(0, peak), 0.0));
    assert!(close(s.lr_at(1, peak), 0.5e-5));
    assert!(close(s.lr_at(2, peak), 1e-5));
    // Step 3: progress 1/38.
    let p = 1.0 / 38.0;
    assert!(close(
        s.lr_at(3, peak),
        peak * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
    ));
    // Midpoint of the cosine: step 2 + 19 = 21 -> exactly half.
    assert!(close(s.lr_at(21, peak), 0.5e-5));
    // Last step (39): progress 37/38, lr ~1.7e-8, not yet zero.
    let last = s.lr_at(39, peak);
    assert!(last > 1.7e-8 && last < 1.72e-8, "{last}");
    // Monotone decay after the warm-up.
    for k in 2..39 {
        assert!(s.multiplier(k + 1) < s.multiplier(k));
    }
    // Past the end it stays at the floor (0) instead of rising again.
    assert_eq!(s.multiplier(40), 0.0);
    assert_eq!(s.multiplier(1000), 0.0);
}

#[test]
fn floor_constant_and_explicit_warmup() {
    let cfg = ScheduleConfig {
        warmup_steps: Some(4),
        min_lr_ratio: 0.1,
        ..ScheduleConfig::default()
    };
    let s = Schedule::new(&cfg, 20).unwrap();
    assert_eq!(s.warmup_steps(), 4);
    assert_eq!(s.multiplier(2), 0.5);
    assert_eq!(s.multiplier(4), 1.0);
    assert!((s.multiplier(20) - 0.1).abs() < 1e-15);
    assert!(s.multiplier(19) > 0.1);

    let constant = ScheduleConfig {
        decay: Decay::Constant,
        warmup_ratio: 0.0,
        ..ScheduleConfig::default()
    };
    let s = Schedule::new(&constant, 10).unwrap();
    assert_eq!(s.warmup_steps(), 0);
    assert!((0..15).all(|k| s.multiplier(k) == 1.0));
}

#[test]
fn rejects_bad_values() {
    assert!(Schedule::new(&ScheduleConfig::default(), 0).is_err());
    let bad = ScheduleConfig {
        warmup_ratio: 1.5,
        ..ScheduleConfig::default()
    };
    let err = Schedule::new(&bad, 10).unwrap_err().to_string();
    assert!(err.contains("warmup_ratio"), "{err}");
}

#[test]
fn config_embeds_in_toml_with_defaults() {
    #[derive(serde::Deserialize)]
    struct TrainerConfig {
        optim: OptimConfig,
    }
    let text = r#"
        [optim.muon]
        lr = 2e-5
        lr_adjust = "match_rms_adamw"
        ns_dtype = "bf16"
        [optim.adamw]
        weight_decay = 0.01
        [optim.schedule]
        warmup_ratio = 0.1
    "#;
    let cfg: TrainerConfig = toml::from_str(text).unwrap();
    let o = cfg.optim;
    assert_eq!(o.muon.lr, 2e-5);
    assert_eq!(o.muon.momentum, 0.95);
    assert_eq!(o.muon.ns_steps, 5);
    assert_eq!(o.muon.lr_adjust, osstune_optim::LrAdjust::MatchRmsAdamw);
    assert_eq!(o.muon.ns_dtype, osstune_optim::NsDtype::Bf16);
    assert_eq!(o.adamw.lr, 1e-5);
    assert_eq!(o.adamw.weight_decay, 0.01);
    assert_eq!(o.schedule.warmup_ratio, 0.1);
    o.validate().unwrap();

    let recipe = OptimConfig::default();
    assert_eq!((recipe.muon.lr, recipe.adamw.lr), (1e-5, 1e-5));
    assert_eq!(recipe.schedule.warmup_ratio, 0.05);

    // Unknown keys are errors, not silently ignored.
    let typo = "[optim.muon]\nmomentun = 0.9\n";
    let err = toml::from_str::<TrainerConfig>(typo)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("momentun"), "{err}");
    // Out-of-range values are rejected by validate.
    let bad = OptimConfig {
        muon: osstune_optim::MuonConfig {
            momentum: 1.0,
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("optim.muon.momentum"));
}
