//! Behaviour both backends share: reads and writes, scans, snapshots and
//! restores at another parallelism, damaged snapshots, TTL, savepoints.
#![allow(clippy::unwrap_used)]

use super::rocksdb::RocksDbSlot;
use super::storage::{self, CheckpointStorage};
use super::*;
use eddy_sdk::checkpoint_layout::SavepointLayout;
use eddy_sdk::keygroup::{key_group_of_hash, key_group_range};
use std::collections::BTreeSet;

pub(crate) const MAXP: u32 = 128;

#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Memory,
    RocksDb,
}

pub(crate) const KINDS: [Kind; 2] = [Kind::Memory, Kind::RocksDb];

impl Kind {
    fn backend(self) -> BackendKind {
        match self {
            Kind::Memory => BackendKind::Memory,
            Kind::RocksDb => BackendKind::Rocksdb,
        }
    }
}

/// A temp dir with local checkpoint storage, a RocksDB slot and a manual clock.
pub(crate) struct Env {
    pub tmp: tempfile::TempDir,
    pub slot: RocksDbSlot,
    pub storage: Arc<CheckpointStorage>,
    pub clock: Arc<ManualClock>,
}

impl Env {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let storage =
            CheckpointStorage::open(tmp.path().join("chk").to_str().unwrap(), &[]).unwrap();
        Self {
            slot: RocksDbSlot::new(tmp.path().join("slot"), 64 << 20),
            storage: Arc::new(storage),
            clock: ManualClock::new(1_000_000),
            tmp,
        }
    }

    pub fn checkpoint_root(&self) -> std::path::PathBuf {
        self.tmp.path().join("chk")
    }

    pub fn open(&self, kind: Kind, scope: StateScope) -> Box<dyn KeyedStateBackend> {
        super::open(kind.backend(), &self.slot, scope, self.clock.clone()).unwrap()
    }

    pub async fn restore_from(
        &self,
        kind: Kind,
        storage: &CheckpointStorage,
        scope: StateScope,
        manifests: &[SubtaskManifest],
    ) -> Result<Box<dyn KeyedStateBackend>> {
        let clock = self.clock.clone();
        super::restore(kind.backend(), &self.slot, scope, clock, storage, manifests).await
    }

    pub async fn restore(
        &self,
        kind: Kind,
        scope: StateScope,
        manifests: &[SubtaskManifest],
    ) -> Result<Box<dyn KeyedStateBackend>> {
        self.restore_from(kind, &self.storage, scope, manifests)
            .await
    }
}

pub(crate) fn scope(parallelism: u32, index: u32) -> StateScope {
    StateScope {
        job: JobId::from("job1"),
        node: NodeId::from("agg"),
        subtask: SubtaskIndex(index),
        max_parallelism: MAXP,
        key_groups: key_group_range(MAXP, parallelism, index),
    }
}

pub(crate) fn kg_of(key: &[u8]) -> KeyGroup {
    key_group_of_hash(xxhash_rust::xxh3::xxh3_64(key), MAXP)
}

/// Every live entry of the named states, as sortable tuples.
pub(crate) fn dump(
    b: &mut dyn KeyedStateBackend,
    states: &[&str],
) -> BTreeSet<(String, u32, Vec<u8>, Vec<u8>)> {
    let mut out = BTreeSet::new();
    for name in states {
        let id = b.register_state(name, StateDescriptor::default()).unwrap();
        for e in b.scan(id, 0..MAXP, b"").unwrap() {
            let e = e.unwrap();
            out.insert((name.to_string(), e.key_group.0, e.key, e.value));
        }
    }
    out
}

/// Writes `n` keys into state `counts` and every third into `names`, through
/// `put` and batches, into whichever subtask of `parallelism` owns each key.
fn fill(backends: &mut [Box<dyn KeyedStateBackend>], parallelism: u32, n: u32) {
    let ids: Vec<(StateId, StateId)> = backends
        .iter_mut()
        .map(|b| {
            (
                b.register_state("counts", StateDescriptor::default())
                    .unwrap(),
                b.register_state("names", StateDescriptor::default())
                    .unwrap(),
            )
        })
        .collect();
    let mut batches: Vec<StateBatch> = backends.iter().map(|_| StateBatch::default()).collect();
    for i in 0..n {
        let key = format!("key-{i}").into_bytes();
        let kg = kg_of(&key);
        let owner = eddy_sdk::keygroup::subtask_for_key_group(kg, MAXP, parallelism) as usize;
        let (counts, names) = ids[owner];
        backends[owner]
            .put(counts, kg, &key, &i.to_be_bytes())
            .unwrap();
        if i % 3 == 0 {
            batches[owner].put(names, kg, &key, format!("name-{i}").as_bytes());
        }
        if i % 10 == 0 {
            batches[owner].delete(counts, kg, &key);
        }
    }
    for (b, batch) in backends.iter_mut().zip(batches) {
        b.write(batch).unwrap();
    }
}

