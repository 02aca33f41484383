//! Splits: how the generator sources (`datagen`, `nexmark`) divide their rows
//! among subtasks so that the position reached can be checkpointed and moved
//! to a different parallelism.
//!
//! Global row (or event) `r` belongs to split `r mod M`, where `M` is the
//! job's max parallelism (its number of key groups). A subtask owns the splits
//! of its key groups, a contiguous range `[a, b)`. Each owned split has a
//! frontier `k`: how many of its rows were emitted, so its next row is
//! `split + k * M`. `count` bounds the global row number over all splits.
//!
//! A subtask emits its rows in increasing global order, in contiguous runs:
//! when the frontiers are equal, block `j` is the run `j*M + a .. j*M + b`
//! (and a subtask owning every split has one unbroken run). After a restore
//! at a different parallelism the frontiers of a subtask's splits can differ;
//! rows below a split's frontier are skipped.
//!
//! At a checkpoint each split's frontier is one entry under the split's key
//! group (key `pos`, value 8 bytes big endian), so when the parallelism
//! changes every frontier goes to the subtask that owns its split now.

use eddy_sdk::ids::KeyGroup;
use eddy_sdk::operator::{StateChanges, StateEntry};
use std::ops::Range;

/// The key of a split's frontier entry.
const POSITION_KEY: &[u8] = b"pos";

/// Why restored split positions cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("split {split} is not one of this subtask's splits {owned:?}")]
    NotOwned { split: u32, owned: Range<u32> },
    #[error("the entry of split {split} has key {key:?}, expected \"pos\"")]
    UnknownKey { split: u32, key: String },
    #[error("the position of split {split} is {len} bytes, expected 8")]
    BadValue { split: u32, len: usize },
}

/// The splits one subtask owns, and how far each got.
#[derive(Debug)]
pub(crate) struct Splits {
    /// Owned splits (key groups) `[a, b)`.
    owned: Range<u32>,
    /// The number of splits (`M`).
    max: u64,
    /// Global rows stop below this (`u64::MAX`: unbounded).
    end: u64,
    bounded: bool,
    /// Frontier of split `owned.start + i` at index `i`.
    frontiers: Vec<u64>,
    /// Owned rows below `end` not emitted yet (bounded sources only).
    remaining: u64,
    /// The frontiers at the last snapshot; `None` until the first one after
    /// opening or restoring, which rewrites the whole state.
    snapshotted: Option<Vec<u64>>,
}

impl Splits {
    /// The splits `key_groups` of `max_parallelism`, at the start of the
    /// input; `count` bounds the global row number.
    pub(crate) fn new(key_groups: Range<u32>, max_parallelism: u32, count: Option<u64>) -> Self {
        let max_parallelism = max_parallelism.max(1);
        let owned = key_groups.start.min(max_parallelism)..key_groups.end.min(max_parallelism);
        let mut splits = Splits {
            frontiers: vec![0; owned.len()],
            owned,
            max: u64::from(max_parallelism),
            end: count.unwrap_or(u64::MAX),
            bounded: count.is_some(),
            remaining: 0,
            snapshotted: None,
        };
        splits.remaining = splits.count_remaining();
        splits
    }

    /// The fraction of all rows this subtask owns: its share of a rate.
    pub(crate) fn share(&self) -> f64 {
        self.owned.len() as f64 / self.max as f64
    }

    /// Owned rows not emitted yet (`None`: unbounded).
    pub(crate) fn remaining(&self) -> Option<u64> {
        self.bounded.then_some(self.remaining)
    }

    /// Whether every owned row was emitted.
    pub(crate) fn is_finished(&self) -> bool {
        self.next_run(1).is_none()
    }

