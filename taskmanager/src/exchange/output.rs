//! The producer end of one channel: a local queue or a remote stream. Every
//! wait for room (local) or credit (remote) is counted as backpressure.

use super::{ChannelItem, ChannelKey, Error, RemoteSender, Result};
use crate::runtime::metrics::SubtaskMetrics;
use eddy_sdk::operator::Element;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Backpressure is accounted at least this often while a wait lasts, so the
/// per-second ratios see a long wait while it happens, not only when it ends.
pub(super) const BACKPRESSURE_SLICE: Duration = Duration::from_millis(100);

pub enum OutputChannel {
    /// The consumer runs on this TaskManager: its bounded queue, no copy.
    Local {
        key: ChannelKey,
        queue: mpsc::Sender<ChannelItem>,
    },
    /// The consumer runs on another TaskManager.
    Remote(Box<RemoteSender>),
}

impl OutputChannel {
    pub fn key(&self) -> &ChannelKey {
        match self {
            OutputChannel::Local { key, .. } => key,
            OutputChannel::Remote(r) => r.key(),
        }
    }

    /// Sends one element, waiting while the consumer has no room.
    pub async fn send(&mut self, element: Element, metrics: &SubtaskMetrics) -> Result<()> {
        match self {
            OutputChannel::Local { key, queue } => send_local(key, queue, element, metrics).await,
            OutputChannel::Remote(remote) => remote.send(element, metrics).await,
        }
    }

    /// Called after the end of stream was sent: waits until the consumer's
    /// side has taken everything (remote), so FINISHED means delivered.
    pub async fn close(self) -> Result<()> {
        match self {
            OutputChannel::Local { .. } => Ok(()),
            OutputChannel::Remote(remote) => remote.close().await,
        }
    }
}

async fn send_local(
    key: &ChannelKey,
    queue: &mpsc::Sender<ChannelItem>,
    element: Element,
    metrics: &SubtaskMetrics,
) -> Result<()> {
    let element = match queue.try_send(Ok(element)) {
        Ok(()) => return Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => {
            return Err(Error::ConsumerGone { key: key.clone() });
        }
        Err(mpsc::error::TrySendError::Full(item)) => item,
    };
    let mut since = Instant::now();
    loop {
        match tokio::time::timeout(BACKPRESSURE_SLICE, queue.reserve()).await {
            Ok(Ok(permit)) => {
                metrics.add_backpressure(since.elapsed());
                permit.send(element);
                return Ok(());
            }
            Ok(Err(_closed)) => return Err(Error::ConsumerGone { key: key.clone() }),
            Err(_slice_elapsed) => {
                metrics.add_backpressure(since.elapsed());
                since = Instant::now();
            }
        }
    }
}
