#![allow(clippy::unwrap_used)]

use super::*;
use crate::cluster_state::{ClusterState, Command, Response};
use eddy_sdk::spec::{HumanDuration, StateBackendKind};
use proptest::prelude::*;

const INTERVAL: i64 = 1_000;
const TIMEOUT: i64 = 5_000;

fn settings(retained: u32, tolerable_failures: u32) -> CheckpointSettings {
    CheckpointSettings {
        interval: HumanDuration::from_millis(INTERVAL as u64),
        timeout: HumanDuration::from_millis(TIMEOUT as u64),
        min_pause: HumanDuration::from_millis(0),
        retained,
        tolerable_failures,
        backend: StateBackendKind::Memory,
        storage: "/chk".into(),
    }
}

/// v0 (a source, stateless) at parallelism 2, v1 (a window) at parallelism 2.
fn topology() -> Topology {
    Topology {
        vertices: BTreeMap::from([
            (
                VertexId(0),
                VertexInfo {
                    parallelism: 2,
                    stateful_nodes: BTreeSet::new(),
                },
            ),
            (
                VertexId(1),
                VertexInfo {
                    parallelism: 2,
                    stateful_nodes: BTreeSet::from([NodeId::from("w")]),
                },
            ),
        ]),
    }
}

fn subtasks() -> Vec<SubtaskKey> {
    topology().subtasks().into_iter().collect()
}

fn snapshots(key: SubtaskKey, id: CheckpointId) -> Vec<OperatorSnapshot> {
    if key.vertex == VertexId(0) {
        return Vec::new();
    }
    vec![OperatorSnapshot {
        node: NodeId::from("w"),
        manifest_path: format!("j/chk-{id}/w/{}/_manifest", key.index),
        state_bytes: 100,
        uploaded_bytes: 40,
    }]
}

fn coordinator(retained: u32, tolerable: u32) -> Coordinator {
    let mut c = Coordinator::new(
        JobId::from("j"),
        settings(retained, tolerable),
        topology(),
        None,
        0,
    );
    c.on_ids_reserved(CheckpointId(1_000));
    c
}

fn triggered(actions: &[Action]) -> Option<CheckpointId> {
    actions.iter().find_map(|a| match a {
        Action::Trigger { id, .. } => Some(*id),
        _ => None,
    })
}

fn ack_all(c: &mut Coordinator, id: CheckpointId, now: i64) -> Vec<Action> {
    let mut out = Vec::new();
    for key in subtasks() {
        out = c.on_ack(id, key, snapshots(key, id), AckTimings::default(), now);
    }
    out
}

/// A cluster state holding job `j` (parallelism 2).
fn state_with_job() -> ClusterState {
    let mut state = ClusterState::default();
    state.apply(&Command::SubmitJob {
        id: "j".into(),
        name: "n".into(),
        spec_json: "{}".into(),
        parallelism: 2,
        max_parallelism: 128,
        time_ms: 0,
        restore_from: None,
    });
    state
}

/// Triggers, acks everything and commits one checkpoint at `now`.
fn complete_one(c: &mut Coordinator, now: i64) -> (CheckpointId, Vec<Action>) {
    let id = triggered(&c.tick(now)).expect("a checkpoint is due");
    let commit = ack_all(c, id, now + 1);
    assert!(
        matches!(commit.as_slice(), [Action::Commit(_)]),
        "{commit:?}"
    );
    (id, c.on_committed(id, now + 2))
}

#[test]
fn tick_before_interval_does_nothing_then_triggers() {
    let mut c = coordinator(3, 0);
    assert!(c.tick(INTERVAL - 1).is_empty());
    let actions = c.tick(INTERVAL);
    assert_eq!(triggered(&actions), Some(CheckpointId(1)));
    assert!(c.tick(INTERVAL * 5 - 1).is_empty(), "one pending at a time");
}

#[test]
fn tick_without_reserved_ids_reserves_once_then_triggers() {
    let mut c = Coordinator::new(JobId::from("j"), settings(3, 0), topology(), None, 0);
    assert_eq!(
        c.tick(INTERVAL),
        vec![Action::ReserveIds {
            up_to: CheckpointId(ID_BLOCK)
        }]
    );
    assert!(c.tick(INTERVAL + 1).is_empty(), "no second reservation");
    c.on_ids_reserved(CheckpointId(ID_BLOCK));
    assert_eq!(triggered(&c.tick(INTERVAL + 2)), Some(CheckpointId(1)));
}

