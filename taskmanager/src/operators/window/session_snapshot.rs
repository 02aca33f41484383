//! Session-window state through a checkpoint.
//!
//! State `"sessions"`: one entry per key with sessions (open, or fired and
//! kept for allowed lateness), under that key's key group; the entry key is
//! the key ([`KeyTable::key_bytes`]), the value its sessions. A barrier
//! re-reports only the keys whose sessions changed (a record arrived, a
//! session fired or was dropped) and deletes the entries of keys left
//! without sessions; the first barrier after opening or restoring reports
//! everything. State `"watermark"` holds the operator's
//! watermark under the subtask's own key group, as for the other windows.
//!
//! Value format 1: `[1u8][n: u32 LE]`, then per session `[start: i64 LE]
//! [end: i64 LE]` and each aggregate's accumulator (`Acc::export`). Format 2,
//! written when at least one of the key's sessions has fired (kept for
//! lateness), adds `[fired: u8]` after each session's end; format 1 means
//! none has. Which sessions fired is state, not derived from the watermark:
//! after a change of parallelism a subtask may restore no watermark. A value
//! that does not parse is an error, never a panic.

use super::SessionWindow;
use crate::operators::TaskContext;
use crate::operators::window::accumulators::take;
use crate::operators::window::keys::DirtyKeys;
use crate::operators::window::session_state::{KeyTable, NOT_INDEXED};
use crate::operators::window::state::{BatchKeys, NONE};
use crate::operators::window::{WATERMARK, corrupt_state, restored_watermark, unknown_states};
use arrow::array::{ArrayRef, Int64Array};
use arrow::row::RowConverter;
use eddy_sdk::ids::KeyGroup;
use eddy_sdk::operator::{OperatorError, RestoredState, StateChanges, StateEntry};
use eddy_sdk::operator_state::own_key_group;
use eddy_sdk::plan::hash::hash_columns;
use std::sync::Arc;

/// Checkpoint state name of the session windows' sessions.
pub(in crate::operators::window) const SESSIONS: &str = "sessions";
/// Value formats: without and with a fired flag per session.
const FORMAT: u8 = 1;
const FORMAT_FIRED: u8 = 2;

/// What a session-window operator must report at its next barrier.
pub(super) struct SessionCheckpoint {
    /// The subtask's own key group, for its watermark entry.
    own: KeyGroup,
    /// Keys whose sessions changed since the last barrier.
    dirty: DirtyKeys,
    /// Changed keys dropped since (no sessions left) that have an entry in
    /// the backend: their entries go.
    dropped: Vec<(u16, Vec<u8>)>,
    /// Per key number: whether a barrier wrote the key's entry (a key whose
    /// sessions all came and went between two barriers has none to delete).
    written: Vec<bool>,
    /// The watermark reported last (`None`: report everything next time).
    reported: Option<i64>,
}

impl SessionCheckpoint {
    pub(super) fn new(ctx: &TaskContext) -> Self {
        SessionCheckpoint {
            own: own_key_group(&ctx.key_groups()),
            dirty: DirtyKeys::default(),
            dropped: Vec::new(),
            written: Vec::new(),
            reported: None,
        }
    }

    /// Key `k`'s sessions changed.
    #[inline]
    pub(super) fn mark(&mut self, k: u32) {
        self.dirty.mark(k);
    }

    /// Before `keys` drops its keys without sessions: remembers the
    /// changed ones among them, to delete their entries.
    pub(super) fn before_compaction(&mut self, keys: &KeyTable) {
        for k in self.dirty.iter() {
            if keys.open[k as usize].is_empty() && self.is_written(k) {
                let mut key = Vec::new();
                keys.key_bytes(k, &mut key);
                self.dropped.push((keys.key_groups()[k as usize], key));
            }
        }
    }

    /// After compaction: follows the renumbering of the surviving keys.
    pub(super) fn after_compaction(&mut self, renumbered: &[u32]) {
        self.dirty.renumber(renumbered);
        let mut written = Vec::with_capacity(self.written.len());
        for (k, &new) in renumbered.iter().enumerate() {
            if new != NONE && self.is_written(k as u32) {
                set_written(&mut written, new, true);
            }
        }
        self.written = written;
    }

