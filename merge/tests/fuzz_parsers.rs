//! Property-based fuzzing (proptest; `cargo fuzz` needs nightly) of the parsers that read
//! untrusted files: safetensors headers (the loader's per-tensor check and the full open
//! through candle), `adapter_config.json` (merge's and the trainer's readers) and
//! `config.json`. Inputs are random bytes and random mutations of valid files; every parser
//! must return Ok or an error — never panic, hang or allocate without bound — and what it
//! accepts must satisfy the checks it promises.
//!
//! In CI each property runs the default 256 cases (a second or two). For a fuzzing session:
//! `PROPTEST_CASES=200000 cargo test --release -p osstune-merge --test fuzz_parsers`.
//! A failing input is shrunk and saved under `proptest-regressions/` by proptest; inputs that
//! once crashed are kept below as plain regression tests.

use osstune_merge::adapter::Adapter;
use osstune_model::io::tensor_bounds::parse_header;
use osstune_model::Config;
use proptest::prelude::*;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// A per-test-case scratch folder (proptest runs cases sequentially in one thread).
fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("osstune-fuzz-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Random edits of `base`: byte overwrites, a truncation and an insertion.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = base.len();
    (
        prop::collection::vec((0..n, any::<u8>()), 0..8),
        prop::option::of(0..n),
        prop::option::of((0..n, prop::collection::vec(any::<u8>(), 1..16))),
    )
        .prop_map(move |(flips, cut, insert)| {
            let mut b = base.clone();
            for (i, v) in flips {
                b[i] = v;
            }
            if let Some((at, bytes)) = insert {
                let at = at.min(b.len());
                b.splice(at..at, bytes);
            }
            if let Some(c) = cut {
                b.truncate(c.max(1));
            }
            b
        })
}

fn valid_safetensors() -> Vec<u8> {
    std::fs::read(fixtures().join("merge/base/model.safetensors")).unwrap()
}

/// The header JSON of the fixture, with its data length.
fn valid_header() -> (Vec<u8>, u64) {
    let b = valid_safetensors();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    (b[8..8 + n].to_vec(), (b.len() - 8 - n) as u64)
}

fn json_scalar() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        (-1e30f64..1e30).prop_map(serde_json::Value::from),
        (0u64..10).prop_map(serde_json::Value::from),
        "[a-z_]{0,12}".prop_map(serde_json::Value::from),
    ]
}

/// `json` with random keys replaced by random scalars.
fn with_random_fields(json: serde_json::Value) -> impl Strategy<Value = String> {
    let keys: Vec<String> = json.as_object().unwrap().keys().cloned().collect();
    let k = keys.len();
    prop::collection::vec((0..k, json_scalar()), 1..4).prop_map(move |edits| {
        let mut j = json.clone();
        for (i, v) in edits {
            j[&keys[i]] = v;
        }
        j.to_string()
    })
}

proptest! {
    #[test]
    fn safetensors_header_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512),
                                              data_len in 0u64..1 << 20) {
        let _ = parse_header(&bytes, data_len);
    }

    #[test]
    fn mutated_safetensors_headers_are_checked(h in mutated(valid_header().0)) {
        let data_len = valid_header().1;
        if let Ok(entries) = parse_header(&h, data_len) {
            // What the parser accepts lies inside the data and spans exactly its shape.
            for e in entries {
                prop_assert!(e.start <= e.end && e.end <= data_len, "{}", e.name);
            }
        }
    }

    #[test]
    fn mutated_safetensors_files_open_or_fail_cleanly(b in mutated(valid_safetensors())) {
        let d = scratch("st");
        let f = d.join("model.safetensors");
        std::fs::write(&f, &b).unwrap();
        // The whole path: the per-tensor check, then candle's mmap and the merge reader.
        if let Ok(t) = osstune_merge::st::Tensors::open_files(std::slice::from_ref(&f)) {
            for name in t.names().cloned().collect::<Vec<_>>() {
                let _ = t.bytes(&name);
            }
        }
    }

    #[test]
    fn model_config_json_is_validated(text in with_random_fields(
        serde_json::from_str(&std::fs::read_to_string(
            fixtures().join("merge/base/config.json")).unwrap()).unwrap())) {
        if let Ok(c) = Config::from_json(&text) {
            // Accepted configs are usable: no zero sizes, finite positive epsilons.
            prop_assert!(c.vocab_size > 0 && c.hidden_size > 0 && c.num_hidden_layers > 0);
            prop_assert!(c.head_dim > 0 && c.num_local_experts > 0);
            prop_assert!(c.rms_norm_eps.is_finite() && c.rms_norm_eps > 0.0);
            prop_assert!(c.window() > 0 && c.context_len() > 0);
            let _ = c.fingerprint();
        }
    }

    #[test]
    fn model_config_bytes_never_panic(b in mutated(std::fs::read(
        fixtures().join("merge/base/config.json")).unwrap())) {
        let _ = Config::from_json(&String::from_utf8_lossy(&b));
    }

    #[test]
    fn adapter_configs_are_read_or_refused(text in with_random_fields(
        serde_json::from_str(&std::fs::read_to_string(
            fixtures().join("merge/adapter/adapter_config.json")).unwrap()).unwrap())) {
        let d = scratch("adapter");
        std::fs::copy(fixtures().join("merge/adapter/adapters.safetensors"),
                      d.join("adapters.safetensors")).unwrap();
        std::fs::write(d.join("adapter_config.json"), &text).unwrap();
        // Merge's reader: an accepted config has a usable rank and scale.
        if let Ok(a) = Adapter::open(&d) {
            prop_assert!(a.config.rank > 0 && a.scale.is_finite());
        }
        // The trainer's reader.
        if let Ok(c) = osstune_train::adapters::read_config(&d) {
            prop_assert!(c.rank > 0);
        }
    }

    #[test]
    fn adapter_config_bytes_never_panic(b in mutated(std::fs::read(
        fixtures().join("merge/adapter/adapter_config.json")).unwrap())) {
        let d = scratch("adapter-bytes");
        std::fs::write(d.join("adapter_config.json"), &b).unwrap();
        let _ = Adapter::open(&d);
        let _ = osstune_train::adapters::read_config(&d);
    }
}
