//! The state of one window (one `window_end`): its keys, numbered as groups
//! in arrival order, and the accumulators of every aggregate per group.
//!
//! Keys are looked up by the hash `eddy_sdk::plan::hash` already computed for
//! the row (the one that routed it here), so no key is hashed twice: a map
//! from hash to the first group with that hash, and a `next` chain through
//! groups whose different keys share a hash. Each group also records its key
//! group, so the state can later be split by key group (rescaling, savepoints).
//!
//! Two key stores: one `Int64` key column is kept as plain values (the common
//! case and the fast one); any other key is kept in Arrow's row format.

use super::accumulators::{Acc, Kind, Prepared};
use crate::operators::bad_data;
use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::{Int64Type, SchemaRef};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, Rows};
use eddy_sdk::ids::NodeId;
use eddy_sdk::keygroup::key_group_of_hash;
use eddy_sdk::operator::OperatorError;
use eddy_sdk::plan::hash::hash_columns;
use eddy_sdk::plan::schema::{AggregateLayout, WindowLayout};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// End of a `next` chain.
pub(crate) const NONE: u32 = u32::MAX;

/// The keys of one batch, in the form of the window's key store.
pub enum BatchKeys<'a> {
    Int64(&'a Int64Array),
    Rows(&'a Rows),
}

/// One batch's key hashes, keys and prepared aggregate inputs, computed once
/// for all of its rows (shared by the window operators and `aggregate`).
pub(crate) struct KeyedBatch {
    /// The key columns; a single Int64 key is read from here directly.
    key_cols: Vec<ArrayRef>,
    /// Row-format keys, when the window keeps its keys in row format.
    rows: Option<Rows>,
    pub inputs: Vec<Prepared>,
}

impl KeyedBatch {
    /// Hashes the batch's keys into `hashes` (the same hash that routed the
    /// rows here), encodes them for `rows` when given, and prepares every
    /// aggregate's input column.
    pub(super) fn new(
        node: &NodeId,
        layout: &WindowLayout,
        rows: Option<&RowConverter>,
        kinds: &[Kind],
        batch: &RecordBatch,
        hashes: &mut Vec<u64>,
    ) -> Result<Self, OperatorError> {
        let (keys, aggregates) = (&layout.key_indices, &layout.aggregates);
        Self::from_columns(node, keys, aggregates, rows, kinds, batch, hashes)
    }

    /// [`KeyedBatch::new`] for any keyed aggregation: the key columns and
    /// the aggregates' layouts given apart.
    pub(crate) fn from_columns(
        node: &NodeId,
        key_indices: &[usize],
        aggregates: &[AggregateLayout],
        rows: Option<&RowConverter>,
        kinds: &[Kind],
        batch: &RecordBatch,
        hashes: &mut Vec<u64>,
    ) -> Result<Self, OperatorError> {
        let key_cols: Vec<ArrayRef> = key_indices
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        hash_columns(&key_cols, hashes).map_err(|e| bad_data(node, "cannot hash the keys", e))?;
        let rows = rows
            .map(|conv| conv.convert_columns(&key_cols))
            .transpose()
            .map_err(|e| bad_data(node, "cannot encode the keys", e))?;
        let inputs = aggregates
            .iter()
            .zip(kinds)
            .map(|(a, k)| k.prepare(a.input.as_ref().map(|(i, _)| batch.column(*i))))
            .collect::<Result<Vec<Prepared>, _>>()
            .map_err(|e| bad_data(node, "cannot read an aggregate's input", e))?;
        Ok(KeyedBatch {
            key_cols,
            rows,
            inputs,
        })
    }

    pub(crate) fn keys(&self) -> BatchKeys<'_> {
        match &self.rows {
            Some(rows) => BatchKeys::Rows(rows),
            None => BatchKeys::Int64(self.key_cols[0].as_primitive::<Int64Type>()),
        }
    }
}

pub(crate) enum KeyStore {
    Int64(Vec<Option<i64>>),
    Rows(Rows),
}

