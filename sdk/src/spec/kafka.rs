//! `kind: kafka`: a source when the node has no `input`, a sink when it has
//! one. Parsing picks the variant by the presence of `input` (see
//! `parse.rs`), so each side rejects the other side's fields by name.
//!
//! Validation here is per node and needs no schema; the column checks of the
//! sink (`key`, a `raw` value) live in `plan`.

use super::{EventTimeSpec, FieldType, HumanDuration};
use crate::error::{ApiError, ErrorCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

/// librdkafka properties Eddy sets itself: a `properties` entry for one of
/// them is rejected, with the spec field to use instead (if any).
const MANAGED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "use the field `bootstrap_servers`"),
    ("metadata.broker.list", "use the field `bootstrap_servers`"),
    ("group.id", "use the field `group_id`"),
    (
        "enable.auto.commit",
        "offsets are committed after each checkpoint",
    ),
    (
        "enable.auto.offset.store",
        "offsets are committed after each checkpoint",
    ),
    (
        "transactional.id",
        "use the field `transactional_id_prefix`",
    ),
    (
        "transaction.timeout.ms",
        "use the field `transaction_timeout`",
    ),
];

/// A Kafka node: which side it is follows from `input`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KafkaSpec {
    Source(KafkaSourceSpec),
    Sink(KafkaSinkSpec),
}

/// Where a source starts reading a partition that has no checkpointed offset.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StartFrom {
    /// The first offset still in the partition.
    #[default]
    Earliest,
    /// The end of the partition when the job first sees it.
    Latest,
    /// The group's committed offset (`group_id`), else the earliest.
    Committed,
    /// The first record with a timestamp at or after this instant
    /// (`{timestamp: "2026-12-01T00:00:00Z"}`), else the end.
    Timestamp(DateTime<Utc>),
}

/// How record values are decoded (source) or encoded (sink).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaFormat {
    /// A JSON object per record, with the fields of `schema`.
    #[default]
    Json,
    /// The value bytes as they are: one binary column `value`.
    Raw,
}

/// What a source does with a record whose value does not decode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Fail the job (bad data), naming topic, partition and offset.
    #[default]
    Fail,
    /// Drop the record and count it.
    Skip,
    /// Write the record to `dead_letter_topic` with the error as a header.
    DeadLetter,
}

/// Optional columns a source adds after the value's columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaMetadata {
    /// `kafka_key` (utf8; invalid UTF-8 is replaced).
    Key,
    /// `kafka_headers` (utf8: a JSON object of header name to value).
    Headers,
    /// `kafka_timestamp` (timestamp_ms).
    Timestamp,
    /// `kafka_topic` (utf8).
    Topic,
    /// `kafka_partition` (int64).
    Partition,
    /// `kafka_offset` (int64).
    Offset,
}

impl KafkaMetadata {
    /// The column name this metadata field gets.
    pub fn column(self) -> &'static str {
        match self {
            KafkaMetadata::Key => "kafka_key",
            KafkaMetadata::Headers => "kafka_headers",
            KafkaMetadata::Timestamp => "kafka_timestamp",
            KafkaMetadata::Topic => "kafka_topic",
            KafkaMetadata::Partition => "kafka_partition",
            KafkaMetadata::Offset => "kafka_offset",
        }
    }
}

/// One declared column of a JSON value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaField {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: FieldType,
}

/// The source side of `kind: kafka`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceSpec {
    /// `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// Topics to read (or `topic_pattern`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
    /// A regular expression; every matching topic is read, including ones
    /// created later (found at `partition_discovery_interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_pattern: Option<String>,
    /// The group offsets are committed to after each checkpoint (for
    /// monitoring) and `start_from: committed` reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[serde(default)]
    pub start_from: StartFrom,
    #[serde(default)]
    pub format: KafkaFormat,
    /// The value's columns (`format: json`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schema: Vec<KafkaField>,
    /// Per-partition watermarks on this column (bounded out-of-orderness).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<EventTimeSpec>,
    /// A partition without records for this long no longer holds the
    /// watermark back (until it has records again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<HumanDuration>,
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Metadata columns added after the value's columns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metadata: Vec<KafkaMetadata>,
    /// How often new partitions (and topics matching `topic_pattern`) are
    /// looked for (default 30s; `0s`: only at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_discovery_interval: Option<HumanDuration>,
    /// Passed to librdkafka as they are (security.protocol, sasl.*, ssl.*, ...).
    #[serde(
        default,
        deserialize_with = "scalar_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub properties: BTreeMap<String, String>,
}

