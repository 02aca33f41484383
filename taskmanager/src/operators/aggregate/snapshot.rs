//! `aggregate` state through a checkpoint.
//!
//! State `"aggregates"`: one entry per key with state, under the key's key
//! group; the entry key is the key in Arrow's row format, the value its last
//! update time and accumulators. A barrier re-reports only the keys updated
//! since the last one and deletes the entries of keys expired since (state
//! TTL); the first barrier after opening or restoring reports everything.
//! A restore takes the entries of the key groups the subtask owns, at any
//! parallelism; keys already expired are left out.
//!
//! Value format 1: `[1u8][last update: i64 LE, ms]`, then each aggregate's
//! accumulator (`Acc::export`). A value that does not parse, a key that does
//! not decode, or an entry outside the subtask's key groups or under the
//! wrong key group is an error, never a panic.

use super::Aggregate;
use crate::operators::window::accumulators::take;
use crate::operators::window::keys::DirtyKeys;
use crate::operators::window::state::{BatchKeys, NONE};
use crate::operators::window::{corrupt_state, unknown_states};
use arrow::array::{ArrayRef, AsArray};
use arrow::datatypes::Int64Type;
use arrow::row::{RowConverter, Rows};
use eddy_sdk::FailureClass;
use eddy_sdk::ids::KeyGroup;
use eddy_sdk::keygroup::key_group_of_hash;
use eddy_sdk::operator::{OperatorError, RestoredState, StateChanges, StateEntry};
use eddy_sdk::plan::hash::hash_columns;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Checkpoint state name of the keys' aggregates.
pub(super) const AGGREGATES: &str = "aggregates";
const FORMAT: u8 = 1;

/// What an `aggregate` operator must report at its next barrier.
#[derive(Default)]
pub(super) struct AggregateCheckpoint {
    /// Keys updated since the last barrier.
    dirty: DirtyKeys,
    /// Per key: whether the state backend holds its entry (reported since
    /// it last expired).
    stored: Vec<bool>,
    /// Entries of keys expired since the last barrier: (key group, key).
    deleted: Vec<(u16, Vec<u8>)>,
    /// Whether a barrier reported the whole state since opening or restoring.
    reported: bool,
}

impl AggregateCheckpoint {
    /// Key `k` was updated.
    #[inline]
    pub(super) fn mark(&mut self, k: u32) {
        self.dirty.mark(k);
    }

    /// Key `k` expired: whether the backend holds an entry to delete.
    pub(super) fn forget(&mut self, k: u32) -> bool {
        self.stored.get_mut(k as usize).is_some_and(std::mem::take)
    }

    /// The entry `(key group, key)` goes at the next barrier.
    pub(super) fn deleted(&mut self, key_group: u16, key: Vec<u8>) {
        self.deleted.push((key_group, key));
    }

    /// Follows the renumbering of the keys after a compaction (dropped keys
    /// are expired ones, already forgotten).
    pub(super) fn renumber(&mut self, renumbered: &[u32]) {
        let live = renumbered.iter().filter(|&&n| n != NONE).count();
        let mut stored = vec![false; live];
        for (old, &new) in renumbered.iter().enumerate() {
            if new != NONE && self.stored.get(old).copied().unwrap_or(false) {
                stored[new as usize] = true;
            }
        }
        self.stored = stored;
        self.dirty.renumber(renumbered);
    }

    fn take_dirty(&mut self) -> Vec<u32> {
        self.dirty.take()
    }

    fn set_stored(&mut self, k: u32) {
        let i = k as usize;
        if i >= self.stored.len() {
            self.stored.resize(i + 1, false);
        }
        self.stored[i] = true;
    }
}

impl Aggregate {
    /// Bytes of an entry value.
    fn value_len(&self) -> usize {
        9 + self.accs.iter().map(|a| a.encoded_len()).sum::<usize>()
    }

    pub(super) fn snapshot_keys(
        &mut self,
        changes: &mut StateChanges,
    ) -> Result<(), OperatorError> {
        let cp = &mut self.checkpoint;
        let ks: Vec<u32> = if cp.reported {
            for (kg, key) in cp.deleted.drain(..) {
                changes.delete(AGGREGATES, KeyGroup(u32::from(kg)), key);
            }
            let mut dirty = cp.take_dirty();
            // Expired since: their deletes are above (if they were stored).
            dirty.retain(|&k| self.keys.written(k).is_some());
            dirty
        } else {
            changes.clear_all();
            cp.deleted.clear();
            cp.take_dirty();
            cp.stored.clear();
            self.keys.live_keys().map(|(k, _)| k).collect()
        };
        self.checkpoint.reported = true;
        if ks.is_empty() {
            return Ok(());
        }
        let rows = self.keys.rows(&ks, &self.conv).map_err(|e| {
            OperatorError::new(
                FailureClass::Infrastructure,
                format!(
                    "node `{}`: cannot encode the keys for a checkpoint",
                    self.node
                ),
            )
            .with_source(e)
        })?;
        let len = self.value_len();
        for (i, &k) in ks.iter().enumerate() {
            let mut value = Vec::with_capacity(len);
            value.push(FORMAT);
            let written = self.keys.written(k).unwrap_or_default();
            value.extend_from_slice(&written.to_le_bytes());
            for acc in &self.accs {
                acc.export(k as usize, &mut value);
            }
            debug_assert_eq!(value.len(), len);
            changes.put(
                AGGREGATES,
                KeyGroup(u32::from(self.keys.key_group(k))),
                rows.row(i).data().to_vec(),
                value,
            );
            self.checkpoint.set_stored(k);
        }
        Ok(())
    }

