//! Errors that callers act on by type rather than by message text.

use std::fmt;

/// A non-finite value (NaN or ±inf) where the computation cannot go on: the trainer reports it
/// as divergence, `generate` names where it appeared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonFinite {
    /// What held it, e.g. "router produced NaN logits (token 3)".
    pub what: String,
}

impl fmt::Display for NonFinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for NonFinite {}

impl NonFinite {
    /// Whether `e` or anything it was caused by is a [`NonFinite`].
    pub fn in_chain(e: &anyhow::Error) -> bool {
        e.chain().any(|c| c.is::<NonFinite>())
    }
}
