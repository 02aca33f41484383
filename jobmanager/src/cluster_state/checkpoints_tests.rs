#![allow(clippy::unwrap_used)]

use super::*;
use crate::cluster_state::Command;
use eddy_sdk::rest::JobState;

fn job() -> JobId {
    JobId::from("j")
}

fn state_with_job() -> ClusterState {
    let mut s = ClusterState::default();
    let submit = Command::SubmitJob {
        id: job(),
        name: "n".into(),
        spec_json: "{}".into(),
        parallelism: 1,
        max_parallelism: 128,
        time_ms: 1,
        restore_from: None,
    };
    assert_eq!(s.apply(&submit), Response::Applied);
    s
}

fn checkpoint(id: u64, savepoint: Option<&str>) -> CompletedCheckpoint {
    CompletedCheckpoint {
        id: CheckpointId(id),
        trigger_time_ms: 100 * id as i64,
        completed_time_ms: 100 * id as i64 + 5,
        storage_root: "s3://b/chk".into(),
        backend: StateBackendKind::Rocksdb,
        snapshots: vec![SnapshotEntry {
            node: NodeId::from("w"),
            index: SubtaskIndex(0),
            parallelism: 1,
            manifest_path: format!("j/chk-{id}/w/0/_manifest"),
            state_bytes: 10,
            uploaded_bytes: 4,
        }],
        savepoint_path: savepoint.map(String::from),
    }
}

fn reserve(s: &mut ClusterState, up_to: u64) -> Response {
    s.apply(&Command::ReserveCheckpointIds {
        job: job(),
        up_to: CheckpointId(up_to),
    })
}

fn complete(s: &mut ClusterState, c: CompletedCheckpoint) -> Response {
    s.apply(&Command::CheckpointCompleted {
        job: job(),
        checkpoint: c,
    })
}

fn discard(s: &mut ClusterState, ids: &[u64]) -> Response {
    s.apply(&Command::CheckpointsDiscarded {
        job: job(),
        ids: ids.iter().map(|i| CheckpointId(*i)).collect(),
    })
}

fn rejected(r: Response) -> Option<RejectionKind> {
    match r {
        Response::Applied => None,
        Response::Rejected(r) => Some(r.kind),
    }
}

#[test]
fn reserve_only_grows_and_next_id_follows_it() {
    let mut s = state_with_job();
    assert!(s.checkpoint_catalog(&job()).is_none());
    assert_eq!(reserve(&mut s, 10), Response::Applied);
    assert_eq!(reserve(&mut s, 5), Response::Applied);
    let catalog = s.checkpoint_catalog(&job()).unwrap();
    assert_eq!(catalog.reserved_up_to, Some(CheckpointId(10)));
    assert_eq!(catalog.next_id(), CheckpointId(11));
    assert_eq!(CheckpointCatalog::default().next_id(), CheckpointId(1));
}

#[test]
fn complete_records_checkpoints_and_savepoints_apart() {
    let mut s = state_with_job();
    reserve(&mut s, 10);
    assert_eq!(complete(&mut s, checkpoint(1, None)), Response::Applied);
    assert_eq!(
        complete(&mut s, checkpoint(2, Some("/sp/a"))),
        Response::Applied
    );
    let catalog = s.checkpoint_catalog(&job()).unwrap();
    assert_eq!(catalog.completed.len(), 1);
    assert_eq!(catalog.savepoints.len(), 1);
    assert_eq!(catalog.latest().unwrap().id, CheckpointId(2));
    assert_eq!(catalog.get(CheckpointId(1)).unwrap().state_bytes(), 10);
}

#[test]
fn complete_older_or_equal_id_is_stale() {
    let mut s = state_with_job();
    reserve(&mut s, 10);
    complete(&mut s, checkpoint(3, None));
    assert_eq!(
        rejected(complete(&mut s, checkpoint(3, None))),
        Some(RejectionKind::Stale)
    );
    assert_eq!(
        rejected(complete(&mut s, checkpoint(2, Some("/sp")))),
        Some(RejectionKind::Stale)
    );
    assert_eq!(s.checkpoint_catalog(&job()).unwrap().completed.len(), 1);
}

