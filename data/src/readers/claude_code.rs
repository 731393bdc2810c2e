//! Claude Code transcripts (`~/.claude/projects/<project>/<session>.jsonl`), read by
//! [`crate::claude::read_jsonl`]. Claimed by the envelope of the first line; any other `.jsonl`
//! nobody claims falls back here, so its problems are reported line by line.

use anyhow::Result;

use super::{Input, Probe, ReadOut, Reader};
use crate::claude;
use crate::diag::Diag;

pub struct ClaudeCode;

impl Reader for ClaudeCode {
    fn name(&self) -> &'static str {
        "claude-code"
    }
    fn family(&self) -> &'static str {
        "claude-code"
    }
    fn detect(&self, probe: &Probe) -> u8 {
        if probe.first_json_object().is_some_and(claude::is_envelope) {
            90
        } else if probe.ext == "jsonl" {
            10
        } else {
            0
        }
    }
    fn read(&self, input: &Input, diag: &mut Diag) -> Result<ReadOut> {
        let (sessions, bad) = claude::read_jsonl(input.path, input.rel, diag)?;
        if sessions.is_empty() && bad == 0 {
            // Taken by its extension, but no line had a session: most likely a dataset whose
            // conversation field has another name.
            diag.warn(
                input.rel,
                None,
                "no Claude Code session in this file (no line has a sessionId); if it is a chat dataset, name its conversation field with --column",
            )?;
        }
        Ok(ReadOut {
            sessions,
            files: 1,
            bad_records: bad,
        })
    }
}
