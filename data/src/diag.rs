//! Problems found in the input: reported with file and line, fatal only with `--strict`.

use std::path::Path;

use anyhow::{bail, Context, Result};

#[derive(Debug)]
pub struct Diag {
    pub strict: bool,
    pub warnings: Vec<String>,
    /// Largest file any reader may load (`--max-file-mb`); a file that grows past it while being
    /// read is refused too.
    pub max_file_bytes: u64,
}

impl Default for Diag {
    fn default() -> Self {
        Self::new(false)
    }
}

impl Diag {
    pub fn new(strict: bool) -> Self {
        Self {
            strict,
            warnings: Vec::new(),
            max_file_bytes: u64::MAX,
        }
    }

    /// Read a whole input file: regular files only (a FIFO or device named `*.jsonl` would block
    /// or never end), at most `max_file_bytes`. Errors name the path.
    pub fn read_file(&self, path: &Path) -> Result<Vec<u8>> {
        use std::io::Read;
        // Check before opening: opening a FIFO blocks until something writes to it.
        let meta =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file", path.display());
        }
        let f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        if meta.len() > self.max_file_bytes {
            bail!(
                "{} is {} bytes, over the --max-file-mb limit of {} bytes",
                path.display(),
                meta.len(),
                self.max_file_bytes
            );
        }
        let mut buf = Vec::with_capacity(meta.len() as usize);
        f.take(self.max_file_bytes.saturating_add(1))
            .read_to_end(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if buf.len() as u64 > self.max_file_bytes {
            bail!(
                "{} grew past the --max-file-mb limit of {} bytes while being read",
                path.display(),
                self.max_file_bytes
            );
        }
        Ok(buf)
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
