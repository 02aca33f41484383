//! The durable Raft log in redb: vote, committed id, entries, purge and
//! truncate. Entries are stored as JSON by index.
//!
//! Every write is a redb transaction committed with immediate durability
//! (fsync) before it returns, so `append` calls its flush callback only once
//! the entries are on disk. redb calls block, so they run on tokio's blocking
//! pool.

use super::{StorageResult, TypeConfig, io_err};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

pub(super) const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The log half of the Raft storage. Cheap to clone (shares the database).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

/// Runs blocking redb work off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> StorageResult<T> + Send + 'static,
) -> StorageResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::from(StorageIOError::read(io_err(&e))))?
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(v)
}

fn read_meta<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, redb::Error> {
    let txn = db.begin_read()?;
    let table = txn.open_table(META)?;
    let Some(raw) = table.get(key)? else {
        return Ok(None);
    };
    serde_json::from_slice(raw.value())
        .map(Some)
        .map_err(|e| redb::Error::Corrupted(format!("raft meta {key}: {e}")))
}

fn write_meta<T: Serialize>(db: &Database, key: &str, value: &T) -> Result<(), redb::Error> {
    let bytes = to_json(value)
        .map_err(|e| redb::Error::Corrupted(format!("cannot encode raft meta {key}: {e}")))?;
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(META)?;
        table.insert(key, bytes.as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

impl LogStore {
    /// Opens the log tables, creating them on first use.
    pub fn open(db: Arc<Database>) -> Result<Self, redb::Error> {
        let txn = db.begin_write()?;
        txn.open_table(LOGS)?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(LogStore { db })
    }

    fn read_entries(
        db: &Database,
        range: (Bound<u64>, Bound<u64>),
    ) -> Result<Vec<Entry<TypeConfig>>, redb::Error> {
        let txn = db.begin_read()?;
        let table = txn.open_table(LOGS)?;
        let mut out = Vec::new();
        for item in table.range::<u64>(range)? {
            let (k, v) = item?;
            let entry: Entry<TypeConfig> = serde_json::from_slice(v.value()).map_err(|e| {
                redb::Error::Corrupted(format!("raft log entry {}: {e}", k.value()))
            })?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let db = self.db.clone();
        let range = (range.start_bound().cloned(), range.end_bound().cloned());
        blocking(move || {
            LogStore::read_entries(&db, range)
                .map_err(|e| StorageIOError::read_logs(io_err(&e)).into())
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let db = self.db.clone();
        blocking(move || {
            let run = || -> Result<LogState<TypeConfig>, redb::Error> {
                let last_purged: Option<LogId<u64>> = read_meta(&db, LAST_PURGED)?;
                let txn = db.begin_read()?;
                let table = txn.open_table(LOGS)?;
                let last = match table.last()? {
                    Some((_, v)) => {
                        let entry: Entry<TypeConfig> =
                            serde_json::from_slice(v.value()).map_err(|e| {
                                redb::Error::Corrupted(format!("last raft log entry: {e}"))
                            })?;
                        Some(entry.log_id)
                    }
                    None => last_purged,
                };
                Ok(LogState {
                    last_purged_log_id: last_purged,
                    last_log_id: last,
                })
            };
            run().map_err(|e| StorageIOError::read_logs(io_err(&e)).into())
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(move || {
            write_meta(&db, VOTE, &vote).map_err(|e| StorageIOError::write_vote(io_err(&e)).into())
        })
        .await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        let db = self.db.clone();
        blocking(move || {
            read_meta(&db, VOTE).map_err(|e| StorageIOError::read_vote(io_err(&e)).into())
        })
        .await
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        let db = self.db.clone();
        blocking(move || {
            write_meta(&db, COMMITTED, &committed)
                .map_err(|e| StorageIOError::write(io_err(&e)).into())
        })
        .await
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        let db = self.db.clone();
        blocking(move || {
            read_meta::<Option<LogId<u64>>>(&db, COMMITTED)
                .map(Option::flatten)
                .map_err(|e| StorageIOError::read(io_err(&e)).into())
        })
        .await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded = entries
            .into_iter()
            .map(|e| to_json(&e).map(|bytes| (e.log_id.index, bytes)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StorageIOError::write_logs(io_err(&e)))?;
        let db = self.db.clone();
        blocking(move || {
            let run = || -> Result<(), redb::Error> {
                let txn = db.begin_write()?;
                {
                    let mut table = txn.open_table(LOGS)?;
                    for (index, bytes) in &encoded {
                        table.insert(*index, bytes.as_slice())?;
                    }
                }
                // Immediate durability: commit returns once the data is fsync'd.
                txn.commit()?;
                Ok(())
            };
            run().map_err(|e| StorageIOError::write_logs(io_err(&e)).into())
        })
        .await?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let db = self.db.clone();
        blocking(move || {
            let run = || -> Result<(), redb::Error> {
                let txn = db.begin_write()?;
                {
                    let mut table = txn.open_table(LOGS)?;
                    table.retain_in(log_id.index.., |_, _| false)?;
                }
                txn.commit()?;
                Ok(())
            };
            run().map_err(|e| StorageIOError::write_logs(io_err(&e)).into())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let db = self.db.clone();
        blocking(move || {
            let run = || -> Result<(), redb::Error> {
                let bytes =
                    to_json(&Some(log_id)).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
                let txn = db.begin_write()?;
                {
                    // Record the purge point first, in the same transaction.
                    let mut meta = txn.open_table(META)?;
                    meta.insert(LAST_PURGED, bytes.as_slice())?;
                    let mut table = txn.open_table(LOGS)?;
                    table.retain_in(..=log_id.index, |_, _| false)?;
                }
                txn.commit()?;
                Ok(())
            };
            run().map_err(|e| StorageIOError::write_logs(io_err(&e)).into())
        })
        .await
    }
}
