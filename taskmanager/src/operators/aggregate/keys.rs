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

use crate::operators::window::keys::{KeyIndex, compact_vec};
use crate::operators::window::state::BatchKeys;
use arrow::array::ArrayRef;
use arrow::error::ArrowError;
use arrow::row::{RowConverter, Rows};

/// `written` of a key without state.
const DEAD: i64 = i64::MIN;

pub(super) struct KeyTable {
    keys: KeyIndex,
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
            keys: KeyIndex::new(rows),
            written: Vec::new(),
            live: 0,
        }
    }

    /// Keys numbered, live or dead.
    pub fn len(&self) -> usize {
        self.keys.len()
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
        let k = self.keys.find_or_insert(r, hash, keys, max_parallelism);
        if k as usize == self.written.len() {
            self.written.push(DEAD);
        }
        k
    }

    pub fn key_group(&self, k: u32) -> u16 {
        self.keys.key_group(k)
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
        self.keys.columns(ks, Some(conv))
    }

    /// Keys `ks` in row format, in that order.
    pub fn rows(&self, ks: &[u32], conv: &RowConverter) -> Result<Rows, ArrowError> {
        self.keys.rows(ks, conv)
    }

    /// Whether enough keys are dead for [`compact`](Self::compact) to pay off.
    pub fn wants_compaction(&self) -> bool {
        let dead = self.len() - self.live;
        dead >= 1024 && dead > self.live
    }

    /// Drops every dead key and renumbers the live ones in order; returns
    /// each old key's new number (`NONE`: dropped).
    pub fn compact(&mut self, conv: &RowConverter) -> Vec<u32> {
        let written = &self.written;
        let rows = self.keys.is_rows().then_some(conv);
        let renumbered = self.keys.compact(|k| written[k] != DEAD, rows);
        compact_vec(&mut self.written, &renumbered);
        debug_assert_eq!(self.written.len(), self.live);
        renumbered
    }
}