async fn snapshot_all(
    env: &Env,
    backends: &mut [Box<dyn KeyedStateBackend>],
    chk: u64,
) -> Vec<SubtaskManifest> {
    let mut out = Vec::new();
    for b in backends.iter_mut() {
        let pending = b
            .snapshot(
                env.storage.clone(),
                SnapshotTarget::Checkpoint(CheckpointId(chk)),
            )
            .unwrap();
        let result = tokio::spawn(pending.upload()).await.unwrap().unwrap();
        let read = env
            .storage
            .read_manifest(&result.manifest_path)
            .await
            .unwrap();
        assert_eq!(read, result.manifest);
        out.push(result.manifest);
    }
    out
}

/// Gets, puts, deletes, batches and scans behave alike on both backends.
#[tokio::test]
async fn backend_reads_its_writes_and_scans_by_prefix_and_key_group() {
    for kind in KINDS {
        let env = Env::new();
        let mut b = env.open(kind, scope(1, 0));
        let s = b.register_state("s", StateDescriptor::default()).unwrap();
        let (k1, k2) = (KeyGroup(3), KeyGroup(70));
        b.put(s, k1, b"win:1:a", b"1").unwrap();
        b.put(s, k1, b"win:2:a", b"2").unwrap();
        b.put(s, k2, b"win:1:b", b"3").unwrap();
        b.put(s, k2, b"other", b"4").unwrap();
        assert_eq!(b.get(s, k1, b"win:1:a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(
            b.get(s, k2, b"win:1:a").unwrap(),
            None,
            "{kind:?}: key groups are separate"
        );
        b.delete(s, k1, b"win:2:a").unwrap();
        assert_eq!(b.get(s, k1, b"win:2:a").unwrap(), None);

        let keys = |prefix: &[u8], groups: Range<u32>| -> BTreeSet<(u32, Vec<u8>)> {
            b.scan(s, groups, prefix)
                .unwrap()
                .map(|e| e.map(|e| (e.key_group.0, e.key)))
                .collect::<Result<_>>()
                .unwrap()
        };
        let win1 = keys(b"win:1:", 0..MAXP);
        assert_eq!(
            win1,
            BTreeSet::from([(3, b"win:1:a".to_vec()), (70, b"win:1:b".to_vec())]),
            "{kind:?}"
        );
        assert_eq!(keys(b"", 50..MAXP).len(), 2, "{kind:?}: range scan");
        assert_eq!(keys(b"", 0..3).len(), 0, "{kind:?}: end is exclusive");

        let mut other = env.open(kind, scope(2, 0));
        let o = other
            .register_state("s", StateDescriptor::default())
            .unwrap();
        assert!(matches!(
            other.put(o, KeyGroup(100), b"k", b"v"),
            Err(Error::KeyGroupOutOfRange { key_group: 100, .. })
        ));
        // A batch with one bad write applies none of its writes.
        let mut batch = StateBatch::default();
        batch.put(o, KeyGroup(1), b"first", b"v");
        batch.put(o, KeyGroup(100), b"k", b"v");
        assert!(other.write(batch).is_err());
        assert_eq!(
            other.get(o, KeyGroup(1), b"first").unwrap(),
            None,
            "{kind:?}"
        );
    }
}

/// A checkpoint of 2 subtasks restores into 2, 1 and 4 subtasks with the
/// same content (key groups redistributed).
#[tokio::test]
async fn snapshot_restores_at_same_lower_and_higher_parallelism() {
    for kind in KINDS {
        let env = Env::new();
        let mut two: Vec<_> = (0..2).map(|i| env.open(kind, scope(2, i))).collect();
        fill(&mut two, 2, 2_000);
        let mut expected = BTreeSet::new();
        for b in &mut two {
            expected.extend(dump(b.as_mut(), &["counts", "names"]));
        }
        assert_eq!(expected.len(), 2_000 - 200 + 667);
        let manifests = snapshot_all(&env, &mut two, 1).await;
        // Writes after the snapshot must not leak into the restore.
        let late = two[0]
            .register_state("counts", StateDescriptor::default())
            .unwrap();
        two[0].put(late, KeyGroup(0), b"late", b"x").unwrap();

        for parallelism in [2, 1, 4] {
            let mut restored = BTreeSet::new();
            for i in 0..parallelism {
                let mut b = env
                    .restore(kind, scope(parallelism, i), &manifests)
                    .await
                    .unwrap();
                let part = dump(b.as_mut(), &["counts", "names"]);
                let range = key_group_range(MAXP, parallelism, i);
                assert!(
                    part.iter().all(|e| range.contains(&e.1)),
                    "{kind:?}: only own key groups"
                );
                restored.extend(part);
            }
            assert_eq!(restored, expected, "{kind:?} at parallelism {parallelism}");
        }
    }
}

/// A flipped byte or a deleted file is reported with the path of the file.
#[tokio::test]
async fn damaged_snapshot_reports_corrupt_or_missing_file_by_path() {
    for kind in KINDS {
        let env = Env::new();
        let mut one = vec![env.open(kind, scope(1, 0))];
        fill(&mut one, 1, 300);
        let manifests = snapshot_all(&env, &mut one, 1).await;
        let file = manifests[0]
            .files
            .iter()
            .max_by_key(|f| f.integrity.size)
            .unwrap()
            .clone();
        let local = env.checkpoint_root().join(&file.path);
        let original = std::fs::read(&local).unwrap();
        let mut bad = original.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x40;
        std::fs::write(&local, &bad).unwrap();
        let err = env
            .restore(kind, scope(1, 0), &manifests)
            .await
            .unwrap_err();
        match &err {
            Error::Storage(e @ storage::Error::Corrupt { path, .. }) => {
                assert_eq!(path, &file.path, "{kind:?}");
                assert!(e.is_damaged_snapshot());
            }
            other => panic!("{kind:?}: expected Corrupt, got {other:?}"),
        }
        assert!(err.to_string().contains(&file.path), "{err}");
        assert!(err.is_damaged_snapshot());

        std::fs::remove_file(&local).unwrap();
        let err = env
            .restore(kind, scope(1, 0), &manifests)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Storage(storage::Error::Missing { path }) if path == &file.path),
            "{kind:?}: {err:?}"
        );

        std::fs::write(&local, &original).unwrap();
        let manifest = env.storage.layout().manifest(
            &JobId::from("job1"),
            CheckpointId(1),
            &NodeId::from("agg"),
            SubtaskIndex(0),
        );
        let mpath = env.checkpoint_root().join(&manifest);
        let mut m = std::fs::read(&mpath).unwrap();
        m[5] ^= 0x01;
        std::fs::write(&mpath, &m).unwrap();
        let err = env.storage.read_manifest(&manifest).await.unwrap_err();
        assert!(
            matches!(&err, storage::Error::Corrupt { path, .. } if path == &manifest),
            "{kind:?}: {err:?}"
        );
        std::fs::remove_file(&mpath).unwrap();
        let err = env.storage.read_manifest(&manifest).await.unwrap_err();
        assert!(matches!(&err, storage::Error::Missing { path } if path == &manifest));
    }
}

