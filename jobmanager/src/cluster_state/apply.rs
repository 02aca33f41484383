//! The mutations of the cluster state ([`Command`]) and the deterministic
//! function that applies them.
//!
//! A command that does not fit the current state (unknown job, illegal
//! transition, stale attempt) is refused with a [`Rejection`] and changes
//! nothing: the log may contain it, but every replica refuses it alike.

use super::{
    ClusterState, CompletedCheckpoint, ExceptionRecord, Failure, FailureAction, FinalTask,
    JobRecord, Placement, RestoreSource,
};
use eddy_sdk::ids::{Attempt, CheckpointId, JobId};
use eddy_sdk::rest::JobState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// A change to the cluster state, committed through Raft.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// A new job, CREATED.
    SubmitJob {
        id: JobId,
        name: String,
        spec_json: String,
        parallelism: u32,
        max_parallelism: u32,
        time_ms: i64,
        /// The savepoint (or retained checkpoint) the job starts from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        restore_from: Option<RestoreSource>,
    },
    /// A job's attempt failed: recorded in its exception history; the job
    /// RESTARTS (`record.action` is a restart, at `restart_at_ms`) or FAILS.
    JobFailure {
        id: JobId,
        attempt: Attempt,
        record: ExceptionRecord,
        /// The restart strategy's state after this failure.
        tracker: crate::restart::Tracker,
        /// With a restart: when to redeploy (leader wall clock).
        restart_at_ms: Option<i64>,
        /// With a final failure: the subtasks' last statuses.
        #[serde(default)]
        final_tasks: Vec<FinalTask>,
    },
    /// Updates the words explaining a non-terminal job's state.
    SetStatusMessage { id: JobId, message: Option<String> },
    /// The job's subtasks were placed on slots; the job stays CREATED until
    /// its tasks are deployed.
    JobScheduled {
        id: JobId,
        attempt: Attempt,
        placements: Vec<Placement>,
        time_ms: i64,
    },
    /// A lifecycle transition. With `attempt`, the command only applies to that
    /// attempt (a late decision about an older attempt is refused as stale).
    JobStateChanged {
        id: JobId,
        attempt: Option<Attempt>,
        state: JobState,
        time_ms: i64,
        message: Option<String>,
        failure: Option<Failure>,
        /// With a terminal state: the subtasks' last statuses, kept in the record.
        #[serde(default)]
        final_tasks: Vec<FinalTask>,
    },
    /// A user asked to cancel the job.
    CancelJob { id: JobId, time_ms: i64 },
    /// A JobManager announces its REST URL. Written by 0.1 JobManagers; the
    /// Raft membership carries REST URLs now, and this is only applied when
    /// an old log is replayed.
    SetJobManagerRestUrl { node: u64, url: String },
    /// The leader may trigger checkpoints of `job` with ids up to `up_to`; a
    /// later leader starts after it, so an id is never used twice.
    ReserveCheckpointIds { job: JobId, up_to: CheckpointId },
    /// Every expected subtask acknowledged the checkpoint: it is now what a
    /// restart restores from (and sinks may commit).
    CheckpointCompleted {
        job: JobId,
        checkpoint: CompletedCheckpoint,
    },
    /// Retention dropped these checkpoints (their files are deleted after
    /// this applies). Savepoints are never removed.
    CheckpointsDiscarded { job: JobId, ids: Vec<CheckpointId> },
}

/// Why a command was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectionKind {
    NotFound,
    /// The command does not fit the job's current state.
    Conflict,
    /// The command is about an older attempt of the job.
    Stale,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub kind: RejectionKind,
    pub message: String,
}

/// The outcome of applying one log entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    #[default]
    Applied,
    Rejected(Rejection),
}

impl Response {
    pub fn into_result(self) -> Result<(), Rejection> {
        match self {
            Response::Applied => Ok(()),
            Response::Rejected(r) => Err(r),
        }
    }
}

pub(super) fn reject(kind: RejectionKind, message: impl Into<String>) -> Response {
    Response::Rejected(Rejection {
        kind,
        message: message.into(),
    })
}

/// Whether a job may move from `from` to `to`.
fn transition_allowed(from: JobState, to: JobState) -> bool {
    use JobState::*;
    matches!(
        (from, to),
        (Created, Running | Failed | Cancelling | Canceled)
            | (Running, Finished | Failed | Cancelling)
            | (Restarting, Created | Failed | Canceled)
            | (Cancelling, Canceled)
    )
}

