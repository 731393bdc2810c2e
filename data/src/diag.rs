//! Problems found in the input: reported with file and line, fatal only with `--strict`.

use anyhow::{bail, Result};

#[derive(Debug, Default)]
pub struct Diag {
    pub strict: bool,
    pub warnings: Vec<String>,
}

impl Diag {
    pub fn new(strict: bool) -> Self {
        Self {
            strict,
            warnings: Vec::new(),
        }
    }

    /// Record a problem at `file[:line]`; with `--strict` it becomes the error.
    pub fn warn(&mut self, file: &str, line: Option<usize>, msg: impl AsRef<str>) -> Result<()> {
        let loc = match line {
            Some(l) => format!("{file}:{l}"),
            None => file.to_string(),
        };
        let w = format!("{loc}: {}", msg.as_ref());
        if self.strict {
            bail!("{w} (--strict)");
        }
        self.warnings.push(w);
        Ok(())
    }
}

/// Parse JSON text, skipping anything before the first `{` (opencode#12130 prints a status
/// line before `opencode export` output).
pub fn parse_json_object(text: &str) -> std::result::Result<serde_json::Value, String> {
    let start = text
        .find('{')
        .ok_or_else(|| "no JSON object found".to_string())?;
    serde_json::from_str(&text[start..]).map_err(|e| {
        // serde's line/column are relative to the sliced text; make the line absolute.
        let skipped_lines = text[..start].matches('\n').count();
        format!(
            "invalid JSON at line {}, column {}: {e}",
            e.line() + skipped_lines,
            e.column()
        )
    })
}

/// Decode bytes as UTF-8; on failure return lossy text and the 1-based line of the first bad byte.
pub fn decode_utf8(bytes: &[u8]) -> (std::borrow::Cow<'_, str>, Option<usize>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (std::borrow::Cow::Borrowed(s), None),
        Err(e) => {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            (String::from_utf8_lossy(bytes), Some(line))
        }
    }
}