/// Entries expire at their deadline, are never returned after it, and are
/// gone after a snapshot and restore.
#[tokio::test]
async fn ttl_entries_expire_and_do_not_survive_restore() {
    for kind in KINDS {
        let env = Env::new();
        let mut b = env.open(kind, scope(1, 0));
        let short = StateDescriptor {
            ttl: Some(Duration::from_secs(10)),
        };
        let s = b.register_state("sessions", short.clone()).unwrap();
        let keep = b
            .register_state("totals", StateDescriptor::default())
            .unwrap();
        let kg = KeyGroup(5);
        b.put(s, kg, b"old", b"1").unwrap();
        b.put(keep, kg, b"forever", b"1").unwrap();
        env.clock.advance(6_000);
        let mut batch = StateBatch::default();
        batch.put(s, kg, b"new", b"2");
        b.write(batch).unwrap();
        env.clock.advance(3_999);
        assert_eq!(
            b.get(s, kg, b"old").unwrap(),
            Some(b"1".to_vec()),
            "{kind:?}"
        );
        env.clock.advance(1);
        assert_eq!(
            b.get(s, kg, b"old").unwrap(),
            None,
            "{kind:?}: expired at deadline"
        );
        assert_eq!(b.get(s, kg, b"new").unwrap(), Some(b"2".to_vec()));
        let live: Vec<_> = b
            .scan(s, 0..MAXP, b"")
            .unwrap()
            .map(|e| e.unwrap().key)
            .collect();
        assert_eq!(live, vec![b"new".to_vec()], "{kind:?}");

        let manifests = {
            let mut v = vec![b];
            snapshot_all(&env, &mut v, 1).await
        };
        env.clock.advance(6_000);
        let mut r = env.restore(kind, scope(1, 0), &manifests).await.unwrap();
        let s = r.register_state("sessions", short).unwrap();
        assert_eq!(r.get(s, kg, b"new").unwrap(), None, "{kind:?}");
        assert_eq!(r.scan(s, 0..MAXP, b"").unwrap().count(), 0, "{kind:?}");
        assert_eq!(dump(r.as_mut(), &["totals"]).len(), 1, "{kind:?}");
    }
}

