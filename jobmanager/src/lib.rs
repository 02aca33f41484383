//! Eddy's JobManager: the Raft-replicated control plane of a cluster.
//!
//! A JobManager binds its REST and gRPC ports, joins (or on first start
//! creates) its Raft group, and while it leads: accepts TaskManagers, plans
//! and schedules submitted jobs onto their slots, deploys them, and follows
//! them to the end. Durable metadata lives only in the Raft state machine
//! (`cluster_state`); TaskManager liveness is soft state rebuilt from
//! heartbeats (`taskmanagers`).
//!
//! Module map: `config` (layered config), `raft` (openraft over redb and
//! tonic), `cluster` (membership changes and the group's status),
//! `cluster_state` (pure state + apply), `scheduler` (pure solve),
//! `taskmanagers` (registry), `jobs` (submit/cancel + the leader's driver),
//! `rpc` (gRPC handlers), `rest` (axum), `metrics`.
//!
//! [`JobManager::start`] returns a handle with the bound addresses, so tests
//! run the whole process in-process; [`run`] is what `main` calls.

pub mod checkpoint;
pub mod cluster;
pub mod cluster_state;
pub mod config;
pub mod context;
pub mod jobs;
pub mod metrics;
pub mod raft;
pub mod rest;
pub mod restart;
pub mod rpc;
pub mod scheduler;
pub mod taskmanagers;

use crate::config::Config;
use crate::context::Context;
use eddy_proto::v1 as pb;
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

