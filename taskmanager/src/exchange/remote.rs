//! The producer side of a remote channel: one `ExchangeService.Open` stream to
//! the consumer's TaskManager. The header frame opens the stream; every
//! following frame (batch, watermark, end of stream) spends one credit, and
//! the sender waits for the receiver's grants when it has none.

use super::output::BACKPRESSURE_SLICE;
use super::{ChannelKey, Error, IpcEncoder, Result};
use crate::metrics::ExchangeBytes;
use crate::runtime::metrics::SubtaskMetrics;
use eddy_proto::v1 as pb;
use eddy_proto::v1::exchange_frame::Kind;
use eddy_sdk::operator::Element;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// How long and how often a producer retries opening its channel.
#[derive(Clone, Debug)]
pub struct ConnectPolicy {
    /// Give up (the producing subtask fails, class infrastructure) after this.
    pub deadline: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for ConnectPolicy {
    fn default() -> Self {
        ConnectPolicy {
            deadline: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

pub struct RemoteSender {
    key: ChannelKey,
    addr: String,
    frames: mpsc::Sender<pb::ExchangeFrame>,
    credits: tonic::Streaming<pb::ExchangeCredit>,
    available: u32,
    encoder: IpcEncoder,
    bytes: ExchangeBytes,
}

impl RemoteSender {
    /// Opens the channel `key` at the TaskManager serving `addr`, over
    /// `channel` (a connection to it, possibly shared with other exchange
    /// channels), retrying while it is unreachable. `queue` bounds the frames
    /// buffered before the transport (credits bound them anyway).
    pub async fn connect(
        key: ChannelKey,
        addr: &str,
        channel: tonic::transport::Channel,
        policy: &ConnectPolicy,
        queue: usize,
        bytes: ExchangeBytes,
    ) -> Result<RemoteSender> {
        let mut client = pb::exchange_service_client::ExchangeServiceClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let started = Instant::now();
        let mut backoff = policy.initial_backoff;
        loop {
            let (frames, rx) = mpsc::channel(queue.max(1) + 1);
            let header = pb::ExchangeFrame {
                kind: Some(Kind::Header(key.to_header())),
            };
            // The queue is new and has room: the header is its first frame.
            let _ = frames.try_send(header);
            match client.open(ReceiverStream::new(rx)).await {
                Ok(response) => {
                    return Ok(RemoteSender {
                        key,
                        addr: addr.to_string(),
                        frames,
                        credits: response.into_inner(),
                        available: 0,
                        encoder: IpcEncoder::new(),
                        bytes,
                    });
                }
                Err(status)
                    if status.code() == tonic::Code::Unavailable
                        && started.elapsed() + backoff < policy.deadline =>
                {
                    tracing::debug!(channel = %key, addr, error = %status, "exchange peer unreachable, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(policy.max_backoff);
                }
                Err(source) => {
                    return Err(Error::Connect {
                        key,
                        addr: addr.to_string(),
                        waited: started.elapsed(),
                        source,
                    });
                }
            }
        }
    }

    pub fn key(&self) -> &ChannelKey {
        &self.key
    }

    fn remote_error(&self, source: tonic::Status) -> Error {
        Error::Remote {
            key: self.key.clone(),
            addr: self.addr.clone(),
            source,
        }
    }

    /// Waits for one credit and spends it.
    async fn acquire_credit(&mut self, metrics: &SubtaskMetrics) -> Result<()> {
        let mut since = Instant::now();
        while self.available == 0 {
            match tokio::time::timeout(BACKPRESSURE_SLICE, self.credits.message()).await {
                Err(_slice_elapsed) => {}
                Ok(Ok(Some(grant))) => {
                    self.available = self.available.saturating_add(grant.credits)
                }
                Ok(Ok(None)) => {
                    return Err(self.remote_error(tonic::Status::unavailable(
                        "the receiver closed the channel",
                    )));
                }
                Ok(Err(status)) => return Err(self.remote_error(status)),
            }
            metrics.add_backpressure(since.elapsed());
            since = Instant::now();
        }
        self.available -= 1;
        Ok(())
    }

    pub async fn send(&mut self, element: Element, metrics: &SubtaskMetrics) -> Result<()> {
        let (kind, size) = match element {
            Element::Batch(batch) => {
                let bytes = self
                    .encoder
                    .encode(&batch)
                    .map_err(|source| Error::Encode {
                        key: self.key.clone(),
                        source,
                    })?;
                let size = bytes.len() as u64;
                (Kind::ArrowIpc(bytes), size)
            }
            Element::Watermark(wm) => (Kind::WatermarkMs(wm), 0),
            Element::LatencyMarker(stamp) => (Kind::LatencyMarkerUnixNs(stamp), 0),
            Element::EndOfStream => (Kind::EndOfStream(pb::EndOfStream {}), 0),
            Element::Barrier(b) => (Kind::Barrier(barrier_to_pb(&b)), 0),
        };
        self.acquire_credit(metrics).await?;
        if self
            .frames
            .send(pb::ExchangeFrame { kind: Some(kind) })
            .await
            .is_err()
        {
            // The transport dropped the request stream: the response says why.
            let status = match self.credits.message().await {
                Err(status) => status,
                Ok(_) => tonic::Status::unavailable("the exchange stream closed"),
            };
            return Err(self.remote_error(status));
        }
        if size > 0 {
            metrics.bytes_out.fetch_add(size, Relaxed);
            self.bytes.sent.inc_by(size);
        }
        Ok(())
    }

    /// Ends the request stream and waits (bounded) for the receiver to
    /// finish the response, which it does once it delivered the end of stream.
    pub async fn close(self) -> Result<()> {
        let RemoteSender {
            key,
            addr,
            frames,
            mut credits,
            ..
        } = self;
        drop(frames);
        let drain = async {
            loop {
                match credits.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(()),
                    Err(status) => return Err(status),
                }
            }
        };
        let status = match tokio::time::timeout(Duration::from_secs(30), drain).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(status)) => status,
            Err(_) => {
                tonic::Status::deadline_exceeded("the receiver did not confirm the end of stream")
            }
        };
        Err(Error::Remote {
            key,
            addr,
            source: status,
        })
    }
}

/// The wire form of a barrier.
pub(crate) fn barrier_to_pb(b: &eddy_sdk::operator::Barrier) -> pb::Barrier {
    use eddy_sdk::operator::BarrierKind as K;
    let kind = match b.kind {
        K::Checkpoint => pb::BarrierKind::Checkpoint,
        K::Savepoint => pb::BarrierKind::Savepoint,
        K::StopWithSavepoint => pb::BarrierKind::StopWithSavepoint,
    };
    pb::Barrier {
        checkpoint_id: b.checkpoint.0,
        timestamp_ms: b.timestamp_ms,
        kind: kind as i32,
    }
}

/// A barrier from the wire; `None` for an unknown kind (a newer peer).
pub(crate) fn barrier_from_pb(b: &pb::Barrier) -> Option<eddy_sdk::operator::Barrier> {
    use eddy_sdk::operator::BarrierKind as K;
    let kind = match pb::BarrierKind::try_from(b.kind).ok()? {
        pb::BarrierKind::Checkpoint => K::Checkpoint,
        pb::BarrierKind::Savepoint => K::Savepoint,
        pb::BarrierKind::StopWithSavepoint => K::StopWithSavepoint,
    };
    Some(eddy_sdk::operator::Barrier {
        checkpoint: eddy_sdk::ids::CheckpointId(b.checkpoint_id),
        timestamp_ms: b.timestamp_ms,
        kind,
    })
}
