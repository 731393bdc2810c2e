//! Golden fixtures from scripts/gen_merge_fixtures.py (transformers' own MXFP4 dequantizer,
//! float64 deltas, an independent numpy requantizer): merge must reproduce them.

use osstune_merge::st::Tensors;
use osstune_merge::{merge, Dtype, Format, MergeOptions};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/merge")
}

fn run(format: Format, tag: &str) -> (PathBuf, Tensors) {
    let out =
        std::env::temp_dir().join(format!("osstune-merge-golden-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    merge(&MergeOptions {
        model: fixtures().join("base"),
        adapter: fixtures().join("adapter"),
        out: out.clone(),
        format,
        dtype: Dtype::F32,
        max_shard_bytes: 100_000,
        base_fingerprint: None,
        progress: false,
        verify: None,
    })
    .unwrap();
    let t = Tensors::open_dir(&out).unwrap();
    (out, t)
}

#[test]
fn hf_f32_matches_transformers_dequant_plus_delta() {
    let (out, got) = run(Format::Hf, "hf");
    let want = Tensors::open_files(&[fixtures().join("expected_hf_f32.safetensors")]).unwrap();
    let mut n = 0;
    for name in want.names() {
        let (w, g) = (want.f32(name).unwrap(), got.f32(name).unwrap());
        assert_eq!(
            want.info(name).unwrap().shape,
            got.info(name).unwrap().shape,
            "{name}"
        );
        let err = w
            .iter()
            .zip(&g)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-6, "{name}: max abs err {err}");
        n += 1;
    }
    assert_eq!(n, 2 * (5 + 2), "every adapted tensor is in the fixture");
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn hf_mxfp4_matches_independent_requantizer() {
    let (out, got) = run(Format::HfMxfp4, "q");
    let want = Tensors::open_files(&[fixtures().join("expected_hf_mxfp4.safetensors")]).unwrap();
    for name in want.names() {
        let (w, g) = (want.bytes(name).unwrap(), got.bytes(name).unwrap());
        assert_eq!(
            want.info(name).unwrap().shape,
            got.info(name).unwrap().shape,
            "{name}"
        );
        // f32 (Rust) vs f64 (numpy) sums may land on opposite sides of a rounding threshold
        // for a value or two; anything more is a real difference.
        let differing = w.iter().zip(g).filter(|(a, b)| a != b).count();
        assert!(
            differing <= 2,
            "{name}: {differing} of {} bytes differ",
            w.len()
        );
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization_config"]["quant_method"], "mxfp4");
    std::fs::remove_dir_all(out).unwrap();
}
