//! The rows of a batch grouped by their last window end (tumbling and
//! sliding windows), without per-row allocation.

use std::collections::HashMap;

/// The rows of one batch grouped by their last window end, without per-row
/// allocation: row vectors are kept and reused across batches.
#[derive(Default)]
pub(super) struct Buckets {
    ends: Vec<i64>,
    rows: Vec<Vec<u32>>,
    used: usize,
    index: HashMap<i64, usize>,
    last: Option<(i64, usize)>,
}

impl Buckets {
    pub(super) fn clear(&mut self) {
        for r in &mut self.rows[..self.used] {
            r.clear();
        }
        self.ends.clear();
        self.used = 0;
        self.index.clear();
        self.last = None;
    }

    pub(super) fn is_empty(&self) -> bool {
        self.used == 0
    }

    #[inline]
    pub(super) fn push(&mut self, end: i64, row: u32) {
        // Rows mostly arrive in time order, so the last bucket is the usual hit.
        let slot = match self.last {
            Some((e, slot)) if e == end => slot,
            _ => {
                let slot = *self.index.entry(end).or_insert_with(|| {
                    if self.rows.len() == self.used {
                        self.rows.push(Vec::new());
                    }
                    self.ends.push(end);
                    self.used += 1;
                    self.used - 1
                });
                self.last = Some((end, slot));
                slot
            }
        };
        self.rows[slot].push(row);
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (i64, &[u32])> {
        self.ends
            .iter()
            .copied()
            .zip(self.rows[..self.used].iter().map(Vec::as_slice))
    }
}