/// A new leader continues after the catalog's reservation, even though
/// fewer checkpoints completed: ids a former leader may have used are skipped.
#[test]
fn new_coordinator_continues_after_the_catalog_reservation() {
    let mut state = state_with_job();
    let mut c = Coordinator::new(JobId::from("j"), settings(3, 0), topology(), None, 0);
    let Action::ReserveIds { up_to } = c.tick(INTERVAL)[0].clone() else {
        panic!("expected a reservation")
    };
    let reserve = Command::ReserveCheckpointIds {
        job: "j".into(),
        up_to,
    };
    assert_eq!(state.apply(&reserve), Response::Applied);
    c.on_ids_reserved(up_to);
    let id = triggered(&c.tick(INTERVAL)).unwrap();
    let Action::Commit(done) = ack_all(&mut c, id, INTERVAL + 1).remove(0) else {
        panic!("expected a commit")
    };
    let commit = Command::CheckpointCompleted {
        job: "j".into(),
        checkpoint: done.clone(),
    };
    assert_eq!(state.apply(&commit), Response::Applied);
    assert_eq!(done.snapshots.len(), 2, "one per window subtask");
    assert_eq!(done.snapshots[1].parallelism, 2);
    // Leader change.
    let catalog = state.checkpoint_catalog(&"j".into());
    let mut next = Coordinator::new(JobId::from("j"), settings(3, 0), topology(), catalog, 0);
    let actions = next.tick(INTERVAL);
    assert_eq!(
        actions,
        vec![Action::ReserveIds {
            up_to: CheckpointId(ID_BLOCK * 2)
        }]
    );
    next.on_ids_reserved(CheckpointId(ID_BLOCK * 2));
    assert_eq!(
        triggered(&next.tick(INTERVAL)),
        Some(CheckpointId(ID_BLOCK + 1))
    );
}

/// A leader that takes over long after the newest checkpoint was triggered
/// (the one in flight was lost with the former leader) checkpoints at once
/// instead of waiting a whole interval.
#[test]
fn new_leader_keeps_the_schedule_of_the_catalog() {
    let mut state = state_with_job();
    let mut old = Coordinator::new(JobId::from("j"), settings(3, 0), topology(), None, 0);
    let Action::ReserveIds { up_to } = old.tick(INTERVAL)[0].clone() else {
        panic!("expected a reservation")
    };
    old.on_ids_reserved(up_to);
    let id = triggered(&old.tick(INTERVAL)).unwrap();
    let Action::Commit(done) = ack_all(&mut old, id, INTERVAL + 1).remove(0) else {
        panic!("expected a commit")
    };
    state.apply(&Command::ReserveCheckpointIds {
        job: "j".into(),
        up_to,
    });
    state.apply(&Command::CheckpointCompleted {
        job: "j".into(),
        checkpoint: done,
    });
    let catalog = state.checkpoint_catalog(&"j".into());
    let late = 3 * INTERVAL + INTERVAL / 2;
    let mut new = Coordinator::new(JobId::from("j"), settings(3, 0), topology(), catalog, late);
    assert!(
        matches!(new.tick(late).as_slice(), [Action::ReserveIds { .. }]),
        "due at once"
    );
    // One that takes over within the interval waits for the rest of it.
    let soon = INTERVAL + INTERVAL / 2;
    let mut new = Coordinator::new(JobId::from("j"), settings(3, 0), topology(), catalog, soon);
    assert!(new.tick(soon).is_empty());
    assert!(!new.tick(2 * INTERVAL).is_empty());
}

