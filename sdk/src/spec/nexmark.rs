//! `nexmark`: the spec of the Nexmark benchmark source, its validation (each
//! error names the node and the field) and its translation into the
//! generator's [`GeneratorConfig`].

use crate::error::{ApiError, ErrorCode};
use crate::nexmark::{DEFAULT_BASE_TIME_MS, DEFAULT_EVENTS_PER_SECOND, EventType, GeneratorConfig};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

/// Largest `count`: event numbers stay exact in the event-time arithmetic.
pub const MAX_NEXMARK_COUNT: u64 = 1 << 53;

/// `nexmark`: the standard Nexmark event stream (people, auctions and bids in
/// the 1 : 3 : 46 proportion), emitting the rows of one `table`.
///
/// Event `n` (numbered over the whole job) is the same at any parallelism:
/// event `n` belongs to split `n mod max_parallelism`; a subtask walks the events of the splits it
/// owns and emits those of its table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NexmarkSpec {
    /// Which event type's rows the node emits (default `bid`).
    #[serde(default, deserialize_with = "table_named")]
    pub table: NexmarkTable,
    /// Total events over all subtasks, all three types counted; unbounded
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Event-time rate: consecutive events are `1e6 / events_per_second` µs
    /// apart (default 10 000, as in Nexmark).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_second: Option<f64>,
    /// Event time of event 0 (default 2015-07-15T00:00:00Z, as in Nexmark).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_time: Option<DateTime<Utc>>,
    /// Wall-clock pacing: total events per second over all subtasks (all
    /// types counted, like `count`); as fast as possible when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_per_second: Option<f64>,
    /// Rows per emitted batch (default 8192).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Mixed into every event's random seed (default 0, the reference seeding).
    #[serde(default)]
    pub seed: u64,
    /// A bid is for a hot auction with probability `1 - 1/ratio` (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_auction_ratio: Option<u32>,
    /// An auction has a hot seller with probability `1 - 1/ratio` (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_sellers_ratio: Option<u32>,
    /// A bid has a hot bidder with probability `1 - 1/ratio` (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_bidders_ratio: Option<u32>,
    /// How many recent auctions cold bids pick from (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_in_flight_auctions: Option<u32>,
    /// How many recent people cold sellers and bidders are (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_active_people: Option<u32>,
}

/// The three Nexmark tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NexmarkTable {
    #[default]
    Bid,
    Auction,
    Person,
}

impl NexmarkTable {
    pub fn name(self) -> &'static str {
        match self {
            NexmarkTable::Bid => "bid",
            NexmarkTable::Auction => "auction",
            NexmarkTable::Person => "person",
        }
    }
    /// The event type whose rows this table holds.
    pub fn event_type(self) -> EventType {
        match self {
            NexmarkTable::Bid => EventType::Bid,
            NexmarkTable::Auction => EventType::Auction,
            NexmarkTable::Person => EventType::Person,
        }
    }
}

/// Decodes `table`, with an error that names the field (the spec parser takes
/// the first backquoted word of a message as the field).
fn table_named<'de, D: Deserializer<'de>>(d: D) -> Result<NexmarkTable, D::Error> {
    let name = String::deserialize(d)?;
    match name.as_str() {
        "bid" => Ok(NexmarkTable::Bid),
        "auction" => Ok(NexmarkTable::Auction),
        "person" => Ok(NexmarkTable::Person),
        other => Err(serde::de::Error::custom(format!(
            "`table` must be one of bid, auction, person, got {other:?}"
        ))),
    }
}

impl NexmarkSpec {
    /// Checks every field's range; errors name `node` and the field.
    pub fn validate(&self, node: &str) -> Result<(), ApiError> {
        let invalid = |field: &str, msg: String| {
            ApiError::new(ErrorCode::InvalidSpec, msg)
                .with_node(node)
                .with_field(field)
        };
        if let Some(eps) = self.events_per_second
            && !(eps > 0.0 && eps.is_finite())
        {
            return Err(invalid(
                "events_per_second",
                format!("events_per_second must be a positive number, got {eps}"),
            ));
        }
        if let Some(count) = self.count
            && !(1..=MAX_NEXMARK_COUNT).contains(&count)
        {
            return Err(invalid(
                "count",
                format!("count must be in 1..={MAX_NEXMARK_COUNT}, got {count}"),
            ));
        }
        if self
            .rows_per_second
            .is_some_and(|r| !(r > 0.0 && r.is_finite()))
        {
            return Err(invalid(
                "rows_per_second",
                "rows_per_second must be a positive number".into(),
            ));
        }
        if self.batch_size == Some(0) {
            return Err(invalid(
                "batch_size",
                "batch_size must be at least 1".into(),
            ));
        }
        let positive = [
            ("hot_auction_ratio", self.hot_auction_ratio),
            ("hot_sellers_ratio", self.hot_sellers_ratio),
            ("hot_bidders_ratio", self.hot_bidders_ratio),
            ("num_in_flight_auctions", self.num_in_flight_auctions),
            ("num_active_people", self.num_active_people),
        ];
        for (field, value) in positive {
            if let Some(v) = value
                && !(1..=i32::MAX as u32).contains(&v)
            {
                return Err(invalid(
                    field,
                    format!("{field} must be in 1..={}, got {v}", i32::MAX),
                ));
            }
        }
        Ok(())
    }

