//! Per-tensor checks of a safetensors file before it is mapped, so that a corrupt file names
//! the tensor that is wrong:
//!
//! - the header: its length within the file, JSON, and for every tensor a known dtype,
//!   `data_offsets` inside the data section and spanning exactly shape × dtype size (the
//!   safetensors crate checks the offsets as one sorted chain and reports the tensor where
//!   the chain breaks, which can be another one);
//! - the values: no NaN / ±inf in float tensors, and no MXFP4 scale byte 0xFF (E8M0 NaN in
//!   the OCP Microscaling spec, <https://www.opencompute.org/documents/ocp-microscaling-formats-mx-v1-0-spec-final-pdf>),
//!   which would otherwise surface layers later as "router produced NaN logits".
//!
//! Format: <https://huggingface.co/docs/safetensors/index> (8-byte little-endian header
//! length, JSON header, data).

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::path::Path;

/// Largest header accepted (the safetensors crate's own limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

/// Bytes per element of a safetensors dtype name.
fn dtype_size(d: &str) -> Option<u64> {
    Some(match d {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// One tensor's entry: (name, dtype, shape, [start, end)) in header order.
#[derive(Debug)]
pub struct Entry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub start: u64,
    pub end: u64,
}

/// Parses and checks a header: `header` is the JSON text, `data_len` the bytes after it.
/// Errors name the tensor (the caller adds the file).
pub fn parse_header(header: &[u8], data_len: u64) -> Result<Vec<Entry>> {
    let j: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).context("the header is not a JSON object")?;
    let mut out = Vec::with_capacity(j.len());
    for (name, t) in j {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t["dtype"]
            .as_str()
            .with_context(|| format!("tensor {name}: no dtype"))?
            .to_string();
        let size = dtype_size(&dtype)
            .with_context(|| format!("tensor {name}: unknown dtype {dtype:?}"))?;
        let shape: Vec<u64> = t["shape"]
            .as_array()
            .with_context(|| format!("tensor {name}: no shape"))?
            .iter()
            .map(|x| x.as_u64())
            .collect::<Option<_>>()
            .with_context(|| format!("tensor {name}: shape is not a list of sizes"))?;
        let offs: Vec<u64> = t["data_offsets"]
            .as_array()
            .filter(|a| a.len() == 2)
            .and_then(|a| a.iter().map(|x| x.as_u64()).collect::<Option<_>>())
            .with_context(|| format!("tensor {name}: data_offsets is not [start, end]"))?;
        let (start, end) = (offs[0], offs[1]);
        let want = shape
            .iter()
            .try_fold(size, |acc, &d| acc.checked_mul(d))
            .with_context(|| format!("tensor {name}: shape {shape:?} overflows"))?;
        if start > end || end > data_len {
            bail!(
                "tensor {name}: data_offsets [{start}, {end}] lie outside the data section \
                 ({data_len} bytes)"
            );
        }
        if end - start != want {
            bail!(
                "tensor {name}: data_offsets [{start}, {end}] hold {} bytes, but {dtype} \
                 {shape:?} needs {want}",
                end - start
            );
        }
        out.push(Entry {
            name,
            dtype,
            shape,
            start,
            end,
        });
    }
    Ok(out)
}

/// Index of the first non-finite value of a float tensor's bytes (little-endian). Blocks of
/// 4 KiB are first tested with a branch-free OR (which vectorizes); only a block that holds
/// one is searched element by element.
fn first_non_finite(dtype: &str, b: &[u8]) -> Option<usize> {
    const BLOCK: usize = 4096;
    let suspect = |c: &[u8]| match dtype {
        "F32" => c.chunks_exact(4).fold(false, |acc, c| {
            acc | (u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7f80_0000 == 0x7f80_0000)
        }),
        "BF16" => c.chunks_exact(2).fold(false, |acc, c| {
            acc | (u16::from_le_bytes([c[0], c[1]]) & 0x7f80 == 0x7f80)
        }),
        "F16" => c.chunks_exact(2).fold(false, |acc, c| {
            acc | (u16::from_le_bytes([c[0], c[1]]) & 0x7c00 == 0x7c00)
        }),
        _ => false,
    };
    let size = match dtype {
        "F32" => 4,
        "BF16" | "F16" => 2,
        _ => return None,
    };
    let k = b.chunks(BLOCK).position(suspect)?;
    let at = first_non_finite_scalar(dtype, &b[k * BLOCK..])?;
    Some(k * BLOCK / size + at)
}

fn first_non_finite_scalar(dtype: &str, b: &[u8]) -> Option<usize> {
    match dtype {
        "F32" => b.chunks_exact(4).position(|c| {
            u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7f80_0000 == 0x7f80_0000
        }),
        "BF16" => b
            .chunks_exact(2)
            .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7f80 == 0x7f80),
        "F16" => b
            .chunks_exact(2)
            .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7c00 == 0x7c00),
        _ => None,
    }
}

