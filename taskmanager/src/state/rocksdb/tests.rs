//! RocksDB-only behaviour: incremental uploads, shared-file collection, TTL
//! compaction. Shared behaviour is tested in `state::tests` for both backends.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::state::SnapshotResult;
use crate::state::manifest::SubtaskManifest;
use crate::state::tests::{Env, MAXP, dump, kg_of, scope};
use eddy_sdk::ids::JobId;

/// 1 KiB of incompressible bytes for entry `i`.
fn value(i: u32) -> Vec<u8> {
    (0..128u32)
        .flat_map(|j| {
            xxhash_rust::xxh3::xxh3_64(&[i.to_le_bytes(), j.to_le_bytes()].concat()).to_le_bytes()
        })
        .collect()
}

fn put_range(b: &mut RocksDbBackend, s: StateId, range: Range<u32>) {
    let mut batch = StateBatch::with_capacity(range.len());
    for i in range {
        let key = format!("key-{i}").into_bytes();
        batch.put(s, kg_of(&key), &key, &value(i));
    }
    b.write(batch).unwrap();
}

async fn checkpoint(env: &Env, b: &mut RocksDbBackend, chk: u64) -> SnapshotResult {
    let pending = b
        .snapshot(
            env.storage.clone(),
            SnapshotTarget::Checkpoint(CheckpointId(chk)),
        )
        .unwrap();
    let result = tokio::spawn(pending.upload()).await.unwrap().unwrap();
    b.notify_checkpoint_complete(CheckpointId(chk));
    result
}

fn exists(env: &Env, path: &str) -> bool {
    env.checkpoint_root().join(path).exists()
}

/// A second checkpoint after a few puts uploads a small fraction of the
/// first one's bytes: only the new SST file and the small metadata files.
#[tokio::test]
async fn incremental_checkpoint_uploads_only_new_files() {
    let env = Env::new();
    let mut b = env.slot.open(scope(1, 0), env.clock.clone()).unwrap();
    let s = b.register_state("big", StateDescriptor::default()).unwrap();
    put_range(&mut b, s, 0..4_000);
    let first = checkpoint(&env, &mut b, 1).await;
    assert!(
        first.uploaded_bytes > 3 << 20,
        "{} bytes",
        first.uploaded_bytes
    );
    assert_eq!(first.uploaded_bytes, first.state_bytes);

    put_range(&mut b, s, 4_000..4_010);
    let second = checkpoint(&env, &mut b, 2).await;
    assert!(
        second.uploaded_bytes * 5 < first.uploaded_bytes,
        "second uploaded {} of first {}",
        second.uploaded_bytes,
        first.uploaded_bytes
    );
    assert!(second.state_bytes > first.state_bytes);
    let reused: Vec<_> = second
        .manifest
        .files
        .iter()
        .filter(|f| first.manifest.files.contains(f))
        .collect();
    assert!(reused.iter().all(|f| f.shared) && !reused.is_empty());

    // The incremental checkpoint alone restores everything.
    let mut live = dump(&mut b, &["big"]);
    assert_eq!(live.len(), 4_010);
    let mut r = env
        .slot
        .restore(
            scope(1, 0),
            env.clock.clone(),
            &env.storage,
            &[second.manifest],
        )
        .await
        .unwrap();
    assert_eq!(dump(&mut r, &["big"]), std::mem::take(&mut live));
}

/// An uncompleted checkpoint's files are not reused: the next one uploads
/// its new files again rather than referencing a checkpoint that may fail.
#[tokio::test]
async fn incremental_checkpoint_reuses_only_completed_checkpoints() {
    let env = Env::new();
    let mut b = env.slot.open(scope(1, 0), env.clock.clone()).unwrap();
    let s = b.register_state("big", StateDescriptor::default()).unwrap();
    put_range(&mut b, s, 0..500);
    let pending = b
        .snapshot(
            env.storage.clone(),
            SnapshotTarget::Checkpoint(CheckpointId(1)),
        )
        .unwrap();
    let first = pending.upload().await.unwrap();
    // Not completed: checkpoint 2 re-uploads everything.
    let second = checkpoint(&env, &mut b, 2).await;
    assert_eq!(second.uploaded_bytes, second.state_bytes);
    assert!(second.uploaded_bytes >= first.uploaded_bytes);
}

