//! The bytes of a frozen weight where they lie: a range of a checkpoint file's memory map
//! (what the loader hands out on the CPU, so a 13 GB checkpoint costs page cache, not heap),
//! or a heap buffer (tests, tensors a loader had to reorder). Cloning shares them.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

#[derive(Clone)]
pub struct Bytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    len: usize,
    mapped: bool,
}

impl Bytes {
    /// A heap buffer.
    pub fn from_vec(v: Vec<u8>) -> Self {
        let len = v.len();
        Self {
            owner: Arc::new(v),
            start: 0,
            len,
            mapped: false,
        }
    }

    /// `range` of a mapped file.
    pub fn mapped(map: Arc<memmap2::Mmap>, range: Range<usize>) -> Self {
        assert!(range.start <= range.end && range.end <= map.len());
        Self {
            owner: map,
            start: range.start,
            len: range.end - range.start,
            mapped: true,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        let all: &[u8] = (*self.owner).as_ref();
        &all[self.start..self.start + self.len]
    }

    /// `range` of these bytes, sharing the owner.
    pub fn slice(&self, range: Range<usize>) -> Self {
        assert!(range.start <= range.end && range.end <= self.len);
        Self {
            owner: self.owner.clone(),
            start: self.start + range.start,
            len: range.end - range.start,
            mapped: self.mapped,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the bytes are read from a file mapping (no heap copy was made).
    pub fn is_mapped(&self) -> bool {
        self.mapped
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.mapped { "mapped" } else { "heap" };
        write!(f, "Bytes({} bytes, {at})", self.len)
    }
}
