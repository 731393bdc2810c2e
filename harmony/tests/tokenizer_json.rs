//! The `tokenizer.json` backend agrees with the built-in vocabulary. gpt-oss checkpoints ship a
//! Hugging Face byte-level BPE tokenizer.json; no checkpoint is available offline, so this builds
//! the equivalent file from the o200k ranks (vocabulary in GPT-2's byte→char alphabet, merges
//! ordered by the rank of the merged token, o200k split regex, Harmony specials as added tokens)
//! and checks both backends produce the same ids and text.

use std::collections::HashMap;

use osstune_harmony::tokenizer::VOCAB_SIZE;
use osstune_harmony::{Message, RenderOptions, Renderer, Tokenizer};
use serde_json::{json, Value};

fn byte_to_char() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1u32..=0xAC);
    printable.extend(0xAEu32..=0xFF);
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            if printable.contains(&b) {
                char::from_u32(b).unwrap()
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap()
            }
        })
        .collect()
}

fn build_tokenizer_json(builtin: &Tokenizer) -> Value {
    let b2c = byte_to_char();
    let spell = |bytes: &[u8]| -> String { bytes.iter().map(|&b| b2c[b as usize]).collect() };
    let mut vocab = serde_json::Map::new();
    let mut rank_of: HashMap<Vec<u8>, u32> = HashMap::new();
    for id in 0..199998u32 {
        let bytes = builtin.decode_bytes(&[id]).unwrap();
        vocab.insert(spell(&bytes), json!(id));
        rank_of.insert(bytes, id);
    }
    // Every way to build a token from two tokens, ordered by the merged token's rank.
    let mut merges: Vec<(u32, u32, u32, String, String)> = Vec::new();
    for (bytes, &r) in &rank_of {
        for cut in 1..bytes.len() {
            if let (Some(&a), Some(&b)) = (rank_of.get(&bytes[..cut]), rank_of.get(&bytes[cut..])) {
                if a < r && b < r {
                    merges.push((r, a, b, spell(&bytes[..cut]), spell(&bytes[cut..])));
                }
            }
        }
    }
    merges.sort();
    let mut added = Vec::new();
    for id in 199998..VOCAB_SIZE as u32 {
        if let Some(name) = builtin.special_name(id) {
            added.push(
                json!({"id": id, "content": name, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true}),
            );
        }
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tiktoken_rs::O200K_BASE_PAT_STR},
             "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
            "vocab": vocab,
            "merges": merges.iter().map(|m| json!([m.3, m.4])).collect::<Vec<_>>()}
    })
}

#[test]
fn tokenizer_json_backend_matches_builtin() {
    let builtin = Tokenizer::o200k_harmony().unwrap();
    let dir = std::env::temp_dir().join(format!("osstune-tokjson-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        build_tokenizer_json(&builtin).to_string(),
    )
    .unwrap();
    let hf = Tokenizer::from_model_dir(&dir).unwrap();
    assert_eq!(hf.backend_name(), "tokenizer.json");
    assert_eq!(hf.vocab_size(), VOCAB_SIZE);
    assert_eq!(hf.special_id("<|call|>"), Some(200012));
    let texts = [
        "Hello world",
        "fn main() {\n    println!(\"héllo 世界 🚀\");\n}\n\n\t  trailing   ",
        "  1\tline one\n  2\tline two\r\nCRLF 12345678 3.14159 don't I'M we'll",
        "ÀÉÎÕÜ ñ ß Ωμέγα Кириллица עברית العربية हिन्दी",
        "<|end|> spelled as text <|start|>",
    ];
    for t in texts {
        let want = builtin.encode_ordinary(t).unwrap();
        assert_eq!(hf.encode_ordinary(t).unwrap(), want, "{t:?}");
        assert_eq!(hf.decode_utf8(&want).unwrap(), t);
        assert_eq!(
            hf.encode(t, true).unwrap(),
            builtin.encode(t, true).unwrap(),
            "{t:?}"
        );
    }
    // Whole Harmony renderings agree too.
    let msgs = vec![
        Message::user("List files 📁"),
        Message::tool_call("bash", "{\"command\":\"ls -la\"}"),
        Message::tool_result("bash", "total 0\ndrwxr-xr-x  2 root root 40 .\n"),
        Message::assistant("final", "The directory is empty."),
    ];
    let a = Renderer::new(&builtin)
        .render_conversation(&msgs, RenderOptions::default())
        .unwrap();
    let b = Renderer::new(&hf)
        .render_conversation(&msgs, RenderOptions::default())
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(hf.decode(&a).unwrap(), builtin.decode(&a).unwrap());
    std::fs::remove_dir_all(&dir).ok();
}
