//! `top_n` state through a checkpoint.
//!
//! State `"groups"`: one entry per open group, under its key group; the
//! entry key is the group's partition columns in row format, the value its
//! event time and kept rows. A barrier re-reports only the groups created or
//! changed since the last one and deletes the entries of the groups emitted
//! since; the first barrier after opening or restoring reports everything.
//! State `"watermark"` holds the watermark under the subtask's own key group;
//! a restore takes the highest restored one, as the window operators do.
//!
//! Value format 1: `[1u8][time: i64 LE][n: u32 LE]`, then per kept row, best
//! first, `[score: i64 LE][len: u32 LE][row bytes]`. A value that does not
//! parse is an error, never a panic.

use super::{Group, TopN};
use crate::operators::TaskContext;
use crate::operators::window::keys::DirtyKeys;
use crate::operators::window::{WATERMARK, corrupt_state, restored_watermark, unknown_states};
use arrow::array::ArrayRef;
use eddy_sdk::ids::KeyGroup;
use eddy_sdk::operator::{OperatorError, RestoredState, StateChanges};
use eddy_sdk::operator_state::own_key_group;
use eddy_sdk::plan::hash::hash_columns;

/// Checkpoint state name of the open groups.
pub(super) const GROUPS: &str = "groups";
const FORMAT: u8 = 1;

/// What a `top_n` operator must report at its next barrier.
pub(super) struct TopNCheckpoint {
    /// The subtask's own key group, for its watermark entry.
    own: KeyGroup,
    /// Groups created or changed since the last barrier.
    dirty: DirtyKeys,
    /// Groups emitted since the last barrier: (key group, key).
    fired: Vec<(u16, Vec<u8>)>,
    /// The watermark reported last (`None`: report everything next time).
    reported: Option<i64>,
}

impl TopNCheckpoint {
    pub(super) fn new(ctx: &TaskContext) -> Self {
        TopNCheckpoint {
            own: own_key_group(&ctx.key_groups()),
            dirty: DirtyKeys::default(),
            fired: Vec::new(),
            reported: None,
        }
    }

    /// Group `g` was created or changed.
    #[inline]
    pub(super) fn mark(&mut self, g: u32) {
        self.dirty.mark(g);
    }

    /// `group` was emitted: its entry goes, if a barrier wrote one (a group
    /// opened and emitted between two barriers never reached the backend).
    pub(super) fn fired(&mut self, group: &Group) {
        if group.written {
            self.fired
                .push((group.key_group, group.key.row().data().to_vec()));
        }
    }

    fn take_dirty(&mut self) -> Vec<u32> {
        self.dirty.take()
    }
}

impl TopN {
    pub(super) fn snapshot_groups(&mut self, changes: &mut StateChanges) {
        let all = self.checkpoint.reported.is_none();
        let ids: Vec<u32> = if all {
            changes.clear_all();
            self.checkpoint.take_dirty();
            self.checkpoint.fired.clear();
            (0..self.groups.len() as u32).collect()
        } else {
            for (kg, key) in self.checkpoint.fired.drain(..) {
                changes.delete(GROUPS, KeyGroup(u32::from(kg)), key);
            }
            self.checkpoint.take_dirty()
        };
        for g in ids {
            // Emitted since it changed: its delete is reported above.
            let Some(group) = self.groups.get_mut(g as usize).and_then(Option::as_mut) else {
                continue;
            };
            group.written = true;
            let len: usize = group
                .kept
                .iter()
                .map(|(_, r)| 12 + r.row().data().len())
                .sum();
            let mut value = Vec::with_capacity(13 + len);
            value.push(FORMAT);
            value.extend_from_slice(&group.time.to_le_bytes());
            value.extend_from_slice(&(group.kept.len() as u32).to_le_bytes());
            for (score, row) in &group.kept {
                let bytes = row.row().data();
                value.extend_from_slice(&score.to_le_bytes());
                value.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                value.extend_from_slice(bytes);
            }
            changes.put(
                GROUPS,
                KeyGroup(u32::from(group.key_group)),
                group.key.row().data().to_vec(),
                value,
            );
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

    pub(super) fn restore_groups(&mut self, mut state: RestoredState) -> Result<(), OperatorError> {
        if let Some(wm) = restored_watermark(&self.node, &mut state)? {
            self.watermark = wm;
        }
        let entries = state.take(GROUPS);
        unknown_states(&self.node, &state)?;
        if entries.is_empty() {
            return Ok(());
        }
        let node = self.node.clone();
        let corrupt = |what: &str| corrupt_state(&node, GROUPS, what);
        // The partition columns, hashed as the exchange does.
        let parser = self.keys.parser();
        let mut keys = self.keys.empty_rows(entries.len(), 0);
        for e in &entries {
            keys.push(parser.parse(&e.key));
        }
        let cols: Vec<ArrayRef> = self
            .keys
            .convert_rows(keys.iter())
            .map_err(|e| corrupt(&format!("cannot decode the keys: {e}")))?;
        let mut hashes = Vec::new();
        hash_columns(&cols, &mut hashes)
            .map_err(|e| corrupt(&format!("cannot hash the keys: {e}")))?;
        let rows = self.rows.parser();
        for (i, e) in entries.iter().enumerate() {
            let (time, kept) =
                decode(&e.value, |b| rows.parse(b).owned()).map_err(|m| corrupt(&m))?;
            let g = self.group_of(hashes[i], keys.row(i), time);
            let group = self.groups[g as usize]
                .as_mut()
                .ok_or_else(|| corrupt("a group vanished"))?;
            if u32::from(group.key_group) != e.key_group.0 {
                return Err(corrupt(&format!(
                    "a group stored under key group {} hashes to key group {}",
                    e.key_group.0, group.key_group
                )));
            }
            if group.time != time || !group.kept.is_empty() {
                return Err(corrupt("a group is stored twice"));
            }
            group.kept = kept;
            group.written = true;
        }
        Ok(())
    }
}

/// `(time, kept rows)` of an entry value; `row` turns row bytes into a row.
fn decode<R>(value: &[u8], row: impl Fn(&[u8]) -> R) -> Result<(i64, Vec<(i64, R)>), String> {
    let short = || "a value ends early".to_string();
    let (&format, mut input) = value.split_first().ok_or_else(short)?;
    if format != FORMAT {
        return Err(format!(
            "unknown value format {format} (this build reads {FORMAT})"
        ));
    }
    let take8 = |input: &mut &[u8]| -> Result<[u8; 8], String> {
        let (head, rest) = input.split_first_chunk::<8>().ok_or_else(short)?;
        *input = rest;
        Ok(*head)
    };
    let time = i64::from_le_bytes(take8(&mut input)?);
    let (n, rest) = input.split_first_chunk::<4>().ok_or_else(short)?;
    input = rest;
    let n = u32::from_le_bytes(*n) as usize;
    let mut kept = Vec::with_capacity(n.min(input.len() / 12));
    for _ in 0..n {
        let score = i64::from_le_bytes(take8(&mut input)?);
        let (len, rest) = input.split_first_chunk::<4>().ok_or_else(short)?;
        let len = u32::from_le_bytes(*len) as usize;
        let (bytes, rest) = rest.split_at_checked(len).ok_or_else(short)?;
        input = rest;
        kept.push((score, row(bytes)));
    }
    if !input.is_empty() {
        return Err(format!("{} bytes after the last row", input.len()));
    }
    Ok((time, kept))
}