/// A leader change loses the checkpoint in flight: the new leader aborts
/// it (once) when the TaskManagers' retried reports for it arrive, and
/// leaves completed checkpoints and its own alone.
#[test]
fn new_leader_aborts_an_inherited_checkpoint_once() {
    let mut state = state_with_job();
    let mut old = Coordinator::new(JobId::from("j"), settings(3, 0), topology(), None, 0);
    let Action::ReserveIds { up_to } = old.tick(INTERVAL)[0].clone() else {
        panic!("expected a reservation")
    };
    let reserve = Command::ReserveCheckpointIds {
        job: "j".into(),
        up_to,
    };
    assert_eq!(state.apply(&reserve), Response::Applied);
    old.on_ids_reserved(up_to);
    let first = triggered(&old.tick(INTERVAL)).unwrap();
    let Action::Commit(done) = ack_all(&mut old, first, INTERVAL + 1).remove(0) else {
        panic!("expected a commit")
    };
    let commit = Command::CheckpointCompleted {
        job: "j".into(),
        checkpoint: done,
    };
    assert_eq!(state.apply(&commit), Response::Applied);
    old.on_committed(first, INTERVAL + 2);
    let in_flight = triggered(&old.tick(2 * INTERVAL + 2)).unwrap();
    // Leader change while `in_flight` collects acknowledgements.
    let catalog = state.checkpoint_catalog(&"j".into());
    let mut new = Coordinator::new(JobId::from("j"), settings(3, 0), topology(), catalog, 0);
    let [a, b, ..] = subtasks()[..] else {
        panic!("the topology has four subtasks")
    };
    let late = new.on_ack(first, a, snapshots(a, first), AckTimings::default(), 10);
    assert!(late.is_empty(), "a completed checkpoint is not aborted");
    let abort = new.on_ack(
        in_flight,
        a,
        snapshots(a, in_flight),
        AckTimings::default(),
        11,
    );
    assert!(
        matches!(abort.as_slice(), [Action::Abort { id, .. }] if *id == in_flight),
        "{abort:?}"
    );
    assert!(
        new.on_decline(in_flight, b, "gone", 12).is_empty(),
        "aborted once"
    );
    new.on_ids_reserved(CheckpointId(ID_BLOCK * 2));
    let own = triggered(&new.tick(INTERVAL)).unwrap();
    assert!(own > in_flight);
    let acked = new.on_ack(
        own,
        a,
        snapshots(a, own),
        AckTimings::default(),
        INTERVAL + 1,
    );
    assert!(acked.is_empty(), "its own checkpoint goes on: {acked:?}");
}

#[test]
fn ack_commits_only_after_every_subtask() {
    let mut c = coordinator(3, 0);
    let id = triggered(&c.tick(INTERVAL)).unwrap();
    let keys = subtasks();
    for key in &keys[..keys.len() - 1] {
        let a = c.on_ack(id, *key, snapshots(*key, id), AckTimings::default(), 1);
        assert!(a.is_empty(), "{a:?}");
        // A duplicate ack does not count twice.
        let a = c.on_ack(id, *key, snapshots(*key, id), AckTimings::default(), 1);
        assert!(a.is_empty(), "{a:?}");
    }
    let last = keys[keys.len() - 1];
    let actions = c.on_ack(id, last, snapshots(last, id), AckTimings::default(), 2);
    let [Action::Commit(done)] = actions.as_slice() else {
        panic!("{actions:?}")
    };
    assert_eq!(done.state_bytes(), 200);
    assert_eq!(c.on_committed(id, 3), vec![Action::NotifyComplete { id }]);
    assert_eq!(c.stats().completed, 1);
    assert_eq!(
        c.stats().latest_completed.as_ref().unwrap().state_bytes,
        200
    );
}

#[test]
fn ack_without_a_stateful_snapshot_fails_the_checkpoint() {
    let mut c = coordinator(3, 5);
    let id = triggered(&c.tick(INTERVAL)).unwrap();
    let window = SubtaskKey {
        vertex: VertexId(1),
        index: SubtaskIndex(0),
    };
    let actions = c.on_ack(id, window, Vec::new(), AckTimings::default(), 2);
    assert!(
        matches!(actions.as_slice(), [Action::Abort { .. }]),
        "{actions:?}"
    );
    assert_eq!(c.pending(), None);
}

