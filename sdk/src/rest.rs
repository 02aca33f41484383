//! REST bodies under `/v1`, shared by the JobManager (which serializes them)
//! and the client (which reads them). Field names are the public contract
//! documented in `docs/rest.md`.

use crate::error::FailureClass;
use serde::{Deserialize, Serialize};

/// A job's lifecycle state, spelled as Flink spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Accepted and waiting for slots (`status_message` says for what).
    Created,
    /// Tasks are deployed and running (or being deployed).
    Running,
    /// Every task finished (bounded jobs).
    Finished,
    /// A cancel was requested; tasks are stopping.
    Cancelling,
    /// An attempt failed; the job is redeployed from its latest checkpoint
    /// after the restart strategy's backoff.
    Restarting,
    Canceled,
    Failed,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Finished | JobState::Canceled | JobState::Failed
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Created => "CREATED",
            JobState::Running => "RUNNING",
            JobState::Finished => "FINISHED",
            JobState::Cancelling => "CANCELLING",
            JobState::Restarting => "RESTARTING",
            JobState::Canceled => "CANCELED",
            JobState::Failed => "FAILED",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of one subtask as the JobManager last heard it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    Scheduled,
    Deploying,
    Running,
    Finished,
    Canceled,
    Failed,
}

/// `GET /v1/overview`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    pub taskmanagers: u32,
    pub slots_total: u32,
    pub slots_free: u32,
    pub jobs_created: u32,
    pub jobs_running: u32,
    pub jobs_finished: u32,
    pub jobs_cancelled: u32,
    pub jobs_failed: u32,
    /// This JobManager's Raft id and whether it leads.
    pub jobmanager_id: u64,
    pub is_leader: bool,
    pub version: String,
}

/// The resources of one slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KpuInfo {
    pub vcpu_millis: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

/// `GET /v1/taskmanagers` items.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskManagerInfo {
    pub id: String,
    pub rpc_addr: String,
    pub metrics_url: String,
    /// `ALIVE` or `LOST`.
    pub state: String,
    pub slots_total: u32,
    pub slots_free: u32,
    pub kpu: KpuInfo,
    pub last_heartbeat_ms_ago: u64,
    pub rss_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskManagerList {
    pub taskmanagers: Vec<TaskManagerInfo>,
}

/// `POST /v1/jobs` response (201).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubmitResponse {
    pub job_id: String,
}

/// `GET /v1/jobs` items.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    pub id: String,
    pub name: String,
    pub state: JobState,
    pub parallelism: u32,
    /// RFC 3339 times.
    pub submitted_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<JobSummary>,
}

/// Why a job failed: the class and the root cause chain (outermost first).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailureInfo {
    pub class: FailureClass,
    pub message: String,
    pub chain: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taskmanager: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vertex: Option<u32>,
    pub time: String,
}

/// Live figures of one subtask.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SubtaskMetricsInfo {
    pub records_in: u64,
    pub records_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Fraction of the last second spent blocked on output credit (0..1).
    pub backpressure: f64,
    /// Fraction of the last second spent processing (0..1).
    pub busy: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_ms: Option<i64>,
    pub late_records_dropped: u64,
    /// Latency-marker counts per bucket of `eddy_sdk::latency::BOUNDS_US`
    /// (sinks only; empty elsewhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_buckets: Vec<u64>,
    /// Kafka sources: records after the position, over all partitions read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_lag_records: Option<u64>,
    /// Kafka sources: age of the last record read from a partition that
    /// still has unread records (0 when caught up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_lag_ms: Option<u64>,
}

