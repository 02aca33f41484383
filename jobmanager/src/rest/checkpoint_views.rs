//! Builds `GET /v1/jobs/{id}/checkpoints` ([`CheckpointStats`]) from the
//! leader's coordinator statistics and the replicated catalog. Pure, no I/O.
//!
//! Either source may be missing: a follower, or a job without checkpoints,
//! has no coordinator statistics, and then counts and history are empty while
//! `retained` (and the latest completed, from the catalog) still show what a
//! restart would restore from.

use super::views::rfc3339;
use crate::checkpoint::{Entry, Span, Stats, Status};
use crate::cluster_state::{CheckpointCatalog, CompletedCheckpoint};
use eddy_sdk::rest::{
    CheckpointCounts, CheckpointInfo, CheckpointStats, CheckpointStatus, CheckpointSummary,
    LatestCheckpoints, MinMaxAvg, OperatorCheckpointInfo, RestoredCheckpointInfo,
    RetainedCheckpointInfo,
};
use std::collections::BTreeMap;

fn span(s: &Span) -> MinMaxAvg {
    MinMaxAvg {
        min: s.min,
        max: s.max,
        avg: s.avg(),
    }
}

fn entry(e: &Entry) -> CheckpointInfo {
    CheckpointInfo {
        id: e.id.0,
        status: match e.status {
            Status::InProgress => CheckpointStatus::InProgress,
            Status::Completed => CheckpointStatus::Completed,
            Status::Failed => CheckpointStatus::Failed,
        },
        is_savepoint: e.savepoint_path.is_some(),
        savepoint_path: e.savepoint_path.clone(),
        trigger_time: rfc3339(e.trigger_time_ms),
        end_time: e.end_time_ms.map(rfc3339),
        duration_ms: e.duration_ms(),
        num_subtasks: e.total_subtasks,
        num_acknowledged_subtasks: e.acknowledged,
        state_size_bytes: e.state_bytes,
        uploaded_bytes: e.uploaded_bytes,
        operators: e
            .operator_state_bytes
            .iter()
            .map(|(node, bytes)| OperatorCheckpointInfo {
                node: node.to_string(),
                state_size_bytes: *bytes,
            })
            .collect(),
        max_alignment_ms: e.max_alignment_ms,
        max_sync_ms: e.max_sync_ms,
        max_async_ms: e.max_async_ms,
        failure_message: e.failure.clone(),
    }
}

/// A catalog checkpoint as a history-style entry (no timings: the catalog
/// keeps only what a restore needs).
fn from_catalog(c: &CompletedCheckpoint) -> CheckpointInfo {
    let mut operators: BTreeMap<String, u64> = BTreeMap::new();
    for s in &c.snapshots {
        *operators.entry(s.node.to_string()).or_default() += s.state_bytes;
    }
    CheckpointInfo {
        id: c.id.0,
        status: CheckpointStatus::Completed,
        is_savepoint: c.is_savepoint(),
        savepoint_path: c.savepoint_path.clone(),
        trigger_time: rfc3339(c.trigger_time_ms),
        end_time: Some(rfc3339(c.completed_time_ms)),
        duration_ms: Some(u64::try_from(c.completed_time_ms - c.trigger_time_ms).unwrap_or(0)),
        num_subtasks: 0,
        num_acknowledged_subtasks: 0,
        state_size_bytes: c.state_bytes(),
        uploaded_bytes: c.uploaded_bytes(),
        operators: operators
            .into_iter()
            .map(|(node, state_size_bytes)| OperatorCheckpointInfo {
                node,
                state_size_bytes,
            })
            .collect(),
        max_alignment_ms: 0,
        max_sync_ms: 0,
        max_async_ms: 0,
        failure_message: None,
    }
}