#[test]
fn decline_aborts_and_next_checkpoint_gets_a_new_id() {
    let mut c = coordinator(3, 5);
    let id = triggered(&c.tick(INTERVAL)).unwrap();
    let actions = c.on_decline(id, subtasks()[0], "upload failed", INTERVAL + 5);
    let [
        Action::Abort {
            id: aborted,
            reason,
        },
    ] = actions.as_slice()
    else {
        panic!("{actions:?}")
    };
    assert_eq!(*aborted, id);
    assert!(reason.contains("upload failed"), "{reason}");
    let next = triggered(&c.tick(INTERVAL * 2)).unwrap();
    assert!(next > id);
    // A late ack for the aborted checkpoint is ignored.
    let key = subtasks()[1];
    assert!(
        c.on_ack(id, key, snapshots(key, id), AckTimings::default(), 0)
            .is_empty()
    );
    assert_eq!(c.stats().failed, 1);
}

#[test]
fn timeout_aborts_and_too_many_failures_fail_the_job() {
    let mut c = coordinator(3, 1);
    let first = triggered(&c.tick(INTERVAL)).unwrap();
    let actions = c.tick(INTERVAL + TIMEOUT);
    assert!(
        matches!(actions.as_slice(), [Action::Abort { id, .. }] if *id == first),
        "{actions:?}"
    );
    let second = triggered(&c.tick(INTERVAL * 2 + TIMEOUT)).unwrap();
    let actions = c.tick(INTERVAL * 2 + TIMEOUT * 2);
    assert!(
        matches!(actions.as_slice(), [Action::Abort { id, .. }, Action::FailJob { .. }] if *id == second),
        "{actions:?}"
    );
    assert!(c.tick(INTERVAL * 100).is_empty(), "stopped until restart");
    c.on_job_restarted(topology(), None, INTERVAL * 100);
    assert!(triggered(&c.tick(INTERVAL * 101)).is_some());
}

#[test]
fn a_completed_checkpoint_resets_the_failure_count() {
    let mut c = coordinator(3, 1);
    triggered(&c.tick(INTERVAL)).unwrap();
    c.tick(INTERVAL + TIMEOUT);
    complete_one(&mut c, INTERVAL * 10);
    triggered(&c.tick(INTERVAL * 20)).unwrap();
    let actions = c.tick(INTERVAL * 20 + TIMEOUT);
    assert_eq!(
        actions.len(),
        1,
        "one failure after a success is tolerated: {actions:?}"
    );
}

#[test]
fn min_pause_delays_the_next_trigger() {
    let mut s = settings(3, 0);
    s.min_pause = HumanDuration::from_millis(10_000);
    let mut c = Coordinator::new(JobId::from("j"), s, topology(), None, 0);
    c.on_ids_reserved(CheckpointId(10));
    complete_one(&mut c, INTERVAL);
    assert!(
        c.tick(INTERVAL * 3).is_empty(),
        "interval passed, pause not"
    );
    assert!(triggered(&c.tick(INTERVAL + 2 + 10_000)).is_some());
}

/// The driver sleeps until `next_due_ms`: a tick just before it does
/// nothing, a tick at it acts (trigger, expiry, trigger after the pause).
#[test]
fn next_due_is_when_tick_next_acts() {
    let mut s = settings(3, 0);
    s.min_pause = HumanDuration::from_millis(3 * INTERVAL as u64);
    let mut c = Coordinator::new(JobId::from("j"), s, topology(), None, 0);
    c.on_ids_reserved(CheckpointId(10));
    let due = c.next_due_ms().unwrap();
    assert_eq!(due, INTERVAL);
    assert!(c.tick(due - 1).is_empty());
    let id = triggered(&c.tick(due)).unwrap();
    assert_eq!(
        c.next_due_ms(),
        Some(due + TIMEOUT),
        "the pending one's expiry"
    );
    assert!(c.tick(due + TIMEOUT - 1).is_empty());
    let commit = ack_all(&mut c, id, due + 10);
    assert!(matches!(commit.as_slice(), [Action::Commit(_)]));
    assert_eq!(c.next_due_ms(), None, "waiting for Raft, not for time");
    c.on_committed(id, due + 20);
    let next = c.next_due_ms().unwrap();
    assert_eq!(
        next,
        due + 20 + 3 * INTERVAL,
        "the pause outlasts the interval"
    );
    assert!(c.tick(next - 1).is_empty());
    let id = triggered(&c.tick(next)).unwrap();
    ack_all(&mut c, id, next + 1);
    c.on_committed(id, next + 2);
    c.request_checkpoint(next + 3);
    assert_eq!(
        c.next_due_ms(),
        Some(next + 2 + 3 * INTERVAL),
        "a request skips the interval, not the pause"
    );
}

