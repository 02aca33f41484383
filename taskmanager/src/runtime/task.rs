//! The subtask loop.
//!
//! Without checkpoints a subtask runs until its end of stream is delivered.
//! With checkpoints ([`Checkpoints`]) it also takes part in them:
//! - a source subtask injects a barrier when the JobManager triggers one,
//!   after recording its position; any other subtask snapshots when its
//!   input gate has aligned a barrier. Either way the barrier passes down the
//!   chain (each operator reports its state changes), the synchronous part
//!   of the snapshot is taken, the barrier goes downstream, and the upload
//!   runs in the background; its result is reported to the JobManager.
//! - a finished source sends the final watermark, then waits for one more
//!   barrier and for that checkpoint's commit before it ends the stream, so
//!   the sinks' last data is committed by a checkpoint (Flink's final
//!   checkpoint). Every subtask that ends waits for the commit of the last
//!   checkpoint it took part in, so its sinks make that data visible.
//! - after a stop-with-savepoint barrier a source produces nothing more and,
//!   once the savepoint is committed, ends the stream without flushing:
//!   the state is in the savepoint, and the restored job emits the rest.

use super::checkpoint::{Command, Report, TaskState};
use super::phase::Phase;
use super::snapshotter::Snapshotter;
use super::{Error, InputGate, Outputs};
use crate::operators::Chain;
use crate::runtime::metrics::SubtaskMetrics;
use eddy_sdk::ids::CheckpointId;
use eddy_sdk::operator::{
    Barrier, BarrierKind, Collector, Element, Operator, Source, SourcePoll, StateChanges,
};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Which operator of the chain a state backend belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatePosition {
    Source,
    Operator(usize),
}

/// A subtask's part in checkpoints.
pub struct Checkpoints {
    /// One backend per stateful operator, in `positions` order.
    pub state: TaskState,
    pub positions: Vec<StatePosition>,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub reports: mpsc::UnboundedSender<Report>,
}

/// Everything one subtask runs with, wired and ready.
pub struct Subtask {
    pub chain: Chain,
    /// The merged input channels (none for a source vertex).
    pub input: Option<InputGate>,
    pub outputs: Outputs,
    pub metrics: Arc<SubtaskMetrics>,
    pub checkpoints: Option<Checkpoints>,
}

impl Subtask {
    /// Runs until the end of stream has been processed and delivered, or an
    /// error. Cancellation is the caller's: it drops this future.
    pub async fn run(self) -> Result<(), Error> {
        let Subtask {
            chain,
            input,
            outputs,
            metrics,
            checkpoints,
        } = self;
        let Chain {
            source, operators, ..
        } = chain;
        let mut driver = Driver {
            operators,
            outputs,
            metrics,
            cp: checkpoints.map(|c| CpState {
                snapshotter: Snapshotter::start(c.state, c.reports.clone()),
                positions: c.positions,
                commands: c.commands,
                reports: c.reports,
                last_snapshot: None,
                last_completed: None,
                stopping: None,
                final_committed: false,
            }),
        };
        match (source, input) {
            (Some(source), _) => driver.run_source(source).await?,
            (None, Some(gate)) => driver.run_gate(gate).await?,
            (None, None) => return Err(Error::NoInput),
        }
        driver.outputs.close().await
    }
}

struct CpState {
    snapshotter: Snapshotter,
    positions: Vec<StatePosition>,
    commands: mpsc::UnboundedReceiver<Command>,
    reports: mpsc::UnboundedSender<Report>,
    /// The newest checkpoint this subtask took part in.
    last_snapshot: Option<CheckpointId>,
    /// The newest checkpoint committed.
    last_completed: Option<CheckpointId>,
    /// A stop-with-savepoint barrier passed: the coming end of stream must
    /// not flush.
    stopping: Option<CheckpointId>,
    /// The job's final checkpoint was committed.
    final_committed: bool,
}

impl CpState {
    /// Whether every checkpoint this subtask took part in is committed, or
    /// the job's final checkpoint is: a later one never completes, as the
    /// sources end at the final one.
    fn settled(&self) -> bool {
        self.final_committed || self.last_snapshot <= self.last_completed
    }
}

struct Driver {
    operators: Vec<Box<dyn Operator>>,
    outputs: Outputs,
    metrics: Arc<SubtaskMetrics>,
    cp: Option<CpState>,
}

