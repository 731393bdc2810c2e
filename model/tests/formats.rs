//! MXFP4 and MLX-affine decoding against known byte patterns, and the MLX layout of the
//! parity fixture giving the transformers logits.

mod common;
use candle_core::{DType, Device, Tensor};
use common::{fixture, max_abs};
use osstune_model::quant::{affine as quant, mxfp4};
use osstune_model::{Cache, GptOss};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[test]
fn mxfp4_known_bytes() {
    // Hand-checked: byte 0x21 = low nibble 1 (+0.5), high nibble 2 (+1.0); 0xF8 = −0.0, −6.0;
    // scale 128 = 2¹, 126 = 2⁻¹.
    let mut blocks = vec![0u8; 32];
    blocks[0] = 0x21;
    blocks[1] = 0xF8;
    blocks[16] = 0x7A; // −1.0, +6.0
    let scales = [128u8, 126u8];
    let mut out = vec![0f32; 64];
    mxfp4::dequantize_into(&blocks, &scales, &mut out);
    assert_eq!(&out[..4], &[1.0, 2.0, -0.0, -12.0]);
    assert_eq!(&out[32..34], &[-0.5, 3.0]);
    assert!(out[4..32].iter().all(|&v| v == 0.0));
    assert_eq!(mxfp4::e8m0(127), 1.0);
    assert_eq!(mxfp4::e8m0(0), 2f32.powi(-127));
    assert!(mxfp4::e8m0(255).is_infinite());
}

#[test]
fn mxfp4_matches_python_reference_bytes() {
    let text = std::fs::read_to_string(fixture("mxfp4_bytes.json")).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let flat_u8 = |v: &serde_json::Value| -> Vec<u8> {
        let mut out = Vec::new();
        fn walk(v: &serde_json::Value, out: &mut Vec<u8>) {
            match v {
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                x => out.push(x.as_u64().unwrap() as u8),
            }
        }
        walk(v, &mut out);
        out
    };
    let blocks = flat_u8(&j["blocks"]);
    let scales = flat_u8(&j["scales"]);
    let mut want = Vec::new();
    fn walkf(v: &serde_json::Value, out: &mut Vec<f32>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| walkf(x, out)),
            x => out.push(x.as_f64().unwrap() as f32),
        }
    }
    walkf(&j["dequantized"], &mut want);
    let bt = Tensor::from_vec(blocks, (3, 2, 16), &Device::Cpu).unwrap();
    let st = Tensor::from_vec(scales, (3, 2), &Device::Cpu).unwrap();
    let fast = mxfp4::dequantize(&bt, &st, DType::F32).unwrap();
    let generic = mxfp4::dequantize_generic(&bt, &st, DType::F32).unwrap();
    assert_eq!(fast.dims(), &[3, 64]);
    assert_eq!(fast.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
    assert_eq!(
        generic.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        want
    );
}

#[test]
fn mxfp4_quantize_roundtrips_representable_values() {
    let vals: Vec<f32> = (0..64).map(|i| mxfp4::FP4_VALUES[i % 16] * 0.25).collect();
    let (b, s) = mxfp4::quantize(&vals, 32).unwrap();
    let mut out = vec![0f32; 64];
    mxfp4::dequantize_into(&b, &s, &mut out);
    assert_eq!(out, vals);
    let e = mxfp4::quantize(&vals, 20).unwrap_err();
    assert!(format!("{e}").contains("multiple of 32"));
}

#[test]
fn affine_known_words() {
    // 4-bit: word 0x76543210 holds elements 0..7 = 0..7 (LSB first).
    let mut w = Vec::new();
    for word in [0x7654_3210u32, 0xFEDC_BA98, 0x7654_3210, 0xFEDC_BA98] {
        w.extend_from_slice(&word.to_le_bytes());
    }
    let out = quant::affine_dequantize(&w, &[0.5], &[-1.0], 1, 4, 32).unwrap();
    let want: Vec<f32> = (0..32).map(|i| (i % 16) as f32 * 0.5 - 1.0).collect();
    assert_eq!(out, want);
    // 8-bit, negative scale (MLX writes those): bytes 0, 1, 255.
    let mut w = vec![0u8; 32];
    w[1] = 1;
    w[2] = 255;
    let out = quant::affine_dequantize(&w, &[-0.25], &[3.0], 1, 8, 32).unwrap();
    assert_eq!(&out[..3], &[3.0, 2.75, 3.0 - 63.75]);
}

