//! Merge numerics on synthetic bases, checked against naive index math written here (not the
//! crate's layout code), for every base layout × output format.

use osstune_merge::adapter::Target;
use osstune_merge::base::{Base, Sel};
use osstune_merge::st::Tensors;
use osstune_merge::synth::{write_random_adapter, write_random_base, AdapterSpec, Dims};
use osstune_merge::{merge, Dtype, Format, MergeOptions};
use osstune_model::quant::mxfp4::FP4_VALUES;
use std::path::{Path, PathBuf};

const DIMS: Dims = Dims {
    layers: 2,
    experts: 4,
    hidden: 64,
    inter: 32,
    heads: 4,
    kv_heads: 2,
    head_dim: 16,
    vocab: 96,
};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("osstune-merge-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn adapter(base: &Path, out: &Path, b_range: f32, layers: Option<Vec<usize>>) {
    let spec = AdapterSpec {
        rank: 4,
        alpha: 8.0,
        seed: 11,
        layers,
        targets: &Target::ALL,
        b_range,
        fingerprint: None,
    };
    write_random_adapter(base, out, &spec).unwrap();
}

fn opts(model: &Path, adapter: &Path, out: &Path, format: Format, dtype: Dtype) -> MergeOptions {
    MergeOptions {
        model: model.into(),
        adapter: adapter.into(),
        out: out.into(),
        format,
        dtype,
        max_shard_bytes: 200_000,
        base_fingerprint: None,
        progress: false,
        verify: None,
    }
}

/// Naive scale·B_e·A_e, [out, in], from the adapter file.
fn delta(ad: &Tensors, module: &str, e: Option<usize>, scale: f32) -> (Vec<f32>, usize, usize) {
    let a_name = format!("{module}.lora_a");
    let b_name = format!("{module}.lora_b");
    let (a, b) = match e {
        Some(e) => (
            ad.f32_slice0(&a_name, e).unwrap(),
            ad.f32_slice0(&b_name, e).unwrap(),
        ),
        None => (ad.f32(&a_name).unwrap(), ad.f32(&b_name).unwrap()),
    };
    let r = 4;
    let (out, inp) = (b.len() / r, a.len() / r);
    let mut d = vec![0f32; out * inp];
    for o in 0..out {
        for i in 0..inp {
            let mut s = 0f32;
            for k in 0..r {
                s += b[o * r + k] * a[k * inp + i];
            }
            d[o * inp + i] = scale * s;
        }
    }
    (d, out, inp)
}

/// Naive MXFP4 decode of element (row, col) of expert slice bytes.
fn fp4(blocks: &[u8], scales: &[u8], inp: usize, row: usize, col: usize) -> f32 {
    let g = inp / 32;
    let byte = blocks[row * g * 16 + (col / 32) * 16 + (col % 32) / 2];
    let nib = if col.is_multiple_of(2) {
        byte & 15
    } else {
        byte >> 4
    };
    FP4_VALUES[nib as usize] * 2f32.powi(scales[row * g + col / 32] as i32 - 127)
}

/// Checks an `hf` f32 merge of an HF base against naive math on the raw tensors.
fn check_hf_output(base_dir: &Path, ad_dir: &Path, out: &Path) {
    let base = Tensors::open_dir(base_dir).unwrap();
    let ad = Tensors::open_files(&[ad_dir.join("adapters.safetensors")]).unwrap();
    let m = Tensors::open_dir(out).unwrap();
    let scale = 8.0 / 4.0;
    let (h, i) = (DIMS.hidden, DIMS.inter);
    let mut worst = 0f32;
    for l in 0..DIMS.layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            let n = p(&format!("self_attn.{proj}.weight"));
            let (d, _, _) = delta(&ad, &p(&format!("self_attn.{proj}")), None, scale);
            let (w, got) = (base.f32(&n).unwrap(), m.f32(&n).unwrap());
            for k in 0..w.len() {
                worst = worst.max((w[k] + d[k] - got[k]).abs());
            }
        }
        let mxfp4 = base.get(&p("mlp.experts.gate_up_proj_blocks")).is_some();
        for e in 0..DIMS.experts {
            let (dg, _, _) = delta(&ad, &p("mlp.experts.gate_proj"), Some(e), scale);
            let (du, _, _) = delta(&ad, &p("mlp.experts.up_proj"), Some(e), scale);
            let (dd, _, _) = delta(&ad, &p("mlp.experts.down_proj"), Some(e), scale);
            let gu = m.f32_slice0(&p("mlp.experts.gate_up_proj"), e).unwrap(); // [H, 2I]
            let dn = m.f32_slice0(&p("mlp.experts.down_proj"), e).unwrap(); // [I, H]
            for hh in 0..h {
                for j in 0..2 * i {
                    // Base value of fused row j (interleaved), input hh.
                    let w = if mxfp4 {
                        let b = base
                            .slice0(&p("mlp.experts.gate_up_proj_blocks"), e)
                            .unwrap();
                        let s = base
                            .slice0(&p("mlp.experts.gate_up_proj_scales"), e)
                            .unwrap();
                        fp4(b, s, h, j, hh)
                    } else {
                        base.f32_slice0(&p("mlp.experts.gate_up_proj"), e).unwrap()[hh * 2 * i + j]
                    };
                    let d = if j % 2 == 0 {
                        dg[(j / 2) * h + hh]
                    } else {
                        du[(j / 2) * h + hh]
                    };
                    worst = worst.max((w + d - gu[hh * 2 * i + j]).abs());
                }
            }
            for ii in 0..i {
                for hh in 0..h {
                    let w = if mxfp4 {
                        let b = base.slice0(&p("mlp.experts.down_proj_blocks"), e).unwrap();
                        let s = base.slice0(&p("mlp.experts.down_proj_scales"), e).unwrap();
                        fp4(b, s, i, hh, ii)
                    } else {
                        base.f32_slice0(&p("mlp.experts.down_proj"), e).unwrap()[ii * h + hh]
                    };
                    worst = worst.max((w + dd[hh * i + ii] - dn[ii * h + hh]).abs());
                }
            }
        }
        // Biases copied unchanged.
        let n = p("mlp.experts.gate_up_proj_bias");
        assert_eq!(base.f32(&n).unwrap(), m.f32(&n).unwrap());
    }
    // The lm_head target (model-level, once).
    let (d, _, _) = delta(&ad, "lm_head", None, scale);
    let (w, got) = (
        base.f32("lm_head.weight").unwrap(),
        m.f32("lm_head.weight").unwrap(),
    );
    for k in 0..w.len() {
        worst = worst.max((w[k] + d[k] - got[k]).abs());
    }
    assert!(worst < 1e-6, "max |merged - (base + delta)| = {worst}");
    for n in [
        "model.embed_tokens.weight",
        "model.norm.weight",
        "model.layers.1.self_attn.sinks",
    ] {
        assert_eq!(
            base.f32(n).unwrap(),
            m.f32(n).unwrap(),
            "{n} must be copied"
        );
    }
}