#[test]
fn retention_discards_the_oldest_beyond_retained() {
    let mut c = coordinator(2, 0);
    let (first, a) = complete_one(&mut c, INTERVAL);
    assert_eq!(a.len(), 1);
    complete_one(&mut c, INTERVAL * 10);
    let (_, a) = complete_one(&mut c, INTERVAL * 20);
    assert_eq!(a[1], Action::Discard { ids: vec![first] });
}

#[test]
fn savepoint_runs_when_nothing_is_pending_and_is_never_discarded() {
    let mut c = coordinator(1, 0);
    let chk = triggered(&c.tick(INTERVAL)).unwrap();
    assert!(
        c.trigger_savepoint("/sp/1".into(), false, INTERVAL + 1)
            .is_empty()
    );
    assert_eq!(c.queued_savepoints(), 1);
    ack_all(&mut c, chk, INTERVAL + 2);
    c.on_committed(chk, INTERVAL + 3);
    // Right away: a savepoint does not wait for the interval.
    let actions = c.tick(INTERVAL + 4);
    let [
        Action::Trigger {
            id, savepoint_path, ..
        },
    ] = actions.as_slice()
    else {
        panic!("{actions:?}")
    };
    assert_eq!(savepoint_path.as_deref(), Some("/sp/1"));
    let sp = *id;
    let actions = ack_all(&mut c, sp, INTERVAL + 5);
    let [Action::Commit(done)] = actions.as_slice() else {
        panic!("{actions:?}")
    };
    assert!(done.is_savepoint());
    assert_eq!(
        c.on_committed(sp, INTERVAL + 6),
        vec![Action::NotifyComplete { id: sp }]
    );
    let (_, a) = complete_one(&mut c, INTERVAL * 10);
    assert_eq!(
        a[1],
        Action::Discard { ids: vec![chk] },
        "only the checkpoint"
    );
    assert_eq!(c.stats().latest_savepoint.as_ref().unwrap().id, sp);
}

#[test]
fn nothing_is_triggered_after_a_stop_savepoint_commits_until_a_restart() {
    let mut c = coordinator(1, 0);
    let sp = triggered(&c.trigger_savepoint("/sp/stop".into(), true, 1))
        .expect("a savepoint triggers right away");
    ack_all(&mut c, sp, INTERVAL);
    assert_eq!(
        c.on_committed(sp, INTERVAL + 1),
        vec![Action::NotifyComplete { id: sp }]
    );
    // The sources end at the stop: a later barrier would never complete,
    // and a subtask waiting for it at its end would never end.
    assert!(c.tick(INTERVAL * 10).is_empty());
    assert!(c.request_checkpoint(INTERVAL * 11).is_empty());
    c.on_job_restarted(topology(), None, INTERVAL * 12);
    assert!(triggered(&c.tick(INTERVAL * 13)).is_some());
}

#[test]
fn nothing_is_triggered_after_the_final_checkpoint_until_a_restart() {
    let mut c = coordinator(1, 0);
    let (_, a) = complete_one(&mut c, INTERVAL);
    assert!(matches!(a[0], Action::NotifyComplete { .. }));
    c.final_checkpoint_committed();
    assert!(c.request_checkpoint(INTERVAL * 10).is_empty());
    c.on_job_restarted(topology(), None, INTERVAL * 11);
    assert!(triggered(&c.tick(INTERVAL * 12)).is_some());
}

#[test]
fn restart_aborts_the_pending_checkpoint_without_failing_the_job() {
    let mut c = coordinator(3, 0);
    let id = triggered(&c.tick(INTERVAL)).unwrap();
    let actions = c.on_job_restarted(topology(), None, INTERVAL + 1);
    assert!(
        matches!(actions.as_slice(), [Action::Abort { id: a, .. }] if *a == id),
        "{actions:?}"
    );
    assert!(c.tick(INTERVAL + 2).is_empty(), "the timer restarted");
    assert!(triggered(&c.tick(INTERVAL * 2 + 1)).unwrap() > id);
}

