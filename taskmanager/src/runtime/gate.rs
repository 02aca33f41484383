//! The input gate of a subtask: merges its input channels (one per upstream
//! subtask) into one element stream.
//!
//! Watermark rule: the gate's watermark is the minimum over channels of their
//! last watermark, an ended channel counting as +infinity; it is emitted only
//! when that minimum advances. The end of stream is emitted once every channel
//! has ended. A channel that closes without an end of stream, or delivers a
//! failure, fails the subtask.

use super::Error;
use crate::exchange::ChannelItem;
use eddy_sdk::operator::Element;
use futures::stream::{self, BoxStream, SelectAll, StreamExt};
use std::collections::VecDeque;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

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

/// A channel's items tagged with its index; `None` once it closed.
type Tagged = (usize, Option<ChannelItem>);

pub struct InputGate {
    inputs: SelectAll<BoxStream<'static, Tagged>>,
    state: GateState,
    pending: VecDeque<Element>,
    /// Names of the channels, for error messages.
    names: Vec<String>,
}

impl InputGate {
    /// A gate over `channels`, each with a name for error messages.
    pub fn new(channels: Vec<(String, mpsc::Receiver<ChannelItem>)>) -> Self {
        let mut names = Vec::with_capacity(channels.len());
        let mut inputs = SelectAll::new();
        for (i, (name, rx)) in channels.into_iter().enumerate() {
            names.push(name);
            let s = ReceiverStream::new(rx)
                .map(move |item| (i, Some(item)))
                .chain(stream::once(async move { (i, None) }));
            inputs.push(s.boxed());
        }
        InputGate {
            state: GateState::new(names.len()),
            inputs,
            pending: VecDeque::new(),
            names,
        }
    }

    /// The next element: a batch, an advanced watermark, or the end of stream
    /// once every channel has ended.
    pub async fn next(&mut self) -> Result<Element, Error> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            if self.state.all_ended() {
                return Ok(Element::EndOfStream);
            }
            let Some((ch, item)) = self.inputs.next().await else {
                // Every stream yields its `None` marker before SelectAll drops
                // it, so this means every channel closed: handled below.
                return Err(Error::InputClosed(self.names.join(", ")));
            };
            match item {
                Some(Ok(Element::Batch(b))) => return Ok(Element::Batch(b)),
                // Markers are never aligned: they measure the queues as they are.
                Some(Ok(marker @ Element::LatencyMarker(_))) => return Ok(marker),
                Some(Ok(Element::Watermark(wm))) => {
                    if let Some(wm) = self.state.on_watermark(ch, wm) {
                        return Ok(Element::Watermark(wm));
                    }
                }
                Some(Ok(Element::EndOfStream)) => {
                    let (wm, all) = self.state.on_end(ch);
                    if let Some(wm) = wm {
                        self.pending.push_back(Element::Watermark(wm));
                    }
                    if all {
                        self.pending.push_back(Element::EndOfStream);
                    }
                }
                Some(Err(failure)) => return Err(Error::Input(failure)),
                None if self.state.is_ended(ch) => {}
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
}