impl Driver {
    async fn run_source(&mut self, mut source: Box<dyn Source>) -> Result<(), Error> {
        let mut phase = Phase::Running;
        loop {
            while let Some(cmd) = self.cp.as_mut().and_then(|c| c.commands.try_recv().ok()) {
                phase = self.on_source_command(cmd, phase, source.as_mut()).await?;
            }
            match phase {
                Phase::Running => {}
                Phase::End { flush } => {
                    self.end(flush).await?;
                    return Ok(());
                }
                Phase::Draining | Phase::FinalBarrier(_) | Phase::Stopping { .. } => {
                    let cmd = self.next_command().await?;
                    phase = self.on_source_command(cmd, phase, source.as_mut()).await?;
                    continue;
                }
            }
            let started = Instant::now();
            let backpressured = self.metrics.backpressured_total();
            let mut out = Collector::new();
            let poll = source.poll(&mut out)?;
            let produced: Vec<Element> = out.drain().collect();
            // A source vertex's records in are the rows its source
            // produced: the input of its chain.
            let rows: usize = produced
                .iter()
                .map(|e| match e {
                    Element::Batch(b) => b.num_rows(),
                    _ => 0,
                })
                .sum();
            self.metrics.records_in.fetch_add(rows as u64, Relaxed);
            let m = source.metrics();
            if let (Some(records), Some(ms)) = (m.source_lag_records, m.source_lag_ms) {
                self.metrics.source_lag_records.store(records, Relaxed);
                self.metrics.source_lag_ms.store(ms, Relaxed);
            }
            for e in produced {
                self.process(e).await?;
            }
            if let SourcePoll::Finished = poll {
                // A finished source closes event time; with checkpoints the
                // stream ends after the final checkpoint.
                self.process(Element::Watermark(i64::MAX)).await?;
                self.account_busy(started, backpressured);
                phase = if let Some(cp) = &self.cp {
                    tracing::info!("source finished; waiting for the final checkpoint");
                    let _ = cp.reports.send(Report::InputEnded);
                    Phase::Draining
                } else {
                    Phase::End { flush: true }
                };
                continue;
            }
            self.account_busy(started, backpressured);
            match poll {
                SourcePoll::Idle(wait) => {
                    let woken = match self.cp.as_mut() {
                        Some(cp) => tokio::select! {
                            _ = tokio::time::sleep(wait) => None,
                            cmd = cp.commands.recv() => Some(cmd),
                        },
                        None => {
                            tokio::time::sleep(wait).await;
                            None
                        }
                    };
                    if let Some(cmd) = woken {
                        let cmd = cmd.ok_or(Error::Detached)?;
                        phase = self.on_source_command(cmd, phase, source.as_mut()).await?;
                    }
                }
                // Other subtasks share this slot's thread: let them run.
                _ => tokio::task::yield_now().await,
            }
        }
    }

    async fn on_source_command(
        &mut self,
        cmd: Command,
        phase: Phase,
        source: &mut dyn Source,
    ) -> Result<Phase, Error> {
        match cmd {
            Command::Trigger(barrier) => {
                if !phase.takes_checkpoints() {
                    tracing::debug!(
                        checkpoint_id = barrier.checkpoint.0,
                        ?phase,
                        "trigger ignored: the source is stopping"
                    );
                    return Ok(phase);
                }
                let mut changes = StateChanges::new();
                source.snapshot_state(&barrier, &mut changes)?;
                self.checkpoint(barrier, Some(changes), Duration::ZERO)
                    .await?;
                Ok(phase.after_barrier(barrier.kind, barrier.checkpoint))
            }
            Command::Complete { id, job_final } => {
                if self.on_complete(id, job_final)? {
                    source.notify_checkpoint_complete(id)?;
                }
                Ok(phase.after_commit(id, job_final))
            }
            Command::Abort(id) => {
                let next = phase.after_abort(id);
                if matches!(phase, Phase::Stopping { .. }) && next != phase {
                    tracing::info!(
                        checkpoint_id = id.0,
                        "stop-with-savepoint failed; the source resumes"
                    );
                    if let Some(cp) = self.cp.as_mut() {
                        cp.stopping = None;
                    }
                }
                Ok(next)
            }
        }
    }

