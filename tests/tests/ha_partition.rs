//! A network partition that isolates the JobManager leader stops no task
//! (issue 7).
//!
//! Every process runs in its own network namespace on one bridge
//! (`eddy_tests::netns`). With the keyed window job of `windowed_job`
//! running (sequence-numbered rows into the exactly-once file sink,
//! checkpointing every 500 ms), the leader's link goes down: its Raft links
//! both ways, its links to and from the TaskManagers and to the test are
//! all cut (packets dropped, connections hang). The majority elects a new
//! leader, answers REST, and the tasks reattach to it without a restart;
//! checkpoints resume. The link comes back: the old leader, which never
//! heard it was deposed, steps down into the new term, and a command in its
//! old term is refused by every TaskManager. Nothing was redeployed and the
//! output holds every window exactly once.
//!
//! Needs root (network namespaces); without it the test says so and passes.

use eddy_sdk::rest::JobState;
use eddy_tests::ha::{
    assert_stale_term_refused, before, finish, group, newest_checkpoint, start_job, term,
    untouched, wait_settled, wait_stepped_down,
};
use eddy_tests::netns;
use std::time::Duration;
use tracing::info;

/// Rows the source generates in total, and how fast: long enough for the
/// partition, the heal and a few checkpoints after each.
const ROWS: i64 = 125_000;
const RATE: u32 = 2_500;

/// Cut every link of the leader, then heal: a majority leader takes over
/// with no task restarted, and the old leader steps down on its return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_is_replaced_restarts_no_task_and_steps_down_on_heal() -> anyhow::Result<()>
{
    if !netns::available() {
        eprintln!("skipped: a network partition needs network namespaces, which need root");
        return Ok(());
    }
    let mut running = start_job(group().network_namespaces(), "ha-partition", ROWS, RATE).await?;
    let job = running.job.clone();
    let cluster = &mut running.cluster;
    let old = cluster.wait_for_leader(None).await?;
    let old_term = term(cluster, old).await?;
    let before = before(cluster, old, &job).await?;
    let name = cluster.jms[old].name.clone();

    info!(
        leader = old + 1,
        term = old_term,
        checkpoint = before.checkpoint,
        "--- cut the leader off the network"
    );
    cluster.cut(&name)?;
    let rest_addr = cluster.jms[old].ready_str("rest_addr");
    let connect = tokio::net::TcpStream::connect(&rest_addr);
    assert!(
        !matches!(
            tokio::time::timeout(Duration::from_secs(2), connect).await,
            Ok(Ok(_))
        ),
        "the cut-off leader still accepts connections at {rest_addr}"
    );
    let new = cluster.wait_for_leader(Some(old)).await?;
    info!(
        leader = new + 1,
        "--- the majority elected a leader; every survivor answers"
    );
    for i in (0..cluster.jms.len()).filter(|i| *i != old) {
        let detail = cluster.client_of(i).job(&job).await?;
        assert_eq!(detail.state, JobState::Running, "jobmanager-{}", i + 1);
        assert_eq!(detail.attempt, before.attempt, "jobmanager-{}", i + 1);
    }
    let resumed = untouched(cluster, new, &job, &before, before.checkpoint).await?;
    let new_term = term(cluster, new).await?;
    assert!(new_term > old_term, "terms {old_term} -> {new_term}");
    info!(
        term = new_term,
        checkpoint = resumed,
        "--- the tasks reattached untouched; checkpoints resumed"
    );

    info!("--- heal: the old leader is back on the network and steps down");
    cluster.heal(&name)?;
    wait_stepped_down(cluster, old, new_term).await?;
    assert_stale_term_refused(cluster, &job, before.attempt, old_term).await?;
    let leader = cluster.wait_for_leader(None).await?;
    let after = untouched(cluster, leader, &job, &before, resumed).await?;
    let back = cluster.client_of(old);
    wait_settled(cluster, "the old leader caught up", || {
        let (back, job) = (back.clone(), job.clone());
        async move { anyhow::Ok(newest_checkpoint(&back, &job).await?.unwrap_or(0) >= after) }
    })
    .await?;
    info!(
        checkpoint = after,
        "--- the old leader caught up; the job is unaffected"
    );

    finish(&running, &before).await
}
