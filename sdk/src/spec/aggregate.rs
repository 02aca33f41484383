//! The `aggregate` node: keyed aggregates over the whole stream, without
//! windows, emitted as updates (an upsert stream keyed by `key_by`). Column
//! checks live in `plan::schema::aggregate`; the operator in the TaskManager.

use super::{AggregateSpec, HumanDuration};
use serde::{Deserialize, Deserializer, Serialize};

/// `aggregate`: per key, running aggregates; after every input batch, one
/// row per key the batch changed, holding its current values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupAggregateSpec {
    /// Key columns; rows are hashed on them into key groups.
    pub key_by: Vec<String>,
    pub aggregates: Vec<AggregateSpec>,
    /// A key not updated for this long (processing time) is forgotten: its
    /// state is dropped and its next row starts from zero (Flink's
    /// `table.exec.state.ttl`). Kept forever when absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "state_ttl"
    )]
    pub state_ttl: Option<HumanDuration>,
}

/// Names the field in the error, which serde's message for a bad value
/// does not (or names the value instead).
fn state_ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HumanDuration>, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => s
            .parse()
            .map(Some)
            .map_err(|e| D::Error::custom(format!("`state_ttl`: {e}"))),
        other => Err(D::Error::custom(format!(
            "`state_ttl` must be a duration such as \"1h\", got {other}"
        ))),
    }
}