#[test]
fn complete_unreserved_id_is_refused() {
    let mut s = state_with_job();
    assert_eq!(
        rejected(complete(&mut s, checkpoint(1, None))),
        Some(RejectionKind::Conflict)
    );
    reserve(&mut s, 1);
    assert_eq!(
        rejected(complete(&mut s, checkpoint(2, None))),
        Some(RejectionKind::Conflict)
    );
    assert_eq!(complete(&mut s, checkpoint(1, None)), Response::Applied);
}

#[test]
fn discard_removes_old_checkpoints_never_savepoints_nor_the_newest() {
    let mut s = state_with_job();
    reserve(&mut s, 10);
    for (id, sp) in [(1, None), (2, Some("/sp")), (3, None), (4, None)] {
        assert_eq!(complete(&mut s, checkpoint(id, sp)), Response::Applied);
    }
    assert_eq!(
        rejected(discard(&mut s, &[1, 4])),
        Some(RejectionKind::Conflict),
        "the newest checkpoint is kept"
    );
    assert_eq!(discard(&mut s, &[1, 2, 3]), Response::Applied);
    let catalog = s.checkpoint_catalog(&job()).unwrap();
    let ids: Vec<_> = catalog.completed.iter().map(|c| c.id.0).collect();
    assert_eq!(ids, vec![4]);
    assert_eq!(catalog.savepoints[0].id, CheckpointId(2), "savepoint kept");
    // Idempotent: discarding again changes nothing.
    assert_eq!(discard(&mut s, &[1]), Response::Applied);
}

#[test]
fn commands_on_unknown_or_terminal_jobs_are_refused() {
    let mut s = ClusterState::default();
    assert_eq!(rejected(reserve(&mut s, 1)), Some(RejectionKind::NotFound));
    assert_eq!(
        rejected(discard(&mut s, &[1])),
        Some(RejectionKind::NotFound)
    );
    let mut s = state_with_job();
    reserve(&mut s, 5);
    complete(&mut s, checkpoint(1, None));
    complete(&mut s, checkpoint(2, None));
    s.apply(&Command::CancelJob {
        id: job(),
        time_ms: 2,
    });
    assert_eq!(s.job(&job()).unwrap().state, JobState::Canceled);
    assert_eq!(
        rejected(complete(&mut s, checkpoint(3, None))),
        Some(RejectionKind::Conflict)
    );
    // Retention cleanup may still run after the job ended.
    assert_eq!(discard(&mut s, &[1]), Response::Applied);
}

/// The catalog survives a JSON round trip (the Raft log and snapshots), and
/// a state written before the catalog existed still loads.
#[test]
fn catalog_serde_roundtrip_and_old_state_loads() {
    let mut s = state_with_job();
    reserve(&mut s, 3);
    complete(&mut s, checkpoint(1, Some("/sp")));
    let json = serde_json::to_string(&s).unwrap();
    let back: ClusterState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    let old = r#"{"jobs": {}, "jobmanager_rest_urls": {}}"#;
    let old: ClusterState = serde_json::from_str(old).unwrap();
    assert!(old.checkpoints.is_empty());
}

/// Apply is deterministic: two replicas applying the same log agree.
#[test]
fn apply_same_log_same_catalog() {
    let log = [
        Command::ReserveCheckpointIds {
            job: job(),
            up_to: CheckpointId(4),
        },
        Command::CheckpointCompleted {
            job: job(),
            checkpoint: checkpoint(1, None),
        },
        Command::CheckpointCompleted {
            job: job(),
            checkpoint: checkpoint(1, None),
        },
        Command::CheckpointCompleted {
            job: job(),
            checkpoint: checkpoint(2, None),
        },
        Command::CheckpointsDiscarded {
            job: job(),
            ids: vec![CheckpointId(1)],
        },
    ];
    let run = || {
        let mut s = state_with_job();
        let responses: Vec<_> = log.iter().map(|c| s.apply(c)).collect();
        (s, responses)
    };
    assert_eq!(run(), run());
}