#[test]
fn affine_roundtrip_all_bit_widths() {
    let vals: Vec<f32> = (0..128)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    for bits in [2usize, 3, 4, 5, 6, 8] {
        let (w, s, b) = quant::affine_quantize(&vals, 64, bits, 32);
        assert_eq!(w.len(), 128 * bits / 8);
        let out = quant::affine_dequantize(&w, &s, &b, 2, bits, 32).unwrap();
        let step = 2.0 / ((1 << bits) - 1) as f32;
        for (o, v) in out.iter().zip(&vals) {
            // MLX anchors the grid on the larger-magnitude edge with 0 exactly representable,
            // so the far edge can be off by up to one step.
            assert!((o - v).abs() <= step + 1e-6, "{bits} bits: {o} vs {v}");
        }
    }
}

#[test]
fn quantization_dict_semantics() {
    let q: serde_json::Value = serde_json::json!({
        "group_size": 32, "bits": 4, "mode": "mxfp4",
        "model.layers.0.mlp.router": {"group_size": 64, "bits": 8},
        "model.layers.0.self_attn.q_proj": {"group_size": 32, "bits": 8, "mode": "affine"},
        "lm_head": false
    });
    use quant::QuantMode::*;
    assert_eq!(
        quant::mode_for(Some(&q), "model.layers.0.mlp.router").unwrap(),
        Affine { bits: 8, group: 64 }
    );
    assert_eq!(
        quant::mode_for(Some(&q), "model.layers.0.self_attn.q_proj").unwrap(),
        Affine { bits: 8, group: 32 }
    );
    assert_eq!(
        quant::mode_for(Some(&q), "model.layers.0.mlp.experts.gate_proj").unwrap(),
        Mxfp4
    );
    assert!(quant::mode_for(Some(&q), "lm_head").is_err());
    assert!(quant::mode_for(None, "lm_head").is_err());
}

