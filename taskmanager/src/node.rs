//! The TaskManager's shared state: its identity, slots, task table, channel
//! registry and metrics. [`Node`] is what the RPC services, the JobManager
//! client and the deploy path share (behind an `Arc`).

use crate::config::Config;
use crate::exchange::{ConnectPolicy, Registry};
use crate::metrics::Metrics;
use crate::slot::SlotPool;
use crate::state::rocksdb::RocksDbSlot;
use crate::state::storage::{self, CheckpointStorage};
use crate::tasks::TaskTable;
use eddy_proto::v1 as pb;
use eddy_sdk::ids::TaskManagerId;
use eddy_sdk::server::rpc::AddrError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Tunables of the deploy path that tests shorten.
#[derive(Clone, Debug)]
pub struct Timeouts {
    /// How long a producer retries reaching a remote consumer's TaskManager.
    pub connect: ConnectPolicy,
    /// How long a channel waits for its consumer to be registered.
    pub claim_wait: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: ConnectPolicy::default(),
            claim_wait: Duration::from_secs(30),
        }
    }
}

pub struct Node {
    pub tm_id: TaskManagerId,
    pub config: Arc<Config>,
    /// The address other processes reach this TaskManager's gRPC services at.
    pub rpc_addr: String,
    pub slots: SlotPool,
    pub tasks: TaskTable,
    pub registry: Registry,
    pub metrics: Metrics,
    pub timeouts: Timeouts,
    /// The highest JobManager leader term seen; requests from older leaders
    /// are refused.
    leader_term: AtomicU64,
    /// Parent of every task's cancellation token: canceled at shutdown.
    pub shutdown: CancellationToken,
    /// One connection per (slot, peer TaskManager), shared by the slot's
    /// outgoing exchange channels to that peer (HTTP/2 multiplexes them). Per
    /// slot, so a slot's network I/O runs on the slot's own thread.
    peers: Mutex<HashMap<(u32, String), Channel>>,
    /// The RocksDB side of each slot (instances under `<data_dir>/slot-<i>`).
    pub rocksdb_slots: Vec<Arc<RocksDbSlot>>,
    /// Checkpoint storages by location, opened once.
    storages: Mutex<HashMap<String, Arc<CheckpointStorage>>>,
    /// Checkpoint acknowledgements and declines for the JobManager.
    pub checkpoint_reports: mpsc::UnboundedSender<CheckpointMessage>,
    checkpoint_reports_rx: Mutex<Option<mpsc::UnboundedReceiver<CheckpointMessage>>>,
}

/// A subtask's answer to a checkpoint, addressed to the JobManager.
#[derive(Clone, Debug)]
pub enum CheckpointMessage {
    Ack(pb::AcknowledgeCheckpointRequest),
    Decline(pb::DeclineCheckpointRequest),
}

#[derive(Debug, thiserror::Error)]
#[error("leader term {term} is older than the highest seen ({highest})")]
pub struct StaleTerm {
    pub term: u64,
    pub highest: u64,
}

impl Node {
    /// Builds the node and starts its slot threads. Returns the stream of
    /// task status changes the JobManager client reports.
    pub fn new(
        config: Arc<Config>,
        rpc_addr: String,
        metrics: Metrics,
        timeouts: Timeouts,
    ) -> Result<(Arc<Node>, mpsc::UnboundedReceiver<pb::TaskStatus>), crate::slot::Error> {
        let slots = SlotPool::start(config.slots, config.kpu.clone())?;
        metrics.slots_total.set(i64::from(config.slots));
        let (tasks, reports) = TaskTable::new();
        // Half of a slot's memory goes to RocksDB (block cache and write
        // buffers); the rest is the operators' own.
        let rocksdb_slots = (0..config.slots)
            .map(|i| {
                let slot = RocksDbSlot::new(
                    config.data_dir.join(format!("slot-{i}")).join("rocksdb"),
                    config.kpu.memory.0 / 2,
                );
                // Instances a killed process left behind are worthless: a
                // restart restores from a checkpoint.
                if let Err(e) = slot.remove_leftovers() {
                    tracing::warn!(slot = i, error = %e, "cannot remove leftover state");
                }
                Arc::new(slot)
            })
            .collect();
        let (checkpoint_reports, checkpoint_reports_rx) = mpsc::unbounded_channel();
        let node = Node {
            tm_id: config.tm_id(),
            rpc_addr,
            slots,
            tasks,
            registry: Registry::new(),
            metrics,
            timeouts,
            leader_term: AtomicU64::new(0),
            shutdown: CancellationToken::new(),
            peers: Mutex::default(),
            rocksdb_slots,
            storages: Mutex::default(),
            checkpoint_reports,
            checkpoint_reports_rx: Mutex::new(Some(checkpoint_reports_rx)),
            config,
        };
        Ok((Arc::new(node), reports))
    }

    /// Records `term` and refuses it if a newer leader was already seen.
    pub fn observe_term(&self, term: u64) -> Result<(), StaleTerm> {
        let highest = self.leader_term.fetch_max(term, Ordering::SeqCst);
        if term < highest {
            Err(StaleTerm { term, highest })
        } else {
            Ok(())
        }
    }

    /// Checks the leader term of a command from a JobManager (deploy,
    /// cancel, checkpoint trigger or notice): a command from an older term
    /// than the highest seen comes from a deposed leader (one that was
    /// paused or cut off while another was elected) and is refused, logged
    /// and counted in `eddy_taskmanager_stale_leader_commands_total`.
    pub fn accept_command(&self, term: u64, command: &'static str) -> Result<(), StaleTerm> {
        self.observe_term(term).inspect_err(|e| {
            tracing::warn!(
                command,
                term = e.term,
                highest = e.highest,
                "refused a command from a stale jobmanager leader"
            );
            self.metrics
                .stale_leader_commands
                .get_or_create(&crate::metrics::CommandLabels { command })
                .inc();
        })
    }

    pub fn leader_term(&self) -> u64 {
        self.leader_term.load(Ordering::SeqCst)
    }

    /// The connection slot `slot` uses to reach the TaskManager at `addr`.
    /// Must be called on that slot's runtime: the connection's I/O task is
    /// spawned where it is first created.
    pub fn peer_channel(&self, slot: u32, addr: &str) -> Result<Channel, AddrError> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = peers.get(&(slot, addr.to_string())) {
            return Ok(c.clone());
        }
        let channel = eddy_sdk::server::rpc::connect(addr)?;
        peers.insert((slot, addr.to_string()), channel.clone());
        Ok(channel)
    }

    /// The checkpoint storage at `url`, opened on first use.
    pub fn storage(&self, url: &str) -> Result<Arc<CheckpointStorage>, storage::Error> {
        let mut storages = self.storages.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = storages.get(url) {
            return Ok(s.clone());
        }
        let s = Arc::new(CheckpointStorage::open(url, &[])?);
        storages.insert(url.to_string(), s.clone());
        Ok(s)
    }

    /// The stream of checkpoint reports (taken once, by the JobManager client).
    pub fn take_checkpoint_reports(&self) -> Option<mpsc::UnboundedReceiver<CheckpointMessage>> {
        self.checkpoint_reports_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub fn kpu_proto(&self) -> pb::Kpu {
        let kpu = self.slots.kpu();
        pb::Kpu {
            vcpu_millis: kpu.vcpu_millis,
            memory_bytes: kpu.memory.0,
            disk_bytes: kpu.disk.0,
        }
    }
}
