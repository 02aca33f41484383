//! The one key-hashing function, and routing rows to the subtasks that own
//! their key groups.
//!
//! Keyed state is stored by key group (`hash % max_parallelism`), in
//! checkpoints and savepoints, so **these hashes must never change**: a new
//! version that hashed differently would look up every key in the wrong key
//! group after a restore. The golden test at the bottom pins them; if it
//! fails, the change is a state-format break, not a test to update.
//!
//! The encoding:
//! - a key of one `Int64` column: `xxh3_64(value as 8 little-endian bytes)`;
//! - a key of one `Utf8` column: `xxh3_64(utf8 bytes)`;
//! - any other key: `xxh3_64` of the row in Arrow's row format
//!   (`arrow::row::RowConverter`, default sort options), which covers every
//!   type and column count (this depends on Arrow's row encoding: the golden
//!   test catches an Arrow upgrade that changes it);
//! - a null single-column key hashes to [`NULL_HASH`] (the row format encodes
//!   nulls itself).
//!
//! Everything is batch-at-a-time: the fast paths read the values buffers
//! directly, and partitioning is a counting sort into one index buffer
//! followed by Arrow's `take`, without per-row allocation.

use crate::ids::KeyGroup;
use crate::keygroup::{key_group_of_hash, subtask_for_key_group};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::buffer::ScalarBuffer;
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Int64Type};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};
use xxhash_rust::xxh3::xxh3_64;

/// The hash of a null value in a single-column key.
pub const NULL_HASH: u64 = 0x9e37_79b9_7f4a_7c15;

/// The key hash of every row of `batch`, over the columns `key_indices`.
pub fn hash_keys(batch: &RecordBatch, key_indices: &[usize]) -> Result<Vec<u64>, ArrowError> {
    let columns = key_columns(batch, key_indices)?;
    let mut out = Vec::with_capacity(batch.num_rows());
    hash_columns(&columns, &mut out)?;
    Ok(out)
}

/// Like [`hash_keys`] over already selected key columns, appending to `out`
/// (which callers reuse across batches).
pub fn hash_columns(columns: &[ArrayRef], out: &mut Vec<u64>) -> Result<(), ArrowError> {
    out.clear();
    match columns {
        [] => {
            return Err(ArrowError::InvalidArgumentError(
                "a key needs at least one column".into(),
            ));
        }
        [col] if col.data_type() == &DataType::Int64 => {
            let arr = col.as_primitive::<Int64Type>();
            out.extend(arr.values().iter().map(|v| xxh3_64(&v.to_le_bytes())));
            if let Some(nulls) = arr.nulls().filter(|n| n.null_count() > 0) {
                for i in nulls
                    .iter()
                    .enumerate()
                    .filter_map(|(i, valid)| (!valid).then_some(i))
                {
                    out[i] = NULL_HASH;
                }
            }
        }
        [col] if col.data_type() == &DataType::Utf8 => {
            let arr = col.as_string::<i32>();
            let (offsets, values) = (arr.value_offsets(), arr.value_data());
            out.extend(
                offsets
                    .windows(2)
                    .map(|w| xxh3_64(&values[w[0] as usize..w[1] as usize])),
            );
            if let Some(nulls) = arr.nulls().filter(|n| n.null_count() > 0) {
                for i in nulls
                    .iter()
                    .enumerate()
                    .filter_map(|(i, valid)| (!valid).then_some(i))
                {
                    out[i] = NULL_HASH;
                }
            }
        }
        _ => {
            let fields = columns
                .iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect();
            let rows = RowConverter::new(fields)?.convert_columns(columns)?;
            out.extend(rows.iter().map(|row| xxh3_64(row.as_ref())));
        }
    }
    Ok(())
}

/// The key group of every row.
pub fn key_groups(
    batch: &RecordBatch,
    key_indices: &[usize],
    max_parallelism: u32,
) -> Result<Vec<KeyGroup>, ArrowError> {
    check_max_parallelism(max_parallelism)?;
    Ok(hash_keys(batch, key_indices)?
        .into_iter()
        .map(|h| key_group_of_hash(h, max_parallelism))
        .collect())
}

/// Splits `batch` by the subtask that owns each row's key group. Returns the
/// non-empty parts, in subtask order, each with the rows in their input order.
pub fn partition_by_key(
    batch: &RecordBatch,
    key_indices: &[usize],
    max_parallelism: u32,
    parallelism: u32,
) -> Result<Vec<(u32, RecordBatch)>, ArrowError> {
    check_max_parallelism(max_parallelism)?;
    if parallelism == 0 || parallelism > max_parallelism {
        return Err(ArrowError::InvalidArgumentError(format!(
            "parallelism {parallelism} must be in 1..={max_parallelism}"
        )));
    }
    let columns = key_columns(batch, key_indices)?;
    if columns.is_empty() {
        return Err(ArrowError::InvalidArgumentError(
            "a key needs at least one column".into(),
        ));
    }
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    if parallelism == 1 {
        return Ok(vec![(0, batch.clone())]);
    }
    let mut hashes = Vec::with_capacity(batch.num_rows());
    hash_columns(&columns, &mut hashes)?;
    let p = parallelism as usize;
    let targets: Vec<u32> = hashes
        .iter()
        .map(|&h| {
            subtask_for_key_group(
                key_group_of_hash(h, max_parallelism),
                max_parallelism,
                parallelism,
            )
        })
        .collect();
    // Counting sort: one index buffer holding every target's rows contiguously.
    let mut starts = vec![0usize; p + 1];
    for &t in &targets {
        starts[t as usize + 1] += 1;
    }
    if let Some(only) = starts[1..].iter().position(|&n| n == batch.num_rows()) {
        return Ok(vec![(only as u32, batch.clone())]);
    }
    for i in 1..=p {
        starts[i] += starts[i - 1];
    }
    let mut next = starts.clone();
    let mut indices = vec![0u32; batch.num_rows()];
    for (row, &t) in targets.iter().enumerate() {
        let slot = &mut next[t as usize];
        indices[*slot] = row as u32;
        *slot += 1;
    }
    let indices = ScalarBuffer::from(indices);
    let mut out = Vec::new();
    for t in 0..p {
        let (start, end) = (starts[t], starts[t + 1]);
        if start < end {
            let take = UInt32Array::new(indices.slice(start, end - start), None);
            out.push((t as u32, take_record_batch(batch, &take)?));
        }
    }
    Ok(out)
}

fn key_columns(batch: &RecordBatch, key_indices: &[usize]) -> Result<Vec<ArrayRef>, ArrowError> {
    key_indices
        .iter()
        .map(|&i| {
            batch.columns().get(i).cloned().ok_or_else(|| {
                ArrowError::InvalidArgumentError(format!(
                    "key column index {i} is out of range for a batch of {} columns",
                    batch.num_columns()
                ))
            })
        })
        .collect()
}

fn check_max_parallelism(max_parallelism: u32) -> Result<(), ArrowError> {
    if max_parallelism == 0 {
        return Err(ArrowError::InvalidArgumentError(
            "max_parallelism must be at least 1".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "hash_tests.rs"]
mod tests;
