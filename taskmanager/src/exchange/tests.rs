//! Exchange tests over real tonic streams on 127.0.0.1:0.

use super::server::ExchangeServer;
use super::*;
use crate::metrics::ExchangeBytes;
use crate::runtime::metrics::SubtaskMetrics;
use arrow::array::Int64Array;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use eddy_proto::v1::exchange_frame::Kind;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;

struct TestServer {
    addr: String,
    registry: Registry,
    bytes: ExchangeBytes,
    stop: CancellationToken,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(credits: u32, claim_wait: Duration) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let registry = Registry::new();
    let bytes = ExchangeBytes::default();
    let stop = CancellationToken::new();
    let service =
        ExchangeServer::new(registry.clone(), credits, claim_wait, bytes.clone()).into_service();
    let server = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            stop.clone().cancelled_owned(),
        );
    tokio::spawn(server);
    TestServer {
        addr,
        registry,
        bytes,
        stop,
    }
}

fn key() -> ChannelKey {
    ChannelKey {
        job_id: JobId("job".into()),
        attempt: Attempt(0),
        from_vertex: VertexId(0),
        from_index: 1,
        to_vertex: VertexId(1),
        to_index: 0,
    }
}

fn batch(n: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..n))]).unwrap()
}

/// Registers a consumer with a queue of `capacity` and returns its receiver.
fn register(
    server: &TestServer,
    capacity: usize,
) -> (mpsc::Receiver<ChannelItem>, Arc<SubtaskMetrics>) {
    let (queue, rx) = mpsc::channel(capacity);
    let metrics = Arc::new(SubtaskMetrics::default());
    server.registry.register(
        key(),
        InputEndpoint {
            queue,
            metrics: metrics.clone(),
        },
    );
    (rx, metrics)
}

async fn connect(server: &TestServer, credits: usize) -> Result<RemoteSender> {
    let policy = ConnectPolicy {
        deadline: Duration::from_secs(5),
        ..Default::default()
    };
    let channel = eddy_sdk::server::rpc::connect(&server.addr).unwrap();
    RemoteSender::connect(
        key(),
        &server.addr,
        channel,
        &policy,
        credits,
        ExchangeBytes::default(),
    )
    .await
}

/// Batches, a watermark and the end of stream arrive in order, decoded, and
/// `close` confirms delivery.
#[tokio::test]
async fn remote_channel_roundtrips_batches_watermarks_and_end() {
    let server = serve(4, Duration::from_secs(5)).await;
    let (mut rx, consumer) = register(&server, 4);
    let producer = SubtaskMetrics::default();
    let mut sender = connect(&server, 4).await.unwrap();
    sender
        .send(Element::Batch(batch(3)), &producer)
        .await
        .unwrap();
    sender
        .send(Element::Watermark(42), &producer)
        .await
        .unwrap();
    sender
        .send(Element::Batch(batch(5)), &producer)
        .await
        .unwrap();
    sender.send(Element::EndOfStream, &producer).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(rx.recv().await.unwrap().unwrap());
    }
    sender.close().await.unwrap();
    assert!(
        matches!(&got[0], Element::Batch(b) if *b == batch(3)),
        "{got:?}"
    );
    assert!(matches!(got[1], Element::Watermark(42)));
    assert!(matches!(&got[2], Element::Batch(b) if *b == batch(5)));
    assert!(matches!(got[3], Element::EndOfStream));
    let sent = producer.bytes_out.load(Ordering::Relaxed);
    assert!(sent > 0);
    assert_eq!(consumer.bytes_in.load(Ordering::Relaxed), sent);
    assert_eq!(server.bytes.received.get(), sent);
}

/// A consumer that never reads stops its producer after a bounded number of
/// frames (its queue plus the credits granted), and the producer records
/// backpressure time; once the consumer reads, the producer completes.
#[tokio::test]
async fn remote_channel_unread_consumer_stops_producer_after_bounded_frames() {
    const CREDITS: usize = 4;
    let server = serve(CREDITS as u32, Duration::from_secs(5)).await;
    let (mut rx, _) = register(&server, CREDITS);
    let producer = Arc::new(SubtaskMetrics::default());
    let mut sender = connect(&server, CREDITS).await.unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn({
        let (producer, sent) = (producer.clone(), sent.clone());
        async move {
            for _ in 0..50 {
                sender.send(Element::Batch(batch(10)), &producer).await?;
                sent.fetch_add(1, Ordering::SeqCst);
            }
            sender.send(Element::EndOfStream, &producer).await?;
            sender.close().await
        }
    });
    // Wait until the producer is blocked and has accounted some of it.
    while producer.backpressured_total().is_zero() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let blocked_at = sent.load(Ordering::SeqCst);
    assert!(
        blocked_at <= 2 * CREDITS,
        "sent {blocked_at} frames into a consumer that never reads"
    );
    assert!(blocked_at >= CREDITS, "sent only {blocked_at} frames");
    let mut received = 0;
    while let Some(item) = rx.recv().await {
        match item.unwrap() {
            Element::Batch(_) => received += 1,
            Element::EndOfStream => break,
            Element::Watermark(_) | Element::LatencyMarker(_) | Element::Barrier(_) => {}
        }
    }
    task.await.unwrap().unwrap();
    assert_eq!(received, 50);
}

