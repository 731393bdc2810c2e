//! Parquet files, the Hugging Face hub's storage format for datasets (one conversation a row,
//! a folder of shards is simply walked). Read with the arrow-rs `parquet` crate's row API
//! (https://docs.rs/parquet/latest/parquet/record/index.html): only the conversation column
//! (`--column`, else `messages` / `conversations`) and the `id`, `system` and `tools` columns are
//! decoded; each row becomes a JSON record handed to the record reader that claims it
//! (OpenAI messages, ShareGPT), exactly as a JSON line would be.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use parquet::basic::Type as PhysicalType;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::Type;
use serde_json::Value;

use super::chat::{read_one, RecordKind, RecordSource};
use super::{Input, Probe, ReadOut, Reader};
use crate::diag::Diag;

pub struct ParquetRows;

/// Conversation columns tried when `--column` is not given.
const COLUMNS: &[&str] = &["messages", "conversations"];
/// Other columns a record reader may use.
const EXTRA_COLUMNS: &[&str] = &["id", "system", "tools"];

impl Reader for ParquetRows {
    fn name(&self) -> &'static str {
        "parquet"
    }
    fn family(&self) -> &'static str {
        "chat"
    }
    fn detect(&self, probe: &Probe) -> u8 {
        // https://parquet.apache.org/docs/file-format/: files start (and end) with "PAR1".
        if probe.head.starts_with(b"PAR1") {
            100
        } else {
            0
        }
    }
    fn read(&self, input: &Input, diag: &mut Diag) -> Result<ReadOut> {
        // The parquet crate asserts on some corrupt metadata (found by tests/mutations.rs):
        // a damaged file must be an error naming it, never a crash of the conversion.
        let caught =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_file(input, diag)));
        match caught {
            Ok(res) => res,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                bail!("corrupt Parquet file (the decoder gave up: {msg})")
            }
        }
    }
}

/// Read one Parquet file (see the module docs).
fn read_file(input: &Input, diag: &mut Diag) -> Result<ReadOut> {
    let file = std::fs::File::open(input.path)
        .with_context(|| format!("reading {}", input.path.display()))?;
    let len = file.metadata()?.len();
    if len > diag.max_file_bytes {
        bail!(
            "{} is {len} bytes, over the --max-file-mb limit of {} bytes",
            input.path.display(),
            diag.max_file_bytes
        );
    }
    let reader = SerializedFileReader::new(file).context("not a readable Parquet file")?;
    let root = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema();
    let fields = root.get_fields();
    let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
    let column = match input.column {
            Some(c) if names.contains(&c) => c.to_string(),
            Some(c) => bail!("no column {c:?} (columns: {})", names.join(", ")),
            None => match COLUMNS.iter().find(|c| names.contains(c)) {
                Some(c) => c.to_string(),
                None => bail!(
                    "no conversation column (messages or conversations; name another with --column); columns: {}",
                    names.join(", ")
                ),
            },
        };
    let conv = fields
        .iter()
        .find(|f| f.name() == column)
        .expect("found above");
    if conv.is_primitive() && conv.get_physical_type() != PhysicalType::BYTE_ARRAY {
        bail!(
            "column {column} holds {}, expected a list of messages or a JSON string",
            conv.get_physical_type()
        );
    }
    let projection: Vec<Arc<Type>> = fields
        .iter()
        .filter(|f| f.name() == column || EXTRA_COLUMNS.contains(&f.name()))
        .cloned()
        .collect();
    let projection = Type::group_type_builder(root.name())
        .with_fields(projection)
        .build()?;
    let mut out = ReadOut {
        files: 1,
        ..Default::default()
    };
    let rows = reader
        .get_row_iter(Some(projection))
        .context("reading Parquet rows")?;
    for (i, row) in rows.enumerate() {
        let src = RecordSource {
            rel: input.rel,
            kind: RecordKind::Row,
            number: i + 1,
            column: Some(&column),
        };
        let record = match row {
            Ok(r) => r.to_json_value(),
            Err(e) => {
                // A corrupt page ends the row stream; what came before is kept.
                out.bad_records += 1;
                src.warn(
                    diag,
                    format!("cannot decode: {e}; rest of the file skipped"),
                )?;
                break;
            }
        };
        match record.get(column.as_str()) {
            Some(Value::Array(_)) | Some(Value::String(_)) => {
                read_one(&record, &src, diag, &mut out)?
            }
            Some(Value::Null) | None => {
                out.bad_records += 1;
                src.warn(diag, format!("column {column} is null; row skipped"))?;
            }
            Some(other) => {
                out.bad_records += 1;
                src.warn(
                    diag,
                    format!(
                        "column {column} holds {other}, expected a list of messages; row skipped"
                    ),
                )?;
            }
        }
    }
    Ok(out)
}
