//! The per-subtask manifest: every file a snapshot needs, with its size and
//! checksum. It is written after all those files, so a snapshot whose
//! manifest is missing was never finished, and one whose files do not match
//! it was damaged afterwards.
//!
//! Manifests (and anything else written with [`seal`]) end with a checksum
//! trailer over their own bytes, so a torn or flipped manifest is reported as
//! corrupt rather than misread.

use crate::ids::{CheckpointId, JobId, NodeId, SubtaskIndex};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Range;

/// The manifest format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Which backend wrote a snapshot (their file formats differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Memory,
    Rocksdb,
}

/// The size and checksum of a file's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Integrity {
    pub size: u64,
    /// XXH3-64 of the bytes.
    pub xxh3: u64,
}

impl Integrity {
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            size: bytes.len() as u64,
            xxh3: xxhash_rust::xxh3::xxh3_64(bytes),
        }
    }
}

impl fmt::Display for Integrity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes, xxh3 {:016x}", self.size, self.xxh3)
    }
}

/// One file of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The object-store path, relative to the store's root.
    pub path: String,
    /// The file's name in the backend's local directory (RocksDB restores
    /// each file under this name).
    pub local_name: String,
    #[serde(flatten)]
    pub integrity: Integrity,
    /// Whether the file is in the job's shared area (referenced by several
    /// checkpoints; deleted only when no retained checkpoint needs it).
    pub shared: bool,
}

/// One subtask's snapshot of one keyed operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskManifest {
    pub format: u32,
    pub backend: BackendKind,
    pub job: JobId,
    pub node: NodeId,
    pub subtask: SubtaskIndex,
    /// `None` for a savepoint.
    pub checkpoint: Option<CheckpointId>,
    pub max_parallelism: u32,
    /// The key groups the snapshot holds: `key_group_start..key_group_end`.
    pub key_group_start: u32,
    pub key_group_end: u32,
    pub files: Vec<FileEntry>,
}

impl SubtaskManifest {
    pub fn key_group_range(&self) -> Range<u32> {
        self.key_group_start..self.key_group_end
    }

    /// The bytes of every file the snapshot needs.
    pub fn state_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.integrity.size).sum()
    }
}

const TRAILER_TAG: &[u8] = b"\n#xxh3:";
const TRAILER_LEN: usize = TRAILER_TAG.len() + 16 + 1;

/// `body` followed by a trailer holding the XXH3 of `body`.
pub fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + TRAILER_LEN);
    out.extend_from_slice(body);
    out.extend_from_slice(TRAILER_TAG);
    out.extend_from_slice(format!("{:016x}\n", xxhash_rust::xxh3::xxh3_64(body)).as_bytes());
    out
}

/// Why sealed bytes were rejected: what the trailer promised and what the
/// body hashes to (`expected` is `None` when there is no readable trailer).
#[derive(Debug, PartialEq, Eq)]
pub struct SealMismatch {
    pub expected: Option<u64>,
    pub actual: u64,
}

/// The body of sealed bytes, checked against their trailer.
pub fn unseal(sealed: &[u8]) -> Result<&[u8], SealMismatch> {
    let Some(split) = sealed.len().checked_sub(TRAILER_LEN) else {
        return Err(SealMismatch {
            expected: None,
            actual: xxhash_rust::xxh3::xxh3_64(sealed),
        });
    };
    let (body, trailer) = sealed.split_at(split);
    let actual = xxhash_rust::xxh3::xxh3_64(body);
    let expected = trailer
        .strip_prefix(TRAILER_TAG)
        .and_then(|rest| rest.strip_suffix(b"\n"))
        .and_then(|hex| std::str::from_utf8(hex).ok())
        .and_then(|hex| u64::from_str_radix(hex, 16).ok());
    match expected {
        Some(e) if e == actual => Ok(body),
        expected => Err(SealMismatch { expected, actual }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_round_trip_and_detect_any_flip() {
        let body = br#"{"a":1}"#;
        let sealed = seal(body);
        assert_eq!(unseal(&sealed), Ok(&body[..]));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(unseal(&bad).is_err(), "flip at byte {i} went unnoticed");
        }
        assert!(unseal(&sealed[..sealed.len() - 1]).is_err());
        assert!(unseal(b"").is_err());
    }
}
