//! The o200k_harmony tokenizer: o200k_base BPE plus the Harmony special tokens.
//!
//! Two backends produce the same ids: the built-in vocabulary (tiktoken-rs embeds
//! `o200k_base.tiktoken`, so no network and no model directory are needed) and a model
//! directory's `tokenizer.json` (Hugging Face `tokenizers`), used when a checkpoint ships one.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tiktoken_rs::CoreBPE;

/// `<|startoftext|>`
pub const STARTOFTEXT: u32 = 199998;
/// `<|endoftext|>` (also the pad token).
pub const ENDOFTEXT: u32 = 199999;
/// `<|return|>`: the model is done sampling (end of a final answer).
pub const RETURN: u32 = 200002;
/// `<|constrain|>`: precedes a content-type constraint such as `json`.
pub const CONSTRAIN: u32 = 200003;
/// `<|channel|>`
pub const CHANNEL: u32 = 200005;
/// `<|start|>`
pub const START: u32 = 200006;
/// `<|end|>`
pub const END: u32 = 200007;
/// `<|message|>`
pub const MESSAGE: u32 = 200008;
/// `<|call|>`: end of a tool call.
pub const CALL: u32 = 200012;
/// Size of the gpt-oss embedding / unembedding (ids 0..201088).
pub const VOCAB_SIZE: usize = 201088;

/// Stop tokens when sampling an assistant action (docs/gpt-oss.md §5.1, registry.rs).
pub const ASSISTANT_STOP_TOKENS: [u32; 2] = [RETURN, CALL];
/// All stop tokens: any of these ends the message being parsed.
pub const ALL_STOP_TOKENS: [u32; 3] = [RETURN, CALL, END];

/// The named (non-reserved) specials of o200k_harmony with their ids (docs/gpt-oss.md §5.1).
const NAMED_SPECIALS: [(&str, u32); 11] = [
    ("<|startoftext|>", STARTOFTEXT),
    ("<|endoftext|>", ENDOFTEXT),
    ("<|return|>", RETURN),
    ("<|constrain|>", CONSTRAIN),
    ("<|channel|>", CHANNEL),
    ("<|start|>", START),
    ("<|end|>", END),
    ("<|message|>", MESSAGE),
    ("<|call|>", CALL),
    // Hugging Face's tokenizer.json calls 200018 `<|endofprompt|>`; tiktoken calls it reserved.
    ("<|endofprompt|>", 200018),
    ("<|reserved_200018|>", 200018),
];

/// Encode with the tokenizer.json's pre-tokenizer and BPE model only, skipping its added-token
/// matching, so special spellings inside text stay ordinary text (as tiktoken's
/// `encode_ordinary`). gpt-oss's tokenizer.json has no normalizer.
fn encode_hf_plain(t: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>> {
    use tokenizers::{Model, OffsetType, PreTokenizedString, PreTokenizer};
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let err = |e: tokenizers::Error| anyhow::anyhow!("tokenizer.json encode failed: {e}");
    let mut pts = PreTokenizedString::from(text);
    if let Some(pt) = t.get_pre_tokenizer() {
        pt.pre_tokenize(&mut pts).map_err(err)?;
    }
    let model = t.get_model();
    pts.tokenize(|n| model.tokenize(n.get())).map_err(err)?;
    let enc = pts.into_encoding(None, 0, OffsetType::None).map_err(err)?;
    Ok(enc.get_ids().to_vec())
}

enum Backend {
    Tiktoken(&'static CoreBPE),
    HuggingFace(Box<tokenizers::Tokenizer>),
}

/// Encoder/decoder for gpt-oss token ids.
pub struct Tokenizer {
    backend: Backend,
    special_to_id: HashMap<String, u32>,
    id_to_special: HashMap<u32, String>,
    /// Inverse of GPT-2's byte→printable-char map, for decoding `tokenizer.json` byte-level tokens.
    byte_decoder: HashMap<char, u8>,
}

fn harmony_specials() -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> = NAMED_SPECIALS
        .iter()
        .filter(|(n, _)| *n != "<|endofprompt|>")
        .map(|(n, i)| (n.to_string(), *i))
        .collect();
    for id in [200000u32, 200001, 200004, 200009, 200010, 200011] {
        v.push((format!("<|reserved_{id}|>"), id));
    }
    for id in 200013..VOCAB_SIZE as u32 {
        if id != 200018 {
            v.push((format!("<|reserved_{id}|>"), id));
        }
    }
    v
}

/// GPT-2 byte-level BPE maps each byte to a printable char; this is that map, inverted.
fn byte_decoder() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1u32..=0xAC);
    printable.extend(0xAEu32..=0xFF);
    let mut map = HashMap::with_capacity(256);
    let mut extra = 0u32;
    for b in 0u32..256 {
        let ch = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        if let Some(c) = char::from_u32(ch) {
            map.insert(c, b as u8);
        }
    }
    map
}

impl Tokenizer {
    /// The built-in o200k_harmony vocabulary (no files needed).
    pub fn o200k_harmony() -> Result<Self> {
        let bpe = tiktoken_rs::o200k_harmony_singleton();
        let specials = harmony_specials();
        Ok(Self::with_specials(Backend::Tiktoken(bpe), specials))
    }

