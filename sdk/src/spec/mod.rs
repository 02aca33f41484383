//! The job spec: a DAG of nodes with stable ids, as users write it in YAML or
//! JSON. Parsing names the node and field of every error; `validate` checks the
//! graph's shape. Schema-level checks (columns, SQL) live in `plan`.

mod aggregate;
mod checkpoint;
mod duration;
mod kafka;
mod nexmark;
mod parse;
mod top_n;
mod validate;

pub use aggregate::GroupAggregateSpec;
pub use checkpoint::{
    CheckpointDefaults, CheckpointSettings, CheckpointSpec, RestartSettings, RestartSpec,
    StateBackendKind, validate_sections, validate_storage,
};
pub use duration::HumanDuration;
pub use kafka::{
    DEFAULT_DISCOVERY_INTERVAL, DEFAULT_TRANSACTION_TIMEOUT, Delivery, KafkaField, KafkaFormat,
    KafkaMetadata, KafkaSinkSpec, KafkaSourceSpec, KafkaSpec, OnError, SinkPartitioning, StartFrom,
};
pub use nexmark::{MAX_NEXMARK_COUNT, NexmarkSpec, NexmarkTable};
pub use parse::{parse_json, parse_yaml_or_json};
pub use top_n::{SortOrder, TopNEventTime, TopNSpec};
pub use validate::validate_structure;

use crate::ids::NodeId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Default number of key groups, the upper bound of any vertex's parallelism.
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;

/// A job: a name, a default parallelism and a DAG of nodes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobSpec {
    pub name: String,
    /// Parallelism of every node that does not set its own; the job needs this many slots.
    pub parallelism: u32,
    /// Number of key groups keyed state is split into (the upper bound of parallelism).
    pub max_parallelism: u32,
    pub nodes: Vec<NodeSpec>,
    /// Checkpoints are on when this section is present (absent fields take
    /// the JobManager's defaults).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointSpec>,
    /// How the job restarts after a failure (absent: the JobManager's defaults).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartSpec>,
}

/// One node of the DAG.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeSpec {
    /// Stable id; state is stored under it.
    pub id: NodeId,
    /// The node this one reads from (none for sources).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<NodeId>,
    /// Overrides the job's parallelism (at most the job's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    #[serde(flatten)]
    pub kind: NodeKind,
}

/// What a node does. The YAML/JSON `kind` field selects the variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeKind {
    Datagen(DatagenSpec),
    Nexmark(NexmarkSpec),
    Project(ProjectSpec),
    Filter(FilterSpec),
    Window(WindowSpec),
    Aggregate(GroupAggregateSpec),
    TopN(TopNSpec),
    Print(PrintSpec),
    Blackhole(BlackholeSpec),
    File(FileSinkSpec),
    /// A source without `input`, a sink with one.
    Kafka(KafkaSpec),
}

impl NodeKind {
    /// The `kind` string as users write it.
    pub fn name(&self) -> &'static str {
        match self {
            NodeKind::Datagen(_) => "datagen",
            NodeKind::Nexmark(_) => "nexmark",
            NodeKind::Project(_) => "project",
            NodeKind::Filter(_) => "filter",
            NodeKind::Window(_) => "window",
            NodeKind::Aggregate(_) => "aggregate",
            NodeKind::TopN(_) => "top_n",
            NodeKind::Print(_) => "print",
            NodeKind::Blackhole(_) => "blackhole",
            NodeKind::File(_) => "file",
            NodeKind::Kafka(_) => "kafka",
        }
    }
    pub fn is_source(&self) -> bool {
        matches!(
            self,
            NodeKind::Datagen(_) | NodeKind::Nexmark(_) | NodeKind::Kafka(KafkaSpec::Source(_))
        )
    }
    /// Whether the operator keeps state in checkpoints (source positions,
    /// windows, keyed aggregates, the file sink's pending files). Every
    /// checkpoint of a job holds one snapshot per stateful node and subtask.
    pub fn is_stateful(&self) -> bool {
        matches!(
            self,
            NodeKind::Datagen(_)
                | NodeKind::Nexmark(_)
                | NodeKind::Window(_)
                | NodeKind::Aggregate(_)
                | NodeKind::TopN(_)
                | NodeKind::File(_)
                | NodeKind::Kafka(KafkaSpec::Source(_))
        ) || matches!(self, NodeKind::Kafka(KafkaSpec::Sink(k)) if k.delivery == Delivery::ExactlyOnce)
    }
    pub fn is_sink(&self) -> bool {
        matches!(
            self,
            NodeKind::Print(_)
                | NodeKind::Blackhole(_)
                | NodeKind::File(_)
                | NodeKind::Kafka(KafkaSpec::Sink(_))
        )
    }
    /// All kinds, for error messages.
    pub const ALL: &'static [&'static str] = &[
        "datagen",
        "nexmark",
        "project",
        "filter",
        "window",
        "aggregate",
        "top_n",
        "print",
        "blackhole",
        "file",
        "kafka",
    ];
}

