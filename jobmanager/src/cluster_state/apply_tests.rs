use super::*;
use eddy_sdk::FailureClass;
use eddy_sdk::ids::{SlotIndex, SubtaskIndex, TaskManagerId, VertexId};

fn submit(state: &mut ClusterState, id: &str) {
    let cmd = Command::SubmitJob {
        id: id.into(),
        name: "n".into(),
        spec_json: "{}".into(),
        parallelism: 1,
        max_parallelism: 128,
        time_ms: 10,
        restore_from: None,
    };
    assert_eq!(state.apply(&cmd), Response::Applied);
}

fn placement(tm: &str, slot: u32) -> Placement {
    Placement {
        vertex: VertexId(0),
        index: SubtaskIndex(0),
        tm_id: TaskManagerId::from(tm),
        slot: SlotIndex(slot),
    }
}

fn schedule(id: &str, attempt: u32, tm: &str, slot: u32) -> Command {
    Command::JobScheduled {
        id: id.into(),
        attempt: Attempt(attempt),
        placements: vec![placement(tm, slot)],
        time_ms: 20,
    }
}

fn change(id: &str, state: JobState, time_ms: i64) -> Command {
    Command::JobStateChanged {
        id: id.into(),
        attempt: None,
        state,
        time_ms,
        message: None,
        failure: None,
        final_tasks: Vec::new(),
    }
}

fn running(id: &str) -> ClusterState {
    let mut s = ClusterState::default();
    submit(&mut s, id);
    assert_eq!(s.apply(&schedule(id, 0, "tm-a", 0)), Response::Applied);
    assert_eq!(
        s.apply(&change(id, JobState::Running, 30)),
        Response::Applied
    );
    s
}

fn kind(r: Response) -> Option<RejectionKind> {
    match r {
        Response::Applied => None,
        Response::Rejected(r) => Some(r.kind),
    }
}

#[test]
fn apply_submit_schedule_run_finish_records_times() {
    let mut s = running("j");
    assert_eq!(
        s.apply(&change("j", JobState::Finished, 40)),
        Response::Applied
    );
    let job = s.job(&"j".into()).unwrap();
    assert_eq!(job.state, JobState::Finished);
    assert_eq!(
        (job.submitted_at_ms, job.start_time_ms, job.end_time_ms),
        (10, Some(30), Some(40))
    );
    assert!(s.slots_in_use().is_empty(), "a finished job holds no slots");
}

#[test]
fn apply_finished_to_running_is_refused() {
    let mut s = running("j");
    s.apply(&change("j", JobState::Finished, 40));
    assert_eq!(
        kind(s.apply(&change("j", JobState::Running, 50))),
        Some(RejectionKind::Conflict)
    );
    assert_eq!(s.job(&"j".into()).unwrap().state, JobState::Finished);
}

#[test]
fn apply_command_on_terminal_job_is_refused_not_panicking() {
    let mut s = running("j");
    s.apply(&change("j", JobState::Failed, 40));
    for cmd in [
        Command::CancelJob {
            id: "j".into(),
            time_ms: 50,
        },
        schedule("j", 1, "tm-a", 0),
        Command::SetStatusMessage {
            id: "j".into(),
            message: Some("x".into()),
        },
    ] {
        assert_eq!(
            kind(s.apply(&cmd)),
            Some(RejectionKind::Conflict),
            "{cmd:?}"
        );
    }
}

#[test]
fn apply_unknown_job_is_not_found() {
    let mut s = ClusterState::default();
    assert_eq!(
        kind(s.apply(&change("nope", JobState::Running, 1))),
        Some(RejectionKind::NotFound)
    );
    assert_eq!(
        kind(s.apply(&Command::CancelJob {
            id: "nope".into(),
            time_ms: 1
        })),
        Some(RejectionKind::NotFound)
    );
}

#[test]
fn apply_running_without_placements_is_refused() {
    let mut s = ClusterState::default();
    submit(&mut s, "j");
    assert_eq!(
        kind(s.apply(&change("j", JobState::Running, 1))),
        Some(RejectionKind::Conflict)
    );
}

