//! A test harness for operator chains: push batches, watermarks and the end
//! of input through a chain as the task runtime would, and collect what comes
//! out at the end.

use arrow::array::RecordBatch;
use eddy_sdk::ids::{CheckpointId, KeyGroup};
use eddy_sdk::operator::{
    Barrier, BarrierKind, Collector, Element, Operator, OperatorError, OperatorMetrics,
    RestoredState, Source, SourcePoll, StateChanges, StateEntry,
};
use eddy_sdk::operator_state::StateChange;
use std::collections::BTreeMap;
use std::ops::Range;

pub struct OperatorHarness {
    ops: Vec<Box<dyn Operator>>,
    /// What each operator's state backend would hold after its snapshots.
    images: Vec<StateImage>,
}

/// What a state backend holds after applying the changes an operator
/// reported at its barriers (a stand-in for the real backends, which have
/// tests of their own).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateImage {
    states: BTreeMap<String, Entries>,
    /// The last snapshot's report: (rewrote everything, changes).
    pub last_changes: (bool, usize),
}

/// One named state: `(key group, key)` -> value.
type Entries = BTreeMap<(u32, Vec<u8>), Vec<u8>>;

impl StateImage {
    pub fn apply(&mut self, changes: StateChanges) {
        let (clear, changes) = changes.into_parts();
        if clear {
            self.states.clear();
        }
        for c in changes {
            match c {
                StateChange::Put { state, entry } => {
                    self.states
                        .entry(state.to_string())
                        .or_default()
                        .insert((entry.key_group.0, entry.key), entry.value);
                }
                StateChange::Delete {
                    state,
                    key_group,
                    key,
                } => {
                    if let Some(s) = self.states.get_mut(state) {
                        s.remove(&(key_group.0, key));
                    }
                }
            }
        }
    }

    /// The entries a subtask owning `key_groups` restores, from any number of
    /// images (the snapshots of every subtask of the old parallelism).
    pub fn restore(images: &[&StateImage], key_groups: Range<u32>) -> RestoredState {
        let mut r = RestoredState::new(key_groups.clone());
        for image in images {
            for (name, entries) in &image.states {
                for ((kg, key), value) in entries {
                    if key_groups.contains(kg) {
                        r.insert(
                            name,
                            StateEntry {
                                key_group: KeyGroup(*kg),
                                key: key.clone(),
                                value: value.clone(),
                            },
                        );
                    }
                }
            }
        }
        r
    }