    /// Rebuilds keys and accumulators from restored entries.
    pub(super) fn restore_keys(&mut self, mut state: RestoredState) -> Result<(), OperatorError> {
        let entries = state.take(AGGREGATES);
        unknown_states(&self.node, &state)?;
        if entries.is_empty() {
            return Ok(());
        }
        let node = self.node.clone();
        let corrupt = |what: &str| corrupt_state(&node, AGGREGATES, what);
        if let Some(e) = entries
            .iter()
            .find(|e| !self.key_groups.contains(&e.key_group.0))
        {
            return Err(corrupt(&format!(
                "an entry of key group {} was handed to the subtask owning key groups {:?}",
                e.key_group.0, self.key_groups
            )));
        }
        let (rows, cols) = decode_keys(&self.conv, &entries).map_err(|m| corrupt(&m))?;
        let mut hashes = Vec::new();
        hash_columns(&cols, &mut hashes)
            .map_err(|e| corrupt(&format!("cannot hash the keys: {e}")))?;
        let batch_keys = if self.fast {
            BatchKeys::Int64(cols[0].as_primitive::<Int64Type>())
        } else {
            BatchKeys::Rows(&rows)
        };
        let now = self.clock.now_ms();
        let len = self.value_len();
        for (i, e) in entries.iter().enumerate() {
            let kg = key_group_of_hash(hashes[i], self.max_parallelism).0;
            if kg != e.key_group.0 {
                return Err(corrupt(&format!(
                    "a key stored under key group {} hashes to key group {kg}",
                    e.key_group.0
                )));
            }
            let mut value = e.value.as_slice();
            if value.len() != len {
                return Err(corrupt(&format!(
                    "a value of {} bytes, not {len}",
                    value.len()
                )));
            }
            let short = || corrupt("a value ends early");
            let format = take::<1>(&mut value).ok_or_else(short)?[0];
            if format != FORMAT {
                return Err(corrupt(&format!(
                    "unknown value format {format} (this build reads {FORMAT})"
                )));
            }
            let written = i64::from_le_bytes(take(&mut value).ok_or_else(short)?);
            if let Some(ttl) = self.layout.state_ttl_ms
                && written.saturating_add(ttl) <= now
            {
                // Expired: forgotten (the first barrier rewrites the state).
                continue;
            }
            let k = self
                .keys
                .find_or_insert(i, hashes[i], &batch_keys, self.max_parallelism);
            if self.keys.written(k).is_some() {
                return Err(corrupt("a key is stored twice"));
            }
            self.keys.write(k, written);
            for acc in &mut self.accs {
                acc.import(k as usize, &mut value).ok_or_else(short)?;
            }
        }
        // The next sweep looks at every restored key.
        self.next_expiry = i64::MIN;
        Ok(())
    }
}

/// The entries' keys in entry order, as rows and as the key columns; a key
/// that does not decode, or does not encode back to the same bytes, is an
/// error.
fn decode_keys(
    conv: &RowConverter,
    entries: &[StateEntry],
) -> Result<(Rows, Vec<ArrayRef>), String> {
    let parser = conv.parser();
    let mut rows = conv.empty_rows(entries.len(), 0);
    for e in entries {
        rows.push(parser.parse(&e.key));
    }
    // The row decoder trusts its input and may panic on bytes it did not
    // write; a damaged key must fail the restore, not the TaskManager.
    let cols = catch_unwind(AssertUnwindSafe(|| conv.convert_rows(rows.iter())))
        .map_err(|_| "a key is not in the key columns' row format".to_string())?
        .map_err(|e| format!("cannot decode the keys: {e}"))?;
    let again = conv
        .convert_columns(&cols)
        .map_err(|e| format!("cannot encode the keys: {e}"))?;
    if let Some(i) = (0..entries.len()).find(|&i| again.row(i) != rows.row(i)) {
        return Err(format!(
            "key {:?} is not in the key columns' row format",
            entries[i].key
        ));
    }
    Ok((again, cols))
}
