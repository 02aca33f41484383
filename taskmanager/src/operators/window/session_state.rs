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
use super::state::{BatchKeys, HashHeads, KeyStore, NONE, find_or_insert};
use arrow::array::Array;
use arrow::row::RowConverter;
use eddy_sdk::keygroup::key_group_of_hash;

/// `Slots::indexed_end` of a slot not in the timer index.
pub const NOT_INDEXED: i64 = i64::MIN;

pub struct KeyTable {
    heads: HashHeads,
    /// Per key: the previous key with the same hash, or `NONE`.
    next: Vec<u32>,
    /// Per key: its routing hash (to rebuild `heads` when compacting).
    hashes: Vec<u64>,
    store: KeyStore,
    /// Per key: its key group (`< max_parallelism <= 32768`).
    key_groups: Vec<u16>,
    /// Per key: the slots of its sessions (open, or fired and kept), sorted
    /// by start, pairwise more than the gap apart (closer ones have merged).
    pub open: Vec<Vec<u32>>,
    /// Keys with at least one session.
    live: usize,
}

impl KeyTable {
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
            open: Vec::new(),
            live: 0,
        }
    }

    /// Keys held, live or not.
    pub fn num_keys(&self) -> usize {
        self.next.len()
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
            _ => unreachable!("a window operator uses one key store for all its batches"),
        };
        if k as usize == self.open.len() {
            self.hashes.push(hash);
            self.key_groups
                .push(key_group_of_hash(hash, max_parallelism).0 as u16);
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
        match (&self.store, rows) {
            (KeyStore::Int64(stored), _) => Ok(vec![std::sync::Arc::new(
                arrow::array::Int64Array::from_iter(ks.iter().map(|&k| stored[k as usize])),
            )]),
            (KeyStore::Rows(stored), Some(conv)) => {
                conv.convert_rows(ks.iter().map(|&k| stored.row(k as usize)))
            }
            (KeyStore::Rows(_), None) => Err(arrow::error::ArrowError::InvalidArgumentError(
                "row-format keys need their converter".into(),
            )),
        }
    }

    /// The key group of every key, in key order.
    pub fn key_groups(&self) -> &[u16] {
        &self.key_groups
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

    /// Whether keys are in row format.
    pub fn is_rows(&self) -> bool {
        matches!(self.store, KeyStore::Rows(_))
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
        let mut renumbered = vec![NONE; self.open.len()];
        let mut store = match (&self.store, rows) {
            (KeyStore::Rows(_), Some(conv)) => KeyStore::Rows(conv.empty_rows(self.live, 0)),
            _ => KeyStore::Int64(Vec::with_capacity(self.live)),
        };
        let mut heads = HashHeads::default();
        let mut next = Vec::with_capacity(self.live);
        let mut hashes = Vec::with_capacity(self.live);
        let mut key_groups = Vec::with_capacity(self.live);
        let mut open = Vec::with_capacity(self.live);
        for (k, sessions) in self.open.iter_mut().enumerate() {
            if sessions.is_empty() {
                continue;
            }
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
            for &s in sessions.iter() {
                slots.key[s as usize] = new;
            }
            open.push(std::mem::take(sessions));
        }
        debug_assert_eq!(open.len(), self.live);
        self.heads = heads;
        self.next = next;
        self.hashes = hashes;
        self.store = store;
        self.key_groups = key_groups;
        self.open = open;
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
