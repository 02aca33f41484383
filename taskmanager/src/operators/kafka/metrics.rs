//! The Kafka connector's Prometheus metrics, `eddy_taskmanager_kafka_*`.
//!
//! Operators have no handle on the TaskManager's registry (`TaskContext`
//! carries none), so the families are process-wide and registered once by
//! `crate::metrics::Metrics::new`; every source and sink subtask writes its
//! own labelled series.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

/// A connector subtask.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub job_id: String,
    pub node: String,
    pub subtask: u32,
}

/// A partition a source subtask reads.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub job_id: String,
    pub node: String,
    pub topic: String,
    pub partition: i32,
}

type Histo = Family<NodeLabels, Histogram, fn() -> Histogram>;

fn commit_buckets() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

#[derive(Debug)]
pub struct KafkaMetrics {
    pub records_in: Family<NodeLabels, Counter>,
    pub bytes_in: Family<NodeLabels, Counter>,
    pub records_skipped: Family<NodeLabels, Counter>,
    pub records_dead_lettered: Family<NodeLabels, Counter>,
    pub lag_records: Family<PartitionLabels, Gauge>,
    pub lag_seconds: Family<PartitionLabels, Gauge<f64, AtomicU64>>,
    pub records_out: Family<NodeLabels, Counter>,
    pub bytes_out: Family<NodeLabels, Counter>,
    pub produce_errors: Family<NodeLabels, Counter>,
    pub commit_seconds: Histo,
}

/// The process-wide families.
pub static METRICS: LazyLock<KafkaMetrics> = LazyLock::new(|| KafkaMetrics {
    records_in: Family::default(),
    bytes_in: Family::default(),
    records_skipped: Family::default(),
    records_dead_lettered: Family::default(),
    lag_records: Family::default(),
    lag_seconds: Family::default(),
    records_out: Family::default(),
    bytes_out: Family::default(),
    produce_errors: Family::default(),
    commit_seconds: Family::new_with_constructor(commit_buckets),
});

/// Adds the families to `registry` (prefix `eddy_taskmanager`).
pub fn register(registry: &mut Registry) {
    let m = &*METRICS;
    let r = registry.sub_registry_with_prefix("kafka");
    r.register(
        "records_in",
        "Records a Kafka source read (including bad ones)",
        m.records_in.clone(),
    );
    r.register(
        "bytes_in",
        "Key and value bytes a Kafka source read",
        m.bytes_in.clone(),
    );
    r.register(
        "records_skipped",
        "Records a Kafka source dropped because their value did not decode (on_error: skip)",
        m.records_skipped.clone(),
    );
    r.register(
        "records_dead_lettered",
        "Records a Kafka source wrote to its dead-letter topic",
        m.records_dead_lettered.clone(),
    );
    r.register(
        "consumer_lag_records",
        "Records in a partition after the source's position (high watermark - next offset)",
        m.lag_records.clone(),
    );
    r.register("consumer_lag_seconds", "Age of the last record a source read from a partition that still has unread records (0 when caught up)", m.lag_seconds.clone());
    r.register(
        "records_out",
        "Records a Kafka sink produced (committed, for exactly-once)",
        m.records_out.clone(),
    );
    r.register(
        "bytes_out",
        "Key and value bytes a Kafka sink produced",
        m.bytes_out.clone(),
    );
    r.register(
        "produce_errors",
        "Records a Kafka sink failed to produce, and failed transactions",
        m.produce_errors.clone(),
    );
    r.register(
        "transaction_commit_seconds",
        "Time an exactly-once Kafka sink took to write and commit one checkpoint's transaction",
        m.commit_seconds.clone(),
    );
}

impl NodeLabels {
    pub fn new(ctx: &crate::operators::TaskContext, node: &eddy_sdk::ids::NodeId) -> Self {
        NodeLabels {
            job_id: ctx.job_id.to_string(),
            node: node.to_string(),
            subtask: ctx.subtask,
        }
    }
}