impl From<raft::Error> for Error {
    fn from(e: raft::Error) -> Self {
        Error::Raft(Box::new(e))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration")]
    Config(#[from] config::Error),
    #[error("cannot create the data directory {path}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind the {what} address {addr}")]
    Bind {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("this node's id {id} is not among the configured peers")]
    NotAPeer { id: u64 },
    #[error("raft")]
    Raft(#[source] Box<raft::Error>),
    #[error("cannot write the ready file {path}")]
    ReadyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} server failed")]
    Server {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What the ready file says once the ports are bound.
#[derive(Clone, Debug, Serialize)]
pub struct Ready {
    pub id: u64,
    pub rest_addr: String,
    /// The REST URL this node advertises to the group.
    pub rest_url: String,
    pub rpc_addr: String,
    pub pid: u32,
}

/// A running JobManager.
pub struct JobManager {
    ctx: Arc<Context>,
    rest_addr: SocketAddr,
    rpc_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<Result<(), Error>>)>,
}

async fn bind(what: &'static str, addr: &str) -> Result<(TcpListener, SocketAddr), Error> {
    let err = |source| Error::Bind {
        what,
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// The initial Raft members: the configured peers, or this node alone. This
/// node's own entry carries its REST URL (the others announce theirs once
/// the group runs) and, alone, its real bound address (port 0 picks one).
fn members(
    config: &Config,
    rpc_addr: SocketAddr,
    rest_url: &str,
) -> Result<BTreeMap<u64, raft::Node>, Error> {
    let peers = config.peer_map()?;
    if !peers.is_empty() && !peers.contains_key(&config.id) {
        return Err(Error::NotAPeer { id: config.id });
    }
    let mut members: BTreeMap<u64, raft::Node> = peers
        .into_iter()
        .map(|(id, addr)| (id, raft::Node::new(addr, "")))
        .collect();
    if members.len() <= 1 {
        members.insert(config.id, raft::Node::new(rpc_addr.to_string(), ""));
    }
    if let Some(own) = members.get_mut(&config.id) {
        own.rest_url = rest_url.to_string();
    }
    Ok(members)
}

impl JobManager {
    /// Binds the ports, starts Raft, the servers and the job driver, then
    /// writes `ready_file` (if any) with the bound addresses.
    pub async fn start(config: Config, ready_file: Option<&Path>) -> Result<JobManager, Error> {
        config.validate()?;
        let config = Arc::new(config);
        std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let (rest_listener, rest_addr) = bind("REST", &config.rest_addr).await?;
        let (rpc_listener, rpc_addr) = bind("rpc", &config.rpc_addr).await?;
        let rest_url = config.advertised_rest_url(rest_addr);
        let options = raft::Options {
            node_id: config.id,
            members: members(&config, rpc_addr, &rest_url)?,
            join: config.join,
            snapshot_logs: config.raft.snapshot_logs,
            keep_logs: config.raft.keep_logs,
            heartbeat_interval: config.raft.heartbeat_interval.0,
            election_timeout: (
                config.raft.election_timeout_min.0,
                config.raft.election_timeout_max.0,
            ),
        };
        let shared = Arc::new(raft::Shared::default());
        let contacts = Arc::new(raft::Contacts::default());
        let raft = raft::start(options, &config.data_dir, shared.clone(), contacts.clone()).await?;

        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = metrics::Metrics::new(&mut registry);
        let ctx = Arc::new(Context::new(
            config.clone(),
            rest_url,
            rpc_addr,
            raft.clone(),
            shared,
            contacts,
            metrics,
        ));
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();

        let grpc = tonic::transport::Server::builder()
            .add_service(
                pb::job_manager_service_server::JobManagerServiceServer::new(
                    rpc::JobManagerRpc::new(ctx.clone()),
                ),
            )
            .add_service(pb::raft_service_server::RaftServiceServer::new(
                raft::RaftServer::new(raft),
            ));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(rpc_listener);
        let mut rx = stop_rx.clone();
        tasks.push((
            "rpc",
            tokio::spawn(async move {
                grpc.serve_with_incoming_shutdown(incoming, async move {
                    let _ = rx.changed().await;
                })
                .await
                .map_err(|e| Error::Server {
                    what: "rpc",
                    source: Box::new(e),
                })
            }),
        ));

        let app = rest::router(ctx.clone(), Arc::new(registry));
        let mut rx = stop_rx.clone();
        tasks.push((
            "REST",
            tokio::spawn(async move {
                axum::serve(rest_listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.changed().await;
                    })
                    .await
                    .map_err(|e| Error::Server {
                        what: "REST",
                        source: Box::new(e),
                    })
            }),
        ));

        let driver = jobs::driver::Driver::new(ctx.clone());
        tasks.push((
            "driver",
            tokio::spawn(async move {
                driver.run(stop_rx).await;
                Ok(())
            }),
        ));

        let ready = Ready {
            id: config.id,
            rest_addr: rest_addr.to_string(),
            rest_url: ctx.rest_url.clone(),
            rpc_addr: rpc_addr.to_string(),
            pid: std::process::id(),
        };
        if let Some(path) = ready_file {
            eddy_sdk::server::ready::write(path, &ready).map_err(|source| Error::ReadyFile {
                path: path.display().to_string(),
                source,
            })?;
        }
        tracing::info!(id = config.id, rest_addr = %rest_addr, rpc_addr = %rpc_addr, "jobmanager ready");
        Ok(JobManager {
            ctx,
            rest_addr,
            rpc_addr,
            stop,
            tasks,
        })
    }

    pub fn rest_addr(&self) -> SocketAddr {
        self.rest_addr
    }

    pub fn rpc_addr(&self) -> SocketAddr {
        self.rpc_addr
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Waits until `shutdown` resolves or a server fails, then stops.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let tasks = std::mem::take(&mut self.tasks);
        let names: Vec<&'static str> = tasks.iter().map(|(n, _)| *n).collect();
        let mut handles: Vec<JoinHandle<Result<(), Error>>> =
            tasks.into_iter().map(|(_, h)| h).collect();
        let mut failure = None;
        tokio::select! {
            _ = shutdown => {}
            (result, index, rest) = futures::future::select_all(handles.iter_mut()) => {
                let name = names[index];
                match result {
                    Ok(Ok(())) => tracing::error!(task = name, "a jobmanager task ended unexpectedly"),
                    Ok(Err(e)) => failure = Some(e),
                    Err(e) => tracing::error!(task = name, error = %e, "a jobmanager task panicked"),
                }
                drop(rest);
            }
        }
        self.tasks = names.into_iter().zip(handles).collect();
        self.shutdown().await;
        failure.map_or(Ok(()), Err)
    }

    /// Stops serving, stops the driver and shuts Raft down cleanly.
    pub async fn shutdown(self) {
        tracing::info!("jobmanager shutting down");
        let _ = self.stop.send(true);
        for (name, handle) in self.tasks {
            if handle.is_finished() {
                continue;
            }
            match tokio::time::timeout(std::time::Duration::from_secs(5), handle).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    tracing::warn!(task = name, error = %e, "task ended with an error")
                }
                Ok(Err(e)) => tracing::warn!(task = name, error = %e, "task panicked"),
                Err(_) => tracing::warn!(task = name, "task did not stop within 5s"),
            }
        }
        if let Err(e) = self.ctx.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
        tracing::info!("jobmanager stopped");
    }
}

/// Runs a JobManager until `shutdown` resolves (`main` passes SIGINT/SIGTERM).
pub async fn run(
    config: Config,
    ready_file: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let jm = JobManager::start(config, ready_file.as_deref()).await?;
    jm.run_until(shutdown).await
}
