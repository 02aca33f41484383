//! Keys numbered in arrival order, looked up by their routing hash: the key
//! index shared by the session windows and `aggregate` (the tumbling and
//! sliding windows number (key, window) groups instead, in `state`).
//!
//! Each key keeps its hash (to rebuild the index when compacting) and its
//! key group, so state can be split by key group. The owners keep their
//! per-key data in vectors indexed by key number, and decide which keys a
//! [`KeyIndex::compact`] keeps.

use super::state::{BatchKeys, HashHeads, KeyStore, NONE, find_or_insert};
use arrow::array::{Array, ArrayRef, Int64Array};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, Rows};
use eddy_sdk::keygroup::key_group_of_hash;
use std::sync::Arc;

pub(crate) struct KeyIndex {
    heads: HashHeads,
    /// Per key: the previous key with the same hash, or `NONE`.
    next: Vec<u32>,
    /// Per key: its routing hash.
    hashes: Vec<u64>,
    store: KeyStore,
    /// Per key: its key group (`< max_parallelism <= 32768`).
    key_groups: Vec<u16>,
}

impl KeyIndex {
    /// An empty index keeping its keys in the row format of `rows` (the
    /// operator's converter), or as plain values when `None` (the
    /// single-Int64-key fast path).
    pub fn new(rows: Option<&RowConverter>) -> Self {
        KeyIndex {
            heads: HashHeads::default(),
            next: Vec::new(),
            hashes: Vec::new(),
            store: match rows {
                Some(conv) => KeyStore::Rows(conv.empty_rows(0, 0)),
                None => KeyStore::Int64(Vec::new()),
            },
            key_groups: Vec::new(),
        }
    }

    /// Keys numbered.
    pub fn len(&self) -> usize {
        self.next.len()
    }

    /// The number of the key of batch row `r`; a new key is numbered
    /// [`len`](Self::len) (before the call), so the caller extends its
    /// per-key vectors when it sees that number.
    #[inline]
    pub fn find_or_insert(
        &mut self,
        r: usize,
        hash: u64,
        keys: &BatchKeys<'_>,
        max_parallelism: u32,
    ) -> u32 {
        let k = match (keys, &mut self.store) {
            (BatchKeys::Int64(batch), KeyStore::Int64(stored)) => {
                let key = batch.is_valid(r).then(|| batch.value(r));
                let k = find_or_insert(&mut self.heads, &mut self.next, hash, |g| {
                    stored[g as usize] == key
                });
                if k as usize == stored.len() {
                    stored.push(key);
                }
                k
            }
            (BatchKeys::Rows(batch), KeyStore::Rows(stored)) => {
                let key = batch.row(r);
                let k = find_or_insert(&mut self.heads, &mut self.next, hash, |g| {
                    stored.row(g as usize) == key
                });
                if k as usize == stored.num_rows() {
                    stored.push(key);
                }
                k
            }
            _ => unreachable!("an operator uses one key store for all its batches"),
        };
        if k as usize == self.hashes.len() {
            self.hashes.push(hash);
            self.key_groups
                .push(key_group_of_hash(hash, max_parallelism).0 as u16);
        }
        k
    }

    pub fn key_group(&self, k: u32) -> u16 {
        self.key_groups[k as usize]
    }

    /// The key group of every key, in key order.
    pub fn key_groups(&self) -> &[u16] {
        &self.key_groups
    }

    /// Whether keys are in row format.
    pub fn is_rows(&self) -> bool {
        matches!(self.store, KeyStore::Rows(_))
    }

    /// The key columns of keys `ks`, in that order (`rows`: the converter
    /// the index was made with, needed for row-format keys).
    pub fn columns(
        &self,
        ks: &[u32],
        rows: Option<&RowConverter>,
    ) -> Result<Vec<ArrayRef>, ArrowError> {
        match (&self.store, rows) {
            (KeyStore::Int64(stored), _) => Ok(vec![Arc::new(Int64Array::from_iter(
                ks.iter().map(|&k| stored[k as usize]),
            ))]),
            (KeyStore::Rows(stored), Some(conv)) => {
                conv.convert_rows(ks.iter().map(|&k| stored.row(k as usize)))
            }
            (KeyStore::Rows(_), None) => Err(ArrowError::InvalidArgumentError(
                "row-format keys need their converter".into(),
            )),
        }
    }

    /// Keys `ks` in the row format of `conv`, in that order.
    pub fn rows(&self, ks: &[u32], conv: &RowConverter) -> Result<Rows, ArrowError> {
        match &self.store {
            KeyStore::Int64(_) => conv.convert_columns(&self.columns(ks, Some(conv))?),
            KeyStore::Rows(stored) => {
                let mut out = conv.empty_rows(ks.len(), 0);
                for &k in ks {
                    out.push(stored.row(k as usize));
                }
                Ok(out)
            }
        }
    }

