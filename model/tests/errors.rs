//! Bad checkpoints give clear errors (never panics), and sharded checkpoints load through
//! the index.

mod common;
use candle_core::{DType, Device, Tensor};
use common::{fixture, max_abs};
use osstune_model::io::checkpoint::Checkpoint;
use osstune_model::{Cache, Config, GptOss};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("osstune-model-err-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tensors(src: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap()
}

fn copy_config(src: &Path, dst: &Path) {
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
}

fn load_err(dir: &Path) -> String {
    format!(
        "{:#}",
        GptOss::load(dir, &Device::Cpu, DType::F32).unwrap_err()
    )
}

#[test]
fn missing_files() {
    let d = tmpdir("nofile");
    let e = load_err(&d);
    assert!(e.contains("config.json"), "{e}");
    copy_config(&fixture("dense"), &d);
    let e = load_err(&d);
    assert!(e.contains("no model.safetensors"), "{e}");
}

#[test]
fn missing_tensor_is_named() {
    let d = tmpdir("notensor");
    copy_config(&fixture("dense"), &d);
    let mut t = tensors(&fixture("dense"));
    t.remove("model.layers.2.self_attn.sinks");
    candle_core::safetensors::save(&t, d.join("model.safetensors")).unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("missing tensor model.layers.2.self_attn.sinks"),
        "{e}"
    );
}

#[test]
fn wrong_shape_names_expected_and_found() {
    let d = tmpdir("shape");
    copy_config(&fixture("dense"), &d);
    let mut t = tensors(&fixture("dense"));
    t.insert(
        "model.layers.1.self_attn.k_proj.weight".into(),
        Tensor::zeros((32, 64), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, d.join("model.safetensors")).unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("model.layers.1.self_attn.k_proj.weight")
            && e.contains("expected [64, 64]")
            && e.contains("found [32, 64]"),
        "{e}"
    );
}

#[test]
fn integer_weight_is_a_dtype_error() {
    let d = tmpdir("dtype");
    copy_config(&fixture("dense"), &d);
    let mut t = tensors(&fixture("dense"));
    t.insert(
        "model.norm.weight".into(),
        Tensor::zeros(64, DType::I64, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, d.join("model.safetensors")).unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("model.norm.weight") && e.contains("float dtype"),
        "{e}"
    );
}

#[test]
fn unsupported_safetensors_dtype_is_named() {
    let d = tmpdir("boolean");
    // A minimal safetensors file with one BOOL tensor.
    let header = br#"{"flag":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.push(1);
    std::fs::write(d.join("model.safetensors"), bytes).unwrap();
    let ck = Checkpoint::open(&d).unwrap();
    let e = format!("{:#}", ck.info("flag").unwrap_err());
    assert!(e.contains("unsupported dtype") && e.contains("flag"), "{e}");
}