/// A savepoint holds copies of every file: it restores after the job's whole
/// checkpoint area is deleted.
#[tokio::test]
async fn savepoint_survives_deletion_of_all_checkpoints() {
    for kind in KINDS {
        let env = Env::new();
        let mut two: Vec<_> = (0..2).map(|i| env.open(kind, scope(2, i))).collect();
        fill(&mut two, 2, 500);
        let mut expected = BTreeSet::new();
        for b in &mut two {
            expected.extend(dump(b.as_mut(), &["counts", "names"]));
        }
        let checkpointed = snapshot_all(&env, &mut two, 1).await;

        let sp_store =
            CheckpointStorage::open(env.tmp.path().join("sp").to_str().unwrap(), &[]).unwrap();
        let sp_store = Arc::new(sp_store);
        // Direct savepoint of the live state, and a copy of the checkpoint.
        let direct = SavepointLayout::new("direct");
        let mut direct_manifests = Vec::new();
        for b in &mut two {
            let pending = b
                .snapshot(sp_store.clone(), SnapshotTarget::Savepoint(direct.clone()))
                .unwrap();
            direct_manifests.push(pending.upload().await.unwrap().manifest);
        }
        let copied = env
            .storage
            .copy_to_savepoint(&checkpointed, &sp_store, &SavepointLayout::new("copied"))
            .await
            .unwrap();
        let copied: Vec<SubtaskManifest> = copied.into_iter().map(|(_, m)| m).collect();
        for m in direct_manifests.iter().chain(&copied) {
            assert_eq!(m.checkpoint, None);
            assert!(
                m.files.iter().all(|f| !f.shared
                    && (f.path.starts_with("direct/") || f.path.starts_with("copied/")))
            );
        }
        drop(two);
        std::fs::remove_dir_all(env.checkpoint_root()).unwrap();

        for manifests in [&direct_manifests, &copied] {
            for parallelism in [1, 4] {
                let mut restored = BTreeSet::new();
                for i in 0..parallelism {
                    let mut b = env
                        .restore_from(kind, &sp_store, scope(parallelism, i), manifests)
                        .await
                        .unwrap();
                    restored.extend(dump(b.as_mut(), &["counts", "names"]));
                }
                assert_eq!(restored, expected, "{kind:?} at parallelism {parallelism}");
            }
        }
    }
}

/// A snapshot restores only into the backend that wrote it and only for the
/// same number of key groups; both are typed errors, not damage.
#[tokio::test]
async fn restore_rejects_other_backend_and_other_max_parallelism() {
    let env = Env::new();
    let mut mem = vec![env.open(Kind::Memory, scope(1, 0))];
    fill(&mut mem, 1, 50);
    let manifests = snapshot_all(&env, &mut mem, 1).await;
    let err = env
        .restore(Kind::RocksDb, scope(1, 0), &manifests)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Incompatible { .. }), "{err:?}");
    assert!(!err.is_damaged_snapshot());
    let mut other = scope(1, 0);
    other.max_parallelism = 256;
    other.key_groups = 0..256;
    let err = env
        .restore(Kind::Memory, other, &manifests)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Incompatible { ref reason, .. } if reason.contains("max_parallelism"))
    );
}
