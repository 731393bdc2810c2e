//! Adapter export/import: the PEFT export equals the layout the PEFT fixture script built
//! independently (and verified against PEFT itself); mlx and PEFT round trips give back the
//! same deltas; a wrong base is refused.

use candle_core::{DType, Device, Tensor};
use osstune_model::GptOss;
use osstune_train::adapters::{read_safetensors, select_targets, Adapters, BaseModelInfo};
use osstune_train::config::TrainConfig;
use osstune_train::export::{export, import, Format};
use osstune_train::trainer::{base_info, target_shapes};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/train")
}

/// The fixture adapter (rank 4, alpha 8) saved in osstune's format into `dir`.
fn fixture_adapter(dir: &Path) -> (GptOss, Adapters) {
    let model = GptOss::load(fixtures().join("model"), &Device::Cpu, DType::F32).unwrap();
    let cfg = TrainConfig::load(None, &["lora.rank=4".into(), "lora.alpha=8.0".into()]).unwrap();
    let shapes = select_targets(&target_shapes(&model), &cfg.lora.targets, 0, 2).unwrap();
    let ad = Adapters::init(shapes, &cfg, base_info(&model), &Device::Cpu).unwrap();
    let init =
        read_safetensors(&fixtures().join("adapter_init.safetensors"), &Device::Cpu).unwrap();
    for (n, v) in ad.named_vars() {
        v.set(&init[&n]).unwrap();
    }
    ad.save(dir).unwrap();
    (model, ad)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// scale · B·A per module, from an osstune adapter folder.
fn deltas(dir: &Path) -> HashMap<String, Tensor> {
    let cfg = osstune_train::adapters::read_config(dir).unwrap();
    let t = read_safetensors(&dir.join("adapters.safetensors"), &Device::Cpu).unwrap();
    let mut out = HashMap::new();
    for (n, a) in &t {
        if let Some(m) = n.strip_suffix(".lora_a") {
            let b = &t[&format!("{m}.lora_b")];
            // [out, r]·[r, in], or per expert [E, out, r]·[E, r, in].
            let d = b.matmul(a).unwrap();
            out.insert(m.to_string(), (d * cfg.scale()).unwrap());
        }
    }
    out
}

#[test]
fn peft_export_matches_reference_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("osstune");
    let (model, _) = fixture_adapter(&src);
    let dst = tmp.path().join("peft");
    export(&src, &dst, Format::Peft).unwrap();
    let ours = read_safetensors(&dst.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    let reference = read_safetensors(
        &fixtures().join("peft/adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(ours.len(), reference.len());
    for (n, r) in &reference {
        let o = ours.get(n).unwrap_or_else(|| panic!("export lacks {n}"));
        assert_eq!(max_diff(o, r), 0.0, "{n}");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dst.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["r"], 8);
    assert_eq!(cfg["lora_alpha"], 16.0);
    assert_eq!(cfg["target_parameters"][2], "mlp.experts.down_proj");

    // Import back: the deltas (not the factors: gate/up come back sharing a fused A of rank
    // 2r) are those of the original.
    let back = tmp.path().join("back");
    import(&dst, &back, Format::Peft, &base_info(&model)).unwrap();
    let (d0, d1) = (deltas(&src), deltas(&back));
    assert_eq!(d0.len(), d1.len());
    for (n, a) in &d0 {
        assert!(max_diff(a, &d1[n]) < 1e-6, "{n}");
    }
}

#[test]
fn mlx_round_trip_and_wrong_base() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("osstune");
    let (model, ad) = fixture_adapter(&src);
    let dst = tmp.path().join("mlx");
    export(&src, &dst, Format::Mlx).unwrap();
    let m = read_safetensors(&dst.join("adapters.safetensors"), &Device::Cpu).unwrap();
    // LoRALinear is [in, r] / [r, out]; LoRASwitchLinear keeps [E, r, in] / [E, out, r].
    assert_eq!(m["model.layers.0.self_attn.q_proj.lora_a"].dims(), &[64, 4]);
    assert_eq!(m["model.layers.0.self_attn.q_proj.lora_b"].dims(), &[4, 64]);
    assert_eq!(
        m["model.layers.1.mlp.experts.down_proj.lora_a"].dims(),
        &[4, 4, 32]
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dst.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["lora_parameters"]["scale"], 2.0);
    assert_eq!(cfg["num_layers"], 2);
    let back = tmp.path().join("back");
    import(&dst, &back, Format::Mlx, &base_info(&model)).unwrap();
    // mlx keeps separate factors, so the round trip is exact, tensor for tensor.
    let a = read_safetensors(&src.join("adapters.safetensors"), &Device::Cpu).unwrap();
    let b = read_safetensors(&back.join("adapters.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(a.len(), b.len());
    for (n, t) in &a {
        assert_eq!(max_diff(t, &b[n]), 0.0, "{n}");
    }
    // Loading onto another base is refused, naming both.
    let wrong = BaseModelInfo {
        fingerprint: Some("0000".into()),
        ..base_info(&model)
    };
    let e = Adapters::load(&src, &target_shapes(&model), &wrong, &Device::Cpu).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("refusing") && msg.contains("0000"), "{msg}");
    // The right base loads, with the saved values.
    let l = Adapters::load(
        &src,
        &target_shapes(&model),
        &base_info(&model),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(l.num_params(), ad.num_params());
}
