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
