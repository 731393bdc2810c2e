//! osstune-harmony: the o200k_harmony tokenizer and the Harmony chat format of gpt-oss.
//!
//! - [`Tokenizer`]: built-in o200k_harmony vocabulary or a model's `tokenizer.json`.
//! - [`Message`] and [`Renderer`]: messages → token ids, matching openai-harmony token for
//!   token (checked against fixtures written by `scripts/gen_harmony_fixtures.py`).
//! - [`StreamParser`] / [`parse_messages`]: generated ids → messages, channels, recipients.

pub mod message;
pub mod parse;
pub mod render;
pub mod tokenizer;
pub mod typescript;

pub use message::{
    Content, DeveloperContent, Message, ReasoningEffort, Role, SystemContent, ToolDescription,
};
pub use parse::{parse_messages, Event, StreamParser};
pub use render::{
    developer_text, system_text, RecipientPlacement, RenderOptions, Rendered, Renderer,
};
pub use tokenizer::Tokenizer;