    async fn run_gate(&mut self, mut gate: InputGate) -> Result<(), Error> {
        loop {
            let next = match self.cp.as_mut() {
                Some(cp) => tokio::select! {
                    biased;
                    cmd = cp.commands.recv() => Err(cmd),
                    e = gate.next() => Ok(e),
                },
                None => Ok(gate.next().await),
            };
            let element = match next {
                Ok(element) => element?,
                Err(cmd) => {
                    self.on_command(cmd.ok_or(Error::Detached)?)?;
                    continue;
                }
            };
            // Waiting for input is neither busy nor backpressured.
            let started = Instant::now();
            let backpressured = self.metrics.backpressured_total();
            self.metrics
                .alignment_holds
                .store(gate.alignment_holds(), Relaxed);
            match element {
                Element::Batch(b) => {
                    self.metrics
                        .records_in
                        .fetch_add(b.num_rows() as u64, Relaxed);
                    self.process(Element::Batch(b)).await?;
                }
                Element::Barrier(barrier) => {
                    self.checkpoint(barrier, None, gate.last_alignment())
                        .await?;
                }

                Element::EndOfStream => {
                    let flush = self.cp.as_ref().is_none_or(|c| c.stopping.is_none());
                    self.account_busy(started, backpressured);
                    self.end(flush).await?;
                    return Ok(());
                }
                other => self.process(other).await?,
            }
            self.account_busy(started, backpressured);
        }
    }

    /// A command for a subtask without a source: triggers are for sources.
    fn on_command(&mut self, cmd: Command) -> Result<(), Error> {
        match cmd {
            Command::Trigger(_) => {}
            Command::Complete { id, job_final } => {
                self.on_complete(id, job_final)?;
            }
            Command::Abort(id) => {
                if let Some(cp) = self.cp.as_mut()
                    && cp.stopping == Some(id)
                {
                    cp.stopping = None;
                }
            }
        }
        Ok(())
    }

    async fn next_command(&mut self) -> Result<Command, Error> {
        let cp = self.cp.as_mut().ok_or(Error::Detached)?;
        cp.commands.recv().await.ok_or(Error::Detached)
    }

    /// Checkpoint `id` was committed: backends keep its files as their base,
    /// operators (sinks) commit. `false` when it was not news.
    fn on_complete(&mut self, id: CheckpointId, job_final: bool) -> Result<bool, Error> {
        let Some(cp) = self.cp.as_mut() else {
            return Ok(false);
        };
        cp.final_committed |= job_final;
        if cp.last_completed.is_some_and(|c| c >= id) {
            return Ok(false);
        }
        cp.last_completed = Some(id);
        cp.snapshotter
            .complete(id)
            .map_err(|_| Error::SnapshotterStopped)?;
        for op in &mut self.operators {
            op.notify_checkpoint_complete(id)?;
        }
        tracing::debug!(checkpoint_id = id.0, "checkpoint committed");
        Ok(true)
    }

    /// The end of stream: operators flush (unless the job stops at a
    /// savepoint), it goes downstream, and with checkpoints the subtask
    /// waits until its last checkpoint is committed.
    async fn end(&mut self, flush: bool) -> Result<(), Error> {
        let emitted = run_chain(&mut self.operators, Element::EndOfStream, flush, None)?;
        self.emit(emitted).await?;
        while self.cp.as_ref().is_some_and(|c| !c.settled()) {
            let cmd = self.next_command().await?;
            self.on_command(cmd)?;
        }
        Ok(())
    }

    /// The barrier passes down the chain (each operator reports its state
    /// changes); the changes go to the snapshotter, which applies them to
    /// the backends and uploads off this thread, and the barrier goes
    /// downstream. The subtask stops processing only for the chain's part.
    async fn checkpoint(
        &mut self,
        barrier: Barrier,
        source_changes: Option<StateChanges>,
        alignment: Duration,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let mut changes = Vec::with_capacity(self.operators.len());
        let emitted = run_chain(
            &mut self.operators,
            Element::Barrier(barrier),
            true,
            Some(&mut changes),
        )?;
        if let Some(cp) = self.cp.as_mut() {
            let mut source_changes = source_changes;
            let mut by_op: Vec<Option<StateChanges>> = changes.into_iter().map(Some).collect();
            let node_changes: Vec<StateChanges> = cp
                .positions
                .iter()
                .map(|p| match p {
                    StatePosition::Source => source_changes.take().unwrap_or_default(),
                    StatePosition::Operator(i) => {
                        by_op.get_mut(*i).and_then(Option::take).unwrap_or_default()
                    }
                })
                .collect();
            cp.last_snapshot = cp.last_snapshot.max(Some(barrier.checkpoint));
            if barrier.kind == BarrierKind::StopWithSavepoint {
                cp.stopping = Some(barrier.checkpoint);
            }
            cp.snapshotter
                .snapshot(barrier, node_changes, alignment, started.elapsed())
                .map_err(|_| Error::SnapshotterStopped)?;
        }
        self.emit(emitted).await
    }

