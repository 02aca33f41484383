//! The input gate of a subtask: merges its input channels (one per upstream
//! subtask) into one element stream.
//!
//! Watermark rule: the gate's watermark is the minimum over channels of their
//! last watermark, an ended channel counting as +infinity; it is emitted only
//! when that minimum advances. The end of stream is emitted once every channel
//! has ended. A channel that closes without an end of stream, or delivers a
//! failure, fails the subtask.
//!
//! Barrier rule (aligned checkpoints): a channel that delivered barrier `n`
//! is not read until every channel that has not ended delivered it too; then
//! the gate emits the barrier once, and reads all channels again. Elements
//! behind the barrier wait in their channels, so the producers backpressure.
//! A newer barrier abandons the alignment of an older one (that checkpoint
//! was given up); a barrier not newer than the last one seen, other than the
//! one being aligned, is dropped (its checkpoint is over at this gate).

use super::Error;
use crate::exchange::ChannelItem;
use eddy_sdk::ids::CheckpointId;
use eddy_sdk::operator::{Barrier, Element};
use std::collections::VecDeque;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The watermark and end-of-stream bookkeeping of a gate (no I/O).
#[derive(Debug)]
pub struct GateState {
    watermarks: Vec<i64>,
    ended: Vec<bool>,
    open: usize,
    emitted: i64,
}

impl GateState {
    pub fn new(channels: usize) -> Self {
        GateState {
            watermarks: vec![i64::MIN; channels],
            ended: vec![false; channels],
            open: channels,
            emitted: i64::MIN,
        }
    }

    fn current(&self) -> i64 {
        self.watermarks
            .iter()
            .zip(&self.ended)
            .map(|(&wm, &ended)| if ended { i64::MAX } else { wm })
            .min()
            .unwrap_or(i64::MAX)
    }

    fn advance(&mut self) -> Option<i64> {
        let min = self.current();
        (min > self.emitted).then(|| {
            self.emitted = min;
            min
        })
    }

    /// Channel `ch` reached `wm`; returns the gate's new watermark if it advanced.
    pub fn on_watermark(&mut self, ch: usize, wm: i64) -> Option<i64> {
        // Watermarks of one channel only grow; a stale one changes nothing.
        self.watermarks[ch] = self.watermarks[ch].max(wm);
        self.advance()
    }

    /// Channel `ch` ended; returns the watermark advance it causes, and
    /// whether every channel has now ended.
    pub fn on_end(&mut self, ch: usize) -> (Option<i64>, bool) {
        if !self.ended[ch] {
            self.ended[ch] = true;
            self.open -= 1;
        }
        (self.advance(), self.open == 0)
    }

    pub fn is_ended(&self, ch: usize) -> bool {
        self.ended[ch]
    }

    pub fn all_ended(&self) -> bool {
        self.open == 0
    }
}

/// The barrier a gate is aligning: channels that delivered it are not read
/// again until every open channel has (their producers backpressure).
#[derive(Debug)]
struct Alignment {
    barrier: Barrier,
    blocked: Vec<bool>,
    waiting: usize,
    started: Instant,
}

pub struct InputGate {
    channels: Vec<mpsc::Receiver<ChannelItem>>,
    state: GateState,
    pending: VecDeque<Element>,
    /// Names of the channels, for error messages.
    names: Vec<String>,
    aligning: Option<Alignment>,
    /// The newest checkpoint whose barrier this gate has seen.
    newest: Option<CheckpointId>,
    /// Where the next read starts, so no channel starves the others.
    next_start: usize,
    /// How long the last completed alignment took.
    last_alignment: Duration,
}

impl InputGate {
    /// A gate over `channels`, each with a name for error messages.
    pub fn new(channels: Vec<(String, mpsc::Receiver<ChannelItem>)>) -> Self {
        let (names, channels): (Vec<String>, Vec<_>) = channels.into_iter().unzip();
        InputGate {
            state: GateState::new(names.len()),
            channels,
            pending: VecDeque::new(),
            names,
            aligning: None,
            newest: None,
            next_start: 0,
            last_alignment: Duration::ZERO,
        }
    }

