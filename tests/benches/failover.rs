//! Benchmark of a JobManager leader failover (issue 7, docs/benchmarks.md).
//!
//! Three JobManagers and three TaskManagers of one slot run the keyed
//! window job of `windowed_job` at parallelism 2 (checkpoints every
//! 500 ms into the exactly-once file sink); the third slot is free for
//! probe jobs. Each round SIGKILLs the leader and measures, from the kill:
//!
//! * `elected`: until a survivor says it leads (`GET /v1/overview`);
//! * `write`: until a write is accepted: a small job submitted to the
//!   survivors in turn, every 10 ms, is committed;
//! * `commit gap`: between the newest checkpoint completed before the kill
//!   and the first one after it (their completion times), which is how long
//!   the exactly-once sink's visible output stood still;
//! * `reattach`: until the last TaskManager logged that it registered
//!   with the new leader (the timestamps of its log lines);
//! * `sink stall`: the longest time the sink task received no record
//!   (TaskManager metrics sampled every 10 ms), against the longest such
//!   time in the 5 s before the kill (`baseline`): tasks never stop, so
//!   the two should match.
//!
//! The killed JobManager is restarted and catches up before the next round.
//!
//! Run with release binaries:
//! `cargo build --release --bins && EDDY_BIN_DIR=target/release cargo bench -p eddy-tests --bench failover -- --rounds 5`

use anyhow::Context;
use eddy_sdk::rest::JobState;
use eddy_tests::Cluster;
use eddy_tests::ha::{group, newest_checkpoint, start_job, wait_caught_up, wait_settled};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RATE: u32 = 10_000;
/// Seconds of the baseline before each kill, and of the window after it in
/// which the sink's stall is measured.
const BASELINE: Duration = Duration::from_secs(5);
const AFTER: Duration = Duration::from_secs(8);
const SAMPLE: Duration = Duration::from_millis(10);
const PROBE: &str = r#"
name: probe
parallelism: 1
nodes:
  - {id: gen, kind: datagen, count: 10, fields: [{name: x, type: int64, gen: sequence}]}
  - {id: sink, kind: blackhole, input: gen}
"#;

/// (when, records the sink task received so far).
type Samples = Arc<Mutex<Vec<(Instant, u64)>>>;

#[derive(Debug)]
struct Round {
    elected_ms: u64,
    write_ms: u64,
    commit_gap_ms: i64,
    reattach_ms: i64,
    stall_ms: u64,
    baseline_stall_ms: u64,
}

fn rounds_arg() -> anyhow::Result<usize> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--rounds") {
        Some(i) => Ok(args.get(i + 1).context("--rounds N")?.parse()?),
        None => Ok(5),
    }
}

/// The sum of `eddy_taskmanager_records_in_total` of `vertex` in `text`.
fn records_in(text: &str, job: &str, vertex: u32) -> u64 {
    let vertex = vertex.to_string();
    let labels = [("job_id", job), ("vertex", vertex.as_str())];
    eddy_tests::metric_sum(text, "eddy_taskmanager_records_in_total", &labels) as u64
}

/// Samples the records the sink task received, every [`SAMPLE`], forever.
fn sample(urls: Vec<String>, job: String, vertex: u32, into: Samples) {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .expect("an HTTP client");
        loop {
            let mut total = 0;
            for url in &urls {
                if let Ok(r) = http.get(url).send().await
                    && let Ok(text) = r.text().await
                {
                    total += records_in(&text, &job, vertex);
                }
            }
            into.lock()
                .expect("not poisoned")
                .push((Instant::now(), total));
            tokio::time::sleep(SAMPLE).await;
        }
    });
}

/// The longest time between two increases of the count within `[from, to]`.
fn longest_stall(samples: &[(Instant, u64)], from: Instant, to: Instant) -> Duration {
    let mut longest = Duration::ZERO;
    let mut last: Option<(Instant, u64)> = None;
    for &(at, n) in samples.iter().filter(|(at, _)| *at >= from && *at <= to) {
        match last {
            Some((since, seen)) if n > seen => {
                longest = longest.max(at - since);
                last = Some((at, n));
            }
            Some((since, _)) => longest = longest.max(at - since),
            None => last = Some((at, n)),
        }
    }
    longest
}

/// The id and completion time (ms since the epoch) of the oldest retained
/// checkpoint with an id above `above` (the newest one when `above` is
/// `None`).
async fn completed(
    cluster: &Cluster,
    leader: usize,
    job: &str,
    above: Option<u64>,
) -> anyhow::Result<Option<(u64, i64)>> {
    let stats = cluster.client_of(leader).checkpoints(job).await?;
    let retained = stats.retained.iter().filter(|c| !c.is_savepoint);
    let c = match above {
        Some(id) => retained.filter(|c| c.id > id).min_by_key(|c| c.id),
        None => retained.max_by_key(|c| c.id),
    };
    c.map(|c| {
        let at = chrono::DateTime::parse_from_rfc3339(&c.completed_time)?;
        Ok((c.id, at.timestamp_millis()))
    })
    .transpose()
}

/// Milliseconds from `since_ms` (since the epoch) until every TaskManager
/// logged a registration after it (`None` if one did not).
fn reattached(cluster: &Cluster, since_ms: i64) -> Option<i64> {
    let mut last = since_ms;
    for tm in &cluster.tms {
        let log = tm.log();
        let first = log
            .lines()
            .filter(|l| l.contains("registered with JobManager"))
            .filter_map(|l| {
                let at = l.split_whitespace().next()?;
                Some(
                    chrono::DateTime::parse_from_rfc3339(at)
                        .ok()?
                        .timestamp_millis(),
                )
            })
            .find(|at| *at >= since_ms)?;
        last = last.max(first);
    }
    Some(last - since_ms)
}