    /// The next rows to emit: a run of at most `max` consecutive global row
    /// numbers, all owned and not emitted yet, starting at the lowest such
    /// row. `None` when there is none (or `max` is 0). Emitting them is
    /// [`advance`](Self::advance).
    pub(crate) fn next_run(&self, max: u64) -> Option<Range<u64>> {
        if max == 0 {
            return None;
        }
        // The lowest next row: the smallest frontier, then the lowest split.
        let (index, &block) = self.frontiers.iter().enumerate().min_by_key(|&(_, f)| *f)?;
        let start = block
            .checked_mul(self.max)?
            .checked_add(u64::from(self.owned.start) + index as u64)?;
        if start >= self.end {
            return None;
        }
        let whole = self.frontiers.len() as u64 == self.max;
        // Split `i` continues the run when its next row is the next global
        // row: at frontier `block` for the splits from `index` on, and one
        // further for those before it (their row in `block` was emitted).
        let want = |i: usize| if i >= index { block } else { block + 1 };
        let (mut i, mut len) = (index + 1, 1u64);
        let limit = max.min(self.end - start);
        while len < limit {
            if i == self.frontiers.len() {
                if !whole {
                    break;
                }
                // Owning every split, the next block follows on.
                i = 0;
            }
            if self.frontiers[i] != want(i) {
                break;
            }
            i += 1;
            len += 1;
        }
        Some(start..start + len)
    }

    /// Marks the rows of `run` emitted: a prefix of the last [`next_run`](Self::next_run).
    pub(crate) fn advance(&mut self, run: Range<u64>) {
        let len = run.end.saturating_sub(run.start);
        if len == 0 {
            return;
        }
        debug_assert_eq!(
            self.next_run(len),
            Some(run.clone()),
            "advance past the next run"
        );
        if len >= self.max {
            // Covers every split: each has emitted exactly its rows below the end.
            let (first, max) = (u64::from(self.owned.start), self.max);
            for (i, f) in self.frontiers.iter_mut().enumerate() {
                *f = (*f).max(rows_below(first + i as u64, run.end, max));
            }
        } else {
            for r in run {
                let split = r % self.max;
                let i = (split - u64::from(self.owned.start)) as usize;
                self.frontiers[i] = r / self.max + 1;
            }
        }
        self.remaining = self.remaining.saturating_sub(len);
    }

    /// Reports the frontiers at a barrier into `state`: all of them at the
    /// first snapshot after opening or restoring (replacing what was stored),
    /// then only those that moved since the last snapshot.
    pub(crate) fn snapshot(&mut self, changes: &mut StateChanges, state: &'static str) {
        let first = self.owned.start;
        let put = |changes: &mut StateChanges, i: usize, f: u64| {
            changes.put(
                state,
                KeyGroup(first + i as u32),
                POSITION_KEY.to_vec(),
                f.to_be_bytes().to_vec(),
            );
        };
        match &self.snapshotted {
            None => {
                changes.clear_all();
                for (i, f) in self.frontiers.iter().enumerate() {
                    put(changes, i, *f);
                }
            }
            Some(last) => {
                for (i, (f, old)) in self.frontiers.iter().zip(last).enumerate() {
                    if f != old {
                        put(changes, i, *f);
                    }
                }
            }
        }
        self.snapshotted = Some(self.frontiers.clone());
    }

    /// Starts from the restored frontiers (the entries of one state); owned
    /// splits without an entry start at their beginning.
    pub(crate) fn restore(&mut self, entries: Vec<StateEntry>) -> Result<(), Error> {
        let mut frontiers = vec![0; self.frontiers.len()];
        for e in entries {
            let split = e.key_group.0;
            if !self.owned.contains(&split) {
                return Err(Error::NotOwned {
                    split,
                    owned: self.owned.clone(),
                });
            }
            if e.key != POSITION_KEY {
                return Err(Error::UnknownKey {
                    split,
                    key: String::from_utf8_lossy(&e.key).into_owned(),
                });
            }
            let bytes: [u8; 8] = e.value.as_slice().try_into().map_err(|_| Error::BadValue {
                split,
                len: e.value.len(),
            })?;
            frontiers[(split - self.owned.start) as usize] = u64::from_be_bytes(bytes);
        }
        self.frontiers = frontiers;
        self.snapshotted = None;
        self.remaining = self.count_remaining();
        Ok(())
    }

    /// Owned rows below `end` at or above their split's frontier.
    fn count_remaining(&self) -> u64 {
        let first = u64::from(self.owned.start);
        self.frontiers
            .iter()
            .enumerate()
            .map(|(i, f)| rows_below(first + i as u64, self.end, self.max).saturating_sub(*f))
            .fold(0u64, u64::saturating_add)
    }
}

/// How many rows of split `split` (`split, split + max, ...`) are below `end`.
fn rows_below(split: u64, end: u64, max: u64) -> u64 {
    if end > split {
        (end - split - 1) / max + 1
    } else {
        0
    }
}

#[cfg(test)]
#[path = "splits_tests.rs"]
mod tests;
