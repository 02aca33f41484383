//! The Kafka broker goes away for 30 s under a running exactly-once job:
//! the patched tansu broker with the SQLite engine, SIGKILLed and started
//! again on the same port and data file.

use eddy_sdk::rest::JobState;
use eddy_tests::Cluster;
use eddy_tests::kafka::{Engine, KafkaBroker, read_all, sorted_seqs};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::info;

const LONG: Duration = Duration::from_secs(90);
const OUTAGE: Duration = Duration::from_secs(30);

/// Input chunks: 100 records every 200 ms while the test runs.
const CHUNK: i64 = 100;

/// Produces `{"seq": i, "k": i % 10}` into partition `i % 4` of `seq`, a
/// chunk every 200 ms, until `stop` (then finishes the chunk): returns how
/// many. One idempotent producer, so that its retries across the outage
/// duplicate nothing; a flush waits out the outage.
fn keep_producing(
    servers: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<i64>> {
    std::thread::spawn(move || {
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &servers)
            .set("enable.idempotence", "true")
            .create()?;
        let mut next = 0;
        while !stop.load(Ordering::Relaxed) {
            for i in next..next + CHUNK {
                let value = format!(r#"{{"seq": {i}, "k": {}}}"#, i % 10);
                let partition = (i % 4) as i32;
                p.send(
                    BaseRecord::<(), str>::to("seq")
                        .partition(partition)
                        .payload(&value),
                )
                .map_err(|(e, _)| e)?;
            }
            p.flush(Duration::from_secs(120))?;
            next += CHUNK;
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(next)
    })
}

/// Kafka -> filter -> Kafka (`exactly_once`, parallelism 2, checkpoints
/// every 500 ms) while the broker is SIGKILLed for 30 s. Input keeps
/// arriving before, during (buffered by the producer) and after the
/// outage, so the job is busy when the broker goes. Every failure recorded meanwhile
/// must be classified `connector` or `infrastructure`, and at the end a
/// read_committed consumer sees every even `seq` exactly once. The job may
/// ride the outage out (librdkafka reconnects, checkpoints go on, a
/// transaction waits up to its 60 s timeout, partition listings are retried
/// for 30 s) or fail and restart from its last checkpoint with backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_broker_outage_of_30s_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    eddy_tests::init_logging();
    let data = tempfile::tempdir()?;
    let Some(mut broker) = KafkaBroker::start(Engine::Sqlite(data.path().into()))? else {
        return Ok(());
    };
    broker.create_topic("seq", 4).await?;
    broker.create_topic("even", 2).await?;
    let servers = broker.bootstrap();
    let cluster = Cluster::builder().taskmanagers(1).slots(2).start().await?;
    let storage = cluster.dir().join("checkpoints");
    let spec = format!(
        "name: outage\nparallelism: 2\ncheckpoint: {{interval: 500ms, storage: '{}'}}\nrestart: {{initial_backoff: 1s, max_backoff: 5s, max_failures_per_interval: 100, interval: 10m}}\nnodes:\n  - {{id: src, kind: kafka, bootstrap_servers: '{servers}', topics: [seq], schema: [{{name: seq, type: int64}}, {{name: k, type: int64}}]}}\n  - {{id: even, kind: filter, input: src, predicate: 'seq % 2 = 0'}}\n  - {{id: out, kind: kafka, input: even, bootstrap_servers: '{servers}', topic: even, key: [k], delivery: exactly_once}}\n",
        storage.display()
    );
    let job = cluster.client().submit(&spec).await?.job_id;
    cluster
        .wait_for_job_state(&job, JobState::Running, LONG)
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let producing = keep_producing(servers.clone(), Arc::clone(&stop));
    // The job commits every 500 ms while the producer runs, so the output
    // is never quiet: 500 records are enough to know it flows.
    read_all(&servers, "even", 500, Duration::ZERO)?;
    info!("--- the broker is killed for 30 s");
    broker.kill9();
    tokio::time::sleep(OUTAGE).await;
    broker.start_again()?;
    info!("--- the broker is back");
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let produced = producing
        .join()
        .map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
    info!(produced, "--- reading the output");
    let got = read_all(
        &servers,
        "even",
        (produced / 2) as usize,
        Duration::from_secs(5),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}\nbroker log:\n{}\nlogs:\n{}",
            broker.log_tail(),
            cluster.log_tails(40)
        )
    })?;
    let exceptions = cluster.client().exceptions(&job).await?;
    let classes: Vec<&str> = exceptions
        .exceptions
        .iter()
        .map(|e| e.class.as_str())
        .collect();
    let detail = cluster.client().job(&job).await?;
    info!(attempt = detail.attempt, ?classes, "--- the job's failures");
    anyhow::ensure!(
        classes
            .iter()
            .all(|c| *c == "connector" || *c == "infrastructure"),
        "{exceptions:#?}"
    );
    assert_eq!(
        sorted_seqs(&got),
        (0..produced).step_by(2).collect::<Vec<i64>>(),
        "every even seq exactly once"
    );
    Ok(())
}