#[test]
fn truncated_safetensors_names_the_file() {
    let d = tmpdir("trunc");
    copy_config(&fixture("dense"), &d);
    let bytes = std::fs::read(fixture("dense").join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
    std::fs::write(d.join("model.safetensors"), b"garbage").unwrap();
    let e = load_err(&d);
    assert!(e.contains("not a valid safetensors"), "{e}");
}

#[test]
fn unknown_model_type() {
    let text = std::fs::read_to_string(fixture("dense").join("config.json")).unwrap();
    let e = Config::from_json(&text.replace("\"gpt_oss\"", "\"llama\"")).unwrap_err();
    assert!(
        format!("{e:#}").contains("unsupported model_type \"llama\""),
        "{e:#}"
    );
}

#[test]
fn both_rope_spellings_and_fingerprint() {
    let text = std::fs::read_to_string(fixture("dense").join("config.json")).unwrap();
    let mut j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let full = Config::from_json(&text).unwrap();
    let mut v5 = j.clone();
    v5.as_object_mut().unwrap().remove("rope_scaling");
    v5.as_object_mut().unwrap().remove("rope_theta");
    let v5 = Config::from_json(&v5.to_string()).unwrap();
    j.as_object_mut().unwrap().remove("rope_parameters");
    let hub = Config::from_json(&j.to_string()).unwrap();
    assert_eq!(v5.rope(), hub.rope());
    assert_eq!(hub.rope_base(), 150000.0);
    assert_eq!(full.fingerprint(), hub.fingerprint());
    assert_eq!(full.fingerprint(), v5.fingerprint());
    // The MXFP4 copy of the same architecture shares it; another architecture does not.
    let mx = Config::from_model_dir(fixture("mxfp4")).unwrap();
    assert_eq!(mx.fingerprint(), full.fingerprint());
    let mut other = j.clone();
    other["num_local_experts"] = 8.into();
    assert_ne!(
        Config::from_json(&other.to_string()).unwrap().fingerprint(),
        full.fingerprint()
    );
    assert_eq!(full.fingerprint().len(), 64);
    // Hub configs carry both top-k spellings; the original one alone also works.
    let mut both = j.clone();
    both["experts_per_token"] = 2.into();
    assert_eq!(
        Config::from_json(&both.to_string())
            .unwrap()
            .num_experts_per_tok,
        2
    );
    let mut orig = j.clone();
    orig.as_object_mut().unwrap().remove("num_experts_per_tok");
    orig["experts_per_token"] = 2.into();
    assert_eq!(
        Config::from_json(&orig.to_string())
            .unwrap()
            .num_experts_per_tok,
        2
    );
    // YaRN numbers of docs/gpt-oss.md §1.5 for head_dim 64.
    let mut real = j.clone();
    real["head_dim"] = 64.into();
    let rt =
        osstune_model::arch::rope::RopeTable::new(&Config::from_json(&real.to_string()).unwrap());
    let close = |a: f32, b: f32| ((a - b) / b).abs() < 1e-4;
    assert!(close(rt.inv_freq[0], 1.0));
    assert!(close(rt.inv_freq[8], 0.0508133), "{}", rt.inv_freq[8]);
    assert!(close(rt.inv_freq[9], 0.0317057), "{}", rt.inv_freq[9]);
    assert!(close(rt.inv_freq[17], 1.29319e-4), "{}", rt.inv_freq[17]);
    assert!(close(rt.inv_freq[18], 3.83088e-5), "{}", rt.inv_freq[18]);
    assert!(close(rt.inv_freq[31], 3.02351e-7), "{}", rt.inv_freq[31]);
    assert!(close(rt.attention_factor, 1.3465736));
}

/// Shards named 0-based as the official checkpoints do, found only through the index.
#[test]
fn sharded_checkpoint_via_index() {
    let d = tmpdir("shards");
    copy_config(&fixture("mxfp4"), &d);
    let t = tensors(&fixture("mxfp4"));
    let mut names: Vec<&String> = t.keys().collect();
    names.sort();
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut map = serde_json::Map::new();
    for (i, n) in names.iter().enumerate() {
        let f = if i % 2 == 0 {
            "model-00000-of-00001.safetensors"
        } else {
            "model-00001-of-00001.safetensors"
        };
        if i % 2 == 0 {
            a.insert((*n).clone(), t[*n].clone());
        } else {
            b.insert((*n).clone(), t[*n].clone());
        }
        map.insert((*n).clone(), f.into());
    }
    candle_core::safetensors::save(&a, d.join("model-00000-of-00001.safetensors")).unwrap();
    candle_core::safetensors::save(&b, d.join("model-00001-of-00001.safetensors")).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let m = GptOss::load(&d, &Device::Cpu, DType::F32).unwrap();
    let r = candle_core::safetensors::load(
        fixture("mxfp4").join("reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let got = m.forward(&ids, 0, &mut Cache::new(m.config())).unwrap();
    let err = max_abs(&got, &r["logits"]);
    assert!(err <= 1e-4, "{err}");
    let ck = Checkpoint::open(&d).unwrap();
    assert!(
        ck.file_of("lm_head.weight")
            .unwrap()
            .ends_with("model-00000-of-00001.safetensors")
            || ck
                .file_of("lm_head.weight")
                .unwrap()
                .ends_with("model-00001-of-00001.safetensors")
    );

    // A shard listed in the index but absent is named.
    std::fs::remove_file(d.join("model-00001-of-00001.safetensors")).unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("missing file") && e.contains("model-00001-of-00001.safetensors"),
        "{e}"
    );
}

#[test]
fn out_of_vocab_ids_are_an_error() {
    let m = GptOss::load(fixture("dense"), &Device::Cpu, DType::F32).unwrap();
    let ids = Tensor::new(&[[1u32, 999]], &Device::Cpu).unwrap();
    let e = m.forward(&ids, 0, &mut Cache::new(m.config())).unwrap_err();
    assert!(format!("{e:#}").contains("outside the vocabulary"), "{e:#}");
}

/// An activation that overflows at inference is named by the layer that produced it (the
/// weights are finite, so the load-time checks pass): here the last layer's attention and
/// expert biases are f32::MAX, whose sum overflows to inf in that layer's residual.
#[test]
fn non_finite_layer_output_is_named_by_its_layer() {
    let mut m = GptOss::load(fixture("dense"), &Device::Cpu, DType::F32).unwrap();
    let last = m.layers.len() - 1;
    let h = m.cfg.hidden_size;
    let e = m.cfg.num_local_experts;
    let big = |shape: &[usize]| Tensor::full(f32::MAX, shape, &Device::Cpu).unwrap();
    m.layers[last].attn.o_proj.bias = Some(big(&[h]));
    m.layers[last].moe.down_bias = big(&[e, h]);
    let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    let err = m.forward(&ids, 0, &mut Cache::new(&m.cfg)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        osstune_model::error::NonFinite::in_chain(&err),
        "not a NonFinite: {msg}"
    );
    assert!(
        msg.contains(&format!("layer {last} produced a non-finite value")),
        "{msg}"
    );
}