    fn is_written(&self, k: u32) -> bool {
        self.written.get(k as usize).copied().unwrap_or(false)
    }

    fn take_dirty(&mut self) -> Vec<u32> {
        self.dirty.take()
    }
}

impl SessionWindow {
    /// Reports the keys whose sessions changed since the last barrier
    /// (every key with sessions at the first barrier).
    pub(super) fn snapshot_sessions(&mut self, changes: &mut StateChanges) {
        let all = self.checkpoint.reported.is_none();
        let keys: Vec<u32> = if all {
            changes.clear_all();
            self.checkpoint.take_dirty();
            self.checkpoint.dropped.clear();
            self.checkpoint.written.clear();
            (0..self.keys.num_keys() as u32)
                .filter(|&k| !self.keys.open[k as usize].is_empty())
                .collect()
        } else {
            for (kg, key) in self.checkpoint.dropped.drain(..) {
                changes.delete(SESSIONS, KeyGroup(u32::from(kg)), key);
            }
            self.checkpoint.take_dirty()
        };
        for k in keys {
            let kg = KeyGroup(u32::from(self.keys.key_groups()[k as usize]));
            let mut key = Vec::new();
            self.keys.key_bytes(k, &mut key);
            let open = &self.keys.open[k as usize];
            if open.is_empty() {
                if self.checkpoint.is_written(k) {
                    changes.delete(SESSIONS, kg, key);
                    set_written(&mut self.checkpoint.written, k, false);
                }
                continue;
            }
            set_written(&mut self.checkpoint.written, k, true);
            let with_fired = open.iter().any(|&s| self.slots.fired[s as usize]);
            let mut value = Vec::with_capacity(5 + open.len() * 40);
            value.push(if with_fired { FORMAT_FIRED } else { FORMAT });
            value.extend_from_slice(&(open.len() as u32).to_le_bytes());
            for &s in open {
                let i = s as usize;
                value.extend_from_slice(&self.slots.start[i].to_le_bytes());
                value.extend_from_slice(&self.slots.end[i].to_le_bytes());
                if with_fired {
                    value.push(u8::from(self.slots.fired[i]));
                }
                for acc in &self.slots.accs {
                    acc.export(i, &mut value);
                }
            }
            changes.put(SESSIONS, kg, key, value);
        }
        if self.checkpoint.reported != Some(self.watermark) {
            changes.put(
                WATERMARK,
                self.checkpoint.own,
                Vec::new(),
                self.watermark.to_be_bytes().to_vec(),
            );
            self.checkpoint.reported = Some(self.watermark);
        }
    }

    /// Rebuilds keys, sessions and timers from restored entries (the
    /// watermark: the highest restored one, see [`restored_watermark`]).
    pub(super) fn restore_sessions(
        &mut self,
        mut state: RestoredState,
    ) -> Result<(), OperatorError> {
        if let Some(wm) = restored_watermark(&self.node, &mut state)? {
            self.watermark = wm;
        }
        let entries = state.take(SESSIONS);
        unknown_states(&self.node, &state)?;
        if entries.is_empty() {
            return Ok(());
        }
        let node = self.node.clone();
        let corrupt = |what: &str| corrupt_state(&node, SESSIONS, what);
        // The keys as a column, hashed like the exchange does.
        let mut hashes = Vec::new();
        let (int_keys, row_keys, cols) =
            decode_keys(&entries, &self.keys, self.rows.as_ref()).map_err(|m| corrupt(&m))?;
        hash_columns(&cols, &mut hashes)
            .map_err(|e| corrupt(&format!("cannot hash the keys: {e}")))?;
        let batch_keys = match (&int_keys, &row_keys) {
            (Some(a), _) => BatchKeys::Int64(a),
            (None, Some(r)) => BatchKeys::Rows(r),
            (None, None) => return Err(corrupt("no keys")),
        };
        for (i, e) in entries.iter().enumerate() {
            let k = self
                .keys
                .find_or_insert(i, hashes[i], &batch_keys, self.max_parallelism);
            if u32::from(self.keys.key_groups()[k as usize]) != e.key_group.0 {
                return Err(corrupt(&format!(
                    "a key stored under key group {} hashes to key group {}",
                    e.key_group.0,
                    self.keys.key_groups()[k as usize]
                )));
            }
            self.restore_key(k, &e.value).map_err(|m| corrupt(&m))?;
        }
        Ok(())
    }