/// End-to-end latency seen by a sink vertex: from the time a source's oldest
/// pending record became due to the time the sink received the latency marker
/// that followed it. Markers are not held back by windows, so for windowed
/// jobs this is the pipeline's latency, not the wait for a window to close.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyInfo {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl LatencyInfo {
    /// From merged bucket counts; `None` without samples.
    pub fn from_buckets(counts: &[u64]) -> Option<LatencyInfo> {
        Some(LatencyInfo {
            samples: counts.iter().sum(),
            p50_ms: crate::latency::quantile_ms(counts, 0.5)?,
            p99_ms: crate::latency::quantile_ms(counts, 0.99)?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubtaskInfo {
    pub index: u32,
    pub attempt: u32,
    pub taskmanager: String,
    pub slot: u32,
    pub state: TaskState,
    pub metrics: SubtaskMetricsInfo,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VertexInfo {
    pub id: u32,
    pub name: String,
    pub nodes: Vec<String>,
    pub parallelism: u32,
    /// Sums over subtasks.
    pub records_in: u64,
    pub records_out: u64,
    /// The highest subtask backpressure ratio (as Flink reports a vertex).
    pub backpressure: f64,
    pub busy: f64,
    /// Latency at this vertex (sink vertices), over the subtasks' lifetimes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyInfo>,
    pub subtasks: Vec<SubtaskInfo>,
}

/// `GET /v1/jobs/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobDetail {
    pub id: String,
    pub name: String,
    pub state: JobState,
    pub parallelism: u32,
    pub max_parallelism: u32,
    pub attempt: u32,
    pub submitted_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// Why the job is in its state, in words (e.g. waiting for slots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureInfo>,
    pub vertices: Vec<VertexInfo>,
    pub spec: serde_json::Value,
}

/// The outcome of one checkpoint so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CheckpointStatus {
    InProgress,
    Completed,
    Failed,
}

/// `GET /v1/jobs/{id}/checkpoints`: Flink's checkpoint statistics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointStats {
    pub counts: CheckpointCounts,
    /// Over the checkpoints completed since this JobManager started leading.
    pub summary: CheckpointSummary,
    pub latest: LatestCheckpoints,
    /// Recent checkpoints, newest first (bounded).
    pub history: Vec<CheckpointInfo>,
    /// What a restart can restore from: the retained checkpoints and every
    /// savepoint, as the replicated catalog holds them (oldest first).
    pub retained: Vec<RetainedCheckpointInfo>,
}

/// Counts since this JobManager started leading (Flink's are per JobManager too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointCounts {
    pub restored: u64,
    pub total: u64,
    pub in_progress: u64,
    pub completed: u64,
    pub failed: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinMaxAvg {
    pub min: u64,
    pub max: u64,
    pub avg: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointSummary {
    pub state_size_bytes: MinMaxAvg,
    pub end_to_end_duration_ms: MinMaxAvg,
    pub alignment_ms: MinMaxAvg,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatestCheckpoints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<CheckpointInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint: Option<CheckpointInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<CheckpointInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<RestoredCheckpointInfo>,
}

/// One checkpoint or savepoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub id: u64,
    pub status: CheckpointStatus,
    pub is_savepoint: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_path: Option<String>,
    /// RFC 3339 times.
    pub trigger_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    pub num_subtasks: u32,
    pub num_acknowledged_subtasks: u32,
    /// Bytes of state over every snapshot, and the bytes uploaded for it
    /// (less with incremental RocksDB snapshots).
    pub state_size_bytes: u64,
    pub uploaded_bytes: u64,
    /// State bytes per operator (node), in node order.
    pub operators: Vec<OperatorCheckpointInfo>,
    /// The longest barrier alignment and synchronous/asynchronous snapshot
    /// parts among the acknowledged subtasks.
    pub max_alignment_ms: u64,
    pub max_sync_ms: u64,
    pub max_async_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_message: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorCheckpointInfo {
    pub node: String,
    pub state_size_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredCheckpointInfo {
    pub id: u64,
    pub restore_time: String,
    pub is_savepoint: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_path: Option<String>,
}

/// A checkpoint or savepoint in the replicated catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedCheckpointInfo {
    pub id: u64,
    pub is_savepoint: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_path: Option<String>,
    pub trigger_time: String,
    pub completed_time: String,
    pub storage: String,
    /// `memory` or `rocksdb`.
    pub backend: String,
    pub state_size_bytes: u64,
    pub snapshots: u32,
}

/// `GET /v1/jobs/{id}/exceptions`: the job's failures, newest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExceptionList {
    pub exceptions: Vec<ExceptionInfo>,
}

/// One failure of a job attempt and what was done about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExceptionInfo {
    /// RFC 3339.
    pub time: String,
    /// `user_code`, `bad_data`, `connector`, `infrastructure` or `resources`.
    pub class: String,
    pub message: String,
    /// The cause chain, outermost first (the root cause last).
    pub chain: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taskmanager: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vertex: Option<u32>,
    /// The attempt that failed.
    pub attempt: u32,
    /// `restart` or `fail`.
    pub action: String,
    /// With `restart`: the wait before the redeploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
    /// With `restart`: the checkpoint the next attempt restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_checkpoint: Option<u64>,
    /// The checkpoint found damaged (and dropped) by this failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged_checkpoint: Option<u64>,
}