/// Local channels block the same way: the bounded queue is the credit.
#[tokio::test]
async fn local_channel_full_queue_blocks_and_counts_backpressure() {
    let (queue, mut rx) = mpsc::channel(2);
    let mut out = OutputChannel::Local { key: key(), queue };
    let metrics = Arc::new(SubtaskMetrics::default());
    let sent = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn({
        let (metrics, sent) = (metrics.clone(), sent.clone());
        async move {
            for _ in 0..5 {
                out.send(Element::Watermark(1), &metrics).await.unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    while metrics.backpressured_total().is_zero() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sent.load(Ordering::SeqCst), 2);
    for _ in 0..5 {
        rx.recv().await.unwrap().unwrap();
    }
    task.await.unwrap();
}

/// Opens a raw stream with the given frames (no credit handling).
async fn raw_open(
    addr: &str,
    frames: Vec<pb::ExchangeFrame>,
) -> std::result::Result<tonic::Streaming<pb::ExchangeCredit>, tonic::Status> {
    let channel = eddy_sdk::server::rpc::connect(addr).unwrap();
    let mut client = pb::exchange_service_client::ExchangeServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    for f in frames {
        tx.send(f).await.unwrap();
    }
    // Keep the request stream open: the server must not rely on its end.
    std::mem::forget(tx);
    client
        .open(ReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner())
}

fn frame(kind: Kind) -> pb::ExchangeFrame {
    pb::ExchangeFrame { kind: Some(kind) }
}

/// Undecodable IPC bytes fail the stream with INVALID_ARGUMENT and hand the
/// consumer the reason.
#[tokio::test]
async fn garbage_ipc_frame_fails_stream_and_consumer() {
    let server = serve(4, Duration::from_secs(5)).await;
    let (mut rx, _) = register(&server, 4);
    let frames = vec![
        frame(Kind::Header(key().to_header())),
        frame(Kind::ArrowIpc(vec![0xff; 24])),
    ];
    let mut credits = raw_open(&server.addr, frames).await.unwrap();
    let status = loop {
        match credits.message().await {
            Ok(Some(_grant)) => continue,
            Ok(None) => panic!("stream ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let failure = rx.recv().await.unwrap().unwrap_err();
    assert!(failure.0.contains("undecodable"), "{failure}");
}

/// A stream whose first frame is not the header is refused outright.
#[tokio::test]
async fn stream_without_header_is_invalid_argument() {
    let server = serve(4, Duration::from_secs(5)).await;
    let err = raw_open(&server.addr, vec![frame(Kind::WatermarkMs(1))])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
}

/// A header after the first frame is garbage too.
#[tokio::test]
async fn second_header_fails_stream_and_consumer() {
    let server = serve(4, Duration::from_secs(5)).await;
    let (mut rx, _) = register(&server, 4);
    let header = frame(Kind::Header(key().to_header()));
    let mut credits = raw_open(&server.addr, vec![header.clone(), header])
        .await
        .unwrap();
    let status = loop {
        match credits.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(rx.recv().await.unwrap().is_err());
}

/// A channel whose consumer never registers fails with a clear status, and
/// the producer gives up instead of retrying forever.
#[tokio::test]
async fn unregistered_consumer_fails_producer_connect() {
    let server = serve(4, Duration::from_millis(100)).await;
    let err = match connect(&server, 4).await {
        Ok(_) => panic!("connected to a channel nobody registered"),
        Err(e) => e,
    };
    let chain = eddy_sdk::error::error_chain(&err).join(": ");
    assert!(chain.contains("not registered"), "{chain}");
}

/// An unreachable TaskManager is retried until the deadline, then the
/// producer fails.
#[tokio::test]
async fn unreachable_peer_fails_after_deadline() {
    // Bind and drop to get a port nobody listens on.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let policy = ConnectPolicy {
        deadline: Duration::from_millis(300),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    };
    let channel = eddy_sdk::server::rpc::connect(&addr).unwrap();
    let err = RemoteSender::connect(key(), &addr, channel, &policy, 4, ExchangeBytes::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
}
