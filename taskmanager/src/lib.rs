//! `eddy-taskmanager`: offers slots to the JobManager, runs subtasks on them
//! and exchanges data with other TaskManagers.
//!
//! Layout: [`config`] (layered settings), [`slot`] (one thread per slot),
//! [`runtime`] (the subtask loop, input gate, partitioners), [`exchange`]
//! (bounded credit-based channels, local and remote), [`deploy`] (DeployTasks
//! and CancelJob), [`control`] (registration, heartbeats, status reports),
//! [`rpc`] (the gRPC service), [`operators`] (what a chain is made of).
//! [`run`] wires them into a process; `main.rs` only parses flags.

pub mod config;
pub mod control;
pub mod deploy;
pub mod exchange;
pub mod metrics;
pub mod node;
pub mod operators;
pub mod rpc;
pub mod runtime;
pub mod slot;
pub mod state;
pub mod tasks;

use crate::config::Config;
use crate::node::{Node, Timeouts};
use serde::Serialize;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often per-subtask ratios and `/metrics` values are refreshed.
pub const METRICS_INTERVAL: Duration = Duration::from_secs(1);
/// How long ended subtasks stay in the table (and in heartbeats).
const KEEP_ENDED: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind {what} address {addr}")]
    Bind {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start slots")]
    Slots(#[from] slot::Error),
    #[error("cannot write ready file {path}")]
    Ready {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
}

/// Written to `--ready-file` once both ports are bound.
#[derive(Debug, Serialize)]
pub struct Ready {
    pub id: String,
    pub rpc_addr: String,
    pub metrics_addr: String,
    pub pid: u32,
}

async fn bind(
    what: &'static str,
    addr: &str,
) -> Result<(tokio::net::TcpListener, SocketAddr), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind {
            what,
            addr: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| Error::Bind {
        what,
        addr: addr.to_string(),
        source,
    })?;
    Ok((listener, local))
}

/// Runs a TaskManager until `shutdown` resolves: binds its ports, starts its
/// slots, serves gRPC and `/metrics`, registers with the JobManagers, then on
/// shutdown cancels every task and returns.
pub async fn run(
    config: Config,
    ready_file: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let config = Arc::new(config);
    let (rpc_listener, rpc_addr) = bind("rpc", &config.rpc_addr).await?;
    let (metrics_listener, metrics_addr) = bind("metrics", &config.metrics_addr).await?;
    let (metrics, registry) = metrics::Metrics::new();
    let (node, reports) = Node::new(
        config.clone(),
        rpc_addr.to_string(),
        metrics,
        Timeouts::default(),
    )?;
    let tm_id = node.tm_id.clone();
    tracing::info!(%tm_id, %rpc_addr, %metrics_addr, slots = config.slots, kpu = ?config.kpu, jobmanagers = ?config.jobmanagers, "taskmanager started");

    let stop = CancellationToken::new();
    let grpc = tokio::spawn(serve_grpc(node.clone(), rpc_listener, stop.clone()));
    let http = {
        let router = eddy_sdk::server::metrics::router(Arc::new(registry));
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(metrics_listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "metrics server failed");
            }
        })
    };
    let sampler = tokio::spawn(sample_metrics(node.clone(), stop.clone()));
    let control = if config.jobmanagers.is_empty() {
        tracing::warn!(%tm_id, "no JobManager configured: running standalone");
        None
    } else {
        let url = format!("http://{metrics_addr}/metrics");
        let client = control::JobManagerClient::new(node.clone(), config.jobmanagers.clone(), url);
        Some(tokio::spawn(client.run(reports, stop.clone())))
    };

    if let Some(path) = ready_file {
        let ready = Ready {
            id: tm_id.0.clone(),
            rpc_addr: rpc_addr.to_string(),
            metrics_addr: metrics_addr.to_string(),
            pid: std::process::id(),
        };
        eddy_sdk::server::ready::write(&path, &ready)
            .map_err(|source| Error::Ready { path, source })?;
    }

    let served = tokio::select! {
        _ = shutdown => None,
        r = grpc => Some(r),
    };
    tracing::info!(%tm_id, active = node.tasks.active_count(), "shutting down");
    node.shutdown.cancel();
    // Give canceled tasks a moment to stop and be reported before the
    // control plane goes away.
    for _ in 0..20 {
        if node.tasks.active_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.cancel();
    let _ = tokio::join!(http, sampler);
    if let Some(c) = control {
        let _ = c.await;
    }
    match served {
        Some(Ok(Err(e))) => Err(Error::Serve(e)),
        _ => Ok(()),
    }
}

/// Serves `TaskManagerService` and `ExchangeService` on `listener` until
/// `stop` is canceled.
pub async fn serve_grpc(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let exchange = exchange::server::ExchangeServer::new(
        node.registry.clone(),
        node.config.exchange.channel_credits,
        node.timeouts.claim_wait,
        node.metrics.exchange.clone(),
    );
    tonic::transport::Server::builder()
        // The receiving side's HTTP/2 windows pace remote producers: large
        // enough for a few Arrow frames in flight (credits bound them anyway).
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .add_service(rpc::TaskManagerRpc::new(node.clone()).into_service())
        .add_service(exchange.into_service())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop.cancelled_owned(),
        )
        .await
}

async fn sample_metrics(node: Arc<Node>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(METRICS_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now = tokio::time::Instant::now();
        node.tasks.sample(now - last, KEEP_ENDED, &node.metrics);
        node.metrics
            .rss_bytes
            .set(i64::try_from(eddy_sdk::server::metrics::rss_bytes()).unwrap_or(i64::MAX));
        last = now;
    }
}
