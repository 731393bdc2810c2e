//! The reader registry: one [`Reader`] per input format. Files are classified by content (each
//! reader scores a [`Probe`] of the file's first bytes; the highest score wins), then read into
//! harness-neutral [`Session`]s.
//!
//! Adding a format = one file in this folder implementing [`Reader`], plus one line in
//! [`READERS`]. Readers of one conversation per record (chat datasets) also implement
//! [`Reader::read_record`], so every container that holds records (JSON lines, JSON arrays,
//! Parquet rows) reads the new schema without further changes.

use std::path::Path;

use anyhow::{bail, Result};
use serde_json::Value;

use crate::diag::Diag;
use crate::session::Session;

mod chat;
mod claude_code;
mod openai_messages;
mod opencode_db;
mod opencode_events;
mod opencode_export;
mod opencode_storage;
mod parquet_rows;
mod sharegpt;

pub use chat::{read_records, RecordSource};

/// Every format, in the order ties are broken (earlier wins).
pub static READERS: &[&dyn Reader] = &[
    &opencode_storage::OpencodeStorage,
    &opencode_export::OpencodeExport,
    &opencode_db::OpencodeDb,
    &opencode_events::OpencodeEvents,
    &claude_code::ClaudeCode,
    &openai_messages::OpenaiMessages,
    &sharegpt::ShareGpt,
    &parquet_rows::ParquetRows,
];

/// What a reader may look at to claim a file or directory: cheap, bounded.
pub struct Probe<'a> {
    pub path: &'a Path,
    pub is_dir: bool,
    /// Lower-case extension without the dot ("" when none).
    pub ext: String,
    /// The first bytes of a file (at most [`PROBE_BYTES`]); empty for a directory.
    pub head: &'a [u8],
    /// `--column`: the record field that holds the conversation.
    pub column: Option<&'a str>,
    /// The parsed first line, computed once for all readers.
    first: std::cell::OnceCell<Option<Value>>,
}

pub const PROBE_BYTES: usize = 64 * 1024;

impl<'a> Probe<'a> {
    pub fn new(path: &'a Path, is_dir: bool, head: &'a [u8], column: Option<&'a str>) -> Self {
        Self {
            path,
            is_dir,
            ext: path
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default(),
            head,
            column,
            first: std::cell::OnceCell::new(),
        }
    }

    /// The first non-blank line of the head.
    pub fn first_line(&self) -> Option<&str> {
        let line = self
            .head
            .split(|&b| b == b'\n')
            .find(|l| !l.iter().all(u8::is_ascii_whitespace))?;
        std::str::from_utf8(line).ok()
    }

    /// The first non-blank line of the head parsed as a JSON object, if it is one.
    pub fn first_json_object(&self) -> Option<&Value> {
        self.first
            .get_or_init(|| {
                serde_json::from_str::<Value>(self.first_line()?)
                    .ok()
                    .filter(Value::is_object)
            })
            .as_ref()
    }

    /// The head without leading whitespace.
    pub fn trimmed_head(&self) -> &[u8] {
        let start = self
            .head
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(self.head.len());
        &self.head[start..]
    }
}

/// One thing to read: a file, or a directory a reader claimed.
pub struct Input<'a> {
    pub path: &'a Path,
    /// Path relative to the input root, `/`-separated: what warnings and samples name.
    pub rel: &'a str,
    pub column: Option<&'a str>,
}

/// A reader's result for one input.
#[derive(Default)]
pub struct ReadOut {
    pub sessions: Vec<Session>,
    /// Files read (a storage tree counts each JSON file).
    pub files: usize,
    /// Lines or records that could not be parsed (each also a warning).
    pub bad_records: usize,
}

impl ReadOut {
    pub fn one_file(sessions: Vec<Session>) -> Self {
        Self {
            sessions,
            files: 1,
            bad_records: 0,
        }
    }
}

pub trait Reader: Sync {
    /// Registry name: `--format NAME`, `formats` in stats.json.
    fn name(&self) -> &'static str;
    /// Broader name `--format` also accepts (all opencode readers answer to `opencode`).
    fn family(&self) -> &'static str;
    /// How strongly this reader claims the input: 0 = not mine; the highest score wins.
    fn detect(&self, probe: &Probe) -> u8;
    /// Read one claimed input. Problems inside it are warnings through `diag`; an `Err` skips
    /// the whole input (with a warning, or fatally with `--strict`).
    fn read(&self, input: &Input, diag: &mut Diag) -> Result<ReadOut>;
    /// Whether this reader takes directories (walking stops there).
    fn reads_directories(&self) -> bool {
        false
    }
    /// For record schemas (one conversation per record): how strongly it claims `record`.
    fn record_score(&self, _record: &Value, _column: Option<&str>) -> u8 {
        0
    }
    /// One record → a session (`Ok(None)`: nothing to train on, already reported).
    fn read_record(
        &self,
        _record: &Value,
        _src: &RecordSource,
        _diag: &mut Diag,
    ) -> Result<Option<Session>> {
        bail!("{} does not read records", self.name())
    }
}

/// Which readers `--format` allows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum InputFormat {
    /// Detect every input by content.
    #[default]
    Auto,
    /// Only readers with this name or family.
    Only(String),
}

impl InputFormat {
    /// `auto`, a reader name or a family name.
    pub fn parse(s: &str) -> Result<Self> {
        if s == "auto" {
            return Ok(Self::Auto);
        }
        if READERS.iter().any(|r| r.name() == s || r.family() == s) {
            return Ok(Self::Only(s.to_string()));
        }
        bail!(
            "unknown input format {s:?}; known: auto, {}",
            names().join(", ")
        )
    }

    pub fn allows(&self, r: &dyn Reader) -> bool {
        match self {
            Self::Auto => true,
            Self::Only(n) => r.name() == n || r.family() == n,
        }
    }

    pub fn is_forced(&self) -> bool {
        matches!(self, Self::Only(_))
    }
}

/// Reader and family names, for help texts and errors.
pub fn names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Vec::new();
    for r in READERS {
        for n in [r.family(), r.name()] {
            if !v.contains(&n) {
                v.push(n);
            }
        }
    }
    v
}

/// The allowed reader that claims the probe most strongly.
pub fn detect(probe: &Probe, format: &InputFormat) -> Option<&'static dyn Reader> {
    let mut best: Option<(&'static dyn Reader, u8)> = None;
    for &r in READERS {
        if !format.allows(r) || r.reads_directories() != probe.is_dir {
            continue;
        }
        let score = r.detect(probe);
        if score > 0 && best.is_none_or(|(_, b)| score > b) {
            best = Some((r, score));
        }
    }
    best.map(|(r, _)| r)
}

/// A file named explicitly under a forced `--format` that no reader recognised: the first
/// allowed file reader takes it (and reports what it cannot parse).
pub fn forced_fallback(format: &InputFormat) -> Option<&'static dyn Reader> {
    if !format.is_forced() {
        return None;
    }
    READERS
        .iter()
        .copied()
        .find(|r| format.allows(*r) && !r.reads_directories())
}

/// The record reader that claims `record` most strongly.
pub fn record_reader(record: &Value, column: Option<&str>) -> Option<&'static dyn Reader> {
    let mut best: Option<(&'static dyn Reader, u8)> = None;
    for &r in READERS {
        let score = r.record_score(record, column);
        if score > 0 && best.is_none_or(|(_, b)| score > b) {
            best = Some((r, score));
        }
    }
    best.map(|(r, _)| r)
}