/// Polls the live JobManagers every [`SAMPLE`] until one says it leads.
async fn new_leader(cluster: &Cluster) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(i) = cluster.leader().await {
            return Ok(i);
        }
        anyhow::ensure!(Instant::now() < deadline, "no leader within 60 s");
        tokio::time::sleep(SAMPLE).await;
    }
}

/// Submits the probe job to the survivors in turn until one commits it.
async fn first_write(cluster: &Cluster, survivors: &[usize]) -> anyhow::Result<String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for &i in survivors {
            let url = format!("{}/v1/jobs", cluster.jms[i].rest_url());
            let sent = http
                .post(url)
                .header("content-type", "application/yaml")
                .body(PROBE)
                .send()
                .await;
            if let Ok(r) = sent
                && r.status().is_success()
            {
                let v: serde_json::Value = r.json().await?;
                return Ok(v["job_id"].as_str().unwrap_or_default().to_string());
            }
            tokio::time::sleep(SAMPLE).await;
        }
        anyhow::ensure!(Instant::now() < deadline, "no write accepted within 60 s");
    }
}

async fn round(cluster: &mut Cluster, job: &str, samples: &Samples) -> anyhow::Result<Round> {
    let old = cluster.wait_for_leader(None).await?;
    let (before, before_ms) = completed(cluster, old, job, None)
        .await?
        .context("no checkpoint before the kill")?;
    let survivors: Vec<usize> = (0..cluster.jms.len()).filter(|i| *i != old).collect();

    let killed = Instant::now();
    let killed_ms = chrono::Utc::now().timestamp_millis();
    cluster.jms[old].kill9()?;
    let new = new_leader(cluster).await?;
    let elected = killed.elapsed();
    let probe = first_write(cluster, &survivors).await?;
    let write = killed.elapsed();
    let client = cluster.client_of(new);
    wait_settled(cluster, "a checkpoint after the kill", || {
        let (client, job) = (client.clone(), job.to_string());
        async move { anyhow::Ok(newest_checkpoint(&client, &job).await?.unwrap_or(0) > before) }
    })
    .await?;
    let (after, after_ms) = completed(cluster, new, job, Some(before))
        .await?
        .context("the checkpoint after the kill is not retained")?;
    let left = AFTER.saturating_sub(killed.elapsed());
    tokio::time::sleep(left).await;
    let (stall, baseline) = {
        let s = samples.lock().expect("not poisoned");
        (
            longest_stall(&s, killed, killed + AFTER),
            longest_stall(&s, killed - BASELINE, killed),
        )
    };

    let reattach_ms = reattached(cluster, killed_ms).unwrap_or(-1);
    cluster.jms[old].restart()?;
    wait_caught_up(cluster, old, &client, job, after).await?;
    cluster
        .wait_for_job_state(&probe, JobState::Finished, Duration::from_secs(60))
        .await?;
    tokio::time::sleep(BASELINE).await;
    Ok(Round {
        elected_ms: elected.as_millis() as u64,
        write_ms: write.as_millis() as u64,
        commit_gap_ms: after_ms - before_ms,
        reattach_ms,
        stall_ms: stall.as_millis() as u64,
        baseline_stall_ms: baseline.as_millis() as u64,
    })
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let rounds = rounds_arg()?;
    let rows = i64::from(RATE) * (rounds as i64 * 25 + 30);
    let mut running = start_job(group().taskmanagers(3), "failover-bench", rows, RATE).await?;
    let job = running.job.clone();
    let cluster = &mut running.cluster;
    let detail = cluster.client().job(&job).await?;
    let sink = detail
        .vertices
        .iter()
        .find(|v| v.nodes.iter().any(|n| n == "out"))
        .context("the sink's vertex")?
        .id;
    let urls = cluster
        .tms
        .iter()
        .map(|tm| format!("http://{}/metrics", tm.ready_str("metrics_addr")))
        .collect();
    let samples = Samples::default();
    sample(urls, job.clone(), sink, samples.clone());
    tokio::time::sleep(BASELINE).await;

    println!(
        "| round | elected ms | first write ms | TaskManagers reattached ms | commit gap ms | sink stall ms | baseline stall ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut all = Vec::new();
    for n in 1..=rounds {
        let r = round(cluster, &job, &samples).await?;
        println!(
            "| {n} | {} | {} | {} | {} | {} | {} |",
            r.elected_ms,
            r.write_ms,
            r.reattach_ms,
            r.commit_gap_ms,
            r.stall_ms,
            r.baseline_stall_ms
        );
        all.push(r);
    }
    println!(
        "| median | {} | {} | {} | {} | {} | {} |",
        median(all.iter().map(|r| r.elected_ms).collect()),
        median(all.iter().map(|r| r.write_ms).collect()),
        median(all.iter().map(|r| r.reattach_ms.max(0) as u64).collect()),
        median(all.iter().map(|r| r.commit_gap_ms.max(0) as u64).collect()),
        median(all.iter().map(|r| r.stall_ms).collect()),
        median(all.iter().map(|r| r.baseline_stall_ms).collect()),
    );
    let detail = cluster.client().job(&job).await?;
    println!(
        "job {job}: {:?}, attempt {}, every subtask in attempt {:?}",
        detail.state,
        detail.attempt,
        detail
            .vertices
            .iter()
            .flat_map(|v| v.subtasks.iter().map(|s| s.attempt))
            .max()
    );
    Ok(())
}