/// A restart while the completion is in Raft keeps the checkpoint: it
/// still commits and counts for retention.
#[test]
fn restart_while_committing_keeps_the_checkpoint() {
    let mut c = coordinator(3, 0);
    let id = triggered(&c.tick(INTERVAL)).unwrap();
    ack_all(&mut c, id, INTERVAL + 1);
    assert!(
        c.on_job_restarted(topology(), None, INTERVAL + 2)
            .is_empty()
    );
    assert_eq!(c.pending(), Some(id));
    assert_eq!(
        c.on_committed(id, INTERVAL + 3),
        vec![Action::NotifyComplete { id }]
    );
    assert_eq!(c.stats().completed, 1);
}

#[test]
fn commit_failure_fails_the_checkpoint() {
    let mut c = coordinator(3, 5);
    let id = triggered(&c.tick(INTERVAL)).unwrap();
    ack_all(&mut c, id, INTERVAL + 1);
    assert!(
        c.on_committed(CheckpointId(999), INTERVAL).is_empty(),
        "unknown id"
    );
    let a = c.on_commit_failed(id, "not leader", INTERVAL + 2);
    assert!(matches!(a.as_slice(), [Action::Abort { .. }]), "{a:?}");
    assert_eq!(c.stats().failed, 1);
}

/// Found by the JobManager chaos test: a leader paused while its
/// checkpoint was in Raft resumed deposed, its commit was refused as "not
/// the leader", and the coordinator counted that as a checkpoint failure:
/// with no tolerable failures it asked to fail (restart) the job. Losing
/// the leadership now drops the checkpoint without an abort or a job
/// failure, and does not count towards the tolerable failures.
#[test]
fn issue_7_commit_refused_for_lost_leadership_does_not_fail_the_job() {
    let mut c = coordinator(3, 1);
    let id = triggered(&c.tick(INTERVAL)).unwrap();
    ack_all(&mut c, id, INTERVAL + 1);
    c.on_leadership_lost(id, INTERVAL + 2);
    assert_eq!(c.pending(), None);
    assert_eq!(c.stats().completed, 0);

    let next = triggered(&c.tick(3 * INTERVAL)).unwrap();
    assert!(next > id, "{next:?} after {id:?}");
    ack_all(&mut c, next, 3 * INTERVAL + 1);
    let a = c.on_commit_failed(next, "raft write failed", 3 * INTERVAL + 2);
    assert!(
        matches!(a.as_slice(), [Action::Abort { .. }]),
        "one real failure is tolerated: {a:?}"
    );
}

#[derive(Clone, Debug)]
enum Event {
    Advance(i64),
    Ack(usize),
    /// Every subtask acks (in order).
    AckAll,
    Decline(usize),
    Commit,
    CommitFails,
    Savepoint,
    Restart,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (1i64..3_000).prop_map(Event::Advance),
        4 => (0usize..4).prop_map(Event::Ack),
        4 => Just(Event::AckAll),
        1 => (0usize..4).prop_map(Event::Decline),
        3 => Just(Event::Commit),
        1 => Just(Event::CommitFails),
        1 => Just(Event::Savepoint),
        1 => Just(Event::Restart),
    ]
}

