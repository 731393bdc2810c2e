//! Loading names the tensor that is wrong (weak spot 1): out-of-range offsets, NaN weights
//! and MXFP4 scales of 0xFF are reported on that tensor, in that file, at load.

use crate::common::*;
use std::path::{Path, PathBuf};

/// A copy of the model folder `src` in `dst` whose model.safetensors went through `edit`
/// (header as JSON, data bytes).
fn corrupt(src: &Path, dst: &Path, edit: impl FnOnce(&mut serde_json::Value, &mut Vec<u8>)) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    let f = dst.join("model.safetensors");
    let b = std::fs::read(&f).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let mut data = b[8 + n..].to_vec();
    edit(&mut header, &mut data);
    let h = header.to_string().into_bytes();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    std::fs::write(&f, out).unwrap();
}

fn start_of(h: &serde_json::Value, name: &str) -> usize {
    h[name]["data_offsets"][0].as_u64().unwrap() as usize
}

/// Loads `model` (the full model, as generate/train/merge do) and returns the error.
fn load_error(model: &Path, vocab_ok_id: &str) -> String {
    fails(
        bin()
            .args(["adapters", "logits", "--ids", vocab_ok_id, "--model"])
            .arg(model)
            .arg("--out")
            .arg(model.join("logits.safetensors")),
    )
}

#[test]
fn out_of_range_offsets_name_their_tensor() {
    let tmp = Scratch::new("offsets");
    let m = tmp.join("m");
    corrupt(&fixture_model(), &m, |h, _| {
        // An end offset far beyond any file.
        h["model.norm.weight"]["data_offsets"][1] = (1u64 << 40).into();
    });
    let err = load_error(&m, "1");
    assert!(
        err.contains("tensor model.norm.weight") && err.contains("outside the data section"),
        "{err}"
    );
    assert!(
        err.contains(&m.join("model.safetensors").display().to_string()),
        "{err}"
    );
}

#[test]
fn nan_weights_and_nan_scales_are_named_at_load() {
    let tmp = Scratch::new("nan");
    let m = tmp.join("nan");
    let q = "model.layers.1.self_attn.q_proj.weight";
    corrupt(&fixture_model(), &m, |h, d| {
        let s = start_of(h, q) + 4 * 5;
        d[s..s + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let err = load_error(&m, "1");
    assert!(
        err.contains(&format!("tensor {q} holds a non-finite value")) && err.contains("element 5"),
        "{err}"
    );
    let m = tmp.join("scales");
    let s = "model.layers.1.mlp.experts.down_proj_scales";
    let mxfp4: PathBuf = root().join("fixtures/model/mxfp4");
    corrupt(&mxfp4, &m, |h, d| {
        let at = start_of(h, s) + 3;
        d[at] = 0xFF;
    });
    let err = load_error(&m, "1");
    assert!(
        err.contains(&format!("tensor {s} holds the MXFP4 scale 0xFF")),
        "{err}"
    );
}
