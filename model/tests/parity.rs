//! Golden parity with transformers' GptOssForCausalLM (fixtures/model, written by
//! scripts/gen_model_fixtures.py): full-forward logits, KV-cached decoding, greedy tokens.

mod common;
use candle_core::{DType, Device, IndexOp, Tensor};
use common::{fixture, max_abs};
use osstune_model::{Cache, GptOss};

fn reference(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &Device::Cpu)
        .unwrap()
}

fn full_forward_parity(name: &str) {
    let m = GptOss::load(fixture(name), &Device::Cpu, DType::F32).unwrap();
    let r = reference(name);
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let want = &r["logits"];
    let mut cache = Cache::new(m.config());
    let got = m.forward(&ids, 0, &mut cache).unwrap();
    let err = max_abs(&got, want);
    println!("{name}: full forward max |Δlogit| = {err:.3e}");
    assert!(err <= 1e-4, "{name}: max |Δlogit| {err} > 1e-4");
    // The training entry points give the same numbers.
    let got2 = m.logits(&m.forward_hidden(&ids).unwrap()).unwrap();
    let err2 = max_abs(&got2, want);
    assert!(
        err2 <= 1e-4,
        "{name}: forward_hidden+logits max |Δlogit| {err2}"
    );
}

#[test]
fn dense_logits_match_transformers() {
    full_forward_parity("dense");
}

#[test]
fn mxfp4_logits_match_transformers() {
    full_forward_parity("mxfp4");
}

/// Decoding one token at a time (and in chunks) through the cache reproduces the full
/// forward, also past the sliding window (T = 24 > W = 8).
fn cached_decoding(name: &str) {
    let m = GptOss::load(fixture(name), &Device::Cpu, DType::F32).unwrap();
    let r = reference(name);
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let want = &r["logits"];
    let t = ids.dims()[1];
    for chunk in [1usize, 5, 9] {
        let mut cache = Cache::new(m.config());
        let mut pos = 0;
        let mut worst = 0f32;
        while pos < t {
            let n = chunk.min(t - pos);
            let got = m
                .forward(&ids.i((.., pos..pos + n)).unwrap(), pos, &mut cache)
                .unwrap();
            let err = max_abs(&got, &want.i((.., pos..pos + n, ..)).unwrap());
            worst = worst.max(err);
            pos += n;
        }
        println!("{name}: cached decoding, chunk {chunk}: max |Δlogit| = {worst:.3e}");
        assert!(worst <= 1e-4, "{name} chunk {chunk}: {worst}");
        // Sliding layers keep at most the window; full layers keep everything.
        let w = m.config().window();
        for l in 0..m.config().num_hidden_layers {
            let expect = if m.config().is_sliding(l) { w } else { t };
            assert_eq!(cache.layer_len(l), expect, "layer {l} cache length");
        }
    }
}

#[test]
fn dense_cached_decoding_matches_full_forward() {
    cached_decoding("dense");
}

#[test]
fn mxfp4_cached_decoding_matches_full_forward() {
    cached_decoding("mxfp4");
}

fn greedy(name: &str) {
    let m = GptOss::load(fixture(name), &Device::Cpu, DType::F32).unwrap();
    let r = reference(name);
    let prompt = r["prompt_ids"].to_dtype(DType::U32).unwrap();
    let want: Vec<u32> = r["greedy_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut cache = Cache::new(m.config());
    let p = prompt.dims()[1];
    let mut logits = m.forward(&prompt, 0, &mut cache).unwrap();
    let mut got = Vec::new();
    for pos in p..p + want.len() {
        let last = logits.i((0, logits.dims()[1] - 1)).unwrap();
        let next = last.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        got.push(next);
        let x = Tensor::new(&[[next]], &Device::Cpu).unwrap();
        logits = m.forward(&x, pos, &mut cache).unwrap();
    }
    assert_eq!(
        got, want,
        "{name}: greedy continuation differs from transformers"
    );
}

#[test]
fn dense_greedy_matches_transformers() {
    greedy("dense");
}

#[test]
fn mxfp4_greedy_matches_transformers() {
    greedy("mxfp4");
}

/// bf16 runs the device-generic per-expert path; it must agree to bf16 precision.
#[test]
fn bf16_generic_path_is_close() {
    let m = GptOss::load(fixture("mxfp4"), &Device::Cpu, DType::BF16).unwrap();
    let r = reference("mxfp4");
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let got = m
        .forward(&ids, 0, &mut Cache::new(m.config()))
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let err = max_abs(&got, &r["logits"]);
    let mean = (got - &r["logits"])
        .unwrap()
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    println!("mxfp4 bf16: max |Δlogit| = {err:.3e}, mean {mean:.3e}");
    // A bf16 rounding can flip a near-tied top-k choice, which moves a few logits a lot.
    assert!(mean < 0.05 && err < 2.0, "bf16 max {err} mean {mean}");
}