    /// How long the last barrier waited for all channels.
    pub fn last_alignment(&self) -> Duration {
        self.last_alignment
    }

    /// Polls the channels that are neither ended nor blocked by an alignment.
    fn poll_channels(&mut self, cx: &mut Context<'_>) -> Poll<(usize, Option<ChannelItem>)> {
        let n = self.channels.len();
        for k in 0..n {
            let ch = (self.next_start + k) % n;
            let blocked = self.aligning.as_ref().is_some_and(|a| a.blocked[ch]);
            if blocked || self.state.is_ended(ch) {
                continue;
            }
            if let Poll::Ready(item) = self.channels[ch].poll_recv(cx) {
                self.next_start = (ch + 1) % n;
                return Poll::Ready((ch, item));
            }
        }
        Poll::Pending
    }

    /// Channel `ch` delivered `barrier`: block it, and release the barrier
    /// once every channel that has not ended delivered it too.
    fn on_barrier(&mut self, ch: usize, barrier: Barrier) {
        match &self.aligning {
            Some(a) if barrier.checkpoint == a.barrier.checkpoint => {}
            Some(a) if barrier.checkpoint > a.barrier.checkpoint => {
                // The older checkpoint was given up upstream: so is its alignment.
                tracing::debug!(
                    checkpoint_id = a.barrier.checkpoint.0,
                    newer = barrier.checkpoint.0,
                    "abandoning the alignment of an older barrier"
                );
                self.aligning = None;
            }
            // Older than, or the same as, a barrier already released or
            // abandoned: its checkpoint is over here.
            _ if self.newest.is_some_and(|n| barrier.checkpoint <= n) => return,
            _ => {}
        }
        self.newest = Some(barrier.checkpoint);
        let n = self.channels.len();
        let open = (0..n).filter(|&c| !self.state.is_ended(c)).count();
        let a = self.aligning.get_or_insert_with(|| Alignment {
            barrier,
            blocked: vec![false; n],
            waiting: open,
            started: Instant::now(),
        });
        if !a.blocked[ch] {
            a.blocked[ch] = true;
            a.waiting = a.waiting.saturating_sub(1);
        }
        self.release_if_aligned();
    }

    fn release_if_aligned(&mut self) {
        if self.aligning.as_ref().is_some_and(|a| a.waiting == 0)
            && let Some(a) = self.aligning.take()
        {
            self.last_alignment = a.started.elapsed();
            self.pending.push_back(Element::Barrier(a.barrier));
        }
    }

