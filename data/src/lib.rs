//! osstune-data: coding-agent session logs → Harmony training samples.
//!
//! The reader registry ([`readers`]: opencode storage trees, SQLite, exports and event streams;
//! Claude Code; OpenAI-messages, ShareGPT and Parquet datasets) turns each input format into the
//! harness-neutral [`session::Session`]; [`sample`] renders one genuine user turn as one sample
//! with its loss mask; [`convert`] walks inputs ([`walk`]), deduplicates, splits ([`split`]) and
//! writes `train.jsonl` / `valid.jsonl` / `stats.json` (schema in docs/data.md).

pub mod claude;
pub mod convert;
pub mod diag;
pub mod inspect;
pub mod opencode;
pub mod readers;
pub mod sample;
pub mod session;
pub mod split;
pub mod synth;
pub mod tools;
pub mod walk;

pub use convert::{convert, ConvertOptions, Stats};
pub use sample::Sample;
pub use split::SplitBy;
pub use walk::InputFormat;
