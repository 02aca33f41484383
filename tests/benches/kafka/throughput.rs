//! Throughput: Kafka -> filter -> Kafka over pre-loaded input, one fresh
//! cluster and output topic per run.

use crate::data::{self, PREDICATE, SCHEMA};
use crate::probe::{self, CpuWindow};
use anyhow::bail;
use eddy_sdk::rest::JobState;
use eddy_tests::Cluster;
use eddy_tests::kafka::KafkaBroker;
use std::time::{Duration, Instant};

/// How often the TaskManagers' counters are read.
const SAMPLE: Duration = Duration::from_millis(100);

/// The job spec: Kafka source -> filter -> Kafka sink, `parallelism`
/// subtasks, checkpoints every `interval` into `storage`.
#[allow(clippy::too_many_arguments)]
pub fn job_spec(
    name: &str,
    servers: &str,
    input: &str,
    output: &str,
    parallelism: i32,
    delivery: &str,
    interval: &str,
    storage: &std::path::Path,
) -> String {
    format!(
        "name: {name}\nparallelism: {parallelism}\n\
         checkpoint: {{interval: {interval}, storage: '{storage}'}}\n\
         nodes:\n  \
         - {{id: src, kind: kafka, bootstrap_servers: '{servers}', topics: [{input}], start_from: earliest, format: json, schema: {SCHEMA}{props}}}\n  \
         - {{id: big, kind: filter, input: src, predicate: '{PREDICATE}'}}\n  \
         - {{id: out, kind: kafka, input: big, bootstrap_servers: '{servers}', topic: {output}, format: json, key: [user_id], delivery: {delivery}}}\n",
        storage = storage.display(),
        props = data::source_properties(),
    )
}

/// One throughput run's figures.
pub struct Run {
    pub parallelism: i32,
    pub delivery: String,
    /// Records/s the sources read between 10% and 90% of the input.
    pub steady: Option<f64>,
    /// From RUNNING until the sinks reported every expected record
    /// (committed, for `exactly_once`).
    pub end_to_end: f64,
    /// CPU over that window, % of one core: the broker, the TaskManagers.
    pub broker_cpu: f64,
    pub tm_cpu: f64,
    /// Peak RSS of the TaskManagers, MiB (the largest).
    pub tm_rss: f64,
    /// `None` if the output was checked and right, or not checked.
    pub problem: Option<String>,
    pub checked: bool,
}

/// Parameters shared by the runs.
pub struct Setup<'a> {
    pub broker: &'a KafkaBroker,
    pub records: u64,
    pub interval: String,
    pub verify: bool,
}

/// Runs the job at `parallelism` with `delivery` over topic `input`
/// (`parallelism` partitions, `setup.records` records).
pub async fn run(
    setup: &Setup<'_>,
    input: &str,
    parallelism: i32,
    delivery: &str,
) -> anyhow::Result<Run> {
    let broker = setup.broker;
    let output = format!("out-{}-p{parallelism}", delivery.replace('_', "-"));
    broker.create_topic(&output, parallelism).await?;
    let want = data::passing(setup.records);
    let cluster = Cluster::builder().taskmanagers(2).slots(1).start().await?;
    let spec = job_spec(
        &format!("kafka-bench-{delivery}-p{parallelism}"),
        &broker.bootstrap(),
        input,
        &output,
        parallelism,
        delivery,
        &setup.interval,
        &cluster.dir().join("checkpoints"),
    );
    let job = cluster.client().submit(&spec).await?.job_id;
    cluster
        .wait_for_job_state(&job, JobState::Running, Duration::from_secs(120))
        .await?;
    let tm_pids: Vec<u32> = cluster
        .tms
        .iter()
        .filter_map(|n| n.pid().map(|p| p.as_raw() as u32))
        .collect();
    let cpu = CpuWindow::start(vec![broker.pid().into_iter().collect(), tm_pids.clone()]);
    let urls: Vec<String> = cluster
        .tms
        .iter()
        .map(|n| format!("http://{}/metrics", n.ready_str("metrics_addr")))
        .collect();
    let http = reqwest::Client::new();
    let start = Instant::now();
    // Generous: ~2 minutes plus 1 ms per record, against hangs only.
    let deadline = start + Duration::from_secs(120) + Duration::from_millis(setup.records);
    let mut steady = data::Steady::new(setup.records);
    loop {
        let (read, written) = probe::kafka_counts(&http, &urls, &job).await?;
        let at = Instant::now();
        steady.note(at, read);
        if read >= setup.records && written >= want {
            break;
        }
        if at > deadline {
            let state = cluster
                .client()
                .job(&job)
                .await
                .map(|j| j.state.to_string());
            bail!(
                "{delivery} p{parallelism}: read {read} of {}, wrote {written} of {want} (job {state:?})\n{}",
                setup.records,
                cluster.log_tails(20)
            );
        }
        tokio::time::sleep(SAMPLE).await;
    }
    let end_to_end = start.elapsed().as_secs_f64();
    let percent = cpu.percent();
    let tm_rss = tm_pids
        .iter()
        .map(|p| probe::peak_rss_mib(*p))
        .fold(0.0, f64::max);
    let isolation = if delivery == "exactly_once" {
        "read_committed"
    } else {
        "read_uncommitted"
    };
    drop(cluster);
    let problem = if setup.verify {
        let (broker, output) = (broker, output.clone());
        tokio::task::block_in_place(|| data::verify(broker, &output, parallelism, isolation, want))?
    } else {
        None
    };
    Ok(Run {
        parallelism,
        delivery: delivery.to_string(),
        steady: steady.rate(),
        end_to_end,
        broker_cpu: percent[0],
        tm_cpu: percent[1],
        tm_rss,
        problem,
        checked: setup.verify,
    })
}
