//! Proto -> domain conversions of what TaskManagers send. Every malformed
//! field becomes a [`Invalid`] naming it, never a panic.

use crate::taskmanagers::{Registration, TaskKey, TaskStatus};
use eddy_proto::v1 as pb;
use eddy_sdk::FailureClass;
use eddy_sdk::ids::{
    Attempt, CheckpointId, JobId, SlotIndex, SubtaskIndex, TaskManagerId, VertexId,
};
use eddy_sdk::rest::{KpuInfo, SubtaskMetricsInfo, TaskState};

/// A malformed request field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<Invalid> for tonic::Status {
    fn from(e: Invalid) -> Self {
        tonic::Status::invalid_argument(e.0)
    }
}

pub fn tm_id(raw: &str) -> Result<TaskManagerId, Invalid> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(Invalid("tm_id must not be empty".into()));
    }
    Ok(TaskManagerId::from(raw))
}

fn task_state(raw: i32) -> Result<TaskState, Invalid> {
    Ok(match pb::TaskState::try_from(raw) {
        Ok(pb::TaskState::Deploying) => TaskState::Deploying,
        Ok(pb::TaskState::Running) => TaskState::Running,
        Ok(pb::TaskState::Finished) => TaskState::Finished,
        Ok(pb::TaskState::Canceled) => TaskState::Canceled,
        Ok(pb::TaskState::Failed) => TaskState::Failed,
        Ok(pb::TaskState::Unspecified) | Err(_) => {
            return Err(Invalid(format!("invalid task state {raw}")));
        }
    })
}

fn ratio(ms_per_sec: u32) -> f64 {
    (f64::from(ms_per_sec) / 1000.0).clamp(0.0, 1.0)
}

pub fn metrics(m: Option<&pb::SubtaskMetrics>) -> SubtaskMetricsInfo {
    let Some(m) = m else {
        return SubtaskMetricsInfo::default();
    };
    SubtaskMetricsInfo {
        records_in: m.records_in,
        records_out: m.records_out,
        bytes_in: m.bytes_in,
        bytes_out: m.bytes_out,
        backpressure: ratio(m.backpressured_ms_per_sec),
        busy: ratio(m.busy_ms_per_sec),
        watermark_ms: (m.watermark_ms != i64::MIN).then_some(m.watermark_ms),
        late_records_dropped: m.late_records_dropped,
        latency_buckets: m.latency_buckets.clone(),
        source_lag_records: m.source_lag_records,
        source_lag_ms: m.source_lag_ms,
    }
}

pub fn task_status(s: &pb::TaskStatus) -> Result<(TaskKey, TaskStatus), Invalid> {
    let subtask = s
        .subtask
        .as_ref()
        .ok_or_else(|| Invalid("task status without subtask".into()))?;
    if subtask.job_id.trim().is_empty() {
        return Err(Invalid("task status with an empty job_id".into()));
    }
    let key = TaskKey {
        job_id: JobId::from(subtask.job_id.as_str()),
        vertex: VertexId(subtask.vertex),
        index: SubtaskIndex(subtask.index),
    };
    let failure_class = match s.failure_class.as_str() {
        "" => None,
        // An unknown class from a newer TaskManager still counts as a failure.
        other => FailureClass::parse(other).or(Some(FailureClass::UserCode)),
    };
    let status = TaskStatus {
        attempt: Attempt(subtask.attempt),
        state: task_state(s.state)?,
        failure_chain: s.failure_chain.clone(),
        failure_class,
        metrics: metrics(s.metrics.as_ref()),
        slot: SlotIndex(s.slot),
        damaged_checkpoint: (s.damaged_checkpoint > 0).then_some(s.damaged_checkpoint),
    };
    Ok((key, status))
}

pub fn task_statuses(statuses: &[pb::TaskStatus]) -> Result<Vec<(TaskKey, TaskStatus)>, Invalid> {
    statuses.iter().map(task_status).collect()
}

pub fn registration(req: &pb::RegisterTaskManagerRequest) -> Result<Registration, Invalid> {
    let id = tm_id(&req.tm_id)?;
    if req.rpc_addr.trim().is_empty() {
        return Err(Invalid("rpc_addr must not be empty".into()));
    }
    if req.slots == 0 {
        return Err(Invalid("a taskmanager must offer at least one slot".into()));
    }
    let kpu = req.kpu.as_ref().map_or_else(KpuInfo::default, |k| KpuInfo {
        vcpu_millis: k.vcpu_millis,
        memory_bytes: k.memory_bytes,
        disk_bytes: k.disk_bytes,
    });
    Ok(Registration {
        id,
        rpc_addr: req.rpc_addr.trim().to_string(),
        slots: req.slots,
        kpu,
        metrics_url: req.metrics_url.clone(),
        custom_operators: req.custom_operators.clone(),
        tasks: task_statuses(&req.tasks)?,
    })
}

/// The subtask and checkpoint of an acknowledgement or decline.
pub fn checkpoint_subtask(
    subtask: Option<&pb::SubtaskRef>,
    checkpoint_id: u64,
) -> Result<(JobId, Attempt, crate::checkpoint::SubtaskKey, CheckpointId), Invalid> {
    let s = subtask.ok_or_else(|| Invalid("checkpoint report without subtask".into()))?;
    if s.job_id.trim().is_empty() {
        return Err(Invalid("checkpoint report with an empty job_id".into()));
    }
    if checkpoint_id == 0 {
        return Err(Invalid("checkpoint id 0 does not exist".into()));
    }
    Ok((
        JobId::from(s.job_id.as_str()),
        Attempt(s.attempt),
        crate::checkpoint::SubtaskKey {
            vertex: VertexId(s.vertex),
            index: SubtaskIndex(s.index),
        },
        CheckpointId(checkpoint_id),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_status_without_subtask_is_invalid() {
        let s = pb::TaskStatus {
            state: pb::TaskState::Running as i32,
            ..Default::default()
        };
        assert!(task_status(&s).is_err());
    }

    #[test]
    fn task_status_unspecified_state_is_invalid() {
        let s = pb::TaskStatus {
            subtask: Some(pb::SubtaskRef {
                job_id: "j".into(),
                vertex: 0,
                index: 0,
                attempt: 0,
            }),
            state: 0,
            ..Default::default()
        };
        assert!(task_status(&s).unwrap_err().0.contains("task state"));
    }

    #[test]
    fn metrics_ratios_and_missing_watermark() {
        let m = metrics(Some(&pb::SubtaskMetrics {
            backpressured_ms_per_sec: 250,
            busy_ms_per_sec: 5000,
            watermark_ms: i64::MIN,
            ..Default::default()
        }));
        assert_eq!((m.backpressure, m.busy, m.watermark_ms), (0.25, 1.0, None));
    }

    #[test]
    fn registration_zero_slots_is_invalid() {
        let req = pb::RegisterTaskManagerRequest {
            tm_id: "a".into(),
            rpc_addr: "h:1".into(),
            slots: 0,
            ..Default::default()
        };
        assert!(registration(&req).is_err());
    }
}