    /// The next element: a batch, an advanced watermark, an aligned barrier,
    /// or the end of stream once every channel has ended. Cancel-safe: an
    /// element read is never lost when the returned future is dropped.
    pub async fn next(&mut self) -> Result<Element, Error> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            if self.state.all_ended() {
                return Ok(Element::EndOfStream);
            }
            let (ch, item) = std::future::poll_fn(|cx| self.poll_channels(cx)).await;
            match item {
                Some(Ok(Element::Batch(b))) => return Ok(Element::Batch(b)),
                // Markers are never aligned: they measure the queues as they are.
                Some(Ok(marker @ Element::LatencyMarker(_))) => return Ok(marker),
                Some(Ok(Element::Watermark(wm))) => {
                    if let Some(wm) = self.state.on_watermark(ch, wm) {
                        return Ok(Element::Watermark(wm));
                    }
                }
                Some(Ok(Element::Barrier(b))) => self.on_barrier(ch, b),
                Some(Ok(Element::EndOfStream)) => {
                    let (wm, all) = self.state.on_end(ch);
                    if let Some(wm) = wm {
                        self.pending.push_back(Element::Watermark(wm));
                    }
                    // An ended channel sends no barrier: stop waiting for it.
                    if let Some(a) = self.aligning.as_mut()
                        && !a.blocked[ch]
                    {
                        a.blocked[ch] = true;
                        a.waiting = a.waiting.saturating_sub(1);
                    }
                    self.release_if_aligned();
                    if all {
                        self.pending.push_back(Element::EndOfStream);
                    }
                }
                Some(Err(failure)) => return Err(Error::Input(failure)),
                None => return Err(Error::InputClosed(self.names[ch].clone())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::ChannelFailure;

    #[test]
    fn gate_state_emits_min_only_when_it_advances() {
        let mut g = GateState::new(2);
        assert_eq!(
            g.on_watermark(0, 10),
            None,
            "channel 1 has no watermark yet"
        );
        assert_eq!(g.on_watermark(1, 5), Some(5));
        assert_eq!(g.on_watermark(1, 7), Some(7));
        assert_eq!(
            g.on_watermark(1, 6),
            None,
            "a stale watermark changes nothing"
        );
        assert_eq!(g.on_watermark(1, 20), Some(10));
        assert_eq!(g.on_watermark(0, 10), None);
    }

    #[test]
    fn gate_state_ended_channel_counts_as_infinity() {
        let mut g = GateState::new(2);
        g.on_watermark(0, 3);
        assert_eq!(g.on_watermark(1, 8), Some(3));
        assert_eq!(g.on_end(0), (Some(8), false));
        assert_eq!(g.on_end(1), (Some(i64::MAX), true));
    }

    #[tokio::test]
    async fn input_gate_merges_watermarks_and_ends_after_all_channels() {
        let (tx0, rx0) = mpsc::channel(8);
        let (tx1, rx1) = mpsc::channel(8);
        let mut gate = InputGate::new(vec![("a".into(), rx0), ("b".into(), rx1)]);
        tx0.send(Ok(Element::Watermark(100))).await.unwrap();
        tx1.send(Ok(Element::Watermark(50))).await.unwrap();
        assert!(matches!(gate.next().await.unwrap(), Element::Watermark(50)));
        tx0.send(Ok(Element::Watermark(i64::MAX))).await.unwrap();
        tx0.send(Ok(Element::EndOfStream)).await.unwrap();
        tx1.send(Ok(Element::Watermark(60))).await.unwrap();
        // Whichever channel the gate reads first, the minimum becomes 60.
        assert!(matches!(gate.next().await.unwrap(), Element::Watermark(60)));
        tx1.send(Ok(Element::EndOfStream)).await.unwrap();
        assert!(matches!(
            gate.next().await.unwrap(),
            Element::Watermark(i64::MAX)
        ));
        assert!(matches!(gate.next().await.unwrap(), Element::EndOfStream));
    }

    #[tokio::test]
    async fn input_gate_channel_closed_without_end_fails() {
        let (tx, rx) = mpsc::channel(1);
        let mut gate = InputGate::new(vec![("up[0]".into(), rx)]);
        drop(tx);
        let err = gate.next().await.unwrap_err();
        assert!(err.to_string().contains("up[0]"), "{err}");
    }

    #[tokio::test]
    async fn input_gate_channel_failure_fails_with_reason() {
        let (tx, rx) = mpsc::channel(1);
        let mut gate = InputGate::new(vec![("up[0]".into(), rx)]);
        tx.send(Err(ChannelFailure("undecodable Arrow IPC frame".into())))
            .await
            .unwrap();
        let err = gate.next().await.unwrap_err();
        assert!(
            eddy_sdk::error::error_chain(&err)
                .join(": ")
                .contains("undecodable"),
            "{err}"
        );
    }

    fn barrier(n: u64) -> Element {
        Element::Barrier(Barrier {
            checkpoint: eddy_sdk::ids::CheckpointId(n),
            timestamp_ms: 0,
            kind: eddy_sdk::operator::BarrierKind::Checkpoint,
        })
    }

    fn batch(v: i64) -> Element {
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("v", arrow::datatypes::DataType::Int64, false),
        ]));
        Element::Batch(
            arrow::record_batch::RecordBatch::try_new(
                schema,
                vec![std::sync::Arc::new(arrow::array::Int64Array::from(vec![v]))],
            )
            .unwrap(),
        )
    }

    fn value(e: &Element) -> Option<i64> {
        match e {
            Element::Batch(b) => Some(
                b.column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap()
                    .value(0),
            ),
            _ => None,
        }
    }

    /// Rows behind a barrier on one channel wait until the barrier arrived on
    /// every channel; then the barrier is emitted once, before them.
    #[tokio::test]
    async fn input_gate_aligns_barriers_and_holds_back_rows_behind_them() {
        let (tx0, rx0) = mpsc::channel(8);
        let (tx1, rx1) = mpsc::channel(8);
        let mut gate = InputGate::new(vec![("a".into(), rx0), ("b".into(), rx1)]);
        tx0.send(Ok(batch(1))).await.unwrap();
        tx0.send(Ok(barrier(7))).await.unwrap();
        tx0.send(Ok(batch(100))).await.unwrap();
        tx1.send(Ok(batch(2))).await.unwrap();
        let mut before = Vec::new();
        for _ in 0..2 {
            before.push(value(&gate.next().await.unwrap()).unwrap());
        }
        before.sort_unstable();
        assert_eq!(before, [1, 2], "only rows before the barrier pass");
        // Channel a is blocked: its row 100 must not come out yet.
        let pending = tokio::time::timeout(std::time::Duration::from_millis(50), gate.next()).await;
        assert!(pending.is_err(), "a blocked channel was read: {pending:?}");
        tx1.send(Ok(barrier(7))).await.unwrap();
        assert!(matches!(gate.next().await.unwrap(), Element::Barrier(b) if b.checkpoint.0 == 7));
        assert_eq!(value(&gate.next().await.unwrap()), Some(100));
    }

    /// A channel that ends during an alignment no longer holds it up.
    #[tokio::test]
    async fn input_gate_ended_channel_completes_an_alignment() {
        let (tx0, rx0) = mpsc::channel(8);
        let (tx1, rx1) = mpsc::channel(8);
        let mut gate = InputGate::new(vec![("a".into(), rx0), ("b".into(), rx1)]);
        tx0.send(Ok(barrier(3))).await.unwrap();
        tx1.send(Ok(Element::Watermark(i64::MAX))).await.unwrap();
        tx1.send(Ok(Element::EndOfStream)).await.unwrap();
        let mut seen = Vec::new();
        loop {
            match gate.next().await.unwrap() {
                Element::Barrier(b) => {
                    seen.push(b.checkpoint.0);
                    break;
                }
                _ => continue,
            }
        }
        assert_eq!(seen, [3]);
    }

    /// A newer barrier abandons the alignment of an older one (given up
    /// upstream); a late barrier of the abandoned checkpoint is dropped.
    #[tokio::test]
    async fn input_gate_newer_barrier_abandons_older_alignment() {
        let (tx0, rx0) = mpsc::channel(8);
        let (tx1, rx1) = mpsc::channel(8);
        let mut gate = InputGate::new(vec![("a".into(), rx0), ("b".into(), rx1)]);
        tx0.send(Ok(barrier(1))).await.unwrap();
        tx1.send(Ok(barrier(2))).await.unwrap();
        tx0.send(Ok(barrier(2))).await.unwrap();
        tx1.send(Ok(barrier(1))).await.unwrap();
        tx1.send(Ok(batch(5))).await.unwrap();
        let mut out = Vec::new();
        for _ in 0..2 {
            match gate.next().await.unwrap() {
                Element::Barrier(b) => out.push(format!("b{}", b.checkpoint.0)),
                e => out.push(format!("v{}", value(&e).unwrap())),
            }
        }
        assert_eq!(out, ["b2", "v5"]);
    }
}
