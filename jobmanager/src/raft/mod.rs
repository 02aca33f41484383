//! Replication of the cluster state with openraft: the type configuration,
//! durable storage in redb (`<data-dir>/raft.redb`), the tonic network, and
//! starting a node.
//!
//! On first start (no Raft state on disk) the member with the lowest id
//! initializes the group with the configured members, unless the node was
//! started to join (`join = true`): then it initializes nothing and waits
//! for the leader to add it (`POST /v1/cluster/members`). On restart the
//! state comes from the log and nothing is re-initialized.

// openraft's `StorageError` is large by design and its storage traits
// return it, so the storage code cannot box it.
#[allow(clippy::result_large_err)]
pub mod log_store;
pub mod network;
pub mod node;
#[allow(clippy::result_large_err)]
pub mod state_machine;
#[cfg(test)]
mod store_test;

use crate::cluster_state::{Command, Response};
use openraft::{AnyError, SnapshotPolicy, StorageError};
use redb::Database;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use log_store::LogStore;
pub use network::{Contacts, NetworkFactory, RaftServer};
pub use node::Node;
pub use state_machine::{Shared, StateMachine};

openraft::declare_raft_types!(
    /// Eddy's Raft types: u64 node ids, nodes with their rpc-addr and REST
    /// URL, cluster-state commands as the log payload.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = node::Node,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub(crate) type StorageResult<T> = Result<T, StorageError<u64>>;

pub(crate) fn io_err<E: std::error::Error + 'static>(e: &E) -> AnyError {
    AnyError::new(e)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the raft database {path}")]
    Open {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error("invalid raft configuration")]
    Config(#[from] openraft::ConfigError),
    #[error("raft failed to start")]
    Start(#[source] Box<openraft::error::Fatal<u64>>),
    #[error("cannot initialize the raft group")]
    Initialize(
        #[source] Box<openraft::error::RaftError<u64, openraft::error::InitializeError<u64, Node>>>,
    ),
}

/// Opens `<data_dir>/raft.redb`. In-process restarts (tests) can find the
/// previous instance's file lock still held for a moment while its tasks wind
/// down, so an already-open database is retried briefly.
async fn open_db(path: &Path) -> Result<Database, Error> {
    let mut attempts = 0;
    loop {
        match Database::create(path) {
            Ok(db) => return Ok(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(Error::Open {
                    path: path.display().to_string(),
                    source: e.into(),
                });
            }
        }
    }
}

/// How a node starts.
#[derive(Clone, Debug)]
pub struct Options {
    pub node_id: u64,
    /// The initial members (used on first start only).
    pub members: BTreeMap<u64, Node>,
    /// Never initialize a group: wait to be added by the leader.
    pub join: bool,
    /// Build a snapshot (and purge the log) every this many applied entries.
    pub snapshot_logs: u64,
    /// Log entries kept behind the latest snapshot, so a slightly lagging
    /// follower catches up from the log instead of a snapshot.
    pub keep_logs: u64,
    /// The leader's heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Bounds of the random election timeout; the upper one is also the
    /// leader's lease (openraft: a follower votes for no other candidate
    /// until that long after it last heard from the leader).
    pub election_timeout: (Duration, Duration),
}

/// Starts this node's Raft: opens the storage in `data_dir`, and on first
/// start initializes the group with `members` if this node has the lowest id
/// among them and was not started to join.
pub async fn start(
    options: Options,
    data_dir: &Path,
    shared: Arc<Shared>,
    contacts: Arc<Contacts>,
) -> Result<Raft, Error> {
    let Options {
        node_id,
        members,
        join,
        snapshot_logs,
        keep_logs,
        heartbeat_interval,
        election_timeout: (election_min, election_max),
    } = options;
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let path = data_dir.join("raft.redb");
    let db = Arc::new(open_db(&path).await?);
    let open_err = |source: redb::Error| Error::Open {
        path: path.display().to_string(),
        source,
    };
    let log_store = LogStore::open(db.clone()).map_err(open_err)?;
    let sm = StateMachine::open(db, shared).map_err(open_err)?;
    let config = openraft::Config {
        cluster_name: "eddy-jobmanager".into(),
        heartbeat_interval: ms(heartbeat_interval),
        election_timeout_min: ms(election_min),
        election_timeout_max: ms(election_max),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_logs),
        max_in_snapshot_log_to_keep: keep_logs,
        ..Default::default()
    }
    .validate()?;
    let fatal = |e| Error::Start(Box::new(e));
    let network = NetworkFactory::new(contacts);
    let raft = Raft::new(node_id, Arc::new(config), network, log_store, sm)
        .await
        .map_err(fatal)?;
    let initialized = raft.is_initialized().await.map_err(fatal)?;
    let first = members.keys().next().copied();
    if !initialized && join {
        tracing::info!(
            node_id,
            "started to join: waiting for the leader to add this node"
        );
    } else if !initialized && first == Some(node_id) {
        tracing::info!(node_id, members = ?members.keys().collect::<Vec<_>>(), "initializing the raft group");
        match raft.initialize(members).await {
            Ok(()) => {}
            // Someone else's vote or log arrived first: the group exists.
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(_),
            )) => {}
            Err(e) => return Err(Error::Initialize(Box::new(e))),
        }
    } else if initialized {
        tracing::info!(node_id, "raft state found on disk; not re-initializing");
    }
    Ok(raft)
}
