//! Outputs never destroy inputs (bug 8): `adapters export/import --out` that is, contains
//! or lies inside the input is refused; existing folders need `--overwrite` (also
//! `init-tiny`).

use crate::common::*;
use std::path::Path;

/// A trained osstune adapter (one step on the fixture model) in `dst`.
fn copy_adapter(dst: &Path) {
    let data = dst.with_extension("data");
    write_data(&data, 2);
    ok(&mut train(&data, dst, 1));
}

fn export(adapter: &Path, out: &Path) -> std::process::Command {
    let mut c = bin();
    c.args(["adapters", "export", "--format", "mlx", "--adapter"])
        .arg(adapter)
        .arg("--out")
        .arg(out);
    c
}

#[test]
fn export_into_its_own_adapter_folder_is_refused() {
    let tmp = Scratch::new("export-self");
    let adapter = tmp.join("adapter");
    copy_adapter(&adapter);
    let before = std::fs::read(adapter.join("adapters.safetensors")).unwrap();
    for (out, relation) in [
        (adapter.clone(), "is the input"),
        (adapter.join("mlx"), "is inside the input"),
        (tmp.path().to_path_buf(), "contains the input"),
        // The same folder spelled differently.
        (adapter.join("..").join("adapter"), "is the input"),
    ] {
        let err = fails(export(&adapter, &out).arg("--overwrite"));
        assert!(err.contains(relation), "{}: {err}", out.display());
    }
    assert_eq!(
        std::fs::read(adapter.join("adapters.safetensors")).unwrap(),
        before
    );
}

#[test]
fn export_and_init_tiny_need_overwrite_for_an_existing_folder() {
    let tmp = Scratch::new("export-exists");
    let adapter = tmp.join("adapter");
    copy_adapter(&adapter);
    let out = tmp.join("mlx");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let err = fails(&mut export(&adapter, &out));
    assert!(
        err.contains("already exists") && err.contains("--overwrite"),
        "{err}"
    );
    assert!(!out.join("adapters.safetensors").exists());
    ok(export(&adapter, &out).arg("--overwrite"));
    assert!(out.join("adapters.safetensors").exists());

    let model = tmp.join("model");
    std::fs::create_dir_all(&model).unwrap();
    let err = fails(bin().args(["init-tiny", "--out"]).arg(&model));
    assert!(err.contains("already exists"), "{err}");
    assert!(!model.join("config.json").exists());
}

#[test]
fn import_into_its_source_is_refused() {
    let tmp = Scratch::new("import-self");
    let adapter = tmp.join("adapter");
    copy_adapter(&adapter);
    let mlx = tmp.join("mlx");
    ok(&mut export(&adapter, &mlx));
    let err = fails(
        bin()
            .args(["adapters", "import", "--format", "mlx", "--from"])
            .arg(&mlx)
            .arg("--model")
            .arg(fixture_model())
            .arg("--out")
            .arg(&mlx)
            .arg("--overwrite"),
    );
    assert!(err.contains("is the input --from"), "{err}");
}

fn edit_config(adapter: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = adapter.join("adapter_config.json");
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut j);
    std::fs::write(&p, j.to_string()).unwrap();
}

/// `adapters logits` loads the adapter the way training, `generate` and verify do.
fn load_adapter(adapter: &Path) -> std::process::Command {
    let mut c = bin();
    c.args(["adapters", "logits", "--ids", "1,2", "--model"])
        .arg(fixture_model())
        .arg("--adapter")
        .arg(adapter)
        .arg("--out")
        .arg(adapter.with_extension("logits"));
    c
}

#[test]
fn adapter_config_disagreeing_with_its_tensors_names_the_culprit() {
    let tmp = Scratch::new("adapter-config");
    let adapter = tmp.join("adapter");
    copy_adapter(&adapter);
    ok(&mut load_adapter(&adapter));
    // Rank 8 in the config, rank-4 tensors: the config is wrong, not the model.
    edit_config(&adapter, |j| j["rank"] = 8.into());
    let err = fails(&mut load_adapter(&adapter));
    assert!(
        err.contains("has rank 4 but adapter_config.json says rank 8"),
        "{err}"
    );
    let err = fails(
        bin()
            .arg("merge")
            .arg("--model")
            .arg(fixture_model())
            .arg("--adapter")
            .arg(&adapter)
            .arg("--out")
            .arg(tmp.join("merged")),
    );
    assert!(
        err.contains("has rank 4 but adapter_config.json says rank 8"),
        "{err}"
    );
    // A layer the base does not have.
    edit_config(&adapter, |j| {
        j["rank"] = 4.into();
        j["layers"] = serde_json::json!([0, 1, 7]);
    });
    let err = fails(&mut load_adapter(&adapter));
    assert!(
        err.contains("layers lists layer 7") && err.contains("2 layers"),
        "{err}"
    );
}

