//! The receiving side of remote channels (`ExchangeService.Open`).
//!
//! The first frame must be the channel header; the server then claims the
//! consumer's queue from the [`Registry`] (waiting, bounded, for deploy to
//! register it), grants `channel-credits` credits, and pumps frames into the
//! queue, returning one credit per frame the queue accepted. A frame it cannot
//! make sense of fails the stream with INVALID_ARGUMENT and hands the consumer
//! a [`ChannelFailure`](super::ChannelFailure), so the consumer task fails
//! with the reason: nothing is dropped silently.

use super::{ChannelFailure, ChannelItem, ChannelKey, InputEndpoint, IpcDecoder, Registry};
use crate::metrics::ExchangeBytes;
use eddy_proto::v1 as pb;
use eddy_proto::v1::exchange_frame::Kind;
use eddy_sdk::operator::Element;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub struct ExchangeServer {
    registry: Registry,
    credits: u32,
    /// How long a stream waits for its consumer to be registered.
    claim_wait: Duration,
    bytes: ExchangeBytes,
}

impl ExchangeServer {
    pub fn new(
        registry: Registry,
        credits: u32,
        claim_wait: Duration,
        bytes: ExchangeBytes,
    ) -> Self {
        ExchangeServer {
            registry,
            credits: credits.max(1),
            claim_wait,
            bytes,
        }
    }

    pub fn into_service(self) -> pb::exchange_service_server::ExchangeServiceServer<Self> {
        pb::exchange_service_server::ExchangeServiceServer::new(self)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }
}

type CreditTx = mpsc::Sender<Result<pb::ExchangeCredit, Status>>;

#[tonic::async_trait]
impl pb::exchange_service_server::ExchangeService for ExchangeServer {
    type OpenStream = ReceiverStream<Result<pb::ExchangeCredit, Status>>;

    async fn open(
        &self,
        request: Request<Streaming<pb::ExchangeFrame>>,
    ) -> Result<Response<Self::OpenStream>, Status> {
        let mut frames = request.into_inner();
        let header = match frames.message().await? {
            Some(pb::ExchangeFrame {
                kind: Some(Kind::Header(h)),
            }) => h,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first frame of an exchange stream must be its channel header",
                ));
            }
            None => {
                return Err(Status::invalid_argument(
                    "the exchange stream ended before its channel header",
                ));
            }
        };
        let key = ChannelKey::from_header(&header);
        let endpoint = self
            .registry
            .claim(&key, self.claim_wait)
            .await
            .map_err(|e| match e {
                super::Error::AlreadyClaimed { .. } => Status::already_exists(e.to_string()),
                other => Status::not_found(other.to_string()),
            })?;
        // Room for every grant the producer may leave unread: it holds at most
        // `credits` unspent, so sends on this channel never wait long.
        let (credit_tx, credit_rx) = mpsc::channel(self.credits as usize + 1);
        let _ = credit_tx.try_send(Ok(pb::ExchangeCredit {
            credits: self.credits,
        }));
        tracing::debug!(channel = %key, "exchange channel opened");
        tokio::spawn(pump(key, frames, endpoint, credit_tx, self.bytes.clone()));
        Ok(Response::new(ReceiverStream::new(credit_rx)))
    }
}

/// Moves frames into the consumer's queue until the end of stream, a broken
/// stream or a garbage frame.
async fn pump(
    key: ChannelKey,
    mut frames: Streaming<pb::ExchangeFrame>,
    endpoint: InputEndpoint,
    credits: CreditTx,
    bytes: ExchangeBytes,
) {
    let mut decoder = IpcDecoder::new();
    loop {
        let frame = match frames.message().await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                fail(
                    &key,
                    &endpoint,
                    &credits,
                    None,
                    "the producer closed the stream before its end of stream",
                )
                .await;
                return;
            }
            Err(status) => {
                let reason = format!(
                    "the producer's stream broke before its end of stream: {}",
                    status.message()
                );
                fail(&key, &endpoint, &credits, None, &reason).await;
                return;
            }
        };
        let element = match frame.kind {
            Some(Kind::ArrowIpc(data)) => {
                let size = data.len() as u64;
                match decoder.decode(data) {
                    Ok(batch) => {
                        endpoint.metrics.bytes_in.fetch_add(size, Relaxed);
                        bytes.received.inc_by(size);
                        Element::Batch(batch)
                    }
                    Err(e) => {
                        let reason = format!("undecodable Arrow IPC frame: {e}");
                        fail(
                            &key,
                            &endpoint,
                            &credits,
                            Some(Status::invalid_argument(&reason)),
                            &reason,
                        )
                        .await;
                        return;
                    }
                }
            }
            Some(Kind::WatermarkMs(wm)) => Element::Watermark(wm),
            Some(Kind::LatencyMarkerUnixNs(stamp)) => Element::LatencyMarker(stamp),
            Some(Kind::EndOfStream(_)) => Element::EndOfStream,
            Some(Kind::Barrier(b)) => match super::remote::barrier_from_pb(&b) {
                Some(b) => Element::Barrier(b),
                None => {
                    let reason = format!("a barrier of unknown kind {}", b.kind);
                    fail(
                        &key,
                        &endpoint,
                        &credits,
                        Some(Status::invalid_argument(&reason)),
                        &reason,
                    )
                    .await;
                    return;
                }
            },
            Some(Kind::Header(_)) => {
                let reason = "a channel header after the first frame";
                fail(
                    &key,
                    &endpoint,
                    &credits,
                    Some(Status::invalid_argument(reason)),
                    reason,
                )
                .await;
                return;
            }
            None => {
                let reason = "an exchange frame without content";
                fail(
                    &key,
                    &endpoint,
                    &credits,
                    Some(Status::invalid_argument(reason)),
                    reason,
                )
                .await;
                return;
            }
        };
        let end = matches!(element, Element::EndOfStream);
        if endpoint.queue.send(Ok(element)).await.is_err() {
            // The consumer is gone (canceled or failed): tell the producer.
            let _ = credits
                .send(Err(Status::cancelled(format!(
                    "the consumer of channel {key} has gone away"
                ))))
                .await;
            return;
        }
        if end {
            // Dropping the credit sender completes the response stream: the
            // producer's close() learns everything was delivered.
            tracing::debug!(channel = %key, "exchange channel ended");
            return;
        }
        if credits
            .send(Ok(pb::ExchangeCredit { credits: 1 }))
            .await
            .is_err()
        {
            return; // the producer went away; its stream error follows
        }
    }
}

async fn fail(
    key: &ChannelKey,
    endpoint: &InputEndpoint,
    credits: &CreditTx,
    status: Option<Status>,
    reason: &str,
) {
    tracing::warn!(channel = %key, reason, "exchange channel failed");
    let item: ChannelItem = Err(ChannelFailure(format!("channel {key}: {reason}")));
    // A consumer that has gone away needs no explanation.
    let _ = endpoint.queue.send(item).await;
    if let Some(status) = status {
        let _ = credits.send(Err(status)).await;
    }
}