    /// Entries over all states.
    pub fn len(&self) -> usize {
        self.states.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The context of subtask `subtask` of `parallelism` (128 key groups) of
/// job `job-1`, attempt 0.
pub fn task_context(subtask: u32, parallelism: u32, exactly_once: bool) -> super::TaskContext {
    super::TaskContext {
        job_id: eddy_sdk::ids::JobId::from("job-1"),
        vertex: eddy_sdk::ids::VertexId(0),
        subtask,
        parallelism,
        max_parallelism: 128,
        latency_interval: None,
        attempt: 0,
        exactly_once,
    }
}

/// A checkpoint barrier with id `n`.
pub fn barrier(n: u64) -> Barrier {
    Barrier {
        checkpoint: CheckpointId(n),
        timestamp_ms: 0,
        kind: BarrierKind::Checkpoint,
    }
}

impl OperatorHarness {
    pub fn new(ops: Vec<Box<dyn Operator>>) -> Self {
        let images = vec![StateImage::default(); ops.len()];
        OperatorHarness { ops, images }
    }

    /// Passes a barrier through the chain: every operator snapshots into its
    /// [`StateImage`]. Returns what the chain emitted (the barrier last).
    pub fn checkpoint(&mut self, n: u64) -> Result<Vec<Element>, OperatorError> {
        self.push(Element::Barrier(barrier(n)))
    }

    /// The state operator `op` reported so far.
    pub fn image(&self, op: usize) -> &StateImage {
        &self.images[op]
    }

    /// Restores operator `op` (before any input), as the runtime does.
    pub fn restore(&mut self, op: usize, state: RestoredState) -> Result<(), OperatorError> {
        self.ops[op].restore_state(state)
    }

    /// Tells every operator that checkpoint `n` was committed.
    pub fn complete(&mut self, n: u64) -> Result<(), OperatorError> {
        for op in &mut self.ops {
            op.notify_checkpoint_complete(CheckpointId(n))?;
        }
        Ok(())
    }

    /// Pushes one element through every operator in order; returns what the
    /// last one emitted. The end of input calls `on_end` and then forwards
    /// `EndOfStream`, as the runtime does.
    pub fn push(&mut self, element: Element) -> Result<Vec<Element>, OperatorError> {
        let mut pending = vec![element];
        for (op, image) in self.ops.iter_mut().zip(&mut self.images) {
            let mut next = Vec::new();
            for e in pending {
                let mut c = Collector::new();
                match e {
                    Element::Batch(b) => op.on_batch(b, &mut c)?,
                    Element::Watermark(w) => op.on_watermark(w, &mut c)?,
                    Element::EndOfStream => {
                        op.on_end(&mut c)?;
                        c.push(Element::EndOfStream);
                    }
                    marker @ Element::LatencyMarker(_) => c.push(marker),
                    Element::Barrier(b) => {
                        let mut changes = StateChanges::new();
                        op.snapshot_state(&b, &mut changes)?;
                        image.last_changes = (changes.is_clear(), changes.len());
                        image.apply(changes);
                        c.push(Element::Barrier(b));
                    }
                }
                next.extend(c.drain());
            }
            pending = next;
        }
        Ok(pending)
    }

    pub fn batch(&mut self, b: RecordBatch) -> Result<Vec<Element>, OperatorError> {
        self.push(Element::Batch(b))
    }

    pub fn watermark(&mut self, wm: i64) -> Result<Vec<Element>, OperatorError> {
        self.push(Element::Watermark(wm))
    }

    pub fn end(&mut self) -> Result<Vec<Element>, OperatorError> {
        self.push(Element::EndOfStream)
    }

    pub fn metrics(&self, op: usize) -> OperatorMetrics {
        self.ops[op].metrics()
    }
}

pub fn batches(out: &[Element]) -> Vec<RecordBatch> {
    out.iter()
        .filter_map(|e| {
            if let Element::Batch(b) = e {
                Some(b.clone())
            } else {
                None
            }
        })
        .collect()
}

pub fn watermarks(out: &[Element]) -> Vec<i64> {
    out.iter()
        .filter_map(|e| {
            if let Element::Watermark(w) = e {
                Some(*w)
            } else {
                None
            }
        })
        .collect()
}

/// Polls an unpaced, bounded source until it finishes.
pub fn drain_source(source: &mut dyn Source) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut c = Collector::new();
    for _ in 0..1_000_000 {
        match source.poll(&mut c).unwrap() {
            SourcePoll::Ready => out.extend(batches(&c.drain().collect::<Vec<_>>())),
            SourcePoll::Idle(d) => panic!("an unpaced source went idle for {d:?}"),
            SourcePoll::Finished => {
                out.extend(batches(&c.drain().collect::<Vec<_>>()));
                return out;
            }
        }
    }
    panic!("the source did not finish")
}

/// `rows` (the rows of `batch`, in order) per subtask of `parallelism`,
/// routed as the exchange routes them: by the key group of `key_by`'s hash.
pub fn route_by_key<R: Clone>(
    rows: &[R],
    batch: &RecordBatch,
    key_by: &[&str],
    max_parallelism: u32,
    parallelism: u32,
) -> Vec<Vec<R>> {
    let cols: Vec<arrow::array::ArrayRef> = key_by
        .iter()
        .map(|k| batch.column(batch.schema().index_of(k).unwrap()).clone())
        .collect();
    let mut hashes = Vec::new();
    eddy_sdk::plan::hash::hash_columns(&cols, &mut hashes).unwrap();
    let mut out = vec![Vec::new(); parallelism as usize];
    for (row, h) in rows.iter().zip(hashes) {
        let kg = eddy_sdk::keygroup::key_group_of_hash(h, max_parallelism);
        let s = eddy_sdk::keygroup::subtask_for_key_group(kg, max_parallelism, parallelism);
        out[s as usize].push(row.clone());
    }
    out
}