/// Writes the MLX community layout of the MXFP4 fixture (docs/gpt-oss.md §2.4): experts split into
/// gate/up/down SwitchLinear with U32 mxfp4 weights, plus optionally layer 0's q_proj as
/// 8-bit affine through a per-layer entry WITHOUT `mode` (must not inherit mxfp4).
fn write_mlx(src: &Path, dst: &Path, affine_q: bool) -> Option<Vec<f32>> {
    std::fs::create_dir_all(dst).unwrap();
    let t = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut out: HashMap<String, Tensor> = HashMap::new();
    let mut deq_q = None;
    for (name, v) in &t {
        if let Some(p) = name.strip_suffix(".gate_up_proj_blocks") {
            let (e, r, g, _) = v.dims4().unwrap();
            let even: Vec<u32> = (0..r as u32).step_by(2).collect();
            let odd: Vec<u32> = (1..r as u32).step_by(2).collect();
            for (n, idx) in [("gate_proj", even), ("up_proj", odd)] {
                let idx = Tensor::new(idx.as_slice(), &Device::Cpu).unwrap();
                let rows = v.index_select(&idx, 1).unwrap();
                out.insert(
                    format!("{p}.{n}.weight"),
                    u32_view(&rows, (e, r / 2, g * 4)),
                );
                let s = t[&format!("{p}.gate_up_proj_scales")]
                    .index_select(&idx, 1)
                    .unwrap();
                out.insert(format!("{p}.{n}.scales"), s);
                let b = t[&format!("{p}.gate_up_proj_bias")]
                    .index_select(&idx, 1)
                    .unwrap();
                out.insert(format!("{p}.{n}.bias"), b);
            }
        } else if let Some(p) = name.strip_suffix(".down_proj_blocks") {
            let (e, r, g, _) = v.dims4().unwrap();
            out.insert(format!("{p}.down_proj.weight"), u32_view(v, (e, r, g * 4)));
            out.insert(
                format!("{p}.down_proj.scales"),
                t[&format!("{p}.down_proj_scales")].clone(),
            );
            out.insert(
                format!("{p}.down_proj.bias"),
                t[&format!("{p}.down_proj_bias")].clone(),
            );
        } else if name.contains("_scales") || name.contains("_bias") && name.contains("experts") {
            continue;
        } else if affine_q && name == "model.layers.0.self_attn.q_proj.weight" {
            let (r, c) = v.dims2().unwrap();
            let w = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (packed, s, b) = quant::affine_quantize(&w, c, 8, 32);
            let words: Vec<u32> = packed
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            out.insert(
                name.clone(),
                Tensor::from_vec(words, (r, c / 4), &Device::Cpu).unwrap(),
            );
            let p = "model.layers.0.self_attn.q_proj";
            let sb = |x: Vec<f32>| {
                Tensor::from_vec(x, (r, c / 32), &Device::Cpu)
                    .unwrap()
                    .to_dtype(DType::BF16)
                    .unwrap()
            };
            // Stored as bf16 like MLX does; dequantize from the rounded values.
            let (s16, b16) = (sb(s), sb(b));
            let s = s16
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let b = b16
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            deq_q = Some(quant::affine_dequantize(&packed, &s, &b, r, 8, 32).unwrap());
            out.insert(format!("{p}.scales"), s16);
            out.insert(format!("{p}.biases"), b16);
        } else {
            out.insert(name.clone(), v.clone());
        }
    }
    candle_core::safetensors::save(&out, dst.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let obj = cfg.as_object_mut().unwrap();
    obj.remove("quantization_config");
    obj.remove("rope_parameters");
    let mut q = serde_json::json!({"group_size": 32, "bits": 4, "mode": "mxfp4"});
    if affine_q {
        q["model.layers.0.self_attn.q_proj"] = serde_json::json!({"group_size": 32, "bits": 8});
    }
    obj.insert("quantization".into(), q.clone());
    obj.insert("quantization_config".into(), q);
    std::fs::write(
        dst.join("config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    deq_q
}

fn u32_view(blocks: &Tensor, shape: (usize, usize, usize)) -> Tensor {
    let b = blocks.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let w: Vec<u32> = b
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Tensor::from_vec(w, shape, &Device::Cpu).unwrap()
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("osstune-model-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn mlx_layout_gives_transformers_logits() {
    let dir = tmpdir("mlx");
    write_mlx(&fixture("mxfp4"), &dir, false);
    let m = GptOss::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let r = candle_core::safetensors::load(
        fixture("mxfp4").join("reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let got = m.forward(&ids, 0, &mut Cache::new(m.config())).unwrap();
    let err = max_abs(&got, &r["logits"]);
    println!("mlx mxfp4 layout: max |Δlogit| = {err:.3e}");
    assert!(err <= 1e-4, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mlx_affine_module_without_mode_is_affine() {
    let dir = tmpdir("mlx-affine");
    let deq = write_mlx(&fixture("mxfp4"), &dir, true).unwrap();
    let m = GptOss::load(&dir, &Device::Cpu, DType::F32).unwrap();
    // Same model with the dequantized q_proj put in by hand.
    let mut want_m = GptOss::load(fixture("mxfp4"), &Device::Cpu, DType::F32).unwrap();
    let before = want_m.layers[0]
        .attn
        .q_proj
        .weight
        .to_tensor(DType::F32, &Device::Cpu)
        .unwrap();
    let replaced = Tensor::from_vec(deq, before.dims(), &Device::Cpu).unwrap();
    want_m.layers[0].attn.q_proj.weight = replaced.clone().into();
    let q_err = max_abs(&replaced, &before);
    assert!(q_err > 0.0 && q_err < 0.02, "8-bit affine error {q_err}");
    let ids = Tensor::new(&[[3u32, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]], &Device::Cpu).unwrap();
    let got = m.forward(&ids, 0, &mut Cache::new(m.config())).unwrap();
    let want = want_m
        .forward(&ids, 0, &mut Cache::new(want_m.config()))
        .unwrap();
    let err = max_abs(&got, &want);
    assert!(err <= 1e-5, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