pub struct WindowState {
    /// Key hash → the newest group with that hash.
    heads: HashMap<u64, u32, BuildHasherDefault<PrehashedHasher>>,
    /// Per group: the previous group with the same hash, or `NONE`.
    next: Vec<u32>,
    keys: KeyStore,
    /// Per group: its key group (`< max_parallelism <= 32768`).
    key_groups: Vec<u16>,
    accs: Vec<Acc>,
    /// Key groups updated since the last snapshot, as a bitset.
    dirty: Vec<u64>,
}

impl WindowState {
    /// An empty window; `rows` is `Some` (from the operator's one converter)
    /// when keys are stored in the row format.
    pub fn new(rows: Option<&RowConverter>, kinds: &[Kind]) -> Self {
        let keys = match rows {
            Some(conv) => KeyStore::Rows(conv.empty_rows(0, 0)),
            None => KeyStore::Int64(Vec::new()),
        };
        WindowState {
            heads: HashMap::default(),
            next: Vec::new(),
            keys,
            key_groups: Vec::new(),
            accs: kinds.iter().map(|&k| Acc::new(k)).collect(),
            dirty: Vec::new(),
        }
    }

    pub fn num_groups(&self) -> usize {
        self.next.len()
    }

    /// Folds the batch rows `rows` into this window: finds or creates each
    /// row's group (written to `groups`, reused), then updates every aggregate.
    pub fn update(
        &mut self,
        rows: &[u32],
        hashes: &[u64],
        keys: &BatchKeys<'_>,
        inputs: &[Prepared],
        max_parallelism: u32,
        groups: &mut Vec<u32>,
    ) {
        groups.clear();
        groups.reserve(rows.len());
        match (keys, &mut self.keys) {
            (BatchKeys::Int64(batch), KeyStore::Int64(stored)) => {
                let has_nulls = batch.null_count() > 0;
                for &r in rows {
                    let r = r as usize;
                    let key = if has_nulls && batch.is_null(r) {
                        None
                    } else {
                        Some(batch.value(r))
                    };
                    let g = find_or_insert(&mut self.heads, &mut self.next, hashes[r], |g| {
                        stored[g as usize] == key
                    });
                    if g as usize == stored.len() {
                        stored.push(key);
                        self.key_groups
                            .push(key_group_of_hash(hashes[r], max_parallelism).0 as u16);
                    }
                    groups.push(g);
                }
            }
            (BatchKeys::Rows(batch), KeyStore::Rows(stored)) => {
                for &r in rows {
                    let r = r as usize;
                    let key = batch.row(r);
                    let g = find_or_insert(&mut self.heads, &mut self.next, hashes[r], |g| {
                        stored.row(g as usize) == key
                    });
                    if g as usize == stored.num_rows() {
                        stored.push(key);
                        self.key_groups
                            .push(key_group_of_hash(hashes[r], max_parallelism).0 as u16);
                    }
                    groups.push(g);
                }
            }
            _ => {
                unreachable!("a window operator uses one key store for all its windows and batches")
            }
        }
        for &g in groups.iter() {
            set_dirty(&mut self.dirty, self.key_groups[g as usize]);
        }
        let num_groups = self.num_groups();
        for (acc, input) in self.accs.iter_mut().zip(inputs) {
            acc.update(input, rows, groups, num_groups);
        }
    }