/// Overwrites the first f32 of the tensor data of a safetensors file with NaN.
fn poison(file: &Path) {
    let mut b = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    b[8 + n..8 + n + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(file, b).unwrap();
}

#[test]
fn import_validates_values_before_writing() {
    let tmp = Scratch::new("import-nan");
    let adapter = tmp.join("adapter");
    copy_adapter(&adapter);
    let mlx = tmp.join("mlx");
    ok(&mut export(&adapter, &mlx));
    poison(&mlx.join("adapters.safetensors"));
    let out = tmp.join("imported");
    let err = fails(
        bin()
            .args(["adapters", "import", "--format", "mlx", "--from"])
            .arg(&mlx)
            .arg("--model")
            .arg(fixture_model())
            .arg("--out")
            .arg(&out),
    );
    assert!(err.contains("non-finite value"), "{err}");
    assert!(!out.exists(), "a refused import left {}", out.display());
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temporary left: {left:?}");
    // The trained adapter itself, poisoned the same way, is refused on load.
    poison(&adapter.join("adapters.safetensors"));
    let err = fails(&mut load_adapter(&adapter));
    assert!(err.contains("non-finite value"), "{err}");
}

/// A copy of the fixture model with one RMSNorm weight changed: same architecture (and
/// fingerprint), other weights.
fn other_base(dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for f in ["config.json", "generation_config.json"] {
        std::fs::copy(fixture_model().join(f), dst.join(f)).unwrap();
    }
    let b = std::fs::read(fixture_model().join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let at = 8 + n + h["model.norm.weight"]["data_offsets"][0].as_u64().unwrap() as usize;
    let mut b = b.clone();
    b[at..at + 4].copy_from_slice(&0.5f32.to_le_bytes());
    std::fs::write(dst.join("model.safetensors"), b).unwrap();
}

#[test]
fn an_adapter_is_refused_on_another_base_of_the_same_shape() {
    let tmp = Scratch::new("other-base");
    let adapter = tmp.join("adapter");
    copy_adapter(&adapter);
    let cfg = std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap();
    assert!(cfg.contains("content_digest"), "{cfg}");
    let other = tmp.join("other");
    other_base(&other);
    let logits = |model: &Path| {
        let mut c = bin();
        c.args(["adapters", "logits", "--ids", "1,2", "--model"])
            .arg(model)
            .arg("--adapter")
            .arg(&adapter)
            .arg("--out")
            .arg(tmp.join("logits.safetensors"));
        c
    };
    let err = fails(&mut logits(&other));
    assert!(
        err.contains("content digest") && err.contains("--allow-other-base"),
        "{err}"
    );
    ok(logits(&other).arg("--allow-other-base"));
    let merge = |out: &str| {
        let mut c = bin();
        c.arg("merge")
            .arg("--model")
            .arg(&other)
            .arg("--adapter")
            .arg(&adapter)
            .arg("--out")
            .arg(tmp.join(out))
            .arg("--quiet");
        c
    };
    let err = fails(&mut merge("refused"));
    assert!(err.contains("content digest"), "{err}");
    assert!(!tmp.join("refused").exists());
    // A bf16 merge of the right base (other dtype; LoRA never touches norms or sinks) keeps
    // the digest, so it is accepted: the digest tells bases apart, not merges of one base.
    let bf16 = tmp.join("bf16");
    ok(bin()
        .arg("merge")
        .arg("--model")
        .arg(fixture_model())
        .arg("--adapter")
        .arg(&adapter)
        .arg("--out")
        .arg(&bf16)
        .args(["--dtype", "bf16", "--quiet"]));
    ok(&mut logits(&bf16));
}