    /// One element through the chain, then to the outputs.
    async fn process(&mut self, element: Element) -> Result<(), Error> {
        let emitted = run_chain(&mut self.operators, element, true, None)?;
        self.emit(emitted).await
    }

    async fn emit(&mut self, emitted: Vec<Element>) -> Result<(), Error> {
        let late: u64 = self
            .operators
            .iter()
            .map(|o| o.metrics().late_records_dropped)
            .sum();
        self.metrics.late_records_dropped.store(late, Relaxed);
        for e in emitted {
            match &e {
                Element::Batch(b) => {
                    self.metrics
                        .records_out
                        .fetch_add(b.num_rows() as u64, Relaxed);
                }
                Element::Watermark(wm) => self.metrics.watermark.store(*wm, Relaxed),
                Element::LatencyMarker(stamp) if self.outputs.is_empty() => {
                    self.metrics.latency.observe_us(age_us(*stamp));
                }
                Element::LatencyMarker(_) | Element::EndOfStream | Element::Barrier(_) => {}
            }
            if !self.outputs.is_empty() {
                self.outputs.emit(e, &self.metrics).await?;
            }
        }
        // A rate-limited operator asks for a pause; the slot thread keeps
        // running other subtasks, and the input backs up into the exchange.
        if let Some(pause) = self.operators.iter_mut().filter_map(|o| o.throttle()).max() {
            tokio::time::sleep(pause).await;
        }
        Ok(())
    }

    fn account_busy(&self, started: Instant, backpressured_before: std::time::Duration) {
        let blocked = self
            .metrics
            .backpressured_total()
            .saturating_sub(backpressured_before);
        self.metrics
            .add_busy(started.elapsed().saturating_sub(blocked));
    }
}

/// Passes `element` through `operators` in order: what one operator emits is
/// the next one's input. The end of stream makes each operator flush
/// (`on_end`, unless `flush` is false) before it is forwarded, so flushed
/// data precedes it. A barrier makes each operator report its state changes
/// into `changes` (one entry per operator, in order) before it is forwarded.
pub(crate) fn run_chain(
    operators: &mut [Box<dyn Operator>],
    element: Element,
    flush: bool,
    mut changes: Option<&mut Vec<StateChanges>>,
) -> Result<Vec<Element>, Error> {
    let mut current = vec![element];
    let mut out = Collector::new();
    for op in operators.iter_mut() {
        for e in current.drain(..) {
            match e {
                Element::Batch(b) => op.on_batch(b, &mut out)?,
                Element::Watermark(wm) => op.on_watermark(wm, &mut out)?,
                Element::EndOfStream => {
                    if flush {
                        op.on_end(&mut out)?;
                    }
                    out.push(Element::EndOfStream);
                }
                marker @ Element::LatencyMarker(_) => out.push(marker),
                Element::Barrier(b) => {
                    let mut c = StateChanges::new();
                    op.snapshot_state(&b, &mut c)?;
                    if let Some(changes) = changes.as_deref_mut() {
                        changes.push(c);
                    }
                    out.push(Element::Barrier(b));
                }
            }
        }
        current.extend(out.drain());
    }
    Ok(current)
}

/// Microseconds from a marker's stamp (unix ns) to now; 0 if the clock says
/// the marker is from the future (another host's clock ahead of this one).
fn age_us(stamp_unix_ns: i64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    u64::try_from(now.saturating_sub(stamp_unix_ns) / 1000).unwrap_or(0)
}

#[cfg(test)]
#[path = "task_tests.rs"]
mod tests;