/// What a sink guarantees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Kafka transactions committed with checkpoints (needs checkpoints).
    ExactlyOnce,
    /// Every record is acknowledged by the broker before a checkpoint completes.
    #[default]
    AtLeastOnce,
    /// Fire and forget.
    None,
}

/// How a sink picks a record's partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkPartitioning {
    /// By the hash of the key (murmur2, as the Java client): needs `key`.
    Key,
    /// Partitions in turn.
    RoundRobin,
}

/// The sink side of `kind: kafka`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkSpec {
    pub bootstrap_servers: String,
    pub topic: String,
    #[serde(default)]
    pub format: KafkaFormat,
    /// Columns whose values make the record key (a JSON object of them;
    /// with `format: raw`, one column whose bytes are the key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<String>,
    #[serde(default)]
    pub delivery: Delivery,
    /// `key` when a key is set, else `round_robin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitioning: Option<SinkPartitioning>,
    /// transaction.timeout.ms of the transactional producer (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_timeout: Option<HumanDuration>,
    /// Transactional ids are `<prefix>-<subtask>`; default `eddy-<job>-<node>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transactional_id_prefix: Option<String>,
    #[serde(
        default,
        deserialize_with = "scalar_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub properties: BTreeMap<String, String>,
}

impl KafkaSinkSpec {
    /// The partitioning in effect.
    pub fn partitioning(&self) -> SinkPartitioning {
        self.partitioning.unwrap_or(if self.key.is_empty() {
            SinkPartitioning::RoundRobin
        } else {
            SinkPartitioning::Key
        })
    }
}

/// Default partition discovery interval.
pub const DEFAULT_DISCOVERY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// Default transaction timeout of an exactly-once sink.
pub const DEFAULT_TRANSACTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// `properties` values may be written as strings, numbers or booleans
/// (`fetch.min.bytes: 1`); librdkafka takes strings.
fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            serde_json::Value::Number(n) => Ok((k, n.to_string())),
            serde_json::Value::Bool(b) => Ok((k, b.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "property `{k}` must be a string, number or boolean, got {other}"
            ))),
        })
        .collect()
}

fn invalid(node: &str, field: &str, msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidSpec, msg)
        .with_node(node)
        .with_field(field)
}

fn check_common(
    node: &str,
    servers: &str,
    props: &BTreeMap<String, String>,
) -> Result<(), ApiError> {
    if servers.trim().is_empty() {
        return Err(invalid(
            node,
            "bootstrap_servers",
            "bootstrap_servers must list at least one host:port",
        ));
    }
    for (key, hint) in MANAGED_PROPERTIES {
        if props.contains_key(*key) {
            return Err(invalid(
                node,
                "properties",
                format!("property `{key}` is set by Eddy: {hint}"),
            ));
        }
    }
    Ok(())
}

fn check_topic(node: &str, field: &str, topic: &str) -> Result<(), ApiError> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            node,
            field,
            format!(
                "`{topic}` is not a valid topic name (1 to 249 of letters, digits, `.`, `_`, `-`)"
            ),
        ))
    }
}

