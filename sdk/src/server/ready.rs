//! The ready file: written once a process has bound its ports (port 0 picks a
//! free one), so tests and `eddy local` learn the real addresses without races.

use serde::Serialize;
use std::path::Path;

/// Writes `value` as JSON to `path` atomically (temp file, then rename).
pub fn write<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}