#[test]
fn apply_cancel_unscheduled_job_is_canceled_at_once() {
    let mut s = ClusterState::default();
    submit(&mut s, "j");
    assert_eq!(
        s.apply(&Command::CancelJob {
            id: "j".into(),
            time_ms: 5
        }),
        Response::Applied
    );
    assert_eq!(s.job(&"j".into()).unwrap().state, JobState::Canceled);
    assert_eq!(s.job(&"j".into()).unwrap().end_time_ms, Some(5));
}

#[test]
fn apply_cancel_running_job_goes_through_cancelling() {
    let mut s = running("j");
    assert_eq!(
        s.apply(&Command::CancelJob {
            id: "j".into(),
            time_ms: 5
        }),
        Response::Applied
    );
    assert_eq!(s.job(&"j".into()).unwrap().state, JobState::Cancelling);
    assert_eq!(
        kind(s.apply(&change("j", JobState::Finished, 6))),
        Some(RejectionKind::Conflict)
    );
    assert_eq!(
        s.apply(&change("j", JobState::Canceled, 7)),
        Response::Applied
    );
}

#[test]
fn apply_stale_attempt_is_refused() {
    let mut s = running("j");
    let cmd = Command::JobStateChanged {
        id: "j".into(),
        attempt: Some(Attempt(3)),
        state: JobState::Failed,
        time_ms: 1,
        message: None,
        failure: None,
        final_tasks: Vec::new(),
    };
    assert_eq!(kind(s.apply(&cmd)), Some(RejectionKind::Stale));
    assert_eq!(s.job(&"j".into()).unwrap().state, JobState::Running);
}

#[test]
fn apply_schedule_on_slot_of_other_job_is_refused() {
    let mut s = running("a");
    submit(&mut s, "b");
    assert_eq!(
        kind(s.apply(&schedule("b", 0, "tm-a", 0))),
        Some(RejectionKind::Conflict)
    );
    assert_eq!(s.apply(&schedule("b", 0, "tm-a", 1)), Response::Applied);
    assert_eq!(s.slots_in_use()[&TaskManagerId::from("tm-a")].len(), 2);
}

#[test]
fn apply_failure_is_kept_with_class() {
    let mut s = running("j");
    let failure = Failure {
        class: FailureClass::Infrastructure,
        message: "taskmanager tm-a lost".into(),
        chain: vec!["taskmanager tm-a lost".into()],
        taskmanager: Some("tm-a".into()),
        vertex: None,
        time_ms: 9,
    };
    let cmd = Command::JobStateChanged {
        id: "j".into(),
        attempt: Some(Attempt(0)),
        state: JobState::Failed,
        time_ms: 9,
        message: None,
        failure: Some(failure.clone()),
        final_tasks: vec![FinalTask {
            vertex: VertexId(0),
            index: SubtaskIndex(0),
            state: eddy_sdk::rest::TaskState::Failed,
            metrics: eddy_sdk::rest::SubtaskMetricsInfo {
                records_out: 42,
                ..Default::default()
            },
        }],
    };
    assert_eq!(s.apply(&cmd), Response::Applied);
    let job = s.job(&"j".into()).unwrap();
    assert_eq!(job.failure, Some(failure));
    assert_eq!(job.final_tasks.len(), 1, "the final statuses are kept");
    assert_eq!(job.final_tasks[0].metrics.records_out, 42);
}

#[test]
fn apply_duplicate_submit_is_refused() {
    let mut s = ClusterState::default();
    submit(&mut s, "j");
    let cmd = Command::SubmitJob {
        id: "j".into(),
        name: "other".into(),
        spec_json: "{}".into(),
        parallelism: 1,
        max_parallelism: 1,
        time_ms: 1,
        restore_from: None,
    };
    assert_eq!(kind(s.apply(&cmd)), Some(RejectionKind::Conflict));
    assert_eq!(s.job(&"j".into()).unwrap().name, "n");
}