#[test]
fn hf_output_matches_naive_fold_for_dense_and_mxfp4_bases() {
    for store in [Format::Hf, Format::HfMxfp4] {
        let d = tmp(&format!("naive-{}", store.name()));
        write_random_base(&d.join("base"), &DIMS, store, 1).unwrap();
        adapter(&d.join("base"), &d.join("ad"), 0.05, None);
        let r = merge(&opts(
            &d.join("base"),
            &d.join("ad"),
            &d.join("out"),
            Format::Hf,
            Dtype::F32,
        ))
        .unwrap();
        assert!(r.shards.len() > 1, "small shard limit must shard");
        check_hf_output(&d.join("base"), &d.join("ad"), &d.join("out"));
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("out/config.json")).unwrap())
                .unwrap();
        assert!(cfg.get("quantization_config").is_none());
        assert!(d.join("out/generation_config.json").exists());
        assert!(d.join("out/model-00001-of-00002.safetensors").exists() || r.shards.len() > 2);
        for g in r.survival.groups.values() {
            assert!(g.rel_err() < 1e-6, "f32 output keeps the delta");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}

/// Every base layout × every output format, read back through `Base`: the dense outputs agree
/// with the `hf` f32 merge exactly; MXFP4 outputs are within one quantization step.
#[test]
fn all_layouts_and_formats_agree() {
    let formats = [Format::Hf, Format::HfMxfp4, Format::Mlx, Format::MlxMxfp4];
    for store in formats {
        let d = tmp(&format!("cross-{}", store.name()));
        let b = d.join("base");
        write_random_base(&b, &DIMS, store, 2).unwrap();
        adapter(&b, &d.join("ad"), 0.05, Some(vec![1]));
        let mut outs = Vec::new();
        for f in formats {
            let o = d.join(format!("out-{}", f.name()));
            merge(&opts(&b, &d.join("ad"), &o, f, Dtype::F32)).unwrap();
            outs.push((f, Base::open(&o).unwrap()));
        }
        let reference = &outs[0].1;
        for (f, m) in &outs {
            assert_eq!((m.layers, m.experts, m.hidden, m.inter), (2, 4, 64, 32));
            for l in 0..2 {
                for sel in [Sel::Gate, Sel::Up, Sel::Down, Sel::GateUp] {
                    for e in 0..4 {
                        let want = reference.expert_rows(l, e, sel).unwrap();
                        let got = m.expert_rows(l, e, sel).unwrap();
                        let err = want
                            .iter()
                            .zip(&got)
                            .map(|(a, b)| (a - b).abs())
                            .fold(0f32, f32::max);
                        let tol = if f.is_mxfp4() { 0.05 * 2.0 } else { 0.0 };
                        assert!(
                            err <= tol,
                            "{} → {}: layer {l} {sel:?} e{e}: {err}",
                            store.name(),
                            f.name()
                        );
                    }
                }
                assert_eq!(
                    reference.expert_biases(l).unwrap(),
                    m.expert_biases(l).unwrap()
                );
            }
        }
        // The untouched layer 0 round-trips exactly through MXFP4 when the base is MXFP4.
        if store.is_mxfp4() {
            let base = Base::open(&b).unwrap();
            for (f, m) in &outs {
                for e in 0..4 {
                    assert_eq!(
                        base.expert_rows(0, e, Sel::GateUp).unwrap(),
                        m.expert_rows(0, e, Sel::GateUp).unwrap(),
                        "{}: unadapted layer changed",
                        f.name()
                    );
                }
            }
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}

#[test]
fn small_deltas_are_reported_lost_in_mxfp4() {
    let d = tmp("lost");
    write_random_base(&d.join("base"), &DIMS, Format::HfMxfp4, 3).unwrap();
    adapter(&d.join("base"), &d.join("ad"), 1e-5, None);
    let r = merge(&opts(
        &d.join("base"),
        &d.join("ad"),
        &d.join("q"),
        Format::HfMxfp4,
        Dtype::BF16,
    ))
    .unwrap();
    let lost = r.survival.lost_groups();
    for g in ["gate_proj", "up_proj", "down_proj"] {
        assert!(
            lost.contains(&g.to_string()),
            "{g} should be lost: {}",
            r.survival.report()
        );
    }
    assert!(r.survival.report().contains("warning: down_proj"));
    let r = merge(&opts(
        &d.join("base"),
        &d.join("ad"),
        &d.join("f"),
        Format::Hf,
        Dtype::F32,
    ))
    .unwrap();
    assert!(
        r.survival.lost_groups().is_empty(),
        "{}",
        r.survival.report()
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn refuses_foreign_adapters_and_leaves_nothing_on_failure() {
    let d = tmp("refuse");
    write_random_base(&d.join("base"), &DIMS, Format::Hf, 4).unwrap();
    let other = Dims { hidden: 96, ..DIMS };
    write_random_base(&d.join("other"), &other, Format::Hf, 4).unwrap();
    adapter(&d.join("other"), &d.join("ad"), 0.05, None);
    let out = d.join("out");
    let err = merge(&opts(
        &d.join("base"),
        &d.join("ad"),
        &out,
        Format::Hf,
        Dtype::F32,
    ))
    .err()
    .unwrap();
    assert!(format!("{err:#}").contains("hidden_size = 96"), "{err:#}");

    // Same dims, different recorded fingerprint.
    let spec = AdapterSpec {
        rank: 2,
        alpha: 2.0,
        seed: 1,
        layers: None,
        targets: &[Target::Q],
        b_range: 0.1,
        fingerprint: Some("aaaa".into()),
    };
    write_random_adapter(&d.join("base"), &d.join("fp"), &spec).unwrap();
    let mut o = opts(&d.join("base"), &d.join("fp"), &out, Format::Hf, Dtype::F32);
    o.base_fingerprint = Some("bbbb".into());
    let err = format!("{:#}", merge(&o).err().unwrap());
    assert!(err.contains("aaaa") && err.contains("bbbb"), "{err}");

    // A NaN in lora_b fails mid-merge: no output and no temporary folder left behind.
    let ad = d.join("fp/adapters.safetensors");
    let mut bytes = std::fs::read(&ad).unwrap();
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&ad, bytes).unwrap();
    o.base_fingerprint = Some("aaaa".into());
    let err = format!("{:#}", merge(&o).err().unwrap());
    assert!(err.contains("non-finite"), "{err}");
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.iter().all(|n| !n.to_string_lossy().contains(".tmp")),
        "{left:?}"
    );

    // An existing --out is never overwritten.
    std::fs::create_dir_all(&out).unwrap();
    let err = format!(
        "{:#}",
        merge(&opts(
            &d.join("base"),
            &d.join("ad"),
            &out,
            Format::Hf,
            Dtype::F32
        ))
        .err()
        .unwrap()
    );
    assert!(err.contains("already exists"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bf16_output_copies_untouched_tensors_bit_exactly() {
    let d = tmp("bits");
    write_random_base(&d.join("base"), &DIMS, Format::Hf, 5).unwrap();
    adapter(&d.join("base"), &d.join("ad"), 0.05, Some(vec![0]));
    merge(&opts(
        &d.join("base"),
        &d.join("ad"),
        &d.join("out"),
        Format::Hf,
        Dtype::BF16,
    ))
    .unwrap();
    let (b, m) = (
        Tensors::open_dir(&d.join("base")).unwrap(),
        Tensors::open_dir(&d.join("out")).unwrap(),
    );
    for n in [
        "model.embed_tokens.weight",
        "model.layers.1.mlp.experts.gate_up_proj",
        "model.layers.1.self_attn.q_proj.weight",
    ] {
        assert_eq!(b.bytes(n).unwrap(), m.bytes(n).unwrap(), "{n}");
    }
    assert_ne!(
        b.bytes("model.layers.0.self_attn.q_proj.weight").unwrap(),
        m.bytes("model.layers.0.self_attn.q_proj.weight").unwrap()
    );
    std::fs::remove_dir_all(&d).unwrap();
}
