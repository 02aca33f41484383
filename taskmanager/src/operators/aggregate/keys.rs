//! The keys of an `aggregate` operator: numbered in arrival order, looked
//! up by the routing hash (as the window operators do, with their key store
//! and hash chains), each with its key group and the processing time of its
//! last update.
//!
//! A key whose state expired (state TTL) stays numbered but *dead*: its
//! accumulators are empty and a later row revives it from zero. Once dead
//! keys outnumber the live ones, [`KeyTable::compact`] drops them and
//! renumbers the others, so a stream of ever-new keys under a TTL does not
//! grow the table forever.

use crate::operators::window::state::{BatchKeys, HashHeads, KeyStore, NONE, find_or_insert};
use arrow::array::{Array, ArrayRef, Int64Array};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, Rows};
use eddy_sdk::keygroup::key_group_of_hash;
use std::sync::Arc;

/// `written` of a key without state.
const DEAD: i64 = i64::MIN;

pub(super) struct KeyTable {
    heads: HashHeads,
    /// Per key: the previous key with the same hash, or `NONE`.
    next: Vec<u32>,
    /// Per key: its routing hash (to rebuild `heads` when compacting).
    hashes: Vec<u64>,
    store: KeyStore,
    /// Per key: its key group (`< max_parallelism <= 32768`).
    key_groups: Vec<u16>,
    /// Per key: processing time (ms) of its last update, or `DEAD`.
    written: Vec<i64>,
    /// Keys with state.
    live: usize,
}

impl KeyTable {
    /// An empty table keeping its keys in the row format of `rows` (the
    /// operator's converter), or as plain values when `None` (the
    /// single-Int64-key fast path).
    pub fn new(rows: Option<&RowConverter>) -> Self {
        KeyTable {
            heads: HashHeads::default(),
            next: Vec::new(),
            hashes: Vec::new(),
            store: match rows {
                Some(conv) => KeyStore::Rows(conv.empty_rows(0, 0)),
                None => KeyStore::Int64(Vec::new()),
            },
            key_groups: Vec::new(),
            written: Vec::new(),
            live: 0,
        }
    }

    /// Keys numbered, live or dead.
    pub fn len(&self) -> usize {
        self.next.len()
    }

    /// Keys with state.
    pub fn live(&self) -> usize {
        self.live
    }

    /// The key of row `r` of a batch, numbered (dead) if new.
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
            _ => unreachable!("an aggregate operator uses one key store for all its batches"),
        };
        if k as usize == self.written.len() {
            self.hashes.push(hash);
            self.key_groups
                .push(key_group_of_hash(hash, max_parallelism).0 as u16);
            self.written.push(DEAD);
        }
        k
    }

    pub fn key_group(&self, k: u32) -> u16 {
        self.key_groups[k as usize]
    }

    /// When key `k` was last updated, if it has state.
    #[inline]
    pub fn written(&self, k: u32) -> Option<i64> {
        let w = self.written[k as usize];
        (w != DEAD).then_some(w)
    }

    /// Key `k` was updated at `now` (it has state from now on).
    #[inline]
    pub fn write(&mut self, k: u32, now: i64) {
        let w = &mut self.written[k as usize];
        if *w == DEAD {
            self.live += 1;
        }
        // `DEAD` is reserved; a clock this far in the past is clamped.
        *w = now.max(DEAD + 1);
    }

    /// Key `k` lost its state (the caller empties its accumulators).
    pub fn kill(&mut self, k: u32) {
        let w = &mut self.written[k as usize];
        if *w != DEAD {
            *w = DEAD;
            self.live -= 1;
        }
    }

    /// The live keys with their last update times, in key order.
    pub fn live_keys(&self) -> impl Iterator<Item = (u32, i64)> + '_ {
        self.written
            .iter()
            .enumerate()
            .filter(|(_, w)| **w != DEAD)
            .map(|(k, w)| (k as u32, *w))
    }

    /// The key columns of keys `ks`, in that order (`conv`: the operator's
    /// converter, the one the table was made with).
    pub fn columns(&self, ks: &[u32], conv: &RowConverter) -> Result<Vec<ArrayRef>, ArrowError> {
        match &self.store {
            KeyStore::Int64(stored) => Ok(vec![Arc::new(Int64Array::from_iter(
                ks.iter().map(|&k| stored[k as usize]),
            ))]),
            KeyStore::Rows(stored) => conv.convert_rows(ks.iter().map(|&k| stored.row(k as usize))),
        }
    }

    /// Keys `ks` in row format, in that order.
    pub fn rows(&self, ks: &[u32], conv: &RowConverter) -> Result<Rows, ArrowError> {
        match &self.store {
            KeyStore::Int64(_) => conv.convert_columns(&self.columns(ks, conv)?),
            KeyStore::Rows(stored) => {
                let mut out = conv.empty_rows(ks.len(), 0);
                for &k in ks {
                    out.push(stored.row(k as usize));
                }
                Ok(out)
            }
        }
    }

    /// Whether enough keys are dead for [`compact`](Self::compact) to pay off.
    pub fn wants_compaction(&self) -> bool {
        let dead = self.len() - self.live;
        dead >= 1024 && dead > self.live
    }

    /// Drops every dead key and renumbers the live ones in order; returns
    /// each old key's new number (`NONE`: dropped).
    pub fn compact(&mut self, conv: &RowConverter) -> Vec<u32> {
        let mut renumbered = vec![NONE; self.len()];
        let mut store = match &self.store {
            KeyStore::Rows(_) => KeyStore::Rows(conv.empty_rows(self.live, 0)),
            KeyStore::Int64(_) => KeyStore::Int64(Vec::with_capacity(self.live)),
        };
        let mut heads = HashHeads::default();
        let mut next = Vec::with_capacity(self.live);
        let mut hashes = Vec::with_capacity(self.live);
        let mut key_groups = Vec::with_capacity(self.live);
        let mut written = Vec::with_capacity(self.live);
        for (k, &w) in self.written.iter().enumerate() {
            if w == DEAD {
                continue;
            }
            let new = next.len() as u32;
            renumbered[k] = new;
            let hash = self.hashes[k];
            // Keys are distinct, so each goes in front of its hash's chain.
            next.push(heads.insert(hash, new).unwrap_or(NONE));
            hashes.push(hash);
            key_groups.push(self.key_groups[k]);
            written.push(w);
            match (&self.store, &mut store) {
                (KeyStore::Int64(old), KeyStore::Int64(new_store)) => new_store.push(old[k]),
                (KeyStore::Rows(old), KeyStore::Rows(new_store)) => new_store.push(old.row(k)),
                _ => unreachable!("compaction keeps the key store's form"),
            }
        }
        debug_assert_eq!(written.len(), self.live);
        self.heads = heads;
        self.next = next;
        self.hashes = hashes;
        self.store = store;
        self.key_groups = key_groups;
        self.written = written;
        renumbered
    }
}
