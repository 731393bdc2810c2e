//! opencode storage trees (gen 1 `storage/session/{info,message,part}` and gen 2
//! `storage/{session,message,part}`): a directory reader, see [`crate::opencode::read_storage`].

use anyhow::Result;

use super::{Input, Probe, ReadOut, Reader};
use crate::diag::Diag;
use crate::opencode;

pub struct OpencodeStorage;

impl Reader for OpencodeStorage {
    fn name(&self) -> &'static str {
        "opencode-storage"
    }
    fn family(&self) -> &'static str {
        "opencode"
    }
    fn reads_directories(&self) -> bool {
        true
    }
    fn detect(&self, probe: &Probe) -> u8 {
        if probe.is_dir && opencode::is_storage_dir(probe.path) {
            100
        } else {
            0
        }
    }
    fn read(&self, input: &Input, diag: &mut Diag) -> Result<ReadOut> {
        let (sessions, files) = opencode::read_storage(input.path, input.rel, diag)?;
        Ok(ReadOut {
            sessions,
            files,
            bad_records: 0,
        })
    }
}