impl KafkaSourceSpec {
    /// Per-node checks that need no schema.
    pub fn validate(&self, node: &str) -> Result<(), ApiError> {
        check_common(node, &self.bootstrap_servers, &self.properties)?;
        match (&self.topics, &self.topic_pattern) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    node,
                    "topic_pattern",
                    "set either `topics` or `topic_pattern`, not both",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    node,
                    "topics",
                    "a kafka source needs `topics` (a list) or `topic_pattern`",
                ));
            }
            (Some(topics), None) => {
                if topics.is_empty() {
                    return Err(invalid(node, "topics", "`topics` must not be empty"));
                }
                for t in topics {
                    check_topic(node, "topics", t)?;
                }
            }
            (None, Some(p)) => {
                regex::Regex::new(p).map_err(|e| {
                    invalid(
                        node,
                        "topic_pattern",
                        format!("topic_pattern is not a valid regular expression: {e}"),
                    )
                })?;
            }
        }
        match self.format {
            KafkaFormat::Json if self.schema.is_empty() => {
                return Err(invalid(
                    node,
                    "schema",
                    "format json needs a `schema`: the columns to read from each record",
                ));
            }
            KafkaFormat::Raw if !self.schema.is_empty() => {
                return Err(invalid(
                    node,
                    "schema",
                    "format raw has one binary column `value`; leave out `schema`",
                ));
            }
            _ => {}
        }
        let mut names = std::collections::HashSet::new();
        for f in &self.schema {
            if f.name.is_empty() {
                return Err(invalid(node, "schema", "column names must not be empty"));
            }
            if !names.insert(f.name.as_str()) {
                return Err(invalid(
                    node,
                    "schema",
                    format!("duplicate column `{}`", f.name),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for m in &self.metadata {
            if !seen.insert(*m) {
                return Err(invalid(
                    node,
                    "metadata",
                    format!("metadata `{}` is listed twice", m.column()),
                ));
            }
            if names.contains(m.column()) {
                return Err(invalid(
                    node,
                    "metadata",
                    format!("column `{}` is both in the schema and metadata", m.column()),
                ));
            }
        }
        if let Some(et) = &self.event_time {
            let column = self
                .schema
                .iter()
                .find(|f| f.name == et.column)
                .map(|f| f.data_type)
                .or_else(|| {
                    (et.column == KafkaMetadata::Timestamp.column()
                        && self.metadata.contains(&KafkaMetadata::Timestamp))
                    .then_some(FieldType::TimestampMs)
                });
            match column {
                Some(FieldType::TimestampMs | FieldType::Int64) => {}
                Some(_) => {
                    return Err(invalid(
                        node,
                        "event_time",
                        format!(
                            "event-time column `{}` must be timestamp_ms or int64 (ms)",
                            et.column
                        ),
                    ));
                }
                None => {
                    return Err(invalid(
                        node,
                        "event_time",
                        format!(
                            "event-time column `{}` is not in the schema (or `kafka_timestamp` with metadata [timestamp])",
                            et.column
                        ),
                    ));
                }
            }
        } else if self.idle_timeout.is_some() {
            return Err(invalid(
                node,
                "idle_timeout",
                "idle_timeout applies to event-time watermarks: set `event_time` too",
            ));
        }
        if self.idle_timeout.is_some_and(|d| d.is_zero()) {
            return Err(invalid(
                node,
                "idle_timeout",
                "idle_timeout must be positive",
            ));
        }
        match (self.on_error, &self.dead_letter_topic) {
            (OnError::DeadLetter, None) => {
                return Err(invalid(
                    node,
                    "dead_letter_topic",
                    "on_error: dead_letter needs `dead_letter_topic`",
                ));
            }
            (OnError::DeadLetter, Some(t)) => check_topic(node, "dead_letter_topic", t)?,
            (_, Some(_)) => {
                return Err(invalid(
                    node,
                    "dead_letter_topic",
                    "dead_letter_topic is used only with on_error: dead_letter",
                ));
            }
            (_, None) => {}
        }
        if matches!(self.on_error, OnError::Skip | OnError::DeadLetter)
            && self.format == KafkaFormat::Raw
        {
            return Err(invalid(
                node,
                "on_error",
                "format raw never fails to decode; on_error applies to format json",
            ));
        }
        if self.start_from == StartFrom::Committed && self.group_id.is_none() {
            return Err(invalid(
                node,
                "start_from",
                "start_from: committed needs `group_id`",
            ));
        }
        Ok(())
    }
}

impl KafkaSinkSpec {
    /// Per-node checks that need no schema; `checkpoints`: the job takes them.
    pub fn validate(&self, node: &str, checkpoints: bool) -> Result<(), ApiError> {
        check_common(node, &self.bootstrap_servers, &self.properties)?;
        check_topic(node, "topic", &self.topic)?;
        if self.delivery == Delivery::ExactlyOnce && !checkpoints {
            return Err(invalid(
                node,
                "delivery",
                "delivery: exactly_once commits with checkpoints: add a `checkpoint` section to the job",
            ));
        }
        if self.delivery != Delivery::ExactlyOnce {
            if self.transaction_timeout.is_some() {
                return Err(invalid(
                    node,
                    "transaction_timeout",
                    "transaction_timeout applies to delivery: exactly_once",
                ));
            }
            if self.transactional_id_prefix.is_some() {
                return Err(invalid(
                    node,
                    "transactional_id_prefix",
                    "transactional_id_prefix applies to delivery: exactly_once",
                ));
            }
        }
        if self
            .transaction_timeout
            .is_some_and(|d| d.0.as_millis() < 1000)
        {
            return Err(invalid(
                node,
                "transaction_timeout",
                "transaction_timeout must be at least 1s",
            ));
        }
        if self.partitioning == Some(SinkPartitioning::Key) && self.key.is_empty() {
            return Err(invalid(
                node,
                "partitioning",
                "partitioning: key needs `key` columns",
            ));
        }
        if self.format == KafkaFormat::Raw && self.key.len() > 1 {
            return Err(invalid(
                node,
                "key",
                "with format raw the key is one column's bytes",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "kafka_tests.rs"]
mod tests;
