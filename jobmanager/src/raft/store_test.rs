//! openraft's storage conformance suite on the redb log store and state
//! machine, each case on a fresh database in its own temp dir.

use super::{LogStore, Shared, StateMachine, StorageResult, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use std::sync::Arc;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
    async fn build(&self) -> StorageResult<(tempfile::TempDir, LogStore, StateMachine)> {
        let dir = tempfile::tempdir().expect("a temp dir can be created in tests");
        let db = Arc::new(
            redb::Database::create(dir.path().join("raft.redb")).expect("a fresh redb file opens"),
        );
        let log = LogStore::open(db.clone()).expect("log tables can be created");
        let sm = StateMachine::open(db, Arc::new(Shared::default()))
            .expect("state machine tables can be created");
        Ok((dir, log, sm))
    }
}

#[test]
fn store_passes_openraft_suite() {
    Suite::test_all(RedbBuilder).unwrap();
}
