//! The state of a session-window operator: its keys and their sessions.
//!
//! [`KeyTable`] numbers keys as they arrive (looked up by the routing hash,
//! as `state::WindowState` does), records each key's key group, so the state
//! can later be split by key group, and lists each key's sessions (open, or
//! fired and kept for allowed lateness: both can absorb a late record),
//! sorted by start. Keys whose sessions have all been dropped are removed by
//! [`KeyTable::compact`] once they outnumber the live ones, so a stream of
//! ever-new keys does not grow the table forever.
//!
//! [`Slots`] holds the sessions themselves, column-wise: bounds, owning key,
//! and one accumulator per aggregate indexed by slot. Freed slots are reused.

use super::accumulators::{Acc, Kind};
use super::keys::{KeyIndex, compact_vec};
use super::state::{BatchKeys, NONE};
use arrow::row::RowConverter;

/// `Slots::indexed_end` of a slot not in the timer index.
pub const NOT_INDEXED: i64 = i64::MIN;

pub struct KeyTable {
    keys: KeyIndex,
    /// Per key: the slots of its sessions (open, or fired and kept), sorted
    /// by start, pairwise more than the gap apart (closer ones have merged).
    pub open: Vec<Vec<u32>>,
    /// Keys with at least one session.
    live: usize,
}

impl KeyTable {
    pub fn new(rows: Option<&RowConverter>) -> Self {
        KeyTable {
            keys: KeyIndex::new(rows),
            open: Vec::new(),
            live: 0,
        }
    }

    /// Keys held, live or not.
    pub fn num_keys(&self) -> usize {
        self.keys.len()
    }

    /// The key of batch row `r`, added if new.
    #[inline]
    pub fn find_or_insert(
        &mut self,
        r: usize,
        hash: u64,
        keys: &BatchKeys<'_>,
        max_parallelism: u32,
    ) -> u32 {
        let k = self.keys.find_or_insert(r, hash, keys, max_parallelism);
        if k as usize == self.open.len() {
            self.open.push(Vec::new());
        }
        k
    }

    /// A key gained its first open session.
    pub fn revived(&mut self) {
        self.live += 1;
    }

    /// A key lost its last open session.
    pub fn retired(&mut self) {
        self.live -= 1;
    }

    /// The key columns of keys `ks`, in that order.
    pub fn columns(
        &self,
        ks: &[u32],
        rows: Option<&RowConverter>,
    ) -> Result<Vec<arrow::array::ArrayRef>, arrow::error::ArrowError> {
        self.keys.columns(ks, rows)
    }

    /// The key group of every key, in key order.
    pub fn key_groups(&self) -> &[u16] {
        self.keys.key_groups()
    }

    /// Appends key `k` as a checkpoint entry key ([`KeyIndex::key_bytes`]).
    pub fn key_bytes(&self, k: u32, out: &mut Vec<u8>) {
        self.keys.key_bytes(k, out);
    }

    /// Whether keys are in row format.
    pub fn is_rows(&self) -> bool {
        self.keys.is_rows()
    }

    /// Whether enough keys are dead for [`compact`](Self::compact) to pay off.
    pub fn wants_compaction(&self) -> bool {
        let dead = self.num_keys() - self.live;
        dead >= 1024 && dead > self.live
    }

    /// Drops every key without sessions and renumbers the others,
    /// updating the key of their sessions in `slots`; returns each old key's
    /// new number (`NONE`: dropped).
    pub fn compact(&mut self, slots: &mut Slots, rows: Option<&RowConverter>) -> Vec<u32> {
        let open = &self.open;
        let renumbered = self.keys.compact(|k| !open[k].is_empty(), rows);
        compact_vec(&mut self.open, &renumbered);
        for (new, sessions) in self.open.iter().enumerate() {
            for &s in sessions {
                slots.key[s as usize] = new as u32;
            }
        }
        debug_assert_eq!(self.open.len(), self.live);
        renumbered
    }
}

/// Sessions, one per slot.
pub struct Slots {
    pub start: Vec<i64>,
    /// Exclusive: the last record's time plus the gap.
    pub end: Vec<i64>,
    pub key: Vec<u32>,
    /// The end under which the slot sits in the operator's timer index, or
    /// [`NOT_INDEXED`].
    pub indexed_end: Vec<i64>,
    /// Within a batch: the slot this one merged into, or `NONE`.
    pub redirect: Vec<u32>,
    /// Whether the session fired and is kept for late records (indexed in
    /// the operator's cleanup index, not its timers).
    pub fired: Vec<bool>,
    free: Vec<u32>,
    pub accs: Vec<Acc>,
}

impl Slots {
    pub fn new(kinds: &[Kind]) -> Self {
        Slots {
            start: Vec::new(),
            end: Vec::new(),
            key: Vec::new(),
            indexed_end: Vec::new(),
            redirect: Vec::new(),
            fired: Vec::new(),
            free: Vec::new(),
            accs: kinds.iter().map(|&k| Acc::new(k)).collect(),
        }
    }

    /// Slots allocated (sessions held plus free slots).
    pub fn num_slots(&self) -> usize {
        self.start.len()
    }

    /// A new session `[start, end)` of key `key`, with empty accumulators.
    pub fn alloc(&mut self, key: u32, start: i64, end: i64) -> u32 {
        match self.free.pop() {
            Some(s) => {
                let i = s as usize;
                self.start[i] = start;
                self.end[i] = end;
                self.key[i] = key;
                s
            }
            None => {
                self.start.push(start);
                self.end.push(end);
                self.key.push(key);
                self.indexed_end.push(NOT_INDEXED);
                self.redirect.push(NONE);
                self.fired.push(false);
                (self.num_slots() - 1) as u32
            }
        }
    }

    /// Frees slot `s` (out of the timer and cleanup indexes already): its accumulators are
    /// emptied for the next session.
    pub fn release(&mut self, s: u32) {
        let i = s as usize;
        debug_assert_eq!(self.indexed_end[i], NOT_INDEXED);
        for acc in &mut self.accs {
            acc.reset(i);
        }
        self.redirect[i] = NONE;
        self.fired[i] = false;
        self.free.push(s);
    }

    /// The slot `s`'s rows now belong to, following merges.
    #[inline]
    pub fn resolve(&self, mut s: u32) -> u32 {
        while self.redirect[s as usize] != NONE {
            s = self.redirect[s as usize];
        }
        s
    }
}
