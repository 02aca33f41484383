//! Builds the REST bodies (`eddy_sdk::rest`) from the replicated cluster
//! state and the leader's TaskManager registry. Pure reads, no I/O.

use crate::cluster_state::{ClusterState, Failure, JobRecord};
use crate::taskmanagers::{Registry, TaskKey};
use chrono::{DateTime, SecondsFormat};
use eddy_sdk::ids::SubtaskIndex;
use eddy_sdk::rest::{
    FailureInfo, JobDetail, JobState, JobSummary, LatencyInfo, Overview, SubtaskInfo,
    SubtaskMetricsInfo, TaskManagerInfo, TaskState, VertexInfo,
};
use tokio::time::Instant;

/// Milliseconds since the epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

pub fn overview(
    state: &ClusterState,
    registry: &Registry,
    jobmanager_id: u64,
    is_leader: bool,
) -> Overview {
    let used = state.slots_in_use();
    let slots_total = registry.total_slots();
    let busy: u32 = registry
        .alive()
        .map(|tm| used.get(&tm.id).map_or(0, |s| s.len() as u32))
        .sum();
    let count =
        |f: &dyn Fn(JobState) -> bool| state.jobs.values().filter(|j| f(j.state)).count() as u32;
    Overview {
        taskmanagers: registry.alive().count() as u32,
        slots_total,
        slots_free: slots_total.saturating_sub(busy),
        jobs_created: count(&|s| s == JobState::Created),
        // A cancelling job still runs tasks.
        jobs_running: count(&|s| matches!(s, JobState::Running | JobState::Cancelling)),
        jobs_finished: count(&|s| s == JobState::Finished),
        jobs_cancelled: count(&|s| s == JobState::Canceled),
        jobs_failed: count(&|s| s == JobState::Failed),
        jobmanager_id,
        is_leader,
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

pub fn taskmanagers(
    state: &ClusterState,
    registry: &Registry,
    now: Instant,
) -> Vec<TaskManagerInfo> {
    let used = state.slots_in_use();
    registry
        .all()
        .map(|tm| {
            let busy = used.get(&tm.id).map_or(0, |s| s.len() as u32);
            TaskManagerInfo {
                id: tm.id.to_string(),
                rpc_addr: tm.rpc_addr.clone(),
                metrics_url: tm.metrics_url.clone(),
                state: if tm.lost { "LOST" } else { "ALIVE" }.to_string(),
                slots_total: tm.slots,
                slots_free: if tm.lost {
                    0
                } else {
                    tm.slots.saturating_sub(busy)
                },
                kpu: tm.kpu,
                last_heartbeat_ms_ago: u64::try_from(
                    now.saturating_duration_since(tm.last_heartbeat).as_millis(),
                )
                .unwrap_or(u64::MAX),
                rss_bytes: tm.rss_bytes,
            }
        })
        .collect()
}

pub fn summary(job: &JobRecord) -> JobSummary {
    JobSummary {
        id: job.id.to_string(),
        name: job.name.clone(),
        state: job.state,
        parallelism: job.parallelism,
        submitted_at: rfc3339(job.submitted_at_ms),
        start_time: job.start_time_ms.map(rfc3339),
        end_time: job.end_time_ms.map(rfc3339),
    }
}

fn failure_info(f: &Failure) -> FailureInfo {
    FailureInfo {
        class: f.class,
        message: f.message.clone(),
        chain: f.chain.clone(),
        taskmanager: f.taskmanager.as_ref().map(ToString::to_string),
        vertex: f.vertex.map(|v| v.0),
        time: rfc3339(f.time_ms),
    }
}

/// The state shown for a subtask the leader has no status for.
fn assumed_state(job: JobState, placed: bool) -> TaskState {
    match job {
        JobState::Created | JobState::Restarting => TaskState::Scheduled,
        JobState::Running if placed => TaskState::Deploying,
        JobState::Running => TaskState::Scheduled,
        JobState::Finished => TaskState::Finished,
        JobState::Cancelling | JobState::Canceled | JobState::Failed => TaskState::Canceled,
    }
}

pub fn detail(job: &JobRecord, registry: &Registry, now_ms: i64) -> JobDetail {
    let spec_value: serde_json::Value =
        serde_json::from_str(&job.spec_json).unwrap_or(serde_json::Value::Null);
    let graph = eddy_sdk::spec::parse_json(&job.spec_json)
        .ok()
        .and_then(|s| eddy_sdk::graph::build(&s).ok());
    let vertices = graph
        .map(|g| {
            g.vertices
                .iter()
                .map(|v| {
                    let subtasks: Vec<SubtaskInfo> = (0..v.parallelism)
                        .map(|i| {
                            let placement = job
                                .placements
                                .iter()
                                .find(|p| p.vertex == v.id && p.index == SubtaskIndex(i));
                            let key = TaskKey {
                                job_id: job.id.clone(),
                                vertex: v.id,
                                index: SubtaskIndex(i),
                            };
                            let status = placement
                                .and_then(|p| registry.task(&p.tm_id, &key))
                                .filter(|s| s.attempt == job.attempt);
                            // Once the job has ended, its recorded final
                            // statuses stand in for reports the TaskManagers
                            // have since dropped.
                            let last = job
                                .final_tasks
                                .iter()
                                .find(|t| t.vertex == v.id && t.index == SubtaskIndex(i));
                            SubtaskInfo {
                                index: i,
                                attempt: job.attempt.0,
                                taskmanager: placement
                                    .map(|p| p.tm_id.to_string())
                                    .unwrap_or_default(),
                                slot: placement.map_or(0, |p| p.slot.0),
                                state: match (status, last) {
                                    (Some(s), _) => s.state,
                                    (None, Some(t)) => t.state,
                                    (None, None) => assumed_state(job.state, placement.is_some()),
                                },
                                metrics: match (status, last) {
                                    (Some(s), _) => s.metrics.clone(),
                                    (None, Some(t)) => t.metrics.clone(),
                                    (None, None) => SubtaskMetricsInfo::default(),
                                },
                            }
                        })
                        .collect();
                    VertexInfo {
                        id: v.id.0,
                        name: v.name(),
                        nodes: v.nodes.iter().map(ToString::to_string).collect(),
                        parallelism: v.parallelism,
                        records_in: subtasks.iter().map(|s| s.metrics.records_in).sum(),
                        records_out: subtasks.iter().map(|s| s.metrics.records_out).sum(),
                        backpressure: subtasks
                            .iter()
                            .map(|s| s.metrics.backpressure)
                            .fold(0.0, f64::max),
                        busy: subtasks.iter().map(|s| s.metrics.busy).fold(0.0, f64::max),
                        latency: LatencyInfo::from_buckets(&subtasks.iter().fold(
                            Vec::new(),
                            |mut all, s| {
                                eddy_sdk::latency::merge(&mut all, &s.metrics.latency_buckets);
                                all
                            },
                        )),
                        subtasks,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    JobDetail {
        id: job.id.to_string(),
        name: job.name.clone(),
        state: job.state,
        parallelism: job.parallelism,
        max_parallelism: job.max_parallelism,
        attempt: job.attempt.0,
        submitted_at: rfc3339(job.submitted_at_ms),
        start_time: job.start_time_ms.map(rfc3339),
        end_time: job.end_time_ms.map(rfc3339),
        duration_ms: job
            .start_time_ms
            .map(|start| job.end_time_ms.unwrap_or(now_ms) - start),
        status_message: job.status_message.clone(),
        failure: job.failure.as_ref().map(failure_info),
        vertices,
        spec: spec_value,
    }
}