/// `datagen`: deterministic rows, bounded by `count` or unbounded.
///
/// Row `r` (global, across subtasks) has the same values whatever the
/// parallelism: row `r` is in split `r mod max_parallelism`, generated by the subtask owning that
/// key group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatagenSpec {
    /// Total rows over all subtasks; unbounded when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Total rate over all subtasks; as fast as possible when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_per_second: Option<f64>,
    /// Rows per emitted batch (default 8192); with a rate, a batch is also
    /// emitted at least every 5 ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Seed of the `random` fields (default 0).
    #[serde(default)]
    pub seed: u64,
    pub fields: Vec<FieldGen>,
}

/// One generated column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldGen {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: FieldType,
    #[serde(flatten)]
    pub generator: Generator,
}

/// Column types a generator can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    Int64,
    Float64,
    TimestampMs,
    Utf8,
}

/// How a generated column's value follows from the row number `r`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "gen", rename_all = "snake_case")]
pub enum Generator {
    /// `start + r * step`.
    Sequence {
        #[serde(default)]
        start: i64,
        #[serde(default = "one")]
        step: i64,
    },
    /// A seeded pseudo-random value in `[min, max]` (ints) or `[min, max)` (floats).
    Random { min: f64, max: f64 },
    /// Event time: `start + r * step`.
    Timestamp {
        start: DateTime<Utc>,
        step: HumanDuration,
    },
}

fn one() -> i64 {
    1
}

/// `project`: SQL expressions over the input columns, `expr [AS name]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectSpec {
    pub exprs: Vec<String>,
}

/// `filter`: keep rows where the SQL predicate is true.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    pub predicate: String,
}

/// `window`: keyed event-time windows with aggregates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// Key columns; rows are hashed on them into key groups.
    pub key_by: Vec<String>,
    pub event_time: EventTimeSpec,
    pub window: WindowKind,
    pub aggregates: Vec<AggregateSpec>,
    /// How long a fired window's state is kept for late records (Flink's
    /// allowed lateness): a record for a fired window whose end plus this is
    /// still ahead of the watermark updates it and re-fires it. `0` (the
    /// default): a window is dropped when it fires.
    #[serde(default, skip_serializing_if = "HumanDuration::is_zero")]
    pub allowed_lateness: HumanDuration,
    /// Bounds how far in event time one upstream subtask may run ahead of
    /// the slowest: the window stops reading it (so it backpressures) until
    /// the slowest catches up. Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_alignment: Option<WatermarkAlignmentSpec>,
}

/// A window's watermark alignment (Flink's `withWatermarkAlignment`, done
/// at the window's input instead of at the sources).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkAlignmentSpec {
    /// The largest lead, in event time, of one upstream subtask's watermark
    /// over the slowest one's before the window stops reading it.
    pub max_drift: HumanDuration,
}

/// Event time of a window: a timestamp column and bounded out-of-orderness watermarks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTimeSpec {
    pub column: String,
    #[serde(default)]
    pub max_out_of_orderness: HumanDuration,
}

/// Window assigners.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowKind {
    Tumbling {
        size: HumanDuration,
    },
    Sliding {
        size: HumanDuration,
        slide: HumanDuration,
    },
    /// Per key, records at most `gap` apart share a session.
    Session {
        gap: HumanDuration,
    },
}

/// One aggregate output column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateSpec {
    #[serde(rename = "fn")]
    pub func: AggregateFn,
    /// The input column (not needed for `count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    #[serde(rename = "as")]
    pub alias: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateFn {
    Count,
    Sum,
    Min,
    Max,
    Avg,
}

/// `print`: log every row (as JSON) to the TaskManager's stdout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrintSpec {}

/// `blackhole`: discard every row (for benchmarks).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlackholeSpec {
    /// Accept at most this many rows per second per subtask, to stand in for a
    /// slow external system (backpressure tests and demos). Unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_per_second: Option<f64>,
}

/// `file`: one file per subtask under `path` (`part-<subtask>.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkSpec {
    pub path: String,
    #[serde(default)]
    pub format: FileFormat,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    #[default]
    Jsonl,
}

impl JobSpec {
    pub fn node(&self, id: &NodeId) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| &n.id == id)
    }
    /// The parallelism a node runs at.
    pub fn node_parallelism(&self, node: &NodeSpec) -> u32 {
        node.parallelism.unwrap_or(self.parallelism)
    }
    /// Nodes reading from `id`, in spec order.
    pub fn consumers<'a>(&'a self, id: &'a NodeId) -> impl Iterator<Item = &'a NodeSpec> + 'a {
        self.nodes
            .iter()
            .filter(move |n| n.input.as_ref() == Some(id))
    }
    /// As JSON (the form stored in Raft and sent to TaskManagers).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .expect("a JobSpec always serializes: it holds only strings, numbers and maps")
    }
}