impl ClusterState {
    /// Applies one command. Deterministic: the result depends only on the
    /// state and the command.
    pub fn apply(&mut self, cmd: &Command) -> Response {
        match cmd {
            Command::SubmitJob {
                id,
                name,
                spec_json,
                parallelism,
                max_parallelism,
                time_ms,
                restore_from,
            } => {
                if self.jobs.contains_key(id) {
                    return reject(RejectionKind::Conflict, format!("job {id} already exists"));
                }
                self.jobs.insert(
                    id.clone(),
                    JobRecord {
                        id: id.clone(),
                        name: name.clone(),
                        spec_json: spec_json.clone(),
                        state: JobState::Created,
                        parallelism: *parallelism,
                        max_parallelism: *max_parallelism,
                        attempt: Attempt(0),
                        submitted_at_ms: *time_ms,
                        start_time_ms: None,
                        end_time_ms: None,
                        status_message: None,
                        failure: None,
                        placements: Vec::new(),
                        final_tasks: Vec::new(),
                        exceptions: Vec::new(),
                        restart: Default::default(),
                        restart_at_ms: None,
                        restore_from: restore_from.clone(),
                    },
                );
                Response::Applied
            }
            Command::JobFailure {
                id,
                attempt,
                record,
                tracker,
                restart_at_ms,
                final_tasks,
            } => self.job_failure(id, *attempt, record, tracker, *restart_at_ms, final_tasks),
            Command::SetStatusMessage { id, message } => match self.live_job(id) {
                Ok(job) => {
                    job.status_message = message.clone();
                    Response::Applied
                }
                Err(r) => r,
            },
            Command::JobScheduled {
                id,
                attempt,
                placements,
                ..
            } => self.schedule(id, *attempt, placements),
            Command::JobStateChanged {
                id,
                attempt,
                state,
                time_ms,
                message,
                failure,
                final_tasks,
            } => {
                let job = match self.live_job(id) {
                    Ok(job) => job,
                    Err(r) => return r,
                };
                if let Some(attempt) = attempt
                    && *attempt != job.attempt
                {
                    return reject(
                        RejectionKind::Stale,
                        format!(
                            "job {id} is at attempt {}, not {}",
                            job.attempt.0, attempt.0
                        ),
                    );
                }
                if !transition_allowed(job.state, *state) {
                    return reject(
                        RejectionKind::Conflict,
                        format!("job {id} cannot go from {} to {state}", job.state),
                    );
                }
                if *state == JobState::Running && job.placements.is_empty() {
                    return reject(
                        RejectionKind::Conflict,
                        format!("job {id} cannot run before it is scheduled"),
                    );
                }
                job.state = *state;
                job.status_message = message.clone();
                if *state == JobState::Running {
                    job.start_time_ms = Some(*time_ms);
                }
                if state.is_terminal() {
                    job.end_time_ms = Some(*time_ms);
                    job.final_tasks = final_tasks.clone();
                }
                if failure.is_some() {
                    job.failure = failure.clone();
                }
                Response::Applied
            }
            Command::CancelJob { id, time_ms } => {
                let job = match self.live_job(id) {
                    Ok(job) => job,
                    Err(r) => return r,
                };
                match job.state {
                    // Nothing was deployed yet: there is nothing to stop.
                    JobState::Created | JobState::Restarting if job.placements.is_empty() => {
                        job.state = JobState::Canceled;
                        job.end_time_ms = Some(*time_ms);
                        job.status_message = None;
                    }
                    JobState::Created | JobState::Running => {
                        job.state = JobState::Cancelling;
                        job.status_message = None;
                    }
                    // Cancelling twice is the same request.
                    _ => {}
                }
                Response::Applied
            }
            Command::SetJobManagerRestUrl { node, url } => {
                self.jobmanager_rest_urls.insert(*node, url.clone());
                Response::Applied
            }
            Command::ReserveCheckpointIds { job, up_to } => {
                self.reserve_checkpoint_ids(job, *up_to)
            }
            Command::CheckpointCompleted { job, checkpoint } => {
                self.checkpoint_completed(job, checkpoint)
            }
            Command::CheckpointsDiscarded { job, ids } => self.checkpoints_discarded(job, ids),
        }
    }