/// `POST /v1/jobs/{id}/savepoints`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavepointRequest {
    /// The directory the savepoint goes in (a path or URL); default:
    /// `<the job's checkpoint storage>/savepoints`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_directory: Option<String>,
}

/// `POST /v1/jobs/{id}/stop`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Must be true: the job stops at a savepoint (without one, cancel it).
    pub savepoint: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_directory: Option<String>,
}

/// The answer to a savepoint or stop request: poll
/// `GET /v1/jobs/{id}/savepoints/{request_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationAccepted {
    pub request_id: String,
}

/// Where an asynchronous savepoint operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationStatus {
    InProgress,
    Completed,
    Failed,
}

/// `GET /v1/jobs/{id}/savepoints/{request_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavepointOperation {
    pub request_id: String,
    pub job_id: String,
    pub status: OperationStatus,
    /// The savepoint's directory: what `restore_from` takes.
    pub location: String,
    /// Whether the job stops at the savepoint.
    pub stop: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// Query of `POST /v1/jobs`: start the job from a savepoint or a retained
/// checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitQuery {
    /// A savepoint directory or a retained checkpoint's `.../<job>/chk-<n>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<String>,
    /// Skip the state of nodes the new job does not have (else an error).
    #[serde(default)]
    pub allow_non_restored_state: bool,
}

/// Response header of every JobManager answer: the id of the leader as the
/// answering node knows it (absent while no leader is known).
pub const LEADER_ID_HEADER: &str = "x-eddy-leader-id";
/// Response header of every JobManager answer: the answering node's role
/// (`leader`, `follower`, `learner`, `candidate`). A follower's reads may lag
/// the leader by the replication delay.
pub const ROLE_HEADER: &str = "x-eddy-role";
/// Request header a follower sets (its id) on a write it forwards to the
/// leader; a node never forwards such a request again.
pub const FORWARDED_BY_HEADER: &str = "x-eddy-forwarded-by";
/// Response header of a forwarded write: the id of the leader that answered.
pub const FORWARDED_TO_HEADER: &str = "x-eddy-forwarded-to";

/// A JobManager's role in the Raft group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    Leader,
    Follower,
    /// Receives the log but does not vote (being added, or not yet added).
    Learner,
    /// Asking for votes: no leader is known to it.
    Candidate,
    /// Stopping.
    Shutdown,
}

impl MemberRole {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Leader => "leader",
            MemberRole::Follower => "follower",
            MemberRole::Learner => "learner",
            MemberRole::Candidate => "candidate",
            MemberRole::Shutdown => "shutdown",
        }
    }
}

impl std::fmt::Display for MemberRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /v1/cluster`: the Raft group as the answering node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The leader's id, when one is known.
    pub leader: Option<u64>,
    pub term: u64,
    /// The answering node's id and role.
    pub this_node: u64,
    pub role: MemberRole,
    /// The last log index known committed by a quorum.
    pub commit_index: Option<u64>,
    /// The last log index applied to this node's state (what its reads see).
    pub last_applied: Option<u64>,
    /// The last log index in this node's log.
    pub last_log_index: Option<u64>,
    /// This node's latest snapshot, if it built or received one.
    pub snapshot: Option<SnapshotInfo>,
    /// Every voter and learner, by id.
    pub members: Vec<MemberInfo>,
}

/// The latest snapshot of a node's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub last_log_index: u64,
    pub last_log_term: u64,
    /// Log entries up to this index are purged (a member behind it catches
    /// up from the snapshot).
    pub purged_index: Option<u64>,
}

/// One member of the Raft group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: u64,
    pub role: MemberRole,
    /// Its REST URL, once it announced one.
    pub rest_url: Option<String>,
    pub raft_addr: String,
    /// Milliseconds since it last answered the leader (null unless the
    /// answering node leads, and for the leader itself).
    pub last_contact_ms: Option<u64>,
    /// The last log index the leader knows it holds (null unless the
    /// answering node leads).
    pub matched_index: Option<u64>,
}

/// `POST /v1/cluster/members`: add a JobManager (started with `--join`) to
/// the group, first as a learner, then as a voter once it caught up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMemberRequest {
    /// Its Raft id (its config's `id`), not 0.
    pub id: u64,
    /// `host:port` of its gRPC server (its `rpc-addr`).
    pub raft_addr: String,
    /// `http://host:port` of its REST API.
    pub rest_url: String,
}