proptest! {
    /// Random interleavings: at most one checkpoint pending, trigger ids
    /// strictly increase, a commit only after every subtask acked, and
    /// retention keeps exactly `retained` checkpoints plus every savepoint
    /// (checked against the Raft catalog the actions are applied to).
    #[test]
    fn coordinator_invariants_hold(
        events in proptest::collection::vec(event(), 1..200),
        retained in 1u32..4,
    ) {
        let job = JobId::from("j");
        let mut state = ClusterState::default();
        state.apply(&Command::SubmitJob {
            id: job.clone(), name: "n".into(), spec_json: "{}".into(),
            parallelism: 2, max_parallelism: 128, time_ms: 0,
            restore_from: None,
        });
        let mut c = Coordinator::new(job.clone(), settings(retained, 1_000), topology(), None, 0);
        let keys = subtasks();
        let mut now = 0i64;
        let mut last_trigger: Option<CheckpointId> = None;
        let mut pending: Option<CheckpointId> = None;
        let mut acked: BTreeSet<SubtaskKey> = BTreeSet::new();
        // The completion proposed to Raft and not yet applied.
        let mut committing: Option<CompletedCheckpoint> = None;
        let mut savepoints = 0usize;
        let mut completed = 0usize;
        for ev in events {
            let actions = match ev {
                Event::Advance(ms) => { now += ms; c.tick(now) }
                Event::Ack(i) => match pending {
                    Some(id) => c.on_ack(id, keys[i], snapshots(keys[i], id), AckTimings::default(), now),
                    None => Vec::new(),
                },
                Event::AckAll => match pending {
                    Some(id) => {
                        let mut out = Vec::new();
                        for key in &keys {
                            let actions = c.on_ack(id, *key, snapshots(*key, id), AckTimings::default(), now);
                            acked.insert(*key);
                            let commits = actions.iter().any(|a| matches!(a, Action::Commit(_)));
                            prop_assert!(!commits || acked.len() == keys.len(), "commit before every ack");
                            out.extend(actions);
                        }
                        out
                    }
                    None => Vec::new(),
                },
                Event::Decline(i) => match pending {
                    Some(id) => c.on_decline(id, keys[i], "no", now),
                    None => Vec::new(),
                },
                Event::Commit => match committing.take() {
                    Some(done) => {
                        let cmd = Command::CheckpointCompleted { job: job.clone(), checkpoint: done.clone() };
                        prop_assert_eq!(state.apply(&cmd), Response::Applied);
                        if done.is_savepoint() { savepoints += 1 } else { completed += 1 }
                        c.on_committed(done.id, now)
                    }
                    None => Vec::new(),
                },
                Event::CommitFails => match committing.take() {
                    Some(done) => c.on_commit_failed(done.id, "lost", now),
                    None => Vec::new(),
                },
                Event::Savepoint => c.trigger_savepoint(format!("/sp/{now}"), false, now),
                Event::Restart => c.on_job_restarted(topology(), None, now),
            };
            if let Event::Ack(i) = ev && pending.is_some() {
                acked.insert(keys[i]);
            }
            for action in actions {
                match action {
                    Action::ReserveIds { up_to } => {
                        let cmd = Command::ReserveCheckpointIds { job: job.clone(), up_to };
                        prop_assert_eq!(state.apply(&cmd), Response::Applied);
                        c.on_ids_reserved(up_to);
                    }
                    Action::Trigger { id, .. } => {
                        prop_assert!(pending.is_none(), "two checkpoints pending");
                        prop_assert!(last_trigger.is_none_or(|l| id > l), "ids increase");
                        last_trigger = Some(id);
                        pending = Some(id);
                        acked.clear();
                    }
                    Action::Commit(done) => {
                        prop_assert_eq!(Some(done.id), pending);
                        prop_assert_eq!(acked.len(), keys.len(), "commit before every ack");
                        committing = Some(done);
                    }
                    Action::NotifyComplete { id } => {
                        prop_assert_eq!(Some(id), pending);
                        pending = None;
                    }
                    Action::Abort { id, .. } => {
                        prop_assert_eq!(Some(id), pending);
                        pending = None;
                    }
                    Action::Discard { ids } => {
                        let cmd = Command::CheckpointsDiscarded { job: job.clone(), ids };
                        prop_assert_eq!(state.apply(&cmd), Response::Applied);
                    }
                    Action::FailJob { .. } => prop_assert!(false, "1000 failures are tolerated"),
                }
            }
            prop_assert_eq!(c.pending(), pending);
            let catalog = state.checkpoint_catalog(&job);
            prop_assert_eq!(
                catalog.map_or(0, |k| k.completed.len()),
                completed.min(retained as usize),
                "exactly `retained` checkpoints once that many completed"
            );
            prop_assert_eq!(catalog.map_or(0, |k| k.savepoints.len()), savepoints);
        }
    }
}