    /// The window's output rows: keys, bounds, aggregates, in `schema`.
    pub fn finish(
        self,
        start: i64,
        end: i64,
        rows: Option<&RowConverter>,
        aggregates: &[AggregateLayout],
        schema: &SchemaRef,
    ) -> Result<RecordBatch, ArrowError> {
        let n = self.num_groups();
        let mut columns: Vec<ArrayRef> = match (self.keys, rows) {
            (KeyStore::Int64(keys), _) => vec![Arc::new(Int64Array::from(keys))],
            (KeyStore::Rows(keys), Some(conv)) => conv.convert_rows(keys.iter())?,
            (KeyStore::Rows(_), None) => {
                return Err(ArrowError::InvalidArgumentError(
                    "row-format keys need their converter".into(),
                ));
            }
        };
        columns.push(Arc::new(TimestampMillisecondArray::from_value(start, n)));
        columns.push(Arc::new(TimestampMillisecondArray::from_value(end, n)));
        for (acc, layout) in self.accs.into_iter().zip(aggregates) {
            columns.push(acc.finish(n, &layout.output_type)?);
        }
        RecordBatch::try_new(Arc::clone(schema), columns)
    }
}

impl WindowState {
    /// The output rows of groups `groups` (a window kept for late records
    /// emits its groups without giving up its state): keys, bounds,
    /// aggregates, in `schema`.
    pub fn output(
        &self,
        groups: &[u32],
        (start, end): (i64, i64),
        rows: Option<&RowConverter>,
        aggregates: &[AggregateLayout],
        schema: &SchemaRef,
    ) -> Result<RecordBatch, ArrowError> {
        let n = groups.len();
        let mut columns: Vec<ArrayRef> = match (&self.keys, rows) {
            (KeyStore::Int64(keys), _) => vec![Arc::new(Int64Array::from_iter(
                groups.iter().map(|&g| keys[g as usize]),
            ))],
            (KeyStore::Rows(keys), Some(conv)) => {
                conv.convert_rows(groups.iter().map(|&g| keys.row(g as usize)))?
            }
            (KeyStore::Rows(_), None) => {
                return Err(ArrowError::InvalidArgumentError(
                    "row-format keys need their converter".into(),
                ));
            }
        };
        columns.push(Arc::new(TimestampMillisecondArray::from_value(start, n)));
        columns.push(Arc::new(TimestampMillisecondArray::from_value(end, n)));
        for (acc, layout) in self.accs.iter().zip(aggregates) {
            columns.push(acc.gather(groups, &layout.output_type)?);
        }
        RecordBatch::try_new(Arc::clone(schema), columns)
    }

    /// Every group, in group order.
    pub fn all_groups(&self) -> Vec<u32> {
        (0..self.num_groups() as u32).collect()
    }
}

/// Marks key group `kg` in the bitset `dirty`.
#[inline]
pub(super) fn set_dirty(dirty: &mut Vec<u64>, kg: u16) {
    let kg = usize::from(kg);
    if dirty.len() <= kg >> 6 {
        dirty.resize((kg >> 6) + 1, 0);
    }
    dirty[kg >> 6] |= 1 << (kg & 63);
}

/// The group of the key with `hash` for which `is_key` holds, or a new group
/// numbered `next.len()` (the caller stores its key).
#[inline]
pub(crate) fn find_or_insert(
    heads: &mut HashMap<u64, u32, BuildHasherDefault<PrehashedHasher>>,
    next: &mut Vec<u32>,
    hash: u64,
    is_key: impl Fn(u32) -> bool,
) -> u32 {
    let new = next.len() as u32;
    match heads.entry(hash) {
        Entry::Occupied(mut e) => {
            let mut g = *e.get();
            while g != NONE {
                if is_key(g) {
                    return g;
                }
                g = next[g as usize];
            }
            // A different key with the same 64-bit hash: chain it in front.
            next.push(*e.get());
            e.insert(new);
            new
        }
        Entry::Vacant(e) => {
            e.insert(new);
            next.push(NONE);
            new
        }
    }
}

/// Key hash → group, keyed by the xxh3 hash itself.
pub(crate) type HashHeads = HashMap<u64, u32, BuildHasherDefault<PrehashedHasher>>;

/// The keys of the `heads` map are already xxh3 hashes: use them as they are.
#[derive(Default)]
pub(crate) struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed (through `write_u64`); this fold keeps
        // the hasher correct for anything else.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[path = "state_snapshot.rs"]
mod snapshot;
