//! The TaskManager's Prometheus metrics, declared once: `eddy_taskmanager_*`.
//!
//! Counters on hot paths (exchange bytes) are incremented where they happen;
//! per-subtask values are copied from the subtasks' atomics by the sampler
//! once per metrics interval, so `/metrics` never walks the task table.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Bytes moved by remote exchanges (all channels of this TaskManager).
#[derive(Clone, Debug, Default)]
pub struct ExchangeBytes {
    pub sent: Counter,
    pub received: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubtaskLabels {
    pub job_id: String,
    pub vertex: u32,
    pub subtask: u32,
}

/// Which JobManager command a counter is about.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub command: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StateLabel {
    Deploying,
    Running,
    Finished,
    Canceled,
    Failed,
}

impl EncodeLabelValue for StateLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        use std::fmt::Write;
        // Lower-case, as the REST API and Prometheus conventions spell states.
        encoder.write_str(match self {
            StateLabel::Deploying => "deploying",
            StateLabel::Running => "running",
            StateLabel::Finished => "finished",
            StateLabel::Canceled => "canceled",
            StateLabel::Failed => "failed",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: StateLabel,
}

#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub slots_total: Gauge,
    pub slots_used: Gauge,
    pub tasks: Family<StateLabels, Gauge>,
    pub records_in: Family<SubtaskLabels, Counter>,
    pub records_out: Family<SubtaskLabels, Counter>,
    pub late_records_dropped: Family<SubtaskLabels, Counter>,
    pub watermark_alignment_holds: Family<SubtaskLabels, Counter>,
    pub backpressured_ratio: Family<SubtaskLabels, Gauge<f64, AtomicU64>>,
    pub latency_p50: Family<SubtaskLabels, Gauge<f64, AtomicU64>>,
    pub latency_p99: Family<SubtaskLabels, Gauge<f64, AtomicU64>>,
    pub exchange: ExchangeBytes,
    pub rss_bytes: Gauge,
    /// Commands refused because they came from an older leader term.
    pub stale_leader_commands: Family<CommandLabels, Counter>,
}

impl Metrics {
    /// The metrics and a registry that exposes them.
    pub fn new() -> (Metrics, Registry) {
        let m = Metrics::default();
        let mut r = Registry::with_prefix("eddy_taskmanager");
        r.register(
            "slots",
            "Slots this TaskManager offers",
            m.slots_total.clone(),
        );
        r.register(
            "slots_used",
            "Slots running at least one subtask",
            m.slots_used.clone(),
        );
        r.register(
            "tasks",
            "Subtasks known to this TaskManager by state",
            m.tasks.clone(),
        );
        r.register(
            "records_in",
            "Records a subtask received",
            m.records_in.clone(),
        );
        r.register(
            "records_out",
            "Records a subtask emitted",
            m.records_out.clone(),
        );
        r.register(
            "late_records_dropped",
            "Records a subtask's windows dropped as late (past their allowed lateness) or without an event time",
            m.late_records_dropped.clone(),
        );
        r.register(
            "watermark_alignment_holds",
            "Times a window's input stopped reading an upstream subtask whose watermark ran more than max_drift ahead of the slowest",
            m.watermark_alignment_holds.clone(),
        );
        r.register(
            "backpressured_ratio",
            "Share of the last second a subtask was blocked waiting for output credit",
            m.backpressured_ratio.clone(),
        );
        r.register(
            "latency_p50_seconds",
            "Median age of the latency markers a sink subtask received (since it started)",
            m.latency_p50.clone(),
        );
        r.register(
            "latency_p99_seconds",
            "99th percentile age of the latency markers a sink subtask received",
            m.latency_p99.clone(),
        );
        r.register(
            "exchange_sent_bytes",
            "Bytes sent over remote exchanges",
            m.exchange.sent.clone(),
        );
        r.register(
            "exchange_received_bytes",
            "Bytes received over remote exchanges",
            m.exchange.received.clone(),
        );
        r.register(
            "rss_bytes",
            "Resident set size of the process",
            m.rss_bytes.clone(),
        );
        r.register(
            "stale_leader_commands",
            "JobManager commands refused because they carried an older leader term than one already seen",
            m.stale_leader_commands.clone(),
        );
        crate::operators::kafka::metrics::register(&mut r);
        (m, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_registry_names_carry_prefix() {
        let (m, r) = Metrics::new();
        m.exchange.sent.inc_by(7);
        m.records_in
            .get_or_create(&SubtaskLabels {
                job_id: "j".into(),
                vertex: 1,
                subtask: 0,
            })
            .inc_by(3);
        let text = eddy_sdk::server::metrics::encode(&r);
        assert!(
            text.contains("eddy_taskmanager_exchange_sent_bytes_total 7"),
            "{text}"
        );
        assert!(
            text.contains(
                "eddy_taskmanager_records_in_total{job_id=\"j\",vertex=\"1\",subtask=\"0\"} 3"
            ),
            "{text}"
        );
    }
}
