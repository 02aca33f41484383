//! The operator contract every node kind (built-in or custom) implements, and
//! the elements that flow between operators.
//!
//! Operators are synchronous and batch-at-a-time: the task runtime pulls an
//! element from the input, passes it down the chain, and sends whatever the
//! chain emitted to the outputs (where backpressure waits happen). An operator
//! never blocks and never does per-row dynamic dispatch.

use arrow::record_batch::RecordBatch;
use std::time::Duration;

pub use crate::operator_state::{Barrier, BarrierKind, RestoredState, StateChanges, StateEntry};

/// What flows along an edge: data, and control events in-band with it.
#[derive(Clone, Debug)]
pub enum Element {
    Batch(RecordBatch),
    /// Event time has reached this instant (ms since epoch): no later record
    /// will carry an earlier timestamp (modulo allowed lateness).
    Watermark(i64),
    /// A latency marker: the wall-clock time (ns since the Unix epoch) at which
    /// the source's oldest record pending at that point became due. Operators
    /// never see markers: the runtime passes them down the chain at once and
    /// each edge forwards them to one channel, round-robin; sinks record
    /// their age (`crate::latency`).
    LatencyMarker(i64),
    /// A checkpoint barrier: everything before it belongs to the checkpoint,
    /// everything after it to the next one. The runtime aligns barriers of
    /// several inputs and asks each operator to snapshot when it passes;
    /// operators never see the element itself.
    Barrier(Barrier),
    /// The producer has no more input.
    EndOfStream,
}

/// The emitted elements of one step of an operator.
#[derive(Default, Debug)]
pub struct Collector {
    out: Vec<Element>,
}

impl Collector {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn batch(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.out.push(Element::Batch(batch));
        }
    }
    pub fn watermark(&mut self, wm: i64) {
        self.out.push(Element::Watermark(wm));
    }
    pub fn latency_marker(&mut self, unix_ns: i64) {
        self.out.push(Element::LatencyMarker(unix_ns));
    }
    pub fn push(&mut self, e: Element) {
        match e {
            Element::Batch(b) => self.batch(b),
            other => self.out.push(other),
        }
    }
    pub fn drain(&mut self) -> std::vec::Drain<'_, Element> {
        self.out.drain(..)
    }
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }
    pub fn len(&self) -> usize {
        self.out.len()
    }
}

/// An operator's error: its class says whether a restart can help.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct OperatorError {
    pub class: crate::error::FailureClass,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl OperatorError {
    pub fn new(class: crate::error::FailureClass, message: impl Into<String>) -> Self {
        OperatorError {
            class,
            message: message.into(),
            source: None,
        }
    }
    pub fn with_source(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(e));
        self
    }
}

pub type Result<T, E = OperatorError> = std::result::Result<T, E>;

/// Counters an operator keeps about itself (beyond records in/out, which the
/// runtime counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OperatorMetrics {
    /// Records dropped as late: every window (or `top_n` group) they belong
    /// to was past its allowed lateness (fired, when there is none), or they
    /// had no event time.
    pub late_records_dropped: u64,
    /// Sources reading partitioned logs: records after the position, over
    /// all partitions, and the age in ms of the last record read from a
    /// lagging partition.
    pub source_lag_records: Option<u64>,
    pub source_lag_ms: Option<u64>,
}

/// A transformation or sink: batches in, batches out.
pub trait Operator: Send {
    /// A batch arrived. Emit zero or more batches.
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<()>;

    /// The input's watermark advanced. Operators that hold data by event time
    /// fire what the watermark completes, then forward it.
    fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<()> {
        out.watermark(watermark);
        Ok(())
    }

    /// The input ended; flush everything (sinks close their files here). The
    /// runtime forwards the end of stream itself.
    fn on_end(&mut self, _out: &mut Collector) -> Result<()> {
        Ok(())
    }

    fn metrics(&self) -> OperatorMetrics {
        OperatorMetrics::default()
    }

    /// How long the runtime should wait before feeding this operator more input
    /// (a rate-limited sink). The wait is asynchronous: the slot's thread keeps
    /// running its other subtasks, and the input backs up into the exchange,
    /// which backpressures the producers.
    fn throttle(&mut self) -> Option<Duration> {
        None
    }

    /// A barrier passed: write the changes to this operator's state since
    /// the last snapshot into `changes` (or all of it after
    /// [`StateChanges::clear_all`]). Called between two elements, after
    /// everything before the barrier was processed; what the operator
    /// emitted before is already downstream. Sinks pre-commit here.
    fn snapshot_state(&mut self, _barrier: &Barrier, _changes: &mut StateChanges) -> Result<()> {
        Ok(())
    }

    /// Before the first element of a restored subtask: the operator's entries
    /// of the key groups this subtask owns, from the checkpoint or savepoint
    /// it restarts from (possibly taken at another parallelism).
    fn restore_state(&mut self, _state: RestoredState) -> Result<()> {
        Ok(())
    }

    /// Checkpoint `barrier.checkpoint` was committed by the JobManager:
    /// sinks make what they pre-committed for it visible.
    fn notify_checkpoint_complete(&mut self, _checkpoint: crate::ids::CheckpointId) -> Result<()> {
        Ok(())
    }
}

/// What a source produced on one poll.
#[derive(Debug)]
pub enum SourcePoll {
    /// Data, and optionally other elements, are in the collector.
    Ready,
    /// Nothing now; poll again after this long (rate limits, idle inputs).
    Idle(Duration),
    /// The source has ended (bounded sources only). The runtime sends the
    /// final watermark and the end of stream.
    Finished,
}

/// A source: produces batches on demand, never blocks.
pub trait Source: Send {
    fn poll(&mut self, out: &mut Collector) -> Result<SourcePoll>;

    /// The JobManager triggered a checkpoint: record the position reached
    /// (everything emitted so far is before the barrier), as entries whose
    /// key group is the split they describe, so positions move with their
    /// splits when the parallelism changes.
    fn snapshot_state(&mut self, _barrier: &Barrier, _changes: &mut StateChanges) -> Result<()> {
        Ok(())
    }

    /// Before the first poll of a restored subtask: the positions of the
    /// splits (key groups) it owns now.
    fn restore_state(&mut self, _state: RestoredState) -> Result<()> {
        Ok(())
    }

    /// Counters the source keeps about itself (lag).
    fn metrics(&self) -> OperatorMetrics {
        OperatorMetrics::default()
    }

    /// Checkpoint `checkpoint` was committed (sources that report their
    /// positions elsewhere, such as Kafka group offsets, do it here).
    fn notify_checkpoint_complete(&mut self, _checkpoint: crate::ids::CheckpointId) -> Result<()> {
        Ok(())
    }
}
