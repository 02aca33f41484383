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
//!
//! Watermark alignment (opt-in, a window's `watermark_alignment`): a channel
//! whose watermark is more than `max_drift` ahead of the slowest channel's is
//! not read until the slowest catches up, so a fast producer backpressures
//! instead of filling the window with state the slow one's watermark cannot
//! close yet (Flink's FLIP-182, done at the consumer: no coordinator round
//! trip, and the bound holds between any producers of one input). The
//! slowest channel is always read, so alignment never stalls a gate whose
//! producers make progress. Channels that ended or have sent no watermark
//! yet do not hold others back, and a barrier alignment suspends it: every
//! channel must be read up to the barrier.

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
    /// Watermark alignment's bound, in ms of event time (`None`: off).
    max_drift_ms: Option<i64>,
    /// Channels not read at the last poll because they ran ahead.
    held: Vec<bool>,
    /// How many times a channel started being held back.
    holds: u64,
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
            max_drift_ms: None,
            held: Vec::new(),
            holds: 0,
        }
    }

    /// Turns on watermark alignment (see the module doc): no channel is read
    /// while its watermark is more than `max_drift_ms` ahead of the slowest.
    pub fn with_max_drift(mut self, max_drift_ms: Option<i64>) -> Self {
        self.max_drift_ms = max_drift_ms.map(|d| d.max(0));
        self.held = vec![false; self.channels.len()];
        self
    }

    /// How many times watermark alignment started holding a channel back.
    pub fn alignment_holds(&self) -> u64 {
        self.holds
    }

    /// The highest watermark a channel may have and still be read: the
    /// slowest channel's plus the drift (`None`: nothing is held back).
    fn drift_limit(&self) -> Option<i64> {
        let drift = self.max_drift_ms?;
        if self.aligning.is_some() {
            return None;
        }
        self.state
            .watermarks
            .iter()
            .zip(&self.state.ended)
            .filter(|&(&wm, &ended)| !ended && wm > i64::MIN)
            .map(|(&wm, _)| wm)
            .min()
            .map(|slowest| slowest.saturating_add(drift))
    }

    /// How long the last barrier waited for all channels.
    pub fn last_alignment(&self) -> Duration {
        self.last_alignment
    }

    /// Polls the channels that are neither ended nor blocked by an alignment.
    fn poll_channels(&mut self, cx: &mut Context<'_>) -> Poll<(usize, Option<ChannelItem>)> {
        let n = self.channels.len();
        let limit = self.drift_limit();
        for k in 0..n {
            let ch = (self.next_start + k) % n;
            let blocked = self.aligning.as_ref().is_some_and(|a| a.blocked[ch]);
            if blocked || self.state.is_ended(ch) {
                continue;
            }
            if let Some(held) = self.held.get_mut(ch) {
                let ahead = limit.is_some_and(|l| self.state.watermarks[ch] > l);
                if ahead && !*held {
                    self.holds += 1;
                }
                *held = ahead;
                if ahead {
                    continue;
                }
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
#[path = "gate_tests.rs"]
mod tests;