/// `path`'s checked header entries, reading the header only (sizing a checkpoint, as
/// `train --plan` does, must not read gigabytes of values). Errors name the file and tensor.
pub fn read_header(path: &Path) -> Result<Vec<Entry>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("reading the size of {}", path.display()))?
        .len();
    let n = header_len(path, len, |b| f.read_exact(b).map_err(Into::into))?;
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .with_context(|| format!("{}: truncated safetensors header", path.display()))?;
    parse_header(&header, len - 8 - n)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))
}

/// The header length of a `len`-byte safetensors file whose first 8 bytes `read` fills,
/// checked against the file and `MAX_HEADER`.
fn header_len(path: &Path, len: u64, read: impl FnOnce(&mut [u8; 8]) -> Result<()>) -> Result<u64> {
    let mut first = [0u8; 8];
    if len < 8 || read(&mut first).is_err() {
        bail!(
            "{} is not a valid safetensors file (shorter than the 8-byte header length)",
            path.display()
        );
    }
    let n = u64::from_le_bytes(first);
    if n > MAX_HEADER || n > len - 8 {
        bail!(
            "{} is not a valid safetensors file (header length {n} for a {len}-byte file)",
            path.display()
        );
    }
    Ok(n)
}

/// Checks `path`'s header and values (see the module docs). Errors name the file and tensor.
pub fn check_file(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: read-only map, as the loader's own (nobody truncates a model being loaded).
    let map =
        unsafe { memmap2::Mmap::map(&f) }.with_context(|| format!("mapping {}", path.display()))?;
    check_mapped(path, &map)
}

/// [`check_file`] on a file already mapped (`map`). The value scan runs over the tensors in
/// parallel and in vector-friendly blocks: on a 13 GB checkpoint it reads the float tensors
/// and the MXFP4 scales (not the blocks, which cannot hold a NaN), once, at memory speed.
pub fn check_mapped(path: &Path, map: &[u8]) -> Result<()> {
    let n = header_len(path, map.len() as u64, |b| {
        b.copy_from_slice(&map[..8]);
        Ok(())
    })?;
    let data = &map[8 + n as usize..];
    let entries = parse_header(&map[8..8 + n as usize], data.len() as u64)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let bad = entries.par_iter().find_map_first(|e| {
        let bytes = &data[e.start as usize..e.end as usize];
        if let Some(i) = first_non_finite(&e.dtype, bytes) {
            return Some(format!(
                "{}: tensor {} holds a non-finite value (NaN or inf) at element {i}",
                path.display(),
                e.name
            ));
        }
        if e.dtype == "U8" && e.name.ends_with("_scales") {
            if let Some(i) = bytes.iter().position(|&s| s == 0xFF) {
                return Some(format!(
                    "{}: tensor {} holds the MXFP4 scale 0xFF (NaN) at element {i}",
                    path.display(),
                    e.name
                ));
            }
        }
        None
    });
    match bad {
        Some(msg) => bail!("{msg}"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_errors_name_the_tensor() {
        let h = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                     "b":{"dtype":"F32","shape":[2],"data_offsets":[8,99]}}"#;
        let e = format!("{:#}", parse_header(h, 16).err().unwrap());
        assert!(e.contains("tensor b") && e.contains("outside"), "{e}");
        let h = br#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        let e = format!("{:#}", parse_header(h, 8).err().unwrap());
        assert!(e.contains("tensor a") && e.contains("needs 12"), "{e}");
        let h = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        assert_eq!(parse_header(h, 8).unwrap().len(), 1);
    }

    /// `read_header` reads the entries without the data, and refuses short files and header
    /// lengths past the end, naming the file; the data's values are not its business.
    #[test]
    fn read_header_reads_only_the_header() {
        let dir = std::env::temp_dir().join(format!("osstune-read-header-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let h = br#"{"__metadata__":{"format":"pt"},"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]}}"#;
        let mut file = (h.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(h);
        file.extend_from_slice(&[0xff; 12]); // NaN bf16 values: not looked at
        let good = dir.join("good.safetensors");
        std::fs::write(&good, &file).unwrap();
        let e = read_header(&good).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].name.as_str(), e[0].dtype.as_str()), ("w", "BF16"));
        assert_eq!(
            (e[0].shape.clone(), e[0].start, e[0].end),
            (vec![2, 3], 0, 12)
        );
        let short = dir.join("short.safetensors");
        std::fs::write(&short, [1u8, 2, 3]).unwrap();
        let msg = format!("{:#}", read_header(&short).unwrap_err());
        assert!(
            msg.contains("short.safetensors") && msg.contains("8-byte"),
            "{msg}"
        );
        let long = dir.join("long.safetensors");
        std::fs::write(&long, [200u8, 0, 0, 0, 0, 0, 0, 0, b'{', b'}']).unwrap();
        let msg = format!("{:#}", read_header(&long).unwrap_err());
        assert!(
            msg.contains("long.safetensors") && msg.contains("header length 200"),
            "{msg}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn non_finite_values_are_found() {
        let f: Vec<u8> = [1.0f32, f32::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(first_non_finite("F32", &f), Some(1));
        let bf = [0x80u8, 0x3f, 0x80, 0x7f]; // 1.0, +inf in bf16
        assert_eq!(first_non_finite("BF16", &bf), Some(1));
        assert_eq!(first_non_finite("U8", &[0xff]), None);
    }
}