    /// Adds the sessions of one entry value to key `k`.
    fn restore_key(&mut self, k: u32, value: &[u8]) -> Result<(), String> {
        let short = || "a value ends early".to_string();
        let mut input = value;
        let format = take::<1>(&mut input).ok_or_else(short)?[0];
        let with_fired = match format {
            FORMAT => false,
            FORMAT_FIRED => true,
            _ => {
                return Err(format!(
                    "unknown value format {format} (this build reads {FORMAT} and {FORMAT_FIRED})"
                ));
            }
        };
        let n = u32::from_le_bytes(take(&mut input).ok_or_else(short)?);
        let per_session = 16
            + usize::from(with_fired)
            + self
                .slots
                .accs
                .iter()
                .map(|a| a.encoded_len())
                .sum::<usize>();
        if input.len() != n as usize * per_session {
            return Err(format!(
                "{} bytes for {n} sessions of {per_session} bytes",
                input.len()
            ));
        }
        if self.keys.open[k as usize].is_empty() && n > 0 {
            self.keys.revived();
        }
        for _ in 0..n {
            let start = i64::from_le_bytes(take(&mut input).ok_or_else(short)?);
            let end = i64::from_le_bytes(take(&mut input).ok_or_else(short)?);
            let fired = with_fired
                && match take::<1>(&mut input).ok_or_else(short)?[0] {
                    0 => false,
                    1 => true,
                    b => return Err(format!("a fired flag of {b}")),
                };
            let s = self.slots.alloc(k, start, end);
            for acc in &mut self.slots.accs {
                acc.import(s as usize, &mut input).ok_or_else(short)?;
            }
            let i = s as usize;
            debug_assert_eq!(self.slots.indexed_end[i], NOT_INDEXED);
            self.slots.indexed_end[i] = end;
            self.slots.fired[i] = fired;
            if fired {
                self.cleanup.insert((end, s));
            } else {
                self.timers.insert((end, s));
            }
            self.keys.open[k as usize].push(s);
        }
        let slots = &self.slots;
        self.keys.open[k as usize].sort_by_key(|&s| slots.start[s as usize]);
        Ok(())
    }
}

type DecodedKeys = (Option<Int64Array>, Option<arrow::row::Rows>, Vec<ArrayRef>);

/// The entries' keys, in entry order: as an `Int64` column, or as rows and
/// the key columns they decode to.
fn decode_keys(
    entries: &[StateEntry],
    keys: &KeyTable,
    rows: Option<&RowConverter>,
) -> Result<DecodedKeys, String> {
    match (keys.is_rows(), rows) {
        (false, _) => {
            let mut out = Vec::with_capacity(entries.len());
            for e in entries {
                let b: [u8; 9] = e
                    .key
                    .as_slice()
                    .try_into()
                    .map_err(|_| format!("a key of {} bytes, not 9", e.key.len()))?;
                let v = i64::from_be_bytes(b[1..].try_into().map_err(|_| "a short key")?);
                out.push((b[0] != 0).then_some(v));
            }
            let a = Int64Array::from(out);
            let col: ArrayRef = Arc::new(a.clone());
            Ok((Some(a), None, vec![col]))
        }
        (true, Some(conv)) => {
            let parser = conv.parser();
            let mut stored = conv.empty_rows(entries.len(), 0);
            for e in entries {
                stored.push(parser.parse(&e.key));
            }
            let cols = conv
                .convert_rows(stored.iter())
                .map_err(|e| format!("cannot decode the keys: {e}"))?;
            Ok((None, Some(stored), cols))
        }
        (true, None) => Err("row-format keys need their converter".into()),
    }
}

fn set_written(written: &mut Vec<bool>, k: u32, value: bool) {
    let i = k as usize;
    if written.len() <= i {
        written.resize(i + 1, false);
    }
    written[i] = value;
}