fn retained(c: &CompletedCheckpoint) -> RetainedCheckpointInfo {
    RetainedCheckpointInfo {
        id: c.id.0,
        is_savepoint: c.is_savepoint(),
        savepoint_path: c.savepoint_path.clone(),
        trigger_time: rfc3339(c.trigger_time_ms),
        completed_time: rfc3339(c.completed_time_ms),
        storage: c.storage_root.clone(),
        backend: c.backend.to_string(),
        state_size_bytes: c.state_bytes(),
        snapshots: c.snapshots.len() as u32,
    }
}

/// The checkpoint statistics of one job.
pub fn checkpoints(catalog: Option<&CheckpointCatalog>, stats: Option<&Stats>) -> CheckpointStats {
    let empty = Stats::default();
    let stats = stats.unwrap_or(&empty);
    let mut all: Vec<&CompletedCheckpoint> = catalog
        .map(|c| c.completed.iter().chain(&c.savepoints).collect())
        .unwrap_or_default();
    all.sort_by_key(|c| c.id);
    let newest = |savepoint: bool| {
        all.iter()
            .rev()
            .find(|c| !savepoint || c.is_savepoint())
            .map(|c| from_catalog(c))
    };
    let in_progress = stats.in_progress();
    CheckpointStats {
        counts: CheckpointCounts {
            restored: stats.restored,
            total: stats.completed + stats.failed + in_progress,
            in_progress,
            completed: stats.completed,
            failed: stats.failed,
        },
        summary: CheckpointSummary {
            state_size_bytes: span(&stats.state_bytes),
            end_to_end_duration_ms: span(&stats.duration_ms),
            alignment_ms: span(&stats.alignment_ms),
        },
        latest: LatestCheckpoints {
            completed: stats
                .latest_completed
                .as_ref()
                .map(entry)
                .or_else(|| newest(false)),
            savepoint: stats
                .latest_savepoint
                .as_ref()
                .map(entry)
                .or_else(|| newest(true)),
            failed: stats.latest_failed.as_ref().map(entry),
            restored: stats
                .latest_restored
                .as_ref()
                .map(|r| RestoredCheckpointInfo {
                    id: r.id.0,
                    restore_time: rfc3339(r.restore_time_ms),
                    is_savepoint: r.savepoint_path.is_some(),
                    savepoint_path: r.savepoint_path.clone(),
                }),
        },
        history: stats.history.iter().map(entry).collect(),
        retained: all.into_iter().map(retained).collect(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::checkpoint::{AckTimings, Coordinator, OperatorSnapshot, SubtaskKey, Topology};
    use crate::checkpoint::{Action, VertexInfo};
    use crate::cluster_state::SnapshotEntry;
    use eddy_sdk::ids::{CheckpointId, JobId, NodeId, SubtaskIndex, VertexId};
    use eddy_sdk::spec::{CheckpointSettings, HumanDuration, StateBackendKind};
    use std::collections::BTreeSet;

    fn completed(id: u64, savepoint: Option<&str>) -> CompletedCheckpoint {
        CompletedCheckpoint {
            id: CheckpointId(id),
            trigger_time_ms: 1_000,
            completed_time_ms: 1_250,
            storage_root: "/chk".into(),
            backend: StateBackendKind::Rocksdb,
            snapshots: (0..2)
                .map(|i| SnapshotEntry {
                    node: NodeId::from("w"),
                    index: SubtaskIndex(i),
                    parallelism: 2,
                    manifest_path: format!("j/chk-{id}/w/{i}/_manifest"),
                    state_bytes: 50,
                    uploaded_bytes: 5,
                })
                .collect(),
            savepoint_path: savepoint.map(String::from),
        }
    }

    /// A follower (no coordinator) still shows the catalog: retained
    /// checkpoints, the latest completed and savepoint, zero counts.
    #[test]
    fn checkpoints_from_catalog_only() {
        let catalog = CheckpointCatalog {
            reserved_up_to: Some(CheckpointId(100)),
            completed: vec![completed(3, None), completed(5, None)],
            savepoints: vec![completed(4, Some("/sp"))],
        };
        let view = checkpoints(Some(&catalog), None);
        assert_eq!(view.counts, CheckpointCounts::default());
        let ids: Vec<_> = view.retained.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![3, 4, 5]);
        assert_eq!(view.retained[1].backend, "rocksdb");
        assert_eq!(view.latest.completed.as_ref().unwrap().id, 5);
        let sp = view.latest.savepoint.unwrap();
        assert_eq!((sp.id, sp.state_size_bytes), (4, 100));
        assert_eq!(sp.operators[0].node, "w");
        assert_eq!(sp.duration_ms, Some(250));
        assert!(view.history.is_empty());
        assert_eq!(checkpoints(None, None), CheckpointStats::default());
    }

    /// The leader's view: counts, history newest first, summary and the
    /// failure reason, from a coordinator that ran one good and one failed
    /// checkpoint.
    #[test]
    fn checkpoints_from_coordinator_stats() {
        let settings = CheckpointSettings {
            interval: HumanDuration::from_millis(1_000),
            timeout: HumanDuration::from_millis(10_000),
            min_pause: HumanDuration::default(),
            retained: 1,
            tolerable_failures: 5,
            backend: StateBackendKind::Memory,
            storage: "/chk".into(),
        };
        let topology = Topology {
            vertices: BTreeMap::from([(
                VertexId(0),
                VertexInfo {
                    parallelism: 1,
                    stateful_nodes: BTreeSet::from([NodeId::from("w")]),
                },
            )]),
        };
        let key = SubtaskKey {
            vertex: VertexId(0),
            index: SubtaskIndex(0),
        };
        let mut c = Coordinator::new(JobId::from("j"), settings, topology, None, 0);
        c.on_ids_reserved(CheckpointId(10));
        c.tick(1_000);
        let snapshot = OperatorSnapshot {
            node: NodeId::from("w"),
            manifest_path: "m".into(),
            state_bytes: 70,
            uploaded_bytes: 7,
        };
        let timings = AckTimings {
            alignment_ms: 12,
            sync_ms: 3,
            async_ms: 40,
        };
        let actions = c.on_ack(CheckpointId(1), key, vec![snapshot], timings, 1_300);
        let Some(Action::Commit(done)) = actions.into_iter().next() else {
            panic!("expected a commit")
        };
        c.on_committed(CheckpointId(1), 1_400);
        c.tick(2_400);
        c.on_decline(CheckpointId(2), key, "disk full", 2_500);
        c.tick(3_500);

        let catalog = CheckpointCatalog {
            reserved_up_to: Some(CheckpointId(10)),
            completed: vec![done],
            savepoints: Vec::new(),
        };
        let view = checkpoints(Some(&catalog), Some(c.stats()));
        assert_eq!(
            view.counts,
            CheckpointCounts {
                restored: 0,
                total: 3,
                in_progress: 1,
                completed: 1,
                failed: 1
            }
        );
        let ids: Vec<_> = view.history.iter().map(|h| (h.id, h.status)).collect();
        assert_eq!(
            ids,
            vec![
                (3, CheckpointStatus::InProgress),
                (2, CheckpointStatus::Failed),
                (1, CheckpointStatus::Completed)
            ]
        );
        let done = view.latest.completed.unwrap();
        assert_eq!(
            (
                done.state_size_bytes,
                done.uploaded_bytes,
                done.max_alignment_ms
            ),
            (70, 7, 12)
        );
        assert_eq!(done.duration_ms, Some(400));
        assert!(
            view.latest
                .failed
                .unwrap()
                .failure_message
                .unwrap()
                .contains("disk full")
        );
        assert_eq!(view.summary.state_size_bytes.max, 70);
        assert_eq!(view.retained.len(), 1);
        // The body serializes with Flink-style status names.
        let json = serde_json::to_value(&view.history[0]).unwrap();
        assert_eq!(json["status"], "IN_PROGRESS");
    }
}