    /// Appends key `k` as a checkpoint entry key: `Int64` keys as
    /// `[0|1 u8][i64 BE]` (null or value), row-format keys as their row bytes.
    pub fn key_bytes(&self, k: u32, out: &mut Vec<u8>) {
        match &self.store {
            KeyStore::Int64(stored) => match stored[k as usize] {
                None => out.extend_from_slice(&[0; 9]),
                Some(v) => {
                    out.push(1);
                    out.extend_from_slice(&v.to_be_bytes());
                }
            },
            KeyStore::Rows(stored) => out.extend_from_slice(stored.row(k as usize).data()),
        }
    }

    /// Keeps the keys for which `keep` holds, renumbered in order; returns
    /// each old key's new number (`NONE`: dropped). The caller compacts its
    /// per-key vectors the same way ([`compact_vec`]). `rows`: the converter
    /// the index was made with.
    pub fn compact(
        &mut self,
        keep: impl Fn(usize) -> bool,
        rows: Option<&RowConverter>,
    ) -> Vec<u32> {
        let mut renumbered = vec![NONE; self.len()];
        let kept = (0..self.len()).filter(|&k| keep(k)).count();
        let mut store = match (&self.store, rows) {
            (KeyStore::Rows(_), Some(conv)) => KeyStore::Rows(conv.empty_rows(kept, 0)),
            (KeyStore::Int64(_), _) => KeyStore::Int64(Vec::with_capacity(kept)),
            (KeyStore::Rows(_), None) => {
                unreachable!("an index of row-format keys is compacted with its converter")
            }
        };
        let mut heads = HashHeads::default();
        let mut next = Vec::with_capacity(kept);
        let mut hashes = Vec::with_capacity(kept);
        let mut key_groups = Vec::with_capacity(kept);
        for k in (0..self.len()).filter(|&k| keep(k)) {
            let new = next.len() as u32;
            renumbered[k] = new;
            let hash = self.hashes[k];
            // Keys are distinct, so each goes in front of its hash's chain.
            next.push(heads.insert(hash, new).unwrap_or(NONE));
            hashes.push(hash);
            key_groups.push(self.key_groups[k]);
            match (&self.store, &mut store) {
                (KeyStore::Int64(old), KeyStore::Int64(new_store)) => new_store.push(old[k]),
                (KeyStore::Rows(old), KeyStore::Rows(new_store)) => new_store.push(old.row(k)),
                _ => unreachable!("compaction keeps the key store's form"),
            }
        }
        self.heads = heads;
        self.next = next;
        self.hashes = hashes;
        self.store = store;
        self.key_groups = key_groups;
        renumbered
    }
}

/// Moves the entries of `values` whose key `renumbered` keeps to their new
/// numbers, dropping the others ([`KeyIndex::compact`]'s result).
pub(crate) fn compact_vec<T>(values: &mut Vec<T>, renumbered: &[u32]) {
    let mut k = 0;
    values.retain(|_| {
        let keep = renumbered[k] != NONE;
        k += 1;
        keep
    });
}

/// The keys (or groups) changed since the last barrier, each once, in the
/// order they first changed: what an operator re-reports at the next one.
#[derive(Default)]
pub(crate) struct DirtyKeys {
    keys: Vec<u32>,
    /// Per key number: whether it is in `keys`.
    is_dirty: Vec<bool>,
}

impl DirtyKeys {
    #[inline]
    pub fn mark(&mut self, k: u32) {
        let i = k as usize;
        if i >= self.is_dirty.len() {
            self.is_dirty.resize(i + 1, false);
        }
        if !self.is_dirty[i] {
            self.is_dirty[i] = true;
            self.keys.push(k);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.iter().copied()
    }

    /// The changed keys; the set is empty afterwards.
    pub fn take(&mut self) -> Vec<u32> {
        for &k in &self.keys {
            self.is_dirty[k as usize] = false;
        }
        std::mem::take(&mut self.keys)
    }

    /// Follows a renumbering ([`KeyIndex::compact`]): dropped keys leave
    /// the set.
    pub fn renumber(&mut self, renumbered: &[u32]) {
        let old = std::mem::take(&mut self.keys);
        self.is_dirty.clear();
        for k in old {
            match renumbered.get(k as usize) {
                Some(&new) if new != NONE => self.mark(new),
                _ => {}
            }
        }
    }
}