/// After compaction rewrote every file, dropping the older checkpoints from
/// the retained set deletes exactly the shared files only they referenced.
#[tokio::test]
async fn dropped_checkpoints_release_unreferenced_shared_files() {
    let env = Env::new();
    let job = JobId::from("job1");
    let mut b = env.slot.open(scope(1, 0), env.clock.clone()).unwrap();
    let s = b.register_state("big", StateDescriptor::default()).unwrap();
    put_range(&mut b, s, 0..1_000);
    let m1 = checkpoint(&env, &mut b, 1).await.manifest;
    put_range(&mut b, s, 1_000..1_200);
    let m2 = checkpoint(&env, &mut b, 2).await.manifest;
    b.compact_all();
    put_range(&mut b, s, 1_200..1_210);
    let m3 = checkpoint(&env, &mut b, 3).await.manifest;

    let shared = |m: &SubtaskManifest| -> Vec<String> {
        m.files
            .iter()
            .filter(|f| f.shared)
            .map(|f| f.path.clone())
            .collect()
    };
    let deleted = env
        .storage
        .release_shared(&job, std::slice::from_ref(&m1), &[m2.clone(), m3.clone()])
        .await
        .unwrap();
    assert!(
        deleted.is_empty(),
        "checkpoint 2 still needs checkpoint 1's files: {deleted:?}"
    );
    env.storage
        .delete_checkpoint(&job, CheckpointId(1))
        .await
        .unwrap();

    let deleted = env
        .storage
        .release_shared(&job, std::slice::from_ref(&m2), std::slice::from_ref(&m3))
        .await
        .unwrap();
    let mut expected: Vec<String> = shared(&m2)
        .into_iter()
        .filter(|p| !shared(&m3).contains(p))
        .collect();
    expected.sort();
    assert!(!expected.is_empty(), "compaction made old files obsolete");
    assert_eq!(deleted, expected);
    assert!(deleted.iter().all(|p| !exists(&env, p)));
    assert!(shared(&m3).iter().all(|p| exists(&env, p)));
    env.storage
        .delete_checkpoint(&job, CheckpointId(2))
        .await
        .unwrap();

    let mut r = env
        .slot
        .restore(scope(1, 0), env.clock.clone(), &env.storage, &[m3])
        .await
        .unwrap();
    assert_eq!(dump(&mut r, &["big"]).len(), 1_210);
}

/// Expired entries are physically removed by compaction (the TTL filter),
/// not just hidden from reads.
#[tokio::test]
async fn ttl_compaction_filter_removes_expired_entries() {
    let env = Env::new();
    let mut b = env.slot.open(scope(1, 0), env.clock.clone()).unwrap();
    let ttl = StateDescriptor {
        ttl: Some(Duration::from_secs(1)),
    };
    let s = b.register_state("t", ttl).unwrap();
    let kg = KeyGroup(9);
    b.put(s, kg, b"gone", b"1").unwrap();
    env.clock.advance(500);
    b.put(s, kg, b"stays", b"2").unwrap();
    env.clock.advance(600);
    b.compact_all();
    let cf = b.db.cf_handle("t").unwrap();
    assert_eq!(b.db.get_cf(cf, db_key(kg, b"gone")).unwrap(), None);
    assert!(b.db.get_cf(cf, db_key(kg, b"stays")).unwrap().is_some());
    assert_eq!(b.get(s, kg, b"stays").unwrap(), Some(b"2".to_vec()));
}

/// Instances of one slot live in their own directories, removed on drop.
#[test]
fn instance_directory_is_removed_when_backend_drops() {
    let env = Env::new();
    let a = env.slot.open(scope(2, 0), env.clock.clone()).unwrap();
    let b = env.slot.open(scope(2, 1), env.clock.clone()).unwrap();
    assert_ne!(a.dir.root, b.dir.root);
    let root = a.dir.root.clone();
    assert!(root.join("db").join("CURRENT").exists());
    drop(a);
    assert!(!root.exists());
    assert_eq!(b.scope().key_groups, 64..MAXP);
}

/// Restoring a smaller range from a larger snapshot physically removes the
/// other key groups (not only hides them from scans), and merging two
/// snapshots brings in exactly their overlapping groups.
#[tokio::test]
async fn restore_keeps_only_key_groups_in_range() {
    let env = Env::new();
    let mut manifests = Vec::new();
    for i in 0..2 {
        let mut b = env.slot.open(scope(2, i), env.clock.clone()).unwrap();
        let s = b.register_state("big", StateDescriptor::default()).unwrap();
        let mut batch = StateBatch::default();
        for n in 0..400u32 {
            let key = format!("key-{n}").into_bytes();
            let kg = kg_of(&key);
            if b.scope().key_groups.contains(&kg.0) {
                batch.put(s, kg, &key, b"v");
            }
        }
        b.write(batch).unwrap();
        manifests.push(checkpoint(&env, &mut b, 1).await.manifest);
    }
    // Subtask 1 of 3 owns 43..86: part of each old subtask's range.
    let target = scope(3, 1);
    let r = env
        .slot
        .restore(target.clone(), env.clock.clone(), &env.storage, &manifests)
        .await
        .unwrap();
    let cf = r.db.cf_handle("big").unwrap();
    let mut groups = std::collections::BTreeSet::new();
    for item in r.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
        let (k, _) = item.unwrap();
        groups.insert(u32::from(u16::from_be_bytes([k[0], k[1]])));
    }
    assert!(
        groups.iter().all(|g| target.key_groups.contains(g)),
        "{groups:?}"
    );
    assert!(groups.iter().any(|g| *g < 64) && groups.iter().any(|g| *g >= 64));
}