    /// Load a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let tok = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("reading tokenizer {}", path.display()))?;
        let mut specials: Vec<(String, u32)> = Vec::new();
        for (id, added) in tok.get_added_tokens_decoder() {
            if added.special {
                specials.push((added.content.clone(), id));
            }
        }
        // A tokenizer.json written for gpt-oss must agree with the Harmony ids the renderer uses.
        for (name, id) in NAMED_SPECIALS {
            if let Some(got) = tok.token_to_id(name) {
                if got != id {
                    bail!(
                        "{}: special token {name} has id {got}, Harmony expects {id}",
                        path.display()
                    );
                }
            }
        }
        Ok(Self::with_specials(
            Backend::HuggingFace(Box::new(tok)),
            specials,
        ))
    }

    /// `dir/tokenizer.json` when the model directory has one, else the built-in vocabulary.
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if path.is_file() {
            Self::from_file(&path)
        } else {
            Self::o200k_harmony()
        }
    }

    fn with_specials(backend: Backend, specials: Vec<(String, u32)>) -> Self {
        let mut special_to_id = HashMap::with_capacity(specials.len() + 2);
        let mut id_to_special = HashMap::with_capacity(specials.len());
        for (name, id) in specials {
            id_to_special.entry(id).or_insert_with(|| name.clone());
            special_to_id.insert(name, id);
        }
        Self {
            backend,
            special_to_id,
            id_to_special,
            byte_decoder: byte_decoder(),
        }
    }

    /// Which backend is in use, for logs.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Tiktoken(_) => "o200k_harmony (built-in)",
            Backend::HuggingFace(_) => "tokenizer.json",
        }
    }

    /// Number of ids the model must embed.
    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Tiktoken(_) => VOCAB_SIZE,
            Backend::HuggingFace(t) => {
                let max_special = self
                    .id_to_special
                    .keys()
                    .max()
                    .map_or(0, |m| *m as usize + 1);
                t.get_vocab_size(true).max(max_special)
            }
        }
    }

    /// Encode text with special-token spellings treated as plain text.
    pub fn encode_ordinary(&self, text: &str) -> Result<Vec<u32>> {
        match &self.backend {
            Backend::Tiktoken(bpe) => Ok(bpe.encode_ordinary(text)),
            Backend::HuggingFace(t) => encode_hf_plain(t, text),
        }
    }

    /// Split `text` into runs of plain text and exact special-token spellings.
    fn split_specials<'a>(&self, text: &'a str) -> Vec<(&'a str, bool)> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("<|") {
            let Some(close) = rest[open..].find("|>") else {
                break;
            };
            let cand = &rest[open..open + close + 2];
            if self.special_to_id.contains_key(cand) {
                if open > 0 {
                    out.push((&rest[..open], false));
                }
                out.push((cand, true));
                rest = &rest[open + close + 2..];
            } else {
                out.push((&rest[..open + 2], false));
                rest = &rest[open + 2..];
            }
        }
        if !rest.is_empty() {
            out.push((rest, false));
        }
        // Merge adjacent plain runs so BPE sees them whole.
        let mut merged: Vec<(&'a str, bool)> = Vec::new();
        let base = text.as_ptr() as usize;
        for (piece, sp) in out {
            if let Some(last) = merged.last_mut() {
                if !last.1 && !sp {
                    let start = last.0.as_ptr() as usize - base;
                    let end = piece.as_ptr() as usize - base + piece.len();
                    last.0 = &text[start..end];
                    continue;
                }
            }
            merged.push((piece, sp));
        }
        merged
    }

    /// Encode text; when `allow_special` is set, special spellings such as `<|start|>`
    /// become their single ids, otherwise they are ordinary text.
    pub fn encode(&self, text: &str, allow_special: bool) -> Result<Vec<u32>> {
        if !allow_special {
            return self.encode_ordinary(text);
        }
        let mut out = Vec::new();
        for (piece, is_special) in self.split_specials(text) {
            if is_special {
                out.push(self.special_to_id[piece]);
            } else {
                out.extend(self.encode_ordinary(piece)?);
            }
        }
        Ok(out)
    }

    /// Raw bytes of the tokens (specials spelled out); may end inside a UTF-8 sequence.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        match &self.backend {
            Backend::Tiktoken(bpe) => bpe
                .decode_bytes(ids)
                .map_err(|e| anyhow::anyhow!("cannot decode token id {}", e.token)),
            Backend::HuggingFace(t) => {
                let mut out = Vec::with_capacity(ids.len() * 4);
                for &id in ids {
                    if let Some(name) = self.id_to_special.get(&id) {
                        out.extend_from_slice(name.as_bytes());
                        continue;
                    }
                    let tok = t
                        .id_to_token(id)
                        .with_context(|| format!("cannot decode token id {id}"))?;
                    for c in tok.chars() {
                        match self.byte_decoder.get(&c) {
                            Some(b) => out.push(*b),
                            None => {
                                let mut buf = [0u8; 4];
                                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                            }
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    /// Decode to text (specials spelled out); invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let bytes = self.decode_bytes(ids)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// Decode, failing if the bytes are not valid UTF-8.
    pub fn decode_utf8(&self, ids: &[u32]) -> Result<String> {
        String::from_utf8(self.decode_bytes(ids)?).context("tokens do not decode to valid UTF-8")
    }

    /// Id of a special token by its spelling, e.g. `"<|start|>"`.
    pub fn special_id(&self, name: &str) -> Option<u32> {
        self.special_to_id.get(name).copied()
    }

    /// Spelling of a special token id, `None` for ordinary tokens.
    pub fn special_name(&self, id: u32) -> Option<&str> {
        self.id_to_special.get(&id).map(String::as_str)
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.id_to_special.contains_key(&id)
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("backend", &self.backend_name())
            .field("specials", &self.special_to_id.len())
            .finish()
    }
}
