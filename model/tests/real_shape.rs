//! Random checkpoints in the release layout: the real shapes' size is the release's, and a
//! small shape written as a stream (several shards, 1-based names, an index) loads and runs.

use candle_core::{DType, Device, Tensor};
use osstune_model::io::real_shape::{checkpoint_size, release_shape, write_release_layout};
use osstune_model::io::tiny::ModelShape;
use osstune_model::{Cache, Config, GptOss};

#[test]
fn release_shapes_have_the_release_sizes() {
    let s20 = release_shape("gpt-oss-20b").unwrap();
    let (params, bytes) = checkpoint_size(&s20);
    // 20,914,757,184 parameters: the count keras-hub publishes for gpt_oss_20b (dequantized);
    // 12.8 GiB packed, as the hub's MXFP4 checkpoint.
    assert_eq!(params, 20_914_757_184);
    assert_eq!(bytes, 13_761_264_768);
    let (p120, b120) = checkpoint_size(&release_shape("gpt-oss-120b").unwrap());
    assert_eq!(p120, 116_829_156_672);
    assert!(
        (60.0..61.0).contains(&(b120 as f64 / (1u64 << 30) as f64)),
        "{b120}"
    );
    assert!(release_shape("gpt-oss-7b").is_none());
}

#[test]
fn small_shape_streams_to_shards_that_load() {
    let dir = std::env::temp_dir().join(format!("osstune-real-shape-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let s = ModelShape {
        hidden: 64,
        layers: 3,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        experts: 4,
        top_k: 2,
        inter: 64,
        vocab: 512,
        window: 8,
        dtype: DType::BF16,
    };
    let sum = write_release_layout(&dir, &s, 7, 120_000).unwrap();
    assert_eq!(sum.bytes, checkpoint_size(&s).1);
    assert!(sum.shards >= 3, "{sum:?}");
    let n = sum.shards;
    for k in 1..=n {
        let f = dir.join(format!("model-{k:05}-of-{n:05}.safetensors"));
        let len = std::fs::metadata(&f).unwrap().len();
        assert!(len > 0, "{}", f.display());
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(sum.bytes));
    assert_eq!(
        index["weight_map"]["lm_head.weight"].as_str().unwrap(),
        format!("model-{n:05}-of-{n:05}.safetensors")
    );
    let cfg = Config::from_model_dir(&dir).unwrap();
    assert_eq!((cfg.hidden_size, cfg.num_hidden_layers), (64, 3));
    let m = GptOss::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let ids = Tensor::new(&[[1u32, 5, 9, 200]], &Device::Cpu).unwrap();
    let logits = m.forward(&ids, 0, &mut Cache::new(&cfg)).unwrap();
    let v: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(v.len(), 4 * 512);
    assert!(v.iter().all(|x| x.is_finite()));
    let spread = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(spread > 1e-3, "logits carry signal: {spread}");
    // Seeded: the same seed writes the same bytes.
    let again = dir.join("again");
    write_release_layout(&again, &s, 7, 120_000).unwrap();
    let f = format!("model-00002-of-{n:05}.safetensors");
    assert_eq!(
        std::fs::read(dir.join(&f)).unwrap(),
        std::fs::read(again.join(&f)).unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
