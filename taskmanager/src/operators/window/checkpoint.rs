//! Tumbling and sliding windows through a checkpoint, and the helpers every
//! windowed operator (sessions, `top_n`) shares for its watermark and for
//! unreadable state.
//!
//! State `"windows"`: the windows not fired yet; state `"fired_windows"`: the
//! windows fired but kept for late records (allowed lateness). Both hold one
//! entry per window and key group, key `window_end` (i64 BE), value the
//! groups of that key group (`state_snapshot.rs`). A barrier re-reports the
//! entries of windows updated since the last one and deletes those of
//! windows that fired (their `"windows"` entries, rewritten under
//! `"fired_windows"` when kept) or were dropped (once the watermark passes
//! `end - 1 + allowed_lateness`). The first barrier after opening or
//! restoring reports everything. State `"watermark"` holds the operator's
//! watermark under the subtask's own key group.
//!
//! Which state an entry is under, not the watermark, says whether the window
//! fired: after a change of parallelism a subtask may restore no watermark
//! (it starts from the lowest) yet hold fired windows, which must not fire
//! again.

use super::Window;
use super::state::WindowState;
use crate::operators::TaskContext;
use eddy_sdk::FailureClass;
use eddy_sdk::ids::{KeyGroup, NodeId};
use eddy_sdk::operator::{OperatorError, RestoredState, StateChanges};
use eddy_sdk::operator_state::own_key_group;
use std::collections::{BTreeMap, BTreeSet};

/// Checkpoint state names of the window operators.
pub(in crate::operators) const WINDOWS: &str = "windows";
pub(in crate::operators) const FIRED_WINDOWS: &str = "fired_windows";
pub(crate) const WATERMARK: &str = "watermark";

/// What a tumbling/sliding window operator must report at its next barrier.
pub(super) struct Checkpointed {
    /// The subtask's own key group, for its watermark entry.
    own: KeyGroup,
    /// Windows not fired yet, updated since the last barrier.
    pub(super) open: BTreeSet<i64>,
    /// Fired windows updated (late records) or fired since the last barrier.
    pub(super) fired: BTreeSet<i64>,
    /// Windows with entries in the backend under `"windows"`, and under
    /// `"fired_windows"`: only those have entries to delete when they leave
    /// a state. (A window opened and fired between two barriers, the common
    /// case when event time runs fast, never reached the backend.)
    written_open: BTreeSet<i64>,
    written_fired: BTreeSet<i64>,
    /// Entries to delete: (state, window end, key groups).
    deleted: Vec<(&'static str, i64, Vec<u16>)>,
    /// The watermark reported last (`None`: report everything next time).
    reported: Option<i64>,
}

impl Checkpointed {
    pub(super) fn new(ctx: &TaskContext) -> Self {
        Checkpointed {
            own: own_key_group(&ctx.key_groups()),
            open: BTreeSet::new(),
            fired: BTreeSet::new(),
            written_open: BTreeSet::new(),
            written_fired: BTreeSet::new(),
            deleted: Vec::new(),
            reported: None,
        }
    }

    /// Window `end` left state `name` (`WINDOWS` or `FIRED_WINDOWS`).
    pub(super) fn dropped(&mut self, name: &'static str, end: i64, state: &WindowState) {
        let (dirty, written) = if name == WINDOWS {
            (&mut self.open, &mut self.written_open)
        } else {
            (&mut self.fired, &mut self.written_fired)
        };
        dirty.remove(&end);
        if written.remove(&end) {
            self.deleted.push((name, end, state.key_groups_present()));
        }
    }

    /// Window `end` fired and is kept for late records: its entries move
    /// from `"windows"` to `"fired_windows"`.
    pub(super) fn kept(&mut self, end: i64, state: &mut WindowState) {
        self.dropped(WINDOWS, end, state);
        state.mark_all_dirty();
        self.fired.insert(end);
    }

    /// Starts a snapshot: deletes the entries of windows that fired or were
    /// dropped, or everything when this is the first snapshot (returns
    /// whether it is).
    fn start(&mut self, changes: &mut StateChanges) -> bool {
        let all = self.reported.is_none();
        if all {
            changes.clear_all();
            self.deleted.clear();
            self.written_open.clear();
            self.written_fired.clear();
        }
        for (name, end, kgs) in self.deleted.drain(..) {
            for kg in kgs {
                changes.delete(name, KeyGroup(u32::from(kg)), end.to_be_bytes().to_vec());
            }
        }
        all
    }

