//! opencode ≥ 1.2 keeps sessions in `opencode.db` (SQLite): recognised by the SQLite header,
//! read by [`crate::opencode::read_db`].

use anyhow::Result;

use super::{Input, Probe, ReadOut, Reader};
use crate::diag::Diag;
use crate::opencode;

pub struct OpencodeDb;

impl Reader for OpencodeDb {
    fn name(&self) -> &'static str {
        "opencode-db"
    }
    fn family(&self) -> &'static str {
        "opencode"
    }
    fn detect(&self, probe: &Probe) -> u8 {
        // https://www.sqlite.org/fileformat.html#magic_header_string
        if probe.head.starts_with(b"SQLite format 3\0") {
            100
        } else {
            0
        }
    }
    fn read(&self, input: &Input, diag: &mut Diag) -> Result<ReadOut> {
        opencode::read_db(input.path, input.rel, diag).map(ReadOut::one_file)
    }
}