    /// The job if it exists and is not terminal.
    pub(super) fn live_job(&mut self, id: &JobId) -> Result<&mut JobRecord, Response> {
        let job = self
            .jobs
            .get_mut(id)
            .ok_or_else(|| reject(RejectionKind::NotFound, format!("no job {id}")))?;
        if job.state.is_terminal() {
            return Err(reject(
                RejectionKind::Conflict,
                format!("job {id} is already {}", job.state),
            ));
        }
        Ok(job)
    }

    fn job_failure(
        &mut self,
        id: &JobId,
        attempt: Attempt,
        record: &ExceptionRecord,
        tracker: &crate::restart::Tracker,
        restart_at_ms: Option<i64>,
        final_tasks: &[FinalTask],
    ) -> Response {
        let job = match self.live_job(id) {
            Ok(job) => job,
            Err(r) => return r,
        };
        if attempt != job.attempt {
            return reject(
                RejectionKind::Stale,
                format!(
                    "job {id} is at attempt {}, not {}",
                    job.attempt.0, attempt.0
                ),
            );
        }
        if !matches!(job.state, JobState::Created | JobState::Running) {
            return reject(
                RejectionKind::Conflict,
                format!("job {id} is {}, not running", job.state),
            );
        }
        let restart = matches!(record.action, FailureAction::Restart { .. });
        if restart && restart_at_ms.is_none() {
            return reject(
                RejectionKind::Conflict,
                format!("a restart of job {id} needs a time"),
            );
        }
        job.exceptions.push(record.clone());
        let excess = job
            .exceptions
            .len()
            .saturating_sub(super::EXCEPTION_HISTORY);
        job.exceptions.drain(..excess);
        job.restart = tracker.clone();
        job.failure = Some(record.failure.clone());
        if restart {
            job.state = JobState::Restarting;
            job.attempt = Attempt(job.attempt.0 + 1);
            job.placements.clear();
            job.restart_at_ms = restart_at_ms;
            job.status_message = Some(format!("restarting after: {}", record.failure.message));
        } else {
            job.state = JobState::Failed;
            job.end_time_ms = Some(record.failure.time_ms);
            job.final_tasks = final_tasks.to_vec();
            job.status_message = None;
        }
        if let Some(damaged) = record.damaged_checkpoint
            && let Some(catalog) = self.checkpoints.get_mut(id)
        {
            // Unusable for restores: a restart falls back to the one before.
            catalog.completed.retain(|c| c.id.0 != damaged);
            catalog.savepoints.retain(|c| c.id.0 != damaged);
        }
        Response::Applied
    }

    fn schedule(&mut self, id: &JobId, attempt: Attempt, placements: &[Placement]) -> Response {
        // Slots of every other live job: a placement must not take one of them.
        let mut taken: BTreeSet<(&_, _)> = BTreeSet::new();
        for other in self
            .jobs
            .values()
            .filter(|j| j.holds_slots() && &j.id != id)
        {
            taken.extend(other.placements.iter().map(|p| (&p.tm_id, p.slot)));
        }
        if let Some(p) = placements
            .iter()
            .find(|p| taken.contains(&(&p.tm_id, p.slot)))
        {
            let message = format!(
                "slot {} of taskmanager {} is held by another job",
                p.slot.0, p.tm_id
            );
            return reject(RejectionKind::Conflict, message);
        }
        let job = match self.live_job(id) {
            Ok(job) => job,
            Err(r) => return r,
        };
        if job.state != JobState::Created {
            return reject(
                RejectionKind::Conflict,
                format!("job {id} is {}, only a CREATED job is scheduled", job.state),
            );
        }
        let newer = attempt > job.attempt || (attempt == job.attempt && job.placements.is_empty());
        if !newer {
            return reject(
                RejectionKind::Stale,
                format!(
                    "job {id} is at attempt {}, not {}",
                    job.attempt.0, attempt.0
                ),
            );
        }
        if placements.is_empty() {
            return reject(
                RejectionKind::Conflict,
                format!("job {id} cannot be scheduled on no slots"),
            );
        }
        job.attempt = attempt;
        job.placements = placements.to_vec();
        job.status_message = None;
        Response::Applied
    }
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
