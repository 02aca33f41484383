//! A JobManager leader can fail without stopping a single task (issue 7).
//!
//! Three JobManagers (one Raft group) and two TaskManagers run the keyed
//! window job of `windowed_job` (sequence-numbered rows into the
//! exactly-once file sink, checkpointing every 500 ms). The leader is
//! SIGKILLed, or SIGSTOPped for longer than the election timeout and then
//! resumed. Each time: a new leader is elected; the survivors answer REST;
//! the job stays RUNNING with every subtask on the same TaskManager in the
//! same deployment attempt, and no TaskManager deployed anything again;
//! checkpoints resume under the new leader; and the output ends up with
//! every window exactly once. The killed node restarts on its data dir and
//! catches up; the paused one steps down, and commands carrying its old
//! term are refused by the TaskManagers.

use eddy_sdk::rest::JobState;
use eddy_tests::ha::{
    assert_stale_term_refused, before, finish, group, stale_refusals, start_job, subtasks, term,
    untouched, wait_caught_up, wait_stepped_down,
};
use tracing::info;

/// Rows the source generates in total, and how fast: long enough for a
/// failover and a few checkpoints after it, short enough for the test to
/// stay well under a minute.
const ROWS: i64 = 75_000;
const RATE: u32 = 2_500;

/// SIGKILL the leader: a survivor leads, both survivors answer, the tasks
/// run on untouched and checkpoints resume; the killed JobManager restarts
/// on its data dir and catches up; the output is exactly-once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_restarts_no_task_and_checkpoints_resume() -> anyhow::Result<()> {
    let mut running = start_job(group(), "ha-kill", ROWS, RATE).await?;
    let job = running.job.clone();
    let cluster = &mut running.cluster;
    let old = cluster.wait_for_leader(None).await?;
    let before = before(cluster, old, &job).await?;

    info!(
        leader = old + 1,
        checkpoint = before.checkpoint,
        "--- SIGKILL the leader"
    );
    cluster.jms[old].kill9()?;
    let new = cluster.wait_for_leader(Some(old)).await?;
    info!(leader = new + 1, "--- a new leader; every survivor answers");
    for i in (0..cluster.jms.len()).filter(|i| *i != old) {
        let detail = cluster.client_of(i).job(&job).await?;
        assert_eq!(detail.state, JobState::Running, "jobmanager-{}", i + 1);
        assert_eq!(detail.attempt, before.attempt, "jobmanager-{}", i + 1);
    }
    let resumed = untouched(cluster, new, &job, &before, before.checkpoint).await?;
    info!(checkpoint = resumed, "--- checkpoints resumed");

    info!("--- restart the killed JobManager on its data dir");
    cluster.jms[old].restart()?;
    wait_caught_up(cluster, old, &cluster.client_of(new), &job, resumed).await?;
    let detail = cluster.client_of(old).job(&job).await?;
    assert_eq!(subtasks(&detail), before.subtasks);

    finish(&running, &before).await
}

/// SIGSTOP the leader past the election timeout: a survivor leads and the
/// tasks run on untouched. SIGCONT: the old leader steps down into the new
/// term, and a command in its old term is refused by every TaskManager
/// (and counted); the job is unaffected and its output exactly-once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leader_steps_down_and_its_stale_commands_are_refused() -> anyhow::Result<()> {
    let mut running = start_job(group(), "ha-pause", ROWS, RATE).await?;
    let job = running.job.clone();
    let cluster = &mut running.cluster;
    let old = cluster.wait_for_leader(None).await?;
    let old_term = term(cluster, old).await?;
    let before = before(cluster, old, &job).await?;

    info!(leader = old + 1, term = old_term, "--- SIGSTOP the leader");
    cluster.jms[old].pause()?;
    let new = cluster.wait_for_leader(Some(old)).await?;
    let resumed = untouched(cluster, new, &job, &before, before.checkpoint).await?;
    let new_term = term(cluster, new).await?;
    assert!(new_term > old_term, "terms {old_term} -> {new_term}");
    info!(
        leader = new + 1,
        term = new_term,
        checkpoint = resumed,
        "--- a new leader; checkpoints resumed"
    );

    info!("--- SIGCONT: the old leader comes back and steps down");
    cluster.jms[old].resume()?;
    wait_stepped_down(cluster, old, new_term).await?;
    let sent_by_it = stale_refusals(cluster).await?;
    info!(
        refused = sent_by_it,
        "--- commands in the old term are refused"
    );
    assert_stale_term_refused(cluster, &job, before.attempt, old_term).await?;

    info!("--- the job is unaffected");
    let leader = cluster.wait_for_leader(None).await?;
    untouched(cluster, leader, &job, &before, resumed).await?;
    finish(&running, &before).await
}