    /// The generator's configuration (defaults filled in). Call on a
    /// validated spec: out-of-range values are clamped, never a panic.
    pub fn generator_config(&self) -> GeneratorConfig {
        let d = GeneratorConfig::default();
        let ratio = |v: Option<u32>, default: i32| {
            v.map_or(default, |v| i32::try_from(v).unwrap_or(i32::MAX).max(1))
        };
        let eps = self
            .events_per_second
            .filter(|e| *e > 0.0 && e.is_finite())
            .unwrap_or(DEFAULT_EVENTS_PER_SECOND);
        GeneratorConfig {
            seed: self.seed,
            base_time_ms: self
                .base_time
                .map_or(DEFAULT_BASE_TIME_MS, |t| t.timestamp_millis()),
            inter_event_delay_us: 1e6 / eps,
            hot_auction_ratio: ratio(self.hot_auction_ratio, d.hot_auction_ratio),
            hot_sellers_ratio: ratio(self.hot_sellers_ratio, d.hot_sellers_ratio),
            hot_bidders_ratio: ratio(self.hot_bidders_ratio, d.hot_bidders_ratio),
            num_in_flight_auctions: self
                .num_in_flight_auctions
                .map_or(d.num_in_flight_auctions, |v| i64::from(v.max(1))),
            num_active_people: self
                .num_active_people
                .map_or(d.num_active_people, |v| i64::from(v.max(1))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{NodeKind, parse_yaml_or_json, validate_structure};

    fn node(fields: &str) -> Result<NexmarkSpec, ApiError> {
        let spec = parse_yaml_or_json(&format!(
            "name: n\nnodes:\n  - {{id: src, kind: nexmark{fields}}}\n  - {{id: out, kind: blackhole, input: src}}\n"
        ))?;
        validate_structure(&spec, None)?;
        match &spec.nodes[0].kind {
            NodeKind::Nexmark(n) => Ok(n.clone()),
            other => panic!("parsed as {}", other.name()),
        }
    }

    #[test]
    fn nexmark_spec_defaults_are_nexmarks() {
        let n = node("").unwrap();
        assert_eq!(n.table, NexmarkTable::Bid);
        assert_eq!(n.generator_config(), GeneratorConfig::default());
        let n = node(", table: person, events_per_second: 1000, base_time: '2026-01-01T00:00:00Z'")
            .unwrap();
        assert_eq!(n.table, NexmarkTable::Person);
        let c = n.generator_config();
        assert_eq!(c.inter_event_delay_us, 1000.0);
        assert_eq!(c.base_time_ms, 1_767_225_600_000);
    }

    #[test]
    fn nexmark_spec_bad_fields_name_node_and_field() {
        for (fields, field) in [
            (", events_per_second: 0", "events_per_second"),
            (", events_per_second: -3", "events_per_second"),
            (", count: 0", "count"),
            (", table: bids", "table"),
            (", rows_per_second: 0", "rows_per_second"),
            (", batch_size: 0", "batch_size"),
            (", hot_auction_ratio: 0", "hot_auction_ratio"),
            (", tabel: bid", "tabel"),
        ] {
            let e = node(fields).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidSpec, "{fields}: {e:?}");
            assert_eq!(e.node.as_deref(), Some("src"), "{fields}");
            assert_eq!(e.field.as_deref(), Some(field), "{fields}: {}", e.message);
        }
    }

    #[test]
    fn nexmark_spec_roundtrips_through_json() {
        let n = node(", table: auction, count: 500, seed: 3").unwrap();
        let json = serde_json::to_string(&n).unwrap();
        assert_eq!(serde_json::from_str::<NexmarkSpec>(&json).unwrap(), n);
    }
}
