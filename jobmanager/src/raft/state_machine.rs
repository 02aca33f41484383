//! The Raft state machine: applies committed commands to the in-memory
//! [`ClusterState`], builds snapshots of it and installs received ones.
//!
//! The state itself lives in [`Shared`], which the rest of the JobManager
//! reads. It is rebuilt on start from the latest snapshot (kept in redb) plus
//! the committed log entries openraft re-applies after it.

use super::log_store::blocking;
use super::{Node, StorageResult, TypeConfig, io_err};
use crate::cluster_state::{ClusterState, Response};
use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::{Arc, PoisonError, RwLock};
use tokio::sync::Notify;

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");
const CURRENT: &str = "current";

/// The cluster state as every part of this JobManager reads it.
#[derive(Debug, Default)]
pub struct Shared {
    state: RwLock<ClusterState>,
    /// Signalled after every applied batch, so the job driver reacts at once.
    pub changed: Notify,
}

impl Shared {
    /// Reads the state. Never hold the result across an await.
    pub fn read<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        // A panic while holding the lock cannot leave the state half-applied
        // (apply mutates one job at a time), so a poisoned lock is still usable.
        f(&self.state.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn write<T>(&self, f: impl FnOnce(&mut ClusterState) -> T) -> T {
        f(&mut self.state.write().unwrap_or_else(PoisonError::into_inner))
    }
}

/// What a snapshot holds: the state and where in the log it was taken.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, Node>,
    state: ClusterState,
}

/// A snapshot as stored in redb.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, Node>,
    data: Vec<u8>,
}

pub struct StateMachine {
    db: Arc<Database>,
    shared: Arc<Shared>,
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, Node>,
}

fn load_snapshot(db: &Database) -> Result<Option<StoredSnapshot>, redb::Error> {
    let txn = db.begin_read()?;
    let table = txn.open_table(SNAPSHOT)?;
    let Some(raw) = table.get(CURRENT)? else {
        return Ok(None);
    };
    serde_json::from_slice(raw.value())
        .map(Some)
        .map_err(|e| redb::Error::Corrupted(format!("raft snapshot: {e}")))
}

fn save_snapshot(db: &Database, snapshot: &StoredSnapshot) -> Result<(), redb::Error> {
    let bytes = serde_json::to_vec(snapshot)
        .map_err(|e| redb::Error::Corrupted(format!("cannot encode snapshot: {e}")))?;
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(SNAPSHOT)?;
        table.insert(CURRENT, bytes.as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

fn decode(data: &[u8]) -> Result<SnapshotBody, serde_json::Error> {
    serde_json::from_slice(data)
}

impl StateMachine {
    /// Opens the state machine, restoring the latest persisted snapshot.
    pub fn open(db: Arc<Database>, shared: Arc<Shared>) -> Result<Self, redb::Error> {
        let txn = db.begin_write()?;
        txn.open_table(SNAPSHOT)?;
        txn.commit()?;
        let mut sm = StateMachine {
            db,
            shared,
            last_applied: None,
            last_membership: StoredMembership::default(),
        };
        if let Some(stored) = load_snapshot(&sm.db)? {
            let body = decode(&stored.data)
                .map_err(|e| redb::Error::Corrupted(format!("raft snapshot body: {e}")))?;
            sm.restore(body);
        }
        Ok(sm)
    }

    fn restore(&mut self, body: SnapshotBody) {
        self.last_applied = body.last_applied;
        self.last_membership = body.last_membership;
        self.shared.write(|s| *s = body.state);
        self.shared.changed.notify_one();
    }
}

/// Builds a snapshot from a copy of the state taken when openraft asked.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    body: SnapshotBody,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let data = serde_json::to_vec(&self.body)
            .map_err(|e| StorageIOError::write_state_machine(io_err(&e)))?;
        let snapshot_id = match &self.body.last_applied {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id,
                id.index,
                chrono::Utc::now().timestamp_micros()
            ),
            None => format!("empty-{}", chrono::Utc::now().timestamp_micros()),
        };
        let meta = SnapshotMeta {
            last_log_id: self.body.last_applied,
            last_membership: self.body.last_membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let db = self.db.clone();
        let signature = meta.signature();
        // Persist before handing it out: logs are purged up to it afterwards.
        blocking(move || {
            save_snapshot(&db, &stored)
                .map_err(|e| StorageIOError::write_snapshot(Some(signature), io_err(&e)).into())
        })
        .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<u64>>, StoredMembership<u64, Node>)> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::Applied,
                EntryPayload::Normal(cmd) => {
                    let response = self.shared.write(|s| s.apply(&cmd));
                    if let Response::Rejected(r) = &response {
                        tracing::debug!(log_index = entry.log_id.index, reason = %r, "command refused by the state machine");
                    }
                    response
                }
                EntryPayload::Membership(m) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::Applied
                }
            };
            responses.push(response);
        }
        self.shared.changed.notify_one();
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let state = self.shared.read(Clone::clone);
        SnapshotBuilder {
            db: self.db.clone(),
            body: SnapshotBody {
                last_applied: self.last_applied,
                last_membership: self.last_membership.clone(),
                state,
            },
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let body = decode(&data).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                io_err(&e),
            ))
        })?;
        let stored_len = data.len();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let db = self.db.clone();
        let signature = meta.signature();
        blocking(move || {
            save_snapshot(&db, &stored)
                .map_err(|e| StorageIOError::write_snapshot(Some(signature), io_err(&e)).into())
        })
        .await?;
        tracing::info!(
            last_log_index = meta.last_log_id.map(|l| l.index),
            snapshot_id = %meta.snapshot_id,
            bytes = stored_len,
            "installed a snapshot from the leader"
        );
        self.restore(body);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let db = self.db.clone();
        let stored = blocking(move || {
            load_snapshot(&db).map_err(|e| StorageIOError::read_snapshot(None, io_err(&e)).into())
        })
        .await?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
