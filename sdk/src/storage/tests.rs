#![allow(clippy::unwrap_used)]

use super::manifest::{BackendKind, FORMAT_VERSION};
use super::*;
use crate::ids::{NodeId, SubtaskIndex};

fn manifest(files: Vec<FileEntry>) -> SubtaskManifest {
    SubtaskManifest {
        format: FORMAT_VERSION,
        backend: BackendKind::Rocksdb,
        job: JobId::from("j"),
        node: NodeId::from("n"),
        subtask: SubtaskIndex(0),
        checkpoint: Some(CheckpointId(1)),
        max_parallelism: 8,
        key_group_start: 0,
        key_group_end: 8,
        files,
    }
}

async fn shared(s: &CheckpointStorage, name: &str) -> FileEntry {
    let path = s
        .layout()
        .shared_file(&JobId::from("j"), &NodeId::from("n"), name);
    let integrity = s
        .put_bytes(&path, Bytes::from(name.to_string()))
        .await
        .unwrap();
    FileEntry {
        path,
        local_name: name.to_string(),
        integrity,
        shared: true,
    }
}

/// Locations: plain path, file:// URL, memory://; anything else is refused.
#[test]
fn open_accepts_paths_file_and_memory_urls_only() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("a");
    CheckpointStorage::open(plain.to_str().unwrap(), &[]).unwrap();
    assert!(plain.is_dir(), "the directory is created");
    let url = format!("file://{}", tmp.path().join("b").display());
    CheckpointStorage::open(&url, &[]).unwrap();
    CheckpointStorage::open("memory://", &[]).unwrap();
    for bad in ["gs://bucket/x", "", "s3://"] {
        assert!(
            matches!(
                CheckpointStorage::open(bad, &[]),
                Err(Error::Location { .. })
            ),
            "{bad:?} accepted"
        );
    }
    let opts = [("no_such_option".to_string(), "1".to_string())];
    assert!(matches!(
        CheckpointStorage::open("s3://bucket/prefix", &opts),
        Err(Error::Location { .. })
    ));
}

/// An S3 URL's path becomes the layout's root inside the bucket.
#[test]
fn open_s3_url_uses_prefix_as_layout_root() {
    let opts = [
        ("aws_endpoint".to_string(), "http://127.0.0.1:9".to_string()),
        ("aws_region".to_string(), "us-east-1".to_string()),
        ("aws_allow_http".to_string(), "true".to_string()),
    ];
    let s = CheckpointStorage::open("s3://bucket/eddy/ckpts", &opts).unwrap();
    assert_eq!(s.layout().root(), "eddy/ckpts");
}

/// Large files go up in parts, and the streamed checksum matches the bytes.
#[tokio::test]
async fn upload_and_download_large_file_verify_checksum() {
    let tmp = tempfile::tempdir().unwrap();
    let s = CheckpointStorage::open(tmp.path().join("store").to_str().unwrap(), &[]).unwrap();
    let bytes: Vec<u8> = (0..(MULTIPART_THRESHOLD as usize + 3 * READ_BUF + 17))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let local = tmp.path().join("big");
    std::fs::write(&local, &bytes).unwrap();
    let integrity = s.upload_file(&local, "x/big").await.unwrap();
    assert_eq!(integrity, Integrity::of(&bytes));
    let back = tmp.path().join("back");
    s.download_verified("x/big", integrity, &back)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), bytes);
    let wrong = Integrity {
        size: integrity.size,
        xxh3: integrity.xxh3 ^ 1,
    };
    let err = s
        .download_verified("x/big", wrong, &back)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { ref path, .. } if path == "x/big"));
    assert!(!back.exists(), "a damaged download is removed");
}

/// Shared files go when the last retained checkpoint referencing them is
/// dropped, never while one still does, and never outside the job's area.
#[tokio::test]
async fn release_shared_deletes_only_files_no_retained_checkpoint_needs() {
    let s = CheckpointStorage::in_memory();
    let (a, b, c) = (
        shared(&s, "a").await,
        shared(&s, "b").await,
        shared(&s, "c").await,
    );
    let foreign_path = "savepoints/sp/n/0/x.sst".to_string();
    let foreign_integrity = s.put_bytes(&foreign_path, Bytes::from("x")).await.unwrap();
    let foreign = FileEntry {
        path: foreign_path.clone(),
        local_name: "x.sst".into(),
        integrity: foreign_integrity,
        shared: true,
    };
    let chk1 = manifest(vec![a.clone(), b.clone(), foreign]);
    let chk2 = manifest(vec![b.clone(), c.clone()]);
    let deleted = s
        .release_shared(&JobId::from("j"), &[chk1], std::slice::from_ref(&chk2))
        .await
        .unwrap();
    assert_eq!(deleted, vec![a.path.clone()]);
    assert!(matches!(
        s.get_verified(&a.path, a.integrity).await,
        Err(Error::Missing { .. })
    ));
    s.get_verified(&b.path, b.integrity).await.unwrap();
    s.get_verified(&foreign_path, foreign_integrity)
        .await
        .unwrap();

    let deleted = s
        .release_shared(&JobId::from("j"), &[chk2], &[])
        .await
        .unwrap();
    assert_eq!(deleted, vec![b.path, c.path]);
}

/// Orphans (uploads of failed checkpoints) older than the cutoff are
/// collected; referenced or newer files stay.
#[tokio::test]
async fn collect_orphaned_shared_respects_references_and_cutoff() {
    let s = CheckpointStorage::in_memory();
    let kept = shared(&s, "kept").await;
    let orphan = shared(&s, "orphan").await;
    let job = JobId::from("j");
    let retained = [manifest(vec![kept.clone()])];
    let before = Utc::now() - chrono::Duration::hours(1);
    assert!(
        s.collect_orphaned_shared(&job, &retained, before)
            .await
            .unwrap()
            .is_empty()
    );
    let after = Utc::now() + chrono::Duration::hours(1);
    let deleted = s
        .collect_orphaned_shared(&job, &retained, after)
        .await
        .unwrap();
    assert_eq!(deleted, vec![orphan.path]);
    s.get_verified(&kept.path, kept.integrity).await.unwrap();
}

/// Deleting a checkpoint removes its directory and nothing else.
#[tokio::test]
async fn delete_checkpoint_removes_only_its_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let s = CheckpointStorage::open(tmp.path().to_str().unwrap(), &[]).unwrap();
    let job = JobId::from("j");
    let (n, st) = (NodeId::from("n"), SubtaskIndex(0));
    for chk in [1, 2] {
        let p = s
            .layout()
            .subtask_file(&job, CheckpointId(chk), &n, st, "f");
        s.put_bytes(&p, Bytes::from("x")).await.unwrap();
        s.put_sealed(&s.layout().metadata(&job, CheckpointId(chk)), b"{}")
            .await
            .unwrap();
    }
    let kept = shared(&s, "s").await;
    assert_eq!(s.delete_checkpoint(&job, CheckpointId(1)).await.unwrap(), 2);
    assert!(
        !tmp.path().join("j/chk-1").exists(),
        "empty directories are cleaned up"
    );
    assert_eq!(
        &s.get_sealed(&s.layout().metadata(&job, CheckpointId(2)))
            .await
            .unwrap()[..],
        b"{}"
    );
    s.get_verified(&kept.path, kept.integrity).await.unwrap();
}
