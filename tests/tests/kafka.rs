//! Kafka source and sink in a running cluster.
//!
//! Against librdkafka's mock cluster, started in this test process on a
//! loopback port (the TaskManagers connect to it like to any broker): the
//! mock has no transactional offsets and shows aborted records, so the
//! exactly-once scenarios need the patched tansu broker (`KafkaBroker`).

use eddy_sdk::rest::JobState;
use eddy_tests::Cluster;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::time::Duration;
use tracing::info;

const LONG: Duration = Duration::from_secs(90);

fn produce(servers: &str, topic: &str, values: &[(i32, &str)]) -> anyhow::Result<()> {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()?;
    for (partition, v) in values {
        p.send(
            BaseRecord::<(), str>::to(topic)
                .partition(*partition)
                .payload(*v),
        )
        .map_err(|(e, _)| e)?;
    }
    p.flush(LONG)?;
    Ok(())
}

/// A malformed JSON record with `on_error: fail` fails the job as bad data,
/// and the failure names the topic, partition and offset of the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_malformed_json_fails_the_job_naming_the_record() -> anyhow::Result<()> {
    eddy_tests::init_logging();
    let mock = MockCluster::new(1)?;
    mock.create_topic("orders", 2, 1)?;
    let servers = mock.bootstrap_servers();
    produce(
        &servers,
        "orders",
        &[
            (0, r#"{"seq": 1}"#),
            (1, r#"{"seq": 2}"#),
            (1, "{\"seq\": oops"),
            (0, r#"{"seq": 3}"#),
        ],
    )?;
    let cluster = Cluster::builder().taskmanagers(1).slots(2).start().await?;
    let spec = format!(
        "name: bad-json\nparallelism: 2\nrestart: {{max_failures_per_interval: 1, initial_backoff: 200ms, interval: 10m}}\nnodes:\n  - {{id: orders, kind: kafka, bootstrap_servers: '{servers}', topics: [orders], schema: [{{name: seq, type: int64}}]}}\n  - {{id: out, kind: blackhole, input: orders}}\n"
    );
    let job = cluster.client().submit(&spec).await?.job_id;
    info!("--- waiting for the job to fail on the bad record");
    let detail = cluster
        .wait_for_job_state(&job, JobState::Failed, LONG)
        .await?;
    let failure = detail.failure.expect("a failed job says why");
    assert_eq!(
        failure.class,
        eddy_sdk::FailureClass::BadData,
        "{failure:?}"
    );
    let chain = failure.chain.join(": ");
    assert!(
        chain.contains("topic orders partition 1 offset 1"),
        "{failure:?}"
    );
    Ok(())
}
