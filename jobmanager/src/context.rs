//! What every part of a running JobManager shares: the config, the Raft node
//! and the state it replicates, the TaskManager registry, metrics, and
//! connections to TaskManagers. Cheap to share as `Arc<Context>`.

use crate::cluster_state::{ClusterState, Command, Rejection, RejectionKind};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::raft::{Contacts, Node, Raft, Shared};
use crate::taskmanagers::Registry;
use eddy_proto::v1 as pb;
use eddy_sdk::{ApiError, ErrorCode};
use openraft::error::{ClientWriteError, RaftError};
use pb::task_manager_service_client::TaskManagerServiceClient;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::Notify;
use tonic::transport::Channel;

/// Why a write through Raft did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("this jobmanager is not the leader")]
    NotLeader {
        leader_id: Option<u64>,
        leader_url: Option<String>,
    },
    #[error("{0}")]
    Rejected(#[from] Rejection),
    #[error("raft write failed")]
    Raft(#[source] RaftError<u64, ClientWriteError<u64, Node>>),
}

impl WriteError {
    pub fn to_api(&self) -> ApiError {
        match self {
            WriteError::NotLeader {
                leader_url,
                leader_id,
            } => {
                let message = match leader_id {
                    Some(id) => format!("this jobmanager is not the leader; jobmanager {id} is"),
                    None => "this jobmanager is not the leader and no leader is known yet; retry"
                        .to_string(),
                };
                let mut e = ApiError::new(
                    if leader_id.is_some() {
                        ErrorCode::NotLeader
                    } else {
                        ErrorCode::NoLeader
                    },
                    message,
                );
                e.leader = leader_url.clone();
                e
            }
            WriteError::Rejected(r) => {
                let code = match r.kind {
                    RejectionKind::NotFound => ErrorCode::NotFound,
                    RejectionKind::Conflict | RejectionKind::Stale => ErrorCode::Conflict,
                };
                ApiError::new(code, r.message.clone())
            }
            WriteError::Raft(e) => ApiError::new(
                ErrorCode::Unavailable,
                format!("cannot commit the change: {e}"),
            ),
        }
    }
}

pub struct Context {
    pub config: Arc<Config>,
    /// This node's Raft id.
    pub id: u64,
    /// The bound REST address, as `http://host:port`.
    pub rest_url: String,
    pub rpc_addr: SocketAddr,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    /// When each Raft peer last answered this node (meaningful while leading).
    pub contacts: Arc<Contacts>,
    /// The HTTP client that forwards writes to the leader.
    pub http: reqwest::Client,
    registry: Mutex<Registry>,
    /// Wakes the job driver (a registration or a task status arrived).
    pub wake: Notify,
    pub metrics: Metrics,
    /// The leader's checkpoint service's inputs and published state.
    pub checkpoints: crate::checkpoint::hub::Hub,
    clients: Mutex<HashMap<String, TaskManagerServiceClient<Channel>>>,
    seq: AtomicU64,
}

impl Context {
    pub fn new(
        config: Arc<Config>,
        rest_url: String,
        rpc_addr: SocketAddr,
        raft: Raft,
        shared: Arc<Shared>,
        contacts: Arc<Contacts>,
        metrics: Metrics,
    ) -> Self {
        Context {
            id: config.id,
            config,
            rest_url,
            rpc_addr,
            raft,
            shared,
            contacts,
            http: crate::rest::forward::client(),
            registry: Mutex::new(Registry::default()),
            wake: Notify::new(),
            metrics,
            checkpoints: Default::default(),
            clients: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
        }
    }

    /// Reads the replicated cluster state.
    pub fn read<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        self.shared.read(f)
    }

    /// Uses the TaskManager registry. Never hold it across an await.
    pub fn registry<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        // Registry methods leave it consistent at every step, so a poisoned
        // lock (a panic elsewhere) still guards valid data.
        f(&mut self.registry.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_leader == Some(self.id) && m.state == openraft::ServerState::Leader
    }

    /// Whether this leader has applied an entry of its own term. Until
    /// then the replicated state may still lack entries an earlier leader
    /// committed (or proposed: a new leader commits them with its first
    /// entry), so nothing should be decided from it: a checkpoint that
    /// looks in flight may be about to show up completed.
    pub fn leadership_settled(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.last_applied
            .as_ref()
            .is_some_and(|l| l.leader_id.term == m.current_term)
    }

    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    pub fn leader_id(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// The member `id` as the Raft membership records it.
    pub fn member(&self, id: u64) -> Option<Node> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().get_node(&id).cloned()
    }

    /// The rpc address of every member of the Raft group (voters and
    /// learners), in id order.
    pub fn member_rpc_addrs(&self) -> Vec<String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .nodes()
            .map(|(_, n)| n.raft_addr.clone())
            .collect()
    }

    /// The leader's rpc address, from the Raft membership.
    pub fn leader_rpc_addr(&self) -> Option<String> {
        self.member(self.leader_id()?).map(|n| n.raft_addr)
    }

    /// The REST URL of member `id`: from the membership, else the one it
    /// announced in the cluster state (groups started before the membership
    /// carried REST URLs).
    pub fn rest_url_of(&self, id: u64) -> Option<String> {
        self.member(id)
            .and_then(|n| n.rest_url().map(str::to_string))
            .or_else(|| self.read(|s| s.jobmanager_rest_urls.get(&id).cloned()))
    }

    /// The error for a write attempted on a follower.
    pub fn not_leader(&self) -> WriteError {
        let leader_id = self.leader_id().filter(|id| *id != self.id);
        let leader_url = leader_id.and_then(|id| self.rest_url_of(id));
        WriteError::NotLeader {
            leader_id,
            leader_url,
        }
    }

    /// Commits `cmd` through Raft and returns once it is applied here.
    pub async fn write(&self, cmd: Command) -> Result<(), WriteError> {
        match self.raft.client_write(cmd).await {
            Ok(resp) => Ok(resp.data.into_result()?),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(self.not_leader())
            }
            Err(e) => Err(WriteError::Raft(e)),
        }
    }

    /// A sequence number for job ids, unique within this process.
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// A (lazily connected, cached) client of the TaskManager at `addr`.
    pub fn tm_client(
        &self,
        addr: &str,
    ) -> Result<TaskManagerServiceClient<Channel>, eddy_sdk::server::rpc::AddrError> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let client = TaskManagerServiceClient::new(eddy_sdk::server::rpc::connect(addr)?);
        clients.insert(addr.to_string(), client.clone());
        Ok(client)
    }
}

/// Wall-clock milliseconds since the epoch: the only clock that goes into
/// Raft commands (apply never reads a clock).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