    fn finish(&mut self, watermark: i64, changes: &mut StateChanges) {
        if self.reported != Some(watermark) {
            changes.put(
                WATERMARK,
                self.own,
                Vec::new(),
                watermark.to_be_bytes().to_vec(),
            );
            self.reported = Some(watermark);
        }
    }
}

/// Reports windows `ends` of `windows` under state `name`: the key groups
/// updated since the last snapshot, or all of them. `written` gains the
/// windows reported.
fn report(
    name: &'static str,
    windows: &mut BTreeMap<i64, WindowState>,
    ends: BTreeSet<i64>,
    all: bool,
    written: &mut BTreeSet<i64>,
    changes: &mut StateChanges,
) {
    let ends: Vec<i64> = if all {
        windows.keys().copied().collect()
    } else {
        ends.into_iter().collect()
    };
    for end in ends {
        if let Some(state) = windows.get_mut(&end) {
            written.insert(end);
            let dirty = state.take_dirty_key_groups();
            let kgs = if all {
                state.key_groups_present()
            } else {
                dirty
            };
            for (kg, groups) in state.groups_of_key_groups(&kgs) {
                changes.put(
                    name,
                    KeyGroup(u32::from(kg)),
                    end.to_be_bytes().to_vec(),
                    state.encode(&groups),
                );
            }
        }
    }
}

impl Window {
    /// Reports the windows that changed, fired or were dropped since the
    /// last barrier (everything at the first one after opening or restoring).
    pub(super) fn snapshot_windows(&mut self, changes: &mut StateChanges) {
        let all = self.checkpoint.start(changes);
        let open = std::mem::take(&mut self.checkpoint.open);
        let fired = std::mem::take(&mut self.checkpoint.fired);
        let c = &mut self.checkpoint;
        report(
            WINDOWS,
            &mut self.windows,
            open,
            all,
            &mut c.written_open,
            changes,
        );
        report(
            FIRED_WINDOWS,
            &mut self.fired,
            fired,
            all,
            &mut c.written_fired,
            changes,
        );
        self.checkpoint.finish(self.watermark, changes);
    }

    /// Rebuilds the open and fired windows from restored entries.
    pub(super) fn restore_windows(
        &mut self,
        mut state: RestoredState,
    ) -> Result<(), OperatorError> {
        if let Some(wm) = restored_watermark(&self.node, &mut state)? {
            self.watermark = wm;
        }
        for e in state.take(FIRED_WINDOWS) {
            let (end, kg) = entry_key(&self.node, FIRED_WINDOWS, &e)?;
            self.fired
                .entry(end)
                .or_insert_with(|| WindowState::new(self.rows.as_ref(), &self.kinds))
                .decode_into(kg, &e.value, self.rows.as_ref())
                .map_err(|m| corrupt_state(&self.node, FIRED_WINDOWS, &m))?;
        }
        for e in state.take(WINDOWS) {
            let (end, kg) = entry_key(&self.node, WINDOWS, &e)?;
            let decode = |w: &mut WindowState| {
                w.decode_into(kg, &e.value, self.rows.as_ref())
                    .map_err(|m| corrupt_state(&self.node, WINDOWS, &m))
            };
            if let Some(w) = self.fired.get_mut(&end) {
                // Fired by the subtask that held other key groups of it, not
                // yet by this entry's (their watermarks differed): its groups
                // join the fired window and are emitted at once.
                let before = w.num_groups() as u32;
                decode(w)?;
                let after = w.num_groups() as u32;
                self.refire.entry(end).or_default().extend(before..after);
            } else {
                decode(
                    self.windows
                        .entry(end)
                        .or_insert_with(|| WindowState::new(self.rows.as_ref(), &self.kinds)),
                )?;
            }
        }
        unknown_states(&self.node, &state)
    }
}

/// The window end and key group of a restored entry.
fn entry_key(
    node: &NodeId,
    name: &str,
    e: &eddy_sdk::operator::StateEntry,
) -> Result<(i64, u16), OperatorError> {
    let end = e
        .key
        .as_slice()
        .try_into()
        .map(i64::from_be_bytes)
        .map_err(|_| corrupt_state(node, name, "a window key is not 8 bytes"))?;
    let kg = u16::try_from(e.key_group.0)
        .map_err(|_| corrupt_state(node, name, "a key group is out of range"))?;
    Ok((end, kg))
}

/// The highest watermark among the restored ones (several when subtasks
/// merge): a row late for that watermark is late, as it would have been
/// there. (Whether a window fired is kept with the window, not derived from
/// this watermark.)
pub(crate) fn restored_watermark(
    node: &NodeId,
    state: &mut RestoredState,
) -> Result<Option<i64>, OperatorError> {
    let mut wm = None;
    for e in state.take(WATERMARK) {
        let v = e
            .value
            .as_slice()
            .try_into()
            .map(i64::from_be_bytes)
            .map_err(|_| corrupt_state(node, WATERMARK, "a watermark is not 8 bytes"))?;
        wm = Some(wm.map_or(v, |w: i64| w.max(v)));
    }
    Ok(wm)
}

pub(crate) fn corrupt_state(node: &NodeId, state: &str, what: &str) -> OperatorError {
    OperatorError::new(
        FailureClass::Infrastructure,
        format!("node `{node}`: restored state `{state}` is unreadable: {what}"),
    )
}

/// Fails when the restored state holds states this operator does not know
/// (it was restored from another kind of operator with the same id).
pub(crate) fn unknown_states(node: &NodeId, state: &RestoredState) -> Result<(), OperatorError> {
    let unknown: Vec<&str> = state.remaining().collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(OperatorError::new(
            FailureClass::Infrastructure,
            format!(
                "node `{node}`: restored state has unknown states {unknown:?}: was it taken from another kind of operator with this id?"
            ),
        ))
    }
}
