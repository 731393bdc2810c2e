//! `opencode export <sessionID>` JSON (`{info, messages: [{info, parts}]}`), read by
//! [`crate::opencode::read_export`]. Exports are usually pretty-printed, so the first line alone
//! says little: any `.json` file is offered to this reader at a low score (other JSON found while
//! walking, such as configs, reads as no session), and a one-line export is claimed outright.

use anyhow::Result;

use super::{Input, Probe, ReadOut, Reader};
use crate::diag::Diag;
use crate::opencode;

pub struct OpencodeExport;

impl Reader for OpencodeExport {
    fn name(&self) -> &'static str {
        "opencode-export"
    }
    fn family(&self) -> &'static str {
        "opencode"
    }
    fn detect(&self, probe: &Probe) -> u8 {
        if probe.first_json_object().is_some_and(opencode::is_export) {
            90
        } else if probe.ext == "json" && !probe.trimmed_head().starts_with(b"[") {
            20
        } else {
            0
        }
    }
    fn read(&self, input: &Input, diag: &mut Diag) -> Result<ReadOut> {
        opencode::read_export(input.path, input.rel, diag).map(ReadOut::one_file)
    }
}
