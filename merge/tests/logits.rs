//! Merged == base + adapter at the logits: the tiny preset (dense and MXFP4 experts), merged
//! in f32 into every output format osstune loads, then compared with the unmerged adapter
//! applied by the model's LoRA path (`verify`).

use osstune_merge::adapter::Target;
use osstune_merge::synth::{write_random_adapter, AdapterSpec};
use osstune_merge::verify::verify;
use osstune_merge::{merge, Dtype, Format, MergeOptions};
use osstune_model::io::tiny::{write_tiny, ExpertFormat, Preset};

fn run(experts: ExpertFormat, tag: &str) {
    let d = std::env::temp_dir().join(format!("osstune-merge-logits-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let base = d.join("base");
    write_tiny(&base, Preset::Tiny, 3, experts).unwrap();
    let spec = AdapterSpec {
        rank: 4,
        alpha: 8.0,
        seed: 5,
        layers: None,
        targets: &Target::ALL,
        b_range: 0.05,
        fingerprint: None,
    };
    write_random_adapter(&base, &d.join("ad"), &spec).unwrap();
    for f in [Format::Hf, Format::HfMxfp4, Format::Mlx, Format::MlxMxfp4] {
        let out = d.join(f.name());
        merge(&MergeOptions {
            model: base.clone(),
            adapter: d.join("ad"),
            out: out.clone(),
            format: f,
            dtype: Dtype::F32,
            max_shard_bytes: 40_000_000,
            base_fingerprint: None,
            progress: false,
            verify: None,
        })
        .unwrap();
        let v = verify(&base, &d.join("ad"), &out, 12).unwrap();
        eprintln!(
            "{tag} → {}: max |Δlogit| {:.3e}, adapter effect {:.3e}, max |logit| {:.3}",
            f.name(),
            v.max_diff,
            v.adapter_effect,
            v.max_logit
        );
        assert!(
            v.adapter_effect > 1e-2,
            "the adapter must change the logits: {}",
            v.adapter_effect
        );
        if f.is_mxfp4() {
            // Re-quantized experts: not exact, but much closer than dropping the adapter.
            assert!(
                v.max_diff < v.adapter_effect,
                "{}: {} vs {}",
                f.name(),
                v.max_diff,
                v.adapter_effect
            );
        } else {
            assert!(
                v.max_diff < 1e-4,
                "{} {tag}: max |Δlogit| {}",
                f.name(),
                v.max_diff
            );
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn merged_logits_match_adapter_dense_base() {
    run(ExpertFormat::Dense, "dense");
}

#[test]
fn merged_logits_match_adapter_mxfp4_base() {
    run(ExpertFormat::Mxfp4, "mxfp4");
}
