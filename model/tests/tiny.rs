//! `init-tiny` checkpoints load and give sane logits.

use candle_core::{DType, Device, Tensor};
use osstune_model::io::tiny::{write_tiny, ExpertFormat, Preset};
use osstune_model::{Cache, Config, GptOss};

#[test]
fn tiny_preset_loads_with_sane_logits() {
    let base = std::env::temp_dir().join(format!("osstune-tiny-{}", std::process::id()));
    let mut outs = Vec::new();
    for fmt in [ExpertFormat::Mxfp4, ExpertFormat::Dense] {
        let dir = base.join(format!("{fmt:?}"));
        write_tiny(&dir, Preset::Tiny, 7, fmt).unwrap();
        let cfg = Config::from_model_dir(&dir).unwrap();
        assert_eq!(cfg.vocab_size, 201088);
        assert!(cfg.is_sliding(0) && !cfg.is_sliding(1));
        let m = GptOss::load(&dir, &Device::Cpu, DType::F32).unwrap();
        let ids = Tensor::new(&[[200006u32, 17, 9000, 200008, 5, 6, 7, 8]], &Device::Cpu).unwrap();
        let logits = m.forward(&ids, 0, &mut Cache::new(m.config())).unwrap();
        let v = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| x.is_finite()));
        let amax = v.iter().fold(0f32, |a, &b| a.max(b.abs()));
        assert!(amax > 1e-3 && amax < 10.0, "logit scale {amax}");
        outs.push((cfg.fingerprint(), v));
    }
    // Same seed, same architecture: one fingerprint; MXFP4's 4-bit rounding of the experts
    // moves logits, but not wholesale.
    assert_eq!(outs[0].0, outs[1].0);
    let d = outs[0]
        .1
        .iter()
        .zip(&outs[1].1)
        .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
    assert!(d < 0.5, "mxfp4 vs dense {d}");
    // Seeded: writing again gives identical bytes.
    let again = base.join("again");
    write_tiny(&again, Preset::Tiny, 7, ExpertFormat::Mxfp4).unwrap();
    let a = std::fs::read(base.join("Mxfp4/model.safetensors")).unwrap();
    let b = std::fs::read(again.join("model.safetensors")).unwrap();
    assert!(a == b, "init-tiny is not deterministic");
    let _ = std::fs::remove_dir_all(&base);
}
